"""Statistics of a day, for its manifest, the same to the last bit for the same logs.

Rows, rejections, missing and defaulted values; per numeric feature its moments and a
histogram; per task its positive rate or mean, and the correlation of every pair of labels; per
categorical feature an approximate distinct count and its most frequent values; per list
feature the distribution of its lengths.

The trainer freezes the numeric means and standard deviations into the model's normalization
layers when it first creates the model, so they are computed over the rows actually written.

The same logs must give the same manifest, byte for byte, whatever the runner, however it
splits the work into bundles, and whatever the log format (the same day as JSON lines, CSV or
Parquet lands in other shards, its files being named otherwise). So every statistic here is a
function of the multiset of written rows, whatever shards they land in:

- Sums are exact (`pipeline.moments`): the moments of every numeric feature and label, and the
  products of every pair of labels for their correlation, are integer sums, rounded once at
  the end; counts, minima, maxima and histograms over fixed buckets are exact too.
- Categorical values are counted exactly per shard, so the most frequent values are exact (ties
  broken by value). The distinct count is Beam's approximate-unique estimate
  (`apache_beam.transforms.stats.ApproximateUniqueCombineFn`): it keeps the largest hashes of
  the values seen, a function of the set of values, not of their order. Each value enters it
  once per shard (the first time the shard counts it), so it costs a hash per distinct value.
  Its hash is md5, or murmur3 where `mmh3` is installed (Beam's choice): estimates may differ
  between such installations, within the estimate's error, never between runs of one.

Each shard's statistics are still fed in the shard's fixed row order (`ShardStats`) and merged
in shard order (`day_statistics`), which costs nothing. The exact counts of categorical values
travel with each shard's statistics to the summary: every distinct value of a day is held there
once (fine for millions; for a day of hundreds of millions of distinct ids, raise the summary
worker's memory).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from apache_beam import coders
from apache_beam.transforms.stats import ApproximateUnique, ApproximateUniqueCombineFn

from multitower.config import DataConfig
from pipeline.moments import SHIFT, Comoments, Moments, bucket_bounds, histogram_bucket

TOP_VALUES = 10  # the most frequent values kept per categorical feature
DISTINCT_ERROR = 0.02  # the approximate distinct count's error (Beam's estimate: 2 / sqrt(sample))
# The keys `day_statistics` adds beyond rows, rejection_reasons, numeric, labels, defaulted and
# truncated; `pipeline.preprocess` copies them into the manifest.
STATISTICS_KEYS = ("tasks", "label_correlation", "missing", "categorical", "lists", "histograms")


_SKETCHES: dict[str, ApproximateUniqueCombineFn] = {}


def distinct_sketch(dtype: str) -> ApproximateUniqueCombineFn:
    """Beam's approximate-unique combine function for values of `dtype`, one per process."""
    if dtype not in _SKETCHES:
        coder = coders.StrUtf8Coder() if dtype == "string" else coders.VarIntCoder()
        quiet = _DropMurmurHint()
        root = logging.getLogger()
        root.addFilter(quiet)  # Beam warns at every construction that mmh3 would be faster
        try:
            _SKETCHES[dtype] = ApproximateUniqueCombineFn(
                ApproximateUnique.parse_input_params(error=DISTINCT_ERROR), coder)
        finally:
            root.removeFilter(quiet)
    return _SKETCHES[dtype]


class _DropMurmurHint(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "murmurhash" not in record.getMessage()


class _Layout:
    """Where each statistic's input is in `row_values`, derived once per config."""

    __slots__ = ("columns", "numeric", "tasks", "categorical", "dtypes", "lists", "scalar",
                 "pairs", "required", "histogram")

    def __init__(self, data: DataConfig) -> None:
        self.numeric = [f.name for f in data.numeric]
        self.tasks = [(t.name, t.label_column, t.type) for t in data.tasks]
        self.columns = self.numeric + [label for _, label, _ in self.tasks]
        self.categorical = [f.name for f in data.categorical]
        self.dtypes = [f.dtype for f in data.categorical]
        # (index in `categorical`, max_length) of each list feature
        self.lists = [(i, f.max_length) for i, f in enumerate(data.categorical) if f.multivalent]
        self.scalar = [i for i, f in enumerate(data.categorical) if not f.multivalent]
        first = len(self.numeric)  # the labels follow the numeric features in `columns`
        self.pairs = [(first + i, first + j) for i in range(len(self.tasks))
                      for j in range(i + 1, len(self.tasks))]
        # Labels of tasks that are not optional: in every written row.
        self.required = frozenset(first + i for i, t in enumerate(data.tasks) if not t.optional)
        self.histogram = list(range(first)) + [
            first + i for i, (_, _, kind) in enumerate(self.tasks) if kind == "regression"]


_LAYOUTS: dict[int, tuple[DataConfig, _Layout]] = {}


def _layout(data: DataConfig) -> _Layout:
    # Keyed by identity (a config is not hashable); the config is kept, so its id stays unique.
    cached = _LAYOUTS.get(id(data))
    if cached is None or cached[0] is not data:
        if len(_LAYOUTS) > 32:
            _LAYOUTS.clear()
        cached = _LAYOUTS[id(data)] = (data, _Layout(data))
    return cached[1]


StatValues = tuple[tuple[float | None, ...], tuple[Any, ...]]


def row_values(row: Mapping[str, Any], data: DataConfig) -> StatValues:
    """The values of a clean row that statistics need.

    Args:
        row: A clean row (see `pipeline.validate.RowChecker`).
        data: The data section of the config.

    Returns:
        `(numbers, categories)`: one float per numeric feature, then one per task label, in
        config order (None: a missing optional label); and the value of every categorical
        feature in config order (a list for a list feature). A compact form to carry through
        a shuffle, smaller than the row.
    """
    layout = _layout(data)
    return (tuple(None if row[c] is None else float(row[c]) for c in layout.columns),
            tuple(row[name] for name in layout.categorical))


class ShardStats:
    """Statistics of the rows written to one shard, fed in the shard's fixed row order.

    Args:
        layout: What the rows hold (`empty_shard_stats` makes one from a config).
    """

    __slots__ = ("layout", "rows", "moments", "defaulted", "truncated", "values", "sketches",
                 "lengths", "pairs", "histograms")

    def __init__(self, layout: _Layout) -> None:
        self.layout = layout
        self.rows = 0
        self.moments = [Moments() for _ in layout.columns]
        self.defaulted: Counter[str] = Counter()  # values that took their default, by feature
        self.truncated: Counter[str] = Counter()  # lists cut to max_length, by feature
        self.values: list[dict[Any, int]] = [{} for _ in layout.categorical]  # value -> rows
        self.sketches = [distinct_sketch(dtype).create_accumulator() for dtype in layout.dtypes]
        self.lengths = [[0] * (limit + 1) for _, limit in layout.lists]  # rows by list length
        self.pairs = [Comoments() for _ in layout.pairs]
        self.histograms: list[dict[int, int]] = [{} for _ in layout.histogram]

    def add(self, values: StatValues, defaulted: Iterable[str] = (),
            truncated: Iterable[str] = ()) -> None:
        """Adds one written row.

        Args:
            values: `row_values(row, data)`.
            defaulted: The features that took their default in the row (see
                `pipeline.validate.RowChecker`).
            truncated: The list features cut to their `max_length` in the row.
        """
        numbers, categories = values
        layout = self.layout
        self.rows += 1
        # Inlined `Moments.add`: this runs for every row of the day.
        scaled: list[int | None] = []
        for moments, x in zip(self.moments, numbers, strict=True):
            if x is None:  # an optional label may be missing
                scaled.append(None)
                continue
            numerator, denominator = x.as_integer_ratio()
            exact = numerator << (SHIFT + 1 - denominator.bit_length())
            scaled.append(exact)
            moments.count += 1
            moments.total += exact
            moments.squares += exact * exact
            if x < moments.low:
                moments.low = x
            if x > moments.high:
                moments.high = x
        for comoments, (i, j) in zip(self.pairs, layout.pairs, strict=True):
            a, b = scaled[i], scaled[j]
            if i in layout.required and j in layout.required:
                comoments.xy += a * b  # the other sums are the two columns' (`_correlations`)
            elif a is not None and b is not None:
                comoments.add(a, b)
        for counts, column in zip(self.histograms, layout.histogram, strict=True):
            x = numbers[column]
            if x is not None:
                bucket = histogram_bucket(x)
                counts[bucket] = counts.get(bucket, 0) + 1
        for k, (i, _) in enumerate(layout.lists):
            self.lengths[k][len(categories[i])] += 1
        for i in layout.scalar:
            counts, value = self.values[i], categories[i]
            seen = counts.get(value)
            if seen is None:
                counts[value] = 1
                self._sketch(i, value)
            else:
                counts[value] = seen + 1
        for i, _ in layout.lists:
            counts = self.values[i]
            for element in categories[i]:
                seen = counts.get(element)
                if seen is None:
                    counts[element] = 1
                    self._sketch(i, element)
                else:
                    counts[element] = seen + 1
        if defaulted:
            self.defaulted.update(defaulted)
        if truncated:
            self.truncated.update(truncated)

    def _sketch(self, i: int, value: Any) -> None:
        """Feeds a value new to this shard to categorical feature `i`'s distinct count."""
        distinct_sketch(self.layout.dtypes[i]).add_input(self.sketches[i], value)

    def merge(self, other: ShardStats) -> None:
        """Adds `other`'s rows (another shard's, of the same config)."""
        self.rows += other.rows
        self.defaulted.update(other.defaulted)
        self.truncated.update(other.truncated)
        for mine, theirs in zip(self.moments + self.pairs, other.moments + other.pairs,
                                strict=True):
            mine.merge(theirs)
        for mine, theirs in zip(self.values + self.histograms, other.values + other.histograms,
                                strict=True):
            for key, count in theirs.items():
                mine[key] = mine.get(key, 0) + count
        for mine, theirs in zip(self.lengths, other.lengths, strict=True):
            mine[:] = [a + b for a, b in zip(mine, theirs, strict=True)]
        for i, dtype in enumerate(self.layout.dtypes):
            self.sketches[i] = distinct_sketch(dtype).merge_accumulators(
                [self.sketches[i], other.sketches[i]])


def empty_shard_stats(data: DataConfig) -> ShardStats:
    """Statistics of no rows, for `data`'s columns."""
    return ShardStats(_layout(data))


def _top(counts: Mapping[Any, int]) -> list[list]:
    """The `TOP_VALUES` most frequent values as `[value, count]`, ties broken by value."""
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return [[value, count] for value, count in ranked[:TOP_VALUES]]


def _lists(merged: ShardStats) -> dict[str, Any]:
    out = {}
    for (i, _), lengths in zip(merged.layout.lists, merged.lengths, strict=True):
        name = merged.layout.categorical[i]
        rows = sum(lengths)
        used = [length for length, count in enumerate(lengths) if count]
        total = sum(length * count for length, count in enumerate(lengths))
        out[name] = {"rows": rows, "elements": total, "lengths": lengths,
                     "min": used[0] if used else None, "max": used[-1] if used else None,
                     "mean": total / rows if rows else None,
                     "truncated": merged.truncated[name]}
    return out


def _tasks(by_column: Mapping[str, Moments], data: DataConfig) -> dict[str, Any]:
    out = {}
    for task in data.tasks:
        summary = by_column[task.label_column].summary()
        if task.type == "binary":
            out[task.name] = {"type": "binary", "count": summary["count"],
                              "positive_rate": summary["mean"]}
        else:
            out[task.name] = {"type": "regression", "count": summary["count"],
                              "mean": summary["mean"], "std": summary["std"]}
    return out


def _correlations(merged: ShardStats) -> list[dict[str, Any]]:
    layout = merged.layout
    names = {first: name for first, (name, _, _) in enumerate(layout.tasks,
                                                              start=len(layout.numeric))}
    out = []
    for (i, j), pair in zip(layout.pairs, merged.pairs, strict=True):
        if i in layout.required and j in layout.required:  # only the products were summed
            x, y = merged.moments[i], merged.moments[j]
            pair.count, pair.x, pair.y, pair.xx, pair.yy = (
                merged.rows, x.total, y.total, x.squares, y.squares)
        out.append({"tasks": [names[i], names[j]], "rows": pair.count, "pearson": pair.pearson()})
    return out


def _missing(merged: ShardStats, data: DataConfig, reasons: Mapping[str, int],
             by_column: Mapping[str, Moments]) -> dict[str, dict[str, int]]:
    def rejected(column: str) -> int:
        return reasons.get(f"missing field {column!r}", 0) + reasons.get(
            f"field {column!r}: null value", 0)

    out = {f.name: {"kept": merged.defaulted[f.name], "rejected": rejected(f.name)}
           for f in data.features}
    for task in data.tasks:
        out[task.name] = {"kept": merged.rows - by_column[task.label_column].count,
                          "rejected": rejected(task.label_column)}
    return out


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
        the written rows whose list was cut to `max_length`); then the `STATISTICS_KEYS`:
        `tasks`, `label_correlation`, `missing`, `categorical`, `lists` and `histograms`
        (each described in `multitower.manifest`).
    """
    merged = empty_shard_stats(data)
    for _, shard in sorted(shards, key=lambda item: item[0]):
        merged.merge(shard)
    layout = merged.layout
    by_column = dict(zip(layout.columns, merged.moments, strict=True))
    reasons = Counter(rejection_reasons)
    histogram_names = layout.numeric + [name for name, _, kind in layout.tasks
                                        if kind == "regression"]
    return {
        "rows": {"read": read, "written": merged.rows, "rejected": sum(reasons.values())},
        "rejection_reasons": dict(sorted(reasons.items())),
        "numeric": {f.name: by_column[f.name].summary() for f in data.numeric},
        "labels": {t.name: {k: v for k, v in by_column[t.label_column].summary().items()
                            if k != "std"} for t in data.tasks},
        "defaulted": {name: merged.defaulted[name] for name in data.defaults},
        **({"truncated": {f.name: merged.truncated[f.name] for f in data.multivalent}}
           if data.multivalent else {}),
        "tasks": _tasks(by_column, data),
        "label_correlation": _correlations(merged),
        "missing": _missing(merged, data, reasons, by_column),
        "categorical": {
            name: {"distinct": distinct_sketch(dtype).extract_output(sketch),
                   "top": _top(counts)}
            for name, dtype, sketch, counts in zip(
                layout.categorical, layout.dtypes, merged.sketches, merged.values, strict=True)},
        "lists": _lists(merged),
        "histograms": {
            name: [[*bucket_bounds(key), count] for key, count in sorted(counts.items())]
            for name, counts in zip(histogram_names, merged.histograms, strict=True)},
    }
