"""Beam pipeline options from command-line arguments, shared by every Beam job (preprocess, score).

The DirectRunner is the default. Its multi-threaded mode with several workers is refused: in
Beam 2.77 it drops or corrupts elements across shuffles (a GroupByKey of 60,000 elements
returned ~59,000; other runs failed with `Invalid PaneInfoEncoding`), while `multi_processing`
was exact in every run.
"""

from __future__ import annotations

from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions

from multitower.errors import MultitowerError


class BeamOptionsError(MultitowerError, ValueError):
    """The Beam arguments ask for a runner mode that would lose rows."""


def pipeline_options(beam_args: list[str] | None) -> PipelineOptions:
    """Beam options from command-line style arguments; the DirectRunner unless one is named.

    Raises:
        BeamOptionsError: The DirectRunner is asked for several threads (see the module's
            docstring), refused here rather than after a wasted run.
    """
    options = PipelineOptions(list(beam_args or []))
    standard = options.view_as(StandardOptions)
    if standard.runner is None:
        standard.runner = "DirectRunner"
    direct = options.view_as(DirectOptions)
    if direct.direct_running_mode == "multi_threading" and direct.direct_num_workers != 1:
        raise BeamOptionsError(
            "--direct_running_mode=multi_threading with several workers loses rows in this Beam "
            "version; use --direct_running_mode=multi_processing (or one worker) instead")
    return options
