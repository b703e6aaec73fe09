"""`TF_CONFIG`: who is who in a training cluster, written and read in one place.

The local launcher writes it for workers on localhost, Kubernetes objects will write it for
pods, and every trainer process reads it to learn its role. A process without `TF_CONFIG` is the
only worker and the chief.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from multitower.errors import MultitowerError

_EXAMPLE = ('{"cluster": {"worker": ["host:port", ...]}, '
            '"task": {"type": "worker", "index": 0}}')


class ClusterSpecError(MultitowerError, ValueError):
    """`TF_CONFIG` is set but does not describe this process in a cluster."""


@dataclass(frozen=True)
class TaskInfo:
    """Who this process is in the cluster."""

    task_type: str
    task_id: int
    num_workers: int

    @property
    def is_chief(self) -> bool:
        """The chief is `chief:0`, or `worker:0` when the cluster has no chief."""
        return self.task_type == "chief" or (self.task_type == "worker" and self.task_id == 0)


def tf_config(workers: Sequence[str], index: int) -> str:
    """The `TF_CONFIG` of worker `index` in a cluster of `workers` (`host:port` each).

    Raises:
        ValueError: `workers` is empty or `index` is not one of its positions.
    """
    if not workers or not 0 <= index < len(workers):
        raise ValueError(f"worker index {index} is not in a cluster of {len(workers)} worker(s)")
    return json.dumps({"cluster": {"worker": list(workers)},
                       "task": {"type": "worker", "index": int(index)}})


def task_info(environ: Mapping[str, str] | None = None) -> TaskInfo:
    """Reads `TF_CONFIG` from `environ` (default: this process's environment).

    Raises:
        ClusterSpecError: It is set but not valid.
    """
    raw = (os.environ if environ is None else environ).get("TF_CONFIG", "")
    if not raw:
        return TaskInfo("worker", 0, 1)
    try:
        spec = json.loads(raw)
        cluster = spec.get("cluster", {})
        task = spec["task"]
        workers = len(cluster.get("chief", [])) + len(cluster.get("worker", []))
        return TaskInfo(str(task["type"]), int(task["index"]), max(workers, 1))
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise ClusterSpecError(f"TF_CONFIG is not valid: {err!r}; expected {_EXAMPLE}") from None
