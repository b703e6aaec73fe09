"""The network: a backbone plus heads, built from the config as one plain functional model.

Export, evaluation and prediction use the network alone; training wraps it in
`trainer.training_model.TrainingModel`, which holds the balancer and the metrics.

Inputs: raw features keyed by their log names (see `trainer.features.raw_inputs`).
Outputs: `{task name: (batch, 1)}` (a probability for binary tasks; a regression task's value in
its training unit, e.g. log1p seconds), with ESMM also `{ctcvr_name: (batch, 1)}`, and the
backbone's gate weights as `{"gate/<gate name>": (batch, experts)}` for diagnostics.
"""

from __future__ import annotations

import tensorflow as tf
import tf_keras as keras

from multitower.config import Config
from trainer.backbones import build_backbone
from trainer.features import feature_vector, raw_inputs
from trainer.heads import build_heads

Normalization = dict[str, dict[str, float]]
GATE_PREFIX = "gate/"


def build_network(config: Config, normalization: Normalization) -> keras.Model:
    """Builds the network (inside the strategy scope when it is to be trained).

    Its layers take `train.precision` as their dtype policy (the global policy is restored
    afterwards); task outputs and gate weights are float32 either way.

    Args:
        config: The loaded config.
        normalization: `{numeric feature: {"mean": m, "std": s}}`, frozen from the first day.

    Returns:
        The functional model, named `model.name`.
    """
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(config.train.precision)
    try:
        # Keras runs every layer's `call` through AutoGraph while it builds a functional
        # model, which transpiles the source of each layer class and of Keras' own code it
        # calls: 28 of 30 s of building a 27-table MMoE. No layer here has Python control
        # flow over tensors, so the network is built with AutoGraph off.
        return tf.autograph.experimental.do_not_convert(_build)(config, normalization)
    finally:
        keras.mixed_precision.set_global_policy(previous)


def _build(config: Config, normalization: Normalization) -> keras.Model:
    data, spec = config.data, config.model
    inputs = raw_inputs(data)
    names = [t.name for t in data.tasks]
    backbone = build_backbone(spec, names, name="backbone")
    if spec.backbone == "single_task":  # a true baseline: no embedding is shared either
        x = [feature_vector(inputs, data, normalization, spec.embeddings, prefix=f"{n}_")
             for n in names]
    else:
        x = feature_vector(inputs, data, normalization, spec.embeddings)
    per_task, gates = backbone(x, return_gates=True)
    outputs = build_heads(config, per_task)
    gate_names = [f"{GATE_PREFIX}{name}" for name in gates]
    gates = [tf.cast(g, tf.float32) if g.dtype != tf.float32 else g for g in gates.values()]
    outputs.update(dict(zip(gate_names, gates, strict=True)))
    return keras.Model(inputs=inputs, outputs=outputs, name=spec.name)


def gate_outputs(network: keras.Model) -> list[str]:
    """The names of the network's gate outputs (`gate/<gate name>`), in output order."""
    return [name for name in network.output if name.startswith(GATE_PREFIX)]  # dict keys
