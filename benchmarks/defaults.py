"""Prints a learning-rate study: which dense and table rates train well with one pass per day.

    python benchmarks/defaults.py [--datasets census impressions large] [--dense 0.001 0.01]
                                  [--tables 0.1 0.3] [--batches 512 1024 4096] [--seeds 0]
                                  [--settings DENSE,TABLE,BATCH ...] [--optimizer NAME]
                                  [--embedding-optimizer NAME] [--workdir DIR] [--keep-runs]
                                  [--scale 1.0]

Three generated data sets that differ in rows per day, tables, vocabulary and tasks, each
trained day by day through the real flow (Beam preprocessing once per day, then `train_day`
for every setting, one pass per day, the default optimizers: dense Adam, tables Adagrad), and
judged on an unseen later day with `evaluate_day` (AUC per binary task, RMSE per regression
task):

- `census`: a census-income-shaped table (benchmarks/peers.py's generator), 10k rows/day over
  7 days; 27 small categorical columns (2-50 values, hashed into 32x as many buckets), 12
  numeric; MMoE 8 x [64] with batch norm, towers [32]; income (~6%) and marital (~40%).
- `impressions`: the example config (`examples/impressions.yaml`) on `generate_logs`' logs,
  60k rows/day over 3 days; 7 tables of 16 to 100k rows (ids of 200k users and 150k items), a
  list feature; click, conversion (binary) and watch_time (regression).
- `large`: the same logs at 600k rows/day over 2 days, click and conversion only, the id
  tables at 1M rows.

`--scale` multiplies every day's rows (e.g. 0.1 for a quick look). The first row of each table
is a config with no optimizer settings at all: what a new user gets. Figures are printed, never
asserted. Progress goes to stderr, the tables to stdout.
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

import multitower  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)

# isort: split
import tf_keras as keras

from multitower.config import Config, load_config
from pipeline.generate import generate_logs
from pipeline.preprocess import run_preprocess
from trainer.evaluate import evaluate_day
from trainer.strategy import make_strategy
from trainer.train import train_day

sys.path.insert(0, str(Path(__file__).resolve().parent))
import peers  # noqa: E402  (the census-shaped generator)

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "impressions.yaml"
START = dt.date(2026, 1, 1)
RATE_KEYS = ("learning_rate", "embedding_learning_rate")


def progress(message: str) -> None:
    """Prints a progress line to stderr."""
    print(f"[defaults] {message}", file=sys.stderr, flush=True)


@dataclass
class Dataset:
    """A generated data set: its base config (no optimizer settings) and its days."""

    name: str
    config: dict
    train_days: list[str]
    test_day: str
    rows_per_day: int


def _days(n: int) -> list[str]:
    return [(START + dt.timedelta(days=i)).isoformat() for i in range(n)]


def _census(root: Path, scale: float) -> Dataset:
    rows, days = int(10_000 * scale), 7
    data = peers.generate(rows * (days + 1), seed=0)  # one logistic model, new rows each day
    names = ([f"cat_{c:02d}" for c in range(peers.CATEGORICAL)]
             + [f"num_{j:02d}" for j in range(peers.NUMERIC)])
    cat, num, y = data["cat"].tolist(), data["num"].tolist(), data["y"].tolist()
    dates = _days(days + 1)
    for d, date in enumerate(dates):
        path = root / "logs" / f"dt={date}" / "part-0.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w") as f:
            for i in range(d * rows, (d + 1) * rows):
                row = dict(zip(names, [f"v{v}" for v in cat[i]] + num[i], strict=True))
                row.update(zip(peers.TASKS, y[i], strict=True))
                f.write(json.dumps(row) + "\n")
    features = [{"name": f"cat_{c:02d}", "type": "categorical", "hash_buckets": 32 * int(k),
                 "embedding_dim": peers.EMBEDDING_DIM} for c, k in enumerate(data["cards"])]
    features += [{"name": f"num_{j:02d}", "type": "numeric"} for j in range(peers.NUMERIC)]
    config = {
        "data": {"logs": f"{root}/logs/dt={{date}}", "format": "jsonl",
                 "tfrecords": f"{root}/tfrecords", "rejected": f"{root}/rejected",
                 "num_shards": 2, "features": features,
                 "tasks": [{"name": t, "type": "binary"} for t in peers.TASKS]},
        "model": {"name": "census", "backbone": "mmoe", "batch_norm": True,
                  "mmoe": {"num_experts": 8, "expert_units": [64]}, "tower_units": [32]},
        "train": {"shuffle_buffer": 20_000},
    }
    return Dataset("census", config, dates[:-1], dates[-1], rows)


def _impressions(root: Path, scale: float, large: bool) -> Dataset:
    rows, days = (int(600_000 * scale), 2) if large else (int(60_000 * scale), 3)
    dates = _days(days + 1)
    generate_logs(str(root / "logs"), dates[0], len(dates), rows, seed=1)
    raw = yaml.safe_load(EXAMPLE.read_text())
    raw["data"].update(logs=f"{root}/logs/dt={{date}}", tfrecords=f"{root}/tfrecords",
                       rejected=f"{root}/rejected")
    if large:
        raw["data"]["tasks"] = [t for t in raw["data"]["tasks"] if t["type"] == "binary"]
        for feature in raw["data"]["features"]:
            if feature["name"] in ("user_id", "item_id", "recent_items"):
                feature["hash_buckets"] = 1_000_000
    raw["train"] = {"shuffle_buffer": 20_000}  # every optimizer setting left to the defaults
    raw.pop("evaluate", None)
    return Dataset("large" if large else "impressions", raw, dates[:-1], dates[-1], rows)


def _config(dataset: Dataset, root: Path, setting: dict, seed: int) -> Config:
    raw = json.loads(json.dumps(dataset.config))
    tag = "-".join(f"{k}={v}" for k, v in setting.items()) or "defaults"
    run = root / "runs" / f"{tag}-s{seed}"
    shutil.rmtree(run, ignore_errors=True)  # a workdir used before: train from scratch again
    raw["train"].update(setting, seed=seed, model_dir=f"{run}/model", export_dir=f"{run}/export")
    path = root / "runs" / f"{tag}-s{seed}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return load_config(path)


def _settings(args: argparse.Namespace) -> list[dict]:
    grid = [{"learning_rate": d, "embedding_learning_rate": t, "batch_size": b}
            for d, t, b in (args.settings or itertools.product(args.dense, args.tables,
                                                                 args.batches))]
    return [{}] + grid  # {}: no optimizer setting at all


def _setting(text: str) -> tuple[float, float, int]:
    dense, table, batch = text.split(",")
    return float(dense), float(table), int(batch)


def _scores(report: dict) -> dict[str, float]:
    return {task: values["auc"] if "auc" in values else values["rmse"]
            for task, values in report["tasks"].items()}


def run_dataset(dataset: Dataset, root: Path, args: argparse.Namespace) -> list[dict]:
    """Preprocesses the days once, trains every setting day by day, scores the test day."""
    t = time.perf_counter()
    base = _config(dataset, root, {}, 0)
    for date in [*dataset.train_days, dataset.test_day]:
        run_preprocess(base, date)
    progress(f"{dataset.name}: preprocessed {len(dataset.train_days) + 1} days x "
             f"{dataset.rows_per_day} rows ({time.perf_counter() - t:.0f} s)")
    strategy = make_strategy()
    results = []
    for setting in _settings(args):
        for seed in args.seeds:
            t = time.perf_counter()
            config = _config(dataset, root, setting, seed)
            keras.backend.clear_session()
            steps = sum(train_day(config, date, strategy).steps for date in dataset.train_days)
            scores = _scores(evaluate_day(config, dataset.test_day))
            if not args.keep_runs:  # a large grid's checkpoints would fill the disk (~1 GB each)
                shutil.rmtree(Path(config.train.model_dir).parent)
            results.append({"setting": setting, "seed": seed, "steps": steps, "scores": scores,
                            "seconds": time.perf_counter() - t, "resolved": {
                                k: getattr(config.train, k) for k in (*RATE_KEYS, "batch_size")}})
            progress(f"{dataset.name} {setting or 'defaults'} seed {seed}: {scores} "
                     f"({steps} steps, {results[-1]['seconds']:.0f} s)")
    return results


def report(dataset: Dataset, results: list[dict]) -> None:
    """Prints the data set's table: one row per setting, mean over seeds, the best marked."""
    tasks = list(results[0]["scores"])
    binary = [t for t in tasks if not any(
        t == task["name"] and task["type"] == "regression" for task in dataset.config["data"]
        ["tasks"])]
    by_setting: dict[str, list[dict]] = {}
    for r in results:
        by_setting.setdefault(json.dumps(r["setting"], sort_keys=True), []).append(r)
    rows = []
    for key, runs in by_setting.items():
        mean = {t: float(np.mean([r["scores"][t] for r in runs])) for t in tasks}
        rows.append((json.loads(key), runs[0]["resolved"], runs[0]["steps"], mean))
    best = {t: (max if t in binary else min)(row[3][t] for row in rows) for t in tasks}
    train = dataset.config["train"]
    print(f"\n{dataset.name}: {len(dataset.train_days)} days x {dataset.rows_per_day} rows, one "
          f"pass per day, scored on unseen {dataset.test_day}; AUC (binary) / RMSE "
          f"(regression), mean over seeds; dense {train.get('optimizer', 'adam')}, tables "
          f"{train.get('embedding_optimizer', 'adagrad')}")
    header = f"  {'dense lr':>9} {'table lr':>9} {'batch':>6} {'steps':>6}" + "".join(
        f"{t:>12}" for t in tasks)
    print(header)
    print("  " + "-" * (len(header) - 2))
    for setting, resolved, steps, mean in rows:
        cells = "".join(f"{mean[t]:>11.4f}{'*' if mean[t] == best[t] else ' '}" for t in tasks)
        label = " (no optimizer settings)" if not setting else ""
        print(f"  {resolved['learning_rate']:>9g} {resolved['embedding_learning_rate']:>9g} "
              f"{resolved['batch_size']:>6d} {steps:>6d}{cells}{label}")
    defaults = rows[0][3]
    gaps = []
    for t in tasks:
        if t in binary:
            gaps.append(f"{t} {best[t] - defaults[t]:+.4f} AUC below the best")
        else:
            gaps.append(f"{t} {(defaults[t] - best[t]) / best[t]:+.2%} RMSE above the best")
    print("  defaults: " + "; ".join(gaps) + "  (* the grid's best per task)")


def main() -> None:
    """Parses the command line and runs the study on each data set."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", choices=["census", "impressions", "large"],
                        default=["census", "impressions", "large"])
    parser.add_argument("--dense", type=float, nargs="+", default=[0.001, 0.003, 0.01, 0.03])
    parser.add_argument("--tables", type=float, nargs="+", default=[0.03, 0.1, 0.3, 1.0])
    parser.add_argument("--batches", type=int, nargs="+", default=[512, 1024, 4096])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--settings", type=_setting, nargs="+", metavar="DENSE,TABLE,BATCH",
                        help="these settings instead of the --dense x --tables x --batches grid "
                        "(e.g. to run a grid's best few again with more seeds)")
    parser.add_argument("--optimizer", choices=["adam", "adagrad", "sgd"],
                        help="the dense optimizer of every row (default: the config default)")
    parser.add_argument("--embedding-optimizer", choices=["adagrad", "ftrl", "lazy_adam", "sgd"],
                        help="the tables' optimizer of every row (default: the config default)")
    parser.add_argument("--scale", type=float, default=1.0, help="rows per day multiplier")
    parser.add_argument("--keep-runs", action="store_true",
                        help="keep every setting's model_dir and exports (deleted once scored)")
    parser.add_argument("--workdir", help="keep the generated files here (default: a temporary "
                        "folder)")
    args = parser.parse_args()
    root = Path(args.workdir or tempfile.mkdtemp(prefix="multitower-defaults-")).resolve()
    started = time.perf_counter()
    print(f"multitower rate study: {len(_settings(args))} settings x {len(args.seeds)} seed(s) "
          f"per data set, under {root}")
    for name in args.datasets:
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        t = time.perf_counter()
        dataset = (_census(folder, args.scale) if name == "census"
                   else _impressions(folder, args.scale, large=name == "large"))
        for key in ("optimizer", "embedding_optimizer"):
            if getattr(args, key):  # the first row then has every rate left to the defaults
                dataset.config["train"][key] = getattr(args, key)
        progress(f"{name}: generated ({time.perf_counter() - t:.0f} s)")
        report(dataset, run_dataset(dataset, folder, args))
    print(f"\ntotal {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
