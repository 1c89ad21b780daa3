"""Crashes: kill -9 of a real server process, and restarts from checkpoints."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import grpc
import pytest

from clearing import service as service_module
from clearing.client import (
    Stubs,
    bearer,
    channel,
    free_port,
    serve_command,
    signed_batch,
    unpack_results,
    wait_serving,
)
from clearing.codes import TapStatus
from clearing.config import dump_config, parse_config
from clearing.v1 import cards_pb2
from clearing.verify import verify_journal
from tests.conftest import TOKENS, VALIDATOR, city_dict, terminal_key, terminal_token

CARDS = [8_000_000 + i for i in range(1, 21)]
KILLS = 3
BATCH_TAPS = 50


class ServerProcess:
    def __init__(self, tmp_path) -> None:
        config = parse_config(city_dict(str(tmp_path / "data")))
        self.config_path = tmp_path / "city.toml"
        self.config_path.write_text(dump_config(config))
        self.data_dir = config.server.data_dir
        self.proc: subprocess.Popen | None = None
        self.target = ""

    async def start(self) -> None:
        self.target = f"127.0.0.1:{free_port()}"
        self.proc = subprocess.Popen(
            serve_command(self.target, f"127.0.0.1:{free_port()}", config=str(self.config_path)),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        await wait_serving(self.target, self.proc, 30)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def terminate(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=30)


async def _issue_cards(stubs: Stubs) -> None:
    for card_id in CARDS:
        await stubs.cards.IssueCard(
            cards_pb2.IssueCardRequest(request_id=f"i-{card_id}", card_id=card_id, card_type=1),
            metadata=bearer(TOKENS["hall"]),
        )


def _batch(number: int, now_ms: int):
    taps = [
        (CARDS[(number + i) % len(CARDS)], number * BATCH_TAPS + i + 1, 10 + i, now_ms, 11)
        for i in range(BATCH_TAPS)
    ]
    return signed_batch(VALIDATOR, terminal_key(VALIDATOR), taps)


async def _stream_until_killed(server: ServerProcess, first: int, acked: dict, sent: set) -> int:
    """Stream batches; kill the server after a random number of acknowledgements."""
    now_ms = int(time.time() * 1000)
    kill_after = 5 + os.getpid() % 7
    number = first
    async with channel(server.target) as chan:
        stubs = Stubs(chan)
        metadata = bearer(terminal_token(VALIDATOR))
        try:
            for _ in range(200):
                batch = _batch(number, now_ms)
                sent.add(number)
                reply = await stubs.taps.SubmitTaps(batch, metadata=metadata, timeout=5)
                acked[number] = (batch, unpack_results(reply))
                number += 1
                if len(acked) % kill_after == 0:
                    server.kill()
        except grpc.aio.AioRpcError:
            pass  # the connection died: the batch in flight is "unknown"
    return number + 1


@pytest.mark.slow
async def test_kill_9_loses_no_acknowledged_tap_and_applies_none_twice(tmp_path):
    server = ServerProcess(tmp_path)
    await server.start()
    async with channel(server.target) as chan:
        await _issue_cards(Stubs(chan))
    acked: dict[int, tuple] = {}
    sent: set[int] = set()
    number = 0
    for _ in range(KILLS):
        if server.proc.poll() is not None:
            await server.start()
        number = await _stream_until_killed(server, number, acked, sent)
    await server.start()
    async with channel(server.target) as chan:
        stubs = Stubs(chan)
        metadata = bearer(terminal_token(VALIDATOR))
        charged = 0
        # Unknown outcomes (the batch in flight at a kill) are checked through the balances.
        for n, (batch, results) in sorted(acked.items()):
            reply = unpack_results(await stubs.taps.SubmitTaps(batch, metadata=metadata))
            assert reply == [(*r[:2], 1, *r[3:]) for r in results], f"batch {n} changed"
            charged += sum(r[3] for r in results if r[0] == TapStatus.OK)

        total = 0
        for card_id in CARDS:
            card = await stubs.cards.GetCard(
                cards_pb2.GetCardRequest(card_id=card_id), metadata=bearer(TOKENS["hall"])
            )
            total += card.balance_fen
    assert server.terminate() == 0
    report = verify_journal(server.data_dir)
    assert report.startswith("journal OK")
    # Every acknowledged charge is there once; an unknown batch at most once.
    unknown = sent - set(acked)
    unknown_max = sum(sum(10 + i for i in range(BATCH_TAPS)) for _ in unknown)
    assert charged <= -total <= charged + unknown_max


async def test_restart_from_a_checkpoint_replays_only_what_follows(harness, monkeypatch):
    monkeypatch.setattr(service_module, "CHECKPOINT_EVERY_TAPS", 30)
    h = harness
    await h.issue(CARDS[0], balance_fen=10_000)
    key = terminal_key(VALIDATOR)
    for b in range(10):
        taps = [(CARDS[0], b * 10 + i, 10, 1_900_000_000_000, 11) for i in range(1, 11)]
        await h.stubs.taps.SubmitTaps(
            signed_batch(VALIDATOR, key, taps), metadata=bearer(terminal_token(VALIDATOR))
        )
    service = h.server.service
    total = service.journal.last_seq
    # A crash: no final checkpoint, LMDB closed as a killed process would leave it.
    await h.server.grpc.stop(0)
    service.serving = False
    await service.journal.wait_durable()
    service.journal.close()
    h.server = None
    await h.start()
    assert 0 < h.server.service.replayed < total
    assert await h.balance(CARDS[0]) == 10_000 - 100 * 10


async def test_a_damaged_journal_stops_the_start_with_the_position(city):
    from clearing.client import pack_taps
    from clearing.errors import JournalCorrupt
    from clearing.server.app import Server
    from tests.conftest import Harness, flip_byte

    h = await Harness(city).start()
    await h.issue(CARDS[0], balance_fen=1_000)
    taps = [(CARDS[0], seq, 7, 1_900_000_000_000, 11) for seq in range(1, 30)]
    await h.taps(VALIDATOR, taps)
    await h.taps(VALIDATOR, [(CARDS[0], 99, 7, 1_900_000_000_000, 11)])
    await h.stop()
    flip_byte(os.path.join(city.server.data_dir, "journal", "data.mdb"), pack_taps(taps), 40, 0x10)
    with pytest.raises(JournalCorrupt, match=r"journal entry \d+: hash chain broken"):
        await Server(city).start("127.0.0.1:0")


def _damage_newest_checkpoint(journal_dir: str) -> None:
    import lmdb

    env = lmdb.open(os.path.join(journal_dir, "checkpoints"), max_dbs=1, map_size=256 * 2**20)
    try:
        db = env.open_db(b"checkpoints", create=False)
        with env.begin(write=True, db=db) as txn:
            cursor = txn.cursor()
            assert cursor.last(), "no checkpoint to damage"
            value = bytearray(cursor.value())
            value[len(value) // 2] ^= 0x40  # inside the ledger snapshot
            txn.put(cursor.key(), bytes(value))
    finally:
        env.close()


async def test_a_damaged_checkpoint_costs_replay_time_not_balances(city):
    from tests.conftest import Harness

    h = await Harness(city).start()
    await h.issue(CARDS[0], balance_fen=9_990)
    await h.taps(VALIDATOR, [(CARDS[0], 1, 90, 1_900_000_000_000, 11)])
    await h.stop()  # a graceful stop leaves a checkpoint
    _damage_newest_checkpoint(os.path.join(city.server.data_dir, "journal"))
    await h.start()
    try:
        assert h.server.service.replayed == h.last_seq  # the whole journal, from genesis
        assert await h.balance(CARDS[0]) == 9_900
    finally:
        await h.stop()


async def test_a_faulted_engine_leaves_no_checkpoint(harness, monkeypatch):
    h = harness
    await h.issue(CARDS[0], balance_fen=1_000)
    await h.taps(VALIDATOR, [(CARDS[0], 1, 100, 1_900_000_000_000, 11)])
    service = h.server.service

    def broken(*args):
        raise RuntimeError("bug")

    monkeypatch.setattr(service.engine, "_card_op", broken)
    with pytest.raises(grpc.aio.AioRpcError):
        await h.issue(CARDS[1], balance_fen=0)
    await h.stop()
    assert _checkpoint_count(os.path.join(h.config.server.data_dir, "journal")) == 0
    monkeypatch.undo()
    await h.start()
    assert await h.balance(CARDS[0]) == 900


def _checkpoint_count(journal_dir: str) -> int:
    import lmdb

    path = os.path.join(journal_dir, "checkpoints")
    if not os.path.exists(os.path.join(path, "data.mdb")):
        return 0  # none was ever written
    env = lmdb.open(path, max_dbs=1, map_size=256 * 2**20, readonly=True)
    try:
        with env.begin(db=env.open_db(b"checkpoints", create=False)) as txn:
            return txn.stat()["entries"]
    finally:
        env.close()
