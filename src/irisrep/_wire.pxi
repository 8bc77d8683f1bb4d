# _wire: mirror transport frames to bytes and back (docs/wire-format.md).
#
# Owns the compiled form of the codec in irisrep/wire.py, which is the readable spec:
# the same public functions, the same bytes (including the compression decision), the
# same errors. The header checks, the checksum and the copy run in C
# (include/irisrep_wire.h); argument normalisation, zstd and the messages of refused
# headers come from the reference (a refused header is handed to it, and a reason that
# differs from the C check's is a bug reported as SystemError).
# Every module-level name here is prefixed _wf_/wf_/WF_: all topics share one namespace.

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from libc.string cimport memcpy

import irisrep.wire as _wf_ref

from irisrep.wire import WireError as _wf_WireError
from irisrep.wire import WireFrame as _wf_WireFrame


if (_wf_ref.WIRE_VERSION, _wf_ref.WIRE_FRAME_HEADER_BYTES, _wf_ref.WIRE_FRAME_BYTES_MAX,
        _wf_ref.WIRE_ZSTD_PREFIX_BYTES, _wf_ref.WIRE_NAME_BYTES_MAX,
        _wf_ref.WIRE_STATUS_BYTES_MAX, _wf_ref.WIRE_JOURNAL_PAYLOAD_BYTES_MIN,
        _wf_ref.WIRE_ZSTD, min(_wf_ref.TYPE_NAMES), max(_wf_ref.TYPE_NAMES)) != (
        WF_VERSION, WF_FRAME_HEADER_BYTES, WF_FRAME_BYTES_MAX, WF_ZSTD_PREFIX_BYTES,
        WF_NAME_BYTES_MAX, WF_STATUS_BYTES_MAX, WF_JOURNAL_PAYLOAD_BYTES_MIN, WF_ZSTD,
        WF_TYPE_MIN, WF_TYPE_MAX):
    raise ImportError("irisrep_wire.h is out of step with irisrep.wire")


cdef dict _WF_REASONS = {
    WF_E_TRUNCATED: "truncated",
    WF_E_MAGIC: "magic",
    WF_E_VERSION: "version",
    WF_E_TYPE: "type",
    WF_E_RESERVED: "reserved",
    WF_E_LENGTH: "length",
}


cdef object _wf_header_error(const unsigned char* h, Py_ssize_t n, int code):
    """The reference's WireError for a header that the C check refused with `code`."""
    cdef bytes data = PyBytes_FromStringAndSize(
        <const char*>h, n if n < WF_FRAME_HEADER_BYTES else WF_FRAME_HEADER_BYTES)
    try:
        _wf_ref.parse_wire_header(data)
    except _wf_WireError as e:
        if e.reason != _WF_REASONS[code]:
            return SystemError(f"wire header {data!r}: C says {_WF_REASONS[code]}, "
                               f"wire.py says {e.reason}")
        return e
    return SystemError(f"wire header {data!r}: refused by C ({_WF_REASONS[code]}), "
                       "accepted by wire.py")


def encode_wire_frame(ftype, epoch, payload, compress=None):
    """Header + payload as sent (see irisrep.wire.encode_wire_frame)."""
    cdef uint32_t lo = 0, hi = 0
    cdef int compressible = 0
    cdef Py_ssize_t n, stored_len
    cdef uint16_t flags = 0
    cdef object stored
    cdef bytes out
    cdef unsigned char* p
    if not (type(ftype) is int and WF_TYPE_MIN <= ftype <= WF_TYPE_MAX
            and type(epoch) is int and 0 <= epoch <= _wf_ref.U64_MAX
            and type(payload) is bytes):
        ftype, epoch, payload = _wf_ref._encode_args(ftype, epoch, payload)
    wf_bounds(<unsigned>ftype, &lo, &hi, &compressible)
    n = len(payload)
    if n < <Py_ssize_t>lo or n > <Py_ssize_t>hi:
        _wf_ref._encode_args(ftype, epoch, payload)  # raises its ValueError
        raise SystemError("wire payload bounds disagree with wire.py")
    if compress is False or (compress is None and (
            not compressible or n < _wf_ref.WIRE_COMPRESS_MIN_BYTES)):
        stored = payload
    else:
        flags, stored = _wf_ref._choose_stored(ftype, payload, compress)
    stored_len = len(stored)
    out = PyBytes_FromStringAndSize(NULL, WF_FRAME_HEADER_BYTES + stored_len)
    p = <unsigned char*>PyBytes_AS_STRING(out)
    memcpy(p + WF_FRAME_HEADER_BYTES, PyBytes_AS_STRING(stored), stored_len)
    wf_seal(p, <uint16_t>ftype, flags, <uint64_t>epoch, <uint32_t>stored_len)
    return out


def parse_wire_header(buf):
    """(type, flags, epoch, length) of the header at the start of buf (see wire.py)."""
    cdef Py_buffer view
    cdef const unsigned char* h
    cdef int code
    PyObject_GetBuffer(buf, &view, PyBUF_SIMPLE)
    try:
        h = <const unsigned char*>view.buf
        code = wf_check_header(h, view.len)
        if code != WF_OK:
            raise _wf_header_error(h, view.len, code)
        return (wf_get_u16(h + WF_OFF_TYPE), wf_get_u16(h + WF_OFF_FLAGS),
                wf_get_u64(h + WF_OFF_EPOCH), wf_get_u32(h + WF_OFF_LENGTH))
    finally:
        PyBuffer_Release(&view)


def parse_wire_frame(buf):
    """(WireFrame, bytes consumed) of the frame at the start of buf (see wire.py)."""
    cdef Py_buffer view
    cdef const unsigned char* h
    cdef int code
    cdef uint16_t ftype, flags
    cdef uint32_t length
    cdef uint64_t expected, actual
    cdef Py_ssize_t have
    cdef object stored, payload
    PyObject_GetBuffer(buf, &view, PyBUF_SIMPLE)
    try:
        h = <const unsigned char*>view.buf
        code = wf_check_header(h, view.len)
        if code != WF_OK:
            raise _wf_header_error(h, view.len, code)
        ftype = wf_get_u16(h + WF_OFF_TYPE)
        flags = wf_get_u16(h + WF_OFF_FLAGS)
        length = wf_get_u32(h + WF_OFF_LENGTH)
        have = view.len - WF_FRAME_HEADER_BYTES
        if have < <Py_ssize_t>length:
            raise _wf_WireError("truncated", f"{have} of {length} payload bytes")
        expected = wf_get_u64(h + WF_OFF_CHECKSUM)
        actual = wf_checksum(h, h + WF_FRAME_HEADER_BYTES, length)
        if actual != expected:
            raise _wf_WireError("checksum", f"expected {expected:#018x}, found {actual:#018x}")
        stored = PyBytes_FromStringAndSize(<const char*>(h + WF_FRAME_HEADER_BYTES), length)
        if flags & WF_ZSTD:
            payload = _wf_ref._decompress(ftype, stored)
        else:
            payload = stored
        return (_wf_WireFrame(ftype, flags, wf_get_u64(h + WF_OFF_EPOCH), payload),
                WF_FRAME_HEADER_BYTES + <Py_ssize_t>length)
    finally:
        PyBuffer_Release(&view)
