# Snapshots: the whole ledger as raw memory (header + arrays), and its restore.

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


cdef bytes ledger_snapshot(Ledger self):
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


cdef object ledger_restore(Ledger self, blob):
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
            append_terminal(fresh, t.terminal_id, t.terminal_class, t.party_index)
            fresh.terms[k].highest_seq = t.highest_seq
            fresh.terms[k].received_count = t.received_count

        for k in range(header.counts[1]):
            memcpy(&r, buf + off, sizeof(rule_t))
            off += sizeof(rule_t)
            versions = fresh.rules.setdefault(r.party_index, [])
            if versions and versions[len(versions) - 1][0] >= r.effective_from_ms:
                raise ValueError("ledger core snapshot holds unordered merchant rules")
            versions.append((r.effective_from_ms, r.discount_bp))

        reserve_cards(fresh, header.counts[2])
        if header.counts[2]:
            memcpy(fresh.cards, buf + off, header.counts[2] * sizeof(card_t))
        off += header.counts[2] * sizeof(card_t)
        fresh.card_n = header.counts[2]
        for k in range(fresh.card_n):
            if not 1 <= fresh.cards[k].card_type <= 4:
                raise ValueError("ledger core snapshot holds a bad card type")

        reserve_taps(fresh, header.counts[3])
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
        index_records(fresh)
        rebuild_gaps(fresh)
    finally:
        PyBuffer_Release(&view)
    take_state(self, fresh)   # ``fresh`` now owns (and frees) the old state


@cython.overflowcheck(False)
cdef int index_records(Ledger self) except -1:
    """Fill the (empty, presized) indexes from the records; duplicates are an error."""
    cdef uint64_t k
    cdef uint32_t term
    cdef const tap_t *t
    for k in range(self.card_n):
        if find_card(self, self.cards[k].card_id) >= 0:
            raise ValueError("ledger core snapshot holds a card twice")
        index_place(&self.card_index, cc_make_slot(cc_card_h32(self.cards[k].card_id), k))
    for k in range(self.tap_n):
        t = &self.taps[k]
        term = t.term_outcome & TERM_SLOT_MASK
        if find_tap(self, term, t.terminal_seq) >= 0:
            raise ValueError("ledger core snapshot holds a tap record twice")
        index_place(&self.tap_index, cc_make_slot(cc_tap_h32(term, t.terminal_seq), k))
    return 0
