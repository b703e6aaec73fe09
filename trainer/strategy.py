"""One factory for the tf.distribute strategy, read from the environment.

A laptop run and a 16-worker run differ only in `TF_CONFIG`. MultiWorkerMirroredStrategy is used
when `TF_CONFIG` names a cluster of several workers or when one machine has several GPUs
(single-machine MirroredStrategy has no efficient path for sparse embedding gradients,
tensorflow/tensorflow#41898); otherwise the default strategy.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import tensorflow as tf


@dataclass(frozen=True)
class TaskInfo:
    """Who this process is in the cluster."""

    task_type: str
    task_id: int
    num_workers: int

    @property
    def is_chief(self) -> bool:
        """The chief is `chief:0`, or `worker:0` when the cluster has no chief."""
        return self.task_type == "chief" or (self.task_type == "worker" and self.task_id == 0)


def task_info() -> TaskInfo:
    """Reads `TF_CONFIG`; a process without it is the only worker and the chief."""
    raw = os.environ.get("TF_CONFIG", "")
    if not raw:
        return TaskInfo("worker", 0, 1)
    try:
        tf_config = json.loads(raw)
        cluster = tf_config.get("cluster", {})
        task = tf_config["task"]
        workers = len(cluster.get("chief", [])) + len(cluster.get("worker", []))
        return TaskInfo(str(task["type"]), int(task["index"]), max(workers, 1))
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(
            f"TF_CONFIG is not valid: {err!r}; expected "
            '{"cluster": {"worker": ["host:port", ...]}, "task": {"type": "worker", "index": 0}}'
        ) from None


def make_strategy() -> tf.distribute.Strategy:
    """Builds the strategy for this process; call it before creating any TensorFlow state."""
    info = task_info()
    gpus = tf.config.list_physical_devices("GPU")
    if info.num_workers > 1 or len(gpus) > 1:
        options = tf.distribute.experimental.CommunicationOptions(
            implementation=tf.distribute.experimental.CommunicationImplementation.AUTO
        )
        return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    return tf.distribute.get_strategy()
