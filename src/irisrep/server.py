"""The client listener: serves the client protocol (clientproto.py) over a member's database.

Owns the server side of docs/client-protocol.md: accepting connections, LOGIN, the
threads that run requests against `host.database` through the local
`Global`/`Database` API, and the cleanup when a connection ends.

Threads (why: a thread per connection cost ~10 context switches and ~24 system calls
per commit, bench/profile_member.py):
- ONE loop thread (epoll, one-shot registrations) accepts, reads whole frames
  through each connection's buffer and answers the requests in `_LOOP_OPS` itself.
  It never blocks on a commit: `commit.capture_commits` makes its `sync(ticket)` a
  note, and the reply is held (`_Deferred`) while the connection reads nothing more;
- `CLIENT_COMMIT_THREADS` syncer threads take every held reply, run one
  `Committer.sync_many` per group (local write + fdatasync, then the Active
  backup's ack) and only then write the replies (DESIGN.md rule 1), rearming the
  connections in the loop's epoll; anything unusual goes back to the loop;
- worker threads, on demand, for requests that block (LOGIN's scrypt, LOCK waits,
  admin ops, a write meeting a member mid-promotion) and for connections holding
  per-thread state: the database ties a transaction and lock ownership to the
  calling thread, so a connection that has either stays on its worker (served
  there with blocking reads, as before the loop) and returns to the loop when it
  holds neither. A connection on the loop therefore never has a transaction or a
  lock (a BATCH run there must end what it starts).

Promises:
- bounded: at most `connections_max` connections; when full, the oldest connection
  that has not logged in yet is closed to make room, else the new one is answered
  with an error and closed. A connection must complete its first request (LOGIN
  when users are configured) within `login_timeout_ms` of its accept, and each frame
  must arrive whole within the frame timeout, so idle or trickling connections
  cannot pin memory; an idle connection costs a socket and a small object, no
  thread. A connection's buffer holds at most one frame and one read chunk: while a
  request is in flight its socket is not read;
- a reply is never written before every commit of its request is durable locally
  and acknowledged by the Active backup (or that backup declared not Active first);
  one request per connection at a time, so replies come in request order;
- a failed LOGIN is answered with `HandshakeError("authentication failed")`, logged
  on `logging.getLogger("irisrep.server")`, and the connection closed; nothing else
  changes. An unknown user costs the same scrypt check as a known one;
- a malformed frame or request closes that connection (with its reason logged) and
  nothing else; other connections and the listener go on;
- when a connection ends (close, error, listener close), its open transaction is
  rolled back (all levels) and its locks are released, on the worker that holds
  them;
- an `IrisrepError` from the database is answered as `("err", class name, message,
  extra)` and the connection goes on; any other exception is a bug: it is logged
  with its traceback and the connection is closed, never turned into a reply;
- writes on a non-primary raise `ProtectError` by themselves (the database is
  protected there); the listener adds no routing of its own.

`host` is duck-typed: `host.database`, `host.role` ("primary", "backup", "async" or
"local"), `host.primary_client_address` ("host:port" or None) and `host.status()`
(a JSON-serializable dict). `LocalHost` wraps a plain Database for tests and tools.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import math
import queue
import select
import socket
import threading
import time
from typing import Any

from . import _core, datacheck, errors
from .auth import parse_hash, verify_password
from .clientproto import (
    CLOSED,
    MessageStream,
    ProtocolError,
    decode_value,
    encode_frame,
    err,
    ok,
)
from .constants import (
    CLIENT_BATCH_REQUESTS_MAX,
    CLIENT_COMMIT_THREADS,
    CLIENT_CONNECTIONS_MAX,
    CLIENT_FRAME_BYTES_MAX,
    CLIENT_FRAME_TIMEOUT_MS,
    CLIENT_ITEMS_PAGE_MAX,
    CLIENT_LOCK_WAIT_SLICE_MS,
    CLIENT_LOGIN_TIMEOUT_MS,
    CLIENT_READ_CHUNK_BYTES,
    CLIENT_REFUSED_PENDING_MAX,
    CLIENT_SEND_TIMEOUT_MS,
    CLIENT_WORKER_IDLE_S,
    CLIENT_WORKER_LINGER_MS,
    SERVER_PROMOTION_WAIT_S,
    WIRE_LISTEN_BACKLOG_COUNT,
)
from .errors import HandshakeError, IrisrepError, LockTimeoutError, TransactionError

__all__ = ["ClientListener", "LocalHost", "error_reply"]

log = logging.getLogger("irisrep.server")

# An items page stops before its encoded nodes pass this (the reply's framing fits
# in the rest); one node always fits alone (a max string in UTF-8 is below it).
ITEMS_PAGE_BYTES = CLIENT_FRAME_BYTES_MAX - 64 * 1024
_ITEMS_BATCH = 256
_REFUSED_LINGER_S = 1.0
_SWEEP_S = 0.05  # the loop looks at its connections' deadlines this often
_ACCEPT_BATCH = 64  # accepts per wake-up of the listening socket
_ACCEPT_PAUSE_S = 0.1  # after a failed accept (EMFILE ...), before trying again
_READ = select.EPOLLIN | select.EPOLLONESHOT
_WRITE = select.EPOLLOUT | select.EPOLLONESHOT
# A dummy hash for unknown users: their login costs the same scrypt check.
_DUMMY_HASH = (
    "scrypt$16384$8$1$00000000000000000000000000000000$"
    "0000000000000000000000000000000000000000000000000000000000000000"
)
ROLES = ("primary", "backup", "async", "local")


class LocalHost:
    """A host for one plain Database (tests, tools): role "local" unless told."""

    def __init__(self, database, role: str = "local", *, member: str = "local") -> None:
        self.database = database
        self.role = role
        self.member = member
        self.primary_client_address: str | None = None

    def status(self) -> dict:
        return {"role": self.role, "member": self.member}


class _BadRequest(Exception):
    """A well-formed frame that is not a valid request: reply, then close."""


class _PeerGone(Exception):
    """The client went away while its request waited (a long LOCK)."""


def _error_class_name(exc: BaseException) -> str:
    """The nearest class of the error tree (or ProtocolError) in exc's MRO."""
    for cls in type(exc).__mro__:
        if cls is ProtocolError or (
            cls.__name__ in errors.__all__ and getattr(errors, cls.__name__, None) is cls
        ):
            return cls.__name__
    return "IrisrepError"


def error_reply(exc: IrisrepError) -> tuple:
    """An irisrep error as an "err" response (class name, message, extra)."""
    extra: Any = None
    if isinstance(exc, errors.NotPrimaryError):
        extra = exc.primary
    elif isinstance(exc, errors.WireError):
        extra = (exc.reason, exc.detail)
    message = str(exc.args[0]) if exc.args else str(exc)
    return err(_error_class_name(exc), message, extra)


# --- request argument checks (a failure is a malformed request) ------------------------


def _arity(req: tuple, n: int) -> None:
    if len(req) != n + 1:
        raise _BadRequest(f"{req[0]} takes {n} arguments, not {len(req) - 1}")


def _str(v: object, what: str) -> str:
    if type(v) is not str:
        raise _BadRequest(f"{what} must be a str, not {type(v).__name__}")
    return v


def _tuple(v: object, what: str) -> tuple:
    if type(v) is not tuple:
        raise _BadRequest(f"{what} must be a tuple, not {type(v).__name__}")
    return v


def _opt_tuple(v: object, what: str) -> tuple | None:
    return None if v is None else _tuple(v, what)


def _bool(v: object, what: str) -> bool:
    if type(v) is not bool:
        raise _BadRequest(f"{what} must be a bool, not {type(v).__name__}")
    return v


class _Session:
    """One client connection: its buffer, its login, and where it is served.

    `where` says which thread may touch the socket: "loop" (the event loop, idle or
    with a request in flight), "worker" (a pool thread has it; the loop has
    unregistered it), "closed"."""

    __slots__ = (
        "sock",
        "fd",
        "stream",
        "peer",
        "accepted",
        "logged_in",
        "user",
        "where",
        "busy",
        "out",
        "out_since",
        "frame_since",
        "database",
    )

    def __init__(self, sock: socket.socket, peer: Any, send_timeout_ms: int) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.stream = MessageStream(sock, steady_s=send_timeout_ms / 1000.0)
        sock.setblocking(False)  # the loop's mode; a worker switches to timeouts
        self.peer = peer
        self.accepted = time.monotonic()
        self.logged_in = False
        self.user: str | None = None
        self.where = "loop"
        # On the loop: a request is in flight (its commit waits for durability and
        # the backup's ack, or its reply is partly sent): the next one waits.
        self.busy = False
        self.out: memoryview | None = None  # the rest of a reply the socket did not take
        self.out_since = 0.0
        self.frame_since: float | None = None  # first byte of a partial frame
        # `use_database`: the followed mirror's copy this connection reads (a
        # reporting async); None: the host's own database.
        self.database: Any = None

    def shutdown(self) -> None:
        """Wake a worker blocked on the socket (its recv returns) without racing its
        close."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)


class _Deferred:
    """A reply held until its commits are durable and acknowledged (rule 1)."""

    __slots__ = ("session", "reply", "tickets", "started")

    def __init__(self, session: _Session, reply: tuple, tickets: list, started: float) -> None:
        self.session = session
        self.reply = reply
        self.tickets = tickets  # [(committer, ticket)] captured while it ran
        self.started = started


class _Syncers:
    """A few threads that make deferred commits durable: each takes every reply
    waiting, runs ONE `Committer.sync_many` per committer for the highest ticket
    (the group commit: local write + fdatasync, then the Active backup's ack) and
    hands the replies back to the loop. Two or more threads keep the pipelining of
    `commit.py`: one group waits for its ack while the next one writes and syncs."""

    def __init__(self, post, count: int) -> None:
        self._post = post  # callable(list of (session, reply, exc)) -> the loop
        self._cv = threading.Condition(threading.Lock())
        self._pending: list[_Deferred] = []
        self._stop = False
        self._threads = [
            threading.Thread(target=self._run, name=f"irisrep-client-commit-{i}", daemon=True)
            for i in range(count)
        ]
        for t in self._threads:
            t.start()

    def submit(self, items: list[_Deferred]) -> None:
        with self._cv:
            self._pending.extend(items)
            self._cv.notify()

    def close(self) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify_all()
        for t in self._threads:
            t.join(timeout=5)

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._pending and not self._stop:
                    self._cv.wait()
                if not self._pending:
                    return
                batch, self._pending = self._pending, []
            groups: dict[Any, list] = {}
            for d in batch:
                for committer, ticket in d.tickets:
                    g = groups.get(committer)
                    if g is None:
                        groups[committer] = [ticket, [d]]
                    else:
                        if ticket > g[0]:
                            g[0] = ticket
                        g[1].append(d)
            failed: dict[int, BaseException] = {}
            for committer, (ticket, items) in groups.items():
                try:
                    committer.sync_many(ticket, [d.started for d in items])
                except BaseException as exc:  # each reply says so (DurabilityError ...)
                    for d in items:
                        failed[id(d)] = exc
            # Only now, every commit of every reply durable here and acknowledged by
            # the Active backup (or that backup declared not Active first), may the
            # replies go out (DESIGN.md rule 1).
            self._post([(d.session, d.reply, failed.get(id(d))) for d in batch])


class _Workers:
    """Threads for what must not run on the loop: requests that block (a LOGIN's
    scrypt, LOCK waits, admin ops, waiting for a promotion) and connections that
    hold per-thread state (an open transaction, locks: the database ties both to
    the calling thread). Grows on demand, one thread per such connection at most;
    an idle thread ends after CLIENT_WORKER_IDLE_S."""

    def __init__(self, run) -> None:
        self._run_job = run  # callable(session, request) on a worker thread
        self._lock = threading.Lock()
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._idle = 0
        self._threads: set[threading.Thread] = set()
        self._stop = False

    def submit(self, session: _Session, req: tuple) -> None:
        with self._lock:
            if self._stop:
                raise RuntimeError("workers stopped")
            # An idle thread is reserved for this job (counted busy from now), else
            # a new one: a job never waits behind a connection that keeps a worker.
            spawn = self._idle == 0
            if not spawn:
                self._idle -= 1
            self._jobs.put((session, req))  # under the lock: see _loop's idle exit
        if spawn:
            t = threading.Thread(target=self._loop, name="irisrep-client-worker", daemon=True)
            with self._lock:
                self._threads.add(t)
            t.start()

    def _loop(self) -> None:
        me = threading.current_thread()
        try:
            while True:
                try:
                    job = self._jobs.get(timeout=CLIENT_WORKER_IDLE_S)
                except queue.Empty:
                    with self._lock:
                        # No job queued (submit puts under this lock): no reservation
                        # is waiting for a thread, so this idle one may go.
                        if self._jobs.empty():
                            self._idle -= 1
                            return
                    continue
                if job is None:
                    return
                try:
                    self._run_job(*job)
                finally:
                    with self._lock:
                        self._idle += 1
        finally:
            with self._lock:
                self._threads.discard(me)

    def close(self, timeout_s: float) -> None:
        with self._lock:
            self._stop = True
            threads = list(self._threads)
        for _ in threads:
            self._jobs.put(None)
        end = time.monotonic() + timeout_s
        for t in threads:
            t.join(timeout=max(0.0, end - time.monotonic()))


_TO_WORKER = object()  # an answer on the loop: this request goes to a worker
# Requests the loop answers itself: none blocks for long (the database lock is held
# for bounded work; a commit's wait is deferred) and none depends on the calling
# thread (a loop connection never has a transaction or locks open: TSTART and LOCK
# go to a worker, which keeps the connection while it holds them).
_LOOP_OPS = frozenset(
    "ping role globals get set kill zkill data order query increment items tlevel "
    "use_database stream_position batch".split()
)
# What a BATCH may hold: data operations and transaction brackets (no LOCK, no admin).
_BATCH_OPS = frozenset(
    "ping get set kill zkill data order query increment tstart tcommit trollback tlevel".split()
)


class ClientListener:
    """Serves the client protocol for `host` on `address` (default 127.0.0.1, any port).

    `users` maps user name -> scrypt hash (irisrep.auth); None means no LOGIN is
    required (tests, in-process use only). `.address` is the bound (host, port)."""

    def __init__(
        self,
        host,
        address: tuple[str, int] = ("127.0.0.1", 0),
        *,
        users: dict[str, str] | None,
        login_timeout_ms: int = CLIENT_LOGIN_TIMEOUT_MS,
        connections_max: int = CLIENT_CONNECTIONS_MAX,
        frame_timeout_ms: int = CLIENT_FRAME_TIMEOUT_MS,
        send_timeout_ms: int = CLIENT_SEND_TIMEOUT_MS,
    ) -> None:
        if users is not None:
            users = dict(users)
            for name, stored in users.items():
                if type(name) is not str:
                    raise errors.ConfigError(f"users: {name!r} is not a user name")
                try:
                    parse_hash(stored)
                except errors.ConfigError as e:
                    raise errors.ConfigError(f"users[{name!r}]: {e}") from None
        for key, value in (
            ("login_timeout_ms", login_timeout_ms),
            ("connections_max", connections_max),
            ("frame_timeout_ms", frame_timeout_ms),
            ("send_timeout_ms", send_timeout_ms),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise errors.ConfigError(f"{key}: {value!r} must be an int >= 1")
        self.host = host
        self._users = users
        self._login_timeout = login_timeout_ms / 1000.0
        self._connections_max = connections_max
        self._frame_timeout_ms = frame_timeout_ms
        self._send_timeout_ms = send_timeout_ms
        self._lock = threading.Lock()
        self._sessions: dict[_Session, None] = {}  # insertion order = accept order
        self._refused: list[tuple[float, socket.socket]] = []
        self._stop = threading.Event()
        self.stats = {"accepted": 0, "refused": 0, "evicted": 0, "login_failed": 0}
        self._sock = socket.create_server(address, backlog=WIRE_LISTEN_BACKLOG_COUNT)
        self._sock.setblocking(False)
        self.address: tuple[str, int] = self._sock.getsockname()[:2]
        # --- the loop's own state (touched by the loop thread only) ---
        self._by_fd: dict[int, _Session] = {}
        self._ep = select.epoll()
        self._ep.register(self._sock.fileno(), select.EPOLLIN)
        self._accept_paused_until = 0.0
        self._box: list = []  # commits deferred by the request running on the loop
        self._deferred: list[_Deferred] = []  # replies waiting for their commits
        # --- handed to the loop by other threads ---
        self._done: collections.deque = collections.deque()  # (kind, session, reply, exc)
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._woken = False
        self._ep.register(self._wake_r.fileno(), select.EPOLLIN)
        self._syncers = _Syncers(self._post_commits, CLIENT_COMMIT_THREADS)
        self._workers = _Workers(self._work)
        self._thread = threading.Thread(
            target=self._loop, name=f"irisrep-client-loop {self.address}", daemon=True
        )
        self._thread.start()

    def __enter__(self) -> ClientListener:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def connections(self) -> int:
        """Open client connections."""
        with self._lock:
            return len(self._sessions)

    def close(self) -> None:
        """Stop accepting, close every connection (a worker's connection rolls back
        its transaction and releases its locks on its thread) and wait for them."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._wake()
        self._thread.join(timeout=5)
        with self._lock:
            sessions = list(self._sessions)
        for s in sessions:
            s.shutdown()  # the workers' connections: their recv returns
        end = time.monotonic() + 5
        while time.monotonic() < end:
            self._close_done()  # handed back after the loop stopped: close them
            with self._lock:
                if not self._sessions:
                    break
            time.sleep(0.01)
        self._workers.close(max(0.0, end - time.monotonic()))
        self._syncers.close()
        self._close_done()
        for sock in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                sock.close()
        with contextlib.suppress(OSError):
            self._ep.close()

    # --- the loop --------------------------------------------------------------------------

    def _wake(self) -> None:
        """Called by other threads after they queued something for the loop."""
        if not self._woken:
            self._woken = True
            with contextlib.suppress(OSError):
                self._wake_w.send(b"\0")

    def _post_commits(self, done: list) -> None:
        """On a syncer: replies whose commits are durable and acknowledged (or failed).

        The common case is sent right here, from the syncer: a busy connection is
        disarmed in the loop's epoll (one-shot) and the loop does not touch it until
        it is rearmed, so this thread may write the reply and rearm it itself; that
        saves the hand-back to the loop (a wake-up and a context switch per group).
        Anything else (an error, pipelined requests already buffered, a reply the
        socket does not take whole) goes back to the loop."""
        back = False
        for s, reply, exc in done:
            if exc is not None or s.stream.buffered or self._stop.is_set() or s.where != "loop":
                self._done.append(("reply", s, reply, exc))
                back = True
                continue
            try:
                data = encode_frame(reply)
                n = s.sock.send(data)
            except (BlockingIOError, InterruptedError):
                n = 0
            except (TypeError, ValueError, OSError):  # the loop says why and closes
                self._done.append(("reply", s, reply, None))
                back = True
                continue
            if n < len(data):
                self._done.append(("rest", s, memoryview(data)[n:], None))
                back = True
                continue
            s.busy = False
            # Closed by the loop meanwhile (shutdown): nothing left to rearm. If the
            # loop closed it and a new connection got the same fd number in between,
            # this arms that one for reading: harmless, since a connection is served
            # only while it is not busy, and bytes read while busy are only buffered.
            with contextlib.suppress(OSError, ValueError):
                self._ep.modify(s.fd, _READ)
        if back:
            self._wake()

    def _loop(self) -> None:
        from .commit import capture_commits

        # Every commit a request makes on this thread is deferred to the syncers: the
        # loop never waits for an fdatasync or for the backup's ack.
        capture_commits(self._box)
        listen_fd = self._sock.fileno()
        wake_fd = self._wake_r.fileno()
        next_sweep = time.monotonic() + _SWEEP_S
        try:
            while not self._stop.is_set():
                timeout = max(0.0, min(_SWEEP_S, next_sweep - time.monotonic()))
                try:
                    events = self._ep.poll(timeout)
                except InterruptedError:
                    events = ()
                for fd, _ev in events:
                    if fd == listen_fd:
                        self._accept()
                    elif fd == wake_fd:
                        with contextlib.suppress(OSError):
                            self._wake_r.recv(4096)
                    else:
                        s = self._by_fd.get(fd)
                        if s is None or s.where != "loop":
                            continue
                        try:
                            if s.out is not None:
                                self._on_writable(s)
                            else:
                                self._on_readable(s)
                        except Exception:  # a bug: that connection only
                            log.exception("client %s: internal error; connection closed", s.peer)
                            self._close_loop_session(s)
                self._drain_done()
                if self._deferred:
                    # One hand-off per loop pass: every reply that waits for a commit
                    # goes to the syncers together (one group, one wake-up).
                    deferred, self._deferred = self._deferred, []
                    self._syncers.submit(deferred)
                now = time.monotonic()
                if now >= next_sweep:
                    self._sweep(now)
                    next_sweep = now + _SWEEP_S
        except Exception:
            log.exception("client listener %s: the loop failed", self.address)
        finally:
            capture_commits(None)
            self._loop_exit()

    def _loop_exit(self) -> None:
        with contextlib.suppress(OSError):
            self._ep.unregister(self._sock.fileno())
        with contextlib.suppress(OSError):
            self._sock.close()
        for _t, conn in self._refused:
            with contextlib.suppress(OSError):
                conn.close()
        self._refused.clear()
        # Connections on the loop hold no transaction and no lock: closing is all.
        # A reply still waiting for its commit is never sent (the client sees the
        # connection end: a commit whose reply it did not get may have happened).
        for s in list(self._by_fd.values()):
            if s.where == "loop":
                self._close_loop_session(s)

    def _drain_done(self) -> None:
        # Cleared before draining: a later hand-off writes the wake byte again.
        self._woken = False
        done = self._done
        while done:
            kind, s, reply, exc = done.popleft()
            if kind == "resume":  # a worker gives the connection back
                if s.where == "closed":
                    continue
                s.where = "loop"
                s.busy = False
                self._by_fd[s.fd] = s
                self._ep.register(s.fd, _READ)
                self._next(s)
                continue
            if s.where != "loop":
                continue  # closed meanwhile: the reply has nowhere to go
            if kind == "rest":  # a syncer sent the start of the reply
                s.busy = False
                s.out = reply
                s.out_since = time.monotonic()
                if self._flush_out(s):
                    self._next(s)
                continue
            # kind == "reply": a deferred reply, its commits durable and acknowledged
            if exc is not None:
                if not isinstance(exc, IrisrepError):
                    log.error(
                        "client %s: internal error in the commit; connection closed",
                        s.peer,
                        exc_info=exc,
                    )
                    self._close_loop_session(s)
                    continue
                reply = error_reply(exc)
            s.busy = False
            if self._send_loop(s, reply):
                self._next(s)

    def _close_done(self) -> None:
        """After the loop stopped: close what was handed back to it."""
        while self._done:
            kind, s, _reply, _exc = self._done.popleft()
            if s.where != "closed":
                self._close_loop_session(s)

    # --- accepting ---------------------------------------------------------------------

    def _accept(self) -> None:
        for _ in range(_ACCEPT_BATCH):
            try:
                conn, peer = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:  # EMFILE and friends: log, pause accepting a moment
                log.warning("accept failed: %s", e)
                with contextlib.suppress(OSError):
                    self._ep.unregister(self._sock.fileno())
                self._accept_paused_until = time.monotonic() + _ACCEPT_PAUSE_S
                return
            self._admit(conn, peer)

    def _admit(self, conn: socket.socket, peer: Any) -> None:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        victim = None
        with self._lock:
            if len(self._sessions) >= self._connections_max:
                victim = next((s for s in self._sessions if not s.logged_in), None)
                if victim is not None:
                    del self._sessions[victim]
                    self.stats["evicted"] += 1
            full = len(self._sessions) >= self._connections_max
            if not full:
                self.stats["accepted"] += 1
            else:
                self.stats["refused"] += 1
        if victim is not None:
            log.warning(
                "client %s closed before its login to make room (%d connections)",
                victim.peer,
                self._connections_max,
            )
            if victim.where == "loop":
                self._close_loop_session(victim)
            else:
                victim.shutdown()  # its worker ends it
        if full:
            log.warning("client %s refused: %d connections are open", peer, self._connections_max)
            self._refuse(conn)
            return
        session = _Session(conn, peer, self._send_timeout_ms)
        with self._lock:
            self._sessions[session] = None
        self._by_fd[session.fd] = session
        self._ep.register(session.fd, _READ)

    def _refuse(self, conn: socket.socket) -> None:
        """Answer with an error and half-close; the socket is closed a moment later
        so the client reads the refusal (an immediate close could reset it first)."""
        reply = err(
            "IrisrepError",
            f"too many client connections ({self._connections_max}); try again later",
            "connection limit",
        )
        try:
            conn.setblocking(False)
            conn.send(encode_frame(reply))  # a fresh socket's buffer takes it whole
            conn.shutdown(socket.SHUT_WR)
        except OSError:
            conn.close()
            return
        self._refused.append((time.monotonic() + _REFUSED_LINGER_S, conn))
        if len(self._refused) > CLIENT_REFUSED_PENDING_MAX:
            _t, old = self._refused.pop(0)
            with contextlib.suppress(OSError):
                old.close()

    def _sweep(self, now: float) -> None:
        """Deadlines of the loop's connections (login, a partial frame, a reply the
        client does not read), refused sockets' linger, a paused accept."""
        while self._refused and self._refused[0][0] <= now:
            _t, conn = self._refused.pop(0)
            with contextlib.suppress(OSError):
                conn.close()
        if self._accept_paused_until and now >= self._accept_paused_until:
            self._accept_paused_until = 0.0
            with contextlib.suppress(OSError):
                self._ep.register(self._sock.fileno(), select.EPOLLIN)
        frame_s = self._frame_timeout_ms / 1000.0
        send_s = self._send_timeout_ms / 1000.0
        for s in list(self._by_fd.values()):
            if s.where != "loop":
                continue
            if s.out is not None:
                if now - s.out_since > send_s:
                    log.info("client %s: reply not sent (timed out); connection closed", s.peer)
                    self._close_loop_session(s)
                continue
            if s.busy:
                continue
            if s.frame_since is not None and now - s.frame_since > frame_s:
                e = ProtocolError(
                    "timeout", f"{s.stream.buffered} bytes of a frame before the deadline"
                )
                log.warning("client %s closed: malformed frame: %s", s.peer, e)
                self._send_loop(s, error_reply(e))
                self._close_loop_session(s)
            elif not s.logged_in and now - s.accepted > self._login_timeout:
                log.warning(
                    "client %s closed: no %s within %d ms of connecting",
                    s.peer,
                    "login" if self._users is not None else "request",
                    int(self._login_timeout * 1000),
                )
                self._close_loop_session(s)

    # --- one connection on the loop ------------------------------------------------------

    def _close_loop_session(self, s: _Session) -> None:
        """End a connection the loop holds (no transaction, no lock: nothing to undo)."""
        if s.where == "closed":
            return
        s.where = "closed"
        if self._by_fd.get(s.fd) is s:
            del self._by_fd[s.fd]
            with contextlib.suppress(OSError, ValueError):
                self._ep.unregister(s.fd)
        with contextlib.suppress(OSError):
            s.sock.close()
        with self._lock:
            self._sessions.pop(s, None)

    def _on_readable(self, s: _Session) -> None:
        try:
            data = s.sock.recv(CLIENT_READ_CHUNK_BYTES)
        except (BlockingIOError, InterruptedError):
            self._rearm(s, _READ)
            return
        except (ConnectionResetError, ConnectionAbortedError):
            data = b""  # an abrupt close is a close
        except OSError as e:
            log.info("client %s: connection lost: %s", s.peer, e)
            self._close_loop_session(s)
            return
        if not data:
            if s.stream.buffered:
                e = ProtocolError(
                    "truncated", f"connection closed after {s.stream.buffered} bytes of a frame"
                )
                log.warning("client %s closed: malformed frame: %s", s.peer, e)
                self._send_loop(s, error_reply(e))
            self._close_loop_session(s)
            return
        if not s.stream.buffered:
            s.frame_since = time.monotonic()
        s.stream.feed(data)
        self._next(s)

    def _on_writable(self, s: _Session) -> None:
        if self._flush_out(s):
            self._next(s)

    def _rearm(self, s: _Session, mask: int) -> None:
        # One-shot registrations: the loop hears of a connection only when it can
        # act on it (idle and readable, or a reply pending and writable). A busy
        # connection's next request waits in the kernel (bounded memory here).
        self._ep.modify(s.fd, mask)

    def _next(self, s: _Session) -> None:
        """Serve whatever whole requests are buffered, one at a time; then wait for
        more (or for the request in flight to finish)."""
        while s.where == "loop" and not s.busy and s.out is None:
            try:
                payload = s.stream.cut_frame()
                if payload is None:
                    if not s.stream.buffered:
                        s.frame_since = None
                    self._rearm(s, _READ)
                    return
                s.frame_since = time.monotonic() if s.stream.buffered else None
                req = decode_value(payload)
            except ProtocolError as e:
                log.warning("client %s closed: malformed frame: %s", s.peer, e)
                self._send_loop(s, error_reply(e))
                self._close_loop_session(s)
                return
            started = time.perf_counter()
            box = self._box
            try:
                reply = self._answer(s, req, on_loop=True)
            except Exception:  # a bug: logged with its traceback, that connection closed
                log.exception("client %s: internal error; connection closed", s.peer)
                # Its commits (if any) stay logged; no reply says they committed.
                box.clear()
                self._close_loop_session(s)
                return
            if reply is _TO_WORKER:
                # The worker owns the socket from here (nothing was deferred: a
                # request goes to a worker before it changed anything).
                del self._by_fd[s.fd]
                self._ep.unregister(s.fd)
                s.where = "worker"
                self._workers.submit(s, req)
                return
            if box:
                # Applied and logged, not yet durable: the reply waits (rule 1).
                tickets = box[:]
                box.clear()
                if reply is None:
                    self._close_loop_session(s)
                    return
                s.busy = True
                self._deferred.append(_Deferred(s, reply, tickets, started))
                return
            if reply is None:
                self._close_loop_session(s)
                return
            self._send_loop(s, reply)

    def _send_loop(self, s: _Session, reply: tuple) -> bool:
        """Send a reply from the loop without blocking; True when it went whole (else
        the rest waits for EPOLLOUT, or the connection was closed)."""
        try:
            data = encode_frame(reply)
        except (TypeError, ValueError) as e:  # the reply cannot be encoded: say so
            if reply[0] != "ok":
                self._close_loop_session(s)
                return False
            data = encode_frame(
                err("IllegalValueError", f"<ILLEGAL VALUE> the reply cannot be sent: {e}")
            )
        s.out = memoryview(data)
        s.out_since = time.monotonic()
        return self._flush_out(s)

    def _flush_out(self, s: _Session) -> bool:
        out = s.out
        try:
            n = s.sock.send(out)
        except (BlockingIOError, InterruptedError):
            n = 0
        except OSError as e:
            log.info("client %s: reply not sent (%s); connection closed", s.peer, e)
            self._close_loop_session(s)
            return False
        if n < len(out):
            s.out = out[n:]
            self._rearm(s, _WRITE)
            return False
        s.out = None
        return True

    # --- one connection on a worker -------------------------------------------------------

    def _work(self, s: _Session, req: tuple) -> None:
        """On a worker: answer `req`, then serve the connection here while it holds a
        transaction or locks (they belong to this thread); then hand it back."""
        db = self.host.database
        try:
            s.stream.use_timeouts()
            if self._serve_thread(s, req):
                s.sock.setblocking(False)
                self._done.append(("resume", s, None, None))
                self._wake()
                return
        except Exception:  # a bug: logged with its traceback, the connection closed
            log.exception("client %s: internal error; connection closed", s.peer)
        self._end_session(s, db)

    def _needs_thread(self, s: _Session) -> bool:
        db = self.host.database
        return bool(db.tlevel) or db.locks.owns_any(self._owner(db))

    def _serve_thread(self, s: _Session, req: object) -> bool:
        """Requests on this thread while the connection needs it; True: give it back
        to the loop, False: close it."""
        held = False  # the connection had a transaction or locks on this thread
        while True:
            reply = self._answer(s, req, on_loop=False)
            if reply is None or not self._send(s, reply):
                return False
            if self._stop.is_set():
                return False
            deadline = None
            if self._needs_thread(s):
                held = True
            elif not held:
                return True
            else:
                # A connection that just ended a transaction usually starts the next
                # one at once: it stays here a moment rather than going back to the
                # loop and coming back again (two hand-offs per transaction).
                deadline = time.monotonic() + CLIENT_WORKER_LINGER_MS / 1000.0
            try:
                req = s.stream.recv(idle_deadline=deadline, frame_timeout_ms=self._frame_timeout_ms)
            except TimeoutError:
                return True  # idle past the linger, holding nothing: back to the loop
            except ProtocolError as e:
                log.warning("client %s closed: malformed frame: %s", s.peer, e)
                self._send(s, error_reply(e))
                return False
            except OSError as e:
                log.info("client %s: connection lost: %s", s.peer, e)
                return False
            if req is CLOSED:
                return False

    def _end_session(self, session: _Session, db) -> None:
        """On the worker that holds it: close, roll back, release; the session leaves
        the table only then (so `connections` going down means its cleanup is done)."""
        session.where = "closed"
        with contextlib.suppress(OSError):
            session.sock.close()
        try:
            if db is not None:
                self._cleanup(session, db)
        finally:
            with self._lock:
                self._sessions.pop(session, None)

    def _cleanup(self, session: _Session, db) -> None:
        try:
            level = db.tlevel
            if level:
                db.trollback()
                log.info(
                    "client %s went away at $TLEVEL %d: transaction rolled back",
                    session.peer,
                    level,
                )
        except IrisrepError as e:
            log.error("client %s: rollback on disconnect failed: %s", session.peer, e)
        except Exception:
            log.exception("client %s: rollback on disconnect failed", session.peer)
        try:
            db.locks.release_all(self._owner(db))
        except Exception:
            log.exception("client %s: releasing locks on disconnect failed", session.peer)

    @staticmethod
    def _owner(db) -> Any:
        """The lock owner the database uses for the calling thread (its transactions
        hold locks under the same owner)."""
        owner = getattr(db, "_lock_owner", None)
        return owner() if owner is not None else threading.get_ident()

    def _send(self, session: _Session, reply: tuple) -> bool:
        """Send from a worker (blocking, with the send timeout)."""
        try:
            session.stream.send(reply)
        except ValueError as e:  # the reply cannot be encoded: say so instead
            fallback = err("IllegalValueError", f"<ILLEGAL VALUE> the reply cannot be sent: {e}")
            return self._send(session, fallback) if reply[0] == "ok" else False
        except OSError as e:
            log.info("client %s: reply not sent (%s); connection closed", session.peer, e)
            return False
        return True

    # --- answering one request (the loop or a worker) ---------------------------------------

    def _answer(self, session: _Session, req: object, *, on_loop: bool) -> Any:
        """The reply to `req`; None: close the connection (a refusal or an error reply
        was sent already); on the loop, `_TO_WORKER` for a request that may block or
        needs a thread of its own (nothing changed yet)."""
        try:
            if type(req) is not tuple or not req or type(req[0]) is not str:
                raise _BadRequest(f"a request is a tuple (op, args...), not {_short(req)}")
            op = req[0]
            if not session.logged_in:
                if on_loop and (
                    (op == "login" and self._users is not None)
                    or (op != "login" and self._users is None and op not in _LOOP_OPS)
                ):
                    return _TO_WORKER  # a LOGIN's scrypt check takes tens of ms
                return self._first_request(session, req, on_loop)
            if on_loop and op not in _LOOP_OPS:
                return _TO_WORKER
            try:
                return self._dispatch(session, req)
            except errors.ProtectError:
                # A member that is becoming primary says so before its database
                # opens for writes (its replicator attaches in between): a write
                # that arrives then changed nothing and waits for it (on a worker).
                if on_loop:
                    if self._may_become_writable() and not self._box:
                        return _TO_WORKER
                    raise
                if not self._wait_writable():
                    raise
                return self._dispatch(session, req)
        except _BadRequest as e:
            log.warning("client %s closed: bad request: %s", session.peer, e)
            self._reply_then_close(session, error_reply(ProtocolError("request", str(e))), on_loop)
            return None
        except _PeerGone:
            log.info("client %s went away during a lock wait", session.peer)
            return None
        except IrisrepError as e:
            return self._error(e)

    def _error(self, e: IrisrepError) -> tuple:
        if (
            type(e) is errors.ProtectError
            and self.host.role not in ("primary", "local")
            and not getattr(e, "no_redirect", False)
        ):
            # Say who is primary now (a fenced or demoted member, a backup), so
            # a client can go there; still a <PROTECT> for the terminal.
            e = errors.NotPrimaryError(
                f"{e} (the primary is {self.host.primary_client_address or 'unknown'})",
                self.host.primary_client_address,
            )
        return error_reply(e)

    def _reply_then_close(self, session: _Session, reply: tuple, on_loop: bool) -> None:
        if on_loop:
            self._send_loop(session, reply)
        else:
            self._send(session, reply)

    def _may_become_writable(self) -> bool:
        return getattr(self.host, "wait_writable", None) is not None and self.host.role == "primary"

    def _wait_writable(self) -> bool:
        """True once a member in the middle of its promotion is writable (within
        SERVER_PROMOTION_WAIT_S); False at once if it is not becoming primary."""
        wait = getattr(self.host, "wait_writable", None)
        return wait is not None and self.host.role == "primary" and wait(SERVER_PROMOTION_WAIT_S)

    def _first_request(self, session: _Session, req: tuple, on_loop: bool) -> Any:
        """LOGIN (or, with no users configured, any request). None: refused, close."""
        op = req[0]
        if op == "login":
            _arity(req, 2)
            user = _str(req[1], "user")
            password = _str(req[2], "password")
            if self._users is not None:
                stored = self._users.get(user)
                good = verify_password(stored or _DUMMY_HASH, password) and stored is not None
                if not good:
                    with self._lock:
                        self.stats["login_failed"] += 1
                    log.warning(
                        "client %s: login failed for user %r; connection closed",
                        session.peer,
                        user[:64],
                    )
                    self._reply_then_close(
                        session,
                        error_reply(
                            HandshakeError("authentication failed", "bad user or password")
                        ),
                        on_loop,
                    )
                    return None
            session.logged_in = True
            session.user = user
            return ok(None)
        if self._users is not None:
            log.warning("client %s: %r before login; connection closed", session.peer, op[:32])
            self._reply_then_close(
                session,
                error_reply(HandshakeError("authentication failed", f"log in before {op[:32]!r}")),
                on_loop,
            )
            return None
        session.logged_in = True
        return self._dispatch(session, req)

    # --- the operations ----------------------------------------------------------------

    def _dispatch(self, session: _Session, req: tuple) -> tuple:
        handler = _OPS.get(req[0])
        if handler is None:
            raise _BadRequest(f"unknown op {req[0][:32]!r}")
        return ok(handler(self, session, req))

    def _global(self, name: object, session: _Session | None = None, *, write: bool = False):
        from .database import Global

        db = self.host.database if session is None else self._db(session)
        if write and db.parent is not self.host.database and db is not self.host.database:
            # A local database (or a followed mirror's copy) is another instance: a
            # transaction of this connection, which is the member's, cannot cover it.
            if self.host.database.tlevel:
                raise TransactionError(
                    f"database {db.name} is outside this transaction's instance: "
                    "commit or roll back before writing to it"
                )
            if db.protected:
                # Another mirror's read-only copy: this member's primary is not that
                # mirror's, so the refusal must not send the client there.
                e = errors.ProtectError(
                    f"<PROTECT> {_str(name, 'global name')[:64]}: a read-only copy of "
                    "another mirror here; write on that mirror's primary"
                )
                e.no_redirect = True
                raise e
        return Global(db, _str(name, "global name"))

    def _db(self, session: _Session):
        """The database this connection's global operations use: the host's own,
        or the followed mirror's copy it chose with `use_database`."""
        return self.host.database if session.database is None else session.database

    def _op_use_database(self, session, req):
        """(name) -> its canonical name: this connection's global operations use
        that database from now on (None: the member's DB again). A name is one of
        the member's databases (DB, mirrored ones, local ones) or, on a reporting
        async, a followed mirror's copy. Transactions and locks stay with the
        member's mirrored instance (DB and its mirrored databases)."""
        _arity(req, 1)
        if req[1] is None:
            session.database = None
            return None
        name = _str(req[1], "database")
        fn = getattr(self.host, "database_named", None)
        if fn is None:
            raise IrisrepError("this host serves one database")
        canonical, db = fn(name)
        session.database = None if db is self.host.database else db
        return canonical

    def _op_dejournal(self, session, req):
        """(action, mirror) -> JSON text of that mirror's status (admin): pause or
        resume dejournaling one mirror on an async (None: its own mirror)."""
        _arity(req, 2)
        action = _str(req[1], "action")
        mirror = None if req[2] is None else _str(req[2], "mirror")
        fn = getattr(self.host, f"{action}_dejournaling", None)
        if action not in ("pause", "resume"):
            raise _BadRequest(f"dejournal action must be pause or resume, not {action[:32]!r}")
        if fn is None:
            raise IrisrepError("this member does not dejournal (not a mirror member)")
        return json.dumps(fn(mirror), sort_keys=True, default=str)

    def _op_login(self, session, req):
        raise IrisrepError("already logged in")

    def _op_ping(self, session, req):
        _arity(req, 0)
        return "pong"

    def _op_role(self, session, req):
        _arity(req, 0)
        return (str(self.host.role), self.host.primary_client_address)

    def _op_status(self, session, req):
        _arity(req, 0)
        return json.dumps(self.host.status(), sort_keys=True, default=str)

    def _op_switchover(self, session, req):
        """Planned failover to the Active backup (admin). Returns its name."""
        _arity(req, 0)
        fn = getattr(self.host, "switchover", None)
        if fn is None:
            raise IrisrepError("this member cannot switch over (not a mirror member)")
        return fn()

    def _op_promote(self, session, req):
        """Make this backup or DR async the primary (admin, manual). Returns the epoch."""
        _arity(req, 0)
        fn = getattr(self.host, "promote", None)
        if fn is None:
            raise IrisrepError("this member cannot be promoted (not a mirror member)")
        return fn(reason="promoted by an operator")

    def _op_backup_create(self, session, req):
        """(out_dir, incremental) -> JSON text of the new backup's header (admin): an
        online backup of this member's database into `out_dir` on the member's host,
        taken in this process while it runs (backup.create_backup). `out_dir` must be
        an absolute path of at most BACKUP_OUT_DIR_CHARS_MAX characters."""
        import os

        from .backup import create_backup
        from .constants import BACKUP_OUT_DIR_CHARS_MAX

        _arity(req, 2)
        out_dir = _str(req[1], "out_dir")
        incremental = _bool(req[2], "incremental")
        if len(out_dir) > BACKUP_OUT_DIR_CHARS_MAX:
            raise _BadRequest(f"out_dir is longer than {BACKUP_OUT_DIR_CHARS_MAX} characters")
        if not out_dir or "\0" in out_dir or not os.path.isabs(out_dir):
            raise errors.BackupError(
                f"out_dir {out_dir[:200]!r}: give an absolute path on the member's host"
            )
        fn = getattr(self.host, "backup_create", None)
        try:
            if fn is not None:
                info = fn(out_dir, incremental)
            else:
                info = create_backup(self.host.database, out_dir, incremental=incremental)
        except OSError as e:  # the member's file system said no: a reply, not a bug
            raise errors.BackupError(
                f"{e.filename or out_dir}: {e.strerror or e} (on the member's host)"
            ) from None
        return json.dumps(info.as_dict(), sort_keys=True)

    def _op_journal_purge(self, session, req):
        """(dry_run, older_than_days) -> JSON text of the purge decision (admin): which
        journal files go (or would go) and why each other one stays (purge.py)."""
        _arity(req, 2)
        dry_run = _bool(req[1], "dry_run")
        days = req[2]
        if type(days) not in (int, float):
            raise _BadRequest(f"older_than_days must be a number, not {type(days).__name__}")
        fn = getattr(self.host, "journal_purge", None)
        try:
            if fn is not None:
                decision = fn(dry_run=dry_run, older_than_days=days)
            else:
                decision = self.host.database.journal_purge(older_than_days=days, dry_run=dry_run)
        except OSError as e:
            raise errors.JournalPurgeError(f"{e.filename or ''}: {e.strerror or e}") from None
        return json.dumps(decision.as_dict(), sort_keys=True)

    def _op_globals(self, session, req):
        _arity(req, 0)
        return self._db(session).global_names()

    def _op_get(self, session, req):
        _arity(req, 3)
        g = self._global(req[1], session)
        subs = _tuple(req[2], "subscripts")
        if _bool(req[3], "strict"):
            return g[subs]
        missing = _MISSING
        value = g.get(subs, missing)
        return (False, None) if value is missing else (True, value)

    def _op_set(self, session, req):
        _arity(req, 3)
        g = self._global(req[1], session, write=True)
        g[_tuple(req[2], "subscripts")] = req[3]

    def _op_kill(self, session, req):
        _arity(req, 2)
        self._global(req[1], session, write=True).kill(_tuple(req[2], "subscripts"))

    def _op_zkill(self, session, req):
        _arity(req, 2)
        self._global(req[1], session, write=True).zkill(_tuple(req[2], "subscripts"))

    def _op_data(self, session, req):
        _arity(req, 2)
        return self._global(req[1], session).data(_tuple(req[2], "subscripts"))

    def _op_order(self, session, req):
        _arity(req, 3)
        g = self._global(req[1], session)
        return g.order(_tuple(req[2], "subscripts"), reverse=_bool(req[3], "reverse"))

    def _op_query(self, session, req):
        _arity(req, 3)
        g = self._global(req[1], session)
        return g.query(_tuple(req[2], "subscripts"), reverse=_bool(req[3], "reverse"))

    def _op_increment(self, session, req):
        _arity(req, 3)
        g = self._global(req[1], session, write=True)
        return g.increment(_tuple(req[2], "subscripts"), req[3])

    def _op_items(self, session, req):
        """(name, prefix, start, stop, reverse, after, count) -> (nodes, more).

        `after` (None on the first page) is the last node of the previous page; the
        page holds at most `count` (<= CLIENT_ITEMS_PAGE_MAX) nodes and stops early
        before its encoding passes ITEMS_PAGE_BYTES; `more` False means the range is
        done."""
        _arity(req, 7)
        g = self._global(req[1], session)
        prefix = _tuple(req[2], "prefix")
        start = _opt_tuple(req[3], "start")
        stop = _opt_tuple(req[4], "stop")
        reverse = _bool(req[5], "reverse")
        after = _opt_tuple(req[6], "after")
        count = req[7]
        if type(count) is not int or not 1 <= count <= CLIENT_ITEMS_PAGE_MAX:
            raise _BadRequest(f"count must be an int in 1..{CLIENT_ITEMS_PAGE_MAX}")
        skip = None
        if after is not None:
            if reverse:
                stop = after  # [start, after): strictly before it
            else:
                start, skip = after, after  # from it, itself skipped if still there
        nodes = []
        size = 0
        it = g.items(
            prefix, start=start, stop=stop, reverse=reverse, batch=min(count, _ITEMS_BATCH)
        )
        try:
            for subs, value in it:
                if skip is not None:
                    first, skip = skip, None
                    if subs == first:
                        continue
                node_size = _node_size(subs, value)
                if nodes and size + node_size > ITEMS_PAGE_BYTES:
                    return (tuple(nodes), True)
                nodes.append((subs, value))
                size += node_size
                if len(nodes) >= count:
                    return (tuple(nodes), True)
        finally:
            it.close()
        return (tuple(nodes), False)

    def _op_range_hash(self, session, req):
        """(lo, hi, limit, wait_position) -> (count, digest, stop, mid, position, exact):
        the cross-member check's hash of the encoded keys [lo, hi) (datacheck.py;
        read only, bounded work, typed errors for bad bounds or limits)."""
        _arity(req, 4)
        r = datacheck.hash_range(self._db(session), req[1], req[2], req[3], req[4])
        return (r.count, r.digest, r.stop, r.mid, r.position, r.exact)

    def _op_range_items(self, session, req):
        """(lo, hi, count, wait_position) -> (nodes, more, position): the (key, value)
        pairs of [lo, hi), encoded, for the check's report (datacheck.read_range)."""
        _arity(req, 4)
        return datacheck.read_range(self._db(session), req[1], req[2], req[3], req[4])

    def _op_stream_position(self, session, req):
        """The database's journal stream position (a copy: applied; else the end)."""
        _arity(req, 0)
        return datacheck.current_position(self._db(session))

    def _op_batch(self, session, req):
        """(requests) -> (replies): data operations and transaction brackets run in
        order in one round trip, each reply as the request alone would get it; the
        first error ends the batch (its reply last). On a connection outside a
        transaction (served by the loop) a batch must end every transaction it
        starts: one left open is rolled back and the last reply says so. The
        replies go out when every commit in the batch is durable and acknowledged."""
        _arity(req, 1)
        reqs = _tuple(req[1], "requests")
        if len(reqs) > CLIENT_BATCH_REQUESTS_MAX:
            raise _BadRequest(f"a batch holds at most {CLIENT_BATCH_REQUESTS_MAX} requests")
        for r in reqs:
            if type(r) is not tuple or not r or type(r[0]) is not str:
                raise _BadRequest(f"a batched request is a tuple (op, args...), not {_short(r)}")
            if r[0] not in _BATCH_OPS:
                raise _BadRequest(f"{r[0][:32]!r} cannot be batched")
        db = self.host.database
        level = db.tlevel
        replies = []
        try:
            for r in reqs:
                try:
                    replies.append(ok(_OPS[r[0]](self, session, r)))
                except IrisrepError as e:
                    replies.append(self._error(e))
                    break
        finally:
            # The loop's thread serves every loop connection: a transaction of this
            # batch must not outlive it there (its state is the thread's).
            if threading.get_ident() == self._thread.ident and db.tlevel > level:
                left = db.tlevel
                db.trollback()
                replies.append(
                    self._error(
                        errors.TransactionError(
                            f"a batch outside a transaction left $TLEVEL {left}: rolled back"
                        )
                    )
                )
        return tuple(replies)

    def _op_tstart(self, session, req):
        _arity(req, 0)
        db = self.host.database
        db.tstart()
        return db.tlevel

    def _op_tcommit(self, session, req):
        _arity(req, 0)
        db = self.host.database
        db.tcommit()
        return db.tlevel

    def _op_trollback(self, session, req):
        _arity(req, 1)
        db = self.host.database
        db.trollback(req[1])
        return db.tlevel

    def _op_tlevel(self, session, req):
        _arity(req, 0)
        return self.host.database.tlevel

    def _lock_name(self, req) -> tuple:
        g = self._global(req[1])
        subs = _tuple(req[2], "subscripts")
        return (self.host.database.db_id, _core.encode_key(g.prefix, subs))

    def _op_lock(self, session, req):
        """(name, subs, shared, timeout): LOCK +^name(subs), held until UNLOCK, the
        end of the transaction that holds it, or the connection's end."""
        _arity(req, 4)
        name = self._lock_name(req)
        shared = _bool(req[3], "shared")
        timeout = req[4]
        db = self.host.database
        locks = db.locks
        owner = self._owner(db)
        slice_s = CLIENT_LOCK_WAIT_SLICE_MS / 1000.0
        finite = (
            isinstance(timeout, (int, float))
            and not isinstance(timeout, bool)
            and not math.isnan(timeout)
            and not math.isinf(timeout)
        )
        if finite is False and isinstance(timeout, float) and timeout == math.inf:
            timeout = None  # as the lock table reads it: wait as long as it takes
        if timeout is not None and (not finite or timeout <= slice_s):
            # Short (or invalid: the table says why) waits as the local API does.
            locks.lock(owner, name, shared=shared, timeout=timeout)
            return None
        # A long wait runs in slices so that a client that goes away meanwhile does not
        # leave its thread queued for the lock forever.
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            wait = slice_s if deadline is None else min(slice_s, deadline - time.monotonic())
            try:
                locks.lock(owner, name, shared=shared, timeout=max(wait, 0.0))
                return None
            except LockTimeoutError as e:
                if deadline is not None and time.monotonic() >= deadline:
                    text = str(e)
                    cut = text.find(" not granted within ")
                    if cut >= 0:
                        rest = text[cut + len(" not granted within ") :]
                        why = rest.partition(": ")[2]
                        text = f"{text[:cut]} not granted within {timeout}s: {why}"
                    final = LockTimeoutError(text)
                    final.name = getattr(e, "name", None)
                    final.holder = getattr(e, "holder", None)
                    raise final from None
            if _peer_closed(session.sock):
                raise _PeerGone()

    def _op_unlock(self, session, req):
        _arity(req, 3)
        name = self._lock_name(req)
        db = self.host.database
        return db.locks.unlock(self._owner(db), name, shared=_bool(req[3], "shared"))


_MISSING = object()

_OPS = {
    name[len("_op_") :]: getattr(ClientListener, name)
    for name in dir(ClientListener)
    if name.startswith("_op_")
}


def _node_size(subs: tuple, value: object) -> int:
    """About the encoded size of one (subs, value) node (an upper bound)."""
    n = 16
    for s in subs:
        n += 16 + (len(s) * 4 if isinstance(s, str) else 0)
    if isinstance(value, str):
        n += len(value) * 4  # at most 4 UTF-8 bytes a character
    elif isinstance(value, bytes):
        n += len(value)
    elif isinstance(value, int):
        n += value.bit_length() // 8 + 1
    return n + 16


def _peer_closed(sock: socket.socket) -> bool:
    """True when the client has closed its side (EOF or error), without consuming."""
    # Non-blocking for the peek (a socket with a timeout polls first and would wait),
    # then back to its timeout: the connection's stream keeps using it.
    timeout = sock.gettimeout()
    try:
        sock.setblocking(False)
        data = sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except (BlockingIOError, InterruptedError):
        return False
    except OSError:
        return True
    finally:
        with contextlib.suppress(OSError):
            sock.settimeout(timeout)
    return data == b""


def _short(value: object, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
