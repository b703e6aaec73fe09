"""The `k8s:` config section, and the refusals rendering adds (paths a pod cannot reach)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from k8s.objects import target
from k8s.render import render, step_objects
from k8s.storage import K8sError
from multitower.config import ConfigError, load_config, parse_config
from multitower.config.k8s import check_cron, check_image, check_time_zone
from tests.k8s.configs import DATE, EXAMPLE_K8S, example_raw


def _parse(raw: dict, source: str = "c.yaml"):
    return parse_config(raw, source)


def _refused(raw: dict) -> str:
    with pytest.raises(ConfigError) as err:
        _parse(raw)
    return str(err.value)


def test_the_example_loads_with_its_k8s_section():
    config = load_config(EXAMPLE_K8S)
    k8s = config.k8s
    assert k8s is not None
    assert (k8s.namespace, k8s.training.workers, k8s.training.kind) == ("recsys", 2, "job")
    assert k8s.daily.time_zone == "Europe/Paris"
    assert config.data.tfrecords.startswith("s3://")
    render(config, ["preprocess", "train", "daily"], DATE)  # every path reachable


def test_a_config_without_k8s_section_still_loads_and_cannot_be_rendered():
    raw = example_raw()
    del raw["k8s"]
    config = _parse(raw)
    assert config.k8s is None
    with pytest.raises(K8sError, match="c.yaml: k8s: the config has no k8s: section"):
        target(config)


def test_the_embedded_config_reads_back_as_the_same_config():
    config = _parse(example_raw())
    (config_map, _) = step_objects(target(config), "preprocess", DATE)
    again = parse_config(yaml.safe_load(config_map["data"]["config.yaml"]), "c.yaml")
    assert again == config


@pytest.mark.parametrize("schedule", ["0 2 * * *", "*/15 * * * *", "30 2 * * MON-FRI",
                                      "0 0 1,15 * *", "0 6 ? JAN-MAR sun", "5-10/2 0 * * 0",
                                      "@daily", "@hourly"])
def test_valid_schedules(schedule):
    assert check_cron(schedule) == schedule


@pytest.mark.parametrize("schedule,message", [
    ("61 * * * *", "minute: 61 is outside 0-59"),
    ("0 24 * * *", "hour: 24 is outside 0-23"),
    ("0 0 0 * *", "day of month: 0 is outside 1-31"),
    ("0 2 * * 7", "day of week: 7 is outside 0-6"),
    ("0 2 * FOO *", "month: 'FOO' is not a number or one of JAN"),
    ("0 2 * *", "expected 5 fields"),
    ("0 2 * * * *", "expected 5 fields"),
    ("*/0 * * * *", "minute: the step in '*/0' must be a positive number"),
    ("10-5 * * * *", "minute: the range '10-5' ends before it starts"),
    ("? * * * *", "minute: '?' is allowed in the day fields only"),
    ("@every 1h", "is not one of @yearly"),
    ("TZ=Europe/Paris 0 2 * * *", "k8s.daily.time_zone"),
])
def test_invalid_schedules_name_the_field(schedule, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        check_cron(schedule)


def test_time_zones_are_iana_names():
    assert check_time_zone("Europe/Paris") == "Europe/Paris"
    assert check_time_zone("Etc/UTC") == "Etc/UTC"
    for bad in ("Local", "Mars/Olympus_Mons", "../etc/passwd", "", "Europe/Paris "):
        with pytest.raises(ValueError, match="not an IANA time zone"):
            check_time_zone(bad)


def test_images_must_be_pinned():
    for good in ("tensorflow/serving:2.16.1", "registry.example.com:5000/a/b:1.0",
                 "ghcr.io/x/y@sha256:" + "a" * 64):
        assert check_image(good) == good
    for bad, message in (("tensorflow/serving", "not pinned"),
                         ("tensorflow/serving:latest", "not pinned"),
                         ("registry:5000/img", "not pinned"), ("Bad Image", "not an image")):
        with pytest.raises(ValueError, match=message):
            check_image(bad)


@pytest.mark.parametrize("change,key,message", [
    (lambda k: k.update(name="Impressions_1"), "k8s.name", "should match pattern"),
    (lambda k: k.update(name="a" * 31), "k8s.name", "at most 30 characters"),
    (lambda k: k["training"]["resources"].update(memory="16 GB"),
     "k8s.training.resources.memory", "should match pattern"),
    (lambda k: k["daily"].update(schedule="0 25 * * *"), "k8s.daily.schedule", "hour: 25"),
    (lambda k: k["daily"].update(time_zone="Paris"), "k8s.daily.time_zone", "IANA"),
    (lambda k: k.update(image="multitower"), "k8s.image", "not pinned"),
    (lambda k: k["env"].update(AWS_SECRET_ACCESS_KEY="x"), "k8s.env",
     "credentials go in the Secret named by k8s.credentials_secret"),
    (lambda k: k["training"]["resources"].update(gpus=1) or k.pop("gpu_image"), "k8s",
     "gpu_image is not set"),
    (lambda k: k["training"].update(gang={"queue": "q"}), "k8s.training",
     "gang scheduling is set on a TFJob"),
    (lambda k: k["serving"].update(min_available=2), "k8s.serving",
     "min_available (2) must be below min_replicas (2)"),
    (lambda k: k["serving"].update(max_replicas=1), "k8s.serving", "max_replicas (1) is below"),
    (lambda k: k["volumes"].append({"name": "more", "claim": "c", "mount_path": "/exports/a"}),
     "k8s", "overlap"),
    (lambda k: k.update(tolerations=[{"key": "a", "operator": "Exists", "value": "b"}]),
     "k8s.tolerations[0]", "operator Exists takes no value"),
    (lambda k: k.update(node_selector={"pool": "not a value"}), "k8s.node_selector",
     "is not a label value"),
    (lambda k: k["training"].update(workers=0), "k8s.training.workers", "greater than 0"),
    (lambda k: k.update(surprise=1), "k8s.surprise", "unknown key"),
])
def test_invalid_k8s_settings_name_the_key(change, key, message):
    raw = example_raw()
    change(raw["k8s"])
    text = _refused(raw)
    assert f"c.yaml: {key}: " in text and message in text, text


def _config_file(tmp_path: Path, **changes) -> Path:
    raw = example_raw()
    for dotted, value in changes.items():
        section, key = dotted.split("__")
        raw[section][key] = value
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_a_relative_path_is_refused_with_its_key_as_written(tmp_path):
    config = load_config(_config_file(tmp_path, data__tfrecords="work/tfrecords"))
    with pytest.raises(K8sError) as err:
        render(config, ["preprocess"], DATE)
    text = str(err.value)
    assert text.startswith(f"{tmp_path / 'config.yaml'}: data.tfrecords: 'work/tfrecords' is a "
                           f"relative path")
    assert "k8s.volumes (/exports)" in text


def test_a_local_path_outside_the_volumes_is_refused(tmp_path):
    config = load_config(_config_file(tmp_path, train__model_dir="/home/me/model"))
    with pytest.raises(K8sError, match="train.model_dir: '/home/me/model' is a local path "
                                       "outside every volume mount"):
        render(config, ["train"], DATE)
    render(config, ["preprocess"], DATE)  # preprocess does not use model_dir


def test_paths_under_a_volume_and_object_storage_are_accepted(tmp_path):
    config = load_config(_config_file(tmp_path, train__model_dir="/exports/model",
                                      data__logs="hdfs://nn/logs/dt={date}"))
    assert render(config, ["preprocess", "train"], DATE)


@pytest.mark.parametrize("value,message", [
    ("file:///data/tfrecords", "is a local path outside every volume mount"),
    ("https://example.com/tfrecords", "is a https:// URL; a cluster reads object storage"),
])
def test_urls_that_are_not_object_storage_are_refused(value, message):
    raw = example_raw()
    raw["data"]["tfrecords"] = value
    with pytest.raises(K8sError, match=f"data.tfrecords: '{value}' {message}"):
        render(_parse(raw), ["train"], DATE)


def test_serving_from_s3_with_the_official_image_is_refused():
    from k8s.serving import check_serving

    raw = example_raw()
    raw["train"]["export_dir"] = "s3://recsys-multitower/export"
    with pytest.raises(K8sError, match=r"train.export_dir: .* \(tensorflow/serving#1963"):
        check_serving(target(_parse(raw)))
    raw["k8s"]["serving"]["image"] = "registry.example.com/tf-serving-s3:2.16.1"
    check_serving(target(_parse(raw)))


def test_serving_that_never_rereads_its_labels_is_refused():
    from k8s.serving import check_serving

    raw = example_raw()
    raw["serving"]["config_poll_seconds"] = 0
    with pytest.raises(K8sError, match="serving.config_poll_seconds: is 0"):
        check_serving(target(_parse(raw)))


@pytest.mark.parametrize("change,key", [
    (lambda r: r["k8s"]["env"].update(HOME="/home"), "k8s.env.HOME"),
    (lambda r: r["k8s"]["env"].update(MULTITOWER_WORKERS="a:1"), "k8s.env.MULTITOWER_WORKERS"),
    (lambda r: r["k8s"]["volumes"].append({"name": "scratch", "claim": "c", "mount_path": "/s"}),
     "k8s.volumes[1].name"),
    (lambda r: r["k8s"]["volumes"].append({"name": "t", "claim": "c", "mount_path": "/tmp/t"}),
     "k8s.volumes[1].mount_path"),
    (lambda r: r["k8s"].pop("name") and r["model"].update(name="my_model"), "k8s.name"),
])
def test_clashes_with_what_the_renderer_sets_are_refused(change, key):
    raw = example_raw()
    change(raw)
    with pytest.raises(K8sError, match=re.escape(f"c.yaml: {key}: ")):
        target(_parse(raw))


def test_the_namespace_can_be_overridden():
    objects = render(_parse(example_raw()), ["daily"], namespace="staging")
    assert {o["metadata"]["namespace"] for o in objects} == {"staging"}
    (binding,) = [o for o in objects if o["kind"] == "RoleBinding"]
    assert binding["subjects"][0]["namespace"] == "staging"


def test_per_day_steps_need_a_date():
    with pytest.raises(K8sError, match="the train step is per day"):
        render(_parse(example_raw()), ["train"])
    with pytest.raises(K8sError, match="not a calendar day"):
        render(_parse(example_raw()), ["train"], "2026-02-30")
