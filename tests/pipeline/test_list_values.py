"""List-valued features without a pipeline: the config, the checker, each format's reader, records.

A list feature (`multivalent: true`) is a JSON array, a CSV cell split at `list_delimiter`, or a
Parquet list column. Every element is checked; an element equal to the pad value is refused; a
longer list is cut to `max_length` and named in `truncated`; the TFRecords hold the elements as
a variable-length feature, parsed back padded to `(batch, max_length)`.
"""

import copy
import io

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tensorflow as tf

from multitower.config import ConfigError, parse_config
from multitower.records import encode_example, parse_examples
from pipeline.read_csv import csv_rows
from pipeline.read_parquet import parquet_rows, schema_fault
from pipeline.validate import LogLine, LogRow, RowChecker
from tests.bad_rows import GOOD, good_line

ITEMS = {"name": "recent_items", "type": "categorical", "multivalent": True, "max_length": 3,
         "hash_buckets": 100000, "embedding_dim": 16, "embedding_table": "item_id"}
CODES = {"name": "codes", "type": "categorical", "dtype": "int64", "multivalent": True,
         "max_length": 2, "hash_buckets": 50, "embedding_dim": 4, "default": [7]}


def _raw(example_raw: dict, *features: dict, **data) -> dict:
    raw = copy.deepcopy(example_raw)
    names = {f["name"] for f in features}  # the example's own recent_items is replaced
    raw["data"]["features"] = [f for f in raw["data"]["features"] if f["name"] not in names]
    raw["data"]["features"] += [copy.deepcopy(f) for f in features]
    raw["data"].update(data)
    return raw


@pytest.fixture(scope="module")
def data(example_raw):
    return parse_config(_raw(example_raw, ITEMS, CODES), "test").data


def test_config_of_a_list_feature(example_raw, data):
    items, codes = data.multivalent
    assert (items.list_pad, items.list_combiner, codes.list_pad) == ("", "mean", -1)
    assert data.defaults["codes"] == [7]
    assert data.required_columns.count("recent_items") == 1  # no default: required
    cases = [
        ({**ITEMS, "max_length": None}, "needs max_length"),
        ({**ITEMS, "multivalent": False}, "apply to multivalent features only"),
        ({**ITEMS, "combiner": "max"}, "combiner"),
        ({**ITEMS, "pad": 3}, "pad 3 is not a value of the feature's dtype string"),
        ({**CODES, "pad": "x"}, "pad 'x' is not a value of the feature's dtype int64"),
        ({**CODES, "default": 7}, "a multivalent feature's default is a list, got 7"),
        ({**CODES, "default": [1, 2, 3]}, "more than max_length 2"),
        ({**CODES, "default": [-1]}, "equals the pad value -1"),
        ({**CODES, "default": ["a"]}, "element 0: expected an integer"),
    ]
    for feature, fragment in cases:
        with pytest.raises(ConfigError, match=fragment):
            parse_config(_raw(example_raw, feature), "test")
    with pytest.raises(ConfigError, match="list_delimiter must differ"):
        parse_config(_raw(example_raw, ITEMS, format="csv", csv={"list_delimiter": ","}), "t")


def test_the_fingerprint_covers_list_ness_max_length_and_pad(example_raw, data):
    scalar = {**ITEMS, "multivalent": False, "max_length": None}
    prints = {parse_config(_raw(example_raw, feature), "t").data.schema_fingerprint()
              for feature in (ITEMS, {**ITEMS, "max_length": 4}, scalar, {**ITEMS, "pad": "-"})}
    assert len(prints) == 4
    # Model-only settings leave it alone: the records hold the same.
    same = parse_config(_raw(example_raw, {**ITEMS, "combiner": "sum", "embedding_dim": 8,
                                           "embedding_table": None}), "t")
    assert same.data.schema_fingerprint() == parse_config(
        _raw(example_raw, ITEMS), "t").data.schema_fingerprint()


@pytest.mark.parametrize(("value", "reason"), [
    ("i1", "field 'recent_items': expected a list, got str 'i1'"),
    (["i1", 5], "field 'recent_items': element 1: expected a string, got int 5"),
    (["i1", None], "field 'recent_items': element 1: null value"),
    (["i1", ""], "field 'recent_items': element 1: equals the pad value '', which marks padding"),
    ([["i1"]], "field 'recent_items': element 0: expected a string, got list"),
    ({"a": 1}, "field 'recent_items': expected a list, got dict"),
    (["ok", "ok", "ok", 9], "element 3: expected a string"),  # checked past max_length too
])
def test_a_bad_list_rejects_its_row_naming_field_and_element(data, value, reason):
    checked = RowChecker(data).check(LogLine("f", 1, good_line(recent_items=value)))
    assert checked.row is None
    assert reason in checked.reason


def test_lists_are_cut_to_max_length_and_named(data):
    checker = RowChecker(data)
    long = checker.check_decoded({**GOOD, "recent_items": ["a", "b", "c", "d"], "codes": [1]})
    assert long.row["recent_items"] == ["a", "b", "c"]
    assert long.truncated == ("recent_items",)
    both = checker.check_decoded({**GOOD, "recent_items": [], "codes": [1, 2, 3]})
    assert (both.row["recent_items"], both.row["codes"], both.truncated) == ([], [1, 2],
                                                                             ("codes",))
    filled = checker.check_decoded({**GOOD, "recent_items": ["a"]})  # codes missing: default
    assert (filled.row["codes"], filled.defaulted, filled.truncated) == ([7], ("codes",), ())
    assert checker.check_decoded({**GOOD, "recent_items": ["a"], "codes": [1, -1]}).reason == (
        "field 'codes': element 1: equals the pad value -1, which marks padding")


def test_csv_cells_split_at_the_list_delimiter(example_raw):
    data = parse_config(_raw(example_raw, ITEMS, CODES, format="csv",
                             csv={"list_delimiter": ";"}), "t").data
    scalars = [n for n in GOOD if n != "recent_items"]
    names = scalars + ["recent_items", "codes"]
    lines = [",".join(names)]
    for items, codes in [("i1;i2", "3"), ("i1", ""), ("i1;;i2", "4;x"), ("i1;i2;i3;i4", "5;6")]:
        lines.append(",".join([str(GOOD[n]) for n in scalars] + [items, codes]))
    rows = list(csv_rows(io.BytesIO("\n".join(lines).encode()), "f.csv", data))
    checker = RowChecker(data)
    checked = [checker.check(row) for row in rows]
    assert checked[0].row["recent_items"] == ["i1", "i2"] and checked[0].row["codes"] == [3]
    assert checked[1].row["codes"] == [7] and checked[1].defaulted == ("codes",)  # empty cell
    assert checked[2].reason == (  # name order: 'codes' is checked before 'recent_items'
        "field 'codes': element 1: expected an integer, got str 'x'")
    assert checked[3].row["recent_items"] == ["i1", "i2", "i3"]
    assert checked[3].truncated == ("recent_items",)
    del_items = checker.check(rows[2]._replace(row={**rows[2].row, "codes": [4]}))
    assert del_items.reason == ("field 'recent_items': element 1: equals the pad value '', "
                                "which marks padding")


def _parquet(columns: dict, types: dict) -> io.BytesIO:
    table = pa.Table.from_pydict(columns, schema=pa.schema(list(types.items())))
    out = io.BytesIO()
    pq.write_table(table, out)
    out.seek(0)
    return out


def test_parquet_list_columns(example_raw, data):
    rows = 3
    columns = {name: [value] * rows for name, value in GOOD.items()}
    types = {name: pa.string() if isinstance(v, str) else pa.int64() if isinstance(v, int)
             else pa.float64() for name, v in GOOD.items()}
    columns["recent_items"] = [["i1", "i2"], None, ["a", None]]
    columns["codes"] = [[1, 2, 3], [4], []]
    types.update(recent_items=pa.list_(pa.string()), codes=pa.large_list(pa.int32()))
    parsed = list(parquet_rows(_parquet(columns, types), "f.parquet", data))
    checker = RowChecker(data)
    first, second, third = (checker.check(row) for row in parsed)
    assert first.row["recent_items"] == ["i1", "i2"] and first.row["codes"] == [1, 2]
    assert first.truncated == ("codes",)
    assert second.reason == "missing field 'recent_items'"  # a null list: missing, no default
    assert third.reason == "field 'recent_items': element 1: null value"
    for name, arrow_type, fragment in [
        ("recent_items", pa.string(), "needs a list column of strings"),
        ("recent_items", pa.list_(pa.int64()), "needs a list column of strings"),
        ("codes", pa.list_(pa.float64()), "needs a list column of integers"),
        ("item_id", pa.list_(pa.string()), "needs a string column"),
    ]:
        schema = pa.schema(list({**types, name: arrow_type}.items()))
        assert fragment in schema_fault(schema, data)
        assert f"the column {name!r} is" in schema_fault(schema, data)


def test_parquet_list_elements_that_are_not_utf8_reject_their_row(data):
    scalars = {name: value for name, value in GOOD.items() if name != "recent_items"}
    columns = {name: [value] * 2 for name, value in scalars.items()}
    types = {name: pa.string() if isinstance(v, str) else pa.int64() if isinstance(v, int)
             else pa.float64() for name, v in scalars.items()}
    bad = pa.array([[b"ok"], [b"fine", b"\xff\xfe"]], pa.list_(pa.binary()))
    table = pa.Table.from_pydict(columns, schema=pa.schema(list(types.items())))
    table = table.append_column("recent_items", bad.cast(pa.list_(pa.string()), safe=False))
    out = io.BytesIO()
    pq.write_table(table, out)
    out.seek(0)
    first, second = (RowChecker(data).check(r)
                     for r in parquet_rows(out, "f.parquet", data))
    assert first.row["recent_items"] == ["ok"]
    assert second.reason.startswith("field 'recent_items': element 1: invalid UTF-8")


def test_records_hold_the_elements_and_parse_back_padded(data):
    checker = RowChecker(data)
    lists = [["a", "b", "c", "d"], [], ["z"]]
    rows = [checker.check(LogRow("f", n, {**GOOD, "recent_items": items, "codes": [n]}, None,
                                 None)).row for n, items in enumerate(lists, start=1)]
    examples = [encode_example(row, data, ("f", n)) for n, row in enumerate(rows, start=1)]
    stored = tf.train.Example.FromString(examples[0]).features.feature["recent_items"]
    assert stored.bytes_list.value == [b"a", b"b", b"c"]  # cut, never padded in the records
    parsed = parse_examples(tf.constant(examples), data)
    assert parsed["recent_items"].numpy().tolist() == [
        [b"a", b"b", b"c"], [b"", b"", b""], [b"z", b"", b""]]
    assert parsed["codes"].numpy().tolist() == [[1, -1], [2, -1], [3, -1]]
    assert parsed["item_id"].shape == (3,) and "click" in parsed
    assert "click" not in parse_examples(tf.constant(examples), data, labels=False)
