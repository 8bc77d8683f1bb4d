"""The block store: one database file of 8 KiB blocks, its header and its free list.

Owns block numbers (allocation, the free list, the high-water mark) and the header
block; promises that every image it returns has been verified (checksum, its own
block number, this database's id) and that it writes only whole sealed images. It
does no caching of tree nodes (the B+tree's pool does) and decides nothing about
*when* blocks reach the file: a flush cycle hands it a consistent set of images.

Free blocks form a linked list through their `link` field (type FREE); a freed
block's FREE image is pending until the next flush cycle writes it, exactly like a
changed tree node, so the list on disk always matches the header written with it.
"""

from __future__ import annotations

import os
import struct

from . import _core
from .constants import (
    BLOCK_HEADER_SIZE,
    BLOCK_NO_MAX,
    BLOCK_NONE,
    BLOCK_SIZE,
    BT_FREE,
    BT_HEADER,
    DB_FORMAT_VERSION,
    DB_MAGIC,
    FREE_TRUNK_ENTRIES_MAX,
    IO_CALL_BYTES_MAX,
    WRITE_QUEUE_DEPTH,
    WRITE_RUN_BLOCKS_MAX,
    WRITE_RUN_SEQUENTIAL_BLOCKS_MIN,
)
from .errors import BlockCorruptError, CorruptError

# Header block payload (include/irisrep_block.h, "Header block").
# magic ver bsize db_id root free nfree count pad checkpoint generation txn_floor
_HEADER = struct.Struct("<8sIIIIIII I QQQ")
assert _HEADER.size == 64
_HEADER_COUNT_OFF = 32  # the block count in the header payload
_U32 = struct.Struct("<I")


class StoreFile:
    """What a WIJ cycle or recovery needs of a database file: `file`, `path`, `db_id`
    and these three (BlockStore and wij.RawStore share them)."""

    file: object
    path: str

    def write_images(self, images: list[tuple[int, bytes]]) -> None:
        write_runs(self.file, images)
        # A block allocated and freed before any cycle wrote it is never written; when
        # it is among the last, the file would end before the header's block count (the
        # integrity walk: "file holds N blocks, the header says M"). The header image
        # of the set (block 0, first: the set is sorted) names the count: the file is
        # extended to it here, before the fdatasync that ends this phase of the cycle
        # (and again by WIJ recovery, which replays the same set).
        if images and images[0][0] == 0:
            (count,) = _U32.unpack_from(images[0][1], BLOCK_HEADER_SIZE + _HEADER_COUNT_OFF)
            if self.file.size() < count * BLOCK_SIZE:
                self.file.truncate(count * BLOCK_SIZE)

    def sync(self) -> None:
        self.file.fdatasync()

    def close(self) -> None:
        self.file.close()


class BlockStore(StoreFile):
    """A database file opened through the file-system seam (`fileio.FS`)."""

    def __init__(
        self,
        fs,
        path: str,
        *,
        create: bool = False,
        direct: str = "optional",
        db_id: int | None = None,
    ) -> None:
        self.fs = fs
        self.path = path
        exists = fs.exists(path)
        if not exists and not create:
            raise FileNotFoundError(2, "no database file", path)
        self.file = fs.open(path, create=not exists, direct=direct)
        self.pending: dict[int, bytes] = {}  # block_no -> sealed image not yet written
        # Images of the cycle being written: readable here until the file has them.
        self.inflight: dict[int, bytes] = {}
        self._trunk_entries: list[int] | None = None  # head free-list trunk, in memory
        self._trunk_link: int | None = None  # the head trunk's link (None: read it)
        self._trunk_dirty = False
        if not exists:
            self._init_new(db_id)
        elif self.file.size() == 0:
            self.file.close()
            raise CorruptError(
                f"{path}: empty file, no database header",
                path=path,
                offset=0,
                expected=BLOCK_SIZE,
                found=0,
            )
        else:
            self._read_header()

    # --- header ----------------------------------------------------------------------

    def _init_new(self, db_id: int | None) -> None:
        # A new database: header block 0 and an empty root leaf at block 1. Nothing is
        # durable until the first flush cycle (Database.create flushes at once).
        # Database.create passes the id derived from the database's name (the id its
        # journal records carry, the same on every mirror member); random otherwise.
        self.db_id = db_id if db_id else int.from_bytes(os.urandom(4), "little") or 1
        self.root = 1
        self.free_head = BLOCK_NONE
        self.free_count = 0
        self.block_count = 2
        # Journal positions: the blocks hold every record before `checkpoint`; no
        # transaction open at the checkpoint started before `txn_floor` (recovery
        # reads from the smaller of the two to find what to roll back).
        self.checkpoint = 0
        self.generation = 0
        self.txn_floor = 0
        self.created = True

    def _read_header(self) -> None:
        self.created = False
        image = self.file.pread(0, BLOCK_SIZE)
        if len(image) != BLOCK_SIZE:
            raise BlockCorruptError(
                f"{self.path}: header block is short ({len(image)} bytes)",
                path=self.path,
                block=0,
                expected=BLOCK_SIZE,
                found=len(image),
            )
        payload = image[BLOCK_HEADER_SIZE : BLOCK_HEADER_SIZE + _HEADER.size]
        (
            magic,
            version,
            bsize,
            db_id,
            root,
            free_head,
            free_count,
            count,
            _pad,
            ckpt,
            gen,
            floor,
        ) = _HEADER.unpack(payload)
        if magic != DB_MAGIC:
            raise CorruptError(
                f"{self.path}: not an irisrep database (magic {magic!r})",
                path=self.path,
                offset=0,
                expected=DB_MAGIC,
                found=magic,
            )
        _core.verify_image(image, 0, db_id, self.path)
        if _core.image_fields(image)[0] != BT_HEADER:
            raise BlockCorruptError(
                f"{self.path}: block 0 is not a header block",
                path=self.path,
                block=0,
                expected=BT_HEADER,
                found=_core.image_fields(image)[0],
            )
        if version != DB_FORMAT_VERSION or bsize != BLOCK_SIZE:
            raise CorruptError(
                f"{self.path}: format {version}/{bsize}, this build reads "
                f"{DB_FORMAT_VERSION}/{BLOCK_SIZE}",
                path=self.path,
                offset=0,
                expected=(DB_FORMAT_VERSION, BLOCK_SIZE),
                found=(version, bsize),
            )
        if not (0 < root < count <= BLOCK_NO_MAX + 1):
            raise BlockCorruptError(
                f"{self.path}: header root {root} outside 1..{count - 1}",
                path=self.path,
                block=0,
                expected=f"< {count}",
                found=root,
            )
        self.db_id, self.root, self.free_head, self.free_count = db_id, root, free_head, free_count
        self.block_count, self.checkpoint, self.generation = count, ckpt, gen
        self.txn_floor = floor

    def header_image(self) -> bytes:
        payload = _HEADER.pack(
            DB_MAGIC,
            DB_FORMAT_VERSION,
            BLOCK_SIZE,
            self.db_id,
            self.root,
            self.free_head,
            self.free_count,
            self.block_count,
            0,
            self.checkpoint,
            self.generation,
            self.txn_floor,
        )
        return _core.seal_image(payload, 0, self.db_id, BT_HEADER)

    # --- blocks ----------------------------------------------------------------------

    def read_image(self, block_no: int) -> bytes:
        """A verified image: the pending one if any, else the file's."""
        image = self.pending.get(block_no)
        if image is None:
            image = self.inflight.get(block_no)
        if image is not None:
            return image
        if not 0 < block_no < self.block_count:
            raise BlockCorruptError(
                f"{self.path}: pointer to block {block_no} outside 1..{self.block_count - 1}",
                path=self.path,
                block=block_no,
                expected=f"< {self.block_count}",
                found=block_no,
            )
        image = self.file.pread(block_no * BLOCK_SIZE, BLOCK_SIZE)
        if len(image) != BLOCK_SIZE:
            raise BlockCorruptError(
                f"{self.path}: block {block_no} lies past the end of the file",
                path=self.path,
                block=block_no,
                expected=BLOCK_SIZE,
                found=len(image),
            )
        _core.verify_image(image, block_no, self.db_id, self.path)
        return image

    def put_image(self, block_no: int, image: bytes) -> None:
        self.pending[block_no] = image

    # --- the free list -----------------------------------------------------------------
    #
    # Free blocks are listed in trunk blocks (type FREE): a trunk's payload is a count
    # and up to FREE_TRUNK_ENTRIES_MAX block numbers, its link names the next trunk.
    # Only the head trunk changes, so freeing a whole subtree of N blocks dirties
    # N / FREE_TRUNK_ENTRIES_MAX trunks, not N blocks: a cycle stays small whatever one
    # KILL frees. The head trunk's entries live in memory and its image is made when a
    # cycle takes the pending set, like any changed block.

    def _trunk(self) -> list[int]:
        """The head trunk's entries (loaded, with its link, on first use)."""
        if self._trunk_entries is None:
            if self.free_head == BLOCK_NONE:
                self._trunk_entries, self._trunk_link = [], BLOCK_NONE
            else:
                self._trunk_link, self._trunk_entries = self._read_trunk(self.free_head)
        return self._trunk_entries

    def _read_trunk(self, block_no: int) -> tuple[int, list[int]]:
        """(link, entries) of a trunk block; corruption names the block."""
        image = self.read_image(block_no)
        btype, _level, count, used, link, _pos = _core.image_fields(image)
        if btype != BT_FREE or used != 4 + 4 * count or count > FREE_TRUNK_ENTRIES_MAX:
            raise BlockCorruptError(
                f"{self.path}: free list names block {block_no}, which is not a free-list "
                f"trunk (type {btype}, {count} entries, {used} bytes)",
                path=self.path,
                block=block_no,
                expected=BT_FREE,
                found=btype,
            )
        payload = _core.image_payload(image)
        (n,) = _U32.unpack_from(payload, 0)
        if n != count:
            raise BlockCorruptError(
                f"{self.path}: free-list trunk {block_no} counts {n} entries, its header {count}",
                path=self.path,
                block=block_no,
                expected=count,
                found=n,
            )
        return link, list(struct.unpack_from(f"<{n}I", payload, 4))

    def allocate(self) -> int:
        if self.free_head != BLOCK_NONE:
            entries = self._trunk()
            self.free_count -= 1
            if entries:
                self._trunk_dirty = True
                block_no = entries.pop()
                # Freed since the last cycle, it may still have an image waiting (an
                # overflow block of a value since replaced): dead now. Its new owner
                # writes it; two images of one block in a cycle would stop the
                # database (the WIJ refuses them), and the stale one could win.
                self.pending.pop(block_no, None)
                return block_no
            # An empty head trunk is itself the block handed out; the next trunk
            # becomes the head.
            block_no = self.free_head
            self.free_head = self._trunk_link
            self._trunk_entries = None  # the next trunk loads on its first use
            self._trunk_link = None
            self._trunk_dirty = False
            self.pending.pop(block_no, None)
            return block_no
        if self.block_count > BLOCK_NO_MAX:
            raise OSError(28, "database file has no block numbers left", self.path)
        block_no = self.block_count
        self.block_count += 1
        return block_no

    def free(self, block_no: int) -> None:
        self.free_count += 1
        entries = self._trunk()
        if self.free_head != BLOCK_NONE and len(entries) < FREE_TRUNK_ENTRIES_MAX:
            entries.append(block_no)
            self._trunk_dirty = True
            return
        # No head trunk, or it is full: the freed block becomes the new head trunk.
        if self._trunk_dirty:
            self.pending[self.free_head] = self._trunk_image()
        self._trunk_entries = []
        self.free_head, link = block_no, self.free_head
        self._trunk_link = link
        self._trunk_dirty = True

    def _trunk_image(self) -> bytes:
        entries = self._trunk()
        payload = struct.pack(f"<I{len(entries)}I", len(entries), *entries)
        return _core.seal_image(
            payload, self.free_head, self.db_id, BT_FREE, count=len(entries), link=self._trunk_link
        )

    def take_pending(self) -> list[tuple[int, bytes]]:
        if self._trunk_dirty and self.free_head != BLOCK_NONE:
            self.pending[self.free_head] = self._trunk_image()
        self._trunk_dirty = False
        out = sorted(self.pending.items())
        self.pending.clear()
        return out


def write_runs(file, images: list[tuple[int, bytes]]) -> None:
    """Write sorted (block_no, image) pairs: runs of consecutive blocks coalesce into
    one write each, and the runs go out together (`File.pwrite_scatter`).

    Order among the writes is not defined: only the fdatasync that follows makes any
    of them count, which is why every caller ends the phase with a sync.
    """
    if isinstance(file, _core.DirectFile):
        # Real files: one call in C. Each run, split into pieces of at most 2 MiB
        # (a long run then still has several writes in flight), is copied into a
        # reused aligned buffer and written with one pwrite, up to WRITE_QUEUE_DEPTH
        # of them in flight, copies overlapping writes.
        _core._wj_write_runs(
            file, images, min(WRITE_RUN_BLOCKS_MAX, (2 << 20) // BLOCK_SIZE), WRITE_QUEUE_DEPTH
        )
        return
    runs = []
    i = 0
    n = len(images)
    while i < n:
        j = i + 1
        while j < n and images[j][0] == images[j - 1][0] + 1 and j - i < WRITE_RUN_BLOCKS_MAX:
            j += 1
        # A run is a list of images: the file copies them once into its buffer.
        runs.append((images[i][0] * BLOCK_SIZE, [img for _, img in images[i:j]]))
        i = j
    # Long runs are sequential writes already: one pwritev each through the file's
    # reused aligned buffer. Short scattered runs go out together with a queue
    # (pwrite_scatter), bounded per call by IO_CALL_BYTES_MAX.
    pwritev = getattr(file, "pwritev_at", None)
    batch: list = []
    size = 0
    for run in runs:
        if pwritev is not None and len(run[1]) >= WRITE_RUN_SEQUENTIAL_BLOCKS_MIN:
            pwritev(run[0], run[1])
            continue
        if batch and size + len(run[1]) * BLOCK_SIZE > IO_CALL_BYTES_MAX:
            file.pwrite_scatter(batch, WRITE_QUEUE_DEPTH)
            batch, size = [], 0
        batch.append(run)
        size += len(run[1]) * BLOCK_SIZE
    if batch:
        file.pwrite_scatter(batch, WRITE_QUEUE_DEPTH)
