"""The TFRecord contract between the Beam job and the trainer.

One `tf.train.Example` per accepted log row, holding the RAW values (no hashing, no scaling):

| column                          | Example field | parsed dtype |
| ------------------------------- | ------------- | ------------ |
| categorical, dtype string       | bytes_list    | tf.string    |
| categorical or numeric, int64   | int64_list    | tf.int64     |
| numeric, dtype float32          | float_list    | tf.float32   |
| label of any task               | float_list    | tf.float32   |

Every column holds exactly one value, except the label of an `optional` task, which may be
absent (it then parses as NaN and is masked out of that task's loss). Features are keyed by
their log name, labels by their label column. The serving signature takes the same names and
dtypes.
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf

from multitower.config import DataConfig

_DTYPES = {"string": tf.string, "int64": tf.int64, "float32": tf.float32}


def feature_dtype(dtype: str) -> tf.DType:
    """Maps a config dtype name (`string`, `int64`, `float32`) to a TensorFlow dtype."""
    return _DTYPES[dtype]


def parse_spec(data: DataConfig) -> dict[str, tf.io.FixedLenFeature]:
    """The `tf.io.parse_example` spec for features and labels, keyed by column name."""
    spec = {f.name: tf.io.FixedLenFeature([], feature_dtype(f.dtype)) for f in data.features}
    for t in data.tasks:
        # A missing optional label parses as NaN; the trainer masks NaN labels out of the loss.
        default = float("nan") if t.optional else None
        spec[t.label_column] = tf.io.FixedLenFeature([], tf.float32, default_value=default)
    return spec


def encode_example(row: dict[str, Any], data: DataConfig) -> bytes:
    """Serializes an already-validated row (see `pipeline.validate`) to a tf.train.Example."""
    feature: dict[str, tf.train.Feature] = {}
    for f in data.features:
        value = row[f.name]
        if f.dtype == "string":
            encoded = [value.encode()]
            feature[f.name] = tf.train.Feature(bytes_list=tf.train.BytesList(value=encoded))
        elif f.dtype == "int64":
            feature[f.name] = tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))
        else:
            feature[f.name] = tf.train.Feature(float_list=tf.train.FloatList(value=[value]))
    for t in data.tasks:
        if row[t.label_column] is None:  # a missing optional label is left out of the Example
            continue
        value = float(row[t.label_column])
        feature[t.label_column] = tf.train.Feature(float_list=tf.train.FloatList(value=[value]))
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def split_labels(
    parsed: dict[str, tf.Tensor], data: DataConfig
) -> tuple[dict[str, tf.Tensor], dict[str, tf.Tensor]]:
    """Splits a parsed batch into (raw features by column, labels by task name)."""
    features = {f.name: parsed[f.name] for f in data.features}
    labels = {t.name: parsed[t.label_column] for t in data.tasks}
    return features, labels
