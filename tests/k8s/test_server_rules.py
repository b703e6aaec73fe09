"""Rules the API server (and its controllers) enforce that no JSON schema states.

Schemas check types and field names; the API server's validation also checks names against
DNS rules and length limits, that a pod failure policy comes with `restartPolicy: Never`, that
an Indexed Job's counts fit, that a Deployment's selector matches its template, the CronJob's
schedule and time zone, and more. Each is checked here on every rendered object.
"""

from __future__ import annotations

import re
import zoneinfo
from decimal import Decimal

import pytest

from k8s.permissions import daily_permissions
from multitower.config.k8s import check_cron
from tests.k8s.configs import CASES, DATE, case_config, pod_templates, rendered

DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
DNS1035 = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")
LABEL_NAME = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")
PORT_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")  # IANA_SVC_NAME, <= 15
ENV_NAME = re.compile(r"[-._a-zA-Z][-._a-zA-Z0-9]*")
CONFIG_KEY = re.compile(r"[-._a-zA-Z0-9]+")
_SUFFIX = {"": 1, "m": Decimal("0.001"), "k": 10**3, "M": 10**6, "G": 10**9, "Ki": 2**10,
           "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def quantity(text) -> Decimal:
    number, suffix = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(text)).groups()
    return Decimal(number) * _SUFFIX[suffix]


def label_ok(key: str, value: str) -> bool:
    prefix, _, name = key.rpartition("/")
    return ((not prefix or (DNS_SUBDOMAIN.fullmatch(prefix) and len(prefix) <= 253))
            and LABEL_NAME.fullmatch(name) is not None and len(name) <= 63
            and LABEL_VALUE.fullmatch(value) is not None and len(value) <= 63)


def job_specs(obj):
    if obj["kind"] == "Job":
        yield obj["metadata"]["name"], obj["spec"]
    elif obj["kind"] == "CronJob":
        yield obj["metadata"]["name"], obj["spec"]["jobTemplate"]["spec"]


OBJECTS = [(case, obj) for case in CASES for obj in rendered(case)]
IDS = [f"{case}:{o['kind']}/{o['metadata']['name']}" for case, o in OBJECTS]


@pytest.mark.parametrize("case,obj", OBJECTS, ids=IDS)
def test_names_and_labels_fit_dns_rules_and_limits(case, obj):
    meta, kind = obj["metadata"], obj["kind"]
    name = meta["name"]
    assert DNS_SUBDOMAIN.fullmatch(name) and len(name) <= 253
    assert DNS_LABEL.fullmatch(meta["namespace"]) and len(meta["namespace"]) <= 63
    if kind in ("Service", "TFJob"):  # DNS-1035: starts with a letter
        assert DNS1035.fullmatch(name) and len(name) <= 63
    if kind == "Job":  # the controller puts the name in a label value on every pod
        assert len(name) <= 63
    if kind == "CronJob":  # the controller appends an 11-character suffix to each Job
        assert len(name) <= 52
    for _, template in pod_templates(obj):
        assert all(label_ok(k, v) for k, v in template["metadata"]["labels"].items())
        for c in template["spec"]["containers"]:
            assert DNS_LABEL.fullmatch(c["name"])
            for port in c.get("ports", []):
                assert PORT_NAME.fullmatch(port["name"]) and len(port["name"]) <= 15
                assert re.search("[a-z]", port["name"]) and "--" not in port["name"]
            assert all(ENV_NAME.fullmatch(e["name"]) for e in c["env"])
        for volume in template["spec"]["volumes"]:
            assert DNS_LABEL.fullmatch(volume["name"])
    assert all(label_ok(k, v) for k, v in meta["labels"].items())
    if kind == "ConfigMap":
        assert all(CONFIG_KEY.fullmatch(k) and len(k) <= 253 for k in obj["data"])
        assert sum(len(v.encode()) for v in obj["data"].values()) < 1024 * 1024


@pytest.mark.parametrize("case,obj", OBJECTS, ids=IDS)
def test_pod_templates_are_self_consistent(case, obj):
    for _, template in pod_templates(obj):
        spec = template["spec"]
        volumes = {v["name"] for v in spec["volumes"]}
        assert len(volumes) == len(spec["volumes"])
        for c in spec["containers"]:
            assert {m["name"] for m in c["volumeMounts"]} <= volumes
            paths = [m["mountPath"] for m in c["volumeMounts"]]
            assert len(set(paths)) == len(paths)
            names = [e["name"] for e in c["env"]]
            assert len(set(names)) == len(names), names
            for field in ("startupProbe", "readinessProbe", "livenessProbe"):
                if field in c:
                    port = c[field]["httpGet"]["port"]
                    assert port in {p["name"] for p in c["ports"]}
            requests, limits = c["resources"]["requests"], c["resources"]["limits"]
            for resource, amount in requests.items():
                assert quantity(amount) <= quantity(limits[resource])
            if "nvidia.com/gpu" in limits:  # extended resources: no overcommit
                assert requests.get("nvidia.com/gpu") == limits["nvidia.com/gpu"]


@pytest.mark.parametrize("case,obj", OBJECTS, ids=IDS)
def test_a_pod_failure_policy_comes_with_restart_policy_never(case, obj):
    for _, spec in job_specs(obj):
        pod = spec["template"]["spec"]
        assert pod["restartPolicy"] in ("Never", "OnFailure")
        if "podFailurePolicy" in spec:
            assert pod["restartPolicy"] == "Never"
            containers = {c["name"] for c in pod["containers"]}
            for rule in spec["podFailurePolicy"]["rules"]:
                if "onExitCodes" in rule:
                    assert rule["onExitCodes"]["containerName"] in containers
                    assert 0 not in rule["onExitCodes"]["values"]


def test_indexed_training_jobs_fit_their_workers_and_service():
    checked = 0
    for case in CASES:
        workers = case_config(case).k8s.training.workers
        objects = rendered(case)
        for obj in objects:
            if obj["kind"] != "Job" or obj["spec"].get("completionMode") != "Indexed":
                continue
            checked += 1
            spec, name = obj["spec"], obj["metadata"]["name"]
            assert spec["completions"] == spec["parallelism"] == workers
            assert len(f"{name}-{workers - 1}") <= 63  # pod i's hostname
            pod = spec["template"]["spec"]
            env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
            if workers == 1:
                assert "subdomain" not in pod and "MULTITOWER_WORKERS" not in env
                continue
            (service,) = [o for o in objects if o["kind"] == "Service"
                          and o["metadata"]["name"] == pod["subdomain"]]
            assert service["spec"]["clusterIP"] == "None"
            assert service["spec"]["publishNotReadyAddresses"] is True
            labels = spec["template"]["metadata"]["labels"]
            assert service["spec"]["selector"].items() <= labels.items()
            port = pod["containers"][0]["ports"][0]["containerPort"]
            namespace = obj["metadata"]["namespace"]
            assert env["MULTITOWER_WORKERS"].split(",") == [
                f"{name}-{i}.{pod['subdomain']}.{namespace}.svc:{port}" for i in range(workers)]
    assert checked == 4  # the example (2 workers), 1 and 4 CPU workers, 4 GPU workers


def test_tfjob_replicas_names_and_gang_settings():
    for case in CASES:
        config = case_config(case)
        for obj in rendered(case):
            if obj["kind"] != "TFJob":
                continue
            worker = obj["spec"]["tfReplicaSpecs"]["Worker"]
            workers = config.k8s.training.workers
            assert worker["replicas"] == workers
            assert worker["restartPolicy"] == worker["template"]["spec"]["restartPolicy"]
            # The operator names pod and Service i `<name>-worker-<i>` (a DNS-1035 label).
            assert len(f"{obj['metadata']['name']}-worker-{workers - 1}") <= 63
            assert [c["name"] for c in worker["template"]["spec"]["containers"]] == ["tensorflow"]
            gang = obj["spec"]["runPolicy"].get("schedulingPolicy")
            if config.k8s.training.gang is not None:
                assert gang["minAvailable"] == workers
                assert worker["template"]["spec"]["schedulerName"] == "volcano"


@pytest.mark.parametrize("case", CASES)
def test_selectors_match_the_pods_they_select(case):
    objects = rendered(case)
    by_kind = {}
    for obj in objects:
        by_kind.setdefault(obj["kind"], []).append(obj)
    (deployment,) = by_kind["Deployment"]
    template_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= template_labels.items()
    (budget,) = by_kind["PodDisruptionBudget"]
    assert budget["spec"]["selector"]["matchLabels"].items() <= template_labels.items()
    (hpa,) = by_kind["HorizontalPodAutoscaler"]
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    assert budget["spec"]["minAvailable"] < hpa["spec"]["minReplicas"]
    pods = [t["metadata"]["labels"] for o in objects for _, t in pod_templates(o)]
    for service in by_kind["Service"]:
        selected = [p for p in pods if service["spec"]["selector"].items() <= p.items()]
        assert len(selected) == 1, service["metadata"]["name"]  # exactly one template
        if service["spec"].get("clusterIP") != "None":
            ports = {p["name"] for p in deployment["spec"]["template"]["spec"]["containers"][0]
                     ["ports"]}
            assert {p["targetPort"] for p in service["spec"]["ports"]} <= ports
    config_maps = {o["metadata"]["name"] for o in by_kind["ConfigMap"]}
    for obj in objects:
        for _, template in pod_templates(obj):
            for volume in template["spec"]["volumes"]:
                if "configMap" in volume:
                    assert volume["configMap"]["name"] in config_maps


@pytest.mark.parametrize("case", CASES)
def test_cron_schedule_time_zone_and_history(case):
    (cron,) = [o for o in rendered(case) if o["kind"] == "CronJob"]
    spec = cron["spec"]
    assert check_cron(spec["schedule"]) == spec["schedule"]
    assert spec["timeZone"] != "Local" and zoneinfo.ZoneInfo(spec["timeZone"])
    assert spec["concurrencyPolicy"] == "Forbid"
    assert spec["startingDeadlineSeconds"] > 0
    assert spec["successfulJobsHistoryLimit"] >= 0 and spec["failedJobsHistoryLimit"] >= 0
    container = spec["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    assert container["args"][:2] == ["submit", "daily"]
    assert container["args"][-2:] == ["--date", "yesterday"]


@pytest.mark.parametrize("case", CASES)
def test_the_daily_role_grants_exactly_the_listed_calls(case):
    objects = rendered(case)
    (role,) = [o for o in objects if o["kind"] == "Role"]
    (binding,) = [o for o in objects if o["kind"] == "RoleBinding"]
    (account,) = [o for o in objects if o["kind"] == "ServiceAccount"]
    (cron,) = [o for o in objects if o["kind"] == "CronJob"]
    config = case_config(case)
    granted = {(r["apiGroups"][0], r["resources"][0], tuple(r["verbs"]),
                tuple(r.get("resourceNames", []))) for r in role["rules"]}
    assert granted == {(p.api_group, p.resource, p.verbs, p.resource_names)
                       for p in daily_permissions(config, "impressions")}
    for rule in role["rules"]:
        assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"]
        assert not {"delete", "deletecollection", "update", "escalate", "bind"} & set(
            rule["verbs"])
    kinds = {r["resources"][0] for r in role["rules"]}
    assert ("tfjobs" in kinds) == (config.k8s.training.kind == "tfjob")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account["metadata"]["name"],
                                    "namespace": role["metadata"]["namespace"]}]
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == account["metadata"]["name"]
    (patched,) = [r for r in role["rules"] if r["resources"] == ["configmaps"]]
    served = [o for o in objects if o["kind"] == "ConfigMap"
              and o["metadata"]["name"] in patched["resourceNames"]]
    assert served and "models.config" in served[0]["data"]


def test_every_object_carries_the_date_only_when_it_is_per_day():
    for obj in rendered("example"):
        per_day = obj["metadata"]["name"].endswith(DATE)
        assert (obj["metadata"]["labels"].get("multitower/date") == DATE) is per_day
