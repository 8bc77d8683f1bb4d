"""The write image journal (WIJ): crash-atomic sets of database block writes.

Owns the WIJ file (`<instance>/irisrep.wij`, layout in `include/irisrep_wij.h`)
and its protocol: `cycle()` writes one consistent set of block images into the
database files so that a crash never leaves some of them new and others old, and
`recover()` finishes (or reports on) whatever a crash interrupted. It does not
decide *when* a cycle runs or which blocks it holds (the write daemon does).

Promises (DESIGN.md section 2, rules 2-4 and 6):
- A cycle is: directory + images -> fdatasync -> header ACTIVE -> fdatasync ->
  images into each database -> fdatasync each -> header EMPTY -> fdatasync. Once
  the ACTIVE header is durable, recovery makes every block of the set new; before
  that, the databases were not touched and every block is old.
- Each step boundary is a named crash point (`crashpoints.POINTS`, "wij_*").
- A failed fsync (WIJ or database) raises `DurabilityError` chained to the
  `OSError`, and the object refuses every later call but `close()`: it never
  retries and pretends. An `OSError` from a write stays an `OSError`; after the
  ACTIVE header was begun it also makes the object refuse later calls.
- Every WIJ read is verified: a header slot by its checksum and magic, the
  directory by the header's directory checksum, each entry by its own checksum and
  by the image's block checksum, number and database id. With recovery pending, any
  failure raises `WIJCorruptError` naming the file, entry, block, database, expected
  and found, and nothing at all is written to any database.
- The header lives in two 4 KiB slots; header write number `sequence` goes to slot
  `sequence % 2`, so a torn header write damages only one slot and the other still
  holds the previous state. Both slots bad: `WIJCorruptError`, never a guess.
- All I/O goes through the file-system seam with O_DIRECT where available: every
  offset and length is a multiple of IO_ALIGN.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import struct

import xxhash

from . import _core, crashpoints
from .blockstore import StoreFile
from .constants import (
    BLOCK_HEADER_SIZE,
    BLOCK_SIZE,
    IO_ALIGN,
    IO_CALL_BYTES_MAX,
    WIJ_BLOCKS_MAX,
    WIJ_DIR_OFFSET,
    WIJ_ENTRY_SIZE,
    WIJ_FILE_NAME,
    WIJ_MAGIC,
    WIJ_PIPELINE_MIN_BYTES,
    WIJ_SLOT_SIZE,
    WIJ_VERSION,
    WIJ_WRITE_CHUNK_BYTES,
)
from .errors import (
    BlockCorruptError,
    DurabilityError,
    WIJCorruptError,
    WIJRecoveryPendingError,
)

__all__ = [
    "WIJ_BLOCKS_MAX",
    "WIJ_FILE_NAME",
    "WIJ_MAGIC",
    "WIJ_VERSION",
    "WIJCorruptError",
    "WIJRecoveryPendingError",
    "WIJStatus",
    "WIJRecovery",
    "WriteImageJournal",
    "RawStore",
    "wij_status",
    "CYCLE_POINTS",
    "RECOVERY_POINTS",
]

WIJ_EMPTY = 0
WIJ_ACTIVE = 1
_STATE_NAMES = {WIJ_EMPTY: "empty", WIJ_ACTIVE: "active"}

# checksum magic version state sequence cycle entries block_size checkpoint dir_ck running pad
_HDR = struct.Struct("<Q8sIIQQIIQQII")
assert _HDR.size == 72
_ENTRY = struct.Struct("<IIQ")
assert _ENTRY.size == WIJ_ENTRY_SIZE
_ID = struct.Struct("<II")

# The cycle's crash points in the order a cycle passes them; then recovery's.
CYCLE_POINTS = (
    "wij_after_images_write",
    "wij_after_images_fsync",
    "wij_after_active_write",
    "wij_after_active_fsync",
    "wij_after_db_write",
    "wij_after_db_fsync",
    "wij_after_empty_write",
)
RECOVERY_POINTS = (
    "wij_recovery_after_db_write",
    "wij_recovery_after_db_fsync",
    "wij_recovery_after_empty_write",
)

# Writer threads of a cycle's WIJ write on real files: two writes in flight are
# measurably faster than one on a virtio disk (bench/bench_wij.py), more are not.
WIJ_WRITE_THREADS = 2

_xxh3 = xxhash.xxh3_64_intdigest
_xxh3_state = xxhash.xxh3_64


@dataclasses.dataclass
class WIJStatus:
    path: str
    state: str  # "empty" / "active"
    sequence: int
    cycle: int
    entries: int
    checkpoint: int
    running: bool
    slot_errors: list[str] = dataclasses.field(default_factory=list)

    @property
    def recovery_pending(self) -> bool:
        return self.state == "active"

    def as_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["recovery_pending"] = self.recovery_pending
        return d


@dataclasses.dataclass
class WIJRecovery:
    state_found: str  # "empty" / "active"
    restored_blocks: int
    cycle: int
    checkpoint: int
    mismatches: list[str] = dataclasses.field(default_factory=list)
    unclean: bool = False
    # What could not be compared after an unclean stop, and why (report only).
    notes: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class _Header:
    sequence: int
    state: int
    cycle: int
    entries: int
    checkpoint: int
    dir_checksum: int
    running: int


def _dir_bytes(entries: int) -> int:
    n = entries * WIJ_ENTRY_SIZE
    return (n + IO_ALIGN - 1) // IO_ALIGN * IO_ALIGN


def _images_offset(entries: int) -> int:
    return WIJ_DIR_OFFSET + _dir_bytes(entries)


def _entry_checksum(db_id: int, block_no: int, image) -> int:
    h = _xxh3_state(_ID.pack(db_id, block_no))
    h.update(image)
    return h.intdigest()


def _encode_slot(h: _Header) -> bytes:
    buf = bytearray(WIJ_SLOT_SIZE)
    _HDR.pack_into(
        buf,
        0,
        0,
        WIJ_MAGIC,
        WIJ_VERSION,
        h.state,
        h.sequence,
        h.cycle,
        h.entries,
        BLOCK_SIZE,
        h.checkpoint,
        h.dir_checksum,
        h.running,
        0,
    )
    struct.pack_into("<Q", buf, 0, _xxh3(memoryview(buf)[8:]))
    return bytes(buf)


def _decode_slot(path: str, index: int, raw: bytes) -> tuple[_Header | None, str]:
    """(header, "") for a valid slot, else (None, why) naming offset, expected, found."""
    off = index * WIJ_SLOT_SIZE
    if len(raw) < WIJ_SLOT_SIZE:
        return None, (
            f"{path}: header slot {index} at offset {off}: short "
            f"(expected {WIJ_SLOT_SIZE} bytes, found {len(raw)})"
        )
    (stored,) = struct.unpack_from("<Q", raw, 0)
    actual = _xxh3(memoryview(raw)[8:WIJ_SLOT_SIZE])
    if stored != actual:
        return None, (
            f"{path}: header slot {index} at offset {off}: checksum mismatch "
            f"(expected {stored:#018x}, found {actual:#018x})"
        )
    (_c, magic, version, state, seq, cycle, entries, bsize, ckpt, dck, running, _p) = (
        _HDR.unpack_from(raw, 0)
    )
    if magic != WIJ_MAGIC:
        return None, (
            f"{path}: header slot {index} at offset {off}: bad magic "
            f"(expected {WIJ_MAGIC!r}, found {magic!r})"
        )
    if version != WIJ_VERSION or bsize != BLOCK_SIZE or state not in _STATE_NAMES:
        return None, (
            f"{path}: header slot {index} at offset {off}: format "
            f"(expected version {WIJ_VERSION}, block size {BLOCK_SIZE}, state 0/1; found "
            f"version {version}, block size {bsize}, state {state})"
        )
    return _Header(seq, state, cycle, entries, ckpt, dck, running), ""


def _read_header(f, path: str) -> tuple[_Header, list[str]]:
    raw = f.pread(0, 2 * WIJ_SLOT_SIZE)
    best: _Header | None = None
    errors: list[str] = []
    for i in range(2):
        h, why = _decode_slot(path, i, raw[i * WIJ_SLOT_SIZE : (i + 1) * WIJ_SLOT_SIZE])
        if h is None:
            errors.append(why)
            continue
        if h.sequence % 2 != i:
            why = (
                f"{path}: header slot {i} at offset {i * WIJ_SLOT_SIZE}: sequence "
                f"{h.sequence} belongs in slot {h.sequence % 2}"
            )
            errors.append(why)
            continue
        if best is None or h.sequence > best.sequence:
            best = h
    if best is None:
        # Name every slot: offset, expected and found checksum (or what else failed).
        raise WIJCorruptError(
            f"{path}: no valid WIJ header (both slots fail verification; nothing is "
            f"guessed): " + "; ".join(errors),
            path=path,
            offset=0,
            expected=[_slot_stored(raw, i) for i in range(2)],
            found=[_slot_actual(raw, i) for i in range(2)],
        )
    return best, errors


def _slot_stored(raw: bytes, i: int) -> str:
    s = raw[i * WIJ_SLOT_SIZE : i * WIJ_SLOT_SIZE + 8]
    return f"{struct.unpack('<Q', s)[0]:#018x}" if len(s) == 8 else "missing"


def _slot_actual(raw: bytes, i: int) -> str:
    s = raw[i * WIJ_SLOT_SIZE : (i + 1) * WIJ_SLOT_SIZE]
    return f"{_xxh3(s[8:]):#018x}" if len(s) == WIJ_SLOT_SIZE else f"short ({len(s)} bytes)"


def _status_of(path: str, h: _Header, errors: list[str]) -> WIJStatus:
    return WIJStatus(
        path=path,
        state=_STATE_NAMES[h.state],
        sequence=h.sequence,
        cycle=h.cycle,
        entries=h.entries,
        checkpoint=h.checkpoint,
        running=bool(h.running),
        slot_errors=list(errors),
    )


def _chunks(buffers: list, limit: int) -> list[tuple[int, list]]:
    """Split consecutive buffers into runs of at most `limit` bytes: (start, run)."""
    out: list[tuple[int, list]] = []
    pos = 0
    run: list = []
    run_start = 0
    run_len = 0
    for b in buffers:
        n = len(b)
        if run and run_len + n > limit:
            out.append((run_start, run))
            run, run_start, run_len = [], pos, 0
        run.append(b)
        run_len += n
        pos += n
    if run:
        out.append((run_start, run))
    return out


def _write_buffers(f, offset: int, buffers: list) -> None:
    """Write the concatenation of `buffers` at `offset` as sequential pwrites of at
    most WIJ_WRITE_CHUNK_BYTES (one copy into the aligned buffer where the file can)."""
    writev = getattr(f, "pwritev_at", None)
    for start, run in _chunks(buffers, min(WIJ_WRITE_CHUNK_BYTES, IO_CALL_BYTES_MAX)):
        if writev is not None:
            writev(offset + start, run)
        else:
            f.pwrite(offset + start, run[0] if len(run) == 1 else b"".join(run))


def _per_unit(n: int) -> int:
    """Images per staged WIJ write: about a quarter of the cycle (so that copies,
    checksums and writes overlap on WIJ_WRITE_THREADS threads), within
    [WIJ_PIPELINE_MIN_BYTES, WIJ_WRITE_CHUNK_BYTES]."""
    most = max(1, min(WIJ_WRITE_CHUNK_BYTES, IO_CALL_BYTES_MAX) // BLOCK_SIZE)
    least = max(1, WIJ_PIPELINE_MIN_BYTES // BLOCK_SIZE)
    return min(most, max(least, -(-n // 4)))


class RawStore(StoreFile):
    """A database file opened for WIJ recovery only: it never reads the header block
    through the verifier (block 0 may itself be one of the blocks being restored).

    Same surface as BlockStore for `recover()`: db_id, path, file, write_images,
    sync, close. The database id comes from block 0's raw bytes (block header and
    header payload must agree; a database's id never changes, so a torn header write
    still names it)."""

    def __init__(self, fs, path: str, *, direct: str = "optional") -> None:
        self.fs = fs
        self.path = path
        self.file = fs.open(path, create=False, direct=direct)
        raw = self.file.pread(0, IO_ALIGN)
        if len(raw) < BLOCK_HEADER_SIZE + 20:
            self.file.close()
            raise BlockCorruptError(
                f"{path}: header block is short ({len(raw)} bytes); no database id",
                path=path,
                block=0,
                expected=BLOCK_SIZE,
                found=len(raw),
            )
        (a,) = struct.unpack_from("<I", raw, 12)
        (b,) = struct.unpack_from("<I", raw, BLOCK_HEADER_SIZE + 16)
        if a != b:
            self.file.close()
            raise BlockCorruptError(
                f"{path}: header block names database id {a} and {b}; cannot tell which",
                path=path,
                block=0,
                expected=a,
                found=b,
            )
        self.db_id = a


class WriteImageJournal:
    """The instance's WIJ file. See the module doc for the protocol and promises.

    Not thread-safe by itself: the write daemon is its only caller."""

    def __init__(
        self,
        fs,
        path: str,
        *,
        direct: str = "optional",
        blocks_max: int = WIJ_BLOCKS_MAX,
    ) -> None:
        if not isinstance(blocks_max, int) or not 1 <= blocks_max <= WIJ_BLOCKS_MAX:
            raise ValueError(
                f"blocks_max must be an int in 1..{WIJ_BLOCKS_MAX}, got {blocks_max!r}"
            )
        self.fs = fs
        self.path = os.fspath(path)
        self.blocks_max = blocks_max
        self.failure: str | None = None
        self._closed = False
        if not fs.exists(self.path):
            self._create(direct)
        self.file = fs.open(self.path, create=False, direct=direct)
        try:
            self._hdr, self._slot_errors = _read_header(self.file, self.path)
        except BaseException:
            self.file.close()
            raise

    def _create(self, direct: str) -> None:
        # Write both slots in a scratch file, make it durable, then rename it into
        # place (FS.rename fsyncs the directory): the WIJ name never names a file
        # without two valid header slots.
        tmp = self.path + ".new"
        f = self.fs.open(tmp, create=True, direct=direct)
        try:
            f.truncate(0)
            h0 = _Header(0, WIJ_EMPTY, 0, 0, 0, _xxh3(b""), 0)
            h1 = dataclasses.replace(h0, sequence=1)
            f.pwrite(0, _encode_slot(h0) + _encode_slot(h1))
            try:
                f.fdatasync()
            except OSError as e:
                raise DurabilityError(f"{tmp}: fdatasync failed while creating the WIJ: {e}") from e
        finally:
            f.close()
        self.fs.rename(tmp, self.path)

    # --- state -----------------------------------------------------------------------

    def _check(self) -> None:
        if self.failure is not None:
            raise DurabilityError(
                f"{self.path}: the write image journal refuses further use: {self.failure}"
            )
        if self._closed:
            raise ValueError(f"{self.path}: the write image journal is closed")

    def _fail(self, why: str) -> None:
        if self.failure is None:
            self.failure = why

    def _sync(self, sync, what: str) -> None:
        """Call `sync` (a File's fdatasync or a store's sync); a failure is final."""
        try:
            sync()
        except OSError as e:
            self._fail(f"fdatasync of {what} failed: {e}")
            raise DurabilityError(
                f"{what}: fdatasync failed ({e}); the write image journal stops: nothing is retried"
            ) from e

    def _write_header(self, **changes) -> None:
        """Write the next header (sequence + 1, into slot sequence % 2); not synced."""
        h = dataclasses.replace(self._hdr, sequence=self._hdr.sequence + 1, **changes)
        slot = h.sequence % 2
        try:
            self.file.pwrite(slot * WIJ_SLOT_SIZE, _encode_slot(h))
        except OSError as e:
            self._fail(f"header write failed: {e}")
            raise
        self._hdr = h

    def status(self) -> WIJStatus:
        self._check()
        return _status_of(self.path, self._hdr, self._slot_errors)

    # --- the cycle -------------------------------------------------------------------

    def cycle(self, stores: dict, images: list[tuple[int, int, bytes]], checkpoint: int) -> None:
        """Write `images` ((db_id, block_no, sealed image) triples) into the databases
        in `stores` (db_id -> store) as one crash-atomic set consistent with journal
        position `checkpoint`."""
        self._check()
        if self._hdr.state != WIJ_EMPTY:
            raise WIJRecoveryPendingError(
                f"{self.path}: cycle {self._hdr.cycle} is still active; recover() first"
            )
        if len(images) > self.blocks_max:
            raise ValueError(
                f"{self.path}: a cycle of {len(images)} images exceeds the WIJ limit of "
                f"{self.blocks_max}; split the dirty set"
            )
        # Validate everything before the first write: sorted directory order, no
        # duplicates, a store for every database, and 8 KiB images that name their own
        # block and database (a misdirected image is a bug upstream). Their checksums
        # are verified where they are read back: recovery and every database read.
        ordered = sorted(images)  # directory order: (db_id, block_no)
        # One pass in C; on any failure the loop below finds and words the error.
        per_db = _core._wj_group_images(ordered)
        if per_db is None:
            per_db = self._group_slow(stores, ordered)
        for db_id in per_db:
            if db_id not in stores:
                raise ValueError(f"{self.path}: no store for database id {db_id}")
        n = len(ordered)

        # 1. directory + images in large sequential writes, then fdatasync. The
        #    header still says EMPTY, so a crash anywhere here leaves every block old.
        entries = self._write_images(ordered)
        dir_ck = _xxh3(memoryview(entries)[: n * WIJ_ENTRY_SIZE])
        crashpoints.hit("wij_after_images_write")
        self._sync(self.file.fdatasync, self.path)
        crashpoints.hit("wij_after_images_fsync")

        # 2. ACTIVE: from the moment this is durable, recovery makes every block new.
        self._write_header(
            state=WIJ_ACTIVE,
            cycle=self._hdr.cycle + 1,
            entries=n,
            checkpoint=checkpoint,
            dir_checksum=dir_ck,
        )
        crashpoints.hit("wij_after_active_write")
        self._sync(self.file.fdatasync, self.path)
        crashpoints.hit("wij_after_active_fsync")

        # 3. the database files, then each fsynced; 4. EMPTY: the set is in the
        # databases and the WIJ is free for the next cycle.
        self._copy_out(
            stores,
            per_db,
            "wij_after_db_write",
            "wij_after_db_fsync",
            "wij_after_empty_write",
            "database write failed",
        )

    def _group_slow(self, stores: dict, ordered: list) -> dict[int, list[tuple[int, bytes]]]:
        """_wj_group_images' checks in Python, raising ValueError naming the first
        triple that fails (the fast pass only says that one does)."""
        per_db: dict[int, list[tuple[int, bytes]]] = {}
        prev = None
        unpack_id = _ID.unpack_from
        for db_id, block_no, image in ordered:
            key = (db_id, block_no)
            if key == prev:
                raise ValueError(f"{self.path}: block {block_no} of database {db_id} twice")
            prev = key
            imgs = per_db.get(db_id)
            if imgs is None:
                if db_id not in stores:
                    raise ValueError(f"{self.path}: no store for database id {db_id}")
                imgs = per_db[db_id] = []
            if len(image) != BLOCK_SIZE or unpack_id(image, 8) != (block_no, db_id):
                raise ValueError(
                    f"{self.path}: image for block {block_no} of database {db_id} is not a "
                    f"sealed image of that block ({len(image)} bytes, names "
                    f"{unpack_id(image, 8) if len(image) >= 16 else None})"
                )
            imgs.append((block_no, image))
        return per_db

    def _copy_out(
        self,
        stores: dict,
        per_db: dict,
        after_write: str,
        after_fsync: str,
        after_empty: str,
        what: str,
    ) -> None:
        """The second phase, shared by a cycle and by recovery: write the images into
        their databases, fdatasync each, then mark the WIJ empty and fdatasync it.
        The crash point names say which of the two is passing."""
        try:
            for db_id, imgs in per_db.items():
                stores[db_id].write_images(imgs)
                crashpoints.hit(after_write)
        except OSError as e:
            self._fail(f"{what}: {e}")
            raise
        for db_id in per_db:
            store = stores[db_id]
            self._sync(store.sync, store.path)
            crashpoints.hit(after_fsync)
        self._write_header(state=WIJ_EMPTY)
        crashpoints.hit(after_empty)
        self._sync(self.file.fdatasync, self.path)

    def _write_images(self, ordered: list[tuple[int, int, bytes]]) -> bytearray:
        """Write the directory and the images of `ordered`; return the directory.

        One cycle's WIJ part is one sequential range: directory at WIJ_DIR_OFFSET,
        images right after it. With more than one chunk of images, a writer thread
        writes chunk k (the file releases the GIL during the write) while this thread
        computes the entry checksums of chunk k+1; the directory goes last. A single
        writer keeps the writes in a fixed order (the simulated disk stays
        deterministic)."""
        n = len(ordered)
        entries = bytearray(_dir_bytes(n))
        if isinstance(self.file, _core.DirectFile):
            # Real files: one pass in C (copy into reused aligned buffers, entry
            # checksum of the copy, pwrite) on WIJ_WRITE_THREADS writer threads; the
            # directory goes last, as below.
            _core._wj_write_images(
                self.file, _images_offset(n), ordered, entries, _per_unit(n), WIJ_WRITE_THREADS
            )
            self.file.pwrite(WIJ_DIR_OFFSET, entries)
            return entries
        pack = _ENTRY.pack_into
        ck = _entry_checksum
        # Chunks of at most WIJ_WRITE_CHUNK_BYTES; a smaller cycle is still cut into
        # about four (of at least WIJ_PIPELINE_MIN_BYTES) so that checksums overlap I/O.
        most = max(1, min(WIJ_WRITE_CHUNK_BYTES, IO_CALL_BYTES_MAX) // BLOCK_SIZE)
        least = max(1, WIJ_PIPELINE_MIN_BYTES // BLOCK_SIZE)
        per_chunk = min(most, max(least, -(-n // 4)))
        if n <= per_chunk:
            for i, (db_id, block_no, image) in enumerate(ordered):
                pack(entries, i * WIJ_ENTRY_SIZE, db_id, block_no, ck(db_id, block_no, image))
            _write_buffers(self.file, WIJ_DIR_OFFSET, [entries] + [t[2] for t in ordered])
            return entries
        base = _images_offset(n)
        futures = []
        with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="irisrep-wij") as ex:
            for first in range(0, n, per_chunk):
                part = ordered[first : first + per_chunk]
                for i, (db_id, block_no, image) in enumerate(part, first):
                    pack(entries, i * WIJ_ENTRY_SIZE, db_id, block_no, ck(db_id, block_no, image))
                futures.append(
                    ex.submit(
                        _write_buffers, self.file, base + first * BLOCK_SIZE, [t[2] for t in part]
                    )
                )
                if any(f.done() and f.exception() is not None for f in futures):
                    break  # a write failed: stop queueing (the header is still EMPTY)
            else:
                futures.append(ex.submit(_write_buffers, self.file, WIJ_DIR_OFFSET, [entries]))
        for f in futures:
            f.result()  # the first failure, as the OSError it was
        return entries

    # --- recovery --------------------------------------------------------------------

    def _read_directory(self, h: _Header) -> list[tuple[int, int, int]] | None:
        """The directory's entries if it matches the header's checksum, else None."""
        raw = self.file.pread(WIJ_DIR_OFFSET, _dir_bytes(h.entries))
        body = raw[: h.entries * WIJ_ENTRY_SIZE]
        if len(body) != h.entries * WIJ_ENTRY_SIZE or _xxh3(body) != h.dir_checksum:
            return None
        return [_ENTRY.unpack_from(body, i * WIJ_ENTRY_SIZE) for i in range(h.entries)]

    def _dir_error(self, h: _Header) -> WIJCorruptError:
        raw = self.file.pread(WIJ_DIR_OFFSET, _dir_bytes(h.entries))
        body = raw[: h.entries * WIJ_ENTRY_SIZE]
        found = (
            f"{_xxh3(body):#018x}"
            if len(body) == h.entries * WIJ_ENTRY_SIZE
            else f"short ({len(body)} of {h.entries * WIJ_ENTRY_SIZE} bytes)"
        )
        return WIJCorruptError(
            f"{self.path}: directory of active cycle {h.cycle} ({h.entries} entries) at "
            f"offset {WIJ_DIR_OFFSET}: checksum mismatch (expected {h.dir_checksum:#018x}, "
            f"found {found}); nothing was written to any database",
            path=self.path,
            offset=WIJ_DIR_OFFSET,
            expected=f"{h.dir_checksum:#018x}",
            found=found,
        )

    def _read_images(self, h: _Header):
        """Yield (index, image) for every image of the directory, in large reads."""
        base = _images_offset(h.entries)
        per_read = max(1, min(WIJ_WRITE_CHUNK_BYTES, IO_CALL_BYTES_MAX) // BLOCK_SIZE)
        for first in range(0, h.entries, per_read):
            count = min(per_read, h.entries - first)
            raw = self.file.pread(base + first * BLOCK_SIZE, count * BLOCK_SIZE)
            view = memoryview(raw)
            for k in range(count):
                yield first + k, bytes(view[k * BLOCK_SIZE : (k + 1) * BLOCK_SIZE])

    def recover(self, stores: dict) -> WIJRecovery:
        """Finish an interrupted cycle (state ACTIVE) or, after an unclean stop with
        state EMPTY, compare the last cycle's images with the databases (report only).
        See the module doc."""
        self._check()
        h = self._hdr
        if h.state == WIJ_ACTIVE:
            return self._restore(stores, h)
        out = WIJRecovery("empty", 0, h.cycle, h.checkpoint, [], bool(h.running), [])
        if h.running and h.entries:
            self._compare(stores, h, out)
        return out

    def _restore(self, stores: dict, h: _Header) -> WIJRecovery:
        entries = self._read_directory(h)
        if entries is None:
            raise self._dir_error(h)
        base = _images_offset(h.entries)
        per_db: dict[int, list[tuple[int, bytes]]] = {}
        # Verify every entry before writing anything.
        for i, image in self._read_images(h):
            db_id, block_no, want = entries[i]
            off = base + i * BLOCK_SIZE
            where = f"{self.path}: entry {i} (block {block_no} of database {db_id}, offset {off})"
            ctx = dict(path=self.path, offset=off, entry=i, block=block_no, db_id=db_id)
            if len(image) != BLOCK_SIZE:
                raise WIJCorruptError(
                    f"{where}: image is short (expected {BLOCK_SIZE} bytes, found "
                    f"{len(image)}); nothing was written to any database",
                    expected=BLOCK_SIZE,
                    found=len(image),
                    **ctx,
                )
            got = _entry_checksum(db_id, block_no, image)
            if got != want:
                raise WIJCorruptError(
                    f"{where}: entry checksum mismatch (expected {want:#018x}, found "
                    f"{got:#018x}); nothing was written to any database",
                    expected=f"{want:#018x}",
                    found=f"{got:#018x}",
                    **ctx,
                )
            try:
                _core.verify_image(image, block_no, db_id, self.path)
            except BlockCorruptError as e:
                raise WIJCorruptError(
                    f"{where}: image fails block verification ({e}); nothing was written "
                    f"to any database",
                    expected=e.expected,
                    found=e.found,
                    **ctx,
                ) from e
            if db_id not in stores:
                raise WIJCorruptError(
                    f"{where}: no database with id {db_id} is open for recovery (open: "
                    f"{sorted(stores)}); nothing was written to any database",
                    expected=sorted(stores),
                    found=db_id,
                    **ctx,
                )
            per_db.setdefault(db_id, []).append((block_no, image))
        for imgs in per_db.values():
            imgs.sort(key=lambda t: t[0])

        # Every entry verified: copy them in, fsync, then mark EMPTY.
        self._copy_out(
            stores,
            per_db,
            "wij_recovery_after_db_write",
            "wij_recovery_after_db_fsync",
            "wij_recovery_after_empty_write",
            "database write during recovery failed",
        )
        return WIJRecovery("active", h.entries, h.cycle, h.checkpoint, [], bool(h.running), [])

    def _compare(self, stores: dict, h: _Header, out: WIJRecovery) -> None:
        entries = self._read_directory(h)
        if entries is None:
            out.notes.append(
                f"{self.path}: the directory of cycle {h.cycle} no longer matches its "
                f"checksum (a later cycle began writing it); nothing to compare"
            )
            return
        base = _images_offset(h.entries)
        for i, image in self._read_images(h):
            db_id, block_no, want = entries[i]
            if len(image) != BLOCK_SIZE or _entry_checksum(db_id, block_no, image) != want:
                out.notes.append(
                    f"{self.path}: entry {i} (db {db_id} block {block_no}) at offset "
                    f"{base + i * BLOCK_SIZE} was overwritten by a later unfinished cycle; "
                    f"not compared"
                )
                continue
            store = stores.get(db_id)
            if store is None:
                out.notes.append(
                    f"{self.path}: entry {i} names database id {db_id}, which is not open; "
                    f"block {block_no} not compared"
                )
                continue
            on_disk = store.file.pread(block_no * BLOCK_SIZE, BLOCK_SIZE)
            if on_disk == image:
                continue
            out.mismatches.append(_describe_mismatch(store.path, db_id, block_no, image, on_disk))

    # --- running flag and close ------------------------------------------------------

    def mark_running(self) -> None:
        """Record that an instance has the WIJ open (cleared by mark_clean)."""
        self._check()
        self._write_header(running=1)
        self._sync(self.file.fdatasync, self.path)

    def mark_clean(self) -> None:
        """Record a clean stop. Refused while recovery is pending."""
        self._check()
        if self._hdr.state != WIJ_EMPTY:
            raise WIJRecoveryPendingError(
                f"{self.path}: cycle {self._hdr.cycle} is still active; cannot mark clean"
            )
        self._write_header(running=0)
        self._sync(self.file.fdatasync, self.path)

    def close(self) -> None:
        """Close the file (idempotent, allowed after a failure). Does not mark clean."""
        self._closed = True
        self.file.close()

    def __enter__(self) -> WriteImageJournal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        h = self._hdr
        return (
            f"<WriteImageJournal {self.path!r} {_STATE_NAMES[h.state]} cycle={h.cycle} "
            f"seq={h.sequence}{' FAILED' if self.failure else ''}>"
        )


def _describe_mismatch(path: str, db_id: int, block_no: int, image: bytes, disk: bytes) -> str:
    head = f"db {db_id} block {block_no} ({path}, offset {block_no * BLOCK_SIZE}): "
    if len(disk) != BLOCK_SIZE:
        return (
            head + f"database block is short ({len(disk)} of {BLOCK_SIZE} bytes); WIJ image differs"
        )
    first = next(i for i in range(BLOCK_SIZE) if disk[i] != image[i])
    part = "block header" if first < BLOCK_HEADER_SIZE else "payload"
    try:
        _core.verify_image(disk, block_no, db_id, path)
        disk_state = "a valid image"
    except BlockCorruptError as e:
        disk_state = f"an invalid image ({e})"
    (wck,) = struct.unpack_from("<Q", image, 0)
    (dck,) = struct.unpack_from("<Q", disk, 0)
    return (
        head + f"differs from the WIJ image of the last cycle: first difference at byte "
        f"{first} ({part}); database holds {disk_state} with checksum {dck:#018x}, WIJ "
        f"holds {wck:#018x}"
    )


def wij_status(path: str, fs=None) -> WIJStatus:
    """Read-only status of the WIJ at `path` (for `irisrep wij status PATH`).

    Raises FileNotFoundError if there is none, WIJCorruptError if both slots fail."""
    from .fileio import default_fs

    fs = fs if fs is not None else default_fs()
    path = os.fspath(path)
    f = fs.open(path, create=False, direct="optional")
    try:
        h, errors = _read_header(f, path)
    finally:
        f.close()
    return _status_of(path, h, errors)
