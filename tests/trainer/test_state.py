"""`state.json` carries the model_dir layout version; another layout is refused in one line."""

import json

import pytest
from click.testing import CliRunner

from commands.cli import main
from tests.small_project import DAYS, config_in
from trainer.model_dir import LAYOUT_VERSION, ModelDir
from trainer.state import StateError, TrainedDay, TrainState, load_state, save_state

# What the code before layout version 2 wrote (no "layout_version" key).
VERSION_1_STATE = {
    "model_name": "impressions", "schema_fingerprint": "0123456789abcdef",
    "normalization": {"item_price": {"mean": 20.0, "std": 5.0}},
    "days": [{"date": "2026-03-01", "global_step": 9, "steps": 9, "rows": 1180, "version": 1,
              "metrics": {"loss": 0.5}}],
    "last_date": "2026-03-01", "global_step": 9,
}


def test_state_round_trip_writes_the_layout_version(tmp_path):
    state = TrainState("m", "fp", {"x": {"mean": 1.0, "std": 2.0}},
                       [TrainedDay("2026-03-01", 9, 9, 1180, 1, {"loss": 0.5})])
    save_state(str(tmp_path), state)
    written = json.loads((tmp_path / "state.json").read_text())
    assert written["layout_version"] == LAYOUT_VERSION == 2
    assert load_state(str(tmp_path)) == state
    assert ModelDir(str(tmp_path)).state == str(tmp_path / "state.json")


def test_a_state_of_the_previous_layout_is_refused_naming_both_versions(tmp_path):
    (tmp_path / "state.json").write_text(json.dumps(VERSION_1_STATE))
    with pytest.raises(StateError) as info:
        load_state(str(tmp_path))
    message = str(info.value)
    assert message == (f"{tmp_path}/state.json: this model_dir was written with layout version "
                       "1, this multitower reads layout version 2; train into a new model_dir "
                       "(train.model_dir)")


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", '{"layout_version": 2}'])
def test_an_invalid_state_names_its_path(tmp_path, text):
    (tmp_path / "state.json").write_text(text)
    with pytest.raises(StateError, match=f"^{tmp_path}/state.json: not a valid multitower state"):
        load_state(str(tmp_path))


def test_train_refuses_a_model_dir_of_another_layout_in_one_line(small_project, tmp_path):
    config = config_in(small_project, tmp_path)
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "state.json").write_text(
        json.dumps({**VERSION_1_STATE, "layout_version": 7}))
    result = CliRunner().invoke(main, ["train", "--config", str(config), "--date", DAYS[0]])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1
    assert lines[0] == (f"Error: {tmp_path}/model/state.json: this model_dir was written with "
                        "layout version 7, this multitower reads layout version 2; train into a "
                        "new model_dir (train.model_dir)")
