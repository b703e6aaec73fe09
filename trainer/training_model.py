"""The training wrapper: the network plus what only training needs (balancer, metrics, steps).

`TrainingModel.train_step` computes one loss per term (see `trainer.losses`), lets the
configured balancer turn them into gradients and hands them to the one optimizer
(`trainer.optimizer.MultiTaskOptimizer`: the dense optimizer, the embedding tables' row-sparse
optimizer and the exchange of table gradients between workers), then logs losses, per-task
quality, task weights and gate means. `test_step` reports as `loss` the same objective
training minimizes, with the balancer's current state (`Balancer.total`).

The network inside is a plain functional model (`trainer.network`): exports, evaluation and
prediction use it alone, without the balancer or the metrics.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import tensorflow as tf
import tf_keras as keras

from multitower.config import Config
from trainer.balancing import Balancer, make_balancer
from trainer.embeddings import split_of
from trainer.losses import LossTerm, invert_output, loss_terms, term_losses, term_targets
from trainer.network import Normalization, build_network, gate_outputs
from trainer.optimizer import make_optimizer


class TrainingModel(keras.Model):
    """Trains `network` with `balancer`; see the module docstring.

    Args:
        network: The functional network (`trainer.network.build_network`).
        config: The loaded config (tasks, heads).
        balancer: The loss balancer (`trainer.balancing.make_balancer`).
    """

    def __init__(self, network: keras.Model, config: Config, balancer: Balancer) -> None:
        super().__init__(name=f"{network.name}_training")
        self.network = network
        # Nothing else is tracked by Keras: the balancer's variables and the metrics' running
        # sums would otherwise join the model's weights. Checkpoints name the balancer
        # explicitly (`checkpoint()`); metric state is per day and never restored.
        self._self_setattr_tracking = False
        try:
            self._configure(config, balancer)
        finally:
            self._self_setattr_tracking = True

    def _configure(self, config: Config, balancer: Balancer) -> None:
        self.terms: list[LossTerm] = loss_terms(config)
        self.balancer = balancer
        self.esmm = config.model.esmm if config.model.heads == "esmm" else None
        self._batch_size = config.train.batch_size
        self._model_parallel = split_of(self.network).count > 1
        network = self.network
        tower_vars = set()
        for task in config.data.tasks:
            tower_vars |= {v.ref() for v in network.get_layer(task.name).trainable_variables}
        self._shared = [v.ref() not in tower_vars for v in network.trainable_variables]
        self._last_shared = list(network.get_layer("backbone").last_shared_variables())
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
        self._gate_means = {g: keras.metrics.MeanTensor(name=g) for g in gate_outputs(network)}

    @tf.autograph.experimental.do_not_convert  # see make_train_function
    def call(self, inputs: dict[str, tf.Tensor], training: bool | None = None
             ) -> dict[str, tf.Tensor]:
        return self.network(inputs, training=training)

    def build_optimizer(self) -> None:
        """Creates every optimizer slot, so that a restored checkpoint fills them too.

        Call it inside the strategy scope, after `compile`.
        """
        self.optimizer.build(self.network.trainable_variables + self.balancer.trainable_weights())

    def checkpoint(self) -> tf.train.Checkpoint:
        """What a training checkpoint holds: the network, the optimizer and the balancer."""
        return tf.train.Checkpoint(network=self.network, optimizer=self.optimizer,
                                   balancer=self.balancer)

    @property
    def metrics(self) -> list[keras.metrics.Metric]:
        found = [self._loss] + [m for ms in self._term_metrics.values() for m in ms]
        if self.esmm is not None:
            found.append(self._cvr_auc)
        return found + list(self._gate_means.values())

    def _update_metrics(
        self,
        labels: dict[str, tf.Tensor],
        targets: dict[str, tuple[tf.Tensor, tf.Tensor]],
        outputs: dict[str, tf.Tensor],
        losses: dict[str, tf.Tensor],
        total: tf.Tensor,
    ) -> None:
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

    def read_logs(self) -> dict[str, tf.Tensor]:
        """The metrics' results, the gates' mean weights and the task weights.

        Under MultiWorkerMirroredStrategy reading a metric's result in replica context is an
        all-reduce of its variables: the results are cluster-wide, identical on every worker,
        and reading them costs one collective per variable (28 for the example model, against
        3 for a whole training step), so training reads them once per call of the train
        function (`make_train_function`), not once per step.
        """
        logs = {m.name: m.result() for m in self.metrics if m.name not in self._gate_means}
        for name, metric in self._gate_means.items():
            means = metric.result()
            for k in range(means.shape[0]):
                logs[f"{name}/expert{k}"] = means[k]
        for term, weight in self.balancer.weights().items():
            logs[f"weight/{term}"] = weight
        return logs

    @tf.autograph.experimental.do_not_convert  # see make_train_function
    def train_step(self, data: tuple[dict[str, tf.Tensor], dict[str, tf.Tensor]]
                   ) -> dict[str, tf.Tensor]:
        """One step on `(features, labels)`: balanced gradients applied, then the logs."""
        self.train_updates(data)
        return self.read_logs()

    def train_updates(self, data: tuple[dict[str, tf.Tensor], dict[str, tf.Tensor]]) -> None:
        """One step on `(features, labels)`: balanced gradients applied, metrics updated."""
        features, labels = data
        features = self._fixed_batch(features)
        targets = term_targets(self.terms, labels)
        with tf.GradientTape(persistent=True) as tape:
            outputs = self.network(features, training=True)
            losses = term_losses(self.terms, labels, outputs, targets)
        variables = self.network.trainable_variables
        total, grads = self.balancer.gradients(
            tape, losses, variables, self._shared, self._last_shared
        )
        del tape
        extra = self.balancer.trainable_weights()
        self.optimizer.apply_gradients(zip(grads, variables + extra, strict=True))
        self._update_metrics(labels, targets, outputs, losses, total)

    def _fixed_batch(self, features: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        """`features` with their static batch size: the replica's share of `train.batch_size`.

        Training batches are always full (`drop_remainder`), but Keras' distributed iterator
        hands them over with an unknown batch size. Known, it lets a model-parallel lookup
        exchange fixed shapes without first exchanging its id counts (two collectives fewer
        per lookup); `tf.ensure_shape` checks it at run time. Only models with tables split
        over several workers need it.
        """
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        if not self._model_parallel or self._batch_size % replicas:
            return features
        rows = self._batch_size // replicas
        return {k: tf.ensure_shape(v, [rows, *v.shape[1:]]) for k, v in features.items()}

    def make_train_function(self, force: bool = False) -> Callable:
        """Keras' train function, reading the logs once per call rather than once per step.

        A call runs `steps_per_execution` steps (`train.steps_per_execution`; Keras shortens
        the day's last call to the steps left), then reads the logs once (`read_logs`): the
        callbacks see every N-th step, with the metrics of every step so far. Otherwise as
        Keras' own: one `tf.function`, the step counter, "first" replica's logs (identical on
        every worker).
        """
        if self.train_function is not None and not force:
            return self.train_function
        strategy = self.distribute_strategy

        def step(data: tuple[dict[str, tf.Tensor], dict[str, tf.Tensor]]) -> tf.Tensor:
            self.train_updates(data)
            return self._train_counter.assign_add(1)

        # AutoGraph off, for the same reason as `build_network`: converting the step's code
        # (balancer, losses, optimizer, metrics, Keras' own) was most of the first call.
        @tf.autograph.experimental.do_not_convert
        def train_function(iterator: Iterator) -> dict[str, tf.Tensor]:
            def body(i: tf.Tensor) -> tf.Tensor:
                done = strategy.experimental_local_results(
                    strategy.run(step, args=(next(iterator),)))
                with tf.control_dependencies(done):
                    return i + 1

            # One step at a time: a step reads what the step before wrote, and every worker
            # launches its collectives in the same order. Every iteration runs the same
            # collective instances, so their shapes must not change from step to step (see
            # `trainer.embeddings.exchange`).
            tf.while_loop(lambda i: i < self._steps_per_execution, body,
                          [tf.constant(0, self._steps_per_execution.dtype)],
                          parallel_iterations=1)
            logs = strategy.run(self.read_logs)
            return tf.nest.map_structure(lambda v: strategy.experimental_local_results(v)[0],
                                         logs)

        if not self.run_eagerly:
            train_function = tf.function(train_function, reduce_retracing=True,
                                         autograph=False)
            self.train_tf_function = train_function
        self.train_function = train_function
        return train_function

    @tf.autograph.experimental.do_not_convert  # see make_train_function
    def test_step(self, data: tuple[dict[str, tf.Tensor], dict[str, tf.Tensor]]
                  ) -> dict[str, tf.Tensor]:
        """Scores `(features, labels)`: the logs, with training's objective as `loss`."""
        features, labels = data
        targets = term_targets(self.terms, labels)
        outputs = self.network(features, training=False)
        losses = term_losses(self.terms, labels, outputs, targets)
        total = self.balancer.total(losses)  # training's objective, not a second definition
        self._update_metrics(labels, targets, outputs, losses, total)
        return self.read_logs()


def build_training_model(config: Config, normalization: Normalization) -> TrainingModel:
    """The network, its balancer and the one optimizer, compiled and with every slot created.

    Call it inside the strategy scope: every variable it creates is then mirrored.
    """
    network = build_network(config, normalization)
    weights = {t.name: t.weight for t in loss_terms(config)}
    balancer = make_balancer(config.train.loss_balancing, list(weights), weights, config.train)
    model = TrainingModel(network, config, balancer)
    model.compile(optimizer=make_optimizer(config.train),
                  steps_per_execution=config.train.steps_per_execution)
    # train_step already returns cluster-wide metric results; tf-keras' default "auto" reduction
    # sums them again over every replica (keras-team/keras#16664), so per-batch logs under
    # MultiWorkerMirroredStrategy showed AUC 1.36 with two workers. "first" reports them as is.
    model.distribute_reduction_method = "first"
    model.build_optimizer()
    return model
