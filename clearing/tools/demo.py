"""`make demo`: a real server on the demo city, taps of every kind, the outcomes.

Starts `clearing serve` as a child process on loopback with a fresh data
directory, plays a short story through gRPC (rides, a transfer, a discounted
purchase, a bill, every rejection of SPEC §5, a lost card), then a compressed
city day through the load generator (``loadgen``: validators uploading
offline batches, POS and billing taps, top-ups, losses, replacements) on a
business day the server's manual clock follows, checks the server's totals
against the answers, settles that day, stops the server with SIGTERM and
verifies the journal offline.

The demo runs on a fixed calendar (the server's manual clock starts at
``STORY_START``, whatever today is) and a fixed seed, so every run settles the
same day to the same files, byte for byte.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import shutil
import signal
import subprocess
from zoneinfo import ZoneInfo

from rich.console import Console
from rich.table import Table

from clearing.codes import CardType, ChargedTo, TapStatus
from clearing.domain.business_calendar import business_window_ms
from clearing.domain.engine import seed_card_type
from clearing.errors import ClearingError
from clearing.runtime.config import SeedSettings, ServerSettings, dump_config
from clearing.settlement.report import money
from clearing.tools import demo_city as city
from clearing.tools.client import (
    Stubs,
    bearer,
    channel,
    free_port,
    serve_command,
    signed_batch,
    top_up,
    unpack_results,
    wait_serving,
)
from clearing.tools.demo_lost_card import lost_card_story
from clearing.v1 import admin_pb2, cards_pb2, settlement_pb2

console = Console()
if not console.is_terminal:  # logs and CI: wide enough for the outcome table
    console = Console(width=120)
FIRST = SeedSettings().first_card_id
HALL = city.principal_token("hall-1")
AGENT = city.principal_token("agent-07")
CITY_DAY_SCALE = 4.0  # x the reference city's day: about 113,000 bus taps, 24,000 calls
CITY_DAY_SECONDS = 30.0  # the day compressed into this
CITY_DAY_SEED = 7
# A fixed calendar: the story on a Monday morning, the city day a Thursday ten days
# later (after the lost card's week: the clock only moves on).
STORY_DAY = dt.date(2026, 11, 9)
STORY_START = dt.datetime(2026, 11, 9, 10, 0, tzinfo=ZoneInfo(ServerSettings().timezone))
CITY_DAY_AHEAD_DAYS = 10
SERVER_START_SECONDS_MAX = 120.0


def _card_of_type(card_type: CardType, skip: int = 0) -> int:
    found = [i for i in range(200) if seed_card_type(i) == card_type]
    return FIRST + found[skip]


ADULT, STUDENT, ELDERLY = (
    _card_of_type(t) for t in (CardType.ADULT, CardType.STUDENT, CardType.ELDERLY)
)
VALIDATOR_1, VALIDATOR_2 = 10_001, 10_101  # op-bus-1 route 11, op-bus-2 route 21
POS, BILLING = city.POS_ID_BASE + 1, city.BILLING_ID_BASE + 1


class Terminal:
    """A terminal with its own sequence numbers and key."""

    def __init__(self, stubs: Stubs, terminal_id: int) -> None:
        self.stubs, self.id, self.seq = stubs, terminal_id, 0
        self.key = city.terminal_key(terminal_id)

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq

    async def send(self, taps) -> list[tuple[int, ...]]:
        reply = await self.stubs.taps.SubmitTaps(
            signed_batch(self.id, self.key, taps), metadata=bearer(city.terminal_token(self.id))
        )
        return unpack_results(reply)


def _row(table: Table, what: str, result: tuple[int, ...]) -> None:
    status, charged_to, duplicate, charged, discount, balance, seq = result
    table.add_row(
        what,
        TapStatus(status).name + (" (duplicate)" if duplicate else ""),
        ChargedTo(charged_to).name.replace("CHARGED_TO_", ""),
        str(charged),
        str(discount),
        str(balance),
        str(seq),
    )


async def _story(stubs: Stubs, now: int) -> None:
    v1, v2, pos, bill = (Terminal(stubs, t) for t in (VALIDATOR_1, VALIDATOR_2, POS, BILLING))
    table = Table(title="Taps and their outcomes")
    for col in ("tap", "status", "charged to", "charged", "discount", "balance after", "journal"):
        table.add_column(col)
    rides = [
        (ADULT, v1.next_seq(), 200, now - 1_800_000, 11),
        (STUDENT, v1.next_seq(), 200, now - 1_790_000, 11),
        (ELDERLY, v1.next_seq(), 200, now - 1_780_000, 11),
    ]
    for tap, result in zip(rides, await v1.send(rides), strict=True):
        _row(table, f"bus ride, route 11, {CardType(seed_card_type(tap[0] - FIRST)).name}", result)
    _row(
        table,
        "transfer to route 21 within 90 min",
        (await v2.send([(ADULT, v2.next_seq(), 200, now - 600_000, 21)]))[0],
    )
    _row(
        table,
        "POS purchase list 1288 at 7.7 折",
        (await pos.send([(ADULT, pos.next_seq(), 1_288, now, 0)]))[0],
    )
    _row(
        table, "water bill 3000", (await bill.send([(STUDENT, bill.next_seq(), 3_000, now, 0)]))[0]
    )
    _row(table, "same bus batch again (retry)", (await v1.send(rides))[0])
    _row(table, "same seq, other amount", (await v1.send([(ADULT, 1, 999, now, 11)]))[0])
    _row(table, "amount 0", (await pos.send([(ADULT, pos.next_seq(), 0, now, 0)]))[0])
    _row(
        table,
        "tap 8 days old",
        (await v1.send([(ADULT, v1.next_seq(), 200, now - 8 * 86_400_000, 11)]))[0],
    )
    _row(
        table,
        "tap 1 h in the future",
        (await v1.send([(ADULT, v1.next_seq(), 200, now + 3_600_000, 11)]))[0],
    )
    _row(table, "unknown card", (await pos.send([(42, pos.next_seq(), 500, now, 0)]))[0])
    _row(
        table,
        "bill larger than balance",
        (await bill.send([(STUDENT, bill.next_seq(), 9_000, now, 0)]))[0],
    )
    console.print(table)
    reply = await top_up(stubs, AGENT, "demo-topup-1", STUDENT, 2_000)
    console.print(
        f"top-up of 2000 fen at agent-07: {cards_pb2.CardReply.Status.Name(reply.status)}, "
        f"balance now {reply.card.balance_fen}"
    )


async def _balances(stubs: Stubs) -> None:
    table = Table(title="Cards after the story (opening balance 5000 fen)")
    for col in ("card", "type", "state", "balance_fen"):
        table.add_column(col)
    for card_id in (ADULT, STUDENT, ELDERLY):
        card = await stubs.cards.GetCard(
            cards_pb2.GetCardRequest(card_id=card_id), metadata=bearer(HALL)
        )
        table.add_row(
            f"****{card_id % 10_000:04d}",
            cards_pb2.CardType.Name(card.card_type),
            cards_pb2.CardState.Name(card.state),
            str(card.balance_fen),
        )
    console.print(table)


async def _settle(stubs: Stubs, business_date: str) -> tuple[int, str]:
    """The night's settlement of the demo's first day (the clock is a week on by now)."""
    reply = await stubs.settlement.RunSettlement(
        settlement_pb2.SettlementRequest(business_date=business_date),
        metadata=bearer(city.FINANCE_TOKEN),
    )
    table = Table(title=f"Settlement of {business_date}: the largest payments (CNY)")
    for col in ("party", "role", "count", "gross", "fee", "net", "direction"):
        table.add_column(
            col, justify="right" if col in ("count", "gross", "fee", "net") else "left"
        )
    Direction = settlement_pb2.PartySettlement.Direction
    largest = sorted(reply.parties, key=lambda p: (-abs(p.net_fen), p.party_id))[:8]
    for p in largest:
        table.add_row(
            p.party_id,
            admin_pb2.PartyRole.Name(p.role),
            str(p.count),
            money(p.gross_fen),
            money(p.fee_fen),
            money(p.net_fen),
            Direction.Name(p.direction),
        )
    console.print(table)
    i = reply.issuer
    console.print(
        f"{reply.tap_count:,} taps; pay {money(reply.total_paid_fen)}, collect "
        f"{money(reply.total_collected_fen)}; float {money(i.float_opening_fen)} -> "
        f"{money(i.float_closing_fen)}; issuer net {money(i.net_fen)}; "
        f"{reply.exception_count} exception rows"
    )
    console.print(f"report for the finance team: {reply.output_dir}/report.html")
    return reply.tap_count, reply.output_dir


async def _city_day(
    target: str, metrics_url: str, day: dt.date, scale: float, seconds: float
) -> int:
    """A compressed city day through the load generator, on the server's business day."""
    from loadgen.report import print_results
    from loadgen.run import Options
    from loadgen.session import Session

    days = ServerSettings()
    base_ms = business_window_ms(day, days.timezone, days.cutoff)[0]  # 04:00 local
    console.print(
        f"[bold]A city day[/] ({day}, {days.cutoff} to {days.cutoff}, {scale:g} x the "
        f"reference city, seed {CITY_DAY_SEED}) compressed into {seconds:g} s through the "
        "load generator: its taps/s are the day's pace, not the engine's capacity "
        "(`clearing loadgen --mode max` measures that)"
    )
    opts = Options("day", seconds, drive_clock=True)
    session = Session(
        target,
        city.demo_config(),
        opts,
        scale=scale,
        seed=CITY_DAY_SEED,
        metrics_url=metrics_url,
        base_ms=base_ms,
        console=console,
    )
    result = await session.run()
    print_results(console, result)
    if not result["check"]["passed"]:
        raise ClearingError("the end-of-run check failed: see the problems above")
    return result["taps_answered"]


async def _play(
    target: str, metrics_url: str, server: subprocess.Popen, scale: float, seconds: float
) -> str:
    """The story, the lost card, the city day and its settlement; the settlement's
    directory."""
    await wait_serving(target, server, SERVER_START_SECONDS_MAX)
    days = ServerSettings()  # the demo city's business days
    start_ms = int(STORY_START.timestamp() * 1000)
    city_day = STORY_DAY + dt.timedelta(days=CITY_DAY_AHEAD_DAYS)  # after the lost card's week
    async with channel(target) as chan:
        stubs = Stubs(chan)
        await _story(stubs, start_ms)
        await _balances(stubs)
        await lost_card_story(stubs, Terminal, _row, start_ms)  # it moves the clock a week on
        answered = await _city_day(target, metrics_url, city_day, scale, seconds)
        end_ms = business_window_ms(city_day, days.timezone, days.cutoff)[1]
        await stubs.admin.SetClock(
            admin_pb2.SetClockRequest(now_ms=end_ms + 1_000), metadata=bearer(city.ADMIN_TOKEN)
        )
        settled, output_dir = await _settle(stubs, city_day.isoformat())
        if settled != answered:  # every tap of the city day belongs to that business day
            raise ClearingError(f"the settlement counts {settled} taps, the day sent {answered}")
    return output_dir


def _write_config(data_dir: str) -> str:
    """The demo city with its manual clock at ``STORY_START``: a fixed calendar."""
    config = city.demo_config(data_dir=data_dir)
    config.server.manual_clock = True  # so the demo can let a week pass for the replacement
    config.server.manual_clock_start_ms = int(STORY_START.timestamp() * 1000)
    os.makedirs(data_dir, exist_ok=True)
    path = os.path.join(data_dir, "demo-city.toml")
    with open(path, "w", encoding="utf-8") as f:
        f.write(dump_config(config))
    return path


def run_demo(
    data_dir: str,
    *,
    scale: float = CITY_DAY_SCALE,
    seconds: float = CITY_DAY_SECONDS,
    verify: bool = True,
) -> str:
    """The whole demo on a fresh ``data_dir``; returns the city day's settlement directory."""
    shutil.rmtree(data_dir, ignore_errors=True)
    target = f"127.0.0.1:{free_port()}"
    metrics = target
    while metrics == target:  # two free ports, not the same one twice
        metrics = f"127.0.0.1:{free_port()}"
    console.print(f"[bold]Starting the engine on the demo city[/] ({target}, data in {data_dir}/)")
    server = subprocess.Popen(
        serve_command(target, metrics, config=_write_config(data_dir)),
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        output_dir = asyncio.run(_play(target, f"http://{metrics}/metrics", server, scale, seconds))
    finally:
        server.send_signal(signal.SIGTERM)
        code = server.wait(timeout=60)
    console.print(f"server stopped (exit {code})")
    if verify:
        from clearing.storage.verify import verify_journal

        console.print(verify_journal(data_dir))
    return output_dir
