"""Days, the unit of work: a day is written `YYYY-MM-DD`; a range `A:B` holds both ends."""

from __future__ import annotations

import datetime as dt
import re

_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


def check_date(date: str) -> str:
    """Returns `date` if it is a real calendar day written `YYYY-MM-DD`.

    Raises:
        ValueError: It is not.
    """
    if not isinstance(date, str) or not _DATE.fullmatch(date):
        raise ValueError(f"date must be written YYYY-MM-DD, got {date!r}")
    try:
        dt.date.fromisoformat(date)
    except ValueError as err:
        raise ValueError(f"date {date!r} is not a calendar day: {err}") from None
    return date


def next_day(date: str) -> str:
    """The day after `date`."""
    return (dt.date.fromisoformat(check_date(date)) + dt.timedelta(days=1)).isoformat()


def date_range(spec: str) -> list[str]:
    """`A:B` (both included) as a list of dates; `A` alone is one day.

    Raises:
        ValueError: An end is not a date, or the range ends before it starts.
    """
    first, _, last = spec.partition(":")
    start = dt.date.fromisoformat(check_date(first))
    end = dt.date.fromisoformat(check_date(last or first))
    if end < start:
        raise ValueError(f"date range {spec!r} ends before it starts")
    return [(start + dt.timedelta(days=i)).isoformat() for i in range((end - start).days + 1)]
