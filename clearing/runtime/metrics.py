"""Prometheus metrics: `clearing_` prefix, base units, `_total` counters, no card labels.

The metrics port answers three paths, every other one 404:

- ``/metrics``: prometheus_client's WSGI app (content negotiation, compression and
  ``name[]`` filters unchanged); 503 while the journal is replayed at start, so that
  Prometheus sees the engine down (``up`` 0) until its figures mean something;
- ``/healthz``: 200 while the process runs (the port opens before the replay);
- ``/readyz``: 200 while the server acknowledges work (journal replayed, serving,
  no storage failure or engine fault), else 503 with the reason.

It is a small server of ours: the port faces anyone who can reach it, so a bad or
vanishing client gets a short error answer or nothing, and at most one debug log
line, never a traceback on stderr.
"""

from __future__ import annotations

import contextlib
import socket
import sys
import threading
from collections.abc import Callable, Sequence
from http import HTTPStatus
from socketserver import ThreadingMixIn
from typing import IO, Any, cast
from wsgiref.simple_server import ServerHandler, WSGIRequestHandler, WSGIServer

import structlog
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    make_wsgi_app,
)

from clearing.core import layouts as v
from clearing.errors import ConfigError
from clearing.limits import (
    METRICS_CLIENT_SECONDS_MAX,
    METRICS_CONNECTIONS_MAX,
    METRICS_LOGGED_TEXT_CHARS_MAX,
    METRICS_REQUEST_LINE_BYTES_MAX,
)
from clearing.runtime.service import Service
from clearing.runtime.state_collector import EngineCollector

log = structlog.get_logger("clearing.runtime.metrics")


_LATENCY_BUCKETS_SECONDS = (
    0.0005,
    0.001,
    0.002,
    0.005,
    0.01,
    0.02,
    0.05,
    0.1,
    0.2,
    0.5,
    1.0,
    2.0,
    5.0,
)


# A stream lives from a reconnect (seconds) to a validator's whole shift (hours).
_STREAM_LIFETIME_BUCKETS_SECONDS = (1.0, 10.0, 60.0, 600.0, 3600.0, 4 * 3600.0, 24 * 3600.0)


def _always_ready() -> str | None:
    return None


def _always_scrapable() -> bool:
    return True


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.taps = Counter(
            "clearing_taps",
            "Taps answered, by terminal class and outcome",
            ["terminal_class", "status"],
            registry=r,
        )
        self.charged = Counter(
            "clearing_tap_charged_fen",
            "Σ charged_fen of applied taps (resubmissions not counted again), by payer",
            ["terminal_class", "charged_to"],
            registry=r,
        )
        self.batches = Counter(
            "clearing_tap_batches", "Tap batches answered", ["terminal_class"], registry=r
        )
        self.batch_latency = Histogram(
            "clearing_batch_latency_seconds",
            "From a batch's arrival to its durable answer",
            ["terminal_class"],
            buckets=_LATENCY_BUCKETS_SECONDS,
            registry=r,
        )
        self.commit_latency = Histogram(
            "clearing_journal_commit_latency_seconds",
            "One group commit, fsync included",
            buckets=_LATENCY_BUCKETS_SECONDS,
            registry=r,
        )
        self.committed_entries = Counter(
            "clearing_journal_entries", "Journal entries durably committed", registry=r
        )
        self.journal_seq = Gauge(
            "clearing_journal_last_seq", "Sequence number of the last committed entry", registry=r
        )
        self.journal_size = Gauge(
            "clearing_journal_size_bytes", "Bytes of the journal's LMDB file in use", registry=r
        )
        self.float_fen = Gauge(
            "clearing_float_fen", "Σ card balances: the float the card company holds", registry=r
        )
        self.card_ops = Counter(
            "clearing_card_operations",
            "Card operations answered",
            ["method", "status"],
            registry=r,
        )
        self.serving = Gauge("clearing_serving", "1 while the server acknowledges work", registry=r)
        self.journal_map_size = Gauge(
            "clearing_journal_map_size_bytes",
            "The journal's LMDB map size: writes fail once the file reaches it",
            registry=r,
        )
        grpc_labels = ["grpc_service", "grpc_method"]
        self.grpc_started = Counter(
            "clearing_grpc_server_started", "gRPC calls started", grpc_labels, registry=r
        )
        self.grpc_handled = Counter(
            "clearing_grpc_server_handled",
            "gRPC calls finished, by status code",
            [*grpc_labels, "grpc_code"],
            registry=r,
        )
        self.grpc_seconds = Histogram(
            "clearing_grpc_server_handling_seconds",
            "Unary calls: from start to end. StreamTaps: each batch, from its arrival to its "
            "answer. Other streams are not observed here (their life is the caller's choice)",
            grpc_labels,
            buckets=_LATENCY_BUCKETS_SECONDS,
            registry=r,
        )
        self.grpc_stream_seconds = Histogram(
            "clearing_grpc_server_stream_lifetime_seconds",
            "A streaming call's whole life, from its start to its end",
            grpc_labels,
            buckets=_STREAM_LIFETIME_BUCKETS_SECONDS,
            registry=r,
        )
        ProcessCollector(registry=r)  # process_resident_memory_bytes, process_cpu_seconds_total
        PlatformCollector(registry=r)
        self._tap_children: dict[str, list] = {}
        self._http: MetricsHttpServer | None = None  # the /metrics server, once serving

    def observe_batch(self, terminal_class: str, summary: Sequence[int], seconds: float) -> None:
        """``summary``: the batch's ``clearing.core.summary`` vector (counts and charged sums)."""
        children = self._tap_children.get(terminal_class)
        if children is None:
            children = [self.taps.labels(terminal_class, s) for s in v.STATUS_LABELS]
            children += [self.charged.labels(terminal_class, to) for to in ("CARD", "ISSUER_LOSS")]
            self._tap_children[terminal_class] = children
        counts = v.status_counts(summary)
        counts += [summary[v.CARD_CHARGED], summary[v.LOSS_CHARGED]]
        for child, count in zip(children, counts, strict=True):
            if count:
                child.inc(count)
        self.batches.labels(terminal_class).inc()
        self.batch_latency.labels(terminal_class).observe(seconds)

    def observe_commit(self, entries: int, seconds: float, last_seq: int) -> None:
        self.committed_entries.inc(entries)
        self.commit_latency.observe(seconds)
        self.journal_seq.set(last_seq)

    def watch_engine(self, service: Service) -> None:
        """Figures read from the engine at scrape time (deny list, gaps, checkpoints,
        settlement) and the journal's map size."""
        self.registry.register(EngineCollector(service))
        self.journal_map_size.set(service.journal.map_size_bytes)

    def watch_journal_size(self, size_bytes: Callable[[], int]) -> None:
        self.journal_size.set_function(size_bytes)

    def watch_float(self, float_fen: Callable[[], int]) -> None:
        self.float_fen.set_function(float_fen)

    def serve_http(
        self,
        listen: str,
        *,
        not_ready: Callable[[], str | None] = _always_ready,
        scrapable: Callable[[], bool] = _always_scrapable,
    ) -> None:
        """Serve /metrics, /healthz and /readyz on ``listen`` ("host:port") from a daemon
        thread. ``not_ready``: why the server is not acknowledging work (None: it is);
        ``scrapable``: whether /metrics may be read yet (False while the journal replays)."""
        host, _, port = listen.rpartition(":")
        try:
            self._http = MetricsHttpServer(
                host.strip("[]") or "127.0.0.1",
                int(port),
                self.registry,
                not_ready=not_ready,
                scrapable=scrapable,
            )
        except (OSError, ValueError) as exc:
            raise ConfigError(f"metrics_listen {listen!r}: cannot listen there: {exc}") from exc
        threading.Thread(target=self._http.serve_forever, name="metrics-http", daemon=True).start()

    def stop_http(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None


class _Scrape(ServerHandler):
    """wsgiref's run of the app for one request; an error in it (a collector
    failing) is one warning line instead of a traceback printed to stderr."""

    def log_exception(self, exc_info: Any) -> None:
        log.warning("metrics scrape failed", error=f"{exc_info[0].__name__}: {exc_info[1]}")


class _MetricsRequest(WSGIRequestHandler):
    """One connection, one request (as wsgiref), with the request line bounded
    and a client that resets, stops reading or goes silent dropped quietly."""

    timeout = METRICS_CLIENT_SECONDS_MAX  # StreamRequestHandler.setup sets it on the socket

    def handle(self) -> None:
        # The bound is on the whole exchange, not on each read: a client trickling a
        # byte at a time would otherwise hold its slot for ever.
        deadline = threading.Timer(self.timeout, self._drop)
        deadline.daemon = True
        deadline.start()
        try:
            self._handle_one()
        except OSError as exc:  # reset, broken pipe, timed out: the client is gone
            log.debug("metrics client gone", client=self.client_address[0], error=repr(exc))
        finally:
            deadline.cancel()

    def _drop(self) -> None:
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def _handle_one(self) -> None:
        # wsgiref's handle(), but with our bound on the request line.
        self.raw_requestline = self.rfile.readline(METRICS_REQUEST_LINE_BYTES_MAX + 1)
        if len(self.raw_requestline) > METRICS_REQUEST_LINE_BYTES_MAX:
            self.requestline = self.request_version = self.command = ""
            self.close_connection = True
            self.send_error(HTTPStatus.REQUEST_URI_TOO_LONG)
            return
        if not self.parse_request():  # it answered 400 / 431 / 505 itself
            return
        scrape = _Scrape(
            cast(IO[bytes], self.rfile),
            cast(IO[bytes], self.wfile),
            self.get_stderr(),
            self.get_environ(),
            multithread=False,
        )
        scrape.request_handler = self  # type: ignore[attr-defined]  # wsgiref logs through it
        app = cast(WSGIServer, self.server).get_app()
        assert app is not None  # set in MetricsServer.__init__
        scrape.run(app)

    def log_message(self, format: str, *args: Any) -> None:
        text = (format % args)[:METRICS_LOGGED_TEXT_CHARS_MAX]
        log.debug("metrics request", client=self.client_address[0], message=text)


_TEXT = (("Content-Type", "text/plain; charset=utf-8"), ("Cache-Control", "no-store"))
PATHS = ("/metrics", "/healthz", "/readyz")


def _answer(start_response: Callable, status: HTTPStatus, text: str) -> list[bytes]:
    # A new list each time: wsgiref adds Content-Length to the very list it is given.
    start_response(f"{status.value} {status.phrase}", list(_TEXT))
    return [text.encode()]


def probes_app(
    metrics_app: Callable, not_ready: Callable[[], str | None], scrapable: Callable[[], bool]
) -> Callable:
    """The port's WSGI app: /metrics (once scrapable), /healthz, /readyz; else 404."""

    def app(environ: dict, start_response: Callable) -> Any:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            if not scrapable():
                return _answer(
                    start_response,
                    HTTPStatus.SERVICE_UNAVAILABLE,
                    "starting: the journal is being replayed\n",
                )
            return metrics_app(environ, start_response)
        if path == "/healthz":
            return _answer(start_response, HTTPStatus.OK, "ok: the process is up\n")
        if path == "/readyz":
            reason = not_ready()
            if reason is None:
                return _answer(start_response, HTTPStatus.OK, "ready: acknowledging work\n")
            return _answer(start_response, HTTPStatus.SERVICE_UNAVAILABLE, f"not ready: {reason}\n")
        return _answer(
            start_response, HTTPStatus.NOT_FOUND, f"not found; paths: {' '.join(PATHS)}\n"
        )

    return app


class MetricsHttpServer(ThreadingMixIn, WSGIServer):
    """The port's paths (``probes_app``) on our quiet request handler."""

    daemon_threads = True  # a client in flight does not hold up the stop
    # The kernel's queue of connections not yet accepted (socketserver's default is 5):
    # a burst of scrapers past it would wait a second for their SYN to be retried.
    request_queue_size = 4 * METRICS_CONNECTIONS_MAX

    def __init__(
        self,
        host: str,
        port: int,
        registry: CollectorRegistry,
        *,
        not_ready: Callable[[], str | None] = _always_ready,
        scrapable: Callable[[], bool] = _always_scrapable,
    ) -> None:
        self._slots = threading.BoundedSemaphore(METRICS_CONNECTIONS_MAX)
        # IPv4 or IPv6, whichever the address is (as prometheus_client's own server).
        family, *_, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        self.address_family = family
        super().__init__((str(address[0]), port), _MetricsRequest)
        self.set_app(probes_app(make_wsgi_app(registry), not_ready, scrapable))

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            log.debug("metrics connection refused: too many open", client=client_address[0])
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)  # starts the thread
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """What escaped a connection (not the client leaving: handle() takes that):
        one line, where socketserver would print a traceback to stderr."""
        log.warning(
            "metrics connection failed", client=client_address[0], error=repr(sys.exc_info()[1])
        )
