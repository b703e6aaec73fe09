"""Progress lines for people: a few lines per day, not a progress bar per step."""

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
            f"{k}={float(v):.4f}" for k, v in (logs or {}).items() if k == "loss" or "auc" in k
            or "rmse" in k
        )
        log.info(
            "day %s step %d/%d (global %d) %s  %.0f ex/s",
            self.date, done, self.steps, self.first_step + done, shown,
            done * self.batch / elapsed,
        )
