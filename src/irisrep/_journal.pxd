# _journal declarations: the frame and record layout of include/irisrep_journal.h.
#
# The C names are declared under _jc_ aliases (every topic shares one namespace, and
# _btree.pxd already declares the irisrep_endian.h helpers under their own names).
# The limits mirror irisrep.constants (checked when _core is imported).
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t


cdef extern from "irisrep_journal.h":
    int JC_VERSION "IR_JRNL_VERSION"
    int JC_FRAME_HEADER_SIZE "IR_JRNL_FRAME_HEADER_SIZE"
    int JC_FRAME_ALIGN "IR_JRNL_FRAME_ALIGN"
    int JC_FRAME_BYTES_MAX "IR_JRNL_FRAME_BYTES_MAX"
    int JC_RECORD_HEADER_SIZE "IR_JRNL_RECORD_HEADER_SIZE"
    int JC_RECORD_BYTES_MAX "IR_JRNL_RECORD_BYTES_MAX"
    int JC_KEY_MAX "IR_JRNL_KEY_MAX"
    int JC_FRAME_ZSTD "IR_JRNL_FRAME_ZSTD"
    int JC_FRAME_FLAGS_KNOWN "IR_JRNL_FRAME_FLAGS_KNOWN"
    int JC_SET "IR_JRNL_SET"
    int JC_MARKER "IR_JRNL_MARKER"
    int JC_RECORD_FLAGS_KNOWN "IR_JRNL_RECORD_FLAGS_KNOWN"
    int JC_OFF_VERSION "IR_JRNL_OFF_VERSION"
    int JC_OFF_FLAGS "IR_JRNL_OFF_FLAGS"
    int JC_OFF_EPOCH "IR_JRNL_OFF_EPOCH"
    int JC_OFF_POSITION "IR_JRNL_OFF_POSITION"
    int JC_OFF_COUNT "IR_JRNL_OFF_COUNT"
    int JC_OFF_RAW_LEN "IR_JRNL_OFF_RAW_LEN"
    int JC_OFF_STORED_LEN "IR_JRNL_OFF_STORED_LEN"
    int JC_OFF_RESERVED "IR_JRNL_OFF_RESERVED"
    int JC_OFF_CHECKSUM "IR_JRNL_OFF_CHECKSUM"
    int JC_REC_TYPE "IR_JRNL_REC_TYPE"
    int JC_REC_FLAGS "IR_JRNL_REC_FLAGS"
    int JC_REC_KEY_LEN "IR_JRNL_REC_KEY_LEN"
    int JC_REC_DB_ID "IR_JRNL_REC_DB_ID"
    int JC_REC_TXN "IR_JRNL_REC_TXN"
    int JC_REC_VALUE_LEN "IR_JRNL_REC_VALUE_LEN"
    int JC_REC_BEFORE_LEN "IR_JRNL_REC_BEFORE_LEN"
    uint64_t jc_frame_length "ir_jrnl_frame_length" (uint64_t stored_len) nogil
    uint64_t jc_frame_checksum "ir_jrnl_frame_checksum" (
        const unsigned char *header, const unsigned char *stored, size_t stored_len) nogil
    void jc_seal_frame "ir_jrnl_seal_frame" (
        unsigned char *frame, uint16_t flags, uint64_t epoch, uint64_t position,
        uint32_t count, uint32_t raw_len, uint32_t stored_len) nogil
    unsigned char *jc_put_record "ir_jrnl_put_record" (
        unsigned char *p, uint8_t type, uint8_t flags, uint32_t db_id, uint64_t txn,
        const void *key, uint16_t key_len, const void *value, uint32_t value_len,
        const void *before, uint32_t before_len) nogil
    int jc_all_zero "ir_jrnl_all_zero" (const unsigned char *p, size_t n) nogil
    uint16_t jc_get_u16 "ir_get_u16" (const unsigned char *p) nogil
    uint32_t jc_get_u32 "ir_get_u32" (const unsigned char *p) nogil
    uint64_t jc_get_u64 "ir_get_u64" (const unsigned char *p) nogil


# For other topics (the journal writer): encode_records() without the Python call.
cdef bytes jc_encode_records(object records)
