"""Atomic day outputs: build under a temporary sibling name, then swap it in place of the old day.

A job writes `<root>/.dt=D.tmp-<id>/` and only when everything there is complete replaces
`<root>/dt=D/` with it. Readers never see a half-written day under the real name, a failed run
leaves the previous day untouched (its temporary directory is removed), and a rerun replaces the
previous output instead of mixing with it. Everything goes through `tf.io.gfile`, so `gs://` and
(with tensorflow-io) `s3://` roots work too; there a directory rename is a copy, which is why the
day's manifest is written after the swap (a day counts only once its manifest exists).
"""

from __future__ import annotations

import logging
import uuid

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
