# cython: language_level=3
"""Compiled batch summary: the C twin of ``clearing.core.summary_py.summarise``.

The reference twin is the behaviour oracle: for every input this module returns
the same vector of ``SUMMARY_LEN`` ints, or raises the same exception type.
Only the machinery differs:

* The 36-byte taps and 40-byte results are parsed big-endian straight from the
  callers' buffers, with the GIL released; no Python object is made per tap.
* The twin sums unbounded Python ints and checks the totals fit int64 only at
  the end, so a total may leave int64 and come back (rejected list amounts can
  be negative). Here each total is an int64 that wraps plus a carry counter of
  wraps (exact total = value + carry * 2**64); the total fits int64 exactly
  when its carry is 0, else ``OverflowError`` as in the twin.
* Times are exact for any int64 tap: the hour uses residues mod one day (the
  twin's ``(occurred + offset) // hour % 24`` never needs the sum itself), and
  the days before the window use an unsigned difference. The three scalar
  arguments may be any Python ints, as in the twin; they are folded into C
  values before the loop (see ``summarise``).
"""

cimport cython
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from libc.stdint cimport int64_t, uint8_t, uint64_t
from libc.string cimport memset

from operator import index as _index

include "clearing_core.pxi"
include "wire.pxi"


cdef enum:
    LATE_DAY_BINS = 8               # clearing/limits.py
# Layout of the summary vector: as in clearing/core/layouts.py, which explains each.
# Literals (with the twin's formulas) because Cython cannot compile enum arithmetic
# under the build's overflowcheck directive; tests/test_summariser.py checks the layout.
cdef enum:
    OK_COUNT = 0
    OK_LIST = 1
    OK_DISCOUNT = 2
    OK_CHARGED = 3
    CARD_CHARGED = 4
    LOSS_COUNT = 5
    LOSS_CHARGED = 6
    LATE_COUNT = 7
    LATE_CHARGED = 8
    DUP_COUNT = 9
    BAD = 10
    REJECTED = 11
    REJECTED_LIST = 21              # REJECTED + STATUS_COUNT
    HOURS = 31                      # REJECTED_LIST + STATUS_COUNT
    LATE_DAYS = 55                  # HOURS + 24
    SUMMARY_LEN = 63                # LATE_DAYS + LATE_DAY_BINS

cdef int64_t MS_PER_HOUR = 3600000
cdef int64_t MS_PER_DAY = 86400000
cdef int64_t INT64_MAX = 0x7FFFFFFFFFFFFFFF
cdef int64_t INT64_MIN = -INT64_MAX - 1
cdef uint64_t UINT64_MAX = 0xFFFFFFFFFFFFFFFF

# A cdef enum's name cannot also be assigned at module level; the dict can.
globals()["SUMMARY_LEN"] = <int>SUMMARY_LEN


ctypedef struct args_t:             # the scalar arguments, folded for the loop
    uint64_t seq                    # journal_seq, when it fits uint64 (seq_fits)
    bint seq_fits
    bint seq_above                  # journal_seq > UINT64_MAX: every seq is below it
    int64_t window                  # window_start_ms clamped to int64 ...
    uint64_t window_extra           # ... plus this (> 0 only above INT64_MAX)
    int64_t offset_mod_day          # utc_offset_ms % MS_PER_DAY


@cython.overflowcheck(False)  # offsets < buffer lengths; totals are exact by carry
@cython.cdivision(True)  # every / and % below has operands >= 0, or is cc_floor_mod
cdef void tally(const unsigned char *taps, const unsigned char *results, Py_ssize_t count,
                const args_t *a, int64_t *v, int64_t *carry) noexcept nogil:
    """The twin's loop (``summarise`` and ``_count_ok``), branch for branch."""
    cdef Py_ssize_t i
    cdef const unsigned char *t
    cdef const unsigned char *r
    cdef uint8_t status, charged_to, duplicate
    cdef int64_t list_fen, occurred, charged, discount, hour
    cdef uint64_t seq, gap, days
    for i in range(count):
        t = taps + i * TAP_BYTES
        r = results + i * RESULT_BYTES
        list_fen = <int64_t>cc_load_u64(t + 16)
        occurred = <int64_t>cc_load_u64(t + 24)
        status = r[0]
        charged_to = r[1]
        duplicate = r[2]
        charged = <int64_t>cc_load_u64(r + 8)
        discount = <int64_t>cc_load_u64(r + 16)
        seq = cc_load_u64(r + 32)
        if status < OK or status > SEQUENCE_TOO_FAR_AHEAD:
            cc_acc(v, carry, BAD, 1)
        elif duplicate:
            # The original answer again: applied by an entry no later than this one.
            if duplicate == 1 and (a.seq_above or (a.seq_fits and seq <= a.seq)):
                cc_acc(v, carry, DUP_COUNT, 1)
            else:
                cc_acc(v, carry, BAD, 1)
        elif not (a.seq_fits and seq == a.seq):
            cc_acc(v, carry, BAD, 1)
        elif status == OK:
            if (charged < 0 or discount < 0 or not cc_sum_is(list_fen, charged, discount)
                    or (charged_to != CHARGED_TO_CARD and charged_to != CHARGED_TO_ISSUER_LOSS)):
                cc_acc(v, carry, BAD, 1)
                continue
            # From here list_fen, charged, discount >= 0.
            cc_acc(v, carry, OK_COUNT, 1)
            cc_acc(v, carry, OK_LIST, list_fen)
            cc_acc(v, carry, OK_DISCOUNT, discount)
            cc_acc(v, carry, OK_CHARGED, charged)
            if charged_to == CHARGED_TO_CARD:
                cc_acc(v, carry, CARD_CHARGED, charged)
            else:
                cc_acc(v, carry, LOSS_COUNT, 1)
                cc_acc(v, carry, LOSS_CHARGED, charged)
            # (o + off) // H % 24 == ((o + off) mod D) // H, as D = 24 H; both residues
            # are in [0, D), so their sum cannot overflow.
            hour = (cc_floor_mod(occurred, MS_PER_DAY) + a.offset_mod_day) % MS_PER_DAY
            cc_acc(v, carry, HOURS + <int>(hour // MS_PER_HOUR), 1)
            if occurred < a.window or a.window_extra:
                cc_acc(v, carry, LATE_COUNT, 1)
                cc_acc(v, carry, LATE_CHARGED, charged)
                # gap = window_start - occurred >= 1: exact in uint64 from int64
                # operands; saturating only where the last bin is certain anyway.
                gap = cc_sat_add_u64(<uint64_t>a.window - <uint64_t>occurred, a.window_extra)
                days = (gap - 1) // <uint64_t>MS_PER_DAY + 1
                cc_acc(v, carry, LATE_DAYS + <int>(days if days < LATE_DAY_BINS
                                                   else LATE_DAY_BINS) - 1, 1)
        elif charged != 0 or discount != 0 or charged_to != CHARGED_TO_NONE:
            cc_acc(v, carry, BAD, 1)
        else:
            cc_acc(v, carry, REJECTED + status, 1)
            if TOO_LATE <= status <= INSUFFICIENT_FUNDS:  # the amount was checked
                cc_acc(v, carry, REJECTED_LIST + status, list_fen)


def summarise(packed_taps, packed_results, journal_seq, window_start_ms, utc_offset_ms):
    """The summary vector of one batch journaled as entry ``journal_seq``.

    ``window_start_ms`` is the business day's first instant: OK taps that
    occurred before it are late. ``utc_offset_ms`` places occurrences in
    local hours. Same contract as ``clearing.core.summary_py.summarise``.
    """
    cdef Py_buffer taps_view, results_view
    cdef Py_ssize_t count, k
    cdef args_t a
    cdef int64_t v[SUMMARY_LEN]
    cdef int64_t carry[SUMMARY_LEN]
    memset(v, 0, sizeof(v))
    memset(carry, 0, sizeof(carry))
    memset(&a, 0, sizeof(a))
    PyObject_GetBuffer(packed_taps, &taps_view, PyBUF_SIMPLE)
    try:
        PyObject_GetBuffer(packed_results, &results_view, PyBUF_SIMPLE)
        try:
            count = taps_view.len // TAP_BYTES
            if taps_view.len != count * TAP_BYTES or results_view.len != count * RESULT_BYTES:
                raise ValueError("packed taps and results must hold the same number of records")
            # Fold the arguments (any Python ints) into what the comparisons need.
            journal_seq = _index(journal_seq)
            a.seq_fits = 0 <= journal_seq <= UINT64_MAX
            a.seq_above = journal_seq > UINT64_MAX
            if a.seq_fits:
                a.seq = journal_seq
            window_start_ms = _index(window_start_ms)
            a.window = max(INT64_MIN, min(window_start_ms, INT64_MAX))
            # Beyond 8 days past the latest tap, every late tap is in the last bin.
            a.window_extra = max(0, min(window_start_ms - INT64_MAX, LATE_DAY_BINS * MS_PER_DAY))
            a.offset_mod_day = _index(utc_offset_ms) % MS_PER_DAY
            with nogil:
                tally(<const unsigned char *>taps_view.buf,
                      <const unsigned char *>results_view.buf, count, &a, v, carry)
        finally:
            PyBuffer_Release(&results_view)
    finally:
        PyBuffer_Release(&taps_view)
    for k in range(SUMMARY_LEN):
        if carry[k] != 0:
            raise OverflowError("a batch total left int64")
    return [v[k] for k in range(SUMMARY_LEN)]
