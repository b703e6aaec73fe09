"""Tests of the Parquet reader without a pipeline: the schema check, faults, rows in batches."""

import copy
import io
import json
import math

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from multitower.config import parse_config
from pipeline.read_logs import bad_files_message, format_fault
from pipeline.read_parquet import parquet_fault, parquet_rows, schema_fault
from pipeline.validate import RowChecker, raw_text
from tests.bad_rows import GOOD

TYPES = {"user_id": pa.string(), "user_segment": pa.string(), "user_country": pa.string(),
         "item_id": pa.string(), "item_category": pa.string(), "device": pa.string(),
         "hour": pa.int64(), "position": pa.int64(), "item_price": pa.float64(),
         "user_activity": pa.float64(), "click": pa.int64(), "conversion": pa.int64(),
         "watch_time": pa.float64(), "recent_items": pa.list_(pa.string())}


@pytest.fixture(scope="module")
def data(example_raw):
    raw = copy.deepcopy(example_raw)
    raw["data"]["format"] = "parquet"
    return parse_config(raw, "test").data


def parquet_bytes(rows: list[dict], types: dict | None = None, **options) -> bytes:
    """Rows as one Parquet file, of the example config's column types unless `types` says."""
    types = {**TYPES, **(types or {})}
    names = list(rows[0]) if rows else list(types)
    schema = pa.schema([(n, types[n]) for n in names])
    table = pa.Table.from_pydict({n: [r.get(n) for r in rows] for n in names}, schema=schema)
    out = io.BytesIO()
    pq.write_table(table, out, **options)
    return out.getvalue()


def _schema(**changes) -> pa.Schema:
    types = {**TYPES, **changes}
    return pa.schema([(n, t) for n, t in types.items() if t is not None])


@pytest.mark.parametrize(("changes", "fault"), [
    ({"hour": pa.string()},
     "the column 'hour' is string, but feature 'hour' (int64) needs an integer column"),
    ({"position": pa.float64()},
     "the column 'position' is double, but feature 'position' (int64) needs an integer column"),
    ({"user_id": pa.int64()},
     "the column 'user_id' is int64, but feature 'user_id' (string) needs a string column"),
    ({"user_id": pa.binary()},
     "the column 'user_id' is binary, but feature 'user_id' (string) needs a string column"),
    ({"item_price": pa.string()}, "feature 'item_price' (float32) needs an integer or float "
                                  "column"),
    ({"item_price": pa.float16()}, "the column 'item_price' is halffloat"),
    ({"click": pa.string()}, "the label of task 'click' (binary) needs a boolean, integer or "
                             "float column"),
    ({"watch_time": pa.bool_()}, "the label of task 'watch_time' (regression) needs an integer "
                                 "or float column"),
    ({"device": pa.list_(pa.string())},
     "the column 'device' is list<item: string>, but feature 'device' (string) needs a string "
     "column"),
    ({"hour": pa.timestamp("s")}, "the column 'hour' is timestamp[s]"),
    ({"user_id": None}, "the column 'user_id' is missing (feature 'user_id' (string) has no "
                        "default)"),
    ({"click": None}, "the column 'click' is missing (the label of task 'click' (binary) has no "
                      "default)"),
])
def test_a_column_of_the_wrong_type_or_missing_is_named(data, changes, fault):
    assert fault in schema_fault(_schema(**changes), data)


@pytest.mark.parametrize("changes", [
    {}, {"hour": pa.int8()}, {"hour": pa.uint64()}, {"item_price": pa.float32()},
    {"item_price": pa.int32()}, {"click": pa.bool_()}, {"click": pa.float32()},
    {"user_id": pa.large_string()}, {"device": pa.dictionary(pa.int32(), pa.string())},
    {"device": pa.null()}, {"extra": pa.list_(pa.int64())},
])
def test_types_that_hold_the_values(data, changes):
    assert schema_fault(_schema(**changes), data) is None


def test_a_missing_column_with_a_default_or_an_optional_label_is_no_fault(example_raw):
    raw = copy.deepcopy(example_raw)
    raw["data"]["format"] = "parquet"
    raw["data"]["features"][5]["default"] = "unknown"  # device
    raw["data"]["tasks"][2]["optional"] = True  # watch_time
    assert schema_fault(_schema(device=None, watch_time=None), parse_config(raw).data) is None


def test_a_column_twice(data):
    schema = _schema().append(pa.field("hour", pa.int64()))
    assert schema_fault(schema, data) == "the column 'hour' appears 2 times"


def test_rows_come_in_batches_numbered_from_one(data):
    rows = [{**GOOD, "hour": i % 24, "user_id": f"u{i}"} for i in range(25)]
    content = parquet_bytes(rows, row_group_size=10)
    assert parquet_fault(io.BytesIO(content), data) is None
    read = list(parquet_rows(io.BytesIO(content), "/l/a.parquet", data, batch_rows=4))
    assert [r.line for r in read] == list(range(1, 26))
    assert [r.row["user_id"] for r in read] == [f"u{i}" for i in range(25)]
    assert read[7].row == {**GOOD, "hour": 7, "user_id": "u7"}
    assert {r.source for r in read} == {"/l/a.parquet"} and {r.raw for r in read} == {None}


def test_nulls_are_missing_and_rows_render_as_json(data):
    content = parquet_bytes([GOOD, {**GOOD, "device": None, "item_price": math.nan}])
    first, second = parquet_rows(io.BytesIO(content), "/l/a.parquet", data)
    checker = RowChecker(data)
    assert checker.check(first)[1] is None
    assert second.row["device"] is None
    assert checker.check(second)[1] == "missing field 'device'"  # as for a key JSON lacks
    assert json.loads(raw_text(second).replace("NaN", "null")) == {
        **GOOD, "device": None, "item_price": None}
    not_a_number = next(parquet_rows(io.BytesIO(parquet_bytes([{**GOOD, "item_price": math.nan}])),
                                     "x", data))
    assert checker.check(not_a_number)[1] == (
        "field 'item_price': expected a finite number, got float nan")


def _invalid_utf8_strings(values: list[bytes]) -> pa.Array:
    """A string array holding bytes that are not UTF-8 (pyarrow refuses to build one)."""
    good = pa.array(values, pa.binary())
    return pa.Array.from_buffers(pa.string(), len(good), good.buffers())


def test_strings_that_are_not_utf8_reject_their_row_only(data):
    table = pa.table({**{n: pa.array([GOOD[n]] * 3, TYPES[n]) for n in TYPES},
                      "user_id": _invalid_utf8_strings([b"u1", b"u\xff2", b"u3"]),
                      "device": _invalid_utf8_strings([b"ios", b"\xe9", b"t\xe9v"])})
    out = io.BytesIO()
    pq.write_table(table, out)
    assert parquet_fault(io.BytesIO(out.getvalue()), data) is None  # a row fault, not a file's
    rows = list(parquet_rows(io.BytesIO(out.getvalue()), "/l/a.parquet", data))
    assert [r.reason for r in rows] == [
        None, "field 'device': invalid UTF-8, got bytes b'\\xe9'",  # first in name order
        "field 'device': invalid UTF-8, got bytes b't\\xe9v'"]
    assert rows[1].row["user_id"] == "u\ufffd2"  # shown with a replacement character
    assert RowChecker(data).check(rows[1])[1] == rows[1].reason


def _damaged(content: bytes) -> bytes:
    body = bytearray(content)
    for i in range(4, 40):  # the first page header, right after the leading magic bytes
        body[i] ^= 0xFF
    return bytes(body)


def test_file_faults(data):
    good = parquet_bytes([GOOD] * 3)
    assert parquet_fault(io.BytesIO(b""), data) is None  # an empty file holds no rows
    assert list(parquet_rows(io.BytesIO(b""), "x", data)) == []
    assert parquet_fault(io.BytesIO(parquet_bytes([])), data) is None  # a schema, no rows
    assert parquet_fault(io.BytesIO(b"user_id,hour\nu1,7\n"), data).startswith(
        "not a readable Parquet file: Parquet magic bytes not found in footer")
    assert parquet_fault(io.BytesIO(good[: len(good) // 2]), data).startswith(
        "not a readable Parquet file: ")
    assert parquet_fault(io.BytesIO(_damaged(good)), data).startswith("corrupt Parquet data: ")
    assert "\n" not in parquet_fault(io.BytesIO(_damaged(good)), data)


def test_the_day_names_the_file_and_the_column(tmp_path, data):
    path = tmp_path / "part-1.parquet"
    path.write_bytes(parquet_bytes([{**GOOD, "hour": "7"}], {"hour": pa.string()}))
    fault = format_fault(str(path), data)
    assert fault == ("the column 'hour' is string, but feature 'hour' (int64) needs an integer "
                     "column")
    message = bad_files_message("2026-01-01", [(str(path), fault)])
    assert message.startswith(f"preprocess 2026-01-01: an input file cannot be read whole: "
                              f"{path}: the column 'hour' is string")
