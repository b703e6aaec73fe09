"""The version manager of the TF Serving double: which versions of which models serve, and when.

It follows TF Serving's `ServerCore` for a `ModelConfigList` (tensorflow_serving/core and
model_servers/server_core.cc):

- the file system source: every `poll_seconds` (TF Serving's `--file_system_poll_wait_seconds`)
  the integer-named folders under each `base_path` are listed (`tf.io.gfile`: `s3://` and
  `gs://` work) and the version policy names the aspired ones: `latest` (the N highest
  folders, 1 when unset), `all`, or `specific` (those that exist);
- the manager, with TF Serving's default `AvailabilityPreservingPolicy`: first unload the
  lowest version the policy no longer names if a named version serves (or none is named, or
  several unnamed ones serve); else load the highest named version not loaded yet. So
  `latest: 1` serves the old version until the new one is AVAILABLE, and `latest: 2` unloads
  the oldest as soon as the newest is noticed (the previous one keeps serving). A load is
  `Servable.load` (the SavedModel, then its warmup); a version whose load or warmup fails goes
  to END with the error as its status and is not retried (TF Serving retries
  `--max_num_load_retries` times, a minute apart, first);
- the state monitor: every version ever seen keeps its last state (START, LOADING,
  AVAILABLE, UNLOADING, END), newest first;
- labels: a label already assigned may only move to an AVAILABLE version, else the whole new
  label map is refused and the old one kept until a later poll; a new label may name a version
  not loaded yet (`--allow_version_labels_for_unavailable_models`, set by `serving-config`);
- requests (`ServableRequestFromModelSpec`, `GetServableHandle`): a label first (else
  INVALID_ARGUMENT "Unrecognized servable version label: L"), then the AVAILABLE version asked
  for or the highest one (else NOT_FOUND "Servable not found for request: Specific(name, v)" or
  "Latest(name)"). `acquire` keeps its version loaded until the request ends: an unload
  (UNLOADING) waits for the requests running on it.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass

import grpc
import tensorflow as tf
from tensorflow_serving.config import file_system_storage_path_source_pb2 as source_pb2
from tensorflow_serving.config import model_server_config_pb2

from multitower.errors import MultitowerError
from serving.double.model_config import check_model_server_config
from serving.double.servable import Servable, TFServingError, invalid, status_from_exception

log = logging.getLogger("multitower.serve")

START, LOADING, AVAILABLE, UNLOADING, END = "START", "LOADING", "AVAILABLE", "UNLOADING", "END"
LoadHook = Callable[[str, int], None]


@dataclass(frozen=True)
class VersionStatus:
    """A version's state as `GetModelStatus` reports it; `error_code` is a gRPC code name."""

    version: int
    state: str
    error_code: str = "OK"
    error_message: str = ""


class _Version:
    """One version the manager knows: its state, its servable while loaded, its requests."""

    def __init__(self, version: int, path: str) -> None:
        self.version = version
        self.path = path
        self.state = START
        self.servable: Servable | None = None
        self.error: TFServingError | None = None
        self.in_flight = 0

    def status(self) -> VersionStatus:
        if self.error is None:
            return VersionStatus(self.version, self.state)
        return VersionStatus(self.version, self.state, self.error.code.name, self.error.message)


def list_versions(base_path: str) -> dict[int, str]:
    """`{version: folder}` of the integer-named folders under `base_path` (none if missing)."""
    if not tf.io.gfile.isdir(base_path):
        return {}
    found: dict[int, str] = {}
    for name in sorted(n.rstrip("/") for n in tf.io.gfile.listdir(base_path)):
        if name.isdigit():
            found.setdefault(int(name), f"{base_path.rstrip('/')}/{name}")
    return found


def aspired_versions(policy: source_pb2.FileSystemStoragePathSourceConfig.ServableVersionPolicy,
                     on_disk: Iterable[int]) -> set[int]:
    """The versions the policy names among those on disk (`latest` counts every folder)."""
    on_disk = sorted(on_disk)
    choice = policy.WhichOneof("policy_choice")
    if choice == "all":
        return set(on_disk)
    if choice == "specific":
        return set(policy.specific.versions) & set(on_disk)
    count = (policy.latest.num_versions if choice == "latest" else 0) or 1
    return set(on_disk[-count:])


class ModelVersions:
    """The versions of one model: polled, loaded, unloaded, labelled; safe across threads."""

    def __init__(self, config: model_server_config_pb2.ModelConfig, *,
                 max_batch_size: int | None = None, before_available: LoadHook | None = None
                 ) -> None:
        self.name = config.name
        self._max_batch_size = max_batch_size
        self._before_available = before_available
        self._changed = threading.Condition()
        self._versions: dict[int, _Version] = {}
        self._aspired: set[int] = set()
        self._labels: dict[str, int] = {}
        self._wanted_labels: dict[str, int] = {}
        self._label_refusal: str | None = None
        self.retired = False
        self.configure(config)

    def configure(self, config: model_server_config_pb2.ModelConfig) -> None:
        """Takes the base path, version policy and labels of a (re-read) model config."""
        with self._changed:
            self.base_path = config.base_path
            self.policy = config.model_version_policy
            self._wanted_labels = dict(config.version_labels)
            self.retired = False

    def retire(self) -> None:
        """The model left the config: the next poll unloads every version."""
        with self._changed:
            self.retired = True
            self._wanted_labels = {}

    @property
    def labels(self) -> dict[str, int]:
        """The labels in force: `{label: version}`."""
        with self._changed:
            return dict(self._labels)

    def set_labels(self, labels: Mapping[str, int]) -> None:
        """Asks for these labels; they apply now if TF Serving would accept them, else later."""
        with self._changed:
            self._wanted_labels = dict(labels)
            self._apply_labels()

    def poll(self) -> None:
        """Lists the base path, then loads and unloads until the policy is satisfied."""
        on_disk = {} if self.retired else list_versions(self.base_path)
        with self._changed:
            self._aspired = set() if self.retired else aspired_versions(self.policy, on_disk)
            for version in self._aspired:
                known = self._versions.get(version)
                if known is None or (known.state == END and known.error is None):
                    self._versions[version] = _Version(version, on_disk[version])
            for version, known in self._versions.items():
                if version not in self._aspired and known.state == START:
                    known.state = END  # named once, never loaded, no longer named
            self._changed.notify_all()
        while (action := self._next_action()) is not None:
            kind, version = action
            if kind == "unload":
                self._unload(version)
            else:
                self._load(version)
        with self._changed:
            self._apply_labels()

    def unload_all(self) -> None:
        """Unloads every loaded version (server stop), waiting for their requests."""
        with self._changed:
            loaded = [v for v, known in self._versions.items() if known.state == AVAILABLE]
        for version in loaded:
            self._unload(version)

    def _next_action(self) -> tuple[str, int] | None:
        """TF Serving's `AvailabilityPreservingPolicy::GetNextAction`."""
        with self._changed:
            states = {v: known.state for v, known in self._versions.items()}
            aspired_serving = any(states[v] == AVAILABLE for v in self._aspired)
            unaspired_serving = sorted(v for v, state in states.items()
                                       if v not in self._aspired and state == AVAILABLE)
            if unaspired_serving and (not self._aspired or aspired_serving
                                      or len(unaspired_serving) > 1):
                return "unload", unaspired_serving[0]
            new = [v for v in self._aspired if states[v] == START]
            return ("load", max(new)) if new else None

    def _load(self, version: int) -> None:
        with self._changed:
            known = self._versions[version]
            known.state = LOADING
            self._changed.notify_all()
        log.info("model %s: loading version %d from %s", self.name, version, known.path)
        try:
            servable = Servable.load(self.name, version, known.path, self._max_batch_size)
            if self._before_available is not None:
                self._before_available(self.name, version)
        except Exception as err:  # the version's status, as TF Serving reports it
            status = status_from_exception(err)
            with self._changed:
                known.state, known.error = END, status
                self._changed.notify_all()
            log.warning("model %s: version %d failed to load, it will not serve: %s: %s",
                        self.name, version, status.code.name, status.message)
            return
        with self._changed:
            known.servable, known.state = servable, AVAILABLE
            self._changed.notify_all()
        log.info("model %s: version %d is AVAILABLE", self.name, version)

    def _unload(self, version: int) -> None:
        with self._changed:
            known = self._versions[version]
            known.state = UNLOADING  # no new request gets it; running ones finish on it
            self._changed.notify_all()
            self._changed.wait_for(lambda: known.in_flight == 0)
            known.servable, known.state = None, END
            self._changed.notify_all()
        log.info("model %s: version %d unloaded", self.name, version)

    def _apply_labels(self) -> None:
        """Applies the wanted labels if TF Serving would (`UpdateModelVersionLabelMap`)."""
        if self._wanted_labels == self._labels:
            self._label_refusal = None
            return
        for label, version in sorted(self._wanted_labels.items()):
            current = self._labels.get(label)
            known = self._versions.get(version)
            if current is not None and current != version and (
                    known is None or known.state != AVAILABLE):
                refusal = (f"Request to assign label to version {version} of model "
                           f"{self.name}, which is not currently available for inference")
                if refusal != self._label_refusal:
                    log.warning("model %s: labels %s kept: %s", self.name, self._labels, refusal)
                self._label_refusal = refusal
                return
        self._labels, self._label_refusal = dict(self._wanted_labels), None
        self._changed.notify_all()
        log.info("model %s: labels %s", self.name, self._labels)

    @contextlib.contextmanager
    def acquire(self, version: int | None = None, label: str | None = None
                ) -> Iterator[Servable]:
        """The servable a request names; it stays loaded until the `with` block ends.

        Raises:
            TFServingError: An unknown label (INVALID_ARGUMENT), or no AVAILABLE version
                matches (NOT_FOUND), with TF Serving's messages.
        """
        with self._changed:
            if label is not None:
                if label not in self._labels:
                    raise invalid(f"Unrecognized servable version label: {label}")
                version = self._labels[label]
            if version is not None:
                known = self._versions.get(version)
                if known is None or known.state != AVAILABLE:
                    raise not_found(self.name, version)
            else:
                serving = [v for v, k in self._versions.items() if k.state == AVAILABLE]
                if not serving:
                    raise not_found(self.name, None)
                known = self._versions[max(serving)]
            known.in_flight += 1
            servable = known.servable
        try:
            yield servable
        finally:
            with self._changed:
                known.in_flight -= 1
                if not known.in_flight:
                    self._changed.notify_all()

    def statuses(self) -> list[VersionStatus]:
        """Every version seen, newest first (TF Serving's `VersionMap` order)."""
        with self._changed:
            return [self._versions[v].status() for v in sorted(self._versions, reverse=True)]

    def wait(self, condition: Callable[[ModelVersions], bool], timeout: float) -> bool:
        """Waits until `condition(self)` holds (checked at each state change); False on timeout."""
        with self._changed:
            return self._changed.wait_for(lambda: condition(self), timeout)


def not_found(name: str, version: int | None) -> TFServingError:
    """NOT_FOUND as `GetServableHandle` words it (`ServableRequest::DebugString`)."""
    request = f"Specific({name}, {version})" if version is not None else f"Latest({name})"
    return TFServingError(grpc.StatusCode.NOT_FOUND, f"Servable not found for request: {request}")


LabelResolver = Callable[[], Mapping[str, Mapping[str, int]]]
ConfigReloader = Callable[[], model_server_config_pb2.ModelServerConfig | None]


class VersionManager:
    """Every model of a `ModelServerConfig`, polled in a background thread.

    Args:
        config: The models to serve (checked by `check_model_server_config`).
        max_batch_size: With batching on, the largest request in rows; None: no limit.
        poll_seconds: Seconds between two polls of the base paths.
        label_resolver: Called after each poll: `{model: {label: version}}` to apply (e.g.
            `serving-config`'s rules resolved again); a `MultitowerError` keeps the labels.
        config_reloader: Called before each poll: a new config to apply (models, policies,
            labels), or None when unchanged; a `MultitowerError` keeps the old config.
        before_available: Called with (model, version) after a load and its warmup, before
            the version serves (tests hold a version in LOADING with it).
        source: The config's origin, for messages.
    """

    def __init__(self, config: model_server_config_pb2.ModelServerConfig, *,
                 max_batch_size: int | None = None, poll_seconds: float = 1.0,
                 label_resolver: LabelResolver | None = None,
                 config_reloader: ConfigReloader | None = None,
                 before_available: LoadHook | None = None, source: str = "model config"
                 ) -> None:
        check_model_server_config(config, source)
        self._options = {"max_batch_size": max_batch_size, "before_available": before_available}
        self._poll_seconds = poll_seconds
        self._label_resolver = label_resolver
        self._config_reloader = config_reloader
        self._source = source
        self._models: dict[str, ModelVersions] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._apply_config(config)

    def _apply_config(self, config: model_server_config_pb2.ModelServerConfig) -> None:
        wanted = {model.name: model for model in config.model_config_list.config}
        models = dict(self._models)
        for name, model in wanted.items():
            if name in models:
                models[name].configure(model)
            else:
                models[name] = ModelVersions(model, **self._options)
        for name in set(models) - set(wanted):
            models[name].retire()  # its versions end; their states stay visible
        self._models = models  # one assignment: readers see the old or the new dict

    @property
    def names(self) -> list[str]:
        """The served model names (not the retired ones)."""
        return [name for name, model in self._models.items() if not model.retired]

    def model(self, name: str) -> ModelVersions | None:
        """The model called `name`, or None."""
        return self._models.get(name)

    def start(self) -> None:
        """Polls once (the first loads happen before this returns), then keeps polling."""
        self.poll()
        self._thread = threading.Thread(target=self._run, name="multitower-serve-poll",
                                        daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._poll_seconds):
            self.poll()

    def poll(self) -> None:
        """One round: config reload, base path listing and loads, label resolution."""
        if self._config_reloader is not None:
            try:
                config = self._config_reloader()
                if config is not None:
                    check_model_server_config(config, self._source)
                    self._apply_config(config)
            except MultitowerError as err:
                log.warning("the model config was not reloaded, the old one stays: %s", err)
        for model in list(self._models.values()):
            try:
                model.poll()
            except Exception:  # a bad poll must not stop the server: log, retry next time
                log.exception("model %s: polling %s failed", model.name, model.base_path)
        if self._label_resolver is not None:
            try:
                resolved = self._label_resolver()
            except MultitowerError as err:
                log.warning("labels not resolved, the old ones stay: %s", err)
                return
            for name, labels in resolved.items():
                if name in self._models:
                    self._models[name].set_labels(labels)

    def stop(self) -> None:
        """Stops polling and unloads every version (after the requests running on them)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        for model in self._models.values():
            model.unload_all()

    @contextlib.contextmanager
    def acquire(self, name: str, version: int | None = None, label: str | None = None
                ) -> Iterator[Servable]:
        """The servable a request names (see `ModelVersions.acquire`).

        Raises:
            TFServingError: TF Serving's status for an unknown model, label or version.
        """
        model = self._models.get(name)
        if model is None:
            if label is not None:
                raise invalid(f"Unrecognized servable version label: {label}")
            raise not_found(name, version)
        with model.acquire(version, label) as servable:
            yield servable

    def statuses(self, name: str, version: int | None = None) -> list[VersionStatus]:
        """`GetModelStatus`: one version's status, or every version's (newest first).

        Raises:
            TFServingError: NOT_FOUND with TF Serving's messages.
        """
        model = self._models.get(name)
        found = model.statuses() if model is not None else []
        if version is not None:
            found = [status for status in found if status.version == version]
            if not found:
                raise TFServingError(grpc.StatusCode.NOT_FOUND,
                                     f"Could not find version {version} of model {name}")
        elif not found:
            raise TFServingError(grpc.StatusCode.NOT_FOUND,
                                 f"Could not find any versions of model {name}")
        return found
