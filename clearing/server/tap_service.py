"""TapService: batches of taps in, one reply per batch out (SPEC §9)."""

from __future__ import annotations

import asyncio
import hmac
import time
from collections.abc import AsyncIterator

import grpc

from clearing.errors import ClearingError, Refusal, RequestRejected
from clearing.limits import (
    RESULT_STRUCT,
    STREAM_BATCHES_IN_FLIGHT_MAX,
    TAP_BYTES,
    TAP_STRUCT,
    TERMINAL_ID_STRUCT,
)
from clearing.runtime.metrics import Metrics
from clearing.runtime.service import Principal, Service
from clearing.server.auth import authorize, rpc
from clearing.server.grpc_status import to_status
from clearing.v1 import taps_pb2, taps_pb2_grpc


def canonical_taps(batch: taps_pb2.TapBatch, max_batch_taps: int) -> bytes:
    """The batch's SPEC §9 canonical tap bytes, or INVALID_ARGUMENT."""
    if batch.taps and batch.packed_taps:
        raise RequestRejected(Refusal.INVALID_ARGUMENT, "send either taps or packed_taps, not both")
    if batch.packed_taps:
        packed = batch.packed_taps
        if len(packed) % TAP_BYTES:
            raise RequestRejected(
                Refusal.INVALID_ARGUMENT,
                f"packed_taps is {len(packed)} bytes, not a multiple of {TAP_BYTES}",
            )
    else:
        packed = b"".join(
            TAP_STRUCT.pack(
                t.card_id, t.terminal_seq, t.list_amount_fen, t.occurred_at_ms, t.route_id
            )
            for t in batch.taps
        )
    count = len(packed) // TAP_BYTES
    if count == 0:
        raise RequestRejected(Refusal.INVALID_ARGUMENT, "empty batch: no taps")
    if count > max_batch_taps:
        raise RequestRejected(
            Refusal.INVALID_ARGUMENT,
            f"batch of {count} taps is over max_batch_taps {max_batch_taps}",
        )
    bad = Service.first_invalid_tap(packed)
    if bad >= 0:
        raise RequestRejected(
            Refusal.INVALID_ARGUMENT, f"tap {bad}: terminal_seq must be 1 or more"
        )
    return packed


def batch_mac(key: bytes, terminal_id: int, packed_taps: bytes) -> bytes:
    mac = hmac.new(key, TERMINAL_ID_STRUCT.pack(terminal_id), "sha256")
    mac.update(packed_taps)
    return mac.digest()


def result_messages(packed_taps: bytes, packed_results: bytes) -> list[taps_pb2.TapResult]:
    """Structured results for a batch that came as ``taps`` (the slow path)."""
    return [
        taps_pb2.TapResult(
            terminal_seq=tap[1],
            status=res[0],
            charged_to=res[1],
            duplicate=bool(res[2]),
            charged_fen=res[3],
            discount_fen=res[4],
            balance_after_fen=res[5],
            journal_seq=res[6],
        )
        for tap, res in zip(
            TAP_STRUCT.iter_unpack(packed_taps),
            RESULT_STRUCT.iter_unpack(packed_results),
            strict=True,
        )
    ]


class TapServicer(taps_pb2_grpc.TapServiceServicer):
    def __init__(self, service: Service, metrics: Metrics) -> None:
        self.service = service
        self.metrics = metrics
        self._stream_seconds = metrics.grpc_seconds.labels("TapService", "StreamTaps")

    def _accept(self, batch: taps_pb2.TapBatch, principal: Principal) -> bytes:
        """Check one batch before anything is applied; return its canonical taps."""
        if batch.terminal_id != principal.terminal_id:
            raise RequestRejected(
                Refusal.PERMISSION_DENIED,
                f"terminal {principal.terminal_id} may only submit its own taps, "
                f"not terminal {batch.terminal_id}'s",
            )
        terminal = self.service.engine.registry.terminals.get(batch.terminal_id)
        if terminal is None:
            raise RequestRejected(
                Refusal.PERMISSION_DENIED, f"unknown terminal {batch.terminal_id}"
            )
        packed = canonical_taps(batch, self.service.engine.registry.limit("max_batch_taps"))
        expected = batch_mac(terminal.key, batch.terminal_id, packed)
        if not hmac.compare_digest(expected, batch.mac):
            raise RequestRejected(Refusal.UNAUTHENTICATED, "bad batch MAC: nothing was applied")
        return packed

    def _reply(self, batch: taps_pb2.TapBatch, envelope, started: float) -> taps_pb2.TapBatchResult:
        body = envelope.body
        terminal = self.service.engine.registry.terminals[body.terminal_id]
        summary = self.service.batch_summary(envelope)
        self.metrics.observe_batch(terminal.terminal_class, summary, time.perf_counter() - started)
        reply = taps_pb2.TapBatchResult(
            terminal_id=body.terminal_id,
            journal_seq=envelope.seq,
            accepted_at_ms=envelope.accepted_at_ms,
            deny_list_version=self.service.deny_list_version(),
        )
        if batch.packed_taps:
            reply.packed_results = body.packed_results
        else:
            reply.results.extend(result_messages(body.packed_taps, body.packed_results))
        return reply

    @rpc("TapService/SubmitTaps")
    async def SubmitTaps(self, request, context, principal):
        started = time.perf_counter()
        packed = self._accept(request, principal)
        envelope = await self.service.submit_taps(request.terminal_id, packed)
        return self._reply(request, envelope, started)

    async def StreamTaps(
        self, request_iterator: AsyncIterator[taps_pb2.TapBatch], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[taps_pb2.TapBatchResult]:
        """Batches are applied as they arrive and answered in order once durable."""
        try:
            principal = authorize(self.service, context, "TapService/StreamTaps")
        except ClearingError as exc:
            await context.abort(*to_status(exc))
        in_flight: asyncio.Queue = asyncio.Queue(STREAM_BATCHES_IN_FLIGHT_MAX)
        reader = asyncio.create_task(self._read_stream(request_iterator, principal, in_flight))
        try:
            while (item := await in_flight.get()) is not None:
                if isinstance(item, ClearingError):
                    await context.abort(*to_status(item))
                batch, durable, started = item
                try:
                    envelope = await durable
                except ClearingError as exc:
                    await context.abort(*to_status(exc))
                reply = self._reply(batch, envelope, started)
                # Per batch, as a unary call's: the stream's life is observed elsewhere.
                self._stream_seconds.observe(time.perf_counter() - started)
                yield reply
        finally:
            reader.cancel()

    async def _read_stream(self, request_iterator, principal, in_flight: asyncio.Queue) -> None:
        try:
            async for batch in request_iterator:
                started = time.perf_counter()
                packed = self._accept(batch, principal)
                durable = self.service.submit_taps_nowait(batch.terminal_id, packed)
                await in_flight.put((batch, durable, started))
        except ClearingError as exc:
            await in_flight.put(exc)
            return
        await in_flight.put(None)
