"""A hand-made SavedModel with list-valued inputs, whose outputs show exactly what it was sent.

`write_list_model(base)` writes `<base>/1`, a `tf.Module` (not a trained network) whose
`serving_default` takes

- `tags`: string `(None, 4)`, padded with `""` (the default pad of strings);
- `codes`: int64 `(None, 3)`, padded with 0 (a configured pad: not the default -1);
- `user`: string `(None,)` and `price`: float32 `(None,)`, one value per row;

and gives, per row, numbers that change with every element and its position, so that a list
cut, padded or ordered otherwise gives other scores (see `expected`):

- `tags_count` = elements of `tags` that are not `""`;
- `tags_weighted` = sum_i (i + 1) * len(tags[i]) (byte length);
- `codes_count` = elements of `codes` that are not 0;
- `codes_weighted` = sum_i (i + 1) * codes[i];
- `row` = price + len(user).

Its warmup file (TF Serving's, `multitower.tfs_requests`) holds a 1-row and a 3-row request of
`(batch, L)` tensors, which the double replays when it loads the version. `predict_examples`
takes serialized `tf.train.Example`s holding the same features as variable-length lists
(`examples_of`), padded and cut by `multitower.records.pad_lists` of `list_data()`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

TAGS_LENGTH, CODES_LENGTH, CODES_PAD = 4, 3, 0
PADS = {"codes": CODES_PAD}  # the client option for this model: tags keep the default ""
MODEL = "lists"
OUTPUTS = ("codes_count", "codes_weighted", "row", "tags_count", "tags_weighted")
ROWS = [  # shorter than L, exactly L, longer than L (cut), empty
    {"tags": ["ab", "c"], "codes": [5], "user": "u1", "price": 1.5},
    {"tags": ["a", "bb", "ccc", "dddd"], "codes": [1, 2, 3], "user": "user", "price": 2.0},
    {"tags": ["x", "yy", "zzz", "w", "vvvvv", "u"], "codes": [7, 8, 9, 10, 11], "user": "",
     "price": -3.25},
    {"tags": [], "codes": [], "user": "ü", "price": 0.0},
]


def expected(row: dict) -> dict[str, float]:
    """The outputs for a raw row whose lists are cut to L and padded, worked out by hand."""
    tags, codes = row["tags"][:TAGS_LENGTH], row["codes"][:CODES_LENGTH]
    return {"tags_count": float(len(tags)),
            "tags_weighted": float(sum((i + 1) * len(t.encode()) for i, t in enumerate(tags))),
            "codes_count": float(len(codes)),
            "codes_weighted": float(sum((i + 1) * c for i, c in enumerate(codes))),
            "row": row["price"] + len(row["user"].encode())}


def padded(row: dict, tags_pad: str = "", codes_pad: int = CODES_PAD) -> dict:
    """The row as the signature takes it: lists cut and padded (what a client must send)."""
    tags, codes = row["tags"][:TAGS_LENGTH], row["codes"][:CODES_LENGTH]
    return {**row, "tags": tags + [tags_pad] * (TAGS_LENGTH - len(tags)),
            "codes": codes + [codes_pad] * (CODES_LENGTH - len(codes))}


def list_data():
    """A `DataConfig` of the model's features (the lists `multivalent`), for `parse_examples`."""
    from multitower.config.data import DataConfig

    return DataConfig.model_validate({
        "logs": "logs/dt={date}", "tfrecords": "tfrecords", "rejected": "rejected",
        "features": [
            {"name": "tags", "type": "categorical", "multivalent": True,
             "max_length": TAGS_LENGTH, "hash_buckets": 10, "embedding_dim": 2},
            {"name": "codes", "type": "categorical", "dtype": "int64", "multivalent": True,
             "max_length": CODES_LENGTH, "pad": CODES_PAD, "hash_buckets": 10,
             "embedding_dim": 2},
            {"name": "user", "type": "categorical", "hash_buckets": 10, "embedding_dim": 2},
            {"name": "price", "type": "numeric"}],
        "tasks": [{"name": "click", "type": "binary"}]})


def examples_of(rows: list[dict]) -> list[bytes]:
    """Serialized Examples of raw rows, lists as they are (any length), with a click label."""
    from multitower.records import encode_example

    data = list_data()
    return [encode_example({**row, "click": 0.0}, data) for row in rows]


def write_list_model(base: Path, version: int = 1) -> str:
    """Writes the model at `<base>/<version>` with its warmup file; returns `base`."""
    import tensorflow as tf

    from multitower.records import parse_examples
    from multitower.tfs_requests import predict_request, warmup_path, write_warmup

    def outputs(f: dict) -> dict:
        tags, codes = f["tags"], f["codes"]
        real_tags = tf.cast(tf.not_equal(tags, ""), tf.float32)
        real_codes = tf.cast(tf.not_equal(codes, CODES_PAD), tf.float32)
        tag_positions = tf.range(1, TAGS_LENGTH + 1, dtype=tf.float32)
        code_positions = tf.range(1, CODES_LENGTH + 1, dtype=tf.float32)
        lengths = tf.cast(tf.strings.length(tags), tf.float32)
        return {
            "tags_count": tf.reduce_sum(real_tags, axis=1),
            "tags_weighted": tf.reduce_sum(lengths * tag_positions * real_tags, axis=1),
            "codes_count": tf.reduce_sum(real_codes, axis=1),
            "codes_weighted": tf.reduce_sum(tf.cast(codes, tf.float32) * code_positions
                                            * real_codes, axis=1),
            "row": f["price"] + tf.cast(tf.strings.length(f["user"]), tf.float32),
        }

    data = list_data()
    specs = {"tags": tf.TensorSpec([None, TAGS_LENGTH], tf.string, name="tags"),
             "codes": tf.TensorSpec([None, CODES_LENGTH], tf.int64, name="codes"),
             "user": tf.TensorSpec([None], tf.string, name="user"),
             "price": tf.TensorSpec([None], tf.float32, name="price")}

    class ListModel(tf.Module):
        @tf.function(input_signature=[specs])
        def serve(self, features: dict) -> dict:
            return outputs(features)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
        def score_examples(self, examples: tf.Tensor) -> dict:
            return outputs(parse_examples(examples, data, labels=False))

    module = ListModel()
    path = str(base / str(version))
    tf.saved_model.save(module, path, signatures={
        "serving_default": module.serve.get_concrete_function(),
        "predict_examples": module.score_examples.get_concrete_function()})
    dtypes = {name: spec.dtype for name, spec in specs.items()}
    shapes = {name: spec.shape.as_list() for name, spec in specs.items()}
    rows = [padded(row) for row in ROWS[:3]]
    write_warmup(warmup_path(path), [
        predict_request(MODEL, {n: [row[n] for row in rows[:size]] for n in specs}, dtypes,
                        shapes=shapes) for size in (1, 3)])
    return str(base)


def as_arrays(rows: list[dict]) -> dict[str, np.ndarray]:
    """Padded rows as the arrays `tf.constant` makes of them (`(batch,)`, `(batch, L)`)."""
    return {name: np.array([row[name] for row in rows]) for name in rows[0]}
