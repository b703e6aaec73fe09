"""Evaluate the latest checkpoint on one day: per-task quality and what the gates do.

Per binary task: AUC, log loss, calibration (mean prediction / mean label) and the calibration
curve; with `evaluate.group_by` also the group AUC (e.g. per user). Per regression task: RMSE and
MAE in the label's own unit. With ESMM also pCVR AUC on clicked rows and pCTCVR AUC on all rows.
Per gate: the mean weight of each expert it sees, and a warning when the gate has collapsed (one
expert takes nearly all the weight on most examples). The metrics are scikit-learn's
(`trainer.metrics`); `trainer.pictures` draws the report.
"""

from __future__ import annotations

import json
import logging
import os

import numpy as np
import tensorflow as tf
import tf_keras as keras

from multitower.cluster import task_info
from multitower.config import Config
from multitower.manifest import check_partition, partition_files, read_manifest
from trainer.data import make_dataset
from trainer.embeddings import restore_with_parts
from trainer.incremental import TrainingError
from trainer.losses import invert_output
from trainer.memory import stitched_tables_fit
from trainer.metrics import auc, calibration, calibration_curve, group_auc, logloss, mae, rmse
from trainer.model_dir import ModelDir
from trainer.network import GATE_PREFIX, Normalization, build_network
from trainer.state import load_state

log = logging.getLogger("multitower.trainer")
COLLAPSE_WEIGHT = 0.95  # an expert this dominant on an example...
COLLAPSE_SHARE = 0.8  # ...on this share of the examples means the gate has collapsed


def _binary_metrics(config: Config, y: np.ndarray, p: np.ndarray, groups: np.ndarray | None
                    ) -> dict:
    found = {"auc": auc(y, p), "logloss": logloss(y, p), "calibration": calibration(y, p),
             "rows": int(len(y))}
    if groups is not None:
        by_group = group_auc(y, p, groups)
        found["group_auc"] = by_group.pop("gauc")
        found["group_auc_counted"] = by_group  # groups of both classes, of all; their rows
    found["calibration_curve"] = calibration_curve(y, p, config.evaluate.calibration_bins)
    return found


def _task_metrics(config: Config, outputs: dict[str, np.ndarray], labels: dict[str, np.ndarray],
                  groups: np.ndarray | None = None) -> dict[str, dict]:
    found: dict[str, dict] = {}
    for task in config.data.tasks:
        y, p = labels[task.name], outputs[task.name]
        present = ~np.isnan(y)
        y, p = y[present], p[present]
        if task.type == "binary":
            found[task.name] = _binary_metrics(
                config, y, p, None if groups is None else groups[present])
        else:
            p = invert_output(tf.constant(p), task.label_transform).numpy()
            found[task.name] = {"rmse": rmse(y, p), "mae": mae(y, p), "rows": int(present.sum())}
    if config.model.heads == "esmm":
        esmm = config.model.esmm
        click, conversion = labels[esmm.ctr_task], labels[esmm.cvr_task]
        known = ~np.isnan(click) & ~np.isnan(conversion)
        clicked = known & (click == 1)
        found[esmm.cvr_task]["auc_clicked"] = auc(conversion[clicked],
                                                  outputs[esmm.cvr_task][clicked])
        found[esmm.ctcvr_name] = _binary_metrics(
            config, click[known] * conversion[known], outputs[esmm.ctcvr_name][known],
            None if groups is None else groups[known])
    return found


def gate_summary(gates: dict[str, np.ndarray], experts: dict[str, list[str]] | None = None
                 ) -> dict[str, dict]:
    """Mean weight per expert and the collapse verdict of each gate `(examples, experts)`.

    `experts` names each gate's experts (`_Backbone.gate_experts`); by default `e0`, `e1`...
    """
    summary = {}
    for name, weights in gates.items():
        dominated = float(np.mean(weights.max(axis=1) >= COLLAPSE_WEIGHT))
        names = (experts or {}).get(name) or [f"e{i}" for i in range(weights.shape[1])]
        summary[name] = {
            "experts": list(names),
            "mean_weight_per_expert": [round(float(w), 4) for w in weights.mean(axis=0)],
            "share_dominated_by_one_expert": dominated,
            "collapsed": dominated >= COLLAPSE_SHARE,
        }
    return summary


def evaluate_model(config: Config, network: keras.Model, date: str, checkpoint: str,
                   strategy: tf.distribute.Strategy | None = None) -> dict:
    """Scores the day's TFRecords with `network`.

    With `strategy` (a cluster whose workers hold parts of model-parallel tables), every worker
    scores every batch inside `strategy.run`, so that every lookup has every owner; each gets
    the same scores.
    """
    manifest = read_manifest(config.data.tfrecords, date)
    files = partition_files(config.data.tfrecords, date, manifest)
    dataset = make_dataset(files, config.data, config.train.batch_size, repeat=False,
                           drop_remainder=False)
    outputs: dict[str, list[np.ndarray]] = {}
    labels: dict[str, list[np.ndarray]] = {}
    group_by = config.evaluate.group_by
    groups: list[np.ndarray] = []
    # One traced graph for every batch (a last, smaller batch traces once more), rather than
    # every layer run op by op in eager mode; AutoGraph off as in `build_network`.
    if strategy is not None and strategy.num_replicas_in_sync > 1:
        def forward(features: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
            scored = strategy.run(lambda x: network(x, training=False), args=(features,))
            return {k: strategy.experimental_local_results(v)[0] for k, v in scored.items()}
    else:
        def forward(features: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
            return network(features, training=False)
    score = tf.function(forward, autograph=False, reduce_retracing=True)
    for features, batch_labels in dataset:
        for name, value in score(features).items():
            outputs.setdefault(name, []).append(value.numpy())
        for name, value in batch_labels.items():
            labels.setdefault(name, []).append(value.numpy()[:, 0])
        if group_by is not None:
            groups.append(features[group_by].numpy().reshape(-1))
    joined = {k: np.concatenate(v) for k, v in outputs.items()}
    scores = {k: v[:, 0] for k, v in joined.items() if not k.startswith(GATE_PREFIX)}
    backbone = next((layer for layer in network.layers if hasattr(layer, "gate_experts")), None)
    gates = gate_summary({k[len(GATE_PREFIX):]: v for k, v in joined.items()
                          if k.startswith(GATE_PREFIX)},
                         backbone.gate_experts() if backbone is not None else None)
    for name, gate in gates.items():
        if gate["collapsed"]:
            log.warning(
                "gate %s has collapsed: one expert takes >= %.0f%% of the weight on %.0f%% of "
                "the examples (mean weights %s)", name, COLLAPSE_WEIGHT * 100,
                gate["share_dominated_by_one_expert"] * 100, gate["mean_weight_per_expert"],
            )
    return {
        "date": date,
        "checkpoint": checkpoint,
        "rows": int(len(next(iter(scores.values())))),
        "group_by": group_by,
        "tasks": _task_metrics(config, scores, {k: np.concatenate(v) for k, v in labels.items()},
                               np.concatenate(groups) if group_by is not None else None),
        "gates": gates,
    }


def restore_network(config: Config, normalization: Normalization, checkpoint: str
                    ) -> keras.Model:
    """The network of `checkpoint`, built outside any strategy (no collectives to read it)."""
    network = build_network(config, normalization)
    _restore_weights(network, checkpoint)  # model-parallel tables whole, stitched
    return network


def _restore_weights(network: keras.Model, checkpoint: str) -> None:
    """The network's weights only (no optimizer), model-parallel rows from the parts.

    This process's share of them: the whole table outside a cluster.
    """
    restore_with_parts(tf.train.Checkpoint(network=network), checkpoint, network)


def restore_on_cluster(config: Config, normalization: Normalization, checkpoint: str,
                       strategy: tf.distribute.Strategy) -> keras.Model:
    """The network of `checkpoint` under `strategy`, each worker with its share of the tables.

    Model-parallel tables are re-partitioned from the parts if another count wrote them;
    everything else is mirrored.
    """
    with strategy.scope():
        network = build_network(config, normalization)
    _restore_weights(network, checkpoint)
    return network


def evaluate_day(config: Config, date: str, output: str | None = None,
                 strategy: tf.distribute.Strategy | None = None) -> dict | None:
    """Scores the day with the latest checkpoint and writes the report as JSON.

    One process (no cluster) scores with every model-parallel table stitched whole from the
    workers' parts, when that fits this machine's memory, and refuses otherwise, naming the
    figures. On a cluster (`strategy` with several workers: `multitower evaluate --workers N`
    or `TF_CONFIG`), every worker holds its share of the tables and scores every batch with the
    others; the chief writes the report.

    The report goes to `output`, or `<model_dir>/eval/dt=<date>.json`.

    Returns:
        The report (None on a worker that is not the chief).

    Raises:
        TrainingError: No trained model, or tables too large to stitch here.
    """
    # A missing or damaged day fails before any model work, naming the file.
    check_partition(config.data.tfrecords, date)
    state = load_state(config.train.model_dir)
    model_dir = ModelDir(config.train.model_dir)
    latest = tf.train.latest_checkpoint(model_dir.checkpoints)
    if state is None or latest is None:
        raise TrainingError(f"{config.train.model_dir} holds no trained model; train a day first")
    cluster = strategy is not None and strategy.num_replicas_in_sync > 1
    if cluster:
        network = restore_on_cluster(config, state.normalization, latest, strategy)
    else:
        fits, figures = stitched_tables_fit(config)
        if not fits:
            raise TrainingError(
                f"the model-parallel tables of {latest} do not fit this machine whole ("
                f"{figures}); evaluate on the cluster, each worker with its share: multitower "
                f"evaluate --workers N (or with TF_CONFIG naming the workers)")
        network = restore_network(config, state.normalization, latest)
    report = evaluate_model(config, network, date, latest, strategy if cluster else None)
    if cluster and not task_info().is_chief:
        return None
    report["trained_through"] = state.last_date
    path = output or model_dir.eval_report(date)
    tf.io.gfile.makedirs(os.path.dirname(path))
    with tf.io.gfile.GFile(path, "w") as f:
        f.write(json.dumps(report, indent=2))
    report["path"] = path
    return report


def format_report(report: dict) -> str:
    """The evaluation summary as lines for people."""
    lines = [f"evaluation of {report['checkpoint']} on {report['date']} ({report['rows']} rows)"]
    for task, values in report["tasks"].items():
        shown = "  ".join(f"{k} {v:.4f}" for k, v in values.items()
                          if isinstance(v, float) and k != "group_auc")
        if "group_auc" in values:
            counted = values["group_auc_counted"]
            shown += (f"  group_auc {values['group_auc']:.4f} (by {report['group_by']}: "
                      f"{counted['groups']} of {counted['groups_total']} groups have both "
                      f"classes, {counted['rows']} rows)")
        lines.append(f"  {task:<14} {shown}  ({values['rows']} rows)")
    for gate, values in report["gates"].items():
        weights = " ".join(f"{e} {w:.3f}" for e, w in zip(
            values["experts"], values["mean_weight_per_expert"], strict=True))
        flag = "  COLLAPSED" if values["collapsed"] else ""
        lines.append(f"  gate {gate:<20} [{weights}]{flag}")
    lines.append(f"  written to {report['path']}")
    return "\n".join(lines)
