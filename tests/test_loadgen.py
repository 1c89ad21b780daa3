"""The load generator against a real server on loopback: it runs, and its check bites.

The server is the demo city in a temporary directory, in this process, with
its /metrics endpoint on a free port. Runs are short (a second or two of
taps); the full-size figures are `make bench`'s.
"""

from __future__ import annotations

import asyncio
import io
import time

import pytest
from rich.console import Console

from clearing.limits import TAP_STRUCT
from clearing.server.app import Server
from clearing.tools import demo_city
from clearing.tools.client import Stubs, channel, free_port
from clearing.tools.demo_city import demo_config
from loadgen.city import city_of
from loadgen.plan import CardOp, DayPlan, TapBatch
from loadgen.report import print_results
from loadgen.run import Options, Runner
from loadgen.session import Session
from loadgen.tally import Tally

SCALE = 3.0  # about 85,000 bus taps planned; the runs below send part of them
SLOW_ANSWER_S = 0.3


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


async def test_day_mode_keeps_a_cards_order_when_an_answer_is_slow(served, monkeypatch):
    """A top-up and, a millisecond later, the purchase it pays for: with the top-up's
    answer slow, day mode holds the purchase back until it is answered (it would be
    declined for funds first), and counts the wait as lag, not as the tap's latency."""
    server, target, _ = served
    card_op = server.service.card_op

    async def slow_card_op(*args, **kwargs):
        await asyncio.sleep(SLOW_ANSWER_S)
        return await card_op(*args, **kwargs)

    monkeypatch.setattr(server.service, "card_op", slow_card_op)
    city = city_of(server.config)
    card = city.first_card_id  # opened with 5,000 fen
    now_ms = int(time.time() * 1000)
    purchase = TAP_STRUCT.pack(card, 1, 12_000, now_ms, 0)  # m-0001 at 7.7 折: 9,240 fen
    plan = DayPlan(
        base_ms=now_ms,
        single_taps=[TapBatch(1_001, demo_city.POS_ID_BASE + 1, purchase)],
        card_ops=[CardOp(1_000, "TopUp", "hall-1", card, amount_fen=10_000)],
    )
    tally = Tally(set())
    async with channel(target) as chan:
        await Runner(Stubs(chan), city, plan, tally, Options("day", 0.5)).run()
    assert tally.card_ops == {"TopUp:OK": 1}
    assert dict(tally.taps_by_status) == {"OK": 1, "DUPLICATE": 0}
    assert tally.charged_fen["CARD"] == 9_240
    assert tally.schedule_lag.get_max_value() >= SLOW_ANSWER_S * 1e6 * 0.9  # it waited
    assert tally.single_latency.get_total_count() == 1


async def test_a_plan_shorter_than_the_run_is_reported_with_the_runs_parameters(served):
    """A twentieth of the city's day at 20,000 taps/s lasts 0.07 s of the 1 s asked for:
    the offered rate is lower than asked, and the run says so instead of quietly
    reporting it. The start-up steps are on the console as they happen."""
    server, target, metrics_url = served
    out = io.StringIO()
    result = await Session(
        target,
        server.config,
        Options("rate", 1.0, rate_taps_s=20_000),
        scale=0.05,
        seed=3,
        sample=20,
        metrics_url=metrics_url,
        console=Console(file=out, width=200),
    ).run()
    assert result["check"]["passed"], result["check"]
    assert any("ran out after" in w for w in result["warnings"]), result["warnings"]
    assert result["parameters"] | {"target": "-"} == {
        "target": "-",
        "mode": "rate",
        "duration_s": 1.0,
        "streams": 8,
        "window": 8,
        "rate_taps_s": 20_000,
        "pos_rate": 0.0,
        "ops_rate": 0.0,
        "batch_taps": 500,
        "scale": 0.05,
        "seed": 3,
        "drive_clock": False,
    }
    assert result["generator_cpu_s"] > 0
    printed = out.getvalue()
    assert "reading the positions of 904 terminals" in printed
    assert "planning the day (scale 0.05, seed 3)" in printed
    print_results(Console(file=out, width=200), result)
    table = out.getvalue()
    for shown in ("target", "batch size", "scale, seed", "generator CPU", "warning"):
        assert shown in table


def test_the_help_advertises_no_subcommands() -> None:
    from typer.testing import CliRunner

    from loadgen.cli import app

    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "--mode" in result.output and "--seed" in result.output
    assert "COMMAND" not in result.output and "Commands" not in result.output
