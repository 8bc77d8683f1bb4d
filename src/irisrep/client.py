"""`irisrep.connect`: a remote connection with the local Database's API for users.

Owns the client side of docs/client-protocol.md: finding the primary among a list of
member addresses, LOGIN, and `Connection` / `RemoteGlobal`, which mirror
`Database` / `Global` (`conn.globals[name][subs]`, `$DATA`, `$ORDER`, `$QUERY`,
KILL, `items`, `lock`, `transaction`, ...).

Promises:
- arguments are validated here as the local API validates them (the same key and
  value encoders), so bad input raises the same typed error before anything is sent;
- an error the member raises is re-raised here as the same `irisrep` error class
  (an unknown class as `IrisrepError`), with the member's message;
- one Connection is one TCP connection and one request at a time (a lock around
  each request), so it may be shared between threads, but transactions and locks
  belong to the connection as they belong to a thread locally: use one connection
  per thread that uses transactions or locks;
- a call whose connection breaks raises `ConnectionError` (an OSError) and is never
  retried (a write may have committed); the NEXT call finds the primary again from
  the address list. A transaction open when the connection broke was rolled back by
  the member: until it is ended (TROLLBACK, or TCOMMIT, which then raises), every
  call raises `TransactionError`, so no write of it lands outside it. Locks held on
  the broken connection were released by the member.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

from . import _core, errors
from .clientproto import (
    CLOSED,
    MessageStream,
    ProtocolError,
    check_response,
    encode_frame,
    recv_message,
)
from .config import parse_address
from .constants import (
    CLIENT_CONNECT_TIMEOUT_MS,
    CLIENT_FAILOVER_WAIT_S,
    CLIENT_ITEMS_PAGE_MAX,
    CLIENT_REQUEST_TIMEOUT_S,
    LOCK_TIMEOUT_DEFAULT_S,
    MIRROR_MEMBERS_MAX,
)
from .errors import (
    ClosedError,
    HandshakeError,
    IllegalValueError,
    IrisrepError,
    NotPrimaryError,
    TransactionError,
)
from .locks import LockTable

__all__ = ["connect", "connect_member", "Connection", "RemoteGlobal", "RemoteGlobals"]

WRITABLE_ROLES = ("primary", "local")
_ITEMS_BATCH_DEFAULT = 256


def _address(a: Any) -> tuple[str, int]:
    """("host", port) from "host:port", a (host, port) pair or a config Address."""
    if isinstance(a, str):
        try:
            addr = parse_address(a)
        except ValueError as e:
            raise errors.ConfigError(f"address {a!r}: {e}") from None
        return (addr.host, addr.port)
    if (
        isinstance(a, Sequence)
        and len(a) == 2
        and isinstance(a[0], str)
        and isinstance(a[1], int)
        and not isinstance(a[1], bool)
    ):
        return (a[0], a[1])
    raise errors.ConfigError(f"address {a!r}: expected 'host:port' or (host, port)")


def _show(addr: tuple[str, int]) -> str:
    return f"[{addr[0]}]:{addr[1]}" if ":" in addr[0] else f"{addr[0]}:{addr[1]}"


def _subs(subs: Any) -> tuple:
    return subs if type(subs) is tuple else (subs,)


def make_error(name: object, message: object, extra: object) -> IrisrepError:
    """The irisrep error an "err" response names (unknown classes: IrisrepError)."""
    message = str(message)
    cls: Any = None
    if name == "ProtocolError":
        cls = ProtocolError
    elif isinstance(name, str) and name in errors.__all__:
        cls = getattr(errors, name)
    if not isinstance(cls, type) or not issubclass(cls, IrisrepError):
        return IrisrepError(message)
    try:
        if issubclass(cls, errors.WireError):
            if type(extra) is tuple and len(extra) == 2 and all(isinstance(x, str) for x in extra):
                return cls(extra[0], extra[1])
            return cls("remote", message)
        if issubclass(cls, NotPrimaryError):
            return cls(message, extra if isinstance(extra, str) else None)
        return cls(message)
    except Exception:  # a class whose constructor wants more: keep the message
        return IrisrepError(message)


class Connection:
    """A connection to a member (normally the primary). Use `irisrep.connect()`."""

    def __init__(
        self,
        addresses: Any,
        *,
        user: str | None = None,
        password: str | None = None,
        timeout: float = CLIENT_CONNECT_TIMEOUT_MS / 1000.0,
        request_timeout: float | None = CLIENT_REQUEST_TIMEOUT_S,
        follow_primary: bool = True,
    ) -> None:
        if isinstance(addresses, (str, bytes)) or (
            isinstance(addresses, tuple) and len(addresses) == 2 and isinstance(addresses[1], int)
        ):
            addresses = [addresses]
        self._addresses = [_address(a) for a in addresses]
        if not self._addresses:
            raise errors.ConfigError("addresses: at least one member address is needed")
        if (user is None) != (password is None):
            raise errors.ConfigError("user and password go together: give both or neither")
        self._user = user
        self._password = password
        self._timeout = float(timeout)
        self._request_timeout = request_timeout
        self._follow = follow_primary
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._stream: MessageStream | None = None  # self._sock's buffered frames
        self._member: tuple[str, int] | None = None
        self._role: str | None = None
        self._generation = 0  # one more each time the connection breaks
        self._tlevel = 0  # $TLEVEL as the member last reported it
        self._lost_level = 0  # levels of a transaction lost with a broken connection
        self._lost_message = ""
        self._closed = False
        self._database: str | None = None  # use_database(): chosen again on a reconnect
        self.globals = RemoteGlobals(self)
        with self._lock:
            self._discover()

    # --- lifecycle -----------------------------------------------------------------------

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection; the member rolls back an open transaction and
        releases this connection's locks."""
        with self._lock:
            self._closed = True
            self._drop()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def address(self) -> str | None:
        """The member this connection talks to now ("host:port"), if connected."""
        return None if self._member is None else _show(self._member)

    @property
    def role(self) -> str | None:
        """That member's role when this connection found it."""
        return self._role

    def __repr__(self) -> str:
        state = "closed" if self._closed else (self.address or "disconnected")
        return f"<irisrep.Connection {state}>"

    # --- finding the member --------------------------------------------------------------

    def _open(self, addr: tuple[str, int]) -> socket.socket:
        sock = socket.create_connection(addr, timeout=self._timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            if self._user is not None:
                self._call(sock, ("login", self._user, self._password), self._timeout)
        except BaseException:
            sock.close()
            raise
        return sock

    def _call(self, sock: socket.socket, req: tuple, timeout: float | None) -> Any:
        """One request and its response on sock. OSError or ProtocolError when the
        connection fails; the member's error, raised, for an "err" response."""
        data = encode_frame(req)
        sock.settimeout(timeout)
        sock.sendall(data)
        deadline = None if timeout is None else time.monotonic() + timeout
        resp = recv_message(sock, idle_deadline=deadline)
        if resp is CLOSED:
            raise ConnectionResetError(f"{req[0]}: the member closed the connection")
        resp = check_response(resp)
        if resp[0] == "ok":
            return resp[1]
        raise make_error(resp[1], resp[2], resp[3])

    def _discover(self) -> None:
        """Under the lock: connect to the primary (or, for connect_member or a single
        address with no primary, to that member)."""
        candidates = list(self._addresses)
        tried: set[tuple[str, int]] = set()
        problems: list[str] = []
        auth_error: HandshakeError | None = None
        fallback: tuple[socket.socket, tuple[str, int], str] | None = None
        reachable = []
        i = 0
        try:
            while i < len(candidates):
                addr = candidates[i]
                i += 1
                if addr in tried:
                    continue
                tried.add(addr)
                try:
                    sock = self._open(addr)
                except HandshakeError as e:
                    auth_error = e
                    problems.append(f"{_show(addr)}: {e}")
                    continue
                except (OSError, IrisrepError) as e:
                    problems.append(f"{_show(addr)}: {e}")
                    continue
                try:
                    role, primary = self._call(sock, ("role",), self._timeout)
                    role = str(role)
                except (OSError, IrisrepError, ValueError, TypeError) as e:
                    sock.close()
                    if isinstance(e, HandshakeError):
                        auth_error = e
                    problems.append(f"{_show(addr)}: {e}")
                    continue
                if not self._follow or role in WRITABLE_ROLES:
                    self._use(sock, addr, role)
                    return
                reachable.append(f"{_show(addr)} is {role}")
                if (
                    isinstance(primary, str)
                    and len(candidates) < len(self._addresses) + MIRROR_MEMBERS_MAX
                ):
                    with contextlib.suppress(errors.ConfigError):
                        candidates.append(_address(primary))
                if len(self._addresses) == 1 and fallback is None:
                    fallback = (sock, addr, role)
                else:
                    sock.close()
            if fallback is not None:
                sock, addr, role = fallback
                fallback = None
                self._use(sock, addr, role)
                return
        finally:
            if fallback is not None:
                fallback[0].close()
        if reachable:
            raise NotPrimaryError(f"no primary among the members: {'; '.join(reachable)}")
        if auth_error is not None:
            raise auth_error
        raise ConnectionRefusedError(f"no member reachable: {'; '.join(problems)}")

    def _use(self, sock: socket.socket, addr: tuple[str, int], role: str) -> None:
        self._sock = sock
        self._stream = MessageStream(sock)
        self._member = addr
        self._role = role
        self._tlevel = 0
        if self._database is not None:
            # A reconnect must not fall back silently to the member's own database.
            self._call(sock, ("use_database", self._database), self._timeout)

    def _drop(self) -> None:
        """Under the lock: forget the connection (a transaction on it is lost)."""
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None
            self._stream = None
            self._generation += 1
            if self._tlevel:
                self._lost_level = self._tlevel
                self._lost_message = (
                    f"the connection to {self.address} broke inside a transaction "
                    f"($TLEVEL {self._tlevel}); the member rolled it back"
                )
            self._tlevel = 0

    # --- requests ------------------------------------------------------------------------

    def _request(self, req: tuple, *, lock_timeout: float | None = 0.0) -> Any:
        """Send req and return the reply's value. lock_timeout: added to the request
        timeout (None: wait as long as the member does)."""
        op = req[0]
        try:
            data = encode_frame(req)
        except (TypeError, ValueError) as e:
            raise IllegalValueError(f"<ILLEGAL VALUE> {op}: cannot be sent: {e}") from None
        with self._lock:
            if self._closed:
                raise ClosedError("the connection is closed")
            if self._lost_level:
                return self._lost_request(req)
            if self._sock is None:
                self._discover_waiting()
            resp = self._exchange(op, data, lock_timeout)
            if resp[0] == "ok":
                return resp[1]
            if (
                self._follow
                and resp[1] in ("ProtectError", "NotPrimaryError")
                and self._role in WRITABLE_ROLES
                and not self._tlevel
                and op not in ("tstart", "tcommit", "trollback")
            ):
                # The member we took for the primary refused the write and changed
                # nothing: it is no longer primary (a switchover or a failover). Find
                # the new primary and send the request there, once.
                self._drop()
                self._discover_waiting()
                resp = self._exchange(op, data, lock_timeout)
                if resp[0] == "ok":
                    return resp[1]
            raise make_error(resp[1], resp[2], resp[3])

    def _exchange(self, op: str, data: bytes, lock_timeout: float | None) -> tuple:
        """Under the lock: one request on the current connection, its checked reply.
        A broken connection is dropped and raises ConnectionError (never retried: the
        request may have been carried out)."""
        stream = self._stream
        timeout = self._request_timeout
        if timeout is not None:
            timeout = None if lock_timeout is None else timeout + lock_timeout
        try:
            stream.send_frame(data, timeout)
            deadline = None if timeout is None else time.monotonic() + timeout
            resp = stream.recv(idle_deadline=deadline)
            if resp is CLOSED:
                raise ConnectionResetError("the member closed the connection")
            resp = check_response(resp)
        except (OSError, ProtocolError) as e:
            where = self.address
            self._drop()
            raise ConnectionError(
                f"{op}: the connection to {where} broke ({e}); not retried"
            ) from e
        if resp[0] != "ok" and resp[1] in ("ProtocolError", "HandshakeError"):
            self._drop()  # the member closes the connection after these
        return resp

    def _discover_waiting(self) -> None:
        """Under the lock: find the primary, waiting out a failover (members answer,
        none is primary yet) for up to CLIENT_FAILOVER_WAIT_S."""
        deadline = time.monotonic() + (CLIENT_FAILOVER_WAIT_S if self._follow else 0.0)
        while True:
            try:
                self._discover()
                return
            except (NotPrimaryError, ConnectionRefusedError):
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.05)

    def _lost_request(self, req: tuple) -> Any:
        """A transaction was lost with the connection: end it here, refuse the rest."""
        op = req[0]
        message = self._lost_message
        if op == "trollback":
            levels = req[1]
            n = self._lost_level if levels is None else levels
            if type(n) is not int or not 1 <= n <= self._lost_level:
                raise TransactionError(f"TROLLBACK {levels!r}: $TLEVEL is {self._lost_level}")
            self._lost_level -= n
            return self._lost_level
        if op == "tcommit":
            self._lost_level -= 1
            raise TransactionError(f"TCOMMIT: {message}")
        if op == "tlevel":
            return self._lost_level
        raise TransactionError(f"{op}: {message}; end it with TROLLBACK")

    def ping(self) -> None:
        self._request(("ping",))

    def status(self) -> dict:
        """The member's status (as `irisrep ps --json` shows it)."""
        return json.loads(self._request(("status",)))

    def use_database(self, name: str | None) -> str | None:
        """This connection's global operations use database `name` from now on
        (None: the member's DB again), kept across reconnects: one of the member's
        databases (DB, mirrored, local) or, on a reporting async, a followed
        mirror's copy (`MIRROR2`, `MIRROR2/SALES`). Returns its canonical name;
        DatabaseNotFoundError (<NAMESPACE>) for one the member does not have."""
        canonical = self._request(("use_database", name))
        self._database = canonical if name is not None else None
        return canonical

    def dejournal(self, action: str, mirror: str | None = None) -> dict:
        """Pause or resume (`action`) dejournaling `mirror` on the connected async
        (None: its own mirror); that mirror's status afterwards."""
        return json.loads(self._request(("dejournal", action, mirror), lock_timeout=None))

    def switchover(self) -> str:
        """Ask the primary for a planned failover to its Active backup; the new
        primary's name. This connection then talks to a backup."""
        return self._request(("switchover",), lock_timeout=None)

    def promote(self) -> int:
        """Make the connected backup or DR async the primary; the new epoch."""
        return self._request(("promote",), lock_timeout=None)

    def backup_create(self, out_dir: str, incremental: bool = False) -> dict:
        """An online backup of the connected member's database into `out_dir` (an
        absolute path on the member's host); the new backup's header (as
        `BackupInfo.as_dict`). Waits as long as the backup takes."""
        return json.loads(self._request(("backup_create", out_dir, incremental), lock_timeout=None))

    def journal_purge(self, *, dry_run: bool = False, older_than_days: float | None = None) -> dict:
        """Purge the connected member's journal (dry run: only say); the decision as
        a dict: `remove`, `removed`, `kept` (each with its reasons), `notes`.
        `older_than_days` defaults to JOURNAL_PURGE_DAYS."""
        if older_than_days is None:
            from .constants import JOURNAL_PURGE_DAYS

            older_than_days = JOURNAL_PURGE_DAYS
        return json.loads(
            self._request(("journal_purge", dry_run, older_than_days), lock_timeout=None)
        )

    # --- the cross-member check (irisrep.datacheck; docs/datacheck.md) ------------------

    def range_hash(self, lo: bytes, hi: bytes | None, limit: int, wait_position=None) -> tuple:
        """RANGE_HASH: (count, digest, stop, mid, position, exact) of the encoded keys
        [lo, hi) on the member (datacheck.hash_range)."""
        return self._request(("range_hash", lo, hi, limit, wait_position))

    def range_items(self, lo: bytes, hi: bytes | None, count: int, wait_position=None) -> tuple:
        """RANGE_ITEMS: (nodes, more, position), nodes as (key, value) encoded bytes."""
        return self._request(("range_items", lo, hi, count, wait_position))

    def stream_position(self) -> int:
        """The member database's journal stream position (a copy: what it applied)."""
        return self._request(("stream_position",))

    def global_(self, name: str) -> RemoteGlobal:
        return RemoteGlobal(self, name)

    def global_names(self) -> list[str]:
        """Names of the globals that hold at least one node, in collation order."""
        return list(self._request(("globals",)))

    # --- transactions --------------------------------------------------------------------

    @property
    def tlevel(self) -> int:
        """$TLEVEL of this connection."""
        level = self._request(("tlevel",))
        self._tlevel = level
        return level

    def tstart(self) -> None:
        self._tlevel = self._request(("tstart",))

    def tcommit(self) -> None:
        """TCOMMIT: at $TLEVEL 1 the transaction is durable when this returns."""
        self._tlevel = self._request(("tcommit",))

    def trollback(self, levels: int | None = None) -> None:
        """TROLLBACK (all levels) or TROLLBACK n."""
        self._tlevel = self._request(("trollback", levels))

    def batch(self, requests: Sequence[tuple]) -> list:
        """Several requests in one round trip (the BATCH op, docs/client-protocol.md):
        data operations and TSTART/TCOMMIT/TROLLBACK as request tuples, e.g.
        `[("tstart",), ("set", "acct", (1,), 100), ("tcommit",)]`. Returns their values
        in order. The first error ends the batch and is raised, with `.results` the
        values of the requests before it. Outside a transaction a batch must end every
        transaction it starts (else the member rolls it back and says so). Arguments
        are checked by the member: subscripts must be tuples, and a malformed request
        closes the connection as any would."""
        reqs = tuple(tuple(r) for r in requests)
        replies = self._request(("batch", reqs))
        results: list = []
        failed = None
        for r in replies:
            if r[0] == "ok":
                results.append(r[1])
            else:
                failed = make_error(r[1], r[2], r[3])
                break
        brackets = ("tstart", "tcommit", "trollback", "tlevel")
        for req, value in zip(reqs, results, strict=False):  # results may stop early
            if req[0] in brackets:
                self._tlevel = value
        if failed is not None:
            if any(req[0] in brackets for req in reqs):
                _ = self.tlevel  # what the member left (a rollback of the batch's own)
            failed.results = results
            raise failed
        return results

    @contextlib.contextmanager
    def transaction(self):
        """TSTART ... TCOMMIT; an exception rolls back this level and propagates."""
        self.tstart()
        level = self._tlevel
        try:
            yield self
        except BaseException:
            current = self._lost_level or self._tlevel
            if current >= level and not self._closed:
                self.trollback(current - level + 1)
            raise
        else:
            self.tcommit()


class RemoteGlobals:
    """`conn.globals[name]` -> RemoteGlobal; iterating gives the non-empty globals."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def __getitem__(self, name: str) -> RemoteGlobal:
        return RemoteGlobal(self._conn, name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._conn.global_names())

    def __contains__(self, name: str) -> bool:
        return name in self._conn.global_names()


class RemoteGlobal:
    """One global on the member, with the local `Global` API (see irisrep.database)."""

    __slots__ = ("_conn", "_name", "_prefix", "name")

    def __init__(self, conn: Connection, name: str) -> None:
        self._prefix = _core.encode_name(name)  # SubscriptError for a bad name, as locally
        self._conn = conn
        self._name = name
        self.name = name[1:] if name.startswith("^") else name

    def _check(self, subs: Any) -> tuple:
        subs = _subs(subs)
        _core.encode_key(self._prefix, subs)  # validated here as the local API does
        return subs

    def __getitem__(self, subs: Any) -> Any:
        return self._conn._request(("get", self._name, self._check(subs), True))

    def get(self, subs: Any, default: Any = None) -> Any:
        """`$GET`: the value, or default when the node has none."""
        found, value = self._conn._request(("get", self._name, self._check(subs), False))
        return value if found else default

    def __setitem__(self, subs: Any, value: Any) -> None:
        subs = self._check(subs)
        _core.encode_value(value)
        self._conn._request(("set", self._name, subs, value))

    def set(self, subs: Any, value: Any) -> None:
        self[subs] = value

    def __contains__(self, subs: Any) -> bool:
        """True when the node has a value ($DATA 1 or 11)."""
        return self.data(subs) % 10 == 1

    def __delitem__(self, subs: Any) -> None:
        self.kill(subs)

    def kill(self, subs: Any = ()) -> None:
        """KILL: the node and its descendants."""
        self._conn._request(("kill", self._name, self._check(subs)))

    def zkill(self, subs: Any) -> None:
        """ZKILL: the node's own value only."""
        self._conn._request(("zkill", self._name, self._check(subs)))

    def data(self, subs: Any = ()) -> int:
        """`$DATA`: 0, 1, 10 or 11."""
        return self._conn._request(("data", self._name, self._check(subs)))

    def order(self, subs: Any, reverse: bool = False) -> Any:
        """`$ORDER`: the next (or previous) subscript at the last level, or None."""
        subs = _subs(subs)
        if subs and type(subs[-1]) is str and subs[-1] == "":
            self._check(subs[:-1])  # "" starts from the first (or last) subscript
        else:
            self._check(subs)
        return self._conn._request(("order", self._name, subs, bool(reverse)))

    def query(self, subs: Any = (), reverse: bool = False) -> tuple | None:
        """`$QUERY`: the subscripts of the next (or previous) node with a value."""
        return self._conn._request(("query", self._name, self._check(subs), bool(reverse)))

    def increment(self, subs: Any = (), by: Any = 1) -> int | float:
        """`$INCREMENT` on the member (atomic there; not undone by a rollback)."""
        subs = self._check(subs)
        _core.number_value(by)
        return self._conn._request(("increment", self._name, subs, by))

    def items(
        self,
        prefix: Any = (),
        start: Any = None,
        stop: Any = None,
        reverse: bool = False,
        batch: int = _ITEMS_BATCH_DEFAULT,
    ) -> Iterator[tuple[tuple, Any]]:
        """(subscripts, value) of every node with a value under prefix, in order,
        fetched `batch` nodes (at most CLIENT_ITEMS_PAGE_MAX) per request."""
        prefix = self._check(prefix)
        start = None if start is None else self._check(start)
        stop = None if stop is None else self._check(stop)
        if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
            raise errors.ConfigError(f"batch: {batch!r} must be an int >= 1")
        count = min(batch, CLIENT_ITEMS_PAGE_MAX)
        return self._items(prefix, start, stop, bool(reverse), count)

    def _items(self, prefix, start, stop, reverse, count) -> Iterator[tuple[tuple, Any]]:
        after = None
        while True:
            nodes, more = self._conn._request(
                ("items", self._name, prefix, start, stop, reverse, after, count)
            )
            yield from nodes
            if not more or not nodes:
                return
            after = nodes[-1][0]

    def keys(self, prefix: Any = (), reverse: bool = False) -> Iterator[tuple]:
        for subs, _value in self.items(prefix, reverse=reverse):
            yield subs

    def __iter__(self) -> Iterator[tuple]:
        return self.keys()

    @contextlib.contextmanager
    def lock(
        self, subs: Any = (), timeout: float | None = LOCK_TIMEOUT_DEFAULT_S, shared: bool = False
    ):
        """LOCK +^name(subs) on the member for the block (and, inside a transaction,
        until it ends); LockTimeoutError if not granted within timeout (None: wait)."""
        subs = self._check(subs)
        LockTable._check_timeout(timeout)
        conn = self._conn
        conn._request(("lock", self._name, subs, bool(shared), timeout), lock_timeout=timeout)
        generation = conn._generation
        try:
            yield self
        finally:
            # On a broken connection the member released the lock with it.
            if conn._generation == generation and not conn._closed:
                with contextlib.suppress(ConnectionError):
                    conn._request(("unlock", self._name, subs, bool(shared)))

    def __repr__(self) -> str:
        return f"<irisrep.RemoteGlobal ^{self.name}>"


def connect(
    addresses: Any,
    *,
    user: str | None = None,
    password: str | None = None,
    timeout: float = CLIENT_CONNECT_TIMEOUT_MS / 1000.0,
    request_timeout: float | None = CLIENT_REQUEST_TIMEOUT_S,
) -> Connection:
    """Connect to the primary among `addresses` ("host:port", (host, port), or a list
    of them). Each is asked for its role; the primary (or an unmirrored "local"
    member) is used; with one address and no primary, that member. `timeout` bounds
    each connect and login; `request_timeout` each reply (None: no bound)."""
    return Connection(
        addresses,
        user=user,
        password=password,
        timeout=timeout,
        request_timeout=request_timeout,
        follow_primary=True,
    )


def connect_member(
    address: Any,
    *,
    user: str | None = None,
    password: str | None = None,
    timeout: float = CLIENT_CONNECT_TIMEOUT_MS / 1000.0,
    request_timeout: float | None = CLIENT_REQUEST_TIMEOUT_S,
) -> Connection:
    """Connect to exactly this member whatever its role (`irisrep session MEMBER`);
    on a backup or async member writes raise ProtectError."""
    return Connection(
        [address],
        user=user,
        password=password,
        timeout=timeout,
        request_timeout=request_timeout,
        follow_primary=False,
    )
