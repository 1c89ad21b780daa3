"""The batch summary: hand-made batches against both twins, then a differential test.

``clearing.core.summary_py.summarise`` is the oracle; the compiled ``clearing.core._summary``
must return the same vector for any bytes at all, or raise the same exception
type (``OverflowError`` when a total leaves int64, ``ValueError`` on mismatched
lengths).
"""

from __future__ import annotations

import importlib.util

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clearing.codes import ChargedTo, TapStatus
from clearing.core import layouts as layout
from clearing.core.summary import summariser
from clearing.limits import (
    INT64_MAX,
    INT64_MIN,
    MS_PER_DAY,
    MS_PER_HOUR,
    RESULT_BYTES,
    RESULT_STRUCT,
    TAP_BYTES,
    TAP_STRUCT,
    UINT64_MAX,
)

HAVE_C = importlib.util.find_spec("clearing.core._summary") is not None
needs_c = pytest.mark.skipif(not HAVE_C, reason="clearing.core._summary is not built")

SEQ = 1_000  # the journal entry the batches were applied as
WINDOW = 20_000 * MS_PER_DAY  # a business day starting at 00:00 UTC
NOON = WINDOW + 12 * MS_PER_HOUR
OK, CARD, LOSS, NONE = (
    TapStatus.OK,
    ChargedTo.CARD,
    ChargedTo.ISSUER_LOSS,
    ChargedTo.CHARGED_TO_NONE,
)


@pytest.fixture(params=["python", pytest.param("c", marks=needs_c)])
def summarise(request):
    return summariser(request.param)


def tap(list_fen: int = 200, occurred: int = NOON, card: int = 7, seq: int = 1) -> bytes:
    return TAP_STRUCT.pack(card, seq, list_fen, occurred, 3)


def result(
    status: int = OK,
    charged_to: int = CARD,
    duplicate: int = 0,
    charged: int = 180,
    discount: int = 20,
    seq: int = SEQ,
) -> bytes:
    return RESULT_STRUCT.pack(status, charged_to, duplicate, charged, discount, 5_000, seq)


def rejected(status: int, **kw) -> bytes:
    return result(status, NONE, 0, 0, 0, **kw)


def run(summarise, pairs, offset_ms: int = 0) -> list[int]:
    v = summarise(b"".join(t for t, _ in pairs), b"".join(r for _, r in pairs), SEQ, WINDOW,
                  offset_ms)  # fmt: skip
    assert len(v) == layout.SUMMARY_LEN
    assert all(type(x) is int for x in v)
    return v


# Hand-made batches -----------------------------------------------------------------------


def test_ok_card_and_issuer_loss(summarise):
    v = run(summarise, [(tap(200), result()), (tap(500), result(charged_to=LOSS, charged=500,
                                                                   discount=0))])  # fmt: skip
    assert v[layout.OK_COUNT] == 2
    assert v[layout.OK_LIST] == 700
    assert v[layout.OK_DISCOUNT] == 20
    assert v[layout.OK_CHARGED] == 680
    assert v[layout.CARD_CHARGED] == 180
    assert (v[layout.LOSS_COUNT], v[layout.LOSS_CHARGED]) == (1, 500)
    assert v[layout.HOURS + 12] == 2
    assert v[layout.LATE_COUNT] == v[layout.BAD] == v[layout.DUP_COUNT] == 0
    assert sum(v[layout.REJECTED : layout.HOURS]) == 0


def test_duplicates(summarise):
    v = run(summarise, [(tap(), result(duplicate=1, seq=SEQ - 1)),
                        (tap(), result(duplicate=1, seq=SEQ)),
                        (tap(), result(TapStatus.UNKNOWN_CARD, NONE, 1, 0, 0, seq=3))])  # fmt: skip
    assert v[layout.DUP_COUNT] == 3
    assert v[layout.OK_COUNT] == v[layout.BAD] == 0
    assert sum(v[layout.HOURS : layout.LATE_DAYS]) == 0


def test_rejections(summarise):
    v = run(summarise, [(tap(300), rejected(TapStatus.INSUFFICIENT_FUNDS)),
                        (tap(INT64_MIN), rejected(TapStatus.ID_CONFLICT)),
                        (tap(-5), rejected(TapStatus.INVALID_AMOUNT))])  # fmt: skip
    assert v[layout.REJECTED + TapStatus.INSUFFICIENT_FUNDS] == 1
    assert v[layout.REJECTED_LIST + TapStatus.INSUFFICIENT_FUNDS] == 300
    assert v[layout.REJECTED + TapStatus.ID_CONFLICT] == 1
    assert v[layout.REJECTED + TapStatus.INVALID_AMOUNT] == 1
    # Amounts that never passed the amount check are not summed.
    assert v[layout.REJECTED_LIST + TapStatus.ID_CONFLICT] == 0
    assert v[layout.REJECTED_LIST + TapStatus.INVALID_AMOUNT] == 0
    assert v[layout.OK_COUNT] == v[layout.BAD] == 0


@pytest.mark.parametrize(
    ("occurred", "days_before"),
    [(WINDOW - 1, 1), (WINDOW - MS_PER_DAY, 1), (WINDOW - MS_PER_DAY - 1, 2),
     (WINDOW - 2 * MS_PER_DAY + 1, 2), (WINDOW - 2 * MS_PER_DAY, 2),
     (WINDOW - 2 * MS_PER_DAY - 1, 3), (WINDOW - 7 * MS_PER_DAY - 1, 8),
     (WINDOW - 8 * MS_PER_DAY, 8), (WINDOW - 8 * MS_PER_DAY - 1, 8), (WINDOW - 100 * MS_PER_DAY, 8),
     (INT64_MIN, 8)],
)  # fmt: skip
def test_late_days(summarise, occurred, days_before):
    v = run(summarise, [(tap(occurred=occurred), result())])
    assert (v[layout.LATE_COUNT], v[layout.LATE_CHARGED]) == (1, 180)
    bins = v[layout.LATE_DAYS : layout.SUMMARY_LEN]
    assert bins == [int(d == days_before) for d in range(1, 9)]


def test_on_time_at_window_start(summarise):
    v = run(summarise, [(tap(occurred=WINDOW), result())])
    assert v[layout.LATE_COUNT] == 0
    assert sum(v[layout.LATE_DAYS :]) == 0


@pytest.mark.parametrize(
    ("occurred", "offset_ms", "hour"),
    [(NOON, 8 * MS_PER_HOUR, 20), (WINDOW + 20 * MS_PER_HOUR, 8 * MS_PER_HOUR, 4),
     (WINDOW, -1, 23), (-1, 0, 23), (0, -25 * MS_PER_HOUR, 23),
     (INT64_MAX, 0, INT64_MAX // MS_PER_HOUR % 24),
     (INT64_MAX, INT64_MAX, (2 * INT64_MAX) // MS_PER_HOUR % 24),
     (INT64_MIN, INT64_MIN, (2 * INT64_MIN) // MS_PER_HOUR % 24)],
)  # fmt: skip
def test_local_hour(summarise, occurred, offset_ms, hour):
    v = run(summarise, [(tap(occurred=occurred), result())], offset_ms)
    hours = v[layout.HOURS : layout.LATE_DAYS]
    assert hours == [int(h == hour) for h in range(24)]


@pytest.mark.parametrize(
    "pair",
    [
        pytest.param((tap(), result(seq=SEQ - 1)), id="wrong-seq"),
        pytest.param((tap(), result(seq=SEQ + 1, duplicate=1)), id="dup-from-later-entry"),
        pytest.param((tap(), result(status=0)), id="status-0"),
        pytest.param((tap(), result(status=10)), id="status-10"),
        pytest.param((tap(), result(status=255, duplicate=1)), id="status-255-dup"),
        pytest.param((tap(), result(duplicate=2)), id="duplicate-2"),
        pytest.param((tap(), result(TapStatus.TOO_LATE, NONE, 0, 1, 0)), id="rejected-charged"),
        pytest.param((tap(), result(TapStatus.TOO_LATE, NONE, 0, 0, 1)), id="rejected-disc"),
        pytest.param((tap(), result(TapStatus.TOO_LATE, CARD, 0, 0, 0)), id="rejected-card"),
        pytest.param((tap(200), result(charged=180, discount=21)), id="discount-mismatch"),
        pytest.param((tap(200), result(charged=220, discount=-20)), id="negative-discount"),
        pytest.param((tap(-200), result(charged=-200, discount=0)), id="negative-charged"),
        pytest.param((tap(), result(charged_to=NONE)), id="ok-charged-to-none"),
        pytest.param((tap(), result(charged_to=3)), id="ok-charged-to-3"),
        pytest.param(
            (tap(-2), result(charged=INT64_MAX, discount=INT64_MAX)), id="sum-leaves-int64"
        ),
    ],
)
def test_bad(summarise, pair):
    v = run(summarise, [pair, (tap(), result())])
    assert v[layout.BAD] == 1
    assert v[layout.OK_COUNT] == 1  # the good tap beside it still counts
    assert v[layout.DUP_COUNT] == sum(v[layout.REJECTED : layout.HOURS]) == 0


def test_totals_overflow(summarise):
    big = (tap(INT64_MAX), result(charged=INT64_MAX, discount=0))
    run(summarise, [big])
    with pytest.raises(OverflowError):
        run(summarise, [big, (tap(1), result(charged=1, discount=0))])


def test_totals_may_leave_int64_and_come_back(summarise):
    late = TapStatus.TOO_LATE
    pairs = [(tap(INT64_MAX), rejected(late)), (tap(INT64_MAX), rejected(late)),
             (tap(INT64_MIN), rejected(late)), (tap(INT64_MIN), rejected(late))]  # fmt: skip
    v = run(summarise, pairs)
    assert v[layout.REJECTED_LIST + late] == -2
    with pytest.raises(OverflowError):
        run(summarise, pairs[:2])


@pytest.mark.parametrize(
    ("taps", "results"),
    [(TAP_BYTES, 0), (0, RESULT_BYTES), (2 * TAP_BYTES, RESULT_BYTES), (TAP_BYTES - 1, 0),
     (TAP_BYTES + 1, RESULT_BYTES), (TAP_BYTES, RESULT_BYTES + 1), (TAP_BYTES, RESULT_BYTES - 1)],
)  # fmt: skip
def test_mismatched_lengths(summarise, taps, results):
    with pytest.raises(ValueError, match="same number of records"):
        summarise(bytes(taps), bytes(results), SEQ, WINDOW, 0)


def test_empty_and_layout(summarise):
    assert summarise(b"", b"", SEQ, WINDOW, 0) == [0] * layout.SUMMARY_LEN
    assert summarise(bytearray(), memoryview(b""), SEQ, WINDOW, 0) == [0] * layout.SUMMARY_LEN


@pytest.mark.parametrize(
    ("window", "occurred", "days_before"),
    [(INT64_MAX + 1, INT64_MAX, 1), (INT64_MAX + MS_PER_DAY + 1, INT64_MAX, 2),
     (2**64, INT64_MAX, 8), (2**100, INT64_MIN, 8), (INT64_MIN - 1, INT64_MIN, 0),
     (INT64_MIN, INT64_MIN, 0), (INT64_MAX, INT64_MIN, 8)],
)  # fmt: skip
def test_window_beyond_int64(summarise, window, occurred, days_before):
    v = summarise(tap(occurred=occurred), result(), SEQ, window, 0)
    assert v[layout.LATE_COUNT] == int(days_before > 0)
    assert v[layout.LATE_DAYS :] == [int(d == days_before) for d in range(1, 9)]


@pytest.mark.parametrize(
    ("journal_seq", "ok_seq", "dup_seq", "ok", "dup"),
    [(-1, 0, 0, 0, 0), (0, 0, 0, 1, 1), (UINT64_MAX, UINT64_MAX, UINT64_MAX, 1, 1),
     (UINT64_MAX + 1, UINT64_MAX, UINT64_MAX, 0, 1), (2**100, 0, 0, 0, 1)],
)  # fmt: skip
def test_journal_seq_beyond_uint64(summarise, journal_seq, ok_seq, dup_seq, ok, dup):
    taps = tap() * 2
    results = result(seq=ok_seq) + result(duplicate=1, seq=dup_seq)
    v = summarise(taps, results, journal_seq, WINDOW, 0)
    assert (v[layout.OK_COUNT], v[layout.DUP_COUNT], v[layout.BAD]) == (ok, dup, 2 - ok - dup)


@pytest.mark.parametrize("offset_ms", [2**100 + 8 * MS_PER_HOUR, -(2**70) - 1, INT64_MIN - 1])
def test_offset_beyond_int64(summarise, offset_ms):
    v = summarise(tap(occurred=NOON), result(), SEQ, WINDOW, offset_ms)
    hour = (NOON + offset_ms) // MS_PER_HOUR % 24
    assert v[layout.HOURS : layout.LATE_DAYS] == [int(h == hour) for h in range(24)]


@needs_c
def test_module_attribute():
    from clearing.core import _summary

    assert _summary.SUMMARY_LEN == layout.SUMMARY_LEN == 63


# Differential ----------------------------------------------------------------------------

INT64_EDGES = [INT64_MIN, INT64_MIN + 1, -1, 0, 1, INT64_MAX - 3 * MS_PER_DAY, INT64_MAX]
int64s = st.one_of(
    st.sampled_from(INT64_EDGES),
    st.integers(-1_000, 100_000),
    st.integers(INT64_MIN, INT64_MAX),
)
times = st.one_of(
    st.sampled_from(INT64_EDGES),
    st.builds(  # the edges of the late-day bins
        lambda days, ms: WINDOW - days * MS_PER_DAY + ms,
        st.integers(0, 10),
        st.sampled_from([-1, 0, 1]),
    ),
    st.integers(WINDOW - 10 * MS_PER_DAY, WINDOW + 2 * MS_PER_DAY),
    st.integers(INT64_MIN, INT64_MAX),
)
seqs = st.one_of(st.sampled_from([0, 1, SEQ - 1, SEQ, SEQ + 1, UINT64_MAX]),
                 st.integers(0, UINT64_MAX))  # fmt: skip


@st.composite
def pairs(draw) -> tuple[bytes, bytes]:
    """One tap and its result, of a kind drawn first so that every branch comes up often."""
    kind = draw(st.sampled_from(["ok", "ok", "rejected", "duplicate", "fuzzed", "noise"]))
    if kind == "noise":
        return draw(st.binary(min_size=TAP_BYTES, max_size=TAP_BYTES)), draw(
            st.binary(min_size=RESULT_BYTES, max_size=RESULT_BYTES)
        )
    status, charged_to, duplicate, seq = OK, draw(st.sampled_from([CARD, LOSS])), 0, SEQ
    charged = draw(st.one_of(st.integers(0, 10_000), st.integers(0, INT64_MAX)))
    discount = draw(st.one_of(st.just(0), st.integers(0, INT64_MAX - charged)))
    list_fen = charged + discount
    if kind == "rejected":
        status, charged_to, charged, discount = draw(st.integers(2, 9)), NONE, 0, 0
        list_fen = draw(int64s)
    elif kind == "duplicate":
        status, duplicate, seq = draw(st.integers(1, 9)), 1, draw(seqs)
    elif kind == "fuzzed":  # each field from a wide range: mostly BAD
        status, charged_to = draw(st.integers(0, 10)), draw(st.integers(0, 3))
        duplicate = draw(st.sampled_from([0, 0, 1, 2, 255]))
        charged, discount, list_fen = draw(int64s), draw(int64s), draw(int64s)
        seq = draw(st.one_of(st.just(SEQ), seqs))
    # Card, terminal seq, route and balance do not enter the summary.
    return TAP_STRUCT.pack(7, 1, list_fen, draw(times), 3), RESULT_STRUCT.pack(
        status, charged_to, duplicate, charged, discount, 5_000, seq
    )


def outcome(fn, *args):
    try:
        return fn(*args)
    except Exception as exc:  # the type is what must agree
        return type(exc)


@needs_c
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    batch=st.lists(pairs(), max_size=6),
    trim=st.sampled_from([(0, 0)] * 8 + [(1, 0), (0, 1), (0, RESULT_BYTES)]),
    journal_seq=st.one_of(
        st.just(SEQ), seqs, st.sampled_from([-1, UINT64_MAX, UINT64_MAX + 1, 2**100])
    ),
    window=st.one_of(
        st.just(WINDOW),
        times,
        st.sampled_from([INT64_MIN - 1, INT64_MAX + 1, INT64_MAX + 3 * MS_PER_DAY, 2**64, 2**100]),
    ),
    offset=st.one_of(
        st.integers(-14 * MS_PER_HOUR, 14 * MS_PER_HOUR),
        int64s,
        st.sampled_from([2**64, -(2**100)]),
    ),
)
def test_c_matches_python(batch, trim, journal_seq, window, offset):
    taps = b"".join(t for t, _ in batch)
    results = b"".join(r for _, r in batch)
    taps, results = taps[: len(taps) - trim[0]], results[: len(results) - trim[1]]
    args = (taps, results, journal_seq, window, offset)
    assert outcome(summariser("c"), *args) == outcome(summariser("python"), *args)


@needs_c
@settings(max_examples=30, deadline=None)
@given(
    batch=st.lists(pairs(), min_size=2, max_size=6),
    copies=st.integers(1, 4),
)
def test_c_matches_python_on_repeated_huge_amounts(batch, copies):
    """Repeats make totals leave int64 (and sometimes come back)."""
    taps = b"".join(t for t, _ in batch) * copies
    results = b"".join(r for _, r in batch) * copies
    for journal_seq in {RESULT_STRUCT.unpack_from(results, 0)[-1], SEQ}:
        args = (taps, results, journal_seq, WINDOW, 0)
        assert outcome(summariser("c"), *args) == outcome(summariser("python"), *args)
