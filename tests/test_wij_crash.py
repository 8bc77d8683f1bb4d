"""Crashes at every point of a write image journal cycle, through the whole Database.

In-process on the simulated disk (power loss: unsynced writes dropped, kept in part,
reordered, or the last one torn at 0, 512, 4095 or a random byte), and as real child
processes killed with SIGKILL at the named points. After reopening (which runs WIJ
recovery): the integrity walk passes, and the logical content is exactly the state
before the cycle or exactly the state after it, never a mix; once the cycle's active
flag was durable, always the state after it.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import textwrap

import pytest

from irisrep import crashpoints, integrity
from irisrep.database import Database
from irisrep.simdisk import SimFS
from irisrep.wij import CYCLE_POINTS, RECOVERY_POINTS

INSTANCE = "/inst"
AFTER_ACTIVE = CYCLE_POINTS.index("wij_after_active_fsync")
MODES = [
    ("drop", None),
    ("subset", None),
    ("reorder", None),
    ("torn", 0),
    ("torn", 512),
    ("torn", 4095),
    ("torn", None),
]


def content(db):
    return dict(db.globals["w"].items())


def write_old(g):
    for i in range(400):
        g[i] = f"old {i}"
    g["long"] = "L" * 20_000  # an overflow chain


def write_new(g):
    for i in range(0, 400, 2):
        g[i] = f"new {i}"
    for i in range(400, 700):
        g[i, "child"] = i  # new leaves and splits
    del g["long"]  # frees the overflow chain
    g.kill(())  # ...then a whole-global kill and a rebuild, so blocks are reused
    for i in range(300):
        g[i] = f"rebuilt {i}"


def models():
    """The logical content before and after write_new."""
    old = {(i,): f"old {i}" for i in range(400)}
    old[("long",)] = "L" * 20_000
    new = {(i,): f"rebuilt {i}" for i in range(300)}
    return old, new


def reopen_and_check(fs):
    reports = integrity.check(INSTANCE, fs=fs)
    db = Database(INSTANCE, fs=fs, write_daemon=False, create=False)
    try:
        assert all(r.ok for r in integrity.check(INSTANCE, fs=fs)), reports
        return content(db)
    finally:
        db.close()


@pytest.mark.parametrize("point", CYCLE_POINTS)
@pytest.mark.parametrize("mode, torn", MODES, ids=[f"{m}-{t}" for m, t in MODES])
def test_crash_at_every_cycle_point(point, mode, torn):
    old, new = models()
    seed = hash((point, mode, torn)) & 0xFFFF
    fs = SimFS(seed)
    db = Database(INSTANCE, fs=fs, write_daemon=False, pool_blocks=4096)
    g = db.globals["w"]
    write_old(g)
    db.flush()
    write_new(g)
    survivor = []
    crashpoints.arm(
        point, action=lambda name: survivor.append(fs.crash(mode, random.Random(seed), torn))
    )
    try:
        with pytest.raises(crashpoints.SimulatedCrash):
            db.flush()
    finally:
        crashpoints.disarm()
    got = reopen_and_check(survivor[0])
    if CYCLE_POINTS.index(point) >= AFTER_ACTIVE:
        assert got == new
    else:
        assert got in (old, new)


@pytest.mark.parametrize(
    "first, second", [(a, b) for a in RECOVERY_POINTS for b in RECOVERY_POINTS]
)
def test_crash_during_recovery_twice(first, second):
    old, new = models()
    fs = SimFS(7)
    db = Database(INSTANCE, fs=fs, write_daemon=False, pool_blocks=4096)
    g = db.globals["w"]
    write_old(g)
    db.flush()
    write_new(g)
    disks = []
    crashpoints.arm(
        "wij_after_db_write", action=lambda n: disks.append(fs.crash("subset", random.Random(1)))
    )
    with pytest.raises(crashpoints.SimulatedCrash):
        db.flush()
    crashes = 0
    for point in (first, second):
        disk = disks[-1]
        crashpoints.arm(
            point, action=lambda n, d=disk: disks.append(d.crash("torn", random.Random(2)))
        )
        try:
            Database(INSTANCE, fs=disk, write_daemon=False, create=False).close()
        except crashpoints.SimulatedCrash:
            crashes += 1
        finally:
            crashpoints.disarm()
    # The first recovery always crashes; the second only if the first left work to
    # redo (a crash after the header was cleared, kept whole, leaves none).
    assert crashes >= 1
    assert reopen_and_check(disks[-1]) == new


def test_crash_creating_a_database_leaves_none_or_a_whole_one():
    fs = SimFS(3)
    disks = []
    crashpoints.arm("create_before_rename", action=lambda n: disks.append(fs.crash("drop")))
    with pytest.raises(crashpoints.SimulatedCrash):
        Database(INSTANCE, fs=fs, write_daemon=False)
    disk = disks[0]
    assert not disk.exists(INSTANCE + "/DB.dat")
    with Database(INSTANCE, fs=disk, write_daemon=False) as db:  # creates it again
        db.globals["w"][1] = "x"
    assert reopen_and_check(disk) == {(1,): "x"}


def test_failed_fsync_stops_the_database():
    fs = SimFS(5)
    db = Database(INSTANCE, fs=fs, write_daemon=False)
    g = db.globals["w"]
    g[1] = "a"
    db.flush()
    g[2] = "b"
    fs.fail_next("fdatasync")
    with pytest.raises(Exception) as ei:
        db.flush()
    from irisrep.errors import DurabilityError

    assert isinstance(ei.value, DurabilityError)
    for call in (lambda: g.__setitem__(3, "c"), lambda: g[1], db.flush):
        with pytest.raises(DurabilityError):
            call()
    db.close()  # closes the files, writes nothing more


def test_write_daemon_cycles_in_the_background(tmp_path):
    with Database(
        tmp_path / "d", write_daemon_interval_ms=20, pool_blocks=256, commit_mode="relaxed"
    ) as db:
        g = db.globals["w"]
        for i in range(100_000):  # ~1,300 blocks: writers must wait for cycles
            g[i] = "v" * 80
            assert db._dirty_count() <= db.dirty_hard_limit
        assert db.wij.status().cycle >= 5
        assert len(db.tree.pool) <= 256 + db.dirty_hard_limit
    with Database(tmp_path / "d") as db:
        assert sum(1 for _ in db.globals["w"].items()) == 100_000


CHILD = textwrap.dedent(
    """
    import sys
    from irisrep.database import Database
    db = Database(sys.argv[1], write_daemon=False)
    g = db.globals["w"]
    for i in range(400):
        g[i] = f"old {i}"
    db.flush()
    for i in range(0, 400, 2):
        g[i] = f"new {i}"
    for i in range(400, 3000):
        g[i] = "n" * 40
    db.flush()
    print("survived", flush=True)
    """
)


@pytest.mark.parametrize("point", CYCLE_POINTS)
def test_sigkill_at_cycle_points(tmp_path, point):
    path = str(tmp_path / "inst")
    env = dict(os.environ, IRISREP_CRASH_AT=f"{point}:2")  # the second cycle
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, path], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == -9, proc.stdout + proc.stderr
    old = {(i,): f"old {i}" for i in range(400)}
    new = dict(old)
    new.update({(i,): f"new {i}" for i in range(0, 400, 2)})
    new.update({(i,): "n" * 40 for i in range(400, 3000)})
    reports = integrity.check(path)  # before recovery the WIJ may be active: reported
    with Database(path) as db:
        got = content(db)
        recovery = db.wij_recovery
    assert all(r.ok for r in integrity.check(path))
    if CYCLE_POINTS.index(point) >= AFTER_ACTIVE:
        assert got == new
        assert recovery.restored_blocks > 0 or point == "wij_after_empty_write"
    else:
        assert got in (old, new)
    assert reports  # the walk ran on the unrecovered files without raising
