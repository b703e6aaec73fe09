"""One trainer worker for the multi-process tests: `train_day`, then dump what it ended with.

Usage: python worker_main.py CONFIG DATE OUT_DIR [ROWS_JSONL]
Writes OUT_DIR/worker-<index>.npz with the model's weights, each embedding table whole
(`table/<layer>`) with its embedding optimizer slots (`slot/<layer>/<slot>`), and the global
step, and, given raw rows,
the trained in-memory model's predictions on them (to compare with the exported SavedModel).
With CRASH_WORKER_AFTER=i:k in the environment, worker i dies (os._exit) at the end of the first
call of the train function that reaches its k-th step of the day, as a killed pod would.
"""

# ruff: noqa: I001  (multitower must be imported before TensorFlow)
import json
import logging
import os
import sys

import multitower  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
import numpy as np
import tensorflow as tf
import tf_keras as keras

from multitower.config import load_config
from multitower.records import feature_dtype
from multitower.values import padded
from trainer.embeddings import PartitionedEmbedding
from multitower.cluster import task_info
from trainer.strategy import make_strategy
from trainer.train import train_day


class CrashWorker(keras.callbacks.Callback):
    def __init__(self, worker: int, after: int):
        super().__init__()
        self.worker = worker
        self.after = after

    def on_train_batch_end(self, batch, logs=None):
        # Keras calls it once per call of the train function (train.steps_per_execution
        # steps): the worker dies at the first call that reaches its k-th step.
        if task_info().task_id == self.worker and batch + 1 >= self.after:
            os._exit(3)  # no cleanup at all, as a killed process


def train_from_argv():
    """`train_day(CONFIG, DATE)` from argv as this worker, crashing it as the environment asks.

    Returns:
        `(strategy, config, result)`.
    """
    logging.basicConfig(format="%(message)s")  # the trainer's own lines, on stderr
    logging.getLogger("multitower").setLevel(logging.INFO)
    config_path, date = sys.argv[1:3]
    strategy = make_strategy()
    config = load_config(config_path)
    crash = os.environ.get("CRASH_WORKER_AFTER")  # "<worker index>:<steps>"
    callbacks = [CrashWorker(*map(int, crash.split(":")))] if crash else []
    return strategy, config, train_day(config, date, strategy, callbacks=callbacks)


def main() -> None:
    out_dir = sys.argv[3]
    strategy, config, result = train_from_argv()
    network = result.model.network
    arrays = {f"w{i}": w for i, w in enumerate(network.get_weights())}
    tables = result.model.optimizer.tables  # the one optimizer's row-sparse part
    for layer in network.layers:
        if isinstance(layer, PartitionedEmbedding):
            arrays[f"table/{layer.name}"] = layer.full_table().numpy()
            for slot in tables.slot_names:
                arrays[f"slot/{layer.name}/{slot}"] = np.concatenate(
                    [tables.slot(v, slot).numpy() for v in layer.shards])
    arrays["global_step"] = np.array(result.global_step)
    arrays["num_replicas"] = np.array(strategy.num_replicas_in_sync)
    if len(sys.argv) > 4:
        with open(sys.argv[4]) as f:
            rows = [json.loads(line) for line in f]
        features = {
            f.name: tf.constant([padded(r[f.name], f.max_length, f.list_pad)  # a list: padded
                                 if f.multivalent else r[f.name] for r in rows],
                                dtype=feature_dtype(f.dtype))
            for f in config.data.features
        }
        outputs = network(features, training=False)
        for task in config.data.tasks:
            arrays[f"pred_{task.name}"] = outputs[task.name].numpy()[:, 0]
    np.savez(os.path.join(out_dir, f"worker-{task_info().task_id}.npz"), **arrays)


if __name__ == "__main__":
    main()
