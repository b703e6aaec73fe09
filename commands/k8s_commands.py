"""`multitower k8s render`: the Kubernetes objects of the project's steps, as YAML files.

For teams that deploy through Git: one file per object and a `kustomization.yaml` listing them
(`kubectl apply -k DIR`). TF Serving's files come from the serving stage (`serving/tfs_config`),
which the `k8s` stage may not import; this command, above both, builds them for the folder the
Deployment mounts them at and hands them over.
"""

from __future__ import annotations

import click

from commands.options import check_date_option, config_option, friendly_errors
from multitower.config import load_config

WHAT = ("preprocess", "train", "daily", "serving", "all")


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
    from k8s.objects import target
    from k8s.render import STEPS, ServingInputs, write_manifests
    from k8s.render import render as render_objects
    from k8s.serving import SERVING_CONFIG_DIR, check_serving

    steps = list(STEPS) if what == "all" else [what]
    per_day = [s for s in steps if s in ("preprocess", "train")]
    if per_day and not date:
        raise click.UsageError(f"--what {what} renders the per-day {' and '.join(per_day)} "
                               f"Job(s): give --date YYYY-MM-DD")
    config = load_config(config_path)
    serving = None
    if "serving" in steps:
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
        serving = ServingInputs(files.files, files.command)
        labels = ", ".join(f"{k} -> {v}" for k, v in files.labels.items())
        click.echo(f"serving: versions {files.served or 'none'} of {files.exported or 'none'}"
                   + (f", labels {labels}" if labels else ""), err=True)
    objects = render_objects(config, steps, date, serving, namespace)
    written = write_manifests(objects, out_dir)
    for path in written:
        click.echo(str(path))
    click.echo(f"wrote {len(objects)} object(s) and {written[-1].name} to {out_dir}; apply "
               f"with kubectl apply -k {out_dir}", err=True)
