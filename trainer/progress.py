"""Training callbacks: progress lines for people, and the balancer's once-a-day update."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import tf_keras as keras

if TYPE_CHECKING:
    from trainer.training_model import TrainingModel

log = logging.getLogger("multitower.trainer")


class ProgressLogger(keras.callbacks.Callback):
    """Logs loss and metrics about ten times per day (if `show`), with examples per second.

    Keras calls it once per call of the train function, after `train.steps_per_execution`
    steps (`batch` is the call's last step). A line is logged at the first call that reaches
    each tenth of the day, and at the day's last step. The rate counts from the end of the
    first call, which includes tracing the training function and filling the input pipeline:
    `steady_rate()` is the throughput of the steps after it (None before a second call).

    Args:
        date: The day being trained, shown in every line.
        steps: The steps this run trains.
        global_batch_size: Examples per step over every replica.
        first_step: The global step this run starts from.
        show: Whether to log (the chief does; other workers only count).
    """

    def __init__(self, date: str, steps: int, global_batch_size: int, first_step: int,
                 show: bool = True) -> None:
        super().__init__()
        self.date = date
        self.steps = steps
        self.batch = global_batch_size
        self.first_step = first_step
        self.show = show
        self.every = max(1, steps // 10)
        self.started: float | None = None
        self.first_end: float | None = None
        self.first_done = 0
        self.last_end: float | None = None
        self.done = 0

    def steady_rate(self) -> float | None:
        """Examples per second over the steps after the first call (None before a second)."""
        if self.first_end is None or self.done <= self.first_done:
            return None
        return (self.done - self.first_done) * self.batch / max(self.last_end - self.first_end,
                                                                1e-9)

    def call_seconds(self) -> tuple[float | None, float | None]:
        """`(start of training to the end of the first call, from there to the last call's end)`.

        Both None before any call.
        """
        if self.first_end is None or self.started is None:
            return None, None
        return self.first_end - self.started, self.last_end - self.first_end

    def on_train_begin(self, logs: dict | None = None) -> None:
        self.started = time.perf_counter()

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        done, before = batch + 1, self.done
        self.done, self.last_end = done, time.perf_counter()
        if self.first_end is None:
            self.first_end, self.first_done = self.last_end, done
        if not self.show or (done // self.every == before // self.every and done != self.steps):
            return
        rate = self.steady_rate()
        shown = " ".join(
            f"{k}={float(v):.4f}" for k, v in (logs or {}).items()
            if k == "loss" or k.endswith(("_auc", "_rmse")) or k.startswith("weight/")
        )
        log.info(
            "day %s step %d/%d (global %d) %s  %s",
            self.date, done, self.steps, self.first_step + done, shown,
            "" if rate is None else f"{rate:.0f} ex/s",
        )


class BalancerEpochEnd(keras.callbacks.Callback):
    """Hands the day's mean loss per term to the balancer (DWA reweights once per epoch).

    The logs hold cluster-wide metric results, identical on every worker, so every worker makes
    the same update.
    """

    def __init__(self, model: TrainingModel) -> None:
        super().__init__()
        self._model = model

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        terms = [t.name for t in self._model.terms]
        self._model.balancer.end_of_epoch({t: float(logs[f"{t}_loss"]) for t in terms})
