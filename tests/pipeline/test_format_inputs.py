"""Which files a day's directory holds for each log format (no pipeline)."""

import pytest

from pipeline.read_logs import resolve_inputs


@pytest.mark.parametrize(("log_format", "wanted"), [
    ("jsonl", ["a.jsonl", "b.jsonl.gz"]),
    ("csv", ["c.csv", "d.csv.gz"]),
    ("parquet", ["e.parquet"]),
])
def test_a_directory_holds_the_files_of_the_configured_format(tmp_path, log_format, wanted):
    for name in ("a.jsonl", "b.jsonl.gz", "c.csv", "d.csv.gz", "e.parquet", "f.parquet.crc",
                 "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    assert resolve_inputs(str(tmp_path), "2026-01-01", log_format) == [
        str(tmp_path / name) for name in wanted]


def test_a_directory_without_files_of_the_format_names_it(tmp_path):
    (tmp_path / "a.jsonl.gz").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"holds no \*\.parquet file \(data\.format is "
                                                r"parquet\)"):
        resolve_inputs(str(tmp_path), "2026-01-01", "parquet")
    # A glob takes what it matches, read as the format says.
    assert resolve_inputs(f"{tmp_path}/*.gz", "2026-01-01", "csv") == [str(tmp_path / "a.jsonl.gz")]
