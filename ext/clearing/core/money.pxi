# Money and time: checked int64 arithmetic, SPEC §2 rounding, the late/future windows.

# Money and time ------------------------------------------------------------------

cdef inline int money_overflow() except -1:
    raise OverflowError("int64 overflow in money arithmetic")


@cython.cdivision(True)  # the dividend is >= 0 here: C and Python division agree
cdef inline int64_t half_up(int64_t amount_fen, int64_t rate_bp) except -1:
    """SPEC §2: ``(x * bp + 5000) // 10000`` for x >= 0, checked like the twin."""
    cdef int64_t product
    if amount_fen < 0 or rate_bp < 0:
        raise AssertionError("half_up needs a non-negative amount and rate")
    if cc_mul(amount_fen, rate_bp, &product) or cc_add(product, HALF_BP, &product):
        money_overflow()
    return product // BP_SCALE


cdef inline bint too_late(int64_t occurred, int64_t now_ms, int64_t max_late_ms) noexcept nogil:
    """Exact ``occurred < now_ms - max_late_ms`` for any int64 operands."""
    cdef int64_t bound
    if cc_sub(now_ms, max_late_ms, &bound):
        return max_late_ms < 0          # bound above INT64_MAX: always; below INT64_MIN: never
    return occurred < bound


cdef inline bint in_future(int64_t occurred, int64_t now_ms, int64_t skew_ms) noexcept nogil:
    """Exact ``occurred > now_ms + skew_ms`` for any int64 operands."""
    cdef int64_t bound
    if cc_add(now_ms, skew_ms, &bound):
        return skew_ms < 0              # bound below INT64_MIN: always; above INT64_MAX: never
    return occurred > bound


@cython.overflowcheck(False)  # lo + hi < 2 * n
cdef inline int64_t rule_bp(const rule_t *rules, Py_ssize_t n, int64_t occurred) noexcept nogil:
    """The rule in force at ``occurred``: the latest with effective_from_ms <= occurred."""
    cdef Py_ssize_t lo = 0, hi = n, mid
    while lo < hi:
        mid = (lo + hi) >> 1
        if rules[mid].effective_from_ms <= occurred:
            lo = mid + 1
        else:
            hi = mid
    return rules[lo - 1].discount_bp if lo > 0 else NO_RULE_BP


cdef inline int as_u64(object value, uint64_t *out) except -1:
    """1 with ``out`` set when ``value`` is a u64, else 0 (then it names no record)."""
    try:
        out[0] = value
    except OverflowError:
        return 0
    return 1
