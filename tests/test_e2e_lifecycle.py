"""Card lifecycle and the deny list end to end (SPEC §5 rule 8, §6, §7)."""

from __future__ import annotations

import asyncio

import pytest

from clearing.codes import ChargedTo, TapStatus
from clearing.tools.client import bearer, signed_batch
from clearing.v1 import admin_pb2, cards_pb2, denylist_pb2
from tests.conftest import NOW_MS, POS, TOKENS, VALIDATOR, VALIDATOR_2, terminal_key

Reply = cards_pb2.CardReply
Reason = denylist_pb2.DenyListChange.Reason
HALL, ADMIN = bearer(TOKENS["hall"]), bearer(TOKENS["admin"])
OLD, NEW, OTHER = 5_000_001, 5_000_002, 5_000_003
HOUR_MS, DAY_MS = 3_600_000, 86_400_000


async def _op(h, method: str, request_id: str, card_id: int, **fields):
    request_class = {
        "ReplaceCard": cards_pb2.ReplaceCardRequest,
        "TopUp": cards_pb2.TopUpRequest,
    }.get(method, cards_pb2.CardRequest)
    request = request_class(request_id=request_id, card_id=card_id, **fields)
    return await getattr(h.stubs.cards, method)(request, metadata=HALL)


async def _card(h, card_id: int) -> cards_pb2.Card:
    return await h.stubs.cards.GetCard(cards_pb2.GetCardRequest(card_id=card_id), metadata=HALL)


async def _set_clock(h, now_ms: int) -> None:
    await h.stubs.admin.SetClock(admin_pb2.SetClockRequest(now_ms=now_ms), metadata=ADMIN)


async def test_the_lost_card_story_with_exact_balances(harness):
    h = harness
    await h.issue(OLD, balance_fen=1_000)
    (ride,) = await h.taps(VALIDATOR, [(OLD, 1, 200, NOW_MS - HOUR_MS, 11)])
    assert ride[5] == 800
    loss = await _op(h, "ReportLoss", "loss", OLD)
    assert loss.status == Reply.OK and loss.card.state == cards_pb2.LOST
    blocked_at = loss.card.blocked_at_ms
    assert blocked_at >= NOW_MS
    # Hours later an offline validator uploads one ride inside and one outside the
    # liability window (6 h after the loss report).
    await _set_clock(h, blocked_at + 8 * HOUR_MS)
    inside, outside = await h.taps(
        VALIDATOR_2,
        [(OLD, 1, 200, blocked_at + HOUR_MS, 21), (OLD, 2, 200, blocked_at + 7 * HOUR_MS, 22)],
    )
    assert (TapStatus(inside[0]), ChargedTo(inside[1]), inside[3], inside[5]) == (
        TapStatus.OK, ChargedTo.CARD, 200, 600
    )  # fmt: skip
    assert (TapStatus(outside[0]), ChargedTo(outside[1]), outside[3], outside[5]) == (
        TapStatus.OK, ChargedTo.ISSUER_LOSS, 200, 600
    )  # fmt: skip
    replaced = await _op(h, "ReplaceCard", "replace", OLD, new_card_id=NEW)
    assert replaced.status == Reply.OK, replaced.message
    assert replaced.card.replaced_by == NEW
    assert replaced.card.transfer_due_at_ms == blocked_at + 7 * DAY_MS
    new = await _card(h, NEW)
    assert (new.state, new.balance_fen, new.deposit_fen) == (cards_pb2.ACTIVE, 0, 2_000)
    await h.stubs.cards.TopUp(
        cards_pb2.TopUpRequest(request_id="new-top-up", card_id=NEW, amount_fen=500), metadata=HALL
    )
    closing = await _op(h, "CloseCard", "close-too-early", NEW)
    assert closing.status == Reply.TRANSFER_PENDING
    await _set_clock(h, blocked_at + 7 * DAY_MS - 1)
    await h.taps(POS, [(NEW, 50, 100, blocked_at + 7 * DAY_MS - 2, 0)])  # a write: no transfer yet
    assert (await _card(h, OLD)).state == cards_pb2.LOST
    await _set_clock(h, blocked_at + 7 * DAY_MS + 1_000)
    await h.taps(POS, [(NEW, 51, 100, blocked_at + 7 * DAY_MS, 0)])  # runs after the transfer
    old, new = await _card(h, OLD), await _card(h, NEW)
    assert (old.state, old.balance_fen) == (cards_pb2.REPLACED, 0)
    assert new.balance_fen == 500 - 88 + 600 - 88
    (late,) = await h.taps(VALIDATOR, [(OLD, 9, 200, blocked_at + 7 * DAY_MS, 11)])
    assert (ChargedTo(late[1]), late[5]) == (ChargedTo.ISSUER_LOSS, 0)
    history = await h.stubs.cards.GetCardHistory(
        cards_pb2.GetCardHistoryRequest(card_id=OLD, limit=20), metadata=HALL
    )
    kinds = [e.kind for e in history.entries]
    assert kinds == ["TAP", "TRANSFER", "ReplaceCard", "TAP", "TAP", "ReportLoss", "TAP",
                     "TopUp", "IssueCard"]  # fmt: skip
    assert [e.journal_seq for e in history.entries] == sorted(
        (e.journal_seq for e in history.entries), reverse=True
    )
    transfer = history.entries[1]
    assert transfer.amount_fen == -600
    await harness.restart()  # everything above is derived from the journal alone
    assert (await _card(h, NEW)).balance_fen == new.balance_fen
    assert (await _card(h, OLD)).state == cards_pb2.REPLACED


async def test_the_transfer_happens_when_time_alone_passes(harness):
    h = harness
    await h.issue(OLD, balance_fen=300)
    loss = await _op(h, "ReportLoss", "loss", OLD)
    await _op(h, "ReplaceCard", "replace", OLD, new_card_id=NEW)
    await _set_clock(h, loss.card.blocked_at_ms + 7 * DAY_MS + 1)
    for _ in range(50):  # the server looks once a second
        if (await _card(h, NEW)).balance_fen == 300:
            break
        await asyncio.sleep(0.1)
    assert (await _card(h, NEW)).balance_fen == 300
    assert (await _card(h, OLD)).state == cards_pb2.REPLACED


@pytest.mark.parametrize(
    ("setup", "method", "fields", "status"),
    [
        (["ReportLoss", "ReplaceCard"], "CancelLoss", {}, Reply.CARD_ALREADY_REPLACED),
        (["ReportLoss"], "CloseCard", {}, Reply.CARD_NOT_ACTIVE),
        (["CloseCard"], "TopUp", {"amount_fen": 100}, Reply.CARD_NOT_ACTIVE),
        (["ReportLoss"], "ReplaceCard", {"new_card_id": OTHER}, Reply.CARD_EXISTS),
        ([], "ReplaceCard", {"new_card_id": NEW}, Reply.CARD_NOT_LOST),
        ([], "CancelLoss", {}, Reply.CARD_NOT_LOST),
        (["ReportLoss"], "ReportLoss", {}, Reply.CARD_NOT_ACTIVE),
    ],
)
async def test_wrong_states_are_refused_and_change_nothing(harness, setup, method, fields, status):
    h = harness
    await h.issue(OLD, balance_fen=400)
    await h.issue(OTHER, balance_fen=0)
    for n, step in enumerate(setup):
        extra = {"new_card_id": NEW} if step == "ReplaceCard" else {}
        assert (await _op(h, step, f"setup-{n}", OLD, **extra)).status == Reply.OK
    before = await _card(h, OLD)
    deny_before = h.server.service.deny_list_version()
    reply = await _op(h, method, "the-one", OLD, **fields)
    assert reply.status == status, reply.message
    assert reply.message
    assert await _card(h, OLD) == before
    assert h.server.service.deny_list_version() == deny_before


async def test_every_operation_is_idempotent_by_request_id(harness):
    h = harness
    await h.issue(OLD, balance_fen=400)
    steps = [
        ("TopUp", {"amount_fen": 100}, {"amount_fen": 101}),
        ("ReportLoss", {}, None),
        ("ReplaceCard", {"new_card_id": NEW}, {"new_card_id": NEW + 1}),
    ]
    for method, fields, other in steps:
        first = await _op(h, method, f"id-{method}", OLD, **fields)
        assert first.status == Reply.OK
        again = await _op(h, method, f"id-{method}", OLD, **fields)
        assert again.duplicate and again.journal_seq == first.journal_seq
        assert again.card == first.card
        if other is not None:
            conflict = await _op(h, method, f"id-{method}", OLD, **other)
            assert conflict.status == Reply.ID_CONFLICT
        crossed = await _op(h, "CancelLoss", f"id-{method}", OLD)
        assert crossed.status == Reply.ID_CONFLICT
    await h.issue(OTHER, balance_fen=0)
    closed = await _op(h, "CloseCard", "id-close", OTHER)
    assert (await _op(h, "CloseCard", "id-close", OTHER)).journal_seq == closed.journal_seq
    cancel = await _op(h, "ReportLoss", "id-loss-new", NEW)
    await _op(h, "CancelLoss", "id-cancel", NEW)
    assert (await _op(h, "CancelLoss", "id-cancel", NEW)).duplicate
    assert cancel.status == Reply.OK
    assert (await _card(h, NEW)).state == cards_pb2.ACTIVE


async def test_no_pos_tap_is_approved_after_the_loss_report_is_acknowledged(harness):
    h = harness
    await h.issue(OLD, balance_fen=100_000)

    async def shop(seq: int):
        return seq, (await h.taps(POS, [(OLD, seq, 10, NOW_MS, 0)]))[0]

    tasks = [asyncio.create_task(shop(seq)) for seq in range(1, 200)]
    await asyncio.sleep(0)
    loss = await _op(h, "ReportLoss", "race", OLD)
    after = [asyncio.create_task(shop(seq)) for seq in range(200, 220)]
    results = [await t for t in tasks + after]
    for seq, result in results:
        if result[6] > loss.journal_seq:  # journaled after the loss report
            assert TapStatus(result[0]) == TapStatus.CARD_BLOCKED, seq
        else:
            assert TapStatus(result[0]) == TapStatus.OK, seq
    assert all(TapStatus(r[0]) == TapStatus.CARD_BLOCKED for s, r in results if s >= 200)


async def test_deny_list_deltas_and_the_full_list(harness):
    h = harness
    for card in (OLD, NEW, OTHER):
        await h.issue(card, balance_fen=100)
    token = bearer(f"test-token-terminal-{VALIDATOR}")
    stub = h.stubs.deny
    start = await stub.GetDenyList(denylist_pb2.GetDenyListRequest(since_version=0), metadata=token)
    assert start.full and start.full_count == 0
    await _op(h, "ReportLoss", "l1", OLD)
    await h.taps(VALIDATOR, [(NEW, 1, 300, NOW_MS, 11)])  # 100 - 300: LOW_BALANCE
    await _op(h, "CloseCard", "c1", OTHER)
    await h.stubs.cards.TopUp(
        cards_pb2.TopUpRequest(request_id="t1", card_id=NEW, amount_fen=500), metadata=HALL
    )  # back above zero: removed
    now = await stub.GetDenyList(
        denylist_pb2.GetDenyListRequest(since_version=start.version + 1), metadata=token
    )
    assert not now.full and now.version == start.version + 4
    assert [(c.card_id, c.listed, c.reason) for c in now.changes] == [
        (NEW, True, Reason.LOW_BALANCE), (OTHER, True, Reason.CLOSED), (NEW, False, 0)
    ]  # fmt: skip
    full = await stub.GetDenyList(denylist_pb2.GetDenyListRequest(), metadata=token)
    assert full.full and full.full_count == 2
    assert full.packed_full_list == (
        OLD.to_bytes(8, "big")
        + bytes([Reason.LOST])
        + OTHER.to_bytes(8, "big")
        + bytes([Reason.CLOSED])
    )
    reply = await h.stubs.taps.SubmitTaps(
        signed_batch(VALIDATOR, terminal_key(VALIDATOR), [(OLD, 2, 200, NOW_MS, 11)]),
        metadata=token,
    )
    assert reply.deny_list_version == now.version  # every batch reply carries it

    watch = stub.WatchDenyList(
        denylist_pb2.GetDenyListRequest(since_version=now.version), metadata=token
    )
    first = await watch.read()
    assert first.version == now.version and not first.changes
    await _op(h, "CancelLoss", "un-1", OLD)
    change = await asyncio.wait_for(watch.read(), 5)
    # The ride above took the found card to -100: back ACTIVE, it is listed LOW_BALANCE.
    assert [(c.card_id, c.listed, c.reason) for c in change.changes] == [
        (OLD, True, Reason.LOW_BALANCE)
    ]
    watch.cancel()


async def test_a_new_boarding_floor_relists_every_card(harness):
    h = harness
    await h.issue(OLD, balance_fen=50)
    await h.issue(NEW, balance_fen=500)
    assert h.server.service.engine.book.deny.listed == {}
    h.config.limits.min_boarding_balance_fen = 100  # the operator raises the floor
    await h.restart()  # the changed configuration is journaled and applied
    full = await h.stubs.deny.GetDenyList(denylist_pb2.GetDenyListRequest(), metadata=HALL)
    assert full.packed_full_list == OLD.to_bytes(8, "big") + bytes([Reason.LOW_BALANCE])
