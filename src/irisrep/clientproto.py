"""The client protocol: frames and the tagged value encoding (docs/client-protocol.md).

Owns the bytes between `irisrep.connect` (client.py) and a member's client listener
(server.py): a frame is a u32 little-endian payload length and the payload; the
payload is one value in a small tagged encoding (None, bool, int, float, str, bytes,
tuple, list). A request is a tuple `(op, *args)`, a response `("ok", value)` or
`("err", error_class_name, message, extra)`. Nothing is ever pickled.

Promises:
- `decode_value(encode_value(v)) == v` for every value this encoding carries (NaN
  aside), with tuples and lists kept apart; the encoding is canonical (one byte
  string per value), so decoding refuses any other form;
- a frame's length is checked against `CLIENT_FRAME_BYTES_MAX` before any buffer is
  allocated; every length and count inside a payload is checked against the bytes
  that remain before it is used; nesting is bounded by `CLIENT_VALUE_DEPTH_MAX`, the
  number of values in one payload by `CLIENT_VALUE_ITEMS_MAX`, an int's magnitude by
  `CLIENT_INT_BYTES_MAX`; str must be valid UTF-8;
- bad bytes from the network raise `ProtocolError` (a `WireError`, with one reason of
  `PROTOCOL_ERROR_REASONS`) and nothing else; a value the caller asks to encode that
  the encoding cannot carry raises TypeError (a type) or ValueError (a bound);
- a reader gives up on a frame that does not arrive whole within the frame timeout
  of its first byte, however slowly it trickles.
"""

from __future__ import annotations

import struct
import time

from .constants import (
    CLIENT_FRAME_BYTES_MAX,
    CLIENT_FRAME_TIMEOUT_MS,
    CLIENT_INT_BYTES_MAX,
    CLIENT_READ_CHUNK_BYTES,
    CLIENT_SEND_TIMEOUT_MS,
    CLIENT_VALUE_DEPTH_MAX,
    CLIENT_VALUE_ITEMS_MAX,
)
from .errors import WireError

__all__ = [
    "PROTOCOL_ERROR_REASONS",
    "ProtocolError",
    "FRAME_HEADER_BYTES",
    "encode_value",
    "decode_value",
    "encode_frame",
    "recv_frame",
    "send_message",
    "recv_message",
    "MessageStream",
    "check_response",
    "CLOSED",
    "ok",
    "err",
]

PROTOCOL_ERROR_REASONS = (
    "length",  # a frame length over CLIENT_FRAME_BYTES_MAX
    "truncated",  # the connection closed inside a frame, or a value runs past the payload
    "timeout",  # a frame did not arrive whole within the frame timeout
    "tag",  # an unknown tag byte
    "utf8",  # a str that is not valid UTF-8
    "int",  # an int over CLIENT_INT_BYTES_MAX, or not in its one canonical form
    "depth",  # nesting deeper than CLIENT_VALUE_DEPTH_MAX
    "count",  # a length or count larger than what remains, or too many values
    "trailing",  # bytes after the value
    "request",  # a well-formed value that is not a valid request or response
)

FRAME_HEADER_BYTES = 4
_U32 = struct.Struct("<I")
_F64 = struct.Struct("<d")

# Tags: one byte before each value.
T_NONE = 0x00
T_FALSE = 0x01
T_TRUE = 0x02
T_INT_POS = 0x03  # u16 n, then n bytes of magnitude, little-endian, no top zero byte
T_INT_NEG = 0x04  # as T_INT_POS, magnitude >= 1
T_FLOAT = 0x05  # 8 bytes IEEE 754 binary64, little-endian
T_STR = 0x06  # u32 n, then n bytes of UTF-8
T_BYTES = 0x07  # u32 n, then n bytes
T_TUPLE = 0x08  # u32 count, then count values
T_LIST = 0x09  # u32 count, then count values
_U16 = struct.Struct("<H")


class ProtocolError(WireError):
    """Bad bytes from a client-protocol peer; `reason` is one of PROTOCOL_ERROR_REASONS.

    The connection it came from is out of step: close it."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(reason, detail)
        self.args = (f"client protocol: {reason}: {detail}",)


# --- encoding --------------------------------------------------------------------------


def encode_value(value: object) -> bytes:
    """The tagged encoding of value. TypeError for a type it cannot carry, ValueError
    for a bound (depth, item count, int size, a str that is not Unicode text)."""
    out = bytearray()
    _encode(value, out, 0, [0])
    return bytes(out)


def _encode(value: object, out: bytearray, depth: int, count: list) -> None:
    count[0] += 1
    if count[0] > CLIENT_VALUE_ITEMS_MAX:
        raise ValueError(f"more than {CLIENT_VALUE_ITEMS_MAX} values in one message")
    t = type(value)
    if value is None:
        out.append(T_NONE)
    elif t is bool:
        out.append(T_TRUE if value else T_FALSE)
    elif isinstance(value, int) and t is not bool:
        v = int(value)
        mag = -v if v < 0 else v
        n = (mag.bit_length() + 7) // 8
        if n > CLIENT_INT_BYTES_MAX:
            raise ValueError(f"int of {n} bytes: the most is {CLIENT_INT_BYTES_MAX}")
        out.append(T_INT_NEG if v < 0 else T_INT_POS)
        out += _U16.pack(n)
        out += mag.to_bytes(n, "little")
    elif isinstance(value, float):
        out.append(T_FLOAT)
        out += _F64.pack(float(value))
    elif isinstance(value, str):
        try:
            data = str(value).encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("str is not Unicode text (a lone surrogate)") from None
        out.append(T_STR)
        out += _U32.pack(len(data))
        out += data
    elif isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
        out.append(T_BYTES)
        out += _U32.pack(len(data))
        out += data
    elif isinstance(value, (tuple, list)):
        if depth >= CLIENT_VALUE_DEPTH_MAX:
            raise ValueError(f"nested deeper than {CLIENT_VALUE_DEPTH_MAX}")
        out.append(T_LIST if isinstance(value, list) else T_TUPLE)
        out += _U32.pack(len(value))
        for item in value:
            _encode(item, out, depth + 1, count)
    else:
        raise TypeError(
            f"{t.__name__} cannot be sent (None, bool, int, float, str, bytes, tuple, list only)"
        )


# --- decoding --------------------------------------------------------------------------


def decode_value(payload) -> object:
    """The one value in payload (bytes-like); ProtocolError for anything else."""
    data = bytes(payload)
    state = [0]  # values decoded so far
    value, pos = _decode(data, 0, 0, state)
    if pos != len(data):
        raise ProtocolError("trailing", f"{len(data) - pos} bytes after the value")
    return value


def _need(data: bytes, pos: int, n: int, what: str) -> None:
    if len(data) - pos < n:
        raise ProtocolError("truncated", f"{what} needs {n} bytes, {len(data) - pos} remain")


def _decode(data: bytes, pos: int, depth: int, state: list) -> tuple[object, int]:
    state[0] += 1
    if state[0] > CLIENT_VALUE_ITEMS_MAX:
        raise ProtocolError("count", f"more than {CLIENT_VALUE_ITEMS_MAX} values")
    _need(data, pos, 1, "a tag")
    tag = data[pos]
    pos += 1
    if tag == T_NONE:
        return None, pos
    if tag == T_FALSE:
        return False, pos
    if tag == T_TRUE:
        return True, pos
    if tag == T_INT_POS or tag == T_INT_NEG:
        _need(data, pos, 2, "an int length")
        (n,) = _U16.unpack_from(data, pos)
        pos += 2
        if n > CLIENT_INT_BYTES_MAX:
            raise ProtocolError("int", f"int of {n} bytes: the most is {CLIENT_INT_BYTES_MAX}")
        _need(data, pos, n, "an int")
        if n and data[pos + n - 1] == 0:
            raise ProtocolError("int", "int magnitude has a zero top byte (not canonical)")
        if tag == T_INT_NEG and n == 0:
            raise ProtocolError("int", "negative zero")
        mag = int.from_bytes(data[pos : pos + n], "little")
        return (-mag if tag == T_INT_NEG else mag), pos + n
    if tag == T_FLOAT:
        _need(data, pos, 8, "a float")
        return _F64.unpack_from(data, pos)[0], pos + 8
    if tag == T_STR or tag == T_BYTES:
        _need(data, pos, 4, "a length")
        (n,) = _U32.unpack_from(data, pos)
        pos += 4
        if n > len(data) - pos:
            raise ProtocolError("count", f"length {n} but {len(data) - pos} bytes remain")
        raw = data[pos : pos + n]
        if tag == T_BYTES:
            return raw, pos + n
        try:
            return raw.decode("utf-8"), pos + n
        except UnicodeDecodeError as e:
            raise ProtocolError("utf8", f"str is not UTF-8 (byte {e.start})") from None
    if tag == T_TUPLE or tag == T_LIST:
        if depth >= CLIENT_VALUE_DEPTH_MAX:
            raise ProtocolError("depth", f"nested deeper than {CLIENT_VALUE_DEPTH_MAX}")
        _need(data, pos, 4, "a count")
        (n,) = _U32.unpack_from(data, pos)
        pos += 4
        if n > len(data) - pos:  # every value takes at least one byte
            raise ProtocolError("count", f"count {n} but {len(data) - pos} bytes remain")
        items = []
        for _ in range(n):
            item, pos = _decode(data, pos, depth + 1, state)
            items.append(item)
        return (items if tag == T_LIST else tuple(items)), pos
    raise ProtocolError("tag", f"unknown tag 0x{tag:02x} at offset {pos - 1}")


# --- frames ----------------------------------------------------------------------------


def encode_frame(value: object) -> bytes:
    """Length prefix and payload; ValueError if the payload is over the frame bound."""
    payload = encode_value(value)
    if len(payload) > CLIENT_FRAME_BYTES_MAX:
        raise ValueError(f"message of {len(payload)} bytes: the most is {CLIENT_FRAME_BYTES_MAX}")
    return _U32.pack(len(payload)) + payload


def _fill(sock, view: memoryview, got: int, deadline: float | None, boundary: bool) -> bool:
    """Read into view[got:] until full; False for a clean close at a frame boundary.
    deadline None: block. TimeoutError if the deadline passes before the first byte
    at a boundary (the caller's idle timeout), ProtocolError("timeout") inside one."""
    while got < len(view):
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                if boundary and got == 0:
                    raise TimeoutError("no request before the deadline")
                raise ProtocolError("timeout", f"{got} of {len(view)} bytes before the deadline")
            sock.settimeout(remaining)
        else:
            sock.settimeout(None)
        try:
            n = sock.recv_into(view[got:])
        except TimeoutError:
            if boundary and got == 0:
                raise
            raise ProtocolError(
                "timeout", f"{got} of {len(view)} bytes before the deadline"
            ) from None
        except (ConnectionResetError, ConnectionAbortedError):
            n = 0  # an abrupt close is a close
        if n == 0:
            if boundary and got == 0:
                return False
            raise ProtocolError("truncated", f"connection closed after {got} of {len(view)} bytes")
        got += n
    return True


def recv_frame(
    sock,
    *,
    idle_deadline: float | None = None,
    frame_timeout_ms: int = CLIENT_FRAME_TIMEOUT_MS,
) -> bytes | None:
    """The next frame's payload, or None when the peer closed between frames.

    idle_deadline (time.monotonic()) bounds the wait for the first byte (TimeoutError
    when it passes); the rest of the frame must follow within frame_timeout_ms. The
    length is checked before the payload buffer is allocated."""
    header = bytearray(FRAME_HEADER_BYTES)
    view = memoryview(header)
    if not _fill(sock, view[:1], 0, idle_deadline, True):
        return None
    frame_deadline = time.monotonic() + frame_timeout_ms / 1000.0
    _fill(sock, view, 1, frame_deadline, False)
    (length,) = _U32.unpack(header)
    if length > CLIENT_FRAME_BYTES_MAX:
        raise ProtocolError(
            "length", f"frame of {length} bytes: the most is {CLIENT_FRAME_BYTES_MAX}"
        )
    buf = bytearray(length)
    _fill(sock, memoryview(buf), 0, frame_deadline, False)
    return bytes(buf)


def send_message(sock, value: object, *, timeout_ms: int = CLIENT_SEND_TIMEOUT_MS) -> None:
    """Encode value as one frame and send all of it (TimeoutError past timeout_ms)."""
    data = encode_frame(value)
    sock.settimeout(timeout_ms / 1000.0)
    sock.sendall(data)


def recv_message(
    sock,
    *,
    idle_deadline: float | None = None,
    frame_timeout_ms: int = CLIENT_FRAME_TIMEOUT_MS,
) -> object:
    """The next frame decoded, or the sentinel `CLOSED` when the peer closed between
    frames."""
    payload = recv_frame(sock, idle_deadline=idle_deadline, frame_timeout_ms=frame_timeout_ms)
    if payload is None:
        return CLOSED
    return decode_value(payload)


class MessageStream:
    """One connection's frames through a buffer: the long-lived form of
    `recv_message` / `send_message` that the client and the member's listener use.

    Why: reading a frame as 1 + 3 + payload bytes, with a `settimeout` before each
    call (each an ioctl, and a poll per read), cost about ten syscalls per request
    and as many chances for the GIL to change hands (bench/profile_member.py). Here
    the socket stays in one timeout mode at `steady_s` (changed only when a deadline
    is nearer than that, which is rare), a read takes whatever has arrived (usually
    the whole frame, often in one recv), and a send is one sendall: about four
    syscalls per request in the steady state.

    The same promises as the functions: the length is checked before the payload
    is waited for; a frame must arrive whole within `frame_timeout_ms` of its first
    byte; the idle deadline bounds only the wait for the first byte. The buffer holds
    at most one frame (bounded by CLIENT_FRAME_BYTES_MAX) and one read chunk."""

    __slots__ = ("sock", "_buf", "_timeout_s", "_steady_s")

    def __init__(self, sock, *, steady_s: float = CLIENT_SEND_TIMEOUT_MS / 1000.0) -> None:
        self.sock = sock
        self._buf = bytearray()
        self._steady_s = steady_s
        sock.settimeout(steady_s)
        self._timeout_s = steady_s

    def _set_timeout(self, t: float) -> None:
        if t != self._timeout_s:
            self.sock.settimeout(t)
            self._timeout_s = t

    def _read_more(self, deadline: float | None, boundary: bool) -> bool:
        """One recv appended to the buffer; False on a clean close at a boundary."""
        while True:
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    if boundary and not self._buf:
                        raise TimeoutError("no request before the deadline")
                    raise ProtocolError(
                        "timeout", f"{len(self._buf)} bytes of a frame before the deadline"
                    )
                if remaining < self._timeout_s:
                    self._set_timeout(remaining)
            elif self._timeout_s != self._steady_s:
                self._set_timeout(self._steady_s)
            try:
                data = self.sock.recv(CLIENT_READ_CHUNK_BYTES)
            except TimeoutError:
                continue  # the deadline (if any) is looked at again above
            except (ConnectionResetError, ConnectionAbortedError):
                data = b""  # an abrupt close is a close
            if not data:
                if boundary and not self._buf:
                    return False
                raise ProtocolError(
                    "truncated", f"connection closed after {len(self._buf)} bytes of a frame"
                )
            self._buf += data
            return True

    def recv_frame(
        self, *, idle_deadline: float | None = None, frame_timeout_ms: int = CLIENT_FRAME_TIMEOUT_MS
    ) -> bytes | None:
        """The next frame's payload, or None when the peer closed between frames."""
        buf = self._buf
        if not buf and not self._read_more(idle_deadline, True):
            return None
        frame_deadline = time.monotonic() + frame_timeout_ms / 1000.0
        while len(buf) < FRAME_HEADER_BYTES:
            self._read_more(frame_deadline, False)
        (length,) = _U32.unpack_from(buf)
        if length > CLIENT_FRAME_BYTES_MAX:
            raise ProtocolError(
                "length", f"frame of {length} bytes: the most is {CLIENT_FRAME_BYTES_MAX}"
            )
        end = FRAME_HEADER_BYTES + length
        while len(buf) < end:
            self._read_more(frame_deadline, False)
        payload = bytes(buf[FRAME_HEADER_BYTES:end])
        del buf[:end]
        return payload

    # --- non-blocking use (the listener's event loop feeds the buffer itself) ---

    def feed(self, data: bytes) -> None:
        """Append bytes read elsewhere (a non-blocking socket) to the buffer."""
        self._buf += data

    @property
    def buffered(self) -> int:
        """Bytes held: a partial frame, or whole frames not taken yet."""
        return len(self._buf)

    def cut_frame(self) -> bytes | None:
        """The next whole frame's payload from the buffer, or None while it is partial.
        The length is checked as soon as the header is in (ProtocolError("length"))."""
        buf = self._buf
        if len(buf) < FRAME_HEADER_BYTES:
            return None
        (length,) = _U32.unpack_from(buf)
        if length > CLIENT_FRAME_BYTES_MAX:
            raise ProtocolError(
                "length", f"frame of {length} bytes: the most is {CLIENT_FRAME_BYTES_MAX}"
            )
        end = FRAME_HEADER_BYTES + length
        if len(buf) < end:
            return None
        payload = bytes(buf[FRAME_HEADER_BYTES:end])
        del buf[:end]
        return payload

    def use_timeouts(self) -> None:
        """Back to blocking reads with timeouts (the socket was non-blocking)."""
        self.sock.settimeout(self._steady_s)
        self._timeout_s = self._steady_s

    def recv(
        self, *, idle_deadline: float | None = None, frame_timeout_ms: int = CLIENT_FRAME_TIMEOUT_MS
    ) -> object:
        """The next frame decoded, or `CLOSED` when the peer closed between frames."""
        payload = self.recv_frame(idle_deadline=idle_deadline, frame_timeout_ms=frame_timeout_ms)
        if payload is None:
            return CLOSED
        return decode_value(payload)

    def send_frame(self, data: bytes, timeout_s: float | None = None) -> None:
        """Send one encoded frame whole (TimeoutError past timeout_s, default the
        steady timeout)."""
        self._set_timeout(self._steady_s if timeout_s is None else timeout_s)
        self.sock.sendall(data)

    def send(self, value: object, timeout_s: float | None = None) -> None:
        self.send_frame(encode_frame(value), timeout_s)


class _Closed:
    def __repr__(self) -> str:
        return "CLOSED"


CLOSED = _Closed()


def ok(value: object = None) -> tuple:
    return ("ok", value)


def err(class_name: str, message: str, extra: object = None) -> tuple:
    return ("err", class_name, message, extra)


def check_response(resp: object) -> tuple:
    """A decoded response's shape, or ProtocolError("request")."""
    if type(resp) is tuple and resp:
        if resp[0] == "ok" and len(resp) == 2:
            return resp
        if (
            resp[0] == "err"
            and len(resp) == 4
            and isinstance(resp[1], str)
            and isinstance(resp[2], str)
        ):
            return resp
    raise ProtocolError("request", f"not a response: {_short(resp)}")


def _short(value: object, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
