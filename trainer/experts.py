"""Batched building blocks of the backbones: many small MLPs, and many softmax gates, as one tensor.

E experts run as one matmul per layer over a kernel of shape `(E, fan_in, units)`, never as E
Dense layers: the graph has the same size whatever E is. Batch normalization runs TensorFlow's
fused kernel (`trainer.normalization`), and the gates' softmax is written out in elementwise ops
(oneDNN's softmax over a small last axis was one of the slowest ops of a step). Gates (and
their optional MLPs) are batched the same way, with gates as a dimension.

`_Backbone` is the base class every backbone shares (`trainer.backbones`,
`trainer.extraction`), and `BackboneOutput` what a backbone's call returns.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import tensorflow as tf
import tf_keras as keras

from trainer.normalization import FusedBatchNorm

# `backbone(x)` → one tensor per task; `backbone(x, return_gates=True)` → (that list, gates).
BackboneOutput = list[tf.Tensor] | tuple[list[tf.Tensor], dict[str, tf.Tensor]]


def check_positive(name: str, value: object) -> int:
    """`value` as an int >= 1, or a ValueError naming `name` and the value."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def check_units(name: str, units: Sequence[int], allow_empty: bool = False) -> list[int]:
    """Layer sizes as a list of positive ints (empty only where `allow_empty`)."""
    if isinstance(units, str | bytes) or not isinstance(units, Sequence):
        raise ValueError(f"{name} must be a list of positive ints, got {units!r}")
    if not units and not allow_empty:
        raise ValueError(f"{name} must name at least one layer size, got {list(units)!r}")
    for u in units:
        if isinstance(u, bool) or not isinstance(u, int | np.integer) or u < 1:
            raise ValueError(f"{name} must be positive sizes, got {list(units)!r}")
    return [int(u) for u in units]


def check_mlp_options(activation: str, dropout: float, batch_norm: bool) -> None:
    """The options every MLP here shares; a ValueError names the bad one."""
    try:
        keras.activations.get(activation)
    except (ValueError, TypeError):
        raise ValueError(f"activation {activation!r} is not a Keras activation") from None
    if isinstance(dropout, bool) or not isinstance(dropout, int | float) or not 0 <= dropout < 1:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
    if not isinstance(batch_norm, bool):
        raise ValueError(f"batch_norm must be a bool, got {batch_norm!r}")


def build_sublayer(
    layer: keras.layers.Layer, input_shape: tf.TensorShape | Sequence[int | None]
) -> None:
    """Builds `layer` now, its variables named under its own name (`ple/level0_experts/...`)."""
    # Parents build their sublayers up front so a loaded model has every variable before its
    # weights are restored; without the scope, each level's variables would share one name.
    with tf.name_scope(layer.name):
        layer.build(input_shape)


def _uniform_glorot(fan_in: int, fan_out: int) -> keras.initializers.Initializer:
    # glorot_uniform on a (groups, fan_in, units) kernel counts `groups` into both fans, as if it
    # were a convolution's receptive field, and so shrinks every expert as experts are added.
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    return keras.initializers.RandomUniform(-limit, limit)


def _per_group(x: tf.Tensor, index: Sequence[int] | None) -> tf.Tensor:
    """`(batch, branches, d)` → `(batch, groups, d)` by each group's branch; `(batch, d)` as is."""
    if index is not None and x.shape.rank == 3:
        return tf.gather(x, index, axis=1)
    return x


def _batched_matmul(x: tf.Tensor, kernel: tf.Tensor) -> tf.Tensor:
    """`(batch, d)` read by every group, or `(batch, groups, d)`, times `(groups, d, u)`."""
    if x.shape.rank == 2:
        # One (batch, d) x (d, groups * units) GEMM: oneDNN's einsum for "bd,gdu->bgu" (and
        # its gradients) ran about half of a census-shaped MMoE step on its own. The kernel is
        # laid side by side with a concat: oneDNN's transpose of it cost more than the concat.
        groups, _, units = kernel.shape
        wide = tf.concat(tf.unstack(kernel, num=groups), axis=1)  # (d, groups * units)
        return tf.reshape(tf.matmul(x, wide), [-1, groups, units])
    return tf.einsum("bgd,gdu->bgu", x, kernel)


def _check_index(index: Sequence[int] | None, length: int) -> list[int] | None:
    if index is None:
        return None
    index = [int(i) for i in index]
    if len(index) != length or any(i < 0 for i in index):
        raise ValueError(f"input_index must give a branch >= 0 for each of {length} groups, "
                         f"got {index}")
    return index


@keras.utils.register_keras_serializable(package="multitower")
class BatchedMLP(keras.layers.Layer):
    """`sum(groups)` independent MLPs of the same sizes, computed together.

    Each layer is linear, then batch normalization (optional; statistics per (group, unit)), then
    the activation, then dropout (training only). A layer's kernel is stored as one variable per
    entry of `groups`, concatenated when called: a caller can point at one part's weights (the
    shared experts, for GradNorm) while every group still runs in the same matmul.

    Args:
        groups: The number of MLPs in each part, e.g. `[num_experts]` or `[task, shared]`.
        part_names: A weight-name prefix for each part.
        units: The sizes of the layers.
        activation: A Keras activation name, applied after every layer.
        dropout: The dropout rate after every layer, in [0, 1).
        batch_norm: Normalize every layer's linear output before the activation (the layer then
            has no bias: the normalization's offset takes its place).
        input_index: For a `(batch, branches, d)` input, the branch each of the `sum(groups)` MLPs
            reads; None for a `(batch, d)` input or one that is already `(batch, sum(groups), d)`.

    Input shape: `(batch, d)` (read by every group) or `(batch, branches, d)`.
    Output shape: `(batch, sum(groups), units[-1])`.
    """

    def __init__(
        self,
        groups: Sequence[int],
        part_names: Sequence[str],
        units: Sequence[int],
        activation: str = "relu",
        dropout: float = 0.0,
        batch_norm: bool = False,
        input_index: Sequence[int] | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        groups = [check_positive("groups", g) for g in groups]
        if not groups or len(part_names) != len(groups):
            raise ValueError(f"part_names {list(part_names)} must name each of groups {groups}")
        check_mlp_options(activation, dropout, batch_norm)
        self.groups = groups
        self.part_names = [str(p) for p in part_names]
        self.units = check_units("units", units)
        self.activation = activation
        self.dropout = float(dropout)
        self.batch_norm = batch_norm
        self.input_index = _check_index(input_index, sum(groups))
        self.act = keras.activations.get(activation)
        self.norms = (
            [FusedBatchNorm(axis=[1, 2], name=f"norm_{i}")
             for i in range(len(self.units))] if batch_norm else []
        )
        self.drop = keras.layers.Dropout(dropout) if dropout else None

    def build(self, input_shape: tf.TensorShape | Sequence[int | None]) -> None:
        fan_in = int(input_shape[-1])
        total = sum(self.groups)
        # kernels[layer][part]: (groups[part], fan_in, units); biases likewise (groups, units).
        self.kernels, self.biases = [], []
        for i, units in enumerate(self.units):
            self.kernels.append([
                self.add_weight(name=f"{part}_kernel_{i}", shape=(n, fan_in, units),
                                initializer=_uniform_glorot(fan_in, units))
                for part, n in zip(self.part_names, self.groups, strict=True)
            ])
            if not self.batch_norm:
                self.biases.append([
                    self.add_weight(name=f"{part}_bias_{i}", shape=(n, units),
                                    initializer="zeros")
                    for part, n in zip(self.part_names, self.groups, strict=True)
                ])
            else:
                build_sublayer(self.norms[i], (None, total, units))
            fan_in = units
        super().build(input_shape)

    @staticmethod
    def _joined(parts: list[tf.Variable]) -> tf.Tensor:
        return parts[0] if len(parts) == 1 else tf.concat(parts, axis=0)

    def call(self, x: tf.Tensor, training: bool | None = None) -> tf.Tensor:
        h = _per_group(x, self.input_index)
        for i in range(len(self.units)):
            h = _batched_matmul(h, self._joined(self.kernels[i]))
            if self.batch_norm:
                h = self.norms[i](h, training=training)
            else:
                h = h + self._joined(self.biases[i])
            h = self.act(h)
            if self.drop is not None:
                h = self.drop(h, training=training)
        return h

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "groups": list(self.groups),
            "part_names": list(self.part_names),
            "units": list(self.units),
            "activation": self.activation,
            "dropout": self.dropout,
            "batch_norm": self.batch_norm,
            "input_index": None if self.input_index is None else list(self.input_index),
        }


@keras.utils.register_keras_serializable(package="multitower")
class GatingNetwork(keras.layers.Layer):
    """`num_gates` softmax gates over the same `num_experts` experts, as one batched tensor.

    Each gate is an optional MLP (`hidden_units`, batched over gates like the experts) and a
    linear map to one logit per expert, then a softmax. A gate gives weight exactly zero to the
    experts it may not see (`visible`): CGC's task gates see their own and the shared experts.

    Args:
        num_gates: The number of gates.
        num_experts: The number of experts every gate's weights are laid over.
        visible: Optional `(num_gates, num_experts)` booleans, the experts each gate may weight;
            None: every gate sees every expert.
        hidden_units: The sizes of each gate's MLP before its logits (may be empty).
        activation, dropout, batch_norm: Of that MLP's layers (see `BatchedMLP`).
        input_index: For a `(batch, branches, d)` input, the branch each gate reads.

    Input shape: `(batch, d)` (read by every gate) or `(batch, branches, d)`.
    Output shape: `(batch, num_gates, num_experts)`; every gate's weights sum to one.
    """

    def __init__(
        self,
        num_gates: int,
        num_experts: int,
        visible: Sequence[Sequence[bool]] | None = None,
        hidden_units: Sequence[int] = (),
        activation: str = "relu",
        dropout: float = 0.0,
        batch_norm: bool = False,
        input_index: Sequence[int] | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.num_gates = check_positive("num_gates", num_gates)
        self.num_experts = check_positive("num_experts", num_experts)
        self.hidden_units = check_units("gate_units", hidden_units, allow_empty=True)
        check_mlp_options(activation, dropout, batch_norm)
        self.activation = activation
        self.dropout = float(dropout)
        self.batch_norm = batch_norm
        self.input_index = _check_index(input_index, self.num_gates)
        self._visible = None
        if visible is not None:
            mask = np.asarray(visible, dtype=bool)
            if mask.shape != (self.num_gates, self.num_experts) or not mask.any(axis=1).all():
                raise ValueError(f"visible must be ({num_gates}, {num_experts}) booleans with at "
                                 f"least one expert per gate, got {np.asarray(visible).tolist()}")
            self._visible = mask
        self.hidden = BatchedMLP(
            [self.num_gates], ["gate"], self.hidden_units, activation, dropout, batch_norm,
            name="gate_mlp",
        ) if self.hidden_units else None

    def visible_experts(self, gate: int) -> list[int]:
        """The experts gate `gate` may weight, in order (its slice of the output)."""
        if self._visible is None:
            return list(range(self.num_experts))
        return np.flatnonzero(self._visible[gate]).tolist()

    def build(self, input_shape: tf.TensorShape | Sequence[int | None]) -> None:
        fan_in = int(input_shape[-1])
        if self.hidden is not None:
            build_sublayer(self.hidden, (None, self.num_gates, fan_in))
            fan_in = self.hidden_units[-1]
        self.kernel = self.add_weight(
            name="gate_kernel", shape=(self.num_gates, fan_in, self.num_experts),
            initializer=_uniform_glorot(fan_in, self.num_experts),
        )
        self.bias = self.add_weight(
            name="gate_bias", shape=(self.num_gates, self.num_experts), initializer="zeros",
        )
        super().build(input_shape)

    def call(self, x: tf.Tensor, training: bool | None = None) -> tf.Tensor:
        h = _per_group(x, self.input_index)
        if self.hidden is not None:
            h = self.hidden(h, training=training)
        logits = _batched_matmul(h, self.kernel) + self.bias
        if self._visible is not None:
            # -inf, not a large negative number: the weight is then exactly zero in any dtype.
            hidden = tf.constant(float("-inf"), dtype=logits.dtype)
            logits = tf.where(tf.constant(self._visible), logits, hidden)
        # Written out: oneDNN's softmax over a (batch, gates, 8) tensor took ~0.8 ms of a ~7 ms
        # census-shaped MMoE step; these four elementwise ops take a few microseconds.
        exp = tf.exp(logits - tf.stop_gradient(tf.reduce_max(logits, axis=-1, keepdims=True)))
        return exp / tf.reduce_sum(exp, axis=-1, keepdims=True)

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "num_gates": self.num_gates,
            "num_experts": self.num_experts,
            "visible": None if self._visible is None else self._visible.tolist(),
            "hidden_units": list(self.hidden_units),
            "activation": self.activation,
            "dropout": self.dropout,
            "batch_norm": self.batch_norm,
            "input_index": None if self.input_index is None else list(self.input_index),
        }


class _Backbone(keras.layers.Layer):
    """What every backbone shares: task names, MLP options, the gate and GradNorm accessors.

    Args:
        task_names: The tasks, in output order: unique, non-empty names.
        activation: A Keras activation name, applied at every MLP layer.
        dropout: The dropout rate after every MLP layer, in [0, 1).
        batch_norm: Whether every MLP layer normalizes its linear output.
        **kwargs: `keras.layers.Layer` arguments (`name`, `dtype`, ...).

    Raises:
        ValueError: `task_names` is empty or repeats a name, or an MLP option is invalid.
    """

    def __init__(
        self,
        task_names: Sequence[str],
        activation: str = "relu",
        dropout: float = 0.0,
        batch_norm: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if isinstance(task_names, str) or not task_names or not all(
            isinstance(t, str) and t for t in task_names
        ):
            raise ValueError(f"task_names must be a non-empty list of names, got {task_names!r}")
        if len(set(task_names)) != len(task_names):
            raise ValueError(f"task_names must be unique, got {list(task_names)}")
        check_mlp_options(activation, dropout, batch_norm)
        self.task_names = list(task_names)
        self.num_tasks = len(self.task_names)
        self.activation = activation
        self.dropout = float(dropout)
        self.batch_norm = batch_norm

    def _mlp_options(self) -> dict:
        return {"activation": self.activation, "dropout": self.dropout,
                "batch_norm": self.batch_norm}

    def gate_outputs(
        self, x: tf.Tensor | Sequence[tf.Tensor], training: bool | None = None
    ) -> dict[str, tf.Tensor]:
        """`{gate name: (batch, experts it sees)}` softmax weights for `x` (eager or traced)."""
        return self(x, training=training, return_gates=True)[1]

    def gate_experts(self) -> dict[str, list[str]]:
        """`{gate name: the names of the experts it weighs, in its weights' order}` (none here).

        Experts are named `e<i>` within their group: `e0`, `e1`, ... in MoE and MMoE;
        `<task>/e<i>` and `shared/e<i>` in CGC and PLE, the same names at every level.
        """
        return {}

    def last_shared_variables(self) -> list[tf.Variable]:
        """The weights of the last layer every task shares (empty where there is none)."""
        raise NotImplementedError

    def get_config(self) -> dict:
        return {**super().get_config(), "task_names": list(self.task_names),
                **self._mlp_options()}
