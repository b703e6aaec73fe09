"""The `multitower` command group and its data and training commands.

Here: generate, preprocess, verify, train, evaluate, export, demo. The serving commands
(predict, serving-config, query, serve, score) are in `serving_commands`, the Kubernetes ones
(`k8s render`, `submit`) in `k8s_commands`, the options they share in `options`.

The top layer: nothing imports this module. A command imports the stage modules it runs inside
its own function, so that each command loads only what it needs (a trainer worker does not load
Beam, `--help` loads neither); being on top, these imports hide no cycle.

Commands print progress on stderr and a short summary at the end; errors say what was wrong
and how to fix it, and exit non-zero (1: the work failed, 2: the command line was wrong).
"""

from __future__ import annotations

import logging
import os
import sys
import traceback

import click

import multitower
from commands import serving_commands
from commands.k8s_commands import k8s as _k8s
from commands.k8s_commands import submit as _submit
from commands.options import check_date_option, config_option, date_option, friendly_errors
from commands.stats_commands import stats as _stats
from multitower.config import load_config
from multitower.dates import date_range
from multitower.storage import exit_process

log = logging.getLogger("multitower")


def _setup_logging(verbose: bool) -> None:
    # multitower's own progress goes to stderr through its own handler: TensorFlow/absl may have
    # configured the root logger already, which would make logging.basicConfig a no-op.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", datefmt="%H:%M:%S"))
    log.handlers[:] = [handler]
    log.setLevel(logging.INFO)
    log.propagate = False
    for name in ("apache_beam", "tensorflow", "absl"):
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.WARNING)


@click.group()
@click.version_option(multitower.__version__)
@click.option("-v", "--verbose", is_flag=True, help="Also show Beam's and TensorFlow's logs.")
def main(verbose: bool) -> None:
    """Multi-task recommendation training, from event logs to TF Serving."""
    _setup_logging(verbose)


@main.command()
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Logs root folder.")
@click.option("--start-date", default="2026-01-01", show_default=True)
@click.option("--days", default=3, show_default=True, type=click.IntRange(min=1))
@click.option("--rows-per-day", default=60_000, show_default=True, type=click.IntRange(min=1))
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--task-correlation", default=0.8, show_default=True,
              type=click.FloatRange(0.0, 1.0),
              help="How much conversion and watch time share click's signal, and how closely "
                   "like (not gated by click) follows click: 0 independent, 1 alike.")
@click.option("--click-bias", default=0.0, show_default=True, type=float,
              help="Added to every click logit; -1.5 gives about a 5.5% click rate, -2.0 about 4%.")
@click.option("--format", "log_format", default="jsonl", show_default=True,
              type=click.Choice(["jsonl", "csv", "parquet"]),
              help="Gzipped JSON lines, gzipped CSV with a header row, or Parquet "
                   "(data.format in the config).")
@click.option("--missing-rate", default=0.0, show_default=True, type=click.FloatRange(0.0, 1.0),
              help="Probability that a row lacks each of user_country, device and "
                   "user_activity (give them a default: in the config, or such rows are rejected).")
@click.option("--truth-columns", is_flag=True,
              help="Also write each row's true click and conversion probabilities "
                   "(true_p_click, true_p_conversion), to judge models against the truth.")
def generate(out: str, start_date: str, days: int, rows_per_day: int, seed: int,
             task_correlation: float, click_bias: float, log_format: str,
             missing_rate: float, truth_columns: bool) -> None:
    """Write synthetic impression logs: OUT/dt=YYYY-MM-DD/part-*.{jsonl.gz,csv.gz,parquet}."""
    from pipeline.generate import generate_logs

    paths = generate_logs(out, start_date, days, rows_per_day, seed=seed,
                          task_correlation=task_correlation, click_bias=click_bias,
                          log_format=log_format, missing_rate=missing_rate,
                          truth_columns=truth_columns)
    click.echo(f"wrote {len(paths)} {log_format} files, {days} day(s) x {rows_per_day} rows, "
               f"under {out}")


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@config_option
@date_option
@click.option("--skip-bad-files", is_flag=True,
              help="Publish the day without the input files that cannot be read whole "
                   "(listed in the manifest's skipped_files); by default such a file fails the "
                   "day and nothing is published.")
@click.argument("beam_args", nargs=-1, type=click.UNPROCESSED)
@friendly_errors
def preprocess(config_path: str, date: str, skip_bad_files: bool,
               beam_args: tuple[str, ...]) -> None:
    """Turn one day of logs into TFRecords (Beam).

    Extra arguments go to Beam, e.g. --runner=FlinkRunner or --direct_num_workers=2.
    """
    from pipeline.preprocess import run_preprocess

    manifest = run_preprocess(load_config(config_path), date, list(beam_args),
                              skip_bad_files=skip_bad_files)
    rows = manifest["rows"]
    skipped = len(manifest.get("skipped_files", []))
    defaulted = sum(manifest.get("defaulted", {}).values())
    click.echo(
        f"{date}: read {rows['read']}, written {rows['written']}, rejected {rows['rejected']}"
        + (f", defaulted {defaulted} missing value(s)" if defaulted else "")
        + (f", skipped {skipped} bad file(s)" if skipped else "")
    )


@main.command()
@config_option
@date_option
@friendly_errors
def verify(config_path: str, date: str) -> None:
    """Check a preprocessed day: every file against its manifest's size and checksum."""
    from multitower.manifest import read_manifest, verify_partition

    config = load_config(config_path)
    manifest = read_manifest(config.data.tfrecords, date)
    problems = verify_partition(config.data.tfrecords, date)
    if problems:
        raise click.ClickException(
            f"the partition for {date} is corrupt ({len(problems)} problem(s)); preprocess the "
            "day again:\n  " + "\n  ".join(problems))
    click.echo(f"{date}: {len(manifest['files'])} file(s), {manifest['rows']['written']} rows: "
               "sizes and checksums match the manifest")


def _check_dates(ctx: click.Context, param: click.Parameter, value: str | None
                 ) -> list[str] | None:
    if value is None:
        return None
    try:
        return date_range(value)
    except ValueError as err:
        raise click.BadParameter(str(err)) from None


@main.command()
@config_option
@click.option("--date", callback=lambda c, p, v: v and check_date_option(c, p, v),
              help="The day to train, YYYY-MM-DD.")
@click.option("--dates", callback=_check_dates,
              help="Train a range day by day, A:B (both included); a checkpoint and an export "
                   "per day.")
@click.option("--force", is_flag=True,
              help="Train an already trained day again, from the checkpoint taken before it.")
@click.option("--allow-gap", is_flag=True,
              help="Train a day that does not follow the last trained day.")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(min=1),
              help="Start this many trainer processes on localhost (ignored if TF_CONFIG is set).")
@friendly_errors
def train(config_path: str, date: str | None, dates: list[str] | None, force: bool,
          allow_gap: bool, workers: int) -> None:
    """Train day(s) from the latest checkpoint and export the next version after each day."""
    from multitower.lease import RUN_ID_VARIABLE, run_id
    from multitower.manifest import read_manifest
    from trainer.launch import run_local_workers
    from trainer.strategy import make_strategy
    from trainer.train import train_day

    if bool(date) == bool(dates):
        raise click.UsageError("give exactly one of --date and --dates")
    days = dates or [date]
    config = load_config(config_path)
    if workers > 1 and not os.environ.get("TF_CONFIG"):
        for day in days:
            read_manifest(config.data.tfrecords, day)  # fail here, not once in every worker
        argv = ["-m", "commands.cli", "train", "--config", config_path,
                "--dates", f"{days[0]}:{days[-1]}"]
        argv += ["--force"] * force + ["--allow-gap"] * allow_gap
        # One run id for every worker of this launch, as a Kubernetes Job passes its uid.
        status = run_local_workers(argv, workers, extra_env={RUN_ID_VARIABLE: run_id()})
        if status:
            raise click.ClickException(f"a trainer worker failed with exit code {status}")
        return
    strategy = make_strategy()
    for day in days:
        result = train_day(config, day, strategy, force=force, allow_gap=allow_gap)
        if result.export_path:
            shown = ", ".join(f"{k}={v:.4f}" for k, v in result.metrics.items()
                              if k.endswith(("_auc", "_rmse", "_auc_clicked")))
            click.echo(f"{day}: global step {result.global_step}, exported "
                       f"{result.export_path} ({shown})")


@main.command()
@config_option
@date_option
@click.option("--output", type=click.Path(dir_okay=False),
              help="Where to write the JSON report (default <model_dir>/eval/dt=D.json).")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(min=1),
              help="Evaluate on this many processes on localhost, each holding its share of "
                   "the model-parallel tables (ignored if TF_CONFIG is set).")
@click.option("--png", "png_dir", type=click.Path(file_okay=False),
              help="Also draw the report into this local folder: calibration.png (a "
                   "reliability diagram per binary task) and, for gated backbones, gates.png "
                   "(mean gate weight per task and expert).")
@friendly_errors
def evaluate(config_path: str, date: str, output: str | None, workers: int,
             png_dir: str | None) -> None:
    """Per-task quality and gate diagnostics of the latest checkpoint on one day.

    One process stitches model-parallel tables whole (if they fit its memory); with --workers
    or TF_CONFIG, every worker scores with its share of them.
    """
    from trainer.evaluate import evaluate_day, format_report
    from trainer.launch import run_local_workers
    from trainer.pictures import draw_report
    from trainer.strategy import make_strategy

    if workers > 1 and not os.environ.get("TF_CONFIG"):
        argv = ["-m", "commands.cli", "evaluate", "--config", config_path, "--date", date]
        argv += ["--output", output] if output else []
        status = run_local_workers(argv + (["--png", png_dir] if png_dir else []), workers)
        if status:
            raise click.ClickException(f"an evaluation worker failed with exit code {status}")
        return
    report = evaluate_day(load_config(config_path), date, output, make_strategy())
    if report is None:  # a worker other than the chief
        return
    click.echo(format_report(report))
    if png_dir:
        try:
            drawn = draw_report(report, png_dir)
        except OSError as err:
            raise click.ClickException(f"cannot write the pictures into {png_dir}: "
                                       f"{err.strerror or err}") from None
        for path in drawn:
            click.echo(f"drew {path}")


@main.command("export")
@config_option
@click.option("--checkpoint", type=str, default=None,
              help="The checkpoint prefix to export (<model_dir>/checkpoints/ckpt-<step>); "
                   "default: the latest.")
@click.option("--date", callback=lambda c, p, v: v and check_date_option(c, p, v),
              help="The preprocessed day whose first rows make the warmup file, YYYY-MM-DD; "
                   "default: the last trained day.")
@friendly_errors
def export(config_path: str, checkpoint: str | None, date: str | None) -> None:
    """Export a checkpoint again as the next version, e.g. after changing serving.ranking_score.

    The version is checked like a training export and recorded in state.json; nothing is
    trained.
    """
    from trainer.reexport import reexport

    result = reexport(load_config(config_path), checkpoint, date)
    click.echo(f"exported {result.export_path} (version {result.version}) from "
               f"{result.checkpoint}, warmup rows of {result.date}")


@main.command()
@config_option
@click.option("--workers", required=True, type=click.IntRange(min=1),
              help="The worker count the next run will train on.")
@click.option("--checkpoint", type=str, default=None,
              help="The checkpoint prefix (<model_dir>/checkpoints/ckpt-<step>); default: the "
                   "latest.")
@friendly_errors
def repartition(config_path: str, workers: int, checkpoint: str | None) -> None:
    """Rewrite a checkpoint's model-parallel table parts for another number of workers.

    Offline, on any one machine; a day started on another count does the same by itself, each
    worker reading every old part. Replicated tables need nothing.
    """
    import tensorflow as tf

    from trainer.embeddings import repartition_parts
    from trainer.model_dir import ModelDir

    config = load_config(config_path)
    folder = ModelDir(config.train.model_dir).checkpoints
    path = checkpoint or tf.train.latest_checkpoint(folder)
    if path is None:
        raise click.UsageError(f"{folder} holds no checkpoint; train a day first")
    old = repartition_parts(path, workers)
    click.echo(f"{path}: model-parallel parts of {old} worker(s) rewritten for {workers}"
               if old != workers else f"{path}: already written for {workers} worker(s)")


@main.command()
@click.option("--workdir", default="demo-work", show_default=True, type=click.Path(file_okay=False))
@click.option("--rows-per-day", default=60_000, show_default=True, type=click.IntRange(min=1000))
@click.option("--workers", default=2, show_default=True, type=click.IntRange(min=1),
              help="Trainer processes on localhost (MultiWorkerMirroredStrategy when > 1).")
@click.option("--seed", default=0, show_default=True, type=int)
@friendly_errors
def demo(workdir: str, rows_per_day: int, workers: int, seed: int) -> None:
    """Run everything on generated logs: generate 3 days, preprocess, train days 1-2, predict 3."""
    from commands.demo import run_demo

    run_demo(workdir, rows_per_day=rows_per_day, workers=workers, seed=seed)


for _command in serving_commands.COMMANDS:
    main.add_command(_command)
main.add_command(_k8s)
main.add_command(_submit)
main.add_command(_stats)


def run() -> None:
    """The `multitower` command: click's `main`, then an exit that survives tensorflow-io.

    Its status is the command's own: 0, 1 for a refused or failed command (an unexpected
    error prints its traceback first), 2 for a usage error.
    """
    try:
        main(prog_name="multitower")
        status = 0
    except SystemExit as done:  # click ends every command with sys.exit
        status = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
        if isinstance(done.code, str):
            click.echo(done.code, err=True)
    except BaseException:  # noqa: BLE001  (printed, then a status like Python's own)
        traceback.print_exc()
        status = 1
    exit_process(status)


if __name__ == "__main__":
    run()
