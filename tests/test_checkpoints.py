"""Checkpoints live apart from the journal: whatever happens to them costs replay time only."""

from __future__ import annotations

import os
import shutil

from tests.conftest import NOW_MS, VALIDATOR, Harness

CARD = 7_000_001


async def _a_day_with_a_checkpoint(city) -> str:
    h = await Harness(city).start()
    await h.issue(CARD, balance_fen=5_000)
    await h.taps(VALIDATOR, [(CARD, 1, 200, NOW_MS, 11)])
    await h.stop()  # a graceful stop leaves a checkpoint
    journal_dir = os.path.join(city.server.data_dir, "journal")
    assert os.path.exists(os.path.join(journal_dir, "checkpoints", "data.mdb"))
    return journal_dir


async def test_checkpoints_of_another_journal_are_ignored_not_fatal(city, tmp_path):
    journal_dir = await _a_day_with_a_checkpoint(city)
    kept = tmp_path / "kept-checkpoints"
    shutil.copytree(os.path.join(journal_dir, "checkpoints"), kept)
    shutil.rmtree(journal_dir)  # the journal is reset; its old checkpoints come back
    h = await Harness(city).start()
    await h.stop()
    shutil.rmtree(os.path.join(journal_dir, "checkpoints"))
    shutil.copytree(kept, os.path.join(journal_dir, "checkpoints"))
    h = await Harness(city).start()  # must start: a foreign checkpoint is not damage
    try:
        assert h.server.service.replayed == h.last_seq
        assert h.server.service.engine.ledger.card(CARD) is None  # not the other journal's
    finally:
        await h.stop()


async def test_a_damaged_checkpoint_store_is_set_aside(city):
    journal_dir = await _a_day_with_a_checkpoint(city)
    with open(os.path.join(journal_dir, "checkpoints", "data.mdb"), "r+b") as f:
        f.write(b"\xff" * 8192)  # both meta pages
    h = await Harness(city).start()
    try:
        assert h.server.service.replayed == h.last_seq  # a full replay
        assert await h.balance(CARD) == 4_800
        assert any(name.startswith("checkpoints.damaged-") for name in os.listdir(journal_dir))
    finally:
        await h.stop()


async def test_verify_reads_a_journal_without_a_checkpoint_store(city):
    from clearing.storage.verify import verify_journal

    journal_dir = await _a_day_with_a_checkpoint(city)
    shutil.rmtree(os.path.join(journal_dir, "checkpoints"))  # e.g. a copy of the journal alone
    assert "journal OK" in verify_journal(city.server.data_dir)
    assert not os.path.exists(os.path.join(journal_dir, "checkpoints"))  # read-only: untouched
