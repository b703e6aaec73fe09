"""Partitioned embedding tables with row-sparse updates, and their checkpoints.

A table of `num_buckets` rows is split row-wise into P shard variables with the "div" layout (as
`tf.nn.embedding_lookup` partitions a list of tables): contiguous ranges, the first
`num_buckets % P` shards one row longer. Id `i` lives in shard `s`, row `i - offset[s]`.

Why the lookup reads the replica's own copy: under MultiWorkerMirroredStrategy, `tf.gather` on a
MirroredVariable in replica context turns the variable into a tensor (`ReadVariableOp` of the
whole table, then `GatherV2`), so a step costs O(rows). Gathering from the on-device component
(`ResourceGather`) reads only the looked-up rows; the tape still records it against the
MirroredVariable's handle, so the gradient reaches the optimizer as `tf.IndexedSlices`, which
MWMS all-gathers and each worker applies identically.

Why a second optimizer: tf-keras Adam (and SGD, which always keeps a momentum slot) decays the
slots of every row on every step, so an update is O(rows) and rows outside the batch keep moving.
Embedding shards therefore get a row-sparse optimizer (`make_embedding_optimizer`) whose update
touches only the received rows; `apply_split` routes each gradient to the right optimizer. It
also sums a table's shard gradients over workers as one `tf.IndexedSlices` over the table's ids:
left to the optimizer, each shard is its own all-gather, and P = 8 shards cost 2.3x the step
time of one (1e7 rows, two workers on localhost).

Checkpoints name the shards `part_<i>_of_<P>`: a checkpoint written with another P matches no
shard by name, and `restore_checkpoint` re-partitions the table and its optimizer slots from the
old shards (or, if asked not to, stops and names both P values) instead of failing on shapes.
"""

from __future__ import annotations

import logging
import re
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import tensorflow as tf
import tf_keras as keras
from tensorflow.core.protobuf import trackable_object_graph_pb2

log = logging.getLogger("multitower.trainer")

DEFAULT_MIN_SHARD_ROWS = 1 << 20
DEFAULT_MAX_SHARDS = 8
EMBEDDING_OPTIMIZERS = ("adagrad", "ftrl", "lazy_adam", "sgd")
DEFAULT_EMBEDDING_OPTIMIZER = "adagrad"
_TAG = "_multitower_embedding"  # set on every shard variable; see `is_embedding_variable`
_SHARD_NAME = re.compile(r"^part_(\d+)_of_(\d+)$")


def resolve_num_shards(
    num_buckets: int, num_shards: int | None = None,
    min_shard_rows: int = DEFAULT_MIN_SHARD_ROWS, max_shards: int = DEFAULT_MAX_SHARDS,
) -> int:
    """P: `num_shards` when given, else as many shards as keep each >= `min_shard_rows` rows
    (at least 1, at most `max_shards`), like TF's MinSizePartitioner."""
    if num_shards is not None:
        if not 1 <= num_shards <= num_buckets:
            raise ValueError(f"num_shards must be in [1, num_buckets={num_buckets}], got "
                             f"{num_shards}")
        return int(num_shards)
    if min_shard_rows < 1 or max_shards < 1:
        raise ValueError(f"min_shard_rows and max_shards must be >= 1, got {min_shard_rows} "
                         f"and {max_shards}")
    return int(max(1, min(max_shards, num_buckets // min_shard_rows)))


def shard_sizes(num_buckets: int, num_shards: int) -> list[int]:
    """Rows per shard in the "div" layout: `[3, 3, 3, 2, 2]` for 13 rows in 5 shards."""
    base, extra = divmod(num_buckets, num_shards)
    return [base + 1 if s < extra else base for s in range(num_shards)]


def locate(ids: tf.Tensor, num_buckets: int, num_shards: int) -> tuple[tf.Tensor, tf.Tensor]:
    """`(shard, row)` of each id (int64, in `[0, num_buckets)`); shard is int32."""
    base, extra = divmod(num_buckets, num_shards)
    threshold = extra * (base + 1)  # ids below it live in the longer shards
    ids = tf.cast(ids, tf.int64)
    low = ids < threshold
    rest = ids - threshold
    shard = tf.where(low, ids // (base + 1), extra + rest // base)
    row = tf.where(low, ids % (base + 1), rest % base)
    return tf.cast(shard, tf.int32), row


def local_copy(variable: tf.Variable) -> tf.Variable:
    """The component of a distributed variable on the current replica's device (itself when
    not distributed). Reading it reads this device's memory only, with no synchronization."""
    if not isinstance(variable, tf.distribute.DistributedValues):
        return variable
    components = variable.distribute_strategy.experimental_local_results(variable)
    if len(components) == 1:  # MWMS with one device per worker
        return components[0]
    device = variable.device  # in replica or update context: the current replica's component
    return next((c for c in components if c.device == device), components[0])


def is_embedding_variable(variable: tf.Variable) -> bool:
    """True for the shard variables of a `PartitionedEmbedding` (mirrored or not)."""
    return getattr(variable, _TAG, None) is not None


def embedding_variables(model: tf.Module) -> list[tf.Variable]:
    """Every shard variable of every `PartitionedEmbedding` in `model`, in layer order."""
    layers = [model] + list(model.submodules)
    return [v for layer in layers if isinstance(layer, PartitionedEmbedding) for v in layer.shards]


@keras.utils.register_keras_serializable(package="multitower")
class PartitionedEmbedding(keras.layers.Layer):
    """Hashes raw categorical values into `num_buckets` rows of a table split into P shards.

    Hashing is `HashedEmbedding`'s (`tf.strings.to_hash_bucket_fast`; integers through their
    decimal string, so `7` and `"7"` share a row), so the layer is a drop-in replacement. The
    row layout is described in the module docstring; P is `num_shards` or, if None, as many
    shards as keep each >= `min_shard_rows` rows, at most `max_shards`.

    Args:
      num_buckets: rows of the whole table (>= 1).
      dim: embedding width (>= 1).
      num_shards: P, in `[1, num_buckets]`; None to derive it from the two limits below.
      min_shard_rows: smallest shard the derived P allows.
      max_shards: largest derived P.
      embeddings_initializer: initializer of every shard.

    Input shape: any shape, usually `(batch,)`, of tf.string or an integer dtype.
    Output shape: the input shape + `(dim,)`, e.g. `(batch, dim)`.
    """

    def __init__(
        self, num_buckets: int, dim: int, num_shards: int | None = None,
        min_shard_rows: int = DEFAULT_MIN_SHARD_ROWS, max_shards: int = DEFAULT_MAX_SHARDS,
        embeddings_initializer="uniform", **kwargs,
    ):
        super().__init__(**kwargs)
        if num_buckets < 1 or dim < 1:
            raise ValueError(f"num_buckets and dim must be >= 1, got {num_buckets} and {dim}")
        self.num_buckets = int(num_buckets)
        self.dim = int(dim)
        self.num_shards = resolve_num_shards(num_buckets, num_shards, min_shard_rows, max_shards)
        self.min_shard_rows = int(min_shard_rows)
        self.max_shards = int(max_shards)
        # "uniform" is HashedEmbedding's RandomUniform(-0.05, 0.05).
        self.embeddings_initializer = keras.initializers.get(embeddings_initializer)

    @property
    def shards(self) -> list[tf.Variable]:
        """The shard variables, in row order (empty before the layer is built)."""
        return list(getattr(self, "_shard_list", []))

    def build(self, input_shape):
        shards = []
        for i, rows in enumerate(shard_sizes(self.num_buckets, self.num_shards)):
            # The name carries P, so a checkpoint written with another P matches no shard
            # (see `restore_checkpoint`) rather than one of the wrong shape.
            shard = self.add_weight(
                name=f"part_{i}_of_{self.num_shards}", shape=(rows, self.dim),
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

    def _shard_initializer(self, index: int) -> keras.initializers.Initializer:
        # A tf-keras initializer instance returns the same values on every call, which would
        # make same-sized shards identical: a fresh instance per shard, its seed (if any) offset.
        config = self.embeddings_initializer.get_config()
        if config.get("seed") is not None:
            config["seed"] += index
        return self.embeddings_initializer.__class__.from_config(config)

    def call(self, values: tf.Tensor) -> tf.Tensor:
        if values.dtype != tf.string:
            values = tf.strings.as_string(values)
        return self.lookup(tf.strings.to_hash_bucket_fast(values, self.num_buckets))

    def lookup(self, ids: tf.Tensor) -> tf.Tensor:
        """Embeddings of hashed ids (int, in `[0, num_buckets)`); shape `ids.shape + (dim,)`."""
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

    def full_table(self) -> tf.Tensor:
        """The whole `(num_buckets, dim)` table; reads every row (tests, diagnostics)."""
        return tf.concat([tf.convert_to_tensor(s) for s in self._shard_list], axis=0)

    def compute_output_shape(self, input_shape):
        return tf.TensorShape(input_shape).concatenate([self.dim])

    def get_config(self) -> dict:
        return {
            **super().get_config(), "num_buckets": self.num_buckets, "dim": self.dim,
            "num_shards": self.num_shards, "min_shard_rows": self.min_shard_rows,
            "max_shards": self.max_shards,
            "embeddings_initializer": keras.initializers.serialize(self.embeddings_initializer),
        }


# Row-sparse optimizers ------------------------------------------------------------------------


@keras.utils.register_keras_serializable(package="multitower")
class LazyAdam(keras.optimizers.legacy.Adam):
    """Adam whose sparse update touches only the rows it receives.

    Dense gradients get tf-keras' Adam update. For a `tf.IndexedSlices` gradient (indices made
    unique by the base class) only those rows of `m`, `v` and the variable change:
    `m_r = b1 m_r + (1-b1) g`, `v_r = b2 v_r + (1-b2) g^2`,
    `w_r -= lr sqrt(1-b2^t)/(1-b1^t) m_r / (sqrt(v_r) + eps)`; the bias correction counts
    this optimizer's steps, so a rare row's moments are not decayed for the steps it missed.
    """

    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7,
                 name="LazyAdam", **kwargs):
        if kwargs.pop("amsgrad", False):
            raise ValueError("LazyAdam does not support amsgrad")
        super().__init__(learning_rate=learning_rate, beta_1=beta_1, beta_2=beta_2,
                         epsilon=epsilon, amsgrad=False, name=name, **kwargs)

    def _resource_apply_sparse(self, grad, var, indices, apply_state=None):
        var_device, var_dtype = var.device, var.dtype.base_dtype
        coefficients = (apply_state or {}).get((var_device, var_dtype)) or (
            self._fallback_apply_state(var_device, var_dtype))
        # The slots' own components: gathering from a mirrored slot would read all of it.
        m = local_copy(self.get_slot(var, "m"))
        v = local_copy(self.get_slot(var, "v"))
        m_rows = (coefficients["beta_1_t"] * m.sparse_read(indices)
                  + coefficients["one_minus_beta_1_t"] * grad)
        v_rows = (coefficients["beta_2_t"] * v.sparse_read(indices)
                  + coefficients["one_minus_beta_2_t"] * tf.square(grad))
        step = coefficients["lr"] * m_rows / (tf.sqrt(v_rows) + coefficients["epsilon"])
        return tf.group(
            m.scatter_update(tf.IndexedSlices(m_rows, indices)),
            v.scatter_update(tf.IndexedSlices(v_rows, indices)),
            local_copy(var).scatter_sub(tf.IndexedSlices(step, indices)),
        )


def make_embedding_optimizer(name: str, learning_rate: float) -> keras.optimizers.Optimizer:
    """A row-sparse optimizer for embedding shards; create it inside `strategy.scope()`.

    Args:
      name: `adagrad` (legacy tf-keras Adagrad), `ftrl` (legacy Ftrl), `lazy_adam`
        (`LazyAdam`) or `sgd` (legacy SGD without momentum).
      learning_rate: > 0.
    """
    if not learning_rate > 0:
        raise ValueError(f"learning_rate must be > 0, got {learning_rate}")
    legacy = keras.optimizers.legacy
    makers = {
        "adagrad": lambda: legacy.Adagrad(learning_rate, name="EmbeddingAdagrad"),
        "ftrl": lambda: legacy.Ftrl(learning_rate, name="EmbeddingFtrl"),
        "lazy_adam": lambda: LazyAdam(learning_rate, name="EmbeddingLazyAdam"),
        "sgd": lambda: legacy.SGD(learning_rate, name="EmbeddingSGD"),
    }
    if name not in makers:
        raise ValueError(f"unknown embedding optimizer {name!r}; choose one of "
                         f"{list(EMBEDDING_OPTIMIZERS)}")
    return makers[name]()


def apply_split(
    dense_optimizer: keras.optimizers.Optimizer,
    sparse_optimizer: keras.optimizers.Optimizer,
    grads_and_vars: Iterable[tuple[tf.Tensor | tf.IndexedSlices | None, tf.Variable]],
) -> None:
    """Applies embedding shards' gradients with `sparse_optimizer`, the rest with
    `dense_optimizer`.

    Call it where `optimizer.apply_gradients` would be called: in replica context under a
    strategy, or with no strategy. Under a strategy of several replicas the shards' gradients
    are summed over replicas here, one `tf.IndexedSlices` per table in one batched all-reduce,
    so a table of P shards costs one all-gather, not P; the dense optimizer all-reduces its
    own. The order of the collectives is the same on every worker.
    """
    dense, sparse = [], []
    for grad, var in grads_and_vars:
        if not is_embedding_variable(var):
            dense.append((grad, var))
        elif grad is not None:
            if not isinstance(grad, tf.IndexedSlices):
                # Still correct, but the update reads and writes every row of the table.
                log.warning("the gradient of embedding shard %s is dense, not tf.IndexedSlices",
                            var.name)
            sparse.append((grad, var))
    if dense:
        dense_optimizer.apply_gradients(dense)
    if not sparse:
        return
    if not tf.distribute.has_strategy() or (
            tf.distribute.get_strategy().num_replicas_in_sync == 1):
        sparse_optimizer.apply_gradients(sparse)
        return
    if tf.distribute.in_cross_replica_context():
        raise RuntimeError("apply_split must run in replica context (inside strategy.run, as "
                           "Keras runs train_step)")
    sparse_optimizer.apply_gradients(_all_reduce_tables(sparse),
                                     experimental_aggregate_gradients=False)


def _owner(variable: tf.Variable) -> tuple[PartitionedEmbedding, int]:
    """The table a shard variable belongs to, and its index there."""
    table, index = getattr(variable, _TAG)
    return table(), index


def _all_reduce_tables(pairs: list) -> list:
    """Sums shard gradients over replicas: a table whose every shard has a `tf.IndexedSlices`
    travels as one `tf.IndexedSlices` over the table's ids, split back after the all-reduce."""
    by_table: dict[int, dict[int, tuple]] = {}
    for grad, var in pairs:
        table, index = _owner(var)
        if isinstance(grad, tf.IndexedSlices):
            by_table.setdefault(id(table), {})[index] = (grad, var)
    values, plan = [], []  # plan: (table, its pairs) for a joined table, or (None, [pair])
    joined = set()
    for grad, var in pairs:
        table, _ = _owner(var)
        if id(table) in joined:
            continue
        group = by_table.get(id(table), {})
        if len(group) == table.num_shards:
            joined.add(id(table))
            ordered = [group[i] for i in range(table.num_shards)]
            offsets = np.cumsum([0] + shard_sizes(table.num_buckets, table.num_shards))
            values.append(tf.IndexedSlices(
                tf.concat([g.values for g, _ in ordered], axis=0),
                tf.concat([tf.cast(g.indices, tf.int64) + offsets[i]
                           for i, (g, _) in enumerate(ordered)], axis=0),
                tf.constant([table.num_buckets, table.dim], tf.int64)))
            plan.append((table, ordered))
        else:
            values.append(grad)
            plan.append((None, [(grad, var)]))
    reduced = tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, values)
    out = []
    for summed, (table, group) in zip(reduced, plan, strict=True):
        if table is None:
            out.append((summed, group[0][1]))
            continue
        shard, row = locate(summed.indices, table.num_buckets, table.num_shards)
        rows = tf.dynamic_partition(row, shard, table.num_shards)
        parts = tf.dynamic_partition(summed.values, shard, table.num_shards)
        for (_, var), r, v in zip(group, rows, parts, strict=True):
            out.append((tf.IndexedSlices(v, r, tf.constant(var.shape.as_list(), tf.int64)), var))
    return out


# Checkpoints written with another number of shards --------------------------------------------


class PartitionMismatchError(ValueError):
    """A checkpoint's table was written with another number of shards (or cannot be mapped)."""


@dataclass(frozen=True)
class Repartition:
    """One table restored from a checkpoint written with another number of shards."""

    layer: str
    old_shards: int
    new_shards: int
    slots: tuple[str, ...]  # optimizer slots re-partitioned with it


def _value_key(node) -> str:
    return next(a.checkpoint_key for a in node.attributes if a.name == "VARIABLE_VALUE")


def _match_live_objects(graph, root) -> dict[int, object]:
    """Node id in the checkpoint's object graph -> the live object at the same path."""
    live = {0: root}
    queue = [0]
    while queue:
        node_id = queue.pop()
        children = tf.train.TrackableView.children(live[node_id])
        for ref in graph.nodes[node_id].children:
            child = children.get(ref.local_name)
            if child is not None and ref.node_id not in live:
                live[ref.node_id] = child
                queue.append(ref.node_id)
    return live


def _old_shards(graph, node_id: int, layer: PartitionedEmbedding) -> list[int]:
    """The checkpoint node ids of a layer's shards, in row order."""
    found = {}
    for ref in graph.nodes[node_id].children:
        match = _SHARD_NAME.match(ref.local_name)
        if match:
            found[(int(match[1]), int(match[2]))] = ref.node_id
    if not found:
        names = sorted(ref.local_name for ref in graph.nodes[node_id].children)
        raise PartitionMismatchError(
            f"the checkpoint holds no shards of layer {layer.name!r} (it has {names}: written "
            "before the table was partitioned?); train into a new model_dir")
    counts = {p for _, p in found}
    if len(counts) != 1 or sorted(i for i, _ in found) != list(range(counts.pop())):
        raise PartitionMismatchError(
            f"checkpoint shards of layer {layer.name!r} are incomplete or mixed: "
            f"{sorted(f'part_{i}_of_{p}' for i, p in found)}")
    return [found[key] for key in sorted(found)]


def _check_rows(shapes: Sequence[Sequence[int]], layer: PartitionedEmbedding, what: str) -> None:
    rows, dims = sum(shape[0] for shape in shapes), {shape[1] for shape in shapes}
    if dims != {layer.dim} or rows != layer.num_buckets:
        raise PartitionMismatchError(
            f"{what} of layer {layer.name!r} was saved as a {rows} x {'/'.join(map(str, dims))} "
            f"table, the model's is {layer.num_buckets} x {layer.dim}: hashed ids differ, so it "
            "cannot be re-partitioned; train into a new model_dir")


def _assign_rows(variables: Sequence[tf.Variable], old_parts: Sequence[np.ndarray]) -> None:
    """Concatenates the old shards and splits them by the new shards' rows."""
    table = np.concatenate(old_parts, axis=0)
    bounds = np.cumsum([v.shape[0] for v in variables])[:-1]
    for variable, value in zip(variables, np.split(table, bounds), strict=True):
        variable.assign(value)


def restore_checkpoint(
    checkpoint: tf.train.Checkpoint, path: str, allow_repartition: bool = True,
) -> list[Repartition]:
    """Restores `path` into `checkpoint`, re-partitioning tables saved with another P.

    Every table whose P matches is restored as usual; for the others the old shards (and the
    row-sparse optimizer's slots of them) are read from the file, concatenated and split into
    the model's shards, whose slots are created for that (slots of an optimizer `checkpoint`
    does not hold are left out, as for a model restored to be evaluated). Then, as
    `assert_existing_objects_matched` does, every variable of the live objects must have a value
    in the checkpoint. Everything is checked before anything is restored. Call it after the
    model is built (and a non-legacy dense optimizer built); under MultiWorkerMirroredStrategy
    every worker calls it and reads the file.

    Args:
      checkpoint: the live `tf.train.Checkpoint` (model, optimizers, ...).
      path: a checkpoint prefix, e.g. from `tf.train.latest_checkpoint`.
      allow_repartition: if False, a different P raises `PartitionMismatchError` naming both.

    Returns:
      The tables that were re-partitioned (empty when every P matched).
    """
    reader = tf.train.load_checkpoint(path)
    graph = trackable_object_graph_pb2.TrackableObjectGraph()
    graph.ParseFromString(reader.get_tensor("_CHECKPOINTABLE_OBJECT_GRAPH"))
    live = _match_live_objects(graph, checkpoint)
    plans = []  # (layer, old shard node ids)
    for node_id, obj in live.items():
        if isinstance(obj, PartitionedEmbedding) and obj.built:
            old = _old_shards(graph, node_id, obj)
            if len(old) != obj.num_shards:
                if not allow_repartition:
                    raise PartitionMismatchError(
                        f"layer {obj.name!r}: the checkpoint {path} holds its table in "
                        f"{len(old)} shards, the model has {obj.num_shards}; keep "
                        f"num_shards={len(old)} or allow re-partitioning")
                plans.append((obj, old))
    # slot_variables hang off each optimizer's node: shard node -> {(optimizer node, slot): node}
    slots: dict[int, dict[tuple[int, str], int]] = {}
    for node_id, node in enumerate(graph.nodes):
        for ref in node.slot_variables:
            slots.setdefault(ref.original_variable_node_id, {})[(node_id, ref.slot_name)] = (
                ref.slot_variable_node_id)
    # Everything is checked before anything is restored.
    shapes = reader.get_variable_to_shape_map()
    work = []  # (layer, old shard nodes, [(optimizer, slot name, old slot nodes)])
    for layer, old in plans:
        _check_rows([shapes[_value_key(graph.nodes[n])] for n in old], layer, "the table")
        found = []
        for optimizer_node, slot_name in sorted(set().union(*(slots.get(n, {}) for n in old))):
            optimizer = live.get(optimizer_node)
            if optimizer is None:  # e.g. a model restored for evaluation: weights only
                continue
            if not isinstance(optimizer, keras.optimizers.legacy.Optimizer):
                raise PartitionMismatchError(
                    f"the checkpoint holds optimizer slots of layer {layer.name!r} for an "
                    "optimizer the model does not have as a legacy (row-sparse) optimizer; "
                    "use the embedding optimizer the checkpoint was written with")
            # The slots the optimizer keeps for the new shards, to receive the old rows.
            optimizer._create_all_weights(layer.shards)
            if slot_name not in optimizer.get_slot_names():
                raise PartitionMismatchError(
                    f"the checkpoint holds slot {slot_name!r} of layer {layer.name!r}, but "
                    f"{type(optimizer).__name__} keeps {optimizer.get_slot_names()}; use the "
                    "embedding optimizer the checkpoint was written with")
            nodes = [slots.get(n, {}).get((optimizer_node, slot_name)) for n in old]
            if None in nodes:
                raise PartitionMismatchError(f"slot {slot_name!r} of layer {layer.name!r} is "
                                             "missing for some of its checkpoint shards")
            _check_rows([shapes[_value_key(graph.nodes[n])] for n in nodes], layer,
                        f"slot {slot_name!r}")
            found.append((optimizer, slot_name, nodes))
        work.append((layer, old, found))
    status = checkpoint.restore(path)
    if not plans:
        # Values of objects the model does not have (an evaluation model has no optimizer)
        # are left unread, as `expect_partial` says.
        status.assert_existing_objects_matched().expect_partial()
        return []
    done = []
    for layer, old, found in work:
        _assign_rows(layer.shards, [reader.get_tensor(_value_key(graph.nodes[n])) for n in old])
        for optimizer, slot_name, nodes in found:
            _assign_rows([optimizer.get_slot(s, slot_name) for s in layer.shards],
                         [reader.get_tensor(_value_key(graph.nodes[n])) for n in nodes])
        names = tuple(slot_name for _, slot_name, _ in found)
        done.append(Repartition(layer.name, len(old), layer.num_shards, names))
        log.info("re-partitioned table %s from %d to %d shards (slots: %s)", layer.name,
                 len(old), layer.num_shards, ", ".join(names) or "none")
    _assert_all_matched(graph, checkpoint, plans)
    status.expect_partial()
    return done


def _assert_all_matched(graph, root, plans) -> None:
    """`assert_existing_objects_matched` for a restore that bypassed the re-partitioned shards:
    every variable of the live objects, but those shards, has a value in the checkpoint."""
    matched = {id(obj) for obj in _match_live_objects(graph, root).values()}
    new = {id(s) for layer, _ in plans for s in layer.shards}
    if isinstance(root, tf.train.Checkpoint):  # `Checkpoint.write` leaves the counter out
        new.add(id(root.save_counter))
    unmatched = [v.name for v in tf.train.TrackableView(root).descendants()
                 if isinstance(v, tf.Variable) and id(v) not in matched | new]
    if unmatched:
        raise PartitionMismatchError(f"model variables not in the checkpoint: {unmatched[:10]}")
