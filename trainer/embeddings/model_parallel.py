"""Model-parallel tables: worker w of N holds rows w, w + N, w + 2N, ... and serves them.

Layout ("mod"): global row g lives on worker `g % N` at local row `g // N`; worker w holds
`rows_on_worker(num_buckets, N, w)` rows in ONE plain variable of its own (`local_variable`),
never mirrored, so a table's training state is split N ways. A table of the same rows under
another placement or worker count is the same full table split another way: re-partitioning
goes through the full table (rows only, or rows and slots), never through a shard's position.

A lookup, in replica context inside a `tf.function`, on every worker at the same point:

- `all_to_all` (default): each worker buckets its ids by owner, pads every bucket to the step's
  id count with -1 (a fixed shape: inside the train function's `tf.while_loop` a collective
  keeps the shape of its first iteration), sends each owner its bucket (`CollectiveAllToAllV2`),
  the owners gather the rows of the ids that are not padding and send them back the same way:
  two collectives forward, one backward.
  The gradient is the same exchange backwards (all-to-all is its own adjoint), so an owner
  receives exactly the gradient rows of the ids it served. The op needs the group and instance
  keys and the ordering token of MultiWorkerMirroredStrategy's collective launcher: private
  attributes, read in ONE place (`_launcher_keys`), which fails loudly if they change.
- `all_reduce` (public API only): every worker's ids reach every worker (one all-reduce of a
  buffer where each worker fills its own slot), each owner fills the rows it owns into zeros,
  and one all-reduce sums the pieces; each worker keeps its slice. The gradient of the
  all-reduce is the all-reduce of the gradients (`ReplicaContext.all_reduce`'s own), so every
  owner receives every worker's gradient rows for the ids it owns: two collectives forward,
  one backward. (Id counts that differ by worker, as in an uneven last batch, take two
  all-gathers instead of the first all-reduce.)

Either way the forward values are copies (a row plus zeros is the row): the same bits as a
lookup in the whole table. The owner's gradient reaches its variable as `tf.IndexedSlices`
over the rows it served (`ResourceGather`'s own gradient), one entry per served id, and is
applied there by the row-sparse optimizer with no further exchange.
"""

from __future__ import annotations

import logging
from typing import NamedTuple

import tensorflow as tf

# Private module: `tf.Variable(...)` inside a strategy scope goes through the strategy's variable
# creator and becomes mirrored (one copy per worker, kept equal); a model-parallel shard must be
# this worker's alone, with a shape of its own.
from tensorflow.python.ops.resource_variable_ops import ResourceVariable

from multitower.errors import MultitowerError

log = logging.getLogger("multitower.trainer")


class ModelParallelError(MultitowerError, RuntimeError):
    """A model-parallel table cannot run as asked (the message says why)."""


class Workers(NamedTuple):
    """The workers a model-parallel table is split over, and which one this process is."""

    count: int
    index: int


def current_workers() -> Workers:
    """The worker count and this worker's index under the current strategy.

    Raises:
        ModelParallelError: A worker runs several replicas (several GPUs): model-parallel tables
            need one replica per worker.
    """
    strategy = tf.distribute.get_strategy()
    replicas = strategy.num_replicas_in_sync
    if replicas == 1:
        return Workers(1, 0)
    if len(strategy.extended.worker_devices) != 1:
        raise ModelParallelError(
            f"model_parallel tables need one replica per worker; this worker runs "
            f"{len(strategy.extended.worker_devices)} ({strategy.extended.worker_devices})")
    return Workers(replicas, int(strategy.cluster_resolver.task_id))


def rows_on_worker(num_buckets: int, workers: int, index: int) -> int:
    """Rows of a `num_buckets`-row table that worker `index` of `workers` holds."""
    return max(0, (num_buckets - index + workers - 1) // workers)


def local_variable(initial_value: tf.Tensor | callable, name: str, trainable: bool,
                   dtype: tf.DType = tf.float32) -> tf.Variable:
    """A variable of this worker only (not mirrored), on this worker's device."""
    if not tf.distribute.has_strategy():
        with tf.init_scope():
            return ResourceVariable(initial_value, trainable=trainable, name=name, dtype=dtype)
    strategy = tf.distribute.get_strategy()
    # `distribute_strategy` marks it as created in the strategy's scope (Keras' compile checks
    # every variable), as a mirrored variable's own per-worker components are.
    with tf.init_scope(), tf.device(strategy.extended.worker_devices[0]):
        return ResourceVariable(initial_value, trainable=trainable, name=name, dtype=dtype,
                                distribute_strategy=strategy)


def split_rows(full: tf.Tensor, workers: int, index: int) -> tf.Tensor:
    """Worker `index`'s rows of a whole table (or of a whole slot): `full[index::workers]`."""
    return full[index::workers]


def lookup(variable: tf.Variable, ids: tf.Tensor, workers: Workers, exchange: str
           ) -> tf.Tensor:
    """Rows of the whole table for `ids` (any shape, int64 in `[0, rows)`), from their owners.

    Args:
        variable: This worker's rows (`local_variable`).
        ids: Global row ids; every worker calls with ids of the same static shape.
        workers: The split (`current_workers()`).
        exchange: `all_to_all` or `all_reduce`.

    Returns:
        `ids.shape + (dim,)`.
    """
    flat = tf.reshape(tf.cast(ids, tf.int64), [-1])
    dim = variable.shape[-1]
    if workers.count == 1:
        found = variable.sparse_read(flat)
    elif tf.distribute.get_replica_context() is None and not tf.executing_eagerly():
        # Cross-replica context: Keras building the functional model on symbolic inputs, where
        # only the output's shape is wanted and no collective can run.
        found = tf.zeros(tf.stack([tf.size(flat), dim]), variable.dtype)
    elif (tf.executing_eagerly()
          or tf.distribute.get_strategy().num_replicas_in_sync != workers.count):
        raise ModelParallelError(
            f"{variable.name} holds 1/{workers.count} of its table's rows: its lookups need "
            f"every worker, inside strategy.run in a tf.function (as training runs them); "
            f"score with the stitched table instead (the export, or restore_network)")
    elif exchange == "all_to_all":
        found = _all_to_all_lookup(variable, flat, workers)
    else:
        found = _all_reduce_lookup(variable, flat, workers)
    out = tf.reshape(found, tf.concat([tf.shape(ids), [dim]], axis=0))
    out.set_shape(ids.shape.concatenate([dim]))
    return out


def _all_reduce_lookup(variable: tf.Variable, flat: tf.Tensor, workers: Workers) -> tf.Tensor:
    context = tf.distribute.get_replica_context()
    n = flat.shape[0]
    if n is None:  # id counts differ by worker (an uneven last batch): gather them first
        sizes = context.all_gather(tf.reshape(tf.size(flat), [1]), axis=0)
        every = context.all_gather(flat, axis=0)  # (sum of sizes,)
        start, n = tf.reduce_sum(sizes[:workers.index]), tf.size(flat)
    else:  # one all-reduce: each worker fills its own slot of the buffer with its ids
        start = workers.index * n
        every = context.all_reduce(tf.distribute.ReduceOp.SUM, tf.pad(
            flat, [[start, (workers.count - 1 - workers.index) * n]]))
    owned = tf.where(tf.equal(every % workers.count, workers.index))[:, 0]
    rows = variable.sparse_read(tf.gather(every, owned) // workers.count)
    pieces = tf.scatter_nd(owned[:, None], rows,
                           tf.stack([tf.size(every, out_type=tf.int64),
                                     tf.cast(variable.shape[-1], tf.int64)]))
    summed = context.all_reduce(tf.distribute.ReduceOp.SUM, pieces)
    return summed[start:start + n]


class _LauncherKeys(NamedTuple):
    group_size: int
    group_key: int
    instance_key: tf.Tensor
    ordering_token: tf.Tensor
    device: str
    timeout: float


def _launcher_keys() -> _LauncherKeys:
    """The keys of this replica's collective launcher, for an op MWMS does not offer.

    MultiWorkerMirroredStrategy (TF 2.16) launches its collectives through
    `strategy.extended._cross_device_ops._launchers[i]` (`CollectiveReplicaLauncher`), which
    holds the group key and size, hands out instance keys (captured at call time, so a retraced
    function never reuses one) and orders collectives with a resource token. An all-to-all must
    use the same ones to take its place in the sequence every worker runs.

    Raises:
        ModelParallelError: The attributes are not there (another TensorFlow version): set
            `model.embeddings.exchange: all_reduce`, which uses public API only.
    """
    strategy = tf.distribute.get_strategy()
    try:
        launcher = strategy.extended._cross_device_ops._launchers[0]  # noqa: SLF001
        return _LauncherKeys(
            int(launcher._group_size), int(launcher._group_key),  # noqa: SLF001
            launcher._next_instance_key(), launcher._get_ordering_token(),  # noqa: SLF001
            launcher._device, launcher._options.timeout_seconds or 0.0)  # noqa: SLF001
    except (AttributeError, IndexError, TypeError) as err:
        raise ModelParallelError(
            f"the all_to_all exchange reads private attributes of MultiWorkerMirroredStrategy's "
            f"collective launcher, which this TensorFlow ({tf.__version__}) does not have "
            f"({err}); set model.embeddings.exchange: all_reduce") from err


def all_to_all(x: tf.Tensor) -> tf.Tensor:
    """Block i of `x` (split along axis 0 into N equal blocks) goes to worker i.

    Returns, on worker r, the blocks every worker sent to r, in worker order. Differentiable:
    the gradient is the same exchange of the gradient.
    """

    @tf.custom_gradient
    def exchange(value: tf.Tensor) -> tuple[tf.Tensor, callable]:
        def backward(upstream: tf.Tensor) -> tf.Tensor:
            return _raw_all_to_all(upstream)
        return _raw_all_to_all(value), backward

    if x.dtype.is_floating:
        return exchange(x)
    return _raw_all_to_all(x)


def _raw_all_to_all(x: tf.Tensor) -> tf.Tensor:
    keys = _launcher_keys()
    shape = tf.shape(x)
    with tf.device(keys.device):
        # The op sends block i of its first axis to worker i: that axis must be the group size.
        # The identity puts the input on this device (a collective needs one in a tf.function).
        blocks = tf.identity(tf.reshape(x, tf.concat([[keys.group_size, -1], shape[1:]], 0)))
        out = tf.raw_ops.CollectiveAllToAllV2(
            input=blocks, group_size=keys.group_size, group_key=keys.group_key,
            instance_key=keys.instance_key, ordering_token=[keys.ordering_token],
            communication_hint="auto", timeout_seconds=keys.timeout)
    out = tf.reshape(out, shape)
    out.set_shape(x.shape)
    return out


def _all_to_all_lookup(variable: tf.Variable, flat: tf.Tensor, workers: Workers) -> tf.Tensor:
    count = workers.count
    n = flat.shape[0]
    if n is None:  # the same bucket size on every worker: the largest id count of any
        context = tf.distribute.get_replica_context()
        n = tf.reduce_max(context.all_gather(tf.reshape(tf.size(flat), [1]), axis=0))
    owner = tf.cast(flat % count, tf.int32)
    order = tf.argsort(owner, stable=True)
    sorted_owner = tf.gather(owner, order)
    sent = tf.math.bincount(owner, minlength=count, maxlength=count)  # ids for each owner
    starts = tf.cumsum(sent, exclusive=True)
    # slot of each (sorted) id in the (owners, n) send buffer; empty slots hold -1
    slot = tf.cast(sorted_owner, tf.int64) * tf.cast(n, tf.int64) + tf.cast(
        tf.range(tf.size(flat)) - tf.gather(starts, sorted_owner), tf.int64)
    buffer = tf.stack([tf.cast(count, tf.int64) * tf.cast(n, tf.int64)])
    requests = tf.tensor_scatter_nd_update(tf.fill(buffer, tf.constant(-1, tf.int64)),
                                           slot[:, None], tf.gather(flat, order) // count)
    received = all_to_all(requests)  # block q: the local rows worker q asks of this one
    valid = tf.where(received >= 0)[:, 0]
    rows = variable.sparse_read(tf.gather(received, valid))
    dim = tf.cast(variable.shape[-1], tf.int64)
    replies = tf.scatter_nd(valid[:, None], rows, tf.concat([buffer, [dim]], axis=0))
    answered = all_to_all(replies)  # block q: worker q's rows for the ids sent to it
    in_order = tf.gather(answered, slot)  # the sorted ids' rows
    return tf.scatter_nd(tf.cast(order, tf.int64)[:, None], in_order,
                         tf.stack([tf.size(flat, out_type=tf.int64), dim]))
