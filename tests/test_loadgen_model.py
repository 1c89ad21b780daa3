"""The city-day model: reproducible, scaled, and valid input for the engine (SPEC §4-§6, §9)."""

from __future__ import annotations

import collections
import itertools
import math

import pytest

from clearing.limits import TAP_STRUCT
from clearing.tools import demo_city
from loadgen.city import City, city_of
from loadgen.model import DAY_MS, HOUR_MS, LATE_SEND_MS, MINUTE_MS, TAP_DTYPE, plan_day
from loadgen.plan import DayPlan, TapBatch

BASE_MS = 1_900_000_000_000
BATCH_TAPS = 200
SEQ_BASE = {10001: 41, 10150: 7, 30001: 9, 50002: 1_000}


@pytest.fixture(scope="module")
def city() -> City:
    return city_of(demo_city.demo_config())


@pytest.fixture(scope="module")
def plan(city: City) -> DayPlan:
    return plan_day(
        city, scale=1.0, seed=7, base_ms=BASE_MS, batch_taps=BATCH_TAPS, seq_base=SEQ_BASE
    )


def taps(batches: list[TapBatch]) -> list[tuple[int, int, int, int, int]]:
    """(card, seq, list, occurred, route) of every tap, in plan order."""
    return [t for b in batches for t in TAP_STRUCT.iter_unpack(b.packed_taps)]


def test_same_arguments_give_the_same_plan_byte_for_byte(city: City, plan: DayPlan) -> None:
    again = plan_day(
        city, scale=1.0, seed=7, base_ms=BASE_MS, batch_taps=BATCH_TAPS, seq_base=SEQ_BASE
    )
    assert again == plan
    assert b"".join(b.packed_taps for b in again.validator_batches) == b"".join(
        b.packed_taps for b in plan.validator_batches
    )


def test_another_seed_gives_another_day(city: City, plan: DayPlan) -> None:
    other = plan_day(
        city, scale=1.0, seed=8, base_ms=BASE_MS, batch_taps=BATCH_TAPS, seq_base=SEQ_BASE
    )
    assert other.validator_batches != plan.validator_batches
    assert other.single_taps != plan.single_taps
    assert other.card_ops != plan.card_ops


def test_volumes_are_the_reference_day_times_scale(city: City, plan: DayPlan) -> None:
    assert 27_000 < plan.validator_taps < 29_500  # 850,000 a month
    pos = sum(1 for b in plan.single_taps if b.terminal_id < demo_city.BILLING_ID_BASE)
    assert pos == 2_000 and len(plan.single_taps) - pos == 1_000  # 60,000 and 30,000 a month
    big = plan_day(city, scale=4.0, seed=7, base_ms=BASE_MS)
    assert 3.8 < big.validator_taps / plan.validator_taps < 4.2
    assert len(big.single_taps) == 4 * len(plan.single_taps)
    methods = collections.Counter(op.method for op in big.card_ops)
    assert methods["ReportLoss"] == 4 and methods["ReplaceCard"] == 2  # max(2, 2*sqrt(4))
    assert 6_300 < methods["TopUp"] <= 6_400  # 1,600 a day at scale 1


def test_rush_hours_are_busy_and_nights_quiet(plan: DayPlan) -> None:
    hours = collections.Counter((t[3] - BASE_MS) // HOUR_MS for t in taps(plan.validator_batches))
    morning, evening = hours[7] + hours[8], hours[17] + hours[18]
    night = hours[2] + hours[3]
    assert morning > 20 * night and evening > 20 * night
    assert morning > 2 * (hours[13] + hours[14])


def test_the_hours_are_local_wherever_the_model_day_starts(city: City) -> None:
    """A business day from the 04:00 cutoff: model time 0 is 04:00, the rushes stay at
    07-09 and 17-19 local, the shops open 09-21 local (not 13:00-01:00)."""
    start = plan_day(city, scale=1.0, seed=7, base_ms=BASE_MS, local0_ms=4 * HOUR_MS)

    def local_hour(occurred_ms: int) -> int:
        return ((occurred_ms - BASE_MS) // HOUR_MS + 4) % 24

    hours = collections.Counter(local_hour(t[3]) for t in taps(start.validator_batches))
    rushes = hours[7] + hours[8] + hours[17] + hours[18]
    assert rushes > 2.5 * (hours[11] + hours[12] + hours[21] + hours[22])  # 32 : 9.5
    assert hours[7] + hours[8] > 20 * (hours[2] + hours[3])
    shops = {local_hour(TAP_STRUCT.unpack(b.packed_taps)[3]) for b in start.single_taps}
    assert shops == set(range(9, 21))
    ops = {local_hour(BASE_MS + op.send_ms) for op in start.card_ops}
    assert ops <= set(range(7, 22))  # halls 09-17, agents 07-22


def test_validator_seqs_are_consecutive_from_the_base(city: City, plan: DayPlan) -> None:
    by_terminal: dict[int, list[TapBatch]] = collections.defaultdict(list)
    for batch in plan.validator_batches:
        assert 1 <= batch.count <= BATCH_TAPS
        by_terminal[batch.terminal_id].append(batch)
    assert set(by_terminal) <= {t.terminal_id for t in city.validators}
    assert len(by_terminal) > 290
    for tid, batches in by_terminal.items():
        rows = taps(batches)  # plan order: a bus uploads its batches in sequence
        seqs = [t[1] for t in rows]
        first = SEQ_BASE.get(tid, 0) + 1
        assert seqs == list(range(first, first + len(seqs))), tid
        occurred = [t[3] for t in rows]
        assert occurred == sorted(occurred), "a validator numbers its taps in time order"


def test_plans_are_in_send_order(plan: DayPlan) -> None:
    def first_seq(b: TapBatch) -> int:
        return TAP_STRUCT.unpack_from(b.packed_taps)[1]

    keys = [(b.send_ms, b.terminal_id, first_seq(b)) for b in plan.validator_batches]
    assert keys == sorted(keys)
    singles = [(b.send_ms, b.terminal_id) for b in plan.single_taps]
    assert singles == sorted(singles)
    assert [op.send_ms for op in plan.card_ops] == sorted(op.send_ms for op in plan.card_ops)


def test_nothing_occurs_after_it_is_sent(plan: DayPlan) -> None:
    for batch in plan.validator_batches + plan.single_taps:
        assert 0 <= batch.send_ms < DAY_MS
        for tap in TAP_STRUCT.iter_unpack(batch.packed_taps):
            assert BASE_MS <= tap[3] <= BASE_MS + batch.send_ms
    for batch in plan.validator_batches:  # uploads 1-20 min after the last tap, or at day end
        last = TAP_STRUCT.unpack_from(batch.packed_taps, len(batch.packed_taps) - 36)[3]
        delay = batch.send_ms - (last - BASE_MS)
        assert delay <= 20 * MINUTE_MS or batch.send_ms >= LATE_SEND_MS - 20 * MINUTE_MS
    assert all(0 <= op.send_ms < DAY_MS for op in plan.card_ops)


def test_a_few_validators_upload_only_at_the_end_of_the_day(plan: DayPlan) -> None:
    sends: dict[int, list[int]] = collections.defaultdict(list)
    for batch in plan.validator_batches:
        sends[batch.terminal_id].append(batch.send_ms)
    late = [tid for tid, s in sends.items() if min(s) >= LATE_SEND_MS]
    assert 3 <= len(late) <= 10  # ~2 % of 300


def test_transfers_ride_another_route_within_the_window(plan: DayPlan) -> None:
    rides: dict[int, list[tuple[int, int]]] = collections.defaultdict(list)
    for card, _, _, occurred, route in taps(plan.validator_batches):
        rides[card].append((occurred, route))
    transfers = 0
    for legs in rides.values():
        legs.sort()
        transfers += sum(
            1
            for (t1, r1), (t2, r2) in itertools.pairwise(legs)
            if r1 != r2 and 5 * MINUTE_MS <= t2 - t1 <= 80 * MINUTE_MS
        )
    assert transfers > 0.12 * plan.validator_taps  # ~20 % of journeys


def test_validator_taps_decode_as_canonical_bytes(city: City, plan: DayPlan) -> None:
    assert TAP_DTYPE.itemsize == TAP_STRUCT.size == 36
    seeded = range(city.first_card_id, city.first_card_id + city.card_count)
    operator = {tid: i for i in range(3) for tid in demo_city.validator_ids(i)}
    fares = {0: 200, 1: 200, 2: 300}
    cards: collections.Counter[int] = collections.Counter()
    for batch in plan.validator_batches:
        assert len(batch.packed_taps) % 36 == 0
        i = operator[batch.terminal_id]
        routes = {t[4] for t in TAP_STRUCT.iter_unpack(batch.packed_taps)}
        assert len(routes) == 1 and routes <= set(range(10 * i + 11, 10 * i + 21))
        for card, _, amount, _, _ in TAP_STRUCT.iter_unpack(batch.packed_taps):
            assert card in seeded and amount == fares[i]
            cards[card] += 1
    assert len(cards) > 15_000  # many citizens ride ...
    top = sum(n for _, n in cards.most_common(len(seeded) // 100))
    assert top > 0.03 * plan.validator_taps  # ... and some ride a lot


def test_single_taps_are_online_pos_and_bills(city: City, plan: DayPlan) -> None:
    classes = {t.terminal_id: t.terminal_class for t in (*city.pos, *city.billing)}
    seqs: dict[int, list[int]] = collections.defaultdict(list)
    per_merchant: collections.Counter[int] = collections.Counter()
    for batch in plan.single_taps:
        assert batch.count == 1
        card, seq, amount, occurred, route = TAP_STRUCT.unpack(batch.packed_taps)
        assert route == 0 and occurred == BASE_MS + batch.send_ms
        assert 9 * HOUR_MS <= batch.send_ms < 21 * HOUR_MS  # shopping hours
        assert city.first_card_id <= card < city.first_card_id + city.card_count
        if classes[batch.terminal_id] == "POS":
            assert 100 <= amount <= 20_000 and amount % 10 == 0
            per_merchant[batch.terminal_id] += 1
        else:
            assert classes[batch.terminal_id] == "BILLING" and 100 <= amount <= 30_000
        seqs[batch.terminal_id].append(seq)
    for tid, got in seqs.items():
        first = SEQ_BASE.get(tid, 0) + 1
        assert sorted(got) == list(range(first, first + len(got)))
    assert per_merchant.most_common(1)[0][1] > 10 * (2_000 / 600)  # a busy supermarket


def test_card_ops_use_valid_channels_and_amounts(city: City, plan: DayPlan) -> None:
    halls = {party for party, _ in city.halls}
    agents = {party for party, _ in city.agents}
    topups = [op for op in plan.card_ops if op.method == "TopUp"]
    assert 1_550 < len(topups) <= 1_600
    for op in topups:
        assert op.channel in halls | agents
        assert op.amount_fen in (2_000, 3_000, 5_000, 10_000)
        assert city.first_card_id <= op.card_id < city.first_card_id + city.card_count
    assert 7_400_000 < sum(op.amount_fen for op in topups) < 8_600_000  # 2.4 M CNY a month
    at_halls = sum(op.channel in halls for op in topups) / len(topups)
    assert 0.25 < at_halls < 0.35

    reports = {op.card_id: op for op in plan.card_ops if op.method == "ReportLoss"}
    replaced = [op for op in plan.card_ops if op.method == "ReplaceCard"]
    assert len(reports) == max(2, round(2 * math.sqrt(1.0))) and len(replaced) == 1
    assert all(op.channel in halls for op in (*reports.values(), *replaced))
    for op in replaced:
        assert op.send_ms >= reports[op.card_id].send_ms + 10 * MINUTE_MS
        assert op.new_card_id >= city.first_card_id + city.card_count
    for op in topups:  # a LOST card takes no top-ups
        assert op.card_id not in reports or op.send_ms < reports[op.card_id].send_ms


def test_replacement_cards_differ_between_seeds(city: City, plan: DayPlan) -> None:
    other = plan_day(city, scale=1.0, seed=8, base_ms=BASE_MS)
    new = {op.new_card_id for op in plan.card_ops if op.method == "ReplaceCard"}
    new_other = {op.new_card_id for op in other.card_ops if op.method == "ReplaceCard"}
    assert new and new_other and not new & new_other
