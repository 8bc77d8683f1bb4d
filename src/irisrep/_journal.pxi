# _journal: journal records and frames to bytes and back (docs/journal-format.md).
#
# Owns the compiled form of irisrep/journalcodec.py, which is the readable spec: the
# same public functions, the same bytes (including the compression decision), the same
# error classes and messages. Hot paths stay in C: encode_records reads the 7 fields of
# each record once into a C array, sizes the payload, then writes it into one bytes
# object; decode_records builds journalcodec.Record tuples directly. Everything that
# happens once per frame or only on bad input (argument checks, zstd, messages) calls
# the reference's helpers, so the two cannot drift apart there.
# Every module-level name here is prefixed _jc_/jc_/JC_: all topics share one namespace.

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from cpython.exc cimport PyErr_Clear, PyErr_Occurred
from cpython.list cimport PyList_AsTuple, PyList_New, PyList_SET_ITEM
from cpython.long cimport PyLong_FromLong, PyLong_FromUnsignedLong, PyLong_FromUnsignedLongLong
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from cpython.object cimport PyObject
from cpython.ref cimport Py_INCREF
from cpython.sequence cimport PySequence_Fast_GET_SIZE, PySequence_Fast_ITEMS
from cpython.tuple cimport PyTuple_SET_ITEM
from libc.string cimport memcmp, memcpy, memmove, memset

import irisrep.journalcodec as _jc_codec

from irisrep.constants import (JOURNAL_COMPRESS_MIN_BYTES, JOURNAL_FRAME_ALIGN,
                               JOURNAL_FRAME_BYTES_MAX, JOURNAL_FRAME_HEADER_BYTES,
                               JOURNAL_RECORD_BYTES_MAX, JOURNAL_RECORD_HEADER_BYTES,
                               JOURNAL_VERSION, REFERENCE_BYTES_MAX)
from irisrep.journalcodec import FrameHeader as _jc_FrameHeader
from irisrep.journalcodec import JournalFormatError as _jc_JournalFormatError
from irisrep.journalcodec import Record as _jc_Record

cdef extern from "Python.h":
    # Borrowed-reference views of the C API, for the per-record loops.
    bint _jc_tuple_check "PyTuple_Check" (PyObject* o) noexcept
    Py_ssize_t _jc_tuple_size "PyTuple_GET_SIZE" (PyObject* o) noexcept
    PyObject* _jc_tuple_item "PyTuple_GET_ITEM" (PyObject* o, Py_ssize_t i) noexcept
    bint _jc_bytes_check "PyBytes_Check" (PyObject* o) noexcept
    char* _jc_bytes_data "PyBytes_AS_STRING" (PyObject* o) noexcept
    Py_ssize_t _jc_bytes_size "PyBytes_GET_SIZE" (PyObject* o) noexcept
    bint _jc_long_check "PyLong_Check" (PyObject* o) noexcept
    bint _jc_long_exact "PyLong_CheckExact" (PyObject* o) noexcept
    long long _jc_long_ll "PyLong_AsLongLongAndOverflow" (PyObject* o, int* overflow) noexcept
    unsigned long long _jc_long_ull "PyLong_AsUnsignedLongLong" (PyObject* o) noexcept
    bint _jc_bytes_exact "PyBytes_CheckExact" (object o) noexcept

cdef extern from *:
    """
    /* An empty instance of a tuple subclass without extra fields (a NamedTuple), as
       tuple.__new__ makes one: the caller fills every slot with PyTuple_SET_ITEM. */
    static PyObject *_jc_tuple_alloc(PyObject *type, Py_ssize_t n) {
        return ((PyTypeObject *)type)->tp_alloc((PyTypeObject *)type, n);
    }
    """
    object _jc_tuple_alloc(object type, Py_ssize_t n)


if (JOURNAL_VERSION, JOURNAL_FRAME_HEADER_BYTES, JOURNAL_FRAME_ALIGN,
        JOURNAL_RECORD_HEADER_BYTES, JOURNAL_RECORD_BYTES_MAX, JOURNAL_FRAME_BYTES_MAX,
        REFERENCE_BYTES_MAX) != (
        JC_VERSION, JC_FRAME_HEADER_SIZE, JC_FRAME_ALIGN, JC_RECORD_HEADER_SIZE,
        JC_RECORD_BYTES_MAX, JC_FRAME_BYTES_MAX, JC_KEY_MAX):
    raise ImportError("irisrep_journal.h is out of step with irisrep.constants")
if not (issubclass(_jc_Record, tuple) and _jc_Record.__basicsize__ == tuple.__basicsize__
        and _jc_Record.__itemsize__ == tuple.__itemsize__):
    raise ImportError("journalcodec.Record must be a plain tuple subclass (a NamedTuple)")

cdef uint64_t _JC_U32_MAX = 0xFFFFFFFF

# One record's fields, read from its 7-sequence (pointers borrowed from bytes objects
# that the records sequence, or the keepalive list, holds for the call).
ctypedef struct _jc_rec:
    const char* key
    const char* value
    const char* before
    uint64_t txn
    uint32_t db_id
    uint32_t value_len
    uint32_t before_len
    uint16_t key_len
    uint8_t type
    uint8_t flags


# --- encode ------------------------------------------------------------------------------

cdef inline bint _jc_int(PyObject* o, long long hi, long long* out) noexcept:
    """o as 0..hi, or False (leaving any judgement to the reference's slow path)."""
    cdef int overflow = 0
    cdef long long v
    if not _jc_long_check(o):
        return False
    v = _jc_long_ll(o, &overflow)
    if overflow or v < 0 or v > hi:
        return False
    out[0] = v
    return True


cdef inline bint _jc_u64(PyObject* o, uint64_t* out) noexcept:
    cdef int overflow = 0
    cdef long long v
    cdef unsigned long long u
    if not _jc_long_check(o):
        return False
    v = _jc_long_ll(o, &overflow)
    if overflow == 0:
        if v < 0:
            return False
        out[0] = <uint64_t>v
        return True
    if overflow < 0:
        return False
    u = _jc_long_ull(o)  # 2**63 .. : OverflowError past 2**64 - 1
    if u == <unsigned long long>-1 and PyErr_Occurred() != NULL:
        PyErr_Clear()
        return False
    out[0] = u
    return True


cdef inline bint _jc_field_bytes(PyObject* o, Py_ssize_t limit, const char** p,
                                 Py_ssize_t* n) noexcept:
    if not _jc_bytes_check(o):
        return False
    n[0] = _jc_bytes_size(o)
    if n[0] > limit:
        return False
    p[0] = _jc_bytes_data(o)
    return True


cdef bint _jc_take(PyObject* rec, _jc_rec* r) noexcept:
    """Fill r from a valid 7-tuple of ints and bytes; False for anything else."""
    cdef long long v = 0
    cdef Py_ssize_t n = 0
    if not _jc_tuple_check(rec) or _jc_tuple_size(rec) != 7:
        return False
    if not _jc_int(_jc_tuple_item(rec, 0), JC_MARKER, &v) or v < JC_SET:
        return False
    r.type = <uint8_t>v
    if not _jc_int(_jc_tuple_item(rec, 1), JC_RECORD_FLAGS_KNOWN, &v):
        return False
    r.flags = <uint8_t>v
    if not _jc_int(_jc_tuple_item(rec, 2), _JC_U32_MAX, &v):
        return False
    r.db_id = <uint32_t>v
    if not _jc_u64(_jc_tuple_item(rec, 3), &r.txn):
        return False
    if not _jc_field_bytes(_jc_tuple_item(rec, 4), JC_KEY_MAX, &r.key, &n):
        return False
    r.key_len = <uint16_t>n
    if not _jc_field_bytes(_jc_tuple_item(rec, 5), JC_RECORD_BYTES_MAX, &r.value, &n):
        return False
    r.value_len = <uint32_t>n
    if not _jc_field_bytes(_jc_tuple_item(rec, 6), JC_RECORD_BYTES_MAX, &r.before, &n):
        return False
    r.before_len = <uint32_t>n
    return True


cdef bytes jc_encode_records(object records):
    """encode_records(): validate and size every record, then write them in one pass."""
    cdef object seq
    cdef list keepalive = None
    cdef PyObject** items
    cdef Py_ssize_t n, i
    cdef Py_ssize_t total = 0
    cdef _jc_rec* recs
    cdef bytes out
    cdef unsigned char* p
    cdef object norm
    if type(records) is list:
        # A private copy: the slow path runs Python code (__index__, __iter__ ...) that
        # could change a list whose items pass 1 already borrowed pointers from.
        seq = PyList_AsTuple(records)
    elif type(records) is tuple:
        seq = records
    else:
        seq = PyList_AsTuple(_jc_codec._records_list(records))
    n = PySequence_Fast_GET_SIZE(seq)
    if n == 0:
        return b""
    recs = <_jc_rec*>PyMem_Malloc(n * sizeof(_jc_rec))
    if recs == NULL:
        raise MemoryError()
    try:
        items = PySequence_Fast_ITEMS(seq)
        for i in range(n):
            if not _jc_take(items[i], &recs[i]):
                # The reference raises the error for this record, or normalises a record
                # of other types (a list, a bytearray, ...) that the fast path skipped.
                norm = _jc_codec._normalize_record(i, <object>items[i])
                if keepalive is None:
                    keepalive = []
                keepalive.append(norm)
                if not _jc_take(<PyObject*>norm, &recs[i]):
                    raise SystemError(f"record {i}: normalised record rejected: {norm!r}")
            total += (JC_RECORD_HEADER_SIZE + recs[i].key_len + recs[i].value_len
                      + recs[i].before_len)
        if total > JC_FRAME_BYTES_MAX:
            raise _jc_codec._payload_too_long(total)
        out = PyBytes_FromStringAndSize(NULL, total)
        p = <unsigned char*>PyBytes_AS_STRING(out)
        for i in range(n):
            p = jc_put_record(p, recs[i].type, recs[i].flags, recs[i].db_id, recs[i].txn,
                              recs[i].key, recs[i].key_len, recs[i].value, recs[i].value_len,
                              recs[i].before, recs[i].before_len)
    finally:
        PyMem_Free(recs)
    return out


def encode_records(records):
    """The payload of a frame: every record (a 7-sequence, see Record), back to back."""
    return jc_encode_records(records)


# --- decode ------------------------------------------------------------------------------

cdef inline object _jc_new_record(const unsigned char* p, const unsigned char* body,
                                  uint16_t key_len, uint32_t value_len, uint32_t before_len):
    cdef object rec = _jc_tuple_alloc(_jc_Record, 7)
    cdef object f
    f = PyLong_FromLong(p[JC_REC_TYPE])
    Py_INCREF(f)
    PyTuple_SET_ITEM(rec, 0, f)
    f = PyLong_FromLong(p[JC_REC_FLAGS])
    Py_INCREF(f)
    PyTuple_SET_ITEM(rec, 1, f)
    f = PyLong_FromUnsignedLong(jc_get_u32(p + JC_REC_DB_ID))
    Py_INCREF(f)
    PyTuple_SET_ITEM(rec, 2, f)
    f = PyLong_FromUnsignedLongLong(jc_get_u64(p + JC_REC_TXN))
    Py_INCREF(f)
    PyTuple_SET_ITEM(rec, 3, f)
    f = PyBytes_FromStringAndSize(<const char*>body, key_len)
    Py_INCREF(f)
    PyTuple_SET_ITEM(rec, 4, f)
    body += key_len
    f = PyBytes_FromStringAndSize(<const char*>body, value_len)
    Py_INCREF(f)
    PyTuple_SET_ITEM(rec, 5, f)
    body += value_len
    f = PyBytes_FromStringAndSize(<const char*>body, before_len)
    Py_INCREF(f)
    PyTuple_SET_ITEM(rec, 6, f)
    return rec


cdef list _jc_decode(const unsigned char* data, Py_ssize_t n, Py_ssize_t count):
    cdef list out
    cdef object rec
    cdef Py_ssize_t i
    cdef Py_ssize_t pos = 0
    cdef Py_ssize_t start, body
    cdef const unsigned char* p
    cdef unsigned int rtype, flags
    cdef uint16_t key_len
    cdef uint32_t value_len, before_len
    out = PyList_New(count)  # count <= n / JC_RECORD_HEADER_SIZE: checked by the caller
    for i in range(count):
        if n - pos < JC_RECORD_HEADER_SIZE:
            raise _jc_codec._format_error(i, pos, f"header truncated ({n - pos} bytes remain)")
        p = data + pos
        rtype = p[JC_REC_TYPE]
        flags = p[JC_REC_FLAGS]
        key_len = jc_get_u16(p + JC_REC_KEY_LEN)
        value_len = jc_get_u32(p + JC_REC_VALUE_LEN)
        before_len = jc_get_u32(p + JC_REC_BEFORE_LEN)
        if rtype < <unsigned int>JC_SET or rtype > <unsigned int>JC_MARKER:
            raise _jc_codec._format_error(i, pos, f"unknown type {rtype}")
        if flags & ~JC_RECORD_FLAGS_KNOWN:
            raise _jc_codec._format_error(i, pos, f"unknown flags {flags:#04x}")
        if key_len > JC_KEY_MAX:
            raise _jc_codec._format_error(i, pos, f"key_len {key_len} > {REFERENCE_BYTES_MAX}")
        if value_len > <uint32_t>JC_RECORD_BYTES_MAX:
            raise _jc_codec._format_error(
                i, pos, f"value_len {value_len} > {JOURNAL_RECORD_BYTES_MAX}")
        if before_len > <uint32_t>JC_RECORD_BYTES_MAX:
            raise _jc_codec._format_error(
                i, pos, f"before_len {before_len} > {JOURNAL_RECORD_BYTES_MAX}")
        body = <Py_ssize_t>key_len + value_len + before_len
        start = pos + JC_RECORD_HEADER_SIZE
        if body > n - start:
            raise _jc_codec._format_error(
                i, pos, f"body of {body} bytes truncated ({n - start} bytes remain)")
        rec = _jc_new_record(p, data + start, key_len, value_len, before_len)
        Py_INCREF(rec)
        PyList_SET_ITEM(out, i, rec)
        pos = start + body
    if pos != n:
        raise _jc_JournalFormatError(
            f"journal payload has {n - pos} bytes after its {count} records",
            offset=pos,
            expected=count,
        )
    return out


def decode_records(payload, count):
    """Exactly `count` records out of `payload`, which they must fill exactly."""
    cdef Py_buffer view
    cdef Py_ssize_t c
    PyObject_GetBuffer(payload, &view, PyBUF_SIMPLE)
    try:
        c = _jc_codec._record_count(count, view.len)
        return _jc_decode(<const unsigned char*>view.buf, view.len, c)
    finally:
        PyBuffer_Release(&view)


# --- frames ------------------------------------------------------------------------------

def frame_length(stored_len):
    """Bytes a frame with stored_len payload bytes occupies in the stream (header, padding)."""
    if type(stored_len) is int and 0 <= stored_len <= JC_FRAME_BYTES_MAX:
        return jc_frame_length(<uint64_t>stored_len)
    return _jc_codec.frame_length(stored_len)  # its checks and its errors


cdef inline bint _jc_arg_ok(object v, object lo, object hi):
    return type(v) is int and lo <= v <= hi


def encode_frame(payload, count, *, epoch, position, compress=None):
    """Header + stored payload + zero padding to 8: the bytes written at `position`.

    compress: None applies the rule (zstd when raw_len >= JOURNAL_COMPRESS_MIN_BYTES and
    it saves at least 1/8), True always stores zstd, False never does."""
    cdef Py_ssize_t raw_len, stored_len, total
    cdef uint16_t flags = 0
    cdef object stored
    cdef bytes out
    cdef unsigned char* p
    if not (_jc_arg_ok(count, 1, _JC_U32_MAX) and _jc_arg_ok(epoch, 0, _jc_codec.U64_MAX)
            and _jc_arg_ok(position, 0, _jc_codec.U64_MAX)
            and position % JC_FRAME_ALIGN == 0 and _jc_bytes_exact(payload)
            and 0 < len(payload) <= JC_FRAME_BYTES_MAX):
        # The reference's checks raise its errors; what passes them (other int or buffer
        # types) continues here in normalised form.
        count, epoch, position, payload = _jc_codec._frame_args(payload, count, epoch, position)
    raw_len = len(payload)
    if compress is False or (compress is None and raw_len < JOURNAL_COMPRESS_MIN_BYTES):
        stored = payload
    else:
        flags, stored = _jc_codec._choose_stored(payload, compress)
    stored_len = len(stored)
    total = <Py_ssize_t>jc_frame_length(<uint64_t>stored_len)
    out = PyBytes_FromStringAndSize(NULL, total)
    p = <unsigned char*>PyBytes_AS_STRING(out)
    memcpy(p + JC_FRAME_HEADER_SIZE, PyBytes_AS_STRING(stored), stored_len)
    memset(p + JC_FRAME_HEADER_SIZE + stored_len, 0, total - JC_FRAME_HEADER_SIZE - stored_len)
    jc_seal_frame(p, flags, <uint64_t>epoch, <uint64_t>position, <uint32_t>count,
                  <uint32_t>raw_len, <uint32_t>stored_len)
    return out


cdef object _jc_parse(const unsigned char* data, Py_ssize_t n, Py_ssize_t offset,
                      uint64_t expected_position):
    cdef const unsigned char* h
    cdef Py_ssize_t remain = n - offset
    cdef Py_ssize_t start
    cdef uint16_t version, flags
    cdef uint32_t count, raw_len, stored_len, reserved
    cdef uint64_t epoch, position, checksum, actual
    cdef bytes stored
    cdef object raw
    frame_error = _jc_codec._frame_error
    if remain < JC_FRAME_HEADER_SIZE:
        raise frame_error("truncated", offset,
                          f"{remain} of {JOURNAL_FRAME_HEADER_BYTES} header bytes",
                          JOURNAL_FRAME_HEADER_BYTES, remain)
    h = data + offset
    if jc_all_zero(h, JC_FRAME_HEADER_SIZE):
        raise frame_error("zero", offset, "all header bytes are zero")
    if memcmp(h, b"IRJF", 4) != 0:
        magic = PyBytes_FromStringAndSize(<const char*>h, 4)
        raise frame_error("magic", offset, f"magic {magic!r}", b"IRJF", magic)
    version = jc_get_u16(h + JC_OFF_VERSION)
    flags = jc_get_u16(h + JC_OFF_FLAGS)
    epoch = jc_get_u64(h + JC_OFF_EPOCH)
    position = jc_get_u64(h + JC_OFF_POSITION)
    count = jc_get_u32(h + JC_OFF_COUNT)
    raw_len = jc_get_u32(h + JC_OFF_RAW_LEN)
    stored_len = jc_get_u32(h + JC_OFF_STORED_LEN)
    reserved = jc_get_u32(h + JC_OFF_RESERVED)
    checksum = jc_get_u64(h + JC_OFF_CHECKSUM)
    if version != JC_VERSION:
        raise frame_error("version", offset, f"version {version}", JOURNAL_VERSION, version)
    if flags & ~JC_FRAME_FLAGS_KNOWN:
        raise frame_error("version", offset, f"unknown flags {flags:#06x}", None, flags)
    if reserved:
        raise frame_error("version", offset, f"reserved field {reserved:#010x}", None,
                          reserved)
    if count == 0:
        raise frame_error("length", offset, "record count 0")
    if raw_len == 0 or raw_len > <uint32_t>JC_FRAME_BYTES_MAX:
        raise frame_error("length", offset,
                          f"raw_len {raw_len} out of range 1..{JOURNAL_FRAME_BYTES_MAX}",
                          None, raw_len)
    if stored_len == 0 or stored_len > <uint32_t>JC_FRAME_BYTES_MAX:
        raise frame_error("length", offset,
                          f"stored_len {stored_len} out of range 1..{JOURNAL_FRAME_BYTES_MAX}",
                          None, stored_len)
    if not (flags & JC_FRAME_ZSTD) and stored_len != raw_len:
        raise frame_error(
            "length", offset,
            f"uncompressed frame with stored_len {stored_len} != raw_len {raw_len}",
            raw_len, stored_len)
    start = offset + JC_FRAME_HEADER_SIZE
    if n - start < <Py_ssize_t>stored_len:
        raise frame_error("truncated", offset, f"{n - start} of {stored_len} payload bytes",
                          stored_len, n - start)
    actual = jc_frame_checksum(h, data + start, stored_len)
    if actual != checksum:
        raise frame_error("checksum", offset, f"expected {checksum:#018x}, found {actual:#018x}",
                          f"{checksum:#018x}", f"{actual:#018x}")
    if position != expected_position:
        raise frame_error("position", offset,
                          f"frame says position {position}, expected {expected_position}",
                          expected_position, position)
    stored = PyBytes_FromStringAndSize(<const char*>(data + start), stored_len)
    if flags & JC_FRAME_ZSTD:
        raw = _jc_codec._zstd_decompress(stored, raw_len, offset)
    else:
        raw = stored
    header = _jc_FrameHeader(flags, epoch, position, count, raw_len, stored_len, checksum)
    return (header, raw, offset + <Py_ssize_t>jc_frame_length(stored_len))


def parse_frame(buf, offset, expected_position):
    """(header, raw payload, offset of the next frame) of the frame at buf[offset:].

    Raises FrameError naming the first check that fails, in this order: truncated
    header, zero, magic, version, length, truncated payload, checksum, position, zstd.
    Nothing is allocated or read past a length before that length is checked."""
    cdef Py_buffer view
    PyObject_GetBuffer(buf, &view, PyBUF_SIMPLE)
    try:
        if not (_jc_arg_ok(offset, 0, view.len)
                and _jc_arg_ok(expected_position, 0, _jc_codec.U64_MAX)):
            offset = _jc_codec._frame_arg("offset", offset, 0, view.len)
            expected_position = _jc_codec._frame_arg("expected_position", expected_position,
                                                     0, _jc_codec.U64_MAX)
        return _jc_parse(<const unsigned char*>view.buf, view.len, offset,
                         <uint64_t>expected_position)
    finally:
        PyBuffer_Release(&view)


# --- record logs: the commit path's records, encoded as they are logged -------------------

from irisrep.constants import JOURNAL_GROUP_COMMIT_RECORDS_MAX as _JC_GROUP_MAX


cdef int _jc_reserve(unsigned char** buf, Py_ssize_t* cap, Py_ssize_t need) except -1:
    """Grow a PyMem buffer (doubling) to hold at least `need` bytes."""
    cdef Py_ssize_t ncap
    cdef unsigned char* nb
    if need <= cap[0]:
        return 0
    ncap = cap[0] * 2 if cap[0] else 65536
    while ncap < need:
        ncap *= 2
    nb = <unsigned char*>PyMem_Realloc(buf[0], ncap)
    if nb == NULL:
        raise MemoryError()
    buf[0] = nb
    cap[0] = ncap
    return 0


cdef inline Py_ssize_t _jc_rec_size(const _jc_rec* r) noexcept:
    return <Py_ssize_t>JC_RECORD_HEADER_SIZE + r.key_len + r.value_len + r.before_len


cdef inline bint _jc_set_rec(_jc_rec* r, int flags, uint32_t db_id, uint64_t txn, bytes key,
                             bytes value, bytes before) noexcept:
    """r as a SET record of these fields; False when a length is past its limit."""
    if (PyBytes_GET_SIZE(key) > JC_KEY_MAX or PyBytes_GET_SIZE(value) > JC_RECORD_BYTES_MAX
            or PyBytes_GET_SIZE(before) > JC_RECORD_BYTES_MAX):
        return False
    r.type = 1  # SET (docs/journal-format.md)
    r.flags = <uint8_t>flags
    r.db_id = db_id
    r.txn = txn
    r.key = PyBytes_AS_STRING(key)
    r.key_len = <uint16_t>PyBytes_GET_SIZE(key)
    r.value = PyBytes_AS_STRING(value)
    r.value_len = <uint32_t>PyBytes_GET_SIZE(value)
    r.before = PyBytes_AS_STRING(before)
    r.before_len = <uint32_t>PyBytes_GET_SIZE(before)
    return True


cdef _jc_take_all(object records, _jc_rec** out, Py_ssize_t* count):
    """Every record of `records` read (and checked) into a new C array, with what keeps
    its bytes alive; raises the codec's precise error for a bad record, and the
    journal's for one too big for any frame. The caller frees out[0]."""
    cdef object seq = PyList_AsTuple(records) if type(records) is list else tuple(records)
    cdef Py_ssize_t n = PySequence_Fast_GET_SIZE(seq), i, size
    cdef PyObject** items = PySequence_Fast_ITEMS(seq)
    cdef list keep = [seq]
    cdef object norm
    cdef _jc_rec* recs = <_jc_rec*>PyMem_Malloc((n if n else 1) * sizeof(_jc_rec))
    if recs == NULL:
        raise MemoryError()
    try:
        for i in range(n):
            if not _jc_take(items[i], &recs[i]):
                norm = _jc_codec._normalize_record(i, <object>items[i])  # raises if bad
                keep.append(norm)
                if not _jc_take(<PyObject*>norm, &recs[i]):
                    raise SystemError(f"record {i}: normalised record rejected: {norm!r}")
            size = _jc_rec_size(&recs[i])
            if size > JC_FRAME_BYTES_MAX:
                raise ValueError(
                    f"record {i} is {size} bytes encoded, more than a frame holds "
                    f"(JOURNAL_FRAME_BYTES_MAX = {JOURNAL_FRAME_BYTES_MAX})")
    except BaseException:
        PyMem_Free(recs)
        raise
    out[0] = recs
    count[0] = n
    return keep


cdef class CommitLog:
    """Base of irisrep.commit.Committer: the records logged and not yet written.

    A record is encoded into the open payload chunk the moment it is logged (one
    memcpy, no Python object per record); a chunk is sealed at one frame's worth
    (JOURNAL_GROUP_COMMIT_RECORDS_MAX records, JOURNAL_FRAME_BYTES_MAX bytes), so the
    writer hands the journal ready payloads in apply order (`take`). Logging runs
    under the database lock only; `take` runs under the committer's I/O lock: both
    change the state with the GIL held and without any call that could run Python
    code in between (no allocation of a collected object), so each is atomic.
    """

    def __cinit__(self):
        self._buf = NULL
        self._used = self._cap = self._nrec = 0
        self._payloads = []
        self._counts = []
        self._group_max = _JC_GROUP_MAX
        self._logged = 0
        self._failure = None

    def __dealloc__(self):
        PyMem_Free(self._buf)

    cdef int _seal(self) except -1:
        cdef bytes payload = PyBytes_FromStringAndSize(<char*>self._buf, self._used)
        cdef object count = PyLong_FromLong(self._nrec)
        self._used = 0
        self._nrec = 0
        self._payloads.append(payload)
        self._counts.append(count)
        return 0

    cdef int _put(self, const void* rec) except -1:
        cdef const _jc_rec* r = <const _jc_rec*>rec
        cdef Py_ssize_t size = _jc_rec_size(r)
        if self._nrec and (self._nrec >= self._group_max
                           or self._used + size > JC_FRAME_BYTES_MAX):
            self._seal()
        _jc_reserve(&self._buf, &self._cap, self._used + size)
        jc_put_record(self._buf + self._used, r.type, r.flags, r.db_id, r.txn, r.key,
                      r.key_len, r.value, r.value_len, r.before, r.before_len)
        self._used += size
        self._nrec += 1
        self._logged += 1
        return 0

    cdef long long log_set(self, int flags, uint32_t db_id, uint64_t txn, bytes key,
                           bytes value, bytes before) except -1:
        """log([(SET, flags, db_id, txn, key, value, before)]) from C."""
        cdef _jc_rec r
        if self._failure is not None:
            raise (<object>self)._error()
        if not _jc_set_rec(&r, flags, db_id, txn, key, value, before):
            return self.log([(1, flags, db_id, txn, key, value, before)])  # its error
        self._put(&r)
        return self._logged

    def log(self, records):
        """Queue records (in apply order); returns the ticket to sync on.

        Called under the database lock only. A record the journal cannot take is
        fatal, as a failed write is (the change it stands for is already applied).
        """
        cdef _jc_rec* recs = NULL
        cdef Py_ssize_t n = 0, i
        if self._failure is not None:
            raise (<object>self)._error()
        try:
            keep = _jc_take_all(records, &recs, &n)
        except BaseException as exc:
            (<object>self)._fail(exc)
            raise
        try:
            for i in range(n):
                self._put(&recs[i])
        finally:
            PyMem_Free(recs)
        return self._logged

    def log1(self, record):
        """log([record]) without the list."""
        return self.log((record,))

    def take(self):
        """([(payload, count)], records): everything logged so far, oldest first; the
        log is empty after it."""
        cdef list new_payloads = [], new_counts = []
        cdef list payloads, counts
        cdef object tail = None
        cdef Py_ssize_t tail_n = 0, total = 0
        # Objects the collector tracks are made first: past this point nothing can
        # run Python code until the state is detached.
        payloads = self._payloads
        counts = self._counts
        self._payloads = new_payloads
        self._counts = new_counts
        if self._nrec:
            tail = PyBytes_FromStringAndSize(<char*>self._buf, self._used)
            tail_n = self._nrec
            self._used = 0
            self._nrec = 0
        out = [(p, c) for p, c in zip(payloads, counts)]
        if tail is not None:
            out.append((tail, tail_n))
        for _p, c in out:
            total += c
        return out, total

    @property
    def pending_records(self):
        """Records logged and not yet taken."""
        return sum(self._counts) + self._nrec


cdef class RecordList:
    """A transaction's records, encoded back to back (see _globals.pxd)."""

    def __cinit__(self, records=()):
        self._buf = NULL
        self._off = NULL
        self._used = self._cap = self._n = self._ocap = 0

    def __init__(self, records=()):
        if records:
            self.extend(records)

    def __dealloc__(self):
        PyMem_Free(self._buf)
        PyMem_Free(self._off)

    cdef int _put(self, const void* rec) except -1:
        cdef const _jc_rec* r = <const _jc_rec*>rec
        cdef Py_ssize_t size = _jc_rec_size(r)
        cdef Py_ssize_t* noff
        if self._n >= self._ocap:
            noff = <Py_ssize_t*>PyMem_Realloc(
                self._off, (self._ocap * 2 if self._ocap else 1024) * sizeof(Py_ssize_t))
            if noff == NULL:
                raise MemoryError()
            self._off = noff
            self._ocap = self._ocap * 2 if self._ocap else 1024
        _jc_reserve(&self._buf, &self._cap, self._used + size)
        jc_put_record(self._buf + self._used, r.type, r.flags, r.db_id, r.txn, r.key,
                      r.key_len, r.value, r.value_len, r.before, r.before_len)
        self._off[self._n] = self._used
        self._used += size
        self._n += 1
        return 0

    cdef int put_set(self, int flags, uint32_t db_id, uint64_t txn, bytes key,
                     bytes value, bytes before) except -1:
        cdef _jc_rec r
        if not _jc_set_rec(&r, flags, db_id, txn, key, value, before):
            self.extend([(1, flags, db_id, txn, key, value, before)])  # its error
            return 0
        return self._put(&r)

    def extend(self, records):
        cdef _jc_rec* recs = NULL
        cdef Py_ssize_t n = 0, i
        keep = _jc_take_all(records, &recs, &n)
        try:
            for i in range(n):
                self._put(&recs[i])
        finally:
            PyMem_Free(recs)

    def append(self, record):
        self.extend((record,))

    def __len__(self):
        return self._n

    cdef _bounds(self, object idx, Py_ssize_t* a, Py_ssize_t* b):
        cdef Py_ssize_t step
        if not isinstance(idx, slice):
            raise TypeError("RecordList indices must be slices")
        a[0], b[0], step = idx.indices(self._n)
        if step != 1:
            raise ValueError("RecordList slices take no step")
        if b[0] < a[0]:
            b[0] = a[0]

    def __getitem__(self, idx):
        """The records of a slice, decoded (journalcodec.Record tuples)."""
        cdef Py_ssize_t a = 0, b = 0, start, end
        self._bounds(idx, &a, &b)
        if a == b:
            return []
        start = self._off[a]
        end = self._off[b] if b < self._n else self._used
        return _jc_decode(self._buf + start, end - start, b - a)

    def __delitem__(self, idx):
        """Delete a slice (the undone tail of a partial TROLLBACK)."""
        cdef Py_ssize_t a = 0, b = 0, start, end, i
        self._bounds(idx, &a, &b)
        if a == b:
            return
        start = self._off[a]
        end = self._off[b] if b < self._n else self._used
        memmove(self._buf + start, self._buf + end, self._used - end)
        for i in range(b, self._n):
            self._off[i - (b - a)] = self._off[i] - (end - start)
        self._n -= b - a
        self._used -= end - start

    def __iter__(self):
        return iter(self[:])

    def __reversed__(self):
        return reversed(self[:])

    def __repr__(self):
        return f"RecordList({self._n} records, {self._used} bytes)"
