"""The rendered training objects, executed: each pod of the Indexed Job (and of the TFJob) as a
local process, started from the rendered objects the way a cluster would start it.

`tests/k8s/pods.py` (and `container_runtime.py`) play the controllers, the kubelet and the
container runtime: pod i gets the labels and variables its controller adds
(`JOB_COMPLETION_INDEX` and the Job's uid, or the operator's `TF_CONFIG`), the container's `env`
resolved as rendered (downward API included; `envFrom` left out: no Secret exists here), its
`command` and `args` as rendered, its volumes at their `mountPath`s in a mount namespace of its
own: the rendered ConfigMap's file really at /etc/multitower/config.yaml, a fresh scratch
emptyDir really at /scratch (and /tmp), which HOME, TMPDIR and the cache variables name as
rendered, the claim (a folder of this test) at /data. It runs as the pod's user (1000, not
root), without privilege escalation, with the root file system read-only. So no path needs
mapping; the only change is `pods.loopback`: the workers' DNS names -> localhost ports.

`multitower`, the container's command, is found on the image's `PATH` and is the venv's console
script, as the container runtime finds the image's (`python -m commands.cli` would be another
entry point, with the working folder first on `sys.path`). The single addition, in the two
uninterrupted runs, is a `sitecustomize` in the pods' image (`_keep_non_chief_checkpoints`) that
keeps a copy of the non-chief's final checkpoint, which it otherwise deletes, for the weight
comparison; command, arguments and environment stay as they are.

What the runs show: the day trains on two workers into one model (every variable of the
non-chief's final checkpoint equals the chief's), the chief exports it, every container exits 0,
while the kernel refuses writes anywhere but the scratch folder and the claim (the repository,
the venv and the home folders included); the TFJob's pods do the same with the operator's
`TF_CONFIG` and end at the same weights as the Job's; killing the chief mid-day, after a
backup, leaves failures the rendered pod failure policy counts (not fatal), and restarting
every pod with the same environment takes the lease back (the Job's uid as run id), resumes
from the backup and ends at the uninterrupted run's global step and weights.
"""

from __future__ import annotations

import errno
import inspect
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from k8s.objects import CONFIG_FILE, target
from k8s.render import step_objects
from k8s.training import CONTAINER
from multitower.cluster import TaskInfo, task_info, tf_config_from_index
from multitower.config import parse_config
from multitower.lease import RUN_ID_VARIABLE
from tests.k8s import pods
from tests.k8s.configs import example_raw

pytestmark = pytest.mark.integration
PROBLEM = pods.sandbox_problem()
needs_pods = pytest.mark.skipif(PROBLEM is not None, reason=f"pods cannot run here: {PROBLEM}")

DAY = "2026-03-01"
MOUNT = "/data"  # where the claim is mounted in the pods (k8s.volumes)
CLAIM = "multitower-data"
JOB_UID = "3f9c2a6e-5b1d-4e8f-a7c4-0d2b9e6f1a35"  # what the API server would give the Job
ROWS, BATCH, BACKUP_EVERY = 4800, 64, 10  # 75 steps; the first backup at step 10
STEPS = ROWS // BATCH
TIMEOUT = 300.0


def _raw(kind: str) -> dict:
    """The example k8s config, small, on a claim mounted at /data, 2 workers of `kind`."""
    raw = example_raw()
    for feature in raw["data"]["features"]:
        if feature["type"] == "categorical":
            feature["hash_buckets"] = min(feature["hash_buckets"], 2000)
    raw["data"].update(num_shards=2, logs=f"{MOUNT}/logs/dt={{date}}",
                       tfrecords=f"{MOUNT}/tfrecords", rejected=f"{MOUNT}/rejected")
    raw["train"].update(batch_size=BATCH, shuffle_buffer=500, backup_every_steps=BACKUP_EVERY,
                        model_dir=f"{MOUNT}/model", export_dir=f"{MOUNT}/export")
    raw["model"]["mmoe"].update(num_experts=3, expert_units=[16])
    raw["k8s"]["volumes"] = [{"name": "data", "claim": CLAIM, "mount_path": MOUNT}]
    raw["k8s"]["training"].update(kind=kind, workers=2)
    return raw


def _render(kind: str) -> dict[str, dict]:
    """The train step's objects by kind (ConfigMap, Service and Job, or ConfigMap and TFJob)."""
    objects = step_objects(target(parse_config(_raw(kind), f"executed-{kind}.yaml")), "train",
                           DAY)
    return {obj["kind"]: obj for obj in objects}


def _pods(objects: dict[str, dict]) -> list[pods.Pod]:
    """New pods from their controller (the Job's or the operator's)."""
    if "Job" in objects:
        return pods.indexed_job_pods(objects["Job"], JOB_UID)
    return pods.tfjob_pods(objects["TFJob"])


def _keep_non_chief_checkpoints():
    # Added to the pods' image as `sitecustomize` for the weight comparison: a non-chief saves
    # its checkpoints into a temporary `multitower-save-*` folder (trainer/collectives.py) and
    # removes it; this keeps a copy in $HOME (the scratch folder) first, and where it was.
    import os
    import shutil

    remove = shutil.rmtree

    def rmtree(path, *args, **kwargs):
        name = os.path.basename(os.path.normpath(os.fspath(path)))
        if name.startswith("multitower-save-") and os.path.isdir(path):
            kept = os.path.join(os.environ["HOME"], "kept", name)
            shutil.copytree(path, kept)
            with open(kept + ".from", "w") as f:
                f.write(os.path.abspath(path))
        return remove(path, *args, **kwargs)

    shutil.rmtree = rmtree


OBSERVER = {f"{pods.site_packages()}/sitecustomize.py":
            inspect.getsource(_keep_non_chief_checkpoints) + "\n_keep_non_chief_checkpoints()\n"}


@dataclass
class Run:
    claim: Path
    envs: list[dict[str, str]]  # as started (addresses on localhost)
    sandboxes: list[pods.PodSandbox]  # each pod's last container
    codes: list[int | None]

    def logs(self) -> str:
        return "\n".join(f"--- {s.pod.name} ({s.log}):\n{s.read_log()[-4000:]}"
                         for s in self.sandboxes)


@pytest.fixture(scope="module")
def day_data(tmp_path_factory) -> Path:
    """The day's preprocessed TFRecords (its manifest names files relative to the day)."""
    from pipeline.generate import generate_logs
    from pipeline.preprocess import run_preprocess

    folder = tmp_path_factory.mktemp("day")
    raw = _raw("job")
    raw["data"].update(logs=str(folder / "logs" / "dt={date}"),
                       tfrecords=str(folder / "tfrecords"), rejected=str(folder / "rejected"))
    generate_logs(str(folder / "logs"), DAY, 1, ROWS, seed=3)
    manifest = run_preprocess(parse_config(raw, "local.yaml"), DAY)
    assert manifest["rows"]["written"] == ROWS
    return folder / "tfrecords"


def _claim(day_data: Path, folder: Path, objects: dict[str, dict]) -> Path:
    """A fresh volume for one run: the day's files (hard links), owned as fsGroup makes it."""
    claim = folder / "claim"
    shutil.copytree(day_data, claim / "tfrecords", copy_function=os.link)
    pods.apply_fs_group(claim, _pods(objects)[0].spec["securityContext"]["fsGroup"])
    return claim


def _start(node: pods.Node, new_pods: list[pods.Pod], ports: dict[str, int],
           files: dict[str, str] | None = None) -> list[tuple[subprocess.Popen, pods.PodSandbox]]:
    return [pods.start_pod(node, pod, pods.loopback(pods.container_env(pod), ports), files=files)
            for pod in new_pods]


def _wait(started: list[tuple[subprocess.Popen, pods.PodSandbox]]) -> list[int | None]:
    deadline = time.monotonic() + TIMEOUT
    for process, _ in started:
        try:
            process.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            break
    for process, _ in started:
        if process.poll() is None:  # a hang: stop every pod, the logs say where
            process.kill()
            process.wait()
    return [p.returncode for p, _ in started]


def _train(kind: str, day_data: Path, folder: Path, files: dict[str, str] | None = None) -> Run:
    """Every pod of the day's `kind` object, started at once, waited for."""
    assert not any(Path(path).exists() for path in files or {})  # nothing of the image hidden
    objects = _render(kind)
    claim = _claim(day_data, folder, objects)
    config_map = objects["ConfigMap"]
    node = pods.Node(folder / "node", {CLAIM: claim},
                     {config_map["metadata"]["name"]: config_map["data"]})
    new_pods = _pods(objects)
    ports = pods.free_ports(pods.worker_addresses(pods.container_env(new_pods[0])))
    started = _start(node, new_pods, ports, files)
    codes = _wait(started)
    return Run(claim, [pods.loopback(pods.container_env(p), ports) for p in new_pods],
               [s for _, s in started], codes)


@pytest.fixture(scope="module")
def job_run(day_data, tmp_path_factory) -> Run:
    """The Indexed Job's two pods, uninterrupted (the reference of the restart test too)."""
    return _train("job", day_data, tmp_path_factory.mktemp("job"), OBSERVER)


@pytest.fixture(scope="module")
def tfjob_run(day_data, tmp_path_factory) -> Run:
    return _train("tfjob", day_data, tmp_path_factory.mktemp("tfjob"), OBSERVER)


def _variables(prefix: Path) -> dict[str, np.ndarray]:
    """Every saved variable of a checkpoint (network, optimizer and its slots, balancer)."""
    import tensorflow as tf

    reader = tf.train.load_checkpoint(str(prefix))
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_dtype_map()
            if name != "_CHECKPOINTABLE_OBJECT_GRAPH"}


def _chief_checkpoint(run: Run) -> Path:
    return run.claim / "model" / "checkpoints" / f"ckpt-{STEPS}"


def _non_chief_checkpoint(run: Run) -> Path:
    """The final checkpoint worker 1 saved into its own scratch folder (kept by the observer)."""
    kept = sorted(run.sandboxes[1].scratch().glob(f"kept/multitower-save-*/ckpt-{STEPS}.index"))
    assert len(kept) == 1, run.logs()
    return kept[0].with_suffix("")


def _check_trained_day(run: Run) -> None:
    assert run.codes == [0, 0], run.logs()
    chief, worker = (s.read_log() for s in run.sandboxes)
    assert f"{STEPS} steps of {BATCH} on 2 worker(s), new model" in chief
    assert f"{STEPS} steps of {BATCH} on 2 worker(s), new model" in worker
    state = json.loads((run.claim / "model" / "state.json").read_text())
    assert state["global_step"] == STEPS
    assert [(d["date"], d["version"]) for d in state["days"]] == [(DAY, 1)]
    export = run.claim / "export" / "impressions"
    assert sorted(os.listdir(export)) == ["1"]
    assert (export / "1" / "saved_model.pb").is_file()
    assert (export / "1" / "assets.extra" / "tf_serving_warmup_requests").is_file()
    assert sorted(os.listdir(run.claim)) == ["export", "model", "tfrecords"]
    # One model on both workers: every variable of the non-chief's last checkpoint, embedding
    # tables and optimizer slots included, equals the chief's.
    ours, theirs = _variables(_chief_checkpoint(run)), _variables(_non_chief_checkpoint(run))
    assert any("embed_fused_d16_replicated" in name for name in ours)  # user_id's table
    assert sorted(ours) == sorted(theirs)
    for name, value in ours.items():
        np.testing.assert_array_equal(value, theirs[name], err_msg=name)


def test_each_pod_runs_the_rendered_command_and_environment_but_for_the_addresses():
    for kind in ("job", "tfjob"):
        objects = _render(kind)
        owner = objects["Job"]["spec"] if kind == "job" else (
            objects["TFJob"]["spec"]["tfReplicaSpecs"]["Worker"])
        (container,) = owner["template"]["spec"]["containers"]
        new_pods = _pods(objects)
        envs = [pods.container_env(p) for p in new_pods]
        addresses = pods.worker_addresses(envs[0])
        ports = pods.free_ports(addresses)
        for index, (pod, env) in enumerate(zip(new_pods, envs, strict=True)):
            started = pods.loopback(env, ports)
            assert pods.container_argv(pod, started) == [
                "multitower", "train", "--config", CONFIG_FILE, "--date", DAY]
            for item in container["env"]:  # every plain rendered value, as rendered
                if "value" in item and item["name"] not in ("MULTITOWER_WORKERS", "TF_CONFIG"):
                    assert started[item["name"]] == item["value"], item
            assert started["HOME"] == started["TMPDIR"] == "/scratch"
            changed = {k for k in started if started[k] != env[k]}
            info = task_info(started)
            assert (info.task_type, info.task_id, info.num_workers) == ("worker", index, 2)
            if kind == "job":
                assert changed == {"MULTITOWER_WORKERS"} and "TF_CONFIG" not in started
                assert started["JOB_COMPLETION_INDEX"] == str(index)
                assert started[RUN_ID_VARIABLE] == JOB_UID  # the downward API found the label
                assert addresses == [f"impressions-train-{DAY}-{i}.impressions-train-{DAY}"
                                     f".recsys.svc:2222" for i in range(2)]
                assert json.loads(tf_config_from_index(started))["cluster"]["worker"] == [
                    f"localhost:{ports[a]}" for a in addresses]
            else:
                assert changed == {"TF_CONFIG"} and "MULTITOWER_WORKERS" not in started
                assert started[RUN_ID_VARIABLE] == f"impressions-train-{DAY}"
                assert json.loads(env["TF_CONFIG"]) == {
                    "cluster": {"worker": [f"impressions-train-{DAY}-worker-{i}.recsys.svc:2222"
                                           for i in range(2)]},
                    "task": {"type": "worker", "index": index}, "environment": "cloud"}
                assert task_info(env) == TaskInfo("worker", index, 2)


@pytest.mark.slow
@needs_pods
def test_the_indexed_job_pods_train_the_day_into_one_model_and_export_it(job_run):
    _check_trained_day(job_run)


# Tries to write each path given as a JSON list; prints what happened to each, and its user.
PROBE = """
import errno, json, os, sys
found = {"uid": os.getuid()}
for path in json.loads(sys.argv[1]):
    try:
        with open(path, "w") as f:
            f.write("x")
        os.remove(path)
        found[path] = "written"
    except OSError as err:
        found[path] = errno.errorcode[err.errno]
print(json.dumps(found))
"""
WRITABLE = ["/scratch/probe", "/tmp/probe", f"{MOUNT}/probe"]  # scratch (also /tmp), the claim
# The repository, the venv, a folder every user may write on this machine, the home of the
# user running the tests (where ~/.keras and ~/.cache go without HOME), the mounted config.
READ_ONLY = [str(pods.REPO / "probe"), f"{pods.site_packages()}/probe", "/var/tmp/probe",
             f"{Path.home()}/probe", "/etc/multitower/probe"]


@pytest.mark.slow
@needs_pods
def test_the_pods_write_nowhere_but_their_scratch_folder_and_the_claim(job_run, tmp_path):
    # The run succeeded with the root file system read-only and the pods' user not root. This
    # checks that the sandbox really refuses writes elsewhere, with the same pod, user and
    # mounts, the command replaced by a probe.
    assert job_run.codes == [0, 0], job_run.logs()
    objects = _render("job")
    pod = _pods(objects)[0]
    pod.container["command"] = [sys.executable, "-c", PROBE]
    pod.container["args"] = [json.dumps(WRITABLE + READ_ONLY)]
    config_map = objects["ConfigMap"]
    node = pods.Node(tmp_path / "node", {CLAIM: job_run.claim},
                     {config_map["metadata"]["name"]: config_map["data"]})
    process, sandbox = pods.start_pod(node, pod, job_run.envs[0])
    assert process.wait(timeout=60) == 0, sandbox.read_log()
    found = json.loads(sandbox.read_log().splitlines()[-1])
    assert found.pop("uid") == pod.spec["securityContext"]["runAsUser"] != 0
    assert found == {**{path: "written" for path in WRITABLE},
                     **{path: errno.errorcode[errno.EROFS] for path in READ_ONLY}}
    # What the workers wrote where the scratch variables point: Keras' settings under
    # KERAS_HOME, and the non-chief's temporary checkpoints under TMPDIR.
    for sandbox in job_run.sandboxes:
        assert (sandbox.scratch() / ".keras" / "keras.json").is_file()
    sources = [Path(p.read_text()) for p in
               job_run.sandboxes[1].scratch().glob("kept/multitower-save-*.from")]
    assert len(sources) == 2  # the mid-day backups' and the day's checkpoint's
    assert {str(p.parent) for p in sources} == {job_run.envs[1]["TMPDIR"]} == {"/scratch"}


@pytest.mark.slow
@needs_pods
def test_the_tfjob_pods_with_the_operators_tf_config_train_the_same_model(tfjob_run, job_run):
    _check_trained_day(tfjob_run)
    assert "TF_CONFIG" in tfjob_run.envs[0] and "MULTITOWER_WORKERS" not in tfjob_run.envs[0]
    # Same data, seed and cluster size as the Indexed Job: the same model.
    ours, theirs = _variables(_chief_checkpoint(tfjob_run)), _variables(_chief_checkpoint(job_run))
    for name, value in ours.items():
        np.testing.assert_allclose(value, theirs[name], rtol=1e-5, atol=1e-6, err_msg=name)


@pytest.mark.slow
@needs_pods
def test_a_killed_chief_then_every_pod_restarted_ends_where_the_uninterrupted_run_did(
        job_run, day_data, tmp_path):
    objects = _render("job")
    claim = _claim(day_data, tmp_path, objects)
    config_map = objects["ConfigMap"]
    node = pods.Node(tmp_path / "node", {CLAIM: claim},
                     {config_map["metadata"]["name"]: config_map["data"]})
    first = _pods(objects)
    ports = pods.free_ports(pods.worker_addresses(pods.container_env(first[0])))
    started = _start(node, first, ports)
    backup = claim / "model" / "backup" / f"dt={DAY}-from-0-workers-2" / "checkpoint"
    deadline = time.monotonic() + TIMEOUT
    while not backup.exists() and time.monotonic() < deadline and all(
            p.poll() is None for p, _ in started):
        time.sleep(0.02)
    started[0][0].kill()  # the chief, mid-day: SIGKILL, no cleanup
    codes = _wait(started)
    logs = "\n".join(s.read_log()[-3000:] for _, s in started)
    # The other worker fails by itself on its next collective, with exit code 1 (an error; 2,
    # a usage error, would fail the whole Job under the rendered pod failure policy).
    assert codes == [-9, 1], logs
    job = objects["Job"]
    actions = [pods.job_failure_action(job, CONTAINER, pods.container_exit_code(c))
               for c in codes]
    assert actions == ["Count", "Count"] and len(codes) <= job["spec"]["backoffLimit"]
    assert not (claim / "model" / "state.json").exists(), "the day ended before the kill"
    lease = json.loads((claim / "model" / "lease.json").read_text())
    assert (lease["run_id"], lease["host"]) == (JOB_UID, f"impressions-train-{DAY}-0")

    # So the Job controller replaces both failed pods (restartPolicy Never): new pods, fresh
    # scratch, the same index, host name and environment, hence the same run id. (It would
    # start each after its backoff delay; here both start when both have failed.)
    again = _pods(objects)
    assert [pods.container_env(p) for p in again] == [pods.container_env(p) for p in first]
    restarted = _start(node, again, ports)
    codes = _wait(restarted)
    chief = restarted[0][1].read_log()
    assert codes == [0, 0], "\n".join(s.read_log()[-3000:] for _, s in restarted)
    assert "took over the lease /data/model/lease.json: it is this run's own lease" in chief
    assert f"resuming from the backup {MOUNT}/model/backup/dt={DAY}-from-0-workers-2" in chief
    state = json.loads((claim / "model" / "state.json").read_text())
    reference = json.loads((job_run.claim / "model" / "state.json").read_text())
    assert state["global_step"] == reference["global_step"] == STEPS
    ours = _variables(claim / "model" / "checkpoints" / f"ckpt-{STEPS}")
    theirs = _variables(_chief_checkpoint(job_run))
    assert sorted(ours) == sorted(theirs)
    for name, value in ours.items():
        np.testing.assert_allclose(value, theirs[name], rtol=1e-5, atol=1e-6, err_msg=name)
    assert not os.listdir(claim / "model" / "backup")  # removed once the day is complete
    assert not (claim / "model" / "lease.json").exists()  # taken back, then released
