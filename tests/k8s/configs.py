"""Configs the Kubernetes tests render, and what they render (built once per test session).

Every case starts from `examples/impressions-k8s.yaml` and changes what the objects depend on:
CPU or GPU workers, 1 or 4 of them, an Indexed Job or a TFJob, S3 or GCS paths, optional
scheduling settings. `rendered(case)` is every object of every step for that case.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Iterator
from typing import Any

import yaml

from multitower.config import Config, parse_config
from tests.small_project import REPO

EXAMPLE_K8S = REPO / "examples" / "impressions-k8s.yaml"
CRD = REPO / "k8s" / "crds" / "kubeflow.org_tfjobs.yaml"
DATE = "2026-03-01"
VERSIONS = [1, 2]


def example_raw() -> dict[str, Any]:
    """The example config as parsed YAML (a fresh copy to change)."""
    return yaml.safe_load(EXAMPLE_K8S.read_text())


def gcs_paths(raw: dict[str, Any]) -> None:
    """Every storage path on gs:// (TF Serving reads gs:// itself, so no volume is needed)."""
    raw["data"].update(logs="gs://recsys-logs/impressions/dt={date}",
                       tfrecords="gs://recsys-mt/tfrecords", rejected="gs://recsys-mt/rejected")
    raw["train"].update(model_dir="gs://recsys-mt/model", export_dir="gs://recsys-mt/export")
    raw["k8s"]["volumes"] = []
    raw["k8s"].pop("credentials_secret")  # GCS: the pods' identity, not keys
    raw["k8s"]["env"] = {}
    raw["k8s"]["service_account"] = "multitower-gcs"
    raw["k8s"]["daily"]["service_account_annotations"] = {
        "iam.gke.io/gcp-service-account": "multitower@recsys.iam.gserviceaccount.com"}


def _case(name: str) -> dict[str, Any]:
    raw = example_raw()
    k8s = raw["k8s"]
    if name == "cpu-s3-1-job":
        k8s["training"]["workers"] = 1
    elif name == "cpu-s3-4-job":
        k8s["training"]["workers"] = 4
    elif name == "gpu-gcs-4-job":
        gcs_paths(raw)
        k8s["training"].update(workers=4, resources={
            "cpu": "8", "memory": "32Gi", "gpus": 1, "memory_limit": "40Gi"})
        k8s["training"]["node_selector"] = {"cloud.google.com/gke-accelerator": "nvidia-l4"}
        k8s["training"]["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists",
                                           "effect": "NoSchedule"}]
    elif name == "gpu-gcs-1-tfjob":
        gcs_paths(raw)
        k8s["training"].update(kind="tfjob", workers=1,
                               resources={"cpu": "8", "memory": "32Gi", "gpus": 2})
    elif name == "cpu-s3-4-tfjob-gang":
        # Exports on S3 too, served by a custom image that reads s3:// (the official one cannot).
        raw["train"]["export_dir"] = "s3://recsys-multitower/impressions/export"
        k8s["volumes"] = []
        k8s["serving"]["image"] = "registry.example.com/recsys/tf-serving-s3:2.16.1"
        k8s["training"].update(kind="tfjob", workers=4, gang={
            "queue": "recsys", "scheduler_name": "volcano", "schedule_timeout_seconds": 600})
        k8s.update(priority_class="batch-high", image_pull_secrets=["registry"],
                   node_selector={"pool": "batch"},
                   tolerations=[{"key": "dedicated", "value": "batch",
                                 "effect": "NoExecute", "toleration_seconds": 300}])
        k8s["preprocess"]["beam_args"] = ["--runner=FlinkRunner", "--flink_master=flink:8081",
                                          "--environment_type=LOOPBACK"]
        k8s["preprocess"]["active_deadline_seconds"] = 7200
        k8s["training"]["active_deadline_seconds"] = 36000
        k8s["daily"]["active_deadline_seconds"] = 72000
    elif name != "example":
        raise ValueError(name)
    return raw


CASES = ["example", "cpu-s3-1-job", "cpu-s3-4-job", "gpu-gcs-4-job", "gpu-gcs-1-tfjob",
         "cpu-s3-4-tfjob-gang"]


@functools.cache
def case_config(name: str) -> Config:
    """The config of case `name`."""
    return parse_config(_case(name), f"{name}.yaml")


@functools.cache
def serving_inputs(name: str) -> Any:
    """TF Serving's files and command for the case, built by the serving stage."""
    from k8s.render import ServingInputs
    from k8s.serving import SERVING_CONFIG_DIR
    from serving.tfs_config import build_serving_files

    built = build_serving_files(case_config(name), SERVING_CONFIG_DIR, VERSIONS)
    return ServingInputs(built.files, built.command)


@functools.cache
def _rendered(name: str) -> str:
    from k8s.render import STEPS, render

    objects = render(case_config(name), STEPS, DATE, serving_inputs(name))
    return yaml.safe_dump_all(objects)  # kept as text: every caller gets its own copy


def rendered(name: str) -> list[dict[str, Any]]:
    """Every object of every step of case `name` (a fresh copy)."""
    return list(yaml.safe_load_all(_rendered(name)))


def all_objects() -> Iterator[tuple[str, dict[str, Any]]]:
    """(case, object) for every case."""
    for name in CASES:
        for obj in rendered(name):
            yield name, obj


def pod_templates(obj: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, pod template) of every pod an object makes."""
    kind, spec = obj["kind"], obj.get("spec", {})
    where = f"{kind}/{obj['metadata']['name']}"
    if kind in ("Job", "Deployment"):
        yield where, spec["template"]
    elif kind == "CronJob":
        yield where, spec["jobTemplate"]["spec"]["template"]
    elif kind == "TFJob":
        for replica, replica_spec in spec["tfReplicaSpecs"].items():
            yield f"{where}/{replica}", replica_spec["template"]


def crd_schema() -> dict[str, Any]:
    """The TFJob CRD's `openAPIV3Schema` (version v1)."""
    crd = yaml.safe_load(CRD.read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return copy.deepcopy(version["schema"]["openAPIV3Schema"])
