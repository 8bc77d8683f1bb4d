"""The client listener's event loop (server.py): many connections on one thread,
commits whose replies wait for durability without blocking it, connections that
move to a worker while they hold a transaction or locks and come back, BATCH, and
no thread per idle connection."""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time

import pytest

import irisrep
from irisrep.client import connect
from irisrep.clientproto import MessageStream, encode_frame, recv_message, send_message
from irisrep.errors import DurabilityError, LockTimeoutError, TransactionError, UndefinedError
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


def _addr(lis: ClientListener) -> str:
    return f"{lis.address[0]}:{lis.address[1]}"


def _wait(pred, timeout: float = 5.0) -> None:
    end = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < end, "condition not reached in time"
        time.sleep(0.01)


def test_many_concurrent_clients_each_get_their_own_replies(listener, db):
    n_clients, n_ops = 24, 40
    got: dict[int, list] = {}
    errors: list = []

    def client(i: int) -> None:
        try:
            with connect(_addr(listener)) as c:
                g = c.globals["lp"]
                mine = []
                for k in range(n_ops):
                    g[i, k] = f"{i}:{k}"
                    assert g[i, k] == f"{i}:{k}"  # its own write, read back at once
                    mine.append(c.globals["ctr"].increment())
                got[i] = mine
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(n_clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    # Every INCREMENT's reply went to the connection that asked: all distinct, none lost.
    values = sorted(v for vs in got.values() for v in vs)
    assert values == list(range(1, n_clients * n_ops + 1))
    for vs in got.values():
        assert vs == sorted(vs)  # one connection's requests in its own order
    assert db.globals["ctr"][()] == n_clients * n_ops
    assert db.globals["lp"][n_clients - 1, n_ops - 1] == f"{n_clients - 1}:{n_ops - 1}"


def test_pipelined_requests_answered_in_order(listener):
    s = socket.create_connection(listener.address, timeout=5)
    reqs = [("set", "pp", (k,), k * 10) for k in range(20)] + [("get", "pp", (7,), True)]
    s.sendall(b"".join(encode_frame(r) for r in reqs))  # all at once, before any reply
    stream = MessageStream(s, steady_s=5)
    replies = [stream.recv(idle_deadline=time.monotonic() + 5) for _ in reqs]
    assert replies == [("ok", None)] * 20 + [("ok", 70)]
    s.close()


def test_a_long_lock_wait_does_not_stall_other_clients(listener, db):
    a, b, c = (connect(_addr(listener)) for _ in range(3))
    ga, gb = a.globals["lk"], b.globals["lk"]
    held = ga.lock("x", timeout=1)
    held.__enter__()
    waited: list = []
    cm = gb.lock("x", timeout=None)  # waits on a worker for as long as it takes
    t = threading.Thread(target=lambda: waited.append(cm.__enter__()))
    t.start()
    _wait(lambda: db.locks.waiting() == 1)
    for k in range(50):  # served meanwhile by the loop
        c.globals["other"][k] = k
        assert c.globals["other"][k] == k
    c.ping()
    assert not waited
    held.__exit__(None, None, None)
    t.join(5)
    assert waited
    cm.__exit__(None, None, None)
    for conn in (a, b, c):
        conn.close()
    _wait(lambda: listener.connections == 0 and len(db.locks) == 0)


def test_a_connection_comes_back_to_the_loop_after_its_transaction(listener, db):
    with connect(_addr(listener)) as c:
        g = c.globals["tx"]
        for round_ in range(3):
            with c.transaction():
                g[round_] = round_
                assert c.tlevel == 1
            assert c.tlevel == 0
            # Back on the loop: no worker holds it (the loop's table knows it again).
            _wait(lambda: any(s.where == "loop" for s in list(listener._sessions)))
        assert [db.globals["tx"][k] for k in range(3)] == [0, 1, 2]
        with pytest.raises(TransactionError):
            c.tcommit()  # no transaction open: answered, nothing changed
        assert c.tlevel == 0


def test_disconnect_while_a_worker_holds_the_transaction_rolls_back(listener, db):
    c = connect(_addr(listener))
    c.tstart()
    c.globals["gone"][1] = 1
    c._sock.close()
    _wait(lambda: listener.connections == 0)
    assert db.globals["gone"].data(1) == 0 and db._open_txns == {}


def test_batch_in_one_round_trip(listener, db):
    with connect(_addr(listener)) as c:
        out = c.batch(
            [("tstart",)]
            + [("set", "acct", (k,), k) for k in range(10)]
            + [("increment", "acct", ("n",), 5), ("tcommit",)]
        )
        assert out == [1] + [None] * 10 + [5, 0]
        assert db.globals["acct"][9] == 9 and db.globals["acct"]["n"] == 5
        assert c.tlevel == 0
        # The first error ends the batch; what ran before it stays (autocommitted).
        with pytest.raises(UndefinedError) as info:
            c.batch([("set", "b", (1,), 1), ("get", "b", (2,), True), ("set", "b", (3,), 3)])
        assert info.value.results == [None]
        assert db.globals["b"][1] == 1 and db.globals["b"].data(3) == 0
        # Outside a transaction a batch must end what it starts: rolled back, said so.
        with pytest.raises(TransactionError, match="rolled back"):
            c.batch([("tstart",), ("set", "open", (1,), 1)])
        assert db.globals["open"].data(1) == 0 and c.tlevel == 0 and db._open_txns == {}
        # Inside a transaction (the connection on its worker) a batch is part of it.
        c.tstart()
        c.batch([("set", "inner", (1,), 1), ("tstart",)])
        assert c.tlevel == 2
        c.trollback()
        assert db.globals["inner"].data(1) == 0 and c.tlevel == 0


def test_batch_refuses_ops_it_cannot_hold(listener):
    s = socket.create_connection(listener.address, timeout=5)
    send_message(s, ("batch", (("lock", "g", (1,), False, 0),)))
    resp = recv_message(s, idle_deadline=time.monotonic() + 5)
    assert resp[0] == "err" and resp[1] == "ProtocolError" and "cannot be batched" in resp[2]
    s.close()


def test_idle_connections_take_no_thread_each(db):
    with ClientListener(LocalHost(db), users=None, connections_max=300) as lis:
        before = threading.active_count()
        idle = [socket.create_connection(lis.address, timeout=5) for _ in range(150)]
        _wait(lambda: lis.connections == 150)
        assert threading.active_count() - before < 10
        with connect(_addr(lis)) as c:
            c.ping()
        for s in idle:
            s.close()
        _wait(lambda: lis.connections == 0)


def test_lock_timeout_reply_then_the_loop_again(listener, db):
    a, b = connect(_addr(listener)), connect(_addr(listener))
    with a.globals["lk"].lock("y", timeout=1):
        with pytest.raises(LockTimeoutError), b.globals["lk"].lock("y", timeout=0):
            raise AssertionError("the lock was taken while another connection held it")
        b.globals["free"][1] = 1  # b holds nothing: served by the loop again
    a.close()
    b.close()
    _wait(lambda: listener.connections == 0 and len(db.locks) == 0)


def test_several_transactions_open_at_once_each_on_its_worker(db):
    lis = ClientListener(LocalHost(db), users=None)
    conns = [connect(_addr(lis)) for _ in range(6)]
    for i, c in enumerate(conns):  # every one open before any ends
        c.tstart()
        c.globals["many"][i] = i
    for i, c in enumerate(conns[:5]):
        assert c.tlevel == 1
        c.tcommit()
        assert db.globals["many"][i] == i
    # The listener's close ends the last one's transaction: rolled back.
    lis.close()
    assert lis.connections == 0
    assert db.globals["many"].data(5) == 0 and db._open_txns == {}
    for c in conns:
        c.close()


def test_a_failed_commit_is_answered_with_its_error(tmp_path):
    """The syncer's DurabilityError reaches the one request whose commit failed; the
    connection and the listener go on."""
    d = irisrep.open(tmp_path / "db", pool_blocks=256)
    try:
        with ClientListener(LocalHost(d), users=None) as lis, connect(_addr(lis)) as c:
            c.globals["a"][1] = 1
            d.committer._fail(OSError("disk gone"))  # as a failed journal write does
            with pytest.raises(DurabilityError, match="disk gone"):
                c.globals["a"][2] = 2
            c.ping()
    finally:
        with contextlib.suppress(DurabilityError):
            d.close()


def test_a_trickling_frame_is_cut_off_by_the_loop(db, caplog):
    caplog.set_level(logging.WARNING, logger="irisrep.server")
    with ClientListener(LocalHost(db), users=None, frame_timeout_ms=200) as lis:
        s = socket.create_connection(lis.address, timeout=5)
        s.sendall(encode_frame(("ping",))[:3])  # a header begun, never finished
        resp = recv_message(s, idle_deadline=time.monotonic() + 5)
        assert resp[0] == "err" and resp[3][0] == "timeout"
        assert s.recv(1) == b""  # then closed
        s.close()
        assert "malformed frame: client protocol: timeout" in caplog.text
        with connect(_addr(lis)) as c:
            c.ping()


def test_a_client_that_stops_reading_is_closed_after_the_send_timeout(db):
    big = "x" * 1_000_000
    db.globals["big"][1] = big
    with ClientListener(LocalHost(db), users=None, send_timeout_ms=300) as lis:
        s = socket.create_connection(lis.address, timeout=5)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        for _ in range(20):  # replies pile up unread: the loop's write stalls
            s.sendall(encode_frame(("get", "big", (1,), True)))
        _wait(lambda: lis.connections == 0, timeout=10)
        with connect(_addr(lis)) as c:
            assert c.globals["big"][1] == big  # the others are served meanwhile
        s.close()
