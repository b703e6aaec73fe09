"""The local end-to-end run: every stage for real, on generated logs, on one machine.

generate 3 days -> Beam preprocess each -> train day 1 -> train day 2 (warm start) -> export
-> score day 3's raw logs with the newest SavedModel -> per-task AUC / RMSE on the unseen day.
"""

from __future__ import annotations

import glob
import logging
import os
import shutil
import subprocess
import sys
import time
from datetime import date as Date
from datetime import timedelta
from pathlib import Path

import numpy as np

from multitower.config import Config, load_config
from multitower.errors import InputMissingError
from pipeline.generate import generate_logs
from pipeline.preprocess import run_preprocess
from pipeline.validate import validate_row
from serving.predict import Predictor, read_rows
from trainer.metrics import auc, group_auc, rmse

log = logging.getLogger("multitower.demo")
EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "impressions.yaml"
START = "2026-01-01"


def _days(n: int) -> list[str]:
    first = Date.fromisoformat(START)
    return [(first + timedelta(days=i)).isoformat() for i in range(n)]


def _score_day(config: Config, date: str) -> dict[str, float]:
    """Scores a day's raw logs with the newest export, as a client would; returns metrics."""
    predictor = Predictor(os.path.join(config.train.export_dir, config.model.name))
    rows = []
    for path in sorted(glob.glob(os.path.join(config.data.logs_for(date), "*.jsonl*"))):
        for number, raw in read_rows(path):
            row, _ = validate_row(raw, config.data)
            if row is not None:  # the rows the Beam job would have kept
                rows.append((f"{path}:{number}", row))
    scores: dict[str, list[np.ndarray]] = {}
    for batch in predictor.predict(rows):
        for task, values in batch.items():
            scores.setdefault(task, []).append(values)
    metrics = {"rows": float(len(rows)), "version": float(predictor.version)}
    group_by = config.evaluate.group_by
    groups = np.array([str(row[group_by]) for _, row in rows]) if group_by else None
    for task in config.data.tasks:
        labels = np.array([row[task.label_column] for _, row in rows], dtype=np.float64)
        predicted = np.concatenate(scores[task.name])
        if task.type == "binary":
            metrics[f"{task.name}_auc"] = auc(labels, predicted)
            metrics[f"{task.name}_rate"] = float(labels.mean())
            if group_by:
                metrics[f"{task.name}_group_auc"] = group_auc(labels, predicted, groups)["gauc"]
        else:
            metrics[f"{task.name}_rmse"] = rmse(labels, predicted)
            metrics[f"{task.name}_rmse_of_mean"] = rmse(labels, np.full_like(labels, labels.mean()))
    return metrics


def run_demo(workdir: str, rows_per_day: int = 60_000, workers: int = 2, seed: int = 0) -> dict:
    """Runs the whole flow under `workdir` and prints a summary; returns the day-3 metrics."""
    if not EXAMPLE.exists():
        raise InputMissingError(f"the example config {EXAMPLE} is missing; run from a clone")
    root = Path(workdir).resolve()
    shutil.rmtree(root / "work", ignore_errors=True)  # a demo run always starts clean
    root.mkdir(parents=True, exist_ok=True)
    config_path = root / "config.yaml"
    shutil.copyfile(EXAMPLE, config_path)
    config = load_config(config_path)
    days = _days(3)
    timings: dict[str, float] = {}

    def stage(name: str) -> float:
        log.info("== %s", name)
        return time.perf_counter()

    t = stage(f"[1/4] generating {len(days)} days x {rows_per_day} impressions")
    generate_logs(str(Path(config.data.logs_for(days[0])).parent), days[0], len(days),
                  rows_per_day, seed=seed)
    timings["generate"] = time.perf_counter() - t

    t = stage("[2/4] preprocessing with Beam (DirectRunner)")
    manifests = [run_preprocess(config, d) for d in days]
    timings["preprocess"] = time.perf_counter() - t

    t = stage(f"[3/4] training days 1-2 on {workers} worker(s)")
    for d in days[:2]:
        cmd = [sys.executable, "-m", "commands.cli", "train", "--config", str(config_path),
               "--date", d, "--workers", str(workers)]
        env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
        if subprocess.run(cmd, env=env).returncode:
            raise RuntimeError(f"training day {d} failed (command: {' '.join(cmd)})")
    timings["train"] = time.perf_counter() - t

    t = stage(f"[4/4] scoring unseen day {days[2]} with the newest SavedModel")
    metrics = _score_day(config, days[2])
    timings["predict"] = time.perf_counter() - t

    rows = [m["rows"] for m in manifests]
    print(f"\nmultitower demo — {root}")
    print("  rows per day (read/written/rejected): " + ", ".join(
        f"{r['read']}/{r['written']}/{r['rejected']}" for r in rows))
    print(f"  export: {config.train.export_dir}/{config.model.name}/"
          f"{int(metrics['version'])}  ({int(metrics['rows'])} rows scored)")
    print(f"  quality on unseen day {days[2]}:")
    for task in config.data.tasks:
        if task.type == "binary":
            by_group = (f"   {config.evaluate.group_by} AUC "
                        f"{metrics[f'{task.name}_group_auc']:.4f}"
                        if f"{task.name}_group_auc" in metrics else "")
            print(f"    {task.name:<12} AUC  {metrics[f'{task.name}_auc']:.4f}{by_group}"
                  f"   (positive rate {metrics[f'{task.name}_rate']:.3f})")
        else:
            print(f"    {task.name:<12} RMSE {metrics[f'{task.name}_rmse']:.4f}"
                  f"   (predicting the mean: {metrics[f'{task.name}_rmse_of_mean']:.4f})")
    print("  seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()))
    return metrics
