"""Tests of `default:` for missing values: checked at load, filled, counted, fingerprinted."""

import copy
import hashlib
import json
import re

import pytest

from multitower.config import ConfigError, parse_config
from multitower.origin import ORIGIN_FIELDS
from multitower.rows import fill_defaults
from pipeline.stats import day_statistics, empty_shard_stats, row_values
from pipeline.validate import LogLine, LogRow, RowChecker, parse_line, validate_row
from tests.bad_rows import GOOD, good_line, without

# index in the example config's features -> the default given to it
DEFAULTS = {5: "unknown", 6: 0, 9: 1}  # device (string), hour (int64), user_activity (float32)


def _data(example_raw, defaults=DEFAULTS):
    """The example config with these defaults (by feature index) and no other."""
    raw = copy.deepcopy(example_raw)
    for feature in raw["data"]["features"]:  # recent_items declares []
        feature.pop("default", None)
    for index, value in defaults.items():
        raw["data"]["features"][index]["default"] = value
    return parse_config(raw, "test").data


@pytest.mark.parametrize(("index", "value", "message"), [
    (6, True, "default: expected an integer, got bool True (the feature's dtype is int64)"),
    (6, 7.5, "default: expected an integer, got float 7.5"),
    (6, 2**63, "default: integer out of int64 range"),
    (6, "7", "default: expected an integer, got str '7'"),
    (8, "cheap", "default: expected a number, got str 'cheap' (the feature's dtype is float32)"),
    (8, float("nan"), "default: expected a finite number"),
    (8, 1e39, "default: number out of float32 range"),
    (0, 7, "default: expected a string, got int 7 (the feature's dtype is string)"),
    (0, "\ud800", "default: invalid Unicode (a lone surrogate)"),
])
def test_a_default_must_be_a_value_of_the_dtype(example_raw, index, value, message):
    with pytest.raises(ConfigError, match=rf"^test: data\.features\[{index}\]: .*"
                                          + re.escape(message)):
        _data(example_raw, {index: value})


def test_defaults_are_held_as_records_hold_them(example_raw):
    data = _data(example_raw)
    assert data.defaults == {"device": "unknown", "hour": 0, "user_activity": 1.0}
    assert isinstance(data.defaults["user_activity"], float)
    assert data.required_columns == [
        "user_id", "user_segment", "user_country", "item_id", "item_category", "position",
        "item_price", "recent_items", "click", "conversion", "watch_time"]


def test_the_fingerprint_covers_defaults_and_only_when_declared(example_raw):
    plain = _data(example_raw, {}).schema_fingerprint()
    # A config without defaults keeps the fingerprint it had before defaults existed, so its
    # preprocessed days and models stay valid (value pinned from before defaults and lists).
    data = _data(example_raw, {})
    before = {"features": [[f.name, f.type, f.dtype] for f in data.features if not
                           f.multivalent],
              "tasks": [[t.name, t.type, t.label_column, t.optional] for t in data.tasks],
              "origin": list(ORIGIN_FIELDS)}
    raw = copy.deepcopy(example_raw)
    raw["data"]["features"] = [f for f in raw["data"]["features"] if not f.get("multivalent")]
    assert parse_config(raw).data.schema_fingerprint() == hashlib.sha256(
        json.dumps(before, sort_keys=True).encode()).hexdigest()[:16]
    assert plain != parse_config(copy.deepcopy(example_raw)).data.schema_fingerprint()
    with_defaults = _data(example_raw).schema_fingerprint()
    assert with_defaults != plain
    assert _data(example_raw, {**DEFAULTS, 5: "other"}).schema_fingerprint() != with_defaults
    # The same value written otherwise (1 or 1.0 for a float) holds the same records.
    assert _data(example_raw, {**DEFAULTS, 9: 1.0}).schema_fingerprint() == with_defaults


def test_missing_and_null_values_take_their_default_and_are_named(example_raw):
    data = _data(example_raw)
    checker = RowChecker(data)
    lacking = {k: v for k, v in GOOD.items() if k not in ("device", "hour")}
    clean, reason, defaulted, _ = checker.check_decoded({**lacking, "user_activity": None})
    assert reason is None
    assert (clean["device"], clean["hour"], clean["user_activity"]) == ("unknown", 0, 1.0)
    assert defaulted == ("device", "hour", "user_activity")  # config order
    assert checker.check_decoded(GOOD) == (validate_row(GOOD, data)[0], None, (), ())
    # Without a default a missing value is still a rejection, and a bad row counts no default.
    assert checker.check_decoded({**lacking, "user_id": None}) == (
        None, "field 'user_id': null value", (), ())
    assert checker.check(LogLine("f", 1, without("user_id"))) == (
        None, "missing field 'user_id'", (), ())
    # A default fills only what is missing: a wrong value is refused, not replaced.
    assert parse_line(good_line(device=7), data)[1] == (
        "field 'device': expected a string, got int 7")
    assert parse_line(good_line(device=""), data)[0]["device"] == ""  # "" is a value in JSON


def test_records_of_every_kind_fill_alike(example_raw):
    data = _data(example_raw)
    checker = RowChecker(data)
    lacking = {k: v for k, v in GOOD.items() if k != "device"}
    from_json = checker.check(LogLine("f", 1, good_line(device=None)))
    from_csv = checker.check(LogRow("f", 2, lacking, None, b"..."))
    from_parquet = checker.check(LogRow("f", 1, {**GOOD, "device": None}, None, None))
    assert from_json == from_csv == from_parquet
    assert from_json[2] == ("device",)


def test_fill_defaults_leaves_complete_and_non_object_rows_alone():
    row = {"a": 1}
    assert fill_defaults(row, {"a": 2})[0] is row
    assert fill_defaults([1], {"a": 2}) == ([1], ())
    assert fill_defaults({"a": None}, {"a": 2, "b": 3}) == ({"a": 2, "b": 3}, ("a", "b"))


def test_the_manifest_counts_defaulted_values_per_feature(example_raw):
    data = _data(example_raw)
    checker = RowChecker(data)
    rows = [{**GOOD, "device": None}, {k: v for k, v in GOOD.items() if k != "hour"},
            {**GOOD, "device": None, "hour": None}, GOOD]
    stats = empty_shard_stats(data)
    for row in rows:
        clean, _, defaulted, _ = checker.check_decoded(row)
        stats.add(row_values(clean, data), defaulted)
    out = day_statistics(data, 4, [(0, stats)], {})
    assert out["defaulted"] == {"device": 2, "hour": 2, "user_activity": 0}
    assert day_statistics(_data(example_raw, {}), 0, [], {})["defaulted"] == {}
