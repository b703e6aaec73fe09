"""Tests of row validation: one hand-written row per reason, and the clean row it returns."""

import json
import math

import pytest

from pipeline.validate import parse_line, reason_category, validate_row

VALID = {
    "user_id": "u100001", "user_segment": "seg03", "user_country": "DE", "item_id": "i123456",
    "item_category": "cat007", "device": "ios", "hour": 21, "position": 3, "item_price": 12,
    "user_activity": 4.5, "click": True, "conversion": 0.0, "watch_time": 31,
    "event_id": "e1", "ts": 1767225600, "something_new": [1, 2],  # extra columns are ignored
}


def _with(**changes) -> dict:
    row = {**VALID, **changes}
    return {k: v for k, v in row.items() if v is not _DROP}


_DROP = object()


def test_valid_row_keeps_configured_columns_only(data_config):
    clean, reason = validate_row(VALID, data_config)
    assert reason is None
    assert set(clean) == {f.name for f in data_config.features} | {"click", "conversion",
                                                                    "watch_time"}
    assert clean["item_price"] == 12.0 and isinstance(clean["item_price"], float)
    assert clean["hour"] == 21 and isinstance(clean["hour"], int)
    assert clean["position"] == 3 and isinstance(clean["position"], int)
    assert (clean["click"], clean["conversion"], clean["watch_time"]) == (1.0, 0.0, 31.0)


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        (_with(user_id=_DROP), "missing field 'user_id'"),
        (_with(watch_time=_DROP), "missing field 'watch_time'"),
        (_with(device=None), "field 'device': null value"),
        (_with(user_id=123456), "field 'user_id': expected a string, got int 123456"),
        (_with(hour="21"), "field 'hour': expected an integer, got str '21'"),
        (_with(hour=True), "field 'hour': expected an integer, got bool True"),
        (_with(position=3.0), "field 'position': expected an integer, got float 3.0"),
        (_with(item_price="abc"), "field 'item_price': expected a number, got str 'abc'"),
        (_with(item_price=False), "field 'item_price': expected a number, got bool False"),
        (_with(item_price=math.nan), "field 'item_price': expected a finite number, got float nan"),
        (_with(user_activity=-math.inf),
         "field 'user_activity': expected a finite number, got float -inf"),
        (_with(item_price=1e39),
         "field 'item_price': number out of float32 range, got float 1e+39"),
        (_with(hour=2**63),
         "field 'hour': integer out of int64 range, got int 9223372036854775808"),
        (_with(position=-(2**63) - 1),
         "field 'position': integer out of int64 range, got int -9223372036854775809"),
        (_with(item_price=10**400), "field 'item_price': number out of float32 range, got int "
                                    "1000000000000000000000000000000000000..."),
        (_with(user_id="a\ud800"),
         "field 'user_id': invalid Unicode (a lone surrogate), got str 'a\\ud800'"),
        (_with(watch_time=-0.5), "field 'watch_time': below the minimum 0, got float -0.5"),
        (_with(click=2), "field 'click': expected a binary label 0 or 1, got int 2"),
        (_with(click=0.5), "field 'click': expected a binary label 0 or 1, got float 0.5"),
        (_with(conversion="1"), "field 'conversion': expected a binary label 0 or 1, got str '1'"),
        (_with(watch_time="long"), "field 'watch_time': expected a number, got str 'long'"),
        (["not", "an", "object"], "not a JSON object: got list"),
    ],
)
def test_rejections_name_the_field(data_config, row, reason):
    assert validate_row(row, data_config) == (None, reason)


def test_long_values_are_shortened(data_config):
    _, reason = validate_row(_with(hour="x" * 500), data_config)
    assert reason.startswith("field 'hour': expected an integer, got str 'xxx")
    assert reason.endswith("...") and len(reason) < 100


def test_parse_line(data_config):
    text = json.dumps(VALID)
    assert parse_line(text, data_config) == parse_line(text.encode(), data_config)
    assert parse_line(text, data_config)[1] is None
    assert parse_line("   ", data_config) == (None, "empty line")
    assert parse_line(b"", data_config) == (None, "empty line")
    assert parse_line("[1, 2]", data_config) == (None, "not a JSON object: got list")
    assert parse_line("42", data_config) == (None, "not a JSON object: got int")
    row, reason = parse_line('{"user_id": "u1",', data_config)
    assert row is None and reason.startswith("invalid JSON: ")
    row, reason = parse_line(b'{"user_id": "\xff"}', data_config)
    assert row is None and reason.startswith("invalid UTF-8")
    # JSON's NaN token parses, and is then refused as a number.
    nan_line = text.replace('"item_price": 12', '"item_price": NaN')
    assert parse_line(nan_line, data_config)[1].startswith("field 'item_price': expected a finite")


@pytest.mark.parametrize(
    ("reason", "category"),
    [
        ("field 'item_price': expected a number, got str 'abc'",
         "field 'item_price': expected a number"),
        ("field 'device': null value", "field 'device': null value"),
        ("missing field 'user_id'", "missing field 'user_id'"),
        ("invalid JSON: Expecting value: line 1 column 1 (char 0)", "invalid JSON"),
        ("invalid UTF-8: invalid start byte (0xff) at byte 14", "invalid UTF-8"),
        ("duplicate key: 'user_id' appears twice in one object", "duplicate key"),
        ("JSON nested too deeply: more than 100 levels", "JSON nested too deeply"),
        ("field 'watch_time': below the minimum 0, got int -1",
         "field 'watch_time': below the minimum 0"),
        ("field 'user_id': invalid Unicode (a lone surrogate), got str '\\ud800'",
         "field 'user_id': invalid Unicode (a lone surrogate)"),
        ("not a JSON object: got list", "not a JSON object"),
        ("empty line", "empty line"),
    ],
)
def test_reason_category(reason, category):
    assert reason_category(reason) == category


def test_optional_label_may_be_missing_or_null_but_not_wrong(example_raw):
    import copy

    import numpy as np
    import tensorflow as tf

    from multitower.config import parse_config
    from multitower.records import encode_example, parse_spec

    raw = copy.deepcopy(example_raw)
    raw["data"]["tasks"][2]["optional"] = True  # watch_time
    data = parse_config(raw).data
    for row in (_with(watch_time=_DROP), _with(watch_time=None)):
        clean, reason = validate_row(row, data)
        assert reason is None and clean["watch_time"] is None
    assert validate_row(_with(watch_time="long"), data)[1].startswith("field 'watch_time'")
    assert validate_row(_with(click=_DROP), data)[1] == "missing field 'click'"  # not optional
    # the missing label is left out of the Example and parses back as NaN
    clean, _ = validate_row(_with(watch_time=None), data)
    parsed = tf.io.parse_example([encode_example(clean, data)], parse_spec(data))
    assert np.isnan(parsed["watch_time"].numpy()[0]) and parsed["click"].numpy()[0] == 1.0
    assert data.schema_fingerprint() != parse_config(example_raw).data.schema_fingerprint()


def test_the_first_fault_in_column_name_order_is_the_reason(data_config):
    # device comes before item_price and user_id in name order, whatever the config order
    row = _with(user_id=1, item_price="x", device=None)
    assert validate_row(row, data_config) == (None, "field 'device': null value")
    assert validate_row(_with(user_id=_DROP, click=2), data_config)[1] == (
        "field 'click': expected a binary label 0 or 1, got int 2")


def test_parse_line_refuses_what_json_loads_would_let_through(data_config):
    text = json.dumps(VALID)
    # duplicate keys: json.loads keeps the last value, silently
    twice = text[:-1] + ', "item_price": 13}'
    assert json.loads(twice)["item_price"] == 13
    assert parse_line(twice, data_config) == (
        None, "duplicate key: 'item_price' appears twice in one object")
    # a UTF-8 BOM, and every UTF-8 fault named with its bytes and position
    assert parse_line(b"\xef\xbb\xbf" + text.encode(), data_config) == (
        None, "invalid JSON: a UTF-8 byte order mark (BOM) starts the line")
    assert parse_line(b'{"a": "\xe9t\xe9"}', data_config) == (
        None, "invalid UTF-8: invalid continuation byte (0xe9) at byte 7")
    # an integer of more digits than Python converts: the column is named, not a traceback
    huge = text.replace('"position": 3', '"position": ' + "9" * 4301)
    assert parse_line(huge, data_config) == (
        None, "field 'position': integer out of int64 range, got int <an integer of 4301 digits>")
    ignored = text[:-1] + ', "unused": -' + "9" * 4301 + "}"
    assert parse_line(ignored, data_config)[1] is None  # an unread column, like any other


def test_an_optional_bounded_label_is_checked_only_when_present(example_raw):
    import copy

    from multitower.config import parse_config

    raw = copy.deepcopy(example_raw)
    raw["data"]["tasks"][2].update(optional=True, min=0, max=100)
    data = parse_config(raw).data
    assert validate_row(_with(watch_time=None), data)[0]["watch_time"] is None
    assert validate_row(_with(watch_time=100), data)[0]["watch_time"] == 100.0
    assert validate_row(_with(watch_time=100.5), data)[1] == (
        "field 'watch_time': above the maximum 100, got float 100.5")
