"""`data:`: the logs of a day, the columns they hold, and where the preprocessed day goes.

Columns are features and task labels; each has a kind the value checker knows. Logs are JSON
lines, CSV (`data.csv` says how it is written) or Parquet (`data.format`). A feature may
declare a `default:`, a value of its dtype (checked here, when the config is loaded) that a
missing or null value takes instead of rejecting its row.
"""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from multitower.config.fields import NonNegativeFloat, PositiveFloat, PositiveInt, Strict
from multitower.origin import ORIGIN_FIELDS, RESERVED_PREFIX
from multitower.values import check_list, check_value

# A default as YAML gives it; `_check_default` then holds it to the feature's dtype (bool is
# listed so that `default: true` gets the value checker's words, not a union error).
DefaultValue = str | bool | int | float | list | None
LOG_FORMATS = ("jsonl", "csv", "parquet")
COMBINERS = ("mean", "sum", "sqrtn")
# What pads a list feature's `(batch, max_length)` tensor when the feature names no `pad:`.
DEFAULT_PADS = {"string": "", "int64": -1}


def _check_default(name: str, dtype: str, value: Any) -> None:
    if value is None:
        return
    _, reason = check_value(name, value, dtype)
    if reason is not None:
        raise ValueError(f"default: {reason.split(': ', 1)[1]} (the feature's dtype is {dtype})")


class CategoricalFeature(Strict):
    """A categorical column, hashed into `hash_buckets` rows and embedded in `embedding_dim`.

    Features naming the same `embedding_table` share one table (e.g. the clicked item and the
    last viewed item); they must agree on `hash_buckets` and `embedding_dim`.

    A `multivalent` feature holds a list of values per row (a user's recent items, an item's
    tags): a JSON array, a CSV cell split at `data.csv.list_delimiter`, a Parquet list column.
    The Beam job keeps at most `max_length` elements (the first ones; the manifest counts the
    rows cut) and writes them as a variable-length feature; the model hashes every element,
    looks it up, and pools the elements with `combiner` (`mean`, `sum`, or `sqrtn`: the sum
    divided by the square root of the count); an empty list pools to zeros. The exported
    signature takes the feature as a `(batch, max_length)` tensor padded with `pad` (`""` for
    strings, -1 for integers unless configured); an element equal to `pad` is refused in logs
    and requests, since the model would take it for padding.
    """

    name: str
    type: Literal["categorical"]
    dtype: Literal["string", "int64"] = "string"
    hash_buckets: PositiveInt
    embedding_dim: PositiveInt
    embedding_table: Annotated[str, Field(pattern=r"^[A-Za-z0-9_]+$")] | None = None
    default: DefaultValue = None  # what a missing or null value becomes; None: reject the row
    multivalent: bool = False
    max_length: PositiveInt | None = None  # multivalent only, and required there
    combiner: Literal["mean", "sum", "sqrtn"] | None = None  # multivalent only; default mean
    pad: str | int | None = None  # multivalent only; default DEFAULT_PADS[dtype]

    @model_validator(mode="after")
    def _default_fits(self) -> CategoricalFeature:
        if not self.multivalent:
            lists = [k for k in ("max_length", "combiner", "pad") if getattr(self, k) is not None]
            if lists:
                raise ValueError(f"{', '.join(lists)} apply to multivalent features only (set "
                                 f"multivalent: true for a list-valued feature)")
            _check_default(self.name, self.dtype, self.default)
            return self
        if self.max_length is None:
            raise ValueError("a multivalent feature needs max_length (the most elements kept)")
        pad, reason = check_value(self.name, self.list_pad, self.dtype)
        if reason is not None or isinstance(self.list_pad, bool):
            raise ValueError(f"pad {self.list_pad!r} is not a value of the feature's dtype "
                             f"{self.dtype}")
        if self.default is not None:
            if not isinstance(self.default, list):
                raise ValueError(f"default: a multivalent feature's default is a list, got "
                                 f"{self.default!r}")
            _, reason = check_list(self.name, self.default, self.dtype, pad)
            if reason is not None:
                raise ValueError(f"default: {reason.split(': ', 1)[1]} (the feature's dtype is "
                                 f"{self.dtype})")
            if len(self.default) > self.max_length:
                raise ValueError(f"default: holds {len(self.default)} elements, more than "
                                 f"max_length {self.max_length}")
        return self

    @property
    def list_pad(self) -> str | int:
        """The value that pads this (multivalent) feature's lists in a served tensor."""
        return DEFAULT_PADS[self.dtype] if self.pad is None else self.pad

    @property
    def list_combiner(self) -> str:
        """How this (multivalent) feature's element embeddings are pooled: `mean` by default."""
        return self.combiner or "mean"

    @property
    def table(self) -> str:
        """The name of the table this feature's embeddings live in."""
        return self.embedding_table or self.name


class NumericFeature(Strict):
    """A numeric column, standardized in the model with constants from the first trained day."""

    name: str
    type: Literal["numeric"]
    dtype: Literal["float32", "int64"] = "float32"
    default: DefaultValue = None  # what a missing or null value becomes; None: reject the row

    @property
    def multivalent(self) -> bool:
        """Always False: only a categorical feature may hold a list (`CategoricalFeature`)."""
        return False

    @model_validator(mode="after")
    def _default_fits(self) -> NumericFeature:
        _check_default(self.name, self.dtype, self.default)
        return self


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


OneCharacter = Annotated[str, Field(min_length=1, max_length=1)]


class CsvOptions(Strict):
    """How CSV logs are written (`data.csv`, with `data.format: csv`).

    Without `columns`, the first record of every file is its header, naming the columns; with
    `columns`, files have no header and every record is data, its cells in that order. Cells
    are quoted as RFC 4180 says: `quotechar` around a cell, doubled inside it.
    """

    columns: Annotated[list[str], Field(min_length=1)] | None = None
    delimiter: OneCharacter = ","
    quotechar: OneCharacter = '"'
    list_delimiter: OneCharacter = "|"  # between the elements of a multivalent feature's cell

    @model_validator(mode="after")
    def _distinct(self) -> CsvOptions:
        for key in ("delimiter", "quotechar", "list_delimiter"):
            if getattr(self, key) in "\r\n":
                raise ValueError(f"{key} may not be a line break")
        if self.delimiter == self.quotechar:
            raise ValueError(f"delimiter and quotechar must differ, both are {self.delimiter!r}")

        if self.columns is not None and len(set(self.columns)) != len(self.columns):
            twice = sorted({c for c in self.columns if self.columns.count(c) > 1})
            raise ValueError(f"columns names {twice} more than once")
        return self


class DataConfig(Strict):
    """Where a day's logs are, what they hold, and where the preprocessed day goes."""

    logs: str  # a directory or glob with a `{date}` placeholder, e.g. logs/dt={date}
    format: Literal["jsonl", "csv", "parquet"] = "jsonl"
    csv: CsvOptions | None = None  # format csv only; None: a header row, ',' and '"'
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
        self._check_csv()
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

    def _check_csv(self) -> None:
        if self.csv is None:
            return
        if self.format != "csv":
            raise ValueError(f"csv applies to format csv only, and the format is {self.format}")
        options = self.csv
        if self.multivalent and options.list_delimiter in (options.delimiter, options.quotechar):
            raise ValueError(f"csv.list_delimiter must differ from delimiter and quotechar, got "
                             f"{options.list_delimiter!r} (it splits the cells of list features)")
        if self.csv.columns is not None:
            lacking = [c for c in self.required_columns if c not in self.csv.columns]
            if lacking:
                raise ValueError(f"csv.columns lacks {lacking}, which have no default")

    @property
    def csv_options(self) -> CsvOptions:
        """`data.csv`, or the defaults: a header row, `,` between cells, `"` around them."""
        return self.csv or CsvOptions()

    @property
    def defaults(self) -> dict[str, Any]:
        """Default value by feature name, as records hold it (`float` for float32), config order.

        Only features that declare one.
        """
        return {f.name: (list(f.default) if isinstance(f, CategoricalFeature) and f.multivalent
                         else check_value(f.name, f.default, f.dtype)[0])
                for f in self.features if f.default is not None}

    @property
    def required_columns(self) -> list[str]:
        """The columns every log file must hold, in config order.

        Features without a default, and the labels of tasks that are not `optional`.
        """
        return [f.name for f in self.features if f.default is None] + [
            t.label_column for t in self.tasks if not t.optional]

    @property
    def categorical(self) -> list[CategoricalFeature]:
        return [f for f in self.features if isinstance(f, CategoricalFeature)]

    @property
    def multivalent(self) -> list[CategoricalFeature]:
        """The list-valued categorical features, in config order."""
        return [f for f in self.categorical if f.multivalent]

    @property
    def numeric(self) -> list[NumericFeature]:
        return [f for f in self.features if isinstance(f, NumericFeature)]

    def logs_for(self, date: str) -> str:
        return self.logs.replace("{date}", date)

    def schema_fingerprint(self) -> str:
        """A hash of what the TFRecords hold (columns, kinds, dtypes, defaults), not of model sizes.

        A declared default is part of it: the records of a day hold it wherever the logs lacked
        the value, so days written with another default hold other values for the same logs.
        So are a list feature's list-ness, `max_length` (records hold at most that many
        elements) and pad value (no element written equals it), so a list model refuses scalar
        records and the other way round.
        A feature without a default or a list hashes as it did before either existed, so configs
        that declare none keep their fingerprint (and their preprocessed days and models).
        """
        defaults = self.defaults
        schema = {
            "features": [[f.name, f.type, f.dtype]
                         + ([["default", defaults[f.name]]] if f.name in defaults else [])
                         + ([["list", f.max_length, f.list_pad]] if f.multivalent
                            else [])
                         for f in self.features],
            "tasks": [[t.name, t.type, t.label_column, t.optional] for t in self.tasks],
            "origin": list(ORIGIN_FIELDS),
        }
        return hashlib.sha256(json.dumps(schema, sort_keys=True).encode()).hexdigest()[:16]

