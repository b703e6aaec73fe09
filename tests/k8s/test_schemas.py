"""Every rendered object against its schema: Kubernetes' own (strict) and the TFJob CRD's.

`kubernetes-validate` checks Kubernetes' kinds against their OpenAPI schemas (strict: unknown
fields are errors) for 1.29 and 1.33. It has no schema for the TFJob, which is checked against
the Kubeflow CRD's `openAPIV3Schema` with jsonschema; that schema does not forbid unknown
fields (the API server prunes them silently), so a walk of its properties refuses them.
"""

from __future__ import annotations

from typing import Any

import jsonschema
import kubernetes_validate
import pytest
from kubernetes_validate.utils import all_versions

from tests.k8s.configs import CASES, crd_schema, pod_templates, rendered

VERSIONS = ("1.29", "1.33")


def unknown_fields(value: Any, schema: dict[str, Any], path: str = "") -> list[str]:
    """Paths in `value` that `schema` does not declare (what structural pruning would drop)."""
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return []
    if isinstance(value, dict):
        declared = schema.get("properties")
        other = schema.get("additionalProperties")
        found = []
        for key, item in value.items():
            if declared is not None and key in declared:
                found += unknown_fields(item, declared[key], f"{path}.{key}")
            elif isinstance(other, dict):
                found += unknown_fields(item, other, f"{path}.{key}")
            else:
                found.append(f"{path}.{key}")
        return found
    if isinstance(value, list):
        items = schema.get("items", {})
        return [f for i, item in enumerate(value)
                for f in unknown_fields(item, items, f"{path}[{i}]")]
    return []


def check_tfjob(obj: dict[str, Any], schema: dict[str, Any]) -> None:
    """Validates a TFJob: the CRD schema, no undeclared field, and Kubernetes' own parts."""
    jsonschema.Draft7Validator(schema).validate(obj)
    body = {k: v for k, v in obj.items() if k != "metadata"}  # ObjectMeta: checked below
    assert unknown_fields(body, schema) == []
    for version in VERSIONS:
        # The API server validates a custom resource's metadata as ObjectMeta, and the
        # operator creates pods from the templates: both checked with Kubernetes' schemas.
        kubernetes_validate.validate({"apiVersion": "v1", "kind": "ConfigMap",
                                      "metadata": obj["metadata"]}, version, strict=True)
        for _, template in pod_templates(obj):
            kubernetes_validate.validate({"apiVersion": "v1", "kind": "PodTemplate",
                                          "metadata": {"name": obj["metadata"]["name"]},
                                          "template": template}, version, strict=True)


def test_both_versions_have_schemas():
    known = {v.rsplit(".", 1)[0] for v in all_versions()}
    assert set(VERSIONS) <= known


@pytest.mark.parametrize("case", CASES)
def test_every_object_passes_kubernetes_schemas_strictly(case):
    kinds = set()
    for obj in rendered(case):
        kinds.add(obj["kind"])
        if obj["kind"] == "TFJob":
            with pytest.raises(kubernetes_validate.SchemaNotFoundError):
                kubernetes_validate.validate(obj, "1.33", strict=True)
            continue
        for version in VERSIONS:
            kubernetes_validate.validate(obj, version, strict=True)
    assert {"ConfigMap", "Job", "CronJob", "Role", "RoleBinding", "ServiceAccount",
            "Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"} <= kinds


def test_strict_validation_would_catch_a_misspelt_field():
    (job,) = [o for o in rendered("example") if o["metadata"]["name"].endswith("-train-2026-03-01")
              and o["kind"] == "Job"]
    job["spec"]["template"]["spec"]["containers"][0]["resource"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(job, "1.33", strict=True)


@pytest.mark.parametrize("case", [c for c in CASES if "tfjob" in c])
def test_the_tfjob_passes_the_crd_schema_and_declares_every_field(case):
    schema = crd_schema()
    (tfjob,) = [o for o in rendered(case) if o["kind"] == "TFJob"]
    check_tfjob(tfjob, schema)


def test_the_walk_refuses_what_the_crd_schema_lets_through():
    schema = crd_schema()
    (tfjob,) = [o for o in rendered("cpu-s3-4-tfjob-gang") if o["kind"] == "TFJob"]
    tfjob["spec"]["runPolicy"]["backoffLimits"] = 3  # misspelt: pruned by the API server
    worker = tfjob["spec"]["tfReplicaSpecs"]["Worker"]
    worker["template"]["spec"]["containers"][0]["gpus"] = 1
    worker["template"]["spec"]["schedulingGates"] = [{"name": "x"}]  # known: declared
    jsonschema.Draft7Validator(schema).validate(tfjob)  # the schema alone accepts both
    body = {k: v for k, v in tfjob.items() if k != "metadata"}
    assert unknown_fields(body, schema) == [
        ".spec.runPolicy.backoffLimits",
        ".spec.tfReplicaSpecs.Worker.template.spec.containers[0].gpus"]


def test_a_wrong_type_in_the_tfjob_is_refused_by_the_crd_schema():
    schema = crd_schema()
    (tfjob,) = [o for o in rendered("gpu-gcs-1-tfjob") if o["kind"] == "TFJob"]
    tfjob["spec"]["tfReplicaSpecs"]["Worker"]["replicas"] = "one"
    with pytest.raises(jsonschema.ValidationError, match="'one' is not of type 'integer'"):
        jsonschema.Draft7Validator(schema).validate(tfjob)
