"""Two runs over the same logs write the same bytes, on either DirectRunner mode.

Three runs over one day (two in-memory, one `multi_processing` with 2 workers) are compared file
by file: every TFRecord file, every rejected file and the manifest but its time stamp. Before
rows were sharded by origin, the in-memory and multi-process runs put rows into different files.
The same runs also show that every example carries its origin and lands where its hash says.
"""

import gzip
import json
import os

import pytest
import tensorflow as tf

from multitower.config import parse_config
from multitower.manifest import verify_partition
from multitower.origin import ORIGIN_FILE, ORIGIN_LINE
from multitower.records import encode_example, origin_spec, parse_spec
from pipeline.generate import Population, generate_day
from pipeline.preprocess import run_preprocess
from pipeline.shards import shard_of
from pipeline.validate import parse_line
from tests.published_files import published_files
from tests.stats_day import with_list_and_like

pytestmark = pytest.mark.integration
DATE = "2026-01-01"
RUNS = {
    "memory": [],
    "memory-again": [],
    "processes": ["--direct_running_mode=multi_processing", "--direct_num_workers=2"],
}
@pytest.fixture(scope="module")
def runs(tmp_path_factory, example_raw) -> dict:
    """One day of logs in three files (one with bad rows), preprocessed once per entry of RUNS."""
    root = tmp_path_factory.mktemp("determinism")
    logs = root / "logs" / f"dt={DATE}"
    logs.mkdir(parents=True)
    rows, _ = generate_day(Population(seed=4), DATE, 900, seed=4, task_correlation=0.8)
    for k in range(2):
        text = "".join(json.dumps(r) + "\n" for r in rows[k * 400:(k + 1) * 400])
        (logs / f"part-{k}.jsonl.gz").write_bytes(gzip.compress(text.encode()))
    extra = [json.dumps(r) for r in rows[800:]]
    extra[3], extra[50], extra[77] = "not json", "", json.dumps({**rows[877], "click": 3})
    (logs / "extra.jsonl").write_text("\n".join(extra) + "\n")
    out = {}
    for name, beam_args in RUNS.items():
        raw = with_list_and_like(example_raw)  # the statistics of a list feature too
        raw["data"].update(logs=f"{root}/logs/dt={{date}}", tfrecords=f"{root}/{name}/tfrecords",
                           rejected=f"{root}/{name}/rejected", num_shards=3)
        config = parse_config(raw, "test")
        out[name] = {"manifest": run_preprocess(config, DATE, beam_args), "config": config,
                     "root": root / name}
    return out


def test_reruns_are_byte_identical_in_memory_and_with_processes(runs):
    first = published_files(runs["memory"]["root"])
    assert sorted(first) == sorted(
        [f"tfrecords/dt={DATE}/part-0000{i}-of-00003.tfrecord.gz" for i in range(3)]
        + [f"tfrecords/dt={DATE}/_MANIFEST.json"]
        + [f"rejected/dt={DATE}/{name}" for name in runs["memory"]["manifest"]["rejected_files"]])
    assert runs["memory"]["manifest"]["rows"] == {"read": 900, "written": 897, "rejected": 3}
    for name in ("memory-again", "processes"):
        other = published_files(runs[name]["root"])
        assert sorted(other) == sorted(first), name
        for path, content in first.items():
            assert other[path] == content, f"{name}: {path} differs"


def _examples(run: dict) -> dict[str, list[bytes]]:
    folder = run["root"] / "tfrecords" / f"dt={DATE}"
    return {name: list(tf.data.TFRecordDataset(str(folder / name), compression_type="GZIP")
                       .as_numpy_iterator()) for name in run["manifest"]["files"]}


def test_every_example_carries_its_origin_in_order_and_in_its_shard(runs):
    run = runs["memory"]
    data = run["config"].data
    lines: dict[str, list[bytes]] = {}
    for shard, (name, examples) in enumerate(_examples(run).items()):
        origins = tf.io.parse_example(examples, origin_spec())
        files = [f.decode() for f in origins[ORIGIN_FILE].numpy()]
        numbers = origins[ORIGIN_LINE].numpy().tolist()
        assert len(examples) == run["manifest"]["file_checks"][name]["rows"] > 200
        assert list(zip(files, numbers, strict=True)) == sorted(zip(files, numbers, strict=True))
        for example, source, number in zip(examples, files, numbers, strict=True):
            assert shard_of(source, number, data.num_shards) == shard
            if source not in lines:
                opener = gzip.open if source.endswith(".gz") else open
                with opener(source, "rb") as f:
                    lines[source] = f.read().splitlines()
            # The example is exactly the encoding of the log line it names.
            row, reason = parse_line(lines[source][number - 1], data)
            assert reason is None
            assert example == encode_example(row, data, origin=(source, number))
    assert sorted(lines) == sorted(run["manifest"]["inputs"])


def test_training_reads_no_origin_field(runs):
    data = runs["memory"]["config"].data
    spec = parse_spec(data)
    assert not {ORIGIN_FILE, ORIGIN_LINE} & set(spec)
    assert set(spec) == {f.name for f in data.features} | {t.label_column for t in data.tasks}
    examples = next(iter(_examples(runs["memory"]).values()))
    parsed = tf.io.parse_example(examples, spec)  # extra fields in an Example are ignored
    assert parsed["item_price"].shape == (len(examples),)


def test_rejected_files_are_sorted_by_source_and_line(runs):
    run = runs["memory"]
    folder = run["root"] / "rejected" / f"dt={DATE}"
    assert sorted(os.listdir(folder)) == run["manifest"]["rejected_files"]
    rejected = []
    for name in run["manifest"]["rejected_files"]:
        records = [json.loads(line) for line in (folder / name).read_text().splitlines()]
        keys = [(r["source"], r["line"]) for r in records]
        assert keys == sorted(keys)
        rejected += keys
    extra = str(run["root"].parent / "logs" / f"dt={DATE}" / "extra.jsonl")
    assert sorted(rejected) == [(extra, 4), (extra, 51), (extra, 78)]


def test_manifest_records_sizes_checksums_and_label_ranges(runs):
    run = runs["processes"]
    manifest = run["manifest"]
    folder = run["root"] / "tfrecords" / f"dt={DATE}"
    for name, check in manifest["file_checks"].items():
        assert check["bytes"] == (folder / name).stat().st_size
    assert sum(c["rows"] for c in manifest["file_checks"].values()) == 897
    assert verify_partition(str(run["root"] / "tfrecords"), DATE) == []
    assert manifest["labels"]["click"]["min"] == 0.0 and manifest["labels"]["click"]["max"] == 1.0
    assert manifest["labels"]["watch_time"]["min"] == 0.0 < manifest["labels"]["watch_time"]["max"]
    assert manifest["skipped_files"] == []
