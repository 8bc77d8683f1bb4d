"""Role changes of mirror members in one process: planned switchover, promotion of a
backup whose primary is gone, and the old primary following the new one."""

from __future__ import annotations

import json
import threading

import pytest
from mirrorkit import dump, mirror_configs, wait_applied, wait_for

import irisrep
from irisrep.member import Member


def _start(cfg):
    return Member(cfg, client_listener=False).start()


def _active(a, name=None):
    rep = a.replicator
    return (
        rep is not None
        and rep.active is not None
        and (name is None or rep.active.state.name == name)
    )


def test_switchover_loses_nothing_and_roles_swap(tmp_path):
    cfgs = mirror_configs(tmp_path, asyncs=1)
    a, b, c = (_start(x) for x in cfgs)
    roles = []
    b.on_role(lambda m, old, new: roles.append((m.name, old, new)))
    try:
        wait_for(lambda: _active(a), what="B Active")
        g = a.database.globals["s"]
        for i in range(200):
            g[i] = i
        with a.database.transaction():
            g["t"] = "committed before the switchover"
        assert a.switchover() == "B"
        wait_for(lambda: b.role == "primary", what="B primary")
        assert a.role == "backup" and b.epoch == 2
        wait_for(lambda: roles, what="the role callback")
        assert roles == [("B", "backup", "primary")]
        with pytest.raises(irisrep.ProtectError):
            a.database.globals["s"][0] = "no"
        # B takes writes, A and the async follow it in epoch 2.
        wait_for(lambda: _active(b, "A"), what="A Active behind B")
        gb = b.database.globals["s"]
        for i in range(200, 300):
            gb[i] = i
        wait_applied([a, c], b.database.journal.end_position)
        want = dump(b.database)
        assert dump(a.database) == want and dump(c.database) == want
        assert b.database.globals["s"]["t"] == "committed before the switchover"
        assert a.epoch == 2 and c.epoch == 2
        for m in (a, b):
            st = json.loads((m.config.data_dir / "mirror.json").read_text())
            assert (st["epoch"], st["role"]) == (2, m.role)
        # And back again.
        assert b.switchover() == "A"
        wait_for(lambda: a.role == "primary" and _active(a, "B"), what="A primary again")
        a.database.globals["s"]["back"] = 1
        wait_applied([b, c], a.database.journal.end_position)
        assert dump(b.database) == dump(a.database) == dump(c.database)
        assert a.epoch == 3
    finally:
        for m in (c, b, a):
            m.close()


def test_promoted_backup_rolls_back_what_the_old_primary_left_open(tmp_path):
    cfgs = mirror_configs(tmp_path)
    a, b = _start(cfgs[0]), _start(cfgs[1])
    try:
        wait_for(lambda: _active(a), what="B Active")
        g = a.database.globals["p"]
        g["kept"] = 1
        ready, done = threading.Event(), threading.Event()

        def open_txn():
            a.database.tstart()
            g["uncommitted"] = 2
            g["kept"] = 99
            a.database.committer.sync_all()  # shipped, never committed
            ready.set()
            done.wait()

        t = threading.Thread(target=open_txn)
        t.start()
        ready.wait()
        wait_applied([b], a.database.journal.durable_position)
        assert b.database.globals["p"]["kept"] == 99  # the copy holds the open work
        a.close()  # the primary is gone, its transaction never ended
        done.set()
        t.join()
        epoch = b.promote(reason="test: primary lost")
        assert epoch == 2 and b.role == "primary"
        gb = b.database.globals["p"]
        assert gb["kept"] == 1 and ("uncommitted",) not in gb
        assert b.history[-1]["rolled_back"]
        gb["new"] = 3
    finally:
        b.close()
        a.close()
    # After a restart the promoted member is still primary, in epoch 2, and sound.
    b2 = _start(cfgs[1])
    try:
        # A restarted primary is a new life: its mirror core bumps the epoch.
        assert b2.role == "primary" and b2.epoch == 3
        assert b2.database.globals["p"]["new"] == 3
        assert ("uncommitted",) not in b2.database.globals["p"]
    finally:
        b2.close()
    assert all(r.ok for r in irisrep.check_integrity(str(cfgs[1].data_dir)))


def test_switchover_needs_an_active_backup(tmp_path):
    cfgs = mirror_configs(tmp_path)
    a = _start(cfgs[0])
    try:
        with pytest.raises(irisrep.TransactionError, match="no Active backup"):
            a.switchover()
        a.database.globals["x"][1] = 1  # still writable: nothing changed
        assert a.role == "primary"
    finally:
        a.close()


def test_connect_follows_the_primary_across_a_switchover(tmp_path):
    cfgs = mirror_configs(tmp_path)
    a = Member(cfgs[0]).start()
    b = Member(cfgs[1]).start()
    try:
        wait_for(lambda: _active(a), what="B Active")
        addrs = [str(c.me.client_address) for c in cfgs]
        with irisrep.connect(addrs) as conn:
            g = conn.globals["c"]
            g[1] = "before"
            assert conn.status()["member"] == "A"
            a.switchover()
            wait_for(lambda: b.role == "primary")
            g[2] = "after"  # refused by A (now a backup), sent again to B: no error
            assert conn.status()["member"] == "B"
            assert g[1] == "before" and g[2] == "after"
        wait_applied([a], b.database.journal.end_position)
        assert a.database.globals["c"][2] == "after"
        # A client of the former primary learns where the primary is now.
        from irisrep.client import connect_member

        with connect_member(addrs[0]) as direct:
            with pytest.raises(irisrep.NotPrimaryError) as info:
                direct.globals["c"][3] = "no"
            assert info.value.primary == addrs[1]
            assert isinstance(info.value, irisrep.ProtectError)
    finally:
        b.close()
        a.close()


@pytest.mark.parametrize("how", ["fenced", "planned"])
def test_a_commit_logged_as_primary_never_returns_unacknowledged_after_demotion(tmp_path, how):
    """A commit applied and logged while this member was primary, but made durable
    only after it stopped being primary (the client listener defers commits to its
    syncer threads: `capture_commits`), must not return as committed unless the
    backup acknowledged it: its record is in the tail the new primary never had.
    Fenced: it raises. Planned (the backup acknowledged the whole journal first, as
    a switchover does): a commit the backup did acknowledge returns."""
    import time

    from irisrep.commit import capture_commits
    from irisrep.errors import DurabilityError

    cfgs = mirror_configs(tmp_path)
    ms = [_start(c) for c in cfgs]
    try:
        a = ms[0]
        wait_for(lambda: _active(a, "B"), what="B Active")
        g = a.database.globals["late"]
        g["before"] = 1  # an ordinary commit: acknowledged, returns
        box: list = []
        capture_commits(box)
        try:
            g["deferred"] = 2  # applied and logged; its sync waits in `box`
        finally:
            capture_commits(None)
        [(committer, ticket)] = box
        if how == "fenced":
            a.demote_fenced(epoch=a.epoch + 1)  # A learns of a newer epoch
            with pytest.raises(DurabilityError, match="fenced by epoch"):
                committer.sync_many(ticket, [time.perf_counter()])
        else:
            # Shipped and acknowledged before the demotion, as a switchover makes sure.
            a.database.committer.write_out()
            end = a.database.journal.end_position
            wait_for(lambda: a.replicator.acked_end >= end, what="B to acknowledge it")
            a.demote(reason="test")
            committer.sync_many(ticket, [time.perf_counter()])  # acknowledged: returns
    finally:
        for m in reversed(ms):
            m.close()
