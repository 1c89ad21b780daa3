"""The end-of-run check: the server's own totals against what it answered us.

Before and after the run the generator reads the server's Prometheus
counters (taps answered by status, Σ charged by payer) and the balances of a
sample of cards. The counters must have moved by exactly what the answers
add up to, and each sampled balance by its top-ups minus its charges. Any
difference is a tap dropped, counted twice, or applied without being answered.
"""

from __future__ import annotations

import asyncio
import urllib.request
from collections import Counter

from prometheus_client.parser import text_string_to_metric_families

from clearing.client import Stubs, bearer
from clearing.v1 import cards_pb2
from loadgen.tally import STATUS_NAMES, Tally

SCRAPE_TIMEOUT_S = 5.0
BALANCE_READS_IN_FLIGHT = 32


class ServerTotals:
    def __init__(self, taps: Counter[str], charged: Counter[str]) -> None:
        self.taps = taps  # status -> taps answered (DUPLICATE for resubmissions)
        self.charged = charged  # CARD / ISSUER_LOSS -> Σ charged_fen

    def minus(self, before: ServerTotals) -> ServerTotals:
        return ServerTotals(self.taps - before.taps, self.charged - before.charged)


def parse_totals(text: str) -> ServerTotals:
    taps: Counter[str] = Counter()
    charged: Counter[str] = Counter()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "clearing_taps_total":
                taps[sample.labels["status"]] += int(sample.value)
            elif sample.name == "clearing_tap_charged_fen_total":
                charged[sample.labels["charged_to"]] += int(sample.value)
    return ServerTotals(taps, charged)


async def scrape(url: str) -> ServerTotals:
    def get() -> str:
        with urllib.request.urlopen(url, timeout=SCRAPE_TIMEOUT_S) as response:
            return response.read().decode()

    return parse_totals(await asyncio.to_thread(get))


async def balances(stubs: Stubs, hall_token: str, cards: list[int]) -> dict[int, int]:
    gate = asyncio.Semaphore(BALANCE_READS_IN_FLIGHT)

    async def one(card_id: int) -> tuple[int, int]:
        async with gate:
            card = await stubs.cards.GetCard(
                cards_pb2.GetCardRequest(card_id=card_id), metadata=bearer(hall_token)
            )
            return card_id, card.balance_fen

    return dict(await asyncio.gather(*(one(c) for c in cards)))


def verdict(
    tally: Tally,
    served: ServerTotals | None,
    before: dict[int, int],
    after: dict[int, int],
) -> list[str]:
    """Every difference, as a sentence; empty when the server agrees with its answers."""
    problems: list[str] = []
    if tally.taps_uncertain:
        problems.append(
            f"{tally.taps_uncertain} taps were in calls that failed "
            f"({dict(tally.errors)}): their outcome is unknown, the exact checks cannot hold"
        )
    if served is not None:
        for status in STATUS_NAMES:
            ours, theirs = tally.taps_by_status[status], served.taps[status]
            if ours != theirs:
                problems.append(f"taps {status}: answered {ours}, server counted {theirs}")
        for payer in ("CARD", "ISSUER_LOSS"):
            ours, theirs = tally.charged_fen[payer], served.charged[payer]
            if ours != theirs:
                problems.append(
                    f"charged to {payer}: answers add up to {ours} fen, server counted {theirs}"
                )
    for card_id, was in sorted(before.items()):
        expected = was + tally.card_delta_fen[card_id]
        if after.get(card_id) != expected:
            problems.append(
                f"card ****{card_id % 10_000:04d}: balance {after.get(card_id)} fen, "
                f"expected {was} + {tally.card_delta_fen[card_id]} = {expected}"
            )
    return problems
