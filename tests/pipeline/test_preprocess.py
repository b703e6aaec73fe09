"""Integration tests of the Beam job on a tiny day, with the DirectRunner.

One module-scoped run feeds most assertions; rerun, failure and the PTransforms get their own
(small) pipelines.
"""

import copy
import gzip
import json
import os
from collections import Counter

import apache_beam as beam
import numpy as np
import pytest
import tensorflow as tf
from apache_beam.testing.util import assert_that, equal_to

import pipeline.preprocess as preprocess
from multitower.config import Config, parse_config
from multitower.manifest import MANIFEST_NAME, ManifestMissingError, read_manifest
from multitower.records import parse_spec
from pipeline.generate import Population, generate_day
from pipeline.read_logs import FAULTS, LINES, ReadLogLines
from pipeline.shards import RECORDS, REJECTED, WriteShards, shard_of
from pipeline.validate import LogLine, ValidateRows, reason_category

pytestmark = pytest.mark.integration
DATE = "2026-01-01"
DIRECT = ["--runner=DirectRunner"]

# (line in extra.jsonl, how to break a good row or the line itself, expected reason category)
BAD_LINES = [
    (2, lambda row: "not json {", "invalid JSON"),
    (4, lambda row: "", "empty line"),
    (5, lambda row: json.dumps({k: v for k, v in row.items() if k != "user_id"}),
     "missing field 'user_id'"),
    (6, lambda row: json.dumps({**row, "item_price": "abc"}),
     "field 'item_price': expected a number"),
    (8, lambda row: json.dumps({**row, "click": 2}),
     "field 'click': expected a binary label 0 or 1"),
    (9, lambda row: "[1, 2, 3]", "not a JSON object"),
    (10, lambda row: json.dumps({**row, "hour": 3.5}), "field 'hour': expected an integer"),
]


def _config(example_raw: dict, root, num_shards: int) -> Config:
    raw = copy.deepcopy(example_raw)
    raw["data"].update(logs=f"{root}/logs/dt={{date}}", tfrecords=f"{root}/tfrecords",
                       rejected=f"{root}/rejected", num_shards=num_shards)
    return parse_config(raw, "test")


def _write_day(root, rows: list[dict], extra: list[str] | None) -> None:
    day = root / "logs" / f"dt={DATE}"
    day.mkdir(parents=True, exist_ok=True)
    for old in day.iterdir():
        old.unlink()
    text = "".join(json.dumps(r) + "\n" for r in rows)
    (day / "part-00000.jsonl.gz").write_bytes(gzip.compress(text.encode()))
    if extra is not None:
        (day / "extra.jsonl").write_text("\n".join(extra) + "\n")


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    generated, _ = generate_day(Population(seed=1), DATE, 216, seed=1, task_correlation=0.8)
    return generated


@pytest.fixture(scope="module")
def day(tmp_path_factory, example_raw, rows):
    """One run over 200 gzipped rows plus a plain file of 9 good and 7 bad lines."""
    root = tmp_path_factory.mktemp("day")
    spare = iter(rows[200:])
    extra, good = [], rows[:200]
    bad = {line: make for line, make, _ in BAD_LINES}
    for line in range(1, 17):
        row = next(spare)
        if line in bad:
            extra.append(bad[line](row))
        else:
            extra.append(json.dumps(row))
            good.append(row)
    _write_day(root, rows[:200], extra)
    config = _config(example_raw, root, num_shards=3)
    manifest = preprocess.run_preprocess(config, DATE, DIRECT)
    return {"root": root, "config": config, "manifest": manifest, "good": good, "extra": extra}


def test_counts_add_up(day):
    assert day["manifest"]["rows"] == {"read": 216, "written": 209, "rejected": 7}
    assert day["manifest"]["rejection_reasons"] == Counter(c for _, _, c in BAD_LINES)


def test_layout_and_manifest(day):
    out = day["root"] / "tfrecords" / f"dt={DATE}"
    manifest = day["manifest"]
    assert manifest["files"] == [f"part-0000{i}-of-00003.tfrecord.gz" for i in range(3)]
    assert sorted(os.listdir(out)) == sorted([*manifest["files"], MANIFEST_NAME])
    assert read_manifest(str(day["root"] / "tfrecords"), DATE) == manifest
    assert manifest["schema_fingerprint"] == day["config"].data.schema_fingerprint()
    logs = day["root"] / "logs" / f"dt={DATE}"
    assert manifest["inputs"] == [str(logs / "extra.jsonl"), str(logs / "part-00000.jsonl.gz")]
    for top in ("tfrecords", "rejected"):  # no temporary directory left behind
        assert os.listdir(day["root"] / top) == [f"dt={DATE}"]


def test_rejections_name_file_line_and_reason(day):
    rejected_dir = day["root"] / "rejected" / f"dt={DATE}"
    records = [json.loads(line) for path in sorted(rejected_dir.glob("rejected-*.jsonl"))
               for line in path.read_text().splitlines()]
    source = str(day["root"] / "logs" / f"dt={DATE}" / "extra.jsonl")
    got = sorted((r["source"], r["line"], reason_category(r["reason"]), r["raw"]) for r in records)
    want = sorted((source, n, c, day["extra"][n - 1]) for n, _, c in BAD_LINES)
    assert got == want


def _expected_tuples(rows: list[dict], columns: list[str]) -> Counter:
    def value(v):
        if isinstance(v, list):  # a list feature: its (cut) elements
            return tuple(v[:10])
        return v if isinstance(v, str | int) else float(np.float32(v))
    return Counter(tuple(value(r[c]) for c in columns) for r in rows)


def test_tfrecords_hold_exactly_the_valid_rows(day):
    data = day["config"].data
    out = day["root"] / "tfrecords" / f"dt={DATE}"
    files = [str(out / name) for name in day["manifest"]["files"]]
    dataset = tf.data.TFRecordDataset(files, compression_type="GZIP").batch(64).map(
        lambda batch: tf.io.parse_example(batch, parse_spec(data)))
    columns = list(parse_spec(data))

    def value(v):
        if isinstance(v, np.ndarray):  # a list feature's elements, as stored (not padded)
            return tuple(value(e) for e in v)
        return v.decode() if isinstance(v, bytes) else v.item()

    got: Counter = Counter()
    for batch in dataset.as_numpy_iterator():
        for i in range(len(batch[columns[0]])):
            got[tuple(value(batch[c][i]) for c in columns)] += 1
    assert got == _expected_tuples(day["good"], columns)


def test_statistics_match_numpy(day):
    good = day["good"]
    for name in ("item_price", "position", "user_activity"):
        values = np.array([r[name] for r in good], dtype=np.float64)
        stats = day["manifest"]["numeric"][name]
        assert stats["count"] == len(good)
        assert stats["mean"] == pytest.approx(values.mean(), rel=1e-9)
        assert stats["std"] == pytest.approx(values.std(), rel=1e-9)
        assert (stats["min"], stats["max"]) == (values.min(), values.max())
    for task in ("click", "conversion", "watch_time"):
        mean = np.mean([r[task] for r in good])
        assert day["manifest"]["labels"][task]["mean"] == pytest.approx(mean, rel=1e-9)


def test_rerun_replaces_and_failure_keeps_the_previous_day(tmp_path, example_raw, rows,
                                                            monkeypatch):
    _write_day(tmp_path, rows[:60], ["oops"])
    first = preprocess.run_preprocess(_config(example_raw, tmp_path, 3), DATE, DIRECT)
    assert first["rows"] == {"read": 61, "written": 60, "rejected": 1}

    def broken(*args):
        raise RuntimeError("boom")

    with monkeypatch.context() as patch:
        patch.setattr(preprocess, "_check_counts", broken)
        with pytest.raises(RuntimeError, match="boom"):
            preprocess.run_preprocess(_config(example_raw, tmp_path, 3), DATE, DIRECT)
    assert read_manifest(str(tmp_path / "tfrecords"), DATE) == first  # untouched
    for top in ("tfrecords", "rejected"):
        assert os.listdir(tmp_path / top) == [f"dt={DATE}"]

    _write_day(tmp_path, rows[:40], None)
    second = preprocess.run_preprocess(_config(example_raw, tmp_path, 2), DATE, DIRECT)
    assert second["rows"] == {"read": 40, "written": 40, "rejected": 0}
    assert second["rejection_reasons"] == {}
    out = tmp_path / "tfrecords" / f"dt={DATE}"
    assert sorted(os.listdir(out)) == sorted(
        ["part-00000-of-00002.tfrecord.gz", "part-00001-of-00002.tfrecord.gz", MANIFEST_NAME])
    rejected = tmp_path / "rejected" / f"dt={DATE}"
    assert all(p.read_text() == "" for p in rejected.iterdir())


def test_missing_day_and_bad_date(tmp_path, example_raw):
    config = _config(example_raw, tmp_path, 2)
    with pytest.raises(FileNotFoundError, match="2026-01-05: nothing matches .*/dt=2026-01-05"):
        preprocess.run_preprocess(config, "2026-01-05", DIRECT)
    # the day's lease was taken first and released: nothing is left under the root
    assert list((tmp_path / "tfrecords").iterdir()) == []
    with pytest.raises(ValueError, match="YYYY-MM-DD"):
        preprocess.run_preprocess(config, "01/05/2026", DIRECT)
    with pytest.raises(ManifestMissingError, match="dt=2026-01-05"):
        read_manifest(config.data.tfrecords, "2026-01-05")


def test_transforms_with_assert_that(tmp_path, data_config, rows):
    good, bad = json.dumps(rows[0]), json.dumps({**rows[1], "device": 7})
    (tmp_path / "a.jsonl").write_text(f"{good}\n\n{bad}\n")
    (tmp_path / "b.jsonl.gz").write_bytes(b"not gzip")
    source = str(tmp_path / "a.jsonl")
    records, rejected = tmp_path / "records", tmp_path / "rejected"
    n = data_config.num_shards
    shard = {line: shard_of(source, line, n) for line in (1, 2, 3)}
    reasons = {2: "empty line", 3: "field 'device': expected a string"}
    want_rejected: dict[int, Counter] = {}
    for line, reason in reasons.items():
        want_rejected.setdefault(shard[line], Counter())[reason] += 1
    with beam.Pipeline("DirectRunner") as p:
        read = p | beam.Create([source, str(tmp_path / "b.jsonl.gz")]) | ReadLogLines()
        lines = read[LINES]
        assert_that(lines | "Numbers" >> beam.Map(lambda x: (x.line, x.text)),
                    equal_to([(1, good.encode()), (2, b""), (3, bad.encode())]), label="Lines")
        assert_that(read[FAULTS], equal_to([(str(tmp_path / "b.jsonl.gz"),
                                             "not a gzip file (it starts with b'not gzip')")]),
                    label="Faults")
        written = lines | WriteShards(data_config, str(records), str(rejected))
        assert_that(written[RECORDS] | beam.Map(lambda s: (s["shard"], s["rows"])),
                    equal_to([(i, int(i == shard[1])) for i in range(n)]), label="Records")
        assert_that(written[REJECTED] | beam.Map(lambda s: (s["file"], s["reasons"])),
                    equal_to([(f"rejected-0000{i}-of-0000{n}.jsonl", dict(c))
                              for i, c in want_rejected.items()]), label="Rejected")
    refused = [json.loads(line) for path in sorted(rejected.iterdir())
               for line in path.read_text().splitlines()]
    assert sorted((r["line"], r["reason"], r["source"]) for r in refused) == [
        (2, "empty line", source), (3, "field 'device': expected a string, got int 7", source)]
    assert sorted(os.listdir(records)) == [f"part-0000{i}-of-0000{n}.tfrecord.gz" for i in range(n)]


def test_validate_rows_on_created_lines(data_config, rows):
    no_user = json.dumps({k: v for k, v in rows[0].items() if k != "user_id"})
    with beam.Pipeline("DirectRunner") as p:
        checked = p | beam.Create([LogLine("mem", 1, no_user.encode()),
                                   LogLine("mem", 2, b"nope")]) | ValidateRows(data_config)
        assert_that(checked.valid, equal_to([]), label="NoneValid")
        assert_that(checked.rejected | beam.Map(lambda r: (r["line"], r["raw"],
                                                           reason_category(r["reason"]))),
                    equal_to([(1, no_user, "missing field 'user_id'"),
                              (2, "nope", "invalid JSON")]), label="Reasons")
