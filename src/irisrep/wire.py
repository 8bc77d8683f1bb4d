"""The mirror transport: framed TCP, its frame codec (the readable reference) and the
authenticated handshake.

Owns the wire format of docs/wire-format.md (layout also in include/irisrep_wire.h).
Promises:
- `parse_wire_frame(encode_wire_frame(t, e, p)) == ((t, flags, e, p), len(frame))`;
  the compiled `irisrep._core` versions of the codec functions agree with this module
  byte for byte (including the compression decision) and raise the same errors with
  the same messages (tests/test_wire.py checks both);
- a reader checks every length against its bound before it allocates, never reads
  more than one frame from a socket, never decompresses past the declared raw size,
  and gives up on a frame after `WIRE_FRAME_TIMEOUT_MS` however slowly it trickles;
- bad input from the network raises `WireError` with one reason of
  `WIRE_ERROR_REASONS`; bad arguments from the caller raise ValueError/TypeError;
- the handshake proves the mirror key both ways (HMAC-SHA256 over both nonces, with
  `hmac.compare_digest`) before anything else is accepted, and a connection that fails
  it is closed with a reason logged on `logging.getLogger("irisrep.wire")`.

No member logic lives here: what a JOURNAL, ACK or STATUS frame means is the members'
business; this module carries bytes and checks their shape.
"""

from __future__ import annotations

import concurrent.futures
import hmac
import logging
import re
import secrets
import select
import selectors
import socket
import ssl
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from hashlib import sha256
from typing import NamedTuple

import xxhash
import zstandard

from .constants import (
    JOURNAL_FRAME_ALIGN,
    JOURNAL_FRAME_BYTES_MAX,
    JOURNAL_FRAME_HEADER_BYTES,
    WIRE_COMPRESS_MIN_BYTES,
    WIRE_CONNECTIONS_PENDING_MAX,
    WIRE_FRAME_BYTES_MAX,
    WIRE_FRAME_HEADER_BYTES,
    WIRE_FRAME_TIMEOUT_MS,
    WIRE_HANDSHAKE_THREADS_MAX,
    WIRE_HANDSHAKE_TIMEOUT_MS,
    WIRE_JOURNAL_PAYLOAD_BYTES_MIN,
    WIRE_KEY_BYTES_MIN,
    WIRE_LISTEN_BACKLOG_COUNT,
    WIRE_MAC_BYTES,
    WIRE_MAGIC,
    WIRE_NAME_BYTES_MAX,
    WIRE_NONCE_BYTES,
    WIRE_READ_BUFFER_BYTES,
    WIRE_REJECT_BYTES_MAX,
    WIRE_SEND_TIMEOUT_MS,
    WIRE_STATUS_BYTES_MAX,
    WIRE_VERSION,
    WIRE_ZSTD_PREFIX_BYTES,
)
from .errors import HandshakeError, WireError
from .journalcodec import _compressor as _journal_zstd_compressor
from .journalcodec import _decompressor as _journal_zstd_decompressor

# --- limits (to move to constants.py; include/irisrep_wire.h agrees) -------------------

__all__ = [
    "HELLO",
    "CHALLENGE",
    "RESPONSE",
    "WELCOME",
    "REJECT",
    "JOURNAL",
    "ACK",
    "HEARTBEAT",
    "CATCHUP_REQUEST",
    "STATUS",
    "TYPE_NAMES",
    "WIRE_ZSTD",
    "ACK_RECEIVED",
    "ACK_DURABLE",
    "ACK_APPLIED",
    "ACK_LEVELS",
    "WIRE_ERROR_REASONS",
    "HANDSHAKE_REASONS",
    "WireError",
    "HandshakeError",
    "WireFrame",
    "Peer",
    "encode_wire_frame",
    "parse_wire_header",
    "parse_wire_frame",
    "payload_bounds",
    "encode_hello",
    "decode_hello",
    "encode_ack",
    "decode_ack",
    "encode_u64",
    "decode_u64",
    "encode_name",
    "decode_name",
    "encode_journal_batch",
    "decode_journal_batch",
    "check_name",
    "FrameReader",
    "send_frame",
    "client_handshake",
    "server_handshake",
    "connect",
    "WireListener",
]

log = logging.getLogger("irisrep.wire")

# Frame types (IR_WIRE_* in the header).
HELLO = 1
CHALLENGE = 2
RESPONSE = 3
WELCOME = 4
REJECT = 5
JOURNAL = 6
ACK = 7
HEARTBEAT = 8
CATCHUP_REQUEST = 9
STATUS = 10
TYPE_NAMES = {
    HELLO: "HELLO",
    CHALLENGE: "CHALLENGE",
    RESPONSE: "RESPONSE",
    WELCOME: "WELCOME",
    REJECT: "REJECT",
    JOURNAL: "JOURNAL",
    ACK: "ACK",
    HEARTBEAT: "HEARTBEAT",
    CATCHUP_REQUEST: "CATCHUP_REQUEST",
    STATUS: "STATUS",
}

# Frame flags.
WIRE_ZSTD = 1
WIRE_FLAGS_KNOWN = WIRE_ZSTD

# Ack levels (ACK payload).
ACK_RECEIVED = 1
ACK_DURABLE = 2
ACK_APPLIED = 3
ACK_LEVELS = {ACK_RECEIVED: "received", ACK_DURABLE: "durable", ACK_APPLIED: "applied"}

U32_MAX = 2**32 - 1
U64_MAX = 2**64 - 1

# Header bytes [0, 24): magic, version, type, flags, reserved, epoch, length; the
# checksum (u64) follows at 24 and covers these 24 bytes and then the payload.
HEADER_BODY = struct.Struct("<4sHHHHQI")
CHECKSUM = struct.Struct("<Q")
CHECKSUM_OFFSET = HEADER_BODY.size
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_ACK = struct.Struct("<QB")
assert HEADER_BODY.size + CHECKSUM.size == WIRE_FRAME_HEADER_BYTES

# Raw payload bounds per type: (min, max, may be compressed).
_BOUNDS: dict[int, tuple[int, int, bool]] = {
    HELLO: (2 * 2 + WIRE_NONCE_BYTES, 2 * (1 + WIRE_NAME_BYTES_MAX) + WIRE_NONCE_BYTES, False),
    CHALLENGE: (WIRE_NONCE_BYTES + WIRE_MAC_BYTES, WIRE_NONCE_BYTES + WIRE_MAC_BYTES, False),
    RESPONSE: (WIRE_MAC_BYTES, WIRE_MAC_BYTES, False),
    WELCOME: (2, 1 + WIRE_NAME_BYTES_MAX, False),
    REJECT: (1, WIRE_REJECT_BYTES_MAX, False),
    JOURNAL: (WIRE_JOURNAL_PAYLOAD_BYTES_MIN, WIRE_FRAME_BYTES_MAX, True),
    ACK: (_ACK.size, _ACK.size, False),
    HEARTBEAT: (8, 8, False),
    CATCHUP_REQUEST: (8, 8, False),
    STATUS: (2, WIRE_STATUS_BYTES_MAX, True),
}

# Why a frame was refused. The first eight are the codec's, in the order its checks
# run (truncated covers both a short header and a short payload); the rest come from
# the reader, the payload decoders and the handshake.
WIRE_ERROR_REASONS = (
    "truncated",  # fewer than 32 header bytes, or fewer than `length` payload bytes
    "magic",  # not b"IRWF"
    "version",  # another protocol version
    "type",  # an unknown frame type
    "reserved",  # nonzero reserved field, unknown flag bits, compression on a small type
    "length",  # payload length (or compressed raw size) outside the type's bounds
    "checksum",  # xxh3_64 of header and payload does not match
    "zstd",  # checksum right, but the payload is not one zstd frame of raw size bytes
    "payload",  # a well-formed frame whose payload does not parse for its type
    "timeout",  # the frame did not arrive within its deadline
    "closed",  # the peer closed the connection between frames
    "handshake",  # see HandshakeError.reason
)

# HandshakeError reasons (also the texts of the REJECT frames the server sends).
HANDSHAKE_REASONS = (
    "unknown mirror",
    "unknown member",
    "authentication failed",
    "unexpected frame",
    "rejected",  # the peer sent a REJECT with a reason not listed here
)


class WireFrame(NamedTuple):
    """One decoded frame: its type, flags as sent, epoch and raw (decompressed) payload."""

    type: int
    flags: int
    epoch: int
    payload: bytes


class Peer(NamedTuple):
    """Who is at the other end after a successful handshake."""

    mirror: str
    member: str
    epoch: int  # the epoch the server's WELCOME carried (0 on the server side)


def _err(reason: str, detail: str) -> WireError:
    return WireError(reason, detail)


def _type_name(ftype: int) -> str:
    return TYPE_NAMES.get(ftype, str(ftype))


def payload_bounds(ftype: int) -> tuple[int, int, bool]:
    """(min, max, compressible) raw payload bytes of a frame type; KeyError if unknown."""
    return _BOUNDS[ftype]


# --- helpers shared with the compiled codec (slow, error and per-frame paths) ----------

# One per-thread zstd compressor/decompressor for the whole package (the journal
# codec's): zstandard objects are not safe to share across threads.
_compressor = _journal_zstd_compressor
_decompressor = _journal_zstd_decompressor


def _encode_args(ftype, epoch, payload) -> tuple[int, int, bytes]:
    """encode_wire_frame's arguments checked and normalised (ValueError/TypeError)."""
    if type(ftype) is not int:
        if not isinstance(ftype, int):
            raise TypeError(f"frame type must be an int, not {type(ftype).__name__}")
        ftype = int(ftype)
    if ftype not in _BOUNDS:
        raise ValueError(f"unknown wire frame type {ftype}")
    if not isinstance(epoch, int) or isinstance(epoch, bool):
        raise TypeError(f"epoch must be an int, not {type(epoch).__name__}")
    epoch = int(epoch)
    if not 0 <= epoch <= U64_MAX:
        raise ValueError(f"epoch {epoch} out of range 0..{U64_MAX}")
    if isinstance(payload, bytes):
        data = payload
    elif isinstance(payload, (bytearray, memoryview)):
        data = bytes(memoryview(payload).cast("B"))
    else:
        raise TypeError(
            f"payload must be bytes, bytearray or memoryview, not {type(payload).__name__}"
        )
    lo, hi, _ = _BOUNDS[ftype]
    if not lo <= len(data) <= hi:
        raise ValueError(f"{_type_name(ftype)} payload is {len(data)} bytes, allowed {lo}..{hi}")
    return ftype, epoch, data


def _choose_stored(ftype: int, raw: bytes, compress) -> tuple[int, bytes]:
    """(flags, payload as sent) for a raw payload: the rule of the docs, or forced."""
    _lo, hi, compressible = _BOUNDS[ftype]
    if compress is False:
        return 0, raw
    if not compressible:
        if compress:
            raise ValueError(f"{_type_name(ftype)} frames are never compressed")
        return 0, raw
    if compress is None and len(raw) < WIRE_COMPRESS_MIN_BYTES:
        return 0, raw
    stored = _U32.pack(len(raw)) + _compressor().compress(raw)
    if compress is None:
        if 8 * len(stored) <= 7 * len(raw):  # saves at least 1/8
            return WIRE_ZSTD, stored
        return 0, raw
    if len(stored) > hi:
        raise ValueError(
            f"compressed {_type_name(ftype)} payload is {len(stored)} bytes, more than {hi}"
        )
    return WIRE_ZSTD, stored


def _decompress(ftype: int, stored) -> bytes:
    """The raw payload of a compressed one (checksum already verified): the raw size
    checked against the type's bounds, then at most that many bytes decompressed."""
    lo, hi, _ = _BOUNDS[ftype]
    (raw_len,) = _U32.unpack_from(stored, 0)
    if not lo <= raw_len <= hi:
        raise _err(
            "length", f"compressed {_type_name(ftype)} raw size {raw_len} outside {lo}..{hi}"
        )
    body = bytes(stored[WIRE_ZSTD_PREFIX_BYTES:])
    try:
        # With a content size in the zstd frame header zstandard allocates that size
        # and ignores max_output_size: compare it with raw_len first (bomb guard).
        size = zstandard.frame_content_size(body)
        if size != -1 and size != raw_len:
            raise _err("zstd", f"zstd frame declares {size} bytes, prefix says {raw_len}")
        raw = _decompressor().decompress(body, max_output_size=raw_len, allow_extra_data=False)
    except zstandard.ZstdError as e:
        raise _err("zstd", f"payload does not decompress: {e}") from None
    if len(raw) != raw_len:
        raise _err("zstd", f"payload decompresses to {len(raw)} bytes, prefix says {raw_len}")
    return raw


# --- the codec ---------------------------------------------------------------------------


def encode_wire_frame(ftype, epoch, payload, compress=None) -> bytes:
    """Header + payload as sent. compress: None applies the rule (zstd for JOURNAL and
    STATUS payloads of WIRE_COMPRESS_MIN_BYTES or more when it saves at least 1/8),
    True always compresses (ValueError for a type that cannot be), False never does."""
    ftype, epoch, raw = _encode_args(ftype, epoch, payload)
    flags, stored = _choose_stored(ftype, raw, compress)
    body = HEADER_BODY.pack(WIRE_MAGIC, WIRE_VERSION, ftype, flags, 0, epoch, len(stored))
    checksum = xxhash.xxh3_64_intdigest(body + stored)
    return body + CHECKSUM.pack(checksum) + stored


def parse_wire_header(buf) -> tuple[int, int, int, int]:
    """(type, flags, epoch, length) of the header at the start of buf.

    Checks, in order: truncated, magic, version, type, reserved (also unknown flags and
    compression on a type that is never compressed), length. The checksum needs the
    payload: parse_wire_frame verifies it."""
    data = memoryview(buf).cast("B")
    n = len(data)
    if n < WIRE_FRAME_HEADER_BYTES:
        raise _err("truncated", f"{n} of {WIRE_FRAME_HEADER_BYTES} header bytes")
    magic, version, ftype, flags, reserved, epoch, length = HEADER_BODY.unpack_from(data, 0)
    if magic != WIRE_MAGIC:
        raise _err("magic", f"magic {magic!r}")
    if version != WIRE_VERSION:
        raise _err("version", f"version {version}, expected {WIRE_VERSION}")
    bounds = _BOUNDS.get(ftype)
    if bounds is None:
        raise _err("type", f"unknown frame type {ftype}")
    lo, hi, compressible = bounds
    if flags & ~WIRE_FLAGS_KNOWN:
        raise _err("reserved", f"unknown flags {flags:#06x}")
    if reserved:
        raise _err("reserved", f"reserved field {reserved:#06x}")
    if flags & WIRE_ZSTD and not compressible:
        raise _err("reserved", f"compression flag on a {_type_name(ftype)} frame")
    if flags & WIRE_ZSTD:
        if not WIRE_ZSTD_PREFIX_BYTES < length <= hi:
            raise _err(
                "length",
                f"compressed {_type_name(ftype)} length {length} outside "
                f"{WIRE_ZSTD_PREFIX_BYTES + 1}..{hi}",
            )
    elif not lo <= length <= hi:
        raise _err("length", f"{_type_name(ftype)} length {length} outside {lo}..{hi}")
    return ftype, flags, epoch, length


def parse_wire_frame(buf) -> tuple[WireFrame, int]:
    """(frame, bytes consumed) of the frame at the start of buf: header checks, then a
    whole payload (truncated), the checksum, and for a compressed payload its raw size
    (length) and decompression (zstd)."""
    data = memoryview(buf).cast("B")
    ftype, flags, epoch, length = parse_wire_header(data)
    end = WIRE_FRAME_HEADER_BYTES + length
    if len(data) < end:
        raise _err("truncated", f"{len(data) - WIRE_FRAME_HEADER_BYTES} of {length} payload bytes")
    (expected,) = CHECKSUM.unpack_from(data, CHECKSUM_OFFSET)
    h = xxhash.xxh3_64()
    h.update(data[:CHECKSUM_OFFSET])
    h.update(data[WIRE_FRAME_HEADER_BYTES:end])
    actual = h.intdigest()
    if actual != expected:
        raise _err("checksum", f"expected {expected:#018x}, found {actual:#018x}")
    stored = data[WIRE_FRAME_HEADER_BYTES:end]
    payload = _decompress(ftype, stored) if flags & WIRE_ZSTD else bytes(stored)
    return WireFrame(ftype, flags, epoch, payload), end


# --- payloads ----------------------------------------------------------------------------

_NAME = re.compile(rb"[A-Za-z0-9][A-Za-z0-9_.-]*")


def check_name(name, what: str = "name") -> str:
    """A mirror or member name: 1..WIRE_NAME_BYTES_MAX of ASCII [A-Za-z0-9_.-], starting
    with a letter or digit. ValueError otherwise."""
    if not isinstance(name, str):
        raise TypeError(f"{what} must be a str, not {type(name).__name__}")
    raw = name.encode("utf-8", "surrogatepass")
    if not 1 <= len(raw) <= WIRE_NAME_BYTES_MAX or not _NAME.fullmatch(raw):
        raise ValueError(
            f"{what} {name!r}: 1..{WIRE_NAME_BYTES_MAX} characters of A-Z a-z 0-9 _ . - "
            "starting with a letter or digit"
        )
    return name


def encode_name(name: str) -> bytes:
    raw = check_name(name).encode("ascii")
    return bytes([len(raw)]) + raw


def _take_name(data: memoryview, pos: int, what: str) -> tuple[str, int]:
    if pos >= len(data):
        raise _err("payload", f"{what}: missing")
    n = data[pos]
    raw = bytes(data[pos + 1 : pos + 1 + n])
    if n == 0 or len(raw) != n or n > WIRE_NAME_BYTES_MAX or not _NAME.fullmatch(raw):
        raise _err("payload", f"{what}: bad name {raw[:WIRE_NAME_BYTES_MAX]!r}")
    return raw.decode("ascii"), pos + 1 + n


def decode_name(payload) -> str:
    """The WELCOME payload: one name, filling the payload exactly."""
    data = memoryview(payload).cast("B")
    name, pos = _take_name(data, 0, "name")
    if pos != len(data):
        raise _err("payload", f"{len(data) - pos} bytes after the name")
    return name


def encode_hello(mirror: str, member: str, nonce: bytes) -> bytes:
    if len(nonce) != WIRE_NONCE_BYTES:
        raise ValueError(f"nonce must be {WIRE_NONCE_BYTES} bytes")
    return encode_name(mirror) + encode_name(member) + bytes(nonce)


def decode_hello(payload) -> tuple[str, str, bytes]:
    """(mirror, member, nonce) of a HELLO payload; WireError("payload") if malformed."""
    data = memoryview(payload).cast("B")
    mirror, pos = _take_name(data, 0, "mirror")
    member, pos = _take_name(data, pos, "member")
    if len(data) - pos != WIRE_NONCE_BYTES:
        raise _err("payload", f"HELLO nonce is {len(data) - pos} bytes, not {WIRE_NONCE_BYTES}")
    return mirror, member, bytes(data[pos:])


def encode_ack(position: int, level: int) -> bytes:
    if level not in ACK_LEVELS:
        raise ValueError(f"ack level {level} is not one of {sorted(ACK_LEVELS)}")
    if not 0 <= position <= U64_MAX:
        raise ValueError(f"position {position} out of range 0..{U64_MAX}")
    return _ACK.pack(position, level)


def decode_ack(payload) -> tuple[int, int]:
    """(position, level) of an ACK payload."""
    if len(payload) != _ACK.size:
        raise _err("payload", f"ACK payload is {len(payload)} bytes, not {_ACK.size}")
    position, level = _ACK.unpack_from(payload, 0)
    if level not in ACK_LEVELS:
        raise _err("payload", f"unknown ack level {level}")
    return position, level


def encode_u64(value: int) -> bytes:
    """HEARTBEAT and CATCHUP_REQUEST payloads."""
    return _U64.pack(value)


def decode_u64(payload) -> int:
    if len(payload) != 8:
        raise _err("payload", f"payload is {len(payload)} bytes, not 8")
    return _U64.unpack_from(payload, 0)[0]


def _journal_frame_length(stored_len: int) -> int:
    n = JOURNAL_FRAME_HEADER_BYTES + stored_len
    return (n + JOURNAL_FRAME_ALIGN - 1) // JOURNAL_FRAME_ALIGN * JOURNAL_FRAME_ALIGN


def encode_journal_batch(frames: Sequence[bytes]) -> bytes:
    """A JOURNAL payload: u32 count, then the journal frames exactly as written."""
    if not frames:
        raise ValueError("a journal batch holds at least one frame")
    out = _U32.pack(len(frames)) + b"".join(bytes(f) for f in frames)
    if len(out) > WIRE_FRAME_BYTES_MAX:
        raise ValueError(f"journal batch is {len(out)} bytes, more than {WIRE_FRAME_BYTES_MAX}")
    return out


_JOURNAL_STORED_LEN_OFFSET = 32  # irisrep_journal.h IR_JRNL_OFF_STORED_LEN


def decode_journal_batch(payload) -> list[bytes]:
    """The journal frames of a JOURNAL payload, each exactly as the primary wrote it.

    Only the framing is checked (magic, stored_len, that they fill the payload); the
    journal verifies each frame's checksum and position when it takes them."""
    data = memoryview(payload).cast("B")
    n = len(data)
    if n < 4:
        raise _err("payload", f"JOURNAL payload of {n} bytes has no count")
    (count,) = _U32.unpack_from(data, 0)
    if count == 0 or count * (JOURNAL_FRAME_HEADER_BYTES + JOURNAL_FRAME_ALIGN) > n - 4:
        raise _err("payload", f"JOURNAL payload of {n} bytes cannot hold {count} frames")
    out = []
    pos = 4
    for i in range(count):
        if n - pos < JOURNAL_FRAME_HEADER_BYTES:
            raise _err("payload", f"journal frame {i}: header truncated")
        if bytes(data[pos : pos + 4]) != b"IRJF":
            raise _err("payload", f"journal frame {i}: magic {bytes(data[pos : pos + 4])!r}")
        (stored_len,) = _U32.unpack_from(data, pos + _JOURNAL_STORED_LEN_OFFSET)
        if not 0 < stored_len <= JOURNAL_FRAME_BYTES_MAX:
            raise _err("payload", f"journal frame {i}: stored_len {stored_len}")
        flen = _journal_frame_length(stored_len)
        if flen > n - pos:
            raise _err("payload", f"journal frame {i}: {flen} bytes, {n - pos} remain")
        out.append(bytes(data[pos : pos + flen]))
        pos += flen
    if pos != n:
        raise _err("payload", f"{n - pos} bytes after {count} journal frames")
    return out


# --- the codec in use ---------------------------------------------------------------------


_CODEC = None  # resolved once: the import machinery costs microseconds per frame


def _codec():
    """`_core` when it has the wire codec, else this module."""
    global _CODEC
    if _CODEC is not None:
        return _CODEC
    try:
        from . import _core
    except ImportError:  # pragma: no cover - an unbuilt checkout
        _CODEC = _this
        return _this
    if hasattr(_core, "parse_wire_frame") and hasattr(_core, "encode_wire_frame"):
        _CODEC = _core
    else:
        _CODEC = _this
    return _CODEC


# --- sockets -------------------------------------------------------------------------------


def _set_timeout(sock, seconds: float) -> None:
    settimeout = getattr(sock, "settimeout", None)
    if settimeout is not None:
        seconds = max(seconds, 0.001)
        # settimeout() costs two fcntl calls even when nothing changes, and every
        # send of the same kind sets the same timeout.
        gettimeout = getattr(sock, "gettimeout", None)
        if gettimeout is None or gettimeout() != seconds:
            settimeout(seconds)


class FrameReader:
    """Reads one frame at a time from a blocking socket (or anything with recv_into).

    Each frame must arrive whole within `frame_timeout_ms` of its first byte (of the
    call, without idle_timeout_ms); the header is checked before the payload buffer is
    allocated, and that buffer is exactly header + validated length. The reader sets
    the socket's timeout itself. By default it reads exactly what the frame needs:
    one byte (when waiting idle), the header, then the payload.

    `buffered=True` (a stream that owns its socket for the rest of its life: the
    mirror's links) reads whatever is waiting, up to WIRE_READ_BUFFER_BYTES, in one
    recv and serves the following frames from it: one poll and one recv for a burst of
    frames instead of three of each per frame. Its buffer grows only to hold one
    frame whose header was checked (header + validated length) and shrinks back when
    that frame is consumed. Not for a socket handed on after a frame (a handshake's):
    bytes read ahead would be lost to the next reader."""

    def __init__(
        self,
        sock,
        *,
        frame_timeout_ms: int = WIRE_FRAME_TIMEOUT_MS,
        codec=None,
        buffered: bool = False,
    ):
        self._sock = sock
        self._buffered = buffered
        self._buf = bytearray(0)  # buffered: bytes [_lo, _hi) read, not yet served
        self._lo = 0
        self._hi = 0
        self._frame_timeout = frame_timeout_ms / 1000.0
        self._codec = codec if codec is not None else _codec()
        # Wait for bytes with poll() and our own deadline, never with the socket's
        # timeout: another thread sending on the same socket (acks, heartbeats,
        # statuses) sets that timeout for its sendall, and a shared timeout would let
        # each side stretch or cut the other's wait.
        self._poll = None
        fileno = getattr(sock, "fileno", None)
        if fileno is not None:
            try:
                self._poll = select.poll()
                self._poll.register(fileno(), select.POLLIN)
            except (OSError, ValueError, TypeError):
                self._poll = None

    def _readable(self, remaining: float) -> bool:
        pending = getattr(self._sock, "pending", None)
        if pending is not None and pending():
            return True  # TLS: bytes already decrypted
        ms = max(0, int(remaining * 1000) + 1)
        try:
            return bool(self._poll.poll(ms))
        except InterruptedError:
            return False

    def _recv_step(
        self, view: memoryview, got: int, want: int, deadline: float, at_boundary: bool
    ) -> int:
        """One wait for bytes (until `deadline`) and one recv into `view`: how many
        came (0: none yet, call again). `got` of `want` say where the frame stands,
        for the error: "timeout", "closed" (at a frame boundary) or "truncated"."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _err("timeout", f"{got} of {want} bytes before the deadline")
        if self._poll is not None:
            if not self._readable(remaining):
                return 0  # the deadline check above decides
        else:
            _set_timeout(self._sock, remaining)
        try:
            n = self._sock.recv_into(view)
        except TimeoutError:
            raise _err("timeout", f"{got} of {want} bytes before the deadline") from None
        except (BlockingIOError, InterruptedError):
            return 0
        except (ConnectionResetError, ConnectionAbortedError):
            n = 0  # an abrupt close is a close
        if n == 0:
            if at_boundary and got == 0:
                raise _err("closed", "the peer closed the connection")
            raise _err("truncated", f"connection closed after {got} of {want} bytes")
        return n

    def _frame_deadline(self, deadline: float | None) -> float:
        """The frame timeout from now, cut by the caller's `deadline`."""
        d = time.monotonic() + self._frame_timeout
        return d if deadline is None else min(d, deadline)

    def read_frame(
        self, *, idle_timeout_ms: int | None = None, deadline: float | None = None
    ) -> WireFrame:
        """The next frame. idle_timeout_ms: how long to wait for its first byte (then
        the frame timeout runs from that byte); deadline: a time.monotonic() value that
        no part of the frame may pass (a handshake's)."""
        frame_deadline = self._frame_deadline(deadline)
        if self._hi == self._lo and idle_timeout_ms is not None:
            first = time.monotonic() + idle_timeout_ms / 1000.0
            if deadline is not None:
                first = min(first, deadline)
            self._want(1, first, at_boundary=True)
            frame_deadline = self._frame_deadline(deadline)  # from its first byte
        self._want(WIRE_FRAME_HEADER_BYTES, frame_deadline, at_boundary=True)
        lo = self._lo
        with memoryview(self._buf) as mv:
            _ftype, _flags, _epoch, length = self._codec.parse_wire_header(
                mv[lo : lo + WIRE_FRAME_HEADER_BYTES]
            )
        # `length` is checked against the maximum: only now may the buffer grow to it.
        total = WIRE_FRAME_HEADER_BYTES + length
        self._want(total, frame_deadline, at_boundary=False)
        lo = self._lo
        with memoryview(self._buf) as mv:
            # The payload is copied out (parse_wire_frame returns its own bytes), so
            # the buffer can be reused at once.
            frame, _end = self._codec.parse_wire_frame(mv[lo : lo + total])
        self._lo = lo + total
        if self._lo == self._hi:
            self._lo = self._hi = 0
            keep = WIRE_READ_BUFFER_BYTES if self._buffered else 0
            if len(self._buf) > keep:
                self._buf = bytearray(keep)  # after a big frame (exact: after any)
        return frame

    def buffered_bytes(self) -> int:
        """Bytes read from the socket and not yet served as frames."""
        return self._hi - self._lo

    def _want(self, n: int, deadline: float, *, at_boundary: bool) -> None:
        """Until at least `n` unserved bytes are in the buffer (n: one byte, a header,
        or one frame whose header was checked). Buffered: reading whatever else is
        waiting with them; exact: never a byte more than `n`."""
        while self._hi - self._lo < n:
            if len(self._buf) - self._lo < n:
                # Move the unserved bytes to the front; grow only to hold `n`.
                rest = self._buf[self._lo : self._hi]
                size = max(WIRE_READ_BUFFER_BYTES, n) if self._buffered else n
                if len(self._buf) != size:
                    self._buf = bytearray(size)
                self._buf[: len(rest)] = rest
                self._lo, self._hi = 0, len(rest)
            stop = len(self._buf) if self._buffered else self._lo + n
            with memoryview(self._buf) as mv:
                self._hi += self._recv_step(
                    mv[self._hi : stop], self._hi - self._lo, n, deadline, at_boundary
                )


def send_frame(
    sock,
    ftype: int,
    epoch: int,
    payload,
    *,
    compress=None,
    timeout_ms: int = WIRE_SEND_TIMEOUT_MS,
    codec=None,
) -> int:
    """Encode and send one frame (all of it, or WireError("timeout")); bytes sent."""
    data = (codec if codec is not None else _codec()).encode_wire_frame(
        ftype, epoch, payload, compress
    )
    _set_timeout(sock, timeout_ms / 1000.0)
    try:
        sock.sendall(data)
    except TimeoutError:
        raise _err(
            "timeout", f"{TYPE_NAMES[ftype]} frame not sent within {timeout_ms} ms"
        ) from None
    return len(data)


# --- the handshake ---------------------------------------------------------------------------


def _key_bytes(key) -> bytes:
    if isinstance(key, str):
        key = key.encode("utf-8")
    if not isinstance(key, (bytes, bytearray)):
        raise TypeError(f"mirror key must be bytes or str, not {type(key).__name__}")
    if len(key) < WIRE_KEY_BYTES_MIN:
        raise ValueError(f"mirror key must be at least {WIRE_KEY_BYTES_MIN} bytes")
    return bytes(key)


def _proof(key: bytes, role: bytes, hello: bytes, nonce_s: bytes) -> bytes:
    """HMAC-SHA256 over a role label, the whole HELLO payload (names and the client's
    nonce) and the server's nonce: each side's proof covers both nonces, and the labels
    keep a server's proof from being replayed as a client's."""
    return hmac.new(key, b"irisrep-wire-1 " + role + b"\0" + hello + nonce_s, sha256).digest()


def _fail(sock, reason: str, detail: str, *, reject: bool, epoch: int = 0) -> HandshakeError:
    """Send REJECT(reason) if asked (best effort), close, log; the error to raise."""
    if reject:
        try:
            send_frame(sock, REJECT, epoch, reason.encode("utf-8"), timeout_ms=1000)
        except (OSError, WireError):
            pass
    _close(sock)
    log.warning("handshake failed: %s: %s", reason, detail)
    return HandshakeError(reason, detail)


def _close(sock) -> None:
    try:
        sock.close()
    except OSError:
        pass


def _peer_rejected(frame: WireFrame) -> tuple[str, str]:
    text = frame.payload.decode("utf-8", "replace")
    return (text if text in HANDSHAKE_REASONS else "rejected"), f"the peer says {text[:80]!r}"


def _read(reader: FrameReader, sock, deadline: float) -> WireFrame:
    try:
        return reader.read_frame(deadline=deadline)
    except (WireError, OSError) as e:
        _close(sock)
        log.warning("handshake failed: %s", e)
        raise


def server_handshake(
    sock,
    *,
    mirror: str,
    member: str,
    key,
    known_members: Iterable[str],
    epoch: int = 0,
    timeout_ms: int = WIRE_HANDSHAKE_TIMEOUT_MS,
    deadline: float | None = None,
) -> Peer:
    """Run the server side on a connected socket: HELLO -> CHALLENGE -> RESPONSE ->
    WELCOME (carrying `epoch`). On any failure the socket is closed, the reason logged,
    and WireError/HandshakeError raised. Membership is checked only after the client
    has proved the key, so a party without it learns nothing about the members."""
    key = _key_bytes(key)
    known = frozenset(known_members)
    if deadline is None:
        deadline = time.monotonic() + timeout_ms / 1000.0
    reader = FrameReader(sock, frame_timeout_ms=timeout_ms)
    f = _read(reader, sock, deadline)
    if f.type != HELLO:
        raise _fail(sock, "unexpected frame", f"{_type_name(f.type)} instead of HELLO", reject=True)
    try:
        peer_mirror, peer_member, nonce_c = decode_hello(f.payload)
    except WireError as e:
        _close(sock)
        log.warning("handshake failed: %s", e)
        raise
    if peer_mirror != mirror:
        raise _fail(sock, "unknown mirror", f"HELLO for mirror {peer_mirror!r}", reject=True)
    nonce_s = secrets.token_bytes(WIRE_NONCE_BYTES)
    try:
        send_frame(sock, CHALLENGE, 0, nonce_s + _proof(key, b"server", f.payload, nonce_s))
    except (OSError, WireError) as e:
        raise _fail(sock, "closed", f"sending CHALLENGE: {e}", reject=False) from None
    r = _read(reader, sock, deadline)
    if r.type == REJECT:
        reason, detail = _peer_rejected(r)
        raise _fail(sock, reason, f"{peer_member!r}: {detail}", reject=False)
    if r.type != RESPONSE:
        raise _fail(
            sock, "unexpected frame", f"{_type_name(r.type)} instead of RESPONSE", reject=True
        )
    if not hmac.compare_digest(r.payload, _proof(key, b"client", f.payload, nonce_s)):
        raise _fail(sock, "authentication failed", f"member {peer_member!r}", reject=True)
    if peer_member not in known:
        raise _fail(sock, "unknown member", f"member {peer_member!r}", reject=True)
    try:
        send_frame(sock, WELCOME, epoch, encode_name(member))
    except (OSError, WireError) as e:
        raise _fail(sock, "closed", f"sending WELCOME: {e}", reject=False) from None
    log.info("member %r of mirror %r connected", peer_member, mirror)
    return Peer(mirror, peer_member, 0)


def client_handshake(
    sock,
    *,
    mirror: str,
    member: str,
    key,
    timeout_ms: int = WIRE_HANDSHAKE_TIMEOUT_MS,
) -> Peer:
    """Run the client side on a connected socket; the server's Peer (its member name
    and the epoch of its WELCOME). On failure: closed, logged, HandshakeError/WireError."""
    key = _key_bytes(key)
    nonce_c = secrets.token_bytes(WIRE_NONCE_BYTES)
    hello = encode_hello(mirror, member, nonce_c)
    deadline = time.monotonic() + timeout_ms / 1000.0
    reader = FrameReader(sock, frame_timeout_ms=timeout_ms)
    try:
        send_frame(sock, HELLO, 0, hello)
    except (OSError, WireError) as e:
        raise _fail(sock, "closed", f"sending HELLO: {e}", reject=False) from None
    f = _read(reader, sock, deadline)
    if f.type == REJECT:
        reason, detail = _peer_rejected(f)
        raise _fail(sock, reason, detail, reject=False)
    if f.type != CHALLENGE:
        raise _fail(
            sock, "unexpected frame", f"{_type_name(f.type)} instead of CHALLENGE", reject=True
        )
    nonce_s, mac = f.payload[:WIRE_NONCE_BYTES], f.payload[WIRE_NONCE_BYTES:]
    if not hmac.compare_digest(mac, _proof(key, b"server", hello, nonce_s)):
        raise _fail(sock, "authentication failed", "the server did not prove the key", reject=True)
    try:
        send_frame(sock, RESPONSE, 0, _proof(key, b"client", hello, nonce_s))
    except (OSError, WireError) as e:
        raise _fail(sock, "closed", f"sending RESPONSE: {e}", reject=False) from None
    w = _read(reader, sock, deadline)
    if w.type == REJECT:
        reason, detail = _peer_rejected(w)
        raise _fail(sock, reason, detail, reject=False)
    if w.type != WELCOME:
        raise _fail(
            sock, "unexpected frame", f"{_type_name(w.type)} instead of WELCOME", reject=True
        )
    try:
        server_member = decode_name(w.payload)
    except WireError as e:
        _close(sock)
        log.warning("handshake failed: %s", e)
        raise
    return Peer(mirror, server_member, w.epoch)


def connect(
    address: tuple[str, int],
    *,
    mirror: str,
    member: str,
    key,
    ssl_context: ssl.SSLContext | None = None,
    server_hostname: str | None = None,
    timeout_ms: int = WIRE_HANDSHAKE_TIMEOUT_MS,
    source_host: str | None = None,
) -> tuple[socket.socket, Peer]:
    """A connected, authenticated socket to a member's mirror listener (TLS first if
    ssl_context is given) and the Peer it proved to be. `source_host`: the local
    address to connect from (a member's own host address, so that the network, and
    a partition test's firewall rules, see which member is talking)."""
    check_name(mirror, "mirror")
    check_name(member, "member")
    _key_bytes(key)
    sock = socket.create_connection(
        address,
        timeout=timeout_ms / 1000.0,
        source_address=(source_host, 0) if source_host else None,
    )
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if ssl_context is not None:
            sock = ssl_context.wrap_socket(sock, server_hostname=server_hostname or address[0])
    except (OSError, ssl.SSLError):
        _close(sock)
        raise
    return sock, client_handshake(
        sock, mirror=mirror, member=member, key=key, timeout_ms=timeout_ms
    )


class WireListener:
    """A mirror listener that stays bounded under floods of idle or slow connections.

    One thread accepts and watches connections that have sent nothing yet; each is
    closed (and logged) when nothing arrives within the handshake deadline; at most
    `pending_max` connections wait or shake hands at once: when full, a new one closes
    the oldest that has sent nothing, or is itself closed if all are in handshakes.
    A connection that sends its first byte is handed to one of `threads_max` handshake
    threads (TLS first, when `ssl_context` is given), whose deadline still runs from
    the accept. A welcomed connection goes to `on_peer(sock, peer)`, which owns it from
    then on and must return promptly (it runs on a handshake thread)."""

    def __init__(
        self,
        address: tuple[str, int],
        *,
        mirror: str,
        member: str,
        key,
        known_members: Iterable[str],
        on_peer: Callable[[socket.socket, Peer], None],
        ssl_context: ssl.SSLContext | None = None,
        epoch: Callable[[], int] | int = 0,
        handshake_timeout_ms: int = WIRE_HANDSHAKE_TIMEOUT_MS,
        pending_max: int = WIRE_CONNECTIONS_PENDING_MAX,
        threads_max: int = WIRE_HANDSHAKE_THREADS_MAX,
    ) -> None:
        self.mirror = check_name(mirror, "mirror")
        self.member = check_name(member, "member")
        self._key = _key_bytes(key)
        self._known = frozenset(check_name(m, "member") for m in known_members)
        self._on_peer = on_peer
        self._ssl = ssl_context
        self._epoch = epoch
        self._timeout = handshake_timeout_ms / 1000.0
        self._pending_max = pending_max
        self._lock = threading.Lock()
        self._busy = 0  # connections watched or in a handshake
        self.stats = {
            "accepted": 0,
            "refused": 0,
            "evicted": 0,
            "idle_closed": 0,
            "failed": 0,
            "welcomed": 0,
        }
        self.busy_peak = 0
        self._sock = socket.create_server(address, backlog=WIRE_LISTEN_BACKLOG_COUNT)
        self._sock.setblocking(False)
        self.address = self._sock.getsockname()[:2]
        self._sel = selectors.DefaultSelector()
        self._sel.register(self._sock, selectors.EVENT_READ, None)
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=threads_max, thread_name_prefix="irisrep-wire-handshake"
        )
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="irisrep-wire-listen", daemon=True)
        self._thread.start()

    def __enter__(self) -> WireListener:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _release(self, key: str) -> None:
        with self._lock:
            self.stats[key] += 1
            self._busy -= 1

    def _run(self) -> None:
        pending: dict[socket.socket, float] = {}
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                wait = 0.05
                if pending:
                    wait = max(0.0, min(wait, min(pending.values()) - now))
                for skey, _ev in self._sel.select(timeout=wait):
                    if skey.fileobj is self._sock:
                        self._accept(pending)
                    else:
                        conn = skey.fileobj
                        self._sel.unregister(conn)
                        started = pending.pop(conn) - self._timeout
                        self._pool.submit(self._handshake, conn, started)
                now = time.monotonic()
                for conn, dl in list(pending.items()):
                    if dl <= now:
                        self._sel.unregister(conn)
                        del pending[conn]
                        _close(conn)
                        self._release("idle_closed")
                        log.warning(
                            "connection closed: nothing received within %d ms",
                            int(self._timeout * 1000),
                        )
        finally:
            for conn in pending:
                _close(conn)
            self._sel.close()
            _close(self._sock)

    def _accept(self, pending: dict) -> None:
        for _ in range(WIRE_LISTEN_BACKLOG_COUNT):  # bounded: back to the loop after
            try:
                conn, addr = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:  # EMFILE and friends: log, keep serving
                log.warning("accept failed: %s", e)
                return
            if self._busy >= self._pending_max and pending:
                # Full: the oldest connection that has sent nothing makes room (a member
                # sends HELLO at once, so a flood of idle ones cannot lock it out).
                old = next(iter(pending))
                self._sel.unregister(old)
                del pending[old]
                _close(old)
                self._release("evicted")
                log.warning("idle connection closed to make room: %d pending", self._pending_max)
            with self._lock:
                full = self._busy >= self._pending_max
                if not full:
                    self._busy += 1
                    self.busy_peak = max(self.busy_peak, self._busy)
                self.stats["refused" if full else "accepted"] += 1
            if full:
                _close(conn)
                log.warning("connection from %s refused: %d in handshakes", addr, self._pending_max)
                continue
            conn.setblocking(True)
            # Frames and acks are small and latency-bound: never hold one back for
            # the peer's ACK of the previous (Nagle), on either end.
            try:
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass  # not TCP (a test's socketpair): nothing to turn off
            pending[conn] = time.monotonic() + self._timeout
            self._sel.register(conn, selectors.EVENT_READ, None)

    def _handshake(self, conn: socket.socket, started: float) -> None:
        deadline = started + self._timeout
        sock = conn
        try:
            if self._ssl is not None:
                conn.settimeout(max(deadline - time.monotonic(), 0.001))
                sock = self._ssl.wrap_socket(conn, server_side=True)
            epoch = self._epoch() if callable(self._epoch) else self._epoch
            peer = server_handshake(
                sock,
                mirror=self.mirror,
                member=self.member,
                key=self._key,
                known_members=self._known,
                epoch=epoch,
                timeout_ms=int(self._timeout * 1000),
                deadline=deadline,
            )
        except (WireError, OSError, ssl.SSLError) as e:
            _close(sock)
            if not isinstance(e, WireError):
                log.warning("handshake failed: %s", e)
            self._release("failed")
            return
        self._release("welcomed")
        try:
            self._on_peer(sock, peer)
        except Exception:
            log.exception("on_peer failed for %r; connection closed", peer.member)
            _close(sock)


_this = sys.modules[__name__]
