"""Starts and stops the TF Serving double: version manager, REST server, gRPC server.

`start_server` loads every model's versions (warmup included) before it returns, then serves
REST (werkzeug, a thread per connection) and gRPC (grpcio, a thread pool) until `stop()`, while
a background thread polls the base paths every `poll_seconds`. `project_model_config` builds
the model config of a project as `multitower serving-config` does; `read_model_config_file`
and `model_config_file_reloader` read a text `ModelServerConfig` as TF Serving reads
`--model_config_file` (re-read when its modification time changes).
"""

from __future__ import annotations

import threading

import tensorflow as tf
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from multitower.config import Config
from multitower.config.serving import ServingConfig
from multitower.errors import MultitowerError
from multitower.storage import enable_filesystems
from serving.double.grpc_service import create_grpc_server
from serving.double.metrics import ServingMetrics
from serving.double.model_config import ModelConfigError
from serving.double.models import (
    AVAILABLE,
    END,
    ConfigReloader,
    LabelResolver,
    LoadHook,
    ModelVersions,
    VersionManager,
    VersionStatus,
)
from serving.double.rest import RestApi, create_rest_server
from serving.tfs_config import MODELS_CONFIG, build_serving_files

NOTICE = ("multitower serve: a double of TF Serving (its REST and gRPC APIs, its version "
          "policy, labels and warmup) for laptops and tests, not for production, which runs "
          "TF Serving itself")
ModelServerConfig = model_server_config_pb2.ModelServerConfig


class ServeError(MultitowerError):
    """The double cannot start (a port taken), or a wait for a version failed."""


def project_model_config(config: Config) -> tuple[ModelServerConfig, LabelResolver]:
    """The project's `models.config`, built as `serving-config` builds it, and its label rules.

    Returns:
        `(config, resolver)`: the resolver resolves the `serving.labels` rules again against
        the versions exported now (`build_serving_files`), as after a new `serving-config`.

    Raises:
        ServingConfigError: A label or a `specific` version does not fit the exports.
    """
    files = build_serving_files(config, ".")
    model_config = text_format.Parse(files.files[MODELS_CONFIG], ModelServerConfig())

    def resolve_labels() -> dict[str, dict[str, int]]:
        result = build_serving_files(config, ".")
        return {result.model_name: dict(result.labels)}

    return model_config, resolve_labels


def read_model_config_file(path: str) -> ModelServerConfig:
    """A text `ModelServerConfig` file (TF Serving's `--model_config_file`).

    Raises:
        ModelConfigError: The file is missing or does not parse; the message names it.
    """
    try:
        with tf.io.gfile.GFile(path, "r") as f:
            return text_format.Parse(f.read(), ModelServerConfig())
    except tf.errors.NotFoundError:
        raise ModelConfigError(f"{path}: no such model config file") from None
    except text_format.ParseError as err:
        raise ModelConfigError(f"{path}: not a text ModelServerConfig: {err}") from None


def model_config_file_reloader(path: str) -> ConfigReloader:
    """A reloader that re-reads `path` whenever its modification time changes."""
    seen = {"mtime": _mtime(path)}

    def reload() -> ModelServerConfig | None:
        mtime = _mtime(path)
        if mtime == seen["mtime"]:
            return None
        seen["mtime"] = mtime
        return read_model_config_file(path)

    return reload


def _mtime(path: str) -> int | None:
    try:
        return tf.io.gfile.stat(path).mtime_nsec
    except tf.errors.NotFoundError:
        return None


class RunningServer:
    """A started double: its ports, its models, and `stop()`. Also a context manager."""

    def __init__(self, manager: VersionManager, rest_server: object, grpc_server: object,
                 host: str, rest_port: int, grpc_port: int,
                 metrics: ServingMetrics | None, monitoring_path: str | None) -> None:
        self.manager = manager
        self.metrics = metrics
        self.host = host
        self.rest_port = rest_port
        self.grpc_port = grpc_port
        self.monitoring_path = monitoring_path
        self._rest_server = rest_server
        self._grpc_server = grpc_server
        self._rest_thread = threading.Thread(target=rest_server.serve_forever,
                                             name="multitower-serve-rest", daemon=True)
        self._stopped = False

    def _start(self) -> None:
        self._grpc_server.start()
        self._rest_thread.start()

    @property
    def rest_url(self) -> str:
        """`http://host:port`, the REST API's root."""
        return f"http://{self.host}:{self.rest_port}"

    @property
    def grpc_target(self) -> str:
        """`host:port`, for `grpc.insecure_channel`."""
        return f"{self.host}:{self.grpc_port}"

    def _model(self, name: str) -> ModelVersions:
        model = self.manager.model(name)
        if model is None:
            raise ServeError(f"no model {name!r} is served (served: {self.manager.names})")
        return model

    def statuses(self, model: str) -> list[VersionStatus]:
        """Every version's status, newest first (what `GetModelStatus` answers)."""
        return self._model(model).statuses()

    def labels(self, model: str) -> dict[str, int]:
        """The labels in force, `{label: version}`."""
        return self._model(model).labels

    def wait_for_version(self, model: str, version: int, state: str = AVAILABLE,
                         timeout: float = 60.0) -> VersionStatus:
        """Waits until `version` of `model` reaches `state` (START, LOADING, AVAILABLE...).

        Raises:
            ServeError: The version ended (END) without reaching it, or `timeout` passed.
        """
        def reached(versions: ModelVersions) -> bool:
            found = {s.version: s for s in versions.statuses()}.get(version)
            return found is not None and found.state in (state, END)

        if not self._model(model).wait(reached, timeout):
            raise ServeError(f"model {model}: version {version} did not reach {state} within "
                             f"{timeout} s: {self.statuses(model)}")
        status = next(s for s in self.statuses(model) if s.version == version)
        if status.state != state:
            raise ServeError(f"model {model}: version {version} is {status.state} "
                             f"({status.error_code}: {status.error_message}), not {state}")
        return status

    def wait_for_label(self, model: str, label: str, version: int, timeout: float = 60.0
                       ) -> None:
        """Waits until `label` names `version`.

        Raises:
            ServeError: It does not within `timeout` seconds.
        """
        if not self._model(model).wait(lambda m: m.labels.get(label) == version, timeout):
            raise ServeError(f"model {model}: label {label!r} did not move to version "
                             f"{version} within {timeout} s (labels: {self.labels(model)})")

    def describe(self) -> list[str]:
        """One line per model (versions, labels, ports), then the metrics' address."""
        lines = []
        for name in self.manager.names:
            statuses = self.statuses(name)
            available = sorted(s.version for s in statuses if s.state == AVAILABLE)
            failed = sorted(s.version for s in statuses if s.error_code != "OK")
            labels = ", ".join(f"{k}: {v}" for k, v in sorted(self.labels(name).items()))
            lines.append(f"model {name}: available versions {available}"
                         + (f", failed versions {failed}" if failed else "")
                         + f"; labels {{{labels}}}; rest_port {self.rest_port}, "
                           f"grpc_port {self.grpc_port} on {self.host}")
        if self.monitoring_path is not None:
            lines.append(f"Prometheus metrics at {self.rest_url}{self.monitoring_path}")
        return lines

    def stop(self, grace: float = 1.0) -> None:
        """Stops serving (running requests get `grace` seconds), then unloads every version."""
        if self._stopped:
            return
        self._stopped = True
        stopping = self._grpc_server.stop(grace)
        self._rest_server.shutdown()
        self._rest_server.server_close()
        stopping.wait()
        self.manager.stop()

    def __enter__(self) -> RunningServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def start_server(model_server_config: ModelServerConfig, *, serving_config: ServingConfig,
                 rest_port: int = 0, grpc_port: int = 0, poll_seconds: float = 1.0,
                 host: str = "127.0.0.1", label_resolver: LabelResolver | None = None,
                 config_reloader: ConfigReloader | None = None,
                 before_available: LoadHook | None = None, source: str = "model config"
                 ) -> RunningServer:
    """Starts the double; the first loads (and warmups) are done when it returns.

    Args:
        model_server_config: The models (TF Serving's `ModelServerConfig`, a model_config_list).
        serving_config: The project's `serving:` section: batching (`max_batch_size` refuses
            larger requests when enabled) and monitoring (Prometheus path on the REST port).
        rest_port: REST port; 0 lets the OS choose a free one (see `RunningServer.rest_port`).
        grpc_port: gRPC port; 0 likewise.
        poll_seconds: Seconds between two polls of the base paths.
        host: The address both servers listen on.
        label_resolver: See `VersionManager`: labels resolved again after each poll.
        config_reloader: See `VersionManager`: a new config taken before each poll.
        before_available: See `VersionManager`: called before a loaded version serves.
        source: Where the config comes from, for messages.

    Returns:
        The running server.

    Raises:
        ModelConfigError: The config cannot be served.
        ServeError: A port cannot be bound.
    """
    enable_filesystems(model.base_path for model in model_server_config.model_config_list.config)
    metrics = ServingMetrics() if serving_config.monitoring.prometheus else None
    batching = serving_config.batching
    manager = VersionManager(
        model_server_config, max_batch_size=batching.max_batch_size if batching.enabled else None,
        poll_seconds=poll_seconds, label_resolver=label_resolver,
        config_reloader=config_reloader, before_available=before_available, source=source)
    monitoring_path = serving_config.monitoring.path if metrics is not None else None
    try:
        rest_server = create_rest_server(RestApi(manager, metrics, monitoring_path), host,
                                         rest_port)
    except OSError as err:
        raise ServeError(f"cannot serve REST on {host}:{rest_port}: {err.strerror or err}; "
                         f"choose another --rest-port (0: any free port)") from None
    grpc_server = create_grpc_server(manager, metrics)
    try:
        bound = grpc_server.add_insecure_port(f"{host}:{grpc_port}")
    except RuntimeError as err:  # grpcio raises when the address cannot be bound
        bound, reason = 0, str(err)
    else:
        reason = "address in use or not available"
    if not bound:
        rest_server.server_close()
        raise ServeError(f"cannot serve gRPC on {host}:{grpc_port}: {reason}; choose another "
                         f"--grpc-port (0: any free port)")
    server = RunningServer(manager, rest_server, grpc_server, host, rest_server.server_port,
                           bound, metrics, monitoring_path)
    try:
        manager.start()
        server._start()
    except BaseException:
        rest_server.server_close()
        grpc_server.stop(None)
        manager.stop()
        raise
    return server

