"""Journal records and frames to bytes and back: the readable reference.

Owns the byte format of docs/journal-format.md ("Records" and "Frame"; the layout is
also in include/irisrep_journal.h). Promises:
- `decode_records(encode_records(rs), len(rs)) == rs` for every valid record list, and
  `parse_frame` returns the payload and count that `encode_frame` was given;
- encoding validates everything first and produces no bytes for bad input (ValueError
  or TypeError, naming the record and the field);
- decoding never reads past the bytes it was given and never allocates more than the
  lengths it has already checked allow: a bad frame raises `FrameError` with one
  reason of `FRAME_ERROR_REASONS`, a bad payload behind a good checksum raises
  `JournalFormatError`;
- the compiled `irisrep._core` versions of the public functions agree with this module
  byte for byte (including the compression decision) and raise the same error classes
  with the same messages (tests/test_journalcodec.py checks both).

This module is the spec in executable form: it favours clarity over speed.
"""

from __future__ import annotations

import operator
import struct
import threading
from typing import NamedTuple

import xxhash
import zstandard

from .constants import (
    JOURNAL_COMPRESS_MIN_BYTES,
    JOURNAL_FRAME_ALIGN,
    JOURNAL_FRAME_BYTES_MAX,
    JOURNAL_FRAME_HEADER_BYTES,
    JOURNAL_FRAME_MAGIC,
    JOURNAL_RECORD_BYTES_MAX,
    JOURNAL_RECORD_HEADER_BYTES,
    JOURNAL_VERSION,
    REFERENCE_BYTES_MAX,
)
from .errors import JournalCorruptError

__all__ = [
    "SET",
    "KILL",
    "ZKILL",
    "INCREMENT",
    "TSTART",
    "TCOMMIT",
    "TROLLBACK",
    "MARKER",
    "HAD_BEFORE",
    "UNDO",
    "FRAME_ZSTD",
    "FRAME_ERROR_REASONS",
    "Record",
    "FrameHeader",
    "FrameError",
    "JournalFormatError",
    "encode_records",
    "decode_records",
    "encode_frame",
    "frame_length",
    "parse_frame",
]

# Record types.
SET = 1
KILL = 2
ZKILL = 3
INCREMENT = 4
TSTART = 5
TCOMMIT = 6
TROLLBACK = 7
MARKER = 8
TYPE_MIN, TYPE_MAX = SET, MARKER

# Record flags.
HAD_BEFORE = 1  # SET/INCREMENT/ZKILL: the node had a value before
UNDO = 2  # a compensating record written by a rollback
RECORD_FLAGS_KNOWN = HAD_BEFORE | UNDO

# Frame flags.
FRAME_ZSTD = 1  # the payload is one zstd frame of raw_len bytes
FRAME_FLAGS_KNOWN = FRAME_ZSTD

U32_MAX = 2**32 - 1
U64_MAX = 2**64 - 1

# Record header: type, flags, key_len, db_id, txn, value_len, before_len.
RECORD_HEADER = struct.Struct("<BBHIQII")
# Frame header bytes [0, 40): magic, version, flags, epoch, position, count, raw_len,
# stored_len, reserved. The checksum (u64) follows at 40 and covers these 40 bytes and
# then the stored payload.
FRAME_HEADER_BODY = struct.Struct("<4sHHQQIIII")
FRAME_CHECKSUM = struct.Struct("<Q")
FRAME_CHECKSUM_OFFSET = FRAME_HEADER_BODY.size

assert RECORD_HEADER.size == JOURNAL_RECORD_HEADER_BYTES
assert FRAME_HEADER_BODY.size + FRAME_CHECKSUM.size == JOURNAL_FRAME_HEADER_BYTES

# Why parse_frame refused a frame, in the order the checks run.
FRAME_ERROR_REASONS = (
    "truncated",  # fewer than 48 header bytes, or fewer than stored_len payload bytes
    "zero",  # the whole header is zero: the clean end of a preallocated file
    "magic",  # not b"IRJF": garbage
    "version",  # unknown version, unknown flag bits or a nonzero reserved field
    "length",  # count, raw_len or stored_len zero or out of range, or inconsistent
    "checksum",  # xxh3_64 of header and stored payload does not match
    "position",  # a valid frame, but not at the expected stream position (stale)
    "zstd",  # checksum right, but the payload is not one zstd frame of raw_len bytes
)


class Record(NamedTuple):
    """One journal record (see docs/journal-format.md for what each type carries)."""

    type: int
    flags: int
    db_id: int
    txn: int
    key: bytes
    value: bytes
    before: bytes


class FrameHeader(NamedTuple):
    """The decoded 48-byte frame header."""

    flags: int
    epoch: int
    position: int
    count: int
    raw_len: int
    stored_len: int
    checksum: int


class FrameError(JournalCorruptError):
    """A frame that cannot be used; `reason` (one of FRAME_ERROR_REASONS) says why.

    `offset` is the frame's offset in the buffer given to parse_frame; the file layer
    that knows the path and the stream position decides whether the reason means a torn
    tail (stop there) or corruption (refuse)."""

    def __init__(
        self,
        reason: str,
        offset: int,
        detail: str,
        *,
        path: str = "",
        expected: object = None,
        found: object = None,
    ) -> None:
        super().__init__(
            f"journal frame at offset {offset}: {reason}: {detail}",
            path=path,
            offset=offset,
            expected=expected,
            found=found,
        )
        self.reason = reason
        self.detail = detail

    def __reduce__(self):
        kwargs = {"path": self.path, "expected": self.expected, "found": self.found}
        return (_rebuild_frame_error, (self.reason, self.offset, self.detail, kwargs))


def _rebuild_frame_error(reason, offset, detail, kwargs):
    return FrameError(reason, offset, detail, **kwargs)


class JournalFormatError(JournalCorruptError):
    """A payload whose frame checksum is right but whose records are malformed.

    `offset` is the offset in the payload of the record that could not be decoded."""


# --- helpers shared with the compiled codec (it calls them once per frame or on its
# --- slow and error paths, so that the bytes and the messages are the same) ------------

_zstd_local = threading.local()  # zstandard objects are not safe to share across threads


def _compressor() -> zstandard.ZstdCompressor:
    c = getattr(_zstd_local, "compressor", None)
    if c is None:
        c = _zstd_local.compressor = zstandard.ZstdCompressor(level=1, write_content_size=True)
    return c


def _decompressor() -> zstandard.ZstdDecompressor:
    d = getattr(_zstd_local, "decompressor", None)
    if d is None:
        d = _zstd_local.decompressor = zstandard.ZstdDecompressor()
    return d


def _zstd_compress(raw) -> bytes:
    return _compressor().compress(raw)


def _choose_stored(raw, compress) -> tuple[int, bytes]:
    """(frame flags, stored payload) for a raw payload: the rule of the docs, or forced."""
    if compress is None:
        if len(raw) < JOURNAL_COMPRESS_MIN_BYTES:
            return 0, bytes(raw)
        packed = _zstd_compress(raw)
        if 8 * len(packed) <= 7 * len(raw):  # saves at least 1/8
            return FRAME_ZSTD, packed
        return 0, bytes(raw)
    if compress:
        packed = _zstd_compress(raw)
        if len(packed) > JOURNAL_FRAME_BYTES_MAX:
            raise ValueError(
                f"compressed payload is {len(packed)} bytes, more than "
                f"JOURNAL_FRAME_BYTES_MAX ({JOURNAL_FRAME_BYTES_MAX})"
            )
        return FRAME_ZSTD, packed
    return 0, bytes(raw)


def _zstd_decompress(stored, raw_len: int, offset: int) -> bytes:
    """Exactly raw_len bytes out of one zstd frame, never allocating more (bomb guard)."""
    try:
        # With a content size in the frame header zstandard allocates that size and
        # ignores max_output_size: check it against raw_len before decompressing.
        size = zstandard.frame_content_size(stored)
        if size != -1 and size != raw_len:
            raise _frame_error(
                "zstd",
                offset,
                f"zstd frame declares {size} bytes, header raw_len is {raw_len}",
                expected=raw_len,
                found=size,
            )
        raw = _decompressor().decompress(stored, max_output_size=raw_len, allow_extra_data=False)
    except zstandard.ZstdError as e:
        raise _frame_error("zstd", offset, f"payload does not decompress: {e}") from None
    if len(raw) != raw_len:
        raise _frame_error(
            "zstd",
            offset,
            f"payload decompresses to {len(raw)} bytes, header raw_len is {raw_len}",
            expected=raw_len,
            found=len(raw),
        )
    return raw


def _frame_error(reason, offset, detail, expected=None, found=None) -> FrameError:
    return FrameError(reason, offset, detail, expected=expected, found=found)


def _records_list(records) -> list:
    if isinstance(records, list):
        return records
    try:
        return list(records)
    except TypeError:
        raise TypeError(
            f"records must be an iterable of records, not {type(records).__name__}"
        ) from None


def _int_field(i: int, name: str, value, lo: int, hi: int) -> int:
    try:
        v = operator.index(value)
    except TypeError:
        raise TypeError(f"record {i}: {name} must be an int, not {type(value).__name__}") from None
    if not lo <= v <= hi:
        raise ValueError(f"record {i}: {name} {v} out of range {lo}..{hi}")
    return v


def _bytes_field(i: int, name: str, value, limit: int) -> bytes:
    if isinstance(value, bytes):
        b = value
    elif isinstance(value, (bytearray, memoryview)):
        b = bytes(memoryview(value).cast("B"))
    else:
        raise TypeError(
            f"record {i}: {name} must be bytes, bytearray or memoryview, not {type(value).__name__}"
        )
    if len(b) > limit:
        raise ValueError(f"record {i}: {name} is {len(b)} bytes, more than {limit}")
    return b


def _normalize_record(i: int, rec) -> Record:
    """Record i validated, as a Record of ints and bytes; TypeError/ValueError if bad."""
    try:
        fields = tuple(rec)
    except TypeError:
        raise TypeError(
            f"record {i}: expected a sequence of 7 fields, not {type(rec).__name__}"
        ) from None
    if len(fields) != 7:
        raise TypeError(
            f"record {i}: expected 7 fields (type, flags, db_id, txn, key, value, before), "
            f"got {len(fields)}"
        )
    rtype, flags, db_id, txn, key, value, before = fields
    return Record(
        _int_field(i, "type", rtype, TYPE_MIN, TYPE_MAX),
        _int_field(i, "flags", flags, 0, RECORD_FLAGS_KNOWN),
        _int_field(i, "db_id", db_id, 0, U32_MAX),
        _int_field(i, "txn", txn, 0, U64_MAX),
        _bytes_field(i, "key", key, REFERENCE_BYTES_MAX),
        _bytes_field(i, "value", value, JOURNAL_RECORD_BYTES_MAX),
        _bytes_field(i, "before", before, JOURNAL_RECORD_BYTES_MAX),
    )


def _payload_too_long(n: int) -> ValueError:
    return ValueError(
        f"frame payload would be {n} bytes, more than JOURNAL_FRAME_BYTES_MAX "
        f"({JOURNAL_FRAME_BYTES_MAX})"
    )


# --- records -----------------------------------------------------------------------------


def encode_records(records) -> bytes:
    """The payload of a frame: every record (a 7-sequence, see Record), back to back."""
    recs = [_normalize_record(i, r) for i, r in enumerate(_records_list(records))]
    total = sum(
        JOURNAL_RECORD_HEADER_BYTES + len(r.key) + len(r.value) + len(r.before) for r in recs
    )
    if total > JOURNAL_FRAME_BYTES_MAX:
        raise _payload_too_long(total)
    out = bytearray()
    for r in recs:
        out += RECORD_HEADER.pack(
            r.type, r.flags, len(r.key), r.db_id, r.txn, len(r.value), len(r.before)
        )
        out += r.key
        out += r.value
        out += r.before
    return bytes(out)


def _format_error(i: int, offset: int, what: str) -> JournalFormatError:
    return JournalFormatError(
        f"journal record {i} at payload offset {offset}: {what}", offset=offset
    )


def _record_count(count, n: int) -> int:
    """decode_records' count, checked against the payload size before anything is built."""
    count = operator.index(count)
    if count < 0:
        raise ValueError(f"count must be >= 0, not {count}")
    if count * JOURNAL_RECORD_HEADER_BYTES > n:
        raise JournalFormatError(
            f"journal payload of {n} bytes cannot hold {count} records "
            f"({JOURNAL_RECORD_HEADER_BYTES} header bytes each)",
            offset=0,
            expected=count,
        )
    return count


def decode_records(payload, count: int) -> list[Record]:
    """Exactly `count` records out of `payload`, which they must fill exactly."""
    data = memoryview(payload).cast("B")
    n = len(data)
    count = _record_count(count, n)
    out = []
    pos = 0
    for i in range(count):
        if n - pos < JOURNAL_RECORD_HEADER_BYTES:
            raise _format_error(i, pos, f"header truncated ({n - pos} bytes remain)")
        rtype, flags, key_len, db_id, txn, value_len, before_len = RECORD_HEADER.unpack_from(
            data, pos
        )
        if not TYPE_MIN <= rtype <= TYPE_MAX:
            raise _format_error(i, pos, f"unknown type {rtype}")
        if flags & ~RECORD_FLAGS_KNOWN:
            raise _format_error(i, pos, f"unknown flags {flags:#04x}")
        if key_len > REFERENCE_BYTES_MAX:
            raise _format_error(i, pos, f"key_len {key_len} > {REFERENCE_BYTES_MAX}")
        if value_len > JOURNAL_RECORD_BYTES_MAX:
            raise _format_error(i, pos, f"value_len {value_len} > {JOURNAL_RECORD_BYTES_MAX}")
        if before_len > JOURNAL_RECORD_BYTES_MAX:
            raise _format_error(i, pos, f"before_len {before_len} > {JOURNAL_RECORD_BYTES_MAX}")
        body = key_len + value_len + before_len
        start = pos + JOURNAL_RECORD_HEADER_BYTES
        if body > n - start:
            raise _format_error(
                i, pos, f"body of {body} bytes truncated ({n - start} bytes remain)"
            )
        k = start + key_len
        v = k + value_len
        end = v + before_len
        out.append(
            Record(
                rtype, flags, db_id, txn, bytes(data[start:k]), bytes(data[k:v]), bytes(data[v:end])
            )
        )
        pos = end
    if pos != n:
        raise JournalFormatError(
            f"journal payload has {n - pos} bytes after its {count} records",
            offset=pos,
            expected=count,
        )
    return out


# --- frames ------------------------------------------------------------------------------


def frame_length(stored_len: int) -> int:
    """Bytes a frame with stored_len payload bytes occupies in the stream (header, padding)."""
    stored_len = operator.index(stored_len)
    if stored_len < 0:
        raise ValueError(f"stored_len must be >= 0, not {stored_len}")
    n = JOURNAL_FRAME_HEADER_BYTES + stored_len
    return (n + JOURNAL_FRAME_ALIGN - 1) // JOURNAL_FRAME_ALIGN * JOURNAL_FRAME_ALIGN


def _frame_arg(name: str, value, lo: int, hi: int) -> int:
    try:
        v = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int, not {type(value).__name__}") from None
    if not lo <= v <= hi:
        raise ValueError(f"{name} {v} out of range {lo}..{hi}")
    return v


def _frame_args(payload, count, epoch, position) -> tuple[int, int, int, bytes]:
    """encode_frame's arguments checked, as (count, epoch, position, payload bytes)."""
    count = _frame_arg("count", count, 1, U32_MAX)
    epoch = _frame_arg("epoch", epoch, 0, U64_MAX)
    position = _frame_arg("position", position, 0, U64_MAX)
    if position % JOURNAL_FRAME_ALIGN:
        raise ValueError(f"position {position} is not a multiple of {JOURNAL_FRAME_ALIGN}")
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        raise TypeError(
            f"payload must be bytes, bytearray or memoryview, not {type(payload).__name__}"
        )
    raw = payload if type(payload) is bytes else bytes(memoryview(payload).cast("B"))
    if len(raw) == 0:
        raise ValueError("payload is empty (a frame holds at least one record)")
    if len(raw) > JOURNAL_FRAME_BYTES_MAX:
        raise _payload_too_long(len(raw))
    return count, epoch, position, raw


def encode_frame(
    payload, count: int, *, epoch: int, position: int, compress: bool | None = None
) -> bytes:
    """Header + stored payload + zero padding to 8: the bytes written at `position`.

    compress: None applies the rule (zstd when raw_len >= JOURNAL_COMPRESS_MIN_BYTES and
    it saves at least 1/8), True always stores zstd, False never does."""
    count, epoch, position, raw = _frame_args(payload, count, epoch, position)
    flags, stored = _choose_stored(raw, compress)
    body = FRAME_HEADER_BODY.pack(
        JOURNAL_FRAME_MAGIC,
        JOURNAL_VERSION,
        flags,
        epoch,
        position,
        count,
        len(raw),
        len(stored),
        0,
    )
    checksum = xxhash.xxh3_64_intdigest(body + stored)
    pad = frame_length(len(stored)) - JOURNAL_FRAME_HEADER_BYTES - len(stored)
    return body + FRAME_CHECKSUM.pack(checksum) + stored + bytes(pad)


def parse_frame(buf, offset: int, expected_position: int) -> tuple[FrameHeader, bytes, int]:
    """(header, raw payload, offset of the next frame) of the frame at buf[offset:].

    Raises FrameError naming the first check that fails, in this order: truncated
    header, zero, magic, version, length, truncated payload, checksum, position, zstd.
    Nothing is allocated or read past a length before that length is checked."""
    data = memoryview(buf).cast("B")
    offset = _frame_arg("offset", offset, 0, len(data))
    expected_position = _frame_arg("expected_position", expected_position, 0, U64_MAX)
    remain = len(data) - offset
    if remain < JOURNAL_FRAME_HEADER_BYTES:
        raise _frame_error(
            "truncated",
            offset,
            f"{remain} of {JOURNAL_FRAME_HEADER_BYTES} header bytes",
            expected=JOURNAL_FRAME_HEADER_BYTES,
            found=remain,
        )
    head = bytes(data[offset : offset + JOURNAL_FRAME_HEADER_BYTES])
    if head.count(0) == JOURNAL_FRAME_HEADER_BYTES:
        raise _frame_error("zero", offset, "all header bytes are zero")
    magic, version, flags, epoch, position, count, raw_len, stored_len, reserved = (
        FRAME_HEADER_BODY.unpack_from(head)
    )
    (checksum,) = FRAME_CHECKSUM.unpack_from(head, FRAME_CHECKSUM_OFFSET)
    if magic != JOURNAL_FRAME_MAGIC:
        raise _frame_error(
            "magic", offset, f"magic {magic!r}", expected=JOURNAL_FRAME_MAGIC, found=magic
        )
    if version != JOURNAL_VERSION:
        raise _frame_error(
            "version", offset, f"version {version}", expected=JOURNAL_VERSION, found=version
        )
    if flags & ~FRAME_FLAGS_KNOWN:
        raise _frame_error("version", offset, f"unknown flags {flags:#06x}", found=flags)
    if reserved:
        raise _frame_error("version", offset, f"reserved field {reserved:#010x}", found=reserved)
    if count == 0:
        raise _frame_error("length", offset, "record count 0")
    for name, n in (("raw_len", raw_len), ("stored_len", stored_len)):
        if n == 0 or n > JOURNAL_FRAME_BYTES_MAX:
            raise _frame_error(
                "length", offset, f"{name} {n} out of range 1..{JOURNAL_FRAME_BYTES_MAX}", found=n
            )
    if not flags & FRAME_ZSTD and stored_len != raw_len:
        raise _frame_error(
            "length",
            offset,
            f"uncompressed frame with stored_len {stored_len} != raw_len {raw_len}",
            expected=raw_len,
            found=stored_len,
        )
    start = offset + JOURNAL_FRAME_HEADER_BYTES
    if len(data) - start < stored_len:
        raise _frame_error(
            "truncated",
            offset,
            f"{len(data) - start} of {stored_len} payload bytes",
            expected=stored_len,
            found=len(data) - start,
        )
    stored = bytes(data[start : start + stored_len])
    actual = xxhash.xxh3_64_intdigest(head[:FRAME_CHECKSUM_OFFSET] + stored)
    if actual != checksum:
        raise _frame_error(
            "checksum",
            offset,
            f"expected {checksum:#018x}, found {actual:#018x}",
            expected=f"{checksum:#018x}",
            found=f"{actual:#018x}",
        )
    if position != expected_position:
        raise _frame_error(
            "position",
            offset,
            f"frame says position {position}, expected {expected_position}",
            expected=expected_position,
            found=position,
        )
    raw = _zstd_decompress(stored, raw_len, offset) if flags & FRAME_ZSTD else stored
    header = FrameHeader(flags, epoch, position, count, raw_len, stored_len, checksum)
    return header, raw, offset + frame_length(stored_len)
