"""Task heads: one MLP tower per task, or the ESMM chain (pCTCVR = pCTR x pCVR).

ESMM (Ma et al., SIGIR 2018) never trains pCVR on the clicked subset: it trains pCTR on the click
label and pCTCVR on click x conversion over every impression, so pCVR is learned over the whole
impression space without sample selection bias. The loss side lives in `trainer.losses`.
"""

from __future__ import annotations

from collections.abc import Sequence

import tensorflow as tf
import tf_keras as keras

from multitower.config import Config
from trainer.normalization import FusedBatchNorm


@keras.utils.register_keras_serializable(package="multitower")
class TaskTower(keras.layers.Layer):
    """An MLP ending in one unit: a probability for a binary task, a value for a regression task.

    Input shape: `(batch, d)`. Output shape: `(batch, 1)`.
    """

    def __init__(
        self,
        units: Sequence[int],
        task_type: str,
        activation: str = "relu",
        dropout: float = 0.0,
        batch_norm: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if task_type not in ("binary", "regression"):
            raise ValueError(f"task_type must be 'binary' or 'regression', got {task_type!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.units = [int(u) for u in units]
        self.task_type = task_type
        self.activation = activation
        self.dropout = dropout
        self.batch_norm = batch_norm
        self.hidden = [keras.layers.Dense(u) for u in self.units]
        self.norms = [FusedBatchNorm() for _ in self.units] if batch_norm else []
        self.drop = keras.layers.Dropout(dropout) if dropout else None
        self.act = keras.activations.get(activation)
        # float32 under a mixed precision policy: the output feeds the loss and serving
        self.out = keras.layers.Dense(1, dtype="float32")

    def call(self, x: tf.Tensor, training: bool | None = None) -> tf.Tensor:
        for i, layer in enumerate(self.hidden):
            x = layer(x)
            if self.norms:
                x = self.norms[i](x, training=training)
            x = self.act(x)
            if self.drop is not None:
                x = self.drop(x, training=training)
        logit = self.out(x)
        return tf.sigmoid(logit) if self.task_type == "binary" else logit

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "units": self.units,
            "task_type": self.task_type,
            "activation": self.activation,
            "dropout": self.dropout,
            "batch_norm": self.batch_norm,
        }


def build_heads(config: Config, per_task: list[tf.Tensor]) -> dict[str, tf.Tensor]:
    """Towers on the backbone's per-task outputs, and the ESMM chain when configured.

    Args:
        config: The whole config (tasks, model.heads, model.esmm, tower sizes).
        per_task: The backbone's outputs, one `(batch, d)` tensor per task, in task order.

    Returns:
        `{task name: (batch, 1)}`; with ESMM also `{ctcvr_name: (batch, 1)}` = pCTR x pCVR, where
        the CTR task's output is pCTR and the CVR task's output is pCVR.
    """
    spec = config.model
    outputs = {
        task.name: TaskTower(spec.tower_units, task.type, activation=spec.activation,
                             dropout=spec.dropout, batch_norm=spec.batch_norm, name=task.name)(h)
        for task, h in zip(config.data.tasks, per_task, strict=True)
    }
    if spec.heads == "esmm":
        esmm = spec.esmm
        outputs[esmm.ctcvr_name] = keras.layers.Multiply(name=esmm.ctcvr_name, dtype="float32")(
            [outputs[esmm.ctr_task], outputs[esmm.cvr_task]]
        )
    return outputs
