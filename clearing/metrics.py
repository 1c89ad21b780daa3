"""Prometheus metrics: `clearing_` prefix, base units, `_total` counters, no card labels."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    start_http_server,
)

from clearing import tapsum_py as v
from clearing.engine_metrics import EngineCollector
from clearing.service import Service

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
            "From a call's start to its end (a stream's whole life)",
            grpc_labels,
            buckets=_LATENCY_BUCKETS_SECONDS,
            registry=r,
        )
        ProcessCollector(registry=r)  # process_resident_memory_bytes, process_cpu_seconds_total
        PlatformCollector(registry=r)
        self._tap_children: dict[str, list] = {}
        self._http = None  # the /metrics HTTP server, once serving

    def observe_batch(self, terminal_class: str, summary: Sequence[int], seconds: float) -> None:
        """``summary``: the batch's ``clearing.tapsum`` vector (counts and charged sums)."""
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

    def serve_http(self, listen: str) -> None:
        host, _, port = listen.rpartition(":")
        self._http, _ = start_http_server(
            int(port), addr=host or "127.0.0.1", registry=self.registry
        )

    def stop_http(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
