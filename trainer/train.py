"""Train one day: warm start from the latest checkpoint, one pass over the day, checkpoint, export.

Every worker runs this same function; `TF_CONFIG` alone makes it distributed. Only the chief's
checkpoint, state and export land: the other workers save to temporary directories they delete
(saving is a collective), and the chief exports a copy of the model built outside the strategy.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass

import tensorflow as tf
import tf_keras as keras

from multitower.config import Config
from pipeline.manifest import day_dir, read_manifest
from trainer.backup import MidDayBackup, backup_dir, latest_backup, remove_backups
from trainer.data import make_dataset
from trainer.embeddings import restore_checkpoint
from trainer.export import export_saved_model, versions
from trainer.history import append_history, numeric_drift
from trainer.incremental import CHECKPOINTS, TrainingError, plan_day
from trainer.model import build_model, compile_model
from trainer.progress import BalancerEpochEnd, ProgressLogger
from trainer.state import TrainedDay, TrainState, load_state, save_state
from trainer.strategy import make_strategy, task_info

log = logging.getLogger("multitower.trainer")

@dataclass
class DayResult:
    date: str
    steps: int
    global_step: int
    version: int | None  # None on workers other than the chief
    export_path: str | None
    metrics: dict[str, float]
    model: keras.Model


def _normalization(manifest: dict) -> dict[str, dict[str, float]]:
    return {
        name: {"mean": float(s["mean"]), "std": float(s["std"])}
        for name, s in manifest["numeric"].items()
    }


def _progressive_validation(config, date, start, normalization, manifest) -> None:
    """Scores the model as it stands on the day it is about to train on (chief only)."""
    from trainer.evaluate import evaluate_model, restore_plain_model

    model = restore_plain_model(config, normalization, start.checkpoint)
    report = evaluate_model(config, model, date, start.checkpoint)
    record = {
        "date": date, "kind": "progressive_validation",
        "global_step": start.state.global_step, "trained_through": start.state.last_date,
        "tasks": report["tasks"], "gates": report["gates"],
        "drift": numeric_drift(normalization, manifest),
    }
    append_history(config.train.model_dir, record)
    shown = ", ".join(f"{task} auc {v['auc']:.4f}" for task, v in report["tasks"].items()
                      if "auc" in v)
    log.info("progressive validation on %s before training it: %s", date, shown or "done")


def train_day(
    config: Config, date: str, strategy: tf.distribute.Strategy | None = None,
    force: bool = False, allow_gap: bool = False,
    callbacks: list[keras.callbacks.Callback] | None = None,
) -> DayResult:
    """Trains `config`'s model on one preprocessed day and exports the next version.

    Args:
      config: the loaded config.
      date: `YYYY-MM-DD`; its TFRecord partition must be complete (have `_MANIFEST.json`).
      strategy: reuse a strategy made by `make_strategy()` (one per process); made if None.
      force: train a day again that was already trained, from the checkpoint before it.
      allow_gap: train a day that does not follow the last trained day.
      callbacks: extra Keras callbacks for the day's `fit` (every worker's).

    Returns:
      What was trained, with the model (still under the strategy).
    """
    strategy = strategy or make_strategy()
    info = task_info()
    model_dir, batch = config.train.model_dir, config.train.batch_size
    manifest = read_manifest(config.data.tfrecords, date)
    fingerprint = config.data.schema_fingerprint()
    if manifest["schema_fingerprint"] != fingerprint:
        raise TrainingError(
            f"{day_dir(config.data.tfrecords, date)} was written for schema "
            f"{manifest['schema_fingerprint']}, but the config's data schema is {fingerprint}; "
            f"preprocess the day again with this config"
        )
    rows = int(manifest["rows"]["written"])
    steps = rows // batch
    if steps < 1:
        raise TrainingError(
            f"day {date} has {rows} rows, fewer than one global batch ({batch}); "
            "lower train.batch_size"
        )
    state = load_state(model_dir)
    if state is not None and state.schema_fingerprint != fingerprint:
        raise TrainingError(
            f"{model_dir} holds a model for data schema {state.schema_fingerprint}, but the "
            f"config's schema is {fingerprint}; use a new train.model_dir for a new schema"
        )
    start = plan_day(state, date, model_dir, force=force, allow_gap=allow_gap)
    state = start.state
    normalization = state.normalization if state else _normalization(manifest)
    day_start = state.global_step if state else 0
    backups = backup_dir(model_dir, date, day_start, info.num_workers)
    resume = latest_backup(backups)  # a relaunch after a failure part-way through this day
    if info.is_chief and start.checkpoint and not resume:
        _progressive_validation(config, date, start, normalization, manifest)

    # A new model starts from the same weights on every run of the same config (reproducible
    # runs; a relaunch after a failure resumes onto the very run it interrupted).
    keras.utils.set_random_seed(config.train.seed)
    with strategy.scope():
        model = build_model(config, normalization)
        compile_model(model, config)
        model.build_optimizers()  # slots exist before restoring, so that they are restored too
    checkpoint = tf.train.Checkpoint(**model.checkpoint_objects())
    # Creating a variable under MultiWorkerMirroredStrategy is a collective. Left to its first
    # save (a mid-day backup), the save counter was created at different points of the workers'
    # collective sequences on the second day of a `--dates` range ("Collective instance N
    # expected type 1 and data_type 9 but got type 0"): every worker creates it here instead.
    with strategy.scope():
        _ = checkpoint.save_counter
    restored = resume or start.checkpoint
    if restored:
        # A table saved with another number of shards is re-partitioned; anything else
        # missing from the checkpoint stops here.
        restore_checkpoint(checkpoint, restored)
    first_step = int(model.optimizer.iterations.numpy())
    done = first_step - day_start  # steps of this day already trained before a failure
    log.info(
        "training day %s: %d rows, %d steps of %d on %d worker(s), %s",
        date, rows, steps, batch, info.num_workers,
        f"resuming from the backup {resume} ({done} steps done)" if resume
        else f"warm start from {restored} (step {first_step})" if restored else "new model",
    )

    files = [os.path.join(day_dir(config.data.tfrecords, date), f) for f in manifest["files"]]

    def dataset_fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
        return make_dataset(
            files, config.data, batch, context,
            shuffle_buffer=config.train.shuffle_buffer,
            seed=config.train.seed + len(state.days if state else []),
            skip_batches=done,
        )

    started = time.perf_counter()
    progress = ProgressLogger(date, steps - done, batch, first_step, show=info.is_chief)
    callbacks = [BalancerEpochEnd(model), progress, *(callbacks or [])]
    if config.train.backup_every_steps:
        callbacks.append(MidDayBackup(checkpoint, backups, config.train.backup_every_steps,
                                      info.is_chief, first_step))
    if info.is_chief:
        callbacks += [
            # one TensorBoard step per day: losses, metrics, task weights, gate means
            keras.callbacks.TensorBoard(os.path.join(model_dir, "tensorboard"),
                                        write_graph=False, update_freq="epoch"),
        ]
    metrics: dict[str, float] = {}
    if steps > done:  # a failure after the last step but before the export leaves none to do
        history = model.fit(
            keras.utils.experimental.DatasetCreator(dataset_fn),
            epochs=1, steps_per_epoch=steps - done, verbose=0, callbacks=callbacks,
        )
        metrics = {k: float(v[-1]) for k, v in history.history.items()}
    seconds = time.perf_counter() - started
    global_step = int(model.optimizer.iterations.numpy())

    # Every worker saves (a collective); only the chief's copy lands in model_dir.
    ckpt_dir = os.path.join(model_dir, CHECKPOINTS) if info.is_chief else tempfile.mkdtemp()
    # One checkpoint per day; --force can restart any of the last 30 days.
    manager = tf.train.CheckpointManager(checkpoint, ckpt_dir, max_to_keep=30)
    manager.save(checkpoint_number=global_step)
    if not info.is_chief:
        shutil.rmtree(ckpt_dir, ignore_errors=True)

    # Every worker reads (a read of a synced variable can be a collective). Layers are matched by
    # position: both models are built by the same code, but auto-named layers differ in name.
    weights = [layer.get_weights() for layer in model.layers]
    version = export_path = None
    if info.is_chief:
        # Exporting the distributed model would need every worker; a plain copy needs none.
        copy = build_model(config, normalization)
        for layer, values in zip(copy.layers, weights, strict=True):
            layer.set_weights(values)
        base = os.path.join(config.train.export_dir, config.model.name)
        known = (state.days[-1].version if state and state.days else 0)
        version = max([known, *versions(base)]) + 1
        export_path = export_saved_model(copy, config, version)
        state = state or TrainState(config.model.name, fingerprint, normalization)
        state.days.append(TrainedDay(date, global_step, steps, rows, version, metrics))
        save_state(model_dir, state)
        with tf.io.gfile.GFile(os.path.join(model_dir, "config.yaml"), "w") as f:
            f.write(config.to_yaml())
        remove_backups(model_dir, date)
    rate = progress.steady_rate()
    log.info(
        "trained day %s: %d steps in %.1f s (%s after the first step), global step %d%s",
        date, steps - done, seconds, "n/a" if rate is None else f"{rate:.0f} ex/s", global_step,
        f", exported {export_path}" if export_path else "",
    )
    return DayResult(date, steps, global_step, version, export_path, metrics, model)
