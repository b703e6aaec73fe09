"""Every backbone x head (and every loss balancing) trained in ONE localhost cluster.

Usage: python zoo_main.py PLAN_JSON OUT_DIR ROWS_JSONL
PLAN_JSON maps a variant name to a config path. Each worker trains every variant for one day with
the same strategy (one cluster start for all of them) and writes OUT_DIR/<variant>-w<index>.npz:
a checksum of every weight, the global step, and (chief) the trained in-memory model's served
outputs on the raw rows, to compare with the exported SavedModel loaded in another process.
"""

# ruff: noqa: I001  (multitower must be imported before TensorFlow)
import json
import os
import sys
from pathlib import Path

import multitower  # noqa: F401
import numpy as np
import tensorflow as tf

from multitower.config import load_config
from multitower.records import feature_dtype
from multitower.values import padded
from trainer.export import serving_function
from multitower.cluster import task_info
from trainer.strategy import make_strategy
from trainer.train import train_day

DATE = "2026-03-01"


def main() -> None:
    plan_path, out_dir, rows_path = sys.argv[1:4]
    strategy = make_strategy()
    index = task_info().task_id
    with open(rows_path) as f:
        rows = [json.loads(line) for line in f]
    for name, config_path in json.loads(Path(plan_path).read_text()).items():
        config = load_config(config_path)
        result = train_day(config, DATE, strategy)
        arrays = {
            "checksums": np.array([float(np.sum(np.abs(w), dtype=np.float64))
                                   for w in result.model.network.get_weights()]),
            "global_step": np.array(result.global_step),
            "replicas": np.array(strategy.num_replicas_in_sync),
        }
        # Every worker runs the model: reading batch-norm statistics of the distributed model is
        # a collective, so a chief-only call would wait for the others forever.
        features = {
            f.name: tf.constant([padded(r[f.name], f.max_length, f.list_pad)  # a list: padded
                                 if f.multivalent else r[f.name] for r in rows],
                                dtype=feature_dtype(f.dtype))
            for f in config.data.features
        }
        served = serving_function(result.model.network, config)(features)
        arrays.update({f"out_{k}": v.numpy() for k, v in served.items()})
        np.savez(os.path.join(out_dir, f"{name}-w{index}.npz"), **arrays)


if __name__ == "__main__":
    main()
