"""`FusedEmbedding`: several hashed tables stored end to end in one `PartitionedEmbedding`.

Why: a model with dozens of small tables pays per table per step: a hash, a lookup, a
`tf.IndexedSlices` gradient, its exchange between workers and a row-sparse optimizer update.
Tables of one width (and one placement) fused into one variable pay each of those once per
group: every feature of the group hashes with its own table's `hash_buckets`, adds its table's
first row (`offset`), and the group's ids of every feature are looked up in ONE gather and split
back. The gradient of the group is then one `tf.IndexedSlices` per shard, exchanged as one table
(`trainer.embeddings.exchange`) and applied in one update (`trainer.embeddings.optimizers`).

The storage is a `PartitionedEmbedding` (this layer subclasses it), so sharding, the exchange,
the row-sparse optimizers, re-partitioning on restore and the checkpoint names of shards and
slots (`part_<i>_of_<P>`, slots keyed by the layer's name) work unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import tensorflow as tf
import tf_keras as keras

from trainer.embeddings.layer import PartitionedEmbedding, hash_ids
from trainer.embeddings.layout import DEFAULT_MAX_SHARDS, DEFAULT_MIN_SHARD_ROWS


def fused_name(dim: int, placement: str, prefix: str = "") -> str:
    """`<prefix>embed_fused_d<dim>_<placement>`: the layer name of a fused group."""
    return f"{prefix}embed_fused_d{dim}_{placement}"


@keras.utils.register_keras_serializable(package="multitower")
class FusedEmbedding(PartitionedEmbedding):
    """Hashed tables of one width end to end in one partitioned table; one lookup per call.

    Table `t` (of `rows_t` hash buckets) holds rows `[offset_t, offset_t + rows_t)`, the tables
    in the order given. A feature's values hash as `PartitionedEmbedding`'s do
    (`tf.strings.to_hash_bucket_fast` into its table's `rows_t`; integers through their decimal
    string) and are shifted by its table's offset, so features naming one table share its rows.

    Args:
        tables: `(table name, hash buckets)` pairs, in row order; names unique.
        features: `(feature name, table name)` pairs: the inputs of `call`, in order; every
            table named here must be in `tables`.
        dim: Embedding width (>= 1).
        num_shards: P of the whole group, in `[1, sum of rows]`; None to derive it.
        min_shard_rows: Smallest shard the derived P allows.
        max_shards: Largest derived P.
        embeddings_initializer: Initializer of every shard.
        placement: Where the rows live (every table of the group shares it).
        **kwargs: `keras.layers.Layer` arguments; give a stable `name` (`fused_name`).

    Input: a list of one tensor per feature, in `features` order, of tf.string or an integer
        dtype and any shape (`(batch,)`, or `(batch, max_length)` for a padded list).
    Output: a list of one tensor per feature, its input's shape + `(dim,)`.

    Raises:
        ValueError: No table or feature, a duplicate name, a feature naming an unknown table,
            or a bad size (see `PartitionedEmbedding`).
    """

    def __init__(
        self, tables: Sequence[Sequence], features: Sequence[Sequence], dim: int,
        num_shards: int | None = None, min_shard_rows: int = DEFAULT_MIN_SHARD_ROWS,
        max_shards: int = DEFAULT_MAX_SHARDS,
        embeddings_initializer: str | dict | keras.initializers.Initializer = "uniform",
        placement: str = "replicated", **kwargs,
    ) -> None:
        members = tuple((str(name), int(rows)) for name, rows in tables)
        inputs = tuple((str(feature), str(table)) for feature, table in features)
        names = [name for name, _ in members]
        if not members or not inputs:
            raise ValueError(f"a fused table needs tables and features, got {list(members)} "
                             f"and {list(inputs)}")
        if len(set(names)) != len(names) or len({f for f, _ in inputs}) != len(inputs):
            raise ValueError(f"duplicate table or feature names in {names} / {list(inputs)}")
        unknown = sorted({t for _, t in inputs} - set(names))
        if unknown:
            raise ValueError(f"features name tables {unknown} that are not among {names}")
        if any(rows < 1 for _, rows in members):
            raise ValueError(f"every table needs >= 1 rows, got {list(members)}")
        super().__init__(sum(rows for _, rows in members), dim, num_shards=num_shards,
                         min_shard_rows=min_shard_rows, max_shards=max_shards,
                         embeddings_initializer=embeddings_initializer, placement=placement,
                         **kwargs)
        starts, start = {}, 0
        for name, rows in members:
            starts[name] = start
            start += rows
        # Plain Python values: kept out of Keras' tracking (and so out of checkpoints).
        self._self_setattr_tracking = False
        self.members = members
        self.features = inputs
        self.offsets = starts
        self._self_setattr_tracking = True

    def rows_of(self, table: str) -> tuple[int, int]:
        """`(first row, row count)` of `table` in the group.

        Raises:
            KeyError: `table` is not in the group.
        """
        return self.offsets[table], dict(self.members)[table]

    def call(self, inputs: Sequence[tf.Tensor] | tf.Tensor, block: bool = False
             ) -> list[tf.Tensor] | tf.Tensor:
        """Each feature's embeddings, `values.shape + (dim,)`, in the order of `features`.

        With `block=True` (every feature one value per row, `(batch,)`): ONE tensor
        `(batch, len(features) * dim)`, the features' embeddings side by side in that order, the
        same values as concatenating the list. The ids are stacked as `(batch, features)` and
        looked up at once: no split into features, no concatenation of dozens of thin tensors
        after it (for 27 tables of width 8, that split and concatenation, forward and backward,
        cost more than the gather).
        """
        if not isinstance(inputs, list | tuple):
            inputs = [inputs]
        if len(inputs) != len(self.features):
            raise ValueError(f"{self.name} takes {len(self.features)} features "
                             f"{[f for f, _ in self.features]}, got {len(inputs)} tensors")
        rows = dict(self.members)
        ids = []
        for values, (_, table) in zip(inputs, self.features, strict=True):
            ids.append(hash_ids(values, rows[table])
                       + tf.constant(self.offsets[table], tf.int64))
        if block:
            if any(i.shape.rank != 1 for i in ids):
                raise ValueError(f"{self.name}: block=True takes features of one value per row, "
                                 f"got shapes {[i.shape.as_list() for i in ids]}")
            found = self.lookup(tf.stack(ids, axis=1))  # (batch, features, dim)
            return tf.reshape(found, [-1, len(ids) * self.dim])
        if len(ids) == 1:
            return [self.lookup(ids[0])]
        flat = [tf.reshape(i, [-1]) for i in ids]
        found = self.lookup(tf.concat(flat, axis=0))  # the one gather of the group
        parts = tf.split(found, [tf.size(f) for f in flat], axis=0)
        out = []
        for part, i in zip(parts, ids, strict=True):
            part = tf.reshape(part, tf.concat([tf.shape(i), [self.dim]], axis=0))
            part.set_shape(i.shape.concatenate([self.dim]))
            out.append(part)
        return out

    def compute_output_shape(self, input_shape: Sequence[tf.TensorShape], block: bool = False
                             ) -> list[tf.TensorShape] | tf.TensorShape:
        if block:
            return tf.TensorShape([tf.TensorShape(input_shape[0])[0],
                                   len(input_shape) * self.dim])
        return [tf.TensorShape(s).concatenate([self.dim]) for s in input_shape]

    def get_config(self) -> dict:
        config = super().get_config()
        del config["num_buckets"]  # the sum of the tables' rows
        return {**config, "tables": [list(m) for m in self.members],
                "features": [list(f) for f in self.features]}


class TableRows(NamedTuple):
    """Where one table's rows are: `layer`'s rows `[start, start + rows)`."""

    layer: PartitionedEmbedding
    start: int
    rows: int

    @property
    def stop(self) -> int:
        return self.start + self.rows


def find_table(model: tf.Module, table: str, prefix: str = "") -> TableRows:
    """The layer holding `table`'s rows, fused or not, and where they are in it.

    Args:
        model: A network (or any module holding its embedding layers).
        table: A table name (a feature's `embedding_table`, or its own name).
        prefix: The layer-name prefix the tables were built with (the single-task baseline's
            `<task>_`).

    Returns:
        `TableRows`: a `PartitionedEmbedding` named `<prefix>embed_<table>` (all its rows), or
        the `FusedEmbedding` named `<prefix>embed_fused_...` that holds the table.

    Raises:
        KeyError: No layer holds the table.
    """
    for layer in [model, *model.submodules]:
        if isinstance(layer, FusedEmbedding):
            if layer.name.startswith(f"{prefix}embed_fused_") and table in layer.offsets:
                return TableRows(layer, *layer.rows_of(table))
        elif isinstance(layer, PartitionedEmbedding) and layer.name == f"{prefix}embed_{table}":
            return TableRows(layer, 0, layer.num_buckets)
    raise KeyError(f"no embedding layer holds table {table!r} (prefix {prefix!r})")
