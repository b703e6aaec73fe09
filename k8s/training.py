"""Training a day: an Indexed Job with a headless Service, or a Kubeflow TFJob.

`job` (the default) runs on any cluster, with no operator. The Job has one completion index per
worker (completions = parallelism = workers); the Job controller names pod i's host
`<job>-<i>` and, with the template's `subdomain` set to the headless Service, pod i is
reachable at `<job>-<i>.<service>.<namespace>.svc` from the moment it runs. Every pod gets those
addresses in `MULTITOWER_WORKERS`; the controller adds `JOB_COMPLETION_INDEX`; the trainer turns
the two into `TF_CONFIG` (`multitower.cluster`). Restarts: a worker that dies makes the others
fail on their next collective; with `restartPolicy: Never`, a pod failure policy and a backoff
limit, each failed index comes back as a new pod under the same DNS name, and all of them
resume from the mid-day backup. The Job's uid is the run id of the `model_dir` lease, so the
new pods take the lease back.

`tfjob` is for clusters that run Kubeflow's training operator, which creates the pods and a
Service per worker and injects `TF_CONFIG` into the container named `tensorflow`. Its restart
policy is `OnFailure`, not `ExitCode`: under `ExitCode` the operator treats exit code 1 as
permanent (training-operator `IsRetryableExitCode`: 1, 2, 126, 127, 128 and 139 are), and
exit code 1 is exactly how a surviving worker leaves when a peer died. `OnFailure` restarts
the container in its pod (same name, same `TF_CONFIG`) and the operator counts those restarts
against `runPolicy.backoffLimit`; the operator does not count restarts under `ExitCode` or
`Never`.
"""

from __future__ import annotations

from typing import Any

from k8s.objects import (
    CONFIG_FILE,
    JOB_UID_LABEL,
    Target,
    job_name,
    labels,
    metadata,
    pod_failure_rules,
    pod_spec,
    project_container,
    run_id_env,
    selector,
)
from multitower.cluster import INDEX_VARIABLE, WORKERS_VARIABLE, indexed_worker_addresses

CONTAINER = "trainer"
PORT_NAME = "worker"
TFJOB_CONTAINER = "tensorflow"  # the only container the operator gives TF_CONFIG to
TFJOB_PORT_NAME = "tfjob-port"  # the port name the operator reads the workers' port from
TFJOB_REPLICA = "Worker"
TFJOB_RESTART_POLICY = "OnFailure"
# The operator's pod label holding the TFJob's name: every pod of one TFJob shares it (the
# TFJob's uid is not on its pods). A TFJob is named by day, so it is one run id per day's run.
TFJOB_NAME_LABEL = "training.kubeflow.org/job-name"

__all__ = ["INDEX_VARIABLE", "WORKERS_VARIABLE", "indexed_job", "tfjob", "training_objects",
           "train_args", "worker_service"]


def train_args(date: str) -> list[str]:
    """`multitower`'s arguments: train one day from the mounted config."""
    return ["train", "--config", CONFIG_FILE, "--date", date]


def _backoff_limit(t: Target) -> int:
    return t.k8s.training.max_restarts * t.k8s.training.workers


def worker_service(t: Target, date: str) -> dict[str, Any]:
    """The headless Service that gives each worker of the day's Job a stable DNS name.

    `publishNotReadyAddresses`: workers have no readiness probe to pass, and must find each
    other as soon as they start, before any is "ready".
    """
    name = job_name(t, "train", date)
    port = t.k8s.training.port
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": metadata(t, name, "train", date),
            "spec": {"clusterIP": "None", "publishNotReadyAddresses": True,
                     "selector": selector(t, "train", date),
                     "ports": [{"name": PORT_NAME, "port": port, "targetPort": port,
                                "protocol": "TCP"}]}}


def indexed_job(t: Target, date: str) -> dict[str, Any]:
    """The day's training as an Indexed Job (one worker per index)."""
    settings = t.k8s.training
    workers = settings.workers
    name = job_name(t, "train", date)
    env = [run_id_env(JOB_UID_LABEL)]
    ports = None
    if workers > 1:
        addresses = indexed_worker_addresses(name, name, t.namespace, workers, settings.port)
        env.insert(0, {"name": WORKERS_VARIABLE, "value": ",".join(addresses)})
        ports = [{"name": PORT_NAME, "containerPort": settings.port, "protocol": "TCP"}]
    container = project_container(t, CONTAINER, train_args(date), settings.resources,
                                  gpus=settings.resources.gpus, env=env, ports=ports)
    pod = pod_spec(t, [container], settings, restart_policy="Never",
                   scratch=settings.resources.scratch)
    if workers > 1:
        pod["subdomain"] = name  # the headless Service: pod i answers at <name>-<i>.<name>
    spec: dict[str, Any] = {
        "completionMode": "Indexed",
        "completions": workers,
        "parallelism": workers,
        "backoffLimit": _backoff_limit(t),
        "podFailurePolicy": {"rules": pod_failure_rules(CONTAINER)},
        "ttlSecondsAfterFinished": settings.ttl_seconds_after_finished,
        "template": {"metadata": {"labels": labels(t, "train", date)}, "spec": pod},
    }
    if settings.active_deadline_seconds:
        spec["activeDeadlineSeconds"] = settings.active_deadline_seconds
    return {"apiVersion": "batch/v1", "kind": "Job",
            "metadata": metadata(t, name, "train", date), "spec": spec}


def tfjob(t: Target, date: str) -> dict[str, Any]:
    """The day's training as a `kubeflow.org/v1` TFJob (workers only, no chief or PS)."""
    settings = t.k8s.training
    name = job_name(t, "train", date)
    ports = [{"name": TFJOB_PORT_NAME, "containerPort": settings.port, "protocol": "TCP"}]
    container = project_container(t, TFJOB_CONTAINER, train_args(date), settings.resources,
                                  gpus=settings.resources.gpus,
                                  env=[run_id_env(TFJOB_NAME_LABEL)], ports=ports)
    pod = pod_spec(t, [container], settings, restart_policy=TFJOB_RESTART_POLICY,
                   scratch=settings.resources.scratch)
    run_policy: dict[str, Any] = {
        "backoffLimit": _backoff_limit(t),
        # Pods stay after the end (their logs), until the TTL removes the TFJob and them.
        "cleanPodPolicy": "None",
        "ttlSecondsAfterFinished": settings.ttl_seconds_after_finished,
    }
    if settings.active_deadline_seconds:
        run_policy["activeDeadlineSeconds"] = settings.active_deadline_seconds
    gang = settings.gang
    if gang is not None:
        policy: dict[str, Any] = {"minAvailable": gang.min_available or settings.workers}
        if gang.queue:
            policy["queue"] = gang.queue
        if gang.priority_class or t.k8s.priority_class:
            policy["priorityClass"] = gang.priority_class or t.k8s.priority_class
        if gang.schedule_timeout_seconds:
            policy["scheduleTimeoutSeconds"] = gang.schedule_timeout_seconds
        run_policy["schedulingPolicy"] = policy
        if gang.scheduler_name:
            pod["schedulerName"] = gang.scheduler_name
    return {
        "apiVersion": "kubeflow.org/v1", "kind": "TFJob",
        "metadata": metadata(t, name, "train", date),
        "spec": {
            "runPolicy": run_policy,
            # The day is done when every worker is: a failure after the chief's would be lost
            # under the default rule (worker 0 alone).
            "successPolicy": "AllWorkers",
            "tfReplicaSpecs": {TFJOB_REPLICA: {
                "replicas": settings.workers,
                "restartPolicy": TFJOB_RESTART_POLICY,
                "template": {"metadata": {"labels": labels(t, "train", date)}, "spec": pod},
            }},
        },
    }


def training_objects(t: Target, date: str) -> list[dict[str, Any]]:
    """The objects that train `date`: Service and Job, or the TFJob, by `k8s.training.kind`."""
    if t.k8s.training.kind == "tfjob":
        return [tfjob(t, date)]
    if t.k8s.training.workers == 1:
        return [indexed_job(t, date)]  # one worker needs no cluster, hence no Service
    return [worker_service(t, date), indexed_job(t, date)]
