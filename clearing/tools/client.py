"""A small client for terminals, halls and tests: builds signed batches, calls the server."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from clearing.errors import ClearingError
from clearing.limits import GRPC_MESSAGE_BYTES_MAX, RESULT_STRUCT, TAP_STRUCT
from clearing.runtime.tls import ClientTls
from clearing.server.tap_service import batch_mac
from clearing.v1 import (
    admin_pb2_grpc,
    cards_pb2,
    cards_pb2_grpc,
    denylist_pb2_grpc,
    settlement_pb2_grpc,
    taps_pb2,
    taps_pb2_grpc,
)

# (card_id, terminal_seq, list_amount_fen, occurred_at_ms, route_id)
TapTuple = tuple[int, int, int, int, int]


def pack_taps(taps: Iterable[TapTuple]) -> bytes:
    return b"".join(TAP_STRUCT.pack(*tap) for tap in taps)


def signed_batch(
    terminal_id: int, key: bytes, taps: Sequence[TapTuple], *, packed: bool = True
) -> taps_pb2.TapBatch:
    """A batch with its SPEC §9 MAC, as packed_taps or as Tap messages."""
    raw = pack_taps(taps)
    batch = taps_pb2.TapBatch(terminal_id=terminal_id, mac=batch_mac(key, terminal_id, raw))
    if packed:
        batch.packed_taps = raw
    else:
        batch.taps.extend(
            taps_pb2.Tap(card_id=c, terminal_seq=s, list_amount_fen=a, occurred_at_ms=o, route_id=r)
            for c, s, a, o, r in taps
        )
    return batch


def unpack_results(reply: taps_pb2.TapBatchResult) -> list[tuple[int, ...]]:
    """(status, charged_to, duplicate, charged, discount, balance_after, journal_seq) per tap."""
    if reply.packed_results:
        return list(RESULT_STRUCT.iter_unpack(reply.packed_results))
    return [
        (
            r.status,
            r.charged_to,
            int(r.duplicate),
            r.charged_fen,
            r.discount_fen,
            r.balance_after_fen,
            r.journal_seq,
        )
        for r in reply.results
    ]


def channel(target: str, *, tls: ClientTls | None = None) -> grpc.aio.Channel:
    """A channel to the server: plaintext, or TLS (mutual TLS with a client
    certificate) when ``tls`` is given."""
    options = [
        ("grpc.max_receive_message_length", GRPC_MESSAGE_BYTES_MAX),
        ("grpc.max_send_message_length", GRPC_MESSAGE_BYTES_MAX),
    ]
    if tls is None:
        return grpc.aio.insecure_channel(target, options=options)
    return grpc.aio.secure_channel(target, tls.credentials(), options=options + tls.options())


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


class Stubs:
    """Every stub on one channel."""

    def __init__(self, chan: grpc.aio.Channel) -> None:
        self.taps = taps_pb2_grpc.TapServiceStub(chan)
        self.cards = cards_pb2_grpc.CardServiceStub(chan)
        self.admin = admin_pb2_grpc.AdminServiceStub(chan)
        self.deny = denylist_pb2_grpc.DenyListServiceStub(chan)
        self.settlement = settlement_pb2_grpc.SettlementServiceStub(chan)


async def top_up(stubs: Stubs, token: str, request_id: str, card_id: int, amount_fen: int):
    return await stubs.cards.TopUp(
        cards_pb2.TopUpRequest(request_id=request_id, card_id=card_id, amount_fen=amount_fen),
        metadata=bearer(token),
    )


def serve_command(
    listen: str,
    metrics_listen: str,
    *,
    config: str | None = None,
    data_dir: str | None = None,
    manual_clock: bool = False,
) -> list[str]:
    """The argv of ``clearing serve`` on loopback, for demos, tests and benchmarks."""
    argv = [sys.executable, "-m", "clearing", "serve", "--listen", listen]
    argv += ["--metrics-listen", metrics_listen]
    if config is not None:
        argv += ["--config", config]
    if data_dir is not None:
        argv += ["--data-dir", data_dir]
    if manual_clock:
        argv.append("--manual-clock")
    return argv


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def wait_serving(
    target: str, server: subprocess.Popen, seconds_max: float, *, tls: ClientTls | None = None
) -> None:
    """Poll gRPC health until SERVING; ClearingError if the process exits or time runs out."""
    deadline = time.monotonic() + seconds_max
    async with channel(target, tls=tls) as chan:
        health = health_pb2_grpc.HealthStub(chan)
        while time.monotonic() < deadline:
            if server.poll() is not None:
                raise ClearingError(f"the server exited with {server.returncode} while starting")
            try:
                reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=0.5)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass  # not listening yet
            await asyncio.sleep(0.05)
    raise ClearingError(f"the server at {target} did not become SERVING in {seconds_max} s")
