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
- after `close()` returns, everything written is durable in the database file;
- `backup_window()` holds cycles off so that the database file is one consistent
  image at a checkpoint while an online backup copies it (`irisrep.backup`); on a
  mirror copy, whose changes arrive by dejournaling, the link's apply stops at a
  frame boundary instead of waiting for the window (the frames stay durable in its
  journal and are applied after it), so a backup never holds the primary's acks;
- `journal_purge()` removes only the oldest journal files that every rule of
  `irisrep.purge` lets go (recovery, open transactions, backups, mirror members).
Until the journal exists, what was written since the last cycle is lost by a crash
(the tree stays sound); `flush()` is the checkpoint that makes it durable.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import xxhash

from . import _core, crashpoints, replay
from .blockstore import BlockStore
from .commit import Committer
from .constants import (
    BUFFER_POOL_BLOCKS_DEFAULT,
    BUFFER_POOL_BLOCKS_MIN,
    COMMIT_MODES,
    DATABASE_CATALOG_BYTES_MAX,
    DATABASE_CATALOG_NAME,
    DATABASE_NAME_MAX,
    DATABASES_MAX,
    DEJOURNAL_SLICE_RECORDS,
    DIRTY_SHARE_FLUSH,
    DIRTY_SHARE_HARD,
    JOURNAL_DIR_NAME,
    JOURNAL_FILE_BYTES,
    JOURNAL_FLUSH_MS,
    JOURNAL_PURGE_DAYS,
    JOURNAL_PURGE_DAYS_MAX,
    JOURNAL_PURGE_MEMBER_LIMIT_DAYS,
    JOURNAL_PURGE_MEMBER_LIMIT_DAYS_MAX,
    JOURNAL_TIME_MARK_MS,
    LOCK_TIMEOUT_DEFAULT_S,
    TLEVEL_MAX,
    WIJ_BLOCKS_MAX,
    WIJ_CYCLE_SPARE_BLOCKS,
    WIJ_FILE_NAME,
    WRITE_DAEMON_INTERVAL_MS,
)
from .errors import (
    BackupError,
    ClosedError,
    ConfigError,
    DatabaseNotFoundError,
    DurabilityError,
    IrisrepError,
    JournalCorruptError,
    ProtectError,
    SubscriptError,
    TransactionError,
)
from .fileio import check_direct_mode
from .journal import Journal
from .journalcodec import Record
from .locks import LockTable
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
_EMPTY_ENTRIES = replay.encode_entries([])

# IRIS database names: a letter, then letters, digits, "_", "-" or "."; case-insensitive
# (kept upper-case, as IRIS shows them).
_DATABASE_NAME = re.compile(r"[A-Z][A-Z0-9_.-]*\Z")


def check_database_name(name: object) -> str:
    """The canonical (upper-case) form of a database name; ConfigError if it is not one."""
    if not isinstance(name, str):
        raise ConfigError(f"database name must be a str, not {type(name).__name__}")
    canonical = name.upper()
    if not 1 <= len(canonical) <= DATABASE_NAME_MAX or not _DATABASE_NAME.match(canonical):
        raise ConfigError(
            f"database name {name[:64]!r}: 1 to {DATABASE_NAME_MAX} letters, digits, "
            "'_', '-' or '.', starting with a letter"
        )
    return canonical


def create_database_file(
    fs, file_path: str, db_id: int, checkpoint: int, *, direct: str = "optional"
) -> None:
    """An empty database file at `file_path`, durable before it has that name (made
    under a temporary name, synced, renamed: the rename fsyncs the directory).
    `checkpoint`: the journal position its image stands for."""
    tmp = file_path + CREATE_SUFFIX
    if fs.exists(tmp):
        fs.remove(tmp)
    store = BlockStore(fs, tmp, create=True, direct=direct, db_id=db_id)
    store.checkpoint = store.txn_floor = checkpoint
    try:
        tree = _core.BTree(store, store.db_id, store.root, BUFFER_POOL_BLOCKS_MIN)
        tree.init_empty()
        images = tree.take_dirty() + store.take_pending() + [(0, store.header_image())]
        store.write_images(sorted(images))
        store.sync()
    finally:
        store.close()
    crashpoints.hit("create_before_rename")
    fs.rename(tmp, file_path)


def write_catalog_file(fs, path: str, catalog: dict[str, dict]) -> None:
    """databases.json whole or not at all: a temporary file made durable, then
    renamed (the rename fsyncs the directory); a crash leaves the old or the new."""
    tmp = path + CREATE_SUFFIX
    data = json.dumps({"version": 1, "databases": catalog}, sort_keys=True, indent=1)
    f = fs.open(tmp, create=True, direct="disabled")
    try:
        f.truncate(0)
        f.pwrite(0, data.encode())
        f.fsync()
    finally:
        f.close()
    fs.rename(tmp, path)


def database_id(name: str) -> int:
    """The id a new database file gets and its journal records carry: derived from
    the (canonical) name, so that the primary's `SALES` and every member's copy of it
    agree without asking each other; never 0 (the id of records that name no database,
    TSTART and the like)."""
    return xxhash.xxh32_intdigest(check_database_name(name).encode("ascii"), seed=0x1D15) or 1


@dataclass
class JournalRecovery:
    """What recovery on open did with the journal."""

    from_position: int  # where it read from (the transaction floor)
    checkpoint: int  # where it applied from
    end_position: int  # the end of the journal it found
    applied: int  # data records applied
    rolled_back: list  # transaction ids rolled back
    tail: str  # why the journal ended there ("zero": a clean end; else a torn tail)


@dataclass(frozen=True)
class BackupPoint:
    """What `Database.backup_window()` yields: the on-disk image's consistency point."""

    db_id: int
    checkpoint: int  # journal position the file's blocks reflect exactly
    txn_floor: int  # no transaction open at the checkpoint began before this
    generation: int  # the header's cycle generation
    position: int  # the journal's end when the window opened (after the MARKER, if any)
    time: int  # unix ns (the journal's clock) when the window opened, after `position`
    marker: bool  # a backup-start MARKER was journaled (not on a mirror copy)
    mirror_copy: bool  # the database is a mirror copy (its journal is the primary's stream)
    epoch: int  # the journal's epoch


class _TxnState(threading.local):
    """A thread's transaction: $TLEVEL belongs to the thread (as to the process in IRIS)."""

    level = 0
    txn = 0
    records: _core.RecordList  # encoded (no tuple per record); slices decode them
    marks: list  # len(records) at each TSTART level, for partial rollback

    def __init__(self) -> None:
        self.records = _core.RecordList()
        self.marks = []


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
        commit_mode: str = "sync",
        journaling: bool | None = None,
        journal_file_bytes: int = JOURNAL_FILE_BYTES,
        protect: bool = False,
        mirror_copy: bool = False,
        epoch: int = 0,
        journal_dir: str | os.PathLike | None = None,
        only_these_databases: bool = False,
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
        self.name = check_database_name(name)
        self.parent: Database | None = None  # this is the instance (see database())
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
        self._backup_hold = False  # backup_window(): no cycle may start (see there)
        # The journal start of each backup being taken (backup.create_backup sets it
        # inside the window and clears it once the backup is recorded in backups.json):
        # the purge keeps its files in between, when neither the window (purge's
        # checkpoint waits for it) nor the record holds them yet.
        self.backups_in_progress: dict[int, int] = {}  # backup id -> journal start
        self._purge_lock = threading.Lock()  # one purge at a time (periodic, operator)
        self._failure: BaseException | None = None
        # Recovery on open, step 1 (rule 3): finish or discard the WIJ's last cycle
        # before anything reads a database block. Journal roll-forward joins later.
        self._direct = direct
        self._pool_blocks = pool_blocks
        # A restore brings back some of an instance's databases: its recovery skips
        # the records of the others (counted in the log) instead of refusing them.
        self._only_these = bool(only_these_databases)
        self.skipped_records = 0
        # The instance's other databases (database()): each its own file, sharing this
        # instance's WIJ, write daemon, journal, lock, transactions and locks.
        self.catalog_path = os.path.join(self.path, DATABASE_CATALOG_NAME)
        self._catalog = self._read_catalog()
        self._children: dict[str, Database] = {}
        self.wij = WriteImageJournal(self.fs, self.wij_path, direct=direct)
        try:
            self.wij_recovery = self._recover_wij(direct)
            if not self.fs.exists(self.file_path):
                if not create:
                    raise FileNotFoundError(2, "no database file", self.file_path)
                self._create_file(direct, self.file_path, database_id(self.name), 0)
            self.store = BlockStore(self.fs, self.file_path, direct=direct)
            self.wij.mark_running()
        except BaseException:
            self.wij.close()
            raise
        self.tree = _core.BTree(self.store, self.store.db_id, self.store.root, pool_blocks)
        self.db_id = self.store.db_id
        # Journal records name their database by id: recovery, dejournaling and
        # rollback send each to its own tree through this map.
        self._by_id: dict[int, Database] = {self.db_id: self}
        # A mirrored database on a backup or async is read-only: every write through
        # the API raises ProtectError (<PROTECT>) and changes nothing. Mirroring
        # turns it off when this member becomes primary (set_protect).
        self.tree.protected = bool(protect) or bool(mirror_copy)
        # A mirror copy (backup or async) journals nothing of its own: its journal is
        # the primary's stream, byte for byte (Journal.append_frames), and its blocks
        # follow by dejournaling (apply_frames). Its checkpoint is the position it has
        # applied, and recovery rolls forward without rolling back: a transaction open
        # in the stream may still commit on the primary.
        self.mirror_copy = bool(mirror_copy)
        self.applied_position = 0
        self._stream_txns: dict[int, int] = {}  # open in the applied stream: txn -> position
        if commit_mode not in COMMIT_MODES:
            raise ConfigError(
                f"commit_mode: {commit_mode!r} is not one of {', '.join(COMMIT_MODES)}"
            )
        self.commit_mode = commit_mode
        # IRIS per-database journaling: off, a change outside a transaction is not
        # journaled (it reaches the database with the next WIJ cycle and a crash
        # before that loses it, the tree staying sound); inside one it always is.
        # None: as the catalog last recorded it (set_journaling), else on.
        if journaling is None:
            journaling = self._catalog.get(self.name, {}).get("journaling", True)
        self.journaling = bool(journaling)
        self.dirty_limit = max(8, int(pool_blocks * DIRTY_SHARE_FLUSH))
        self.dirty_hard_limit = min(
            max(16, int(pool_blocks * DIRTY_SHARE_HARD)), WIJ_BLOCKS_MAX - WIJ_CYCLE_SPARE_BLOCKS
        )
        self.write_daemon_interval_ms = write_daemon_interval_ms
        self._globals: dict[str, Global] = {}
        self.globals = GlobalsView(self)
        self._daemon: threading.Thread | None = None
        self._txn = _TxnState()
        self._open_txns: dict[int, int] = {}  # txn id -> journal position before its TSTART
        # Transactions ended at $TLEVEL 0 (irisrep_transactions_total), counted under
        # the lock that ends them: no lock or atomic of their own.
        self.txn_commit_count = 0
        self.txn_rollback_count = 0
        self._txn_ids = itertools.count(time.time_ns())  # unique across restarts
        self.locks = LockTable()
        try:
            for child_name in sorted(self._catalog):
                if child_name != self.name:
                    self._open_child(child_name, create=False)
        except BaseException:
            self._close_files()
            raise
        # Recovery on open, step 2 (rule 3): roll the journal forward from the
        # checkpoint, then roll back transactions that never committed.
        self.journal = Journal(
            self.fs,
            os.path.join(self.path, JOURNAL_DIR_NAME)
            if journal_dir is None
            else os.fspath(journal_dir),
            direct=direct,
            file_bytes=journal_file_bytes,
            epoch=epoch,
        )
        # Time marks in the frames this instance builds: what a restore to a time reads.
        self.journal.time_mark_ns = JOURNAL_TIME_MARK_MS * 1_000_000
        try:
            self.committer = Committer(self.journal)
            self.journal_recovery = self._recover_journal()
        except BaseException:
            # The error that stopped recovery is the one to report: a close that fails
            # after it (the disk is gone, the journal already stopped) must not hide it.
            with contextlib.suppress(OSError, IrisrepError):
                self.journal.close()
            self._close_files()
            raise
        self._flusher: threading.Thread | None = None
        self._flush_wake = threading.Event()  # set by close(): no waiting out the interval
        if commit_mode == "relaxed":
            # Relaxed commits return at once; this makes them durable within
            # JOURNAL_FLUSH_MS (IRIS without synchronous commit).
            self._flusher = threading.Thread(
                target=self._flusher_loop, name=f"irisrep-journal-flusher {self.path}", daemon=True
            )
            self._flusher.start()
        if write_daemon:
            self._daemon = threading.Thread(
                target=self._daemon_loop, name=f"irisrep-write-daemon {self.path}", daemon=True
            )
            self._daemon.start()

    # --- recovery and creation -------------------------------------------------------

    def _recover_wij(self, direct: str):
        # One WIJ for the instance: its last cycle may hold blocks of any of its
        # database files, so every one of them is open for the recovery.
        stores = {}
        paths = [self.file_path] + [
            self._file_path_of(n) for n in sorted(self._catalog) if n != self.name
        ]
        try:
            for path in paths:
                if self.fs.exists(path):
                    # RawStore: block 0 itself may be one of the blocks being restored,
                    # so it is not read through the verifier until recovery is done.
                    raw = RawStore(self.fs, path, direct=direct)
                    stores[raw.db_id] = raw
            report = self.wij.recover(stores)
        finally:
            for raw in stores.values():
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

    def _create_file(self, direct: str, file_path: str, db_id: int, checkpoint: int) -> None:
        """Create an empty database under a temporary name, make it durable, rename it.

        A crash before the rename leaves only the temporary file (removed on the next
        open); after it, a complete database. There is never an empty or half-written
        DB.dat, so open never has to guess. `checkpoint`: the journal position it
        starts at (nothing before it can concern a database that did not exist).
        """
        create_database_file(self.fs, file_path, db_id, checkpoint, direct=direct)

    # --- the instance's databases ----------------------------------------------------

    def _file_path_of(self, name: str) -> str:
        return os.path.join(self.path, name + DATABASE_FILE_SUFFIX)

    def _read_catalog(self) -> dict[str, dict]:
        """databases.json: {NAME: {"journaling": bool}} for the instance's databases
        (DB appears only once its journaling was switched). Missing: none yet."""
        if not self.fs.exists(self.catalog_path):
            return {}
        f = self.fs.open(self.catalog_path, direct="disabled")
        try:
            size = f.size()
            if size > DATABASE_CATALOG_BYTES_MAX:
                raise ConfigError(f"{self.catalog_path}: {size} bytes, more than a catalog holds")
            raw = f.pread(0, size)
        finally:
            f.close()
        try:
            doc = json.loads(raw)
            entries = doc["databases"]
            catalog = {
                check_database_name(n): {"journaling": bool(e["journaling"])}
                for n, e in entries.items()
            }
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ConfigError(f"{self.catalog_path}: not a database catalog ({exc})") from None
        return catalog

    def _write_catalog(self, catalog: dict[str, dict]) -> None:
        """Whole or not at all: a temporary file made durable, then renamed (the
        rename fsyncs the directory). A crash leaves the old catalog or the new."""
        write_catalog_file(self.fs, self.catalog_path, catalog)
        self._catalog = catalog

    def _open_child(self, name: str, *, create: bool) -> Database:
        """Open (or, `create`, make) database `name` of this instance; under the lock
        or during open. A new file starts at the journal's current end."""
        path = self._file_path_of(name)
        db_id = database_id(name)
        if not self.fs.exists(path):
            if not create:
                raise DatabaseNotFoundError(
                    f"{self.path}: database {name} is in {DATABASE_CATALOG_NAME} but its "
                    f"file {path} is missing"
                )
            self._create_file(self._direct, path, db_id, self.committer.write_out())
        child = _ChildDatabase(
            self, name, path, self._catalog.get(name, {}).get("journaling", True)
        )
        if child.db_id in self._by_id:
            other = self._by_id[child.db_id]
            child.store.close()
            raise ConfigError(
                f"database {name}: its file {path} has the id {child.db_id:08x} of "
                f"database {other.name} (a copied file?)"
            )
        self._children[name] = child
        self._by_id[child.db_id] = child
        return child

    def database(
        self, name: str, *, create: bool = True, journaling: bool | None = None
    ) -> Database:
        """Database `name` of this instance (`DB` is this one): its own file and
        globals, sharing the instance's journal, WIJ, transactions and locks.

        `create`: make it when it does not exist (DatabaseNotFoundError otherwise),
        with journaling on unless `journaling=False`; the file is durable and in the
        catalog before this returns. For an existing database `journaling` must agree
        (set_journaling switches it). Creating one is local to this instance: a
        mirrored database is created on every member (the `[[databases]]` config)."""
        canonical = check_database_name(name)
        if journaling is not None and not isinstance(journaling, bool):
            raise ConfigError(f"journaling: {journaling!r} must be a bool")
        root = self if self.parent is None else self.parent
        with root._lock:
            root._check_open()
            db = root if canonical == root.name else root._children.get(canonical)
            if db is None:
                if not create:
                    raise DatabaseNotFoundError(
                        f"<NAMESPACE> no database {canonical} in {root.path} "
                        f"(there are: {', '.join(root.database_names_locked())})"
                    )
                if 1 + len(root._children) >= DATABASES_MAX:
                    raise ConfigError(f"{root.path}: already {DATABASES_MAX} databases")
                catalog = dict(root._catalog)
                catalog[canonical] = {"journaling": True if journaling is None else journaling}
                if database_id(canonical) in root._by_id:
                    raise ConfigError(
                        f"database {canonical}: its id collides with database "
                        f"{root._by_id[database_id(canonical)].name}; choose another name"
                    )
                orphan = self.fs.exists(root._file_path_of(canonical))
                # File first (durable, renamed into place), then the catalog: a crash
                # in between leaves a file no catalog names, adopted by the next
                # database() of that name (it can hold nothing: nothing wrote to it).
                root._catalog = catalog
                try:
                    db = root._open_child(canonical, create=True)
                    crashpoints.hit("database_before_catalog")
                except BaseException:
                    catalog.pop(canonical)
                    raise
                root._write_catalog(catalog)
                log.info(
                    "%s: database %s %s (journaling %s)",
                    root.path,
                    canonical,
                    "adopted" if orphan else "created",
                    "on" if db.journaling else "off",
                )
            elif journaling is not None and journaling != db.journaling:
                raise ConfigError(
                    f"database {canonical} has journaling {'on' if db.journaling else 'off'}"
                    ": switch it with set_journaling()"
                )
            return db

    def database_names(self) -> list[str]:
        """The instance's databases: DB first, then the others by name."""
        root = self if self.parent is None else self.parent
        with root._lock:
            return root.database_names_locked()

    def database_names_locked(self) -> list[str]:
        return [self.name, *sorted(self._children)]

    def _databases(self) -> list[Database]:
        return [self, *self._children.values()]

    def _db_for(self, db_id: int) -> Database:
        """The database a journal record names (by id)."""
        db = self._by_id.get(db_id)
        if db is None:
            raise DatabaseNotFoundError(
                f"{self.path}: a journal record names database id {db_id:08x}, which this "
                f"instance does not have (it has {', '.join(self.database_names_locked())})"
                "; on a mirror member, declare every mirrored database in [[databases]]"
            )
        return db

    def set_journaling(self, on: bool, *, timeout_s: float = 10.0) -> None:
        """Switch this database's journaling, at a clean point: when no transaction is
        open in the instance (TransactionError after `timeout_s`). Recorded in the
        catalog (it stays across restarts), logged, and journaled as a MARKER so that
        the journal says from where its changes are missing. A database whose
        journaling is off is never mirrored: on a mirror member it must be local."""
        if not isinstance(on, bool):
            raise ConfigError(f"journaling: {on!r} must be a bool")
        root = self if self.parent is None else self.parent
        deadline = time.monotonic() + timeout_s
        while True:
            with root._lock:
                root._check_open()
                if on == self.journaling:
                    return
                if not root._open_txns:
                    root._check_writable(f"journaling of database {self.name}")
                    # Durable first: every change made under the old setting is in the
                    # journal (or, off, will be checkpointed) before the new one rules.
                    catalog = dict(root._catalog)
                    catalog[self.name] = {"journaling": on}
                    root._write_catalog(catalog)
                    self.journaling = on
                    for g in self._globals.values():
                        g._set_journaling(on)
                    text = f"journaling {self.name} {'on' if on else 'off'}"
                    ticket = root.committer.log(
                        [Record(replay.MARKER, 0, self.db_id, 0, b"", text.encode(), b"")]
                    )
                    break
            if time.monotonic() > deadline:
                raise TransactionError(
                    f"journaling of {self.name}: transactions still open after {timeout_s} s"
                )
            time.sleep(0.005)
        root.committer.sync(ticket, mirror=False)
        log.warning("%s: %s", root.path, text)

    def _close_files(self) -> None:
        """After a failed open: close whatever files it had opened."""
        for child in self._children.values():
            with contextlib.suppress(OSError, IrisrepError):
                child.store.close()
        for close in (self.store.close, self.wij.close):
            with contextlib.suppress(OSError, IrisrepError, AttributeError):
                close()

    def _recover_journal(self) -> JournalRecovery:
        """Roll forward from the checkpoint, roll back what never committed, checkpoint.

        Reads from the transaction floor (no transaction open at the checkpoint began
        before it) so that the records of a transaction that straddles the checkpoint
        are known for its rollback; only records at or after the checkpoint are
        applied. Idempotent: every record states an absolute result, and a rollback
        is journaled with its TROLLBACK, so a second recovery finds it closed.
        """
        # Every database of the instance has its own checkpoint (a database created
        # since the last cycle starts at its creation): read from the oldest, apply
        # each record only to a database whose checkpoint it is not behind.
        dbs = self._databases()
        ckpt = min(db.store.checkpoint for db in dbs)
        start = min(min(db.store.txn_floor, db.store.checkpoint) for db in dbs)
        open_txns: dict[int, list] = {}
        order = []  # (txn, record) of open transactions, in journal order
        applied = 0
        for pos, _header, records in self.journal.read(from_position=start):
            for rec in records:
                t, txn = rec[0], rec[3]
                if txn:
                    if t == replay.TSTART:
                        open_txns[txn] = []
                    elif t in (replay.TCOMMIT, replay.TROLLBACK):
                        open_txns.pop(txn, None)
                    elif t in replay.DATA_TYPES and txn in open_txns:
                        order.append(rec)
                if pos >= ckpt and t in replay.DATA_TYPES:
                    db = self._by_id.get(rec[2]) if self._only_these else self._db_for(rec[2])
                    if db is None:
                        self.skipped_records += 1
                    elif pos >= db.store.checkpoint:
                        replay.apply(db.tree, rec)
                        applied += 1
        if self.skipped_records:
            log.warning(
                "%s: recovery skipped %d records of databases not in this instance",
                self.path,
                self.skipped_records,
            )
        crashpoints.hit("recovery_after_rollforward")
        self.applied_position = self.journal.end_position
        if self.mirror_copy:
            # The primary owns these transactions: it commits or rolls them back, and
            # the stream will say which. Remember where each began (the checkpoint's
            # transaction floor), undo nothing, journal nothing.
            self._stream_txns = dict.fromkeys(open_txns, start)
            for pos, _header, records in self.journal.read(from_position=start):
                for rec in records:
                    if rec[0] == replay.TSTART and rec[3] in self._stream_txns:
                        self._stream_txns[rec[3]] = pos
            if applied:
                log.warning(
                    "%s: mirror copy recovery applied %d records from position %d; %d "
                    "transactions stay open for the primary to end",
                    self.path,
                    applied,
                    ckpt,
                    len(open_txns),
                )
                self._flush_locked()
            return JournalRecovery(
                start, ckpt, self.journal.end_position, applied, [], self.journal.tail_reason
            )
        rolled_back = sorted(open_txns)
        undo_records = []
        for rec in reversed(order):
            if rec[3] in open_txns and (not self._only_these or rec[2] in self._by_id):
                undo_records.extend(replay.undo(self._db_for(rec[2]).tree, rec, Record))
        undo_records.extend(Record(replay.TROLLBACK, 0, 0, t, b"", b"", b"") for t in rolled_back)
        if undo_records:
            self.committer.log(undo_records)
            self.committer.sync_all(mirror=False)
        crashpoints.hit("recovery_before_checkpoint")
        if applied or rolled_back:
            log.warning(
                "%s: journal recovery applied %d records from position %d and rolled "
                "back %d transactions",
                self.path,
                applied,
                ckpt,
                len(rolled_back),
            )
            self._flush_locked()  # a checkpoint: the database now holds all of it
        return JournalRecovery(
            start, ckpt, self.journal.end_position, applied, rolled_back, self.journal.tail_reason
        )

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
        if self._flusher is not None:
            self._flush_wake.set()
            self._flusher.join()
        with self._lock:
            try:
                if self._failure is None:
                    self._flush_locked()
                    crashpoints.hit("close_after_flush")
                    self.wij.mark_clean()
            finally:
                self._closed = True
                for db in self._databases():
                    db.tree.closed = True
                    db.store.close()
                self.wij.close()
                self.journal.close()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def failure(self) -> BaseException | None:
        """The failed write or fsync that stopped this instance (rule 4), or None."""
        return self._failure

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
        # A backup window holds every cycle off, this one too (the wait releases the
        # lock, so the window can close).
        while self._inflight or self._backup_hold:
            self._cycle_done.wait()
        if self._failure is not None:
            raise self._closed_error()
        snap = self._snapshot()
        if snap is not None:
            self._inflight = True
            self._run_cycle(snap)

    @contextlib.contextmanager
    def backup_window(self, marker: str | None = None):
        """Hold off every WIJ cycle while an online backup copies the database file.

        Yields a `BackupPoint`: the file as it is on disk now is one consistent image
        at a checkpoint (the last cycle's: blocks hold exactly the journal before
        `checkpoint`; transactions open there began at or after `txn_floor`), and it
        stays byte for byte that image until the window closes, because only a cycle
        writes the database file. Waiting for a cycle in flight releases the lock, so
        nothing stalls on entry. Inside the window reads, writes and commits go on
        (commits journal and return, changed nodes stay dirty in the pool); only a
        writer that pushes the dirty count past `dirty_hard_limit` waits, for the end
        of the window. The next cycle after it writes everything.

        `marker`: text of a MARKER record journaled (and made durable) on entry, as
        IRIS marks a backup's start; not on a read-only mirror copy, whose journal is
        the primary's stream. Never call flush() or close() from inside the window on
        the same thread: they wait for it to close.
        """
        ticket = 0
        with self._lock:
            self._check_open()
            if self._backup_hold:
                raise BackupError(f"{self.path}: another backup is running on this database")
            while self._inflight:
                self._cycle_done.wait()
            self._check_open()  # that cycle may have failed
            self._backup_hold = True
            try:
                marked = marker is not None and not self.mirror_copy and not self.tree.protected
                if marked:
                    rec = Record(replay.MARKER, 0, 0, 0, b"", marker.encode("utf-8"), b"")
                    ticket = self.committer.log([rec])
                # Every frame before `position` was built before `time` (both read under
                # the lock, in this order): a restore to a time at or after it may take
                # all of them without finding their time marks.
                position = self.committer.write_out()
                point = BackupPoint(
                    db_id=self.db_id,
                    checkpoint=self.store.checkpoint,
                    txn_floor=self.store.txn_floor,
                    generation=self.store.generation,
                    position=position,
                    time=self.journal.clock(),
                    marker=marked,
                    mirror_copy=self.mirror_copy,
                    epoch=self.journal.epoch,
                )
            except BaseException:
                self._backup_hold = False
                self._cycle_done.notify_all()
                raise
        try:
            if ticket:
                self.committer.sync(ticket, mirror=False)
            yield point
        finally:
            with self._lock:
                self._backup_hold = False
                self._cycle_done.notify_all()
            self._kick.set()  # the held-back dirty blocks go out now

    def _dirty_count(self) -> int:
        return sum(len(db.tree.dirty) + len(db.store.pending) for db in self._databases())

    def _snapshot(self):
        """Under the lock: the consistent set of changed blocks, the header, and the
        journal ticket they stand for.

        Every record of every change in the set is handed to the journal here (no
        fsync); the header records the journal position after them as the checkpoint.
        The images stay readable through `store.inflight` until the database file
        has them: a node made clean here may be evicted and read back mid-cycle.
        """
        # One cycle covers every database of the instance: the WIJ protects them
        # together. Every header moves to the new checkpoint, changed or not, so that
        # recovery and the journal purge never need more than the last cycle's.
        changed = [(db, db.tree.take_dirty() + db.store.take_pending()) for db in self._databases()]
        if not any(images for _db, images in changed):
            return None
        ticket = self.committer.logged
        if self.mirror_copy:
            # Blocks reflect the stream up to what was applied (only durable frames
            # are applied, so rule 2 holds without a sync here).
            checkpoint = self.applied_position
            floor = min(self._stream_txns.values(), default=checkpoint)
        else:
            checkpoint = self.committer.write_out()
            floor = min(self._open_txns.values(), default=checkpoint)
        out = []
        for db, images in changed:
            store = db.store
            store.checkpoint = checkpoint
            store.txn_floor = floor
            store.root = db.tree.root
            store.generation += 1
            images.append((0, store.header_image()))
            images.sort()
            store.inflight = dict(images)
            out.extend((store.db_id, block_no, image) for block_no, image in images)
        return out, ticket, checkpoint

    def _run_cycle(self, snap) -> None:
        """One WIJ cycle for a snapshot; may run with or without the lock held."""
        images, ticket, checkpoint = snap
        try:
            # Rule 2: the journal is durable up to every change in these blocks before
            # any of them can reach the database file.
            self.committer.sync(ticket, mirror=False)
            self.wij.cycle({db.db_id: db.store for db in self._databases()}, images, checkpoint)
        except BaseException as exc:
            # Rule 4: a failed write or fsync is fatal. Record it; every later call
            # raises DurabilityError naming it. The in-flight images stay readable.
            # Any interruption (KeyboardInterrupt, a simulated crash) leaves the files
            # mid-cycle too: the same stop, and waiters must not wait for it forever.
            with self._lock:
                self._failure = exc
                self._inflight = False
                for db in self._databases():
                    db.tree.closed = True
                self._cycle_done.notify_all()
            log.error("%s: write image journal cycle failed, database stopped: %s", self.path, exc)
            raise
        with self._lock:
            for db in self._databases():
                db.store.inflight = {}
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
                if self._inflight or self._backup_hold:
                    continue
                snap = self._snapshot()
                if snap is None:
                    continue
                self._inflight = True
            try:
                self._run_cycle(snap)  # outside the lock: readers and writers go on
            except Exception:
                return  # recorded in _failure; callers see DurabilityError

    def _flusher_loop(self) -> None:
        interval_s = JOURNAL_FLUSH_MS / 1000
        while not self._stopping:
            self._flush_wake.wait(interval_s)
            try:
                self.committer.sync_all(mirror=False)
            except Exception as exc:  # recorded by the committer; callers see it
                log.error("%s: journal flush failed: %s", self.path, exc)
                return

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

    def _touched(self) -> None:
        """Records were applied or undone outside the Global API: open cursors of
        every database must notice (each tree's modification count)."""
        for db in self._databases():
            db.tree.mod_count += 1

    @property
    def protected(self) -> bool:
        return self.tree.protected

    def set_protect(self, on: bool) -> None:
        """Make the database read-only through the API (a non-primary) or writable."""
        with self._lock:
            for db in self._databases():
                db.tree.protected = bool(on)

    def apply_frames(
        self, frames: list, end_position: int, *, yield_to_backup: bool = False
    ) -> int:
        """Dejournaling on a mirror copy: apply decoded frames, in stream order.

        `frames` is a list of (position, records) of frames already durable in this
        member's journal; `end_position` is the stream position after the last.
        Replay is idempotent, so frames applied again after a crash change nothing.
        Returns the number of data records applied.

        `yield_to_backup` (the copy's link thread, which also acknowledges the
        primary's frames and must never wait for a backup): while a backup window
        holds cycles off, applying stops at a frame boundary once the dirty blocks
        reach `dirty_limit`, instead of waiting past `dirty_hard_limit` for the
        window to close. `applied_position` then says where it stopped; the rest is
        durable in the journal and `apply_from_journal` applies it later. The dirty
        count passes `dirty_limit` by at most one frame's blocks."""
        if not self.mirror_copy:
            raise TransactionError("apply_frames: this database is not a mirror copy")
        n = 0
        stopped = False
        with self._lock:
            self._check_open()
            if end_position <= self.applied_position:
                return 0
            if frames and frames[0][0] > self.applied_position:
                # A hole would silently skip records: never apply past one.
                raise JournalCorruptError(
                    f"{self.path}: dejournaling at position {frames[0][0]}, but only "
                    f"{self.applied_position} is applied (a gap in the stream)"
                )
            txns = self._stream_txns
            db_for = self._db_for
            for pos, records in frames:
                if pos < self.applied_position:
                    continue  # already applied (a catch-up overlapping the live stream)
                if (
                    yield_to_backup
                    and self._backup_hold
                    and self._dirty_count() >= self.dirty_limit
                ):
                    # A frame boundary: the blocks and `applied_position` (the next
                    # snapshot's checkpoint) agree exactly, as after a whole batch.
                    self.applied_position = pos
                    stopped = True
                    break
                for rec in records:
                    t = rec[0]
                    if t in replay.DATA_TYPES:
                        replay.apply(db_for(rec[2]).tree, rec)
                        n += 1
                    elif t == replay.TSTART:
                        txns[rec[3]] = pos
                    elif t == replay.TCOMMIT or t == replay.TROLLBACK:
                        txns.pop(rec[3], None)
            if n:
                self._touched()
            if stopped:
                return n
            self.applied_position = end_position
            if yield_to_backup and self._backup_hold:
                # Held: no cycle can bring the count down before the window closes;
                # the next batch stops early instead of waiting here (see above).
                return n
            self._after_write()
        return n

    def apply_from_journal(self, to_position: int | None = None) -> int:
        """On a mirror copy: apply the durable frames of this member's own journal
        from `applied_position` up to `to_position` (default: the durable end), in
        slices of about DEJOURNAL_SLICE_RECORDS records, each under one hold of the
        lock and yielding to a backup window as `apply_frames(yield_to_backup=True)`
        does. What a backup held back is applied this way once it is over. Returns
        the data records applied; `applied_position` says how far it got."""
        if not self.mirror_copy:
            return 0
        with self._lock:
            self._check_open()
            if self._backup_hold and self._dirty_count() >= self.dirty_limit:
                return 0  # still held: not even worth reading the journal
            start = self.applied_position
        end = self.journal.durable_position
        if to_position is not None:
            end = min(end, to_position)
        if start >= end:
            return 0
        n = 0
        batch: list = []
        count = 0
        # `end` is a frame boundary (a durable end, or the start of a batch the link
        # received), so the frames before it end exactly there.
        for pos, _h, records in self.journal.read(from_position=start):
            if pos >= end or count >= DEJOURNAL_SLICE_RECORDS:
                n += self.apply_frames(batch, pos, yield_to_backup=True)
                batch, count = [], 0
                if pos >= end or self.applied_position < pos:
                    return n  # done, or a backup window holds dejournaling back
            batch.append((pos, records))
            count += len(records)
        if batch:
            n += self.apply_frames(batch, end, yield_to_backup=True)
        return n

    def apply_rest_of_journal(self) -> int:
        """On a mirror copy whose link is closed: apply every durable frame not yet
        applied (a promotion must start from the whole received stream)."""
        with self._lock:
            return self.apply_rest_of_journal_locked()

    def apply_rest_of_journal_locked(self) -> int:
        self._check_open()
        if not self.mirror_copy:
            return 0
        start = self.applied_position
        end = self.journal.durable_position
        if start >= end:
            return 0
        frames = [(pos, records) for pos, _h, records in self.journal.read(from_position=start)]
        return self.apply_frames(frames, end)

    def truncate_stream(self, position: int) -> list:
        """On a mirror copy: drop the stream after `position` (a tail the primary
        never had: it lost frames it had shipped, or it is a new primary that never
        received them). Those records are undone from their before-images, a
        checkpoint makes the database reflect exactly `position`, and only then is the
        journal cut (a crash in between rolls the tail forward again: no harm, the
        cut is retried). Returns the undone data records, for the report."""
        with self._lock:
            self._check_open()
            if not self.mirror_copy:
                raise TransactionError("truncate_stream: only a mirror copy drops a tail")
            self.apply_rest_of_journal_locked()
            tail = []
            for _pos, _h, records in self.journal.read(from_position=position):
                tail.extend(r for r in records if r[0] in replay.DATA_TYPES)
            for rec in reversed(tail):
                replay.undo(self._db_for(rec[2]).tree, rec, Record)
            self._touched()
            # Transactions open at `position`: recomputed from the transaction floor.
            txns: dict[int, int] = {}
            floor = min(self.store.txn_floor, position)
            for pos, _h, records in self.journal.read(from_position=floor):
                if pos >= position:
                    break
                for rec in records:
                    if rec[0] == replay.TSTART:
                        txns[rec[3]] = pos
                    elif rec[0] in (replay.TCOMMIT, replay.TROLLBACK):
                        txns.pop(rec[3], None)
            self._stream_txns = txns
            self.applied_position = position
            self._flush_locked()  # checkpoint = position, before the journal is cut
            self.journal.truncate(position)
        log.warning(
            "%s: dropped the stream after position %d (%d records undone)",
            self.path,
            position,
            len(tail),
        )
        return tail

    def quiesce(self, timeout_s: float) -> None:
        """Wait until no transaction is open and everything logged is durable (a
        planned handover's clean point); TransactionError after `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while True:
            with self._lock:
                self._check_open()
                if not self._open_txns:
                    break
            if time.monotonic() > deadline:
                raise TransactionError(
                    f"{len(self._open_txns)} transactions still open after {timeout_s} s"
                )
            time.sleep(0.005)
        self.committer.sync_all(mirror=False)

    def become_copy(self, *, force: bool = False) -> None:
        """Turn this primary's database into a read-only mirror copy that follows
        a new primary from the end of its own journal (planned handover: quiesced,
        so nothing is open and everything is durable and shipped)."""
        with self._lock:
            self._check_open()
            if self.mirror_copy:
                return
            if self._open_txns and not force:
                raise TransactionError("become_copy: transactions are still open")
            for db in self._databases():
                db.tree.protected = True
            self.mirror_copy = True
            self.applied_position = self.committer.write_out()
            # Fenced (force): transactions still open stay open in the stream; the new
            # primary ended them (rolled back) in its own epoch.
            self._stream_txns = dict(self._open_txns)
            self._open_txns = {}

    def become_primary(self, epoch: int, before_writable=None) -> list[int]:
        """Turn this mirror copy into the primary's database, in epoch `epoch`.

        The transactions the old primary left open in the stream can no longer
        commit: they are rolled back from their before-images, journaled (UNDO
        records, then TROLLBACK) in the new epoch and made durable, exactly as crash
        recovery does. Then `before_writable()` runs (the member attaches its
        replicator there: a commit that could land before the journal's hook is in
        place would be shipped to nobody and waited for by nobody), and only then
        is the database writable. Returns the rolled-back transaction ids. The
        caller has persisted the new epoch first."""
        with self._lock:
            self._check_open()
            if not self.mirror_copy:
                raise TransactionError("become_primary: this database is already writable")
            self.journal.epoch = epoch
            open_txns = dict(self._stream_txns)
            undo_records = []
            if open_txns:
                start = min(open_txns.values())
                order = []
                for _pos, _header, records in self.journal.read(from_position=start):
                    for rec in records:
                        if rec[3] in open_txns and rec[0] in replay.DATA_TYPES:
                            order.append(rec)
                for rec in reversed(order):
                    undo_records.extend(replay.undo(self._db_for(rec[2]).tree, rec, Record))
                undo_records.extend(
                    Record(replay.TROLLBACK, 0, 0, t, b"", b"", b"") for t in sorted(open_txns)
                )
                self._touched()
                self.committer.log(undo_records)
            self._stream_txns = {}
            self.mirror_copy = False
        if undo_records:
            self.committer.sync_all(mirror=False)
        if before_writable is not None:
            before_writable()
        with self._lock:
            self._check_open()
            for db in self._databases():
                db.tree.protected = False
        if undo_records:
            log.warning(
                "%s: promoted in epoch %d; rolled back %d transactions the old primary left open",
                self.path,
                epoch,
                len(open_txns),
            )
        return sorted(open_txns)

    def _check_writable(self, what: str) -> None:
        if self.tree.protected:
            raise ProtectError(
                f"<PROTECT> {what}: this database is read-only here (not the primary)"
            )

    def purge_journal(self, older_than_days: float = JOURNAL_PURGE_DAYS) -> list[str]:
        """Remove the journal files every purge rule lets go (`journal_purge`, no
        mirror members); returns their names."""
        return self.journal_purge(older_than_days=older_than_days).removed

    def journal_purge(
        self,
        *,
        older_than_days: float = JOURNAL_PURGE_DAYS,
        members=(),
        member_limit_days: float = JOURNAL_PURGE_MEMBER_LIMIT_DAYS,
        dry_run: bool = False,
        now_ns: int | None = None,
    ):
        """Decide which journal files may go and (unless `dry_run`) remove them;
        returns the `purge.PurgeDecision` (removed files, and why each other stays).

        The rules are `purge.decide_purge`'s: recovery on open (the checkpoint and the
        transaction floor), the oldest open transaction (on a copy: open in the
        stream), the last good backup in this instance's backups.json and a backup
        being taken, `members` (`purge.MemberPosition`: a mirror primary passes every
        other member), and the age rule. A checkpoint is taken first (a dry run too,
        so that it says what a purge would do): files before it are then really no
        longer needed for recovery."""
        from . import purge

        # Checked before the checkpoint: bad input changes nothing.
        purge.check_days("older_than_days", older_than_days, JOURNAL_PURGE_DAYS_MAX)
        purge.check_days(
            "member_limit_days", member_limit_days, JOURNAL_PURGE_MEMBER_LIMIT_DAYS_MAX
        )
        members = list(members)
        with self._purge_lock:
            self.flush()
            with self._lock:
                self._check_open()
                recovery_from = min(
                    min(db.store.checkpoint, db.store.txn_floor) for db in self._databases()
                )
                txns = self._stream_txns if self.mirror_copy else self._open_txns
                oldest_txn = min(txns.values(), default=None)
                running = min(self.backups_in_progress.values(), default=None)
            # Read after the positions: a file listed later is only newer (kept).
            files = self.journal.files()
            spans = [
                purge.JournalFileSpan(
                    f.name,
                    f.start_position,
                    nxt.start_position if nxt is not None else None,
                    f.created,
                )
                for f, nxt in zip(files, [*files[1:], None], strict=True)
            ]
            decision = purge.decide_purge(
                spans,
                now_ns=self.journal.clock() if now_ns is None else now_ns,
                older_than_days=older_than_days,
                recovery_from=recovery_from,
                backup=purge.last_backup(self.path, self.db_id),
                backup_running_start=running,
                members=members,
                member_limit_days=member_limit_days,
                oldest_open_txn=oldest_txn,
            )
            decision.dry_run = dry_run
            if not dry_run and decision.remove:
                decision.removed = self.journal.remove_files(decision.remove)
        return decision

    # --- journaling the changes ------------------------------------------------------

    def _log(self, records: list) -> int:
        """Under the lock, right after the change is applied: journal its records.

        Returns the ticket the caller must sync on after releasing the lock (an
        autocommitted change in sync mode), or 0 (inside a transaction: TCOMMIT syncs;
        relaxed mode: the write daemon's cycles and close sync).
        """
        st = self._txn
        if not st.level and not self.journaling:
            return 0
        ticket = self.committer.log(records)
        if st.level:
            st.records.extend(records)
            return 0
        return ticket if self.commit_mode == "sync" else 0

    def _log_set(self, key: bytes, value: bytes, old: bytes | None, kind: int = replay.SET) -> int:
        flags = replay.HAD_BEFORE if old is not None else 0
        rec = Record(kind, flags, self.db_id, self._txn.txn, key, value, old or b"")
        return self._log([rec])

    def _commit(self, ticket: int) -> None:
        """Outside the lock: wait until the change is durable (group commit)."""
        if ticket:
            self.committer.sync(ticket)

    # --- transactions (TSTART / TCOMMIT / TROLLBACK) ---------------------------------

    @property
    def tlevel(self) -> int:
        """$TLEVEL of the calling thread."""
        return self._txn.level

    def _lock_owner(self) -> int:
        return threading.get_ident()

    def tstart(self) -> None:
        st = self._txn
        if st.level >= TLEVEL_MAX:
            raise TransactionError(f"TSTART: $TLEVEL is already {TLEVEL_MAX}, the most")
        with self._lock:
            self._check_open()
            if st.level == 0:
                # A TSTART is a journal record: on a read-only mirror copy it would
                # fork this member's journal from the primary's stream.
                self._check_writable("TSTART")
                if self.mirror_copy:
                    # A reporting async's read-write copy: its journal is still the
                    # mirror's stream, so its local changes are never journaled.
                    raise TransactionError("TSTART: a read-write mirror copy takes no transactions")
                st.txn = next(self._txn_ids)
                st.records = _core.RecordList()
                st.marks = []
                # No record of this transaction can lie before the journal's end now.
                self._open_txns[st.txn] = self.journal.end_position
                self.committer.log([Record(replay.TSTART, 0, 0, st.txn, b"", b"", b"")])
                self.locks.begin_hold(self._lock_owner())
            st.marks.append(len(st.records))
            st.level += 1

    def tcommit(self) -> None:
        """TCOMMIT: at $TLEVEL 1 the transaction is durable when this returns."""
        st = self._txn
        if st.level == 0:
            raise TransactionError("TCOMMIT with no transaction open ($TLEVEL is 0)")
        ticket = 0
        with self._lock:
            self._check_open()
            st.level -= 1
            st.marks.pop()
            if st.level == 0:
                ticket = self.committer.log([Record(replay.TCOMMIT, 0, 0, st.txn, b"", b"", b"")])
                del self._open_txns[st.txn]
                self.txn_commit_count += 1
                st.txn = 0
                st.records = _core.RecordList()
        if st.level == 0:
            self.locks.end_hold(self._lock_owner())
            if self.commit_mode == "sync":
                self._commit(ticket)

    def trollback(self, levels: int | None = None) -> None:
        """TROLLBACK (all levels) or TROLLBACK n: undo from the before-images.

        $INCREMENT is not undone (IRIS). The undo is journaled (UNDO records, then
        TROLLBACK when the transaction ends) so that recovery replays it as done.
        """
        st = self._txn
        if st.level == 0:
            raise TransactionError("TROLLBACK with no transaction open ($TLEVEL is 0)")
        n = st.level if levels is None else levels
        if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= st.level:
            raise TransactionError(f"TROLLBACK {levels!r}: $TLEVEL is {st.level}")
        with self._lock:
            self._check_open()
            mark = st.marks[st.level - n]
            undo_records = []
            for rec in reversed(st.records[mark:]):
                undo_records.extend(replay.undo(self._db_for(rec[2]).tree, rec, Record))
            if undo_records:
                self._touched()
            del st.records[mark:]
            del st.marks[st.level - n :]
            st.level -= n
            if st.level == 0:
                undo_records.append(Record(replay.TROLLBACK, 0, 0, st.txn, b"", b"", b""))
                del self._open_txns[st.txn]
                self.txn_rollback_count += 1
                st.txn = 0
            # The undone records and their UNDO records cancel out: neither stays in
            # the live list (an outer rollback must not undo the undo). The journal
            # keeps both, and recovery's full reverse walk undoes them in pairs.
            if undo_records:
                self.committer.log(undo_records)
            self._after_write()
        if st.level == 0:
            self.locks.end_hold(self._lock_owner())

    @contextlib.contextmanager
    def transaction(self):
        """TSTART ... TCOMMIT; an exception rolls back this level and propagates."""
        self.tstart()
        level = self._txn.level
        try:
            yield self
        except BaseException:
            if self._txn.level >= level and not self._closed:
                self.trollback(self._txn.level - level + 1)
            raise
        else:
            self.tcommit()

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


class _ChildDatabase(Database):
    """A database of an instance other than its first (`Database.database(NAME)`).

    Owns its file, tree and globals; everything else is the instance's (the parent
    Database): the lock, the WIJ and its cycles, the journal (its records carry this
    database's id), transactions, locks, mirror role. Attributes it does not set are
    read from the parent; the methods that change instance state run on the parent,
    so a transaction, a flush or a close covers every database of the instance.
    """

    def __init__(self, parent: Database, name: str, file_path: str, journaling: bool) -> None:
        # Not Database.__init__: nothing of the instance is opened twice.
        self.parent = parent
        self.name = name
        self.file_path = file_path
        self.store = BlockStore(parent.fs, file_path, direct=parent._direct)
        try:
            self.tree = _core.BTree(
                self.store, self.store.db_id, self.store.root, parent._pool_blocks
            )
        except BaseException:
            self.store.close()
            raise
        self.db_id = self.store.db_id
        self.tree.protected = parent.tree.protected
        self.journaling = bool(journaling)
        self.dirty_limit = parent.dirty_limit
        self._globals: dict[str, Global] = {}
        self.globals = GlobalsView(self)

    def __getattr__(self, name: str) -> Any:
        # Only reached for attributes this object does not have: the instance's.
        if name.startswith("__") or name == "parent":
            raise AttributeError(name)
        return getattr(self.parent, name)

    # Instance-wide state changes: the parent's (they write its attributes).
    def close(self) -> None:
        """The instance's databases close together: close the instance."""
        self.parent.close()

    def flush(self) -> None:
        self.parent.flush()

    def _flush_locked(self) -> None:
        self.parent._flush_locked()

    def _dirty_over_limit(self) -> None:
        self.parent._dirty_over_limit()

    def _after_write(self) -> None:
        self.parent._after_write()

    def _databases(self) -> list[Database]:
        return self.parent._databases()

    def _db_for(self, db_id: int) -> Database:
        return self.parent._db_for(db_id)

    def _touched(self) -> None:
        self.parent._touched()

    @property
    def tlevel(self) -> int:
        return self.parent.tlevel

    def tstart(self) -> None:
        self.parent.tstart()

    def tcommit(self) -> None:
        self.parent.tcommit()

    def trollback(self, levels: int | None = None) -> None:
        self.parent.trollback(levels)

    def quiesce(self, timeout_s: float) -> None:
        self.parent.quiesce(timeout_s)

    def set_protect(self, on: bool) -> None:
        self.parent.set_protect(on)

    def _not_here(self, what: str):
        raise TransactionError(
            f"{what}: an operation of the instance, not of database {self.name} "
            f"(call it on the instance's {self.parent.name})"
        )

    def backup_window(self, marker: str | None = None):
        self._not_here("backup")

    def apply_frames(self, frames, end_position, *, yield_to_backup=False):
        self._not_here("apply_frames")

    def become_copy(self, *, force: bool = False) -> None:
        self._not_here("become_copy")

    def become_primary(self, epoch: int, before_writable=None):
        self._not_here("become_primary")

    def truncate_stream(self, position: int):
        self._not_here("truncate_stream")

    def journal_purge(self, **kwargs):
        self._not_here("journal_purge")

    def __repr__(self) -> str:
        return f"<irisrep.Database {self.name} of {self.parent.path!r}>"


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
    `g[subs]`, `g[subs] = v`, `del g[subs]`, `g.get()` and `in` live in
    `_core.GlobalCore`.
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
        """`$INCREMENT`: add `by` to the node's numeric value (undefined counts as 0).

        Atomic under the database lock; journaled as INCREMENT, which a rollback
        leaves in place (IRIS semantics).
        """
        subs = _subs(subs)
        key = _encode_key(self._prefix, subs)
        step = _core.number_value(by)
        db = self._db
        with self._lock:
            db._check_open()
            db._check_writable(_core.format_reference(self.name, subs))
            stored = self._tree.get(key)
            old = None if stored is None else self._tree.load_value(stored)
            new = _core.number_value(0 if old is None else _decode_value(old)) + step
            if isinstance(new, float) and new.is_integer() and abs(new) < 1e18:
                new = int(new)
            encoded = _encode_value(new)
            self._tree.set(key, encoded)
            ticket = db._log_set(key, encoded, old, replay.INCREMENT)
            db._after_write()
        db._commit(ticket)
        return new

    # --- kills -----------------------------------------------------------------------

    # `del g[subs]` is GlobalCore.__delitem__ (it calls kill): defined here, it would
    # put every `g[subs] = v` through the generic slot dispatch.

    def kill(self, subs: Any = ()) -> None:
        """KILL: the node and its descendants; journaled with the killed subtree."""
        subs = _subs(subs)
        key = _encode_key(self._prefix, subs)
        self._kill(key, key + _ALL_BELOW, subs)

    def _kill(self, lo: bytes, hi: bytes, subs: tuple) -> None:
        db = self._db
        with self._lock:
            db._check_open()
            if db.tree.protected:  # the message names the whole reference
                db._check_writable(f"KILL {_core.format_reference(self.name, subs)}")
            if not db.journaling and not db._txn.level:
                self._tree.kill_range(lo, hi)  # not journaled: no before-image to read
                db._after_write()
                return
            # The before-image is read first; nothing to journal when nothing is there.
            records = [
                r
                for r in replay.kill_records(self._tree, Record, db.db_id, db._txn.txn, lo, hi)
                if r[6] != _EMPTY_ENTRIES
            ]
            if not records:
                return
            self._tree.kill_range(lo, hi)
            ticket = db._log(records)
            db._after_write()
        db._commit(ticket)

    def zkill(self, subs: Any) -> None:
        """ZKILL: the node's own value only; descendants stay."""
        subs = _subs(subs)
        key = _encode_key(self._prefix, subs)
        db = self._db
        with self._lock:
            db._check_open()
            if db.tree.protected:  # the message names the whole reference
                db._check_writable(f"ZKILL {_core.format_reference(self.name, subs)}")
            stored = self._tree.get(key)
            if stored is None:
                return
            old = self._tree.load_value(stored)
            self._tree.kill_range(key, key + _NODE_ONLY)
            ticket = db._log(
                [Record(replay.ZKILL, replay.HAD_BEFORE, db.db_id, db._txn.txn, key, b"", old)]
            )
            db._after_write()
        db._commit(ticket)

    # --- locks -----------------------------------------------------------------------

    @contextlib.contextmanager
    def lock(
        self, subs: Any = (), timeout: float | None = LOCK_TIMEOUT_DEFAULT_S, shared: bool = False
    ):
        """LOCK +^name(subs): held for the block (and, inside a transaction, until it
        ends). Conflicts with locks on ancestors and descendants, not siblings.
        `timeout=None` waits as long as it takes; otherwise LockTimeoutError."""
        key = _encode_key(self._prefix, _subs(subs))
        owner = self._db._lock_owner()
        locks = self._db.locks
        locks.lock(owner, (self._db.db_id, key), shared=shared, timeout=timeout)
        try:
            yield self
        finally:
            locks.unlock(owner, (self._db.db_id, key), shared=shared)

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
