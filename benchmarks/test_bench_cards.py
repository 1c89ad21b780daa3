"""Card operations over gRPC vs the trivial unary handler of the same server.

The server is a real ``clearing serve`` in a SUBPROCESS (``python -m clearing
serve --config FILE``), on a durable LMDB journal (fsync on every commit,
group commit across concurrent requests) in the scratch directory
(``conftest.scratch_root``). Why a subprocess: in the same process (the
tests' ``Harness``) client and server share one event loop and one GIL, so
every call's client half (serialising, the aio channel, the histogram) would
be paid on the server's loop and each figure would be about half of what the
server can do; the ratio would then say as much about the client as about the
card path. In its own process the server has its own loop and GIL. The two
processes still share this machine's 2 CPUs (the server uses a bit over one:
gRPC's threads and the journal writer beside its loop), which is why the two
workloads run alternately and the ratio is the figure to compare.

Workload. 2,000 cards are issued first (untimed) through ``IssueCard`` with
the hall's token. Then, per round, ``CONCURRENCY`` client coroutines share
ONE channel and take the next of ``REQUESTS_PER_ROUND`` prepared calls from
a shared iterator until none is left:

(a) trivial: the standard gRPC health ``Check`` (``grpc.health.v1``) of the
    same server: no auth, no engine, no journal; the floor of what a unary
    call costs on this server, client and loopback.
(b) card ops: 50 % ``TopUp`` (a fresh request id each, 1..100 fen on one of
    the cards at random, so no card comes near ``max_balance_fen``; each is
    one journal entry, answered after its durable commit) and 50 % ``GetCard``
    (which waits for whatever is queued to be durable, then reads).

Rounds alternate (trivial, cards, trivial, cards, ...) after one untimed
warm-up round of each, so the machine's noise (rates on this VM move by up to
2x from one second to the next) hits both alike. Figures: the medians over
rounds of requests/s, their ratio, and p50/p99 of the card ops' latency over
all measured rounds (HdrHistogram in microseconds, as the client sees it).
The note adds the journal's group commits in those rounds, from the server's
Prometheus metrics. Target: card ops >= 70 % of the trivial handler's
requests/s.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
from conftest import Stopwatch, figure, filesystem_of, report, scratch_root
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hdrh.histogram import HdrHistogram

from clearing.runtime.config import Config, dump_config, parse_config
from clearing.tools.client import Stubs, bearer, channel, serve_command
from clearing.v1 import cards_pb2
from tests.conftest import TOKENS, city_dict

REPO_ROOT = Path(__file__).resolve().parents[1]
CARDS = 2_000
FIRST_CARD_ID = 6_200_000_000_000_000
CONCURRENCY = 32
REQUESTS_PER_ROUND = 2_000  # ~1 s of trivial calls, ~1.5 s of card ops on this machine
ROUNDS = 7  # measured pairs (trivial, cards), after one warm-up pair
RATIO_TARGET_PCT = 70.0
START_TIMEOUT_S = 60.0

HALL = bearer(TOKENS["hall"])
OK = cards_pb2.CardReply.OK


# A real server in its own process (also used by test_bench_denylist) -------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bench_config(data_dir: str, **overrides) -> Config:
    """The tests' small city (tests/conftest.city_dict) on the real clock.

    ``overrides`` are whole sections merged into the dict, e.g. ``seed={...}``.
    """
    raw = city_dict(data_dir)
    raw["server"]["manual_clock"] = False
    raw["server"]["map_size_bytes"] = 2**30
    for section, values in overrides.items():
        raw.setdefault(section, {}).update(values)
    return parse_config(raw)


class ServerProcess:
    """``python -m clearing serve`` on loopback; started, waited for SERVING, stopped."""

    def __init__(self, root: str, config: Config) -> None:
        self.config_path = os.path.join(root, "city.toml")
        with open(self.config_path, "w") as f:
            f.write(dump_config(config))
        self.log_path = os.path.join(root, "server.log")
        self.target = f"127.0.0.1:{free_port()}"
        self.metrics_target = f"127.0.0.1:{free_port()}"
        self.proc: subprocess.Popen | None = None
        self.start_seconds = 0.0

    def start(self) -> ServerProcess:
        started = time.perf_counter()
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                serve_command(self.target, self.metrics_target, config=self.config_path),
                cwd=REPO_ROOT,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        with grpc.insecure_channel(self.target) as chan:
            health = health_pb2_grpc.HealthStub(chan)
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise AssertionError(f"server exited while starting: {self.log_tail()}")
                try:
                    reply = health.Check(health_pb2.HealthCheckRequest(), timeout=0.5)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        self.start_seconds = time.perf_counter() - started
                        return self
                except grpc.RpcError:
                    pass
                time.sleep(0.05)
        self.stop()
        raise AssertionError(f"server did not become SERVING: {self.log_tail()}")

    def metrics(self) -> dict[str, float]:
        """The server's Prometheus samples (name{labels} -> value), unlabelled ones by name."""
        with urllib.request.urlopen(f"http://{self.metrics_target}/metrics", timeout=10) as r:
            text = r.read().decode()
        samples = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                samples[name] = float(value)
        return samples

    def log_tail(self) -> str:
        try:
            with open(self.log_path, "rb") as f:
                return f.read()[-2000:].decode(errors="replace")
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        """SIGTERM (graceful: commit, checkpoint, close), then SIGKILL if it hangs."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# The client ---------------------------------------------------------------------------


class Round:
    """One round's wall time and latencies."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.failures = 0
        self.latency_us = HdrHistogram(1, 60_000_000, 3)

    @property
    def rate(self) -> float:
        return self.latency_us.get_total_count() / self.seconds


class Client:
    """The benchmark's side: one event loop, one channel, ``CONCURRENCY`` coroutines."""

    def __init__(self, target: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.target = target
        self.rng = random.Random(2030)
        self.request_ids = itertools.count(1)
        self.chan: grpc.aio.Channel | None = None
        self.stubs: Stubs | None = None
        self.health: health_pb2_grpc.HealthStub | None = None
        self.loop.run_until_complete(self._open())

    async def _open(self) -> None:
        self.chan = channel(self.target)
        self.stubs = Stubs(self.chan)
        self.health = health_pb2_grpc.HealthStub(self.chan)
        await self.chan.channel_ready()

    def close(self) -> None:
        if self.chan is not None:
            self.loop.run_until_complete(self.chan.close())
        self.loop.close()

    def run(self, calls: list, concurrency: int = CONCURRENCY) -> Round:
        """Make every call (a zero-argument coroutine function) with ``concurrency`` workers."""
        return self.loop.run_until_complete(self._run(calls, concurrency))

    async def _run(self, calls: list, concurrency: int) -> Round:
        result = Round()
        pending = iter(calls)  # shared: each worker takes the next call
        record, clock = result.latency_us.record_value, time.perf_counter_ns

        async def worker() -> None:
            for call in pending:
                started = clock()
                ok = await call()
                record(max(1, (clock() - started) // 1_000))
                if not ok:
                    result.failures += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        result.seconds = time.perf_counter() - started
        return result

    # The calls (built before a round starts, so building them is not timed) -----------------

    def trivial_calls(self, count: int) -> list:
        check, request = self.health.Check, health_pb2.HealthCheckRequest()
        serving = health_pb2.HealthCheckResponse.SERVING

        async def call() -> bool:
            return (await check(request)).status == serving

        return [call] * count

    def card_calls(self, count: int) -> list:
        cards, rng = self.stubs.cards, self.rng
        calls = []
        for i in range(count):
            card_id = FIRST_CARD_ID + rng.randrange(CARDS)
            if i % 2:
                request = cards_pb2.GetCardRequest(card_id=card_id)
                calls.append(_get_card(cards, request))
            else:
                request = cards_pb2.TopUpRequest(
                    request_id=f"bench-topup-{next(self.request_ids)}",
                    card_id=card_id,
                    amount_fen=rng.randint(1, 100),
                )
                calls.append(_top_up(cards, request))
        return calls

    def issue_calls(self) -> list:
        cards = self.stubs.cards
        return [
            _issue(
                cards,
                cards_pb2.IssueCardRequest(
                    request_id=f"bench-issue-{card_id}",
                    card_id=card_id,
                    card_type=cards_pb2.ADULT,
                    deposit_fen=2_000,
                ),
            )
            for card_id in range(FIRST_CARD_ID, FIRST_CARD_ID + CARDS)
        ]


def _get_card(cards, request):
    async def call() -> bool:
        return (await cards.GetCard(request, metadata=HALL)).state == cards_pb2.ACTIVE

    return call


def _top_up(cards, request):
    async def call() -> bool:
        return (await cards.TopUp(request, metadata=HALL)).status == OK

    return call


def _issue(cards, request):
    async def call() -> bool:
        return (await cards.IssueCard(request, metadata=HALL)).status == OK

    return call


# The benchmark ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def served():
    root = tempfile.mkdtemp(prefix="clearing-bench-cards-", dir=scratch_root())
    server = ServerProcess(root, bench_config(os.path.join(root, "data")))
    client = None
    try:
        server.start()
        client = Client(server.target)
        issued = client.run(client.issue_calls())
        assert issued.failures == 0, f"{issued.failures} IssueCard calls failed"
        print(
            f"\n[bench] cards: server SERVING {server.start_seconds:.1f} s after spawn; "
            f"issued {CARDS:,} cards in {issued.seconds:.2f} s (untimed); journal on "
            f"{filesystem_of(root)}",
            flush=True,
        )
        yield server, client
    finally:
        if client is not None:
            client.close()
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


def _merged(rounds: list[Round]) -> HdrHistogram:
    merged = HdrHistogram(1, 60_000_000, 3)
    for r in rounds:
        merged.add(r.latency_us)
    return merged


COMMITS = "clearing_journal_commit_latency_seconds_count"
COMMIT_SECONDS = "clearing_journal_commit_latency_seconds_sum"
ENTRIES = "clearing_journal_entries_total"


def test_cards_topup_getcard_vs_health_check(benchmark, served):
    server, client = served
    trivial: list[Round] = []
    ops: list[Round] = []
    watch = Stopwatch()
    prepared: list[list] = []

    # Warm-up pair: connections, first pages of the journal, interpreter caches.
    client.run(client.trivial_calls(REQUESTS_PER_ROUND))
    client.run(client.card_calls(REQUESTS_PER_ROUND))
    before = server.metrics()

    def setup():
        """Not timed by pytest-benchmark: the trivial round, then building the card calls."""
        trivial.append(client.run(client.trivial_calls(REQUESTS_PER_ROUND)))
        prepared.append(client.card_calls(REQUESTS_PER_ROUND))

    def target():
        ops.append(watch.time(lambda: client.run(prepared.pop()), REQUESTS_PER_ROUND))

    benchmark.pedantic(target, setup=setup, rounds=ROUNDS, iterations=1)
    after = server.metrics()

    failures = sum(r.failures for r in trivial + ops)
    assert failures == 0, f"{failures} calls did not answer OK / SERVING / ACTIVE"
    trivial_rate = statistics.median(r.rate for r in trivial)
    ops_rate = statistics.median(r.rate for r in ops)
    pair_pct = statistics.median(100 * o.rate / t.rate for t, o in zip(trivial, ops, strict=True))
    latency, trivial_latency = _merged(ops), _merged(trivial)
    commits = after[COMMITS] - before[COMMITS]
    entries = after[ENTRIES] - before[ENTRIES]
    commit_ms = 1_000 * (after[COMMIT_SECONDS] - before[COMMIT_SECONDS]) / max(commits, 1)
    report(
        f"cards over gRPC, {CONCURRENCY} coroutines on one channel, server in a subprocess",
        figure("cards", "health Check (trivial)", trivial_rate, "req/s"),
        figure("cards", "TopUp+GetCard 50/50", ops_rate, "req/s"),
        figure(
            "cards",
            "card ops/trivial",
            100 * ops_rate / trivial_rate,
            "%",
            at_least=RATIO_TARGET_PCT,
        ),
        figure("cards", "card ops p50", latency.get_value_at_percentile(50) / 1_000, "ms"),
        figure("cards", "card ops p99", latency.get_value_at_percentile(99) / 1_000, "ms"),
        note=f"medians of {len(ops)} alternating rounds of {REQUESTS_PER_ROUND:,} requests each "
        f"(median of the per-pair ratios {pair_pct:.1f} %); trivial p50 "
        f"{trivial_latency.get_value_at_percentile(50) / 1_000:.2f} ms, p99 "
        f"{trivial_latency.get_value_at_percentile(99) / 1_000:.2f} ms; {entries:,.0f} TopUps "
        f"in {commits:,.0f} group commits ({entries / max(commits, 1):.1f} a commit, "
        f"{commit_ms:.2f} ms each incl. fsync); {CARDS:,} cards",
    )
