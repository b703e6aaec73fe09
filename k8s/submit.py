"""`multitower submit`: a step's objects sent to the cluster, waited for; and the daily run.

What is sent is exactly what `k8s render` writes (`k8s.render.step_objects`), in two ways:

- **Per-day runs are created**: the Job (or TFJob) `<app>-<step>-<day>`, and for a
  multi-worker Job its headless Service, created after the Job with the Job as its owner
  (`ownerReferences`, without `blockOwnerDeletion`, which would need the `jobs/finalizers`
  permission), so it goes when the Job's TTL removes the Job. A Job of that name that exists
  already is reported (its state) and left alone, unless `replace`: then it is deleted with
  its pods (foreground propagation), and created again once gone.
- **Long-lived objects are applied server-side** (PATCH `application/apply-patch+yaml`,
  field manager `multitower`, conflicts forced): the config ConfigMap, the daily CronJob with
  its ServiceAccount, Role and RoleBinding, TF Serving's ConfigMap, Deployment, Service,
  autoscaler and disruption budget. Applying again changes only what the rendering changed.

The daily run (`run_day`, what the CronJob's pod runs) creates the day's preprocess Job,
waits, creates training, waits, then writes TF Serving's polled file (`models.config`, built
by the command layer after training, so the version labels move to the new export) into the
serving ConfigMap, and raises `JobFailedError` at the first step that fails. It creates nothing
else: its Role (`k8s/permissions.py`) allows only those calls.
"""

from __future__ import annotations

import copy
import datetime as dt
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

from k8s.client import ApiError, Kube
from k8s.objects import DATE_LABEL, Target
from k8s.permissions import serving_config_map_name
from k8s.render import ServingInputs, step_objects, to_yaml
from k8s.serving import POLLED_FILES
from k8s.watch import (
    TFJOB,
    JobFailedError,
    JobState,
    Outcome,
    Waiter,
    Workload,
    job_state,
    workload,
)
from multitower.config import Config
from multitower.dates import check_date
from multitower.errors import MultitowerError

YESTERDAY = "yesterday"
DAILY_FIELD_MANAGER = "multitower-daily"  # the label moves, apart from `submit serving`'s apply
RUN_KINDS = ("Job", "TFJob")


def resolve_date(config: Config, value: str) -> str:
    """`YYYY-MM-DD`, or `yesterday` in `k8s.daily.time_zone` (the zone the CronJob runs in).

    Raises:
        ValueError: `value` is neither.
    """
    if value == YESTERDAY:
        zone = config.k8s.daily.time_zone if config.k8s else "Etc/UTC"
        return (dt.datetime.now(ZoneInfo(zone)).date() - dt.timedelta(days=1)).isoformat()
    return check_date(value)


def is_created(obj: Mapping[str, Any]) -> bool:
    """True for the per-day objects `submit` creates (the rest is applied server-side)."""
    return obj["kind"] in RUN_KINDS or DATE_LABEL in (obj["metadata"].get("labels") or {})


def plan(t: Target, step: str, date: str | None, serving: ServingInputs | None = None
         ) -> list[dict[str, Any]]:
    """The objects `submit <step>` sends, in order (the daily run: its two steps' runs).

    Raises:
        K8sError: As `step_objects`.
    """
    if step == "daily" and date:
        return [o for s in ("preprocess", "train") for o in step_objects(t, s, date)
                if is_created(o)]
    return step_objects(t, step, date, serving)


def dry_run_text(t: Target, step: str, date: str | None, objects: list[dict[str, Any]]) -> str:
    """The YAML `--dry-run` prints: each object, after a comment saying what would be done."""
    docs = []
    for obj in objects:
        what = f"{obj['kind']} {obj['metadata']['namespace']}/{obj['metadata']['name']}"
        if obj["kind"] == "Service" and is_created(obj):
            action = f"create (after the Job, owned by it): {what}"
        else:
            action = f"create: {what}" if is_created(obj) else f"apply (server-side): {what}"
        docs.append(f"# {action}\n{to_yaml(obj)}")
    if step == "daily" and date:
        docs.append(f"# then: write models.config into ConfigMap {t.namespace}/"
                    f"{serving_config_map_name(t.app)} (labels resolved against the exports "
                    f"once training is done)\n")
    return "---\n".join(docs)


@dataclass(frozen=True)
class ServingUpdate:
    """TF Serving's polled files (`models.config`), built after training, and a summary."""

    files: Mapping[str, str]
    summary: str


@dataclass
class Submitted:
    """A run `submit` created, or found already there (`created` False)."""

    workload: Workload
    created: bool
    state: JobState


class Submitter:
    """Sends the objects of a target's steps to the cluster.

    Args:
        kube: The client (`k8s.client.connect`).
        t: The target (its namespace is where everything goes).
        echo: Prints one progress line (stderr).
        log_line: Prints one line of a followed log (stdout).
        tail_lines: Lines of the failing pod's log to show.
    """

    def __init__(self, kube: Kube, t: Target, echo: Callable[[str], None],
                 log_line: Callable[[str], None] | None = None, tail_lines: int = 20) -> None:
        self.kube, self.t, self.echo, self.log_line = kube, t, echo, log_line
        self.tail_lines = tail_lines

    def apply_all(self, objects: list[dict[str, Any]]) -> None:
        """Applies long-lived objects server-side, in order.

        Raises:
            ApiError: The server refused one (the earlier ones stay applied).
            ApiUnreachableError: As `Kube.call`.
        """
        for obj in objects:
            answer = self.kube.apply(obj)
            meta = answer.get("metadata") or {}
            self.echo(f"applied {obj['kind']} {meta.get('namespace', self.t.namespace)}/"
                      f"{meta.get('name', obj['metadata']['name'])} (server-side)")

    def submit(self, step: str, date: str, replace: bool = False,
               with_config: bool = True) -> Submitted:
        """Creates the run of `step` on `date` (after applying the config ConfigMap).

        Args:
            step: `preprocess` or `train`.
            date: The day.
            replace: Delete an existing run of that name and create it again.
            with_config: Apply the config ConfigMap first (the daily run does not: its pod
                reads that very ConfigMap, and its Role may not change it).

        Raises:
            ApiError: The server refused a request.
            ApiUnreachableError: As `Kube.call`.
        """
        objects = step_objects(self.t, step, date)
        self.apply_all([o for o in objects if not is_created(o) and with_config])
        (run,) = [o for o in objects if o["kind"] in RUN_KINDS]
        submitted = self._create_run(run, replace)
        for service in [o for o in objects if o["kind"] == "Service" and is_created(o)]:
            self._create_owned(service, submitted.workload)
        return submitted

    def wait(self, w: Workload, follow: bool = False) -> Outcome:
        """Waits for a run to end (`k8s.watch.Waiter`)."""
        return Waiter(self.kube, w, self.echo, self.log_line if follow else None,
                      self.tail_lines).wait()

    def run_day(self, date: str, serving_update: Callable[[], ServingUpdate],
                follow: bool = False, replace: bool = False) -> ServingUpdate:
        """The daily run: preprocess, wait, train, wait, move TF Serving's labels.

        Args:
            date: The day.
            serving_update: Builds TF Serving's polled files once training is done (from the
                exports found then).
            follow: Stream worker 0's log of each step.
            replace: Delete and create again runs of that day that exist already.

        Returns:
            The serving files written.

        Raises:
            JobFailedError: A step failed (or had failed before); later steps are not submitted.
            MultitowerError: The serving ConfigMap does not exist, or the labels do not fit
                the exports (raised by `serving_update`).
            ApiError: The server refused a request.
            ApiUnreachableError: As `Kube.call`.
        """
        for step in ("preprocess", "train"):
            submitted = self.submit(step, date, replace, with_config=False)
            outcome = self.wait(submitted.workload, follow)
            if not outcome.succeeded:
                raise JobFailedError(f"daily {date}: the {step} step failed: {outcome.summary()}"
                                + ("" if submitted.created else " (the run existed before this "
                                   "one; delete it to run the step again)"), outcome.details())
        update = serving_update()
        self.write_serving_files(update)
        return update

    def write_serving_files(self, update: ServingUpdate) -> bool:
        """Writes TF Serving's polled files into its ConfigMap; False if already there.

        A strategic merge patch of only those keys, carrying the resourceVersion read, so a
        change made in between is a 409 Conflict (read again and retried) and never lost.

        Raises:
            MultitowerError: The ConfigMap does not exist (serving is not deployed).
            ApiError: The server refused a request.
            ApiUnreachableError: As `Kube.call`.
        """
        name, namespace = serving_config_map_name(self.t.app), self.t.namespace
        unknown = set(update.files) - set(POLLED_FILES)
        if unknown:
            raise ValueError(f"only TF Serving's polled files {POLLED_FILES} may change while "
                             f"it runs, not {sorted(unknown)}")
        conflicts = 0
        while True:
            try:
                current = self.kube.call(f"read ConfigMap {namespace}/{name}",
                                         self.kube.core.read_namespaced_config_map, name,
                                         namespace)
            except ApiError as err:
                if err.status == 404:
                    raise MultitowerError(
                        f"ConfigMap {namespace}/{name} does not exist, so TF Serving is not "
                        f"deployed there: run `multitower submit serving` first") from None
                raise
            data = current.get("data") or {}
            changed = {k: v for k, v in update.files.items() if data.get(k) != v}
            if not changed:
                self.echo(f"ConfigMap {namespace}/{name}: {', '.join(update.files)} unchanged "
                          f"({update.summary})")
                return False
            patch = {"metadata": {"resourceVersion": current["metadata"]["resourceVersion"]},
                     "data": changed}
            try:
                self.kube.call(f"patch ConfigMap {namespace}/{name}",
                               self.kube.core.patch_namespaced_config_map, name, namespace,
                               patch, field_manager=DAILY_FIELD_MANAGER)
            except ApiError as err:
                conflicts += 1
                if err.status == 409 and conflicts < 3:
                    continue  # changed since it was read: read it again
                raise
            self.echo(f"ConfigMap {namespace}/{name}: wrote {', '.join(changed)} "
                      f"({update.summary})")
            return True

    # Creating runs and their Services.

    def _api(self, kind: str) -> tuple[Callable[..., Any], Callable[..., Any],
                                       Callable[..., Any]]:
        """(create, read, delete) of a kind, each taking (namespace, ...) as the client does."""
        kube = self.kube
        if kind == "Job":
            return (kube.batch.create_namespaced_job, kube.batch.read_namespaced_job,
                    kube.batch.delete_namespaced_job)
        if kind == "TFJob":
            group, version, plural = TFJOB
            return (lambda ns, body, **kw: kube.custom.create_namespaced_custom_object(
                        group, version, ns, plural, body, **kw),
                    lambda name, ns, **kw: kube.custom.get_namespaced_custom_object(
                        group, version, ns, plural, name, **kw),
                    lambda name, ns, **kw: kube.custom.delete_namespaced_custom_object(
                        group, version, ns, plural, name, **kw))
        if kind == "Service":
            return (kube.core.create_namespaced_service, kube.core.read_namespaced_service,
                    kube.core.delete_namespaced_service)
        raise ValueError(f"submit does not create {kind} objects")

    def _create_run(self, run: dict[str, Any], replace: bool) -> Submitted:
        kind, name, namespace = run["kind"], run["metadata"]["name"], run["metadata"]["namespace"]
        what = f"{kind} {namespace}/{name}"
        create, read, _ = self._api(kind)
        try:
            created = self.kube.call(f"create {what}", create, namespace, run, idempotent=False)
        except ApiError as err:
            if err.status != 409:
                raise
            existing = self.kube.call(f"read {what}", read, name, namespace)
            state = job_state(existing)
            shown = ("succeeded" if state.succeeded else f"failed ({state.reason})"
                     ) if state.done else f"not finished: {state.summary}"
            since = existing["metadata"].get("creationTimestamp", "?")
            if not replace:
                self.echo(f"{what} exists already (created {since}, {shown}): not replaced; "
                          f"--replace deletes it and its pods and creates it again")
                return Submitted(workload(existing), False, state)
            self._delete(what, existing)
            created = self.kube.call(f"create {what}", create, namespace, run, idempotent=False)
        self.echo(f"created {what} (uid {created['metadata']['uid']})")
        return Submitted(workload(created), True, job_state(created))

    def _delete(self, what: str, existing: dict[str, Any]) -> None:
        """Deletes a run with its pods and owned Service, and waits until it is gone."""
        kind, meta = existing["kind"], existing["metadata"]
        _, read, delete = self._api(kind)
        self.echo(f"deleting {what} (uid {meta['uid']}) and its pods (--replace)")
        try:
            self.kube.call(f"delete {what}", delete, meta["name"], meta["namespace"],
                           propagation_policy="Foreground")
        except ApiError as err:
            if err.status != 404:
                raise
        settings = self.kube.settings
        deadline = time.monotonic() + settings.delete_timeout
        while True:
            try:
                found = self.kube.call(f"read {what}", read, meta["name"], meta["namespace"])
            except ApiError as err:
                if err.status == 404:
                    return
                raise
            if found["metadata"].get("uid") != meta["uid"]:
                raise MultitowerError(f"{what} was created again by someone else while it was "
                                      f"being replaced; look at it before submitting again")
            if time.monotonic() > deadline:
                raise MultitowerError(f"{what} is still being deleted after "
                                      f"{settings.delete_timeout:.0f} s (its pods are "
                                      f"terminating); submit again once it is gone")
            time.sleep(settings.poll_seconds)

    def _create_owned(self, service: dict[str, Any], owner: Workload) -> None:
        body = copy.deepcopy(service)
        # No blockOwnerDeletion: setting it needs `update` on jobs/finalizers (the
        # OwnerReferencesPermissionEnforcement admission plugin), which no Role here grants.
        body["metadata"]["ownerReferences"] = [{"apiVersion": "batch/v1", "kind": owner.kind,
                                                "name": owner.name, "uid": owner.uid}]
        meta = body["metadata"]
        what = f"Service {meta['namespace']}/{meta['name']}"
        create, read, _ = self._api("Service")
        try:
            self.kube.call(f"create {what}", create, meta["namespace"], body, idempotent=False)
            self.echo(f"created {what} (owned by {owner})")
            return
        except ApiError as err:
            if err.status != 409:
                raise
        existing = self.kube.call(f"read {what}", read, meta["name"], meta["namespace"])
        owners = [ref.get("uid") for ref in existing["metadata"].get("ownerReferences") or []]
        if owner.uid in owners:
            self.echo(f"{what} exists already, owned by {owner}")
        else:
            self.echo(f"warning: {what} exists already but is not owned by {owner} (its owners: "
                      f"{owners or 'none'}); it goes with them, not with this run: delete it "
                      f"and submit again if the workers cannot find each other")
