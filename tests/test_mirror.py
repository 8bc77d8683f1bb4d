"""Mirroring in one process: members on 127.0.0.1 with real TCP, files and fsyncs.

The primary ships its journal byte for byte; the backup and the asyncs journal,
acknowledge and apply it; mirrored copies are read-only; a member that was away
catches up from the primary's journal files; epochs fence stale streams; acks at
each level hold commits back. Multi-process cases (kill -9, SIGSTOP) are in
tests/test_mirror_procs.py.
"""

from __future__ import annotations

import itertools
import json
import random
import threading

import pytest
from mirrorkit import dump, mirror_configs, wait_applied, wait_for

import irisrep
from irisrep import mirror as mirror_mod
from irisrep.journal import read_stream
from irisrep.member import Member


def _start(cfg):
    return Member(cfg, client_listener=False).start()


@pytest.fixture
def trio(tmp_path):
    """Primary A, backup B (Active), one async C1."""
    cfgs = mirror_configs(tmp_path, asyncs=1)
    ms = [_start(c) for c in cfgs]
    a = ms[0]
    wait_for(lambda: a.replicator.active is not None, what="an Active backup")
    yield ms
    for m in reversed(ms):
        m.close()


def _random_workload(db, rng: random.Random, n: int) -> None:
    names = ["acct", "log", "idx"]
    for _ in range(n):
        g = db.globals[rng.choice(names)]
        op = rng.random()
        subs = (rng.choice("abcdef"), rng.randrange(20))
        if op < 0.55:
            g[subs] = rng.choice([rng.randrange(10**6), "v" * rng.randrange(1, 40), 1.5])
        elif op < 0.65:
            g.kill((subs[0],))
        elif op < 0.72:
            g.zkill(subs)
        elif op < 0.8:
            g.increment(("n",), rng.randrange(1, 5))
        else:
            commit = rng.random() < 0.7
            db.tstart()
            for _ in range(rng.randrange(1, 6)):
                g[(rng.choice("xyz"), rng.randrange(10))] = rng.randrange(100)
                if rng.random() < 0.2:
                    g.kill(("x",))
            if commit:
                db.tcommit()
            else:
                db.trollback()


def _quiesce_and_compare(primary, copies):
    wait_applied(copies, primary.database.journal.end_position)
    want = dump(primary.database)
    assert want, "the workload wrote nothing"
    for m in copies:
        assert dump(m.database) == want, f"{m.name} differs from the primary"


def test_random_workload_every_member_equal(tmp_path):
    cfgs = mirror_configs(tmp_path, asyncs=2)
    ms = [_start(c) for c in cfgs]
    try:
        a = ms[0]
        wait_for(lambda: a.replicator.active is not None, what="an Active backup")
        assert [m.role for m in ms] == ["primary", "backup", "async", "async"]
        # Several threads: transactions and locks belong to the thread.
        threads = [
            threading.Thread(target=_random_workload, args=(a.database, random.Random(s), 300))
            for s in range(3)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        _quiesce_and_compare(a, ms[1:])
        assert a.replicator.stats["acked"] > 0
        assert a.replicator.stats["qos_timeouts"] == 0
        # The copies' journals are the primary's stream, byte for byte.
        end = a.database.journal.end_position
        prim = a.database.journal.read_raw(0, end, 1 << 30)
        for m in ms[1:]:
            assert m.database.journal.read_raw(0, end, 1 << 30) == prim
    finally:
        for m in reversed(ms):
            m.close()
    for c in cfgs:
        reports = irisrep.check_integrity(str(c.data_dir))
        assert all(r.ok for r in reports), (c.member_name, [r.problems for r in reports])


@pytest.mark.parametrize("who", [1, 2])
def test_writes_on_copies_raise_protect_and_change_nothing(trio, who):
    a, m = trio[0], trio[who]
    a.database.globals["x"][1] = "one"
    wait_applied([m], a.database.journal.end_position)
    before = dump(m.database)
    end_before = m.database.journal.end_position
    g = m.database.globals["x"]
    attempts = [
        lambda: g.__setitem__(1, "two"),
        lambda: g.__setitem__(2, "new"),
        lambda: g.kill(()),
        lambda: g.zkill((1,)),
        lambda: g.increment(("n",)),
        lambda: m.database.tstart(),
    ]
    for attempt in attempts:
        with pytest.raises(irisrep.ProtectError, match="PROTECT"):
            attempt()
    # The message names the whole reference, as IRIS does.
    with pytest.raises(irisrep.ProtectError, match=r"<PROTECT> ZKILL \^x\(1\):"):
        g.zkill((1,))
    with pytest.raises(irisrep.ProtectError, match=r'<PROTECT> KILL \^x\(1,"a"\):'):
        g.kill((1, "a"))
    assert m.database.tlevel == 0
    assert dump(m.database) == before
    assert m.database.journal.end_position == end_before
    assert g[1] == "one"  # reads are allowed (possibly behind)


def test_commit_is_on_the_backup_before_it_returns(trio):
    a, b, _c = trio
    g = a.database.globals["k"]
    for i in range(200):
        g[i] = i
        # The backup's journal is durable past this commit when it returns.
        assert b.database.journal.durable_position >= a.database.journal.durable_position
    assert a.replicator.stats["acked"] >= 200


def test_catch_up_from_files_after_backup_was_away(tmp_path, monkeypatch):
    # A tiny ring: everything written while the backup is away must come from files.
    monkeypatch.setattr(mirror_mod, "MIRROR_RING_BYTES_MAX", 4096)
    cfgs = mirror_configs(tmp_path, asyncs=1)
    a = _start(cfgs[0])
    b = _start(cfgs[1])
    c = _start(cfgs[2])
    try:
        wait_for(lambda: a.replicator.active is not None, what="an Active backup")
        b.close()
        wait_for(lambda: a.replicator.active is None, what="the backup declared not Active")
        g = a.database.globals["c"]
        n = 3000

        def writer(t):
            for i in range(t, n, 4):
                g[i] = "x" * 50

        ts = [threading.Thread(target=writer, args=(t,)) for t in range(4)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        assert a.replicator.active is None  # commits went on alone
        assert a.database.journal.end_position > 4 * 4096
        b = _start(cfgs[1])
        wait_for(lambda: a.replicator.active is not None, what="the backup Active again")
        assert a.replicator.active.state.name == "B"
        g["after"] = 1  # acknowledged by the re-activated backup
        _quiesce_and_compare(a, [b, c])
        st = b.status()
        assert st["status"] == "Backup" and st["journal_transfer"] == "Caught up"
    finally:
        for m in (c, b, a):
            m.close()


def test_copy_restart_resumes_without_repeating(trio, tmp_path):
    a, b, c = trio
    g = a.database.globals["r"]
    for i in range(100):
        g[i] = i
    wait_applied([c], a.database.journal.end_position)
    cfg = c.config
    c.close()
    for i in range(100, 200):
        g[i] = i
    c2 = _start(cfg)
    trio[2] = c2
    _quiesce_and_compare(a, [b, c2])
    # The async's journal holds every frame once, at the primary's positions.
    pos = [p for p, _h, _r in read_stream(c2.database.fs, c2.database.journal.dirpath)]
    assert pos == sorted(set(pos))


def test_older_epoch_stream_is_refused(tmp_path):
    cfgs = mirror_configs(tmp_path)
    # B has already seen epoch 5: a primary of epoch 1 is stale for it.
    cfgs[1].data_dir.mkdir(parents=True)
    (cfgs[1].data_dir / "mirror.json").write_text(json.dumps({"epoch": 5, "role": "backup"}))
    a = _start(cfgs[0])
    b = _start(cfgs[1])
    try:
        wait_for(lambda: "older than ours" in b.copy.last_error, what="B to refuse A's epoch")
        assert a.replicator.active is None
        a.database.globals["x"][1] = 1  # the primary continues alone
        assert b.database.journal.end_position == 0
        assert b.epoch == 5
    finally:
        b.close()
        a.close()


@pytest.mark.parametrize("level", ["received", "applied"])
def test_ack_levels(tmp_path, level):
    cfgs = mirror_configs(tmp_path, ack_level=level)
    a, b = _start(cfgs[0]), _start(cfgs[1])
    try:
        wait_for(lambda: a.replicator.active is not None, what="an Active backup")
        g = a.database.globals["lv"]
        for i in range(50):
            g[i] = i
            if level == "applied":
                # Applied before the commit returned: readable on the backup now.
                assert b.database.globals["lv"][i] == i
            else:
                assert b.database.journal.end_position >= a.database.journal.durable_position
        assert a.replicator.stats["acked"] >= 50
        _quiesce_and_compare(a, [b])
    finally:
        b.close()
        a.close()


def test_epoch_is_persisted_by_copies(trio):
    _a, b, c = trio
    for m in (b, c):
        wait_for(lambda m=m: m.epoch == 1, what=f"{m.name} to learn the epoch")
        st = json.loads((m.config.data_dir / "mirror.json").read_text())
        assert st["epoch"] == 1 and m.epoch == 1


def _openssl_certs(d):
    """A CA and one member certificate signed by it (openssl CLI), or skip."""
    import shutil
    import subprocess

    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    d.mkdir()

    def run(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=d)

    run(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=irisrep-test-ca",
    )
    run(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "member.key",
        "-out",
        "member.csr",
        "-subj",
        "/CN=127.0.0.1",
    )
    run(
        "x509",
        "-req",
        "-in",
        "member.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "member.pem",
        "-days",
        "2",
    )
    return d / "member.pem", d / "member.key", d / "ca.pem"


def test_mirror_over_tls(tmp_path):
    from irisrep.config import TLSFiles

    cert, key, ca = _openssl_certs(tmp_path / "tls")
    tls = TLSFiles(cert_file=cert, key_file=key, ca_file=ca)
    cfgs = mirror_configs(tmp_path, tls=tls)
    a, b = _start(cfgs[0]), _start(cfgs[1])
    try:
        wait_for(lambda: a.replicator.active is not None, what="an Active backup over TLS")
        import ssl

        assert isinstance(a.replicator.active.sock, ssl.SSLSocket)
        g = a.database.globals["tls"]
        for i in range(100):
            g[i] = i
        _quiesce_and_compare(a, [b])
        # A member without the certificates cannot connect, and changes nothing.
        from mirrorkit import KEY

        from irisrep import wire

        with pytest.raises((OSError, wire.WireError)):
            wire.connect(
                tuple(cfgs[0].me.mirror_address),
                mirror="MIRROR1",
                member="B",
                key=KEY,
                timeout_ms=2000,
            )
        assert a.replicator.active is not None
    finally:
        b.close()
        a.close()


def test_primary_reports_what_each_copy_has_applied(trio):
    """At ack level `durable` no ack carries the applied position: the primary learns
    it from the copies' heartbeats, and its peer list (status, `irisrep ps`) says so
    instead of "applied 0, N bytes behind"."""
    a = trio[0]
    g = a.database.globals["k"]
    for i in range(50):
        g[i] = i
    end = a.database.journal.end_position
    wait_applied(trio[1:], end)

    def caught_up() -> bool:
        peers = {p["member"]: p for p in a.replicator.peers()}
        return len(peers) == 2 and all(
            p["applied"] >= end and p["dejournaling"] == "Caught up" for p in peers.values()
        )

    wait_for(caught_up, what="every copy reported as having applied the whole journal")


def test_ring_takes_from_any_frame_boundary_as_a_model_says():
    """The ring against a model of the stream: from every boundary still held it
    returns the bytes that follow (whole writes, at least one, at most max_bytes
    beyond the first), None once that boundary dropped out, b"" at the end, across
    many drops of the oldest writes (and the compactions they trigger)."""
    rng = random.Random(5)
    ring = mirror_mod.Ring(1000, bytes_max=300)
    writes: list[tuple[int, bytes]] = []
    pos = 1000
    for i in range(5000):
        data = bytes([i % 251]) * rng.randint(1, 40)
        ring.publish(pos, data)
        writes.append((pos, data))
        pos += len(data)
        assert ring.end == pos and ring.start <= pos - len(data)
        for k in {rng.randrange(len(writes)), len(writes) - 1, max(0, len(writes) - 20)}:
            at = writes[k][0]
            cap = rng.choice([1, 50, 1 << 20])
            got = ring.take(at, cap)
            if at < ring.start:
                assert got is None
                continue
            want = b"".join(d for p, d in writes[k:])
            first = len(writes[k][1])
            assert want.startswith(got) and first <= len(got) <= max(cap, first)
            ends = set(itertools.accumulate(len(d) for _p, d in writes[k:]))
            assert len(got) in ends  # whole writes
        assert ring.take(pos, 10) == b""
    with pytest.raises(AssertionError):
        ring.publish(pos + 1, b"x")  # a gap inside the ring is a bug
