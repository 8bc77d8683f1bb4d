"""The instance lock table: IRIS `LOCK` semantics on one `threading.Condition`.

A lock name is `(db_id, key)`: `key` is an encoded global reference (keycodec), so
bytewise order is collation order and the descendants of a node are exactly the keys
that start with its key (no encoded reference is a prefix of another unless it is an
ancestor). An owner is any hashable: the engine passes one token per thread or per
transaction. A lock is held by `(owner, name, mode)` with a count.

Rules (IRIS `LOCK`):
- a lock on a node conflicts with locks on the same node, its ancestors and its
  descendants (`^a(1)` against `^a` and `^a(1,2)`), never with siblings (`^a(2)`);
- exclusive conflicts with any lock of another owner on an overlapping name; shared
  coexists with shared; an owner's own locks never conflict with each other (an
  owner holding `^a` shared may also take `^a(1)` exclusive);
- `lock(..., incremental=True)` is `LOCK +name`: the count goes up by one;
  `lock(..., incremental=False)` is `LOCK name`: all the owner's locks are released and
  this one is taken with count 1. `unlock` is `LOCK -name`: the count goes down by one
  and the lock is released at zero;
- between `begin_hold(owner)` and the matching `end_hold(owner)` (the engine calls
  them at TSTART / final TCOMMIT or TROLLBACK) a lock whose count reaches zero is
  *kept* (IRIS shows it as "delock") and released only by `end_hold`; `snapshot()`
  shows such a lock with count 0, and locking it again makes it count 1.

Promises:
- a call that fails (timeout, full table, bad argument) changes nothing. Note that
  IRIS releases the owner's locks *before* a non-incremental `LOCK name` waits, so a
  timed-out `LOCK name` there has lost them; here the owner keeps all its locks until
  the new lock is granted, and keeps them if it is not;
- `timeout=0` tries once; `timeout=t > 0` waits at most about `t` seconds;
  `timeout=None` waits forever and is meant only for callers that ask for that
  explicitly (the `Global.lock` layer should pass a finite timeout by default). On
  expiry `LockTimeoutError` names the lock and, when one is known, a holder
  (attributes `name`, `holder`);
- no busy waiting: waiters sleep on the one Condition and are woken (notify_all) only
  when a lock or a queued request overlapping some waiter's name goes away;
- fairness: requests that must wait join a FIFO queue; a request is granted only if it
  conflicts with no held lock of another owner *and* with no earlier queued request of
  another owner, so an exclusive waiter is not starved by a stream of shared lockers.
  Exception, to avoid deadlocks the queue would otherwise create: an earlier waiter
  that is itself blocked by a lock this owner already holds does not hold this owner
  back (it must wait for this owner anyway). A `timeout=0` attempt that is blocked
  only by a queued waiter fails, like any other conflict;
- at most `locks_max` (default `LOCKS_MAX`) `(owner, name, mode)` entries are held,
  counting kept zero-count ones; a lock that would need one more raises
  `LockTableFullError` at once (it does not wait for room).

Cost: per database a sorted list of held keys plus a dict of them. A conflict check
for key `k` is one dict lookup for `k` itself, a bisect walk over held ancestors (each
step either finds an ancestor or shortens the common prefix, so at most `len(k)`
bisects and in practice about one per held ancestor) and a scan of the held
descendants of `k` (contiguous in the sorted list). Taking a new name inserts into the
list (O(n) memmove, n <= LOCKS_MAX). Checking the queue costs O(waiters).
"""

from __future__ import annotations

import math
import threading
import time
from bisect import bisect_left, bisect_right
from collections.abc import Hashable, Iterator
from typing import Any

from .constants import LOCKS_MAX, REFERENCE_BYTES_MAX
from .errors import (
    ConfigError,
    LockTableFullError,
    LockTimeoutError,
    SubscriptError,
    TransactionError,
)

MODE_EXCLUSIVE = "exclusive"
MODE_SHARED = "shared"


def describe(db_id: int, key: bytes) -> str:
    """`^a(1,"x")` in database 3 as `db3:^a(1,"x")`; undecodable keys in hex."""
    try:
        from .keycodec import decode_key, format_reference

        text = format_reference(*decode_key(key))
    except Exception:  # only for messages: any key that does not decode shows as hex
        text = "0x" + key.hex()
    return f"db{db_id}:{text}"


def _overlaps(a: bytes, b: bytes) -> bool:
    return a.startswith(b) or b.startswith(a)


def _common_prefix(a: bytes, b: bytes) -> bytes:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return a[:i]


class _Db:
    """The held names of one database: sorted keys and key -> {(owner, exclusive): count}."""

    __slots__ = ("keys", "nodes")

    def __init__(self) -> None:
        self.keys: list[bytes] = []
        self.nodes: dict[bytes, dict[tuple[Hashable, bool], int]] = {}

    def overlapping(self, key: bytes) -> Iterator[tuple[bytes, dict]]:
        """Every held node on `key`, above it or below it."""
        node = self.nodes.get(key)
        if node is not None:
            yield key, node
        keys = self.keys
        hi = bisect_left(keys, key)  # candidates for ancestors: keys[:hi]
        while hi > 0:
            p = keys[hi - 1]
            if key.startswith(p):
                yield p, self.nodes[p]
                hi -= 1
            else:
                # Every held ancestor below p is a prefix of p, hence of this prefix.
                hi = bisect_right(keys, _common_prefix(p, key), 0, hi - 1)
        i = bisect_right(keys, key)
        while i < len(keys) and keys[i].startswith(key):
            yield keys[i], self.nodes[keys[i]]
            i += 1


class _Request:
    __slots__ = ("owner", "db_id", "key", "exclusive")

    def __init__(self, owner: Hashable, db_id: int, key: bytes, exclusive: bool) -> None:
        self.owner = owner
        self.db_id = db_id
        self.key = key
        self.exclusive = exclusive


class LockTable:
    """One instance's locks. Thread-safe; every method takes the one internal lock."""

    def __init__(self, locks_max: int = LOCKS_MAX) -> None:
        if not isinstance(locks_max, int) or isinstance(locks_max, bool) or locks_max < 1:
            raise ConfigError(f"locks_max: {locks_max!r} must be an int >= 1")
        self.locks_max = locks_max
        self._cond = threading.Condition(threading.Lock())
        self._dbs: dict[int, _Db] = {}
        # owner -> the (db_id, key, exclusive) entries it has in the table
        self._owned: dict[Hashable, set[tuple[int, bytes, bool]]] = {}
        self._holds: dict[Hashable, int] = {}  # owner -> open begin_hold depth
        self._waiters: list[_Request] = []  # FIFO
        self._size = 0  # entries in the table

    # --- validation ------------------------------------------------------------------

    @staticmethod
    def _check_name(owner: Hashable, name: Any) -> tuple[int, bytes]:
        hash(owner)  # TypeError for an unhashable owner, before anything changes
        if not isinstance(name, tuple) or len(name) != 2:
            raise SubscriptError(f"lock name must be (db_id, key), not {name!r}")
        db_id, key = name
        if not isinstance(db_id, int) or isinstance(db_id, bool):
            raise SubscriptError(f"lock name: db_id must be an int, not {db_id!r}")
        if not isinstance(key, bytes):
            raise SubscriptError(f"lock name: key must be bytes, not {type(key).__name__}")
        if not key:
            raise SubscriptError("lock name: key is empty")
        if len(key) > REFERENCE_BYTES_MAX:
            raise SubscriptError(f"lock name: key is over {REFERENCE_BYTES_MAX} bytes")
        return db_id, key

    @staticmethod
    def _check_timeout(timeout: Any) -> float | None:
        if timeout is None:
            return None
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
            raise ConfigError(f"timeout: {timeout!r} must be None or a number >= 0")
        if math.isnan(timeout) or timeout < 0:
            raise ConfigError(f"timeout: {timeout!r} must be None or a number >= 0")
        return None if math.isinf(timeout) else float(timeout)

    # --- conflicts (under the lock) --------------------------------------------------

    def _held_blocker(self, req: _Request) -> tuple[bool, Hashable]:
        """(blocked, an owner of a held lock that conflicts with req)."""
        db = self._dbs.get(req.db_id)
        if db is None:
            return False, None
        for _key, node in db.overlapping(req.key):
            for other, exclusive in node:
                if other != req.owner and (exclusive or req.exclusive):
                    return True, other
        return False, None

    def _owner_blocks(self, owner: Hashable, w: _Request) -> bool:
        """Does a lock `owner` holds conflict with the queued request w?"""
        for db_id, key, exclusive in self._owned.get(owner, ()):
            if db_id == w.db_id and (exclusive or w.exclusive) and _overlaps(key, w.key):
                return True
        return False

    def _queue_blocker(self, req: _Request, ahead: int) -> _Request | None:
        """The first of the first `ahead` waiters that req must let go first."""
        for w in self._waiters[:ahead]:
            if (
                w.owner != req.owner
                and w.db_id == req.db_id
                and (w.exclusive or req.exclusive)
                and _overlaps(w.key, req.key)
                and not self._owner_blocks(req.owner, w)
            ):
                return w
        return None

    def _wake_overlapping(self, db_id: int, keys: list[bytes]) -> None:
        """Wake the waiters if one of them is on a name overlapping one of keys."""
        for w in self._waiters:
            if w.db_id == db_id and any(_overlaps(w.key, k) for k in keys):
                self._cond.notify_all()
                return

    # --- table changes (under the lock) ----------------------------------------------

    def _add(self, owner: Hashable, db_id: int, key: bytes, exclusive: bool) -> None:
        """Count one more (owner, name, mode); a kept zero-count entry becomes 1."""
        db = self._dbs.get(db_id)
        if db is None:
            db = self._dbs[db_id] = _Db()
        node = db.nodes.get(key)
        if node is None:
            node = db.nodes[key] = {}
            db.keys.insert(bisect_left(db.keys, key), key)
        entry = (owner, exclusive)
        if entry in node:
            node[entry] += 1
        else:
            node[entry] = 1
            self._owned.setdefault(owner, set()).add((db_id, key, exclusive))
            self._size += 1

    def _drop(self, owner: Hashable, db_id: int, key: bytes, exclusive: bool) -> None:
        """Remove the entry outright (no count, no hold)."""
        db = self._dbs[db_id]
        node = db.nodes[key]
        del node[(owner, exclusive)]
        self._size -= 1
        owned = self._owned[owner]
        owned.discard((db_id, key, exclusive))
        if not owned:
            del self._owned[owner]
        if not node:
            del db.nodes[key]
            del db.keys[bisect_left(db.keys, key)]
            if not db.nodes:
                del self._dbs[db_id]

    def _release(self, owner: Hashable, db_id: int, key: bytes, exclusive: bool) -> bool:
        """Count to zero: kept while the owner holds, else dropped. True if dropped."""
        if self._holds.get(owner):
            self._dbs[db_id].nodes[key][(owner, exclusive)] = 0
            return False
        self._drop(owner, db_id, key, exclusive)
        return True

    def _release_all_locked(self, owner: Hashable, keep: tuple | None = None) -> None:
        freed: dict[int, list[bytes]] = {}
        for db_id, key, exclusive in list(self._owned.get(owner, ())):
            if (db_id, key, exclusive) == keep:
                continue
            if self._release(owner, db_id, key, exclusive):
                freed.setdefault(db_id, []).append(key)
        for db_id, keys in freed.items():
            self._wake_overlapping(db_id, keys)

    # --- public API ------------------------------------------------------------------

    def lock(
        self,
        owner: Hashable,
        name: tuple[int, bytes],
        *,
        shared: bool = False,
        timeout: float | None = None,
        incremental: bool = True,
    ) -> bool:
        """Take `name` for `owner`; True when granted.

        `incremental=True` is `LOCK +name` (count + 1); `incremental=False` is `LOCK
        name`: on success every other lock of the owner is released (kept at count 0
        while it holds) and this one has count 1. `timeout=None` waits forever (only
        when the caller asks for it), `0` tries once. Raises `LockTimeoutError` or
        `LockTableFullError` and then has changed nothing.
        """
        db_id, key = self._check_name(owner, name)
        wait = self._check_timeout(timeout)
        req = _Request(owner, db_id, key, not shared)
        entry = (db_id, key, req.exclusive)
        deadline = None if wait is None else time.monotonic() + wait
        with self._cond:
            queued = False
            try:
                while True:
                    ahead = self._waiters.index(req) if queued else len(self._waiters)
                    blocked, holder = self._held_blocker(req)
                    if not blocked:
                        w = self._queue_blocker(req, ahead)
                        if w is None:
                            self._grant(req, entry, incremental)
                            return True
                        holder = None
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        mode = MODE_EXCLUSIVE if req.exclusive else MODE_SHARED
                        why = f"held by {holder!r}" if blocked else f"queued behind {w.owner!r}"
                        err = LockTimeoutError(
                            f"lock {describe(db_id, key)} ({mode}) not granted within "
                            f"{timeout}s: {why}"
                        )
                        err.name = (db_id, key)
                        err.holder = holder
                        raise err
                    if not queued:
                        self._waiters.append(req)
                        queued = True
                    self._cond.wait(remaining)
            finally:
                if queued:
                    self._waiters.remove(req)
                    # Waiters behind this request may have been held back by it alone.
                    self._wake_overlapping(db_id, [key])

    def _grant(self, req: _Request, entry: tuple, incremental: bool) -> None:
        owner = req.owner
        node = self._dbs.get(req.db_id)
        node = node.nodes.get(req.key) if node is not None else None
        present = node is not None and (owner, req.exclusive) in node
        need = 0 if present else 1
        freed = 0
        if not incremental and not self._holds.get(owner):
            freed = len(self._owned.get(owner, ())) - (1 if present else 0)
        if self._size - freed + need > self.locks_max:
            raise LockTableFullError(
                f"lock table full ({self.locks_max} locks): "
                f"{describe(req.db_id, req.key)} refused for {owner!r}"
            )
        if incremental:
            self._add(owner, req.db_id, req.key, req.exclusive)
            return
        self._release_all_locked(owner, keep=entry)
        if present:
            self._dbs[req.db_id].nodes[req.key][(owner, req.exclusive)] = 1
        else:
            self._add(owner, req.db_id, req.key, req.exclusive)

    def unlock(self, owner: Hashable, name: tuple[int, bytes], *, shared: bool = False) -> bool:
        """`LOCK -name`: count - 1, released at zero (kept while the owner holds).

        Returns False, changing nothing, when the owner has no such lock with a count
        above zero (IRIS ignores such an unlock too).
        """
        db_id, key = self._check_name(owner, name)
        exclusive = not shared
        with self._cond:
            db = self._dbs.get(db_id)
            node = db.nodes.get(key) if db is not None else None
            count = node.get((owner, exclusive), 0) if node is not None else 0
            if count == 0:
                return False
            if count > 1:
                node[(owner, exclusive)] = count - 1
            elif self._release(owner, db_id, key, exclusive):
                self._wake_overlapping(db_id, [key])
            return True

    def unlock_all(self, owner: Hashable) -> None:
        """Argumentless `LOCK`: every lock of the owner to count zero (kept while it holds)."""
        hash(owner)
        with self._cond:
            self._release_all_locked(owner)

    def release_all(self, owner: Hashable) -> None:
        """Drop every lock of the owner, kept ones too, and end its hold: for an owner
        that goes away (session end, after TROLLBACK of everything). Never deferred."""
        hash(owner)
        with self._cond:
            self._holds.pop(owner, None)
            self._release_all_locked(owner)

    def begin_hold(self, owner: Hashable) -> None:
        """From now until the matching `end_hold`, releases of the owner's locks are kept.

        Nests: each call needs its own `end_hold`; only the last one releases."""
        hash(owner)
        with self._cond:
            self._holds[owner] = self._holds.get(owner, 0) + 1

    def end_hold(self, owner: Hashable) -> None:
        """End one `begin_hold`; the last one releases the kept (count 0) locks.

        Raises `TransactionError` (changing nothing) when the owner holds nothing."""
        hash(owner)
        with self._cond:
            depth = self._holds.get(owner, 0)
            if depth == 0:
                raise TransactionError(f"end_hold: {owner!r} has no open hold")
            if depth > 1:
                self._holds[owner] = depth - 1
                return
            del self._holds[owner]
            freed: dict[int, list[bytes]] = {}
            for db_id, key, exclusive in list(self._owned.get(owner, ())):
                if self._dbs[db_id].nodes[key][(owner, exclusive)] == 0:
                    self._drop(owner, db_id, key, exclusive)
                    freed.setdefault(db_id, []).append(key)
            for db_id, keys in freed.items():
                self._wake_overlapping(db_id, keys)

    def owns_any(self, owner: Hashable) -> bool:
        """True while the owner has any entry in the table or an open hold."""
        with self._cond:
            return bool(self._owned.get(owner)) or self._holds.get(owner, 0) > 0

    def holding(self, owner: Hashable) -> int:
        """The owner's open `begin_hold` depth (0: unlocks release at once)."""
        with self._cond:
            return self._holds.get(owner, 0)

    def count(self, owner: Hashable, name: tuple[int, bytes], *, shared: bool = False) -> int:
        """The owner's count on name in that mode (0: not held, or kept by a hold)."""
        db_id, key = self._check_name(owner, name)
        with self._cond:
            db = self._dbs.get(db_id)
            node = db.nodes.get(key) if db is not None else None
            return node.get((owner, not shared), 0) if node is not None else 0

    def waiting(self) -> int:
        """How many lock requests are queued (for status displays and tests)."""
        with self._cond:
            return len(self._waiters)

    def __len__(self) -> int:
        """Entries in the table, kept zero-count ones included."""
        with self._cond:
            return self._size

    def snapshot(self) -> list[tuple[Hashable, int, bytes, str, int]]:
        """Every entry as (owner, db_id, key, mode, count), by db_id then key order.

        mode is MODE_EXCLUSIVE or MODE_SHARED; count 0 means released inside an open
        hold and kept until `end_hold` (IRIS "delock")."""
        with self._cond:
            out = []
            for db_id in sorted(self._dbs):
                db = self._dbs[db_id]
                for key in db.keys:
                    for (owner, exclusive), count in db.nodes[key].items():
                        mode = MODE_EXCLUSIVE if exclusive else MODE_SHARED
                        out.append((owner, db_id, key, mode, count))
            return out

    def check(self) -> None:
        """Assert the table's invariants (for tests): the indexes agree, counts are
        sane, and no two owners hold conflicting locks."""
        with self._cond:
            size = 0
            owned: dict[Hashable, set] = {}
            for db_id, db in self._dbs.items():
                assert db.keys == sorted(db.nodes), "sorted keys disagree with nodes"
                assert db.nodes, "empty database entry"
                for key, node in db.nodes.items():
                    assert node, f"empty node {describe(db_id, key)}"
                    for (owner, exclusive), count in node.items():
                        assert count >= 0
                        assert count > 0 or self._holds.get(owner), "zero count outside hold"
                        owned.setdefault(owner, set()).add((db_id, key, exclusive))
                        size += 1
            assert size == self._size, (size, self._size)
            assert owned == self._owned, "owner index disagrees"
            entries = [
                (o, d, k, e) for o, s in owned.items() for d, k, e in s
            ]  # O(n^2): tests only
            for i, (o1, d1, k1, e1) in enumerate(entries):
                for o2, d2, k2, e2 in entries[i + 1 :]:
                    conflict = o1 != o2 and d1 == d2 and (e1 or e2) and _overlaps(k1, k2)
                    assert not conflict, f"{o1!r} and {o2!r} conflict on {describe(d1, k1)}"

    def __repr__(self) -> str:
        return f"<LockTable {self._size} locks, {len(self._waiters)} waiting>"


__all__ = ["LOCKS_MAX", "LockTable", "LockTableFullError", "MODE_EXCLUSIVE", "MODE_SHARED"]
