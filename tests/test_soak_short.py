"""The soak's scenarios at CI size (``make soak`` runs them full size).

Each runs real ``clearing serve`` processes on loopback and is judged by the
offline audit of the journal against the clients' logs; the last test shows
that the audit does catch lost and wrongly applied requests.
"""

from __future__ import annotations

import pytest

from clearing.codes import CardOpStatus
from loadgen.soak import damage, kill, storage, storm
from loadgen.soak.__main__ import Sizes
from loadgen.soak.audit import audit
from loadgen.soak.city import NOW_MS, VALIDATOR
from loadgen.soak.common import CARDS, soak_city, traffic_for
from loadgen.soak.hostile import hostile_input
from loadgen.soak.record import Standing
from loadgen.soak.server import ServerProcess
from loadgen.soak.traffic import Traffic

SIZES = Sizes(quick=True)
SEED = 7


def _passed(result) -> None:
    assert result.passed, (result.scenario, result.violations[:10], result.lost, result.duplicated)


async def test_kill_9_under_load(tmp_path):
    result = await kill.kill9(str(tmp_path), SIZES.kills, SEED)
    _passed(result)
    assert result.acknowledged > 100


@pytest.mark.parametrize("point", kill.POINTS)
async def test_crash_point(tmp_path, point):
    result = await kill.crash_point(str(tmp_path), point, SIZES.crash_runs, SEED)
    _passed(result)
    assert result.acknowledged > 0


@pytest.mark.parametrize("scenario", ["map_full", "disk_full", "stale_readers"])
async def test_storage_fault(tmp_path, scenario):
    result = await getattr(storage, scenario)(str(tmp_path), SEED)
    _passed(result)


async def test_duplicate_storm(tmp_path):
    result = await storm.duplicate_storm(str(tmp_path), SIZES.storm_batches, SEED)
    _passed(result)
    assert result.runs > SIZES.storm_batches  # repeats were sent


async def test_hostile_input(tmp_path):
    _passed(await hostile_input(str(tmp_path), SIZES.fuzz_cases, SEED))


async def test_damaged_journal_copies(tmp_path):
    _passed(await damage.damaged_journal(str(tmp_path), SIZES.damaged_copies, SEED))


async def test_the_audit_catches_lost_and_wrongly_applied_requests(tmp_path):
    server = ServerProcess(str(tmp_path), soak_city(str(tmp_path / "data")))
    await server.start()
    traffic = Traffic(CARDS, SEED)
    await traffic_for(traffic, server, 0.5)
    assert server.terminate() == 0
    log = traffic.log
    clean = audit(server.data_dir, log)
    assert (clean.lost, clean.duplicated, clean.violations) == (0, 0, [])

    acked = [k for k, r in log.taps.items() if r.standing == Standing.ACKED]
    log.taps[acked[0]].standing = Standing.REFUSED  # it is in the journal: applied though refused
    record = log.taps[acked[1]]
    record.answer = (*record.answer[:3], record.answer[3] + 1, *record.answer[4:])  # misanswered
    log.tap(VALIDATOR, (CARDS[0], 10**9, 200, NOW_MS, 1), Standing.ACKED, (1, 1, 0, 200, 0, 0, 5))
    log.top_up("never-sent", CARDS[0], 100, Standing.ACKED, (CardOpStatus.OK, 3))
    found = audit(server.data_dir, log)
    assert found.lost == 2
    assert any("refused, yet applied" in v for v in found.violations)
    assert any(f"tap {acked[1]} answered" in v for v in found.violations)
