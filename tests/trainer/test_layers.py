"""Layers on tiny inputs with values worked out by hand."""

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from multitower.config import DataConfig, EmbeddingsConfig
from trainer.backbones import MMoE
from trainer.embeddings import PartitionedEmbedding
from trainer.features import HashedEmbedding, Standardize, feature_vector, raw_inputs
from trainer.heads import TaskTower


def test_hashed_embedding_hashes_ints_as_their_decimal_string():
    layer = HashedEmbedding(num_buckets=1000, dim=3)
    from_str = layer(tf.constant(["7", "42"]))
    from_int = layer(tf.constant([7, 42], dtype=tf.int64))
    assert from_str.shape == (2, 3)
    np.testing.assert_array_equal(from_str.numpy(), from_int.numpy())
    expected = tf.strings.to_hash_bucket_fast(["42"], 1000).numpy()[0]
    np.testing.assert_array_equal(from_str.numpy()[1], layer.embeddings.numpy()[expected])
    with pytest.raises(ValueError, match="num_buckets"):
        HashedEmbedding(num_buckets=0, dim=3)


def test_standardize_uses_frozen_constants_and_centres_constant_columns():
    layer = Standardize(mean=[1.0, 10.0], std=[2.0, 0.0])
    out = layer(tf.constant([[5.0, 12.0]]))
    np.testing.assert_allclose(out.numpy(), [[2.0, 2.0]])
    assert not layer.trainable_weights  # frozen: the optimizer never moves them
    with pytest.raises(ValueError, match="differ in length"):
        Standardize(mean=[1.0], std=[1.0, 2.0])


def test_task_tower_outputs_probability_or_value():
    x = tf.random.normal((4, 3), seed=3)
    p = TaskTower([5], "binary")(x)
    assert p.shape == (4, 1) and np.all((p.numpy() > 0) & (p.numpy() < 1))
    v = TaskTower([], "regression")
    v(x)
    v.out.set_weights([np.full((3, 1), 2.0), np.array([1.0])])
    np.testing.assert_allclose(v(tf.ones((1, 3))).numpy(), [[7.0]])
    with pytest.raises(ValueError, match="task_type"):
        TaskTower([4], "ranking")


def test_layers_survive_a_keras_save_round_trip(tmp_path):
    inputs = keras.Input(shape=(4,))
    a, b = MMoE(["a", "b"], num_experts=3, expert_units=[5])(inputs)
    model = keras.Model(inputs, [TaskTower([2], "binary")(a), TaskTower([2], "regression")(b)])
    x = np.random.default_rng(0).normal(size=(6, 4)).astype("float32")
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    for got, want in zip(loaded.predict(x, verbose=0), model.predict(x, verbose=0), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6)


def test_features_sharing_a_table_read_one_partitioned_table():
    data = DataConfig.model_validate({
        "logs": "l/{date}", "tfrecords": "t", "rejected": "r",
        "features": [
            {"name": "item_id", "type": "categorical", "hash_buckets": 10, "embedding_dim": 2,
             "embedding_table": "items"},
            {"name": "last_item", "type": "categorical", "hash_buckets": 10, "embedding_dim": 2,
             "embedding_table": "items"},
            {"name": "device", "type": "categorical", "hash_buckets": 3, "embedding_dim": 2},
        ],
        "tasks": [{"name": "click", "type": "binary"}],
    })
    inputs = raw_inputs(data)
    # one layer per table (fusion, which would put both in one layer, is tested in
    # test_fused_tables.py)
    model = keras.Model(inputs, feature_vector(inputs, data, {},
                                               EmbeddingsConfig(num_shards=4, fuse=False)))
    tables = [layer for layer in model.layers if isinstance(layer, PartitionedEmbedding)]
    assert [(t.name, t.num_shards) for t in tables] == [("embed_items", 4), ("embed_device", 3)]
    assert [v.shape[0] for v in model.trainable_variables] == [3, 3, 2, 2, 1, 1, 1]
    out = model({"item_id": tf.constant(["a", "b"]), "last_item": tf.constant(["b", "b"]),
                 "device": tf.constant(["ios", "web"])}).numpy()
    np.testing.assert_array_equal(out[1, 0:2], out[0, 2:4])  # "b" in either column: one row
    np.testing.assert_array_equal(out[1, 0:2], out[1, 2:4])
    assert not np.array_equal(out[0, 0:2], out[0, 2:4])
