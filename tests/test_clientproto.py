"""The client protocol's codec and frames: values round-trip exactly, the encoding is
canonical, every bound holds, and random bytes never raise anything but ProtocolError."""

from __future__ import annotations

import math
import pickle
import socket
import struct
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from irisrep.clientproto import (
    CLOSED,
    PROTOCOL_ERROR_REASONS,
    MessageStream,
    ProtocolError,
    check_response,
    decode_value,
    encode_frame,
    encode_value,
    recv_frame,
    recv_message,
    send_message,
)
from irisrep.constants import (
    CLIENT_FRAME_BYTES_MAX,
    CLIENT_INT_BYTES_MAX,
    CLIENT_VALUE_DEPTH_MAX,
    CLIENT_VALUE_ITEMS_MAX,
)
from irisrep.errors import IrisrepError, WireError

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**200), max_value=2**200)
    | st.floats(allow_nan=False)
    | st.text()
    | st.binary()
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=5) | st.lists(inner, max_size=5).map(tuple),
    max_leaves=30,
)


def _same(a, b) -> bool:
    """Equal, with tuple and list kept apart and bool apart from int."""
    if type(a) is not type(b):
        return False
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and math.isnan(a):
        return math.isnan(b)
    return a == b


def _has_nan(v) -> bool:
    if isinstance(v, float):
        return math.isnan(v)
    if isinstance(v, (list, tuple)):
        return any(_has_nan(x) for x in v)
    return False


# --- values ------------------------------------------------------------------------------


@given(values)
@settings(max_examples=150, deadline=None)
def test_round_trip(v):
    data = encode_value(v)
    assert _same(decode_value(data), v)
    assert encode_value(decode_value(data)) == data


@given(st.binary(max_size=200))
@settings(max_examples=800, deadline=None)
def test_random_bytes_only_protocol_error(data):
    try:
        v = decode_value(data)
    except ProtocolError as e:
        assert e.reason in PROTOCOL_ERROR_REASONS
        return
    if not _has_nan(v):  # canonical: one byte string per value
        assert encode_value(v) == data


@given(values, st.data())
@settings(max_examples=120, deadline=None)
def test_mutated_encoding_only_protocol_error(v, data):
    raw = bytearray(encode_value(v))
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        if op == "flip" and raw:
            i = data.draw(st.integers(0, len(raw) - 1))
            raw[i] = data.draw(st.integers(0, 255))
        elif op == "cut" and raw:
            del raw[data.draw(st.integers(0, len(raw) - 1)) :]
        else:
            raw.insert(data.draw(st.integers(0, len(raw))), data.draw(st.integers(0, 255)))
    try:
        decode_value(bytes(raw))
    except ProtocolError:
        pass


def test_tuple_and_list_stay_apart():
    assert decode_value(encode_value((1, [2, (3,)]))) == (1, [2, (3,)])
    assert type(decode_value(encode_value([]))) is list
    assert type(decode_value(encode_value(()))) is tuple
    assert decode_value(encode_value(True)) is True
    assert decode_value(encode_value(1)) == 1 and type(decode_value(encode_value(1))) is int


def test_never_pickled():
    assert b"pickle" not in encode_value(("x", 1))
    with pytest.raises(TypeError):
        encode_value({"a": 1})
    with pytest.raises(TypeError):
        encode_value(object())


def _fails(data: bytes, reason: str) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        decode_value(data)
    assert info.value.reason == reason, info.value
    return info.value


def test_depth_bound():
    v: object = 1
    for _ in range(CLIENT_VALUE_DEPTH_MAX):
        v = (v,)
    assert decode_value(encode_value(v)) == v
    with pytest.raises(ValueError):
        encode_value((v,))
    data = b"\x08\x01\x00\x00\x00" * (CLIENT_VALUE_DEPTH_MAX + 1) + b"\x00"
    _fails(data, "depth")


def test_int_bounds_and_canonical_form():
    big = 2 ** (8 * CLIENT_INT_BYTES_MAX) - 1
    assert decode_value(encode_value(big)) == big
    assert decode_value(encode_value(-big)) == -big
    with pytest.raises(ValueError):
        encode_value(big + 1)
    n = CLIENT_INT_BYTES_MAX + 1
    _fails(b"\x03" + struct.pack("<H", n) + b"\x01" * n, "int")
    _fails(b"\x03\x02\x00\x01\x00", "int")  # a zero top byte
    _fails(b"\x04\x00\x00", "int")  # negative zero
    assert decode_value(b"\x03\x00\x00") == 0


def test_str_must_be_utf8():
    _fails(b"\x06\x02\x00\x00\x00\xc3\x28", "utf8")
    _fails(b"\x06\x03\x00\x00\x00\xed\xa0\x80", "utf8")  # an encoded surrogate
    with pytest.raises(ValueError):
        encode_value("\ud800")
    assert decode_value(encode_value("é€😀")) == "é€😀"


def test_lengths_checked_against_what_remains():
    _fails(b"\x06\xff\xff\xff\xff", "count")
    _fails(b"\x07\x05\x00\x00\x00abc", "count")
    _fails(b"\x08\xff\xff\xff\xff\x00", "count")
    _fails(b"\x05\x00\x00", "truncated")
    _fails(b"\x06\x00", "truncated")
    _fails(b"", "truncated")
    _fails(b"\x00\x00", "trailing")
    _fails(b"\x0a", "tag")
    _fails(b"\xff", "tag")


def test_value_count_bound():
    n = CLIENT_VALUE_ITEMS_MAX
    _fails(b"\x09" + struct.pack("<I", n) + b"\x00" * n, "count")  # n + 1 values
    with pytest.raises(ValueError):
        encode_value([None] * n)


def test_protocol_error_is_a_wire_error():
    e = ProtocolError("tag", "unknown tag 0x0a")
    assert isinstance(e, WireError) and isinstance(e, IrisrepError)
    assert e.reason == "tag" and "unknown tag" in str(e) and str(e).startswith("client protocol")
    again = pickle.loads(pickle.dumps(e))
    assert type(again) is ProtocolError and again.reason == "tag"


def test_check_response():
    assert check_response(("ok", None)) == ("ok", None)
    assert check_response(("err", "UndefinedError", "m", None))[1] == "UndefinedError"
    for bad in (None, (), ("ok",), ("err", 1, "m", None), ["ok", 1], ("maybe", 1)):
        with pytest.raises(ProtocolError):
            check_response(bad)


# --- frames ------------------------------------------------------------------------------


@pytest.fixture
def pair():
    a, b = socket.socketpair()
    yield a, b
    a.close()
    b.close()


def test_frame_round_trip(pair):
    a, b = pair
    send_message(a, ("set", "g", ("a", 1), "x" * 1000))
    assert recv_message(b) == ("set", "g", ("a", 1), "x" * 1000)
    a.close()
    assert recv_message(b) is CLOSED


def test_oversized_length_refused_before_reading(pair):
    a, b = pair
    a.sendall(struct.pack("<I", 2**32 - 1))
    with pytest.raises(ProtocolError) as info:
        recv_frame(b)
    assert info.value.reason == "length"
    a.sendall(struct.pack("<I", CLIENT_FRAME_BYTES_MAX + 1))
    with pytest.raises(ProtocolError, match="length"):
        recv_frame(b)
    with pytest.raises(ValueError):
        encode_frame(b"x" * (CLIENT_FRAME_BYTES_MAX + 1))


def test_truncated_frame(pair):
    a, b = pair
    a.sendall(struct.pack("<I", 10) + b"abc")
    a.close()
    with pytest.raises(ProtocolError) as info:
        recv_frame(b)
    assert info.value.reason == "truncated"


def test_truncated_header(pair):
    a, b = pair
    a.sendall(b"\x05\x00")
    a.close()
    with pytest.raises(ProtocolError, match="truncated"):
        recv_frame(b)


def test_trickling_frame_times_out(pair):
    a, b = pair
    a.sendall(struct.pack("<I", 10) + b"ab")
    t = time.monotonic()
    with pytest.raises(ProtocolError) as info:
        recv_frame(b, frame_timeout_ms=200)
    assert info.value.reason == "timeout"
    assert time.monotonic() - t < 2


def test_idle_deadline(pair):
    _a, b = pair
    with pytest.raises(TimeoutError):
        recv_frame(b, idle_deadline=time.monotonic() + 0.1)


def test_frame_whole_from_pieces(pair):
    a, b = pair
    frame = encode_frame(("ping",))

    def trickle():
        for i in range(len(frame)):
            a.sendall(frame[i : i + 1])
            time.sleep(0.002)

    t = threading.Thread(target=trickle)
    t.start()
    assert recv_message(b) == ("ping",)
    t.join()


@given(st.binary(max_size=64))
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_random_frames_only_protocol_error(payload):
    a, b = socket.socketpair()
    try:
        a.sendall(struct.pack("<I", len(payload)) + payload)
        a.close()
        try:
            recv_message(b, frame_timeout_ms=1000)
        except ProtocolError as e:
            assert e.reason in PROTOCOL_ERROR_REASONS
    finally:
        a.close()
        b.close()


# --- MessageStream: the buffered form the client and the listener use ---------------------


def test_stream_frames_arriving_together_come_out_one_by_one(pair):
    a, b = pair
    # Three frames in one send (a pipelining peer): one recv, three messages, in order.
    a.sendall(encode_frame(("a",)) + encode_frame(("b", 1)) + encode_frame(("c", b"x" * 5000)))
    s = MessageStream(b)
    assert s.recv() == ("a",)
    assert s.recv() == ("b", 1)
    assert s.recv() == ("c", b"x" * 5000)
    a.close()
    assert s.recv() is CLOSED


def test_stream_round_trip_and_large_frames(pair):
    a, b = pair
    sa, sb = MessageStream(a), MessageStream(b)
    big = ("items", [("k" * 100, "v" * 1000)] * 300)  # several read chunks
    t = threading.Thread(target=lambda: sa.send(big))
    t.start()
    assert sb.recv() == big
    t.join()
    sb.send(("ok", None))
    assert sa.recv() == ("ok", None)


def test_stream_length_refused_before_the_payload(pair):
    a, b = pair
    a.sendall(struct.pack("<I", CLIENT_FRAME_BYTES_MAX + 1))  # and nothing more
    t = time.monotonic()
    with pytest.raises(ProtocolError) as info:
        MessageStream(b).recv(frame_timeout_ms=5000)
    assert info.value.reason == "length" and time.monotonic() - t < 1


def test_stream_truncated_and_trickling(pair):
    a, b = pair
    a.sendall(struct.pack("<I", 10) + b"ab")
    t = time.monotonic()
    with pytest.raises(ProtocolError) as info:
        MessageStream(b).recv(frame_timeout_ms=200)
    assert info.value.reason == "timeout" and time.monotonic() - t < 2
    a2, b2 = socket.socketpair()
    a2.sendall(b"\x05\x00")
    a2.close()
    with pytest.raises(ProtocolError, match="truncated"):
        MessageStream(b2).recv()
    b2.close()


def test_stream_idle_deadline_then_still_usable(pair):
    a, b = pair
    s = MessageStream(b, steady_s=5.0)
    t = time.monotonic()
    with pytest.raises(TimeoutError):
        s.recv(idle_deadline=time.monotonic() + 0.1)
    assert time.monotonic() - t < 2  # the deadline, not the steady timeout
    # Nothing was lost or half-read: the next frame comes whole, with no deadline
    # (waiting past the steady timeout is not an error then).
    threading.Timer(0.3, lambda: a.sendall(encode_frame(("late",)))).start()
    s2 = MessageStream(b, steady_s=0.1)
    assert s2.recv() == ("late",)


def test_stream_frame_whole_from_pieces(pair):
    a, b = pair
    frame = encode_frame(("ping", "x" * 50)) * 2

    def trickle():
        for i in range(len(frame)):
            a.sendall(frame[i : i + 1])
            time.sleep(0.001)

    t = threading.Thread(target=trickle)
    t.start()
    s = MessageStream(b)
    assert s.recv() == ("ping", "x" * 50) and s.recv() == ("ping", "x" * 50)
    t.join()
