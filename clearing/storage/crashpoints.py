"""Named crash points: crash tests make the server die at an exact instant.

``CLEARING_CRASH_AT=<point>[@<n>]`` arms one point; its n-th pass (default the
first) kills the process with SIGKILL: no cleanup, no flush, no reply, just
as ``kill -9`` would at that instant. Unset (production), a point costs one
comparison. An unknown point name stops the start with the list of names.
"""

from __future__ import annotations

import os
import signal
import threading

from clearing.errors import ConfigError

ENV_VAR = "CLEARING_CRASH_AT"

POINTS = {
    "journal.before_commit": "a group of entries is written in its transaction, not committed",
    "journal.after_commit": "a group is durably committed; no caller has been answered",
    "checkpoint.forked": "a checkpoint child was forked and is still writing its file",
    "checkpoint.mid_store": "a checkpoint is half stored (its ledger put, the rest not)",
    "settlement.staged": "a day's files are staged; the date is not journaled as settled",
    "settlement.journaled": "the date is journaled as settled; its files are not in place",
}


def parse(value: str | None) -> tuple[str | None, int]:
    """(point, pass number) from the variable's value; (None, 0) when unset."""
    if not value:
        return None, 0
    name, _, nth = value.partition("@")
    if name not in POINTS:
        raise ConfigError(
            f"{ENV_VAR}={value!r} names no crash point; the points are: {', '.join(POINTS)}"
        )
    try:
        passes = int(nth) if nth else 1
    except ValueError:
        passes = 0
    if passes < 1:
        raise ConfigError(f"{ENV_VAR}={value!r}: the pass after '@' must be a number from 1")
    return name, passes


_armed, _passes_left = parse(os.environ.get(ENV_VAR))
_lock = threading.Lock()  # points are passed on the loop, writer and checkpoint threads


def crash_point(name: str) -> None:
    """Die here if this is the armed point's chosen pass."""
    global _passes_left
    if _armed is None or _armed != name:
        return
    with _lock:
        _passes_left -= 1
        if _passes_left > 0:
            return
    os.kill(os.getpid(), signal.SIGKILL)
