"""Shared helpers of the benchmarks: a realistic city, a realistic tap stream, figures.

`make bench` runs ``pytest benchmarks --benchmark-only -s``. Every benchmark
prints one ``[bench]`` line of figures (absolute throughput plus a ratio
measured side by side in the same run) and records them in ``FIGURES``; the
terminal summary repeats them all as one table at the end of the session.

The city is the demo city's shape (``clearing.tools.demo_city``): 300 validators of 3
bus operators, 600 POS of 600 merchants with their discount rules, 4 billing
terminals of the utilities. The tap stream is 90 % validator, 9 % POS and 1 %
billing taps, counted in taps: every batch is 1,000 taps from ONE terminal (the
API is per terminal), and the batch's terminal class follows a fixed schedule
in which 90 of every 100 batches come from validators, 9 from POS and 1 from a
billing terminal, spread evenly so that any prefix of the stream has that mix.
"""

from __future__ import annotations

import functools
import logging
import os
import random
import shutil
import struct
import tempfile
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import structlog

from clearing.domain.engine import seed_card_type
from clearing.domain.entries import MerchantRuleEntry
from clearing.domain.registry import Registry
from clearing.limits import MS_PER_DAY
from clearing.runtime.config import SeedSettings
from clearing.runtime.config_entry import config_entry
from clearing.tools import demo_city

# The figures are the output: keep the servers' info logs ("serving", "stopped") out of it.
structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))

BATCH_TAPS = 1_000
FIRST_CARD_ID = SeedSettings().first_card_id  # the demo city's card numbers
CORE_CARDS = 1_000_000
FUNDED_BALANCE_FEN = 1_000_000  # POS and billing taps (<= 30,000 fen) rarely decline
DEPOSIT_FEN = 2_000

VALIDATOR_IDS = tuple(
    tid for i in range(len(demo_city.OPERATORS)) for tid in demo_city.validator_ids(i)
)
POS_IDS = tuple(demo_city.POS_ID_BASE + n for n in range(1, demo_city.MERCHANT_COUNT + 1))
BILLING_IDS = tuple(demo_city.BILLING_ID_BASE + 1 + i for i in range(len(demo_city.UTILITIES)))
assert (len(VALIDATOR_IDS), len(POS_IDS), len(BILLING_IDS)) == (300, 600, 4)

ROUTES = tuple(range(1, 25))  # a small pool, so a card's next ride is often a transfer
BUS_LIST_FEN = 200
POS_FEN = range(500, 20_001)
BILL_FEN = range(2_000, 30_001)
UPLOAD_DELAY_MS = range(600_000)  # a tap occurred up to 10 minutes before its batch arrives
RECENT_RIDER_SHARE = 4  # every 4th validator tap is a card that rode a few minutes ago
RECENT_BATCHES = 200  # "a few minutes ago": the last 200 validator batches


def batch_class(index: int) -> str:
    """The terminal class of batch ``index``: exactly 90/9/1 in every 100 batches."""
    if index % 100 == 94:
        return "BILLING"
    if index % 10 == 4:
        return "POS"
    return "VALIDATOR"


@functools.cache
def _batch_struct(taps: int) -> struct.Struct:
    return struct.Struct(">" + "QQqqI" * taps)  # = limits.TAP_STRUCT, ``taps`` times


class TapStream:
    """An endless, reproducible stream of packed 1,000-tap batches.

    Each batch is ``(terminal_id, packed_taps, now_ms)``; ``now_ms`` is the
    simulated server clock when it arrives (it advances ``ms_per_batch`` a
    batch), and its taps occurred up to 10 minutes before. Terminal seqs are
    fresh and increasing per terminal, so no tap is a duplicate.
    """

    def __init__(
        self,
        *,
        cards: int,
        start_ms: int,
        first_card_id: int = FIRST_CARD_ID,
        seed: int = 2030,
        ms_per_batch: int = 500,
        batch_taps: int = BATCH_TAPS,
    ) -> None:
        self.rng = random.Random(seed)
        self.card_ids = range(first_card_id, first_card_id + cards)
        self.now_ms = start_ms
        self.ms_per_batch = ms_per_batch
        self.batch_taps = batch_taps
        self.index = 0
        self.seqs = dict.fromkeys(VALIDATOR_IDS + POS_IDS + BILLING_IDS, 0)
        self._recent: deque[list[int]] = deque(maxlen=RECENT_BATCHES)
        self._struct = _batch_struct(batch_taps)

    def __iter__(self) -> Iterator[tuple[int, bytes, int]]:
        return self

    def __next__(self) -> tuple[int, bytes, int]:
        rng, n = self.rng, self.batch_taps
        klass = batch_class(self.index)
        self.index += 1
        self.now_ms += self.ms_per_batch
        cards = rng.choices(self.card_ids, k=n)
        if klass == "VALIDATOR":
            terminal_id = rng.choice(VALIDATOR_IDS)
            if self._recent:
                riders = self._recent[rng.randrange(len(self._recent))]
                cards[::RECENT_RIDER_SHARE] = rng.choices(
                    riders, k=len(cards[::RECENT_RIDER_SHARE])
                )
            self._recent.append(cards)
            amounts = [BUS_LIST_FEN] * n
            routes = rng.choices(ROUTES, k=n)
        else:
            terminal_id = rng.choice(POS_IDS if klass == "POS" else BILLING_IDS)
            amounts = rng.choices(POS_FEN if klass == "POS" else BILL_FEN, k=n)
            routes = [0] * n
        first = self.seqs[terminal_id] + 1
        self.seqs[terminal_id] = first + n - 1
        now = self.now_ms
        occurred = [now - delay for delay in rng.choices(UPLOAD_DELAY_MS, k=n)]
        occurred.sort()  # a terminal records its taps in order
        flat = [
            v
            for tap in zip(cards, range(first, first + n), amounts, occurred, routes, strict=True)
            for v in tap
        ]
        return terminal_id, self._struct.pack(*flat), now

    def take(self, count: int) -> list[tuple[int, bytes, int]]:
        return [next(self) for _ in range(count)]


def stream_start_ms() -> int:
    """A fixed, realistic clock (2030-03-17) so runs are reproducible."""
    return 1_900_000_000_000


def build_ledger(
    ledger_class: type,
    *,
    cards: int = CORE_CARDS,
    balance_fen: int = FUNDED_BALANCE_FEN,
    start_ms: int | None = None,
):
    """A ledger configured like the demo city's engine, with ``cards`` funded cards.

    Terminals, parties, limits, concessions and merchant rules go through the
    real ``Registry`` from the demo city's configuration; every 10th merchant
    also has a promotion (a second, effective-dated rule) from a day before
    ``start_ms``. Card types follow the city's shares (``seed_card_type``).
    """
    ledger = ledger_class()
    registry = Registry()
    registry.apply_config(ledger, config_entry(demo_city.demo_config(cards=0)), 1)
    promo_from = (start_ms if start_ms is not None else stream_start_ms()) - MS_PER_DAY
    for n in range(10, demo_city.MERCHANT_COUNT + 1, 10):
        registry.apply_rule(ledger, MerchantRuleEntry(demo_city.merchant_id(n), promo_from, 8_000))
    issue, adjust = ledger.issue_card, ledger.adjust_balance
    for index in range(cards):
        card_id = FIRST_CARD_ID + index
        issue(card_id, seed_card_type(index), DEPOSIT_FEN)
        adjust(card_id, balance_fen)
    return ledger


# Scratch space ----------------------------------------------------------------------


def scratch_root() -> str:
    """Where journals are written: ``$CLEARING_BENCH_DIR`` or ``/tmp``.

    On this machine ``/tmp`` and ``/work/main/var`` (the default data dir) are
    the same ext4 filesystem on /dev/vda, so fsync costs are the data dir's.
    """
    return os.environ.get("CLEARING_BENCH_DIR") or tempfile.gettempdir()


def filesystem_of(path: str) -> str:
    """The device and mount point ``path`` lives on (from /proc/self/mounts)."""
    path = os.path.realpath(path)
    best = ("?", "/", "?")
    try:
        with open("/proc/self/mounts") as f:
            for line in f:
                device, mount, fstype = line.split()[:3]
                is_parent = path == mount or path.startswith(mount.rstrip("/") + "/")
                if is_parent and len(mount) >= len(best[1]):
                    best = (device, mount, fstype)
    except OSError:
        pass
    return f"{best[0]} ({best[2]}) mounted on {best[1]}"


@pytest.fixture
def scratch_dir():
    path = tempfile.mkdtemp(prefix="clearing-bench-", dir=scratch_root())
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def disk_bytes(path: str) -> int:
    """Bytes allocated on disk under ``path`` (LMDB files are sparse)."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            total += os.stat(os.path.join(root, name)).st_blocks * 512
    return total


class Stopwatch:
    """Per-round wall times measured inside the target, so figures exist even
    when pytest-benchmark is disabled (``--benchmark-disable``)."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self.units: list[int] = []

    def time(self, fn, units: int = 1):
        started = time.perf_counter()
        result = fn()
        self.seconds.append(time.perf_counter() - started)
        self.units.append(units)
        return result

    @property
    def rate(self) -> float:
        """Units per second over all rounds (amortises one-off costs like index growth)."""
        return sum(self.units) / sum(self.seconds)

    @property
    def best_rate(self) -> float:
        return max(u / s for u, s in zip(self.units, self.seconds, strict=True))

    @property
    def median_seconds(self) -> float:
        ordered = sorted(self.seconds)
        mid = len(ordered) // 2
        return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


# Figures ------------------------------------------------------------------------------


@dataclass
class Figure:
    bench: str
    label: str
    value: float
    unit: str
    target: str = ""
    met: bool | None = None

    def text(self) -> str:
        verdict = "" if self.met is None else (" MET" if self.met else " MISSED")
        target = f" (target {self.target}{verdict})" if self.target else ""
        return f"{self.label} {fmt(self.value)} {self.unit}{target}"


FIGURES: list[Figure] = []


def fmt(value: float) -> str:
    if abs(value) >= 1_000:
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:.1f}"
    return f"{value:#.3g}"  # 3 significant digits, trailing zeros kept: 5.00, 78.1


def figure(
    bench: str,
    label: str,
    value: float,
    unit: str,
    *,
    at_least: float | None = None,
    at_most: float | None = None,
) -> Figure:
    target, met = "", None
    if at_least is not None:
        target, met = f">= {fmt(at_least)} {unit}", value >= at_least
    elif at_most is not None:
        target, met = f"<= {fmt(at_most)} {unit}", value <= at_most
    return Figure(bench, label, value, unit, target, met)


def report(bench: str, *figures: Figure, note: str = "") -> None:
    """Print one line of figures for ``bench`` and keep them for the summary."""
    FIGURES.extend(figures)
    line = " | ".join(f.text() for f in figures)
    print(f"\n[bench] {bench}: {line}" + (f"  [{note}]" if note else ""), flush=True)


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    """All figures of the session as one table, after pytest-benchmark's own."""
    if not FIGURES:
        return
    header = ("benchmark", "figure", "value", "target")
    rows = [(f.bench, f.label, f"{fmt(f.value)} {f.unit}", f.target, f.met) for f in FIGURES]
    widths = [max(len(str(r[i])) for r in [(*header, None), *rows]) for i in range(4)]
    write = terminalreporter.write_line
    terminalreporter.section("clearing benchmark figures", sep="=")
    write("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + "  verdict")
    for *cells, met in rows:
        verdict = "" if met is None else ("met" if met else "MISSED")
        write(
            "  ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)) + "  " + verdict
        )
