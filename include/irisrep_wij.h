/* On-disk layout of the write image journal (WIJ): one file per instance,
 * `<instance>/irisrep.wij`, written with O_DIRECT where available, so every write
 * offset and length is a multiple of IR_WIJ_ALIGN. All integers are little-endian
 * (irisrep_endian.h); every checksum is xxh3_64 (seed 0).
 *
 * The file, by offset:
 *
 *   0              header slot 0   (IR_WIJ_SLOT_SIZE bytes)
 *   4096           header slot 1   (IR_WIJ_SLOT_SIZE bytes)
 *   8192           directory: `entries` x 16-byte entries, zero-padded to a multiple
 *                  of IR_WIJ_ALIGN (dir_bytes = ir_wij_dir_bytes(entries))
 *   8192+dir_bytes images: `entries` x IR_BLOCK_SIZE bytes, in directory order
 *
 * Header slot (4096 bytes; bytes past IR_WIJ_HDR_END are zero):
 *
 *   offset size field
 *   0      8    checksum      xxh3_64 of bytes [8, IR_WIJ_SLOT_SIZE) of this slot
 *   8      8    magic         "IRISWIJ1"
 *   16     4    version       IR_WIJ_VERSION
 *   20     4    state         IR_WIJ_EMPTY or IR_WIJ_ACTIVE
 *   24     8    sequence      +1 on every header write; the slot written is
 *                             sequence % 2, so a torn header write damages only one
 *                             slot and the other still holds the previous state
 *   32     8    cycle         number of the cycle the directory belongs to
 *   40     4    entries       directory entries (= images) of that cycle
 *   44     4    block_size    IR_BLOCK_SIZE
 *   48     8    checkpoint    journal position the cycle's block set is consistent with
 *   56     8    dir_checksum  xxh3_64 of the directory's entries * 16 bytes (no padding)
 *   64     4    running       1 while an instance has the WIJ open; 0 after a clean close
 *   68     4    reserved      0
 *
 * Reading: the valid slot (checksum and magic both right) with the highest sequence
 * is the header. Neither valid: the WIJ is corrupt and nothing is guessed.
 *
 * Directory entry (16 bytes):
 *
 *   0      4    db_id         database the image belongs to
 *   4      4    block_no      block number in that database
 *   8      8    checksum      xxh3_64 of (db_id u32 LE, block_no u32 LE, the 8 KiB image)
 *
 * Protocol of a cycle (state on disk after each durable step):
 *   1. directory + images, fdatasync            header still EMPTY: crash -> all old
 *   2. header ACTIVE (cycle+1), fdatasync       from here recovery makes all new
 *   3. images into the database files, fdatasync each
 *   4. header EMPTY (same cycle), fdatasync
 * Recovery with state ACTIVE verifies every entry (entry checksum and the image's own
 * block checksum, number and database id) before writing any of them.
 */
#ifndef IRISREP_WIJ_H
#define IRISREP_WIJ_H

#include <stdint.h>
#include "irisrep_endian.h"
#include "irisrep_block.h"

#define IR_WIJ_MAGIC "IRISWIJ1"
#define IR_WIJ_MAGIC_SIZE 8
#define IR_WIJ_VERSION 1
#define IR_WIJ_ALIGN 4096
#define IR_WIJ_SLOT_SIZE 4096
#define IR_WIJ_SLOT_COUNT 2
#define IR_WIJ_DIR_OFFSET 8192
#define IR_WIJ_ENTRY_SIZE 16
#define IR_WIJ_BLOCKS_MAX 65536

#define IR_WIJ_EMPTY 0
#define IR_WIJ_ACTIVE 1

/* Header slot offsets. */
#define IR_WIJ_OFF_CHECKSUM 0
#define IR_WIJ_OFF_MAGIC 8
#define IR_WIJ_OFF_VERSION 16
#define IR_WIJ_OFF_STATE 20
#define IR_WIJ_OFF_SEQUENCE 24
#define IR_WIJ_OFF_CYCLE 32
#define IR_WIJ_OFF_ENTRIES 40
#define IR_WIJ_OFF_BLOCK_SIZE 44
#define IR_WIJ_OFF_CHECKPOINT 48
#define IR_WIJ_OFF_DIR_CHECKSUM 56
#define IR_WIJ_OFF_RUNNING 64
#define IR_WIJ_HDR_END 72

/* Directory entry offsets. */
#define IR_WIJ_ENT_DB_ID 0
#define IR_WIJ_ENT_BLOCK_NO 4
#define IR_WIJ_ENT_CHECKSUM 8

/* Bytes the directory of `entries` entries occupies (padded to IR_WIJ_ALIGN). */
static inline uint64_t ir_wij_dir_bytes(uint32_t entries) {
    uint64_t n = (uint64_t)entries * IR_WIJ_ENTRY_SIZE;
    return (n + IR_WIJ_ALIGN - 1) & ~(uint64_t)(IR_WIJ_ALIGN - 1);
}

/* Offset of image `index` for a directory of `entries` entries. */
static inline uint64_t ir_wij_image_offset(uint32_t entries, uint32_t index) {
    return IR_WIJ_DIR_OFFSET + ir_wij_dir_bytes(entries) + (uint64_t)index * IR_BLOCK_SIZE;
}

static inline uint64_t ir_wij_slot_checksum(const unsigned char *slot) {
    return (uint64_t)XXH3_64bits(slot + 8, IR_WIJ_SLOT_SIZE - 8);
}

/* Entry checksum: binds the image to its database id and block number. */
static inline uint64_t ir_wij_entry_checksum(uint32_t db_id, uint32_t block_no,
                                             const unsigned char *image) {
    XXH3_state_t st;
    unsigned char prefix[8];
    ir_put_u32(prefix, db_id);
    ir_put_u32(prefix + 4, block_no);
    XXH3_64bits_reset(&st);
    XXH3_64bits_update(&st, prefix, 8);
    XXH3_64bits_update(&st, image, IR_BLOCK_SIZE);
    return (uint64_t)XXH3_64bits_digest(&st);
}

#endif
