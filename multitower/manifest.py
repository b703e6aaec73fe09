"""Day partitions (`<root>/dt=YYYY-MM-DD/`), their `_MANIFEST.json`, and checking their files.

A partition counts only once its manifest exists.

The Beam job writes a day's TFRecords to `<tfrecords>/dt=YYYY-MM-DD/` and the manifest last;
the trainer reads the manifest to learn which files to read, how many rows they hold, the schema
fingerprint they were written with and the statistics of the numeric features, and checks the
files' sizes and checksums (`check_partition`) before it builds a model, so that a corrupt file
is named up front instead of failing mid-training at a byte offset.

Manifest schema::

    {"date": "2026-01-01", "schema_fingerprint": "...",
     "rows": {"read": N, "written": W, "rejected": R},       # N == W + R
     "rejection_reasons": {"missing field 'user_id'": 3, ...},
     "defaulted": {"device": 12, ...},  # per feature with a default: written rows that took it
     "files": ["part-00000-of-00004.tfrecord.gz", ...],   # relative to the day's directory
     "file_checks": {"part-00000-of-00004.tfrecord.gz":
                     {"bytes": 123456, "crc32c": "1a2b3c4d", "rows": 2500}, ...},
     "rejected_files": ["rejected-00001-of-00004.jsonl", ...],  # in <rejected>/dt=D/
     "inputs": ["/abs/path/of/an/input/file", ...],      # the files whose rows were read
     "skipped_files": [{"file": "/abs/path", "fault": "truncated gzip stream: ..."}, ...],
     "numeric": {"item_price": {"count": W, "mean": .., "std": .., "min": .., "max": ..}, ...},
     "labels": {"click": {"count": .., "mean": .., "min": .., "max": ..}, ...},  # by task name
     "truncated": {"recent_items": 7, ...},  # with list features: written rows cut to max_length
     "tasks": {"click": {"type": "binary", "count": W, "positive_rate": 0.133},
               "watch_time": {"type": "regression", "count": W, "mean": 11.2, "std": 49.6}},
     "label_correlation": [  # every pair of tasks, in config order: Pearson over the rows
         {"tasks": ["click", "like"], "rows": W, "pearson": 0.41}, ...],  # having both labels
     "missing": {"device": {"kept": 12, "rejected": 0},  # per feature, then per task: rows that
                 "click": {"kept": 0, "rejected": 3}, ...},  # lacked it (or held null)
     "categorical": {"device": {"distinct": 4, "top": [["android", 7957], ["ios", 7135], ...]},
                     "recent_items": {"distinct": 80213, "top": [["i100042", 310], ...]}, ...},
     "lists": {"recent_items": {"rows": W, "elements": 51234, "lengths": [0, 812, ...],
                                "min": 1, "mean": 5.4, "max": 10, "truncated": 7}},
     "histograms": {"item_price": [[16.0, 20.0, 1312], [20.0, 24.0, 1590], ...], ...},
     "created_at": "2026-01-02T03:04:05+00:00", "multitower_version": "0.1.0"}

The statistics are over the written rows (`pipeline.stats`), exact and merged so that the same
logs give the same bits in any format, on any runner:

- `tasks`: per task, the rows with a label and, for a binary task, the share of 1s (its
  `positive_rate`), for a regression task the label's mean and population std.
- `label_correlation`: per pair of tasks (config order, first task first), the Pearson
  correlation of the two labels over the written rows having both; null when either label is
  constant there. For nested labels (conversion only after a click) it mostly shows the nesting.
- `missing`: per feature, then per task label: `kept`, written rows that lacked the value (it
  took its default, or an optional label was left out); `rejected`, rows rejected because it
  was missing or null (when that was the row's first fault, see `rejection_reasons`).
- `categorical`: per categorical feature (a list feature: over its elements), `distinct`,
  an estimate of the number of distinct values (Beam's approximate-unique, about 2% error; exact
  below 10,000 values), and `top`, the 10 most frequent values with their counts, exact (ties
  in value order).
- `lists`: per list feature, `lengths[k]` is the written rows holding k elements (after cutting
  to `max_length`, so k runs from 0 to `max_length`), `elements` their sum; `min`, `mean`,
  `max` of the lengths (null without rows), and `truncated` as above.
- `histograms`: per numeric feature, then per regression task, `[low, high, rows]` for each
  non-empty bucket: fixed buckets, four per power of two (`[16, 20)`, `[20, 24)`, `[24, 28)`,
  `[28, 32)`, ...), `[0, 0, rows]` for zeros, mirrored for negative values; in value order.

`created_at` is the only field that differs between two runs over the same logs. Manifests
written before `file_checks` existed are still read; their files can only be checked for
existence. Those written before `defaulted` existed lack it (nothing was defaulted then), and
those written before the statistics above (`tasks` to `histograms`) lack them.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import tensorflow as tf

from multitower.checksums import file_checksum
from multitower.dates import check_date
from multitower.errors import MultitowerError

MANIFEST_NAME = "_MANIFEST.json"


class ManifestMissingError(MultitowerError, FileNotFoundError):
    """A day partition has no manifest: it is missing, or its preprocessing did not finish."""


class ManifestInvalidError(MultitowerError, ValueError):
    """A manifest exists but is not what a manifest promises; the message names its path."""


class PartitionCorruptError(MultitowerError):
    """A day's files do not match its manifest (missing, other size, other checksum)."""


# What every manifest promises (module docstring), and the type of each value.
_REQUIRED = {"date": str, "schema_fingerprint": str, "rows": dict, "files": list,
             "numeric": dict, "labels": dict}
_JSON_NAMES = {str: "a string", dict: "an object", list: "an array"}
_ROW_COUNTS = ("read", "written", "rejected")


def day_dir(root: str, date: str) -> str:
    """The directory of one day's partition: `<root>/dt=YYYY-MM-DD`."""
    return f"{root.rstrip('/')}/dt={check_date(date)}"


def day_lease(root: str, date: str) -> str:
    """The lease file of the run writing one day: `<root>/.dt=YYYY-MM-DD.lease.json`.

    Beside the day, not in it: publishing a day replaces its folder whole.
    """
    return f"{root.rstrip('/')}/.dt={check_date(date)}.lease.json"


def read_manifest(root: str, date: str) -> dict[str, Any]:
    """Reads the manifest of the day partition `<root>/dt=<date>`.

    Args:
        root: The partitions' root, e.g. `config.data.tfrecords`.
        date: `YYYY-MM-DD`.

    Returns:
        The manifest (see the module docstring).

    Raises:
        ManifestMissingError: The partition or its manifest does not exist.
        ManifestInvalidError: The manifest is not a JSON object, lacks a key it promises or
            holds a value of the wrong type, or was written for another day.
    """
    path = f"{day_dir(root, date)}/{MANIFEST_NAME}"
    if not tf.io.gfile.exists(path):
        raise ManifestMissingError(
            f"the partition for {date} is missing or incomplete: {path} does not exist; "
            f"run `multitower preprocess --config C --date {date}` first "
            f"(C being your config file)")
    with tf.io.gfile.GFile(path, "r") as f:
        text = f.read()
    try:
        manifest = json.loads(text)
    except json.JSONDecodeError as err:
        raise ManifestInvalidError(
            f"{path}: not valid JSON ({err}); rerun preprocessing for {date}") from None
    if not isinstance(manifest, dict):
        raise ManifestInvalidError(f"{path}: expected a JSON object, got {type(manifest).__name__}")
    problem = _manifest_problem(manifest, date)
    if problem is not None:
        raise ManifestInvalidError(f"{path}: {problem}; rerun preprocessing for {date}")
    return manifest


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _manifest_problem(manifest: dict[str, Any], date: str) -> str | None:
    """What is wrong with a decoded manifest, or None."""
    missing = [key for key in _REQUIRED if key not in manifest]
    if missing:
        return f"missing key{'s' if len(missing) > 1 else ''} {', '.join(missing)}"
    for key, kind in _REQUIRED.items():
        if not isinstance(manifest[key], kind):
            return f"{key!r} must be {_JSON_NAMES[kind]}, got {type(manifest[key]).__name__}"
    if manifest["date"] != date:
        return f"it was written for {manifest['date']!r}, not {date}"
    bad = [k for k in _ROW_COUNTS if not _is_count(manifest["rows"].get(k))]
    if bad:
        return f"'rows' must hold counts {', '.join(_ROW_COUNTS)}; bad or missing: {', '.join(bad)}"
    defaulted = manifest.get("defaulted", {})
    if not (isinstance(defaulted, dict) and all(_is_count(n) for n in defaulted.values())):
        return f"'defaulted' must map features to counts, got {defaulted!r}"
    files = manifest["files"]
    if not all(isinstance(name, str) and name and "/" not in name for name in files):
        return f"'files' must be file names in the day's directory, got {files!r}"
    checks = manifest.get("file_checks")
    if checks is not None:
        if not isinstance(checks, dict):
            return f"'file_checks' must be a JSON object, got {type(checks).__name__}"
        for name in files:
            check = checks.get(name)
            if not (isinstance(check, dict) and _is_count(check.get("bytes"))
                    and isinstance(check.get("crc32c"), str)):
                return f"'file_checks' has no size and crc32c for {name}"
    return None


def write_manifest(directory: str, manifest: dict[str, Any]) -> str:
    """Writes `manifest` as `<directory>/_MANIFEST.json` in one step and returns its path.

    The JSON goes to a temporary name first and is then renamed, so that a reader never sees a
    half-written manifest (object stores write whole objects anyway).
    """
    path = f"{directory.rstrip('/')}/{MANIFEST_NAME}"
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    with tf.io.gfile.GFile(tmp, "w") as f:
        f.write(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
    tf.io.gfile.rename(tmp, path, overwrite=True)
    return path


def schema_mismatch(root: str, date: str, manifest: dict[str, Any], fingerprint: str
                    ) -> str | None:
    """Why a day cannot be read with a config of schema `fingerprint`, or None if it can."""
    if manifest["schema_fingerprint"] == fingerprint:
        return None
    return (f"{day_dir(root, date)} was written for schema {manifest['schema_fingerprint']}, "
            f"but the config's data schema is {fingerprint}")


def partition_files(root: str, date: str, manifest: dict[str, Any]) -> list[str]:
    """The full paths of the TFRecord files a day's manifest lists."""
    return [f"{day_dir(root, date)}/{name}" for name in manifest["files"]]


def verify_partition(root: str, date: str) -> list[str]:
    """Checks every file a day's manifest lists against the size and CRC32C it records.

    Every byte of every file is read (a few seconds per GB), so a flipped bit anywhere is found.

    Args:
        root: The partitions' root, e.g. `config.data.tfrecords`.
        date: `YYYY-MM-DD`.

    Returns:
        The problems, one line each naming the file's full path, e.g.
        `/t/dt=D/part-00001-of-00004.tfrecord.gz: checksum differs: crc32c 0badf00d, the manifest
        says 1a2b3c4d`; empty when every file matches. A manifest written before checksums were
        recorded only has its files checked for existence.

    Raises:
        ManifestMissingError: The partition or its manifest does not exist.
        ManifestInvalidError: The manifest is invalid (see `read_manifest`).
    """
    return _verify(read_manifest(root, date), root, date)


def _verify(manifest: dict[str, Any], root: str, date: str) -> list[str]:
    checks = manifest.get("file_checks") or {}
    problems = []
    for name, path in zip(manifest["files"], partition_files(root, date, manifest), strict=True):
        problem = _file_problem(path, checks.get(name))
        if problem is not None:
            problems.append(f"{path}: {problem}")
    return problems


def _file_problem(path: str, check: dict[str, Any] | None) -> str | None:
    try:
        if not tf.io.gfile.exists(path):
            return "missing (the manifest lists it)"
        if check is None:
            return None
        size = tf.io.gfile.stat(path).length
        if size != check["bytes"]:  # cheap, and says more than a checksum would
            return f"size differs: {size} bytes, the manifest says {check['bytes']}"
        _, crc = file_checksum(path)
    except tf.errors.OpError as err:
        return f"unreadable: {err.message}"
    if crc != check["crc32c"]:
        return f"checksum differs: crc32c {crc}, the manifest says {check['crc32c']}"
    return None


def check_partition(root: str, date: str) -> dict[str, Any]:
    """Reads a day's manifest and verifies its files; see `verify_partition`.

    Args:
        root: The partitions' root, e.g. `config.data.tfrecords`.
        date: `YYYY-MM-DD`.

    Returns:
        The manifest, once every file it lists matches it.

    Raises:
        ManifestMissingError: The partition or its manifest does not exist.
        ManifestInvalidError: The manifest is invalid.
        PartitionCorruptError: A file is missing, or differs in size or checksum; the message
            names every such file on one line and says how to rebuild the day.
    """
    manifest = read_manifest(root, date)
    problems = _verify(manifest, root, date)
    if problems:
        raise PartitionCorruptError(
            f"the partition for {date} is corrupt: {'; '.join(problems)}; run `multitower "
            f"preprocess --config C --date {date}` again (C being your config file)")
    return manifest
