"""Prediction refuses a request value for the very reason log validation rejects it."""

import math

import numpy as np
import pytest
import tensorflow as tf
import yaml

from multitower.config import parse_config
from pipeline.validate import validate_row
from serving.predict import PredictError, Predictor
from tests.helpers import EXAMPLE
from trainer.export import export_saved_model
from trainer.network import build_network

GOOD = {"user_id": "u1", "user_segment": "s1", "user_country": "DE", "item_id": "i9",
        "item_category": "c1", "device": "ios", "hour": 7, "position": 2, "item_price": 19.5,
        "user_activity": 0.5, "click": 1, "conversion": 0, "watch_time": 12.0}

# (feature, bad value): every kind of fault a feature value can have
BAD = [
    ("item_price", "abc"), ("item_price", float("nan")), ("item_price", math.inf),
    ("item_price", -math.inf), ("item_price", 1e39), ("item_price", 10**400),
    ("item_price", True), ("item_price", None), ("item_price", [1.0]), ("item_price", {"a": 1}),
    ("hour", 7.5), ("hour", 2**63), ("hour", -(2**63) - 1), ("hour", "7"), ("hour", False),
    ("user_id", 17), ("user_id", None), ("user_id", ["u1"]), ("user_id", 1.5),
]


@pytest.fixture(scope="module")
def predictor(tmp_path_factory) -> Predictor:
    raw = yaml.safe_load(EXAMPLE.read_text())
    for feature in raw["data"]["features"]:
        if feature["type"] == "categorical":
            feature["hash_buckets"] = min(feature["hash_buckets"], 100)
    raw["model"]["mmoe"].update(num_experts=2, expert_units=[8])
    raw["train"]["export_dir"] = str(tmp_path_factory.mktemp("export"))
    config = parse_config(raw)
    network = build_network(config, {f.name: {"mean": 0.0, "std": 1.0}
                                     for f in config.data.numeric})
    export_saved_model(network, config, 1)
    return Predictor(f"{config.train.export_dir}/{config.model.name}")


@pytest.mark.parametrize(("name", "value"), BAD, ids=[f"{n}={v!r:.20}" for n, v in BAD])
def test_a_bad_feature_is_refused_with_the_log_validation_reason(predictor, name, value):
    config = parse_config(yaml.safe_load(EXAMPLE.read_text()))
    row = {**GOOD, name: value}
    clean, reason = validate_row(row, config.data)
    assert clean is None and reason.startswith(f"field {name!r}: ")
    with pytest.raises(PredictError) as info:
        list(predictor.predict([("rows.jsonl:3", GOOD), ("rows.jsonl:4", row)]))
    assert str(info.value) == f"rows.jsonl:4: {reason}"


def test_a_missing_feature_is_refused_with_the_log_validation_reason(predictor):
    config = parse_config(yaml.safe_load(EXAMPLE.read_text()))
    row = {k: v for k, v in GOOD.items() if k != "device"}
    _, reason = validate_row(row, config.data)
    with pytest.raises(PredictError, match="^rows.jsonl:1: ") as info:
        list(predictor.predict([("rows.jsonl:1", row)]))
    assert str(info.value) == f"rows.jsonl:1: {reason}" == "rows.jsonl:1: missing field 'device'"


def test_good_rows_are_scored_and_labels_are_not_needed(predictor):
    features = {k: v for k, v in GOOD.items() if k not in ("click", "conversion", "watch_time")}
    (scores,) = list(predictor.predict([("a", features), ("b", {**features, "hour": 8})]))
    assert set(scores) == {"click", "conversion", "watch_time"}
    assert scores["click"].shape == (2,)
    assert np.all((scores["click"] > 0) & (scores["click"] < 1))
    assert predictor.version == 1
    assert predictor.inputs["hour"].dtype == tf.int64
