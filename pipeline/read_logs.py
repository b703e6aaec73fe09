"""Finding a day's log files, checking each can be read whole, and reading them line by line.

Line numbers travel with each line so that a rejected row can be found again in its file.

A file that cannot be read whole (unreadable, not gzip, truncated or corrupt gzip data, data after
the gzip stream) is a fault of the file, not of its rows: none of its lines may reach the output,
or a day would be published with part of a file. So every file is read to its end once (gzip
decompressed, checksums verified) before any of its lines is emitted; decompressing is cheap
next to validating JSON. A faulty file yields one `(path, fault)` pair instead of lines; the
job then fails the day or, if asked to, publishes it without those files (`pipeline.preprocess`).
An empty file, compressed or not, is no fault: it holds no rows.
"""

from __future__ import annotations

import gzip
import os
import stat
import zlib
from collections.abc import Iterator
from typing import BinaryIO

import apache_beam as beam
import tensorflow as tf
from apache_beam.io.aws.clients.s3.messages import S3ClientError
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from multitower.errors import InputMissingError, MultitowerError
from multitower.storage import is_remote
from pipeline.validate import LogLine

LOG_SUFFIXES = (".jsonl", ".jsonl.gz")
LINES, FAULTS = "lines", "faults"  # the outputs of ReadLogLines
_CHUNK = 1 << 20  # bytes read (and at most decompressed) at a time


class BadInputFileError(MultitowerError):
    """Input files cannot be read whole; the message names each file and its fault."""


def _absolute(path: str) -> str:
    return path if "://" in path else os.path.abspath(path)


def resolve_inputs(pattern: str, date: str) -> list[str]:
    """The log files of one day, sorted.

    Args:
        pattern: `config.data.logs_for(date)`: a directory (every `*.jsonl` and `*.jsonl.gz` file
            in it is read) or a glob (every matching file is read).
        date: The day, only to name it in errors.

    Returns:
        Absolute paths (or URLs), sorted.

    Raises:
        InputMissingError: Nothing to read.
    """
    # An unreachable or unauthorized object store looks like an empty one to tf.io.gfile.
    hint = (" (on an object store also check the endpoint and credentials: AWS_ENDPOINT_URL_S3,"
            " AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY)" if is_remote(pattern) else "")
    if tf.io.gfile.isdir(pattern):
        base = pattern.rstrip("/")
        files = [p for suffix in LOG_SUFFIXES for p in tf.io.gfile.glob(f"{base}/*{suffix}")
                 if not tf.io.gfile.isdir(p)]
        if not files:
            raise InputMissingError(
                f"no input logs for {date}: the directory {pattern} holds no "
                f"{' or '.join('*' + s for s in LOG_SUFFIXES)} file{hint}")
    else:
        files = [p for p in tf.io.gfile.glob(pattern) if not tf.io.gfile.isdir(p)]
        if not files:
            raise InputMissingError(
                f"no input logs for {date}: nothing matches {pattern} (check data.logs in the "
                f"config and that the day was exported){hint}")
    return sorted(_absolute(p) for p in files)


def _zlib_fault(err: zlib.error, member: int, start: int, head: bytes) -> str:
    """Words for what zlib refused in the gzip member `member` (from 0), at byte `start`."""
    message = str(err).split(": ", 1)[-1]  # "Error -3 while decompressing data: <message>"
    if message in ("incorrect header check", "unknown compression method"):
        if member == 0:
            return f"not a gzip file (it starts with {head!r})"
        return f"data after the end of the gzip stream, at byte {start}"
    if message == "incorrect data check":
        return (f"gzip CRC mismatch in the member at byte {start}: the data were changed or "
                f"damaged")
    if message == "incorrect length check":
        return f"gzip length mismatch in the member at byte {start}: the data were cut or damaged"
    return f"corrupt gzip data in the member at byte {start} ({message})"


def gzip_fault(stream: BinaryIO) -> str | None:
    """Reads a gzip stream to its end and says why it cannot be decompressed whole, if it can't.

    Accepts what Python's `gzip` module reads: several members one after the other, zero bytes
    between or after them, and no bytes at all (an empty file holds no rows).

    Args:
        stream: The compressed bytes, read from the start.

    Returns:
        None, or the fault: `not a gzip file`, `truncated gzip stream`, `gzip CRC mismatch`,
        `gzip length mismatch`, `corrupt gzip data`, or `data after the end of the gzip stream`,
        with the byte offset of the member concerned.
    """
    position = 0  # bytes of the file consumed by finished members and padding
    member, start, head = 0, 0, b""
    decompressor = None
    data = b""
    while True:
        if not data:
            data = stream.read(_CHUNK)
            if not data:
                break
            head = head or data[:8]
        if decompressor is None:  # between members: Python's gzip skips zero padding here
            stripped = data.lstrip(b"\0") if member else data
            position += len(data) - len(stripped)
            data = stripped
            if not data:
                continue
            decompressor, start = zlib.decompressobj(wbits=31), position  # 31: gzip framing
        try:
            # Bounded output: a small, highly compressed file must not fill the memory.
            decompressor.decompress(data, _CHUNK)
            while decompressor.unconsumed_tail:
                decompressor.decompress(decompressor.unconsumed_tail, _CHUNK)
        except zlib.error as err:
            return _zlib_fault(err, member, start, head)
        position += len(data) - len(decompressor.unused_data)
        if decompressor.eof:
            data, decompressor, member = decompressor.unused_data, None, member + 1
        else:
            data = b""
    if decompressor is not None:
        return (f"truncated gzip stream: the file ends at byte {position}, inside the member "
                f"that starts at byte {start}")
    return None


def file_fault(path: str) -> str | None:
    """Reads a log file to its end and says why it cannot be read whole, if it can't.

    Args:
        path: A local path or a URL Beam's file systems read (`s3://`, `gs://`).

    Returns:
        None if every byte can be read (and, for `*.gz`, decompressed and checked), or the
        fault: `unreadable: <reason>`, `not a regular file (...)`, or a gzip fault (see
        `gzip_fault`).
    """
    try:
        if "://" not in path:
            mode = os.stat(path).st_mode  # follows symlinks: a dangling one fails here
            if not stat.S_ISREG(mode):
                # A FIFO or device would block or never end; a directory cannot be read.
                return "not a regular file (a directory, FIFO, socket or device)"
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as raw:
            if path.endswith(".gz"):
                return gzip_fault(raw)
            while raw.read(_CHUNK):
                pass
    except OSError as err:  # also Beam's BeamIOError, and a missing S3 object
        return f"unreadable: {err.strerror or err}"
    except S3ClientError as err:  # S3 refused otherwise, e.g. access denied (403)
        return f"unreadable: S3 error {err.code}: {err.message}"
    return None


class _ReadLinesFn(beam.DoFn):
    """Path -> `LogLine`s, or a `(path, fault)` on the FAULTS output."""

    def process(self, path: str) -> Iterator[LogLine | beam.pvalue.TaggedOutput]:
        fault = file_fault(path)
        if fault is not None:
            yield beam.pvalue.TaggedOutput(FAULTS, (path, fault))
            return
        # Errors from here on (the file changed since the check, a network failure) fail the
        # bundle, whose lines are then discarded: Beam retries it or fails the job.
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as raw:
            # Beam's own gzip reader splits lines in Python; GzipFile iterates lines in C.
            handle = gzip.GzipFile(fileobj=raw, mode="rb") if path.endswith(".gz") else raw
            for number, line in enumerate(handle, start=1):
                yield LogLine(path, number, line.rstrip(b"\r\n"))


class ReadLogLines(beam.PTransform):
    """Reads the files named by a PCollection of paths into `LogLine`s, checking each first.

    Files are decompressed by their `.gz` extension. Outputs a dict: `LINES` holds the
    `LogLine`s of every file that could be read whole, `FAULTS` a `(path, fault)` pair for
    every file that could not (see `file_fault`); none of a faulty file's lines is emitted.
    Each file is read by one worker, so the lines are reshuffled afterwards to spread
    validation and encoding over all workers.
    """

    def expand(self, paths: beam.PCollection[str]) -> dict[str, beam.PCollection]:
        read = paths | "CheckAndRead" >> beam.ParDo(_ReadLinesFn()).with_outputs(
            FAULTS, main=LINES)
        return {LINES: read[LINES] | "Spread" >> beam.Reshuffle(), FAULTS: read[FAULTS]}


def bad_files_message(date: str, faults: list[tuple[str, str]]) -> str:
    """The one-line refusal for a day with input files that cannot be read whole.

    Args:
        date: The day.
        faults: `(path, fault)` of each such file.

    Returns:
        A message naming every file and its fault, that nothing was published, and the way out.
    """
    listed = "; ".join(f"{path}: {fault}" for path, fault in sorted(faults))
    what = "an input file" if len(faults) == 1 else f"{len(faults)} input files"
    return (f"preprocess {date}: {what} cannot be read whole: {listed}; nothing was published "
            f"(replace the file{'s' if len(faults) > 1 else ''}, or pass --skip-bad-files to "
            f"publish the day without {'it' if len(faults) == 1 else 'them'})")
