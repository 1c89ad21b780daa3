# The C helpers of clearing_core.h, as Cython sees them (included by _ledger and _summary).
from libc.stdint cimport int64_t, uint32_t, uint64_t

cdef extern from "clearing/core/clearing_core.h":
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
    void cc_acc(int64_t *total, int64_t *carry, int k, int64_t x) nogil
    bint cc_sum_is(int64_t list, int64_t charged, int64_t discount) nogil
    int64_t cc_floor_mod(int64_t x, int64_t m) nogil
    uint64_t cc_sat_add_u64(uint64_t a, uint64_t b) nogil
