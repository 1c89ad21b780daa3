"""The terminal_seq bound (issue 12) is journaled: a journal written before it replays
exactly as it was answered, and the bound applies from the configuration entry the
first start of this version journals (review of issue 12: old journals read as damaged).
"""

from __future__ import annotations

import msgspec

from clearing.codes import TapStatus
from clearing.domain.entries import SettingsRecord
from clearing.limits import TERMINAL_SEQ_AHEAD_MAX
from clearing.storage.verify import verify_journal
from tests.conftest import NOW_MS, VALIDATOR, Harness

CARD = 8_300_001
FAR_SEQ = 2**40


def test_a_settings_record_written_before_the_bound_decodes_without_it():
    old = msgspec.msgpack.encode([{"max_tap_fen": 1}, {}, {}, "Asia/Shanghai", "04:00"])
    record = msgspec.msgpack.decode(old, type=SettingsRecord)
    assert record.terminal_seq_ahead_max == 0  # no bound: replays as answered then


async def test_an_old_journal_replays_its_far_taps_and_then_the_bound_holds(city, monkeypatch):
    import clearing.runtime.config_entry

    # As the version before the bound wrote it: its configuration carries no bound.
    monkeypatch.setattr(clearing.runtime.config_entry, "TERMINAL_SEQ_AHEAD_MAX", 0)
    h = await Harness(city).start()
    await h.issue(CARD, balance_fen=1_000)
    (old,) = await h.taps(VALIDATOR, [(CARD, FAR_SEQ, 200, NOW_MS, 11)])
    assert old[0] == TapStatus.OK
    await h.stop()
    monkeypatch.setattr(
        clearing.runtime.config_entry, "TERMINAL_SEQ_AHEAD_MAX", TERMINAL_SEQ_AHEAD_MAX
    )
    assert verify_journal(city.server.data_dir).startswith("journal OK")

    h = await Harness(city).start()  # replays, then journals the configuration with the bound
    try:
        (retry,) = await h.taps(VALIDATOR, [(CARD, FAR_SEQ, 200, NOW_MS, 11)])
        assert retry[0] == TapStatus.OK and retry[2] == 1  # its original answer, a duplicate
        far_again = FAR_SEQ + TERMINAL_SEQ_AHEAD_MAX + 1
        (new,) = await h.taps(VALIDATOR, [(CARD, far_again, 200, NOW_MS, 11)])
        assert new[0] == TapStatus.SEQUENCE_TOO_FAR_AHEAD
        assert await h.balance(CARD) == 800
    finally:
        await h.stop()
    assert verify_journal(city.server.data_dir).startswith("journal OK")
    h = await Harness(city).start()  # and once more: both rules replay as answered
    await h.stop()
