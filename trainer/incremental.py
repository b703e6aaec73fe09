"""Days in order: where a day's training starts, and the refusals that keep the history honest.

A model trains one day after another. Before day D:
- a day already trained is refused unless `force`, which restarts from the checkpoint taken
  before that day (the later history is dropped from `state.json`; exports stay, and the
  retrained day gets a new, higher version);
- a gap after the last trained day is refused unless `allow_gap`;
- (elsewhere) a partition without `_MANIFEST.json` and a schema that differs from the model's.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import tensorflow as tf

from multitower.dates import next_day
from multitower.errors import MultitowerError
from trainer.model_dir import ModelDir
from trainer.state import TrainState


class TrainingError(MultitowerError, RuntimeError):
    """A day cannot be trained as asked; the message says why and what to do."""


@dataclass(frozen=True)
class StartPoint:
    """Where a day's training starts: a checkpoint (None: a new model) and the history so far."""

    checkpoint: str | None
    state: TrainState | None


def checkpoint_at(model_dir: str, global_step: int) -> str | None:
    """The checkpoint saved at `global_step`, if it is still kept."""
    prefix = ModelDir(model_dir).checkpoint(global_step)
    return prefix if tf.io.gfile.exists(prefix + ".index") else None


def plan_day(
    state: TrainState | None, date: str, model_dir: str, force: bool = False,
    allow_gap: bool = False,
) -> StartPoint:
    """Decides where training on `date` starts, or raises `TrainingError` saying why it can't."""
    if state is None or not state.days:
        return StartPoint(None, state)
    last = state.days[-1]
    if date <= last.date:
        before = [d for d in state.days if d.date < date]
        if not force:
            done = next((d for d in state.days if d.date == date), None)
            what = (f"day {date} is already trained (global step {done.global_step}, "
                    f"version {done.version})" if done else
                    f"day {date} is before the last trained day {last.date}")
            raise TrainingError(
                f"{what}; days are trained in order. Pass --force to train it again from the "
                f"checkpoint taken before it ({'a new model' if not before else before[-1].date})"
                f", which drops the days after it from {ModelDir(model_dir).state}"
            )
        if not before:
            return StartPoint(None, replace(state, days=[]))
        checkpoint = checkpoint_at(model_dir, before[-1].global_step)
        if checkpoint is None:
            raise TrainingError(
                f"cannot retrain {date}: the checkpoint taken after {before[-1].date} (step "
                f"{before[-1].global_step}) is no longer kept in {ModelDir(model_dir).checkpoints}"
            )
        return StartPoint(checkpoint, replace(state, days=before))
    expected = next_day(last.date)
    if date != expected and not allow_gap:
        raise TrainingError(
            f"day {date} leaves a gap: the last trained day is {last.date}, so the next is "
            f"{expected}. Train the missing days first, or pass --allow-gap to skip them"
        )
    checkpoint = checkpoint_at(model_dir, last.global_step)
    if checkpoint is None:
        raise TrainingError(
            f"{ModelDir(model_dir).state} says {last.date} ended at step {last.global_step}, but "
            f"{ModelDir(model_dir).checkpoint(last.global_step)} is missing"
        )
    return StartPoint(checkpoint, state)
