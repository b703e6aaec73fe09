"""`data:`: the logs of a day, the columns they hold, and where the preprocessed day goes.

Columns are features and task labels; each has a kind the value checker knows.
"""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from multitower.config.fields import NonNegativeFloat, PositiveFloat, PositiveInt, Strict
from multitower.origin import ORIGIN_FIELDS, RESERVED_PREFIX


class CategoricalFeature(Strict):
    """A categorical column, hashed into `hash_buckets` rows and embedded in `embedding_dim`.

    Features naming the same `embedding_table` share one table (e.g. the clicked item and the
    last viewed item); they must agree on `hash_buckets` and `embedding_dim`.
    """

    name: str
    type: Literal["categorical"]
    dtype: Literal["string", "int64"] = "string"
    hash_buckets: PositiveInt
    embedding_dim: PositiveInt
    embedding_table: Annotated[str, Field(pattern=r"^[A-Za-z0-9_]+$")] | None = None

    @property
    def table(self) -> str:
        """The name of the table this feature's embeddings live in."""
        return self.embedding_table or self.name


class NumericFeature(Strict):
    """A numeric column, standardized in the model with constants from the first trained day."""

    name: str
    type: Literal["numeric"]
    dtype: Literal["float32", "int64"] = "float32"


Feature = Annotated[CategoricalFeature | NumericFeature, Field(discriminator="type")]
Bound = Annotated[float, Field(allow_inf_nan=False)]  # a label bound: a finite number


class Task(Strict):
    """One objective: a binary label (probability output) or a regression target.

    A regression task may train on a transformed label (`log1p` for heavy tails such as watch
    time); the exported model inverts it, so serving returns the original unit. An `optional`
    label may be missing on a row: that row is then masked out of this task's loss only. A
    regression task may bound its label (`min: 0` for a watch time): log rows with a label
    outside `[min, max]` are rejected.
    """

    name: str
    type: Literal["binary", "regression"]
    label: str | None = None  # the log column holding the label; defaults to the task name
    loss_weight: NonNegativeFloat = 1.0
    loss: Literal["mse", "huber"] | None = None  # regression only; default mse
    huber_delta: PositiveFloat = 1.0
    label_transform: Literal["none", "log1p"] = "none"  # regression only
    optional: bool = False
    min: Bound | None = None  # regression only: the smallest label accepted
    max: Bound | None = None  # regression only: the largest label accepted

    @property
    def label_column(self) -> str:
        return self.label or self.name

    @model_validator(mode="after")
    def _regression_only(self) -> Task:
        if self.type == "binary" and (self.loss is not None or self.label_transform != "none"):
            raise ValueError(
                f"task {self.name!r}: loss and label_transform apply to regression tasks only"
            )
        if self.type == "binary" and (self.min is not None or self.max is not None):
            raise ValueError(f"task {self.name!r}: min and max apply to regression tasks only "
                             f"(a binary label is always 0 or 1)")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"task {self.name!r}: min ({self.min:g}) is greater than max "
                             f"({self.max:g})")
        return self


class DataConfig(Strict):
    """Where a day's logs are, what they hold, and where the preprocessed day goes."""

    logs: str  # a directory or glob with a `{date}` placeholder, e.g. logs/dt={date}
    format: Literal["jsonl"] = "jsonl"
    tfrecords: str
    rejected: str
    num_shards: PositiveInt = 4
    # A preprocess run holds a lease on its day; one whose heartbeat is older than this is
    # stale (its holder died) and another run may take it over.
    lease_ttl_seconds: PositiveFloat = 120.0
    features: Annotated[list[Feature], Field(min_length=1)]
    tasks: Annotated[list[Task], Field(min_length=1)]

    @field_validator("logs")
    @classmethod
    def _has_date(cls, value: str) -> str:
        if "{date}" not in value:
            raise ValueError(f"must contain the '{{date}}' placeholder, got {value!r}")
        return value

    @model_validator(mode="after")
    def _unique_columns(self) -> DataConfig:
        seen: dict[str, str] = {}
        for owner, column in [(f"feature {f.name!r}", f.name) for f in self.features] + [
            (f"label of task {t.name!r}", t.label_column) for t in self.tasks
        ]:
            if column in seen:
                raise ValueError(f"column {column!r} is used twice: by {seen[column]} and {owner}")
            seen[column] = owner
        reserved = sorted(c for c in seen if c.startswith(RESERVED_PREFIX))
        if reserved:  # every example carries its origin under these names
            raise ValueError(f"column names may not start with {RESERVED_PREFIX!r}, got "
                             f"{reserved}")
        names = [t.name for t in self.tasks]
        if len(set(names)) != len(names):
            raise ValueError(f"task names must be unique, got {names}")
        clash = set(names) & {f.name for f in self.features}
        if clash:  # tasks name the model's output layers, features its input layers
            raise ValueError(f"a task and a feature may not share a name: {sorted(clash)}")
        tables: dict[str, list[CategoricalFeature]] = {}
        for f in self.categorical:
            tables.setdefault(f.table, []).append(f)
        for table, users in tables.items():
            sizes = {(f.hash_buckets, f.embedding_dim) for f in users}
            if len(sizes) > 1:
                raise ValueError(
                    f"features sharing embedding_table {table!r} must have the same hash_buckets "
                    f"and embedding_dim, got " + ", ".join(
                        f"{f.name}: {f.hash_buckets} x {f.embedding_dim}" for f in users))
            owner = next((f for f in self.categorical if f.name == table), None)
            if owner is not None and owner.table != table:
                raise ValueError(f"embedding_table {table!r} is also the name of feature "
                                 f"{table!r}, which has its own table {owner.table!r}")
        return self

    @property
    def categorical(self) -> list[CategoricalFeature]:
        return [f for f in self.features if isinstance(f, CategoricalFeature)]

    @property
    def numeric(self) -> list[NumericFeature]:
        return [f for f in self.features if isinstance(f, NumericFeature)]

    def logs_for(self, date: str) -> str:
        return self.logs.replace("{date}", date)

    def schema_fingerprint(self) -> str:
        """A hash of what the TFRecords hold (columns, kinds, dtypes), not of model sizes."""
        schema = {
            "features": [[f.name, f.type, f.dtype] for f in self.features],
            "tasks": [[t.name, t.type, t.label_column, t.optional] for t in self.tasks],
            "origin": list(ORIGIN_FIELDS),
        }
        return hashlib.sha256(json.dumps(schema, sort_keys=True).encode()).hexdigest()[:16]

