"""The configured model: raw inputs in, one output per task, and it learns on a tiny problem."""

import numpy as np
import pytest
import tensorflow as tf
import tf_keras
import yaml

from multitower.config import parse_config
from tests.small_project import EXAMPLE, device_batch
from trainer.embeddings import embedding_variables, find_table
from trainer.training_model import build_training_model


def _batch(n: int, rng: np.random.Generator):
    """Rows where click depends on the device alone: learnable in a few steps."""
    return device_batch(n, rng, ids=50)


def test_model_builds_from_config_and_learns_a_few_steps():
    raw = yaml.safe_load(EXAMPLE.read_text())
    raw["model"]["mmoe"].update(num_experts=2, expert_units=[8])
    config = parse_config(raw)
    normalization = {f.name: {"mean": 0.0, "std": 1.0} for f in config.data.numeric}
    normalization["item_price"] = {"mean": 20.0, "std": 5.0}
    tf_keras.utils.set_random_seed(0)  # the same start whatever ran before in this process
    model = build_training_model(config, normalization)
    assert {i.name: i.dtype for i in model.network.inputs}["hour"] == tf.int64

    features, labels = _batch(512, np.random.default_rng(0))
    history = model.fit(features, labels, batch_size=64, epochs=6, verbose=0)
    losses = history.history["click_loss"]
    assert losses[-1] < 0.6 * losses[0]
    assert history.history["weight/click"][-1] == 1.0  # fixed balancing: the configured weight
    gates = [k for k in history.history if k.startswith("gate/click/expert")]
    assert len(gates) == 2  # one mean weight per expert of the click gate
    out = model.predict(features, verbose=0)
    assert set(out) == {"click", "conversion", "watch_time", "gate/click", "gate/conversion",
                        "gate/watch_time"}
    assert out["click"].shape == (512, 1)
    assert np.all((out["click"] >= 0) & (out["click"] <= 1))  # a learned rule may saturate
    ios = labels["click"][:, 0] == 1
    assert out["click"][ios].mean() - out["click"][~ios].mean() > 0.5  # it learned the rule


def test_embedding_rows_outside_the_data_never_move_and_only_the_dense_optimizer_has_adam():
    raw = yaml.safe_load(EXAMPLE.read_text())
    raw["model"]["mmoe"].update(num_experts=2, expert_units=[8])
    raw["model"]["embeddings"] = {"num_shards": 3}
    config = parse_config(raw)
    normalization = {f.name: {"mean": 0.0, "std": 1.0} for f in config.data.numeric}
    tf_keras.utils.set_random_seed(0)
    model = build_training_model(config, normalization)
    shards = embedding_variables(model.network)
    # one layer per width: the tables of one embedding_dim are fused
    assert len(shards) == 3 * len({f.embedding_dim for f in config.data.categorical})
    assert {v.name.split("/")[-1].split(":")[0] for v in shards} == {
        "part_0_of_3", "part_1_of_3", "part_2_of_3"}
    dense_slots = {id(v) for v in model.optimizer.variables}
    assert not any(id(v) in dense_slots for v in shards)
    tables = model.optimizer.tables  # the one optimizer's row-sparse part
    assert tables.slot_names == ("accumulator",)  # adagrad by default
    rows = find_table(model.network, "user_id")  # its rows in the fused table of width 16
    user, start, stop = rows.layer, rows.start, rows.stop
    before = user.full_table().numpy()[start:stop]

    features, labels = _batch(256, np.random.default_rng(1))
    model.fit(features, labels, batch_size=64, epochs=1, verbose=0)
    after = user.full_table().numpy()[start:stop]
    seen = np.unique(tf.strings.to_hash_bucket_fast(features["user_id"], 100_000).numpy())
    moved = np.flatnonzero(np.any(after != before, axis=1))
    np.testing.assert_array_equal(moved, seen)  # exactly the rows of the users in the data
    accumulator = np.concatenate(
        [tables.slot(v, "accumulator").numpy() for v in user.shards])[start:stop]
    grown = np.flatnonzero(np.any(accumulator != accumulator.min(), axis=1))
    np.testing.assert_array_equal(grown, seen)


def test_mixed_bfloat16_computes_in_bfloat16_and_serves_float32(tmp_path):
    from trainer.export import export_saved_model

    raw = yaml.safe_load(EXAMPLE.read_text())
    raw["model"]["mmoe"].update(num_experts=2, expert_units=[8])
    raw["train"].update(precision="mixed_bfloat16", export_dir=str(tmp_path))
    config = parse_config(raw)
    normalization = {f.name: {"mean": 0.0, "std": 1.0} for f in config.data.numeric}
    tf_keras.utils.set_random_seed(0)
    model = build_training_model(config, normalization)
    assert tf_keras.mixed_precision.global_policy().name == "float32"  # restored
    backbone = model.network.get_layer("backbone")
    assert backbone.compute_dtype == "bfloat16"
    assert all(v.dtype == tf.float32 for v in model.trainable_variables)

    features, labels = _batch(512, np.random.default_rng(0))
    history = model.fit(features, labels, batch_size=64, epochs=6, verbose=0)
    losses = history.history["click_loss"]
    assert losses[-1] < 0.6 * losses[0]
    out = model(features, training=False)
    assert {name: t.dtype for name, t in out.items()} == dict.fromkeys(out, tf.float32)
    ios = labels["click"][:, 0] == 1
    assert out["click"].numpy()[ios].mean() - out["click"].numpy()[~ios].mean() > 0.5

    path = export_saved_model(model.network, config, 1)
    rows = {k: tf.constant(v[:16]) for k, v in features.items()}
    served = tf.saved_model.load(path).signatures["serving_default"](**rows)
    assert served["click"].dtype == tf.float32
    in_memory = model(rows, training=False)["click"].numpy()[:, 0]
    # bfloat16 keeps 8 significant bits, and the traced (exported) graph rounds in other places
    # than the eager call: equal to bfloat16 precision, not to float32's
    np.testing.assert_allclose(served["click"].numpy(), in_memory, rtol=0.05, atol=1e-3)


def test_validation_loss_is_the_training_objective_with_uncertainty_terms():
    raw = yaml.safe_load(EXAMPLE.read_text())
    raw["model"]["mmoe"].update(num_experts=2, expert_units=[8])
    raw["train"]["loss_balancing"] = "uncertainty"
    config = parse_config(raw)
    normalization = {f.name: {"mean": 0.0, "std": 1.0} for f in config.data.numeric}
    tf_keras.utils.set_random_seed(0)
    model = build_training_model(config, normalization)
    s = np.array([0.4, -0.3, 1.2], np.float32)
    model.balancer.log_variance.assign(s)
    features, labels = _batch(64, np.random.default_rng(2))
    logs = model.evaluate(features, labels, batch_size=64, verbose=0, return_dict=True)
    terms = [t.name for t in model.terms]
    base = np.array([t.weight for t in model.terms])
    per_term = np.array([logs[f"{t}_loss"] for t in terms])
    expected = float(np.sum(base * np.exp(-s) * per_term + s))  # one batch: exact
    assert logs["loss"] == pytest.approx(expected, rel=1e-5)
    assert logs["loss"] != pytest.approx(float(np.sum(base * per_term)), rel=1e-3)
