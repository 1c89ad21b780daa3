"""Restarts from checkpoints, and a damaged journal or checkpoint at start.

(kill -9 and crash points under load: tests/test_soak_short.py.)
"""

from __future__ import annotations

import os

import grpc
import pytest

from clearing.tools.client import bearer, signed_batch
from tests.conftest import VALIDATOR, terminal_key, terminal_token

CARDS = [8_000_000 + i for i in range(1, 21)]


async def test_restart_from_a_checkpoint_replays_only_what_follows(city):
    from tests.conftest import Harness

    city.server.checkpoint_every_taps = 30
    h = await Harness(city).start()
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
    try:
        assert 0 < h.server.service.replayed < total
        assert await h.balance(CARDS[0]) == 10_000 - 100 * 10
    finally:
        await h.stop()


async def test_a_damaged_journal_stops_the_start_with_the_position(city):
    from clearing.errors import JournalCorrupt
    from clearing.server.app import Server
    from clearing.tools.client import pack_taps
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


async def test_a_damaged_key_size_is_refused_as_damage_naming_the_entry(city):
    """Found by the soak: a flipped key-size byte in an LMDB leaf made the start die
    with a bare struct.error instead of naming the damaged entry."""
    import struct

    from clearing.errors import JournalCorrupt
    from clearing.server.app import Server
    from tests.conftest import Harness, flip_byte

    h = await Harness(city).start()
    await h.issue(CARDS[0], balance_fen=1_000)
    for seq in range(1, 8):
        await h.taps(VALIDATOR, [(CARDS[0], seq, 7, 1_900_000_000_000, 11)])
    await h.stop()
    # A leaf node: data size (4 bytes), flags (2), key size (2, little-endian), key.
    data = os.path.join(city.server.data_dir, "journal", "data.mdb")
    flip_byte(data, b"\x08\x00" + struct.pack(">Q", 5), 0, 0x01)  # key size 8 -> 9
    with pytest.raises(JournalCorrupt, match=r"journal entry \d+: a \d+-byte key"):
        await Server(city).start("127.0.0.1:0")
