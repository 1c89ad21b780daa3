"""Assembles the gRPC server: servicers, health, reflection, metrics, TLS, shutdown.

Shutdown (SIGTERM or SIGINT, or ``Server.stop``): health turns NOT_SERVING;
streaming calls (StreamTaps, WatchDenyList, health watches) are ended at once
with UNAVAILABLE, after answering every request they had read (``Draining``);
no new call is taken; unary calls in flight get ``[server] grace_seconds`` to
finish, then are cancelled; what is queued is committed, a checkpoint taken,
LMDB closed. A second signal cuts the grace short; the rest is the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
from collections.abc import Callable

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from clearing.limits import GRPC_MESSAGE_BYTES_MAX, HEALTH_NOTICE_SECONDS
from clearing.runtime import sd_notify
from clearing.runtime.config import Config
from clearing.runtime.metrics import Metrics
from clearing.runtime.service import Service
from clearing.runtime.tls import server_tls
from clearing.server.admin_service import AdminServicer
from clearing.server.card_service import CardServicer
from clearing.server.deny_list_service import DenyListServicer
from clearing.server.draining import STOPPING_MESSAGE, Draining
from clearing.server.malformed import MalformedRequests
from clearing.server.observe import ObservedCalls
from clearing.server.reflection import enable_reflection
from clearing.server.settlement_service import SettlementServicer
from clearing.server.tap_service import TapServicer
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

__all__ = ["STOPPING_MESSAGE", "Draining", "Server", "run_server"]

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
        self.draining = Draining()
        self.grpc: grpc.aio.Server | None = None
        self.port = 0
        self._health_task: asyncio.Future | None = None
        self._hurry = asyncio.Event()  # a second signal: stop waiting for calls in flight
        self._stopped: asyncio.Future | None = None
        self.replayed = False  # the journal is replayed: /metrics may be read

    def not_ready(self) -> str | None:
        """Why no work is acknowledged now (/readyz), or None when it is."""
        if not self.replayed:
            return "starting: the journal is being replayed"
        service = self.service
        if service.fault is not None:
            return service.fault
        if service.journal.failure is not None:
            return f"storage failure: {service.journal.failure}"
        if not service.serving:
            return "not serving (stopping)"
        return None

    def serve_http(self, listen: str | None = None) -> None:
        """The metrics port: /healthz from now on, /metrics once replayed, /readyz."""
        self.metrics.serve_http(
            listen or self.config.server.metrics_listen,
            not_ready=self.not_ready,
            scrapable=lambda: self.replayed,
        )

    async def start(self, listen: str | None = None) -> int:
        """Replay, then listen; health turns SERVING only when all is ready."""
        settings = self.config.server
        # Read first: a bad file must not leave a journal open behind it.
        tls = server_tls(settings.tls_cert_file, settings.tls_key_file, settings.tls_client_ca_file)
        self.grpc = grpc.aio.server(
            # Outermost first: every call is counted (malformed ones too); bytes that do
            # not parse are refused as the caller's token and role decide first, then as
            # malformed; Draining, innermost, hands the others async generators only.
            interceptors=[
                ObservedCalls(self.metrics),
                MalformedRequests(self.service),
                self.draining,
            ],
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
        self.replayed = True
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
        if settings.reflection:
            enable_reflection((*SERVICE_NAMES, health.SERVICE_NAME), self.grpc)
        address = listen or settings.listen
        if tls is None:
            self.port = self.grpc.add_insecure_port(address)
        else:
            self.port = self.grpc.add_secure_port(address, tls.credentials())
        log.info("listening", address=address, transport=tls.mode if tls else "plaintext (no TLS)")
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
        self.metrics.watch_engine(self.service)

    def _storage_failed(self, message: str) -> None:
        log.error("storage failure: no more work is acknowledged", reason=message)
        self.metrics.serving.set(0)
        self._health_task = asyncio.ensure_future(
            self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        )

    async def _set_health(self, status: int) -> None:
        for name in ("", *SERVICE_NAMES):
            await self.health.set(name, status)

    def hurry(self) -> None:
        """Stop waiting for calls in flight: cancel them now (what is queued still commits)."""
        self._hurry.set()

    async def _unless_hurried(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._hurry.wait(), seconds)

    async def stop(self, grace_seconds: float | None = None) -> None:
        """NOT_SERVING, end streams, let unary calls finish within the grace period
        (default ``[server] grace_seconds``), commit, checkpoint, close LMDB.

        Once only: a second call waits for the first (LMDB must be closed once)."""
        if self._stopped is None:
            self._stopped = asyncio.ensure_future(self._stop(grace_seconds))
        await asyncio.shield(self._stopped)

    async def _stop(self, grace_seconds: float | None) -> None:
        grace = self.config.server.grace_seconds if grace_seconds is None else grace_seconds
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        self.metrics.serving.set(0)
        if self.grpc is not None:
            if self.draining.open_streams and grace > 0:
                await self._unless_hurried(min(HEALTH_NOTICE_SECONDS, grace))
            self.draining.stop()
            if self._hurry.is_set():
                grace = 0.0
            log.info("stopping: no new calls", grace_seconds=grace)
            stopped = asyncio.ensure_future(self.grpc.stop(grace))
            hurried = asyncio.ensure_future(self._hurry.wait())
            await asyncio.wait((stopped, hurried), return_when=asyncio.FIRST_COMPLETED)
            hurried.cancel()
            if not stopped.done():
                log.warning("calls in flight cancelled before the grace period ended")
                await self.grpc.stop(0)  # grpc: a second stop cancels what is left
            await stopped
        self.metrics.stop_http()  # before LMDB closes: a scrape reads the journal
        await self.service.stop()
        log.info("stopped", last_seq=self.service.engine.last_seq)


class Systemd:
    """``Type=notify`` readiness and stopping (sd_notify); nothing without NOTIFY_SOCKET."""

    def __init__(self) -> None:
        self._notifier = sd_notify.Notifier()
        if os.environ.get("NOTIFY_SOCKET") and self._notifier.socket is None:
            log.warning("NOTIFY_SOCKET is set but cannot be reached: systemd is not told")

    def notify(self, *fields: str) -> None:
        self._notifier.notify("\n".join(fields))


async def run_server(config: Config, *, on_ready: Callable[[int], None] | None = None) -> None:
    """Serve until SIGTERM or SIGINT, then shut down gracefully; a second signal
    cuts the grace period short (calls in flight are cancelled, the rest is the same)."""
    server = Server(config)
    systemd = Systemd()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal(sig: signal.Signals) -> None:
        if stop.is_set():
            log.warning("second signal: cancelling calls in flight", signal=sig.name)
            server.hurry()
            return
        log.info("signal: shutting down", signal=sig.name)
        stop.set()

    # Handlers before the replay: a signal while starting still stops cleanly.
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        # Before the replay, so that /healthz answers while it runs (which can take minutes).
        server.serve_http()
        port = await server.start()
        if not stop.is_set():
            systemd.notify("READY=1", f"STATUS=serving on {port}")
            if on_ready is not None:
                on_ready(port)
            await stop.wait()
        systemd.notify("STOPPING=1", "STATUS=stopping: finishing calls in flight")
        await server.stop()
    finally:
        server.metrics.stop_http()  # when start failed; stop() has closed it otherwise
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
