# _wire declarations: the frame layout of include/irisrep_wire.h.
#
# The C names are declared under wf_/WF_ aliases (every topic shares one namespace).
# The limits mirror irisrep.wire (checked when _core is imported).
from libc.stdint cimport uint16_t, uint32_t, uint64_t


cdef extern from "irisrep_wire.h":
    int WF_VERSION "IR_WIRE_VERSION"
    int WF_FRAME_HEADER_BYTES "IR_WIRE_FRAME_HEADER_BYTES"
    int WF_FRAME_BYTES_MAX "IR_WIRE_FRAME_BYTES_MAX"
    int WF_ZSTD_PREFIX_BYTES "IR_WIRE_ZSTD_PREFIX_BYTES"
    int WF_NAME_BYTES_MAX "IR_WIRE_NAME_BYTES_MAX"
    int WF_STATUS_BYTES_MAX "IR_WIRE_STATUS_BYTES_MAX"
    int WF_JOURNAL_PAYLOAD_BYTES_MIN "IR_WIRE_JOURNAL_PAYLOAD_BYTES_MIN"
    int WF_ZSTD "IR_WIRE_ZSTD"
    int WF_TYPE_MIN "IR_WIRE_TYPE_MIN"
    int WF_TYPE_MAX "IR_WIRE_TYPE_MAX"
    int WF_OFF_TYPE "IR_WIRE_OFF_TYPE"
    int WF_OFF_FLAGS "IR_WIRE_OFF_FLAGS"
    int WF_OFF_EPOCH "IR_WIRE_OFF_EPOCH"
    int WF_OFF_LENGTH "IR_WIRE_OFF_LENGTH"
    int WF_OFF_CHECKSUM "IR_WIRE_OFF_CHECKSUM"
    int WF_OK "IR_WIRE_OK"
    int WF_E_TRUNCATED "IR_WIRE_E_TRUNCATED"
    int WF_E_MAGIC "IR_WIRE_E_MAGIC"
    int WF_E_VERSION "IR_WIRE_E_VERSION"
    int WF_E_TYPE "IR_WIRE_E_TYPE"
    int WF_E_RESERVED "IR_WIRE_E_RESERVED"
    int WF_E_LENGTH "IR_WIRE_E_LENGTH"
    int wf_bounds "ir_wire_bounds" (unsigned type, uint32_t *lo, uint32_t *hi,
                                    int *compressible) nogil
    int wf_check_header "ir_wire_check_header" (const unsigned char *h, size_t n) nogil
    uint64_t wf_checksum "ir_wire_checksum" (
        const unsigned char *header, const unsigned char *payload, size_t length) nogil
    void wf_seal "ir_wire_seal" (unsigned char *frame, uint16_t type, uint16_t flags,
                                 uint64_t epoch, uint32_t length) nogil
    uint16_t wf_get_u16 "ir_get_u16" (const unsigned char *p) nogil
    uint32_t wf_get_u32 "ir_get_u32" (const unsigned char *p) nogil
    uint64_t wf_get_u64 "ir_get_u64" (const unsigned char *p) nogil
