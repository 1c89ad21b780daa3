"""The demo's lost-card story (SPEC §5 rule 8, §6): loss, offline rides, replacement, transfer."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

from rich.console import Console
from rich.table import Table

from clearing.runtime.config import SeedSettings, ServerSettings
from clearing.tools import demo_city as city
from clearing.tools.client import Stubs, bearer
from clearing.v1 import admin_pb2, cards_pb2

LOST_CARD = SeedSettings().first_card_id + 1  # an ADULT card of the demo city
NEW_CARD = 3_200_000_000_000_777
HALL = bearer(city.principal_token("hall-2"))
ADMIN = bearer(city.ADMIN_TOKEN)
HOUR_MS, DAY_MS = 3_600_000, 86_400_000
VALIDATOR, OFFLINE_VALIDATOR, POS = 10_201, 10_202, city.POS_ID_BASE + 2

console = Console(width=120)
ZONE = ZoneInfo(ServerSettings().timezone)


def local_time(ms: int) -> str:
    """An instant as the city's clock shows it (never a raw epoch in front of people)."""
    return dt.datetime.fromtimestamp(ms / 1000, tz=ZONE).strftime(f"%Y-%m-%d %H:%M:%S {ZONE.key}")


async def _card(stubs: Stubs, card_id: int) -> cards_pb2.Card:
    return await stubs.cards.GetCard(cards_pb2.GetCardRequest(card_id=card_id), metadata=HALL)


async def _set_clock(stubs: Stubs, now_ms: int) -> None:
    await stubs.admin.SetClock(admin_pb2.SetClockRequest(now_ms=now_ms), metadata=ADMIN)


async def lost_card_story(stubs: Stubs, terminal_class, row, now: int) -> None:
    """``terminal_class`` and ``row`` are the demo's Terminal and table-row helpers;
    ``now`` the server's clock (ms) as the story begins."""
    bus, offline, pos = (terminal_class(stubs, t) for t in (VALIDATOR, OFFLINE_VALIDATOR, POS))
    table = Table(title="A lost card: loss report, offline rides, replacement, transfer")
    for col in ("step", "status", "charged to", "charged", "discount", "balance after", "journal"):
        table.add_column(col)
    row(
        table,
        "morning ride",
        (await bus.send([(LOST_CARD, bus.next_seq(), 200, now - HOUR_MS, 31)]))[0],
    )
    loss = await stubs.cards.ReportLoss(
        cards_pb2.CardRequest(request_id="demo-loss", card_id=LOST_CARD), metadata=HALL
    )
    blocked_at = loss.card.blocked_at_ms
    state = cards_pb2.CardState.Name(loss.card.state)
    console.print(
        f"hall-2 reports card ****{LOST_CARD % 10_000:04d} lost at {local_time(blocked_at)}: "
        f"it is {state}"
    )
    row(
        table,
        "POS purchase after the report",
        (await pos.send([(LOST_CARD, pos.next_seq(), 500, now, 0)]))[0],
    )
    await _set_clock(stubs, blocked_at + 8 * HOUR_MS)  # the bus depot uploads in the evening
    inside, outside = await offline.send(
        [
            (LOST_CARD, offline.next_seq(), 200, blocked_at + HOUR_MS, 32),
            (LOST_CARD, offline.next_seq(), 200, blocked_at + 7 * HOUR_MS, 33),
        ]
    )
    row(table, "offline ride 1 h after the report (card liable)", inside)
    row(table, "offline ride 7 h after the report (issuer's loss)", outside)
    console.print(table)
    replaced = await stubs.cards.ReplaceCard(
        cards_pb2.ReplaceCardRequest(
            request_id="demo-replace", card_id=LOST_CARD, new_card_id=NEW_CARD
        ),
        metadata=HALL,
    )
    console.print(
        f"replacement card ****{NEW_CARD % 10_000:04d} issued "
        f"({cards_pb2.CardReply.Status.Name(replaced.status)}); the old balance moves after the "
        f"7-day hold, at {local_time(replaced.card.transfer_due_at_ms)}"
    )
    old_balance = inside[5]  # after the last ride charged to the card
    await _set_clock(stubs, replaced.card.transfer_due_at_ms + 1_000)  # a week later
    # A write after the due time: the transfer is journaled before it (SPEC §6).
    topped = await stubs.cards.TopUp(
        cards_pb2.TopUpRequest(request_id="demo-new-top-up", card_id=NEW_CARD, amount_fen=1_000),
        metadata=HALL,
    )
    console.print(
        f"a week later the old balance ({old_balance} fen) moves to the new card; then hall-2 "
        f"tops the new card up by 1000 fen: {cards_pb2.CardReply.Status.Name(topped.status)}, "
        f"balance {topped.card.balance_fen} = {old_balance} + 1000"
    )
    states = Table(title="After the hold: the balance has moved in one journaled transfer")
    for col in ("card", "state", "balance_fen", "deposit_fen"):
        states.add_column(col)
    for card_id in (LOST_CARD, NEW_CARD):
        card = await _card(stubs, card_id)
        states.add_row(
            f"****{card_id % 10_000:04d}", cards_pb2.CardState.Name(card.state),
            str(card.balance_fen), str(card.deposit_fen),
        )  # fmt: skip
    console.print(states)
