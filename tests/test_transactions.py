"""Transactions, rollback and journal recovery through the Database.

What returned is durable; what did not is present or absent as a whole transaction;
rollback restores before-images ($INCREMENT excepted, as IRIS); recovery run twice
gives the same state; misuse raises TransactionError and changes nothing.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import textwrap
import threading

import pytest

import irisrep
from irisrep import crashpoints, integrity
from irisrep.database import Database
from irisrep.errors import LockTimeoutError, TransactionError
from irisrep.simdisk import SimFS

INSTANCE = "/inst"


def items(db, name="t"):
    return dict(db.globals[name].items())


def test_commit_rollback_nesting(tmp_path):
    with irisrep.open(tmp_path / "x") as db:
        g = db.globals["t"]
        g["keep"] = 1
        with db.transaction():
            g["a"] = 1
            assert db.tlevel == 1
            with db.transaction():
                g["b"] = 2
                assert db.tlevel == 2
            with pytest.raises(RuntimeError), db.transaction():
                g["c"] = 3
                del g["keep"]
                raise RuntimeError("boom")
            assert db.tlevel == 1
            assert g.get("c") is None and g["keep"] == 1  # inner level rolled back
        assert db.tlevel == 0
        assert items(db) == {("a",): 1, ("b",): 2, ("keep",): 1}
        db.tstart()
        g["a"] = "changed"
        g.zkill("b")
        g["new", 1] = "x"
        g.increment("n", 5)
        db.trollback()
        assert items(db) == {("a",): 1, ("b",): 2, ("keep",): 1, ("n",): 5}  # $INCREMENT stays


def test_misuse_raises_and_changes_nothing(tmp_path):
    with irisrep.open(tmp_path / "m") as db:
        with pytest.raises(TransactionError):
            db.tcommit()
        with pytest.raises(TransactionError):
            db.trollback()
        db.tstart()
        with pytest.raises(TransactionError):
            db.trollback(2)
        with pytest.raises(TransactionError):
            db.trollback(0)
        db.trollback()
        for _ in range(255):
            db.tstart()
        with pytest.raises(TransactionError):
            db.tstart()
        assert db.tlevel == 255
        db.trollback()
        assert db.tlevel == 0


def test_tlevel_belongs_to_the_thread(tmp_path):
    with irisrep.open(tmp_path / "th") as db:
        db.tstart()
        seen = []
        t = threading.Thread(target=lambda: seen.append(db.tlevel))
        t.start()
        t.join()
        assert seen == [0] and db.tlevel == 1
        db.tcommit()


def test_locks_conflict_and_are_held_until_the_transaction_ends(tmp_path):
    with irisrep.open(tmp_path / "l") as db:
        g = db.globals["acct"]
        results = []

        def other():
            try:
                with g.lock(("alice", 1), timeout=0.05):
                    results.append("got")
            except LockTimeoutError:
                results.append("timeout")

        db.tstart()
        with g.lock(("alice",), timeout=1):
            pass  # released at block end... but held: a transaction is open
        t = threading.Thread(target=other)
        t.start()
        t.join()
        db.tcommit()
        t = threading.Thread(target=other)
        t.start()
        t.join()
        assert results == ["timeout", "got"]


def crash_fs_at(point, nth, work, mode="drop", seed=1):
    """Run work(db) on a SimFS, power-cut at the nth hit of point; return the survivor."""
    fs = SimFS(seed)
    db = Database(INSTANCE, fs=fs, write_daemon=False)
    survivor = []
    crashpoints.arm(
        point, nth=nth, action=lambda n: survivor.append(fs.crash(mode, random.Random(seed)))
    )
    try:
        with pytest.raises(crashpoints.SimulatedCrash):
            work(db)
    finally:
        crashpoints.disarm()
    return survivor[0]


def reopen(fs):
    assert all(r.ok for r in integrity.check(INSTANCE, fs=fs))
    db = Database(INSTANCE, fs=fs, write_daemon=False, create=False)
    try:
        return items(db), db.journal_recovery
    finally:
        db.close()


COMMIT_POINTS = [
    "commit_before_write",
    "commit_after_write_before_sync",
    "commit_after_sync_before_return",
]


@pytest.mark.parametrize("point", COMMIT_POINTS)
@pytest.mark.parametrize("mode", ["drop", "subset", "torn"])
def test_crash_in_the_commit_path(point, mode):
    acked = {}

    def work(db):
        g = db.globals["t"]
        for i in range(50):
            g[i] = f"v{i}"  # each an autocommit: durable when it returns
            acked[(i,)] = f"v{i}"
        db.flush()  # a checkpoint in the middle: recovery starts after it
        for i in range(50, 100):
            with db.transaction():
                g[i] = f"v{i}"
                g[i, "x"] = "tx"
            acked[(i,)] = f"v{i}"
            acked[(i, "x")] = "tx"

    fs = crash_fs_at(point, 60, work, mode)
    got, rec = reopen(fs)
    for k, v in acked.items():
        assert got.get(k) == v, (k, point)
    # A transaction in flight is present whole or absent whole.
    for i in range(50, 100):
        assert ((i,) in got) == ((i, "x") in got), (i, point)
    got2, _ = reopen(fs)  # recovery again: same state
    assert got2 == got


def test_uncommitted_transaction_rolled_back_by_recovery_twice():
    fs = SimFS(3)
    db = Database(INSTANCE, fs=fs, write_daemon=False)
    g = db.globals["t"]
    g["base"] = "b"
    g["gone"] = "g"
    db.tstart()
    g["base"] = "changed"
    del g["gone"]
    g["added", 1] = "a"
    g.increment("ctr")
    db.flush()  # blocks holding uncommitted changes reach the database (a checkpoint)
    g["more"] = 1  # after the checkpoint, in the journal only
    db.committer.sync_all()
    survivor = fs.crash("drop")  # power loss with the transaction open
    got, rec = reopen(survivor)
    assert got == {("base",): "b", ("gone",): "g", ("ctr",): 1}
    assert len(rec.rolled_back) == 1
    got2, rec2 = reopen(survivor)
    assert got2 == got and rec2.rolled_back == []


def test_relaxed_mode_is_durable_after_flush(tmp_path):
    with irisrep.open(tmp_path / "r", commit_mode="relaxed") as db:
        g = db.globals["t"]
        for i in range(100):
            g[i] = i
        db.flush()
    with irisrep.open(tmp_path / "r") as db:
        assert len(items(db)) == 100
    with pytest.raises(irisrep.ConfigError):
        irisrep.open(tmp_path / "r", commit_mode="sometimes")


KILLER = textwrap.dedent(
    """
    import os, sys, threading
    import irisrep
    path, log = sys.argv[1], sys.argv[2]
    db = irisrep.open(path, write_daemon_interval_ms=20, pool_blocks=128)
    g = db.globals["k"]
    out = open(log, "a", buffering=1)
    def writer(t):
        i = 0
        while True:
            if i % 3 == 0:
                with db.transaction():
                    g[t, i] = "v" * (i % 50)
                    g[t, i, "tx"] = i
            else:
                g[t, i] = "v" * (i % 50)
            out.write(f"{t} {i}\\n")  # acknowledged: it returned
            i += 1
    for t in range(4):
        threading.Thread(target=writer, args=(t,), daemon=True).start()
    print("running", flush=True)
    threading.Event().wait()
    """
)


def kill_loop(tmp_path, cycles):
    import signal
    import time

    path = str(tmp_path / "inst")
    log = str(tmp_path / "acked.log")
    for cycle in range(cycles):
        proc = subprocess.Popen(
            [sys.executable, "-c", KILLER, path, log], stdout=subprocess.PIPE, text=True
        )
        assert proc.stdout.readline().strip() == "running"
        time.sleep(0.2 + 0.1 * (cycle % 3))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        with irisrep.open(path) as db:
            g = db.globals["k"]
            with open(log) as f:
                for line in f:
                    t, i = map(int, line.split())
                    assert g.get((t, i), None) == "v" * (i % 50), (cycle, t, i)
                    if i % 3 == 0:
                        assert g[t, i, "tx"] == i
        assert all(r.ok for r in integrity.check(path))


def test_kill_loop_default(tmp_path):
    kill_loop(tmp_path, 10)


@pytest.mark.soak
def test_kill_loop_soak(tmp_path):
    kill_loop(tmp_path, 100)


@pytest.mark.parametrize("first", ["recovery_after_rollforward", "recovery_before_checkpoint"])
@pytest.mark.parametrize("second", ["recovery_after_rollforward", "recovery_before_checkpoint"])
def test_crash_during_journal_recovery_twice(first, second):
    fs = SimFS(11)
    db = Database(INSTANCE, fs=fs, write_daemon=False)
    g = db.globals["t"]
    for i in range(20):
        g[i] = i
    db.flush()
    for i in range(20, 40):
        g[i] = i  # journal only: roll-forward applies them
    db.tstart()
    g[5] = "uncommitted"
    del g[6]
    db.committer.sync_all()
    disk = fs.crash("drop")
    for point in (first, second):
        disks: list = []
        crashpoints.arm(point, action=lambda n, d=disk, out=disks: out.append(d.crash("drop")))
        try:
            with pytest.raises(crashpoints.SimulatedCrash):
                Database(INSTANCE, fs=disk, write_daemon=False, create=False)
        finally:
            crashpoints.disarm()
        disk = disks[0]
    got, _ = reopen(disk)
    assert got == {(i,): i for i in range(40)}
    assert reopen(disk)[0] == got


def test_journal_cli_dump_and_verify(tmp_path):
    path = tmp_path / "j"
    with irisrep.open(path) as db:
        g = db.globals["t"]
        with db.transaction():
            g[1] = "x"
        del g[1]
    run = [sys.executable, "-m", "irisrep.cli", "journal"]
    v = subprocess.run(run + ["verify", str(path)], capture_output=True, text=True, timeout=60)
    assert v.returncode == 0 and "OK" in v.stdout and "end: zero" in v.stdout, v.stdout + v.stderr
    jfile = sorted((path / "journal").iterdir())[0]
    d = subprocess.run(run + ["dump", str(jfile)], capture_output=True, text=True, timeout=60)
    assert d.returncode == 0 and "TSTART" in d.stdout and "TCOMMIT" in d.stdout
    assert "KILL" in d.stdout
    with open(jfile, "r+b") as f:  # a flipped byte in the first frame, a valid one after it
        f.seek(4096 + 60)
        b = f.read(1)
        f.seek(4096 + 60)
        f.write(bytes([b[0] ^ 1]))
    v = subprocess.run(run + ["verify", str(path)], capture_output=True, text=True, timeout=60)
    assert v.returncode == 1 and "Traceback" not in v.stderr


def test_journaling_off_loses_only_unjournaled_changes_after_a_crash():
    """IRIS per-database journaling off: non-transactional changes are not journaled
    (a crash loses those since the last cycle, the tree stays sound); transactional
    changes are journaled and survive."""
    fs = SimFS(4)
    db = Database(INSTANCE, fs=fs, write_daemon=False, journaling=False)
    g = db.globals["t"]
    g["before"] = 1
    db.flush()
    g["lost"] = 2  # not journaled, not yet in a cycle
    with db.transaction():
        g["tx"] = 3  # journaled: durable at TCOMMIT
    survivor = fs.crash("drop")
    got, _ = reopen(survivor)
    assert got == {("before",): 1, ("tx",): 3}


def test_purge_keeps_what_recovery_needs(tmp_path):
    path = tmp_path / "p"
    with irisrep.open(path, journal_file_bytes=64 * 1024) as db:
        g = db.globals["t"]
        for i in range(3000):
            g[i] = "v" * 40  # ~ 80 bytes of journal each: several 64 KiB files
        files_before = sorted(os.listdir(path / "journal"))
        assert len(files_before) >= 3
        db.tstart()
        g["open"] = 1  # an open transaction: its records must stay
        removed = db.purge_journal(older_than_days=0)
        assert removed and set(removed) < set(files_before)
        db.tcommit()
    with irisrep.open(path) as db:  # recovery reads only what is left
        assert db.globals["t"]["open"] == 1 and db.globals["t"][2999] == "v" * 40
    assert all(r.ok for r in integrity.check(str(path)))


def test_a_kill_larger_than_one_record_is_split_rolled_back_and_recovered():
    """A KILL whose before-image passes JOURNAL_KILL_BEFORE_BYTES_MAX is journaled as
    several KILL records over adjacent sub-ranges; rollback restores every node and
    recovery after a crash replays the committed kill exactly."""
    from irisrep.constants import JOURNAL_KILL_BEFORE_BYTES_MAX

    fs = SimFS(8)
    db = Database(INSTANCE, fs=fs, write_daemon=False, commit_mode="relaxed")
    g = db.globals["t"]
    value = "x" * 1400
    n = JOURNAL_KILL_BEFORE_BYTES_MAX * 5 // 2 // 1420  # ~2.5 records' worth
    with db.transaction():
        for i in range(n):
            g["big", i] = value
        g["other"] = 1
    before = items(db)
    db.tstart()
    ticket0 = db.committer.logged
    del g["big"]
    kills = [r for r in db._txn.records if r[0] == 2]
    assert len(kills) >= 3 and db.committer.logged - ticket0 == len(kills)
    node = irisrep._core.encode_key(g.prefix, ("big",))
    assert kills[0][4] == node and kills[-1][5] == node + b"\xff"  # the whole subtree
    for a, b in zip(kills, kills[1:], strict=False):
        assert a[5] == b[4]  # adjacent sub-ranges: one ends where the next begins
    assert items(db) == {("other",): 1}
    db.trollback()
    assert items(db) == before
    del g["big"]  # now committed (autocommit, relaxed), then a sync and a crash
    db.committer.sync_all()
    survivor = fs.crash("drop")
    got, _ = reopen(survivor)
    assert got == {("other",): 1}
