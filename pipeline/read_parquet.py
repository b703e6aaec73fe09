"""Reading Parquet logs: the schema checked against the config, then rows in record batches.

Before any row is read, the file's schema is checked against the config (`schema_fault`): a
configured column of a type that cannot hold its kind's values, a column named twice, or a
missing column that has no default (nor is an optional label) makes the file a bad file, whose
fault names the column. Accepted types, for each kind of column:

| column                              | Parquet (Arrow) types                   |
| ----------------------------------- | --------------------------------------- |
| string feature                      | string, large_string (or dictionary of) |
| int64 feature                       | any integer                             |
| float32 feature, regression label   | any integer, float32, float64           |
| binary label                        | boolean, any integer, float32, float64  |

Any column may also be of Arrow's null type (all values missing). Values are then checked
row by row as JSON values are (`multitower.values.check_value`): a uint64 beyond int64, a
non-finite float, a binary label of 2 are rejected rows, not bad files. A null is a missing
value: its default, or the row is rejected (`missing field 'device'`, as for a key a JSON line
lacks). A string that is not
valid UTF-8 rejects its row (`field 'user_id': invalid UTF-8, got bytes ...`).

Only the configured columns are read, a record batch at a time
(`pyarrow.parquet.ParquetFile.iter_batches`), never the whole file. A row's position is its row
number in the file, from 1; a rejected row shows the configured columns of its row as JSON.
A list feature (`multivalent`) is a list column (list, large_list or fixed_size_list) whose
elements are of a type its dtype accepts above: `list<string>` for string ids. A null list is a
missing value; a null element rejects its row (`field 'tags': element 1: null value`).
"""

from __future__ import annotations

import io
import itertools
from collections.abc import Iterator
from typing import Any, BinaryIO

import pyarrow as pa
import pyarrow.parquet as pq

from multitower.config import DataConfig
from multitower.values import describe
from pipeline.validate import LogRow

BATCH_ROWS = 8192  # rows per record batch
_NEEDS = {"string": "a string column", "int64": "an integer column",
          "float32": "an integer or float column", "regression": "an integer or float column",
          "binary": "a boolean, integer or float column",
          "list of string": "a list column of strings",
          "list of int64": "a list column of integers"}


def _roles(data: DataConfig) -> list[tuple[str, str, str]]:
    """`(column, kind, what it is)` for every configured column, in config order.

    The kind of a list feature is `list of <dtype>`.
    """
    roles = []
    for f in data.features:
        if f.multivalent:
            kind = f"list of {f.dtype}"
            roles.append((f.name, kind, f"feature {f.name!r} (a {kind})"))
        else:
            roles.append((f.name, f.dtype, f"feature {f.name!r} ({f.dtype})"))
    return roles + [
        (t.label_column, t.type, f"the label of task {t.name!r} ({t.type})") for t in data.tasks]


def _is_list(arrow_type: pa.DataType) -> bool:
    return (pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type)
            or pa.types.is_fixed_size_list(arrow_type))


def _fits(kind: str, arrow_type: pa.DataType) -> bool:
    """Whether a column of `arrow_type` can hold values of a column of kind `kind`."""
    if pa.types.is_null(arrow_type):
        return True
    if kind.startswith("list of "):
        return _is_list(arrow_type) and _fits(kind[len("list of "):], arrow_type.value_type)
    if _is_list(arrow_type):
        return False
    if pa.types.is_dictionary(arrow_type):
        arrow_type = arrow_type.value_type
    if kind == "string":
        return pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type)
    if pa.types.is_integer(arrow_type):
        return True
    if kind == "int64":
        return False
    if pa.types.is_float32(arrow_type) or pa.types.is_float64(arrow_type):
        return True
    return kind == "binary" and pa.types.is_boolean(arrow_type)


def schema_fault(schema: pa.Schema, data: DataConfig) -> str | None:
    """Why a Parquet file of `schema` cannot be read as the config says, or None.

    Args:
        schema: The file's Arrow schema.
        data: The data section of the config.

    Returns:
        The first fault in config order, naming the column: `the column 'hour' is string, but
        feature 'hour' (int64) needs an integer column`, `the column 'x' appears 2 times`, or
        `the column 'x' is missing (feature 'x' (string) has no default)`.
    """
    required = set(data.required_columns)
    for name, kind, what in _roles(data):
        found = schema.get_all_field_indices(name)
        if not found:
            if name in required:
                return f"the column {name!r} is missing ({what} has no default)"
            continue
        if len(found) > 1:
            return f"the column {name!r} appears {len(found)} times"
        arrow_type = schema.field(found[0]).type
        if not _fits(kind, arrow_type):
            return f"the column {name!r} is {arrow_type}, but {what} needs {_NEEDS[kind]}"
    return None


def _configured(schema: pa.Schema, data: DataConfig) -> list[str]:
    """The configured columns the file holds, in config order: the only ones read."""
    return [name for name, _, _ in _roles(data) if name in schema.names]


def _is_empty(handle: BinaryIO) -> bool:
    size = handle.seek(0, io.SEEK_END)
    handle.seek(0)
    return size == 0


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())


def parquet_fault(handle: BinaryIO, data: DataConfig) -> str | None:
    """Why a Parquet file cannot be read whole as the config says, found before any row is read.

    The schema is checked first; then every page of the configured columns is decoded (and
    dropped), so that a damaged file fails here, not halfway through its rows.

    Args:
        handle: The file, open for binary reading, seekable.
        data: The data section of the config.

    Returns:
        None (an empty file too: it holds no rows), or `not a readable Parquet file: ...`, a
        schema fault (`schema_fault`) or `corrupt Parquet data: ...`.
    """
    if _is_empty(handle):
        return None
    try:
        parquet = pq.ParquetFile(handle)
    except (pa.ArrowException, OSError) as err:
        return f"not a readable Parquet file: {_one_line(err)}"
    fault = schema_fault(parquet.schema_arrow, data)
    if fault is not None:
        return fault
    try:
        for _ in parquet.iter_batches(batch_size=BATCH_ROWS,
                                      columns=_configured(parquet.schema_arrow, data)):
            pass
    except (pa.ArrowException, OSError) as err:
        return f"corrupt Parquet data: {_one_line(err)}"
    return None


def _column_values(column: pa.Array, name: str, faults: dict[int, str]) -> list[Any]:
    """A column's values as Python objects; a row whose string is not UTF-8 gets a fault.

    Faults are kept for the first such column in name order, as `check_row` orders its
    reasons.
    """
    try:
        return column.to_pylist()
    except UnicodeDecodeError:  # Parquet readers do not check that strings are UTF-8
        pass
    if _is_list(column.type):
        return _list_values(column, name, faults)
    if pa.types.is_dictionary(column.type):
        column = column.dictionary_decode()
    binary = pa.large_binary() if pa.types.is_large_string(column.type) else pa.binary()
    values: list[Any] = []
    for index, data in enumerate(column.cast(binary).to_pylist()):
        if data is None:
            values.append(None)
            continue
        try:
            values.append(data.decode("utf-8"))
        except UnicodeDecodeError:
            values.append(data.decode("utf-8", "replace"))  # shown so in the rejection
            reason = f"field {name!r}: invalid UTF-8, got {describe(data)}"
            if index not in faults or reason < faults[index]:
                faults[index] = reason
    return values


def _list_values(column: pa.Array, name: str, faults: dict[int, str]) -> list[Any]:
    """A list column's values whose strings are not all UTF-8: elements decoded one by one."""
    element = column.type.value_type
    if pa.types.is_dictionary(element):
        element = element.value_type
    binary = pa.large_binary() if pa.types.is_large_string(element) else pa.binary()
    values: list[Any] = []
    for index, items in enumerate(column.cast(pa.list_(binary)).to_pylist()):
        if items is None:
            values.append(None)
            continue
        decoded = []
        for position, data in enumerate(items):
            try:
                decoded.append(None if data is None else data.decode("utf-8"))
            except UnicodeDecodeError:
                decoded.append(data.decode("utf-8", "replace"))
                reason = f"field {name!r}: element {position}: invalid UTF-8, got {describe(data)}"
                if index not in faults or reason < faults[index]:
                    faults[index] = reason
        values.append(decoded)
    return values


def parquet_rows(handle: BinaryIO, source: str, data: DataConfig,
                 batch_rows: int = BATCH_ROWS) -> Iterator[LogRow]:
    """The rows of a Parquet file, decoded, one record batch at a time.

    Args:
        handle: The file, open for binary reading, seekable; it passed `parquet_fault`.
        source: The file's path, for each row's origin.
        data: The data section of the config.
        batch_rows: Rows per record batch.

    Yields:
        A `LogRow` per row, numbered from 1: `row` holds the configured columns the file has
        (None for a null), `raw` is None (a rejection renders `row` as JSON).
    """
    if _is_empty(handle):
        return
    parquet = pq.ParquetFile(handle)
    names = _configured(parquet.schema_arrow, data)
    number = 0
    for batch in parquet.iter_batches(batch_size=batch_rows, columns=names):
        faults: dict[int, str] = {}
        values = [_column_values(batch.column(i), name, faults) for i, name in enumerate(names)]
        rows = zip(*values, strict=True) if values else itertools.repeat((), batch.num_rows)
        for index, row in enumerate(rows):
            number += 1
            yield LogRow(source, number, dict(zip(names, row, strict=True)), faults.get(index),
                         None)
