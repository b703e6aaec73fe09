"""The synthetic experiment's trainer path: the same rows through multitower's own flow.

For one correlation, the training rows of `quality_synthetic` are written as a day of Parquet
logs (columns x0..x99, t1, t2; float32, so the TFRecords hold the very values the direct runs
train on), one YAML config per model is written to the work folder and loaded with
`load_config`, the day is preprocessed once by the Beam job (`run_preprocess`; every model's
config has the same `data:` block, so they share the TFRecords), each model is trained by
`train_day` and its export scores the held-out rows through `serving.predict.Predictor`, as a
client would send them (one dict of raw features per row).

What the config cannot make identical to the direct runs: the model standardizes x with the
Beam job's mean and std (about 0 and 1 here, since x ~ N(0, 1)); its initial weights come from
`train.seed` (another draw than any direct init); its batches come from the trainer's
TFRecord input, whose shuffle permutes blocks of `SHUFFLE_ROWS` rows of the stream, where each
direct init draws its own permutation of all the rows per pass. Sizes, towers,
activations, loss (sum of the tasks' MSE), optimizer, learning rate, batch size and the number
of steps (`epochs_per_day` passes over the rows) are the same.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from multitower.config import Config, load_config
from pipeline.preprocess import run_preprocess
from serving.predict import Predictor
from trainer.strategy import make_strategy
from trainer.train import train_day

if TYPE_CHECKING:
    import tf_keras as keras

DATE = "2026-01-01"
FILES = 4  # Parquet files of the day: the Beam job reads them in parallel
SHUFFLE_ROWS = 65536


def write_logs(folder: Path, x: np.ndarray, y: np.ndarray) -> None:
    """The rows as `FILES` Parquet files `part-NNNNN.parquet`: x0..x(d-1), t1, t2 (float32)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, rows in enumerate(np.array_split(np.arange(len(x)), FILES)):
        columns = {f"x{j}": x[rows, j] for j in range(x.shape[1])}
        columns.update({"t1": y[rows, 0], "t2": y[rows, 1]})
        pq.write_table(pa.table(columns), folder / f"part-{i:05d}.parquet")


def write_config(root: Path, kind: str, size: dict, tower_units: list[int], d: int,
                 args: argparse.Namespace) -> Config:
    """`root/<kind>.yaml`: the direct runs' model, training settings and data as a config."""
    raw = {
        "data": {
            "logs": f"{root}/logs/dt={{date}}",
            "format": "parquet",
            "tfrecords": f"{root}/tfrecords",
            "rejected": f"{root}/rejected",
            "num_shards": 2,
            "features": [{"name": f"x{j}", "type": "numeric"} for j in range(d)],
            "tasks": [{"name": t, "type": "regression"} for t in ("t1", "t2")],
        },
        "model": {"name": f"synthetic_{kind}", "backbone": kind, kind: size,
                  "tower_units": tower_units, "activation": "relu"},
        "train": {
            "batch_size": args.batch_size,
            "optimizer": "adam",
            "learning_rate": args.learning_rate,
            "epochs_per_day": args.epochs,
            # Blocks of 65536 rows, each permuted (trainer.data): close to the direct runs'
            # fresh permutation of the rows per pass, in bounded memory.
            "shuffle_buffer": min(args.train_rows, SHUFFLE_ROWS),
            "seed": args.trainer_seed,
            "model_dir": f"{root}/{kind}/model",
            "export_dir": f"{root}/{kind}/export",
            "backup_every_steps": 0,  # one uninterrupted day: no mid-day checkpoints
            "steps_per_execution": 64,
        },
    }
    path = root / f"{kind}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return load_config(path)


def held_out_mse(config: Config, x: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """The newest export's MSE on `x`, `y` (mean over the tasks, and per task)."""
    predictor = Predictor(os.path.join(config.train.export_dir, config.model.name))
    names = [f"x{j}" for j in range(x.shape[1])]
    rows = ((f"held-out row {i}", dict(zip(names, map(float, r), strict=True)))
            for i, r in enumerate(x))
    scores: dict[str, list[np.ndarray]] = {}
    for batch in predictor.predict(rows):
        for name, values in batch.items():
            scores.setdefault(name, []).append(values)
    per_task = np.array([np.mean((np.concatenate(scores[t]).astype(np.float64) - y[:, i]) ** 2)
                         for i, t in enumerate(("t1", "t2"))])
    return float(per_task.mean()), per_task


def network_mse(network: keras.Model, x: np.ndarray, y: np.ndarray) -> float:
    """The trained network's MSE on `x`, `y` (mean over the tasks), in memory, not served."""
    names = [f"x{j}" for j in range(x.shape[1])]
    sq = np.zeros(2)
    for start in range(0, len(x), 8192):
        rows = slice(start, start + 8192)
        out = network({n: x[rows, j] for j, n in enumerate(names)}, training=False)
        sq += [np.sum((out[t].numpy()[:, 0].astype(np.float64) - y[rows, i]) ** 2)
               for i, t in enumerate(("t1", "t2"))]
    return float(sq.mean() / len(x))


def run_trainer_path(
    root: Path, kinds: list[str], sizes: dict[str, dict], tower_units: list[int],
    train: tuple[np.ndarray, np.ndarray], held: tuple[np.ndarray, np.ndarray],
    args: argparse.Namespace, progress: Callable[[str], None],
) -> tuple[dict[str, dict], dict[str, float]]:
    """Logs, configs, one preprocess, then `train_day` and scoring for each model of `kinds`.

    Returns `{kind: {"held": MSE served, "held_tasks": per task, "train": final MSE on the
    training rows (the trained network in memory), "steps": n, "params": n}}` and the seconds
    per phase.
    """
    seconds: dict[str, float] = {}
    t = time.perf_counter()
    write_logs(root / "logs" / f"dt={DATE}", *train)
    configs = {kind: write_config(root, kind, sizes[kind], tower_units, train[0].shape[1], args)
               for kind in kinds}
    seconds["write logs"] = time.perf_counter() - t
    t = time.perf_counter()
    manifest = run_preprocess(configs[kinds[0]], DATE)
    seconds["preprocess"] = time.perf_counter() - t
    progress(f"(a) trainer path: preprocessed {manifest['rows']['written']} rows "
             f"({manifest['rows']['rejected']} rejected) in {seconds['preprocess']:.0f} s")
    strategy = make_strategy()
    results: dict[str, dict] = {}
    for kind in kinds:
        t = time.perf_counter()
        day = train_day(configs[kind], DATE, strategy)
        trained = time.perf_counter() - t
        t = time.perf_counter()
        mse, per_task = held_out_mse(configs[kind], *held)
        scored = time.perf_counter() - t
        seconds[f"train {kind}"], seconds[f"score {kind}"] = trained, scored
        results[kind] = {
            "held": mse, "held_tasks": per_task, "steps": day.steps,
            "train": network_mse(day.model.network, *train),
            "params": sum(int(np.prod(v.shape)) for v in day.model.network.trainable_variables),
        }
        progress(f"(a) trainer path: {kind} {day.steps} steps in {trained:.0f} s, held-out MSE "
                 f"{mse:.4f} (scored {len(held[0])} rows in {scored:.0f} s)")
    return results, seconds
