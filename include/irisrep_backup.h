/* On-disk layout of a backup file (`irisrep backup create`; docs/backup.md): every
 * database of an instance at one checkpoint (a section each), full or only the
 * blocks changed since the previous backup of its chain, plus the journal the images
 * need (once), in one self-describing file. Version 2; version 1 held one database
 * (DB), with no section table: its header alone described it. Written as `NAME.part`, fsynced, then renamed to NAME (`*.irbk`) and the
 * directory fsynced: a visible backup file is always complete. All integers are
 * little-endian (irisrep_endian.h); every checksum is xxh3_64.
 *
 * The file, by offset:
 *
 *   0                 header (IR_BACKUP_HEADER_BYTES)
 *   4096              block entries, section after section: each section's
 *                     `blocks_stored` x (16-byte entry, stored bytes), block
 *                     numbers strictly increasing within the section
 *   journal_offset    journal entries: `journal_chunks` x (24-byte entry, stored
 *                     bytes); their raw bytes are the journal stream's frames from
 *                     `journal_start` to `journal_end`, byte for byte
 *   manifest_offset   manifests, section after section: the section's
 *                     `block_count` x u64, the checksum of every block of the
 *                     database at this backup (stored or not); what the next
 *                     incremental compares against
 *   sections_offset   section table: `section_count` x IR_BACKUP_SECTION_BYTES
 *                     (version 2; in version 1 the manifest ends the file)
 *   file_bytes        end of file
 *
 * Header (4096 bytes; bytes from IR_BACKUP_HDR_END to 4088 are zero). The totals
 * are the whole file's: block_count and blocks_stored sum the sections, checkpoint
 * is the latest section's, txn_floor and journal_start the earliest:
 *
 *   offset size field
 *   0      8    magic              "IRISBKUP"
 *   8      4    version            IR_BACKUP_VERSION
 *   12     4    kind               IR_BACKUP_KIND_FULL or IR_BACKUP_KIND_INCREMENTAL
 *   16     4    block_size         IR_BLOCK_SIZE
 *   20     4    db_id              DB's id (the first section's; keys the chain)
 *   24     4    block_count        blocks of all the databases at this backup
 *   28     4    seq                0 for a full backup, k for the k-th incremental
 *   32     8    backup_id          random, nonzero
 *   40     8    parent_id          the previous backup of the chain (0 for a full)
 *   48     8    chain_id           the chain's full backup's backup_id
 *   56     8    checkpoint         journal position the blocks reflect exactly
 *   64     8    txn_floor          no transaction open at the checkpoint began before
 *   72     8    journal_start      first embedded frame: min(checkpoint, txn_floor)
 *   80     8    journal_end        position after the last embedded frame
 *   88     8    open_position      journal end when the window opened (after the
 *                                  backup-start MARKER if one was written): every
 *                                  frame before it was built before time_start
 *   96     8    time_start         unix ns when the window opened
 *   104    8    time_end           unix ns when the copy was complete
 *   112    4    blocks_stored      block entries
 *   116    4    journal_chunks     journal entries
 *   120    8    journal_offset     file offset of the first journal entry
 *   128    8    manifest_offset    file offset of the manifest
 *   136    8    manifest_checksum  xxh3_64 of all the manifests' bytes
 *   144    8    file_bytes         size of the whole file
 *   152    8    epoch              mirror epoch of the journal at the backup
 *   160    4    flags              IR_BACKUP_F_* bits
 *   164    4    reserved           0
 *   168    128  parent_name        the parent backup's file name, UTF-8, NUL-padded
 *   296    1024 source             the instance directory backed up, UTF-8, NUL-padded
 *   1320   4    section_count      databases in the file (version 2)
 *   1324   4    reserved           0
 *   1328   8    sections_offset    file offset of the section table (version 2)
 *   1336   8    sections_checksum  xxh3_64 of the section table (version 2)
 *   1344   2744 reserved           0
 *   4088   8    checksum           xxh3_64 of header bytes [0, 4088)
 *
 * Section (IR_BACKUP_SECTION_BYTES; bytes from 104 on are zero):
 *
 *   0      32   name               database name, NUL-padded
 *   32     4    db_id              its id (database_id(name), block 0's)
 *   36     4    flags              IR_BACKUP_S_* bits
 *   40     8    block_count        blocks of the database at this backup
 *   48     8    blocks_stored      its block entries
 *   56     8    blocks_offset      file offset of its first block entry
 *   64     8    blocks_end         file offset after its last block entry
 *   72     8    manifest_offset    file offset of its manifest
 *   80     8    manifest_checksum  xxh3_64 of its manifest's bytes
 *   88     8    checkpoint         journal position its blocks reflect exactly
 *   96     8    txn_floor          no transaction open at its checkpoint began before
 *
 * Block entry (16 bytes, then `stored_len` bytes):
 *
 *   0      4    block_no           block number in the database
 *   4      4    stored_len         IR_BLOCK_SIZE: the image raw; less: one zstd frame
 *   8      8    checksum           xxh3_64 of the 8 KiB image, seed block_no
 *
 * Journal entry (24 bytes, then `stored_len` bytes):
 *
 *   0      8    position           stream position of the chunk's first frame
 *   8      4    raw_len            bytes of whole frames in the chunk
 *   12     4    stored_len         raw_len: raw; less: one zstd frame of raw_len bytes
 *   16     8    checksum           xxh3_64 of the raw bytes, seed position
 *
 * A manifest value is the block entry checksum of that block (the all-zero image's
 * for a block never written), so an incremental stores exactly the blocks whose
 * value differs from its parent's manifest, and those past the parent's count.
 */
#ifndef IRISREP_BACKUP_H
#define IRISREP_BACKUP_H

#include <stdint.h>
#include "irisrep_endian.h"
#include "irisrep_block.h"

#define IR_BACKUP_MAGIC "IRISBKUP"
#define IR_BACKUP_MAGIC_SIZE 8
#define IR_BACKUP_VERSION 2
#define IR_BACKUP_SECTION_BYTES 128
#define IR_BACKUP_SECTION_NAME_BYTES 32
#define IR_BACKUP_HEADER_BYTES 4096
#define IR_BACKUP_BLOCK_ENTRY_BYTES 16
#define IR_BACKUP_JOURNAL_ENTRY_BYTES 24
#define IR_BACKUP_NAME_BYTES 128
#define IR_BACKUP_SOURCE_BYTES 1024
#define IR_BACKUP_KIND_FULL 1
#define IR_BACKUP_KIND_INCREMENTAL 2

/* flags */
#define IR_BACKUP_F_MIRROR_COPY 1 /* backed up from a mirror copy (no marker written) */
#define IR_BACKUP_F_MARKER 2      /* a backup-start MARKER was journaled */

/* section flags */
#define IR_BACKUP_S_JOURNALING 1 /* the database had journaling on */
#define IR_BACKUP_S_FULL 2       /* every block stored: its first copy in the chain */

/* Header offsets. */
#define IR_BK_OFF_MAGIC 0
#define IR_BK_OFF_VERSION 8
#define IR_BK_OFF_KIND 12
#define IR_BK_OFF_BLOCK_SIZE 16
#define IR_BK_OFF_DB_ID 20
#define IR_BK_OFF_BLOCK_COUNT 24
#define IR_BK_OFF_SEQ 28
#define IR_BK_OFF_BACKUP_ID 32
#define IR_BK_OFF_PARENT_ID 40
#define IR_BK_OFF_CHAIN_ID 48
#define IR_BK_OFF_CHECKPOINT 56
#define IR_BK_OFF_TXN_FLOOR 64
#define IR_BK_OFF_JOURNAL_START 72
#define IR_BK_OFF_JOURNAL_END 80
#define IR_BK_OFF_OPEN_POSITION 88
#define IR_BK_OFF_TIME_START 96
#define IR_BK_OFF_TIME_END 104
#define IR_BK_OFF_BLOCKS_STORED 112
#define IR_BK_OFF_JOURNAL_CHUNKS 116
#define IR_BK_OFF_JOURNAL_OFFSET 120
#define IR_BK_OFF_MANIFEST_OFFSET 128
#define IR_BK_OFF_MANIFEST_CHECKSUM 136
#define IR_BK_OFF_FILE_BYTES 144
#define IR_BK_OFF_EPOCH 152
#define IR_BK_OFF_FLAGS 160
#define IR_BK_OFF_PARENT_NAME 168
#define IR_BK_OFF_SOURCE 296
#define IR_BK_OFF_SECTION_COUNT 1320
#define IR_BK_OFF_SECTIONS_OFFSET 1328
#define IR_BK_OFF_SECTIONS_CHECKSUM 1336
#define IR_BACKUP_HDR_END 1344
#define IR_BACKUP_HDR_END_V1 1320
#define IR_BK_OFF_CHECKSUM 4088

/* Section offsets. */
#define IR_BK_SEC_NAME 0
#define IR_BK_SEC_DB_ID 32
#define IR_BK_SEC_FLAGS 36
#define IR_BK_SEC_BLOCK_COUNT 40
#define IR_BK_SEC_BLOCKS_STORED 48
#define IR_BK_SEC_BLOCKS_OFFSET 56
#define IR_BK_SEC_BLOCKS_END 64
#define IR_BK_SEC_MANIFEST_OFFSET 72
#define IR_BK_SEC_MANIFEST_CHECKSUM 80
#define IR_BK_SEC_CHECKPOINT 88
#define IR_BK_SEC_TXN_FLOOR 96

/* Block entry offsets. */
#define IR_BK_ENT_BLOCK_NO 0
#define IR_BK_ENT_STORED_LEN 4
#define IR_BK_ENT_CHECKSUM 8

/* Journal entry offsets. */
#define IR_BK_JNL_POSITION 0
#define IR_BK_JNL_RAW_LEN 8
#define IR_BK_JNL_STORED_LEN 12
#define IR_BK_JNL_CHECKSUM 16

static inline uint64_t ir_backup_header_checksum(const unsigned char *header) {
    return (uint64_t)XXH3_64bits(header, IR_BK_OFF_CHECKSUM);
}

/* A block entry's checksum: the image bound to its block number. */
static inline uint64_t ir_backup_block_checksum(uint32_t block_no, const unsigned char *image) {
    return (uint64_t)XXH3_64bits_withSeed(image, IR_BLOCK_SIZE, (XXH64_hash_t)block_no);
}

#endif
