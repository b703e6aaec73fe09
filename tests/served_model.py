"""A small served project the serving tests share: one preprocessed day and exported versions.

`make_served_project(root)` writes a config (small tables, a `serving:` section with a version
policy of two versions, labels and a ranking score), generates one day of logs, preprocesses it
with the real Beam job (real TFRecords), and exports versions 1 and 2 of two differently
initialized networks, each with TF Serving's warmup file built from the day's examples (so each
version is checked by `validate_export` as a training export is). It also writes the day's raw
rows as JSON lines (features only, and the same rows with labels), the input of `query` and
`predict`. A list-valued feature of the config is a list of any length in those rows;
`tensor_rows` cuts and pads such lists as the exported signature takes them (`(batch, L)`), the
rows a test sends to the double or to the signature directly.

Fixtures (`conftest.py`) only wrap these; tests import from here, never from a conftest.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import yaml

from tests.small_project import EXAMPLE

DAY = "2026-04-01"
ROWS = 600
MODEL = "ranker"  # serving.model_name, different from model.name ("impressions") on purpose
WARMUP = 32


def served_config(root: Path) -> dict:
    """The raw config: the example's data and model with small tables, and a serving section."""
    raw = yaml.safe_load(EXAMPLE.read_text())
    for feature in raw["data"]["features"]:
        if feature["type"] == "categorical":
            feature["hash_buckets"] = min(feature["hash_buckets"], 500)
    raw["data"].update(logs=str(root / "logs" / "dt={date}"), tfrecords=str(root / "tfrecords"),
                       rejected=str(root / "rejected"), num_shards=2)
    raw["model"]["mmoe"].update(num_experts=2, expert_units=[16])
    raw["model"]["tower_units"] = [8]
    raw["train"].update(model_dir=str(root / "model"), export_dir=str(root / "export"),
                        batch_size=128)
    raw["serving"] = {
        "model_name": MODEL,
        "version_policy": {"latest": 2},
        "labels": {"stable": "previous", "canary": "latest"},
        "warmup_size": WARMUP,
        "ranking_score": {"combine": "product", "terms": [
            {"output": "click", "weight": 1.0},
            {"output": "conversion", "weight": 0.5},
            {"output": "watch_time", "weight": 0.2, "offset": 1.0}]},
    }
    return raw


def tensor_rows(config: object, rows: list[dict]) -> list[dict]:
    """The rows as the serving signature takes them: each list feature's list cut to its
    `max_length` and padded at the end with its pad value (written here independently of
    `serving.lists`, which the tests check against it)."""
    lists = {f.name: (f.max_length, f.list_pad) for f in config.data.multivalent}
    return [{name: (value[:lists[name][0]] + [lists[name][1]] * (lists[name][0] - len(value))
                    if name in lists else value) for name, value in row.items()}
            for row in rows]


def with_lists(row: dict, data: object) -> dict:
    """`row` with a hand-written list for each list feature of `data` that it lacks: two
    elements (`a1`, `b2`, or 3, 4), or the feature's `max_length` of them if fewer."""
    extra = {}
    for f in data.multivalent:
        values = ["a1", "b2"] if f.dtype == "string" else [3, 4]
        extra[f.name] = values[: f.max_length]
    return {**extra, **row}


def day_examples(config: object, limit: int | None = None) -> list[bytes]:
    """The serialized Examples of the preprocessed day, in file order."""
    import tensorflow as tf

    from multitower.manifest import partition_files, read_manifest

    root = config.data.tfrecords
    files = partition_files(root, DAY, read_manifest(root, DAY))
    examples = [r.numpy() for r in tf.data.TFRecordDataset(files, compression_type="GZIP")]
    return examples[:limit] if limit else examples


def export_version(config: object, version: int, seed: int) -> str:
    """Exports `version`: a network initialized from `seed`, with warmup and validation."""
    import tf_keras as keras

    from trainer.export import export_saved_model
    from trainer.network import build_network

    keras.utils.set_random_seed(seed)
    network = build_network(config, {f.name: {"mean": 3.0, "std": 2.0}
                                     for f in config.data.numeric})
    return export_saved_model(network, config, version, day_examples(config, WARMUP))


def make_served_project(root: Path) -> dict:
    """Config, one preprocessed day, versions 1 and 2 exported, and the day's rows as JSON lines.

    Returns:
        `{"root", "config_path", "config", "manifest", "export_base", "rows" (feature rows),
        "tensor_rows" (the same, lists cut and padded: `tensor_rows`), "rows_path" (features
        only), "labelled_path" (the log rows, labels included)}`.
    """
    from multitower.config import load_config
    from multitower.exports import model_base
    from pipeline.generate import Population, generate_day
    from pipeline.preprocess import run_preprocess

    root.mkdir(parents=True, exist_ok=True)
    raw = served_config(root)
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    config = load_config(path)
    table, _ = generate_day(Population(seed=5), DAY, ROWS, seed=5, task_correlation=0.8)
    logs = root / "logs" / f"dt={DAY}"
    logs.mkdir(parents=True)
    (logs / "part-0.jsonl").write_text("".join(json.dumps(row) + "\n" for row in table))
    manifest = run_preprocess(config, DAY)
    names = [f.name for f in config.data.features]
    rows = [{name: row[name] for name in names} for row in table]
    rows_path = root / "rows.jsonl"
    rows_path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    for version, seed in ((1, 11), (2, 22)):
        export_version(config, version, seed)
    return {"root": root, "config_path": str(path), "config": config, "manifest": manifest,
            "export_base": model_base(config.train.export_dir, config.model.name),
            "rows": rows, "tensor_rows": tensor_rows(config, rows), "rows_path": str(rows_path),
            "labelled_path": str(logs / "part-0.jsonl")}


def copy_project(project: dict, folder: Path, **serving: object) -> dict:
    """A copy of the project whose export folder (with its versions) is its own, to add to.

    The TFRecords stay shared (read only). `serving` updates the copy's serving section.
    """
    from multitower.config import load_config
    from multitower.exports import model_base

    raw = yaml.safe_load(Path(project["config_path"]).read_text())
    raw["train"].update(model_dir=str(folder / "model"), export_dir=str(folder / "export"))
    raw["serving"].update(serving)
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copytree(Path(project["export_base"]).parent, folder / "export")
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    config = load_config(path)
    return {**project, "root": folder, "config_path": str(path), "config": config,
            "export_base": model_base(config.train.export_dir, config.model.name)}
