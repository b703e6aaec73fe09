"""Training callbacks: progress lines for people, and the balancer's once-a-day update."""

from __future__ import annotations

import logging
import time

import tf_keras as keras

log = logging.getLogger("multitower.trainer")


class ProgressLogger(keras.callbacks.Callback):
    """Logs loss and metrics about ten times per day, with examples per second."""

    def __init__(self, date: str, steps: int, global_batch_size: int, first_step: int):
        super().__init__()
        self.date = date
        self.steps = steps
        self.batch = global_batch_size
        self.first_step = first_step
        self.every = max(1, steps // 10)

    def on_train_begin(self, logs=None):
        self.start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        done = batch + 1
        if done % self.every and done != self.steps:
            return
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        shown = " ".join(
            f"{k}={float(v):.4f}" for k, v in (logs or {}).items()
            if k == "loss" or k.endswith(("_auc", "_rmse")) or k.startswith("weight/")
        )
        log.info(
            "day %s step %d/%d (global %d) %s  %.0f ex/s",
            self.date, done, self.steps, self.first_step + done, shown,
            done * self.batch / elapsed,
        )


class BalancerEpochEnd(keras.callbacks.Callback):
    """Hands the day's mean loss per term to the balancer (DWA reweights once per epoch).

    The logs hold cluster-wide metric results, identical on every worker, so every worker makes
    the same update.
    """

    def __init__(self, model: keras.Model):
        super().__init__()
        self._model = model

    def on_epoch_end(self, epoch, logs=None):
        terms = [t.name for t in self._model.terms]
        self._model.balancer.end_of_epoch({t: float(logs[f"{t}_loss"]) for t in terms})
