"""`model:`: the backbone, its heads, the towers and how embedding tables are split and placed."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from multitower.config.fields import PositiveInt, Strict, Units

GateUnits = list[PositiveInt]


class MLPConfig(Strict):
    """One MLP: the shared bottom, or each task's own network in `single_task`."""

    units: Units = [128, 64]


class ExpertsConfig(Strict):
    """MoE / MMoE: `num_experts` shared experts; one gate (MoE) or one gate per task (MMoE)."""

    num_experts: PositiveInt = 4
    expert_units: Units = [64]
    gate_units: GateUnits = []  # an optional MLP before each gate's softmax


class CGCConfig(Strict):
    """CGC / PLE (Tang et al. 2020): shared experts plus experts of each task's own."""

    shared_experts: PositiveInt = 2
    task_experts: PositiveInt | dict[str, PositiveInt] = 1  # one count, or a count per task
    expert_units: Units = [64]
    gate_units: GateUnits = []


class PLEConfig(CGCConfig):
    levels: PositiveInt = 2  # extraction levels; 1 is CGC


class ESMMConfig(Strict):
    """ESMM (Ma et al. 2018): pCTCVR = pCTR x pCVR, trained over every impression."""

    ctr_task: str
    cvr_task: str
    ctcvr_name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_]+$")] = "ctcvr"


Backbone = Literal["shared_bottom", "moe", "mmoe", "cgc", "ple", "single_task"]


# Where a table's rows live. `replicated`: every worker holds the whole table (split into shard
# variables). `model_parallel`: worker w of N holds rows w, w + N, w + 2N, ... of it, and a
# lookup fetches rows from their owners (`model.embeddings.exchange`). Tables are only ever
# grouped into fused variables with tables of the same placement.
PLACEMENTS = ("replicated", "model_parallel")
Placement = Literal["replicated", "model_parallel"]
# How model-parallel lookups reach the rows' owners: `all_to_all` (each worker sends each owner
# only the ids it owns; uses private attributes of MultiWorkerMirroredStrategy) or `all_reduce`
# (public API only: every worker sees every id, owners fill their rows, one all-reduce).
EXCHANGES = ("all_to_all", "all_reduce")
Exchange = Literal["all_to_all", "all_reduce"]


class TableConfig(Strict):
    """Settings of one embedding table (`model.embeddings.tables.<table name>`)."""

    placement: Placement | None = None  # None: `model.embeddings.placement`


class EmbeddingsConfig(Strict):
    """How every embedding table is split row-wise into shard variables, and where it lives.

    `num_shards` fixes P for every table (a table with fewer rows gets one shard per row);
    without it P is as many shards as keep each one >= `min_shard_rows` rows, at most
    `max_shards` (like TF's MinSizePartitioner). A checkpoint written with another P is
    re-partitioned when it is restored. `placement` is every table's default, `tables` overrides
    it per table (keyed by table name: a feature's `embedding_table`, or its own name). With
    `fuse`, P applies to each fused group (its rows are the sum of its tables'). `exchange` is how
    model-parallel tables are looked up (see `EXCHANGES`); P does not apply to them (each worker
    holds one variable of its rows).
    """

    num_shards: PositiveInt | None = None
    min_shard_rows: PositiveInt = 1 << 20
    max_shards: PositiveInt = 8
    placement: Placement = "replicated"
    exchange: Exchange = "all_to_all"
    tables: dict[str, TableConfig] = {}
    # Fused tables: tables of the same embedding_dim and placement share one variable (rows end
    # to end), so a step does one lookup, one gradient exchange and one row-sparse update per
    # group instead of per table. false keeps one layer per table (`embed_<table>`): models
    # trained before fusion existed, whose checkpoints the fused layout refuses.
    fuse: bool = True

    def placement_of(self, table: str) -> str:
        """The placement of the table named `table`: its own setting, else the default."""
        own = self.tables.get(table)
        return own.placement if own is not None and own.placement else self.placement


class ModelConfig(Strict):
    """The network: a backbone (`backbone` and its block) plus heads (`heads`, `tower_units`)."""

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

