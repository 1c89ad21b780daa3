"""A checkpoint as a record: the engine's and the ledger core's state at one journal
entry, sealed with a digest. Pure data, so that the engine can restore one without
importing the store that writes them (``clearing.storage.checkpoints``: LMDB, forks)."""

from __future__ import annotations

import hashlib
import struct

import msgspec

_SEQ = struct.Struct(">Q")


class Checkpoint(msgspec.Struct, array_like=True, frozen=True):
    seq: int
    chain_hash: bytes  # chain hash of entry ``seq``: ties the state to the journal
    implementation: str  # which ledger core wrote ``ledger``
    ledger: bytes
    engine: bytes
    digest: bytes = b""  # of everything above: a damaged checkpoint is skipped, not served

    def sealed(self) -> Checkpoint:
        return msgspec.structs.replace(self, digest=checkpoint_digest(self))


def checkpoint_digest(cp: Checkpoint) -> bytes:
    h = hashlib.blake2b(digest_size=32)
    h.update(_SEQ.pack(cp.seq) + cp.chain_hash + cp.implementation.encode() + b"\0")
    h.update(_SEQ.pack(len(cp.ledger)))
    h.update(cp.ledger)
    h.update(cp.engine)
    return h.digest()
