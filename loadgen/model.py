"""A seeded model of one city day (SPEC §1): bus rides, shopping, bills, card ops.

``plan_day(scale=1.0)`` is the reference city's day (850,000 bus taps and 60,000
merchant payments a month). Drawn with numpy in whole arrays, so a 10-million-tap
day takes seconds, from seeded PCG64 streams, so the same arguments give the same
plan byte for byte. Big arrays cost more to allocate than to compute: the bus path
draws each value once, by inverse CDF, and sorts as little as it can.
"""

from __future__ import annotations

import bisect
import gc
import itertools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
from numpy.random import PCG64, Generator, SeedSequence

from clearing import limits
from loadgen.city import City
from loadgen.draws import DAY_MS, HOUR_MS, MINUTE_MS, draw_times, log_normal
from loadgen.plan import CardOp, DayPlan, TapBatch

# SPEC §9 canonical tap bytes, exactly limits.TAP_STRUCT records.
TAP_DTYPE = np.dtype(
    [("card", ">u8"), ("seq", ">u8"), ("list", ">i8"), ("occurred", ">i8"), ("route", ">u4")]
)
assert TAP_DTYPE.itemsize == limits.TAP_BYTES == 36

# Daily volumes at scale 1: SPEC §1's city a month (850,000 bus taps, 60,000 merchant
# and 30,000 utility payments, about 2.4 M CNY of top-ups) / 30.
BUS_TAPS_PER_DAY = 28_300
TRANSFER_SHARE = 0.20  # journeys with a second leg on another route
TRANSFER_GAP_MS = (5 * MINUTE_MS, 80 * MINUTE_MS)  # inside the 90-minute window
POS_PER_DAY = 2_000
BILLS_PER_DAY = 1_000
TOPUPS_PER_DAY = 1_600  # x TOPUP_MEAN_FEN: 8.0 M fen, what the cards spend: the float stays flat
HALL_TOPUP_SHARE = 0.30  # the rest at agents

# Relative activity by hour of day, 00..23: rush hours 07-09 and 17-19, quiet nights.
BUS_PROFILE = (
    *(0.3, 0.1, 0.05, 0.05, 0.2, 1.0),  # 00-05: night
    *(3.0, 8.0, 8.0, 4.0, 3.0, 3.0),  # 06-11: morning rush
    *(3.5, 3.0, 3.0, 3.5, 5.0, 8.0),  # 12-17
    *(8.0, 4.0, 3.0, 2.0, 1.0, 0.5),  # 18-23: evening rush, then quiet
)
SHOP_PROFILE = (0,) * 9 + (2, 3, 4, 5, 4, 3, 3, 4, 5, 6, 6, 4) + (0,) * 3  # 09-21
HALL_PROFILE = (0,) * 9 + (4, 5, 5, 3, 4, 5, 5, 4) + (0,) * 7  # 09-17
AGENT_PROFILE = (0,) * 7 + (2, 4, 4, 4, 4, 4, 4, 4, 4, 4, 5, 5, 5, 4, 3) + (0,) * 2  # 07-22
assert all(len(p) == 24 for p in (BUS_PROFILE, SHOP_PROFILE, HALL_PROFILE, AGENT_PROFILE))

# Flat list fares: the server applies concessions and transfer discounts.
FARES_FEN = {"op-bus-1": 200, "op-bus-2": 200, "op-bus-3": 300}
DEFAULT_FARE_FEN = 200
ROUTES_PER_OPERATOR = 10
# Card payments are small (breakfast, a market stall, a convenience store; water and
# telephone bills): log-normal list amounts, median and spread, clipped to a range. With
# the bus fares (about 4.8 M fen a day) they spend what the top-ups bring, and few exceed
# a card's balance (the city opens cards with 50 CNY): a few per cent are declined.
POS_LIST_FEN = (100, 20_000)
POS_MEDIAN_FEN, POS_SIGMA = 900, 1.0  # mean list about 1,480 fen, charged about 1,200
BILLING_LIST_FEN = (100, 30_000)
BILLING_MEDIAN_FEN, BILLING_SIGMA = 850, 0.8  # mean about 1,170 fen
TOPUP_FEN = (2_000, 3_000, 5_000, 10_000)  # what people hand over at the counter
TOPUP_WEIGHTS = (0.2, 0.2, 0.4, 0.2)  # mean 5,000 fen
MERCHANT_ZIPF = 0.9  # a few busy supermarkets, a long tail of small shops

# Offline validators: a bus uploads at the depot (every 2-4 h) or when a batch is
# full, 1-20 min after its last tap; ~2 % of buses only upload at the end of day.
DEPOT_PERIOD_MS = (2 * HOUR_MS, 4 * HOUR_MS)
UPLOAD_DELAY_MS = (1 * MINUTE_MS, 20 * MINUTE_MS)
LATE_SHARE = 0.02
LATE_SEND_MS = DAY_MS - 1_000

# Card activity tiers (share of cards, relative use per card): commuters ride a lot,
# most citizens rarely; a fixed permutation scatters the tiers over the id range.
CARD_TIERS = ((0.05, 20.0), (0.25, 4.0), (0.70, 1.0))
LOSS_REPLACE_GAP_MS = (10 * MINUTE_MS, 3 * HOUR_MS)
NEW_CARDS_PER_SEED = 1_000_000  # replacement card ids: a disjoint block per seed % 1000

CardPicker = Callable[[Generator, int], np.ndarray]


@dataclass(frozen=True)
class _Day:
    """What every part of the model needs besides its own random stream."""

    city: City
    scale: float
    seed: int
    base_ms: int
    batch_taps: int
    local0_ms: int  # local time of day at model time 0 (ms since local midnight)
    bases: Mapping[int, int]  # terminal id -> the last terminal_seq it used
    pick_cards: CardPicker


def plan_day(
    city: City,
    *,
    scale: float,
    seed: int,
    base_ms: int,
    batch_taps: int = 500,
    seq_base: Mapping[int, int] | None = None,
    local0_ms: int = 0,
) -> DayPlan:
    """One city day; ``seq_base`` maps a terminal id to the last terminal_seq it used;
    ``local0_ms`` is the local time of day at ``base_ms`` (4 h for a day that starts at
    a 04:00 cutoff), so that rush hours fall on the city's clock
    (``loadgen.draws.local_ms_of_day``)."""
    assert scale > 0 and batch_taps > 0 and 0 <= local0_ms < DAY_MS
    bases = dict(seq_base or {})
    day = _Day(city, scale, seed, base_ms, batch_taps, local0_ms, bases, _card_picker(city))
    # Independent streams: changing one part of the model leaves the others as they were.
    bus, upload, shop, ops = (Generator(PCG64(s)) for s in SeedSequence(seed).spawn(4))
    plan = DayPlan(base_ms=base_ms)
    # Millions of small acyclic objects: the cycle collector would only rescan them.
    collecting = gc.isenabled()
    gc.disable()
    try:
        if city.validators:
            net = _network(city)
            plan.validator_batches = _validator_batches(upload, day, net, _bus_legs(bus, day, net))
        plan.single_taps = _single_taps(shop, day)
        plan.card_ops = _card_ops(ops, day)
    finally:
        if collecting:
            gc.enable()
    return plan


def _card_picker(city: City) -> CardPicker:
    """Skewed draws from the seeded card range; the skew is the city's, not the day's."""
    n = city.card_count
    fracs = np.array([f for f, _ in CARD_TIERS])
    use = fracs * np.array([w for _, w in CARD_TIERS])
    cdf = np.concatenate(([0.0], np.cumsum(use) / use.sum()))
    edges = np.concatenate(([0.0], np.cumsum(fracs))) * n
    mult = 2_654_435_761 % n  # multiplying mod n by a unit permutes 0..n-1
    while math.gcd(mult, n) != 1:
        mult += 1

    def pick(rng: Generator, count: int) -> np.ndarray:
        raw = np.interp(rng.random(count), cdf, edges).astype(np.int64)
        np.minimum(raw, n - 1, out=raw)
        raw *= mult
        raw %= n
        raw += city.first_card_id
        return raw

    return pick


@dataclass(frozen=True)
class _Network:
    route_ids: np.ndarray  # per route
    fares: np.ndarray  # per route: the operator's list fare
    buses: np.ndarray  # validator indices grouped by route
    first_bus: np.ndarray  # per route: offset into ``buses``
    bus_count: np.ndarray  # per route
    route_of: np.ndarray  # per validator: a bus serves one route all day


def _network(city: City) -> _Network:
    """Each operator's validators are buses on its routes: ids 11..20, 21..30, ..."""
    operators = list(dict.fromkeys(t.party_id for t in city.validators))
    route_ids: list[int] = []
    fares: list[int] = []
    groups: list[list[int]] = []
    for i, op in enumerate(operators):
        mine = [k for k, t in enumerate(city.validators) if t.party_id == op]
        routes = min(ROUTES_PER_OPERATOR, len(mine))
        for r in range(routes):
            route_ids.append(10 * (i + 1) + 1 + r)
            fares.append(FARES_FEN.get(op, DEFAULT_FARE_FEN))
            groups.append(mine[r::routes])
    counts = np.array([len(g) for g in groups], dtype=np.int64)
    route_of = np.zeros(len(city.validators), dtype=np.int64)
    for r, group in enumerate(groups):
        route_of[group] = r
    return _Network(
        route_ids=np.array(route_ids, dtype=np.int64),
        fares=np.array(fares, dtype=np.int64),
        buses=np.array([k for g in groups for k in g], dtype=np.int32),
        first_bus=np.concatenate(([0], np.cumsum(counts)[:-1])),
        bus_count=counts,
        route_of=route_of,
    )


def _bus_legs(rng: Generator, day: _Day, net: _Network) -> tuple[np.ndarray, ...]:
    """Journeys, ~20 % with a transfer leg on a different route 5-80 min later.

    Returns taps per validator, then the taps' model times and cards grouped by
    validator and in time order within each: the order its validator numbers them.
    """
    routes = len(net.route_ids)
    journeys = round(day.scale * BUS_TAPS_PER_DAY / (1 + TRANSFER_SHARE))
    # Journeys are interchangeable until their other fields are drawn: starting them in
    # time order makes the final (validator, time) ordering cheap.
    start = draw_times(rng, journeys, BUS_PROFILE, day.local0_ms, ascending=True)
    # A route in proportion to its buses, then a bus on it: any bus, uniformly.
    bus = rng.integers(0, len(net.route_of), size=journeys, dtype=np.int32)
    card = day.pick_cards(rng, journeys)
    chosen = np.flatnonzero(rng.random(journeys) < TRANSFER_SHARE)
    if routes < 2:  # nowhere to transfer to
        chosen = chosen[:0]
    then = start[chosen] + rng.integers(TRANSFER_GAP_MS[0], TRANSFER_GAP_MS[1] + 1, len(chosen))
    inside = then < DAY_MS  # a transfer must still fall inside the day
    later = np.argsort(then[inside], kind="stable")
    chosen, then = chosen[inside][later], then[inside][later]
    other = (net.route_of[bus[chosen]] + rng.integers(1, max(routes, 2), len(chosen))) % routes
    pick = rng.integers(0, net.bus_count[other])
    occurred = np.concatenate((start, then))
    bus = np.concatenate((bus, net.buses[net.first_bus[other] + pick]))
    card = np.concatenate((card, card[chosen]))
    del start, then  # 10M-tap days: keep memory in check
    by_time = np.argsort(occurred, kind="stable")  # two sorted runs: a linear merge
    occurred, card, bus = occurred[by_time], card[by_time], bus[by_time]
    key = bus.astype(np.uint16) if len(net.route_of) <= 1 << 16 else bus
    by_bus = np.argsort(key, kind="stable")  # numpy sorts 16-bit keys by radix: linear time
    counts = np.bincount(bus, minlength=len(net.route_of))
    return counts, occurred[by_bus], card[by_bus]


def _pack(
    card: np.ndarray, seq: np.ndarray, amount: np.ndarray | int, occurred: np.ndarray, route: int
) -> bytes:
    out = np.empty(len(card), dtype=TAP_DTYPE)
    out["card"], out["seq"], out["list"] = card, seq, amount
    out["occurred"], out["route"] = occurred, route
    return out.tobytes()


def _validator_batches(
    rng: Generator, day: _Day, net: _Network, legs: tuple[np.ndarray, ...]
) -> list[TapBatch]:
    """Offline uploads: per bus, a batch per depot visit or per ``batch_taps`` taps."""
    counts, occurred, card = legs
    batch_taps, validators = day.batch_taps, day.city.validators
    nv = len(validators)
    period = rng.integers(DEPOT_PERIOD_MS[0], DEPOT_PERIOD_MS[1] + 1, size=nv)
    first_depot = rng.integers(1, period + 1)
    late = set(rng.choice(nv, size=max(1, round(LATE_SHARE * nv)), replace=False).tolist())
    ends = np.cumsum(counts).tolist()
    spans: list[tuple[int, int, int]] = []  # (validator, first tap, end tap)
    for k in range(nv):
        a, b = ends[k] - int(counts[k]), ends[k]
        cuts = [a, b]
        if k not in late:  # a late bus keeps everything until the end of the day
            depots = np.arange(first_depot[k], DAY_MS, period[k])
            cuts[1:1] = (a + np.searchsorted(occurred[a:b], depots)).tolist()
        for x, y in itertools.pairwise(cuts):
            spans += [(k, c, min(c + batch_taps, y)) for c in range(x, y, batch_taps)]
    delays = rng.integers(UPLOAD_DELAY_MS[0], UPLOAD_DELAY_MS[1] + 1, size=len(spans)).tolist()
    batches: list[TapBatch] = []
    for (k, a, b), delay in zip(spans, delays, strict=True):
        tid, route = validators[k].terminal_id, int(net.route_of[k])
        last = int(occurred[b - 1])
        send = max(LATE_SEND_MS, last) if k in late else min(last + delay, DAY_MS - 1)
        if batches and batches[-1].terminal_id == tid:  # a bus uploads its batches in order
            send = max(send, batches[-1].send_ms)
        seq = day.bases.get(tid, 0) + a - (ends[k] - int(counts[k])) + 1  # a bus numbers its taps
        fare, route_id = int(net.fares[route]), int(net.route_ids[route])
        seqs, when = np.arange(seq, seq + b - a), day.base_ms + occurred[a:b]
        batches.append(TapBatch(send, tid, _pack(card[a:b], seqs, fare, when, route_id)))
    batches.sort(key=lambda batch: (batch.send_ms, batch.terminal_id))  # stable: seq order kept
    return batches


def _single_taps(rng: Generator, day: _Day) -> list[TapBatch]:
    """Online POS payments and bills: one tap per call, sent as it happens."""
    city, scale = day.city, day.scale
    terminals = (*city.pos, *city.billing)
    n_pos = round(scale * POS_PER_DAY) if city.pos else 0
    n_bill = round(scale * BILLS_PER_DAY) if city.billing else 0
    zipf = 1.0 / np.arange(1, len(city.pos) + 1) ** MERCHANT_ZIPF
    terminal = np.concatenate(
        (
            rng.choice(len(city.pos), size=n_pos, p=zipf / zipf.sum()),
            len(city.pos) + rng.integers(0, max(len(city.billing), 1), size=n_bill),
        )
    ).astype(np.int64)
    amount = np.concatenate(
        (
            log_normal(rng, n_pos, POS_LIST_FEN, (POS_MEDIAN_FEN, POS_SIGMA), 10),
            log_normal(rng, n_bill, BILLING_LIST_FEN, (BILLING_MEDIAN_FEN, BILLING_SIGMA), 10),
        )
    )
    occurred = draw_times(rng, n_pos + n_bill, SHOP_PROFILE, day.local0_ms)
    card = day.pick_cards(rng, n_pos + n_bill)
    order = np.lexsort((occurred, terminal))
    terminal, occurred, card, amount = terminal[order], occurred[order], card[order], amount[order]
    # terminal_seq: base+1, base+2, ... per terminal, in time order
    firsts = np.searchsorted(terminal, np.arange(len(terminals)))
    base = np.array([day.bases.get(t.terminal_id, 0) for t in terminals], dtype=np.int64)
    seq = base[terminal] + np.arange(len(terminal)) - firsts[terminal] + 1
    packed = _pack(card, seq, amount, day.base_ms + occurred, 0)
    ids = np.array([t.terminal_id for t in terminals], dtype=np.int64)[terminal]
    by_send = np.lexsort((seq, ids, occurred)).tolist()
    sends, tids = occurred.tolist(), ids.tolist()
    return [TapBatch(sends[i], tids[i], packed[i * 36 : (i + 1) * 36]) for i in by_send]


def _card_ops(rng: Generator, day: _Day) -> list[CardOp]:
    """Loss reports (half replaced later that day) and top-ups, by send time."""
    city, halls = day.city, [party for party, _ in day.city.halls]
    n_lost = max(2, round(2 * math.sqrt(day.scale)))
    draws = day.pick_cards(rng, 4 * n_lost + 16)
    lost = draws[np.sort(np.unique(draws, return_index=True)[1])][:n_lost].tolist()  # distinct
    lost_at = draw_times(rng, len(lost), HALL_PROFILE, day.local0_ms).tolist()
    report_at = rng.integers(0, len(halls), size=len(lost)).tolist()
    ops = [
        CardOp(t, "ReportLoss", halls[h], c)
        for t, c, h in zip(lost_at, lost, report_at, strict=True)
    ]
    replace_at = rng.integers(0, len(halls), size=len(lost) // 2).tolist()
    gaps = rng.integers(LOSS_REPLACE_GAP_MS[0], LOSS_REPLACE_GAP_MS[1] + 1, len(lost) // 2)
    new_id = city.first_card_id + city.card_count + NEW_CARDS_PER_SEED * (day.seed % 1000)
    for k, (gap, h) in enumerate(zip(gaps.tolist(), replace_at, strict=True)):
        when = min(lost_at[k] + gap, DAY_MS - 1)
        ops.append(CardOp(when, "ReplaceCard", halls[h], lost[k], new_card_id=new_id + k + 1))
    topups = _topups(rng, day, dict(zip(lost, lost_at, strict=True)))
    # The few loss operations go in before top-ups of the same ms; inserting the latest
    # first keeps the earlier positions valid.
    sends = [op.send_ms for op in topups]
    for op in sorted(ops, key=lambda op: (op.send_ms, op.method, op.card_id), reverse=True):
        topups.insert(bisect.bisect_left(sends, op.send_ms), op)
    return topups


def _topups(rng: Generator, day: _Day, lost_at: dict[int, int]) -> list[CardOp]:
    """30 % at halls, 70 % at agents; 1M+ at large scales, so sorted in numpy."""
    halls = [party for party, _ in day.city.halls]
    agents = [party for party, _ in day.city.agents] or halls
    n = round(day.scale * TOPUPS_PER_DAY)
    at_hall = rng.random(n) < HALL_TOPUP_SHARE
    local0 = day.local0_ms
    when = np.where(
        at_hall, draw_times(rng, n, HALL_PROFILE, local0), draw_times(rng, n, AGENT_PROFILE, local0)
    )
    channel = np.where(
        at_hall, rng.integers(0, len(halls), n), len(halls) + rng.integers(0, len(agents), n)
    )
    amount = rng.choice(np.array(TOPUP_FEN, dtype=np.int64), size=n, p=TOPUP_WEIGHTS)
    card = day.pick_cards(rng, n)
    keep = np.ones(n, dtype=bool)
    for c, t in lost_at.items():  # a LOST card takes no top-ups (SPEC §6)
        keep &= (card != c) | (when < t)
    order = np.flatnonzero(keep)[np.lexsort((card[keep], when[keep]))]
    names = np.array(halls + agents, dtype=object)[channel[order]].tolist()
    rows = zip(
        when[order].tolist(), names, card[order].tolist(), amount[order].tolist(), strict=True
    )
    return [CardOp(t, "TopUp", ch, c, amount_fen=a) for t, ch, c, a in rows]
