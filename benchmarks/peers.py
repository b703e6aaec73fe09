"""Prints multitower's MMoE training and prediction speed and AUC next to DeepCTR and torch-rechub.

    python benchmarks/peers.py [--peers deepctr torch-rechub] [--rows 70000] [--passes 3]
        [--hash-factor 32] [--venv-dir DIR] [--keep]

One run, one generated data set, the same model for every library. The data: a census-income
shaped table made here with a seeded numpy generator: `--rows` training rows and 3/7 as many
test rows, 27 categorical columns (strings, 2 to 50 distinct values each, skewed), 12 numeric
columns of different scales and shapes, and two correlated binary labels, `income` (~6%
positive) and `marital` (~40%), drawn from a known logistic model with interactions over some
of the features. The AUC of that model's own probabilities on the test rows (the ceiling no
learner beats on average) is printed with the rest.

The model: every categorical column embedded in 8 dimensions, the numeric columns standardized
(train mean / std), MMoE with 8 experts of [64] units with batch norm and one softmax gate per
task, towers of [32], two binary tasks, binary cross-entropy summed over the tasks, Adam 1e-3
on the dense layers, batch 1024, `--passes` passes over the same training rows.

- multitower: the rows are written as JSON-lines logs, one day per pass (the same rows every
  day), preprocessed by `multitower preprocess` (Beam) and trained by `multitower train --dates
  D1:DP --workers 1` (subprocesses, its own code path: TFRecords, hashing into `hash_buckets`
  = `--hash-factor` x each column's vocabulary, its default row-sparse table optimizer, the
  daily incremental path, one pass per day). The peers look values up by their exact id, so
  the default factor, 32, leaves few collisions (at 2 hashing cost ~0.02 marital AUC here).
  Train ex/s per pass is the trainer's own figure, logged as `trained day D: N steps in S s
  (R ex/s after the first call)`: the steps after the first call into the training function
  (which traces it and fills the input pipeline), so a day needs more than
  `steps_per_execution` batches (`--rows` >= 17 x 1024 with the default 16).
- DeepCTR 0.9.4 `deepctr.models.MMOE`, from in-memory numpy arrays (its documented path),
  categorical columns as integer ids (`SparseFeat`, exact vocabulary, no hashing), compiled
  with the same `steps_per_execution` as multitower (`train.steps_per_execution`'s default),
  `l2_reg_embedding=0` (multitower has no regularizer), one `fit` of `--passes` epochs; each
  epoch is timed like a multitower day: from the end of its first call (`steps_per_execution`
  steps) to its last step. It runs in a throwaway virtualenv whose `.pth` file puts the project
  venv's site-packages after its own, so it uses the same TensorFlow 2.16.2 and tf-keras
  (`TF_USE_LEGACY_KERAS=1`); only deepctr itself is installed there (`--no-deps`).
  Its import-time version check against PyPI is switched off.
- torch-rechub 0.9.0 `MMOE` (`--peers ... torch-rechub`), in its own throwaway virtualenv with
  torch 2.13.0 (CPU) and torch-rechub's declared dependencies. Its `MTLTrainer` is not used: a
  plain loop (shuffled index batches of 1024 from in-memory tensors, summed BCE, Adam 1e-3),
  timed per pass from the end of its first step, as its trainer prints no rate and averages the
  task losses. torch-rechub's MLP always adds batch norm, so its gates are Linear -> BatchNorm ->
  softmax, where multitower's and DeepCTR's gates are a plain softmax layer. torch uses one
  thread per core; when other processes hold the cores its threads wait on each other and a
  step can take several times longer (seen here: 1 thread 5x faster than 2 on a loaded
  machine), so its figure is the most sensitive to "others" below.

Predict ex/s: batches of 1024 test rows; multitower through the newest export's
`serving_default` signature (`tf.saved_model.load`, raw strings and floats in, hashing and
normalization inside), DeepCTR through `model.predict(batch_size=1024)`, torch-rechub through
`model.eval()` under `torch.no_grad()`; after one warm-up, `--passes` timed passes over the
test rows, median. Test AUC per task from those predictions, all three computed by one
function (the Mann-Whitney statistic with tied scores at their mean rank, as sklearn's
`roc_auc_score`), after the same number of passes.

Busy machine: around every subprocess the total CPU time of the machine (/proc/stat), the load
average and the CPU time of this script's finished subprocesses (`getrusage(RUSAGE_CHILDREN)`)
are read; "others" is the machine's busy CPU less this run's, as a share of all cores. A large
"others" marks a noisy figure. Figures are printed, never asserted. Throwaway venvs are kept
under `--venv-dir` (default `<temp dir>/multitower-peers-venvs`) and reused by later runs; the
project's own venv is never installed into.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WORKERS = HERE / "peers_workers.py"
TASKS = ("income", "marital")
POSITIVE_RATES = (0.062, 0.40)
CATEGORICAL, NUMERIC = 27, 12
BATCH, EMBEDDING_DIM = 1024, 8
FIRST_DAY = datetime.date(2026, 1, 1)
PEERS = {"deepctr": ["deepctr==0.9.4"], "torch-rechub": ["torch==2.13.0", "torch-rechub==0.9.0"]}
TICK = os.sysconf("SC_CLK_TCK")


# --- the data --------------------------------------------------------------------------------

def generate(train_rows: int, seed: int = 0) -> dict[str, np.ndarray]:
    """A census-shaped table with labels from a known logistic model (see the docstring).

    Returns:
        `cat` (rows x 27 value ids), `num` (rows x 12 raw floats), `y` (rows x 2 labels),
        `p` (the model's probabilities), `cards` (values per categorical column), `test`
        (whether a row is a test row).
    """
    rng = np.random.default_rng(seed)
    n = train_rows + train_rows * 3 // 7
    cards = np.round(np.geomspace(2, 50, CATEGORICAL)).astype(int)
    cat = np.empty((n, CATEGORICAL), np.int32)
    logits = np.zeros((n, 2))
    strength = rng.choice([0.0, 0.2, 0.45, 0.9], CATEGORICAL, p=[0.25, 0.3, 0.3, 0.15])
    for c, k in enumerate(cards):
        weights = 1.0 / np.arange(1, k + 1) ** rng.uniform(0.5, 1.5)  # skewed, like census
        cat[:, c] = rng.choice(k, n, p=weights / weights.sum())
        effect = rng.normal(0.0, strength[c], k)
        logits[:, 0] += effect[cat[:, c]]
        logits[:, 1] += (0.9 * effect + rng.normal(0.0, strength[c] * 0.5, k))[cat[:, c]]
    base = np.column_stack([
        rng.uniform(0, 1, n), rng.normal(0, 1, n), rng.lognormal(0, 1, n),
        rng.poisson(3, n), rng.exponential(1, n) * (rng.random(n) < 0.1), rng.gamma(2, 1, n),
        rng.normal(0, 1, n), rng.uniform(0, 1, n), rng.lognormal(0, 0.5, n),
        rng.binomial(52, 0.6, n), rng.normal(0, 1, n), rng.standard_t(4, n)])
    z = (base - base.mean(0)) / base.std(0)
    coef = rng.normal(0, 0.5, (NUMERIC, 2)) * (rng.random((NUMERIC, 1)) < 0.75)
    coef[:, 1] = 0.8 * coef[:, 0] + 0.5 * coef[:, 1]
    logits += z @ coef
    logits[:, 0] += 0.8 * np.abs(z[:, 0]) - 0.6 * (cat[:, -1] < 3) * z[:, 1]  # nonlinear parts
    logits[:, 1] += -0.5 * z[:, 0] ** 2 + 0.7 * (cat[:, -2] == 0) * z[:, 2]
    scales = np.array([60, 1, 2e4, 1, 5e3, 10, 0.01, 1e3, 50, 1, 3, 100.0])
    offsets = np.array([18, 0, 0, 0, 0, 0, 0.5, 0, 0, 0, -1, 0.0])
    y, p = np.empty((n, 2), np.int8), np.empty((n, 2))
    for t, rate in enumerate(POSITIVE_RATES):
        low, high = -20.0, 20.0
        for _ in range(60):  # the intercept that gives the positive rate
            mid = (low + high) / 2
            low, high = (mid, high) if (1 / (1 + np.exp(-(logits[:, t] + mid)))).mean() < rate \
                else (low, mid)
        p[:, t] = 1 / (1 + np.exp(-(logits[:, t] + low)))
        y[:, t] = rng.random(n) < p[:, t]
    return {"cat": cat, "num": offsets + scales * base, "y": y, "p": p, "cards": cards,
            "test": np.arange(n) >= train_rows}


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC: the Mann-Whitney statistic, tied scores at their mean rank (as sklearn's)."""
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - (counts - 1) / 2)[inverse]
    positive = labels.astype(bool)
    n_pos, n_neg = positive.sum(), (~positive).sum()
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def save_arrays(data: dict[str, np.ndarray], path: Path) -> None:
    """The arrays every worker reads: ids, raw and standardized numbers, labels, split."""
    train, test = ~data["test"], data["test"]
    mean, std = data["num"][train].mean(0), data["num"][train].std(0)
    standardized = ((data["num"] - mean) / std).astype(np.float32)
    np.savez(path, cards=data["cards"], cat_train=data["cat"][train], cat_test=data["cat"][test],
             num_train=standardized[train], num_test=standardized[test],
             raw_test=data["num"][test].astype(np.float32), y_train=data["y"][train],
             y_test=data["y"][test])


def write_day(data: dict[str, np.ndarray], path: Path) -> None:
    """The training rows as one JSON-lines log file (value ids as strings `v<id>`)."""
    path.parent.mkdir(parents=True)
    rows = np.flatnonzero(~data["test"])
    names = [f"cat_{c:02d}" for c in range(CATEGORICAL)] + [f"num_{j:02d}" for j in range(NUMERIC)]
    cat, num, y = data["cat"].tolist(), data["num"].tolist(), data["y"].tolist()
    with path.open("w") as f:
        for i in rows:
            values = [f"v{v}" for v in cat[i]] + num[i]
            row = dict(zip(names, values, strict=True))
            row.update(zip(TASKS, y[i], strict=True))
            f.write(json.dumps(row) + "\n")


# --- how busy the machine was ------------------------------------------------------------------

@dataclass
class Load:
    """The machine around one subprocess: wall time, CPU shares of all cores, load averages."""

    label: str
    wall: float
    busy: float  # the machine's busy CPU, as a share of all cores
    own: float  # this run's subprocesses' CPU, as a share of all cores
    load: tuple[str, str]

    @property
    def others(self) -> float:
        return max(0.0, self.busy - self.own)


def _sample() -> tuple[float, float, float, float, str]:
    with open("/proc/stat") as f:
        jiffies = [int(v) for v in f.readline().split()[1:]]
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    with open("/proc/loadavg") as f:
        load = " ".join(f.read().split()[:3])
    idle = jiffies[3] + jiffies[4]  # idle + iowait
    return (time.perf_counter(), (sum(jiffies) - idle) / TICK, sum(jiffies) / TICK,
            children.ru_utime + children.ru_stime, load)


@dataclass
class Runner:
    """Runs subprocesses and notes how busy the machine was during each."""

    loads: list[Load] = field(default_factory=list)

    def run(self, label: str, argv: list[str], env: dict[str, str] | None = None,
            cwd: Path = ROOT) -> str:
        """Runs `argv`, exits with its output's tail if it fails; returns stdout + stderr."""
        before = _sample()
        base = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}  # never a cluster
        done = subprocess.run(argv, capture_output=True, text=True, cwd=cwd,
                              env={**base, **(env or {})})
        after = _sample()
        capacity = after[2] - before[2]
        self.loads.append(Load(label, after[0] - before[0], (after[1] - before[1]) / capacity,
                               (after[3] - before[3]) / capacity, (before[4], after[4])))
        if done.returncode:
            sys.exit(f"{label} failed ({' '.join(argv[:4])} ...):\n"
                     f"{(done.stdout + done.stderr)[-3000:]}")
        return done.stdout + done.stderr


def _result(output: str) -> dict:
    """The JSON line a worker prints last."""
    lines = [line for line in output.splitlines() if line.startswith("RESULT ")]
    if not lines:
        sys.exit(f"no RESULT line in:\n{output[-3000:]}")
    return json.loads(lines[-1].split(" ", 1)[1])


# --- multitower ----------------------------------------------------------------------------------

def multitower(runner: Runner, data: dict[str, np.ndarray], work: Path, passes: int,
               hash_factor: int) -> dict:
    """Preprocesses `passes` identical days, trains them, then predicts the test rows."""
    days = [(FIRST_DAY + datetime.timedelta(d)).isoformat() for d in range(passes)]
    write_day(data, work / "logs" / f"dt={days[0]}" / "part-0.jsonl")
    for day in days[1:]:
        (work / "logs" / f"dt={day}").mkdir()
        shutil.copyfile(work / "logs" / f"dt={days[0]}" / "part-0.jsonl",
                        work / "logs" / f"dt={day}" / "part-0.jsonl")
    features = [{"name": f"cat_{c:02d}", "type": "categorical",
                 "hash_buckets": hash_factor * int(k), "embedding_dim": EMBEDDING_DIM}
                for c, k in enumerate(data["cards"])]
    features += [{"name": f"num_{j:02d}", "type": "numeric"} for j in range(NUMERIC)]
    config = {
        "data": {"logs": "logs/dt={date}", "format": "jsonl", "tfrecords": "tfrecords",
                 "rejected": "rejected", "num_shards": 4, "features": features,
                 "tasks": [{"name": t, "type": "binary"} for t in TASKS]},
        "model": {"name": "census", "backbone": "mmoe",
                  "mmoe": {"num_experts": 8, "expert_units": [64]}, "batch_norm": True,
                  "tower_units": [32]},
        "train": {"batch_size": BATCH, "optimizer": "adam", "learning_rate": 0.001,
                  "shuffle_buffer": 20_000, "seed": 0, "model_dir": "model",
                  "export_dir": "export"},
    }
    config_path = work / "config.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    cli = [sys.executable, "-m", "commands.cli"]
    for day in days:
        runner.run(f"multitower preprocess {day}",
                   cli + ["preprocess", "--config", str(config_path), "--date", day])
    output = runner.run("multitower train", cli + [
        "train", "--config", str(config_path), "--dates", f"{days[0]}:{days[-1]}",
        "--workers", "1"])
    found = re.findall(r"trained day \S+: (\d+) steps in ([0-9.]+) s \((\d+) ex/s after the "
                       r"first (?:step|call)", output)
    if len(found) != passes:
        sys.exit(f"expected {passes} 'trained day' lines from multitower train:\n{output[-3000:]}")
    predicted = _result(runner.run("multitower predict", [
        sys.executable, str(WORKERS), "multitower", "--data", str(work / "arrays.npz"),
        "--passes", str(passes), "--export", str(work / "export" / "census"),
        "--out", str(work / "multitower.npy")], env={"TF_USE_LEGACY_KERAS": "1"}))
    return {"train": [float(rate) for _, _, rate in found], **predicted}


# --- the peers ----------------------------------------------------------------------------------

def _venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def make_venv(runner: Runner, peer: str, venv_dir: Path) -> Path:
    """The peer's throwaway venv (made once, then reused); returns its python."""
    venv = venv_dir / peer
    if venv.resolve() == Path(sys.prefix).resolve() or Path(sys.prefix).resolve() in \
            venv.resolve().parents:
        sys.exit(f"{venv} is the project's venv or inside it; pick another --venv-dir")
    project_site = next(p for p in sys.path if p.endswith("site-packages")
                        and Path(p).resolve().is_relative_to(Path(sys.prefix).resolve()))
    wanted = PEERS[peer] + ([project_site] if peer == "deepctr" else [])
    ready = venv / "peers-ready.json"
    if ready.exists() and json.loads(ready.read_text()) == wanted:
        return _venv_python(venv)
    shutil.rmtree(venv, ignore_errors=True)
    started = time.perf_counter()
    runner.run(f"venv {peer}", [sys.executable, "-m", "venv", str(venv)])
    python = str(_venv_python(venv))
    pip = [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    if peer == "deepctr":
        # Same TensorFlow and tf-keras as multitower: the project's site-packages after the
        # venv's own (a .pth line is appended to sys.path), deepctr alone installed here.
        site = next((venv / "lib").glob("python*/site-packages"))
        (site / "multitower_project.pth").write_text(project_site + "\n")
        runner.run("install deepctr", pip + ["--no-deps", *PEERS[peer]])
    else:  # torch first, from its CPU wheel on this disk, so nothing pulls a CUDA build
        runner.run("install torch", pip + [PEERS[peer][0]])
        runner.run("install torch-rechub", pip + PEERS[peer])
    runner.run(f"check {peer}", [python, str(WORKERS), peer, "--check"],
               env={"TF_USE_LEGACY_KERAS": "1"})
    ready.write_text(json.dumps(wanted))
    print(f"installed {peer} in {venv} in {time.perf_counter() - started:.0f} s")
    return _venv_python(venv)


def peer(runner: Runner, name: str, python: Path, work: Path, passes: int, spe: int) -> dict:
    """Trains and scores one peer in its venv (see peers_workers.py)."""
    return _result(runner.run(f"{name}", [
        str(python), str(WORKERS), name, "--data", str(work / "arrays.npz"), "--passes",
        str(passes), "--steps-per-execution", str(spe), "--out", str(work / f"{name}.npy")],
        env={"TF_USE_LEGACY_KERAS": "1", "PYTHONNOUSERSITE": "1"}))


# --- the report --------------------------------------------------------------------------------

def _rates(values: list[float]) -> str:
    return f"{statistics.median(values):8.0f} ({min(values):.0f}-{max(values):.0f})"


def report(results: dict[str, dict], truth: np.ndarray, y_test: np.ndarray, loads: list[Load],
           rows: int, passes: int, spe: int) -> None:
    """Prints the table of speeds and AUCs, the ratios, and how busy the machine was."""
    width = 20
    print(f"\n{'':{width}} {'train ex/s median (min-max)':>30} {'predict ex/s':>13}  "
          + "  ".join(f"{'AUC ' + t:>12}" for t in TASKS))
    for name, result in results.items():
        scores = result["scores"]
        aucs = "  ".join(f"{auc(y_test[:, t], scores[:, t]):12.4f}" for t in range(len(TASKS)))
        print(f"{name:{width}} {_rates(result['train']):>30} "
              f"{statistics.median(result['predict']):13.0f}  {aucs}")
    aucs = "  ".join(f"{auc(y_test[:, t], truth[:, t]):12.4f}" for t in range(len(TASKS)))
    print(f"{'the known model':{width}} {'':>30} {'':>13}  {aucs}")
    if "multitower" in results and "deepctr" in results:
        mt, dc = results["multitower"], results["deepctr"]
        print(f"\nmultitower / DeepCTR: train "
              f"{statistics.median(mt['train']) / statistics.median(dc['train']):.2f}x, predict "
              f"{statistics.median(mt['predict']) / statistics.median(dc['predict']):.2f}x "
              f"({passes} passes of {rows} rows, batch {BATCH}, "
              f"steps_per_execution {spe}; train ex/s counts each pass after its first call)")
    for name, result in results.items():
        print(f"  {name}: train ex/s per pass {' '.join(f'{r:.0f}' for r in result['train'])}; "
              f"{result.get('notes', '')}")
    print(f"\n{'while measuring':<32} {'wall s':>7} {'machine busy':>13} {'this run':>9} "
          f"{'others':>7}  load average before -> after")
    for load in loads:
        print(f"{load.label:<32} {load.wall:7.1f} {load.busy:13.0%} {load.own:9.0%} "
              f"{load.others:7.0%}  {load.load[0]} -> {load.load[1]}")
    print(f"(shares of all {os.cpu_count()} cores; 'this run' counts finished subprocesses)")


def main() -> None:
    """Generates the data, runs multitower and each peer, prints the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=70_000, help="training rows (test: 3/7)")
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--peers", nargs="+", default=["deepctr"], choices=list(PEERS))
    parser.add_argument("--hash-factor", type=int, default=32,
                        help="multitower's hash_buckets per distinct value of a column")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument("--venv-dir", type=Path,
                        default=Path(tempfile.gettempdir()) / "multitower-peers-venvs",
                        help="where the throwaway venvs are made and reused")
    args = parser.parse_args()
    from multitower.config.train import TrainConfig

    spe = TrainConfig.model_fields["steps_per_execution"].default
    if args.rows // BATCH <= spe:
        parser.error(f"--rows {args.rows} gives {args.rows // BATCH} steps per pass: no steady "
                     f"figure after the first call of {spe} steps; give >= {(spe + 1) * BATCH}")
    started = time.perf_counter()
    runner = Runner()
    pythons = {name: make_venv(runner, name, args.venv_dir) for name in args.peers}
    installed = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="multitower-peers-"))
    try:
        data = generate(args.rows)
        save_arrays(data, work / "arrays.npz")
        results = {"multitower": multitower(runner, data, work, args.passes, args.hash_factor)}
        for name, python in pythons.items():
            results[name] = peer(runner, name, python, work, args.passes, spe)
        for name, result in results.items():
            result["scores"] = np.load(work / f"{name}.npy")
        report(results, data["p"][data["test"]], data["y"][data["test"]], runner.loads,
               args.rows, args.passes, spe)
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    print(f"installs {installed - started:.0f} s, run {time.perf_counter() - installed:.0f} s")


if __name__ == "__main__":
    main()
