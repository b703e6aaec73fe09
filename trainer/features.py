"""Raw features to one dense vector: hashing, embeddings and normalization live in the model.

The model receives the values exactly as they were logged (strings, integers, floats), so the
serving path needs no second copy of the feature code.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import tensorflow as tf
import tf_keras as keras

from multitower.config import DataConfig, EmbeddingsConfig
from multitower.config.data import COMBINERS
from multitower.records import feature_dtype
from trainer.embeddings import FusedEmbedding, PartitionedEmbedding, fused_name, hash_ids


@keras.utils.register_keras_serializable(package="multitower")
class HashedEmbedding(keras.layers.Layer):
    """Hashes raw categorical values into `num_buckets` rows and looks up their embeddings.

    Integer values are hashed through their decimal string, so `7` and `"7"` share a row.

    The unpartitioned reference: one variable read with `tf.gather`, which under
    MultiWorkerMirroredStrategy reads the whole table each step. The trainer uses
    `trainer.embeddings.PartitionedEmbedding`, which hashes the same way; this layer remains as
    the baseline of its tests and of `benchmarks/embedding_step_time.py`.

    Input shape: `(batch,)` of tf.string or tf.int64.
    Output shape: `(batch, dim)`.
    """

    def __init__(self, num_buckets: int, dim: int, **kwargs) -> None:
        super().__init__(**kwargs)
        if num_buckets < 1 or dim < 1:
            raise ValueError(f"num_buckets and dim must be >= 1, got {num_buckets} and {dim}")
        self.num_buckets = num_buckets
        self.dim = dim

    def build(self, input_shape: tf.TensorShape) -> None:
        self.embeddings = self.add_weight(
            name="embeddings",
            shape=(self.num_buckets, self.dim),
            initializer=keras.initializers.RandomUniform(-0.05, 0.05),
        )
        super().build(input_shape)

    def call(self, values: tf.Tensor) -> tf.Tensor:
        return tf.gather(self.embeddings, hash_ids(values, self.num_buckets))

    def get_config(self) -> dict:
        return {**super().get_config(), "num_buckets": self.num_buckets, "dim": self.dim}


@keras.utils.register_keras_serializable(package="multitower")
class Standardize(keras.layers.Layer):
    """Scales numeric columns by frozen constants: `(x - mean) / std`.

    The constants come from the Beam job's statistics of the first trained day and are stored as
    non-trainable weights, so they travel in checkpoints and SavedModels.

    Input shape: `(batch, n)` float32. Output shape: `(batch, n)`.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float], **kwargs) -> None:
        super().__init__(**kwargs)
        if len(mean) != len(std):
            raise ValueError(f"mean and std differ in length: {len(mean)} != {len(std)}")
        if any(s < 0 for s in std):
            raise ValueError(f"std must be >= 0, got {list(std)}")
        self.mean = [float(m) for m in mean]
        # A constant column (std 0) is centred, not divided by zero.
        self.std = [float(s) if s > 0 else 1.0 for s in std]

    def build(self, input_shape: tf.TensorShape) -> None:
        n = len(self.mean)
        if input_shape[-1] != n:
            raise ValueError(f"expected {n} numeric columns, got input shape {input_shape}")
        self.offset = self.add_weight(
            name="mean", shape=(n,), trainable=False,
            initializer=keras.initializers.Constant(self.mean),
        )
        self.scale = self.add_weight(
            name="std", shape=(n,), trainable=False,
            initializer=keras.initializers.Constant(self.std),
        )
        super().build(input_shape)

    def call(self, x: tf.Tensor) -> tf.Tensor:
        return (x - self.offset) / self.scale

    def get_config(self) -> dict:
        return {**super().get_config(), "mean": self.mean, "std": self.std}


@keras.utils.register_keras_serializable(package="multitower")
class PoolList(keras.layers.Layer):
    """Pools the element embeddings of a padded list feature into one vector per row.

    Elements equal to `pad` are padding and count for nothing. `mean` divides the sum of the
    real elements by their count, `sqrtn` by its square root, `sum` not at all; a row without
    real elements pools to zeros.

    Inputs: `[values, embeddings]`: the padded values `(batch, max_length)` (string or int64)
    and their embeddings `(batch, max_length, dim)`. Output shape: `(batch, dim)`.
    """

    def __init__(self, combiner: str, pad: str | int, **kwargs) -> None:
        super().__init__(**kwargs)
        if combiner not in COMBINERS:
            raise ValueError(f"combiner must be one of {list(COMBINERS)}, got {combiner!r}")
        self.combiner = combiner
        self.pad = pad

    def call(self, inputs: list[tf.Tensor]) -> tf.Tensor:
        values, embedded = inputs
        mask = tf.cast(tf.not_equal(values, tf.constant(self.pad, values.dtype)),
                       embedded.dtype)
        total = tf.reduce_sum(embedded * mask[..., None], axis=1)
        if self.combiner == "sum":
            return total
        count = tf.reduce_sum(mask, axis=1, keepdims=True)
        scale = count if self.combiner == "mean" else tf.sqrt(count)
        return tf.math.divide_no_nan(total, scale)

    def get_config(self) -> dict:
        return {**super().get_config(), "combiner": self.combiner, "pad": self.pad}


def raw_inputs(data: DataConfig) -> dict[str, keras.Input]:
    """One keras.Input per feature, named and typed as in the logs.

    Shape `()` per example, or `(max_length,)` for a list feature (padded, see `PoolList`).
    """
    return {
        f.name: keras.Input(shape=(f.max_length,) if f.multivalent else (),
                            dtype=feature_dtype(f.dtype), name=f.name)
        for f in data.features
    }


@dataclass(frozen=True)
class TableGroup:
    """Tables fused into one variable: one `embedding_dim`, one placement.

    `tables` are `(table, hash_buckets)` in row order, `features` the features reading them, both
    in the order they first appear in `data.features`.
    """

    name: str
    dim: int
    placement: str
    tables: tuple[tuple[str, int], ...]
    features: tuple[str, ...]

    @property
    def rows(self) -> int:
        return sum(rows for _, rows in self.tables)


def table_groups(data: DataConfig, embeddings: EmbeddingsConfig, prefix: str = ""
                 ) -> list[TableGroup]:
    """The fused groups: tables of the same `embedding_dim` and placement, in config order.

    A group is named `<prefix>embed_fused_d<dim>_<placement>` and ordered by its first table's
    first feature; within it, tables by their first feature. A shared table (`embedding_table:`
    naming another feature's table) is one member whatever the number of its features.
    """
    found: dict[tuple[int, str], dict] = {}
    for f in data.categorical:
        key = (f.embedding_dim, embeddings.placement_of(f.table))
        group = found.setdefault(key, {"tables": {}, "features": []})
        group["tables"].setdefault(f.table, f.hash_buckets)
        group["features"].append(f.name)
    return [TableGroup(fused_name(dim, placement, prefix), dim, placement,
                       tuple(g["tables"].items()), tuple(g["features"]))
            for (dim, placement), g in found.items()]


def _num_shards(embeddings: EmbeddingsConfig, rows: int) -> int | None:
    shards = embeddings.num_shards
    return None if shards is None else min(shards, rows)


def embedding_tables(
    data: DataConfig, embeddings: EmbeddingsConfig, prefix: str = ""
) -> dict[str, PartitionedEmbedding]:
    """The embedding layers, keyed by the tables they hold.

    With `embeddings.fuse` (the default): one `FusedEmbedding` per `table_groups` group, each
    table mapping to its group's layer. Without: one `PartitionedEmbedding` per table, named
    `<prefix>embed_<table>`. A feature's table is its `embedding_table`, or its own name.
    """
    tables: dict[str, PartitionedEmbedding] = {}
    if embeddings.fuse:
        features = {f.name: f for f in data.categorical}
        for group in table_groups(data, embeddings, prefix):
            layer = FusedEmbedding(
                group.tables, [(name, features[name].table) for name in group.features],
                group.dim, num_shards=_num_shards(embeddings, group.rows),
                min_shard_rows=embeddings.min_shard_rows, max_shards=embeddings.max_shards,
                placement=group.placement, exchange=embeddings.exchange, name=group.name,
            )
            tables.update((table, layer) for table, _ in group.tables)
        return tables
    for f in data.categorical:
        if f.table in tables:
            continue
        tables[f.table] = PartitionedEmbedding(
            f.hash_buckets, f.embedding_dim, num_shards=_num_shards(embeddings, f.hash_buckets),
            min_shard_rows=embeddings.min_shard_rows, max_shards=embeddings.max_shards,
            placement=embeddings.placement_of(f.table), exchange=embeddings.exchange,
            name=f"{prefix}embed_{f.table}",
        )
    return tables


def _embed(inputs: dict[str, tf.Tensor], data: DataConfig, embeddings: EmbeddingsConfig,
           prefix: str) -> dict[str, tf.Tensor]:
    """Every categorical feature's embedding (lists not yet pooled), keyed by feature."""
    tables = embedding_tables(data, embeddings, prefix)
    if not embeddings.fuse:
        return {f.name: tables[f.table](inputs[f.name]) for f in data.categorical}
    embedded = {}
    for layer in {id(t): t for t in tables.values()}.values():
        names = [name for name, _ in layer.features]
        embedded.update(zip(names, layer([inputs[n] for n in names]), strict=True))
    return embedded


def _fused_blocks(inputs: dict[str, tf.Tensor], data: DataConfig, embeddings: EmbeddingsConfig,
                  prefix: str) -> list[tf.Tensor]:
    """Every categorical embedding as one block per fused group, if that keeps their order.

    When every categorical feature is one value per row and each group's features follow one
    another in `data.features` in the group's own order (always so with one embedding width),
    the blocks side by side are the concatenation of the features' embeddings, in order (the
    layout every checkpoint's first dense layer was trained on). Otherwise, `[]`: the caller
    concatenates the features one by one.
    """
    if not embeddings.fuse or any(f.multivalent for f in data.categorical):
        return []
    groups = table_groups(data, embeddings, prefix)
    if [f.name for f in data.categorical] != [n for g in groups for n in g.features]:
        return []
    tables = embedding_tables(data, embeddings, prefix)
    table_of = {f.name: f.table for f in data.categorical}
    layers = [tables[table_of[g.features[0]]] for g in groups]
    return [layer([inputs[n] for n in g.features], block=True)
            for layer, g in zip(layers, groups, strict=True)]


def feature_vector(
    inputs: dict[str, tf.Tensor],
    data: DataConfig,
    normalization: dict[str, dict[str, float]],
    embeddings: EmbeddingsConfig | None = None,
    prefix: str = "",
) -> tf.Tensor:
    """Concatenates every categorical embedding and the standardized numeric columns.

    Args:
        inputs: Raw feature tensors of shape `(batch,)` (lists: `(batch, max_length)`, padded),
            keyed by log name.
        data: The data part of the config.
        normalization: `{numeric feature: {"mean": m, "std": s}}` from the first trained day.
        embeddings: How tables are fused and split into shards (defaults when None).
        prefix: Prepended to layer names, so that several sets of embeddings can coexist (the
            single-task baseline gives every task its own).

    Returns:
        A float32 tensor of shape `(batch, sum(embedding_dim) + number of numeric features)`,
        embeddings in the order of the features.
    """
    embeddings = embeddings or EmbeddingsConfig()
    parts = _fused_blocks(inputs, data, embeddings, prefix)
    if not parts:
        embeddings_of = _embed(inputs, data, embeddings, prefix)
        for f in data.categorical:
            embedded = embeddings_of[f.name]
            if f.multivalent:  # (batch, max_length, dim) -> (batch, dim)
                embedded = PoolList(f.list_combiner, f.list_pad,
                                    name=f"{prefix}pool_{f.name}")([inputs[f.name], embedded])
            parts.append(embedded)
    if data.numeric:
        missing = [f.name for f in data.numeric if f.name not in normalization]
        if missing:
            raise ValueError(f"no normalization constants for numeric features {missing}")
        # tf ops on symbolic inputs become TFOpLambda layers in the functional model.
        numeric = tf.stack([tf.cast(inputs[f.name], tf.float32) for f in data.numeric], axis=-1)
        parts.append(
            Standardize(
                [normalization[f.name]["mean"] for f in data.numeric],
                [normalization[f.name]["std"] for f in data.numeric],
                name=f"{prefix}standardize",
            )(numeric)
        )
    if len(parts) == 1:
        return parts[0]
    return keras.layers.Concatenate(name=f"{prefix}features")(parts)
