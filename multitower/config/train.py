"""`train:`: batch, optimizers, loss balancing, backups, precision and where models go."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from multitower.config.fields import NonNegativeFloat, PositiveFloat, PositiveInt, Strict

# The rate a config gets when it names an optimizer but no rate, per optimizer. The Adam and
# Adagrad rates come from benchmarks/defaults.py (one pass per day over 10k, 60k and 600k rows a
# day: within 0.005 AUC of the best of a rate x batch grid on each); the others from its shorter
# runs with `--optimizer` / `--embedding-optimizer` (README: "Learning rates").
DENSE_RATES = {"adam": 0.01, "adagrad": 0.3, "sgd": 1.0}
TABLE_RATES = {"adagrad": 3.0, "ftrl": 3.0, "lazy_adam": 0.01, "sgd": 3.0}


class GradNormConfig(Strict):
    alpha: NonNegativeFloat = 1.5  # restoring force towards equal training rates
    learning_rate: PositiveFloat = 0.025  # of the task weights


class DWAConfig(Strict):
    temperature: PositiveFloat = 2.0


class TrainConfig(Strict):
    batch_size: PositiveInt = 512  # global batch, split over every replica
    optimizer: Literal["adam", "adagrad", "sgd"] = "adam"  # dense variables
    learning_rate: PositiveFloat = DENSE_RATES["adam"]  # left out: DENSE_RATES[optimizer]
    # Embedding tables get a row-sparse optimizer: a step touches only the rows of its batch.
    embedding_optimizer: Literal["adagrad", "ftrl", "lazy_adam", "sgd"] = "adagrad"
    # Left out: TABLE_RATES[embedding_optimizer]. Adagrad, FTRL and SGD want far larger rates
    # than Adam: a row's gradient is its share of the batch's mean loss, and the accumulators
    # start at 0.1, so Adagrad's first steps are SGD's at ~3x the rate.
    embedding_learning_rate: PositiveFloat = TABLE_RATES["adagrad"]
    # Passes over each day's rows (steps = rows // batch_size x epochs_per_day), for small daily
    # files that one pass under-trains. Later passes are shuffled differently; progressive
    # validation, the day's state and DWA's per-day loss history are unchanged (a day is a day).
    epochs_per_day: PositiveInt = 1
    shuffle_buffer: Annotated[int, Field(ge=0)] = 10_000
    seed: int = 0
    model_dir: str
    export_dir: str
    loss_balancing: Literal["fixed", "uncertainty", "gradnorm", "dwa", "pcgrad"] = "fixed"
    # Mid-day backups: a relaunch after a failure resumes at the last one (0: none). A backup
    # is a full checkpoint (~0.15 s for the census-shaped MMoE against ~10 ms per step on 2
    # CPU cores): every 100 steps cost a quarter of the training rate there, every 1000 ~3%.
    backup_every_steps: Annotated[int, Field(ge=0)] = 1000
    # Training steps run per call into the compiled training function (Keras'
    # steps_per_execution): callbacks (progress lines, mid-day backups) see every N-th step.
    steps_per_execution: PositiveInt = 16
    gradnorm: GradNormConfig = GradNormConfig()
    dwa: DWAConfig = DWAConfig()
    # mixed_bfloat16: layers compute in bfloat16, variables, outputs and losses stay float32
    # (no loss scaling needed, unlike float16); fast on GPUs with bfloat16 units (A100, H100).
    precision: Literal["float32", "mixed_bfloat16"] = "float32"
    # A run holds a lease on model_dir; a lease whose heartbeat is older than this is stale
    # (its holder died), and another run may take it over. The heartbeat beats every third.
    lease_ttl_seconds: PositiveFloat = 120.0
    # Bytes the embedding tables (and their optimizer slots) may take per worker; by default
    # the worker's cgroup limit or the machine's available memory (see trainer/memory.py).
    memory_budget_bytes: PositiveInt | None = None

    @model_validator(mode="before")
    @classmethod
    def _rates_of_the_named_optimizers(cls, raw: object) -> object:
        """Gives a rate left out the default of the optimizer the config names."""
        if not isinstance(raw, dict):
            return raw
        raw = dict(raw)
        for optimizer, rate, rates in (("optimizer", "learning_rate", DENSE_RATES),
                                       ("embedding_optimizer", "embedding_learning_rate",
                                        TABLE_RATES)):
            name = raw.get(optimizer)
            if rate not in raw and isinstance(name, str) and name in rates:
                raw[rate] = rates[name]
        return raw

