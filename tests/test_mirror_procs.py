"""Mirroring with real processes: the backup is `irisrep serve` in its own process,
killed with SIGKILL, paused with SIGSTOP, stopped and restarted; the primary is
hosted in the test's process (a service embedding its member), so every commit's
return can be timed against the primary's own declarations.

What must hold (DESIGN.md rule 1, section 3): a commit that returned while the
backup was Active is in the backup's durable journal; when the backup dies or stops
acknowledging, the primary pauses at most about one QoS timeout, declares it not
Active (an event with its time) and continues alone; a backup that comes back
catches up from the journal files, becomes Active again, and the members are equal.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
from mirrorkit import (
    dump,
    journal_keys,
    mirror_configs,
    open_copy,
    spawn_member,
    stop_proc,
    wait_for,
)

from irisrep.keycodec import encode_key, encode_name
from irisrep.member import Member

QOS_MS = 500


def _inactive_events(a):
    return [e for e in a.replicator.events if e[1] == "backup-inactive"]


class _Writers:
    """N threads committing ^k(t,i)=i and recording (return time, key) of each."""

    def __init__(self, db, n: int) -> None:
        self.db = db
        self.stop = threading.Event()
        self.done: list[list[tuple[float, tuple]]] = [[] for _ in range(n)]
        self.errors: list[BaseException] = []
        self.threads = [threading.Thread(target=self._run, args=(t,)) for t in range(n)]

    def _run(self, t: int) -> None:
        g = self.db.globals["k"]
        rec = self.done[t]
        i = 0
        try:
            while not self.stop.is_set():
                g[t, i] = i
                rec.append((time.time(), (t, i)))
                i += 1
        except BaseException as e:  # reported by the test
            self.errors.append(e)

    def __enter__(self):
        for th in self.threads:
            th.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for th in self.threads:
            th.join()

    def all(self):
        return [x for rec in self.done for x in rec]


def _wait_active(a, timeout_s=30.0):
    wait_for(lambda: a.replicator.active is not None, timeout_s, "an Active backup")


def _check_equal_after_stop(a, cfg_b, proc):
    """Wait until the backup acknowledged everything, stop it, compare its database."""
    end = a.database.journal.end_position
    wait_for(
        lambda: any(p["member"] == "B" and p["durable"] >= end for p in a.status()["peers"]),
        60,
        "the backup to acknowledge the end",
    )
    stop_proc(proc)
    assert proc.returncode == 0, f"backup exited with {proc.returncode}"
    with open_copy(cfg_b.data_dir) as db:
        assert dump(db) == dump(a.database)


def test_backup_killed_under_load_no_unacknowledged_commit(tmp_path):
    cfgs = mirror_configs(tmp_path, qos_timeout_ms=QOS_MS)
    a = Member(cfgs[0], client_listener=False).start()
    pb = spawn_member(cfgs[1])
    try:
        _wait_active(a)
        with _Writers(a.database, 4) as w:
            time.sleep(0.7)
            os.kill(pb.pid, signal.SIGKILL)
            pb.wait()
            time.sleep(0.7 + QOS_MS / 1000)
        assert not w.errors, w.errors
        events = _inactive_events(a)
        assert events, "the primary never declared the backup not Active"
        declared = events[0][0]
        recs = w.all()
        before = [k for t, k in recs if t < declared]
        after = [k for t, k in recs if t >= declared]
        assert before and after, (len(before), len(after))  # it paused, then went on alone
        on_backup = journal_keys(cfgs[1].data_dir, "k")
        prefix = encode_name("k")
        missing = [k for k in before if encode_key(prefix, k) not in on_backup]
        assert not missing, f"{len(missing)} commits returned before the declaration lack the ack"
        # The backup comes back: it catches up, is Active again, and holds everything.
        pb = spawn_member(cfgs[1])
        _wait_active(a)
        a.database.globals["k"]["end"] = 1
        _check_equal_after_stop(a, cfgs[1], pb)
    finally:
        stop_proc(pb)
        a.close()


def test_backup_paused_past_qos_then_resumed(tmp_path):
    cfgs = mirror_configs(tmp_path, qos_timeout_ms=QOS_MS)
    a = Member(cfgs[0], client_listener=False).start()
    pb = spawn_member(cfgs[1])
    try:
        _wait_active(a)
        g = a.database.globals["p"]
        g[0] = 0
        os.kill(pb.pid, signal.SIGSTOP)
        t0 = time.monotonic()
        g[1] = 1  # waits for the silent backup about one QoS, then goes on alone
        waited = time.monotonic() - t0
        assert waited >= 0.8 * QOS_MS / 1000, waited
        ev = _inactive_events(a)
        assert ev and "QoS" in ev[0][2]
        assert a.replicator.active is None
        t1 = time.monotonic()
        g[2] = 2  # alone now: no second pause
        assert time.monotonic() - t1 < QOS_MS / 1000
        os.kill(pb.pid, signal.SIGCONT)
        _wait_active(a)  # reconnected, caught up, Active again
        g[3] = 3
        _check_equal_after_stop(a, cfgs[1], pb)
    finally:
        if pb.poll() is None:
            os.kill(pb.pid, signal.SIGCONT)
        stop_proc(pb)
        a.close()


def test_backup_stopped_through_100k_commits_then_catches_up(tmp_path):
    cfgs = mirror_configs(tmp_path, asyncs=1, qos_timeout_ms=QOS_MS)
    a = Member(cfgs[0], client_listener=False).start()
    pb = spawn_member(cfgs[1])
    pc = spawn_member(cfgs[2])
    try:
        _wait_active(a)
        stop_proc(pb)
        assert pb.returncode == 0
        wait_for(lambda: a.replicator.active is None, what="the backup gone")
        total, nthreads = 100_000, 8

        def work(t: int) -> None:
            g = a.database.globals["big"]
            for i in range(t, total, nthreads):
                g[i] = i

        ts = [threading.Thread(target=work, args=(t,)) for t in range(nthreads)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        assert a.database.globals["big"].data(()) == 10
        pb = spawn_member(cfgs[1])
        _wait_active(a, 120)
        peers = {p["member"]: p for p in a.status()["peers"]}
        assert peers["B"]["active"] and peers["B"]["kind"] == "failover"
        a.database.globals["big"]["after"] = 1
        end = a.database.journal.end_position
        wait_for(
            lambda: (
                {p["member"]: p for p in a.status()["peers"]}.get("C1", {}).get("durable", 0) >= end
            ),
            60,
            "the async to catch up",
        )
        stop_proc(pc)
        with open_copy(cfgs[2].data_dir) as db:
            assert dump(db) == dump(a.database)
        _check_equal_after_stop(a, cfgs[1], pb)
    finally:
        stop_proc(pb)
        stop_proc(pc)
        a.close()


@pytest.mark.parametrize("sig", [signal.SIGKILL])
def test_async_killed_never_holds_commits_back(tmp_path, sig):
    cfgs = mirror_configs(tmp_path, asyncs=1, qos_timeout_ms=QOS_MS)
    a = Member(cfgs[0], client_listener=False).start()
    pb = spawn_member(cfgs[1])
    pc = spawn_member(cfgs[2])
    try:
        _wait_active(a)
        wait_for(lambda: any(p["member"] == "C1" for p in a.status()["peers"]))
        os.kill(pc.pid, sig)
        pc.wait()
        g = a.database.globals["as"]
        for i in range(100):
            g[i] = i
        assert a.replicator.stats["qos_timeouts"] == 0
        assert a.replicator.active is not None  # the backup stayed Active
    finally:
        stop_proc(pb)
        stop_proc(pc)
        a.close()


def test_primary_dies_after_shipping_before_writing_backup_drops_that_tail(tmp_path):
    """The primary ships a frame, then dies before writing it (crash point): the
    backup holds a frame the primary never had. No agent is configured, so nobody
    takes over; the primary restarts with the shorter journal, and the backup, shown
    to have diverged, undoes and cuts its tail, catches up, and the two are equal."""
    cfgs = mirror_configs(tmp_path, qos_timeout_ms=QOS_MS)
    b = Member(cfgs[1], client_listener=False).start()
    env = dict(os.environ, IRISREP_CRASH_AT="mirror_after_ship_before_write:30")
    pa = spawn_member(cfgs[0], env=env)
    try:
        wait_for(lambda: b.copy.primary == "A", what="B following A")
        import irisrep.client  # noqa: F401 - the member serves clients
        from irisrep.client import connect_member

        conn = connect_member(str(cfgs[0].me.client_address))
        acked = []
        with pytest.raises(OSError):
            for i in range(100):
                conn.globals["d"][i] = i
                acked.append(i)
        conn.close()
        pa.wait(10)
        assert pa.returncode == -signal.SIGKILL
        # B received (and made durable) at least one frame A never wrote.
        wait_for(lambda: b.copy.primary is None, what="B to lose A")
        b_end = b.database.journal.durable_position
        pa = spawn_member(cfgs[0])  # A restarts as primary (its tail was never served)
        wait_for(lambda: b.copy.truncated, what="B to drop its diverged tail")
        cut = b.copy.truncated[0]
        assert cut["to"] == b_end and cut["from"] < b_end and cut["records"] >= 1
        wait_for(lambda: b.copy.primary == "A", what="B following A again")
        conn = connect_member(str(cfgs[0].me.client_address))
        g = conn.globals["d"]
        for i in acked:
            assert g[i] == i  # every acknowledged write survived
        g["after"] = 1
        end = conn.status()["journal_end"]
        conn.close()
        wait_for(lambda: b.database.applied_position >= end, what="B to catch up")
        prim = read_raw_all(cfgs[0].data_dir)
        assert b.database.journal.read_raw(0, end, 1 << 30) == prim[:end]
    finally:
        b.close()
        stop_proc(pa)


def read_raw_all(data_dir):
    from irisrep.fileio import RealFS
    from irisrep.journal import read_raw_stream

    return read_raw_stream(RealFS(), str(data_dir / "journal"), 0, None, 1 << 30)
