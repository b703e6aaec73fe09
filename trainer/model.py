"""A model is a backbone plus heads, built from the config as one functional tf-keras model.

Inputs: raw features keyed by their log names (see `trainer.features.raw_inputs`).
Outputs: `{task name: (batch, 1)}`: a probability for binary tasks, a value for regression.
Each tower layer is named after its task, so Keras logs `click_auc`, `watch_time_rmse`, ...
"""

from __future__ import annotations

import tf_keras as keras

from multitower.config import Config
from trainer.backbones import MMoE
from trainer.features import feature_vector, raw_inputs
from trainer.heads import TaskTower

Normalization = dict[str, dict[str, float]]


def build_model(config: Config, normalization: Normalization) -> keras.Model:
    """Builds the (uncompiled) model; `normalization` holds the first day's numeric stats."""
    data, spec = config.data, config.model
    inputs = raw_inputs(data)
    x = feature_vector(inputs, data, normalization)
    if spec.backbone != "mmoe":  # the config's Literal forbids it; guard against drift.
        raise ValueError(f"unknown backbone {spec.backbone!r}")
    per_task = MMoE(
        num_tasks=len(data.tasks),
        num_experts=spec.mmoe.num_experts,
        expert_units=spec.mmoe.expert_units,
        name="mmoe",
    )(x)
    outputs = {
        task.name: TaskTower(spec.tower_units, task.type, name=task.name)(h)
        for task, h in zip(data.tasks, per_task, strict=True)
    }
    return keras.Model(inputs=inputs, outputs=outputs, name=spec.name)


def make_optimizer(config: Config) -> keras.optimizers.Optimizer:
    lr = config.train.learning_rate
    return {
        "adam": lambda: keras.optimizers.Adam(lr),
        "adagrad": lambda: keras.optimizers.Adagrad(lr),
        "sgd": lambda: keras.optimizers.SGD(lr),
    }[config.train.optimizer]()


def compile_model(model: keras.Model, config: Config) -> None:
    """Per-task losses, weights and metrics (AUC for binary, RMSE for regression)."""
    losses, weights, metrics = {}, {}, {}
    for task in config.data.tasks:
        weights[task.name] = task.loss_weight
        if task.type == "binary":
            losses[task.name] = keras.losses.BinaryCrossentropy()
            metrics[task.name] = [keras.metrics.AUC(name="auc", num_thresholds=1000)]
        else:
            losses[task.name] = keras.losses.MeanSquaredError()
            metrics[task.name] = [keras.metrics.RootMeanSquaredError(name="rmse")]
    model.compile(
        optimizer=make_optimizer(config), loss=losses, loss_weights=weights, metrics=metrics
    )
    # train_step already returns cluster-wide metric results; tf-keras' default "auto" reduction
    # sums them again over every replica (keras-team/keras#16664), so per-batch logs under
    # MultiWorkerMirroredStrategy showed AUC 1.36 with two workers. "first" reports them as is.
    model.distribute_reduction_method = "first"
