"""`multitower k8s render`: one YAML file per object and a kustomization listing them."""

from __future__ import annotations

from pathlib import Path

import yaml
from click.testing import CliRunner
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from commands.cli import main
from tests.k8s.configs import DATE, example_raw, gcs_paths


def _config(tmp_path: Path, raw: dict | None = None) -> str:
    if raw is None:
        raw = example_raw()
        gcs_paths(raw)  # nothing on S3: loading the config then imports no tensorflow-io
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def _render(tmp_path: Path, *args: str, config: str | None = None):
    return CliRunner().invoke(main, ["k8s", "render", "--config", config or _config(tmp_path),
                                     *args])


def test_render_all_writes_every_object_and_a_kustomization(tmp_path):
    out = tmp_path / "deploy"
    result = _render(tmp_path, "--what", "all", "--date", DATE, "--versions", "1,2",
                     "--out", str(out))
    assert result.exit_code == 0, result.output
    kustomization = yaml.safe_load((out / "kustomization.yaml").read_text())
    assert kustomization["kind"] == "Kustomization"
    listed = kustomization["resources"]
    assert sorted(listed) == sorted(p.name for p in out.glob("*.yaml")
                                    if p.name != "kustomization.yaml")
    kinds = {}
    for name in listed:
        (obj,) = yaml.safe_load_all((out / name).read_text())
        assert name == f"{obj['kind'].lower()}-{obj['metadata']['name']}.yaml"
        kinds[obj["kind"]] = kinds.get(obj["kind"], 0) + 1
    assert kinds == {"ConfigMap": 2, "Job": 2, "Service": 2, "ServiceAccount": 1, "Role": 1,
                     "RoleBinding": 1, "CronJob": 1, "Deployment": 1,
                     "HorizontalPodAutoscaler": 1, "PodDisruptionBudget": 1}
    serving = yaml.safe_load((out / "configmap-impressions-serving-config.yaml").read_text())
    models = text_format.Parse(serving["data"]["models.config"],
                               model_server_config_pb2.ModelServerConfig())
    (model,) = models.model_config_list.config
    assert model.base_path == "gs://recsys-mt/export/impressions"
    assert dict(model.version_labels) == {"stable": 1, "canary": 2}
    assert "versions [1, 2]" in result.output and "stable -> 1" in result.output
    deployment = yaml.safe_load((out / "deployment-impressions-serving.yaml").read_text())
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    for flag in ("--port=8500", "--rest_api_port=8501",
                 "--model_config_file=/etc/tfs-config/models.config",
                 "--model_config_file_poll_wait_seconds=60", "--enable_batching=true",
                 "--batching_parameters_file=/etc/tfs-config/batching_parameters.txt",
                 "--monitoring_config_file=/etc/tfs-config/monitoring.config"):
        assert flag in args
    assert str(out / "kustomization.yaml") in result.output.splitlines()


def test_rendering_again_replaces_the_files_it_wrote_and_keeps_others(tmp_path):
    out = tmp_path / "deploy"
    assert _render(tmp_path, "--what", "train", "--date", DATE, "--out", str(out)).exit_code == 0
    (out / "notes.md").write_text("mine")
    result = _render(tmp_path, "--what", "daily", "--out", str(out))
    assert result.exit_code == 0, result.output
    names = {p.name for p in out.iterdir()}
    assert "job-impressions-train-2026-03-01.yaml" not in names
    assert {"cronjob-impressions-daily.yaml", "notes.md", "kustomization.yaml"} <= names
    listed = yaml.safe_load((out / "kustomization.yaml").read_text())["resources"]
    assert set(listed) == names - {"notes.md", "kustomization.yaml"}


def test_a_per_day_step_without_a_date_is_a_usage_error(tmp_path):
    for what in ("train", "preprocess", "all"):
        result = _render(tmp_path, "--what", what, "--out", str(tmp_path / "o"))
        assert result.exit_code == 2
        assert "give --date YYYY-MM-DD" in result.output
    result = _render(tmp_path, "--what", "serving", "--versions", "1,x",
                     "--out", str(tmp_path / "o"))
    assert result.exit_code == 2 and "expected version numbers" in result.output
    assert not (tmp_path / "o").exists()


def test_a_relative_path_fails_the_command_naming_the_key(tmp_path):
    raw = example_raw()
    gcs_paths(raw)
    raw["train"]["model_dir"] = "work/model"
    config = _config(tmp_path, raw)
    result = _render(tmp_path, "--what", "train", "--date", DATE, "--out",
                     str(tmp_path / "o"), config=config)
    assert result.exit_code == 1
    assert f"{config}: train.model_dir: 'work/model' is a relative path" in result.output
    assert not (tmp_path / "o").exists()


def test_a_config_without_k8s_section_fails_with_what_to_add(tmp_path):
    raw = example_raw()
    gcs_paths(raw)
    del raw["k8s"]
    result = _render(tmp_path, "--what", "daily", "--out", str(tmp_path / "o"),
                     config=_config(tmp_path, raw))
    assert result.exit_code == 1
    assert "k8s: the config has no k8s: section" in result.output


def test_labels_that_do_not_fit_the_versions_fail_before_writing(tmp_path):
    result = _render(tmp_path, "--what", "serving", "--versions", "1",
                     "--out", str(tmp_path / "o"))
    assert result.exit_code == 1
    assert "serving.labels.stable: 'previous' needs two served versions" in result.output
    assert not (tmp_path / "o").exists()


def test_without_versions_the_export_folder_is_listed_and_the_hint_given(tmp_path,
                                                                         monkeypatch):
    import serving.tfs_config

    listed = []

    def versions(base):
        listed.append(base)
        return [3, 4]

    monkeypatch.setattr(serving.tfs_config, "versions", versions)
    raw = example_raw()  # exports on the /exports volume, which this machine does not have
    out = tmp_path / "o"
    result = _render(tmp_path, "--what", "serving", "--out", str(out),
                     config=_config(tmp_path, raw))
    assert result.exit_code == 0, result.output
    assert listed == ["/exports/impressions/impressions"]
    assert "versions [3, 4]" in result.output and "stable -> 3" in result.output
    monkeypatch.undo()  # the real listing: nothing under /exports here
    result = _render(tmp_path, "--what", "serving", "--out", str(out),
                     config=_config(tmp_path, raw))
    assert result.exit_code == 1
    assert "give --versions with the ones the cluster has" in result.output


def test_the_yaml_reads_back_as_the_objects():
    from k8s.render import to_yaml
    from tests.k8s.configs import rendered

    for obj in rendered("cpu-s3-4-tfjob-gang"):
        text = to_yaml(obj)
        assert yaml.safe_load(text) == obj
        if obj["kind"] == "ConfigMap":  # files stay readable as files
            assert "|" in text and "\\n" not in text
