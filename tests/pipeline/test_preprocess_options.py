"""Tests of how Beam arguments become options for every Beam job (no pipeline is run)."""

import pytest
from apache_beam.options.pipeline_options import DirectOptions, StandardOptions

from multitower.beam_options import BeamOptionsError, pipeline_options


def test_direct_runner_by_default_and_arguments_pass_through():
    assert pipeline_options(None).view_as(StandardOptions).runner == "DirectRunner"
    options = pipeline_options(["--runner=FlinkRunner", "--direct_num_workers=2",
                                "--direct_running_mode=multi_processing"])
    assert options.view_as(StandardOptions).runner == "FlinkRunner"
    assert options.view_as(DirectOptions).direct_num_workers == 2


def test_multi_threaded_direct_runner_is_refused():
    with pytest.raises(BeamOptionsError, match="multi_processing"):
        pipeline_options(["--direct_num_workers=2", "--direct_running_mode=multi_threading"])
    pipeline_options(["--direct_num_workers=1", "--direct_running_mode=multi_threading"])
