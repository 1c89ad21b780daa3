"""`clearing settle --date D`: the same run offline, and its refusals."""

from __future__ import annotations

import os

import msgspec
import pytest
import structlog
from typer.testing import CliRunner

from clearing.errors import JournalCorrupt, JournalError, RequestRejected
from clearing.runtime.config import Config
from clearing.settlement.offline import settle_offline
from clearing.tools.cli import EXIT_FAILED, app
from tests.conftest import Harness, flip_byte
from tests.test_settlement_example import (
    DAY,
    DAY_END_MS,
    SUMMARY,
    play_the_day,
    read,
    run,
    set_clock,
)


def after_the_day(config: Config) -> Config:
    """The same city, its manual clock starting after the day's cutoff."""
    server = msgspec.structs.replace(config.server, manual_clock_start_ms=DAY_END_MS + 1_000)
    return msgspec.structs.replace(config, server=server)


async def test_offline_settlement_writes_what_the_rpc_would(city):
    h = await Harness(city).start()
    await play_the_day(h)
    await h.stop()
    text = await settle_offline(after_the_day(city), DAY)
    assert f"business date {DAY}: settled" in text
    directory = os.path.join(city.server.data_dir, "settlement", DAY)
    assert read(directory, "summary.csv") == SUMMARY
    manifest = read(directory, "manifest.json")
    h = await Harness(city).start()  # the server sees the date settled, with the same files
    try:
        await set_clock(h, DAY_END_MS + 2_000)
        online = await run(h)
        assert online.settled_journal_seq < h.last_seq + 1
        assert read(online.output_dir, "manifest.json") == manifest
    finally:
        await h.stop()


async def test_offline_settlement_refuses_while_the_server_runs(city):
    h = await Harness(city).start()
    try:
        with pytest.raises(JournalError, match="another process is writing the journal"):
            await settle_offline(after_the_day(city), DAY)
    finally:
        await h.stop()


async def test_offline_settlement_refuses_an_open_day(city):
    h = await Harness(city).start()
    await h.stop()
    with pytest.raises(RequestRejected, match="still open"):
        await settle_offline(city, DAY)
    assert not os.path.exists(os.path.join(city.server.data_dir, "settlement"))


async def test_a_damaged_journal_stops_the_run_with_the_position(city):
    from clearing.tools.client import pack_taps

    h = await Harness(city).start()
    await play_the_day(h)
    await h.stop()
    taps = [(1001, 1, 341, 1_900_000_000_000, 0)]
    flip_byte(os.path.join(city.server.data_dir, "journal", "data.mdb"), pack_taps(taps), 30, 0x01)
    with pytest.raises(JournalCorrupt, match=r"journal entry \d+"):
        await settle_offline(after_the_day(city), DAY)
    assert not os.path.exists(os.path.join(city.server.data_dir, "settlement"))


@pytest.fixture
def cli():
    """The command configures logging to the runner's stderr, closed afterwards: undo that."""
    yield CliRunner()
    structlog.reset_defaults()


def test_the_command_says_when_the_data_directory_is_missing(cli, tmp_path):
    result = cli.invoke(app, ["settle", "--date", DAY, "--data-dir", str(tmp_path / "nowhere")])
    assert result.exit_code == EXIT_FAILED  # a runtime failure, not a usage error
    assert "no journal in data directory" in result.output
    assert not (tmp_path / "nowhere").exists()


def test_the_command_refuses_a_malformed_date(cli, tmp_path):
    result = cli.invoke(app, ["settle", "--date", "17/03/2030", "--data-dir", str(tmp_path)])
    assert result.exit_code == EXIT_FAILED  # a runtime failure, not a usage error
    assert "not a date" in result.output
