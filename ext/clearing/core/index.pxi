# Dense arrays and the open-addressing hash indexes over them; finding a card or a tap.

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


cdef int append_terminal(Ledger self, uint32_t terminal_id, uint8_t terminal_class,
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



@cython.overflowcheck(False)  # i < end <= 2**33
cdef inline int64_t probe_next(const index_t *ix, uint32_t h, uint64_t *i) noexcept nogil:
    """The one probe of every index (linear, from home slot ``h & mask``): from slot
    ``i[0]`` on, the next record whose slot carries hash ``h``, as its index, with
    ``i[0]`` just past it; or -1 at the run's end, with ``i[0]`` at the empty slot a
    new record takes (or at ``ix.end``: the tail is full)."""
    cdef uint64_t s
    while i[0] < ix.end:
        s = ix.slots[i[0]]
        if s == 0:
            return -1
        i[0] += 1
        if cc_slot_h32(s) == h:
            return <int64_t>cc_slot_idx(s)
    return -1


cdef inline bint is_tap(const tap_t *t, uint32_t term, uint64_t seq) noexcept nogil:
    """Whether record ``t`` is terminal slot ``term``'s tap ``seq``."""
    return t.terminal_seq == seq and (t.term_outcome & TERM_SLOT_MASK) == term


cdef int64_t find_card(Ledger self, uint64_t card_id) noexcept nogil:
    cdef uint32_t h = cc_card_h32(card_id)
    cdef uint64_t i = h & self.card_index.mask
    cdef int64_t k = probe_next(&self.card_index, h, &i)
    while k >= 0 and self.cards[k].card_id != card_id:
        k = probe_next(&self.card_index, h, &i)
    return k


cdef int64_t card_slot(Ledger self, object card_id) except -1:
    """Index of the card, or KeyError like the twin's ``self._cards[card_id]``."""
    cdef uint64_t cid
    cdef int64_t k = -1
    if as_u64(card_id, &cid):
        k = find_card(self, cid)
    if k < 0:
        raise KeyError(card_id)
    return k



cdef int reserve_cards(Ledger self, uint64_t n) except -1:
    if n > RECORDS_MAX:
        raise MemoryError("ledger core: card table full")
    grow_array(<void **>&self.cards, &self.card_cap, n, sizeof(card_t))
    while n * 2 > self.card_index.mask + 1:
        index_double(&self.card_index)
    return 0



cdef int64_t find_tap(Ledger self, uint32_t term, uint64_t seq) noexcept nogil:
    cdef uint32_t h = cc_tap_h32(term, seq)
    cdef uint64_t i = h & self.tap_index.mask
    cdef int64_t k = probe_next(&self.tap_index, h, &i)
    while k >= 0 and not is_tap(&self.taps[k], term, seq):
        k = probe_next(&self.tap_index, h, &i)
    return k


cdef int reserve_taps(Ledger self, uint64_t n) except -1:
    if n > RECORDS_MAX:
        raise MemoryError("ledger core: tap record table full")
    grow_array(<void **>&self.taps, &self.tap_cap, n, sizeof(tap_t))
    grow_array(<void **>&self.tap_prev, &self.tap_prev_cap, n, sizeof(uint32_t))
    while n * 2 > self.tap_index.mask + 1:
        index_double(&self.tap_index)
    return 0
