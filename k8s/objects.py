"""What every rendered object shares: names, labels, metadata and the project's pod template.

Objects are plain dicts that are exactly the Kubernetes JSON (camelCase keys, as `kubectl get
-o json` prints them), not the `kubernetes` client's model classes: what is rendered is what
`kubernetes-validate` and the TFJob CRD's schema check, what a person reads as YAML, and what
`submit` will send (the client accepts dicts as bodies); the TFJob has no model class anyway,
and models would need `ApiClient().sanitize_for_serialization` to become that JSON again.

Names: every object starts with the app name (`k8s.name`, default `model.name`), then the
step, then the day for per-day Jobs: `impressions-train-2026-03-01`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from k8s.security import (
    SCRATCH_DIR,
    SCRATCH_ENV,
    SCRATCH_VOLUME,
    container_security_context,
    pod_security_context,
    scratch_environment,
    scratch_mounts,
    scratch_volume,
)
from k8s.storage import K8sError, refuse
from multitower.config import Config
from multitower.config.k8s import (
    APP_NAME_MAX,
    DNS1035_LABEL,
    K8sConfig,
    Placement,
    Resources,
    Toleration,
)
from multitower.dates import check_date
from multitower.lease import RUN_ID_VARIABLE

CONFIG_VOLUME = "config"
SERVING_CONFIG_VOLUME = "serving-config"  # TF Serving's files (k8s/serving.py)
SERVING_CONFIG_DIR = "/etc/tfs-config"  # where they are mounted, and the command names them
RESERVED_VOLUMES = (CONFIG_VOLUME, SCRATCH_VOLUME, SERVING_CONFIG_VOLUME)
CONFIG_DIR = "/etc/multitower"
CONFIG_KEY = "config.yaml"
CONFIG_FILE = f"{CONFIG_DIR}/{CONFIG_KEY}"
PART_OF = "multitower"
DATE_LABEL = "multitower/date"
# Variables the renderer sets itself; `k8s.env` may not override them.
RESERVED_ENV = {*SCRATCH_ENV, RUN_ID_VARIABLE, "TF_CONFIG", "MULTITOWER_WORKERS",
                "JOB_COMPLETION_INDEX"}
RESERVED_MOUNTS = (CONFIG_DIR, SERVING_CONFIG_DIR, SCRATCH_DIR, "/tmp")
# The Job controller's label holding the Job's uid (Kubernetes 1.27+), read by the downward API.
JOB_UID_LABEL = "batch.kubernetes.io/controller-uid"


@dataclass(frozen=True)
class Target:
    """A config on its way to a cluster: its `k8s` section, app name and namespace."""

    config: Config
    k8s: K8sConfig
    app: str
    namespace: str


def target(config: Config, namespace: str | None = None) -> Target:
    """Checks that `config` can be rendered and names its objects.

    Args:
        config: The project's config, with a `k8s:` section.
        namespace: Overrides `k8s.namespace` (as `submit --namespace` will).

    Raises:
        K8sError: No `k8s` section, an app name that is no Kubernetes name, `k8s.env`
            setting a variable the renderer sets, or a volume clashing with the renderer's.
    """
    k8s = config.k8s
    if k8s is None:
        raise refuse(config, "k8s", "the config has no k8s: section; add one (see "
                                    "examples/impressions-k8s.yaml) to run on a cluster")
    app = k8s.name or config.model.name
    if not re.fullmatch(DNS1035_LABEL, app) or len(app) > APP_NAME_MAX:
        raise refuse(config, "k8s.name",
                     f"model.name {app!r} is not a Kubernetes name (lower case letters, digits "
                     f"and '-', starting with a letter, at most {APP_NAME_MAX} characters); set "
                     f"k8s.name")
    for name in k8s.env:
        if name in RESERVED_ENV:
            raise refuse(config, f"k8s.env.{name}", "is set by the renderer itself (scratch "
                                                    "folders, run id, cluster); remove it")
    for i, volume in enumerate(k8s.volumes):
        if volume.name in RESERVED_VOLUMES:
            raise refuse(config, f"k8s.volumes[{i}].name", f"{volume.name!r} is the name of a "
                                                           f"volume the renderer adds")
        for taken in RESERVED_MOUNTS:
            if volume.mount_path == taken or volume.mount_path.startswith(taken + "/") \
                    or taken.startswith(volume.mount_path + "/"):
                raise refuse(config, f"k8s.volumes[{i}].mount_path",
                             f"{volume.mount_path!r} overlaps {taken}, where the renderer "
                             f"mounts its own volume")
    return Target(config, k8s, app, namespace or k8s.namespace)


def job_name(t: Target, step: str, date: str) -> str:
    """The name of a per-day object: `<app>-<step>-<YYYY-MM-DD>`.

    Raises:
        K8sError: `date` is not a calendar day.
    """
    try:
        check_date(date)
    except ValueError as err:
        raise K8sError(str(err)) from None
    return f"{t.app}-{step}-{date}"


def labels(t: Target, component: str, date: str | None = None) -> dict[str, str]:
    """The recommended `app.kubernetes.io` labels, and the day of a per-day object."""
    found = {"app.kubernetes.io/name": PART_OF, "app.kubernetes.io/instance": t.app,
             "app.kubernetes.io/component": component,
             "app.kubernetes.io/managed-by": PART_OF}
    if date:
        found[DATE_LABEL] = date
    return found


def selector(t: Target, component: str, date: str | None = None) -> dict[str, str]:
    """The labels that select a component's pods (not `managed-by`, which may change)."""
    return {k: v for k, v in labels(t, component, date).items()
            if k != "app.kubernetes.io/managed-by"}


def metadata(t: Target, name: str, component: str, date: str | None = None,
             annotations: dict[str, str] | None = None) -> dict[str, Any]:
    """`metadata` of a namespaced object."""
    meta: dict[str, Any] = {"name": name, "namespace": t.namespace,
                            "labels": labels(t, component, date)}
    if annotations:
        meta["annotations"] = dict(annotations)
    return meta


def project_config_map(t: Target) -> dict[str, Any]:
    """The ConfigMap holding the config every step reads, mounted at `CONFIG_FILE`.

    It holds the config as loaded and validated (paths resolved, defaults filled in), so a pod
    reads exactly what was checked here.
    """
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": metadata(t, f"{t.app}-config", "config"),
            "data": {CONFIG_KEY: t.config.to_yaml()}}


def resources(spec: Resources, gpus: int = 0) -> dict[str, Any]:
    """Requests and limits (limits default to the requests); GPUs in both, as required."""
    requests: dict[str, Any] = {"cpu": spec.cpu, "memory": spec.memory}
    limits: dict[str, Any] = {"cpu": spec.cpu_limit or spec.cpu,
                              "memory": spec.memory_limit or spec.memory}
    if gpus:
        requests["nvidia.com/gpu"] = limits["nvidia.com/gpu"] = gpus
    return {"requests": requests, "limits": limits}


def run_id_env(label: str) -> dict[str, Any]:
    """`MULTITOWER_RUN_ID` from a pod label the controller sets (the downward API).

    Every pod of one Job (or TFJob) gets the same value, so a relaunched pod takes back the
    lease its predecessor held (`multitower/lease.py`).
    """
    return {"name": RUN_ID_VARIABLE,
            "valueFrom": {"fieldRef": {"fieldPath": f"metadata.labels['{label}']"}}}


def project_container(t: Target, name: str, args: list[str], spec: Resources, *,
                      gpus: int = 0, env: list[dict[str, Any]] | None = None,
                      ports: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """A container of the project image running `multitower <args>`.

    Environment: the scratch folders, then `k8s.env`, then `env`; credentials come only from
    the Secret, through `envFrom`.
    """
    k8s = t.k8s
    image = k8s.gpu_image if gpus and k8s.gpu_image else k8s.image
    variables = scratch_environment() + [{"name": k, "value": v} for k, v in k8s.env.items()]
    container: dict[str, Any] = {
        "name": name, "image": image, "imagePullPolicy": k8s.image_pull_policy,
        "command": ["multitower"], "args": list(args), "workingDir": SCRATCH_DIR,
        "env": variables + list(env or [])}
    if k8s.credentials_secret:
        container["envFrom"] = [{"secretRef": {"name": k8s.credentials_secret}}]
    if ports:
        container["ports"] = ports
    container["resources"] = resources(spec, gpus)
    container["securityContext"] = container_security_context()
    container["volumeMounts"] = (
        [{"name": CONFIG_VOLUME, "mountPath": CONFIG_DIR, "readOnly": True}]
        + scratch_mounts() + user_mounts(t))
    return container


def user_mounts(t: Target, read_only: bool = False) -> list[dict[str, Any]]:
    """The `k8s.volumes` mounts (all read-only when `read_only`)."""
    return [{"name": v.name, "mountPath": v.mount_path, "readOnly": read_only or v.read_only}
            for v in t.k8s.volumes]


def user_volumes(t: Target, read_only: bool = False) -> list[dict[str, Any]]:
    """The `k8s.volumes` claims."""
    return [{"name": v.name, "persistentVolumeClaim": {
        "claimName": v.claim, "readOnly": read_only or v.read_only}} for v in t.k8s.volumes]


def pod_spec(t: Target, containers: list[dict[str, Any]], placement: Placement, *,
             restart_policy: str, scratch: str, service_account: str | None = None,
             api_access: bool = False, config_volume: bool = True,
             read_only_volumes: bool = False) -> dict[str, Any]:
    """A pod spec: security context, scheduling, volumes; the API token only if asked.

    Args:
        t: The target.
        containers: The containers.
        placement: The step's settings (its `node_selector` and `tolerations`), added to the
            section-wide ones.
        restart_policy: `Never`, `OnFailure` or `Always`.
        scratch: Size limit of the scratch `emptyDir`.
        service_account: The pod's ServiceAccount; default `k8s.service_account`.
        api_access: Mount the ServiceAccount token (only the daily submitter talks to the API).
        config_volume: Mount the project's config ConfigMap.
        read_only_volumes: Mount `k8s.volumes` read-only (serving).
    """
    k8s = t.k8s
    spec: dict[str, Any] = {
        "restartPolicy": restart_policy,
        "automountServiceAccountToken": api_access,
        "enableServiceLinks": False,  # no Docker-link variables for every Service in the namespace
        "securityContext": pod_security_context(k8s),
        "containers": containers,
    }
    account = service_account or k8s.service_account
    if account:
        spec["serviceAccountName"] = account
    if k8s.image_pull_secrets:
        spec["imagePullSecrets"] = [{"name": s} for s in k8s.image_pull_secrets]
    if k8s.priority_class:
        spec["priorityClassName"] = k8s.priority_class
    node_selector = {**k8s.node_selector, **placement.node_selector}
    if node_selector:
        spec["nodeSelector"] = node_selector
    tolerations = [_toleration(x) for x in [*k8s.tolerations, *placement.tolerations]]
    if tolerations:
        spec["tolerations"] = tolerations
    volumes = [scratch_volume(scratch)] + user_volumes(t, read_only_volumes)
    if config_volume:
        volumes.insert(0, {"name": CONFIG_VOLUME,
                           "configMap": {"name": f"{t.app}-config"}})
    spec["volumes"] = volumes
    return spec


def _toleration(toleration: Toleration) -> dict[str, Any]:
    found: dict[str, Any] = {"operator": toleration.operator}
    for key, field in (("key", "key"), ("value", "value"), ("effect", "effect"),
                       ("tolerationSeconds", "toleration_seconds")):
        if getattr(toleration, field) is not None:
            found[key] = getattr(toleration, field)
    return found


def pod_failure_rules(container: str) -> list[dict[str, Any]]:
    """A Job's `podFailurePolicy` rules (they need `restartPolicy: Never`).

    - Exit code 2 is a usage error (`multitower`'s click parser): no retry can fix it.
    - A pod evicted or preempted (`DisruptionTarget`) is not the program's failure: it does
      not count against the backoff limit.
    """
    return [{"action": "FailJob",
             "onExitCodes": {"containerName": container, "operator": "In", "values": [2]}},
            {"action": "Ignore",
             "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}]
