"""The one value checker: does a raw value fit a column's kind? Logs and requests alike.

Log validation (`pipeline`) checks every feature and label of a row with it, and every request
builder in `serving` checks every feature value with it, so a value is refused for the same
reason wherever it arrives. Reasons name the field and what was wrong, with the offending value
shortened: `field 'item_price': expected a number, got str 'abc'`.

Kinds: `string`, `int64`, `float32` (feature dtypes) and `binary`, `regression` (task labels).
"""

from __future__ import annotations

import math
from typing import Any

FEATURE_KINDS = ("string", "int64", "float32")
LABEL_KINDS = ("binary", "regression")
_MAX_SHOWN = 40  # characters of an offending value quoted in a reason
_FLOAT32_MAX = 3.4028234663852886e38


def describe(value: Any) -> str:
    """`str 'abc'`: a value's type and its (shortened) repr, for a reason."""
    try:
        shown = repr(value)
    except ValueError:  # an int of more digits than Python converts to text (4300 by default)
        shown = f"<an integer of about {int(value.bit_length() * 0.30103)} digits>"
    if len(shown) > _MAX_SHOWN:
        shown = shown[: _MAX_SHOWN - 3] + "..."
    return f"{type(value).__name__} {shown}"


def check_value(name: str, value: Any, kind: str) -> tuple[Any, str | None]:
    """Checks one decoded JSON value against a column kind.

    Args:
        name: The column, to name it in the reason.
        value: The decoded value (None for JSON null).
        kind: One of `FEATURE_KINDS` or `LABEL_KINDS`.

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
        if isinstance(value, str):
            return value, None
        return None, f"field {name!r}: expected a string, got {describe(value)}"
    # bool is a subclass of int in Python, but `true` is not a count or a price.
    is_int = isinstance(value, int) and not isinstance(value, bool)
    if kind == "int64":
        if is_int and -(2**63) <= value < 2**63:
            return value, None
        return None, f"field {name!r}: expected an integer, got {describe(value)}"
    if kind == "binary":
        if value in (0, 1) and isinstance(value, int | float):  # 0, 1, 0.0, 1.0, false, true
            return float(value), None
        return None, f"field {name!r}: expected a binary label 0 or 1, got {describe(value)}"
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
    return number, None
