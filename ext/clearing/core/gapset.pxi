# Per-terminal gaps: the numbers below a terminal's highest that never arrived, as ranges.

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


cdef int rebuild_gaps(Ledger self) except -1:
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
