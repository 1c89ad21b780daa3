"""Reserving room in the ledger core changes no answer."""

from __future__ import annotations

import pytest

from clearing.core.ledger import IMPLEMENTATIONS, ledger_class
from clearing.limits import TAP_STRUCT


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_reserve_changes_no_answer(implementation):
    def run(reserve: bool) -> tuple[bytes, list[int]]:
        ledger = ledger_class(implementation)()
        if reserve:
            ledger.reserve(10_000, 50_000)
        ledger.set_terminal(7, 1, 1)
        for card_id in range(1, 101):
            ledger.issue_card(card_id, 1 + card_id % 4, 0)
            ledger.adjust_balance(card_id, 1_000)
        if reserve:
            ledger.reserve(10, 10)  # a reserve below the size is harmless
        taps = b"".join(
            TAP_STRUCT.pack(1 + i % 120, 1 + i, 200, 1_000_000, i % 3) for i in range(3_000)
        )
        results = ledger.apply_batch(7, taps, 1_000_000, 1)
        return results, [ledger.card(c)[2] for c in range(1, 101)]

    assert run(reserve=True) == run(reserve=False)
