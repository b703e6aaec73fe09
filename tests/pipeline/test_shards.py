"""Tests of the deterministic shard pieces, without a pipeline: shard keys, file bytes, origin."""

import gzip
import os
from collections import Counter

import numpy as np
import pytest
import tensorflow as tf

from multitower.checksums import RunningChecksum, file_checksum
from multitower.origin import ORIGIN_FILE, ORIGIN_LINE
from multitower.records import (
    encode_example,
    frame_record,
    origin_spec,
    parse_examples,
    parse_spec,
)
from pipeline.shards import shard_name, shard_of, write_records

SOURCE = "/logs/dt=2026-01-01/a.jsonl.gz"


def test_shard_of_is_pinned():
    # Fixed values: Python's salted hash() would give others in each process, and any change
    # here moves rows of every rerun to other files.
    assert [shard_of(SOURCE, line, 4) for line in range(1, 11)] == [0, 0, 0, 1, 0, 3, 0, 3, 3, 3]
    assert shard_of(SOURCE, 7, 1000) == 4


def test_shard_of_spreads_rows_evenly():
    counts = Counter(shard_of(f"/logs/part-{f}.jsonl.gz", line, 8)
                     for f in range(3) for line in range(1, 8001))
    assert sorted(counts) == list(range(8))
    assert max(counts.values()) < 1.1 * 3000 and min(counts.values()) > 0.9 * 3000


def test_shard_name():
    assert shard_name("part", 3, 12, ".tfrecord.gz") == "part-00003-of-00012.tfrecord.gz"


def test_frame_record_is_what_tensorflow_reads(tmp_path):
    path = tmp_path / "plain.tfrecord"
    path.write_bytes(b"".join(frame_record(r) for r in (b"a", b"", b"x" * 70000)))
    assert list(tf.data.TFRecordDataset(str(path)).as_numpy_iterator()) == [
        b"a", b"", b"x" * 70000]
    damaged = bytearray(path.read_bytes())
    damaged[14] ^= 1  # inside the first record's data: its checksum no longer matches
    path.write_bytes(bytes(damaged))
    with pytest.raises(tf.errors.DataLossError):
        list(tf.data.TFRecordDataset(str(path)).as_numpy_iterator())


def test_write_records_twice_gives_the_same_bytes_and_their_checksum(tmp_path):
    records = [f"record {i}".encode() * (i % 7 + 1) for i in range(500)]
    a, b = str(tmp_path / "a.tfrecord.gz"), str(tmp_path / "b.tfrecord.gz")
    size, crc = write_records(a, records)
    assert write_records(b, iter(records)) == (size, crc)
    assert (tmp_path / "a.tfrecord.gz").read_bytes() == (tmp_path / "b.tfrecord.gz").read_bytes()
    assert file_checksum(a) == (size, crc) == (os.path.getsize(a), crc)
    header = (tmp_path / "a.tfrecord.gz").read_bytes()[:10]
    assert header[4:8] == b"\0\0\0\0"  # no time stamp in the gzip header
    assert gzip.decompress((tmp_path / "a.tfrecord.gz").read_bytes()).startswith(
        frame_record(records[0]))
    assert list(tf.data.TFRecordDataset(a, compression_type="GZIP").as_numpy_iterator()) == records


def test_empty_shard_is_a_valid_empty_file(tmp_path):
    path = str(tmp_path / "e.tfrecord.gz")
    size, _ = write_records(path, [])
    assert size == 20  # gzip header and trailer: readable, unlike a zero-byte file on S3
    assert list(tf.data.TFRecordDataset(path, compression_type="GZIP")) == []


def test_running_checksum_matches_known_values():
    checksum = RunningChecksum()
    assert checksum.hexdigest() == "00000000"
    for piece in (b"123", b"456789"):
        checksum.update(piece)
    assert (checksum.size, checksum.hexdigest()) == (9, "e3069283")  # CRC-32C check value


def _row(data) -> dict:
    row = {f.name: ("v" if f.dtype == "string" else 3 if f.dtype == "int64" else 2.5)
           for f in data.features}
    return row | {t.label_column: 1.0 for t in data.tasks}


def test_examples_carry_their_origin_and_training_ignores_it(data_config):
    example = encode_example(_row(data_config), data_config, origin=(SOURCE, 42))
    origin = tf.io.parse_example([example], origin_spec())
    assert origin[ORIGIN_FILE].numpy().tolist() == [SOURCE.encode()]
    assert origin[ORIGIN_LINE].numpy().tolist() == [42]
    assert not set(origin_spec()) & set(parse_spec(data_config))
    plain = encode_example(_row(data_config), data_config)
    assert tf.train.Example.FromString(plain).features.feature.keys() == set(
        parse_spec(data_config))
    both = parse_examples(tf.constant([example, plain]), data_config)
    assert both.keys() == parse_spec(data_config).keys()
    for spec_name, values in both.items():
        assert values.shape[0] == 2, spec_name
        assert np.array_equal(values.numpy()[0], values.numpy()[1])  # the same training input
    missing = tf.io.parse_example([plain], origin_spec())
    assert missing[ORIGIN_FILE].numpy().tolist() == [b""]

