"""Online backups of a running instance: full and incremental, in checksummed files.

Owns the backup file format (`include/irisrep_backup.h`, docs/backup.md; writes
version 2, reads 1 and 2), writing a backup of an open instance with every one of
its databases (`create_backup`), listing a backup directory and verifying a file.
Restoring is `irisrep.restore`.

Promises:
- Every database, one image: all of the instance's databases go into one file, a
  section each, copied inside one `Database.backup_window()`, which holds every
  write-daemon cycle off; only a cycle writes a database file, and one cycle covers
  them all, so each copy is the exact image of its checkpoint (blocks = the journal
  before it), the same for all but a database created since (its creation's),
  never a fuzzy copy of a tree mid-split. Writes and commits go on meanwhile.
- Self-contained: the file also holds the journal frames, once, from the earliest
  min(checkpoint, transaction floor) to the end of the stream when the copies
  finished, read together with the list of databases so that every record in them
  names a database the file holds: the backup alone restores every database to its
  end, transactions open in it rolled back in all of them.
- Incremental by content: every backup records a manifest per database, one xxh3
  per block of the whole database; an incremental stores, per database, exactly the
  blocks whose checksum differs from its parent's manifest of that database (or
  that are new), and all of a database its parent does not hold. No change map is kept in
  the database, so there is none to lose in a crash; the price is that an
  incremental reads the whole file (but writes only what changed).
- Crash-safe: a backup is written as `NAME.part` (section table and header last),
  fsynced, renamed, the directory fsynced; a crash leaves at most a `.part` that
  nothing treats as a backup.
- Every block read from the database is verified (checksum, number, id) before it
  goes in; every entry of a backup file is verified on every read, and a fault is
  reported with the database, the block and the byte offset of its entry
  (BackupCorruptError).
- Streamed: memory stays bounded by a batch of blocks and the manifests (8 bytes
  per block), whatever the databases' sizes.
- Recorded: once a backup file is complete it is added to the instance's
  `backups.json` (purge.record_backup), where the journal purge learns where the
  last good backup rolls forward from; from the window's opening until then the
  database itself says a backup is being taken (`Database.backups_in_progress`).
- A running mirror member is backed up in its own process (the client protocol's
  `backup_create`, `backup_member`); `irisrep backup create --dir D` alone picks
  the Active backup member, as IRIS prefers, else the primary. Its progress comes
  from the member's status while the request runs (`_ProgressWatch`).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import os
import secrets
import struct
import threading
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
    BACKUP_PROGRESS_POLL_S,
    BACKUP_READ_BYTES,
    BACKUP_SECTION_BYTES,
    BACKUP_SECTION_NAME_BYTES,
    BACKUP_SOURCE_BYTES,
    BACKUP_VERSION,
    BACKUP_VERSIONS_READ,
    BACKUP_ZSTD_LEVEL,
    BLOCK_SIZE,
    DATABASES_MAX,
    JOURNAL_FRAME_ALIGN,
    JOURNAL_FRAME_BYTES_MAX,
    JOURNAL_FRAME_HEADER_BYTES,
)
from .errors import BackupCorruptError, BackupError, CorruptError, IrisrepError
from .purge import record_backup

__all__ = [
    "BackupInfo",
    "BackupReader",
    "Section",
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
S_JOURNALING = 1  # IR_BACKUP_S_JOURNALING: the database had journaling on
S_FULL = 2  # IR_BACKUP_S_FULL: every block stored (the database's first in its chain)

# Header fields up to IR_BACKUP_HDR_END, in the order of include/irisrep_backup.h.
_HEADER_V1 = struct.Struct(
    f"<8sIIIIII QQQ QQQQQ QQ II QQQQ Q II {BACKUP_NAME_BYTES}s {BACKUP_SOURCE_BYTES}s"
)
assert _HEADER_V1.size == 1320
# Version 2 adds the section table's place (a database per section) after `source`.
_HEADER = struct.Struct(_HEADER_V1.format + " IIQQ")
assert _HEADER.size == 1344
_HEADER_CK_OFF = BACKUP_HEADER_BYTES - 8
_SECTION = struct.Struct(f"<{BACKUP_SECTION_NAME_BYTES}sII QQQQQQQQ")
assert _SECTION.size <= BACKUP_SECTION_BYTES
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
class Section:
    """One database in a backup file: where its block entries and manifest lie, and
    the image's consistency point (its file header's checkpoint and floor)."""

    name: str
    db_id: int
    flags: int  # S_* bits
    block_count: int  # blocks of the database at this backup
    blocks_stored: int  # its block entries in this file
    blocks_offset: int  # file offset of its first block entry
    blocks_end: int  # file offset after its last block entry
    manifest_offset: int  # file offset of its manifest (block_count x u64)
    manifest_checksum: int  # xxh3_64 of its manifest's bytes
    checkpoint: int  # journal position its blocks reflect exactly
    txn_floor: int  # no transaction open at its checkpoint began before this

    @property
    def journaling(self) -> bool:
        return bool(self.flags & S_JOURNALING)

    @property
    def full(self) -> bool:
        return bool(self.flags & S_FULL)

    @property
    def journal_start(self) -> int:
        return min(self.checkpoint, self.txn_floor)

    def pack(self) -> bytes:
        body = _SECTION.pack(
            _fixed(self.name, BACKUP_SECTION_NAME_BYTES, "database name"),
            self.db_id,
            self.flags,
            self.block_count,
            self.blocks_stored,
            self.blocks_offset,
            self.blocks_end,
            self.manifest_offset,
            self.manifest_checksum,
            self.checkpoint,
            self.txn_floor,
        )
        return body + bytes(BACKUP_SECTION_BYTES - len(body))

    @classmethod
    def unpack(cls, raw: bytes) -> Section:
        f = _SECTION.unpack_from(raw, 0)
        return cls(f[0].rstrip(b"\0").decode("utf-8", "replace"), *f[1:])

    def as_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["db_id"] = f"{self.db_id:08x}"
        d["journaling"] = self.journaling
        d["full"] = self.full
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Section:
        kw = {f.name: d[f.name] for f in dataclasses.fields(cls)}
        kw["db_id"] = int(kw["db_id"], 16)
        return cls(**kw)


@dataclasses.dataclass
class BackupInfo:
    """A backup file's header and section table (what `irisrep backup list` shows).

    The header's totals are the whole file's: `block_count` and `blocks_stored` sum
    the sections, `checkpoint` is the latest section's (a restore cannot stop before
    it), `txn_floor` and `journal_start` the earliest, `manifest_checksum` covers
    every manifest in order. `db_id` is the instance's first database's (DB), which
    keys chains and backups.json as in version 1."""

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
    sections_offset: int = 0  # version 2: file offset of the section table
    sections_checksum: int = 0  # version 2: xxh3_64 of the section table
    # The databases, in file order (DB first). A version 1 file has one: DB's,
    # described by the header itself.
    sections: list[Section] = dataclasses.field(default_factory=list)

    @property
    def name(self) -> str:
        return os.path.basename(self.path)

    @property
    def database_names(self) -> list[str]:
        return [s.name for s in self.sections]

    def section(self, db_id: int) -> Section | None:
        return next((s for s in self.sections if s.db_id == db_id), None)

    def pack(self) -> bytes:
        """The header (version 2: what this build writes)."""
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
            len(self.sections),
            0,
            self.sections_offset,
            self.sections_checksum,
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
        d["sections"] = [s.as_dict() for s in self.sections]
        d["databases"] = self.database_names
        return d

    @classmethod
    def from_dict(cls, d: dict) -> BackupInfo:
        """The inverse of as_dict (a header a member sent back over the client
        protocol); BackupError if it is not one."""
        try:
            kw = {f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d}
            for name in ("backup_id", "parent_id", "chain_id", "db_id"):
                kw[name] = int(kw[name], 16)
            kw["sections"] = [Section.from_dict(s) for s in kw.get("sections", [])]
            return cls(**kw)
        except (KeyError, TypeError, ValueError) as e:
            raise BackupError(f"not a backup header: {e}") from None


def _fixed(text: str, size: int, what: str) -> bytes:
    raw = text.encode("utf-8")
    if len(raw) > size:
        raise BackupError(f"{what} {text!r} is longer than {size} bytes (UTF-8)")
    return raw


def read_header(path: str | os.PathLike) -> BackupInfo:
    """Parse and verify a backup file's header and section table (BackupCorruptError
    names what fails). Reads version 1 files too (one section: DB)."""
    path = os.fspath(path)
    with open(path, "rb") as f:
        raw = f.read(BACKUP_HEADER_BYTES)
        size = os.fstat(f.fileno()).st_size
        info = _parse_header(path, raw, size)
        if info.version >= 2:
            f.seek(info.sections_offset)
            table = f.read(BACKUP_SECTION_BYTES * len(info.sections))
            info.sections = _parse_sections(info, table)
    return info


def _bad(path: str, msg: str, offset: int, expected=None, found=None) -> BackupCorruptError:
    return BackupCorruptError(
        f"{path}: {msg}", path=path, offset=offset, expected=expected, found=found
    )


def _parse_header(path: str, raw: bytes, size: int) -> BackupInfo:
    def bad(msg: str, offset: int, expected=None, found=None) -> BackupCorruptError:
        return _bad(path, msg, offset, expected, found)

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
    (version,) = struct.unpack_from("<I", raw, 8)
    f = (_HEADER if version >= 2 else _HEADER_V1).unpack_from(raw, 0)
    (_magic, version, kind, bsize, db_id, count, seq) = f[:7]
    if version not in BACKUP_VERSIONS_READ or bsize != BLOCK_SIZE or kind not in KINDS:
        raise bad(
            f"format version {version}, kind {kind}, block size {bsize}: this build reads "
            f"versions {', '.join(map(str, BACKUP_VERSIONS_READ))} with {BLOCK_SIZE}-byte "
            f"blocks",
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
    if version >= 2:
        n, info.sections_offset, info.sections_checksum = f[28], f[30], f[31]
        tables_ok = (
            1 <= n <= DATABASES_MAX
            and info.manifest_offset + 8 * count == info.sections_offset
            and info.sections_offset + BACKUP_SECTION_BYTES * n == info.file_bytes
        )
        # Placeholders until read_header reads the table (its size is all we know).
        info.sections = [None] * n if tables_ok else []  # type: ignore[list-item]
    else:
        tables_ok = info.manifest_offset + 8 * count == info.file_bytes
        # Version 1: DB alone, described by the header; journaling was not recorded
        # (a v1 writer's DB was always journaled).
        info.sections = [
            Section(
                name="DB",
                db_id=db_id,
                flags=S_JOURNALING | (S_FULL if kind == BACKUP_KIND_FULL else 0),
                block_count=count,
                blocks_stored=info.blocks_stored,
                blocks_offset=BACKUP_HEADER_BYTES,
                blocks_end=info.journal_offset,
                manifest_offset=info.manifest_offset,
                manifest_checksum=info.manifest_checksum,
                checkpoint=info.checkpoint,
                txn_floor=info.txn_floor,
            )
        ]
    # The sections must lie where the header says, in order, inside the file.
    ok = (
        tables_ok
        and BACKUP_HEADER_BYTES <= info.journal_offset <= info.manifest_offset
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


def _parse_sections(info: BackupInfo, table: bytes) -> list[Section]:
    """A version 2 file's section table, checked against its checksum and the header:
    one section per database (DB first), its entries and manifest where the file's
    regions say, in order, adding up to the header's totals."""
    from .database import check_database_name, database_id

    path, off = info.path, info.sections_offset
    actual = _xxh3(table)
    if len(table) != BACKUP_SECTION_BYTES * len(info.sections) or actual != info.sections_checksum:
        raise _bad(
            path,
            f"section table at byte offset {off}: checksum mismatch (expected "
            f"{info.sections_checksum:#018x}, found {actual:#018x})",
            off,
            f"{info.sections_checksum:#018x}",
            f"{actual:#018x}",
        )
    out = [
        Section.unpack(table[i : i + BACKUP_SECTION_BYTES])
        for i in range(0, len(table), BACKUP_SECTION_BYTES)
    ]
    blocks_at, manifest_at = BACKUP_HEADER_BYTES, info.manifest_offset
    for i, s in enumerate(out):
        where = off + i * BACKUP_SECTION_BYTES
        try:
            named = database_id(s.name) == s.db_id and check_database_name(s.name) == s.name
        except IrisrepError:
            named = False
        ok = (
            named
            and s.blocks_offset == blocks_at
            and s.blocks_offset <= s.blocks_end
            and s.manifest_offset == manifest_at
            and s.blocks_stored <= s.block_count
            and (not s.full or s.blocks_stored == s.block_count)
            and (info.kind != "full" or s.full)
            and info.journal_start <= s.journal_start
            and s.checkpoint <= info.checkpoint
        )
        if not ok:
            raise _bad(
                path, f"section {i} ({s.name!r}) at byte offset {where} is inconsistent", where
            )
        blocks_at, manifest_at = s.blocks_end, s.manifest_offset + 8 * s.block_count
    ids = {s.db_id for s in out}
    if (
        out[0].db_id != info.db_id
        or len(ids) != len(out)
        or blocks_at != info.journal_offset
        or sum(s.block_count for s in out) != info.block_count
        or sum(s.blocks_stored for s in out) != info.blocks_stored
    ):
        raise _bad(path, f"section table at byte offset {off} disagrees with the header", off)
    return out


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

    def _sections(self, section: Section | None) -> list[Section]:
        return self.info.sections if section is None else [section]

    def blocks(
        self, progress: Progress = None, section: Section | None = None
    ) -> Iterator[tuple[int, bytes]]:
        """(block_no, image) of every block entry (of `section`, else of every section
        in file order), each verified: entry bounds, decompression to exactly one
        block, the checksum bound to its number."""
        for block_no, image, _checksum in self.entries(progress, section):
            yield block_no, image

    def entries(
        self, progress: Progress = None, section: Section | None = None
    ) -> Iterator[tuple[int, bytes, int]]:
        """blocks(), with each entry's (verified) checksum."""
        with open(self.path, "rb", buffering=1 << 20) as f:
            for sec in self._sections(section):
                yield from self._section_entries(f, sec, progress)

    def _section_entries(self, f, sec: Section, progress: Progress):
        off = sec.blocks_offset
        prev = -1
        multi = self.info.version >= 2
        f.seek(off)
        for i in range(sec.blocks_stored):
            head = f.read(BACKUP_BLOCK_ENTRY_BYTES)
            db = f"database {sec.name} " if multi else ""
            if len(head) < BACKUP_BLOCK_ENTRY_BYTES:
                raise self._corrupt(f"{db}block entry {i} at byte offset {off} is cut short", off)
            block_no, stored_len, checksum = _BLOCK_ENTRY.unpack(head)
            where = f"{db}block {block_no} (entry {i} at byte offset {off})"
            if (
                not 0 < stored_len <= BLOCK_SIZE
                or block_no <= prev
                or block_no >= sec.block_count
                or off + BACKUP_BLOCK_ENTRY_BYTES + stored_len > sec.blocks_end
            ):
                raise self._corrupt(
                    f"{where}: impossible entry (stored length {stored_len}, previous "
                    f"block {prev}, {sec.block_count} blocks)",
                    off,
                    block_no,
                )
            data = f.read(stored_len)
            image = self._image(data, where, off, block_no)
            actual = block_checksum(block_no, image)
            if actual != checksum:
                raise self._corrupt(
                    f"{where}: checksum mismatch (expected {checksum:#018x}, found {actual:#018x})",
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
        if off != sec.blocks_end:
            raise self._corrupt(
                f"database {sec.name}'s block entries end at byte offset {off}, the next "
                f"region starts at {sec.blocks_end}",
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
                if len(data) != raw_len:
                    raise self._corrupt(
                        f"{where}: {len(data)} bytes where the entry says {raw_len}", off
                    )
                actual = _xxh3(data, seed=position)
                if actual != checksum:
                    raise self._corrupt(
                        f"{where}: checksum mismatch (expected {checksum:#018x}, found "
                        f"{actual:#018x})",
                        off,
                        expected=f"{checksum:#018x}",
                        found=f"{actual:#018x}",
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

    def manifest(self, section: Section | None = None) -> np.ndarray:
        """The per-block checksums of a database at this backup (u64 array): of
        `section`, else of the first (DB)."""
        sec = section if section is not None else self.info.sections[0]
        with open(self.path, "rb") as f:
            f.seek(sec.manifest_offset)
            raw = f.read(8 * sec.block_count)
        actual = _xxh3(raw)
        if len(raw) != 8 * sec.block_count or actual != sec.manifest_checksum:
            raise self._corrupt(
                f"database {sec.name}'s manifest at byte offset {sec.manifest_offset}: "
                f"checksum mismatch (expected {sec.manifest_checksum:#018x}, found "
                f"{actual:#018x})",
                sec.manifest_offset,
            )
        return np.frombuffer(raw, dtype="<u8")

    def check_manifests(self) -> None:
        """Every manifest, and (version 2) the header's checksum over all of them."""
        info = self.info
        for sec in info.sections:
            self.manifest(sec)
        if info.version >= 2:
            with open(self.path, "rb") as f:
                f.seek(info.manifest_offset)
                raw = f.read(8 * info.block_count)
            actual = _xxh3(raw)
            if actual != info.manifest_checksum:
                raise self._corrupt(
                    f"manifests at byte offset {info.manifest_offset}: checksum mismatch "
                    f"(expected {info.manifest_checksum:#018x}, found {actual:#018x})",
                    info.manifest_offset,
                )


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
    databases = []
    for sec in info.sections:
        n = sum(1 for _ in reader.blocks(progress, sec))
        blocks += n
        databases.append(
            {
                "name": sec.name,
                "db_id": f"{sec.db_id:08x}",
                "blocks": n,
                "block_count": sec.block_count,
                "journaling": sec.journaling,
                "full": sec.full,
                "checkpoint": sec.checkpoint,
            }
        )
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
    reader.check_manifests()
    if progress is not None:
        progress(8 * info.block_count)
    return {
        "path": reader.path,
        "ok": True,
        "version": info.version,
        "kind": info.kind,
        "seq": info.seq,
        "blocks": blocks,
        "databases": databases,
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
    """Back up every database of the open instance of `db` into `out_dir` (one file)
    while it keeps running.

    Full, or (`incremental`) only the blocks changed since the newest backup of this
    instance in `out_dir` (BackupError if there is none): per database, against that
    database's section there; a database that backup does not hold (created since)
    gets all its blocks. Returns the new backup's header. `progress(n)` is called with
    the bytes of the database files copied.

    Each image is the last checkpoint's (the write daemon's, at most its interval
    old): what came after is in the backup's journal frames. `checkpoint` runs one
    first (`db.flush()`: writers wait for that one cycle), so that a restore
    replays less."""
    from .journal import read_raw_stream

    root = db if db.parent is None else db.parent
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    parent = None
    parent_reader = None
    if incremental:
        parent = latest_backup(out_dir, root.db_id)
        if parent is None:
            raise BackupError(
                f"{out_dir}: no backup of database {root.db_id:08x} to be incremental to: "
                f"take a full backup first"
            )
        if parent.seq >= BACKUP_CHAIN_MAX:
            raise BackupError(
                f"{parent.name} is incremental {parent.seq} of its chain, the most "
                f"(BACKUP_CHAIN_MAX): take a full backup"
            )
        parent_reader = BackupReader(parent.path)
    seq = parent.seq + 1 if parent is not None else 0
    backup_id = secrets.randbits(64) or 1
    final = os.path.join(out_dir, backup_file_name(clock(), root.db_id, seq))
    if os.path.exists(final):
        raise BackupError(f"{final} already exists")
    threads = threads if threads is not None else min(4, os.cpu_count() or 1)
    comp = _Compressor(threads)
    writer = _Writer(final + BACKUP_PARTIAL_SUFFIX)
    manifests: list[bytearray] = []
    sections: list[Section] = []
    kind = "incremental" if parent is not None else "full"
    marker = f"backup-start id={backup_id:016x} kind={kind} seq={seq}"
    try:
        if checkpoint:
            root.flush()
        # One window for the whole instance: its one WIJ cycle writes every database,
        # so holding cycles off freezes every file at the same checkpoint.
        with root.backup_window(marker=marker) as point:
            # From here until the record below, a purge keeps what this backup needs
            # (inside the window a purge's checkpoint waits anyway; after it, only this
            # says so until backups.json does).
            root.backups_in_progress[backup_id] = min(point.checkpoint, point.txn_floor)
            todo, _end = _databases_now(root)
            while todo:
                for name, member, ckpt, floor in todo:
                    parent_sec = parent.section(member.db_id) if parent is not None else None
                    parent_manifest = (
                        parent_reader.manifest(parent_sec) if parent_sec is not None else None
                    )
                    manifest = bytearray()
                    sections.append(
                        _copy_database(
                            name,
                            member,
                            ckpt,
                            floor,
                            parent_manifest,
                            comp,
                            writer,
                            manifest,
                            progress,
                        )
                    )
                    manifests.append(manifest)
                # A database created while the others were copied is in the window too:
                # its file is the empty image of its creation, no cycle having run since.
                # The journal end is read under the instance lock with the list, so every
                # record before it names a database the backup holds (a record is logged
                # under that lock, after its database was created under it).
                now, journal_end = _databases_now(root)
                done = {s.name for s in sections}
                todo = [d for d in now if d[0] not in done]
            # The journal the images need: from where recovery would read (the floor
            # of transactions open at the earliest checkpoint) to the end of the durable
            # stream. Still inside the window: no checkpoint moves, so no purge takes it.
            journal_start = min(s.journal_start for s in sections)
            journal_offset = writer.offset
            _copy_journal(
                root.fs,
                root.journal.dirpath,
                journal_start,
                journal_end,
                comp,
                writer,
                read_raw_stream,
            )
        time_end = clock()
        manifest_offset = writer.offset
        for sec, manifest in zip(sections, manifests, strict=True):
            sec.manifest_offset = writer.offset
            writer.write(manifest)
        all_manifests = b"".join(manifests)
        sections_offset = writer.offset
        table = b"".join(sec.pack() for sec in sections)
        writer.write(table)
        info = BackupInfo(
            path=final,
            kind=kind,
            db_id=root.db_id,
            block_count=sum(sec.block_count for sec in sections),
            seq=seq,
            backup_id=backup_id,
            parent_id=parent.backup_id if parent else 0,
            chain_id=parent.chain_id if parent else backup_id,
            checkpoint=max(sec.checkpoint for sec in sections),
            txn_floor=min(sec.txn_floor for sec in sections),
            journal_start=journal_start,
            journal_end=journal_end,
            open_position=point.position,
            time_start=point.time,
            time_end=time_end,
            blocks_stored=writer.blocks,
            journal_chunks=writer.chunks,
            journal_offset=journal_offset,
            manifest_offset=manifest_offset,
            manifest_checksum=_xxh3(all_manifests),
            file_bytes=writer.offset,
            epoch=point.epoch,
            flags=(F_MIRROR_COPY if point.mirror_copy else 0) | (F_MARKER if point.marker else 0),
            parent_name=parent.name if parent else "",
            source=os.path.abspath(root.path),
            sections_offset=sections_offset,
            sections_checksum=_xxh3(table),
            sections=sections,
        )
        writer.finish(info.pack(), final)
    except BaseException:
        writer.abort()
        root.backups_in_progress.pop(backup_id, None)
        raise
    # The file is durable under its final name: only now may a record name it (a
    # crash before this loses the record, never the backup; the purge then keeps
    # what the older record holds, which is more).
    try:
        record_backup(root.path, info)
    except OSError as e:
        raise BackupError(
            f"{final} is complete, but recording it in {root.path}/backups.json failed "
            f"({e}): the journal purge does not know of it"
        ) from None
    finally:
        root.backups_in_progress.pop(backup_id, None)
    return info


def _databases_now(root) -> tuple[list[tuple], int]:
    """Under the instance lock: (name, Database, checkpoint, txn_floor) of each of its
    databases (DB first), and the durable journal end at that moment. Inside the
    backup window no cycle runs, so each in-memory checkpoint is its file's header."""
    with root._lock:
        out = []
        for name in root.database_names_locked():
            member = root.database(name, create=False)
            out.append((name, member, member.store.checkpoint, member.store.txn_floor))
        return out, root.journal.durable_position


def _copy_database(
    name, member, ckpt, floor, parent_manifest, comp, writer, manifest, progress
) -> Section:
    """One database's blocks into the backup (a section; its manifest into
    `manifest`, placed by the caller)."""
    from .blockstore import BlockStore

    # Inside the window the file is the image of its checkpoint and stays so.
    store = BlockStore(member.fs, member.file_path)
    try:
        if (store.db_id, store.checkpoint, store.txn_floor) != (member.db_id, ckpt, floor):
            raise BackupError(
                f"{member.file_path}: the header on disk (checkpoint {store.checkpoint}) is "
                f"not the last checkpoint ({ckpt}): a cycle is running"
            )
        count = store.block_count
        first_offset, first_blocks = writer.offset, writer.blocks
        _copy_blocks(store, count, parent_manifest, comp, writer, manifest, progress)
    finally:
        store.close()
    return Section(
        name=name,
        db_id=member.db_id,
        flags=(S_JOURNALING if member.journaling else 0)
        | (S_FULL if parent_manifest is None else 0),
        block_count=count,
        blocks_stored=writer.blocks - first_blocks,
        blocks_offset=first_offset,
        blocks_end=writer.offset,
        manifest_offset=0,  # placed after the journal
        manifest_checksum=_xxh3(bytes(manifest)),
        checkpoint=ckpt,
        txn_floor=floor,
    )


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
    address = by_name[member]["client_address"]
    out = os.path.abspath(os.fspath(out_dir))
    watch = None
    if progress is not None or progress_total is not None:
        watch = _ProgressWatch(address, user, password, progress, progress_total)
        watch.start()
    try:
        # No reply timeout: the member answers when the copy is done, however long.
        with connect_member(address, user=user, password=password, request_timeout=None) as conn:
            header = conn.backup_create(out, incremental)
    finally:
        if watch is not None:
            watch.finish()
    info = BackupInfo.from_dict(header)
    if watch is not None:
        watch.complete(info.block_count * BLOCK_SIZE)
    return info


class _ProgressWatch(threading.Thread):
    """Relays the progress of a backup running in a member's process to the
    callbacks of `backup_member`: asks the member (its status' `backup`: bytes of
    the database files copied of the total) every BACKUP_PROGRESS_POLL_S on a
    connection of its own. A status it cannot get only leaves the bar where it is."""

    def __init__(self, address, user, password, progress, progress_total) -> None:
        super().__init__(name="backup-progress", daemon=True)
        self.address, self.user, self.password = address, user, password
        self.progress, self.progress_total = progress, progress_total
        self.done = 0
        self.total: int | None = None
        self.seen_running = False
        self._stop_event = threading.Event()

    def run(self) -> None:
        from .client import connect_member

        try:
            with connect_member(
                self.address, user=self.user, password=self.password, request_timeout=5.0
            ) as conn:
                while not self._stop_event.wait(BACKUP_PROGRESS_POLL_S):
                    self._update(conn.status().get("backup"))
        except (IrisrepError, OSError):  # no bar then: the backup's own reply decides
            return

    def _update(self, st: dict | None) -> None:
        if not st or not st.get("running"):
            return
        self.seen_running = True
        total = int(st.get("total_bytes") or 0)
        if total and total != self.total and self.progress_total is not None:
            self.total = total
            self.progress_total(total)
        done = int(st.get("done_bytes") or 0)
        if done > self.done and self.progress is not None:
            self.progress(done - self.done)
            self.done = done

    def finish(self) -> None:
        self._stop_event.set()
        self.join(10)

    def complete(self, total: int) -> None:
        """The backup finished: the bar at its end (the member's final count)."""
        if self.progress_total is not None and total != self.total:
            self.progress_total(total)
        if self.progress is not None and total > self.done:
            self.progress(total - self.done)
        self.done = total


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
            progress_total(sum(d.store.block_count for d in db._databases()) * BLOCK_SIZE)
        return create_backup(db, out_dir, incremental=incremental, progress=progress)
    finally:
        db.close()
