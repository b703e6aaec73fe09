r"""Reading CSV logs: records with their lines and positions, cells converted by dtype.

A file is a header record naming its columns, then data records, unless `data.csv.columns`
names the columns (then every record is data). Cells are separated by `data.csv.delimiter` and
may be quoted with `data.csv.quotechar` (doubled inside a quoted cell), as RFC 4180 says: a
quoted cell may hold the delimiter, the quote and line breaks. Lines end with `\n` or `\r\n`;
a UTF-8 byte order mark at the start of a file is skipped.

Every data record becomes a `pipeline.validate.LogRow`. Its position is the line it starts on,
from 1 (with a header, the first data record is on line 2), and its raw content its lines as
written. Cells are converted by the dtype of their column (`cell_value`), so that the row holds
what a JSON line would decode to: an int64 cell `7` becomes 7, a float32 cell `7.5` 7.5, a
string cell stays as it is, and an EMPTY CELL IS A MISSING VALUE (its default, or the row is
rejected: `missing field 'device'`). A cell that is not a number of its column's kind stays a
string, which the value checker rejects naming the field: `field 'hour': expected an integer,
got str '7.5'`. Columns the config does not name are ignored, unconverted.

A record is refused with a reason, and reading goes on with the next one: `invalid UTF-8`, an
`empty line`, the `wrong number of cells`, `invalid CSV` (what the parser refuses, such as
`',' expected after '"'`) and an `unbalanced quote`. A quote that opens a cell and never closes
would swallow the rest of the file into one record; so a record that spans lines is kept whole
only if it has the right number of cells. Otherwise, and when no closing quote comes within
`MAX_RECORD_LINES` lines or before the end of the file, only its first line is refused, as an
unbalanced quote, and reading starts again on the line after it.

A file whose header cannot be read, names a configured column twice or lacks a column that has
no default is a bad file (`csv_fault`), found before any of its records is read.

The cell of a list feature (`multivalent`) holds its elements split by `data.csv.list_delimiter`
(`|` by default: `i1|i7|i3`), each converted as a cell of the feature's dtype. An empty cell is
a missing value here too, so CSV cannot write an empty list; a feature whose rows may have
none declares `default: []`. An empty element (`i1||i3`) is the empty string, which the value
checker refuses as the pad value of a string list (an integer list refuses it as not a number).
"""

from __future__ import annotations

import csv
import re
from collections import deque
from collections.abc import Iterable, Iterator
from typing import Any, NamedTuple

from multitower.config import DataConfig
from multitower.config.data import CsvOptions
from multitower.rows import utf8_fault
from multitower.values import LongInteger
from pipeline.validate import LogRow, columns

MAX_RECORD_LINES = 100  # lines one record may span (a quoted cell holding line breaks)
_BOM = b"\xef\xbb\xbf"
_END_OF_DATA = "unexpected end of data"  # the csv module's words for a quote left open
_INTEGER = re.compile(r"[+-]?[0-9]+\Z")
_NUMBER = re.compile(
    r"[+-]?(?:(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|nan|inf|infinity)\Z", re.I)
_BOOLEANS = {"true": True, "false": False}  # as JSON writes them; a binary label only
_FLOAT_KINDS = ("float32", "regression", "binary")


def cell_value(cell: str, kind: str) -> Any:
    """A non-empty cell as the JSON value it stands for in a column of kind `kind`.

    Numbers are read as JSON reads them: an integer literal (`7`, `-3`, `+12`) becomes an
    `int` (a `LongInteger` beyond 4300 digits), a decimal or exponent literal (`7.5`, `1e3`,
    `nan`, `inf`) a `float` in float32, regression and binary columns; `true` and `false` are
    booleans in a binary label column. Anything else, and every cell of a string column, stays
    the string it is, and `multitower.values.check_value` accepts or refuses it for the column.

    Args:
        cell: The cell's text, not empty.
        kind: The column's kind (`string`, `int64`, `float32`, `binary`, `regression`).

    Returns:
        The value to check.
    """
    if kind == "string":
        return cell
    if _INTEGER.match(cell):
        try:
            return int(cell)
        except ValueError:  # more digits than Python converts
            return LongInteger(cell)
    if kind in _FLOAT_KINDS and _NUMBER.match(cell):
        return float(cell)
    if kind == "binary" and cell in _BOOLEANS:
        return _BOOLEANS[cell]
    return cell


class Record(NamedTuple):
    """One CSV record: the line it starts on, its bytes, and its cells or why there are none."""

    line: int
    raw: bytes  # its lines as written, without the last line ending
    cells: list[str] | None
    reason: str | None


class _Feed:
    """The lines the csv module reads, one at a time, keeping those of the current record.

    Lines given back (`pending`) are read again first. At `MAX_RECORD_LINES` lines in one
    record the feed stops, so the csv module sees the end of data inside the open quote; it
    goes on for the next record.
    """

    def __init__(self, lines: Iterable[bytes]) -> None:
        self._lines = iter(lines)
        self._count = 0
        self.pending: deque[tuple[int, bytes]] = deque()
        self.taken: list[tuple[int, bytes]] = []
        self.bad_text = False  # a line of the current record is not UTF-8

    def __iter__(self) -> _Feed:
        return self

    def __next__(self) -> str:
        if len(self.taken) >= MAX_RECORD_LINES:
            raise StopIteration
        if self.pending:
            number, data = self.pending.popleft()
        else:
            data = next(self._lines)
            self._count += 1
            number = self._count
            if number == 1 and data.startswith(_BOM):
                data = data[len(_BOM):]
        self.taken.append((number, data))
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            self.bad_text = True  # parsed all the same, so that the record ends where it should
            return data.decode("utf-8", "surrogateescape")


def _strip(data: bytes) -> bytes:
    return data.rstrip(b"\r\n")


class RecordReader:
    """Splits the lines of a CSV file into records (see the module docstring).

    Args:
        lines: The file's lines, as bytes with their line endings (iterating a binary file).
        options: The dialect: `data.csv_options`.
    """

    def __init__(self, lines: Iterable[bytes], options: CsvOptions) -> None:
        self._feed = _Feed(lines)
        self._reader = csv.reader(self._feed, delimiter=options.delimiter,
                                  quotechar=options.quotechar, doublequote=True, strict=True)

    def read(self, width: int | None = None, expected: str = "") -> Record | None:
        """The next record, or None at the end of the file.

        Args:
            width: The number of cells a record must have; None: any (the header).
            expected: Says where `width` comes from, for the reason, e.g. `the header has 15`.

        Returns:
            A `Record` with its cells, or with a reason instead.
        """
        feed = self._feed
        feed.taken, feed.bad_text = [], False
        try:
            cells, error = next(self._reader), None
        except StopIteration:
            if not feed.taken:
                return None
            cells, error = None, _END_OF_DATA
        except csv.Error as err:
            cells, error = None, str(err)
        taken = feed.taken
        number = taken[0][0]
        if len(taken) > 1 and (error is not None or (width is not None and len(cells) != width)):
            feed.pending.extendleft(reversed(taken[1:]))  # read them again, as records
            return Record(number, _strip(taken[0][1]), None,
                          _unbalanced(taken, error, cells, width))
        raw = _strip(b"".join(data for _, data in taken))
        if feed.bad_text:
            reason = utf8_fault(raw)
        elif error == _END_OF_DATA:
            reason = "unbalanced quote: a quoted cell opens on this line and the file ends in it"
        elif error is not None:
            reason = f"invalid CSV: {error}"
        elif not cells:
            reason = "empty line"
        elif width is not None and len(cells) != width:
            reason = f"wrong number of cells: {len(cells)}, {expected}"
        else:
            return Record(number, raw, cells, None)
        return Record(number, raw, None, reason)


def _unbalanced(taken: list[tuple[int, bytes]], error: str | None, cells: list[str] | None,
                width: int | None) -> str:
    """Why a record spanning lines is refused, as a quote left open on its first line."""
    head = "unbalanced quote: a quoted cell opens on this line"
    if error == _END_OF_DATA and len(taken) >= MAX_RECORD_LINES:
        return f"{head} and does not close within {MAX_RECORD_LINES} lines"
    if error == _END_OF_DATA:
        return f"{head} and the file ends in it"
    if error is not None:
        return f"{head}; up to line {taken[-1][0]} the record is invalid CSV ({error})"
    return (f"{head} and closes on line {taken[-1][0]}, in a record of {len(cells)} cells "
            f"instead of {width}")


def _header(reader: RecordReader) -> tuple[list[str] | None, str | None]:
    """`(names, None)`, `(None, fault)`, or `(None, None)` for a file without any line."""
    record = reader.read()
    if record is None:
        return None, None
    if record.reason is not None:
        return None, f"the header (line {record.line}) cannot be read: {record.reason}"
    return record.cells, None


def _header_fault(names: list[str], data: DataConfig) -> str | None:
    for column in columns(data):
        if names.count(column.name) > 1:
            return (f"the header names the column {column.name!r} {names.count(column.name)} "
                    f"times")
    lacking = [name for name in data.required_columns if name not in names]
    if lacking:
        listed = ", ".join(repr(name) for name in lacking)
        return (f"the header lacks the column{'s' if len(lacking) > 1 else ''} {listed} "
                f"(no default in the config)")
    return None


def csv_fault(lines: Iterable[bytes], data: DataConfig) -> str | None:
    """Why a CSV file cannot be read as the config says, found before any record is read.

    Args:
        lines: The file's lines (decompressed), as bytes.
        data: The data section of the config.

    Returns:
        None, or the fault of its header: `the header (line 1) cannot be read: <reason>`,
        `the header names the column 'x' 2 times`, `the header lacks the column 'x' ...`.
        Files without a header (`data.csv.columns`) and files without any line have none.
    """
    options = data.csv_options
    if options.columns is not None:
        return None
    names, fault = _header(RecordReader(lines, options))
    if names is None:
        return fault
    return _header_fault(names, data)


def csv_rows(lines: Iterable[bytes], source: str, data: DataConfig) -> Iterator[LogRow]:
    """The data records of a CSV file as decoded rows (or reasons), in file order.

    Args:
        lines: The file's lines (decompressed), as bytes; the file passed `csv_fault`.
        source: The file's path, for each row's origin.
        data: The data section of the config.

    Yields:
        A `LogRow` per data record: `row` holds the converted non-empty cells of the
        configured columns (`cell_value`), `raw` the record's bytes.

    Raises:
        ValueError: The header cannot be read (the file changed since `csv_fault` passed it).
    """
    options = data.csv_options
    reader = RecordReader(lines, options)
    if options.columns is None:
        names, fault = _header(reader)
        if fault is not None:
            raise ValueError(f"{source}: {fault}")
        if names is None:
            return
        expected = f"the header has {len(names)}"
    else:
        names = options.columns
        expected = f"data.csv.columns names {len(names)}"
    layout = [(c.name, names.index(c.name), c.kind, c.multivalent) for c in columns(data)
              if c.name in names]
    split = options.list_delimiter
    width = len(names)
    while (record := reader.read(width, expected)) is not None:
        if record.reason is not None:
            yield LogRow(source, record.line, None, record.reason, record.raw)
            continue
        cells = record.cells
        row = {name: [cell_value(element, kind) for element in cells[index].split(split)]
               if multivalent else cell_value(cells[index], kind)
               for name, index, kind, multivalent in layout if cells[index]}
        yield LogRow(source, record.line, row, None, record.raw)
