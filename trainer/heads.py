"""Task heads: one MLP tower per task on top of that task's backbone output."""

from __future__ import annotations

from collections.abc import Sequence

import tensorflow as tf
import tf_keras as keras


@keras.utils.register_keras_serializable(package="multitower")
class TaskTower(keras.layers.Layer):
    """An MLP ending in one unit: a probability for a binary task, a value for a regression task.

    Input shape: `(batch, d)`. Output shape: `(batch, 1)`.
    """

    def __init__(self, units: Sequence[int], task_type: str, activation: str = "relu", **kwargs):
        super().__init__(**kwargs)
        if task_type not in ("binary", "regression"):
            raise ValueError(f"task_type must be 'binary' or 'regression', got {task_type!r}")
        self.units = [int(u) for u in units]
        self.task_type = task_type
        self.activation = activation
        self.hidden = [keras.layers.Dense(u, activation=activation) for u in self.units]
        self.out = keras.layers.Dense(1)

    def call(self, x: tf.Tensor) -> tf.Tensor:
        for layer in self.hidden:
            x = layer(x)
        logit = self.out(x)
        return tf.sigmoid(logit) if self.task_type == "binary" else logit

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "units": self.units,
            "task_type": self.task_type,
            "activation": self.activation,
        }
