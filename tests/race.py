"""Two commands racing for one resource, the second started once the first holds it."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable

from tests.small_project import REPO


def race(first: list[str], second: list[str], started: Callable[[], bool], env: dict | None = None,
         timeout: float = 600) -> tuple[subprocess.CompletedProcess, subprocess.CompletedProcess]:
    """Runs `first`, waits until `started()` says it holds what it races for, then runs `second`
    while `first` still runs; returns both finished processes."""
    options = {"env": env, "cwd": REPO, "stdout": subprocess.PIPE, "stderr": subprocess.PIPE,
               "text": True}
    one = subprocess.Popen(first, **options)
    deadline = time.monotonic() + timeout
    while not started():
        if one.poll() is not None or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    two = subprocess.Popen(second, **options)
    done = []
    for proc, argv in ((one, first), (two, second)):
        out, err = proc.communicate(timeout=timeout)
        done.append(subprocess.CompletedProcess(argv, proc.returncode, out, err))
    return done[0], done[1]
