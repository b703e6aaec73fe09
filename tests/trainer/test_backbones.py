"""Backbones on tiny inputs: gates, expert routing, options, GradNorm hooks, config and saving."""

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras
import yaml

from multitower.config import parse_config
from tests.small_project import EXAMPLE
from trainer.backbones import CGC, PLE, MMoE, MoE, SharedBottom, SingleTask, build_backbone

TASKS = ["click", "buy", "watch"]


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(0)


def _x(batch: int = 4, dim: int = 5, seed: int = 1) -> tf.Tensor:
    return tf.constant(np.random.default_rng(seed).normal(size=(batch, dim)), tf.float32)


# One small instance of every backbone; the lambdas keep each test's layer fresh.
BACKBONES = {
    "shared_bottom": lambda **o: SharedBottom(TASKS, [6, 3], **o),
    "moe": lambda **o: MoE(TASKS, 3, [6, 3], gate_units=[4], **o),
    "mmoe": lambda **o: MMoE(TASKS, 3, [6, 3], **o),
    "cgc": lambda **o: CGC(TASKS, 2, {"click": 1, "buy": 2, "watch": 1}, [6, 3], [4], **o),
    "ple": lambda **o: PLE(TASKS, 3, 2, 1, [6, 3], **o),
    "single_task": lambda **o: SingleTask(TASKS, [6, 3], **o),
}
GATED = ["moe", "mmoe", "cgc", "ple"]


@pytest.mark.parametrize("kind", GATED)
def test_every_gate_sums_to_one(kind):
    outputs, gates = BACKBONES[kind]()(_x(), return_gates=True)
    assert len(outputs) == 3 and all(o.shape == (4, 3) for o in outputs)
    expected = {
        "moe": {"shared": 3},
        "mmoe": dict.fromkeys(TASKS, 3),
        "cgc": {"click": 1 + 2, "buy": 2 + 2, "watch": 1 + 2},  # own experts plus the shared
        "ple": {**{f"level{i}/{t}": 1 + 2 for i in range(3) for t in TASKS},
                "level0/shared": 5, "level1/shared": 5},
    }[kind]
    assert {name: g.shape[1] for name, g in gates.items()} == expected
    for name, g in gates.items():
        np.testing.assert_allclose(tf.reduce_sum(g, -1).numpy(), np.ones(4), rtol=1e-6,
                                   err_msg=name)


@pytest.mark.parametrize("cls", [MoE, MMoE])
def test_with_one_expert_moe_and_mmoe_reduce_to_a_shared_bottom(cls):
    layer = cls(TASKS, num_experts=1, expert_units=[4, 2])
    outputs, gates = layer(_x(), return_gates=True)
    assert [o.shape for o in outputs] == [(4, 2)] * 3
    for o in outputs[1:]:
        np.testing.assert_array_equal(o.numpy(), outputs[0].numpy())
    for g in gates.values():
        np.testing.assert_array_equal(g.numpy(), np.ones((4, 1)))


def test_moe_gives_every_task_the_same_tensor():
    outputs = MoE(TASKS, 3, [4])(_x())
    assert outputs[0] is outputs[1] is outputs[2]


def test_mmoe_tasks_differ_when_their_gates_differ():
    layer = MMoE(TASKS, 2, [4])
    layer(_x())
    layer.gates.bias.assign([[3.0, -3.0], [-3.0, 3.0], [0.0, 0.0]])
    a, b, c = layer(_x())
    assert not np.allclose(a.numpy(), b.numpy())
    assert not np.allclose(a.numpy(), c.numpy())


def test_mmoe_mixes_experts_by_gate_worked_by_hand():
    layer = MMoE(["a", "b"], num_experts=2, expert_units=[1], activation="linear")
    layer.build((None, 2))
    # expert 0 sums the inputs, expert 1 takes x0 - x1
    layer.experts.kernels[0][0].assign([[[1.0], [1.0]], [[1.0], [-1.0]]])
    layer.gates.kernel.assign(np.zeros((2, 2, 2)))
    # gate a: softmax(0, ln 3) = (1/4, 3/4); gate b: uniform
    layer.gates.bias.assign([[0.0, np.log(3.0)], [0.0, 0.0]])
    (a, b), gates = layer(tf.constant([[3.0, 1.0]]), return_gates=True)  # experts: 4 and 2
    np.testing.assert_allclose(gates["a"].numpy(), [[0.25, 0.75]], rtol=1e-6)
    np.testing.assert_allclose(gates["b"].numpy(), [[0.5, 0.5]], rtol=1e-6)
    np.testing.assert_allclose(a.numpy(), [[0.25 * 4 + 0.75 * 2]], rtol=1e-6)
    np.testing.assert_allclose(b.numpy(), [[3.0]], rtol=1e-6)


def test_cgc_task_gates_see_only_their_own_and_the_shared_experts_worked_by_hand():
    layer = CGC(["a", "b"], shared_experts=1, task_experts=1, expert_units=[1],
                activation="linear")
    layer.build((None, 2))
    experts, gates = layer.level_experts[0], layer.level_gates[0]
    # Experts in order [a's, b's, shared]: x0, x1 and x0 + x1.
    experts.kernels[0][0].assign([[[1.0], [0.0]], [[0.0], [1.0]]])
    experts.kernels[0][1].assign([[[1.0], [1.0]]])
    gates.kernel.assign(np.zeros((2, 2, 3)))
    # Each gate's bias of 100 sits on the OTHER task's expert: were it seen, it would win.
    gates.bias.assign([[0.0, 100.0, np.log(3.0)], [100.0, np.log(3.0), 0.0]])
    x = tf.constant([[2.0, 4.0]])  # experts: 2, 4, 6
    (a, b), weights = layer(x, return_gates=True)
    np.testing.assert_allclose(weights["a"].numpy(), [[0.25, 0.75]], rtol=1e-6)  # (a's, shared)
    np.testing.assert_allclose(weights["b"].numpy(), [[0.75, 0.25]], rtol=1e-6)  # (b's, shared)
    np.testing.assert_allclose(a.numpy(), [[0.25 * 2 + 0.75 * 6]], rtol=1e-6)
    np.testing.assert_allclose(b.numpy(), [[0.75 * 4 + 0.25 * 6]], rtol=1e-6)
    full = gates(x).numpy()[0]  # over all three experts: the hidden one weighs exactly zero
    assert full[0, 1] == 0.0 and full[1, 0] == 0.0


def test_cgc_is_ple_with_one_level():
    counts = {"click": 1, "buy": 2, "watch": 1}
    cgc = CGC(TASKS, 2, counts, [6, 3], [4], activation="tanh")
    ple = PLE(TASKS, 1, 2, counts, [6, 3], [4], activation="tanh")
    x = _x()
    cgc(x), ple(x)
    assert [w.shape for w in ple.weights] == [w.shape for w in cgc.weights]
    ple.set_weights(cgc.get_weights())
    (cgc_out, cgc_gates), (ple_out, ple_gates) = (
        cgc(x, return_gates=True), ple(x, return_gates=True))
    assert set(ple_gates) == {f"level0/{t}" for t in TASKS}
    for task, c, p in zip(TASKS, cgc_out, ple_out, strict=True):
        np.testing.assert_array_equal(c.numpy(), p.numpy())
        np.testing.assert_array_equal(cgc_gates[task].numpy(), ple_gates[f"level0/{task}"].numpy())


def test_ple_with_two_levels_feeds_a_shared_gate_over_every_expert():
    layer = PLE(TASKS, levels=2, shared_experts=2, task_experts=2, expert_units=[5])
    outputs, gates = layer(_x(batch=3), return_gates=True)
    assert [o.shape for o in outputs] == [(3, 5)] * 3
    assert "level0/shared" in gates and "level1/shared" not in gates
    assert gates["level0/shared"].shape == (3, 3 * 2 + 2)
    assert gates["level1/click"].shape == (3, 2 + 2)
    # At level 1, task t's experts read task t's mixture and the shared ones the shared (3).
    level1 = layer.level_experts[1]
    assert level1.input_index == [0, 0, 1, 1, 2, 2, 3, 3]


def test_ple_second_level_reads_each_branch_by_hand():
    layer = PLE(["a", "b"], levels=2, shared_experts=1, task_experts=1, expert_units=[2],
                activation="linear")
    x = _x(batch=3, dim=3)
    (out_a, out_b), gates = layer(x, return_gates=True)

    def kernel(level):
        return np.concatenate([k.numpy() for k in layer.level_experts[level].kernels[0]])

    def softmax(z):
        z = np.exp(z - z.max(-1, keepdims=True))
        return z / z.sum(-1, keepdims=True)

    # Level 0: experts [a's, b's, shared] read x; gates a, b see (own, shared), shared sees all.
    e0 = np.einsum("bd,edu->beu", x.numpy(), kernel(0))  # biases start at zero
    g0 = np.einsum("bd,gde->bge", x.numpy(), layer.level_gates[0].kernel.numpy())
    seen = [[0, 2], [1, 2], [0, 1, 2]]
    branches = [np.einsum("be,beu->bu", softmax(g0[:, g, cols]), e0[:, cols])
                for g, cols in enumerate(seen)]
    np.testing.assert_allclose(gates["level0/shared"].numpy(), softmax(g0[:, 2]), rtol=1e-5)
    # Level 1: a's expert and gate read branch a, b's read branch b, the shared expert the shared.
    e1 = np.stack([branches[owner] @ kernel(1)[i] for i, owner in enumerate([0, 1, 2])], axis=1)
    g1 = layer.level_gates[1].kernel.numpy()
    for task, out in enumerate([out_a, out_b]):
        w = softmax((branches[task] @ g1[task])[:, seen[task]])
        np.testing.assert_allclose(gates[f"level1/{'ab'[task]}"].numpy(), w, rtol=1e-5)
        np.testing.assert_allclose(out.numpy(), np.einsum("be,beu->bu", w, e1[:, seen[task]]),
                                   rtol=1e-5, atol=1e-6)


def test_single_task_reads_each_task_its_own_input():
    layer = SingleTask(["a", "b"], [4, 2])
    x_a, x_b = _x(seed=1), _x(seed=2)
    a, b = layer([x_a, x_b])
    a2, b2 = layer([x_a, x_b + 1.0])
    np.testing.assert_array_equal(a.numpy(), a2.numpy())
    assert not np.allclose(b.numpy(), b2.numpy())
    same_a, same_b = layer(x_a)  # one tensor for both: the tasks' MLPs still differ
    np.testing.assert_allclose(same_a.numpy(), a.numpy(), rtol=1e-6)
    assert not np.allclose(same_a.numpy(), same_b.numpy())
    with pytest.raises(ValueError, match="needs 2 inputs"):
        SingleTask(["a", "b"], [4])([x_a, x_a, x_a])


@pytest.mark.parametrize("kind", list(BACKBONES))
def test_dropout_acts_only_in_training(kind):
    layer, plain = BACKBONES[kind](dropout=0.5), BACKBONES[kind]()
    x = _x()
    layer(x), plain(x)
    plain.set_weights(layer.get_weights())
    for got, want in zip(layer(x, training=False), plain(x), strict=True):
        np.testing.assert_array_equal(got.numpy(), want.numpy())
    trained = layer(x, training=True)
    assert not np.allclose(trained[0].numpy(), plain(x)[0].numpy())


@pytest.mark.parametrize(("kind", "groups"), [("mmoe", 3), ("ple", 5), ("single_task", 3)])
def test_batch_norm_keeps_statistics_per_expert_and_unit(kind, groups):
    layer = BACKBONES[kind](batch_norm=True)
    x = _x(batch=8)
    layer(x, training=True)  # one step: moves the moving statistics
    means = [w for w in layer.non_trainable_weights if "moving_mean" in w.name]
    # (1, experts or tasks, units): one statistic per expert and unit, not pooled over experts
    assert means and all(w.shape[-2] == groups and w.shape.num_elements() == groups * w.shape[-1]
                         for w in means)
    assert any(np.abs(w.numpy()).sum() > 0 for w in means)
    train, infer = layer(x, training=True)[0], layer(x, training=False)[0]
    assert not np.allclose(train.numpy(), infer.numpy())


@pytest.mark.parametrize(("kind", "shape"), [
    ("shared_bottom", (1, 6, 3)),
    ("moe", (3, 6, 3)),
    ("mmoe", (3, 6, 3)),
    ("cgc", (2, 6, 3)),  # the shared experts only: each task's own are not shared
    ("ple", (2, 6, 3)),
])
def test_last_shared_variables_reach_every_task(kind, shape):
    layer = BACKBONES[kind](activation="tanh")
    x = _x()
    layer(x)
    (var,) = layer.last_shared_variables()
    assert isinstance(var, tf.Variable) and var.shape == shape
    for task in range(3):
        with tf.GradientTape() as tape:
            out = tf.reduce_sum(layer(x)[task])
        assert np.abs(tape.gradient(out, var).numpy()).sum() > 0, TASKS[task]


def test_single_task_shares_no_variable():
    assert SingleTask(TASKS, [3]).last_shared_variables() == []


@pytest.mark.parametrize("kind", list(BACKBONES))
def test_config_round_trips(kind):
    layer = BACKBONES[kind](activation="tanh", dropout=0.25, batch_norm=True)
    clone = type(layer).from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()


@pytest.mark.parametrize(("make", "match"), [
    (lambda: MoE(TASKS, num_experts=0, expert_units=[4]), "num_experts must be .*got 0"),
    (lambda: MMoE(TASKS, 2, expert_units=[]), r"expert_units .*\[\]"),
    (lambda: MMoE(TASKS, 2, [4], gate_units=[0]), r"gate_units .*\[0\]"),
    (lambda: CGC(["a", "b"], 1, {"a": 1}, [4]), r"task_experts .*\['a'\]"),
    (lambda: CGC(["a", "b"], 1, {"a": 1, "b": 0}, [4]), r"task_experts\['b'\] .*got 0"),
    (lambda: CGC(TASKS, 0, 1, [4]), "shared_experts .*got 0"),
    (lambda: PLE(TASKS, 0, 1, 1, [4]), "levels .*got 0"),
    (lambda: PLE(["shared", "b"], 2, 1, 1, [4]), "'shared'"),
    (lambda: SharedBottom(TASKS, [4], dropout=1.0), "dropout .*1.0"),
    (lambda: SharedBottom(TASKS, [4], activation="nope"), "'nope'"),
    (lambda: SharedBottom([], [4]), r"task_names .*\[\]"),
    (lambda: SingleTask(["a", "a"], [4]), "unique"),
])
def test_bad_arguments_are_named(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize(("name", "cls"), [
    ("shared_bottom", SharedBottom), ("moe", MoE), ("mmoe", MMoE), ("cgc", CGC), ("ple", PLE),
    ("single_task", SingleTask),
])
def test_build_backbone_maps_every_config_name(name, cls):
    raw = yaml.safe_load(EXAMPLE.read_text())
    raw["model"].update(backbone=name, activation="tanh", dropout=0.125, batch_norm=True)
    raw["model"]["ple"] = {"levels": 3, "task_experts": {"click": 1, "conversion": 2,
                                                         "watch_time": 1}}
    config = parse_config(raw)
    tasks = [t.name for t in config.data.tasks]
    layer = build_backbone(config.model, tasks)
    assert type(layer) is cls and layer.name == "backbone"
    assert (layer.task_names, layer.activation, layer.dropout, layer.batch_norm) == (
        tasks, "tanh", 0.125, True)
    if name == "mmoe":
        assert layer.num_experts == config.model.mmoe.num_experts == 4  # the example's block
    if name == "ple":
        assert layer.levels == 3 and layer.task_experts["conversion"] == 2
    assert len(layer(_x(batch=2))) == 3


@pytest.mark.parametrize("kind", list(BACKBONES))
def test_a_model_holding_each_backbone_saves_and_loads(kind, tmp_path):
    inputs = keras.Input(shape=(5,))
    per_task = BACKBONES[kind](batch_norm=True, dropout=0.1)(inputs)
    outputs = {t: keras.layers.Dense(1, name=t)(h) for t, h in zip(TASKS, per_task, strict=True)}
    model = keras.Model(inputs, outputs)
    x = _x(batch=6).numpy()
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    want, got = model(x), loaded(x)
    for task in TASKS:
        np.testing.assert_allclose(got[task].numpy(), want[task].numpy(), rtol=1e-6)


def test_single_task_with_one_input_per_task_saves_and_loads(tmp_path):
    inputs = [keras.Input(shape=(4,), name=f"emb_{t}") for t in TASKS]
    model = keras.Model(inputs, SingleTask(TASKS, [3])(inputs))
    x = [_x(batch=2, dim=4, seed=s).numpy() for s in range(3)]
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    for got, want in zip(loaded(x), model(x), strict=True):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-6)


@pytest.mark.parametrize("kind", ["mmoe", "ple"])
def test_gates_from_a_diagnostic_model_that_shares_the_backbone(kind):
    inputs = keras.Input(shape=(5,))
    backbone = BACKBONES[kind]()
    keras.Model(inputs, backbone(inputs))  # the training model
    diagnostic = keras.Model(inputs, backbone(inputs, return_gates=True)[1])
    x = _x()
    got = diagnostic(x)
    want = backbone.gate_outputs(x)
    assert set(got) == set(want)
    for name in want:
        np.testing.assert_allclose(got[name].numpy(), want[name].numpy(), rtol=1e-6)


def test_gate_experts_name_every_gates_experts_in_its_weights_order():
    x = tf.random.normal([5, 7])
    cgc = CGC(TASKS, 2, {"click": 1, "buy": 2, "watch": 1}, [6, 3], [4])
    names = cgc.gate_experts()
    assert names == {"click": ["click/e0", "shared/e0", "shared/e1"],
                     "buy": ["buy/e0", "buy/e1", "shared/e0", "shared/e1"],
                     "watch": ["watch/e0", "shared/e0", "shared/e1"]}
    ple = PLE(TASKS, levels=2, shared_experts=1, task_experts=1, expert_units=[3])
    for layer in (cgc, ple, MMoE(TASKS, 3, [4]), MoE(TASKS, 3, [4])):
        gates = layer.gate_outputs(x)
        assert {g: int(w.shape[1]) for g, w in gates.items()} == {
            g: len(e) for g, e in layer.gate_experts().items()}
    assert ple.gate_experts()["level0/shared"] == ["click/e0", "buy/e0", "watch/e0", "shared/e0"]
    assert MMoE(TASKS, 2, [4]).gate_experts()["buy"] == ["e0", "e1"]
    assert SharedBottom(TASKS, [4]).gate_experts() == {}
