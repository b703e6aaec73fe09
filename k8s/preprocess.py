"""The preprocess step: a `batch/v1` Job running `multitower preprocess --date D`.

Beam's options from `k8s.preprocess.beam_args` pass through unchanged, so the same Job runs the
pipeline in its own pod (DirectRunner) or launches it on a Flink, Spark or Dataflow runner. The
Job's uid is the run id of the day's lease: a pod the Job starts again takes the lease back.
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
)

CONTAINER = "preprocess"


def preprocess_args(t: Target, date: str) -> list[str]:
    """`multitower`'s arguments: the step, the mounted config, the day, then Beam's options."""
    return ["preprocess", "--config", CONFIG_FILE, "--date", date, *t.k8s.preprocess.beam_args]


def preprocess_job(t: Target, date: str) -> dict[str, Any]:
    """The preprocess Job of `date`."""
    settings = t.k8s.preprocess
    name = job_name(t, "preprocess", date)
    container = project_container(t, CONTAINER, preprocess_args(t, date), settings.resources,
                                  env=[run_id_env(JOB_UID_LABEL)])
    spec: dict[str, Any] = {
        "backoffLimit": settings.backoff_limit,
        "podFailurePolicy": {"rules": pod_failure_rules(CONTAINER)},
        "ttlSecondsAfterFinished": settings.ttl_seconds_after_finished,
        "template": {
            "metadata": {"labels": labels(t, "preprocess", date)},
            "spec": pod_spec(t, [container], settings, restart_policy="Never",
                             scratch=settings.resources.scratch),
        },
    }
    if settings.active_deadline_seconds:
        spec["activeDeadlineSeconds"] = settings.active_deadline_seconds
    return {"apiVersion": "batch/v1", "kind": "Job",
            "metadata": metadata(t, name, "preprocess", date), "spec": spec}
