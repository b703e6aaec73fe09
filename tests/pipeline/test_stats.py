"""Tests of the day statistics, without a pipeline: values worked out with numpy."""

import copy
import itertools
import math
from fractions import Fraction

import numpy as np
import pytest

from multitower.config import parse_config
from pipeline.stats import Moments, ShardStats, day_statistics, empty_shard_stats, row_values

CATEGORIES = {"user_id": "u1", "user_segment": "seg01", "user_country": "US", "item_id": "i1",
              "item_category": "cat001", "device": "ios", "hour": 7, "recent_items": ["i1"]}


def _row(price: float, position: int, activity: float, click: float) -> dict:
    return {"item_price": price, "position": position, "user_activity": activity,
            "click": click, "conversion": 0.0, "watch_time": 10.0 * click, **CATEGORIES}


def _shards(rows: list[dict], data, cuts: list[int]) -> list[tuple[int, ShardStats]]:
    shards = []
    for index, (start, stop) in enumerate(itertools.pairwise([0, *cuts, len(rows)])):
        stats = empty_shard_stats(data)
        for row in rows[start:stop]:
            stats.add(row_values(row, data))
        shards.append((index, stats))
    return shards


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    rng = np.random.default_rng(0)
    # A large offset is where a naive sum of squares would lose the variance.
    prices = 1e6 + rng.normal(0, 3, size=301)
    clicks = (rng.random(301) < 0.3).astype(float)
    return [_row(p, i % 20 + 1, i / 7, c) for i, (p, c) in enumerate(zip(prices, clicks,
                                                                        strict=True))]


def test_merged_shards_match_numpy(data_config, rows):
    reasons = {"missing field 'user_id'": 3, "field 'click': expected a binary label 0 or 1": 1}
    out = day_statistics(data_config, 305, _shards(rows, data_config, [1, 100, 100]), reasons)

    prices = np.array([r["item_price"] for r in rows])
    clicks = np.array([r["click"] for r in rows])
    assert out["rows"] == {"read": 305, "written": 301, "rejected": 4}
    assert out["rejection_reasons"] == dict(sorted(reasons.items()))
    assert list(out["rejection_reasons"]) == sorted(reasons)
    price = out["numeric"]["item_price"]
    assert price["count"] == 301
    assert price["mean"] == pytest.approx(prices.mean(), rel=1e-12)
    assert price["std"] == pytest.approx(prices.std(), rel=1e-9)
    assert (price["min"], price["max"]) == (prices.min(), prices.max())
    assert out["numeric"]["position"]["max"] == 20.0
    assert out["labels"]["click"] == {"count": 301, "mean": pytest.approx(clicks.mean()),
                                      "min": 0.0, "max": 1.0}
    assert out["labels"]["watch_time"]["mean"] == pytest.approx(10 * clicks.mean())
    assert out["labels"]["watch_time"]["max"] == 10.0


def test_the_order_shards_arrive_in_does_not_change_a_bit(data_config, rows):
    shards = _shards(rows, data_config, [37, 150, 222])
    results = {repr(day_statistics(data_config, 301, order, {}))
               for order in itertools.permutations(shards)}
    assert len(results) == 1
    # The sums are exact: other cuts, the rows in reverse (the same day in another format lands
    # in other shards) and a float sum's worst case all give the same bits, the exact mean.
    other = _shards(rows[::-1], data_config, [5, 200])
    assert repr(day_statistics(data_config, 301, other, {})) in results
    prices = [Fraction(r["item_price"]) for r in rows]
    exact = sum(prices) / len(prices)
    mean = day_statistics(data_config, 301, shards, {})["numeric"]["item_price"]["mean"]
    assert mean == float(exact)
    variance = sum((p - exact) ** 2 for p in prices) / len(prices)
    assert day_statistics(data_config, 301, shards, {})["numeric"]["item_price"]["std"] == (
        math.sqrt(float(variance)))
    big = Moments()
    for x in (1e16, 1.0, -1e16):  # a float sum loses the 1
        big.add(x)
    assert big.summary()["mean"] == 1 / 3


def test_no_rows_gives_empty_statistics(data_config):
    out = day_statistics(data_config, 0, [(0, empty_shard_stats(data_config))], {})
    assert out["rows"] == {"read": 0, "written": 0, "rejected": 0}
    assert out["numeric"]["item_price"] == {"count": 0, "mean": None, "std": None, "min": None,
                                            "max": None}
    assert out["labels"]["click"] == {"count": 0, "mean": None, "min": None, "max": None}
    assert out["rejection_reasons"] == {}


def test_missing_optional_labels_are_left_out_of_the_label_statistics(example_raw):
    raw = copy.deepcopy(example_raw)
    raw["data"]["tasks"][2]["optional"] = True  # watch_time
    data = parse_config(raw).data
    base = {f.name: 1 for f in data.numeric} | CATEGORIES | {"click": 1.0, "conversion": 0.0}
    values = [row_values(base | {"watch_time": w}, data) for w in (4.0, None, 8.0)]
    assert values[1][0][-1] is None
    stats = empty_shard_stats(data)
    for v in values:
        stats.add(v)
    out = day_statistics(data, 3, [(0, stats)], {})
    assert out["rows"]["written"] == 3
    assert out["labels"]["watch_time"] == {"count": 2, "mean": 6.0, "min": 4.0, "max": 8.0}
    assert out["labels"]["click"]["count"] == 3
