"""Every path under `train.model_dir`, named once: the rest of the trainer asks `ModelDir`.

    <model_dir>/lease.json                                the run writing here (multitower.lease)
    <model_dir>/state.json                                trained days, frozen constants, layout
    <model_dir>/config.yaml                               the resolved config of the last day
    <model_dir>/checkpoints/ckpt-<global step>            one per trained day (the last 30)
    <model_dir>/checkpoints/checkpoint                    the list of those (CheckpointManager)
    <model_dir>/checkpoints/rejected-ckpt-<global step>   a day whose export was rejected
    <model_dir>/backup/dt=D-from-S-workers-N/             mid-day backups of day D
    <model_dir>/metrics_history.jsonl                     progressive validation, drift
    <model_dir>/tensorboard/, tensorboard/progressive/    training and progressive scalars
    <model_dir>/eval/dt=D.json                            `multitower evaluate` reports

`LAYOUT_VERSION` is written into `state.json`; a `model_dir` of another layout is refused (see
`trainer.state`). Version 2: checkpoints hold `network`, `optimizer` (the one optimizer object,
dense and table slots) and `balancer`; version 1 (no version in `state.json`) held `model`,
`optimizer`, `embedding_optimizer` and `balancer`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

LAYOUT_VERSION = 2
CHECKPOINTS_KEPT = 30  # one per day: `--force` can restart any of the last 30 days


@dataclass(frozen=True)
class ModelDir:
    """The paths of one model directory (a local path or an object-store URL)."""

    root: str

    def _path(self, *parts: str) -> str:
        return os.path.join(self.root, *parts)

    @property
    def lease(self) -> str:
        return self._path("lease.json")

    @property
    def state(self) -> str:
        return self._path("state.json")

    @property
    def resolved_config(self) -> str:
        return self._path("config.yaml")

    @property
    def checkpoints(self) -> str:
        return self._path("checkpoints")

    def checkpoint(self, global_step: int) -> str:
        """The prefix of the checkpoint saved at `global_step` (`.index` and data files)."""
        return self._path("checkpoints", f"ckpt-{int(global_step)}")

    @property
    def checkpoint_list(self) -> str:
        """The `CheckpointManager`'s list of kept checkpoints (`tf.train.latest_checkpoint`)."""
        return self._path("checkpoints", "checkpoint")

    def rejected_checkpoint(self, global_step: int) -> str:
        """The prefix a day's checkpoint is renamed to when its export is rejected.

        The day stays untrained; a next rejection at the same step overwrites it.
        """
        return self._path("checkpoints", f"rejected-ckpt-{int(global_step)}")

    def backup(self, date: str, start_step: int, num_workers: int) -> str:
        """The backups of day `date` started from `start_step` by `num_workers` workers."""
        return self._path("backup", f"dt={date}-from-{int(start_step)}-workers-{num_workers}")

    def backups_of(self, date: str) -> str:
        """A glob of every backup folder of day `date`, whatever its start and worker count."""
        return self._path("backup", f"dt={date}-from-*")

    @property
    def history(self) -> str:
        return self._path("metrics_history.jsonl")

    @property
    def tensorboard(self) -> str:
        return self._path("tensorboard")

    @property
    def progressive_tensorboard(self) -> str:
        return self._path("tensorboard", "progressive")

    def eval_report(self, date: str) -> str:
        return self._path("eval", f"dt={date}.json")
