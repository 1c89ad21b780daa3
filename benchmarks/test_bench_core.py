"""Ledger core throughput: ``Ledger.apply_batch`` of the compiled core vs its Python twin.

Both ledgers have the same state shape (``conftest.build_ledger``): the demo
city's 904 terminals and merchant rules, 1,000,000 funded cards in the city's
card-type shares. Batches are pre-generated (``conftest.TapStream``: 1,000
taps from one terminal, 90 % of taps from validators); only the
``apply_batch`` calls are timed.

Rounds: every round applies its OWN fresh batches (new terminal seqs), so no
tap is a duplicate and each round does the full work of rating and recording
new taps (rebuilding a 1M-card ledger per round would cost more than the
round). The deduplication table therefore grows from round to round, as it
does in production, and the C core pays for that growth inside
``apply_batch``: a rehash of every record when the tap index passes a power
of two (~0.2 s at 4.2M records), and a first-touch page fault for every new
2 MiB of tap records (one batch in ~33; ~5 ms each on this VM, whose host
backs guest memory lazily). The headline figure is all taps over all
measured time, so that growth is amortised into it, not hidden; the median
batch shows the rating loop alone.

Targets: the compiled core >= 3,000,000 taps/s, and >= 20x the Python twin.
"""

from __future__ import annotations

import itertools
import time

from conftest import (
    BATCH_TAPS,
    CORE_CARDS,
    Stopwatch,
    TapStream,
    build_ledger,
    figure,
    report,
    stream_start_ms,
)

from clearing.core.ledger import ledger_class

C_WARMUP_BATCHES = 500  # untimed: the first half million taps of "history"
C_ROUNDS = 10
C_BATCHES_PER_ROUND = 500  # 500,000 taps a round, ~0.2 s
PY_ROUNDS = 6
PY_BATCHES_PER_ROUND = 25  # 25,000 taps a round, ~0.15 s (the twin is ~20-40x slower)

C_TARGET_TAPS_PER_S = 3_000_000
RATIO_TARGET = 20.0

# Figures shared by the two benchmarks of this module (C taps/s and its table size).
_results: dict[str, float] = {}


def _apply_all(ledger, batches, seqs, outputs: list[bytes] | None = None) -> None:
    apply = ledger.apply_batch
    keep = outputs.append if outputs is not None else None
    for terminal_id, packed, now_ms in batches:
        out = apply(terminal_id, packed, now_ms, next(seqs))
        if keep is not None:
            keep(out)


def _apply_timed(ledger, batches, seqs, batch_seconds: list[float]) -> None:
    """``_apply_all`` with each call timed too (perf_counter costs ~0.1 us a batch)."""
    apply, clock, keep = ledger.apply_batch, time.perf_counter, batch_seconds.append
    for terminal_id, packed, now_ms in batches:
        started = clock()
        apply(terminal_id, packed, now_ms, next(seqs))
        keep(clock() - started)


def _run_rounds(benchmark, ledger, slices, seqs, outputs=None, batch_seconds=None) -> Stopwatch:
    """One timed round per slice of fresh, pre-generated batches."""
    pending = iter(slices)
    watch = Stopwatch()

    def setup():
        return (next(pending),), {}

    def target(batches):
        if batch_seconds is not None:
            run = lambda: _apply_timed(ledger, batches, seqs, batch_seconds)  # noqa: E731
        else:
            run = lambda: _apply_all(ledger, batches, seqs, outputs)  # noqa: E731
        watch.time(run, len(batches) * BATCH_TAPS)

    benchmark.pedantic(target, setup=setup, rounds=len(slices), iterations=1)
    return watch


def test_core_apply_batch_c(benchmark):
    ledger = build_ledger(ledger_class("c"))
    stream = TapStream(cards=CORE_CARDS, start_ms=stream_start_ms(), seed=1)
    seqs = itertools.count(1)  # journal_seq: one a batch, increasing
    _apply_all(ledger, stream.take(C_WARMUP_BATCHES), seqs)
    slices = [stream.take(C_BATCHES_PER_ROUND) for _ in range(C_ROUNDS)]
    batch_seconds: list[float] = []
    watch = _run_rounds(benchmark, ledger, slices, seqs, batch_seconds=batch_seconds)
    _results["c"] = watch.rate
    _results["c_records"] = ledger.tap_record_count()
    batch_seconds.sort()
    median = batch_seconds[len(batch_seconds) // 2]
    slow = sum(1 for s in batch_seconds if s > 10 * median)
    report(
        "core apply_batch C",
        figure("core", "C, tables growing", watch.rate, "taps/s"),
        figure("core", "C best round", watch.best_rate, "taps/s"),
        figure("core", "C median batch", BATCH_TAPS / median, "taps/s"),
        note=f"{sum(watch.units):,} fresh taps in {len(watch.units)} rounds after "
        f"{C_WARMUP_BATCHES * BATCH_TAPS:,} warm-up taps; {CORE_CARDS:,} cards; "
        f"{ledger.tap_record_count():,} tap records at the end; {slow} of "
        f"{len(batch_seconds)} batches took > 10x the median ({batch_seconds[-1] * 1e3:.1f} ms "
        "max): table growth, see the module docstring",
    )


def test_core_apply_batch_c_reserved(benchmark):
    """The same work on a ledger that reserved its tables at start ([server] reserve_taps).

    Static allocation moves the kernel's first-touch page zeroing (about half of
    the growing figure on this VM) to start-up, where a production server pays
    it once; this is the figure the target is about.
    """
    ledger = build_ledger(ledger_class("c"))
    total_taps = (C_WARMUP_BATCHES + C_ROUNDS * C_BATCHES_PER_ROUND) * BATCH_TAPS
    started = time.perf_counter()
    ledger.reserve(CORE_CARDS, total_taps)
    reserve_seconds = time.perf_counter() - started
    stream = TapStream(cards=CORE_CARDS, start_ms=stream_start_ms(), seed=1)
    seqs = itertools.count(1)
    _apply_all(ledger, stream.take(C_WARMUP_BATCHES), seqs)
    slices = [stream.take(C_BATCHES_PER_ROUND) for _ in range(C_ROUNDS)]
    watch = _run_rounds(benchmark, ledger, slices, seqs)
    _results["c_reserved"] = watch.rate
    report(
        "core apply_batch C, tables reserved",
        figure("core", "C", watch.rate, "taps/s", at_least=C_TARGET_TAPS_PER_S),
        figure("core", "C best round, reserved", watch.best_rate, "taps/s"),
        figure("core", "reserve at start", reserve_seconds, "s"),
        note=f"reserve({CORE_CARDS:,} cards, {total_taps:,} taps) before the run, untimed; "
        "then the same warm-up and rounds as the growing figure",
    )


def test_core_apply_batch_python(benchmark):
    py_ledger = build_ledger(ledger_class("python"))
    stream = TapStream(cards=CORE_CARDS, start_ms=stream_start_ms(), seed=2)
    warmup = stream.take(PY_BATCHES_PER_ROUND)
    slices = [stream.take(PY_BATCHES_PER_ROUND) for _ in range(PY_ROUNDS)]
    py_out: list[bytes] = []
    seqs = itertools.count(1)
    _apply_all(py_ledger, warmup, seqs, py_out)
    watch = _run_rounds(benchmark, py_ledger, slices, seqs, py_out)
    del py_ledger

    # Side by side on identical work: the compiled core, on a fresh ledger of
    # the same shape, applies the very batches the twin applied; it must answer
    # byte for byte the same, and is timed too.
    c_ledger = build_ledger(ledger_class("c"))
    c_out: list[bytes] = []
    c_seqs = itertools.count(1)
    _apply_all(c_ledger, warmup, c_seqs, c_out)
    c_watch = Stopwatch()
    for batches in slices[: len(watch.units)]:  # timed like the twin's rounds, same warm-up
        c_watch.time(
            lambda b=batches: _apply_all(c_ledger, b, c_seqs, c_out), len(batches) * BATCH_TAPS
        )
    assert c_out == py_out, "the compiled core and its twin disagree"

    figures = [
        figure("core", "Python", watch.rate, "taps/s"),
        figure("core", "C, same batches", c_watch.rate, "taps/s"),
        figure(
            "core", "C/Python, same batches", c_watch.rate / watch.rate, "x", at_least=RATIO_TARGET
        ),
    ]
    if "c_reserved" in _results:  # the headline C figure of the benchmark above, same run
        figures.append(
            figure("core", "C (reserved)/Python", _results["c_reserved"] / watch.rate, "x")
        )
    if "c" in _results:  # the big-table C figure of the benchmark above, same run
        records = f"{_results['c_records'] / 1e6:.1f}M"
        figures.append(
            figure("core", f"C ({records}-record table)/Python", _results["c"] / watch.rate, "x")
        )
    report(
        "core apply_batch Python twin",
        *figures,
        note=f"{sum(watch.units):,} timed taps in {len(watch.units)} rounds after "
        f"{len(warmup) * BATCH_TAPS:,} warm-up taps; C applied the same batches to a fresh "
        "ledger of the same shape, timed the same way: byte-identical results",
    )
