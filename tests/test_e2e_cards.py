"""Card operations end to end: idempotency, limits, roles, durability."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from clearing.tools.client import bearer
from clearing.v1 import cards_pb2
from tests.conftest import NOW_MS, TOKENS, VALIDATOR

Reply = cards_pb2.CardReply
CARD = 7_000_001


def _issue(card_id=CARD, request_id="r-issue", card_type=cards_pb2.ADULT, deposit_fen=2_000):
    return cards_pb2.IssueCardRequest(
        request_id=request_id, card_id=card_id, card_type=card_type, deposit_fen=deposit_fen
    )


def _top_up(amount_fen, request_id, card_id=CARD):
    return cards_pb2.TopUpRequest(request_id=request_id, card_id=card_id, amount_fen=amount_fen)


async def test_issue_and_top_up_are_idempotent_by_request_id(harness):
    cards, hall = harness.stubs.cards, bearer(TOKENS["hall"])
    first = await cards.IssueCard(_issue(), metadata=hall)
    assert first.status == Reply.OK and first.card.state == cards_pb2.ACTIVE
    assert first.card.deposit_fen == 2_000 and first.card.balance_fen == 0
    again = await cards.IssueCard(_issue(), metadata=hall)
    assert again.duplicate and again.journal_seq == first.journal_seq
    conflict = await cards.IssueCard(_issue(deposit_fen=1), metadata=hall)
    assert conflict.status == Reply.ID_CONFLICT
    other_id = await cards.IssueCard(_issue(request_id="r-issue-2"), metadata=hall)
    assert other_id.status == Reply.CARD_EXISTS
    topped = await cards.TopUp(_top_up(3_000, "t-1"), metadata=hall)
    assert topped.status == Reply.OK and topped.card.balance_fen == 3_000
    seq = harness.last_seq
    repeat = await cards.TopUp(_top_up(3_000, "t-1"), metadata=hall)
    assert repeat.duplicate and repeat.card.balance_fen == 3_000
    assert harness.last_seq == seq  # a repeat journals nothing
    assert await harness.balance(CARD) == 3_000
    await harness.restart()  # the answers survive a restart
    repeat = await harness.stubs.cards.TopUp(_top_up(3_000, "t-1"), metadata=hall)
    assert repeat.duplicate and repeat.journal_seq == topped.journal_seq
    assert await harness.balance(CARD) == 3_000


@pytest.mark.parametrize(
    ("amount_fen", "status"),
    [
        (0, Reply.INVALID_AMOUNT),
        (-5, Reply.INVALID_AMOUNT),
        (100_001, Reply.INVALID_AMOUNT),
        (2**63 - 1, Reply.INVALID_AMOUNT),
        (99_001, Reply.BALANCE_LIMIT),
        (99_000, Reply.OK),
    ],
)
async def test_top_up_limits(harness, amount_fen, status):
    await harness.issue(CARD, balance_fen=1_000)
    reply = await harness.stubs.cards.TopUp(
        _top_up(amount_fen, "t-edge"), metadata=bearer(TOKENS["agent"])
    )
    assert reply.status == status, reply.message
    expected = 1_000 + (amount_fen if status == Reply.OK else 0)
    assert await harness.balance(CARD) == expected


async def test_a_negative_balance_is_repaid_by_the_next_top_up(harness):
    await harness.issue(CARD, balance_fen=100)
    rides = [(CARD, seq, 200, NOW_MS, 11) for seq in range(1, 4)]
    await harness.taps(VALIDATOR, rides)
    assert await harness.balance(CARD) == 100 - 600
    reply = await harness.stubs.cards.TopUp(
        _top_up(1_000, "repay"), metadata=bearer(TOKENS["agent"])
    )
    assert reply.status == Reply.OK and reply.card.balance_fen == 500


async def test_unknown_and_closed_cards(harness):
    cards, hall = harness.stubs.cards, bearer(TOKENS["hall"])
    reply = await cards.TopUp(_top_up(100, "t-unknown"), metadata=hall)
    assert reply.status == Reply.UNKNOWN_CARD
    await harness.issue(CARD, balance_fen=700)
    closed = await cards.CloseCard(
        cards_pb2.CardRequest(request_id="c-1", card_id=CARD), metadata=hall
    )
    assert closed.status == Reply.OK and closed.amount_fen == 700 + 2_000
    assert closed.card.state == cards_pb2.CLOSED and closed.card.balance_fen == 0
    reply = await cards.TopUp(_top_up(100, "t-closed"), metadata=hall)
    assert reply.status == Reply.CARD_NOT_ACTIVE
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await cards.GetCard(cards_pb2.GetCardRequest(card_id=12345), metadata=hall)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


async def test_roles_and_malformed_requests_are_refused_without_a_trace(harness):
    cards = harness.stubs.cards
    seq = harness.last_seq
    for token in (TOKENS["agent"], TOKENS["finance"], TOKENS["admin"]):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await cards.IssueCard(_issue(), metadata=bearer(token))
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await cards.IssueCard(_issue(request_id=""), metadata=bearer(TOKENS["hall"]))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await cards.IssueCard(_issue(card_type=0), metadata=bearer(TOKENS["hall"]))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await cards.IssueCard(_issue(card_id=0), metadata=bearer(TOKENS["hall"]))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # an unset card_id
    assert harness.last_seq == seq


async def test_a_cancelled_caller_cannot_make_a_repeat_answer_before_the_commit(harness):
    await harness.issue(CARD, balance_fen=0)
    service = harness.server.service
    first = asyncio.create_task(service.card_op("t-cancel", "TopUp", "hall-1", CARD, (100,)))
    for _ in range(3):  # applied, queued, and waiting on the commit
        await asyncio.sleep(0)
    first.cancel()  # the caller's deadline expired
    answer, duplicate = await service.card_op("t-cancel", "TopUp", "hall-1", CARD, (100,))
    assert duplicate
    assert service.journal.get(answer.journal_seq) is not None  # durable before the answer
