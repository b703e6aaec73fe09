"""Day partitions (`<root>/dt=YYYY-MM-DD/`) and their `_MANIFEST.json`.

A partition counts only once its manifest exists.

The Beam job writes a day's TFRecords to `<tfrecords>/dt=YYYY-MM-DD/` and the manifest last;
the trainer reads the manifest to learn which files to read, how many rows they hold, the schema
fingerprint they were written with and the statistics of the numeric features.

Manifest schema::

    {"date": "2026-01-01", "schema_fingerprint": "...",
     "rows": {"read": N, "written": W, "rejected": R},
     "rejection_reasons": {"missing field 'user_id'": 3, ...},
     "files": ["part-00000-of-00004.tfrecord.gz", ...],   # relative to the day's directory
     "inputs": ["/abs/path/of/an/input/file", ...],
     "numeric": {"item_price": {"count": W, "mean": .., "std": .., "min": .., "max": ..}, ...},
     "labels": {"click": {"mean": ..}, ...},               # keyed by task name
     "created_at": "2026-01-02T03:04:05+00:00", "multitower_version": "0.1.0"}
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import tensorflow as tf

from multitower.dates import check_date
from multitower.errors import MultitowerError

MANIFEST_NAME = "_MANIFEST.json"


class ManifestMissingError(MultitowerError, FileNotFoundError):
    """A day partition has no manifest: it is missing, or its preprocessing did not finish."""


class ManifestInvalidError(MultitowerError, ValueError):
    """A manifest exists but is not a JSON object; the message names its path."""


def day_dir(root: str, date: str) -> str:
    """The directory of one day's partition: `<root>/dt=YYYY-MM-DD`."""
    return f"{root.rstrip('/')}/dt={check_date(date)}"


def read_manifest(root: str, date: str) -> dict[str, Any]:
    """Reads the manifest of the day partition `<root>/dt=<date>`.

    Args:
        root: The partitions' root, e.g. `config.data.tfrecords`.
        date: `YYYY-MM-DD`.

    Returns:
        The manifest (see the module docstring).

    Raises:
        ManifestMissingError: The partition or its manifest does not exist.
        ManifestInvalidError: The manifest is not a JSON object.
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
    return manifest


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


def partition_files(root: str, date: str, manifest: dict[str, Any]) -> list[str]:
    """The full paths of the TFRecord files a day's manifest lists."""
    return [f"{day_dir(root, date)}/{name}" for name in manifest["files"]]
