"""Settle one business day from the journal: find the day, stream it, render the files.

Runs off the event loop (a worker thread, or the offline command); it only
reads the journal. The caller journals the result and publishes the files.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo

from clearing import entries
from clearing import tapsum_py as v
from clearing.business_day import business_window_ms
from clearing.entries import Body, DayCloseEntry
from clearing.errors import SettlementError
from clearing.journal import Journal
from clearing.settlement import files
from clearing.settlement.daybook import DayBook, PartyView
from clearing.settlement.exceptions import exception_rows
from clearing.settlement.figures import Figures, SummaryRow, compute
from clearing.settlement.report import render_report
from clearing.tapsum import summarise as default_summarise


class DayRequest(NamedTuple):
    business_date: dt.date
    timezone: str
    cutoff: str
    first_date: dt.date  # business date of the journal's first entry
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
    day = req.business_date
    start_ms, end_ms = business_window_ms(day, req.timezone, req.cutoff)
    first = journal.first_seq_at_or_after(start_ms)
    after = journal.first_seq_at_or_after(end_ms)
    closing = _find_close(journal, day, after)
    if closing is None:
        raise SettlementError(
            f"the journal has no close of {day} yet: the server closes it "
            "at the first write after the cutoff"
        )
    opening = _find_close(journal, day - dt.timedelta(days=1), first)
    if opening is None and day > req.first_date:
        raise SettlementError(f"the journal has no close of the day before {day}")
    view = PartyView()
    for seq, body in req.registry_entries:
        if seq < first:
            view.apply(seq, body)
    book = DayBook(view, first, summarise, (start_ms, end_ms), _utc_offset_ms(req, start_ms))
    for seq, value in journal.scan(first):
        if seq >= after:
            break
        book.add(entries.decode(value))
    if book.last_seq != after - 1:
        raise SettlementError(f"journal entries {book.next_seq}..{after - 1} could not be read")
    figures = compute(book, opening, closing)
    return _render(day.isoformat(), book, figures, opening, closing, req)


def _find_close(journal: Journal, day: dt.date, from_seq: int) -> DayCloseEntry | None:
    """The close of ``day``: among the closes journaled together from ``from_seq`` on."""
    seq = from_seq
    while (env := journal.get(seq)) is not None and isinstance(env.body, DayCloseEntry):
        if env.body.business_date == day.isoformat():
            return env.body
        seq += 1
    return None


def _utc_offset_ms(req: DayRequest, at_ms: int) -> int:
    zone = ZoneInfo(req.timezone)
    offset = dt.datetime.fromtimestamp(at_ms / 1000, tz=zone).utcoffset()
    assert offset is not None
    return int(offset.total_seconds()) * 1000


def _render(
    day: str,
    book: DayBook,
    figures: Figures,
    opening: DayCloseEntry | None,
    closing: DayCloseEntry,
    req: DayRequest,
) -> Computed:
    rows, totals = figures.rows, figures.totals
    exceptions = exception_rows(book, opening, closing)
    instructions = files.payments(day, rows)
    out = {
        "summary.csv": files.summary_csv(rows),
        "payments.csv": files.payments_csv(instructions),
        "exceptions.csv": files.exceptions_csv(exceptions),
    }
    manifest: dict[str, Any] = {
        "format": files.FORMAT,
        "business_date": day,
        "window": {
            "timezone": req.timezone,
            "cutoff": req.cutoff,
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
        },
        "totals": {
            "list_fen": totals[v.OK_LIST],
            "discount_fen": totals[v.OK_DISCOUNT],
            "gross_fen": totals[v.OK_CHARGED],
            "fee_fen": sum(
                r.fee_fen for r in rows if r.role in ("OPERATOR", "MERCHANT", "UTILITY")
            ),
            "paid_fen": sum(amount for *_, d, amount, _ in instructions if d == "PAY"),
            "collected_fen": sum(amount for *_, d, amount, _ in instructions if d == "COLLECT"),
            "topups_fen": sum(flow.fen for flow in book.topups.values()),
            "card_charged_fen": totals[v.CARD_CHARGED],
            "late_charged_fen": totals[v.LATE_CHARGED],
            "transfers_fen": book.transfers.fen,
        },
        "issuer": figures.issuer,
        "invariants": figures.invariants,
        "taps_by_hour": files.taps_by_hour(book.taps),
    }
    out["report.html"] = render_report(manifest, rows, exceptions).encode()
    manifest["files"] = {name: files.sha256(data) for name, data in sorted(out.items())}
    out["manifest.json"] = files.manifest_json(manifest)
    return Computed(day, book.first_seq, book.last_seq, manifest, rows, out)
