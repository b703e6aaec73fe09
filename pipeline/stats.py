"""One pass of statistics over a day: row counts, rejections by kind, numeric moments, label means.

The trainer freezes the numeric means and standard deviations into the model's normalization
layers when it first creates the model, so they are computed over the rows actually written.
Moments are merged with Chan et al.'s pairwise update, which stays accurate when Beam combines
many partial accumulators (a naive sum of squares loses precision on large, offset values).
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import apache_beam as beam

from multitower.config import DataConfig
from pipeline.validate import reason_category

READ, VALID, REJECTED = "read", "valid", "rejected"


class _Moments:
    """Count, mean, sum of squared deviations, min and max of a stream of numbers."""

    __slots__ = ("count", "mean", "m2", "low", "high")

    def __init__(self) -> None:
        self.count, self.mean, self.m2 = 0, 0.0, 0.0
        self.low, self.high = math.inf, -math.inf

    def add(self, x: float) -> None:
        self.count += 1
        delta = x - self.mean
        self.mean += delta / self.count
        self.m2 += delta * (x - self.mean)
        self.low, self.high = min(self.low, x), max(self.high, x)

    def merge(self, other: _Moments) -> None:
        if other.count == 0:
            return
        total = self.count + other.count
        delta = other.mean - self.mean
        self.mean += delta * other.count / total
        self.m2 += other.m2 + delta * delta * self.count * other.count / total
        self.count = total
        self.low, self.high = min(self.low, other.low), max(self.high, other.high)

    def summary(self) -> dict[str, Any]:
        if self.count == 0:
            return {"count": 0, "mean": None, "std": None, "min": None, "max": None}
        return {"count": self.count, "mean": self.mean, "std": math.sqrt(self.m2 / self.count),
                "min": self.low, "max": self.high}


class _Accumulator:
    __slots__ = ("read", "written", "rejected", "reasons", "numeric", "labels")

    def __init__(self, numeric: list[str], labels: list[str]) -> None:
        self.read = 0
        self.written = 0
        self.rejected = 0
        self.reasons: Counter[str] = Counter()
        self.numeric = {name: _Moments() for name in numeric}
        self.labels = {name: _Moments() for name in labels}


class DayStatsFn(beam.CombineFn):
    """Combines `(kind, payload)` pairs into the statistics part of a manifest.

    `kind` is `"read"` (payload ignored, one per input line), `"valid"` (payload: a clean row)
    or `"rejected"` (payload: the reason). The output is a dict with `rows`
    (`read`/`written`/`rejected`), `rejection_reasons` (count per `reason_category`), `numeric`
    (count/mean/population std/min/max per numeric feature, over written rows) and `labels`
    (mean per task name, over written rows).

    Args:
        data: The data section of the config.
    """

    def __init__(self, data: DataConfig) -> None:
        self._numeric = [f.name for f in data.numeric]
        self._tasks = {t.name: t.label_column for t in data.tasks}

    def create_accumulator(self) -> _Accumulator:
        return _Accumulator(self._numeric, list(self._tasks.values()))

    def add_input(self, acc: _Accumulator, element: tuple[str, Any]) -> _Accumulator:
        kind, payload = element
        if kind == READ:
            acc.read += 1
        elif kind == REJECTED:
            acc.rejected += 1
            acc.reasons[reason_category(payload)] += 1
        else:
            acc.written += 1
            for name, moments in acc.numeric.items():
                moments.add(float(payload[name]))
            for column, moments in acc.labels.items():
                if payload[column] is not None:  # an optional label may be missing
                    moments.add(float(payload[column]))
        return acc

    def merge_accumulators(self, accumulators: Any) -> _Accumulator:
        merged = self.create_accumulator()
        for acc in accumulators:
            merged.read += acc.read
            merged.written += acc.written
            merged.rejected += acc.rejected
            merged.reasons.update(acc.reasons)
            for name, moments in acc.numeric.items():
                merged.numeric[name].merge(moments)
            for column, moments in acc.labels.items():
                merged.labels[column].merge(moments)
        return merged

    def extract_output(self, acc: _Accumulator) -> dict[str, Any]:
        return {
            "rows": {"read": acc.read, "written": acc.written, "rejected": acc.rejected},
            "rejection_reasons": dict(sorted(acc.reasons.items())),
            "numeric": {name: m.summary() for name, m in acc.numeric.items()},
            "labels": {task: {"mean": acc.labels[column].summary()["mean"],
                              "count": acc.labels[column].count}
                       for task, column in self._tasks.items()},
        }


class ComputeStats(beam.PTransform):
    """Day statistics from the lines read, the clean rows and the rejections.

    Applied to a dict `{"read": lines, "valid": rows, "rejected": rejections}` of PCollections
    (rejections are the dicts `ValidateRows` emits); outputs one dict (see `DayStatsFn`).

    Args:
        data: The data section of the config.
    """

    def __init__(self, data: DataConfig) -> None:
        super().__init__()
        self._data = data

    def expand(self, inputs: dict[str, beam.PCollection]) -> beam.PCollection[dict[str, Any]]:
        tagged = (
            inputs[READ] | "TagRead" >> beam.Map(lambda _: (READ, None)),
            inputs[VALID] | "TagValid" >> beam.Map(lambda row: (VALID, row)),
            inputs[REJECTED] | "TagRejected" >> beam.Map(lambda r: (REJECTED, r["reason"])),
        )
        return tagged | "Flatten" >> beam.Flatten() | "Combine" >> beam.CombineGlobally(
            DayStatsFn(self._data))
