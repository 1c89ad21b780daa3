"""The deterministic engine: journal entries in, state and answers out.

Live requests and replay go through the same ``_run`` so that the state after
replaying the journal is exactly the state that answered the requests. Replay
compares what it computes with what was journaled (the answers given) and
stops at the first difference. The engine does no I/O: the service journals
the entries it returns, and answers once they are durable.
"""

from __future__ import annotations

from typing import NamedTuple

import msgspec

from clearing.codes import CardOpStatus, CardState, CardType
from clearing.core.ledger import Ledger
from clearing.domain import card_operations
from clearing.domain.business_days import BusinessDays, DaysState
from clearing.domain.card_book import CardBook, CardBookState
from clearing.domain.card_operations import CardRequest, Outcome
from clearing.domain.checkpoint_record import Checkpoint
from clearing.domain.entries import (
    Body,
    CardOpEntry,
    ConcessionEntry,
    ConfigEntry,
    DayCloseEntry,
    Envelope,
    MerchantRuleEntry,
    PartyEntry,
    SeedEntry,
    SettledEntry,
    TapBatchEntry,
    TerminalEntry,
    TransferEntry,
)
from clearing.domain.registry import Registry
from clearing.errors import JournalCorrupt, Refusal, RequestRejected
from clearing.limits import REQUEST_ID_BYTES_MAX, TAP_BYTES

# Demo seeding: card types in the city's shares (of 100 cards).
_SEED_TYPE_SHARES = ((70, CardType.ADULT), (85, CardType.STUDENT), (97, CardType.ELDERLY))


def seed_card_type(index: int) -> int:
    bucket = index * 37 % 100  # spread types over the id range
    for upper, card_type in _SEED_TYPE_SHARES:
        if bucket < upper:
            return int(card_type)
    return int(CardType.DISABLED)


class CardAnswer(NamedTuple):
    """What a card operation answered; a retry gets it again."""

    fingerprint: tuple[str, str, int, tuple[int, ...]]  # method, channel, card, args
    status: int
    amount_fen: int
    message: str
    card: tuple[int, int, int, int, int] | None
    journal_seq: int
    accepted_at_ms: int


class EngineState(msgspec.Struct, array_like=True):
    """The Python-side state a checkpoint keeps beside the ledger core's."""

    last_seq: int
    last_accepted_ms: int
    registry_entries: list[tuple[int, Body]]
    answers: dict[str, CardAnswer]
    book: CardBookState
    days: DaysState | None = None


class Engine:
    def __init__(self, ledger_class: type = Ledger) -> None:
        self.ledger = ledger_class()
        self.registry = Registry()
        self.book = CardBook()
        self.days = BusinessDays()
        self.answers: dict[str, CardAnswer] = {}
        self.last_seq = 0
        self.last_accepted_ms = 0
        self.taps_since_checkpoint = 0
        # Registry-changing entries, kept to rebuild the registry from a checkpoint.
        self._registry_entries: list[tuple[int, Body]] = []

    # Sequencing ---------------------------------------------------------------

    def _next(self, now_ms: int) -> tuple[int, int]:
        """Seq and accepted_at_ms of the next entry; the stamp strictly increases."""
        return self.last_seq + 1, max(now_ms, self.last_accepted_ms + 1)

    def _advance(self, seq: int, accepted_at_ms: int) -> None:
        assert seq == self.last_seq + 1, f"entry {seq} after {self.last_seq}"
        if accepted_at_ms <= self.last_accepted_ms:
            raise JournalCorrupt(seq, "accepted_at_ms does not increase")
        self.last_seq, self.last_accepted_ms = seq, accepted_at_ms

    # Live requests ---------------------------------------------------------------

    def tap_batch(self, terminal_id: int, packed_taps: bytes, now_ms: int) -> Envelope:
        """Rate and apply a checked batch; returns the entry to journal."""
        seq, accepted = self._next(now_ms)
        probe = TapBatchEntry(terminal_id, packed_taps, b"")
        results = self._run(seq, accepted, probe)
        return Envelope(seq, accepted, b"", msgspec.structs.replace(probe, packed_results=results))

    def card_op(self, request_id: str, req: CardRequest) -> tuple[Envelope | None, CardAnswer]:
        """Apply a card operation, or answer a repeat of ``request_id``.

        The envelope is None when nothing new is to be journaled.
        """
        _check_request(request_id, req)
        fingerprint = (req.method, req.channel, req.card_id, req.args)
        earlier = self.answers.get(request_id)
        if earlier is not None:
            if earlier.fingerprint == fingerprint:
                return None, earlier
            conflict = Outcome(
                CardOpStatus.ID_CONFLICT,
                0,
                f"request_id {request_id!r} was used for another request",
            )
            return None, CardAnswer(fingerprint, *conflict[:3], self.ledger.card(req.card_id), 0, 0)
        seq, accepted = self._next(req.now_ms)
        entry = CardOpEntry(request_id, req.method, req.channel, req.card_id, req.args, 0, 0)
        outcome: Outcome = self._run(seq, accepted, entry)
        body = msgspec.structs.replace(
            entry,
            status=int(outcome.status),
            amount_fen=outcome.amount_fen,
            deposit_fen=outcome.deposit_fen,
        )
        return Envelope(seq, accepted, b"", body), self.answers[request_id]

    def transfer(self, old_card_id: int, now_ms: int) -> Envelope:
        """Move a replaced card's balance to its new card (the hold has passed)."""
        seq, accepted = self._next(now_ms)
        new_card_id = self.book.replacements[old_card_id].new_card_id
        # A replacement that was itself replaced (and has moved its balance on)
        # passes this balance along to the newest card of the chain.
        while new_card_id in self.book.replacements and new_card_id not in self.book.pending:
            new_card_id = self.book.replacements[new_card_id].new_card_id
        amount = self.ledger.card(old_card_id)[2]
        body = TransferEntry(old_card_id, new_card_id, amount)
        self._run(seq, accepted, body)
        return Envelope(seq, accepted, b"", body)

    def admin(self, body: Body, now_ms: int) -> Envelope:
        """A registry change (party, terminal, rule, concession, config, seed) or a
        settled-day record."""
        seq, accepted = self._next(now_ms)
        self._run(seq, accepted, body)
        return Envelope(seq, accepted, b"", body)

    def day_close_due(self, now_ms: int) -> bool:
        return self.days.close_due(self._next(now_ms)[1])

    def close_day(self, now_ms: int) -> Envelope | None:
        """The close of the open business day, when the next entry would fall after it.

        The service calls this until it returns None before every other write.
        """
        seq, accepted = self._next(now_ms)
        if not self.days.close_due(accepted):
            return None
        body = self._close_body()
        self._run(seq, accepted, body)
        return Envelope(seq, accepted, b"", body)

    def _close_body(self) -> DayCloseEntry:
        settings = self.registry.settings
        assert settings is not None, "a day opens only with a configuration"
        return self.days.close_body(
            self.ledger, list(self.registry.terminals), settings.timezone, settings.cutoff
        )

    def registry_entries_before(self, seq: int) -> list[tuple[int, Body]]:
        """The registry-changing entries journaled before ``seq`` (for settlement)."""
        return [(s, body) for s, body in self._registry_entries if s < seq]

    # Replay ---------------------------------------------------------------

    def replay(self, envelope: Envelope) -> None:
        body = envelope.body
        if isinstance(body, TapBatchEntry):
            probe = TapBatchEntry(body.terminal_id, body.packed_taps, b"")
            results = self._run(envelope.seq, envelope.accepted_at_ms, probe)
            if results != body.packed_results:
                raise JournalCorrupt(envelope.seq, "replayed tap results differ from the journal")
        elif isinstance(body, CardOpEntry):
            outcome = self._run(envelope.seq, envelope.accepted_at_ms, body)
            answered = (int(outcome.status), outcome.amount_fen, outcome.deposit_fen)
            if answered != (body.status, body.amount_fen, body.deposit_fen):
                raise JournalCorrupt(envelope.seq, "replayed card operation answers differently")
        else:
            self._run(envelope.seq, envelope.accepted_at_ms, body)

    # The one path every entry takes ---------------------------------------------------------------

    def _run(self, seq: int, accepted_at_ms: int, body: Body):
        if isinstance(body, DayCloseEntry):
            return self._close_day(seq, accepted_at_ms, body)
        self.days.check_entry(seq, accepted_at_ms)
        if isinstance(body, TapBatchEntry):
            if body.terminal_id not in self.registry.terminals:
                raise JournalCorrupt(seq, f"tap batch from unknown terminal {body.terminal_id}")
            self._advance(seq, accepted_at_ms)
            self.taps_since_checkpoint += len(body.packed_taps) // TAP_BYTES
            ledger = self.ledger
            results = ledger.apply_batch(body.terminal_id, body.packed_taps, accepted_at_ms, seq)
            for card_id in ledger.take_low_balance_crossings():
                self.book.relist(ledger, card_id)
            return results
        self._advance(seq, accepted_at_ms)
        if isinstance(body, CardOpEntry):
            return self._card_op(seq, accepted_at_ms, body)
        if isinstance(body, TransferEntry):
            return self._transfer(seq, body)
        if isinstance(body, SettledEntry):
            return self.days.apply_settled(seq, body)
        self._apply_registry(seq, body)
        if isinstance(body, ConfigEntry):
            self.days.track(accepted_at_ms, body.settings.timezone, body.settings.cutoff)
        if not isinstance(body, SeedEntry):  # seeded cards live in the ledger's snapshot
            self._registry_entries.append((seq, body))
        return None

    def _card_op(self, seq: int, accepted_at_ms: int, body: CardOpEntry) -> Outcome:
        operation, _ = card_operations.OPERATIONS[body.method]
        req = CardRequest(body.method, body.card_id, tuple(body.args), body.channel, accepted_at_ms)
        outcome = operation(self.ledger, self.registry, self.book, req)
        touched = [req.card_id]
        if req.method == "ReplaceCard" and outcome.status == CardOpStatus.OK:
            touched.append(req.args[0])
        for card_id in touched:
            self.book.note_op(card_id, seq)
            self.book.relist(self.ledger, card_id)
        self.answers[body.request_id] = CardAnswer(
            (req.method, req.channel, req.card_id, req.args),
            int(outcome.status),
            outcome.amount_fen,
            outcome.message,
            self.ledger.card(req.card_id),
            seq,
            accepted_at_ms,
        )
        return outcome

    def _close_day(self, seq: int, accepted_at_ms: int, body: DayCloseEntry) -> None:
        if not self.days.close_due(accepted_at_ms):
            raise JournalCorrupt(seq, f"{body.business_date} closed before its cutoff")
        self._advance(seq, accepted_at_ms)
        self.days.apply_close(seq, body, self._close_body())

    def _transfer(self, seq: int, body: TransferEntry) -> None:
        ledger, book = self.ledger, self.book
        if (
            book.replacements.get(body.old_card_id, None) is None
            or body.old_card_id not in book.pending
        ):
            raise JournalCorrupt(seq, f"transfer from card {body.old_card_id}, which awaits none")
        if ledger.card(body.old_card_id)[2] != body.amount_fen:
            raise JournalCorrupt(seq, "transfer amount differs from the old card's balance")
        ledger.adjust_balance(body.old_card_id, -body.amount_fen)
        ledger.adjust_balance(body.new_card_id, body.amount_fen)
        blocked_at_ms = ledger.card(body.old_card_id)[4]
        ledger.set_card_state(body.old_card_id, CardState.REPLACED, blocked_at_ms)
        book.transferred(body.old_card_id)
        for card_id in (body.old_card_id, body.new_card_id):
            book.note_op(card_id, seq)
            book.relist(ledger, card_id)

    def _apply_registry(self, seq: int, body: Body) -> None:
        reg, ledger = self.registry, self.ledger
        if isinstance(body, ConfigEntry):
            reg.apply_config(ledger, body, seq)
            self._set_boarding_floor(reg.limit("min_boarding_balance_fen"))
        elif isinstance(body, PartyEntry):
            reg.apply_party(ledger, body.party)
        elif isinstance(body, TerminalEntry):
            reg.apply_terminal(ledger, body.terminal)
        elif isinstance(body, MerchantRuleEntry):
            reg.apply_rule(ledger, body)
        elif isinstance(body, ConcessionEntry):
            reg.apply_concession(ledger, body)
        elif isinstance(body, SeedEntry):
            self._seed(body)
        else:  # pragma: no cover - a new entry type without a case here
            raise AssertionError(f"entry {seq}: no handler for {type(body).__name__}")

    def _set_boarding_floor(self, floor_fen: int) -> None:
        """A new floor changes which cards are LOW_BALANCE: relist them all (rare, cold)."""
        if floor_fen == self.book.min_boarding_balance_fen:
            return
        self.book.min_boarding_balance_fen = floor_fen
        self.ledger.set_min_boarding_balance(floor_fen)
        for card_id in self.ledger.card_ids():
            self.book.relist(self.ledger, card_id)

    def _seed(self, body: SeedEntry) -> None:
        ledger = self.ledger
        below_floor = body.opening_balance_fen < self.book.min_boarding_balance_fen
        for index in range(body.count):
            card_id = body.first_card_id + index
            ledger.issue_card(card_id, seed_card_type(index), 0)
            if body.opening_balance_fen:
                ledger.adjust_balance(card_id, body.opening_balance_fen)
            if below_floor:
                self.book.relist(ledger, card_id)

    # Checkpoints ---------------------------------------------------------------

    def checkpoint_blobs(self) -> tuple[bytes, bytes]:
        """(ledger core snapshot, engine state) of this instant, for a checkpoint."""
        engine_blob = msgspec.msgpack.encode(
            EngineState(
                self.last_seq,
                self.last_accepted_ms,
                self._registry_entries,
                self.answers,
                self.book.state(),
                self.days.state(),
            )
        )
        return self.ledger.snapshot(), engine_blob

    def restore(self, cp: Checkpoint) -> bool:
        """Adopt a checkpoint written by the same core implementation."""
        if cp.implementation != self.ledger.implementation:
            return False
        state = msgspec.msgpack.decode(cp.engine, type=EngineState)
        for seq, body in state.registry_entries:
            self._apply_registry(seq, body)
        self.ledger.restore(cp.ledger)  # after the registry: its state wins
        self._registry_entries = list(state.registry_entries)
        self.answers = state.answers
        self.book.restore(state.book)
        if state.days is not None:
            self.days.restore(state.days)
        self.last_seq, self.last_accepted_ms = state.last_seq, state.last_accepted_ms
        return True


def _check_request(request_id: str, req: CardRequest) -> None:
    """Malformed requests are refused before anything is journaled."""
    if not request_id or len(request_id.encode()) > REQUEST_ID_BYTES_MAX:
        raise RequestRejected(
            Refusal.INVALID_ARGUMENT, f"request_id must be 1..{REQUEST_ID_BYTES_MAX} bytes (a UUID)"
        )
    if req.card_id == 0 or (req.method == "ReplaceCard" and req.args[0] == 0):
        raise RequestRejected(
            Refusal.INVALID_ARGUMENT, "card ids start at 1 (0 means the field is missing)"
        )
    operation = card_operations.OPERATIONS.get(req.method)
    assert operation is not None, f"unknown card method {req.method}"
    assert len(req.args) == operation[1]
    if req.method == "IssueCard" and req.args[0] not in card_operations.CARD_TYPES:
        raise RequestRejected(
            Refusal.INVALID_ARGUMENT, "card_type must be ADULT, STUDENT, ELDERLY or DISABLED"
        )
