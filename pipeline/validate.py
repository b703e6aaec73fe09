"""Row validation: a raw log line either becomes a clean row of the configured columns or a reason.

Values are checked by `multitower.values.check_value`, the checker serving uses too. Reasons
name the key and what was wrong, `field 'item_price': expected a number, got str 'abc'`,
so that a rejected row can be fixed at its source. `reason_category` strips the specifics (the
offending value) so that the manifest can count rejections per kind of problem.

The functions here are pure (no Beam) so that they are cheap to test and to reuse; the Beam
transform that applies them to a PCollection is `ValidateRows`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, NamedTuple

import apache_beam as beam

from multitower.config import DataConfig
from multitower.values import check_value

REJECTED_TAG = "rejected"


class LogLine(NamedTuple):
    """One line of an input file, with where it came from (line numbers start at 1)."""

    source: str
    line: int
    text: bytes


def _columns(data: DataConfig) -> list[tuple[str, str, bool]]:
    """(column, kind, may be missing) for every feature and label, in config order."""
    return [(f.name, f.dtype, False) for f in data.features] + [
        (t.label_column, t.type, t.optional) for t in data.tasks]


def validate_row(row: object, data: DataConfig) -> tuple[dict[str, Any] | None, str | None]:
    """Checks a decoded JSON value against the configured features and task labels.

    Args:
        row: A decoded JSON value; it must be an object holding every configured column.
        data: The data section of the config.

    Returns:
        `(clean_row, None)` where `clean_row` holds only the configured columns (floats as
        `float`, labels as 0.0/1.0 or a float; None for a missing label of an `optional`
        task), or `(None, reason)`. Extra columns are ignored.
    """
    if not isinstance(row, dict):
        return None, f"not a JSON object: got {type(row).__name__}"
    clean: dict[str, Any] = {}
    for name, kind, optional in _columns(data):
        if optional and row.get(name) is None:
            clean[name] = None  # an optional label: this row is masked out of its task's loss
            continue
        if name not in row:
            return None, f"missing field {name!r}"
        value, reason = check_value(name, row[name], kind)
        if reason is not None:
            return None, reason
        clean[name] = value
    return clean, None


def parse_line(line: str | bytes, data: DataConfig) -> tuple[dict[str, Any] | None, str | None]:
    """Decodes one JSON line and validates it; see `validate_row` for the result."""
    if isinstance(line, bytes):
        try:
            line = line.decode("utf-8")
        except UnicodeDecodeError as err:
            return None, f"invalid UTF-8: {err.reason} at byte {err.start}"
    if not line.strip():
        return None, "empty line"
    try:
        row = json.loads(line)
    except json.JSONDecodeError as err:
        return None, f"invalid JSON: {err}"
    except RecursionError:
        return None, "invalid JSON: nested too deeply"
    return validate_row(row, data)


def reason_category(reason: str) -> str:
    """The kind of a rejection, without the offending value.

    `field 'item_price': expected a number, got str 'abc'` becomes
    `field 'item_price': expected a number`; `invalid JSON: Expecting value: ...` becomes
    `invalid JSON`.
    """
    if reason.startswith("field "):
        return reason.split(", got ", 1)[0]
    if reason.startswith("missing field "):
        return reason
    return reason.split(":", 1)[0]


class ValidateRows(beam.PTransform):
    """Splits `LogLine`s into clean rows and rejections.

    Output is a tuple-like object with two PCollections: `.valid` holds clean row dicts (see
    `validate_row`), `.rejected` holds dicts `{"source", "line", "reason", "raw"}` where `raw`
    is the original line as text (undecodable bytes replaced).

    Args:
        data: The data section of the config.
    """

    def __init__(self, data: DataConfig) -> None:
        super().__init__()
        self._data = data

    def expand(self, lines: beam.PCollection[LogLine]) -> beam.pvalue.DoOutputsTuple:
        return lines | "Validate" >> beam.ParDo(_ValidateFn(self._data)).with_outputs(
            REJECTED_TAG, main="valid")


class _ValidateFn(beam.DoFn):
    def __init__(self, data: DataConfig) -> None:
        self._data = data

    def process(self, element: LogLine) -> Iterator[Any]:
        source, number, text = element
        row, reason = parse_line(text, self._data)
        if reason is None:
            yield row
            return
        raw = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
        yield beam.pvalue.TaggedOutput(
            REJECTED_TAG, {"source": source, "line": number, "reason": reason, "raw": raw})
