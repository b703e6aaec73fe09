"""Fused embedding tables: grouping, lookup, shared rows, lists, one gradient and one update per
group, a trained fused model's export, and checkpoints of the other layout refused."""

import json
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras
import yaml

from multitower.config import DataConfig, EmbeddingsConfig, parse_config
from multitower.errors import MultitowerError
from tests.small_project import EXAMPLE, device_batch
from trainer.embeddings import (
    FusedEmbedding,
    FusionMismatchError,
    PartitionedEmbedding,
    embedding_variables,
    find_table,
    make_row_sparse_optimizer,
    restore_checkpoint,
)
from trainer.features import TableGroup, embedding_tables, feature_vector, raw_inputs, table_groups
from trainer.training_model import build_training_model

BUCKETS = 50


def _data(features: list[dict]) -> DataConfig:
    return DataConfig.model_validate({"logs": "l/{date}", "tfrecords": "t", "rejected": "r",
                                      "features": features,
                                      "tasks": [{"name": "click", "type": "binary"}]})


def _cat(name, buckets, dim, **more):
    return {"name": name, "type": "categorical", "hash_buckets": buckets, "embedding_dim": dim,
            **more}


GROUPED = _data([
    _cat("a", 10, 2), _cat("b", 5, 3), _cat("c", 7, 2, dtype="int64"),
    _cat("d", 10, 2, embedding_table="a"),  # shares a's rows
    _cat("e", 4, 2, multivalent=True, max_length=3),
])


class _Placements:
    """An `EmbeddingsConfig` whose table `c` is model-parallel, as `placement_of` answers."""

    def placement_of(self, table):
        return "model_parallel" if table == "c" else "replicated"


def test_tables_of_one_width_and_placement_form_one_group_in_config_order():
    assert table_groups(GROUPED, EmbeddingsConfig()) == [
        TableGroup("embed_fused_d2_replicated", 2, "replicated", (("a", 10), ("c", 7), ("e", 4)),
                   ("a", "c", "d", "e")),
        TableGroup("embed_fused_d3_replicated", 3, "replicated", (("b", 5),), ("b",)),
    ]
    split = table_groups(GROUPED, _Placements(), prefix="click_")
    assert [(g.name, g.tables) for g in split] == [
        ("click_embed_fused_d2_replicated", (("a", 10), ("e", 4))),
        ("click_embed_fused_d3_replicated", (("b", 5),)),
        ("click_embed_fused_d2_model_parallel", (("c", 7),))]
    fused = embedding_tables(GROUPED, EmbeddingsConfig(num_shards=4))
    assert fused["a"] is fused["c"] is fused["e"] and fused["b"] is not fused["a"]
    assert [(t.num_buckets, t.num_shards) for t in (fused["a"], fused["b"])] == [(21, 4), (5, 4)]
    plain = embedding_tables(GROUPED, EmbeddingsConfig(fuse=False))  # today's layout, unchanged
    assert {k: (type(v), v.name, v.num_buckets) for k, v in plain.items()} == {
        "a": (PartitionedEmbedding, "embed_a", 10), "b": (PartitionedEmbedding, "embed_b", 5),
        "c": (PartitionedEmbedding, "embed_c", 7), "e": (PartitionedEmbedding, "embed_e", 4)}


def _fill(layer: PartitionedEmbedding, table: np.ndarray) -> None:
    bounds = np.cumsum([s.shape[0] for s in layer.shards])[:-1]
    for shard, part in zip(layer.shards, np.split(table, bounds), strict=True):
        shard.assign(part)


def _hash(values, buckets):
    return tf.strings.to_hash_bucket_fast(values, buckets).numpy()


def test_one_lookup_equals_the_per_table_lookups_and_shared_tables_share_rows():
    layer = FusedEmbedding([("a", 3), ("b", 2)], [("x", "a"), ("y", "b"), ("z", "a")], 2,
                           num_shards=2, name="embed_fused_d2_replicated")
    x, y = tf.constant(["p", "q"]), tf.constant([7, 8], tf.int64)
    z = tf.constant([["p", ""]])  # a padded list of a's values
    layer([x, y, z])
    table = np.arange(10, dtype=np.float32).reshape(5, 2)  # rows 0-2: a, rows 3-4: b
    _fill(layer, table)
    got_x, got_y, got_z = (t.numpy() for t in layer([x, y, z]))
    np.testing.assert_array_equal(got_x, table[_hash(["p", "q"], 3)])
    np.testing.assert_array_equal(got_y, table[3 + _hash(["7", "8"], 2)])  # ints as strings
    np.testing.assert_array_equal(got_z, table[_hash([["p", ""]], 3)])
    assert got_z.shape == (1, 2, 2)
    np.testing.assert_array_equal(got_z[0, 0], got_x[0])  # "p" in x or z: one row of a
    # the same rows in one layer per table give the same embeddings
    a, b = PartitionedEmbedding(3, 2), PartitionedEmbedding(2, 2)
    a(x), b(y)
    _fill(a, table[:3]), _fill(b, table[3:])
    np.testing.assert_array_equal(got_x, a(x).numpy())
    np.testing.assert_array_equal(got_y, b(y).numpy())
    np.testing.assert_array_equal(got_z, a(z).numpy())
    assert find_table(keras.Sequential([layer]), "b")[1:] == (3, 2)
    config = layer.get_config()
    again = keras.layers.deserialize({"class_name": "multitower>FusedEmbedding",
                                      "config": config})
    assert (again.members, again.features, again.num_buckets, again.num_shards) == (
        (("a", 3), ("b", 2)), (("x", "a"), ("y", "b"), ("z", "a")), 5, 2)
    with pytest.raises(ValueError, match="features name tables \\['c'\\]"):
        FusedEmbedding([("a", 3)], [("x", "c")], 2)


def test_a_block_lookup_is_the_features_embeddings_side_by_side():
    layer = FusedEmbedding([("a", 3), ("b", 2)], [("x", "a"), ("y", "b"), ("z", "a")], 2,
                           num_shards=2, name="embed_fused_d2_replicated")
    inputs = [tf.constant(["p", "q"]), tf.constant([7, 8], tf.int64), tf.constant(["q", "r"])]
    layer(inputs)
    _fill(layer, np.arange(10, dtype=np.float32).reshape(5, 2))
    block = layer(inputs, block=True).numpy()
    assert block.shape == (2, 6)
    np.testing.assert_array_equal(block, np.concatenate([t.numpy() for t in layer(inputs)], 1))
    with pytest.raises(ValueError, match="one value per row"):
        layer([inputs[0], inputs[1], tf.constant([["p", ""], ["q", ""]])], block=True)


@pytest.mark.parametrize("features, blocks", [
    # one width: every feature in one block, in config order
    ([_cat("a", 10, 2), _cat("b", 5, 2), _cat("c", 10, 2, embedding_table="a")], 1),
    # widths one after the other: a block per width
    ([_cat("a", 10, 2), _cat("b", 5, 2), _cat("c", 7, 3)], 2),
    # widths interleaved, or a list: the features one by one
    ([_cat("a", 10, 2), _cat("b", 5, 3), _cat("c", 7, 2)], 0),
    ([_cat("a", 10, 2), _cat("e", 4, 2, multivalent=True, max_length=3)], 0),
])
def test_the_feature_vector_keeps_the_config_order_with_or_without_blocks(features, blocks):
    data = _data(features)
    inputs = raw_inputs(data)
    vector = keras.Model(inputs, feature_vector(inputs, data, {}))
    concatenations = [layer for layer in vector.layers if layer.name == "features"]
    fused = [layer for layer in vector.layers if isinstance(layer, FusedEmbedding)]
    # blocks: the concatenation reads one tensor per group, not one per feature
    want_parts = blocks if blocks else len(features)
    assert len(concatenations[0].input) == want_parts if want_parts > 1 else not concatenations
    rng = np.random.default_rng(0)
    for layer in fused:
        _fill(layer, rng.normal(size=(layer.num_buckets, layer.dim)).astype(np.float32))
    if blocks == 0 and any(f.get("multivalent") for f in features):
        return  # lists take the per-feature path, which the list-feature tests cover
    rows = {f["name"]: tf.constant(["u", "v", "w"]) for f in features}
    got = vector(rows).numpy()
    want = []
    for f in data.categorical:  # each feature's own lookup, concatenated in config order
        layer = next(layer for layer in fused if f.name in dict(layer.features))
        names = [name for name, _ in layer.features]
        want.append(layer([rows[name] for name in names])[names.index(f.name)].numpy())
    np.testing.assert_allclose(got, np.concatenate(want, axis=1), rtol=1e-6)


def test_a_group_has_one_sparse_gradient_and_its_update_touches_only_the_looked_up_rows():
    layer = FusedEmbedding([("a", 3), ("b", 2)], [("x", "a"), ("y", "b"), ("z", "a")], 2,
                           num_shards=1, name="embed_fused_d2_replicated")
    inputs = [tf.constant(["p", "p"]), tf.constant([7], tf.int64), tf.constant([["p", "q"]])]
    layer(inputs)
    table = np.arange(10, dtype=np.float32).reshape(5, 2)
    _fill(layer, table)
    with tf.GradientTape() as tape:
        loss = tf.add_n([tf.reduce_sum(e) for e in layer(inputs)])
    grads = tape.gradient(loss, layer.trainable_weights)
    assert len(grads) == 1 and isinstance(grads[0], tf.IndexedSlices)  # one gather, one grad
    sgd = make_row_sparse_optimizer("sgd", 0.5)
    sgd.apply(zip(grads, layer.shards, strict=True))
    p, q, seven = _hash("p", 3), _hash("q", 3), 3 + _hash("7", 2)
    expected = table.copy()
    expected[p] -= 0.5 * 3  # "p" three times (x twice, z once): its row's gradient is 3
    expected[q] -= 0.5
    expected[seven] -= 0.5
    np.testing.assert_array_equal(layer.full_table().numpy(), expected)  # no other row moved
    # 27 tables of width 8 and one of width 4 in a model: two sparse gradients, not 28
    data = _data([_cat(f"t{i}", 2 + i, 8) for i in range(27)] + [_cat("w", 5, 4)])
    raw = raw_inputs(data)
    model = keras.Model(raw, feature_vector(raw, data, {}))
    batch = {f.name: tf.constant(["v1", "v2"]) for f in data.categorical}
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(model(batch))
    grads = tape.gradient(loss, model.trainable_weights)
    assert len(grads) == 2 and all(isinstance(g, tf.IndexedSlices) for g in grads)


def _config(fuse: bool = True, **train):
    raw = yaml.safe_load(EXAMPLE.read_text())
    for feature in raw["data"]["features"]:
        if feature["type"] == "categorical":
            feature["hash_buckets"] = BUCKETS
    raw["model"]["mmoe"].update(num_experts=2, expert_units=[8])
    raw["model"]["tower_units"] = [4]
    raw["model"]["embeddings"] = {"num_shards": 2, "fuse": fuse}
    raw["train"].update(train)
    return parse_config(raw)


def _batch(n: int, rng: np.random.Generator):
    return device_batch(n, rng, ids=30)


def _normalization(config):
    return {f.name: {"mean": 0.0, "std": 1.0} for f in config.data.numeric}


def _trained(config, steps: int = 3):
    keras.utils.set_random_seed(0)
    model = build_training_model(config, _normalization(config))
    features, labels = _batch(32 * steps, np.random.default_rng(0))
    model.fit(features, labels, batch_size=32, epochs=1, verbose=0)
    return model


_LOAD = """
import json, sys
import numpy as np
import tensorflow as tf  # plain TensorFlow: no multitower code
serve = tf.saved_model.load(sys.argv[1]).signatures["serving_default"]
features = {k: tf.constant(v) for k, v in np.load(sys.argv[2]).items()}
print(json.dumps({k: v.numpy().reshape(-1).tolist() for k, v in serve(**features).items()}))
"""


@pytest.fixture(scope="module")
def fused_model():
    return _trained(_config())


def test_a_fused_model_trains_and_its_export_loaded_fresh_scores_as_the_network(
        fused_model, tmp_path):
    from trainer.export import export_saved_model

    network = fused_model.network
    fused = [layer for layer in network.layers if isinstance(layer, FusedEmbedding)]
    # widths 16 (user_id, item_id and recent_items), 8 and 4: three groups, no per-table layer
    assert sorted(layer.name for layer in fused) == [
        "embed_fused_d16_replicated", "embed_fused_d4_replicated", "embed_fused_d8_replicated"]
    assert len(embedding_variables(network)) == 3 * 2
    item, recent = find_table(network, "item_id"), find_table(network, "user_id")
    assert item.layer is recent.layer and (recent.start, item.start) == (0, BUCKETS)
    # trained: the rows of the seen users moved, in the fused table, and only theirs
    slots = fused_model.optimizer.tables.slots["embed_fused_d16_replicated"]["accumulator"]
    grown = np.concatenate([v.numpy() for v in slots.values()])[:BUCKETS]
    seen = np.unique(tf.strings.to_hash_bucket_fast(_batch(96, np.random.default_rng(0))[0]
                                                    ["user_id"], BUCKETS).numpy())
    np.testing.assert_array_equal(np.flatnonzero(np.any(grown != 0.1, axis=1)), seen)

    config = _config(export_dir=str(tmp_path / "export"))
    folder = export_saved_model(network, config, 1)
    features, _ = _batch(16, np.random.default_rng(5))
    expected = {k: v.numpy()[:, 0] for k, v in network(features).items() if "/" not in k}
    np.savez(tmp_path / "features.npz", **features)
    run = subprocess.run([sys.executable, "-c", _LOAD, folder, str(tmp_path / "features.npz")],
                         capture_output=True, text=True, env={"TF_CPP_MIN_LOG_LEVEL": "2"})
    assert run.returncode == 0, run.stderr[-2000:]
    served = json.loads(run.stdout.strip().splitlines()[-1])
    assert set(expected) <= set(served)
    for name, value in expected.items():
        np.testing.assert_allclose(served[name], value, atol=1e-5, err_msg=name)


def test_checkpoints_of_the_other_layout_are_refused_naming_the_setting(fused_model, tmp_path):
    plain = _trained(_config(fuse=False), steps=1)  # today's layout: one layer per table
    assert find_table(plain.network, "item_id").layer.name == "embed_item_id"
    plain_path = plain.checkpoint().save(str(tmp_path / "plain" / "ckpt"))
    keys = [name for name, _ in tf.train.list_variables(plain_path)]
    assert any(k.startswith("optimizer/tables/slots/embed_item_id/accumulator/part_0_of_2")
               for k in keys)
    fused_path = fused_model.checkpoint().save(str(tmp_path / "fused" / "ckpt"))
    with pytest.raises(FusionMismatchError, match=f"the checkpoint {plain_path} holds one "
                       "variable per embedding table.*set model.embeddings.fuse: false") as no:
        restore_checkpoint(fused_model.checkpoint(), plain_path)
    assert isinstance(no.value, MultitowerError)
    with pytest.raises(FusionMismatchError, match="fuse: false"):  # weights only, as evaluate
        restore_checkpoint(tf.train.Checkpoint(network=fused_model.network), plain_path)
    with pytest.raises(FusionMismatchError, match=f"the checkpoint {fused_path} holds fused "
                       "embedding tables.*set model.embeddings.fuse: true"):
        restore_checkpoint(plain.checkpoint(), fused_path)
    # each layout restores its own checkpoints as before
    again = build_training_model(_config(), _normalization(_config()))
    assert restore_checkpoint(again.checkpoint(), fused_path) == []
    for mine, theirs in zip(embedding_variables(again.network),
                            embedding_variables(fused_model.network), strict=True):
        np.testing.assert_array_equal(mine.numpy(), theirs.numpy())
