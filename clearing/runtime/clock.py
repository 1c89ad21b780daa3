"""Server clocks. The server's clock stamps every journal entry (SPEC §2)."""

from __future__ import annotations

import time


class SystemClock:
    manual = False

    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000


class ManualClock:
    """A clock that only moves when told (``[server] manual_clock``, tests)."""

    manual = True

    def __init__(self, now_ms: int) -> None:
        self._now_ms = now_ms

    def now_ms(self) -> int:
        return self._now_ms

    def set(self, now_ms: int) -> None:
        self._now_ms = now_ms
