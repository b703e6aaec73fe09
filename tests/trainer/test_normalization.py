"""FusedBatchNorm against Keras' own BatchNormalization: same outputs, gradients and statistics."""

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from trainer.normalization import FusedBatchNorm


def _pair(shape, axis):
    fused = FusedBatchNorm(axis=axis, momentum=0.9)
    plain = keras.layers.BatchNormalization(axis=axis, momentum=0.9)
    fused.build((None, *shape))
    plain.build((None, *shape))
    rng = np.random.default_rng(0)
    weights = [rng.normal(1.0, 0.3, w.shape).astype("float32") for w in plain.weights]
    weights[3] = np.abs(weights[3])  # moving variance
    plain.set_weights(weights)
    fused.set_weights(weights)
    return fused, plain


@pytest.mark.parametrize("shape, axis", [((16,), -1), ((4, 6), [1, 2])])
def test_training_call_matches_keras(shape, axis):
    fused, plain = _pair(shape, axis)
    x = tf.constant(np.random.default_rng(1).normal(3.0, 2.0, (64, *shape)), tf.float32)
    weight = tf.constant(np.random.default_rng(2).uniform(0, 1, (64, *shape)), tf.float32)
    results = []
    for layer in (fused, plain):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=True)
            loss = tf.reduce_sum(y * y * weight)
        grads = tape.gradient(loss, [x, layer.gamma, layer.beta])
        results.append([y, *grads, layer.moving_mean, layer.moving_variance])
    for got, want in zip(*results, strict=True):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-4, atol=1e-4)
    # the statistics moved (the comparison above is not between two untouched copies)
    assert not np.allclose(fused.moving_mean.numpy(), _pair(shape, axis)[0].moving_mean.numpy())


def test_inference_and_traced_training_match_keras():
    fused, plain = _pair((4, 6), [1, 2])
    x = tf.random.stateless_normal((32, 4, 6), seed=(1, 2))
    np.testing.assert_allclose(fused(x, training=False), plain(x, training=False), rtol=1e-5)

    @tf.function(autograph=False)
    def step(layer):
        return layer(x, training=True)

    np.testing.assert_allclose(step(fused), step(plain), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(fused.moving_variance, plain.moving_variance, rtol=1e-5)


def test_checkpoint_of_keras_layer_restores(tmp_path):
    fused, plain = _pair((4, 6), [1, 2])
    path = tf.train.Checkpoint(norm=plain).save(str(tmp_path / "ckpt"))
    restored = FusedBatchNorm(axis=[1, 2])
    restored.build((None, 4, 6))
    tf.train.Checkpoint(norm=restored).restore(path).assert_consumed()
    for got, want in zip(restored.weights, plain.weights, strict=True):
        np.testing.assert_array_equal(got.numpy(), want.numpy())
