"""Serving: the official TF Serving image as a Deployment, with its files in a ConfigMap.

TF Serving's files (`models.config`, `batching_parameters.txt`, `monitoring.config`) and its
command line are built by the serving stage (`serving/tfs_config.py`), which this stage may not
import: the command layer builds them for `SERVING_CONFIG_DIR` and passes them in. The
ConfigMap is mounted as a folder (not with `subPath`), so when the daily run patches
`models.config` the kubelet swaps the file in place and TF Serving, polling it every
`serving.config_poll_seconds`, moves its labels without a restart. The other two files are read
only at start: their checksum is a pod annotation, so changing them rolls the Deployment.

Probes use the REST status endpoint `GET /v1/models/<name>`. TF Serving opens its ports only
after the versions of its initial config have loaded (`ServerCore::Create` waits for them, then
`Server::BuildAndStart` starts gRPC and REST), so a generous startup probe covers loading and
warmup, after which readiness and liveness ask the same endpoint (200 while any version of the
model is known).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

from k8s.objects import (
    SERVING_CONFIG_DIR,
    SERVING_CONFIG_VOLUME,
    Target,
    labels,
    metadata,
    pod_spec,
    resources,
    selector,
    user_mounts,
)
from k8s.permissions import serving_config_map_name
from k8s.security import container_security_context, scratch_environment, scratch_mounts
from k8s.storage import refuse
from multitower.config.k8s import ServingSettings

CONTAINER = "tensorflow-serving"
OFFICIAL_IMAGE = "tensorflow/serving"
# Files TF Serving reads again while running (polled); the others only at start.
POLLED_FILES = ("models.config",)
PROBE_PERIOD_SECONDS = 10


def check_serving(t: Target) -> None:
    """Refuses a config TF Serving cannot run from on the cluster (before building its files).

    Raises:
        K8sError: The official image cannot read the export folder (s3://), or TF Serving
            would never re-read the labels (`serving.config_poll_seconds: 0`).
    """
    config = t.config
    export_dir = config.train.export_dir
    image = t.k8s.serving.image
    if export_dir.startswith("s3://") and image.split(":")[0].split("@")[0] == OFFICIAL_IMAGE:
        raise refuse(config, "train.export_dir",
                     f"{export_dir!r} is on S3, which the official {OFFICIAL_IMAGE} image cannot "
                     f"read since 2.7 (tensorflow/serving#1963: \"File system scheme 's3' not "
                     f"implemented\"); export to gs:// or to a volume in k8s.volumes, or set "
                     f"k8s.serving.image to an image built with S3 support")
    if config.serving.config_poll_seconds == 0:
        raise refuse(config, "serving.config_poll_seconds",
                     "is 0: TF Serving would read models.config once, and never see the labels "
                     "the daily run moves; set it to e.g. 60")


def _check_command(files: Mapping[str, str], command: Sequence[str]) -> None:
    for arg in command[1:]:
        flag, _, value = arg.partition("=")
        if flag.endswith("_file") and value.startswith(SERVING_CONFIG_DIR + "/") \
                and value.rpartition("/")[2] not in files:
            raise ValueError(f"{flag} names {value}, which is not among the serving files "
                             f"{sorted(files)}")


def serving_config_map(t: Target, files: Mapping[str, str]) -> dict[str, Any]:
    """TF Serving's files, mounted at `SERVING_CONFIG_DIR`; the daily run patches it."""
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": metadata(t, serving_config_map_name(t.app), "serving"),
            "data": dict(files)}


def _probe(path: str, settings: ServingSettings, kind: str) -> dict[str, Any]:
    probe: dict[str, Any] = {"httpGet": {"path": path, "port": "http"},
                             "periodSeconds": PROBE_PERIOD_SECONDS, "timeoutSeconds": 5}
    if kind == "startup":  # loading and warmup of every served version, once
        probe["failureThreshold"] = -(-settings.startup_seconds // PROBE_PERIOD_SECONDS)
    elif kind == "liveness":
        probe["failureThreshold"] = 6  # a minute of silence: stuck, restart it
    else:
        probe["failureThreshold"] = 2  # out of the Service quickly
    return probe


def deployment(t: Target, files: Mapping[str, str], command: Sequence[str]) -> dict[str, Any]:
    """The TF Serving Deployment; its replica count is left to the HorizontalPodAutoscaler."""
    settings = t.k8s.serving
    serving = t.config.serving
    model = serving.model_name or t.config.model.name
    status = f"/v1/models/{model}"
    container: dict[str, Any] = {
        "name": CONTAINER, "image": settings.image,
        "imagePullPolicy": t.k8s.image_pull_policy,
        # The binary itself, not the image's entrypoint script (which adds --model_name and
        # --model_base_path, for one model without a config file).
        "command": [command[0]], "args": list(command[1:]),
        "workingDir": "/scratch",
        "env": scratch_environment(python=False)
        + [{"name": k, "value": v} for k, v in t.k8s.env.items()],
    }
    if t.k8s.credentials_secret:  # object storage credentials, to read the exports
        container["envFrom"] = [{"secretRef": {"name": t.k8s.credentials_secret}}]
    container.update({
        "ports": [{"name": "grpc", "containerPort": serving.grpc_port, "protocol": "TCP"},
                  {"name": "http", "containerPort": serving.rest_port, "protocol": "TCP"}],
        "startupProbe": _probe(status, settings, "startup"),
        "readinessProbe": _probe(status, settings, "readiness"),
        "livenessProbe": _probe(status, settings, "liveness"),
        "resources": resources(settings.resources),
        "securityContext": container_security_context(),
        "volumeMounts": [{"name": SERVING_CONFIG_VOLUME, "mountPath": SERVING_CONFIG_DIR,
                          "readOnly": True}] + scratch_mounts() + user_mounts(t, True),
    })
    pod = pod_spec(t, [container], settings, restart_policy="Always",
                   scratch=settings.resources.scratch, config_volume=False,
                   read_only_volumes=True)
    pod["volumes"].insert(0, {"name": SERVING_CONFIG_VOLUME,
                              "configMap": {"name": serving_config_map_name(t.app)}})
    digest = hashlib.sha256("".join(
        f"{name}\n{text}" for name, text in sorted(files.items()) if name not in POLLED_FILES
    ).encode()).hexdigest()[:16]
    annotations = {"multitower/serving-files-checksum": digest}
    if serving.monitoring.prometheus:
        annotations.update({"prometheus.io/scrape": "true",
                            "prometheus.io/port": str(serving.rest_port),
                            "prometheus.io/path": serving.monitoring.path})
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": metadata(t, f"{t.app}-serving", "serving"),
            "spec": {
                "selector": {"matchLabels": selector(t, "serving")},
                "revisionHistoryLimit": 5,
                # A new pod serves (startup probe passed) before an old one goes.
                "strategy": {"type": "RollingUpdate",
                             "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
                "template": {"metadata": {"labels": labels(t, "serving"),
                                          "annotations": annotations},
                             "spec": pod},
            }}


def service(t: Target) -> dict[str, Any]:
    """The Service clients call: gRPC and REST."""
    serving = t.config.serving
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": metadata(t, f"{t.app}-serving", "serving"),
            "spec": {"type": "ClusterIP", "selector": selector(t, "serving"),
                     "ports": [{"name": "grpc", "port": serving.grpc_port,
                                "targetPort": "grpc", "protocol": "TCP"},
                               {"name": "http", "port": serving.rest_port,
                                "targetPort": "http", "protocol": "TCP"}]}}


def autoscaler(t: Target) -> dict[str, Any]:
    """An `autoscaling/v2` HorizontalPodAutoscaler on CPU use (against the requests)."""
    settings = t.k8s.serving
    name = f"{t.app}-serving"
    return {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
            "metadata": metadata(t, name, "serving"),
            "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment",
                                        "name": name},
                     "minReplicas": settings.min_replicas,
                     "maxReplicas": settings.max_replicas,
                     "metrics": [{"type": "Resource", "resource": {
                         "name": "cpu", "target": {
                             "type": "Utilization",
                             "averageUtilization": settings.target_cpu_utilization}}}]}}


def disruption_budget(t: Target) -> dict[str, Any]:
    """A `policy/v1` PodDisruptionBudget: node drains keep `min_available` pods serving."""
    return {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
            "metadata": metadata(t, f"{t.app}-serving", "serving"),
            "spec": {"minAvailable": t.k8s.serving.min_available,
                     "selector": {"matchLabels": selector(t, "serving")}}}


def serving_objects(t: Target, files: Mapping[str, str], command: Sequence[str]
                    ) -> list[dict[str, Any]]:
    """ConfigMap, Deployment, Service, HorizontalPodAutoscaler and PodDisruptionBudget.

    Args:
        t: The target.
        files: TF Serving's files, name -> text (`serving.tfs_config.build_serving_files`,
            written for `SERVING_CONFIG_DIR`).
        command: The `tensorflow_model_server` command line that reads them.

    Raises:
        K8sError: The official image cannot read the export folder (s3://), or TF Serving
            would never re-read the labels (`serving.config_poll_seconds: 0`).
        ValueError: `command` names a file under `SERVING_CONFIG_DIR` that `files` lacks.
    """
    check_serving(t)
    _check_command(files, command)
    return [serving_config_map(t, files), deployment(t, files, command), service(t),
            autoscaler(t), disruption_budget(t)]
