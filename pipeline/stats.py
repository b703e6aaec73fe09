"""Statistics of a day: row counts, rejections by kind, numeric moments, label range and mean.

The trainer freezes the numeric means and standard deviations into the model's normalization
layers when it first creates the model, so they are computed over the rows actually written.

The same logs must give the same manifest, byte for byte, whatever the runner, however it
splits the work into bundles, and whatever the log format (the same day as JSON lines, CSV or
Parquet lands in other shards, its files being named otherwise). Floating-point sums depend on
their order, so the moments are kept exactly instead (`Moments`): every float is an integer
multiple of 2**-1074, so sums of values and of their squares are kept as Python integers in
that unit, and merging is integer addition, the same in any order. The mean and the standard
deviation are rounded once, at the end, from the exact sums: no cancellation on large, offset
values either (where a float sum of squares loses the variance). Counts, minima and maxima are
exact in any order too. Each shard's statistics are still fed in the shard's fixed row order
(`ShardStats`) and merged in shard order (`day_statistics`), which costs nothing.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from multitower.config import DataConfig

# Every finite float is an integer times 2**-1074 (the smallest subnormal).
_SHIFT = 1074


class Moments:
    """Count, exact sum and sum of squares, min and max of a stream of finite numbers."""

    __slots__ = ("count", "total", "squares", "low", "high")

    def __init__(self) -> None:
        self.count, self.total, self.squares = 0, 0, 0  # sums in units of 2**-1074 (squared)
        self.low, self.high = math.inf, -math.inf

    def add(self, x: float) -> None:
        """Adds one finite number, exactly."""
        numerator, denominator = float(x).as_integer_ratio()  # denominator: a power of two
        shift = _SHIFT - (denominator.bit_length() - 1)
        self.count += 1
        self.total += numerator << shift
        self.squares += (numerator * numerator) << (2 * shift)
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
        mean = self.total / (n << _SHIFT)
        variance = (self.squares * n - self.total * self.total) / ((n * n) << (2 * _SHIFT))
        return {"count": n, "mean": mean, "std": math.sqrt(variance),
                "min": float(self.low), "max": float(self.high)}


def _columns(data: DataConfig) -> list[str]:
    """The columns statistics are kept for: numeric features, then task labels, config order."""
    return [f.name for f in data.numeric] + [t.label_column for t in data.tasks]


def row_values(row: Mapping[str, Any], data: DataConfig) -> tuple[float | None, ...]:
    """The values of a clean row that statistics need, as floats (None: a missing label).

    Args:
        row: A clean row (see `pipeline.validate.validate_row`).
        data: The data section of the config.

    Returns:
        One value per numeric feature, then one per task label, in config order: a compact
        form to carry through a shuffle, far smaller than the row.
    """
    return tuple(None if row[c] is None else float(row[c]) for c in _columns(data))


class ShardStats:
    """Statistics of the rows written to one shard, fed in the shard's fixed row order.

    Args:
        width: The number of values per row (`len(row_values(...))`).
    """

    __slots__ = ("rows", "moments", "defaulted", "truncated")

    def __init__(self, width: int) -> None:
        self.rows = 0
        self.moments = [Moments() for _ in range(width)]
        self.defaulted: Counter[str] = Counter()  # values that took their default, by feature
        self.truncated: Counter[str] = Counter()  # lists cut to max_length, by feature

    def add(self, values: tuple[float | None, ...], defaulted: Iterable[str] = (),
            truncated: Iterable[str] = ()) -> None:
        """Adds one written row.

        Args:
            values: `row_values(row, data)`.
            defaulted: The features that took their default in the row (see
                `pipeline.validate.RowChecker`).
            truncated: The list features cut to their `max_length` in the row.
        """
        self.rows += 1
        for moments, value in zip(self.moments, values, strict=True):
            if value is not None:  # an optional label may be missing
                moments.add(value)
        self.defaulted.update(defaulted)
        self.truncated.update(truncated)


def empty_shard_stats(data: DataConfig) -> ShardStats:
    """Statistics of no rows, for `data`'s columns."""
    return ShardStats(len(_columns(data)))


def day_statistics(
    data: DataConfig, read: int, shards: Iterable[tuple[int, ShardStats]],
    rejection_reasons: Mapping[str, int],
) -> dict[str, Any]:
    """The statistics part of a day's manifest, merged in a fixed order.

    Args:
        data: The data section of the config.
        read: Lines read from the input files.
        shards: `(shard index, ShardStats)` of every written shard, in any order: they are
            merged by shard index, so the result does not depend on the order they arrive in.
        rejection_reasons: Rejected rows per reason category (`pipeline.validate.reason_category`).

    Returns:
        `rows` (`read`/`written`/`rejected`), `rejection_reasons` (sorted by reason), `numeric`
        (count/mean/population std/min/max per numeric feature, over written rows) and `labels`
        (count/mean/min/max per task name, over written rows that have the label), and
        `defaulted` (per feature that declares a default, in config order: the written rows in
        which it took its default), and with list features `truncated` (per list feature:
        the written rows whose list was cut to `max_length`).
    """
    merged = empty_shard_stats(data)
    for _, shard in sorted(shards, key=lambda item: item[0]):
        merged.rows += shard.rows
        merged.defaulted.update(shard.defaulted)
        merged.truncated.update(shard.truncated)
        for total, part in zip(merged.moments, shard.moments, strict=True):
            total.merge(part)
    by_column = dict(zip(_columns(data), merged.moments, strict=True))
    reasons = Counter(rejection_reasons)
    return {
        "rows": {"read": read, "written": merged.rows, "rejected": sum(reasons.values())},
        "rejection_reasons": dict(sorted(reasons.items())),
        "numeric": {f.name: by_column[f.name].summary() for f in data.numeric},
        "labels": {t.name: {k: v for k, v in by_column[t.label_column].summary().items()
                            if k != "std"} for t in data.tasks},
        "defaulted": {name: merged.defaulted[name] for name in data.defaults},
        **({"truncated": {f.name: merged.truncated[f.name] for f in data.multivalent}}
           if data.multivalent else {}),
    }
