"""Multi-task backbones: one input vector in, one representation per task out.

Every backbone is called as `backbone(x)` → a list with one `(batch, units)` tensor per task, in
the order of `task_names`; `backbone(x, return_gates=True)` → `(outputs, gates)` where `gates`
maps a gate's name to its softmax weights `(batch, experts that gate sees)`. Experts and gates
are batched tensors (see `trainer.experts`), never a Python loop of layers.

`last_shared_variables()` names the weights of the last layer every task shares (GradNorm
measures each task's gradient there); `single_task` shares none.

CGC and PLE live in `trainer.extraction`, the base class `_Backbone` in `trainer.experts`; both
are imported here, so every backbone can be imported from this module.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import tensorflow as tf
import tf_keras as keras

from multitower.config import ModelConfig
from trainer.experts import (
    BackboneOutput,
    BatchedMLP,
    GatingNetwork,
    _Backbone,
    build_sublayer,
    check_positive,
    check_units,
)
from trainer.extraction import CGC, PLE


@keras.utils.register_keras_serializable(package="multitower")
class SharedBottom(_Backbone):
    """One MLP whose output every task reads (Caruana 1997).

    Args:
        task_names: The tasks, in output order.
        units: The MLP's layer sizes.
        activation, dropout, batch_norm: Applied at every layer (see `trainer.experts.BatchedMLP`).

    Input shape: `(batch, d)`.
    Output: `num_tasks` references to the same tensor `(batch, units[-1])`; no gates.
    """

    def __init__(self, task_names: Sequence[str], units: Sequence[int], **kwargs) -> None:
        super().__init__(task_names, **kwargs)
        self.units = check_units("units", units)
        self.mlp = BatchedMLP([1], ["shared"], self.units, **self._mlp_options(), name="mlp")

    def build(self, input_shape: tf.TensorShape) -> None:
        build_sublayer(self.mlp, input_shape)
        super().build(input_shape)

    def call(
        self, x: tf.Tensor, training: bool | None = None, return_gates: bool = False
    ) -> BackboneOutput:
        h = self.mlp(x, training=training)[:, 0]
        outputs = [h] * self.num_tasks
        return (outputs, {}) if return_gates else outputs

    def last_shared_variables(self) -> list[tf.Variable]:
        return [self.mlp.kernels[-1][0]]  # (1, units[-2] or d, units[-1])

    def get_config(self) -> dict:
        return {**super().get_config(), "units": list(self.units)}


class _Mixture(_Backbone):
    """`num_experts` experts on the same input mixed by `_num_gates(num_tasks)` softmax gates."""

    def __init__(
        self,
        task_names: Sequence[str],
        num_experts: int,
        expert_units: Sequence[int],
        gate_units: Sequence[int] = (),
        **kwargs,
    ) -> None:
        super().__init__(task_names, **kwargs)
        self.num_experts = check_positive("num_experts", num_experts)
        self.expert_units = check_units("expert_units", expert_units)
        self.gate_units = check_units("gate_units", gate_units, allow_empty=True)
        self.experts = BatchedMLP([self.num_experts], ["expert"], self.expert_units,
                                  **self._mlp_options(), name="experts")
        self.gates = GatingNetwork(self._num_gates(), self.num_experts,
                                   hidden_units=self.gate_units, **self._mlp_options(),
                                   name="gates")

    def _num_gates(self) -> int:
        raise NotImplementedError

    def _gate_names(self) -> list[str]:
        raise NotImplementedError

    def build(self, input_shape: tf.TensorShape) -> None:
        build_sublayer(self.experts, input_shape)
        build_sublayer(self.gates, input_shape)
        super().build(input_shape)

    def gate_experts(self) -> dict[str, list[str]]:
        names = [f"e{i}" for i in range(self.num_experts)]
        return {gate: names for gate in self._gate_names()}

    def _mix(
        self, x: tf.Tensor, training: bool | None, return_gates: bool
    ) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
        """The mixtures `(batch, gates, expert_units[-1])` and, if asked, the gates by name."""
        weights = self.gates(x, training=training)  # (batch, gates, experts)
        mixed = tf.matmul(weights, self.experts(x, training=training))  # batched over rows
        if not return_gates:
            return mixed, {}
        return mixed, dict(zip(self._gate_names(), tf.unstack(weights, axis=1), strict=True))

    def last_shared_variables(self) -> list[tf.Variable]:
        return [self.experts.kernels[-1][0]]  # (num_experts, fan_in, expert_units[-1])

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "num_experts": self.num_experts,
            "expert_units": list(self.expert_units),
            "gate_units": list(self.gate_units),
        }


@keras.utils.register_keras_serializable(package="multitower")
class MoE(_Mixture):
    """One-gate Mixture-of-Experts (Jacobs et al. 1991; the baseline of Ma et al., KDD 2018).

    `num_experts` expert MLPs read the input; ONE softmax gate mixes them, and every task reads
    that same mixture.

    Args:
        task_names: The tasks, in output order.
        num_experts: The number of experts.
        expert_units: Each expert's layer sizes.
        gate_units: The gate's MLP before its softmax (may be empty: linear + softmax).
        activation, dropout, batch_norm: Applied at every expert and gate-MLP layer.

    Input shape: `(batch, d)`.
    Output: `num_tasks` references to the same tensor `(batch, expert_units[-1])`; gates:
    `{"shared": (batch, num_experts)}`.
    """

    def _num_gates(self) -> int:
        return 1

    def _gate_names(self) -> list[str]:
        return ["shared"]

    def call(
        self, x: tf.Tensor, training: bool | None = None, return_gates: bool = False
    ) -> BackboneOutput:
        mixed, gates = self._mix(x, training, return_gates)
        outputs = [mixed[:, 0]] * self.num_tasks
        return (outputs, gates) if return_gates else outputs


@keras.utils.register_keras_serializable(package="multitower")
class MMoE(_Mixture):
    """Multi-gate Mixture-of-Experts (Ma et al., KDD 2018).

    `num_experts` expert MLPs share the input; each task's own softmax gate mixes the expert
    outputs into that task's representation.

    Takes the arguments of `MoE`.

    Input shape: `(batch, d)`.
    Output: a list of `num_tasks` tensors `(batch, expert_units[-1])`; gates: `{task name:
    (batch, num_experts)}`.
    """

    def _num_gates(self) -> int:
        return self.num_tasks

    def _gate_names(self) -> list[str]:
        return list(self.task_names)

    def call(
        self, x: tf.Tensor, training: bool | None = None, return_gates: bool = False
    ) -> BackboneOutput:
        mixed, gates = self._mix(x, training, return_gates)
        outputs = tf.unstack(mixed, num=self.num_tasks, axis=1)
        return (outputs, gates) if return_gates else outputs


@keras.utils.register_keras_serializable(package="multitower")
class SingleTask(_Backbone):
    """One independent MLP per task, batched: no parameter is shared (the no-sharing baseline).

    Args:
        task_names: The tasks, in output order.
        units: Each task's MLP layer sizes.
        activation, dropout, batch_norm: Applied at every layer.

    Input shape: `(batch, d)` read by every task, or a list of `num_tasks` tensors `(batch, d)`,
    one per task (e.g. each task's own embeddings), each read only by its task's MLP.
    Output: a list of `num_tasks` tensors `(batch, units[-1])`; no gates.
    """

    def __init__(self, task_names: Sequence[str], units: Sequence[int], **kwargs) -> None:
        super().__init__(task_names, **kwargs)
        self.units = check_units("units", units)
        self.mlp = BatchedMLP([self.num_tasks], ["task"], self.units, **self._mlp_options(),
                              name="mlp")

    def _stacked(self, x: tf.Tensor | Sequence[tf.Tensor]) -> tf.Tensor:
        if not isinstance(x, list | tuple):
            return x
        if len(x) != self.num_tasks:
            raise ValueError(f"SingleTask got {len(x)} inputs for {self.num_tasks} tasks "
                             f"{self.task_names}")
        return tf.stack(x, axis=1)  # (batch, tasks, d)

    def build(self, input_shape: tf.TensorShape | Sequence[tf.TensorShape]) -> None:
        mlp_shape = input_shape
        if isinstance(input_shape, list | tuple) and not isinstance(input_shape[0], int | None):
            dims = {int(tf.TensorShape(s)[-1]) for s in input_shape}
            if len(input_shape) != self.num_tasks or len(dims) != 1:
                raise ValueError(f"SingleTask needs {self.num_tasks} inputs of one width, got "
                                 f"shapes {[tf.TensorShape(s).as_list() for s in input_shape]}")
            mlp_shape = tf.TensorShape((None, self.num_tasks, dims.pop()))
        build_sublayer(self.mlp, mlp_shape)
        super().build(input_shape)

    def call(
        self,
        x: tf.Tensor | Sequence[tf.Tensor],
        training: bool | None = None,
        return_gates: bool = False,
    ) -> BackboneOutput:
        h = self.mlp(self._stacked(x), training=training)
        outputs = tf.unstack(h, num=self.num_tasks, axis=1)
        return (outputs, {}) if return_gates else outputs

    def last_shared_variables(self) -> list[tf.Variable]:
        return []

    def get_config(self) -> dict:
        return {**super().get_config(), "units": list(self.units)}


def build_backbone(
    model: ModelConfig, task_names: Sequence[str], name: str = "backbone"
) -> keras.layers.Layer:
    """The backbone `model.backbone` names, sized by its config block, with the model's options."""
    options = {"activation": model.activation, "dropout": model.dropout,
               "batch_norm": model.batch_norm, "name": name}
    kind = model.backbone
    if kind in ("shared_bottom", "single_task"):
        cls = SharedBottom if kind == "shared_bottom" else SingleTask
        return cls(task_names, getattr(model, kind).units, **options)
    if kind in ("moe", "mmoe"):
        spec = getattr(model, kind)
        return (MoE if kind == "moe" else MMoE)(
            task_names, spec.num_experts, spec.expert_units, spec.gate_units, **options)
    if kind in ("cgc", "ple"):
        spec = getattr(model, kind)
        task_experts = (dict(spec.task_experts) if isinstance(spec.task_experts, Mapping)
                        else spec.task_experts)
        args = (spec.shared_experts, task_experts, spec.expert_units, spec.gate_units)
        if kind == "cgc":
            return CGC(task_names, *args, **options)
        return PLE(task_names, spec.levels, *args, **options)
    raise ValueError(f"unknown backbone {kind!r}; expected one of shared_bottom, moe, mmoe, "
                     "cgc, ple, single_task")
