"""`multitower submit daily --date D`, the daily CronJob's run, against the API double.

The double enforces the rendered Role of the daily ServiceAccount (403 Forbidden for anything
else), and the last tests compare, as sets, what the Role grants with what the runs asked for
on their success and failure paths: the Role must grant all of it and nothing more.
"""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from k8s.objects import target
from k8s.render import ServingInputs, step_objects
from k8s.serving import SERVING_CONFIG_DIR
from multitower.config import load_config
from tests.k8s.api_double import KubeApiDouble, finish, pod
from tests.k8s.configs import DATE
from tests.k8s.submit_cli import NS, PREPROCESS, TRAIN, submit, success, write_config

pytestmark = pytest.mark.integration  # an HTTP server on loopback

SERVING_CONFIG_MAP = "impressions-serving-config"
USER = f"system:serviceaccount:{NS}:impressions-daily"
FAILED = finish(False, "BackoffLimitExceeded", "Job has reached the specified backoff limit")


def _tfjob(raw):
    raw["k8s"]["training"]["kind"] = "tfjob"


@pytest.fixture
def exports(monkeypatch):
    """The export folder as the daily pod lists it: version 3 appears once training is done."""
    import serving.tfs_config

    state = {"double": None}

    def versions(base):
        double = state["double"]
        runs = [double.get(g, p, NS, TRAIN) for g, p in (("batch", "jobs"),
                                                         ("kubeflow.org", "tfjobs"))]
        done = any(c["type"] in ("Complete", "Succeeded") and c["status"] == "True"
                   for run in runs if run for c in run["status"].get("conditions", []))
        return [1, 2, 3] if done else [1, 2]

    monkeypatch.setattr(serving.tfs_config, "versions", versions)
    return state


class Daily:
    """A double holding what `submit serving` and `submit daily` (no date) left there."""

    def __init__(self, tmp_path, exports, change=None):
        from serving.tfs_config import build_serving_files

        self.config = write_config(tmp_path, change)
        self.t = target(load_config(self.config))
        self.double = KubeApiDouble()
        self.kubeconfig = self.double.write_kubeconfig(tmp_path / "kubeconfig", NS)
        built = build_serving_files(self.t.config, SERVING_CONFIG_DIR, [1, 2])
        serving = step_objects(self.t, "serving", serving=ServingInputs(built.files,
                                                                        built.command))
        self.double.put(serving[0])  # the serving ConfigMap, labels on versions 1 and 2
        self.role = next(o for o in step_objects(self.t, "daily") if o["kind"] == "Role")
        self.double.enforce(USER, self.role["rules"])
        exports["double"] = self.double

    def run(self, *args, date=DATE):
        return submit(self.kubeconfig, "daily", "--config", self.config, "--date", date, *args)

    def granted(self):
        return {(g, r, v) for rule in self.role["rules"] for g in rule["apiGroups"]
                for r in rule["resources"] for v in rule["verbs"]}

    def asked(self):
        return {c.attributes[:3] for c in self.double.calls}

    def labels(self):
        text = self.double.get("", "configmaps", NS, SERVING_CONFIG_MAP)["data"]["models.config"]
        message = text_format.Parse(text, model_server_config_pb2.ModelServerConfig())
        return dict(message.model_config_list.config[0].version_labels)


@pytest.fixture
def daily(tmp_path, exports):
    made = []

    def make(change=None, name="project"):
        folder = tmp_path / name
        folder.mkdir()
        made.append(Daily(folder, exports, change))
        return made[-1]

    yield make
    for d in made:
        d.double.close()


def _posts(d):
    return [c.body["metadata"]["name"] + "/" + c.body["kind"]
            for c in d.double.requests("POST")]


def test_daily_runs_preprocess_then_train_then_moves_the_labels(daily):
    d = daily()
    d.double.script(PREPROCESS, [*success(), finish()])
    d.double.script(TRAIN, [*success(0), *success(1), finish()])
    assert d.labels() == {"stable": 1, "canary": 2}
    result = d.run()
    assert result.exit_code == 0, result.output
    assert _posts(d) == [f"{PREPROCESS}/Job", f"{TRAIN}/Job", f"{TRAIN}/Service"]
    calls = d.double.calls
    train_post = next(i for i, c in enumerate(calls) if c.method == "POST")
    train_post = next(i for i, c in enumerate(calls) if c.method == "POST" and i > train_post)
    # Training was created only after the preprocess Job was read back complete.
    assert calls[train_post - 1].path.endswith(f"/jobs/{PREPROCESS}")
    read, patch = [c for c in calls if "/configmaps/" in c.path]
    assert (read.method, patch.method) == ("GET", "PATCH")
    assert patch.content_type == "application/strategic-merge-patch+json"
    assert patch.query["fieldManager"] == "multitower-daily"
    assert set(patch.body["data"]) == {"models.config"}
    assert patch.body["metadata"]["resourceVersion"]  # the precondition: no lost update
    assert d.labels() == {"stable": 2, "canary": 3}
    assert "labels canary -> 3, stable -> 2" in result.stdout or \
        "labels stable -> 2, canary -> 3" in result.stdout
    assert not any("impressions-config" in c.path for c in calls)  # its own config: not applied


@pytest.mark.parametrize("failing", ["preprocess", "train"])
def test_daily_stops_at_the_first_failed_step(daily, failing):
    d = daily()
    bad = [pod(0, "Pending"), pod(0, "Running", log=["starting"]),
           pod(0, "Failed", log=["OSError: gs://recsys-mt/tfrecords: permission denied"],
               exit_code=1), FAILED]
    d.double.script(PREPROCESS, bad if failing == "preprocess" else [*success(), finish()])
    d.double.script(TRAIN, bad)
    result = d.run()
    assert result.exit_code == 1, result.output
    assert f"daily {DATE}: the {failing} step failed: Job {NS}/impressions-{failing}-{DATE} " \
           f"failed (BackoffLimitExceeded" in result.output
    assert "  | OSError: gs://recsys-mt/tfrecords: permission denied" in result.stderr
    expected = [f"{PREPROCESS}/Job"] + ([f"{TRAIN}/Job", f"{TRAIN}/Service"]
                                        if failing == "train" else [])
    assert _posts(d) == expected
    assert d.double.requests(contains="/configmaps/") == []
    assert d.labels() == {"stable": 1, "canary": 2}


def test_daily_takes_yesterday_in_its_time_zone(daily):
    d = daily()
    yesterday = dt.datetime.now(ZoneInfo("Europe/Paris")).date() - dt.timedelta(days=1)
    names = {f"impressions-preprocess-{yesterday + dt.timedelta(days=n)}" for n in (0, 1)}
    for name in names:  # the day may turn in Paris during the test
        d.double.script(name, [pod(0, "Pending"), pod(0, "Failed"), FAILED])
    result = d.run(date="yesterday")
    assert result.exit_code == 1, result.output
    (created,) = [c.body["metadata"]["name"] for c in d.double.requests("POST")]
    assert created in names


def test_a_rerun_reports_the_runs_of_the_day_and_fails_on_the_failed_one(daily):
    d = daily()
    d.double.script(PREPROCESS, [*success(), finish()])
    d.double.script(TRAIN, [pod(0, "Pending"), pod(0, "Failed", exit_code=137,
                                                    reason="OOMKilled"), FAILED])
    assert d.run().exit_code == 1
    d.double.calls.clear()
    result = d.run()  # the CronJob's Job retried, or a person running the day again
    assert result.exit_code == 1, result.output
    assert f"Job {NS}/{PREPROCESS} exists already" in result.output
    assert f"Job {NS}/{PREPROCESS} succeeded" in result.output
    assert f"Service {NS}/{TRAIN} exists already, owned by Job {NS}/{TRAIN}" in result.output
    assert "container trainer: OOMKilled, exit code 137" in result.output
    assert "the run existed before this one" in result.output
    assert d.double.requests("DELETE") == []


def test_daily_without_serving_deployed_fails_saying_so(daily):
    d = daily()
    d.double.objects.pop(("", "configmaps", NS, SERVING_CONFIG_MAP))
    d.double.script(PREPROCESS, [*success(), finish()])
    d.double.script(TRAIN, [*success(0), *success(1), finish()])
    result = d.run()
    assert result.exit_code == 1
    assert (f"ConfigMap {NS}/{SERVING_CONFIG_MAP} does not exist, so TF Serving is not "
            f"deployed there: run `multitower submit serving` first") in result.output


PATHS = {  # what the preprocess and train pods do on each path
    "success": ([*success(), finish()], [*success(0), *success(1), finish()]),
    "preprocess-fails": ([pod(0, "Pending"), pod(0, "Failed"), FAILED], []),
    "train-fails": ([*success(), finish()], [pod(0, "Pending"), pod(0, "Failed"), FAILED]),
}


@pytest.mark.parametrize("kind", ["job", "tfjob"])
def test_the_role_grants_exactly_what_the_daily_run_asks_for(daily, kind):
    change = _tfjob if kind == "tfjob" else None
    asked: set = set()
    granted = None
    for name, (preprocess, train) in PATHS.items():
        d = daily(change, name)
        d.double.script(PREPROCESS, preprocess)
        d.double.script(TRAIN, train)
        result = d.run()
        assert result.exit_code == (0 if name == "success" else 1), result.output
        assert "forbidden" not in result.output
        asked |= d.asked()
        if name == "train-fails":  # run the day again: the runs exist, the Service too
            d.double.calls.clear()
            assert d.run().exit_code == 1
            asked |= d.asked()
        granted = d.granted()
    assert asked == granted
    resources = {r for _, r, _ in granted}
    assert ("services" in resources) == (kind == "job")  # the TFJob's operator makes its own
    assert ("tfjobs" in resources) == (kind == "tfjob")
