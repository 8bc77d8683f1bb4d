"""The journal codec: the Cython `_core` and the pure-Python `journalcodec` agree.

Differential tests (hypothesis) check the two implementations byte for byte (including
the compression decision) and error for error (class, reason, offset, message); the
frame parser is fed every kind of bad tail the file layer will meet (truncation at
every byte, single-byte flips, zero-filled and garbage tails, bad lengths, a stale
frame, a bad zstd payload behind a correct checksum, a zstd bomb); named cases pin
each FrameError reason and each encode-side limit of docs/journal-format.md.
"""

from __future__ import annotations

import os
import pickle
import struct
import tracemalloc

import pytest
import xxhash
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from irisrep import _core, journalcodec
from irisrep.constants import (
    JOURNAL_COMPRESS_MIN_BYTES,
    JOURNAL_FRAME_BYTES_MAX,
    JOURNAL_FRAME_HEADER_BYTES,
    JOURNAL_RECORD_BYTES_MAX,
    REFERENCE_BYTES_MAX,
)
from irisrep.errors import CorruptError, JournalCorruptError
from irisrep.journalcodec import (
    FRAME_ERROR_REASONS,
    FrameError,
    FrameHeader,
    JournalFormatError,
    Record,
)

IMPLS = [pytest.param(journalcodec, id="python"), pytest.param(_core, id="cython")]
BOTH = (journalcodec, _core)
HYP = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(params=IMPLS, scope="module")
def jc(request):
    return request.param


def outcome(fn, *args, **kwargs):
    """What a call did, in a form both implementations must agree on exactly."""
    try:
        return ("ok", fn(*args, **kwargs))
    except FrameError as e:
        return ("FrameError", e.reason, e.offset, str(e), e.expected, e.found, e.path)
    except JournalFormatError as e:
        return ("JournalFormatError", str(e), e.offset, e.expected, e.found)
    except (ValueError, TypeError, OverflowError) as e:
        return (type(e).__name__, str(e))


def same(fn_name, *args, **kwargs):
    """Call fn_name on both codecs; assert they agree; return the shared outcome."""
    py = outcome(getattr(journalcodec, fn_name), *args, **kwargs)
    cy = outcome(getattr(_core, fn_name), *args, **kwargs)
    assert cy == py, f"{fn_name}: cython {cy!r:.300} != python {py!r:.300}"
    return py


def reason_of(buf, offset=0, expected_position=0):
    """The FrameError reason parse_frame gives (both codecs agreeing), or "ok"."""
    out = same("parse_frame", buf, offset, expected_position)
    return out[0] if out[0] == "ok" else out[1]


# --- building frames by hand --------------------------------------------------------------

BODY = struct.Struct("<4sHHQQIIII")


def handmade(
    stored: bytes,
    *,
    count: int = 1,
    raw_len: int | None = None,
    flags: int = 0,
    position: int = 0,
    epoch: int = 0,
    magic: bytes = b"IRJF",
    version: int = 1,
    reserved: int = 0,
    stored_len: int | None = None,
    checksum: int | None = None,
) -> bytes:
    """A frame with any header field forced; the checksum is right unless given."""
    raw_len = len(stored) if raw_len is None else raw_len
    stored_len = len(stored) if stored_len is None else stored_len
    body = BODY.pack(magic, version, flags, epoch, position, count, raw_len, stored_len, reserved)
    if checksum is None:
        checksum = xxhash.xxh3_64_intdigest(body + stored)
    frame = body + struct.pack("<Q", checksum) + stored
    return frame + bytes(-len(frame) % 8)


def sample_records(n: int = 3) -> list[Record]:
    out = [
        Record(journalcodec.TSTART, 0, 0, 77, b"", b"", b""),
        Record(
            journalcodec.SET,
            journalcodec.HAD_BEFORE,
            1,
            77,
            b"g\x00\x30a\x00",
            b"\x01new",
            b"\x01old",
        ),
        Record(journalcodec.KILL, 0, 1, 77, b"g\x00", b"", b"\x00\x00\x00\x00"),
        Record(journalcodec.TCOMMIT, 0, 0, 77, b"", b"", b""),
    ]
    return (out * (n // len(out) + 1))[:n]


def small_frame(compress=False, position=0) -> tuple[bytes, bytes, list[Record]]:
    recs = sample_records(3)
    payload = journalcodec.encode_records(recs)
    return (
        journalcodec.encode_frame(payload, 3, epoch=5, position=position, compress=compress),
        payload,
        recs,
    )


# --- strategies ----------------------------------------------------------------------------

small_bytes = st.binary(max_size=64)
records_st = st.builds(
    Record,
    st.integers(1, 8),
    st.integers(0, 3),
    st.one_of(st.integers(0, 3), st.integers(0, 2**32 - 1)),
    st.one_of(st.integers(0, 1000), st.integers(0, 2**64 - 1)),
    st.one_of(small_bytes, st.binary(min_size=500, max_size=REFERENCE_BYTES_MAX)),
    st.one_of(small_bytes, st.binary(max_size=3000)),
    small_bytes,
)
# Repeating a record list makes payloads large and compressible, so that the automatic
# rule takes both branches (raw below 4096 bytes or when zstd saves < 1/8, zstd above).
record_lists = st.tuples(st.lists(records_st, min_size=1, max_size=12), st.integers(1, 40)).map(
    lambda t: t[0] * t[1]
)


# --- records -------------------------------------------------------------------------------


@HYP
@given(record_lists)
def test_encode_records_agree_and_round_trip(recs):
    payload = journalcodec.encode_records(recs)
    assert _core.encode_records(recs) == payload
    for a in BOTH:
        decoded = a.decode_records(payload, len(recs))
        assert decoded == recs
        assert all(type(r) is Record for r in decoded)


@HYP
@given(
    record_lists,
    st.sampled_from([None, True, False]),
    st.integers(0, 2**61 - 1),
    st.integers(0, 2**64 - 1),
)
def test_encode_frame_agrees_and_parses(recs, compress, pos8, epoch):
    position = pos8 * 8
    payload = journalcodec.encode_records(recs)
    frame = journalcodec.encode_frame(
        payload, len(recs), epoch=epoch, position=position, compress=compress
    )
    assert (
        _core.encode_frame(payload, len(recs), epoch=epoch, position=position, compress=compress)
        == frame
    )
    assert len(frame) % 8 == 0
    out = same("parse_frame", frame, 0, position)
    assert out[0] == "ok"
    header, raw, nxt = out[1]
    assert raw == payload and nxt == len(frame)
    assert header.count == len(recs) and header.epoch == epoch and header.position == position
    assert header.raw_len == len(payload)
    assert len(frame) == journalcodec.frame_length(header.stored_len)
    zstd = bool(header.flags & journalcodec.FRAME_ZSTD)
    if compress is None:
        packed = zstandard.ZstdCompressor(level=1).compress(payload)
        assert zstd == (
            len(payload) >= JOURNAL_COMPRESS_MIN_BYTES and 8 * len(packed) <= 7 * len(payload)
        )
    else:
        assert zstd == compress
    for a in BOTH:
        assert a.decode_records(raw, header.count) == recs


def test_record_layout_by_hand(jc):
    rec = Record(
        journalcodec.SET,
        journalcodec.HAD_BEFORE,
        0x01020304,
        0x1122334455667788,
        b"K",
        b"VV",
        b"BBB",
    )
    payload = jc.encode_records([rec])
    assert payload == (
        b"\x01\x01\x01\x00\x04\x03\x02\x01\x88\x77\x66\x55\x44\x33\x22\x11"
        b"\x02\x00\x00\x00\x03\x00\x00\x00KVVBBB"
    )
    assert jc.encode_records([]) == b""
    assert jc.decode_records(b"", 0) == []


def test_frame_layout_by_hand(jc):
    frame = jc.encode_frame(b"x" * 5, 1, epoch=2, position=16, compress=False)
    assert frame == handmade(b"x" * 5, epoch=2, position=16)
    assert len(frame) == 56 and frame[53:] == b"\x00\x00\x00"
    assert frame[:4] == b"IRJF"
    header, raw, nxt = jc.parse_frame(frame, 0, 16)
    assert header == FrameHeader(0, 2, 16, 1, 5, 5, struct.unpack_from("<Q", frame, 40)[0])
    assert raw == b"xxxxx" and nxt == 56


@pytest.mark.parametrize("n, length", [(0, 48), (1, 56), (7, 56), (8, 56), (9, 64), (4096, 4144)])
def test_frame_length(jc, n, length):
    assert jc.frame_length(n) == length


def test_other_input_types_give_the_same_bytes(jc):
    recs = sample_records(4)
    want = journalcodec.encode_records(recs)
    as_lists = [list(r) for r in recs]
    as_buffers = [
        (r.type, r.flags, r.db_id, r.txn, bytearray(r.key), memoryview(r.value), r.before)
        for r in recs
    ]
    assert jc.encode_records(as_lists) == want
    assert jc.encode_records(as_buffers) == want
    assert jc.encode_records(tuple(recs)) == want
    assert jc.encode_records(iter(recs)) == want
    assert jc.encode_records([(True, False, 1, 2**64 - 1, b"", b"", b"")]) == (
        journalcodec.encode_records([(1, 0, 1, 2**64 - 1, b"", b"", b"")])
    )
    f = journalcodec.encode_frame(want, 4, epoch=0, position=8)
    assert jc.encode_frame(bytearray(want), 4, epoch=0, position=8) == f
    assert jc.encode_frame(memoryview(want), 4, epoch=0, position=8) == f
    for buf in (bytearray(f), memoryview(f)):
        assert jc.parse_frame(buf, 0, 8)[1] == want
    assert jc.decode_records(bytearray(want), 4) == recs
    assert jc.decode_records(memoryview(want), 4) == recs


# --- encode-side validation -----------------------------------------------------------------

GOOD = (1, 0, 1, 1, b"k", b"v", b"b")
BAD_RECORDS = [
    ("type 0", (0, *GOOD[1:]), ValueError),
    ("type 9", (9, *GOOD[1:]), ValueError),
    ("type str", ("1", *GOOD[1:]), TypeError),
    ("flags 4", (1, 4, *GOOD[2:]), ValueError),
    ("flags -1", (1, -1, *GOOD[2:]), ValueError),
    ("db_id -1", (1, 0, -1, *GOOD[3:]), ValueError),
    ("db_id 2**32", (1, 0, 2**32, *GOOD[3:]), ValueError),
    ("txn -1", (*GOOD[:3], -1, *GOOD[4:]), ValueError),
    ("txn 2**64", (*GOOD[:3], 2**64, *GOOD[4:]), ValueError),
    ("txn float", (*GOOD[:3], 1.0, *GOOD[4:]), TypeError),
    ("key 512", (*GOOD[:4], b"k" * (REFERENCE_BYTES_MAX + 1), b"", b""), ValueError),
    ("key str", (*GOOD[:4], "k", b"", b""), TypeError),
    ("value None", (*GOOD[:5], None, b""), TypeError),
    ("before int", (*GOOD[:6], 3), TypeError),
    ("6 fields", GOOD[:6], TypeError),
    ("8 fields", (*GOOD, b""), TypeError),
    ("not a sequence", 5, TypeError),
]


@pytest.mark.parametrize("name, bad, cls", BAD_RECORDS, ids=[b[0] for b in BAD_RECORDS])
def test_bad_records_are_refused_alike(name, bad, cls):
    out = same("encode_records", [GOOD, GOOD, bad, GOOD])
    assert out[0] == cls.__name__, out
    assert "record 2" in out[1]


def test_record_byte_limits():
    big = b"v" * JOURNAL_RECORD_BYTES_MAX
    assert same("encode_records", [(1, 0, 0, 0, b"k", big, b"")])[0] == "ok"
    for field in (5, 6):
        rec = [1, 0, 0, 0, b"k", b"", b""]
        rec[field] = big + b"+"
        out = same("encode_records", [rec])
        assert out[0] == "ValueError" and str(JOURNAL_RECORD_BYTES_MAX) in out[1]
    # Two records that fit alone but not together in one frame payload.
    out = same("encode_records", [(1, 0, 0, 0, b"", big, b""), (1, 0, 0, 0, b"", big, b"")])
    assert out[0] == "ValueError" and "JOURNAL_FRAME_BYTES_MAX" in out[1]
    out = same("encode_frame", b"x" * (JOURNAL_FRAME_BYTES_MAX + 1), 1, epoch=0, position=0)
    assert out[0] == "ValueError" and "JOURNAL_FRAME_BYTES_MAX" in out[1]


BAD_FRAME_ARGS = [
    ("count 0", (b"x", 0), {}, ValueError),
    ("count 2**32", (b"x", 2**32), {}, ValueError),
    ("count str", (b"x", "1"), {}, TypeError),
    ("position 4", (b"x", 1), {"position": 4}, ValueError),
    ("position -8", (b"x", 1), {"position": -8}, ValueError),
    ("position 2**64", (b"x", 1), {"position": 2**64}, ValueError),
    ("epoch -1", (b"x", 1), {"epoch": -1}, ValueError),
    ("empty payload", (b"", 1), {}, ValueError),
    ("payload str", ("x", 1), {}, TypeError),
]


@pytest.mark.parametrize("name, args, kw, cls", BAD_FRAME_ARGS, ids=[b[0] for b in BAD_FRAME_ARGS])
def test_bad_frame_args_are_refused_alike(name, args, kw, cls):
    kwargs = {"epoch": 0, "position": 8, **kw}
    out = same("encode_frame", *args, **kwargs)
    assert out[0] == cls.__name__, out


def test_compress_true_stores_zstd_even_when_it_does_not_pay(jc):
    frame = jc.encode_frame(b"abc", 1, epoch=0, position=0, compress=True)
    header, raw, _ = jc.parse_frame(frame, 0, 0)
    assert header.flags == journalcodec.FRAME_ZSTD and header.stored_len > header.raw_len
    assert raw == b"abc"


def test_automatic_compression_rule(jc):
    below = b"a" * (JOURNAL_COMPRESS_MIN_BYTES - 1)
    at = b"a" * JOURNAL_COMPRESS_MIN_BYTES
    noise = os.urandom(JOURNAL_COMPRESS_MIN_BYTES * 2)
    for payload, zstd in ((below, False), (at, True), (noise, False)):
        frame = jc.encode_frame(payload, 1, epoch=0, position=0)
        assert bool(jc.parse_frame(frame, 0, 0)[0].flags & 1) == zstd


# --- decode-side validation -----------------------------------------------------------------


def _record_bytes(
    rtype=1,
    flags=0,
    key=b"k",
    value=b"v",
    before=b"b",
    key_len=None,
    value_len=None,
    before_len=None,
):
    return (
        struct.pack(
            "<BBHIQII",
            rtype,
            flags,
            len(key) if key_len is None else key_len,
            0,
            0,
            len(value) if value_len is None else value_len,
            len(before) if before_len is None else before_len,
        )
        + key
        + value
        + before
    )


MALFORMED_PAYLOADS = [
    ("type 0", _record_bytes(rtype=0), 1),
    ("type 9", _record_bytes(rtype=9), 1),
    ("flags 4", _record_bytes(flags=4), 1),
    ("key_len 512", _record_bytes(key=b"k" * 512), 1),
    ("value_len huge", _record_bytes(value=b"", value_len=2**32 - 1), 1),
    ("before_len huge", _record_bytes(before=b"", before_len=JOURNAL_RECORD_BYTES_MAX + 1), 1),
    ("body short", _record_bytes(value=b"", value_len=100), 1),
    ("header short", _record_bytes()[:23], 1),
    ("count too big", _record_bytes(), 2),
    ("count far too big", _record_bytes(), 2**40),
    ("trailing bytes", _record_bytes() + b"\x00", 1),
    ("second record short", _record_bytes() * 2 + _record_bytes()[:26], 3),
]


@pytest.mark.parametrize(
    "name, payload, count", MALFORMED_PAYLOADS, ids=[m[0] for m in MALFORMED_PAYLOADS]
)
def test_malformed_payloads_are_refused_alike(name, payload, count):
    out = same("decode_records", payload, count)
    assert out[0] == "JournalFormatError", out


def test_decode_count_arguments():
    assert same("decode_records", b"", -1)[0] == "ValueError"
    assert same("decode_records", b"", "1")[0] == "TypeError"


@HYP
@given(st.binary(max_size=200), st.integers(0, 12))
def test_decode_fuzz_random_bytes(data, count):
    same("decode_records", data, count)


@HYP
@given(st.lists(records_st, min_size=1, max_size=6), st.data())
def test_decode_fuzz_mutated_payloads(recs, data):
    payload = bytearray(journalcodec.encode_records(recs))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(payload) - 1))
        payload[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(payload)))
    count = len(recs) + data.draw(st.integers(-1, 1))
    same("decode_records", bytes(payload[:cut]), max(count, 0))


# --- frames: every bad tail -------------------------------------------------------------------


def test_frame_error_classes():
    assert issubclass(FrameError, JournalCorruptError)
    assert issubclass(JournalFormatError, JournalCorruptError)
    assert issubclass(FrameError, CorruptError)
    assert FRAME_ERROR_REASONS == (
        "truncated",
        "zero",
        "magic",
        "version",
        "length",
        "checksum",
        "position",
        "zstd",
    )
    e = FrameError("checksum", 4096, "expected 0x1, found 0x2", expected="0x1", found="0x2")
    e2 = pickle.loads(pickle.dumps(e))
    assert (e2.reason, e2.offset, e2.detail, e2.expected, e2.found, str(e2)) == (
        e.reason,
        e.offset,
        e.detail,
        e.expected,
        e.found,
        str(e),
    )
    assert e.path == ""


@pytest.mark.parametrize("compress", [False, True], ids=["raw", "zstd"])
def test_truncation_at_every_byte(compress):
    frame, payload, _ = small_frame(compress)
    stored_end = JOURNAL_FRAME_HEADER_BYTES + struct.unpack_from("<I", frame, 32)[0]
    for cut in range(len(frame) + 1):
        assert reason_of(frame[:cut]) == ("ok" if cut >= stored_end else "truncated"), cut
        # The same cut followed by zeros (a torn write into a preallocated file).
        padded = frame[:cut] + bytes(len(frame) + 64 - cut)
        got = reason_of(padded)
        if cut == 0:
            assert got == "zero"
        elif padded[:stored_end] == frame[:stored_end]:
            assert got == "ok", cut  # the cut fell into bytes that were zero anyway
        else:
            assert got in FRAME_ERROR_REASONS, (cut, got)


@pytest.mark.parametrize("compress", [False, True], ids=["raw", "zstd"])
def test_every_single_byte_flip(compress):
    frame, payload, _ = small_frame(compress)
    padding_start = JOURNAL_FRAME_HEADER_BYTES + struct.unpack_from("<I", frame, 32)[0]
    for i in range(len(frame)):
        for mask in (0x01, 0x80, 0xFF):
            bad = bytearray(frame)
            bad[i] ^= mask
            got = reason_of(bytes(bad))
            if i >= padding_start:
                assert got == "ok"  # padding is not covered by the checksum
            elif i >= 40:
                assert got == "checksum", (i, mask, got)
            else:
                assert got in FRAME_ERROR_REASONS, (i, mask, got)


def test_zero_tails_and_garbage():
    frame, _, _ = small_frame()
    assert reason_of(bytes(48)) == "zero"
    assert reason_of(bytes(4096)) == "zero"
    assert reason_of(bytes(47)) == "truncated"
    assert reason_of(b"") == "truncated"
    assert reason_of(frame + bytes(4096), len(frame), len(frame)) == "zero"
    assert reason_of(b"\xde\xad\xbe\xef" * 100) == "magic"
    assert reason_of(b"IRJG" + frame[4:]) == "magic"
    assert reason_of(frame + b"garbage!" * 8, len(frame), len(frame)) == "magic"


@HYP
@given(st.binary(min_size=0, max_size=300), st.integers(0, 64))
def test_garbage_fuzz(garbage, offset):
    buf = bytes(offset) + garbage
    same("parse_frame", buf, min(offset, len(buf)), 0)


@HYP
@given(st.data())
def test_mutation_fuzz(data):
    recs = data.draw(st.lists(records_st, min_size=1, max_size=5))
    payload = journalcodec.encode_records(recs)
    compress = data.draw(st.sampled_from([None, True, False]))
    frame = bytearray(
        journalcodec.encode_frame(payload, len(recs), epoch=1, position=64, compress=compress)
    )
    for _ in range(data.draw(st.integers(0, 3))):
        frame[data.draw(st.integers(0, len(frame) - 1))] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(frame)))
    same("parse_frame", bytes(frame[:cut]), 0, data.draw(st.sampled_from([64, 0, 72])))


LENGTH_CASES = [0, 1, 7, JOURNAL_FRAME_BYTES_MAX, JOURNAL_FRAME_BYTES_MAX + 1, 2**31, 2**32 - 1]


@pytest.mark.parametrize("n", LENGTH_CASES)
@pytest.mark.parametrize("field", ["raw_len", "stored_len", "both"])
@pytest.mark.parametrize("fix_checksum", [True, False], ids=["checksum-ok", "checksum-bad"])
def test_header_lengths(n, field, fix_checksum):
    stored = b"0123456789abcdef"
    kw = {"raw_len": n, "stored_len": n} if field == "both" else {field: n}
    frame = handmade(stored, **kw)
    if not fix_checksum:
        frame = frame[:40] + bytes(8) + frame[48:]
    got = reason_of(frame)
    if n == 0 or n > JOURNAL_FRAME_BYTES_MAX or field != "both":
        assert got == "length"
    elif n > len(stored):
        assert got == "truncated"  # the lengths agree but the bytes are not there
    else:
        assert got == "checksum"  # fewer bytes covered than were summed


def test_count_zero_and_nonzero_reserved_and_version_and_flags():
    assert reason_of(handmade(b"abc", count=0)) == "length"
    assert reason_of(handmade(b"abc", version=2)) == "version"
    assert reason_of(handmade(b"abc", version=0)) == "version"
    assert reason_of(handmade(b"abc", reserved=1)) == "version"
    assert reason_of(handmade(b"abc", flags=2)) == "version"
    assert reason_of(handmade(b"abc", flags=0x8001)) == "version"


def test_check_order():
    # Several faults at once: the earliest check in the documented order wins.
    assert reason_of(handmade(b"abc", magic=b"XXXX", version=9, count=0)) == "magic"
    assert reason_of(handmade(b"abc", version=9, count=0)) == "version"
    assert reason_of(handmade(b"abc", count=0, checksum=1)) == "length"
    assert reason_of(handmade(b"abc", stored_len=10, raw_len=10, checksum=1)) == "truncated"
    assert reason_of(handmade(b"abc", position=8, checksum=1)) == "checksum"
    assert reason_of(handmade(b"abc", position=8, flags=1)) == "position"
    assert reason_of(handmade(b"abc", position=0, flags=1)) == "zstd"


# --- named cases: one per reason, with the exact string ---------------------------------------


def test_reason_truncated(jc):
    frame, _, _ = small_frame()
    with pytest.raises(FrameError) as ei:
        jc.parse_frame(frame[:20], 0, 0)
    assert ei.value.reason == "truncated" and ei.value.offset == 0
    with pytest.raises(FrameError) as ei:
        jc.parse_frame(frame[:60], 0, 0)
    assert ei.value.reason == "truncated"


def test_reason_zero(jc):
    with pytest.raises(FrameError) as ei:
        jc.parse_frame(bytes(8192), 4096, 4096)
    assert ei.value.reason == "zero" and ei.value.offset == 4096 and ei.value.path == ""


def test_reason_magic(jc):
    with pytest.raises(FrameError) as ei:
        jc.parse_frame(b"\xff" * 100, 0, 0)
    assert ei.value.reason == "magic" and ei.value.found == b"\xff" * 4


def test_reason_version(jc):
    with pytest.raises(FrameError) as ei:
        jc.parse_frame(handmade(b"abc", version=7), 0, 0)
    assert ei.value.reason == "version" and ei.value.found == 7


def test_reason_length(jc):
    with pytest.raises(FrameError) as ei:
        jc.parse_frame(handmade(b"abc", stored_len=2**32 - 1, raw_len=2**32 - 1), 0, 0)
    assert ei.value.reason == "length"
    with pytest.raises(FrameError) as ei:
        jc.parse_frame(handmade(b"abc", raw_len=4), 0, 0)  # raw frame, stored != raw
    assert ei.value.reason == "length"


def test_reason_checksum(jc):
    frame = bytearray(small_frame()[0])
    frame[60] ^= 1
    with pytest.raises(FrameError) as ei:
        jc.parse_frame(bytes(frame), 0, 0)
    e = ei.value
    assert e.reason == "checksum"
    stored = struct.unpack_from("<Q", frame, 40)[0]
    assert e.expected == f"{stored:#018x}" and e.found.startswith("0x") and e.found != e.expected
    assert e.expected in str(e) and e.found in str(e)


def test_reason_position(jc):
    frame, _, _ = small_frame(position=8192)
    assert jc.parse_frame(frame, 0, 8192)[2] == len(frame)
    with pytest.raises(FrameError) as ei:
        jc.parse_frame(frame, 0, 0)
    assert ei.value.reason == "position"
    assert (ei.value.expected, ei.value.found) == (0, 8192)


def test_reason_zstd_not_a_zstd_frame(jc):
    with pytest.raises(FrameError) as ei:
        jc.parse_frame(handmade(b"this is not zstd", flags=1, raw_len=100), 0, 0)
    assert ei.value.reason == "zstd"


def test_reason_zstd_wrong_size_and_trailing_data(jc):
    packed = zstandard.ZstdCompressor(level=1).compress(b"x" * 50)
    for frame in (
        handmade(packed, flags=1, raw_len=49),  # declares 50 bytes, header says 49
        handmade(packed, flags=1, raw_len=51),
        handmade(packed + b"junk", flags=1, raw_len=50),  # more than one zstd frame
        handmade(packed + packed, flags=1, raw_len=100),
        handmade(packed[:-1], flags=1, raw_len=50),  # cut short
    ):
        with pytest.raises(FrameError) as ei:
            jc.parse_frame(frame, 0, 0)
        assert ei.value.reason == "zstd"
    assert jc.parse_frame(handmade(packed, flags=1, raw_len=50), 0, 0)[1] == b"x" * 50
    # Without a content size in the zstd frame, max_output_size is the cap.
    sizeless = zstandard.ZstdCompressor(level=1, write_content_size=False).compress(b"y" * 50)
    assert jc.parse_frame(handmade(sizeless, flags=1, raw_len=50), 0, 0)[1] == b"y" * 50
    with pytest.raises(FrameError) as ei:
        jc.parse_frame(handmade(sizeless, flags=1, raw_len=49), 0, 0)
    assert ei.value.reason == "zstd"


@pytest.mark.parametrize("content_size", [True, False], ids=["content-size", "no-content-size"])
def test_reason_zstd_bomb_is_not_inflated(jc, content_size):
    bomb = zstandard.ZstdCompressor(level=3, write_content_size=content_size).compress(
        bytes(10 * 1024 * 1024)
    )
    frame = handmade(bomb, flags=1, raw_len=100)
    tracemalloc.start()
    try:
        with pytest.raises(FrameError) as ei:
            jc.parse_frame(frame, 0, 0)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert ei.value.reason == "zstd"
    assert peak < 1024 * 1024, f"{peak} bytes allocated for a 100-byte frame"


def test_all_reasons_agree_between_codecs():
    frame, _, _ = small_frame()
    cases = {
        "truncated": frame[:47],
        "zero": bytes(64),
        "magic": b"x" * 64,
        "version": handmade(b"abc", version=3),
        "length": handmade(b"abc", count=0),
        "checksum": handmade(b"abc", checksum=12345),
        "position": handmade(b"abc", position=64),
        "zstd": handmade(b"abc", flags=1),
    }
    for reason, buf in cases.items():
        assert reason_of(buf) == reason


def test_stream_of_frames_and_stale_tail():
    # Three frames back to back, then an old frame from an earlier use of the bytes:
    # it verifies but names the wrong position.
    recs = sample_records(5)
    payload = journalcodec.encode_records(recs)
    stream = b""
    for _ in range(3):
        stream += journalcodec.encode_frame(payload, 5, epoch=1, position=len(stream))
    stale = journalcodec.encode_frame(payload, 5, epoch=1, position=0)
    buf = stream + stale + bytes(100)
    for a in BOTH:
        off, seen = 0, 0
        with pytest.raises(FrameError) as ei:
            while True:
                header, raw, off2 = a.parse_frame(buf, off, off)
                assert a.decode_records(raw, header.count) == recs
                off, seen = off2, seen + 1
        assert seen == 3 and ei.value.reason == "position" and ei.value.offset == len(stream)


def test_parse_frame_argument_errors():
    frame, _, _ = small_frame()
    assert same("parse_frame", frame, -1, 0)[0] == "ValueError"
    assert same("parse_frame", frame, len(frame) + 1, 0)[0] == "ValueError"
    assert same("parse_frame", frame, 0, -8)[0] == "ValueError"
    assert same("parse_frame", frame, "0", 0)[0] == "TypeError"
    assert same("parse_frame", frame, len(frame), 0)[1] == "truncated"
