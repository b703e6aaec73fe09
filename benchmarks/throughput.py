"""Prints end-to-end throughput on generated logs: Beam preprocessing, training, serving.

    python benchmarks/throughput.py [--rows 60000] [--workers 1 2] [--input-steps 100]
        [--repeats 5]
    python benchmarks/throughput.py --config CONFIG [--date 2026-01-01]  # input figures only

Figures (rows/s, examples/s, ms per batch) are printed, never asserted. Training is timed from
the trainer's own log line, which excludes process start-up, TensorFlow import and the first
call of the train function (tracing it, filling the input pipeline); the wall time of the
whole `multitower train` command is printed next to it, with the trainer's phases of the day
(process start, plan, build, first call, steady steps, checkpoint, export). Every worker count
trains at the same global batch (`--batch-size`, else the example's), on the same 2 cores.

Whether the input pipeline keeps up (`compare_input`), in one process: the trainer's own
`make_dataset` (GZIP TFRecords, shuffle, parse) read with no model ("input only"), then one
model, built once, trained alternately from the TFRecords and from memory: the same first
`--warmup + --input-steps` batches of the same stream, cached as parsed tensors
(`Dataset.cache()`, filled before anything is timed). Each training run is timed from the end of
its first call past `--warmup` steps to its last step, so tracing and the pipeline's start
(a shuffle block read and parsed) are left out and both runs time the same steps; the two runs
of a pair follow each other, their order alternating, `--repeats` pairs. Printed: the median
ex/s with its range, CPU time of the process per example (with 2 cores the input and the step
share them, so the input's CPU per example is what it costs the step rate), the ratio of the
median rates and the median of the pairs' ratios, and how busy the machine was with other
processes while it measured (a large share marks a noisy figure).

`--config` runs only that comparison, on another config's day of TFRecords (preprocess it
first, e.g. keep `benchmarks/peers.py --keep`'s work directory for the census-shaped MMoE).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

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
    parser.add_argument("--input-steps", type=int, default=100,
                        help="timed steps per TFRecords or in-memory run")
    parser.add_argument("--warmup", type=int, default=20, help="untimed steps before them")
    parser.add_argument("--repeats", type=int, default=5, help="TFRecords/memory pairs")
    parser.add_argument("--config", type=Path,
                        help="compare the input on this config's day only (no generated logs)")
    parser.add_argument("--date", default=DATE, help="the day of --config's TFRecords")
    parser.add_argument("--batch-size", type=int, default=0,
                        help="global batch of every training run (default: the example's)")
    args = parser.parse_args()
    if args.config:
        compare_input(load_config(args.config), args.date, args.input_steps, args.warmup,
                      args.repeats)
        return
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
        if args.batch_size:  # the same global batch for every worker count
            raw = yaml.safe_load(config_path.read_text())
            raw["train"]["batch_size"] = args.batch_size
            config_path.write_text(yaml.safe_dump(raw, sort_keys=False))
            config = load_config(config_path)
        rates = {}
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
            phases = re.search(r"day \S+ phases: (.*)", run.stderr)
            if run.returncode or not found:
                sys.exit(f"training with {workers} worker(s) failed:\n{run.stderr[-2000:]}")
            steps, seconds, rate = found.groups()
            rates[workers] = int(rate)
            print(f"train x{workers}     {int(rate):10d} examples/s after the first call ({steps} "
                  f"steps of {config.train.batch_size} in {float(seconds):.1f} s with it, "
                  f"{config.train.steps_per_execution} per call; command {wall:.1f} s)")
            if phases:
                print(f"  phases: {phases.group(1)}")
        if 1 in rates and len(rates) > 1:
            print("  workers against one: " + ", ".join(
                f"x{w} {r / rates[1]:.2f}" for w, r in rates.items() if w != 1))
        compare_input(config, DATE, args.input_steps, args.warmup, args.repeats)
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


class _Busy:
    """How busy the machine was with other processes between `__init__` and `share()`."""

    def __init__(self) -> None:
        self.start = self._sample()

    @staticmethod
    def _sample() -> tuple[float, float, float]:
        with open("/proc/stat") as f:
            jiffies = [int(v) for v in f.readline().split()[1:]]
        idle = jiffies[3] + jiffies[4]  # idle + iowait
        tick = os.sysconf("SC_CLK_TCK")
        return (sum(jiffies) - idle) / tick, sum(jiffies) / tick, time.process_time()

    def share(self) -> float:
        """Other processes' CPU as a share of all cores (this process's own left out)."""
        busy, total, own = (b - a for a, b in zip(self.start, self._sample(), strict=True))
        return max(0.0, (busy - own) / total) if total else 0.0


def _spread(values: list[float]) -> str:
    return (f"{statistics.median(values):10.0f} examples/s (median of {len(values)}, "
            f"{min(values):.0f} to {max(values):.0f})")


def compare_input(config: Config, date: str, steps: int, warmup: int, repeats: int) -> None:
    """Prints ex/s of the input alone, and of training from TFRecords and from memory.

    Args:
        config: The loaded config; its day `date` of TFRecords must exist.
        date: The day to read.
        steps: Timed steps per training run (and batches per input-only run).
        warmup: Steps run before the timed ones (tracing, the first shuffle block).
        repeats: Input-only runs, and pairs of training runs (TFRecords, memory).
    """
    import tensorflow as tf
    import tf_keras as keras

    from multitower.manifest import partition_files, read_manifest
    from trainer.data import make_dataset
    from trainer.training_model import build_training_model

    manifest = read_manifest(config.data.tfrecords, date)
    files = partition_files(config.data.tfrecords, date, manifest)
    batch = config.train.batch_size
    total = warmup + steps
    busy = _Busy()

    def records() -> tf.data.Dataset:
        return make_dataset(files, config.data, batch, shuffle_buffer=config.train.shuffle_buffer,
                            seed=config.train.seed)

    print(f"input: {config.model.name}, {len(config.data.features)} features, batch {batch}, "
          f"shuffle {config.train.shuffle_buffer}, {warmup} + {steps} steps, {repeats} repeats")
    iterator = iter(records())
    for _ in range(warmup):
        next(iterator)
    rates, cpu = [], []
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        for _ in range(steps):
            next(iterator)
        rates.append(steps * batch / (time.perf_counter() - t))
        cpu.append((time.process_time() - c) / (steps * batch) * 1e6)
    print(f"input only      {_spread(rates)}, CPU {statistics.median(cpu):.1f} us/example "
          "(make_dataset: GZIP TFRecords, shuffle, parse)")

    class Clock(keras.callbacks.Callback):
        """Times the steps after the first call that ends at or past `warmup` steps."""

        def on_train_batch_end(self, batch_index: int, logs: dict | None = None) -> None:
            now = (time.perf_counter(), time.process_time(), batch_index + 1)
            if now[2] >= warmup and not hasattr(self, "start"):
                self.start = now
            self.end = now

    normalization = {
        name: {"mean": float(s["mean"]), "std": float(s["std"])}
        for name, s in manifest["numeric"].items()
    }
    in_memory = records().take(total).cache()
    for _ in in_memory:  # fill the cache before anything is timed
        pass
    keras.utils.set_random_seed(config.train.seed)
    model = build_training_model(config, normalization)
    results: dict[str, list[tuple[float, float]]] = {"TFRecords": [], "in memory": []}
    for r in range(repeats):
        pair = [("TFRecords", records()), ("in memory", in_memory.repeat())]
        for name, dataset in pair[:: 1 if r % 2 == 0 else -1]:
            clock = Clock()
            model.fit(dataset, epochs=1, steps_per_epoch=total, verbose=0, callbacks=[clock])
            timed = (clock.end[2] - clock.start[2]) * batch
            results[name].append((timed / (clock.end[0] - clock.start[0]),
                                  (clock.end[1] - clock.start[1]) / timed * 1e6))
    for name, runs in results.items():
        print(f"train {name:<10}{_spread([rate for rate, _ in runs])}, CPU "
              f"{statistics.median(c for _, c in runs):.1f} us/example")
    ratios = [f / m for (f, _), (m, _) in zip(results["TFRecords"], results["in memory"],
                                              strict=True)]
    medians = [statistics.median(rate for rate, _ in results[n]) for n in results]
    print(f"TFRecords / memory {medians[0] / medians[1]:.2f} (ratio of the medians); per pair "
          f"{statistics.median(ratios):.2f} ({min(ratios):.2f} to {max(ratios):.2f}); other "
          f"processes used {busy.share():.0%} of the machine's CPU meanwhile")


if __name__ == "__main__":
    main()
