"""GetTerminalStatus's gap ranges: kept as taps arrive (``terminal_gaps``) vs the scan of
every tap record it replaced (``terminal_seqs`` + ``gaps.gap_ranges``), compiled core.

904 terminals (the reference city's count) with 4,100 numbers each and about one in
a thousand missing: 3.7 M tap records, the size at which the scan was measured at
~40 ms a call on the event loop (issue 13).
"""

from __future__ import annotations

import random

import pytest
from conftest import Stopwatch, figure, report

from clearing.codes import TerminalClass
from clearing.core.ledger import ledger_class
from clearing.core.terminal_gaps import gap_ranges
from clearing.limits import GAP_RANGES_MAX, TAP_STRUCT

TERMINALS = 904
NUMBERS_PER_TERMINAL = 4_100
NOW_MS = 1_800_000_000_000
_seconds: dict[str, float] = {}


@pytest.fixture(scope="module")
def ledger():
    ledger = ledger_class("c")()
    ledger.reserve(10, TERMINALS * NUMBERS_PER_TERMINAL)
    rng = random.Random(1)
    for terminal in range(1, TERMINALS + 1):
        ledger.set_terminal(terminal, TerminalClass.VALIDATOR, 0)
        seqs = [s for s in range(1, NUMBERS_PER_TERMINAL + 1) if rng.random() > 0.001]
        taps = b"".join(TAP_STRUCT.pack(1, seq, 100, NOW_MS, 1) for seq in seqs)
        for start in range(0, len(taps), 36_000):
            ledger.apply_batch(terminal, taps[start : start + 36_000], NOW_MS, 1)
    return ledger


def test_scan_of_the_records(benchmark, ledger):
    watch = Stopwatch()
    benchmark.pedantic(
        lambda: watch.time(lambda: gap_ranges(ledger.terminal_seqs(1), GAP_RANGES_MAX + 1)),
        rounds=10,
    )
    _seconds["scan"] = watch.median_seconds
    records = ledger.tap_record_count()
    report(
        "terminal gaps",
        figure("terminal gaps", f"scan, {records} records", watch.median_seconds * 1e3, "ms"),
    )


def test_kept_ranges(benchmark, ledger):
    watch = Stopwatch()
    benchmark.pedantic(
        lambda: watch.time(lambda: ledger.terminal_gaps(1, GAP_RANGES_MAX + 1)), rounds=1_000
    )
    figures = [figure("terminal gaps", "kept ranges", watch.median_seconds * 1e6, "us")]
    if "scan" in _seconds:
        figures.append(
            figure("terminal gaps", "scan/kept", _seconds["scan"] / watch.median_seconds, "x")
        )
    report("terminal gaps", *figures)
