"""Per-task losses: what each objective is trained on, with missing labels masked out.

A *loss term* is one scalar the balancer weighs. With per-task towers there is one term per task.
With ESMM the CVR task has no term of its own: the CTR term trains pCTR on the click label and
the CTCVR term trains pCTCVR = pCTR x pCVR on click x conversion, over every impression.
"""

from __future__ import annotations

from dataclasses import dataclass

import tensorflow as tf

from multitower.config import Config, Task

_EPSILON = 1e-7


@dataclass(frozen=True)
class LossTerm:
    """One weighted objective: which output it reads and how its label is made."""

    name: str  # the term's name in logs and in the balancer
    output: str  # the model output it trains
    kind: str  # "binary", "mse" or "huber"
    weight: float  # the configured base weight
    labels: tuple[str, ...]  # task labels multiplied together (ESMM's CTCVR: click x conversion)
    transform: str = "none"  # regression label transform
    huber_delta: float = 1.0


def _task_term(task: Task) -> LossTerm:
    kind = "binary" if task.type == "binary" else (task.loss or "mse")
    return LossTerm(task.name, task.name, kind, task.loss_weight, (task.name,),
                    task.label_transform, task.huber_delta)


def loss_terms(config: Config) -> list[LossTerm]:
    """The objectives the model trains on, in a fixed order."""
    tasks = config.data.tasks
    if config.model.heads != "esmm":
        return [_task_term(t) for t in tasks]
    esmm = config.model.esmm
    cvr = next(t for t in tasks if t.name == esmm.cvr_task)
    terms = []
    for task in tasks:
        if task.name == esmm.cvr_task:
            terms.append(LossTerm(esmm.ctcvr_name, esmm.ctcvr_name, "binary", cvr.loss_weight,
                                  (esmm.ctr_task, esmm.cvr_task)))
        else:
            terms.append(_task_term(task))
    return terms


def transform_label(y: tf.Tensor, transform: str) -> tf.Tensor:
    """The label in the unit the model is trained in."""
    return tf.math.log1p(tf.maximum(y, 0.0)) if transform == "log1p" else y


def invert_output(y: tf.Tensor, transform: str) -> tf.Tensor:
    """A model output back in the label's original unit (what serving returns)."""
    return tf.math.expm1(y) if transform == "log1p" else y


def term_label(term: LossTerm, labels: dict[str, tf.Tensor]) -> tuple[tf.Tensor, tf.Tensor]:
    """`(label, mask)` of a term, both `(batch, 1)` float32; mask is 0 where a label is missing.

    Missing labels (NaN, from an `optional` task) are masked; the product of ESMM's CTCVR label
    is missing when either factor is.
    """
    y = tf.ones_like(labels[term.labels[0]])
    mask = tf.ones_like(y)
    for name in term.labels:
        value = labels[name]
        present = tf.logical_not(tf.math.is_nan(value))
        mask *= tf.cast(present, tf.float32)
        y *= tf.where(present, value, tf.zeros_like(value))
    return transform_label(y, term.transform), mask


def elementwise_loss(term: LossTerm, y: tf.Tensor, prediction: tf.Tensor) -> tf.Tensor:
    """Per-example loss `(batch, 1)`; predictions are probabilities for binary terms."""
    if term.kind == "binary":
        p = tf.clip_by_value(prediction, _EPSILON, 1.0 - _EPSILON)
        return -(y * tf.math.log(p) + (1.0 - y) * tf.math.log(1.0 - p))
    error = prediction - y
    if term.kind == "mse":
        return tf.square(error)
    delta = term.huber_delta
    absolute = tf.abs(error)
    quadratic = tf.minimum(absolute, delta)
    return 0.5 * tf.square(quadratic) + delta * (absolute - quadratic)


def term_targets(
    terms: list[LossTerm], labels: dict[str, tf.Tensor]
) -> dict[str, tuple[tf.Tensor, tf.Tensor]]:
    """`{term: (label, mask)}`, made once per step for the loss and the metrics alike."""
    return {term.name: term_label(term, labels) for term in terms}


def term_losses(
    terms: list[LossTerm], labels: dict[str, tf.Tensor], outputs: dict[str, tf.Tensor],
    targets: dict[str, tuple[tf.Tensor, tf.Tensor]] | None = None,
) -> dict[str, tf.Tensor]:
    """Each term's mean loss over the examples that have its label (0 if none has).

    `targets` (from `term_targets`) saves remaking the labels when the caller already has them.
    """
    targets = targets or term_targets(terms, labels)
    losses = {}
    for term in terms:
        y, mask = targets[term.name]
        per_example = elementwise_loss(term, y, outputs[term.output]) * mask
        losses[term.name] = tf.reduce_sum(per_example) / tf.maximum(tf.reduce_sum(mask), 1.0)
    return losses
