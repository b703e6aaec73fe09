"""`ModelDir.history`: progressive validation and drift, one JSON line per day.

Before a model trains on day D it is scored on D, which it has never seen (progressive
validation): the honest daily quality figure. The record also holds how far the day's numeric
features drifted from the normalization constants frozen on the first day. Records are appended
as JSON lines and written to TensorBoard (`model_dir/tensorboard/progressive`).
"""

from __future__ import annotations

import json
import logging

import tensorflow as tf

from trainer.model_dir import ModelDir

log = logging.getLogger("multitower.trainer")
DRIFT_WARNING = 0.5  # a mean moved by half a frozen std, or a std off by this factor from 1


def numeric_drift(normalization: dict, manifest: dict) -> dict[str, dict[str, float]]:
    """Per numeric feature: the day's mean shift in frozen std units, and its std ratio."""
    drift = {}
    for name, frozen in normalization.items():
        day = manifest["numeric"].get(name) or {}
        if day.get("mean") is None:
            continue
        scale = frozen["std"] if frozen["std"] > 0 else 1.0
        drift[name] = {
            "mean_shift_in_std": (day["mean"] - frozen["mean"]) / scale,
            "std_ratio": (day["std"] / scale) if day.get("std") is not None else float("nan"),
        }
        shift, ratio = drift[name]["mean_shift_in_std"], drift[name]["std_ratio"]
        if abs(shift) > DRIFT_WARNING or not 1 - DRIFT_WARNING <= ratio <= 1 + 2 * DRIFT_WARNING:
            log.warning(
                "feature %s drifted from its frozen normalization: mean moved %.2f std, std "
                "ratio %.2f (constants stay frozen from the first day)", name, shift, ratio,
            )
    return drift


def append_history(model_dir: str, record: dict) -> None:
    """Appends one JSON line and the record's scalars to TensorBoard."""
    path = ModelDir(model_dir).history
    previous = tf.io.gfile.GFile(path).read() if tf.io.gfile.exists(path) else ""
    # Object stores cannot append: rewrite the whole (small) file.
    with tf.io.gfile.GFile(path, "w") as f:
        f.write(previous + json.dumps(record, sort_keys=True) + "\n")
    writer = tf.summary.create_file_writer(ModelDir(model_dir).progressive_tensorboard)
    with writer.as_default(step=int(record["global_step"])):
        for task, values in record.get("tasks", {}).items():
            for metric, value in values.items():
                if metric != "rows" and isinstance(value, float):  # not curves or counts
                    tf.summary.scalar(f"{task}/{metric}", value)
    writer.flush()


def read_history(model_dir: str) -> list[dict]:
    """Every record appended so far, oldest first."""
    path = ModelDir(model_dir).history
    if not tf.io.gfile.exists(path):
        return []
    return [json.loads(line) for line in tf.io.gfile.GFile(path).read().splitlines() if line]
