"""The "div" row layout of a table split into P shard variables.

A table of `num_buckets` rows is split row-wise into P shards as `tf.nn.embedding_lookup`
partitions a list of tables: contiguous ranges, the first `num_buckets % P` shards one row
longer. Id `i` lives in shard `s`, row `i - offset[s]`.
"""

from __future__ import annotations

import tensorflow as tf

DEFAULT_MIN_SHARD_ROWS = 1 << 20
DEFAULT_MAX_SHARDS = 8


def resolve_num_shards(
    num_buckets: int, num_shards: int | None = None,
    min_shard_rows: int = DEFAULT_MIN_SHARD_ROWS, max_shards: int = DEFAULT_MAX_SHARDS,
) -> int:
    """P for a table of `num_buckets` rows.

    Args:
        num_buckets: Rows of the whole table.
        num_shards: P itself, in `[1, num_buckets]`; None to derive it from the limits below.
        min_shard_rows: The derived P keeps every shard at least this long (like TF's
            MinSizePartitioner), with at least one shard.
        max_shards: The largest derived P.

    Returns:
        `num_shards` when given, else `max(1, min(max_shards, num_buckets // min_shard_rows))`.

    Raises:
        ValueError: `num_shards` is out of range, or a limit is below 1.
    """
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
    """Rows per shard in the "div" layout: `[3, 3, 3, 2, 2]` for 13 rows in 5 shards.

    Args:
        num_buckets: Rows of the whole table.
        num_shards: P.

    Returns:
        P row counts, longest first, summing to `num_buckets`.
    """
    base, extra = divmod(num_buckets, num_shards)
    return [base + 1 if s < extra else base for s in range(num_shards)]


def locate(ids: tf.Tensor, num_buckets: int, num_shards: int) -> tuple[tf.Tensor, tf.Tensor]:
    """Where each id lives.

    Args:
        ids: Integer ids in `[0, num_buckets)`, any shape.
        num_buckets: Rows of the whole table.
        num_shards: P.

    Returns:
        `(shard, row)`, both of `ids`' shape: the shard index (int32) and the row in it (int64).
    """
    base, extra = divmod(num_buckets, num_shards)
    threshold = extra * (base + 1)  # ids below it live in the longer shards
    ids = tf.cast(ids, tf.int64)
    low = ids < threshold
    rest = ids - threshold
    shard = tf.where(low, ids // (base + 1), extra + rest // base)
    row = tf.where(low, ids % (base + 1), rest % base)
    return tf.cast(shard, tf.int32), row


def local_copy(variable: tf.Variable) -> tf.Variable:
    """The component of a distributed variable on the current replica's device.

    Reading or scattering into it touches this device's memory only, with no synchronization:
    gathering from a MirroredVariable in replica context reads the whole table instead.

    Args:
        variable: A variable, mirrored or not.

    Returns:
        The current replica's component (the only one with one device per worker), or
        `variable` itself when it is not distributed.
    """
    if not isinstance(variable, tf.distribute.DistributedValues):
        return variable
    components = variable.distribute_strategy.experimental_local_results(variable)
    if len(components) == 1:  # MWMS with one device per worker
        return components[0]
    device = variable.device  # in replica or update context: the current replica's component
    return next((c for c in components if c.device == device), components[0])
