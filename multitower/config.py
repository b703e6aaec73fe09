"""The one configuration file: data, model and training settings, loaded strictly from YAML.

Every stage reads its own part of the same `Config`. Loading validates once: an unknown key, a
wrong type or a missing field raises `ConfigError` whose message names the file and the key
(`examples/impressions.yaml: model.mmoe.num_experts: ...`). Relative paths in the file are
resolved against the file's own directory, so a config and its data can move together.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from multitower.storage import enable_filesystems

PositiveInt = Annotated[int, Field(gt=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
NonNegativeFloat = Annotated[float, Field(ge=0)]
Units = Annotated[list[PositiveInt], Field(min_length=1)]


class ConfigError(ValueError):
    """A configuration file is unreadable or invalid; the message names the file and the key."""


class _Strict(BaseModel):
    # strict: no silent coercion ("4" is not an int, 4.0 is not an int); forbid: unknown keys fail.
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class CategoricalFeature(_Strict):
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


class NumericFeature(_Strict):
    """A numeric column, standardized in the model with constants from the first trained day."""

    name: str
    type: Literal["numeric"]
    dtype: Literal["float32", "int64"] = "float32"


Feature = Annotated[CategoricalFeature | NumericFeature, Field(discriminator="type")]


class Task(_Strict):
    """One objective: a binary label (probability output) or a regression target.

    A regression task may train on a transformed label (`log1p` for heavy tails such as watch
    time); the exported model inverts it, so serving returns the original unit. An `optional`
    label may be missing on a row: that row is then masked out of this task's loss only.
    """

    name: str
    type: Literal["binary", "regression"]
    label: str | None = None  # the log column holding the label; defaults to the task name
    loss_weight: NonNegativeFloat = 1.0
    loss: Literal["mse", "huber"] | None = None  # regression only; default mse
    huber_delta: PositiveFloat = 1.0
    label_transform: Literal["none", "log1p"] = "none"  # regression only
    optional: bool = False

    @property
    def label_column(self) -> str:
        return self.label or self.name

    @model_validator(mode="after")
    def _regression_only(self) -> Task:
        if self.type == "binary" and (self.loss is not None or self.label_transform != "none"):
            raise ValueError(
                f"task {self.name!r}: loss and label_transform apply to regression tasks only"
            )
        return self


class DataConfig(_Strict):
    """Where a day's logs are, what they hold, and where the preprocessed day goes."""

    logs: str  # a directory or glob with a `{date}` placeholder, e.g. logs/dt={date}
    format: Literal["jsonl"] = "jsonl"
    tfrecords: str
    rejected: str
    num_shards: PositiveInt = 4
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
        }
        return hashlib.sha256(json.dumps(schema, sort_keys=True).encode()).hexdigest()[:16]


GateUnits = list[PositiveInt]


class MLPConfig(_Strict):
    """One MLP: the shared bottom, or each task's own network in `single_task`."""

    units: Units = [128, 64]


class ExpertsConfig(_Strict):
    """MoE / MMoE: `num_experts` shared experts; one gate (MoE) or one gate per task (MMoE)."""

    num_experts: PositiveInt = 4
    expert_units: Units = [64]
    gate_units: GateUnits = []  # an optional MLP before each gate's softmax


class CGCConfig(_Strict):
    """CGC / PLE (Tang et al. 2020): shared experts plus experts of each task's own."""

    shared_experts: PositiveInt = 2
    task_experts: PositiveInt | dict[str, PositiveInt] = 1  # one count, or a count per task
    expert_units: Units = [64]
    gate_units: GateUnits = []


class PLEConfig(CGCConfig):
    levels: PositiveInt = 2  # extraction levels; 1 is CGC


class ESMMConfig(_Strict):
    """ESMM (Ma et al. 2018): pCTCVR = pCTR x pCVR, trained over every impression."""

    ctr_task: str
    cvr_task: str
    ctcvr_name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_]+$")] = "ctcvr"


Backbone = Literal["shared_bottom", "moe", "mmoe", "cgc", "ple", "single_task"]


class EmbeddingsConfig(_Strict):
    """How every embedding table is split row-wise into shard variables.

    `num_shards` fixes P for every table (a table with fewer rows gets one shard per row);
    without it P is as many shards as keep each one >= `min_shard_rows` rows, at most
    `max_shards` (like TF's MinSizePartitioner). A checkpoint written with another P is
    re-partitioned when it is restored.
    """

    num_shards: PositiveInt | None = None
    min_shard_rows: PositiveInt = 1 << 20
    max_shards: PositiveInt = 8


class ModelConfig(_Strict):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+$")]  # the export folder's name
    backbone: Backbone = "mmoe"
    shared_bottom: MLPConfig = MLPConfig()
    moe: ExpertsConfig = ExpertsConfig()
    mmoe: ExpertsConfig = ExpertsConfig()
    cgc: CGCConfig = CGCConfig()
    ple: PLEConfig = PLEConfig()
    single_task: MLPConfig = MLPConfig()
    embeddings: EmbeddingsConfig = EmbeddingsConfig()
    heads: Literal["towers", "esmm"] = "towers"
    esmm: ESMMConfig | None = None
    tower_units: Units = [32]
    activation: Literal["relu", "gelu", "swish", "tanh", "elu"] = "relu"
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0
    batch_norm: bool = False

    @model_validator(mode="after")
    def _esmm_block(self) -> ModelConfig:
        if self.heads == "esmm" and self.esmm is None:
            raise ValueError("heads: esmm needs an 'esmm' block naming ctr_task and cvr_task")
        return self


class GradNormConfig(_Strict):
    alpha: NonNegativeFloat = 1.5  # restoring force towards equal training rates
    learning_rate: PositiveFloat = 0.025  # of the task weights


class DWAConfig(_Strict):
    temperature: PositiveFloat = 2.0


class TrainConfig(_Strict):
    batch_size: PositiveInt = 512  # global batch, split over every replica
    optimizer: Literal["adam", "adagrad", "sgd"] = "adam"  # dense variables
    learning_rate: PositiveFloat = 0.001
    # Embedding tables get a row-sparse optimizer: a step touches only the rows of its batch.
    embedding_optimizer: Literal["adagrad", "ftrl", "lazy_adam", "sgd"] = "adagrad"
    # Adagrad and FTRL want larger rates than Adam (0.05-0.5); lazy_adam about Adam's.
    embedding_learning_rate: PositiveFloat = 0.1
    shuffle_buffer: Annotated[int, Field(ge=0)] = 10_000
    seed: int = 0
    model_dir: str
    export_dir: str
    loss_balancing: Literal["fixed", "uncertainty", "gradnorm", "dwa", "pcgrad"] = "fixed"
    # Mid-day backups: a relaunch after a failure resumes at the last one (0: none).
    backup_every_steps: Annotated[int, Field(ge=0)] = 100
    gradnorm: GradNormConfig = GradNormConfig()
    dwa: DWAConfig = DWAConfig()
    # mixed_bfloat16: layers compute in bfloat16, variables, outputs and losses stay float32
    # (no loss scaling needed, unlike float16); fast on GPUs with bfloat16 units (A100, H100).
    precision: Literal["float32", "mixed_bfloat16"] = "float32"


class Config(_Strict):
    data: DataConfig
    model: ModelConfig
    train: TrainConfig
    source: str | None = Field(default=None, exclude=True)  # the file it was loaded from

    @model_validator(mode="after")
    def _model_fits_data(self) -> Config:
        """Checks the parts of the model that name tasks against the data's tasks."""
        tasks = {t.name: t for t in self.data.tasks}
        model = self.model
        for backbone in ("cgc", "ple"):
            counts = getattr(model, backbone).task_experts
            if isinstance(counts, dict) and set(counts) != set(tasks):
                raise ValueError(
                    f"model.{backbone}.task_experts must give a count for every task "
                    f"{sorted(tasks)}, got {sorted(counts)}"
                )
        if model.heads == "esmm":
            esmm = model.esmm
            for key in ("ctr_task", "cvr_task"):
                name = getattr(esmm, key)
                if name not in tasks or tasks[name].type != "binary":
                    raise ValueError(f"model.esmm.{key}: {name!r} is not a binary task")
            if esmm.ctr_task == esmm.cvr_task:
                raise ValueError("model.esmm: ctr_task and cvr_task must differ")
            taken = set(tasks) | {f.name for f in self.data.features}
            if esmm.ctcvr_name in taken:
                raise ValueError(f"model.esmm.ctcvr_name {esmm.ctcvr_name!r} is already a name")
        if self.train.loss_balancing == "gradnorm" and model.backbone == "single_task":
            raise ValueError("train.loss_balancing gradnorm needs a shared layer; single_task "
                             "has none")
        return self

    def to_yaml(self) -> str:
        """The resolved config (paths absolute), as written next to the checkpoints."""
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


_PATH_KEYS = (("data", "logs"), ("data", "tfrecords"), ("data", "rejected"),
              ("train", "model_dir"), ("train", "export_dir"))


def _resolve(path: str, base: Path) -> str:
    if "://" in path or os.path.isabs(path):
        return path
    return str((base / path).resolve())


def _key(loc: tuple[Any, ...], raw: Any) -> str:
    """Turns a pydantic error location into `data.features[2].hash_buckets`."""
    parts: list[str] = []
    node = raw
    for item in loc:
        if isinstance(item, int):
            parts[-1] += f"[{item}]"
            node = node[item] if isinstance(node, list) and item < len(node) else None
            continue
        if isinstance(node, dict) and "type" in node and item == node["type"]:
            continue  # the discriminated-union tag pydantic adds to the path
        parts.append(str(item))
        node = node.get(item) if isinstance(node, dict) else None
    return ".".join(parts) or "<top level>"


def parse_config(raw: Any, source: str = "<config>") -> Config:
    """Validates an already-parsed YAML document; errors name `source` and the key."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a mapping, got {type(raw).__name__}")
    try:
        return Config.model_validate({**raw, "source": source})
    except ValidationError as err:
        lines = []
        for e in err.errors():
            msg = e["msg"]
            if e["type"] == "extra_forbidden":
                msg = "unknown key"
            elif e["type"] == "missing":
                msg = "missing required key"
            elif "input" in e and e["type"] not in ("value_error",):
                msg = f"{msg} (got {e['input']!r})"
            lines.append(f"{source}: {_key(e['loc'], raw)}: {msg}")
        raise ConfigError("\n".join(lines)) from None


def load_config(path: str | os.PathLike[str]) -> Config:
    """Reads, validates and resolves a YAML config file."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as err:
        raise ConfigError(f"{path}: cannot read the config file: {err.strerror}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    config = parse_config(raw, str(path))
    base = path.resolve().parent
    updates: dict[str, dict[str, str]] = {}
    for section, key in _PATH_KEYS:
        value = getattr(getattr(config, section), key)
        updates.setdefault(section, {})[key] = _resolve(value, base)
    # s3:// and hdfs:// paths need tensorflow-io registered before their first use.
    enable_filesystems(v for u in updates.values() for v in u.values())
    return config.model_copy(
        update={s: getattr(config, s).model_copy(update=u) for s, u in updates.items()}
    )
