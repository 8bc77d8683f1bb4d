/* Little-endian pack/unpack for on-disk and wire layouts.
 *
 * Every multi-byte integer irisrep writes to a file or a socket is little-endian,
 * whatever the host. These helpers use memcpy so that unaligned offsets are safe
 * and the compiler turns them into single loads/stores on x86-64 and arm64. */
#ifndef IRISREP_ENDIAN_H
#define IRISREP_ENDIAN_H

#include <stdint.h>
#include <string.h>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
#define IRISREP_BSWAP16(x) __builtin_bswap16(x)
#define IRISREP_BSWAP32(x) __builtin_bswap32(x)
#define IRISREP_BSWAP64(x) __builtin_bswap64(x)
#else
#define IRISREP_BSWAP16(x) (x)
#define IRISREP_BSWAP32(x) (x)
#define IRISREP_BSWAP64(x) (x)
#endif

static inline uint16_t ir_get_u16(const unsigned char *p) { uint16_t v; memcpy(&v, p, 2); return IRISREP_BSWAP16(v); }
static inline uint32_t ir_get_u32(const unsigned char *p) { uint32_t v; memcpy(&v, p, 4); return IRISREP_BSWAP32(v); }
static inline uint64_t ir_get_u64(const unsigned char *p) { uint64_t v; memcpy(&v, p, 8); return IRISREP_BSWAP64(v); }
static inline void ir_put_u16(unsigned char *p, uint16_t v) { v = IRISREP_BSWAP16(v); memcpy(p, &v, 2); }
static inline void ir_put_u32(unsigned char *p, uint32_t v) { v = IRISREP_BSWAP32(v); memcpy(p, &v, 4); }
static inline void ir_put_u64(unsigned char *p, uint64_t v) { v = IRISREP_BSWAP64(v); memcpy(p, &v, 8); }

#endif
