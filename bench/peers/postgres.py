"""PostgreSQL as a peer: a primary and a streaming standby, synchronous replication.

The server binaries are the newest under /usr/lib/postgresql/*/bin (Debian's layout;
else `pg_ctl` from PATH). As root the servers run as the `postgres` user (PostgreSQL
refuses root), their directories chowned to it. The primary is made by initdb
(trust authentication, 127.0.0.1 only); the standby by `pg_basebackup -R -X stream`
with a physical replication slot, so the primary keeps the WAL a stopped standby
still needs. The primary runs with `synchronous_standby_names='*'` given on its
command line (so the standby's copied configuration does not inherit it, and a
promoted standby does not wait for a standby it does not have).

Workload (psycopg 3, one TCP connection per client, `synchronous_commit` set per
session: `on` or `remote_write`): a write is one autocommitted
`INSERT ... ON CONFLICT (c, i) DO UPDATE` into a table with a primary key; a
transaction is BEGIN, ten such INSERTs, COMMIT, each its own round trip.

Also here: the failover measure (`pg_ctl stop -m immediate` of the primary, then
`pg_ctl promote` of the standby at once; the time from the stop to the first write
accepted by the promoted standby) and the catch-up measure (a standby stopped while
N bytes of WAL are written, then started; the time until it has received and
replayed them). Every server is stopped by pid (SIGINT: a fast shutdown; SIGKILL
after a timeout).
"""

from __future__ import annotations

import glob
import os
import pwd
import re
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

from . import (
    TX_NODES,
    VALUE,
    Procs,
    System,
    Unavailable,
    free_ports,
    log_tail,
    stop_pid,
    wait_until,
)

UPSERT = (
    "INSERT INTO bench (c, i, v) VALUES (%s, %s, %s) "
    "ON CONFLICT (c, i) DO UPDATE SET v = EXCLUDED.v"
)


def bindir() -> Path | None:
    """The directory of the newest installed PostgreSQL's server binaries."""
    found = glob.glob("/usr/lib/postgresql/*/bin/postgres")
    if found:
        best = max(found, key=lambda p: int(re.sub(r"\D", "", p.split("/")[4]) or 0))
        return Path(best).parent
    ctl = shutil.which("pg_ctl")
    return Path(os.path.realpath(ctl)).parent if ctl else None


def available() -> str | None:
    """None when PostgreSQL can run here; else why not."""
    b = bindir()
    if b is None or not (b / "initdb").exists() or not (b / "pg_basebackup").exists():
        return "PostgreSQL is not installed (apt-get install -y postgresql, or --install-peers)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no postgres user to run the servers as"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is missing (pip install 'psycopg[binary]', or the bench extra)"
    return None


def _as_user() -> dict:
    """Popen keywords to run a server as `postgres` when we are root."""
    return {"user": "postgres", "group": "postgres"} if os.geteuid() == 0 else {}


def _chown(path: Path) -> None:
    if os.geteuid() == 0:
        pw = pwd.getpwnam("postgres")
        for root, dirs, files in os.walk(path):
            os.chown(root, pw.pw_uid, pw.pw_gid)
            for n in dirs + files:
                os.chown(os.path.join(root, n), pw.pw_uid, pw.pw_gid)


def _connect(port: int, **kw):
    import psycopg

    return psycopg.connect(
        host="127.0.0.1", port=port, user="postgres", dbname="postgres", autocommit=True, **kw
    )


class PostgresPair:
    """A primary and its synchronous streaming standby, started and stopped by pid."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.bin = bindir()
        self.procs = Procs()
        self.port, self.standby_port = free_ports(2)
        self.primary_dir = base / "primary"
        self.standby_dir = base / "standby"
        self.primary: subprocess.Popen | None = None
        self.standby: subprocess.Popen | None = None

    def _run(self, *cmd: str, timeout: float = 120) -> str:
        p = subprocess.run(
            [str(self.bin / cmd[0]), *cmd[1:]],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.base,
            **_as_user(),
        )
        if p.returncode != 0:
            raise RuntimeError(f"{cmd[0]} failed ({p.returncode}): {p.stderr.strip()[-800:]}")
        return p.stdout

    def _postgres(self, d: Path, port: int, extra: list[str]) -> subprocess.Popen:
        cmd = [str(self.bin / "postgres"), "-D", str(d), "-c", f"port={port}"]
        cmd += ["-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={d}"]
        return self.procs.start(
            f"postgres:{port}", cmd + extra, d.parent / f"{d.name}.log", **_as_user()
        )

    def start_primary(self) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        _chown(self.base)
        self._run(
            "initdb", "-D", str(self.primary_dir), "-U", "postgres", "--auth=trust", "-E", "UTF8"
        )
        with open(self.primary_dir / "postgresql.conf", "a") as f:
            f.write("\n# bench_peers\nmax_wal_senders = 4\nmax_replication_slots = 4\n")
            f.write("wal_level = replica\nfsync = on\nsynchronous_commit = on\n")
        self.primary = self._postgres(
            self.primary_dir, self.port, ["-c", "synchronous_standby_names=*"]
        )
        wait_until(f"postgres primary on {self.port}", lambda: _ping(self.port), 60)
        with _connect(self.port) as c:
            c.execute("SET synchronous_commit = local")  # no standby yet
            c.execute("CREATE TABLE bench (c int, i bigint, v text, PRIMARY KEY (c, i))")

    def start_standby(self, *, fresh: bool = True) -> None:
        if fresh:
            self._run(
                "pg_basebackup", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
                "-D", str(self.standby_dir), "-R", "-X", "stream", "-C", "-S", "bench_standby",
            )  # fmt: skip
        self.standby = self._postgres(self.standby_dir, self.standby_port, [])

    def wait_sync(self, timeout_s: float = 60) -> None:
        def synced() -> bool:
            with _connect(self.port) as c:
                row = c.execute("SELECT sync_state, state FROM pg_stat_replication").fetchone()
                return bool(row) and row[0] == "sync" and row[1] == "streaming"

        try:
            wait_until("postgres standby streaming and sync", synced, timeout_s)
        except TimeoutError as e:
            raise RuntimeError(f"{e}; standby log: {log_tail(self.base / 'standby.log')}") from None

    def pg_ctl(self, *args: str, timeout: float = 120) -> str:
        return self._run("pg_ctl", *args, timeout=timeout)

    def stop_standby(self) -> None:
        if self.standby is not None:
            self.procs.stop(self.standby, signal.SIGINT)
            self.standby = None

    def stop(self) -> None:
        self.procs.stop_all(signal.SIGINT)
        self.primary = self.standby = None

    def version(self) -> str:
        return subprocess.run(
            [str(self.bin / "postgres"), "--version"], capture_output=True, text=True
        ).stdout.strip()


def _ping(port: int) -> bool:
    with _connect(port, connect_timeout=2) as c:
        return c.execute("SELECT 1").fetchone()[0] == 1


class Postgres(System):
    family = "postgres"

    def __init__(self, name: str, synchronous_commit: str) -> None:
        self.name = name
        self.synchronous_commit = synchronous_commit
        self.pair: PostgresPair | None = None
        self.port = 0

    def versions(self) -> dict:
        import psycopg

        b = bindir()
        out = subprocess.run([str(b / "postgres"), "--version"], capture_output=True, text=True)
        return {"postgres": out.stdout.strip(), "psycopg": psycopg.__version__}

    def start(self, scratch: Path) -> None:
        why = available()
        if why:
            raise Unavailable(why)
        self.pair = PostgresPair(scratch / self.name)
        self.pair.start_primary()
        self.pair.start_standby()
        self.pair.wait_sync()
        self.port = self.pair.port

    def client(self, cid: int):
        return _Client(self.port, cid, self.synchronous_commit)

    def stop(self) -> None:
        if self.pair is not None:
            self.pair.stop()


class _Client:
    def __init__(self, port: int, cid: int, synchronous_commit: str) -> None:
        self.conn = _connect(port)
        self.conn.execute(f"SET synchronous_commit = {synchronous_commit}")
        self.cur = self.conn.cursor()
        self.cid = cid

    def write(self, i: int) -> None:
        self.cur.execute(UPSERT, (self.cid, i, VALUE))

    def tx(self, i: int) -> None:
        with self.conn.transaction():
            for j in range(TX_NODES):
                self.cur.execute(UPSERT, (self.cid, i * 16 + j, VALUE))

    def close(self) -> None:
        self.conn.close()


# --- failover and catch-up ----------------------------------------------------------


def failover_runs(scratch: Path, runs: int, retry_s: float = 0.005) -> list[dict]:
    """`runs` times: a fresh pair, a client writing all the time, `pg_ctl stop -m
    immediate` of the primary, then at once `pg_ctl promote` of the standby; the
    seconds from just before the stop to the first write accepted by the standby."""
    out = []
    for k in range(runs):
        pair = PostgresPair(scratch / f"pg-failover-{k}")
        r: dict = {"run": k}
        try:
            pair.start_primary()
            pair.start_standby()
            pair.wait_sync()
            r.update(_one_failover(pair, retry_s))
        except Exception as e:  # noqa: BLE001 - reported, the next run goes on
            r["error"] = f"{type(e).__name__}: {e}"
        finally:
            pair.stop()
            shutil.rmtree(pair.base, ignore_errors=True)
        out.append(r)
    return out


def _one_failover(pair: PostgresPair, retry_s: float) -> dict:
    import psycopg

    stop = threading.Event()
    ok: list[tuple[float, int]] = []  # (monotonic done, port)
    errors: list[str] = []

    def writer() -> None:
        ports = [pair.port, pair.standby_port]
        conn, i, which = None, 0, 0
        while not stop.is_set():
            try:
                if conn is None:
                    conn = _connect(ports[which], connect_timeout=1)
                    conn.execute("SET synchronous_commit = on")
                conn.execute(UPSERT, (0, i, VALUE))
                ok.append((time.monotonic(), ports[which]))
            except psycopg.Error as e:
                errors.append(type(e).__name__)
                if conn is not None:
                    conn.close()
                conn = None
                which = 1 - which  # try the other one next
                stop.wait(retry_s)
            i += 1
        if conn is not None:
            conn.close()

    th = threading.Thread(target=writer, daemon=True)
    th.start()
    try:
        wait_until("writes on the primary", lambda: len(ok) >= 50, 30)
        t_kill = time.monotonic()
        # Neither command waits (-W): the primary gets SIGQUIT, the standby its promote
        # signal at once; the client's first accepted write says when it is done.
        pair.pg_ctl("stop", "-D", str(pair.primary_dir), "-m", "immediate", "-W")
        pair.procs.procs = [t for t in pair.procs.procs if t[1] is not pair.primary]
        pair.primary.wait(10)  # gone (its pid reaped) before the promotion
        t_stopped = time.monotonic()
        pair.pg_ctl("promote", "-D", str(pair.standby_dir), "-W")
        t_promoted = time.monotonic()
        first = wait_until(
            "a write accepted by the promoted standby",
            lambda: next((t for t, p in list(ok) if p == pair.standby_port and t >= t_kill), None),
            30,
            0.001,
        )
    finally:
        stop.set()
        th.join(10)
    return {
        "takeover_s": first - t_kill,
        "stop_immediate_s": t_stopped - t_kill,  # until the primary is gone
        "promote_s": t_promoted - t_stopped,  # the pg_ctl promote call (no wait)
        "client_errors": sorted(set(errors)),
    }


def catchup_run(scratch: Path, nbytes: int, chunk: int = 1 << 20) -> dict:
    """A pair; the standby stopped (fast); `nbytes` of WAL written by inserting random
    (incompressible, stored out of line) `chunk`-byte values with synchronous_commit
    local; the standby started again. Seconds from its start until the primary sees
    it flush, and until it has replayed, the primary's WAL end."""
    pair = PostgresPair(scratch / "pg-catchup")
    out: dict = {"bytes_wanted": nbytes}
    try:
        pair.start_primary()
        pair.start_standby()
        pair.wait_sync()
        with _connect(pair.port) as c:
            c.execute("CREATE TABLE big (id bigserial PRIMARY KEY, v bytea)")
            c.execute("ALTER TABLE big ALTER COLUMN v SET STORAGE EXTERNAL")
            pair.stop_standby()
            c.execute("SET synchronous_commit = local")
            lsn0 = c.execute("SELECT pg_current_wal_lsn()").fetchone()[0]
            t0 = time.monotonic()
            written = 0
            while written < nbytes:
                c.execute("INSERT INTO big (v) VALUES (%s)", (os.urandom(chunk),))
                written = c.execute("SELECT pg_current_wal_lsn() - %s::pg_lsn", (lsn0,)).fetchone()[
                    0
                ]
            out["write_s"] = time.monotonic() - t0
            end = c.execute("SELECT pg_current_wal_lsn()").fetchone()[0]
            out["wal_bytes"] = int(written)
            t_start = time.monotonic()
            pair.start_standby(fresh=False)

            def flushed():
                row = c.execute(
                    "SELECT flush_lsn >= %s::pg_lsn FROM pg_stat_replication", (end,)
                ).fetchone()
                return bool(row and row[0])

            wait_until("the standby flushed the WAL", flushed, 3600, 0.01)
            out["received_s"] = time.monotonic() - t_start

        def replayed():
            with _connect(pair.standby_port, connect_timeout=2) as s:
                return s.execute(
                    "SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (end,)
                ).fetchone()[0]

        wait_until("the standby replayed the WAL", replayed, 3600, 0.01)
        out["replayed_s"] = time.monotonic() - t_start
        out["received_mb_s"] = out["wal_bytes"] / out["received_s"] / 1e6
        out["replayed_mb_s"] = out["wal_bytes"] / out["replayed_s"] / 1e6
    except Exception as e:  # noqa: BLE001 - reported beside the figures
        out["error"] = f"{type(e).__name__}: {e}"
    finally:
        pair.stop()
        shutil.rmtree(pair.base, ignore_errors=True)
    return out


__all__ = ["Postgres", "PostgresPair", "available", "catchup_run", "failover_runs", "stop_pid"]
