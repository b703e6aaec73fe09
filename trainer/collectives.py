"""What every worker must do together under MultiWorkerMirroredStrategy, and who keeps what.

Each rule is stated here once, in the function that enforces it:

- Creating a variable is a collective: every worker creates the checkpoint's save counter up
  front, at the same point of its collective sequence (`create_save_counter`).
- Saving a checkpoint is a collective: every worker saves. Only the chief's copy lands in
  `model_dir`; the others save to a temporary folder they delete (`CollectiveSaver`).
- Reading a mirrored variable can be a collective: every worker reads the trained weights, and
  only the chief uses them (`read_weights`).

With one worker (the default strategy) every rule still holds and costs nothing.
"""

from __future__ import annotations

import shutil
import tempfile

import numpy as np
import tensorflow as tf
import tf_keras as keras


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
    """

    def __init__(self, checkpoint: tf.train.Checkpoint, directory: str, is_chief: bool,
                 max_to_keep: int) -> None:
        self._temporary = None if is_chief else tempfile.mkdtemp(prefix="multitower-save-")
        self._manager = tf.train.CheckpointManager(
            checkpoint, directory if is_chief else self._temporary, max_to_keep=max_to_keep)

    def save(self, number: int) -> str | None:
        """Saves as `ckpt-<number>` (a collective); returns the chief's path, else None."""
        path = self._manager.save(checkpoint_number=number)
        return None if self._temporary else path

    def close(self) -> None:
        """Deletes a non-chief's temporary folder."""
        if self._temporary:
            shutil.rmtree(self._temporary, ignore_errors=True)
            self._temporary = None


def read_weights(network: keras.Model) -> list[np.ndarray]:
    """The network's weights as arrays; every worker calls it, whoever uses the result."""
    return network.get_weights()
