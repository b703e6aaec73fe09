"""Prints training step time against embedding table size, two workers under MWMS on localhost.

    python benchmarks/embedding_step_time.py [--sizes 1e4 1e5 1e6 1e7] [--steps 20]
        [--rounds 3] [--variants plain partitioned model_parallel_a2a model_parallel_allreduce]
        [--optimizer adagrad] [--num-shards P] [--workers 2]

A tiny model (one categorical feature hashed into the table, dim 16, then Dense(32)-Dense(1),
global batch 512) trains under MultiWorkerMirroredStrategy with two worker processes started by
`run_local_workers`, one cluster per variant, which trains a fresh model per size (ascending):

- `plain`: `HashedEmbedding` (one variable, `tf.gather`) and tf-keras Adam on every variable, the
  trainer's path before tables were partitioned;
- `partitioned`: `PartitionedEmbedding` (P from the minimum-shard-size rule unless --num-shards)
  with the row-sparse embedding optimizer, dense variables on tf-keras Adam, both in one
  `MultiTaskOptimizer`: the trainer's path (`MultiTaskModel.train_step`) for a replicated table;
- `model_parallel_a2a`, `model_parallel_allreduce`: `PartitionedEmbedding(placement=
  "model_parallel")` with the `all_to_all` or the `all_reduce` exchange: worker w of N holds
  rows w::N (and their optimizer slots) only, lookups fetch rows from their owners, and each
  owner applies its rows' gradients itself; the same `MultiTaskOptimizer` otherwise.

Figures, all printed, never asserted:

- step time: the chief's step time (ms) from `model.fit`'s batch callbacks: after --warmup
  steps, the median of each round of --steps steps, and the lowest of --rounds rounds (the
  machine is shared: a round disturbed by other work is left out), with the chief's peak
  memory; then the largest / smallest size ratio per variant;
- bytes exchanged per step for the table, per worker: the size of what each of the table's
  collectives returns to one worker (an all-gather: N times the piece each worker sends; an
  all-reduce or all-to-all: its buffer), computed from the shapes the code exchanges with
  n = ids per worker per step (the global batch / N), not measured; the dense layers' own
  gradient all-reduce (577 float32, the same in every variant) is left out;
- peak resident memory (VmHWM) of every worker while it built and trained that size
  (w0 is the chief), and what model-parallel saves against `partitioned` per worker;
- the issue's goal figure: a model-parallel step at the largest size (1e7 by default) over the
  replicated (`partitioned`) step at the smallest (1e4), goal <= 1.3.

A size is skipped, with the reason, when its estimated memory (`FOOTPRINT`) does not fit in
the memory available at the start. `benchmarks/embedding_budget.py` runs the same workers
under a per-worker memory budget that the replicated table exceeds and the model-parallel
one does not.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from pathlib import Path

REPO = str(Path(__file__).resolve().parent.parent)
DIM, HIDDEN, BATCH = 16, 32, 512
MODEL_PARALLEL = {"model_parallel_a2a": "all_to_all", "model_parallel_allreduce": "all_reduce"}
VARIANTS = ("plain", "partitioned", *MODEL_PARALLEL)
# Table-sized buffers per worker at the peak of building and training (measured peaks sit
# below), optimizer slots added by `_need_bytes`: plain: the table, Adam's m and v, about four
# temporaries of Adam's dense update and the initial value; partitioned: the table and one
# shard's initial value; model-parallel, in units of the worker's 1/N of the table (its slots
# are 1/N too): its rows, their initial value and about half as much again of temporaries
# (measured with Adagrad at 1e7 rows: 3.2 times its rows, where 2 + 1 slot would say 3).
FOOTPRINT = {"plain": 8.0, "partitioned": 2.0, "model_parallel_a2a": 2.5,
             "model_parallel_allreduce": 2.5}
SLOTS = {"adagrad": 1, "ftrl": 2, "lazy_adam": 2, "sgd": 0}
OVER_BUDGET = 75  # a worker's exit code when its peak resident memory passed --budget-mb


def _available_bytes() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def _peak_rss_mb(reset: bool = False) -> float:
    """This process's peak resident memory (VmHWM), in MB.

    Args:
        reset: Restart the peak from the current size first (Linux: writing 5 to
            /proc/self/clear_refs).
    """
    if reset:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            pass
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _write(path: str, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def _watch_budget(budget_mb: float, state: dict, path: str) -> None:
    """Ends this worker (exit code OVER_BUDGET) as soon as its peak RSS passes `budget_mb`.

    VmHWM only grows between resets, so polling it misses no peak; `state` says what the
    worker was doing (its variant, size, phase and steps done), written to `path` first.
    """

    def watch() -> None:
        while True:
            peak = _peak_rss_mb()
            if peak > budget_mb:
                _write(path, {**state, "over_budget": True, "peak_rss_mb": peak,
                              "budget_mb": budget_mb})
                os._exit(OVER_BUDGET)
            time.sleep(0.02)

    threading.Thread(target=watch, daemon=True).start()


def _worker(args: argparse.Namespace) -> None:
    """One worker of one cluster: for each size, train `steps + warmup` steps.

    Every worker appends one JSON line per size to `args.out.<worker>` as soon as it has it.
    """
    import multitower  # noqa: F401, I001  (TF_USE_LEGACY_KERAS before TensorFlow)
    import gc

    import numpy as np
    import tensorflow as tf
    import tf_keras as keras

    from trainer.embeddings import PartitionedEmbedding, make_row_sparse_optimizer
    from trainer.features import HashedEmbedding
    from trainer.optimizer import MultiTaskOptimizer
    from multitower.cluster import task_info
    from trainer.strategy import make_strategy

    strategy = make_strategy()
    replicas = strategy.num_replicas_in_sync
    worker = task_info().task_id
    out = f"{args.out}.{worker}"

    class Tiny(keras.Model):
        """The benchmark's model, trained on one binary cross-entropy loss."""

        def train_step(self, data: tuple[tf.Tensor, tf.Tensor]) -> dict[str, tf.Tensor]:
            x, y = data
            # The replica's batch size, known, as the trainer's step makes it
            # (`TrainingModel._fixed_batch`): the lookup then exchanges fixed shapes.
            x = tf.ensure_shape(x, [BATCH // replicas])
            self.ids_shape = x.shape.as_list()  # at trace time: the shape the lookup sees
            with tf.GradientTape() as tape:
                p = self(x, training=True)[:, 0]
                loss = tf.reduce_mean(keras.losses.binary_crossentropy(y[:, None], p[:, None]))
                scaled = loss / replicas  # Keras sums gradients over replicas
            variables = self.trainable_variables
            grads = tape.gradient(scaled, variables)
            self.optimizer.apply_gradients(zip(grads, variables, strict=True))
            return {"loss": loss}

    class Clock(keras.callbacks.Callback):
        """Records the start of the first step, the end of every step and the losses."""

        def __init__(self, state: dict) -> None:
            super().__init__()
            self.ends: list[float] = []
            self.losses: list[float] = []
            self.state = state

        def on_train_batch_begin(self, batch: int, logs: dict | None = None) -> None:
            if not self.ends:
                self.ends.append(time.perf_counter())
                self.state["phase"] = "training"

        def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
            self.ends.append(time.perf_counter())
            self.losses.append(float((logs or {}).get("loss", float("nan"))))
            self.state["steps"] = len(self.losses)

    total = args.warmup + args.rounds * args.steps
    rng = np.random.default_rng(0)
    values = rng.integers(0, 1 << 40, size=total * BATCH, dtype=np.int64)
    labels = rng.integers(0, 2, size=total * BATCH).astype(np.float32)
    def dataset_fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
        # Each worker reads its share of every global batch in fixed-size batches, as the
        # trainer's input does: a model-parallel lookup then exchanges fixed shapes.
        per = context.get_per_replica_batch_size(BATCH)
        return (tf.data.Dataset.from_tensor_slices((values, labels))
                .shard(context.num_input_pipelines, context.input_pipeline_id)
                .batch(per, drop_remainder=True))

    state = {"variant": args.variant, "worker": worker}
    for rows in args.rows:
        state.update(rows=rows, phase="building", steps=0)
        _peak_rss_mb(reset=True)
        if args.budget_mb and rows == args.rows[0]:
            _watch_budget(args.budget_mb, state, out)
        with strategy.scope():
            raw = keras.Input(shape=(), dtype=tf.int64, name="item")
            if args.variant == "plain":
                embedding = HashedEmbedding(rows, DIM, name="table")
            elif args.variant == "partitioned":
                embedding = PartitionedEmbedding(rows, DIM, num_shards=args.num_shards,
                                                 name="table")
            else:
                embedding = PartitionedEmbedding(rows, DIM, placement="model_parallel",
                                                 exchange=MODEL_PARALLEL[args.variant],
                                                 name="table")
            hidden = keras.layers.Dense(HIDDEN, activation="relu")(embedding(raw))
            model = Tiny(raw, keras.layers.Dense(1, activation="sigmoid")(hidden))
            dense = keras.optimizers.Adam(1e-3)
            model.compile(optimizer=dense if args.variant == "plain" else MultiTaskOptimizer(
                dense, make_row_sparse_optimizer(args.optimizer, 0.05)))
        clock = Clock(state)
        model.fit(keras.utils.experimental.DatasetCreator(dataset_fn), epochs=1,
                  steps_per_epoch=total, verbose=0, callbacks=[clock])
        rounds = (np.diff(clock.ends)[args.warmup:] * 1000).reshape(args.rounds, args.steps)
        medians = np.median(rounds, axis=1)
        # Rows this worker holds, from the variables' shapes (a mirrored shard: all of them).
        held = {"table": rows}
        if args.variant != "plain":
            tables = model.optimizer.tables
            held = {"table": sum(int(s.shape[0]) for s in embedding.shards)} | {
                slot: sum(int(tables.slot(s, slot).shape[0]) for s in embedding.shards)
                for slot in tables.slot_names}
        _write(out, {"variant": args.variant, "rows": rows, "worker": worker,
                     "ms": float(medians.min()), "round_ms": medians.tolist(),
                     "shards": getattr(embedding, "num_shards", 1), "held": held,
                     "ids_shape": model.ids_shape, "steps": len(clock.losses),
                     "loss": [clock.losses[0], clock.losses[-1]],
                     "peak_rss_mb": _peak_rss_mb()})
        if args.save_dir and args.variant in MODEL_PARALLEL:  # for embedding_budget.py
            from embedding_budget import save_trained  # this script's own folder

            save_trained(args.save_dir, strategy, model, embedding, worker)
        del model, embedding, raw, hidden, clock
        keras.backend.clear_session()
        gc.collect()


def _need_bytes(variant: str, rows: int, args: argparse.Namespace) -> float:
    """Estimated memory of every worker of the cluster at its peak for a `rows`-row table."""
    table = rows * DIM * 4
    per_worker = table * (FOOTPRINT[variant] + (SLOTS[args.optimizer] if variant != "plain"
                                                else 0))
    if variant in MODEL_PARALLEL:  # 1/N of the rows and of their slots on each worker
        per_worker /= args.workers
    return per_worker * args.workers


def _run(variant: str, sizes: list[int], args: argparse.Namespace, folder: str,
         budget_mb: float | None = None, save_dir: str | None = None) -> dict:
    """One cluster for one variant: {rows: result, or why there is none}.

    A result is the chief's record (`ms`, ...) with `peaks` (every worker's peak RSS, MB) and
    `held` (every worker's rows of the table and of each slot). With `budget_mb`, a size whose
    run passed it on some worker is `{"over_budget": [that worker's record, ...], ...}`.
    """
    from trainer.launch import run_local_workers

    available = _available_bytes()
    results: dict[int, dict] = {}
    for rows in sizes:
        need = _need_bytes(variant, rows, args)
        if need > 0.8 * available:
            results[rows] = {"skipped": f"needs ~{need / 2**30:.1f} GiB for {args.workers} "
                                        f"workers, {available / 2**30:.1f} GiB available"}
    run = [r for r in sizes if r not in results]
    if not run:
        return results
    out = os.path.join(folder, f"{variant}.jsonl")
    argv = [__file__, "--worker", "--variant", variant, "--out", out, "--steps", str(args.steps),
            "--warmup", str(args.warmup), "--rounds", str(args.rounds),
            "--optimizer", args.optimizer, "--rows",
            *map(str, run)]
    if args.num_shards:
        argv += ["--num-shards", str(args.num_shards)]
    if budget_mb:
        argv += ["--budget-mb", str(budget_mb)]
    if save_dir:
        argv += ["--save-dir", save_dir]
    status = run_local_workers(argv, args.workers, extra_env={"PYTHONPATH": REPO})
    records: dict[int, list[dict]] = {}
    for worker in range(args.workers):
        path = Path(f"{out}.{worker}")
        for line in path.read_text().splitlines() if path.exists() else []:
            record = json.loads(line)
            records.setdefault(record["rows"], []).append(record)
    for rows, found in records.items():
        over = [r for r in found if r.get("over_budget")]
        done = sorted((r for r in found if not r.get("over_budget")), key=lambda r: r["worker"])
        if over:
            results[rows] = {"over_budget": over, "status": status}
        elif [r["worker"] for r in done] == list(range(args.workers)):
            results[rows] = {**done[0], "peaks": [r["peak_rss_mb"] for r in done],
                             "held": [r["held"] for r in done]}
    for rows in run:
        results.setdefault(rows, {"skipped": f"the cluster failed with exit code {status}"})
    return results


def exchange_bytes(variant: str, workers: int, static_ids: bool) -> tuple[int, str]:
    """Bytes the table's collectives return to one worker per step, and how they add up.

    Args:
        variant: One of `VARIANTS`.
        workers: N.
        static_ids: Whether the lookup saw a static batch size (else the all-to-all first
            all-gathers the id counts to size its buckets, and the all-reduce exchange
            all-gathers the ids instead of all-reducing them).

    Every `ReplicaContext.all_gather` of MWMS is two collectives: the shapes (N x rank int32),
    then the data padded to the largest piece.
    """
    big, n, d = workers, BATCH // workers, DIM

    def gather(elements: int, itemsize: int, rank: int = 1) -> int:
        return big * rank * 4 + big * elements * itemsize

    if variant == "plain":  # MWMS's all-reduce of a tf.IndexedSlices
        parts = {"lengths N*4": big * 4, "values N*n*d*4": big * n * d * 4,
                 "ids N*n*8": big * n * 8}
        how = "IndexedSlices all-reduce (all-gathers)"
    elif variant == "partitioned":  # trainer.embeddings.exchange: one packed all-gather
        parts = {"packed N*(4+n*d*4+n*8)": big * (4 + n * d * 4 + n * 8),
                 "its shape N*4": big * 4}
        how = "one packed all-gather of the gradient"
    elif variant == "model_parallel_a2a":  # buckets padded with -1: no count exchange
        parts = {"ids N*n*8": big * n * 8, "rows N*n*d*4": big * n * d * 4,
                 "backward rows N*n*d*4": big * n * d * 4}
        if not static_ids:
            parts["id count all-gather"] = gather(1, 4)
        how = "all-to-all ids and rows, rows back"
    elif static_ids:  # ids in one all-reduce (each worker fills its own slot)
        parts = {"ids all-reduce N*n*8": big * n * 8, "all-reduce N*n*d*4": big * n * d * 4,
                 "backward all-reduce N*n*d*4": big * n * d * 4}
        how = "all-reduce ids, all-reduce rows, all-reduce back"
    else:
        parts = {"id counts all-gather": gather(1, 4), "ids all-gather N*n*8": gather(n, 8),
                 "all-reduce N*n*d*4": big * n * d * 4,
                 "backward all-reduce N*n*d*4": big * n * d * 4}
        how = "all-gather ids, all-reduce rows, all-reduce back"
    total = sum(parts.values())
    return total, f"{how}: " + " + ".join(f"{k} {v:,}" for k, v in parts.items())


def _size(rows: int) -> str:
    return f"{rows:.0e}".replace("e+0", "e").replace("e+", "e")


def _cell(result: dict) -> str:
    if "over_budget" in result:
        worst = max(result["over_budget"], key=lambda r: r["peak_rss_mb"])
        return f"over budget: worker {worst['worker']} {worst['peak_rss_mb']:.0f} MB"
    if "skipped" in result:
        return f"skipped: {result['skipped']}"
    shards = f" P={result['shards']}" if result["variant"] == "partitioned" else ""
    return f"{result['ms']:8.1f} ms{shards} ({result['peak_rss_mb']:.0f} MB)"


def _ratio(high: dict, low: dict) -> str:
    return f"{high['ms'] / low['ms']:.2f}x" if "ms" in low and "ms" in high else "n/a"


def names(optimizer: str) -> dict[str, str]:
    """A readable name of each variant."""
    return {"plain": "plain variable + tf-keras Adam",
            "partitioned": f"PartitionedEmbedding + {optimizer}",
            "model_parallel_a2a": f"model_parallel all_to_all + {optimizer}",
            "model_parallel_allreduce": f"model_parallel all_reduce + {optimizer}"}


def _report(results: dict[str, dict], sizes: list[int], args: argparse.Namespace) -> None:
    """Prints the step times, bytes exchanged, per-worker peaks and the goal figure."""
    label = names(args.optimizer)
    print(f"{'rows':>10}  " + "  ".join(f"{label[v]:<38}" for v in args.variants))
    for rows in sizes:
        print(f"{_size(rows):>10}  " + "  ".join(f"{_cell(results[v][rows]):<38}"
                                                 for v in args.variants))
    if len(sizes) > 1:
        ratios = [_ratio(results[v][sizes[-1]], results[v][sizes[0]]) for v in args.variants]
        span = f"{_size(sizes[-1])}/{_size(sizes[0])}"
        print(f"{span:>10}  " + "  ".join(f"{r:<38}" for r in ratios))
    n = BATCH // args.workers
    print(f"\ntable bytes exchanged per step, per worker (from the shapes: N={args.workers}, "
          f"n={n} ids per worker per step, d={DIM}; int64 ids, float32 rows):")
    for variant in args.variants:
        done = [r for r in results[variant].values() if "ids_shape" in r]
        static = bool(done) and done[0]["ids_shape"][0] is not None
        total, how = exchange_bytes(variant, args.workers, static)
        print(f"  {variant:<25} {total:>8,} B  {how}")
    print("\npeak resident memory per worker (VmHWM while building and training, MB, "
          "w0 = chief):")
    print(f"{'rows':>10}  " + "  ".join(f"{v:<25}" for v in args.variants))
    for rows in sizes:
        cells = []
        for v in args.variants:
            r = results[v][rows]
            peaks = r.get("peaks") or [o["peak_rss_mb"] for o in r.get("over_budget", [])]
            cells.append(" / ".join(f"{p:.0f}" for p in peaks) if peaks else "-")
        print(f"{_size(rows):>10}  " + "  ".join(f"{c:<25}" for c in cells))
    top = sizes[-1]
    replicated = results.get("partitioned", {}).get(top, {})
    for variant in MODEL_PARALLEL:
        mine = results.get(variant, {}).get(top, {})
        if "peaks" in replicated and "peaks" in mine:
            saved = [a - b for a, b in zip(replicated["peaks"], mine["peaks"], strict=True)]
            held = mine["held"][0]
            slots = ", ".join(f"{k} {v:,}" for k, v in held.items() if k != "table") or "none"
            print(f"  {variant} at {_size(top)}: w0 holds {held['table']:,} of {top:,} rows "
                  f"(slots: {slots}); saves " + " / ".join(f"{s:.0f}" for s in saved)
                  + " MB per worker against partitioned")
    low = results.get("partitioned", {}).get(sizes[0], {})
    goals = [f"{v.removeprefix('model_parallel_')} "
             f"{_ratio(results[v][top], low) if v in results else 'n/a (not run)'}"
             for v in MODEL_PARALLEL]
    print(f"\ngoal: model_parallel step at {_size(top)} / replicated (partitioned) step at "
          f"{_size(sizes[0])} (goal <= 1.3): " + ", ".join(goals)
          + ("" if "partitioned" in results else " (partitioned not run)"))


def main() -> None:
    """Runs one cluster per variant and prints the figures (or, with --worker, one worker)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=float, nargs="+", default=[1e4, 1e5, 1e6, 1e7])
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--optimizer", default="adagrad", choices=sorted(SLOTS),
                        help="embedding optimizer of every variant but plain")
    parser.add_argument("--num-shards", type=int, default=None,
                        help="P of the partitioned variant (default: minimum-shard-size rule)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    # worker mode (started by the benchmark itself)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--rows", type=int, nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--budget-mb", type=float, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--save-dir", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _worker(args)
        return
    sizes = sorted({int(s) for s in args.sizes})
    started = time.perf_counter()
    print(f"embedding step time: {args.workers} workers (MWMS, localhost), global batch {BATCH}, "
          f"dim {DIM}; ms per step: best of {args.rounds} rounds' medians of {args.steps} steps "
          f"(after {args.warmup}); chief's peak RSS",
          flush=True)
    results = {}
    with tempfile.TemporaryDirectory(prefix="multitower-embedding-bench-") as folder:
        for variant in args.variants:
            print(f"running {names(args.optimizer)[variant]} ...", flush=True)
            results[variant] = _run(variant, sizes, args, folder)
    _report(results, sizes, args)
    print(f"({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
