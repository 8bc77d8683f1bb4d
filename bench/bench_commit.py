"""Commit latency and throughput of a mirrored primary, beside the rtt + fdatasync floor.

The primary is an in-process `irisrep.member.Member` (the first failover member, so
its role is "primary"); the backup and the async run as separate processes (`python -m
irisrep serve --config FILE`, or, while the client listener module is not there, a
small inline script hosting `Member(config, client_listener=False)`). Clients are
threads in the primary's process doing autocommitted one-node SETs of a 64-byte value
(`db.globals["bench"][client, i] = value`): each returns after the local fdatasync
and the Active backup's acknowledgement at the mirror's ack level.

Configurations (--configs): alone (no backup running), received (backup, ack
"received"), durable (backup, ack "durable"), durable+async (plus one async member).
For each: one client's latency (p50/p99/p99.9 over --seconds) and commits/s with
1, 4, 16 and 64 clients (--clients, --seconds each). Floors measured in the same run,
half before and half after the configurations: fdatasync of one 8 KiB block overwrite
in the scratch directory (the same O_DIRECT setting as the members' journals), and
the round trip of 64 bytes over loopback TCP to another process.
Goals: durable 1-client p50 <= 1.5 x (rtt + fdatasync) p50; 16 clients >= 6 x one.

    python bench/bench_commit.py [--seconds 2] [--clients 1,4,16,64]
        [--configs alone,received,durable,durable+async] [--qos-ms 8000]
        [--dir PARENT] [--keep] [--json out.json]

The scratch directory (bench_commit_tmp*) is made under --dir (default: the current
directory, not /tmp, which may be tmpfs) and removed at the end unless --keep. Every
member process is stopped at the end (SIGTERM, SIGKILL after a timeout), also on an
error or Ctrl-C. Exit status 1 if a configuration could not be measured.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

import numpy as np
from _machine import machine_info, overwrite_fdatasync_ns

# The installed irisrep (`pip install .`, or `pip install -e .` for a checkout).
from irisrep.config import Address, MemberConfig, MirrorMember
from irisrep.constants import QOS_TIMEOUT_DEFAULT_MS
from irisrep.fileio import RealFS
from irisrep.member import Member

CONFIGS = {
    # name: (backup running, ack level, asyncs)
    "alone": (False, "durable", 0),
    "received": (True, "received", 0),
    "durable": (True, "durable", 0),
    "durable+async": (True, "durable", 1),
}
CLIENTS = (1, 4, 16, 64)
VALUE = "v" * 64
BLOCK = 8192
KEY = bytes(range(32))
GOAL_LATENCY_RATIO = 1.5  # durable 1-client p50 / (rtt p50 + fdatasync p50)
GOAL_SCALE_16 = 6.0  # 16 clients' commits/s / one client's
STOP_TIMEOUT_S = 10.0

# A member hosted by a small script: used while `irisrep serve` cannot start (its
# client listener module, irisrep.server, is not there yet).
MEMBER_SCRIPT = r"""
import logging, signal, sys, threading
logging.basicConfig(level=logging.WARNING,
                    format="%(asctime)s %(name)s %(levelname)s %(message)s")
from irisrep.config import load_config
from irisrep.member import Member
stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stop.set())
signal.signal(signal.SIGINT, lambda *_: stop.set())
member = Member(load_config(sys.argv[1]), client_listener=False).start()
print(f"member {member.name} serving as {member.role}", flush=True)
try:
    while not stop.wait(0.5):
        pass
finally:
    member.close()
"""

# The other end of the loopback round trip: answers each 64-byte message with it.
# With `DIR BLOCK_BYTES` arguments it is the backup's half of the minimal mirrored
# commit (mirrored_commit_floor): before answering, it overwrites one block of its
# own preallocated file in DIR and fdatasyncs it.
ECHO_SCRIPT = r"""
import os, socket, sys
f = None
if len(sys.argv) > 2:
    from irisrep.fileio import RealFS
    f = RealFS().open(os.path.join(sys.argv[1], "floor_echo.dat"), create=True, direct="optional")
    size = 4 << 20
    f.pwrite(0, bytes(size))
    f.fdatasync()
    block = b"e" * int(sys.argv[2])
s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen(1)
print(s.getsockname()[1], flush=True)
c, _ = s.accept()
c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
buf = bytearray(64)
view = memoryview(buf)
i = 0
while True:
    got = 0
    while got < 64:
        n = c.recv_into(view[got:])
        if n == 0:
            sys.exit(0)
        got += n
    if f is not None:
        f.pwrite((i * len(block)) % size, block)
        f.fdatasync()
        i += 1
    c.sendall(buf)
"""


# --- child processes --------------------------------------------------------------------


class Children:
    """Every process this bench started; `stop_all` ends them (TERM, then KILL)."""

    def __init__(self) -> None:
        self.procs: list[tuple[str, subprocess.Popen, Path | None]] = []

    def start(self, name: str, cmd: list[str], log_path: Path | None, **kw) -> subprocess.Popen:
        env = dict(os.environ)
        env["PYTHONUNBUFFERED"] = "1"
        if log_path is not None:
            out = open(log_path, "ab")  # noqa: SIM115 (closed below, the child keeps its copy)
            try:
                p = subprocess.Popen(
                    cmd,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=env,
                    start_new_session=True,
                    **kw,
                )
            finally:
                out.close()
        else:
            p = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, env=env, start_new_session=True, **kw
            )
        self.procs.append((name, p, log_path))
        return p

    def stop(self, p: subprocess.Popen) -> int | None:
        if p.poll() is None:
            try:
                p.send_signal(signal.SIGTERM)
                p.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                p.kill()
                try:
                    p.wait(STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    pass
            except ProcessLookupError:
                pass
        for stream in (p.stdout, p.stderr, p.stdin):
            if stream is not None:
                stream.close()
        self.procs = [t for t in self.procs if t[1] is not p]
        return p.returncode

    def stop_all(self) -> None:
        for _name, p, _log in list(self.procs):
            self.stop(p)


def log_tail(path: Path | None, n: int = 30) -> list[str]:
    if path is None:
        return []
    try:
        return path.read_text(errors="replace").splitlines()[-n:]
    except OSError:
        return []


# --- floors -----------------------------------------------------------------------------


def fdatasync_floor(d: str, n: int, name: str = "floor.dat") -> tuple[list[int], bool]:
    """Overwrite one 8 KiB block and fdatasync it; ns each (_machine's floor)."""
    return overwrite_fdatasync_ns(RealFS(), d, n, BLOCK, name=name)


def concurrent_fdatasync_floor(d: str, n: int) -> list[int]:
    """The same overwrite + fdatasync while a second process does the same on another
    file of the same filesystem: what a primary and its backup pay when they share one
    disk, as on this one machine (their fdatasyncs overlap on every commit)."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    stop = ctx.Event()

    def other() -> None:
        overwrite_fdatasync_ns(RealFS(), d, 0, BLOCK, name="floor2.dat", until=stop)

    p = ctx.Process(target=other, daemon=True)
    p.start()
    try:
        time.sleep(0.05)
        out, _direct = fdatasync_floor(d, n)
    finally:
        stop.set()
        p.join(10)
    return out


def _timed_round_trips(children: Children, name: str, argv: list[str], n: int, meanwhile=None):
    """Start the answering process `argv` (it prints its port, then answers every 64
    bytes with 64 bytes), then n round trips to it after 50 of warm-up; ns each.
    `meanwhile(i)` runs between the send and the read of the answer."""
    p = children.start(name, argv, None, stdout=subprocess.PIPE)
    try:
        port = int(p.stdout.readline())
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        try:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            msg = b"p" * 64
            view = memoryview(bytearray(64))
            out = []
            for i in range(n + 50):
                t0 = time.perf_counter_ns()
                s.sendall(msg)
                if meanwhile is not None:
                    meanwhile(i)
                got = 0
                while got < 64:
                    k = s.recv_into(view[got:])
                    if k == 0:
                        raise ConnectionError(f"the {name} process closed the connection")
                    got += k
                if i >= 50:  # warm-up
                    out.append(time.perf_counter_ns() - t0)
            return out
        finally:
            s.close()
    finally:
        children.stop(p)


def rtt_floor(children: Children, n: int) -> list[int]:
    """Round trip of 64 bytes over 127.0.0.1 to another process; ns each."""
    return _timed_round_trips(children, "echo", [sys.executable, "-c", ECHO_SCRIPT], n)


def mirrored_commit_floor(children: Children, d: str, n: int) -> list[int]:
    """The least a mirrored `durable` commit can cost on this machine; ns each.

    One thread on each side and nothing else: send 64 bytes to another process,
    overwrite + fdatasync one block here while that process does the same on its own
    file and answers, then read the answer. Those are the system calls and the two
    wake-ups every such commit needs (ship, both journals durable, ack), with both
    files on the one disk the members share here. No engine, no framing, no
    checksums, no hand-off between threads."""
    f = RealFS().open(os.path.join(d, "floor_primary.dat"), create=True, direct="optional")
    try:
        size = 4 << 20
        f.pwrite(0, bytes(size))
        f.fdatasync()
        block = b"p" * BLOCK

        def write_and_sync(i: int) -> None:
            f.pwrite((i * BLOCK) % size, block)
            f.fdatasync()

        argv = [sys.executable, "-c", ECHO_SCRIPT, d, str(BLOCK)]
        return _timed_round_trips(children, "sync-echo", argv, n, write_and_sync)
    finally:
        f.close()


# --- the mirror ---------------------------------------------------------------------------


def free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def mirror_configs(base: Path, *, ack_level: str, qos_ms: int, asyncs: int) -> list[MemberConfig]:
    """Configs of A (the primary), B (the backup) and C1..Cn (asyncs) on 127.0.0.1
    (as tests/mirrorkit.py)."""
    names = ["A", "B"] + [f"C{i + 1}" for i in range(asyncs)]
    ports = free_ports(2 * len(names))
    members = tuple(
        MirrorMember(
            name=n,
            kind="failover" if i < 2 else "async-dr",
            mirror_address=Address("127.0.0.1", ports[2 * i]),
            client_address=Address("127.0.0.1", ports[2 * i + 1]),
        )
        for i, n in enumerate(names)
    )
    return [
        MemberConfig(
            mirror_name="BENCH",
            member_name=n,
            members=members,
            data_dir=(base / n).resolve(),
            mirror_key=KEY,
            ack_level=ack_level,
            qos_timeout_ms=qos_ms,
            direct_io="optional",
        )
        for n in names
    ]


def member_command(mode: str, config_path: Path) -> list[str]:
    if mode == "serve":
        return [sys.executable, "-m", "irisrep", "serve", "--config", str(config_path)]
    return [sys.executable, "-c", MEMBER_SCRIPT, str(config_path)]


def serve_available() -> bool:
    """Whether `irisrep serve` can start a member (it needs irisrep.server)."""
    try:
        return importlib.util.find_spec("irisrep.server") is not None
    except (ImportError, ValueError):
        return False


class LogCapture(logging.Handler):
    """The primary's log lines (this process), with their time."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[tuple[float, str, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg = record.getMessage()
        except Exception:  # a bad format string must not stop the bench
            msg = str(record.msg)
        if record.exc_info:
            msg += "\n" + "".join(traceback.format_exception(*record.exc_info))
        self.lines.append((record.created, record.levelname, f"{record.name}: {msg}"))


class Mirror:
    """One configuration's members: the in-process primary and its member processes."""

    def __init__(self, base: Path, children: Children, cfg: tuple, qos_ms: int, mode: str):
        self.base = base
        self.children = children
        self.backup, self.ack_level, self.asyncs = cfg
        self.qos_ms = qos_ms
        self.mode = mode
        self.configs = mirror_configs(
            base, ack_level=self.ack_level, qos_ms=qos_ms, asyncs=self.asyncs
        )
        self.primary: Member | None = None
        self.procs: dict[str, tuple[subprocess.Popen, Path]] = {}
        self.notes: list[str] = []

    def _spawn(self, name: str) -> None:
        path = self.base / f"{name}.toml"
        log_path = self.base / f"{name}.log"
        p = self.children.start(name, member_command(self.mode, path), log_path)
        self.procs[name] = (p, log_path)

    def start(self, timeout_s: float = 60.0) -> None:
        self.base.mkdir(parents=True)
        for c in self.configs:
            p = self.base / f"{c.member_name}.toml"
            p.write_text(c.to_toml())
            p.chmod(0o600)  # it holds the key inline
        self.primary = Member(self.configs[0], client_listener=False).start()
        if self.primary.role != "primary":
            raise RuntimeError(f"member A started as {self.primary.role}, not primary")
        others = (["B"] if self.backup else []) + [f"C{i + 1}" for i in range(self.asyncs)]
        for name in others:
            self._spawn(name)
        rep = self.primary.replicator
        deadline = time.monotonic() + timeout_s
        want_async = {f"C{i + 1}" for i in range(self.asyncs)}
        while True:
            self._check_procs()
            listed = {p["member"] for p in self.primary.status().get("peers", [])}
            ready = (not self.backup or rep.active is not None) and want_async <= listed
            if ready:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"not ready after {timeout_s:g} s: backup Active="
                    f"{rep.active is not None}, peers listed={sorted(listed)}, "
                    f"events={[e[2] for e in list(rep.events)[-5:]]}"
                )
            time.sleep(0.02)

    def _check_procs(self) -> None:
        for name, (p, log_path) in list(self.procs.items()):
            if p.poll() is None:
                continue
            tail = log_tail(log_path, 15)
            if self.mode == "serve":
                # `irisrep serve` could not start: fall back to the inline member.
                self.notes.append(
                    f"{name}: `irisrep serve` exited with {p.returncode}; fell back to the "
                    f"inline member script. Its output: " + " | ".join(tail)
                )
                self.children.stop(p)
                self.mode = "inline"
                for other, (q, _lp) in list(self.procs.items()):
                    if other != name:
                        self.children.stop(q)
                        self._spawn(other)
                self._spawn(name)
                continue
            raise RuntimeError(
                f"member {name} exited with {p.returncode}:\n    " + "\n    ".join(tail)
            )

    def stop(self) -> dict[str, int | None]:
        """Close the primary, then stop the member processes; their exit codes."""
        codes: dict[str, int | None] = {}
        if self.primary is not None:
            try:
                self.primary.close()
            finally:
                self.primary = None
        for name, (p, _lp) in self.procs.items():
            codes[name] = self.children.stop(p)
        return codes

    def logs(self) -> dict[str, list[str]]:
        return {name: log_tail(lp, 200) for name, (_p, lp) in self.procs.items()}


# --- the clients ------------------------------------------------------------------------


def latency_run(g, seconds: float, client: int) -> list[int]:
    """One client committing for `seconds`; ns per commit."""
    for i in range(50):  # warm-up
        g[client, -1 - i] = VALUE
    out = []
    deadline = time.perf_counter_ns() + int(seconds * 1e9)
    i = 0
    while True:
        t0 = time.perf_counter_ns()
        g[client, i] = VALUE
        t1 = time.perf_counter_ns()
        out.append(t1 - t0)
        i += 1
        if t1 >= deadline:
            return out


def throughput_run(db, clients: int, seconds: float, first_id: int) -> tuple[float, int]:
    """`clients` threads each committing until the deadline: (commits/s, commits)."""
    counts = [0] * clients
    errors: list[BaseException] = []
    start = threading.Barrier(clients + 1)
    stop = threading.Event()

    def body(t: int) -> None:
        g = db.globals["bench"]
        cid = first_id + t
        try:
            start.wait()
            i = 0
            while not stop.is_set():
                g[cid, i] = VALUE
                i += 1
            counts[t] = i
        except threading.BrokenBarrierError:
            pass
        except BaseException as e:
            errors.append(e)
            start.abort()

    threads = [
        threading.Thread(target=body, args=(t,), name=f"bench-client-{t}", daemon=True)
        for t in range(clients)
    ]
    for th in threads:
        th.start()
    try:
        start.wait()
        t0 = time.perf_counter()
        time.sleep(seconds)
    finally:
        stop.set()
        start.abort()
        for th in threads:
            th.join()
    elapsed = time.perf_counter() - t0
    if errors:
        raise errors[0]
    return sum(counts) / elapsed, sum(counts)


def percentiles_us(ns: list[int]) -> dict:
    a = np.asarray(ns, dtype=np.float64) / 1e3
    p50, p99, p999 = np.percentile(a, [50, 99, 99.9])
    return {
        "n": len(ns),
        "p50_us": float(p50),
        "p99_us": float(p99),
        "p99.9_us": float(p999),
        "mean_us": float(a.mean()),
        "max_us": float(a.max()),
    }


def measure(mirror: Mirror, seconds: float, clients: list[int]) -> dict:
    primary = mirror.primary
    db = primary.database
    rep = primary.replicator
    res: dict = {"throughput": []}

    def delta(s0: dict) -> dict:
        return {k: rep.stats[k] - s0.get(k, 0) for k in rep.stats}

    s0 = dict(rep.stats)
    lat = latency_run(db.globals["bench"], seconds, 0)
    res["latency"] = percentiles_us(lat)
    res["latency"]["commits_s"] = len(lat) / (sum(lat) / 1e9)
    res["latency"]["mirror_stats"] = delta(s0)
    res["latency"]["backup_active_after"] = rep.active is not None
    first_id = 1
    for n in clients:
        s0 = dict(rep.stats)
        f0 = getattr(db.journal, "fsyncs", 0)
        rate, count = throughput_run(db, n, seconds, first_id)
        syncs = getattr(db.journal, "fsyncs", 0) - f0
        first_id += n
        res["throughput"].append(
            {
                "clients": n,
                "commits_s": rate,
                "commits": count,
                "local_fdatasyncs": syncs,
                "commits_per_fdatasync": count / syncs if syncs else None,
                "mirror_stats": delta(s0),
                "backup_active_after": rep.active is not None,
            }
        )
    one = next((r["commits_s"] for r in res["throughput"] if r["clients"] == 1), None)
    for r in res["throughput"]:
        r["x_one"] = r["commits_s"] / one if one else None
    res["peers"] = primary.status().get("peers", [])
    return res


# --- the run --------------------------------------------------------------------------------


def run_config(name, cfg, scratch: Path, children, args, mode, capture) -> tuple[dict, str]:
    backup, ack, asyncs = cfg
    out: dict = {"backup": backup, "ack_level": ack if backup else None, "asyncs": asyncs}
    mirror = Mirror(scratch / name.replace("+", "_"), children, cfg, args.qos_ms, mode)
    n_lines = len(capture.lines)
    t_start = time.time()
    t_stop = None
    try:
        mirror.start()
        out["ready_s"] = time.time() - t_start
        out["member_command"] = mirror.mode
        out.update(measure(mirror, args.seconds, args.clients))
        out["events"] = [list(e) for e in mirror.primary.replicator.events]
    except Exception as e:
        out["error"] = f"{type(e).__name__}: {e}"
        if mirror.primary is not None and mirror.primary.replicator is not None:
            out["events"] = [list(e) for e in mirror.primary.replicator.events]
    finally:
        t_stop = time.time()
        try:
            out["exit_codes"] = mirror.stop()
        except Exception as e:
            out.setdefault("error", f"stopping: {type(e).__name__}: {e}")
        out["notes"] = mirror.notes
        logs = mirror.logs()
        logs["A (primary, this process)"] = [
            f"{stamp(t)} {msg.split(': ', 1)[0]} {lvl} {msg.split(': ', 1)[-1]}"
            for t, lvl, msg in capture.lines[n_lines:]
        ]
        out["logs"] = logs
        out["measured_until"] = t_stop
    return out, mirror.mode


def stamp(t: float) -> str:
    """`t` as logging's asctime (what the member processes print)."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) + f",{int(t % 1 * 1000):03d}"


def line_time(line: str) -> float | None:
    try:
        head, ms = line[:23].split(",")
        return time.mktime(time.strptime(head, "%Y-%m-%d %H:%M:%S")) + int(ms) / 1000
    except ValueError:
        return None


SUSPICIOUS = (
    "ERROR",
    "CRITICAL",
    "Traceback",
    "Error",
    "no longer Active",
    "fenced",
    "QoS",
    "ended",
    "failed",
    "disconnected",
    "refused",
    "stopped",
)


def suspicious(line: str, until: float | None) -> bool:
    """A log line worth showing: a problem seen while measuring (not at shutdown)."""
    if not any(w in line for w in SUSPICIOUS):
        return False
    t = line_time(line)
    return until is None or t is None or t <= until


def report(res: dict) -> None:
    m = res["machine"]
    fl = res["floors"]
    print(
        f"mirrored commit bench: {m['fstype']} at {m['mount']}, {m['cpus']} cpus, "
        f"python {m['python']}, members via {res.get('member_command', '?')}, load average "
        f"{m['loadavg_before'][0]:.2f} before, {m['loadavg_after'][0]:.2f} after"
    )
    print(
        f"floors: fdatasync 8 KiB (O_DIRECT={fl['fdatasync_direct']}) p50 "
        f"{fl['fdatasync']['p50_us']:.0f} us, p99 {fl['fdatasync']['p99_us']:.0f} us;  "
        f"loopback rtt 64 B p50 {fl['rtt']['p50_us']:.0f} us, p99 {fl['rtt']['p99_us']:.0f} us;  "
        f"rtt + fdatasync p50 {fl['rtt_plus_fdatasync_p50_us']:.0f} us"
    )
    clients = res["args"]["clients"]
    print(f"one client's latency and commits/s by clients ({res['args']['seconds']:g} s each)")
    head = f"  {'config':<15}{'p50 us':>9}{'p99 us':>9}{'p99.9 us':>10}"
    head += "".join(f"{f'{n} cl/s':>10}" for n in clients)
    head += f"{'16/1':>7}"
    print(head)
    for name, r in res["configs"].items():
        if "latency" not in r:
            print(f"  {name:<15}FAILED: {r.get('error', '?')}")
            continue
        lat = r["latency"]
        flag = "" if lat["backup_active_after"] or not r["backup"] else "*"
        line = f"  {name:<15}{lat['p50_us']:>9.0f}{lat['p99_us']:>9.0f}{lat['p99.9_us']:>10.0f}"
        for row in r["throughput"]:
            degraded = row["mirror_stats"].get("alone", 0) and r["backup"]
            cell = f"{row['commits_s']:.0f}" + ("*" if degraded else "")
            line += f"{cell:>10}"
        s16 = r.get("scale_16_over_1")
        line += f"{(f'{s16:.1f}x' if s16 else '-'):>7}{flag}"
        print(line)
        if r.get("error"):
            print(f"    error: {r['error']}")
    if any(
        r.get("backup")
        and (
            any(row["mirror_stats"].get("alone", 0) for row in r.get("throughput", []))
            or not r.get("latency", {}).get("backup_active_after", True)
        )
        for r in res["configs"].values()
    ):
        print("  * the backup was not Active for some commits (they returned unacknowledged)")
    ready = [
        f"{name} {r['ready_s']:.2f} s"
        for name, r in res["configs"].items()
        if r.get("backup") and "ready_s" in r
    ]
    if ready:
        print(
            "  members started until the backup was Active (and the async listed): "
            + ", ".join(ready)
        )
    g = res["goals"]
    if g.get("latency_ratio") is not None:
        ok = "ok" if g["latency_ratio"] <= GOAL_LATENCY_RATIO else "MISSED"
        print(
            f"durable 1-client p50 / (rtt + fdatasync) p50 = {g['latency_ratio']:.2f}x "
            f"(goal <= {GOAL_LATENCY_RATIO}x: {ok})"
        )
        if g.get("latency_ratio_same_disk") is not None:
            fl = res["floors"]
            print(
                f"  (both members on one disk here: two overlapping fdatasyncs p50 "
                f"{fl['fdatasync_concurrent']['p50_us']:.0f} us; durable p50 / (rtt + that) "
                f"= {g['latency_ratio_same_disk']:.2f}x, for information)"
            )
        if g.get("latency_ratio_minimal") is not None:
            mfl = res["floors"]["mirrored_commit"]
            print(
                f"  (the minimal mirrored commit here, one thread a side doing only its "
                f"system calls: p50 {mfl['p50_us']:.0f} us = "
                f"{g['minimal_over_rtt_plus_fdatasync']:.2f}x rtt + fdatasync; durable p50 / "
                f"that = {g['latency_ratio_minimal']:.2f}x, for information)"
            )
    for name, r in res["configs"].items():
        s16 = r.get("scale_16_over_1")
        if s16:
            ok = "ok" if s16 >= GOAL_SCALE_16 else "MISSED"
            print(
                f"{name}: 16 clients / 1 client commits/s = {s16:.1f}x "
                f"(goal >= {GOAL_SCALE_16:g}x: {ok})"
            )
    for name, r in res["configs"].items():
        for note in r.get("notes", []):
            print(f"note [{name}]: {note}")
        bad = [
            (who, line)
            for who, lines in r.get("logs", {}).items()
            for line in lines
            if suspicious(line, r.get("measured_until"))
        ]
        for who, line in bad[:20]:
            print(f"log [{name}] {who}: {line}")
        if len(bad) > 20:
            print(f"log [{name}]: ... {len(bad) - 20} more such lines (see --json)")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=2.0, help="per latency run and point")
    ap.add_argument("--clients", default=",".join(map(str, CLIENTS)), help="e.g. 1,4,16,64")
    ap.add_argument("--configs", default=",".join(CONFIGS), help=f"subset of {','.join(CONFIGS)}")
    ap.add_argument("--qos-ms", type=int, default=QOS_TIMEOUT_DEFAULT_MS)
    ap.add_argument("--floor-n", type=int, default=1000, help="samples per floor")
    ap.add_argument("--dir", default=".", help="parent of the scratch directory")
    ap.add_argument("--keep", action="store_true", help="keep the scratch directory")
    ap.add_argument(
        "--member-cmd",
        choices=("auto", "serve", "inline"),
        default="auto",
        help="how member processes run: `irisrep serve` or an inline script",
    )
    ap.add_argument("--json", default=None, help="write the figures here")
    args = ap.parse_args(argv)
    try:
        args.clients = [int(x) for x in args.clients.split(",") if x]
    except ValueError:
        ap.error("--clients: a comma-separated list of integers")
    if not args.clients or min(args.clients) < 1:
        ap.error("--clients: at least one count, each >= 1")
    configs = [c for c in args.configs.split(",") if c]
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown or not configs:
        ap.error(f"--configs: unknown {unknown}; choose from {','.join(CONFIGS)}")
    if args.seconds <= 0 or args.floor_n < 2:
        ap.error("--seconds must be > 0 and --floor-n >= 2")
    mode = args.member_cmd
    if mode == "auto":
        mode = "serve" if serve_available() else "inline"

    # SIGTERM ends the run like Ctrl-C: the finally blocks stop every member.
    def _terminate(_signo, _frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _terminate)

    capture = LogCapture()
    ilog = logging.getLogger("irisrep")
    ilog.addHandler(capture)
    ilog.setLevel(logging.INFO)
    ilog.propagate = False

    os.makedirs(args.dir, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="bench_commit_tmp", dir=args.dir)).resolve()
    children = Children()
    res: dict = {
        "machine": machine_info(str(scratch)),
        "args": {
            "seconds": args.seconds,
            "clients": args.clients,
            "configs": configs,
            "qos_ms": args.qos_ms,
            "floor_n": args.floor_n,
            "value_bytes": len(VALUE),
        },
        "configs": {},
        "goals": {"latency_ratio_max": GOAL_LATENCY_RATIO, "scale_16_min": GOAL_SCALE_16},
    }
    failed = False
    try:
        half = args.floor_n // 2
        fs_a, direct = fdatasync_floor(str(scratch), half)
        rtt_a = rtt_floor(children, half)
        for name in configs:
            out, mode = run_config(name, CONFIGS[name], scratch, children, args, mode, capture)
            res["configs"][name] = out
            failed |= "error" in out
        fs_b, _ = fdatasync_floor(str(scratch), args.floor_n - half)
        rtt_b = rtt_floor(children, args.floor_n - half)
        fs_c = concurrent_fdatasync_floor(str(scratch), args.floor_n)
        mc_floor = mirrored_commit_floor(children, str(scratch), args.floor_n)
        res["member_command"] = mode
        fl = res["floors"] = {
            "fdatasync": percentiles_us(fs_a + fs_b),
            "fdatasync_direct": direct,
            "rtt": percentiles_us(rtt_a + rtt_b),
        }
        fl["rtt_plus_fdatasync_p50_us"] = fl["fdatasync"]["p50_us"] + fl["rtt"]["p50_us"]
        fl["fdatasync_concurrent"] = percentiles_us(fs_c)
        fl["rtt_plus_concurrent_fdatasync_p50_us"] = (
            fl["fdatasync_concurrent"]["p50_us"] + fl["rtt"]["p50_us"]
        )
        fl["mirrored_commit"] = percentiles_us(mc_floor)
        for r in res["configs"].values():
            tp = {row["clients"]: row["commits_s"] for row in r.get("throughput", [])}
            r["scale_16_over_1"] = tp[16] / tp[1] if 16 in tp and 1 in tp and tp[1] else None
        dur = res["configs"].get("durable", {})
        res["goals"]["latency_ratio"] = (
            dur["latency"]["p50_us"] / fl["rtt_plus_fdatasync_p50_us"] if "latency" in dur else None
        )
        res["goals"]["latency_ratio_same_disk"] = (
            dur["latency"]["p50_us"] / fl["rtt_plus_concurrent_fdatasync_p50_us"]
            if "latency" in dur
            else None
        )
        res["goals"]["latency_ratio_minimal"] = (
            dur["latency"]["p50_us"] / fl["mirrored_commit"]["p50_us"] if "latency" in dur else None
        )
        res["goals"]["minimal_over_rtt_plus_fdatasync"] = (
            fl["mirrored_commit"]["p50_us"] / fl["rtt_plus_fdatasync_p50_us"]
        )
        res["goals"]["scale_16"] = {k: r.get("scale_16_over_1") for k, r in res["configs"].items()}
    except KeyboardInterrupt:
        print("interrupted: stopping the members", file=sys.stderr)
        failed = True
        res["interrupted"] = True
    finally:
        children.stop_all()
        res["machine"]["loadavg_after"] = os.getloadavg()
        if args.keep:
            print(f"scratch directory kept: {scratch}", file=sys.stderr)
        else:
            shutil.rmtree(scratch, ignore_errors=True)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(res, f, indent=2, default=str)
    if "floors" in res:
        report(res)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
