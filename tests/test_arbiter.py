"""The arbiter over real TCP: it tells each failover member whether it sees the
other, serves several mirrors at once, and survives bad input."""

from __future__ import annotations

import json
import socket
import struct

from mirrorkit import wait_for

from irisrep import wire
from irisrep.arbiter import Arbiter, ArbiterClient


def _client(arb, mirror, member, partner, changes=None):
    return ArbiterClient(
        arb.address,
        mirror=mirror,
        member=member,
        partner=partner,
        heartbeat_ms=20,
        on_change=(lambda c, s: changes.append((c, s))) if changes is not None else None,
    ).start()


def test_each_member_learns_whether_the_arbiter_sees_its_partner():
    with Arbiter(silence_ms=300) as arb:
        ch_a: list = []
        a = _client(arb, "M1", "A", "B", ch_a)
        wait_for(lambda: a.connected, what="A connected")
        assert a.sees_partner is False  # B is not there yet
        b = _client(arb, "M1", "B", "A")
        wait_for(lambda: a.sees_partner and b.sees_partner, what="both seen")
        # Another mirror with the same member names is kept apart.
        x = _client(arb, "M2", "A", "B")
        wait_for(lambda: x.connected)
        assert x.sees_partner is False
        assert set(arb.seen()) == {"M1", "M2"}
        b.close()  # the arbiter loses B: A hears of it
        wait_for(lambda: a.sees_partner is False, what="A told B is gone")
        assert (True, False) in ch_a and (True, True) in ch_a
        a.close()
        x.close()


def test_arbiter_down_is_seen_as_a_lost_link():
    arb = Arbiter(silence_ms=300)
    ch: list = []
    a = _client(arb, "M1", "A", "B", ch)
    wait_for(lambda: a.connected)
    arb.close()
    wait_for(lambda: not a.connected, what="A notices the arbiter is gone")
    assert ch[-1] == (False, None)
    a.close()


def test_bad_input_closes_only_that_connection():
    with Arbiter(silence_ms=300) as arb:
        a = _client(arb, "M1", "A", "B")
        b = _client(arb, "M1", "B", "A")
        wait_for(lambda: a.sees_partner and b.sees_partner)
        cases = [
            b"garbage" * 10,
            struct.pack("<4sHHHHQIQ", b"IRWF", 1, 10, 0, 0, 0, 2**32 - 1, 0),
            wire.encode_wire_frame(wire.STATUS, 0, b'{"mirror": "M1"}'),
            wire.encode_wire_frame(
                wire.STATUS,
                0,
                json.dumps({"mirror": "M1", "member": "../x", "partner": "A"}).encode(),
            ),
            wire.encode_wire_frame(wire.HEARTBEAT, 0, wire.encode_u64(0)),
        ]
        for data in cases:
            s = socket.create_connection(arb.address)
            s.sendall(data)
            s.settimeout(5)
            try:
                assert s.recv(100) == b""  # closed by the arbiter
            except ConnectionResetError:
                pass  # closed with our bytes unread: a reset is a close too
            s.close()
        assert a.sees_partner and b.sees_partner
        assert set(arb.seen()["M1"]) == {"A", "B"}
        a.close()
        b.close()
