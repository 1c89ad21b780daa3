"""Numeric codes shared by the core, the journal and the wire.

The values equal the protobuf enum numbers in ``proto/clearing/v1`` so that a
packed result byte can be handed to a client unchanged.
"""

from __future__ import annotations

import enum


class TapStatus(enum.IntEnum):
    """SPEC §5 outcomes; ``DUPLICATE`` is a flag on the original status."""

    OK = 1
    ID_CONFLICT = 2
    INVALID_AMOUNT = 3
    TOO_LATE = 4
    IN_FUTURE = 5
    UNKNOWN_CARD = 6
    CARD_BLOCKED = 7
    INSUFFICIENT_FUNDS = 8
    # terminal_seq more than limits.TERMINAL_SEQ_AHEAD_MAX above the terminal's highest;
    # checked after DUPLICATE and ID_CONFLICT, before INVALID_AMOUNT and the rest.
    SEQUENCE_TOO_FAR_AHEAD = 9


class ChargedTo(enum.IntEnum):
    CHARGED_TO_NONE = 0
    CARD = 1
    ISSUER_LOSS = 2


class TerminalClass(enum.IntEnum):
    VALIDATOR = 1
    POS = 2
    BILLING = 3


class CardType(enum.IntEnum):
    ADULT = 1
    STUDENT = 2
    ELDERLY = 3
    DISABLED = 4


CARD_TYPE_NAMES = tuple(t.name for t in sorted(CardType))  # as the TOML names them


class CardState(enum.IntEnum):
    ACTIVE = 1
    LOST = 2
    REPLACED = 3
    CLOSED = 4


STATUS_COUNT = max(TapStatus) + 1  # size of a per-status counter array


class CardOpStatus(enum.IntEnum):
    """Outcome of a card operation (proto CardReply.Status)."""

    OK = 1
    ID_CONFLICT = 2
    UNKNOWN_CARD = 3
    CARD_EXISTS = 4
    CARD_NOT_ACTIVE = 5
    CARD_NOT_LOST = 6
    CARD_ALREADY_REPLACED = 7
    INVALID_AMOUNT = 8
    BALANCE_LIMIT = 9
    NEGATIVE_BALANCE = 10
    TRANSFER_PENDING = 11
