"""The soak's judge: the journal on disk against what the clients were told.

Run on a stopped (or killed) server's data directory, read-only: exactly what
the next start replays. It verifies the hash chain and replays every entry
from genesis (no checkpoint), then checks:

- every acknowledged tap and top-up is in the journal exactly once, with the
  answer the client got; every refused one is absent; every unknown one is
  there at most once;
- Σ card balances (the replayed ledger) = Σ opening balances + Σ top-ups
  − Σ charges to cards − Σ balances refunded, all added up from the entries.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from clearing.codes import CardOpStatus, ChargedTo, TapStatus
from clearing.domain import entries
from clearing.domain.engine import Engine
from clearing.domain.entries import CardOpEntry, SeedEntry, TapBatchEntry
from clearing.errors import JournalError
from clearing.limits import RESULT_STRUCT, TAP_STRUCT
from clearing.storage.verify import replayed
from loadgen.soak.record import ClientLog, Standing, comparable

VIOLATIONS_KEPT = 20  # enough to see the pattern; the counts say how many


@dataclass
class Audit:
    acknowledged: int = 0
    lost: int = 0  # acknowledged, absent from the journal
    duplicated: int = 0  # applied more than once
    violations: list[str] = field(default_factory=list)  # every failed check, lost/dup too
    violation_count: int = 0
    float_fen: int = 0  # Σ card balances after replay
    last_seq: int = 0
    balances: dict[int, int] = field(default_factory=dict)  # card_id -> balance, for a sample

    def fail(self, what: str) -> None:
        self.violation_count += 1
        if len(self.violations) < VIOLATIONS_KEPT:
            self.violations.append(what)


@dataclass
class _Book:
    """What the journal's entries say, added up."""

    taps: Counter = field(default_factory=Counter)  # (terminal, seq) -> applications
    results: dict = field(default_factory=dict)  # (terminal, seq) -> first result
    top_ups: Counter = field(default_factory=Counter)  # request_id -> OK top-ups
    top_up_seq: dict = field(default_factory=dict)  # request_id -> (status, journal seq)
    money_in_fen: int = 0  # opening balances and top-ups
    money_out_fen: int = 0  # charges to cards and balances refunded


def audit(data_dir: str, log: ClientLog, *, sample_cards: list[int] = ()) -> Audit:
    result = Audit()
    try:
        engine, book = _replay(data_dir)
    except JournalError as exc:
        result.fail(f"the journal does not verify: {exc}")
        return result
    result.last_seq = engine.last_seq
    result.float_fen = engine.ledger.total_balance_fen()
    expected = book.money_in_fen - book.money_out_fen
    if result.float_fen != expected:
        result.fail(f"Σ balances {result.float_fen} fen, the entries add up to {expected} fen")
    for card_id in sample_cards:
        card = engine.ledger.card(card_id)
        result.balances[card_id] = card[2] if card is not None else 0
    _check_taps(log, book, result)
    _check_top_ups(log, book, result)
    return result


def _replay(data_dir: str) -> tuple[Engine, _Book]:
    engine, book = Engine(), _Book()
    for envelope, _ in replayed(data_dir, engine):
        _add(book, envelope)
    return engine, book


def _add(book: _Book, envelope: entries.Envelope) -> None:
    body = envelope.body
    if isinstance(body, TapBatchEntry):
        taps = TAP_STRUCT.iter_unpack(body.packed_taps)
        for tap, result in zip(taps, RESULT_STRUCT.iter_unpack(body.packed_results), strict=True):
            status, charged_to, duplicate, charged = result[:4]
            if duplicate or status == TapStatus.ID_CONFLICT:
                continue  # answered, not applied
            key = (body.terminal_id, tap[1])
            book.taps[key] += 1
            book.results.setdefault(key, result)
            if status == TapStatus.OK and charged_to == ChargedTo.CARD:
                book.money_out_fen += charged
    elif isinstance(body, SeedEntry):
        book.money_in_fen += body.count * body.opening_balance_fen
    elif isinstance(body, CardOpEntry) and body.status == CardOpStatus.OK:
        if body.method == "TopUp":
            book.top_ups[body.request_id] += 1
            book.top_up_seq.setdefault(body.request_id, (body.status, envelope.seq))
            book.money_in_fen += body.amount_fen
        elif body.method == "CloseCard":
            book.money_out_fen += body.amount_fen - body.deposit_fen


def _check_taps(log: ClientLog, book: _Book, result: Audit) -> None:
    for key, record in log.taps.items():
        applied = book.taps.get(key, 0)
        if applied > 1:
            result.duplicated += 1
            result.fail(f"tap {key} applied {applied} times")
        if record.standing == Standing.ACKED:
            result.acknowledged += 1
            if applied == 0:
                result.lost += 1
                result.fail(f"tap {key} acknowledged, not in the journal")
            elif comparable(record.answer) != comparable(book.results[key]):
                result.fail(f"tap {key} answered {record.answer}, journal has {book.results[key]}")
        elif record.standing == Standing.REFUSED and applied:
            result.fail(f"tap {key} refused, yet applied")


def _check_top_ups(log: ClientLog, book: _Book, result: Audit) -> None:
    for request_id, record in log.top_ups.items():
        applied = book.top_ups.get(request_id, 0)
        if applied > 1:
            result.duplicated += 1
            result.fail(f"top-up {request_id} applied {applied} times")
        if record.standing == Standing.ACKED:
            result.acknowledged += 1
            answered_ok = record.answer is not None and record.answer[0] == CardOpStatus.OK
            if answered_ok and applied == 0:
                result.lost += 1
                result.fail(f"top-up {request_id} acknowledged OK, not in the journal")
            elif answered_ok and book.top_up_seq[request_id][1] != record.answer[1]:
                result.fail(f"top-up {request_id} answered {record.answer}, journal disagrees")
            elif not answered_ok and applied:
                result.fail(f"top-up {request_id} answered {record.answer}, yet applied")
        elif record.standing == Standing.REFUSED and applied:
            result.fail(f"top-up {request_id} refused, yet applied")
