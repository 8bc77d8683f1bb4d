"""The cross-member check (`irisrep check`, irisrep.datacheck): the member-side ops
(hash and items of an encoded-key range: bounded, read only, validated), the
bisection against two in-process databases, the recheck of transient differences,
the ops over the client protocol, and `irisrep check` on a real local mirror while
a writer keeps writing, with a difference planted in the backup's database."""

from __future__ import annotations

import json
import logging
import random
import re
import socket
import struct
import threading
import time
from pathlib import Path

import pytest
import xxhash
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mirrorkit import cli, deployed

import irisrep
from irisrep import _core, datacheck
from irisrep.client import connect, connect_member
from irisrep.clientproto import CLOSED, ProtocolError, recv_message, send_message
from irisrep.constants import (
    DATACHECK_BOUND_BYTES_MAX,
    DATACHECK_LOCK_NODES_MAX,
    DATACHECK_RANGE_NODES_MAX,
)
from irisrep.datacheck import LocalSource, check, hash_range, read_range
from irisrep.deploy import credentials, load
from irisrep.errors import IllegalValueError, SubscriptError
from irisrep.server import ClientListener, LocalHost


def _open(path: Path):
    return irisrep.open(path, pool_blocks=256)


@pytest.fixture
def pair(tmp_path):
    a, b = _open(tmp_path / "a"), _open(tmp_path / "b")
    yield a, b
    a.close()
    b.close()


def _fill(db, n: int = 3000) -> None:
    with db.transaction():
        for i in range(n):
            db.globals["x"][i] = f"value {i}"
        for i in range(200):
            db.globals["y"]["k", i] = i * 1.5
        db.globals["big"][1] = "z" * 20_000  # an overflow value
        db.globals["a"][()] = "first global"


def _key(name: str, *subs) -> bytes:
    return _core.encode_key(_core.encode_name(name), subs)


def _diffs(report) -> dict:
    return {
        _core.decode_key(d.key): (d.kind, d.value_a, d.value_b)
        for m in report.unmatched
        for d in m.differences
    }


# --- the member side -----------------------------------------------------------------------


def test_hash_covers_every_node_in_order_in_the_documented_format(pair):
    a, _b = pair
    _fill(a, 500)
    r = hash_range(a, b"", None)
    h = xxhash.xxh3_128()
    n = 0
    for key, value in read_range(a, b"", None, 1000)[0]:
        h.update(struct.pack("<H", len(key)) + key + struct.pack("<I", len(value)) + value)
        n += 1
    assert (r.count, r.digest, r.stop) == (n, h.digest(), None)
    assert r.count == 500 + 200 + 2
    assert r.exact and r.position == a.journal.end_position
    # The whole is the parts: [lo, stop) then [stop, hi), and a bound cuts exactly.
    part = hash_range(a, b"", None, limit=100)
    assert part.count == 100 and part.stop is not None and part.mid is not None
    assert hash_range(a, b"", part.stop).digest == part.digest
    assert b"" < part.mid < part.stop
    lo, hi = _key("x", 10), _key("x", 20)
    assert hash_range(a, lo, hi).count == 10
    assert hash_range(a, _key("nothing"), _key("nothinh")).count == 0


def test_hash_holds_the_lock_in_bounded_chunks(pair, monkeypatch):
    a, _b = pair
    _fill(a, 3 * DATACHECK_LOCK_NODES_MAX)

    class Counting:
        def __init__(self, lock):
            self.lock, self.holds = lock, 0

        def __enter__(self):
            self.holds += 1
            return self.lock.__enter__()

        def __exit__(self, *exc):
            return self.lock.__exit__(*exc)

    counting = Counting(a._lock)
    monkeypatch.setattr(a, "_lock", counting)
    r = hash_range(a, b"", None)
    assert r.count > 3 * DATACHECK_LOCK_NODES_MAX
    assert counting.holds >= r.count // DATACHECK_LOCK_NODES_MAX
    monkeypatch.undo()
    # A byte bound stops a request early too, with a split point where it stopped.
    monkeypatch.setattr(datacheck, "DATACHECK_RANGE_BYTES_MAX", 10_000)
    r = hash_range(a, b"", None)
    assert r.stop is not None and 0 < r.count < 1000
    assert hash_range(a, b"", r.stop).digest == r.digest


def test_hash_is_a_snapshot_only_when_nothing_changed(pair, monkeypatch):
    a, _b = pair
    _fill(a, 2 * DATACHECK_LOCK_NODES_MAX)
    assert hash_range(a, b"", None).exact
    lock = a._lock
    w = a.globals["w"]  # made before the patch: a Global keeps the real lock

    class CommitBetweenHolds:
        """The database lock, with a commit by another writer after the first hold."""

        holds = 0

        def __enter__(self):
            return lock.__enter__()

        def __exit__(self, *exc):
            lock.__exit__(*exc)
            CommitBetweenHolds.holds += 1
            if CommitBetweenHolds.holds == 1:
                w[1] = 1
            return False

    monkeypatch.setattr(a, "_lock", CommitBetweenHolds())
    r = hash_range(a, b"", None)
    monkeypatch.undo()
    assert CommitBetweenHolds.holds > 1 and not r.exact
    assert hash_range(a, b"", None).exact


@pytest.mark.parametrize(
    "call",
    [
        lambda db: hash_range(db, "a", None),
        lambda db: hash_range(db, b"", "b"),
        lambda db: hash_range(db, b"x" * (DATACHECK_BOUND_BYTES_MAX + 1), None),
        lambda db: hash_range(db, b"", b"x" * (DATACHECK_BOUND_BYTES_MAX + 1)),
        lambda db: hash_range(db, b"b", b"a"),
        lambda db: hash_range(db, b"a", b"a"),
        lambda db: read_range(db, bytearray(b"a"), None),
    ],
)
def test_bad_bounds_are_subscript_errors(pair, call):
    with pytest.raises(SubscriptError):
        call(pair[0])


@pytest.mark.parametrize(
    "call",
    [
        lambda db: hash_range(db, b"", None, 0),
        lambda db: hash_range(db, b"", None, DATACHECK_RANGE_NODES_MAX + 1),
        lambda db: hash_range(db, b"", None, True),
        lambda db: hash_range(db, b"", None, 1.0),
        lambda db: hash_range(db, b"", None, 10, -1),
        lambda db: hash_range(db, b"", None, 10, "1"),
        lambda db: read_range(db, b"", None, 1001),
        lambda db: check(db, db, leaf_nodes=0),
        lambda db: check(db, db, rechecks=-1),
    ],
)
def test_bad_limits_are_illegal_values(pair, call):
    with pytest.raises(IllegalValueError):
        call(pair[0])


def test_read_range_pages(pair):
    a, _b = pair
    _fill(a, 100)
    nodes, more, _pos = read_range(a, b"", None, 10)
    assert len(nodes) == 10 and more
    nodes2, _more, _pos = read_range(a, nodes[-1][0] + b"\x00", None, 10)
    assert nodes2[0][0] > nodes[-1][0]
    everything, more, _pos = read_range(a, b"", None, 1000)
    assert not more and len(everything) == 100 + 200 + 2
    assert [k for k, _v in everything] == sorted(k for k, _v in everything)
    # A page stops before its bytes pass the bound (one node always fits).
    small, more, _pos = read_range(a, b"", None, 1000, page_bytes=1)
    assert len(small) == 1 and more


# --- the bisection, in process ---------------------------------------------------------------


def test_identical_databases_match(pair):
    a, b = pair
    _fill(a)
    _fill(b)
    r = check(a, b, range_nodes=100)
    assert r.ok and not r.unmatched and not r.matched_after_recheck
    assert r.nodes == 3000 + 200 + 2
    assert r.ranges_checked >= 30  # walked in bounded requests
    assert "matched" in r.lines()[0] and "UNMATCHED" not in r.lines()[0]
    assert check(a, b).ok
    empty_a, empty_b = a, b
    for db in (empty_a, empty_b):
        for name in list(db.global_names()):
            db.globals[name].kill()
    assert check(empty_a, empty_b).ok


def test_differences_in_leaves_that_touch_are_one_range(pair):
    a, b = pair
    _fill(a)
    _fill(b)
    for i in (100, 101, 102):  # three neighbours: three one-node leaves that touch
        b.globals["x"][i] = "planted"
    b.globals["x"][2000] = "planted"  # far away: a range of its own
    r = check(a, b, leaf_nodes=1, rechecks=0)
    assert [sorted(_core.decode_key(d.key)[1][0] for d in m.differences) for m in r.unmatched] == [
        [100, 101, 102],
        [2000],
    ]
    first = r.unmatched[0]
    assert first.lo <= _key("x", 100) and _key("x", 102) < first.hi <= _key("x", 103)
    assert (first.count_a, first.count_b) == (3, 3)
    lines = r.lines()
    assert "UNMATCHED: 2 ranges differ" in lines[0]
    assert sum(line.startswith("  unmatched [") for line in lines) == 2


@pytest.mark.parametrize(
    "leaf_nodes, range_nodes", [(1, DATACHECK_RANGE_NODES_MAX), (4, 50), (32, 7), (512, 1000)]
)
def test_bisection_finds_every_difference(pair, leaf_nodes, range_nodes):
    a, b = pair
    _fill(a)
    _fill(b)
    b.globals["x"][1234] = "planted"  # different value
    b.globals["x"].kill(0)  # the very first x: only on A
    a.globals["y"].kill(("k", 7))  # only on B
    b.globals["big"][1] = "z" * 19_999 + "!"  # an overflow value, last character
    b.globals["zz"]["last"] = 1  # past everything on A
    a.globals["%first"][()] = 1  # before everything on B
    r = check(a, b, leaf_nodes=leaf_nodes, range_nodes=range_nodes, rechecks=1)
    assert not r.ok
    assert _diffs(r) == {
        ("x", (1234,)): ("different", _core.encode_value("value 1234"), b"\x01planted"),
        ("x", (0,)): ("only_a", _core.encode_value("value 0"), None),
        ("y", ("k", 7)): ("only_b", None, _core.encode_value(7 * 1.5)),
        ("big", (1,)): (
            "different",
            _core.encode_value("z" * 20_000),
            _core.encode_value("z" * 19_999 + "!"),
        ),
        ("zz", ("last",)): ("only_b", None, _core.encode_value(1)),
        ("%first", ()): ("only_a", _core.encode_value(1), None),
    }
    for m in r.unmatched:
        # A range is one leaf, or leaves that touch (merged), each with a difference.
        assert max(m.count_a, m.count_b) <= max(leaf_nodes, 1) * len(m.differences)
        assert m.confirmed  # nothing changed between the hashes
        for d in m.differences:
            assert m.lo <= d.key and (m.hi is None or d.key < m.hi)
    text = "\n".join(r.lines())
    assert "UNMATCHED:" in text
    assert "^x(1234): different values:" in text and "'planted'" in text
    assert "^x(0): only on " in text and '^y("k",7): only on ' in text
    doc = r.as_dict()
    assert doc["ok"] is False and doc["result"] == "unmatched"
    keys = {d["key"] for m in doc["unmatched"] for d in m["differences"]}
    assert '^zz("last")' in keys and "^%first" in keys
    json.dumps(doc)


def test_random_differences_are_all_found(tmp_path):
    rnd = random.Random(8)
    a, b = _open(tmp_path / "a"), _open(tmp_path / "b")
    try:
        keys = [("g" + str(rnd.randrange(3)), rnd.randrange(10_000)) for _ in range(4000)]
        for db in (a, b):
            with db.transaction():
                for name, k in keys:
                    db.globals[name][k] = k
        want = {}
        for name, k in rnd.sample(keys, 40):
            choice = rnd.randrange(3)
            if choice == 0:
                b.globals[name][k] = "other"
                want[(name, (k,))] = "different"
            elif choice == 1:
                b.globals[name].kill(k)
                want[(name, (k,))] = "only_a"
            else:
                b.globals[name][k, "child"] = 1
                want[(name, (k, "child"))] = "only_b"
        r = check(a, b, leaf_nodes=8, range_nodes=200, rechecks=0)
        assert {k: v[0] for k, v in _diffs(r).items()} == want
    finally:
        a.close()
        b.close()


class _CatchingUp(LocalSource):
    """B as a copy that lacks a change until it is asked where it is (it catches up)."""

    def __init__(self, db, fix):
        super().__init__(db, "B")
        self.fix = fix
        self.asked = 0

    def position(self):
        self.asked += 1
        if self.asked > 1 and self.fix is not None:  # after the first pass's lead()
            self.fix()
            self.fix = None
        return super().position()


def test_check_compares_another_database_of_each(pair):
    """Several databases per instance: the check compares the databases it is given
    (`--database` on members); DB's equality says nothing about SALES's."""
    a, b = pair
    _fill(a, 500)
    _fill(b, 500)
    sa, sb = a.database("SALES"), b.database("SALES")
    _fill(sa, 300)
    _fill(sb, 300)
    sb.globals["x"][7] = "planted in SALES"
    assert check(a, b).ok
    report = check(sa, sb)
    assert not report.ok
    assert _diffs(report) == {("x", (7,)): ("different", b"\x01value 7", b"\x01planted in SALES")}


def test_a_transient_difference_is_matched_after_recheck(pair):
    a, b = pair
    _fill(a)
    _fill(b)
    a.globals["x"][5] = "new"  # B has not applied it yet
    source = _CatchingUp(b, lambda: b.globals["x"].set(5, "new"))
    r = check(a, source, leaf_nodes=8, same_stream=False)
    assert r.ok and not r.unmatched
    assert r.recheck_rounds == 1 and len(r.matched_after_recheck) == 1
    lo, hi = r.matched_after_recheck[0]
    assert lo <= _key("x", 5) < hi
    assert "matched after recheck" in "\n".join(r.lines())
    # Without rechecks, the first pass's difference is reported as it was seen.
    a.globals["x"][6] = "new"
    r = check(a, b, leaf_nodes=8, rechecks=0)
    assert not r.ok and _diffs(r) == {
        ("x", (6,)): ("different", b"\x01new", _core.encode_value("value 6"))
    }
    assert "not rechecked" in "\n".join(r.lines())


def test_a_range_that_keeps_changing_is_reported_unconfirmed(pair):
    a, b = pair
    _fill(a, 100)
    _fill(b, 100)
    counter = [0]

    class Changing(LocalSource):
        def range_hash(self, lo, hi, limit, wait_position=None):
            counter[0] += 1
            self.db.globals["x"][50] = counter[0]  # a new value before every hash
            return super().range_hash(lo, hi, limit, wait_position)

    r = check(a, Changing(b, "B"), leaf_nodes=8, rechecks=1, same_stream=False)
    assert not r.ok and len(r.unmatched) == 1
    assert not r.unmatched[0].confirmed
    assert "still different after 1 recheck round" in "\n".join(r.lines())


# --- over the client protocol ----------------------------------------------------------------


@pytest.fixture
def served(pair):
    a, b = pair
    with (
        ClientListener(LocalHost(a), users=None) as la,
        ClientListener(LocalHost(b), users=None) as lb,
    ):
        yield a, b, la, lb


def _addr(lis) -> str:
    return f"{lis.address[0]}:{lis.address[1]}"


def test_check_over_connections(served):
    a, b, la, lb = served
    _fill(a)
    _fill(b)
    b.globals["y"]["k", 3] = "planted"
    with connect_member(_addr(la)) as ca, connect_member(_addr(lb)) as cb:
        assert ca.stream_position() == a.journal.end_position
        r = check(ca, cb, leaf_nodes=4, range_nodes=300, same_stream=False, name_a="A")
        assert not r.ok and r.member_a == "A" and r.member_b == _addr(lb)
        assert _diffs(r) == {
            ("y", ("k", 3)): ("different", _core.encode_value(4.5), b"\x01planted")
        }
        # Errors come back typed and the connection goes on.
        with pytest.raises(SubscriptError):
            ca.range_hash(b"b", b"a", 10)
        with pytest.raises(IllegalValueError):
            ca.range_items(b"", None, 0)
        with pytest.raises(SubscriptError):
            ca.range_hash("text", None, 10)
        count, digest, stop, mid, position, exact = ca.range_hash(b"", None, 10)
        assert count == 10 and len(digest) == 16 and stop > mid > b"" and exact
        assert position == a.journal.end_position
        ca.ping()


def _raw(lis) -> socket.socket:
    return socket.create_connection(lis.address, timeout=5)


def _rpc(s, req):
    send_message(s, req, timeout_ms=2000)
    return recv_message(s, idle_deadline=time.monotonic() + 5)


def test_malformed_range_requests(served, caplog):
    _a, _b, la, _lb = served
    caplog.set_level(logging.WARNING, logger="irisrep.server")
    for req in [("range_hash", b"", None, 10), ("range_items",), ("stream_position", 1)]:
        s = _raw(la)
        resp = _rpc(s, req)
        assert resp[0] == "err" and resp[1] == "ProtocolError" and resp[3][0] == "request"
        s.close()


RANGE_ARGS = (
    st.none()
    | st.booleans()
    | st.integers(-3, 20_000)
    | st.binary(max_size=8)
    | st.binary(min_size=500, max_size=600)
    | st.text(max_size=3)
)


def test_random_range_requests_never_hit_a_bug(served, caplog):
    a, _b, la, _lb = served
    _fill(a, 300)
    caplog.set_level(logging.ERROR, logger="irisrep.server")
    holder = {"s": _raw(la)}

    @given(
        st.sampled_from(["range_hash", "range_items", "stream_position"]),
        st.lists(RANGE_ARGS, max_size=5),
    )
    @settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
    def fuzz(op, args):
        if len(args) == 4 and type(args[3]) is int:
            args[3] = 0  # no waits for a position
        s = holder["s"]
        try:
            resp = _rpc(s, (op, *args))
        except (OSError, ProtocolError):
            resp = CLOSED
        if resp is CLOSED or (resp[0] == "err" and resp[1] == "ProtocolError"):
            s.close()
            holder["s"] = _raw(la)
        else:
            assert resp[0] in ("ok", "err")

    try:
        fuzz()
    finally:
        holder["s"].close()
    assert "internal error" not in caplog.text, caplog.text
    with connect(_addr(la)) as c:
        c.ping()


# --- irisrep check on a real local mirror ----------------------------------------------------


@pytest.fixture
def mirror(tmp_path):
    d = str(tmp_path / "m")
    with deployed(d, "--qos-ms", "2000", "--no-arbiter"):
        yield d


def _conn(d: str):
    dep = load(Path(d))
    user, password = credentials(Path(d))
    return irisrep.connect(
        [m["client_address"] for m in dep["members"]], user=user, password=password
    )


def _member_conn(d: str, name: str):
    dep = load(Path(d))
    user, password = credentials(Path(d))
    address = next(m["client_address"] for m in dep["members"] if m["name"] == name)
    return connect_member(address, user=user, password=password)


def _populate(d: str, n: int) -> None:
    with _conn(d) as c:
        g = c.globals["x"]
        with c.transaction():
            for i in range(n):
                g[i] = f"value {i}"
        c.globals["y"]["a"] = "b"


def _check_on_a_terminal(monkeypatch, *args) -> str:
    """Run `irisrep ARGS` in process with stderr a (fake) terminal; what it drew there."""
    import io

    from click.testing import CliRunner
    from rich.console import Console

    from irisrep import cli as cli_mod

    screen = io.StringIO()
    monkeypatch.setattr(cli_mod, "err_console", Console(file=screen, force_terminal=True))
    result = CliRunner().invoke(cli_mod.main, list(args))
    assert result.exit_code == 0, (result.output, screen.getvalue())
    assert "matched" in result.output
    return screen.getvalue()


def test_check_a_mirror_while_a_writer_writes(mirror, monkeypatch):
    d = mirror
    _populate(d, 12_000)  # two RANGE_HASH requests' worth at the default bound
    stop = threading.Event()
    writes = [0]

    def writer():
        rnd = random.Random(1)
        with _conn(d) as c:
            i = 0
            while not stop.is_set():
                c.globals["w"][i] = i
                c.globals["x"][rnd.randrange(12_000)] = f"update {i}"
                if i % 10 == 0:
                    with c.transaction():
                        c.globals["x"][rnd.randrange(12_000)] = "in a transaction"
                        c.globals["w"]["t", i] = i
                i += 1
                writes[0] += 1

    t = threading.Thread(target=writer)
    t.start()
    try:
        while writes[0] < 50:
            time.sleep(0.01)
        for args in (("--against", "B"), ("--member", "B", "--against", "A")):
            before = writes[0]
            p = cli("check", "--dir", d, *args, check=False)
            assert p.returncode == 0, p.stdout + p.stderr
            assert "matched" in p.stdout and "UNMATCHED" not in p.stdout
            assert "\x1b[" not in p.stderr  # no progress bar when piped
            assert writes[0] > before  # the writer went on during the check
        p = cli("check", "--dir", d, "--against", "B", "--json", check=False)
        assert p.returncode == 0, p.stdout + p.stderr
        doc = json.loads(p.stdout)
        assert doc["ok"] and doc["member_a"] == "A" and doc["member_b"] == "B"
        assert doc["nodes"] >= 12_000 and doc["unmatched"] == []
        # On a terminal, a progress bar of the ranges and nodes checked, on stderr.
        shown = _check_on_a_terminal(monkeypatch, "check", "--dir", d, "--against", "B")
        assert "check" in shown and re.search(r"\d+ ranges checked, \d+ nodes", shown), shown
        # The bisection with small ranges, in process, while the writes go on.
        with _member_conn(d, "A") as ca, _member_conn(d, "B") as cb:
            for _ in range(2):
                r = check(ca, cb, range_nodes=64, leaf_nodes=8)
                assert r.ok, "\n".join(r.lines())
                assert r.ranges_checked > 12_000 // 64
    finally:
        stop.set()
        t.join()

    # Bad arguments say what is wrong (exit 2: usage), and nothing is checked.
    for args, word in [
        (("--against", "Z"), "no member 'Z'"),
        (("--against", "B", "--member", "Q"), "no member 'Q'"),
        (("--against", "A", "--member", "A"), "against itself"),
        (("--against", "B", "--leaf-size", "0"), "--leaf-size"),
    ]:
        p = cli("check", "--dir", d, *args, check=False)
        assert p.returncode == 2, p.stdout + p.stderr
        assert word in p.stderr and "Traceback" not in p.stderr
    p = cli("check", "--dir", str(Path(d).parent / "none"), "--against", "B", check=False)
    assert p.returncode == 1 and "no mirror deployed" in p.stderr


def test_check_finds_a_difference_planted_in_the_backup(mirror):
    d = mirror
    _populate(d, 3000)
    with _conn(d) as c:
        c.globals["z"]["keep"] = "on both"
        final = c.stream_position()
    with _member_conn(d, "B") as cb:  # B has everything before it stops
        deadline = time.monotonic() + 20
        while cb.stream_position() < final and time.monotonic() < deadline:
            time.sleep(0.02)
    cli("stop", "--dir", d, "B")
    p = cli("check", "--dir", d, "--against", "B", check=False)
    assert p.returncode == 1 and "cannot connect to B" in p.stderr

    data_dir = next(m["data_dir"] for m in load(Path(d))["members"] if m["name"] == "B")
    # Opened as the copy it is, with journaling off: a journaled change would fork
    # B's journal from the primary's stream, and B would undo it as a divergent tail.
    db = irisrep.open(data_dir, mirror_copy=True, journaling=False)
    try:
        db.set_protect(False)
        db.globals["x"][1500] = "planted"
        db.globals["x"].kill(2999)
        db.globals["zz"]["only on B"] = 1
    finally:
        db.close()
    cli("start", "--dir", d, "B", "--wait")

    p = cli("check", "--dir", d, "--against", "B", "--database", "nope", check=False)
    assert p.returncode == 1 and "no database NOPE" in p.stderr, p.stderr
    p = cli("check", "--dir", d, "--against", "B", check=False)
    assert p.returncode == 1, p.stdout + p.stderr
    out = p.stdout
    assert "A against B: UNMATCHED" in out
    assert "^x(1500): different values: A 'value 1500', B 'planted'" in out
    assert "^x(2999): only on A: 'value 2999'" in out
    assert '^zz("only on B"): only on B: 1' in out
    assert "unmatched [^x(" in out and "confirmed" in out

    p = cli("check", "--dir", d, "--against", "B", "--json", "--leaf-size", "4", check=False)
    assert p.returncode == 1
    doc = json.loads(p.stdout)
    found = {(d_["key"], d_["kind"]) for m in doc["unmatched"] for d_ in m["differences"]}
    assert found == {
        ("^x(1500)", "different"),
        ("^x(2999)", "only_a"),
        ('^zz("only on B")', "only_b"),
    }
    for m in doc["unmatched"]:
        assert max(m["count_a"], m["count_b"]) <= 4 and m["lo"] and m["hi"]
    # The primary keeps taking writes; the report stays the same.
    with _conn(d) as c:
        c.globals["w"][1] = 1
    p = cli("check", "--dir", d, "--member", "B", "--against", "A", check=False)
    assert (
        p.returncode == 1 and "^x(1500): different values: B 'planted', A 'value 1500'" in p.stdout
    )
