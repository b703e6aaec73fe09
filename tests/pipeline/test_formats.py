"""The same logical day as JSON lines, CSV (plain and gzipped) and Parquet makes the same day.

`multitower generate --format F --missing-rate R` writes one day in each format (the same rows,
missing values as absent keys, empty cells and nulls); each is preprocessed with the same config
(defaults for two of the three features the generator leaves out, none for the third, whose
rows are rejected). The TFRecords hold the same examples in the same order once sorted by
(file, position) and stripped of their origin, the statistics are equal to the last bit, the
same rows are rejected at the positions each format gives them, and a second run of the CSV
day (in memory) and of the Parquet day (`multi_processing`) writes the same bytes.
"""

import csv
import gzip
import json
import os
from pathlib import Path

import pytest
import tensorflow as tf
from click.testing import CliRunner

from multitower.config import parse_config
from multitower.origin import ORIGIN_FILE, ORIGIN_LINE
from pipeline.generate import MISSABLE, Population, generate_day, generate_logs
from pipeline.preprocess import run_preprocess
from pipeline.stats import STATISTICS_KEYS
from tests.published_files import published_files
from tests.stats_day import with_list_and_like

pytestmark = pytest.mark.integration
DATE = "2026-04-01"
ROWS, SEED, MISSING = 600, 6, 0.05
DEFAULTS = {"user_country": "??", "device": "unknown"}  # user_activity has none: rejected
PROCESSES = ["--direct_running_mode=multi_processing", "--direct_num_workers=2"]
# run name -> (data.format, the folder of the logs under the root, Beam arguments)
RUNS = {
    "jsonl": ("jsonl", "jsonl", []),
    "csv.gz": ("csv", "csv", []),
    "csv": ("csv", "csv-plain", []),
    "parquet": ("parquet", "parquet", []),
    "csv.gz-again": ("csv", "csv", []),
    "parquet-again": ("parquet", "parquet", PROCESSES),
}
FORMATS = ("jsonl", "csv.gz", "csv", "parquet")


def _generate(out: Path, log_format: str) -> None:
    from commands.cli import main

    result = CliRunner().invoke(main, [
        "generate", "--out", str(out), "--start-date", DATE, "--days", "1",
        "--rows-per-day", str(ROWS), "--seed", str(SEED), "--format", log_format,
        "--missing-rate", str(MISSING)])
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"wrote 2 {log_format} files")


@pytest.fixture(scope="module")
def runs(tmp_path_factory, example_raw) -> dict:
    root = tmp_path_factory.mktemp("formats")
    for log_format in ("jsonl", "csv", "parquet"):
        _generate(root / log_format, log_format)
    plain = root / "csv-plain" / f"dt={DATE}"
    plain.mkdir(parents=True)
    for path in sorted((root / "csv" / f"dt={DATE}").iterdir()):
        (plain / path.name.removesuffix(".gz")).write_bytes(gzip.decompress(path.read_bytes()))
    out = {}
    for name, (log_format, folder, beam_args) in RUNS.items():
        raw = with_list_and_like(example_raw)  # a list column in every format, and like
        raw["data"].update(logs=f"{root}/{folder}/dt={{date}}", format=log_format,
                           tfrecords=f"{root}/out/{name}/tfrecords",
                           rejected=f"{root}/out/{name}/rejected", num_shards=3)
        for feature in raw["data"]["features"]:
            if feature["name"] in DEFAULTS:
                feature["default"] = DEFAULTS[feature["name"]]
        config = parse_config(raw, "test")
        out[name] = {"manifest": run_preprocess(config, DATE, beam_args), "config": config,
                     "root": root / "out" / name, "logs": root / folder / f"dt={DATE}"}
    return out


def _examples(run: dict) -> list[tuple[str, int, bytes]]:
    """(file name without suffixes, position, Example without its origin), sorted."""
    folder = run["root"] / "tfrecords" / f"dt={DATE}"
    out = []
    for name in run["manifest"]["files"]:
        dataset = tf.data.TFRecordDataset(str(folder / name), compression_type="GZIP")
        for record in dataset.as_numpy_iterator():
            example = tf.train.Example.FromString(record)
            feature = example.features.feature
            source = feature[ORIGIN_FILE].bytes_list.value[0].decode()
            position = feature[ORIGIN_LINE].int64_list.value[0]
            del feature[ORIGIN_FILE], feature[ORIGIN_LINE]
            out.append((os.path.basename(source).split(".")[0], position,
                        example.SerializeToString(deterministic=True)))
    return sorted(out)


def _header_lines(name: str) -> int:
    return 1 if name.startswith("csv") else 0  # a CSV file's first data record is on line 2


def test_every_format_gives_the_same_examples_in_the_same_order(runs):
    reference = _examples(runs["jsonl"])
    assert len(reference) == runs["jsonl"]["manifest"]["rows"]["written"] > 400
    for name in FORMATS[1:]:
        shift = _header_lines(name)
        got = [(part, position - shift, example) for part, position, example in
               _examples(runs[name])]
        assert got == reference, name


def test_every_format_gives_the_same_statistics_to_the_last_bit(runs):
    keys = ("schema_fingerprint", "rows", "rejection_reasons", "defaulted", "numeric", "labels",
            "truncated", *STATISTICS_KEYS)
    reference = {key: runs["jsonl"]["manifest"][key] for key in keys}
    for name in FORMATS[1:]:
        assert {key: runs[name]["manifest"][key] for key in keys} == reference, name
    # The counts are those of the generated day: defaults in every written row that lacked the
    # value, and a rejection for every row that lacked the feature without a default.
    table, _ = generate_day(Population(SEED), DATE, ROWS, SEED, 0.8, missing_rate=MISSING)
    kept = [row for row in table if row["user_activity"] is not None]
    assert reference["rows"] == {"read": ROWS, "written": len(kept),
                                 "rejected": ROWS - len(kept)}
    assert reference["rejection_reasons"] == {"missing field 'user_activity'": ROWS - len(kept)}
    assert reference["defaulted"] == {
        name: sum(row[name] is None for row in kept) for name in DEFAULTS}
    assert min(reference["defaulted"].values()) > 10
    assert set(MISSABLE) == {*DEFAULTS, "user_activity"}
    lengths = [min(len(row["recent_items"]), 10) for row in kept]  # max_length 10
    assert reference["lists"]["recent_items"]["lengths"] == [lengths.count(k) for k in range(11)]
    assert reference["truncated"]["recent_items"] == sum(
        len(row["recent_items"]) > 10 for row in kept) > 0


def _rejected(run: dict) -> list[dict]:
    folder = run["root"] / "rejected" / f"dt={DATE}"
    return sorted((json.loads(line) for name in run["manifest"]["rejected_files"]
                   for line in (folder / name).read_text().splitlines()),
                  key=lambda r: (r["source"], r["line"]))


def test_each_format_rejects_the_same_rows_at_its_own_positions(runs):
    reference = [(Path(r["source"]).name.split(".")[0], r["line"], r["reason"])
                 for r in _rejected(runs["jsonl"])]
    for name in FORMATS:
        run = runs[name]
        rejected = _rejected(run)
        shift = _header_lines(name)
        assert [(Path(r["source"]).name.split(".")[0], r["line"] - shift, r["reason"])
                for r in rejected] == reference, name
        for record in rejected:
            assert Path(record["source"]).parent == run["logs"]
            raw = record["raw"]
            if name == "jsonl":
                assert "user_activity" not in json.loads(raw)
            elif name == "parquet":  # the row's configured columns, as JSON
                assert json.loads(raw)["user_activity"] is None
            else:  # the CSV record as written
                cells = next(csv.reader([raw]))
                assert len(cells) == 17 and cells[11] == ""  # user_activity's cell


def test_csv_and_parquet_days_are_byte_identical_across_runs_and_runner_modes(runs):
    for first, second in (("csv.gz", "csv.gz-again"), ("parquet", "parquet-again")):
        a, b = published_files(runs[first]["root"]), published_files(runs[second]["root"])
        assert sorted(a) == sorted(b) and len(a) >= 5
        for path, content in a.items():
            assert b[path] == content, f"{second}: {path} differs"


def test_generated_files_are_byte_identical_and_missing_values_are_format_shaped(runs, tmp_path):
    for log_format, folder in (("csv", "csv.gz"), ("parquet", "parquet")):
        again = generate_logs(str(tmp_path / log_format), DATE, 1, ROWS, seed=SEED,
                              log_format=log_format, missing_rate=MISSING)
        first = sorted((runs[folder]["logs"]).iterdir())
        assert [Path(p).name for p in again] == [p.name for p in first]
        assert [Path(p).read_bytes() for p in again] == [p.read_bytes() for p in first]
    # With no missing values the rows are those the JSON lines generator always wrote.
    full = generate_logs(str(tmp_path / "full"), DATE, 1, 50, seed=SEED, files_per_day=1)
    table, _ = generate_day(Population(SEED), DATE, 50, SEED, 0.8)
    with gzip.open(full[0], "rt") as f:
        assert [json.loads(line) for line in f] == table
