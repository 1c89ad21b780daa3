"""Taps end to end: a real server on loopback, a real LMDB journal in a temp dir."""

from __future__ import annotations

import grpc
import pytest

from clearing.codes import ChargedTo, TapStatus
from clearing.limits import TERMINAL_SEQ_AHEAD_MAX
from clearing.storage.verify import verify_journal
from clearing.tools.client import bearer, signed_batch, unpack_results
from clearing.v1 import admin_pb2, cards_pb2, taps_pb2
from tests.conftest import (
    BILLING,
    NOW_MS,
    POS,
    TOKENS,
    VALIDATOR,
    VALIDATOR_2,
    terminal_key,
    terminal_token,
)

ADULT, STUDENT, POOR, LOST = 9_000_001, 9_000_002, 9_000_003, 9_000_004
DAY_MS = 86_400_000


async def _city_cards(h) -> None:
    await h.issue(ADULT, 1, 5_000)
    await h.issue(STUDENT, 2, 5_000)
    await h.issue(POOR, 1, 100)
    await h.issue(LOST, 1, 1_000)


def _status(result) -> TapStatus:
    return TapStatus(result[0])


@pytest.mark.parametrize("packed", [True, False], ids=["packed", "messages"])
async def test_every_outcome_over_grpc(harness, packed):
    h = harness
    await _city_cards(h)
    await h.stubs.cards.ReportLoss(
        cards_pb2.CardRequest(request_id="loss-1", card_id=LOST), metadata=bearer(TOKENS["hall"])
    )
    rides = await h.taps(
        VALIDATOR,
        [
            (ADULT, 1, 200, NOW_MS - 60_000, 11),  # OK 200
            (STUDENT, 2, 201, NOW_MS - 60_000, 11),  # OK half_up(100.5) = 101
            (ADULT, 3, 0, NOW_MS, 11),  # INVALID_AMOUNT
            (ADULT, 4, 200, NOW_MS - 8 * DAY_MS, 11),  # TOO_LATE
            (ADULT, 5, 200, NOW_MS + 301_000, 11),  # IN_FUTURE
            (424242, 6, 200, NOW_MS, 11),  # UNKNOWN_CARD
            (LOST, 7, 200, NOW_MS, 11),  # OK, charged to the lost card (liability window)
            (ADULT, 1, 200, NOW_MS - 60_000, 11),  # duplicate inside the batch
            (ADULT, 2, 999, NOW_MS - 60_000, 11),  # ID_CONFLICT with seq 2
        ],
        packed=packed,
    )
    assert [_status(r) for r in rides] == [
        TapStatus.OK,
        TapStatus.OK,
        TapStatus.INVALID_AMOUNT,
        TapStatus.TOO_LATE,
        TapStatus.IN_FUTURE,
        TapStatus.UNKNOWN_CARD,
        TapStatus.OK,
        TapStatus.OK,
        TapStatus.ID_CONFLICT,
    ]
    assert rides[0][3:6] == (200, 0, 4_800)
    assert rides[1][3:6] == (101, 100, 4_899)
    assert rides[5][5] == 0  # unknown card: balance 0
    assert rides[6][1] == ChargedTo.CARD and rides[6][5] == 800
    assert rides[7] == (*rides[0][:2], 1, *rides[0][3:])  # the original, flagged duplicate
    assert rides[8][3:6] == (0, 0, 4_800)  # the conflict changes nothing (ADULT)
    shop = await h.taps(
        POS,
        [
            (ADULT, 1, 1_005, NOW_MS, 0),  # 8800 bp: 884.4 -> 884
            (LOST, 2, 100, NOW_MS, 0),  # CARD_BLOCKED
            (POOR, 3, 500, NOW_MS, 0),  # 440 > 100: INSUFFICIENT_FUNDS
        ],
        packed=packed,
    )
    assert [_status(r) for r in shop] == [
        TapStatus.OK,
        TapStatus.CARD_BLOCKED,
        TapStatus.INSUFFICIENT_FUNDS,
    ]
    assert shop[0][3:6] == (884, 121, 4_800 - 884)
    assert shop[2][3:6] == (0, 0, 100)
    bill = await h.taps(BILLING, [(STUDENT, 1, 899, NOW_MS, 0)], packed=packed)
    assert bill[0][3:6] == (899, 0, 4_899 - 899)
    assert await h.balance(ADULT) == 4_800 - 884
    assert await h.balance(LOST) == 800


async def test_duplicate_batch_returns_the_original_answer(harness):
    h = harness
    await _city_cards(h)
    taps = [(ADULT, 1, 200, NOW_MS, 11), (STUDENT, 2, 200, NOW_MS, 11)]
    first = await h.taps(VALIDATOR, taps)
    seq_before = h.last_seq
    h.server.service.clock.set(NOW_MS + 1_000)
    again = await h.taps(VALIDATOR, taps, packed=False)
    assert again == [(*r[:2], 1, *r[3:]) for r in first]
    assert await h.balance(ADULT) == 4_800
    assert h.last_seq == seq_before  # a replayed batch is answered from the records alone
    # One new tap among the repeats makes it a batch to journal; the repeats stay repeats.
    more = await h.taps(VALIDATOR, [*taps, (ADULT, 3, 200, NOW_MS + 1_000, 12)])
    assert [r[2] for r in more] == [1, 1, 0] and h.last_seq == seq_before + 1


async def test_conflict_is_refused_and_the_original_stands(harness):
    h = harness
    await _city_cards(h)
    (orig,) = await h.taps(POS, [(ADULT, 7, 1_000, NOW_MS, 0)])
    (conflict,) = await h.taps(POS, [(ADULT, 7, 2_000, NOW_MS, 0)])
    assert _status(conflict) == TapStatus.ID_CONFLICT
    (repeat,) = await h.taps(POS, [(ADULT, 7, 1_000, NOW_MS, 0)])
    assert repeat == (*orig[:2], 1, *orig[3:])
    assert await h.balance(ADULT) == 5_000 - 880


async def test_restart_keeps_every_acknowledged_tap_exactly_once(harness):
    h = harness
    await _city_cards(h)
    batches = [[(ADULT, 10 * b + i, 100, NOW_MS, 11) for i in range(1, 11)] for b in range(5)]
    answers = [await h.taps(VALIDATOR, batch) for batch in batches]
    before = await h.balance(ADULT)
    assert before == 5_000 - 50 * 100
    await h.restart()
    assert await h.balance(ADULT) == before
    for batch, answer in zip(batches, answers, strict=True):
        assert await h.taps(VALIDATOR, batch) == [(*r[:2], 1, *r[3:]) for r in answer]
    assert await h.balance(ADULT) == before
    data_dir = h.config.server.data_dir
    await h.stop()
    report = verify_journal(data_dir)
    assert report.startswith("journal OK") and " 50 taps" in report  # repeats journal nothing


async def test_streamed_batches_answer_in_order(harness):
    h = harness
    await _city_cards(h)
    key, token = terminal_key(VALIDATOR_2), terminal_token(VALIDATOR_2)
    batches = [
        signed_batch(VALIDATOR_2, key, [(ADULT, 100 * b + i, 1, NOW_MS, 12) for i in range(1, 101)])
        for b in range(20)
    ]
    replies = [r async for r in h.stubs.taps.StreamTaps(iter(batches), metadata=bearer(token))]
    assert len(replies) == 20
    seqs = [r.journal_seq for r in replies]
    assert seqs == sorted(seqs) and len(set(seqs)) == 20
    assert all(s[0] == TapStatus.OK for r in replies for s in unpack_results(r))
    assert await h.balance(ADULT) == 5_000 - 2_000


async def _refused(call, code: grpc.StatusCode) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    assert info.value.code() == code, info.value.details()
    return info.value.details()


async def test_bad_batches_are_refused_and_nothing_is_journaled(harness):
    h = harness
    await _city_cards(h)
    key, token = terminal_key(VALIDATOR), terminal_token(VALIDATOR)
    good = signed_batch(VALIDATOR, key, [(ADULT, 1, 200, NOW_MS, 11)])
    seq = h.last_seq
    submit = h.stubs.taps.SubmitTaps
    unauth, denied, invalid = (
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    await _refused(submit(good), unauth)
    await _refused(submit(good, metadata=bearer("not-a-token-at-all")), unauth)
    await _refused(submit(good, metadata=bearer(TOKENS["hall"])), denied)
    await _refused(submit(good, metadata=bearer(terminal_token(POS))), denied)
    bad_mac = taps_pb2.TapBatch()
    bad_mac.CopyFrom(good)
    bad_mac.mac = bytes(32)
    assert "MAC" in await _refused(submit(bad_mac, metadata=bearer(token)), unauth)
    tampered = taps_pb2.TapBatch()
    tampered.CopyFrom(good)
    tampered.packed_taps = good.packed_taps[:-1] + b"\x01"
    await _refused(submit(tampered, metadata=bearer(token)), unauth)
    empty = signed_batch(VALIDATOR, key, [])
    assert "empty" in await _refused(submit(empty, metadata=bearer(token)), invalid)
    ragged = taps_pb2.TapBatch(terminal_id=VALIDATOR, packed_taps=b"x" * 35, mac=bytes(32))
    await _refused(submit(ragged, metadata=bearer(token)), invalid)
    seq_zero = signed_batch(VALIDATOR, key, [(ADULT, 0, 200, NOW_MS, 11)])
    await _refused(submit(seq_zero, metadata=bearer(token)), invalid)
    both = signed_batch(VALIDATOR, key, [(ADULT, 1, 200, NOW_MS, 11)])
    both.taps.add(card_id=ADULT, terminal_seq=1, list_amount_fen=200, occurred_at_ms=NOW_MS)
    await _refused(submit(both, metadata=bearer(token)), invalid)
    limit = h.config.limits.max_batch_taps
    huge = signed_batch(VALIDATOR, key, [(ADULT, i, 1, NOW_MS, 11) for i in range(1, limit + 2)])
    assert "max_batch_taps" in await _refused(submit(huge, metadata=bearer(token)), invalid)
    assert h.last_seq == seq
    assert await h.balance(ADULT) == 5_000


async def test_edges_of_int64_never_wrap(harness):
    h = harness
    await _city_cards(h)
    big = 2**63 - 1
    results = await h.taps(
        VALIDATOR,
        [
            (2**64 - 1, 1, big, NOW_MS, 2**32 - 1),  # terminal_seq 2**64 - 1: see below
            (ADULT, 2, -(2**63), NOW_MS, 11),
            (ADULT, 3, 200, -(2**63), 11),
            (ADULT, 4, 200, big, 11),
        ],
    )
    assert [_status(r) for r in results] == [
        TapStatus.INVALID_AMOUNT,
        TapStatus.INVALID_AMOUNT,
        TapStatus.TOO_LATE,
        TapStatus.IN_FUTURE,
    ]
    assert await h.balance(ADULT) == 5_000


async def _terminal_status(h, terminal_id: int) -> tuple:
    status = await h.stubs.admin.GetTerminalStatus(
        admin_pb2.GetTerminalStatusRequest(terminal_id=terminal_id),
        metadata=bearer(TOKENS["admin"]),
    )
    gaps = [(g.first, g.last) for g in status.gaps]
    return status.last_seq, status.received_count, status.gap_count, gaps


@pytest.mark.parametrize("packed", [True, False], ids=["packed", "messages"])
async def test_a_signed_tap_with_terminal_seq_far_ahead_is_refused(harness, packed):
    """One correctly signed tap with terminal_seq 2**64 - 1 must not report ~1.8e19 missing
    taps for good: it is refused, journaled, and the terminal's numbers stay as they were."""
    h = harness
    await _city_cards(h)
    first = await h.taps(VALIDATOR, [(ADULT, 1, 200, NOW_MS, 11), (ADULT, 3, 200, NOW_MS, 11)])
    assert [_status(r) for r in first] == [TapStatus.OK, TapStatus.OK]
    assert await _terminal_status(h, VALIDATOR) == (3, 2, 1, [(2, 2)])
    far = (ADULT, 2**64 - 1, 200, NOW_MS, 11)
    edge = (STUDENT, 3 + TERMINAL_SEQ_AHEAD_MAX + 1, 200, NOW_MS, 11)
    seq = h.last_seq
    refused = await h.taps(VALIDATOR, [far, edge], packed=packed)
    assert h.last_seq == seq + 1  # journaled like any outcome
    far_ahead = TapStatus.SEQUENCE_TOO_FAR_AHEAD
    assert refused == [
        (far_ahead, ChargedTo.CHARGED_TO_NONE, 0, 0, 0, 4_600, seq + 1),
        (far_ahead, ChargedTo.CHARGED_TO_NONE, 0, 0, 0, 5_000, seq + 1),
    ]
    assert await h.balance(ADULT) == 4_600 and await h.balance(STUDENT) == 5_000
    assert await _terminal_status(h, VALIDATOR) == (3, 2, 1, [(2, 2)])
    # The terminal carries on; the restart replays the journal, checking every answer.
    (next_one,) = await h.taps(VALIDATOR, [(ADULT, 4, 200, NOW_MS, 11)])
    assert _status(next_one) == TapStatus.OK
    await h.restart()
    assert await _terminal_status(h, VALIDATOR) == (4, 3, 1, [(2, 2)])
    seq = h.last_seq
    again = await h.taps(VALIDATOR, [far, edge], packed=packed)
    assert again == [(*r[:2], 1, *r[3:]) for r in refused]  # the same answer, as a duplicate
    assert h.last_seq == seq  # a retried batch journals nothing
    await h.stop()
    assert "journal OK" in verify_journal(h.config.server.data_dir)


async def test_an_engine_fault_stops_all_acknowledgements(harness, monkeypatch):
    h = harness
    await _city_cards(h)

    def overflowing(*args):
        raise OverflowError("int64 overflow in money arithmetic")

    monkeypatch.setattr(h.server.service.engine, "tap_batch", overflowing)
    key, token = terminal_key(VALIDATOR), terminal_token(VALIDATOR)
    batch = signed_batch(VALIDATOR, key, [(ADULT, 1, 200, NOW_MS, 11)])
    details = await _refused(h.stubs.taps.SubmitTaps(batch, metadata=bearer(token)),
                             grpc.StatusCode.UNAVAILABLE)  # fmt: skip
    assert "engine fault" in details
    top_up = cards_pb2.TopUpRequest(request_id="after-fault", card_id=ADULT, amount_fen=1)
    await _refused(h.stubs.cards.TopUp(top_up, metadata=bearer(TOKENS["hall"])),
                   grpc.StatusCode.UNAVAILABLE)  # fmt: skip
