"""The small generated project the tests share: the repository's paths, its config and days.

Fixtures (`conftest.py`) only wrap these; tests import from here, never from a conftest.
"""

from __future__ import annotations

from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "impressions.yaml"
DAYS = ["2026-03-01", "2026-03-02", "2026-03-03"]
ROWS = 1200
BATCH = 128


def make_small_project(root: Path) -> dict:
    """Config with small tables and batch, and three preprocessed days of generated logs."""
    from multitower.config import load_config
    from pipeline.generate import generate_logs
    from pipeline.preprocess import run_preprocess

    raw = yaml.safe_load(EXAMPLE.read_text())
    for feature in raw["data"]["features"]:
        if feature["type"] == "categorical":
            feature["hash_buckets"] = min(feature["hash_buckets"], 2000)
    raw["data"]["num_shards"] = 3
    raw["train"].update(batch_size=BATCH, shuffle_buffer=500)
    raw["model"]["mmoe"].update(num_experts=3, expert_units=[16])
    raw["model"]["embeddings"] = {"num_shards": 3}  # every table split in 3 (16 rows too)
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    config = load_config(path)
    generate_logs(str(root / "work" / "logs"), DAYS[0], len(DAYS), ROWS, seed=3)
    manifests = [run_preprocess(config, day) for day in DAYS]
    return {"root": root, "config_path": str(path), "config": config, "manifests": manifests}


def config_in(
    small_project: dict, folder: Path, train: dict | None = None,
    tasks: dict[str, dict] | None = None, **model_overrides,
) -> Path:
    """A copy of the small project's config that trains into `folder` (data stays shared).

    `train` updates the train section, `tasks` updates tasks by name, the rest the model section.
    """
    raw = yaml.safe_load(Path(small_project["config_path"]).read_text())
    raw["train"].update(train or {})
    for task in raw["data"]["tasks"]:
        task.update((tasks or {}).get(task["name"], {}))
    base = Path(small_project["config_path"]).parent
    for key in ("logs", "tfrecords", "rejected"):
        raw["data"][key] = str(base / raw["data"][key])
    raw["train"].update(model_dir=str(folder / "model"), export_dir=str(folder / "export"))
    raw["model"].update(model_overrides)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path

