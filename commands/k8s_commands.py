"""`multitower k8s render` and `multitower submit`: the project's steps on Kubernetes.

`k8s render` is for teams that deploy through Git: one file per object and a
`kustomization.yaml` listing them (`kubectl apply -k DIR`). `submit` sends the same objects to
the cluster itself, waits for the runs, and drives the daily run (`k8s/submit.py`). TF
Serving's files come from the serving stage (`serving/tfs_config`), which the `k8s` stage may
not import; these commands, above both, build them for the folder the Deployment mounts them
at and hand them over (for `submit daily --date`, after training, so the labels move).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from commands.options import check_date_option, config_option, friendly_errors
from multitower.config import Config, load_config
from multitower.errors import MultitowerError

WHAT = ("preprocess", "train", "daily", "serving", "all")
SUBMIT_STEPS = ("preprocess", "train", "daily", "serving")

if TYPE_CHECKING:
    from k8s.objects import Target
    from k8s.render import ServingInputs
    from k8s.submit import ServingUpdate


def _versions(ctx: click.Context, param: click.Parameter, value: str | None
              ) -> list[int] | None:
    if value is None:
        return None
    try:
        found = sorted({int(v) for v in value.split(",") if v.strip()})
    except ValueError:
        raise click.BadParameter(f"expected version numbers like 1,2, got {value!r}") from None
    if not found or found[0] < 1:
        raise click.BadParameter(f"expected positive version numbers like 1,2, got {value!r}")
    return found


def _serving_inputs(config: Config, namespace: str | None, versions: list[int] | None
                    ) -> ServingInputs:
    """TF Serving's files and command line for the cluster (`k8s.render.ServingInputs`)."""
    from k8s.objects import target
    from k8s.render import ServingInputs
    from k8s.serving import SERVING_CONFIG_DIR, check_serving
    from serving.tfs_config import ServingConfigError, build_serving_files

    check_serving(target(config, namespace))  # before listing an export folder
    try:
        files = build_serving_files(config, SERVING_CONFIG_DIR, versions)
    except ServingConfigError as err:
        if versions is not None:
            raise
        # The export folder may be a cluster volume this machine does not see.
        raise ServingConfigError(f"{err} (the versions were listed from here: give "
                                 f"--versions with the ones the cluster has)") from None
    labels = ", ".join(f"{k} -> {v}" for k, v in files.labels.items())
    click.echo(f"serving: versions {files.served or 'none'} of {files.exported or 'none'}"
               + (f", labels {labels}" if labels else ""), err=True)
    return ServingInputs(files.files, files.command)


@click.group("k8s")
def k8s() -> None:
    """Kubernetes objects of the steps, rendered from the config's k8s: section."""


@k8s.command()
@config_option
@click.option("--what", type=click.Choice(WHAT), required=True,
              help="The step whose objects to render; all: every step.")
@click.option("--date", callback=lambda c, p, v: v and check_date_option(c, p, v),
              help="The day of the preprocess and train Jobs, YYYY-MM-DD.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Folder for the YAML files and kustomization.yaml.")
@click.option("--namespace", default=None, help="Overrides k8s.namespace.")
@click.option("--versions", callback=_versions, default=None,
              help="Serving: the exported versions to resolve serving.labels against, e.g. "
                   "1,2 (default: the versions found under train.export_dir now).")
@friendly_errors
def render(config_path: str, what: str, date: str | None, out_dir: str,
           namespace: str | None, versions: list[int] | None) -> None:
    """Write the objects of a step as YAML: one file per object plus a kustomization.yaml."""
    from k8s.render import STEPS, write_manifests
    from k8s.render import render as render_objects

    steps = list(STEPS) if what == "all" else [what]
    per_day = [s for s in steps if s in ("preprocess", "train")]
    if per_day and not date:
        raise click.UsageError(f"--what {what} renders the per-day {' and '.join(per_day)} "
                               f"Job(s): give --date YYYY-MM-DD")
    config = load_config(config_path)
    serving = None
    if "serving" in steps:
        serving = _serving_inputs(config, namespace, versions)
    objects = render_objects(config, steps, date, serving, namespace)
    written = write_manifests(objects, out_dir)
    for path in written:
        click.echo(str(path))
    click.echo(f"wrote {len(objects)} object(s) and {written[-1].name} to {out_dir}; apply "
               f"with kubectl apply -k {out_dir}", err=True)


class BadConfig(click.ClickException):
    """The config (or what it renders to) is refused before anything is sent: exit code 2."""

    exit_code = 2


def _date(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is None or value == "yesterday":
        return value
    return check_date_option(ctx, param, value)


@click.command("submit")
@click.argument("step", type=click.Choice(SUBMIT_STEPS))
@config_option
@click.option("--date", callback=_date,
              help="The day, YYYY-MM-DD, or 'yesterday' in k8s.daily.time_zone. Required for "
                   "preprocess and train; with daily, runs that day (what the CronJob does).")
@click.option("--dry-run", is_flag=True,
              help="Print the objects as YAML and send nothing (no cluster needed).")
@click.option("--wait", is_flag=True,
              help="Wait for the Job, showing its pods (pending / running / succeeded / "
                   "failed); exit 1 if it fails, with the failing pod's reason and log tail.")
@click.option("--follow", is_flag=True, help="Stream worker 0's log while waiting (implies "
                                             "--wait).")
@click.option("--namespace", default=None, help="Overrides k8s.namespace.")
@click.option("--replace", is_flag=True,
              help="Delete a Job of the same name (and its pods) and create it again; without "
                   "it an existing Job is reported and left alone.")
@click.option("--versions", callback=_versions, default=None,
              help="Serving: the exported versions to resolve serving.labels against, e.g. "
                   "1,2 (default: the versions found under train.export_dir now).")
@click.option("--kubeconfig", type=click.Path(dir_okay=False), default=None,
              help="Default: $KUBECONFIG, ~/.kube/config, or the pod's ServiceAccount.")
@click.option("--context", default=None, help="The kubeconfig context to use.")
@click.option("--request-timeout", type=click.FloatRange(min=0.1), default=30.0,
              show_default=True, help="Seconds to connect to the API server and for an answer.")
@click.option("--retries", type=click.IntRange(min=0), default=3, show_default=True,
              help="Retries of a request the API server did not answer (or answered 429/5xx).")
@click.option("--retry-wait", type=click.FloatRange(min=0), default=1.0, hidden=True)
@click.option("--watch-seconds", type=click.IntRange(min=1), default=60, hidden=True)
@click.option("--poll-seconds", type=click.FloatRange(min=0), default=2.0, hidden=True)
@click.option("--log-lines", type=click.IntRange(min=1), default=20, show_default=True,
              help="Lines of the failing pod's log to print.")
@friendly_errors
def submit(step: str, config_path: str, date: str | None, dry_run: bool, wait: bool,
           follow: bool, namespace: str | None, replace: bool, versions: list[int] | None,
           kubeconfig: str | None, context: str | None, request_timeout: float, retries: int,
           retry_wait: float, watch_seconds: int, poll_seconds: float, log_lines: int) -> None:
    """Send a step to the cluster: preprocess|train|daily|serving.

    preprocess and train create the day's Job (train: or the TFJob, and the workers' headless
    Service). daily applies the CronJob and its RBAC; with --date it runs that day, as the
    CronJob does: preprocess, wait, train, wait, then write models.config into the serving
    ConfigMap so the version labels move. serving applies TF Serving's ConfigMap, Deployment,
    Service, autoscaler and disruption budget.

    Exit codes: 0 done, 1 the job failed (or the cluster refused), 2 bad usage or config.
    """
    runs_day = step in ("preprocess", "train") or (step == "daily" and date)
    if step in ("preprocess", "train") and not date:
        raise click.UsageError(f"submit {step} runs one day: give --date YYYY-MM-DD (or "
                               f"yesterday)")
    if (wait or follow or replace) and not runs_day:
        what = "serving applies long-lived objects" if step == "serving" else \
            "submit daily without --date applies the CronJob"
        raise click.UsageError(f"--wait, --follow and --replace are about a day's Job; {what} "
                               f"(give daily a --date to run a day)")
    if step == "serving" and date:
        raise click.UsageError("submit serving takes no --date")
    if versions is not None and step != "serving":
        raise click.UsageError("--versions is for submit serving")
    from k8s.objects import target
    from k8s.submit import dry_run_text, plan, resolve_date

    try:
        config = load_config(config_path)
        t = target(config, namespace)
        day = resolve_date(config, date) if date else None
        serving = _serving_inputs(config, namespace, versions) if step == "serving" else None
        objects = plan(t, step, day, serving)
    except (MultitowerError, ValueError) as err:
        raise BadConfig(str(err)) from None
    if dry_run:
        click.echo(dry_run_text(t, step, day, objects), nl=False)
        click.echo(f"dry run: {len(objects)} object(s) for namespace {t.namespace}, nothing "
                   f"sent", err=True)
        return
    _send(config, t, step, day, objects, kubeconfig, context, wait or follow, follow, replace,
          log_lines, (request_timeout, retries, retry_wait, watch_seconds, poll_seconds))


def _send(config: Config, t: Target, step: str, day: str | None, objects: list[dict[str, Any]],
          kubeconfig: str | None, context: str | None, wait: bool, follow: bool,
          replace: bool, log_lines: int, timing: tuple[float, int, float, int, float]) -> None:
    from k8s.client import ClientSettings, connect
    from k8s.submit import Submitter
    from k8s.watch import JobFailedError

    request_timeout, retries, retry_wait, watch_seconds, poll_seconds = timing
    settings = ClientSettings(request_timeout=request_timeout, retries=retries,
                              retry_wait=retry_wait, watch_seconds=watch_seconds,
                              poll_seconds=poll_seconds)
    kube = connect(kubeconfig, context, settings)
    submitter = Submitter(kube, t, lambda line: click.echo(line, err=True), click.echo,
                          log_lines)
    try:
        if not day:  # serving, or the daily CronJob itself
            submitter.apply_all(objects)
            if step == "daily":
                daily = t.k8s.daily
                click.echo(f"the CronJob runs `multitower submit daily --date yesterday` on "
                           f"'{daily.schedule}' ({daily.time_zone})")
            return
        if step == "daily":
            update = submitter.run_day(day, lambda: _serving_update(config), follow, replace)
            click.echo(f"daily {day}: preprocess and train succeeded; {update.summary}")
            return
        submitted = submitter.submit(step, day, replace)
        if not wait and not submitted.state.done:
            click.echo(f"{'submitted' if submitted.created else 'left'} {submitted.workload}; "
                       f"follow it with `multitower submit "
                       f"{step} --date {day} --wait` (or kubectl -n {t.namespace} get pods -l "
                       f"{submitted.workload.selector})")
            return
        outcome = submitter.wait(submitted.workload, follow)
        if not outcome.succeeded:
            raise JobFailedError(outcome.summary(), outcome.details())
        click.echo(f"{submitted.workload} succeeded")
    except JobFailedError as failed:
        for line in failed.details:
            click.echo(line, err=True)
        raise click.ClickException(str(failed)) from None
    finally:
        kube.close()


def _serving_update(config: Config) -> ServingUpdate:
    """`models.config` for the exports found now (after training): the labels move."""
    from k8s.serving import POLLED_FILES, SERVING_CONFIG_DIR
    from k8s.submit import ServingUpdate
    from serving.tfs_config import build_serving_files

    built = build_serving_files(config, SERVING_CONFIG_DIR)
    labels = ", ".join(f"{k} -> {v}" for k, v in built.labels.items())
    return ServingUpdate({k: v for k, v in built.files.items() if k in POLLED_FILES},
                         f"serving versions {built.served or 'none'} of "
                         f"{built.exported or 'none'}" + (f", labels {labels}" if labels else ""))
