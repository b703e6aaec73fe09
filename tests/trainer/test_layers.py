"""Layers on tiny inputs with values worked out by hand."""

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from trainer.backbones import MMoE
from trainer.features import HashedEmbedding, Standardize
from trainer.heads import TaskTower


def _set_mmoe(layer: MMoE, kernel, bias, gate_kernel, gate_bias):
    layer.expert_kernels[0].assign(kernel)
    layer.expert_biases[0].assign(bias)
    layer.gate_kernel.assign(gate_kernel)
    layer.gate_bias.assign(gate_bias)


def test_mmoe_mixes_experts_by_gate_worked_by_hand():
    layer = MMoE(num_tasks=2, num_experts=2, expert_units=[1], activation="linear")
    layer.build((None, 2))
    # expert 0 sums the inputs, expert 1 takes x0 - x1
    _set_mmoe(
        layer,
        kernel=np.array([[[1.0], [1.0]], [[1.0], [-1.0]]]),
        bias=np.zeros((2, 1)),
        gate_kernel=np.zeros((2, 2, 2)),
        # task 0 gate: softmax(0, ln 3) = (1/4, 3/4); task 1: uniform
        gate_bias=np.array([[0.0, np.log(3.0)], [0.0, 0.0]]),
    )
    x = tf.constant([[3.0, 1.0]])  # experts: 4 and 2
    (t0, t1), gates = layer(x, return_gates=True)
    np.testing.assert_allclose(gates.numpy()[0], [[0.25, 0.75], [0.5, 0.5]], rtol=1e-6)
    np.testing.assert_allclose(t0.numpy(), [[0.25 * 4 + 0.75 * 2]], rtol=1e-6)
    np.testing.assert_allclose(t1.numpy(), [[3.0]], rtol=1e-6)


def test_mmoe_gates_sum_to_one_and_shapes():
    layer = MMoE(num_tasks=3, num_experts=5, expert_units=[8, 4])
    x = tf.random.normal((7, 6), seed=1)
    outputs, gates = layer(x, return_gates=True)
    assert len(outputs) == 3 and all(o.shape == (7, 4) for o in outputs)
    assert gates.shape == (7, 3, 5)
    np.testing.assert_allclose(tf.reduce_sum(gates, -1).numpy(), np.ones((7, 3)), rtol=1e-6)
    assert layer.expert_kernels[1].shape == (5, 8, 4)  # experts are one batched tensor


def test_mmoe_with_one_expert_gives_every_task_the_same_vector():
    layer = MMoE(num_tasks=2, num_experts=1, expert_units=[3])
    a, b = layer(tf.random.normal((4, 5), seed=2))
    np.testing.assert_allclose(a.numpy(), b.numpy())


def test_mmoe_rejects_bad_arguments_and_round_trips_config():
    with pytest.raises(ValueError, match="num_experts"):
        MMoE(num_tasks=2, num_experts=0, expert_units=[4])
    with pytest.raises(ValueError, match="expert_units"):
        MMoE(num_tasks=2, num_experts=2, expert_units=[])
    layer = MMoE(num_tasks=2, num_experts=3, expert_units=[4, 2], activation="tanh")
    clone = MMoE.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()


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
    a, b = MMoE(num_tasks=2, num_experts=3, expert_units=[5])(inputs)
    model = keras.Model(inputs, [TaskTower([2], "binary")(a), TaskTower([2], "regression")(b)])
    x = np.random.default_rng(0).normal(size=(6, 4)).astype("float32")
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    for got, want in zip(loaded.predict(x, verbose=0), model.predict(x, verbose=0), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6)
