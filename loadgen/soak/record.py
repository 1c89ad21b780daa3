"""What the soak's clients were told: every tap and top-up as acknowledged,
refused, or unknown (the connection died with the call in flight).

A request may be sent more than once (a retry after a crash); its standing is
the strongest answer it ever got: acknowledged over unknown over refused.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import grpc
import msgspec

_json = msgspec.json.Encoder()


class Standing(enum.IntEnum):
    REFUSED = 0  # the server answered with a refusal: it must have changed nothing
    UNKNOWN = 1  # no answer: it may have been applied, at most once
    ACKED = 2  # answered: it is in the journal exactly once, with that answer


# Codes a server sends on purpose after looking at a request (nothing was applied);
# anything else (UNAVAILABLE, CANCELLED, DEADLINE_EXCEEDED...) may have lost the answer.
REFUSAL_CODES = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.NOT_FOUND,
    }
)


def standing_of(code: grpc.StatusCode) -> Standing:
    return Standing.REFUSED if code in REFUSAL_CODES else Standing.UNKNOWN


# The result fields compared with the journal: status, charged_to, charged_fen,
# discount_fen, balance_after_fen, journal_seq (the duplicate flag differs on a retry).
def comparable(result: tuple[int, ...]) -> tuple[int, ...]:
    return (*result[:2], *result[3:])


@dataclass
class TapRecord:
    body: tuple[int, int, int, int]  # card_id, list_amount_fen, occurred_at_ms, route_id
    standing: Standing
    answer: tuple[int, ...] | None = None  # the acknowledged result (unpack_results order)


@dataclass
class TopUpRecord:
    card_id: int
    amount_fen: int
    standing: Standing
    answer: tuple[int, int] | None = None  # (status, journal_seq) acknowledged


@dataclass
class ClientLog:
    taps: dict[tuple[int, int], TapRecord] = field(default_factory=dict)  # (terminal, seq)
    top_ups: dict[str, TopUpRecord] = field(default_factory=dict)  # request_id
    calls: dict[Standing, int] = field(default_factory=lambda: dict.fromkeys(Standing, 0))

    def tap(self, terminal_id: int, tap: tuple[int, ...], standing: Standing, answer=None) -> None:
        card_id, seq, amount, occurred, route = tap
        key = (terminal_id, seq)
        known = self.taps.get(key)
        if known is None:
            self.taps[key] = TapRecord((card_id, amount, occurred, route), standing, answer)
        elif standing > known.standing:
            known.standing, known.answer = standing, answer

    def batch(self, terminal_id: int, taps, standing: Standing, answers=None) -> None:
        self.calls[standing] += 1
        for index, tap in enumerate(taps):
            self.tap(terminal_id, tap, standing, None if answers is None else answers[index])

    def top_up(self, request_id: str, card_id: int, amount_fen: int, standing: Standing,
               answer: tuple[int, int] | None = None) -> None:  # fmt: skip
        self.calls[standing] += 1
        known = self.top_ups.get(request_id)
        if known is None:
            self.top_ups[request_id] = TopUpRecord(card_id, amount_fen, standing, answer)
        elif standing > known.standing:
            known.standing, known.answer = standing, answer

    def unknown_batches(self, terminal_id: int, batch_taps: int) -> list[list[tuple[int, ...]]]:
        """The terminal's taps still unknown, as batches to retry."""
        pending = sorted(
            (seq, record.body)
            for (terminal, seq), record in self.taps.items()
            if terminal == terminal_id and record.standing == Standing.UNKNOWN
        )
        taps = [(body[0], seq, *body[1:]) for seq, body in pending]
        return [taps[i : i + batch_taps] for i in range(0, len(taps), batch_taps)]

    def write(self, path: str) -> None:
        """The log as JSON lines, one per tap and top-up (``--keep`` leaves it to read)."""
        with open(path, "wb") as f:
            for (terminal_id, seq), tap in sorted(self.taps.items()):
                line = {"tap": [terminal_id, seq], "standing": tap.standing.name}
                f.write(_json.encode({**line, "answer": tap.answer}) + b"\n")
            for request_id, top_up in sorted(self.top_ups.items()):
                line = {"top_up": request_id, "standing": top_up.standing.name}
                f.write(_json.encode({**line, "answer": top_up.answer}) + b"\n")

    def acknowledged(self) -> int:
        return sum(r.standing == Standing.ACKED for r in self.taps.values()) + sum(
            r.standing == Standing.ACKED for r in self.top_ups.values()
        )
