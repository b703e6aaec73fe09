"""No CSV record or Parquet row can break a day: malformed ones are rejected with their reason.

Per format, a corpus of malformed rows (each alone in an otherwise good row, between good
rows) and of bad files. The fast tests check each row through the reader and the row checker;
one Beam run per format reads the corpus beside empty and faulty files with `--skip-bad-files`:
read = written + rejected exactly, each rejected row with its source, position, reason and raw
content, and each bad file skipped with its fault. One more run shows that a file of the wrong
Parquet schema fails the day by default, naming the file and the column.
"""

import copy
import gzip
import io
import json
import math
from collections import Counter
from typing import NamedTuple

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from multitower.config import parse_config
from pipeline.preprocess import run_preprocess
from pipeline.read_csv import csv_rows
from pipeline.read_logs import BadInputFileError
from pipeline.read_parquet import parquet_rows
from pipeline.validate import RowChecker, raw_text, reason_category
from tests.bad_rows import GOOD

DATE = "2026-05-01"
NAMES = list(GOOD)
HEADER = ",".join(NAMES).encode()
DEFAULT_DEVICE = "unknown"


class Case(NamedTuple):
    name: str
    content: bytes | dict  # a CSV record's bytes, or a Parquet row's changes to GOOD
    reason: str | None  # a fragment of the expected reason; None: a good row


def _cell(value: object) -> str:
    return "|".join(value) if isinstance(value, list) else str(value)  # a list: `|`-joined


def csv_record(**cells: str) -> bytes:
    """GOOD as a CSV record, with some cells replaced by the text given."""
    return ",".join(cells.get(n, _cell(GOOD[n])) for n in NAMES).encode()


def _with_bytes(name: str, raw: bytes) -> bytes:
    return csv_record(**{name: "__RAW__"}).replace(b"__RAW__", raw)


CSV_CASES = [
    # First, so that the quote it leaves open meets the quotes of the records after it.
    Case("unbalanced quote", csv_record(user_id='"u1'),
         "unbalanced quote: a quoted cell opens on this line"),
    Case("int64 decimal", csv_record(hour="7.5"),
         "field 'hour': expected an integer, got str '7.5'"),
    Case("int64 word", csv_record(hour="seven"), "field 'hour': expected an integer, got str 'sev"),
    Case("int64 bool", csv_record(position="true"), "field 'position': expected an integer, got "
                                                    "str 'true'"),
    Case("int64 beyond range", csv_record(hour=str(2**63)),
         "field 'hour': integer out of int64 range, got int 9223372036854775808"),
    Case("int64 of 5001 digits", csv_record(hour="9" * 5001),
         "field 'hour': integer out of int64 range, got int <an integer of 5001 digits>"),
    Case("float word", csv_record(item_price="abc"), "field 'item_price': expected a number, got "
                                                     "str 'abc'"),
    Case("float nan", csv_record(item_price="nan"),
         "field 'item_price': expected a finite number, got float nan"),
    Case("float beyond float32", csv_record(user_activity="1e39"),
         "field 'user_activity': number out of float32 range, got float 1e+39"),
    Case("float with a space", csv_record(item_price=" 7"),
         "field 'item_price': expected a number, got str ' 7'"),
    Case("decimal comma", csv_record(item_price='"7,5"'),
         "field 'item_price': expected a number, got str '7,5'"),
    Case("binary 2", csv_record(click="2"), "field 'click': expected a binary label 0 or 1, got "
                                            "int 2"),
    Case("binary word", csv_record(click="yes"), "field 'click': expected a binary label 0 or 1, "
                                                 "got str 'yes'"),
    Case("regression below min", csv_record(watch_time="-1"),
         "field 'watch_time': below the minimum 0, got int -1"),
    Case("missing feature", csv_record(user_id=""), "missing field 'user_id'"),
    Case("missing label", csv_record(conversion=""), "missing field 'conversion'"),
    Case("too many cells", csv_record() + b",extra",
         "wrong number of cells: 15, the header has 14"),
    Case("too few cells", csv_record().rsplit(b",", 1)[0],
         "wrong number of cells: 13, the header has 14"),
    Case("text after a closing quote", csv_record(user_id='"u1"x'),
         "invalid CSV: ',' expected after '\"'"),
    Case("CR inside a cell", _with_bytes("device", b"a\rb"),
         "invalid CSV: new-line character seen in unquoted field"),
    Case("huge cell", csv_record(user_id="x" * 200_000),
         "invalid CSV: field larger than field limit (131072)"),
    Case("invalid start byte", _with_bytes("device", b"\xff"), "invalid UTF-8: invalid start byte"),
    Case("Latin-1 text", _with_bytes("user_country", "é".encode("latin-1")),
         "invalid UTF-8: invalid continuation byte"),
    Case("encoded surrogate", _with_bytes("device", b"\xed\xa0\x80"),
         "invalid UTF-8: invalid continuation byte"),
    Case("empty line", b"", "empty line"),
    Case("list with an empty element", csv_record(recent_items="i3||i4"),
         "field 'recent_items': element 1: equals the pad value ''"),
    Case("list with a trailing delimiter", csv_record(recent_items="i3|"),
         "field 'recent_items': element 1: equals the pad value ''"),
]
CSV_GOOD = [
    Case("plain", csv_record(), None),
    Case("quoted cells", csv_record(user_id='"u1"', hour='"7"'), None),
    Case("delimiter in a quoted cell", csv_record(item_id='"i,9"'), None),
    Case("quotes in a quoted cell", csv_record(item_id='"say ""hi"""'), None),
    Case("line break in a quoted cell", csv_record(device='"two\nlines"'), None),
    Case("CRLF line ending", csv_record() + b"\r", None),
    Case("missing value with a default", csv_record(device=""), None),
    Case("binary true and 1.0", csv_record(click="true", conversion="1.0"), None),
    Case("signs and exponents", csv_record(hour="+7", item_price="1.95e1", position="-3"), None),
    Case("an integer for a float", csv_record(item_price="19"), None),
    Case("int64 max", csv_record(hour=str(2**63 - 1)), None),
    Case("UTF-8 text", csv_record(user_country="Côte d'Ivoire 🌍"), None),
    Case("list of one", csv_record(recent_items="i3"), None),
    Case("list longer than max_length", csv_record(recent_items="|".join("abcdefghijkl")), None),
    Case("quoted list holding the delimiter", csv_record(recent_items='"i,3|i4"'), None),
    Case("empty list cell: its default []", csv_record(recent_items=""), None),
]


def _interleave(bad: list[Case], good: list[Case]) -> list[Case]:
    """Bad and good cases alternating, the rest of the good ones last (after the last bad)."""
    spare = iter(good)
    out: list[Case] = []
    for case in bad:
        out.append(case)
        nxt = next(spare, None)
        if nxt is not None:
            out.append(nxt)
    return out + list(spare)


def csv_corpus() -> tuple[bytes, list[tuple[int, Case]]]:
    """The corpus file (header first) and each case with the line its record starts on."""
    cases = _interleave(CSV_CASES, CSV_GOOD)
    text, placed, line = HEADER + b"\n", [], 2
    for case in cases:
        placed.append((line, case))
        text += case.content + b"\n"
        line += case.content.count(b"\n") + 1
    return text, placed


def _defaulted(case: Case) -> tuple[str, ...]:
    """The features a good case's row fills with their default: device, or recent_items ([])."""
    if "default []" in case.name:
        return ("recent_items",)
    return ("device",) if "default" in case.name else ()


def _data(example_raw: dict, log_format: str, root=None):
    raw = copy.deepcopy(example_raw)
    raw["data"]["format"] = log_format
    raw["data"]["features"][5]["default"] = DEFAULT_DEVICE  # device
    if root is not None:
        raw["data"].update(logs=f"{root}/logs/dt={{date}}", tfrecords=f"{root}/tfrecords",
                           rejected=f"{root}/rejected", num_shards=2)
    return parse_config(raw, "test")


def test_the_corpora_cover_at_least_15_kinds_each():
    assert len(CSV_CASES) >= 15 and len(PARQUET_CASES) >= 15
    assert len(CSV_FAULTY) + len(CSV_CASES) >= 25 and len(PARQUET_FAULTY) >= 6


def test_each_csv_record_is_rejected_with_its_reason_or_accepted(example_raw):
    data = _data(example_raw, "csv").data
    text, placed = csv_corpus()
    checker = RowChecker(data)
    rows = list(csv_rows(io.BytesIO(text), "/l/corpus.csv", data))
    assert [r.line for r in rows] == [line for line, _ in placed]
    for row, (_, case) in zip(rows, placed, strict=True):
        clean, reason, defaulted, _ = checker.check(row)
        if case.reason is None:
            assert reason is None, (case.name, reason)
            assert defaulted == _defaulted(case), case.name
        else:
            assert case.reason in reason, (case.name, reason)
            assert raw_text(row) == case.content.decode("utf-8", "replace"), case.name


# --- Parquet ---

def _strings(values: list) -> pa.Array:
    """A string column that may hold bytes that are not UTF-8 (pyarrow refuses to build one)."""
    binary = pa.array([v.encode() if isinstance(v, str) else v for v in values], pa.binary())
    return pa.Array.from_buffers(pa.string(), len(binary), binary.buffers(), binary.null_count)


# Column types of the corpus file: wide enough to hold every malformed value.
PARQUET_TYPES = {"hour": pa.uint64(), "position": pa.int64(), "item_price": pa.float64(),
                 "user_activity": pa.float64(), "click": pa.int64(), "conversion": pa.float64(),
                 "watch_time": pa.float64(), "recent_items": pa.list_(pa.string())}
PARQUET_CASES = [
    Case("null feature", {"user_id": None}, "missing field 'user_id'"),
    Case("null label", {"click": None}, "missing field 'click'"),
    Case("uint64 beyond int64", {"hour": 2**63},
         "field 'hour': integer out of int64 range, got int 9223372036854775808"),
    Case("NaN", {"item_price": math.nan}, "field 'item_price': expected a finite number, got "
                                          "float nan"),
    Case("infinity", {"item_price": math.inf}, "field 'item_price': expected a finite number, "
                                               "got float inf"),
    Case("-infinity", {"user_activity": -math.inf},
         "field 'user_activity': expected a finite number, got float -inf"),
    Case("beyond float32", {"user_activity": 1e39},
         "field 'user_activity': number out of float32 range, got float 1e+39"),
    Case("binary 2", {"click": 2}, "field 'click': expected a binary label 0 or 1, got int 2"),
    Case("binary -1", {"click": -1}, "field 'click': expected a binary label 0 or 1, got int -1"),
    Case("binary 0.5", {"conversion": 0.5},
         "field 'conversion': expected a binary label 0 or 1, got float 0.5"),
    Case("binary NaN", {"conversion": math.nan},
         "field 'conversion': expected a binary label 0 or 1, got float nan"),
    Case("regression below min", {"watch_time": -1.0},
         "field 'watch_time': below the minimum 0, got float -1.0"),
    Case("regression NaN", {"watch_time": math.nan},
         "field 'watch_time': expected a finite number, got float nan"),
    Case("regression beyond float32", {"watch_time": 1e39},
         "field 'watch_time': number out of float32 range"),
    Case("invalid start byte", {"user_id": b"u\xff"},
         "field 'user_id': invalid UTF-8, got bytes b'u\\xff'"),
    Case("Latin-1 text", {"item_id": "é".encode("latin-1")},
         "field 'item_id': invalid UTF-8, got bytes b'\\xe9'"),
    Case("encoded surrogate", {"user_segment": b"\xed\xa0\x80"},
         "field 'user_segment': invalid UTF-8"),
    Case("invalid UTF-8 where a default would go", {"device": b"\xc0\xaf"},
         "field 'device': invalid UTF-8"),
    Case("list with a null element", {"recent_items": ["i3", None]},
         "field 'recent_items': element 1: null value"),
    Case("list with the pad value", {"recent_items": [""]},
         "field 'recent_items': element 0: equals the pad value ''"),
]
PARQUET_GOOD = [
    Case("plain", {}, None),
    Case("null with a default", {"device": None}, None),
    Case("int64 max in uint64", {"hour": 2**63 - 1}, None),
    Case("binary 1.0 as a float", {"conversion": 1.0}, None),
    Case("tiny float", {"item_price": 1e-46}, None),
    Case("empty string", {"user_id": ""}, None),  # a value in Parquet, unlike an empty CSV cell
    Case("empty list", {"recent_items": []}, None),  # a value in Parquet, unlike in CSV
    Case("null list: its default []", {"recent_items": None}, None),
    Case("list longer than max_length", {"recent_items": list("abcdefghijkl")}, None),
]


def parquet_corpus(cases: list[Case], types: dict | None = None, **options) -> bytes:
    rows = [{**GOOD, **case.content} for case in cases]
    types = {**PARQUET_TYPES, **(types or {})}
    columns = {n: (pa.array([r[n] for r in rows], types[n]) if n in types
                   else _strings([r[n] for r in rows])) for n in NAMES}
    out = io.BytesIO()
    pq.write_table(pa.table(columns), out, **options)
    return out.getvalue()


def _expected_raw(case: Case) -> dict:
    row = {**GOOD, **case.content}
    return {k: v.decode("utf-8", "replace") if isinstance(v, bytes) else v for k, v in row.items()}


def _same_json(a: dict, b: dict) -> bool:
    nan = {k for k, v in a.items() if isinstance(v, float) and math.isnan(v)}
    return nan == {k for k, v in b.items() if isinstance(v, float) and math.isnan(v)} and (
        {k: v for k, v in a.items() if k not in nan} == {k: v for k, v in b.items()
                                                          if k not in nan})


def test_each_parquet_row_is_rejected_with_its_reason_or_accepted(example_raw):
    data = _data(example_raw, "parquet").data
    cases = _interleave(PARQUET_CASES, PARQUET_GOOD)
    content = parquet_corpus(cases, row_group_size=5)
    checker = RowChecker(data)
    rows = list(parquet_rows(io.BytesIO(content), "/l/c.parquet", data, batch_rows=3))
    assert [r.line for r in rows] == list(range(1, len(cases) + 1))
    for row, case in zip(rows, cases, strict=True):
        _, reason, defaulted, _ = checker.check(row)
        if case.reason is None:
            assert reason is None, (case.name, reason)
            assert defaulted == _defaulted(case), case.name
        else:
            assert case.reason in reason, (case.name, reason)
            assert _same_json(json.loads(raw_text(row)), _expected_raw(case)), case.name


# --- one Beam run per format: the corpus beside empty and faulty files ---

def _good_csv(rows: int, names: list[str] = NAMES) -> bytes:
    return (",".join(names) + "\n").encode() + b"".join(
        ",".join(_cell(GOOD[n]) for n in names).encode() + b"\n" for _ in range(rows))


_CORPUS_TEXT = csv_corpus()[0]
_CORPUS_GZ = gzip.compress(_CORPUS_TEXT, mtime=0)
CSV_READABLE = {  # name -> (content, records read, records written, values defaulted)
    "corpus.csv": (_CORPUS_TEXT, len(CSV_CASES) + len(CSV_GOOD), len(CSV_GOOD), 1),
    "corpus.csv.gz": (_CORPUS_GZ, len(CSV_CASES) + len(CSV_GOOD), len(CSV_GOOD), 1),
    "empty.csv": (b"", 0, 0, 0),
    "header-only.csv.gz": (gzip.compress(HEADER + b"\n", mtime=0), 0, 0, 0),
    "no-device.csv": (_good_csv(3, [n for n in NAMES if n != "device"]), 3, 3, 3),
}
CSV_FAULTY = {
    "truncated.csv.gz": (_CORPUS_GZ[: len(_CORPUS_GZ) // 2], "truncated gzip stream"),
    "not-gzip.csv.gz": (_CORPUS_TEXT, "not a gzip file"),
    "no-user.csv": (_good_csv(2, NAMES[1:]),
                    "the header lacks the column 'user_id' (no default in the config)"),
    "hour-twice.csv": (_good_csv(2, [*NAMES, "hour"]),
                       "the header names the column 'hour' 2 times"),
    "bad-header.csv": (b"\xff" + _good_csv(2), "the header (line 1) cannot be read: invalid UTF-8"),
    "open-quote-header.csv": (b'"' + _good_csv(2), "the header (line 1) cannot be read: "
                                                   "unbalanced quote"),
}


def _run_day(root, data_config, files: dict) -> dict:
    day = root / "logs" / f"dt={DATE}"
    day.mkdir(parents=True)
    for name, (content, *_) in files.items():
        (day / name).write_bytes(content)
    return run_preprocess(data_config, DATE, skip_bad_files=True)


def _rejections(root) -> list[dict]:
    return [json.loads(line) for path in sorted((root / "rejected" / f"dt={DATE}").glob("*"))
            for line in path.read_text().splitlines()]


def _check_counts(manifest: dict, readable: dict, faulty: dict, root) -> None:
    rows = manifest["rows"]
    assert rows["read"] == sum(v[1] for v in readable.values())
    assert rows["written"] == sum(v[2] for v in readable.values())
    assert rows["read"] == rows["written"] + rows["rejected"]
    assert manifest["defaulted"] == {  # each corpus holds one list that takes its default []
        "device": sum(v[3] for v in readable.values()),
        "recent_items": sum(name.startswith("corpus.") for name in readable)}
    logs = root / "logs" / f"dt={DATE}"
    skipped = {s["file"]: s["fault"] for s in manifest["skipped_files"]}
    assert sorted(skipped) == sorted(str(logs / name) for name in faulty)
    for name, (_, fault) in faulty.items():
        assert skipped[str(logs / name)].startswith(fault), (name, skipped[str(logs / name)])
    assert manifest["inputs"] == sorted(str(logs / name) for name in readable)


@pytest.mark.integration
def test_the_csv_corpus_in_one_beam_run(tmp_path, example_raw):
    manifest = _run_day(tmp_path, _data(example_raw, "csv", tmp_path),
                        {**CSV_READABLE, **CSV_FAULTY})
    _check_counts(manifest, CSV_READABLE, CSV_FAULTY, tmp_path)
    by_place = {(r["source"], r["line"]): r for r in _rejections(tmp_path)}
    assert len(by_place) == 2 * len(CSV_CASES) == manifest["rows"]["rejected"]
    for name in ("corpus.csv", "corpus.csv.gz"):
        source = str(tmp_path / "logs" / f"dt={DATE}" / name)
        for line, case in csv_corpus()[1]:
            record = by_place.get((source, line))
            if case.reason is None:
                assert record is None, (case.name, record)
                continue
            assert case.reason in record["reason"], (case.name, record["reason"])
            assert record["raw"] == case.content.decode("utf-8", "replace")
    assert manifest["rejection_reasons"] == Counter(
        reason_category(r["reason"]) for r in by_place.values())
    for category in ("invalid CSV", "invalid UTF-8", "unbalanced quote", "wrong number of cells",
                     "empty line", "missing field 'user_id'", "field 'hour': expected an integer"):
        assert manifest["rejection_reasons"][category] > 0, category


def _damaged(content: bytes) -> bytes:
    body = bytearray(content)
    for i in range(4, 40):  # the first page header, right after the leading magic bytes
        body[i] ^= 0xFF
    return bytes(body)


_PARQUET = parquet_corpus(_interleave(PARQUET_CASES, PARQUET_GOOD), row_group_size=7)
_NO_DEVICE = parquet_corpus([PARQUET_GOOD[0]] * 4)
PARQUET_READABLE = {
    "corpus.parquet": (_PARQUET, len(PARQUET_CASES) + len(PARQUET_GOOD), len(PARQUET_GOOD), 1),
    "empty.parquet": (b"", 0, 0, 0),
    "no-rows.parquet": (parquet_corpus([]), 0, 0, 0),
    "all-devices-null.parquet": (parquet_corpus([Case("n", {"device": None}, None)] * 4,
                                                {"device": pa.null()}), 4, 4, 4),
}
PARQUET_FAULTY = {  # name -> (content, or None: made by _faulty_parquet; the fault)
    "hour-string.parquet": (None, "the column 'hour' is string, but feature 'hour' (int64) "
                                  "needs an integer column"),
    "position-float.parquet": (parquet_corpus([Case("f", {"position": 2.0}, None)],
                                              {"position": pa.float64()}),
                               "the column 'position' is double, but feature 'position' (int64)"),
    "no-user.parquet": (None, "the column 'user_id' is missing (feature 'user_id' (string) has "
                              "no default)"),
    "device-list.parquet": (None, "the column 'device' is list<element: string>"),
    "recent-items-string.parquet": (None, "the column 'recent_items' is string, but feature "
                                          "'recent_items' (a list of string) needs a list column "
                                          "of strings"),
    "text.parquet": (_CORPUS_TEXT, "not a readable Parquet file: Parquet magic bytes not found"),
    "truncated.parquet": (_PARQUET[: len(_PARQUET) // 2], "not a readable Parquet file: "),
    "damaged.parquet": (_damaged(_NO_DEVICE), "corrupt Parquet data: "),
}


def _table_bytes(columns: dict) -> bytes:
    out = io.BytesIO()
    pq.write_table(pa.table(columns), out)
    return out.getvalue()


def _faulty_parquet() -> dict:
    good = {n: [GOOD[n]] * 2 for n in NAMES}
    made = {
        "hour-string.parquet": _table_bytes({**good, "hour": ["7", "8"]}),
        "no-user.parquet": _table_bytes({n: v for n, v in good.items() if n != "user_id"}),
        "device-list.parquet": _table_bytes({**good, "device": [["ios"], ["tv"]]}),
        "recent-items-string.parquet": _table_bytes({**good, "recent_items": ["i3", "i4"]}),
    }
    return {name: (made.get(name, content), fault)
            for name, (content, fault) in PARQUET_FAULTY.items()}


@pytest.mark.integration
def test_the_parquet_corpus_in_one_beam_run(tmp_path, example_raw):
    faulty = _faulty_parquet()
    manifest = _run_day(tmp_path, _data(example_raw, "parquet", tmp_path),
                        {**PARQUET_READABLE, **faulty})
    _check_counts(manifest, PARQUET_READABLE, faulty, tmp_path)
    rejections = _rejections(tmp_path)
    source = str(tmp_path / "logs" / f"dt={DATE}" / "corpus.parquet")
    assert {r["source"] for r in rejections} == {source}
    by_row = {r["line"]: r for r in rejections}
    for number, case in enumerate(_interleave(PARQUET_CASES, PARQUET_GOOD), start=1):
        record = by_row.get(number)
        if case.reason is None:
            assert record is None, (case.name, record)
            continue
        assert case.reason in record["reason"], (case.name, record["reason"])
        assert _same_json(json.loads(record["raw"]), _expected_raw(case)), case.name
    assert len(by_row) == len(PARQUET_CASES) == manifest["rows"]["rejected"]


@pytest.mark.integration
def test_a_wrong_parquet_schema_fails_the_day_naming_file_and_column(tmp_path, example_raw):
    config = _data(example_raw, "parquet", tmp_path)
    wrong = _faulty_parquet()["hour-string.parquet"]
    day = tmp_path / "logs" / f"dt={DATE}"
    day.mkdir(parents=True)
    (day / "good.parquet").write_bytes(_NO_DEVICE)
    (day / "hour-string.parquet").write_bytes(wrong[0])
    with pytest.raises(BadInputFileError) as info:
        run_preprocess(config, DATE)
    assert str(info.value) == (
        f"preprocess {DATE}: an input file cannot be read whole: {day / 'hour-string.parquet'}: "
        f"the column 'hour' is string, but feature 'hour' (int64) needs an integer column; "
        f"nothing was published (replace the file, or pass --skip-bad-files to publish the day "
        f"without it)")
    assert not (tmp_path / "tfrecords" / f"dt={DATE}").exists()
