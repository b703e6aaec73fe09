"""The Beam job that turns one day of raw logs into TFRecords, rejected rows and a manifest.

    logs/dt=D/*.{jsonl,csv,parquet}[.gz]
      ─ ReadLogLines ─┬ records ─ WriteShards ─┬ tfrecords/dt=D/part-*
                      │                        └ rejected/dt=D/rejected-*
                      ├ records read per file
                      └ faulty files
    (records read, file summaries, faulty files) ─ Summarize ─ tfrecords/dt=D/_MANIFEST.json

Rows are counted where each file is read and again where each file is written, so a row lost
between the two fails the run (`_check_counts`) instead of going unnoticed.

Two runs over the same logs give byte-identical TFRecord and rejected files, and the same
manifest but for `created_at`, in every format: rows go to shards by a hash of their file and
position, each shard is written in (file, position) order, and the statistics are exact sums,
the same in any order (`pipeline.shards`, `pipeline.stats`). Everything is written under
temporary sibling directories and swapped into place only after the pipeline succeeded, its
counts add up and no input file was faulty (unless faulty files may be skipped; see
`pipeline.read_logs`); the manifest is written last.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from collections import Counter, defaultdict
from typing import Any

import apache_beam as beam
import tensorflow as tf
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.runner import PipelineResult

import multitower
from multitower.beam_options import engine, local_workers, make_pipeline, pipeline_options
from multitower.config import Config, DataConfig
from multitower.dates import check_date
from multitower.lease import Lease
from multitower.manifest import day_dir, day_lease, write_manifest
from pipeline.publish import remove_quietly, remove_stale_staging, staging_dir, swap_in
from pipeline.read_logs import (
    COUNTS,
    FAULTS,
    LINES,
    READ_STARTED,
    TIMING_NAMESPACE,
    BadInputFileError,
    ReadLogLines,
    bad_files_message,
    now_us,
    resolve_inputs,
)
from pipeline.shards import RECORD_PREFIX, RECORD_SUFFIX, RECORDS, REJECTED, WriteShards, shard_name
from pipeline.stats import STATISTICS_KEYS, day_statistics

_LOG = logging.getLogger("multitower.pipeline")
_STATS_NAME = "_STATS.json"  # the pipeline's summary, read back by the driver, then deleted
_READ, _FAULT = "read", "fault"
_WRITTEN = "written_us"  # a timing Distribution (see `pipeline.read_logs`): a file was written


def _tag_written(summary: dict[str, Any], kind: str) -> tuple[str, dict[str, Any]]:
    """Tags a written file's summary for `summarize`, noting when the file was done."""
    Metrics.distribution(TIMING_NAMESPACE, _WRITTEN).update(now_us())
    return kind, summary


def summarize(parts: list[tuple[str, Any]], data: DataConfig) -> dict[str, Any]:
    """The pipeline's part of the manifest, from the tagged summaries, in a fixed order.

    Args:
        parts: `("read", lines read)`, `("records", TFRecord file summary)`, `("rejected",
            rejected file summary)` (see `pipeline.shards.WriteShards`) and `("fault", (path,
            fault))`, in any order.
        data: The data section of the config.

    Returns:
        The statistics (`pipeline.stats.day_statistics`, `defaulted` included) plus `files`,
        `file_checks`, `rejected_files` and `skipped_files` (see `multitower.manifest`).
    """
    by_kind: dict[str, list[Any]] = defaultdict(list)
    for kind, item in parts:
        by_kind[kind].append(item)
    records = sorted(by_kind[RECORDS], key=lambda s: s["shard"])
    rejected = sorted(by_kind[REJECTED], key=lambda s: s["shard"])
    reasons: Counter[str] = Counter()
    for summary in rejected:
        reasons.update(summary["reasons"])
    stats = day_statistics(data, sum(by_kind[_READ]), [(s["shard"], s["stats"]) for s in records],
                           reasons)
    return {
        **stats,
        "files": [s["file"] for s in records],
        "file_checks": {s["file"]: {"bytes": s["bytes"], "crc32c": s["crc32c"], "rows": s["rows"]}
                        for s in records},
        "rejected_files": [s["file"] for s in rejected],
        "skipped_files": [{"file": path, "fault": fault}
                          for path, fault in sorted(by_kind[_FAULT])],
    }


def build_pipeline(
    p: beam.Pipeline, data: DataConfig, inputs: list[str], out_dir: str, rejected_dir: str
) -> None:
    """Adds the day's transforms to `p`: read, validate, write records, rejections and summary.

    Args:
        p: The pipeline to extend.
        data: The data section of the config.
        inputs: The files to read (`resolve_inputs`).
        out_dir: Where the TFRecord files and the summary file (`_STATS.json`) go.
        rejected_dir: Where the rejected rows go.
    """
    read = p | "Inputs" >> beam.Create(inputs) | "Read" >> ReadLogLines(data)
    written = read[LINES] | "Shards" >> WriteShards(data, out_dir, rejected_dir)
    tagged = (
        read[COUNTS] | "FileRows" >> beam.Map(lambda count: count[1])
        | "CountRead" >> beam.CombineGlobally(sum) | "TagRead" >> beam.Map(lambda n: (_READ, n)),
        written[RECORDS] | "TagRecords" >> beam.Map(_tag_written, RECORDS),
        written[REJECTED] | "TagRejected" >> beam.Map(_tag_written, REJECTED),
        read[FAULTS] | "TagFaults" >> beam.Map(lambda f: (_FAULT, f)),
    )
    _ = (
        tagged
        | "Flatten" >> beam.Flatten()
        | "Collect" >> beam.combiners.ToList()
        | "Summarize" >> beam.Map(summarize, data)
        | "WriteSummary" >> beam.FlatMap(_write_summary, f"{out_dir}/{_STATS_NAME}")
    )


def _write_summary(summary: dict[str, Any], path: str) -> list:
    """Writes the pipeline's summary for the driver (one small file: no sink and its stages)."""
    with FileSystems.create(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        f.write(json.dumps(summary).encode())
    return []


def job_timings(result: PipelineResult, started_us: int, ended_us: int
                ) -> dict[str, float] | None:
    """Where a run's time went, from the timing Distributions its files reported.

    Args:
        result: The finished pipeline's result.
        started_us: When the pipeline started to be built (`now_us`).
        ended_us: When it had finished.

    Returns:
        Seconds: `startup` (building and submitting the pipeline, starting workers: up to the
        first file opened), `rows` (from the first file opened to the last file written),
        `finish` (the summary, shutting down), and the wall-clock times `first_read` and
        `last_written` (seconds since the epoch); or None if the runner reports no metrics.
    """
    try:
        found = result.metrics().query(MetricsFilter().with_namespace(TIMING_NAMESPACE))
    except Exception as err:  # figures for people only: a runner's metrics must not fail a day
        _LOG.debug("no timing metrics from the runner: %s", err)
        return None
    by_name = {}
    for item in found["distributions"]:
        value = item.committed if item.committed is not None else item.attempted
        if value is not None and value.count:
            by_name[item.key.metric.name] = value
    if READ_STARTED not in by_name or _WRITTEN not in by_name:
        return None
    first, last = by_name[READ_STARTED].min, by_name[_WRITTEN].max
    return {"startup": (first - started_us) / 1e6, "rows": (last - first) / 1e6,
            "finish": (ended_us - last) / 1e6, "first_read": first / 1e6,
            "last_written": last / 1e6}


def _read_summary(out_dir: str) -> dict[str, Any]:
    path = f"{out_dir}/{_STATS_NAME}"
    with tf.io.gfile.GFile(path, "r") as f:
        summary = json.loads(f.read())
    tf.io.gfile.remove(path)
    return summary


def _check_counts(summary: dict[str, Any], files: list[str], data: DataConfig, date: str) -> None:
    """Refuses to publish output that does not add up (a bug, not a fault of the input)."""
    rows = summary["rows"]
    if rows["read"] != rows["written"] + rows["rejected"]:
        raise RuntimeError(
            f"preprocess {date}: rows do not add up: read {rows['read']} != written "
            f"{rows['written']} + rejected {rows['rejected']}; the output was not published")
    expected = [shard_name(RECORD_PREFIX, i, data.num_shards, RECORD_SUFFIX)
                for i in range(data.num_shards)]
    if files != expected or summary["files"] != expected:
        raise RuntimeError(
            f"preprocess {date}: expected the TFRecord files {expected}, found {files} "
            f"(summarized: {summary['files']}); the output was not published")
    in_files = sum(check["rows"] for check in summary["file_checks"].values())
    if in_files != rows["written"]:
        raise RuntimeError(
            f"preprocess {date}: the files hold {in_files} rows, not the {rows['written']} "
            f"written; the output was not published")


def run_preprocess(
    config: Config, date: str, beam_args: list[str] | None = None, skip_bad_files: bool = False
) -> dict:
    """Preprocesses one day: `<data.tfrecords>/dt=D/` and `<data.rejected>/dt=D/`, atomically.

    Args:
        config: The loaded config; only `config.data` is used.
        date: The day, `YYYY-MM-DD`; its logs are `config.data.logs_for(date)`.
        beam_args: Beam pipeline options such as `--runner=PortableRunner
            --job_endpoint=host:port` or `--direct_num_workers=2`; without a runner, the
            DirectRunner's engine in `multi_processing` mode, one worker per core (see
            `multitower.beam_options.pipeline_options`).
        skip_bad_files: Publish the day without the input files that cannot be read whole
            (listed in the manifest's `skipped_files` with their fault; their rows count
            nowhere) instead of refusing the day.

    Returns:
        The manifest written to `<data.tfrecords>/dt=D/_MANIFEST.json` (see `multitower.manifest`).

    Raises:
        ValueError: `date` is not `YYYY-MM-DD`, or `beam_args` ask for an unsafe mode.
        InputMissingError: The day has no log files.
        BadInputFileError: An input file cannot be read whole and `skip_bad_files` is false;
            nothing was published.
        RuntimeError: The counts do not add up; nothing was published.
    """
    check_date(date)
    options = pipeline_options(beam_args)
    data = config.data
    # One run per day at a time, before anything is read or written; once it is held, staging
    # folders that runs killed before have left behind are this run's to remove.
    lease = Lease(day_lease(data.tfrecords, date), f"day {date} under {data.tfrecords}",
                  data.lease_ttl_seconds,
                  hint=f"Wait for that run to end; if it died on another host, its lease expires "
                       f"{data.lease_ttl_seconds:g} s after its last heartbeat "
                       f"(data.lease_ttl_seconds)")
    with lease:
        for root in (data.tfrecords, data.rejected):
            remove_stale_staging(root, date)
        return _run_preprocess(config, date, options, skip_bad_files)


def _run_preprocess(config: Config, date: str, options: PipelineOptions, skip_bad_files: bool
                    ) -> dict:
    data = config.data
    inputs = resolve_inputs(data.logs_for(date), date, data.format)
    started = time.monotonic()
    _LOG.info("preprocess %s: reading %d file(s) on %s: %s", date, len(inputs), engine(options),
              ", ".join(inputs))

    out_dir, rejected_dir = staging_dir(data.tfrecords, date), staging_dir(data.rejected, date)
    try:
        started_us = now_us()
        with make_pipeline(options) as p:
            build_pipeline(p, data, inputs, out_dir, rejected_dir)
        timings = job_timings(p.result, started_us, now_us())
        if timings is not None:
            # `extra`: a benchmark (benchmarks/preprocess.py) reads the figures off the record.
            _LOG.info("preprocess %s: on %s: start-up %.1f s, rows %.1f s (first file opened to "
                      "last file written), finish %.1f s", date, engine(options),
                      timings["startup"], timings["rows"], timings["finish"],
                      extra={"timings": {**timings, "workers": local_workers(options)}})
        summary = _read_summary(out_dir)
        skipped = summary["skipped_files"]
        if skipped and not skip_bad_files:
            raise BadInputFileError(
                bad_files_message(date, [(s["file"], s["fault"]) for s in skipped]))
        for s in skipped:
            _LOG.warning("preprocess %s: skipped %s: %s", date, s["file"], s["fault"])
        files = sorted(path.rsplit("/", 1)[-1]
                       for path in tf.io.gfile.glob(f"{out_dir}/{RECORD_PREFIX}-*"))
        _check_counts(summary, files, data, date)
        skipped_paths = {s["file"] for s in skipped}
        manifest = {
            "date": date,
            "schema_fingerprint": data.schema_fingerprint(),
            "rows": summary["rows"],
            "rejection_reasons": summary["rejection_reasons"],
            "defaulted": summary["defaulted"],
            **({"truncated": summary["truncated"]} if "truncated" in summary else {}),
            "files": summary["files"],
            "file_checks": summary["file_checks"],
            "rejected_files": summary["rejected_files"],
            "inputs": [path for path in inputs if path not in skipped_paths],
            "skipped_files": skipped,
            "numeric": summary["numeric"],
            "labels": summary["labels"],
            **{key: summary[key] for key in STATISTICS_KEYS},  # pipeline.stats
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
    _LOG.info("preprocess %s: read %d, written %d, rejected %d rows%s -> %s (%.1f s)", date,
              rows["read"], rows["written"], rows["rejected"],
              f", skipped {len(skipped)} faulty file(s)" if skipped else "", final,
              time.monotonic() - started)
    return manifest
