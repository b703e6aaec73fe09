"""No row can break a day: every line of the bad-row corpus is rejected with its reason.

The fast tests feed the corpus (`tests/bad_rows.py`) to `parse_line`; the integration test runs
the whole corpus, plain and gzipped, through one real Beam run of `run_preprocess`.
"""

import copy
import gzip
import json
from collections import Counter

import pytest
import tensorflow as tf

from multitower.manifest import read_manifest
from multitower.rows import MAX_DEPTH, decode_line
from pipeline.preprocess import run_preprocess
from pipeline.validate import parse_line, reason_category
from tests.bad_rows import GOOD, bad_rows, good_line, good_rows, with_text

DATE = "2026-02-01"
BAD = bad_rows()
GOOD_ROWS = good_rows()


def test_the_corpus_is_large_and_covers_every_kind_of_fault():
    assert len(BAD) >= 40
    assert {c.where for c in BAD} == {"line", "feature", "label"}


@pytest.mark.parametrize("case", BAD, ids=[c.name for c in BAD])
def test_every_bad_line_is_refused_with_its_reason(data_config, case):
    row, reason = parse_line(case.line, data_config)
    assert row is None
    assert case.reason in reason
    assert len(reason) < 300  # a huge value is shortened, not copied into the reason
    json.dumps(reason).encode("ascii")  # a reason is always writable (no lone surrogate)


@pytest.mark.parametrize(("name", "line"), GOOD_ROWS, ids=[n for n, _ in GOOD_ROWS])
def test_lines_at_the_edges_of_valid_are_accepted(data_config, name, line):
    row, reason = parse_line(line, data_config)
    assert reason is None, reason
    assert set(row) == set(GOOD)


def test_edge_values_come_out_as_encoded(data_config):
    assert parse_line(good_line(hour=2**63 - 1), data_config)[0]["hour"] == 2**63 - 1
    assert parse_line(with_text("item_price", "1e-46"), data_config)[0]["item_price"] == 1e-46
    row, _ = parse_line(with_text("user_id", '"\\ud83d\\ude00"'), data_config)
    assert row["user_id"] == "\U0001F600"
    assert parse_line(good_line(click=True), data_config)[0]["click"] == 1.0


def test_decoding_is_one_function_for_bytes_and_text():
    line = good_line()
    assert decode_line(line) == decode_line(line.decode()) == (json.loads(line), None)
    assert decode_line("[" * MAX_DEPTH + "]" * MAX_DEPTH)[1] == "not a JSON object: got list"
    assert decode_line("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1))[1] == (
        f"JSON nested too deeply: more than {MAX_DEPTH} levels")
    # brackets inside strings do not count as nesting
    deep_text = json.dumps({"note": "[" * 500 + '\\"' + "{" * 500})
    assert decode_line(deep_text)[1] is None


def test_label_bounds_reject_out_of_range_labels(example_raw):
    from multitower.config import parse_config

    raw = copy.deepcopy(example_raw)
    raw["data"]["tasks"][2].update(min=1, max=60.5)  # watch_time
    data = parse_config(raw).data
    assert parse_line(good_line(watch_time=1), data)[1] is None
    assert parse_line(good_line(watch_time=60.5), data)[1] is None
    assert parse_line(good_line(watch_time=0.5), data)[1] == (
        "field 'watch_time': below the minimum 1, got float 0.5")
    assert parse_line(good_line(watch_time=61), data)[1] == (
        "field 'watch_time': above the maximum 60.5, got int 61")
    assert reason_category("field 'watch_time': above the maximum 60.5, got int 61") == (
        "field 'watch_time': above the maximum 60.5")


def _lines() -> list[tuple[bytes, object]]:
    """The corpus file: (line, the BadLine or None for a good line), bad and good interleaved."""
    goods = iter(GOOD_ROWS)
    lines: list[tuple[bytes, object]] = []
    for case in BAD:
        lines.append((case.line, case))
        good = next(goods, None)
        if good is not None:
            lines.append((good[1], None))
    lines += [(line, None) for _, line in goods]
    return lines


@pytest.mark.integration
def test_the_whole_corpus_in_one_beam_run(tmp_path, example_raw):
    raw = copy.deepcopy(example_raw)
    raw["data"].update(logs=f"{tmp_path}/logs/dt={{date}}", tfrecords=f"{tmp_path}/tfrecords",
                       rejected=f"{tmp_path}/rejected", num_shards=2)
    from multitower.config import parse_config

    config = parse_config(raw, "test")
    day = tmp_path / "logs" / f"dt={DATE}"
    day.mkdir(parents=True)
    lines = _lines()
    text = b"".join(line + b"\n" for line, _ in lines)
    plain, zipped = day / "corpus.jsonl", day / "corpus.jsonl.gz"
    plain.write_bytes(text)
    zipped.write_bytes(gzip.compress(text))

    manifest = run_preprocess(config, DATE, ["--runner=DirectRunner"])

    rows = manifest["rows"]
    assert (rows["read"], rows["written"], rows["rejected"]) == (
        2 * len(lines), 2 * len(GOOD_ROWS), 2 * len(BAD))
    records = [json.loads(line) for path in sorted((tmp_path / "rejected" / f"dt={DATE}").glob(
        "*.jsonl")) for line in path.read_text().splitlines()]
    assert len(records) == 2 * len(BAD)
    by_place = {(r["source"], r["line"]): r for r in records}
    for source in (plain, zipped):
        for number, (line, case) in enumerate(lines, start=1):
            record = by_place.get((str(source), number))
            if case is None:
                assert record is None, f"good line {number} was rejected: {record}"
                continue
            assert record is not None, f"{case.name} (line {number}) was not rejected"
            assert case.reason in record["reason"], (case.name, record["reason"])
            assert record["raw"] == line.rstrip(b"\r\n").decode("utf-8", "replace")
    reasons = manifest["rejection_reasons"]
    assert sum(reasons.values()) == 2 * len(BAD)
    assert reasons == Counter(reason_category(r["reason"]) for r in records)
    for category in ("invalid UTF-8", "invalid JSON", "duplicate key", "JSON nested too deeply",
                     "empty line", "not a JSON object",
                     "field 'user_id': invalid Unicode (a lone surrogate)",
                     "field 'item_price': number out of float32 range",
                     "field 'watch_time': below the minimum 0"):
        assert reasons[category] > 0, category
    assert read_manifest(str(tmp_path / "tfrecords"), DATE)["rows"] == rows
    written = sum(1 for _ in tf.data.TFRecordDataset(
        [str(tmp_path / "tfrecords" / f"dt={DATE}" / f) for f in manifest["files"]],
        compression_type="GZIP"))
    assert written == 2 * len(GOOD_ROWS)
