"""The cross-replica sum of embedding shard gradients: every table's rows in one all-gather.

Left to a Keras optimizer, each shard's gradient is its own exchange, and P = 8 shards cost
2.3x the step time of one (1e7 rows, two workers on localhost). Handing MultiWorkerMirrored-
Strategy a list of `tf.IndexedSlices` is not much better: it exchanges each one on its own
(all-gathers of its length, its values and its indices: three collectives per table, launched
one after another), so a model with 8 tables paid 24 round trips per step on top of the dense
all-reduce, and two workers on localhost trained 4.5x slower than one.

Here every table's gradient is packed into ONE float32 vector (a header of row counts, each
table's values flattened, each table's row ids as raw int64 bits) and exchanged with one
`ReplicaContext.all_gather` (public API: two collectives, the lengths and the padded data),
then unpacked into one `tf.IndexedSlices` per table over the rows of every replica (duplicate
rows are summed by the row-sparse optimizer) and split back per shard. Only replicated tables
come here: every worker applies the same rows to its own copy.

Each table's rows are padded to the number of ids the table looked up in the step
(`PartitionedEmbedding.rows_looked_up`), so the vector has the same length at every step of
fixed-size batches, on every worker. It must: with several steps per call of the train
function (a `tf.while_loop`), every iteration runs the same collective instance, whose shape
TensorFlow keeps from the first iteration; rows deduplicated by PCGrad or GradNorm changed
it from step to step and failed with "Shape mismatch in the collective instance".
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from trainer.embeddings.layer import owner
from trainer.embeddings.layout import locate, shard_sizes

log = logging.getLogger("multitower.trainer")
Gradient = tf.IndexedSlices | tf.Tensor
Pair = tuple[Gradient, tf.Variable]


def all_reduce_tables(pairs: Sequence[Pair]) -> list[Pair]:
    """Sums shard gradients over the replicas: one all-gather for every table's rows.

    Call it in replica context, on every replica with the same variables in the same order
    (the order of the collectives is then the same on every worker).

    Args:
        pairs: `(gradient, shard variable)`, no gradient None.

    Returns:
        `(gradient over every replica, shard variable)`. A table whose shards all had a
        `tf.IndexedSlices` gets one per shard: the rows of every replica (row numbers in the
        shard, an id once per replica that sent it). Any other gradient is summed as it is,
        in one all-reduce.
    """
    by_table: dict[int, dict[int, Pair]] = {}
    for grad, var in pairs:
        table, index = owner(var)
        if isinstance(grad, tf.IndexedSlices):
            by_table.setdefault(id(table), {})[index] = (grad, var)
    joined, rest, seen = [], [], set()  # joined: (table, its pairs in shard order)
    for grad, var in pairs:
        table, _ = owner(var)
        group = by_table.get(id(table), {})
        if len(group) != table.num_shards:
            rest.append((grad, var))
        elif id(table) not in seen:
            seen.add(id(table))
            joined.append((table, [group[i] for i in range(table.num_shards)]))
    out = []
    if joined:
        bounds = [table.rows_looked_up() for table, _ in joined]
        if any(b is None for b in bounds):  # traced once: a line per trace, not per step
            log.warning("no lookup of tables %s in this graph: their gradient rows travel "
                        "unpadded, which fails with several steps per call when a step's row "
                        "count changes", [t.name for t, _ in joined])
            bounds = None
        gathered = gather_rows([_table_rows(table, ordered) for table, ordered in joined],
                               bounds)
        for (table, ordered), rows in zip(joined, gathered, strict=True):
            out.extend(_split_by_shard(table, ordered, rows))
    if rest:
        context = tf.distribute.get_replica_context()
        summed = context.all_reduce(tf.distribute.ReduceOp.SUM, [g for g, _ in rest])
        out.extend(zip(summed, [v for _, v in rest], strict=True))
    return out


def gather_rows(tables: Sequence[tf.IndexedSlices],
                bounds: Sequence[int | tf.Tensor] | None = None) -> list[tf.IndexedSlices]:
    """Every replica's rows of each table, exchanged in one `all_gather`.

    Call it in replica context inside a `tf.function`, on every replica with the same tables
    in the same order.

    Args:
        tables: One `tf.IndexedSlices` per table: `values` `(n_t, dim_t)` (float32, or cast to
            it and back), `indices` `(n_t,)` int64 row ids, `dense_shape` set.
        bounds: Rows each table is padded to (>= its `n_t`, ints or int32 scalars), the same
            on every replica and at every step; None to send the rows unpadded (one step per
            call of the train function only).

    Returns:
        One `tf.IndexedSlices` per table: the rows of replica 0, then replica 1, ...
    """
    context = tf.distribute.get_replica_context()
    packed = pack_rows(tables, bounds)
    return unpack_rows(context.all_gather(packed, axis=0), tables,
                       context.num_replicas_in_sync, bounds)


def pack_rows(tables: Sequence[tf.IndexedSlices],
              bounds: Sequence[int | tf.Tensor] | None = None) -> tf.Tensor:
    """One float32 vector: row counts, then every table's values, then every table's ids.

    Counts (int32) and ids (int64) travel as their raw bits: a gather copies bytes and never
    computes on them, so they arrive exact. With `bounds`, table t's values and ids are
    padded with zeros to `bounds[t]` rows, and the vector's length depends on them only.

    Raises:
        tf.errors.InvalidArgumentError: (when run) a table has more rows than its bound.
    """
    counts = tf.stack([tf.shape(t.indices)[0] for t in tables])
    values, ids = [], []
    for t, table in enumerate(tables):
        rows = tf.reshape(tf.cast(table.values, tf.float32), [-1, table.values.shape[-1]])
        row_ids = tf.cast(table.indices, tf.int64)
        if bounds is not None:
            tf.debugging.assert_less_equal(counts[t], bounds[t],
                                           message="more gradient rows than looked-up ids")
            rows = tf.pad(rows, [[0, bounds[t] - counts[t]], [0, 0]])
            row_ids = tf.pad(row_ids, [[0, bounds[t] - counts[t]]])
        values.append(tf.reshape(rows, [-1]))
        ids.append(tf.reshape(tf.bitcast(row_ids, tf.float32), [-1]))
    return tf.concat([tf.bitcast(counts, tf.float32), *values, *ids], axis=0)


def unpack_rows(gathered: tf.Tensor, tables: Sequence[tf.IndexedSlices], replicas: int,
                bounds: Sequence[int | tf.Tensor] | None = None) -> list[tf.IndexedSlices]:
    """The inverse of `pack_rows` on `replicas` packed vectors placed end to end.

    Args:
        gathered: The concatenated packed vectors.
        tables: The tables as packed by this replica (their widths, dtypes and dense shapes).
        replicas: How many packed vectors `gathered` holds.
        bounds: The bounds given to `pack_rows`, or None.

    Returns:
        One `tf.IndexedSlices` per table with every replica's rows (padding dropped), in
        replica order.
    """
    dims = [int(t.values.shape[-1]) for t in tables]
    values: list[list[tf.Tensor]] = [[] for _ in tables]
    ids: list[list[tf.Tensor]] = [[] for _ in tables]
    start = tf.constant(0, tf.int32)
    for _ in range(replicas):
        counts = tf.bitcast(tf.slice(gathered, [start], [len(tables)]), tf.int32)
        start += len(tables)
        sent = counts if bounds is None else tf.cast(tf.stack(bounds), tf.int32)
        for t, dim in enumerate(dims):
            rows = tf.reshape(tf.slice(gathered, [start], [sent[t] * dim]), [-1, dim])
            values[t].append(rows[:counts[t]])
            start += sent[t] * dim
        for t in range(len(tables)):
            bits = tf.reshape(tf.slice(gathered, [start], [sent[t] * 2]), [-1, 2])
            ids[t].append(tf.bitcast(bits, tf.int64)[:counts[t]])
            start += sent[t] * 2
    return [
        tf.IndexedSlices(tf.cast(tf.concat(v, axis=0), t.values.dtype), tf.concat(i, axis=0),
                         t.dense_shape)
        for t, v, i in zip(tables, values, ids, strict=True)
    ]


def _table_rows(table: tf.Module, ordered: list[Pair]) -> tf.IndexedSlices:
    """A table's shard gradients as one `tf.IndexedSlices` over the table's ids."""
    offsets = np.cumsum([0] + shard_sizes(table.num_buckets, table.num_shards))
    return tf.IndexedSlices(
        tf.reshape(tf.concat([g.values for g, _ in ordered], axis=0), [-1, table.dim]),
        tf.concat([tf.cast(g.indices, tf.int64) + offsets[i]
                   for i, (g, _) in enumerate(ordered)], axis=0),
        tf.constant([table.num_buckets, table.dim], tf.int64))


def _split_by_shard(table: tf.Module, ordered: list[Pair], rows: tf.IndexedSlices
                    ) -> list[Pair]:
    """`rows` over the table's ids as one `tf.IndexedSlices` per shard (rows in the shard)."""
    if table.num_shards == 1:
        var = ordered[0][1]
        return [(tf.IndexedSlices(rows.values, rows.indices,
                                  tf.constant(var.shape.as_list(), tf.int64)), var)]
    shard, row = locate(rows.indices, table.num_buckets, table.num_shards)
    parts_rows = tf.dynamic_partition(row, shard, table.num_shards)
    parts = tf.dynamic_partition(rows.values, shard, table.num_shards)
    return [(tf.IndexedSlices(v, r, tf.constant(var.shape.as_list(), tf.int64)), var)
            for (_, var), r, v in zip(ordered, parts_rows, parts, strict=True)]
