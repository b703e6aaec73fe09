"""Size and CRC32C of files, so that a corrupt or truncated file is named before it is read.

The Beam job computes both while it writes each TFRecord file and records them in the day's
manifest (`multitower.manifest`); `verify_partition` recomputes them from the stored bytes. CRC32C
is the checksum object stores report themselves (GCS's `crc32c`, S3's `x-amz-checksum-crc32c`),
so a stored value can also be compared with theirs. Values are 8 lower-case hex digits.
"""

from __future__ import annotations

import google_crc32c
import tensorflow as tf

_CHUNK = 1 << 20  # bytes read at a time: files are checked without holding them in memory


class RunningChecksum:
    """The size and CRC32C of a byte stream, fed piece by piece.

    Example:
        >>> checksum = RunningChecksum()
        >>> checksum.update(b"abc")
        >>> checksum.size, checksum.hexdigest()
        (3, '364b3fb7')
    """

    def __init__(self) -> None:
        self._crc = google_crc32c.Checksum()
        self.size = 0

    def update(self, data: bytes) -> None:
        """Adds `data` to the stream."""
        self._crc.update(data)
        self.size += len(data)

    def hexdigest(self) -> str:
        """The CRC32C of the bytes so far, as 8 hex digits."""
        return self._crc.digest().hex()


def file_checksum(path: str) -> tuple[int, str]:
    """Reads a file (any `tf.io.gfile` path) to its end and returns its size and CRC32C.

    Args:
        path: A local path or a URL (`gs://`, `s3://` with tensorflow-io registered).

    Returns:
        `(size in bytes, CRC32C as 8 hex digits)`.

    Raises:
        tf.errors.OpError: The file cannot be read (`NotFoundError` when it does not exist).
    """
    checksum = RunningChecksum()
    with tf.io.gfile.GFile(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            checksum.update(chunk)
    return checksum.size, checksum.hexdigest()
