"""exceptions.csv rows: what finance should look at (SPEC §8).

Rejected taps by reason, resubmissions, late taps, hot-list losses (per
terminal), terminal sequence gaps at the day's close, and refused card
operations (per channel).
"""

from __future__ import annotations

from typing import NamedTuple

from clearing.codes import TapStatus
from clearing.core import layouts as v
from clearing.domain.entries import DayCloseEntry
from clearing.limits import LATE_DAY_BINS
from clearing.settlement.daybook import DayBook

REVIEW, ROUTINE = "REVIEW", "NONE"
# Rows someone must act on: money the issuer bears, records that never arrived or
# that a terminal got wrong. Declines for funds or a blocked card, resubmissions,
# late but paid taps and refused counter operations are the day's routine.
_NEEDS_ACTION_KINDS = frozenset({"HOT_LIST_LOSS", "SEQUENCE_GAP"})
_ROUTINE_REJECTIONS = frozenset({"INSUFFICIENT_FUNDS", "CARD_BLOCKED"})


def action(kind: str, reason: str) -> str:
    """REVIEW for a row that needs someone to act, NONE for routine ones."""
    if kind in _NEEDS_ACTION_KINDS:
        return REVIEW
    if kind == "REJECTED_TAP" and reason not in _ROUTINE_REJECTIONS:
        return REVIEW  # ID_CONFLICT, TOO_LATE, IN_FUTURE, UNKNOWN_CARD, ...: a terminal fault
    return ROUTINE


class ExceptionRow(NamedTuple):
    kind: str
    reason: str
    party_id: str
    terminal_id: int | str  # "" for rows not about one terminal
    count: int  # type: ignore[assignment]  # shadows tuple.count; read as row.count
    amount_fen: int
    detail: str


def exception_rows(
    book: DayBook, opening: DayCloseEntry | None, closing: DayCloseEntry
) -> list[ExceptionRow]:
    rows: list[ExceptionRow] = []
    for (terminal_id, party_id, _), t in book.taps.items():
        rows.extend(_tap_rows(terminal_id, party_id, t))
    rows.extend(_gap_rows(book, opening, closing))
    for (method, status, channel), count in book.refused_ops.items():
        rows.append(
            ExceptionRow(
                "REFUSED_CARD_OP",
                f"{method}:{status}",
                channel,
                "",
                count,
                0,
                "refused at the counter; nothing moved",
            )
        )
    rows.sort(
        key=lambda r: (
            action(r.kind, r.reason) != REVIEW,  # what needs action first
            r.kind,
            r.reason,
            r.party_id,
            str(r.terminal_id).zfill(10),
        )
    )
    return rows


def _tap_rows(terminal_id: int, party_id: str, t: list[int]) -> list[ExceptionRow]:
    rows = []
    for status in TapStatus:
        count = t[v.REJECTED + status] if status != TapStatus.OK else 0
        if count:
            amount = t[v.REJECTED_LIST + status]
            rows.append(
                ExceptionRow(
                    "REJECTED_TAP",
                    status.name,
                    party_id,
                    terminal_id,
                    count,
                    amount,
                    "not applied; list amount attempted",
                )
            )
    if t[v.DUP_COUNT]:
        rows.append(
            ExceptionRow(
                "DUPLICATE_TAP",
                "RESUBMITTED",
                party_id,
                terminal_id,
                t[v.DUP_COUNT],
                0,
                "answered with the original result",
            )
        )
    if t[v.LATE_COUNT]:
        rows.append(
            ExceptionRow(
                "LATE_TAP",
                "OCCURRED_BEFORE_BUSINESS_DAY",
                party_id,
                terminal_id,
                t[v.LATE_COUNT],
                t[v.LATE_CHARGED],
                _late_detail(t),
            )
        )
    if t[v.LOSS_COUNT]:
        rows.append(
            ExceptionRow(
                "HOT_LIST_LOSS",
                "CARD_NOT_ACTIVE",
                party_id,
                terminal_id,
                t[v.LOSS_COUNT],
                t[v.LOSS_CHARGED],
                "ride paid to the operator; charged to the issuer",
            )
        )
    return rows


def _late_detail(t: list[int]) -> str:
    parts = []
    for days in range(1, LATE_DAY_BINS + 1):
        count = t[v.LATE_DAYS + days - 1]
        if count:
            more = "+" if days == LATE_DAY_BINS else ""
            parts.append(f"{count} from {days}{more} day{'s' if days > 1 else ''} before")
    return "; ".join(parts)


def _gap_rows(
    book: DayBook, opening: DayCloseEntry | None, closing: DayCloseEntry
) -> list[ExceptionRow]:
    """Numbers below a terminal's highest that never arrived, as of the day's close."""
    before = {
        t.terminal_id: t.last_seq - t.received for t in (opening.terminals if opening else ())
    }
    rows = []
    for t in closing.terminals:
        missing = t.last_seq - t.received
        if missing <= 0:
            continue
        terminal = book.view.terminals.get(t.terminal_id)
        party_id = terminal.party_id if terminal is not None else ""
        change = missing - before.get(t.terminal_id, 0)
        rows.append(
            ExceptionRow(
                "SEQUENCE_GAP",
                "MISSING_TERMINAL_SEQ",
                party_id,
                t.terminal_id,
                missing,
                0,
                f"highest terminal_seq {t.last_seq}; {change:+d} missing on the day",
            )
        )
    return rows
