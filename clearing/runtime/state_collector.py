"""Metrics read from the engine's state at scrape time: nothing to keep in step.

The collector runs on the /metrics HTTP thread. It reads through single C
calls or copies (``list(dict)``) so that the event loop's changes between
two reads cannot break it; each figure is as of some instant of the scrape.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Iterator
from zoneinfo import ZoneInfo

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from clearing.runtime.service import Service


class EngineCollector(Collector):
    def __init__(self, service: Service) -> None:
        self.service = service

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        yield self._gauge(
            "clearing_deny_list_version",
            "Deny-list version validators can fetch (its changes are durable)",
            self.service.deny_list_version(),
        )
        yield self._terminal_gaps()
        yield from self._checkpoints()
        yield from self._settlement()

    @staticmethod
    def _gauge(name: str, text: str, value: float) -> GaugeMetricFamily:
        family = GaugeMetricFamily(name, text)
        family.add_metric([], value)
        return family

    def _terminal_gaps(self) -> GaugeMetricFamily:
        """Σ sequence numbers never received below each terminal's highest, by class."""
        engine = self.service.engine
        gaps: dict[str, int] = defaultdict(int)
        for terminal in list(engine.registry.terminals.values()):
            try:
                last_seq, received = engine.ledger.terminal_status(terminal.terminal_id)
            except KeyError:  # being added right now: in the registry, not yet in the ledger
                continue
            gaps[terminal.terminal_class] += last_seq - received
        family = GaugeMetricFamily(
            "clearing_terminal_gap_taps",
            "Taps missing below each terminal's highest sequence number, by terminal class",
            labels=["terminal_class"],
        )
        for terminal_class, missing in sorted(gaps.items()):
            family.add_metric([terminal_class], missing)
        return family

    def _checkpoints(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        stats = self.service.journal.checkpoints.stats
        yield self._gauge(
            "clearing_checkpoint_last_success_timestamp_seconds",
            "When the newest checkpoint was stored (0: none since the start)",
            stats.last_written_unix_s,
        )
        yield self._gauge(
            "clearing_checkpoint_last_seq", "Journal entry of the newest checkpoint", stats.last_seq
        )
        yield self._gauge(
            "clearing_checkpoint_last_duration_seconds",
            "From the fork to the stored checkpoint, the last time",
            stats.last_seconds,
        )
        failures = CounterMetricFamily(
            "clearing_checkpoint_failures",
            "Checkpoints lost since the start (each costs replay time, nothing else)",
        )
        failures.add_metric([], stats.failures)
        yield failures

    def _settlement(self) -> Iterator[GaugeMetricFamily]:
        """The newest settled business date and when it was settled, from the journal
        (a SettledEntry applied but not yet committed is not read, nor counted)."""
        journal = self.service.journal
        committed = journal.committed_seq
        settled = {
            d: s for d, (s, _) in list(self.service.engine.days.settled.items()) if s <= committed
        }
        when_s = day_s = 0.0
        if settled:
            date = max(settled)
            when_s = journal.accepted_at_ms(settled[date]) / 1000
            settings = self.service.engine.registry.settings
            zone = ZoneInfo(settings.timezone if settings else "UTC")
            day_s = dt.datetime.combine(dt.date.fromisoformat(date), dt.time(), zone).timestamp()
        yield self._gauge(
            "clearing_settlement_last_success_timestamp_seconds",
            "When the newest settled business day was settled (0: none yet)",
            when_s,
        )
        yield self._gauge(
            "clearing_settlement_last_business_day_timestamp_seconds",
            "The newest settled business day: its local midnight (0: none yet)",
            day_s,
        )
