"""Business days in the journal: the day in progress, day closes, settled days.

Every business day ends with a ``DayCloseEntry`` journaled before any entry of
a later day. It records what settlement needs at the cutoff and cannot derive
from the day's own entries: the float (Σ card balances) and each terminal's
sequence position. Settlement then checks the float movement it computes from
the day's entries against two closes computed from the ledger itself.
"""

from __future__ import annotations

import datetime as dt

import msgspec

from clearing.domain.business_calendar import business_date_of, business_window_ms
from clearing.domain.entries import DayCloseEntry, SettledEntry, TerminalCount
from clearing.errors import JournalCorrupt


class DaysState(msgspec.Struct, array_like=True):
    open_date: str  # ISO date of the business day in progress ("" before the first entry)
    open_until_ms: int  # its end: the next day's cutoff
    settled: dict[str, tuple[int, str]]  # date -> (journal seq, manifest SHA-256)
    first_date: str  # the journal's first business day
    closes: dict[str, int]  # date -> journal seq of its DayCloseEntry


class BusinessDays:
    def __init__(self) -> None:
        self.open_date = ""
        self.open_until_ms = 0
        self.first_date = ""
        self.settled: dict[str, tuple[int, str]] = {}
        # One entry a day: settlement reads a day's bounds from its closes, so a
        # later change of time zone or cutoff never moves a past day.
        self.closes: dict[str, int] = {}

    # The day in progress ------------------------------------------------------------

    def track(self, accepted_at_ms: int, timezone: str, cutoff: str) -> None:
        """Open the first day at the first entry, or re-time the open day when
        the configuration changes its zone or cutoff."""
        day = (
            dt.date.fromisoformat(self.open_date)
            if self.open_date
            else business_date_of(accepted_at_ms, timezone, cutoff)
        )
        self.open_date = day.isoformat()
        self.first_date = self.first_date or self.open_date
        # A cutoff moved earlier than now ends the open day right after this entry.
        self.open_until_ms = max(business_window_ms(day, timezone, cutoff)[1], accepted_at_ms + 1)

    def check_entry(self, seq: int, accepted_at_ms: int) -> None:
        """Only a day close may be the first entry past the open day's end."""
        if self.open_date and accepted_at_ms >= self.open_until_ms:
            raise JournalCorrupt(seq, f"entry of a later day before {self.open_date} was closed")

    def close_due(self, next_stamp_ms: int) -> bool:
        """True when the next entry would fall after the open day: close it first."""
        return bool(self.open_date) and next_stamp_ms >= self.open_until_ms

    # Closing ------------------------------------------------------------------------------

    def close_body(
        self, ledger, terminal_ids: list[int], timezone: str, cutoff: str
    ) -> DayCloseEntry:
        """The close of the open day, from the state now."""
        counts = tuple(
            TerminalCount(terminal_id, *ledger.terminal_status(terminal_id))
            for terminal_id in sorted(terminal_ids)
        )
        return DayCloseEntry(
            self.open_date,
            timezone,
            cutoff,
            self.open_until_ms,
            ledger.total_balance_fen(),
            ledger.card_count(),
            counts,
        )

    def apply_close(self, seq: int, body: DayCloseEntry, expected: DayCloseEntry) -> None:
        if body != expected:
            raise JournalCorrupt(seq, f"the close of {body.business_date} differs from the state")
        self.closes[body.business_date] = seq
        timezone, cutoff = body.timezone, body.cutoff
        next_day = dt.date.fromisoformat(self.open_date) + dt.timedelta(days=1)
        self.open_date = next_day.isoformat()
        self.open_until_ms = business_window_ms(next_day, timezone, cutoff)[1]

    def apply_settled(self, seq: int, body: SettledEntry) -> None:
        if body.business_date in self.settled:
            raise JournalCorrupt(seq, f"{body.business_date} was already settled")
        self.settled[body.business_date] = (seq, body.manifest_sha256)

    # Checkpoints ---------------------------------------------------------------------------

    def state(self) -> DaysState:
        return DaysState(
            self.open_date, self.open_until_ms, dict(self.settled), self.first_date,
            dict(self.closes),
        )  # fmt: skip

    def restore(self, state: DaysState) -> None:
        self.open_date, self.open_until_ms = state.open_date, state.open_until_ms
        self.settled = {date: (found[0], found[1]) for date, found in state.settled.items()}
        self.first_date, self.closes = state.first_date, dict(state.closes)

    def next_event_ms(self) -> int | None:
        """When the open day ends (the service wakes then to close it)."""
        return self.open_until_ms if self.open_date else None
