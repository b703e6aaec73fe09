"""`serving.ranking_score`: one fused output in the export, and `multitower export` to change it."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras
import yaml
from click.testing import CliRunner

from commands.cli import main
from multitower.config import ConfigError, load_config, parse_config
from multitower.exports import model_base, versions
from multitower.records import encode_example
from multitower.tfs_requests import read_warmup, request_rows, warmup_path
from tests.small_project import DAYS, EXAMPLE, config_in
from trainer.export import EXAMPLES_SIGNATURE, ExportRejectedError, export_saved_model
from trainer.network import build_network
from trainer.state import ReExport, TrainedDay, TrainState, load_state, save_state

ROWS = 6
PRODUCT = {"combine": "product", "terms": [
    {"output": "click", "weight": 1.0},
    {"output": "conversion", "weight": 0.5},
    {"output": "watch_time", "weight": 0.2, "offset": 1.0}]}
SUM = {"combine": "sum", "terms": [
    {"output": "click", "weight": 2.0},
    {"output": "conversion", "weight": 0.5, "offset": 0.25},
    {"output": "watch_time", "weight": 0.01, "offset": 3.0}]}


def _raw(**serving):
    raw = yaml.safe_load(EXAMPLE.read_text())
    for feature in raw["data"]["features"]:
        if feature["type"] == "categorical":
            feature["hash_buckets"] = min(feature["hash_buckets"], 100)
    raw["model"]["mmoe"].update(num_experts=2, expert_units=[8])
    raw["model"]["tower_units"] = [8]
    # watch_time is served in seconds (expm1 of the head): the score must use seconds.
    raw["data"]["tasks"][2]["label_transform"] = "log1p"
    raw["serving"] = {"warmup_size": ROWS, **serving}
    return raw


CROSS = "<top level>: Value error, "  # how the project shows a check across sections


def _error(raw, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    return str(err.value)


@pytest.mark.parametrize(("ranking", "message"), [
    ({"terms": [{"output": "click"}, {"output": "watch"}]},
     CROSS + "serving.ranking_score.terms[1].output: 'watch' is not a served output; the "
     "outputs are ['click', 'conversion', 'watch_time']"),
    ({"terms": [{"output": "click"}, {"output": "watch_time", "weight": 0.2, "offset": -0.5}]},
     CROSS + "serving.ranking_score.terms[1]: a product needs offset + watch_time >= 0, but task "
     "'watch_time' has min 0, with offset -0.5; raise offset (e.g. 1 for (1 + watch_time)) or "
     "use combine: sum"),
    ({"terms": [{"output": "click", "weight": -1.0}]},
     CROSS + "serving.ranking_score.terms[0]: a product needs offset + click > 0 (its weight is "
     "negative), but 'click' is a probability (from 0), with offset 0; raise offset (e.g. 1 "
     "for (1 + click)) or use combine: sum"),
    ({"combine": "max", "terms": [{"output": "click"}]},
     "serving.ranking_score.combine: Input should be 'product' or 'sum' (got 'max')"),
    ({"terms": []}, "serving.ranking_score.terms: List should have at least 1 item"),
    ({"terms": [{"output": "click", "weight": float("inf")}]},
     "serving.ranking_score.terms[0].weight: Input should be a finite number"),
    ({"terms": [{"output": "click", "power": 2}]},
     "serving.ranking_score.terms[0].power: unknown key"),
])
def test_ranking_score_config_errors_name_the_key(tmp_path, ranking, message):
    assert f"bad.yaml: {message}" in _error(_raw(ranking_score=ranking), tmp_path)


def test_ranking_score_needs_a_min_or_a_sum_for_an_unbounded_regression(tmp_path):
    raw = _raw(ranking_score={"terms": [{"output": "watch_time", "weight": 0.5, "offset": 1}]})
    raw["data"]["tasks"][2].pop("min")
    raw["data"]["tasks"][2]["label_transform"] = "none"
    assert (CROSS + "serving.ranking_score.terms[0]: a product needs offset + watch_time >= 0, "
            "but task 'watch_time' has no min (its predictions are unbounded), with offset 1; "
            "raise offset (e.g. 1 for (1 + watch_time)), set data.tasks' min of 'watch_time' or "
            "use combine: sum") in _error(raw, tmp_path)
    raw["serving"]["ranking_score"]["combine"] = "sum"  # a sum of anything is finite and real
    assert parse_config(raw).serving.ranking_score.combine == "sum"


def test_ranking_score_may_not_take_a_task_or_feature_name_and_may_use_ctcvr(tmp_path):
    raw = _raw(ranking_score={"terms": [{"output": "click"}]})
    raw["data"]["tasks"][2]["name"] = "ranking_score"
    assert (CROSS + "serving.ranking_score: its output is named 'ranking_score', which is "
            "already a task, feature or ctcvr name; rename that one") in _error(raw, tmp_path)
    esmm = _raw(ranking_score={"terms": [{"output": "ctcvr", "weight": 0.5},
                                         {"output": "watch_time", "offset": 1.0}]})
    esmm["model"].update(heads="esmm", esmm={"ctr_task": "click", "cvr_task": "conversion"})
    assert [t.output for t in parse_config(esmm).serving.ranking_score.terms] == [
        "ctcvr", "watch_time"]


def _examples(config, n):
    rng = np.random.default_rng(1)
    examples = []
    for line in range(n):
        row = {f.name: (f"{f.name}-{rng.integers(30)}" if f.dtype == "string" else
                        int(rng.integers(24)) if f.dtype == "int64" else
                        float(rng.normal(3.0, 2.0))) for f in config.data.features}
        row.update({t.label_column: 1.0 for t in config.data.tasks})
        examples.append(encode_example(row, config.data, origin=("part-0.jsonl", line + 1)))
    return examples


def _network(config):
    keras.utils.set_random_seed(0)
    network = build_network(config, {f.name: {"mean": 3.0, "std": 2.0}
                                     for f in config.data.numeric})
    # Spread the outputs: watch_time's head of a few seconds, not expm1(~0).
    bias = network.get_layer("watch_time").out.bias
    bias.assign(tf.fill(bias.shape, 2.0))
    return network


def _by_hand(ranking, network, rows):
    """The formula with numpy over the network's in-memory outputs, watch_time in seconds."""
    raw = network({k: tf.constant(v) for k, v in rows.items()}, training=False)
    y = {name: raw[name].numpy()[:, 0].astype(np.float64) for name in ("click", "conversion")}
    y["watch_time"] = np.expm1(raw["watch_time"].numpy()[:, 0].astype(np.float64))
    terms = [(y[t["output"]] + t.get("offset", 0.0), t.get("weight", 1.0))
             for t in ranking["terms"]]
    if ranking["combine"] == "product":
        return np.prod([base ** weight for base, weight in terms], axis=0), y
    return np.sum([weight * base for base, weight in terms], axis=0), y


@pytest.mark.parametrize("ranking", [PRODUCT, SUM], ids=["product", "sum"])
def test_the_exported_ranking_score_is_the_formula_by_hand(tmp_path, ranking):
    raw = _raw(ranking_score=ranking)
    raw["train"]["export_dir"] = str(tmp_path)
    config = parse_config(raw)
    network = _network(config)
    examples = _examples(config, ROWS)
    path = export_saved_model(network, config, 1, examples)  # validated: finite, both signatures
    loaded = tf.saved_model.load(path)
    rows = request_rows(read_warmup(warmup_path(path))[-1])
    assert len(next(iter(rows.values()))) == ROWS
    served = loaded.signatures["serving_default"](**{k: tf.constant(v) for k, v in rows.items()})
    assert sorted(served) == ["click", "conversion", "ranking_score", "watch_time"]
    score = served["ranking_score"]
    assert score.dtype == tf.float32 and score.shape == (ROWS,)
    want, y = _by_hand(ranking, network, rows)
    assert np.ptp(y["watch_time"]) > 0.1 and np.all(y["watch_time"] > 1.0)  # seconds, varied
    np.testing.assert_allclose(score.numpy(), want, rtol=1e-5)
    assert np.ptp(want) > 1e-3  # the rows are told apart
    by_examples = loaded.signatures[EXAMPLES_SIGNATURE](examples=tf.constant(examples))
    np.testing.assert_allclose(by_examples["ranking_score"].numpy(), want, rtol=1e-5)
    if ranking is SUM:
        assert want.max() > 1.0  # not a probability, and not checked as one


def test_a_ranking_score_that_overflows_is_rejected(tmp_path):
    ranking = {"combine": "sum", "terms": [{"output": "click", "weight": 3e38, "offset": 2.0}]}
    raw = _raw(ranking_score=ranking)
    raw["train"]["export_dir"] = str(tmp_path)
    config = parse_config(raw)
    with pytest.raises(ExportRejectedError, match=r"^export 1 of model 'impressions' rejected: "
                       r"serving_default on warmup request 1 \(1 rows\): output 'ranking_score' "
                       r"has 1 of 1 values not finite \(row 0: inf\)"):
        export_saved_model(_network(config), config, 1, _examples(config, ROWS))
    assert versions(model_base(str(tmp_path), "impressions")) == []


def test_a_layout_2_state_without_exports_loads_and_re_exports_count_for_versions(tmp_path):
    state = TrainState("m", "fp", {}, [TrainedDay("2026-03-01", 9, 9, 1180, 4, {})])
    doc = json.loads(state.to_json())
    del doc["exports"]
    (tmp_path / "state.json").write_text(json.dumps(doc))
    loaded = load_state(str(tmp_path))
    assert loaded == state and loaded.exports == [] and loaded.last_version == 4
    loaded.exports.append(ReExport(5, "ckpt-9", "2026-03-01"))
    save_state(str(tmp_path), loaded)
    again = load_state(str(tmp_path))
    assert again.exports == [ReExport(5, "ckpt-9", "2026-03-01")] and again.last_version == 5


def _with_serving(path, ranking):
    raw = yaml.safe_load(path.read_text())
    raw["serving"] = {"warmup_size": 16, "ranking_score": ranking}
    out = path.with_name(f"{ranking['combine']}.yaml")
    out.write_text(yaml.safe_dump(raw))
    return out


def _export(*args):
    result = CliRunner().invoke(main, ["export", *map(str, args)])
    return result.exit_code, result.output.strip().splitlines()


def test_the_export_command_re_exports_a_checkpoint_with_a_new_ranking_score(
        small_project, tmp_path):
    from trainer.train import next_version, train_day

    plain = config_in(small_project, tmp_path, mmoe={"num_experts": 2, "expert_units": [8]})
    config = load_config(plain)
    code, lines = _export("--config", plain)  # nothing trained yet
    assert (code, lines) == (1, [f"Error: {tmp_path}/model holds no trained model; train a day "
                                 f"first"])
    assert not (tmp_path / "model").exists()
    day = train_day(config, DAYS[0])
    assert day.version == 1
    checkpoints = tmp_path / "model" / "checkpoints"
    latest = f"{checkpoints}/ckpt-{day.global_step}"
    base = model_base(config.train.export_dir, config.model.name)

    product = _with_serving(plain, PRODUCT)
    code, lines = _export("--config", product)
    assert code == 0, lines
    assert lines[-1] == (f"exported {base}/2 (version 2) from {latest}, warmup rows of "
                         f"{DAYS[0]}")
    served = tf.saved_model.load(f"{base}/2").signatures["serving_default"]
    rows = request_rows(read_warmup(warmup_path(f"{base}/2"))[-1])
    out = served(**{k: tf.constant(v) for k, v in rows.items()})
    y = {k: out[k].numpy().astype(np.float64) for k in ("click", "conversion", "watch_time")}
    np.testing.assert_allclose(
        out["ranking_score"].numpy(),
        y["click"] * y["conversion"] ** 0.5 * np.maximum(1.0 + y["watch_time"], 1e-6) ** 0.2,
        rtol=1e-5)
    one = tf.saved_model.load(f"{base}/1").signatures["serving_default"]
    assert "ranking_score" not in one.structured_outputs  # trained without one
    np.testing.assert_allclose(  # the same weights
        one(**{k: tf.constant(v) for k, v in rows.items()})["click"].numpy(), y["click"],
        rtol=1e-6)

    summed = _with_serving(plain, SUM)
    code, lines = _export("--config", summed, "--checkpoint", latest, "--date", DAYS[1])
    assert code == 0, lines
    assert lines[-1] == (f"exported {base}/3 (version 3) from {latest}, warmup rows of "
                         f"{DAYS[1]}")
    assert versions(base) == [1, 2, 3]
    state = json.loads((tmp_path / "model" / "state.json").read_text())
    assert [d["version"] for d in state["days"]] == [1]
    assert state["exports"] == [{"version": 2, "checkpoint": latest, "date": DAYS[0]},
                                {"version": 3, "checkpoint": latest, "date": DAYS[1]}]
    assert not (tmp_path / "model" / "lease.json").exists()

    code, lines = _export("--config", summed, "--checkpoint", f"{checkpoints}/ckpt-999")
    assert (code, lines) == (1, [
        f"Error: checkpoint {checkpoints}/ckpt-999 does not exist (no "
        f"{checkpoints}/ckpt-999.index); give a prefix such as {checkpoints}/ckpt-1234"])
    assert versions(base) == [1, 2, 3]
    assert sorted(os.listdir(base)) == ["1", "2", "3"]

    # the next day's export comes after the re-exports, even with their folders gone
    for version in (2, 3):
        tf.io.gfile.rmtree(f"{base}/{version}")
    assert next_version(config, load_state(config.train.model_dir)) == 4
