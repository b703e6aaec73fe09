"""The Beam job that turns one day of raw logs into TFRecords, rejected rows and a manifest.

    logs/dt=D/*.jsonl[.gz] ─ ReadLogLines ─ ValidateRows ─┬ valid ─ encode ─ tfrecords/dt=D/part-*
                                                          ├ rejected ─ rejected/dt=D/rejected-*
                           (read, valid, rejected) ─ ComputeStats ─ tfrecords/dt=D/_MANIFEST.json

Everything is written under temporary sibling directories and swapped into place only after the
pipeline succeeded and its counts add up (see `pipeline.publish`); the manifest is written last.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from typing import Any

import apache_beam as beam
import tensorflow as tf
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions

import multitower
from multitower.config import Config, DataConfig
from multitower.dates import check_date
from multitower.manifest import day_dir, write_manifest
from multitower.records import encode_example
from pipeline.publish import remove_quietly, staging_dir, swap_in
from pipeline.read_logs import ReadLogLines, resolve_inputs
from pipeline.stats import READ, REJECTED, VALID, ComputeStats
from pipeline.validate import ValidateRows

_LOG = logging.getLogger("multitower.pipeline")
_STATS_NAME = "_STATS.json"  # the pipeline's statistics, read back by the driver, then deleted


def build_pipeline(
    p: beam.Pipeline, data: DataConfig, inputs: list[str], out_dir: str, rejected_dir: str
) -> None:
    """Adds the day's transforms to `p`: read, validate, write records, rejections and stats.

    Args:
        p: The pipeline to extend.
        data: The data section of the config.
        inputs: Files (or globs) to read.
        out_dir: Where the TFRecord shards and the statistics file go.
        rejected_dir: Where the rejected rows go.
    """
    lines = p | "Inputs" >> beam.Create(inputs) | "Read" >> ReadLogLines()
    checked = lines | "Validate" >> ValidateRows(data)
    _ = (
        checked.valid
        | "Encode" >> beam.Map(encode_example, data)
        | "WriteRecords" >> beam.io.WriteToTFRecord(
            f"{out_dir}/part", file_name_suffix=".tfrecord.gz", num_shards=data.num_shards,
            compression_type=CompressionTypes.GZIP)
    )
    _ = (
        checked[REJECTED]
        | "RejectedToJson" >> beam.Map(json.dumps)
        # No file when nothing was rejected: Beam's S3 writer fails on an empty file (its
        # multipart upload has no part; apache/beam#21369).
        | "WriteRejected" >> beam.io.WriteToText(
            f"{rejected_dir}/rejected", file_name_suffix=".jsonl", skip_if_empty=True)
    )
    _ = (
        {READ: lines, VALID: checked.valid, REJECTED: checked[REJECTED]}
        | "Stats" >> ComputeStats(data)
        | "StatsToJson" >> beam.Map(json.dumps)
        | "WriteStats" >> beam.io.WriteToText(
            f"{out_dir}/{_STATS_NAME}", shard_name_template="", num_shards=1)
    )


def pipeline_options(beam_args: list[str] | None) -> PipelineOptions:
    """Beam options from command-line style arguments; the DirectRunner unless one is named.

    Raises:
        ValueError: The DirectRunner is asked for several threads: Beam 2.77's multi-threaded
            mode drops elements across shuffles (a GroupByKey of 60,000 elements returned
            ~59,000), so it is refused here rather than after a wasted run.
    """
    options = PipelineOptions(list(beam_args or []))
    standard = options.view_as(StandardOptions)
    if standard.runner is None:
        standard.runner = "DirectRunner"
    direct = options.view_as(DirectOptions)
    if direct.direct_running_mode == "multi_threading" and direct.direct_num_workers != 1:
        raise ValueError(
            "--direct_running_mode=multi_threading with several workers loses rows in this Beam "
            "version; use --direct_running_mode=multi_processing (or one worker) instead")
    return options


def _read_stats(out_dir: str) -> dict[str, Any]:
    path = f"{out_dir}/{_STATS_NAME}"
    with tf.io.gfile.GFile(path, "r") as f:
        stats = json.loads(f.read())
    tf.io.gfile.remove(path)
    return stats


def _check_counts(stats: dict[str, Any], files: list[str], data: DataConfig, date: str) -> None:
    rows = stats["rows"]
    if rows["read"] != rows["written"] + rows["rejected"]:
        raise RuntimeError(
            f"preprocess {date}: rows do not add up: read {rows['read']} != written "
            f"{rows['written']} + rejected {rows['rejected']}; the output was not published")
    if len(files) != data.num_shards:
        raise RuntimeError(
            f"preprocess {date}: expected {data.num_shards} TFRecord shards, found {len(files)} "
            f"({files}); the output was not published")


def run_preprocess(config: Config, date: str, beam_args: list[str] | None = None) -> dict:
    """Preprocesses one day: `<data.tfrecords>/dt=D/` and `<data.rejected>/dt=D/`, atomically.

    Args:
        config: The loaded config; only `config.data` is used.
        date: The day, `YYYY-MM-DD`; its logs are `config.data.logs_for(date)`.
        beam_args: Beam pipeline options such as `--runner=DirectRunner` or
            `--direct_num_workers=2`; the DirectRunner is used when no runner is given.

    Returns:
        The manifest written to `<data.tfrecords>/dt=D/_MANIFEST.json` (see `multitower.manifest`).

    Raises:
        ValueError: `date` is not `YYYY-MM-DD`, or `beam_args` ask for an unsafe mode.
        InputMissingError: The day has no log files.
        RuntimeError: The counts do not add up; nothing was published.
    """
    check_date(date)
    options = pipeline_options(beam_args)
    data = config.data
    inputs = resolve_inputs(data.logs_for(date), date)
    started = time.monotonic()
    _LOG.info("preprocess %s: reading %d file(s): %s", date, len(inputs), ", ".join(inputs))

    out_dir, rejected_dir = staging_dir(data.tfrecords, date), staging_dir(data.rejected, date)
    try:
        with beam.Pipeline(options=options) as p:
            build_pipeline(p, data, inputs, out_dir, rejected_dir)
        stats = _read_stats(out_dir)
        files = sorted(path.rsplit("/", 1)[-1] for path in tf.io.gfile.glob(f"{out_dir}/part-*"))
        _check_counts(stats, files, data, date)
        manifest = {
            "date": date,
            "schema_fingerprint": data.schema_fingerprint(),
            "rows": stats["rows"],
            "rejection_reasons": stats["rejection_reasons"],
            "files": files,
            "inputs": inputs,
            "numeric": stats["numeric"],
            "labels": stats["labels"],
            "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "multitower_version": multitower.__version__,
        }
        final = day_dir(data.tfrecords, date)
        swap_in(rejected_dir, day_dir(data.rejected, date))
        swap_in(out_dir, final)
        try:
            write_manifest(final, manifest)
        except BaseException:
            remove_quietly(final)  # a day without its manifest must not linger as if complete
            raise
    finally:
        remove_quietly(out_dir)
        remove_quietly(rejected_dir)

    rows = manifest["rows"]
    _LOG.info("preprocess %s: read %d, written %d, rejected %d rows -> %s (%.1f s)", date,
              rows["read"], rows["written"], rows["rejected"], final, time.monotonic() - started)
    return manifest
