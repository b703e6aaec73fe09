"""Waiting for a submitted Job or TFJob: progress from a pod watch, worker 0's log, the failure.

The Job (or TFJob) says when the run is over: its `Complete`/`Failed` condition (`Succeeded`/
`Failed` for a TFJob). Its pods say how it goes: they are listed, then watched from the list's
resourceVersion with the Job's label selector, and a line is printed whenever the number of
pods pending / running / succeeded / failed changes. The Job is read again after each pod that
ends and after each watch round (`ClientSettings.watch_seconds`), since the controller sets
its condition a moment after the last pod ends. A watch whose resourceVersion is too old
(410 Gone: an `ERROR` event holding an `Expired` Status, or the HTTP answer itself) is
resumed the documented way: list again, watch from the new resourceVersion.

`--follow` streams worker 0's log (completion index 0, or the TFJob's worker 0, or the one pod
of the preprocess Job) to stdout from a thread, from the moment its container runs. When the
run fails, the failing pod's reason (its container's termination reason and exit code, the
pod's own reason such as `Evicted`, or a pod condition) and the last lines of its log make the
report.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import urllib3

from k8s.client import ApiError, Kube
from multitower.errors import MultitowerError

JOB_INDEX_LABEL = "batch.kubernetes.io/job-completion-index"
JOB_UID_LABEL = "batch.kubernetes.io/controller-uid"
TFJOB_NAME_LABEL = "training.kubeflow.org/job-name"
TFJOB_TYPE_LABEL = "training.kubeflow.org/replica-type"
TFJOB_INDEX_LABEL = "training.kubeflow.org/replica-index"
TFJOB = ("kubeflow.org", "v1", "tfjobs")
PHASES = ("Pending", "Running", "Succeeded", "Failed")
# Waiting reasons that are only a step of a normal start, not a problem to report.
_STARTING = {None, "", "ContainerCreating", "PodInitializing"}


@dataclass(frozen=True)
class Workload:
    """A submitted Job or TFJob, as `Waiter` follows it."""

    kind: str  # Job or TFJob
    name: str
    namespace: str
    uid: str
    indexed: bool = False  # an Indexed Job: worker 0 is completion index 0

    def __str__(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}"

    @property
    def selector(self) -> str:
        """The label selector of its pods (the controller's labels, not the template's)."""
        if self.kind == "TFJob":
            return f"{TFJOB_NAME_LABEL}={self.name}"
        return f"{JOB_UID_LABEL}={self.uid}"

    def is_worker0(self, pod: dict[str, Any]) -> bool:
        """True for the pods whose log `--follow` streams."""
        labels = pod["metadata"].get("labels") or {}
        if self.kind == "TFJob":
            return labels.get(TFJOB_TYPE_LABEL) == "worker" and labels.get(TFJOB_INDEX_LABEL) == "0"
        return not self.indexed or labels.get(JOB_INDEX_LABEL) == "0"


def workload(obj: dict[str, Any]) -> Workload:
    """The `Workload` of a Job or TFJob as the API server returned it (with its uid)."""
    meta = obj["metadata"]
    indexed = obj["kind"] == "Job" and obj["spec"].get("completionMode") == "Indexed"
    return Workload(obj["kind"], meta["name"], meta["namespace"], meta["uid"], indexed)


@dataclass(frozen=True)
class JobState:
    """Where a Job or TFJob stands: over or not, and how it ended."""

    done: bool
    succeeded: bool = False
    reason: str = ""
    message: str = ""
    summary: str = ""  # for people: "1 active, 0 succeeded, 0 failed"


def job_state(obj: dict[str, Any]) -> JobState:
    """Reads a Job's (or TFJob's) conditions and counts."""
    status = obj.get("status") or {}
    ok, bad = ("Succeeded", "Failed") if obj["kind"] == "TFJob" else ("Complete", "Failed")
    if obj["kind"] == "TFJob":
        replicas = (status.get("replicaStatuses") or {}).get("Worker") or {}
        counts = {k: replicas.get(k, 0) for k in ("active", "succeeded", "failed")}
    else:
        counts = {k: status.get(k, 0) for k in ("active", "succeeded", "failed")}
    summary = ", ".join(f"{v} {k}" for k, v in counts.items())
    for condition in status.get("conditions") or []:
        if condition.get("status") != "True" or condition.get("type") not in (ok, bad):
            continue
        return JobState(True, condition["type"] == ok, condition.get("reason", ""),
                        condition.get("message", ""), summary)
    return JobState(False, summary=summary)


def read_state(kube: Kube, w: Workload) -> JobState:
    """GETs the Job or TFJob and reads its state.

    Raises:
        ApiError: It is gone (deleted while waited for), or the server refused.
        ApiUnreachableError: As `Kube.call`.
    """
    if w.kind == "TFJob":
        obj = kube.call(f"read {w}", kube.custom.get_namespaced_custom_object, *TFJOB[:2],
                        w.namespace, TFJOB[2], w.name)
    else:
        obj = kube.call(f"read {w}", kube.batch.read_namespaced_job, w.name, w.namespace)
    return job_state(obj)


def pod_reason(pod: dict[str, Any]) -> tuple[str, str]:
    """(container, why) for a pod that failed or cannot start; container may be `""`.

    In order: a container that terminated with a non-zero exit code (its reason, e.g. `Error`
    or `OOMKilled`, and message), a container that cannot start (`ImagePullBackOff`,
    `CreateContainerConfigError`...), the pod's own reason (`Evicted`, `DeadlineExceeded`),
    then a condition that explains it (`DisruptionTarget`, or `PodScheduled` false:
    unschedulable).
    """
    status = pod.get("status") or {}
    containers = (status.get("initContainerStatuses") or []) + (
        status.get("containerStatuses") or [])
    for cs in containers:
        for key in ("state", "lastState"):
            ended = (cs.get(key) or {}).get("terminated")
            if ended and ended.get("exitCode", 0) != 0:
                why = (f"container {cs['name']}: {ended.get('reason') or 'Terminated'}, exit "
                       f"code {ended['exitCode']}")
                return cs["name"], why + (f": {ended['message']}" if ended.get("message") else "")
        waiting = (cs.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") not in _STARTING:
            why = f"container {cs['name']}: {waiting['reason']}"
            return cs["name"], why + (f": {waiting['message']}" if waiting.get("message") else "")
    if status.get("reason"):
        return "", f"{status['reason']}: {status.get('message', '')}".rstrip(": ")
    for condition in status.get("conditions") or []:
        kind, value = condition.get("type"), condition.get("status")
        if (kind, value) in (("DisruptionTarget", "True"), ("PodScheduled", "False")):
            return "", (f"{kind} {condition.get('reason', '')}: "
                        f"{condition.get('message', '')}").rstrip(": ")
    return "", f"phase {status.get('phase', 'Unknown')}"


@dataclass
class Outcome:
    """How a waited-for run ended, and what to show when it failed."""

    workload: Workload
    state: JobState
    pod: str = ""
    why: str = ""
    log_tail: list[str] = field(default_factory=list)

    @property
    def succeeded(self) -> bool:
        """True when the Job (or TFJob) succeeded."""
        return self.state.succeeded

    def summary(self) -> str:
        """One line: what failed, and why."""
        reason = ": ".join(x for x in (self.state.reason, self.state.message) if x)
        text = f"{self.workload} failed" + (f" ({reason})" if reason else "")
        return text + (f"; pod {self.pod}: {self.why}" if self.pod else "")

    def details(self) -> list[str]:
        """The failing pod's reason and the last lines of its log, for people."""
        if not self.pod:
            return [f"{self.workload}: no failed pod left to show (pods are gone, or the Job "
                    f"failed before starting one)"]
        lines = [f"pod {self.pod}: {self.why}"]
        if self.log_tail:
            lines.append(f"last {len(self.log_tail)} line(s) of its log:")
            lines += [f"  | {line}" for line in self.log_tail]
        return lines


class JobFailedError(MultitowerError):
    """A submitted run failed; `details` are the lines to print before the message."""

    def __init__(self, message: str, details: list[str]) -> None:
        super().__init__(message)
        self.details = details


class Waiter:
    """Waits for one Job or TFJob, printing progress, optionally streaming worker 0's log.

    Args:
        kube: The client.
        w: What to wait for.
        echo: Prints one progress line (stderr).
        log_line: Prints one line of worker 0's log (stdout); None: no `--follow`.
        tail_lines: How many lines of the failing pod's log to show.
    """

    def __init__(self, kube: Kube, w: Workload, echo: Callable[[str], None],
                 log_line: Callable[[str], None] | None = None, tail_lines: int = 20) -> None:
        self.kube, self.w, self.echo, self.log_line = kube, w, echo, log_line
        self.tail_lines = tail_lines
        self.pods: dict[str, dict[str, Any]] = {}
        self.resource_version = ""
        self._shown = ""
        self._followers: list[tuple[threading.Thread, list[Any]]] = []
        self._followed: set[str] = set()

    def wait(self) -> Outcome:
        """Returns once the run is over (at once for one that already ended).

        Raises:
            ApiError: The Job was deleted while waited for, or a request was refused.
            ApiUnreachableError: As `Kube.call`.
        """
        state = read_state(self.kube, self.w)
        self._list()
        while not state.done:
            try:
                state = self._watch_round() or read_state(self.kube, self.w)
            except _ExpiredError as expired:
                self.echo(f"{self.w}: the pod watch expired ({expired}); listing the pods again")
                self._list()
                state = read_state(self.kube, self.w)
        self._join_followers()
        outcome = Outcome(self.w, state)
        self.echo(f"{self.w} {'succeeded' if state.succeeded else 'failed'}"
                  + (f": {state.summary}" if state.summary else ""))
        if not state.succeeded:
            self._explain(outcome)
        return outcome

    def _list(self) -> None:
        answer = self.kube.call(f"list the pods of {self.w}", self.kube.core.list_namespaced_pod,
                                self.w.namespace, label_selector=self.w.selector)
        self.pods = {p["metadata"]["name"]: p for p in answer.get("items") or []}
        self.resource_version = answer["metadata"]["resourceVersion"]
        self._progress()

    def _watch_round(self) -> JobState | None:
        """Watches pods for one round; returns the state if a pod's end ended the run."""
        seconds = self.kube.settings.watch_seconds
        try:
            response = self.kube.call(
                f"watch the pods of {self.w}", self.kube.core.list_namespaced_pod,
                self.w.namespace, label_selector=self.w.selector, watch=True,
                resource_version=self.resource_version, timeout_seconds=seconds,
                allow_watch_bookmarks=True, stream=True,
                read_timeout=seconds + self.kube.settings.request_timeout)
        except ApiError as err:
            if err.status == 410:
                raise _ExpiredError(str(err)) from None
            raise
        try:
            for raw in response:
                line = raw.decode("utf-8", errors="replace").strip()
                if line:
                    state = self._event(json.loads(line))
                    if state is not None and state.done:
                        return state
        except urllib3.exceptions.HTTPError:
            pass  # the connection dropped mid-watch: read the state, then watch again
        finally:
            response.close()
            response.release_conn()
        return None

    def _event(self, event: dict[str, Any]) -> JobState | None:
        kind, obj = event.get("type"), event.get("object") or {}
        if kind == "ERROR":
            if obj.get("code") == 410:
                raise _ExpiredError(f"{obj.get('reason', 'Gone')}: {obj.get('message', '')}")
            raise ApiError(f"watch the pods of {self.w}: {obj.get('message', obj)}",
                           int(obj.get("code") or 0), str(obj.get("reason", "")))
        self.resource_version = obj["metadata"]["resourceVersion"]
        if kind == "BOOKMARK":
            return None
        name = obj["metadata"]["name"]
        if kind == "DELETED":
            self.pods.pop(name, None)
        else:
            self.pods[name] = obj
        self._progress()
        if (obj.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            return read_state(self.kube, self.w)
        return None

    def _progress(self) -> None:
        counts = dict.fromkeys(PHASES, 0)
        for pod in self.pods.values():
            phase = (pod.get("status") or {}).get("phase", "Pending")
            counts[phase] = counts.get(phase, 0) + 1
        line = ", ".join(f"{n} {phase.lower()}" for phase, n in counts.items()
                         if phase in PHASES or n)
        if line != self._shown:
            self._shown = line
            self.echo(f"{self.w}: pods {line}")
        if self.log_line is not None:
            for name, pod in sorted(self.pods.items()):
                if name not in self._followed and self.w.is_worker0(pod) and _started(pod):
                    self._follow(pod)

    def _follow(self, pod: dict[str, Any]) -> None:
        name = pod["metadata"]["name"]
        container = pod["spec"]["containers"][0]["name"]
        self._followed.add(name)
        self.echo(f"{self.w}: following the log of pod {name} (worker 0)")
        holder: list[Any] = []  # the open response, to close it if the stream never ends
        emit = self.log_line
        assert emit is not None

        def stream() -> None:
            try:
                response = self.kube.call(
                    f"follow the log of pod {self.w.namespace}/{name}",
                    self.kube.core.read_namespaced_pod_log, name, self.w.namespace,
                    container=container, follow=True, stream=True, read_timeout=0)
                holder.append(response)
                for raw in response:
                    emit(raw.decode("utf-8", errors="replace").rstrip("\n"))
            except (MultitowerError, urllib3.exceptions.HTTPError) as err:
                if not holder or not getattr(holder[0], "closed", False):
                    self.echo(f"{self.w}: the log of pod {name} stopped: {err}")

        thread = threading.Thread(target=stream, name=f"log-{name}", daemon=True)
        thread.start()
        self._followers.append((thread, holder))

    def _join_followers(self) -> None:
        # The server ends a followed log when its container ends; a pod still running (the
        # Job failed around it) is let go after one request timeout.
        for thread, holder in self._followers:
            thread.join(self.kube.settings.request_timeout)
            if thread.is_alive() and holder:
                holder[0].close()
                thread.join(self.kube.settings.request_timeout)

    def _explain(self, outcome: Outcome) -> None:
        self._list()
        failing = [p for p in self.pods.values() if _failure_rank(p) > 0]
        if not failing:
            return
        pod = max(failing, key=lambda p: (_failure_rank(p), _finished_at(p)))
        container, outcome.why = pod_reason(pod)
        outcome.pod = pod["metadata"]["name"]
        container = container or pod["spec"]["containers"][0]["name"]
        statuses = {c["name"]: c for c in (pod.get("status") or {}).get("containerStatuses") or []}
        current = statuses.get(container, {})
        # A container restarted in place (a TFJob's OnFailure): the log of the one that failed.
        previous = not (current.get("state") or {}).get("terminated") and bool(
            (current.get("lastState") or {}).get("terminated"))
        try:
            text = self.kube.call(
                f"read the log of pod {self.w.namespace}/{outcome.pod}",
                self.kube.core.read_namespaced_pod_log, outcome.pod, self.w.namespace,
                container=container, tail_lines=self.tail_lines, previous=previous, text=True)
            outcome.log_tail = text.splitlines()[-self.tail_lines:]
        except ApiError as err:
            outcome.log_tail = [f"(no log: {err})"]


class _ExpiredError(Exception):
    """The watch's resourceVersion is too old (410 Gone): list again."""


def _started(pod: dict[str, Any]) -> bool:
    """True once a container of the pod ran, so its log can be read."""
    status = pod.get("status") or {}
    if status.get("phase") in ("Running", "Succeeded", "Failed"):
        return any(((cs.get("state") or {}).get("running") or (cs.get("state") or {}).get(
            "terminated")) for cs in status.get("containerStatuses") or [])
    return False


def _failure_rank(pod: dict[str, Any]) -> int:
    """2: the pod failed; 1: it is stuck or its container failed and restarted; 0: neither."""
    status = pod.get("status") or {}
    if status.get("phase") == "Failed":
        return 2
    if status.get("phase") == "Succeeded":
        return 0
    _, why = pod_reason(pod)
    return 0 if why.startswith("phase ") else 1


def _finished_at(pod: dict[str, Any]) -> str:
    """The latest termination time of its containers (RFC 3339 strings sort as times)."""
    times = [""]
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        for key in ("state", "lastState"):
            times.append(((cs.get(key) or {}).get("terminated") or {}).get("finishedAt") or "")
    return max(times)
