"""Bad input at a member's mirror listener: the connection closes with a logged
reason, the member keeps serving, its state does not change, memory stays bounded.

Frame-level decoding is covered exhaustively in tests/test_wire.py; this file checks
what a running primary does with each kind of bad frame after a real handshake, and
with a wrong key, an unknown member and a flood of idle connections."""

from __future__ import annotations

import logging
import socket
import struct
import time

import pytest
import xxhash
from mirrorkit import KEY, mirror_configs, wait_for

from irisrep import wire
from irisrep.errors import HandshakeError
from irisrep.member import Member


@pytest.fixture
def pair(tmp_path):
    cfgs = mirror_configs(tmp_path, asyncs=1)  # C1 is configured but never started
    a = Member(cfgs[0], client_listener=False).start()
    b = Member(cfgs[1], client_listener=False).start()
    wait_for(lambda: a.replicator.active is not None, what="an Active backup")
    yield a, b, cfgs
    b.close()
    a.close()


def _as_c1(cfgs):
    a_cfg = cfgs[0]
    return wire.connect(
        tuple(a_cfg.me.mirror_address), mirror=a_cfg.mirror_name, member="C1", key=KEY
    )


def _frame(ftype: int, epoch: int, payload: bytes, *, length=None, flags=0, ck=None) -> bytes:
    n = len(payload) if length is None else length
    body = wire.HEADER_BODY.pack(b"IRWF", 1, ftype, flags, 0, epoch, n)
    c = xxhash.xxh3_64_intdigest(body + payload) if ck is None else ck
    return body + struct.pack("<Q", c) + payload


def _still_serving(a, b) -> None:
    before = a.replicator.stats["acked"]
    g = a.database.globals["alive"]
    g[time.monotonic_ns()] = 1
    assert a.replicator.active is not None and a.replicator.active.state.name == "B"
    assert a.replicator.stats["acked"] == before + 1
    assert b.database.journal.durable_position >= a.database.journal.durable_position


BAD = {
    "garbage": b"\x00\x01garbage that is no frame at all" * 2,
    "magic": b"XXXX" + _frame(wire.ACK, 1, wire.encode_ack(0, 2))[4:],
    "length_huge": _frame(wire.ACK, 1, b"", length=2**32 - 1),
    "length_zero": _frame(wire.ACK, 1, b""),
    "checksum": _frame(wire.ACK, 1, wire.encode_ack(0, 2), ck=12345),
    "unknown_type": _frame(99, 1, b"12345678"),
    "truncated": _frame(wire.ACK, 1, wire.encode_ack(0, 2))[:20],
    "journal_to_primary": wire.encode_wire_frame(
        wire.JOURNAL, 1, struct.pack("<I", 1) + b"IRJF" + bytes(60)
    ),
    "ack_past_sent": wire.encode_wire_frame(wire.CATCHUP_REQUEST, 1, wire.encode_u64(0))
    + wire.encode_wire_frame(wire.ACK, 1, wire.encode_ack(10**9, 2)),
    "ack_old_epoch": wire.encode_wire_frame(wire.CATCHUP_REQUEST, 1, wire.encode_u64(0))
    + wire.encode_wire_frame(wire.ACK, 0, wire.encode_ack(0, 2)),
    "catchup_past_end": wire.encode_wire_frame(wire.CATCHUP_REQUEST, 1, wire.encode_u64(10**12)),
    "two_catchups": wire.encode_wire_frame(wire.CATCHUP_REQUEST, 1, wire.encode_u64(0)) * 2,
    "zstd_bomb": _frame(
        wire.STATUS, 1, struct.pack("<I", 2**31) + b"\x28\xb5\x2f\xfd" + bytes(20), flags=1
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_frames_close_only_that_connection(pair, caplog, case):
    a, b, cfgs = pair
    caplog.set_level(logging.WARNING)
    sock, peer = _as_c1(cfgs)
    assert peer.member == "A"
    wait_for(lambda: any(p["member"] == "C1" for p in a.status()["peers"]), what="C1 link")
    end_before = a.database.journal.end_position
    sock.sendall(BAD[case])
    if case == "truncated":
        sock.shutdown(socket.SHUT_WR)
    wait_for(
        lambda: not any(p["member"] == "C1" for p in a.status()["peers"]),
        what="the primary to close the bad connection",
    )
    sock.close()
    wait_for(
        lambda: any("C1 disconnected" in r.getMessage() for r in caplog.records),
        what="the logged reason",
    )
    assert a.database.journal.end_position == end_before  # nothing changed
    _still_serving(a, b)


def test_wrong_key_and_unknown_member_are_refused(pair, caplog):
    a, b, cfgs = pair
    addr = tuple(cfgs[0].me.mirror_address)
    with pytest.raises(HandshakeError):
        wire.connect(addr, mirror="MIRROR1", member="C1", key=b"k" * 32)
    with pytest.raises(HandshakeError, match="unknown member"):
        wire.connect(addr, mirror="MIRROR1", member="Z9", key=KEY)
    with pytest.raises(HandshakeError, match="unknown mirror"):
        wire.connect(addr, mirror="OTHER", member="C1", key=KEY)
    assert not any(p["member"] in ("C1", "Z9") for p in a.status()["peers"])
    _still_serving(a, b)


def test_flood_of_idle_connections_stays_bounded(pair):
    a, b, cfgs = pair
    addr = tuple(cfgs[0].me.mirror_address)
    socks = []
    try:
        for _ in range(300):
            s = socket.create_connection(addr)
            socks.append(s)
        listener = a.mirror_listener
        wait_for(lambda: listener.stats["accepted"] + listener.stats["refused"] >= 300)
        assert listener.busy_peak <= 64
        _still_serving(a, b)
        # A real member still gets in during the flood (idle ones make room).
        sock, peer = _as_c1(cfgs)
        sock.close()
    finally:
        for s in socks:
            s.close()
    _still_serving(a, b)
