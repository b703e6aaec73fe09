"""Where a lease file lives, and the atomic operations a lease needs from it.

A store creates a file only if it does not exist, and replaces or deletes it only if it still
holds what the caller read (compare-and-swap on a tag: a hash of the content, or S3's ETag):

- local and shared file systems (`LocalStore`): an exclusive create (a hard link, which
  fails if the name exists), and every read-compare-write under an advisory lock
  (`fcntl.flock`) on the lease file itself;
- S3 (`S3Store`): conditional writes, `If-None-Match: *` to create and `If-Match: <etag>` to
  replace, which S3 and S3-compatible servers that implement them honour;
- anything else `tf.io.gfile` reads (`GfileStore`): check, then write; not atomic.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import uuid
from collections.abc import Iterator
from typing import Protocol

from multitower.storage import scheme


class LeaseStore(Protocol):
    """The operations a lease needs; a tag identifies one written version of the file."""

    def create(self, path: str, text: str) -> str | None:
        """Writes `text` if `path` does not exist; its tag, or None if it existed."""

    def read(self, path: str) -> tuple[str, str] | None:
        """`(text, tag)`, or None if `path` does not exist."""

    def replace(self, path: str, text: str, tag: str) -> str | None:
        """Writes `text` if `path` still has `tag`; the new tag, or None otherwise."""

    def delete(self, path: str, tag: str) -> None:
        """Deletes `path` if it still has `tag`."""


def _tag(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:24]


class LocalStore:
    """A local or shared (NFS, ...) file system.

    A lease appears whole: written to a temporary file, then hard-linked to its name, which
    fails if the name exists (an exclusive create). Replacing and deleting happen under an
    exclusive `flock` on the lease file itself, reading under a shared one; after locking, a
    caller checks that the name still points at the file it locked (a deleted lease's waiters
    try again).
    """

    @contextlib.contextmanager
    def _locked(self, path: str, exclusive: bool) -> Iterator[object | None]:
        for _ in range(10):
            try:
                handle = open(path, "r+" if exclusive else "r")  # noqa: SIM115
            except FileNotFoundError:
                yield None
                return
            with handle:
                fcntl.flock(handle, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
                try:
                    same = os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino
                except FileNotFoundError:
                    same = False
                if same:
                    yield handle
                    return
        yield None  # replaced over and over while we waited: treat as gone

    def create(self, path: str, text: str) -> str | None:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return None
        finally:
            os.remove(tmp)
        return _tag(text)

    def read(self, path: str) -> tuple[str, str] | None:
        with self._locked(path, exclusive=False) as handle:
            if handle is None:
                return None
            text = handle.read()
        return text, _tag(text)

    def replace(self, path: str, text: str, tag: str) -> str | None:
        with self._locked(path, exclusive=True) as handle:
            if handle is None or _tag(handle.read()) != tag:
                return None
            handle.seek(0)
            handle.truncate()
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        return _tag(text)

    def delete(self, path: str, tag: str) -> None:
        with self._locked(path, exclusive=True) as handle:
            if handle is not None and _tag(handle.read()) == tag:
                os.remove(path)


class S3Store:
    """S3 through boto3, with conditional writes (endpoint and credentials from AWS_*)."""

    def __init__(self) -> None:
        import boto3  # the `[aws]` extra of apache-beam; only needed for s3:// paths

        self._client = boto3.client("s3")

    @staticmethod
    def _split(path: str) -> tuple[str, str]:
        bucket, _, key = path.split("://", 1)[1].partition("/")
        return bucket, key

    @staticmethod
    def _refused(err: Exception) -> bool:
        code = getattr(err, "response", {}).get("Error", {}).get("Code", "")
        return code in ("PreconditionFailed", "ConditionalRequestConflict", "NoSuchKey", "412",
                        "409", "404")

    def create(self, path: str, text: str) -> str | None:
        bucket, key = self._split(path)
        try:
            done = self._client.put_object(Bucket=bucket, Key=key, Body=text.encode(),
                                           IfNoneMatch="*")
        except self._client.exceptions.ClientError as err:
            if self._refused(err):
                return None
            raise
        return done["ETag"]

    def read(self, path: str) -> tuple[str, str] | None:
        bucket, key = self._split(path)
        try:
            found = self._client.get_object(Bucket=bucket, Key=key)
        except self._client.exceptions.ClientError as err:
            if self._refused(err):
                return None
            raise
        return found["Body"].read().decode(), found["ETag"]

    def replace(self, path: str, text: str, tag: str) -> str | None:
        bucket, key = self._split(path)
        try:
            done = self._client.put_object(Bucket=bucket, Key=key, Body=text.encode(),
                                           IfMatch=tag)
        except self._client.exceptions.ClientError as err:
            if self._refused(err):
                return None
            raise
        return done["ETag"]

    def delete(self, path: str, tag: str) -> None:
        found = self.read(path)
        if found is not None and found[1] == tag:  # S3 has no conditional delete here
            bucket, key = self._split(path)
            self._client.delete_object(Bucket=bucket, Key=key)


class GfileStore:
    """Any `tf.io.gfile` file system; check-then-write, so not atomic (see the module doc)."""

    def create(self, path: str, text: str) -> str | None:
        import tensorflow as tf

        if tf.io.gfile.exists(path):
            return None
        with tf.io.gfile.GFile(path, "w") as f:
            f.write(text)
        return _tag(text)

    def read(self, path: str) -> tuple[str, str] | None:
        import tensorflow as tf

        if not tf.io.gfile.exists(path):
            return None
        with tf.io.gfile.GFile(path) as f:
            text = f.read()
        return text, _tag(text)

    def replace(self, path: str, text: str, tag: str) -> str | None:
        import tensorflow as tf

        found = self.read(path)
        if found is None or found[1] != tag:
            return None
        with tf.io.gfile.GFile(path, "w") as f:
            f.write(text)
        return _tag(text)

    def delete(self, path: str, tag: str) -> None:
        import tensorflow as tf

        found = self.read(path)
        if found is not None and found[1] == tag:
            tf.io.gfile.remove(path)


def store_for(path: str) -> LeaseStore:
    """The store for `path`'s scheme: local, S3, or `tf.io.gfile` for the rest."""
    kind = scheme(path)
    if kind in ("", "file"):
        return LocalStore()
    if kind == "s3":
        return S3Store()
    return GfileStore()
