"""The cross-replica sum of embedding shard gradients, one `tf.IndexedSlices` per table.

Left to a Keras optimizer, each shard's gradient is its own all-gather, and P = 8 shards cost
2.3x the step time of one (1e7 rows, two workers on localhost). Here a table whose every shard
has a `tf.IndexedSlices` travels as one `tf.IndexedSlices` over the table's ids, all tables in
one batched all-reduce, and is split back per shard afterwards. Only replicated tables come
here: every worker applies the same summed rows to its own copy.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from trainer.embeddings.layer import owner
from trainer.embeddings.layout import locate, shard_sizes

Gradient = tf.IndexedSlices | tf.Tensor
Pair = tuple[Gradient, tf.Variable]


def all_reduce_tables(pairs: Sequence[Pair]) -> list[Pair]:
    """Sums shard gradients over the replicas, in one all-reduce.

    Call it in replica context, on every replica with the same variables in the same order
    (the order of the collectives is then the same on every worker).

    Args:
        pairs: `(gradient, shard variable)`, no gradient None.

    Returns:
        `(summed gradient, shard variable)`, grouped by table: a table whose shards all had a
        `tf.IndexedSlices` gets one per shard (indices row numbers in the shard); any other
        gradient is summed as it is.
    """
    by_table: dict[int, dict[int, Pair]] = {}
    for grad, var in pairs:
        table, index = owner(var)
        if isinstance(grad, tf.IndexedSlices):
            by_table.setdefault(id(table), {})[index] = (grad, var)
    values, plan = [], []  # plan: (table, its pairs) for a joined table, or (None, [pair])
    joined = set()
    for grad, var in pairs:
        table, _ = owner(var)
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
