/* C helpers shared by the compiled ledger core and the batch summariser:
   byte order, hashing, checked int64 arithmetic, memory regions. */
#ifndef CLEARING_CORE_H
#define CLEARING_CORE_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__BYTE_ORDER__) && defined(__ORDER_LITTLE_ENDIAN__) \
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
static inline void cc_region_hint(void *p, size_t bytes) {
#ifdef MADV_HUGEPAGE
    if (bytes >= ((size_t)2 << 20)) (void)madvise(p, bytes, MADV_HUGEPAGE);
#endif
}
static inline void *cc_region_alloc(size_t bytes) {
    void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return NULL;
    cc_region_hint(p, bytes);
    return p;
}
static inline void *cc_region_grow(void *p, size_t old_bytes, size_t new_bytes) {
    void *q;
    if (p == NULL) return cc_region_alloc(new_bytes);
    q = mremap(p, old_bytes, new_bytes, MREMAP_MAYMOVE);
    if (q == MAP_FAILED) return NULL;
    cc_region_hint(q, new_bytes);
    return q;
}
static inline void cc_region_free(void *p, size_t bytes) { if (p != NULL) (void)munmap(p, bytes); }
#else
static inline void *cc_region_alloc(size_t bytes) { return calloc(1, bytes); }
static inline void *cc_region_grow(void *p, size_t old_bytes, size_t new_bytes) {
    char *q = (char *)realloc(p, new_bytes);
    if (q != NULL) memset(q + old_bytes, 0, new_bytes - old_bytes);
    return q;
}
static inline void cc_region_free(void *p, size_t bytes) { (void)bytes; free(p); }
#endif

static inline int cc_cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

/* The batch summariser's exact accumulation (clearing.core._summary). */
/* total[k] += x exactly: on a wrap, count it in carry[k] (see _summary.pyx). */
static inline void cc_acc(int64_t *total, int64_t *carry, int k, int64_t x) {
    if (__builtin_add_overflow(total[k], x, &total[k])) carry[k] += (x < 0) ? -1 : 1;
}
/* Exact "list == charged + discount" for charged, discount >= 0 (the sum may
   leave int64, when no int64 list equals it). */
static inline int cc_sum_is(int64_t list, int64_t charged, int64_t discount) {
    int64_t sum;
    return !__builtin_add_overflow(charged, discount, &sum) && sum == list;
}
/* Python's x % m for m > 0 (C's % truncates toward zero). */
static inline int64_t cc_floor_mod(int64_t x, int64_t m) {
    int64_t r = x % m; return r < 0 ? r + m : r;
}
/* a + b, or UINT64_MAX where that overflows. */
static inline uint64_t cc_sat_add_u64(uint64_t a, uint64_t b) {
    uint64_t r; return __builtin_add_overflow(a, b, &r) ? UINT64_MAX : r;
}

#endif /* CLEARING_CORE_H */
