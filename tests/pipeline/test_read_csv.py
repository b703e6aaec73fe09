"""Tests of the CSV reader without a pipeline: cells by dtype, records, headers, the dialect."""

import copy
import io

import pytest

from multitower.config import parse_config
from multitower.config.data import CsvOptions
from multitower.values import LongInteger
from pipeline.read_csv import MAX_RECORD_LINES, RecordReader, cell_value, csv_fault, csv_rows


def _records(text: bytes, width: int | None = 3, options: CsvOptions | None = None) -> list:
    reader = RecordReader(io.BytesIO(text), options or CsvOptions())
    out = []
    while (record := reader.read(width, "the header has 3")) is not None:
        out.append(record)
    return out


def _config(example_raw: dict, **csv):
    raw = copy.deepcopy(example_raw)
    raw["data"]["format"] = "csv"
    if csv:
        raw["data"]["csv"] = csv
    return parse_config(raw, "test").data


@pytest.mark.parametrize(("cell", "kind", "value"), [
    ("7", "int64", 7), ("-7", "int64", -7), ("+7", "int64", 7), ("007", "int64", 7),
    ("7.5", "int64", "7.5"), ("7.0", "int64", "7.0"), ("1e3", "int64", "1e3"),
    ("true", "int64", "true"), (" 7", "int64", " 7"), ("٧", "int64", "٧"),  # an Arabic-Indic 7
    ("7", "float32", 7), ("7.5", "float32", 7.5), (".5", "float32", 0.5), ("5.", "float32", 5.0),
    ("1e3", "float32", 1000.0), ("-2.5E-3", "float32", -0.0025), ("abc", "float32", "abc"),
    ("1_000", "float32", "1_000"), ("0x10", "float32", "0x10"),
    ("1", "binary", 1), ("1.0", "binary", 1.0), ("true", "binary", True),
    ("false", "binary", False), ("True", "binary", "True"), ("yes", "binary", "yes"),
    ("7", "string", "7"), (" a,b ", "string", " a,b "), ("true", "string", "true"),
])
def test_cells_become_the_json_value_they_stand_for(cell, kind, value):
    got = cell_value(cell, kind)
    assert got == value and type(got) is type(value)


def test_non_finite_and_huge_cells_go_to_the_value_checker():
    import math

    assert math.isnan(cell_value("nan", "float32")) and cell_value("-Infinity", "regression") < 0
    assert isinstance(cell_value("9" * 5000, "int64"), LongInteger)
    assert cell_value("9" * 5000, "float32").digits == 5000


def test_quoted_cells_may_hold_delimiters_quotes_and_line_breaks():
    records = _records(b'a,"b,c","say ""hi"""\r\n1,"two\nlines",3\n4,5,6')
    assert [(r.line, r.cells, r.reason) for r in records] == [
        (1, ["a", "b,c", 'say "hi"'], None), (2, ["1", "two\nlines", "3"], None),
        (4, ["4", "5", "6"], None)]
    assert records[1].raw == b'1,"two\nlines",3'
    assert records[0].raw == b'a,"b,c","say ""hi"""'  # the line ending is not part of it


def test_an_unbalanced_quote_costs_its_own_line_only():
    text = b'1,2,3\n4,"5,6\n7,8,9\n10,11,12\n'
    assert [(r.line, r.cells) for r in _records(text)] == [
        (1, ["1", "2", "3"]), (2, None), (3, ["7", "8", "9"]), (4, ["10", "11", "12"])]
    assert _records(text)[1].reason == (
        "unbalanced quote: a quoted cell opens on this line and the file ends in it")
    assert _records(text)[1].raw == b'4,"5,6'
    # A quote on a later line closes the first: a record of the wrong width. Its first line is
    # refused, and the next line is read again on its own (a quote inside a cell is a character).
    paired = _records(b'1,"2,3\n4",5,6\n7,8,9\n')
    assert [(r.line, r.cells) for r in paired] == [
        (1, None), (2, ['4"', "5", "6"]), (3, ["7", "8", "9"])]
    assert paired[0].reason == ("unbalanced quote: a quoted cell opens on this line and closes "
                                "on line 2, in a record of 4 cells instead of 3")


def test_a_quote_left_open_stops_after_max_record_lines():
    body = b"".join(b"%d,%d,%d\n" % (i, i, i) for i in range(2 * MAX_RECORD_LINES))
    records = _records(b'0,"open,0\n' + body)
    assert records[0].reason == (f"unbalanced quote: a quoted cell opens on this line and does "
                                 f"not close within {MAX_RECORD_LINES} lines")
    assert [r.line for r in records[1:]] == list(range(2, 2 * MAX_RECORD_LINES + 2))
    assert all(r.reason is None for r in records[1:])


@pytest.mark.parametrize(("text", "reason"), [
    (b"\n", "empty line"),
    (b"1,2\n", "wrong number of cells: 2, the header has 3"),
    (b"1,2,3,4\n", "wrong number of cells: 4, the header has 3"),
    (b'1,"2"x,3\n', "invalid CSV: ',' expected after '\"'"),
    (b"1,a\rb,3\n", "invalid CSV: new-line character seen in unquoted field"),
    (b"1,\xff,3\n", "invalid UTF-8: invalid start byte (0xff) at byte 2"),
    (b"1,\xe9t\xe9,3\n", "invalid UTF-8: invalid continuation byte (0xe9) at byte 2"),
    (b'1,"x\n\xff",3\n', "invalid UTF-8: invalid start byte (0xff) at byte 5"),  # in its 2nd line
    (b"1," + b"x" * 200_000 + b",3\n", "invalid CSV: field larger than field limit (131072)"),
])
def test_each_bad_record_has_its_reason_and_the_next_one_is_read(text, reason):
    records = _records(text + b"7,8,9\n")
    assert records[0].reason.startswith(reason), records[0].reason
    assert records[0].cells is None
    assert [(r.cells, r.reason) for r in records[1:]] == [(["7", "8", "9"], None)]


def test_a_byte_order_mark_starts_no_cell_and_other_dialects():
    assert _records(b"\xef\xbb\xbfa,b,c\n")[0].cells == ["a", "b", "c"]
    options = CsvOptions(delimiter=";", quotechar="'")
    assert _records(b"1;'2;x';3\n", options=options)[0].cells == ["1", "2;x", "3"]
    tabs = CsvOptions(delimiter="\t")
    assert _records(b'a\t"b"\tc\n', options=tabs)[0].cells == ["a", "b", "c"]


def test_header_faults(example_raw):
    data = _config(example_raw)
    names = [f.name for f in data.features] + [t.label_column for t in data.tasks]
    header = ",".join(names).encode()
    assert csv_fault(io.BytesIO(header + b"\n"), data) is None
    assert csv_fault(io.BytesIO(b""), data) is None  # no line at all: no rows
    assert csv_fault(io.BytesIO(header.replace(b"user_id,", b"") + b"\n"), data) == (
        "the header lacks the column 'user_id' (no default in the config)")
    lacking = header.replace(b"user_id,", b"").replace(b",click", b"")
    assert csv_fault(io.BytesIO(lacking), data) == (
        "the header lacks the columns 'user_id', 'click' (no default in the config)")
    assert csv_fault(io.BytesIO(header + b",hour\n"), data) == (
        "the header names the column 'hour' 2 times")
    assert csv_fault(io.BytesIO(header + b",extra,extra\n"), data) is None  # not configured
    assert csv_fault(io.BytesIO(b"\xffuser_id," + header + b"\n"), data) == (
        "the header (line 1) cannot be read: invalid UTF-8: invalid start byte (0xff) at byte 0")
    assert csv_fault(io.BytesIO(b"\n" + header), data) == (
        "the header (line 1) cannot be read: empty line")
    # A feature with a default may be absent from every row.
    defaulted = copy.deepcopy(example_raw)
    defaulted["data"]["features"][0]["default"] = "nobody"
    assert csv_fault(io.BytesIO(header.replace(b"user_id,", b"")), _config(defaulted)) is None


def test_rows_hold_converted_non_empty_cells(example_raw):
    data = _config(example_raw)
    text = (b"click,extra,hour,user_id,item_price\n"
            b"1,ignored,7,u1,2.5\n"
            b"0,,,u2,\n"
            b'"1",x,8,"u,3",9\n')
    rows = list(csv_rows(io.BytesIO(text), "/l/a.csv", data))
    assert [(r.source, r.line, r.row, r.reason) for r in rows] == [
        ("/l/a.csv", 2, {"click": 1, "hour": 7, "user_id": "u1", "item_price": 2.5}, None),
        ("/l/a.csv", 3, {"click": 0, "user_id": "u2"}, None),
        ("/l/a.csv", 4, {"click": 1, "hour": 8, "user_id": "u,3", "item_price": 9}, None)]
    assert rows[2].raw == b'"1",x,8,"u,3",9'


def test_configured_columns_mean_no_header(example_raw):
    data = _config(example_raw)
    names = [f.name for f in data.features] + [t.label_column for t in data.tasks]
    configured = _config(example_raw, columns=names, delimiter="|", list_delimiter=";")
    cells = b"u1|s|DE|i1|c|ios|7|2|19.5|0.5|i1;i2|1|0|12"
    assert csv_fault(io.BytesIO(b"no|header|here\n"), configured) is None
    rows = list(csv_rows(io.BytesIO(cells + b"\n" + cells[:-3] + b"\n"), "/l/a.csv", configured))
    assert rows[0].line == 1 and rows[0].row["item_price"] == 19.5 and rows[0].row["hour"] == 7
    assert rows[0].row["recent_items"] == ["i1", "i2"]
    assert rows[1].reason == "wrong number of cells: 13, data.csv.columns names 14"


@pytest.mark.parametrize(("csv", "message"), [
    ({"delimiter": ";;"}, "delimiter"),
    ({"delimiter": "'", "quotechar": "'"}, "delimiter and quotechar must differ"),
    ({"delimiter": "\n"}, "delimiter may not be a line break"),
    ({"columns": ["user_id"]}, "csv.columns lacks"),
    ({"columns": ["a", "a"]}, "columns names ['a'] more than once"),
])
def test_csv_options_are_checked_when_loaded(example_raw, csv, message):
    from multitower.config import ConfigError

    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        _config(example_raw, **csv)


def test_csv_options_need_the_csv_format(example_raw):
    from multitower.config import ConfigError

    raw = copy.deepcopy(example_raw)
    raw["data"]["csv"] = {"delimiter": ";"}
    with pytest.raises(ConfigError, match="csv applies to format csv only, and the format is "
                                          "jsonl"):
        parse_config(raw, "test")
