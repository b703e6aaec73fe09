"""Tests of day partition naming and manifest reading/writing."""

import json

import pytest

from multitower.dates import check_date
from multitower.manifest import (
    MANIFEST_NAME,
    ManifestMissingError,
    day_dir,
    read_manifest,
    write_manifest,
)


def test_day_dir():
    assert day_dir("/data/tfrecords/", "2026-01-02") == "/data/tfrecords/dt=2026-01-02"
    assert day_dir("gs://b/t", "2026-01-02") == "gs://b/t/dt=2026-01-02"


@pytest.mark.parametrize("date", ["2026-1-2", "20260102", "2026-02-30", "", "2026-01-02 "])
def test_bad_dates(date):
    with pytest.raises(ValueError, match="date"):
        check_date(date)


def test_round_trip(tmp_path):
    directory = tmp_path / "dt=2026-01-02"
    directory.mkdir()
    manifest = {"date": "2026-01-02", "rows": {"read": 3, "written": 2, "rejected": 1}}
    path = write_manifest(str(directory), manifest)
    assert path == f"{directory}/{MANIFEST_NAME}"
    assert sorted(p.name for p in directory.iterdir()) == [MANIFEST_NAME]  # no temporary left
    assert read_manifest(str(tmp_path), "2026-01-02") == manifest


def test_missing_manifest_says_how_to_fix(tmp_path):
    (tmp_path / "dt=2026-01-02").mkdir()  # a day without a manifest is incomplete
    with pytest.raises(ManifestMissingError) as info:
        read_manifest(str(tmp_path), "2026-01-02")
    message = str(info.value)
    assert f"{tmp_path}/dt=2026-01-02/{MANIFEST_NAME}" in message
    assert "missing or incomplete" in message
    assert "multitower preprocess --config" in message and "--date 2026-01-02" in message
    assert isinstance(info.value, FileNotFoundError)


def test_corrupt_manifest(tmp_path):
    (tmp_path / "dt=2026-01-02").mkdir()
    (tmp_path / "dt=2026-01-02" / MANIFEST_NAME).write_text(json.dumps([1]))
    with pytest.raises(ValueError, match="expected a JSON object"):
        read_manifest(str(tmp_path), "2026-01-02")
