"""Plain-Python reference twin of the compiled ledger core (``clearing.core._ledger``).

It is the executable statement of SPEC §4–§5: slow, obvious, and the oracle the
Hypothesis tests compare the Cython core against tap for tap. Both classes
expose exactly the same methods (see ``clearing/core/_ledger.pyi``).

The core does no I/O and knows nothing of the journal or the network: it keeps
cards, terminals, merchant rules and the per-terminal deduplication records,
and rates and applies whole batches of packed taps (``limits.TAP_STRUCT``)
into packed results (``limits.RESULT_STRUCT``).
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence

from clearing.codes import CardState, ChargedTo, TapStatus, TerminalClass
from clearing.core.money import checked_int64, half_up
from clearing.core.terminal_gaps import GapSet
from clearing.limits import (
    BP_SCALE,
    RESULT_BYTES,
    RESULT_STRUCT,
    TAP_BYTES,
    TAP_STRUCT,
    TERMINAL_SEQ_AHEAD_MAX,
)

IMPLEMENTATION = "python"
_Tap = tuple[int, int, int, int, int]  # card_id, terminal_seq, amount, occurred_at, route
_Result = tuple[int, int, int, int, int, int, int]  # as limits.RESULT_STRUCT
_NO_RULE_BP = BP_SCALE  # a merchant without a rule gives no discount


class _Card:
    __slots__ = (
        "balance_fen",
        "blocked_at_ms",
        "card_type",
        "deposit_fen",
        "has_last_ride",
        "last_occurred_at_ms",
        "last_route_id",
        "state",
    )

    def __init__(self, card_type: int, deposit_fen: int) -> None:
        self.state = int(CardState.ACTIVE)
        self.card_type = card_type
        self.balance_fen = 0
        self.deposit_fen = deposit_fen
        self.blocked_at_ms = 0
        self.last_route_id = 0
        self.last_occurred_at_ms = 0
        self.has_last_ride = False


# What ``configure`` sets: a snapshot carries it, as the compiled core's does.
_SETTINGS = (
    "_max_tap_fen", "_max_late_ms", "_max_clock_skew_ms", "_transfer_window_ms",
    "_transfer_discount_fen", "_liability_window_ms", "_concession_bp", "_seq_ahead_max",
)  # fmt: skip


class Ledger:
    """In-memory ledger state and the batch rating engine (reference version).

    Its snapshot is a pickle of plain data (no class of this package, so a renamed
    module still restores it) holding the same state as the compiled core's raw memory:
    cards, tap records, terminals, merchant rules, card histories, the boarding
    minimum and the ``configure`` settings; like it, bytes are deterministic (a
    restored twin snapshots to the same bytes). The two formats differ and do not
    cross: a checkpoint records which implementation wrote it."""

    implementation = IMPLEMENTATION

    def __init__(self) -> None:
        self._cards: dict[int, _Card] = {}
        # (terminal_id, terminal_seq) -> (card_id, list_amount_fen, occurred_at_ms,
        #   route_id, status, charged_to, charged_fen, balance_after_fen, journal_seq)
        self._taps: dict[tuple[int, int], tuple[int, ...]] = {}
        # terminal_id -> [terminal_class, party_index, highest_seq, received_count]
        self._terminals: dict[int, list[int]] = {}
        self._gaps: dict[int, GapSet] = {}  # terminal_id -> numbers below its highest missing
        # party_index -> [(effective_from_ms, discount_bp)] sorted by time
        self._rules: dict[int, list[tuple[int, int]]] = {}
        # card_id -> keys of its tap records, oldest first (dispute history)
        self._card_taps: dict[int, list[tuple[int, int]]] = {}
        self._min_boarding_balance_fen = 0
        self._crossings: list[int] = []  # cards that fell below it since the last take
        self.configure(
            max_tap_fen=100_000,
            max_late_ms=7 * 86_400_000,
            max_clock_skew_ms=300_000,
            transfer_window_ms=5_400_000,
            transfer_discount_fen=100,
            liability_window_ms=21_600_000,
            concession_bp=(10_000, 5_000, 0, 0),
        )

    # Configuration ---------------------------------------------------------------

    def configure(
        self,
        *,
        max_tap_fen: int,
        max_late_ms: int,
        max_clock_skew_ms: int,
        transfer_window_ms: int,
        transfer_discount_fen: int,
        liability_window_ms: int,
        concession_bp: Sequence[int],
        terminal_seq_ahead_max: int = TERMINAL_SEQ_AHEAD_MAX,
    ) -> None:
        assert len(concession_bp) == 4, "one concession per card type ADULT..DISABLED"
        self._max_tap_fen = max_tap_fen
        self._max_late_ms = max_late_ms
        self._max_clock_skew_ms = max_clock_skew_ms
        self._transfer_window_ms = transfer_window_ms
        self._transfer_discount_fen = transfer_discount_fen
        self._liability_window_ms = liability_window_ms
        self._concession_bp = (0, *concession_bp)  # indexed by CardType
        self._seq_ahead_max = terminal_seq_ahead_max  # 0: no bound (journals before it)

    def set_min_boarding_balance(self, min_boarding_balance_fen: int) -> None:
        """Cards charged below this are reported by take_low_balance_crossings()."""
        self._min_boarding_balance_fen = min_boarding_balance_fen

    def take_low_balance_crossings(self) -> list[int]:
        """Card ids whose balance fell below the boarding minimum through a tap, in order."""
        crossings, self._crossings = self._crossings, []
        return crossings

    def set_terminal(self, terminal_id: int, terminal_class: int, party_index: int) -> None:
        assert terminal_class in (1, 2, 3)
        entry = self._terminals.get(terminal_id)
        if entry is None:
            self._terminals[terminal_id] = [terminal_class, party_index, 0, 0]
        else:
            entry[0], entry[1] = terminal_class, party_index

    def add_merchant_rule(self, party_index: int, effective_from_ms: int, discount_bp: int) -> None:
        rules = [r for r in self._rules.get(party_index, []) if r[0] != effective_from_ms]
        rules.append((effective_from_ms, discount_bp))
        rules.sort()
        self._rules[party_index] = rules

    # Cards ---------------------------------------------------------------

    def issue_card(self, card_id: int, card_type: int, deposit_fen: int) -> bool:
        """Create an ACTIVE card with balance 0; False if the id exists."""
        assert card_type in (1, 2, 3, 4)
        if card_id in self._cards:
            return False
        self._cards[card_id] = _Card(card_type, deposit_fen)
        return True

    def card(self, card_id: int) -> tuple[int, int, int, int, int] | None:
        """(state, card_type, balance_fen, deposit_fen, blocked_at_ms) or None."""
        c = self._cards.get(card_id)
        if c is None:
            return None
        return (c.state, c.card_type, c.balance_fen, c.deposit_fen, c.blocked_at_ms)

    def adjust_balance(self, card_id: int, delta_fen: int) -> int:
        c = self._cards[card_id]
        c.balance_fen = checked_int64(c.balance_fen + delta_fen)
        return c.balance_fen

    def set_card_state(self, card_id: int, state: int, blocked_at_ms: int) -> None:
        c = self._cards[card_id]
        c.state = state
        c.blocked_at_ms = blocked_at_ms

    def reserve(self, cards: int, taps: int) -> None:
        """Room for this many cards and taps (the compiled core allocates; dicts grow)."""

    def card_ids(self) -> list[int]:
        """Every card id, in issue order (cold path: relisting after a rule change)."""
        return list(self._cards)

    def card_count(self) -> int:
        return len(self._cards)

    def total_balance_fen(self) -> int:
        return checked_int64(sum(c.balance_fen for c in self._cards.values()))

    # Terminals ---------------------------------------------------------------

    def terminal_status(self, terminal_id: int) -> tuple[int, int]:
        """(highest terminal_seq received, count of distinct seqs received)."""
        t = self._terminals[terminal_id]
        return t[2], t[3]

    def terminal_seqs(self, terminal_id: int) -> list[int]:
        """Every distinct terminal_seq received, ascending (cold path: gaps)."""
        far = TapStatus.SEQUENCE_TOO_FAR_AHEAD  # on record for its retries, not received
        return sorted(k[1] for k, r in self._taps.items() if k[0] == terminal_id and r[4] != far)

    def terminal_gaps(self, terminal_id: int, most: int) -> list[tuple[int, int]]:
        """The first ``most`` ranges of numbers below the highest never received."""
        gaps = self._gaps.get(terminal_id)
        return gaps.first(most) if gaps is not None else []

    def tap_record_count(self) -> int:
        return len(self._taps)

    def card_taps(self, card_id: int, limit: int) -> list[tuple[int, ...]]:
        """The card's newest ``limit`` tap records, newest first: (journal_seq, terminal_id,
        terminal_seq, list_amount_fen, occurred_at_ms, status, charged_to, charged_fen,
        balance_after_fen)."""
        keys = self._card_taps.get(card_id, [])[::-1][:limit]
        out: list[tuple[int, ...]] = []
        for key in keys:
            _, amount, occurred, _, status, charged_to, charged, balance, jseq = self._taps[key]
            out.append((jseq, *key, amount, occurred, status, charged_to, charged, balance))
        return out

    # Taps ---------------------------------------------------------------

    @staticmethod
    def first_invalid_tap(packed_taps: bytes) -> int:
        """Index of the first tap with terminal_seq 0 (malformed), else -1."""
        assert len(packed_taps) % TAP_BYTES == 0
        for index, tap in enumerate(TAP_STRUCT.iter_unpack(packed_taps)):
            if tap[1] == 0:
                return index
        return -1

    def repeated_results(self, terminal_id: int, packed_taps: bytes) -> bytes | None:
        """The packed results when every tap repeats a recorded one with the same body
        (a replayed batch: nothing to apply or journal), else None."""
        if terminal_id not in self._terminals or not packed_taps or len(packed_taps) % TAP_BYTES:
            return None
        out = bytearray(len(packed_taps) // TAP_BYTES * RESULT_BYTES)
        for index, (card_id, seq, amount, occurred, route) in enumerate(
            TAP_STRUCT.iter_unpack(packed_taps)
        ):
            seen = self._taps.get((terminal_id, seq))
            if seen is None or seen[:4] != (card_id, amount, occurred, route):
                return None
            result = self._repeat(seen, (card_id, amount, occurred, route), 0)
            RESULT_STRUCT.pack_into(out, index * RESULT_BYTES, *result)
        return bytes(out)

    def apply_batch(
        self, terminal_id: int, packed_taps: bytes, now_ms: int, journal_seq: int
    ) -> bytes:
        """Rate and apply every tap in order; return the packed results."""
        assert len(packed_taps) % TAP_BYTES == 0
        out = bytearray(len(packed_taps) // TAP_BYTES * RESULT_BYTES)
        for index, tap in enumerate(TAP_STRUCT.iter_unpack(packed_taps)):
            result = self._apply_tap(terminal_id, tap, now_ms, journal_seq)
            RESULT_STRUCT.pack_into(out, index * RESULT_BYTES, *result)
        return bytes(out)

    def _apply_tap(self, terminal_id: int, tap: _Tap, now_ms: int, journal_seq: int) -> _Result:
        terminal = self._terminals[terminal_id]
        card_id, seq, amount, occurred, route = tap
        assert seq >= 1, "first_invalid_tap() screens terminal_seq 0"
        key = (terminal_id, seq)
        seen = self._taps.get(key)
        if seen is not None:
            return self._repeat(seen, (card_id, amount, occurred, route), journal_seq)
        # Rate first: a tap that raises (overflow) must leave nothing of itself behind.
        status, charged_to, charged = self._rate(terminal, tap, now_ms)
        if status != TapStatus.SEQUENCE_TOO_FAR_AHEAD:  # that one is on record, not received
            self._gaps.setdefault(terminal_id, GapSet()).receive(seq, terminal[2])
            terminal[2] = max(terminal[2], seq)
            terminal[3] += 1
        card = self._cards.get(card_id)
        balance_after = card.balance_fen if card is not None else 0
        if card is not None:
            self._card_taps.setdefault(card_id, []).append(key)
        record = (card_id, amount, occurred, route, status, charged_to, charged, balance_after)
        self._taps[key] = (*record, journal_seq)
        discount = amount - charged if status == TapStatus.OK else 0
        return (status, charged_to, 0, charged, discount, balance_after, journal_seq)

    def _repeat(self, seen: tuple[int, ...], body: tuple[int, ...], journal_seq: int) -> _Result:
        """The recorded answer to a repeat of the same ``body`` (card, amount, time, route)."""
        card_id = body[0]
        if seen[:4] == body:
            status, charged_to, charged, balance_after, original_seq = seen[4:]
            discount = seen[1] - charged if status == TapStatus.OK else 0
            return (status, charged_to, 1, charged, discount, balance_after, original_seq)
        card = self._cards.get(card_id)
        balance = card.balance_fen if card is not None else 0
        # An ID_CONFLICT is journaled but never replaces the original record.
        return (TapStatus.ID_CONFLICT, 0, 0, 0, 0, balance, journal_seq)

    def _rate(self, terminal: list[int], tap: _Tap, now_ms: int) -> tuple[int, int, int]:
        """(status, charged_to, charged_fen), applying an OK tap to the card."""
        card_id, seq, amount, occurred, route = tap
        terminal_class = terminal[0]
        if self._seq_ahead_max and seq - terminal[2] > self._seq_ahead_max:  # body unread
            return TapStatus.SEQUENCE_TOO_FAR_AHEAD, ChargedTo.CHARGED_TO_NONE, 0
        if amount <= 0 or amount > self._max_tap_fen:
            return TapStatus.INVALID_AMOUNT, ChargedTo.CHARGED_TO_NONE, 0
        if occurred < now_ms - self._max_late_ms:
            return TapStatus.TOO_LATE, ChargedTo.CHARGED_TO_NONE, 0
        if occurred > now_ms + self._max_clock_skew_ms:
            return TapStatus.IN_FUTURE, ChargedTo.CHARGED_TO_NONE, 0
        card = self._cards.get(card_id)
        if card is None:
            return TapStatus.UNKNOWN_CARD, ChargedTo.CHARGED_TO_NONE, 0
        if terminal_class == TerminalClass.VALIDATOR:
            return self._ride(card_id, card, amount, occurred, route)
        if card.state != CardState.ACTIVE:
            return TapStatus.CARD_BLOCKED, ChargedTo.CHARGED_TO_NONE, 0
        if terminal_class == TerminalClass.POS:
            charged = half_up(amount, self._discount_bp(terminal[1], occurred))
        else:
            charged = amount
        if charged > card.balance_fen:
            return TapStatus.INSUFFICIENT_FUNDS, ChargedTo.CHARGED_TO_NONE, 0
        self._charge(card_id, card, charged)
        return TapStatus.OK, ChargedTo.CARD, charged

    def _charge(self, card_id: int, card: _Card, charged: int) -> None:
        before = card.balance_fen
        card.balance_fen = checked_int64(before - charged)
        floor = self._min_boarding_balance_fen
        if before >= floor > card.balance_fen:
            self._crossings.append(card_id)

    def _ride(
        self, card_id: int, card: _Card, amount: int, occurred: int, route: int
    ) -> tuple[int, int, int]:
        """A validator records a ride that happened: always OK (SPEC §5 rule 8)."""
        charged = half_up(amount, self._concession_bp[card.card_type])
        if card.has_last_ride and card.last_route_id != route:
            gap_ms = checked_int64(occurred - card.last_occurred_at_ms)
            if 0 <= gap_ms <= self._transfer_window_ms:
                charged = max(0, checked_int64(charged - self._transfer_discount_fen))
        to_card = card.state == CardState.ACTIVE or (
            card.state == CardState.LOST
            and occurred < checked_int64(card.blocked_at_ms + self._liability_window_ms)
        )
        if to_card:
            checked_int64(card.balance_fen - charged)  # raise before anything changes
        card.has_last_ride = True
        card.last_route_id = route
        card.last_occurred_at_ms = occurred
        if to_card:
            self._charge(card_id, card, charged)
            return TapStatus.OK, ChargedTo.CARD, charged
        return TapStatus.OK, ChargedTo.ISSUER_LOSS, charged

    def _discount_bp(self, party_index: int, occurred: int) -> int:
        """The merchant's rule in force at ``occurred`` (effective-dated)."""
        bp = _NO_RULE_BP
        for effective_from_ms, discount_bp in self._rules.get(party_index, ()):
            if effective_from_ms > occurred:
                break
            bp = discount_bp
        return bp

    @staticmethod
    def count_statuses(packed_results: bytes) -> list[int]:
        """Index 0: duplicates; index s: fresh results with status s."""
        counts = [0] * (max(TapStatus) + 1)
        for status, _, duplicate, *_ in RESULT_STRUCT.iter_unpack(packed_results):
            counts[0 if duplicate else status] += 1
        return counts

    # Checkpoints ---------------------------------------------------------------

    def snapshot(self) -> bytes:
        cards = {
            cid: tuple(getattr(c, name) for name in _Card.__slots__)
            for cid, c in self._cards.items()
        }
        state = (
            cards,
            self._taps,
            self._terminals,
            self._rules,
            self._card_taps,
            self._min_boarding_balance_fen,
            {name: getattr(self, name) for name in _SETTINGS if hasattr(self, name)},
        )
        return pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)

    def restore(self, blob: bytes) -> None:
        cards, self._taps, self._terminals, self._rules, self._card_taps, floor, settings = (
            pickle.loads(blob)
        )
        self._min_boarding_balance_fen = floor
        for name, value in settings.items():
            setattr(self, name, value)
        self._cards = {}
        for cid, fields in cards.items():
            c = _Card(0, 0)
            for name, value in zip(_Card.__slots__, fields, strict=True):
                setattr(c, name, value)
            self._cards[cid] = c
        self._gaps = {tid: GapSet.of(self.terminal_seqs(tid)) for tid in self._terminals}
