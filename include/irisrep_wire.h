/* Wire layout of the mirror transport: framed TCP between mirror members
 * (docs/wire-format.md is the contract; src/irisrep/wire.py is the readable reference
 * codec). All integers are little-endian (irisrep_endian.h); the checksum is xxh3_64
 * (seed 0).
 *
 * Frame (IR_WIRE_FRAME_HEADER_BYTES-byte header, then `length` payload bytes; no
 * padding, frames follow each other on the stream):
 *
 *   offset size field
 *   0      4    magic       "IRWF"
 *   4      2    version     IR_WIRE_VERSION
 *   6      2    type        IR_WIRE_HELLO .. IR_WIRE_STATUS
 *   8      2    flags       IR_WIRE_ZSTD (only on JOURNAL and STATUS); no other bit
 *   10     2    reserved    0
 *   12     8    epoch       the sender's mirror epoch (0 during the handshake)
 *   20     4    length      payload bytes on the wire, within the type's bounds and
 *                           never above IR_WIRE_FRAME_BYTES_MAX
 *   24     8    checksum    xxh3_64 of header bytes [0, 24) followed by the payload
 *   32     ...  payload
 *
 * A reader checks, in this order, and stops at the first failure: a whole header
 * (truncated), magic, version, type, flags and reserved (reserved), length (against
 * the bounds of the type: ir_wire_bounds); only then does it allocate `length` bytes
 * and read them (truncated), verify the checksum (checksum), and for a compressed
 * payload check the raw size against the bounds (length) and decompress at most
 * that many bytes (zstd).
 *
 * Compressed payload (flags & IR_WIRE_ZSTD): a u32 raw_len (the payload size after
 * decompression, within the bounds of the type) followed by one zstd frame that
 * decompresses to exactly raw_len bytes.
 *
 * Payloads by type (raw, that is after decompression):
 *   HELLO            name mirror, name member, nonce (IR_WIRE_NONCE_BYTES); a name is
 *                    a u8 length (1..IR_WIRE_NAME_BYTES_MAX) then ASCII [A-Za-z0-9_.-]
 *   CHALLENGE        nonce, then mac (the server's proof; offsets below)
 *   RESPONSE         mac (the client's proof), IR_WIRE_MAC_BYTES
 *   WELCOME          name (the server's member name)
 *   REJECT           UTF-8 reason, 1..IR_WIRE_REJECT_BYTES_MAX bytes
 *   JOURNAL          u32 count (>= 1), then count journal frames back to back exactly
 *                    as the journal wrote them (irisrep_journal.h, padding included)
 *   ACK              position and level (offsets below)
 *   HEARTBEAT        u64 sent: an opaque value the peer may echo (round trip)
 *   CATCHUP_REQUEST  u64 from: the stream position to send from
 *   STATUS           a UTF-8 JSON object, 2..IR_WIRE_STATUS_BYTES_MAX bytes
 *
 * CHALLENGE payload:
 *
 *   offset size field
 *   0      32   nonce       the server's nonce
 *   32     32   mac         HMAC-SHA256 proof of the mirror key (docs/wire-format.md)
 *
 * ACK payload:
 *
 *   offset size field
 *   0      8    position    stream position acknowledged (end of the last frame)
 *   8      1    level       IR_WIRE_ACK_RECEIVED, _DURABLE or _APPLIED
 */
#ifndef IRISREP_WIRE_H
#define IRISREP_WIRE_H

#include <stdint.h>
#include <string.h>
#include "irisrep_endian.h"
#define XXH_INLINE_ALL
#include "xxhash.h"

#define IR_WIRE_MAGIC "IRWF"
#define IR_WIRE_MAGIC_SIZE 4
#define IR_WIRE_VERSION 1
#define IR_WIRE_FRAME_HEADER_BYTES 32
#define IR_WIRE_FRAME_BYTES_MAX (64 * 1024 * 1024)
#define IR_WIRE_ZSTD_PREFIX_BYTES 4
#define IR_WIRE_NONCE_BYTES 32
#define IR_WIRE_MAC_BYTES 32
#define IR_WIRE_NAME_BYTES_MAX 64
#define IR_WIRE_REJECT_BYTES_MAX 256
#define IR_WIRE_STATUS_BYTES_MAX (64 * 1024)
#define IR_WIRE_JOURNAL_PAYLOAD_BYTES_MIN (4 + 48)

/* Frame types. */
#define IR_WIRE_HELLO 1
#define IR_WIRE_CHALLENGE 2
#define IR_WIRE_RESPONSE 3
#define IR_WIRE_WELCOME 4
#define IR_WIRE_REJECT 5
#define IR_WIRE_JOURNAL 6
#define IR_WIRE_ACK 7
#define IR_WIRE_HEARTBEAT 8
#define IR_WIRE_CATCHUP_REQUEST 9
#define IR_WIRE_STATUS 10
#define IR_WIRE_TYPE_MIN IR_WIRE_HELLO
#define IR_WIRE_TYPE_MAX IR_WIRE_STATUS

/* Frame flags. */
#define IR_WIRE_ZSTD 1
#define IR_WIRE_FLAGS_KNOWN IR_WIRE_ZSTD

/* Ack levels. */
#define IR_WIRE_ACK_RECEIVED 1
#define IR_WIRE_ACK_DURABLE 2
#define IR_WIRE_ACK_APPLIED 3

/* Frame header offsets. */
#define IR_WIRE_OFF_MAGIC 0
#define IR_WIRE_OFF_VERSION 4
#define IR_WIRE_OFF_TYPE 6
#define IR_WIRE_OFF_FLAGS 8
#define IR_WIRE_OFF_RESERVED 10
#define IR_WIRE_OFF_EPOCH 12
#define IR_WIRE_OFF_LENGTH 20
#define IR_WIRE_OFF_CHECKSUM 24

/* Payload offsets. */
#define IR_WIRE_CHALLENGE_OFF_NONCE 0
#define IR_WIRE_CHALLENGE_OFF_MAC 32
#define IR_WIRE_ACK_OFF_POSITION 0
#define IR_WIRE_ACK_OFF_LEVEL 8
#define IR_WIRE_ACK_PAYLOAD_BYTES 9

/* Why a header was refused (the reasons of wire.WIRE_ERROR_REASONS). */
#define IR_WIRE_OK 0
#define IR_WIRE_E_TRUNCATED 1
#define IR_WIRE_E_MAGIC 2
#define IR_WIRE_E_VERSION 3
#define IR_WIRE_E_TYPE 4
#define IR_WIRE_E_RESERVED 5
#define IR_WIRE_E_LENGTH 6

/* Raw payload bounds of a known type (min and max bytes, inclusive); 0 if unknown.
 * Types that may be compressed return 1 in *compressible. */
static inline int ir_wire_bounds(unsigned type, uint32_t *lo, uint32_t *hi, int *compressible) {
    *compressible = 0;
    switch (type) {
    case IR_WIRE_HELLO:
        *lo = 2 * 2 + IR_WIRE_NONCE_BYTES;
        *hi = 2 * (1 + IR_WIRE_NAME_BYTES_MAX) + IR_WIRE_NONCE_BYTES;
        return 1;
    case IR_WIRE_CHALLENGE: *lo = *hi = IR_WIRE_NONCE_BYTES + IR_WIRE_MAC_BYTES; return 1;
    case IR_WIRE_RESPONSE: *lo = *hi = IR_WIRE_MAC_BYTES; return 1;
    case IR_WIRE_WELCOME: *lo = 2; *hi = 1 + IR_WIRE_NAME_BYTES_MAX; return 1;
    case IR_WIRE_REJECT: *lo = 1; *hi = IR_WIRE_REJECT_BYTES_MAX; return 1;
    case IR_WIRE_JOURNAL:
        *lo = IR_WIRE_JOURNAL_PAYLOAD_BYTES_MIN;
        *hi = IR_WIRE_FRAME_BYTES_MAX;
        *compressible = 1;
        return 1;
    case IR_WIRE_ACK: *lo = *hi = IR_WIRE_ACK_PAYLOAD_BYTES; return 1;
    case IR_WIRE_HEARTBEAT: *lo = *hi = 8; return 1;
    case IR_WIRE_CATCHUP_REQUEST: *lo = *hi = 8; return 1;
    case IR_WIRE_STATUS:
        *lo = 2;
        *hi = IR_WIRE_STATUS_BYTES_MAX;
        *compressible = 1;
        return 1;
    default: return 0;
    }
}

/* Check the n bytes at h as a frame header (n may be short); IR_WIRE_OK or the first
 * IR_WIRE_E_* that fails. Reads nothing past h + n. */
static inline int ir_wire_check_header(const unsigned char *h, size_t n) {
    uint32_t lo, hi, length;
    uint16_t flags;
    int compressible;
    if (n < IR_WIRE_FRAME_HEADER_BYTES) return IR_WIRE_E_TRUNCATED;
    if (memcmp(h + IR_WIRE_OFF_MAGIC, IR_WIRE_MAGIC, IR_WIRE_MAGIC_SIZE) != 0)
        return IR_WIRE_E_MAGIC;
    if (ir_get_u16(h + IR_WIRE_OFF_VERSION) != IR_WIRE_VERSION) return IR_WIRE_E_VERSION;
    if (!ir_wire_bounds(ir_get_u16(h + IR_WIRE_OFF_TYPE), &lo, &hi, &compressible))
        return IR_WIRE_E_TYPE;
    flags = ir_get_u16(h + IR_WIRE_OFF_FLAGS);
    if ((flags & ~IR_WIRE_FLAGS_KNOWN) || ir_get_u16(h + IR_WIRE_OFF_RESERVED) != 0)
        return IR_WIRE_E_RESERVED;
    if ((flags & IR_WIRE_ZSTD) && !compressible) return IR_WIRE_E_RESERVED;
    length = ir_get_u32(h + IR_WIRE_OFF_LENGTH);
    if (flags & IR_WIRE_ZSTD) {
        if (length <= IR_WIRE_ZSTD_PREFIX_BYTES || length > hi) return IR_WIRE_E_LENGTH;
    } else if (length < lo || length > hi) {
        return IR_WIRE_E_LENGTH;
    }
    return IR_WIRE_OK;
}

/* xxh3_64 of header bytes [0, 24) followed by the payload. */
static inline uint64_t ir_wire_checksum(const unsigned char *header,
                                        const unsigned char *payload, size_t length) {
    XXH3_state_t st;
    XXH3_64bits_reset(&st);
    XXH3_64bits_update(&st, header, IR_WIRE_OFF_CHECKSUM);
    XXH3_64bits_update(&st, payload, length);
    return (uint64_t)XXH3_64bits_digest(&st);
}

/* Write a complete header at `frame`, whose payload of `length` bytes already follows
 * it at frame + IR_WIRE_FRAME_HEADER_BYTES: the fields, then the checksum. */
static inline void ir_wire_seal(unsigned char *frame, uint16_t type, uint16_t flags,
                                uint64_t epoch, uint32_t length) {
    memcpy(frame + IR_WIRE_OFF_MAGIC, IR_WIRE_MAGIC, IR_WIRE_MAGIC_SIZE);
    ir_put_u16(frame + IR_WIRE_OFF_VERSION, IR_WIRE_VERSION);
    ir_put_u16(frame + IR_WIRE_OFF_TYPE, type);
    ir_put_u16(frame + IR_WIRE_OFF_FLAGS, flags);
    ir_put_u16(frame + IR_WIRE_OFF_RESERVED, 0);
    ir_put_u64(frame + IR_WIRE_OFF_EPOCH, epoch);
    ir_put_u32(frame + IR_WIRE_OFF_LENGTH, length);
    ir_put_u64(frame + IR_WIRE_OFF_CHECKSUM,
               ir_wire_checksum(frame, frame + IR_WIRE_FRAME_HEADER_BYTES, length));
}

#endif
