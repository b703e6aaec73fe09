"""Prints preprocessing speed per core: the Beam job against a plain single-process Python loop.

    python benchmarks/preprocess.py [--rows 60000] [--formats jsonl csv parquet] [--files 2]
        [--repeat 1] [beam arguments, e.g. --direct_num_workers=2] 2>/dev/null  # Beam's logs

The same generated day (`pipeline.generate.generate_logs`, `--files` files) is preprocessed in
each format twice:

- by `run_preprocess` (what `multitower preprocess` runs) on the default engine (the
  DirectRunner's engine in `multi_processing` mode, one worker per core) unless Beam arguments
  are given. Its time is taken from the job itself: from the first input file opened to the last
  output file written (timing metrics the job reports, see `pipeline.preprocess.job_timings`),
  divided by the worker processes it used. Start-up (building the pipeline, starting workers)
  and the finish (summary, shutdown) are printed separately, with the command's wall time and
  the CPU seconds of this process and its workers. The CPU the runner (this process) and the
  workers spent between the first read and the last write is sampled from /proc (Linux);
- by a loop in this process doing the same work with the job's own functions: check each file
  whole, read its records (`pipeline.read_logs`), validate (`RowChecker`), encode
  (`encode_example`, origin included), add to the statistics, and write each shard's GZIP
  TFRecord file and the rejected rows. Its files are compared with the job's, byte for byte.

Printed per format: rows/s per core of each and their ratio (wall clock), and rows per
CPU-second of each and their ratio. Other jobs on the machine slow the two-worker job's wall
clock more than the one-core loop's; the CPU-second figures are less sensitive to them, so a
large gap between the two ratios says the machine was busy. `--repeat N` runs each N times and
keeps the fastest. Figures are printed, never asserted. The goal (issue 12): the Beam job at
>= 50% of the loop's rows/s per core.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import resource
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import yaml

import multitower  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
from multitower.config import DataConfig, parse_config
from multitower.records import encode_example
from pipeline.generate import generate_logs
from pipeline.preprocess import run_preprocess
from pipeline.read_logs import file_records, input_fault, resolve_inputs
from pipeline.shards import (
    RECORD_PREFIX,
    RECORD_SUFFIX,
    REJECTED_PREFIX,
    REJECTED_SUFFIX,
    shard_name,
    shard_of,
    write_records,
)
from pipeline.stats import empty_shard_stats, row_values
from pipeline.validate import RowChecker, rejection

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "impressions.yaml"
DATE = "2026-01-01"


class _Timings(logging.Handler):
    """Keeps the timings `run_preprocess` logs (`extra={"timings": ...}`)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.found: dict[str, Any] | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if hasattr(record, "timings"):
            self.found = record.timings


def loop_preprocess(data: DataConfig, inputs: list[str], out_dir: Path) -> dict[str, int]:
    """The job's work as one plain loop: read, validate, encode, count, write (see the docstring).

    Returns:
        Rows read, written and rejected.
    """
    checker = RowChecker(data)
    n = data.num_shards
    examples: list[list[bytes]] = [[] for _ in range(n)]
    stats = [empty_shard_stats(data) for _ in range(n)]
    rejected: list[list[dict]] = [[] for _ in range(n)]
    read = 0
    for path in inputs:  # sorted, and each file in order: the job's order within a shard
        fault = input_fault(path, data)
        if fault is not None:
            raise SystemExit(f"{path}: {fault}")
        for record in file_records(path, data):
            read += 1
            shard = shard_of(record.source, record.line, n)
            row, reason, defaulted, truncated = checker.check(record)
            if reason is None:
                examples[shard].append(
                    encode_example(row, data, origin=(record.source, record.line)))
                stats[shard].add(row_values(row, data), defaulted, truncated)
            else:
                rejected[shard].append(rejection(record, reason))
    out_dir.mkdir(parents=True)
    for shard in range(n):
        write_records(str(out_dir / shard_name(RECORD_PREFIX, shard, n, RECORD_SUFFIX)),
                      examples[shard])
        if rejected[shard]:
            name = shard_name(REJECTED_PREFIX, shard, n, REJECTED_SUFFIX)
            (out_dir / name).write_text("".join(json.dumps(r) + "\n" for r in rejected[shard]))
    written = sum(len(e) for e in examples)
    return {"read": read, "written": written, "rejected": read - written}


_TICK = os.sysconf("SC_CLK_TCK")


def _tree_cpu(root: int) -> float:
    """CPU seconds of `root` and of its live descendant processes so far, from /proc (Linux)."""
    total, pending = 0.0, [root]
    while pending:
        pid = pending.pop()
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / _TICK  # utime + stime
            for task in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{task}/children") as f:
                    pending += [int(child) for child in f.read().split()]
        except OSError:  # ended meanwhile
            continue
    return total


class _CpuSampler(threading.Thread):
    """Samples (time, CPU seconds of this process and its workers) while a job runs.

    The job reports when its rows started and ended (wall-clock microseconds); `between` gives
    the CPU spent in that window by the runner and its worker processes together, which a
    loaded machine (other jobs on the same cores) distorts less than wall time.
    """

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.samples: list[tuple[float, float]] = []
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            # Less the sampler's own CPU, which is no part of the job.
            self.samples.append((time.time(), _tree_cpu(os.getpid()) - time.thread_time()))
            self._done.wait(0.05)

    def stop(self) -> None:
        self._done.set()
        self.join()

    def _at(self, moment: float) -> float:
        before = [s for s in self.samples if s[0] <= moment] or self.samples[:1]
        after = [s for s in self.samples if s[0] >= moment] or self.samples[-1:]
        (t0, c0), (t1, c1) = before[-1], after[0]
        return c0 if t1 == t0 else c0 + (c1 - c0) * (moment - t0) / (t1 - t0)

    def between(self, start: float, end: float) -> float:
        """CPU seconds spent between two wall-clock times (seconds), interpolated."""
        return self._at(end) - self._at(start)


def _cpu_seconds() -> float:
    """CPU time of this process and of its finished child processes (Beam's workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(
        resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _same_files(loop_dir: Path, day: Path, rejected_day: Path) -> bool:
    loop = {p.name: p.read_bytes() for p in loop_dir.iterdir()}
    beam = {p.name: p.read_bytes() for p in day.glob(f"{RECORD_PREFIX}-*")}
    beam.update({p.name: p.read_bytes() for p in rejected_day.glob("*")})
    return loop == beam


def bench_format(root: Path, log_format: str, rows: int, files: int, beam_args: list[str],
                 repeat: int) -> None:
    """Generates the day in one format, runs the loop and the Beam job, prints their figures."""
    raw = yaml.safe_load(EXAMPLE.read_text())
    base = root / log_format
    raw["data"].update(logs=f"{base}/logs/dt={{date}}", format=log_format,
                       tfrecords=f"{base}/tfrecords", rejected=f"{base}/rejected")
    config = parse_config(copy.deepcopy(raw), str(base / "config.yaml"))
    generate_logs(str(base / "logs"), DATE, 1, rows, files_per_day=files, log_format=log_format)
    inputs = resolve_inputs(config.data.logs_for(DATE), DATE, config.data.format)

    loop_best = loop_cpu = None
    for attempt in range(repeat):
        loop_dir = base / f"loop-{attempt}"
        t, cpu = time.perf_counter(), time.process_time()
        counts = loop_preprocess(config.data, inputs, loop_dir)
        seconds, cpu = time.perf_counter() - t, time.process_time() - cpu
        print(f"  loop: {seconds:.1f} s, CPU {cpu:.1f} s")
        if loop_best is None or seconds < loop_best:
            loop_best, loop_cpu = seconds, cpu

    handler = _Timings()
    logger = logging.getLogger("multitower.pipeline")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    best: dict[str, Any] | None = None
    try:
        for _ in range(repeat):
            handler.found = None
            cpu, t = _cpu_seconds(), time.perf_counter()
            sampler = _CpuSampler()
            sampler.start()
            try:
                manifest = run_preprocess(config, DATE, beam_args)
            finally:
                sampler.stop()
            wall, cpu = time.perf_counter() - t, _cpu_seconds() - cpu
            timings = handler.found
            if timings is None:
                raise SystemExit("the job reported no timings (a runner without metrics?)")
            rows_cpu = sampler.between(timings["first_read"], timings["last_written"])
            print(f"  beam: start-up {timings['startup']:.1f} s, rows {timings['rows']:.1f} s "
                  f"(CPU {rows_cpu:.1f} s), finish {timings['finish']:.1f} s")
            if best is None or timings["rows"] < best["rows"]:
                best = {**timings, "wall": wall, "cpu": cpu, "rows_cpu": rows_cpu}
    finally:
        logger.removeHandler(handler)
    if manifest["rows"] != counts:
        raise SystemExit(f"{log_format}: the job counted {manifest['rows']}, the loop {counts}")
    same = _same_files(base / "loop-0", base / "tfrecords" / f"dt={DATE}",
                       base / "rejected" / f"dt={DATE}")

    workers = best["workers"]
    loop_rate = counts["read"] / loop_best
    beam_rate = counts["read"] / best["rows"] / workers
    print(f"{log_format:8s} {counts['read']:8d} rows  loop {loop_rate:8.0f} rows/s/core "
          f"({loop_best:5.1f} s)   beam {beam_rate:8.0f} rows/s/core ({best['rows']:5.1f} s x "
          f"{workers} workers)   ratio {beam_rate / loop_rate:4.0%}")
    loop_per_cpu, beam_per_cpu = counts["read"] / loop_cpu, counts["read"] / best["rows_cpu"]
    print(f"{'':8s} per CPU-second: loop {loop_per_cpu:8.0f} rows, beam {beam_per_cpu:8.0f} rows "
          f"(runner + workers), ratio {beam_per_cpu / loop_per_cpu:4.0%}")
    print(f"{'':8s} beam start-up {best['startup']:4.1f} s, finish {best['finish']:4.1f} s, "
          f"command {best['wall']:5.1f} s, CPU {best['cpu']:5.1f} s (this process + workers); "
          f"files identical to the loop's: {'yes' if same else 'NO'}")


def main() -> None:
    """Parses the arguments and prints one block of figures per format."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=60_000)
    parser.add_argument("--formats", nargs="+", default=["jsonl", "csv", "parquet"],
                        choices=["jsonl", "csv", "parquet"])
    parser.add_argument("--files", type=int, default=2, help="input files of the day")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each; the best is shown")
    args, beam_args = parser.parse_known_args()
    root = Path(tempfile.mkdtemp(prefix="multitower-bench-preprocess-"))
    try:
        for log_format in args.formats:
            bench_format(root, log_format, args.rows, args.files, beam_args, args.repeat)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
