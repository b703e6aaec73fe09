"""Which storage paths a pod can use: object storage, or absolute paths under a declared volume.

A path that works on a laptop (`work/tfrecords`, `/home/me/model`) names a folder that does not
exist in a pod, or worse, exists in the pod's scratch space and vanishes with it. Rendering
refuses such a path with a message naming the key; each step is checked for the paths it uses.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from multitower.config import Config
from multitower.errors import MultitowerError
from multitower.storage import scheme

# Object stores the project's stack reads: TensorFlow (gs:// natively, s3:// and hdfs:// through
# tensorflow-io) and Beam (s3:// through its [aws] extra; gs:// needs apache-beam[gcp]).
OBJECT_STORAGE = ("s3", "gs", "hdfs")

_DATA = (("data", "logs"), ("data", "tfrecords"), ("data", "rejected"))
_TRAIN = (("data", "tfrecords"), ("train", "model_dir"), ("train", "export_dir"))
# The config keys each step reads or writes.
STEP_PATHS: dict[str, tuple[tuple[str, str], ...]] = {
    "preprocess": _DATA,
    "train": _TRAIN,
    # The daily pod creates the preprocess and train Jobs (whose paths must work) and lists
    # the exports itself to move the serving labels.
    "daily": _DATA + _TRAIN[1:],
    "serving": (("train", "export_dir"),),
}


class K8sError(MultitowerError, ValueError):
    """The config cannot be rendered for a cluster; the message names the file and the key."""


def refuse(config: Config, key: str, message: str) -> K8sError:
    """A `K8sError` naming the config file (when known) and the key."""
    where = f"{config.source}: " if config.source else ""
    return K8sError(f"{where}{key}: {message}")


def _as_written(config: Config, section: str, key: str) -> Any:
    """The value as written in the config file: loading resolved relative paths already."""
    if config.source and os.path.isfile(config.source):
        try:
            raw = yaml.safe_load(Path(config.source).read_text())
            return raw[section][key]
        except (OSError, yaml.YAMLError, KeyError, TypeError):
            pass
    return getattr(getattr(config, section), key)


def check_cluster_paths(config: Config, step: str) -> None:
    """Refuses a path of `step` that a pod cannot reach.

    Raises:
        K8sError: A path is relative, local and outside every `k8s.volumes` mount, or a URL
            of a scheme that is not object storage; the message names the key.
    """
    k8s = config.k8s
    assert k8s is not None  # checked by the caller, with its own message
    mounts = [v.mount_path for v in k8s.volumes]
    for section, key in STEP_PATHS[step]:
        value = getattr(getattr(config, section), key)
        written = _as_written(config, section, key)
        name = f"{section}.{key}"
        kind = scheme(value)
        if kind in OBJECT_STORAGE:
            continue
        if kind and kind != "file":
            raise refuse(config, name, f"{value!r} is a {kind}:// URL; a cluster reads object "
                                       f"storage ({', '.join(s + '://' for s in OBJECT_STORAGE)}"
                                       f") or a volume declared in k8s.volumes")
        hint = (f"use object storage (s3://bucket/...) or a path under a volume mounted from "
                f"k8s.volumes ({', '.join(mounts) if mounts else 'none declared'})")
        if isinstance(written, str) and "://" not in written and not os.path.isabs(written):
            raise refuse(config, name, f"{written!r} is a relative path: in a pod it would "
                                       f"name a folder inside the container; {hint}")
        path = PurePosixPath(value.removeprefix("file://"))
        if not any(path == PurePosixPath(m) or PurePosixPath(m) in path.parents
                   for m in mounts):
            raise refuse(config, name, f"{value!r} is a local path outside every volume mount: "
                                       f"in a pod it would not survive the pod; {hint}")
