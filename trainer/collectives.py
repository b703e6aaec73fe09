"""What every worker must do together under MultiWorkerMirroredStrategy, and who keeps what.

Each rule is stated here once, in the function that enforces it:

- Creating a variable is a collective: every worker creates the checkpoint's save counter up
  front, at the same point of its collective sequence (`create_save_counter`).
- Saving a checkpoint is a collective: every worker saves. Only the chief's copy lands in
  `model_dir`; the others save to a temporary folder they delete (`CollectiveSaver`). The one
  exception: the rows of model-parallel tables, which every worker saves into `model_dir`
  itself (`trainer.embeddings.per_worker`).
- Reading a mirrored variable can be a collective: every worker reads the trained weights, and
  only the chief uses them (`read_weights`).

With one worker (the default strategy) every rule still holds and costs nothing.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping

import numpy as np
import tensorflow as tf
import tf_keras as keras

from trainer.embeddings.model_parallel import Workers
from trainer.embeddings.per_worker import prune_parts, save_parts


def create_save_counter(checkpoint: tf.train.Checkpoint, strategy: tf.distribute.Strategy) -> None:
    """Creates `checkpoint`'s save counter on every worker now.

    Left to its first save (a mid-day backup), the counter was created at different points of
    the workers' collective sequences on the second day of a `--dates` range ("Collective
    instance N expected type 1 and data_type 9 but got type 0").
    """
    with strategy.scope():
        _ = checkpoint.save_counter


class CollectiveSaver:
    """Saves `checkpoint` on every worker; only the chief's copy lands in `directory`.

    Args:
        checkpoint: What to save.
        directory: Where the chief's checkpoints go.
        is_chief: Whether this process is the chief.
        max_to_keep: Checkpoints kept in `directory` (older ones are deleted).
        parts: This worker's model-parallel rows and slots
            (`trainer.embeddings.per_worker.model_parallel_variables`), saved by every worker.
        workers: The split those rows belong to (the tables' `workers`).
    """

    def __init__(self, checkpoint: tf.train.Checkpoint, directory: str, is_chief: bool,
                 max_to_keep: int, parts: Mapping[str, tf.Variable] | None = None,
                 workers: Workers | None = None) -> None:
        self._temporary = None if is_chief else tempfile.mkdtemp(prefix="multitower-save-")
        self._manager = tf.train.CheckpointManager(
            checkpoint, directory if is_chief else self._temporary, max_to_keep=max_to_keep)
        self._directory = directory
        self._parts = dict(parts or {})
        self._workers = workers or Workers(1, 0)
        self._previous: list[str] = []

    def save(self, number: int) -> str | None:
        """Saves as `ckpt-<number>` (a collective); returns the chief's path, else None.

        Every worker also writes its own part of the model-parallel tables (`parts`) next to
        the chief's checkpoint, and deletes its parts of checkpoints no longer kept.
        """
        path = self._manager.save(checkpoint_number=number)
        if self._parts:
            prefix = os.path.join(self._directory, f"ckpt-{int(number)}")
            save_parts(self._parts, prefix, self._workers)
            # Kept: what the chief's list in `directory` names (a non-chief's own manager
            # knows only its temporary folder), and the previous save's part: a chief that died
            # before this save still lists that checkpoint as its newest, and a relaunch
            # restores every part of it.
            listed = tf.train.get_checkpoint_state(self._directory)
            kept = [os.path.join(self._directory, os.path.basename(p))
                    for p in [*self._manager.checkpoints,
                              *(listed.all_model_checkpoint_paths if listed else [])]]
            kept += self._previous
            prune_parts(self._directory, self._workers, kept)
            self._previous = [prefix]
        return None if self._temporary else path

    def close(self) -> None:
        """Deletes a non-chief's temporary folder."""
        if self._temporary:
            shutil.rmtree(self._temporary, ignore_errors=True)
            self._temporary = None


def barrier(strategy: tf.distribute.Strategy) -> None:
    """Returns once every worker has called it (a one-number all-reduce)."""
    if strategy.num_replicas_in_sync > 1:
        tf.function(lambda: strategy.reduce(
            tf.distribute.ReduceOp.SUM, strategy.run(tf.ones, ([],)), axis=None))()


def chief_says(strategy: tf.distribute.Strategy, answer: bool, is_chief: bool) -> bool:
    """The chief's `answer`, on every worker (a one-number all-reduce; others' answers unused).

    For a choice every worker must make alike (which collectives follow) from something only
    one machine can judge, such as its own memory.
    """
    if strategy.num_replicas_in_sync == 1:
        return answer
    value = 1.0 if answer and is_chief else 0.0
    total = tf.function(lambda: strategy.reduce(
        tf.distribute.ReduceOp.SUM, strategy.run(lambda: tf.constant(value)), axis=None))()
    return bool(total.numpy() > 0)


def read_weights(network: keras.Model) -> list[np.ndarray]:
    """The network's weights as arrays; every worker calls it, whoever uses the result."""
    return network.get_weights()
