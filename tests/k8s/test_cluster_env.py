"""`TF_CONFIG` from `JOB_COMPLETION_INDEX` and the workers' addresses, in pods and the launcher."""

from __future__ import annotations

import json
import os

import pytest

from multitower.cluster import (
    INDEX_VARIABLE,
    WORKERS_VARIABLE,
    ClusterSpecError,
    export_tf_config,
    indexed_worker_addresses,
    task_info,
    tf_config,
    tf_config_from_index,
    worker_environment,
)
from tests.k8s.configs import rendered

ADDRESSES = ["job-0.svc.ns.svc:2222", "job-1.svc.ns.svc:2222", "job-2.svc.ns.svc:2222"]


def test_addresses_are_the_pods_dns_names_behind_the_headless_service():
    assert indexed_worker_addresses("train-d", "train-d", "ns", 2, 2222) == [
        "train-d-0.train-d.ns.svc:2222", "train-d-1.train-d.ns.svc:2222"]
    with pytest.raises(ValueError):
        indexed_worker_addresses("j", "s", "ns", 0, 2222)


def test_the_index_picks_the_task_in_a_cluster_of_every_address():
    for index in range(3):
        built = tf_config_from_index({WORKERS_VARIABLE: ",".join(ADDRESSES),
                                      INDEX_VARIABLE: str(index)})
        assert json.loads(built) == {"cluster": {"worker": ADDRESSES},
                                     "task": {"type": "worker", "index": index}}
        assert built == tf_config(ADDRESSES, index)


def test_without_addresses_there_is_no_cluster():
    assert tf_config_from_index({INDEX_VARIABLE: "0"}) is None
    assert task_info({INDEX_VARIABLE: "3"}).num_workers == 1


@pytest.mark.parametrize("environ,message", [
    ({WORKERS_VARIABLE: "a:1,b:2"}, "JOB_COMPLETION_INDEX is '', but MULTITOWER_WORKERS names 2"),
    ({WORKERS_VARIABLE: "a:1,b:2", INDEX_VARIABLE: "2"}, "must be one of 0..1"),
    ({WORKERS_VARIABLE: "a:1,b:2", INDEX_VARIABLE: "-1"}, "must be one of 0..1"),
    ({WORKERS_VARIABLE: "a:1,b", INDEX_VARIABLE: "0"}, "MULTITOWER_WORKERS: 'b' is not host:port"),
    ({WORKERS_VARIABLE: "a:1,,b:2", INDEX_VARIABLE: "0"}, "'' is not host:port"),
])
def test_inconsistent_variables_are_refused_naming_them(environ, message):
    with pytest.raises(ClusterSpecError, match=message):
        tf_config_from_index(environ)


def test_task_info_reads_a_mapping_without_changing_it():
    environ = worker_environment(ADDRESSES, 2)
    info = task_info(environ)
    assert (info.task_type, info.task_id, info.num_workers, info.is_chief) == (
        "worker", 2, 3, False)
    assert "TF_CONFIG" not in environ


def test_the_process_exports_tf_config_before_tensorflow_reads_it(monkeypatch):
    monkeypatch.setenv("TF_CONFIG", "")  # empty is unset; restored (removed) afterwards
    for name, value in worker_environment(ADDRESSES, 0).items():
        monkeypatch.setenv(name, value)
    info = task_info()
    assert info.is_chief and info.num_workers == 3
    assert os.environ["TF_CONFIG"] == ""  # reading writes nothing
    export_tf_config()  # what trainer.strategy.make_strategy does first
    assert os.environ["TF_CONFIG"] == tf_config(ADDRESSES, 0)


def test_an_explicit_tf_config_wins():
    explicit = tf_config(["a:1", "b:2"], 1)  # e.g. what the training operator injects
    environ = {**worker_environment(ADDRESSES, 0), "TF_CONFIG": explicit}
    export_tf_config(environ)
    assert environ["TF_CONFIG"] == explicit
    assert task_info(environ).task_id == 1


def test_the_local_launcher_builds_its_workers_environment_the_same_way():
    from trainer.launch import cluster_env

    env = cluster_env(2, 1, [4001, 4002, 4003])
    assert env[WORKERS_VARIABLE] == "localhost:4001,localhost:4002"
    assert env[INDEX_VARIABLE] == "1"
    assert env["TF_CONFIG"] == tf_config_from_index(env) == tf_config(
        ["localhost:4001", "localhost:4002"], 1)


def test_a_rendered_worker_with_its_index_knows_its_place():
    (job,) = [o for o in rendered("cpu-s3-4-job")
              if o["kind"] == "Job" and "train" in o["metadata"]["name"]]
    container = job["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    for index in range(4):  # the Job controller adds JOB_COMPLETION_INDEX to each pod
        info = task_info({**env, INDEX_VARIABLE: str(index)})
        assert (info.task_id, info.num_workers, info.is_chief) == (index, 4, index == 0)
    spec = json.loads(tf_config_from_index({**env, INDEX_VARIABLE: "3"}))
    assert spec["cluster"]["worker"][3] == (
        "impressions-train-2026-03-01-3.impressions-train-2026-03-01.recsys.svc:2222")
