"""The files TF Serving reads, and the `tensorflow_model_server` command line that uses them.

From the `serving:` section and the versions exported under `<train.export_dir>/<model.name>`:

- `models.config`: a text `ModelServerConfig` (name, `base_path` = the export folder, which may
  be `s3://` or `gs://`, `model_platform: "tensorflow"`, the version policy, the labels),
- `batching_parameters.txt`: a text `BatchingParameters` (when batching is on),
- `monitoring.config`: a text `MonitoringConfig` (when Prometheus is on).

Label rules are resolved here, against the versions the policy serves today, so the files
must be written again after each export. TF Serving's documentation for all of it:
tensorflow_serving/g3doc/serving_config.md; its flags are declared in
tensorflow_serving/model_servers/main.cc.
"""

from __future__ import annotations

import os
import shlex
import uuid
from dataclasses import dataclass, field

import tensorflow as tf
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from multitower.config import Config
from multitower.config.serving import BatchingConfig, MonitoringConfig, ServingConfig
from multitower.errors import MultitowerError
from multitower.exports import model_base, versions
from multitower.storage import is_remote

MODELS_CONFIG = "models.config"
BATCHING_PARAMETERS = "batching_parameters.txt"
MONITORING_CONFIG = "monitoring.config"
SERVER_BINARY = "tensorflow_model_server"


class ServingConfigError(MultitowerError, ValueError):
    """The serving section cannot be applied to the exported versions (a label, a version)."""


@dataclass(frozen=True)
class ServingFiles:
    """What `serving-config` writes: file name -> text, and the command line that reads them.

    `served` are the exported versions the policy loads, `labels` each label's version.
    """

    model_name: str
    base_path: str
    exported: list[int]
    served: list[int]
    labels: dict[str, int]
    files: dict[str, str]
    command: list[str] = field(default_factory=list)

    def command_line(self) -> str:
        """The command, quoted for a POSIX shell."""
        return shlex.join(self.command)


def served_versions(serving: ServingConfig, exported: list[int], base: str) -> list[int]:
    """The exported versions TF Serving loads under the version policy, ascending.

    Raises:
        ServingConfigError: A `specific` version is not exported.
    """
    policy = serving.version_policy
    if policy.specific is not None:
        missing = [v for v in policy.specific if v not in exported]
        if missing:
            raise ServingConfigError(
                f"serving.version_policy.specific: version(s) {missing} are not exported under "
                f"{base} (exported: {exported or 'none'}); TF Serving would wait for them")
        return list(policy.specific)
    if policy.all:
        return list(exported)
    return exported[-policy.latest:] if policy.latest else []


def resolve_labels(serving: ServingConfig, served: list[int], exported: list[int], base: str
                   ) -> dict[str, int]:
    """Each label's version: `latest` and `previous` among the served versions, or its number.

    Raises:
        ServingConfigError: A rule has no version to name, or names one the policy does not
            serve (TF Serving assigns labels only to versions it has loaded); the message names
            the label.
    """
    policy = serving.version_policy.describe()
    resolved: dict[str, int] = {}
    for label, rule in serving.labels.items():
        key = f"serving.labels.{label}"
        if rule == "latest":
            if not served:
                raise ServingConfigError(f"{key}: 'latest' names no version: nothing is "
                                         f"exported under {base} yet; train a day first")
            resolved[label] = served[-1]
        elif rule == "previous":
            if len(served) < 2:
                raise ServingConfigError(
                    f"{key}: 'previous' needs two served versions, but version_policy "
                    f"{policy} serves {served or 'none'} of the exported {exported or 'none'} "
                    f"under {base}")
            resolved[label] = served[-2]
        else:
            version = int(rule)
            if version not in exported:
                raise ServingConfigError(f"{key}: version {version} is not exported under "
                                         f"{base} (exported: {exported or 'none'})")
            if version not in served:
                raise ServingConfigError(
                    f"{key}: version {version} is not served by version_policy {policy} "
                    f"(served: {served} of {base}); TF Serving labels only the versions it "
                    f"loads")
            resolved[label] = version
    return resolved


def models_config_text(name: str, base_path: str, serving: ServingConfig,
                       labels: dict[str, int]) -> str:
    """`models.config`: one model in a `ModelServerConfig`, printed by protobuf's text format."""
    message = model_server_config_pb2.ModelServerConfig()
    model = message.model_config_list.config.add(
        name=name, base_path=base_path, model_platform="tensorflow")
    policy = serving.version_policy
    if policy.specific is not None:
        model.model_version_policy.specific.versions.extend(policy.specific)
    elif policy.all:
        model.model_version_policy.all.SetInParent()
    else:
        model.model_version_policy.latest.num_versions = policy.latest
    for label, version in labels.items():
        model.version_labels[label] = version
    return ("# Written by `multitower serving-config`; labels are resolved against the exported\n"
            "# versions, so write it again after each export.\n"
            + text_format.MessageToString(message))


def batching_parameters_text(batching: BatchingConfig) -> str:
    """`batching_parameters.txt`: a text `BatchingParameters` (its Int64Value wrappers)."""
    lines = [f"max_batch_size {{ value: {batching.max_batch_size} }}",
             f"batch_timeout_micros {{ value: {batching.batch_timeout_micros} }}",
             f"max_enqueued_batches {{ value: {batching.queue_batches} }}",
             f"num_batch_threads {{ value: {batching.num_batch_threads} }}"]
    lines += [f"allowed_batch_sizes: {size}" for size in batching.allowed_batch_sizes]
    return "\n".join(lines) + "\n"


def monitoring_config_text(monitoring: MonitoringConfig) -> str:
    """`monitoring.config`: a text `MonitoringConfig` (its path is checked to need no escape)."""
    return (f"prometheus_config {{\n  enable: {str(monitoring.prometheus).lower()}\n"
            f"  path: \"{monitoring.path}\"\n}}\n")


def _join(folder: str, name: str) -> str:
    return f"{folder.rstrip('/')}/{name}" if is_remote(folder) else os.path.join(folder, name)


def server_command(serving: ServingConfig, out_dir: str, has_labels: bool) -> list[str]:
    """The `tensorflow_model_server` arguments that read the files written to `out_dir`.

    Every flag name is declared in TF Serving's tensorflow_serving/model_servers/main.cc.
    """
    folder = out_dir if is_remote(out_dir) else os.path.abspath(out_dir)
    command = [SERVER_BINARY,
               f"--port={serving.grpc_port}",  # gRPC
               f"--rest_api_port={serving.rest_port}",  # 0 there would disable REST
               f"--model_config_file={_join(folder, MODELS_CONFIG)}"]
    if serving.config_poll_seconds:
        # Re-read models.config: labels written after the next export move without a restart.
        command.append(f"--model_config_file_poll_wait_seconds={serving.config_poll_seconds}")
    if has_labels:
        # At start no version is loaded yet, and TF Serving refuses a label on a version that
        # is not available (serving_config.md, "Assigning String Labels"; server_core.cc)
        # unless this is set. It only applies to labels not yet assigned, so a label moved
        # later still waits for its version to be loaded.
        command.append("--allow_version_labels_for_unavailable_models=true")
    if serving.batching.enabled:
        command += ["--enable_batching=true",
                    f"--batching_parameters_file={_join(folder, BATCHING_PARAMETERS)}"]
    if serving.monitoring.prometheus:
        command.append(f"--monitoring_config_file={_join(folder, MONITORING_CONFIG)}")
    return command


def build_serving_files(config: Config, out_dir: str, exported: list[int] | None = None
                        ) -> ServingFiles:
    """The files and command line for `config`, without writing anything.

    Args:
        config: The project's config; its `serving` section and export folder are used.
        out_dir: The folder the files will be written to (named in the command line).
        exported: The exported versions; by default listed from the export folder.

    Raises:
        ServingConfigError: A label or a `specific` version does not fit the exports; the
            message names the config file and the key.
    """
    serving = config.serving
    base = model_base(config.train.export_dir, config.model.name)
    exported = sorted(versions(base) if exported is None else exported)
    try:
        served = served_versions(serving, exported, base)
        labels = resolve_labels(serving, served, exported, base)
    except ServingConfigError as err:  # named like a config error: the file, then the key
        raise ServingConfigError(f"{config.source}: {err}" if config.source else str(err)
                                 ) from None
    name = serving.model_name or config.model.name
    files = {MODELS_CONFIG: models_config_text(name, base, serving, labels)}
    if serving.batching.enabled:
        files[BATCHING_PARAMETERS] = batching_parameters_text(serving.batching)
    if serving.monitoring.prometheus:
        files[MONITORING_CONFIG] = monitoring_config_text(serving.monitoring)
    return ServingFiles(model_name=name, base_path=base, exported=exported, served=served,
                        labels=labels, files=files,
                        command=server_command(serving, out_dir, bool(labels)))


def write_serving_files(result: ServingFiles, out_dir: str) -> list[str]:
    """Writes each file atomically (a temporary name, then a rename) and returns their paths.

    A file of ours that the config no longer asks for (batching or monitoring turned off) is
    removed, so the folder holds exactly what the command line reads.
    """
    tf.io.gfile.makedirs(out_dir)
    written = []
    for name, text in result.files.items():
        path = _join(out_dir, name)
        temporary = _join(out_dir, f".{name}.tmp-{uuid.uuid4().hex}")
        try:
            with tf.io.gfile.GFile(temporary, "w") as f:
                f.write(text)
            tf.io.gfile.rename(temporary, path, overwrite=True)
        except BaseException:
            if tf.io.gfile.exists(temporary):  # the old file, if any, is left whole
                tf.io.gfile.remove(temporary)
            raise
        written.append(path)
    for name in (BATCHING_PARAMETERS, MONITORING_CONFIG):
        stale = _join(out_dir, name)
        if name not in result.files and tf.io.gfile.exists(stale):
            tf.io.gfile.remove(stale)
    return written


def summary(result: ServingFiles, serving: ServingConfig) -> list[str]:
    """A few lines for people: what is served, under which labels, on which ports."""
    lines = [f"model {result.model_name!r} from {result.base_path}: exported "
             f"{result.exported or 'none'}, served {result.served or 'none'} "
             f"(version_policy {serving.version_policy.describe()})"]
    if not result.exported:
        lines.append("no version is exported yet: TF Serving waits for the first one")
    if result.labels:
        lines.append("labels: " + ", ".join(
            f"{label} -> {version} ({serving.labels[label]})"
            for label, version in result.labels.items()))
    lines.append(f"gRPC on port {serving.grpc_port}; REST on port {serving.rest_port} "
                 f"(/v1/models/{result.model_name})")
    if serving.batching.enabled:
        lines.append(f"batching: up to {serving.batching.max_batch_size} rows per batch, "
                     f"{serving.batching.batch_timeout_micros} us timeout, "
                     f"{serving.batching.num_batch_threads} threads")
    if serving.monitoring.prometheus:
        lines.append(f"Prometheus metrics on port {serving.rest_port} at "
                     f"{serving.monitoring.path}")
    return lines
