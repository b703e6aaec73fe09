"""`PartitionedEmbedding`: a hashed embedding table split row-wise into P shard variables.

Why the lookup reads the replica's own copy: under MultiWorkerMirroredStrategy, `tf.gather` on a
MirroredVariable in replica context turns the variable into a tensor (`ReadVariableOp` of the
whole table, then `GatherV2`), so a step costs O(rows). Gathering from the on-device component
(`ResourceGather`) reads only the looked-up rows; the tape still records it against the
MirroredVariable's handle, so the gradient reaches the optimizer as `tf.IndexedSlices`.

Shards are named `part_<i>_of_<P>`: the name carries P, so a checkpoint written with another P
matches no shard by name (see `trainer.embeddings.repartition`) rather than one of the wrong
shape.
"""

from __future__ import annotations

import logging
import weakref

import tensorflow as tf
import tf_keras as keras

from multitower.config import EXCHANGES, PLACEMENTS
from trainer.embeddings.layout import (
    DEFAULT_MAX_SHARDS,
    DEFAULT_MIN_SHARD_ROWS,
    local_copy,
    locate,
    resolve_num_shards,
    shard_sizes,
)
from trainer.embeddings.model_parallel import (
    Workers,
    current_workers,
    local_variable,
    rows_on_worker,
)
from trainer.embeddings.model_parallel import lookup as model_parallel_lookup

log = logging.getLogger("multitower.trainer")
_TAG = "_multitower_embedding"  # (weakref to the layer, shard index) on every shard variable


def shard_name(index: int, num_shards: int) -> str:
    """`part_<index>_of_<num_shards>`: the checkpoint name of a shard, and of its slots."""
    return f"part_{index}_of_{num_shards}"


def worker_shard_name(index: int, workers: int) -> str:
    """`worker_<index>_of_<workers>`: a model-parallel table's rows on one worker."""
    return f"worker_{index}_of_{workers}"


def is_embedding_variable(variable: tf.Variable) -> bool:
    """True for the shard variables of a `PartitionedEmbedding` (mirrored or not)."""
    return getattr(variable, _TAG, None) is not None


def owner(variable: tf.Variable) -> tuple[PartitionedEmbedding, int]:
    """The table a shard variable belongs to, and the shard's index in it.

    Args:
        variable: A shard variable (see `is_embedding_variable`).

    Returns:
        `(layer, index)`.

    Raises:
        ValueError: `variable` is not a shard of a live `PartitionedEmbedding`.
    """
    tag = getattr(variable, _TAG, None)
    layer = tag[0]() if tag is not None else None
    if layer is None:
        raise ValueError(f"{variable.name} is not a shard of a live PartitionedEmbedding")
    return layer, tag[1]


def hash_ids(values: tf.Tensor, num_buckets: int) -> tf.Tensor:
    """Raw categorical values as row ids in `[0, num_buckets)` (int64, `values`' shape).

    `tf.strings.to_hash_bucket_fast`; integers through their decimal string, so `7` and `"7"`
    share a row. Every embedding layer hashes with it: the export repeats it on raw values.
    """
    if values.dtype != tf.string:
        values = tf.strings.as_string(values)
    return tf.strings.to_hash_bucket_fast(values, num_buckets)


def embedding_variables(model: tf.Module) -> list[tf.Variable]:
    """Every shard variable of every `PartitionedEmbedding` in `model`, in layer order."""
    layers = [model] + list(model.submodules)
    return [v for layer in layers if isinstance(layer, PartitionedEmbedding) for v in layer.shards]


@keras.utils.register_keras_serializable(package="multitower")
class PartitionedEmbedding(keras.layers.Layer):
    """Hashes raw categorical values into `num_buckets` rows of a table split into P shards.

    Hashing is `HashedEmbedding`'s (`tf.strings.to_hash_bucket_fast`; integers through their
    decimal string, so `7` and `"7"` share a row), so the layer is a drop-in replacement. Rows
    follow the "div" layout of `trainer.embeddings.layout`. Give the layer a stable `name`: the
    row-sparse optimizer keys its slots by it in checkpoints.

    Args:
        num_buckets: Rows of the whole table (>= 1).
        dim: Embedding width (>= 1).
        num_shards: P, in `[1, num_buckets]`; None to derive it from the two limits below.
        min_shard_rows: Smallest shard the derived P allows.
        max_shards: Largest derived P.
        embeddings_initializer: Initializer of every shard.
        placement: Where the rows live, one of `PLACEMENTS`. `replicated`: every worker holds
            the whole table and applies the summed gradients to its copy. `model_parallel`:
            worker w of N holds rows w, w + N, ... in one variable of its own (built under the
            strategy: N is its replica count), and lookups fetch rows from their owners
            (`trainer.embeddings.model_parallel`); `num_shards` does not apply. Only tables of
            one placement are ever grouped together.
        exchange: How a model-parallel table's lookups reach the owners, one of `EXCHANGES`.
        **kwargs: `keras.layers.Layer` arguments (`name`, `dtype`, ...).

    Input shape: any shape, usually `(batch,)`, of tf.string or an integer dtype.
    Output shape: the input shape + `(dim,)`, e.g. `(batch, dim)`.

    Raises:
        ValueError: A size is below 1, `num_shards` is out of range, or `placement` is unknown.
    """

    # tf.Module walks a layer's attributes for its variables; the lookup counts are per graph.
    _TF_MODULE_IGNORED_PROPERTIES = frozenset(
        ("_looked_up", *keras.layers.Layer._TF_MODULE_IGNORED_PROPERTIES))

    def __init__(
        self, num_buckets: int, dim: int, num_shards: int | None = None,
        min_shard_rows: int = DEFAULT_MIN_SHARD_ROWS, max_shards: int = DEFAULT_MAX_SHARDS,
        embeddings_initializer: str | dict | keras.initializers.Initializer = "uniform",
        placement: str = "replicated", exchange: str = "all_to_all", **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if num_buckets < 1 or dim < 1:
            raise ValueError(f"num_buckets and dim must be >= 1, got {num_buckets} and {dim}")
        if placement not in PLACEMENTS:
            raise ValueError(f"placement must be one of {list(PLACEMENTS)}, got {placement!r}")
        if exchange not in EXCHANGES:
            raise ValueError(f"exchange must be one of {list(EXCHANGES)}, got {exchange!r}")
        self.num_buckets = int(num_buckets)
        self.dim = int(dim)
        # A model-parallel table is one variable per worker (its rows), never split further.
        self.num_shards = 1 if placement == "model_parallel" else resolve_num_shards(
            num_buckets, num_shards, min_shard_rows, max_shards)
        self.exchange = exchange
        self.workers = Workers(1, 0)  # model-parallel: set when built
        self.min_shard_rows = int(min_shard_rows)
        self.max_shards = int(max_shards)
        self.placement = placement
        # "uniform" is HashedEmbedding's RandomUniform(-0.05, 0.05).
        self.embeddings_initializer = keras.initializers.get(embeddings_initializer)

    @property
    def shards(self) -> list[tf.Variable]:
        """The shard variables, in row order (empty before the layer is built)."""
        return list(getattr(self, "_shard_list", []))

    @property
    def model_parallel(self) -> bool:
        """Whether each worker holds only its own rows (`placement: model_parallel`)."""
        return self.placement == "model_parallel"

    def build(self, input_shape: tf.TensorShape) -> None:
        if self.model_parallel:
            self._build_model_parallel()
            super().build(input_shape)
            return
        shards = []
        for i, rows in enumerate(shard_sizes(self.num_buckets, self.num_shards)):
            shard = self.add_weight(
                name=shard_name(i, self.num_shards), shape=(rows, self.dim),
                initializer=self._shard_initializer(i), experimental_autocast=False,
            )
            setattr(shard, _TAG, (weakref.ref(self), i))
            shards.append(shard)
        # Untracked: the shards are already checkpointed under their names, and a second path
        # ("_shard_list/0") would not carry P.
        self._self_setattr_tracking = False
        self._shard_list = tuple(shards)
        self._self_setattr_tracking = True
        super().build(input_shape)

    def _build_model_parallel(self) -> None:
        # This worker's rows in a variable of its own: not mirrored, not in the checkpoint the
        # chief writes (each worker saves its rows itself, `trainer.embeddings.per_worker`).
        self.workers = current_workers()
        count, index = self.workers
        rows = rows_on_worker(self.num_buckets, count, index)
        initializer = self._shard_initializer(index)
        shard = local_variable(lambda: initializer((rows, self.dim)),
                               worker_shard_name(index, count), self.trainable)
        setattr(shard, _TAG, (weakref.ref(self), 0))
        self._self_setattr_tracking = False
        self._shard_list = (shard,)
        self._trainable_weights.append(shard)  # seen by the tape and the optimizer only
        self._self_setattr_tracking = True
        log.info("table %s: model_parallel, %d of %d rows on worker %d of %d, exchange %s",
                 self.name, rows, self.num_buckets, index, count,
                 self.exchange if count > 1 else "none (one worker)")

    def _shard_initializer(self, index: int) -> keras.initializers.Initializer:
        # A tf-keras initializer instance returns the same values on every call, which would
        # make same-sized shards identical: a fresh instance per shard, its seed (if any) offset.
        config = self.embeddings_initializer.get_config()
        if config.get("seed") is not None:
            config["seed"] += index
        return self.embeddings_initializer.__class__.from_config(config)

    def call(self, values: tf.Tensor) -> tf.Tensor:
        return self.lookup(hash_ids(values, self.num_buckets))

    def lookup(self, ids: tf.Tensor) -> tf.Tensor:
        """Embeddings of hashed ids (int, in `[0, num_buckets)`); shape `ids.shape + (dim,)`."""
        self._count_lookup(ids)
        if self.model_parallel:
            found = model_parallel_lookup(self._shard_list[0], ids, self.workers, self.exchange)
            return tf.cast(found, self.compute_dtype)
        shards = [local_copy(s) for s in self._shard_list]
        if len(shards) == 1:
            found = shards[0].sparse_read(ids)
        else:
            flat = tf.reshape(ids, [-1])
            shard, row = locate(flat, self.num_buckets, self.num_shards)
            rows = tf.dynamic_partition(row, shard, self.num_shards)
            where = tf.dynamic_partition(tf.range(tf.size(flat)), shard, self.num_shards)
            parts = [s.sparse_read(r) for s, r in zip(shards, rows, strict=True)]
            found = tf.reshape(tf.dynamic_stitch(where, parts),
                               tf.concat([tf.shape(ids), [self.dim]], axis=0))
            found.set_shape(ids.shape.concatenate([self.dim]))
        return tf.cast(found, self.compute_dtype)

    def _count_lookup(self, ids: tf.Tensor) -> None:
        if tf.executing_eagerly():
            return
        if not hasattr(self, "_looked_up"):
            self._self_setattr_tracking = False
            self._looked_up = weakref.WeakKeyDictionary()
            self._self_setattr_tracking = True
        graph = tf.compat.v1.get_default_graph()
        self._looked_up.setdefault(graph, []).append(tf.size(ids))

    def rows_looked_up(self) -> tf.Tensor | None:
        """Ids this layer has looked up so far in the graph being built (None: none).

        A bound on the rows of the table's gradient in that graph, the same at every step of
        fixed-size batches: the exchange pads to it (`trainer.embeddings.exchange`).
        """
        sizes = getattr(self, "_looked_up", {}).get(tf.compat.v1.get_default_graph())
        return tf.add_n(sizes) if sizes else None

    def full_table(self) -> tf.Tensor:
        """The whole `(num_buckets, dim)` table; reads every row (tests, diagnostics).

        Raises:
            ValueError: A model-parallel table split over several workers (each holds a part).
        """
        if self.model_parallel and self.workers.count > 1:
            raise ValueError(f"{self.name} is split over {self.workers.count} workers; this one "
                             f"holds rows {self.workers.index}::{self.workers.count}")
        return tf.concat([tf.convert_to_tensor(s) for s in self._shard_list], axis=0)

    def compute_output_shape(self, input_shape: tf.TensorShape) -> tf.TensorShape:
        return tf.TensorShape(input_shape).concatenate([self.dim])

    def get_config(self) -> dict:
        return {
            **super().get_config(), "num_buckets": self.num_buckets, "dim": self.dim,
            "num_shards": self.num_shards, "min_shard_rows": self.min_shard_rows,
            "max_shards": self.max_shards, "placement": self.placement,
            "exchange": self.exchange,
            "embeddings_initializer": keras.initializers.serialize(self.embeddings_initializer),
        }
