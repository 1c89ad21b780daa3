# Applying a batch: deduplication, rating and the packed results, over C memory.

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


@cython.overflowcheck(False)  # offsets < len(buffer); money goes through cc_* checks
cdef int apply_taps(Ledger self, uint32_t term_slot, const unsigned char *src, unsigned char *dst,
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
    cdef int64_t amount, occurred, c, r
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
        r = probe_next(&self.tap_index, h, &i)
        while r >= 0:
            rec = &self.taps[r]
            if is_tap(rec, term_slot, seq):
                found = True
                break
            r = probe_next(&self.tap_index, h, &i)

        if found:
            if same_body(rec, card_id, amount, occurred, route):
                repeat_result(rec, &res)        # DUPLICATE: the original, unchanged
            else:
                # ID_CONFLICT: journaled, but never replaces the original.
                c = find_card(self, card_id)
                res.status = ID_CONFLICT
                res.charged_to = CHARGED_TO_NONE
                res.duplicate = 0
                res.charged_fen = 0
                res.discount_fen = 0
                res.balance_after_fen = cards[c].balance_fen if c >= 0 else 0
                res.journal_seq = journal_seq
        else:
            c = find_card(self, card_id)
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
                rate(self, term, card, amount, occurred, route, now_ms, n_rules, &res)
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


cdef Py_ssize_t taps_first_invalid(packed_taps) except -2:
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
cdef object ledger_repeated_results(Ledger self, terminal_id, packed_taps):
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
            found = find_tap(self, term, cc_load_u64(p + 8))
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


cdef bytes ledger_apply_batch(Ledger self, terminal_id, packed_taps, int64_t now_ms, uint64_t journal_seq):
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
        reserve_taps(self, self.tap_n + <uint64_t>n)
        if self.terms[term].terminal_class == POS:
            n_rules = load_batch_rules(self, self.terms[term].party_index)
        apply_taps(self, 
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


cdef list results_count_statuses(packed_results):
    cdef Py_buffer view
    cdef Py_ssize_t k, n
    cdef Py_ssize_t counts[STATUS_COUNT]  # index 0: duplicates; s: fresh results with status s
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
            if status >= STATUS_COUNT:
                raise IndexError("list index out of range")
            counts[status] += 1
    finally:
        PyBuffer_Release(&view)
    return [counts[k] for k in range(STATUS_COUNT)]
