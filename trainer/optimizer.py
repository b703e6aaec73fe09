"""`MultiTaskOptimizer`: the dense optimizer and the row-sparse embedding optimizer as one.

tf-keras' `compile` accepts only an `Optimizer` subclass, and a checkpoint should hold one
optimizer object: this one owns a tf-keras optimizer for the dense variables (`dense`) and a
row-sparse optimizer for the embedding shards (`tables`), and routes each gradient to its
owner. Dense gradients go through `dense.apply_gradients`, which sums them over replicas
itself. Shard gradients are summed over replicas here, one `tf.IndexedSlices` per table in one
batched all-reduce (`trainer.embeddings.all_reduce_tables`), then applied in replica context by
`tables`, each replica to its own copy (see `trainer.embeddings.optimizers` for why not a
Keras optimizer). The step counter is the dense optimizer's.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import tensorflow as tf
import tf_keras as keras

from multitower.config import TrainConfig
from trainer.embeddings import (
    RowSparseOptimizer,
    all_reduce_tables,
    is_embedding_variable,
    local_copy,
    make_row_sparse_optimizer,
    owner,
)

if TYPE_CHECKING:
    from trainer.embeddings import PartitionedEmbedding

Gradient = tf.Tensor | tf.IndexedSlices | None


@keras.utils.register_keras_serializable(package="multitower")
class MultiTaskOptimizer(keras.optimizers.Optimizer):
    """Applies embedding shards' gradients with `tables`, every other one with `dense`.

    Pass it to `model.compile(optimizer=...)`; `tf.train.Checkpoint(optimizer=...)` then holds
    the dense optimizer's variables under `optimizer/dense/...` and the tables' slots under
    `optimizer/tables/slots/<layer>/<slot>/part_<i>_of_<P>`. Create it, and `build` it, inside
    `strategy.scope()`.

    Args:
        dense: A tf-keras optimizer (not a legacy one) for every variable but the shards.
        tables: The row-sparse optimizer of the embedding shards.
        name: The optimizer's name.

    Raises:
        TypeError: `dense` or `tables` is of another type.
    """

    def __init__(self, dense: keras.optimizers.Optimizer, tables: RowSparseOptimizer,
                 name: str = "multitask_optimizer") -> None:
        if not isinstance(dense, keras.optimizers.Optimizer):
            raise TypeError(f"dense must be a tf-keras optimizer (keras.optimizers.Optimizer, "
                            f"not a legacy one), got {type(dense).__name__}")
        if not isinstance(tables, RowSparseOptimizer):
            raise TypeError(f"tables must be a RowSparseOptimizer, got {type(tables).__name__}")
        super().__init__(name=name, jit_compile=False)
        self.dense = dense
        self.tables = tables

    def _create_iteration_variable(self) -> None:
        # Called by the base __init__: `iterations` is the dense optimizer's, not a second one.
        pass

    @property
    def iterations(self) -> tf.Variable:
        """Steps applied so far (the dense optimizer's counter)."""
        return self.dense.iterations

    @iterations.setter
    def iterations(self, variable: tf.Variable) -> None:
        self.dense.iterations = variable

    @property
    def learning_rate(self) -> tf.Variable:
        """The dense optimizer's learning rate (the tables' is `tables.learning_rate`)."""
        return self.dense.learning_rate

    @learning_rate.setter
    def learning_rate(
        self,
        learning_rate: float | tf.Variable | keras.optimizers.schedules.LearningRateSchedule,
    ) -> None:
        self.dense.learning_rate = learning_rate

    @property
    def variables(self) -> list[tf.Variable]:
        """The dense optimizer's variables, then the tables'."""
        return [*self.dense.variables, *self.tables.variables]

    def build(self, variables: Sequence[tf.Variable]) -> None:
        """Creates both optimizers' variables, so that a checkpoint restores them all.

        Call it inside the strategy scope, before restoring; each part is built once.

        Args:
            variables: Every trainable variable to optimize: embedding shards and the rest.
        """
        dense = [v for v in variables if not is_embedding_variable(v)]
        if dense:
            self.dense.build(dense)
        tables = _tables_of(v for v in variables if is_embedding_variable(v))
        if tables:
            self.tables.build(tables)

    @tf.autograph.experimental.do_not_convert  # plain Python over Python lists
    def apply_gradients(self, grads_and_vars: Iterable[tuple[Gradient, tf.Variable]],
                        name: str | None = None, **kwargs) -> tf.Variable:
        """Applies one step: shards' gradients with `tables`, the rest with `dense`.

        Call it where Keras calls `optimizer.apply_gradients`: in replica context under a
        strategy (as `train_step` runs), or with no strategy.

        Args:
            grads_and_vars: `(gradient, variable)` pairs; None gradients of shards are dropped,
                the others are the dense optimizer's to judge.
            name: Name scope of the update ops; the optimizer's name by default.
            **kwargs: Passed on to `dense.apply_gradients`.

        Returns:
            `iterations`.

        Raises:
            RuntimeError: Called in cross-replica context under a strategy of several
                replicas, where the shards' gradients cannot be summed.
        """
        dense, shards = [], []
        for grad, var in grads_and_vars:
            if not is_embedding_variable(var):
                dense.append((grad, var))
            elif grad is not None:
                shards.append((grad, var))
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        if shards and replicas > 1 and tf.distribute.in_cross_replica_context():
            raise RuntimeError("MultiTaskOptimizer.apply_gradients must run in replica context "
                               "(inside strategy.run, as Keras runs train_step)")
        with tf.name_scope(name or self.name):
            if dense:
                self.dense.apply_gradients(dense, **kwargs)
            elif shards:  # no dense step to count this one
                local_copy(self.iterations).assign_add(1)
            if shards:
                if replicas > 1:
                    # Model-parallel rows already reached their owner (the lookup's gradient);
                    # replicated tables' rows are summed over the workers here.
                    local = [(g, v) for g, v in shards if owner(v)[0].model_parallel]
                    summed = [(g, v) for g, v in shards if not owner(v)[0].model_parallel]
                    shards = (all_reduce_tables(summed) if summed else []) + local
                self.tables.apply(shards)
        return self.iterations

    def get_config(self) -> dict:
        return {"name": self.name, "dense": keras.optimizers.serialize(self.dense),
                "tables": self.tables.get_config()}

    @classmethod
    def from_config(cls, config: dict, custom_objects: dict | None = None
                    ) -> MultiTaskOptimizer:
        return cls(keras.optimizers.deserialize(config["dense"], custom_objects=custom_objects),
                   make_row_sparse_optimizer(**config["tables"]), name=config["name"])


def _tables_of(shards: Iterable[tf.Variable]) -> list[PartitionedEmbedding]:
    """The layers owning `shards`, each once, in order of first appearance."""
    return list({id(t): t for t in (owner(v)[0] for v in shards)}.values())


def make_optimizer(train: TrainConfig) -> MultiTaskOptimizer:
    """The optimizer of `train` (call inside the strategy scope).

    Args:
        train: `optimizer` and `learning_rate` of the dense variables (tf-keras Adam, Adagrad
            or SGD); `embedding_optimizer` and `embedding_learning_rate` of the tables.

    Returns:
        A `MultiTaskOptimizer`, unbuilt.
    """
    dense = {"adam": keras.optimizers.Adam, "adagrad": keras.optimizers.Adagrad,
             "sgd": keras.optimizers.SGD}[train.optimizer](train.learning_rate)
    return MultiTaskOptimizer(dense, make_row_sparse_optimizer(
        train.embedding_optimizer, train.embedding_learning_rate))
