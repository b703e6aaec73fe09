"""Prints end-to-end throughput on generated logs: Beam preprocessing, training, serving.

    python benchmarks/throughput.py [--rows 60000] [--workers 1 2]

Figures (rows/s, examples/s, ms per batch) are printed, never asserted. Training is timed from
the trainer's own log line, which excludes process start-up and TensorFlow import; the wall time
of the whole `multitower train` command is printed next to it.
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

import multitower  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
from multitower.config import load_config
from pipeline.generate import generate_logs
from pipeline.preprocess import run_preprocess

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "impressions.yaml"
DATE = "2026-01-01"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=60_000)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
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
                [sys.executable, "-m", "multitower.cli", "train", "--config", str(config_path),
                 "--date", DATE, "--workers", str(workers)],
                capture_output=True, text=True,
                env={k: v for k, v in os.environ.items() if k != "TF_CONFIG"},
            )
            wall = time.perf_counter() - t
            found = re.search(r"trained day \S+: (\d+) steps in ([0-9.]+) s \((\d+) ex/s\)",
                              run.stderr)
            if run.returncode or not found:
                sys.exit(f"training with {workers} worker(s) failed:\n{run.stderr[-2000:]}")
            steps, seconds, rate = found.groups()
            print(f"train x{workers}     {int(rate):10d} examples/s ({steps} steps of "
                  f"{config.train.batch_size} in {float(seconds):.1f} s; command {wall:.1f} s)")
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


if __name__ == "__main__":
    main()
