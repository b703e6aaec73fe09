"""Row validation: a raw record either becomes a clean row of the configured columns or a reason.

Every format takes the same path. A JSON line is decoded by `multitower.rows.decode_line`; a CSV
record or a Parquet row is decoded by its reader (`pipeline.read_csv`, `pipeline.read_parquet`)
into the same kind of object. Then a missing or null value of a feature that declares a
`default:` takes it (`multitower.rows.fill_defaults`), and the row is checked by
`multitower.rows.check_row` (values by `multitower.values.check_value`), the functions
prediction uses too. Reasons name the key and what was wrong,
`field 'item_price': expected a number, got str 'abc'`, so that a rejected row can be fixed at
its source. `reason_category` strips the specifics (the offending value) so that the manifest
can count rejections per kind of problem.

The functions here are pure (no Beam) so that they are cheap to test and to reuse; the Beam
transform that applies them to a PCollection is `ValidateRows`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, NamedTuple

import apache_beam as beam

from multitower.config import DataConfig
from multitower.rows import Column, check_row, decode_line, fill_defaults

REJECTED_TAG = "rejected"


class LogLine(NamedTuple):
    """One line of a JSON lines file, with where it came from (line numbers start at 1)."""

    source: str
    line: int
    text: bytes


class LogRow(NamedTuple):
    """One record of a CSV or Parquet file, already decoded by its reader.

    `line` is the position: for CSV the line the record starts on, for Parquet the row number
    in the file, each from 1 (the origin every example carries, see `multitower.origin`).
    These formats have one kind of missing value (an empty CSV cell, a Parquet null), so a
    None in `row` counts as an absent key: `missing field 'x'` as for a key a JSON line lacks.
    """

    source: str
    line: int
    row: dict[str, Any] | None  # the decoded values by column (None: see `reason`)
    reason: str | None  # why the record could not be decoded, or None
    raw: bytes | None  # the record as written (CSV); None: render `row` as JSON (Parquet)


LogRecord = LogLine | LogRow


class Checked(NamedTuple):
    """What checking a record gives: a clean row or the reason it has none, and what was done.

    `defaulted` names the features that took their default, `truncated` the list features cut
    to their `max_length`, each in config order (both empty for a refused row).
    """

    row: dict[str, Any] | None
    reason: str | None
    defaulted: tuple[str, ...] = ()
    truncated: tuple[str, ...] = ()


def columns(data: DataConfig) -> list[Column]:
    """Every feature and label column of the config, with its kind and bounds."""
    return [Column(f.name, f.dtype, multivalent=True, pad=f.list_pad)
            if f.multivalent else Column(f.name, f.dtype)
            for f in data.features] + [
        Column(t.label_column, t.type, t.optional, t.min, t.max) for t in data.tasks]


class RowChecker:
    """Decodes (JSON lines) and checks records of any format against a config.

    Args:
        data: The data section of the config.
    """

    def __init__(self, data: DataConfig) -> None:
        self._columns = columns(data)
        self._defaults = data.defaults
        self._max_lengths = {f.name: f.max_length for f in data.multivalent}

    def check_decoded(self, row: object) -> Checked:
        """Fills defaults into a decoded row and checks it.

        Args:
            row: A decoded row (an object holding the columns), as `decode_line` gives it.

        Returns:
            `Checked(clean_row, None, defaulted, truncated)` or `Checked(None, reason)`. A list
            longer than its feature's `max_length` keeps its first `max_length` elements.
        """
        filled, defaulted = fill_defaults(row, self._defaults)
        clean, reason = check_row(filled, self._columns)
        if reason is not None:
            return Checked(None, reason)
        truncated = []
        for name, limit in self._max_lengths.items():
            if len(clean[name]) > limit:
                clean[name] = clean[name][:limit]
                truncated.append(name)
        return Checked(clean, None, defaulted, tuple(truncated))

    def check(self, record: LogRecord) -> Checked:
        """`check_decoded` of a record, decoded first if it is a JSON line."""
        if isinstance(record, LogLine):
            row, reason = decode_line(record.text)
        else:
            row, reason = record.row, record.reason
            if reason is None:
                row = {name: value for name, value in row.items() if value is not None}
        if reason is not None:
            return Checked(None, reason)
        return self.check_decoded(row)


def raw_text(record: LogRecord) -> str:
    """A record as a rejection shows it: the line or CSV record as text, a Parquet row as JSON.

    Undecodable bytes are replaced (U+FFFD), so that the rejection can be written as JSON.
    """
    text = record.text if isinstance(record, LogLine) else record.raw
    if text is None:
        return json.dumps(record.row, ensure_ascii=False)
    return text.decode("utf-8", "replace") if isinstance(text, bytes) else text


def rejection(record: LogRecord, reason: str) -> dict[str, Any]:
    """The rejected file's entry for a record: `{"source", "line", "reason", "raw"}`."""
    return {"source": record.source, "line": record.line, "reason": reason,
            "raw": raw_text(record)}


def validate_row(row: object, data: DataConfig) -> tuple[dict[str, Any] | None, str | None]:
    """Checks a decoded row against the configured features and task labels.

    Args:
        row: A decoded JSON value; it must be an object holding every configured column that
            declares no default.
        data: The data section of the config.

    Returns:
        `(clean_row, None)` where `clean_row` holds only the configured columns (floats as
        `float`, labels as 0.0/1.0 or a float; None for a missing label of an `optional`
        task; a feature's default where its value was missing or null), or `(None, reason)`
        for the first fault in column name order. Extra columns are ignored.
    """
    clean, reason, _, _ = RowChecker(data).check_decoded(row)
    return clean, reason


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
    `invalid JSON`; `wrong number of cells: 16, ...` becomes `wrong number of cells`.
    """
    if reason.startswith("field "):
        return reason.split(", got ", 1)[0]
    if reason.startswith("missing field "):
        return reason
    return reason.split(":", 1)[0]


class ValidateRows(beam.PTransform):
    """Splits records (`LogLine`s or `LogRow`s) into clean rows and rejections.

    Output is a tuple-like object with two PCollections: `.valid` holds clean row dicts (see
    `validate_row`), `.rejected` holds dicts `{"source", "line", "reason", "raw"}` (see
    `rejection`).

    Args:
        data: The data section of the config.
    """

    def __init__(self, data: DataConfig) -> None:
        super().__init__()
        self._data = data

    def expand(self, lines: beam.PCollection[LogRecord]) -> beam.pvalue.DoOutputsTuple:
        return lines | "Validate" >> beam.ParDo(_ValidateFn(self._data)).with_outputs(
            REJECTED_TAG, main="valid")


class _ValidateFn(beam.DoFn):
    def __init__(self, data: DataConfig) -> None:
        self._data = data
        self._checker: RowChecker | None = None

    def setup(self) -> None:
        self._checker = RowChecker(self._data)

    def process(self, element: LogRecord) -> Iterator[Any]:
        row, reason, _, _ = self._checker.check(element)
        if reason is None:
            yield row
            return
        yield beam.pvalue.TaggedOutput(REJECTED_TAG, rejection(element, reason))
