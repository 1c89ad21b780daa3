"""Terminal gaps kept as ranges while taps arrive (issue 13: GetTerminalStatus scanned
every tap record, ~40 ms a call at 3.7 M taps): both twins, against a scan, through a
restore, and with numbers up to 2**64 - 1."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clearing.codes import TerminalClass
from clearing.core.ledger import ledger_class
from clearing.core.terminal_gaps import GapSet, gap_ranges
from clearing.limits import TAP_STRUCT, UINT64_MAX

TERMINAL = 7
NOW_MS = 1_800_000_000_000


def _ledger(implementation: str):
    ledger = ledger_class(implementation)()
    ledger.configure(
        max_tap_fen=100_000,
        max_late_ms=86_400_000,
        max_clock_skew_ms=300_000,
        transfer_window_ms=0,
        transfer_discount_fen=0,
        liability_window_ms=0,
        concession_bp=[10_000] * 4,
        terminal_seq_ahead_max=0,  # no bound: any number is received
    )
    ledger.set_terminal(TERMINAL, TerminalClass.VALIDATOR, 0)
    return ledger


@pytest.mark.parametrize("implementation", ["c", "python"])
@settings(max_examples=150, deadline=None)
@given(
    batches=st.lists(
        st.lists(
            st.one_of(st.integers(1, 60), st.sampled_from([UINT64_MAX, UINT64_MAX - 1, 2**63])),
            min_size=1,
            max_size=30,
        ),
        min_size=1,
        max_size=8,
    ),
    restore_after=st.integers(0, 8),
)
def test_the_kept_ranges_are_the_scans(implementation, batches, restore_after):
    ledger = _ledger(implementation)
    for index, seqs in enumerate(batches):
        taps = b"".join(TAP_STRUCT.pack(1, seq, 100, NOW_MS, 1) for seq in seqs)
        ledger.apply_batch(TERMINAL, taps, NOW_MS, index + 1)
        if index == restore_after:
            fresh = _ledger(implementation)
            fresh.restore(ledger.snapshot())
            ledger = fresh
        scanned = gap_ranges(ledger.terminal_seqs(TERMINAL), 10_000)
        assert ledger.terminal_gaps(TERMINAL, 10_000) == scanned
        assert ledger.terminal_gaps(TERMINAL, 2) == scanned[:2]
        highest, received = ledger.terminal_status(TERMINAL)
        assert highest - received == sum(last - first + 1 for first, last in scanned)
    assert ledger.terminal_gaps(12345, 10) == []  # an unknown terminal


def test_a_gap_set_splits_shrinks_and_closes():
    gaps = GapSet()
    gaps.receive(10, 0)  # 1..9 missing
    gaps.receive(5, 10)
    assert gaps.first(5) == [(1, 4), (6, 9)]
    for seq in (1, 4, 9):
        gaps.receive(seq, 10)
    assert gaps.first(5) == [(2, 3), (6, 8)]
    for seq in (2, 3):
        gaps.receive(seq, 10)
    assert gaps.first(5) == [(6, 8)]
    with pytest.raises(AssertionError):
        gaps.receive(5, 10)  # received already: a programmer error, never a second time
