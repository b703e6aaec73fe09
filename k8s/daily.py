"""The daily run: a CronJob whose pod runs `multitower submit daily --date yesterday`.

`submit daily` creates the day's preprocess Job, waits, creates training, waits, rewrites the
serving config (the version labels move) and fails loudly if a step fails; "yesterday" is
yesterday in `k8s.daily.time_zone`, the zone the schedule runs in. The pod talks to the API
server with its own ServiceAccount, bound to a Role granting only the calls listed in
`k8s/permissions.py`. Overlapping runs are refused (`concurrencyPolicy: Forbid`): two runs
would train the same `model_dir`; a run that could not start in time is skipped, not run late.
"""

from __future__ import annotations

from typing import Any

from k8s.objects import (
    CONFIG_FILE,
    Target,
    labels,
    metadata,
    pod_failure_rules,
    pod_spec,
    project_container,
)
from k8s.permissions import daily_permissions

CONTAINER = "submit"


def daily_args(t: Target) -> list[str]:
    """`multitower`'s arguments in the daily pod.

    The namespace is passed explicitly: the config in the ConfigMap holds `k8s.namespace` as
    written, while rendering or `submit --namespace` may put the CronJob and its Role in
    another namespace, the only one the pod may create Jobs in.
    """
    return ["submit", "daily", "--config", CONFIG_FILE, "--namespace", t.namespace,
            "--date", "yesterday"]


def daily_name(t: Target) -> str:
    """The name shared by the CronJob, its ServiceAccount, Role and RoleBinding."""
    return f"{t.app}-daily"


def service_account(t: Target) -> dict[str, Any]:
    """The daily pod's ServiceAccount (with `k8s.daily.service_account_annotations`)."""
    meta = metadata(t, daily_name(t), "daily",
                    annotations=t.k8s.daily.service_account_annotations or None)
    return {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta,
            # Only the daily pod, which asks for it, mounts a token.
            "automountServiceAccountToken": False}


def role(t: Target) -> dict[str, Any]:
    """The Role: one rule per call `submit daily` makes (`daily_permissions`)."""
    rules = []
    for p in daily_permissions(t.config, t.app):
        rule: dict[str, Any] = {"apiGroups": [p.api_group], "resources": [p.resource],
                                "verbs": list(p.verbs)}
        if p.resource_names:
            rule["resourceNames"] = list(p.resource_names)
        rules.append(rule)
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": metadata(t, daily_name(t), "daily"), "rules": rules}


def role_binding(t: Target) -> dict[str, Any]:
    """Binds the Role to the daily ServiceAccount, in the same namespace."""
    name = daily_name(t)
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": metadata(t, name, "daily"),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": name,
                          "namespace": t.namespace}]}


def cron_job(t: Target) -> dict[str, Any]:
    """The CronJob.

    Its Job does not retry a failed `submit daily` (`backoffLimit: 0`): the failure is the
    report. A pod evicted or preempted is started again (`DisruptionTarget` is ignored).
    """
    settings = t.k8s.daily
    container = project_container(t, CONTAINER, daily_args(t), settings.resources)
    pod = pod_spec(t, [container], settings, restart_policy="Never",
                   scratch=settings.resources.scratch, service_account=daily_name(t),
                   api_access=True)
    job: dict[str, Any] = {
        "backoffLimit": 0,
        "podFailurePolicy": {"rules": pod_failure_rules(CONTAINER)},
        "template": {"metadata": {"labels": labels(t, "daily")}, "spec": pod},
    }
    if settings.active_deadline_seconds:
        job["activeDeadlineSeconds"] = settings.active_deadline_seconds
    return {"apiVersion": "batch/v1", "kind": "CronJob",
            "metadata": metadata(t, daily_name(t), "daily"),
            "spec": {
                "schedule": settings.schedule,
                "timeZone": settings.time_zone,
                "concurrencyPolicy": "Forbid",
                "startingDeadlineSeconds": settings.starting_deadline_seconds,
                "successfulJobsHistoryLimit": settings.successful_jobs_history_limit,
                "failedJobsHistoryLimit": settings.failed_jobs_history_limit,
                "jobTemplate": {"metadata": {"labels": labels(t, "daily")}, "spec": job},
            }}


def daily_objects(t: Target) -> list[dict[str, Any]]:
    """ServiceAccount, Role, RoleBinding and CronJob."""
    return [service_account(t), role(t), role_binding(t), cron_job(t)]
