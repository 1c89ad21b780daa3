"""The LMDB journal on its own: chain, verification, damage, map full, checkpoints."""

from __future__ import annotations

import asyncio
import os

import pytest

from clearing.domain import entries
from clearing.domain.entries import SeedEntry, TapBatchEntry
from clearing.errors import JournalCorrupt, JournalError, StorageError
from clearing.storage.journal import Journal
from tests.conftest import flip_byte


def _fill(journal: Journal, count: int, payload_bytes: int = 100) -> list[bytes]:
    payloads = []
    for seq in range(journal.last_seq + 1, journal.last_seq + 1 + count):
        payload = seq.to_bytes(8, "big") * (payload_bytes // 8)
        journal.append_now(seq, 1_000 + seq, TapBatchEntry(1, payload, b""))
        payloads.append(payload)
    return payloads


def test_entries_are_chained_and_read_back(tmp_path):
    journal = Journal(str(tmp_path), 2**24)
    _fill(journal, 5)
    hashes = [chain for _, _, chain in journal.verified_scan()]
    assert len(hashes) == 5 and len(set(hashes)) == 5
    second = journal.get(2)
    assert second.prev_hash == entries.chain_hash(next(v for s, v in journal.scan(1) if s == 1))
    journal.close()
    reopened = Journal(str(tmp_path), 2**24)
    assert reopened.last_seq == 5
    _fill(reopened, 1)  # continues the chain from the stored head
    assert [s for s, _, _ in reopened.verified_scan()] == [1, 2, 3, 4, 5, 6]
    reopened.close()


def test_a_flipped_byte_is_found_with_its_position(tmp_path):
    journal = Journal(str(tmp_path), 2**24)
    payloads = _fill(journal, 4, payload_bytes=400)
    journal.close()
    flip_byte(os.path.join(tmp_path, "data.mdb"), payloads[1], 17, 0xFF)  # entry 2's body
    damaged = Journal(str(tmp_path), 2**24)
    with pytest.raises(
        JournalCorrupt, match="journal entry 2: hash chain broken"
    ):  # the damaged one
        list(damaged.verified_scan())
    damaged.close()


def test_damage_to_the_last_entry_is_found_through_the_recorded_head(tmp_path):
    journal = Journal(str(tmp_path), 2**24)
    payloads = _fill(journal, 3, payload_bytes=400)
    journal.close()
    flip_byte(os.path.join(tmp_path, "data.mdb"), payloads[2], 5, 0x01)
    damaged = Journal(str(tmp_path), 2**24)
    with pytest.raises(JournalCorrupt, match="journal entry 3: last entry does not match"):
        list(damaged.verified_scan())
    damaged.close()


def test_a_missing_journal_is_named(tmp_path):
    with pytest.raises(JournalError, match="no journal at"):
        Journal(str(tmp_path / "nothing"), 2**20, readonly=True)


async def test_map_full_stops_acknowledging_and_loses_nothing(tmp_path):
    journal = Journal(str(tmp_path), 2**20)
    journal.start_writer(asyncio.get_running_loop())
    acknowledged = 0
    with pytest.raises(StorageError, match="map is full"):
        for seq in range(1, 1_000):
            await journal.append(seq, seq, TapBatchEntry(1, bytes(20_000), b""))
            acknowledged = seq
    assert acknowledged > 10
    with pytest.raises(StorageError):  # sticky: nothing more is taken
        journal.append(acknowledged + 2, 10**6, SeedEntry(1, 1, 0, ""))
    journal.close()
    bigger = Journal(str(tmp_path), 2**24)
    assert [s for s, _, _ in bigger.verified_scan()] == list(range(1, acknowledged + 1))
    bigger.close()


async def test_group_commit_resolves_every_caller_in_order(tmp_path):
    journal = Journal(str(tmp_path), 2**24)
    journal.start_writer(asyncio.get_running_loop())
    commits: list[int] = []
    journal.on_commit = lambda count, seconds, last: commits.append(count)
    futures = [journal.append(seq, seq, TapBatchEntry(1, b"x" * 36, b"")) for seq in range(1, 201)]
    await asyncio.gather(*futures)
    assert sum(commits) == 200
    assert len(commits) < 200  # several entries shared a commit
    journal.close()
