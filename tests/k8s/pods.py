"""Runs the pods a rendered training object makes as local processes, as a node would run them.

What Kubernetes does between a rendered object and a running container, done here from the
rendered dict and nothing else:

- **the controller** makes pod i from the template: the Job controller adds its labels (the
  Job's uid among them), the completion-index annotation and `JOB_COMPLETION_INDEX`
  (`indexed_job_pods`); Kubeflow's training operator adds its labels and `TF_CONFIG`, built as
  its `genTFConfigJSONStr` builds it (`tfjob_pods`, `operator_tf_config`);
- **the kubelet** resolves the container's `env` (values, `$(VAR)` references, downward-API
  `fieldRef`s) over the image's `ENV` (read from the `Dockerfile`), and mounts the pod's
  volumes at their `mountPath`s (`Node`, `start_pod`);
- **the container runtime** starts `command` + `args` in `workingDir`, as the pod's
  `runAsUser`/`runAsGroup` (+ `fsGroup`), with no privilege escalation, in a private mount
  namespace whose root file system is read-only (`readOnlyRootFilesystem`): only the
  mounted volumes can be written (`start_pod`, then `tests/k8s/container_runtime.py` in the
  new process before it execs the command).

The one difference from a cluster is in `loopback`: the workers' DNS names become localhost
ports. The image is this machine's root file system seen through an overlay (the venv's
`multitower` script on `PATH` stands for the image's); `envFrom` is not resolved, as no Secret
exists here; resource requests and limits are not enforced; the pods share this machine's
process and network namespaces. Needs root and mount namespaces (`sandbox_problem` says why
not, for a skip).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import sysconfig
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from multitower.cluster import WORKERS_VARIABLE

REPO = Path(__file__).resolve().parents[2]
RUNTIME = str(Path(__file__).with_name("container_runtime.py"))
# Kubernetes' and the training operator's own names, written out: a different name in the
# rendered objects would show as a variable or port the pods do not get.
INDEX_VARIABLE = "JOB_COMPLETION_INDEX"
JOB_INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"
TFJOB_CONTAINER = "tensorflow"  # kubeflowv1.TFJobDefaultContainerName
TFJOB_PORT_NAME = "tfjob-port"  # kubeflowv1.TFJobDefaultPortName
# The base image's variables (python:3.11-slim) under the Dockerfile's own ENV lines; its
# /usr/local/bin, where the image's `multitower` script is, is this venv's bin folder here.
BASE_IMAGE_ENV = {"PATH": f"{Path(sys.executable).parent}:/usr/local/sbin:/usr/local/bin:"
                          "/usr/sbin:/usr/bin:/sbin:/bin",
                  "LANG": "C.UTF-8"}


@dataclass
class Pod:
    """One pod as its controller creates it from the rendered template."""

    name: str
    namespace: str
    hostname: str
    labels: dict[str, str]
    annotations: dict[str, str]
    spec: dict[str, Any]  # the template's pod spec, with what the controller adds

    @property
    def container(self) -> dict[str, Any]:
        """The pod's only container."""
        (container,) = self.spec["containers"]
        return container


def indexed_job_pods(job: Mapping[str, Any], uid: str) -> list[Pod]:
    """The pods of an Indexed Job whose uid is `uid`, as the Job controller creates them.

    Labels: the template's, the Job's uid and name (Kubernetes 1.27+ and the legacy keys) and
    the completion index (1.28+); `JOB_COMPLETION_INDEX` comes from the index annotation; the
    host name is `<job>-<index>` (the subdomain is the template's).
    """
    name, spec = job["metadata"]["name"], job["spec"]
    assert spec["completionMode"] == "Indexed"
    made = []
    for index in range(spec["completions"]):
        template = json.loads(json.dumps(spec["template"]))
        labels = {**template["metadata"].get("labels", {}),
                  "batch.kubernetes.io/controller-uid": uid, "controller-uid": uid,
                  "batch.kubernetes.io/job-name": name, "job-name": name,
                  JOB_INDEX_ANNOTATION: str(index)}
        for container in template["spec"]["containers"]:
            container.setdefault("env", []).append({"name": INDEX_VARIABLE, "valueFrom": {
                "fieldRef": {"fieldPath": f"metadata.annotations['{JOB_INDEX_ANNOTATION}']"}}})
        made.append(Pod(f"{name}-{index}-{uuid.uuid4().hex[:5]}", job["metadata"]["namespace"],
                        f"{name}-{index}", labels, {JOB_INDEX_ANNOTATION: str(index)},
                        template["spec"]))
    return made


def operator_tf_config(tfjob: Mapping[str, Any], replica_type: str, index: int) -> str:
    """`TF_CONFIG` as Kubeflow's training operator builds it (`genTFConfigJSONStr`).

    Every replica type, lower-cased, lists `<job>-<type>-<i>.<namespace>.svc:<port>`, the port
    being the one named `tfjob-port` of the `tensorflow` container; the task is the lower-cased
    type and the index; `environment` is `cloud`. Go's `json.Marshal`: no spaces, struct fields
    in declaration order (cluster, task, environment), map keys sorted.
    """
    name, namespace = tfjob["metadata"]["name"], tfjob["metadata"]["namespace"]
    cluster = {}
    for rtype, spec in sorted(tfjob["spec"]["tfReplicaSpecs"].items(),
                              key=lambda item: item[0].lower()):
        (container,) = [c for c in spec["template"]["spec"]["containers"]
                        if c["name"] == TFJOB_CONTAINER]
        (port,) = [p["containerPort"] for p in container.get("ports", [])
                   if p["name"] == TFJOB_PORT_NAME]
        rt = rtype.lower()
        cluster[rt] = [f"{name}-{rt}-{i}.{namespace}.svc:{port}"
                       for i in range(spec["replicas"])]
    return json.dumps({"cluster": cluster,
                       "task": {"type": replica_type.lower(), "index": index},
                       "environment": "cloud"}, separators=(",", ":"))


def tfjob_pods(tfjob: Mapping[str, Any]) -> list[Pod]:
    """The pods of a TFJob's Worker replicas, as the training operator creates them.

    Name and host `<job>-worker-<i>`; labels: the template's, the operator's
    (`training.kubeflow.org/...`: operator name, job name, replica type and index, and the
    `master` role of worker 0 when there is no chief); `TF_CONFIG` appended to the `tensorflow`
    container's env when the job is distributed (more than one replica in all).
    """
    name = tfjob["metadata"]["name"]
    spec = tfjob["spec"]["tfReplicaSpecs"]["Worker"]
    distributed = sum(s["replicas"] for s in tfjob["spec"]["tfReplicaSpecs"].values()) > 1
    made = []
    for index in range(spec["replicas"]):
        template = json.loads(json.dumps(spec["template"]))
        labels = {**template["metadata"].get("labels", {}),
                  "training.kubeflow.org/operator-name": "tfjob-controller",
                  "training.kubeflow.org/job-name": name,
                  "training.kubeflow.org/replica-type": "worker",
                  "training.kubeflow.org/replica-index": str(index)}
        if index == 0:
            labels["training.kubeflow.org/job-role"] = "master"
        template["spec"]["restartPolicy"] = spec["restartPolicy"]
        for container in template["spec"]["containers"]:
            if container["name"] == TFJOB_CONTAINER and distributed:
                container.setdefault("env", []).append(
                    {"name": "TF_CONFIG", "value": operator_tf_config(tfjob, "Worker", index)})
        pod_name = f"{name}-worker-{index}"
        made.append(Pod(pod_name, tfjob["metadata"]["namespace"], pod_name, labels, {},
                        template["spec"]))
    return made


def image_env(dockerfile: Path = REPO / "Dockerfile") -> dict[str, str]:
    """The image's variables: the base image's, then the Dockerfile's `ENV` lines."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    found = dict(BASE_IMAGE_ENV)
    for line in text.splitlines():
        if line.startswith("ENV "):
            found.update(pair.split("=", 1) for pair in line[4:].split())
    return found


def _expand(value: str, env: Mapping[str, str]) -> str:
    """Kubernetes' `$(VAR)` expansion: defined names are replaced, `$$` is a literal `$`."""
    def one(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        return env.get(match.group(1), match.group(0))
    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)", one, value)


def _field(pod: Pod, path: str) -> str:
    """A downward-API `fieldRef` (a missing label or annotation is empty, as the kubelet has)."""
    subscript = re.fullmatch(r"metadata\.(labels|annotations)\['([^']+)'\]", path)
    if subscript:
        where = pod.labels if subscript.group(1) == "labels" else pod.annotations
        return where.get(subscript.group(2), "")
    simple = {"metadata.name": pod.name, "metadata.namespace": pod.namespace,
              "spec.nodeName": socket.gethostname(), "status.podIP": "127.0.0.1",
              "status.hostIP": "127.0.0.1",
              "spec.serviceAccountName": pod.spec.get("serviceAccountName", "default")}
    if path not in simple:
        raise ValueError(f"fieldRef {path!r} is not resolved by this double")
    return simple[path]


def container_env(pod: Pod) -> dict[str, str]:
    """The container's environment as the kubelet makes it, over the image's variables.

    `envFrom` is left out: it names the storage Secret, and no Secret exists here (the tests'
    storage is a volume). `HOSTNAME` is the pod's host name, as the runtime sets it.
    """
    container = pod.container
    env = {**image_env(), "HOSTNAME": pod.hostname}
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = _expand(item["value"], env)
        elif "fieldRef" in item.get("valueFrom", {}):
            env[item["name"]] = _field(pod, item["valueFrom"]["fieldRef"]["fieldPath"])
        else:
            raise ValueError(f"env {item['name']}: {item.get('valueFrom')} is not resolved here")
    return env


def container_argv(pod: Pod, env: Mapping[str, str]) -> list[str]:
    """`command` + `args`, with `$(VAR)` references expanded as the kubelet does."""
    return [_expand(a, env) for a in [*pod.container["command"], *pod.container.get("args", [])]]


def worker_addresses(env: Mapping[str, str]) -> list[str]:
    """Every worker's DNS `host:port`, from `MULTITOWER_WORKERS` or the operator's `TF_CONFIG`."""
    if env.get(WORKERS_VARIABLE):
        return env[WORKERS_VARIABLE].split(",")
    if env.get("TF_CONFIG"):
        return [a for hosts in json.loads(env["TF_CONFIG"])["cluster"].values() for a in hosts]
    return []


def loopback(env: Mapping[str, str], ports: Mapping[str, int]) -> dict[str, str]:
    """The only change made to a pod's environment: each worker's DNS name -> a localhost port.

    On a cluster `<pod>.<service>.<namespace>.svc:2222` reaches pod `<pod>` (the headless
    Service, or the operator's Service per worker); here every worker is a process on this
    machine, so each address in `MULTITOWER_WORKERS` and in `TF_CONFIG`'s cluster becomes
    `localhost:<ports[address]>`. Nothing else differs from what the kubelet would set.

    Args:
        env: The pod's environment (`container_env`).
        ports: A free localhost port per worker address.
    """
    changed = dict(env)
    if env.get(WORKERS_VARIABLE):
        changed[WORKERS_VARIABLE] = ",".join(
            f"localhost:{ports[a]}" for a in env[WORKERS_VARIABLE].split(","))
    if env.get("TF_CONFIG"):
        spec = json.loads(env["TF_CONFIG"])
        spec["cluster"] = {kind: [f"localhost:{ports[a]}" for a in hosts]
                           for kind, hosts in spec["cluster"].items()}
        changed["TF_CONFIG"] = json.dumps(spec, separators=(",", ":"))
    return changed


def free_ports(addresses: Sequence[str]) -> dict[str, int]:
    """A distinct localhost port free right now for each address."""
    sockets = [socket.socket() for _ in addresses]
    try:
        for s in sockets:
            s.bind(("localhost", 0))
        return {a: s.getsockname()[1] for a, s in zip(addresses, sockets, strict=True)}
    finally:
        for s in sockets:
            s.close()


def container_exit_code(returncode: int) -> int:
    """The exit code a container runtime reports for a process: 128 + N when killed by signal N."""
    return 128 - returncode if returncode < 0 else returncode


def job_failure_action(job: Mapping[str, Any], container: str, exit_code: int) -> str:
    """What the Job controller does with a failed pod under the Job's `podFailurePolicy`.

    The first rule whose `onExitCodes` matches the container's exit code decides (`FailJob`,
    `FailIndex`, `Ignore` or `Count`); with no match the failure counts against
    `backoffLimit` (`Count`). `onPodConditions` rules need a pod condition (an eviction's
    `DisruptionTarget`), which a process that dies here never has.
    """
    for rule in job["spec"].get("podFailurePolicy", {}).get("rules", []):
        codes = rule.get("onExitCodes")
        if not codes or codes.get("containerName", container) != container:
            continue
        listed = exit_code in codes["values"]
        if listed == (codes["operator"] == "In"):
            return rule["action"]
    return "Count"


def apply_fs_group(folder: Path, gid: int) -> None:
    """What the kubelet does to a volume for the pod's `fsGroup`: group-owned, group-writable,
    folders set-group-id (so new files get the group too)."""
    for path in [folder, *folder.rglob("*")]:
        os.chown(path, -1, gid)
        mode = path.stat().st_mode
        path.chmod(mode | (0o2070 if path.is_dir() else 0o060))


@dataclass
class Node:
    """What the node gives the pods: claims bound to local folders, ConfigMaps, a workspace.

    Args:
        root: Where the pods' emptyDirs, ConfigMap files and root overlays go.
        claims: PersistentVolumeClaim name -> the local folder bound to it.
        config_maps: ConfigMap name -> its data.
    """

    root: Path
    claims: dict[str, Path]
    config_maps: dict[str, dict[str, str]]
    started: dict[str, int] = field(default_factory=dict)  # pod name -> containers started


@dataclass
class PodSandbox:
    """A started pod's local folders: its volumes and its log."""

    pod: Pod
    folder: Path
    log: Path
    volumes: dict[str, Path]

    def scratch(self) -> Path:
        """The pod's scratch emptyDir (HOME, TMPDIR and the caches point into it)."""
        return self.volumes["scratch"]

    def read_log(self) -> str:
        return self.log.read_text(errors="replace")


def _volume_folder(node: Node, pod: Pod, volume: Mapping[str, Any], folder: Path) -> Path:
    if "emptyDir" in volume:
        path = folder / "volumes" / volume["name"]
        path.mkdir(parents=True)
        path.chmod(0o777)  # an emptyDir is writable by any user
        return path
    if "configMap" in volume:
        path = folder / "volumes" / volume["name"]
        path.mkdir(parents=True)
        for key, text in node.config_maps[volume["configMap"]["name"]].items():
            (path / key).write_text(text)
            (path / key).chmod(0o644)  # the volume's defaultMode
        return path
    if "persistentVolumeClaim" in volume:
        return node.claims[volume["persistentVolumeClaim"]["claimName"]]
    raise ValueError(f"volume {volume['name']}: not a kind this double mounts")


def _mounts(pod: Pod, volumes: Mapping[str, Path]) -> list[tuple[str, str, bool]]:
    """(source, mount path, read-only) for each volumeMount, parents before children."""
    kinds = {v["name"]: v for v in pod.spec.get("volumes", [])}
    found = []
    for mount in pod.container.get("volumeMounts", []):
        source = volumes[mount["name"]]
        if mount.get("subPath"):
            source = source / mount["subPath"]
            source.mkdir(exist_ok=True)
            source.chmod(source.parent.stat().st_mode & 0o7777)
        volume = kinds[mount["name"]]
        read_only = bool(mount.get("readOnly")) or "configMap" in volume or bool(
            volume.get("persistentVolumeClaim", {}).get("readOnly"))
        found.append((str(source), mount["mountPath"], read_only))
    return sorted(found, key=lambda m: m[1].count("/"))


def _user(pod: Pod) -> tuple[int, int, list[int]]:
    pod_context = pod.spec.get("securityContext", {})
    context = {**pod_context, **pod.container.get("securityContext", {})}
    groups = [pod_context["fsGroup"]] if "fsGroup" in pod_context else []
    return context.get("runAsUser", 0), context.get("runAsGroup", 0), groups


def start_pod(node: Node, pod: Pod, env: Mapping[str, str], *,
              files: Mapping[str, str] | None = None) -> tuple[subprocess.Popen, PodSandbox]:
    """Starts the pod's container: a new container of that pod each time (fresh emptyDirs).

    Args:
        node: Volumes and workspace.
        pod: The pod.
        env: Its environment (`loopback(container_env(pod), ...)`).
        files: Files added to the pod's root file system (path -> text), as a derived image
            would add them; the command, args and environment are unchanged.

    Returns:
        The process (the container's command itself, after `enter_pod` execs it) and its
        folders.
    """
    attempt = node.started.get(pod.name, 0)
    node.started[pod.name] = attempt + 1
    folder = node.root / pod.name / f"attempt-{attempt}"
    for sub in ("upper", "work", "root"):
        (folder / sub).mkdir(parents=True)
    volumes = {v["name"]: _volume_folder(node, pod, v, folder)
               for v in pod.spec.get("volumes", [])}
    uid, gid, groups = _user(pod)
    context = pod.container.get("securityContext", {})
    spec = {
        "root": str(folder / "root"), "upper": str(folder / "upper"),
        "work": str(folder / "work"), "mounts": _mounts(pod, volumes),
        "read_only_root": bool(context.get("readOnlyRootFilesystem")),
        "hostname": pod.hostname, "cwd": pod.container.get("workingDir", "/"),
        "argv": container_argv(pod, env), "env": dict(env), "uid": uid, "gid": gid,
        "groups": groups, "no_new_privs": context.get("allowPrivilegeEscalation") is False,
        "files": dict(files or {}), "traverse": _interpreter_folders() if uid else [],
    }
    spec["keep"] = _hidden_image_paths(spec["mounts"])
    spec_path = folder / "pod.json"
    spec_path.write_text(json.dumps(spec))
    log = folder / "log.txt"
    with log.open("w") as out:
        process = subprocess.Popen([sys.executable, RUNTIME, str(spec_path)],
                                   stdout=out, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, cwd="/")
    return process, PodSandbox(pod, folder, log, volumes)


def _interpreter_folders() -> list[str]:
    """Folders on the way to this venv's interpreter that other users cannot traverse.

    The interpreter lives under /root (mode 700) on this machine; in the image it is under
    /usr/local, readable by every user. Those folders get o+x in the pod's overlay only.
    """
    closed = []
    for start in (os.path.realpath(sys.executable), sys.prefix):
        for parent in Path(start).parents:
            if not parent.stat().st_mode & 0o001:
                closed.append(str(parent))
    return sorted(set(closed))


def site_packages() -> str:
    """Where the venv's interpreter looks for `sitecustomize` (files added to the image)."""
    return sysconfig.get_paths()["purelib"]


def sandbox_problem() -> str | None:
    """Why pods cannot be run here (not root, no mount namespaces or overlays), or None."""
    if os.geteuid() != 0:
        return "needs root, to make each pod's mount namespace"
    if "overlay" not in Path("/proc/filesystems").read_text():
        return "the kernel has no overlay file system"
    if shutil.which("unshare") is None:
        return "no `unshare` command to check for mount namespaces"
    probe = subprocess.run(["unshare", "--mount", "true"], capture_output=True, text=True)
    if probe.returncode:
        return f"no mount namespaces here: {probe.stderr.strip()}"
    return None


def _hidden_image_paths(mounts: list[tuple[str, str, bool]]) -> list[str]:
    """The image's own folders (this checkout, the venv) that a pod's mount would hide.

    In an image the project lives in `/opt/multitower`; here it lives wherever the checkout
    is, e.g. under `/tmp` when CI clones into `mktemp -d`, and the pod's scratch mounted at
    `/tmp` would hide it. The runtime shows these folders again, from the pod's own root.
    """
    def under(path: str, target: str) -> bool:
        return path == target or path.startswith(target.rstrip("/") + "/")

    wanted = sorted({str(REPO), os.path.realpath(sys.prefix)})
    hidden = [p for p in wanted if any(under(p, target) for _, target, _ in mounts)]
    return [p for p in hidden if not any(q != p and under(p, q) for q in hidden)]
