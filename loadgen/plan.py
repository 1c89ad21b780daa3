"""A planned city day: what to send, and when in the day (model time).

The model (``loadgen.model``) produces a ``DayPlan``; the runner decides the
pace: the day compressed into a few seconds, a fixed offered rate, or as fast
as the server answers. Times are milliseconds since the plan's day began
(``send_ms``); tap bytes already hold absolute ``occurred_at_ms`` values
(``base_ms`` + model time), packed as SPEC §9's 36 canonical bytes a tap.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class TapBatch:
    send_ms: int  # model time of the upload (validators) or of the tap (POS, billing)
    terminal_id: int
    packed_taps: bytes  # limits.TAP_STRUCT records, terminal_seq consecutive per terminal

    @property
    def count(self) -> int:
        return len(self.packed_taps) // 36


@dataclass(frozen=True)
class CardOp:
    send_ms: int
    method: str  # TopUp, ReportLoss, ReplaceCard
    channel: str  # party id of the hall or agent that makes the call
    card_id: int
    amount_fen: int = 0  # TopUp
    new_card_id: int = 0  # ReplaceCard


@dataclass
class DayPlan:
    base_ms: int  # absolute ms of model time 0
    validator_batches: list[TapBatch] = field(default_factory=list)  # by send_ms
    single_taps: list[TapBatch] = field(default_factory=list)  # POS and billing, one tap each
    card_ops: list[CardOp] = field(default_factory=list)  # by send_ms

    @property
    def validator_taps(self) -> int:
        return sum(b.count for b in self.validator_batches)
