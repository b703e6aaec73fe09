"""Beam options and the engine that runs them, shared by every Beam job (preprocess, score).

The engine is named here, not left to Beam. Beam 2.77's `DirectRunner` is a
`SwitchingDirectRunner` that first submits the pipeline to the Prism runner, which it downloads
from GitHub when there is network, and falls back to its in-process engine (the `FnApiRunner`)
only when that fails. A laptop with network would then run another engine than the tests, which
run offline. So when no runner is named, or the `DirectRunner` is, the job runs on the
`FnApiRunner` itself, the DirectRunner's batch engine:

- by default in `multi_processing` mode with one worker process per core the process may use
  (its CPU affinity, capped by its control group's CPU quota: a container's CPU limit), so that
  work spreads over the cores;
- `--direct_running_mode=in_memory` runs everything in this process (the tests do this, through
  the environment variable `MULTITOWER_DIRECT_RUNNING_MODE=in_memory`, for speed);
- `--direct_running_mode=multi_threading` is refused, with any number of workers: in Beam 2.77
  it lost or corrupted rows here even with ONE worker (a read, a reshuffle used by two
  branches, a flatten and a combine miscounted in 2 of 31 runs; other runs crashed with
  `Invalid PaneInfoEncoding`), while `multi_processing` was exact in 28 of 28 runs.

Any other runner (`PortableRunner`, `FlinkRunner`, `SparkRunner`, `DataflowRunner`, even an
explicit `PrismRunner`) is created by Beam from its name, with the options as given.
"""

from __future__ import annotations

import argparse
import math
import os

import apache_beam as beam
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions
from apache_beam.runners.runner import PipelineRunner

from multitower.errors import MultitowerError

MODE_ENV = "MULTITOWER_DIRECT_RUNNING_MODE"  # the default DirectRunner mode, if set
DEFAULT_MODE = "multi_processing"
SAFE_MODES = ("in_memory", "multi_processing")
REFUSED_MODE = "multi_threading"
# Runner names (as `--runner` takes them, case-insensitive) that mean the local batch engine.
_DIRECT_NAMES = {"direct", "directrunner", "switchingdirectrunner", "fnapirunner"}


class BeamOptionsError(MultitowerError, ValueError):
    """The Beam arguments ask for a runner mode that would lose rows, or for no known mode."""


def cgroup_cpu_limit(root: str = "/sys/fs/cgroup") -> float | None:
    """The CPU quota of this process's control group in cores (a container's CPU limit), if any.

    Args:
        root: Where the cgroup file system is mounted.

    Returns:
        `quota / period` from cgroup v2 `cpu.max` or cgroup v1 `cpu.cfs_quota_us` and
        `cpu.cfs_period_us`, or None without a quota (or without cgroups).
    """
    candidates = [(f"{root}/cpu.max", None),
                  (f"{root}/cpu/cpu.cfs_quota_us", f"{root}/cpu/cpu.cfs_period_us"),
                  (f"{root}/cpu,cpuacct/cpu.cfs_quota_us", f"{root}/cpu,cpuacct/cpu.cfs_period_us")]
    for quota_path, period_path in candidates:
        try:
            with open(quota_path) as f:
                fields = f.read().split()
            if period_path is not None:
                with open(period_path) as f:
                    fields = [fields[0], f.read().strip()]
        except (OSError, IndexError):
            continue
        if len(fields) != 2 or fields[0] in ("max", "-1"):
            return None
        try:
            quota, period = int(fields[0]), int(fields[1])
        except ValueError:
            return None
        return quota / period if quota > 0 and period > 0 else None
    return None


def local_cores() -> int:
    """The cores this process may use: its CPU affinity (a cpuset), capped by a CPU quota."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # no sched_getaffinity (macOS)
        cores = os.cpu_count() or 1
    limit = cgroup_cpu_limit()
    if limit is not None:
        cores = min(cores, math.ceil(limit))
    return max(1, cores)


def _refusal(where: str) -> BeamOptionsError:
    return BeamOptionsError(
        f"{where}: the DirectRunner's multi_threading mode is refused: in this Beam version "
        f"(2.77) it lost or corrupted rows even with one worker (2 of 31 runs miscounted, others "
        f"crashed with 'Invalid PaneInfoEncoding'), while multi_processing was exact in 28 of 28 "
        f"runs; use --direct_running_mode=multi_processing (the default) or in_memory")


def _given(beam_args: list[str]) -> argparse.Namespace:
    """The DirectRunner arguments given explicitly (None when absent), in either `--a=b` form."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--direct_running_mode")
    parser.add_argument("--direct_num_workers", type=int)
    known, _ = parser.parse_known_args(beam_args)
    return known


def is_direct(options: PipelineOptions) -> bool:
    """Whether `options` run on this machine's batch engine (no runner, or the DirectRunner)."""
    runner = options.view_as(StandardOptions).runner
    return runner is None or (isinstance(runner, str) and runner.lower() in _DIRECT_NAMES)


def pipeline_options(beam_args: list[str] | None) -> PipelineOptions:
    """Beam options from command-line style arguments, with the local engine made explicit.

    Args:
        beam_args: Beam arguments such as `--runner=PortableRunner --job_endpoint=host:port`.
            Without a runner (or with `--runner=DirectRunner`) the job runs on the DirectRunner's
            batch engine, in the mode `--direct_running_mode` names, else the one in the
            environment variable `MULTITOWER_DIRECT_RUNNING_MODE`, else `multi_processing`; in
            `multi_processing`, with `--direct_num_workers` workers, by default one per core.

    Returns:
        The options; `StandardOptions.runner` is `DirectRunner` when no runner was named. Build
        the pipeline with `make_pipeline` so that the DirectRunner does not try Prism first.

    Raises:
        BeamOptionsError: `multi_threading` is asked for (see the module's docstring), or the
            environment variable holds an unknown mode.
    """
    args = list(beam_args or [])
    given = _given(args)
    if given.direct_running_mode == REFUSED_MODE:
        raise _refusal("--direct_running_mode=multi_threading")
    options = PipelineOptions(args)
    if not is_direct(options):
        return options
    options.view_as(StandardOptions).runner = "DirectRunner"
    direct = options.view_as(DirectOptions)
    mode = given.direct_running_mode
    if mode is None:
        mode = os.environ.get(MODE_ENV) or DEFAULT_MODE
        if mode == REFUSED_MODE:
            raise _refusal(f"{MODE_ENV}={mode}")
        if mode not in SAFE_MODES:
            raise BeamOptionsError(
                f"{MODE_ENV}={mode!r}: expected one of {', '.join(SAFE_MODES)} (or unset: "
                f"{DEFAULT_MODE})")
        direct.direct_running_mode = mode
    if mode == "multi_processing" and not given.direct_num_workers:  # absent or 0: every core
        direct.direct_num_workers = local_cores()
    return options


def engine(options: PipelineOptions) -> str:
    """The engine `options` run on, for logs: `FnApiRunner, multi_processing, 2 workers`."""
    if not is_direct(options):
        return str(options.view_as(StandardOptions).runner)
    direct = options.view_as(DirectOptions)
    workers = direct.direct_num_workers
    return (f"FnApiRunner (the DirectRunner's batch engine), {direct.direct_running_mode}, "
            f"{workers} worker{'s' if workers != 1 else ''}")


def local_workers(options: PipelineOptions) -> int | None:
    """The processes that run the job's work on this machine, or None on another runner."""
    if not is_direct(options):
        return None
    direct = options.view_as(DirectOptions)
    return direct.direct_num_workers if direct.direct_running_mode == "multi_processing" else 1


def pipeline_runner(options: PipelineOptions) -> PipelineRunner | None:
    """The runner to build a pipeline with: the FnApiRunner for the DirectRunner, else None.

    None lets Beam create the runner `options` name. For the DirectRunner this builds what
    Beam's `SwitchingDirectRunner` builds for a batch pipeline once Prism is out of the way:
    Beam 2.77 has no option or experiment that skips Prism (it is skipped only for pipelines
    with features Prism lacks), and Beam's own advice is to pin the FnApiRunner
    (apache/beam#34612). Like the SwitchingDirectRunner, it hands the pipeline options to the
    worker processes (`multi_processing`), which read them when they start.
    """
    if not is_direct(options):
        return None
    # Imported here: only a job that runs locally needs the engine.
    from apache_beam.portability.api import beam_provision_api_pb2
    from apache_beam.runners.portability.fn_api_runner import fn_runner
    from apache_beam.runners.portability.portable_runner import JobServiceHandle

    encoded = JobServiceHandle.encode_pipeline_options(options.get_all_options())
    return fn_runner.FnApiRunner(provision_info=fn_runner.ExtendedProvisionInfo(
        beam_provision_api_pb2.ProvisionInfo(pipeline_options=encoded)))


def make_pipeline(options: PipelineOptions) -> beam.Pipeline:
    """A `beam.Pipeline` on the engine `options` name (see `pipeline_runner`)."""
    return beam.Pipeline(runner=pipeline_runner(options), options=options)
