"""A local instance: globals over a B+tree, made crash-safe by the write image journal.

Owns the instance directory (`DB.dat`, `irisrep.wij`), the buffer pool policy, the
write daemon and the `Global` API of DESIGN.md section 4 (`g[subs]`, `$DATA`,
`$ORDER`, `$QUERY`, ...).

Promises:
- every argument is validated and encoded *before* anything changes, so bad input
  raises a typed error and changes nothing;
- one lock serialises every call, so a Database may be shared between threads;
- blocks reach the database file only through write image journal cycles (WIJ
  durable and marked active, then the database, then cleared), so a crash at any
  instant leaves every block of a cycle all old or all new; recovery on open
  finishes or discards the last cycle before anything reads a block;
- the write daemon snapshots the dirty set under the lock and does the I/O outside
  it; writers are held back only when dirty blocks pass `dirty_hard_limit` (which
  also keeps every cycle inside the WIJ's capacity);
- a failed write or fsync in a cycle is fatal: the database stops taking calls and
  says why (`DurabilityError`); it never retries and pretends;
- after `close()` returns, everything written is durable in the database file.
Until the journal exists, what was written since the last cycle is lost by a crash
(the tree stays sound); `flush()` is the checkpoint that makes it durable.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from typing import Any

from . import _core, crashpoints
from .blockstore import BlockStore
from .constants import (
    BUFFER_POOL_BLOCKS_DEFAULT,
    BUFFER_POOL_BLOCKS_MIN,
    DIRTY_SHARE_FLUSH,
    DIRTY_SHARE_HARD,
    WIJ_BLOCKS_MAX,
    WIJ_FILE_NAME,
    WRITE_DAEMON_INTERVAL_MS,
)
from .errors import ClosedError, ConfigError, DurabilityError, SubscriptError
from .fileio import check_direct_mode
from .wij import RawStore, WriteImageJournal

log = logging.getLogger("irisrep.database")

DEFAULT_DATABASE = "DB"
DATABASE_FILE_SUFFIX = ".dat"
CREATE_SUFFIX = ".new"  # a database file being created; renamed into place when durable

_encode_key = _core.encode_key
_encode_value = _core.encode_value
_decode_value = _core.decode_value

# Bytes that bound the descendants of an encoded node: every subscript's first byte
# (its type tag) is below 0xFF, and no subscript encoding is a prefix of another, so
# key + b"\xff" is above every descendant and key + b"\x00" above the node alone.
_ALL_BELOW = b"\xff"
_NODE_ONLY = b"\x00"


def _subs(subs: Any) -> tuple:
    """`g["a", 1]` passes a tuple; `g["a"]` passes a scalar: one subscript."""
    return subs if type(subs) is tuple else (subs,)


class Database:
    """One instance directory with its database, WIJ and write daemon. Use `irisrep.open()`."""

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        create: bool = True,
        fs=None,
        direct: str = "optional",
        pool_blocks: int = BUFFER_POOL_BLOCKS_DEFAULT,
        name: str = DEFAULT_DATABASE,
        write_daemon: bool = True,
        write_daemon_interval_ms: int = WRITE_DAEMON_INTERVAL_MS,
    ) -> None:
        from .fileio import default_fs

        check_direct_mode(direct)
        if not isinstance(pool_blocks, int) or pool_blocks < BUFFER_POOL_BLOCKS_MIN:
            raise ConfigError(
                f"pool_blocks: {pool_blocks!r} must be an int >= {BUFFER_POOL_BLOCKS_MIN}"
            )
        if not isinstance(write_daemon_interval_ms, int) or write_daemon_interval_ms < 1:
            raise ConfigError(
                f"write_daemon_interval_ms: {write_daemon_interval_ms!r} must be an int >= 1"
            )
        self.fs = fs if fs is not None else default_fs()
        self.path = os.fspath(path)
        self.name = name
        if not self.fs.exists(self.path):
            if not create:
                raise FileNotFoundError(2, "no irisrep instance directory", self.path)
            self.fs.makedirs(self.path)
        self.file_path = os.path.join(self.path, name + DATABASE_FILE_SUFFIX)
        self.wij_path = os.path.join(self.path, WIJ_FILE_NAME)
        self._lock = threading.RLock()
        self._cycle_done = threading.Condition(self._lock)  # a cycle finished or failed
        self._kick = threading.Event()  # wakes the write daemon before its interval
        self._closed = False
        self._stopping = False
        self._inflight = False  # a daemon cycle is writing (outside the lock)
        self._failure: BaseException | None = None
        # Recovery on open, step 1 (rule 3): finish or discard the WIJ's last cycle
        # before anything reads a database block. Journal roll-forward joins later.
        self.wij = WriteImageJournal(self.fs, self.wij_path, direct=direct)
        try:
            self.wij_recovery = self._recover_wij(direct)
            if not self.fs.exists(self.file_path):
                if not create:
                    raise FileNotFoundError(2, "no database file", self.file_path)
                self._create_file(direct)
            self.store = BlockStore(self.fs, self.file_path, direct=direct)
            self.wij.mark_running()
        except BaseException:
            self.wij.close()
            raise
        self.tree = _core.BTree(self.store, self.store.db_id, self.store.root, pool_blocks)
        self.dirty_limit = max(8, int(pool_blocks * DIRTY_SHARE_FLUSH))
        self.dirty_hard_limit = min(
            max(16, int(pool_blocks * DIRTY_SHARE_HARD)), WIJ_BLOCKS_MAX - 2
        )
        self.write_daemon_interval_ms = write_daemon_interval_ms
        self._globals: dict[str, Global] = {}
        self.globals = GlobalsView(self)
        self._daemon: threading.Thread | None = None
        if write_daemon:
            self._daemon = threading.Thread(
                target=self._daemon_loop, name=f"irisrep-write-daemon {self.path}", daemon=True
            )
            self._daemon.start()

    # --- recovery and creation -------------------------------------------------------

    def _recover_wij(self, direct: str):
        stores = {}
        raw = None
        if self.fs.exists(self.file_path):
            # RawStore: block 0 itself may be one of the blocks being restored, so it
            # is not read through the verifier until recovery is done.
            raw = RawStore(self.fs, self.file_path, direct=direct)
            stores[raw.db_id] = raw
        try:
            report = self.wij.recover(stores)
        finally:
            if raw is not None:
                raw.close()
        if report.restored_blocks:
            log.warning(
                "%s: WIJ recovery restored %d blocks of cycle %d",
                self.path,
                report.restored_blocks,
                report.cycle,
            )
        for m in report.mismatches:
            log.error("%s: after an unclean stop, the WIJ's last cycle differs: %s", self.path, m)
        return report

    def _create_file(self, direct: str) -> None:
        """Create an empty database under a temporary name, make it durable, rename it.

        A crash before the rename leaves only the temporary file (removed on the next
        open); after it, a complete database. There is never an empty or half-written
        DB.dat, so open never has to guess.
        """
        tmp = self.file_path + CREATE_SUFFIX
        if self.fs.exists(tmp):
            self.fs.remove(tmp)
        store = BlockStore(self.fs, tmp, create=True, direct=direct)
        try:
            tree = _core.BTree(store, store.db_id, store.root, BUFFER_POOL_BLOCKS_MIN)
            tree.init_empty()
            images = tree.take_dirty() + store.take_pending() + [(0, store.header_image())]
            store.write_images(sorted(images))
            store.sync()
        finally:
            store.close()
        crashpoints.hit("create_before_rename")
        self.fs.rename(tmp, self.file_path)  # fsyncs the directory

    # --- lifecycle -------------------------------------------------------------------

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the write daemon, run a last cycle, mark the WIJ clean, close the files.

        After a failure (DurabilityError) nothing more is written: the WIJ keeps its
        running flag, so the next open knows the stop was not clean.
        """
        with self._lock:
            if self._closed:
                return
            self._stopping = True
        self._kick.set()
        if self._daemon is not None:
            self._daemon.join()
        with self._lock:
            try:
                if self._failure is None:
                    self._flush_locked()
                    crashpoints.hit("close_after_flush")
                    self.wij.mark_clean()
            finally:
                self._closed = True
                self.tree.closed = True
                self.store.close()
                self.wij.close()

    @property
    def closed(self) -> bool:
        return self._closed

    def _closed_error(self) -> Exception:
        if self._failure is not None:
            return DurabilityError(
                f"database {self.path} stopped after a failed write: {self._failure}"
            )
        return ClosedError(f"database {self.path} is closed")

    def _check_open(self) -> None:
        if self._closed or self._failure is not None:
            raise self._closed_error()

    # --- write image journal cycles --------------------------------------------------

    def flush(self) -> None:
        """Checkpoint: make every change so far durable in the database file now."""
        with self._lock:
            self._check_open()
            self._flush_locked()

    def _flush_locked(self) -> None:
        while self._inflight:
            self._cycle_done.wait()
        if self._failure is not None:
            raise self._closed_error()
        images = self._snapshot()
        if images is not None:
            self._inflight = True
            self._run_cycle(images)

    def _dirty_count(self) -> int:
        return len(self.tree.dirty) + len(self.store.pending)

    def _snapshot(self) -> list[tuple[int, bytes]] | None:
        """Under the lock: take the consistent set of changed blocks plus the header.

        The images stay readable through `store.inflight` until the database file
        has them: a node made clean here may be evicted and read back mid-cycle.
        """
        images = self.tree.take_dirty() + self.store.take_pending()
        if not images:
            return None
        self.store.root = self.tree.root
        self.store.generation += 1
        images.append((0, self.store.header_image()))
        images.sort()
        self.store.inflight = dict(images)
        return images

    def _run_cycle(self, images: list[tuple[int, bytes]]) -> None:
        """One WIJ cycle for a snapshot; may run with or without the lock held."""
        db_id = self.store.db_id
        try:
            self.wij.cycle(
                {db_id: self.store},
                [(db_id, block_no, image) for block_no, image in images],
                self.store.checkpoint,
            )
        except Exception as exc:
            # Rule 4: a failed write or fsync is fatal. Record it; every later call
            # raises DurabilityError naming it. The in-flight images stay readable.
            with self._lock:
                self._failure = exc
                self._inflight = False
                self.tree.closed = True
                self._cycle_done.notify_all()
            log.error("%s: write image journal cycle failed, database stopped: %s", self.path, exc)
            raise
        with self._lock:
            self.store.inflight = {}
            self._inflight = False
            self._cycle_done.notify_all()

    def _daemon_loop(self) -> None:
        interval_s = self.write_daemon_interval_ms / 1000
        while True:
            self._kick.wait(interval_s)
            self._kick.clear()
            with self._lock:
                if self._stopping or self._failure is not None:
                    return
                if self._inflight:
                    continue
                images = self._snapshot()
                if images is None:
                    continue
                self._inflight = True
            try:
                self._run_cycle(images)  # outside the lock: readers and writers go on
            except Exception:
                return  # recorded in _failure; callers see DurabilityError

    def _dirty_over_limit(self) -> None:
        """Called under the lock by a write that left more dirty blocks than dirty_limit.

        Wakes the daemon; past the hard limit, waits for cycles to bring the count
        down (the wait releases the lock, so the daemon can snapshot).
        """
        if self._daemon is None:
            self._flush_locked()
            return
        self._kick.set()
        while self._dirty_count() > self.dirty_hard_limit:
            if self._failure is not None:
                raise self._closed_error()
            self._kick.set()
            self._cycle_done.wait(1.0)

    def _after_write(self) -> None:
        if self._dirty_count() > self.dirty_limit:
            self._dirty_over_limit()

    # --- globals ---------------------------------------------------------------------

    def global_(self, name: str) -> Global:
        g = self._globals.get(name)
        if g is None:
            g = Global(self, name)
            self._globals[name] = g
        return g

    def global_names(self) -> list[str]:
        """Names of the globals that hold at least one node, in collation order."""
        with self._lock:
            self._check_open()
            names = []
            key = b""
            while True:
                item = self.tree.next_item(key, False, True)
                if item is None:
                    return names
                k = item[0]
                end = k.index(0)
                names.append(k[:end].decode("ascii"))
                key = k[:end] + b"\x01"  # past every key of this global

    def __repr__(self) -> str:
        state = "failed" if self._failure else "closed" if self._closed else "open"
        return f"<irisrep.Database {self.path!r} {state}>"


class GlobalsView:
    """`db.globals[name]` -> Global; iterating gives the names of non-empty globals."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def __getitem__(self, name: str) -> Global:
        return self._db.global_(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._db.global_names())

    def __contains__(self, name: str) -> bool:
        return name in self._db.global_names()


class Global(_core.GlobalCore):
    """One global (`^name`): a sorted, sparse multi-subscript array.

    Subscripts are tuples (`g["a", 1]`), a scalar is one subscript, `()` is the
    global's own root node. IRIS collation: canonical numbers first in numeric
    order, then strings by code point; `1` and `"1"` are the same subscript.
    `g[subs]`, `g[subs] = v`, `g.get()` and `in` live in `_core.GlobalCore`.
    """

    __slots__ = ("_db", "_tree", "_lock", "_prefix", "_plen")

    def __init__(self, db: Database, name: str) -> None:
        super().__init__(db, name)
        self._db = db
        self._tree = db.tree
        self._lock = db._lock
        self._prefix = self.prefix
        self._plen = len(self.prefix)

    def set(self, subs: Any, value: Any) -> None:
        self[subs] = value

    def increment(self, subs: Any = (), by: Any = 1) -> int | float:
        """`$INCREMENT`: add `by` to the node's numeric value (undefined counts as 0)."""
        subs = _subs(subs)
        key = _encode_key(self._prefix, subs)
        step = _core.number_value(by)
        with self._lock:
            self._db._check_open()
            stored = self._tree.get(key)
            old = 0 if stored is None else _decode_value(self._tree.load_value(stored))
            new = _core.number_value(old) + step
            if isinstance(new, float) and new.is_integer() and abs(new) < 1e18:
                new = int(new)
            self._tree.set(key, _encode_value(new))
            self._db._after_write()
            return new

    # --- kills -----------------------------------------------------------------------

    def __delitem__(self, subs: Any) -> None:
        """KILL: the node and all its descendants (no error when there is none)."""
        self.kill(subs)

    def kill(self, subs: Any = ()) -> None:
        key = _encode_key(self._prefix, _subs(subs))
        with self._lock:
            self._db._check_open()
            self._tree.kill_range(key, key + _ALL_BELOW)
            self._db._after_write()

    def zkill(self, subs: Any) -> None:
        """ZKILL: the node's own value only; descendants stay."""
        key = _encode_key(self._prefix, _subs(subs))
        with self._lock:
            self._db._check_open()
            self._tree.kill_range(key, key + _NODE_ONLY)
            self._db._after_write()

    # --- navigation ------------------------------------------------------------------

    def data(self, subs: Any = ()) -> int:
        """`$DATA`: 0 undefined, 1 value only, 10 descendants only, 11 both."""
        key = _encode_key(self._prefix, _subs(subs))
        with self._lock:
            self._db._check_open()
            has_value = self._tree.get(key) is not None
            nxt = self._tree.next_item(key, False, False)
            has_desc = nxt is not None and nxt[0].startswith(key)
        return (1 if has_value else 0) + (10 if has_desc else 0)

    def order(self, subs: Any, reverse: bool = False) -> Any:
        """`$ORDER`: the next (or previous) subscript at the last level, or None.

        A last subscript of "" starts from the first (or, reverse, the last) one.
        """
        subs = _subs(subs)
        if not subs:
            raise SubscriptError("<SUBSCRIPT> $ORDER needs at least one subscript")
        parent = _encode_key(self._prefix, subs[:-1])
        if subs[-1] == "":
            start, inclusive = (parent + _ALL_BELOW, False) if reverse else (parent, False)
        else:
            here = _encode_key(self._prefix, subs)
            # Forward: skip `here` and all its descendants; reverse: anything before it.
            start, inclusive = (here, False) if reverse else (here + _ALL_BELOW, True)
        with self._lock:
            self._db._check_open()
            item = self._tree.next_item(start, reverse, inclusive)
        if item is None:
            return None
        k = item[0]
        if len(k) <= len(parent) or not k.startswith(parent):
            return None
        return _core.decode_subscript_at(k, len(parent))[0]

    def query(self, subs: Any = (), reverse: bool = False) -> tuple | None:
        """`$QUERY`: the subscripts of the next (or previous) node with a value."""
        key = _encode_key(self._prefix, _subs(subs))
        with self._lock:
            self._db._check_open()
            item = self._tree.next_item(key, reverse, False)
        if item is None or not item[0].startswith(self._prefix):
            return None
        return _core.decode_subscripts(item[0], self._plen)

    def items(
        self,
        prefix: Any = (),
        start: Any = None,
        stop: Any = None,
        reverse: bool = False,
        batch: int = 256,
    ) -> Iterator[tuple[tuple, Any]]:
        """(subscripts, value) of every node with a value under prefix, in order.

        `start` and `stop` are full subscript tuples bounding the range [start, stop)
        whatever the direction. Iteration is safe while writing: the cursor re-seeks
        after any change.
        """
        lo = _encode_key(self._prefix, _subs(prefix))
        hi = lo + _ALL_BELOW
        if start is not None:
            lo = max(lo, _encode_key(self._prefix, _subs(start)))
        if stop is not None:
            hi = min(hi, _encode_key(self._prefix, _subs(stop)))
        plen = self._plen
        decode_subs = _core.decode_subscripts
        with self._lock:
            self._db._check_open()
            cursor = self._tree.seek(hi, True, False) if reverse else self._tree.seek(lo)
        bound = lo if reverse else hi
        while True:
            with self._lock:
                self._db._check_open()
                chunk = cursor.take(batch, bound)
                chunk = [(k, self._tree.load_value(v)) for k, v in chunk]
            if not chunk:
                return
            for k, v in chunk:
                yield decode_subs(k, plen), _decode_value(v)

    def keys(self, prefix: Any = (), reverse: bool = False) -> Iterator[tuple]:
        for subs, _value in self.items(prefix, reverse=reverse):
            yield subs

    def __iter__(self) -> Iterator[tuple]:
        return self.keys()

    def __repr__(self) -> str:
        return f"<irisrep.Global ^{self.name}>"
