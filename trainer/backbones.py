"""Multi-task backbones: one input vector in, one representation per task out.

Every backbone is called as `backbone(x)` → a list with one `(batch, units)` tensor per task, in
the order of `task_names`; `backbone(x, return_gates=True)` → `(outputs, gates)` where `gates`
maps a gate's name to its softmax weights `(batch, experts that gate sees)`. Experts and gates
are batched tensors (see `trainer.experts`), never a Python loop of layers.

`last_shared_variables()` names the weights of the last layer every task shares (GradNorm
measures each task's gradient there); `single_task` shares none.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import tensorflow as tf
import tf_keras as keras

from multitower.config import ModelConfig
from trainer.experts import (
    BatchedMLP,
    GatingNetwork,
    build_sublayer,
    check_mlp_options,
    check_positive,
    check_units,
)


class _Backbone(keras.layers.Layer):
    """What every backbone shares: task names, MLP options, the gate and GradNorm accessors."""

    def __init__(
        self,
        task_names: Sequence[str],
        activation: str = "relu",
        dropout: float = 0.0,
        batch_norm: bool = False,
        **kwargs,
    ):
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

    def gate_outputs(self, x, training=None) -> dict[str, tf.Tensor]:
        """`{gate name: (batch, experts it sees)}` softmax weights for `x` (eager or traced)."""
        return self(x, training=training, return_gates=True)[1]

    def last_shared_variables(self) -> list[tf.Variable]:
        """The weights of the last layer every task shares (empty where there is none)."""
        raise NotImplementedError

    def get_config(self) -> dict:
        return {**super().get_config(), "task_names": list(self.task_names),
                **self._mlp_options()}


@keras.utils.register_keras_serializable(package="multitower")
class SharedBottom(_Backbone):
    """One MLP whose output every task reads (Caruana 1997).

    Args:
        task_names: the tasks, in output order.
        units: the MLP's layer sizes.
        activation, dropout, batch_norm: applied at every layer (see `trainer.experts.BatchedMLP`).

    Input shape: `(batch, d)`.
    Output: `num_tasks` references to the same tensor `(batch, units[-1])`; no gates.
    """

    def __init__(self, task_names: Sequence[str], units: Sequence[int], **kwargs):
        super().__init__(task_names, **kwargs)
        self.units = check_units("units", units)
        self.mlp = BatchedMLP([1], ["shared"], self.units, **self._mlp_options(), name="mlp")

    def build(self, input_shape):
        build_sublayer(self.mlp, input_shape)
        super().build(input_shape)

    def call(self, x, training=None, return_gates: bool = False):
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
    ):
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

    def build(self, input_shape):
        build_sublayer(self.experts, input_shape)
        build_sublayer(self.gates, input_shape)
        super().build(input_shape)

    def _mix(self, x, training, return_gates: bool):
        """The mixtures `(batch, gates, expert_units[-1])` and, if asked, the gates by name."""
        weights = self.gates(x, training=training)  # (batch, gates, experts)
        mixed = tf.einsum("bge,beu->bgu", weights, self.experts(x, training=training))
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
        task_names: the tasks, in output order.
        num_experts: the number of experts.
        expert_units: each expert's layer sizes.
        gate_units: the gate's MLP before its softmax (may be empty: linear + softmax).
        activation, dropout, batch_norm: applied at every expert and gate-MLP layer.

    Input shape: `(batch, d)`.
    Output: `num_tasks` references to the same tensor `(batch, expert_units[-1])`; gates:
    `{"shared": (batch, num_experts)}`.
    """

    def _num_gates(self) -> int:
        return 1

    def _gate_names(self) -> list[str]:
        return ["shared"]

    def call(self, x, training=None, return_gates: bool = False):
        mixed, gates = self._mix(x, training, return_gates)
        outputs = [mixed[:, 0]] * self.num_tasks
        return (outputs, gates) if return_gates else outputs


@keras.utils.register_keras_serializable(package="multitower")
class MMoE(_Mixture):
    """Multi-gate Mixture-of-Experts (Ma et al., KDD 2018).

    `num_experts` expert MLPs share the input; each task's own softmax gate mixes the expert
    outputs into that task's representation.

    Args: as `MoE`.

    Input shape: `(batch, d)`.
    Output: a list of `num_tasks` tensors `(batch, expert_units[-1])`; gates: `{task name:
    (batch, num_experts)}`.
    """

    def _num_gates(self) -> int:
        return self.num_tasks

    def _gate_names(self) -> list[str]:
        return list(self.task_names)

    def call(self, x, training=None, return_gates: bool = False):
        mixed, gates = self._mix(x, training, return_gates)
        outputs = tf.unstack(mixed, num=self.num_tasks, axis=1)
        return (outputs, gates) if return_gates else outputs


class _Extraction(_Backbone):
    """Progressive Layered Extraction (Tang et al., RecSys 2020); one level is CGC.

    Every level holds each task's own experts and shared experts, all as ONE batched tensor in
    the order [task 0's experts, task 1's, ..., shared]. A task's gate mixes its own and the
    shared experts. Below the last level a shared gate mixes every expert. Level 0 reads `x`
    everywhere; a later level reads a stack of branches `(batch, num_tasks + 1, units)` (each
    task's mixture, then the shared one): task t's experts and gate read branch t, the shared
    experts and gate the last branch, picked per expert by a gather rather than a loop.
    """

    def __init__(
        self,
        task_names: Sequence[str],
        levels: int,
        shared_experts: int,
        task_experts: int | Mapping[str, int],
        expert_units: Sequence[int],
        gate_units: Sequence[int] = (),
        **kwargs,
    ):
        super().__init__(task_names, **kwargs)
        self.levels = check_positive("levels", levels)
        self.shared_experts = check_positive("shared_experts", shared_experts)
        if isinstance(task_experts, Mapping):
            if set(task_experts) != set(self.task_names):
                raise ValueError(
                    f"task_experts must give a count for every task {self.task_names} and no "
                    f"other, got {sorted(task_experts)}")
            counts = [check_positive(f"task_experts[{t!r}]", task_experts[t])
                      for t in self.task_names]
            self.task_experts: int | dict[str, int] = dict(zip(self.task_names, counts,
                                                               strict=True))
        else:
            count = check_positive("task_experts", task_experts)
            counts = [count] * self.num_tasks
            self.task_experts = count
        self.expert_units = check_units("expert_units", expert_units)
        self.gate_units = check_units("gate_units", gate_units, allow_empty=True)

        t = self.num_tasks
        # The branch each expert reads; branch t is task t's mixture, branch num_tasks shared.
        owner = [i for i in range(t) for _ in range(counts[i])] + [t] * self.shared_experts
        self.level_experts, self.level_gates = [], []
        for level in range(self.levels):
            num_gates = t if level == self.levels - 1 else t + 1
            visible = [[o in (g, t) for o in owner] for g in range(t)]
            visible += [[True] * len(owner)] * (num_gates - t)  # the shared gate sees them all
            self.level_experts.append(BatchedMLP(
                [sum(counts), self.shared_experts], ["task_expert", "shared_expert"],
                self.expert_units, **self._mlp_options(),
                input_index=None if level == 0 else owner, name=f"level{level}_experts",
            ))
            self.level_gates.append(GatingNetwork(
                num_gates, len(owner), visible, self.gate_units, **self._mlp_options(),
                input_index=None if level == 0 else list(range(num_gates)),
                name=f"level{level}_gates",
            ))

    def _gate_name(self, level: int, gate: int) -> str:
        return f"level{level}/{(self.task_names + ['shared'])[gate]}"

    def build(self, input_shape):
        shape = input_shape
        for experts, gates in zip(self.level_experts, self.level_gates, strict=True):
            build_sublayer(experts, shape)
            build_sublayer(gates, shape)
            shape = tf.TensorShape((None, self.num_tasks + 1, self.expert_units[-1]))
        super().build(input_shape)

    def call(self, x, training=None, return_gates: bool = False):
        h, gates = x, {}
        for level, (experts, gating) in enumerate(
            zip(self.level_experts, self.level_gates, strict=True)
        ):
            weights = gating(h, training=training)  # (batch, gates, all experts)
            # Tasks' mixtures, then (below the last level) the shared one: the next level's input.
            h = tf.einsum("bge,beu->bgu", weights, experts(h, training=training))
            if return_gates:
                for g in range(gating.num_gates):
                    gates[self._gate_name(level, g)] = tf.gather(
                        weights[:, g], gating.visible_experts(g), axis=1)
        outputs = tf.unstack(h, num=self.num_tasks, axis=1)
        return (outputs, gates) if return_gates else outputs

    def last_shared_variables(self) -> list[tf.Variable]:
        return [self.level_experts[-1].kernels[-1][1]]  # (shared_experts, fan_in, units[-1])

    def get_config(self) -> dict:
        task_experts = self.task_experts
        return {
            **super().get_config(),
            "shared_experts": self.shared_experts,
            "task_experts": dict(task_experts) if isinstance(task_experts, Mapping)
            else task_experts,
            "expert_units": list(self.expert_units),
            "gate_units": list(self.gate_units),
        }


@keras.utils.register_keras_serializable(package="multitower")
class CGC(_Extraction):
    """Customized Gate Control (Tang et al., RecSys 2020): PLE with one extraction level.

    Args:
        task_names: the tasks, in output order.
        shared_experts: the number of experts every task's gate sees.
        task_experts: each task's own experts: one count for all, or `{task: count}`.
        expert_units: each expert's layer sizes.
        gate_units: each gate's MLP before its softmax (may be empty: linear + softmax).
        activation, dropout, batch_norm: applied at every expert and gate-MLP layer.

    Input shape: `(batch, d)`.
    Output: a list of `num_tasks` tensors `(batch, expert_units[-1])`; gates: `{task name:
    (batch, own experts + shared_experts)}`, the task's own experts first.
    """

    def __init__(
        self,
        task_names: Sequence[str],
        shared_experts: int,
        task_experts: int | Mapping[str, int],
        expert_units: Sequence[int],
        gate_units: Sequence[int] = (),
        **kwargs,
    ):
        super().__init__(task_names, 1, shared_experts, task_experts, expert_units, gate_units,
                         **kwargs)

    def _gate_name(self, level: int, gate: int) -> str:
        return self.task_names[gate]


@keras.utils.register_keras_serializable(package="multitower")
class PLE(_Extraction):
    """Progressive Layered Extraction (Tang et al., RecSys 2020): `levels` stacked CGC levels.

    Args:
        task_names: the tasks, in output order (none may be called "shared" when `levels` > 1).
        levels: extraction levels; 1 is CGC.
        shared_experts, task_experts, expert_units, gate_units, activation, dropout, batch_norm:
            per level, as `CGC`.

    Input shape: `(batch, d)`.
    Output: a list of `num_tasks` tensors `(batch, expert_units[-1])`; gates: for each level i,
    `"level{i}/{task}": (batch, own experts + shared_experts)` and, below the last level,
    `"level{i}/shared": (batch, all experts of the level)`.
    """

    def __init__(
        self,
        task_names: Sequence[str],
        levels: int,
        shared_experts: int,
        task_experts: int | Mapping[str, int],
        expert_units: Sequence[int],
        gate_units: Sequence[int] = (),
        **kwargs,
    ):
        super().__init__(task_names, levels, shared_experts, task_experts, expert_units,
                         gate_units, **kwargs)
        if self.levels > 1 and "shared" in self.task_names:
            raise ValueError("a task named 'shared' would clash with PLE's shared gates "
                             "'level{i}/shared'; rename the task")

    def get_config(self) -> dict:
        return {**super().get_config(), "levels": self.levels}


@keras.utils.register_keras_serializable(package="multitower")
class SingleTask(_Backbone):
    """One independent MLP per task, batched: no parameter is shared (the no-sharing baseline).

    Args:
        task_names: the tasks, in output order.
        units: each task's MLP layer sizes.
        activation, dropout, batch_norm: applied at every layer.

    Input shape: `(batch, d)` read by every task, or a list of `num_tasks` tensors `(batch, d)`,
    one per task (e.g. each task's own embeddings), each read only by its task's MLP.
    Output: a list of `num_tasks` tensors `(batch, units[-1])`; no gates.
    """

    def __init__(self, task_names: Sequence[str], units: Sequence[int], **kwargs):
        super().__init__(task_names, **kwargs)
        self.units = check_units("units", units)
        self.mlp = BatchedMLP([self.num_tasks], ["task"], self.units, **self._mlp_options(),
                              name="mlp")

    def _stacked(self, x):
        if not isinstance(x, list | tuple):
            return x
        if len(x) != self.num_tasks:
            raise ValueError(f"SingleTask got {len(x)} inputs for {self.num_tasks} tasks "
                             f"{self.task_names}")
        return tf.stack(x, axis=1)  # (batch, tasks, d)

    def build(self, input_shape):
        mlp_shape = input_shape
        if isinstance(input_shape, list | tuple) and not isinstance(input_shape[0], int | None):
            dims = {int(tf.TensorShape(s)[-1]) for s in input_shape}
            if len(input_shape) != self.num_tasks or len(dims) != 1:
                raise ValueError(f"SingleTask needs {self.num_tasks} inputs of one width, got "
                                 f"shapes {[tf.TensorShape(s).as_list() for s in input_shape]}")
            mlp_shape = tf.TensorShape((None, self.num_tasks, dims.pop()))
        build_sublayer(self.mlp, mlp_shape)
        super().build(input_shape)

    def call(self, x, training=None, return_gates: bool = False):
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
