"""irisrep as a system under test: a local mirror as `irisrep up` makes it, and the
embedded case.

- `Deployed(ack)`: `irisrep.deploy.up` (A primary, B its synchronous backup, each
  under its own agent process, an arbiter) with the mirror's ack level `durable` (a
  commit returns once B has fdatasynced it) or `received` (once B has it in memory);
  clients are `irisrep.connect` TCP connections with the deployment's password. A
  write is `conn.globals["bench"][cid, i] = value` (autocommitted); a transaction is
  `with conn.transaction():` ten such sets (TSTART, ten SETs, TCOMMIT: twelve round
  trips). Stopped by `deploy.down` (agents by pid), then any member, agent or arbiter
  pid still alive is SIGKILLed.
- `Embedded()`: the primary hosted in this process (`irisrep.Member`, as
  bench/bench_commit.py does it, its `Mirror` reused), the backup a separate process,
  ack `durable`; clients are threads calling the in-process database (no TCP).
  Reported apart from the TCP systems.

Also here: the failover measure (bench/bench_failover.py's crash runs, called as a
script) and the catch-up measure (B stopped while N bytes of journal are written,
then started; the time until it is the Active backup again).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import irisrep as iris
from irisrep import deploy
from irisrep.agent import UNIX_PATH_BYTES_MAX

from . import TX_NODES, VALUE, System, stop_pid, wait_until

BENCH = Path(__file__).resolve().parent.parent


def available() -> str | None:
    return None


def _deploy_dir(scratch: Path, name: str) -> tuple[Path, Path | None]:
    """Where to deploy: under the scratch directory, or, if that path is too long for
    the agents' UNIX sockets, a short directory of the system's temporary directory
    (returned second, to remove afterwards)."""
    d = scratch / name
    if len(str(d) + "/C1/agent.sock") <= UNIX_PATH_BYTES_MAX:
        return d, None
    short = Path(tempfile.mkdtemp(prefix="bench_peers_")).resolve()
    return short / "m", short


def _pids(d: Path) -> list[int]:
    """Every member, agent and arbiter pid of the deployment in `d` (best effort)."""
    pids = []
    with contextlib.suppress(Exception):
        for m in deploy.load(d)["members"]:
            with contextlib.suppress(Exception):
                st = deploy.member_op(d, m["name"], "status")
                if st.get("pid"):
                    pids.append(int(st["pid"]))
            with contextlib.suppress(Exception):
                pids.append(int((d / m["name"] / "agent.pid").read_text()))
    with contextlib.suppress(Exception):
        pids.append(int((d / "arbiter" / "arbiter.pid").read_text()))
    return pids


def take_down(d: Path, short: Path | None) -> None:
    """deploy.down, then SIGKILL whatever pid of it is still alive; remove the files."""
    pids = _pids(d)
    try:
        deploy.down(d, purge=True)
    finally:
        for pid in pids:
            stop_pid(pid)
        shutil.rmtree(d, ignore_errors=True)
        if short is not None:
            shutil.rmtree(short, ignore_errors=True)


class Deployed(System):
    family = "irisrep"

    def __init__(self, name: str, ack_level: str) -> None:
        self.name = name
        self.ack_level = ack_level
        self.dir: Path | None = None
        self.short: Path | None = None
        self.addresses: list[str] = []
        self.user = self.password = ""

    def versions(self) -> dict:
        return {"irisrep": getattr(iris, "__version__", "?"), "irisrep_path": iris.__file__}

    def start(self, scratch: Path) -> None:
        self.dir, self.short = _deploy_dir(scratch, self.name)
        deploy.up(self.dir, ack_level=self.ack_level)
        dep = deploy.load(self.dir)
        self.addresses = [m["client_address"] for m in dep["members"]]
        self.user, self.password = deploy.credentials(self.dir)

    def client(self, cid: int):
        return _Client(iris.connect(self.addresses, user=self.user, password=self.password), cid)

    def stop(self) -> None:
        if self.dir is not None:
            take_down(self.dir, self.short)
            self.dir = None


class _Client:
    def __init__(self, conn, cid: int) -> None:
        self.conn = conn
        self.g = conn.globals["bench"]
        self.cid = cid

    def write(self, i: int) -> None:
        self.g[self.cid, i] = VALUE

    def tx(self, i: int) -> None:
        with self.conn.transaction():
            for j in range(TX_NODES):
                self.g[self.cid, i, j] = VALUE

    def close(self) -> None:
        self.conn.close()


class Embedded(System):
    """The primary in this process (threads only: `client` must not be called in a
    forked process)."""

    family = "irisrep"
    threads_only = True

    def __init__(self, name: str = "embedded-durable", qos_ms: int = 8000) -> None:
        self.name = name
        self.qos_ms = qos_ms
        self.mirror = None
        self.children = None

    def versions(self) -> dict:
        return {"irisrep": getattr(iris, "__version__", "?")}

    def start(self, scratch: Path) -> None:
        if str(BENCH) not in sys.path:
            sys.path.insert(0, str(BENCH))
        from bench_commit import CONFIGS, Children, Mirror, serve_available

        self.children = Children()
        mode = "serve" if serve_available() else "inline"
        self.mirror = Mirror(
            scratch / self.name, self.children, CONFIGS["durable"], self.qos_ms, mode
        )
        self.mirror.start()

    def client(self, cid: int):
        return _EmbeddedClient(self.mirror.primary.database, cid)

    def stop(self) -> None:
        try:
            if self.mirror is not None:
                self.mirror.stop()
        finally:
            if self.children is not None:
                self.children.stop_all()
            self.mirror = self.children = None


class _EmbeddedClient:
    def __init__(self, db, cid: int) -> None:
        self.db = db
        self.g = db.globals["bench"]
        self.cid = cid

    def write(self, i: int) -> None:
        self.g[self.cid, i] = VALUE

    def tx(self, i: int) -> None:
        with self.db.transaction():
            for j in range(TX_NODES):
                self.g[self.cid, i, j] = VALUE

    def close(self) -> None:
        """Nothing to close: this client holds no connection of its own."""


# --- failover and catch-up ----------------------------------------------------------


def failover_runs(scratch: Path, runs: int, timeout_s: float = 1800) -> dict:
    """bench/bench_failover.py --kinds crash --runs N: its summary and runs."""
    out_json = scratch / "failover.json"
    cmd = [sys.executable, str(BENCH / "bench_failover.py"), "--kinds", "crash"]
    cmd += ["--runs", str(runs), "--floor-n", "20", "--dir", str(scratch), "--json", str(out_json)]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, cwd=scratch)
    try:
        res = json.loads(out_json.read_text())
    except (OSError, ValueError):
        return {"error": f"bench_failover.py exited {p.returncode}: {p.stderr[-1500:]}"}
    out = {
        "crash_takeover_s": res["summary"]["crash_takeover_s"],
        "runs": [
            {k: v for k, v in r.items() if k in ("run", "takeover_s", "lost_acked", "error")}
            for r in res["crash"]
        ],
        "qos_ms": res["args"]["qos_ms"],
        "exit": p.returncode,
    }
    if p.returncode != 0:
        out["stderr_tail"] = p.stderr[-1500:]
    return out


def catchup_run(scratch: Path, nbytes: int, chunk: int = 1 << 20) -> dict:
    """A local mirror (ack durable); B stopped cleanly; `nbytes` of journal written on
    A by autocommitted sets of random (incompressible) `chunk`-byte values; B started
    again. Seconds from its start until A counts it the Active backup again."""
    d, short = _deploy_dir(scratch, "iris-catchup")
    out: dict = {"bytes_wanted": nbytes}
    try:
        deploy.up(d, ack_level="durable")
        user, password = deploy.credentials(d)
        addrs = [m["client_address"] for m in deploy.load(d)["members"]]
        deploy.member_op(d, "B", "stop")
        wait_until("B stopped", lambda: not deploy.member_op(d, "B", "status").get("running"), 60)
        with iris.connect(addrs, user=user, password=password) as c:
            pos0 = c.status()["journal_end"]
            g = c.globals["big"]
            t0 = time.monotonic()
            i = written = 0
            while written < nbytes:
                g[i] = os.urandom(chunk)
                i += 1
                if i % 16 == 0 or chunk * i >= nbytes:
                    written = c.status()["journal_end"] - pos0
            out["write_s"] = time.monotonic() - t0
            out["journal_bytes"] = int(written)
        t_start = time.monotonic()
        deploy.member_op(d, "B", "start")
        wait_until("B caught up (Active)", lambda: deploy.caught_up(d, "B")[0], 3600, 0.02)
        out["active_s"] = time.monotonic() - t_start
        out["active_mb_s"] = out["journal_bytes"] / out["active_s"] / 1e6
    except Exception as e:  # noqa: BLE001 - reported beside the figures
        out["error"] = f"{type(e).__name__}: {e}"
    finally:
        take_down(d, short)
    return out
