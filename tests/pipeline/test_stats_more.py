"""The richer day statistics on a hand-made day, without a pipeline: checked against numpy.

Distinct counts (Beam's approximate-unique), top values with their ties, list lengths, label
correlations (optional labels included), missing values and histograms; and, as for the
moments, the same bits whatever the shards' cuts, order and pickling.
"""

import copy
import itertools
import pickle
from collections import Counter

import numpy as np
import pytest

from multitower.config import parse_config
from pipeline.moments import bucket_bounds, histogram_bucket
from pipeline.stats import (
    DISTINCT_ERROR,
    STATISTICS_KEYS,
    TOP_VALUES,
    day_statistics,
    empty_shard_stats,
    row_values,
)
from tests.stats_day import with_list_and_like

ROWS = 4000


@pytest.fixture(scope="module")
def data(example_raw):
    raw = with_list_and_like(example_raw)
    raw["data"]["tasks"][2]["optional"] = True  # watch_time: some rows lack it
    for feature in raw["data"]["features"]:
        if feature["name"] == "device":
            feature["default"] = "unknown"
    return parse_config(raw, "test").data


@pytest.fixture(scope="module")
def day(data):
    """Clean rows with known distributions, each with (defaulted, truncated) as the checker says."""
    rng = np.random.default_rng(7)
    click = rng.random(ROWS) < 0.2
    like = np.where(rng.random(ROWS) < 0.5, click, rng.random(ROWS) < 0.15)
    watch = np.where(click, rng.lognormal(3, 1, ROWS), 0.0)
    lengths = rng.integers(0, 11, size=ROWS)  # after cutting to max_length 10
    devices = ["android"] * 1000 + ["ios"] * 1000 + ["web"] * 700 + ["tv"] * 700 + ["unknown"] * 600
    rows, extras = [], []
    for i in range(ROWS):
        row = {
            "user_id": f"u{i % 3000}",  # 3000 distinct: fewer than the sample, so exact
            "user_segment": f"seg{i % 7}",
            "user_country": ["US", "IN", "BR"][i % 3],
            "item_id": f"i{(i * 7919) % 25013}",
            "item_category": f"cat{(i * i) % 40:03d}",
            "device": devices[i],
            "hour": (i * 5) % 24,
            "position": i % 20 + 1, "item_price": float(rng.lognormal(3, 0.8)),
            "user_activity": float(-2.5 + 5 * rng.random()),  # negative values too
            "click": float(click[i]), "conversion": float(click[i] and i % 9 == 0),
            "watch_time": None if i % 5 == 0 else float(watch[i]),
            "like": float(like[i]),
            "recent_items": [f"i{(11 * i + 3 * k) % 40000}" for k in range(lengths[i])],
        }
        rows.append(row)
        extras.append(((("device",) if devices[i] == "unknown" else ()),
                       (("recent_items",) if i % 13 == 0 and lengths[i] == 10 else ())))
    return rows, extras


def _shards(data, day, cuts):
    rows, extras = day
    shards = []
    for index, (start, stop) in enumerate(itertools.pairwise([0, *cuts, len(rows)])):
        stats = empty_shard_stats(data)
        for row, (defaulted, truncated) in zip(rows[start:stop], extras[start:stop],
                                               strict=True):
            stats.add(row_values(row, data), defaulted, truncated)
        shards.append((index, stats))
    return shards


REASONS = {"missing field 'user_id'": 4, "field 'click': null value": 2,
           "field 'item_price': expected a number": 1}


@pytest.fixture(scope="module")
def stats(data, day):
    return day_statistics(data, ROWS + 7, _shards(data, day, [900, 2500]), REASONS)


def test_top_values_are_exact_with_ties_in_value_order(day, stats):
    rows, _ = day
    for name in ("user_segment", "item_category", "hour", "device", "recent_items"):
        counts = Counter(v for row in rows
                         for v in (row[name] if name == "recent_items" else [row[name]]))
        expected = sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:TOP_VALUES]
        assert stats["categorical"][name]["top"] == [list(item) for item in expected], name
    # Equal counts in value order: android = ios, then tv = web.
    assert stats["categorical"]["device"]["top"] == [
        ["android", 1000], ["ios", 1000], ["tv", 700], ["web", 700], ["unknown", 600]]
    assert all(isinstance(value, int) for value, _ in stats["categorical"]["hour"]["top"])


def test_distinct_counts_are_exact_when_few_and_close_when_many(day, stats):
    rows, _ = day
    for name in ("user_id", "user_segment", "item_category", "hour"):
        assert stats["categorical"][name]["distinct"] == len({r[name] for r in rows}), name
    truth = len({v for r in rows for v in r["recent_items"]})
    assert truth > 10_000  # beyond the sample: an estimate
    estimate = stats["categorical"]["recent_items"]["distinct"]
    assert abs(estimate - truth) < 3 * DISTINCT_ERROR * truth


def test_list_lengths_are_exact(day, stats):
    rows, extras = day
    lengths = np.array([len(r["recent_items"]) for r in rows])
    summary = stats["lists"]["recent_items"]
    assert summary["lengths"] == np.bincount(lengths, minlength=11).tolist()
    assert (summary["rows"], summary["elements"]) == (ROWS, int(lengths.sum()))
    assert (summary["min"], summary["max"]) == (0, 10)
    assert summary["mean"] == lengths.mean()
    truncated = sum(1 for _, cut in extras if cut)
    assert summary["truncated"] == stats["truncated"]["recent_items"] == truncated > 0


def test_label_correlations_equal_numpy(day, stats):
    rows, _ = day
    names = ["click", "conversion", "watch_time", "like"]
    pairs = stats["label_correlation"]
    assert [p["tasks"] for p in pairs] == [list(p) for p in itertools.combinations(names, 2)]
    for pair in pairs:
        a, b = pair["tasks"]
        both = [(r[a], r[b]) for r in rows if r[a] is not None and r[b] is not None]
        x, y = np.array(both).T
        assert pair["rows"] == len(both) == (ROWS if "watch_time" not in (a, b) else ROWS * 4 / 5)
        assert pair["pearson"] == pytest.approx(np.corrcoef(x, y)[0, 1], abs=1e-12), (a, b)
    assert stats["tasks"]["click"] == {"type": "binary", "count": ROWS,
                                       "positive_rate": np.mean([r["click"] for r in rows])}
    watch = np.array([r["watch_time"] for r in rows if r["watch_time"] is not None])
    assert stats["tasks"]["watch_time"]["count"] == len(watch)
    assert stats["tasks"]["watch_time"]["mean"] == pytest.approx(watch.mean(), rel=1e-12)
    assert stats["tasks"]["watch_time"]["std"] == pytest.approx(watch.std(), rel=1e-9)


def test_a_constant_label_has_no_correlation(data, day):
    rows, extras = day
    flat = [{**row, "like": 0.0} for row in rows[:50]]
    out = day_statistics(data, 50, _shards(data, (flat, extras[:50]), []), {})
    by_pair = {tuple(p["tasks"]): p["pearson"] for p in out["label_correlation"]}
    assert by_pair[("click", "like")] is None and by_pair[("click", "watch_time")] is not None


def test_missing_values_count_kept_and_rejected(stats):
    missing = stats["missing"]
    assert missing["device"] == {"kept": 600, "rejected": 0}  # took its default
    assert missing["watch_time"] == {"kept": ROWS // 5, "rejected": 0}  # optional, left out
    assert missing["user_id"] == {"kept": 0, "rejected": 4}
    assert missing["click"] == {"kept": 0, "rejected": 2}  # a null label
    assert missing["item_price"] == {"kept": 0, "rejected": 0}  # wrong type: not missing
    assert stats["defaulted"] == {"device": 600}


def test_histograms_hold_every_value_in_its_bucket(day, stats):
    rows, _ = day
    for name in ("item_price", "user_activity", "position", "watch_time"):
        buckets = stats["histograms"][name]
        values = [r[name] for r in rows if r[name] is not None]
        assert sum(n for _, _, n in buckets) == len(values)
        assert [b[:2] for b in buckets] == sorted(b[:2] for b in buckets)
        for low, high, n in buckets:
            inside = [v for v in values if (v == 0 if low == high == 0 else
                                            low <= v < high if low >= 0 else low < v <= high)]
            assert len(inside) == n, (name, low, high)
    assert set(stats["histograms"]) == {"position", "item_price", "user_activity", "watch_time"}


@pytest.mark.parametrize(("x", "bounds"), [
    (16.0, (16.0, 20.0)), (19.999, (16.0, 20.0)), (20.0, (20.0, 24.0)), (1.0, (1.0, 1.25)),
    (0.3, (0.25, 0.3125)), (-3.0, (-3.5, -3.0)), (0.0, (0.0, 0.0)),
    (5e-324, (5e-324, 5e-324)),  # the smallest subnormal: no finer bucket exists
    (1.7e308, (1.75 * 2.0**1023, 1.7976931348623157e308)),  # the last bucket ends at the max
])
def test_histogram_buckets(x, bounds):
    low, high = bucket_bounds(histogram_bucket(x))
    assert (low, high) == pytest.approx(bounds, rel=1e-15)
    assert low <= x <= high
    assert histogram_bucket(-x) == -histogram_bucket(x)


def test_the_same_rows_give_the_same_bits_however_sharded(data, day, stats):
    reference = repr(stats)
    for cuts in ([], [1], [1234, 1234, 3999], [500, 1000, 1500, 2000, 3000]):
        shards = _shards(data, day, cuts)
        for order in (shards, shards[::-1]):
            assert repr(day_statistics(data, ROWS + 7, order, REASONS)) == reference, cuts
    # Shards travel pickled between workers; the rows in reverse land in other shards.
    rows, extras = day
    shards = [(i, pickle.loads(pickle.dumps(s)))
              for i, s in _shards(data, (rows[::-1], extras[::-1]), [2000])]
    assert repr(day_statistics(data, ROWS + 7, shards, REASONS)) == reference
    assert set(STATISTICS_KEYS) <= set(stats)


def test_a_day_without_rows_or_lists(example_raw):
    raw = copy.deepcopy(example_raw)
    raw["data"]["features"] = [f for f in raw["data"]["features"] if not f.get("multivalent")]
    data = parse_config(raw, "test").data
    out = day_statistics(data, 0, [(0, empty_shard_stats(data))], {})
    assert out["lists"] == {} and "truncated" not in out
    assert out["categorical"]["device"] == {"distinct": 0, "top": []}
    assert all(p["pearson"] is None and p["rows"] == 0 for p in out["label_correlation"])
    assert out["tasks"]["click"] == {"type": "binary", "count": 0, "positive_rate": None}
    assert out["histograms"]["item_price"] == []
    assert all(m == {"kept": 0, "rejected": 0} for m in out["missing"].values())
