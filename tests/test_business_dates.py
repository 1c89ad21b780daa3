"""A business date is exactly YYYY-MM-DD (issue 12, defect 5): Python's
``date.fromisoformat`` also takes ``20300317`` and ``2030-W11-7``, which must be
refused by the parser, by RunSettlement and GetSettlement over gRPC, and by
``clearing settle --date``, with nothing journaled or written."""

from __future__ import annotations

import asyncio
import datetime as dt
import os

import grpc
import msgspec
import pytest
import structlog
from hypothesis import example, given
from hypothesis import strategies as st
from typer.testing import CliRunner

from clearing.domain.business_calendar import parse_business_date
from clearing.errors import Refusal, RequestRejected
from clearing.runtime.config import dump_config
from clearing.tools.cli import EXIT_FAILED, app
from clearing.v1 import settlement_pb2
from tests.conftest import Harness
from tests.test_settlement_example import DAY, DAY_END_MS, FINANCE, play_the_day, run, set_clock

# 2030-03-17 written every way 3.11's date.fromisoformat takes, and near misses.
LENIENT = ("20300317", "2030-W11-7", "2030W117", "2030-W11", "2030W11")
NEAR_MISSES = (
    "2030-3-17",
    "2030-03-7",
    "02030-03-17",
    "2030-03-17 ",
    " 2030-03-17",
    "2030-03-17\n",
    "2030/03/17",
    "2030-03-17T00:00",
    "+030-03-17",
    "2030-0317",
    "２０３０-03-17",  # fullwidth digits: digits to str.isdigit, not ASCII
    "2030-03-١٧",  # Arabic-Indic digits
    "0000-01-01",
    "2030-02-29",
    "2030-13-01",
    "2030-00-10",
    "2030-04-31",
    "",
)


@pytest.mark.parametrize("text", LENIENT + NEAR_MISSES)
def test_only_yyyy_mm_dd_is_a_business_date(text):
    with pytest.raises(RequestRejected) as caught:
        parse_business_date(text)
    assert caught.value.code is Refusal.INVALID_ARGUMENT
    assert "YYYY-MM-DD" in caught.value.message


def test_a_refusal_quotes_a_long_input_cut_short():
    with pytest.raises(RequestRejected) as caught:
        parse_business_date("9" * 10_000)
    assert len(caught.value.message) < 200


@given(st.dates(min_value=dt.date(1, 1, 1), max_value=dt.date(9999, 12, 31)))
def test_every_calendar_date_round_trips(day):
    assert parse_business_date(day.isoformat()) == day


@given(st.text(alphabet="0123456789-W", max_size=12) | st.text(max_size=12))
@example("20300317")
@example("2030-W11-7")
def test_anything_accepted_is_exactly_its_own_iso_form(text):
    try:
        day = parse_business_date(text)
    except RequestRejected:
        return
    assert day.isoformat() == text


async def test_rpcs_refuse_lenient_dates_and_journal_nothing(harness):
    h = harness
    await play_the_day(h)
    await set_clock(h, DAY_END_MS + 1_000)
    seq = h.last_seq
    for text in LENIENT:  # each of them names a day that is ready to be settled
        for rpc in (h.stubs.settlement.RunSettlement, h.stubs.settlement.GetSettlement):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await rpc(settlement_pb2.SettlementRequest(business_date=text), metadata=FINANCE)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (text, rpc)
            assert "YYYY-MM-DD" in caught.value.details()
    assert h.last_seq == seq
    assert not os.path.exists(os.path.join(h.config.server.data_dir, "settlement", DAY))
    settled = await run(h)  # the same day, written properly, settles
    assert settled.business_date == DAY
    for text in LENIENT:  # and once it is settled, GetSettlement still takes only DAY
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await h.stubs.settlement.GetSettlement(
                settlement_pb2.SettlementRequest(business_date=text), metadata=FINANCE
            )
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, text


@pytest.fixture
def cli():
    """The command configures logging to the runner's stderr, closed afterwards: undo that."""
    yield CliRunner()
    structlog.reset_defaults()


async def _played_day(config) -> int:
    h = await Harness(config).start()
    try:
        await play_the_day(h)
        return h.last_seq
    finally:
        await h.stop()


async def _last_seq(config) -> int:
    h = await Harness(config).start()
    try:
        return h.last_seq
    finally:
        await h.stop()


def test_the_settle_command_refuses_lenient_dates(city, tmp_path, cli):
    seq = asyncio.run(_played_day(city))  # the command runs its own event loop: not in ours
    server = msgspec.structs.replace(city.server, manual_clock_start_ms=DAY_END_MS + 1_000)
    config = tmp_path / "after-the-day.toml"
    config.write_text(dump_config(msgspec.structs.replace(city, server=server)))
    for text in LENIENT:
        result = cli.invoke(app, ["settle", "--date", text, "--config", str(config)])
        assert result.exit_code == EXIT_FAILED, (text, result.output)
        (line,) = result.output.strip().splitlines()
        assert line.startswith("error: ") and "YYYY-MM-DD" in line, line
    assert not os.path.exists(os.path.join(city.server.data_dir, "settlement"))
    structlog.reset_defaults()  # the command logged to the runner's stderr, now closed
    assert asyncio.run(_last_seq(city)) == seq
