"""Deterministic shards: which file a row goes to, and writing each file in a fixed order.

Beam's own sinks give a row to whichever shard its bundle lands in, and write rows in arrival
order, so the same logs made different files from run to run (and the same config and seed then
trained different weights). Here a row's shard is a hash of where it came from, its log file and
position (line, or row number in a Parquet file: `shard_of`), and each shard is written by one
`DoFn` from all its rows, sorted by (file, position). Two runs over the same logs therefore
write byte-identical files, on any runner and with any number of workers:

    LogLine/LogRow ─ CheckRows ─┬ (shard, written row) ─ CoGroupByKey with every shard ─ write
                                └ (shard, rejection)   ─ GroupByKey ─ write (shards with rows)

Each writer emits a summary of its file (name, rows, size and CRC32C, statistics of its rows)
for the manifest. A shard's rows are sorted in the memory of one worker: keep a shard to a few
hundred MB of examples (raise `data.num_shards` for larger days).
"""

from __future__ import annotations

import hashlib
import json
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Any, BinaryIO

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from multitower.checksums import RunningChecksum
from multitower.config import DataConfig
from multitower.records import encode_example, frame_record
from pipeline.stats import empty_shard_stats, row_values
from pipeline.validate import LogRecord, RowChecker, reason_category, rejection

RECORDS, REJECTED = "records", "rejected"  # the outputs of CheckRows and WriteShards
RECORD_PREFIX, RECORD_SUFFIX = "part", ".tfrecord.gz"
REJECTED_PREFIX, REJECTED_SUFFIX = "rejected", ".jsonl"
_GZIP_LEVEL = 6  # fixed: the compressed bytes must not change with a library default


def shard_of(source: str, line: int, num_shards: int) -> int:
    """The shard of the row at `line` of `source`: the same in every run, process and machine.

    Python's `hash` of a string is salted per process, so a digest is used instead.

    Args:
        source: The log file's path, as the job read it.
        line: The line number in that file.
        num_shards: The number of shards.

    Returns:
        An index in `[0, num_shards)`.
    """
    digest = hashlib.sha256(f"{source}\0{line}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % num_shards


def shard_name(prefix: str, index: int, num_shards: int, suffix: str) -> str:
    """`part-00001-of-00004.tfrecord.gz`: the file name of a shard."""
    return f"{prefix}-{index:05d}-of-{num_shards:05d}{suffix}"


class _CheckRowsFn(beam.DoFn):
    """A record -> `(shard, (source, line, example, stat values, (defaulted, truncated)))`.

    Or a rejection.

    The same check as `pipeline.validate.ValidateRows` (`RowChecker`), but a written row keeps
    its origin here: the shard, the sort order and the example's origin fields all need it.
    Rejections have `ValidateRows`'s form: `{"source", "line", "reason", "raw"}`.
    """

    def __init__(self, data: DataConfig) -> None:
        self._data = data
        self._checker: RowChecker | None = None

    def setup(self) -> None:
        self._checker = RowChecker(self._data)

    def process(self, element: LogRecord) -> Iterator[Any]:
        source, number = element.source, element.line
        shard = shard_of(source, number, self._data.num_shards)
        row, reason, defaulted, truncated = self._checker.check(element)
        if reason is None:
            # Encoded here, in parallel, so that the shard's writer only sorts and writes.
            example = encode_example(row, self._data, origin=(source, number))
            yield shard, (source, number, example, row_values(row, self._data),
                          (defaulted, truncated))
            return
        yield beam.pvalue.TaggedOutput(REJECTED, (shard, rejection(element, reason)))


class _GzipWriter:
    """Writes gzip bytes to an open file, keeping the compressed size and CRC32C.

    zlib's gzip header has no time stamp and no file name, so the same input always gives the
    same bytes (Python's `gzip` module would write the current time).
    """

    def __init__(self, handle: BinaryIO) -> None:
        self._handle = handle
        self._zip = zlib.compressobj(_GZIP_LEVEL, zlib.DEFLATED, 31)  # 31: gzip framing
        self.checksum = RunningChecksum()

    def write(self, data: bytes) -> None:
        self._emit(self._zip.compress(data))

    def close(self) -> None:
        self._emit(self._zip.flush())

    def _emit(self, compressed: bytes) -> None:
        if compressed:
            self.checksum.update(compressed)
            self._handle.write(compressed)


def _create(path: str) -> BinaryIO:
    # UNCOMPRESSED: Beam would otherwise gzip a `.gz` path itself, a second time.
    return FileSystems.create(path, compression_type=CompressionTypes.UNCOMPRESSED)


def write_records(path: str, examples: Iterable[bytes]) -> tuple[int, str]:
    """Writes serialized Examples as a GZIP TFRecord file, in the order given.

    Args:
        path: Where to write (any path Beam's file systems write); replaced if it exists.
        examples: Serialized `tf.train.Example`s.

    Returns:
        The file's size in bytes and its CRC32C (8 hex digits), as stored.
    """
    with _create(path) as handle:
        writer = _GzipWriter(handle)
        for example in examples:
            writer.write(frame_record(example))
        writer.close()
    return writer.checksum.size, writer.checksum.hexdigest()


class _WriteRecordShardFn(beam.DoFn):
    """`(shard, {"rows": [...], "ids": [shard]})` -> the shard's file, and its summary."""

    def __init__(self, directory: str, data: DataConfig) -> None:
        self._directory = directory
        self._data = data

    def process(self, element: tuple[int, dict[str, Iterable[Any]]]) -> Iterator[dict]:
        shard, grouped = element
        rows = sorted(grouped["rows"], key=lambda row: (row[0], row[1]))
        name = shard_name(RECORD_PREFIX, shard, self._data.num_shards, RECORD_SUFFIX)
        stats = empty_shard_stats(self._data)
        for _, _, _, values, (defaulted, truncated) in rows:  # in the shard's fixed order
            stats.add(values, defaulted, truncated)
        size, crc = write_records(f"{self._directory}/{name}", (row[2] for row in rows))
        yield {"shard": shard, "file": name, "rows": len(rows), "bytes": size, "crc32c": crc,
               "stats": stats}


class _WriteRejectedShardFn(beam.DoFn):
    """`(shard, rejections)` -> the shard's JSON lines file, and its summary."""

    def __init__(self, directory: str, num_shards: int) -> None:
        self._directory = directory
        self._num_shards = num_shards

    def process(self, element: tuple[int, Iterable[dict]]) -> Iterator[dict]:
        shard, rejections = element
        ordered = sorted(rejections, key=lambda r: (r["source"], r["line"]))
        name = shard_name(REJECTED_PREFIX, shard, self._num_shards, REJECTED_SUFFIX)
        with _create(f"{self._directory}/{name}") as handle:
            for entry in ordered:
                handle.write((json.dumps(entry) + "\n").encode())
        reasons = Counter(reason_category(r["reason"]) for r in ordered)
        yield {"shard": shard, "file": name, "rows": len(ordered), "reasons": dict(reasons)}


class WriteShards(beam.PTransform):
    """Validates records (`LogLine`s, `LogRow`s) and writes the day's files, deterministically.

    Every one of the `data.num_shards` TFRecord files is written, empty or not; a rejected file
    is written only for a shard with rejections (an empty file on S3 fails in Beam's writer,
    apache/beam#21369). Every example carries its origin (see `multitower.records`).

    Outputs a dict: `RECORDS` holds one summary per TFRecord file (`shard`, `file`, `rows`,
    `bytes`, `crc32c`, `stats`: a `ShardStats`), `REJECTED` one per rejected file (`shard`,
    `file`, `rows`, `reasons`: rejections per reason category).

    Args:
        data: The data section of the config.
        records_dir: Where the TFRecord files go.
        rejected_dir: Where the rejected rows go.
    """

    def __init__(self, data: DataConfig, records_dir: str, rejected_dir: str) -> None:
        super().__init__()
        self._data, self._records_dir, self._rejected_dir = data, records_dir, rejected_dir

    def expand(self, lines: beam.PCollection[LogRecord]) -> dict[str, beam.PCollection]:
        n = self._data.num_shards
        checked = lines | "CheckRows" >> beam.ParDo(_CheckRowsFn(self._data)).with_outputs(
            REJECTED, main=RECORDS)
        ids = lines.pipeline | "ShardIds" >> beam.Create([(i, None) for i in range(n)])
        records = (
            {"rows": checked[RECORDS], "ids": ids}
            | "GroupRecords" >> beam.CoGroupByKey()  # every shard, even one without rows
            | "WriteRecords" >> beam.ParDo(_WriteRecordShardFn(self._records_dir, self._data))
        )
        rejected = (
            checked[REJECTED]
            | "GroupRejected" >> beam.GroupByKey()
            | "WriteRejected" >> beam.ParDo(_WriteRejectedShardFn(self._rejected_dir, n))
        )
        return {RECORDS: records, REJECTED: rejected}

