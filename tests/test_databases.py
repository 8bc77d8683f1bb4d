"""Several databases in one instance (issue 10, items 1 and 2).

`irisrep.open(path).database("NAME")`: each database its own file and id, sharing
the instance's WIJ, journal, transactions and locks. Shown here: names and the
catalog, bad input changing nothing, transactions across databases (commit,
rollback, crash recovery), the WIJ protecting a cycle that spans databases at every
crash point and under torn and lost writes, the integrity walk over all of them,
and per-database journaling (off: non-transactional writes may be lost by a crash,
transactional ones are not; switched at a clean point and recorded).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import textwrap
import threading

import pytest

import irisrep
from irisrep import crashpoints, integrity, replay
from irisrep.database import Database, database_id
from irisrep.errors import (
    ConfigError,
    DatabaseNotFoundError,
    ProtectError,
    TransactionError,
)
from irisrep.simdisk import SimFS
from irisrep.wij import CYCLE_POINTS

INSTANCE = "/inst"
AFTER_ACTIVE = CYCLE_POINTS.index("wij_after_active_fsync")


def test_names_files_ids_and_the_catalog(tmp_path):
    with irisrep.open(tmp_path) as db:
        assert db.name == "DB" and db.database_names() == ["DB"]
        sales = db.database("sales")
        assert sales.name == "SALES"
        assert db.database("SALES") is sales and db.database("Sales") is sales
        assert db.database("DB") is db and sales.database("db") is db
        assert sales.db_id == database_id("SALES") != db.db_id == database_id("DB")
        report = db.database("REPORT", journaling=False)
        assert db.database_names() == ["DB", "REPORT", "SALES"]
        assert sales.database_names() == ["DB", "REPORT", "SALES"]
        assert (tmp_path / "SALES.dat").is_file() and (tmp_path / "REPORT.dat").is_file()
        assert not report.journaling and sales.journaling
    catalog = json.loads((tmp_path / "databases.json").read_text())
    assert catalog["databases"] == {
        "REPORT": {"journaling": False},
        "SALES": {"journaling": True},
    }
    with irisrep.open(tmp_path) as db:
        assert db.database_names() == ["DB", "REPORT", "SALES"]
        assert not db.database("REPORT", create=False).journaling


@pytest.mark.parametrize("name", ["", "1ABC", "A B", "A/B", "A" * 32, "ÄB", "../x", None, 3, b"DB"])
def test_a_bad_name_is_refused_and_changes_nothing(tmp_path, name):
    with irisrep.open(tmp_path) as db:
        with pytest.raises(ConfigError):
            db.database(name)
        assert db.database_names() == ["DB"]
    assert not (tmp_path / "databases.json").exists()
    assert sorted(p.name for p in tmp_path.glob("*.dat")) == ["DB.dat"]


def test_unknown_database_without_create(tmp_path):
    with irisrep.open(tmp_path) as db:
        with pytest.raises(DatabaseNotFoundError, match="NAMESPACE.*NOPE.*there are: DB"):
            db.database("nope", create=False)
        with pytest.raises(ConfigError):
            db.database("X", journaling="yes")
        db.database("X")
        with pytest.raises(ConfigError, match="set_journaling"):
            db.database("X", journaling=False)
        assert db.database_names() == ["DB", "X"]


def test_globals_live_in_one_database(tmp_path):
    with irisrep.open(tmp_path) as db:
        a = db.database("A")
        db.globals["g"][1] = "in DB"
        a.globals["g"][1] = "in A"
        a.globals["only"]["x"] = 1
        assert db.globals["g"][1] == "in DB" and a.globals["g"][1] == "in A"
        assert db.global_names() == ["g"] and a.global_names() == ["g", "only"]
        assert db.globals["only"].data() == 0
        a.globals["g"].kill()
        assert db.globals["g"][1] == "in DB" and a.globals["g"].data() == 0


def test_a_transaction_spans_databases(tmp_path):
    with irisrep.open(tmp_path) as db:
        a = db.database("A")
        with db.transaction():
            db.globals["t"][1] = "db"
            a.globals["t"][1] = "a"
            assert a.tlevel == db.tlevel == 1
        a.tstart()
        a.globals["t"][2] = "a2"
        db.globals["t"][2] = "db2"
        a.globals["t"][1] = "changed"
        assert db.tlevel == 1
        db.trollback()
        assert a.tlevel == 0
        assert a.globals["t"].get(2) is None and db.globals["t"].get(2) is None
        assert a.globals["t"][1] == "a" and db.globals["t"][1] == "db"
    with irisrep.open(tmp_path) as db:
        a = db.database("A", create=False)
        assert dict(a.globals["t"].items()) == {(1,): "a"}
        assert dict(db.globals["t"].items()) == {(1,): "db"}


def test_locks_are_per_database(tmp_path):
    with irisrep.open(tmp_path) as db:
        a = db.database("A")
        got = []
        with db.globals["L"].lock(1, timeout=5):

            def other():
                # Another owner: the same name in another database is another lock.
                with a.globals["L"].lock(1, timeout=0):
                    got.append("A")

            t = threading.Thread(target=other)
            t.start()
            t.join()
        assert got == ["A"]


CRASH_CHILD = textwrap.dedent(
    """
    import os, sys, irisrep
    db = irisrep.open(sys.argv[1], write_daemon_interval_ms=600000)
    a = db.database("A")
    off = db.database("OFF", journaling=False)
    db.globals["c"]["before"] = 1
    db.flush()
    for i in range(200):
        db.globals["c"][i] = i
        a.globals["c"][i] = -i
        off.globals["plain"][i] = i          # not journaled: may be lost
    with db.transaction():
        a.globals["t"]["x"] = "committed"
        off.globals["t"]["x"] = "committed"  # journaled: inside a transaction
        db.globals["t"]["x"] = "committed"
    db.tstart()
    a.globals["t"]["y"] = "open"
    off.globals["t"]["y"] = "open"
    a.globals["c"][0] = "overwritten in an open transaction"
    db.committer.sync_all(mirror=False)  # the open transaction's records are durable
    print("ready", flush=True)
    sys.stdin.readline()  # killed here
    """
)


def test_recovery_after_a_kill_covers_every_database(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-c", CRASH_CHILD, str(tmp_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline().strip() == "ready"
    finally:
        proc.kill()
        proc.wait()
    with irisrep.open(tmp_path) as db:
        rec = db.journal_recovery
        assert rec.applied > 0 and len(rec.rolled_back) == 1
        a = db.database("A", create=False)
        off = db.database("OFF", create=False)
        assert dict(db.globals["c"].items()) == {("before",): 1, **{(i,): i for i in range(200)}}
        assert dict(a.globals["c"].items()) == {(i,): -i for i in range(200)}
        for g in (db.globals["t"], a.globals["t"], off.globals["t"]):
            assert dict(g.items()) == {("x",): "committed"}
        # Journaling off: the writes outside a transaction never reached a cycle.
        assert off.globals["plain"].data() == 0
    assert all(r.ok for r in integrity.check(tmp_path))


def _write_old(dbs):
    for n, db in enumerate(dbs):
        g = db.globals["w"]
        for i in range(300):
            g[i] = f"old {n} {i}"
        g["long"] = "L" * 20_000


def _write_new(dbs):
    for n, db in enumerate(dbs):
        g = db.globals["w"]
        for i in range(0, 300, 2):
            g[i] = f"new {n} {i}"
        for i in range(300, 500):
            g[i, "child"] = i
        del g["long"]


def _model(n, new):
    m = {(i,): f"old {n} {i}" for i in range(300)}
    m[("long",)] = "L" * 20_000
    if new:
        m.update({(i,): f"new {n} {i}" for i in range(0, 300, 2)})
        m.update({(i, "child"): i for i in range(300, 500)})
        del m[("long",)]
    return m


MODES = [("drop", None), ("subset", None), ("reorder", None), ("torn", 512), ("torn", None)]


@pytest.mark.parametrize("point", CYCLE_POINTS)
@pytest.mark.parametrize("mode, torn", MODES, ids=[f"{m}-{t}" for m, t in MODES])
@pytest.mark.parametrize("journaling", [True, False], ids=["journaled", "not-journaled"])
def test_a_cycle_over_three_databases_survives_a_crash_at_every_point(
    point, mode, torn, journaling
):
    """Power loss mid-cycle (unsynced writes lost, kept in part, reordered, torn):
    every database is sound and either entirely before or entirely after the cycle;
    journaled, always after it (the journal was durable before the cycle began)."""
    seed = hash((point, mode, torn, journaling)) & 0xFFFF
    fs = SimFS(seed)
    db = Database(INSTANCE, fs=fs, write_daemon=False, pool_blocks=4096)
    dbs = [db, db.database("A", journaling=journaling), db.database("B")]
    if not journaling:
        db.set_journaling(False)
    _write_old(dbs)
    db.flush()
    _write_new(dbs)
    survivor = []
    crashpoints.arm(
        point, action=lambda name: survivor.append(fs.crash(mode, random.Random(seed), torn))
    )
    try:
        with pytest.raises(crashpoints.SimulatedCrash):
            db.flush()
    finally:
        crashpoints.disarm()
    fs2 = survivor[0]
    db = Database(INSTANCE, fs=fs2, write_daemon=False, create=False)
    try:
        assert all(r.ok for r in integrity.check(INSTANCE, fs=fs2))
        got = [dict(d.globals["w"].items()) for d in (db, db.database("A"), db.database("B"))]
    finally:
        db.close()
    after = CYCLE_POINTS.index(point) >= AFTER_ACTIVE
    states = {tuple(got[n] == _model(n, True) for n in range(3))}
    for n in range(3):
        assert got[n] in (_model(n, False), _model(n, True)), n
    if after:
        assert states == {(True, True, True)}
    elif not journaling:
        # One cycle: all three before, or all three after (B is journaled, so it is
        # always after; A and DB are not: they follow the cycle, together).
        assert got[0] == _model(0, got[1] == _model(1, True))
        assert got[2] == _model(2, True)
    else:
        assert states == {(True, True, True)}


def test_a_crash_creating_a_database_leaves_none_or_a_whole_one():
    fs = SimFS(3)
    db = Database(INSTANCE, fs=fs, write_daemon=False)
    db.globals["x"][1] = 1
    db.flush()
    survivor = []
    crashpoints.arm("create_before_rename", action=lambda n: survivor.append(fs.crash("drop")))
    with pytest.raises(crashpoints.SimulatedCrash):
        db.database("NEW")
    crashpoints.disarm()
    db = Database(INSTANCE, fs=survivor[0], write_daemon=False, create=False)
    try:
        assert db.database_names() == ["DB"]
        new = db.database("NEW")  # made again from scratch
        new.globals["y"][1] = 2
        assert db.globals["x"][1] == 1
    finally:
        db.close()


def test_a_crash_before_the_catalog_leaves_a_file_that_is_adopted():
    fs = SimFS(4)
    db = Database(INSTANCE, fs=fs, write_daemon=False)
    db.database("A").globals["x"][1] = 1
    db.flush()
    survivor = []
    crashpoints.arm("database_before_catalog", action=lambda n: survivor.append(fs.crash("drop")))
    with pytest.raises(crashpoints.SimulatedCrash):
        db.database("NEW")
    crashpoints.disarm()
    db = Database(INSTANCE, fs=survivor[0], write_daemon=False, create=False)
    try:
        assert db.database_names() == ["A", "DB"][::-1]
        assert survivor[0].exists(INSTANCE + "/NEW.dat")
        new = db.database("NEW")  # the file no catalog named: adopted, empty
        assert new.global_names() == []
        new.globals["y"][1] = 2
        assert db.database_names() == ["DB", "A", "NEW"]
        assert db.database("A").globals["x"][1] == 1
    finally:
        db.close()


def test_a_damaged_catalog_is_refused(tmp_path):
    with irisrep.open(tmp_path) as db:
        db.database("A")
    (tmp_path / "databases.json").write_text('{"databases": [1, 2]}')
    with pytest.raises(ConfigError, match="not a database catalog"):
        irisrep.open(tmp_path)
    (tmp_path / "databases.json").write_text('{"databases": {"A": {"journaling": true}}}')
    (tmp_path / "A.dat").unlink()
    with pytest.raises(DatabaseNotFoundError, match="missing"):
        irisrep.open(tmp_path)


def test_a_record_of_an_unknown_database_stops_recovery(tmp_path):
    """Data the instance cannot place is never dropped silently."""
    with irisrep.open(tmp_path, write_daemon_interval_ms=600000) as db:
        db.database("A").globals["x"][1] = 1
        db.flush()
        db.database("A").globals["x"][2] = 2
        db.committer.sync_all(mirror=False)
        db._failure = RuntimeError("simulated stop: no last cycle")  # leaves the journal
    (tmp_path / "databases.json").unlink()
    (tmp_path / "A.dat").unlink()
    with pytest.raises(DatabaseNotFoundError, match=f"{database_id('A'):08x}"):
        irisrep.open(tmp_path)


def test_set_journaling_waits_for_a_clean_point_and_is_recorded(tmp_path):
    with irisrep.open(tmp_path) as db:
        a = db.database("A")
        db.tstart()
        with pytest.raises(TransactionError, match="still open"):
            a.set_journaling(False, timeout_s=0.05)
        assert a.journaling  # unchanged
        db.tcommit()
        g = a.globals["g"]  # made before the switch: follows it too
        a.set_journaling(False)
        assert not a.journaling
        before = db.journal.end_position
        g[1] = "not journaled"
        db.committer.sync_all(mirror=False)
        recs = [r for _p, _h, rs in db.journal.read(from_position=before) for r in rs]
        assert not [r for r in recs if r[0] in replay.DATA_TYPES]
        with db.transaction():
            g[2] = "journaled"
        with pytest.raises(ConfigError):
            a.set_journaling("off")
    markers = []
    with irisrep.open(tmp_path) as db:
        assert not db.database("A").journaling and db.journaling
        for _p, _h, rs in db.journal.read(from_position=0):
            markers += [r[5] for r in rs if r[0] == replay.MARKER and r[5].startswith(b"jour")]
        db.set_journaling(False)
    assert markers == [b"journaling A off"]
    with irisrep.open(tmp_path) as db:
        assert not db.journaling  # DB's switch is recorded too


def test_a_mirror_copy_instance_protects_every_database(tmp_path):
    with irisrep.open(tmp_path) as db:
        db.database("A")
    with irisrep.open(tmp_path, mirror_copy=True) as db:
        a = db.database("A")
        with pytest.raises(ProtectError):
            a.globals["x"][1] = 1
        with pytest.raises(TransactionError):
            a.become_primary(2)


def test_children_close_with_the_instance(tmp_path):
    db = irisrep.open(tmp_path)
    a = db.database("A")
    g = a.globals["x"]
    g[1] = 1
    a.close()  # closes the instance
    assert db.closed and a.closed
    with pytest.raises(irisrep.ClosedError):
        g[1]
    with pytest.raises(irisrep.ClosedError):
        db.database("B")
    assert os.path.exists(tmp_path / "A.dat")
