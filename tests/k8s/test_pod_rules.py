"""Every pod template: the "restricted" Pod Security Standard, scratch space, resources, secrets.

The rules are those of kubernetes.io/docs/concepts/security/pod-security-standards (restricted,
latest), checked here independently of the code that renders the pods; on top of them, the
root file system is read-only and every default write location points into the scratch
`emptyDir`.
"""

from __future__ import annotations

import re

import pytest
import yaml

from k8s.security import SCRATCH_ENV
from multitower.config.k8s import CREDENTIAL_NAME
from tests.k8s.configs import CASES, DATE, case_config, pod_templates, rendered, serving_inputs

# Volume types the restricted profile allows.
ALLOWED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral",
                   "persistentVolumeClaim", "projected", "secret"}
ALLOWED_ADDED_CAPABILITIES = {"NET_BIND_SERVICE"}


def _pods():
    for case in CASES:
        for obj in rendered(case):
            for where, template in pod_templates(obj):
                yield f"{case}:{where}", template["spec"]


PODS = list(_pods())


def test_every_kind_of_pod_is_checked():
    kinds = {where.split(":")[1].split("/")[0] for where, _ in PODS}
    assert kinds == {"Job", "CronJob", "Deployment", "TFJob"}


@pytest.mark.parametrize("where,pod", PODS, ids=[w for w, _ in PODS])
def test_restricted_pod_security_standard(where, pod):
    pod_context = pod.get("securityContext", {})
    for flag in ("hostNetwork", "hostPID", "hostIPC", "hostUsers"):
        assert not pod.get(flag), flag
    containers = pod["containers"] + pod.get("initContainers", [])
    for volume in pod.get("volumes", []):
        kinds = set(volume) - {"name"}
        assert kinds <= ALLOWED_VOLUMES, (volume["name"], kinds)
    for c in containers:
        context = c.get("securityContext", {})
        assert not context.get("privileged")
        assert context.get("allowPrivilegeEscalation") is False
        non_root = context.get("runAsNonRoot", pod_context.get("runAsNonRoot"))
        assert non_root is True
        assert context.get("runAsUser", pod_context.get("runAsUser")) not in (0, None)
        seccomp = context.get("seccompProfile", pod_context.get("seccompProfile", {}))
        assert seccomp.get("type") in ("RuntimeDefault", "Localhost")
        capabilities = context.get("capabilities", {})
        assert "ALL" in capabilities.get("drop", [])
        assert set(capabilities.get("add", [])) <= ALLOWED_ADDED_CAPABILITIES
        assert all("hostPort" not in p for p in c.get("ports", []))
        assert context.get("procMount", "Default") == "Default"
        # Beyond the profile: nothing writes to the image.
        assert context.get("readOnlyRootFilesystem") is True


@pytest.mark.parametrize("where,pod", PODS, ids=[w for w, _ in PODS])
def test_every_write_location_is_on_the_scratch_volume(where, pod):
    (scratch,) = [v for v in pod["volumes"] if v["name"] == "scratch"]
    assert scratch["emptyDir"]["sizeLimit"]
    for c in pod["containers"]:
        mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
        assert mounts["/scratch"]["name"] == "scratch"
        assert mounts["/tmp"]["name"] == "scratch"  # for code that ignores TMPDIR
        env = {e["name"]: e.get("value") for e in c["env"]}
        for name in SCRATCH_ENV:
            assert env[name] == "/scratch" or env[name].startswith("/scratch/"), name
        assert c["workingDir"] == "/scratch"
        writable = {m["mountPath"] for m in c["volumeMounts"] if not m.get("readOnly")}
        assert writable <= {"/scratch", "/tmp", "/exports"}


@pytest.mark.parametrize("where,pod", PODS, ids=[w for w, _ in PODS])
def test_every_container_has_requests_and_limits(where, pod):
    for c in pod["containers"]:
        for part in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(c["resources"][part]), (c["name"], part)


@pytest.mark.parametrize("where,pod", PODS, ids=[w for w, _ in PODS])
def test_credentials_come_only_from_a_secret_reference(where, pod):
    for c in pod["containers"]:
        for entry in c["env"]:
            assert "secretKeyRef" not in entry.get("valueFrom", {})
            if "value" in entry:
                assert not CREDENTIAL_NAME.search(entry["name"]), entry["name"]
        for source in c.get("envFrom", []):
            assert set(source) == {"secretRef"}
    assert all("secret" not in v for v in pod["volumes"])


@pytest.mark.parametrize("where,pod", PODS, ids=[w for w, _ in PODS])
def test_only_the_daily_submitter_gets_an_api_token(where, pod):
    assert pod["automountServiceAccountToken"] is ("CronJob" in where)


def test_secret_values_in_the_environment_never_reach_the_yaml(monkeypatch):
    from k8s.render import STEPS, render, to_yaml

    values = {"AWS_SECRET_ACCESS_KEY": "sentinel-secret-9f2c", "AWS_ACCESS_KEY_ID": "AKIA-sentinel",
              "AWS_SESSION_TOKEN": "sentinel-token-77"}
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    for case in ("example", "gpu-gcs-4-job"):
        text = "".join(to_yaml(o) for o in render(case_config(case), STEPS, DATE,
                                                  serving_inputs(case)))
        assert not any(v in text for v in values.values())
        assert re.search(r"^kind: Secret$", text, re.MULTILINE) is None


def test_the_secret_is_named_not_copied():
    pods = [pod for where, pod in PODS if where.startswith("example:")]
    assert pods
    for pod in pods:
        assert pod["containers"][0]["envFrom"] == [{"secretRef": {"name": "multitower-storage"}}]
    config_map = next(o for o in rendered("example") if o["metadata"]["name"].endswith("-config"))
    embedded = yaml.safe_load(config_map["data"]["config.yaml"])
    assert embedded["k8s"]["credentials_secret"] == "multitower-storage"
