"""The systems `bench/bench_peers.py` compares, and what they share.

Each module here owns one system (`irisrep`, `postgres`, `redis`): it checks that the
system is installed (`available()`: why not, or None), starts a primary with one
synchronous copy on 127.0.0.1 in a scratch directory it is given, hands out clients
(one TCP connection each), and stops every process it started by pid (SIGTERM, then
SIGKILL after a timeout), also when the run is interrupted. They share the workload:

- `write(i)`: one node written with a 64-byte value, autocommitted (one commit);
- `tx(i)`: a transaction writing 10 nodes, each statement its own round trip (the
  interactive form every system offers), committed.

A commit returns only when the system says it is durable (or received) on the copy
as configured: nothing here is batched or pipelined across commits.
"""

from __future__ import annotations

import abc
import contextlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

VALUE = "v" * 64  # the 64-byte value of every write
TX_NODES = 10  # nodes per transaction in the tx workload
STOP_TIMEOUT_S = 15.0


class Unavailable(Exception):
    """A peer that cannot run here (not installed, no driver); the message says why."""


class Procs:
    """Every process a system started, stopped by pid: SIGTERM (or the signal given),
    then SIGKILL after a timeout. `stop_all` is safe to call more than once."""

    def __init__(self) -> None:
        self.procs: list[tuple[str, subprocess.Popen]] = []

    def start(self, name: str, cmd: list[str], log: Path, **kw) -> subprocess.Popen:
        with open(log, "ab") as out:
            p = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C in the terminal reaches the bench only
                **kw,
            )
        self.procs.append((name, p))
        return p

    def stop(self, p: subprocess.Popen, sig: int = signal.SIGTERM) -> int | None:
        stop_pid(p.pid, sig, popen=p)
        self.procs = [t for t in self.procs if t[1] is not p]
        return p.returncode

    def stop_all(self, sig: int = signal.SIGTERM) -> None:
        for _name, p in reversed(list(self.procs)):
            self.stop(p, sig)


def stop_pid(pid: int, sig: int = signal.SIGTERM, *, popen: subprocess.Popen | None = None) -> None:
    """Send `sig` to `pid`, wait for it to end; SIGKILL after STOP_TIMEOUT_S."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
    if not _wait_gone(pid, STOP_TIMEOUT_S, popen):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        _wait_gone(pid, STOP_TIMEOUT_S, popen)


def _wait_gone(pid: int, timeout_s: float, popen: subprocess.Popen | None) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if popen is not None:
            if popen.poll() is not None:
                return True
        else:
            try:
                # PermissionError: it exists, owned by another user: still there.
                with contextlib.suppress(PermissionError):
                    os.kill(pid, 0)
            except ProcessLookupError:
                return True
        time.sleep(0.02)
    return False


def free_ports(n: int) -> list[int]:
    """n TCP ports free on 127.0.0.1 right now."""
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def wait_until(what: str, fn, timeout_s: float, interval_s: float = 0.05):
    """Call fn() until it returns a true value (returned); TimeoutError naming `what`.
    Exceptions from fn count as "not yet"; the last one is in the message."""
    deadline = time.monotonic() + timeout_s
    last = None
    while True:
        try:
            got = fn()
            if got:
                return got
        except Exception as e:  # noqa: BLE001 - "not yet"
            last = e
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"{what}: not within {timeout_s:g} s"
                + (f" (last error: {type(last).__name__}: {last})" if last else "")
            )
        time.sleep(interval_s)


def log_tail(path: Path, n: int = 15) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


class System(abc.ABC):
    """One system under test: `start(scratch)`, `client(cid)`, `stop()`.

    `client` may be called in a forked worker process; it must open its own
    connection there."""

    name = "?"
    family = "?"

    def versions(self) -> dict:
        return {}

    @abc.abstractmethod
    def start(self, scratch: Path) -> None:
        """See the class."""

    @abc.abstractmethod
    def client(self, cid: int):
        """See the class."""

    @abc.abstractmethod
    def stop(self) -> None:
        """See the class."""
