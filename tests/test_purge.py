"""Journal purge that respects backups and members (issue 8 item 3).

The decision is one pure function (`irisrep.purge.decide_purge`): tested here rule
by rule, with every rule at once, against bad input, and with seeded random cases
checked against the rules themselves (a removed file breaks none; only a prefix goes;
the first kept file is kept for a reason of its own). Then the records it reads
(backups.json, mirror-members.json), the database's purge with a real backup and an
open transaction, and the mirror with real member processes: a lagging async holds
its files (across a restart of the primary), lets them go once caught up, and stops
holding them when disconnected beyond `journal_purge_member_limit_days`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import threading
import time

import pytest
from mirrorkit import cli, mirror_configs, spawn_member, stop_proc, wait_for

import irisrep
from irisrep import purge
from irisrep.backup import create_backup
from irisrep.client import connect_member
from irisrep.constants import (
    BACKUP_RECORDS_MAX,
    BACKUPS_FILE_NAME,
    MIRROR_MEMBERS_FILE_NAME,
)
from irisrep.errors import JournalPurgeError
from irisrep.member import Member
from irisrep.purge import (
    BackupRef,
    JournalFileSpan,
    MemberPosition,
    decide_purge,
)

DAY = purge.DAY_NS
NOW = 1_000 * DAY


def chain(n: int, size: int = 100, created=None) -> list[JournalFileSpan]:
    """n files of `size` positions each, the last one current; created 30 days ago
    unless `created(i)` says otherwise."""
    return [
        JournalFileSpan(
            f"f{i:03d}",
            i * size,
            (i + 1) * size if i < n - 1 else None,
            NOW - 30 * DAY if created is None else created(i),
        )
        for i in range(n)
    ]


def decide(files, **kw):
    kw.setdefault("now_ns", NOW)
    kw.setdefault("older_than_days", 2)
    kw.setdefault("recovery_from", 10**9)
    return decide_purge(files, **kw)


def kept(d) -> dict[str, list[str]]:
    return {k.name: k.reasons for k in d.kept}


# --- the decision, rule by rule -------------------------------------------------------------


def test_nothing_holds_everything_but_the_current_file_goes():
    d = decide(chain(5))
    assert d.remove == ["f000", "f001", "f002", "f003"]
    assert kept(d) == {"f004": ["the current file (being written)"]}
    assert any("no backup recorded" in n for n in d.notes)


def test_age_rule_stays_and_only_a_prefix_goes():
    # f002 is young; f003 is old again (a clock stepped back): kept anyway.
    ages = {0: 30, 1: 30, 2: 1, 3: 30}
    d = decide(chain(5, created=lambda i: NOW - ages.get(i, 0) * DAY))
    assert d.remove == ["f000", "f001"]
    k = kept(d)
    assert "not more than 2 days" in k["f002"][0]
    assert k["f003"] == ["it follows a kept file: only the oldest files of the chain go"]
    assert decide(chain(3), older_than_days=31).remove == []


def test_recovery_needs_from_the_checkpoint_or_floor():
    d = decide(chain(5), recovery_from=200)  # f001 ends at 200: it may go
    assert d.remove == ["f000", "f001"]
    assert "recovery on open reads from 200" in kept(d)["f002"][0]


def test_last_backup_start_holds():
    b = BackupRef("x-full.irbk", 250, NOW)
    d = decide(chain(6), backup=b)
    assert d.remove == ["f000", "f001"]  # f002 holds 200..300, the backup starts at 250
    assert kept(d)["f002"] == ["the last good backup x-full.irbk rolls forward from 250"]
    assert not any("no backup recorded" in n for n in d.notes)
    # ends exactly where the backup starts: not needed by it
    assert decide(chain(6), backup=BackupRef("y", 300, NOW)).remove == ["f000", "f001", "f002"]


def test_backup_being_taken_holds():
    d = decide(chain(6), backup=BackupRef("old", 500, NOW), backup_running_start=120)
    assert d.remove == ["f000"]
    assert kept(d)["f001"] == ["a backup being taken starts at 120"]


def test_open_transaction_holds():
    d = decide(chain(6), oldest_open_txn=399)
    assert d.remove == ["f000", "f001", "f002"]
    assert kept(d)["f003"] == ["a transaction open since position 399"]


def test_members_applied_received_connected_and_limits():
    members = [
        MemberPosition("B", "failover", 480, NOW, connected=True),
        MemberPosition("C1", "async-dr", 150, NOW - 3 * DAY),  # within 14 days
        MemberPosition("C2", "async-reporting", 390, NOW, connected=True),
        MemberPosition("C3", "async-dr", 10, NOW - 15 * DAY),  # beyond the limit
        MemberPosition("C4", "async-dr", None, None),  # never connected
    ]
    d = decide(chain(8), members=members)
    assert d.remove == ["f000"]
    k = kept(d)
    assert k["f001"] == [
        "member C1 (async-dr, disconnected for 3.0 days) has applied only up to 150"
    ]
    assert k["f003"] == [
        "member C1 (async-dr, disconnected for 3.0 days) has applied only up to 150",
        "member C2 (async-reporting, connected) has received only up to 390",
    ]
    assert "member B (failover, connected) has applied only up to 480" in k["f004"]
    notes = "\n".join(d.notes)
    assert "C3 (async-dr) has been disconnected for 15.0 days, longer than" in notes
    assert "C4 (async-dr) has never connected" in notes
    # a tiny limit: C1's three days are too long now
    d = decide(chain(8), members=members, member_limit_days=1)
    assert d.remove == ["f000", "f001", "f002"]
    # a connected member is never past the limit, however long ago it was last saved
    m = [MemberPosition("C1", "async-dr", 150, NOW - 30 * DAY, connected=True)]
    assert decide(chain(8), members=m, member_limit_days=1).remove == ["f000"]


def test_every_reason_of_a_file_is_listed():
    files = chain(4, created=lambda i: NOW)
    d = decide(
        files,
        recovery_from=50,
        backup=BackupRef("b", 60, NOW),
        backup_running_start=70,
        oldest_open_txn=80,
        members=[MemberPosition("C1", "async-dr", 90, NOW, connected=True)],
    )
    assert d.remove == []
    r = kept(d)["f000"]
    assert len(r) == 6 and "recovery" in r[0] and "transaction" in r[1] and "backup b" in r[2]
    assert "being taken" in r[3] and "member C1" in r[4] and "created" in r[5]
    assert [h["position"] for h in d.holds] == [50, 80, 60, 70, 90]
    text = "\n".join(d.lines())
    assert "would remove" not in text and "removed 0 journal file(s)" in text
    d.dry_run = True
    assert d.lines()[0] == "would remove 0 journal file(s)"
    assert purge.PurgeDecision.from_dict(json.loads(json.dumps(d.as_dict()))) == d


@pytest.mark.parametrize("days", [-1, float("nan"), float("inf"), True, "2", None, 10**6])
def test_bad_limits_refused(days):
    with pytest.raises(JournalPurgeError):
        decide(chain(3), older_than_days=days)
    with pytest.raises(JournalPurgeError):
        decide(chain(3), member_limit_days=days)


def test_not_a_chain_refused():
    f = chain(3)
    with pytest.raises(JournalPurgeError, match="not a chain"):
        decide([f[0], f[2]])  # a gap
    with pytest.raises(JournalPurgeError, match="open-ended"):
        decide(f[:2])  # the last one has an end
    with pytest.raises(JournalPurgeError, match="open-ended"):
        decide([dataclasses.replace(f[0], end=None), *f[1:]])
    assert decide([]).remove == []


def test_random_decisions_obey_the_rules():
    rng = random.Random(8)
    for _ in range(2000):
        n = rng.randint(1, 12)
        sizes = [rng.randint(1, 50) for _ in range(n)]
        starts = [sum(sizes[:i]) for i in range(n)]
        files = [
            JournalFileSpan(
                f"f{i}",
                starts[i],
                starts[i + 1] if i < n - 1 else None,
                NOW - rng.choice([0, 1, 3, 30]) * DAY,
            )
            for i in range(n)
        ]
        end = sum(sizes)

        def pos(end=end):
            return rng.randint(0, end)

        members = [
            MemberPosition(
                f"M{j}",
                rng.choice(["failover", "async-dr", "async-reporting"]),
                rng.choice([None, pos()]),
                NOW - rng.choice([0, 1, 20]) * DAY,
                rng.random() < 0.5,
            )
            for j in range(rng.randint(0, 3))
        ]
        kw = dict(
            recovery_from=pos(),
            backup=rng.choice([None, BackupRef("b", pos(), NOW)]),
            backup_running_start=rng.choice([None, pos()]),
            oldest_open_txn=rng.choice([None, pos()]),
            members=members,
            older_than_days=rng.choice([0, 2]),
            member_limit_days=rng.choice([0.5, 14]),
        )
        d = decide(files, **kw)
        names = [f.name for f in files]
        assert names[: len(d.remove)] == d.remove  # a prefix
        assert [k.name for k in d.kept] == names[len(d.remove) :]
        holds = [kw["recovery_from"]]
        holds += [p for p in (kw["backup_running_start"], kw["oldest_open_txn"]) if p is not None]
        if kw["backup"]:
            holds.append(kw["backup"].journal_start)
        for m in members:
            if m.position is not None and (
                m.connected or NOW - m.last_seen_ns <= kw["member_limit_days"] * DAY
            ):
                holds.append(m.position)
        by_name = {f.name: f for f in files}
        for name in d.remove:
            f = by_name[name]
            assert f.end is not None and all(f.end <= h for h in holds)
            assert f.created_ns <= NOW - kw["older_than_days"] * DAY
        if d.kept:
            first = by_name[d.kept[0].name]
            own = (
                first.end is None
                or any(first.end > h for h in holds)
                or first.created_ns > NOW - kw["older_than_days"] * DAY
            )
            assert own and "follows a kept file" not in d.kept[0].reasons[0]


# --- the records ------------------------------------------------------------------------------


@dataclasses.dataclass
class _Info:  # the fields of a BackupInfo that record_backup reads
    name: str
    path: str = "/b/x.irbk"
    kind: str = "full"
    seq: int = 0
    backup_id: int = 1
    chain_id: int = 1
    db_id: int = 7
    checkpoint: int = 0
    journal_start: int = 0
    journal_end: int = 0
    time_start: int = 0
    time_end: int = 0


def test_backup_records(tmp_path):
    assert purge.read_backup_records(tmp_path) == [] and purge.last_backup(tmp_path, 7) is None
    purge.record_backup(tmp_path, _Info("a", journal_start=100, time_end=5))
    purge.record_backup(tmp_path, _Info("b", journal_start=300, time_end=9))
    purge.record_backup(tmp_path, _Info("other-db", db_id=8, journal_start=900, time_end=99))
    assert purge.last_backup(tmp_path, 7) == BackupRef("b", 300, 9)
    assert purge.last_backup(tmp_path, 8).journal_start == 900
    for i in range(BACKUP_RECORDS_MAX + 5):
        purge.record_backup(tmp_path, _Info(f"n{i}", journal_start=i, time_end=100 + i))
    assert len(purge.read_backup_records(tmp_path)) == BACKUP_RECORDS_MAX
    assert not (tmp_path / (BACKUPS_FILE_NAME + ".new")).exists()
    # damaged: the purge refuses (never guesses); the next backup's record replaces it
    (tmp_path / BACKUPS_FILE_NAME).write_text('{"version": 1, "backups": [{"x": 1}]')
    with pytest.raises(JournalPurgeError, match="damaged"):
        purge.last_backup(tmp_path, 7)
    purge.record_backup(tmp_path, _Info("c", journal_start=5, time_end=1))
    assert purge.last_backup(tmp_path, 7).name == "c"


def test_member_records_and_positions(tmp_path):
    assert purge.load_member_records(tmp_path) == {}
    members = [("B", "failover"), ("C1", "async-dr"), ("C2", "async-reporting"), ("C3", "async-dr")]
    peers = [
        {"member": "B", "kind": "failover", "started": True, "received": 0, "durable": 900,
         "applied": 0, "applied_seen": 800, "last_heard_ago_s": 0.5},
        {"member": "C2", "kind": "async-reporting", "started": True, "received": 700,
         "durable": 650, "applied": 0, "applied_seen": 10, "last_heard_ago_s": 0.0},
        # connected, but not yet asked where to start: its saved record counts
        {"member": "C1", "kind": "async-dr", "started": False, "received": 0, "durable": 0,
         "applied": 0, "applied_seen": 0, "last_heard_ago_s": 0.0},
    ]  # fmt: skip
    records = {
        "C1": {"kind": "async-dr", "position": 300, "last_seen_ns": NOW - DAY},
        "gone": {"kind": "async-dr", "position": 1, "last_seen_ns": 0},
    }
    pos, new = purge.member_positions(members, peers, records, NOW)
    by = {p.name: p for p in pos}
    assert by["B"] == MemberPosition("B", "failover", 800, NOW, True)  # applied, not durable
    assert by["C2"].position == 700  # a reporting async: received
    assert by["C1"] == MemberPosition("C1", "async-dr", 300, NOW - DAY, False)
    assert by["C3"] == MemberPosition("C3", "async-dr", None, None, False)
    assert set(new) == {"B", "C1", "C2"}  # "gone" is no longer in the config
    assert new["B"]["last_seen_ns"] == NOW - 500_000_000
    purge.save_member_records(tmp_path, new)
    assert purge.load_member_records(tmp_path) == new
    (tmp_path / MIRROR_MEMBERS_FILE_NAME).write_text("{not json")
    with pytest.raises(JournalPurgeError, match="damaged"):
        purge.load_member_records(tmp_path)


# --- a database: the backup, an open transaction, the files themselves ------------------------


def _fill(g, tag, n, size=600):
    for i in range(n):
        g[tag, i] = os.urandom(size)  # incompressible: ~size bytes of journal each


def test_database_purge_respects_the_last_backup_and_open_transactions(tmp_path):
    path = tmp_path / "db"
    with irisrep.open(path, journal_file_bytes=64 * 1024) as db:
        g = db.globals["p"]
        _fill(g, "a", 400)  # several files
        info = create_backup(db, tmp_path / "bk", checkpoint=True)
        recorded = json.loads((path / BACKUPS_FILE_NAME).read_text())["backups"]
        assert recorded[-1]["journal_start"] == info.journal_start and not db.backups_in_progress
        _fill(g, "b", 400)
        db.tstart()
        g["open"] = 1
        txn_at = db._open_txns[next(iter(db._open_txns))]
        # Another thread writes on (autocommitted, its own frames): more files while
        # the transaction stays open.
        t = threading.Thread(target=_fill, args=(db.globals["q"], "c", 400))
        t.start()
        t.join()
        db.flush()  # (the purge's own checkpoint then writes nothing new)
        files = {f.name: f for f in db.journal.files()}
        d = db.journal_purge(older_than_days=0, dry_run=True)
        assert {f.name for f in db.journal.files()} == set(files) and d.removed == []
        nxt = _file_ends(path)
        for name in d.remove:
            assert nxt[name] <= min(info.journal_start, txn_at)
        k = {x.name: x.reasons for x in d.kept}
        first = d.kept[0]
        assert nxt[first.name] > info.journal_start
        assert any(f"the last good backup {info.name}" in r for r in first.reasons)
        assert any("a transaction open since" in r for n, rs in k.items() for r in rs if n in nxt)
        removed = db.purge_journal(older_than_days=0)
        assert removed == d.remove and len(removed) >= 2
        assert not any((path / "journal" / n).exists() for n in removed)
        assert set(files) - set(removed) == {f.name for f in db.journal.files()}
        db.tcommit()
        # The files after the backup's start are all there: the backup restores to now.
    from irisrep.restore import plan_restore, restore

    restore(plan_restore([info.path], tmp_path / "r", journal_dir=path))
    with irisrep.open(tmp_path / "r") as r, irisrep.open(path) as db:
        assert dict(r.globals["q"].items()) == dict(db.globals["q"].items())
        assert r.globals["p"]["open"] == 1


def test_remove_files_takes_only_the_oldest(tmp_path):
    with irisrep.open(tmp_path / "db", journal_file_bytes=64 * 1024) as db:
        _fill(db.globals["p"], "a", 300)
        names = [f.name for f in db.journal.files()]
        assert len(names) >= 3
        for bad in ([names[1]], [names[0], names[2]], names):
            with pytest.raises(JournalPurgeError, match="not the oldest"):
                db.journal.remove_files(bad)
        assert [f.name for f in db.journal.files()] == names
        assert db.journal.remove_files(names[:1]) == names[:1]
        with pytest.raises(JournalPurgeError):
            db.journal_purge(older_than_days=-1)


# --- a mirror with real member processes -----------------------------------------------------


def _txns(conn, tag, n):
    """n transactions of 40 incompressible values (~25 KiB of journal each)."""
    g = conn.globals["w"]
    for t in range(n):
        conn.tstart()
        for j in range(40):
            g[tag, t, j] = os.urandom(600)
        conn.tcommit()
    return conn.status()["journal_end"]


def _peer(conn, name):
    return next((p for p in conn.status().get("peers", []) if p["member"] == name), None)


def _caught_up(conn, name, end):
    p = _peer(conn, name)
    return p is not None and p["started"] and max(p["applied"], p["applied_seen"]) >= end


def _saved(data_dir, name):
    path = data_dir / MIRROR_MEMBERS_FILE_NAME
    if not path.exists():
        return None
    return json.loads(path.read_text())["members"].get(name, {}).get("position")


def _file_ends(data_dir) -> dict[str, int | None]:
    from irisrep.fileio import RealFS
    from irisrep.journal import list_journal_files

    fs = list_journal_files(RealFS(), str(data_dir / "journal"))
    return {
        a.name: (b.start_position if b else None) for a, b in zip(fs, [*fs[1:], None], strict=True)
    }


def test_purge_holds_files_for_a_lagging_async_and_lets_go(tmp_path):
    cfgs = mirror_configs(tmp_path, asyncs=1, qos_timeout_ms=500, journal_file_bytes=64 * 1024)
    cfg_a, cfg_b, cfg_c = cfgs
    a = Member(cfg_a).start()
    pb, pc = spawn_member(cfg_b), spawn_member(cfg_c)
    addr = str(cfg_a.me.client_address)
    conn = connect_member(addr)
    txn = None
    try:
        wait_for(lambda: conn.status().get("active_backup") == "B", 30, "B Active")
        end = _txns(conn, "one", 6)
        wait_for(lambda: _caught_up(conn, "C1", end) and _caught_up(conn, "B", end), 30, "catch up")
        wait_for(lambda: _saved(cfg_a.data_dir, "C1") == end, 10, "C1's position saved")
        stop_proc(pc)  # C1 lags from here
        lag = end
        two = _txns(conn, "two", 6)
        # (a checkpoint past the lag, so that the backup's start and C1's differ)
        wait_for(lambda: a.database.store.checkpoint >= two, 10, "a checkpoint")
        bk = conn.backup_create(str(tmp_path / "bk"), False)  # an online backup of A
        assert lag < bk["journal_start"]
        _txns(conn, "three", 6)
        txn = connect_member(addr)
        txn.tstart()
        txn.globals["w"]["open"] = 1
        opened = conn.status()["journal_end"]  # at or after the transaction's TSTART
        end = _txns(conn, "four", 6)
        assert opened > bk["journal_start"]
        wait_for(lambda: _caught_up(conn, "B", end), 30, "B to apply")  # B holds nothing
        ends = _file_ends(cfg_a.data_dir)
        assert len(ends) >= 12

        d = conn.journal_purge(dry_run=True, older_than_days=0)
        assert d["dry_run"] and d["removed"] == [] and _file_ends(cfg_a.data_dir) == ends
        assert d["remove"], d
        for name in d["remove"]:
            assert ends[name] <= min(lag, bk["journal_start"], opened)
        reasons = {k["name"]: " | ".join(k["reasons"]) for k in d["kept"]}
        first = d["kept"][0]
        assert ends[first["name"]] > lag
        assert "member C1 (async-dr, disconnected for" in reasons[first["name"]]
        assert f"has applied only up to {lag}" in reasons[first["name"]]
        for name, why in reasons.items():
            e = ends[name]
            if e is None:
                assert why == "the current file (being written)"
                continue
            assert (e > lag) == ("member C1" in why), (name, why)
            assert (e > bk["journal_start"]) == (f"last good backup {bk['name']}" in why)
            assert (e > opened) == ("a transaction open since" in why), (name, why)
            assert "member B" not in why
        d2 = conn.journal_purge(older_than_days=0)
        assert d2["removed"] == d["remove"]
        assert set(_file_ends(cfg_a.data_dir)) == set(ends) - set(d["remove"])
        txn.tcommit()
        txn.close()
        txn = None

        # A restarts (hosted here: no handover): it still knows C1 is behind.
        conn.close()
        a.close()
        a = Member(cfg_a).start()
        conn = connect_member(addr)
        wait_for(lambda: conn.status().get("active_backup") == "B", 30, "B Active again")
        d = conn.journal_purge(dry_run=True, older_than_days=0)
        assert "member C1 (async-dr, disconnected" in " | ".join(d["kept"][0]["reasons"])
        held = d["kept"][0]["name"]

        # C1 comes back and catches up from A's files: they go, up to the new backup.
        pc = spawn_member(cfg_c)
        end = conn.status()["journal_end"]
        wait_for(lambda: _caught_up(conn, "C1", end), 30, "C1 to catch up")
        bk = conn.backup_create(str(tmp_path / "bk"), True)
        d = conn.journal_purge(older_than_days=0)
        assert held in d["removed"]
        assert not any("member C1" in r for k in d["kept"] for r in k["reasons"])
        assert "last good backup" in " | ".join(d["kept"][0]["reasons"])

        # Disconnected longer than journal_purge_member_limit_days: it no longer holds.
        wait_for(lambda: _saved(cfg_a.data_dir, "C1") is not None, 10, "C1 saved")
        stop_proc(pc)
        _txns(conn, "five", 6)
        conn.close()
        a.close()
        tiny = dataclasses.replace(cfg_a, journal_purge_member_limit_days=0.00001)  # 0.86 s
        a = Member(tiny).start()
        conn = connect_member(addr)
        wait_for(lambda: conn.status().get("active_backup") == "B", 30, "B Active again")
        time.sleep(1.0)
        end = conn.status()["journal_end"]
        wait_for(lambda: _caught_up(conn, "B", end), 30, "B to apply")
        bk = conn.backup_create(str(tmp_path / "bk"), True)
        d = conn.journal_purge(older_than_days=0)
        notes = " | ".join(d["notes"])
        assert "member C1 (async-dr) has been disconnected for" in notes
        assert "longer than journal_purge_member_limit_days (1e-05)" in notes
        assert d["removed"] and not any("member C1" in r for k in d["kept"] for r in k["reasons"])
        ends = _file_ends(cfg_a.data_dir)
        assert next(iter(ends)) == d["kept"][0]["name"]
        assert _saved(cfg_a.data_dir, "C1") is not None  # still recorded, just not holding
    finally:
        if txn is not None:
            txn.close()
        conn.close()
        a.close()
        stop_proc(pb)
        if pc.poll() is None:
            stop_proc(pc)

    # A stopped instance's journal, here (the CLI, PATH form): nothing to purge now.
    p = cli("journal", "purge", str(cfg_a.data_dir), "--dry-run", "--days", "0")
    assert p.stdout.startswith("would remove") and "kept " in p.stdout
    assert "the current file" in p.stdout
    p = cli("journal", "purge", str(cfg_a.data_dir), "--member", "A", check=False)
    assert p.returncode == 2  # PATH or --member, not both


def test_a_purged_journal_is_not_a_diverged_one():
    """A purged journal's epoch runs start at its first file: the part before it is
    unknown, not different (else a member's whole journal would be cut)."""
    from irisrep.journal import common_prefix

    full = [(0, 1), (500, 2), (900, 3)]
    assert common_prefix(full, 1000, [(700, 2), (900, 3)], 1200) == 1000
    assert common_prefix([(700, 2), (900, 3)], 1200, full, 1000) == 1000
    assert common_prefix(full, 1000, [(700, 2), (950, 3)], 1200) == 900  # parts at 900
    assert common_prefix(full, 1000, [(700, 4)], 1200) == 700  # another epoch there
    assert common_prefix(full, 1000, [(1100, 3)], 1200) == 1000  # nothing in common
    assert common_prefix(full, 1000, full, 1000) == 1000
    assert common_prefix([(0, 1), (500, 2)], 800, [(0, 1), (400, 2)], 800) == 400


def test_client_ops_validate_their_input(tmp_path):
    """backup_create and journal_purge over the client protocol: bad types and an
    overlong path are malformed requests (the connection closes), a relative path or
    a bad limit a typed error (it goes on), a file system's refusal a BackupError."""
    from irisrep.client import connect
    from irisrep.clientproto import ProtocolError
    from irisrep.errors import BackupError
    from irisrep.server import ClientListener, LocalHost

    with irisrep.open(tmp_path / "db") as db, ClientListener(LocalHost(db), users=None) as lis:
        addr = f"{lis.address[0]}:{lis.address[1]}"
        for req in (
            ("backup_create", 1, False),
            ("backup_create", "/x" * 3000, False),
            ("backup_create", str(tmp_path), "yes"),
            ("backup_create", str(tmp_path)),
            ("journal_purge", "x", 0),
            ("journal_purge", True, True),
            ("journal_purge", True, "2"),
        ):
            with connect(addr) as c, pytest.raises(ProtocolError):
                c._request(req)
        with connect(addr) as c:
            with pytest.raises(BackupError, match="absolute path"):
                c.backup_create("relative/dir")
            with pytest.raises(BackupError, match="absolute path"):
                c.backup_create("/tmp/a\0b")
            (tmp_path / "file").write_text("")
            with pytest.raises(BackupError, match="on the member's host"):
                c.backup_create(str(tmp_path / "file" / "sub"))
            for days in (-1, float("nan"), 10**9):
                with pytest.raises(JournalPurgeError):
                    c.journal_purge(older_than_days=days)
            db.globals["x"][1] = 1
            header = c.backup_create(str(tmp_path / "bk"))
            assert header["kind"] == "full" and os.path.exists(header["path"])
            d = c.journal_purge(dry_run=True, older_than_days=0)
            assert d["dry_run"] and d["kept"][-1]["reasons"] == ["the current file (being written)"]
            assert not any("no backup recorded" in n for n in d["notes"])
            c.ping()
