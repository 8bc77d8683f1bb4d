/* On-disk layout of a database file: 8 KiB blocks, block 0 is the header block.
 *
 * Every block starts with the same 40-byte block header. The checksum covers the
 * whole block after the checksum field, and the header names the block's own number
 * and database id *inside* the checksummed area: a misdirected or stale write (the
 * right bytes at the wrong place) therefore fails verification instead of being read
 * as valid data. All integers are little-endian (irisrep_endian.h).
 *
 *   offset size field
 *   0      8    checksum   xxh3_64 of bytes [8, IR_BLOCK_SIZE)
 *   8      4    block_no   this block's own number
 *   12     4    db_id      the database this block belongs to
 *   16     1    type       IR_BT_* below
 *   17     1    level      0 for leaves, parent level = child level + 1
 *   18     2    count      entries in the payload
 *   20     2    used       payload bytes in use
 *   22     2    flags      reserved, 0
 *   24     4    link       overflow: next block of the chain; free: next free block
 *   28     4    reserved   0
 *   32     8    position   journal position of the block's last change (0: none)
 *   40     ...  payload
 *
 * Leaf payload:      count x { u16 key_len, key, u32 val_len, val }
 * Internal payload:  count x { u16 key_len, key, u32 child }; the first key is empty
 *                    and stands for "minus infinity": child i holds keys >= key i.
 * Overflow payload:  `used` bytes of a long value; `link` names the next block.
 *
 * Header block (block 0, type IR_BT_HEADER) payload:
 *   0  8 magic "IRISRPDB"    8  4 format version   12 4 block size   16 4 db_id
 *   20 4 root block          24 4 free-list head   28 4 free count   32 4 block count
 *   36 4 reserved            40 8 checkpoint position                48 8 generation
 *   56 8 transaction floor (journal position: no transaction open at the checkpoint
 *        started before it)
 */
#ifndef IRISREP_BLOCK_H
#define IRISREP_BLOCK_H

#include <stdint.h>
#include "irisrep_endian.h"
#define XXH_INLINE_ALL
#include "xxhash.h"

#define IR_BLOCK_SIZE 8192
#define IR_BLOCK_HEADER_SIZE 40
#define IR_BLOCK_PAYLOAD_MAX (IR_BLOCK_SIZE - IR_BLOCK_HEADER_SIZE)
#define IR_DB_FORMAT_VERSION 1

#define IR_BT_HEADER 1
#define IR_BT_LEAF 2
#define IR_BT_INTERNAL 3
#define IR_BT_OVERFLOW 4
#define IR_BT_FREE 5

#define IR_OFF_CHECKSUM 0
#define IR_OFF_BLOCK_NO 8
#define IR_OFF_DB_ID 12
#define IR_OFF_TYPE 16
#define IR_OFF_LEVEL 17
#define IR_OFF_COUNT 18
#define IR_OFF_USED 20
#define IR_OFF_FLAGS 22
#define IR_OFF_LINK 24
#define IR_OFF_POSITION 32

/* Header block payload offsets (relative to the payload start). */
#define IR_HDR_MAGIC 0
#define IR_HDR_VERSION 8
#define IR_HDR_BLOCK_SIZE 12
#define IR_HDR_DB_ID 16
#define IR_HDR_ROOT 20
#define IR_HDR_FREE_HEAD 24
#define IR_HDR_FREE_COUNT 28
#define IR_HDR_BLOCK_COUNT 32
#define IR_HDR_CHECKPOINT 40
#define IR_HDR_GENERATION 48
#define IR_HDR_TXN_FLOOR 56

static inline uint64_t ir_block_checksum(const unsigned char *block) {
    return (uint64_t)XXH3_64bits(block + 8, IR_BLOCK_SIZE - 8);
}

/* Write the header fields and then the checksum over them and the payload. */
static inline void ir_block_seal(unsigned char *block, uint32_t block_no, uint32_t db_id,
                                 uint8_t type, uint8_t level, uint16_t count, uint16_t used,
                                 uint32_t link, uint64_t position) {
    ir_put_u32(block + IR_OFF_BLOCK_NO, block_no);
    ir_put_u32(block + IR_OFF_DB_ID, db_id);
    block[IR_OFF_TYPE] = type;
    block[IR_OFF_LEVEL] = level;
    ir_put_u16(block + IR_OFF_COUNT, count);
    ir_put_u16(block + IR_OFF_USED, used);
    ir_put_u16(block + IR_OFF_FLAGS, 0);
    ir_put_u32(block + IR_OFF_LINK, link);
    ir_put_u32(block + 28, 0);
    ir_put_u64(block + IR_OFF_POSITION, position);
    ir_put_u64(block + IR_OFF_CHECKSUM, ir_block_checksum(block));
}

#endif
