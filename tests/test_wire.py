"""The mirror transport: codec (Cython `_core` and pure-Python `wire` agree byte for
byte and error for error), every malformed frame of TESTING.md "Bad input", the frame
reader's bounds and deadlines, and the authenticated handshake over real TCP on
127.0.0.1 (wrong key, unknown member, floods of idle connections, TLS).

Every socket has a timeout and every loop a bound; every test has a pytest timeout.
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import os
import socket
import struct
import threading
import time
import tracemalloc

import pytest
import xxhash
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from irisrep import _core, wire
from irisrep.constants import WIRE_READ_BUFFER_BYTES
from irisrep.errors import IrisrepError
from irisrep.journalcodec import SET, Record, encode_frame, encode_records
from irisrep.wire import (
    ACK,
    CATCHUP_REQUEST,
    CHALLENGE,
    HEARTBEAT,
    HELLO,
    JOURNAL,
    REJECT,
    RESPONSE,
    STATUS,
    TYPE_NAMES,
    WELCOME,
    WIRE_ERROR_REASONS,
    WIRE_FRAME_BYTES_MAX,
    WIRE_ZSTD,
    FrameReader,
    HandshakeError,
    WireError,
    WireListener,
)

pytestmark = pytest.mark.timeout(120)

IMPLS = [pytest.param(wire, id="python"), pytest.param(_core, id="cython")]
HYP = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
KEY = b"k" * 32
MIRROR = "MIRROR1"
MEMBERS = {"A", "B", "ASYNC1"}
HDR = struct.Struct("<4sHHHHQIQ")


@pytest.fixture(params=IMPLS, scope="module")
def codec(request):
    return request.param


def outcome(fn, *args, **kwargs):
    try:
        return ("ok", fn(*args, **kwargs))
    except WireError as e:
        return ("WireError", e.reason, str(e))
    except (ValueError, TypeError, OverflowError) as e:
        return (type(e).__name__, str(e))


def raw_frame(
    ftype=ACK,
    payload=b"\0" * 9,
    *,
    magic=b"IRWF",
    version=1,
    flags=0,
    reserved=0,
    epoch=0,
    length=None,
    checksum=None,
) -> bytes:
    """A frame with any header fields; the checksum right unless given."""
    length = len(payload) if length is None else length
    body = HDR.pack(magic, version, ftype, flags, reserved, epoch, length, 0)[:24]
    if checksum is None:
        checksum = xxhash.xxh3_64_intdigest(body + payload)
    return body + struct.pack("<Q", checksum) + payload


def journal_frames(n: int, size: int = 10, position: int = 4096) -> list[bytes]:
    out = []
    for i in range(n):
        payload = encode_records([Record(SET, 0, 1, 0, b"k%d" % i, b"v" * size, b"")])
        f = encode_frame(payload, 1, epoch=1, position=position, compress=False)
        position += len(f)
        out.append(f)
    return out


def pair(timeout: float = 5.0) -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair()
    a.settimeout(timeout)
    b.settimeout(timeout)
    return a, b


# --- the codec ----------------------------------------------------------------------------


def _payload_for(draw, ftype: int) -> bytes:
    lo, hi, _ = wire.payload_bounds(ftype)
    hi = min(hi, 20_000)
    if ftype == JOURNAL and draw(st.booleans()):
        return wire.encode_journal_batch(journal_frames(draw(st.integers(1, 4)), 3000))
    return draw(st.binary(min_size=lo, max_size=hi))


@st.composite
def frames_args(draw):
    ftype = draw(st.sampled_from(sorted(TYPE_NAMES)))
    payload = _payload_for(draw, ftype)
    epoch = draw(st.integers(0, 2**64 - 1))
    compressible = wire.payload_bounds(ftype)[2]
    compress = draw(st.sampled_from([None, False, True] if compressible else [None, False]))
    return ftype, epoch, payload, compress


@HYP
@given(frames_args())
def test_encode_agrees_and_round_trips(args):
    ftype, epoch, payload, compress = args
    a = outcome(wire.encode_wire_frame, ftype, epoch, payload, compress)
    b = outcome(_core.encode_wire_frame, ftype, epoch, payload, compress)
    assert a == b
    if a[0] != "ok":
        return
    data = a[1]
    for impl in (wire, _core):
        frame, end = impl.parse_wire_frame(data)
        assert end == len(data)
        assert (frame.type, frame.epoch, frame.payload) == (ftype, epoch, payload)
        assert impl.parse_wire_header(data) == (ftype, frame.flags, epoch, end - 32)
    if compress is False:
        assert frame.flags == 0


@HYP
@given(st.binary(max_size=80))
def test_fuzz_header_agrees(data):
    for fn in ("parse_wire_header", "parse_wire_frame"):
        a = outcome(getattr(wire, fn), data)
        b = outcome(getattr(_core, fn), data)
        assert a == b
        if a[0] == "WireError":
            assert a[1] in WIRE_ERROR_REASONS


@HYP
@given(frames_args(), st.data())
def test_fuzz_mutated_frames_agree(args, data):
    frame = bytearray(wire.encode_wire_frame(*args))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(frame) - 1))
        frame[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(frame)))
    for buf in (bytes(frame), bytes(frame[:cut])):
        a = outcome(wire.parse_wire_frame, buf)
        assert a == outcome(_core.parse_wire_frame, buf)
        assert a == outcome(_core.parse_wire_frame, bytearray(buf))
        if a[0] == "WireError":
            assert a[1] in WIRE_ERROR_REASONS[:8]


@pytest.mark.parametrize(
    "frame, reason",
    [
        (raw_frame()[:0], "truncated"),
        (raw_frame()[:31], "truncated"),
        (raw_frame()[:35], "truncated"),
        (raw_frame(magic=b"IRJF"), "magic"),
        (raw_frame(magic=b"\0\0\0\0"), "magic"),
        (raw_frame(version=2), "version"),
        (raw_frame(ftype=0), "type"),
        (raw_frame(ftype=11), "type"),
        (raw_frame(ftype=0xFFFF), "type"),
        (raw_frame(reserved=1), "reserved"),
        (raw_frame(flags=2), "reserved"),
        (raw_frame(flags=WIRE_ZSTD), "reserved"),  # ACK is never compressed
        (raw_frame(ACK, b""), "length"),  # length 0
        (raw_frame(JOURNAL, b""), "length"),
        (raw_frame(HEARTBEAT, b"\0" * 7), "length"),
        (raw_frame(JOURNAL, b"", length=WIRE_FRAME_BYTES_MAX + 1), "length"),
        (raw_frame(JOURNAL, b"", length=2**32 - 1), "length"),
        (raw_frame(STATUS, b"", length=64 * 1024 + 1), "length"),
        (raw_frame(JOURNAL, b"", flags=WIRE_ZSTD, length=4), "length"),
        (raw_frame(ACK, b"\0" * 9, checksum=1), "checksum"),
        (raw_frame(ACK, b"\0" * 9, epoch=1)[:-1] + b"\1", "checksum"),
        (raw_frame(JOURNAL, b"", length=WIRE_FRAME_BYTES_MAX), "truncated"),
    ],
)
def test_malformed_frames(codec, frame, reason):
    with pytest.raises(WireError) as ei:
        codec.parse_wire_frame(frame)
    assert ei.value.reason == reason
    assert isinstance(ei.value, IrisrepError)


def test_every_truncation_of_a_frame(codec):
    frame = wire.encode_wire_frame(JOURNAL, 3, wire.encode_journal_batch(journal_frames(2)))
    for cut in range(len(frame)):
        with pytest.raises(WireError) as ei:
            codec.parse_wire_frame(frame[:cut])
        assert ei.value.reason == "truncated", cut


def _zstd_frame(raw_len: int, body: bytes, *, content_size=True) -> bytes:
    c = zstandard.ZstdCompressor(write_content_size=content_size)
    return raw_frame(JOURNAL, struct.pack("<I", raw_len) + c.compress(body), flags=WIRE_ZSTD)


def test_decompression_bombs(codec):
    bomb = b"\0" * (WIRE_FRAME_BYTES_MAX + 1024)
    tracemalloc.start()
    try:
        cases = [
            (_zstd_frame(100, bomb), "zstd"),  # declares far more than the prefix
            (_zstd_frame(100, bomb, content_size=False), "zstd"),  # capped at 100
            (_zstd_frame(WIRE_FRAME_BYTES_MAX + 1, bomb), "length"),  # prefix over max
            (_zstd_frame(10, b"x" * 10), "length"),  # under the JOURNAL minimum
            (raw_frame(JOURNAL, struct.pack("<I", 100) + b"not zstd", flags=WIRE_ZSTD), "zstd"),
        ]
        tracemalloc.reset_peak()
        for frame, reason in cases:
            with pytest.raises(WireError) as ei:
                codec.parse_wire_frame(frame)
            assert ei.value.reason == reason
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * 1024 * 1024, peak


def test_compress_rule_and_limits(codec):
    big = wire.encode_journal_batch(journal_frames(10, 2000))
    assert codec.parse_wire_header(codec.encode_wire_frame(JOURNAL, 0, big))[1] == WIRE_ZSTD
    assert codec.parse_wire_header(codec.encode_wire_frame(JOURNAL, 0, big, False))[1] == 0
    rnd = wire.encode_journal_batch(journal_frames(1)) + os.urandom(8000)
    assert codec.parse_wire_header(codec.encode_wire_frame(JOURNAL, 0, rnd))[1] == 0
    with pytest.raises(ValueError):
        codec.encode_wire_frame(ACK, 0, b"\0" * 9, True)
    with pytest.raises(ValueError):
        codec.encode_wire_frame(ACK, 0, b"\0" * 8)
    with pytest.raises(ValueError):
        codec.encode_wire_frame(99, 0, b"")
    with pytest.raises(ValueError):
        codec.encode_wire_frame(ACK, -1, b"\0" * 9)
    with pytest.raises(TypeError):
        codec.encode_wire_frame(ACK, 0, "text")


# --- payloads -----------------------------------------------------------------------------


def test_payload_codecs():
    frames = journal_frames(3)
    assert wire.decode_journal_batch(wire.encode_journal_batch(frames)) == frames
    batch = wire.encode_journal_batch(frames)
    for bad in (
        batch[:-1],
        batch + b"\0" * 8,
        struct.pack("<I", 4) + batch[4:],
        struct.pack("<I", 0) + batch[4:],
        batch[:4] + b"XXXX" + batch[8:],
    ):
        with pytest.raises(WireError) as ei:
            wire.decode_journal_batch(bad)
        assert ei.value.reason == "payload"
    assert wire.decode_ack(wire.encode_ack(2**64 - 1, wire.ACK_APPLIED)) == (2**64 - 1, 3)
    with pytest.raises(WireError):
        wire.decode_ack(b"\0" * 8 + b"\x09")
    nonce = os.urandom(32)
    assert wire.decode_hello(wire.encode_hello("M-1", "a.b_c", nonce)) == ("M-1", "a.b_c", nonce)
    for bad_name in ("", "-x", "a b", "é", "x" * 65, "a\0"):
        with pytest.raises(ValueError):
            wire.check_name(bad_name)
    with pytest.raises(WireError):
        wire.decode_hello(b"\x01A\x02B" + nonce)
    with pytest.raises(WireError):
        wire.decode_hello(b"\x01A\x01 " + nonce)


# --- the frame reader ---------------------------------------------------------------------


@pytest.mark.parametrize("buffered", [False, True], ids=["exact", "buffered"])
def test_reader_round_trip_over_socketpair(codec, buffered):
    a, b = pair()
    with a, b:
        sent = [
            (HEARTBEAT, 1, wire.encode_u64(7), None),
            (JOURNAL, 2, wire.encode_journal_batch(journal_frames(50, 500)), None),
            (CATCHUP_REQUEST, 2, wire.encode_u64(4096), None),
            (STATUS, 2, b'{"a": 1}', True),
        ]
        for ftype, epoch, payload, compress in sent:
            wire.send_frame(a, ftype, epoch, payload, compress=compress, codec=codec)
        r = FrameReader(b, codec=codec, buffered=buffered)
        for ftype, epoch, payload, _ in sent:
            f = r.read_frame()
            assert (f.type, f.epoch, f.payload) == (ftype, epoch, payload)
        a.close()
        with pytest.raises(WireError) as ei:
            r.read_frame()
        assert ei.value.reason == "closed"


@pytest.mark.parametrize("buffered", [False, True], ids=["exact", "buffered"])
def test_reader_truncated_and_garbage(buffered):
    frame = wire.encode_wire_frame(ACK, 1, wire.encode_ack(1, 1))
    for cut in (1, 31, 32, 40):
        a, b = pair()
        with a, b:
            a.sendall(frame[:cut])
            a.shutdown(socket.SHUT_WR)
            with pytest.raises(WireError) as ei:
                FrameReader(b, buffered=buffered).read_frame()
            assert ei.value.reason == "truncated"
    a, b = pair()
    with a, b:
        a.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + b"\0" * 8)
        with pytest.raises(WireError) as ei:
            FrameReader(b, buffered=buffered).read_frame()
        assert ei.value.reason == "magic"


@pytest.mark.parametrize("buffered", [False, True], ids=["exact", "buffered"])
def test_reader_refuses_huge_length_before_allocating(buffered):
    """A header declaring 2^32-1 bytes: refused with nothing more read or allocated
    (buffered: no more than its fixed read-ahead)."""
    a, b = pair()
    with a, b:
        a.sendall(raw_frame(JOURNAL, b"", length=2**32 - 1) + b"more")
        tracemalloc.start()
        try:
            with pytest.raises(WireError) as ei:
                FrameReader(b, buffered=buffered).read_frame()
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert ei.value.reason == "length"
        assert peak < 256 * 1024
        if not buffered:
            assert b.recv(16) == b"more"  # the reader took only the header


@pytest.mark.parametrize("buffered", [False, True], ids=["exact", "buffered"])
def test_reader_cuts_off_a_slow_sender(buffered):
    """1 byte per 100 ms: cut off at the frame deadline, not when the frame completes."""
    frame = wire.encode_wire_frame(ACK, 1, wire.encode_ack(1, 1))
    a, b = pair()
    stop = threading.Event()

    def trickle():
        for byte in frame:
            if stop.wait(0.1):
                return
            try:
                a.sendall(bytes([byte]))
            except OSError:
                return

    t = threading.Thread(target=trickle, daemon=True)
    t.start()
    try:
        start = time.monotonic()
        with pytest.raises(WireError) as ei:
            FrameReader(b, frame_timeout_ms=500, buffered=buffered).read_frame()
        took = time.monotonic() - start
        assert ei.value.reason == "timeout"
        assert 0.45 <= took < 1.5, took
    finally:
        stop.set()
        t.join(5)
        a.close()
        b.close()


@pytest.mark.parametrize("buffered", [False, True], ids=["exact", "buffered"])
def test_reader_idle_timeout_then_frame_deadline(buffered):
    a, b = pair()
    with a, b:
        r = FrameReader(b, frame_timeout_ms=300, buffered=buffered)
        start = time.monotonic()
        with pytest.raises(WireError) as ei:
            r.read_frame(idle_timeout_ms=200)
        assert ei.value.reason == "timeout"
        assert time.monotonic() - start < 1.0
        # An idle wait longer than the frame timeout is fine when the frame is quick.
        threading.Timer(0.5, a.sendall, [wire.encode_wire_frame(HEARTBEAT, 0, b"\0" * 8)]).start()
        assert r.read_frame(idle_timeout_ms=3000).type == HEARTBEAT


def test_buffered_reader_serves_a_burst_trickles_and_one_big_frame(codec):
    """Many frames in one write come out one by one, in order, from one read-ahead; a
    frame split across reads at every kind of boundary is whole; a frame larger than
    the read-ahead grows the buffer to exactly that frame, which shrinks back after."""
    small = [codec.encode_wire_frame(ACK, 3, wire.encode_ack(i, 1), None) for i in range(200)]
    big_payload = wire.encode_journal_batch(journal_frames(40, 4000))  # > 64 KiB
    assert len(big_payload) > WIRE_READ_BUFFER_BYTES
    big = codec.encode_wire_frame(JOURNAL, 3, big_payload, False)  # raw: > 64 KiB
    a, b = pair()
    with a, b:
        r = FrameReader(b, codec=codec, buffered=True)
        a.sendall(b"".join(small))
        got = [wire.decode_ack(r.read_frame().payload)[0] for _ in range(200)]
        assert got == list(range(200))
        assert r.buffered_bytes() == 0
        # Split: inside the header, at its end, inside the payload, then the rest.
        stream = small[0] + big + small[1]
        cuts = [5, len(small[0]) + 32, len(small[0]) + 70_000, len(stream)]

        def send_in_pieces():
            prev = 0
            for c in cuts:
                a.sendall(stream[prev:c])
                prev = c
                time.sleep(0.05)

        t = threading.Thread(target=send_in_pieces, daemon=True)
        t.start()
        assert wire.decode_ack(r.read_frame().payload)[0] == 0
        f = r.read_frame()
        assert (f.type, f.payload) == (JOURNAL, big_payload)
        assert wire.decode_ack(r.read_frame().payload)[0] == 1
        t.join(5)
        assert len(r._buf) == WIRE_READ_BUFFER_BYTES  # shrunk after the big frame
        a.close()
        with pytest.raises(WireError) as ei:
            r.read_frame()
        assert ei.value.reason == "closed"


def test_buffered_reader_bad_frame_after_good_ones():
    """Good frames before a corrupt one are served; the corrupt one raises its reason."""
    good = wire.encode_wire_frame(HEARTBEAT, 1, wire.encode_u64(5))
    bad = bytearray(wire.encode_wire_frame(HEARTBEAT, 1, wire.encode_u64(6)))
    bad[-1] ^= 0xFF
    a, b = pair()
    with a, b:
        a.sendall(good + good + bytes(bad))
        r = FrameReader(b, buffered=True)
        assert [wire.decode_u64(r.read_frame().payload) for _ in range(2)] == [5, 5]
        with pytest.raises(WireError) as ei:
            r.read_frame()
        assert ei.value.reason == "checksum"


# --- the handshake over TCP ---------------------------------------------------------------


class Accepted:
    def __init__(self):
        self.peers = []
        self.event = threading.Event()

    def __call__(self, sock, peer):
        self.peers.append(peer)
        self.event.set()
        sock.close()


def listener(**kw) -> tuple[WireListener, Accepted]:
    acc = Accepted()
    kw.setdefault("known_members", MEMBERS)
    kw.setdefault("handshake_timeout_ms", 2000)
    lst = WireListener(
        ("127.0.0.1", 0), mirror=MIRROR, member="A", key=KEY, on_peer=acc, epoch=7, **kw
    )
    return lst, acc


def good_client(lst, member="B", **kw):
    sock, peer = wire.connect(lst.address, mirror=MIRROR, member=member, key=KEY, **kw)
    sock.close()
    return peer


def wait_for(pred, seconds=5.0):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.02)
    return pred()


def test_handshake_good_client():
    lst, acc = listener()
    with lst:
        peer = good_client(lst)
        assert peer == wire.Peer(MIRROR, "A", 7)
        assert acc.event.wait(5)
        assert acc.peers == [wire.Peer(MIRROR, "B", 0)]


@pytest.mark.parametrize(
    "kw, reason",
    [
        ({"key": b"x" * 32}, "authentication failed"),
        ({"member": "INTRUDER"}, "unknown member"),
        ({"mirror": "OTHER"}, "unknown mirror"),
    ],
)
def test_handshake_rejections_leave_the_server_serving(caplog, kw, reason):
    lst, acc = listener()
    with lst, caplog.at_level(logging.WARNING, logger="irisrep.wire"):
        args = {"mirror": MIRROR, "member": "B", "key": KEY, **kw}
        with pytest.raises(HandshakeError) as ei:
            wire.connect(lst.address, **args)
        assert ei.value.reason == reason
        assert wait_for(lambda: lst.stats["failed"] == 1)
        assert reason in caplog.text
        assert good_client(lst).member == "A"
        assert acc.event.wait(5) and [p.member for p in acc.peers] == ["B"]


def test_client_refuses_a_server_without_the_key(caplog):
    """The server proves the key too: an impostor's CHALLENGE is refused."""
    srv = socket.create_server(("127.0.0.1", 0))
    srv.settimeout(5)
    result = {}

    def impostor():
        conn, _ = srv.accept()
        with conn:
            conn.settimeout(5)
            hello = FrameReader(conn).read_frame()
            assert hello.type == HELLO
            wire.send_frame(conn, CHALLENGE, 0, os.urandom(64))
            result["answer"] = FrameReader(conn).read_frame()

    t = threading.Thread(target=impostor, daemon=True)
    t.start()
    with srv, caplog.at_level(logging.WARNING, logger="irisrep.wire"):
        with pytest.raises(HandshakeError) as ei:
            wire.connect(srv.getsockname(), mirror=MIRROR, member="B", key=KEY)
        t.join(5)
    assert ei.value.reason == "authentication failed"
    assert result["answer"].type == REJECT  # never a RESPONSE to an impostor


@pytest.mark.parametrize(
    "first",
    [
        b"\0" * 64,  # garbage
        raw_frame(JOURNAL, b"", length=2**32 - 1),  # huge length
        raw_frame(ACK, b"\0" * 9, checksum=5),  # bad checksum
        wire.encode_wire_frame(RESPONSE, 0, b"\0" * 32),  # out of order
        wire.encode_wire_frame(HELLO, 0, b"\x01A\x01\x00" + b"\0" * 32),  # bad name
        wire.encode_wire_frame(WELCOME, 0, b"\x01A"),
    ],
)
def test_malformed_handshake_frames_close_the_connection(caplog, first):
    lst, _acc = listener()
    with lst, caplog.at_level(logging.WARNING, logger="irisrep.wire"):
        s = socket.create_connection(lst.address, timeout=5)
        with s:
            s.sendall(first)
            data = b""
            for _ in range(100):  # until EOF: maybe a REJECT first
                try:
                    chunk = s.recv(4096)
                except ConnectionResetError:
                    break
                if not chunk:
                    break
                data += chunk
        if data:
            assert wire.parse_wire_frame(data)[0].type == REJECT
        assert wait_for(lambda: lst.stats["failed"] == 1)
        assert "handshake failed" in caplog.text
        assert good_client(lst).member == "A"


def test_flood_of_idle_connections_stays_bounded(caplog):
    """200 connections that send nothing: the listener never holds more than
    pending_max, closes each within the handshake deadline, and a member that sends
    its HELLO still gets in while the flood is on."""
    threads_before = threading.active_count()
    lst, acc = listener(handshake_timeout_ms=700, pending_max=32)
    idle = []
    with lst, caplog.at_level(logging.WARNING, logger="irisrep.wire"):
        try:
            for _ in range(200):
                idle.append(socket.create_connection(lst.address, timeout=5))
            assert good_client(lst).member == "A"
            assert acc.event.wait(5)
            assert threading.active_count() <= threads_before + 2 + 4
            deadline = time.monotonic() + 5
            for s in idle:  # every idle one is closed by the server
                s.settimeout(max(deadline - time.monotonic(), 0.01))
                try:
                    assert s.recv(1) == b""
                except ConnectionResetError:
                    pass
        finally:
            for s in idle:
                s.close()
        assert lst.busy_peak <= 32
        st_ = lst.stats
        assert st_["welcomed"] == 1

        # The listener's own thread counts each close: wait for it to catch up.
        def closed_all():
            st = lst.stats
            return st["evicted"] + st["refused"] + st["idle_closed"] + st.get("failed", 0) == 200

        assert wait_for(closed_all), lst.stats
        assert wait_for(lambda: lst._busy == 0)
        assert "nothing received" in caplog.text or "to make room" in caplog.text


# --- TLS ----------------------------------------------------------------------------------


def _self_signed(tmp_path):
    crypto = pytest.importorskip("cryptography", reason="cryptography is not installed")
    del crypto
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "irisrep-test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path = tmp_path / "cert.pem"
    key_path = tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_tls_handshake(tmp_path, caplog):
    import ssl

    cert, key = _self_signed(tmp_path)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_ctx.load_verify_locations(cert)
    lst, acc = listener(ssl_context=server_ctx)
    with lst, caplog.at_level(logging.WARNING, logger="irisrep.wire"):
        sock, peer = wire.connect(
            lst.address, mirror=MIRROR, member="B", key=KEY, ssl_context=client_ctx
        )
        with sock:
            assert isinstance(sock, ssl.SSLSocket)
            assert peer.member == "A"
        assert acc.event.wait(5)
        # A plaintext client to a TLS listener fails cleanly, and the listener goes on.
        with pytest.raises(WireError):
            wire.connect(lst.address, mirror=MIRROR, member="B", key=KEY, timeout_ms=2000)
        assert wait_for(lambda: lst.stats["failed"] == 1)
        sock, _ = wire.connect(
            lst.address, mirror=MIRROR, member="B", key=KEY, ssl_context=client_ctx
        )
        sock.close()
        assert wait_for(lambda: lst.stats["welcomed"] == 2)
