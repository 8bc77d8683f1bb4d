/* On-disk layout of the journal: frames of records (docs/journal-format.md is the
 * contract; src/irisrep/journalcodec.py is the readable reference codec). All integers
 * are little-endian (irisrep_endian.h); every checksum is xxh3_64 (seed 0).
 *
 * A position is a u64 byte offset in the journal *stream* (the frame areas of all
 * journal files, concatenated). Frames start at multiples of IR_JRNL_FRAME_ALIGN.
 *
 * Frame (IR_JRNL_FRAME_HEADER_SIZE-byte header, then stored_len payload bytes, then
 * zero padding up to a multiple of IR_JRNL_FRAME_ALIGN; see ir_jrnl_frame_length):
 *
 *   offset size field
 *   0      4    magic       "IRJF"
 *   4      2    version     IR_JRNL_VERSION
 *   6      2    flags       IR_JRNL_FRAME_ZSTD: the payload is one zstd frame of raw_len
 *                           bytes (with its content size); no other bit is defined
 *   8      8    epoch       mirror epoch (0 for a lone instance)
 *   16     8    position    stream position of this frame's first header byte
 *   24     4    count       records in the payload (>= 1)
 *   28     4    raw_len     payload bytes after decompression (1..IR_JRNL_FRAME_BYTES_MAX)
 *   32     4    stored_len  payload bytes in the stream (1..IR_JRNL_FRAME_BYTES_MAX;
 *                           == raw_len unless IR_JRNL_FRAME_ZSTD)
 *   36     4    reserved    0
 *   40     8    checksum    xxh3_64 of header bytes [0, 40) followed by the stored payload
 *   48     ...  payload
 *
 * The checksum binds the position into the frame: the right bytes left over from an
 * earlier use of the same place (a stale frame) verify but name the wrong position.
 * Readers check lengths before anything else and never decompress more than raw_len.
 *
 * Record (the raw payload is records back to back, `count` of them, filling it exactly):
 *
 *   offset size field
 *   0      1    type        IR_JRNL_SET .. IR_JRNL_MARKER
 *   1      1    flags       IR_JRNL_HAD_BEFORE | IR_JRNL_UNDO
 *   2      2    key_len     <= IR_JRNL_KEY_MAX (0 for TSTART/TCOMMIT/TROLLBACK/MARKER)
 *   4      4    db_id       0 for transaction records
 *   8      8    txn         transaction id, 0 outside a transaction
 *   16     4    value_len   <= IR_JRNL_RECORD_BYTES_MAX
 *   20     4    before_len  <= IR_JRNL_RECORD_BYTES_MAX
 *   24     ...  key, value, before
 *
 * KILL's before is the killed subtree: u32 count, then count x (u16 key_len, key,
 * u32 value_len, value) in key order. MARKER's value is UTF-8 text.
 *
 * File header (IR_JRNL_FILE_HEADER_SIZE bytes at offset 0; frames follow it):
 *
 *   0      8    magic       "IRISJRNL"
 *   8      4    version     IR_JRNL_VERSION
 *   12     4    reserved    0
 *   16     8    sequence    1, 2, ... (file number in the stream)
 *   24     8    start       stream position of the first frame byte of this file
 *   32     8    prev_end    last frame checksum of the previous file (0 for the first)
 *   40     8    created     unix ns
 *   48     4040 reserved    zeros
 *   4088   8    checksum    xxh3_64 of bytes [0, 4088)
 */
#ifndef IRISREP_JOURNAL_H
#define IRISREP_JOURNAL_H

#include <stdint.h>
#include "irisrep_endian.h"
#define XXH_INLINE_ALL
#include "xxhash.h"

#define IR_JRNL_VERSION 1
#define IR_JRNL_FRAME_MAGIC "IRJF"
#define IR_JRNL_FRAME_MAGIC_SIZE 4
#define IR_JRNL_FRAME_HEADER_SIZE 48
#define IR_JRNL_FRAME_ALIGN 8
#define IR_JRNL_FRAME_BYTES_MAX (48 * 1024 * 1024)
#define IR_JRNL_RECORD_HEADER_SIZE 24
#define IR_JRNL_RECORD_BYTES_MAX (32 * 1024 * 1024)
#define IR_JRNL_KEY_MAX 511

/* Frame flags. */
#define IR_JRNL_FRAME_ZSTD 1
#define IR_JRNL_FRAME_FLAGS_KNOWN IR_JRNL_FRAME_ZSTD

/* Record types and flags. */
#define IR_JRNL_SET 1
#define IR_JRNL_KILL 2
#define IR_JRNL_ZKILL 3
#define IR_JRNL_INCREMENT 4
#define IR_JRNL_TSTART 5
#define IR_JRNL_TCOMMIT 6
#define IR_JRNL_TROLLBACK 7
#define IR_JRNL_MARKER 8
#define IR_JRNL_HAD_BEFORE 1
#define IR_JRNL_UNDO 2
#define IR_JRNL_RECORD_FLAGS_KNOWN (IR_JRNL_HAD_BEFORE | IR_JRNL_UNDO)

/* Frame header offsets. */
#define IR_JRNL_OFF_MAGIC 0
#define IR_JRNL_OFF_VERSION 4
#define IR_JRNL_OFF_FLAGS 6
#define IR_JRNL_OFF_EPOCH 8
#define IR_JRNL_OFF_POSITION 16
#define IR_JRNL_OFF_COUNT 24
#define IR_JRNL_OFF_RAW_LEN 28
#define IR_JRNL_OFF_STORED_LEN 32
#define IR_JRNL_OFF_RESERVED 36
#define IR_JRNL_OFF_CHECKSUM 40

/* Record header offsets. */
#define IR_JRNL_REC_TYPE 0
#define IR_JRNL_REC_FLAGS 1
#define IR_JRNL_REC_KEY_LEN 2
#define IR_JRNL_REC_DB_ID 4
#define IR_JRNL_REC_TXN 8
#define IR_JRNL_REC_VALUE_LEN 16
#define IR_JRNL_REC_BEFORE_LEN 20

/* File header. */
#define IR_JRNL_FILE_MAGIC "IRISJRNL"
#define IR_JRNL_FILE_HEADER_SIZE 4096
#define IR_JRNL_FILE_OFF_MAGIC 0
#define IR_JRNL_FILE_OFF_VERSION 8
#define IR_JRNL_FILE_OFF_SEQUENCE 16
#define IR_JRNL_FILE_OFF_START 24
#define IR_JRNL_FILE_OFF_PREV_END 32
#define IR_JRNL_FILE_OFF_CREATED 40
#define IR_JRNL_FILE_OFF_CHECKSUM 4088

/* Stream bytes a frame with stored_len payload bytes occupies (header and padding). */
static inline uint64_t ir_jrnl_frame_length(uint64_t stored_len) {
    uint64_t n = IR_JRNL_FRAME_HEADER_SIZE + stored_len;
    return (n + IR_JRNL_FRAME_ALIGN - 1) & ~(uint64_t)(IR_JRNL_FRAME_ALIGN - 1);
}

/* xxh3_64 of header bytes [0, 40) followed by the stored payload. */
static inline uint64_t ir_jrnl_frame_checksum(const unsigned char *header,
                                              const unsigned char *stored, size_t stored_len) {
    XXH3_state_t st;
    XXH3_64bits_reset(&st);
    XXH3_64bits_update(&st, header, IR_JRNL_OFF_CHECKSUM);
    XXH3_64bits_update(&st, stored, stored_len);
    return (uint64_t)XXH3_64bits_digest(&st);
}

/* Write a complete frame header at `frame`, whose stored payload already follows it
 * at frame + IR_JRNL_FRAME_HEADER_SIZE: the fields, then the checksum over them. */
static inline void ir_jrnl_seal_frame(unsigned char *frame, uint16_t flags, uint64_t epoch,
                                      uint64_t position, uint32_t count, uint32_t raw_len,
                                      uint32_t stored_len) {
    memcpy(frame + IR_JRNL_OFF_MAGIC, IR_JRNL_FRAME_MAGIC, IR_JRNL_FRAME_MAGIC_SIZE);
    ir_put_u16(frame + IR_JRNL_OFF_VERSION, IR_JRNL_VERSION);
    ir_put_u16(frame + IR_JRNL_OFF_FLAGS, flags);
    ir_put_u64(frame + IR_JRNL_OFF_EPOCH, epoch);
    ir_put_u64(frame + IR_JRNL_OFF_POSITION, position);
    ir_put_u32(frame + IR_JRNL_OFF_COUNT, count);
    ir_put_u32(frame + IR_JRNL_OFF_RAW_LEN, raw_len);
    ir_put_u32(frame + IR_JRNL_OFF_STORED_LEN, stored_len);
    ir_put_u32(frame + IR_JRNL_OFF_RESERVED, 0);
    ir_put_u64(frame + IR_JRNL_OFF_CHECKSUM,
               ir_jrnl_frame_checksum(frame, frame + IR_JRNL_FRAME_HEADER_SIZE, stored_len));
}

/* Write one record (header, key, value, before) at p; returns the byte after it. The
 * caller has checked every length against the limits above and the space at p. */
static inline unsigned char *ir_jrnl_put_record(unsigned char *p, uint8_t type, uint8_t flags,
                                                uint32_t db_id, uint64_t txn,
                                                const void *key, uint16_t key_len,
                                                const void *value, uint32_t value_len,
                                                const void *before, uint32_t before_len) {
    p[IR_JRNL_REC_TYPE] = type;
    p[IR_JRNL_REC_FLAGS] = flags;
    ir_put_u16(p + IR_JRNL_REC_KEY_LEN, key_len);
    ir_put_u32(p + IR_JRNL_REC_DB_ID, db_id);
    ir_put_u64(p + IR_JRNL_REC_TXN, txn);
    ir_put_u32(p + IR_JRNL_REC_VALUE_LEN, value_len);
    ir_put_u32(p + IR_JRNL_REC_BEFORE_LEN, before_len);
    p += IR_JRNL_RECORD_HEADER_SIZE;
    memcpy(p, key, key_len);
    p += key_len;
    memcpy(p, value, value_len);
    p += value_len;
    memcpy(p, before, before_len);
    return p + before_len;
}

/* 1 if all n bytes at p are zero. */
static inline int ir_jrnl_all_zero(const unsigned char *p, size_t n) {
    unsigned char acc = 0;
    for (size_t i = 0; i < n; i++) acc |= p[i];
    return acc == 0;
}

#endif
