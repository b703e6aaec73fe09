"""The extraction backbones: CGC and PLE (Tang et al., RecSys 2020).

Called like every backbone (see `trainer.backbones`, which also exports them): `backbone(x)` →
a list with one `(batch, expert_units[-1])` tensor per task; `backbone(x, return_gates=True)` →
`(outputs, gates)`. Each level's experts and gates are batched tensors (`trainer.experts`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import tensorflow as tf
import tf_keras as keras

from trainer.experts import (
    BackboneOutput,
    BatchedMLP,
    GatingNetwork,
    _Backbone,
    build_sublayer,
    check_positive,
    check_units,
)


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
    ) -> None:
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

    def gate_experts(self) -> dict[str, list[str]]:
        counts = self.task_experts if isinstance(self.task_experts, dict) else dict.fromkeys(
            self.task_names, self.task_experts)
        names = [f"{t}/e{i}" for t in self.task_names for i in range(counts[t])]
        names += [f"shared/e{i}" for i in range(self.shared_experts)]
        return {self._gate_name(level, g): [names[i] for i in gating.visible_experts(g)]
                for level, gating in enumerate(self.level_gates)
                for g in range(gating.num_gates)}

    def build(self, input_shape: tf.TensorShape) -> None:
        shape = input_shape
        for experts, gates in zip(self.level_experts, self.level_gates, strict=True):
            build_sublayer(experts, shape)
            build_sublayer(gates, shape)
            shape = tf.TensorShape((None, self.num_tasks + 1, self.expert_units[-1]))
        super().build(input_shape)

    def call(
        self, x: tf.Tensor, training: bool | None = None, return_gates: bool = False
    ) -> BackboneOutput:
        h, gates = x, {}
        for level, (experts, gating) in enumerate(
            zip(self.level_experts, self.level_gates, strict=True)
        ):
            weights = gating(h, training=training)  # (batch, gates, all experts)
            # Tasks' mixtures, then (below the last level) the shared one: the next level's input.
            h = tf.matmul(weights, experts(h, training=training))
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
        task_names: The tasks, in output order.
        shared_experts: The number of experts every task's gate sees.
        task_experts: Each task's own experts: one count for all, or `{task: count}`.
        expert_units: Each expert's layer sizes.
        gate_units: Each gate's MLP before its softmax (may be empty: linear + softmax).
        activation, dropout, batch_norm: Applied at every expert and gate-MLP layer.

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
    ) -> None:
        super().__init__(task_names, 1, shared_experts, task_experts, expert_units, gate_units,
                         **kwargs)

    def _gate_name(self, level: int, gate: int) -> str:
        return self.task_names[gate]


@keras.utils.register_keras_serializable(package="multitower")
class PLE(_Extraction):
    """Progressive Layered Extraction (Tang et al., RecSys 2020): `levels` stacked CGC levels.

    Args:
        task_names: The tasks, in output order (none may be called "shared" when `levels` > 1).
        levels: Extraction levels; 1 is CGC.
        shared_experts, task_experts, expert_units, gate_units, activation, dropout, batch_norm:
            Per level, as `CGC`.

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
    ) -> None:
        super().__init__(task_names, levels, shared_experts, task_experts, expert_units,
                         gate_units, **kwargs)
        if self.levels > 1 and "shared" in self.task_names:
            raise ValueError("a task named 'shared' would clash with PLE's shared gates "
                             "'level{i}/shared'; rename the task")

    def get_config(self) -> dict:
        return {**super().get_config(), "levels": self.levels}
