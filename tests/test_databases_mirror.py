"""Several databases on mirror members (issue 10, items 1 and 2, the mirror side).

Members on 127.0.0.1 with real TCP, files and fsyncs. A mirrored database
(`[[databases]]` on every member) travels in the mirror's journal with DB: the
backup and the async hold it equal to the primary, read-only, and it fails over
with DB. A local database lives in the member's local instance: never in the
mirror's journal, never on another member, writable on a backup or async too (a
report database). Journaling off is refused for a mirrored database.
"""

from __future__ import annotations

import dataclasses
import random

import pytest
from mirrorkit import dump, mirror_configs, wait_applied, wait_for

import irisrep
from irisrep import replay
from irisrep.config import Address, DatabaseSpec, FollowedMirror, parse_config
from irisrep.database import database_id
from irisrep.errors import ConfigError, DatabaseNotFoundError, ProtectError, TransactionError
from irisrep.member import Member

SALES = DatabaseSpec("sales")
REPORT = DatabaseSpec("report", mirrored=False, journaling=False)


def _start(cfg, **kw):
    return Member(cfg, **kw).start()


@pytest.fixture
def trio(tmp_path):
    """Primary A, backup B, async C1; SALES mirrored everywhere, REPORT local on A
    and C1 (journaling off on A)."""
    cfgs = mirror_configs(tmp_path, asyncs=1, qos_timeout_ms=2000)
    cfgs = [
        dataclasses.replace(
            c,
            databases=(SALES, REPORT)
            if c.member_name == "A"
            else (SALES,)
            if c.member_name == "B"
            else (SALES, DatabaseSpec("REPORT", mirrored=False)),
        )
        for c in cfgs
    ]
    ms = [_start(c, client_listener=c.member_name != "B") for c in cfgs]
    wait_for(lambda: ms[0].replicator.active is not None, what="an Active backup")
    yield ms
    for m in reversed(ms):
        m.close()


def _workload(db, sales, rng):
    for i in range(300):
        target = rng.choice([db, sales])
        g = target.globals[rng.choice(["acct", "log"])]
        op = rng.random()
        if op < 0.6:
            g[rng.choice("abc"), i % 17] = rng.randrange(10**6)
        elif op < 0.7:
            g.kill((rng.choice("abc"),))
        else:
            db.tstart()
            db.globals["t"][i] = "db"
            sales.globals["t"][i] = "sales"
            if rng.random() < 0.5:
                db.tcommit()
            else:
                db.trollback()


def test_a_mirrored_database_is_equal_on_every_member(trio):
    a, b, c = trio
    sales = a.database.database("SALES", create=False)
    _workload(a.database, sales, random.Random(10))
    wait_applied([b, c], a.database.journal.end_position)
    for m in (b, c):
        assert m.database.database_names() == ["DB", "SALES"]
        assert dump(m.database) == dump(a.database)
        copy = m.database.database("SALES", create=False)
        assert dump(copy) == dump(sales) and dump(sales)
        with pytest.raises(ProtectError, match="PROTECT"):
            copy.globals["acct"]["x"] = 1
    assert dump(sales) != dump(a.database)  # kept apart


def test_a_local_database_is_never_shipped(trio):
    a, b, c = trio
    report = a.local_instance.database("REPORT", create=False)
    assert not report.journaling
    start = b.database.journal.end_position
    report.globals["r"][1] = "local, not journaled"
    with a.local_instance.transaction():
        report.globals["r"][2] = "local, journaled in the local journal"
    a.database.globals["after"][1] = 1  # something that is shipped, to wait for
    wait_applied([b, c], a.database.journal.end_position)
    ids = {r[2] for _p, _h, rs in b.database.journal.read(from_position=start) for r in rs}
    assert database_id("REPORT") not in ids
    assert [r[2] for r in _data(a.local_instance)] == [database_id("REPORT")]
    with pytest.raises(DatabaseNotFoundError):
        b.database_named("REPORT")
    # C1's own REPORT is its own: writable on an async, and empty of A's writes.
    c_report = c.database_named("report")[1]
    assert c_report.globals["r"].data() == 0
    c_report.globals["r"][1] = "the async's report"
    assert c_report.globals["r"][1] == "the async's report"
    assert report.globals["r"][1] == "local, not journaled"


def _data(db):
    return [
        r
        for _p, _h, rs in db.journal.read(from_position=0)
        for r in rs
        if r[0] in replay.DATA_TYPES
    ]


def test_databases_by_name_over_the_client(trio):
    a, _b, c = trio
    with irisrep.connect(str(a.config.me.client_address)) as conn:
        assert conn.use_database("sales") == "SALES"
        conn.globals["x"][1] = "in sales"
        assert conn.use_database("REPORT") == "REPORT"
        conn.globals["x"][1] = "in report"
        conn.tstart()
        with pytest.raises(TransactionError, match="outside this transaction"):
            conn.globals["x"][2] = "no"
        conn.trollback()
        with pytest.raises(DatabaseNotFoundError, match="NAMESPACE"):
            conn.use_database("nope")
        assert conn.globals["x"][1] == "in report"  # unchanged by the refusal
        conn.use_database(None)
        assert conn.globals["x"].data() == 0
    assert a.database.database("SALES", create=False).globals["x"][1] == "in sales"
    assert a.local_instance.database("REPORT", create=False).globals["x"][1] == "in report"
    wait_applied([c], a.database.journal.end_position)
    with irisrep.connect(str(c.config.me.client_address)) as conn:
        conn.use_database("SALES")
        assert conn.globals["x"][1] == "in sales"
        conn.use_database("REPORT")
        conn.globals["total"][()] = 1  # the async's local report database is writable
    st = a.status()
    assert {d["name"]: (d["mirrored"], d["journaling"]) for d in st["databases"]} == {
        "DB": (True, True),
        "SALES": (True, True),
        "REPORT": (False, False),
    }


def test_a_mirrored_database_fails_over_with_db(trio):
    a, b, c = trio
    sales = a.database.database("SALES", create=False)
    sales.globals["k"][1] = "before"
    wait_applied([b, c], a.database.journal.end_position)
    a.close()
    b.promote(reason="test")
    b_sales = b.database.database("SALES", create=False)
    b_sales.globals["k"][2] = "after"
    b.database.globals["k"][2] = "after in DB"
    assert b_sales.globals["k"][1] == "before"
    wait_for(
        lambda: c.database.database("SALES", create=False).globals["k"].get(2) == "after",
        what="the async to follow the new primary's SALES",
    )


def test_a_backup_without_the_database_never_applies_it_elsewhere(tmp_path):
    """The primary journals SALES; the backup was not told about it: it keeps the
    records durable in its journal but its apply stops (loudly, the link ends with
    DatabaseNotFoundError) rather than put SALES's records anywhere else."""
    cfgs = mirror_configs(tmp_path, qos_timeout_ms=2000)
    a_cfg = dataclasses.replace(cfgs[0], databases=(SALES,))
    a = _start(a_cfg, client_listener=False)
    b = _start(cfgs[1], client_listener=False)
    try:
        wait_for(lambda: a.replicator.active is not None, what="an Active backup")
        a.database.globals["db"][1] = 1
        wait_applied([b], a.database.journal.end_position)
        before = dump(b.database)
        stuck_at = b.database.applied_position
        a.database.database("SALES", create=False).globals["s"][1] = "sales"
        end = a.database.journal.end_position
        wait_for(
            lambda: b.database.journal.durable_position >= end,
            what="the backup to receive SALES's record",
        )
        wait_for(
            lambda: "DatabaseNotFoundError" in (b.config.data_dir / "events.jsonl").read_text(),
            what="the backup to say why it stopped applying",
        )
        assert b.database.applied_position == stuck_at < end
        assert dump(b.database) == before
        assert b.database.database_names() == ["DB"]
    finally:
        b.close()
        a.close()


def test_config_databases(tmp_path):
    base = (tmp_path / "d").resolve()
    text = f"""
mirror_name = "M"
member_name = "A"
data_dir = "{base}"
mirror_key = "{"ab" * 32}"
[[members]]
name = "A"
kind = "failover"
mirror_address = "127.0.0.1:9001"
client_address = "127.0.0.1:9002"
[[members]]
name = "B"
kind = "failover"
mirror_address = "127.0.0.1:9003"
client_address = "127.0.0.1:9004"
"""
    cfg = parse_config(text + '[[databases]]\nname = "sales"\n', base_dir=tmp_path)
    assert cfg.databases == (DatabaseSpec("SALES", True, True),)
    assert parse_config(cfg.to_toml(), base_dir=tmp_path) == cfg
    bad = [
        ('[[databases]]\nname = "DB"\n', "databases[0].name"),
        ('[[databases]]\nname = "1x"\n', "databases[0].name"),
        ('[[databases]]\nname = "S"\njournaling = false\n', "databases[0].journaling"),
        ('[[databases]]\nname = "S"\nmirrored = "no"\n', "databases[0].mirrored"),
        ('[[databases]]\nname = "S"\nsize = 1\n', "databases[0].size"),
        ('[[databases]]\nname = "S"\n[[databases]]\nname = "s"\n', "databases[1].name"),
    ]
    for extra, key in [*bad, ("databases = 3\n", "databases")]:
        doc = extra + text if key == "databases" else text + extra
        with pytest.raises(ConfigError) as e:
            parse_config(doc, base_dir=tmp_path)
        assert e.value.key == key, (extra, e.value)
    ok = parse_config(
        text + '[[databases]]\nname = "R"\nmirrored = false\njournaling = false\n',
        base_dir=tmp_path,
    )
    assert ok.databases[0] == DatabaseSpec("R", False, False)


def test_a_reporting_async_keeps_each_mirrors_databases_apart(tmp_path):
    """Two mirrors, each with DB and SALES; a reporting async follows both and reads
    every copy by name: `SALES` (its own mirror's), `M2` and `M2/SALES`."""
    m1 = mirror_configs(tmp_path / "m1", asyncs=1, qos_timeout_ms=2000, mirror="M1")
    m2 = mirror_configs(tmp_path / "m2", asyncs=1, qos_timeout_ms=2000, mirror="M2")

    def reporting(cfgs):
        return tuple(
            dataclasses.replace(m, kind="async-reporting") if m.name == "C1" else m
            for m in cfgs[0].members
        )

    m1 = [dataclasses.replace(c, members=reporting(m1), databases=(SALES,)) for c in m1]
    m2 = [dataclasses.replace(c, members=reporting(m2), databases=(SALES,)) for c in m2]
    follow = FollowedMirror(
        mirror_name="M2",
        failover_members=tuple((m.name, m.mirror_address) for m in m2[0].members[:2]),
        mirror_key=m2[0].mirror_key,
        databases=("sales",),
    )
    r_cfg = dataclasses.replace(m1[2], follow=(follow,))
    ms = [_start(c, client_listener=False) for c in (*m1[:2], *m2[:2])]
    r = _start(r_cfg, client_listener=False)
    try:
        a1, a2 = ms[0], ms[2]
        for a, tag in ((a1, "m1"), (a2, "m2")):
            wait_for(lambda a=a: a.replicator.active is not None, what="an Active backup")
            a.database.globals["g"][1] = f"{tag} DB"
            a.database.database("SALES", create=False).globals["g"][1] = f"{tag} SALES"
        want = {
            "DB": "m1 DB",
            "SALES": "m1 SALES",
            "M1": "m1 DB",
            "M2": "m2 DB",
            "m2/sales": "m2 SALES",
            "M1/SALES": "m1 SALES",
        }

        def read(name):
            return r.database_named(name)[1].globals["g"].get(1)

        wait_for(
            lambda: all(read(n) == v for n, v in want.items()),
            what="every copy on the reporting async",
        )
        assert r.database_named("m2/sales")[0] == "M2/SALES"
        with pytest.raises(DatabaseNotFoundError):
            r.database_named("M2/NOPE")
        with pytest.raises(ProtectError):
            r.database_named("M2/SALES")[1].globals["g"][2] = "no"
    finally:
        r.close()
        for m in reversed(ms):
            m.close()


def test_follow_databases_config(tmp_path):
    f = FollowedMirror(
        mirror_name="M2",
        failover_members=(
            ("A", Address("127.0.0.1", 9001)),
            ("B", Address("127.0.0.1", 9002)),
        ),
        mirror_key=bytes(32),
        databases=("sales", "Hist"),
    )
    assert f.databases == ("SALES", "HIST")
    for bad in (("DB",), ("S", "s"), ("1x",), "SALES"):
        with pytest.raises(ConfigError, match="follow.databases"):
            dataclasses.replace(f, databases=bad)
