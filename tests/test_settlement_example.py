"""A hand-worked business day, checked to the fen (SPEC §8), end to end over gRPC.

The city (tests/conftest.py): op-bus-1 fee 100 bp, m-0001 fee 150 bp with
discount 8800 bp, u-water 50 fen a bill, agent-01 commission 40 bp, hall-1.
Every card has a 2000 fen deposit. The business day 2030-03-17 runs from
2030-03-16T20:00Z to 2030-03-17T20:00Z (04:00 Asia/Shanghai); NOW_MS is
2030-03-17T17:46:40Z, 8,000 s before its end.

Taps (occurred relative to NOW):
  validator 101  v1 A seq1 list 250 route 11, -60 min   adult              -> 250
                 v2 A seq2 list 250 route 12, -50 min   transfer: 250-100  -> 150
                 v3 B seq3 list 200 route 11, -30 min   student 50 %       -> 100
                 v4 C seq5 list 150 route 11, day before (late)            -> 150
                 (seq 4 never arrives: a gap)
  POS 201        p1 A list 341: half_up(341 x 0.88) = 300, discount 41
                 p2 C list 5000 > balance 2850: INSUFFICIENT_FUNDS
  billing 301    b1 B list 1234                                            -> 1234
  C is closed at the hall: pays out balance 2850 + deposit 2000.
  validator 101  v1 again (DUPLICATE), seq3 with another body (ID_CONFLICT),
                 v6 C seq6 list 200 on the closed card: OK, ISSUER_LOSS    -> 200

Operator gross 250+150+100+150+200 = 850; fee 850 x 1 % = 8.5 -> half-even 8
(half-up would give 9). Merchant gross 300; fee 300 x 1.5 % = 4.5 -> 4.
Agent top-ups 5000 + 125 = 5125; commission x 0.4 % = 20.5 -> 20.
Utility: 1234 - 50 = 1184. Hall top-ups A 10000 + C 3000.

Issuer net = -(842 + 296 + 1184 - 5105 + 0) = 2783; and by its breakdown:
float change (A 9300 + B 3791 + C 0) - 0 = 13091, minus hall top-ups 13000,
plus balance refunds 2850, minus hot-list loss 200, plus fees 62, minus
commission 20 = 2783.
"""

from __future__ import annotations

import os

import grpc
import pytest

from clearing.codes import ChargedTo, TapStatus
from clearing.tools.client import bearer, top_up
from clearing.v1 import admin_pb2, cards_pb2, settlement_pb2
from tests.conftest import BILLING, NOW_MS, POS, TOKENS, VALIDATOR

A, B, C = 1001, 1002, 1003
MIN_MS = 60_000
DAY = "2030-03-17"
DAY_END_MS = NOW_MS + 8_000_000
DAY_START_MS = DAY_END_MS - 86_400_000
FINANCE = bearer(TOKENS["finance"])

SUMMARY = """\
party_id,role,count,list_fen,discount_fen,gross_fen,fee_fen,net_fen,direction,bank_account
"agent-01","AGENT",2,0,0,5125,20,-5105,"COLLECT",""
"hall-1","HALL",2,0,0,13000,0,0,"NONE",""
"issuer","ISSUER",0,0,0,0,0,2783,"RECEIVE",""
"m-0001","MERCHANT",1,341,41,300,4,296,"PAY",""
"op-bus-1","OPERATOR",5,1050,200,850,8,842,"PAY",""
"u-water","UTILITY",1,1234,0,1234,50,1184,"PAY",""
"TOTAL","TAPS",7,2625,241,2384,62,2322,"",""
"TOTAL","TOP_UPS",4,0,0,18125,20,-5105,"",""
"TOTAL","ALL","","","","","",0,"",""
"""

PAYMENTS = """\
instruction_id,business_date,party_id,role,direction,amount_fen,amount_yuan,bank_account
"20300317-agent-01","2030-03-17","agent-01","AGENT","COLLECT",5105,51.05,""
"20300317-m-0001","2030-03-17","m-0001","MERCHANT","PAY",296,2.96,""
"20300317-op-bus-1","2030-03-17","op-bus-1","OPERATOR","PAY",842,8.42,""
"20300317-u-water","2030-03-17","u-water","UTILITY","PAY",1184,11.84,""
"""

# What needs action first (REVIEW), then the routine rows; each block by kind and reason.
EXCEPTIONS = """\
action,kind,reason,party_id,terminal_id,count,amount_fen,amount_yuan,detail
"REVIEW","HOT_LIST_LOSS","CARD_NOT_ACTIVE","op-bus-1","101",1,200,2.00,"ride paid to the operator; charged to the issuer"
"REVIEW","REJECTED_TAP","ID_CONFLICT","op-bus-1","101",1,0,0.00,"not applied; list amount attempted"
"REVIEW","SEQUENCE_GAP","MISSING_TERMINAL_SEQ","op-bus-1","101",1,0,0.00,"highest terminal_seq 6; +1 missing on the day"
"NONE","DUPLICATE_TAP","RESUBMITTED","op-bus-1","101",1,0,0.00,"answered with the original result"
"NONE","LATE_TAP","OCCURRED_BEFORE_BUSINESS_DAY","op-bus-1","101",1,150,1.50,"1 from 1 day before"
"NONE","REJECTED_TAP","INSUFFICIENT_FUNDS","m-0001","201",1,5000,50.00,"not applied; list amount attempted"
"""  # noqa: E501


async def play_the_day(h) -> None:
    await h.issue(A, balance_fen=10_000)
    await h.issue(B, card_type=2)
    await h.issue(C, balance_fen=3_000)
    for n, amount in enumerate((5_000, 125)):
        reply = await top_up(h.stubs, TOKENS["agent"], f"agent-{n}", B, amount)
        assert reply.status == cards_pb2.CardReply.OK
    rides = await h.taps(
        VALIDATOR,
        [
            (A, 1, 250, NOW_MS - 60 * MIN_MS, 11),
            (A, 2, 250, NOW_MS - 50 * MIN_MS, 12),
            (B, 3, 200, NOW_MS - 30 * MIN_MS, 11),
            (C, 5, 150, DAY_START_MS - 60 * MIN_MS, 11),
        ],
    )
    assert [r[3] for r in rides] == [250, 150, 100, 150]
    shop = await h.taps(POS, [(A, 1, 341, NOW_MS, 0), (C, 2, 5_000, NOW_MS, 0)])
    assert [(r[0], r[3]) for r in shop] == [(TapStatus.OK, 300), (TapStatus.INSUFFICIENT_FUNDS, 0)]
    (bill,) = await h.taps(BILLING, [(B, 1, 1_234, NOW_MS, 0)])
    assert bill[3] == 1_234
    closed = await h.stubs.cards.CloseCard(
        cards_pb2.CardRequest(request_id="close-c", card_id=C), metadata=bearer(TOKENS["hall"])
    )
    assert (closed.status, closed.amount_fen) == (cards_pb2.CardReply.OK, 2_850 + 2_000)
    again = await h.taps(
        VALIDATOR,
        [(A, 1, 250, NOW_MS - 60 * MIN_MS, 11), (B, 3, 999, NOW_MS, 11), (C, 6, 200, NOW_MS, 11)],
    )
    assert [r[0] for r in again] == [TapStatus.OK, TapStatus.ID_CONFLICT, TapStatus.OK]
    assert again[2][1] == ChargedTo.ISSUER_LOSS


async def set_clock(h, now_ms: int) -> None:
    await h.stubs.admin.SetClock(
        admin_pb2.SetClockRequest(now_ms=now_ms), metadata=bearer(TOKENS["admin"])
    )


async def run(h, day: str = DAY) -> settlement_pb2.Settlement:
    return await h.stubs.settlement.RunSettlement(
        settlement_pb2.SettlementRequest(business_date=day), metadata=FINANCE
    )


def read(directory: str, name: str) -> str:
    with open(os.path.join(directory, name), encoding="utf-8") as f:
        return f.read()


def read_bytes(directory: str, name: str) -> bytes:
    with open(os.path.join(directory, name), "rb") as f:
        return f.read()


async def test_every_figure_of_the_day_to_the_fen(harness):
    h = harness
    await play_the_day(h)
    await set_clock(h, DAY_END_MS + 1_000)
    result = await run(h)
    assert read(result.output_dir, "summary.csv") == SUMMARY
    assert read(result.output_dir, "payments.csv") == PAYMENTS
    assert read(result.output_dir, "exceptions.csv") == EXCEPTIONS
    i = result.issuer
    assert (i.net_fen, i.float_opening_fen, i.float_closing_fen) == (2_783, 0, 13_091)
    assert (i.hall_topups_fen, i.agent_topups_fen, i.hot_list_loss_fen) == (13_000, 5_125, 200)
    assert (i.fee_income_fen, i.commission_expense_fen) == (62, 20)
    assert (i.deposits_taken_fen, i.deposits_refunded_fen) == (6_000, 2_000)
    assert (i.balance_refunds_fen, i.closing_refunds_paid_fen) == (2_850, 4_850)
    assert (result.total_paid_fen, result.total_collected_fen) == (296 + 842 + 1_184, 5_105)
    assert [p.party_id for p in result.parties][:3] == ["agent-01", "hall-1", "issuer"]


async def test_a_second_run_is_the_same_answer_and_the_same_bytes(harness):
    h = harness
    await play_the_day(h)
    await set_clock(h, DAY_END_MS + 1_000)
    first = await run(h)
    names = sorted(os.listdir(first.output_dir))
    files = {name: read_bytes(first.output_dir, name) for name in names}
    assert sorted(files) == [
        "exceptions.csv",
        "manifest.json",
        "payments.csv",
        "report.html",
        "settlement.xlsx",
        "summary.csv",
    ]
    seq = h.last_seq
    await set_clock(h, DAY_END_MS + 3 * 86_400_000)  # days later, after more days closed
    second = await run(h)
    assert second == first
    assert {name: read_bytes(first.output_dir, name) for name in files} == files
    got = await h.stubs.settlement.GetSettlement(
        settlement_pb2.SettlementRequest(business_date=DAY), metadata=FINANCE
    )
    assert got == first
    assert h.last_seq > seq  # three more days closed; nothing settled twice
    assert list(h.server.service.engine.days.settled) == [DAY]
    await h.restart()  # the journal remembers: the same again after a restart
    assert await run(h) == first


async def test_damaged_files_of_a_settled_day_are_restored_from_the_journal(harness):
    h = harness
    await play_the_day(h)
    await set_clock(h, DAY_END_MS + 1_000)
    first = await run(h)
    path = os.path.join(first.output_dir, "summary.csv")
    with open(path, "a") as f:
        f.write("m-0001,MERCHANT,1,0,0,0,0,100000,PAY,\n")
    got = await h.stubs.settlement.GetSettlement(
        settlement_pb2.SettlementRequest(business_date=DAY), metadata=FINANCE
    )
    assert got == first
    assert read(first.output_dir, "summary.csv") == SUMMARY


@pytest.mark.parametrize(
    ("day", "code", "words"),
    [
        ("2030-13-01", grpc.StatusCode.INVALID_ARGUMENT, "not a date"),
        ("yesterday", grpc.StatusCode.INVALID_ARGUMENT, "not a date"),
        ("2030-03-19", grpc.StatusCode.INVALID_ARGUMENT, "in the future"),
        (DAY, grpc.StatusCode.FAILED_PRECONDITION, "still open"),
        ("2030-03-16", grpc.StatusCode.OUT_OF_RANGE, "before the journal's first entry"),
    ],
)
async def test_dates_that_cannot_be_settled_are_refused(harness, day, code, words):
    h = harness
    seq = h.last_seq
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await run(h, day)
    assert caught.value.code() == code
    assert words in caught.value.details()
    assert h.last_seq == seq  # nothing journaled
    assert not os.path.exists(os.path.join(h.config.server.data_dir, "settlement", day))


async def test_get_before_run_is_not_found(harness):
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await harness.stubs.settlement.GetSettlement(
            settlement_pb2.SettlementRequest(business_date=DAY), metadata=FINANCE
        )
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
