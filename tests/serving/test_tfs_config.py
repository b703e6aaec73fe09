"""TF Serving's files, parsed back with TF Serving's message types, and its command line.

`models.config` is parsed with the real `ModelServerConfig` from tensorflow-serving-api. That
wheel does not carry `BatchingParameters` or `MonitoringConfig`, so those two are built here
from the fields TF Serving documents (session_bundle_config.proto and monitoring_config.proto
field names and numbers) in a private descriptor pool, and the files are parsed with them.
"""

import shlex
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from google.protobuf import (
    descriptor_pb2,
    descriptor_pool,
    message_factory,
    text_format,
    wrappers_pb2,
)
from tensorflow_serving.config import model_server_config_pb2

from commands.cli import main
from multitower.config import parse_config
from serving import tfs_config
from serving.tfs_config import (
    BATCHING_PARAMETERS,
    MODELS_CONFIG,
    MONITORING_CONFIG,
    ServingConfigError,
    build_serving_files,
    write_serving_files,
)
from tests.small_project import EXAMPLE

_F = descriptor_pb2.FieldDescriptorProto


def _message_types() -> tuple[type, type]:
    """`BatchingParameters` and `MonitoringConfig`, declared from TF Serving's field list."""
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(wrappers_pb2.DESCRIPTOR.serialized_pb)
    file = descriptor_pb2.FileDescriptorProto(
        name="multitower_test/tf_serving_config.proto", package="tensorflow.serving",
        syntax="proto3", dependency=["google/protobuf/wrappers.proto"])

    def add(message: descriptor_pb2.DescriptorProto, name: str, number: int, kind: int,
            type_name: str = "", repeated: bool = False) -> None:
        field = message.field.add(name=name, number=number, type=kind,
                                  label=_F.LABEL_REPEATED if repeated else _F.LABEL_OPTIONAL)
        if type_name:
            field.type_name = type_name

    batching = file.message_type.add(name="BatchingParameters")
    for number, name in enumerate(["max_batch_size", "batch_timeout_micros",
                                   "max_enqueued_batches", "num_batch_threads"], start=1):
        add(batching, name, number, _F.TYPE_MESSAGE, ".google.protobuf.Int64Value")
    add(batching, "thread_pool_name", 5, _F.TYPE_MESSAGE, ".google.protobuf.StringValue")
    add(batching, "allowed_batch_sizes", 6, _F.TYPE_INT64, repeated=True)
    add(batching, "pad_variable_length_inputs", 7, _F.TYPE_BOOL)
    prometheus = file.message_type.add(name="PrometheusConfig")
    add(prometheus, "enable", 1, _F.TYPE_BOOL)
    add(prometheus, "path", 2, _F.TYPE_STRING)
    monitoring = file.message_type.add(name="MonitoringConfig")
    add(monitoring, "prometheus_config", 1, _F.TYPE_MESSAGE, ".tensorflow.serving.PrometheusConfig")
    pool.Add(file)
    return tuple(message_factory.GetMessageClass(pool.FindMessageTypeByName(
        f"tensorflow.serving.{name}")) for name in ("BatchingParameters", "MonitoringConfig"))


BatchingParameters, MonitoringConfig = _message_types()


def _config(export_dir: str = "/srv/export", **serving):
    raw = yaml.safe_load(EXAMPLE.read_text())
    raw["train"]["export_dir"] = export_dir
    if serving:
        raw["serving"] = serving
    return parse_config(raw, "test.yaml")


def _model(text: str) -> model_server_config_pb2.ModelConfig:
    parsed = text_format.Parse(text, model_server_config_pb2.ModelServerConfig())
    assert parsed.WhichOneof("config") == "model_config_list"
    assert len(parsed.model_config_list.config) == 1
    return parsed.model_config_list.config[0]


def _flags(command: list[str]) -> dict[str, str]:
    assert command[0] == "tensorflow_model_server"
    flags = {}
    for arg in command[1:]:
        name, _, value = arg.partition("=")
        assert name.startswith("--") and name[2:] not in flags
        flags[name[2:]] = value
    return flags


def test_models_config_is_a_model_server_config_with_policy_and_resolved_labels():
    config = _config(version_policy={"latest": 2},
                     labels={"canary": "latest", "stable": "previous", "pinned": 2})
    result = build_serving_files(config, "/srv/tfs", exported=[1, 2, 3])
    model = _model(result.files[MODELS_CONFIG])
    assert model.name == "impressions"
    assert model.base_path == "/srv/export/impressions"
    assert model.model_platform == "tensorflow"
    assert model.model_version_policy.WhichOneof("policy_choice") == "latest"
    assert model.model_version_policy.latest.num_versions == 2
    assert dict(model.version_labels) == {"canary": 3, "stable": 2, "pinned": 2}
    assert (result.exported, result.served) == ([1, 2, 3], [2, 3])


def test_all_and_specific_policies_and_a_served_name_other_than_the_folder():
    model = _model(build_serving_files(_config(version_policy="all", model_name="ranker"),
                                       "/srv/tfs", exported=[1, 2]).files[MODELS_CONFIG])
    assert model.model_version_policy.WhichOneof("policy_choice") == "all"
    assert (model.name, model.base_path) == ("ranker", "/srv/export/impressions")
    result = build_serving_files(
        _config(version_policy={"specific": [2, 4]}, labels={"stable": 2, "canary": "latest",
                                                             "old": "previous"}),
        "/srv/tfs", exported=[1, 2, 3, 4, 5])
    model = _model(result.files[MODELS_CONFIG])
    assert model.model_version_policy.WhichOneof("policy_choice") == "specific"
    assert list(model.model_version_policy.specific.versions) == [2, 4]
    # latest and previous are among the served versions, not among all exported ones
    assert dict(model.version_labels) == {"stable": 2, "canary": 4, "old": 2}


def test_default_section_serves_the_newest_version_without_labels():
    result = build_serving_files(_config(), "/srv/tfs", exported=[3, 1, 2])
    model = _model(result.files[MODELS_CONFIG])
    assert model.model_version_policy.latest.num_versions == 1
    assert dict(model.version_labels) == {}
    assert (result.exported, result.served, result.labels) == ([1, 2, 3], [3], {})
    assert "allow_version_labels_for_unavailable_models" not in _flags(result.command)


@pytest.mark.parametrize("scheme", ["s3", "gs"])
def test_export_folder_and_output_in_object_storage(scheme):
    result = build_serving_files(_config(f"{scheme}://bucket/export"),
                                 f"{scheme}://bucket/tfs/", exported=[7])
    assert _model(result.files[MODELS_CONFIG]).base_path == f"{scheme}://bucket/export/impressions"
    flags = _flags(result.command)
    assert flags["model_config_file"] == f"{scheme}://bucket/tfs/models.config"
    assert flags["batching_parameters_file"] == f"{scheme}://bucket/tfs/batching_parameters.txt"
    assert flags["monitoring_config_file"] == f"{scheme}://bucket/tfs/monitoring.config"


def test_batching_parameters_parse_as_batching_parameters():
    config = _config(batching={"max_batch_size": 512, "batch_timeout_micros": 2500,
                               "num_batch_threads": 6, "allowed_batch_sizes": [64, 128, 512]})
    text = build_serving_files(config, "/srv/tfs", exported=[1]).files[BATCHING_PARAMETERS]
    params = text_format.Parse(text, BatchingParameters())
    assert params.max_batch_size.value == 512
    assert params.batch_timeout_micros.value == 2500
    assert params.num_batch_threads.value == 6
    assert params.max_enqueued_batches.value == 6  # defaults to the thread count
    assert list(params.allowed_batch_sizes) == [64, 128, 512]
    assert not params.HasField("thread_pool_name")
    config = _config(batching={"max_enqueued_batches": 100})
    text = build_serving_files(config, "/srv/tfs", exported=[1]).files[BATCHING_PARAMETERS]
    params = text_format.Parse(text, BatchingParameters())
    assert (params.max_batch_size.value, params.batch_timeout_micros.value) == (1024, 1000)
    assert (params.max_enqueued_batches.value, list(params.allowed_batch_sizes)) == (100, [])


def test_the_test_message_types_refuse_fields_tf_serving_does_not_have():
    with pytest.raises(text_format.ParseError):
        text_format.Parse("max_batch_sizes { value: 1 }", BatchingParameters())
    with pytest.raises(text_format.ParseError):
        text_format.Parse("prometheus_config { enabled: true }", MonitoringConfig())


def test_monitoring_config_parses_as_monitoring_config():
    config = _config(monitoring={"path": "/metrics"})
    text = build_serving_files(config, "/srv/tfs", exported=[1]).files[MONITORING_CONFIG]
    parsed = text_format.Parse(text, MonitoringConfig())
    assert parsed.prometheus_config.enable is True
    assert parsed.prometheus_config.path == "/metrics"
    default = build_serving_files(_config(), "/srv/tfs", exported=[1]).files[MONITORING_CONFIG]
    assert text_format.Parse(default, MonitoringConfig()).prometheus_config.path == \
        "/monitoring/prometheus/metrics"


def test_command_line_names_the_written_files_with_tf_serving_flags():
    config = _config(grpc_port=9000, rest_port=9001, labels={"canary": "latest"})
    result = build_serving_files(config, "tfs-out", exported=[1, 2])
    folder = Path("tfs-out").resolve()
    assert _flags(shlex.split(result.command_line())) == {
        "port": "9000",
        "rest_api_port": "9001",
        "model_config_file": str(folder / "models.config"),
        "model_config_file_poll_wait_seconds": "60",
        "allow_version_labels_for_unavailable_models": "true",  # labels exist before loading
        "enable_batching": "true",
        "batching_parameters_file": str(folder / "batching_parameters.txt"),
        "monitoring_config_file": str(folder / "monitoring.config"),
    }
    config = _config(batching={"enabled": False}, monitoring={"prometheus": False},
                     config_poll_seconds=0)
    result = build_serving_files(config, "/srv/tfs", exported=[1])
    assert _flags(result.command) == {"port": "8500", "rest_api_port": "8501",
                                      "model_config_file": "/srv/tfs/models.config"}
    assert set(result.files) == {MODELS_CONFIG}


def test_labels_that_do_not_fit_the_exports_are_refused_naming_the_label():
    cases = [
        ({"version_policy": {"latest": 2}, "labels": {"stable": "previous"}}, [1],
         "serving.labels.stable: 'previous' needs two served versions"),
        ({"labels": {"stable": 7}}, [1, 2], "serving.labels.stable: version 7 is not exported"),
        ({"version_policy": {"latest": 2}, "labels": {"stable": 1}}, [1, 2, 3],
         "serving.labels.stable: version 1 is not served by version_policy latest: 2 "
         "(served: [2, 3] of /srv/export/impressions)"),
        ({"labels": {"canary": "latest"}}, [], "serving.labels.canary: 'latest' names no version"),
        ({"version_policy": {"specific": [2, 9]}}, [1, 2],
         "serving.version_policy.specific: version(s) [9] are not exported"),
    ]
    for serving, exported, message in cases:
        with pytest.raises(ServingConfigError) as err:
            build_serving_files(_config(**serving), "/srv/tfs", exported=exported)
        assert str(err.value).startswith(f"test.yaml: {message}")
        assert "/srv/export/impressions" in str(err.value)


def test_versions_are_read_from_the_export_folder(tmp_path):
    for name in ("1", "3", "10", ".tmp-4", "notes"):
        (tmp_path / "export" / "impressions" / name).mkdir(parents=True)
    config = _config(str(tmp_path / "export"), version_policy={"latest": 2},
                     labels={"canary": "latest", "stable": "previous"})
    result = build_serving_files(config, str(tmp_path / "tfs"))
    assert (result.exported, result.served, result.labels) == (
        [1, 3, 10], [3, 10], {"canary": 10, "stable": 3})


def test_files_are_written_atomically_and_stale_ones_removed(tmp_path, monkeypatch):
    out = tmp_path / "tfs"
    first = build_serving_files(_config(labels={"canary": "latest"}), str(out), exported=[1])
    written = write_serving_files(first, str(out))
    assert sorted(Path(p).name for p in written) == sorted(
        [MODELS_CONFIG, BATCHING_PARAMETERS, MONITORING_CONFIG])
    assert sorted(p.name for p in out.iterdir()) == sorted(Path(p).name for p in written)
    for name, text in first.files.items():
        assert (out / name).read_text() == text
    second = build_serving_files(_config(labels={"canary": "latest"}), str(out), exported=[1, 2])

    def failing_rename(*args, **kwargs):
        raise OSError("disk gone")

    monkeypatch.setattr(tfs_config.tf.io.gfile, "rename", failing_rename)
    with pytest.raises(OSError, match="disk gone"):
        write_serving_files(second, str(out))
    assert (out / MODELS_CONFIG).read_text() == first.files[MODELS_CONFIG]  # still whole
    assert list(out.glob(".*tmp*")) == []  # its temporary file is gone too
    monkeypatch.undo()
    write_serving_files(second, str(out))
    assert dict(_model((out / MODELS_CONFIG).read_text()).version_labels) == {"canary": 2}
    plain = build_serving_files(_config(batching={"enabled": False},
                                        monitoring={"prometheus": False}), str(out), exported=[2])
    write_serving_files(plain, str(out))
    assert [p.name for p in out.iterdir()] == [MODELS_CONFIG]


def test_serving_config_command_writes_the_files_and_prints_the_command(tmp_path):
    for version in ("1", "2"):
        (tmp_path / "export" / "impressions" / version).mkdir(parents=True)
    raw = yaml.safe_load(EXAMPLE.read_text())
    raw["train"]["export_dir"] = str(tmp_path / "export")
    raw["serving"] = {"version_policy": {"latest": 2},
                      "labels": {"canary": "latest", "stable": "previous"}}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    out = tmp_path / "tfs"
    result = CliRunner().invoke(main, ["serving-config", "--config", str(path), "--out", str(out)])
    assert result.exit_code == 0, result.output
    command = shlex.split(result.stdout.strip())
    flags = _flags(command)
    assert flags["model_config_file"] == str(out / MODELS_CONFIG)
    for key in ("model_config_file", "batching_parameters_file", "monitoring_config_file"):
        assert Path(flags[key]).is_file()
    model = _model((out / MODELS_CONFIG).read_text())
    assert dict(model.version_labels) == {"canary": 2, "stable": 1}
    assert "labels: canary -> 2 (latest), stable -> 1 (previous)" in result.stderr
    assert "served [1, 2]" in result.stderr

    raw["serving"]["labels"] = {"stable": 5}
    path.write_text(yaml.safe_dump(raw))
    refused = CliRunner().invoke(main, ["serving-config", "--config", str(path),
                                        "--out", str(tmp_path / "refused")])
    assert refused.exit_code == 1
    assert f"{path}: serving.labels.stable: version 5 is not exported" in refused.output
    assert "Traceback" not in refused.output
    assert not (tmp_path / "refused").exists()  # nothing written
