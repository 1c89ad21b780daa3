"""The gRPC handling-time histogram (issue 13, point 15): StreamTaps is observed per
batch, as a unary call is, and a stream's whole life goes to its own histogram."""

from __future__ import annotations

import asyncio

from clearing.tools.client import bearer, signed_batch
from tests.conftest import NOW_MS, VALIDATOR_2, terminal_key, terminal_token

ADULT = 9_000_001
BATCHES = 12
PAUSE_SECONDS = 0.05  # between two batches of the stream: its life is at least the pauses


async def test_stream_taps_handling_time_is_per_batch(harness):
    h = harness
    await h.issue(ADULT, 1, 50_000)
    key, token = terminal_key(VALIDATOR_2), terminal_token(VALIDATOR_2)

    async def batches():
        for b in range(BATCHES):
            taps = [(ADULT, 10 * b + i, 1, NOW_MS, 12) for i in range(1, 11)]
            yield signed_batch(VALIDATOR_2, key, taps)
            await asyncio.sleep(PAUSE_SECONDS)

    replies = [r async for r in h.stubs.taps.StreamTaps(batches(), metadata=bearer(token))]
    assert len(replies) == BATCHES
    registry = h.server.metrics.registry
    labels = {"grpc_service": "TapService", "grpc_method": "StreamTaps"}
    for _ in range(100):  # the server's side of the stream ends just after the client's
        lifetimes = registry.get_sample_value(
            "clearing_grpc_server_stream_lifetime_seconds_count", labels
        )
        if lifetimes:
            break
        await asyncio.sleep(0.01)
    handled = registry.get_sample_value("clearing_grpc_server_handling_seconds_count", labels)
    assert handled == BATCHES  # one observation a batch, not one for the stream
    assert lifetimes == 1
    life = registry.get_sample_value("clearing_grpc_server_stream_lifetime_seconds_sum", labels)
    assert life >= (BATCHES - 1) * PAUSE_SECONDS
    # A unary call is observed as before, in the handling histogram only.
    await h.balance(ADULT)
    unary = {"grpc_service": "CardService", "grpc_method": "GetCard"}
    assert registry.get_sample_value("clearing_grpc_server_handling_seconds_count", unary) == 1
    assert not registry.get_sample_value(
        "clearing_grpc_server_stream_lifetime_seconds_count", unary
    )
