"""tf.data input for one day of TFRecords: per-worker file shards, parse after batching."""

from __future__ import annotations

import tensorflow as tf

from multitower.config import DataConfig
from multitower.records import parse_examples, split_labels


def make_dataset(
    files: list[str],
    data: DataConfig,
    global_batch_size: int,
    context: tf.distribute.InputContext | None = None,
    shuffle_buffer: int = 0,
    seed: int = 0,
    repeat: bool = True,
    drop_remainder: bool = True,
    skip_batches: int = 0,
) -> tf.data.Dataset:
    """Batches of `(raw features, labels)` from GZIP TFRecords.

    Args:
        files: The day's TFRecord files.
        data: The data part of the config (decides the parse spec).
        global_batch_size: Examples per step over every replica; each replica gets its share.
        context: From `distribute_datasets_from_function`; each input pipeline (worker) reads a
            disjoint subset of files, or of records when there are fewer files than workers.
        shuffle_buffer: Examples to shuffle over (0: no shuffle).
        seed: Shuffle seed, so that a rerun sees the same order.
        repeat: Repeat forever; training then runs a fixed number of steps on every worker, which
            keeps the workers' collectives in step even when their shards differ in size.
        drop_remainder: Drop a last partial batch (training); keep it to evaluate every row.
        skip_batches: Batches already trained on (a run resumed from a mid-day backup): the
            stream is deterministic for a seed, so skipping them resumes exactly where it stopped.

    Returns:
        A dataset of `({feature: (b,)}, {task: (b, 1)})` with `b` the per-replica batch size.
    """
    if not files:
        raise ValueError("no TFRecord files to read")
    batch = global_batch_size
    shards, index = 1, 0
    if context is not None:
        batch = context.get_per_replica_batch_size(global_batch_size)
        shards, index = context.num_input_pipelines, context.input_pipeline_id
    ds = tf.data.Dataset.from_tensor_slices(sorted(files))
    by_file = len(files) >= shards
    if shards > 1 and by_file:
        ds = ds.shard(shards, index)
    ds = ds.interleave(
        lambda f: tf.data.TFRecordDataset(f, compression_type="GZIP"),
        cycle_length=min(4, len(files)),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    if shards > 1 and not by_file:
        ds = ds.shard(shards, index)
    if shuffle_buffer:
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    def parse(serialized: tf.Tensor) -> tuple[dict[str, tf.Tensor], dict[str, tf.Tensor]]:
        features, labels = split_labels(parse_examples(serialized, data), data)
        return features, {name: tf.expand_dims(y, -1) for name, y in labels.items()}

    ds = ds.batch(batch, drop_remainder=drop_remainder)
    if skip_batches:
        ds = ds.skip(skip_batches)
    ds = ds.map(parse, num_parallel_calls=tf.data.AUTOTUNE)
    options = tf.data.Options()
    # Sharding is done above, per file; the strategy must not shard again.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return ds.with_options(options).prefetch(tf.data.AUTOTUNE)
