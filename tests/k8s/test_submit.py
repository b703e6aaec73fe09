"""`multitower submit` for one step, against the Kubernetes API double on loopback.

Each test scripts what the cluster does (`tests/k8s/api_double.py`) and checks what the command
sent (the double records method, path, query and body of every call), what it printed, and its
exit code: 0 done, 1 the job failed, 2 bad usage or config.
"""

from __future__ import annotations

import socket

import pytest
import yaml

from k8s.objects import target
from k8s.render import step_objects
from k8s.watch import pod_reason
from multitower.config import load_config
from tests.k8s.api_double import KubeApiDouble, expire, finish, pod, write_kubeconfig
from tests.k8s.configs import DATE
from tests.k8s.submit_cli import NS, PREPROCESS, TRAIN, submit, success, write_config

pytestmark = pytest.mark.integration  # an HTTP server on loopback


@pytest.fixture
def double():
    server = KubeApiDouble()
    yield server
    server.close()


@pytest.fixture
def kubeconfig(double, tmp_path):
    return double.write_kubeconfig(tmp_path / "kubeconfig", NS)


@pytest.fixture
def config(tmp_path):
    return write_config(tmp_path)


def _rendered(config, step, date=DATE):
    return step_objects(target(load_config(config)), step, date)


def test_dry_run_prints_the_objects_and_sends_nothing(tmp_path, double, config, monkeypatch):
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))  # no client config needed
    result = submit(tmp_path / "missing", "train", "--config", config, "--date", DATE,
                    "--dry-run")
    assert result.exit_code == 0, result.output
    docs = list(yaml.safe_load_all(result.stdout))
    assert docs == _rendered(config, "train")
    assert [d["kind"] for d in docs] == ["ConfigMap", "Service", "Job"]
    assert "# apply (server-side): ConfigMap recsys/impressions-config" in result.stdout
    assert f"# create (after the Job, owned by it): Service recsys/{TRAIN}" in result.stdout
    result = submit(tmp_path / "missing", "serving", "--config", config, "--versions", "1,2",
                    "--dry-run")
    assert result.exit_code == 0, result.output
    kinds = [d["kind"] for d in yaml.safe_load_all(result.stdout)]
    assert kinds == ["ConfigMap", "Deployment", "Service", "HorizontalPodAutoscaler",
                     "PodDisruptionBudget"]
    assert double.calls == []


def test_a_job_that_succeeds_exits_0_after_showing_its_pods(double, kubeconfig, config):
    double.script(PREPROCESS, [*success(log=("reading", "written 60000 rows")), finish()])
    result = submit(kubeconfig, "preprocess", "--config", config, "--date", DATE, "--wait")
    assert result.exit_code == 0, result.output
    for shown in ("1 pending, 0 running", "0 pending, 1 running", "1 succeeded, 0 failed",
                  f"Job {NS}/{PREPROCESS} succeeded"):
        assert shown in result.output
    config_map, job = _rendered(config, "preprocess")
    (apply,) = double.requests("PATCH")
    assert apply.path == f"/api/v1/namespaces/{NS}/configmaps/impressions-config"
    assert apply.content_type == "application/apply-patch+yaml"
    assert apply.query["fieldManager"] == "multitower" and apply.query["force"] == "true"
    assert apply.body == config_map
    (create,) = double.requests("POST")
    assert create.path == f"/apis/batch/v1/namespaces/{NS}/jobs"
    assert create.body == job
    # Progress came from a pod watch selecting the Job's own pods, from the list's version.
    uid = double.get("batch", "jobs", NS, PREPROCESS)["metadata"]["uid"]
    listed, watched = [c for c in double.requests("GET", "/pods") if "/log" not in c.path][:2]
    assert listed.query == {"labelSelector": f"batch.kubernetes.io/controller-uid={uid}"}
    assert watched.query["watch"].lower() == "true"
    assert watched.query["labelSelector"] == listed.query["labelSelector"]
    assert double.requests("GET", "/log") == []  # no --follow, no failure: no log read


def test_the_training_job_owns_its_headless_service(double, kubeconfig, config):
    result = submit(kubeconfig, "train", "--config", config, "--date", DATE)
    assert result.exit_code == 0, result.output
    assert "--wait" in result.output  # how to follow it
    posts = double.requests("POST")
    assert [c.path.rsplit("/", 1)[1] for c in posts] == ["jobs", "services"]
    job = double.get("batch", "jobs", NS, TRAIN)
    service = posts[1].body
    assert service["metadata"]["ownerReferences"] == [
        {"apiVersion": "batch/v1", "kind": "Job", "name": TRAIN, "uid": job["metadata"]["uid"]}]
    rendered = next(o for o in _rendered(config, "train") if o["kind"] == "Service")
    del service["metadata"]["ownerReferences"]
    assert service == rendered
    assert double.get("", "services", NS, TRAIN) is not None


def test_an_existing_job_is_reported_and_only_replaced_when_asked(double, kubeconfig, config):
    assert submit(kubeconfig, "preprocess", "--config", config, "--date", DATE).exit_code == 0
    first = double.get("batch", "jobs", NS, PREPROCESS)["metadata"]["uid"]
    result = submit(kubeconfig, "preprocess", "--config", config, "--date", DATE)
    assert result.exit_code == 0, result.output
    assert f"Job {NS}/{PREPROCESS} exists already" in result.output
    assert "not replaced" in result.output
    assert double.get("batch", "jobs", NS, PREPROCESS)["metadata"]["uid"] == first
    assert double.requests("DELETE") == []
    assert len(double.requests("POST")) == 2  # the second one answered 409 AlreadyExists

    result = submit(kubeconfig, "preprocess", "--config", config, "--date", DATE, "--replace")
    assert result.exit_code == 0, result.output
    (delete,) = double.requests("DELETE")
    assert delete.path == f"/apis/batch/v1/namespaces/{NS}/jobs/{PREPROCESS}"
    assert delete.query["propagationPolicy"] == "Foreground"
    second = double.get("batch", "jobs", NS, PREPROCESS)["metadata"]["uid"]
    assert second != first
    after = double.calls[double.calls.index(delete):]
    # Polled until gone (one read still sees it being deleted), then created again.
    assert [(c.method, c.path.rsplit("/", 1)[1]) for c in after] == [
        ("DELETE", PREPROCESS), ("GET", PREPROCESS), ("GET", PREPROCESS), ("POST", "jobs")]


def test_a_failing_pod_exits_1_with_its_reason_and_log_tail(double, kubeconfig, config):
    log = [f"line {i}" for i in range(30)] + ["ValueError: no manifest for 2026-02-28"]
    double.script(PREPROCESS, [
        pod(0, "Pending"), pod(0, "Running", log=log[:10]),
        pod(0, "Failed", log=log[10:], exit_code=3),
        finish(False, "BackoffLimitExceeded", "Job has reached the specified backoff limit")])
    result = submit(kubeconfig, "preprocess", "--config", config, "--date", DATE, "--wait",
                    "--log-lines", "5")
    assert result.exit_code == 1, result.output
    name = double.requests("GET", "/log")[0].path.split("/")[-2]
    assert f"pod {name}: container preprocess: Error, exit code 3" in result.stderr
    assert "  | ValueError: no manifest for 2026-02-28" in result.stderr
    assert "  | line 26" in result.stderr and "line 25" not in result.stderr
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith(f"Error: Job {NS}/{PREPROCESS} failed (BackoffLimitExceeded: Job "
                            f"has reached the specified backoff limit)")
    (tail,) = double.requests("GET", "/log")
    assert tail.query["tailLines"] == "5" and tail.query["container"] == "preprocess"


def test_an_expired_watch_is_resumed_by_listing_again(double, kubeconfig, config):
    double.script(PREPROCESS, [pod(0, "Pending"), expire(), pod(0, "Running"),
                               pod(0, "Succeeded"), finish()])
    result = submit(kubeconfig, "preprocess", "--config", config, "--date", DATE, "--wait")
    assert result.exit_code == 0, result.output
    assert "the pod watch expired (Expired: too old resource version" in result.output
    pods = [c for c in double.requests("GET", "/pods")]
    kinds = ["watch" if c.query.get("watch") else "list" for c in pods]
    assert kinds[:4] == ["list", "watch", "list", "watch"]
    first_watch, second_watch = pods[1], pods[3]
    assert int(second_watch.query["resourceVersion"]) >= double.compacted
    assert int(first_watch.query["resourceVersion"]) < double.compacted
    assert "0 pending, 1 running" in result.output  # the events after the relist were seen
    assert f"Job {NS}/{PREPROCESS} succeeded" in result.output


def test_follow_streams_worker_0_log_only(double, kubeconfig, config):
    double.script(TRAIN, [
        pod(0, "Pending"), pod(1, "Pending"), pod(0, "Running", log=["w0: step 100"]),
        pod(1, "Running", log=["w1: step 100"]), pod(1, "Succeeded", log=["w1: done"]),
        pod(0, "Succeeded", log=["w0: exported version 3"]), finish()])
    result = submit(kubeconfig, "train", "--config", config, "--date", DATE, "--follow")
    assert result.exit_code == 0, result.output
    assert "w0: step 100\nw0: exported version 3\n" in result.stdout
    assert "w1:" not in result.output
    (follow,) = double.requests("GET", "/log")
    assert follow.query["follow"].lower() == "true" and follow.query["container"] == "trainer"
    assert f"/pods/{TRAIN}-0-" in follow.path  # completion index 0


def test_a_tfjob_is_created_as_a_custom_object_and_waited_for(tmp_path, double, kubeconfig):
    def tfjob(raw):
        raw["k8s"]["training"]["kind"] = "tfjob"

    config = write_config(tmp_path, tfjob)
    double.script(TRAIN, [*success(0), pod(1, "Pending"), pod(1, "Running"),
                          pod(1, "Succeeded"), finish()])
    result = submit(kubeconfig, "train", "--config", config, "--date", DATE, "--wait")
    assert result.exit_code == 0, result.output
    (create,) = double.requests("POST")
    assert create.path == f"/apis/kubeflow.org/v1/namespaces/{NS}/tfjobs"
    assert create.body == _rendered(config, "train")[1]
    assert f"TFJob {NS}/{TRAIN} succeeded" in result.output
    watch = [c for c in double.requests("GET", "/pods") if c.query.get("watch")][0]
    assert watch.query["labelSelector"] == f"training.kubeflow.org/job-name={TRAIN}"


def test_serving_and_the_cronjob_are_applied_server_side(double, kubeconfig, config):
    result = submit(kubeconfig, "serving", "--config", config, "--versions", "1,2")
    assert result.exit_code == 0, result.output
    result = submit(kubeconfig, "daily", "--config", config)
    assert result.exit_code == 0, result.output
    assert "'30 2 * * *' (Europe/Paris)" in result.output
    patches = double.requests("PATCH")
    assert all(c.content_type == "application/apply-patch+yaml" and c.query == {
        "fieldManager": "multitower", "force": "true"} for c in patches)
    assert [c.body["kind"] for c in patches] == [
        "ConfigMap", "Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget",
        "ConfigMap", "ServiceAccount", "Role", "RoleBinding", "CronJob"]
    assert [c.body for c in patches[5:]] == step_objects(target(load_config(config)), "daily")
    assert double.requests("POST") == []
    cron = double.get("batch", "cronjobs", NS, "impressions-daily")
    args = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[-4:] == ["--namespace", NS, "--date", "yesterday"]


def test_an_unreachable_server_is_one_clear_line(tmp_path, config):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", f"http://127.0.0.1:{port}", "t", NS)
    result = submit(kubeconfig, "preprocess", "--config", config, "--date", DATE,
                    fast=("--request-timeout", "2", "--retries", "1", "--retry-wait", "0"))
    assert result.exit_code == 1
    (line,) = result.output.strip().splitlines()
    assert line.startswith(f"Error: cannot reach the Kubernetes API server at "
                           f"http://127.0.0.1:{port} (")
    assert "Connection refused" in line and "2 tries" in line


def test_no_client_configuration_is_a_clear_error(tmp_path, config, monkeypatch):
    for name in ("KUBECONFIG", "KUBERNETES_SERVICE_HOST"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    from click.testing import CliRunner

    from commands.cli import main

    result = CliRunner().invoke(main, ["submit", "preprocess", "--config", config, "--date",
                                       DATE])
    assert result.exit_code == 1
    assert "no Kubernetes client configuration" in result.output


@pytest.mark.parametrize("args, message", [
    (("preprocess",), "give --date"),
    (("serving", "--wait"), "--wait, --follow and --replace are about a day's Job"),
    (("daily", "--follow"), "submit daily without --date applies the CronJob"),
    (("train", "--date", "2026-02-30"), "not a calendar day"),
    (("train", "--date", DATE, "--versions", "1"), "--versions is for submit serving"),
])
def test_bad_usage_exits_2_and_sends_nothing(double, kubeconfig, config, args, message):
    result = submit(kubeconfig, args[0], "--config", config, *args[1:])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert double.calls == []


def test_a_config_the_cluster_cannot_use_exits_2_naming_the_key(tmp_path, double, kubeconfig):
    def relative(raw):
        raw["train"]["model_dir"] = "work/model"

    result = submit(kubeconfig, "train", "--config", write_config(tmp_path, relative),
                    "--date", DATE)
    assert result.exit_code == 2
    assert "train.model_dir: 'work/model' is a relative path" in result.output
    assert double.calls == []


def test_pod_reason_names_what_went_wrong():
    def status(**fields):
        return {"status": {"phase": "Failed", **fields}}

    oom = status(containerStatuses=[{"name": "trainer", "state": {"terminated": {
        "exitCode": 137, "reason": "OOMKilled"}}}])
    assert pod_reason(oom) == ("trainer", "container trainer: OOMKilled, exit code 137")
    restarted = {"status": {"phase": "Running", "containerStatuses": [{
        "name": "tensorflow", "state": {"running": {}},
        "lastState": {"terminated": {"exitCode": 1, "reason": "Error"}}}]}}
    assert pod_reason(restarted)[1] == "container tensorflow: Error, exit code 1"
    pull = {"status": {"phase": "Pending", "containerStatuses": [{"name": "trainer", "state": {
        "waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling image"}}}]}}
    assert pod_reason(pull)[1] == "container trainer: ImagePullBackOff: Back-off pulling image"
    evicted = status(reason="Evicted", message="The node was low on resource: memory.")
    assert pod_reason(evicted) == ("", "Evicted: The node was low on resource: memory.")
    stuck = {"status": {"phase": "Pending", "conditions": [{
        "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
        "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."}]}}
    assert pod_reason(stuck)[1] == ("PodScheduled Unschedulable: 0/3 nodes are available: 3 "
                                    "Insufficient nvidia.com/gpu.")
