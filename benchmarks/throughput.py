"""Prints end-to-end throughput on generated logs: Beam preprocessing, training, serving.

    python benchmarks/throughput.py [--rows 60000] [--workers 1 2] [--input-steps 100]

Figures (rows/s, examples/s, ms per batch) are printed, never asserted. Training is timed from
the trainer's own log line, which excludes process start-up, TensorFlow import and the first
step (tracing the training function, filling the input pipeline); the wall time
of the whole `multitower train` command is printed next to it.

Whether the input pipeline keeps up: in one process, `--input-steps` batches of the trainer's
own `make_dataset` (GZIP TFRecords, shuffle, parse) are read with no model, then the configured
model trains on them from the TFRecords, then on the same batches held in memory
(`Dataset.cache()`, filled before timing). If training from TFRecords is about as fast as from
memory, the input is not the bottleneck.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import multitower  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
from multitower.config import load_config
from pipeline.generate import generate_logs
from pipeline.preprocess import run_preprocess

if TYPE_CHECKING:
    from multitower.config import Config

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "impressions.yaml"
DATE = "2026-01-01"


def main() -> None:
    """Generates the logs, then prints each stage's throughput."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=60_000)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--input-steps", type=int, default=100)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="multitower-bench-"))
    try:
        config_path = root / "config.yaml"
        shutil.copyfile(EXAMPLE, config_path)
        config = load_config(config_path)
        t = time.perf_counter()
        generate_logs(str(Path(config.data.logs_for(DATE)).parent), DATE, 1, args.rows)
        print(f"generate     {args.rows / (time.perf_counter() - t):10.0f} rows/s")
        t = time.perf_counter()
        run_preprocess(config, DATE)
        print(f"preprocess   {args.rows / (time.perf_counter() - t):10.0f} rows/s "
              "(Beam DirectRunner, one day, start-up included)")
        for workers in args.workers:
            shutil.rmtree(config.train.model_dir, ignore_errors=True)
            shutil.rmtree(config.train.export_dir, ignore_errors=True)
            t = time.perf_counter()
            run = subprocess.run(
                [sys.executable, "-m", "commands.cli", "train", "--config", str(config_path),
                 "--date", DATE, "--workers", str(workers)],
                capture_output=True, text=True,
                env={k: v for k, v in os.environ.items() if k != "TF_CONFIG"},
            )
            wall = time.perf_counter() - t
            found = re.search(r"trained day \S+: (\d+) steps in ([0-9.]+) s \((\d+) ex/s after",
                              run.stderr)
            if run.returncode or not found:
                sys.exit(f"training with {workers} worker(s) failed:\n{run.stderr[-2000:]}")
            steps, seconds, rate = found.groups()
            print(f"train x{workers}     {int(rate):10d} examples/s after the first step ({steps} "
                  f"steps of {config.train.batch_size} in {float(seconds):.1f} s with it; "
                  f"command {wall:.1f} s)")
        _input_against_memory(config, args.input_steps)
        from serving.predict import Predictor, read_rows

        predictor = Predictor(os.path.join(config.train.export_dir, config.model.name))
        files = sorted(Path(config.data.logs_for(DATE)).glob("*.jsonl.gz"))
        rows = [(str(files[0]), row) for _, row in read_rows(str(files[0]))][:4096]
        for batch_size in (1, 64, 1024):
            batch = rows[:batch_size]
            next(predictor.predict(batch, batch_size))  # warm up the signature
            repeats = max(5, 2000 // batch_size)
            t = time.perf_counter()
            for _ in range(repeats):
                next(predictor.predict(batch, batch_size))
            ms = (time.perf_counter() - t) / repeats * 1000
            print(f"predict b={batch_size:<5d}{ms:8.2f} ms per batch "
                  f"({batch_size / ms * 1000:.0f} rows/s, SavedModel in-process)")
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _input_against_memory(config: Config, steps: int, warmup: int = 10) -> None:
    """Examples/s of the input alone, and of training from TFRecords and from memory."""
    import tensorflow as tf
    import tf_keras as keras

    from multitower.manifest import partition_files, read_manifest
    from trainer.data import make_dataset
    from trainer.training_model import build_training_model

    manifest = read_manifest(config.data.tfrecords, DATE)
    files = partition_files(config.data.tfrecords, DATE, manifest)
    batch = config.train.batch_size
    total = warmup + steps

    def records() -> tf.data.Dataset:
        return make_dataset(files, config.data, batch, shuffle_buffer=config.train.shuffle_buffer,
                            seed=config.train.seed)

    iterator = iter(records())
    for _ in range(warmup):
        next(iterator)
    t = time.perf_counter()
    for _ in range(steps):
        next(iterator)
    print(f"input only   {steps * batch / (time.perf_counter() - t):10.0f} examples/s "
          f"(make_dataset: GZIP TFRecords, shuffle {config.train.shuffle_buffer}, parse)")

    class Clock(keras.callbacks.Callback):
        """Notes the time at the end of the last warm-up step (`start`)."""

        def on_train_batch_end(self, batch_index: int, logs: dict | None = None) -> None:
            if batch_index + 1 == warmup:
                self.start = time.perf_counter()

    normalization = {
        name: {"mean": float(s["mean"]), "std": float(s["std"])}
        for name, s in manifest["numeric"].items()
    }
    in_memory = records().take(total).cache()
    for _ in in_memory:  # fill the cache before anything is timed
        pass
    for name, dataset in (("TFRecords", records()), ("in memory", in_memory.repeat())):
        keras.utils.set_random_seed(config.train.seed)
        model = build_training_model(config, normalization)
        clock = Clock()
        model.fit(dataset, epochs=1, steps_per_epoch=total, verbose=0, callbacks=[clock])
        rate = steps * batch / (time.perf_counter() - clock.start)
        print(f"train {name:<9}{rate:9.0f} examples/s (1 process, {steps} steps of {batch} "
              "after warm-up)")


if __name__ == "__main__":
    main()
