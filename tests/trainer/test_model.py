"""The configured model: raw inputs in, one output per task, and it learns on a tiny problem."""

from pathlib import Path

import numpy as np
import tensorflow as tf
import tf_keras
import yaml

from multitower.config import parse_config
from trainer.embeddings import embedding_variables
from trainer.model import build_model, compile_model

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "impressions.yaml"


def _batch(n: int, rng: np.random.Generator):
    """Rows where click depends on the device alone: learnable in a few steps."""
    device = rng.choice(["ios", "web"], size=n)
    features = {
        "user_id": np.array([f"u{i}" for i in rng.integers(0, 50, n)]),
        "user_segment": np.full(n, "s1"), "user_country": np.full(n, "DE"),
        "item_id": np.array([f"i{i}" for i in rng.integers(0, 50, n)]),
        "item_category": np.full(n, "c1"), "device": device,
        "hour": rng.integers(0, 24, n), "position": rng.integers(1, 10, n),
        "item_price": rng.normal(20, 5, n).astype(np.float32),
        "user_activity": rng.exponential(2, n).astype(np.float32),
    }
    click = (device == "ios").astype(np.float32)
    labels = {"click": click[:, None], "conversion": (click * 0)[:, None],
              "watch_time": (click * 3)[:, None]}
    return features, labels


def test_model_builds_from_config_and_learns_a_few_steps():
    raw = yaml.safe_load(EXAMPLE.read_text())
    raw["model"]["mmoe"].update(num_experts=2, expert_units=[8])
    config = parse_config(raw)
    normalization = {f.name: {"mean": 0.0, "std": 1.0} for f in config.data.numeric}
    normalization["item_price"] = {"mean": 20.0, "std": 5.0}
    tf_keras.utils.set_random_seed(0)  # the same start whatever ran before in this process
    model = build_model(config, normalization)
    compile_model(model, config)
    assert {i.name: i.dtype for i in model.inputs}["hour"] == tf.int64

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
    assert np.all((out["click"] > 0) & (out["click"] < 1))
    ios = labels["click"][:, 0] == 1
    assert out["click"][ios].mean() - out["click"][~ios].mean() > 0.5  # it learned the rule


def test_embedding_rows_outside_the_data_never_move_and_only_the_dense_optimizer_has_adam():
    raw = yaml.safe_load(EXAMPLE.read_text())
    raw["model"]["mmoe"].update(num_experts=2, expert_units=[8])
    raw["model"]["embeddings"] = {"num_shards": 3}
    config = parse_config(raw)
    normalization = {f.name: {"mean": 0.0, "std": 1.0} for f in config.data.numeric}
    tf_keras.utils.set_random_seed(0)
    model = build_model(config, normalization)
    compile_model(model, config)
    model.build_optimizers()
    shards = embedding_variables(model)
    assert len(shards) == 3 * len(config.data.categorical)
    assert {v.name.split("/")[-1].split(":")[0] for v in shards} == {
        "part_0_of_3", "part_1_of_3", "part_2_of_3"}
    dense_slots = {id(v) for v in model.optimizer.variables}
    assert not any(id(v) in dense_slots for v in shards)
    assert model.embedding_optimizer.get_slot_names() == ["accumulator"]  # adagrad by default
    user = model.get_layer("embed_user_id")
    before = user.full_table().numpy()

    features, labels = _batch(256, np.random.default_rng(1))
    model.fit(features, labels, batch_size=64, epochs=1, verbose=0)
    after = user.full_table().numpy()
    seen = np.unique(tf.strings.to_hash_bucket_fast(features["user_id"], 100_000).numpy())
    moved = np.flatnonzero(np.any(after != before, axis=1))
    np.testing.assert_array_equal(moved, seen)  # exactly the rows of the users in the data
    accumulator = np.concatenate(
        [model.embedding_optimizer.get_slot(v, "accumulator").numpy() for v in user.shards])
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
    model = build_model(config, normalization)
    assert tf_keras.mixed_precision.global_policy().name == "float32"  # restored
    compile_model(model, config)
    backbone = model.get_layer("backbone")
    assert backbone.compute_dtype == "bfloat16"
    assert all(v.dtype == tf.float32 for v in model.trainable_variables)

    features, labels = _batch(512, np.random.default_rng(0))
    history = model.fit(features, labels, batch_size=64, epochs=4, verbose=0)
    losses = history.history["click_loss"]
    assert losses[-1] < 0.6 * losses[0]
    out = model(features, training=False)
    assert {name: t.dtype for name, t in out.items()} == dict.fromkeys(out, tf.float32)
    ios = labels["click"][:, 0] == 1
    assert out["click"].numpy()[ios].mean() - out["click"].numpy()[~ios].mean() > 0.5

    path = export_saved_model(model, config, 1)
    rows = {k: tf.constant(v[:16]) for k, v in features.items()}
    served = tf.saved_model.load(path).signatures["serving_default"](**rows)
    assert served["click"].dtype == tf.float32
    in_memory = model(rows, training=False)["click"].numpy()[:, 0]
    # bfloat16 keeps 8 significant bits, and the traced (exported) graph rounds in other places
    # than the eager call: equal to bfloat16 precision, not to float32's
    np.testing.assert_allclose(served["click"].numpy(), in_memory, rtol=0.05, atol=1e-3)
