"""`clearing settle --date D`: the same run as RunSettlement, against a stopped server's data."""

from __future__ import annotations

import os

from clearing.domain.business_calendar import parse_business_date
from clearing.errors import JournalError
from clearing.runtime.config import Config
from clearing.runtime.service import Service
from clearing.settlement.runner import Settled, Settlements
from clearing.settlement.text import describe
from clearing.storage.journal import journal_path


async def settle_offline(config: Config, business_date: str) -> str:
    """Replay the journal (verifying it), settle the date, stop; returns a summary."""
    parse_business_date(business_date)  # a malformed date is refused before anything opens
    data_dir = config.server.data_dir
    if not os.path.exists(os.path.join(journal_path(data_dir), "data.mdb")):
        raise JournalError(f"no journal in data directory {data_dir!r}: check --data-dir")
    service = Service(config)
    service.load(apply_config=False)  # settle what the journal says, change nothing else
    await service.start()
    try:
        settled: Settled = await Settlements(service).run(business_date)
    finally:
        await service.stop()
    return describe(settled)
