"""Offline verification: hash chain, sequence, and a full replay from genesis."""

from __future__ import annotations

from clearing import entries
from clearing.engine import Engine
from clearing.entries import TapBatchEntry
from clearing.journal import Journal
from clearing.limits import TAP_BYTES
from clearing.service import journal_path


def verify_journal(data_dir: str, *, ledger_class: type | None = None) -> str:
    """Replay every entry (ignoring checkpoints); raise JournalCorrupt at the first fault."""
    journal = Journal(journal_path(data_dir), 2**20, readonly=True)
    engine = Engine(ledger_class) if ledger_class is not None else Engine()
    taps = 0
    last_hash = entries.GENESIS_HASH
    try:
        for _, value, chain in journal.verified_scan():
            last_hash = chain
            envelope = entries.decode(value)
            if isinstance(envelope.body, TapBatchEntry):
                taps += len(envelope.body.packed_taps) // TAP_BYTES
            engine.replay(envelope)
    finally:
        journal.close()
    return (
        f"journal OK: {engine.last_seq} entries, {taps} taps, head {last_hash.hex()}, "
        f"{engine.ledger.card_count()} cards holding {engine.ledger.total_balance_fen()} fen"
    )
