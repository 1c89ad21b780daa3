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

from clearing.business_day import business_date_of, business_window_ms, parse_business_date
from clearing.entries import SettledEntry
from clearing.errors import RequestRejected
from clearing.service import Service
from clearing.settlement.compute import DayRequest, compute_day
from clearing.settlement.figures import SummaryRow
from clearing.settlement.publish import load_published, publish, settlement_root


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

    def _day_settings(self) -> tuple[str, str]:
        settings = self.service.engine.registry.settings
        assert settings is not None, "a serving engine has a configuration"
        return settings.timezone, settings.cutoff

    def settleable_date(self, text: str) -> dt.date:
        """The business date ``text`` names, if its day has ended; else a clear refusal."""
        day = parse_business_date(text)
        timezone, cutoff = self._day_settings()
        today = business_date_of(self.service.clock.now_ms(), timezone, cutoff)
        where = f"business days change at {cutoff} {timezone}; the current one is {today}"
        if day > today:
            raise RequestRejected("INVALID_ARGUMENT", f"{day} is in the future ({where})")
        if day == today:
            end_ms = business_window_ms(day, timezone, cutoff)[1]
            raise RequestRejected(
                "FAILED_PRECONDITION",
                f"{day} is still open: it can be settled after its cutoff "
                f"(at {end_ms} ms; {where})",
            )
        first_date = self._first_date(timezone, cutoff)
        if day < first_date:
            raise RequestRejected(
                "OUT_OF_RANGE", f"{day} is before the journal's first entry (on {first_date})"
            )
        return day

    def _first_date(self, timezone: str, cutoff: str) -> dt.date:
        return business_date_of(self.service.journal.accepted_at_ms(1), timezone, cutoff)

    async def run(self, text: str) -> Settled:
        service = self.service
        day = self.settleable_date(text)
        service.check_serving()  # closes ended days and runs due transfers first
        async with self._lock:
            await service.durable()  # the day's close is committed before we read it
            recorded = service.engine.days.settled.get(day.isoformat())
            timezone, cutoff = self._day_settings()
            request = DayRequest(
                day,
                timezone,
                cutoff,
                self._first_date(timezone, cutoff),
                service.engine.registry_entries_before(service.engine.last_seq + 1),
            )
            computed = await asyncio.to_thread(compute_day, service.journal, request)
            recorded_sha = recorded[1] if recorded else None
            directory = await asyncio.to_thread(publish, self.root, computed, recorded_sha)
            if recorded is None:
                sha = computed.manifest_sha256
                body = SettledEntry(
                    computed.business_date, computed.first_seq, computed.last_seq, sha
                )
                recorded = ((await service.admin(body)).seq, sha)
        return Settled(
            computed.business_date,
            computed.first_seq,
            computed.last_seq,
            recorded[0],
            recorded[1],
            directory,
            computed.manifest,
            computed.rows,
        )

    async def get(self, text: str) -> Settled:
        day = parse_business_date(text).isoformat()
        recorded = self.service.engine.days.settled.get(day)
        if recorded is None:
            raise RequestRejected("NOT_FOUND", f"{day} is not settled yet: RunSettlement first")
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
