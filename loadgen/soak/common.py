"""What the soak scenarios share: the city with its cards, reading balances back."""

from __future__ import annotations

import asyncio
import contextlib

from clearing.tools.client import Stubs, channel
from clearing.tools.server_status import scrape
from loadgen.check import balances
from loadgen.soak.audit import Audit
from loadgen.soak.city import TOKENS, city_dict
from loadgen.soak.result import ScenarioResult
from loadgen.soak.server import ServerProcess
from loadgen.soak.traffic import Traffic

FIRST_CARD = 9_000_000
CARDS = [FIRST_CARD + i for i in range(200)]
OPENING_BALANCE_FEN = 50_000
TRAFFIC_STOP_SECONDS_MAX = 30.0  # clients notice a dead server within a call's deadline


def soak_city(data_dir: str, **server) -> dict:
    """The test city with 200 seeded cards; ``server`` overrides [server] settings."""
    city = city_dict(data_dir, **server)
    city["seed"] = {
        "cards": len(CARDS),
        "first_card_id": FIRST_CARD,
        "opening_balance_fen": OPENING_BALANCE_FEN,
        "hall": "hall-1",
    }
    return city


async def journal_last_seq(server: ServerProcess) -> int:
    """The server's last committed journal entry, from its /metrics."""
    samples = await asyncio.to_thread(scrape, f"http://{server.metrics_target}/metrics")
    return int(samples["clearing_journal_last_seq"])


async def served_balances(target: str, cards: list[int]) -> dict[int, int]:
    async with channel(target) as chan:
        return await balances(Stubs(chan), TOKENS["hall"], cards)


async def check_served(server: ServerProcess, audit: Audit, result: ScenarioResult, where: str):
    """The restarted server must serve exactly the balances the journal replays to."""
    served = await served_balances(server.target, list(audit.balances))
    wrong = {c: (served[c], audit.balances[c]) for c in served if served[c] != audit.balances[c]}
    result.check(not wrong, f"{where}: served balances differ from the journal: {wrong}")


async def traffic_for(traffic: Traffic, server: ServerProcess, seconds: float) -> None:
    """Run the clients for ``seconds`` (or until the server is gone), then stop them."""
    stop = asyncio.Event()
    task = asyncio.create_task(traffic.run(server.target, stop))
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(task), seconds)
    stop.set()
    await asyncio.wait_for(task, TRAFFIC_STOP_SECONDS_MAX)
