# cython: language_level=3
"""Compiled ledger core: the C twin of ``clearing.core.ledger_py.Ledger``.

The reference twin is the behaviour oracle (SPEC §4–§5): this module must agree
with it result for result, including which exception a bad call raises. Only
the machinery differs:

* ``apply_batch`` parses the 36-byte big-endian taps straight from the caller's
  buffer and writes the 40-byte results into one preallocated ``bytes``; no
  Python object is created per tap.
* Cards and deduplication records live in dense C arrays behind
  open-addressing hash indexes (``index_t`` in ``_ledger.pxd``: splitmix64,
  linear probing, load <= 1/2, doubled in place without reading records).
* Money never wraps: amounts, balances and deadline sums go through the
  ``__builtin_*_overflow`` checks below and raise ``OverflowError`` where the
  twin's ``_checked`` does. The late/future window comparisons are exact for
  any int64 operands (the twin compares unbounded Python ints).
* ``snapshot`` is raw memory (header + arrays); it round-trips only within
  this implementation and byte order. Unlike the twin's pickle it also holds
  the ``configure`` settings.
* A card's tap records are chained (newest first) for ``card_taps``; charges
  that take a card below the boarding minimum are queued for
  ``take_low_balance_crossings``. Both mirror the twin (the engine uses them),
  though ``clearing/core/_ledger.pyi`` does not list them yet.

Limits of this implementation (far beyond a city): 2**31 - 1 cards, 2**31 - 1
tap records, 2**24 terminals. A ``MemoryError`` while growing an index leaves
the ledger unusable: restore it from a snapshot.
"""

cimport cython
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from libc.stdint cimport int32_t, int64_t, uint8_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free, malloc, qsort, realloc
from libc.string cimport memcmp, memcpy, memmove, memset

import struct as _struct

from clearing.limits import TERMINAL_SEQ_AHEAD_MAX as _TERMINAL_SEQ_AHEAD_MAX

cdef extern from *:
    """
    #include <stdint.h>
    #include <stdlib.h>
    #include <string.h>

    #if defined(__BYTE_ORDER__) && defined(__ORDER_LITTLE_ENDIAN__) \\
        && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    #define CC_BSWAP64(v) __builtin_bswap64(v)
    #define CC_BSWAP32(v) __builtin_bswap32(v)
    #else
    #define CC_BSWAP64(v) (v)
    #define CC_BSWAP32(v) (v)
    #endif

    static inline uint64_t cc_load_u64(const unsigned char *p) {
        uint64_t v; memcpy(&v, p, 8); return CC_BSWAP64(v);
    }
    static inline uint32_t cc_load_u32(const unsigned char *p) {
        uint32_t v; memcpy(&v, p, 4); return CC_BSWAP32(v);
    }
    static inline void cc_store_u64(unsigned char *p, uint64_t v) {
        v = CC_BSWAP64(v); memcpy(p, &v, 8);
    }
    static inline void cc_store_i64(unsigned char *p, int64_t v) {
        cc_store_u64(p, (uint64_t)v);
    }

    /* splitmix64 finalizer (a bijection spreading every input bit); an index
       uses its upper 32 bits. */
    static inline uint64_t cc_mix64(uint64_t x) {
        x ^= x >> 30; x *= 0xbf58476d1ce4e5b9ULL;
        x ^= x >> 27; x *= 0x94d049bb133111ebULL;
        x ^= x >> 31; return x;
    }
    static inline uint32_t cc_card_h32(uint64_t card_id) {
        return (uint32_t)(cc_mix64(card_id) >> 32);
    }
    static inline uint32_t cc_tap_h32(uint32_t term, uint64_t seq) {
        return (uint32_t)(cc_mix64(seq ^ ((uint64_t)term * 0x9e3779b97f4a7c15ULL)) >> 32);
    }
    static inline uint64_t cc_make_slot(uint32_t h32, uint64_t idx) {
        return ((uint64_t)h32 << 32) | (idx + 1);
    }
    static inline uint32_t cc_slot_h32(uint64_t slot) { return (uint32_t)(slot >> 32); }
    static inline uint64_t cc_slot_idx(uint64_t slot) { return (slot & 0xffffffffULL) - 1; }

    /* Nonzero when the exact result does not fit int64 (*r then holds it wrapped). */
    static inline int cc_add(int64_t a, int64_t b, int64_t *r) { return __builtin_add_overflow(a, b, r); }
    static inline int cc_sub(int64_t a, int64_t b, int64_t *r) { return __builtin_sub_overflow(a, b, r); }
    static inline int cc_mul(int64_t a, int64_t b, int64_t *r) { return __builtin_mul_overflow(a, b, r); }
    static inline void cc_prefetch(const void *p) { __builtin_prefetch(p); }

    /* Big arrays live in their own anonymous mappings: zeroed, page aligned (a
       64-byte record is one cache line), grown by mremap without copying or
       touching the old pages, hinted for transparent huge pages (fewer TLB
       misses on random probes). Elsewhere: calloc/realloc. */
    #if defined(__linux__)
    #include <sys/mman.h>
    static void cc_region_hint(void *p, size_t bytes) {
    #ifdef MADV_HUGEPAGE
        if (bytes >= ((size_t)2 << 20)) (void)madvise(p, bytes, MADV_HUGEPAGE);
    #endif
    }
    static void *cc_region_alloc(size_t bytes) {
        void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED) return NULL;
        cc_region_hint(p, bytes);
        return p;
    }
    static void *cc_region_grow(void *p, size_t old_bytes, size_t new_bytes) {
        void *q;
        if (p == NULL) return cc_region_alloc(new_bytes);
        q = mremap(p, old_bytes, new_bytes, MREMAP_MAYMOVE);
        if (q == MAP_FAILED) return NULL;
        cc_region_hint(q, new_bytes);
        return q;
    }
    static void cc_region_free(void *p, size_t bytes) { if (p != NULL) (void)munmap(p, bytes); }
    #else
    static void *cc_region_alloc(size_t bytes) { return calloc(1, bytes); }
    static void *cc_region_grow(void *p, size_t old_bytes, size_t new_bytes) {
        char *q = (char *)realloc(p, new_bytes);
        if (q != NULL) memset(q + old_bytes, 0, new_bytes - old_bytes);
        return q;
    }
    static void cc_region_free(void *p, size_t bytes) { (void)bytes; free(p); }
    #endif

    static int cc_cmp_u64(const void *a, const void *b) {
        uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
        return (x > y) - (x < y);
    }
    """
    uint64_t cc_load_u64(const unsigned char *p) nogil
    uint32_t cc_load_u32(const unsigned char *p) nogil
    void cc_store_u64(unsigned char *p, uint64_t v) nogil
    void cc_store_i64(unsigned char *p, int64_t v) nogil
    uint32_t cc_card_h32(uint64_t card_id) nogil
    uint32_t cc_tap_h32(uint32_t term, uint64_t seq) nogil
    uint64_t cc_make_slot(uint32_t h32, uint64_t idx) nogil
    uint32_t cc_slot_h32(uint64_t slot) nogil
    uint64_t cc_slot_idx(uint64_t slot) nogil
    bint cc_add(int64_t a, int64_t b, int64_t *r) nogil
    bint cc_sub(int64_t a, int64_t b, int64_t *r) nogil
    bint cc_mul(int64_t a, int64_t b, int64_t *r) nogil
    void cc_prefetch(const void *p) nogil
    void *cc_region_alloc(size_t nbytes) nogil
    void *cc_region_grow(void *p, size_t old_bytes, size_t new_bytes) nogil
    void cc_region_free(void *p, size_t nbytes) nogil
    int cc_cmp_u64(const void *a, const void *b) noexcept nogil


IMPLEMENTATION = "c"

cdef enum:
    TAP_BYTES = 36
    RESULT_BYTES = 40
    STATUS_SLOTS = 10           # index 0 duplicates, 1..9 TapStatus
    BP_SCALE = 10000
    HALF_BP = 5000
    NO_RULE_BP = 10000          # a merchant without a rule gives no discount
    INDEX_MIN = 16              # smallest index capacity (a power of two)
    INDEX_TAIL = 64             # first tail length past the last home slot
    ARRAY_MIN = 1024            # smallest dense array capacity
    PREFETCH_SLOT = 16          # taps ahead: prefetch the index slots
    PREFETCH_CARD = 8           # taps ahead: prefetch the card the slot names
    TERM_SLOT_MASK = 0xFFFFFF   # tap_t.term_outcome bits 0-23

# TapStatus, ChargedTo, TerminalClass, CardState (clearing/codes.py)
cdef enum:
    OK = 1
    ID_CONFLICT = 2
    INVALID_AMOUNT = 3
    TOO_LATE = 4
    IN_FUTURE = 5
    UNKNOWN_CARD = 6
    CARD_BLOCKED = 7
    INSUFFICIENT_FUNDS = 8
    SEQUENCE_TOO_FAR_AHEAD = 9
cdef enum:
    CHARGED_TO_NONE = 0
    CHARGED_TO_CARD = 1
    CHARGED_TO_ISSUER_LOSS = 2
cdef enum:
    VALIDATOR = 1
    POS = 2
    BILLING = 3
cdef enum:
    ACTIVE = 1
    LOST = 2

# An index position is ``h32 & mask``, so a capacity is at most 2**32 slots,
# which at load <= 1/2 holds 2**31 records; the slot stores index + 1 in 32 bits.
cdef uint64_t INDEX_CAP_MAX = 0x100000000
cdef uint64_t RECORDS_MAX = 0x7FFFFFFF
cdef uint64_t TERMINALS_MAX = TERM_SLOT_MASK + 1



# Snapshot layout: header, config, terminals, rules, cards, taps, tap links -------

cdef enum:
    SNAPSHOT_VERSION = 1
    SNAPSHOT_BYTE_ORDER = 0x01020304

ctypedef struct snap_header_t:          # 72 bytes, no padding
    char magic[8]
    uint32_t version
    uint32_t byte_order
    uint32_t sizes[5]                   # config_t, terminal_t, rule_t, card_t, tap_t
    uint32_t reserved
    uint64_t counts[4]                  # terminals, rules, cards, taps

cdef bytes SNAPSHOT_MAGIC = b"CLRCORE\x00"


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


# Dense arrays and hash indexes ----------------------------------------------------

cdef int grow_array(void **data, uint64_t *cap, uint64_t need, size_t item) except -1:
    """Grow a dense array (doubling) to hold ``need`` items; new items are zeroed."""
    cdef uint64_t new_cap = cap[0] if cap[0] >= ARRAY_MIN else ARRAY_MIN
    cdef void *p
    if need <= cap[0]:
        return 0
    while new_cap < need:
        new_cap *= 2
    p = cc_region_grow(data[0], cap[0] * item, new_cap * item)
    if p == NULL:
        raise MemoryError("ledger core: out of memory")
    data[0] = p
    cap[0] = new_cap
    return 0


cdef void prefault(void *p, size_t nbytes) noexcept nogil:
    """Touch every page so the kernel backs it now (contents unchanged)."""
    cdef volatile unsigned char *q = <volatile unsigned char *>p
    cdef size_t off = 0
    while off < nbytes:
        q[off] = q[off]
        off += 4096


cdef int index_init(index_t *ix, uint64_t cap) except -1:
    cdef uint64_t *slots = <uint64_t *>cc_region_alloc((cap + INDEX_TAIL) * sizeof(uint64_t))
    if slots == NULL:
        raise MemoryError("ledger core: out of memory")
    index_free(ix)
    ix.slots = slots
    ix.mask = cap - 1
    ix.end = cap + INDEX_TAIL
    return 0


cdef void index_free(index_t *ix) noexcept:
    if ix.slots != NULL:
        cc_region_free(ix.slots, ix.end * sizeof(uint64_t))
    ix.slots = NULL
    ix.mask = 0
    ix.end = 0


cdef int index_extend(index_t *ix) except -1:
    """Double the tail: a run reached the last slot (only long collision runs do)."""
    cdef uint64_t tail = ix.end - ix.mask - 1
    cdef void *p = cc_region_grow(ix.slots, ix.end * sizeof(uint64_t),
                                  (ix.end + tail) * sizeof(uint64_t))
    if p == NULL:
        raise MemoryError("ledger core: out of memory")
    ix.slots = <uint64_t *>p
    ix.end += tail
    return 0


@cython.overflowcheck(False)  # i < end <= 2**33
cdef int index_place(index_t *ix, uint64_t slot) except -1:
    """Store ``slot`` in the first empty slot of its run (it must not be present)."""
    cdef uint64_t i = cc_slot_h32(slot) & ix.mask
    while True:
        while i < ix.end:
            if ix.slots[i] == 0:
                ix.slots[i] = slot
                return 0
            i += 1
        index_extend(ix)


@cython.overflowcheck(False)
cdef int index_double(index_t *ix) except -1:
    """Double the capacity in place from the slots alone (no record is read).

    A key's new home is its old home ``p`` or ``p + old_cap``. With no
    wrap-around, re-placing every entry of the lower half in ascending order only
    ever fills slots already visited or slots of the (fresh) upper half, so every
    run stays gap-free. The old tail overlaps the new upper half: its entries are
    parked first and placed last.
    """
    cdef uint64_t old_cap = ix.mask + 1
    cdef uint64_t old_end = ix.end
    cdef uint64_t tail = old_end - old_cap
    cdef uint64_t new_cap = old_cap * 2
    cdef uint64_t *parked = NULL
    cdef uint64_t n_parked = 0, i, s
    cdef void *p
    if new_cap > INDEX_CAP_MAX:
        raise MemoryError("ledger core: hash index full")
    for i in range(old_cap, old_end):
        if ix.slots[i] != 0:
            n_parked += 1
    if n_parked:
        parked = <uint64_t *>malloc(n_parked * sizeof(uint64_t))
        if parked == NULL:
            raise MemoryError("ledger core: out of memory")
        n_parked = 0
        for i in range(old_cap, old_end):
            if ix.slots[i] != 0:
                parked[n_parked] = ix.slots[i]
                n_parked += 1
    try:
        p = cc_region_grow(ix.slots, old_end * sizeof(uint64_t),
                           (new_cap + tail) * sizeof(uint64_t))
        if p == NULL:
            raise MemoryError("ledger core: out of memory")
        ix.slots = <uint64_t *>p
        memset(ix.slots + old_cap, 0, tail * sizeof(uint64_t))   # the rest is fresh
        ix.mask = new_cap - 1
        ix.end = new_cap + tail
        for i in range(old_cap):
            s = ix.slots[i]
            if s != 0:
                ix.slots[i] = 0
                index_place(ix, s)
        for i in range(n_parked):
            index_place(ix, parked[i])
    finally:
        free(parked)
    return 0


cdef inline uint64_t index_capacity(uint64_t n) noexcept nogil:
    """Smallest power of two >= max(INDEX_MIN, 2n): keeps the load <= 1/2."""
    cdef uint64_t cap = INDEX_MIN
    while cap < n * 2:
        cap *= 2
    return cap


# Packed results ------------------------------------------------------------------

cdef inline void put_result(unsigned char *q, const result_t *r) noexcept nogil:
    cc_store_u64(q, (<uint64_t>r.status << 56) | (<uint64_t>r.charged_to << 48)
                 | (<uint64_t>r.duplicate << 40))
    cc_store_i64(q + 8, r.charged_fen)
    cc_store_i64(q + 16, r.discount_fen)
    cc_store_i64(q + 24, r.balance_after_fen)
    cc_store_u64(q + 32, r.journal_seq)


cdef inline bint same_body(const tap_t *rec, uint64_t card_id, int64_t amount,
                           int64_t occurred, uint32_t route) noexcept nogil:
    """SPEC §5: a repeat is a DUPLICATE only with the same card, amount, time and route."""
    return (rec.card_id == card_id and rec.list_amount_fen == amount
            and rec.occurred_at_ms == occurred and rec.route_id == route)


cdef inline bint received_by(const tap_t *rec, uint32_t term) noexcept nogil:
    """The record is of terminal slot ``term`` and its number counts as received (a tap
    refused as SEQUENCE_TOO_FAR_AHEAD is kept for its retries, but was not received)."""
    return ((rec.term_outcome & TERM_SLOT_MASK) == term
            and ((rec.term_outcome >> 24) & 0xF) != SEQUENCE_TOO_FAR_AHEAD)


@cython.overflowcheck(False)  # recorded: 0 <= charged <= amount <= max_tap_fen
cdef inline void repeat_result(const tap_t *rec, result_t *res) noexcept nogil:
    """The recorded tap's original result, flagged as a duplicate."""
    res.status = (rec.term_outcome >> 24) & 0xF
    res.charged_to = (rec.term_outcome >> 28) & 0x3
    res.duplicate = 1
    res.charged_fen = rec.charged_fen
    res.discount_fen = rec.list_amount_fen - rec.charged_fen if res.status == OK else 0
    res.balance_after_fen = rec.balance_after_fen
    res.journal_seq = rec.journal_seq


cdef inline int as_u64(object value, uint64_t *out) except -1:
    """1 with ``out`` set when ``value`` is a u64, else 0 (then it names no record)."""
    try:
        out[0] = value
    except OverflowError:
        return 0
    return 1


cdef int gapset_reserve(gapset_t *g, uint64_t need) except -1:
    cdef uint64_t cap = g.cap if g.cap else 4
    cdef gap_t *p
    if need <= g.cap:
        return 0
    while cap < need:
        cap *= 2
    p = <gap_t *>realloc(g.ranges, cap * sizeof(gap_t))
    if p == NULL:
        raise MemoryError("ledger core: out of memory")
    g.ranges = p
    g.cap = cap
    return 0


cdef int gapset_add(gapset_t *g, uint64_t first, uint64_t last) except -1:
    """Append a gap above every gap so far."""
    gapset_reserve(g, g.n + 1)
    g.ranges[g.n].first = first
    g.ranges[g.n].last = last
    g.n += 1
    return 0


cdef int gapset_receive(gapset_t *g, terminal_t *t, uint64_t seq) except -1:
    """``seq`` arrived, never before: past the highest it may open a gap, below the
    highest it lies in exactly one gap and closes that number (as clearing.core.terminal_gaps.GapSet)."""
    cdef uint64_t lo = 0, hi = g.n, mid, at
    cdef gap_t *r
    if seq > t.highest_seq:
        if seq - t.highest_seq > 1:
            gapset_add(g, t.highest_seq + 1, seq - 1)
        t.highest_seq = seq
        return 0
    while lo < hi:  # the first gap starting above seq
        mid = lo + (hi - lo) // 2
        if g.ranges[mid].first <= seq:
            lo = mid + 1
        else:
            hi = mid
    if lo == 0 or g.ranges[lo - 1].last < seq:
        raise AssertionError("a number never received lies in a gap")
    at = lo - 1
    r = &g.ranges[at]
    if r.first == r.last:
        memmove(r, r + 1, (g.n - lo) * sizeof(gap_t))
        g.n -= 1
    elif seq == r.first:
        r.first = seq + 1
    elif seq == r.last:
        r.last = seq - 1
    else:
        gapset_reserve(g, g.n + 1)
        r = &g.ranges[at]  # the ranges may have moved
        memmove(r + 2, r + 1, (g.n - lo) * sizeof(gap_t))
        r[1].first = seq + 1
        r[1].last = r.last
        r.last = seq - 1
        g.n += 1
    return 0


cdef void gapsets_free(gapset_t *gapsets, uint64_t n, uint64_t cap) noexcept:
    cdef uint64_t k
    if gapsets == NULL:
        return
    for k in range(n):
        free(gapsets[k].ranges)
    cc_region_free(gapsets, cap * sizeof(gapset_t))


cdef void take_state(Ledger dst, Ledger src) noexcept:
    """Swap the state of two ledgers (``src`` then frees ``dst``'s old state).

    Pending low-balance crossings stay where they are, as with the twin's restore.
    """
    dst.cfg, src.cfg = src.cfg, dst.cfg
    dst.cards, src.cards = src.cards, dst.cards
    dst.card_n, src.card_n = src.card_n, dst.card_n
    dst.card_cap, src.card_cap = src.card_cap, dst.card_cap
    dst.card_index, src.card_index = src.card_index, dst.card_index
    dst.taps, src.taps = src.taps, dst.taps
    dst.tap_prev, src.tap_prev = src.tap_prev, dst.tap_prev
    dst.tap_prev_cap, src.tap_prev_cap = src.tap_prev_cap, dst.tap_prev_cap
    dst.tap_n, src.tap_n = src.tap_n, dst.tap_n
    dst.tap_cap, src.tap_cap = src.tap_cap, dst.tap_cap
    dst.tap_index, src.tap_index = src.tap_index, dst.tap_index
    dst.terms, src.terms = src.terms, dst.terms
    dst.gapsets, src.gapsets = src.gapsets, dst.gapsets
    dst.gapset_cap, src.gapset_cap = src.gapset_cap, dst.gapset_cap
    dst.term_n, src.term_n = src.term_n, dst.term_n
    dst.term_cap, src.term_cap = src.term_cap, dst.term_cap
    dst.term_slot, src.term_slot = src.term_slot, dst.term_slot
    dst.rules, src.rules = src.rules, dst.rules


cdef class Ledger:
    """In-memory ledger state and the batch rating engine (compiled version)."""

    implementation = "c"

    def __cinit__(self):
        self.term_slot = {}
        self.rules = {}
        index_init(&self.card_index, INDEX_MIN)
        index_init(&self.tap_index, INDEX_MIN)
        self.cfg.max_tap_fen = 100_000
        self.cfg.max_late_ms = 7 * 86_400_000
        self.cfg.max_clock_skew_ms = 300_000
        self.cfg.transfer_window_ms = 5_400_000
        self.cfg.transfer_discount_fen = 100
        self.cfg.liability_window_ms = 21_600_000
        self.cfg.concession_bp[0] = 0
        self.cfg.concession_bp[1] = 10_000
        self.cfg.concession_bp[2] = 5_000
        self.cfg.concession_bp[3] = 0
        self.cfg.concession_bp[4] = 0
        self.cfg.min_boarding_balance_fen = 0
        self.seq_ahead_max = _TERMINAL_SEQ_AHEAD_MAX

    def __init__(self):
        pass

    def __dealloc__(self):
        cc_region_free(self.cards, self.card_cap * sizeof(card_t))
        cc_region_free(self.taps, self.tap_cap * sizeof(tap_t))
        cc_region_free(self.tap_prev, self.tap_prev_cap * sizeof(uint32_t))
        cc_region_free(self.crossings, self.crossing_cap * sizeof(uint64_t))
        gapsets_free(self.gapsets, self.term_n, self.gapset_cap)
        cc_region_free(self.terms, self.term_cap * sizeof(terminal_t))
        cc_region_free(self.batch_rules, self.batch_rules_cap * sizeof(rule_t))
        index_free(&self.card_index)
        index_free(&self.tap_index)

    def __reduce__(self):
        raise TypeError("a Ledger is saved with snapshot() and loaded with restore()")

    # Configuration ---------------------------------------------------------

    def configure(
        self,
        *,
        max_tap_fen,
        max_late_ms,
        max_clock_skew_ms,
        transfer_window_ms,
        transfer_discount_fen,
        liability_window_ms,
        concession_bp,
        terminal_seq_ahead_max=_TERMINAL_SEQ_AHEAD_MAX,
    ):
        cdef config_t cfg
        cdef int k
        assert len(concession_bp) == 4, "one concession per card type ADULT..DISABLED"
        cfg.max_tap_fen = max_tap_fen
        cfg.max_late_ms = max_late_ms
        cfg.max_clock_skew_ms = max_clock_skew_ms
        cfg.transfer_window_ms = transfer_window_ms
        cfg.transfer_discount_fen = transfer_discount_fen
        cfg.liability_window_ms = liability_window_ms
        cfg.concession_bp[0] = 0
        for k in range(4):
            cfg.concession_bp[k + 1] = concession_bp[k]
        cfg.min_boarding_balance_fen = self.cfg.min_boarding_balance_fen
        self.cfg = cfg
        # Not in cfg, so not in a snapshot: the registry sets it before a restore.
        self.seq_ahead_max = terminal_seq_ahead_max

    def set_min_boarding_balance(self, int64_t min_boarding_balance_fen):
        """Cards charged below this are reported by take_low_balance_crossings()."""
        self.cfg.min_boarding_balance_fen = min_boarding_balance_fen

    def take_low_balance_crossings(self):
        """Card ids whose balance fell below the boarding minimum through a tap, in order."""
        cdef uint64_t k
        crossings = [self.crossings[k] for k in range(self.crossing_n)]
        self.crossing_n = 0
        return crossings

    def set_terminal(self, uint32_t terminal_id, terminal_class, int32_t party_index):
        cdef uint8_t klass
        if terminal_class not in (1, 2, 3):
            raise AssertionError(f"terminal_class must be 1..3, not {terminal_class!r}")
        klass = terminal_class
        slot = self.term_slot.get(terminal_id)
        if slot is None:
            self.append_terminal(terminal_id, klass, party_index)
        else:
            self.terms[<Py_ssize_t>slot].terminal_class = klass
            self.terms[<Py_ssize_t>slot].party_index = party_index

    cdef int append_terminal(self, uint32_t terminal_id, uint8_t terminal_class,
                             int32_t party_index) except -1:
        cdef terminal_t *t
        if self.term_n >= TERMINALS_MAX:
            raise MemoryError("ledger core: terminal table full")
        grow_array(<void **>&self.terms, &self.term_cap, self.term_n + 1, sizeof(terminal_t))
        grow_array(<void **>&self.gapsets, &self.gapset_cap, self.term_n + 1, sizeof(gapset_t))
        t = &self.terms[self.term_n]
        t.terminal_id = terminal_id
        t.party_index = party_index
        t.terminal_class = terminal_class
        t.highest_seq = 0
        t.received_count = 0
        self.term_slot[terminal_id] = self.term_n
        self.term_n += 1
        return 0

    def add_merchant_rule(self, int32_t party_index, int64_t effective_from_ms,
                          int64_t discount_bp):
        rules = [r for r in self.rules.get(party_index, []) if r[0] != effective_from_ms]
        rules.append((effective_from_ms, discount_bp))
        rules.sort()
        self.rules[party_index] = rules

    # Cards ---------------------------------------------------------------------

    @cython.overflowcheck(False)
    cdef int64_t find_card(self, uint64_t card_id) noexcept nogil:
        cdef uint32_t h = cc_card_h32(card_id)
        cdef const uint64_t *slots = self.card_index.slots
        cdef uint64_t end = self.card_index.end
        cdef uint64_t i = h & self.card_index.mask
        cdef uint64_t s
        while i < end:
            s = slots[i]
            if s == 0:
                break
            if cc_slot_h32(s) == h and self.cards[cc_slot_idx(s)].card_id == card_id:
                return <int64_t>cc_slot_idx(s)
            i += 1
        return -1

    cdef int64_t card_slot(self, object card_id) except -1:
        """Index of the card, or KeyError like the twin's ``self._cards[card_id]``."""
        cdef uint64_t cid
        cdef int64_t k = -1
        if as_u64(card_id, &cid):
            k = self.find_card(cid)
        if k < 0:
            raise KeyError(card_id)
        return k

    cdef int reserve_cards(self, uint64_t n) except -1:
        if n > RECORDS_MAX:
            raise MemoryError("ledger core: card table full")
        grow_array(<void **>&self.cards, &self.card_cap, n, sizeof(card_t))
        while n * 2 > self.card_index.mask + 1:
            index_double(&self.card_index)
        return 0

    def issue_card(self, uint64_t card_id, card_type, int64_t deposit_fen):
        """Create an ACTIVE card with balance 0; False if the id exists."""
        cdef card_t *c
        if card_type not in (1, 2, 3, 4):  # not an assert: -O must not drop it (it indexes)
            raise AssertionError(f"card_type must be 1..4, not {card_type!r}")
        if self.find_card(card_id) >= 0:
            return False
        self.reserve_cards(self.card_n + 1)
        c = &self.cards[self.card_n]
        c.card_id = card_id
        c.balance_fen = 0
        c.deposit_fen = deposit_fen
        c.blocked_at_ms = 0
        c.last_occurred_at_ms = 0
        c.last_route_id = 0
        c.state = ACTIVE
        c.card_type = <uint8_t>card_type
        c.has_last_ride = 0
        c.last_tap = 0
        memset(c.reserved, 0, sizeof(c.reserved))
        index_place(&self.card_index, cc_make_slot(cc_card_h32(card_id), self.card_n))
        self.card_n += 1
        return True

    def card(self, card_id):
        """(state, card_type, balance_fen, deposit_fen, blocked_at_ms) or None."""
        cdef uint64_t cid
        cdef int64_t k
        cdef const card_t *c
        if not as_u64(card_id, &cid):
            return None
        k = self.find_card(cid)
        if k < 0:
            return None
        c = &self.cards[k]
        return (c.state, c.card_type, c.balance_fen, c.deposit_fen, c.blocked_at_ms)

    def adjust_balance(self, card_id, delta_fen):
        cdef int64_t k = self.card_slot(card_id)
        balance = self.cards[k].balance_fen + delta_fen  # exact (Python int), like the twin
        if not -0x8000000000000000 <= balance <= 0x7FFFFFFFFFFFFFFF:
            raise OverflowError(f"int64 overflow in money arithmetic: {balance}")
        self.cards[k].balance_fen = balance
        return self.cards[k].balance_fen

    def set_card_state(self, card_id, state, blocked_at_ms):
        cdef int64_t k = self.card_slot(card_id)
        cdef uint8_t new_state = state
        cdef int64_t blocked = blocked_at_ms
        self.cards[k].state = new_state
        self.cards[k].blocked_at_ms = blocked

    def reserve(self, uint64_t cards, uint64_t taps):
        """Allocate and touch room for this many cards and tap records now.

        Static allocation at start (TIGER_STYLE): the kernel zeroes fresh pages
        on first touch, which otherwise lands inside apply_batch as the tables
        grow. Capacities only grow; a reserve below the current size does nothing.
        """
        self.reserve_cards(cards)
        self.reserve_taps(taps)
        prefault(self.cards, self.card_cap * sizeof(card_t))
        prefault(self.card_index.slots, self.card_index.end * sizeof(uint64_t))
        prefault(self.taps, self.tap_cap * sizeof(tap_t))
        prefault(self.tap_prev, self.tap_prev_cap * sizeof(uint32_t))
        prefault(self.tap_index.slots, self.tap_index.end * sizeof(uint64_t))

    def card_ids(self):
        """Every card id, in issue order (cold path: relisting after a rule change)."""
        return [self.cards[i].card_id for i in range(self.card_n)]

    def card_count(self):
        return self.card_n

    def total_balance_fen(self):
        """Σ balances, checked only at the end like the twin's ``_checked(sum(...))``."""
        cdef int64_t total = 0
        cdef int64_t wraps = 0        # the exact sum is total + wraps * 2**64
        cdef uint64_t k
        cdef int64_t b
        for k in range(self.card_n):
            b = self.cards[k].balance_fen
            if cc_add(total, b, &total):
                wraps += 1 if b > 0 else -1
        if wraps != 0:
            exact = (<object>total) + (<object>wraps) * 18446744073709551616
            raise OverflowError(f"int64 overflow in money arithmetic: {exact}")
        return total

    # Terminals -------------------------------------------------------------------

    def terminal_status(self, terminal_id):
        """(highest terminal_seq received, count of distinct seqs received)."""
        cdef Py_ssize_t k = self.term_slot[terminal_id]
        return self.terms[k].highest_seq, self.terms[k].received_count

    def terminal_gaps(self, terminal_id, Py_ssize_t most):
        """The first ``most`` ranges of numbers below the highest never received."""
        cdef gapset_t *g
        cdef uint64_t k
        slot = self.term_slot.get(terminal_id)
        if slot is None or most <= 0:
            return []
        g = &self.gapsets[<Py_ssize_t>slot]
        return [(g.ranges[k].first, g.ranges[k].last) for k in range(min(g.n, <uint64_t>most))]

    def terminal_seqs(self, terminal_id):
        """Every distinct terminal_seq received, ascending (cold path: gaps)."""
        cdef uint32_t term
        cdef uint64_t k, m = 0, count = 0
        cdef uint64_t *seqs
        slot = self.term_slot.get(terminal_id)
        if slot is None:
            return []
        term = slot
        for k in range(self.tap_n):
            if received_by(&self.taps[k], term):
                count += 1
        if count == 0:
            return []
        seqs = <uint64_t *>malloc(count * sizeof(uint64_t))
        if seqs == NULL:
            raise MemoryError("ledger core: out of memory")
        try:
            for k in range(self.tap_n):
                if received_by(&self.taps[k], term):
                    seqs[m] = self.taps[k].terminal_seq
                    m += 1
            qsort(seqs, count, sizeof(uint64_t), cc_cmp_u64)
            return [seqs[k] for k in range(count)]
        finally:
            free(seqs)

    def tap_record_count(self):
        return self.tap_n

    def card_taps(self, card_id, limit):
        """The card's newest ``limit`` tap records, newest first: (journal_seq, terminal_id,
        terminal_seq, list_amount_fen, occurred_at_ms, status, charged_to, charged_fen,
        balance_after_fen). Records are chained per card: O(limit), not a scan."""
        cdef uint64_t cid
        cdef int64_t k
        cdef uint64_t i
        cdef const tap_t *t
        if not as_u64(card_id, &cid):
            return []
        k = self.find_card(cid)
        if k < 0:
            return []
        everything = limit is None or limit < 0  # then slice like the twin's list
        out = []
        i = self.cards[k].last_tap
        while i != 0 and (everything or len(out) < limit):
            t = &self.taps[i - 1]
            out.append((
                t.journal_seq,
                self.terms[t.term_outcome & TERM_SLOT_MASK].terminal_id,
                t.terminal_seq,
                t.list_amount_fen,
                t.occurred_at_ms,
                (t.term_outcome >> 24) & 0xF,
                (t.term_outcome >> 28) & 0x3,
                t.charged_fen,
                t.balance_after_fen,
            ))
            i = self.tap_prev[i - 1]
        return out[:limit] if everything else out

    # Taps --------------------------------------------------------------------------

    @cython.overflowcheck(False)
    cdef int64_t find_tap(self, uint32_t term, uint64_t seq) noexcept nogil:
        cdef uint32_t h = cc_tap_h32(term, seq)
        cdef const uint64_t *slots = self.tap_index.slots
        cdef uint64_t end = self.tap_index.end
        cdef uint64_t i = h & self.tap_index.mask
        cdef uint64_t s
        cdef const tap_t *t
        while i < end:
            s = slots[i]
            if s == 0:
                break
            if cc_slot_h32(s) == h:
                t = &self.taps[cc_slot_idx(s)]
                if t.terminal_seq == seq and (t.term_outcome & TERM_SLOT_MASK) == term:
                    return <int64_t>cc_slot_idx(s)
            i += 1
        return -1

    cdef int reserve_taps(self, uint64_t n) except -1:
        if n > RECORDS_MAX:
            raise MemoryError("ledger core: tap record table full")
        grow_array(<void **>&self.taps, &self.tap_cap, n, sizeof(tap_t))
        grow_array(<void **>&self.tap_prev, &self.tap_prev_cap, n, sizeof(uint32_t))
        while n * 2 > self.tap_index.mask + 1:
            index_double(&self.tap_index)
        return 0

    @staticmethod
    def first_invalid_tap(packed_taps):
        """Index of the first tap with terminal_seq 0 (malformed), else -1."""
        cdef Py_buffer view
        cdef Py_ssize_t k, n
        cdef const unsigned char *p
        PyObject_GetBuffer(packed_taps, &view, PyBUF_SIMPLE)
        try:
            if view.len % TAP_BYTES != 0:
                raise AssertionError("packed taps are not whole 36-byte records")
            p = <const unsigned char *>view.buf
            n = view.len // TAP_BYTES
            for k in range(n):
                if cc_load_u64(p + k * TAP_BYTES + 8) == 0:
                    return k
            return -1
        finally:
            PyBuffer_Release(&view)

    @cython.overflowcheck(False)  # offsets < len(buffer); no money is computed here
    def repeated_results(self, terminal_id, packed_taps):
        """The packed results when every tap repeats a recorded one with the same body
        (a replayed batch: nothing to apply or journal), else None."""
        cdef Py_buffer view
        cdef Py_ssize_t k, n
        cdef int64_t found
        cdef uint32_t term
        cdef const unsigned char *p
        cdef unsigned char *q
        cdef result_t res
        cdef bytes out
        slot = self.term_slot.get(terminal_id)
        if slot is None:
            return None
        term = slot
        PyObject_GetBuffer(packed_taps, &view, PyBUF_SIMPLE)
        try:
            n = view.len // TAP_BYTES
            if n == 0 or view.len % TAP_BYTES != 0:
                return None
            out = PyBytes_FromStringAndSize(NULL, n * RESULT_BYTES)
            q = <unsigned char *>PyBytes_AS_STRING(out)
            for k in range(n):
                p = <const unsigned char *>view.buf + k * TAP_BYTES
                found = self.find_tap(term, cc_load_u64(p + 8))
                if found < 0 or not same_body(
                    &self.taps[found], cc_load_u64(p), <int64_t>cc_load_u64(p + 16),
                    <int64_t>cc_load_u64(p + 24), cc_load_u32(p + 32)
                ):
                    return None
                repeat_result(&self.taps[found], &res)
                put_result(q + k * RESULT_BYTES, &res)
            return out
        finally:
            PyBuffer_Release(&view)

    def apply_batch(self, terminal_id, packed_taps, int64_t now_ms, uint64_t journal_seq):
        """Rate and apply every tap in order; return the packed results."""
        cdef Py_buffer view
        cdef Py_ssize_t n, n_rules = 0
        cdef uint32_t term
        cdef bytes out
        PyObject_GetBuffer(packed_taps, &view, PyBUF_SIMPLE)
        try:
            if view.len % TAP_BYTES != 0:
                raise AssertionError("packed taps are not whole 36-byte records")
            term = self.term_slot[terminal_id]
            n = view.len // TAP_BYTES
            out = PyBytes_FromStringAndSize(NULL, n * RESULT_BYTES)
            if n == 0:
                return out
            # Each fresh tap adds one record: make room once, so that the loop
            # never moves the records (it may only lengthen the index tail).
            self.reserve_taps(self.tap_n + <uint64_t>n)
            if self.terms[term].terminal_class == POS:
                n_rules = self.load_batch_rules(self.terms[term].party_index)
            self.apply_taps(
                term,
                <const unsigned char *>view.buf,
                <unsigned char *>PyBytes_AS_STRING(out),
                n,
                now_ms,
                journal_seq,
                n_rules,
            )
            return out
        finally:
            PyBuffer_Release(&view)

    cdef Py_ssize_t load_batch_rules(self, int32_t party_index) except -1:
        """The party's merchant rules, copied once per batch into ``batch_rules``."""
        cdef Py_ssize_t k = 0
        rules = self.rules.get(party_index)
        if not rules:
            return 0
        grow_array(<void **>&self.batch_rules, &self.batch_rules_cap, len(rules), sizeof(rule_t))
        for effective_from_ms, discount_bp in rules:
            self.batch_rules[k].party_index = party_index
            self.batch_rules[k].effective_from_ms = effective_from_ms
            self.batch_rules[k].discount_bp = discount_bp
            k += 1
        return k

    @cython.overflowcheck(False)  # offsets < len(buffer); money goes through cc_* checks
    cdef int apply_taps(self, uint32_t term_slot, const unsigned char *src, unsigned char *dst,
                        Py_ssize_t n, int64_t now_ms, uint64_t journal_seq,
                        Py_ssize_t n_rules) except -1:
        cdef terminal_t *term = &self.terms[term_slot]
        cdef card_t *cards = self.cards                 # no card is added during a batch
        cdef const uint64_t *card_slots = self.card_index.slots
        cdef uint64_t card_mask = self.card_index.mask
        cdef Py_ssize_t k
        cdef const unsigned char *p
        cdef uint64_t card_id, seq, i, s
        cdef uint32_t h, route
        cdef int64_t amount, occurred, c
        cdef card_t *card
        cdef tap_t *rec = NULL
        cdef bint found
        cdef result_t res
        for k in range(n):
            # Random card and index accesses are cache misses: start them early.
            if k + PREFETCH_SLOT < n:
                p = src + (k + PREFETCH_SLOT) * TAP_BYTES
                cc_prefetch(&card_slots[cc_card_h32(cc_load_u64(p)) & card_mask])
                cc_prefetch(&self.tap_index.slots[
                    cc_tap_h32(term_slot, cc_load_u64(p + 8)) & self.tap_index.mask])
            if k + PREFETCH_CARD < n:
                p = src + (k + PREFETCH_CARD) * TAP_BYTES
                h = cc_card_h32(cc_load_u64(p))
                s = card_slots[h & card_mask]
                if s != 0 and cc_slot_h32(s) == h:
                    cc_prefetch(&cards[cc_slot_idx(s)])

            p = src + k * TAP_BYTES
            card_id = cc_load_u64(p)
            seq = cc_load_u64(p + 8)
            amount = <int64_t>cc_load_u64(p + 16)
            occurred = <int64_t>cc_load_u64(p + 24)
            route = cc_load_u32(p + 32)
            if seq == 0:
                raise AssertionError("first_invalid_tap() screens terminal_seq 0")

            # Deduplication probe; on a miss ``i`` is the empty slot to fill.
            h = cc_tap_h32(term_slot, seq)
            i = h & self.tap_index.mask
            found = False
            while i < self.tap_index.end:
                s = self.tap_index.slots[i]
                if s == 0:
                    break
                if cc_slot_h32(s) == h:
                    rec = &self.taps[cc_slot_idx(s)]
                    if rec.terminal_seq == seq and (rec.term_outcome & TERM_SLOT_MASK) == term_slot:
                        found = True
                        break
                i += 1

            if found:
                if same_body(rec, card_id, amount, occurred, route):
                    repeat_result(rec, &res)        # DUPLICATE: the original, unchanged
                else:
                    # ID_CONFLICT: journaled, but never replaces the original.
                    c = self.find_card(card_id)
                    res.status = ID_CONFLICT
                    res.charged_to = CHARGED_TO_NONE
                    res.duplicate = 0
                    res.charged_fen = 0
                    res.discount_fen = 0
                    res.balance_after_fen = cards[c].balance_fen if c >= 0 else 0
                    res.journal_seq = journal_seq
            else:
                c = self.find_card(card_id)
                card = &cards[c] if c >= 0 else NULL
                if (self.seq_ahead_max and seq > term.highest_seq
                        and seq - term.highest_seq > self.seq_ahead_max):
                    # Refused before the body is looked at, and not received: the highest
                    # and the gaps stay as they were. On record, so a retry answers the same.
                    res.status = SEQUENCE_TOO_FAR_AHEAD
                    res.charged_to = CHARGED_TO_NONE
                    res.charged_fen = 0
                    res.balance_after_fen = card.balance_fen if card != NULL else 0
                else:
                    # Rate first: a tap that raises (overflow) leaves nothing of itself behind.
                    self.rate(term, card, amount, occurred, route, now_ms, n_rules, &res)
                    gapset_receive(&self.gapsets[term_slot], term, seq)  # moves the highest
                    term.received_count += 1
                rec = &self.taps[self.tap_n]        # room reserved by apply_batch
                rec.term_outcome = (term_slot | (<uint32_t>res.status << 24)
                                    | (<uint32_t>res.charged_to << 28))
                rec.route_id = route
                rec.terminal_seq = seq
                rec.card_id = card_id
                rec.list_amount_fen = amount
                rec.occurred_at_ms = occurred
                rec.charged_fen = res.charged_fen
                rec.balance_after_fen = res.balance_after_fen
                rec.journal_seq = journal_seq
                if card != NULL:                    # the card's history chain
                    self.tap_prev[self.tap_n] = card.last_tap
                    card.last_tap = <uint32_t>(self.tap_n + 1)
                else:
                    self.tap_prev[self.tap_n] = 0
                if i < self.tap_index.end:
                    self.tap_index.slots[i] = cc_make_slot(h, self.tap_n)
                else:                               # the run filled the tail
                    index_place(&self.tap_index, cc_make_slot(h, self.tap_n))
                self.tap_n += 1
                res.duplicate = 0
                res.journal_seq = journal_seq
                res.discount_fen = amount - res.charged_fen if res.status == OK else 0
            put_result(dst + k * RESULT_BYTES, &res)
        return 0

    cdef int rate(self, const terminal_t *term, card_t *c, int64_t amount, int64_t occurred,
                  uint32_t route, int64_t now_ms, Py_ssize_t n_rules, result_t *res) except -1:
        """SPEC §5 rules 3–8 for a fresh tap (``c`` NULL: unknown card); applies an OK tap."""
        cdef int64_t charged, gap, deadline, balance_after
        res.charged_to = CHARGED_TO_NONE
        res.charged_fen = 0
        res.balance_after_fen = c.balance_fen if c != NULL else 0
        if amount <= 0 or amount > self.cfg.max_tap_fen:
            res.status = INVALID_AMOUNT
            return 0
        if too_late(occurred, now_ms, self.cfg.max_late_ms):
            res.status = TOO_LATE
            return 0
        if in_future(occurred, now_ms, self.cfg.max_clock_skew_ms):
            res.status = IN_FUTURE
            return 0
        if c == NULL:
            res.status = UNKNOWN_CARD
            return 0

        if term.terminal_class == VALIDATOR:
            # A validator records a ride that happened: always OK (rule 8).
            charged = half_up(amount, self.cfg.concession_bp[c.card_type])
            if c.has_last_ride and c.last_route_id != route:
                if cc_sub(occurred, c.last_occurred_at_ms, &gap):
                    money_overflow()
                if 0 <= gap <= self.cfg.transfer_window_ms:
                    if cc_sub(charged, self.cfg.transfer_discount_fen, &charged):
                        money_overflow()
                    if charged < 0:
                        charged = 0
            if c.state == ACTIVE:
                res.charged_to = CHARGED_TO_CARD
            elif c.state == LOST:
                if cc_add(c.blocked_at_ms, self.cfg.liability_window_ms, &deadline):
                    money_overflow()
                res.charged_to = CHARGED_TO_CARD if occurred < deadline else CHARGED_TO_ISSUER_LOSS
            else:
                res.charged_to = CHARGED_TO_ISSUER_LOSS
            if res.charged_to == CHARGED_TO_CARD and cc_sub(c.balance_fen, charged, &balance_after):
                money_overflow()  # raise before anything changes
            c.has_last_ride = 1
            c.last_route_id = route
            c.last_occurred_at_ms = occurred
            if res.charged_to == CHARGED_TO_CARD:
                self.charge(c, charged)
            res.status = OK
            res.charged_fen = charged
            res.balance_after_fen = c.balance_fen
            return 0

        if c.state != ACTIVE:
            res.status = CARD_BLOCKED
            return 0
        if term.terminal_class == POS:
            charged = half_up(amount, rule_bp(self.batch_rules, n_rules, occurred))
        else:
            charged = amount
        if charged > c.balance_fen:
            res.status = INSUFFICIENT_FUNDS
            return 0
        self.charge(c, charged)
        res.status = OK
        res.charged_to = CHARGED_TO_CARD
        res.charged_fen = charged
        res.balance_after_fen = c.balance_fen
        return 0

    cdef int charge(self, card_t *c, int64_t charged) except -1:
        """Take ``charged`` from the card; note it when it falls below the boarding minimum."""
        cdef int64_t before = c.balance_fen
        cdef int64_t after
        cdef int64_t floor = self.cfg.min_boarding_balance_fen
        if cc_sub(before, charged, &after):
            money_overflow()                        # the balance is left as it was
        c.balance_fen = after
        if before >= floor > after:
            grow_array(<void **>&self.crossings, &self.crossing_cap, self.crossing_n + 1,
                       sizeof(uint64_t))
            self.crossings[self.crossing_n] = c.card_id
            self.crossing_n += 1
        return 0

    @staticmethod
    def count_statuses(packed_results):
        """Index 0: duplicates; index s: fresh results with status s."""
        cdef Py_buffer view
        cdef Py_ssize_t k, n
        cdef Py_ssize_t counts[STATUS_SLOTS]
        cdef const unsigned char *p
        cdef uint8_t status
        memset(counts, 0, sizeof(counts))
        PyObject_GetBuffer(packed_results, &view, PyBUF_SIMPLE)
        try:
            if view.len % RESULT_BYTES != 0:
                raise _struct.error(
                    f"iterative unpacking requires a buffer of a multiple of {RESULT_BYTES} bytes"
                )
            n = view.len // RESULT_BYTES
            for k in range(n):
                p = <const unsigned char *>view.buf + k * RESULT_BYTES
                status = 0 if p[2] else p[0]
                if status >= STATUS_SLOTS:
                    raise IndexError("list index out of range")
                counts[status] += 1
        finally:
            PyBuffer_Release(&view)
        return [counts[k] for k in range(STATUS_SLOTS)]

    # Checkpoints -----------------------------------------------------------------------

    def snapshot(self):
        """The whole state as raw bytes: header, config, terminals, rules, cards, taps
        and the taps' per-card chain links."""
        cdef snap_header_t header
        cdef uint64_t n_rules = sum(len(v) for v in self.rules.values())
        cdef size_t total, off
        cdef bytes blob
        cdef char *buf
        cdef rule_t rule
        memset(&header, 0, sizeof(header))
        memcpy(header.magic, <const char *>SNAPSHOT_MAGIC, 8)
        header.version = SNAPSHOT_VERSION
        header.byte_order = SNAPSHOT_BYTE_ORDER
        header.sizes[0] = sizeof(config_t)
        header.sizes[1] = sizeof(terminal_t)
        header.sizes[2] = sizeof(rule_t)
        header.sizes[3] = sizeof(card_t)
        header.sizes[4] = sizeof(tap_t)
        header.counts[0] = self.term_n
        header.counts[1] = n_rules
        header.counts[2] = self.card_n
        header.counts[3] = self.tap_n
        total = (sizeof(snap_header_t) + sizeof(config_t) + self.term_n * sizeof(terminal_t)
                 + n_rules * sizeof(rule_t) + self.card_n * sizeof(card_t)
                 + self.tap_n * (sizeof(tap_t) + sizeof(uint32_t)))
        blob = PyBytes_FromStringAndSize(NULL, total)
        buf = PyBytes_AS_STRING(blob)
        memcpy(buf, &header, sizeof(header))
        off = sizeof(header)
        memcpy(buf + off, &self.cfg, sizeof(config_t))
        off += sizeof(config_t)
        if self.term_n:
            memcpy(buf + off, self.terms, self.term_n * sizeof(terminal_t))
            off += self.term_n * sizeof(terminal_t)
        memset(&rule, 0, sizeof(rule))
        for party_index in sorted(self.rules):
            for effective_from_ms, discount_bp in self.rules[party_index]:
                rule.party_index = party_index
                rule.effective_from_ms = effective_from_ms
                rule.discount_bp = discount_bp
                memcpy(buf + off, &rule, sizeof(rule_t))
                off += sizeof(rule_t)
        if self.card_n:
            memcpy(buf + off, self.cards, self.card_n * sizeof(card_t))
            off += self.card_n * sizeof(card_t)
        if self.tap_n:
            memcpy(buf + off, self.taps, self.tap_n * sizeof(tap_t))
            off += self.tap_n * sizeof(tap_t)
            memcpy(buf + off, self.tap_prev, self.tap_n * sizeof(uint32_t))
            off += self.tap_n * sizeof(uint32_t)
        assert off == total
        return blob

    def restore(self, blob):
        """Replace the whole state with a ``snapshot()``; a bad blob changes nothing."""
        cdef Py_buffer view
        cdef snap_header_t header
        cdef const char *buf
        cdef size_t off
        cdef uint64_t k
        cdef uint32_t outcome, status, charged_to
        cdef terminal_t t
        cdef rule_t r
        cdef Ledger fresh = Ledger.__new__(Ledger)
        PyObject_GetBuffer(blob, &view, PyBUF_SIMPLE)
        try:
            buf = <const char *>view.buf
            if <size_t>view.len < sizeof(snap_header_t) + sizeof(config_t):
                raise ValueError("not a ledger core snapshot: too short")
            memcpy(&header, buf, sizeof(header))
            if memcmp(header.magic, <const char *>SNAPSHOT_MAGIC, 8) != 0:
                raise ValueError("not a ledger core snapshot: bad magic")
            if header.version != SNAPSHOT_VERSION or header.byte_order != SNAPSHOT_BYTE_ORDER:
                raise ValueError("ledger core snapshot of another version or byte order")
            if (header.sizes[0] != sizeof(config_t) or header.sizes[1] != sizeof(terminal_t)
                    or header.sizes[2] != sizeof(rule_t) or header.sizes[3] != sizeof(card_t)
                    or header.sizes[4] != sizeof(tap_t)):
                raise ValueError("ledger core snapshot of another record layout")
            expected = <object>(sizeof(snap_header_t) + sizeof(config_t))  # Python int: no wrap
            expected += <object>header.counts[0] * sizeof(terminal_t)
            expected += <object>header.counts[1] * sizeof(rule_t)
            expected += <object>header.counts[2] * sizeof(card_t)
            expected += <object>header.counts[3] * (sizeof(tap_t) + sizeof(uint32_t))
            if expected != view.len:
                raise ValueError("ledger core snapshot is truncated or padded")
            if (header.counts[0] > TERMINALS_MAX or header.counts[2] > RECORDS_MAX
                    or header.counts[3] > RECORDS_MAX):
                raise ValueError("ledger core snapshot exceeds the table limits")

            off = sizeof(snap_header_t)
            memcpy(&fresh.cfg, buf + off, sizeof(config_t))
            off += sizeof(config_t)

            for k in range(header.counts[0]):
                memcpy(&t, buf + off, sizeof(terminal_t))   # the buffer may be unaligned
                off += sizeof(terminal_t)
                if not 1 <= t.terminal_class <= 3 or t.terminal_id in fresh.term_slot:
                    raise ValueError("ledger core snapshot holds a bad terminal")
                fresh.append_terminal(t.terminal_id, t.terminal_class, t.party_index)
                fresh.terms[k].highest_seq = t.highest_seq
                fresh.terms[k].received_count = t.received_count

            for k in range(header.counts[1]):
                memcpy(&r, buf + off, sizeof(rule_t))
                off += sizeof(rule_t)
                versions = fresh.rules.setdefault(r.party_index, [])
                if versions and versions[len(versions) - 1][0] >= r.effective_from_ms:
                    raise ValueError("ledger core snapshot holds unordered merchant rules")
                versions.append((r.effective_from_ms, r.discount_bp))

            fresh.reserve_cards(header.counts[2])
            if header.counts[2]:
                memcpy(fresh.cards, buf + off, header.counts[2] * sizeof(card_t))
            off += header.counts[2] * sizeof(card_t)
            fresh.card_n = header.counts[2]
            for k in range(fresh.card_n):
                if not 1 <= fresh.cards[k].card_type <= 4:
                    raise ValueError("ledger core snapshot holds a bad card type")

            fresh.reserve_taps(header.counts[3])
            if header.counts[3]:
                memcpy(fresh.taps, buf + off, header.counts[3] * sizeof(tap_t))
                off += header.counts[3] * sizeof(tap_t)
                memcpy(fresh.tap_prev, buf + off, header.counts[3] * sizeof(uint32_t))
                off += header.counts[3] * sizeof(uint32_t)
            fresh.tap_n = header.counts[3]
            for k in range(fresh.card_n):
                if fresh.cards[k].last_tap > fresh.tap_n:
                    raise ValueError("ledger core snapshot holds a bad card history")
            for k in range(fresh.tap_n):
                outcome = fresh.taps[k].term_outcome
                status = (outcome >> 24) & 0xF
                charged_to = (outcome >> 28) & 0x3
                if ((outcome & TERM_SLOT_MASK) >= fresh.term_n or outcome >> 30
                        or not OK <= status <= SEQUENCE_TOO_FAR_AHEAD or status == ID_CONFLICT
                        or charged_to > CHARGED_TO_ISSUER_LOSS
                        or fresh.tap_prev[k] > k):           # links point strictly back
                    raise ValueError("ledger core snapshot holds a bad tap record")
            fresh.index_records()
            fresh.rebuild_gaps()
        finally:
            PyBuffer_Release(&view)
        take_state(self, fresh)   # ``fresh`` now owns (and frees) the old state

    cdef int rebuild_gaps(self) except -1:
        """Each terminal's gaps from its records (a snapshot holds none), checked against
        the terminal's highest and received count."""
        cdef uint64_t k, t, seq, last, expected, total = 0
        cdef uint64_t *counts = <uint64_t *>calloc(self.term_n + 1, sizeof(uint64_t))
        cdef uint64_t *starts = <uint64_t *>calloc(self.term_n + 1, sizeof(uint64_t))
        cdef uint64_t *seqs = <uint64_t *>malloc((self.tap_n + 1) * sizeof(uint64_t))
        cdef const tap_t *rec
        try:
            if counts == NULL or starts == NULL or seqs == NULL:
                raise MemoryError("ledger core: out of memory")
            for k in range(self.tap_n):
                rec = &self.taps[k]
                if received_by(rec, rec.term_outcome & TERM_SLOT_MASK):
                    counts[rec.term_outcome & TERM_SLOT_MASK] += 1
            for t in range(self.term_n):
                starts[t] = total
                total += counts[t]
            for k in range(self.tap_n):  # grouped by terminal; starts[t] moves to its end
                rec = &self.taps[k]
                t = rec.term_outcome & TERM_SLOT_MASK
                if received_by(rec, <uint32_t>t):
                    seqs[starts[t]] = rec.terminal_seq
                    starts[t] += 1
            for t in range(self.term_n):
                k = starts[t] - counts[t]
                qsort(seqs + k, counts[t], sizeof(uint64_t), cc_cmp_u64)
                last = 0
                for k in range(k, starts[t]):
                    seq = seqs[k]
                    expected = last + 1  # last < seq: no wrap
                    if seq > expected:
                        gapset_add(&self.gapsets[t], expected, seq - 1)
                    last = seq
                if last != self.terms[t].highest_seq or counts[t] != self.terms[t].received_count:
                    raise ValueError("ledger core snapshot: a terminal's numbers and records differ")
        finally:
            free(counts)
            free(starts)
            free(seqs)
        return 0

    @cython.overflowcheck(False)
    cdef int index_records(self) except -1:
        """Fill the (empty, presized) indexes from the records; duplicates are an error."""
        cdef uint64_t k, i, s
        cdef uint32_t h
        cdef const tap_t *t
        cdef const tap_t *o
        for k in range(self.card_n):
            h = cc_card_h32(self.cards[k].card_id)
            i = h & self.card_index.mask
            while i < self.card_index.end:
                s = self.card_index.slots[i]
                if s == 0:
                    break
                if cc_slot_h32(s) == h and \
                        self.cards[cc_slot_idx(s)].card_id == self.cards[k].card_id:
                    raise ValueError("ledger core snapshot holds a card twice")
                i += 1
            index_place(&self.card_index, cc_make_slot(h, k))
        for k in range(self.tap_n):
            t = &self.taps[k]
            h = cc_tap_h32(t.term_outcome & TERM_SLOT_MASK, t.terminal_seq)
            i = h & self.tap_index.mask
            while i < self.tap_index.end:
                s = self.tap_index.slots[i]
                if s == 0:
                    break
                if cc_slot_h32(s) == h:
                    o = &self.taps[cc_slot_idx(s)]
                    if (o.terminal_seq == t.terminal_seq and (o.term_outcome & TERM_SLOT_MASK)
                            == (t.term_outcome & TERM_SLOT_MASK)):
                        raise ValueError("ledger core snapshot holds a tap record twice")
                i += 1
            index_place(&self.tap_index, cc_make_slot(h, k))
        return 0
