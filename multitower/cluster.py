"""`TF_CONFIG`: who is who in a training cluster, written and read in one place.

A worker is given its cluster as two variables, the way a Kubernetes Indexed Job gives it:
`MULTITOWER_WORKERS` (every worker's `host:port`, in index order) and `JOB_COMPLETION_INDEX`
(which one it is, set by the Job controller). `tf_config_from_index` turns them into
`TF_CONFIG`; the local launcher (`trainer/launch.py`) builds its workers' environment with the
same two variables and the same function, with `localhost` ports for addresses, and on a cluster
the addresses are the stable DNS names of the Job's pods behind its headless Service
(`indexed_worker_addresses`). `task_info()` reads the two variables when there is no
`TF_CONFIG`; the trainer exports `TF_CONFIG` from them (`export_tf_config`) before it builds its
strategy, since TensorFlow reads only `TF_CONFIG`. An explicit
`TF_CONFIG` (the launcher's, or the one Kubeflow's training operator injects) wins.

A process with neither is the only worker and the chief.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass

from multitower.errors import MultitowerError

WORKERS_VARIABLE = "MULTITOWER_WORKERS"
INDEX_VARIABLE = "JOB_COMPLETION_INDEX"  # the name Kubernetes' Job controller sets
_ADDRESS = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9.]*[A-Za-z0-9])?:[0-9]{1,5}")
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


def indexed_worker_addresses(job_name: str, service: str, namespace: str, workers: int,
                             port: int) -> list[str]:
    """The stable addresses of an Indexed Job's workers behind its headless Service.

    The Job controller names pod i's host `<job_name>-<i>`; with the pod template's
    `subdomain` set to the Service, its DNS name is `<host>.<service>.<namespace>.svc` (the
    cluster domain comes from the pod's DNS search path, as for the training operator's
    names).

    Raises:
        ValueError: `workers` is below 1 or `port` is not a port.
    """
    if workers < 1 or not 0 < port < 65536:
        raise ValueError(f"need at least one worker and a port, got {workers} and {port}")
    return [f"{job_name}-{i}.{service}.{namespace}.svc:{port}" for i in range(workers)]


def worker_environment(addresses: Sequence[str], index: int) -> dict[str, str]:
    """The variables that tell worker `index` its cluster: `MULTITOWER_WORKERS` and its index."""
    return {WORKERS_VARIABLE: ",".join(addresses), INDEX_VARIABLE: str(int(index))}


def tf_config_from_index(environ: Mapping[str, str]) -> str | None:
    """`TF_CONFIG` from `MULTITOWER_WORKERS` and `JOB_COMPLETION_INDEX`; None without the first.

    Raises:
        ClusterSpecError: The addresses are not `host:port` pairs, or the index is missing,
            not a number, or not one of the workers; the message names the variable.
    """
    listed = environ.get(WORKERS_VARIABLE, "")
    if not listed:
        return None
    addresses = listed.split(",")
    bad = [a for a in addresses if not _ADDRESS.fullmatch(a)]
    if bad:
        raise ClusterSpecError(f"{WORKERS_VARIABLE}: {bad[0]!r} is not host:port; expected "
                               f"comma-separated host:port of every worker, in index order")
    raw = environ.get(INDEX_VARIABLE, "")
    if not raw.isdigit() or int(raw) >= len(addresses):
        raise ClusterSpecError(
            f"{INDEX_VARIABLE} is {raw!r}, but {WORKERS_VARIABLE} names {len(addresses)} "
            f"worker(s): it must be one of 0..{len(addresses) - 1} (an Indexed Job sets it)")
    return tf_config(addresses, int(raw))


def export_tf_config(environ: MutableMapping[str, str] | None = None) -> None:
    """Sets `TF_CONFIG` from the indexed variables when it is not set already.

    TensorFlow reads `TF_CONFIG` from the process environment when a strategy is built, so a
    pod of an Indexed Job must have it there before (`trainer.strategy.make_strategy`).

    Raises:
        ClusterSpecError: The indexed variables are set but not valid.
    """
    environ = os.environ if environ is None else environ
    if environ.get("TF_CONFIG"):
        return
    built = tf_config_from_index(environ)
    if built is not None:
        environ["TF_CONFIG"] = built


def task_info(environ: Mapping[str, str] | None = None) -> TaskInfo:
    """Reads `TF_CONFIG` from `environ` (default: this process's environment).

    Without `TF_CONFIG`, the indexed variables stand for it (`tf_config_from_index`); nothing
    is written.

    Raises:
        ClusterSpecError: It is set but not valid.
    """
    environ = os.environ if environ is None else environ
    raw = environ.get("TF_CONFIG", "") or tf_config_from_index(environ) or ""
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
