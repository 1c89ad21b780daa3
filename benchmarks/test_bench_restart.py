"""Restart: from constructing the Server to health SERVING, on a 5,000,000-tap journal.

The city is the demo city (``clearing.tools.demo_city``: 904 terminals, 210,000 seeded
cards, here with the full 100,000 fen opening balance). Its journal is built
once per module, untimed, through the real path: ``Service.load()`` journals
the configuration and the seed, then 5,000 batches of 1,000 taps from the
tap stream go through ``Engine.tap_batch`` and the journal's writer thread
(``Journal.append``, many in flight, so they share group commits). The builder
closes the journal without ``Service.stop()``, so no checkpoint is written.

Measured, each as ``Server(config)`` + ``await server.start("127.0.0.1:0")``
(replay, gRPC listening, health SERVING; the same process, so no interpreter
or import time):

(i)  without a checkpoint: the whole journal is replayed. Before each round
     the checkpoints are dropped, and the server is stopped without writing
     one (``taps_since_checkpoint`` is zeroed first; stop would otherwise
     snapshot 5M tap records only for the next round to drop them).
(ii) with the checkpoint a graceful ``Server.stop()`` leaves (one graceful
     start + stop before the rounds writes it; its stop time is reported).

Target: <= 5 s each. Every round ends with a real gRPC health check.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import os
import shutil
import tempfile
import time

import grpc
import lmdb
import pytest
from conftest import (
    BATCH_TAPS,
    Stopwatch,
    TapStream,
    disk_bytes,
    figure,
    filesystem_of,
    report,
    scratch_root,
)
from grpc_health.v1 import health_pb2, health_pb2_grpc

from clearing.runtime.config import Config
from clearing.runtime.service import Service
from clearing.server.app import Server
from clearing.storage.journal import Journal, journal_path
from clearing.tools import demo_city

TOTAL_BATCHES = 5_000  # 5,000,000 taps
IN_FLIGHT = 256  # appends queued before waiting: whole group commits while building
ROUNDS = 5
TARGET_SECONDS = 5.0

_results: dict[str, float] = {}


class City:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.journal_dir = journal_path(config.server.data_dir)
        self.loop = asyncio.new_event_loop()
        self.entries = 0
        self.build_seconds = 0.0
        self.bytes_without_checkpoint = 0

    def build(self) -> None:
        started = time.perf_counter()
        service = Service(self.config)
        service.load()  # journals the configuration and the 210,000 seeded cards

        async def fill(service: Service) -> None:
            journal, engine = service.journal, service.engine
            journal.start_writer(asyncio.get_running_loop())
            stream = TapStream(
                cards=demo_city.CARD_COUNT,
                start_ms=service.clock.now_ms(),
                seed=5,
                ms_per_batch=200,
            )
            pending = []
            for terminal_id, packed, now_ms in itertools.islice(stream, TOTAL_BATCHES):
                env = engine.tap_batch(terminal_id, packed, now_ms)
                pending.append(journal.append(env.seq, env.accepted_at_ms, env.body))
                if len(pending) >= IN_FLIGHT:
                    await asyncio.gather(*pending)
                    pending.clear()
            await asyncio.gather(*pending)

        self.loop.run_until_complete(fill(service))
        assert service.engine.ledger.tap_record_count() == TOTAL_BATCHES * BATCH_TAPS
        assert service.engine.taps_since_checkpoint == TOTAL_BATCHES * BATCH_TAPS
        self.entries = service.journal.last_seq
        service.journal.close()  # not Service.stop(): that would write a checkpoint
        del service
        gc.collect()
        self.build_seconds = time.perf_counter() - started
        self.bytes_without_checkpoint = disk_bytes(self.journal_dir)

    # One restart ----------------------------------------------------------------------------

    def start(self) -> Server:
        server = Server(self.config)
        self.loop.run_until_complete(server.start("127.0.0.1:0"))
        return server

    def stop(self, server: Server, *, checkpoint: bool) -> None:
        self.loop.run_until_complete(self._check_serving(server.port))
        if not checkpoint:
            server.service.engine.taps_since_checkpoint = 0
        self.loop.run_until_complete(server.stop(0))

    @staticmethod
    async def _check_serving(port: int) -> None:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as chan:
            reply = await health_pb2_grpc.HealthStub(chan).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=10
            )
        assert reply.status == health_pb2.HealthCheckResponse.SERVING

    # Checkpoints ------------------------------------------------------------------------------

    def drop_checkpoints(self) -> None:
        path = os.path.join(self.journal_dir, "checkpoints")
        env = lmdb.open(path, map_size=self.config.server.map_size_bytes, max_dbs=1)
        try:
            db = env.open_db(b"checkpoints", create=False)
            with env.begin(write=True) as txn:
                txn.drop(db, delete=False)
        finally:
            env.close()

    def checkpoint_bytes(self) -> tuple[int, int]:
        """(seq, encoded size) of the newest checkpoint, or (0, 0)."""
        journal = Journal(self.journal_dir, self.config.server.map_size_bytes, readonly=True)
        try:
            cp = journal.latest_checkpoint()
            return (0, 0) if cp is None else (cp.seq, len(cp.ledger) + len(cp.engine))
        finally:
            journal.close()


@pytest.fixture(scope="module")
def city():
    root = tempfile.mkdtemp(prefix="clearing-bench-restart-", dir=scratch_root())
    config = demo_city.demo_config(data_dir=root)
    config.seed.opening_balance_fen = config.limits.max_balance_fen  # POS rarely declines
    city = City(config)
    try:
        city.build()
        print(
            f"\n[bench] restart: built a journal of {city.entries:,} entries "
            f"({TOTAL_BATCHES * BATCH_TAPS:,} taps) in {city.build_seconds:.1f} s (untimed), "
            f"{city.bytes_without_checkpoint / 2**20:,.0f} MiB on {filesystem_of(root)}",
            flush=True,
        )
        yield city
    finally:
        city.loop.close()
        shutil.rmtree(root, ignore_errors=True)


def _measure_starts(
    benchmark, city: City, *, before=None, checkpoint_at_stop: bool
) -> tuple[Stopwatch, list[int]]:
    """ROUNDS timed starts; returns their times and how many entries each replayed."""
    watch = Stopwatch()
    servers: list[Server] = []
    replayed: list[int] = []

    def setup():
        if before is not None:
            before()
        gc.collect()

    def target():
        servers.append(watch.time(city.start))

    def teardown():
        server = servers.pop()
        replayed.append(server.service.replayed)
        city.stop(server, checkpoint=checkpoint_at_stop)
        del server
        gc.collect()

    benchmark.pedantic(target, setup=setup, teardown=teardown, rounds=ROUNDS, iterations=1)
    if servers:  # --benchmark-disable: pedantic ran the target once, without teardown
        teardown()
    return watch, replayed


def test_restart_i_without_checkpoint(benchmark, city):
    watch, replayed = _measure_starts(
        benchmark, city, before=city.drop_checkpoints, checkpoint_at_stop=False
    )
    assert all(n == city.entries for n in replayed), replayed
    seconds = watch.median_seconds
    _results["full"] = seconds
    report(
        "restart (i) without checkpoint: full replay",
        figure("restart", "to SERVING, no checkpoint", seconds, "s", at_most=TARGET_SECONDS),
        figure("restart", "replay", TOTAL_BATCHES * BATCH_TAPS / seconds, "taps/s"),
        figure("restart", "journal on disk", city.bytes_without_checkpoint / 2**20, "MiB"),
        note=f"median of {len(watch.seconds)} starts ("
        + ", ".join(f"{s:.2f}" for s in watch.seconds)
        + f" s); {city.entries:,} entries replayed and verified",
    )


def test_restart_ii_with_checkpoint(benchmark, city):
    city.drop_checkpoints()
    server = city.start()  # full replay, then the graceful stop writes the checkpoint
    started = time.perf_counter()
    city.loop.run_until_complete(server.stop(0))
    stop_seconds = time.perf_counter() - started
    del server
    gc.collect()
    cp_seq, cp_bytes = city.checkpoint_bytes()
    assert cp_seq == city.entries, "the graceful stop left no checkpoint at the head"

    watch, replayed = _measure_starts(benchmark, city, checkpoint_at_stop=True)
    assert all(n == 0 for n in replayed), replayed
    assert city.checkpoint_bytes()[0] == cp_seq
    seconds = watch.median_seconds
    figures = [
        figure("restart", "to SERVING, checkpoint", seconds, "s", at_most=TARGET_SECONDS),
    ]
    if "full" in _results:
        figures.append(
            figure("restart", "no checkpoint/checkpoint", _results["full"] / seconds, "x")
        )
    figures += [
        figure("restart", "graceful stop writing it", stop_seconds, "s"),
        figure("restart", "checkpoint", cp_bytes / 2**20, "MiB"),
        figure(
            "restart", "journal + checkpoints on disk", disk_bytes(city.journal_dir) / 2**20, "MiB"
        ),
    ]
    report(
        "restart (ii) with the checkpoint of a graceful stop",
        *figures,
        note=f"median of {len(watch.seconds)} starts ("
        + ", ".join(f"{s:.2f}" for s in watch.seconds)
        + f" s); checkpoint at entry {cp_seq:,}; 0 entries replayed, chain still verified",
    )
