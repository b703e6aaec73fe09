"""Mid-day backups: a worker that dies costs at most `train.backup_every_steps` steps.

Every N steps every worker saves the network, optimizer and balancer (a collective, see
`trainer.collectives`); the chief's copy goes to `ModelDir.backup(D, S, N)` (S: the global step
the day started from, N: the number of workers). Relaunching the same command restores the
newest backup, skips the batches already trained on and trains the rest of the day. A backup is
only resumed on top of the same start and by as many workers as wrote it (each worker's share
of the data depends on the count); a relaunch with another number of workers restarts the day
from the previous day's checkpoint. Backups are deleted once the day is complete.
"""

from __future__ import annotations

from collections.abc import Mapping

import tensorflow as tf
import tf_keras as keras

from trainer.collectives import CollectiveSaver
from trainer.embeddings.model_parallel import Workers
from trainer.model_dir import ModelDir


class MidDayBackup(keras.callbacks.Callback):
    """Saves `checkpoint` into `directory` about every `every` global steps (every worker).

    Args:
        checkpoint: The training checkpoint.
        directory: `ModelDir.backup(...)` of this day.
        every: Steps between backups.
        is_chief: Whether this process is the chief (only its backups land).
        first_step: The global step this run starts from.
        last_step: The day's last global step: no backup there, the day's checkpoint follows.
        parts, workers: This worker's model-parallel rows and slots, and their split: every
            worker saves them next to the backup (`trainer.embeddings.per_worker`).
    """

    def __init__(self, checkpoint: tf.train.Checkpoint, directory: str, every: int,
                 is_chief: bool, first_step: int, last_step: int | None = None,
                 parts: Mapping[str, tf.Variable] | None = None,
                 workers: Workers | None = None) -> None:
        super().__init__()
        self._every = every
        self._last_step = last_step
        self._first_step = first_step
        self._last = first_step
        self._saver = CollectiveSaver(checkpoint, directory, is_chief, max_to_keep=1,
                                      parts=parts, workers=workers)

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        # Keras calls it once per call of the train function (`train.steps_per_execution`
        # steps): a backup is saved at the first call boundary at or past each multiple of
        # `every`.
        step = self._first_step + batch + 1
        if step == self._last_step:
            return
        if step // self._every > self._last // self._every:
            self._saver.save(step)
        self._last = step

    def on_train_end(self, logs: dict | None = None) -> None:
        self._saver.close()


def latest_backup(directory: str) -> str | None:
    """The newest backup in `directory`, if any."""
    return tf.train.latest_checkpoint(directory) if tf.io.gfile.isdir(directory) else None


def remove_backups(model_dir: str, date: str) -> None:
    """Deletes every backup of `date` (the day is complete)."""
    for path in tf.io.gfile.glob(ModelDir(model_dir).backups_of(date)):
        tf.io.gfile.rmtree(path)
