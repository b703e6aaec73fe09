"""Exclusive leases: refused while held, taken over when stale, on local disk and on S3."""

import json
import os
import socket
import subprocess
import sys
import time

import boto3
import pytest
from moto.server import ThreadedMotoServer

from multitower import lease as lease_module
from multitower.lease import Lease, LeaseHeldError, LeaseLostError, LeaseStorageError
from multitower.lease_store import S3Store

AWS = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_REGION": "us-east-1"}


@pytest.fixture
def as_run(monkeypatch):
    """Switches this process to another run id, as another run would have."""

    def switch(run: str) -> None:
        monkeypatch.setenv(lease_module.RUN_ID_VARIABLE, run)

    return switch


def _holder(path) -> dict:
    return json.loads(open(path).read())


def test_a_second_run_is_refused_with_the_holder_named(tmp_path, as_run):
    path = str(tmp_path / "model" / "lease.json")
    as_run("run-a")
    first = Lease(path, "model_dir /m", hint="Wait for it.").acquire()
    holder = _holder(path)
    assert (holder["run_id"], holder["host"], holder["pid"]) == (
        "run-a", socket.gethostname(), os.getpid())
    as_run("run-b")
    with pytest.raises(LeaseHeldError) as info:
        Lease(path, "model_dir /m", hint="Wait for it.").acquire()
    message = str(info.value)
    assert message.startswith(f"model_dir /m is in use by run run-a (host {socket.gethostname()}"
                              f", pid {os.getpid()}, started ")
    assert message.endswith(f"last heartbeat 0 s ago): {path}. Wait for it.")
    first.release()
    assert not os.path.exists(path)
    with Lease(path, "model_dir /m"):  # free again
        assert _holder(path)["run_id"] == "run-b"


def test_the_same_run_takes_its_lease_back(tmp_path, as_run):
    path = str(tmp_path / "lease.json")
    as_run("job-uid-1")
    Lease(path, "x").acquire()  # never released: the process "died"
    again = Lease(path, "x").acquire()  # a relaunch with the same run id
    assert _holder(path)["run_id"] == "job-uid-1"
    again.release()


def test_a_lease_without_heartbeat_expires(tmp_path, as_run):
    path = tmp_path / "lease.json"
    path.write_text(json.dumps({
        "run_id": "gone", "host": "other-host", "pid": 1, "started": time.time() - 100,
        "heartbeat": time.time() - 31, "ttl_seconds": 30.0, "what": "x"}))
    as_run("new")
    with Lease(str(path), "x"):
        assert _holder(path)["run_id"] == "new"
    path.write_text(json.dumps({  # a live heartbeat on another host holds
        "run_id": "alive", "host": "other-host", "pid": 1, "started": time.time(),
        "heartbeat": time.time() - 5, "ttl_seconds": 30.0, "what": "x"}))
    with pytest.raises(LeaseHeldError, match="in use by run alive \\(host other-host"):
        Lease(str(path), "x").acquire()


def test_a_dead_process_on_this_host_loses_its_lease(tmp_path, as_run):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    path = tmp_path / "lease.json"
    path.write_text(json.dumps({
        "run_id": "killed", "host": socket.gethostname(), "pid": dead.pid,
        "started": time.time(), "heartbeat": time.time(), "ttl_seconds": 600.0, "what": "x"}))
    as_run("relaunch")
    with Lease(str(path), "x"):
        assert _holder(path)["run_id"] == "relaunch"


def test_the_heartbeat_refreshes_and_a_lost_lease_is_noticed(tmp_path, as_run):
    path = tmp_path / "lease.json"
    as_run("beating")
    held = Lease(str(path), "model_dir /m", ttl_seconds=0.3).acquire()
    first = _holder(path)["heartbeat"]
    time.sleep(0.35)
    assert _holder(path)["heartbeat"] > first  # refreshed every ttl / 3
    held.check()
    # another run replaces the file (it judged this one stale)
    path.write_text(json.dumps({**_holder(path), "run_id": "usurper"}))
    time.sleep(0.35)
    with pytest.raises(LeaseLostError, match="this run lost its lease"):
        held.check()
    held.release()
    assert _holder(path)["run_id"] == "usurper"  # not deleted: it is not ours any more


def test_an_unreadable_lease_file_is_replaced(tmp_path, as_run):
    path = tmp_path / "lease.json"
    path.write_text("{half")
    as_run("next")
    with Lease(str(path), "x"):
        assert _holder(path)["run_id"] == "next"


@pytest.fixture(scope="module")
def s3_server():
    """A moto S3 server on loopback (it honours If-None-Match and If-Match on PUT)."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    saved = {k: os.environ.get(k) for k in [*AWS, "AWS_ENDPOINT_URL_S3"]}
    os.environ.update(AWS, AWS_ENDPOINT_URL_S3=f"http://{host}:{port}")
    boto3.client("s3").create_bucket(Bucket="leases")
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    server.stop()


def test_on_s3_create_and_replace_are_conditional(s3_server, as_run):
    store = S3Store()
    path = "s3://leases/model/lease.json"
    tag = store.create(path, "one")
    assert tag and store.create(path, "two") is None  # If-None-Match: *
    assert store.read(path) == ("one", tag)
    assert store.replace(path, "three", "not-the-etag") is None  # If-Match
    new = store.replace(path, "three", tag)
    assert new and store.read(path) == ("three", new)
    store.delete(path, tag)  # stale tag: kept
    assert store.read(path)[0] == "three"
    store.delete(path, new)
    assert store.read(path) is None


def test_on_s3_a_second_run_is_refused_and_a_stale_lease_taken_over(s3_server, as_run):
    path = "s3://leases/other/lease.json"
    as_run("s3-a")
    first = Lease(path, "model_dir s3://leases/other", ttl_seconds=0.6).acquire()
    as_run("s3-b")
    with pytest.raises(LeaseHeldError, match="in use by run s3-a"):
        Lease(path, "model_dir s3://leases/other").acquire()
    first._stop.set()  # the holder stops beating (as if its host died)
    first._thread.join()
    time.sleep(0.7)
    with Lease(path, "model_dir s3://leases/other"):
        assert json.loads(S3Store().read(path)[0])["run_id"] == "s3-b"


def test_a_lease_that_cannot_be_written_is_one_line_naming_the_path(tmp_path):
    blocker = tmp_path / "model"
    blocker.write_text("a file where model_dir should be a folder")
    path = str(blocker / "lease.json")
    with pytest.raises(LeaseStorageError) as info:
        Lease(path, f"model_dir {blocker}").acquire()
    assert str(info.value) == (f"model_dir {blocker}: cannot write the lease {path}: File "
                               "exists; is the location writable?")
