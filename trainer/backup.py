"""Mid-day backups: a worker that dies costs at most `train.backup_every_steps` steps.

Every N steps every worker saves the model, optimizer and balancer (saving is a collective);
the chief's copy goes to `model_dir/backup/dt=D-from-S-workers-N/` (S: the global step the day
started from, N: the number of workers), the others' to temporary folders. Relaunching the same
command restores the newest backup, skips the batches already trained on and trains the rest of
the day. A backup is only resumed on top of the same start and by as many workers as wrote it
(each worker's share of the data depends on the count); a relaunch with another number of
workers restarts the day from the previous day's checkpoint. Backups are deleted once the day is
complete.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import tensorflow as tf
import tf_keras as keras

BACKUPS = "backup"


def backup_dir(model_dir: str, date: str, start_step: int, num_workers: int) -> str:
    return os.path.join(model_dir, BACKUPS, f"dt={date}-from-{start_step}-workers-{num_workers}")


class MidDayBackup(keras.callbacks.Callback):
    """Saves `checkpoint` every `every` global steps; see the module docstring."""

    def __init__(self, checkpoint: tf.train.Checkpoint, directory: str, every: int,
                 is_chief: bool, first_step: int):
        super().__init__()
        self._every = every
        self._first_step = first_step
        self._temporary = None if is_chief else tempfile.mkdtemp()
        self._manager = tf.train.CheckpointManager(
            checkpoint, directory if is_chief else self._temporary, max_to_keep=1
        )

    def on_train_batch_end(self, batch, logs=None):
        step = self._first_step + batch + 1
        if step % self._every == 0:
            self._manager.save(checkpoint_number=step)

    def on_train_end(self, logs=None):
        if self._temporary:
            shutil.rmtree(self._temporary, ignore_errors=True)


def latest_backup(directory: str) -> str | None:
    return tf.train.latest_checkpoint(directory) if tf.io.gfile.isdir(directory) else None


def remove_backups(model_dir: str, date: str) -> None:
    """Deletes every backup of `date` (the day is complete)."""
    for path in tf.io.gfile.glob(os.path.join(model_dir, BACKUPS, f"dt={date}-from-*")):
        tf.io.gfile.rmtree(path)
