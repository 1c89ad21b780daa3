"""Business dates (SPEC §2): entries accepted in [D cutoff, D+1 cutoff) belong to D.

The cutoff is wall-clock time in the configured zone, so a day is 23 or 25
hours long where the zone observes daylight saving.
"""

from __future__ import annotations

import datetime as dt
import re
from zoneinfo import ZoneInfo

from clearing.errors import Refusal, RequestRejected
from clearing.limits import QUOTED_INPUT_CHARS_MAX

# Exactly YYYY-MM-DD in ASCII digits. date.fromisoformat alone is too lenient
# (3.11 takes 20261121 and 2026-W47-6 too): one date must have one spelling, the
# one settlement directories, files and journal entries use.
_BUSINESS_DATE = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})")


def parse_business_date(text: str) -> dt.date:
    """A caller's business date, exactly YYYY-MM-DD, or INVALID_ARGUMENT saying so."""
    match = _BUSINESS_DATE.fullmatch(text)
    try:
        if match is None:
            raise ValueError("not of the form YYYY-MM-DD")
        return dt.date(*(int(part) for part in match.groups()))
    except ValueError as exc:  # the form, or no such day (2026-02-30, year 0)
        cut = len(text) > QUOTED_INPUT_CHARS_MAX
        quoted = repr(text[:QUOTED_INPUT_CHARS_MAX]) + ("…" if cut else "")
        raise RequestRejected(
            Refusal.INVALID_ARGUMENT,
            f"business date {quoted} is not a date written YYYY-MM-DD (like 2026-11-21): {exc}",
        ) from exc


def _cutoff_ms(day: dt.date, zone: ZoneInfo, cutoff: str) -> int:
    hour, minute = (int(part) for part in cutoff.split(":"))
    local = dt.datetime.combine(day, dt.time(hour, minute), tzinfo=zone)
    return int(local.timestamp() * 1000)


def business_window_ms(day: dt.date, timezone: str, cutoff: str) -> tuple[int, int]:
    """[start, end) in ms since the epoch of business date ``day``."""
    zone = ZoneInfo(timezone)
    return _cutoff_ms(day, zone, cutoff), _cutoff_ms(day + dt.timedelta(days=1), zone, cutoff)


def business_date_of(accepted_at_ms: int, timezone: str, cutoff: str) -> dt.date:
    """The business date an entry accepted at ``accepted_at_ms`` belongs to."""
    zone = ZoneInfo(timezone)
    local = dt.datetime.fromtimestamp(accepted_at_ms / 1000, tz=zone)
    day = local.date()
    if accepted_at_ms < _cutoff_ms(day, zone, cutoff):
        day -= dt.timedelta(days=1)
    return day
