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
  ``take_low_balance_crossings``. Both mirror the twin (the engine uses them).

Files (included in this order): ``clearing_core.pxi`` (the C helpers of
``clearing_core.h``), ``wire.pxi`` (sizes and codes, shared with ``_summary``),
``money.pxi``, ``index.pxi`` (dense arrays, the hash indexes and their one probe),
``gapset.pxi``, ``rating.pxi``, ``apply.pxi``, ``snapshot.pxi``; the C-level
operations are module functions taking ``Ledger self``, the class below is the
Python API.

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

include "clearing_core.pxi"
include "wire.pxi"

IMPLEMENTATION = "c"

cdef enum:
    BP_SCALE = 10000
    HALF_BP = 5000
    NO_RULE_BP = 10000          # a merchant without a rule gives no discount
    INDEX_MIN = 16              # smallest index capacity (a power of two)
    INDEX_TAIL = 64             # first tail length past the last home slot
    ARRAY_MIN = 1024            # smallest dense array capacity
    PREFETCH_SLOT = 16          # taps ahead: prefetch the index slots
    PREFETCH_CARD = 8           # taps ahead: prefetch the card the slot names
    TERM_SLOT_MASK = 0xFFFFFF   # tap_t.term_outcome bits 0-23

# An index position is ``h32 & mask``, so a capacity is at most 2**32 slots,
# which at load <= 1/2 holds 2**31 records; the slot stores index + 1 in 32 bits.
cdef uint64_t INDEX_CAP_MAX = 0x100000000
cdef uint64_t RECORDS_MAX = 0x7FFFFFFF
cdef uint64_t TERMINALS_MAX = TERM_SLOT_MASK + 1

include "money.pxi"
include "index.pxi"
include "gapset.pxi"
include "rating.pxi"
include "apply.pxi"
include "snapshot.pxi"


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
            append_terminal(self, terminal_id, klass, party_index)
        else:
            self.terms[<Py_ssize_t>slot].terminal_class = klass
            self.terms[<Py_ssize_t>slot].party_index = party_index

    def add_merchant_rule(self, int32_t party_index, int64_t effective_from_ms,
                          int64_t discount_bp):
        rules = [r for r in self.rules.get(party_index, []) if r[0] != effective_from_ms]
        rules.append((effective_from_ms, discount_bp))
        rules.sort()
        self.rules[party_index] = rules

    # Cards ---------------------------------------------------------------------

    def issue_card(self, uint64_t card_id, card_type, int64_t deposit_fen):
        """Create an ACTIVE card with balance 0; False if the id exists."""
        cdef card_t *c
        if card_type not in (1, 2, 3, 4):  # not an assert: -O must not drop it (it indexes)
            raise AssertionError(f"card_type must be 1..4, not {card_type!r}")
        if find_card(self, card_id) >= 0:
            return False
        reserve_cards(self, self.card_n + 1)
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
        k = find_card(self, cid)
        if k < 0:
            return None
        c = &self.cards[k]
        return (c.state, c.card_type, c.balance_fen, c.deposit_fen, c.blocked_at_ms)

    def adjust_balance(self, card_id, delta_fen):
        cdef int64_t k = card_slot(self, card_id)
        balance = self.cards[k].balance_fen + delta_fen  # exact (Python int), like the twin
        if not -0x8000000000000000 <= balance <= 0x7FFFFFFFFFFFFFFF:
            raise OverflowError(f"int64 overflow in money arithmetic: {balance}")
        self.cards[k].balance_fen = balance
        return self.cards[k].balance_fen

    def set_card_state(self, card_id, state, blocked_at_ms):
        cdef int64_t k = card_slot(self, card_id)
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
        reserve_cards(self, cards)
        reserve_taps(self, taps)
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
        k = find_card(self, cid)
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

    @staticmethod
    def first_invalid_tap(packed_taps):
        """Index of the first tap with terminal_seq 0 (malformed), else -1."""
        return taps_first_invalid(packed_taps)

    def repeated_results(self, terminal_id, packed_taps):
        """The packed results when every tap repeats a recorded one with the same body
        (a replayed batch: nothing to apply or journal), else None."""
        return ledger_repeated_results(self, terminal_id, packed_taps)

    def apply_batch(self, terminal_id, packed_taps, int64_t now_ms, uint64_t journal_seq):
        """Rate and apply every tap in order; return the packed results."""
        return ledger_apply_batch(self, terminal_id, packed_taps, now_ms, journal_seq)

    @staticmethod
    def count_statuses(packed_results):
        """Index 0: duplicates; index s: fresh results with status s."""
        return results_count_statuses(packed_results)

    # Checkpoints -----------------------------------------------------------------------

    def snapshot(self):
        """The whole state as raw bytes: header, config, terminals, rules, cards, taps
        and the taps' per-card chain links."""
        return ledger_snapshot(self)

    def restore(self, blob):
        """Replace the whole state with a ``snapshot()``; a bad blob changes nothing."""
        return ledger_restore(self, blob)
