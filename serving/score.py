"""Batch scoring: one preprocessed day through an exported version (Beam RunInference) to Parquet.

    tfrecords/dt=D/part-* ─ ReadAllFromTFRecord ─ RunInference ─ ToRow ─ WriteToParquet ─ scores-*
                                  └ CountRead                        └ CountScored ─ _COUNTS.json

The day must be complete (its `_MANIFEST.json` exists, its files are there at their recorded
sizes) and written with the config's schema. Each example goes, as it is, to the version's
`predict_examples` signature (`serving.model_handler.ExamplesModelHandler`); each output row
holds the example's origin (`multitower.origin`: log file and line) and every score the version
gives (its tasks, ESMM's pCTCVR, `ranking_score` when configured), one float32 column each.

`--out DIR` holds one day's scores and is replaced whole::

    DIR/scores-00000-of-00002.parquet ...   # deterministic names; which rows go to which file
    DIR/_MANIFEST.json                      # is up to the runner

Manifest (written last, atomically, once the rows add up)::

    {"kind": "scores", "date": "2026-04-01",
     "model": {"path": "/exp/impressions/2", "version": 2, "signature": "predict_examples"},
     "input": {"tfrecords": "/t/dt=2026-04-01", "files": [...], "rows": 600,
               "schema_fingerprint": "..."},
     "rows": {"read": 600, "scored": 600},       # both == input.rows, or nothing is published
     "files": ["scores-00000-of-00002.parquet", ...],
     "file_rows": {"scores-00000-of-00002.parquet": 297, ...},
     "schema": [{"name": "origin_file", "type": "string"}, ..., {"name": "click",
                "type": "float"}, ...],
     "created_at": "...", "multitower_version": "..."}

Publishing follows preprocessing (`pipeline/publish.py`, which serving may not import): the run
writes `<parent>/.DIR.tmp-<id>/`, and only when the rows add up replaces DIR with it, then writes
the manifest. A failed run leaves DIR as it was. DIR may be reused only for the same day: it
must be new, empty, hold this day's scores (rescored, e.g. with a newer version), or hold only
scores files without a manifest (a run interrupted while publishing); anything else is refused
rather than deleted. One run per DIR at a time (a lease beside it, `.DIR.lease.json`).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
import uuid
from typing import Any

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
import tensorflow as tf
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.ml.inference.base import PredictionResult, RunInference

import multitower
from multitower.beam_options import make_pipeline, pipeline_options
from multitower.config import Config, DataConfig
from multitower.dates import check_date
from multitower.errors import MultitowerError
from multitower.exports import model_base
from multitower.lease import Lease
from multitower.manifest import (
    MANIFEST_NAME,
    PartitionCorruptError,
    day_dir,
    partition_files,
    read_manifest,
    schema_mismatch,
    write_manifest,
)
from multitower.origin import ORIGIN_FILE, ORIGIN_LINE
from multitower.storage import is_remote, rename_dir
from multitower.tfs_requests import EXAMPLES_SIGNATURE
from serving.model_handler import (
    ExamplesModelHandler,
    VersionInfo,
    inspect_version,
    resolve_version,
)

_LOG = logging.getLogger("multitower.serving")
KIND = "scores"  # the manifest's "kind", which tells a scores folder from any other
SCORES_PREFIX = "scores"
SCORES_SUFFIX = ".parquet"
ORIGIN_COLUMNS = ("origin_file", "origin_line")
_COUNTS_NAME = "_COUNTS.json"  # the pipeline's counts, read back by the driver, then deleted
_SCORES_FILE = re.compile(rf"{SCORES_PREFIX}-\d{{5}}-of-\d{{5}}{re.escape(SCORES_SUFFIX)}")


class ScoreInputError(MultitowerError, ValueError):
    """The day or the version cannot be scored as asked; the message names the path at fault."""


class ScoreOutputError(MultitowerError, FileExistsError):
    """`--out` is not a folder this run may replace; the message says what it holds."""


class ScoreCountError(MultitowerError, RuntimeError):
    """The rows scored do not add up to the day's rows; nothing was published."""


def output_schema(outputs: tuple[str, ...] | list[str]) -> pa.Schema:
    """The Parquet schema: `origin_file` string, `origin_line` int64, one float32 per output.

    Raises:
        ScoreInputError: An output is named like an origin column.
    """
    clash = sorted(set(outputs) & set(ORIGIN_COLUMNS))
    if clash:
        raise ScoreInputError(f"the version has outputs named {clash}, which the origin columns "
                              "of the scores take; rename those tasks")
    fields = [pa.field(ORIGIN_COLUMNS[0], pa.string(), nullable=False),
              pa.field(ORIGIN_COLUMNS[1], pa.int64(), nullable=False)]
    return pa.schema(fields + [pa.field(name, pa.float32(), nullable=False) for name in outputs])


def score_row(result: PredictionResult, outputs: list[str]) -> dict[str, Any]:
    """One Parquet row: the example's origin and its scores.

    Args:
        result: A `PredictionResult` of `ExamplesModelHandler` (the serialized Example and
            `{output: score}`).
        outputs: The score columns.

    Returns:
        `{"origin_file": str, "origin_line": int, output: float, ...}`; an example written
        without origin fields gets `""` and 0, as `multitower.records.origin_spec` parses it.
    """
    feature = tf.train.Example.FromString(result.example).features.feature
    source = feature[ORIGIN_FILE].bytes_list.value if ORIGIN_FILE in feature else []
    line = feature[ORIGIN_LINE].int64_list.value if ORIGIN_LINE in feature else []
    row: dict[str, Any] = {
        ORIGIN_COLUMNS[0]: source[0].decode("utf-8", "replace") if source else "",
        ORIGIN_COLUMNS[1]: int(line[0]) if line else 0,
    }
    for name in outputs:
        row[name] = result.inference[name]
    return row


def build_pipeline(p: beam.Pipeline, files: list[str], handler: ExamplesModelHandler,
                   schema: pa.Schema, out_dir: str, num_shards: int) -> None:
    """Adds the scoring transforms to `p`: read, score, write rows and counts.

    Args:
        p: The pipeline to extend.
        files: The day's GZIP TFRecord files.
        handler: The version's model handler.
        schema: The Parquet schema (`output_schema`).
        out_dir: Where the Parquet files and the counts file (`_COUNTS.json`) go.
        num_shards: How many Parquet files to write (some may hold no row).
    """
    examples = (p | "Files" >> beam.Create(files)
                | "Read" >> beam.io.ReadAllFromTFRecord(compression_type=CompressionTypes.GZIP))
    rows = (examples
            | "Score" >> RunInference(handler)
            | "ToRow" >> beam.Map(score_row, schema.names[len(ORIGIN_COLUMNS):]))
    _ = rows | "Write" >> beam.io.WriteToParquet(
        f"{out_dir}/{SCORES_PREFIX}", schema, codec="snappy", file_name_suffix=SCORES_SUFFIX,
        num_shards=num_shards, shard_name_template="-SSSSS-of-NNNNN")
    counts = (
        examples | "CountRead" >> beam.combiners.Count.Globally()
        | "TagRead" >> beam.Map(lambda n: ("read", n)),
        rows | "CountScored" >> beam.combiners.Count.Globally()
        | "TagScored" >> beam.Map(lambda n: ("scored", n)),
    )
    _ = (counts | "Flatten" >> beam.Flatten() | "Collect" >> beam.combiners.ToList()
         | "ToJson" >> beam.Map(lambda pairs: json.dumps(dict(pairs)))
         | "WriteCounts" >> beam.io.WriteToText(f"{out_dir}/{_COUNTS_NAME}",
                                                shard_name_template="", num_shards=1))


def check_day(config: Config, date: str) -> dict[str, Any]:
    """The day's manifest, once the day is complete, of the config's schema, its files there.

    Raises:
        ManifestMissingError: The day was not preprocessed (or not to the end).
        ManifestInvalidError: Its manifest is invalid.
        ScoreInputError: It was written with another schema.
        PartitionCorruptError: A file it lists is missing or of another size.
    """
    root = config.data.tfrecords
    manifest = read_manifest(root, date)
    problem = schema_mismatch(root, date, manifest, config.data.schema_fingerprint())
    if problem:
        raise ScoreInputError(f"{problem}; preprocess the day with this config, or score it "
                              "with the config it was preprocessed with")
    checks = manifest.get("file_checks") or {}
    for name, path in zip(manifest["files"], partition_files(root, date, manifest), strict=True):
        # Sizes only: `multitower verify` reads every byte; the row counts catch the rest.
        size = tf.io.gfile.stat(path).length if tf.io.gfile.exists(path) else None
        expected = checks.get(name, {}).get("bytes")
        if size is None or (expected is not None and size != expected):
            fault = "missing" if size is None else f"{size} bytes, the manifest says {expected}"
            raise PartitionCorruptError(
                f"{path}: {fault}; run `multitower verify` and preprocess {date} again")
    return manifest


def check_features(info: VersionInfo, data: DataConfig) -> None:
    """Refuses a version that parses features the day's examples lack, or reads them otherwise.

    Otherwise: of another dtype, or as a list (`(None, L)`, L its `max_length`) where the
    config's feature holds one value, or a list of another length, or the other way round.

    Raises:
        ScoreInputError: Naming the version and the features.
    """
    have = {f.name: f.dtype + (f" list of {f.max_length}" if f.multivalent
                               else "") for f in data.features}
    read = {name: dtype + (f" list of {info.list_lengths[name]}" if name in info.list_lengths
                           else "") for name, dtype in info.features.items()}
    wrong = {name: kind for name, kind in read.items() if have.get(name) != kind}
    if wrong:
        shown = ", ".join(f"{n} ({d}; the config has {have.get(n, 'no such feature')})"
                          for n, d in sorted(wrong.items()))
        raise ScoreInputError(f"{info.path} reads features the day's examples do not hold as "
                              f"it expects: {shown}; score with a version of this config")


def _local(path: str) -> str:
    return path.rstrip("/") if is_remote(path) else os.path.abspath(path)


def _siblings(out_dir: str) -> tuple[str, str]:
    """`(parent, name)` of the `--out` folder; its staging folders and lease go in `parent`."""
    parent, name = out_dir.rstrip("/").rsplit("/", 1)
    if parent.endswith(":/"):  # s3://bucket: the staging folder needs a parent in the bucket
        raise ScoreOutputError(f"--out {out_dir}: give a folder inside the bucket, e.g. "
                               f"{out_dir.rstrip('/')}/scores/dt=YYYY-MM-DD")
    return parent, name


def check_out_dir(out_dir: str, date: str) -> None:
    """Refuses an `--out` folder that holds anything but scores of `date` (see module doc).

    Raises:
        ScoreOutputError: Saying what the folder holds and what to do.
    """
    if not tf.io.gfile.exists(out_dir):
        return
    if not tf.io.gfile.isdir(out_dir):
        raise ScoreOutputError(f"--out {out_dir} is a file; give a folder")
    entries = sorted(e.rstrip("/") for e in tf.io.gfile.listdir(out_dir))
    if not entries or all(_SCORES_FILE.fullmatch(e) for e in entries):
        return  # empty, or the files of a run stopped between publishing and its manifest
    if MANIFEST_NAME in entries:
        try:
            with tf.io.gfile.GFile(f"{out_dir}/{MANIFEST_NAME}", "r") as f:
                old = json.loads(f.read())
        except (json.JSONDecodeError, tf.errors.OpError):
            old = None
        if isinstance(old, dict) and old.get("kind") == KIND:
            if old.get("date") == date:
                return
            raise ScoreOutputError(
                f"--out {out_dir} holds the scores of {old.get('date')}, not {date}; give each "
                f"day its own folder (e.g. .../dt={date}), or delete that one first")
    shown = ", ".join(entries[:5]) + (f" and {len(entries) - 5} more" if len(entries) > 5 else "")
    raise ScoreOutputError(
        f"--out {out_dir} is not empty and holds no scores of {date} ({shown}); it would be "
        "replaced whole: give a new or empty folder")


def _remove(path: str) -> None:
    """Deletes a tree if it exists; cleanup must not hide the error that caused it."""
    try:
        if tf.io.gfile.exists(path):
            tf.io.gfile.rmtree(path)
    except (tf.errors.OpError, OSError) as err:
        _LOG.warning("could not remove %s: %s", path, err)


def _remove_stale_staging(out_dir: str) -> None:
    """Removes the staging folders of killed runs into `out_dir` (call under its lease)."""
    parent, name = _siblings(out_dir)
    for entry in tf.io.gfile.listdir(parent):
        if entry.startswith(f".{name}.tmp-"):
            _LOG.info("removing %s/%s, left by an earlier run", parent, entry.rstrip("/"))
            _remove(f"{parent}/{entry.rstrip('/')}")


def _swap_in(staged: str, final: str) -> None:
    """Replaces the folder `final` (if any) with `staged`; the old manifest goes first."""
    if tf.io.gfile.exists(final):
        if tf.io.gfile.exists(f"{final}/{MANIFEST_NAME}"):
            tf.io.gfile.remove(f"{final}/{MANIFEST_NAME}")
        tf.io.gfile.rmtree(final)
    rename_dir(staged, final)


def _read_counts(staging: str) -> dict[str, int]:
    path = f"{staging}/{_COUNTS_NAME}"
    with tf.io.gfile.GFile(path, "r") as f:
        counts = json.loads(f.read())
    tf.io.gfile.remove(path)
    return counts


def _file_rows(staging: str) -> dict[str, int]:
    """`{Parquet file name: rows}` from the files' footers, sorted by name."""
    rows = {}
    for name in sorted(e.rstrip("/") for e in tf.io.gfile.listdir(staging)):
        if not _SCORES_FILE.fullmatch(name):
            continue
        # Beam's file systems, as Beam's own Parquet source reads them: pyarrow needs a
        # seekable file object, which tf.io.gfile's GFile is not quite.
        with FileSystems.open(f"{staging}/{name}", compression_type=CompressionTypes.UNCOMPRESSED
                              ) as f:
            rows[name] = pq.ParquetFile(f).metadata.num_rows
    return rows


def _check_counts(counts: dict[str, int], file_rows: dict[str, int], expected: int,
                  num_shards: int, date: str, day: str) -> None:
    read, scored = counts["read"], counts["scored"]
    if read != expected:
        raise ScoreCountError(
            f"score {date}: read {read} examples from {day}, but its manifest lists {expected} "
            f"rows; nothing was published: run `multitower verify --config C --date {date}` and "
            "preprocess the day again")
    in_files = sum(file_rows.values())
    if scored != read or in_files != scored or len(file_rows) != num_shards:
        raise ScoreCountError(
            f"score {date}: read {read} examples, scored {scored}, wrote {in_files} rows in "
            f"{len(file_rows)} of {num_shards} files; nothing was published")


def run_score(config: Config, date: str, out_dir: str, model: str | None = None,
              beam_args: list[str] | None = None, *, max_batch_size: int = 1024,
              num_shards: int | None = None) -> dict[str, Any]:
    """Scores one preprocessed day into `out_dir` (Parquet and a manifest), atomically.

    Args:
        config: The loaded config: `data` (the day, its schema), `train.export_dir` and
            `model.name` (the default version).
        date: The day, `YYYY-MM-DD`.
        out_dir: The day's scores folder, replaced whole (see the module docstring).
        model: A version folder or a model folder (`serving.model_handler.resolve_version`);
            default the newest version under `<train.export_dir>/<model.name>`.
        beam_args: Beam pipeline options such as `--runner=...` or `--direct_num_workers=2`;
            without a runner, the DirectRunner's engine in `multi_processing` mode, one
            worker per core (`multitower.beam_options.pipeline_options`).
        max_batch_size: The most examples per call of the model.
        num_shards: Parquet files to write; default as many as the day's TFRecord files.

    Returns:
        The manifest written to `<out_dir>/_MANIFEST.json`.

    Raises:
        ManifestMissingError: The day was not preprocessed (or not to the end).
        ScoreInputError: The day has another schema, the version reads other features, or the
            Beam options are unsafe.
        ModelRefusedError: `model` is no SavedModel with a `predict_examples` signature.
        NoExportError: No `model` was given and the config's model has no version.
        ScoreOutputError: `out_dir` holds something other than scores of `date`.
        ScoreCountError: The rows do not add up; nothing was published.
        LeaseHeldError: Another run is writing `out_dir`.
    """
    check_date(date)
    options = pipeline_options(beam_args)
    manifest = check_day(config, date)
    files = partition_files(config.data.tfrecords, date, manifest)
    base = model_base(config.train.export_dir, config.model.name)
    info = inspect_version(_local(resolve_version(model, base)))
    check_features(info, config.data)
    schema = output_schema(info.outputs)
    shards = num_shards or max(1, len(files))
    handler = ExamplesModelHandler(info.path, min_batch_size=min(32, max_batch_size),
                                   max_batch_size=max_batch_size)
    out_dir = _local(out_dir)
    parent, name = _siblings(out_dir)
    tf.io.gfile.makedirs(parent)
    ttl = config.data.lease_ttl_seconds
    with Lease(f"{parent}/.{name}.lease.json", f"the scores folder {out_dir}", ttl,
               hint=f"Wait for that run to end; if it died on another host, its lease expires "
                    f"{ttl:g} s after its last heartbeat (data.lease_ttl_seconds)") as lease:
        check_out_dir(out_dir, date)
        _remove_stale_staging(out_dir)
        staging = f"{parent}/.{name}.tmp-{uuid.uuid4().hex[:12]}"
        tf.io.gfile.makedirs(staging)
        _LOG.info("score %s: %d file(s) of %s with %s", date, len(files),
                  day_dir(config.data.tfrecords, date), info.path)
        try:
            with make_pipeline(options) as p:
                build_pipeline(p, files, handler, schema, staging, shards)
            counts = _read_counts(staging)
            file_rows = _file_rows(staging)
            _check_counts(counts, file_rows, manifest["rows"]["written"], shards, date,
                          day_dir(config.data.tfrecords, date))
            scores = {
                "kind": KIND, "date": date,
                "model": {"path": info.path, "version": info.version,
                          "signature": EXAMPLES_SIGNATURE},
                "input": {"tfrecords": day_dir(config.data.tfrecords, date),
                          "files": manifest["files"], "rows": manifest["rows"]["written"],
                          "schema_fingerprint": manifest["schema_fingerprint"]},
                "rows": {"read": counts["read"], "scored": counts["scored"]},
                "files": list(file_rows), "file_rows": file_rows,
                "schema": [{"name": f.name, "type": str(f.type)} for f in schema],
                "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                "multitower_version": multitower.__version__,
            }
            lease.check()
            _swap_in(staging, out_dir)
            try:
                write_manifest(out_dir, scores)
            except BaseException:
                _remove(out_dir)  # scores without their manifest must not look complete
                raise
        finally:
            _remove(staging)
    return scores
