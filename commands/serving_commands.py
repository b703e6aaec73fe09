"""The serving commands: `predict` (in-process), `serving-config`, `query`, `serve`, `score`.

Registered on the `multitower` group by `commands.cli`; like every command, each imports the
stage modules it runs inside its own function.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import TextIO

import click

from commands.options import config_option, date_option, friendly_errors
from multitower.config import load_config
from multitower.storage import enable_filesystems

# `predict` and `query` need a config only for the pads of list features (TF Serving's
# metadata does not carry them).
pads_config_option = click.option(
    "--config", "config_path", default=None, type=click.Path(dir_okay=False),
    help="The project's YAML config, for the pad values of its list-valued features "
         "(`pad:`); without it lists are padded with \"\" (strings) or -1 (integers).")


def _output_paths(output: str | None, rejected: str | None, skip_invalid: bool
                  ) -> tuple[str | None, str | None]:
    """`(scores file or None for stdout, rejected file or None)` of `predict` and `query`."""
    if rejected and not skip_invalid:
        raise click.UsageError("--rejected is only used with --skip-invalid")
    output = None if output == "-" else output
    if skip_invalid and rejected is None and output is not None:
        rejected = f"{output}.rejected.jsonl"
    if rejected is not None and rejected == output:
        raise click.UsageError("--rejected and --output must be different files")
    return output, rejected


@contextlib.contextmanager
def _complete_outputs(output: str | None, rejected: str | None, skip_invalid: bool
                      ) -> Iterator[tuple[TextIO, TextIO | None]]:
    """The scores stream and, when skipping invalid rows, the rejected one.

    Each file appears only once the block succeeds (`serving.predict.complete_file`); with no
    path the scores go to stdout, the rejected rows to stderr.
    """
    from serving.predict import complete_file

    with complete_file(output, sys.stdout) as scores_out:
        if not skip_invalid:
            yield scores_out, None
            return
        with complete_file(rejected, sys.stderr) as rejected_out:
            yield scores_out, rejected_out


@click.command()
@click.option("--model", "model_base", required=True, type=click.Path(file_okay=False),
              help="<export_dir>/<model name>; its newest version is used.")
@click.option("--input", "input_path", required=True, type=click.Path(dir_okay=False),
              help="Raw rows as JSON lines (.jsonl or .jsonl.gz).")
@click.option("--output", type=click.Path(dir_okay=False, allow_dash=True), default=None,
              help="Where to write the scores (default stdout); the file appears only once "
                   "every row is scored.")
@click.option("--skip-invalid", is_flag=True,
              help="Score the valid rows and write each invalid one, one JSON object "
                   '{"source", "line", "reason", "raw"} per row, to --rejected; each score then '
                   'also holds its input "line". Without it an invalid row fails the command: '
                   "the invalid rows are listed (the first 20) and nothing is scored.")
@click.option("--rejected", "rejected_path", type=click.Path(dir_okay=False),
              help="With --skip-invalid, where the invalid rows go (default "
                   "<output>.rejected.jsonl, or stderr when the scores go to stdout); the file "
                   "is written even when no row is invalid.")
@click.option("--batch-size", default=4096, show_default=True, type=click.IntRange(min=1),
              help="Rows per call of the model.")
@pads_config_option
@friendly_errors
def predict(model_base: str, input_path: str, output: str | None, skip_invalid: bool,
            rejected_path: str | None, batch_size: int, config_path: str | None) -> None:
    """Score raw rows with the newest exported version: one JSON object per row.

    Rows are checked as preprocessing checks log rows (features only: no labels needed). A
    list-valued feature is a JSON array, cut to its max_length and padded as the model takes it.
    """
    from serving.lists import config_pads
    from serving.predict import Predictor, predict_file

    output, rejected_path = _output_paths(output, rejected_path, skip_invalid)
    pads = config_pads(load_config(config_path)) if config_path else None
    enable_filesystems([model_base, input_path])
    predictor = Predictor(model_base, pads)
    with _complete_outputs(output, rejected_path, skip_invalid) as (scores_out, rejected_out):
        outcome = predict_file(predictor, input_path, scores_out, rejected_out, batch_size)
    summary = f"scored {outcome.scored} rows with version {predictor.version} ({predictor.path})"
    if skip_invalid:
        summary += (f"; skipped {outcome.invalid} invalid row{'s' * (outcome.invalid != 1)}, "
                    f"written with their reasons to {rejected_path or 'stderr'}")
    click.echo(summary, err=True)


@click.command("serving-config")
@config_option
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Folder for models.config, batching_parameters.txt and monitoring.config "
                   "(local, s3:// or gs://).")
@friendly_errors
def serving_config(config_path: str, out_dir: str) -> None:
    """Write TF Serving's config files for the exported versions, and print its command line.

    Labels are resolved against the versions exported now: run it again after each export.
    The summary goes to stderr, the `tensorflow_model_server` command line to stdout.
    """
    from serving.tfs_config import build_serving_files, summary, write_serving_files

    config = load_config(config_path)
    enable_filesystems([out_dir])
    result = build_serving_files(config, out_dir)
    written = write_serving_files(result, out_dir)
    click.echo(f"wrote {', '.join(written)}", err=True)
    for line in summary(result, config.serving):
        click.echo(line, err=True)
    click.echo(result.command_line())



# --- query: owned by the client work (serving/client*.py, serving/query.py) ---------------------
@click.command()
@click.option("--server", required=True,
              help="HOST:PORT of TF Serving: its gRPC port (8500) or, with --protocol rest, its "
                   "REST port (8501).")
@click.option("--protocol", type=click.Choice(["grpc", "rest"]), default="grpc",
              show_default=True)
@click.option("--model", "model_name", default=None,
              help="The served model's name (default with --config: its serving.model_name).")
@click.option("--version", type=click.IntRange(min=1), default=None,
              help="Ask this version (default: the server's choice, the newest it serves).")
@click.option("--label", default=None,
              help="Ask the version this label names (models.config version_labels); not with "
                   "--version.")
@click.option("--signature", default="serving_default", show_default=True,
              help="The signature to score with.")
@click.option("--input", "input_path", required=True, type=click.Path(dir_okay=False),
              help="Raw feature rows as JSON lines (.jsonl or .jsonl.gz).")
@click.option("--output", type=click.Path(dir_okay=False, allow_dash=True), default=None,
              help="Where to write the scores, one JSON line per row in input order (default "
                   "stdout); the file appears only once every row is scored.")
@click.option("--batch-size", default=256, show_default=True, type=click.IntRange(min=1),
              help="Rows per request.")
@click.option("--skip-invalid", is_flag=True,
              help="Send the valid rows and write each invalid one, one JSON object "
                   '{"source", "line", "reason", "raw"} per row, to --rejected; each score then '
                   'also holds its input "line". Without it an invalid row fails the command '
                   "before anything is sent: the invalid rows are listed (the first 20).")
@click.option("--rejected", "rejected_path", type=click.Path(dir_okay=False),
              help="With --skip-invalid, where the invalid rows go (default "
                   "<output>.rejected.jsonl, or stderr when the scores go to stdout).")
@click.option("--timeout", default=10.0, show_default=True, type=click.FloatRange(min=0.001),
              help="Seconds each request may take (not retried when exceeded).")
@click.option("--retries", default=3, show_default=True, type=click.IntRange(min=0),
              help="Retries of a request that found the server unreachable or UNAVAILABLE "
                   "(HTTP 503), with exponential backoff.")
@click.option("--rest-format", type=click.Choice(["columnar", "row"]), default="columnar",
              show_default=True,
              help='With --protocol rest: send "inputs" (columnar) or "instances" (row).')
@pads_config_option
@friendly_errors
def query(server: str, protocol: str, model_name: str | None, version: int | None,
          label: str | None, signature: str, input_path: str, output: str | None,
          batch_size: int, skip_invalid: bool, rejected_path: str | None, timeout: float,
          retries: int, rest_format: str, config_path: str | None) -> None:
    """Score raw rows on a TF Serving endpoint (REST or gRPC): one JSON line per row.

    The model's status and signature are read from the server first, and every row is checked
    against the signature (as preprocessing checks log rows, and a key the signature does not
    take is refused) before any row is sent. A list-valued feature (an input of shape
    (None, L)) is a JSON array, cut to L and padded; TF Serving does not say the pad value,
    so give --config when the config names a `pad:`.
    """
    from serving.client import RetryPolicy
    from serving.lists import config_pads
    from serving.query import open_client, query_file, summary

    if version is not None and label is not None:
        raise click.UsageError("--version and --label cannot be used together: TF Serving "
                               "takes one or the other")
    config = load_config(config_path) if config_path else None
    if model_name is None:
        if config is None:
            raise click.UsageError("give --model (the served model's name), or --config to "
                                   "use its serving.model_name")
        model_name = config.serving.model_name
    output, rejected_path = _output_paths(output, rejected_path, skip_invalid)
    enable_filesystems([input_path])
    client = open_client(protocol, server, model_name, version=version, label=label,
                         signature=signature, timeout=timeout, batch_size=batch_size,
                         retry=RetryPolicy(attempts=retries + 1), json_format=rest_format,
                         pads=config_pads(config) if config else None)
    with client, _complete_outputs(output, rejected_path, skip_invalid) as (scores_out,
                                                                            rejected_out):
        outcome = query_file(client, input_path, scores_out, rejected_out,
                             progress=sys.stderr.isatty())
    click.echo(summary(outcome, client, (rejected_path or "stderr") if skip_invalid else None),
               err=True)


# --- serve: owned by the TF Serving double (serving/double/) ------------------------------------
@click.command(short_help="A local double of TF Serving (its REST and gRPC APIs), not for "
                          "production.")
@config_option
@click.option("--model-config-file", type=click.Path(dir_okay=False), default=None,
              help="A text ModelServerConfig to serve instead of the project's model (what TF "
                   "Serving reads with --model_config_file: several models, each with name, "
                   "base_path, model_version_policy, version_labels); re-read when it changes.")
@click.option("--rest-port", type=click.IntRange(0, 65535), default=None,
              help="REST port (default serving.rest_port); 0: a free port chosen by the OS.")
@click.option("--grpc-port", type=click.IntRange(0, 65535), default=None,
              help="gRPC port (default serving.grpc_port); 0: a free port chosen by the OS.")
@click.option("--poll-seconds", type=click.FloatRange(min=0.05), default=1.0, show_default=True,
              help="Seconds between two looks at the export folders for new versions (TF "
                   "Serving's --file_system_poll_wait_seconds).")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; 0.0.0.0 listens on every interface, as TF Serving.")
@friendly_errors
def serve(config_path: str, model_config_file: str | None, rest_port: int | None,
          grpc_port: int | None, poll_seconds: float, host: str) -> None:
    """Serve the exports over TF Serving's REST and gRPC APIs: a double of TF Serving.

    For laptops and tests only, not for production: production runs TF Serving itself (the
    command line `multitower serving-config` prints). It follows TF Serving's protocols, version
    policy, labels and warmup: the model config is the one `serving-config` writes (labels
    resolved again after each poll), or --model-config-file. Batching limits and Prometheus
    metrics come from the `serving:` section. One line per model (versions, labels, ports) goes
    to stderr once the versions are loaded; it serves until SIGINT or SIGTERM, then exits 0.
    """
    import signal
    import threading

    from serving.double import (
        NOTICE,
        model_config_file_reloader,
        project_model_config,
        read_model_config_file,
        start_server,
    )

    config = load_config(config_path)
    if model_config_file:
        enable_filesystems([model_config_file])
        model_config = read_model_config_file(model_config_file)
        resolver, reloader, source = None, model_config_file_reloader(model_config_file), \
            model_config_file
    else:
        model_config, resolver = project_model_config(config)
        reloader, source = None, config_path
    enable_filesystems([model.base_path for model in model_config.model_config_list.config])
    click.echo(NOTICE, err=True)
    stop = threading.Event()
    for number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(number, lambda *_: stop.set())
    server = start_server(
        model_config, serving_config=config.serving, host=host, poll_seconds=poll_seconds,
        rest_port=config.serving.rest_port if rest_port is None else rest_port,
        grpc_port=config.serving.grpc_port if grpc_port is None else grpc_port,
        label_resolver=resolver, config_reloader=reloader, source=source)
    try:
        for line in server.describe():
            click.echo(line, err=True)
        click.echo(f"ready: REST {server.rest_url}, gRPC {server.grpc_target}; stop with "
                   f"Ctrl-C (SIGINT) or SIGTERM", err=True)
        while not stop.wait(0.5):  # a timed wait: the signal handler runs in this thread
            pass
        click.echo("stopping: finishing running requests, unloading versions", err=True)
    finally:
        server.stop()
    click.echo("stopped", err=True)


# --- score: owned by batch scoring (serving/score.py) --------------------------------------------
@click.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@config_option
@date_option
@click.option("--model", "model_path", default=None,
              help="A version folder (<export_dir>/<model name>/<N>) or a model folder (its "
                   "newest version); default: the newest version under "
                   "<train.export_dir>/<model.name>.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="The day's scores folder (local, s3:// or gs://): scores-*.parquet and "
                   "_MANIFEST.json. It is replaced whole, so it must be new, empty or hold "
                   "scores of the same day.")
@click.option("--batch-size", default=1024, show_default=True, type=click.IntRange(min=1),
              help="The most examples per call of the model.")
@click.option("--shards", type=click.IntRange(min=1), default=None,
              help="Parquet files to write (default: as many as the day's TFRecord files).")
@click.argument("beam_args", nargs=-1, type=click.UNPROCESSED)
@friendly_errors
def score(config_path: str, date: str, model_path: str | None, out_dir: str, batch_size: int,
          shards: int | None, beam_args: tuple[str, ...]) -> None:
    """Score a preprocessed day with an exported version (Beam RunInference) into Parquet.

    One row per example of the day: its origin (log file and line) and every score of the
    version. Extra arguments go to Beam, e.g. --runner=FlinkRunner or
    --direct_num_workers=2 --direct_running_mode=multi_processing.
    """
    from serving.score import run_score

    config = load_config(config_path)
    enable_filesystems([config.data.tfrecords, out_dir, model_path or config.train.export_dir])
    manifest = run_score(config, date, out_dir, model_path, list(beam_args),
                         max_batch_size=batch_size, num_shards=shards)
    model = manifest["model"]
    click.echo(f"{date}: scored {manifest['rows']['scored']} rows with version "
               f"{model['version']} ({model['path']}) into {len(manifest['files'])} file(s) "
               f"under {out_dir}")


COMMANDS = [predict, serving_config, query, serve, score]
