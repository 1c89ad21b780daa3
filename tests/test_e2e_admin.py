"""AdminService, health and metrics end to end."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import generate_latest

from clearing.codes import TapStatus
from clearing.limits import MANUAL_CLOCK_STEP_MS_MAX
from clearing.runtime.config import parse_config
from clearing.server.app import Server
from clearing.tools.client import Stubs, bearer, channel, signed_batch
from clearing.v1 import admin_pb2
from tests.conftest import NOW_MS, POS, TOKENS, VALIDATOR, city_dict, terminal_token

ADMIN = bearer(TOKENS["admin"])
CARD = 6_000_001


async def test_health_is_serving_and_metrics_count_taps(harness):
    health = health_pb2_grpc.HealthStub(harness.chan)
    reply = await health.Check(health_pb2.HealthCheckRequest())
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    await harness.issue(CARD, balance_fen=1_000)
    await harness.taps(VALIDATOR, [(CARD, 1, 200, NOW_MS, 11), (CARD, 2, 0, NOW_MS, 11)])
    text = generate_latest(harness.server.metrics.registry).decode()
    assert 'clearing_taps_total{status="OK",terminal_class="VALIDATOR"} 1.0' in text
    assert 'clearing_taps_total{status="INVALID_AMOUNT",terminal_class="VALIDATOR"} 1.0' in text
    for name in (
        "clearing_batch_latency_seconds_bucket",
        "clearing_journal_commit_latency_seconds_bucket",
        "clearing_journal_size_bytes",
        "clearing_journal_last_seq",
        "clearing_card_operations_total",
    ):
        assert name in text


async def test_effective_dated_merchant_rules(harness):
    await harness.issue(CARD, balance_fen=10_000)
    await harness.stubs.admin.AddMerchantRule(
        admin_pb2.MerchantRule(
            party_id="m-0001", effective_from_ms=NOW_MS - 1_000, discount_bp=7_000
        ),
        metadata=ADMIN,
    )
    before, after = await harness.taps(
        POS, [(CARD, 1, 1_000, NOW_MS - 1_001, 0), (CARD, 2, 1_000, NOW_MS - 1_000, 0)]
    )
    assert (before[3], after[3]) == (880, 700)
    rules = await harness.stubs.admin.ListMerchantRules(admin_pb2.ListRequest(), metadata=ADMIN)
    assert [(r.effective_from_ms, r.discount_bp) for r in rules.rules] == [
        (0, 8_800),
        (NOW_MS - 1_000, 7_000),
    ]
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await harness.stubs.admin.AddMerchantRule(
            admin_pb2.MerchantRule(party_id="m-0001", effective_from_ms=0, discount_bp=6_000),
            metadata=ADMIN,
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_a_new_terminal_can_submit_after_upsert(harness):
    key = bytes(range(32))
    await harness.stubs.admin.UpsertTerminal(
        admin_pb2.Terminal(
            terminal_id=777,
            terminal_class=admin_pb2.VALIDATOR,
            party_id="op-bus-1",
            key_hex=key.hex(),
            token="test-token-terminal-777",
        ),
        metadata=ADMIN,
    )
    await harness.issue(CARD, balance_fen=1_000)
    reply = await harness.stubs.taps.SubmitTaps(
        signed_batch(777, key, [(CARD, 1, 300, NOW_MS, 5)]),
        metadata=bearer("test-token-terminal-777"),
    )
    assert reply.packed_results[0] == TapStatus.OK
    await harness.restart()  # the terminal was journaled, its token survives
    assert harness.server.service.principal("test-token-terminal-777").terminal_id == 777


async def test_terminal_status_reports_gaps(harness):
    await harness.issue(CARD, balance_fen=1_000)
    await harness.taps(VALIDATOR, [(CARD, s, 1, NOW_MS, 11) for s in (1, 2, 5, 9)])
    status = await harness.stubs.admin.GetTerminalStatus(
        admin_pb2.GetTerminalStatusRequest(terminal_id=VALIDATOR), metadata=ADMIN
    )
    assert (status.last_seq, status.received_count, status.gap_count) == (9, 4, 5)
    assert [(g.first, g.last) for g in status.gaps] == [(3, 4), (6, 8)]
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await harness.stubs.admin.GetTerminalStatus(
            admin_pb2.GetTerminalStatusRequest(terminal_id=VALIDATOR),
            metadata=bearer(TOKENS["hall"]),
        )
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_set_clock_is_refused_without_manual_clock(tmp_path):
    raw = city_dict(str(tmp_path / "data"))
    raw["server"]["manual_clock"] = False
    server = Server(parse_config(raw))
    port = await server.start("127.0.0.1:0")
    try:
        async with channel(f"127.0.0.1:{port}") as chan:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await Stubs(chan).admin.SetClock(
                    admin_pb2.SetClockRequest(now_ms=1), metadata=ADMIN
                )
            assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    finally:
        await server.stop(0)


async def test_a_terminal_taken_out_of_the_configuration_is_revoked(harness):
    await harness.issue(CARD, balance_fen=1_000)
    await harness.taps(POS, [(CARD, 1, 100, NOW_MS, 0)])
    harness.config.terminals = [t for t in harness.config.terminals if t.id != POS]
    await harness.restart()  # the operator removed the stolen POS from the file
    assert harness.server.service.principal(terminal_token(POS)) is None
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await harness.taps(POS, [(CARD, 2, 100, NOW_MS, 0)])
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert await harness.balance(CARD) == 1_000 - 88


async def test_admin_changes_stand_until_the_file_itself_changes(harness):
    await harness.stubs.admin.SetConcession(
        admin_pb2.Concession(card_type="STUDENT", concession_bp=2_500), metadata=ADMIN
    )
    await harness.restart()  # same file: the admin's change stands
    listed = await harness.stubs.admin.ListConcessions(admin_pb2.ListRequest(), metadata=ADMIN)
    assert {c.card_type: c.concession_bp for c in listed.concessions}["STUDENT"] == 2_500
    harness.config.rules.concession_bp["STUDENT"] = 4_000  # the operator edits the file
    await harness.restart()
    listed = await harness.stubs.admin.ListConcessions(admin_pb2.ListRequest(), metadata=ADMIN)
    assert {c.card_type: c.concession_bp for c in listed.concessions}["STUDENT"] == 4_000


async def test_a_huge_echoed_input_is_cut_not_turned_into_another_status(harness):
    """A refusal quotes what was sent; 300 KiB of it would break gRPC's 16 KiB limit on
    trailers and reach the caller as RESOURCE_EXHAUSTED instead of the real status."""
    from clearing.v1 import settlement_pb2

    request = settlement_pb2.SettlementRequest(business_date="2030-" + "9" * 300_000)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await harness.stubs.settlement.GetSettlement(request, metadata=bearer(TOKENS["finance"]))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "'2030-9999" in caught.value.details()  # quoted, a little of it
    assert len(caught.value.details()) < 200


def test_a_long_refusal_is_cut_at_the_details_limit():
    """Whatever a refusal quotes, its details stay under gRPC's trailer limit."""
    from clearing.errors import Refusal, RequestRejected
    from clearing.limits import STATUS_DETAILS_CHARS_MAX
    from clearing.server.grpc_status import to_status

    code, details = to_status(RequestRejected(Refusal.NOT_FOUND, "no card " + "9" * 300_000))
    assert code == grpc.StatusCode.NOT_FOUND
    assert details == ("no card " + "9" * 300_000)[:STATUS_DETAILS_CHARS_MAX] + "… (cut)"


async def test_set_clock_moves_at_most_a_year_ahead(harness):
    now = harness.server.service.clock.now_ms()
    for far in (now + MANUAL_CLOCK_STEP_MS_MAX + 1, 2**63 - 1, 0, -5):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await harness.stubs.admin.SetClock(
                admin_pb2.SetClockRequest(now_ms=far), metadata=ADMIN
            )
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert harness.server.service.clock.now_ms() == now
