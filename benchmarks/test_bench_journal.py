"""Durable appends of 1,000-tap batches: our Journal vs raw py-lmdb, same disk.

Every appended entry is a real ``TapBatchEntry``: 36,000 bytes of packed taps
from the tap stream and the 40,000 bytes of packed results the compiled core
gave for them.

(b) raw py-lmdb: the same value bytes (each body encoded once, up front, as
    the journal would store it), ``lmdb.open(sync=True, metasync=True,
    writemap=False)``, one ``put(append=True)`` + commit (fsync) per batch: the
    floor of what a durable LMDB append costs on this disk.
(a) our Journal, as the service uses it: ``append()`` from the event loop,
    then ``await`` the future the writer thread resolves after its durable
    commit, one batch at a time (no group commit possible). It also encodes
    the envelope, hashes it into the chain and records the head.
(c) our Journal with 8 concurrent appenders: the writer commits whatever is
    queued in one transaction (group commit).

Target: (a) >= 50 % of (b) in batches/s. All three write into fresh LMDB
environments under the same scratch directory (see ``conftest.scratch_root``).
"""

from __future__ import annotations

import asyncio
import os

import lmdb
import pytest
from conftest import (
    BATCH_TAPS,
    Stopwatch,
    TapStream,
    build_ledger,
    figure,
    filesystem_of,
    report,
    stream_start_ms,
)

from clearing.core.ledger import ledger_class
from clearing.domain import entries
from clearing.domain.entries import Envelope, TapBatchEntry
from clearing.storage.journal import Journal

DISTINCT_BODIES = 100  # real batches, cycled through
ROUNDS = 10
SEQUENTIAL_PER_ROUND = 200  # batches a round, one at a time (~1-2 ms each)
APPENDERS = 8
CONCURRENT_PER_APPENDER = 60  # 480 batches a round
MAP_SIZE = 4 * 2**30  # sparse; the three benchmarks write ~0.5 GB in all
RATIO_TARGET_PCT = 50.0

_results: dict[str, float] = {}


@pytest.fixture(scope="module")
def bodies() -> list[TapBatchEntry]:
    ledger = build_ledger(ledger_class("c"), cards=200_000)
    stream = TapStream(cards=200_000, start_ms=stream_start_ms(), seed=3)
    out = []
    for seq, (terminal_id, packed, now_ms) in enumerate(stream.take(DISTINCT_BODIES), 1):
        results = ledger.apply_batch(terminal_id, packed, now_ms, seq)
        out.append(TapBatchEntry(terminal_id, packed, results))
    assert all(len(b.packed_taps) == 36_000 and len(b.packed_results) == 40_000 for b in out)
    return out


def _raw_value(body: TapBatchEntry, seq: int) -> bytes:
    """The bytes the journal stores for ``body`` (the encoded, chained envelope)."""
    return entries.encode(Envelope(seq, stream_start_ms() + seq, bytes(32), body))


class RawLmdb:
    """The baseline: one durable put + commit per batch, nothing else."""

    def __init__(self, path: str, bodies: list[TapBatchEntry]) -> None:
        self.env = lmdb.open(path, map_size=MAP_SIZE, sync=True, metasync=True, writemap=False)
        self.values = [_raw_value(b, i + 1) for i, b in enumerate(bodies)]
        self.seq = 0

    def append(self, count: int) -> None:
        env, values = self.env, self.values
        for _ in range(count):
            self.seq += 1
            with env.begin(write=True) as txn:
                txn.put(self.seq.to_bytes(8, "big"), values[self.seq % len(values)], append=True)

    def close(self) -> None:
        self.env.close()


class OurJournal:
    """The service's path: append() on the loop, await the durable future."""

    def __init__(self, path: str, bodies: list[TapBatchEntry]) -> None:
        self.loop = asyncio.new_event_loop()
        self.journal = Journal(path, MAP_SIZE)
        self.journal.start_writer(self.loop)
        self.bodies = bodies
        self.commits = 0
        self.journal.on_commit = self._count

    def _count(self, entries_: int, seconds: float, last_seq: int) -> None:
        self.commits += 1

    async def _appender(self, count: int) -> None:
        journal, bodies = self.journal, self.bodies
        for _ in range(count):
            seq = journal.last_seq + 1  # one loop thread: no other append in between
            await journal.append(seq, stream_start_ms() + seq, bodies[seq % len(bodies)])

    def append(self, count: int, appenders: int = 1) -> None:
        async def run() -> None:
            await asyncio.gather(*(self._appender(count) for _ in range(appenders)))

        self.loop.run_until_complete(run())

    def close(self) -> None:
        self.journal.close()
        self.loop.close()


def _measure(benchmark, batches_per_round: int, append) -> Stopwatch:
    append(batches_per_round)  # warm-up: file growth, first pages
    watch = Stopwatch()
    benchmark.pedantic(
        lambda: watch.time(lambda: append(batches_per_round), batches_per_round),
        rounds=ROUNDS,
        iterations=1,
    )
    return watch


def _raw_rate(scratch_dir: str, bodies: list[TapBatchEntry], benchmark=None) -> Stopwatch:
    sink = RawLmdb(os.path.join(scratch_dir, "raw"), bodies)
    try:
        if benchmark is not None:
            watch = _measure(benchmark, SEQUENTIAL_PER_ROUND, sink.append)
        else:  # the raw figure, re-measured for a ratio when its benchmark did not run
            watch = Stopwatch()
            for _ in range(ROUNDS):
                watch.time(lambda: sink.append(SEQUENTIAL_PER_ROUND), SEQUENTIAL_PER_ROUND)
        return watch
    finally:
        sink.close()


def test_journal_b_raw_lmdb(benchmark, bodies, scratch_dir):
    watch = _raw_rate(scratch_dir, bodies, benchmark)
    rate = _results["raw"] = watch.rate
    value_bytes = len(_raw_value(bodies[0], 1))
    report(
        "journal (b) raw py-lmdb, 1 put + fsync'd commit a batch",
        figure("journal", "raw lmdb", rate, "batches/s"),
        figure("journal", "raw lmdb", rate * BATCH_TAPS, "taps/s"),
        note=f"{value_bytes:,}-byte values; {len(watch.units)} x {SEQUENTIAL_PER_ROUND} batches; "
        f"on {filesystem_of(scratch_dir)}",
    )


def test_journal_a_ours_sequential(benchmark, bodies, scratch_dir):
    sink = OurJournal(os.path.join(scratch_dir, "ours"), bodies)
    try:
        watch = _measure(benchmark, SEQUENTIAL_PER_ROUND, sink.append)
    finally:
        sink.close()
    raw = _results.get("raw") or _raw_rate(scratch_dir, bodies).rate
    _results["ours"] = watch.rate
    report(
        "journal (a) ours, append + await, one at a time",
        figure("journal", "ours sequential", watch.rate, "batches/s"),
        figure("journal", "ours sequential", watch.rate * BATCH_TAPS, "taps/s"),
        figure("journal", "ours/raw", 100 * watch.rate / raw, "%", at_least=RATIO_TARGET_PCT),
        note=f"raw lmdb {raw:,.0f} batches/s in the same run; {len(watch.units)} x "
        f"{SEQUENTIAL_PER_ROUND} batches; {sink.commits} commits",
    )


def test_journal_c_ours_concurrent(benchmark, bodies, scratch_dir):
    sink = OurJournal(os.path.join(scratch_dir, "ours8"), bodies)
    per_round = APPENDERS * CONCURRENT_PER_APPENDER
    try:
        watch = _measure(benchmark, per_round, lambda n: sink.append(n // APPENDERS, APPENDERS))
    finally:
        sink.close()
    raw = _results.get("raw") or _raw_rate(scratch_dir, bodies).rate
    figures = [
        figure("journal", f"ours {APPENDERS} appenders", watch.rate, "batches/s"),
        figure("journal", f"ours {APPENDERS} appenders", watch.rate * BATCH_TAPS, "taps/s"),
        figure("journal", f"ours {APPENDERS} appenders/raw", watch.rate / raw, "x"),
    ]
    if "ours" in _results:
        figures.append(
            figure(
                "journal", f"{APPENDERS} appenders/1 appender", watch.rate / _results["ours"], "x"
            )
        )
    total = per_round * (len(watch.units) + 1)  # + the warm-up round
    report(
        f"journal (c) ours, {APPENDERS} concurrent appenders (group commit)",
        *figures,
        note=f"{total:,} batches in {sink.commits} commits "
        f"({total / max(sink.commits, 1):.1f} a commit); raw lmdb {raw:,.0f} batches/s",
    )
