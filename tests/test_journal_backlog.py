"""A stalled disk: once the journal is JOURNAL_BACKLOG_ENTRIES_MAX entries behind, new
writes are refused (UNAVAILABLE) before anything is applied, and taken again once the
disk catches up. Real LMDB; only the commit is held back, by a gate."""

from __future__ import annotations

import asyncio
import threading

import pytest

from clearing.errors import Refusal, RequestRejected
from clearing.limits import TAP_STRUCT
from clearing.runtime import service as service_module
from clearing.runtime.service import Service
from clearing.storage.journal import Journal
from loadgen.soak.city import NOW_MS, VALIDATOR

BACKLOG_MAX = 2


def _tap(seq: int) -> bytes:
    return TAP_STRUCT.pack(9_000_001, seq, 200, NOW_MS, 1)


async def test_a_stalled_disk_refuses_new_writes_and_applies_nothing(city, monkeypatch):
    monkeypatch.setattr(service_module, "JOURNAL_BACKLOG_ENTRIES_MAX", BACKLOG_MAX)
    gate = threading.Event()
    commit = Journal._commit

    def stalled_commit(self, group):
        gate.wait(30)
        commit(self, group)

    service = Service(city)
    service.load()
    await service.start()
    monkeypatch.setattr(Journal, "_commit", stalled_commit)
    try:
        waiting = [asyncio.create_task(service.submit_taps(VALIDATOR, _tap(s))) for s in (1, 2)]
        for _ in range(100):
            await asyncio.sleep(0.01)
            if service.journal.backlog_entries >= BACKLOG_MAX:
                break
        assert service.journal.backlog_entries == BACKLOG_MAX
        records, head = service.engine.ledger.tap_record_count(), service.engine.last_seq
        with pytest.raises(RequestRejected) as caught:
            await service.submit_taps(VALIDATOR, _tap(3))
        assert caught.value.code is Refusal.UNAVAILABLE
        assert "entries behind" in caught.value.message
        assert service.engine.ledger.tap_record_count() == records
        assert service.engine.last_seq == head
        gate.set()
        await asyncio.gather(*waiting)
        assert service.journal.backlog_entries == 0
        env = await service.submit_taps(VALIDATOR, _tap(3))
        assert env.seq == head + 1
    finally:
        gate.set()
        await service.stop()
