"""Online backups of a running database: full and incremental, in checksummed files.

Owns the backup file format (`include/irisrep_backup.h`, docs/backup.md), writing a
backup of an open `Database` (`create_backup`), listing a backup directory and
verifying a file. Restoring is `irisrep.restore`.

Promises:
- Consistency: the blocks are copied inside `Database.backup_window()`, which holds
  every write-daemon cycle off; only a cycle writes the database file, so the copy
  is the exact image of one checkpoint (blocks = the journal before `checkpoint`),
  never a fuzzy copy of a tree mid-split. Writes and commits go on meanwhile.
- Self-contained: the file also holds the journal frames from min(checkpoint,
  transaction floor) to the end of the stream when the copy finished, so the
  backup alone restores to its end, transactions open in it rolled back.
- Incremental by content: every backup records a manifest, one xxh3 per block of
  the whole database; an incremental stores exactly the blocks whose checksum
  differs from its parent's manifest (or that are new). No change map is kept in
  the database, so there is none to lose in a crash; the price is that an
  incremental reads the whole file (but writes only what changed).
- Crash-safe: a backup is written as `NAME.part`, fsynced, renamed, the directory
  fsynced; a crash leaves at most a `.part` that nothing treats as a backup.
- Every block read from the database is verified (checksum, number, id) before it
  goes in; every entry of a backup file is verified on every read, and a fault is
  reported with the block and the byte offset of its entry (BackupCorruptError).
- Streamed: memory stays bounded by a batch of blocks and the manifest (8 bytes
  per block), whatever the database's size.
- Recorded: once a backup file is complete it is added to the instance's
  `backups.json` (purge.record_backup), where the journal purge learns where the
  last good backup rolls forward from; from the window's opening until then the
  database itself says a backup is being taken (`Database.backups_in_progress`).
- A running mirror member is backed up in its own process (the client protocol's
  `backup_create`, `backup_member`); `irisrep backup create --dir D` alone picks
  the Active backup member, as IRIS prefers, else the primary.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import os
import secrets
import struct
import time
from collections.abc import Callable, Iterator

import numpy as np
import xxhash
import zstandard

from . import _core
from .constants import (
    BACKUP_BATCH_BLOCKS,
    BACKUP_BLOCK_ENTRY_BYTES,
    BACKUP_CHAIN_MAX,
    BACKUP_FILE_SUFFIX,
    BACKUP_HEADER_BYTES,
    BACKUP_JOURNAL_CHUNK_BYTES,
    BACKUP_JOURNAL_ENTRY_BYTES,
    BACKUP_KIND_FULL,
    BACKUP_KIND_INCREMENTAL,
    BACKUP_MAGIC,
    BACKUP_NAME_BYTES,
    BACKUP_PARTIAL_SUFFIX,
    BACKUP_READ_BYTES,
    BACKUP_SOURCE_BYTES,
    BACKUP_VERSION,
    BACKUP_ZSTD_LEVEL,
    BLOCK_SIZE,
    JOURNAL_FRAME_ALIGN,
    JOURNAL_FRAME_BYTES_MAX,
    JOURNAL_FRAME_HEADER_BYTES,
)
from .errors import BackupCorruptError, BackupError, CorruptError
from .purge import record_backup

__all__ = [
    "BackupInfo",
    "BackupReader",
    "create_backup",
    "backup_instance",
    "list_backups",
    "verify_backup",
    "read_header",
    "member_data_dir",
    "choose_member",
    "backup_member",
]

KINDS = {BACKUP_KIND_FULL: "full", BACKUP_KIND_INCREMENTAL: "incremental"}
F_MIRROR_COPY = 1  # IR_BACKUP_F_MIRROR_COPY
F_MARKER = 2  # IR_BACKUP_F_MARKER

# Header fields up to IR_BACKUP_HDR_END, in the order of include/irisrep_backup.h.
_HEADER = struct.Struct(
    f"<8sIIIIII QQQ QQQQQ QQ II QQQQ Q II {BACKUP_NAME_BYTES}s {BACKUP_SOURCE_BYTES}s"
)
assert _HEADER.size == 1320
_HEADER_CK_OFF = BACKUP_HEADER_BYTES - 8
_BLOCK_ENTRY = struct.Struct("<IIQ")
_JOURNAL_ENTRY = struct.Struct("<QIIQ")
assert _BLOCK_ENTRY.size == BACKUP_BLOCK_ENTRY_BYTES
assert _JOURNAL_ENTRY.size == BACKUP_JOURNAL_ENTRY_BYTES
_ZERO_IMAGE = bytes(BLOCK_SIZE)
# A journal chunk holds frames up to BACKUP_JOURNAL_CHUNK_BYTES, or one larger frame.
_JOURNAL_CHUNK_MAX = max(
    BACKUP_JOURNAL_CHUNK_BYTES,
    JOURNAL_FRAME_HEADER_BYTES + JOURNAL_FRAME_BYTES_MAX + JOURNAL_FRAME_ALIGN,
)
_xxh3 = xxhash.xxh3_64_intdigest

Progress = Callable[[int], None] | None  # called with the bytes just processed


def block_checksum(block_no: int, image) -> int:
    """The checksum of a block entry and of a manifest value: the image bound to its
    number (a block written to the wrong place does not verify)."""
    return _xxh3(image, seed=block_no)


@dataclasses.dataclass
class BackupInfo:
    """A backup file's header (what `irisrep backup list` shows)."""

    path: str
    kind: str  # "full" or "incremental"
    db_id: int
    block_count: int
    seq: int
    backup_id: int
    parent_id: int
    chain_id: int
    checkpoint: int
    txn_floor: int
    journal_start: int
    journal_end: int
    open_position: int
    time_start: int
    time_end: int
    blocks_stored: int
    journal_chunks: int
    journal_offset: int
    manifest_offset: int
    manifest_checksum: int
    file_bytes: int
    epoch: int
    flags: int
    parent_name: str
    source: str
    version: int = BACKUP_VERSION
    block_size: int = BLOCK_SIZE

    @property
    def name(self) -> str:
        return os.path.basename(self.path)

    def pack(self) -> bytes:
        kind = next(k for k, v in KINDS.items() if v == self.kind)
        body = _HEADER.pack(
            BACKUP_MAGIC,
            self.version,
            kind,
            self.block_size,
            self.db_id,
            self.block_count,
            self.seq,
            self.backup_id,
            self.parent_id,
            self.chain_id,
            self.checkpoint,
            self.txn_floor,
            self.journal_start,
            self.journal_end,
            self.open_position,
            self.time_start,
            self.time_end,
            self.blocks_stored,
            self.journal_chunks,
            self.journal_offset,
            self.manifest_offset,
            self.manifest_checksum,
            self.file_bytes,
            self.epoch,
            self.flags,
            0,
            _fixed(self.parent_name, BACKUP_NAME_BYTES, "parent name"),
            _fixed(self.source, BACKUP_SOURCE_BYTES, "source path"),
        )
        buf = bytearray(BACKUP_HEADER_BYTES)
        buf[: len(body)] = body
        struct.pack_into("<Q", buf, _HEADER_CK_OFF, _xxh3(bytes(buf[:_HEADER_CK_OFF])))
        return bytes(buf)

    def as_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["name"] = self.name
        d["backup_id"] = f"{self.backup_id:016x}"
        d["parent_id"] = f"{self.parent_id:016x}"
        d["chain_id"] = f"{self.chain_id:016x}"
        d["db_id"] = f"{self.db_id:08x}"
        return d

    @classmethod
    def from_dict(cls, d: dict) -> BackupInfo:
        """The inverse of as_dict (a header a member sent back over the client
        protocol); BackupError if it is not one."""
        try:
            kw = {f.name: d[f.name] for f in dataclasses.fields(cls)}
            for name in ("backup_id", "parent_id", "chain_id", "db_id"):
                kw[name] = int(kw[name], 16)
            return cls(**kw)
        except (KeyError, TypeError, ValueError) as e:
            raise BackupError(f"not a backup header: {e}") from None


def _fixed(text: str, size: int, what: str) -> bytes:
    raw = text.encode("utf-8")
    if len(raw) > size:
        raise BackupError(f"{what} {text!r} is longer than {size} bytes (UTF-8)")
    return raw


def read_header(path: str | os.PathLike) -> BackupInfo:
    """Parse and verify a backup file's header (BackupCorruptError names what fails)."""
    path = os.fspath(path)
    with open(path, "rb") as f:
        raw = f.read(BACKUP_HEADER_BYTES)
        size = os.fstat(f.fileno()).st_size
    return _parse_header(path, raw, size)


def _parse_header(path: str, raw: bytes, size: int) -> BackupInfo:
    def bad(msg: str, offset: int, expected=None, found=None) -> BackupCorruptError:
        return BackupCorruptError(
            f"{path}: {msg}", path=path, offset=offset, expected=expected, found=found
        )

    if len(raw) < BACKUP_HEADER_BYTES:
        raise bad(f"not a backup file: {len(raw)} bytes, a header is {BACKUP_HEADER_BYTES}", 0)
    if raw[:8] != BACKUP_MAGIC:
        raise bad(f"not an irisrep backup file (magic {raw[:8]!r})", 0, BACKUP_MAGIC, raw[:8])
    (stored,) = struct.unpack_from("<Q", raw, _HEADER_CK_OFF)
    actual = _xxh3(raw[:_HEADER_CK_OFF])
    if stored != actual:
        raise bad(
            f"header checksum mismatch at byte offset {_HEADER_CK_OFF} (expected "
            f"{stored:#018x}, found {actual:#018x}): the header is damaged",
            _HEADER_CK_OFF,
            f"{stored:#018x}",
            f"{actual:#018x}",
        )
    f = _HEADER.unpack_from(raw, 0)
    (_magic, version, kind, bsize, db_id, count, seq) = f[:7]
    if version != BACKUP_VERSION or bsize != BLOCK_SIZE or kind not in KINDS:
        raise bad(
            f"format version {version}, kind {kind}, block size {bsize}: this build reads "
            f"version {BACKUP_VERSION} with {BLOCK_SIZE}-byte blocks",
            8,
            (BACKUP_VERSION, BLOCK_SIZE),
            (version, bsize),
        )
    info = BackupInfo(
        path=path,
        kind=KINDS[kind],
        db_id=db_id,
        block_count=count,
        seq=seq,
        backup_id=f[7],
        parent_id=f[8],
        chain_id=f[9],
        checkpoint=f[10],
        txn_floor=f[11],
        journal_start=f[12],
        journal_end=f[13],
        open_position=f[14],
        time_start=f[15],
        time_end=f[16],
        blocks_stored=f[17],
        journal_chunks=f[18],
        journal_offset=f[19],
        manifest_offset=f[20],
        manifest_checksum=f[21],
        file_bytes=f[22],
        epoch=f[23],
        flags=f[24],
        parent_name=f[26].rstrip(b"\0").decode("utf-8", "replace"),
        source=f[27].rstrip(b"\0").decode("utf-8", "replace"),
        version=version,
        block_size=bsize,
    )
    # The sections must lie where the header says, in order, inside the file.
    ok = (
        BACKUP_HEADER_BYTES <= info.journal_offset <= info.manifest_offset
        and info.manifest_offset + 8 * count == info.file_bytes
        and info.journal_start <= info.checkpoint <= info.journal_end
        and (info.kind == "full") == (seq == 0 and info.parent_id == 0)
        and (info.kind != "full" or info.blocks_stored == count)
        and info.blocks_stored <= count
    )
    if not ok:
        raise bad("header fields are inconsistent (sections, positions or kind)", 0)
    if size != info.file_bytes:
        raise bad(
            f"file is {size} bytes, its header says {info.file_bytes} (truncated or appended to)",
            min(size, info.file_bytes),
            info.file_bytes,
            size,
        )
    return info


# --- reading a backup file ---------------------------------------------------------------


class BackupReader:
    """Sequential, verified reads of one backup file's sections."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = os.fspath(path)
        self.info = read_header(self.path)
        self._dctx = zstandard.ZstdDecompressor()

    def _corrupt(self, msg: str, offset: int, block: int = -1, **kw) -> BackupCorruptError:
        return BackupCorruptError(
            f"{self.path}: {msg}", path=self.path, offset=offset, block=block, **kw
        )

    def blocks(self, progress: Progress = None) -> Iterator[tuple[int, bytes]]:
        """(block_no, image) of every block entry, in order, each verified: entry bounds,
        decompression to exactly one block, the checksum bound to its number."""
        for block_no, image, _checksum in self.entries(progress):
            yield block_no, image

    def entries(self, progress: Progress = None) -> Iterator[tuple[int, bytes, int]]:
        """blocks(), with each entry's (verified) checksum."""
        info = self.info
        off = BACKUP_HEADER_BYTES
        prev = -1
        with open(self.path, "rb", buffering=1 << 20) as f:
            f.seek(off)
            for i in range(info.blocks_stored):
                head = f.read(BACKUP_BLOCK_ENTRY_BYTES)
                if len(head) < BACKUP_BLOCK_ENTRY_BYTES:
                    raise self._corrupt(f"block entry {i} at byte offset {off} is cut short", off)
                block_no, stored_len, checksum = _BLOCK_ENTRY.unpack(head)
                where = f"block {block_no} (entry {i} at byte offset {off})"
                if (
                    not 0 < stored_len <= BLOCK_SIZE
                    or block_no <= prev
                    or block_no >= info.block_count
                    or off + BACKUP_BLOCK_ENTRY_BYTES + stored_len > info.journal_offset
                ):
                    raise self._corrupt(
                        f"{where}: impossible entry (stored length {stored_len}, previous "
                        f"block {prev}, {info.block_count} blocks)",
                        off,
                        block_no,
                    )
                data = f.read(stored_len)
                image = self._image(data, where, off, block_no)
                actual = block_checksum(block_no, image)
                if actual != checksum:
                    raise self._corrupt(
                        f"{where}: checksum mismatch (expected {checksum:#018x}, found "
                        f"{actual:#018x})",
                        off,
                        block_no,
                        expected=f"{checksum:#018x}",
                        found=f"{actual:#018x}",
                    )
                yield block_no, image, checksum
                prev = block_no
                n = BACKUP_BLOCK_ENTRY_BYTES + stored_len
                off += n
                if progress is not None:
                    progress(n)
        if off != info.journal_offset:
            raise self._corrupt(
                f"block entries end at byte offset {off}, the journal section starts at "
                f"{info.journal_offset}",
                off,
            )

    def _image(self, data: bytes, where: str, off: int, block_no: int) -> bytes:
        if len(data) == BLOCK_SIZE:
            return data
        try:
            image = self._dctx.decompress(data, max_output_size=BLOCK_SIZE)
        except zstandard.ZstdError as exc:
            raise self._corrupt(f"{where}: not a zstd frame ({exc})", off, block_no) from None
        if len(image) != BLOCK_SIZE:
            raise self._corrupt(
                f"{where}: decompresses to {len(image)} bytes, not one block", off, block_no
            )
        return image

    def journal(self, progress: Progress = None) -> Iterator[tuple[int, bytes]]:
        """(position, raw frames) of every journal chunk, verified and contiguous from
        journal_start to journal_end."""
        info = self.info
        off = info.journal_offset
        pos = info.journal_start
        with open(self.path, "rb", buffering=1 << 20) as f:
            f.seek(off)
            for i in range(info.journal_chunks):
                head = f.read(BACKUP_JOURNAL_ENTRY_BYTES)
                if len(head) < BACKUP_JOURNAL_ENTRY_BYTES:
                    raise self._corrupt(f"journal entry {i} at byte offset {off} is cut short", off)
                position, raw_len, stored_len, checksum = _JOURNAL_ENTRY.unpack(head)
                where = f"journal chunk {i} at byte offset {off} (position {position})"
                if (
                    position != pos
                    or not 0 < stored_len <= raw_len <= _JOURNAL_CHUNK_MAX
                    or position + raw_len > info.journal_end
                    or off + BACKUP_JOURNAL_ENTRY_BYTES + stored_len > info.manifest_offset
                ):
                    raise self._corrupt(
                        f"{where}: impossible entry (expected position {pos}, raw {raw_len}, "
                        f"stored {stored_len})",
                        off,
                    )
                data = f.read(stored_len)
                if stored_len < raw_len:
                    try:
                        data = self._dctx.decompress(data, max_output_size=raw_len)
                    except zstandard.ZstdError as exc:
                        raise self._corrupt(f"{where}: not a zstd frame ({exc})", off) from None
                actual = _xxh3(data, seed=position) if len(data) == raw_len else None
                if actual != checksum:
                    raise self._corrupt(
                        f"{where}: checksum mismatch (expected {checksum:#018x})",
                        off,
                        expected=f"{checksum:#018x}",
                        found=actual,
                    )
                yield position, data
                pos += raw_len
                n = BACKUP_JOURNAL_ENTRY_BYTES + stored_len
                off += n
                if progress is not None:
                    progress(n)
        if pos != info.journal_end or off != info.manifest_offset:
            raise self._corrupt(
                f"journal section ends at position {pos} (byte offset {off}), the header "
                f"says position {info.journal_end} (byte offset {info.manifest_offset})",
                off,
            )

    def manifest(self) -> np.ndarray:
        """The per-block checksums of the database at this backup (u64 array)."""
        info = self.info
        with open(self.path, "rb") as f:
            f.seek(info.manifest_offset)
            raw = f.read(8 * info.block_count)
        actual = _xxh3(raw)
        if len(raw) != 8 * info.block_count or actual != info.manifest_checksum:
            raise self._corrupt(
                f"manifest at byte offset {info.manifest_offset}: checksum mismatch (expected "
                f"{info.manifest_checksum:#018x}, found {actual:#018x})",
                info.manifest_offset,
            )
        return np.frombuffer(raw, dtype="<u8")


def verify_backup(path: str | os.PathLike, progress: Progress = None) -> dict:
    """Read and check every byte of a backup file: header, every block entry, every
    journal chunk (and every frame in it), the manifest. Returns a summary; a fault
    raises BackupCorruptError naming the block (or section) and its byte offset."""
    from .journal import _resolve_codec

    reader = BackupReader(path)
    info = reader.info
    if progress is not None:
        progress(BACKUP_HEADER_BYTES)
    blocks = 0
    for _block_no, _image in reader.blocks(progress):
        blocks += 1
    codec = _resolve_codec()
    frames = records = 0
    for position, data in reader.journal(progress):
        off = 0
        while off < len(data):
            try:
                header, raw, nxt = codec.parse_frame(data, off, position + off)
                records += len(codec.decode_records(raw, header.count))
            except (CorruptError, ValueError) as exc:  # FrameError is a JournalCorruptError
                raise reader._corrupt(
                    f"journal frame at position {position + off}: {exc}", info.journal_offset
                ) from None
            frames += 1
            off = nxt
    reader.manifest()
    if progress is not None:
        progress(8 * info.block_count)
    return {
        "path": reader.path,
        "ok": True,
        "kind": info.kind,
        "seq": info.seq,
        "blocks": blocks,
        "journal_frames": frames,
        "journal_records": records,
        "journal_range": [info.journal_start, info.journal_end],
        "bytes": info.file_bytes,
    }


# --- listing -------------------------------------------------------------------------------


def list_backups(directory: str | os.PathLike) -> tuple[list[BackupInfo], list[dict]]:
    """The complete backups in `directory` (oldest first), and the other files there
    with a backup's name: unfinished `.part` files and unreadable ones, with why."""
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        raise BackupError(f"{directory}: no such backup directory")
    good: list[BackupInfo] = []
    other: list[dict] = []
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        if name.endswith(BACKUP_FILE_SUFFIX + BACKUP_PARTIAL_SUFFIX):
            other.append({"name": name, "problem": "incomplete (a backup that did not finish)"})
        elif name.endswith(BACKUP_FILE_SUFFIX):
            try:
                good.append(read_header(path))
            except (CorruptError, OSError) as exc:
                other.append({"name": name, "problem": str(exc)})
    good.sort(key=lambda b: (b.time_start, b.seq))
    return good, other


def latest_backup(directory: str, db_id: int) -> BackupInfo | None:
    """The newest complete backup of database `db_id` in `directory`: an incremental's
    parent."""
    mine = [b for b in list_backups(directory)[0] if b.db_id == db_id]
    return max(mine, key=lambda b: (b.time_start, b.seq), default=None)


def backup_file_name(time_ns: int, db_id: int, seq: int) -> str:
    """`YYYYmmddTHHMMSS.ffffff-DBID-full.irbk` / `...-incrNNN.irbk`: sorts by time."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(time_ns / 1e9))
    kind = "full" if seq == 0 else f"incr{seq:03d}"
    return f"{stamp}.{time_ns // 1000 % 1_000_000:06d}-{db_id:08x}-{kind}{BACKUP_FILE_SUFFIX}"


# --- writing a backup ----------------------------------------------------------------------


class _Writer:
    """Appends entries to `NAME.part`; `finish` writes the header, fsyncs, renames."""

    def __init__(self, part: str) -> None:
        self.part = part
        # "x": a second backup racing for the same name fails instead of interleaving.
        self.f = open(part, "xb", buffering=0)  # noqa: SIM115 - closed in finish/abort
        self.f.write(bytes(BACKUP_HEADER_BYTES))  # the header goes in last
        self.offset = BACKUP_HEADER_BYTES
        self.blocks = 0
        self.chunks = 0

    def write(self, data) -> None:
        self.f.write(data)
        self.offset += len(data)

    def finish(self, header: bytes, final: str) -> None:
        self.f.seek(0)
        self.f.write(header)
        os.fsync(self.f.fileno())
        self.f.close()
        # The name appears only now, complete and durable; the directory is fsynced so
        # the name survives a crash too.
        os.replace(self.part, final)
        _fsync_dir(os.path.dirname(final) or ".")

    def abort(self) -> None:
        if not self.f.closed:
            self.f.close()
        with contextlib.suppress(FileNotFoundError):
            os.remove(self.part)


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _Compressor:
    """zstd for batches of blocks, on worker threads where the backend has them."""

    def __init__(self, threads: int) -> None:
        self.cctx = zstandard.ZstdCompressor(level=BACKUP_ZSTD_LEVEL, write_checksum=False)
        self.threads = max(1, threads)
        self.multi = self.threads > 1 and hasattr(self.cctx, "multi_compress_to_buffer")

    def blocks(self, images: list[bytes]) -> list[bytes]:
        if self.multi and len(images) > 8:
            out = self.cctx.multi_compress_to_buffer(images, threads=self.threads)
            return [out[i].tobytes() for i in range(len(images))]
        return [self.cctx.compress(img) for img in images]

    def one(self, data: bytes) -> bytes:
        return self.cctx.compress(data)


def create_backup(
    db,
    out_dir: str | os.PathLike,
    *,
    incremental: bool = False,
    progress: Progress = None,
    threads: int | None = None,
    checkpoint: bool = False,
    clock: Callable[[], int] = time.time_ns,
) -> BackupInfo:
    """Back up the open Database `db` into `out_dir` while it keeps running.

    Full, or (`incremental`) only the blocks changed since the newest backup of this
    database in `out_dir` (BackupError if there is none). Returns the new backup's
    header. `progress(n)` is called with the bytes of the database file copied.

    The image is the last checkpoint's (the write daemon's, at most its interval
    old): what came after is in the backup's journal frames. `checkpoint` runs one
    first (`db.flush()`: writers wait for that one cycle), so that a restore
    replays less."""
    from .blockstore import BlockStore
    from .journal import read_raw_stream

    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    parent = None
    parent_manifest = None
    if incremental:
        parent = latest_backup(out_dir, db.db_id)
        if parent is None:
            raise BackupError(
                f"{out_dir}: no backup of database {db.db_id:08x} to be incremental to: "
                f"take a full backup first"
            )
        if parent.seq >= BACKUP_CHAIN_MAX:
            raise BackupError(
                f"{parent.name} is incremental {parent.seq} of its chain, the most "
                f"(BACKUP_CHAIN_MAX): take a full backup"
            )
        parent_manifest = BackupReader(parent.path).manifest()
    seq = parent.seq + 1 if parent is not None else 0
    backup_id = secrets.randbits(64) or 1
    final = os.path.join(out_dir, backup_file_name(clock(), db.db_id, seq))
    if os.path.exists(final):
        raise BackupError(f"{final} already exists")
    threads = threads if threads is not None else min(4, os.cpu_count() or 1)
    comp = _Compressor(threads)
    writer = _Writer(final + BACKUP_PARTIAL_SUFFIX)
    manifest = bytearray()
    kind = "incremental" if parent is not None else "full"
    marker = f"backup-start id={backup_id:016x} kind={kind} seq={seq}"
    try:
        if checkpoint:
            db.flush()
        with db.backup_window(marker=marker) as point:
            # From here until the record below, a purge keeps what this backup needs
            # (inside the window a purge's checkpoint waits anyway; after it, only this
            # says so until backups.json does).
            db.backups_in_progress[backup_id] = min(point.checkpoint, point.txn_floor)
            # Inside the window the file is the image of `point.checkpoint` and stays so.
            store = BlockStore(db.fs, db.file_path)
            try:
                if (store.db_id, store.checkpoint, store.txn_floor) != (
                    point.db_id,
                    point.checkpoint,
                    point.txn_floor,
                ):
                    raise BackupError(
                        f"{db.file_path}: the header on disk (checkpoint {store.checkpoint}) is "
                        f"not the last checkpoint ({point.checkpoint}): a cycle is running"
                    )
                count = store.block_count
                _copy_blocks(store, count, parent_manifest, comp, writer, manifest, progress)
            finally:
                store.close()
            # The journal the image needs: from where recovery would read (the floor
            # of transactions open at the checkpoint) to the end of the durable stream.
            # Still inside the window: no checkpoint moves, so no purge can take it.
            journal_start = min(point.checkpoint, point.txn_floor)
            journal_end = db.journal.durable_position
            journal_offset = writer.offset
            _copy_journal(
                db.fs, db.journal.dirpath, journal_start, journal_end, comp, writer, read_raw_stream
            )
        time_end = clock()
        manifest_offset = writer.offset
        writer.write(manifest)
        info = BackupInfo(
            path=final,
            kind=kind,
            db_id=db.db_id,
            block_count=count,
            seq=seq,
            backup_id=backup_id,
            parent_id=parent.backup_id if parent else 0,
            chain_id=parent.chain_id if parent else backup_id,
            checkpoint=point.checkpoint,
            txn_floor=point.txn_floor,
            journal_start=journal_start,
            journal_end=journal_end,
            open_position=point.position,
            time_start=point.time,
            time_end=time_end,
            blocks_stored=writer.blocks,
            journal_chunks=writer.chunks,
            journal_offset=journal_offset,
            manifest_offset=manifest_offset,
            manifest_checksum=_xxh3(bytes(manifest)),
            file_bytes=writer.offset,
            epoch=point.epoch,
            flags=(F_MIRROR_COPY if point.mirror_copy else 0) | (F_MARKER if point.marker else 0),
            parent_name=parent.name if parent else "",
            source=os.path.abspath(db.path),
        )
        writer.finish(info.pack(), final)
    except BaseException:
        writer.abort()
        db.backups_in_progress.pop(backup_id, None)
        raise
    # The file is durable under its final name: only now may a record name it (a
    # crash before this loses the record, never the backup; the purge then keeps
    # what the older record holds, which is more).
    try:
        record_backup(db.path, info)
    except OSError as e:
        raise BackupError(
            f"{final} is complete, but recording it in {db.path}/backups.json failed "
            f"({e}): the journal purge does not know of it"
        ) from None
    finally:
        db.backups_in_progress.pop(backup_id, None)
    return info


def _copy_blocks(store, count, parent_manifest, comp, writer, manifest, progress) -> None:
    """Blocks 0..count-1 of the file: each verified, its checksum into the manifest,
    and into the backup when the parent's manifest (if any) has another value.

    Reads run one batch ahead on a thread (the read releases the GIL), so the disk
    reads the next batch while this one is hashed, compressed and written."""
    per_read = max(1, BACKUP_READ_BYTES // BLOCK_SIZE)
    size = store.file.size()
    path = store.path

    def read(first: int) -> bytes:
        n = min(per_read, count - first)
        data = (
            store.file.pread(first * BLOCK_SIZE, n * BLOCK_SIZE)
            if first * BLOCK_SIZE < size
            else b""
        )
        # Blocks past the end of the file were allocated and freed before any cycle
        # wrote them: they read as zeros, as restore writes them.
        return data + bytes(n * BLOCK_SIZE - len(data))

    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="irisrep-backup-read") as ex:
        nxt = ex.submit(read, 0) if count else None
        first = 0
        while nxt is not None:
            data = nxt.result()
            n = len(data) // BLOCK_SIZE
            nxt = ex.submit(read, first + n) if first + n < count else None
            view = memoryview(data)
            sums = np.fromiter(
                (
                    block_checksum(first + i, view[i * BLOCK_SIZE : (i + 1) * BLOCK_SIZE])
                    for i in range(n)
                ),
                dtype="<u8",
                count=n,
            )
            manifest += sums.tobytes()
            if parent_manifest is None:
                changed = range(n)
            else:
                # Changed since the parent: another checksum, or past its block count.
                old = parent_manifest[first : first + n]
                diff = np.ones(n, dtype=bool)
                diff[: len(old)] = sums[: len(old)] != old
                changed = np.flatnonzero(diff).tolist()
            todo: list[tuple[int, bytes, int]] = []
            for i in changed:
                b = first + i
                image = bytes(view[i * BLOCK_SIZE : (i + 1) * BLOCK_SIZE])
                if image != _ZERO_IMAGE:
                    # Rule 6: what goes into a backup was verified on the way.
                    _core.verify_image(image, b, store.db_id, path)
                todo.append((b, image, int(sums[i])))
            for k in range(0, len(todo), BACKUP_BATCH_BLOCKS):
                _write_blocks(todo[k : k + BACKUP_BATCH_BLOCKS], comp, writer)
            first += n
            if progress is not None:
                progress(n * BLOCK_SIZE)


def _write_blocks(batch: list[tuple[int, bytes, int]], comp, writer) -> None:
    packed = comp.blocks([img for _b, img, _ck in batch])
    out = bytearray()
    for (b, image, ck), z in zip(batch, packed, strict=True):
        stored = z if len(z) < BLOCK_SIZE else image  # incompressible: raw
        out += _BLOCK_ENTRY.pack(b, len(stored), ck)
        out += stored
    writer.write(out)
    writer.blocks += len(batch)


def _copy_journal(fs, dirpath, start, end, comp, writer, read_raw_stream) -> None:
    """The journal's frames [start, end), verified as they are read, in chunks."""
    pos = start
    while pos < end:
        try:
            data = read_raw_stream(fs, dirpath, pos, end, BACKUP_JOURNAL_CHUNK_BYTES)
        except (ValueError, CorruptError) as exc:
            raise BackupError(
                f"{dirpath}: cannot read the journal from position {pos} that the backup "
                f"needs: {exc}"
            ) from None
        if not data:
            raise BackupError(f"{dirpath}: the journal ends at {pos}, before {end}")
        z = comp.one(data)
        stored = z if len(z) < len(data) else data
        writer.write(_JOURNAL_ENTRY.pack(pos, len(data), len(stored), _xxh3(data, seed=pos)))
        writer.write(stored)
        writer.chunks += 1
        pos += len(data)


# --- a database by path or by mirror member -----------------------------------------------


def _deployment(deploy_dir: str | os.PathLike | None):
    from .deploy import DeployError, load
    from .deploy import deploy_dir as resolve

    d = resolve(deploy_dir)
    try:
        return d, load(d)
    except DeployError as exc:
        raise BackupError(str(exc)) from None


def choose_member(deploy_dir: str | os.PathLike | None) -> tuple[str, str]:
    """The member `irisrep backup create --dir D` backs up, and why: the Active
    backup (IRIS prefers the backup member: the primary's disk stays for commits,
    and a copy journals no marker), else the primary. BackupError if neither
    answers."""
    from .deploy import member_statuses

    d, _dep = _deployment(deploy_dir)
    try:
        statuses = member_statuses(d)
    except OSError as exc:
        raise BackupError(f"{d}: cannot ask the members ({exc})") from None
    by_name = {s.get("member"): s for s in statuses}
    primary = next((s for s in statuses if s.get("role") == "primary"), None)
    if primary is not None:
        active = primary.get("active_backup")
        if active and by_name.get(active, {}).get("role") == "backup":
            return active, f"{active} is the Active backup of {primary['member']}"
        return primary["member"], f"no Active backup: {primary['member']} is the primary"
    problems = "; ".join(f"{s.get('member')}: {s.get('error') or s.get('role')}" for s in statuses)
    raise BackupError(f"no member is primary ({problems}): name one with --member")


def backup_member(
    deploy_dir: str | os.PathLike | None,
    member: str,
    out_dir: str | os.PathLike,
    *,
    incremental: bool = False,
    progress: Progress = None,
    progress_total: Callable[[int], None] | None = None,
) -> BackupInfo:
    """Back up a deployment member. Running: in its own process, on its own open
    database, through the client protocol (`backup_create`; the member writes the
    file, so `out_dir` is made absolute here and must be reachable from it; a copy
    keeps receiving and acknowledging meanwhile). Stopped: its data directory,
    opened here as a mirror copy (nothing journaled, nothing rolled back)."""
    from .client import connect_member
    from .deploy import agents, credentials

    d, dep = _deployment(deploy_dir)
    by_name = {m["name"]: m for m in dep["members"]}
    if member not in by_name:
        raise BackupError(f"no member {member!r} in {d}; members: {', '.join(by_name)}")
    st = {a["member"]: a for a in agents(d)}.get(member, {})
    if not st.get("running"):
        return backup_instance(
            member_data_dir(d, member),
            out_dir,
            incremental=incremental,
            mirror_copy=True,
            progress=progress,
            progress_total=progress_total,
        )
    user, password = credentials(d)
    out = os.path.abspath(os.fspath(out_dir))
    # No reply timeout: the member answers when the copy is done, however long.
    with connect_member(
        by_name[member]["client_address"], user=user, password=password, request_timeout=None
    ) as conn:
        header = conn.backup_create(out, incremental)
    return BackupInfo.from_dict(header)


def member_data_dir(deploy_dir: str | os.PathLike | None, member: str) -> str:
    """The instance directory of a deployment member (its data_dir), refused while the
    member runs: its database is open in that process, and opening it here as well
    would be two instances writing one file (an online backup of a running member
    runs inside its process: `backup_member`)."""
    from .deploy import DeployError, agents, load
    from .deploy import deploy_dir as resolve

    d = resolve(deploy_dir)
    try:
        dep = load(d)
    except DeployError as exc:
        raise BackupError(str(exc)) from None
    by_name = {m["name"]: m for m in dep["members"]}
    if member not in by_name:
        raise BackupError(f"no member {member!r} in {d}; members: {', '.join(by_name)}")
    st = {a["member"]: a for a in agents(d)}.get(member, {})
    if st.get("running"):
        raise BackupError(
            f"member {member} is running (pid {st.get('pid')}): its database is open in "
            f"that process; back it up there (irisrep backup create --member {member})"
        )
    return by_name[member]["data_dir"]


def backup_instance(
    path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    incremental: bool = False,
    mirror_copy: bool = False,
    progress: Progress = None,
    progress_total: Callable[[int], None] | None = None,
) -> BackupInfo:
    """Open the instance at `path` (recovery runs as on any open), back it up, close.

    Refuses an instance whose WIJ says it is open (or was not closed cleanly): with no
    lock between processes that cannot be told from a crash, and opening a database
    another process has open would corrupt it. Open it in-process and call
    create_backup, or recover it first (open and close it) after a crash.
    `mirror_copy` opens it as a mirror copy: nothing journaled, nothing rolled back."""
    import irisrep

    from .constants import WIJ_FILE_NAME
    from .wij import wij_status

    path = os.fspath(path)
    if not os.path.isdir(path):
        raise BackupError(f"{path}: no instance directory")
    wij_path = os.path.join(path, WIJ_FILE_NAME)
    if os.path.exists(wij_path):
        try:
            st = wij_status(wij_path)
        except CorruptError as exc:
            raise BackupError(f"{path}: {exc}") from None
        if st.running:
            raise BackupError(
                f"{path}: the instance is open in a process (or was not closed cleanly): "
                f"back up a running instance from inside it (irisrep.backup.create_backup), "
                f"or open and close it once after a crash"
            )
    elif not os.path.exists(os.path.join(path, "DB.dat")):
        raise BackupError(f"{path}: no database (DB.dat) to back up")
    db = irisrep.open(path, create=False, mirror_copy=mirror_copy)
    try:
        if progress_total is not None:
            progress_total(db.store.block_count * BLOCK_SIZE)
        return create_backup(db, out_dir, incremental=incremental, progress=progress)
    finally:
        db.close()
