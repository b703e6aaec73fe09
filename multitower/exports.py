"""The export layout TF Serving reads: `<export_dir>/<model name>/<version>/saved_model.pb`.

A version is a positive integer folder; anything else in the model's folder (a `.tmp-*` folder
being written) is ignored, as TF Serving ignores it. The trainer writes versions, serving reads
the newest (or a chosen) one.
"""

from __future__ import annotations

import os

import tensorflow as tf

from multitower.errors import MultitowerError


class NoExportError(MultitowerError, FileNotFoundError):
    """A model's export folder holds no version."""


def model_base(export_dir: str, model_name: str) -> str:
    """The folder of one model's versions: `<export_dir>/<model name>`."""
    return os.path.join(export_dir, model_name)


def version_dir(base: str, version: int) -> str:
    """The folder of one version: `<base>/<version>`."""
    return os.path.join(base, str(int(version)))


def versions(base: str) -> list[int]:
    """The integer versions already exported under `base`, ascending."""
    if not tf.io.gfile.isdir(base):
        return []
    names = (n.rstrip("/") for n in tf.io.gfile.listdir(base))
    return sorted(int(n) for n in names if n.isdigit())


def newest_version(base: str) -> tuple[int, str]:
    """`(version, path)` of the highest integer version under `base`.

    Raises:
        NoExportError: There is none.
    """
    found = versions(base)
    if not found:
        raise NoExportError(
            f"no exported version under {base}: expected integer folders such as "
            f"{version_dir(base, 1)}; train a day first (multitower train)"
        )
    return found[-1], version_dir(base, found[-1])
