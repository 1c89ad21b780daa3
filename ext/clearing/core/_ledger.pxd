# cython: language_level=3
"""C layout of the compiled ledger core (see _ledger.pyx; oracle: clearing/core/ledger_py.py).

Every entity is a fixed-size record in a dense, growable C array. Cards and tap
records are found through open-addressing hash indexes (see ``index_t``).
"""

cimport cython
from libc.stdint cimport int32_t, int64_t, uint8_t, uint32_t, uint64_t


ctypedef struct card_t:                 # 56 bytes
    uint64_t card_id
    int64_t balance_fen
    int64_t deposit_fen
    int64_t blocked_at_ms
    int64_t last_occurred_at_ms
    uint32_t last_route_id
    uint32_t last_tap                   # index + 1 of its newest tap record, 0: none
    uint8_t state
    uint8_t card_type
    uint8_t has_last_ride
    uint8_t reserved[5]                 # always 0 (snapshots are deterministic)


ctypedef struct tap_t:                  # 64 bytes: one cache line per deduplication record
    # terminal slot (index into ``Ledger.terms``, bits 0-23) | status << 24 (4 bits)
    # | charged_to << 28 (2 bits). The slot stands for the terminal_id: terminals are
    # never removed, so (slot, terminal_seq) is the (terminal_id, terminal_seq) key.
    uint32_t term_outcome
    uint32_t route_id
    uint64_t terminal_seq
    uint64_t card_id
    int64_t list_amount_fen
    int64_t occurred_at_ms
    int64_t charged_fen
    int64_t balance_after_fen
    uint64_t journal_seq


ctypedef struct terminal_t:             # 32 bytes
    uint32_t terminal_id
    int32_t party_index
    uint8_t terminal_class
    uint8_t reserved[7]                 # always 0
    uint64_t highest_seq
    uint64_t received_count


ctypedef struct gap_t:                  # numbers first..last never received
    uint64_t first
    uint64_t last


ctypedef struct gapset_t:               # one terminal's gaps, ascending, disjoint
    gap_t *ranges                       # malloc'd; derived from the records, not snapshotted
    uint64_t n
    uint64_t cap


ctypedef struct rule_t:                 # 24 bytes: one effective-dated merchant rule
    int32_t party_index
    uint32_t reserved                   # always 0
    int64_t effective_from_ms
    int64_t discount_bp


ctypedef struct config_t:               # 96 bytes, no padding
    int64_t max_tap_fen
    int64_t max_late_ms
    int64_t max_clock_skew_ms
    int64_t transfer_window_ms
    int64_t transfer_discount_fen
    int64_t liability_window_ms
    int64_t concession_bp[5]            # indexed by card_type 1..4; [0] unused
    int64_t min_boarding_balance_fen    # set_min_boarding_balance(), not configure()


# Open addressing with linear probing and no wrap-around: a key's home is
# ``h32 & mask`` (h32 = upper 32 bits of its splitmix64 hash) and its run may
# spill past the last home into a tail, so the table has ``end = capacity + tail``
# slots. A slot holds ``h32 << 32 | (record index + 1)``, 0 meaning empty: a
# probe reads a record only when all 32 hash bits match, and growth needs no
# record at all (doubling in place, see ``index_double``). Load <= 1/2.
ctypedef struct index_t:
    uint64_t *slots
    uint64_t mask                       # capacity - 1; capacity is a power of two
    uint64_t end                        # capacity + tail: number of slots


ctypedef struct result_t:               # one packed result before encoding
    int64_t charged_fen
    int64_t discount_fen
    int64_t balance_after_fen
    uint64_t journal_seq
    uint8_t status
    uint8_t charged_to
    uint8_t duplicate


@cython.final
cdef class Ledger:
    cdef config_t cfg
    cdef uint64_t seq_ahead_max         # configure(); 0: no bound (journals before it)

    cdef card_t *cards                  # dense, in issue order
    cdef uint64_t card_n
    cdef uint64_t card_cap
    cdef index_t card_index             # card_id -> index into cards

    cdef tap_t *taps                    # dense, in first-seen order
    cdef uint32_t *tap_prev             # per record: index + 1 of its card's previous one
    cdef uint64_t tap_n
    cdef uint64_t tap_cap
    cdef uint64_t tap_prev_cap
    cdef index_t tap_index              # (terminal slot, terminal_seq) -> index into taps

    cdef terminal_t *terms              # dense, in set_terminal order
    cdef gapset_t *gapsets              # per terminal slot, beside terms
    cdef uint64_t gapset_cap
    cdef uint64_t term_n
    cdef uint64_t term_cap
    cdef dict term_slot                 # terminal_id -> index into terms (once per batch)

    cdef dict rules                     # party_index -> [(effective_from_ms, discount_bp)], sorted

    cdef rule_t *batch_rules            # one POS batch's rules, fetched once per batch
    cdef uint64_t batch_rules_cap

    cdef uint64_t *crossings            # cards charged below the boarding minimum, in order
    cdef uint64_t crossing_n
    cdef uint64_t crossing_cap

    # Its C-level operations are module functions taking ``Ledger self`` (the .pxi files).
