"""Train one day: plan it, build and restore, fit one pass, publish checkpoint, state and export.

Every worker runs `train_day`; `TF_CONFIG` alone makes it distributed. What the workers must do
together (create, save, read) and who keeps what is stated in `trainer.collectives`; the
paths under `model_dir` in `trainer.model_dir`.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass

import numpy as np
import tensorflow as tf
import tf_keras as keras

from multitower.cluster import TaskInfo, task_info
from multitower.config import Config
from multitower.exports import model_base, versions
from multitower.lease import Lease
from multitower.manifest import (
    check_partition,
    partition_files,
    read_manifest,
    schema_mismatch,
)
from trainer.backup import MidDayBackup, latest_backup, remove_backups
from trainer.collectives import (
    CollectiveSaver,
    barrier,
    chief_says,
    create_save_counter,
    read_weights,
)
from trainer.data import make_dataset
from trainer.embeddings import (
    model_parallel_variables,
    placements,
    restore_with_parts,
    split_of,
    stitched_weights,
)
from trainer.evaluate import evaluate_model, restore_network, restore_on_cluster
from trainer.export import ExportRejectedError, export_saved_model
from trainer.history import append_history, numeric_drift
from trainer.incremental import StartPoint, TrainingError, plan_day
from trainer.memory import check_memory, stitched_tables_fit
from trainer.model_dir import CHECKPOINTS_KEPT, ModelDir
from trainer.network import Normalization, build_network
from trainer.phases import DayPhases
from trainer.progress import BalancerEpochEnd, ProgressLogger
from trainer.state import TrainedDay, TrainState, load_state, save_state
from trainer.strategy import make_strategy
from trainer.training_model import TrainingModel, build_training_model

log = logging.getLogger("multitower.trainer")
_days_in_process = 0  # the first day of a process also pays its start-up (`DayPhases`)


@dataclass
class DayResult:
    """What `train_day` did; `version` and `export_path` are None on workers but the chief."""

    date: str
    steps: int
    global_step: int
    version: int | None
    export_path: str | None
    metrics: dict[str, float]
    model: TrainingModel
    phases: dict[str, float]  # seconds per phase (`trainer.phases.PHASES`) of this worker


@dataclass
class DayPlan:
    """Everything decided before any model is built: the day's data and where training starts."""

    date: str
    manifest: dict
    files: list[str]
    rows: int
    steps: int
    start: StartPoint
    normalization: Normalization
    day_start: int  # the global step before this day
    backups: str  # this day's backup folder for this worker count
    resume: str | None  # a backup to resume from (a relaunch after a failure)
    info: TaskInfo

    @property
    def state(self) -> TrainState | None:
        return self.start.state


def train_day(
    config: Config, date: str, strategy: tf.distribute.Strategy | None = None,
    force: bool = False, allow_gap: bool = False,
    callbacks: list[keras.callbacks.Callback] | None = None,
) -> DayResult:
    """Trains `config`'s model on one preprocessed day and exports the next version.

    Args:
        config: The loaded config.
        date: `YYYY-MM-DD`; its TFRecord partition must be complete (have `_MANIFEST.json`).
        strategy: Reuse a strategy made by `make_strategy()` (one per process); made if None.
        force: Train a day again that was already trained, from the checkpoint before it.
        allow_gap: Train a day that does not follow the last trained day.
        callbacks: Extra Keras callbacks for the day's `fit` (every worker's).

    Returns:
        What was trained, with the model (still under the strategy).

    Raises:
        TrainingError: The day cannot be trained as asked; the message says why.
    """
    strategy = strategy or make_strategy()
    # Only the chief writes into model_dir, so only the chief holds its lease: before it reads
    # the state, until the state, the export and its version number are written.
    lease = model_dir_lease(config) if task_info().is_chief else contextlib.nullcontext()
    with lease:
        return _train_day(config, date, strategy, force, allow_gap, callbacks or [], lease)


def _train_day(config: Config, date: str, strategy: tf.distribute.Strategy, force: bool,
               allow_gap: bool, callbacks: list[keras.callbacks.Callback],
               lease: Lease | contextlib.nullcontext) -> DayResult:
    global _days_in_process
    phases = DayPhases(first_day_of_process=_days_in_process == 0)
    _days_in_process += 1
    check_memory(config, task_info().num_workers)  # every worker: replicated tables whole
    day = plan_training(config, date, force=force, allow_gap=allow_gap)
    phases.lap("plan")
    if day.start.checkpoint and not day.resume:
        # The chief alone, with model-parallel tables stitched whole, when they fit its memory;
        # otherwise every worker with its share of them (the chief's answer, for every worker).
        on_cluster = (strategy.num_replicas_in_sync > 1 and has_model_parallel_tables(config)
                      and not chief_says(strategy, stitched_tables_fit(config)[0],
                                         day.info.is_chief))
        if on_cluster:
            _progressive_validation(config, day, strategy)
            phases.lap("validation")
        elif day.info.is_chief:
            _progressive_validation(config, day)
            phases.lap("validation")
    model, checkpoint = _build_and_restore(config, day, strategy)
    phases.lap("build")
    first_step = int(model.optimizer.iterations.numpy())
    metrics, progress = _fit(config, day, model, checkpoint, first_step, callbacks)
    phases.lap("steady")
    phases.split_fit(*progress.call_seconds())
    seconds = phases.seconds["first_call"] + phases.seconds["steady"]
    global_step = int(model.optimizer.iterations.numpy())
    if isinstance(lease, Lease):
        lease.check()  # taken over while this run trained: publish nothing
    version, export_path = _publish(config, day, model, checkpoint, global_step, metrics, phases)
    rate = progress.steady_rate()
    log.info(
        "trained day %s: %d steps in %.1f s (%s after the first call), global step %d%s",
        date, progress.steps, seconds, "n/a" if rate is None else f"{rate:.0f} ex/s",
        global_step, f", exported {export_path}" if export_path else "",
    )
    log.info("day %s phases: %s", date, phases.summary())
    return DayResult(date, day.steps, global_step, version, export_path, metrics, model,
                     dict(phases.seconds))


def model_dir_lease(config: Config) -> Lease:
    """The lease of `train.model_dir`: one run at a time writes its state and exports."""
    model_dir = config.train.model_dir
    return Lease(
        ModelDir(model_dir).lease, f"model_dir {model_dir}", config.train.lease_ttl_seconds,
        hint=f"Wait for that run to end; if it died on another host, its lease expires "
             f"{config.train.lease_ttl_seconds:g} s after its last heartbeat "
             f"(train.lease_ttl_seconds)")


def plan_training(config: Config, date: str, force: bool = False, allow_gap: bool = False
                  ) -> DayPlan:
    """Reads the day's manifest and the model's state and decides where the day starts.

    Raises:
        TrainingError: Another schema, too few rows, or a refusal of `plan_day`.
        PartitionCorruptError: A file of the day differs from its manifest.
    """
    info = task_info()
    model_dir, batch = config.train.model_dir, config.train.batch_size
    manifest = read_manifest(config.data.tfrecords, date)
    fingerprint = config.data.schema_fingerprint()
    mismatch = schema_mismatch(config.data.tfrecords, date, manifest, fingerprint)
    if mismatch:
        raise TrainingError(f"{mismatch}; preprocess the day again with this config")
    rows = int(manifest["rows"]["written"])
    if rows // batch < 1:
        raise TrainingError(f"day {date} has {rows} rows, fewer than one global batch ({batch}); "
                            "lower train.batch_size")
    state = load_state(model_dir)
    if state is not None and state.schema_fingerprint != fingerprint:
        raise TrainingError(
            f"{model_dir} holds a model for data schema {state.schema_fingerprint}, but the "
            f"config's schema is {fingerprint}; use a new train.model_dir for a new schema")
    start = plan_day(state, date, model_dir, force=force, allow_gap=allow_gap)
    # Every byte against the manifest's sizes and checksums, on every worker, before any model
    # exists: a damaged file is named here rather than found mid-day as a record offset.
    check_partition(config.data.tfrecords, date)
    normalization = start.state.normalization if start.state else _normalization(manifest)
    day_start = start.state.global_step if start.state else 0
    backups = ModelDir(model_dir).backup(date, day_start, info.num_workers)
    steps = rows // batch * config.train.epochs_per_day
    return DayPlan(date, manifest, partition_files(config.data.tfrecords, date, manifest), rows,
                   steps, start, normalization, day_start, backups, latest_backup(backups), info)


def _normalization(manifest: dict) -> Normalization:
    return {name: {"mean": float(s["mean"]), "std": float(s["std"])}
            for name, s in manifest["numeric"].items()}


def has_model_parallel_tables(config: Config) -> bool:
    """Whether any embedding table of `config` is placed model_parallel."""
    return any(config.model.embeddings.placement_of(f.table) == "model_parallel"
               for f in config.data.categorical)


def _progressive_validation(config: Config, day: DayPlan,
                            strategy: tf.distribute.Strategy | None = None) -> None:
    """Scores the model as it stands on the day it is about to train on.

    The chief alone, or with `strategy` every worker with its share of the model-parallel
    tables (the chief records the result).
    """
    if strategy is None:
        network = restore_network(config, day.normalization, day.start.checkpoint)
    else:
        network = restore_on_cluster(config, day.normalization, day.start.checkpoint, strategy)
    report = evaluate_model(config, network, day.date, day.start.checkpoint, strategy)
    if not day.info.is_chief:
        return
    record = {
        "date": day.date, "kind": "progressive_validation",
        "global_step": day.state.global_step, "trained_through": day.state.last_date,
        "tasks": report["tasks"], "gates": report["gates"],
        "drift": numeric_drift(day.normalization, day.manifest),
    }
    append_history(config.train.model_dir, record)
    shown = ", ".join(f"{task} auc {v['auc']:.4f}" for task, v in report["tasks"].items()
                      if "auc" in v)
    log.info("progressive validation on %s before training it (%s): %s", day.date,
             "every worker, each with its share of the tables" if strategy is not None
             else "the chief", shown or "done")


def _build_and_restore(config: Config, day: DayPlan, strategy: tf.distribute.Strategy
                       ) -> tuple[TrainingModel, tf.train.Checkpoint]:
    """The model with every variable and slot, restored from a backup or the last day."""
    # A new model starts from the same weights on every run of the same config (reproducible
    # runs; a relaunch after a failure resumes onto the very run it interrupted).
    keras.utils.set_random_seed(config.train.seed)
    with strategy.scope():
        model = build_training_model(config, day.normalization)
    checkpoint = model.checkpoint()
    create_save_counter(checkpoint, strategy)
    restored = day.resume or day.start.checkpoint
    if restored:
        # A table saved with another number of shards is re-partitioned; anything else
        # missing from the checkpoint stops here. Model-parallel rows and slots come from every
        # worker's part, re-partitioned when the worker count changed.
        restore_with_parts(checkpoint, restored, model.network, model.optimizer.tables)
    first_step = int(model.optimizer.iterations.numpy())
    log.info(
        "training day %s: %d rows, %d pass(es), %d steps of %d on %d worker(s), %s",
        day.date, day.rows, config.train.epochs_per_day, day.steps, config.train.batch_size,
        day.info.num_workers,
        f"resuming from the backup {day.resume} ({first_step - day.day_start} steps done)"
        if day.resume else f"warm start from {restored} (step {first_step})" if restored
        else "new model",
    )
    return model, checkpoint


def _fit(config: Config, day: DayPlan, model: TrainingModel, checkpoint: tf.train.Checkpoint,
         first_step: int, extra: list[keras.callbacks.Callback]
         ) -> tuple[dict[str, float], ProgressLogger]:
    """The day's passes over its data, after the steps a resumed backup already trained."""
    done = first_step - day.day_start

    def dataset_fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
        return make_dataset(
            day.files, config.data, config.train.batch_size, context,
            shuffle_buffer=config.train.shuffle_buffer,
            seed=config.train.seed + len(day.state.days if day.state else []),
            skip_batches=done,
        )

    progress = ProgressLogger(day.date, day.steps - done, config.train.batch_size, first_step,
                              show=day.info.is_chief)
    callbacks = [BalancerEpochEnd(model), progress, *extra]
    if config.train.backup_every_steps:
        callbacks.append(MidDayBackup(
            checkpoint, day.backups, config.train.backup_every_steps, day.info.is_chief,
            first_step, day.day_start + day.steps,
            parts=model_parallel_variables(model.network, model.optimizer.tables),
            workers=split_of(model.network)))
    if day.info.is_chief:  # one TensorBoard step per day: losses, metrics, weights, gates
        callbacks.append(keras.callbacks.TensorBoard(
            ModelDir(config.train.model_dir).tensorboard, write_graph=False,
            update_freq="epoch"))
    if day.steps <= done:  # a failure after the last step but before the export
        return {}, progress
    history = model.fit(keras.utils.experimental.DatasetCreator(dataset_fn), epochs=1,
                        steps_per_epoch=day.steps - done, verbose=0, callbacks=callbacks)
    return {k: float(v[-1]) for k, v in history.history.items()}, progress


def _publish(config: Config, day: DayPlan, model: TrainingModel,
             checkpoint: tf.train.Checkpoint, global_step: int, metrics: dict[str, float],
             phases: DayPhases) -> tuple[int | None, str | None]:
    """The day's checkpoint (every worker), then the chief's export, state and config.

    An export that fails its checks (`trainer.export.validate_export`) is not published and
    the day stays untrained: the chief sets the day's checkpoint aside (`_reject_day`) and
    raises, after every collective of the day is done.

    Raises:
        ExportRejectedError: On the chief, the export was rejected; the message says why.
    """
    model_dir = ModelDir(config.train.model_dir)
    parts = model_parallel_variables(model.network, model.optimizer.tables)
    saver = CollectiveSaver(checkpoint, model_dir.checkpoints, day.info.is_chief,
                            max_to_keep=CHECKPOINTS_KEPT, parts=parts,
                            workers=split_of(model.network))
    saver.save(global_step)
    saver.close()
    if parts:  # every worker's part is written before the chief stitches the tables
        barrier(model.distribute_strategy)
    weights = read_weights(model.network)  # the day's last collective
    phases.lap("checkpoint")
    if not day.info.is_chief:
        return None, None
    version = next_version(config, day.state)
    weights = stitched_weights(model.network, weights, model_dir.checkpoint(global_step))
    try:
        export_path = _export(config, day, weights, version)
    except ExportRejectedError as err:
        raise _reject_day(config, day, global_step, err) from None
    state = day.state or TrainState(config.model.name, config.data.schema_fingerprint(),
                                    day.normalization)
    state.days.append(TrainedDay(day.date, global_step, day.steps, day.rows, version, metrics,
                                 placements(model.network)))
    save_state(config.train.model_dir, state)
    with tf.io.gfile.GFile(model_dir.resolved_config, "w") as f:
        f.write(config.to_yaml())
    remove_backups(config.train.model_dir, day.date)
    phases.lap("export")
    return version, export_path


def next_version(config: Config, state: TrainState | None) -> int:
    """One above every version the state knows (days and re-exports) and every one on disk."""
    known = state.last_version if state else 0
    return max([known, *versions(model_base(config.train.export_dir, config.model.name))]) + 1


def _export(config: Config, day: DayPlan, weights: list[np.ndarray], version: int) -> str:
    """Exports a copy of the network built outside the strategy, with the day's warmup rows.

    Exporting the distributed network would need every worker.
    """
    copy = build_network(config, day.normalization)
    copy.set_weights(weights)
    return export_saved_model(copy, config, version, warmup_examples(config, day.files))


def warmup_examples(config: Config, files: list[str]) -> list[bytes]:
    """The first `serving.warmup_size` serialized Examples of a day's `files`, in file order."""
    records = tf.data.TFRecordDataset(sorted(files), compression_type="GZIP")
    return [r.numpy() for r in records.take(config.serving.warmup_size)]


def _reject_day(config: Config, day: DayPlan, global_step: int, err: ExportRejectedError
                ) -> ExportRejectedError:
    """Leaves the day untrained after its export was rejected; returns the error to raise.

    The day's checkpoint is renamed aside (`ModelDir.rejected_checkpoint`) and dropped from the
    checkpoint manager's list, its mid-day backups are removed and `state.json` is left as it
    was: running the same command again trains the day again from the previous day's checkpoint.
    """
    model_dir = ModelDir(config.train.model_dir)
    aside = _set_checkpoint_aside(model_dir, global_step)
    remove_backups(config.train.model_dir, day.date)
    start = day.start.checkpoint or "a new model"
    log.error("day %s: export rejected; checkpoint set aside as %s", day.date, aside)
    return ExportRejectedError(
        f"{err}. Day {day.date} stays untrained: its checkpoint is kept aside as {aside} and "
        f"{model_dir.state} is unchanged; run the same command again to train the day again "
        f"from {start}")


def _set_checkpoint_aside(model_dir: ModelDir, global_step: int) -> str:
    """Renames `ckpt-<step>.*` to `rejected-ckpt-<step>.*` and drops it from the manager's list.

    `tf.train.latest_checkpoint` and the next day's `CheckpointManager` then see the checkpoints
    before it only. Returns the new prefix.
    """
    prefix, aside = model_dir.checkpoint(global_step), model_dir.rejected_checkpoint(global_step)
    for path in tf.io.gfile.glob(prefix + ".*"):
        tf.io.gfile.rename(path, aside + path[len(prefix):], overwrite=True)
    listed = tf.train.get_checkpoint_state(model_dir.checkpoints)
    if listed is None:
        return aside
    paths = list(listed.all_model_checkpoint_paths)
    stamps = list(listed.all_model_checkpoint_timestamps)
    timed = len(stamps) == len(paths)
    # Relative names, as CheckpointManager writes them (an absolute s3:// path would be joined
    # onto the folder again when read).
    kept = [(os.path.basename(p), t) for p, t in
            zip(paths, stamps if timed else [0.0] * len(paths), strict=True)
            if os.path.basename(p) != os.path.basename(prefix)]
    if not kept:
        tf.io.gfile.remove(model_dir.checkpoint_list)
        return aside
    tf.compat.v1.train.update_checkpoint_state(
        model_dir.checkpoints, kept[-1][0], [p for p, _ in kept],
        all_model_checkpoint_timestamps=[t for _, t in kept] if timed else None,
        last_preserved_timestamp=listed.last_preserved_timestamp)
    return aside
