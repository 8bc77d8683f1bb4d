"""A local database: globals over a B+tree, the Python API of DESIGN.md section 4.

Owns the instance directory's database file (`DB.dat`), the buffer pool policy and
the flush cycle, and the `Global` API (`g[subs]`, `$DATA`, `$ORDER`, `$QUERY`, ...).
Promises: every argument is validated and encoded *before* anything changes, so bad
input raises a typed error and changes nothing; one lock serialises every call, so a
Database may be shared between threads; after `close()` returns, everything written
is durable in the database file (until the write image journal and the journal
exist, close and the pool's dirty limit are the only points where blocks are
written, each time as one flush cycle).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from typing import Any

from . import _core, crashpoints
from .blockstore import BlockStore
from .constants import (
    BUFFER_POOL_BLOCKS_DEFAULT,
    BUFFER_POOL_BLOCKS_MIN,
    DIRECT_IO_MODES,
    DIRTY_SHARE_FLUSH,
)
from .errors import ClosedError, ConfigError, SubscriptError

DEFAULT_DATABASE = "DB"
DATABASE_FILE_SUFFIX = ".dat"

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
    """One database file with its B+tree and buffer pool. Use `irisrep.open()`."""

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        create: bool = True,
        fs=None,
        direct: str = "optional",
        pool_blocks: int = BUFFER_POOL_BLOCKS_DEFAULT,
        name: str = DEFAULT_DATABASE,
    ) -> None:
        from .fileio import default_fs

        if direct not in DIRECT_IO_MODES:
            raise ConfigError(f"direct_io: {direct!r} is not one of {', '.join(DIRECT_IO_MODES)}")
        if not isinstance(pool_blocks, int) or pool_blocks < BUFFER_POOL_BLOCKS_MIN:
            raise ConfigError(
                f"pool_blocks: {pool_blocks!r} must be an int >= {BUFFER_POOL_BLOCKS_MIN}"
            )
        self.fs = fs if fs is not None else default_fs()
        self.path = os.fspath(path)
        self.name = name
        if not self.fs.exists(self.path):
            if not create:
                raise FileNotFoundError(2, "no irisrep instance directory", self.path)
            self.fs.makedirs(self.path)
        self.file_path = os.path.join(self.path, name + DATABASE_FILE_SUFFIX)
        self._lock = threading.RLock()
        self._closed = False
        self.store = BlockStore(self.fs, self.file_path, create=create, direct=direct)
        self.tree = _core.BTree(self.store, self.store.db_id, self.store.root, pool_blocks)
        self.dirty_limit = max(8, int(pool_blocks * DIRTY_SHARE_FLUSH))
        self._globals: dict[str, Global] = {}
        self.globals = GlobalsView(self)
        if self.store.created:
            # Make the new, empty database durable before anyone can write to it.
            self.tree.init_empty()
            self.flush()

    # --- lifecycle -------------------------------------------------------------------

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Write every dirty block and fsync; later use raises ClosedError."""
        with self._lock:
            if self._closed:
                return
            self.flush()
            crashpoints.hit("close_after_flush")
            self._closed = True
            self.tree.closed = True
            self.store.close()

    @property
    def closed(self) -> bool:
        return self._closed

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError(f"database {self.path} is closed")

    # --- the flush cycle -------------------------------------------------------------

    def flush(self) -> None:
        """Write the current consistent set of changed blocks, then the header.

        Order: every changed tree node and pending image (overflow, free-list) ->
        fdatasync -> header (root, free list, block count) -> fdatasync. The header is
        last so that it never names a root or free list whose blocks are not yet
        durable. In-place block writes are not crash-atomic across blocks; the write
        image journal (the next layer) wraps this cycle to make them so.
        """
        with self._lock:
            self._check_open()
            images = self.tree.take_dirty() + self.store.take_pending()
            images.sort()
            self.store.root = self.tree.root
            self.store.generation += 1
            self.store.write_images(images)
            crashpoints.hit("flush_after_write_before_fsync")
            self.store.sync()
            crashpoints.hit("flush_after_fsync_before_header")
            self.store.write_images([(0, self.store.header_image())])
            crashpoints.hit("flush_after_header_write")
            self.store.sync()

    def _after_write(self) -> None:
        if self.tree.dirty_count() + len(self.store.pending) > self.dirty_limit:
            self.flush()

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
        state = "closed" if self._closed else "open"
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
