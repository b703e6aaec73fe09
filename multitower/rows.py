"""One JSON row, from the bytes of its line to checked column values. Logs and requests alike.

Log validation (`pipeline.validate`) and prediction (`serving.predict`) both decode a line with
`decode_line` and check the decoded row with `check_row`, so a line is refused for the same
reason wherever it arrives. A line is refused, never raised on: invalid UTF-8, invalid JSON,
nesting deeper than `MAX_DEPTH` levels, a key twice in one object (which value would
count?) and anything but an object are each a reason, the first word of which names the kind
of fault (`invalid UTF-8: ...`, `invalid JSON: ...`, `duplicate key: ...`).

An integer of more digits than Python converts (4300 by default) is not a reason of its own:
it decodes to a `multitower.values.LongInteger`, refused by the checker of the column holding
it and ignored in a column nobody reads, like any other value there.

Rows of other log formats (CSV, Parquet: `pipeline.read_csv`, `pipeline.read_parquet`) are
decoded by their readers into the same kind of object and then take the same path:
`fill_defaults` (a missing or null value of a column that declares a default takes it) and
`check_row`. `utf8_fault` gives every format the same words for bytes that are not UTF-8.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

from multitower.values import LongInteger, check_list, check_value

_MAX_KEY_SHOWN = 40  # characters of a duplicated key quoted in a reason
# Deeper rows are refused by this rule rather than by the decoder's recursion limit, which
# depends on how deep the caller's own stack is (a Beam worker's differs from `predict`'s).
MAX_DEPTH = 100
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_BRACKET = re.compile(r"[\[\]{}]")


class Column(NamedTuple):
    """A column a row must hold, and how its value is checked (see `check_value`)."""

    name: str
    kind: str
    optional: bool = False  # may be missing or null (an optional label); then None
    low: float | None = None
    high: float | None = None
    multivalent: bool = False  # a list of `kind` elements (see `check_list`)
    pad: Any = None  # multivalent only: the value no element may take


class _DuplicateKeyError(Exception):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKeyError(key)
            seen.add(key)
    return obj


def _int_or_long(text: str) -> int | LongInteger:
    try:
        return int(text)
    except ValueError:  # more digits than sys.get_int_max_str_digits()
        return LongInteger(text)


def _deeper_than(text: str, limit: int) -> bool:
    if text.count("[") + text.count("{") <= limit:  # the common case, at C speed
        return False
    depth = 0
    for bracket in _BRACKET.findall(_STRING.sub('""', text)):  # brackets outside strings
        depth += 1 if bracket in "[{" else -1
        if depth > limit:
            return True
    return False


_DECODER = json.JSONDecoder(object_pairs_hook=_unique_object)
# Only for the rare line holding a huge integer: a parse_int hook slows every line down.
_LONG_DECODER = json.JSONDecoder(object_pairs_hook=_unique_object, parse_int=_int_or_long)


def _loads(text: str) -> Any:
    try:
        return _DECODER.decode(text)
    except json.JSONDecodeError:
        raise
    except ValueError:  # int(): "Exceeds the limit (4300 digits) for integer string conversion"
        return _LONG_DECODER.decode(text)


def utf8_fault(data: bytes) -> str | None:
    """Why `data` is not valid UTF-8, or None: `invalid UTF-8: <why> (0x<bytes>) at byte N`."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as err:
        bad = data[err.start:err.end].hex()
        return f"invalid UTF-8: {err.reason} (0x{bad}) at byte {err.start}"
    return None


def decode_line(line: bytes | str) -> tuple[dict[str, Any] | None, str | None]:
    """Decodes one line of JSON lines into an object, or says why it cannot.

    Args:
        line: The line's bytes (or text), with or without its line ending.

    Returns:
        `(object, None)` or `(None, reason)`; the reasons are `invalid UTF-8: ...`,
        `empty line`, `invalid JSON: ...` (a UTF-8 byte order mark is one: JSON lines are
        written without it), `JSON nested too deeply: ...` (beyond `MAX_DEPTH`),
        `duplicate key: ...` and `not a JSON object: got list`.
    """
    if isinstance(line, bytes):
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            return None, utf8_fault(line)
    else:
        text = line
    if not text.strip():
        return None, "empty line"
    if text.startswith("\ufeff"):  # the decoder would only say "Expecting value"
        return None, "invalid JSON: a UTF-8 byte order mark (BOM) starts the line"
    if _deeper_than(text, MAX_DEPTH):
        return None, f"JSON nested too deeply: more than {MAX_DEPTH} levels"
    try:
        row = _loads(text)
    except json.JSONDecodeError as err:
        hint = ""
        if err.msg == "Extra data" and "\r" in text:
            hint = " (a carriage return inside the line: lines must end with \\n alone or \\r\\n)"
        return None, f"invalid JSON: {err}{hint}"
    except RecursionError:  # only if the caller's stack is nearly exhausted already
        return None, f"JSON nested too deeply: more than {MAX_DEPTH} levels"
    except _DuplicateKeyError as dup:
        key = repr(dup.key)
        if len(key) > _MAX_KEY_SHOWN:
            key = key[: _MAX_KEY_SHOWN - 3] + "..."
        return None, f"duplicate key: {key} appears twice in one object"
    if not isinstance(row, dict):
        return None, f"not a JSON object: got {type(row).__name__}"
    return row, None


def check_row(
    row: object, columns: Iterable[Column]
) -> tuple[dict[str, Any] | None, str | None]:
    """Checks a decoded row against columns; the first fault, in column name order, is the reason.

    The order is the columns' names, not the caller's order, so that every caller checking the
    same columns of the same row reports the same fault.

    Args:
        row: A decoded JSON value; it must be an object holding every non-optional column.
        columns: The columns to check. Keys of `row` that name no column are ignored.

    Returns:
        `(clean_row, None)` where `clean_row` holds only the columns (see `check_value`; None
        for a missing or null optional column), or `(None, reason)`.
    """
    if not isinstance(row, dict):
        return None, f"not a JSON object: got {type(row).__name__}"
    clean: dict[str, Any] = {}
    for column in sorted(columns, key=lambda c: c.name):
        name = column.name
        if column.optional and row.get(name) is None:
            clean[name] = None
            continue
        if name not in row:
            return None, f"missing field {name!r}"
        if column.multivalent:
            value, reason = check_list(name, row[name], column.kind, column.pad)
        else:
            value, reason = check_value(name, row[name], column.kind, column.low, column.high)
        if reason is not None:
            return None, reason
        clean[name] = value
    return clean, None


def fill_defaults(
    row: object, defaults: Mapping[str, Any]
) -> tuple[object, tuple[str, ...]]:
    """Gives each column of `defaults` that `row` lacks, or holds as None (null), its default.

    Args:
        row: A decoded row; anything but a dict is returned as it is (`check_row` refuses it).
        defaults: Default value by column name (already checked against the column's kind).

    Returns:
        `(row, filled)`: the row itself when nothing was missing, else a copy with the defaults
        in; `filled` names the columns that took their default, in the order of `defaults`.
    """
    if not defaults or not isinstance(row, dict):
        return row, ()
    filled = tuple(name for name in defaults if row.get(name) is None)
    if not filled:
        return row, ()
    return {**row, **{name: defaults[name] for name in filled}}, filled
