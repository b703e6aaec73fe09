"""A damaged day is found before training, and `multitower verify` names the file."""

import json
import shutil

from click.testing import CliRunner

from commands.cli import main
from tests.small_project import DAYS, config_in


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


def _one_line_refusal(config, *args) -> str:
    result = CliRunner().invoke(main, [*args, "--config", str(config), "--date", DAYS[0]])
    assert result.exit_code == 1, result.output
    (line,) = result.output.strip().splitlines()
    return line


def test_expected_faults_are_one_line_with_exit_code_1(small_project, tmp_path):
    config, day = _copy_of_day(small_project, tmp_path)
    manifest_path = day / "_MANIFEST.json"
    manifest = json.loads(manifest_path.read_text())

    manifest_path.write_text("{not json")  # an invalid manifest
    line = _one_line_refusal(config, "train")
    assert line.startswith(f"Error: {manifest_path}: not valid JSON")
    manifest_path.write_text(json.dumps({k: v for k, v in manifest.items() if k != "rows"}))
    assert _one_line_refusal(config, "verify").startswith(f"Error: {manifest_path}: ")
    manifest_path.write_text(json.dumps(manifest))

    first = day / manifest["files"][0]
    kept = first.read_bytes()
    first.unlink()  # a manifest that names a missing file
    line = _one_line_refusal(config, "train")
    assert line.startswith(f"Error: the partition for {DAYS[0]} is corrupt: {first}: missing")
    first.write_bytes(kept)

    model = tmp_path / "model"
    model.mkdir(exist_ok=True)  # the refused trainings above held (and released) its lease
    (model / "state.json").write_text("{half")  # an invalid state.json
    line = _one_line_refusal(config, "evaluate")
    assert line.startswith(f"Error: {model}/state.json: not a valid multitower state file")

    (model / "state.json").unlink()
    model.rmdir()
    model.write_text("a file where model_dir should be")  # model_dir cannot be written
    line = _one_line_refusal(config, "train")
    assert line == (f"Error: model_dir {model}: cannot write the lease {model}/lease.json: File "
                    "exists; is the location writable?")
