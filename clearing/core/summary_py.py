"""Settlement's view of one journaled tap batch: the plain-Python twin of ``_summary``.

``summarise`` reads a batch's packed taps and the packed results the engine
journaled for them, and returns a fixed-length vector of integers (layout
below) that settlement adds up per terminal. It also checks each result for
internal consistency, so that a tap is never counted on a result that cannot
be true: such taps are counted in ``BAD`` and the run fails.

The compiled twin (``ext/clearing/core/_summary.pyx``) must return the same vector
for the same input, and raise ``OverflowError`` where this one does.
"""

from __future__ import annotations

from clearing.codes import ChargedTo, TapStatus
from clearing.core.layouts import (  # re-exported: the twin's contract is this layout
    BAD,
    CARD_CHARGED,
    DUP_COUNT,
    HOURS,
    LATE_CHARGED,
    LATE_COUNT,
    LATE_DAYS,
    LOSS_CHARGED,
    LOSS_COUNT,
    OK_CHARGED,
    OK_COUNT,
    OK_DISCOUNT,
    OK_LIST,
    REJECTED,
    REJECTED_LIST,
    SUMMARY_LEN,
)
from clearing.limits import (
    INT64_MAX,
    INT64_MIN,
    LATE_DAY_BINS,
    MS_PER_DAY,
    MS_PER_HOUR,
    RESULT_BYTES,
    RESULT_STRUCT,
    TAP_BYTES,
    TAP_STRUCT,
)

# Rejections whose list amount passed the amount check and may be summed safely (an
# ID_CONFLICT, INVALID_AMOUNT or SEQUENCE_TOO_FAR_AHEAD tap may carry any int64 at all).
_SUMMED_REJECTIONS = frozenset(
    {
        TapStatus.TOO_LATE,
        TapStatus.IN_FUTURE,
        TapStatus.UNKNOWN_CARD,
        TapStatus.CARD_BLOCKED,
        TapStatus.INSUFFICIENT_FUNDS,
    }
)


def summarise(
    packed_taps: bytes,
    packed_results: bytes,
    journal_seq: int,
    window_start_ms: int,
    utc_offset_ms: int,
) -> list[int]:
    """The summary vector of one batch journaled as entry ``journal_seq``.

    ``window_start_ms`` is the business day's first instant: OK taps that
    occurred before it are late. ``utc_offset_ms`` places occurrences in
    local hours.
    """
    count = len(packed_taps) // TAP_BYTES
    if len(packed_taps) != count * TAP_BYTES or len(packed_results) != count * RESULT_BYTES:
        raise ValueError("packed taps and results must hold the same number of records")
    v = [0] * SUMMARY_LEN
    for i in range(count):
        _, _, list_fen, occurred_ms, _ = TAP_STRUCT.unpack_from(packed_taps, i * TAP_BYTES)
        status, charged_to, duplicate, charged, discount, _, seq = RESULT_STRUCT.unpack_from(
            packed_results, i * RESULT_BYTES
        )
        if not TapStatus.OK <= status <= TapStatus.SEQUENCE_TOO_FAR_AHEAD:
            v[BAD] += 1
        elif duplicate:
            # The original answer again: applied by an entry no later than this one.
            if duplicate == 1 and seq <= journal_seq:
                v[DUP_COUNT] += 1
            else:
                v[BAD] += 1
        elif seq != journal_seq:
            v[BAD] += 1
        elif status == TapStatus.OK:
            _count_ok(
                v,
                list_fen,
                occurred_ms,
                charged_to,
                charged,
                discount,
                window_start_ms,
                utc_offset_ms,
            )
        elif charged != 0 or discount != 0 or charged_to != ChargedTo.CHARGED_TO_NONE:
            v[BAD] += 1
        else:
            v[REJECTED + status] += 1
            if status in _SUMMED_REJECTIONS:
                v[REJECTED_LIST + status] += list_fen
    for total in v:
        if not INT64_MIN <= total <= INT64_MAX:
            raise OverflowError("a batch total left int64")
    return v


def _count_ok(
    v: list[int],
    list_fen: int,
    occurred_ms: int,
    charged_to: int,
    charged: int,
    discount: int,
    window_start_ms: int,
    utc_offset_ms: int,
) -> None:
    if (
        charged < 0
        or discount < 0
        or list_fen != charged + discount
        or charged_to not in (ChargedTo.CARD, ChargedTo.ISSUER_LOSS)
    ):
        v[BAD] += 1
        return
    v[OK_COUNT] += 1
    v[OK_LIST] += list_fen
    v[OK_DISCOUNT] += discount
    v[OK_CHARGED] += charged
    if charged_to == ChargedTo.CARD:
        v[CARD_CHARGED] += charged
    else:
        v[LOSS_COUNT] += 1
        v[LOSS_CHARGED] += charged
    v[HOURS + (occurred_ms + utc_offset_ms) // MS_PER_HOUR % 24] += 1
    if occurred_ms < window_start_ms:
        v[LATE_COUNT] += 1
        v[LATE_CHARGED] += charged
        days_before = (window_start_ms - occurred_ms - 1) // MS_PER_DAY + 1
        v[LATE_DAYS + min(days_before, LATE_DAY_BINS) - 1] += 1
