"""A corpus of log lines that must each be refused with a reason, and lines that must pass.

For the example config (`examples/impressions.yaml`): string features (`user_id`, `device`, ...),
a list of strings (`recent_items`, at most 10 kept), int64 features (`hour` categorical,
`position` numeric), float32 features (`item_price`, `user_activity`), binary labels (`click`,
`conversion`) and a regression label bounded below (`watch_time`, `min: 0`). Every line is one
line of a file, without its `\\n`.

`bad_rows()` returns `BadLine(name, line, reason, where)`: `reason` is a fragment of the
expected reason, `where` says what is at fault: `line` (its decoding: UTF-8, JSON, endings),
`feature` or `label`. Prediction checks no labels, so it refuses the `line` and `feature` kinds
for the same reason as preprocessing, and scores the `label` kind.
"""

from __future__ import annotations

import json
from typing import NamedTuple

GOOD: dict = {
    "user_id": "u1", "user_segment": "s1", "user_country": "DE", "item_id": "i9",
    "item_category": "c1", "device": "ios", "hour": 7, "position": 2, "item_price": 19.5,
    "user_activity": 0.5, "click": 1, "conversion": 0, "watch_time": 12.0,
    "recent_items": ["i3", "i4"],
}
LABELS = ("click", "conversion", "watch_time")
_SLOT = "__VALUE__"
_INT64_MAX = 2**63 - 1
_FLOAT32_MAX = "3.4028234663852886e+38"


class BadLine(NamedTuple):
    name: str
    line: bytes
    reason: str  # a fragment of the expected reason
    where: str  # "line", "feature" or "label"


def good_line(**changes: object) -> bytes:
    """GOOD (with `changes`) as one JSON line."""
    return json.dumps({**GOOD, **changes}).encode()


def with_text(field: str, text: str) -> bytes:
    """GOOD with `field` set to the JSON text `text`, written as is (`NaN`, `1e400`, ...)."""
    return json.dumps({**GOOD, field: _SLOT}).replace(f'"{_SLOT}"', text).encode()


def without(field: str) -> bytes:
    return json.dumps({k: v for k, v in GOOD.items() if k != field}).encode()


def _raw_in_string(field: str, raw: bytes) -> bytes:
    """GOOD with the bytes `raw` inside the string value of `field`."""
    return with_text(field, '"a' + _SLOT + 'b"').replace(_SLOT.encode(), raw)


def _nested(depth: int) -> str:
    return "[" * depth + "1" + "]" * depth


def _types(field: str, expected: str, where: str, valid: tuple[str, ...]) -> list[BadLine]:
    """Every JSON type (but the `valid` ones) into `field`."""
    texts = {"int": "7", "float": "7.5", "str": '"7"', "empty str": '""', "true": "true",
             "false": "false", "list": "[7]", "empty list": "[]", "object": '{"v": 7}',
             "empty object": "{}"}
    got = {"int": "int 7", "float": "float 7.5", "str": "str '7'", "empty str": "str ''",
           "true": "bool True", "false": "bool False", "list": "list [7]",
           "empty list": "list []", "object": "dict {'v': 7}", "empty object": "dict {}"}
    cases = [BadLine(f"{field}={name}", with_text(field, text),
                     f"field '{field}': {expected}, got {got[name]}", where)
             for name, text in texts.items() if name not in valid]
    cases.append(BadLine(f"{field}=null", with_text(field, "null"), f"field '{field}': null value",
                         where))
    return cases


def bad_rows() -> list[BadLine]:
    """Every kind of bad line, each alone in an otherwise good row."""
    big = "1" + "0" * 400  # 10**400: beyond float64
    huge = "1" + "0" * 5000  # beyond Python's 4300-digit int conversion
    cases = [
        # the three rows that aborted a whole day
        BadLine("lone surrogate", with_text("user_id", '"\\ud800"'),
                "field 'user_id': invalid Unicode (a lone surrogate), got str '\\ud800'",
                "feature"),
        BadLine("int beyond float64 in float32", with_text("item_price", big),
                "field 'item_price': number out of float32 range, got int 10000", "feature"),
        BadLine("int of 5001 digits in float32", with_text("item_price", huge),
                "field 'item_price': number out of float32 range, got int <an integer of 5001 "
                "digits>", "feature"),
        # more Unicode faults behind valid JSON escapes
        BadLine("lone low surrogate", with_text("device", '"a\\udc00b"'),
                "field 'device': invalid Unicode (a lone surrogate)", "feature"),
        BadLine("surrogates in reverse", with_text("item_id", '"\\ude00\\ud83d"'),
                "field 'item_id': invalid Unicode (a lone surrogate)", "feature"),
    ]
    # every JSON type into every column kind
    cases += _types("user_id", "expected a string", "feature", ("str", "empty str"))
    cases += _types("hour", "expected an integer", "feature", ("int",))
    cases += _types("item_price", "expected a number", "feature", ("int", "float"))
    cases += _types("click", "expected a binary label 0 or 1", "label", ("true", "false"))
    cases += _types("watch_time", "expected a number", "label", ("int", "float"))
    cases += [  # a list feature: not a list, or a list with a bad element
        BadLine("list as a string", with_text("recent_items", '"i3"'),
                "field 'recent_items': expected a list, got str 'i3'", "feature"),
        BadLine("list as an object", with_text("recent_items", '{"i": 3}'),
                "field 'recent_items': expected a list, got dict", "feature"),
        BadLine("list of a number", with_text("recent_items", '["i3", 4]'),
                "field 'recent_items': element 1: expected a string, got int 4", "feature"),
        BadLine("list with null", with_text("recent_items", '[null]'),
                "field 'recent_items': element 0: null value", "feature"),
        BadLine("list with the pad", with_text("recent_items", '["i3", ""]'),
                "field 'recent_items': element 1: equals the pad value ''", "feature"),
        BadLine("list of lists", with_text("recent_items", '[["i3"]]'),
                "field 'recent_items': element 0: expected a string, got list", "feature"),
        BadLine("bad element past max_length", with_text("recent_items",
                                                         json.dumps(["i"] * 11 + [7])),
                "field 'recent_items': element 11: expected a string, got int 7", "feature"),
    ]
    cases += [
        # numbers at and beyond every dtype's range
        BadLine("int64 max + 1", with_text("hour", str(2**63)),
                "field 'hour': integer out of int64 range, got int 9223372036854775808", "feature"),
        BadLine("int64 min - 1", with_text("position", str(-(2**63) - 1)),
                "field 'position': integer out of int64 range, got int -9223372036854775809",
                "feature"),
        BadLine("int of 5001 digits in int64", with_text("hour", huge),
                "field 'hour': integer out of int64 range, got int <an integer of 5001 digits>",
                "feature"),
        BadLine("int64 float that is whole", with_text("position", "3.0"),
                "field 'position': expected an integer, got float 3.0", "feature"),
        BadLine("float32 max above", with_text("item_price", "3.5e38"),
                "field 'item_price': number out of float32 range, got float 3.5e+38", "feature"),
        BadLine("float32 min below", with_text("user_activity", "-3.5e38"),
                "field 'user_activity': number out of float32 range, got float -3.5e+38",
                "feature"),
        BadLine("float64 max", with_text("item_price", "1.7976931348623157e308"),
                "field 'item_price': number out of float32 range", "feature"),
        BadLine("float literal beyond float64", with_text("item_price", "1e400"),
                "field 'item_price': expected a finite number, got float inf", "feature"),
        BadLine("negative int beyond float64", with_text("user_activity", "-" + big),
                "field 'user_activity': number out of float32 range, got int -1000", "feature"),
        BadLine("NaN", with_text("item_price", "NaN"),
                "field 'item_price': expected a finite number, got float nan", "feature"),
        BadLine("Infinity", with_text("item_price", "Infinity"),
                "field 'item_price': expected a finite number, got float inf", "feature"),
        BadLine("-Infinity", with_text("user_activity", "-Infinity"),
                "field 'user_activity': expected a finite number, got float -inf", "feature"),
        BadLine("binary 2", with_text("click", "2"),
                "field 'click': expected a binary label 0 or 1, got int 2", "label"),
        BadLine("binary -1", with_text("conversion", "-1"),
                "field 'conversion': expected a binary label 0 or 1, got int -1", "label"),
        BadLine("binary tiny", with_text("conversion", "1e-300"),
                "field 'conversion': expected a binary label 0 or 1, got float 1e-300", "label"),
        BadLine("binary NaN", with_text("click", "NaN"),
                "field 'click': expected a binary label 0 or 1, got float nan", "label"),
        BadLine("binary beyond float64", with_text("click", big),
                "field 'click': expected a binary label 0 or 1, got int 1000", "label"),
        BadLine("regression below min", with_text("watch_time", "-1"),
                "field 'watch_time': below the minimum 0, got int -1", "label"),
        BadLine("regression barely below min", with_text("watch_time", "-1e-300"),
                "field 'watch_time': below the minimum 0, got float -1e-300", "label"),
        BadLine("regression NaN", with_text("watch_time", "NaN"),
                "field 'watch_time': expected a finite number, got float nan", "label"),
        BadLine("regression beyond float32", with_text("watch_time", "1e39"),
                "field 'watch_time': number out of float32 range, got float 1e+39", "label"),
        BadLine("regression of 5001 digits", with_text("watch_time", huge),
                "field 'watch_time': number out of float32 range, got int <an integer of 5001 "
                "digits>", "label"),
        # empty and huge values
        BadLine("huge string in float32", with_text("item_price", json.dumps("x" * 1_000_000)),
                "field 'item_price': expected a number, got str 'xxxxxxxxxx", "feature"),
        BadLine("huge list in string", with_text("user_id", json.dumps([0] * 100_000)),
                "field 'user_id': expected a string, got list [0, 0, 0, 0, ...]", "feature"),
        BadLine("deep list in string", with_text("user_id", _nested(90)),
                "field 'user_id': expected a string, got list [[[[...]]]]", "feature"),
        BadLine("int of 4000 digits in int64", with_text("hour", "9" * 4000),
                "field 'hour': integer out of int64 range, got int 99999", "feature"),
        # missing columns
        BadLine("missing feature", without("user_id"), "missing field 'user_id'", "feature"),
        BadLine("missing float feature", without("item_price"), "missing field 'item_price'",
                "feature"),
        BadLine("missing label", without("watch_time"), "missing field 'watch_time'", "label"),
        # UTF-8 faults
        BadLine("invalid start byte", _raw_in_string("user_id", b"\xff"),
                "invalid UTF-8: invalid start byte (0xff) at byte", "line"),
        BadLine("lone continuation byte", _raw_in_string("device", b"\x80"),
                "invalid UTF-8: invalid start byte (0x80)", "line"),
        BadLine("truncated sequence", _raw_in_string("device", b"\xe2\x82"),
                "invalid UTF-8: invalid continuation byte (0xe282)", "line"),
        BadLine("truncated at the end", good_line()[:-1] + b"\xe2\x82",
                "invalid UTF-8: unexpected end of data (0xe282)", "line"),
        BadLine("overlong encoding", _raw_in_string("device", b"\xc0\xaf"),
                "invalid UTF-8: invalid start byte (0xc0)", "line"),
        BadLine("encoded surrogate", _raw_in_string("device", b"\xed\xa0\x80"),
                "invalid UTF-8: invalid continuation byte (0xed)", "line"),
        BadLine("beyond U+10FFFF", _raw_in_string("device", b"\xf4\x90\x80\x80"),
                "invalid UTF-8: invalid continuation byte (0xf4)", "line"),
        BadLine("byte 0xf5", _raw_in_string("device", b"\xf5\x80\x80\x80"),
                "invalid UTF-8: invalid start byte (0xf5)", "line"),
        BadLine("Latin-1 text", _raw_in_string("user_country", "é".encode("latin-1")),
                "invalid UTF-8: invalid continuation byte (0xe9)", "line"),
        BadLine("UTF-8 byte order mark", b"\xef\xbb\xbf" + good_line(),
                "invalid JSON: a UTF-8 byte order mark (BOM) starts the line", "line"),
        BadLine("UTF-16 text", json.dumps(GOOD).encode("utf-16-le"), "invalid JSON: ", "line"),
        # line-ending faults (a line here is what lies between two \n)
        BadLine("empty line", b"", "empty line", "line"),
        BadLine("blank line", b" \t ", "empty line", "line"),
        BadLine("lone CR line", b"\r", "empty line", "line"),
        BadLine("two rows split by a lone CR", good_line() + b"\r" + good_line(),
                "invalid JSON: Extra data: line 1 column", "line"),
        BadLine("CR inside a string", _raw_in_string("device", b"\r"),
                "invalid JSON: Invalid control character at", "line"),
        BadLine("NUL inside a string", _raw_in_string("device", b"\x00"),
                "invalid JSON: Invalid control character at", "line"),
        BadLine("NUL line", b"\x00", "invalid JSON: Expecting value", "line"),
        BadLine("NUL after the row", good_line() + b"\x00", "invalid JSON: Extra data", "line"),
        # JSON faults
        BadLine("truncated object", good_line()[:-10], "invalid JSON: ", "line"),
        BadLine("trailing comma", good_line()[:-1] + b",}",
                "invalid JSON: Expecting property name enclosed in double quotes", "line"),
        BadLine("single quotes", b"{'user_id': 'u1'}",
                "invalid JSON: Expecting property name enclosed in double quotes", "line"),
        BadLine("deeper than 100 levels", with_text("tags", _nested(150)),
                "JSON nested too deeply: more than 100 levels", "line"),
        BadLine("nested far beyond the stack", b"[" * 100_000,
                "JSON nested too deeply: more than 100 levels", "line"),
        BadLine("duplicate key", good_line()[:-1] + b', "user_id": "u2"}',
                "duplicate key: 'user_id' appears twice in one object", "line"),
        BadLine("duplicate label key", good_line()[:-1] + b', "click": 0}',
                "duplicate key: 'click' appears twice in one object", "line"),
        BadLine("duplicate key nested", with_text("tags", '{"a": 1, "a": 2}'),
                "duplicate key: 'a' appears twice in one object", "line"),
        BadLine("array", b"[1, 2]", "not a JSON object: got list", "line"),
        BadLine("string", b'"row"', "not a JSON object: got str", "line"),
        BadLine("number", b"42", "not a JSON object: got int", "line"),
        BadLine("null", b"null", "not a JSON object: got NoneType", "line"),
        BadLine("true", b"true", "not a JSON object: got bool", "line"),
    ]
    names = [c.name for c in cases]
    assert len(set(names)) == len(names), "corpus names must be unique"
    assert all(b"\n" not in c.line for c in cases), "a corpus line may not hold a line feed"
    return cases


def good_rows() -> list[tuple[str, bytes]]:
    """Lines at the edges of what is valid: each must be accepted (and scored)."""
    return [
        ("plain", good_line()),
        ("CRLF line ending", good_line() + b"\r"),
        ("int64 max", good_line(hour=_INT64_MAX)),
        ("int64 min", good_line(position=-(2**63))),
        ("float32 max", with_text("item_price", _FLOAT32_MAX)),
        ("float32 lowest", with_text("user_activity", "-" + _FLOAT32_MAX)),
        ("below float32's smallest", with_text("item_price", "1e-46")),
        ("binary true/false", good_line(click=True, conversion=False)),
        ("binary 1.0", good_line(click=1.0, conversion=0.0)),
        ("regression at min", good_line(watch_time=0)),
        ("regression -0.0", with_text("watch_time", "-0.0")),
        ("empty string", good_line(user_id="")),
        ("escaped NUL in a string", with_text("device", '"a\\u0000b"')),
        ("surrogate pair", with_text("user_id", '"\\ud83d\\ude00"')),
        ("non-ASCII UTF-8", good_line(user_country="Zürich 東京")),
        ("huge string", good_line(item_id="i" * 1_000_000)),
        ("unread column of 5001 digits", with_text("extra", "1" + "0" * 5000)),
        ("unread column of NaN", with_text("extra", "NaN")),
        ("unread column nested 100 deep", with_text("extra", _nested(99))),
        ("whitespace around", b"  \t" + good_line() + b" \t"),
        ("empty list", good_line(recent_items=[])),
        ("list longer than max_length (cut)", good_line(recent_items=[f"i{k}" for k in range(25)])),
        ("list element of Unicode", good_line(recent_items=["東京", "i\u0000"])),
    ]
