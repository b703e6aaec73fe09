"""Config loading: strict keys and types, errors that name the file and the key."""

from pathlib import Path

import pytest
import yaml

from multitower.config import ConfigError, load_config, parse_config
from tests.small_project import EXAMPLE


@pytest.fixture
def raw() -> dict:
    return yaml.safe_load(EXAMPLE.read_text())


def _error(raw: dict, tmp_path: Path) -> str:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    return str(err.value)


def test_example_loads_and_resolves_paths_against_its_folder():
    config = load_config(EXAMPLE)
    assert config.model.backbone == "mmoe"
    assert [t.name for t in config.data.tasks] == ["click", "conversion", "watch_time"]
    assert config.data.logs_for("2026-01-02") == str(
        EXAMPLE.parent / "work" / "logs" / "dt=2026-01-02"
    )
    assert config.train.model_dir == str(EXAMPLE.parent / "work" / "model")
    hour = next(f for f in config.data.features if f.name == "hour")
    assert (hour.type, hour.dtype) == ("categorical", "int64")


def test_unknown_key_is_named(raw, tmp_path):
    raw["data"]["features"][3]["hash_bucket"] = 10
    msg = _error(raw, tmp_path)
    assert "bad.yaml: data.features[3].hash_bucket: unknown key" in msg


def test_wrong_type_is_named(raw, tmp_path):
    raw["model"]["mmoe"]["num_experts"] = "four"
    msg = _error(raw, tmp_path)
    assert "bad.yaml: model.mmoe.num_experts:" in msg and "'four'" in msg


def test_float_is_not_an_int(raw, tmp_path):
    raw["train"]["batch_size"] = 512.0
    assert "train.batch_size:" in _error(raw, tmp_path)


def test_missing_field_is_named(raw, tmp_path):
    del raw["train"]["export_dir"]
    assert "bad.yaml: train.export_dir: missing required key" in _error(raw, tmp_path)


def test_several_errors_are_all_reported(raw, tmp_path):
    del raw["data"]["tasks"][0]["type"]
    raw["train"]["learning_rate"] = -1
    msg = _error(raw, tmp_path)
    assert "data.tasks[0].type: missing required key" in msg
    assert "train.learning_rate:" in msg


def test_unknown_feature_type_and_backbone(raw, tmp_path):
    raw["data"]["features"][0]["type"] = "text"
    raw["model"]["backbone"] = "transformer"
    msg = _error(raw, tmp_path)
    assert "data.features[0]" in msg and "model.backbone" in msg


def test_logs_need_a_date_placeholder(raw, tmp_path):
    raw["data"]["logs"] = "logs/today"
    assert "data.logs:" in _error(raw, tmp_path) and "{date}" in _error(raw, tmp_path)


def test_duplicate_columns_are_refused(raw):
    raw["data"]["tasks"][0]["label"] = "user_id"
    with pytest.raises(ConfigError, match="column 'user_id' is used twice"):
        parse_config(raw, "x.yaml")


def test_task_and_feature_names_may_not_clash(raw):
    raw["data"]["tasks"][0]["name"] = "device"
    raw["data"]["tasks"][0]["label"] = "click"
    with pytest.raises(ConfigError, match="share a name"):
        parse_config(raw, "x.yaml")


def test_unreadable_and_invalid_yaml(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "absent.yaml")
    bad = tmp_path / "broken.yaml"
    bad.write_text("data: [unclosed")
    with pytest.raises(ConfigError, match="broken.yaml: not valid YAML"):
        load_config(bad)


def test_schema_fingerprint_follows_the_data_not_model_sizes(raw):
    base = parse_config(raw).data.schema_fingerprint()
    raw["data"]["features"][0]["embedding_dim"] = 99
    assert parse_config(raw).data.schema_fingerprint() == base
    raw["data"]["features"][-1]["dtype"] = "int64"
    assert parse_config(raw).data.schema_fingerprint() != base


def test_resolved_config_round_trips(tmp_path):
    config = load_config(EXAMPLE)
    path = tmp_path / "resolved.yaml"
    path.write_text(config.to_yaml())
    assert load_config(path) == config.model_copy(update={"source": str(path)})


def test_shared_embedding_tables_must_agree_on_size(raw, tmp_path):
    user, item = raw["data"]["features"][0], raw["data"]["features"][3]
    user["embedding_table"] = item["embedding_table"] = "ids"
    raw["data"]["features"][-1]["embedding_table"] = "ids"  # recent_items shares item_id's
    config = parse_config(raw)
    assert [f.table for f in config.data.categorical][:4] == ["ids", "user_segment",
                                                              "user_country", "ids"]
    item["embedding_dim"] = 8
    msg = _error(raw, tmp_path)
    assert "bad.yaml: data: Value error, features sharing embedding_table 'ids' must have the " \
           "same hash_buckets and embedding_dim, got user_id: 100000 x 16, item_id: 100000 x 8" \
           in msg


def test_a_shared_table_may_not_take_another_features_name(raw, tmp_path):
    raw["data"]["features"][0]["embedding_table"] = "item_id"  # item_id has its own table
    raw["data"]["features"][0]["embedding_dim"] = 16
    raw["data"]["features"][3]["embedding_table"] = "items"
    msg = _error(raw, tmp_path)
    assert "embedding_table 'item_id' is also the name of feature 'item_id', which has its own " \
           "table 'items'" in msg


def test_embedding_partitioning_and_optimizer_keys_are_checked(raw, tmp_path):
    config = parse_config(raw)
    assert config.model.embeddings.num_shards is None
    assert config.model.embeddings.min_shard_rows == 1 << 20
    assert config.train.embedding_optimizer == "adagrad"
    raw["model"]["embeddings"] = {"num_shards": 0, "shards": 2}
    raw["train"]["embedding_optimizer"] = "adam"
    msg = _error(raw, tmp_path)
    assert "bad.yaml: model.embeddings.num_shards: Input should be greater than 0" in msg
    assert "bad.yaml: model.embeddings.shards: unknown key" in msg
    assert "bad.yaml: train.embedding_optimizer: Input should be 'adagrad', 'ftrl', " \
           "'lazy_adam' or 'sgd'" in msg


def test_table_placement_defaults_to_replicated_and_model_parallel_is_accepted(raw, tmp_path):
    config = parse_config(raw)
    assert config.model.embeddings.placement == "replicated"
    assert config.model.embeddings.exchange == "all_to_all"
    assert config.model.embeddings.placement_of("user_id") == "replicated"
    raw["model"]["embeddings"] = {"placement": "replicated", "exchange": "all_reduce",
                                  "tables": {"user_id": {"placement": "model_parallel"}}}
    parsed = parse_config(raw).model.embeddings
    assert parsed.placement_of("user_id") == "model_parallel"
    assert parsed.placement_of("item_id") == "replicated"
    assert parsed.exchange == "all_reduce"
    raw["model"]["embeddings"] = {"placement": "sharded", "exchange": "nccl",
                                  "tables": {"item_id": {"placement": "row_sharded"}}}
    msg = _error(raw, tmp_path)
    assert "bad.yaml: model.embeddings.placement: Input should be 'replicated' or " \
           "'model_parallel' (got 'sharded')" in msg
    assert "bad.yaml: model.embeddings.exchange: Input should be 'all_to_all' or 'all_reduce' " \
           "(got 'nccl')" in msg
    assert "bad.yaml: model.embeddings.tables.item_id.placement: Input should be 'replicated' " \
           "or 'model_parallel' (got 'row_sharded')" in msg


def test_a_placement_for_a_table_that_does_not_exist_is_named(raw, tmp_path):
    raw["model"]["embeddings"] = {"tables": {"user_idd": {"placement": "replicated"}}}
    msg = _error(raw, tmp_path)
    assert "model.embeddings.tables: 'user_idd' is not an embedding table" in msg



def test_a_key_repeated_in_one_yaml_mapping_is_named_with_its_line(tmp_path):
    text = EXAMPLE.read_text()
    assert "  num_shards: 4\n" in text
    path = tmp_path / "twice.yaml"
    path.write_text(text.replace("  num_shards: 4\n", "  num_shards: 4\n  num_shards: 8\n"))
    first = text.splitlines().index("  num_shards: 4") + 1
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value) == (f"{path}: line {first + 1}: duplicate key 'num_shards' (first at "
                              f"line {first}); a key may appear once per mapping")
    flow = tmp_path / "flow.yaml"  # a flow mapping on one line, nested in a list
    flow.write_text(text.replace("{name: click, type: binary,",
                                 "{name: click, type: binary, name: clicks,"))
    with pytest.raises(ConfigError, match=r"flow.yaml: line \d+: duplicate key 'name'"):
        load_config(flow)


def test_yaml_merge_keys_may_still_be_overridden(tmp_path):
    text = EXAMPLE.read_text().replace(
        "train:\n", "defaults: &defaults {batch_size: 64, seed: 1}\ntrain:\n  <<: *defaults\n")
    path = tmp_path / "merged.yaml"
    path.write_text(text.replace("defaults: &defaults", "x-defaults: &defaults"))
    with pytest.raises(ConfigError) as err:  # parsed, not refused as a duplicate batch_size
        load_config(path)
    assert str(err.value) == f"{path}: x-defaults: unknown key"


def test_label_bounds_on_regression_tasks(raw, tmp_path):
    watch = parse_config(raw).data.tasks[2]
    assert (watch.name, watch.min, watch.max) == ("watch_time", 0.0, None)  # the example's
    raw["data"]["tasks"][2].update(min=-1.5, max=3600)
    watch = parse_config(raw).data.tasks[2]
    assert (watch.min, watch.max) == (-1.5, 3600.0)
    raw["data"]["tasks"][2].update(min=10, max=5)
    assert "bad.yaml: data.tasks[2]: Value error, task 'watch_time': min (10) is greater than " \
           "max (5)" in _error(raw, tmp_path)
    raw["data"]["tasks"][2].update(min=float("nan"), max="long")
    msg = _error(raw, tmp_path)
    assert "data.tasks[2].min: Input should be a finite number" in msg
    assert "data.tasks[2].max: Input should be a valid number" in msg
    raw["data"]["tasks"][2].update(min=0, max=None)
    raw["data"]["tasks"][0]["min"] = 0  # click is binary
    assert "data.tasks[0]: Value error, task 'click': min and max apply to regression tasks " \
           "only" in _error(raw, tmp_path)


def test_serving_section_is_optional_with_tf_serving_defaults():
    serving = load_config(EXAMPLE).serving  # the example has no serving section
    assert serving.model_name == "impressions"  # model.name
    assert serving.version_policy.describe() == "latest: 1"  # TF Serving's own default
    assert (serving.grpc_port, serving.rest_port) == (8500, 8501)
    assert serving.labels == {} and serving.warmup_size == 64
    assert serving.batching.enabled and serving.batching.max_batch_size == 1024
    assert serving.batching.queue_batches == serving.batching.num_batch_threads == 4
    assert serving.monitoring.prometheus
    assert serving.monitoring.path == "/monitoring/prometheus/metrics"


def test_serving_version_policies_and_labels(raw):
    policies = {"all": "all", "{}": {}, "latest": {"latest": 3}, "specific": {"specific": [2, 5]}}
    described = {name: parse_config({**raw, "serving": {"version_policy": value}})
                 .serving.version_policy.describe() for name, value in policies.items()}
    assert described == {"all": "all", "{}": "latest: 1", "latest": "latest: 3",
                         "specific": "specific: [2, 5]"}
    serving = parse_config({**raw, "serving": {
        "model_name": "ranker", "version_policy": {"latest": 2},
        "labels": {"canary": "latest", "stable": "previous", "pinned": 4}}}).serving
    assert serving.model_name == "ranker"
    assert serving.labels == {"canary": "latest", "stable": "previous", "pinned": 4}


def test_serving_errors_name_the_key(raw, tmp_path):
    cases = [
        ({"version_policy": {"latest": 0}}, "serving.version_policy.latest: Input should be "
                                            "greater than 0"),
        ({"version_policy": {"latest": 2, "all": True}}, "serving.version_policy: Value error, "
                                                         "give exactly one of"),
        ({"version_policy": "newest"}, "serving.version_policy: Value error, expected "
                                       "{latest: N}, all or {specific: [...]}, got 'newest'"),
        ({"version_policy": {"specific": [3, 1]}}, "serving.version_policy.specific: Value "
                                                   "error, must list at least one version, "
                                                   "ascending"),
        ({"labels": {"stable": "oldest"}}, "serving.labels.stable: Value error, expected "
                                           "'latest', 'previous' or a version number"),
        ({"labels": {"stable": True}}, "serving.labels.stable: Value error"),
        ({"labels": {"stable": "previous"}}, "serving.labels: Value error, label 'stable' is "
                                             "'previous', but version_policy latest: 1 serves "
                                             "only the newest version"),
        ({"version_policy": {"specific": [2, 3]}, "labels": {"stable": 1}},
         "serving.labels: Value error, label 'stable' names version 1, which version_policy "
         "specific: [2, 3] does not serve"),
        ({"batching": {"allowed_batch_sizes": [64, 32, 1024]}},
         "serving.batching.allowed_batch_sizes: Value error, must be strictly ascending"),
        ({"batching": {"max_batch_size": 256, "allowed_batch_sizes": [64, 128]}},
         "serving.batching.allowed_batch_sizes: Value error, the last size must equal "
         "max_batch_size (256)"),
        ({"grpc_port": 9000, "rest_port": 9000}, "serving.rest_port: Value error, must differ "
                                                 "from grpc_port"),
        ({"rest_port": 70000}, "serving.rest_port: Input should be less than or equal to 65535"),
        ({"monitoring": {"path": "metrics"}}, "serving.monitoring.path: String should match"),
        ({"batching": {"max_batch": 8}}, "serving.batching.max_batch: unknown key"),
        ({"model_name": "a/b"}, "serving.model_name: String should match"),
    ]
    for serving, message in cases:
        assert f"bad.yaml: {message}" in _error({**raw, "serving": serving}, tmp_path), serving


def test_resolved_config_with_a_serving_section_round_trips(raw, tmp_path):
    raw["serving"] = {"version_policy": "all", "labels": {"canary": "latest", "stable": 2},
                      "batching": {"max_batch_size": 256, "allowed_batch_sizes": [64, 256]}}
    source = tmp_path / "serving.yaml"
    source.write_text(yaml.safe_dump(raw))
    config = load_config(source)
    path = tmp_path / "resolved.yaml"
    path.write_text(config.to_yaml())
    assert load_config(path) == config.model_copy(update={"source": str(path)})


def test_a_ranking_score_round_trips_through_the_resolved_config(raw, tmp_path):
    raw["serving"] = {"ranking_score": {"combine": "product", "terms": [
        {"output": "click"}, {"output": "watch_time", "weight": 0.2, "offset": 1}]}}
    config = parse_config(raw, "ranking.yaml")
    terms = config.serving.ranking_score.terms
    assert [(t.output, t.weight, t.offset) for t in terms] == [
        ("click", 1.0, 0.0), ("watch_time", 0.2, 1.0)]
    path = tmp_path / "resolved.yaml"
    path.write_text(config.to_yaml())
    assert load_config(path).serving == config.serving
    assert parse_config({**raw, "serving": {}}).serving.ranking_score is None  # optional


def test_evaluate_group_by_names_a_one_value_feature(raw):
    raw["evaluate"] = {"group_by": "user_id"}
    assert parse_config(raw, "x.yaml").evaluate.group_by == "user_id"
    assert parse_config({k: v for k, v in raw.items() if k != "evaluate"}).evaluate.group_by is None
    raw["evaluate"] = {"group_by": "user"}
    with pytest.raises(ConfigError, match="evaluate.group_by: 'user' is not a feature"):
        parse_config(raw, "x.yaml")
    raw["evaluate"] = {"group_by": "recent_items"}  # a list per row
    with pytest.raises(ConfigError, match="'recent_items' is not a one-value feature"):
        parse_config(raw, "x.yaml")
    raw["evaluate"] = {"calibration_bins": 1}
    with pytest.raises(ConfigError, match="evaluate.calibration_bins"):
        parse_config(raw, "x.yaml")


def test_epochs_per_day_is_a_positive_count(raw):
    assert parse_config(raw).train.epochs_per_day == 1
    raw["train"]["epochs_per_day"] = 0
    with pytest.raises(ConfigError, match="train.epochs_per_day"):
        parse_config(raw, "x.yaml")
