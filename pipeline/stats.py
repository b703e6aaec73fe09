"""Statistics of a day: row counts, rejections by kind, numeric moments, label range and mean.

The trainer freezes the numeric means and standard deviations into the model's normalization
layers when it first creates the model, so they are computed over the rows actually written.

The same logs must give the same manifest, byte for byte, whatever the runner and however it
splits the work into bundles. Floating-point sums depend on their order, so the moments are not
a Beam combiner (whose merge order follows the bundles): each shard's rows are added in the
shard's fixed (source, line) order as the shard is written (`ShardStats`), and the shards are
merged in shard order (`day_statistics`). Counts, minima and maxima are exact in any order.
Moments are merged with Chan et al.'s pairwise update, which stays accurate on large, offset
values (a naive sum of squares loses the variance there).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from multitower.config import DataConfig


class Moments:
    """Count, mean, sum of squared deviations, min and max of a stream of numbers."""

    __slots__ = ("count", "mean", "m2", "low", "high")

    def __init__(self) -> None:
        self.count, self.mean, self.m2 = 0, 0.0, 0.0
        self.low, self.high = math.inf, -math.inf

    def add(self, x: float) -> None:
        """Adds one number (Welford's update)."""
        self.count += 1
        delta = x - self.mean
        self.mean += delta / self.count
        self.m2 += delta * (x - self.mean)
        self.low, self.high = min(self.low, x), max(self.high, x)

    def merge(self, other: Moments) -> None:
        """Adds every number `other` has seen (Chan et al.'s pairwise update)."""
        if other.count == 0:
            return
        total = self.count + other.count
        delta = other.mean - self.mean
        self.mean += delta * other.count / total
        self.m2 += other.m2 + delta * delta * self.count * other.count / total
        self.count = total
        self.low, self.high = min(self.low, other.low), max(self.high, other.high)

    def summary(self) -> dict[str, Any]:
        """`count`, `mean`, population `std`, `min`, `max`; None for each but count if empty."""
        if self.count == 0:
            return {"count": 0, "mean": None, "std": None, "min": None, "max": None}
        return {"count": self.count, "mean": self.mean, "std": math.sqrt(self.m2 / self.count),
                "min": self.low, "max": self.high}


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

    __slots__ = ("rows", "moments")

    def __init__(self, width: int) -> None:
        self.rows = 0
        self.moments = [Moments() for _ in range(width)]

    def add(self, values: tuple[float | None, ...]) -> None:
        """Adds one written row, given as `row_values(row, data)`."""
        self.rows += 1
        for moments, value in zip(self.moments, values, strict=True):
            if value is not None:  # an optional label may be missing
                moments.add(value)


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
        (count/mean/min/max per task name, over written rows that have the label).
    """
    merged = empty_shard_stats(data)
    for _, shard in sorted(shards, key=lambda item: item[0]):
        merged.rows += shard.rows
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
    }
