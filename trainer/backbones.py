"""Multi-task backbones: shared representations that each task reads through its own view.

Experts are one batched tensor with experts as a dimension (one einsum per layer), never a
Python loop of Dense layers, so adding experts adds no ops to the graph.
"""

from __future__ import annotations

from collections.abc import Sequence

import tensorflow as tf
import tf_keras as keras


@keras.utils.register_keras_serializable(package="multitower")
class MMoE(keras.layers.Layer):
    """Multi-gate Mixture-of-Experts (Ma et al., KDD 2018).

    `num_experts` expert MLPs share the input; each of `num_tasks` softmax gates mixes the expert
    outputs into that task's representation.

    Input shape: `(batch, input_dim)`.
    Output: a list of `num_tasks` tensors of shape `(batch, expert_units[-1])`; with
    `return_gates=True` in `call`, also the gate weights `(batch, num_tasks, num_experts)`.
    """

    def __init__(
        self,
        num_tasks: int,
        num_experts: int,
        expert_units: Sequence[int],
        activation: str = "relu",
        **kwargs,
    ):
        super().__init__(**kwargs)
        if num_tasks < 1 or num_experts < 1:
            raise ValueError(
                f"num_tasks and num_experts must be >= 1, got {num_tasks} and {num_experts}"
            )
        if not expert_units or any(u < 1 for u in expert_units):
            raise ValueError(f"expert_units must be positive sizes, got {list(expert_units)}")
        self.num_tasks = num_tasks
        self.num_experts = num_experts
        self.expert_units = [int(u) for u in expert_units]
        self.activation = keras.activations.get(activation)

    def build(self, input_shape):
        fan_in = int(input_shape[-1])
        self.expert_kernels, self.expert_biases = [], []
        for i, units in enumerate(self.expert_units):
            self.expert_kernels.append(self.add_weight(
                name=f"expert_kernel_{i}", shape=(self.num_experts, fan_in, units),
                initializer="glorot_uniform",
            ))
            self.expert_biases.append(self.add_weight(
                name=f"expert_bias_{i}", shape=(self.num_experts, units), initializer="zeros",
            ))
            fan_in = units
        self.gate_kernel = self.add_weight(
            name="gate_kernel", shape=(self.num_tasks, int(input_shape[-1]), self.num_experts),
            initializer="glorot_uniform",
        )
        self.gate_bias = self.add_weight(
            name="gate_bias", shape=(self.num_tasks, self.num_experts), initializer="zeros",
        )
        super().build(input_shape)

    def experts(self, x: tf.Tensor) -> tf.Tensor:
        """Every expert's output for every example: `(batch, num_experts, expert_units[-1])`."""
        h = tf.einsum("bd,edu->beu", x, self.expert_kernels[0]) + self.expert_biases[0]
        h = self.activation(h)
        for kernel, bias in zip(self.expert_kernels[1:], self.expert_biases[1:], strict=True):
            h = self.activation(tf.einsum("beu,euv->bev", h, kernel) + bias)
        return h

    def gates(self, x: tf.Tensor) -> tf.Tensor:
        """Each task's softmax weights over experts: `(batch, num_tasks, num_experts)`."""
        return tf.nn.softmax(tf.einsum("bd,tde->bte", x, self.gate_kernel) + self.gate_bias)

    def call(self, x: tf.Tensor, return_gates: bool = False):
        gates = self.gates(x)
        mixed = tf.einsum("bte,beu->btu", gates, self.experts(x))
        outputs = tf.unstack(mixed, num=self.num_tasks, axis=1)
        return (outputs, gates) if return_gates else outputs

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "num_tasks": self.num_tasks,
            "num_experts": self.num_experts,
            "expert_units": self.expert_units,
            "activation": keras.activations.serialize(self.activation),
        }
