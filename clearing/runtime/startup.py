"""Start-up: the engine rebuilt from the newest usable checkpoint plus the journal,
with the whole hash chain verified and every replayed entry checked against the
answer that was given."""

from __future__ import annotations

from collections.abc import Callable

import structlog

from clearing.domain import entries
from clearing.domain.engine import Engine
from clearing.errors import ClearingError, JournalCorrupt
from clearing.storage.journal import Journal

log = structlog.get_logger("clearing.runtime.startup")


def load_engine(journal: Journal, new_engine: Callable[[], Engine]) -> tuple[Engine, int]:
    """Rebuild an engine from the newest usable checkpoint and the journal.

    Verifies the whole hash chain; returns the engine and the entries replayed.
    A checkpoint that cannot be restored only costs a full replay.
    """
    engine = new_engine()
    cp = journal.latest_checkpoint()
    if cp is not None and journal.chain_hash_at(cp.seq) != cp.chain_hash:
        log.warning("checkpoint of another journal: full replay", seq=cp.seq)
        cp = None
    base = 0
    if cp is not None:
        try:
            base = cp.seq if engine.restore(cp) else 0
        except Exception as exc:  # e.g. written by another version of the core
            log.warning("checkpoint unusable: full replay", seq=cp.seq, reason=repr(exc))
            engine, cp = new_engine(), None
    replayed = 0
    for seq, value, chain in journal.verified_scan():
        if seq == base and cp is not None and chain != cp.chain_hash:
            raise JournalCorrupt(seq, "the checkpoint does not belong to this journal")
        if seq > base:
            try:
                engine.replay(entries.decode(value))
            except ClearingError:
                raise
            except Exception as exc:  # an entry the engine cannot take is damage too
                raise JournalCorrupt(seq, f"replay failed ({exc!r})") from exc
            replayed += 1
    if engine.last_seq != journal.last_seq:
        raise JournalCorrupt(journal.last_seq, f"checkpoint at {base} is beyond the journal")
    return engine, replayed
