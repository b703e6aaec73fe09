"""Prints model-quality figures: MMoE's synthetic tasks, and ESMM against a clicked-rows CVR tower.

    python benchmarks/quality.py [--parts synthetic esmm] [--seeds 0 1]
                                 [--correlations 1.0 0.5 0.0] [--epochs 12] [--train-rows 10000]
                                 [--rows-per-day 60000] [--click-bias -1.5] [--train-seeds 0]
                                 [--workdir DIR]

(a) The synthetic two-task regression of Ma et al. (KDD 2018, section 4): x ~ N(0, I_d), d=100;
    orthogonal unit vectors u1, u2; w1 = c u1, w2 = c (p u1 + sqrt(1 - p^2) u2), c = 1;
    y_i = w_i.x + sum_{j=1..m} sin(alpha_j w_i.x + beta_j) + eps_i, m = 10, where alpha_j and
    beta_j ~ N(0, sin_std^2) are drawn once per data set (shared by both tasks) and
    eps_i ~ N(0, 0.01) (variance). The backbones are the project's own layers (SharedBottom, MoE,
    MMoE, PLE) under one `TaskTower(units=[8])` per task, sized as in the paper for comparable
    parameter counts: a 113-unit shared bottom against 8 experts of 16 units. Printed: the test
    MSE averaged over the two tasks, then over seeds, per (model, correlation p).
(b) ESMM against a CVR tower trained on clicked rows only (the sample-selection-biased setup),
    both MMoE backbones, on generated impression logs with a low click rate, through the real
    flow: Beam preprocessing, `train_day` on days 1-2, the newest SavedModel scoring day 3's raw
    rows. pCVR is judged over EVERY impression against a "would convert if clicked" label drawn
    from the generator's true conversion logit, and on clicked rows against the observed label.

Figures are printed, never asserted. Progress goes to stderr, the tables to stdout.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gzip
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

import multitower  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)

# isort: split
import tf_keras as keras

from multitower.config import Config, load_config
from pipeline.generate import Population, generate_day, generate_logs
from pipeline.preprocess import run_preprocess
from serving.predict import Predictor, read_rows
from trainer.backbones import PLE, MMoE, MoE, SharedBottom
from trainer.heads import TaskTower
from trainer.metrics import auc
from trainer.strategy import make_strategy
from trainer.train import train_day

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "impressions.yaml"
START = "2026-01-01"
TASKS = ["t1", "t2"]
SYNTHETIC_MODELS = ("shared_bottom", "moe", "mmoe", "ple")


def progress(message: str) -> None:
    """Prints a progress line to stderr."""
    print(f"[quality] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# (a) the MMoE paper's synthetic two-task regression


def synthetic_data(
    rows: int, split: int, correlation: float, seed: int, d: int, m: int, sin_std: float,
    noise_std: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`rows` examples `(x (rows, d), y1 (rows,), y2 (rows,))` of split `split` (0 train, 1 test).

    u1, u2, alpha and beta depend only on `seed`: the splits of a seed describe the same two
    tasks, and the correlations of a seed differ only in w2. The rows depend on (seed, split).
    """
    params = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0,)))
    # Two orthogonal unit vectors: the Q factor of a Gaussian (d, 2) matrix.
    q, _ = np.linalg.qr(params.normal(size=(d, 2)))
    u1, u2 = q[:, 0], q[:, 1]
    c = 1.0
    w1 = c * u1
    w2 = c * (correlation * u1 + math.sqrt(max(0.0, 1.0 - correlation**2)) * u2)
    alpha = params.normal(0.0, sin_std, size=m)
    beta = params.normal(0.0, sin_std, size=m)
    rows_rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1, split)))
    x = rows_rng.normal(size=(rows, d))

    def label(w: np.ndarray) -> np.ndarray:
        z = x @ w
        return (z + np.sin(np.outer(z, alpha) + beta).sum(axis=1)
                + rows_rng.normal(0.0, noise_std, size=rows))

    return x.astype(np.float32), label(w1).astype(np.float32), label(w2).astype(np.float32)


def synthetic_model(kind: str, d: int, learning_rate: float) -> keras.Model:
    """A backbone of the project's layers plus one regression `TaskTower([8])` per task."""
    if kind == "shared_bottom":
        backbone = SharedBottom(TASKS, [113], name="backbone")
    elif kind == "moe":
        backbone = MoE(TASKS, 8, [16], name="backbone")
    elif kind == "mmoe":
        backbone = MMoE(TASKS, 8, [16], name="backbone")
    elif kind == "ple":
        backbone = PLE(TASKS, levels=2, shared_experts=4, task_experts=2, expert_units=[16],
                       name="backbone")
    else:
        raise ValueError(f"unknown synthetic model {kind!r}")
    x = keras.Input((d,), name="x")
    per_task = backbone(x)
    outputs = {t: TaskTower([8], "regression", name=t)(h)
               for t, h in zip(TASKS, per_task, strict=True)}
    model = keras.Model(x, outputs, name=kind)
    model.compile(keras.optimizers.Adam(learning_rate), loss={t: "mse" for t in TASKS})
    return model


def _two_task_mse(model: keras.Model, x: np.ndarray, y1: np.ndarray, y2: np.ndarray) -> float:
    """The mean over the two tasks of each task's mean squared error."""
    predicted = model.predict(x, batch_size=4096, verbose=0)
    return float(np.mean([np.mean((predicted[t][:, 0] - y) ** 2)
                          for t, y in (("t1", y1), ("t2", y2))]))


def run_synthetic(args: argparse.Namespace) -> None:
    """Part (a): trains each model per correlation and seed, then prints the test MSE table."""
    d, m = 100, 10
    results: dict[tuple[str, float], list[float]] = {}  # test MSE per seed
    train_results: dict[tuple[str, float], list[float]] = {}
    params: dict[str, int] = {}
    started = time.perf_counter()
    for p in args.correlations:
        for seed in args.seeds:
            x_train, y1_train, y2_train = synthetic_data(
                args.train_rows, 0, p, seed, d, m, args.sin_std, args.noise_std)
            x_test, y1_test, y2_test = synthetic_data(
                args.test_rows, 1, p, seed, d, m, args.sin_std, args.noise_std)
            for kind in args.models:
                keras.backend.clear_session()
                keras.utils.set_random_seed(1000 + seed)
                model = synthetic_model(kind, d, args.learning_rate)
                params[kind] = model.count_params()
                model.fit(x_train, {"t1": y1_train, "t2": y2_train}, batch_size=args.batch_size,
                          epochs=args.epochs, shuffle=True, verbose=0)
                results.setdefault((kind, p), []).append(
                    _two_task_mse(model, x_test, y1_test, y2_test))
                train_results.setdefault((kind, p), []).append(
                    _two_task_mse(model, x_train, y1_train, y2_train))
            progress(f"(a) p={p:.2f} seed {seed}: "
                     + ", ".join(f"{k} {results[(k, p)][-1]:.4f}" for k in args.models)
                     + f"  ({time.perf_counter() - started:.0f} s)")

    print()
    print("(a) MMoE paper synthetic regression (Ma et al. KDD 2018, sec. 4): test MSE, mean of "
          "the two tasks")
    print(f"    d={d}, m={m}, c=1, alpha,beta ~ N(0, {args.sin_std}^2) per data set, "
          f"eps ~ N(0, {args.noise_std}^2); {args.train_rows} train / {args.test_rows} test rows")
    print(f"    {args.epochs} epochs, batch {args.batch_size}, Adam lr {args.learning_rate}, "
          f"loss MSE per task (summed); mean ± std over seeds {args.seeds}")
    described = {
        "shared_bottom": "SharedBottom [113]",
        "moe": "MoE 8 x [16], 1 gate",
        "mmoe": "MMoE 8 x [16]",
        "ple": "PLE 2 lvl, 4 shared+2/task x [16]",
    }
    header = f"    {'model (+ TaskTower [8] per task)':<34}{'params':>8}" + "".join(
        f"{f'p={p:.2f}':>18}" for p in args.correlations)
    print(header)
    print("    " + "-" * (len(header) - 4))
    for kind in args.models:
        cells = []
        for p in args.correlations:
            values = np.array(results[(kind, p)])
            cells.append(f"{values.mean():.4f} ± {values.std():.4f}")
        print(f"    {described[kind]:<34}{params[kind]:>8d}" + "".join(
            f"{c:>18}" for c in cells))
    print(f"    noise floor (the Bayes MSE): {args.noise_std**2:.4f} at every p")
    print("    train MSE of the same runs (mean over seeds), to show the generalization gap:")
    for kind in args.models:
        print(f"    {described[kind]:<34}{'':>8}" + "".join(
            f"{np.mean(train_results[(kind, p)]):>18.4f}" for p in args.correlations))


# ---------------------------------------------------------------------------------------------
# (b) ESMM against a CVR tower trained on clicked rows only


def _days(n: int) -> list[str]:
    first = dt.date.fromisoformat(START)
    return [(first + dt.timedelta(days=i)).isoformat() for i in range(n)]


def _day_files(logs_root: Path, date: str) -> list[Path]:
    return sorted((logs_root / f"dt={date}").glob("*.jsonl.gz"))


def _day_rows(logs_root: Path, date: str) -> list[dict]:
    return [row for path in _day_files(logs_root, date) for _, row in read_rows(str(path))]


def _clicked_only_copy(logs_root: Path, out_root: Path, date: str) -> None:
    """The day's logs with `conversion` null on every non-clicked row (file by file)."""
    for path in _day_files(logs_root, date):
        lines = []
        for _, row in read_rows(str(path)):
            if not row["click"]:
                row["conversion"] = None
            lines.append(json.dumps(row, separators=(",", ":")))
        target = out_root / f"dt={date}" / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode(), mtime=0))


def _config(
    root: Path, name: str, logs: Path, args: argparse.Namespace, esmm: bool, seed: int
) -> Config:
    """examples/impressions.yaml cut down to click + conversion, every path under `root`.

    The TFRecords are shared by every training seed of `name`; model and exports are not.
    """
    raw = yaml.safe_load(EXAMPLE.read_text())
    for feature in raw["data"]["features"]:
        if feature["name"] in ("user_id", "item_id"):
            feature["hash_buckets"] = args.id_buckets
    conversion = {"name": "conversion", "type": "binary"}
    if not esmm:
        conversion["optional"] = True
    raw["data"].update({
        "logs": f"{logs}/dt={{date}}",
        "tfrecords": f"{root / name}/tfrecords",
        "rejected": f"{root / name}/rejected",
        "num_shards": 2,
        "tasks": [{"name": "click", "type": "binary"}, conversion],
    })
    raw["model"] = {
        "name": name,
        "backbone": "mmoe",
        "mmoe": {"num_experts": 4, "expert_units": [32, 16]},
        "tower_units": [16],
        "heads": "esmm" if esmm else "towers",
        **({"esmm": {"ctr_task": "click", "cvr_task": "conversion"}} if esmm else {}),
    }
    raw["train"].update({
        "model_dir": f"{root / name}/seed{seed}/model",
        "export_dir": f"{root / name}/seed{seed}/export",
        "batch_size": args.batch_size_logs,
        "seed": seed,
    })
    path = root / f"{name}-seed{seed}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return load_config(path)


def _score(config: Config, rows: list[dict]) -> dict[str, np.ndarray]:
    predictor = Predictor(os.path.join(config.train.export_dir, config.model.name))
    scores: dict[str, list[np.ndarray]] = {}
    for batch in predictor.predict((f"row {i}", row) for i, row in enumerate(rows)):
        for name, values in batch.items():
            scores.setdefault(name, []).append(values)
    return {name: np.concatenate(values).astype(np.float64) for name, values in scores.items()}


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def run_esmm(args: argparse.Namespace, root: Path) -> None:
    """Part (b): trains ESMM and the clicked-rows CVR tower, then prints the pCVR figures.

    Args:
        args: The parsed command line (its "(b)" group).
        root: The folder every generated file goes under.
    """
    started = time.perf_counter()
    days = _days(3)
    logs = root / "logs"
    progress(f"(b) generating {len(days)} days x {args.rows_per_day} impressions "
             f"(click_bias {args.click_bias})")
    generate_logs(str(logs), days[0], len(days), args.rows_per_day, seed=args.log_seed,
                  task_correlation=args.task_correlation, click_bias=args.click_bias)
    counts = []
    for date in days:
        day = _day_rows(logs, date)
        counts.append((len(day), sum(r["click"] for r in day), sum(r["conversion"] for r in day)))

    clicked_logs = root / "logs_clicked_only"
    for date in days[:2]:
        _clicked_only_copy(logs, clicked_logs, date)
    variants = {"esmm": (logs, True), "cvr_clicked": (clicked_logs, False)}
    configs = {(name, seed): _config(root, name, source, args, esmm, seed)
               for name, (source, esmm) in variants.items() for seed in args.train_seeds}
    for name in variants:
        for date in days[:2]:
            t = time.perf_counter()
            manifest = run_preprocess(configs[(name, args.train_seeds[0])], date)
            progress(f"(b) preprocessed {name} {date}: {manifest['rows']['written']} rows "
                     f"({time.perf_counter() - t:.0f} s)")
    strategy = make_strategy()
    for (name, seed), config in configs.items():
        keras.utils.set_random_seed(1000 + seed)  # the same initial draws for both variants
        for date in days[:2]:
            t = time.perf_counter()
            result = train_day(config, date, strategy)
            progress(f"(b) trained {name} seed {seed} {date}: {result.steps} steps, export "
                     f"v{result.version} ({time.perf_counter() - t:.0f} s)")

    rows = _day_rows(logs, days[2])
    table, truth = generate_day(Population(args.log_seed), days[2], args.rows_per_day,
                                args.log_seed, args.task_correlation, args.click_bias)
    if len(table) != len(rows) or any(
        a["event_id"] != b["event_id"] or a["click"] != b["click"]
        or a["conversion"] != b["conversion"] for a, b in zip(table, rows, strict=True)
    ):
        sys.exit("(b) the regenerated day does not match the logged day row for row; the ground "
                 "truth would be misaligned")
    click = np.array([r["click"] for r in rows], dtype=bool)
    conversion = np.array([r["conversion"] for r in rows], dtype=bool)
    p_ctr_true = _sigmoid(truth["click_logit"])
    p_cvr_true = _sigmoid(truth["conversion_logit"])
    # Counterfactual label over every impression: would this impression convert if clicked?
    would_convert = np.random.default_rng(12345).random(len(rows)) < p_cvr_true
    scores = {key: _score(config, rows) for key, config in configs.items()}
    progress(f"(b) scored day {days[2]} with every export ({time.perf_counter() - started:.0f} s "
             "for part b)")

    def figures(p_ctr: np.ndarray, p_cvr: np.ndarray, p_ctcvr: np.ndarray) -> list[float]:
        return [
            auc(would_convert, p_cvr),
            auc(conversion[click], p_cvr[click]),
            auc(click & conversion, p_ctcvr),
            auc(click, p_ctr),
            p_cvr.mean() / p_cvr_true.mean(),
            p_cvr[click].mean() / p_cvr_true[click].mean(),
        ]

    def line(label: str, runs: list[list[float]]) -> str:
        values = np.array(runs)
        if len(runs) == 1:
            return f"    {label:<34}" + "".join(f"{v:>13.4f}" for v in values[0])
        return f"    {label:<34}" + "".join(
            f"{f'{m:.4f}±{sd:.4f}':>13}" for m, sd in zip(values.mean(0), values.std(0),
                                                          strict=True))

    print()
    print("(b) ESMM vs a CVR tower trained on clicked rows only; both MMoE 4 x [32, 16], "
          "towers [16]")
    print(f"    logs: {args.rows_per_day} rows/day, seed {args.log_seed}, task_correlation "
          f"{args.task_correlation}, click_bias {args.click_bias}, id hash buckets "
          f"{args.id_buckets}")
    print(f"    train_day on days 1-2 (one pass each, batch {args.batch_size_logs}), then the "
          "newest SavedModel scores unseen day 3's raw rows")
    print(f"    training seeds {args.train_seeds}"
          + (" (mean±std)" if len(args.train_seeds) > 1 else ""))
    for date, (n, clicks, conversions) in zip(days, counts, strict=True):
        print(f"    {date}: {n} impressions, click rate {clicks / n:.2%} ({clicks}), "
              f"conversions {conversions} ({conversions / max(clicks, 1):.1%} of clicks)")
    print(f"    day 3 regenerated with its truth: {len(rows)} rows, event ids and labels match "
          "the logs;")
    print(f"    'would convert if clicked' drawn from the true conversion logit: "
          f"{int(would_convert.sum())} of {len(rows)}")
    header = (f"    {'model':<34}{'pCVR all':>13}{'pCVR click':>13}{'pCTCVR all':>13}"
              f"{'pCTR all':>13}{'mean/true':>13}{'clk m/true':>13}")
    print(header)
    print("    " + "-" * (len(header) - 4))
    esmm = [scores[("esmm", seed)] for seed in args.train_seeds]
    base = [scores[("cvr_clicked", seed)] for seed in args.train_seeds]
    print(line("ESMM (pCTCVR = pCTR x pCVR)",
               [figures(s["click"], s["conversion"], s["ctcvr"]) for s in esmm]))
    print(line("CVR tower on clicked rows only",
               [figures(s["click"], s["conversion"], s["click"] * s["conversion"])
                for s in base]))
    print(line("ground truth (generator's logits)",
               [figures(p_ctr_true, p_cvr_true, p_ctr_true * p_cvr_true)]))
    print("    pCVR all:   AUC of pCVR over every impression vs the drawn would-convert label")
    print("    pCVR click: AUC of pCVR on clicked rows vs the observed conversion")
    print("    pCTCVR all: AUC vs click x conversion on every row (the baseline's is its "
          "pCTR x pCVR)")
    print("    mean/true:  mean pCVR over every impression / mean true P(convert | click);")
    print("    clk m/true: the same on clicked rows only")


def main() -> None:
    """Parses the command line and runs the asked parts."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", nargs="+", choices=["synthetic", "esmm"],
                        default=["synthetic", "esmm"])
    group = parser.add_argument_group("(a) synthetic regression")
    group.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    group.add_argument("--correlations", type=float, nargs="+", default=[1.0, 0.5, 0.0])
    group.add_argument("--models", nargs="+", choices=SYNTHETIC_MODELS,
                       default=list(SYNTHETIC_MODELS))
    group.add_argument("--train-rows", type=int, default=10_000)
    group.add_argument("--test-rows", type=int, default=5_000)
    group.add_argument("--epochs", type=int, default=12)
    group.add_argument("--batch-size", type=int, default=128)
    group.add_argument("--learning-rate", type=float, default=3e-3)
    group.add_argument("--sin-std", type=float, default=0.1,
                       help="standard deviation of alpha_j and beta_j")
    group.add_argument("--noise-std", type=float, default=0.1, help="standard deviation of eps")
    group = parser.add_argument_group("(b) ESMM on generated impression logs")
    group.add_argument("--rows-per-day", type=int, default=60_000)
    group.add_argument("--log-seed", type=int, default=0)
    group.add_argument("--task-correlation", type=float, default=0.8)
    group.add_argument("--click-bias", type=float, default=-1.5)
    group.add_argument("--id-buckets", type=int, default=20_000,
                       help="hash buckets of user_id and item_id")
    group.add_argument("--batch-size-logs", type=int, default=512)
    group.add_argument("--train-seeds", type=int, nargs="+", default=[0],
                       help="train both models once per seed (init and shuffling)")
    parser.add_argument("--workdir", help="keep the generated files here (default: a temporary "
                        "folder, deleted at the end)")
    args = parser.parse_args()
    for p in args.correlations:
        if not -1.0 <= p <= 1.0:
            parser.error(f"--correlations must be in [-1, 1], got {p}")

    started = time.perf_counter()
    print(f"multitower quality benchmark — parts {', '.join(args.parts)}; "
          f"{os.cpu_count()} CPU core(s)")
    if "synthetic" in args.parts:
        run_synthetic(args)
    if "esmm" in args.parts:
        root = Path(args.workdir or tempfile.mkdtemp(prefix="multitower-quality-")).resolve()
        root.mkdir(parents=True, exist_ok=True)
        try:
            run_esmm(args, root)
        finally:
            if not args.workdir:
                shutil.rmtree(root, ignore_errors=True)
    print(f"\ntotal {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
