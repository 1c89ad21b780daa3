"""One pass over a business day's journal entries: the day's raw totals.

Memory grows with terminals, parties and kinds of refusal, never with taps:
each tap batch is folded into its terminal's summary vector (``clearing.core.summary``)
as it streams past.
"""

from __future__ import annotations

from collections import Counter
from operator import add

from clearing.codes import CardOpStatus
from clearing.domain.entries import (
    Body,
    CardOpEntry,
    ConfigEntry,
    DayCloseEntry,
    Envelope,
    PartyEntry,
    PartyRecord,
    SeedEntry,
    TapBatchEntry,
    TerminalEntry,
    TerminalRecord,
    TransferEntry,
)
from clearing.errors import SettlementError
from clearing.limits import RESULT_BYTES


class PartyView:
    """Parties and terminal owners as of the entry being read."""

    def __init__(self) -> None:
        self.parties: dict[str, PartyRecord] = {}
        # Terminals are never dropped here: a revoked terminal's taps keep their owner.
        self.terminals: dict[int, TerminalRecord] = {}
        self.config_seq = 0  # the configuration version in force

    def apply(self, seq: int, body: Body) -> None:
        if isinstance(body, ConfigEntry):
            self.config_seq = seq
            self.parties.update((p.party_id, p) for p in body.parties)
            self.terminals.update((t.terminal_id, t) for t in body.terminals)
        elif isinstance(body, PartyEntry):
            self.parties[body.party.party_id] = body.party
        elif isinstance(body, TerminalEntry):
            self.terminals[body.terminal.terminal_id] = body.terminal


class Flow:
    """A count and an amount."""

    __slots__ = ("count", "fen")

    def __init__(self) -> None:
        self.count = 0
        self.fen = 0

    def add(self, count: int, fen: int) -> None:
        self.count += count
        self.fen += fen


class DayBook:
    """Totals of the entries ``first_seq``.. of one day, fed in order."""

    def __init__(
        self,
        view: PartyView,
        first_seq: int,
        summarise,
        window: tuple[int, int],
        utc_offset_ms: int,
    ) -> None:
        self.view = view
        self.window_start_ms, self.window_end_ms = window
        self.first_seq = first_seq
        self.next_seq = first_seq
        self._summarise = summarise
        self._window = (window[0], utc_offset_ms)
        # (terminal_id, owner party, terminal class) -> summary vector
        self.taps: dict[tuple[int, str, str], list[int]] = {}
        self.tap_count = 0
        self.topups: dict[str, Flow] = {}  # channel party -> top-ups (seeded cards included)
        self.deposits_taken = Flow()
        self.deposits_refunded = Flow()
        self.balance_refunds = Flow()
        self.transfers = Flow()
        self.card_ops: Counter[str] = Counter()  # method -> OK count
        self.refused_ops: Counter[tuple[str, str, str]] = Counter()  # (method, status, channel)
        self.kinds: Counter[str] = Counter()  # entry kind -> count
        self.closes: list[DayCloseEntry] = []

    @property
    def last_seq(self) -> int:
        return self.next_seq - 1

    def add(self, env: Envelope) -> None:
        if env.seq != self.next_seq:
            raise SettlementError(f"journal entry {self.next_seq} is missing from the day")
        self.next_seq += 1
        body = env.body
        self.kinds[str(type(body).__struct_config__.tag)] += 1  # every tag is a str
        if isinstance(body, TapBatchEntry):
            self._add_taps(env.seq, body)
        elif isinstance(body, CardOpEntry):
            self._add_card_op(body)
        elif isinstance(body, SeedEntry):
            self._topup(body.hall).add(body.count, body.count * body.opening_balance_fen)
        elif isinstance(body, TransferEntry):
            self.transfers.add(1, body.amount_fen)
        elif isinstance(body, DayCloseEntry):
            self.closes.append(body)
        else:
            self.view.apply(env.seq, body)

    def _add_taps(self, seq: int, body: TapBatchEntry) -> None:
        terminal = self.view.terminals.get(body.terminal_id)
        if terminal is None:
            raise SettlementError(f"journal entry {seq}: taps of unknown terminal")
        vector = self._summarise(body.packed_taps, body.packed_results, seq, *self._window)
        key = (terminal.terminal_id, terminal.party_id, terminal.terminal_class)
        totals = self.taps.get(key)
        self.taps[key] = vector if totals is None else list(map(add, totals, vector))
        self.tap_count += len(body.packed_results) // RESULT_BYTES

    def _add_card_op(self, body: CardOpEntry) -> None:
        if body.status != CardOpStatus.OK:
            self.refused_ops[(body.method, CardOpStatus(body.status).name, body.channel)] += 1
            return
        self.card_ops[body.method] += 1
        if body.method == "TopUp":
            self._topup(body.channel).add(1, body.amount_fen)
        elif body.method == "IssueCard":
            self.deposits_taken.add(1, body.deposit_fen)
        elif body.method == "CloseCard":
            self.deposits_refunded.add(1, body.deposit_fen)
            self.balance_refunds.add(1, body.amount_fen - body.deposit_fen)

    def _topup(self, channel: str) -> Flow:
        flow = self.topups.get(channel)
        if flow is None:
            flow = self.topups[channel] = Flow()
        return flow
