"""The small generated project the tests share: the repository's paths, its config and days.

Fixtures (`conftest.py`) only wrap these; tests import from here, never from a conftest.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
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
    tasks: dict[str, dict] | None = None, evaluate: dict | None = None, **model_overrides,
) -> Path:
    """A copy of the small project's config that trains into `folder` (data stays shared).

    `train` updates the train section, `tasks` updates tasks by name, `evaluate` is the evaluate
    section, the rest updates the model section.
    """
    raw = yaml.safe_load(Path(small_project["config_path"]).read_text())
    raw["train"].update(train or {})
    if evaluate is not None:
        raw["evaluate"] = evaluate
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



def device_batch(n: int, rng: np.random.Generator, ids: int = 50
                 ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Rows of the example's features where click depends on the device alone (learnable in a
    few steps); user and item ids drawn from `ids` values, recent items padded to 10 with ""."""
    device = rng.choice(["ios", "web"], size=n)
    features = {
        "user_id": np.array([f"u{i}" for i in rng.integers(0, ids, n)]),
        "user_segment": np.full(n, "s1"), "user_country": np.full(n, "DE"),
        "item_id": np.array([f"i{i}" for i in rng.integers(0, ids, n)]),
        "item_category": np.full(n, "c1"), "device": device,
        "hour": rng.integers(0, 24, n), "position": rng.integers(1, 10, n),
        "item_price": rng.normal(20, 5, n).astype(np.float32),
        "user_activity": rng.exponential(2, n).astype(np.float32),
        "recent_items": np.array([[f"i{rng.integers(ids)}" if k <= i % 3 else ""
                                   for k in range(10)] for i in range(n)]),
    }
    click = (device == "ios").astype(np.float32)
    return features, {"click": click[:, None], "conversion": (click * 0)[:, None],
                      "watch_time": (click * 3)[:, None]}
