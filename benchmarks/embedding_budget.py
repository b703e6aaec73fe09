"""Shows a table too big for one worker's memory budget training model-parallel on 2 workers.

    python benchmarks/embedding_budget.py [--rows 1e7] [--steps 20] [--optimizer adagrad]
        [--exchange all_to_all] [--budget-mb MB] [--workers 2]

The model, data and workers are `embedding_step_time.py`'s (one hashed feature, dim 16, global
batch 512, MultiWorkerMirroredStrategy on localhost). One table size, two placements:
`partitioned` (replicated: every worker holds the whole table and its optimizer slots) and
`model_parallel` (worker w of N holds rows w::N and their slots).

1. Measure: each placement trains --warmup + --steps steps with no budget; every worker's peak
   resident memory (VmHWM, reset after TensorFlow and the strategy start) is its figure.
2. Budget: halfway between the highest model-parallel peak and the lowest replicated one (or
   --budget-mb). It is judged on resident memory, not set as a virtual-memory rlimit:
   TensorFlow reserves far more address space than it touches, which trips such a limit for
   both placements alike.
3. Enforce: both placements run again with a watchdog thread in every worker that ends the
   worker (exit code 75) as soon as its VmHWM passes the budget. The replicated run is
   stopped (which worker, at what peak, while building or after how many steps); the
   model-parallel one trains every step under it. Printed: its peaks, the loss, the rows of
   the table and of each slot every worker holds (from the variables' shapes) and the memory
   saved per worker.

4. Export with no cluster: after the model-parallel run, every worker has saved its part of
   the table (`trainer.embeddings.per_worker`) and the chief the dense weights and the scores
   the distributed model gave a probe batch. A fresh process with no strategy and no budget
   (the export needs the whole table's rows, as a serving machine does) stitches the table
   from the parts into the same network, saves it as a SavedModel; another fresh process loads
   it and scores the probe batch: printed, the largest difference from the distributed
   model's scores and the exporting process's peak memory. (The trainer's own export path,
   `multitower export` or the chief at the end of a day, does the same stitching; its tests
   cover it.)

Figures are printed, never asserted. The defaults (1e7 rows: a 640 MB table and, with Adagrad,
a 640 MB slot) run in about two minutes on 2 cores and need about 4.5 GB at the peak.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import embedding_step_time as bench  # this folder: the script's own directory is on sys.path

# The ids a model-parallel run scores once trained, and its export scores again.
PROBE_IDS = [i * 1_000_003 % (1 << 40) for i in range(64)]


def save_trained(folder: str, strategy: object, model: object, embedding: object,
                 worker: int) -> None:
    """In a worker: its part of the table, and (chief) the dense weights and probe scores."""
    import numpy as np
    import tensorflow as tf

    from trainer.embeddings import model_parallel_variables
    from trainer.embeddings.per_worker import save_parts

    @tf.function(autograph=False)
    def score(ids: tf.Tensor) -> object:
        return strategy.run(lambda x: model(x, training=False), args=(ids,))

    scores = strategy.experimental_local_results(score(tf.constant(PROBE_IDS, tf.int64)))[0]
    save_parts(model_parallel_variables(model, model.optimizer.tables),
               os.path.join(folder, "ckpt-1"), embedding.workers)
    if worker == 0:
        rest = [v.numpy() for v in model.weights if v is not embedding.shards[0]]
        np.savez(os.path.join(folder, "dense.npz"), scores=scores.numpy()[:, 0],
                 **{f"w{i}": w for i, w in enumerate(rest)})


def _export(folder: str, rows: int) -> None:
    """A fresh process: the network with the table stitched whole, saved as a SavedModel."""
    import multitower  # noqa: F401, I001  (TF_USE_LEGACY_KERAS before TensorFlow)
    import numpy as np
    import tensorflow as tf
    import tf_keras as keras

    from trainer.embeddings import PartitionedEmbedding, restore_parts
    from trainer.embeddings.model_parallel import Workers

    raw = keras.Input(shape=(), dtype=tf.int64, name="item")
    table = PartitionedEmbedding(rows, bench.DIM, placement="model_parallel", name="table")
    hidden = keras.layers.Dense(bench.HIDDEN, activation="relu")(table(raw))
    network = keras.Model(raw, keras.layers.Dense(1, activation="sigmoid")(hidden))
    restore_parts({"table": table.shards[0]}, os.path.join(folder, "ckpt-1"), Workers(1, 0),
                  {"table": rows})
    saved = np.load(os.path.join(folder, "dense.npz"))
    rest = [v for v in network.weights if v is not table.shards[0]]
    for i, variable in enumerate(rest):
        variable.assign(saved[f"w{i}"])
    module = tf.Module()
    module.variables_ = list(network.weights)  # the stitched table included

    @tf.function(input_signature=[tf.TensorSpec([None], tf.int64, name="item")])
    def serve(item: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"score": network(item, training=False)[:, 0]}

    module.serve = serve
    tf.saved_model.save(module, os.path.join(folder, "export"),
                        signatures={"serving_default": serve})
    print(json.dumps({"peak_rss_mb": bench._peak_rss_mb()}))  # noqa: SLF001


def _score(folder: str) -> None:
    """A fresh process: the SavedModel loaded with no strategy, scoring the probe ids."""
    import multitower  # noqa: F401, I001
    import numpy as np
    import tensorflow as tf

    served = tf.saved_model.load(os.path.join(folder, "export")).signatures["serving_default"]
    scores = served(item=tf.constant(PROBE_IDS, tf.int64))["score"].numpy()
    want = np.load(os.path.join(folder, "dense.npz"))["scores"]
    print(json.dumps({"max_abs_diff": float(np.abs(scores - want).max()), "rows": len(scores)}))


def _fresh(mode: str, folder: str, rows: int) -> dict:
    done = subprocess.run([sys.executable, __file__, mode, folder, "--rows", str(rows)],
                          capture_output=True, text=True, env={**os.environ, "TF_CONFIG": "",
                                                               "PYTHONPATH": bench.REPO})
    if done.returncode:
        return {"error": done.stderr.strip().splitlines()[-1:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def _peaks(result: dict) -> str:
    return " / ".join(f"{p:,.0f}" for p in result["peaks"]) + " MB"


def _measure(variants: list[str], args: argparse.Namespace, folder: str,
             budget_mb: float | None) -> dict[str, dict]:
    results = {}
    for variant in variants:
        print(f"  {bench.names(args.optimizer)[variant]} ...", flush=True)
        sub = Path(folder, f"{variant}-{budget_mb or 'free'}")
        sub.mkdir()
        save = str(sub / "saved") if budget_mb and variant in bench.MODEL_PARALLEL else None
        if save:
            os.makedirs(save)
        results[variant] = bench._run(variant, [args.rows], args, str(sub),  # noqa: SLF001
                                      budget_mb=budget_mb, save_dir=save)[args.rows]
        results[variant]["saved"] = save
    return results


def _describe(variant: str, result: dict, budget_mb: float, rows: int) -> str:
    if "over_budget" in result:
        lines = [f"worker {r['worker']} reached {r['peak_rss_mb']:,.0f} MB > {budget_mb:,.0f} MB "
                 f"while {r['phase']} ({r['steps']} steps done)" for r in result["over_budget"]]
        return "OVER BUDGET, stopped: " + "; ".join(lines)
    if "skipped" in result:
        return f"no figure: {result['skipped']}"
    under = all(p <= budget_mb for p in result["peaks"])
    held = "; ".join(
        f"w{w}: " + ", ".join(f"{k} {v:,}" for k, v in h.items()) + f" of {rows:,} rows"
        for w, h in enumerate(result["held"]))
    return (f"{'under' if under else 'OVER'} budget: trained {result['steps']} steps, loss "
            f"{result['loss'][0]:.4f} -> {result['loss'][1]:.4f}, peaks {_peaks(result)}; "
            f"holds {held}")


def main() -> None:
    """Measures both placements, sets the budget between them, runs both under it, exports."""
    if len(sys.argv) > 2 and sys.argv[1] in ("export", "score"):  # the fresh processes
        mode, folder = sys.argv[1], sys.argv[2]
        rows = int(float(sys.argv[sys.argv.index("--rows") + 1]))
        _export(folder, rows) if mode == "export" else _score(folder)
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=float, default=1e7)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--optimizer", default="adagrad", choices=sorted(bench.SLOTS))
    parser.add_argument("--exchange", default="all_to_all",
                        choices=sorted(bench.MODEL_PARALLEL.values()))
    parser.add_argument("--budget-mb", type=float, default=None,
                        help="per-worker peak RSS budget (default: between the measured peaks)")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    args.rows, args.rounds, args.num_shards = int(args.rows), 1, None
    model_parallel = {v: k for k, v in bench.MODEL_PARALLEL.items()}[args.exchange]
    variants = ["partitioned", model_parallel]
    started = time.perf_counter()
    table = args.rows * bench.DIM * 4 / 2**20
    state = table * (1 + bench.SLOTS[args.optimizer])
    print(f"embedding memory budget: {args.rows:,} rows x {bench.DIM} float32 = {table:,.0f} MB "
          f"table; training state with {args.optimizer}'s slots {state:,.0f} MB: replicated "
          f"{state:,.0f} MB per worker, model-parallel {state / args.workers:,.0f} MB per worker "
          f"({args.workers} workers, MWMS on localhost, {args.warmup} + {args.steps} steps)",
          flush=True)
    with tempfile.TemporaryDirectory(prefix="multitower-embedding-budget-") as folder:
        budget = args.budget_mb
        measured = {}
        if budget is None:
            print("1. measure each worker's peak RSS, no budget:", flush=True)
            measured = _measure(variants, args, folder, None)
            for variant, result in measured.items():
                if "peaks" not in result:
                    print(f"   {variant:<25} {_describe(variant, result, 0, args.rows)}")
                    continue
                held = ", ".join(f"{k} {v:,}" for k, v in result["held"][0].items())
                print(f"   {variant:<25} peaks {_peaks(result)}; w0 holds {held} of "
                      f"{args.rows:,} rows")
            if not all("peaks" in r for r in measured.values()):
                return
            low = max(measured[model_parallel]["peaks"])
            high = min(measured["partitioned"]["peaks"])
            if low >= high:
                print(f"   no budget separates them (model-parallel {low:,.0f} MB >= "
                      f"replicated {high:,.0f} MB): try more --rows")
                return
            budget = (low + high) / 2
            print(f"2. budget per worker: {budget:,.0f} MB peak RSS (halfway between "
                  f"{low:,.0f} and {high:,.0f})")
        else:
            print(f"2. budget per worker: {budget:,.0f} MB peak RSS (--budget-mb)")
        print("3. run both under the budget (a worker past it is ended at once):", flush=True)
        enforced = _measure(variants, args, folder, budget)
        saved = enforced[model_parallel].get("saved")
        exported = scored = {}
        if saved and "peaks" in enforced[model_parallel]:
            exported = _fresh("export", saved, args.rows)
            scored = _fresh("score", saved, args.rows) if "error" not in exported else {}
    for variant in variants:
        print(f"   {variant:<25} {_describe(variant, enforced[variant], budget, args.rows)}")
    free = measured.get("partitioned", {})
    mine = enforced[model_parallel]
    if "peaks" in free and "peaks" in mine:
        saved = [a - b for a, b in zip(free["peaks"], mine["peaks"], strict=True)]
        print("   resident memory saved per worker by model_parallel: "
              + " / ".join(f"{s:,.0f}" for s in saved) + " MB (replicated peak of step 1 "
              "minus model-parallel peak of step 3)")
    if "max_abs_diff" in scored:
        print(f"4. export with no cluster: the table stitched from the {args.workers} parts in "
              f"a fresh process (peak {exported['peak_rss_mb']:,.0f} MB), saved as a "
              f"SavedModel; loaded fresh, it scores {scored['rows']} probe ids within "
              f"{scored['max_abs_diff']:.1e} of the distributed model")
    else:
        print(f"4. export: not done ({exported or scored or 'the model-parallel run failed'})")
    print(f"({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
