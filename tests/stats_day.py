"""The generator's list feature and its non-nested task, added to a config for statistics tests.

The example config (`examples/impressions.yaml`) names `recent_items` but not `like`; these tests
add what a config lacks to a copy: `recent_items` shares `item_id`'s table, `like` is the task
`--task-correlation` ties to click without nesting.
"""

from __future__ import annotations

import copy

RECENT_ITEMS = {"name": "recent_items", "type": "categorical", "multivalent": True,
                "max_length": 10, "hash_buckets": 100000, "embedding_dim": 16,
                "embedding_table": "item_id"}
LIKE = {"name": "like", "type": "binary"}


def with_list_and_like(raw: dict) -> dict:
    """A copy of a raw config (as YAML gives it) whose data also holds recent_items and like."""
    raw = copy.deepcopy(raw)
    features = [f for f in raw["data"]["features"] if f["name"] != RECENT_ITEMS["name"]]
    raw["data"]["features"] = features + [dict(RECENT_ITEMS)]
    if LIKE["name"] not in {t["name"] for t in raw["data"]["tasks"]}:
        raw["data"]["tasks"].append(dict(LIKE))
    return raw
