"""Run N trainer processes on this machine, each with its own `TF_CONFIG` (localhost cluster).

This is how a laptop exercises the multi-worker path: the processes are the same command a
Kubernetes worker runs, and differ only in `TF_CONFIG`. If one worker fails, the others are
stopped at once rather than left waiting on a collective.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from multitower.cluster import tf_config_from_index, worker_environment

if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import IO

# Start-up lines every TensorFlow 2.16 process prints that say nothing about this run: the CUDA
# plugin double registration (harmless on CPU and GPU, tensorflow/tensorflow#62075) and absl's
# notice before its log is initialized. Only the chief's stream is filtered; a failing worker's
# output is shown whole.
_NOISE = re.compile(
    r"Unable to register cu(DNN|FFT|BLAS) factory|All log messages before absl::InitializeLog"
    r"|coordination_service_agent.cc"
)


def free_ports(n: int) -> list[int]:
    """`n` distinct ports free on localhost right now."""
    sockets = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("localhost", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def cluster_env(num_workers: int, index: int, ports: Sequence[int]) -> dict[str, str]:
    """The environment of worker `index` in a localhost cluster.

    The same variables an Indexed Job's pod gets (`multitower.cluster.worker_environment`),
    with localhost ports for addresses, and the `TF_CONFIG` they make.
    """
    env = {**os.environ, **worker_environment(
        [f"localhost:{p}" for p in ports[:num_workers]], index)}
    env["TF_CONFIG"] = tf_config_from_index(env) or ""
    return env


def thread_budget(num_workers: int, cores: int | None = None) -> dict[str, str]:
    """TensorFlow's thread pools of each of `num_workers` processes sharing this machine.

    Each process would otherwise size both pools to every core: with 2 workers on 2 cores,
    their threads fought over the cores and a census-shaped MMoE trained at 57k ex/s, against
    67k with one thread per pool each. Variables already set in the environment are kept.

    Returns:
        `TF_NUM_INTRAOP_THREADS` and `TF_NUM_INTEROP_THREADS` (the cores over the workers, at
        least 1), minus those already set; nothing for one worker.
    """
    if num_workers <= 1:
        return {}
    share = str(max(1, (cores or os.cpu_count() or 1) // num_workers))
    return {k: share for k in ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS")
            if k not in os.environ}


def _pump(stream: IO[str], prefix: str, sink: Callable[[str], None]) -> None:
    for line in iter(stream.readline, ""):
        sink(f"{prefix}{line}")


def _to_stderr(text: str) -> None:
    if _NOISE.search(text):
        return
    sys.stderr.write(text)
    sys.stderr.flush()


def run_local_workers(
    argv: Sequence[str], num_workers: int, extra_env: dict[str, str] | None = None,
    echo_workers: bool = False,
) -> int:
    """Runs `python argv...` as `num_workers` workers of one localhost cluster.

    Args:
        argv: Arguments after the Python executable, e.g. `["-m", "commands.cli", "train", ...]`.
        num_workers: Processes to start; worker 0 is the chief.
        extra_env: Variables added to every worker's environment.
        echo_workers: Also print non-chief output (always printed when a worker fails).

    Returns:
        0 if every worker succeeded, else the first failing worker's exit code.
    """
    if num_workers < 1:
        raise ValueError(f"num_workers must be >= 1, got {num_workers}")
    ports = free_ports(num_workers)
    procs, threads, captured = [], [], []
    for index in range(num_workers):
        env = {**cluster_env(num_workers, index, ports), **thread_budget(num_workers),
               **(extra_env or {})}
        proc = subprocess.Popen(
            [sys.executable, *argv], env=env, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        procs.append(proc)
        if index == 0 or echo_workers:
            sink = _to_stderr
        else:  # kept quiet unless a worker fails
            lines: list[str] = []
            captured.append(lines)
            sink = lines.append
        t = threading.Thread(target=_pump, args=(proc.stdout, f"[worker {index}] ", sink))
        t.daemon = True
        t.start()
        threads.append(t)
    status = 0
    while any(p.poll() is None for p in procs):
        failed = [p for p in procs if p.poll() not in (None, 0)]
        if failed:
            status = failed[0].returncode
            for p in procs:
                if p.poll() is None:
                    p.terminate()
            break
        time.sleep(0.2)
    for p in procs:
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    for t in threads:
        t.join(timeout=5)
    status = status or next((p.returncode for p in procs if p.returncode), 0)
    if status:
        for lines in captured:
            sys.stderr.write("".join(lines))
    return status
