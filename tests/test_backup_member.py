"""Online backups of a running mirror member (issue 8 item 1, "prefer the backup").

First the rule that makes a backup of a copy safe: inside a backup window the
copy's dejournaling stops at a frame boundary instead of waiting for the window
(its link would otherwise stop acknowledging the primary), the file stays the
checkpoint's image, and everything is applied from the copy's own journal after.

Then with real processes (`irisrep up`): a writer commits on the primary (single
SETs and transactions) while `irisrep backup create --dir D` picks the Active backup
member and backs it up in its own process, then an incremental of it; the backups
restore (`irisrep restore`, the journal from the member's journal directory) to
exactly the primary's committed state at the backup's end position (read from the
primary's own journal, open transactions left out) and, after the writer stops, to
the end.

Last, issue 8's first "must show" on a running mirror: four clients, each on its own
connection, write while `irisrep backup create --dir D` takes a full backup and two
incrementals of the Active backup; `irisrep restore` with B's journal gives exactly
the clients' committed model at the end and at two pauses (by time and by position),
with a transaction held open across each pause (and one open at the end) rolled back,
and the integrity walk passes each time.
"""

from __future__ import annotations

import json
import os
import random
import re
import threading
import time
from pathlib import Path

from mirrorkit import TxnModel, cli, dump, ps_rows, wait_for

import irisrep
from irisrep import replay
from irisrep.backup import F_MARKER, F_MIRROR_COPY, create_backup
from irisrep.blockstore import BlockStore
from irisrep.client import connect_member
from irisrep.constants import BACKUPS_FILE_NAME, BLOCK_SIZE, JOURNAL_TIME_MARK_MS
from irisrep.deploy import credentials, load
from irisrep.fileio import RealFS
from irisrep.journal import read_stream

# --- the copy's apply yields to a backup window ------------------------------------------


def test_copy_dejournaling_yields_to_a_backup_window(tmp_path):
    with irisrep.open(tmp_path / "p") as prim:
        g = prim.globals["k"]
        for i in range(1500):
            g[(i * 7919) % 1500] = os.urandom(500)  # one frame each, spread over leaves
        end = prim.journal.durable_position
        raw = prim.journal.read_raw(0, end, 1 << 30)
        want = dump(prim)
    copy = irisrep.open(tmp_path / "c", mirror_copy=True, pool_blocks=64)
    try:
        start, stop = copy.journal.append_frames(raw)
        copy.journal.flush()
        assert (start, stop) == (0, end)
        frames = [(pos, recs) for pos, _h, recs in copy.journal.read(from_position=0)]
        with copy.backup_window() as point:
            t0 = time.monotonic()
            copy.apply_frames(frames, end, yield_to_backup=True)  # returns, never waits
            assert time.monotonic() - t0 < 5
            stopped = copy.applied_position
            assert 0 < stopped < end and stopped in {p for p, _r in frames}
            assert copy._dirty_count() <= copy.dirty_hard_limit
            assert copy.apply_from_journal() == 0 and copy.applied_position == stopped
            # the file is still the image of the checkpoint the window opened on
            store = BlockStore(copy.fs, copy.file_path)
            try:
                assert (store.checkpoint, store.generation) == (point.checkpoint, point.generation)
            finally:
                store.close()
        assert copy.apply_from_journal() > 0
        assert copy.applied_position == end
        assert dump(copy) == want
    finally:
        copy.close()
    with irisrep.open(tmp_path / "c", mirror_copy=True) as again:  # recovers the same
        assert dump(again) == want


def test_backup_of_a_copy_is_recorded_and_marks_nothing(tmp_path):
    with irisrep.open(tmp_path / "p") as prim:
        for i in range(300):
            prim.globals["k"][i] = i
        raw = prim.journal.read_raw(0, prim.journal.durable_position, 1 << 30)
    with irisrep.open(tmp_path / "c", mirror_copy=True) as copy:
        copy.journal.append_frames(raw)
        copy.journal.flush()
        copy.apply_from_journal()
        end = copy.journal.end_position
        info = create_backup(copy, tmp_path / "bk")
        assert info.flags == F_MIRROR_COPY and copy.journal.end_position == end
        rec = json.loads((tmp_path / "c" / BACKUPS_FILE_NAME).read_text())["backups"]
        assert [r["name"] for r in rec] == [info.name]
        assert rec[0]["journal_start"] == info.journal_start


def test_progress_watch_relays_the_members_counts():
    """`backup create --member M` draws its bar from M's status (`backup`): the
    total once known, each increase of the bytes copied, nothing from a status of no
    backup or of one that is over; at the end the bar is at the backup's size."""
    from irisrep.backup import _ProgressWatch

    seen = []
    w = _ProgressWatch("127.0.0.1:1", "u", "p", lambda n: seen.append(("+", n)),
                       lambda t: seen.append(("total", t)))  # fmt: skip
    for st in (
        None,
        {"running": False, "done_bytes": 99, "total_bytes": 100},  # an earlier backup
        {"running": True, "done_bytes": 0, "total_bytes": 800},
        {"running": True, "done_bytes": 300, "total_bytes": 800},
        {"running": True, "done_bytes": 300, "total_bytes": 800},
        {"running": True, "done_bytes": 700, "total_bytes": 800},
    ):
        w._update(st)
    w.complete(768)  # the copies held fewer blocks than the file had
    assert seen == [("total", 800), ("+", 300), ("+", 400), ("total", 768), ("+", 68)]


# --- a running mirror ----------------------------------------------------------------------


class _Writer(threading.Thread):
    """Commits on the primary until stopped: ^w(i) alone, every fifth i a transaction
    setting ^t(i, 0..2)."""

    def __init__(self, addresses, user, password):
        super().__init__(daemon=True)
        self.conn = irisrep.connect(addresses, user=user, password=password)
        self.stop = threading.Event()
        self.count = 0
        self.error: BaseException | None = None

    def run(self):
        w, t = self.conn.globals["w"], self.conn.globals["t"]
        try:
            while not self.stop.is_set():
                i = self.count
                if i % 5 == 0:
                    with self.conn.transaction():
                        for j in range(3):
                            t[i, j] = f"{i}.{j}"
                else:
                    w[i] = os.urandom(64)
                self.count += 1
        except BaseException as e:  # reported by the test
            self.error = e
        finally:
            self.conn.close()


def committed_at(data_dir, position=None) -> dict:
    """The committed state of the primary at `position` (default: its end), from its
    own journal: SETs outside transactions, and those of transactions whose TCOMMIT
    lies before it (the others are what a restore there rolls back)."""
    state: dict[bytes, bytes] = {}
    open_txns: dict[int, list] = {}
    for _pos, _h, records in read_stream(RealFS(), str(data_dir / "journal"), to_position=position):
        for r in records:
            kind, txn = r[0], r[3]
            if kind == replay.TSTART:
                open_txns[txn] = []
            elif kind == replay.TCOMMIT:
                for k, v in open_txns.pop(txn):
                    state[k] = v
            elif kind == replay.TROLLBACK:
                open_txns.pop(txn, None)
            elif kind == replay.SET:
                (open_txns[txn].append if txn else lambda kv: state.__setitem__(*kv))(
                    (bytes(r[4]), bytes(r[5]))
                )
            else:
                assert kind == replay.MARKER, f"unexpected record {kind}"
    return state


def _member_conn(d: str, name: str):
    dep = load(Path(d))
    address = next(m["client_address"] for m in dep["members"] if m["name"] == name)
    user, password = credentials(Path(d))
    return connect_member(address, user=user, password=password)


def _cli_on_a_terminal(monkeypatch, *args) -> str:
    """Run `irisrep ARGS` in process with stderr a (fake) terminal; what it drew there."""
    import io

    from click.testing import CliRunner
    from rich.console import Console

    from irisrep import cli as cli_mod

    screen = io.StringIO()
    monkeypatch.setattr(cli_mod, "err_console", Console(file=screen, force_terminal=True))
    result = CliRunner().invoke(cli_mod.main, list(args))
    assert result.exit_code == 0, (result.output, screen.getvalue())
    return screen.getvalue()


def restored_state(path) -> dict:
    with irisrep.open(path, create=False) as db:
        return dict(dump(db))


def test_backup_of_the_running_backup_member_restores_exactly(tmp_path, monkeypatch):
    d = str(tmp_path / "m")
    cli("up", "--dir", d, "--qos-ms", "2000")
    try:
        dep = load(tmp_path / "m")
        members = {m["name"]: m for m in dep["members"]}
        a_data = tmp_path / "m" / "A" / "data"
        b_data = tmp_path / "m" / "B" / "data"
        user, password = credentials(tmp_path / "m")
        writer = _Writer([members["A"]["client_address"]], user, password)
        writer.start()
        wait_for(lambda: writer.count > 300 or writer.error, 30, "writes")
        out = tmp_path / "bk"
        # No PATH, --member or --dir: the deployment of $IRISREP_DIR, as every command.
        monkeypatch.setenv("IRISREP_DIR", d)
        p = cli("backup", "create", "--out", str(out), "--json")
        monkeypatch.delenv("IRISREP_DIR")
        assert "backing up B: B is the Active backup of A" in p.stderr
        full = json.loads(p.stdout)
        assert full["flags"] & F_MIRROR_COPY and not full["flags"] & F_MARKER
        assert full["source"] == str(b_data) and full["kind"] == "full"
        n = writer.count
        wait_for(lambda: writer.count > n + 200 or writer.error, 30, "more writes")
        of_b = ("backup", "create", "--member", "B", "--dir", d, "--out")
        p = cli(*of_b, str(out), "--incremental", "--json")
        inc = json.loads(p.stdout)
        assert inc["kind"] == "incremental" and inc["parent_name"] == full["name"]
        # The member counts what it copies (status' `backup`), and --member draws a bar
        # from it on a terminal.
        with _member_conn(d, "B") as cb:
            st = cb.status()["backup"]
        assert st["name"] == inc["name"] and not st["running"] and st["error"] is None
        assert st["done_bytes"] == st["total_bytes"] == inc["block_count"] * BLOCK_SIZE
        shown = _cli_on_a_terminal(monkeypatch, *of_b, str(tmp_path / "bk2"))
        # the bar had the member's total and ended there (not a pulse of "0/? bytes")
        assert "backup" in shown and re.search(r"(\d+\.\d)/\1 [kMG]B", shown), shown[-300:]
        wait_for(lambda: writer.count > n + 400 or writer.error, 30, "more writes")
        writer.stop.set()
        writer.join(30)
        assert writer.error is None, writer.error
        # B stayed the Active backup throughout (the backups never held its acks up).
        rows = ps_rows(d)
        assert rows["A"]["active_backup"] == "B"
        # B recorded its backups for its journal purge.
        recs = json.loads((b_data / BACKUPS_FILE_NAME).read_text())["backups"]
        third = [p.name for p in (tmp_path / "bk2").iterdir()]
        assert [r["name"] for r in recs] == [full["name"], inc["name"], *third]

        # To the incremental's end position, with B's journal: exactly what A had
        # committed there.
        e = inc["journal_end"]
        files = [full["path"], inc["path"]]
        cli("restore", *files, "--target", str(tmp_path / "r1"), "--journal", str(b_data),
            "--until-position", str(e))  # fmt: skip
        want = committed_at(a_data, e)
        assert len(want) > 300
        assert restored_state(tmp_path / "r1") == want

        # To the end, once B has everything A wrote.
        wait_for(lambda: ps_rows(d)["B"]["lag"] == "caught up", 30, "B to catch up")
        p = cli("restore", *files, "--target", str(tmp_path / "r2"), "--journal", str(b_data),
                "--json")  # fmt: skip
        assert json.loads(p.stdout)["integrity"] == "ok"
        final = committed_at(a_data)
        assert len(final) > len(want)
        assert restored_state(tmp_path / "r2") == final

        # The purge on the primary says why it keeps what it keeps (a dry run).
        p = cli("journal", "purge", "--member", "A", "--dir", d, "--dry-run", "--days", "0")
        assert p.stdout.startswith("would remove") and "the current file" in p.stdout
        assert "no backup recorded" in p.stdout  # the backups are B's
    finally:
        cli("down", "--dir", d, check=False)


# --- four clients on a running mirror, restored to the end and to points in the middle ------


class _Client(TxnModel, threading.Thread):
    """One client on its own connection to the mirror: its own subtree ^c(tid, ...),
    one operation per step (SET, nested SET, KILL, ZKILL; transactions over several
    steps, some rolled back), and a model of what its returned commits left. The
    main thread pauses all four between steps (`ctl`); `hold` makes this one open a
    transaction and write first, so that it is open at the pause."""

    def __init__(self, addresses, user, password, tid, ctl) -> None:
        super().__init__(name=f"client-{tid}", daemon=True)
        self.conn = irisrep.connect(addresses, user=user, password=password)
        self.g = self.conn.globals["c"]
        self.tid, self.ctl = tid, ctl
        self.rng = random.Random(7000 + tid)
        self.committed: dict = {}
        self.txn = self.conn  # brackets the transactions (TxnModel)
        self.work: dict | None = None
        self.steps = self.ops = 0
        self.hold = threading.Event()
        self.held = threading.Event()
        self.leave_open = False
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.ctl.stop.is_set():
                if self.ctl.pause.is_set():
                    self.ctl.barrier.wait()  # paused: the main thread records the models
                    self.ctl.barrier.wait()
                elif self.hold.is_set():
                    self.hold.clear()
                    if self.work is None:
                        self.begin()
                    for j in range(3):
                        self.g[self.tid, "held", j] = f"held {j}"
                        self.work[(self.tid, "held", j)] = f"held {j}"
                    self.steps = 3  # ends (commit or rollback) a few steps after the pause
                    self.held.set()
                    self.ctl.pause.wait(30)  # straight to the pause, the transaction open
                else:
                    self.step()
            if self.leave_open:
                if self.work is None:
                    self.begin()
                self.g[self.tid, "open-at-end"] = 1  # never committed
            elif self.work is not None:
                self.end(True)
        except BaseException as e:  # reported by the test
            self.error = e
            self.ctl.stop.set()
            self.ctl.barrier.abort()

    def step(self) -> None:
        r, v = self.rng, self.view()
        self.ops += 1
        k = r.randrange(30)
        if self.work is None and r.random() < 0.1:
            self.begin()
            self.steps = r.randint(2, 8)
            return
        x = r.random()
        if x < 0.5:
            val = f"v{self.ops}-{r.randbytes(r.randint(0, 30)).hex()}"
            self.g[self.tid, k] = val
            v[(self.tid, k)] = val
        elif x < 0.75:
            sub = r.randrange(6)
            self.g[self.tid, k, sub] = self.ops
            v[(self.tid, k, sub)] = self.ops
        elif x < 0.9:
            self.g.kill((self.tid, k))
            for q in [q for q in v if q[:2] == (self.tid, k)]:
                del v[q]
        else:
            self.g.zkill((self.tid, k))
            v.pop((self.tid, k), None)
        if self.work is not None:
            self.steps -= 1
            if self.steps <= 0:
                self.end(r.random() < 0.7)


def test_backups_of_a_mirror_while_four_clients_write_restore_to_any_point(tmp_path):
    """`irisrep backup create --dir D` (the Active backup B) while four clients write
    on the primary; `irisrep restore` of the chain with B's journal: to the end
    (a client's transaction still open there: rolled back), and to two pauses by time
    and by position (a transaction held open across each: rolled back), each exactly
    the clients' committed model then, the integrity walk passing."""
    d = str(tmp_path / "m")
    cli("up", "--dir", d, "--qos-ms", "2000", "--no-arbiter")
    clients: list[_Client] = []
    try:
        dep = load(tmp_path / "m")
        members = {m["name"]: m for m in dep["members"]}
        addresses = [members["A"]["client_address"], members["B"]["client_address"]]
        user, password = credentials(tmp_path / "m")
        b_data = members["B"]["data_dir"]

        class Ctl:
            stop, pause = threading.Event(), threading.Event()
            barrier = threading.Barrier(5)

        ctl = Ctl()
        clients = [_Client(addresses, user, password, t, ctl) for t in range(4)]
        for c in clients:
            c.start()
        watch = _member_conn(d, "A")

        def run_for(ops: int) -> None:
            goal = [c.ops + ops for c in clients]
            wait_for(
                lambda: (
                    ctl.stop.is_set() or all(c.ops >= g for c, g in zip(clients, goal, strict=True))
                ),
                60,
                "client writes",
            )
            assert not ctl.stop.is_set(), [c.error for c in clients]

        def model() -> dict:
            out: dict = {}
            for c in clients:
                out.update(c.committed)
            return out

        def sync() -> int:
            """The primary's journal end after a commit of ^sync: every record written
            before it (an open transaction's too, which no commit of its own flushes)
            lies before this position."""
            watch.globals["sync"]["n"] = time.time_ns()
            return watch.stream_position()

        def pause(holder: _Client) -> dict:
            holder.hold.set()
            wait_for(lambda: holder.held.is_set() or ctl.stop.is_set(), 30, "a held transaction")
            holder.held.clear()
            ctl.pause.set()
            ctl.barrier.wait()
            ctl.pause.clear()
            try:
                position = sync()
                time.sleep(3 * JOURNAL_TIME_MARK_MS / 1000)
                at = time.time_ns()
                time.sleep(3 * JOURNAL_TIME_MARK_MS / 1000)
                assert holder.work is not None  # open across the pause
                return {"position": position, "time": at, "model": model()}
            finally:
                ctl.barrier.wait()

        def backup(*extra) -> dict:
            p = cli("backup", "create", "--dir", d, "--out", str(tmp_path / "bk"), "--json", *extra)
            assert "backing up B" in p.stderr
            return json.loads(p.stdout)

        run_for(150)
        full = backup()
        run_for(150)
        p1 = pause(clients[0])
        run_for(150)
        inc1 = backup("--incremental")
        run_for(150)
        p2 = pause(clients[1])
        run_for(150)
        inc2 = backup("--incremental")
        run_for(150)
        clients[3].leave_open = True
        ctl.stop.set()
        for c in clients:
            c.join(30)
            assert c.error is None, c.error
        final = model()
        end = sync()  # client 3's open transaction is journaled before it
        with _member_conn(d, "B") as cb:
            wait_for(lambda: cb.stream_position() >= end, 30, "B to apply everything")
        # A chain restores to any point at or after its last backup's checkpoint. A
        # backup's checkpoint is the copy's last WIJ cycle (at most the write daemon's
        # interval old), so a backup taken after a pause may still stand before it.
        assert full["checkpoint"] <= p1["position"] < p2["position"]
        assert inc1["checkpoint"] <= p2["position"]
        assert p1["model"] != p2["model"] != final

        def restored(name, files, *until) -> tuple[dict, dict]:
            p = cli("restore", *(b["path"] for b in files), "--target", str(tmp_path / name),
                    "--journal", b_data, "--json", *until)  # fmt: skip
            report = json.loads(p.stdout)
            assert report["integrity"] == "ok"
            with irisrep.open(tmp_path / name, create=False) as db:
                return dict(db.globals["c"].items()), report

        got, rep = restored("r-end", [full, inc1, inc2])
        assert got == final and rep["rolled_back"] >= 1  # client 3's, open at the end
        for name, files, until, point in (
            ("r-t1", [full], ("--until", str(p1["time"] / 1e9)), p1),
            ("r-p1", [full], ("--until-position", str(p1["position"])), p1),
            ("r-t2", [full, inc1], ("--until", str(p2["time"] / 1e9)), p2),
            ("r-p2", [full, inc1], ("--until-position", str(p2["position"])), p2),
        ):
            got, rep = restored(name, files, *until)
            assert got == point["model"], name
            assert rep["rolled_back"] >= 1, (name, rep)  # the held transaction
    finally:
        for c in clients:
            c.conn.close()
        cli("down", "--dir", d, check=False)
