"""The validators' deny list (SPEC §7): versioned, with ordered deltas.

A card that is not ACTIVE is listed with its state; an ACTIVE card below
``min_boarding_balance_fen`` is listed LOW_BALANCE; every other card is not
listed. Each change of one card's listing bumps the version by one. The list
is derived state: the engine updates it as it applies journal entries, so
replay rebuilds it exactly.
"""

from __future__ import annotations

from collections import deque
from itertools import islice
from typing import NamedTuple

import msgspec

from clearing.codes import CardState
from clearing.limits import DENY_LIST_CHANGES_KEPT

LOW_BALANCE = "LOW_BALANCE"
REMOVED = ""  # the reason recorded in a change that takes a card off the list


def listing(card: tuple[int, int, int, int, int] | None, min_boarding_balance_fen: int) -> str:
    """The reason ``card`` is listed, or REMOVED when it is not."""
    if card is None:
        return REMOVED
    state, _, balance_fen, _, _ = card
    if state != CardState.ACTIVE:
        return CardState(state).name
    return LOW_BALANCE if balance_fen < min_boarding_balance_fen else REMOVED


class Change(NamedTuple):
    version: int
    card_id: int
    reason: str  # REMOVED, or the reason the card is now listed


class DenyListState(msgspec.Struct, array_like=True):
    version: int
    listed: dict[int, str]
    changes: list[Change]


class DenyList:
    def __init__(self) -> None:
        self.version = 0
        self.listed: dict[int, str] = {}
        # The newest changes; an older version is answered with the full list.
        self.changes: deque[Change] = deque(maxlen=DENY_LIST_CHANGES_KEPT)

    def update(self, card_id: int, reason: str) -> bool:
        """Record the card's listing now; True when that changed it."""
        if self.listed.get(card_id, REMOVED) == reason:
            return False
        if reason == REMOVED:
            del self.listed[card_id]
        else:
            self.listed[card_id] = reason
        self.version += 1
        self.changes.append(Change(self.version, card_id, reason))
        return True

    def delta_since(self, version: int) -> list[Change] | None:
        """The changes after ``version`` in order, or None when only the full list will do."""
        if version <= 0 or version > self.version:
            return None
        if version == self.version:
            return []
        behind = self.version - version
        if behind > len(self.changes):
            return None  # too far behind: those changes are no longer kept
        return list(islice(reversed(self.changes), behind))[::-1]  # O(behind), not O(kept)

    def state(self) -> DenyListState:
        return DenyListState(self.version, dict(self.listed), list(self.changes))

    def restore(self, state: DenyListState) -> None:
        self.version = state.version
        self.listed = dict(state.listed)
        self.changes = deque(state.changes, maxlen=DENY_LIST_CHANGES_KEPT)
