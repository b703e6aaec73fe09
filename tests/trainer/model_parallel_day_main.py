"""One trainer worker of the model-parallel day tests: `train_day`, then dump this worker's part.

Usage: python model_parallel_day_main.py CONFIG DATE OUT_DIR ROWS_JSONL

Writes OUT_DIR/worker-<index>.npz: every model-parallel table's rows on this worker
(`rows/<layer>`) with their slots (`slot/<layer>/<slot>`), the replicated weights of the network
(`dense/<i>`, every variable but the model-parallel ones), the global step, and the trained
model's predictions on the raw rows (`pred_<task>`), computed the way training looks rows up:
inside `strategy.run`, every worker scoring the same rows. With CRASH_WORKER_AFTER=i:k in the
environment, worker i dies as in `worker_main.py`.
"""

# ruff: noqa: I001  (multitower must be imported before TensorFlow)
import json
import os
import sys

import multitower  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
import numpy as np
import tensorflow as tf

from multitower.cluster import task_info
from multitower.records import feature_dtype
from multitower.values import padded
from trainer.embeddings import model_parallel_variables
from tests.trainer.worker_main import train_from_argv


def main() -> None:
    out_dir, rows_path = sys.argv[3:5]
    strategy, config, result = train_from_argv()
    network = result.model.network
    parts = model_parallel_variables(network, result.model.optimizer.tables)
    arrays = {}
    for name, variable in parts.items():
        table, _, slot = name.partition("__")
        arrays[f"slot/{table}/{slot}" if slot else f"rows/{table}"] = variable.numpy()
    ids = {id(v) for v in parts.values()}
    dense = [v for v in network.weights if id(v) not in ids]
    arrays.update({f"dense/{i}": v.numpy() for i, v in enumerate(dense)})
    arrays["global_step"] = np.array(result.global_step)
    with open(rows_path) as f:
        rows = [json.loads(line) for line in f]
    features = {
        f.name: tf.constant([padded(r[f.name], f.max_length, f.list_pad) if f.multivalent
                             else r[f.name] for r in rows], dtype=feature_dtype(f.dtype))
        for f in config.data.features
    }

    @tf.function(autograph=False)
    def predict(inputs):
        return strategy.run(lambda x: network(x, training=False), args=(inputs,))

    outputs = predict(features)
    for task in config.data.tasks:
        arrays[f"pred_{task.name}"] = strategy.experimental_local_results(
            outputs[task.name])[0].numpy()[:, 0]
    np.savez(os.path.join(out_dir, f"worker-{task_info().task_id}.npz"), **arrays)


if __name__ == "__main__":
    main()
