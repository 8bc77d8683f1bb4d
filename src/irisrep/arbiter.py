"""The arbiter: a third party that tells each failover member whether it still sees
the other (DESIGN.md section 3; IRIS's ISCAgent in the arbiter role).

Owns `irisrep arbiter --listen HOST:PORT`: failover members of any number of mirrors
connect and keep a heartbeat; on every heartbeat the arbiter answers whether the
member's partner (the other failover member of the same mirror) is connected and was
heard within `silence_ms`. That answer is all a backup needs to know before taking
over from a primary whose host it lost: "the arbiter lost it too".

Wire: the mirror transport's frames (`docs/wire-format.md`: length checked before
allocating, xxh3 on every frame), without the key handshake (one arbiter serves
mirrors with different keys, and it decides nothing: it only reports what it sees).
A member opens with a STATUS frame `{"mirror": M, "member": X, "partner": Y}`, then
sends HEARTBEAT frames; each is answered with a STATUS frame
`{"sees_partner": bool, "partner_silent_ms": int | null}`. A malformed frame or
hello closes that connection (logged); the arbiter keeps serving the others.
`ArbiterClient` is the member's side: a thread that keeps the link and the latest
answer, and reports connects and losses through a callback.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time

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

    def __init__(self, address=("127.0.0.1", 0), *, silence_ms: int = ARBITER_SILENCE_MS):
        self.silence_ms = silence_ms
        self._lock = threading.Lock()
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
        try:
            self._sock.close()
        except OSError:
            pass

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
                if f.type != wire.HEARTBEAT:
                    raise WireError("payload", f"expected HEARTBEAT, got type {f.type}")
                now = time.monotonic()
                with self._lock:
                    self._seen[key] = (cid, now)
                    p = self._seen.get((mirror, partner))
                silent = None if p is None else int((now - p[1]) * 1000)
                answer = {
                    "sees_partner": silent is not None and silent <= self.silence_ms,
                    "partner_silent_ms": silent,
                }
                wire.send_frame(conn, wire.STATUS, 0, json.dumps(answer).encode())
        except (WireError, OSError) as e:
            if not self._closed:
                log.warning("arbiter: connection %s (%s) closed: %s", addr, key, e)
        finally:
            with self._lock:
                self._conns -= 1
                if key is not None and self._seen.get(key, (None,))[0] == cid:
                    del self._seen[key]
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
    ) -> None:
        self.address = tuple(address)
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
        s = self._sock
        if s is not None:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._thread.join(timeout=5)

    def _set(self, connected: bool, sees: bool | None) -> None:
        if (connected, sees) != (self.connected, self.sees_partner):
            self.connected, self.sees_partner = connected, sees
            if self.on_change is not None:
                self.on_change(connected, sees)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                sock = socket.create_connection(self.address, timeout=1.0)
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
                    wire.send_frame(sock, wire.HEARTBEAT, 0, wire.encode_u64(0))
                    f = reader.read_frame(idle_timeout_ms=max(1000, 10 * self.heartbeat_ms))
                    if f.type != wire.STATUS:
                        raise WireError("payload", f"unexpected frame type {f.type}")
                    ans = json.loads(f.payload)
                    self._set(True, bool(ans["sees_partner"]))
                    self._stop.wait(self.heartbeat_ms / 1000.0)
            except (WireError, OSError, ValueError, KeyError) as e:
                if not self._stop.is_set():
                    log.warning("arbiter link lost: %s", e)
            finally:
                self._sock = None
                sock.close()
                self._set(False, None)
