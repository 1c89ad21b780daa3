"""RunSettlement and GetSettlement against a serving engine (SPEC §8).

Used by the gRPC servicer and by ``clearing settle`` alike, so the offline
command does exactly what the RPC does. The heavy pass runs in a worker
thread; the event loop keeps serving taps meanwhile.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo

from clearing.domain.business_calendar import parse_business_date
from clearing.domain.entries import SettledEntry
from clearing.errors import Refusal, RequestRejected
from clearing.runtime.service import Service
from clearing.settlement.compute import DayRequest, compute_day
from clearing.settlement.figures import SummaryRow
from clearing.settlement.publish import load_published, promote, publish, settlement_root, stage
from clearing.storage.crashpoints import crash_point


class Settled(NamedTuple):
    business_date: str
    first_seq: int
    last_seq: int
    settled_seq: int  # the journal entry recording that the date is settled
    manifest_sha256: str
    directory: str
    manifest: dict[str, Any]
    rows: list[SummaryRow]


class Settlements:
    def __init__(self, service: Service) -> None:
        self.service = service
        self.root = settlement_root(service.config.server.data_dir)
        self._lock = asyncio.Lock()  # one run at a time: a date is journaled settled once

    def settleable_date(self, text: str) -> dt.date:
        """The business date ``text`` names, if the journal has closed it; else a clear
        refusal. Call after the service caught up with the clock."""
        day = parse_business_date(text)
        days = self.service.engine.days
        open_day = dt.date.fromisoformat(days.open_date)
        where = f"the open business day is {open_day}"
        if day > open_day:
            raise RequestRejected(Refusal.INVALID_ARGUMENT, f"{day} is in the future ({where})")
        if day == open_day:
            settings = self.service.engine.registry.settings
            assert settings is not None
            cutoff = dt.datetime.fromtimestamp(
                days.open_until_ms / 1000, ZoneInfo(settings.timezone)
            )
            raise RequestRejected(
                Refusal.FAILED_PRECONDITION,
                f"{day} is still open: it can be settled after its cutoff, {cutoff.isoformat()}",
            )
        if day < dt.date.fromisoformat(days.first_date):
            raise RequestRejected(
                Refusal.OUT_OF_RANGE,
                f"{day} is before the journal's first entry (on {days.first_date})",
            )
        assert day.isoformat() in days.closes, f"{day} is neither open nor closed"
        return day

    async def run(self, text: str) -> Settled:
        service = self.service
        parse_business_date(text)  # malformed: refused before anything else
        service.check_serving()  # closes ended days and runs due transfers first
        day = self.settleable_date(text)
        date = day.isoformat()
        async with self._lock:
            await service.durable()  # the day's close is committed before we read it
            days = service.engine.days
            previous = (day - dt.timedelta(days=1)).isoformat()
            request = DayRequest(
                day,
                days.closes[date],
                days.closes.get(previous),
                service.engine.registry_entries_before(service.engine.last_seq + 1),
            )
            computed = await asyncio.to_thread(compute_day, service.journal, request)
            recorded = days.settled.get(date)
            if recorded is None:
                # Staged, journaled, then put in place: no final-looking files unless recorded.
                await asyncio.to_thread(stage, self.root, computed)
                crash_point("settlement.staged")
                sha = computed.manifest_sha256
                body = SettledEntry(date, computed.first_seq, computed.last_seq, sha)
                recorded = ((await service.admin(body)).seq, sha)
                crash_point("settlement.journaled")
                directory = await asyncio.to_thread(promote, self.root, date)
            else:
                directory = await asyncio.to_thread(publish, self.root, computed, recorded[1])
        return Settled(date, computed.first_seq, computed.last_seq, recorded[0], recorded[1],
                       directory, computed.manifest, computed.rows)  # fmt: skip

    async def get(self, text: str) -> Settled:
        day = parse_business_date(text).isoformat()
        recorded = self.service.engine.days.settled.get(day)
        if recorded is None:
            raise RequestRejected(
                Refusal.NOT_FOUND, f"{day} is not settled yet: RunSettlement first"
            )
        await self.service.durable()
        loaded = await asyncio.to_thread(load_published, self.root, day, recorded[1])
        if loaded is None:  # files missing or damaged: recompute them from the journal
            return await self.run(day)
        manifest, rows = loaded
        journal = manifest["journal"]
        return Settled(
            day,
            journal["first_seq"],
            journal["last_seq"],
            recorded[0],
            recorded[1],
            os.path.join(self.root, day),
            manifest,
            rows,
        )
