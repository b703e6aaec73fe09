"""Running `multitower submit` in-process against the Kubernetes API double (shared by tests)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from click.testing import CliRunner, Result

from commands.cli import main
from tests.k8s.configs import DATE, example_raw, gcs_paths

NS = "recsys"
PREPROCESS = f"impressions-preprocess-{DATE}"
TRAIN = f"impressions-train-{DATE}"
# Small timeouts and no retry waits: nothing here waits on a clock, except the unreachable
# server's retries, which the test that checks them sets itself.
FAST = ("--request-timeout", "10", "--retries", "0", "--retry-wait", "0",
        "--watch-seconds", "5", "--poll-seconds", "0")


def write_config(tmp_path: Path, change: Callable[[dict[str, Any]], None] | None = None,
                 name: str = "config.yaml") -> str:
    """The example k8s config on gs:// (loading it imports no tensorflow-io), changed."""
    raw = example_raw()
    gcs_paths(raw)
    if change is not None:
        change(raw)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def submit(kubeconfig: Path | str, *args: str, fast: tuple[str, ...] = FAST) -> Result:
    """`multitower submit ARGS --kubeconfig K` with the small timeouts."""
    return CliRunner().invoke(main, ["submit", *args, "--kubeconfig", str(kubeconfig), *fast])


def success(index: int = 0, log: tuple[str, ...] = ("step done",)) -> list[dict[str, Any]]:
    """Script steps: the pod of `index` is scheduled, runs and succeeds."""
    from tests.k8s.api_double import pod

    return [pod(index, "Pending"), pod(index, "Running", log=log[:1]),
            pod(index, "Succeeded", log=log[1:])]
