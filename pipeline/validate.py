"""Row validation: a raw log line either becomes a clean row of the configured columns or a reason.

Lines are decoded by `multitower.rows.decode_line` and rows checked by `multitower.rows.check_row`
(values by `multitower.values.check_value`), the functions prediction uses too. Reasons name the
key and what was wrong, `field 'item_price': expected a number, got str 'abc'`, so that a
rejected row can be fixed at its source. `reason_category` strips the specifics (the offending
value) so that the manifest can count rejections per kind of problem.

The functions here are pure (no Beam) so that they are cheap to test and to reuse; the Beam
transform that applies them to a PCollection is `ValidateRows`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, NamedTuple

import apache_beam as beam

from multitower.config import DataConfig
from multitower.rows import Column, check_row, decode_line

REJECTED_TAG = "rejected"


class LogLine(NamedTuple):
    """One line of an input file, with where it came from (line numbers start at 1)."""

    source: str
    line: int
    text: bytes


def columns(data: DataConfig) -> list[Column]:
    """Every feature and label column of the config, with its kind and bounds."""
    return [Column(f.name, f.dtype) for f in data.features] + [
        Column(t.label_column, t.type, t.optional, t.min, t.max) for t in data.tasks]


def validate_row(row: object, data: DataConfig) -> tuple[dict[str, Any] | None, str | None]:
    """Checks a decoded JSON value against the configured features and task labels.

    Args:
        row: A decoded JSON value; it must be an object holding every configured column.
        data: The data section of the config.

    Returns:
        `(clean_row, None)` where `clean_row` holds only the configured columns (floats as
        `float`, labels as 0.0/1.0 or a float; None for a missing label of an `optional`
        task), or `(None, reason)` for the first fault in column name order. Extra columns
        are ignored.
    """
    return check_row(row, columns(data))


def parse_line(line: str | bytes, data: DataConfig) -> tuple[dict[str, Any] | None, str | None]:
    """Decodes one JSON line and validates it; see `decode_line` and `validate_row`."""
    row, reason = decode_line(line)
    if reason is not None:
        return None, reason
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
