"""Business days in the journal: closes at the cutoff, changed cutoffs, failed runs."""

from __future__ import annotations

import os

import grpc
import msgspec
import pytest

from clearing.domain.entries import DayCloseEntry
from clearing.errors import StorageError
from clearing.runtime.config import Config
from clearing.settlement.runner import Settlements
from clearing.v1 import settlement_pb2
from tests.conftest import NOW_MS, VALIDATOR, Harness
from tests.test_settlement_example import (
    DAY,
    DAY_END_MS,
    SUMMARY,
    play_the_day,
    read,
    run,
    set_clock,
)

HOUR_MS, DAY_MS = 3_600_000, 86_400_000


class TickingClock:
    """A clock that moves one millisecond every time it is read."""

    manual = True

    def __init__(self, now_ms: int) -> None:
        self.now = now_ms

    def now_ms(self) -> int:
        self.now += 1
        return self.now

    def set(self, now_ms: int) -> None:
        self.now = now_ms


def closes(service) -> list[tuple[int, DayCloseEntry]]:
    found = []
    for seq in range(1, service.journal.last_seq + 1):
        env = service.journal.get(seq)
        if isinstance(env.body, DayCloseEntry):
            found.append((seq, env.body))
    return found


async def test_writes_across_the_cutoff_millisecond_close_the_day_first(harness):
    h = harness
    await h.issue(1001, balance_fen=5_000)
    h.server.service.clock = TickingClock(DAY_END_MS - 6)  # every read moves time on
    for seq in range(1, 9):
        (result,) = await h.taps(VALIDATOR, [(1001, seq, 200, NOW_MS, 11)])
        assert result[0] == 1  # OK: never "journal damaged" at the boundary
    service = h.server.service
    ((close_seq, close),) = closes(service)
    assert (close.business_date, close.cutoff_ms) == (DAY, DAY_END_MS)
    for seq in range(1, service.journal.last_seq + 1):
        accepted = service.journal.accepted_at_ms(seq)
        assert (accepted < DAY_END_MS) == (seq < close_seq), seq


async def test_a_changed_cutoff_never_moves_a_settled_or_closed_day(city: Config):
    h = await Harness(city).start()
    await play_the_day(h)
    await set_clock(h, DAY_END_MS + 1_000)
    first = await run(h)
    await h.taps(VALIDATOR, [(1001, 10, 200, DAY_END_MS + 1_000, 11)])  # on the next day
    await h.stop()
    later = msgspec.structs.replace(city.server, cutoff="06:00")
    h = await Harness(msgspec.structs.replace(city, server=later)).start()
    try:
        # The next day (2030-03-18) now ends at 06:00 on the 19th, 2 h later than it would have.
        await set_clock(h, DAY_END_MS + DAY_MS + HOUR_MS)
        with pytest.raises(grpc.aio.AioRpcError, match="still open"):
            await run(h, "2030-03-18")
        await set_clock(h, DAY_END_MS + DAY_MS + 2 * HOUR_MS + 1)
        second = await run(h, "2030-03-18")
        assert second.tap_count == 1
        os.remove(os.path.join(first.output_dir, "summary.csv"))
        again = await h.stubs.settlement.GetSettlement(
            settlement_pb2.SettlementRequest(business_date=DAY),
            metadata=(("authorization", "Bearer test-token-finance-xxxx"),),
        )
        assert again == first
        assert read(first.output_dir, "summary.csv") == SUMMARY
    finally:
        await h.stop()


async def test_a_run_that_cannot_record_the_date_leaves_nothing_final(harness, monkeypatch):
    h = harness
    await play_the_day(h)
    await set_clock(h, DAY_END_MS + 1_000)
    service = h.server.service

    async def storage_fails(body):
        raise StorageError("disk full under the journal")

    monkeypatch.setattr(service, "admin", storage_fails)
    with pytest.raises(StorageError):
        await Settlements(service).run(DAY)
    root = os.path.join(h.config.server.data_dir, "settlement")
    assert not os.path.exists(os.path.join(root, DAY))
    assert service.engine.days.settled == {}
    monkeypatch.undo()
    settled = await Settlements(service).run(DAY)  # the next run finishes the job
    assert sorted(os.listdir(root)) == [DAY]
    assert read(settled.directory, "summary.csv") == SUMMARY


async def test_a_cutoff_moved_before_now_ends_the_open_day_at_once(city: Config):
    h = await Harness(city).start()
    await play_the_day(h)  # 2030-03-17 is open; it is 01:46 on the 18th in Shanghai
    await h.stop()
    earlier = msgspec.structs.replace(city.server, cutoff="01:00")
    h = await Harness(msgspec.structs.replace(city, server=earlier)).start()
    try:
        await h.taps(VALIDATOR, [(1001, 10, 200, NOW_MS, 11)])  # the first entry of the 18th
        settled = await run(h)
        assert read(settled.output_dir, "summary.csv") == SUMMARY
        assert settled.issuer.float_closing_fen == 13_091
    finally:
        await h.stop()
