"""The load generator's own books: what the server answered, and how fast.

Every answered batch is folded with the engine's own batch summariser (counts
by status, Σ charged), and the taps of a few sampled cards are followed one
by one, so that at the end the server's totals and balances can be checked
against what it told us. Calls that failed are "uncertain": the server may or
may not have applied them, so exact checks are skipped when there are any.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
from hdrh.histogram import HdrHistogram

from clearing.codes import ChargedTo, TapStatus
from clearing.core import layouts as v
from clearing.core.summary import summarise
from loadgen.model import TAP_DTYPE

LATENCY_US_MAX = 60_000_000  # histograms track 1 µs .. 60 s
LATENCY_DIGITS = 3

RESULT_DTYPE = np.dtype(
    [
        ("status", "u1"),
        ("charged_to", "u1"),
        ("duplicate", "u1"),
        ("pad", "V5"),
        ("charged", ">i8"),
        ("discount", ">i8"),
        ("balance", ">i8"),
        ("seq", ">u8"),
    ]
)
assert RESULT_DTYPE.itemsize == 40

STATUS_NAMES = v.STATUS_LABELS


def histogram() -> HdrHistogram:
    return HdrHistogram(1, LATENCY_US_MAX, LATENCY_DIGITS)


class Tally:
    def __init__(self, sampled_cards: set[int]) -> None:
        self.taps_by_status: Counter[str] = Counter()
        self.charged_fen: Counter[str] = Counter()  # CARD / ISSUER_LOSS
        self.taps_offered = 0
        self.taps_answered = 0
        self.taps_uncertain = 0  # in calls that failed: applied or not, we cannot tell
        self.errors: Counter[str] = Counter()  # failed calls by gRPC status
        self.error_details: dict[str, str] = {}  # the first message of each status
        self.card_ops: Counter[str] = Counter()  # "TopUp:OK" ...
        self.batch_latency = histogram()
        self.single_latency = histogram()
        self.schedule_lag = histogram()  # day mode: how late each event went out
        self.uncertain_cards: set[int] = set()  # in card operations that failed
        self.topups_fen = 0  # Σ answered OK top-ups, every card
        self.bad_results = 0  # answers that contradict themselves (the summariser's BAD)
        self.sampled_set = frozenset(sampled_cards)
        self.sampled = np.array(sorted(sampled_cards), dtype=np.uint64)
        self.card_delta_fen: Counter[int] = Counter()  # sampled card -> expected change

    def batch(self, packed_taps: bytes, packed_results: bytes, journal_seq: int) -> None:
        """Fold one answered batch."""
        summary = summarise(packed_taps, packed_results, journal_seq, 0, 0)
        for label, count in zip(STATUS_NAMES, v.status_counts(summary), strict=True):
            if count or label in ("DUPLICATE", "OK"):
                self.taps_by_status[label] += count
        self.charged_fen["CARD"] += summary[v.CARD_CHARGED]
        self.charged_fen["ISSUER_LOSS"] += summary[v.LOSS_CHARGED]
        self.bad_results += summary[v.BAD]
        self.taps_answered += len(packed_results) // RESULT_DTYPE.itemsize
        if len(self.sampled):
            self._follow_sampled(packed_taps, packed_results)

    def _follow_sampled(self, packed_taps: bytes, packed_results: bytes) -> None:
        taps = np.frombuffer(packed_taps, dtype=TAP_DTYPE)
        cards = taps["card"].astype(np.uint64)
        # searchsorted on the sorted sample: np.isin would sort both arrays every batch.
        at = np.minimum(np.searchsorted(self.sampled, cards), len(self.sampled) - 1)
        mine = self.sampled[at] == cards
        if not mine.any():
            return
        results = np.frombuffer(packed_results, dtype=RESULT_DTYPE)[mine]
        fresh = (results["duplicate"] == 0) & (results["status"] == TapStatus.OK)
        fresh &= results["charged_to"] == ChargedTo.CARD
        for card, charged in zip(taps["card"][mine][fresh], results["charged"][fresh], strict=True):
            self.card_delta_fen[int(card)] -= int(charged)

    def top_up(self, card_id: int, status: str, amount_fen: int) -> None:
        self.card_ops[f"TopUp:{status}"] += 1
        if status == "OK":
            self.topups_fen += amount_fen
        if status == "OK" and card_id in self.sampled_set:
            self.card_delta_fen[card_id] += amount_fen

    def failed(self, code: str, taps: int, details: str = "") -> None:
        self.errors[code] += 1
        self.error_details.setdefault(code, details)
        self.taps_uncertain += taps
