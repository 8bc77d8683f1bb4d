"""Backup and restore of an instance with several databases (docs/backup.md).

The instance has DB, SALES and REPORT (journaling off). Four threads write into DB
and SALES, some transactions spanning both, while a full backup and an incremental
are taken (one file each, every database in it, all at one checkpoint); a database
created between them is in the incremental as a full copy. Restores to the end and
to a journal position in the middle are compared with the per-database model (a
transaction open there, across both databases, rolled back in both) and walked for
integrity. Then the refusals (a corrupt section names its database, block and
offset), and a backup written by the version 1 writer (DB alone), kept as a fixture
in tests/testdata/backup-v1, which still restores.
"""

from __future__ import annotations

import json
import random
import shutil
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
from irisrep.backup import BackupReader, create_backup, list_backups, read_header, verify_backup
from irisrep.constants import BACKUP_BLOCK_ENTRY_BYTES, BACKUP_SECTION_BYTES
from irisrep.errors import BackupCorruptError
from irisrep.restore import plan_restore, restore

G = "bk"
WRITTEN = ("DB", "SALES")  # the databases the writer threads write
FIXTURE_V1 = Path(__file__).parent / "testdata" / "backup-v1"


def read_instance(path) -> dict:
    """{database name: {subs: value}} of ^bk in every database of the instance."""
    with irisrep.open(path, create=False) as db:
        return {n: dict(db.database(n).globals[G].items()) for n in db.database_names()}


def check_integrity(path) -> None:
    reports = integrity.check(str(path))
    assert all(r.ok for r in reports), [r.errors for r in reports]
    with irisrep.open(path, create=False) as db:
        assert len(reports) == len(db.database_names())  # every database was walked


def restored(tmp_path, name, backups, **kw) -> tuple[dict, dict]:
    plan = plan_restore([b.path for b in backups], tmp_path / name, **kw)
    report = restore(plan)
    check_integrity(tmp_path / name)
    report["plan"] = plan.lines()
    return read_instance(tmp_path / name), report


def flip(path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0x5A]))


class Writer(TxnModel, threading.Thread):
    """One client writing ^bk(tid, ...) in DB and SALES; its model is keyed by
    (database, subs). A transaction may write both databases (the instance's
    transaction covers them)."""

    def __init__(self, root, tid: int, seed: int, ctl) -> None:
        super().__init__(name=f"writer-{tid}", daemon=True)
        self.root = root
        self.globals = {n: root.database(n).globals[G] for n in WRITTEN}
        self.tid = tid
        self.rng = random.Random(seed)
        self.ctl = ctl
        self.committed: dict = {}
        self.txn = self.root  # brackets the transactions (TxnModel)
        self.work: dict | None = None
        self.txn_steps = 0
        self.error: BaseException | None = None
        self.ops = 0

    def run(self) -> None:
        try:
            while not self.ctl.stop.is_set():
                if self.ctl.pause.is_set():
                    self.ctl.barrier.wait()
                    self.ctl.barrier.wait()
                    continue
                self.step()
            if self.work is not None:
                self.end(self.rng.random() < 0.7)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            self.error = exc
            self.ctl.stop.set()
            self.ctl.barrier.abort()

    def set(self, name, subs, value) -> None:
        self.globals[name][subs] = value
        self.view()[name, subs] = value

    def kill(self, name, subs) -> None:
        del self.globals[name][subs]
        v = self.view()
        for k in [k for k in v if k[0] == name and k[1][: len(subs)] == subs]:
            del v[k]

    def step(self) -> None:
        r = self.rng
        self.ops += 1
        name = r.choice(WRITTEN)
        k = r.randrange(30)
        if self.work is None and r.random() < 0.1:
            self.begin()
            self.txn_steps = r.randint(2, 10)
            return
        x = r.random()
        if x < 0.5:
            self.set(name, (self.tid, k), f"v{self.ops}-{r.randbytes(r.randint(0, 30)).hex()}")
        elif x < 0.75:
            self.set(name, (self.tid, k, r.randrange(6)), self.ops)
        elif x < 0.9:
            self.kill(name, (self.tid, k))
        elif self.work is None:
            n = self.globals[name].increment((self.tid, "n"), 1)
            self.committed[name, (self.tid, "n")] = n
        if self.work is not None:
            self.txn_steps -= 1
            if self.txn_steps <= 0:
                self.end(r.random() < 0.7)
            else:
                time.sleep(0.001)


class Control:
    def __init__(self, n: int) -> None:
        self.stop = threading.Event()
        self.pause = threading.Event()
        self.barrier = threading.Barrier(n + 1)


def split(model: dict, extra: dict) -> dict:
    """The model as read_instance shows it: per database."""
    out: dict = {n: {} for n in (*WRITTEN, *extra)}
    for (name, subs), v in model.items():
        out.setdefault(name, {})[subs] = v
    for n, d in extra.items():
        out[n].update(d)
    return out


def test_every_database_backed_up_and_restored_exactly(tmp_path):
    src, out = tmp_path / "src", tmp_path / "backups"
    root = irisrep.open(src, write_daemon_interval_ms=20)
    sales = root.database("SALES")
    report = root.database("REPORT", journaling=False)
    # REPORT is not journaled: what a backup holds of it is what a cycle wrote.
    for i in range(200):
        report.globals[G][i] = f"report {i}"
    root.flush()
    other: dict = {"REPORT": {(i,): f"report {i}" for i in range(200)}}
    ctl = Control(4)
    writers = [Writer(root, t, 500 + t, ctl) for t in range(4)]
    for w in writers:
        w.start()

    def run_for(seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            assert not ctl.stop.is_set(), [w.error for w in writers]
            time.sleep(0.01)

    def model() -> dict:
        out: dict = {}
        for w in writers:
            out.update(w.committed)
        return out

    run_for(0.3)
    full = create_backup(root, out)
    run_for(0.2)
    # A database created between the full backup and the incremental.
    new = root.database("NEWDB")
    new.globals[G]["born"] = "after the full backup"
    other["NEWDB"] = {("born",): "after the full backup"}
    run_for(0.2)
    # The middle: writers paused, the main thread opens a transaction across DB and
    # SALES that is in the journal before `middle` and commits only later.
    ctl.pause.set()
    ctl.barrier.wait()
    ctl.pause.clear()
    try:
        root.tstart()
        root.globals[G]["main"] = "committed after the middle"
        sales.globals[G]["main"] = "committed after the middle"
        middle = root.committer.write_out()
        at_middle = split(model(), {n: dict(d) for n, d in other.items()})
    finally:
        ctl.barrier.wait()
    run_for(0.2)
    inc = create_backup(root, out, incremental=True)
    root.tcommit()
    for n in WRITTEN:
        other.setdefault(n, {})[("main",)] = "committed after the middle"
    run_for(0.3)
    ctl.stop.set()
    for w in writers:
        w.join(30)
        assert w.error is None, w.error
    final = split(model(), other)
    root.close()

    # One file per backup, every database in it; the incremental holds NEWDB whole.
    assert full.database_names == ["DB", "REPORT", "SALES"]
    assert inc.database_names == ["DB", "NEWDB", "REPORT", "SALES"]
    assert inc.parent_id == full.backup_id and inc.seq == 1
    assert all(s.full for s in full.sections)
    by_name = {s.name: s for s in inc.sections}
    assert by_name["NEWDB"].full and not by_name["SALES"].full
    assert by_name["NEWDB"].blocks_stored == by_name["NEWDB"].block_count
    assert not by_name["REPORT"].journaling and by_name["SALES"].journaling
    for b in (full, inc):
        v = verify_backup(b.path)
        assert v["ok"] and [d["name"] for d in v["databases"]] == b.database_names
    # The journal the images need is in each backup once: one run of chunks.
    assert len(list(list_backups(out)[0])) == 2
    assert inc.checkpoint <= inc.journal_end and inc.journal_start <= middle <= inc.journal_end

    # To the end: exactly the committed state of every database.
    got, rep = restored(tmp_path, "r-end", [full, inc])
    assert got == final, rep["plan"]
    assert rep["databases"] == ["DB", "NEWDB", "REPORT", "SALES"]
    assert rep["skipped_records"] == 0
    with irisrep.open(tmp_path / "r-end", create=False) as r:
        assert not r.database("REPORT").journaling and r.database("SALES").journaling
    # To the middle (from the full backup and the journal after it): the model there,
    # the main thread's transaction open there rolled back in DB and in SALES.
    got, rep = restored(tmp_path, "r-mid", [full], until_position=middle)
    assert rep["rolled_back"] >= 1
    assert got == at_middle, rep["plan"]
    assert ("main",) not in got["DB"] and ("main",) not in got["SALES"]
    # The full backup alone, to the end: NEWDB comes from the journal (created empty
    # as the source's catalog names it), REPORT from the full image.
    got, rep = restored(tmp_path, "r-full-end", [full])
    assert got == final, rep["plan"]
    assert any("NEWDB" in line and "created empty" in line for line in rep["plan"])


@pytest.fixture
def two_backups(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    with irisrep.open(src) as root:
        sales = root.database("SALES")
        with root.transaction():
            for i in range(1500):
                root.globals[G][i] = f"db {i}" * 5
                sales.globals[G][i] = f"sales {i}" * 5
        full = create_backup(root, out, checkpoint=True)
        with root.transaction():
            for i in range(0, 1500, 5):
                sales.globals[G][i] = "changed"
        inc = create_backup(root, out, incremental=True, checkpoint=True)
    return full, inc


def test_corrupt_section_refused_naming_database_block_and_offset(tmp_path, two_backups):
    full, inc = two_backups
    sec = full.section(read_header(full.path).sections[1].db_id)
    assert sec.name == "SALES"
    # A block entry in the middle of SALES's.
    off = sec.blocks_offset
    with open(full.path, "rb") as f:
        for _ in range(sec.blocks_stored // 2):
            f.seek(off)
            _b, stored, _ck = struct.unpack("<IIQ", f.read(BACKUP_BLOCK_ENTRY_BYTES))
            off += BACKUP_BLOCK_ENTRY_BYTES + stored
        f.seek(off)
        block_no, stored, _ck = struct.unpack("<IIQ", f.read(BACKUP_BLOCK_ENTRY_BYTES))
    flip(full.path, off + BACKUP_BLOCK_ENTRY_BYTES + stored // 2)
    with pytest.raises(BackupCorruptError) as err:
        verify_backup(full.path)
    assert err.value.block == block_no and err.value.offset == off
    assert f"database SALES block {block_no}" in str(err.value)
    assert f"byte offset {off}" in str(err.value)
    with pytest.raises(BackupCorruptError, match=f"SALES block {block_no}"):
        restore(plan_restore([full.path, inc.path], tmp_path / "r"))
    assert not (tmp_path / "r").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".r")]
    # The section table is checksummed as a whole.
    flip(inc.path, inc.sections_offset + BACKUP_SECTION_BYTES + 40)
    with pytest.raises(BackupCorruptError, match="section table") as err:
        read_header(inc.path)
    assert err.value.offset == inc.sections_offset
    # `backup list` shows it as unreadable, the other one as a backup.
    good, bad = list_backups(Path(full.path).parent)
    assert [b["name"] for b in bad] == [inc.name] and [b.name for b in good] == [full.name]


def test_incremental_per_database(tmp_path, two_backups):
    full, inc = two_backups
    fdb, fsales = full.sections[0], full.sections[1]
    idb, isales = inc.sections[0], inc.sections[1]
    assert (fdb.name, fsales.name) == ("DB", "SALES")
    assert isales.blocks_stored > 0 and isales.blocks_stored < fsales.block_count
    assert idb.blocks_stored <= 2  # DB did not change (its header at most)
    stored = [b for b, _img in BackupReader(inc.path).blocks(section=isales)]
    assert len(stored) == isales.blocks_stored
    got, _rep = restored(tmp_path, "r", [full, inc])
    assert got["SALES"][(0,)] == "changed" and got["DB"][(0,)] == "db 0" * 5


def irisrep_cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "irisrep", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_shows_the_databases(tmp_path, two_backups):
    full, inc = two_backups
    p = irisrep_cli("backup", "list", Path(full.path).parent, "--json")
    assert p.returncode == 0, p.stderr
    listed = json.loads(p.stdout)["backups"]
    assert [b["databases"] for b in listed] == [["DB", "SALES"], ["DB", "SALES"]]
    p = irisrep_cli("backup", "verify", inc.path)
    assert p.returncode == 0 and "database SALES" in p.stdout, p.stderr
    p = irisrep_cli("restore", full.path, inc.path, "--target", tmp_path / "r", "--dry-run")
    assert p.returncode == 0 and "database SALES" in p.stdout and "database DB" in p.stdout
    assert not (tmp_path / "r").exists()


def test_version_1_backup_still_restores(tmp_path):
    """Files written by the version 1 writer (DB alone, before several databases):
    read, listed, verified and restored (recovery skips other databases' records)."""
    expected = json.loads((FIXTURE_V1 / "expected.json").read_text())
    for name in expected["backups"]:
        shutil.copy(FIXTURE_V1 / name, tmp_path / name)
    paths = [tmp_path / n for n in expected["backups"]]
    infos = [read_header(p) for p in paths]
    assert [i.version for i in infos] == [1, 1]
    assert [i.database_names for i in infos] == [["DB"], ["DB"]]
    for p in paths:
        assert verify_backup(p)["ok"]
    plan = plan_restore(paths, tmp_path / "r")
    assert plan.only_these
    restore(plan)
    with irisrep.open(tmp_path / "r", create=False) as db:
        assert db.database_names() == ["DB"]
        got = dict(db.globals["v1"].items())
    assert got == {tuple(k): v for k, v in expected["expected"]}
    assert ("open",) not in got  # open in the incremental's frames: rolled back
    # An incremental taken now, on a restored v1 instance, chains to nothing there:
    # a new full backup, then an incremental (version 2) against it.
    with irisrep.open(tmp_path / "r") as root:
        root.database("SALES").globals[G]["x"] = 1
        b = create_backup(root, tmp_path / "new")
    assert b.version == 2 and b.database_names == ["DB", "SALES"]


def test_mirror_copy_with_a_mirrored_database(tmp_path):
    """A mirror copy (a backup member's instance, as `backup_create` backs it up in
    the member's process) with a mirrored SALES: both databases in the backup, a
    transaction across them open in the stream rolled back by the restore."""
    with irisrep.open(tmp_path / "p") as prim:
        sales = prim.database("SALES")
        for i in range(300):
            prim.globals[G][i] = i
            sales.globals[G][i] = f"s{i}"
        with prim.transaction():
            prim.globals[G]["both"] = 1
            sales.globals[G]["both"] = 2
        prim.tstart()
        prim.globals[G]["open"] = 1
        sales.globals[G]["open"] = 1
        prim.committer.write_out()
        prim.journal.flush()
        raw = prim.journal.read_raw(0, prim.journal.end_position, 1 << 30)
        prim.trollback()
    with irisrep.open(tmp_path / "c", mirror_copy=True) as copy:
        copy.database("SALES")  # declared on the member ([[databases]])
        copy.journal.append_frames(raw)
        copy.journal.flush()
        copy.apply_from_journal()
        info = create_backup(copy, tmp_path / "bk")
    assert info.database_names == ["DB", "SALES"]
    got, rep = restored(tmp_path, "r", [info])
    assert rep["rolled_back"] == 1
    assert got["DB"] == {**{(i,): i for i in range(300)}, ("both",): 1}
    assert got["SALES"] == {**{(i,): f"s{i}" for i in range(300)}, ("both",): 2}
