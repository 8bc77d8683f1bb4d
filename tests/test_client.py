"""The client listener and `irisrep.connect` over real TCP on 127.0.0.1, against a real
Database: every op has the local API's semantics, errors come back typed, LOGIN,
malformed input, limits and timeouts, and cleanup when a connection goes away."""

from __future__ import annotations

import logging
import socket
import struct
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import irisrep
from irisrep.auth import hash_password
from irisrep.client import connect, connect_member, make_error
from irisrep.clientproto import CLOSED, ProtocolError, recv_message, send_message
from irisrep.errors import (
    ClosedError,
    HandshakeError,
    IllegalValueError,
    IrisrepError,
    LockTimeoutError,
    MaxStringError,
    NotPrimaryError,
    ProtectError,
    SubscriptError,
    TransactionError,
    UndefinedError,
)
from irisrep.server import ClientListener, LocalHost


@pytest.fixture
def db(tmp_path):
    d = irisrep.open(tmp_path / "db", pool_blocks=256)
    yield d
    d.close()


@pytest.fixture
def listener(db):
    with ClientListener(LocalHost(db), users=None) as lis:
        yield lis


@pytest.fixture
def conn(listener):
    c = connect(_addr(listener))
    yield c
    c.close()


def _addr(lis: ClientListener) -> str:
    return f"{lis.address[0]}:{lis.address[1]}"


def _raw(lis: ClientListener) -> socket.socket:
    s = socket.create_connection(lis.address, timeout=5)
    s.settimeout(5)
    return s


def _rpc(s: socket.socket, req) -> object:
    send_message(s, req)
    return recv_message(s, idle_deadline=time.monotonic() + 5)


def _wait(pred, timeout: float = 5.0) -> None:
    end = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < end, "condition not reached in time"
        time.sleep(0.01)


def _closed_by_server(s: socket.socket) -> bool:
    """Read to the end (replies first); True once the server closed the socket."""
    s.settimeout(5)
    try:
        while True:
            if not s.recv(65536):
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True


# --- ops ---------------------------------------------------------------------------------


def test_every_op_round_trips(conn, db):
    g = conn.globals["myfirstglobal"]
    lg = db.globals["myfirstglobal"]
    g[()] = "congratulations"
    g["a", 1] = "x"
    g["a", 2] = 2.5
    g["a", 2, "z"] = b"\x00bytes"
    g.set(("b",), 10**30)
    assert lg[()] == "congratulations" and lg["a", 1] == "x" and lg["b"] == 10**30
    assert g["a", 1] == "x" and g[()] == "congratulations" and g["a", 2, "z"] == b"\x00bytes"
    assert g.get(("a", 3), None) is None and g.get(("a", 3), "d") == "d"
    assert ("a", 1) in g and ("a",) not in g and "b" in g
    assert [g.data(s) for s in [("a",), ("a", 1), ("a", 2), ("zz",), ()]] == [10, 1, 11, 0, 11]
    assert g.order(("a", 1)) == 2 and g.order(("a", 2)) is None
    assert g.order(("a", ""), reverse=True) == 2 and g.order(("a", 2), reverse=True) == 1
    assert g.order("") == "a" and g.order(("",), reverse=True) == "b"
    assert g.query(()) == ("a", 1) and g.query(("a", 2)) == ("a", 2, "z")
    assert g.query(("a", 1), reverse=True) == ()
    assert g.increment("n") == 1 and g.increment(("n",), 2.5) == 3.5
    assert lg["n"] == 3.5
    assert list(g.items()) == list(lg.items())
    assert list(g.items(prefix=("a",), reverse=True)) == list(lg.items(("a",), reverse=True))
    assert list(g.keys(("a",))) == [("a", 1), ("a", 2), ("a", 2, "z")]
    assert list(g) == list(lg)
    g.zkill(("a", 2))
    assert g.data(("a", 2)) == 10
    del g["a"]
    assert g.data(("a",)) == 0 and lg.data(("a",)) == 0
    g.kill()
    assert list(lg.items()) == []
    assert conn.global_names() == db.global_names()
    conn.globals["other"][1] = 1
    assert list(conn.globals) == ["other"] and "other" in conn.globals
    assert conn.status() == {"role": "local", "member": "local"}
    assert conn.role == "local" and conn.address == _addr(conn_listener(conn))
    conn.ping()


def conn_listener(conn):
    class _L:
        address = tuple(conn._member)

    return _L


def test_items_paging_and_ranges(conn, db):
    lg = db.globals["p"]
    with db.transaction():
        for i in range(2500):
            lg["k", i] = f"v{i}"
        lg["j"] = 1
        lg["l"] = 2
    g = conn.globals["p"]
    assert list(g.items()) == list(lg.items())
    assert list(g.items(("k",), batch=7)) == list(lg.items(("k",)))
    assert list(g.items(("k",), reverse=True, batch=1000)) == list(lg.items(("k",), reverse=True))
    for kw in (
        {"start": ("k", 10), "stop": ("k", 900)},
        {"start": ("k", 10), "stop": ("k", 900), "reverse": True},
        {"prefix": ("k",), "start": ("k", 2400)},
        {"stop": ("k", 3)},
        {"start": ("k", 5), "stop": ("k", 5)},
    ):
        assert list(g.items(batch=13, **kw)) == list(lg.items(**kw)), kw


def test_big_values(conn, db):
    g = conn.globals["big"]
    from irisrep.constants import STRING_CHARS_MAX

    g[1] = "é" * STRING_CHARS_MAX
    assert g[1] == "é" * STRING_CHARS_MAX
    g[2] = "😀" * STRING_CHARS_MAX  # the longest UTF-8 fits in one frame
    assert len(list(g.items())) == 2
    with pytest.raises(MaxStringError):
        g[3] = "x" * (STRING_CHARS_MAX + 1)
    g[4] = 10**1000
    assert g[4] == 10**1000


OPS = st.sampled_from(["set", "get", "kill", "zkill", "data", "order", "query", "incr", "items"])
SUBS = st.lists(st.sampled_from([1, 2, -1, 2.5, "a", "b", ""]), min_size=0, max_size=3).map(tuple)
VALUES = st.sampled_from([0, 1, "x", "", 2.5, -7, b"\x00", "1"])


def test_random_sequences_match_local(listener, tmp_path):
    """A random sequence of ops gives the same results and errors remotely and locally."""
    model_db = irisrep.open(tmp_path / "model", pool_blocks=256)
    c = connect(_addr(listener))
    remote, local = c.globals["m"], model_db.globals["m"]

    def run(g, op, subs, value, reverse):
        try:
            if op == "set":
                g[subs] = value
                return None
            if op == "get":
                return ("v", g[subs])
            if op == "kill":
                return g.kill(subs)
            if op == "zkill":
                return g.zkill(subs)
            if op == "data":
                return g.data(subs)
            if op == "order":
                return g.order(subs, reverse=reverse)
            if op == "query":
                return g.query(subs, reverse=reverse)
            if op == "incr":
                return g.increment(subs, 1)
            return list(g.items(subs[:1], reverse=reverse))
        except IrisrepError as e:
            return type(e).__name__

    @given(st.lists(st.tuples(OPS, SUBS, VALUES, st.booleans()), max_size=25))
    @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
    def check(steps):
        remote.kill()
        local.kill()
        for op, subs, value, reverse in steps:
            assert run(remote, op, subs, value, reverse) == run(local, op, subs, value, reverse)
        assert list(remote.items()) == list(local.items())

    try:
        check()
    finally:
        c.close()
        model_db.close()


# --- errors ------------------------------------------------------------------------------


def test_errors_come_back_typed(conn, listener):
    g = conn.globals["e"]
    with pytest.raises(UndefinedError) as info:
        g["missing"]
    assert isinstance(info.value, KeyError) and '^e("missing")' in str(info.value)
    with pytest.raises(SubscriptError):
        g["a", ""] = 1  # refused here, as locally
    with pytest.raises(SubscriptError):
        conn.globals["bad name"]
    with pytest.raises(IllegalValueError):
        g[1] = None
    with pytest.raises(IllegalValueError):
        g[1] = float("nan")
    with pytest.raises(TransactionError):
        conn.tcommit()
    with pytest.raises(TransactionError):
        conn.trollback()
    # The same errors raised by the member (bypassing the client's own checks).
    with pytest.raises(SubscriptError):
        conn._request(("set", "e", ("a", ""), 1))
    with pytest.raises(SubscriptError):
        conn._request(("get", "bad name", (1,), True))
    with pytest.raises(IllegalValueError):
        conn._request(("set", "e", (1,), [1]))
    with pytest.raises(IllegalValueError):
        conn._request(("increment", "e", (1,), None))
    with pytest.raises(TransactionError):
        conn._request(("trollback", 3))
    with pytest.raises(irisrep.ConfigError):
        conn._request(("lock", "e", (1,), False, -1))
    # A value the local API stores but the wire cannot carry (a lone surrogate).
    with pytest.raises(IllegalValueError):
        g[1] = "\ud800"
    listener.host.database.globals["e"][9] = "\ud800"
    with pytest.raises(IllegalValueError):
        g[9]
    conn.ping()  # none of these closed the connection
    assert listener.connections == 1


def test_make_error_maps_names():
    assert type(make_error("ProtectError", "<PROTECT> x", None)) is ProtectError
    e = make_error("NotPrimaryError", "not me", "10.0.0.2:7002")
    assert type(e) is NotPrimaryError and e.primary == "10.0.0.2:7002"
    e = make_error("HandshakeError", "x", ("authentication failed", "bad"))
    assert type(e) is HandshakeError and e.reason == "authentication failed"
    assert type(make_error("ProtocolError", "x", ("tag", "d"))) is ProtocolError
    assert type(make_error("NoSuchError", "m", None)) is IrisrepError
    assert type(make_error("object", "m", None)) is IrisrepError
    assert type(make_error("ValueError", "m", None)) is IrisrepError


def test_protect_on_a_read_only_database(conn, db):
    g = conn.globals["p"]
    g[1] = "before"
    db.set_protect(True)
    with pytest.raises(ProtectError) as info:
        g[1] = "after"
    assert info.value.iris_word == "<PROTECT>"
    for write in (lambda: g.kill(1), lambda: g.zkill(1), lambda: g.increment(2), conn.tstart):
        with pytest.raises(ProtectError):
            write()
    assert g[1] == "before" and g.data(1) == 1 and list(g.items()) == [((1,), "before")]
    db.set_protect(False)
    g[1] = "after"
    assert db.globals["p"][1] == "after"


# --- login -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def app_hash():
    return hash_password("right")


def test_login_required_and_checked(db, app_hash, caplog):
    with ClientListener(LocalHost(db), users={"app": app_hash}) as lis:
        with connect(_addr(lis), user="app", password="right") as c:
            c.globals["l"][1] = "ok"
        caplog.set_level(logging.WARNING, logger="irisrep.server")
        for user, password in (("app", "wrong"), ("nobody", "right")):
            with pytest.raises(HandshakeError) as info:
                connect(_addr(lis), user=user, password=password)
            assert info.value.reason == "authentication failed"
        with pytest.raises(HandshakeError):
            connect(_addr(lis))  # no login at all
        assert lis.stats["login_failed"] == 2
        assert "login failed for user 'app'" in caplog.text
        assert "right" not in caplog.text and "wrong" not in caplog.text
        # A request before LOGIN is refused and the connection closed; nothing changed.
        s = _raw(lis)
        resp = _rpc(s, ("set", "l", (2,), "sneaky"))
        assert resp[0] == "err" and resp[1] == "HandshakeError"
        assert _closed_by_server(s)
        s.close()
        assert list(db.globals["l"].items()) == [((1,), "ok")]
        _wait(lambda: lis.connections == 0)


def test_listener_rejects_bad_users():
    with pytest.raises(irisrep.ConfigError):
        ClientListener(None, users={"app": "plain"})


# --- malformed input ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (struct.pack("<I", 2**32 - 1), "length"),
        (struct.pack("<I", 10) + b"abc", "truncated"),
        (struct.pack("<I", 5) + b"\x0b" * 5, "tag"),
        (struct.pack("<I", 3) + b"\x00\x00\x00", "trailing"),
        (struct.pack("<I", 2) + b"\x00\x00\x00\x00", "trailing"),
        (struct.pack("<I", 6) + b"\x08\x09\x00\x00\x00\x00", "count"),
    ],
)
def test_malformed_frame_closes_only_that_connection(listener, conn, caplog, data, reason):
    caplog.set_level(logging.WARNING, logger="irisrep.server")
    s = _raw(listener)
    s.sendall(data)
    if reason == "truncated":
        s.shutdown(socket.SHUT_WR)
    assert _closed_by_server(s)
    s.close()
    assert f"malformed frame: client protocol: {reason}" in caplog.text
    conn.globals["ok"][1] = 1  # the listener and the other connections go on
    assert conn.globals["ok"][1] == 1
    with connect(_addr(listener)) as c2:
        c2.ping()


@pytest.mark.parametrize(
    "req",
    [
        "ping",
        (),
        (1, 2),
        ("nosuchop",),
        ("get", "g"),
        ("get", "g", [1], True),
        ("get", 1, (1,), True),
        ("items", "g", (), None, None, False, None, 0),
        ("lock", "g", (1,), "yes", 1.0),
    ],
)
def test_bad_request_closes_connection(listener, caplog, req):
    caplog.set_level(logging.WARNING, logger="irisrep.server")
    s = _raw(listener)
    resp = _rpc(s, req)
    assert resp[0] == "err" and resp[1] == "ProtocolError" and resp[3][0] == "request"
    assert _closed_by_server(s)
    s.close()
    assert "bad request" in caplog.text


REQ_ARGS = st.none() | st.booleans() | st.integers(-3, 3) | st.text(max_size=3) | st.floats()
REQ_ARGS = REQ_ARGS | st.lists(REQ_ARGS, max_size=3).map(tuple) | st.lists(REQ_ARGS, max_size=2)
REQ_OPS = st.sampled_from(
    "get set kill zkill data order query increment items tstart tcommit trollback tlevel "
    "lock unlock status ping role globals login".split()
)


def test_random_requests_never_hit_a_bug(listener, caplog):
    """Random (op, args) requests get a reply or a closed connection, never an
    internal error, and the listener keeps serving."""
    caplog.set_level(logging.ERROR, logger="irisrep.server")
    holder = {"s": _raw(listener)}

    @given(REQ_OPS, st.lists(REQ_ARGS, max_size=8))
    @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
    def check(op, args):
        s = holder["s"]
        if op in ("lock",) and len(args) >= 4 and args[3] is not None:
            args[3] = 0  # no long waits
        try:
            resp = _rpc(s, (op, *args))
        except OSError:
            resp = CLOSED
        if resp is CLOSED or (resp[0] == "err" and resp[1] == "ProtocolError"):
            s.close()
            holder["s"] = _raw(listener)
        else:
            assert resp[0] in ("ok", "err")

    try:
        check()
    finally:
        holder["s"].close()
    assert "internal error" not in caplog.text, caplog.text
    with connect(_addr(listener)) as c:
        c.ping()


def test_bug_is_logged_and_closes_the_connection(db, caplog):
    class BadHost(LocalHost):
        def status(self):
            raise RuntimeError("boom")

    caplog.set_level(logging.ERROR, logger="irisrep.server")
    with ClientListener(BadHost(db), users=None) as lis, connect(_addr(lis)) as c:
        with pytest.raises(ConnectionError):
            c.status()
        assert "internal error" in caplog.text and "RuntimeError: boom" in caplog.text
        c.ping()  # the next call connects again


# --- limits ------------------------------------------------------------------------------


def test_connection_limit(db, caplog):
    caplog.set_level(logging.WARNING, logger="irisrep.server")
    with ClientListener(LocalHost(db), users=None, connections_max=2) as lis:
        c1, c2 = connect(_addr(lis)), connect(_addr(lis))
        c1.ping()
        c2.ping()
        s = _raw(lis)
        resp = recv_message(s, idle_deadline=time.monotonic() + 5)
        assert resp[0] == "err" and "too many client connections" in resp[2]
        assert _closed_by_server(s)
        s.close()
        with pytest.raises(ConnectionError):
            connect(_addr(lis))
        assert lis.stats["refused"] == 2 and "refused" in caplog.text
        c1.close()
        _wait(lambda: lis.connections == 1)
        with connect(_addr(lis)) as c3:
            c3.ping()
        c2.close()


def test_idle_connections_closed_after_login_timeout(db, caplog, app_hash):
    caplog.set_level(logging.WARNING, logger="irisrep.server")
    with ClientListener(
        LocalHost(db), users={"app": app_hash}, login_timeout_ms=200, connections_max=8
    ) as lis:
        idle = [_raw(lis) for _ in range(20)]  # more than the limit: the oldest make room
        t = time.monotonic()
        for s in idle:
            assert _closed_by_server(s)
            s.close()
        assert time.monotonic() - t < 3
        _wait(lambda: lis.connections == 0)
        assert "no login within 200 ms" in caplog.text
        with connect(_addr(lis), user="app", password="right") as c:
            time.sleep(0.3)  # past the login timeout: a logged-in connection stays
            c.ping()


# --- cleanup on disconnect ---------------------------------------------------------------


def test_disconnect_mid_transaction_rolls_back(listener, db):
    db.globals["t"]["kept"] = 1
    c = connect(_addr(listener))
    g = c.globals["t"]
    c.tstart()
    c.tstart()
    g["a"] = 1
    g["kept"] = 2
    assert c.tlevel == 2
    assert db.globals["t"]["a"] == 1  # uncommitted data is visible (IRIS)
    c._sock.close()  # the process dies: no goodbye
    _wait(lambda: listener.connections == 0)
    assert db.globals["t"].data("a") == 0 and db.globals["t"]["kept"] == 1
    assert db._open_txns == {}


def test_transaction_commit_and_rollback(conn, db):
    g = conn.globals["t"]
    with conn.transaction():
        g[1] = "committed"
        with conn.transaction():
            g[2] = "inner"
        assert conn.tlevel == 1
    assert conn.tlevel == 0 and db.globals["t"][2] == "inner"
    with pytest.raises(ZeroDivisionError), conn.transaction():
        g[3] = "gone"
        raise ZeroDivisionError
    assert g.data(3) == 0 and conn.tlevel == 0
    conn.tstart()
    g[4] = 4
    conn.trollback(1)
    assert g.data(4) == 0


def test_locks_released_on_disconnect(listener, db):
    a, b = connect(_addr(listener)), connect(_addr(listener))
    ga, gb = a.globals["lk"], b.globals["lk"]
    held = [ga.lock(("x",), timeout=1), ga.lock(("y",), timeout=1, shared=True)]
    for cm in held:
        cm.__enter__()  # held, never unlocked by the client
    with pytest.raises(LockTimeoutError), gb.lock(("x", 1), timeout=0):
        pass
    with gb.lock(("y",), timeout=0, shared=True):
        pass
    assert len(db.locks) == 2
    a.close()
    _wait(lambda: listener.connections == 1)
    assert len(db.locks) == 0
    with gb.lock(("x",), timeout=2):
        assert len(db.locks) == 1
    assert len(db.locks) == 0
    b.close()


def test_lock_held_to_transaction_end_and_long_wait(listener, db):
    a, b = connect(_addr(listener)), connect(_addr(listener))
    ga, gb = a.globals["lk"], b.globals["lk"]
    with a.transaction():
        with ga.lock("x", timeout=1):
            pass
        # Unlocked in the block, but kept until the transaction ends.
        with pytest.raises(LockTimeoutError), gb.lock("x", timeout=0.1):
            pass
        got = []
        cm = gb.lock("x", timeout=5)
        t = threading.Thread(target=lambda: got.append(cm.__enter__()))
        t.start()
        time.sleep(0.2)
        assert not got
    t.join(5)
    assert got  # granted at TCOMMIT
    with pytest.raises(LockTimeoutError) as info, ga.lock("x", timeout=1.2):
        pass
    assert "within 1.2s" in str(info.value)  # one error for the whole wait, in slices
    cm.__exit__(None, None, None)
    a.close()
    b.close()
    _wait(lambda: len(db.locks) == 0)


def test_client_gone_during_long_lock_wait(listener, db):
    a, b = connect(_addr(listener)), connect(_addr(listener))
    ga, gb = a.globals["lk"], b.globals["lk"]
    errors = []
    cm = gb.lock("x", timeout=None)

    def wait_forever():
        try:
            cm.__enter__()
        except OSError as e:
            errors.append(e)

    with ga.lock("x", timeout=1):
        t = threading.Thread(target=wait_forever)
        t.start()
        _wait(lambda: db.locks.waiting() == 1)
        b._sock.shutdown(socket.SHUT_RDWR)  # the client goes away while it waits
        t.join(5)
        assert errors and isinstance(errors[0], ConnectionError)
        # Its thread notices within a wait slice and cleans up.
        _wait(lambda: listener.connections == 1 and db.locks.waiting() == 0, timeout=5)
    assert len(db.locks) == 0
    a.close()


# --- finding the primary -----------------------------------------------------------------


class _Host(LocalHost):
    def __init__(self, database, role, primary=None):
        super().__init__(database, role)
        self.primary_client_address = primary


def test_connect_finds_the_primary(db, tmp_path):
    other = irisrep.open(tmp_path / "backup", pool_blocks=256, protect=True)
    try:
        with (
            ClientListener(_Host(other, "backup"), users=None) as b,
            ClientListener(_Host(db, "primary"), users=None) as p,
        ):
            with connect([_addr(b), p.address]) as c:
                assert c.role == "primary" and c.address == _addr(p)
                c.globals["x"][1] = "on primary"
            assert db.globals["x"][1] == "on primary"
            # A backup that knows the primary: followed.
            b.host.primary_client_address = _addr(p)
            with connect([_addr(b)]) as c:
                assert c.role == "primary"
            # One address, no primary: that member (read only).
            b.host.primary_client_address = None
            with connect(_addr(b)) as c:
                assert c.role == "backup"
                with pytest.raises(ProtectError):
                    c.globals["x"][1] = "no"
            with connect_member(_addr(b)) as c:
                assert c.role == "backup" and c.globals["x"].get(1) is None
            with pytest.raises(NotPrimaryError):
                connect([_addr(b), _addr(b).replace(str(b.address[1]), "1")])
    finally:
        other.close()


def test_nothing_reachable(db):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with pytest.raises(ConnectionError):
        connect([f"127.0.0.1:{port}"], timeout=1)


def test_broken_connection_rediscovers_on_next_call(db, tmp_path):
    with ClientListener(_Host(db, "primary"), users=None) as p:
        address = p.address
        c = connect(_addr(p))
        c.globals["x"][1] = 1
        c.tstart()
        c.globals["x"][2] = 2
    # The member went away (its listener closed): the in-flight call fails...
    with pytest.raises(ConnectionError):
        c.globals["x"][3] = 3
    with ClientListener(_Host(db, "primary"), address, users=None):
        # ... and the lost transaction stays refused until it is ended.
        with pytest.raises(TransactionError):
            c.globals["x"][4] = 4
        assert c.tlevel == 1
        c.trollback()
        assert c.tlevel == 0
        c.globals["x"][5] = 5  # re-discovered the primary
        assert db.globals["x"].data(2) == 0 and db.globals["x"].data(4) == 0
        assert db.globals["x"][5] == 5
        # In a transaction block the loss surfaces as an error and ends the block.
        with pytest.raises(ConnectionError), c.transaction():
            c.globals["x"][6] = 6
            c._sock.close()
            c.globals["x"][7] = 7
        assert c.tlevel == 0
        c.close()
    with pytest.raises(ClosedError):
        c.ping()
