"""Part (b) of `benchmarks/quality.py`: ESMM against a CVR tower trained on clicked rows only.

Generated impression logs (`pipeline.generate`, a low click rate) carry each row's TRUE click and
conversion probabilities (`truth_columns`; the configs declare neither, so preprocessing ignores
them). The training days go through the real flow: Beam preprocessing (`run_preprocess`, once
per variant and day), then `train_day` day after day with `train.epochs_per_day` = E passes per
day; the newest SavedModel of each run then scores an unseen later day's raw rows through the
serving path (`Predictor`).

The variants share the MMoE backbone, batch, rates and E (`_config`):

- `esmm`: ESMM heads, pCTR on click and pCTCVR = pCTR x pCVR on click x conversion, over every
  impression (the conversion label of a non-clicked row is 0, as logged).
- `clicked`: one tower per task; conversion is `optional` and null on every non-clicked row, so
  the pCVR tower is trained on clicked rows only (its loss is masked elsewhere) while the CTR
  tower and the shared backbone see every impression. All but the CVR objective's sample space
  is ESMM's, which isolates what the ESMM paper is about (sample selection bias). It needs
  TFRecords of its own: the logged conversion column differs.
- `base` (optional): the ESMM paper's BASE, a conversion-only model of the same backbone whose
  TFRecords hold the clicked rows alone: selection bias plus data sparsity (its embeddings see
  about 5% of the rows, in as few steps). It has no pCTR, hence no pCTCVR.

Every variant is trained once per E of `--epochs-per-day`: more passes train a model further
and let the clicked-rows tower memorize its few rows sooner, so one E would favour one model.
Each variant's E is picked by its own objective's log loss on the last progressive validation
(`train_day` scores each day before training on it), never by the test day; the tables show
every E. Judged on the unseen day as the ESMM paper does (pCVR AUC on clicked rows, pCTCVR AUC
on every row) and over the entire space, which only a generator allows: every impression gets
a "would convert if clicked" outcome drawn from its true conversion probability (fixed seed),
and pCVR's AUC against it; Spearman's rank correlation of pCVR with the true probability;
calibration (mean pCVR / mean true probability) over all impressions and over clicked ones.
`quality_esmm_report` prints the tables and draws the PNGs.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gzip
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

import multitower  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)

# isort: split
import tensorflow as tf
import tf_keras as keras
from quality_esmm_report import (
    LABELS,
    Judged,
    choose_passes,
    draw_figures,
    judge,
    print_report,
)

from multitower.config import Config, load_config
from pipeline.generate import TRUTH_COLUMNS, generate_logs
from pipeline.preprocess import run_preprocess
from serving.predict import Predictor, read_rows
from trainer.history import read_history
from trainer.strategy import make_strategy
from trainer.train import train_day

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "impressions.yaml"
START = "2026-01-01"
VARIANTS = ("esmm", "clicked", "base")
LOGS = {"esmm": "logs", "clicked": "logs_clicked", "base": "logs_base"}  # under the work folder
TERMS = {"esmm": ("click_loss", "ctcvr_loss"), "clicked": ("click_loss", "conversion_loss"),
         "base": ("conversion_loss",)}


def progress(message: str) -> None:
    """Prints a progress line to stderr."""
    print(f"[quality] {message}", file=sys.stderr, flush=True)


class LossCurve(keras.callbacks.Callback):
    """Each training term's mean loss over the steps of each call of the train function.

    Keras hands callbacks the running means since the day's first step; the mean over the
    steps between two calls follows from two of them: (L_t t - L_s s) / (t - s).
    """

    def __init__(self, keys: tuple[str, ...], first_step: int) -> None:
        super().__init__()
        self.keys, self.first_step = keys, first_step
        self.steps: list[int] = []  # global step at the end of each window
        self.losses: dict[str, list[float]] = {k: [] for k in keys}
        self._last = (0, dict.fromkeys(keys, 0.0))

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        done, means = batch + 1, {k: float((logs or {})[k]) for k in self.keys}
        before, previous = self._last
        for key in self.keys:
            self.losses[key].append((means[key] * done - previous[key] * before)
                                    / (done - before))
        self.steps.append(self.first_step + done)
        self._last = (done, means)


@dataclass
class Run:
    """One trained model: its config, loss curves (one per day), steps and validation."""

    config: Config
    curves: list[LossCurve]
    steps: int
    validation: list[tuple[str, dict]]  # (date, {task: metrics}) of each progressive validation


def _days(n: int) -> list[str]:
    first = dt.date.fromisoformat(START)
    return [(first + dt.timedelta(days=i)).isoformat() for i in range(n)]


def _day_files(logs_root: Path, date: str) -> list[Path]:
    return sorted((logs_root / f"dt={date}").glob("*.jsonl.gz"))


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = "".join(json.dumps(row, separators=(",", ":")) + "\n" for row in rows)
    path.write_bytes(gzip.compress(lines.encode(), compresslevel=1, mtime=0))


def _derived_logs(logs: Path, root: Path, date: str, variants: list[str]) -> tuple[int, int, int]:
    """Writes the day's logs of the `clicked` and `base` variants, file by file.

    `clicked` gets every row, conversion null unless clicked; `base` the clicked rows only.

    Returns:
        The day's (impressions, clicks, conversions).
    """
    impressions = clicks = conversions = 0
    for path in _day_files(logs, date):
        masked, clicked = [], []
        for _, row in read_rows(str(path)):
            impressions += 1
            clicks += row["click"]
            conversions += row["conversion"]
            if row["click"]:
                clicked.append(row)
                masked.append(row)
            else:
                masked.append({**row, "conversion": None})
        for name, rows in (("clicked", masked), ("base", clicked)):
            if name in variants:
                _write_jsonl(root / LOGS[name] / f"dt={date}" / path.name, rows)
    return impressions, clicks, conversions


def _config(root: Path, name: str, args: argparse.Namespace, passes: int, seed: int) -> Config:
    """examples/impressions.yaml cut down to click + conversion, every path under `root`.

    The TFRecords of `name` are shared by all its runs (passes, seeds); models are not.
    """
    raw = yaml.safe_load(EXAMPLE.read_text())
    for feature in raw["data"]["features"]:
        if feature.get("embedding_table", feature["name"]) in ("user_id", "item_id"):
            feature["hash_buckets"] = args.id_buckets
    conversion = {"name": "conversion", "type": "binary"}
    if name == "clicked":
        conversion["optional"] = True
    raw["data"].update({
        "logs": f"{root / LOGS[name]}/dt={{date}}",
        "tfrecords": f"{root / name}/tfrecords",
        "rejected": f"{root / name}/rejected",
        "num_shards": 4,
        "tasks": ([conversion] if name == "base"
                  else [{"name": "click", "type": "binary"}, conversion]),
    })
    raw["model"] = {
        "name": name,
        "backbone": "mmoe",
        "mmoe": {"num_experts": 4, "expert_units": [64, 32]},
        "tower_units": [32],
        "dropout": args.esmm_dropout,
        "heads": "esmm" if name == "esmm" else "towers",
        **({"esmm": {"ctr_task": "click", "cvr_task": "conversion"}} if name == "esmm" else {}),
    }
    raw["train"].update({
        "model_dir": f"{root / name}/E{passes}-seed{seed}/model",
        "export_dir": f"{root / name}/E{passes}-seed{seed}/export",
        "batch_size": args.esmm_batch_size,
        "learning_rate": args.esmm_learning_rate,
        "embedding_learning_rate": args.esmm_embedding_learning_rate,
        "epochs_per_day": passes,
        # A whole day in one block: logs are in time order, and the click rate moves with
        # the hour, so a smaller block would train on the day's hours one after the other.
        "shuffle_buffer": args.rows_per_day,
        "backup_every_steps": 0,
        "seed": seed,
    })
    path = root / f"{name}-E{passes}-seed{seed}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return load_config(path)


def _score(config: Config, rows: list[dict]) -> dict[str, np.ndarray]:
    """Every output of the newest export on the raw rows, through the serving path."""
    predictor = Predictor(os.path.join(config.train.export_dir, config.model.name))
    scores: dict[str, list[np.ndarray]] = {}
    for batch in predictor.predict(((f"row {i}", row) for i, row in enumerate(rows)),
                                   batch_size=8192):
        for name, values in batch.items():
            scores.setdefault(name, []).append(values)
    return {name: np.concatenate(values).astype(np.float64) for name, values in scores.items()}


def _prepare(args: argparse.Namespace, root: Path, variants: list[str], days: list[str],
             timings: dict[str, float]) -> tuple[dict, dict[str, int]]:
    """Generates the logs, derives each variant's, and preprocesses every training day.

    Returns:
        `({date: (impressions, clicks, conversions)}, {variant: rows written})`.
    """
    logs = root / "logs"
    progress(f"(b) generating {len(days)} days x {args.rows_per_day} impressions "
             f"(click_bias {args.click_bias}), with the true probabilities")
    t = time.perf_counter()
    generate_logs(str(logs), days[0], len(days), args.rows_per_day, seed=args.log_seed,
                  task_correlation=args.task_correlation, click_bias=args.click_bias,
                  truth_columns=True)
    counts = {date: _derived_logs(logs, root, date, variants) for date in days[:-1]}
    timings["generate logs"] = time.perf_counter() - t
    t = time.perf_counter()
    written: dict[str, int] = {}
    for name in variants:
        # The TFRecords depend on the data section alone: one preprocessing for every run.
        config = _config(root, name, args, args.epochs_per_day[0], args.train_seeds[0])
        for date in days[:-1]:
            t_day = time.perf_counter()
            manifest = run_preprocess(config, date, beam_args=args.beam_args)
            written[name] = written.get(name, 0) + manifest["rows"]["written"]
            progress(f"(b) preprocessed {name} {date}: {manifest['rows']['written']} rows "
                     f"({time.perf_counter() - t_day:.0f} s)")
    timings["preprocess (Beam)"] = time.perf_counter() - t
    return counts, written


def _train(config: Config, name: str, days: list[str], strategy: tf.distribute.Strategy,
           label: str) -> Run:
    """Trains the days in order with `train_day`; the loss curves and validation it left."""
    curves, first_step = [], 0
    for date in days:
        t = time.perf_counter()
        curve = LossCurve(TERMS[name], first_step)
        result = train_day(config, date, strategy, callbacks=[curve])
        first_step = result.global_step
        curves.append(curve)
        progress(f"(b) trained {label} {date}: {result.steps} steps, export v{result.version} "
                 f"({time.perf_counter() - t:.0f} s)")
    validation = [(r["date"], r["tasks"]) for r in read_history(config.train.model_dir)
                  if r.get("kind") == "progressive_validation"]
    return Run(config, curves, first_step, validation)


def _truth(rows: list[dict], outcome_seed: int) -> dict[str, np.ndarray]:
    """The test day's truth, read from its logged rows (see `quality_esmm_report`)."""
    truth = {"p_click": np.array([r[TRUTH_COLUMNS[0]] for r in rows]),
             "p_cvr": np.array([r[TRUTH_COLUMNS[1]] for r in rows]),
             "click": np.array([r["click"] for r in rows], dtype=bool),
             "conversion": np.array([r["conversion"] for r in rows], dtype=bool)}
    # Counterfactual outcome of every impression: would it convert if it were clicked?
    truth["would_convert"] = (np.random.default_rng(outcome_seed).random(len(rows))
                              < truth["p_cvr"])
    return truth


def run_esmm(args: argparse.Namespace, root: Path) -> None:
    """Part (b): trains ESMM and the clicked-rows CVR models, then prints and draws the figures.

    Every variant is trained once per `--epochs-per-day` value and training seed, on the same
    TFRecords. Each variant's own objective on the last day's progressive validation (scored
    before training on that day) picks its number of passes; the test day never does.

    Args:
        args: The parsed command line (its "(b)" group, and `--png`).
        root: The folder every generated file goes under.
    """
    started = time.perf_counter()
    timings: dict[str, float] = {}
    variants = list(args.esmm_variants)
    days = _days(args.train_days + 1)
    counts, written = _prepare(args, root, variants, days, timings)

    strategy = make_strategy()
    runs: dict[tuple[str, int, int], Run] = {}
    for name in variants:
        t = time.perf_counter()
        for passes in args.epochs_per_day:
            for seed in args.train_seeds:
                runs[(name, passes, seed)] = _train(
                    _config(root, name, args, passes, seed), name, days[:-1], strategy,
                    f"{name} E={passes} seed {seed}")
        timings[f"train {name}"] = time.perf_counter() - t

    t = time.perf_counter()
    rows = [row for path in _day_files(root / "logs", days[-1]) for _, row in read_rows(
        str(path))]
    truth = _truth(rows, args.outcome_seed)
    scores = {key: _score(run.config, rows) for key, run in runs.items()}
    timings["score test day (Predictor)"] = time.perf_counter() - t

    judged: dict[tuple[str, int], list[Judged]] = {}
    for (name, passes, _seed), s in scores.items():
        p_ctcvr = s.get("ctcvr", s["click"] * s["conversion"] if "click" in s else None)
        judged.setdefault((name, passes), []).append(
            judge(truth, s.get("click"), s["conversion"], p_ctcvr))
    judged[("truth", 0)] = [judge(truth, truth["p_click"], truth["p_cvr"],
                                  truth["p_click"] * truth["p_cvr"])]
    chosen = choose_passes(runs, variants)
    seed = args.train_seeds[0]
    pngs = draw_figures(
        Path(args.png), truth,
        {name: (f"{LABELS[name]}, E={chosen[name]}",
                scores[(name, chosen[name], seed)]["conversion"]) for name in variants},
        {(name, passes): runs[(name, passes, seed)].curves
         for name in variants for passes in args.epochs_per_day},
        list(args.epochs_per_day), days[:-1])
    timings["total (b)"] = time.perf_counter() - started
    print_report(args, {
        "days": days[:-1], "test_day": days[-1], "counts": counts, "written": written,
        "test_rows": len(rows), "truth": truth, "runs": runs, "chosen": chosen,
        "judged": judged, "click_as_cvr": judge(truth, None, truth["p_click"], None),
        "timings": timings, "pngs": pngs,
    })


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The command-line options of part (b)."""
    group = parser.add_argument_group("(b) ESMM on generated impression logs")
    group.add_argument("--esmm-variants", nargs="+", choices=VARIANTS, default=list(VARIANTS),
                       help="models to train (esmm, clicked: pCVR on clicked rows, base: the "
                       "ESMM paper's BASE, a CVR-only model of the clicked rows)")
    group.add_argument("--train-days", type=int, default=3)
    group.add_argument("--rows-per-day", type=int, default=350_000,
                       help="impressions per day (training days and the test day)")
    group.add_argument("--log-seed", type=int, default=0)
    group.add_argument("--task-correlation", type=float, default=0.8)
    group.add_argument("--click-bias", type=float, default=-1.5,
                       help="added to the click logit: -1.5 gives a ~5.5%% click rate")
    group.add_argument("--id-buckets", type=int, default=100_000,
                       help="hash buckets of user_id and item_id (and recent_items)")
    group.add_argument("--esmm-batch-size", type=int, default=1024)
    group.add_argument("--esmm-learning-rate", type=float, default=0.002,
                       help="Adam rate of the dense layers")
    group.add_argument("--esmm-embedding-learning-rate", type=float, default=0.1,
                       help="Adagrad rate of the embedding tables")
    group.add_argument("--esmm-dropout", type=float, default=0.0,
                       help="dropout after every expert layer (model.dropout)")
    group.add_argument("--epochs-per-day", type=int, nargs="+", default=[1, 2, 4],
                       help="passes over each training day (train.epochs_per_day): every "
                       "model is trained once per value")
    group.add_argument("--train-seeds", type=int, nargs="+", default=[0],
                       help="train every model once per seed (init and shuffling)")
    group.add_argument("--outcome-seed", type=int, default=12345,
                       help="seed of the would-convert outcomes drawn for every test impression")
    group.add_argument("--beam-args", nargs="*", default=None,
                       help="Beam options of preprocessing (default: DirectRunner, all cores)")
