"""The state behind the Kubernetes API double (`api_double`), and its scripted pod controller.

Objects as the double stores them, pod watch events (each with its resourceVersion), pod logs,
and what a test scripts in place of the Job controller, the training operator and the kubelet:
`pod(index, phase, ...)` steps, `finish(ok, reason, message)` (the run's final condition) and
`expire()` (the watch cache drops its history: watches get 410 Expired). Pods get the names
and labels their controller gives them: `<job>-<index>-<5 chars>` with the
`batch.kubernetes.io/*` labels for an Indexed Job, `<job>-<5 chars>` for a plain one,
`<tfjob>-worker-<index>` with the `training.kubeflow.org/*` labels for a TFJob.
"""

from __future__ import annotations

import copy
import datetime as dt
import itertools
import threading
import uuid
from typing import Any

JOB_LABELS = ("batch.kubernetes.io/controller-uid", "batch.kubernetes.io/job-name",
              "controller-uid", "job-name")
INDEX_KEY = "batch.kubernetes.io/job-completion-index"


def pod(index: int, phase: str, *, log: tuple[str, ...] | list[str] = (), exit_code: int = 1,
        reason: str = "", message: str = "") -> dict[str, Any]:
    """A script step: the pod of `index` moves to `phase`, writing `log` lines.

    A `Pending` step for an index whose pod ended makes a new pod (a retry). For `Failed`,
    `exit_code` and `reason` (default `Error`) are its container's termination; with
    `reason="Evicted"` the pod itself is evicted instead. For `Pending`, `reason=
    "Unschedulable"` sets PodScheduled false.
    """
    return {"step": "pod", "index": index, "phase": phase, "log": list(log),
            "exit_code": exit_code, "reason": reason, "message": message}


def finish(ok: bool = True, reason: str = "", message: str = "") -> dict[str, Any]:
    """A script step: the run's controller sets its final condition."""
    return {"step": "finish", "ok": ok, "reason": reason, "message": message}


def expire() -> dict[str, Any]:
    """A script step: the watch cache drops old events; open watches get 410 Expired."""
    return {"step": "expire"}


def now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def matches(labels: dict[str, str], selector: str) -> bool:
    for term in filter(None, selector.split(",")):
        key, _, value = term.partition("=")
        if labels.get(key) != value.lstrip("="):
            return False
    return True


class ClusterState:
    """Objects, pod events and logs, and the scripts that move pods (under one lock)."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str, str], dict[str, Any]] = {}
        self.events: list[tuple[int, str, dict[str, Any]]] = []  # pods: (rv, type, pod)
        self.logs: dict[str, list[str]] = {}
        self.scripts: dict[str, list[dict[str, Any]]] = {}
        self.compacted = 0  # watches from an older resourceVersion get 410 Expired
        self._rv = itertools.count(1000)
        self._last_rv = 999
        self._cond = threading.Condition()
        self._stopping = False

    def script(self, run: str, steps: list[dict[str, Any]]) -> None:
        """What happens to the pods of the Job or TFJob named `run` once it exists."""
        with self._cond:
            self.scripts[run] = list(steps)

    def _next_rv(self) -> int:
        self._last_rv = next(self._rv)
        return self._last_rv

    def _stamp(self, obj: dict[str, Any]) -> dict[str, Any]:
        meta = obj["metadata"]
        meta.setdefault("uid", str(uuid.uuid4()))
        meta.setdefault("creationTimestamp", now())
        meta["resourceVersion"] = str(self._next_rv())
        return obj

    # Objects.

    def _pod_event(self, kind: str, obj: dict[str, Any]) -> None:
        if kind != "DELETED":
            self._stamp(obj)
        self.events.append((int(obj["metadata"]["resourceVersion"]) if kind != "DELETED"
                            else self._next_rv(), kind, copy.deepcopy(obj)))
        self._cond.notify_all()

    def _run(self, ns: str, selector: str) -> dict[str, Any] | None:
        """The scripted Job or TFJob whose pods `selector` selects."""
        for (_group, plural, n, name), obj in self.objects.items():
            if n == ns and plural in ("jobs", "tfjobs") and name in self.scripts and matches(
                    self._pod_labels(obj, 0), selector):
                return obj
        return None

    def _pod_labels(self, run: dict[str, Any], index: int) -> dict[str, str]:
        name, uid = run["metadata"]["name"], run["metadata"]["uid"]
        if run["kind"] == "TFJob":
            template = run["spec"]["tfReplicaSpecs"]["Worker"]["template"]
            return {**template["metadata"].get("labels", {}),
                    "training.kubeflow.org/job-name": name,
                    "training.kubeflow.org/operator-name": "tfjob-controller",
                    "training.kubeflow.org/replica-type": "worker",
                    "training.kubeflow.org/replica-index": str(index)}
        labels = dict(run["spec"]["template"]["metadata"]["labels"])
        labels.update({k: (uid if "uid" in k else name) for k in JOB_LABELS})
        if run["spec"].get("completionMode") == "Indexed":
            labels[INDEX_KEY] = str(index)
        return labels

    def _advance(self, run: dict[str, Any]) -> str:
        """Applies the run's next step(s): "event", "expire" or "" (nothing left)."""
        steps = self.scripts[run["metadata"]["name"]]
        while steps:
            step = steps.pop(0)
            if step["step"] == "expire":
                self.compacted = self._next_rv()
                return "expire"
            if step["step"] == "finish":
                self._finish(run, step)
                continue
            self._pod_step(run, step)
            while steps and steps[0]["step"] == "finish":  # the controller follows at once
                self._finish(run, steps.pop(0))
            return "event"
        return ""

    def _pod_step(self, run: dict[str, Any], step: dict[str, Any]) -> None:
        ns, index = run["metadata"]["namespace"], step["index"]
        labels = self._pod_labels(run, index)
        current = [o for (_, p, n, _), o in self.objects.items() if p == "pods" and n == ns
                   and matches(o["metadata"]["labels"], ",".join(
                       f"{k}={v}" for k, v in labels.items()))]
        pod_obj = current[-1] if current else None
        ended = pod_obj is not None and pod_obj["status"]["phase"] in ("Succeeded", "Failed")
        if pod_obj is None or (ended and step["phase"] == "Pending"):
            pod_obj = self._new_pod(run, index, labels)
        container = pod_obj["spec"]["containers"][0]["name"]
        st, at = pod_obj["status"], now()
        st["phase"] = step["phase"]
        cs = {"name": container, "image": pod_obj["spec"]["containers"][0]["image"],
              "ready": step["phase"] == "Running", "restartCount": 0,
              "started": step["phase"] == "Running"}
        if step["phase"] == "Pending":
            cs["state"] = {"waiting": {"reason": "ContainerCreating"}}
            if step["reason"] == "Unschedulable":
                st["conditions"] = [{"type": "PodScheduled", "status": "False",
                                     "reason": "Unschedulable", "message": step["message"]}]
        elif step["phase"] == "Running":
            cs["state"] = {"running": {"startedAt": at}}
        elif step["phase"] == "Failed" and step["reason"] == "Evicted":
            st.update(reason="Evicted", message=step["message"])
            cs["state"] = {"terminated": {"exitCode": 137, "reason": "Error",
                                          "startedAt": at, "finishedAt": at}}
        else:
            ok = step["phase"] == "Succeeded"
            cs["state"] = {"terminated": {"exitCode": 0 if ok else step["exit_code"],
                                          "reason": "Completed" if ok else (
                                              step["reason"] or "Error"),
                                          "startedAt": at, "finishedAt": at}}
            if step["message"] and not ok:
                cs["state"]["terminated"]["message"] = step["message"]
        st["containerStatuses"] = [cs]
        self.logs.setdefault(pod_obj["metadata"]["name"], []).extend(step["log"])
        self._pod_event("MODIFIED" if current and pod_obj is current[-1] else "ADDED", pod_obj)
        self._count(run)

    def _count(self, run: dict[str, Any]) -> None:
        """The run's pod counts, as its controller keeps them in its status."""
        selector = ",".join(f"{k}={v}" for k, v in self._pod_labels(run, 0).items()
                            if "index" not in k)
        phases = [o["status"]["phase"] for (_, p, n, _), o in self.objects.items()
                  if p == "pods" and n == run["metadata"]["namespace"]
                  and matches(o["metadata"]["labels"], selector)]
        counts = {"active": sum(p in ("Pending", "Running") for p in phases),
                  "succeeded": phases.count("Succeeded"), "failed": phases.count("Failed")}
        if run["kind"] == "TFJob":
            run["status"]["replicaStatuses"] = {"Worker": counts}
        else:
            run["status"].update(counts)
        self._stamp(run)

    def _new_pod(self, run: dict[str, Any], index: int, labels: dict[str, str]
                 ) -> dict[str, Any]:
        meta, tfjob = run["metadata"], run["kind"] == "TFJob"
        template = run["spec"]["tfReplicaSpecs"]["Worker"]["template"] if tfjob else run[
            "spec"]["template"]
        indexed = run["spec"].get("completionMode") == "Indexed"
        suffix = uuid.uuid4().hex[:5]
        name = (f"{meta['name']}-worker-{index}" if tfjob else f"{meta['name']}-{index}-{suffix}"
                if indexed else f"{meta['name']}-{suffix}")
        spec = copy.deepcopy(template["spec"])
        if indexed:
            spec["hostname"] = f"{meta['name']}-{index}"
        obj = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": name, "namespace": meta["namespace"], "labels": labels,
                            "annotations": {INDEX_KEY: str(index)} if indexed else {},
                            "ownerReferences": [{"apiVersion": run["apiVersion"],
                                                 "kind": run["kind"], "name": meta["name"],
                                                 "uid": meta["uid"], "controller": True,
                                                 "blockOwnerDeletion": True}]},
               "spec": spec, "status": {"phase": "Pending", "conditions": [
                   {"type": "PodScheduled", "status": "True"}]}}
        self._stamp(obj)
        self.objects[("", "pods", meta["namespace"], name)] = obj
        return obj

    def _finish(self, run: dict[str, Any], step: dict[str, Any]) -> None:
        at = now()
        if run["kind"] == "TFJob":
            kind = "Succeeded" if step["ok"] else "Failed"
            reason = step["reason"] or f"TFJob{kind}"
            conditions = [{"type": "Created", "status": "True", "reason": "TFJobCreated"},
                          {"type": "Running", "status": "False", "reason": "TFJobRunning"},
                          {"type": kind, "status": "True", "reason": reason,
                           "message": step["message"], "lastTransitionTime": at}]
        else:
            first, kind = ("SuccessCriteriaMet", "Complete") if step["ok"] else (
                "FailureTarget", "Failed")
            conditions = [{"type": t, "status": "True", "reason": step["reason"],
                           "message": step["message"], "lastProbeTime": at,
                           "lastTransitionTime": at} for t in (first, kind)]
        run["status"]["conditions"] = conditions
        self._stamp(run)
