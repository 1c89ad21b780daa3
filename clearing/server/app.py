"""Assembles the gRPC server: servicers, health, reflection, metrics, shutdown."""

from __future__ import annotations

import asyncio
import gc
import signal
from collections.abc import Callable

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from clearing.config import Config
from clearing.limits import GRACE_SECONDS, GRPC_MESSAGE_BYTES_MAX
from clearing.metrics import Metrics
from clearing.server.admin import AdminServicer
from clearing.server.cards import CardServicer
from clearing.server.denylist import DenyListServicer
from clearing.server.malformed import MalformedRequests
from clearing.server.settlement import SettlementServicer
from clearing.server.taps import TapServicer
from clearing.service import Service
from clearing.settlement.runner import Settlements
from clearing.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    cards_pb2,
    cards_pb2_grpc,
    denylist_pb2,
    denylist_pb2_grpc,
    settlement_pb2,
    settlement_pb2_grpc,
    taps_pb2,
    taps_pb2_grpc,
)

log = structlog.get_logger("clearing.server")

SERVICE_NAMES = (
    taps_pb2.DESCRIPTOR.services_by_name["TapService"].full_name,
    cards_pb2.DESCRIPTOR.services_by_name["CardService"].full_name,
    admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name,
    denylist_pb2.DESCRIPTOR.services_by_name["DenyListService"].full_name,
    settlement_pb2.DESCRIPTOR.services_by_name["SettlementService"].full_name,
)


class Server:
    """A running engine: the service (journal + engine) behind a gRPC server."""

    def __init__(self, config: Config, *, ledger_class: type | None = None) -> None:
        self.config = config
        self.metrics = Metrics()
        self.service = Service(config, ledger_class=ledger_class)
        self.settlements = Settlements(self.service)
        self.health = health.aio.HealthServicer()
        self.grpc: grpc.aio.Server | None = None
        self.port = 0
        self._health_task: asyncio.Future | None = None

    async def start(self, listen: str | None = None) -> int:
        """Replay, then listen; health turns SERVING only when all is ready."""
        self.grpc = grpc.aio.server(
            interceptors=[MalformedRequests()],
            options=[
                ("grpc.max_receive_message_length", GRPC_MESSAGE_BYTES_MAX),
                ("grpc.max_send_message_length", GRPC_MESSAGE_BYTES_MAX),
                ("grpc.so_reuseport", 0),
            ],
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc)
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        self.service.load()
        self._wire_metrics()
        taps_pb2_grpc.add_TapServiceServicer_to_server(
            TapServicer(self.service, self.metrics), self.grpc
        )
        cards_pb2_grpc.add_CardServiceServicer_to_server(
            CardServicer(self.service, self.metrics), self.grpc
        )
        admin_pb2_grpc.add_AdminServiceServicer_to_server(AdminServicer(self.service), self.grpc)
        denylist_pb2_grpc.add_DenyListServiceServicer_to_server(
            DenyListServicer(self.service), self.grpc
        )
        settlement_pb2_grpc.add_SettlementServiceServicer_to_server(
            SettlementServicer(self.service, self.settlements), self.grpc
        )
        if self.config.server.reflection:
            reflection.enable_server_reflection(
                (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), self.grpc
            )
        self.port = self.grpc.add_insecure_port(listen or self.config.server.listen)
        await self.grpc.start()
        await self.service.start()
        gc.collect()
        gc.freeze()  # what replay built lives as long as the server: no GC pass rescans it
        await self._set_health(health_pb2.HealthCheckResponse.SERVING)
        self.metrics.serving.set(1)
        log.info("serving", port=self.port, last_seq=self.service.engine.last_seq)
        return self.port

    def _wire_metrics(self) -> None:
        journal = self.service.journal
        journal.on_commit = self.metrics.observe_commit
        journal.on_failure = self._storage_failed
        self.metrics.watch_journal_size(journal.size_bytes)
        # Read at scrape time (under the GIL, between engine calls); O(cards) in the core.
        self.metrics.watch_float(lambda: self.service.engine.ledger.total_balance_fen())
        self.metrics.journal_seq.set(journal.last_seq)

    def _storage_failed(self, message: str) -> None:
        log.error("storage failure: no more work is acknowledged", reason=message)
        self.metrics.serving.set(0)
        self._health_task = asyncio.ensure_future(
            self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        )

    async def _set_health(self, status: int) -> None:
        for name in ("", *SERVICE_NAMES):
            await self.health.set(name, status)

    async def stop(self, grace_seconds: float = GRACE_SECONDS) -> None:
        """NOT_SERVING, finish calls in flight, commit, checkpoint, close LMDB."""
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        self.metrics.serving.set(0)
        if self.grpc is not None:
            await self.grpc.stop(grace_seconds)
        await self.service.stop()
        self.metrics.stop_http()
        log.info("stopped", last_seq=self.service.engine.last_seq)


async def run_server(config: Config, *, on_ready: Callable[[int], None] | None = None) -> None:
    """Serve until SIGTERM or SIGINT, then shut down gracefully."""
    server = Server(config)
    port = await server.start()
    server.metrics.serve_http(config.server.metrics_listen)
    if on_ready is not None:
        on_ready(port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop()
