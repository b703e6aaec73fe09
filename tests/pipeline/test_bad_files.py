"""Input files that cannot be read whole: each kind is named with its fault, never half-read.

The per-kind checks run without Beam; two small pipelines then run one day holding every kind,
once by default (the day is refused, nothing is published) and once skipping bad files (the day
is published without them, and the manifest lists them).
"""

import copy
import gzip
import json
import os
import zlib
from pathlib import Path

import pytest

from multitower.config import parse_config
from multitower.manifest import read_manifest
from pipeline.generate import Population, generate_day
from pipeline.preprocess import run_preprocess
from pipeline.read_logs import BadInputFileError, bad_files_message, file_fault

DATE = "2026-01-01"
ROWS = generate_day(Population(seed=2), DATE, 40, seed=2, task_correlation=0.8)[0]
TEXT = "".join(json.dumps(row) + "\n" for row in ROWS).encode()
GZ = gzip.compress(TEXT, mtime=0)


def _damaged_body(data: bytes) -> bytes:
    mid = len(data) // 2
    return data[:mid] + b"\xff" * 8 + data[mid + 8:]


def _bad_crc(data: bytes) -> bytes:
    return data[:-8] + bytes([data[-8] ^ 1]) + data[-7:]  # the trailer's CRC32, one bit off


def _bad_length(data: bytes) -> bytes:
    return data[:-4] + (len(TEXT) + 1).to_bytes(4, "little")  # the trailer's ISIZE


# name -> (what the file holds, or how to make it; the fault it must be refused with)
FAULTY = {
    "truncated.jsonl.gz": (GZ[: len(GZ) // 2],
                           f"truncated gzip stream: the file ends at byte {len(GZ) // 2}, inside "
                           f"the member that starts at byte 0"),
    "plain-text.jsonl.gz": (TEXT, f"not a gzip file (it starts with {TEXT[:8]!r})"),
    "damaged.jsonl.gz": (_damaged_body(GZ), "corrupt gzip data in the member at byte 0 ("),
    "bad-crc.jsonl.gz": (_bad_crc(GZ), "gzip CRC mismatch in the member at byte 0"),
    "bad-length.jsonl.gz": (_bad_length(GZ), "gzip length mismatch in the member at byte 0"),
    "trailing-garbage.jsonl.gz": (GZ + b"garbage",
                                  f"data after the end of the gzip stream, at byte {len(GZ)}"),
    "dangling-link.jsonl": ("symlink:nowhere.jsonl", "unreadable: No such file or directory"),
    "link-loop.jsonl": ("symlink:link-loop.jsonl", "unreadable: Too many levels of symbolic links"),
    "fifo.jsonl": ("fifo", "not a regular file (a directory, FIFO, socket or device)"),
}
# Files that can be read whole, with the number of lines each yields.
READABLE = {
    "good.jsonl.gz": (GZ, len(ROWS)),
    # An empty file holds no rows, compressed or not. A zero-byte `.gz` is not a gzip stream cut
    # short (a gzip writer emits its 10-byte header first; a cut stream is refused above) but a
    # file into which nothing was ever written; Python's gzip reads it as empty too.
    "empty.jsonl": (b"", 0),
    "zero-bytes.jsonl.gz": (b"", 0),
    "two-members.jsonl.gz": (GZ + GZ, 2 * len(ROWS)),  # as `cat a.gz b.gz` makes
    "zero-padded.jsonl.gz": (GZ + b"\0" * 16, len(ROWS)),  # tape-style padding, as gzip allows
    # Readable whole but not text: each line is a bad row, rejected with its reason.
    "binary.jsonl.gz": (gzip.compress(b"\x00\xff\xfe\x80 not utf-8\n\x81\x82\n", mtime=0), 2),
}


def _make(folder: Path, name: str, content: bytes | str) -> Path:
    path = folder / name
    if content == "fifo":
        os.mkfifo(path)
    elif isinstance(content, str):
        path.symlink_to(content.removeprefix("symlink:"))
    else:
        path.write_bytes(content)
    return path


@pytest.mark.parametrize("name", sorted(FAULTY))
def test_each_kind_of_fault_is_named(tmp_path, name):
    content, fault = FAULTY[name]
    path = _make(tmp_path, name, content)
    assert file_fault(str(path)).startswith(fault)
    if isinstance(content, bytes):  # the check refuses exactly what Python's gzip cannot read
        with pytest.raises((OSError, EOFError, zlib.error)):
            gzip.decompress(content)


@pytest.mark.parametrize("name", sorted(READABLE))
def test_readable_files_are_no_fault(tmp_path, name):
    content, _ = READABLE[name]
    assert file_fault(str(_make(tmp_path, name, content))) is None
    if name.endswith(".gz"):
        gzip.decompress(content)  # and Python's gzip, which reads the lines, agrees


def test_gzip_check_reads_in_bounded_pieces(tmp_path):
    # 64 MB of zeros compress to ~64 KB; the check must stream it, not inflate it at once.
    path = tmp_path / "zeros.jsonl.gz"
    path.write_bytes(gzip.compress(b"\0" * (64 << 20), mtime=0))
    assert file_fault(str(path)) is None
    path.write_bytes(path.read_bytes()[:-9])
    assert file_fault(str(path)).startswith("truncated gzip stream")


def test_message_is_one_line_naming_each_file_and_fault():
    one = bad_files_message(DATE, [("/l/a.jsonl.gz", "truncated gzip stream: ...")])
    assert one == (
        "preprocess 2026-01-01: an input file cannot be read whole: /l/a.jsonl.gz: truncated "
        "gzip stream: ...; nothing was published (replace the file, or pass --skip-bad-files "
        "to publish the day without it)")
    two = bad_files_message(DATE, [("/l/b.jsonl", "unreadable: x"), ("/l/a.jsonl.gz", "y")])
    assert "2 input files cannot be read whole: /l/a.jsonl.gz: y; /l/b.jsonl: unreadable: x;" in two
    assert "\n" not in two and two.endswith("without them)")


@pytest.fixture(scope="module")
def bad_day(tmp_path_factory, example_raw):
    root = tmp_path_factory.mktemp("bad-day")
    logs = root / "logs" / f"dt={DATE}"
    logs.mkdir(parents=True)
    for name, (content, _) in {**FAULTY, **READABLE}.items():
        _make(logs, name, content)
    raw = copy.deepcopy(example_raw)
    raw["data"].update(logs=f"{root}/logs/dt={{date}}", tfrecords=f"{root}/tfrecords",
                       rejected=f"{root}/rejected", num_shards=2)
    return {"root": root, "logs": logs, "config": parse_config(raw, "test")}


def _published(root: Path) -> dict[str, list[str]]:
    return {top: sorted(os.listdir(root / top)) if (root / top).exists() else []
            for top in ("tfrecords", "rejected")}


@pytest.mark.integration
def test_by_default_a_bad_file_fails_the_day_and_nothing_is_published(bad_day):
    with pytest.raises(BadInputFileError) as info:
        run_preprocess(bad_day["config"], DATE)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"preprocess {DATE}: {len(FAULTY)} input files cannot be read whole")
    for name, (_, fault) in FAULTY.items():
        assert f"{bad_day['logs'] / name}: {fault}" in message
    for name in READABLE:
        assert str(bad_day["logs"] / name) not in message
    assert _published(bad_day["root"]) == {"tfrecords": [], "rejected": []}  # no staging left


@pytest.mark.integration
def test_skipping_bad_files_publishes_the_day_without_them(bad_day):
    manifest = run_preprocess(bad_day["config"], DATE, skip_bad_files=True)
    assert read_manifest(bad_day["config"].data.tfrecords, DATE) == manifest
    skipped = {s["file"]: s["fault"] for s in manifest["skipped_files"]}
    assert sorted(skipped) == sorted(str(bad_day["logs"] / name) for name in FAULTY)
    for name, (_, fault) in FAULTY.items():
        assert skipped[str(bad_day["logs"] / name)].startswith(fault)
    assert manifest["inputs"] == sorted(str(bad_day["logs"] / name) for name in READABLE)
    # The skipped files' rows count nowhere; every line read is written or rejected.
    rows = manifest["rows"]
    assert rows["read"] == sum(lines for _, lines in READABLE.values())
    assert rows["read"] == rows["written"] + rows["rejected"]
    assert rows["written"] == 4 * len(ROWS)  # good, two members, zero-padded
    assert manifest["rejection_reasons"] == {"invalid UTF-8": 2}  # binary.jsonl.gz's lines
    assert _published(bad_day["root"]) == {"tfrecords": [f"dt={DATE}"], "rejected": [f"dt={DATE}"]}


def test_an_object_store_refusal_is_unreadable(monkeypatch):
    from apache_beam.io.aws.clients.s3.messages import S3ClientError

    import pipeline.read_logs as read_logs

    def refuse(path: str, compression_type: str) -> None:
        raise S3ClientError("Access Denied", 403)

    monkeypatch.setattr(read_logs.FileSystems, "open", refuse)
    assert file_fault("s3://bucket/logs/a.jsonl.gz") == "unreadable: S3 error 403: Access Denied"
