"""Journal records: one msgspec record per entry, hash-chained.

An entry holds what the engine needs to replay it (the request) and what it
answered (the results), so replay can check itself against the original.
The stored value is ``msgpack(Envelope)``; the chain hash of an entry is the
SHA-256 of those bytes, and each envelope carries its predecessor's hash.
"""

from __future__ import annotations

import hashlib

import msgspec

GENESIS_HASH = bytes(32)


class TapBatchEntry(msgspec.Struct, tag="tap", array_like=True, frozen=True):
    terminal_id: int
    packed_taps: bytes  # limits.TAP_STRUCT records
    packed_results: bytes  # limits.RESULT_STRUCT records


class CardOpEntry(msgspec.Struct, tag="card", array_like=True, frozen=True):
    request_id: str
    method: str  # IssueCard, TopUp, ...
    channel: str  # party id of the caller (hall or agent); "" for others
    card_id: int
    args: tuple[int, ...]  # method-specific: (card_type, deposit_fen), (amount_fen,), ...
    status: int  # CardReply.Status
    amount_fen: int  # top-up amount, or cash paid out on close (balance + deposit)
    deposit_fen: int = 0  # deposit taken (IssueCard) or refunded (CloseCard), in cash


class TransferEntry(msgspec.Struct, tag="transfer", array_like=True, frozen=True):
    """A replaced card's balance moving to its new card once the hold has passed."""

    old_card_id: int
    new_card_id: int
    amount_fen: int  # the old card's whole balance, negative too


class TerminalCount(msgspec.Struct, array_like=True, frozen=True):
    terminal_id: int
    last_seq: int  # highest terminal_seq received
    received: int  # distinct terminal_seqs received; last_seq - received are missing


class DayCloseEntry(msgspec.Struct, tag="dayclose", array_like=True, frozen=True):
    """The end of a business day, journaled before any entry of a later day.

    It records the state settlement needs at the cutoff but cannot derive from
    the day's own entries: the float and each terminal's sequence position.
    Replay recomputes it and must agree.
    """

    business_date: str  # ISO date of the day closed
    timezone: str  # the business-day rules the day ran under
    cutoff: str
    cutoff_ms: int  # the instant it closed: the next day's cutoff
    float_fen: int  # Σ card balances at the cutoff
    card_count: int
    terminals: tuple[TerminalCount, ...]


class SettledEntry(msgspec.Struct, tag="settled", array_like=True, frozen=True):
    """Business date ``business_date`` is settled; its files hash to ``manifest_sha256``."""

    business_date: str
    first_seq: int  # the day's entries are first_seq..last_seq (first > last: none)
    last_seq: int
    manifest_sha256: str


class PartyRecord(msgspec.Struct, array_like=True, frozen=True):
    party_id: str
    role: str
    fee_bp: int
    fee_per_bill_fen: int
    commission_bp: int
    discount_bp: int
    bank_account: str


class TerminalRecord(msgspec.Struct, array_like=True, frozen=True):
    terminal_id: int
    terminal_class: str
    party_id: str
    key: bytes
    token_sha256: bytes  # the token itself is never journaled


class SettingsRecord(msgspec.Struct, array_like=True, frozen=True):
    """The business settings that change outcomes; replay must see them."""

    limits: dict[str, int]
    rules: dict[str, int]
    concession_bp: dict[str, int]
    timezone: str = "Asia/Shanghai"  # business days (SPEC §2) are journaled too
    cutoff: str = "04:00"
    # limits.TERMINAL_SEQ_AHEAD_MAX when journaled; 0 (no bound) in a journal written
    # before the bound existed, whose taps replay as they were answered then.
    terminal_seq_ahead_max: int = 0


class ConfigEntry(msgspec.Struct, tag="config", array_like=True, frozen=True):
    """The configuration file as first applied, or a change of it at a start."""

    settings: SettingsRecord
    parties: tuple[PartyRecord, ...]
    terminals: tuple[TerminalRecord, ...]


class PartyEntry(msgspec.Struct, tag="party", array_like=True, frozen=True):
    party: PartyRecord


class TerminalEntry(msgspec.Struct, tag="terminal", array_like=True, frozen=True):
    terminal: TerminalRecord


class MerchantRuleEntry(msgspec.Struct, tag="rule", array_like=True, frozen=True):
    party_id: str
    effective_from_ms: int
    discount_bp: int


class ConcessionEntry(msgspec.Struct, tag="concession", array_like=True, frozen=True):
    card_type: str
    concession_bp: int


class SeedEntry(msgspec.Struct, tag="seed", array_like=True, frozen=True):
    """Bulk issue of ``count`` cards from ``first_card_id`` with an opening balance."""

    first_card_id: int
    count: int
    opening_balance_fen: int
    hall: str


Body = (
    TapBatchEntry
    | CardOpEntry
    | TransferEntry
    | ConfigEntry
    | PartyEntry
    | TerminalEntry
    | MerchantRuleEntry
    | ConcessionEntry
    | SeedEntry
    | DayCloseEntry
    | SettledEntry
)


class Envelope(msgspec.Struct, array_like=True, frozen=True):
    seq: int
    accepted_at_ms: int
    prev_hash: bytes
    body: Body


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Envelope)


def encode(envelope: Envelope) -> bytes:
    return _encoder.encode(envelope)


def decode(value: bytes | memoryview) -> Envelope:
    return _decoder.decode(value)


def chain_hash(value: bytes | memoryview) -> bytes:
    return hashlib.sha256(value).digest()


def token_digest(token: str) -> bytes:
    """Tokens are looked up by digest: no secret in the journal, no timing leak."""
    return hashlib.sha256(token.encode()).digest()
