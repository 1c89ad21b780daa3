"""SPEC §4–§5 tap outcomes, with exact numbers, for both ledger cores.

Every test runs against the compiled core (``clearing.core._ledger``) and its
plain-Python reference twin (``clearing.core.ledger_py``); both must give the same,
spec-mandated answers.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import NamedTuple

import pytest

from clearing.codes import STATUS_COUNT, CardState, CardType, ChargedTo, TapStatus, TerminalClass
from clearing.core.ledger import IMPLEMENTATIONS, ledger_class
from clearing.limits import (
    INT64_MAX,
    INT64_MIN,
    RESULT_BYTES,
    RESULT_STRUCT,
    TAP_STRUCT,
    TERMINAL_SEQ_AHEAD_MAX,
    UINT32_MAX,
    UINT64_MAX,
)

NOW = 1_760_000_000_000  # 2025-10-09, a realistic server clock
DAY = 86_400_000
MAX_LATE = 7 * DAY  # defaults of SPEC §4/§5/§11
SKEW = 300_000
WINDOW = 5_400_000
LIABILITY = 21_600_000
MAX_TAP = 100_000

BUS, SHOP, WATER = 1001, 2002, 3003  # terminal ids
OPERATOR, MERCHANT, UTILITY = 1, 2, 3  # party indexes
ADULT, STUDENT, ELDERLY, DISABLED = 11, 12, 13, 14  # card ids (ACTIVE, funded)
RICH = 15  # ADULT card with a large balance
NO_CARD = 999  # never issued
FUNDS = 10_000

OK = TapStatus.OK
CARD = ChargedTo.CARD
LOSS = ChargedTo.ISSUER_LOSS
NONE = ChargedTo.CHARGED_TO_NONE


class Result(NamedTuple):
    status: int
    charged_to: int
    duplicate: int
    charged: int
    discount: int
    balance_after: int
    journal_seq: int


def tap(card_id: int, seq: int, amount: int, occurred: int = NOW, route: int = 0) -> bytes:
    return TAP_STRUCT.pack(card_id, seq, amount, occurred, route)


def apply(ledger, terminal: int, taps: list[bytes], journal_seq: int = 1, now: int = NOW):
    packed = ledger.apply_batch(terminal, b"".join(taps), now, journal_seq)
    assert isinstance(packed, bytes)
    assert len(packed) == len(taps) * RESULT_BYTES
    return [Result(*r) for r in RESULT_STRUCT.iter_unpack(packed)]


def one(ledger, terminal: int, t: bytes, journal_seq: int = 1, now: int = NOW) -> Result:
    (result,) = apply(ledger, terminal, [t], journal_seq, now)
    return result


def ok(charged: int, discount: int, balance: int, journal_seq: int = 1, to: int = CARD):
    return Result(OK, to, 0, charged, discount, balance, journal_seq)


def rejected(status: int, balance: int, journal_seq: int = 1) -> Result:
    return Result(status, NONE, 0, 0, 0, balance, journal_seq)


def balance(ledger, card_id: int) -> int:
    return ledger.card(card_id)[2]


def _params():
    compiled = importlib.util.find_spec("clearing.core._ledger") is not None
    return [
        pytest.param(
            name,
            marks=pytest.mark.skipif(
                name == "c" and not compiled, reason="clearing.core._ledger is not built"
            ),
        )
        for name in IMPLEMENTATIONS
    ]


@pytest.fixture(params=_params())
def impl(request) -> str:
    return request.param


@pytest.fixture
def ledger(impl):
    """A city in miniature: one terminal of each class, five funded cards."""
    led = ledger_class(impl)()
    led.set_terminal(BUS, TerminalClass.VALIDATOR, OPERATOR)
    led.set_terminal(SHOP, TerminalClass.POS, MERCHANT)
    led.set_terminal(WATER, TerminalClass.BILLING, UTILITY)
    for card_id, card_type in (
        (ADULT, CardType.ADULT),
        (STUDENT, CardType.STUDENT),
        (ELDERLY, CardType.ELDERLY),
        (DISABLED, CardType.DISABLED),
        (RICH, CardType.ADULT),
    ):
        assert led.issue_card(card_id, card_type, 2_000) is True
        led.adjust_balance(card_id, FUNDS)
    led.adjust_balance(RICH, 1_000_000 - FUNDS)
    return led


# API shape -------------------------------------------------------------------------


def test_implementation_names(impl):
    cls = ledger_class(impl)
    assert cls.implementation == impl
    assert cls().implementation == impl
    module = importlib.import_module(cls.__module__)
    assert impl == module.IMPLEMENTATION


def test_cards_and_lookups(ledger):
    assert ledger.card_count() == 5
    assert ledger.card(ADULT) == (CardState.ACTIVE, CardType.ADULT, FUNDS, 2_000, 0)
    assert ledger.card(NO_CARD) is None
    assert ledger.card(-1) is None
    assert ledger.issue_card(ADULT, CardType.STUDENT, 0) is False  # the id exists: unchanged
    assert ledger.card(ADULT) == (CardState.ACTIVE, CardType.ADULT, FUNDS, 2_000, 0)
    assert ledger.total_balance_fen() == 4 * FUNDS + 1_000_000
    assert ledger.adjust_balance(ADULT, -15_000) == -5_000
    assert ledger.total_balance_fen() == 3 * FUNDS + 1_000_000 - 5_000
    ledger.set_card_state(ADULT, CardState.LOST, NOW - 5)
    assert ledger.card(ADULT) == (CardState.LOST, CardType.ADULT, -5_000, 2_000, NOW - 5)
    with pytest.raises(AssertionError):
        ledger.issue_card(77, 5, 0)


def test_unknown_ids_raise_key_error(ledger):
    with pytest.raises(KeyError):
        ledger.adjust_balance(NO_CARD, 1)
    with pytest.raises(KeyError):
        ledger.set_card_state(NO_CARD, CardState.LOST, NOW)
    with pytest.raises(KeyError):
        ledger.terminal_status(4242)
    with pytest.raises(KeyError):
        ledger.apply_batch(4242, tap(ADULT, 1, 200), NOW, 1)
    assert ledger.terminal_seqs(4242) == []
    assert ledger.tap_record_count() == 0


def test_money_never_wraps(ledger):
    ledger.adjust_balance(ADULT, INT64_MAX - FUNDS)
    assert balance(ledger, ADULT) == INT64_MAX
    with pytest.raises(OverflowError):
        ledger.adjust_balance(ADULT, 1)
    assert balance(ledger, ADULT) == INT64_MAX  # unchanged by the failed call
    with pytest.raises(OverflowError):
        ledger.total_balance_fen()  # the sum of the balances leaves int64
    ledger.adjust_balance(ADULT, -INT64_MAX)
    assert ledger.total_balance_fen() == 3 * FUNDS + 1_000_000
    # A limit so large that list × rate overflows int64 is an error, not a number.
    configure(ledger, max_tap_fen=INT64_MAX)
    with pytest.raises(OverflowError):
        ledger.apply_batch(BUS, tap(ADULT, 1, INT64_MAX // 2), NOW, 1)
    # A validator charge that would push the balance below INT64_MIN.
    ledger.adjust_balance(STUDENT, INT64_MIN + 10 - FUNDS)
    with pytest.raises(OverflowError):
        ledger.apply_batch(BUS, tap(STUDENT, 2, 200), NOW, 2)
    assert balance(ledger, STUDENT) == INT64_MIN + 10


# 8. OK ---------------------------------------------------------------------------


def test_ok_validator(ledger):
    assert one(ledger, BUS, tap(ADULT, 1, 200, route=7), journal_seq=41) == ok(
        200, 0, FUNDS - 200, 41
    )
    assert balance(ledger, ADULT) == FUNDS - 200


def test_ok_pos_with_merchant_discount(ledger):
    ledger.add_merchant_rule(MERCHANT, 0, 8_800)
    assert one(ledger, SHOP, tap(ADULT, 1, 1_000)) == ok(880, 120, FUNDS - 880)


def test_ok_billing_charges_the_list_amount(ledger):
    ledger.add_merchant_rule(UTILITY, 0, 5_000)  # merchant rules never apply to bills
    assert one(ledger, WATER, tap(ADULT, 1, 4_321)) == ok(4_321, 0, FUNDS - 4_321)


def test_batch_applies_in_order(ledger):
    results = apply(ledger, WATER, [tap(ADULT, s, 3_000) for s in (1, 2, 3, 4)], journal_seq=9)
    assert results == [
        ok(3_000, 0, 7_000, 9),
        ok(3_000, 0, 4_000, 9),
        ok(3_000, 0, 1_000, 9),
        rejected(TapStatus.INSUFFICIENT_FUNDS, 1_000, 9),
    ]


# 1. DUPLICATE ------------------------------------------------------------------------


def test_duplicate_returns_the_original_result(ledger):
    original = one(ledger, BUS, tap(ADULT, 5, 200, route=3), journal_seq=10)
    assert original == ok(200, 0, FUNDS - 200, 10)
    ledger.adjust_balance(ADULT, 1_000)  # the card moves on; the answer does not
    again = one(ledger, BUS, tap(ADULT, 5, 200, route=3), journal_seq=11)
    assert again == original._replace(duplicate=1)
    assert balance(ledger, ADULT) == FUNDS - 200 + 1_000  # nothing re-applied
    assert ledger.tap_record_count() == 1
    assert ledger.terminal_status(BUS) == (5, 1)


def test_duplicate_keeps_a_rejection(ledger):
    declined = one(ledger, WATER, tap(ADULT, 1, FUNDS + 1), journal_seq=3)
    assert declined == rejected(TapStatus.INSUFFICIENT_FUNDS, FUNDS, 3)
    ledger.adjust_balance(ADULT, 50_000)  # a top-up does not turn the retry into a charge
    again = one(ledger, WATER, tap(ADULT, 1, FUNDS + 1), journal_seq=4)
    assert again == declined._replace(duplicate=1)
    assert balance(ledger, ADULT) == FUNDS + 50_000
    # Even a tap whose amount was invalid is answered as a duplicate first.
    first = one(ledger, WATER, tap(ADULT, 2, 0), journal_seq=5)
    assert first == rejected(TapStatus.INVALID_AMOUNT, FUNDS + 50_000, 5)
    assert one(ledger, WATER, tap(ADULT, 2, 0), journal_seq=6) == first._replace(duplicate=1)


def test_duplicate_inside_one_batch(ledger):
    t = tap(STUDENT, 1, 200, route=2)
    results = apply(ledger, BUS, [t, tap(ADULT, 2, 200), t], journal_seq=77)
    assert results == [
        ok(100, 100, FUNDS - 100, 77),
        ok(200, 0, FUNDS - 200, 77),
        Result(OK, CARD, 1, 100, 100, FUNDS - 100, 77),
    ]
    assert balance(ledger, STUDENT) == FUNDS - 100
    assert ledger.terminal_status(BUS) == (2, 2)


def test_duplicate_of_a_transfer_reports_its_discount(ledger):
    apply(ledger, BUS, [tap(ADULT, 1, 200, NOW - 1_000, route=1)])
    transfer = one(ledger, BUS, tap(ADULT, 2, 200, NOW, route=2), journal_seq=2)
    assert transfer == ok(100, 100, FUNDS - 300, 2)
    assert one(ledger, BUS, tap(ADULT, 2, 200, NOW, route=2), journal_seq=3) == Result(
        OK, CARD, 1, 100, 100, FUNDS - 300, 2
    )


# 2. ID_CONFLICT ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "changed",
    [
        tap(STUDENT, 1, 200, NOW, 7),  # another card
        tap(ADULT, 1, 201, NOW, 7),  # another amount
        tap(ADULT, 1, 200, NOW + 1, 7),  # another time
        tap(ADULT, 1, 200, NOW, 8),  # another route
    ],
)
def test_id_conflict_never_replaces_the_original(ledger, changed):
    original = one(ledger, BUS, tap(ADULT, 1, 200, NOW, 7), journal_seq=1)
    card_id = TAP_STRUCT.unpack(changed)[0]
    current = balance(ledger, card_id)
    assert one(ledger, BUS, changed, journal_seq=2) == rejected(TapStatus.ID_CONFLICT, current, 2)
    assert balance(ledger, ADULT) == FUNDS - 200 and balance(ledger, STUDENT) == FUNDS
    assert ledger.terminal_status(BUS) == (1, 1)
    assert ledger.tap_record_count() == 1
    # The original is still the one on record.
    assert one(ledger, BUS, tap(ADULT, 1, 200, NOW, 7), journal_seq=3) == original._replace(
        duplicate=1
    )


def test_id_conflict_reports_the_current_balance(ledger):
    one(ledger, WATER, tap(ADULT, 1, 1_000))
    ledger.adjust_balance(STUDENT, -3_000)
    assert one(ledger, WATER, tap(STUDENT, 1, 1_000), journal_seq=2) == rejected(
        TapStatus.ID_CONFLICT, FUNDS - 3_000, 2
    )
    assert one(ledger, WATER, tap(NO_CARD, 1, 1_000), journal_seq=3) == rejected(
        TapStatus.ID_CONFLICT, 0, 3
    )
    # The same seq on another terminal is a different tap altogether.
    assert one(ledger, BUS, tap(STUDENT, 1, 200), journal_seq=4) == ok(100, 100, FUNDS - 3_100, 4)


# 2b. SEQUENCE_TOO_FAR_AHEAD ----------------------------------------------------------------

AHEAD = TERMINAL_SEQ_AHEAD_MAX
FAR = TapStatus.SEQUENCE_TOO_FAR_AHEAD


def test_a_sequence_too_far_ahead_is_refused_and_changes_nothing(ledger):
    assert one(ledger, BUS, tap(ADULT, 5, 200)) == ok(200, 0, FUNDS - 200)
    far = [tap(ADULT, 5 + AHEAD + 1, 200), tap(ADULT, UINT64_MAX, 200), tap(STUDENT, 2**63, 200)]
    assert apply(ledger, BUS, far, journal_seq=2) == [
        rejected(FAR, FUNDS - 200, 2),
        rejected(FAR, FUNDS - 200, 2),
        rejected(FAR, FUNDS, 2),
    ]
    assert balance(ledger, ADULT) == FUNDS - 200 and balance(ledger, STUDENT) == FUNDS
    # Not received: the highest and the gaps are as before.
    assert ledger.terminal_status(BUS) == (5, 1)
    assert ledger.terminal_seqs(BUS) == [5]
    # A retry gets the same answer (the refusal is on record), a new body an ID_CONFLICT.
    again = one(ledger, BUS, tap(ADULT, UINT64_MAX, 200), journal_seq=5)
    assert again == rejected(FAR, FUNDS - 200, 2)._replace(duplicate=1)
    assert ledger.repeated_results(BUS, b"".join(far)) is not None  # a retried batch: no entry
    changed = one(ledger, BUS, tap(ADULT, UINT64_MAX, 201), journal_seq=6)
    assert changed == rejected(TapStatus.ID_CONFLICT, FUNDS - 200, 6)
    assert ledger.terminal_status(BUS) == (5, 1)
    # The terminal carries on with its next numbers.
    assert one(ledger, BUS, tap(ADULT, 6, 200), journal_seq=7) == ok(200, 0, FUNDS - 400, 7)
    assert ledger.terminal_status(BUS) == (6, 2)
    assert ledger.terminal_seqs(BUS) == [5, 6]


def test_the_limit_counts_from_the_highest_so_far_in_the_batch(ledger):
    # A fresh terminal's highest is 0: AHEAD is the first number still accepted.
    assert apply(ledger, SHOP, [tap(RICH, AHEAD + 1, 100), tap(RICH, AHEAD, 100)]) == [
        rejected(FAR, 1_000_000),
        ok(100, 0, 1_000_000 - 100),
    ]
    assert ledger.terminal_status(SHOP) == (AHEAD, 1)
    # Taps earlier in the batch raise the highest; a refused one does not.
    results = apply(
        ledger,
        BUS,
        [
            tap(ADULT, 3, 200),
            tap(ADULT, 3 + AHEAD + 1, 200),  # refused
            tap(ADULT, 3 + AHEAD, 200),  # exactly the limit ahead of 3: accepted
            tap(ADULT, 3 + 2 * AHEAD, 200),  # the limit ahead of the new highest: accepted
            tap(ADULT, 3 + AHEAD + 1, 200),  # now within the window, but a retry: refused still
        ],
        journal_seq=2,
    )
    assert [r.status for r in results] == [OK, FAR, OK, OK, FAR]
    assert results[4] == rejected(FAR, FUNDS - 200, 2)._replace(duplicate=1)
    assert ledger.terminal_status(BUS) == (3 + 2 * AHEAD, 3)
    assert ledger.terminal_seqs(BUS) == [3, 3 + AHEAD, 3 + 2 * AHEAD]


def test_a_sequence_too_far_ahead_comes_before_the_body_checks(ledger):
    ledger.set_card_state(ELDERLY, CardState.LOST, NOW)
    far = AHEAD + 1
    packed = b"".join(
        [
            tap(ADULT, far, 0),  # an invalid amount
            tap(ADULT, far + 1, 200, NOW - MAX_LATE - 1),  # too late
            tap(ADULT, far + 2, 200, NOW + SKEW + 1),  # in the future
            tap(NO_CARD, far + 3, 200),  # no such card
            tap(ELDERLY, far + 4, 200),  # blocked
            tap(ADULT, far + 5, FUNDS + 1),  # short of funds
        ]
    )
    results = ledger.apply_batch(WATER, packed, NOW, 1)
    assert [Result(*r) for r in RESULT_STRUCT.iter_unpack(results)] == [
        rejected(FAR, FUNDS),
        rejected(FAR, FUNDS),
        rejected(FAR, FUNDS),
        rejected(FAR, 0),
        rejected(FAR, FUNDS),
        rejected(FAR, FUNDS),
    ]
    assert ledger.terminal_status(WATER) == (0, 0)
    assert balance(ledger, ADULT) == FUNDS
    fresh = [0] * STATUS_COUNT
    fresh[FAR] = 6
    assert ledger.count_statuses(results) == fresh
    retried = ledger.apply_batch(WATER, packed, NOW, 2)
    assert ledger.count_statuses(retried) == [6] + [0] * (STATUS_COUNT - 1)  # all duplicates
    assert ledger.repeated_results(WATER, packed) == retried


def test_a_refusal_replays_and_restores_to_the_same_answers(impl, ledger):
    batches = [
        (BUS, tap(ADULT, 1, 200) + tap(ADULT, UINT64_MAX, 200) + tap(ADULT, 2, 200)),
        (BUS, tap(ADULT, UINT64_MAX, 200) + tap(ADULT, AHEAD + 2, 200)),
        (BUS, tap(ADULT, AHEAD + 2, 200) + tap(ADULT, UINT64_MAX, 999)),
    ]
    answers = [ledger.apply_batch(t, packed, NOW, k + 1) for k, (t, packed) in enumerate(batches)]
    replayed = ledger_class(impl)()  # the same entries again, from the start
    replayed.set_terminal(BUS, TerminalClass.VALIDATOR, OPERATOR)
    for card_id, card_type in ((ADULT, CardType.ADULT), (STUDENT, CardType.STUDENT),
                               (ELDERLY, CardType.ELDERLY), (DISABLED, CardType.DISABLED),
                               (RICH, CardType.ADULT)):  # fmt: skip
        replayed.issue_card(card_id, card_type, 2_000)
        replayed.adjust_balance(card_id, FUNDS)
    replayed.adjust_balance(RICH, 1_000_000 - FUNDS)
    again = [replayed.apply_batch(t, packed, NOW, k + 1) for k, (t, packed) in enumerate(batches)]
    assert again == answers
    assert [Result(*r).status for r in RESULT_STRUCT.iter_unpack(answers[0])] == [OK, FAR, OK]
    assert ledger.terminal_status(BUS) == replayed.terminal_status(BUS) == (AHEAD + 2, 3)
    restored = ledger_class(impl)()
    restored.restore(ledger.snapshot())
    assert restored.terminal_status(BUS) == (AHEAD + 2, 3)
    assert restored.terminal_seqs(BUS) == ledger.terminal_seqs(BUS) == [1, 2, AHEAD + 2]
    retry = tap(ADULT, UINT64_MAX, 200)
    assert one(restored, BUS, retry, journal_seq=9) == one(ledger, BUS, retry, journal_seq=9)
    assert one(restored, BUS, retry, journal_seq=9) == rejected(FAR, FUNDS - 200, 1)._replace(
        duplicate=1
    )


# 3. INVALID_AMOUNT ------------------------------------------------------------------------


@pytest.mark.parametrize("amount", [0, -1, MAX_TAP + 1, INT64_MAX, INT64_MIN])
@pytest.mark.parametrize("terminal", [BUS, SHOP, WATER])
def test_invalid_amount(ledger, amount, terminal):
    assert one(ledger, terminal, tap(ADULT, 1, amount)) == rejected(TapStatus.INVALID_AMOUNT, FUNDS)
    assert balance(ledger, ADULT) == FUNDS
    assert ledger.terminal_status(terminal) == (1, 1)  # received, whatever its outcome


def test_amount_limit_is_inclusive(ledger):
    assert one(ledger, WATER, tap(RICH, 1, MAX_TAP)) == ok(MAX_TAP, 0, 1_000_000 - MAX_TAP)
    assert one(ledger, BUS, tap(ADULT, 1, 1)) == ok(1, 0, FUNDS - 1)


# 4. TOO_LATE / IN_FUTURE -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("occurred", "status"),
    [
        (NOW - MAX_LATE, OK),
        (NOW - MAX_LATE - 1, TapStatus.TOO_LATE),
        (NOW + SKEW, OK),
        (NOW + SKEW + 1, TapStatus.IN_FUTURE),
        (INT64_MIN, TapStatus.TOO_LATE),
        (INT64_MAX, TapStatus.IN_FUTURE),
        (0, TapStatus.TOO_LATE),
        (-1, TapStatus.TOO_LATE),
    ],
)
def test_time_window_edges(ledger, occurred, status):
    result = one(ledger, WATER, tap(ADULT, 1, 500, occurred))
    if status == OK:
        assert result == ok(500, 0, FUNDS - 500)
    else:
        assert result == rejected(status, FUNDS)


def configure(ledger, **overrides) -> None:
    """The test city's settings, with ``overrides`` by keyword."""
    ledger.configure(
        **{
            "max_tap_fen": MAX_TAP,
            "max_late_ms": MAX_LATE,
            "max_clock_skew_ms": SKEW,
            "transfer_window_ms": WINDOW,
            "transfer_discount_fen": 100,
            "liability_window_ms": LIABILITY,
            "concession_bp": (10_000, 5_000, 0, 0),
            **overrides,
        }
    )


def test_time_window_bounds_beyond_int64(ledger):
    """`now - max_late` and `now + skew` may leave int64; the comparisons stay exact."""
    configure(ledger, max_late_ms=INT64_MAX, max_clock_skew_ms=INT64_MAX)
    # now + skew > INT64_MAX: nothing is in the future.
    assert one(ledger, WATER, tap(ADULT, 1, 10, INT64_MAX)) == ok(10, 0, FUNDS - 10)
    # now - late < INT64_MIN: nothing is too late.
    assert one(ledger, WATER, tap(ADULT, 2, 10, INT64_MIN), now=-2) == ok(10, 0, FUNDS - 20)
    # NOW - INT64_MAX still fits, and INT64_MIN is older than that.
    assert one(ledger, WATER, tap(ADULT, 3, 10, INT64_MIN)) == rejected(
        TapStatus.TOO_LATE, FUNDS - 20
    )
    configure(
        ledger, max_late_ms=INT64_MIN, max_clock_skew_ms=INT64_MIN
    )  # nonsense limits, exact answers all the same
    # now - late > INT64_MAX: everything is too late.
    assert one(ledger, WATER, tap(ADULT, 4, 10, INT64_MAX)) == rejected(
        TapStatus.TOO_LATE, FUNDS - 20
    )
    # now - late == INT64_MAX exactly, and now + skew < INT64_MIN: in the future.
    assert one(ledger, WATER, tap(ADULT, 5, 10, INT64_MAX), now=-1) == rejected(
        TapStatus.IN_FUTURE, FUNDS - 20
    )


# 5. UNKNOWN_CARD ---------------------------------------------------------------------------


@pytest.mark.parametrize("terminal", [BUS, SHOP, WATER])
def test_unknown_card(ledger, terminal):
    assert one(ledger, terminal, tap(NO_CARD, 1, 200)) == rejected(TapStatus.UNKNOWN_CARD, 0)
    assert ledger.card(NO_CARD) is None
    assert ledger.total_balance_fen() == 4 * FUNDS + 1_000_000


# 6. CARD_BLOCKED -----------------------------------------------------------------------------


@pytest.mark.parametrize("state", [CardState.LOST, CardState.REPLACED, CardState.CLOSED])
@pytest.mark.parametrize("terminal", [SHOP, WATER])
def test_card_blocked_for_pos_and_billing(ledger, state, terminal):
    ledger.set_card_state(ADULT, state, NOW - 1_000)  # well inside the liability window
    assert one(ledger, terminal, tap(ADULT, 1, 200)) == rejected(TapStatus.CARD_BLOCKED, FUNDS)
    assert balance(ledger, ADULT) == FUNDS


# 7. INSUFFICIENT_FUNDS ----------------------------------------------------------------------


def test_insufficient_funds(ledger):
    ledger.add_merchant_rule(MERCHANT, 0, 8_000)
    assert one(ledger, WATER, tap(ADULT, 1, FUNDS + 1)) == rejected(
        TapStatus.INSUFFICIENT_FUNDS, FUNDS
    )
    # POS compares the discounted charge: 12,500 × 80 % = 10,000 fits exactly.
    assert one(ledger, SHOP, tap(ADULT, 1, 12_501)) == rejected(TapStatus.INSUFFICIENT_FUNDS, FUNDS)
    assert one(ledger, SHOP, tap(ADULT, 2, 12_500)) == ok(10_000, 2_500, 0)
    assert one(ledger, WATER, tap(ADULT, 2, 1)) == rejected(TapStatus.INSUFFICIENT_FUNDS, 0)
    ledger.adjust_balance(STUDENT, -FUNDS - 10)  # negative balance: nothing fits
    assert one(ledger, WATER, tap(STUDENT, 3, 1)) == rejected(TapStatus.INSUFFICIENT_FUNDS, -10)


def test_validator_may_take_the_balance_negative(ledger):
    ledger.adjust_balance(ADULT, -FUNDS + 50)
    assert one(ledger, BUS, tap(ADULT, 1, 200)) == ok(200, 0, -150)
    assert one(ledger, BUS, tap(ADULT, 2, 200, route=0)) == ok(200, 0, -350)
    assert balance(ledger, ADULT) == -350


# Precedence ---------------------------------------------------------------------------------


def test_precedence_order(ledger):
    ledger.set_card_state(ELDERLY, CardState.LOST, NOW)
    late = NOW - MAX_LATE - 1
    results = apply(
        ledger,
        WATER,
        [
            tap(NO_CARD, 1, 0),  # bad amount beats unknown card
            tap(NO_CARD, 2, MAX_TAP + 1, late),  # bad amount beats too late
            tap(NO_CARD, 3, 100, late),  # too late beats unknown card
            tap(NO_CARD, 4, 100, NOW + SKEW + 1),  # in future beats unknown card
            tap(ELDERLY, 5, FUNDS + 1),  # blocked beats insufficient funds
            tap(ELDERLY, 6, 100, late),  # too late beats blocked
            tap(ELDERLY, 7, -5),  # bad amount beats blocked
        ],
    )
    assert [r.status for r in results] == [
        TapStatus.INVALID_AMOUNT,
        TapStatus.INVALID_AMOUNT,
        TapStatus.TOO_LATE,
        TapStatus.IN_FUTURE,
        TapStatus.CARD_BLOCKED,
        TapStatus.TOO_LATE,
        TapStatus.INVALID_AMOUNT,
    ]
    assert [r.balance_after for r in results] == [0, 0, 0, 0, FUNDS, FUNDS, FUNDS]
    # A duplicate is recognised before anything else, whatever the body holds.
    again = one(ledger, WATER, tap(NO_CARD, 1, 0), journal_seq=2)
    assert again == Result(TapStatus.INVALID_AMOUNT, NONE, 1, 0, 0, 0, 1)


# Concessions (SPEC §4) --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("card_id", "amount", "charged"),
    [
        (ADULT, 125, 125),
        (STUDENT, 125, 63),  # 62.5 rounds half up
        (STUDENT, 124, 62),
        (STUDENT, 1, 1),  # 0.5 rounds up
        (STUDENT, 200, 100),
        (ELDERLY, 125, 0),
        (DISABLED, 200, 0),
    ],
)
def test_concession_by_card_type(ledger, card_id, amount, charged):
    assert one(ledger, BUS, tap(card_id, 1, amount)) == ok(
        charged, amount - charged, FUNDS - charged
    )


def test_configured_concessions(ledger):
    configure(ledger, concession_bp=(9_000, 3_333, 2_500, 1))
    results = apply(
        ledger,
        BUS,
        [
            tap(ADULT, 1, 105),  # 94.5 -> 95
            tap(STUDENT, 2, 100),  # 33.33 -> 33
            tap(ELDERLY, 3, 102),  # 25.5 -> 26
            tap(DISABLED, 4, 5_000),  # 0.5 -> 1
        ],
    )
    assert [r.charged for r in results] == [95, 33, 26, 1]
    assert [r.discount for r in results] == [10, 67, 76, 4_999]
    # Concessions are for rides only.
    assert one(ledger, WATER, tap(STUDENT, 1, 100)).charged == 100
    assert one(ledger, SHOP, tap(STUDENT, 1, 100)).charged == 100


# Transfer discount (SPEC §4) ---------------------------------------------------------------------


def test_transfer_discount_window(ledger):
    t0 = NOW - 3 * 3_600_000
    results = apply(
        ledger,
        BUS,
        [
            tap(ADULT, 1, 200, t0, route=1),
            tap(ADULT, 2, 200, t0 + WINDOW, route=2),  # exactly at the edge: included
            tap(ADULT, 3, 200, t0 + 2 * WINDOW + 1, route=3),  # one ms too late
            tap(ADULT, 4, 200, t0 + 2 * WINDOW + 2, route=3),  # same route: no transfer
            tap(ADULT, 5, 200, t0 + 2 * WINDOW + 3, route=4),  # a transfer again
        ],
    )
    assert [(r.charged, r.discount) for r in results] == [
        (200, 0),
        (100, 100),
        (200, 0),
        (200, 0),
        (100, 100),
    ]
    assert balance(ledger, ADULT) == FUNDS - 800


def test_transfer_needs_a_non_negative_gap(ledger):
    apply(ledger, BUS, [tap(ADULT, 1, 200, NOW, route=1)])
    assert one(ledger, BUS, tap(ADULT, 2, 200, NOW - 1, route=2)).charged == 200  # earlier
    assert one(ledger, BUS, tap(ADULT, 3, 200, NOW - 1, route=3)).charged == 100  # gap 0


def test_transfer_discount_is_floored_at_zero(ledger):
    apply(ledger, BUS, [tap(STUDENT, 1, 300, NOW - 10, route=1)])  # fare 150
    # Student fare of 150 fen list is 75; 75 - 100 floors at 0, the discount is the whole list.
    assert one(ledger, BUS, tap(STUDENT, 2, 150, NOW, route=2)) == ok(0, 150, FUNDS - 150)


def test_transfer_counts_only_ok_rides(ledger):
    apply(ledger, BUS, [tap(ADULT, 1, 200, NOW - 10, route=1)])
    # A rejected ride on route 2 is no previous ride.
    apply(ledger, BUS, [tap(ADULT, 2, MAX_TAP + 1, NOW - 5, route=2)])
    assert one(ledger, BUS, tap(ADULT, 3, 200, NOW, route=1)).charged == 200
    # POS and billing payments are not rides either.
    apply(ledger, WATER, [tap(ADULT, 1, 100, NOW, route=9)])
    assert one(ledger, BUS, tap(ADULT, 4, 200, NOW + 1, route=2)).charged == 100


def test_transfer_discount_configurable(ledger):
    configure(ledger, transfer_window_ms=60_000, transfer_discount_fen=150)
    apply(ledger, BUS, [tap(ADULT, 1, 200, NOW - 60_000, route=1)])
    assert one(ledger, BUS, tap(ADULT, 2, 200, NOW, route=2)) == ok(50, 150, FUNDS - 250)
    assert one(ledger, BUS, tap(ADULT, 3, 200, NOW + 60_001, route=3)).charged == 200


# Merchant discount (SPEC §4) -------------------------------------------------------------------


def test_merchant_rule_is_effective_dated(ledger):
    change = NOW - 3_600_000
    ledger.add_merchant_rule(MERCHANT, 0, 8_800)
    ledger.add_merchant_rule(MERCHANT, change, 9_000)
    results = apply(
        ledger,
        SHOP,
        [
            tap(RICH, 1, 1_005, change - 1),  # 884.4 -> 884
            tap(RICH, 2, 1_005, change),  # 904.5 -> 905 (half up)
            tap(RICH, 3, 1_005, NOW),
        ],
    )
    assert [(r.charged, r.discount) for r in results] == [(884, 121), (905, 100), (905, 100)]
    # The same effective_from replaces the version.
    ledger.add_merchant_rule(MERCHANT, change, 6_800)
    assert one(ledger, SHOP, tap(RICH, 4, 1_005, NOW)).charged == 683  # 683.4
    # A later version starts at its effective_from, not before.
    ledger.add_merchant_rule(MERCHANT, NOW + 1, 9_500)
    assert one(ledger, SHOP, tap(RICH, 5, 1_000, NOW)).charged == 680
    assert one(ledger, SHOP, tap(RICH, 6, 1_000, NOW + 1)).charged == 950
    assert balance(ledger, RICH) == 1_000_000 - (884 + 905 + 905 + 683 + 680 + 950)


def test_merchant_without_rule_gives_no_discount(ledger):
    assert one(ledger, SHOP, tap(ADULT, 1, 999)) == ok(999, 0, FUNDS - 999)
    ledger.add_merchant_rule(MERCHANT, NOW, 7_000)  # only from now on
    assert one(ledger, SHOP, tap(ADULT, 2, 1_000, NOW - 1)).charged == 1_000
    assert one(ledger, SHOP, tap(ADULT, 3, 1_000, NOW)).charged == 700
    ledger.add_merchant_rule(OPERATOR, 0, 5_000)  # another party's rule: not this shop's
    assert one(ledger, SHOP, tap(ADULT, 4, 1_000, NOW - 1)).charged == 1_000


# Rule 8: hot-listed cards on validators ----------------------------------------------------------


def test_lost_card_inside_liability_window_is_charged_to_card(ledger):
    blocked = NOW - 3_600_000
    ledger.set_card_state(ADULT, CardState.LOST, blocked)
    results = apply(
        ledger,
        BUS,
        [
            tap(ADULT, 1, 200, blocked - 1, route=1),
            tap(ADULT, 2, 200, blocked + LIABILITY - 1, route=1),
            tap(ADULT, 3, 200, blocked + LIABILITY, route=1),  # the window is half-open
            tap(ADULT, 4, 200, blocked + LIABILITY + 5, route=2),  # transfer, still a loss
        ],
        now=blocked + LIABILITY,
    )
    assert results == [
        ok(200, 0, FUNDS - 200),
        ok(200, 0, FUNDS - 400),
        ok(200, 0, FUNDS - 400, to=LOSS),
        ok(100, 100, FUNDS - 400, to=LOSS),
    ]
    assert balance(ledger, ADULT) == FUNDS - 400


@pytest.mark.parametrize("state", [CardState.REPLACED, CardState.CLOSED])
def test_replaced_or_closed_card_rides_are_issuer_loss(ledger, state):
    ledger.set_card_state(STUDENT, state, NOW)  # even inside the window
    assert one(ledger, BUS, tap(STUDENT, 1, 200)) == ok(100, 100, FUNDS, to=LOSS)
    assert balance(ledger, STUDENT) == FUNDS


def test_liability_window_configurable(ledger):
    configure(ledger, liability_window_ms=0)
    ledger.set_card_state(ADULT, CardState.LOST, NOW)
    assert one(ledger, BUS, tap(ADULT, 1, 200, NOW - 1)).charged_to == CARD
    assert one(ledger, BUS, tap(ADULT, 2, 200, NOW)).charged_to == LOSS
    ledger.set_card_state(ADULT, CardState.ACTIVE, 0)  # loss cancelled
    assert one(ledger, BUS, tap(ADULT, 3, 200, NOW)) == ok(200, 0, FUNDS - 400)


# Terminal sequences and gaps ---------------------------------------------------------------------


def test_terminal_status_and_gaps(ledger):
    apply(ledger, BUS, [tap(ADULT, 1, 200), tap(ADULT, 2, 0), tap(NO_CARD, 5, 200)])
    assert ledger.terminal_status(BUS) == (5, 3)
    assert ledger.terminal_seqs(BUS) == [1, 2, 5]
    apply(ledger, BUS, [tap(ADULT, 1, 200), tap(ADULT, 2, 999)], journal_seq=2)  # dup, conflict
    assert ledger.terminal_status(BUS) == (5, 3)
    apply(ledger, BUS, [tap(ADULT, 4, 200)], journal_seq=3)  # late arrival of a gap
    assert ledger.terminal_status(BUS) == (5, 4)
    assert ledger.terminal_seqs(BUS) == [1, 2, 4, 5]
    assert ledger.terminal_status(SHOP) == (0, 0)
    assert ledger.terminal_seqs(SHOP) == []
    # set_terminal on a known terminal keeps its sequence state.
    ledger.set_terminal(BUS, TerminalClass.BILLING, UTILITY)
    assert ledger.terminal_status(BUS) == (5, 4)
    assert one(ledger, BUS, tap(ADULT, 6, 300), journal_seq=4).charged == 300
    assert ledger.tap_record_count() == 5


def test_extreme_ids(ledger):
    big_card, big_seq, big_route, big_terminal = UINT64_MAX, UINT64_MAX, UINT32_MAX, UINT32_MAX
    ledger.set_terminal(big_terminal, TerminalClass.VALIDATOR, OPERATOR)
    assert ledger.issue_card(big_card, CardType.STUDENT, 0)
    ledger.adjust_balance(big_card, 1_000)
    taps = [
        tap(big_card, AHEAD, 200, NOW, big_route),  # the highest first number accepted
        tap(big_card, AHEAD - 1, 200, NOW + 1, 0),  # transfer from the max route
        tap(big_card, AHEAD, 200, NOW, big_route),
        tap(big_card, big_seq, 200, NOW, big_route),  # on record, refused, not received
        tap(big_card, big_seq, 200, NOW, big_route),
    ]
    assert apply(ledger, big_terminal, taps) == [
        ok(100, 100, 900),
        ok(0, 200, 900),
        Result(OK, CARD, 1, 100, 100, 900, 1),
        rejected(FAR, 900),
        Result(FAR, NONE, 1, 0, 0, 900, 1),
    ]
    assert ledger.terminal_status(big_terminal) == (AHEAD, 2)
    assert ledger.terminal_seqs(big_terminal) == [AHEAD - 1, AHEAD]
    assert ledger.card(big_card) == (CardState.ACTIVE, CardType.STUDENT, 900, 0, 0)
    assert ledger.card(big_card + 1) is None
    # Card id 0 is an ordinary id.
    assert ledger.issue_card(0, CardType.ADULT, 0)
    assert one(ledger, big_terminal, tap(0, 1, 200)) == ok(200, 0, -200)


def test_many_cards_and_records(ledger):
    """Enough entries to grow every table several times."""
    for card_id in range(100_000, 103_000):
        assert ledger.issue_card(card_id * 7_919, CardType.ADULT, 0)
    taps = [tap(card_id * 7_919, card_id, 200) for card_id in range(100_000, 103_000)]
    results = apply(ledger, BUS, taps, journal_seq=5)
    assert all(r == ok(200, 0, -200, 5) for r in results)
    again = apply(ledger, BUS, taps, journal_seq=6)
    assert all(r == Result(OK, CARD, 1, 200, 0, -200, 5) for r in again)
    assert ledger.card_count() == 3_005
    assert ledger.tap_record_count() == 3_000
    assert ledger.terminal_status(BUS) == (102_999, 3_000)
    assert ledger.total_balance_fen() == 4 * FUNDS + 1_000_000 - 3_000 * 200


# Batches: screening and counting ------------------------------------------------------------------


def test_first_invalid_tap(ledger):
    cls = type(ledger)
    assert cls.first_invalid_tap(b"") == -1
    assert cls.first_invalid_tap(tap(ADULT, 1, 200) + tap(ADULT, 2, 200)) == -1
    packed = tap(ADULT, 1, 200) + tap(ADULT, 2, 200) + tap(ADULT, 0, 200) + tap(ADULT, 0, 1)
    assert cls.first_invalid_tap(packed) == 2
    assert ledger.first_invalid_tap(tap(ADULT, 0, 200)) == 0
    with pytest.raises(AssertionError):
        cls.first_invalid_tap(b"\x00" * 35)
    assert apply(ledger, BUS, []) == []


def test_seq_zero_is_refused_mid_batch(ledger):
    """The caller screens with first_invalid_tap; a slipped-through seq 0 is a bug."""
    with pytest.raises(AssertionError):
        ledger.apply_batch(BUS, tap(ADULT, 1, 200) + tap(ADULT, 0, 200), NOW, 1)
    assert ledger.terminal_status(BUS) == (1, 1)  # the taps before it were applied


def test_count_statuses(ledger):
    first = apply(
        ledger,
        WATER,
        [tap(ADULT, 1, 100), tap(ADULT, 2, 0), tap(NO_CARD, 3, 100), tap(ADULT, 4, FUNDS)],
    )
    assert [r.status for r in first] == [
        OK,
        TapStatus.INVALID_AMOUNT,
        TapStatus.UNKNOWN_CARD,
        TapStatus.INSUFFICIENT_FUNDS,
    ]
    packed = ledger.apply_batch(
        WATER,
        tap(ADULT, 1, 100)  # duplicate of an OK
        + tap(NO_CARD, 3, 100)  # duplicate of an UNKNOWN_CARD: still counted as duplicate
        + tap(ADULT, 2, 5)  # conflict
        + tap(ADULT, 3, 100)  # conflict
        + tap(ADULT, 5, 100)  # OK
        + tap(ADULT, 6, -1),  # INVALID_AMOUNT
        NOW,
        2,
    )
    expected = [0] * STATUS_COUNT
    expected[0] = 2
    expected[TapStatus.ID_CONFLICT] = 2
    expected[OK] = 1
    expected[TapStatus.INVALID_AMOUNT] = 1
    assert ledger.count_statuses(packed) == expected
    assert type(ledger).count_statuses(b"") == [0] * STATUS_COUNT


# Checkpoints ----------------------------------------------------------------------------------


def _busy_day(ledger) -> list[bytes]:
    ledger.add_merchant_rule(MERCHANT, 0, 8_800)
    ledger.add_merchant_rule(MERCHANT, NOW - 1_000, 9_100)
    ledger.set_card_state(ELDERLY, CardState.LOST, NOW - 2 * LIABILITY)
    out = [
        ledger.apply_batch(
            BUS,
            tap(ADULT, 1, 200, NOW - 50, 1) + tap(ELDERLY, 2, 300) + tap(NO_CARD, 4, 200),
            NOW,
            1,
        ),
        ledger.apply_batch(SHOP, tap(RICH, 1, 1_005, NOW - 2_000) + tap(RICH, 2, 1_005), NOW, 2),
        ledger.apply_batch(WATER, tap(STUDENT, 9, FUNDS + 1) + tap(STUDENT, 10, 0), NOW, 3),
    ]
    return out


def test_snapshot_restore_round_trip(impl, ledger):
    _busy_day(ledger)
    configure(
        ledger,
        max_tap_fen=50_000,
        max_late_ms=DAY,
        max_clock_skew_ms=1_000,
        transfer_window_ms=60_000,
        transfer_discount_fen=70,
        concession_bp=(10_000, 4_000, 100, 0),
    )
    blob = ledger.snapshot()
    assert isinstance(blob, bytes)
    twin = ledger_class(impl)()
    twin.restore(blob)
    assert twin.snapshot() == blob  # deterministic bytes, the settings included
    for card_id in (ADULT, STUDENT, ELDERLY, DISABLED, RICH, NO_CARD):
        assert twin.card(card_id) == ledger.card(card_id)
    for terminal in (BUS, SHOP, WATER):
        assert twin.terminal_status(terminal) == ledger.terminal_status(terminal)
        assert twin.terminal_seqs(terminal) == ledger.terminal_seqs(terminal)
    assert twin.tap_record_count() == ledger.tap_record_count() == 7
    assert twin.card_count() == ledger.card_count()
    assert twin.total_balance_fen() == ledger.total_balance_fen()
    # Retries are still deduplicated, and new work rates identically.
    for led in (ledger, twin):
        led.adjust_balance(RICH, 5)
    retry = tap(ADULT, 1, 200, NOW - 50, 1) + tap(ADULT, 1, 201, NOW - 50, 1)
    fresh = tap(ADULT, 3, 200, NOW, 2) + tap(STUDENT, 5, 200, NOW) + tap(ELDERLY, 6, 300)
    over_the_restored_max = tap(RICH, 4, 50_001)  # refused only if max_tap_fen came along
    shop = tap(RICH, 3, 1_005) + over_the_restored_max
    for terminal, packed in ((BUS, retry), (BUS, fresh), (SHOP, shop)):
        assert twin.apply_batch(terminal, packed, NOW, 9) == ledger.apply_batch(
            terminal, packed, NOW, 9
        )
    dup = [Result(*r) for r in RESULT_STRUCT.iter_unpack(twin.apply_batch(BUS, retry, NOW, 10))]
    assert dup[0] == Result(OK, CARD, 1, 200, 0, FUNDS - 200, 1)
    assert dup[1].status == TapStatus.ID_CONFLICT


def test_restore_replaces_everything(impl, ledger):
    _busy_day(ledger)
    blob = ledger.snapshot()
    other = ledger_class(impl)()
    other.set_terminal(BUS, TerminalClass.POS, 99)
    other.issue_card(424242, CardType.ADULT, 0)
    other.restore(blob)
    assert other.card(424242) is None
    assert other.card_count() == ledger.card_count()
    assert other.terminal_status(BUS) == ledger.terminal_status(BUS)
    packed = tap(ADULT, 77, 200, NOW, 1)
    assert other.apply_batch(BUS, packed, NOW, 5) == ledger.apply_batch(BUS, packed, NOW, 5)


def test_compiled_restore_rejects_garbage():
    pytest.importorskip("clearing.core._ledger")
    led = ledger_class("c")()
    led.issue_card(1, CardType.ADULT, 0)
    blob = led.snapshot()
    for bad in (b"", b"garbage" * 40, blob[:-1], blob + b"\x00", b"X" + blob[1:]):
        with pytest.raises(ValueError):
            led.restore(bad)
    assert led.card(1) == (CardState.ACTIVE, CardType.ADULT, 0, 0, 0)  # unchanged
    led.restore(bytearray(blob))  # any buffer will do
    assert led.card_count() == 1


# Hash collisions -----------------------------------------------------------------------------

_MIX1, _MIX2 = 0xBF58476D1CE4E5B9, 0x94D049BB133111EB
_U64 = 2**64 - 1


def _unshift(y: int, shift: int) -> int:
    x = y
    for _ in range(64 // shift + 1):
        x = y ^ (x >> shift)
    return x & _U64


def _unmix(h: int) -> int:
    """Inverse of the splitmix64 finalizer the compiled core hashes with."""
    x = _unshift(h, 31)
    x = (x * pow(_MIX2, -1, 2**64)) & _U64
    x = _unshift(x, 27)
    x = (x * pow(_MIX1, -1, 2**64)) & _U64
    return _unshift(x, 30)


def _mix(x: int) -> int:
    x = ((x ^ (x >> 30)) * _MIX1) & _U64
    x = ((x ^ (x >> 27)) * _MIX2) & _U64
    return x ^ (x >> 31)


def test_colliding_hashes(ledger):
    """Ids whose hashes share all 32 index bits: one long run, past the table's tail."""
    assert all(_mix(_unmix(h)) == h for h in (0, 1, _U64, 0xDEADBEEF << 32))
    hot = 0x5EED_FFFF << 32  # the home is the last slot, whatever the capacity
    cards = [_unmix(hot | k) for k in range(400)]  # identical upper halves
    for card_id in cards:
        assert ledger.issue_card(card_id, CardType.ADULT, 0)
        ledger.adjust_balance(card_id, 1_000)
    assert all(ledger.card(c) == (CardState.ACTIVE, CardType.ADULT, 1_000, 0, 0) for c in cards)
    assert ledger.card(_unmix(hot | 400)) is None  # a colliding id that was never issued
    # Taps whose (terminal, seq) keys collide the same way on the compiled core. Such
    # numbers are far ahead of the terminal's: refused, but on record all the same.
    golden = 0x9E3779B97F4A7C15
    ledger.set_terminal(7, TerminalClass.BILLING, UTILITY)
    term = 3  # the compiled core keys taps by terminal slot: BUS, SHOP, WATER, then this one
    seqs = [_unmix(hot | k) ^ ((term * golden) & _U64) for k in range(400)]
    seqs = [s for s in seqs if s > AHEAD]  # seq 0 is malformed
    taps = [tap(c, s, 10) for c, s in zip(cards, seqs, strict=False)]
    assert len(taps) > 390
    assert apply(ledger, 7, taps) == [rejected(FAR, 1_000)] * len(taps)
    assert apply(ledger, 7, taps, journal_seq=2) == [Result(FAR, NONE, 1, 0, 0, 1_000, 1)] * len(
        taps
    )
    assert ledger.tap_record_count() == len(taps)
    assert ledger.terminal_seqs(7) == [] and ledger.terminal_status(7) == (0, 0)
    twin = ledger_class(ledger.implementation)()
    twin.restore(ledger.snapshot())
    assert apply(twin, 7, taps, journal_seq=3) == [Result(FAR, NONE, 1, 0, 0, 1_000, 1)] * len(taps)


# Card history and the low-balance watch (used by the engine for disputes and the deny list) -------


def test_low_balance_crossings(ledger):
    ledger.set_min_boarding_balance(0)
    ledger.adjust_balance(ADULT, -FUNDS + 100)  # 100
    ledger.set_card_state(ELDERLY, CardState.LOST, NOW - 2 * LIABILITY)  # its rides: issuer loss
    ledger.adjust_balance(ELDERLY, -FUNDS - 1)  # already below
    apply(
        ledger,
        BUS,
        [
            tap(STUDENT, 1, 200),  # 10,000 -> 9,900: stays above
            tap(ADULT, 2, 200),  # 100 -> -100: crosses
            tap(ADULT, 3, 200),  # -100 -> -300: was already below
            tap(ELDERLY, 4, 200),  # issuer loss: the balance does not move
            tap(DISABLED, 5, 0),  # rejected
        ],
    )
    assert ledger.take_low_balance_crossings() == [ADULT]
    assert ledger.take_low_balance_crossings() == []
    ledger.set_min_boarding_balance(500)
    apply(ledger, WATER, [tap(STUDENT, 1, 9_400), tap(RICH, 2, 100)])  # 9,900 -> 500: not below
    assert ledger.take_low_balance_crossings() == []
    apply(ledger, WATER, [tap(STUDENT, 3, 1), tap(DISABLED, 4, 9_600)], journal_seq=2)
    assert ledger.take_low_balance_crossings() == [STUDENT, DISABLED]
    twin = ledger_class(ledger.implementation)()
    twin.restore(ledger.snapshot())  # the minimum is part of the state
    twin.adjust_balance(RICH, -999_000)  # 900
    apply(twin, WATER, [tap(RICH, 5, 401)], journal_seq=3)
    assert twin.take_low_balance_crossings() == [RICH]


def test_card_history(ledger):
    ledger.add_merchant_rule(MERCHANT, 0, 9_000)
    apply(ledger, WATER, [tap(NO_CARD, 7, 100)], journal_seq=1)  # before the card exists
    apply(ledger, BUS, [tap(ADULT, 1, 200, NOW - 9, 4), tap(STUDENT, 2, 200)], journal_seq=2)
    apply(ledger, WATER, [tap(ADULT, 1, FUNDS)], journal_seq=3)  # declined: still history
    apply(ledger, SHOP, [tap(ADULT, 1, 1_005, NOW - 5), tap(ADULT, 2, 0)], journal_seq=4)
    apply(ledger, BUS, [tap(ADULT, 1, 200, NOW - 9, 4), tap(ADULT, 2, 300)], journal_seq=5)
    assert ledger.card_taps(ADULT, 10) == [
        (4, SHOP, 2, 0, NOW, TapStatus.INVALID_AMOUNT, NONE, 0, 8_895),
        (4, SHOP, 1, 1_005, NOW - 5, OK, CARD, 905, 8_895),
        (3, WATER, 1, FUNDS, NOW, TapStatus.INSUFFICIENT_FUNDS, NONE, 0, 9_800),
        (2, BUS, 1, 200, NOW - 9, OK, CARD, 200, 9_800),
    ]  # the duplicate and the conflict of journal_seq 5 add nothing
    assert ledger.card_taps(ADULT, 2) == ledger.card_taps(ADULT, 10)[:2]
    assert ledger.card_taps(ADULT, 0) == []
    assert ledger.card_taps(STUDENT, 5) == [(2, BUS, 2, 200, NOW, OK, CARD, 100, FUNDS - 100)]
    assert ledger.card_taps(RICH, 5) == []
    assert ledger.issue_card(NO_CARD, CardType.ADULT, 0)
    assert ledger.card_taps(NO_CARD, 5) == []  # its UNKNOWN_CARD tap belongs to no card
    twin = ledger_class(ledger.implementation)()
    twin.restore(ledger.snapshot())
    assert twin.card_taps(ADULT, 10) == ledger.card_taps(ADULT, 10)
    apply(twin, BUS, [tap(ADULT, 3, 200, NOW, 4)], journal_seq=6)  # same route: no transfer
    assert twin.card_taps(ADULT, 1) == [(6, BUS, 3, 200, NOW, OK, CARD, 200, 8_695)]
