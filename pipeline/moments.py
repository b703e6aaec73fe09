"""Exact sums of floats, in any order: moments, co-moments and fixed histogram buckets.

Floating-point sums depend on their order, so the day statistics (`pipeline.stats`) keep them
exactly instead: every finite float is an integer multiple of 2**-1074 (the smallest
subnormal), so sums of values, of their squares and of products of two values are kept as
Python integers in that unit (its square for squares and products), and merging is integer
addition, the same in any order. Means, standard deviations and correlations are rounded once,
at the end, from the exact sums (Python's integer division is correctly rounded): equal
multisets of numbers give equal bits, and there is no cancellation on large, offset values
either (where a float sum of squares loses the variance). Histogram buckets are fixed (four per
power of two), so their counts are exact too.
"""

from __future__ import annotations

import math
import sys
from typing import Any

SHIFT = 1074  # every finite float is an integer times 2**-SHIFT
_SUB_BUCKETS = 4  # histogram buckets per power of two


def _scaled(x: float) -> int:
    """`x * 2**1074`, exactly, as an integer."""
    numerator, denominator = float(x).as_integer_ratio()  # denominator: a power of two
    return numerator << (SHIFT - (denominator.bit_length() - 1))


class Moments:
    """Count, exact sum and sum of squares, min and max of a stream of finite numbers."""

    __slots__ = ("count", "total", "squares", "low", "high")

    def __init__(self) -> None:
        self.count, self.total, self.squares = 0, 0, 0  # sums in units of 2**-1074 (squared)
        self.low, self.high = math.inf, -math.inf

    def add(self, x: float, scaled: int | None = None) -> None:
        """Adds one finite number, exactly (`scaled`: `_scaled(x)`, if already known)."""
        scaled = _scaled(x) if scaled is None else scaled
        self.count += 1
        self.total += scaled
        self.squares += scaled * scaled
        if x < self.low:
            self.low = x
        if x > self.high:
            self.high = x

    def merge(self, other: Moments) -> None:
        """Adds every number `other` has seen; the result does not depend on the order."""
        self.count += other.count
        self.total += other.total
        self.squares += other.squares
        self.low, self.high = min(self.low, other.low), max(self.high, other.high)

    def summary(self) -> dict[str, Any]:
        """`count`, `mean`, population `std`, `min`, `max`; None for each but count if empty.

        The mean and the variance are each rounded once from the exact sums (Python's
        integer division is correctly rounded), so equal multisets of numbers give equal bits.
        """
        n = self.count
        if n == 0:
            return {"count": 0, "mean": None, "std": None, "min": None, "max": None}
        mean = self.total / (n << SHIFT)
        variance = (self.squares * n - self.total * self.total) / ((n * n) << (2 * SHIFT))
        return {"count": n, "mean": mean, "std": math.sqrt(variance),
                "min": float(self.low), "max": float(self.high)}


class Comoments:
    """Exact sums for the Pearson correlation of pairs `(x, y)` (both present), any order."""

    __slots__ = ("count", "x", "y", "xx", "yy", "xy")

    def __init__(self) -> None:
        self.count = self.x = self.y = self.xx = self.yy = self.xy = 0

    def add(self, x: int, y: int) -> None:
        """Adds one pair, each given as `_scaled(value)`."""
        self.count += 1
        self.x += x
        self.y += y
        self.xx += x * x
        self.yy += y * y
        self.xy += x * y

    def merge(self, other: Comoments) -> None:
        for key in self.__slots__:
            setattr(self, key, getattr(self, key) + getattr(other, key))

    def pearson(self) -> float | None:
        """The correlation, rounded once from exact sums; None if either side is constant."""
        n = self.count
        spread = (n * self.xx - self.x * self.x) * (n * self.yy - self.y * self.y)
        if n < 2 or spread == 0:
            return None
        return max(-1.0, min(1.0, (n * self.xy - self.x * self.y) / math.isqrt(spread)))


def histogram_bucket(x: float) -> int:
    """The fixed bucket of a finite number: `_SUB_BUCKETS` equal parts of each power of two.

    0 is its own bucket (0); the buckets of negative numbers mirror the positive ones, so that
    bucket keys sort as the numbers they hold.
    """
    if x == 0:
        return 0
    mantissa, exponent = math.frexp(abs(x))  # mantissa in [0.5, 1)
    key = (exponent + 1100) * _SUB_BUCKETS + int((mantissa - 0.5) * 2 * _SUB_BUCKETS) + 1
    return key if x > 0 else -key


def bucket_bounds(key: int) -> tuple[float, float]:
    """`[low, high)` of a `histogram_bucket` key (for a negative key, `(low, high]`)."""
    if key == 0:
        return 0.0, 0.0
    exponent, sub = divmod(abs(key) - 1, _SUB_BUCKETS)
    exponent -= 1100
    low = math.ldexp(0.5 + sub / (2 * _SUB_BUCKETS), exponent)
    try:
        high = math.ldexp(0.5 + (sub + 1) / (2 * _SUB_BUCKETS), exponent)
    except OverflowError:
        high = sys.float_info.max
    return (low, high) if key > 0 else (-high, -low)
