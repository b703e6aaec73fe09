"""One worker of the two-process partitioned-embedding test.

Usage: python embeddings_worker_main.py OUT_DIR

For each embedding optimizer in OPTIMIZERS, under MultiWorkerMirroredStrategy: builds a toy
model (a 3-shard table of BUCKETS rows fed by raw integers, then a dense layer) compiled with a
`MultiTaskOptimizer` (dense: tf-keras Adam), trains it with `model.fit` for one pass over
VALUES, saves a checkpoint (every worker saves, the chief's lands in OUT_DIR), then restores the
chief's checkpoint into the same model with 2 shards. Writes
OUT_DIR/<optimizer>-worker-<index>.npz: `initial`, `final` and `restored` tables, the
embedding optimizer's slots before (`slot_*`) and after (`restored_slot_*`) the restore, the
dense weights before (`initial_dense_*`) and after (`dense_*`) training, and `sparse_grads`
(every shard gradient was a tf.IndexedSlices when the step was traced).
"""

# ruff: noqa: I001  (multitower must be imported before TensorFlow)
import os
import sys
import tempfile

import multitower  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
import numpy as np
import tensorflow as tf
import tf_keras as keras

from multitower.cluster import task_info
from trainer.embeddings import (
    PartitionedEmbedding,
    is_embedding_variable,
    make_row_sparse_optimizer,
    restore_checkpoint,
)
from trainer.optimizer import MultiTaskOptimizer
from trainer.strategy import make_strategy

BUCKETS, DIM, GLOBAL_BATCH = 40, 4, 16
# 20 raw values hashed into 40 buckets: some rows are never looked up.
VALUES = np.tile(np.arange(0, 60, 3, dtype=np.int64), 4)
OPTIMIZERS = ("adagrad", "lazy_adam")
SLOTS = {"adagrad": ("accumulator",), "lazy_adam": ("m", "v")}
_GRAD_TYPES: list[str] = []  # filled when the train step is traced


class Toy(keras.Model):
    """Trains on the global mean loss; records the gradient type of every embedding variable."""

    def train_step(self, data):
        x, y = data
        with tf.GradientTape() as tape:
            prediction = self(x, training=True)[:, 0]
            # Keras sums gradients over replicas: scale to the global mean.
            loss = tf.reduce_mean(tf.square(prediction - y)) / (
                tf.distribute.get_strategy().num_replicas_in_sync)
        variables = self.trainable_variables
        grads = tape.gradient(loss, variables)
        _GRAD_TYPES.extend(type(g).__name__ for g, v in zip(grads, variables, strict=True)
                           if is_embedding_variable(v))
        self.optimizer.apply_gradients(zip(grads, variables, strict=True))
        return {"loss": loss}


def build(num_shards: int, optimizer: str):
    raw = keras.Input(shape=(), dtype=tf.int64, name="value")
    table = PartitionedEmbedding(BUCKETS, DIM, num_shards=num_shards, name="table")
    model = Toy(raw, keras.layers.Dense(1, name="dense")(table(raw)))
    model.compile(optimizer=MultiTaskOptimizer(keras.optimizers.Adam(0.01),
                                               make_row_sparse_optimizer(optimizer, 0.1)))
    model.optimizer.build(model.trainable_variables)  # every slot exists before a restore
    return model, table


def targets() -> np.ndarray:
    return (VALUES % 7).astype(np.float32) / 7.0


def slots(model, table, optimizer: str, prefix: str) -> dict[str, np.ndarray]:
    return {
        f"{prefix}{name}": np.concatenate(
            [model.optimizer.tables.slot(s, name).numpy() for s in table.shards])
        for name in SLOTS[optimizer]
    }


def checkpoint_of(model) -> tf.train.Checkpoint:
    return tf.train.Checkpoint(model=model, optimizer=model.optimizer)


def main() -> None:
    out_dir = sys.argv[1]
    strategy = make_strategy()
    info = task_info()
    dataset = tf.data.Dataset.from_tensor_slices((VALUES, targets())).batch(GLOBAL_BATCH)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    dataset = dataset.with_options(options)
    for optimizer in OPTIMIZERS:
        _GRAD_TYPES.clear()
        with strategy.scope():
            model, table = build(3, optimizer)
        arrays = {"initial": table.full_table().numpy()}
        for i, w in enumerate(model.get_layer("dense").get_weights()):
            arrays[f"initial_dense_{i}"] = w
        model.fit(dataset, epochs=1, verbose=0)
        arrays["final"] = table.full_table().numpy()
        arrays.update(slots(model, table, optimizer, "slot_"))
        dense = model.get_layer("dense").get_weights()
        arrays.update({f"dense_{i}": w for i, w in enumerate(dense)})
        arrays["sparse_grads"] = np.array(bool(_GRAD_TYPES) and
                                          set(_GRAD_TYPES) == {"IndexedSlices"})
        # Every worker saves (the chief's copy is the one read back), then waits for the chief.
        chief_path = os.path.join(out_dir, f"ckpt-{optimizer}", "ckpt")
        path = chief_path if info.is_chief else os.path.join(tempfile.mkdtemp(), "ckpt")
        checkpoint_of(model).write(path)
        tf.function(lambda: strategy.reduce("SUM", strategy.run(tf.ones, ([],)), axis=None))()
        with strategy.scope():
            again, again_table = build(2, optimizer)
        restore_checkpoint(checkpoint_of(again), chief_path)
        arrays["restored"] = again_table.full_table().numpy()
        arrays.update(slots(again, again_table, optimizer, "restored_slot_"))
        np.savez(os.path.join(out_dir, f"{optimizer}-worker-{info.task_id}.npz"), **arrays)


if __name__ == "__main__":
    main()
