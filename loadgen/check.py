"""The end-of-run check: the server's own totals against what it answered us.

Before and after the run the generator reads the server's Prometheus
metrics (taps answered by status, Σ charged by payer, and the float: Σ of
every card balance, read from the ledger itself) and the balances of a
sample of cards. The counters must have moved by exactly what the answers
add up to; the float by the answered top-ups minus the answered charges to
cards, so a tap the engine drops or applies twice shows on any card; each
sampled balance by its own top-ups and charges. Every tap sent must be
answered or in a failed call. Any difference is a tap dropped, counted twice,
or applied without being answered.
"""

from __future__ import annotations

import asyncio
import urllib.request
from collections import Counter

from prometheus_client.parser import text_string_to_metric_families

from clearing.tools.client import Stubs, bearer
from clearing.v1 import cards_pb2
from loadgen.tally import STATUS_NAMES, Tally

SCRAPE_TIMEOUT_S = 5.0
BALANCE_READS_IN_FLIGHT = 32


class ServerTotals:
    def __init__(self, taps: Counter[str], charged: Counter[str], float_fen: int) -> None:
        self.taps = taps  # status -> taps answered (DUPLICATE for resubmissions)
        self.charged = charged  # CARD / ISSUER_LOSS -> Σ charged_fen
        self.float_fen = float_fen  # Σ card balances, from the ledger itself

    def minus(self, before: ServerTotals) -> ServerTotals:
        return ServerTotals(
            _delta(self.taps, before.taps),
            _delta(self.charged, before.charged),
            self.float_fen - before.float_fen,
        )


def _delta(after: Counter[str], before: Counter[str]) -> Counter[str]:
    """After minus before, negative differences kept (Counter's ``-`` drops them)."""
    return Counter({key: after[key] - before[key] for key in after.keys() | before.keys()})


def parse_totals(text: str) -> ServerTotals:
    taps: Counter[str] = Counter()
    charged: Counter[str] = Counter()
    float_fen = 0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "clearing_taps_total":
                taps[sample.labels["status"]] += int(sample.value)
            elif sample.name == "clearing_tap_charged_fen_total":
                charged[sample.labels["charged_to"]] += int(sample.value)
            elif sample.name == "clearing_float_fen":
                float_fen = int(sample.value)
    return ServerTotals(taps, charged, float_fen)


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
    if tally.errors:
        problems.append(
            f"calls failed ({dict(tally.errors)}; {tally.taps_uncertain} taps among them): "
            "their outcome is unknown, the exact checks cannot hold"
        )
    unaccounted = tally.taps_offered - tally.taps_answered - tally.taps_uncertain
    if unaccounted:
        problems.append(f"{unaccounted} taps were sent and neither answered nor failed")
    if tally.bad_results:
        problems.append(f"{tally.bad_results} answers contradict themselves (status, sums, seq)")
    if served is not None:
        expected_float = tally.topups_fen - tally.charged_fen["CARD"]
        if served.float_fen != expected_float:
            problems.append(
                f"float (Σ card balances) moved {served.float_fen} fen; the answers say "
                f"top-ups {tally.topups_fen} - charges to cards {tally.charged_fen['CARD']} "
                f"= {expected_float}"
            )
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
        if card_id in tally.uncertain_cards:
            continue  # a failed top-up may or may not have been applied
        expected = was + tally.card_delta_fen[card_id]
        if after.get(card_id) != expected:
            problems.append(
                f"card ****{card_id % 10_000:04d}: balance {after.get(card_id)} fen, "
                f"expected {was} + {tally.card_delta_fen[card_id]} = {expected}"
            )
    return problems
