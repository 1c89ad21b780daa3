"""Drawing a day's times and amounts: by local hour, and log-normal amounts in fen."""

from __future__ import annotations

import datetime as dt
import math
from zoneinfo import ZoneInfo

import numpy as np
from numpy.random import Generator

MINUTE_MS = 60_000
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS


def local_ms_of_day(at_ms: int, timezone: str) -> int:
    """Milliseconds since local midnight in ``timezone`` at ``at_ms`` (since the epoch)."""
    local = dt.datetime.fromtimestamp(at_ms / 1000, tz=ZoneInfo(timezone))
    midnight = local.replace(hour=0, minute=0, second=0, microsecond=0)
    return round((local - midnight).total_seconds() * 1000)


def draw_times(
    rng: Generator,
    size: int,
    profile: tuple[float, ...],
    local0_ms: int,
    *,
    ascending: bool = False,
) -> np.ndarray:
    """Model times (ms) following the hourly ``profile`` of local hours: one uniform each,
    by inverse CDF. Model time 0 is ``local0_ms`` into the local day (a business day
    starting at a 04:00 cutoff: 4 h), so profile hour 0 is local midnight wherever the
    model's day begins.

    ``ascending`` draws the uniforms already sorted (normalised sums of exponential
    spacings) in linear time, instead of sorting millions of times afterwards.
    """
    # The model day in pieces of constant weight: the rest of the first local hour, the
    # whole hours, then the first hour again up to the day's end. Open pieces are laid
    # end to end, drawn in, then put back where they belong.
    into = local0_ms % HOUR_MS
    first = local0_ms // HOUR_MS
    lengths = np.array([HOUR_MS - into, *([HOUR_MS] * 23), into], dtype=np.int64)
    weights = np.array([profile[(first + k) % 24] for k in range(25)], dtype=np.float64)
    starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    open_ = np.flatnonzero((weights > 0) & (lengths > 0))
    lengths, starts = lengths[open_], starts[open_]
    mass = weights[open_] * lengths
    cdf = np.concatenate(([0.0], np.cumsum(mass) / mass.sum()))
    ends = np.concatenate(([0], np.cumsum(lengths))).astype(np.float64)
    if ascending:
        u = np.cumsum(rng.standard_exponential(size + 1))
        u /= u[-1]
        u = u[:-1]
    else:
        u = rng.random(size)
    t = np.interp(u, cdf, ends)
    ms = np.minimum(t, ends[-1] - 1, out=t).astype(np.int64)
    shift = starts - ends[:-1].astype(np.int64)
    if (shift == shift[0]).all():
        ms += shift[0]
    else:
        ms += shift[np.searchsorted(ends[1:-1], ms, side="right")]
    return ms


def log_normal(
    rng: Generator, size: int, bounds: tuple[int, int], median_sigma: tuple[int, float], step: int
) -> np.ndarray:
    """Amounts in fen: many small ones, a few large ones, multiples of ``step``."""
    median, sigma = median_sigma
    x = rng.lognormal(math.log(median), sigma, size=size)
    return np.clip(np.rint(x / step).astype(np.int64) * step, bounds[0], bounds[1])
