"""The layout of a tap batch's summary vector (``clearing.core.summary``): the indexes both
summariser twins fill and settlement and metrics read, with nothing that computes it,
so that readers depend on the layout and not on either twin."""

from __future__ import annotations

from collections.abc import Sequence

from clearing.codes import STATUS_COUNT, TapStatus
from clearing.limits import LATE_DAY_BINS

# Layout of the summary vector ----------------------------------------------------------
OK_COUNT = 0  # applied taps (first submissions only; duplicates are counted apart)
OK_LIST = 1  # Σ list_amount_fen of OK taps
OK_DISCOUNT = 2  # Σ discount_fen of OK taps
OK_CHARGED = 3  # Σ charged_fen of OK taps (what the party is paid gross)
CARD_CHARGED = 4  # the part of OK_CHARGED taken from card balances
LOSS_COUNT = 5  # OK taps charged to the issuer's hot-list loss
LOSS_CHARGED = 6
LATE_COUNT = 7  # OK taps that occurred before the business day began
LATE_CHARGED = 8
DUP_COUNT = 9  # resubmissions answered with the original result
BAD = 10  # results that contradict themselves or their entry: the run fails
REJECTED = 11  # + status: taps rejected with that status
REJECTED_LIST = REJECTED + STATUS_COUNT  # + status: Σ list amount (statuses 4..8 only)
HOURS = REJECTED_LIST + STATUS_COUNT  # + local hour of occurrence: OK taps
LATE_DAYS = HOURS + 24  # + (days before the business day − 1), last bin "or more"
SUMMARY_LEN = LATE_DAYS + LATE_DAY_BINS

# Answers by kind: resubmissions, then each fresh outcome (the metrics' status labels).
STATUS_LABELS = ("DUPLICATE", *(s.name for s in sorted(TapStatus)))


def status_counts(summary: Sequence[int]) -> list[int]:
    """Taps of a summary vector by ``STATUS_LABELS``."""
    fresh = [
        summary[OK_COUNT] if s == TapStatus.OK else summary[REJECTED + s] for s in sorted(TapStatus)
    ]
    return [summary[DUP_COUNT], *fresh]
