"""The client listener: serves the client protocol (clientproto.py) over a member's database.

Owns the server side of docs/client-protocol.md: accepting connections, LOGIN, one
thread per connection running its requests against `host.database` through the
local `Global`/`Database` API, and the cleanup when a connection ends.

Promises:
- bounded: at most `connections_max` connections; when full, the oldest connection
  that has not logged in yet is closed to make room, else the new one is answered
  with an error and closed. A connection must complete its first request (LOGIN
  when users are configured) within `login_timeout_ms` of its accept, and each frame
  must arrive whole within the frame timeout, so idle or trickling connections
  cannot pin memory or threads;
- a failed LOGIN is answered with `HandshakeError("authentication failed")`, logged
  on `logging.getLogger("irisrep.server")`, and the connection closed; nothing else
  changes. An unknown user costs the same scrypt check as a known one;
- a malformed frame or request closes that connection (with its reason logged) and
  nothing else; other connections and the listener go on;
- each connection's requests run one at a time on its own thread, so the database's
  per-thread transaction state and lock ownership belong to the connection; when
  the connection ends (close, error, listener close), its open transaction is
  rolled back (all levels) and its locks are released;
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

import contextlib
import json
import logging
import math
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
    err,
    ok,
    send_message,
)
from .constants import (
    CLIENT_CONNECTIONS_MAX,
    CLIENT_FRAME_BYTES_MAX,
    CLIENT_FRAME_TIMEOUT_MS,
    CLIENT_ITEMS_PAGE_MAX,
    CLIENT_LOCK_WAIT_SLICE_MS,
    CLIENT_LOGIN_TIMEOUT_MS,
    CLIENT_REFUSED_PENDING_MAX,
    CLIENT_SEND_TIMEOUT_MS,
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
_ACCEPT_POLL_S = 0.1
_REFUSED_LINGER_S = 1.0
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
    """One client connection and the thread serving it."""

    __slots__ = (
        "sock",
        "stream",
        "peer",
        "accepted",
        "logged_in",
        "user",
        "thread",
        "closed",
        "database",
    )

    def __init__(self, sock: socket.socket, peer: Any, send_timeout_ms: int) -> None:
        self.sock = sock
        self.stream = MessageStream(sock, steady_s=send_timeout_ms / 1000.0)
        self.peer = peer
        self.accepted = time.monotonic()
        self.logged_in = False
        self.user: str | None = None
        self.thread: threading.Thread | None = None
        self.closed = False
        # `use_database`: the followed mirror's copy this connection reads (a
        # reporting async); None: the host's own database.
        self.database: Any = None

    def shutdown(self) -> None:
        """Wake the serving thread (its recv returns) without racing its close."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)


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
        self._sock.settimeout(_ACCEPT_POLL_S)
        self.address: tuple[str, int] = self._sock.getsockname()[:2]
        self._thread = threading.Thread(
            target=self._accept_loop, name=f"irisrep-client-listen {self.address}", daemon=True
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
        """Stop accepting, close every connection (each rolls back its transaction
        and releases its locks on its own thread) and wait for them."""
        self._stop.set()
        self._thread.join(timeout=5)
        with self._lock:
            sessions = list(self._sessions)
        for s in sessions:
            s.shutdown()
        for s in sessions:
            if s.thread is not None:
                s.thread.join(timeout=5)

    # --- accepting ---------------------------------------------------------------------

    def _accept_loop(self) -> None:
        try:
            while not self._stop.is_set():
                self._close_refused(time.monotonic())
                try:
                    conn, peer = self._sock.accept()
                except TimeoutError:
                    continue
                except OSError as e:  # EMFILE and friends: log, keep serving
                    if self._stop.is_set():
                        return
                    log.warning("accept failed: %s", e)
                    time.sleep(_ACCEPT_POLL_S)
                    continue
                self._admit(conn, peer)
        finally:
            with contextlib.suppress(OSError):
                self._sock.close()
            for _t, conn in self._refused:
                with contextlib.suppress(OSError):
                    conn.close()
            self._refused.clear()

    def _admit(self, conn: socket.socket, peer: Any) -> None:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        session = _Session(conn, peer, self._send_timeout_ms)
        victim = None
        with self._lock:
            if len(self._sessions) >= self._connections_max:
                victim = next((s for s in self._sessions if not s.logged_in), None)
                if victim is not None:
                    del self._sessions[victim]
                    self.stats["evicted"] += 1
            full = len(self._sessions) >= self._connections_max
            if not full:
                self._sessions[session] = None
                self.stats["accepted"] += 1
            else:
                self.stats["refused"] += 1
        if victim is not None:
            log.warning(
                "client %s closed before its login to make room (%d connections)",
                victim.peer,
                self._connections_max,
            )
            victim.shutdown()
        if full:
            log.warning("client %s refused: %d connections are open", peer, self._connections_max)
            self._refuse(conn)
            return
        t = threading.Thread(
            target=self._serve, args=(session,), name=f"irisrep-client {peer}", daemon=True
        )
        session.thread = t
        t.start()

    def _refuse(self, conn: socket.socket) -> None:
        """Answer with an error and half-close; the socket is closed a moment later
        so the client reads the refusal (an immediate close could reset it first)."""
        reply = err(
            "IrisrepError",
            f"too many client connections ({self._connections_max}); try again later",
            "connection limit",
        )
        try:
            send_message(conn, reply, timeout_ms=100)
            conn.shutdown(socket.SHUT_WR)
        except OSError:
            conn.close()
            return
        self._refused.append((time.monotonic() + _REFUSED_LINGER_S, conn))
        if len(self._refused) > CLIENT_REFUSED_PENDING_MAX:
            _t, old = self._refused.pop(0)
            with contextlib.suppress(OSError):
                old.close()

    def _close_refused(self, now: float) -> None:
        while self._refused and self._refused[0][0] <= now:
            _t, conn = self._refused.pop(0)
            with contextlib.suppress(OSError):
                conn.close()

    # --- one connection ----------------------------------------------------------------

    def _serve(self, session: _Session) -> None:
        db = self.host.database
        try:
            self._serve_requests(session)
        except Exception:  # a bug: logged with its traceback, the connection closed
            log.exception("client %s: internal error; connection closed", session.peer)
        finally:
            self._end_session(session, db)

    def _end_session(self, session: _Session, db) -> None:
        """Close, roll back, release; the session leaves the table only then (so
        `connections` going down means its cleanup is done)."""
        session.closed = True
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
        try:
            session.stream.send(reply)
        except ValueError as e:  # the reply cannot be encoded: say so instead
            fallback = err("IllegalValueError", f"<ILLEGAL VALUE> the reply cannot be sent: {e}")
            return self._send(session, fallback) if reply[0] == "ok" else False
        except OSError as e:
            log.info("client %s: reply not sent (%s); connection closed", session.peer, e)
            return False
        return True

    def _serve_requests(self, session: _Session) -> None:
        deadline: float | None = session.accepted + self._login_timeout
        while True:
            try:
                req = session.stream.recv(
                    idle_deadline=deadline, frame_timeout_ms=self._frame_timeout_ms
                )
            except TimeoutError:
                log.warning(
                    "client %s closed: no %s within %d ms of connecting",
                    session.peer,
                    "login" if self._users is not None else "request",
                    int(self._login_timeout * 1000),
                )
                return
            except ProtocolError as e:
                log.warning("client %s closed: malformed frame: %s", session.peer, e)
                self._send(session, error_reply(e))
                return
            except OSError as e:
                log.info("client %s: connection lost: %s", session.peer, e)
                return
            if req is CLOSED:
                return
            try:
                if type(req) is not tuple or not req or type(req[0]) is not str:
                    raise _BadRequest(f"a request is a tuple (op, args...), not {_short(req)}")
                if not session.logged_in:
                    reply = self._first_request(session, req)
                    if reply is None:
                        return
                    deadline = None
                else:
                    try:
                        reply = self._dispatch(session, req)
                    except errors.ProtectError:
                        # A member that is becoming primary says so before its database
                        # opens for writes (its replicator attaches in between): a
                        # write that arrives then changed nothing and waits for it.
                        if not self._wait_writable():
                            raise
                        reply = self._dispatch(session, req)
            except _BadRequest as e:
                log.warning("client %s closed: bad request: %s", session.peer, e)
                self._send(session, error_reply(ProtocolError("request", str(e))))
                return
            except _PeerGone:
                log.info("client %s went away during a lock wait", session.peer)
                return
            except IrisrepError as e:
                if type(e) is errors.ProtectError and self.host.role not in ("primary", "local"):
                    # Say who is primary now (a fenced or demoted member, a backup), so
                    # a client can go there; still a <PROTECT> for the terminal.
                    e = errors.NotPrimaryError(
                        f"{e} (the primary is {self.host.primary_client_address or 'unknown'})",
                        self.host.primary_client_address,
                    )
                reply = error_reply(e)
            if not self._send(session, reply):
                return

    def _wait_writable(self) -> bool:
        """True once a member in the middle of its promotion is writable (within
        SERVER_PROMOTION_WAIT_S); False at once if it is not becoming primary."""
        wait = getattr(self.host, "wait_writable", None)
        return wait is not None and self.host.role == "primary" and wait(SERVER_PROMOTION_WAIT_S)

    def _first_request(self, session: _Session, req: tuple) -> tuple | None:
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
                    self._send(
                        session,
                        error_reply(
                            HandshakeError("authentication failed", "bad user or password")
                        ),
                    )
                    return None
            session.logged_in = True
            session.user = user
            return ok(None)
        if self._users is not None:
            log.warning("client %s: %r before login; connection closed", session.peer, op[:32])
            self._send(
                session,
                error_reply(HandshakeError("authentication failed", f"log in before {op[:32]!r}")),
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
    try:
        sock.setblocking(False)  # the next read or send sets its own timeout again
        data = sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except (BlockingIOError, InterruptedError):
        return False
    except OSError:
        return True
    return data == b""


def _short(value: object, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
