"""Finding a day's log files, checking each can be read whole, and reading their records.

`data.format` says what the files are: JSON lines (`*.jsonl`, `*.jsonl.gz`), CSV (`*.csv`,
`*.csv.gz`, see `pipeline.read_csv`) or Parquet (`*.parquet`, see `pipeline.read_parquet`);
`.gz` files are decompressed. JSON lines become `LogLine`s (decoded later, where the work is
spread over workers); CSV records and Parquet rows are decoded by their reader into `LogRow`s.
Each carries its file and position (line, or row number in a Parquet file) so that a rejected
row can be found again in its file, and every example keeps it as its origin.

A file that cannot be read whole (unreadable, not gzip, truncated or corrupt gzip data, data after
the gzip stream) is a fault of the file, not of its rows: none of its lines may reach the output,
or a day would be published with part of a file. So every file is read to its end once (gzip
decompressed, checksums verified) before any of its lines is emitted; decompressing is cheap
next to validating JSON. A file of another format must also be readable as the config says:
a CSV file's header (`pipeline.read_csv.csv_fault`), a Parquet file's schema and pages
(`pipeline.read_parquet.parquet_fault`). A faulty file yields one `(path, fault)` pair instead
of records; the job then fails the day or, if asked to, publishes it without those files
(`pipeline.preprocess`). An empty file, compressed or not, is no fault: it holds no rows.

Work is split over files: each file is checked and read by one worker, then its records are
reshuffled so that validation and encoding spread over all workers.
"""

from __future__ import annotations

import contextlib
import gzip
import itertools
import os
import pickle
import stat
import time
import zlib
from collections.abc import Iterable, Iterator
from typing import BinaryIO

import apache_beam as beam
import tensorflow as tf
from apache_beam.io.aws.clients.s3.messages import S3ClientError
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from multitower.config import DataConfig
from multitower.errors import InputMissingError, MultitowerError
from multitower.storage import is_remote
from pipeline.read_csv import csv_fault, csv_rows
from pipeline.read_parquet import parquet_fault, parquet_rows
from pipeline.validate import LogLine, LogRecord, LogRow

FORMAT_SUFFIXES = {"jsonl": (".jsonl", ".jsonl.gz"), "csv": (".csv", ".csv.gz"),
                   "parquet": (".parquet",)}
LOG_SUFFIXES = FORMAT_SUFFIXES["jsonl"]
# The outputs of ReadLogLines: LINES the records (of any format), FAULTS the faulty files, COUNTS
# each file's record count.
LINES, FAULTS, COUNTS = "lines", "faults", "counts"
_CHUNK = 1 << 20  # bytes read (and at most decompressed) at a time
# Records per element from reading to validating. One element per record made the reshuffle
# cost more than the validation it spreads (each element crosses the runner on its own).
BATCH_RECORDS = 1000
# Beam metrics that time a job from the outside: Distributions of wall-clock times (microseconds
# since the epoch, comparable across worker processes), whose min and max give the first and the
# last event. `READ_STARTED`: a file starts being read (see `pipeline.preprocess` for the others).
TIMING_NAMESPACE, READ_STARTED = "multitower.timing", "read_started_us"


def now_us() -> int:
    """The wall-clock time in microseconds since the epoch, for the timing Distributions."""
    return time.time_ns() // 1000


class BadInputFileError(MultitowerError):
    """Input files cannot be read whole; the message names each file and its fault."""


def _absolute(path: str) -> str:
    return path if "://" in path else os.path.abspath(path)


def resolve_inputs(pattern: str, date: str, log_format: str = "jsonl") -> list[str]:
    """The log files of one day, sorted.

    Args:
        pattern: `config.data.logs_for(date)`: a directory (every file in it with a suffix of
            the format, e.g. `*.jsonl` and `*.jsonl.gz`, is read) or a glob (every matching file
            is read, as the format says).
        date: The day, only to name it in errors.
        log_format: `data.format`: `jsonl`, `csv` or `parquet` (see `FORMAT_SUFFIXES`).

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
        suffixes = FORMAT_SUFFIXES[log_format]
        files = [p for suffix in suffixes for p in tf.io.gfile.glob(f"{base}/*{suffix}")
                 if not tf.io.gfile.isdir(p)]
        if not files:
            raise InputMissingError(
                f"no input logs for {date}: the directory {pattern} holds no "
                f"{' or '.join('*' + s for s in suffixes)} file (data.format is "
                f"{log_format}){hint}")
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


@contextlib.contextmanager
def _open(path: str) -> Iterator[BinaryIO]:
    """The file's bytes, decompressed if its name ends with `.gz`; both closed on exit."""
    # UNCOMPRESSED: Beam's own gzip reader splits lines in Python; GzipFile iterates them in C.
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as raw:
        if not path.endswith(".gz"):
            yield raw
            return
        with gzip.GzipFile(fileobj=raw, mode="rb") as unzipped:  # leaves `raw` open
            yield unzipped


def format_fault(path: str, data: DataConfig) -> str | None:
    """Why a file that can be read whole cannot be read as `data.format` says, or None.

    Args:
        path: A file `file_fault` passed.
        data: The data section of the config.

    Returns:
        None for JSON lines, a CSV header fault (`csv_fault`), or a Parquet fault
        (`parquet_fault`), or `unreadable: ...`.
    """
    if data.format == "jsonl":
        return None
    try:
        with _open(path) as handle:
            if data.format == "csv":
                return csv_fault(handle, data)
            return parquet_fault(handle, data)
    except OSError as err:
        return f"unreadable: {err.strerror or err}"


def input_fault(path: str, data: DataConfig | None) -> str | None:
    """Why a log file cannot be read whole as `data.format` says (`file_fault`, `format_fault`).

    Args:
        path: The file.
        data: The data section of the config; None for JSON lines.

    Returns:
        None, or the fault.
    """
    fault = file_fault(path)
    if fault is None and data is not None:
        fault = format_fault(path, data)
    return fault


def file_records(path: str, data: DataConfig | None) -> Iterator[LogRecord]:
    """The records of a file `input_fault` passed: `LogLine`s of JSON lines, else `LogRow`s.

    Args:
        path: The file.
        data: The data section of the config; None for JSON lines.

    Yields:
        The file's records, in file order.
    """
    with _open(path) as handle:
        if data is None or data.format == "jsonl":
            for number, line in enumerate(handle, start=1):
                yield LogLine(path, number, line.rstrip(b"\r\n"))
        elif data.format == "csv":
            yield from csv_rows(handle, path, data)
        else:
            yield from parquet_rows(handle, path, data)


Batch = tuple[str, bool, int, bytes]  # (source, JSON lines?, records, their fields pickled)


def batches(records: Iterable[LogRecord], size: int = BATCH_RECORDS) -> Iterator[Batch]:
    """Groups one file's records by `size` into batches that cross between workers cheaply.

    A batch is one element instead of `size`, and its records travel as one pickled blob
    (protocol 5) of plain tuples: Beam's own coder would pickle every named tuple one by one,
    and the runner, which decodes and re-encodes every element it groups, then handles one
    bytes object instead of a thousand records.

    Args:
        records: The records of one file (one kind, one source), in file order.
        size: The most records in a batch.

    Yields:
        `(source, is_line, number of records, pickled [record fields after the source, ...])`,
        see `unbatch`.
    """
    it = iter(records)
    while chunk := list(itertools.islice(it, size)):
        items = [tuple(record)[1:] for record in chunk]
        yield (chunk[0].source, isinstance(chunk[0], LogLine), len(items),
               pickle.dumps(items, protocol=5))


def unbatch(batch: Batch) -> Iterator[LogRecord]:
    """The records of a batch made by `batches`, in their order."""
    source, is_line, _, blob = batch
    kind = LogLine if is_line else LogRow
    for item in pickle.loads(blob):  # written by `batches` in this job, never read from input
        yield kind(source, *item)


class _ReadRecordsFn(beam.DoFn):
    """Path -> batches of its records (see `batches`) and `(path, records)` on COUNTS.

    Or a `(path, fault)` on FAULTS.
    """

    def __init__(self, data: DataConfig | None) -> None:
        self._data = data
        self._started = Metrics.distribution(TIMING_NAMESPACE, READ_STARTED)

    def process(self, path: str) -> Iterator[LogRecord | beam.pvalue.TaggedOutput]:
        self._started.update(now_us())
        fault = input_fault(path, self._data)
        if fault is not None:
            yield beam.pvalue.TaggedOutput(FAULTS, (path, fault))
            return
        # Errors from here on (the file changed since the check, a network failure) fail the
        # bundle, whose records are then discarded: Beam retries it or fails the job.
        count = 0
        for batch in batches(file_records(path, self._data)):
            count += batch[2]
            yield batch
        yield beam.pvalue.TaggedOutput(COUNTS, (path, count))


class ReadLogLines(beam.PTransform):
    """Reads the files named by a PCollection of paths into records, checking each file first.

    Files are decompressed by their `.gz` extension. Outputs a dict: `LINES` holds the records
    (`LogLine`s of JSON lines, `LogRow`s of CSV or Parquet) of every file that could be read
    whole, `COUNTS` a `(path, records)` pair for each of these files (counted where they were
    read, so that a count downstream can check that none went missing), `FAULTS` a `(path,
    fault)` pair for every file that could not (see `file_fault`, `format_fault`); none of a
    faulty file's records is emitted. Each file is read by one
    worker, so the records are reshuffled afterwards, in batches, to spread validation and
    encoding over all workers.

    Args:
        data: The data section of the config, whose `format` says how to read the files;
            None reads JSON lines.
    """

    def __init__(self, data: DataConfig | None = None) -> None:
        super().__init__()
        self._data = data

    def expand(self, paths: beam.PCollection[str]) -> dict[str, beam.PCollection]:
        read = paths | "CheckAndRead" >> beam.ParDo(_ReadRecordsFn(self._data)).with_outputs(
            FAULTS, COUNTS, main=LINES)
        records = read[LINES] | "Spread" >> beam.Reshuffle() | "Unbatch" >> beam.FlatMap(unbatch)
        return {LINES: records, FAULTS: read[FAULTS], COUNTS: read[COUNTS]}


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
