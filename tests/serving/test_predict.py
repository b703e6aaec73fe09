"""Prediction refuses a request value for the very reason log validation rejects it."""

import gzip
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
import yaml

from multitower.config import parse_config
from multitower.rows import decode_line
from pipeline.validate import parse_line, validate_row
from serving.predict import (
    BadRow,
    PredictError,
    Predictor,
    ScoredRow,
    complete_file,
    predict_file,
    read_lines,
    read_rows,
    score_file,
)
from tests.bad_rows import GOOD as CORPUS_GOOD
from tests.bad_rows import bad_rows, good_line, good_rows
from tests.served_model import with_lists
from tests.small_project import EXAMPLE
from trainer.export import export_saved_model
from trainer.network import build_network

GOOD = with_lists(  # and a list for each list feature the example config may have
    {"user_id": "u1", "user_segment": "s1", "user_country": "DE", "item_id": "i9",
     "item_category": "c1", "device": "ios", "hour": 7, "position": 2, "item_price": 19.5,
     "user_activity": 0.5, "click": 1, "conversion": 0, "watch_time": 12.0},
    parse_config(yaml.safe_load(EXAMPLE.read_text())).data)

# (feature, bad value): every kind of fault a feature value can have
BAD = [
    ("item_price", "abc"), ("item_price", float("nan")), ("item_price", math.inf),
    ("item_price", -math.inf), ("item_price", 1e39), ("item_price", 10**400),
    ("item_price", True), ("item_price", None), ("item_price", [1.0]), ("item_price", {"a": 1}),
    ("hour", 7.5), ("hour", 2**63), ("hour", -(2**63) - 1), ("hour", "7"), ("hour", False),
    ("user_id", 17), ("user_id", None), ("user_id", ["u1"]), ("user_id", 1.5),
]


def export_small_model(folder: Path) -> str:
    """Exports version 1 of a small untrained model of the example config; returns its base."""
    raw = yaml.safe_load(EXAMPLE.read_text())
    for feature in raw["data"]["features"]:
        if feature["type"] == "categorical":
            feature["hash_buckets"] = min(feature["hash_buckets"], 100)
    raw["model"]["mmoe"].update(num_experts=2, expert_units=[8])
    raw["train"]["export_dir"] = str(folder)
    config = parse_config(raw)
    network = build_network(config, {f.name: {"mean": 0.0, "std": 1.0}
                                     for f in config.data.numeric})
    export_saved_model(network, config, 1)
    return f"{config.train.export_dir}/{config.model.name}"


@pytest.fixture(scope="module")
def predictor(tmp_path_factory) -> Predictor:
    return Predictor(export_small_model(tmp_path_factory.mktemp("export")))


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


def _predict_reason(predictor: Predictor, line: bytes) -> str | None:
    row, reason = decode_line(line)
    return reason if reason is not None else predictor.check_row(row)[1]


@pytest.mark.parametrize("case", bad_rows(), ids=[c.name for c in bad_rows()])
def test_every_corpus_line_gets_the_pipeline_reason_or_is_scored(predictor, case):
    config = parse_config(yaml.safe_load(EXAMPLE.read_text()))
    _, pipeline_reason = parse_line(case.line, config.data)
    assert case.reason in pipeline_reason
    if case.where == "label":  # requests carry no labels: only the features are checked
        assert _predict_reason(predictor, case.line) is None
    else:
        assert _predict_reason(predictor, case.line) == pipeline_reason


def test_lines_at_the_edges_of_valid_are_scored(predictor):
    rows = [decode_line(line)[0] for _, line in good_rows()]
    checked = [predictor.check_row(row) for row in rows]
    assert all(reason is None for _, reason in checked)
    scores = predictor.score([features for features, _ in checked])
    assert scores["click"].shape == (len(rows),) and np.all(np.isfinite(scores["click"]))


def _write(path: Path, lines: list[bytes]) -> str:
    text = b"".join(line + b"\n" for line in lines)
    path.write_bytes(gzip.compress(text) if path.name.endswith(".gz") else text)
    return str(path)


def test_score_file_reports_bad_rows_and_stops_scoring_unless_skipping(predictor, tmp_path):
    bad = good_line(item_price="abc")
    path = _write(tmp_path / "rows.jsonl.gz", [good_line()] * 3 + [bad] + [good_line()] * 3
                  + [b"\xff"])
    events = list(score_file(predictor, path, skip_invalid=False, batch_size=2))
    assert [(type(e), e.line) for e in events] == [
        (ScoredRow, 1), (ScoredRow, 2), (BadRow, 4), (BadRow, 8)]
    assert events[2] == BadRow(path, 4, "field 'item_price': expected a number, got str 'abc'",
                               bad)
    assert events[3].reason == "invalid UTF-8: invalid start byte (0xff) at byte 0"
    assert events[3].record() == {"source": path, "line": 8, "reason": events[3].reason,
                                  "raw": "\ufffd"}
    events = list(score_file(predictor, path, skip_invalid=True, batch_size=2))
    assert sorted(e.line for e in events if isinstance(e, ScoredRow)) == [1, 2, 3, 5, 6, 7]
    assert set(events[0].scores) == set(predictor.outputs)


def test_predict_file_refuses_listing_the_first_bad_rows(predictor, tmp_path):
    lines = [good_line(hour=h) for h in range(25)] + [good_line(hour="x")] * 23
    path = _write(tmp_path / "rows.jsonl", lines)
    with pytest.raises(PredictError) as info:
        predict_file(predictor, path, io.StringIO(), None, batch_size=10)
    message = str(info.value).splitlines()
    assert message[0].startswith(f"{path}: 23 invalid rows, so nothing was scored")
    assert message[1] == f"  {path}:26: field 'hour': expected an integer, got str 'x'"
    assert message[20] == f"  {path}:45: field 'hour': expected an integer, got str 'x'"
    assert message[21:] == ["  ... and 3 more"]


def test_predict_file_skipping_writes_scores_with_lines_and_rejected_records(predictor, tmp_path):
    path = _write(tmp_path / "rows.jsonl", [good_line(), b"[1]", good_line(click=None)])
    scores, rejected = io.StringIO(), io.StringIO()
    outcome = predict_file(predictor, path, scores, rejected, batch_size=1)
    assert (outcome.scored, outcome.invalid) == (2, 1)
    written = [json.loads(line) for line in scores.getvalue().splitlines()]
    assert [w["line"] for w in written] == [1, 3]
    assert set(written[0]) == {"line", *predictor.outputs}
    assert [json.loads(r) for r in rejected.getvalue().splitlines()] == [
        {"source": path, "line": 2, "reason": "not a JSON object: got list", "raw": "[1]"}]


def test_read_rows_names_the_file_line_and_reason(tmp_path):
    path = _write(tmp_path / "rows.jsonl", [good_line(), b'{"a": 1, "a": 2}'])
    with pytest.raises(PredictError, match="rows.jsonl:2: duplicate key: 'a' appears twice"):
        list(read_rows(path))
    assert next(read_rows(path)) == (1, CORPUS_GOOD)


@pytest.mark.parametrize(("content", "fault"), [
    (gzip.compress(good_line() * 200)[:-30],
     "Compressed file ended before the end-of-stream marker was reached"),
    (b'{"user_id": "u1"}\n', "Not a gzipped file"),
    (gzip.compress(good_line())[:12] + b"\x00" * 40, ""),
])
def test_a_broken_gzip_file_is_one_error_naming_it(tmp_path, content, fault):
    path = tmp_path / "rows.jsonl.gz"
    path.write_bytes(content)
    with pytest.raises(PredictError) as info:
        list(read_lines(str(path)))
    assert str(info.value).startswith(f"{path}: invalid or truncated gzip file: {fault}")


def test_a_missing_input_is_one_error_naming_it(tmp_path):
    with pytest.raises(PredictError, match="nothing.jsonl: no such file"):
        list(read_lines(str(tmp_path / "nothing.jsonl")))


def test_complete_file_appears_only_when_complete(tmp_path):
    path = tmp_path / "scores.jsonl"
    path.write_text("old\n")
    with pytest.raises(RuntimeError), complete_file(str(path), io.StringIO()) as out:
        out.write("partial\n")
        raise RuntimeError("interrupted")
    assert path.read_text() == "old\n" and sorted(p.name for p in tmp_path.iterdir()) == [
        "scores.jsonl"]
    with complete_file(str(path), io.StringIO()) as out:
        out.write("new\n")
        assert path.read_text() == "old\n"  # not yet
    assert path.read_text() == "new\n" and len(list(tmp_path.iterdir())) == 1
    fallback = io.StringIO()
    with complete_file(None, fallback) as out:
        out.write("to stdout\n")
        assert fallback.getvalue() == ""
    assert fallback.getvalue() == "to stdout\n"
    missing = str(tmp_path / "no-such-folder" / "x.jsonl")
    with pytest.raises(PredictError, match="no-such-folder/x.jsonl: cannot write: "), \
            complete_file(missing, io.StringIO()):
        pass


def test_a_corrupt_saved_model_is_one_line_naming_the_version(predictor, tmp_path):
    import shutil

    base = tmp_path / "impressions"
    shutil.copytree(predictor.path, base / "1")
    pb = base / "1" / "saved_model.pb"
    pb.write_bytes(pb.read_bytes()[:200])  # truncated
    with pytest.raises(PredictError) as info:
        Predictor(str(base))
    message = str(info.value)
    assert message.startswith(f"{base}/1: cannot load the SavedModel (")
    assert message.endswith("); export the version again, or remove it to fall back on the "
                            "one before")
    assert "\n" not in message
