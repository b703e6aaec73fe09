"""Atomic day outputs: build under a temporary sibling name, then swap it in place of the old day.

A job writes `<root>/.dt=D.tmp-<id>/` and only when everything there is complete replaces
`<root>/dt=D/` with it. Readers never see a half-written day under the real name, a failed run
leaves the previous day untouched (its temporary directory is removed), and a rerun replaces the
previous output instead of mixing with it. Everything goes through `tf.io.gfile`, so `gs://` and
(with tensorflow-io) `s3://` roots work too; there a directory rename is a copy, which is why the
day's manifest is written after the swap (a day counts only once its manifest exists).
A run that is killed leaves its temporary directory behind; the next run of that day, once it
holds the day's lease, removes it (`remove_stale_staging`).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable

import tensorflow as tf

from multitower.manifest import MANIFEST_NAME, day_dir
from multitower.storage import rename_dir

_LOG = logging.getLogger("multitower.pipeline")


def staging_dir(root: str, date: str) -> str:
    """Creates and returns a fresh temporary directory next to `<root>/dt=<date>`."""
    final = day_dir(root, date)
    parent, name = final.rsplit("/", 1)
    path = f"{parent}/.{name}.tmp-{uuid.uuid4().hex[:12]}"
    tf.io.gfile.makedirs(path)
    return path


def remove_quietly(path: str) -> None:
    """Deletes a directory tree if it exists; cleanup must not hide the error that caused it."""
    try:
        if tf.io.gfile.exists(path):
            tf.io.gfile.rmtree(path)
    except (tf.errors.OpError, OSError) as err:
        _LOG.warning("could not remove %s: %s", path, err)


def swap_in(staged: str, final: str) -> None:
    """Replaces the directory `final` (if any) with the directory `staged`.

    The old manifest goes first, so that the old day stops counting before any of its files
    disappear.
    """
    if tf.io.gfile.exists(final):
        old_manifest = f"{final}/{MANIFEST_NAME}"
        if tf.io.gfile.exists(old_manifest):
            tf.io.gfile.remove(old_manifest)
        tf.io.gfile.rmtree(final)
    if not tf.io.gfile.exists(staged):  # nothing was written: an object store has no empty dirs
        return
    rename_dir(staged, final)


def remove_stale_staging(root: str, date: str, keep: Iterable[str] = ()) -> list[str]:
    """Deletes the temporary directories earlier runs of `date` left under `root`.

    A run that is killed (or whose machine dies) cannot remove its `<root>/.dt=D.tmp-<id>/`
    directory. Call this only while holding the day's lease: another live run of the same day
    may still be writing to its own staging directory.

    Args:
        root: A partitions' root, e.g. `config.data.tfrecords` or `config.data.rejected`.
        date: `YYYY-MM-DD`; other days' staging directories are left alone.
        keep: Staging directories to keep (this run's own, if already created).

    Returns:
        The directories removed, sorted (one that cannot be removed is logged and left).
    """
    final = day_dir(root, date)
    parent, name = final.rsplit("/", 1)
    if not tf.io.gfile.isdir(parent):
        return []
    prefix = f".{name}.tmp-"
    kept = {path.rstrip("/") for path in keep}
    # listdir, not glob: object stores list "directories" as names ending in "/".
    stale = sorted(f"{parent}/{entry.rstrip('/')}" for entry in tf.io.gfile.listdir(parent)
                   if entry.startswith(prefix))
    removed = []
    for path in stale:
        if path in kept:
            continue
        _LOG.info("removing the staging directory %s, left by an earlier run of %s", path, date)
        try:
            tf.io.gfile.rmtree(path)
        except (tf.errors.OpError, OSError) as err:  # litter must not stop the day's run
            _LOG.warning("could not remove %s: %s", path, err)
            continue
        removed.append(path)
    return removed
