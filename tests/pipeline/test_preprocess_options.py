"""Tests of how Beam arguments become options and an engine for every Beam job."""

import logging
import math
import os

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import DirectOptions, StandardOptions
from apache_beam.runners.portability.fn_api_runner.fn_runner import FnApiRunner
from apache_beam.testing.util import assert_that, equal_to

from multitower import beam_options
from multitower.beam_options import (
    MODE_ENV,
    BeamOptionsError,
    engine,
    local_cores,
    local_workers,
    make_pipeline,
    pipeline_options,
    pipeline_runner,
)


@pytest.fixture
def no_mode(monkeypatch):
    """The environment of a user's shell: no default mode set (the suite sets in_memory)."""
    monkeypatch.delenv(MODE_ENV, raising=False)


def _direct(options) -> tuple[str, int]:
    direct = options.view_as(DirectOptions)
    return direct.direct_running_mode, direct.direct_num_workers


def test_default_engine_is_one_process_per_core(no_mode):
    options = pipeline_options(None)
    assert options.view_as(StandardOptions).runner == "DirectRunner"
    assert _direct(options) == ("multi_processing", local_cores())
    assert local_workers(options) == local_cores() == min(
        len(os.sched_getaffinity(0)), math.ceil(beam_options.cgroup_cpu_limit() or 1e9))
    for args in (["--runner=DirectRunner"], ["--runner=direct"], ["--direct_num_workers=0"],
                 ["--direct_running_mode", "multi_processing"]):
        assert _direct(pipeline_options(args)) == ("multi_processing", local_cores()), args
    assert _direct(pipeline_options(["--direct_num_workers=3"])) == ("multi_processing", 3)
    assert "multi_processing, 3 workers" in engine(pipeline_options(["--direct_num_workers=3"]))


def test_cores_follow_the_affinity_mask_and_the_cpu_quota(monkeypatch, no_mode):
    monkeypatch.setattr(beam_options, "cgroup_cpu_limit", lambda: None)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {5})
    assert local_cores() == 1
    assert _direct(pipeline_options([])) == ("multi_processing", 1)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5})
    monkeypatch.setattr(beam_options, "cgroup_cpu_limit", lambda: 2.5)  # a pod's `cpu: 2500m`
    assert _direct(pipeline_options([])) == ("multi_processing", 3)
    monkeypatch.setattr(beam_options, "cgroup_cpu_limit", lambda: 0.2)
    assert local_cores() == 1


@pytest.mark.parametrize("files,expected", [
    ({"cpu.max": "max 100000\n"}, None),
    ({"cpu.max": "150000 100000\n"}, 1.5),
    ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
    ({"cpu/cpu.cfs_quota_us": "200000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 2.0),
    ({"cpu,cpuacct/cpu.cfs_quota_us": "50000\n", "cpu,cpuacct/cpu.cfs_period_us": "100000\n"},
     0.5),
    ({}, None),
])
def test_cpu_quota_from_cgroup_v1_and_v2(tmp_path, files, expected):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert beam_options.cgroup_cpu_limit(str(tmp_path)) == expected


def test_explicit_mode_wins_over_the_environment(monkeypatch):
    monkeypatch.setenv(MODE_ENV, "in_memory")
    assert _direct(pipeline_options(None)) == ("in_memory", 1)
    assert local_workers(pipeline_options(None)) == 1
    assert _direct(pipeline_options(["--direct_running_mode=multi_processing",
                                     "--direct_num_workers=2"])) == ("multi_processing", 2)
    monkeypatch.setenv(MODE_ENV, "multi_processing")
    assert _direct(pipeline_options(["--direct_running_mode=in_memory"])) == ("in_memory", 1)
    monkeypatch.setenv(MODE_ENV, "threads")
    with pytest.raises(BeamOptionsError, match=f"{MODE_ENV}='threads'"):
        pipeline_options(None)


@pytest.mark.parametrize("args", [
    ["--direct_running_mode=multi_threading"],
    ["--direct_num_workers=1", "--direct_running_mode=multi_threading"],
    ["--direct_num_workers=2", "--direct_running_mode", "multi_threading"],
    ["--runner=DirectRunner", "--direct_running_mode=multi_threading"],
])
def test_multi_threading_is_refused_with_any_number_of_workers(args, no_mode):
    with pytest.raises(BeamOptionsError) as refused:
        pipeline_options(args)
    message = str(refused.value)
    for seen in ("even with one worker", "2 of 31", "Invalid PaneInfoEncoding", "28 of 28",
                 "--direct_running_mode=multi_processing"):
        assert seen in message


def test_multi_threading_is_refused_from_the_environment(monkeypatch):
    monkeypatch.setenv(MODE_ENV, "multi_threading")
    with pytest.raises(BeamOptionsError, match=f"{MODE_ENV}=multi_threading: .*2 of 31"):
        pipeline_options(None)


def test_other_runners_get_their_options_as_given(no_mode):
    options = pipeline_options(["--runner=FlinkRunner", "--flink_master=flink:8081"])
    assert options.view_as(StandardOptions).runner == "FlinkRunner"
    assert _direct(options) == ("in_memory", 1)  # Beam's defaults, untouched (and unused)
    assert pipeline_runner(options) is None
    assert local_workers(options) is None
    assert engine(options) == "FlinkRunner"
    portable = pipeline_options(["--runner=PortableRunner", "--job_endpoint=localhost:1"])
    assert pipeline_runner(portable) is None


def test_the_direct_runner_runs_on_the_fn_api_runner_and_never_tries_prism(monkeypatch, caplog):
    monkeypatch.setenv(MODE_ENV, "in_memory")
    options = pipeline_options(["--runner=DirectRunner", "--job_name=options-test"])
    runner = pipeline_runner(options)
    assert isinstance(runner, FnApiRunner)
    # The workers get the pipeline's options, as Beam's SwitchingDirectRunner passes them.
    passed = runner._provision_info.provision_info.pipeline_options
    assert passed["beam:option:job_name:v1"] == "options-test"
    caplog.set_level(logging.INFO)
    with make_pipeline(options) as p:
        assert_that(p | beam.Create([1, 2, 3]) | beam.Map(lambda x: x * 10), equal_to([10, 20, 30]))
    assert isinstance(p.runner, FnApiRunner)
    loggers = {record.name for record in caplog.records}
    # Beam's DirectRunner would log "Running pipeline with PrismRunner." here first.
    assert "apache_beam.runners.direct.direct_runner" not in loggers
    assert "Prism" not in caplog.text
