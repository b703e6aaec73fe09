"""`multitower export`: a checkpoint exported again as the next version, without training.

What changes is the graph around the weights: `serving.ranking_score`'s terms and weights, or the
serving signatures of a newer multitower. The network is restored from the latest checkpoint (or
a given one) with the normalization constants of `state.json`; the warmup file is built from the
last trained day's TFRecords (or a given day's); the version is checked like a training export
(`trainer.export.validate_export`) and numbered like one (`trainer.train.next_version`), under
the same `model_dir` lease, and recorded in `state.json`'s `exports`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import tensorflow as tf

from multitower.config import Config
from multitower.errors import MultitowerError
from multitower.manifest import partition_files, read_manifest, schema_mismatch
from trainer.evaluate import restore_network
from trainer.export import export_saved_model
from trainer.model_dir import ModelDir
from trainer.state import ReExport, TrainState, load_state, save_state
from trainer.train import model_dir_lease, next_version, warmup_examples

log = logging.getLogger("multitower.trainer")


class ReExportError(MultitowerError, RuntimeError):
    """There is nothing to export again: no trained model, or no such checkpoint or day."""


@dataclass
class ReExportResult:
    """The version written, where, from which checkpoint, with which day's warmup rows."""

    version: int
    export_path: str
    checkpoint: str
    date: str


def reexport(config: Config, checkpoint: str | None = None, date: str | None = None
             ) -> ReExportResult:
    """Exports `checkpoint` (default: the latest) as the next version and records it.

    Args:
        config: The loaded config; its `serving` section shapes the export.
        checkpoint: A checkpoint prefix (`<model_dir>/checkpoints/ckpt-<step>`); None: the latest.
        date: The preprocessed day whose first rows make the warmup file; None: the last
            trained day.

    Returns:
        What was exported.

    Raises:
        ReExportError: No trained model, no such checkpoint, or a day of another schema.
        ExportRejectedError: The export failed its checks; nothing was published or recorded.
        LeaseHeldError: Another run writes this model_dir.
    """
    _trained_state(config)  # refused before the lease: nothing is written into an empty folder
    with model_dir_lease(config) as lease:
        state = _trained_state(config)
        checkpoint = _checkpoint(config, checkpoint)
        date = date or state.last_date
        files = _day_files(config, date)
        network = restore_network(config, state.normalization, checkpoint)
        version = next_version(config, state)
        lease.check()  # taken over meanwhile: publish nothing
        path = export_saved_model(network, config, version, warmup_examples(config, files))
        state.exports.append(ReExport(version, checkpoint, date))
        save_state(config.train.model_dir, state)
    log.info("exported %s from %s (warmup rows of %s)", path, checkpoint, date)
    return ReExportResult(version, path, checkpoint, date)


def _trained_state(config: Config) -> TrainState:
    model_dir = config.train.model_dir
    state = load_state(model_dir)
    if state is None or not state.days:
        raise ReExportError(f"{model_dir} holds no trained model; train a day first")
    fingerprint = config.data.schema_fingerprint()
    if state.schema_fingerprint != fingerprint:
        raise ReExportError(
            f"{model_dir} holds a model for data schema {state.schema_fingerprint}, but the "
            f"config's schema is {fingerprint}; export with the config it was trained with")
    return state


def _checkpoint(config: Config, checkpoint: str | None) -> str:
    if checkpoint is None:
        latest = tf.train.latest_checkpoint(ModelDir(config.train.model_dir).checkpoints)
        if latest is None:
            raise ReExportError(f"{config.train.model_dir} holds no checkpoint; train a day "
                                f"first")
        return latest
    if not tf.io.gfile.exists(f"{checkpoint}.index"):
        raise ReExportError(f"checkpoint {checkpoint} does not exist (no {checkpoint}.index); "
                            f"give a prefix such as "
                            f"{ModelDir(config.train.model_dir).checkpoint(1234)}")
    return checkpoint


def _day_files(config: Config, date: str) -> list[str]:
    manifest = read_manifest(config.data.tfrecords, date)
    mismatch = schema_mismatch(config.data.tfrecords, date, manifest,
                               config.data.schema_fingerprint())
    if mismatch:
        raise ReExportError(f"{mismatch}; give another --date")
    return partition_files(config.data.tfrecords, date, manifest)
