"""The command line: clear errors and trustworthy exit codes (in-process, through click)."""

from pathlib import Path

import yaml
from click.testing import CliRunner

from commands.cli import main
from tests.small_project import EXAMPLE


def _config(tmp_path: Path, **train) -> str:
    raw = yaml.safe_load(EXAMPLE.read_text())
    raw["train"].update(train)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def test_bad_date_is_a_usage_error(tmp_path):
    args = ["train", "--config", _config(tmp_path), "--date", "2026-2-1"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2
    assert "YYYY-MM-DD" in result.output


def test_invalid_config_names_the_key_and_fails(tmp_path):
    result = CliRunner().invoke(
        main, ["train", "--config", _config(tmp_path, batch_size="big"), "--date", "2026-01-01"]
    )
    assert result.exit_code == 1
    assert "train.batch_size" in result.output and "config.yaml" in result.output


def test_training_a_day_that_was_not_preprocessed_is_refused(tmp_path):
    for workers in ("1", "2"):
        result = CliRunner().invoke(
            main, ["train", "--config", _config(tmp_path), "--date", "2026-01-01",
                   "--workers", workers],
        )
        assert result.exit_code == 1
        assert "_MANIFEST.json does not exist" in result.output
        assert "multitower preprocess" in result.output


def test_predict_without_an_export_says_what_to_do(tmp_path):
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"user_id": "u1"}\n')
    result = CliRunner().invoke(
        main, ["predict", "--model", str(tmp_path / "none"), "--input", str(rows)]
    )
    assert result.exit_code == 1
    assert "no exported version" in result.output and "multitower train" in result.output


def test_preprocess_of_a_day_without_logs_names_the_path(tmp_path):
    result = CliRunner().invoke(
        main, ["preprocess", "--config", _config(tmp_path), "--date", "2026-04-01"]
    )
    assert result.exit_code == 1
    assert "dt=2026-04-01" in result.output
