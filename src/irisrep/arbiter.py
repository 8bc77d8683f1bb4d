"""The arbiter: a third party that tells each failover member whether it still sees
the other (DESIGN.md section 3; IRIS's ISCAgent in the arbiter role).

Owns `irisrep arbiter --listen HOST:PORT`: failover members of any number of mirrors
connect and keep a heartbeat; on every heartbeat the arbiter answers whether the
member's partner (the other failover member of the same mirror) is connected and was
heard within `silence_ms`. That answer is all a backup needs to know before taking
over from a primary whose host it lost: "the arbiter lost it too".

Wire: the mirror transport's frames (`docs/wire-format.md`: length checked before
allocating, xxh3 on every frame), without the key handshake (one arbiter serves
mirrors with different keys). A member opens with a STATUS frame
`{"mirror": M, "member": X, "partner": Y}`, then, every heartbeat, either a
HEARTBEAT frame or a STATUS frame `{"status": {...}}` carrying its mirror core's
status (`mirrorcore.PeerStatus`); each is answered with a STATUS frame
`{"sees_partner": bool, "partner_silent_ms": ..., "report": {...}}` where the report
is what the arbiter recorded (`mirrorcore.ArbiterState`: epoch, mode, mode_seq). A
backup that lost an arbiter-controlled primary sends `{"ask": EPOCH}` and gets
`{"answer": {"epoch": EPOCH, "granted": bool}}`: a takeover is granted once per
epoch, recorded (and, with a state file, fsynced) before it is answered.
A malformed frame or hello closes that connection (logged); the arbiter keeps
serving the others. `ArbiterClient` is the member's side.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time

from . import mirrorcore as mc
from . import wire
from .constants import (
    ARBITER_CONNECTIONS_MAX,
    ARBITER_HEARTBEAT_MS,
    ARBITER_HELLO_TIMEOUT_MS,
    ARBITER_SILENCE_MS,
)
from .errors import WireError

log = logging.getLogger("irisrep.arbiter")


class Arbiter:
    """The arbiter server. `Arbiter(("127.0.0.1", 0)).address`; `close()`."""

    def __init__(
        self,
        address=("127.0.0.1", 0),
        *,
        silence_ms: int = ARBITER_SILENCE_MS,
        state_path: str | None = None,
    ):
        self.silence_ms = silence_ms
        self.state_path = state_path
        self._lock = threading.Lock()
        self._states: dict[str, mc.ArbiterState] = {}
        self._granted: dict[str, dict] = {}
        if state_path is not None and os.path.exists(state_path):
            with open(state_path, "rb") as f:
                self._granted = json.loads(f.read(1 << 20))
            for mirror, g in self._granted.items():
                self._states[mirror] = mc.ArbiterState(silence_ms, int(g["epoch"]), g["primary"])
        # (mirror, member) -> (connection id, monotonic time last heard)
        self._seen: dict[tuple[str, str], tuple[int, float]] = {}
        self._conns = 0
        self._ids = 0
        self._closed = False
        self._sock = socket.create_server(tuple(address), backlog=128)
        self.address = self._sock.getsockname()[:2]
        self._thread = threading.Thread(
            target=self._accept_loop, name="irisrep-arbiter", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self._sock.close()

    def __enter__(self) -> Arbiter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def seen(self) -> dict:
        """What the arbiter sees now: {mirror: {member: silent_ms}} (status, tests)."""
        now = time.monotonic()
        out: dict = {}
        with self._lock:
            for (mirror, member), (_cid, t) in self._seen.items():
                out.setdefault(mirror, {})[member] = int((now - t) * 1000)
        return out

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                conn, addr = self._sock.accept()
            except OSError:
                return
            with self._lock:
                full = self._conns >= ARBITER_CONNECTIONS_MAX
                if not full:
                    self._conns += 1
                    self._ids += 1
                    cid = self._ids
            if full:
                log.warning(
                    "arbiter: connection from %s refused: %d open", addr, ARBITER_CONNECTIONS_MAX
                )
                conn.close()
                continue
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(
                target=self._serve, args=(conn, addr, cid), name="irisrep-arbiter-conn", daemon=True
            ).start()

    def _state(self, mirror: str) -> mc.ArbiterState:
        st = self._states.get(mirror)
        if st is None:
            st = self._states[mirror] = mc.ArbiterState(self.silence_ms)
        return st

    def _persist_grant(self, mirror: str, epoch: int, primary: str) -> None:
        """Before a grant is answered: a restarted arbiter must not forget it."""
        self._granted[mirror] = {"epoch": epoch, "primary": primary}
        if self.state_path is None:
            return
        tmp = self.state_path + ".new"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, json.dumps(self._granted).encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, self.state_path)
        dfd = os.open(os.path.dirname(os.path.abspath(self.state_path)), os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    def _serve(self, conn: socket.socket, addr, cid: int) -> None:
        key = None
        reader = wire.FrameReader(conn)
        try:
            f = reader.read_frame(idle_timeout_ms=ARBITER_HELLO_TIMEOUT_MS)
            if f.type != wire.STATUS:
                raise WireError("payload", f"expected a STATUS hello, got type {f.type}")
            try:
                hello = json.loads(f.payload)
                mirror = wire.check_name(hello["mirror"], "mirror")
                member = wire.check_name(hello["member"], "member")
                partner = wire.check_name(hello["partner"], "member")
            except (ValueError, KeyError, TypeError) as e:
                raise WireError("payload", f"bad hello: {e}") from None
            key = (mirror, member)
            with self._lock:
                self._seen[key] = (cid, time.monotonic())
            log.warning("arbiter: %s/%s connected from %s", mirror, member, addr)
            while not self._closed:
                f = reader.read_frame(idle_timeout_ms=self.silence_ms * 4)
                now = time.monotonic()
                now_ms = int(now * 1000)
                body = None
                if f.type == wire.STATUS:
                    try:
                        body = json.loads(f.payload)
                        if not isinstance(body, dict):
                            raise ValueError("not an object")
                    except ValueError as e:
                        raise WireError("payload", f"bad STATUS: {e}") from None
                elif f.type != wire.HEARTBEAT:
                    raise WireError("payload", f"expected HEARTBEAT or STATUS, got type {f.type}")
                with self._lock:
                    self._seen[key] = (cid, now)
                    p = self._seen.get((mirror, partner))
                    state = self._state(mirror)
                    answer: dict = {}
                    if body is not None and "ask" in body:
                        epoch = body["ask"]
                        if not isinstance(epoch, int):
                            raise WireError("payload", "ask: the epoch must be an integer")
                        ans = state.on_ask(member, epoch, partner, now_ms)
                        if ans.granted:
                            self._persist_grant(mirror, epoch, member)
                            log.warning(
                                "arbiter: %s/%s granted a takeover at epoch %d",
                                mirror,
                                member,
                                epoch,
                            )
                        answer["answer"] = {"epoch": ans.epoch, "granted": ans.granted}
                    if body is not None and "status" in body:
                        try:
                            ps = mc.PeerStatus(**body["status"])
                        except TypeError as e:
                            raise WireError("payload", f"bad status: {e}") from None
                        rep = state.on_status(member, ps, partner, now_ms)
                    else:
                        state.last_heard[member] = now_ms
                        rep = state.report(partner, now_ms)
                silent = None if p is None else int((now - p[1]) * 1000)
                answer.update(
                    {
                        "sees_partner": silent is not None and silent <= self.silence_ms,
                        "partner_silent_ms": silent,
                        "report": {
                            "sees_peer": rep.sees_peer,
                            "epoch": rep.epoch,
                            "mode": rep.mode,
                            "mode_seq": rep.mode_seq,
                        },
                    }
                )
                wire.send_frame(conn, wire.STATUS, 0, json.dumps(answer).encode())
        except (WireError, OSError) as e:
            if not self._closed:
                log.warning("arbiter: connection %s (%s) closed: %s", addr, key, e)
        finally:
            with self._lock:
                self._conns -= 1
                if key is not None and self._seen.get(key, (None,))[0] == cid:
                    del self._seen[key]
                    st = self._states.get(key[0])
                    if st is not None:
                        st.forget(key[1])
            conn.close()


class ArbiterClient:
    """A failover member's link to the arbiter: connects, beats, keeps the answer.

    `on_change(connected: bool, sees_partner: bool | None)` is called from the link's
    thread when either changes (the mirror core turns these into events)."""

    def __init__(
        self,
        address,
        *,
        mirror: str,
        member: str,
        partner: str,
        on_change=None,
        heartbeat_ms: int = ARBITER_HEARTBEAT_MS,
        status_fn=None,
        on_report=None,
        on_answer=None,
        source_host: str | None = None,
    ) -> None:
        self.address = tuple(address)
        self.status_fn = status_fn  # () -> dict (the core's PeerStatus) or None
        self.on_report = on_report  # (report dict) on every answer
        self.on_answer = on_answer  # (answer dict) for an ask
        self.source_host = source_host
        self._asks: list[int] = []
        self._wake = threading.Event()
        self.hello = json.dumps({"mirror": mirror, "member": member, "partner": partner}).encode()
        self.on_change = on_change
        self.heartbeat_ms = heartbeat_ms
        self.connected = False
        self.sees_partner: bool | None = None
        self._stop = threading.Event()
        self._sock: socket.socket | None = None
        self._thread = threading.Thread(target=self._run, name="irisrep-arbiter-link", daemon=True)

    def start(self) -> ArbiterClient:
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        s = self._sock
        if s is not None:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
        self._thread.join(timeout=5)

    def ask(self, epoch: int) -> None:
        """Ask for a takeover at `epoch` (answered through on_answer)."""
        self._asks.append(epoch)
        self._wake.set()

    def _set(self, connected: bool, sees: bool | None) -> None:
        if (connected, sees) != (self.connected, self.sees_partner):
            self.connected, self.sees_partner = connected, sees
            if self.on_change is not None:
                self.on_change(connected, sees)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                sock = socket.create_connection(
                    self.address,
                    timeout=1.0,
                    source_address=(self.source_host, 0) if self.source_host else None,
                )
            except OSError:
                self._set(False, None)
                self._stop.wait(self.heartbeat_ms / 1000.0)
                continue
            self._sock = sock
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                wire.send_frame(sock, wire.STATUS, 0, self.hello)
                reader = wire.FrameReader(sock)
                while not self._stop.is_set():
                    body: dict = {}
                    st = self.status_fn() if self.status_fn is not None else None
                    if st is not None:
                        body["status"] = st
                    if self._asks:
                        body["ask"] = self._asks.pop(0)
                    if body:
                        wire.send_frame(sock, wire.STATUS, 0, json.dumps(body).encode())
                    else:
                        wire.send_frame(sock, wire.HEARTBEAT, 0, wire.encode_u64(0))
                    f = reader.read_frame(idle_timeout_ms=max(1000, 10 * self.heartbeat_ms))
                    if f.type != wire.STATUS:
                        raise WireError("payload", f"unexpected frame type {f.type}")
                    ans = json.loads(f.payload)
                    self._set(True, bool(ans["sees_partner"]))
                    # The answer first: the report after a grant already carries the
                    # granted epoch, and a core that learnt it first would take its
                    # own grant for a stale one.
                    if self.on_answer is not None and "answer" in ans:
                        self.on_answer(ans["answer"])
                    if self.on_report is not None and "report" in ans:
                        self.on_report(ans["report"])
                    if not self._asks:
                        self._wake.wait(self.heartbeat_ms / 1000.0)
                        self._wake.clear()
            except (WireError, OSError, ValueError, KeyError) as e:
                if not self._stop.is_set():
                    log.warning("arbiter link lost: %s", e)
            finally:
                self._sock = None
                sock.close()
                self._set(False, None)
