"""Settlement over random business days (SPEC §8): every invariant, from outside.

Each example builds a random city (parties, fees, rules), runs a real service
on a real LMDB with a manual clock through several business days of random
taps, top-ups, losses, replacements, closings, late and duplicate taps and
rule changes, then settles every day that ended. The run checks its own
invariants; this test checks them again from what the clients were told:

- per party, count / list / discount / gross from the tap replies, top-ups
  from the card-operation replies, fees re-derived with Fraction rounding;
- Σ net = 0 and the issuer's net formula;
- the float at each cutoff, read from the ledger by the test at that instant;
- a second run is the same answer with byte-identical files.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections import defaultdict
from fractions import Fraction

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clearing.codes import CardOpStatus, ChargedTo, TapStatus
from clearing.domain.business_calendar import business_date_of, business_window_ms
from clearing.domain.entries import MerchantRuleEntry
from clearing.limits import RESULT_STRUCT, TAP_STRUCT
from clearing.runtime.config import parse_config
from clearing.runtime.service import Service
from clearing.settlement.runner import Settlements
from tests.conftest import NOW_MS

HOUR_MS, DAY_MS = 3_600_000, 86_400_000
TZ, CUTOFF = "Asia/Shanghai", "04:00"


def half_even(amount: int, bp: int) -> int:
    return round(Fraction(amount * bp, 10_000))  # Python rounds halves to even


@st.composite
def cities(draw):
    # Rates that make exact halves common, so half-even rounding is exercised.
    bp = st.one_of(st.sampled_from([2_500, 5_000, 7_500, 150]), st.integers(0, 10_000))
    parties = [{"id": "hall-1", "role": "HALL"}]
    for n in range(draw(st.integers(1, 2))):
        parties.append({"id": f"op-{n}", "role": "OPERATOR", "fee_bp": draw(bp)})
    for n in range(draw(st.integers(1, 3))):
        parties.append(
            {
                "id": f"m-{n}",
                "role": "MERCHANT",
                "fee_bp": draw(bp),
                "discount_bp": draw(st.integers(6_800, 10_000)),
            }
        )
    parties.append({"id": "u-0", "role": "UTILITY", "fee_per_bill_fen": draw(st.integers(0, 80))})
    for n in range(draw(st.integers(1, 2))):
        parties.append({"id": f"agent-{n}", "role": "AGENT", "commission_bp": draw(bp)})
    return parties


def city_config(data_dir: str, parties: list[dict]) -> dict:
    owner = {"OPERATOR": "VALIDATOR", "MERCHANT": "POS", "UTILITY": "BILLING"}
    terminals = [
        {
            "id": 100 + n,
            "class": owner[p["role"]],
            "party": p["id"],
            "key_hex": "00" * 32,
            "token": f"token-terminal-{n:08d}",
        }
        for n, p in enumerate(parties)
        if p["role"] in owner
    ]
    principals = [
        {"token": f"token-principal-{p['id']:>10}", "role": p["role"], "party": p["id"]}
        for p in parties
        if p["role"] in ("HALL", "AGENT")
    ]
    return {
        "server": {
            "data_dir": data_dir,
            "manual_clock": True,
            "manual_clock_start_ms": NOW_MS,
            "map_size_bytes": 64 * 2**20,
        },
        "rules": {"transfer_hold_s": 7_200, "liability_window_s": 1_800},
        "parties": parties,
        "terminals": terminals,
        "principals": principals,
    }


class Expected:
    """What the clients were told, per business date."""

    def __init__(self) -> None:
        self.taps = defaultdict(lambda: defaultdict(lambda: [0, 0, 0, 0]))  # day→party→[n,l,d,g]
        self.topups = defaultdict(lambda: defaultdict(lambda: [0, 0]))  # day -> party -> [n, fen]
        self.loss = defaultdict(int)
        self.float_at_close: dict[str, int] = {}


class Day:
    """Drives one random city through its days."""

    def __init__(self, service: Service, parties: list[dict], data) -> None:
        self.s, self.data = service, data
        self.parties = {p["id"]: p for p in parties}
        self.terminals = {t.terminal_id: t for t in service.engine.registry.terminals.values()}
        self.channels = [p["id"] for p in parties if p["role"] in ("HALL", "AGENT")]
        self.cards: list[int] = []
        self.next_seq = defaultdict(int)
        self.sent: list[tuple[int, bytes]] = []
        self.expected = Expected()
        self.request = 0

    @property
    def today(self) -> str:
        return business_date_of(self.s.engine.last_accepted_ms, TZ, CUTOFF).isoformat()

    async def op(self, method: str, card_id: int, args: tuple, channel: str = "hall-1"):
        self.request += 1
        answer, _ = await self.s.card_op(f"r{self.request}", method, channel, card_id, args)
        return answer

    async def step(self) -> None:
        d = self.data.draw
        kind = d(
            st.sampled_from(
                ["issue", "topup", "taps", "taps", "taps", "lifecycle", "rule", "clock", "resend"]
            )
        )
        if kind == "issue" or not self.cards:
            card_id = 10_000 + len(self.cards)
            answer = await self.op(
                "IssueCard", card_id, (d(st.integers(1, 4)), d(st.integers(0, 3_000)))
            )
            assert answer.status == CardOpStatus.OK
            self.cards.append(card_id)
        elif kind == "topup":
            channel = d(st.sampled_from(self.channels))
            card_id = d(st.sampled_from(self.cards))
            answer = await self.op("TopUp", card_id, (d(st.integers(-5, 60_000)),), channel)
            if answer.status == CardOpStatus.OK:
                into = self.expected.topups[self.today][channel]
                into[0], into[1] = into[0] + 1, into[1] + answer.amount_fen
        elif kind == "taps":
            await self.taps()
        elif kind == "lifecycle":
            method = d(st.sampled_from(["ReportLoss", "CancelLoss", "ReplaceCard", "CloseCard"]))
            card_id = d(st.sampled_from(self.cards))
            args = (10_000 + len(self.cards),) if method == "ReplaceCard" else ()
            answer = await self.op(method, card_id, args)
            if method == "ReplaceCard" and answer.status == CardOpStatus.OK:
                self.cards.append(args[0])
        elif kind == "rule":
            merchants = [p for p in self.parties.values() if p["role"] == "MERCHANT"]
            merchant = d(st.sampled_from(merchants))["id"]
            when = self.s.clock.now_ms() + d(st.integers(-DAY_MS, DAY_MS))
            await self.s.admin(MerchantRuleEntry(merchant, when, d(st.integers(6_800, 10_000))))
        elif kind == "clock":
            await self.advance(d(st.integers(1, 30 * HOUR_MS)))
        elif self.sent:
            terminal_id, packed = d(st.sampled_from(self.sent))
            await self.submit(terminal_id, packed)

    async def taps(self) -> None:
        d = self.data.draw
        terminal_id = d(st.sampled_from(sorted(self.terminals)))
        now = self.s.clock.now_ms()
        packed = b""
        for _ in range(d(st.integers(1, 8))):
            self.next_seq[terminal_id] += d(st.sampled_from([1, 1, 1, 2]))  # sometimes a gap
            card_id = d(st.sampled_from([*self.cards, 99]))  # 99: unknown
            occurred = now + d(st.sampled_from([0, -HOUR_MS, -30 * HOUR_MS, -9 * DAY_MS, HOUR_MS]))
            amount = d(st.sampled_from([1, 150, 200, 999, 2_000, 0, -1, 100_001]))
            packed += TAP_STRUCT.pack(
                card_id, self.next_seq[terminal_id], amount, occurred, d(st.integers(1, 3))
            )
        self.sent.append((terminal_id, packed))
        await self.submit(terminal_id, packed)

    async def submit(self, terminal_id: int, packed: bytes) -> None:
        env = await self.s.submit_taps(terminal_id, packed)
        day, party = self.today, self.terminals[terminal_id].party_id
        for i in range(len(packed) // 36):
            _, _, list_fen, _, _ = TAP_STRUCT.unpack_from(packed, i * 36)
            status, to, dup, charged, discount, _, _ = RESULT_STRUCT.unpack_from(
                env.body.packed_results, i * 40
            )
            if status == TapStatus.OK and not dup:
                t = self.expected.taps[day][party]
                t[0], t[1], t[2], t[3] = t[0] + 1, t[1] + list_fen, t[2] + discount, t[3] + charged
                if to == ChargedTo.ISSUER_LOSS:
                    self.expected.loss[day] += charged

    async def advance(self, ms: int) -> None:
        """Move the clock; at each cutoff crossed, note the float the ledger holds."""
        now = self.s.clock.now_ms()
        end = business_window_ms(business_date_of(now, TZ, CUTOFF), TZ, CUTOFF)[1]
        if now + ms >= end:  # nothing of the next day has happened yet: this is its float
            self.expected.float_at_close[self.today] = self.s.engine.ledger.total_balance_fen()
            self.s.clock.set(end)
            self.s.catch_up()
            await self.s.durable()
            self.s.clock.set(now + ms)
        else:
            self.s.clock.set(now + ms)


async def play(parties: list[dict], data, data_dir: str) -> None:
    service = Service(parse_config(city_config(data_dir, parties)))
    service.load()
    await service.start()
    try:
        day = Day(service, parties, data)
        for _ in range(data.draw(st.integers(5, 40))):
            await day.step()
        last_day = day.today
        await day.advance(DAY_MS)  # past the last day's cutoff
        settlements = Settlements(service)
        days = sorted(day.expected.float_at_close)
        assert last_day in days
        for date in days:
            first = await settlements.run(date)
            check_day(first, day.expected, date, day.parties)
            before = _read_all(first.directory)
            again = await settlements.run(date)
            assert again == first
            assert _read_all(first.directory) == before
    finally:
        await service.stop()


def check_day(settled, expected: Expected, date: str, parties: dict) -> None:
    rows = {row.party_id: row for row in settled.rows}
    assert sum(row.net_fen for row in settled.rows) == 0
    for party_id, p in parties.items():
        row = rows[party_id]
        if p["role"] in ("OPERATOR", "MERCHANT", "UTILITY"):
            count, list_fen, discount, gross = expected.taps[date][party_id]
            assert (row.count, row.list_fen, row.discount_fen, row.gross_fen) == (
                count,
                list_fen,
                discount,
                gross,
            )
            fee = (
                count * p["fee_per_bill_fen"]
                if p["role"] == "UTILITY"
                else half_even(gross, p["fee_bp"])
            )
            assert (row.fee_fen, row.net_fen) == (fee, gross - fee)
        else:
            count, topups = expected.topups[date][party_id]
            assert (row.count, row.gross_fen) == (count, topups)
            if p["role"] == "AGENT":
                assert row.fee_fen == half_even(topups, p["commission_bp"])
                assert row.net_fen == -(topups - row.fee_fen)
    issuer = settled.manifest["issuer"]
    assert issuer["float_closing_fen"] == expected.float_at_close[date]
    assert issuer["hot_list_loss_fen"] == expected.loss[date]
    assert rows["issuer"].net_fen == (
        issuer["float_change_fen"]
        - issuer["hall_topups_fen"]
        + issuer["balance_refunds_fen"]
        - issuer["hot_list_loss_fen"]
        + issuer["fee_income_fen"]
        - issuer["commission_expense_fen"]
    )


def _read_all(directory: str) -> dict[str, bytes]:
    out = {}
    for name in sorted(os.listdir(directory)):
        with open(os.path.join(directory, name), "rb") as f:
            out[name] = f.read()
    return out


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(parties=cities(), data=st.data())
def test_random_days_settle_with_every_invariant_and_twice_the_same(parties, data):
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(play(parties, data, tmp))
