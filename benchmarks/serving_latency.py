"""Prints serving latency: in-process signature calls, and REST / gRPC round trips through `serve`.

    python benchmarks/serving_latency.py [--rows 20000] [--requests 2000] [--seconds 10]
        [--model-dir DIR]

The model is the example config's (`examples/impressions.yaml`: MMoE, 100k-bucket user and
item tables, three tasks), trained by `multitower train` on one generated day so that the
export is the one a user serves (with `serving.ranking_score` added); `--model-dir` reuses an
export folder (`<export_dir>/impressions`) instead.

- **in-process**: `serving_default` of the SavedModel loaded with `tf.saved_model.load`, called
  with tensors already built, at batch 1, 64, 256 and 1024: p50 and p99 of `--requests` calls
  (after 50 warm-up calls).
- **through `multitower serve`** (the local TF Serving double, its own process, on loopback):
  the project's clients (`serving.grpc_client`, `serving.rest_client`), one request at a time, at
  batch 1 and 256: p50 and p99 of the round trip, including building the request from rows and
  reading the scores back. The gRPC overhead at batch 1 is its p50 minus the in-process p50.
- **concurrency**: requests per second with 8 client threads, each sending batch-1 requests over
  gRPC (then REST) for `--seconds`, sharing one client.

The machine's load average is printed next to the figures: they mean little on a busy machine.
Figures are printed, never asserted. TF Serving itself runs the same graph, so the in-process
figures hold for it; its server overhead is its own.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "impressions.yaml"
DATE = "2026-01-01"
BATCHES = (1, 64, 256, 1024)
WIRE_BATCHES = (1, 256)
CLIENTS = 8


def _cli(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "commands.cli", *args], check=True, cwd=REPO,
                   stdout=subprocess.DEVNULL)


def _project(root: Path, rows: int) -> tuple[Path, Path]:
    """Trains the example model on one generated day; returns (config path, rows file)."""
    raw = yaml.safe_load(EXAMPLE.read_text())
    work = root / "work"
    raw["data"].update(logs=str(work / "logs" / "dt={date}"), tfrecords=str(work / "tfrecords"),
                       rejected=str(work / "rejected"))
    raw["train"].update(model_dir=str(work / "model"), export_dir=str(work / "export"))
    raw["serving"] = {"ranking_score": {"terms": [
        {"output": "click"}, {"output": "conversion", "weight": 0.5},
        {"output": "watch_time", "weight": 0.2, "offset": 1.0}]}}
    config = root / "config.yaml"
    config.write_text(yaml.safe_dump(raw))
    _cli("generate", "--out", str(work / "logs"), "--start-date", DATE, "--days", "1",
         "--rows-per-day", str(rows))
    _cli("preprocess", "--config", str(config), "--date", DATE)
    _cli("train", "--config", str(config), "--date", DATE)
    return config, next((work / "logs" / f"dt={DATE}").glob("*.jsonl.gz"))


def _feature_rows(logs: Path, names: list[str], count: int) -> list[dict]:
    import gzip
    import json

    rows = []
    with gzip.open(logs, "rt") as f:
        for line in f:
            row = json.loads(line)
            rows.append({name: row[name] for name in names})
            if len(rows) == count:
                break
    return rows


def _percentiles(seconds: list[float]) -> str:
    ms = np.array(seconds) * 1000
    return f"p50 {np.percentile(ms, 50):7.3f} ms   p99 {np.percentile(ms, 99):7.3f} ms"


def _time(call: object, n: int, warmup: int = 50) -> list[float]:
    for _ in range(warmup):
        call()
    times = []
    for _ in range(n):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return times


def in_process(version_dir: str, rows: list[dict], n: int) -> dict[int, list[float]]:
    """p50/p99 of `serving_default` at each batch size, tensors built beforehand."""
    import tensorflow as tf

    fn = tf.saved_model.load(version_dir).signatures["serving_default"]
    specs = fn.structured_input_signature[1]
    results = {}
    for batch in BATCHES:
        chunk = (rows * (batch // len(rows) + 1))[:batch]
        tensors = {name: tf.constant([r[name] for r in chunk], dtype=spec.dtype)
                   for name, spec in specs.items()}
        results[batch] = _time(lambda t=tensors: fn(**t), n)
        print(f"  in-process  batch {batch:5d}: {_percentiles(results[batch])}", flush=True)
    return results


def _start_serve(config_path: Path) -> tuple[subprocess.Popen, str, str]:
    """Starts `multitower serve` on free ports; returns (process, REST address, gRPC address)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "commands.cli", "serve", "--config", str(config_path),
         "--rest-port", "0", "--grpc-port", "0"],
        cwd=REPO, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    for line in process.stderr:
        ready = re.search(r"ready: REST http://(\S+), gRPC (\S+);", line)
        if ready:
            threading.Thread(target=process.stderr.read, daemon=True).start()  # drain
            return process, ready.group(1), ready.group(2)
    raise RuntimeError(f"multitower serve exited with {process.wait()} before it was ready")


def _clients(rest: str, grpc: str, model: str) -> dict[str, object]:
    from serving.grpc_client import GrpcClient
    from serving.rest_client import RestClient

    clients = {"gRPC": GrpcClient(grpc, model), "REST": RestClient(rest, model)}
    for client in clients.values():
        client.describe()  # status and signature once, as `query` does before its batches
    return clients


def _rate(client: object, rows: list[dict], seconds: float) -> float:
    """Batch-1 requests per second of CLIENTS threads sharing `client`."""
    done = [0] * CLIENTS
    stop = time.perf_counter() + seconds

    def loop(i: int) -> None:
        row = [rows[i]]
        while time.perf_counter() < stop:
            client.score_batch(row)
            done[i] += 1

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(CLIENTS)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(done) / (time.perf_counter() - start)


def through_serve(config_path: Path, model: str, rows: list[dict], args: argparse.Namespace,
                  local: dict[int, list[float]]) -> None:
    """Round trips through `multitower serve` (its own process), then the concurrent rate."""
    process, rest, grpc = _start_serve(config_path)
    try:
        clients = _clients(rest, grpc, model)
        checked = next(iter(clients.values())).check_rows(rows)
        for name, client in clients.items():
            for batch in WIRE_BATCHES:
                chunk = (checked * (batch // len(checked) + 1))[:batch]
                times = _time(lambda c=client, b=chunk: c.score_batch(b), args.requests)
                print(f"  {name:4s} via serve batch {batch:5d}: {_percentiles(times)}", flush=True)
                if batch == 1:
                    extra = (np.percentile(times, 50) - np.percentile(local[1], 50)) * 1000
                    print(f"  {name:4s} client + protocol + double at batch 1, p50 over "
                          f"in-process: {extra:+.3f} ms", flush=True)
        for name, client in clients.items():
            rate = _rate(client, checked, args.seconds)
            print(f"  {name:4s} {CLIENTS} concurrent clients, batch 1: {rate:8.0f} requests/s",
                  flush=True)
        for client in clients.values():
            client.close()
    finally:
        process.terminate()
        process.wait(timeout=60)


def main() -> None:
    """Trains (or reuses) an export, then prints each latency figure."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000, help="Rows of the trained day.")
    parser.add_argument("--requests", type=int, default=2000, help="Calls per figure.")
    parser.add_argument("--seconds", type=float, default=10.0, help="Per concurrency figure.")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="multitower-serving-bench-"))
    try:
        print(f"training the example model on one day of {args.rows} rows ...", flush=True)
        config_path, logs = _project(root, args.rows)
        from multitower.config import load_config
        from multitower.exports import model_base, newest_version

        config = load_config(config_path)
        version, path = newest_version(model_base(config.train.export_dir, config.model.name))
        rows = _feature_rows(logs, [f.name for f in config.data.features], 1024)
        print(f"export {path}; load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
        local = in_process(path, rows, args.requests)
        through_serve(config_path, config.serving.model_name, rows, args, local)
        print(f"load average at the end {os.getloadavg()[0]:.2f}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    main()
