"""Prints training step time against embedding table size, two workers under MWMS on localhost.

    python benchmarks/embedding_step_time.py [--sizes 1e4 1e5 1e6 1e7] [--steps 20]
        [--rounds 3] [--variants plain partitioned] [--optimizer adagrad] [--num-shards P]

A tiny model (one categorical feature hashed into the table, dim 16, then Dense(32)-Dense(1),
global batch 512) trains under MultiWorkerMirroredStrategy with two worker processes started by
`run_local_workers`, one cluster per variant, which trains a fresh model per size (ascending):

- `plain`: `HashedEmbedding` (one variable, `tf.gather`) and tf-keras Adam on every variable, the
  trainer's path before tables were partitioned;
- `partitioned`: `PartitionedEmbedding` (P from the minimum-shard-size rule unless --num-shards)
  with the row-sparse embedding optimizer, dense variables on tf-keras Adam, both in one
  `MultiTaskOptimizer`: the trainer's path (`MultiTaskModel.train_step`).

The figure is the chief's step time (ms) from `model.fit`'s batch callbacks: after --warmup
steps, the median of each round of --steps steps, and the lowest of --rounds rounds (the machine
is shared: a round disturbed by other work is left out); with the chief's peak memory while it
built and trained that model. Then the largest / smallest size ratio per variant. A size is
skipped, with the reason, when its estimated memory does not fit in the memory available at
the start. Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

REPO = str(Path(__file__).resolve().parent.parent)
DIM, HIDDEN, BATCH = 16, 32, 512
# Table-sized buffers per worker at the peak of building and training (measured peaks sit
# below): plain: the table, Adam's m and v, about four temporaries of Adam's dense update and
# the initial value; partitioned: the table, its slots, and one shard's initial value.
FOOTPRINT = {"plain": 8.0, "partitioned": 2.0}
SLOTS = {"adagrad": 1, "ftrl": 2, "lazy_adam": 2, "sgd": 0}


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


def _worker(args: argparse.Namespace) -> None:
    """One worker of one cluster: for each size, train `steps + warmup` steps.

    The chief appends one JSON line per size to `args.out` as soon as it has it.
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

    class Tiny(keras.Model):
        """The benchmark's model, trained on one binary cross-entropy loss."""

        def train_step(self, data: tuple[tf.Tensor, tf.Tensor]) -> dict[str, tf.Tensor]:
            x, y = data
            with tf.GradientTape() as tape:
                p = self(x, training=True)[:, 0]
                loss = tf.reduce_mean(keras.losses.binary_crossentropy(y[:, None], p[:, None]))
                scaled = loss / replicas  # Keras sums gradients over replicas
            variables = self.trainable_variables
            grads = tape.gradient(scaled, variables)
            self.optimizer.apply_gradients(zip(grads, variables, strict=True))
            return {"loss": loss}

    class Clock(keras.callbacks.Callback):
        """Records the start of the first step and the end of every step."""

        def __init__(self) -> None:
            super().__init__()
            self.ends: list[float] = []

        def on_train_batch_begin(self, batch: int, logs: dict | None = None) -> None:
            if not self.ends:
                self.ends.append(time.perf_counter())

        def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
            self.ends.append(time.perf_counter())

    total = args.warmup + args.rounds * args.steps
    rng = np.random.default_rng(0)
    values = rng.integers(0, 1 << 40, size=total * BATCH, dtype=np.int64)
    labels = rng.integers(0, 2, size=total * BATCH).astype(np.float32)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    dataset = (tf.data.Dataset.from_tensor_slices((values, labels)).batch(BATCH)
               .with_options(options))
    for rows in args.rows:
        _peak_rss_mb(reset=True)
        with strategy.scope():
            raw = keras.Input(shape=(), dtype=tf.int64, name="item")
            if args.variant == "plain":
                embedding = HashedEmbedding(rows, DIM, name="table")
            else:
                embedding = PartitionedEmbedding(rows, DIM, num_shards=args.num_shards,
                                                 name="table")
            hidden = keras.layers.Dense(HIDDEN, activation="relu")(embedding(raw))
            model = Tiny(raw, keras.layers.Dense(1, activation="sigmoid")(hidden))
            dense = keras.optimizers.Adam(1e-3)
            model.compile(optimizer=dense if args.variant == "plain" else MultiTaskOptimizer(
                dense, make_row_sparse_optimizer(args.optimizer, 0.05)))
        clock = Clock()
        model.fit(dataset, epochs=1, steps_per_epoch=total, verbose=0, callbacks=[clock])
        rounds = (np.diff(clock.ends)[args.warmup:] * 1000).reshape(args.rounds, args.steps)
        medians = np.median(rounds, axis=1)
        if task_info().is_chief:
            result = {"variant": args.variant, "rows": rows, "ms": float(medians.min()),
                      "round_ms": medians.tolist(), "shards": getattr(embedding, "num_shards", 1),
                      "peak_rss_mb": _peak_rss_mb()}
            with open(args.out, "a") as f:
                f.write(json.dumps(result) + "\n")
        del model, embedding, raw, hidden, clock
        keras.backend.clear_session()
        gc.collect()


def _need_bytes(variant: str, rows: int, args: argparse.Namespace) -> float:
    table = rows * DIM * 4
    extra = SLOTS[args.optimizer] if variant == "partitioned" else 0
    return table * (FOOTPRINT[variant] + extra) * args.workers


def _run(variant: str, sizes: list[int], args: argparse.Namespace, folder: str) -> dict:
    """One two-worker cluster for one variant: {rows: result, or why there is none}."""
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
    status = run_local_workers(argv, args.workers, extra_env={"PYTHONPATH": REPO})
    if os.path.exists(out):
        for line in Path(out).read_text().splitlines():
            result = json.loads(line)
            results[result["rows"]] = result
    for rows in run:
        results.setdefault(rows, {"skipped": f"the cluster failed with exit code {status}"})
    return results


def _size(rows: int) -> str:
    return f"{rows:.0e}".replace("e+0", "e").replace("e+", "e")


def _cell(result: dict) -> str:
    if "skipped" in result:
        return f"skipped: {result['skipped']}"
    shards = f" P={result['shards']}" if result["variant"] == "partitioned" else ""
    return f"{result['ms']:8.1f} ms{shards} ({result['peak_rss_mb']:.0f} MB)"


def main() -> None:
    """Runs one cluster per variant and prints the step times (or, with --worker, one worker)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=float, nargs="+", default=[1e4, 1e5, 1e6, 1e7])
    parser.add_argument("--variants", nargs="+", choices=["plain", "partitioned"],
                        default=["plain", "partitioned"])
    parser.add_argument("--optimizer", default="adagrad", choices=sorted(SLOTS),
                        help="embedding optimizer of the partitioned variant")
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
    names = {"plain": "plain variable + tf-keras Adam",
             "partitioned": f"PartitionedEmbedding + {args.optimizer}"}
    results = {}
    with tempfile.TemporaryDirectory(prefix="multitower-embedding-bench-") as folder:
        for variant in args.variants:
            print(f"running {names[variant]} ...", flush=True)
            results[variant] = _run(variant, sizes, args, folder)
    print(f"{'rows':>10}  " + "  ".join(f"{names[v]:<36}" for v in args.variants))
    for rows in sizes:
        print(f"{_size(rows):>10}  " + "  ".join(f"{_cell(results[v][rows]):<36}"
                                                 for v in args.variants))
    if len(sizes) > 1:
        ratios = []
        for variant in args.variants:
            low, high = results[variant][sizes[0]], results[variant][sizes[-1]]
            ratios.append(f"{high['ms'] / low['ms']:.2f}x" if "ms" in low and "ms" in high
                          else "n/a")
        label = f"{_size(sizes[-1])}/{_size(sizes[0])}"
        print(f"{label:>10}  " + "  ".join(f"{r:<36}" for r in ratios))
    print(f"({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
