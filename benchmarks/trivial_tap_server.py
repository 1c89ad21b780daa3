"""The transport ceiling: a TapService that answers every batch OK and does nothing else.

``python benchmarks/trivial_tap_server.py --listen 127.0.0.1:P`` serves
``clearing.v1.TapService`` (``SubmitTaps`` and ``StreamTaps``) and standard
gRPC health on a ``grpc.aio`` server built like the engine's (same message
size limits, same options) but with nothing behind it: no authentication, no
MAC check, no engine, no journal. Each batch is answered with
``packed_results`` of the right size, 40 bytes a tap with status OK (1),
charged_to CARD (1) and every other field 0, and the reply's ``journal_seq``
is a counter. A batch sent as ``taps`` messages is answered the same way.

What the load generator reaches against it is what the transport (gRPC,
protobuf, loopback, the generator itself) allows on this machine: the
ceiling that ``benchmarks/test_bench_e2e.py`` compares the engine with.
SIGTERM or SIGINT stops it gracefully.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import itertools
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from clearing.limits import GRPC_MESSAGE_BYTES_MAX, RESULT_BYTES, TAP_BYTES
from clearing.v1 import taps_pb2, taps_pb2_grpc

OK = taps_pb2.TapResult.OK
CARD = taps_pb2.TapResult.CARD
# status OK, charged_to CARD, duplicate 0, 5 zero bytes, then four zero int64s.
OK_RESULT = bytes((OK, CARD)) + bytes(RESULT_BYTES - 2)
assert len(OK_RESULT) == RESULT_BYTES
GRACE_S = 2.0


@functools.lru_cache(maxsize=64)
def ok_results(taps: int) -> bytes:
    """``taps`` OK results, packed (built once per batch size)."""
    return OK_RESULT * taps


class TrivialTapService(taps_pb2_grpc.TapServiceServicer):
    def __init__(self) -> None:
        self.journal_seq = itertools.count(1)

    def _reply(self, batch: taps_pb2.TapBatch) -> taps_pb2.TapBatchResult:
        taps = len(batch.packed_taps) // TAP_BYTES if batch.packed_taps else len(batch.taps)
        return taps_pb2.TapBatchResult(
            terminal_id=batch.terminal_id,
            packed_results=ok_results(taps),
            journal_seq=next(self.journal_seq),
        )

    async def SubmitTaps(self, request, context):
        return self._reply(request)

    async def StreamTaps(
        self, request_iterator: AsyncIterator[taps_pb2.TapBatch], context
    ) -> AsyncIterator[taps_pb2.TapBatchResult]:
        async for batch in request_iterator:
            yield self._reply(batch)


async def serve(listen: str) -> None:
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", GRPC_MESSAGE_BYTES_MAX),
            ("grpc.max_send_message_length", GRPC_MESSAGE_BYTES_MAX),
            ("grpc.so_reuseport", 0),
        ]
    )
    taps_pb2_grpc.add_TapServiceServicer_to_server(TrivialTapService(), server)
    checks = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(checks, server)
    server.add_insecure_port(listen)
    await server.start()
    await checks.set("", health_pb2.HealthCheckResponse.SERVING)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await checks.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    await server.stop(GRACE_S)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", default="127.0.0.1:50061", help="host:port to serve on")
    asyncio.run(serve(parser.parse_args().listen))


if __name__ == "__main__":
    main()
