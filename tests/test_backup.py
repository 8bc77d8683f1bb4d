"""Online backup and restore (issue 8 items 1, 2, 5), with real files.

The main test takes a full backup and two incrementals of a database while four
threads write to it (single SETs, KILLs, ZKILLs, $INCREMENTs and transactions,
some committed, some rolled back, some held open across a backup), against a
per-thread model of the committed state. Twice it pauses the writers and records
the model, the journal position and the time. Then it restores: to the end, to
each pause by time and by position, from different prefixes of the chain, and
compares every restored instance with the model (open transactions rolled back)
and walks its integrity. The other tests show the refusals: a flipped byte names
its block and byte offset, a missing or misordered incremental is named, a bad
target or journal changes nothing; and the CLI commands.
"""

from __future__ import annotations

import json
import os
import random
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from mirrorkit import TxnModel

import irisrep
from irisrep import integrity
from irisrep.backup import (
    BackupReader,
    create_backup,
    list_backups,
    read_header,
    verify_backup,
)
from irisrep.constants import (
    BACKUP_BLOCK_ENTRY_BYTES,
    BACKUP_HEADER_BYTES,
    BLOCK_SIZE,
    JOURNAL_TIME_MARK_MS,
)
from irisrep.errors import BackupChainError, BackupCorruptError, BackupError
from irisrep.fileio import default_fs
from irisrep.journal import Journal, marker_time, read_stream
from irisrep.restore import plan_restore, restore

G = "bk"
PAUSE_S = 3 * JOURNAL_TIME_MARK_MS / 1000  # quiet time on both sides of a pause's time


# --- helpers -----------------------------------------------------------------------------


def read_all(path) -> dict:
    """Every node of ^bk in the instance at `path` (opened, so recovery runs)."""
    with irisrep.open(path, create=False) as db:
        return dict(db.globals[G].items())


def check_integrity(path) -> None:
    reports = integrity.check(str(path))
    assert all(r.ok for r in reports), [r.errors for r in reports]


def restored(tmp_path, name, backups, **kw) -> tuple[dict, dict]:
    plan = plan_restore([b.path for b in backups], tmp_path / name, **kw)
    report = restore(plan)
    check_integrity(tmp_path / name)
    report["plan"] = plan.lines()
    return read_all(tmp_path / name), report


def block_entries(path) -> list[tuple[int, int, int]]:
    """(block_no, byte offset of its entry, stored length) of every block entry."""
    info = read_header(path)
    out = []
    off = BACKUP_HEADER_BYTES
    with open(path, "rb") as f:
        for _ in range(info.blocks_stored):
            f.seek(off)
            block_no, stored, _ck = struct.unpack("<IIQ", f.read(BACKUP_BLOCK_ENTRY_BYTES))
            out.append((block_no, off, stored))
            off += BACKUP_BLOCK_ENTRY_BYTES + stored
    return out


def flip(path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0x5A]))


# --- four writers and their model ----------------------------------------------------------


class Writer(TxnModel, threading.Thread):
    """One client: its own subtree ^bk(tid, ...), a model of what it committed.

    One operation per step, so a transaction spans several steps and the main thread
    can pause the writers (or back up) with transactions open. `hold` asks it to open
    a transaction, write, say so (`held`) and wait for `release` with the outcome."""

    def __init__(self, db, tid: int, seed: int, ctl) -> None:
        super().__init__(name=f"writer-{tid}", daemon=True)
        self.db = db
        self.g = db.globals[G]
        self.tid = tid
        self.rng = random.Random(seed)
        self.ctl = ctl
        self.committed: dict = {}  # what every returned commit left
        self.txn = self.db  # brackets the transactions (TxnModel)
        self.work: dict | None = None  # the open transaction's view, or None
        self.txn_steps = 0
        self.hold = threading.Event()
        self.held = threading.Event()
        self.release = threading.Event()
        self.outcome = "commit"
        self.leave_open = False  # at stop: end with a transaction open (never committed)
        self.error: BaseException | None = None
        self.ops = 0

    def run(self) -> None:
        try:
            while not self.ctl.stop.is_set():
                if self.ctl.pause.is_set():
                    self.ctl.barrier.wait()  # paused: the main thread records the model
                    self.ctl.barrier.wait()  # resumed
                    continue
                if self.hold.is_set():
                    self.hold.clear()
                    self.held_transaction()
                    continue
                self.step()
            if self.leave_open:
                if self.work is None:
                    self.begin()
                self.set((self.tid, "open-at-end"), "never committed")
                return
            if self.work is not None:
                self.end(self.rng.random() < 0.7)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            self.error = exc
            self.ctl.stop.set()
            self.ctl.barrier.abort()

    # one operation on the database and the model, in the same step
    def set(self, subs, value) -> None:
        self.g[subs] = value
        self.view()[subs] = value

    def kill(self, subs) -> None:
        del self.g[subs]
        v = self.view()
        for k in [k for k in v if k[: len(subs)] == subs]:
            del v[k]

    def zkill(self, subs) -> None:
        self.g.zkill(subs)
        self.view().pop(subs, None)

    def step(self) -> None:
        r = self.rng
        self.ops += 1
        k = r.randrange(40)
        if self.work is None and r.random() < 0.08:
            self.begin()
            self.txn_steps = r.randint(2, 12)
            return
        x = r.random()
        if x < 0.45:
            self.set((self.tid, k), f"v{self.ops}-{r.randbytes(r.randint(0, 40)).hex()}")
        elif x < 0.70:
            self.set((self.tid, k, r.randrange(8)), self.ops)
        elif x < 0.82:
            self.kill((self.tid, k))
        elif x < 0.90:
            self.zkill((self.tid, k))
        elif self.work is None:
            n = self.g.increment((self.tid, "n"), 1)  # never inside a transaction
            self.committed[(self.tid, "n")] = n
        if self.work is not None:
            self.txn_steps -= 1
            if self.txn_steps <= 0:
                self.end(r.random() < 0.7)  # some rolled back
            else:
                time.sleep(0.001)  # an open transaction lasts a while

    def held_transaction(self) -> None:
        if self.work is None:
            self.begin()
        for j in range(5):
            self.set((self.tid, "held", j), f"held by {self.tid}")
        self.kill((self.tid, 3))
        self.held.set()
        self.release.wait()
        self.release.clear()
        self.held.clear()
        self.end(self.outcome == "commit")


class Control:
    def __init__(self, n: int) -> None:
        self.stop = threading.Event()
        self.pause = threading.Event()
        self.barrier = threading.Barrier(n + 1)


def model_of(writers) -> dict:
    out: dict = {}
    for w in writers:
        out.update(w.committed)
    return out


def test_backups_under_load_restore_exactly(tmp_path):
    src = tmp_path / "src"
    out = tmp_path / "backups"
    db = irisrep.open(src, write_daemon_interval_ms=20)
    ctl = Control(4)
    writers = [Writer(db, t, 1000 + t, ctl) for t in range(4)]
    for w in writers:
        w.start()

    def run_for(seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            assert not ctl.stop.is_set(), [w.error for w in writers]
            time.sleep(0.01)

    def pause() -> dict:
        """Stop every writer between two operations (some inside a transaction) and
        record the committed model, the journal position and a time between quiet
        spells (so no frame is built near it)."""
        ctl.pause.set()
        ctl.barrier.wait()
        ctl.pause.clear()
        try:
            position = db.journal.end_position  # every committed record lies before it
            time.sleep(PAUSE_S)
            at = time.time_ns()
            time.sleep(PAUSE_S)
            open_now = [w.tid for w in writers if w.work is not None]
            return {"position": position, "time": at, "model": model_of(writers), "open": open_now}
        finally:
            ctl.barrier.wait()

    def backup_with_open_transaction(w: Writer, outcome: str, incremental: bool):
        """Back up while writer `w` holds a transaction open (it then commits or rolls
        back): the image holds its uncommitted changes."""
        w.outcome = outcome
        w.hold.set()
        assert w.held.wait(10), w.error
        info = create_backup(db, out, incremental=incremental)
        w.release.set()
        return info

    run_for(0.3)
    full = backup_with_open_transaction(writers[0], "commit", incremental=False)
    run_for(0.3)
    p1 = pause()
    run_for(0.3)
    inc1 = backup_with_open_transaction(writers[1], "rollback", incremental=True)
    run_for(0.3)
    inc2 = backup_with_open_transaction(writers[2], "commit", incremental=True)
    run_for(0.3)
    p2 = pause()
    run_for(0.3)
    writers[3].leave_open = True  # its transaction is open when the database closes
    ctl.stop.set()
    for w in writers:
        w.join(30)
        assert w.error is None, w.error
    final = model_of(writers)
    db.close()

    # The chain: one full backup, two incrementals storing only what changed.
    assert [b.seq for b in (full, inc1, inc2)] == [0, 1, 2]
    assert full.blocks_stored == full.block_count
    assert inc1.parent_id == full.backup_id and inc2.parent_id == inc1.backup_id
    assert inc2.blocks_stored <= inc2.block_count
    for b in (full, inc1, inc2):
        assert verify_backup(b.path)["ok"]
        assert b.checkpoint <= b.open_position <= b.journal_end
    # The backup-start marker is in the journal, inside each backup's window.
    markers = [
        (pos, r[5])
        for pos, _h, rs in read_stream(default_fs(), str(src / "journal"))
        for r in rs
        if r[0] == 8 and r[5].startswith(b"backup-start")
    ]
    assert [m[1].split()[1] for m in markers] == [
        f"id={b.backup_id:016x}".encode() for b in (full, inc1, inc2)
    ]
    assert all(
        pos < b.open_position for (pos, _), b in zip(markers, (full, inc1, inc2), strict=True)
    )
    assert p1["position"] < inc1.checkpoint and p2["position"] > inc2.checkpoint
    assert final and p1["model"] != final and p2["model"] != p1["model"]

    # To the end: exactly the committed state (writer 3's open transaction rolled back).
    got, report = restored(tmp_path, "r-end", [full, inc1, inc2])
    assert got == final
    assert report["rolled_back"] >= 1
    assert (3, "open-at-end") not in got
    # Only the full backup, to the first pause by time.
    got, rep = restored(tmp_path, "r-t1", [full], until_time=p1["time"])
    assert got == p1["model"], (rep["plan"], p1["position"])
    # The whole chain, to the second pause by position.
    got, rep = restored(tmp_path, "r-p2", [full, inc1, inc2], until_position=p2["position"])
    assert got == p2["model"], rep["plan"]
    # Full + first incremental, to the second pause by time (the journal directory
    # carries it past the incremental's own frames).
    got, rep = restored(tmp_path, "r-t2", [full, inc1], until_time=p2["time"])
    assert got == p2["model"], (rep["plan"], p2["position"])
    # Full alone, to the first pause by position, and to the end.
    got, rep = restored(tmp_path, "r-p1", [full], until_position=p1["position"])
    assert got == p1["model"], rep["plan"]
    got, _ = restored(tmp_path, "r-end-full", [full])
    assert got == final

    # A restored instance is an ordinary one: it opens, writes and backs up again.
    with irisrep.open(tmp_path / "r-end") as rdb:
        rdb.globals[G]["after", "restore"] = 1
        again = create_backup(rdb, tmp_path / "again")
    assert verify_backup(again.path)["ok"]

    # A time before the incremental's image needs an earlier chain: refused.
    with pytest.raises(BackupError, match="before .* image"):
        plan_restore([full.path, inc1.path, inc2.path], tmp_path / "x", until_time=p1["time"])
    with pytest.raises(BackupError, match="before .* image"):
        plan_restore([full.path, inc1.path], tmp_path / "x", until_position=p1["position"])
    assert not (tmp_path / "x").exists()


# --- the window, the marks, incrementals ------------------------------------------------


def test_backup_window_holds_cycles_not_writes(tmp_path):
    db = irisrep.open(tmp_path / "db", write_daemon_interval_ms=5)
    try:
        g = db.globals[G]
        for i in range(500):
            g[i] = "x" * 50
        db.flush()
        with db.backup_window(marker="test") as point:
            before = (tmp_path / "db" / "DB.dat").read_bytes()
            t0 = time.monotonic()
            for i in range(500, 1500):
                g[i] = "y" * 50  # commits go on: journaled, nodes dirty in the pool
            assert time.monotonic() - t0 < 10
            time.sleep(0.05)  # ten daemon intervals: no cycle may run
            assert (tmp_path / "db" / "DB.dat").read_bytes() == before
            assert db.store.checkpoint == point.checkpoint
            assert point.marker and point.position >= point.checkpoint
            with pytest.raises(BackupError, match="another backup"):
                with db.backup_window():
                    pass
        db.flush()  # the window closed: the held-back blocks go out
        assert db.store.checkpoint > point.checkpoint
        assert g[1499] == "y" * 50
    finally:
        db.close()


def test_journal_time_marks():
    """A frame starts with a time mark when JOURNAL_TIME_MARK_MS has passed since the
    last; the others were built less than that after it."""
    import tempfile

    from irisrep.journalcodec import SET, Record

    now = [10**18]
    with tempfile.TemporaryDirectory() as d:
        j = Journal(default_fs(), d, clock=lambda: now[0])
        j.time_mark_ns = 10_000_000
        rec = Record(SET, 0, 1, 0, b"k\x00", b"v", b"")
        for dt in (0, 3_000_000, 4_000_000, 5_000_000, 20_000_000):
            now[0] += dt
            j.commit([rec])
        frames = [[marker_time(r) for r in rs] for _p, _h, rs in j.read()]
        j.close()
    base = 10**18
    assert frames == [
        [base, None],
        [None],
        [None],
        [base + 12_000_000, None],
        [base + 32_000_000, None],
    ]


def test_incremental_stores_only_changed_blocks(tmp_path):
    out = tmp_path / "out"
    with irisrep.open(tmp_path / "db") as db:
        g = db.globals[G]
        with db.transaction():
            for i in range(20000):
                g[i] = f"value {i}" * 3
        full = create_backup(db, out, checkpoint=True)
        g[5] = "changed"
        inc = create_backup(db, out, incremental=True, checkpoint=True)
        inc0 = create_backup(db, out, incremental=True, checkpoint=True)
    assert full.block_count > 50
    # One leaf, the header, maybe a parent: a handful of blocks, not the database.
    assert 1 <= inc.blocks_stored <= 5, inc.blocks_stored
    assert inc0.blocks_stored <= 2  # the header at most (nothing else changed)
    assert inc0.parent_id == inc.backup_id and inc0.seq == 2
    stored = [b for b, _img in BackupReader(inc.path).blocks()]
    assert 0 in stored or inc.checkpoint == full.checkpoint


def test_incremental_needs_a_full_backup(tmp_path):
    with irisrep.open(tmp_path / "db") as db:
        with pytest.raises(BackupError, match="take a full backup first"):
            create_backup(db, tmp_path / "out", incremental=True)
    assert not list((tmp_path / "out").iterdir())


# --- refusals ------------------------------------------------------------------------------


@pytest.fixture
def chain(tmp_path):
    """A database with three backups: full, incr001, incr002."""
    out = tmp_path / "out"
    with irisrep.open(tmp_path / "db") as db:
        g = db.globals[G]
        with db.transaction():
            for i in range(3000):
                g[i] = f"{i}" * 20
        full = create_backup(db, out)
        with db.transaction():
            for i in range(0, 3000, 7):
                g[i] = "second"
        inc1 = create_backup(db, out, incremental=True)
        with db.transaction():
            for i in range(0, 3000, 11):
                del g[i]
        inc2 = create_backup(db, out, incremental=True)
        g["last"] = 1
    return full, inc1, inc2


def test_corrupt_block_refused_with_block_and_offset(tmp_path, chain):
    full, _inc1, _inc2 = chain
    entries = block_entries(full.path)
    block_no, offset, stored = entries[len(entries) // 2]
    flip(full.path, offset + BACKUP_BLOCK_ENTRY_BYTES + stored // 2)  # inside its bytes
    with pytest.raises(BackupCorruptError) as err:
        verify_backup(full.path)
    assert err.value.block == block_no and err.value.offset == offset
    assert f"block {block_no}" in str(err.value) and f"byte offset {offset}" in str(err.value)
    # The restore refuses it too, and leaves nothing behind.
    with pytest.raises(BackupCorruptError, match=f"block {block_no}"):
        restore(plan_restore([full.path], tmp_path / "r"))
    assert not (tmp_path / "r").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".r")]
    # The CLI says the same, with exit status 1; a dry run of the restore too (it
    # verifies the chain before it says what would be applied).
    proc = irisrep_cli("backup", "verify", full.path)
    assert proc.returncode == 1
    assert f"block {block_no}" in proc.stderr and f"byte offset {offset}" in proc.stderr
    proc = irisrep_cli("restore", full.path, "--target", tmp_path / "r", "--dry-run")
    assert proc.returncode == 1 and "dry run" not in proc.stdout, proc.stdout
    assert f"block {block_no}" in proc.stderr and f"byte offset {offset}" in proc.stderr
    assert not (tmp_path / "r").exists()


def test_corrupt_header_and_truncation_refused(tmp_path, chain):
    full, inc1, _ = chain
    flip(full.path, 100)
    with pytest.raises(BackupCorruptError, match="header checksum") as err:
        verify_backup(full.path)
    assert err.value.offset == BACKUP_HEADER_BYTES - 8
    size = os.path.getsize(inc1.path)
    with open(inc1.path, "r+b") as f:
        f.truncate(size - 3)
    with pytest.raises(BackupCorruptError, match="truncated"):
        verify_backup(inc1.path)


def test_corrupt_journal_chunk_refused(tmp_path, chain):
    full, inc1, inc2 = chain
    flip(full.path, full.journal_offset + 30)
    with pytest.raises(BackupCorruptError, match="journal chunk 0") as err:
        verify_backup(full.path)
    assert err.value.offset == full.journal_offset
    assert err.value.expected and err.value.found and err.value.found in str(err.value)
    # The restore needs only the last backup's journal, but a dry run of the chain
    # reads every file and refuses it, naming the file.
    proc = irisrep_cli(
        "restore", full.path, inc1.path, inc2.path, "--target", tmp_path / "r", "--dry-run"
    )
    assert proc.returncode == 1 and full.name in proc.stderr and "journal chunk 0" in proc.stderr


def test_missing_or_misordered_incremental_refused_by_name(tmp_path, chain):
    full, inc1, inc2 = chain
    with pytest.raises(BackupChainError) as err:
        plan_restore([full.path, inc2.path], tmp_path / "r")
    assert err.value.missing == inc1.name and inc1.name in str(err.value)
    with pytest.raises(BackupChainError, match="out of order"):
        plan_restore([full.path, inc2.path, inc1.path], tmp_path / "r")
    with pytest.raises(BackupChainError, match="starts with the chain's full backup"):
        plan_restore([inc1.path, inc2.path], tmp_path / "r")
    with pytest.raises(BackupChainError, match="once"):
        plan_restore([full.path, inc1.path, inc1.path], tmp_path / "r")
    assert not (tmp_path / "r").exists()
    proc = irisrep_cli("restore", full.path, inc2.path, "--target", str(tmp_path / "r"))
    assert proc.returncode == 1 and inc1.name in proc.stderr
    assert not (tmp_path / "r").exists()


def test_bad_target_and_foreign_journal_change_nothing(tmp_path, chain):
    full, inc1, inc2 = chain
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep").write_text("mine")
    with pytest.raises(BackupError, match="not an empty directory"):
        plan_restore([full.path], busy)
    assert [p.name for p in busy.iterdir()] == ["keep"]
    with irisrep.open(tmp_path / "other") as other, other.transaction():
        for i in range(50):
            other.globals["o"][i] = i
    with pytest.raises(BackupError, match="does not continue"):
        plan_restore(
            [full.path, inc1.path, inc2.path], tmp_path / "r", journal_dir=tmp_path / "other"
        )
    with pytest.raises(BackupError, match="not a frame boundary"):
        plan_restore([full.path], tmp_path / "r", until_position=inc2.journal_end + 1)
    assert not (tmp_path / "r").exists()


def test_restore_with_the_backups_own_journal_only(tmp_path, chain):
    """With no journal after it, a backup restores to its own end (IRIS's journal step
    still runs: it rolls back what was open there)."""
    full, inc1, inc2 = chain
    os.rename(tmp_path / "db", tmp_path / "gone")  # the source is not here any more
    plan = plan_restore([full.path, inc1.path, inc2.path], tmp_path / "r")
    assert plan.end == inc2.journal_end and "only the backup's own frames" in plan.journal_note
    restore(plan)
    check_integrity(tmp_path / "r")
    got = read_all(tmp_path / "r")
    assert ("last",) not in got and len(got) == 3000 - len(range(0, 3000, 11))


# --- the CLI -------------------------------------------------------------------------------


def irisrep_cli(*args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "irisrep", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def test_cli_backup_list_verify_restore(tmp_path):
    src, out = tmp_path / "db", tmp_path / "out"
    with irisrep.open(src) as db, db.transaction():
        for i in range(2000):
            db.globals[G][i] = i
    p = irisrep_cli("backup", "create", src, "--out", out, "--json")
    assert p.returncode == 0, p.stderr
    full = json.loads(p.stdout)
    assert full["kind"] == "full" and full["blocks_stored"] == full["block_count"]
    with irisrep.open(src) as db:
        db.globals[G]["more"] = 1
    p = irisrep_cli("backup", "create", src, "--out", out, "--incremental")
    assert p.returncode == 0 and "incremental backup 1" in p.stdout, p.stderr
    p = irisrep_cli("backup", "list", out, "--json")
    listed = json.loads(p.stdout)["backups"]
    assert [b["seq"] for b in listed] == [0, 1]
    files = [str(out / b["name"]) for b in listed]
    p = irisrep_cli("backup", "list", out)
    assert p.returncode == 0 and listed[1]["name"][:20] in p.stdout
    p = irisrep_cli("backup", "verify", files[1])
    assert p.returncode == 0 and "OK" in p.stdout, p.stderr
    p = irisrep_cli("restore", *files, "--target", tmp_path / "r", "--dry-run")
    assert p.returncode == 0 and "dry run" in p.stdout and "frames" in p.stdout, p.stderr
    assert "verified: 2 backup files" in p.stdout
    p = irisrep_cli("restore", *files, "--target", tmp_path / "r", "--dry-run", "--json")
    assert [v["ok"] for v in json.loads(p.stdout)["verified"]] == [True, True]
    assert not (tmp_path / "r").exists()
    p = irisrep_cli("restore", *files, "--target", tmp_path / "r")
    assert p.returncode == 0 and "integrity ok" in p.stdout, p.stderr
    assert read_all(tmp_path / "r")[("more",)] == 1
    p = irisrep_cli("restore", *files, "--target", tmp_path / "r2", "--until", "yesterday")
    assert p.returncode == 1 and "not a time" in p.stderr
    p = irisrep_cli("restore", files[0], "--target", tmp_path / "r2", "--until", str(time.time()))
    assert p.returncode == 0, p.stderr
    assert read_all(tmp_path / "r2")[("more",)] == 1
    # An instance left open by a process (the WIJ says running) is not opened twice.
    db = irisrep.open(src)
    try:
        p = irisrep_cli("backup", "create", src, "--out", out)
        assert p.returncode == 1 and "open in a process" in p.stderr
    finally:
        db.close()


def test_cli_backup_of_a_stopped_member(tmp_path):
    """--member M backs up a deployment member's data_dir (as a mirror copy: nothing
    journaled there); a running member would be refused."""
    data = tmp_path / "dep" / "B" / "data"
    with irisrep.open(data) as db, db.transaction():
        for i in range(300):
            db.globals[G][i] = i
    (tmp_path / "dep" / "deploy.json").write_text(
        json.dumps({"mirror": "M", "members": [{"name": "B", "data_dir": str(data)}]})
    )
    p = irisrep_cli(
        "backup",
        "create",
        "--member",
        "B",
        "--dir",
        tmp_path / "dep",
        "--out",
        tmp_path / "o",
        "--json",
    )
    assert p.returncode == 0, p.stderr
    info = json.loads(p.stdout)
    assert info["flags"] & 1 and not info["flags"] & 2  # a mirror copy: no marker
    p = irisrep_cli(
        "backup", "create", "--member", "Z", "--dir", tmp_path / "dep", "--out", tmp_path / "o"
    )
    assert p.returncode == 1 and "no member 'Z'" in p.stderr
    restore(plan_restore([info["path"]], tmp_path / "r"))
    assert len(read_all(tmp_path / "r")) == 300


def test_list_shows_incomplete_backups(tmp_path, chain):
    full, inc1, inc2 = chain
    out = Path(full.path).parent
    (out / "x-full.irbk.part").write_bytes(b"partial")
    good, other = list_backups(out)
    assert [b.seq for b in good] == [0, 1, 2]
    assert other[0]["name"] == "x-full.irbk.part" and "incomplete" in other[0]["problem"]
    assert read_header(inc2.path).parent_name == inc1.name
    assert BLOCK_SIZE * inc2.block_count >= BLOCK_SIZE


def test_progress_bars_on_a_terminal_only(tmp_path, chain, monkeypatch):
    """backup create, backup verify, restore and its dry run (verifying the chain)
    draw a rich progress bar on stderr when it is a terminal, and print nothing there
    otherwise."""
    import io

    from click.testing import CliRunner
    from rich.console import Console

    from irisrep import cli

    full, inc1, inc2 = chain
    runner = CliRunner()
    quiet = runner.invoke(cli.main, ["backup", "verify", full.path])
    assert quiet.exit_code == 0 and "OK" in quiet.output and "━" not in quiet.output
    for label, args in (
        ("verify", ["backup", "verify", full.path]),
        ("backup", ["backup", "create", str(tmp_path / "db"), "--out", str(tmp_path / "out")]),
        ("restore", ["restore", full.path, inc1.path, inc2.path, "--target", str(tmp_path / "r")]),
        ("verify", ["restore", full.path, inc1.path, "--target", str(tmp_path / "d"), "--dry-run"]),
    ):
        screen = io.StringIO()
        monkeypatch.setattr(cli, "err_console", Console(file=screen, force_terminal=True))
        result = runner.invoke(cli.main, args)
        assert result.exit_code == 0, result.output
        drawn = screen.getvalue()
        assert label in drawn and "━" in drawn, (args, drawn[:300])


def test_failed_backup_leaves_nothing_and_releases_the_window(tmp_path, monkeypatch):
    """A backup that fails midway (here: the journal cannot be read) removes its
    `.part` file and closes the window: cycles run again, the database goes on."""
    from irisrep import backup as backup_mod

    def broken(*_a, **_k):
        raise BackupError("the journal went away")

    with irisrep.open(tmp_path / "db") as db:
        db.globals[G][1] = 1
        monkeypatch.setattr(backup_mod, "_copy_journal", broken)
        with pytest.raises(BackupError, match="went away"):
            create_backup(db, tmp_path / "out")
        assert list((tmp_path / "out").iterdir()) == []
        before = db.store.checkpoint
        db.globals[G][2] = 2
        db.flush()  # would wait forever if the window were still open
        assert db.store.checkpoint > before
        monkeypatch.undo()
        assert verify_backup(create_backup(db, tmp_path / "out").path)["ok"]
