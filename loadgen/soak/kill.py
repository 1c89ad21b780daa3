"""kill -9 under load, and deaths at named crash points (``clearing.storage.crashpoints``).

After every death the journal on disk is audited (what the next start replays),
the server restarted, and the balances it serves compared with the audit's.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import random
import signal
import time

from clearing.domain.business_calendar import business_date_of
from clearing.storage.crashpoints import ENV_VAR
from clearing.tools.client import Stubs, bearer, channel, signed_batch, unpack_results
from clearing.v1 import admin_pb2, cards_pb2, settlement_pb2
from loadgen.soak.audit import audit
from loadgen.soak.city import NOW_MS, TOKENS, VALIDATOR, VALIDATOR_2, terminal_key, terminal_token
from loadgen.soak.common import CARDS, check_served, soak_city
from loadgen.soak.record import Standing
from loadgen.soak.result import ScenarioResult
from loadgen.soak.server import ServerProcess
from loadgen.soak.traffic import Traffic

SAMPLE_CARDS = CARDS[:50]
KILL_AFTER_SECONDS = (0.2, 1.5)  # a kill lands this long into a round of traffic
CRASH_WAIT_SECONDS_MAX = 30.0  # an armed point not reached by then is a failure
CHECKPOINT_EVERY_TAPS = 400  # soak servers checkpoint often, so kills land mid-checkpoint
KILLED = -signal.SIGKILL  # Popen's return code for a process killed by SIGKILL


def _server(root: str, name: str) -> ServerProcess:
    data_dir = os.path.join(root, name, "data")
    return ServerProcess(
        os.path.join(root, name), soak_city(data_dir, checkpoint_every_taps=CHECKPOINT_EVERY_TAPS)
    )


async def kill9(root: str, kills: int, seed: int) -> ScenarioResult:
    result = ScenarioResult("kill -9 under load", runs=kills)
    rng = random.Random(seed)
    server = _server(root, "kill9")
    traffic = Traffic(CARDS, seed)
    await server.start()
    for kill in range(kills):
        stop = asyncio.Event()
        clients = asyncio.create_task(traffic.run(server.target, stop))
        await asyncio.sleep(rng.uniform(*KILL_AFTER_SECONDS))
        server.kill()
        await asyncio.wait_for(clients, 30)
        found = audit(server.data_dir, traffic.log, sample_cards=SAMPLE_CARDS)
        result.take(found, f"after kill {kill + 1}")
        await server.start()
        await check_served(server, found, result, f"after kill {kill + 1}")
    result.note = _standings(traffic)
    await _finish(server, traffic, result, "at the end")
    return result


async def _finish(server: ServerProcess, traffic: Traffic, result: ScenarioResult, where: str):
    """Retry what is unknown, stop gracefully, audit once more."""
    await retry_unknown(traffic, server.target)
    result.check(server.terminate() == 0, f"{where}: the graceful stop did not exit 0")
    traffic.log.write(os.path.join(os.path.dirname(server.config_path), "clients.jsonl"))
    found = audit(server.data_dir, traffic.log, sample_cards=SAMPLE_CARDS)
    result.take(found, where)
    result.violations += traffic.violations


def _standings(traffic: Traffic) -> str:
    """How the clients' taps stood before the final retry."""
    counts = dict.fromkeys(Standing, 0)
    for record in traffic.log.taps.values():
        counts[record.standing] += 1
    return f"taps {counts[Standing.UNKNOWN]} unknown, {counts[Standing.REFUSED]} refused"


async def retry_unknown(traffic: Traffic, target: str) -> tuple[int, int]:
    """Send every unknown batch and top-up again, as a terminal or desk would.

    Returns (answered as repeats of an applied original, applied now).
    """
    repeats = fresh = 0
    async with channel(target) as chan:
        stubs = Stubs(chan)
        for terminal_id in (VALIDATOR, VALIDATOR_2):
            for taps in traffic.log.unknown_batches(terminal_id, traffic.batch_taps):
                batch = signed_batch(terminal_id, terminal_key(terminal_id), taps)
                metadata = bearer(terminal_token(terminal_id))
                answers = unpack_results(await stubs.taps.SubmitTaps(batch, metadata=metadata))
                traffic.log.batch(terminal_id, taps, Standing.ACKED, answers)
                repeats += sum(a[2] for a in answers)
                fresh += sum(not a[2] for a in answers)
        for request_id, record in list(traffic.log.top_ups.items()):
            if record.standing != Standing.UNKNOWN:
                continue
            request = cards_pb2.TopUpRequest(
                request_id=request_id, card_id=record.card_id, amount_fen=record.amount_fen
            )
            reply = await stubs.cards.TopUp(request, metadata=bearer(TOKENS["hall"]))
            traffic.log.top_up(
                request_id, record.card_id, record.amount_fen, Standing.ACKED,
                (reply.status, reply.journal_seq),
            )  # fmt: skip
            repeats += reply.duplicate
            fresh += not reply.duplicate
    return repeats, fresh


# Crash points --------------------------------------------------------------------------------

POINTS = (
    "journal.before_commit",
    "journal.after_commit",
    "checkpoint.forked",
    "checkpoint.mid_store",
    "settlement.staged",
    "settlement.journaled",
)


async def crash_point(root: str, point: str, runs: int, seed: int) -> ScenarioResult:
    result = ScenarioResult(f"crash point {point}", runs=runs)
    rng = random.Random(seed)
    server = _server(root, point)
    traffic = Traffic(CARDS, seed)
    await server.start()  # the first start journals the city and its cards
    server.terminate()
    repeats_after_commit = 0
    for run in range(runs):
        where = f"run {run + 1}"
        passes = 1 if point.startswith(("checkpoint", "settlement")) else rng.randrange(2, 40)
        await server.start(env={ENV_VAR: f"{point}@{passes}"})
        died = await _until_death(server, traffic, point, run)
        result.check(died, f"{where}: the process did not die at {point}")
        found = audit(server.data_dir, traffic.log, sample_cards=SAMPLE_CARDS)
        result.take(found, where)
        await server.start()
        await check_served(server, found, result, where)
        repeats, _ = await retry_unknown(traffic, server.target)
        if point == "journal.after_commit":
            repeats_after_commit += repeats
        if point.startswith("settlement"):
            await _settle_again(server, run, result, where)
        server.terminate()
    await server.start()
    await _finish(server, traffic, result, "at the end")
    if point == "journal.after_commit":
        result.check(repeats_after_commit > 0, "no retry came back as a committed original")
        result.note = f"{repeats_after_commit} retried requests answered as their originals"
    return result


def _business_date(run: int) -> str:
    """The business day a settlement run closes: one per run, from the clock's start."""
    day = business_date_of(NOW_MS, "Asia/Shanghai", "04:00") + dt.timedelta(days=run)
    return day.isoformat()


async def _until_death(server: ServerProcess, traffic: Traffic, point: str, run: int) -> bool:
    stop = asyncio.Event()
    clients = asyncio.create_task(traffic.run(server.target, stop))
    if point.startswith("settlement"):
        await asyncio.sleep(0.3)
        await _close_day_and_settle(server.target, run)
    deadline = time.monotonic() + CRASH_WAIT_SECONDS_MAX
    while server.running and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    stop.set()
    code = server.wait_exit(1.0)
    if code is None:
        server.kill()
    await asyncio.wait_for(clients, 30)
    return code == KILLED


async def _close_day_and_settle(target: str, run: int) -> None:
    """Move the manual clock a day on (the day closes), then settle it: the armed
    settlement point kills the server mid-run, so no answer comes."""
    async with channel(target) as chan:
        stubs = Stubs(chan)
        admin = bearer(TOKENS["admin"])
        await stubs.admin.SetClock(
            admin_pb2.SetClockRequest(now_ms=NOW_MS + (run + 1) * 86_400_000), metadata=admin
        )
        request = settlement_pb2.SettlementRequest(business_date=_business_date(run))
        try:
            await stubs.settlement.RunSettlement(
                request, metadata=bearer(TOKENS["finance"]), timeout=20
            )
        except Exception:  # the server died mid-run: that is the point
            return


async def _settle_again(server: ServerProcess, run: int, result: ScenarioResult, where: str):
    """After the restart the day settles (again), the files match the journal, and
    nothing staged is left behind."""
    date = _business_date(run)
    request = settlement_pb2.SettlementRequest(business_date=date)
    async with channel(server.target) as chan:
        stubs = Stubs(chan)
        finance = bearer(TOKENS["finance"])
        ran = await stubs.settlement.RunSettlement(request, metadata=finance, timeout=60)
        got = await stubs.settlement.GetSettlement(request, metadata=finance, timeout=60)
    result.check(ran.manifest_sha256 == got.manifest_sha256, f"{where}: {date} settled twice?")
    leftovers = [n for n in os.listdir(os.path.dirname(ran.output_dir)) if n.endswith(".partial")]
    result.check(not leftovers, f"{where}: staged settlement files left behind: {leftovers}")
