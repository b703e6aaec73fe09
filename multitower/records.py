"""The TFRecord contract between the Beam job and the trainer.

One `tf.train.Example` per accepted log row, holding the RAW values (no hashing, no scaling):

| column                          | Example field | parsed dtype |
| ------------------------------- | ------------- | ------------ |
| categorical, dtype string       | bytes_list    | tf.string    |
| categorical or numeric, int64   | int64_list    | tf.int64     |
| numeric, dtype float32          | float_list    | tf.float32   |
| label of any task               | float_list    | tf.float32   |
| `_origin_file` (origin)         | bytes_list    | tf.string    |
| `_origin_line` (origin)         | int64_list    | tf.int64     |

Every column holds exactly one value, except the label of an `optional` task, which may be
absent (it then parses as NaN and is masked out of that task's loss), and a list-valued
(`multivalent`) feature, which holds its 0 to `max_length` elements in the same field kinds (a
variable-length feature); `parse_examples` pads it to a `(batch, max_length)` tensor with the
feature's pad value, the shape the serving signature takes it in. Features are keyed by
their log name, labels by their label column. The serving signature takes the same names and
dtypes. The two origin fields (`multitower.origin`) name the log file and line the example came
from; `parse_spec` leaves them out, so training never reads them, and `origin_spec` reads them
to trace a row or a score back to its log line.

Files are GZIP-compressed TFRecord files: each record is framed as
`uint64 length | uint32 masked crc32c(length) | data | uint32 masked crc32c(data)`, little-endian
(`frame_record`), which is what `tf.data.TFRecordDataset` reads.
"""

from __future__ import annotations

import struct
from typing import Any

import google_crc32c
import tensorflow as tf

from multitower.config import DataConfig, Feature
from multitower.origin import ORIGIN_FILE, ORIGIN_LINE

_DTYPES = {"string": tf.string, "int64": tf.int64, "float32": tf.float32}


def feature_dtype(dtype: str) -> tf.DType:
    """Maps a config dtype name (`string`, `int64`, `float32`) to a TensorFlow dtype."""
    return _DTYPES[dtype]


def _feature_spec(feature: Feature) -> tf.io.FixedLenFeature | tf.io.RaggedFeature:
    if feature.multivalent:
        return tf.io.RaggedFeature(feature_dtype(feature.dtype), row_splits_dtype=tf.int64)
    return tf.io.FixedLenFeature([], feature_dtype(feature.dtype))


def parse_spec(data: DataConfig) -> dict[str, tf.io.FixedLenFeature | tf.io.RaggedFeature]:
    """The `tf.io.parse_example` spec for features and labels, keyed by column name.

    A list feature parses as a `tf.RaggedTensor` (`parse_examples` pads it).
    """
    spec = {f.name: _feature_spec(f) for f in data.features}
    for t in data.tasks:
        # A missing optional label parses as NaN; the trainer masks NaN labels out of the loss.
        default = float("nan") if t.optional else None
        spec[t.label_column] = tf.io.FixedLenFeature([], tf.float32, default_value=default)
    return spec


def pad_lists(parsed: dict[str, tf.Tensor], data: DataConfig) -> dict[str, tf.Tensor]:
    """Pads every list feature of a parsed batch to `(batch, max_length)` with its pad value.

    Args:
        parsed: `tf.io.parse_example`'s output with `parse_spec` (or a part of it).
        data: The data section of the config.

    Returns:
        `parsed` with each list feature it holds as a dense tensor (longer lists cut, which the
        Beam job never writes).
    """
    padded = dict(parsed)
    for f in data.multivalent:
        if f.name in padded:
            padded[f.name] = padded[f.name].to_tensor(
                default_value=f.list_pad, shape=[None, f.max_length])
    return padded


def parse_examples(serialized: tf.Tensor, data: DataConfig, *, labels: bool = True
                   ) -> dict[str, tf.Tensor]:
    """Parses a batch of serialized Examples into dense tensors, lists padded (`pad_lists`).

    Args:
        serialized: A `(batch,)` string tensor of serialized `tf.train.Example`s.
        data: The data section of the config.
        labels: Parse the task labels too; False parses the features only (what a model takes).

    Returns:
        `{column: tensor}`: `(batch,)` per scalar column, `(batch, max_length)` per list feature.
    """
    spec = parse_spec(data)
    if not labels:
        spec = {f.name: spec[f.name] for f in data.features}
    return pad_lists(tf.io.parse_example(serialized, spec), data)


def origin_spec() -> dict[str, tf.io.FixedLenFeature]:
    """The `tf.io.parse_example` spec of the origin fields: log file (string) and line (int64).

    Examples written without an origin parse as `b""` and 0.
    """
    return {ORIGIN_FILE: tf.io.FixedLenFeature([], tf.string, default_value=b""),
            ORIGIN_LINE: tf.io.FixedLenFeature([], tf.int64, default_value=0)}


def encode_example(
    row: dict[str, Any], data: DataConfig, origin: tuple[str, int] | None = None
) -> bytes:
    """Serializes an already-validated row (see `pipeline.validate`) to a tf.train.Example.

    Args:
        row: A clean row: every configured column (None for a missing optional label).
        data: The data section of the config.
        origin: `(log file, line number)` the row was read from; the Beam job always passes
            it, so that every written example can be traced to its log line.

    Returns:
        The serialized Example. Its bytes depend only on its content (map fields in key
        order), so that a rerun writes byte-identical files.
    """
    feature: dict[str, tf.train.Feature] = {}
    for f in data.features:
        value = row[f.name]
        values = value if isinstance(value, list) else [value]  # a list feature: its elements
        if f.dtype == "string":
            encoded = [v.encode() for v in values]
            feature[f.name] = tf.train.Feature(bytes_list=tf.train.BytesList(value=encoded))
        elif f.dtype == "int64":
            feature[f.name] = tf.train.Feature(int64_list=tf.train.Int64List(value=values))
        else:
            feature[f.name] = tf.train.Feature(float_list=tf.train.FloatList(value=values))
    for t in data.tasks:
        if row[t.label_column] is None:  # a missing optional label is left out of the Example
            continue
        value = float(row[t.label_column])
        feature[t.label_column] = tf.train.Feature(float_list=tf.train.FloatList(value=[value]))
    if origin is not None:
        source, line = origin
        feature[ORIGIN_FILE] = tf.train.Feature(
            bytes_list=tf.train.BytesList(value=[source.encode()]))
        feature[ORIGIN_LINE] = tf.train.Feature(int64_list=tf.train.Int64List(value=[line]))
    example = tf.train.Example(features=tf.train.Features(feature=feature))
    # Protobuf serializes map entries in no fixed order unless asked to.
    return example.SerializeToString(deterministic=True)


def _masked_crc32c(data: bytes) -> int:
    crc = google_crc32c.value(data)
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def frame_record(data: bytes) -> bytes:
    """One TFRecord record: `data` with its length and their masked CRC32C checksums.

    Args:
        data: The record's payload, e.g. a serialized Example.

    Returns:
        The bytes to append to a TFRecord file (before compression).
    """
    length = struct.pack("<Q", len(data))
    return b"".join((length, struct.pack("<I", _masked_crc32c(length)), data,
                     struct.pack("<I", _masked_crc32c(data))))


def split_labels(
    parsed: dict[str, tf.Tensor], data: DataConfig
) -> tuple[dict[str, tf.Tensor], dict[str, tf.Tensor]]:
    """Splits a parsed batch into (raw features by column, labels by task name)."""
    features = {f.name: parsed[f.name] for f in data.features}
    labels = {t.name: parsed[t.label_column] for t in data.tasks}
    return features, labels
