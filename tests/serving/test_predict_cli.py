"""`multitower predict` through the real command line against a real export.

A file with an invalid row is refused as a whole, listing the invalid rows with the reasons
preprocessing gives them; `--skip-invalid` scores the others and writes the invalid ones with
their reasons; an output file appears only once complete.
"""

import gzip
import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from commands.cli import main
from multitower.config import parse_config
from pipeline.validate import parse_line
from tests.bad_rows import bad_rows, good_line, good_rows
from tests.serving.test_predict import export_small_model
from tests.small_project import EXAMPLE

DATA = parse_config(yaml.safe_load(EXAMPLE.read_text())).data
# the lines predict refuses (labels are not checked), with the reason preprocessing gives
REFUSED = [(c.line, parse_line(c.line, DATA)[1]) for c in bad_rows() if c.where != "label"]
SCORED = [line for _, line in good_rows()] + [c.line for c in bad_rows() if c.where == "label"]


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> str:
    return export_small_model(tmp_path_factory.mktemp("export"))


def _predict(model: str, *args: str) -> object:
    return CliRunner().invoke(main, ["predict", "--model", model, *args])


@pytest.fixture
def corpus(tmp_path) -> tuple[Path, list[bytes]]:
    """Every refused corpus line, each after a line that predict scores."""
    lines: list[bytes] = []
    scored = iter(SCORED * 2)
    for line, _ in REFUSED:
        lines += [next(scored), line]
    path = tmp_path / "rows.jsonl"
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    return path, lines


def test_a_file_with_invalid_rows_is_refused_listing_them(model, corpus, tmp_path):
    path, _ = corpus
    out = tmp_path / "scores.jsonl"
    result = _predict(model, "--input", str(path), "--output", str(out))
    assert result.exit_code == 1, result.output
    assert result.stdout == "" and not out.exists()
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left either
    message = result.stderr.splitlines()
    assert message[0] == (f"Error: {path}: {len(REFUSED)} invalid rows, so nothing was scored "
                          f"(--skip-invalid scores the valid rows and writes the invalid ones "
                          f"with their reasons):")
    assert message[1:21] == [f"  {path}:{2 * i + 2}: {reason}"
                             for i, (_, reason) in enumerate(REFUSED[:20])]
    assert message[21:] == [f"  ... and {len(REFUSED) - 20} more"]
    assert "Traceback" not in result.output and "Aborted" not in result.output


def test_skip_invalid_scores_the_valid_rows_and_writes_the_invalid_ones(model, corpus, tmp_path):
    path, lines = corpus
    out = tmp_path / "scores.jsonl"
    result = _predict(model, "--input", str(path), "--output", str(out), "--skip-invalid",
                      "--batch-size", "7")
    assert result.exit_code == 0, result.output
    scores = [json.loads(line) for line in out.read_text().splitlines()]
    assert [s["line"] for s in scores] == list(range(1, len(lines) + 1, 2))
    assert all(set(s) == {"line", "click", "conversion", "watch_time"} for s in scores)
    rejected = [json.loads(line) for line in
                Path(f"{out}.rejected.jsonl").read_text().splitlines()]
    assert rejected == [
        {"source": str(path), "line": 2 * i + 2, "reason": reason,
         "raw": line.rstrip(b"\r\n").decode("utf-8", "replace")}
        for i, (line, reason) in enumerate(REFUSED)]
    assert result.stderr.strip().endswith(
        f"; skipped {len(REFUSED)} invalid rows, written with their reasons to "
        f"{out}.rejected.jsonl")


def test_skip_invalid_to_stdout_writes_the_invalid_rows_to_stderr(model, tmp_path):
    path = tmp_path / "rows.jsonl.gz"
    path.write_bytes(gzip.compress(good_line() + b"\n" + b"[]\n" + good_line() + b"\n"))
    result = _predict(model, "--input", str(path), "--skip-invalid")
    assert result.exit_code == 0, result.output
    assert [json.loads(line)["line"] for line in result.stdout.splitlines()] == [1, 3]
    record = json.loads(result.stderr.splitlines()[0])
    assert record == {"source": str(path), "line": 2, "reason": "not a JSON object: got list",
                      "raw": "[]"}
    assert "skipped 1 invalid row, written with their reasons to stderr" in result.stderr


def test_valid_rows_are_scored_in_input_order(model, tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_bytes(b"".join(line + b"\n" for line in SCORED))
    rejected = tmp_path / "bad.jsonl"
    result = _predict(model, "--input", str(path), "--batch-size", "3")
    assert result.exit_code == 0, result.output
    plain = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(plain) == len(SCORED) and set(plain[0]) == {"click", "conversion", "watch_time"}
    result = _predict(model, "--input", str(path), "--skip-invalid", "--rejected", str(rejected),
                      "--output", str(tmp_path / "scores.jsonl"))
    assert result.exit_code == 0, result.output
    assert rejected.read_text() == ""  # written even when empty: no stale file from a past run
    assert "scored" in result.stderr and f"to {rejected}" in result.stderr


def test_a_bad_row_after_several_batches_leaves_no_partial_output(model, tmp_path):
    path = tmp_path / "rows.jsonl"
    lines = [good_line(hour=h % 24) for h in range(9)] + [good_line(item_price=float("nan"))]
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    out = tmp_path / "scores.jsonl"
    out.write_text("yesterday's scores\n")
    result = _predict(model, "--input", str(path), "--output", str(out), "--batch-size", "2")
    assert result.exit_code == 1
    assert f"{path}:10: field 'item_price': expected a finite number, got float nan" in (
        result.stderr)
    assert out.read_text() == "yesterday's scores\n"  # untouched: 8 scores were computed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rows.jsonl", "scores.jsonl"]
    lines[-1] = good_line()
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    result = _predict(model, "--input", str(path), "--output", str(out), "--batch-size", "2")
    assert result.exit_code == 0, result.output
    assert len(out.read_text().splitlines()) == 10


def test_a_truncated_gzip_input_is_one_line_naming_the_file(model, tmp_path):
    path = tmp_path / "rows.jsonl.gz"
    path.write_bytes(gzip.compress(good_line() * 100 + b"\n")[:-20])
    out = tmp_path / "scores.jsonl"
    for extra in ([], ["--skip-invalid"]):
        result = _predict(model, "--input", str(path), "--output", str(out), *extra)
        assert result.exit_code == 1
        assert result.stderr == (f"Error: {path}: invalid or truncated gzip file: Compressed "
                                 f"file ended before the end-of-stream marker was reached\n")
        assert not out.exists() and not Path(f"{out}.rejected.jsonl").exists()


def test_rejected_needs_skip_invalid(model, tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_bytes(good_line() + b"\n")
    result = _predict(model, "--input", str(path), "--rejected", str(tmp_path / "r.jsonl"))
    assert result.exit_code == 2 and "--skip-invalid" in result.stderr
