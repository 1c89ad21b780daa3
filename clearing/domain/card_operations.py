"""Card operations at halls and agents (SPEC §6): the rules, no I/O.

Each operation checks its preconditions in a fixed order, and either changes
nothing and returns a rejection status, or applies itself to the ledger and
returns OK. The engine journals both, so a retry answers the same.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from clearing.codes import CardOpStatus, CardState, CardType
from clearing.domain.card_book import CardBook
from clearing.domain.registry import Registry
from clearing.limits import MS_PER_SECOND


class Outcome(NamedTuple):
    status: CardOpStatus
    amount_fen: int  # top-up amount, or cash paid out on close
    message: str
    deposit_fen: int = 0  # cash deposit taken on issue, or the part of the payout on close


OK_OUTCOME = Outcome(CardOpStatus.OK, 0, "")


class CardRequest(NamedTuple):
    method: str
    card_id: int
    args: tuple[int, ...]
    channel: str
    now_ms: int


def masked(card_id: int) -> str:
    """A card number for messages and logs: never the full number."""
    return f"****{card_id % 10_000:04d}"


def _state_name(state: int) -> str:
    return CardState(state).name


def issue_card(ledger, registry: Registry, book: CardBook, req: CardRequest) -> Outcome:
    card_type, deposit_fen = req.args
    if deposit_fen < 0 or deposit_fen > registry.limit("max_topup_fen"):
        return Outcome(CardOpStatus.INVALID_AMOUNT, 0, "deposit_fen must be in 0..max_topup_fen")
    if not ledger.issue_card(req.card_id, card_type, deposit_fen):
        return Outcome(CardOpStatus.CARD_EXISTS, 0, f"card {masked(req.card_id)} already exists")
    return Outcome(CardOpStatus.OK, 0, "", deposit_fen)


def top_up(ledger, registry: Registry, book: CardBook, req: CardRequest) -> Outcome:
    (amount_fen,) = req.args
    card = ledger.card(req.card_id)
    if card is None:
        return _unknown(req.card_id)
    if card[0] != CardState.ACTIVE:
        return _not_active(req.card_id, card[0])
    max_topup = registry.limit("max_topup_fen")
    if not 1 <= amount_fen <= max_topup:
        return Outcome(CardOpStatus.INVALID_AMOUNT, 0, f"amount_fen must be in 1..{max_topup}")
    max_balance = registry.limit("max_balance_fen")
    if card[2] + amount_fen > max_balance:
        return Outcome(
            CardOpStatus.BALANCE_LIMIT,
            0,
            f"balance {card[2]} + {amount_fen} would exceed max_balance_fen {max_balance}",
        )
    ledger.adjust_balance(req.card_id, amount_fen)  # a negative balance is repaid first
    return Outcome(CardOpStatus.OK, amount_fen, "")


def report_loss(ledger, registry: Registry, book: CardBook, req: CardRequest) -> Outcome:
    card = ledger.card(req.card_id)
    if card is None:
        return _unknown(req.card_id)
    if card[0] != CardState.ACTIVE:
        return _not_active(req.card_id, card[0])
    ledger.set_card_state(req.card_id, CardState.LOST, req.now_ms)
    return OK_OUTCOME


def cancel_loss(ledger, registry: Registry, book: CardBook, req: CardRequest) -> Outcome:
    card = ledger.card(req.card_id)
    if card is None:
        return _unknown(req.card_id)
    if req.card_id in book.replacements:
        return _replaced(req.card_id)
    if card[0] != CardState.LOST:
        return Outcome(
            CardOpStatus.CARD_NOT_LOST,
            0,
            f"card {masked(req.card_id)} is {_state_name(card[0])}, not LOST",
        )
    ledger.set_card_state(req.card_id, CardState.ACTIVE, 0)
    return OK_OUTCOME


def replace_card(ledger, registry: Registry, book: CardBook, req: CardRequest) -> Outcome:
    """A new ACTIVE card now; the old balance follows once the hold has passed."""
    (new_card_id,) = req.args
    card = ledger.card(req.card_id)
    if card is None:
        return _unknown(req.card_id)
    if req.card_id in book.replacements:
        return _replaced(req.card_id)
    state, card_type, _, deposit_fen, blocked_at_ms = card
    if state != CardState.LOST:
        return Outcome(
            CardOpStatus.CARD_NOT_LOST,
            0,
            f"card {masked(req.card_id)} is {_state_name(state)}: report it lost first",
        )
    # The deposit travels with the citizen: the new card carries it, no cash changes hands.
    if not ledger.issue_card(new_card_id, card_type, deposit_fen):
        return Outcome(CardOpStatus.CARD_EXISTS, 0, f"card {masked(new_card_id)} already exists")
    hold_ms = registry.rule("transfer_hold_s") * MS_PER_SECOND
    book.replace(req.card_id, new_card_id, blocked_at_ms + hold_ms)
    return OK_OUTCOME


def close_card(ledger, registry: Registry, book: CardBook, req: CardRequest) -> Outcome:
    card = ledger.card(req.card_id)
    if card is None:
        return _unknown(req.card_id)
    state, _, balance_fen, deposit_fen, _ = card
    if state != CardState.ACTIVE:
        return _not_active(req.card_id, state)
    old = book.replaced.get(req.card_id)
    if old is not None and old in book.pending:
        return Outcome(
            CardOpStatus.TRANSFER_PENDING,
            0,
            f"the balance of card {masked(old)} has not moved to this card yet",
        )
    if balance_fen < 0:
        return Outcome(
            CardOpStatus.NEGATIVE_BALANCE,
            0,
            f"card {masked(req.card_id)} owes {-balance_fen} fen: top it up before closing",
        )
    ledger.adjust_balance(req.card_id, -balance_fen)
    ledger.set_card_state(req.card_id, CardState.CLOSED, req.now_ms)
    return Outcome(CardOpStatus.OK, balance_fen + deposit_fen, "", deposit_fen)


def _replaced(card_id: int) -> Outcome:
    return Outcome(CardOpStatus.CARD_ALREADY_REPLACED, 0, f"card {masked(card_id)} was replaced")


def _unknown(card_id: int) -> Outcome:
    return Outcome(CardOpStatus.UNKNOWN_CARD, 0, f"no card {masked(card_id)}")


def _not_active(card_id: int, state: int) -> Outcome:
    return Outcome(
        CardOpStatus.CARD_NOT_ACTIVE,
        0,
        f"card {masked(card_id)} is {_state_name(state)}, not ACTIVE",
    )


Operation = Callable[[object, Registry, CardBook, CardRequest], Outcome]

# method -> (operation, number of args); the journaled method names are these.
OPERATIONS: dict[str, tuple[Operation, int]] = {
    "IssueCard": (issue_card, 2),
    "TopUp": (top_up, 1),
    "ReportLoss": (report_loss, 0),
    "CancelLoss": (cancel_loss, 0),
    "ReplaceCard": (replace_card, 1),
    "CloseCard": (close_card, 0),
}

CARD_TYPES = frozenset(int(t) for t in CardType)
