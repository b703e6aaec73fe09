"""`evaluate:`: what `multitower evaluate` reports beside the global metrics."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from multitower.config.fields import Strict


class EvaluateConfig(Strict):
    # A one-value feature (e.g. user_id) to compute each binary task's group AUC by: the mean
    # of per-group AUCs weighted by the group's rows, over groups with both classes (the
    # user-level AUC of ranking teams). None: the global metrics only.
    group_by: str | None = None
    # Equal-width probability bins of each binary task's calibration curve (report and PNG).
    calibration_bins: Annotated[int, Field(ge=2, le=100)] = 10
