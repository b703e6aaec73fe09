"""Deterministic shards: which file a row goes to, and writing each file in a fixed order.

Beam's own sinks give a row to whichever shard its bundle lands in, and write rows in arrival
order, so the same logs made different files from run to run (and the same config and seed then
trained different weights). Here a row's shard is a hash of where it came from, its log file and
position (line, or row number in a Parquet file: `shard_of`), and each shard is written by one
`DoFn` from all its rows, sorted by (file, position). Two runs over the same logs therefore
write byte-identical files, on any runner and with any number of workers:

    LogLine/LogRow ─ KeyByShard ─ (shard, pickled records) ┬ GroupByKey ─ check, encode, write
    every shard id ─────────────────────────────────────────┘

The records cross to their shard's worker raw, in pickled blocks (a block is one element for
Beam, and one bytes object for the runner, which decodes and re-encodes every element it
groups), and the shard's writer checks and encodes them: encoded examples, larger and one
element each, would cross instead. Validation is spread over the shards (keep `data.num_shards`
at least the number of workers). Each writer emits a summary of its TFRecord file (name, rows,
size and CRC32C, statistics of its rows) and, if the shard has rejections, of its rejected
file, for the manifest. A shard's records are sorted in the memory of one worker: keep a shard
to a few hundred MB of logs (raise `data.num_shards` for larger days).
"""

from __future__ import annotations

import hashlib
import json
import pickle
import zlib
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from operator import attrgetter
from typing import Any, BinaryIO

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.windowed_value import WindowedValue

from multitower.checksums import RunningChecksum
from multitower.config import DataConfig
from multitower.records import encode_example, frame_record
from pipeline.stats import empty_shard_stats, row_values
from pipeline.validate import LogRecord, RowChecker, reason_category, rejection

RECORDS, REJECTED = "records", "rejected"  # the outputs of CheckRows and WriteShards
RECORD_PREFIX, RECORD_SUFFIX = "part", ".tfrecord.gz"
REJECTED_PREFIX, REJECTED_SUFFIX = "rejected", ".jsonl"
_GZIP_LEVEL = 6  # fixed: the compressed bytes must not change with a library default
_BLOCK = 2000  # records per pickled block on their way to their shard


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


class _KeyByShardFn(beam.DoFn):
    """Records -> `(shard, pickled list of that shard's records)`, in blocks of `_BLOCK`."""

    def __init__(self, num_shards: int) -> None:
        self._num_shards = num_shards
        self._blocks: dict[int, list[LogRecord]] = {}

    def start_bundle(self) -> None:
        self._blocks = defaultdict(list)

    def process(self, element: LogRecord) -> Iterator[tuple[int, bytes]]:
        shard = shard_of(element.source, element.line, self._num_shards)
        block = self._blocks[shard]
        block.append(element)
        if len(block) >= _BLOCK:
            yield shard, pickle.dumps(block, protocol=5)
            self._blocks[shard] = []

    def finish_bundle(self) -> Iterator[WindowedValue]:
        for shard, block in sorted(self._blocks.items()):
            if block:
                yield WindowedValue((shard, pickle.dumps(block, protocol=5)),
                                    GlobalWindow().max_timestamp(), [GlobalWindow()])
        self._blocks = {}


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


class _WriteShardFn(beam.DoFn):
    """`(shard, blocks)` -> the shard's TFRecord file and rejected file, and their summaries.

    The same check as `pipeline.validate.ValidateRows` (`RowChecker`), in (file, position)
    order; a written row keeps its origin (the example's origin fields), a rejection has
    `ValidateRows`'s form: `{"source", "line", "reason", "raw"}`.
    """

    def __init__(self, data: DataConfig, records_dir: str, rejected_dir: str) -> None:
        self._data, self._records_dir, self._rejected_dir = data, records_dir, rejected_dir
        self._checker: RowChecker | None = None

    def setup(self) -> None:
        self._checker = RowChecker(self._data)

    def process(self, element: tuple[int, Iterable[bytes | None]]) -> Iterator[Any]:
        shard, blocks = element
        data, n = self._data, self._data.num_shards
        records = sorted((record for block in blocks if block is not None
                          for record in pickle.loads(block)),  # blocks of this job
                         key=attrgetter("source", "line"))
        stats = empty_shard_stats(data)
        examples, rejected = [], []
        for record in records:
            row, reason, defaulted, truncated = self._checker.check(record)
            if reason is None:
                examples.append(encode_example(row, data, origin=(record.source, record.line)))
                stats.add(row_values(row, data), defaulted, truncated)
            else:
                rejected.append(rejection(record, reason))
        name = shard_name(RECORD_PREFIX, shard, n, RECORD_SUFFIX)
        size, crc = write_records(f"{self._records_dir}/{name}", examples)
        yield {"shard": shard, "file": name, "rows": len(examples), "bytes": size, "crc32c": crc,
               "stats": stats}
        if rejected:
            name = shard_name(REJECTED_PREFIX, shard, n, REJECTED_SUFFIX)
            with _create(f"{self._rejected_dir}/{name}") as handle:
                for entry in rejected:
                    handle.write((json.dumps(entry) + "\n").encode())
            reasons = Counter(reason_category(r["reason"]) for r in rejected)
            yield beam.pvalue.TaggedOutput(REJECTED, {
                "shard": shard, "file": name, "rows": len(rejected), "reasons": dict(reasons)})


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
        blocks = lines | "KeyByShard" >> beam.ParDo(_KeyByShardFn(n))
        ids = lines.pipeline | "ShardIds" >> beam.Create([(i, None) for i in range(n)])
        written = (
            (blocks, ids)
            | "WithEveryShard" >> beam.Flatten()  # every shard is written, even one without rows
            | "GroupByShard" >> beam.GroupByKey()
            | "WriteShards" >> beam.ParDo(_WriteShardFn(
                self._data, self._records_dir, self._rejected_dir)).with_outputs(
                    REJECTED, main=RECORDS)
        )
        return {RECORDS: written[RECORDS], REJECTED: written[REJECTED]}

