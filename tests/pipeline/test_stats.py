"""Tests of the day statistics CombineFn, without a pipeline: values worked out with numpy."""

import numpy as np
import pytest

from pipeline.stats import DayStatsFn


def _row(price: float, position: int, activity: float, click: float) -> dict:
    return {"item_price": price, "position": position, "user_activity": activity,
            "click": click, "conversion": 0.0, "watch_time": 10.0 * click}


def test_merged_partial_accumulators_match_numpy(data_config):
    rng = np.random.default_rng(0)
    # A large offset is where a naive sum of squares would lose the variance.
    prices = 1e6 + rng.normal(0, 3, size=301)
    clicks = (rng.random(301) < 0.3).astype(float)
    rows = [_row(p, i % 20 + 1, i / 7, c) for i, (p, c) in enumerate(zip(prices, clicks,
                                                                        strict=True))]
    fn = DayStatsFn(data_config)
    parts = []
    for chunk in (rows[:1], rows[1:100], rows[100:], []):
        acc = fn.create_accumulator()
        for row in chunk:
            acc = fn.add_input(acc, ("valid", row))
        parts.append(acc)
    extra = fn.create_accumulator()
    for element in [("read", None)] * 305 + [("rejected", "missing field 'user_id'")] * 3 + [
            ("rejected", "field 'click': expected a binary label 0 or 1, got int 2")]:
        extra = fn.add_input(extra, element)
    out = fn.extract_output(fn.merge_accumulators([*parts, extra]))

    assert out["rows"] == {"read": 305, "written": 301, "rejected": 4}
    assert out["rejection_reasons"] == {"field 'click': expected a binary label 0 or 1": 1,
                                        "missing field 'user_id'": 3}
    price = out["numeric"]["item_price"]
    assert price["count"] == 301
    assert price["mean"] == pytest.approx(prices.mean(), rel=1e-12)
    assert price["std"] == pytest.approx(prices.std(), rel=1e-9)
    assert (price["min"], price["max"]) == (prices.min(), prices.max())
    assert out["numeric"]["position"]["max"] == 20.0
    assert out["labels"]["click"]["mean"] == pytest.approx(clicks.mean())
    assert out["labels"]["watch_time"]["mean"] == pytest.approx(10 * clicks.mean())


def test_no_rows_gives_empty_statistics(data_config):
    fn = DayStatsFn(data_config)
    out = fn.extract_output(fn.create_accumulator())
    assert out["rows"] == {"read": 0, "written": 0, "rejected": 0}
    assert out["numeric"]["item_price"] == {"count": 0, "mean": None, "std": None, "min": None,
                                            "max": None}
    assert out["labels"]["click"] == {"mean": None, "count": 0}


def test_missing_optional_labels_are_left_out_of_the_label_mean(example_raw):
    import copy

    import apache_beam as beam
    from apache_beam.testing.util import assert_that, equal_to

    from multitower.config import parse_config
    from pipeline.stats import READ, VALID, ComputeStats

    raw = copy.deepcopy(example_raw)
    raw["data"]["tasks"][2]["optional"] = True
    data = parse_config(raw).data
    base = {f.name: 1 for f in data.features} | {"click": 1.0, "conversion": 0.0}
    rows = [base | {"watch_time": 4.0}, base | {"watch_time": None}, base | {"watch_time": 8.0}]
    with beam.Pipeline() as p:
        stats = {READ: p | "r" >> beam.Create([b"x"] * 3), VALID: p | "v" >> beam.Create(rows),
                 "rejected": p | "j" >> beam.Create([])} | ComputeStats(data)
        summary = stats | beam.Map(lambda s: (s["rows"]["written"], s["labels"]["watch_time"]))
        assert_that(summary, equal_to([(3, {"mean": 6.0, "count": 2})]))
