"""`k8s:`: how the steps run on a Kubernetes cluster: image, namespace, resources, schedule.

Optional: a config without it runs locally only, and `multitower k8s render` refuses it. Every
name here ends up in an object name, a label or a reference, so each is checked against the
rule the API server applies to it (DNS-1123 labels and subdomains, label values, resource
quantities, the CronJob's cron syntax and IANA time zone), and an error names the key instead
of surfacing later as a 422 from the cluster. Which storage paths a cluster can use (object
storage, or absolute paths under a declared volume) is checked when objects are rendered
(`k8s/storage.py`): it needs `data` and `train` too.

Credentials never appear here: `credentials_secret` names a Secret whose keys become the pods'
environment (`envFrom: secretRef`); `env` is for plain settings and refuses credential names.
"""

from __future__ import annotations

import re
import zoneinfo
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, field_validator, model_validator

from multitower.config.fields import PositiveInt, Strict

# Kubernetes' own patterns (k8s.io/apimachinery/pkg/util/validation, resource.Quantity).
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"  # RFC 1123 label, at most 63 characters
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"  # <= 253
QUANTITY = (r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
            r"(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$")
LABEL_VALUE = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"  # at most 63 characters
QUALIFIED_NAME = (r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
                  r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
ENV_NAME = r"^[-._a-zA-Z][-._a-zA-Z0-9]*$"
# Names that hold credentials: they belong in the Secret, never in the rendered YAML.
CREDENTIAL_NAME = re.compile(
    r"SECRET|PASSWORD|PASSWD|TOKEN|CREDENTIAL|ACCESS_KEY|PRIVATE_KEY|API_KEY|SESSION_KEY",
    re.IGNORECASE)
# The app name prefixes every object; 30 characters leave room for the longest derived name,
# a TFJob worker's pod `<name>-train-YYYY-MM-DD-worker-<index>` (at most 63).
APP_NAME_MAX = 30
DNS1035_LABEL = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"  # Service and TFJob names start with a letter

DnsLabel = Annotated[str, Field(pattern=DNS_LABEL, max_length=63)]
DnsSubdomain = Annotated[str, Field(pattern=DNS_SUBDOMAIN, max_length=253)]
Quantity = Annotated[str, Field(pattern=QUANTITY)]
NonNegativeInt = Annotated[int, Field(ge=0)]
AppName = Annotated[str, Field(pattern=DNS1035_LABEL, max_length=APP_NAME_MAX)]

_MONTHS = ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"]
_DAYS = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"]
# (name, lowest, highest, names) of the five fields, as the CronJob controller's parser
# (robfig/cron v3, standard spec) reads them.
_CRON_FIELDS = (("minute", 0, 59, None), ("hour", 0, 23, None), ("day of month", 1, 31, None),
                ("month", 1, 12, _MONTHS), ("day of week", 0, 6, _DAYS))
CRON_MACROS = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")


def _cron_value(text: str, field: str, low: int, high: int, names: list[str] | None) -> int:
    if names and text.upper() in names:
        return names.index(text.upper()) + low
    if not text.isdigit():
        raise ValueError(f"{field}: {text!r} is not a number" + (
            f" or one of {', '.join(names)}" if names else ""))
    value = int(text)
    if not low <= value <= high:
        raise ValueError(f"{field}: {value} is outside {low}-{high}")
    return value


def check_cron(schedule: str) -> str:
    """Returns `schedule` if the CronJob controller accepts it (5 fields, or a macro).

    Raises:
        ValueError: It is not a valid schedule; the message names the field at fault.
    """
    text = schedule.strip()
    if text.upper().startswith(("TZ=", "CRON_TZ=")):
        raise ValueError("put the time zone in k8s.daily.time_zone, not in the schedule "
                         "(Kubernetes refuses TZ= in spec.schedule when spec.timeZone is set)")
    if text.startswith("@"):
        if text.lower() not in CRON_MACROS:
            raise ValueError(f"{text!r} is not one of {', '.join(CRON_MACROS)}")
        return schedule
    parts = text.split()
    if len(parts) != 5:
        raise ValueError(f"expected 5 fields (minute hour day-of-month month day-of-week), "
                         f"got {len(parts)} in {schedule!r}")
    for part, (field, low, high, names) in zip(parts, _CRON_FIELDS, strict=True):
        for item in part.split(","):
            span, _, step = item.partition("/")
            if step and (not step.isdigit() or int(step) == 0):
                raise ValueError(f"{field}: the step in {item!r} must be a positive number")
            if span in ("*", "?"):
                if span == "?" and field not in ("day of month", "day of week"):
                    raise ValueError(f"{field}: '?' is allowed in the day fields only")
                continue
            first, dash, last = span.partition("-")
            start = _cron_value(first, field, low, high, names)
            end = _cron_value(last, field, low, high, names) if dash else start
            if end < start:
                raise ValueError(f"{field}: the range {span!r} ends before it starts")
    return schedule


def check_time_zone(name: str) -> str:
    """Returns `name` if it is an IANA time zone the API server can load.

    Raises:
        ValueError: It is not (Kubernetes also refuses `Local`).
    """
    if name == "Local" or not re.fullmatch(r"[A-Za-z][A-Za-z0-9_+-]*(/[A-Za-z0-9_+-]+)*", name):
        raise ValueError(f"{name!r} is not an IANA time zone name such as 'Europe/Paris' or "
                         f"'Etc/UTC'")
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        # A machine without a time zone database cannot tell: its form was checked above,
        # and the API server checks the name itself.
        if zoneinfo.available_timezones():
            raise ValueError(f"{name!r} is not an IANA time zone name such as 'Europe/Paris' "
                             f"or 'Etc/UTC'") from None
    return name


def check_image(image: str) -> str:
    """Returns `image` if it is pinned: a tag other than `latest`, or a digest.

    Raises:
        ValueError: It has no tag, or the tag `latest` (the cluster could run another build
            than the one tested).
    """
    if not re.fullmatch(r"[a-z0-9]+([._-]+[a-z0-9]+)*(:[0-9]+)?(/[a-z0-9]+([._-]+[a-z0-9]+)*)*"
                        r"(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(@sha256:[a-f0-9]{64})?", image):
        raise ValueError(f"{image!r} is not an image reference (registry/name:tag)")
    name, _, tag = image.split("@")[0].rpartition(":")
    pinned = "@" in image or (name and "/" not in tag and tag != "latest")
    if not pinned:
        raise ValueError(f"{image!r} is not pinned: give a tag other than 'latest' (or a "
                         f"digest), so the cluster runs the build that was tested")
    return image


CronSchedule = Annotated[str, AfterValidator(check_cron)]
TimeZone = Annotated[str, AfterValidator(check_time_zone)]
Image = Annotated[str, AfterValidator(check_image)]


def _check_labels(value: dict[str, str]) -> dict[str, str]:
    for key, label in value.items():
        if not re.fullmatch(QUALIFIED_NAME, key) or len(key.rpartition("/")[2]) > 63:
            raise ValueError(f"{key!r} is not a label key (name or prefix/name)")
        if not re.fullmatch(LABEL_VALUE, label) or len(label) > 63:
            raise ValueError(f"{key}: {label!r} is not a label value (at most 63 of "
                             f"A-Z a-z 0-9 - _ ., starting and ending alphanumeric)")
    return value


NodeSelector = Annotated[dict[str, str], AfterValidator(_check_labels)]


class Toleration(Strict):
    """A pod toleration (`operator: Exists` matches any value of `key`)."""

    key: Annotated[str, Field(pattern=QUALIFIED_NAME)] | None = None
    operator: Literal["Equal", "Exists"] = "Equal"
    value: Annotated[str, Field(pattern=LABEL_VALUE, max_length=63)] | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = None  # NoExecute only: how long the pod stays

    @model_validator(mode="after")
    def _consistent(self) -> Toleration:
        if self.operator == "Exists" and self.value is not None:
            raise ValueError("a toleration with operator Exists takes no value")
        if self.key is None and self.operator != "Exists":
            raise ValueError("a toleration without a key must use operator Exists")
        if self.toleration_seconds is not None and self.effect != "NoExecute":
            raise ValueError("toleration_seconds applies to effect NoExecute only")
        return self


class Resources(Strict):
    """Requests and limits of one container; limits default to the requests."""

    cpu: Quantity  # request, e.g. "2" or "500m"
    memory: Quantity  # request, e.g. "4Gi"
    cpu_limit: Quantity | None = None
    memory_limit: Quantity | None = None
    scratch: Quantity = "2Gi"  # size limit of the emptyDir behind HOME and TMPDIR


class WorkerResources(Resources):
    """A training worker's resources: the same, plus whole GPUs (`nvidia.com/gpu`)."""

    gpus: NonNegativeInt = 0


class Placement(Strict):
    """Where a step's pods may run, added to the section-wide settings."""

    node_selector: NodeSelector = {}
    tolerations: list[Toleration] = []


class Volume(Strict):
    """A PersistentVolumeClaim mounted in every pod at `mount_path` (read-only in serving)."""

    name: DnsLabel  # the volume's name in the pod
    claim: DnsSubdomain  # the PersistentVolumeClaim, which must exist in the namespace
    mount_path: Annotated[str, Field(pattern=r"^/[^\s:]*$")]
    read_only: bool = False

    @field_validator("mount_path")
    @classmethod
    def _not_root(cls, value: str) -> str:
        if value.rstrip("/") == "":
            raise ValueError("a volume cannot be mounted at /")
        return value.rstrip("/")


class PreprocessSettings(Placement):
    """The preprocess Job: `multitower preprocess --date D` plus Beam's options."""

    resources: Resources = Resources(cpu="2", memory="4Gi")
    # Passed to Beam as they are, e.g. [--runner=FlinkRunner, --flink_master=flink:8081].
    beam_args: list[str] = []
    backoff_limit: NonNegativeInt = 2  # failed pods before the Job fails
    active_deadline_seconds: PositiveInt | None = None
    ttl_seconds_after_finished: NonNegativeInt = 7 * 24 * 3600


class GangScheduling(Strict):
    """TFJob gang scheduling (`runPolicy.schedulingPolicy`): all workers start, or none."""

    min_available: PositiveInt | None = None  # default: every worker
    queue: DnsSubdomain | None = None  # the scheduler's queue (Volcano) or None
    priority_class: DnsSubdomain | None = None  # default: k8s.priority_class
    schedule_timeout_seconds: PositiveInt | None = None
    scheduler_name: DnsSubdomain | None = None  # e.g. volcano; set on the pods when given


class TrainingSettings(Placement):
    """Training: an Indexed Job with a headless Service (`job`) or a Kubeflow TFJob."""

    kind: Literal["job", "tfjob"] = "job"
    workers: PositiveInt = 1
    port: Annotated[int, Field(ge=1024, le=65535)] = 2222  # the workers' gRPC port
    resources: WorkerResources = WorkerResources(cpu="4", memory="16Gi")
    # Whole-cluster relaunches before the day fails: when one worker dies the others fail on
    # their next collective, so each relaunch counts up to `workers` failed pods (or, for a
    # TFJob, container restarts): the backoff limit is max_restarts * workers.
    max_restarts: NonNegativeInt = 3
    active_deadline_seconds: PositiveInt | None = None
    ttl_seconds_after_finished: NonNegativeInt = 7 * 24 * 3600
    gang: GangScheduling | None = None  # tfjob only

    @model_validator(mode="after")
    def _gang_needs_tfjob(self) -> TrainingSettings:
        if self.gang is not None and self.kind != "tfjob":
            raise ValueError("gang: gang scheduling is set on a TFJob (kind: tfjob); an "
                             "Indexed Job has no schedulingPolicy")
        if self.gang is not None and (self.gang.min_available or 0) > self.workers:
            raise ValueError(f"gang.min_available ({self.gang.min_available}) is more than "
                             f"the {self.workers} worker(s)")
        return self


class DailySettings(Placement):
    """The daily CronJob running `multitower submit daily --date yesterday`."""

    schedule: CronSchedule = "0 2 * * *"
    time_zone: TimeZone = "Etc/UTC"  # also what "yesterday" means
    # A run that could not start within this many seconds of its time is skipped, not late.
    starting_deadline_seconds: PositiveInt = 3600
    successful_jobs_history_limit: NonNegativeInt = 3
    failed_jobs_history_limit: NonNegativeInt = 3
    active_deadline_seconds: PositiveInt | None = None
    resources: Resources = Resources(cpu="500m", memory="2Gi")
    # Annotations of the ServiceAccount the CronJob's pod uses (e.g. a cloud identity
    # binding, `iam.gke.io/gcp-service-account`), which it needs to list the exports.
    service_account_annotations: dict[str, str] = {}


class ServingSettings(Placement):
    """The TF Serving Deployment, its Service, autoscaler and disruption budget."""

    image: Image = "tensorflow/serving:2.16.1"  # the official image, same TF as training
    min_replicas: PositiveInt = 2
    max_replicas: PositiveInt = 4
    target_cpu_utilization: Annotated[int, Field(ge=1, le=100)] = 70  # percent of requests
    min_available: PositiveInt = 1  # the PodDisruptionBudget
    resources: Resources = Resources(cpu="2", memory="4Gi")
    # Seconds a new pod may take to load its versions and replay their warmup before its
    # liveness probe starts.
    startup_seconds: PositiveInt = 600

    @model_validator(mode="after")
    def _bounds(self) -> ServingSettings:
        if self.max_replicas < self.min_replicas:
            raise ValueError(f"max_replicas ({self.max_replicas}) is below min_replicas "
                             f"({self.min_replicas})")
        if self.min_available >= self.min_replicas:
            raise ValueError(f"min_available ({self.min_available}) must be below "
                             f"min_replicas ({self.min_replicas}), or no pod could ever be "
                             f"evicted and a node drain would block")
        return self


class K8sConfig(Strict):
    """The cluster side of the project: where and how every step's pods run."""

    name: AppName | None = None  # prefix of every object name; default model.name
    namespace: DnsLabel = "default"
    image: Image  # the project image (Dockerfile), with `multitower` as entrypoint
    gpu_image: Image | None = None  # the training image when training.resources.gpus > 0
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    image_pull_secrets: list[DnsSubdomain] = []
    service_account: DnsSubdomain | None = None  # of the step pods; None: the namespace's
    credentials_secret: DnsSubdomain | None = None  # its keys become environment variables
    env: dict[Annotated[str, Field(pattern=ENV_NAME)], str] = {}  # plain settings only
    priority_class: DnsSubdomain | None = None
    node_selector: NodeSelector = {}  # every pod
    tolerations: list[Toleration] = []  # every pod
    run_as_user: Annotated[int, Field(ge=1)] = 1000  # the image's user; never root
    run_as_group: Annotated[int, Field(ge=1)] = 1000
    volumes: list[Volume] = []
    preprocess: PreprocessSettings = PreprocessSettings()
    training: TrainingSettings = TrainingSettings()
    daily: DailySettings = DailySettings()
    serving: ServingSettings = ServingSettings()

    @field_validator("env")
    @classmethod
    def _no_credentials(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if CREDENTIAL_NAME.search(name):
                raise ValueError(f"{name}: credentials go in the Secret named by "
                                 f"k8s.credentials_secret (passed as envFrom: secretRef), "
                                 f"never inline in the config or the rendered YAML")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> K8sConfig:
        if self.training.resources.gpus and self.gpu_image is None:
            raise ValueError(f"training.resources.gpus is {self.training.resources.gpus} but "
                             f"gpu_image is not set: the CPU image has no CUDA libraries, "
                             f"TensorFlow would silently train on the CPU")
        names = [v.name for v in self.volumes]
        paths = [v.mount_path for v in self.volumes]
        for i, path in enumerate(paths):
            for other in paths[i + 1:]:
                if path == other or path.startswith(other + "/") or other.startswith(path + "/"):
                    raise ValueError(f"volumes: mount paths {path!r} and {other!r} overlap")
        if len(set(names)) != len(names):
            raise ValueError(f"volumes: names must be unique, got {names}")
        return self
