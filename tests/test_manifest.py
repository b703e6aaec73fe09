"""Tests of day partition naming, manifest reading/writing, and verifying a day's files."""

import json
import zlib

import pytest

from multitower.checksums import file_checksum
from multitower.dates import check_date
from multitower.manifest import (
    MANIFEST_NAME,
    ManifestInvalidError,
    ManifestMissingError,
    PartitionCorruptError,
    check_partition,
    day_dir,
    partition_files,
    read_manifest,
    verify_partition,
    write_manifest,
)
from multitower.records import frame_record

DATE = "2026-01-02"


def _manifest(**changes) -> dict:
    manifest = {"date": DATE, "schema_fingerprint": "abc", "files": [],
                "rows": {"read": 3, "written": 2, "rejected": 1}, "numeric": {}, "labels": {}}
    return manifest | changes


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
    manifest = _manifest()
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


@pytest.mark.parametrize(
    ("manifest", "problem"),
    [
        ({"date": DATE}, "missing keys schema_fingerprint, rows, files, numeric, labels"),
        ({k: v for k, v in _manifest().items() if k != "numeric"}, "missing key numeric"),
        (_manifest(files="part-0.tfrecord.gz"), "'files' must be an array, got str"),
        (_manifest(date="2026-01-03"), "it was written for '2026-01-03', not 2026-01-02"),
        (_manifest(rows={"read": 3, "written": 2}), "bad or missing: rejected"),
        (_manifest(rows={"read": 3, "written": -2, "rejected": True}),
         "bad or missing: written, rejected"),
        (_manifest(files=["../elsewhere.gz"]), "'files' must be file names in the day's"),
        (_manifest(files=["a.gz"], file_checks={"b.gz": {"bytes": 1, "crc32c": "00"}}),
         "'file_checks' has no size and crc32c for a.gz"),
    ],
)
def test_invalid_manifest_is_named_with_its_problem(tmp_path, manifest, problem):
    folder = tmp_path / f"dt={DATE}"
    folder.mkdir()
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(ManifestInvalidError) as info:
        read_manifest(str(tmp_path), DATE)
    message = str(info.value)
    assert message.startswith(f"{folder / MANIFEST_NAME}: ")
    assert problem in message and "\n" not in message
    assert message.endswith(f"; rerun preprocessing for {DATE}")


def test_not_json(tmp_path):
    (tmp_path / f"dt={DATE}").mkdir()
    (tmp_path / f"dt={DATE}" / MANIFEST_NAME).write_text('{"date": ')
    with pytest.raises(ManifestInvalidError, match=r"_MANIFEST.json: not valid JSON"):
        read_manifest(str(tmp_path), DATE)


@pytest.fixture
def day(tmp_path) -> dict:
    """A partition of two small GZIP TFRecord files and a manifest with their checks."""
    folder = tmp_path / f"dt={DATE}"
    folder.mkdir()
    names = ["part-00000-of-00002.tfrecord.gz", "part-00001-of-00002.tfrecord.gz"]
    checks = {}
    for i, name in enumerate(names):
        packer = zlib.compressobj(6, zlib.DEFLATED, 31)
        records = b"".join(frame_record(f"row {i}-{k}".encode()) for k in range(200))
        (folder / name).write_bytes(packer.compress(records) + packer.flush())
        size, crc = file_checksum(str(folder / name))
        checks[name] = {"bytes": size, "crc32c": crc, "rows": 200}
    write_manifest(str(folder), _manifest(files=names, file_checks=checks))
    return {"root": str(tmp_path), "folder": folder, "names": names, "checks": checks}


def test_intact_partition_verifies(day):
    assert verify_partition(day["root"], DATE) == []
    manifest = check_partition(day["root"], DATE)
    assert manifest["file_checks"] == day["checks"]
    assert partition_files(day["root"], DATE, manifest) == [
        str(day["folder"] / name) for name in day["names"]]


def test_a_flipped_byte_is_named_by_file(day):
    path = day["folder"] / day["names"][1]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))
    problems = verify_partition(day["root"], DATE)
    assert len(problems) == 1
    assert problems[0].startswith(f"{path}: checksum differs: crc32c ")
    assert problems[0].endswith(f", the manifest says {day['checks'][day['names'][1]]['crc32c']}")
    with pytest.raises(PartitionCorruptError) as info:
        check_partition(day["root"], DATE)
    message = str(info.value)
    assert message.startswith(f"the partition for {DATE} is corrupt: {path}: checksum differs")
    assert "\n" not in message and f"multitower preprocess --config C --date {DATE}" in message


def test_missing_and_truncated_files_are_named(day):
    (day["folder"] / day["names"][0]).unlink()
    second = day["folder"] / day["names"][1]
    second.write_bytes(second.read_bytes()[:-10])
    size = day["checks"][day["names"][1]]["bytes"]
    assert verify_partition(day["root"], DATE) == [
        f"{day['folder'] / day['names'][0]}: missing (the manifest lists it)",
        f"{second}: size differs: {size - 10} bytes, the manifest says {size}"]
    with pytest.raises(PartitionCorruptError, match="missing .*; .*size differs"):
        check_partition(day["root"], DATE)


def test_manifest_without_checks_only_checks_existence(day):
    manifest = read_manifest(day["root"], DATE)
    del manifest["file_checks"]
    write_manifest(str(day["folder"]), manifest)
    (day["folder"] / day["names"][1]).write_bytes(b"anything")
    assert verify_partition(day["root"], DATE) == []
    (day["folder"] / day["names"][1]).unlink()
    assert verify_partition(day["root"], DATE) == [
        f"{day['folder'] / day['names'][1]}: missing (the manifest lists it)"]


def test_verify_without_manifest_says_the_day_is_missing(tmp_path):
    with pytest.raises(ManifestMissingError, match="missing or incomplete"):
        verify_partition(str(tmp_path), DATE)
