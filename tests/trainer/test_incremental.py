"""Days in order: warm starts, refusals with their messages, --force, --allow-gap, history."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from multitower.dates import date_range
from tests.race import race
from tests.small_project import DAYS, config_in
from trainer.incremental import TrainingError, checkpoint_at, plan_day
from trainer.state import TrainedDay, TrainState


def _state(*days: tuple[str, int]) -> TrainState:
    return TrainState("m", "fp", {}, [TrainedDay(d, step, 10, 100, i + 1, {})
                                      for i, (d, step) in enumerate(days)])


def _checkpoints(model_dir: Path, *steps: int) -> None:
    (model_dir / "checkpoints").mkdir(parents=True)
    for step in steps:
        (model_dir / "checkpoints" / f"ckpt-{step}.index").write_text("")


def test_the_next_day_starts_from_the_last_days_checkpoint(tmp_path):
    _checkpoints(tmp_path, 10, 20)
    start = plan_day(_state(("2026-01-01", 10), ("2026-01-02", 20)), "2026-01-03", str(tmp_path))
    assert start.checkpoint == str(tmp_path / "checkpoints" / "ckpt-20")
    assert plan_day(None, "2026-01-03", str(tmp_path)).checkpoint is None


def test_a_trained_day_is_refused_unless_forced(tmp_path):
    _checkpoints(tmp_path, 10, 20)
    state = _state(("2026-01-01", 10), ("2026-01-02", 20))
    with pytest.raises(TrainingError, match="2026-01-02 is already trained .*--force"):
        plan_day(state, "2026-01-02", str(tmp_path))
    start = plan_day(state, "2026-01-02", str(tmp_path), force=True)
    assert start.checkpoint == str(tmp_path / "checkpoints" / "ckpt-10")
    assert [d.date for d in start.state.days] == ["2026-01-01"]  # the later history is dropped
    first = plan_day(state, "2026-01-01", str(tmp_path), force=True)
    assert first.checkpoint is None and first.state.days == []  # a new model


def test_a_gap_is_refused_unless_allowed(tmp_path):
    _checkpoints(tmp_path, 10)
    state = _state(("2026-01-01", 10))
    with pytest.raises(TrainingError, match="leaves a gap.*next is 2026-01-02.*--allow-gap"):
        plan_day(state, "2026-01-04", str(tmp_path))
    assert plan_day(state, "2026-01-04", str(tmp_path), allow_gap=True).checkpoint.endswith(
        "ckpt-10")


def test_a_missing_checkpoint_is_named(tmp_path):
    _checkpoints(tmp_path, 20)
    state = _state(("2026-01-01", 10), ("2026-01-02", 20))
    with pytest.raises(TrainingError, match="step 10.*no longer kept"):
        plan_day(state, "2026-01-02", str(tmp_path), force=True)
    assert checkpoint_at(str(tmp_path), 10) is None


def test_date_ranges():
    assert date_range("2026-02-27:2026-03-01") == ["2026-02-27", "2026-02-28", "2026-03-01"]
    assert date_range("2026-02-27") == ["2026-02-27"]
    with pytest.raises(ValueError, match="ends before"):
        date_range("2026-03-02:2026-03-01")


@pytest.mark.integration
@pytest.mark.slow
def test_days_in_order_through_train_day(small_project, tmp_path):
    from multitower.config import load_config
    from trainer.history import read_history
    from trainer.train import train_day

    config = load_config(config_in(small_project, tmp_path,
                                   mmoe={"num_experts": 2, "expert_units": [8]}))
    steps = [m["rows"]["written"] // config.train.batch_size for m in small_project["manifests"]]
    first = train_day(config, DAYS[0])
    assert first.global_step == steps[0] and first.version == 1
    with pytest.raises(TrainingError, match="leaves a gap"):
        train_day(config, DAYS[2])
    third = train_day(config, DAYS[2], allow_gap=True)
    assert third.global_step == steps[0] + steps[2] and third.version == 2
    # where each day's time went: a new model has no progressive validation, a warm start has
    from trainer.phases import PHASES

    assert "validation" not in first.phases and set(third.phases) == set(PHASES)
    assert all(seconds >= 0 for seconds in third.phases.values())
    with pytest.raises(TrainingError, match="before the last trained day"):
        train_day(config, DAYS[1])
    again = train_day(config, DAYS[1], force=True)  # from day 1's checkpoint
    assert again.global_step == steps[0] + steps[1] and again.version == 3

    state = json.loads((tmp_path / "model" / "state.json").read_text())
    assert [(d["date"], d["version"]) for d in state["days"]] == [(DAYS[0], 1), (DAYS[1], 3)]
    history = read_history(str(tmp_path / "model"))
    # progressive validation before every warm-started day, on the day about to be trained
    assert [(h["date"], h["global_step"]) for h in history] == [
        (DAYS[2], steps[0]), (DAYS[1], steps[0])]
    assert 0.0 <= history[0]["tasks"]["click"]["auc"] <= 1.0
    assert set(history[0]["drift"]) == {"position", "item_price", "user_activity"}


def test_a_day_preprocessed_for_another_schema_is_refused(small_project, tmp_path):
    from multitower.config import load_config
    from trainer.train import train_day

    # an optional label changes what the TFRecords hold, so the schema fingerprint
    optional = {"watch_time": {"optional": True}}
    config = load_config(config_in(small_project, tmp_path, tasks=optional))
    written = small_project["manifests"][0]["schema_fingerprint"]
    assert config.data.schema_fingerprint() != written
    with pytest.raises(TrainingError, match=f"written for schema {written}, but the config's data "
                       f"schema is {config.data.schema_fingerprint()}; preprocess the day again"):
        train_day(config, DAYS[0])
    assert not (tmp_path / "model" / "state.json").exists()


@pytest.mark.integration
def test_two_trainings_of_one_model_dir_at_once_one_is_refused_by_the_lease(small_project,
                                                                          tmp_path):
    config = str(config_in(small_project, tmp_path, mmoe={"num_experts": 2, "expert_units": [8]}))
    lease = tmp_path / "model" / "lease.json"
    command = [sys.executable, "-m", "commands.cli", "train", "--config", config, "--date", DAYS[0]]
    first, second = race(command, command, lease.exists)
    assert first.returncode == 0, first.stderr[-3000:]
    assert second.returncode == 1, second.stderr[-3000:]
    refusal = second.stderr.strip().splitlines()[-1]
    assert refusal.startswith(f"Error: model_dir {tmp_path}/model is in use by run ")
    assert refusal.endswith("(train.lease_ttl_seconds)")
    state = json.loads((tmp_path / "model" / "state.json").read_text())
    assert [(d["date"], d["version"]) for d in state["days"]] == [(DAYS[0], 1)]
    assert sorted(p.name for p in (tmp_path / "export" / "impressions").iterdir()) == ["1"]
    assert not lease.exists()  # released by the run that held it


@pytest.mark.integration
def test_epochs_per_day_runs_the_passes_as_one_day(small_project, tmp_path):
    from multitower.config import load_config
    from trainer.history import read_history
    from trainer.train import train_day

    config = load_config(config_in(small_project, tmp_path, train={
        "epochs_per_day": 2, "loss_balancing": "dwa", "backup_every_steps": 5},
        mmoe={"num_experts": 2, "expert_units": [8]}))
    steps = [m["rows"]["written"] // config.train.batch_size for m in small_project["manifests"]]
    first = train_day(config, DAYS[0])
    assert first.steps == 2 * steps[0] and first.global_step == 2 * steps[0]
    assert first.version == 1
    # DWA saw one day, not two passes: its history holds one day's losses
    balancer = first.model.balancer
    assert float(balancer.epochs_seen.numpy()) == 1.0
    assert np.all(balancer.loss_history.numpy()[1] == 1.0)  # the day before: none yet
    second = train_day(config, DAYS[1])
    assert second.global_step == 2 * (steps[0] + steps[1]) and second.version == 2
    with pytest.raises(TrainingError, match="already trained"):
        train_day(config, DAYS[1])
    state = json.loads((tmp_path / "model" / "state.json").read_text())
    assert [(d["date"], d["steps"], d["global_step"], d["rows"], d["version"])
            for d in state["days"]] == [
        (DAYS[0], 2 * steps[0], 2 * steps[0], small_project["manifests"][0]["rows"]["written"],
         1),
        (DAYS[1], 2 * steps[1], 2 * (steps[0] + steps[1]),
         small_project["manifests"][1]["rows"]["written"], 2)]
    # one progressive validation per warm-started day, before its first pass
    assert [(h["date"], h["global_step"]) for h in read_history(str(tmp_path / "model"))] == [
        (DAYS[1], 2 * steps[0])]
