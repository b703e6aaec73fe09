"""The input function: per-worker shards, parse after batching, labels shaped for Keras."""

from pathlib import Path

import numpy as np
import tensorflow as tf
import yaml

from multitower.config import parse_config
from multitower.records import encode_example
from tests.small_project import EXAMPLE
from trainer.data import make_dataset


def _row(i: int) -> dict:
    return {
        "user_id": f"u{i}", "user_segment": "s1", "user_country": "DE", "item_id": f"i{i}",
        "item_category": "c2", "device": "ios", "hour": i % 24, "position": i,
        "item_price": i / 2, "user_activity": 1.0, "click": i % 2, "conversion": 0,
        "watch_time": float(i), "recent_items": [f"i{k}" for k in range(i % 3)],
    }


def _write(folder: Path, files: int, rows_per_file: int, data) -> list[str]:
    paths = []
    for f in range(files):
        path = str(folder / f"part-{f}.tfrecord.gz")
        with tf.io.TFRecordWriter(path, options="GZIP") as w:
            for i in range(f * rows_per_file, (f + 1) * rows_per_file):
                w.write(encode_example(_row(i), data))
        paths.append(path)
    return paths


def _positions(ds) -> list[int]:
    return [int(p) for features, _ in ds for p in features["position"].numpy()]


def test_batches_hold_raw_features_and_column_labels(tmp_path):
    data = parse_config(yaml.safe_load(EXAMPLE.read_text())).data
    files = _write(tmp_path, 1, 10, data)
    features, labels = next(iter(make_dataset(files, data, 4, repeat=False)))
    assert features["user_id"].dtype == tf.string and features["hour"].dtype == tf.int64
    assert features["item_price"].dtype == tf.float32
    assert features["recent_items"].numpy().tolist() == [  # padded to max_length 10
        [b""] * 10, [b"i0"] + [b""] * 9, [b"i0", b"i1"] + [b""] * 8, [b""] * 10]
    assert labels["click"].shape == (4, 1)
    np.testing.assert_array_equal(features["position"].numpy(), [0, 1, 2, 3])
    np.testing.assert_allclose(labels["watch_time"].numpy()[:, 0], [0.0, 1.0, 2.0, 3.0])


def _context(pipelines: int, index: int) -> tf.distribute.InputContext:
    return tf.distribute.InputContext(pipelines, index, num_replicas_in_sync=pipelines)


def test_workers_read_disjoint_files_that_cover_the_day(tmp_path):
    data = parse_config(yaml.safe_load(EXAMPLE.read_text())).data
    files = _write(tmp_path, 4, 6, data)
    seen = [
        _positions(make_dataset(files, data, 4, _context(2, i), repeat=False)) for i in range(2)
    ]
    assert not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == list(range(24))  # global batch 4 -> 2 per replica


def test_fewer_files_than_workers_shards_records(tmp_path):
    data = parse_config(yaml.safe_load(EXAMPLE.read_text())).data
    files = _write(tmp_path, 1, 12, data)
    seen = [
        _positions(make_dataset(files, data, 3, _context(3, i), repeat=False)) for i in range(3)
    ]
    assert sorted(sum(seen, [])) == list(range(12))
    assert all(len(s) == 4 for s in seen)


def _batches(ds, n: int | None = None) -> list[list[int]]:
    return [[int(p) for p in features["position"].numpy()]
            for features, _ in (ds.take(n) if n else ds)]


def test_a_shuffled_pass_holds_every_row_once_in_an_order_the_seed_decides(tmp_path):
    data = parse_config(yaml.safe_load(EXAMPLE.read_text())).data
    files = _write(tmp_path, 3, 10, data)

    def order(seed: int) -> list[list[int]]:
        return _batches(make_dataset(files, data, 4, shuffle_buffer=8, seed=seed, repeat=False,
                                     drop_remainder=False))

    first = order(7)
    assert sorted(sum(first, [])) == list(range(30))
    assert [len(b) for b in first] == [4] * 7 + [2]
    assert order(7) == first  # a rerun (or a relaunch) sees the same order
    assert order(8) != first
    # Blocks of 8 rows (two batches) are permuted within themselves: the rows of a block of
    # the unshuffled stream stay in that block.
    unshuffled = _batches(make_dataset(files, data, 4, repeat=False, drop_remainder=False))
    for k in range(0, 8, 2):
        assert sorted(sum(first[k:k + 2], [])) == sorted(sum(unshuffled[k:k + 2], []))
    assert first[:2] != unshuffled[:2]


def test_a_repeated_stream_shuffles_each_pass_differently(tmp_path):
    data = parse_config(yaml.safe_load(EXAMPLE.read_text())).data
    files = _write(tmp_path, 1, 8, data)
    stream = sum(_batches(make_dataset(files, data, 4, shuffle_buffer=8, seed=1), 4), [])
    passes = [stream[:8], stream[8:16]]
    assert sorted(passes[0]) == sorted(passes[1]) == list(range(8))
    assert passes[0] != passes[1]


def test_skipped_batches_resume_the_stream_exactly(tmp_path):
    data = parse_config(yaml.safe_load(EXAMPLE.read_text())).data
    files = _write(tmp_path, 2, 9, data)
    full = _batches(make_dataset(files, data, 2, shuffle_buffer=5, seed=3), 16)  # blocks of 6
    for skip in (1, 3, 4, 7):
        resumed = make_dataset(files, data, 2, shuffle_buffer=5, seed=3, skip_batches=skip)
        assert _batches(resumed, 16 - skip) == full[skip:], skip


def test_workers_shuffle_their_own_disjoint_shards(tmp_path):
    data = parse_config(yaml.safe_load(EXAMPLE.read_text())).data
    files = _write(tmp_path, 4, 6, data)
    seen = [
        _positions(make_dataset(files, data, 4, _context(2, i), shuffle_buffer=6, seed=5,
                                repeat=False, drop_remainder=False))
        for i in range(2)
    ]
    assert not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == list(range(24))
