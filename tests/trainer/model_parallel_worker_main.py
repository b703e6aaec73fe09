"""One worker of the model-parallel table test (run on 2 or 3 workers).

Usage: python model_parallel_worker_main.py OUT_DIR [OPTIMIZER:EXCHANGE ...]

For each embedding optimizer and each exchange, under MultiWorkerMirroredStrategy: builds a toy
model with a model-parallel table (looked up by a one-value feature and, shared, by a 3-long
list) and a replicated table, both then one dense layer; sets the model-parallel rows from one
whole table (`initial_table`: worker w takes rows w::N) and every other weight from fixed
values; trains STEPS global batches with `model.fit` at 4 steps per call. Writes
OUT_DIR/<optimizer>-<exchange>-worker-<index>.npz: this worker's rows (`rows`), their slots
(`slot_<name>`), the replicated table (`replicated`), the dense weights (`dense_<i>`), and the
gradient type the model-parallel variable got when traced (`grad_type`), and the rows a
lookup of uneven id counts returned (`uneven_ids`, `uneven_rows`: worker w looks up 3 + w ids);
and saves its part of the trained table and slots under OUT_DIR/<optimizer>-<exchange>/ckpt-1.
Without OPTIMIZER:EXCHANGE pairs, every optimizer with every exchange.
"""

# ruff: noqa: I001  (multitower must be imported before TensorFlow)
import os
import sys

import multitower  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
import numpy as np
import tensorflow as tf
import tf_keras as keras

from multitower.cluster import task_info
from trainer.embeddings import (
    PartitionedEmbedding,
    make_row_sparse_optimizer,
    model_parallel_variables,
)
from trainer.embeddings.model_parallel import Workers
from trainer.embeddings.per_worker import save_parts
from trainer.optimizer import MultiTaskOptimizer
from trainer.strategy import make_strategy
from tests.trainer.embeddings_worker_main import _GRAD_TYPES, Toy

BUCKETS, DIM, GLOBAL_BATCH, STEPS = 41, 4, 12, 20
OPTIMIZERS = ("adagrad", "ftrl", "lazy_adam", "sgd")
EXCHANGES = ("all_to_all", "all_reduce")
SLOTS = {"adagrad": ("accumulator",), "ftrl": ("accumulator", "linear"), "lazy_adam": ("m", "v"),
         "sgd": ()}


def data() -> tuple[dict[str, np.ndarray], np.ndarray]:
    rng = np.random.default_rng(7)
    rows = GLOBAL_BATCH * STEPS
    features = {"one": rng.integers(0, 90, rows).astype(np.int64),
                "many": rng.integers(0, 90, (rows, 3)).astype(np.int64),
                "other": rng.integers(0, 30, rows).astype(np.int64)}
    return features, rng.uniform(0, 1, rows).astype(np.float32)


def initial_table() -> np.ndarray:
    return np.random.default_rng(3).uniform(-0.5, 0.5, (BUCKETS, DIM)).astype(np.float32)


def initial_dense() -> list[np.ndarray]:
    rng = np.random.default_rng(4)
    return [rng.uniform(-0.5, 0.5, (3 * DIM, 1)).astype(np.float32), np.zeros(1, np.float32)]


def initial_replicated() -> np.ndarray:
    return np.random.default_rng(5).uniform(-0.5, 0.5, (17, DIM)).astype(np.float32)


def build(optimizer: str, placement: str, exchange: str = "all_to_all"):
    """The toy model; `placement` of the big table (the small one is always replicated)."""
    inputs = {"one": keras.Input(shape=(), dtype=tf.int64, name="one"),
              "many": keras.Input(shape=(3,), dtype=tf.int64, name="many"),
              "other": keras.Input(shape=(), dtype=tf.int64, name="other")}
    table = PartitionedEmbedding(BUCKETS, DIM, placement=placement, exchange=exchange,
                                 name="big")
    small = PartitionedEmbedding(17, DIM, num_shards=2, name="small")
    pooled = keras.layers.Lambda(lambda t: tf.reduce_mean(t, axis=1))(table(inputs["many"]))
    joined = keras.layers.Concatenate()([table(inputs["one"]), pooled, small(inputs["other"])])
    model = Toy(inputs, keras.layers.Dense(1, name="dense")(joined))
    model.compile(optimizer=MultiTaskOptimizer(keras.optimizers.Adam(0.01),
                                               make_row_sparse_optimizer(optimizer, 0.1)),
                  steps_per_execution=4)
    model.optimizer.build(model.trainable_variables)
    model.get_layer("dense").set_weights(initial_dense())
    bounds = np.cumsum([9, 8])[:-1]
    for shard, part in zip(small.shards, np.split(initial_replicated(), bounds), strict=True):
        shard.assign(part)
    return model, table, small


def main() -> None:
    out_dir = sys.argv[1]
    strategy = make_strategy()
    info = task_info()
    count = strategy.num_replicas_in_sync
    features, targets = data()

    def dataset_fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
        # Worker w reads its slice of every global batch: the union is the global batch.
        per = context.get_per_replica_batch_size(GLOBAL_BATCH)
        w = context.input_pipeline_id
        keep = np.concatenate([np.arange(b * GLOBAL_BATCH + w * per, b * GLOBAL_BATCH
                                         + (w + 1) * per) for b in range(STEPS)])
        mine = ({k: v[keep] for k, v in features.items()}, targets[keep])
        return tf.data.Dataset.from_tensor_slices(mine).batch(per, drop_remainder=True)

    combos = [tuple(c.split(":")) for c in sys.argv[2:]] or [
        (o, e) for o in OPTIMIZERS for e in EXCHANGES]
    for optimizer, exchange in combos:
        _GRAD_TYPES.clear()
        with strategy.scope():
            model, table, small = build(optimizer, "model_parallel", exchange)
        (rows,) = table.shards
        rows.assign(initial_table()[info.task_id::count])
        model.fit(keras.utils.experimental.DatasetCreator(dataset_fn), epochs=1,
                  steps_per_epoch=STEPS, verbose=0)
        arrays = {"rows": rows.numpy(), "replicated": small.full_table().numpy(),
                  "grad_type": np.array(sorted(set(_GRAD_TYPES)))}
        for slot in SLOTS[optimizer]:
            arrays[f"slot_{slot}"] = model.optimizer.tables.slot(rows, slot).numpy()
        arrays.update({f"dense_{i}": w for i, w in
                       enumerate(model.get_layer("dense").get_weights())})
        # Uneven id counts (worker w looks up 3 + w ids, as in an uneven last batch).
        ids = tf.constant((np.arange(3 + info.task_id) * 7 + info.task_id) % BUCKETS,
                          tf.int64)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.int64)], autograph=False)
        def look_up(values, table=table):
            return strategy.run(table.lookup, args=(values,))

        arrays["uneven_ids"] = ids.numpy()
        arrays["uneven_rows"] = strategy.experimental_local_results(look_up(ids))[0].numpy()
        # This worker's part, for the re-partitioning test.
        save_parts(model_parallel_variables(model, model.optimizer.tables),
                   os.path.join(out_dir, f"{optimizer}-{exchange}", "ckpt-1"),
                   Workers(count, info.task_id))
        np.savez(os.path.join(out_dir, f"{optimizer}-{exchange}-worker-{info.task_id}.npz"),
                 **arrays)


if __name__ == "__main__":
    main()
