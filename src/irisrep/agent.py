"""The per-member supervisor (the host agent's first duties): start, stop, kill, status.

Owns one member's process: `irisrep agent --config MEMBER.toml --control SOCK`
runs `irisrep serve --config MEMBER.toml` as its child and answers requests on a
UNIX socket (one JSON object per line, one reply per line):

    {"op": "status"}    -> {"ok": true, "member": ..., "running": bool, "pid": ...,
                            "exit_code": int|null, "agent_pid": ..., "starts": n}
    {"op": "start"}     -> starts the member if it is not running
    {"op": "stop"}      -> SIGTERM (a clean stop; a primary first hands over to an
                           Active backup), SIGKILL after `stop_timeout_s`
    {"op": "stop-nofailover"} -> SIGUSR1: a clean stop without the handover
    {"op": "kill"}      -> SIGKILL at once (a crash, for tests and `irisrep kill`)
    {"op": "shutdown"}  -> stop the member, then the agent exits

Promises: it never restarts a member on its own (a crashed member stays down until
asked: deciding what happens after a crash is the mirror's job); the socket is
created inside the deployment directory (mode 0600), so only its owner can talk to
it; a bad request gets {"ok": false, "error": ...} and changes nothing. Serving the
journal tail of a member that is down, and saying whether a member is down to its
partner, are the failover issue's additions.
"""

from __future__ import annotations

import json
import logging
import os
import selectors
import signal
import socket
import subprocess
import sys
import time

log = logging.getLogger("irisrep.agent")

AGENT_REQUEST_BYTES_MAX = 4096
AGENT_STOP_TIMEOUT_S = 30.0
UNIX_PATH_BYTES_MAX = 107


class Agent:
    def __init__(self, config_path: str, control_path: str, *, log_path: str | None = None):
        self.config_path = os.path.abspath(config_path)
        self.control_path = os.path.abspath(control_path)
        if len(self.control_path.encode()) > UNIX_PATH_BYTES_MAX:
            raise ValueError(
                f"control socket path is {len(self.control_path)} bytes, more than a UNIX "
                f"socket allows ({UNIX_PATH_BYTES_MAX}): use a shorter deployment directory"
            )
        self.log_path = log_path or os.path.join(os.path.dirname(self.config_path), "member.log")
        from .config import load_config

        self.member = load_config(self.config_path).member_name
        self.child: subprocess.Popen | None = None
        self.starts = 0
        self.exit_code: int | None = None
        self.stopping = False

    # --- the member process -------------------------------------------------------------

    def running(self) -> bool:
        if self.child is None:
            return False
        rc = self.child.poll()
        if rc is not None:
            self.exit_code = rc
            return False
        return True

    def start(self) -> dict:
        if self.running():
            return self.status()
        out = open(self.log_path, "ab")  # noqa: SIM115 - the child keeps it
        try:
            self.child = subprocess.Popen(
                [sys.executable, "-m", "irisrep", "serve", "--config", self.config_path],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        finally:
            out.close()
        self.starts += 1
        self.exit_code = None
        log.warning("agent: started member %s (pid %d)", self.member, self.child.pid)
        return self.status()

    def stop(self, timeout_s: float = AGENT_STOP_TIMEOUT_S, *, nofailover: bool = False) -> dict:
        """A clean stop: SIGTERM (a primary hands over to an Active backup first), or
        SIGUSR1 with `nofailover` (it just stops); SIGKILL after `timeout_s`."""
        if self.running():
            self.child.send_signal(signal.SIGUSR1 if nofailover else signal.SIGTERM)
            try:
                self.child.wait(timeout_s)
            except subprocess.TimeoutExpired:
                log.error(
                    "agent: member %s did not stop in %.0f s: SIGKILL", self.member, timeout_s
                )
                self.child.kill()
                self.child.wait()
            self.running()
        return self.status()

    def kill(self) -> dict:
        if self.running():
            self.child.kill()
            self.child.wait()
            self.running()
        return self.status()

    def status(self) -> dict:
        running = self.running()
        return {
            "ok": True,
            "member": self.member,
            "running": running,
            "pid": self.child.pid if self.child is not None else None,
            "exit_code": self.exit_code,
            "agent_pid": os.getpid(),
            "starts": self.starts,
        }

    # --- the control socket ---------------------------------------------------------------

    def handle(self, line: bytes) -> dict:
        try:
            req = json.loads(line)
            op = req["op"]
        except (ValueError, KeyError, TypeError):
            return {"ok": False, "error": "a request is one JSON object with an 'op'"}
        if op == "status":
            return self.status()
        if op == "start":
            return self.start()
        if op == "stop":
            return self.stop()
        if op == "stop-nofailover":
            return self.stop(nofailover=True)
        if op == "kill":
            return self.kill()
        if op == "shutdown":
            # `irisrep down`: everything stops; no handover between dying members.
            self.stopping = True
            return self.stop(nofailover=True)
        return {"ok": False, "error": f"unknown op {op!r}"}

    def serve(self) -> int:
        if os.path.exists(self.control_path):
            os.unlink(self.control_path)
        srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            srv.bind(self.control_path)
        finally:
            os.umask(old)
        srv.listen(16)
        srv.setblocking(False)
        sel = selectors.DefaultSelector()
        sel.register(srv, selectors.EVENT_READ)
        signal.signal(signal.SIGTERM, lambda *_: setattr(self, "stopping", True))
        signal.signal(signal.SIGINT, lambda *_: setattr(self, "stopping", True))
        self.start()
        try:
            while not self.stopping:
                for _key, _ev in sel.select(timeout=0.2):
                    try:
                        conn, _ = srv.accept()
                    except BlockingIOError:
                        continue
                    with conn:
                        conn.settimeout(5)
                        try:
                            line = _read_line(conn)
                            reply = self.handle(line)
                            conn.sendall(json.dumps(reply).encode() + b"\n")
                        except (OSError, ValueError) as e:
                            log.warning("agent: control request failed: %s", e)
        finally:
            self.stop(nofailover=True)
            sel.close()
            srv.close()
            try:
                os.unlink(self.control_path)
            except FileNotFoundError:
                pass
        return 0


def _read_line(conn) -> bytes:
    buf = b""
    while b"\n" not in buf:
        chunk = conn.recv(AGENT_REQUEST_BYTES_MAX)
        if not chunk:
            break
        buf += chunk
        if len(buf) > AGENT_REQUEST_BYTES_MAX:
            raise ValueError("request too long")
    return buf.split(b"\n", 1)[0]


def call(control_path: str, op: str, timeout_s: float = AGENT_STOP_TIMEOUT_S + 5) -> dict:
    """Send one request to an agent; ConnectionError if no agent answers there."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout_s)
    try:
        try:
            s.connect(control_path)
        except (FileNotFoundError, ConnectionRefusedError) as e:
            raise ConnectionError(f"no agent at {control_path}: {e.strerror}") from None
        s.sendall(json.dumps({"op": op}).encode() + b"\n")
        line = _read_line(s)
    finally:
        s.close()
    if not line:
        raise ConnectionError(f"the agent at {control_path} closed without answering")
    return json.loads(line)


def wait_gone(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            # Reap it if it is our own child (an agent started by this process).
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return True
        except ChildProcessError:
            pass
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False
