"""The model's city day against SPEC §1's city, through the real engine, offline.

The plan is applied to a fresh demo city (210,000 cards opened with 50 CNY) by
the engine itself (``clearing.domain.engine.Engine``: rating, balances, declines), in
day mode's order and at its clock (each model minute's events at the minute's
end), with no server in between: the shares below are the engine's answers.
"""

from __future__ import annotations

import collections
import datetime as dt

import pytest

from clearing.codes import CardOpStatus, ChargedTo, TapStatus
from clearing.domain.business_calendar import business_window_ms
from clearing.domain.card_operations import CardRequest
from clearing.domain.engine import Engine
from clearing.domain.entries import SeedEntry
from clearing.limits import RESULT_STRUCT
from clearing.runtime.config_entry import config_entry
from clearing.tools import demo_city
from loadgen.city import city_of
from loadgen.day import CLOCK_END_MARGIN_MS, TICK_MS
from loadgen.model import DAY_MS, HOUR_MS, plan_day

DAY = dt.date(2026, 11, 19)


class Outcome:
    def __init__(self) -> None:
        self.taps: collections.Counter[tuple[str, int]] = collections.Counter()
        self.charged: collections.Counter[str] = collections.Counter()
        self.topups_fen = 0
        self.float_before = self.float_after = 0


def city_day(scale: float, seed: int) -> Outcome:
    config = demo_city.demo_config()
    settings = config.server
    base_ms = business_window_ms(DAY, settings.timezone, settings.cutoff)[0]
    plan = plan_day(city_of(config), scale=scale, seed=seed, base_ms=base_ms, local0_ms=4 * HOUR_MS)
    engine = Engine()
    engine.admin(config_entry(config), base_ms - HOUR_MS)
    s = config.seed
    engine.admin(SeedEntry(s.first_card_id, s.cards, s.opening_balance_fen, s.hall), base_ms - 1)
    while engine.close_day(base_ms) is not None:  # the day before, closed
        pass
    out = Outcome()
    out.float_before = engine.ledger.total_balance_fen()
    events = [(b.send_ms, 0, i) for i, b in enumerate(plan.validator_batches)]
    events += [(b.send_ms, 1, i) for i, b in enumerate(plan.single_taps)]
    events += [(op.send_ms, 2, i) for i, op in enumerate(plan.card_ops)]
    for send_ms, kind, i in sorted(events):
        tick_end = (send_ms // TICK_MS + 1) * TICK_MS
        now = base_ms + min(tick_end, DAY_MS - CLOCK_END_MARGIN_MS)
        if kind == 2:
            op = plan.card_ops[i]
            args = {"TopUp": (op.amount_fen,), "ReplaceCard": (op.new_card_id,)}
            req = CardRequest(op.method, op.card_id, args.get(op.method, ()), op.channel, now)
            _, answer = engine.card_op(f"r-{i}", req)
            if op.method == "TopUp" and answer.status == CardOpStatus.OK:
                out.topups_fen += op.amount_fen
            continue
        batch = (plan.validator_batches if kind == 0 else plan.single_taps)[i]
        what = "BUS" if kind == 0 else "POS"
        if batch.terminal_id > demo_city.BILLING_ID_BASE:
            what = "BILL"
        results = engine.tap_batch(batch.terminal_id, batch.packed_taps, now).body.packed_results
        for status, charged_to, _, charged, *_ in RESULT_STRUCT.iter_unpack(results):
            out.taps[what, status] += 1
            if charged_to == ChargedTo.CARD:  # not the issuer's hot-list loss
                out.charged[what] += charged
    out.float_after = engine.ledger.total_balance_fen()
    return out


@pytest.fixture(scope="module", params=[(1.0, 3), (4.0, 7)], ids=["scale-1", "demo-scale-4"])
def day(request) -> tuple[float, Outcome]:
    scale, seed = request.param
    return scale, city_day(scale, seed)


def share(out: Outcome, what: str, status: TapStatus) -> float:
    total = sum(n for (w, _), n in out.taps.items() if w == what)
    return out.taps[what, status] / total


def test_declines_for_funds_are_a_few_per_cent(day) -> None:
    """Was 33 % of purchases and 64 % of bills: amounts above what the cards hold."""
    _, out = day
    assert 0.005 < share(out, "POS", TapStatus.INSUFFICIENT_FUNDS) < 0.06
    assert 0.005 < share(out, "BILL", TapStatus.INSUFFICIENT_FUNDS) < 0.06
    assert share(out, "BUS", TapStatus.OK) == 1.0  # validators record: rides are never declined


def test_top_ups_are_the_citys_and_the_float_stays_flat(day) -> None:
    """Was top-ups twice the spending: the float grew 2.8 % in a day."""
    scale, out = day
    monthly_cny = out.topups_fen * 30 / scale / 100
    assert 2_200_000 < monthly_cny < 2_600_000  # about 2.4 M CNY a month
    spent = sum(out.charged.values())  # charged to cards
    assert out.float_after - out.float_before == out.topups_fen - spent  # the engine's books
    assert abs(out.topups_fen - spent) < 0.08 * out.topups_fen
    assert abs(out.float_after - out.float_before) < 0.002 * out.float_before


def test_the_volumes_are_the_citys(day) -> None:
    scale, out = day
    counts = collections.Counter()
    for (what, _), n in out.taps.items():
        counts[what] += n
    assert 800_000 < counts["BUS"] * 30 / scale < 900_000  # 850,000 bus taps a month
    assert counts["POS"] * 30 / scale == 60_000 and counts["BILL"] * 30 / scale == 30_000
