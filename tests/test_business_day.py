"""Business dates: the cutoff in the configured zone decides the day (SPEC §2)."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st

from clearing.domain.business_calendar import (
    business_date_of,
    business_window_ms,
    parse_business_date,
)
from clearing.errors import RequestRejected

SHANGHAI = "Asia/Shanghai"


def test_the_cutoff_is_four_in_the_morning_in_shanghai():
    start, end = business_window_ms(dt.date(2026, 11, 21), SHANGHAI, "04:00")
    # 2026-11-21 04:00 +08:00 is 2026-11-20 20:00 UTC
    assert start == int(dt.datetime(2026, 11, 20, 20, tzinfo=dt.UTC).timestamp() * 1000)
    assert end - start == 86_400_000
    assert business_date_of(start, SHANGHAI, "04:00") == dt.date(2026, 11, 21)
    assert business_date_of(start - 1, SHANGHAI, "04:00") == dt.date(2026, 11, 20)
    assert business_date_of(end - 1, SHANGHAI, "04:00") == dt.date(2026, 11, 21)


def test_a_daylight_saving_day_is_23_hours_long():
    start, end = business_window_ms(dt.date(2026, 3, 28), "Europe/Berlin", "04:00")
    assert end - start == 23 * 3_600_000


@given(st.integers(min_value=0, max_value=4_102_444_800_000))  # 1970 .. 2100
def test_every_instant_falls_in_the_window_of_its_date(ms):
    day = business_date_of(ms, SHANGHAI, "04:00")
    start, end = business_window_ms(day, SHANGHAI, "04:00")
    assert start <= ms < end


@pytest.mark.parametrize("text", ["2026-13-01", "yesterday", "", "2026-11-31"])
def test_malformed_dates_are_refused(text):
    with pytest.raises(RequestRejected, match="is not a date"):
        parse_business_date(text)
