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
it; a bad request gets {"ok": false, "error": ...} and changes nothing.

When the member's config gives it an `agent_address`, the agent also listens there
for the mirror's other members (the mirror's framed transport and key handshake,
docs/wire-format.md), so that a backup whose primary went silent can ask the
primary's host (DESIGN.md section 3, "a crashed primary process on a live host"):

    STATUS {"op": "member-status"}      -> STATUS {"member", "down", "pid", "exit_code"}
    STATUS {"op": "force-down"}         -> SIGKILL a hung member, then as member-status
    STATUS {"op": "journal-epochs"}     -> STATUS {"runs": [[start, epoch], ...], "end"}
    STATUS {"op": "journal-tail", "from": P}
        -> JOURNAL frames with the member's journal from P, byte for byte, then
           STATUS {"end": E}; refused while the member runs (ask the member then).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import selectors
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

from .constants import JOURNAL_DIR_NAME, MIRROR_STATE_FILE_NAME, TAIL_SERVED_FILE_NAME

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

        self.config = load_config(self.config_path)
        self.member = self.config.member_name
        self.listener = None
        self.child: subprocess.Popen | None = None
        self.starts = 0
        self.exit_code: int | None = None
        self.stopping = False
        self.nofailover_stop = False  # the member was last stopped with --nofailover

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
        self.nofailover_stop = False
        log.warning("agent: started member %s (pid %d)", self.member, self.child.pid)
        return self.status()

    def stop(self, timeout_s: float = AGENT_STOP_TIMEOUT_S, *, nofailover: bool = False) -> dict:
        """A clean stop: SIGTERM (a primary hands over to an Active backup first), or
        SIGUSR1 with `nofailover` (it just stops); SIGKILL after `timeout_s`."""
        if self.running():
            self.nofailover_stop = nofailover
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
        self._start_listener()
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
            if self.listener is not None:
                self.listener.close()
            self.stop(nofailover=True)
            sel.close()
            srv.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.control_path)
        return 0

    # --- the mirror-facing listener ------------------------------------------------------

    def _start_listener(self) -> None:
        from . import wire

        c = self.config
        addr = c.me.agent_address
        if addr is None:
            return
        self.listener = wire.WireListener(
            tuple(addr),
            mirror=c.mirror_name,
            member=self.member,
            key=c.mirror_key,
            known_members=[m.name for m in c.members if m.name != self.member],
            on_peer=lambda sock, peer: threading.Thread(
                target=self._serve_peer, args=(sock, peer), daemon=True
            ).start(),
        )

    def _hung(self) -> bool:
        """Whether the member process exists but cannot run: stopped (SIGSTOP, a
        debugger) or a zombie, as the kernel reports it in /proc/PID/stat."""
        if not self.running():
            return False
        try:
            with open(f"/proc/{self.child.pid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return False
        return state in ("T", "t", "Z")

    def _member_epoch(self) -> int:
        try:
            with open(self.config.data_dir / MIRROR_STATE_FILE_NAME, "rb") as f:
                return int(json.loads(f.read(65536)).get("epoch", 0))
        except (OSError, ValueError, AttributeError):
            return 0

    def _record_tail_served(self) -> None:
        path = self.config.data_dir / TAIL_SERVED_FILE_NAME
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, f"{time.time()}\n".encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        dfd = os.open(self.config.data_dir, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    def _journal_dir(self) -> str:
        c = self.config
        return str(c.journal_dir if c.journal_dir is not None else c.data_dir / JOURNAL_DIR_NAME)

    def _serve_peer(self, sock, peer) -> None:
        from . import wire
        from .errors import WireError
        from .fileio import RealFS
        from .journal import epoch_runs, read_raw_stream, stream_end
        from .mirror import count_frames

        try:
            reader = wire.FrameReader(sock)
            f = reader.read_frame(idle_timeout_ms=5000)
            if f.type != wire.STATUS:
                raise WireError("payload", f"expected a STATUS request, got type {f.type}")
            req = json.loads(f.payload)
            op = req.get("op") if isinstance(req, dict) else None
            log.warning("agent: %s asks %s", peer.member, op)
            if op == "force-down" or (op == "member-status" and self._hung()):
                # A member that cannot run (stopped, a zombie) is hung: it is forced down
                # before the agent answers, so "down" means it can never commit again.
                log.warning("agent: forcing member %s down (SIGKILL)", self.member)
                self.kill()
                op = "member-status"
            if op == "member-status":
                st = self.status()
                reply = {
                    "member": self.member,
                    "down": not st["running"],
                    "pid": st["pid"],
                    "exit_code": st["exit_code"],
                    "nofailover": self.nofailover_stop,
                }
                if reply["down"]:
                    # What a takeover needs: where its journal ends, the epoch it had.
                    reply["journal_end"] = stream_end(RealFS(), self._journal_dir())
                    reply["epoch"] = self._member_epoch()
                wire.send_frame(sock, wire.STATUS, 0, json.dumps(reply).encode())
            elif op == "journal-epochs":
                # Where the member's journal stands (read only, the member may run):
                # epoch runs and end, so a taking-over backup can drop a tail of its
                # own that this journal does not have before it fetches the rest.
                runs, end = epoch_runs(RealFS(), self._journal_dir())
                body = {"runs": [list(r) for r in runs], "end": end}
                wire.send_frame(sock, wire.STATUS, 0, json.dumps(body).encode())
            elif op == "journal-tail":
                pos = req.get("from")
                if not isinstance(pos, int) or pos < 0:
                    raise WireError("payload", f"bad journal-tail position {pos!r}")
                if self.running():
                    raise WireError("payload", "the member is running: ask it, not its agent")
                # Recorded (durably) before a byte is served: the partner may now take
                # over with it, so the member must never come back as primary on its
                # own word (member.py reads this file on start).
                self._record_tail_served()
                fs = RealFS()
                while True:
                    data = read_raw_stream(fs, self._journal_dir(), pos, None, 4 << 20)
                    if not data:
                        break
                    payload = struct.pack("<I", count_frames(data)) + data
                    wire.send_frame(sock, wire.JOURNAL, 0, payload)
                    pos += len(data)
                wire.send_frame(sock, wire.STATUS, 0, json.dumps({"end": pos}).encode())
            else:
                raise WireError("payload", f"unknown agent request {op!r}")
        except (OSError, ValueError, WireError) as e:
            log.warning("agent: request from %s failed: %s", peer.member, e)
        finally:
            sock.close()


def ask(
    address, *, mirror: str, member: str, key, op: str, source_host: str | None = None, **args
) -> dict:
    """Ask a host agent one question (member-status, force-down); its JSON answer.
    OSError or WireError when the agent cannot be reached: the host may be gone.
    `source_host`: the asking member's own address (partitions see who asks)."""
    from . import wire

    sock, _peer = wire.connect(
        tuple(address),
        mirror=mirror,
        member=member,
        key=key,
        timeout_ms=2000,
        source_host=source_host,
    )
    try:
        wire.send_frame(sock, wire.STATUS, 0, json.dumps({"op": op, **args}).encode())
        f = wire.FrameReader(sock).read_frame(idle_timeout_ms=5000)
        if f.type != wire.STATUS:
            raise wire.WireError("payload", f"unexpected frame type {f.type}")
        return json.loads(f.payload)
    finally:
        sock.close()


def fetch_tail(
    address,
    *,
    mirror: str,
    member: str,
    key,
    from_position: int,
    source_host: str | None = None,
) -> bytes:
    """The journal of a member that is down, from `from_position`, through its host
    agent, exactly as written (the caller verifies it by appending it)."""
    from . import wire

    sock, _peer = wire.connect(
        tuple(address),
        mirror=mirror,
        member=member,
        key=key,
        timeout_ms=2000,
        source_host=source_host,
    )
    try:
        wire.send_frame(
            sock, wire.STATUS, 0, json.dumps({"op": "journal-tail", "from": from_position}).encode()
        )
        reader = wire.FrameReader(sock)
        out = []
        while True:
            f = reader.read_frame(idle_timeout_ms=10000)
            if f.type == wire.JOURNAL:
                wire.decode_journal_batch(f.payload)
                out.append(bytes(memoryview(f.payload)[4:]))
            elif f.type == wire.STATUS:
                end = json.loads(f.payload).get("end")
                data = b"".join(out)
                if end != from_position + len(data):
                    raise wire.WireError("payload", f"journal tail ends at {end}, got {len(data)}")
                return data
            else:
                raise wire.WireError("payload", f"unexpected frame type {f.type}")
    finally:
        sock.close()


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
