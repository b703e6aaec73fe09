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

The export is not run here: a model-parallel table is exported by the trainer's own path
(`multitower export`, or the chief at the end of a day), which stitches the rows from the
per-worker checkpoints into a plain SavedModel with no cluster; its tests cover it. Figures
are printed, never asserted. The defaults (1e7 rows: a 640 MB table and, with Adagrad, a
640 MB slot) run in about two minutes on 2 cores and need about 4.5 GB at the peak.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import embedding_step_time as bench  # this folder: the script's own directory is on sys.path


def _peaks(result: dict) -> str:
    return " / ".join(f"{p:,.0f}" for p in result["peaks"]) + " MB"


def _measure(variants: list[str], args: argparse.Namespace, folder: str,
             budget_mb: float | None) -> dict[str, dict]:
    results = {}
    for variant in variants:
        print(f"  {bench.names(args.optimizer)[variant]} ...", flush=True)
        sub = Path(folder, f"{variant}-{budget_mb or 'free'}")
        sub.mkdir()
        results[variant] = bench._run(variant, [args.rows], args, str(sub),  # noqa: SLF001
                                      budget_mb=budget_mb)[args.rows]
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
    """Measures both placements, sets the budget between them, and runs both under it."""
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
    for variant in variants:
        print(f"   {variant:<25} {_describe(variant, enforced[variant], budget, args.rows)}")
    free = measured.get("partitioned", {})
    mine = enforced[model_parallel]
    if "peaks" in free and "peaks" in mine:
        saved = [a - b for a, b in zip(free["peaks"], mine["peaks"], strict=True)]
        print("   resident memory saved per worker by model_parallel: "
              + " / ".join(f"{s:,.0f}" for s in saved) + " MB (replicated peak of step 1 "
              "minus model-parallel peak of step 3)")
    print("   export: not run here; `multitower export` (or the chief at the end of a day) "
          "stitches a model-parallel table from the per-worker checkpoints with no cluster")
    print(f"({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
