"""Where a trained day's wall time goes: one line per day, and the figures in `DayResult`.

The phases, in order: the process's start before the day (first day of a process only), the
plan (manifest, state, every file's checksum), progressive validation, building the model and
restoring it, the first call of the train function (tracing included), the steady steps after
it, the checkpoint, and the export (warmup rows, checks, state).
"""

from __future__ import annotations

import logging
import os
import time

log = logging.getLogger("multitower.trainer")

PHASES = ("plan", "validation", "build", "first_call", "steady", "checkpoint", "export")


def process_age() -> float | None:
    """Seconds since this process started (Linux `/proc`), or None where that is unknown."""
    try:
        with open("/proc/self/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22: starttime
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return max(0.0, uptime - ticks / os.sysconf("SC_CLK_TCK"))


class DayPhases:
    """A stopwatch of one day's phases (`PHASES`), started when the day starts.

    Args:
        first_day_of_process: Whether to note the process's age too (its start-up, imports
            and the strategy come before the first day only).
    """

    def __init__(self, first_day_of_process: bool) -> None:
        self.before = process_age() if first_day_of_process else None
        self.seconds: dict[str, float] = {}
        self._mark = time.perf_counter()
        self._start = self._mark

    def lap(self, phase: str) -> None:
        """Ends `phase` now (one of `PHASES`); the next phase starts now."""
        if phase not in PHASES:
            raise ValueError(f"unknown phase {phase!r}; one of {list(PHASES)}")
        now = time.perf_counter()
        self.seconds[phase] = self.seconds.get(phase, 0.0) + now - self._mark
        self._mark = now

    def split_fit(self, first_call: float | None, steady: float | None) -> None:
        """Splits the time of `fit` (recorded as `steady`) into its first call and the rest.

        Args:
            first_call: Seconds from the start of `fit` to the end of its first call.
            steady: Seconds from the end of the first call to the end of the last.
        """
        fit = self.seconds.pop("steady", 0.0)
        if first_call is None or steady is None:
            self.seconds["first_call"] = fit
            self.seconds["steady"] = 0.0
            return
        self.seconds["first_call"] = fit - steady  # callbacks after the last call included
        self.seconds["steady"] = steady

    def total(self) -> float:
        """Seconds since the day started."""
        return time.perf_counter() - self._start

    def summary(self) -> str:
        """`process start 2.1 s before the day, plan 0.3 s, ...; 12.0 s in all`."""
        parts = [] if self.before is None else [f"process start {self.before:.1f} s before"]
        parts += [f"{p.replace('_', ' ')} {self.seconds[p]:.1f} s" for p in PHASES
                  if p in self.seconds]
        return f"{', '.join(parts)}; day {self.total():.1f} s"
