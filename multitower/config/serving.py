"""`serving:`: how TF Serving serves the exports: name, versions, labels, batching, monitoring.

Optional: without it, TF Serving serves `model.name` from `<train.export_dir>/<model.name>`,
newest version only (its own default policy), on its default ports (gRPC 8500, REST 8501),
with request batching and Prometheus metrics on. Label rules (`canary: latest`,
`stable: previous`, `pinned: 3`) are resolved against the exported versions each time the
files are written (`multitower serving-config`), not here: the export folder changes every day.
`ranking_score` adds one output to every export; which outputs it may name is checked with the
tasks (`multitower.config.project`).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    Field,
    PlainValidator,
    ValidationInfo,
    field_validator,
    model_validator,
)

from multitower.config.fields import PositiveInt, Strict

RANKING_SCORE = "ranking_score"  # the output's name in both signatures
# A product's base (offset + output) is clipped to at least this in the exported graph, so that a
# probability that underflows to 0, or a prediction that strays below its task's `min`, cannot
# make the score infinite or NaN.
RANKING_FLOOR = 1e-6
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]

# The names TF Serving's REST API puts in a URL (`/v1/models/<name>/labels/<label>`).
ModelName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+$")]
LabelName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+$")]
Port = Annotated[int, Field(ge=1, le=65535)]
RELATIVE_RULES = ("latest", "previous")


def _label_rule(value: Any) -> str | int:
    """A label's rule: `latest`, `previous` (among the served versions) or a version number."""
    if isinstance(value, str) and value in RELATIVE_RULES:
        return value
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    raise ValueError(f"expected 'latest', 'previous' or a version number (a positive integer), "
                     f"got {value!r}")


LabelRule = Annotated[str | int, PlainValidator(_label_rule)]


class VersionPolicy(Strict):
    """Which exported versions TF Serving loads: exactly one of `latest`, `all`, `specific`.

    Written `{latest: 2}`, `all` (or `{all: true}`) or `{specific: [3, 4]}`; `{}` is
    `{latest: 1}`, TF Serving's own default (the newest version only).
    """

    latest: PositiveInt | None = None  # the newest N exported versions
    all: bool = False  # every exported version
    specific: list[PositiveInt] | None = None  # these versions (each must be exported)

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        if data == "all":
            return {"all": True}
        if isinstance(data, str):
            raise ValueError(f"expected {{latest: N}}, all or {{specific: [...]}}, got {data!r}")
        if isinstance(data, dict) and not data:
            return {"latest": 1}
        return data

    @field_validator("specific")
    @classmethod
    def _ascending(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and (not value or value != sorted(set(value))):
            raise ValueError(f"must list at least one version, ascending and without "
                             f"repeats, got {value}")
        return value

    @model_validator(mode="after")
    def _exactly_one(self) -> VersionPolicy:
        chosen = [k for k, on in (("latest", self.latest is not None), ("all", self.all),
                                  ("specific", self.specific is not None)) if on]
        if len(chosen) != 1:
            raise ValueError(f"give exactly one of latest: N, all, specific: [...]; got "
                             f"{chosen or 'none'}")
        return self

    def describe(self) -> str:
        """The policy in the config's own words, e.g. `latest: 2`."""
        if self.latest is not None:
            return f"latest: {self.latest}"
        return "all" if self.all else f"specific: {self.specific}"


class BatchingConfig(Strict):
    """Server-side request batching (`--enable_batching`), TF Serving's `BatchingParameters`.

    A request with more rows than `max_batch_size` is refused by TF Serving while batching is
    on ("Task size N is larger than maximum input batch size", TensorFlow's
    shared_batch_scheduler.h), so it is also the largest request a client may send.
    """

    enabled: bool = True
    max_batch_size: PositiveInt = 1024
    # TF Serving's batching guide: slightly above zero (1 ms) smooths batch sizes at low load.
    batch_timeout_micros: Annotated[int, Field(ge=0)] = 1000
    num_batch_threads: PositiveInt = 4
    # Queue length in batches; None: num_batch_threads, the batching guide's advice for online
    # serving with bounded latency (a full queue refuses, and a client can try another replica).
    max_enqueued_batches: PositiveInt | None = None
    # Batches are padded up to the next allowed size (fewer shapes to compile); TF Serving needs
    # them ascending with the last equal to max_batch_size. Empty: any size.
    allowed_batch_sizes: list[PositiveInt] = []

    @field_validator("allowed_batch_sizes")
    @classmethod
    def _tf_serving_rule(cls, value: list[int], info: ValidationInfo) -> list[int]:
        if not value:
            return value
        if value != sorted(set(value)):
            raise ValueError(f"must be strictly ascending, got {value}")
        largest = info.data.get("max_batch_size")
        if largest is not None and value[-1] != largest:
            raise ValueError(f"the last size must equal max_batch_size ({largest}), as TF "
                             f"Serving requires; got {value}")
        return value

    @property
    def queue_batches(self) -> int:
        """`max_enqueued_batches`, or `num_batch_threads` when not set."""
        return self.max_enqueued_batches or self.num_batch_threads


class MonitoringConfig(Strict):
    """Prometheus metrics, served on the REST port at `path` (TF Serving's `MonitoringConfig`)."""

    prometheus: bool = True
    path: Annotated[str, Field(pattern=r"^/[A-Za-z0-9_./-]*$")] = "/monitoring/prometheus/metrics"


class RankingTerm(Strict):
    """One served output in the ranking score: `weight` and `offset` applied to `output`."""

    output: str  # a task name, or ESMM's ctcvr_name
    weight: FiniteFloat = 1.0  # product: the exponent; sum: the factor
    offset: FiniteFloat = 0.0  # added to the output first, e.g. 1 for (1 + watch_time)


class RankingScore(Strict):
    """`ranking_score`: one more output of the export, fused from the served outputs.

    `product`: prod_i max(offset_i + y_i, RANKING_FLOOR) ** weight_i;
    `sum`: sum_i weight_i * (offset_i + y_i); y_i are the served outputs (probabilities, and
    regression values in the label's own unit).
    """

    combine: Literal["product", "sum"] = "product"
    terms: Annotated[list[RankingTerm], Field(min_length=1)]


class ServingConfig(Strict):
    """How TF Serving serves this project's exports.

    `labels` maps a label to a rule: `latest` (the newest served version), `previous` (the one
    before it) or a fixed version number. A label may only name a version the policy serves:
    TF Serving refuses a label on a version that is not loaded.
    """

    model_name: ModelName | None = None  # the name clients use; None: model.name
    version_policy: VersionPolicy = VersionPolicy(latest=1)
    labels: dict[LabelName, LabelRule] = {}
    batching: BatchingConfig = BatchingConfig()
    monitoring: MonitoringConfig = MonitoringConfig()
    grpc_port: Port = 8500  # TF Serving's --port default
    rest_port: Port = 8501  # the port TF Serving's documentation and image use for REST
    # Seconds between TF Serving's reads of models.config (new labels after an export); 0: read
    # it once at start.
    config_poll_seconds: Annotated[int, Field(ge=0)] = 60
    warmup_size: PositiveInt = 64  # rows per warmup request replayed when a version loads
    ranking_score: RankingScore | None = None  # None: no `ranking_score` output

    @field_validator("labels")
    @classmethod
    def _served_by_policy(cls, value: dict[str, str | int], info: ValidationInfo
                          ) -> dict[str, str | int]:
        policy = info.data.get("version_policy")
        if policy is None:
            return value  # the policy has its own error
        for label, rule in value.items():
            if rule == "previous" and policy.latest is not None and policy.latest < 2:
                raise ValueError(f"label {label!r} is 'previous', but version_policy "
                                 f"{policy.describe()} serves only the newest version; set "
                                 f"version_policy.latest to 2 or more")
            if rule == "previous" and policy.specific is not None and len(policy.specific) < 2:
                raise ValueError(f"label {label!r} is 'previous', but version_policy "
                                 f"{policy.describe()} serves one version")
            if isinstance(rule, int) and policy.specific is not None \
                    and rule not in policy.specific:
                raise ValueError(f"label {label!r} names version {rule}, which version_policy "
                                 f"{policy.describe()} does not serve; TF Serving labels only "
                                 f"versions it serves")
        return value

    @field_validator("rest_port")
    @classmethod
    def _ports_differ(cls, value: int, info: ValidationInfo) -> int:
        if value == info.data.get("grpc_port"):
            raise ValueError(f"must differ from grpc_port ({value}): TF Serving does not serve "
                             f"REST on its gRPC port")
        return value
