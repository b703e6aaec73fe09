"""Loss balancers on tiny two-task problems, with values worked out by hand."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from multitower.config import TrainConfig
from trainer.balancing import METHODS, make_balancer

TRAIN = TrainConfig(model_dir="unused", export_dir="unused")
REPLICAS_MAIN = Path(__file__).with_name("balancing_replicas_main.py")
REPO = Path(__file__).resolve().parents[2]


def _balancer(method: str, weights: dict[str, float] | None = None, **train):
    weights = weights or {"a": 1.0, "b": 1.0}
    return make_balancer(method, list(weights), weights,
                         TrainConfig.model_validate({**TRAIN.model_dump(), **train}))


def _dense(grad) -> np.ndarray:
    return tf.convert_to_tensor(grad).numpy()


def _conflicting(method: str, weights: dict[str, float]):
    """Shared v (2,), a shared embedding (4, 2) and a head; gradients (before weights):

    task a: v (1, 0); rows 0 and 1 (1, 0); head 1.   task b: v (-1, 1); rows 1 and 2 (-1, 1).
    """
    v = tf.Variable([1.0, 2.0])
    table = tf.Variable(tf.ones([4, 2]))
    head = tf.Variable([3.0])
    with tf.GradientTape(persistent=True) as tape:
        rows_a = tf.gather(table, [0, 1])
        rows_b = tf.gather(table, [1, 2])
        losses = {
            "a": tf.reduce_sum(v * [1.0, 0.0]) + tf.reduce_sum(rows_a * [1.0, 0.0]) + head[0],
            "b": tf.reduce_sum(v * [-1.0, 1.0]) + tf.reduce_sum(rows_b * [-1.0, 1.0]),
        }
    balancer = _balancer(method, weights)
    return balancer.gradients(tape, losses, [v, table, head], [True, True, False], [v])


def test_fixed_gradient_is_the_weighted_sum():
    v = tf.Variable([1.0, 2.0])
    head = tf.Variable(0.5)
    with tf.GradientTape(persistent=True) as tape:
        losses = {
            "a": tf.square(tf.reduce_sum(v * [1.0, 3.0])),  # (v.x1)^2 = 49
            "b": tf.square(tf.reduce_sum(v * [2.0, -1.0]) - head),  # (v.x2 - h)^2 = 0.25
        }
    balancer = _balancer("fixed", {"a": 0.5, "b": 3.0})
    total, (grad_v, grad_head) = balancer.gradients(tape, losses, [v, head], [True, False], [v])
    # 0.5 * 2 * 7 * (1, 3) + 3 * 2 * (-0.5) * (2, -1) = (7, 21) + (-6, 3)
    np.testing.assert_allclose(grad_v, [1.0, 24.0], rtol=1e-6)
    np.testing.assert_allclose(grad_head, 3 * 2 * 0.5, rtol=1e-6)  # -(v.x2 - h) * 2 * 3
    assert float(total) == pytest.approx(0.5 * 49 + 3 * 0.25)
    assert {k: float(w) for k, w in balancer.weights().items()} == {"a": 0.5, "b": 3.0}


def test_pcgrad_projects_conflicting_gradients_by_hand():
    total, (grad_v, grad_table, grad_head) = _conflicting("pcgrad", {"a": 1.0, "b": 2.0})
    # Weighted: g_a = v (1, 0), rows {0: (1, 0), 1: (1, 0)}; g_b = v (-2, 2), rows
    # {1: (-2, 2), 2: (-2, 2)}. g_a.g_b = -2 - 2 = -4, |g_a|^2 = 3, |g_b|^2 = 24, so
    # g_a' = g_a + g_b / 6 and g_b' = g_b + 4/3 g_a: the sum is 7/3 g_a + 7/6 g_b.
    np.testing.assert_allclose(grad_v, [0.0, 7 / 3], atol=1e-6)
    assert isinstance(grad_table, tf.IndexedSlices)  # the table is never densified
    np.testing.assert_allclose(
        _dense(grad_table), [[7 / 3, 0.0], [0.0, 7 / 3], [-7 / 3, 7 / 3], [0.0, 0.0]], atol=1e-6
    )
    np.testing.assert_allclose(grad_head, [1.0])  # task-specific: the plain weighted sum
    assert float(total) == pytest.approx(6.0 + 2 * 1.0)


def test_pcgrad_leaves_no_conflict_with_the_gradient_projected_against():
    g_a, g_b = np.array([1.0, 0.0]), np.array([-1.0, 1.0])
    v = tf.Variable([0.0, 0.0])
    with tf.GradientTape(persistent=True) as tape:
        losses = {"a": tf.reduce_sum(v * g_a), "b": tf.reduce_sum(v * g_b)}
    _, (grad,) = _balancer("pcgrad").gradients(tape, losses, [v], [True], [v])
    projected_a = g_a - (g_a @ g_b) / (g_b @ g_b) * g_b  # (0.5, 0.5)
    projected_b = g_b - (g_b @ g_a) / (g_a @ g_a) * g_a  # (0, 1)
    np.testing.assert_allclose(grad, projected_a + projected_b, atol=1e-6)
    assert projected_a @ g_b >= -1e-9 and projected_b @ g_a >= -1e-9


def test_pcgrad_without_conflict_is_the_plain_sum():
    v = tf.Variable([0.0, 0.0])
    table = tf.Variable(tf.zeros([3, 2]))
    with tf.GradientTape(persistent=True) as tape:
        losses = {
            "a": tf.reduce_sum(v * [1.0, 0.0]) + tf.reduce_sum(tf.gather(table, [0, 0]) * 2.0),
            "b": tf.reduce_sum(v * [1.0, 1.0]) + tf.reduce_sum(tf.gather(table, [0]) * 3.0),
        }
    _, (grad_v, grad_table) = _balancer("pcgrad", {"a": 1.0, "b": 2.0}).gradients(
        tape, losses, [v, table], [True, True], [v]
    )
    np.testing.assert_allclose(grad_v, [3.0, 2.0])
    assert isinstance(grad_table, tf.IndexedSlices)
    np.testing.assert_allclose(_dense(grad_table), [[10.0, 10.0], [0.0, 0.0], [0.0, 0.0]])


@pytest.mark.parametrize("method", METHODS)
def test_every_method_starts_as_fixed_without_conflict(method):
    """At their initial state and with equal base weights, every method is `fixed`."""
    v = tf.Variable([1.0, -1.0])
    table = tf.Variable(tf.ones([3, 2]))
    with tf.GradientTape(persistent=True) as tape:
        rows = tf.gather(table, [2, 0])
        losses = {"a": tf.reduce_sum(tf.square(v)) + tf.reduce_sum(rows),
                  "b": tf.reduce_sum(v * [3.0, 0.0]) + tf.reduce_sum(rows[:1])}
    variables = [v, table]
    total, grads = _balancer(method).gradients(tape, losses, variables, [True, True], [v])
    _, expected = _balancer("fixed").gradients(tape, losses, variables, [True, True], [v])
    assert len(grads) == 2 + (method == "uncertainty")
    for got, want in zip(grads, expected, strict=False):
        np.testing.assert_allclose(_dense(got), _dense(want), rtol=1e-6)
    assert isinstance(grads[1], tf.IndexedSlices)
    assert float(total) == pytest.approx(2.0 + 4.0 + 3.0 + 2.0)


@pytest.mark.parametrize("method", METHODS)
def test_a_zero_base_weight_switches_a_task_off(method):
    total, grads = _conflicting(method, {"a": 1.0, "b": 0.0})
    np.testing.assert_allclose(_dense(grads[0]), [1.0, 0.0])  # task a's gradient alone
    np.testing.assert_allclose(_dense(grads[2]), [1.0])
    if method == "uncertainty":  # b's log-variance must not drift off to -inf
        np.testing.assert_allclose(grads[3], [1.0 - 6.0, 0.0])
    assert float(total) == pytest.approx(6.0)


def _two_regressions(noise_b: float, hard_b: bool, seed: int = 1):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(512, 4)).astype(np.float32)
    y_a = x @ [1.0, -1.0, 0.5, 0.0]
    y_b = np.sign(x[:, 0] * x[:, 1]) * 2.0 if hard_b else x @ [0.0, 1.0, 1.0, -1.0]
    y_b = y_b + noise_b * rng.normal(size=512)
    return x, y_a.astype(np.float32), y_b.astype(np.float32)


def _fit(method: str, data, steps: int, optimizer, batch: int = 512, **train):
    """Shared tanh layer (4 -> 8) and a linear head per task; returns (balancer, losses)."""
    x, y_a, y_b = (tf.constant(d) for d in data)
    tf.random.set_seed(0)
    shared = tf.Variable(tf.random.normal([4, 8], stddev=0.5))
    heads = [tf.Variable(tf.random.normal([8], stddev=0.5)) for _ in range(2)]
    balancer = _balancer(method, **train)
    variables = [shared, *heads]

    @tf.function
    def step(start):
        rows = tf.range(start, start + batch) % x.shape[0]
        bx, ba, bb = (tf.gather(t, rows) for t in (x, y_a, y_b))
        with tf.GradientTape(persistent=True) as tape:
            hidden = tf.tanh(bx @ shared)
            losses = {"a": tf.reduce_mean(tf.square(tf.linalg.matvec(hidden, heads[0]) - ba)),
                      "b": tf.reduce_mean(tf.square(tf.linalg.matvec(hidden, heads[1]) - bb))}
        _, grads = balancer.gradients(tape, losses, variables, [True, False, False], [shared])
        optimizer.apply_gradients(zip(grads, variables + balancer.trainable_weights(),
                                      strict=True))
        return losses

    history = [step(tf.constant(i * batch)) for i in range(steps)]
    return balancer, history


def test_uncertainty_gives_the_noisier_task_the_lower_weight():
    data = _two_regressions(noise_b=3.0, hard_b=False)
    balancer, history = _fit("uncertainty", data, 300, keras.optimizers.Adam(0.05))
    weights = {k: float(w) for k, w in balancer.weights().items()}
    assert weights["b"] < weights["a"] / 10
    # s_i settles near log(L_i): each effective weight near 1 / L_i.
    final_b = float(np.mean([float(h["b"]) for h in history[-20:]]))
    assert weights["b"] == pytest.approx(1 / final_b, rel=0.3)


def test_gradnorm_raises_the_weight_of_the_slower_task():
    data = _two_regressions(noise_b=0.0, hard_b=True)
    balancer, history = _fit("gradnorm", data, 200, keras.optimizers.SGD(0.1), batch=64,
                             gradnorm={"alpha": 1.5, "learning_rate": 0.05})
    first, last = history[0], history[-1]
    assert float(last["a"]) / float(first["a"]) < 0.5 * float(last["b"]) / float(first["b"])
    weights = {k: float(w) for k, w in balancer.weights().items()}
    assert weights["b"] > 1.2 * weights["a"]
    assert sum(weights.values()) == pytest.approx(2.0, rel=1e-5)
    np.testing.assert_allclose(balancer.initial_losses, [float(first["a"]), float(first["b"])],
                               rtol=1e-5)


def test_dwa_weights_follow_the_last_two_epochs():
    balancer = _balancer("dwa", dwa={"temperature": 2.0})
    assert {k: float(w) for k, w in balancer.weights().items()} == {"a": 1.0, "b": 1.0}
    balancer.end_of_epoch({"a": 1.0, "b": 1.0})
    assert {k: float(w) for k, w in balancer.weights().items()} == {"a": 1.0, "b": 1.0}
    balancer.end_of_epoch({"a": 0.5, "b": 0.95})  # a fell 50 %, b only 5 %
    weights = balancer.weights()
    e_a, e_b = math.exp(0.5 / 2.0), math.exp(0.95 / 2.0)
    assert float(weights["a"]) == pytest.approx(2 * e_a / (e_a + e_b), rel=1e-6)
    assert float(weights["b"]) == pytest.approx(2 * e_b / (e_a + e_b), rel=1e-6)
    assert float(weights["b"]) > float(weights["a"])
    assert float(weights["a"] + weights["b"]) == pytest.approx(2.0, rel=1e-6)


def test_dwa_multiplies_the_base_weights():
    balancer = _balancer("dwa", {"a": 1.0, "b": 3.0})
    balancer.end_of_epoch({"a": 2.0, "b": 4.0})
    assert [float(w) for w in balancer.weights().values()] == [1.0, 3.0]
    balancer.end_of_epoch({"a": 1.0, "b": 3.8})
    balancer.end_of_epoch({"a": 0.5, "b": 3.6})  # only the last two epochs count
    e_a, e_b = math.exp(0.5 / 2.0), math.exp((3.6 / 3.8) / 2.0)
    weights = balancer.weights()
    assert float(weights["a"]) == pytest.approx(1.0 * 2 * e_a / (e_a + e_b), rel=1e-6)
    assert float(weights["b"]) == pytest.approx(3.0 * 2 * e_b / (e_a + e_b), rel=1e-6)


def test_balancer_state_round_trips_through_a_checkpoint(tmp_path):
    originals = {
        "uncertainty": _balancer("uncertainty"),
        "gradnorm": _balancer("gradnorm", {"a": 1.0, "b": 3.0}),
        "dwa": _balancer("dwa"),
    }
    originals["uncertainty"].log_variance.assign([0.5, -1.5])
    _conflicting_state(originals["gradnorm"])
    originals["dwa"].end_of_epoch({"a": 2.0, "b": 1.0})
    originals["dwa"].end_of_epoch({"a": 1.0, "b": 0.9})
    for method, original in originals.items():
        path = tf.train.Checkpoint(balancer=original).write(str(tmp_path / method))
        restored = _balancer(method, {"a": 1.0, "b": 3.0} if method == "gradnorm" else None)
        before = {k: float(w) for k, w in restored.weights().items()}
        tf.train.Checkpoint(balancer=restored).read(path).assert_consumed()
        assert len(original.variables) > 0
        for kept, back in zip(original.variables, restored.variables, strict=True):
            np.testing.assert_array_equal(kept.numpy(), back.numpy())
        after = {k: float(w) for k, w in restored.weights().items()}
        assert after == {k: float(w) for k, w in original.weights().items()} != before


def _conflicting_state(balancer):
    """One GradNorm step on fixed losses: moves its weights and records L(0)."""
    v = tf.Variable([1.0, 2.0])
    with tf.GradientTape(persistent=True) as tape:
        losses = {"a": tf.reduce_sum(v * [1.0, 0.0]), "b": tf.reduce_sum(v * [-1.0, 3.0])}
    balancer.gradients(tape, losses, [v], [True], [v])
    np.testing.assert_allclose(balancer.initial_losses, [1.0, 5.0])


def test_bad_arguments_name_the_problem():
    with pytest.raises(ValueError, match="unknown loss balancing method 'mgda'"):
        _balancer("mgda")
    with pytest.raises(ValueError, match="exactly the tasks"):
        make_balancer("fixed", ["a", "b"], {"a": 1.0}, TRAIN)
    with pytest.raises(ValueError, match=">= 0"):
        _balancer("fixed", {"a": 1.0, "b": -1.0})
    with pytest.raises(ValueError, match="at least one base weight"):
        _balancer("dwa", {"a": 0.0, "b": 0.0})
    balancer = _balancer("uncertainty")
    v = tf.Variable(1.0)
    with tf.GradientTape(persistent=True) as tape:
        losses = {"a": v * 2.0, "b": v * 3.0}
    own = balancer.trainable_weights()
    with pytest.raises(ValueError, match="balancer's own variables"):
        balancer.gradients(tape, losses, [v, *own], [True, True], [v])
    with pytest.raises(ValueError, match="2 variables"):
        balancer.gradients(tape, losses, [v, v], [True], [v])
    with pytest.raises(ValueError, match="must name exactly"):
        _balancer("dwa").end_of_epoch({"a": 1.0})


def test_two_replicas_stay_identical_and_match_one_device():
    """Runs in a process of its own: logical CPU devices must exist before TF initializes."""
    done = subprocess.run([sys.executable, str(REPLICAS_MAIN)], capture_output=True, text=True,
                          cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                          timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(report) == set(METHODS)
    for method, result in report.items():
        assert result["replicas"] == 2
        assert result["replica_gap"] == 0.0, method  # every replica applied the same update
        if method != "pcgrad":  # PCGrad projects each replica's own gradients: not the same
            assert result["single_device_gap"] < 1e-6, method
    state = report["gradnorm"]["state"]
    assert state["task_weights"] != pytest.approx([2 / 1.5, 1 / 1.5])  # the update did run
    assert sum(state["task_weights"]) == pytest.approx(2.0)


@pytest.mark.parametrize("method", METHODS)
def test_total_is_the_objective_gradients_report_with_the_current_state(method):
    # Validation's loss is Balancer.total: it must equal the total training reports.
    weights = {"a": 0.5, "b": 2.0}
    balancer = _balancer(method, weights)
    if method == "uncertainty":
        balancer.log_variance.assign([0.3, -0.7])
    v = tf.Variable([1.0, 2.0])
    with tf.GradientTape(persistent=True) as tape:
        losses = {"a": tf.reduce_sum(v * v), "b": tf.reduce_sum(v) + 1.0}  # 5 and 4
    expected = {
        # exp(-s) w L + s per task
        "uncertainty": math.exp(-0.3) * 0.5 * 5 + 0.3 + math.exp(0.7) * 2.0 * 4 - 0.7,
        # GradNorm's weights start as the base weights scaled to sum T = 2: 0.4 and 1.6
        "gradnorm": 0.4 * 5 + 1.6 * 4,
    }.get(method, 0.5 * 5 + 2.0 * 4)  # fixed weights; DWA starts from them
    assert float(balancer.total(losses)) == pytest.approx(expected, rel=1e-6)
    total, _ = balancer.gradients(tape, losses, [v], [True], [v])
    assert float(total) == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match="must name exactly the tasks"):
        balancer.total({"a": losses["a"]})
