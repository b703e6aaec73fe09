"""Object storage: which file systems a config's paths need, and leaving a process that used them.

Every stage reads and writes through `tf.io.gfile` (trainer, manifests) or Beam's `FileSystems`
(the preprocessing job), so a path is a local path or a URL:

- `gs://` is built into TensorFlow and Beam;
- `s3://` and `hdfs://` come from tensorflow-io for TensorFlow (registered when imported, in
  every process that touches such a path) and, for `s3://`, from Beam's `[aws]` extra (boto3).

S3 endpoint and credentials come from the standard AWS environment (`AWS_ACCESS_KEY_ID`,
`AWS_SECRET_ACCESS_KEY`, `AWS_REGION`). For an S3-compatible server (MinIO, Ceph, moto...) set
`AWS_ENDPOINT_URL_S3` (or `AWS_ENDPOINT_URL`), which boto3 reads; `enable_filesystems` copies it
to `S3_ENDPOINT`, the name tensorflow-io reads. tensorflow-io ignores `S3_USE_HTTPS`: the
endpoint must carry its scheme (`http://host:9000`), or it speaks TLS to a plain-HTTP server.

After a process has used tensorflow-io's S3 file system, its exit aborts in a static destructor
("pure virtual method called", exit code 134) whatever the real status was
(tensorflow/io#2039); `exit_process` flushes everything and leaves through `os._exit` instead.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import sys
from collections.abc import Iterable

TFIO_SCHEMES = ("s3", "hdfs", "viewfs", "har")
_state = {"tfio": False}


def scheme(path: str) -> str:
    """`s3` for `s3://bucket/key`, `` for a local path."""
    return path.split("://", 1)[0].lower() if "://" in path else ""


def is_remote(path: str) -> bool:
    return bool(scheme(path)) and scheme(path) != "file"


def enable_filesystems(paths: Iterable[str]) -> None:
    """Registers the file systems `paths` need with TensorFlow.

    Imports tensorflow-io for `s3://` and `hdfs://`; call it before the first file operation on
    them.
    """
    needed = {scheme(p) for p in paths} & set(TFIO_SCHEMES)
    if not needed or _state["tfio"]:
        return
    if "s3" in needed and "S3_ENDPOINT" not in os.environ:
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:
            # Read once, at the first S3 operation of the process: set before it.
            os.environ["S3_ENDPOINT"] = endpoint
    import tensorflow_io  # noqa: F401  (registers the file systems with TensorFlow)

    _state["tfio"] = True


def uses_tensorflow_io() -> bool:
    """Whether this process registered tensorflow-io's file systems (see `exit_process`)."""
    return _state["tfio"]


def exit_process(status: int) -> None:
    """Ends the process with `status`; after tensorflow-io was used, through `os._exit`.

    atexit handlers and logging are run and flushed first, as a normal exit would, then
    `os._exit` skips the C++ static destructors that abort (tensorflow/io#2039).
    """
    if not uses_tensorflow_io():
        sys.exit(status)
    try:
        atexit._run_exitfuncs()
        logging.shutdown()
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
        os._exit(status)


def rename_dir(source: str, target: str) -> None:
    """Renames a directory with `tf.io.gfile`.

    An object store renames "directories" by key prefix, so `s3://b/tmp` -> `s3://b/1` would
    also move `s3://b/tmp2/...`: there both get a trailing slash, and only the keys under `tmp/`
    move (copied, not atomically).
    """
    import tensorflow as tf

    if is_remote(target):
        source, target = source.rstrip("/") + "/", target.rstrip("/") + "/"
    tf.io.gfile.rename(source, target)
