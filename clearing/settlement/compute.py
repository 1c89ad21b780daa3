"""Settle one business day from the journal: find the day, stream it, render the files.

Runs off the event loop (a worker thread, or the offline command); it only
reads the journal. The caller journals the result and publishes the files.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo

import lmdb

from clearing.core import layouts as v
from clearing.core.summary import summarise as default_summarise
from clearing.domain import entries
from clearing.domain.business_calendar import business_window_ms
from clearing.domain.entries import Body, DayCloseEntry
from clearing.errors import SettlementError
from clearing.settlement import files
from clearing.settlement.daybook import DayBook, PartyView
from clearing.settlement.exception_rows import REVIEW, action, exception_rows
from clearing.settlement.figures import (
    ISSUER_NET_FORMULA,
    Figures,
    SummaryRow,
    compute,
    issuer_net_terms,
)
from clearing.settlement.report import render_report
from clearing.storage.journal import Journal


class DayRequest(NamedTuple):
    business_date: dt.date
    close_seq: int  # journal seq of the day's DayCloseEntry
    previous_close_seq: int | None  # of the day before (None: the journal's first day)
    registry_entries: list[tuple[int, Body]]  # (seq, body) of registry changes, any range


class Computed(NamedTuple):
    business_date: str
    first_seq: int
    last_seq: int
    manifest: dict[str, Any]
    rows: list[SummaryRow]
    files: dict[str, bytes]  # file name -> contents, manifest.json included

    @property
    def manifest_sha256(self) -> str:
        return files.sha256(self.files["manifest.json"])


def compute_day(
    journal: Journal, req: DayRequest, summarise: Callable = default_summarise
) -> Computed:
    """Settle ``req.business_date``: storage trouble while reading is a SettlementError."""
    try:
        return _compute_day(journal, req, summarise)
    except lmdb.Error as exc:
        raise SettlementError(f"reading the journal failed ({exc}); run it again") from exc


def _compute_day(journal: Journal, req: DayRequest, summarise: Callable) -> Computed:
    day = req.business_date
    closing = _close(journal, req.close_seq, day)
    opening = None
    if req.previous_close_seq is not None:
        opening = _close(journal, req.previous_close_seq, day - dt.timedelta(days=1))
    # The day's bounds as the journal closed them, not as the settings say today.
    end_ms = closing.cutoff_ms
    start_ms = (
        opening.cutoff_ms
        if opening is not None
        else business_window_ms(day, closing.timezone, closing.cutoff)[0]
    )
    first = journal.first_seq_at_or_after(start_ms)
    after = journal.first_seq_at_or_after(end_ms)
    view = PartyView()
    for seq, body in req.registry_entries:
        if seq < first:
            view.apply(seq, body)
    offset_ms = _utc_offset_ms(closing.timezone, start_ms)
    book = DayBook(view, first, summarise, (start_ms, end_ms), offset_ms)
    for seq, value in journal.scan(first):
        if seq >= after:
            break
        book.add(entries.decode(value))
    if book.last_seq != after - 1:
        raise SettlementError(f"journal entries {book.next_seq}..{after - 1} could not be read")
    bracketed = _only_closes(journal, first, req.previous_close_seq or first) and _only_closes(
        journal, after, req.close_seq
    )
    figures = compute(book, opening, closing, bracketed)
    return _render(day.isoformat(), book, figures, opening, closing)


def _close(journal: Journal, seq: int, day: dt.date) -> DayCloseEntry:
    env = journal.get(seq)
    if env is None or not isinstance(env.body, DayCloseEntry):
        raise SettlementError(f"journal entry {seq} is not the close of {day}")
    if env.body.business_date != day.isoformat():
        raise SettlementError(f"journal entry {seq} closes {env.body.business_date}, not {day}")
    return env.body


def _only_closes(journal: Journal, first_seq: int, end_seq: int) -> bool:
    """True when entries first_seq..end_seq-1 are all day closes: nothing slipped
    between a day's last entry and the close that recorded its float."""
    for seq in range(first_seq, end_seq):
        env = journal.get(seq)
        if env is None or not isinstance(env.body, DayCloseEntry):
            return False
    return True


def _utc_offset_ms(timezone: str, at_ms: int) -> int:
    zone = ZoneInfo(timezone)
    offset = dt.datetime.fromtimestamp(at_ms / 1000, tz=zone).utcoffset()
    assert offset is not None
    return int(offset.total_seconds()) * 1000


def _render(
    day: str,
    book: DayBook,
    figures: Figures,
    opening: DayCloseEntry | None,
    closing: DayCloseEntry,
) -> Computed:
    rows, totals = figures.rows, figures.totals
    exceptions = exception_rows(book, opening, closing)
    instructions = files.payments(day, rows)
    out = {
        "summary.csv": files.summary_csv(rows),
        "payments.csv": files.payments_csv(instructions),
        "exceptions.csv": files.exceptions_csv(exceptions),
        "settlement.xlsx": files.workbook_xlsx(rows, instructions, exceptions),
    }
    manifest: dict[str, Any] = {
        "format": files.FORMAT,
        "business_date": day,
        "window": {
            "timezone": closing.timezone,
            "cutoff": closing.cutoff,
            "start_ms": book.window_start_ms,
            "end_ms": book.window_end_ms,
        },
        "journal": {
            "first_seq": book.first_seq,
            "last_seq": book.last_seq,
            "entries": sum(book.kinds.values()),
            "entries_by_kind": dict(sorted(book.kinds.items())),
        },
        "configuration_version": book.view.config_seq,
        "counts": {
            "taps": files.tap_counts(totals, book.tap_count),
            "card_operations": dict(sorted(book.card_ops.items())),
            "refused_card_operations": sum(book.refused_ops.values()),
            "top_ups": sum(flow.count for flow in book.topups.values()),
            "transfers": book.transfers.count,
            "parties": len(book.view.parties),
            "payments": len(instructions),
            "exceptions": len(exceptions),
            "exceptions_to_review": sum(
                1 for x in exceptions if action(x.kind, x.reason) == REVIEW
            ),
        },
        "totals": {
            "list_fen": totals[v.OK_LIST],
            "discount_fen": totals[v.OK_DISCOUNT],
            "gross_fen": totals[v.OK_CHARGED],
            "fee_fen": sum(
                r.fee_fen for r in rows if r.role in ("OPERATOR", "MERCHANT", "UTILITY")
            ),
            "paid_fen": sum(i[5] for i in instructions if i[4] == "PAY"),
            "collected_fen": sum(i[5] for i in instructions if i[4] == "COLLECT"),
            "topups_fen": sum(flow.fen for flow in book.topups.values()),
            "card_charged_fen": totals[v.CARD_CHARGED],
            "late_charged_fen": totals[v.LATE_CHARGED],
            "transfers_fen": book.transfers.fen,
        },
        "issuer": figures.issuer,
        "issuer_net_formula": {
            "formula": ISSUER_NET_FORMULA,
            "terms": [
                {"field": key, "fen": fen} for _, key, fen in issuer_net_terms(figures.issuer)
            ],
        },
        "invariants": figures.invariants,
        "taps_by_hour": files.taps_by_hour(book.taps),
    }
    out["report.html"] = render_report(manifest, rows, exceptions).encode()
    manifest["files"] = {name: files.sha256(data) for name, data in sorted(out.items())}
    out["manifest.json"] = files.manifest_json(manifest)
    return Computed(day, book.first_seq, book.last_seq, manifest, rows, out)
