"""A model is a backbone plus heads, built from the config as one functional tf-keras model.

Inputs: raw features keyed by their log names (see `trainer.features.raw_inputs`).
Outputs: `{task name: (batch, 1)}` (a probability for binary tasks; a regression task's value in
its training unit, e.g. log1p seconds), with ESMM also `{ctcvr_name: (batch, 1)}`, and the
backbone's gate weights as `{"gate/<gate name>": (batch, experts)}` for diagnostics.

`MultiTaskModel.train_step` computes one loss per term (see `trainer.losses`), lets the
configured balancer turn them into gradients, applies the embedding tables' (row-sparse)
gradients with the embedding optimizer and the rest with the dense one (`train.optimizer`),
and logs the task weights and gate means.
"""

from __future__ import annotations

import tensorflow as tf
import tf_keras as keras

from multitower.config import Config
from trainer.backbones import build_backbone
from trainer.balancing import Balancer, make_balancer
from trainer.embeddings import (
    apply_split,
    embedding_variables,
    is_embedding_variable,
    make_embedding_optimizer,
)
from trainer.features import feature_vector, raw_inputs
from trainer.heads import build_heads
from trainer.losses import LossTerm, invert_output, loss_terms, term_losses, term_targets

Normalization = dict[str, dict[str, float]]
GATE_PREFIX = "gate/"


class MultiTaskModel(keras.Model):
    """The functional model with a multi-task `train_step`; see the module docstring."""

    def configure(self, config: Config, balancer: Balancer, gate_names: list[str]) -> None:
        """Attaches losses, balancer and metrics; call inside the strategy scope."""
        # Nothing set here is tracked as a Keras attribute: the balancer's variables
        # (uncertainty's log-variances, GradNorm's state) and the metrics' running sums would
        # otherwise join the model's weights and the SavedModel. The checkpoint holds the
        # balancer explicitly; metric state is per day and never restored.
        self._self_setattr_tracking = False
        try:
            self._configure(config, balancer, gate_names)
        finally:
            self._self_setattr_tracking = True

    def _configure(self, config: Config, balancer: Balancer, gate_names: list[str]) -> None:
        self.embedding_optimizer: keras.optimizers.Optimizer | None = None  # compile_model's
        self.terms: list[LossTerm] = loss_terms(config)
        self.balancer = balancer
        self.esmm = config.model.esmm if config.model.heads == "esmm" else None
        tower_vars = set()
        for task in config.data.tasks:
            tower_vars |= {v.ref() for v in self.get_layer(task.name).trainable_variables}
        self._shared = [v.ref() not in tower_vars for v in self.trainable_variables]
        backbone = self.get_layer("backbone")
        self._last_shared = list(backbone.last_shared_variables())
        self._loss = keras.metrics.Mean(name="loss")
        self._term_metrics: dict[str, list[keras.metrics.Metric]] = {}
        for term in self.terms:
            kept = [keras.metrics.Mean(name=f"{term.name}_loss")]
            if term.kind == "binary":
                kept.append(keras.metrics.AUC(num_thresholds=1000, name=f"{term.name}_auc"))
            else:
                kept.append(keras.metrics.RootMeanSquaredError(name=f"{term.name}_rmse"))
            self._term_metrics[term.name] = kept
        if self.esmm is not None:  # pCVR judged where it is observable: on clicked rows
            self._cvr_auc = keras.metrics.AUC(
                num_thresholds=1000, name=f"{self.esmm.cvr_task}_auc_clicked"
            )
        self._gate_means = {g: keras.metrics.MeanTensor(name=g) for g in gate_names}

    def set_embedding_optimizer(self, optimizer: keras.optimizers.Optimizer) -> None:
        """The row-sparse optimizer of the embedding shards (untracked: `checkpoint_objects`)."""
        self._self_setattr_tracking = False
        try:
            self.embedding_optimizer = optimizer
        finally:
            self._self_setattr_tracking = True

    def build_optimizers(self) -> None:
        """Creates both optimizers' slots (inside the strategy scope), so that a checkpoint
        restores them too: the dense one over every variable but the embedding shards."""
        dense = [v for v in self.trainable_variables if not is_embedding_variable(v)]
        self.optimizer.build(dense + self.balancer.trainable_weights())
        self.embedding_optimizer._create_all_weights(embedding_variables(self))

    def checkpoint_objects(self) -> dict[str, tf.Module]:
        """What a training checkpoint holds: `tf.train.Checkpoint(**model.checkpoint_objects())`."""
        return {"model": self, "optimizer": self.optimizer,
                "embedding_optimizer": self.embedding_optimizer, "balancer": self.balancer}

    @property
    def metrics(self) -> list[keras.metrics.Metric]:
        found = [self._loss] + [m for ms in self._term_metrics.values() for m in ms]
        if self.esmm is not None:
            found.append(self._cvr_auc)
        return found + list(self._gate_means.values())

    def _update_metrics(self, labels, targets, outputs, losses, total) -> dict[str, tf.Tensor]:
        self._loss.update_state(total)
        for term in self.terms:
            mean_loss, quality = self._term_metrics[term.name]
            mean_loss.update_state(losses[term.name])
            y, mask = targets[term.name]
            prediction = outputs[term.output]
            if term.kind != "binary":  # judged in the label's own unit, as served
                y = invert_output(y, term.transform)
                prediction = invert_output(prediction, term.transform)
            quality.update_state(y, prediction, sample_weight=mask)
        if self.esmm is not None:
            clicked = tf.where(tf.math.is_nan(labels[self.esmm.ctr_task]), 0.0,
                               labels[self.esmm.ctr_task])
            conversion = labels[self.esmm.cvr_task]
            present = tf.cast(tf.logical_not(tf.math.is_nan(conversion)), tf.float32)
            self._cvr_auc.update_state(
                tf.where(present > 0, conversion, 0.0), outputs[self.esmm.cvr_task],
                sample_weight=clicked * present,
            )
        for name, metric in self._gate_means.items():
            metric.update_state(tf.reduce_mean(outputs[name], axis=0))
        logs = {m.name: m.result() for m in self.metrics if m.name not in self._gate_means}
        for name, metric in self._gate_means.items():
            means = metric.result()
            for k in range(means.shape[0]):
                logs[f"{name}/expert{k}"] = means[k]
        for term, weight in self.balancer.weights().items():
            logs[f"weight/{term}"] = weight
        return logs

    def train_step(self, data):
        features, labels = data
        targets = term_targets(self.terms, labels)
        with tf.GradientTape(persistent=True) as tape:
            outputs = self(features, training=True)
            losses = term_losses(self.terms, labels, outputs, targets)
        variables = self.trainable_variables
        total, grads = self.balancer.gradients(
            tape, losses, variables, self._shared, self._last_shared
        )
        del tape
        extra = self.balancer.trainable_weights()
        apply_split(self.optimizer, self.embedding_optimizer,
                    zip(grads, variables + extra, strict=True))
        return self._update_metrics(labels, targets, outputs, losses, total)

    def test_step(self, data):
        features, labels = data
        targets = term_targets(self.terms, labels)
        outputs = self(features, training=False)
        losses = term_losses(self.terms, labels, outputs, targets)
        total = tf.add_n([t.weight * losses[t.name] for t in self.terms])
        return self._update_metrics(labels, targets, outputs, losses, total)


def build_model(config: Config, normalization: Normalization) -> MultiTaskModel:
    """Builds the model and its balancer (call inside the strategy scope); uncompiled.

    Its layers take `train.precision` as their dtype policy (the global policy is restored
    afterwards); task outputs and gate weights are float32 either way.
    """
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(config.train.precision)
    try:
        return _build_model(config, normalization)
    finally:
        keras.mixed_precision.set_global_policy(previous)


def _build_model(config: Config, normalization: Normalization) -> MultiTaskModel:
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
    model = MultiTaskModel(inputs=inputs, outputs=outputs, name=spec.name)
    weights = {t.name: t.weight for t in loss_terms(config)}
    balancer = make_balancer(config.train.loss_balancing, list(weights), weights, config.train)
    model.configure(config, balancer, gate_names)
    return model


def make_optimizer(config: Config) -> keras.optimizers.Optimizer:
    lr = config.train.learning_rate
    return {
        "adam": lambda: keras.optimizers.Adam(lr),
        "adagrad": lambda: keras.optimizers.Adagrad(lr),
        "sgd": lambda: keras.optimizers.SGD(lr),
    }[config.train.optimizer]()


def compile_model(model: MultiTaskModel, config: Config) -> None:
    """The optimizers (call inside the strategy scope); losses and metrics are the model's own
    (see `MultiTaskModel`)."""
    model.compile(optimizer=make_optimizer(config))
    model.set_embedding_optimizer(make_embedding_optimizer(
        config.train.embedding_optimizer, config.train.embedding_learning_rate))
    # train_step already returns cluster-wide metric results; tf-keras' default "auto" reduction
    # sums them again over every replica (keras-team/keras#16664), so per-batch logs under
    # MultiWorkerMirroredStrategy showed AUC 1.36 with two workers. "first" reports them as is.
    model.distribute_reduction_method = "first"
