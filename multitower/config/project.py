"""The whole config: every section, and the checks that need more than one of them."""

from __future__ import annotations

from typing import Any

import yaml
from pydantic import Field, model_validator

from multitower.config.data import DataConfig
from multitower.config.fields import Strict
from multitower.config.model import ModelConfig
from multitower.config.serving import ServingConfig
from multitower.config.train import TrainConfig


class Config(Strict):
    """The whole file: `data`, `model`, `train`, optional `serving` (`source`: where from)."""

    data: DataConfig
    model: ModelConfig
    train: TrainConfig
    serving: ServingConfig = ServingConfig()
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
        if self.train.loss_balancing == "gradnorm" and model.backbone == "single_task":
            raise ValueError("train.loss_balancing gradnorm needs a shared layer; single_task "
                             "has none")
        return self

    def to_yaml(self) -> str:
        """The resolved config (paths absolute), as written next to the checkpoints."""
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

