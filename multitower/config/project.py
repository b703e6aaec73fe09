"""The whole config: every section, and the checks that need more than one of them."""

from __future__ import annotations

from typing import Any

import yaml
from pydantic import Field, model_validator

from multitower.config.data import DataConfig
from multitower.config.evaluate import EvaluateConfig
from multitower.config.fields import Strict
from multitower.config.k8s import K8sConfig
from multitower.config.model import ModelConfig
from multitower.config.serving import RANKING_SCORE, RankingTerm, ServingConfig
from multitower.config.train import TrainConfig


class Config(Strict):
    """The whole file: `data`, `model`, `train`; optional `serving`, `evaluate`, `k8s`.

    `source`: the file it was loaded from.
    """

    data: DataConfig
    model: ModelConfig
    train: TrainConfig
    serving: ServingConfig = ServingConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    k8s: K8sConfig | None = None  # how the steps run on a cluster; None: local only
    source: str | None = Field(default=None, exclude=True)  # the file it was loaded from

    @model_validator(mode="before")
    @classmethod
    def _serving_name_defaults_to_model_name(cls, data: Any) -> Any:
        """`serving.model_name` defaults to `model.name` (the export folder's name)."""
        if not isinstance(data, dict):
            return data
        model, serving = data.get("model"), data.get("serving", {})
        if (isinstance(model, dict) and isinstance(model.get("name"), str)
                and isinstance(serving, dict) and serving.get("model_name") is None):
            return {**data, "serving": {**serving, "model_name": model["name"]}}
        return data

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
        tables = {f.table for f in self.data.categorical}
        unknown = sorted(set(model.embeddings.tables) - tables)
        if unknown:
            raise ValueError(f"model.embeddings.tables: {unknown[0]!r} is not an embedding table; "
                             f"the tables are {sorted(tables)}")
        group_by = self.evaluate.group_by
        if group_by is not None:
            feature = next((f for f in self.data.features if f.name == group_by), None)
            if feature is None or getattr(feature, "multivalent", False):
                raise ValueError(
                    f"evaluate.group_by: {group_by!r} is not "
                    + ("a one-value feature" if feature else "a feature")
                    + f"; the one-value features are "
                    f"{[f.name for f in self.data.features if not getattr(f, 'multivalent', 0)]}")
        if self.train.loss_balancing == "gradnorm" and model.backbone == "single_task":
            raise ValueError("train.loss_balancing gradnorm needs a shared layer; single_task "
                             "has none")
        return self

    @model_validator(mode="after")
    def _ranking_score_fits_outputs(self) -> Config:
        """`serving.ranking_score` names served outputs, and a product stays finite and real.

        A product term's base `offset + output` must not be negative over the output's range
        (a probability from 0, a regression task from its `min`; `log1p` predictions from -1),
        and must be positive when its weight is negative: a fractional power of a negative
        number is not real, and the graph clips a base of 0 to `RANKING_FLOOR` only to keep
        an underflowing probability finite.
        """
        ranking = self.serving.ranking_score
        if ranking is None:
            return self
        tasks = {t.name: t for t in self.data.tasks}
        served = list(tasks)
        if self.model.heads == "esmm":
            served.append(self.model.esmm.ctcvr_name)
        if RANKING_SCORE in served or RANKING_SCORE in {f.name for f in self.data.features}:
            raise ValueError(f"serving.ranking_score: its output is named {RANKING_SCORE!r}, "
                             f"which is already a task, feature or ctcvr name; rename that one")
        for i, term in enumerate(ranking.terms):
            key = f"serving.ranking_score.terms[{i}]"
            if term.output not in served:
                raise ValueError(f"{key}.output: {term.output!r} is not a served output; the "
                                 f"outputs are {served}")
            if ranking.combine == "product":
                _check_product_base(key, term, tasks.get(term.output))
        return self

    def to_yaml(self) -> str:
        """The resolved config (paths absolute), as written next to the checkpoints."""
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)



def _check_product_base(key: str, term: RankingTerm, task: Any) -> None:
    """Refuses a product term whose base `offset + output` can be negative (or 0 when needed).

    Args:
        key: The term's key, e.g. `serving.ranking_score.terms[1]`.
        term: The term.
        task: The term's task (`multitower.config.data.Task`); None for ESMM's pCTCVR.
    """
    name = term.output
    hint = ""
    if task is None or task.type == "binary":
        low, why = 0.0, f"{name!r} is a probability (from 0)"
    elif task.min is not None:
        low, why = float(task.min), f"task {name!r} has min {task.min:g}"
    elif task.label_transform == "log1p":
        low, why = -1.0, f"task {name!r} is log1p-transformed (predictions above -1)"
    else:
        low, why = None, f"task {name!r} has no min (its predictions are unbounded)"
        hint = f", set data.tasks' min of {name!r}"
    base = None if low is None else low + term.offset
    if base is not None and (base > 0 or (base == 0 and term.weight >= 0)):
        return
    need = "> 0 (its weight is negative)" if base == 0 else ">= 0"
    raise ValueError(
        f"{key}: a product needs offset + {name} {need}, but {why}, with offset "
        f"{term.offset:g}; raise offset (e.g. 1 for (1 + {name})){hint} or use combine: sum")
