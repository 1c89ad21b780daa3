"""Business dates (SPEC §2): entries accepted in [D cutoff, D+1 cutoff) belong to D.

The cutoff is wall-clock time in the configured zone, so a day is 23 or 25
hours long where the zone observes daylight saving.
"""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

from clearing.errors import RequestRejected


def parse_business_date(text: str) -> dt.date:
    """A date as YYYY-MM-DD, or INVALID_ARGUMENT saying so."""
    try:
        return dt.date.fromisoformat(text)
    except ValueError as exc:
        raise RequestRejected(
            "INVALID_ARGUMENT", f"business date {text!r} is not a date like 2026-11-21"
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
