"""The one value checker: does a raw value fit a column's kind? Logs and requests alike.

Log validation (`pipeline`) checks every feature and label of a row with it, and every request
builder in `serving` checks every feature value with it, so a value is refused for the same
reason wherever it arrives. Reasons name the field and what was wrong, with the offending value
shortened: `field 'item_price': expected a number, got str 'abc'`.

Kinds: `string`, `int64`, `float32` (feature dtypes) and `binary`, `regression` (task labels).
Every decoded JSON value of any type gets either a value that encodes as the column's dtype or
a reason; nothing passes that could fail later, when the row is encoded or scored.
"""

from __future__ import annotations

import math
import reprlib
from typing import Any

FEATURE_KINDS = ("string", "int64", "float32")
LABEL_KINDS = ("binary", "regression")
_MAX_SHOWN = 40  # characters of an offending value quoted in a reason
_FLOAT32_MAX = 3.4028234663852886e38
_INT64_MIN, _INT64_END = -(2**63), 2**63

# Lists and objects are shown to a bounded depth and length: a repr of the whole value could
# recurse past the interpreter's limit or copy megabytes only to be cut to _MAX_SHOWN.
_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxlist, _SHORT.maxdict, _SHORT.maxstring = 3, 4, 4, _MAX_SHOWN


class LongInteger:
    """A JSON integer of more digits than Python converts to an `int` (4300 by default).

    The line decoder (`multitower.rows.decode_line`) puts one in place of such a number, so
    that the column holding it is named in the reason instead of the whole line being refused.
    """

    __slots__ = ("digits",)

    def __init__(self, text: str) -> None:
        self.digits = len(text.lstrip("-"))

    def __repr__(self) -> str:
        return f"<an integer of {self.digits} digits>"


def describe(value: Any) -> str:
    """`str 'abc'`: a value's type and its (shortened) repr, for a reason."""
    if isinstance(value, LongInteger):
        return f"int {value!r}"
    if isinstance(value, list | dict):
        shown = _SHORT.repr(value)
    elif isinstance(value, str):
        shown = repr(value[: _MAX_SHOWN + 1])  # enough to be cut below, without copying all
    else:
        try:
            shown = repr(value)
        except ValueError:  # an int of more digits than Python converts to text (4300 by default)
            shown = f"<an integer of about {int(value.bit_length() * 0.30103)} digits>"
    if len(shown) > _MAX_SHOWN:
        shown = shown[: _MAX_SHOWN - 3] + "..."
    return f"{type(value).__name__} {shown}"


def _number(bound: float) -> str:
    """A bound as written in a config: `0`, not `0.0`."""
    return str(int(bound)) if bound.is_integer() and abs(bound) < 1e15 else repr(bound)


def check_value(
    name: str, value: Any, kind: str, low: float | None = None, high: float | None = None
) -> tuple[Any, str | None]:
    """Checks one decoded JSON value against a column kind.

    Args:
        name: The column, to name it in the reason.
        value: The decoded value (None for JSON null, a `LongInteger` for a number of more
            digits than Python converts).
        kind: One of `FEATURE_KINDS` or `LABEL_KINDS`.
        low: The smallest value allowed (a regression label's `min`); None for no bound.
        high: The largest value allowed (a regression label's `max`); None for no bound.

    Returns:
        `(value as encoded, None)` (floats and labels as `float`) or `(None, reason)`.

    Raises:
        ValueError: `kind` is not a known kind (a programming error, not a bad value).
    """
    if kind not in FEATURE_KINDS + LABEL_KINDS:
        raise ValueError(f"unknown column kind {kind!r}; expected one of "
                         f"{FEATURE_KINDS + LABEL_KINDS}")
    if value is None:
        return None, f"field {name!r}: null value"
    if kind == "string":
        if not isinstance(value, str):
            return None, f"field {name!r}: expected a string, got {describe(value)}"
        if not value.isascii():
            try:  # JSON's \ud800 escape decodes to a lone surrogate, which no UTF-8 can hold
                value.encode("utf-8")
            except UnicodeEncodeError:
                return None, (f"field {name!r}: invalid Unicode (a lone surrogate), "
                              f"got {describe(value)}")
        return value, None
    # bool is a subclass of int in Python, but `true` is not a count or a price.
    is_int = isinstance(value, int) and not isinstance(value, bool)
    if kind == "int64":
        if is_int and _INT64_MIN <= value < _INT64_END:
            return value, None
        if is_int or isinstance(value, LongInteger):
            return None, f"field {name!r}: integer out of int64 range, got {describe(value)}"
        return None, f"field {name!r}: expected an integer, got {describe(value)}"
    if kind == "binary":
        if value in (0, 1) and isinstance(value, int | float):  # 0, 1, 0.0, 1.0, false, true
            return float(value), None
        return None, f"field {name!r}: expected a binary label 0 or 1, got {describe(value)}"
    if isinstance(value, LongInteger):
        return None, f"field {name!r}: number out of float32 range, got {describe(value)}"
    if not (is_int or isinstance(value, float)):
        return None, f"field {name!r}: expected a number, got {describe(value)}"
    try:
        number = float(value)
    except OverflowError:  # an integer beyond float64
        return None, f"field {name!r}: number out of float32 range, got {describe(value)}"
    if not math.isfinite(number):
        return None, f"field {name!r}: expected a finite number, got {describe(value)}"
    if abs(number) > _FLOAT32_MAX:  # every float lands in a float32 (features and labels alike)
        return None, f"field {name!r}: number out of float32 range, got {describe(value)}"
    if low is not None and number < low:
        return None, f"field {name!r}: below the minimum {_number(low)}, got {describe(value)}"
    if high is not None and number > high:
        return None, f"field {name!r}: above the maximum {_number(high)}, got {describe(value)}"
    return number, None


def check_list(
    name: str, value: Any, kind: str, pad: Any = None
) -> tuple[list | None, str | None]:
    """Checks the value of a list-valued (multivalent) feature: a list of `kind` elements.

    Every element is checked, even those past the feature's `max_length` (the caller cuts the
    list); the first bad element is the reason: `field 'tags': element 2: expected a string,
    got int 5`. An element equal to `pad` is refused, since the model would take it for padding.

    Args:
        name: The column, to name it in the reason.
        value: The decoded value: a list (a JSON array, a split CSV cell, a Parquet list).
        kind: The elements' kind, `string` or `int64`.
        pad: The feature's pad value, or None to allow every value.

    Returns:
        `(elements, None)` or `(None, reason)`.
    """
    if value is None:
        return None, f"field {name!r}: null value"
    if not isinstance(value, list):
        return None, f"field {name!r}: expected a list, got {describe(value)}"
    elements = []
    for index, element in enumerate(value):
        checked, reason = check_value(name, element, kind)
        if reason is not None:
            return None, reason.replace(f"field {name!r}: ", f"field {name!r}: element {index}: ",
                                        1)
        if pad is not None and checked == pad:
            return None, (f"field {name!r}: element {index}: equals the pad value {pad!r}, which "
                          f"marks padding")
        elements.append(checked)
    return elements, None


def padded(values: list, length: int, pad: Any) -> list:
    """A list as a `(batch, length)` input takes it: its first `length` elements, then `pad`s.

    What the exported signature takes for a list feature (`multitower.records.pad_lists` pads
    parsed records the same way), and what the serving client sends.
    """
    kept = list(values[:length])
    return kept + [pad] * (length - len(kept))
