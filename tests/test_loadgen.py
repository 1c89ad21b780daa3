"""The load generator against a real server on loopback: it runs, and its check bites.

The server is the demo city in a temporary directory, in this process, with
its /metrics endpoint on a free port. Runs are short (a second or two of
taps); the full-size figures are `make bench`'s.
"""

from __future__ import annotations

import pytest

from clearing.client import free_port
from clearing.democity import demo_config
from clearing.server.app import Server
from loadgen.run import Options, Runner
from loadgen.session import Session

SCALE = 3.0  # about 85,000 bus taps planned; the runs below send part of them


@pytest.fixture
async def served(tmp_path):
    config = demo_config()
    config.server.data_dir = str(tmp_path / "data")
    config.server.map_size_bytes = 2 * 2**30
    server = Server(config)
    port = await server.start("127.0.0.1:0")
    metrics = f"127.0.0.1:{free_port()}"
    server.metrics.serve_http(metrics)
    try:
        yield server, f"127.0.0.1:{port}", f"http://{metrics}/metrics"
    finally:
        await server.stop(0.5)


def session(served, opts: Options, **kwargs) -> Session:
    server, target, metrics_url = served
    return Session(
        target,
        server.config,
        opts,
        scale=SCALE,
        seed=3,
        sample=200,
        metrics_url=metrics_url,
        **kwargs,
    )


async def test_flat_out_with_side_traffic_passes_its_check(served):
    opts = Options("max", 1.5, streams=2, window=4, pos_rate=100, ops_rate=50)
    result = await session(served, opts).run()
    assert result["check"] == {"passed": True, "problems": []}
    assert result["taps_answered"] == result["taps_offered"] > 10_000
    assert sum(result["taps_by_status"].values()) == result["taps_answered"]
    assert result["batch_latency_ms"]["count"] > 0
    assert result["single_tap_latency_ms"]["count"] > 0
    assert any(op.startswith("TopUp:") for op in result["card_operations"])
    assert result["errors"] == {}


async def test_open_loop_at_a_fixed_rate_offers_that_rate(served):
    result = await session(served, Options("rate", 1.0, rate_taps_s=20_000)).run()
    assert result["check"]["passed"], result["check"]
    assert 15_000 <= result["taps_offered"] <= 21_000  # whole batches of 500, for one second


async def test_a_double_counted_batch_fails_the_check_loudly(served, monkeypatch):
    server = served[0]
    observe = server.metrics.observe_batch
    calls = []

    def twice_once(terminal_class, summary, seconds):
        calls.append(1)
        observe(terminal_class, summary, seconds)
        if len(calls) == 3:  # the third batch is counted twice
            observe(terminal_class, summary, seconds)

    monkeypatch.setattr(server.metrics, "observe_batch", twice_once)
    result = await session(served, Options("max", 0.5, streams=1, window=2)).run()
    assert not result["check"]["passed"]
    assert any("server counted" in p for p in result["check"]["problems"])


async def test_a_dropped_batch_fails_the_check_loudly(served, monkeypatch):
    server = served[0]
    observe = server.metrics.observe_batch
    calls = []

    def drop_one(terminal_class, summary, seconds):
        calls.append(1)
        if len(calls) != 2:  # the second batch never reaches the server's totals
            observe(terminal_class, summary, seconds)

    monkeypatch.setattr(server.metrics, "observe_batch", drop_one)
    result = await session(served, Options("max", 0.5, streams=1, window=2)).run()
    assert not result["check"]["passed"]
    assert any("taps OK: answered" in p for p in result["check"]["problems"])


async def test_a_balance_changed_without_an_answer_fails_the_check(served, monkeypatch):
    server = served[0]
    run = Runner.run

    async def run_then_tamper(self):
        seconds = await run(self)
        card = min(self.tally.sampled_set)
        server.service.engine.ledger.adjust_balance(card, -1)  # a charge nobody answered
        return seconds

    monkeypatch.setattr(Runner, "run", run_then_tamper)
    result = await session(served, Options("max", 0.5, streams=1, window=2)).run()
    assert not result["check"]["passed"]
    assert any("expected" in p and "card ****" in p for p in result["check"]["problems"])


async def test_a_tap_the_engine_drops_on_any_card_fails_the_float_check(served, monkeypatch):
    server = served[0]
    run = Runner.run

    async def run_then_undo_a_charge(self):
        seconds = await run(self)
        card = self.city.first_card_id + self.city.card_count - 1  # not in the sample
        assert card not in self.tally.sampled_set
        server.service.engine.ledger.adjust_balance(card, 200)  # a ride "forgotten"
        return seconds

    monkeypatch.setattr(Runner, "run", run_then_undo_a_charge)
    result = await session(served, Options("max", 0.5, streams=1, window=2)).run()
    assert not result["check"]["passed"]
    assert any(p.startswith("float (Σ card balances) moved") for p in result["check"]["problems"])
