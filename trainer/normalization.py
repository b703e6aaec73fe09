"""Batch normalization that runs TensorFlow's fused kernel on 2-D and 3-D inputs.

`FusedBatchNorm` is `keras.layers.BatchNormalization` with the same variables, statistics and
moving-average updates, for layers that normalize every non-batch axis (a tower's `(batch,
units)`, the experts' `(batch, groups, units)`). Keras fuses only 4-D inputs normalized over
their channel axis; on the others it runs moments and a dozen elementwise ops, forward and
backward, which cost about 3x the fused kernel (0.50 against 0.15 ms for a forward and backward
pass over the census-shaped MMoE's `(1024, 8, 64)` experts on 2 cores). A training call here
views the input as `(batch, 1, 1, features)` and runs the fused kernel; inference, and a call
whose `training` is unknown when traced, take Keras' own path. Checkpoints are those of the
Keras layer (same class hierarchy, same variable names and shapes).
"""

from __future__ import annotations

import tensorflow as tf
import tf_keras as keras


class FusedBatchNorm(keras.layers.BatchNormalization):
    """`keras.layers.BatchNormalization` that trains with the fused kernel; see the module."""

    def _fusable(self, inputs: tf.Tensor, training: object) -> bool:
        rank = inputs.shape.rank
        return (tf.get_static_value(training) is True and rank is not None and rank >= 2
                and sorted(a % rank for a in self.axis) == list(range(1, rank))
                and self.center and self.scale
                and not (self.renorm or self.virtual_batch_size or self.synchronized
                         or self.adjustment))

    def call(self, inputs: tf.Tensor, training: bool | None = None) -> tf.Tensor:
        training = self._get_training_value(training)
        if not self._fusable(inputs, training):
            return super().call(inputs, training=training)
        shape = inputs.shape[1:]
        width = shape.num_elements()
        x = tf.reshape(tf.cast(inputs, tf.float32), [-1, 1, 1, width])
        y, mean, variance = tf.compat.v1.nn.fused_batch_norm(
            x, tf.reshape(tf.cast(self.gamma, tf.float32), [width]),
            tf.reshape(tf.cast(self.beta, tf.float32), [width]),
            epsilon=self.epsilon, is_training=True)
        # The kernel returns the variance with Bessel's correction; Keras' moving variance (and
        # its unfused path) averages the batch's own variance.
        count = tf.cast(tf.shape(x)[0], tf.float32)
        variance = variance * tf.maximum(count - 1.0, 0.0) / tf.maximum(count, 1.0)
        size = tf.shape(inputs)[0]
        for moving, batch in ((self.moving_mean, mean), (self.moving_variance, variance)):
            self._assign_moving_average(moving, tf.reshape(batch, moving.shape), self.momentum,
                                        size)
        return tf.cast(tf.reshape(y, [-1, *shape.as_list()]), self.compute_dtype)
