"""A damaged day is found before training, and `multitower verify` names the file."""

import json
import shutil

from click.testing import CliRunner

from commands.cli import main
from tests.helpers import DAYS, config_in


def _copy_of_day(small_project, tmp_path):
    """A config whose tfrecords are a private copy of the small project's (safe to damage)."""
    config = config_in(small_project, tmp_path)
    source = small_project["config"].data.tfrecords
    shutil.copytree(f"{source}/dt={DAYS[0]}", tmp_path / "tfrecords" / f"dt={DAYS[0]}")
    raw = config.read_text().replace(source, str(tmp_path / "tfrecords"))
    config.write_text(raw)
    return config, tmp_path / "tfrecords" / f"dt={DAYS[0]}"


def test_verify_then_a_flipped_byte_is_named_by_verify_and_refused_by_train(small_project,
                                                                           tmp_path):
    config, day = _copy_of_day(small_project, tmp_path)
    ok = CliRunner().invoke(main, ["verify", "--config", str(config), "--date", DAYS[0]])
    assert ok.exit_code == 0, ok.output
    manifest = json.loads((day / "_MANIFEST.json").read_text())
    assert ok.output.strip() == (f"{DAYS[0]}: {len(manifest['files'])} file(s), "
                                 f"{manifest['rows']['written']} rows: sizes and checksums "
                                 "match the manifest")
    damaged = day / manifest["files"][1]
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2] ^= 0x01
    damaged.write_bytes(bytes(data))

    bad = CliRunner().invoke(main, ["verify", "--config", str(config), "--date", DAYS[0]])
    assert bad.exit_code == 1
    lines = bad.output.strip().splitlines()
    assert lines[0] == (f"Error: the partition for {DAYS[0]} is corrupt (1 problem(s)); "
                        "preprocess the day again:")
    assert lines[1].startswith(f"  {damaged}: checksum differs: crc32c ")

    refused = CliRunner().invoke(main, ["train", "--config", str(config), "--date", DAYS[0]])
    assert refused.exit_code == 1
    (line,) = refused.output.strip().splitlines()
    assert line.startswith(f"Error: the partition for {DAYS[0]} is corrupt: {damaged}: "
                           "checksum differs: crc32c ")
    assert not (tmp_path / "model" / "state.json").exists()
    assert not (tmp_path / "model" / "lease.json").exists()  # released on the refusal
