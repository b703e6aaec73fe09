"""The per-day stopwatch: phases in order, fit split into its first call and the rest."""

import pytest

from trainer.phases import PHASES, DayPhases, process_age


def test_fit_is_split_into_the_first_call_and_the_steady_steps():
    phases = DayPhases(first_day_of_process=False)
    phases.seconds.update(plan=0.5, build=1.0, steady=10.0, export=2.0)
    phases.split_fit(first_call=4.0, steady=5.5)  # 0.5 s of callbacks after the last call
    assert phases.seconds["first_call"] == 4.5 and phases.seconds["steady"] == 5.5
    line = phases.summary()
    assert line.startswith("plan 0.5 s, build 1.0 s, first call 4.5 s, steady 5.5 s, export 2.0 s")
    assert "process start" not in line


def test_a_day_without_a_second_call_counts_all_of_fit_as_its_first_call():
    phases = DayPhases(first_day_of_process=False)
    phases.seconds["steady"] = 3.0
    phases.split_fit(None, None)
    assert phases.seconds["first_call"] == 3.0 and phases.seconds["steady"] == 0.0


def test_the_first_day_of_a_process_names_the_process_start_and_unknown_phases_are_refused():
    age = process_age()
    assert age is not None and age > 0  # Linux: read from /proc
    phases = DayPhases(first_day_of_process=True)
    assert phases.summary().startswith("process start ")
    with pytest.raises(ValueError, match="unknown phase 'training'"):
        phases.lap("training")
    phases.lap("plan")
    assert set(phases.seconds) <= set(PHASES)
