"""Offline verification: hash chain, sequence, and a full replay from genesis."""

from __future__ import annotations

from collections.abc import Iterator

from clearing.domain import entries
from clearing.domain.engine import Engine
from clearing.domain.entries import TapBatchEntry
from clearing.limits import TAP_BYTES
from clearing.storage.journal import Journal, journal_path

READ_MAP_SIZE_BYTES = 2**20  # read-only: LMDB maps the file as it is


def replayed(data_dir: str, engine: Engine) -> Iterator[tuple[entries.Envelope, bytes]]:
    """(envelope, chain hash) of every entry from genesis (checkpoints ignored), each
    yielded once ``engine`` has replayed it; JournalCorrupt at the first fault."""
    journal = Journal(journal_path(data_dir), READ_MAP_SIZE_BYTES, readonly=True)
    try:
        for _, value, chain in journal.verified_scan():
            envelope = entries.decode(value)
            engine.replay(envelope)  # raises JournalCorrupt where it differs from the record
            yield envelope, chain
    finally:
        journal.close()


def verify_journal(data_dir: str, *, ledger_class: type | None = None) -> str:
    """Replay every entry (ignoring checkpoints); raise JournalCorrupt at the first fault."""
    engine = Engine(ledger_class) if ledger_class is not None else Engine()
    taps = 0
    last_hash = entries.GENESIS_HASH
    for envelope, chain in replayed(data_dir, engine):
        last_hash = chain
        if isinstance(envelope.body, TapBatchEntry):
            taps += len(envelope.body.packed_taps) // TAP_BYTES
    return (
        f"journal OK: {engine.last_seq} entries, {taps} taps, head {last_hash.hex()}, "
        f"{engine.ledger.card_count()} cards holding {engine.ledger.total_balance_fen()} fen"
    )
