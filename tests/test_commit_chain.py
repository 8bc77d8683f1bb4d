"""The commit path's group commit (`irisrep.commit.Committer`): every committer of a
group wakes (as a chain), each exactly once its records are durable (and, with a
replicator, acknowledged), and a committer interrupted while it waits (a signal in
the main thread) never leaves the others waiting: not as a link of a chain, not as
the next group's leader.

The journal is a real `Journal` on the simulated disk; its fdatasync is slowed or
held so that committers pile up behind a leader, as under load.
"""

from __future__ import annotations

import threading
import time

import pytest
from interruptkit import Interrupted, all_returned, interrupting_main

from irisrep import simdisk
from irisrep.commit import Committer
from irisrep.journal import Journal, read_stream
from irisrep.journalcodec import SET, Record
from irisrep.simdisk import SimFS

D = "/j"


def rec(t: int, i: int) -> Record:
    return Record(SET, 0, 1, 0, b"t%02d-%05d" % (t, i), b"v%d" % i, b"")


def durable_keys(fs) -> list[bytes]:
    return [r.key for _p, _h, rs in read_stream(fs, D) for r in rs]


class CountingReplicator:
    """Stands for mirror.Replicator: acknowledges every position at once, counting the
    waits (a group's leader waits once for the whole group)."""

    def __init__(self) -> None:
        self.waits: list[int] = []
        self.qos_timeout_ms = 2000

    def wait(self, position: int) -> None:
        self.waits.append(position)


@pytest.fixture
def committer(monkeypatch):
    """(committer, fs, gate): fdatasync waits until `gate` is set (set by default)."""
    gate = threading.Event()
    gate.set()
    orig = simdisk.SimFile.fdatasync

    def held(self):
        if not gate.wait(10):
            raise AssertionError("the test never let the fdatasync finish")
        time.sleep(0.0005)  # a device that takes time: committers pile up
        orig(self)

    monkeypatch.setattr(simdisk.SimFile, "fdatasync", held)
    fs = SimFS(5)
    journal = Journal(fs, D, file_bytes=4 * 1024 * 1024, precreate=False)
    c = Committer(journal)
    yield c, fs, gate
    gate.set()
    journal.close()


@pytest.mark.parametrize("mirrored", [False, True], ids=["alone", "replicator"])
def test_sixteen_committers_each_wake_once_durable(committer, mirrored):
    c, fs, _gate = committer
    rep = CountingReplicator() if mirrored else None
    c.replicator = rep
    T, N = 16, 60
    log_lock = threading.Lock()  # log() runs under the database lock in the engine
    errors: list[BaseException] = []

    def worker(t: int) -> None:
        try:
            for i in range(N):
                with log_lock:
                    ticket = c.log([rec(t, i)])
                c.sync(ticket)
                # Returned: durable, so in the journal for anyone to read back.
                assert c._durable >= ticket
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(T)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert not any(th.is_alive() for th in threads), "a committer was never woken"
    assert not errors, errors
    assert not c._waiters and not c._leading
    keys = durable_keys(fs)
    assert sorted(keys) == sorted(rec(t, i).key for t in range(T) for i in range(N))
    for t in range(T):  # each committer's records in its own order
        mine = [k for k in keys if k.startswith(b"t%02d-" % t)]
        assert mine == sorted(mine)
    if mirrored:
        # Groups: a leader waits for the mirror once for all it covered; the others
        # return on its word (they would call wait() themselves otherwise).
        assert 0 < len(rep.waits) < T * N


@pytest.mark.parametrize("where", ["in-the-group", "next-leader"])
def test_interrupted_committer_never_stalls_the_others(committer, where):
    """The main thread waits behind a leader whose fdatasync is held, and a signal
    interrupts its wait. "in-the-group": its record and those of three others are in
    the held group, the main thread's first (it would be the chain's first link).
    "next-leader": its record came after the leader's write, before the three others'
    (it would be the next group's leader). Once the fdatasync goes on, every other
    committer returns, durable."""
    c, fs, gate = committer
    log_lock = threading.Lock()
    done: list[int] = []
    go = threading.Event()

    def commit(t: int, log_first: bool) -> None:
        with log_lock:
            ticket = c.log([rec(t, 0)])
        if not log_first:
            go.wait(10)
        c.sync(ticket)
        done.append(t)

    in_group = where == "in-the-group"
    mine = None
    if in_group:
        with log_lock:
            mine = c.log([rec(99, 0)])  # the lowest ticket of the group
    others = []
    if in_group:  # logged before the leader's write: the group covers them
        for t in (1, 2, 3):
            others.append(threading.Thread(target=commit, args=(t, False)))
            others[-1].start()
        while c.pending_records < 4:
            time.sleep(0.001)
    gate.clear()
    leader = threading.Thread(target=commit, args=(0, True))
    leader.start()
    deadline = time.monotonic() + 10
    while not c._leading or c.pending_records:  # it leads and has taken everything
        assert time.monotonic() < deadline
        time.sleep(0.001)
    if not in_group:
        with log_lock:
            mine = c.log([rec(99, 0)])  # after the leader's take: the next group's
        for t in (1, 2, 3):
            others.append(threading.Thread(target=commit, args=(t, False)))
            others[-1].start()

    def behind_the_leader() -> None:  # the main thread and three more wait
        deadline = time.monotonic() + 10
        while len(c._waiters) < 4 and time.monotonic() < deadline:
            time.sleep(0.001)

    with interrupting_main(behind_the_leader), pytest.raises(Interrupted):
        go.set()
        c.sync(mine)
    gate.set()
    assert all_returned([leader, *others]), "a committer waits for the one that was interrupted"
    assert sorted(done) == [0, 1, 2, 3]
    # The interrupted commit's record was logged: a group commit wrote it anyway.
    c.sync(mine)
    assert rec(99, 0).key in durable_keys(fs)
