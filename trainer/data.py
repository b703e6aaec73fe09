"""tf.data input for one day of TFRecords: per-worker file shards, shuffled and parsed in blocks.

Where the input's time goes (CPU per example, one thread, census-shaped rows of 39 columns):
reading GZIP records and batching them ~2.4 µs, `tf.io.parse_example` ~2.2 µs. Next to a
training step of ~8 µs of CPU per example on a 2-core machine, every further cost shows
in the step rate, because the input and the step share the same cores. So:

- Up to 4 files are read at once, each by its own thread (reads from object storage overlap),
  in chunks of records: a parallel interleave that hands over single records between threads
  costs ~4 µs per example, more than reading itself; per chunk of 64 it is negligible.
- Records are shuffled in blocks of `shuffle_buffer` examples (a multiple of the batch):
  one seeded permutation of a block's serialized records (one gather), in place of a
  per-record `Dataset.shuffle` (~1.5 µs per example); then the block is parsed by one
  `parse_example` call and cut into batches with `rebatch`, which slices tensors.
- The next block is read and parsed in the background (`num_parallel_calls`) while the
  training step consumes the current one's batches; prefetch keeps batches ready. Memory: up
  to about three blocks of records (one shuffle buffer before).

Together: ~9-12 µs of input CPU per census example before, ~5 µs now (the impressions
example: ~10 µs before, ~3.4 µs now); `benchmarks/throughput.py` prints these figures.

The model still receives the raw values (strings, integers, floats): hashing and
normalization stay in the model, which is what the exported signature runs too.
"""

from __future__ import annotations

import tensorflow as tf

from multitower.config import DataConfig
from multitower.records import parse_examples, split_labels

# Files read at the same time, and records a file's reader hands over at once.
_FILES_AT_ONCE, _CHUNK = 4, 64
# Without shuffling, batches are still parsed this many at a time: one parse call per block.
_BATCHES_PER_PARSE = 8
# Blocks read and parsed at the same time: the one being cut into batches and the next.
_BLOCKS_IN_FLIGHT = 2


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
        shuffle_buffer: Examples shuffled together (0: no shuffle): the record stream is cut
            into blocks of this many examples (rounded up to a whole number of batches), and
            each block is permuted uniformly, by a permutation drawn from `seed` and the block's
            position in the stream.
        seed: Shuffle seed, so that a rerun sees the same order.
        repeat: Repeat forever; training then runs a fixed number of steps on every worker, which
            keeps the workers' collectives in step even when their shards differ in size. The
            blocks run on across the end of a pass, so each pass is shuffled differently.
        drop_remainder: Drop a last partial batch (training); keep it to evaluate every row.
        skip_batches: Batches already trained on (a run resumed from a mid-day backup): the
            stream is deterministic for a seed, so skipping them resumes exactly where it stopped.
            Whole shuffle blocks among them are read but not parsed.

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
    cycle = min(_FILES_AT_ONCE, len(files))
    if by_file:
        ds = ds.interleave(
            lambda f: tf.data.TFRecordDataset(f, compression_type="GZIP").batch(_CHUNK),
            cycle_length=cycle, num_parallel_calls=cycle, deterministic=True,
        )
    else:  # fewer files than workers: records dealt out one by one
        ds = ds.interleave(lambda f: tf.data.TFRecordDataset(f, compression_type="GZIP"),
                           cycle_length=cycle)
        ds = ds.shard(shards, index).batch(_CHUNK)
    if repeat:
        ds = ds.repeat()
    batches_per_block = -(-shuffle_buffer // batch) if shuffle_buffer else _BATCHES_PER_PARSE
    # Every block but the stream's last is full, so batch k is always the same rows.
    ds = ds.rebatch(batch * batches_per_block).enumerate()
    if skip_batches:
        ds = ds.skip(skip_batches // batches_per_block)

    def parse(block: tf.Tensor, serialized: tf.Tensor
              ) -> tuple[dict[str, tf.Tensor], dict[str, tf.Tensor]]:
        if shuffle_buffer:
            order = tf.random.experimental.stateless_shuffle(
                tf.range(tf.shape(serialized)[0]),
                seed=tf.stack([tf.constant(seed, tf.int64), block]))
            serialized = tf.gather(serialized, order)
        features, labels = split_labels(parse_examples(serialized, data), data)
        return features, {name: tf.expand_dims(y, -1) for name, y in labels.items()}

    ds = ds.map(parse, num_parallel_calls=_BLOCKS_IN_FLIGHT)
    ds = ds.rebatch(batch, drop_remainder=drop_remainder)
    if skip_batches % batches_per_block:
        ds = ds.skip(skip_batches % batches_per_block)
    options = tf.data.Options()
    # Sharding is done above, per file; the strategy must not shard again.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return ds.with_options(options).prefetch(tf.data.AUTOTUNE)
