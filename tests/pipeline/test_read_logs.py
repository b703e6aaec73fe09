"""Tests of finding a day's log files (no pipeline)."""

import pytest

from pipeline.read_logs import resolve_inputs


def test_directory_takes_jsonl_and_gz_only(tmp_path):
    for name in ("b.jsonl", "a.jsonl.gz", "notes.txt", "c.json"):
        (tmp_path / name).write_text("")
    (tmp_path / "sub.jsonl").mkdir()
    assert resolve_inputs(str(tmp_path), "2026-01-01") == [
        str(tmp_path / "a.jsonl.gz"), str(tmp_path / "b.jsonl")]


def test_glob(tmp_path):
    for name in ("x-1.jsonl", "x-2.jsonl", "y-1.jsonl"):
        (tmp_path / name).write_text("")
    assert resolve_inputs(f"{tmp_path}/x-*.jsonl", "2026-01-01") == [
        str(tmp_path / "x-1.jsonl"), str(tmp_path / "x-2.jsonl")]


def test_relative_paths_become_absolute(tmp_path, monkeypatch):
    (tmp_path / "a.jsonl").write_text("")
    monkeypatch.chdir(tmp_path)
    assert resolve_inputs(".", "2026-01-01") == [str(tmp_path / "a.jsonl")]


def test_nothing_to_read_names_pattern_and_date(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"2026-01-01: nothing matches .*/nope/\*\.jsonl"):
        resolve_inputs(f"{tmp_path}/nope/*.jsonl", "2026-01-01")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"2026-01-01: the directory .*/empty holds no"):
        resolve_inputs(str(tmp_path / "empty"), "2026-01-01")
