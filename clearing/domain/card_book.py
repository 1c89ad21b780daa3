"""Card lifecycle state beside the ledger core: replacements, transfers, deny list, history.

The core keeps balances and card states; this book keeps what only card
operations touch. Like everything else it is derived from the journal.
"""

from __future__ import annotations

import msgspec

from clearing.domain.deny_list import DenyList, DenyListState, listing


class Replacement(msgspec.Struct, array_like=True, frozen=True):
    new_card_id: int
    due_at_ms: int  # the balance moves once the server clock passes this


class CardBookState(msgspec.Struct, array_like=True):
    replacements: dict[int, Replacement]
    pending: list[int]
    replaced: dict[int, int]
    op_seqs: dict[int, list[int]]
    deny: DenyListState
    min_boarding_balance_fen: int


class CardBook:
    def __init__(self) -> None:
        self.replacements: dict[int, Replacement] = {}  # old card -> its replacement
        self.pending: set[int] = set()  # old cards whose balance has not moved yet
        self.replaced: dict[int, int] = {}  # new card -> the old card it replaced
        self.op_seqs: dict[int, list[int]] = {}  # card -> journal seqs of its card operations
        self.deny = DenyList()
        self.min_boarding_balance_fen = 0

    def note_op(self, card_id: int, seq: int) -> None:
        self.op_seqs.setdefault(card_id, []).append(seq)

    def relist(self, ledger, card_id: int) -> None:
        """Bring the card's deny-list entry in line with its state and balance."""
        self.deny.update(card_id, listing(ledger.card(card_id), self.min_boarding_balance_fen))

    def replace(self, old_card_id: int, new_card_id: int, due_at_ms: int) -> None:
        self.replacements[old_card_id] = Replacement(new_card_id, due_at_ms)
        self.pending.add(old_card_id)
        self.replaced[new_card_id] = old_card_id

    def transferred(self, old_card_id: int) -> None:
        self.pending.remove(old_card_id)

    def due_transfers(self, now_ms: int) -> list[tuple[int, int]]:
        """(old, new) of every replacement whose hold ended by ``now_ms``, oldest first."""
        due = sorted(
            (r.due_at_ms, old, r.new_card_id)
            for old in self.pending
            if (r := self.replacements[old]).due_at_ms <= now_ms
        )
        return [(old, new) for _, old, new in due]

    def next_due_ms(self) -> int | None:
        """When the earliest pending transfer falls due."""
        return min((self.replacements[old].due_at_ms for old in self.pending), default=None)

    def state(self) -> CardBookState:
        return CardBookState(
            self.replacements, sorted(self.pending), self.replaced, self.op_seqs, self.deny.state(),
            self.min_boarding_balance_fen,
        )  # fmt: skip

    def restore(self, state: CardBookState) -> None:
        self.replacements = dict(state.replacements)
        self.pending = set(state.pending)
        self.replaced = dict(state.replaced)
        self.op_seqs = {card: list(seqs) for card, seqs in state.op_seqs.items()}
        self.deny.restore(state.deny)
        self.min_boarding_balance_fen = state.min_boarding_balance_fen
