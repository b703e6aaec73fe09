"""Row-sparse optimizers of embedding shards: an update touches only the rows it receives.

Why not Keras optimizers: tf-keras Adam (and SGD, which always keeps a momentum slot) decays the
slots of every row on every step, so an update is O(rows) and rows outside the batch keep
moving; and a Keras optimizer updates a mirrored variable only from cross-replica context,
while these updates run in replica context, each replica scattering the same summed rows into
its own copy of the shard and slots (`local_copy`), which model-parallel tables will need too.

The math equals tf-keras' legacy optimizers on the rows a gradient touches (duplicate indices
summed first, as their base class does): Adagrad, Ftrl (legacy defaults), SGD without momentum,
and `LazyAdam`, Adam whose bias correction counts this optimizer's steps.

Slots are plain variables created by `build`, held in `slots[<layer name>][<slot>][part_<i>_of_
<P>]`: a checkpoint names a slot like its shard, P included, so a restore with another P finds
both the same way (see `trainer.embeddings.repartition`).
"""

from __future__ import annotations

import contextlib
import logging
import weakref
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, ClassVar

import tensorflow as tf

from trainer.embeddings.layer import PartitionedEmbedding, owner, shard_name
from trainer.embeddings.layout import local_copy
from trainer.embeddings.model_parallel import local_variable

if TYPE_CHECKING:
    from collections.abc import Callable

log = logging.getLogger("multitower.trainer")


class _Registry:
    """Python-side bookkeeping, kept out of checkpoints.

    AutoTrackable tracks only containers, variables and trackables, not a plain object.
    """

    def __init__(self) -> None:
        self.layers: dict[str, weakref.ref] = {}
        self.variables: list[tf.Variable] = []  # in creation order
        # Slots of model-parallel tables: this worker's rows only, saved by each worker itself
        # (`trainer.embeddings.per_worker`), never in the chief's checkpoint.
        self.local_slots: dict[str, dict[str, dict[str, tf.Variable]]] = {}
        self.state_created = False


class RowSparseOptimizer(tf.Module):
    """Base class: slots per shard, and an update of the given rows only.

    Subclasses set `kind`, `slot_names` and `initial_values`, and implement `_update`.

    Args:
        learning_rate: > 0.
        name: The module's name; `embedding_<kind>` by default.

    Raises:
        ValueError: `learning_rate` is not > 0.
    """

    kind: ClassVar[str] = ""
    slot_names: ClassVar[tuple[str, ...]] = ()
    initial_values: ClassVar[dict[str, float]] = {}  # each slot's starting value

    def __init__(self, learning_rate: float, name: str | None = None) -> None:
        if not learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {learning_rate}")
        super().__init__(name=name or f"embedding_{self.kind}")
        self.learning_rate = float(learning_rate)
        self.slots: dict[str, dict[str, dict[str, tf.Variable]]] = {}
        self._registry = _Registry()

    @property
    def variables(self) -> tuple[tf.Variable, ...]:
        """Every variable of this optimizer, in creation order."""
        return tuple(self._registry.variables)

    def get_config(self) -> dict:
        """`{"name": kind, "learning_rate": ...}`: the arguments of `make_row_sparse_optimizer`."""
        return {"name": self.kind, "learning_rate": self.learning_rate}

    def build(self, tables: Sequence[PartitionedEmbedding]) -> None:
        """Creates the slots of every shard of `tables` (once per table).

        Call it inside `strategy.scope()` (slots are then mirrored like the shards), with the
        same tables in the same order on every worker: creating a mirrored variable is a
        collective under MultiWorkerMirroredStrategy.

        Args:
            tables: Built layers, each with a name no other table here has.

        Raises:
            ValueError: A layer is not built, or another table already has its name.
        """
        for layer in tables:
            known = self._registry.layers.get(layer.name)
            if known is not None:
                if known() is not layer:
                    raise ValueError(f"{type(self).__name__} already holds slots of another "
                                     f"table named {layer.name!r}; give tables unique names")
                continue
            if not layer.built:
                raise ValueError(f"layer {layer.name!r} is not built; build the model first")
            with _scope_of(layer.shards[0]):
                if not self._registry.state_created:
                    self._create_state()
                    self._registry.state_created = True
                slots = {
                    slot: {shard_name(i, layer.num_shards): self._slot_variable(layer, i, slot)
                           for i in range(layer.num_shards)}
                    for slot in self.slot_names
                }
                if layer.model_parallel:
                    self._registry.local_slots[layer.name] = slots
                else:
                    self.slots[layer.name] = slots
            self._registry.layers[layer.name] = weakref.ref(layer)

    def slot(self, shard: tf.Variable, name: str) -> tf.Variable:
        """Slot `name` of a shard variable (created by `build`).

        Raises:
            ValueError: `shard` is not a shard of a table built here, or `name` is no slot.
        """
        layer, index = owner(shard)
        known = self._registry.layers.get(layer.name)
        if known is None or known() is not layer or name not in self.slot_names:
            raise ValueError(f"{type(self).__name__} has no slot {name!r} of {shard.name} (its "
                             f"slots: {list(self.slot_names)}; call build(tables) first)")
        slots = self._registry.local_slots if layer.model_parallel else self.slots
        return slots[layer.name][name][shard_name(index, layer.num_shards)]

    def local_slots(self, layer_name: str) -> dict[str, tf.Variable]:
        """`{slot name: variable}` of a model-parallel table: this worker's rows (empty if none)."""
        found = self._registry.local_slots.get(layer_name, {})
        return {slot: shards[shard_name(0, 1)] for slot, shards in found.items()}

    # Python loops over Python lists: nothing for AutoGraph to convert (and it fails on the
    # hooks whose body is only a docstring).
    @tf.autograph.experimental.do_not_convert
    def apply(self, pairs: Iterable[tuple[tf.IndexedSlices | tf.Tensor, tf.Variable]]) -> None:
        """Updates the rows of each shard (and of its slots) that its gradient touches.

        Each replica scatters into its own copy of every variable, with no synchronization:
        give every replica the same (already summed) gradients, and the copies stay equal. Runs
        in replica context under a strategy, or with no strategy; builds missing slots.

        Args:
            pairs: `(gradient, shard variable)`. A dense gradient still works (it becomes rows
                over the whole shard, a warning says so) but reads and writes every row.
        """
        pairs = [(grad, var) for grad, var in pairs if grad is not None]
        if not pairs:
            return
        tables = list({id(t): t for t in (owner(var)[0] for _, var in pairs)}.values())
        with tf.init_scope():  # slot creation leaves any tf.function being traced
            self.build(tables)
        state = self._step_state()
        for grad, var in pairs:
            values, indices = _summed_rows(_as_rows(grad, var))
            slots = {name: local_copy(self.slot(var, name)) for name in self.slot_names}
            self._update(local_copy(var), slots, tf.cast(values, var.dtype), indices, state)
        self._after_step()

    def _create_state(self) -> None:
        """Creates variables shared by every shard (before any slot); none by default."""

    def _step_state(self) -> tf.Tensor | None:
        """What every shard's update of this step shares; None by default."""
        return None

    def _after_step(self) -> None:
        """Runs once per `apply`, after every update."""

    def _update(self, variable: tf.Variable, slots: dict[str, tf.Variable], grad: tf.Tensor,
                indices: tf.Tensor, state: tf.Tensor | None) -> None:
        raise NotImplementedError

    def _new_variable(self, initial_value: Callable[[], tf.Tensor], dtype: tf.DType, name: str
                      ) -> tf.Variable:
        variable = tf.Variable(initial_value, trainable=False, dtype=dtype, name=name)
        self._registry.variables.append(variable)
        return variable

    def _slot_variable(self, layer: PartitionedEmbedding, index: int, slot: str) -> tf.Variable:
        shard = layer.shards[index]
        value = self.initial_values.get(slot, 0.0)
        if layer.model_parallel:  # this worker's rows, like the shard
            return local_variable(lambda: tf.fill(shard.shape, tf.constant(value, shard.dtype)),
                                  f"{layer.name}/{slot}", trainable=False, dtype=shard.dtype)
        with tf.distribute.get_strategy().extended.colocate_vars_with(shard):
            return self._new_variable(
                lambda: tf.fill(shard.shape, tf.constant(value, shard.dtype)), shard.dtype,
                f"{layer.name}/{slot}/{shard_name(index, layer.num_shards)}")


def _scope_of(shard: tf.Variable) -> contextlib.AbstractContextManager:
    # A slot built outside any strategy scope (e.g. by a restore) is still mirrored like its
    # shard; inside a scope, the scope decides.
    if not tf.distribute.has_strategy() and isinstance(shard, tf.distribute.DistributedValues):
        return shard.distribute_strategy.scope()
    return contextlib.nullcontext()


def _as_rows(grad: tf.IndexedSlices | tf.Tensor, var: tf.Variable) -> tf.IndexedSlices:
    if isinstance(grad, tf.IndexedSlices):
        return grad
    layer, index = owner(var)
    log.warning("the gradient of shard %s of table %r is dense, not tf.IndexedSlices: its "
                "update reads and writes every row", shard_name(index, layer.num_shards),
                layer.name)
    grad = tf.convert_to_tensor(grad)
    return tf.IndexedSlices(grad, tf.range(tf.shape(grad, out_type=tf.int64)[0]))


def _summed_rows(grad: tf.IndexedSlices) -> tuple[tf.Tensor, tf.Tensor]:
    """`(values, indices)` with each index once, its values summed.

    A scatter of duplicate indices would keep only one of them.
    """
    unique, positions = tf.unique(grad.indices)
    return tf.math.unsorted_segment_sum(grad.values, positions, tf.size(unique)), unique


class RowSparseAdagrad(RowSparseOptimizer):
    """Adagrad: `acc += g^2; w -= lr g / (sqrt(acc) + 1e-7)`, accumulators starting at 0.1."""

    kind = "adagrad"
    slot_names = ("accumulator",)
    initial_values = {"accumulator": 0.1}
    epsilon = 1e-7

    def _update(self, variable: tf.Variable, slots: dict[str, tf.Variable], grad: tf.Tensor,
                indices: tf.Tensor, state: tf.Tensor | None) -> None:
        accumulator = slots["accumulator"]
        acc = accumulator.sparse_read(indices) + tf.square(grad)
        accumulator.scatter_update(tf.IndexedSlices(acc, indices))
        step = self.learning_rate * grad / (tf.sqrt(acc) + self.epsilon)
        variable.scatter_sub(tf.IndexedSlices(step, indices))


class RowSparseFtrl(RowSparseOptimizer):
    """FTRL-proximal as TF's `ResourceSparseApplyFtrl` with tf-keras' legacy defaults.

    The defaults: learning_rate_power -0.5, accumulators starting at 0.1, no L1, L2, shrinkage
    or beta. The update:

    `n' = n + g^2; z += g - (sqrt(n') - sqrt(n)) / lr * w; w = -z lr / sqrt(n')`.
    """

    kind = "ftrl"
    slot_names = ("accumulator", "linear")
    initial_values = {"accumulator": 0.1, "linear": 0.0}

    def _update(self, variable: tf.Variable, slots: dict[str, tf.Variable], grad: tf.Tensor,
                indices: tf.Tensor, state: tf.Tensor | None) -> None:
        accumulator, linear = slots["accumulator"], slots["linear"]
        old = accumulator.sparse_read(indices)
        new = old + tf.square(grad)
        z = (linear.sparse_read(indices) + grad
             - (tf.sqrt(new) - tf.sqrt(old)) / self.learning_rate * variable.sparse_read(indices))
        accumulator.scatter_update(tf.IndexedSlices(new, indices))
        linear.scatter_update(tf.IndexedSlices(z, indices))
        # TF's `(sign(z) l1 - z) / quadratic` with l1 = l2 = 0.
        variable.scatter_update(tf.IndexedSlices(-z / (tf.sqrt(new) / self.learning_rate),
                                                 indices))


class RowSparseSGD(RowSparseOptimizer):
    """Plain gradient descent: `w -= lr g`; no slots."""

    kind = "sgd"

    def _update(self, variable: tf.Variable, slots: dict[str, tf.Variable], grad: tf.Tensor,
                indices: tf.Tensor, state: tf.Tensor | None) -> None:
        variable.scatter_sub(tf.IndexedSlices(self.learning_rate * grad, indices))


class LazyAdam(RowSparseOptimizer):
    """Adam on the received rows only.

    `m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2; w -= lr sqrt(1-b2^t)/(1-b1^t) m/(sqrt(v)+eps)`

    with tf-keras' defaults (b1 0.9, b2 0.999, eps 1e-7). `t` counts this optimizer's steps
    (the `step` variable), so a rare row's moments are not decayed for the steps it missed.
    """

    kind = "lazy_adam"
    slot_names = ("m", "v")
    beta_1, beta_2, epsilon = 0.9, 0.999, 1e-7

    def _create_state(self) -> None:
        self.step = self._new_variable(lambda: tf.constant(0, tf.int64), tf.int64, "step")

    def _step_state(self) -> tf.Tensor:
        t = tf.cast(local_copy(self.step) + 1, tf.float32)
        return (self.learning_rate * tf.sqrt(1.0 - tf.pow(self.beta_2, t))
                / (1.0 - tf.pow(self.beta_1, t)))

    def _after_step(self) -> None:
        local_copy(self.step).assign_add(1)

    def _update(self, variable: tf.Variable, slots: dict[str, tf.Variable], grad: tf.Tensor,
                indices: tf.Tensor, state: tf.Tensor | None) -> None:
        m_slot, v_slot = slots["m"], slots["v"]
        # 1 - b in the variable's dtype, as Keras computes it (1 - 0.999 differs in float32).
        b1, b2 = tf.constant(self.beta_1, grad.dtype), tf.constant(self.beta_2, grad.dtype)
        m = b1 * m_slot.sparse_read(indices) + (1.0 - b1) * grad
        v = b2 * v_slot.sparse_read(indices) + (1.0 - b2) * tf.square(grad)
        m_slot.scatter_update(tf.IndexedSlices(m, indices))
        v_slot.scatter_update(tf.IndexedSlices(v, indices))
        step = tf.cast(state, variable.dtype) * m / (tf.sqrt(v) + self.epsilon)
        variable.scatter_sub(tf.IndexedSlices(step, indices))


_KINDS: dict[str, type[RowSparseOptimizer]] = {
    c.kind: c for c in (RowSparseAdagrad, RowSparseFtrl, LazyAdam, RowSparseSGD)}
EMBEDDING_OPTIMIZERS = tuple(sorted(_KINDS))  # ("adagrad", "ftrl", "lazy_adam", "sgd")


def make_row_sparse_optimizer(name: str, learning_rate: float) -> RowSparseOptimizer:
    """A row-sparse optimizer for embedding shards.

    Args:
        name: One of `EMBEDDING_OPTIMIZERS`.
        learning_rate: > 0.

    Returns:
        The optimizer, without slots until `build(tables)`.

    Raises:
        ValueError: An unknown name or a learning rate that is not > 0.
    """
    if name not in _KINDS:
        raise ValueError(f"unknown embedding optimizer {name!r}; choose one of "
                         f"{list(EMBEDDING_OPTIMIZERS)}")
    return _KINDS[name](learning_rate)
