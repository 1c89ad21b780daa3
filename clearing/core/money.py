"""Money arithmetic of the reference twin (SPEC §2): checked int64 and half-up rounding.

The compiled core does the same with ``__builtin_*_overflow`` checks."""

from __future__ import annotations

from clearing.limits import BP_SCALE, INT64_MAX, INT64_MIN

_HALF_BP = BP_SCALE // 2


def checked_int64(value: int) -> int:
    """Money and time never wrap: anything outside int64 is an error, not a number."""
    if not INT64_MIN <= value <= INT64_MAX:
        raise OverflowError(f"int64 overflow in money arithmetic: {value}")
    return value


def half_up(amount_fen: int, rate_bp: int) -> int:
    """SPEC §2: ``(x * bp + 5000) // 10000`` for x >= 0."""
    assert amount_fen >= 0 and rate_bp >= 0
    return checked_int64(checked_int64(checked_int64(amount_fen * rate_bp) + _HALF_BP) // BP_SCALE)
