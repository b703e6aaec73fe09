"""Loss balancing: how per-task losses become one gradient, behind one `Balancer` interface.

A multi-task `train_step` computes one scalar loss per task (the task's mean over the replica's
local batch) under a persistent `tf.GradientTape` and asks the balancer for the gradients:

    total, grads = balancer.gradients(tape, task_losses, variables, shared, last_shared)
    optimizer.apply_gradients(zip(grads, variables + balancer.trainable_weights()))

Methods (`train.loss_balancing`), with `w_i` the configured base weights (`Task.loss_weight`):

- `fixed`: total = sum_i w_i L_i.
- `uncertainty` (Kendall, Gal & Cipolla 2018): a learned log-variance s_i per task,
  total = sum_i (exp(-s_i) w_i L_i + s_i). This is twice Kendall's regression form
  sum_i (L_i / (2 sigma_i^2) + log sigma_i) with s_i = log sigma_i^2, so the effective weight is
  exactly w_i exp(-s_i) (at s = 0 the method equals `fixed`); s_i settles at log(w_i L_i), which
  gives a noisier task (larger irreducible loss) a lower weight.
- `gradnorm` (Chen et al. 2018): task weights updated every step by their own SGD rule so that
  each task's gradient norm at the last shared layer follows its relative training rate.
- `dwa` (Liu, Johns & Davison 2019): weights from how fast each loss fell over the last two
  epochs, T softmax(r / temperature), multiplied by the base weights.
- `pcgrad` (Yu et al. 2020): per-task gradients of the shared variables are projected off each
  other where they conflict, then summed.

Every method runs per replica and scales its gradients by 1 / num_replicas_in_sync: Keras'
`apply_gradients` under a strategy sums over replicas, so the result is the global mean. State
that changes during training (GradNorm's weights and first losses) is computed from all-reduced
quantities and kept in MEAN-aggregated variables, so every replica and worker stays identical.

A task whose base weight is 0 is switched off under every method: its weight stays 0 and T below
counts only the tasks with a positive base weight.
"""

from __future__ import annotations

from collections.abc import Sequence

import tensorflow as tf

from multitower.config import TrainConfig
from trainer.gradients import Gradient, compact_rows, flat_dense, project_conflicts

METHODS = ("fixed", "uncertainty", "gradnorm", "dwa", "pcgrad")
# A GradNorm step may overshoot 0, and a negative weight would reward a rising loss.
_MIN_GRADNORM_WEIGHT = 1e-3


def _state(initial: tf.Tensor | Sequence[float] | float, name: str) -> tf.Variable:
    """A non-trainable variable that replicas update identically (see the module docstring)."""
    return tf.Variable(initial, trainable=False, name=name, dtype=tf.float32,
                       aggregation=tf.VariableAggregation.MEAN)


def _replica_scale() -> float:
    return 1.0 / tf.distribute.get_strategy().num_replicas_in_sync


class Balancer(tf.Module):
    """Turns per-task losses into gradients; create it inside `strategy.scope()`.

    Args:
        task_names: The tasks (loss terms), in a fixed order.
        base_weights: `{task: weight >= 0}` for exactly these tasks, at least one positive.
    """

    method = ""

    def __init__(self, task_names: Sequence[str], base_weights: dict[str, float]) -> None:
        super().__init__(name=f"{self.method}_balancer")
        names = list(task_names)
        if not names or len(set(names)) != len(names):
            raise ValueError(f"task_names must be non-empty and unique, got {names}")
        if set(base_weights) != set(names):
            raise ValueError(f"base_weights must name exactly the tasks {names}, got "
                             f"{sorted(base_weights)}")
        bad = {n: w for n, w in base_weights.items() if not float(w) >= 0.0}
        if bad:
            raise ValueError(f"base_weights must be >= 0, got {bad}")
        if not any(base_weights[n] > 0 for n in names):
            raise ValueError(f"at least one base weight must be positive, got {base_weights}")
        self._names = tuple(names)
        self._base = tuple(float(base_weights[n]) for n in names)
        # Python-side constants: switched-off tasks never reach the tape.
        self._active = tuple(i for i, w in enumerate(self._base) if w > 0)
        self._mask = tuple(1.0 if w > 0 else 0.0 for w in self._base)

    @property
    def task_names(self) -> list[str]:
        """The tasks (loss terms), in the balancer's fixed order."""
        return list(self._names)

    def trainable_weights(self) -> list[tf.Variable]:
        """Variables to train with the model's optimizer (uncertainty's log-variances)."""
        return []

    def weights(self) -> dict[str, tf.Tensor]:
        """The current effective weight of each task (for logs)."""
        return dict(zip(self._names, tf.unstack(self._weight_vector()), strict=True))

    def end_of_epoch(self, mean_task_losses: dict[str, float]) -> None:
        """Called once per epoch in cross-replica context; only DWA uses it."""
        del mean_task_losses

    def gradients(
        self,
        tape: tf.GradientTape,
        task_losses: dict[str, tf.Tensor],
        variables: Sequence[tf.Variable],
        shared: Sequence[bool],
        last_shared: Sequence[tf.Variable],
    ) -> tuple[tf.Tensor, list[Gradient]]:
        """The total loss and one gradient per entry of `variables + trainable_weights()`.

        Runs in replica context. The tape must be persistent and have recorded the losses; the
        balancer does not record on it, so call this after the `with tape:` block.

        Args:
            tape: The persistent tape that recorded the forward pass and the losses.
            task_losses: `{task: scalar}`, each the task's mean loss over the local batch.
            variables: The model's trainable variables (without the balancer's own).
            shared: `shared[i]` is True when `variables[i]` serves several tasks.
            last_shared: The last shared layer's variables (GradNorm measures there).

        Returns:
            The total loss of this replica's batch as the method defines it (unscaled, for
            logs) and the gradients, already scaled by 1 / num_replicas_in_sync. A gradient is
            None where no task reaches the variable and stays a `tf.IndexedSlices` where the
            tape produced one.
        """
        if tf.distribute.in_cross_replica_context():
            raise RuntimeError("Balancer.gradients must run in replica context (inside "
                               "strategy.run, as Keras runs train_step)")
        if len(shared) != len(variables):
            raise ValueError(f"shared has {len(shared)} entries for {len(variables)} variables")
        if set(task_losses) != set(self._names):
            raise ValueError(f"task_losses must name exactly the tasks {list(self._names)}, "
                             f"got {sorted(task_losses)}")
        own = {v.ref() for v in self.trainable_weights()}
        if any(v.ref() in own for v in variables):
            raise ValueError("variables holds the balancer's own variables; Keras tracks a "
                             "tf.Module set as a model attribute, so leave them out of the "
                             "model's variables (they are appended after them)")
        losses = [task_losses[n] for n in self._names]  # the tape's own tensors: its targets
        for name, loss in zip(self._names, losses, strict=True):
            if loss.shape.rank != 0:
                raise ValueError(f"the loss of task {name!r} must be a scalar, got {loss.shape}")
        return self._gradients(tape, losses, list(variables), list(shared), list(last_shared))

    def total(self, task_losses: dict[str, tf.Tensor]) -> tf.Tensor:
        """The objective the method trains on, with the balancer's current state.

        Validation reports this as its `loss`, so that it means what training's `loss` means:
        sum_i w_i L_i with the current weights, plus uncertainty's log-variance terms (PCGrad,
        which has no weights of its own, reports the fixed-weight sum).

        Args:
            task_losses: `{task: scalar}` for exactly the balancer's tasks.

        Returns:
            A scalar.
        """
        if set(task_losses) != set(self._names):
            raise ValueError(f"task_losses must name exactly the tasks {list(self._names)}, "
                             f"got {sorted(task_losses)}")
        return self._total([task_losses[n] for n in self._names])

    def _total(self, losses: list[tf.Tensor]) -> tf.Tensor:
        return tf.reduce_sum(self._weight_vector() * _loss_vector(losses))

    def _weight_vector(self) -> tf.Tensor:
        return tf.constant(self._base)

    def _gradients(self, tape: tf.GradientTape, losses: list[tf.Tensor],
                   variables: list[tf.Variable], shared: list[bool],
                   last_shared: list[tf.Variable]) -> tuple[tf.Tensor, list[Gradient]]:
        weights = self._weight_vector()
        total = self._total(losses)
        return total, self._weighted_gradients(tape, losses, weights, variables)

    def _weighted_gradients(self, tape: tf.GradientTape, losses: list[tf.Tensor],
                            weights: tf.Tensor, variables: list[tf.Variable]) -> list[Gradient]:
        """Gradients of scale * sum_i weights[i] L_i in one backward pass."""
        if not variables:
            return []
        scale = _replica_scale()
        targets = [losses[i] for i in self._active]
        # Several targets with output_gradients: one backward pass, sparse gradients kept.
        seeds = [tf.cast(weights[i] * scale, losses[i].dtype) for i in self._active]
        return list(tape.gradient(targets, variables, output_gradients=seeds))


class FixedBalancer(Balancer):
    """total = sum_i w_i L_i with the configured base weights."""

    method = "fixed"


class UncertaintyBalancer(Balancer):
    """Kendall et al.'s homoscedastic uncertainty: total = sum_i (exp(-s_i) w_i L_i + s_i).

    `s` (shape `(T,)`, init 0) is trained by the model's optimizer; its gradient
    1 - exp(-s_i) w_i L_i is computed in closed form. `weights()` is w_i exp(-s_i).
    """

    method = "uncertainty"

    def __init__(self, task_names: Sequence[str], base_weights: dict[str, float]) -> None:
        super().__init__(task_names, base_weights)
        self.log_variance = tf.Variable(tf.zeros([len(self._names)]), name="log_variance")

    def trainable_weights(self) -> list[tf.Variable]:
        return [self.log_variance]

    def _weight_vector(self) -> tf.Tensor:
        return tf.constant(self._base) * tf.exp(-tf.convert_to_tensor(self.log_variance))

    def _total(self, losses: list[tf.Tensor]) -> tf.Tensor:
        s = tf.convert_to_tensor(self.log_variance)
        mask = tf.constant(self._mask)
        return tf.reduce_sum(mask * (self._weight_vector() * _loss_vector(losses) + s))

    def _gradients(self, tape: tf.GradientTape, losses: list[tf.Tensor],
                   variables: list[tf.Variable], shared: list[bool],
                   last_shared: list[tf.Variable]) -> tuple[tf.Tensor, list[Gradient]]:
        weights = self._weight_vector()
        mask = tf.constant(self._mask)
        loss_vector = _loss_vector(losses)
        total = self._total(losses)
        grads = self._weighted_gradients(tape, losses, weights, variables)
        # A switched-off task's s gets no gradient: its +s term alone would drive it to -inf.
        s_grad = mask * (1.0 - weights * loss_vector) * _replica_scale()
        return total, grads + [s_grad]


class GradNormBalancer(Balancer):
    """GradNorm: weights w (sum T) follow each task's relative training rate.

    Per step, with g_i = grad of L_i at `last_shared` averaged over every replica's batch and
    L_i averaged likewise: G_i = w_i ||g_i||, r_i = (L_i / L_i(0)) / mean_j(L_j / L_j(0)),
    target_i = mean(G) r_i^alpha (a constant), L_grad = sum_i |G_i - target_i|. Since
    G_i = w_i ||g_i||, dL_grad/dw_i = sign(G_i - target_i) ||g_i|| exactly; w takes one SGD step
    at `learning_rate`, is floored at a small positive value and renormalized to sum T. The
    model's gradients use the weights from before this step's update. L_i(0) is the first
    nonzero loss of each task, kept in a variable so that it survives checkpoints across days.
    """

    method = "gradnorm"

    def __init__(self, task_names: Sequence[str], base_weights: dict[str, float],
                 alpha: float, learning_rate: float) -> None:
        super().__init__(task_names, base_weights)
        if alpha < 0 or learning_rate <= 0:
            raise ValueError(f"gradnorm needs alpha >= 0 and learning_rate > 0, got alpha="
                             f"{alpha}, learning_rate={learning_rate}")
        self.alpha = float(alpha)
        self.learning_rate = float(learning_rate)
        count = len(self._active)
        initial = [w * count / sum(self._base) for w in self._base]
        self.task_weights = _state(initial, "task_weights")
        self.initial_losses = _state(tf.zeros([len(self._names)]), "initial_losses")

    def _weight_vector(self) -> tf.Tensor:
        return tf.convert_to_tensor(self.task_weights)

    def _gradients(self, tape: tf.GradientTape, losses: list[tf.Tensor],
                   variables: list[tf.Variable], shared: list[bool],
                   last_shared: list[tf.Variable]) -> tuple[tf.Tensor, list[Gradient]]:
        if not last_shared:
            raise ValueError("gradnorm needs the last shared layer's variables (last_shared)")
        context = tf.distribute.get_replica_context()
        weights = self._weight_vector()
        total = self._total(losses)  # with the weights before this step's update
        grads = self._weighted_gradients(tape, losses, weights, variables)

        scale = _replica_scale()
        size = sum(v.shape.num_elements() for v in last_shared)
        per_task = [tf.zeros([size])] * len(self._names)  # a switched-off task: no gradient
        for i in self._active:
            parts = tape.gradient(losses[i], last_shared)
            per_task[i] = tf.concat(
                [flat_dense(g, v) for g, v in zip(parts, last_shared, strict=True)], axis=0)
        # The global batch's mean gradients and losses: identical on every replica and worker.
        task_grads, mean_losses = context.all_reduce(
            tf.distribute.ReduceOp.SUM, [tf.stack(per_task) * scale, _loss_vector(losses) * scale]
        )
        norms = tf.norm(task_grads, axis=1)

        mask = tf.constant(self._mask)
        count = float(len(self._active))
        initial = tf.convert_to_tensor(self.initial_losses)
        initial = tf.where(initial > 0, initial, mean_losses)
        rate = tf.where(initial > 0, mean_losses / tf.where(initial > 0, initial, 1.0), 1.0)
        rate *= mask
        relative_rate = tf.math.divide_no_nan(rate, tf.reduce_sum(rate) / count)
        g = weights * norms
        target = tf.reduce_sum(g) / count * relative_rate ** self.alpha  # a constant in L_grad
        stepped = weights - self.learning_rate * tf.sign(g - target) * norms
        stepped = tf.maximum(stepped, _MIN_GRADNORM_WEIGHT) * mask
        self.task_weights.assign(stepped * count / tf.reduce_sum(stepped))
        self.initial_losses.assign(initial)
        return total, grads


class DWABalancer(Balancer):
    """Dynamic Weight Average: w_i(t) = w_base_i T exp(r_i / Temp) / sum_j exp(r_j / Temp).

    r_i = L_i(t-1) / L_i(t-2) from the last two epochs' mean losses, which `end_of_epoch` keeps in
    variables (so they survive the checkpoint from one day to the next). Until two epochs are
    known the weights are the base weights; a ratio that cannot be formed (a loss <= 0 or not
    finite) counts as 1. With all base weights 1 the weights sum to T.
    """

    method = "dwa"

    def __init__(self, task_names: Sequence[str], base_weights: dict[str, float],
                 temperature: float) -> None:
        super().__init__(task_names, base_weights)
        if temperature <= 0:
            raise ValueError(f"dwa temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)
        # Row 0: the last epoch's mean losses; row 1: the epoch before.
        self.loss_history = _state(tf.ones([2, len(self._names)]), "loss_history")
        self.epochs_seen = _state(0.0, "epochs_seen")

    def end_of_epoch(self, mean_task_losses: dict[str, float]) -> None:
        if set(mean_task_losses) != set(self._names):
            raise ValueError(f"mean_task_losses must name exactly the tasks {list(self._names)},"
                             f" got {sorted(mean_task_losses)}")
        latest = tf.constant([float(mean_task_losses[n]) for n in self._names])
        self.loss_history.assign(tf.stack([latest, self.loss_history[0]]))
        self.epochs_seen.assign(tf.minimum(self.epochs_seen + 1.0, 2.0))

    def _weight_vector(self) -> tf.Tensor:
        last, before = tf.unstack(tf.convert_to_tensor(self.loss_history))
        usable = (last > 0) & (before > 0) & tf.math.is_finite(last) & tf.math.is_finite(before)
        ratio = tf.where(usable, last / tf.where(usable, before, 1.0), 1.0)
        mask = tf.constant(self._mask)
        logits = tf.where(mask > 0, ratio / self.temperature, -1e9)
        factor = len(self._active) * tf.nn.softmax(logits) * mask
        base = tf.constant(self._base)
        return tf.where(self.epochs_seen >= 2.0, base * factor, base)


class PCGradBalancer(Balancer):
    """PCGrad: project conflicting per-task gradients of the shared variables, then sum.

    For each task i, g_i = grad of w_i L_i over all shared variables together; for the other
    tasks j in random order, if g_i . g_j < 0 then g_i -= (g_i . g_j) / ||g_j||^2 g_j (g_j
    unprojected). The shared gradient is sum_i g_i; task-specific variables get the plain
    weighted sum. Each replica projects its own batch's gradients (no extra communication);
    the optimizer then averages the results. Sparse gradients of a shared embedding stay
    `tf.IndexedSlices` over the union of rows any task touched.
    """

    method = "pcgrad"

    def __init__(self, task_names: Sequence[str], base_weights: dict[str, float],
                 seed: int | None = None) -> None:
        super().__init__(task_names, base_weights)
        self.seed = seed

    def _gradients(self, tape: tf.GradientTape, losses: list[tf.Tensor],
                   variables: list[tf.Variable], shared: list[bool],
                   last_shared: list[tf.Variable]) -> tuple[tf.Tensor, list[Gradient]]:
        weights = self._weight_vector()
        total = self._total(losses)
        own = [v for v, s in zip(variables, shared, strict=True) if not s]
        common = [v for v, s in zip(variables, shared, strict=True) if s]
        own_grads = iter(self._weighted_gradients(tape, losses, weights, own))
        common_grads = iter(self._projected(tape, losses, weights, common))
        return total, [next(common_grads) if s else next(own_grads) for s in shared]

    def _projected(self, tape: tf.GradientTape, losses: list[tf.Tensor],
                   weights: tf.Tensor, variables: list[tf.Variable]) -> list[Gradient]:
        if not variables:
            return []
        scale = _replica_scale()
        per_task = [tape.gradient(losses[i], variables,
                                  output_gradients=tf.cast(weights[i] * scale, losses[i].dtype))
                    for i in self._active]
        flat, rebuilders = [], []
        for k, variable in enumerate(variables):
            compact, rebuild = compact_rows([g[k] for g in per_task], variable)
            flat.append(compact)
            rebuilders.append(rebuild)
        kept = [k for k, c in enumerate(flat) if c is not None]
        if not kept:
            return [None] * len(variables)
        stacked = tf.concat([flat[k] for k in kept], axis=1)  # (tasks, elements)
        projected = project_conflicts(stacked, self.seed)
        summed = tf.reduce_sum(projected, axis=0)
        sizes = [tf.shape(flat[k])[1] for k in kept]
        pieces = dict(zip(kept, tf.split(summed, tf.stack(sizes), num=len(kept)), strict=True))
        return [rebuilders[k](pieces[k]) if k in pieces else None for k in range(len(variables))]


def _loss_vector(losses: list[tf.Tensor]) -> tf.Tensor:
    """The losses as one float32 vector, for arithmetic (never a gradient target)."""
    return tf.stack([tf.cast(loss, tf.float32) for loss in losses])


def make_balancer(method: str, task_names: Sequence[str], base_weights: dict[str, float],
                  train: TrainConfig) -> Balancer:
    """The balancer for `train.loss_balancing` (or another `method`); call in strategy scope."""
    if method == "fixed":
        return FixedBalancer(task_names, base_weights)
    if method == "uncertainty":
        return UncertaintyBalancer(task_names, base_weights)
    if method == "gradnorm":
        return GradNormBalancer(task_names, base_weights, train.gradnorm.alpha,
                                train.gradnorm.learning_rate)
    if method == "dwa":
        return DWABalancer(task_names, base_weights, train.dwa.temperature)
    if method == "pcgrad":
        return PCGradBalancer(task_names, base_weights, seed=train.seed)
    raise ValueError(f"unknown loss balancing method {method!r}; choose one of {METHODS}")
