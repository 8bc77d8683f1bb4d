"""The integrity walk: an offline check of one database file.

Owns nothing and changes nothing: it opens the file read-only through the file-system
seam and reads every block. It checks what a structural bug or a bad disk could
break: every block's checksum and self-identification; the header; key order within
each node and against the bounds its parent gives it; levels (every leaf at 0, a
child one below its parent); no empty node below the root; pointers within the
file; overflow chains (type, length); the free list (type, count); and the
accounting: every block from 1 to the high-water mark is reachable exactly once, as
a tree node, an overflow block or a free block.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from . import _core
from .blockstore import BlockStore
from .constants import BLOCK_NONE, BLOCK_SIZE, BT_OVERFLOW
from .errors import CorruptError

OVERFLOW_TAG = 5
ERRORS_MAX = 100  # a badly broken file stops the report here


@dataclass
class IntegrityReport:
    path: str
    blocks: int = 0  # high-water mark (including the header block)
    tree_blocks: int = 0
    leaf_blocks: int = 0
    overflow_blocks: int = 0
    free_blocks: int = 0
    nodes: int = 0  # key/value entries in leaves
    height: int = 0
    wij_state: str = "not checked"  # the instance's WIJ (set when walking a directory)
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    def summary(self) -> str:
        state = "OK" if self.ok else f"{len(self.errors)} ERROR(S)"
        return (
            f"{self.path}: {state}: {self.nodes} nodes, height {self.height}, "
            f"{self.blocks} blocks ({self.tree_blocks} tree, {self.leaf_blocks} leaves, "
            f"{self.overflow_blocks} overflow, {self.free_blocks} free); WIJ {self.wij_state}"
        )

    def as_dict(self) -> dict:
        return {
            "path": self.path,
            "wij_state": self.wij_state,
            "ok": self.ok,
            "blocks": self.blocks,
            "tree_blocks": self.tree_blocks,
            "leaf_blocks": self.leaf_blocks,
            "overflow_blocks": self.overflow_blocks,
            "free_blocks": self.free_blocks,
            "nodes": self.nodes,
            "height": self.height,
            "errors": list(self.errors),
        }


class _Walk:
    def __init__(self, store: BlockStore, report: IntegrityReport, progress=None) -> None:
        self.store = store
        self.report = report
        self.owner: dict[int, str] = {}  # block -> what claimed it
        self.progress = progress

    def error(self, message: str) -> None:
        if len(self.report.errors) < ERRORS_MAX:
            self.report.errors.append(message)

    def claim(self, block_no: int, what: str) -> bool:
        if not 0 < block_no < self.store.block_count:
            self.error(
                f"{what}: pointer to block {block_no} outside 1..{self.store.block_count - 1}"
            )
            return False
        if block_no in self.owner:
            self.error(f"block {block_no} is claimed twice: by {self.owner[block_no]} and {what}")
            return False
        self.owner[block_no] = what
        if self.progress is not None:
            self.progress(1)
        return True

    def read(self, block_no: int) -> bytes | None:
        try:
            return self.store.read_image(block_no)
        except CorruptError as exc:
            self.error(str(exc))
            return None

    def tree(self) -> None:
        root = self.store.root
        # stack entries: block, expected level (None for the root), low, high, what
        stack: list[tuple[int, int | None, bytes | None, bytes | None, str]] = [
            (root, None, None, None, "header root")
        ]
        while stack:
            block_no, level, low, high, what = stack.pop()
            if not self.claim(block_no, what):
                continue
            image = self.read(block_no)
            if image is None:
                continue
            try:
                node = _core.decode_node(image, block_no, self.store.db_id, self.store.path)
            except CorruptError as exc:
                self.error(str(exc))
                continue
            if level is None:
                self.report.height = node.level + 1
            elif node.level != level:
                self.error(f"block {block_no}: level {node.level}, its parent expects {level}")
                continue
            self.report.tree_blocks += 1
            keys = node.keys
            if block_no != root and not keys:
                self.error(f"block {block_no}: empty node below the root")
            for i in range(1, len(keys)):
                if not keys[i - 1] < keys[i]:
                    self.error(f"block {block_no}: keys {i - 1} and {i} out of order")
                    break
            if node.level > 0:
                if keys and keys[0] != b"":
                    self.error(f"block {block_no}: first key of an internal block is not empty")
                first_real = keys[1] if len(keys) > 1 else None
            else:
                first_real = keys[0] if keys else None
            if low is not None and first_real is not None and first_real < low:
                self.error(f"block {block_no}: key below its parent's bound")
            if high is not None and keys and keys[-1] >= high:
                self.error(f"block {block_no}: key at or above its parent's bound")
            if node.level == 0:
                self.report.leaf_blocks += 1
                self.report.nodes += len(keys)
                for k, v in zip(keys, node.vals, strict=True):
                    if len(v) == 9 and v[0] == OVERFLOW_TAG:
                        self.overflow(block_no, k, v)
                continue
            n = len(node.children)
            for i in range(n - 1, -1, -1):
                child_low = keys[i] if i > 0 else low
                child_high = keys[i + 1] if i + 1 < n else high
                stack.append(
                    (
                        node.children[i],
                        node.level - 1,
                        child_low,
                        child_high,
                        f"child {i} of block {block_no}",
                    )
                )

    def overflow(self, leaf: int, key: bytes, ref: bytes) -> None:
        block_no = int.from_bytes(ref[1:5], "little")
        total = int.from_bytes(ref[5:9], "little")
        got = 0
        while block_no != BLOCK_NONE and got < total:
            if not self.claim(block_no, f"overflow chain of a value in block {leaf}"):
                return
            image = self.read(block_no)
            if image is None:
                return
            btype, _lvl, _count, used, link, _pos = _core.image_fields(image)
            if btype != BT_OVERFLOW:
                self.error(f"block {block_no}: overflow chain reaches a block of type {btype}")
                return
            self.report.overflow_blocks += 1
            got += used
            block_no = link
        if got != total:
            self.error(f"value in block {leaf}: overflow chain holds {got} bytes, expected {total}")

    def free_list(self) -> None:
        """Walk the trunks: each is a FREE block listing free block numbers."""
        block_no = self.store.free_head
        seen = 0
        while block_no != BLOCK_NONE:
            if not self.claim(block_no, "the free list (trunk)"):
                return
            try:
                link, entries = self.store._read_trunk(block_no)
            except CorruptError as exc:
                self.error(str(exc))
                return
            seen += 1
            for entry in entries:
                if self.claim(entry, f"free-list trunk {block_no}"):
                    seen += 1
            block_no = link
        self.report.free_blocks = seen
        if seen != self.store.free_count:
            self.error(f"free list holds {seen} blocks, the header says {self.store.free_count}")


def check_file(path: str, *, fs=None, progress=None) -> IntegrityReport:
    """Walk one database file; the report lists every problem found (up to ERRORS_MAX)."""
    from .fileio import default_fs

    fs = fs if fs is not None else default_fs()
    report = IntegrityReport(path=path)
    try:
        store = BlockStore(fs, path, create=False, direct="optional")
    except CorruptError as exc:
        report.errors.append(str(exc))
        return report
    try:
        report.blocks = store.block_count
        size = store.file.size()
        if size < store.block_count * BLOCK_SIZE:
            report.errors.append(
                f"{path}: file holds {size // BLOCK_SIZE} blocks, the header says "
                f"{store.block_count}"
            )
        walk = _Walk(store, report, progress)
        walk.tree()
        walk.free_list()
        lost = [b for b in range(1, store.block_count) if b not in walk.owner]
        if lost:
            walk.error(f"{len(lost)} blocks belong to nothing (first: {lost[:10]})")
    finally:
        store.close()
    return report


def check(path: str, *, fs=None, progress=None) -> list[IntegrityReport]:
    """Walk a database file, or every database file (`*.dat`) of an instance directory."""
    from .database import DATABASE_FILE_SUFFIX
    from .fileio import default_fs

    fs = fs if fs is not None else default_fs()
    path = os.fspath(path)
    if path.endswith(DATABASE_FILE_SUFFIX):
        return [check_file(path, fs=fs, progress=progress)]
    names = sorted(n for n in fs.listdir(path) if n.endswith(DATABASE_FILE_SUFFIX))
    if not names:
        raise FileNotFoundError(2, "no database files (*.dat) in", path)
    reports = [check_file(os.path.join(path, n), fs=fs, progress=progress) for n in names]
    _add_wij_state(fs, path, reports)
    return reports


def _add_wij_state(fs, path: str, reports: list[IntegrityReport]) -> None:
    """The instance's WIJ state goes on every report: an active WIJ means the database
    files are mid-cycle (recovery on open finishes it), which the walk reports."""
    from .constants import WIJ_FILE_NAME
    from .wij import wij_status

    wij_path = os.path.join(path, WIJ_FILE_NAME)
    if not fs.exists(wij_path):
        state = "none"
    else:
        try:
            st = wij_status(wij_path, fs=fs)
            state = f"{st.state} (cycle {st.cycle}{', not stopped cleanly' if st.running else ''})"
            if st.recovery_pending:
                for r in reports:
                    r.errors.append(
                        f"{wij_path}: WIJ recovery pending for cycle {st.cycle} "
                        f"({st.entries} blocks): open the instance to recover"
                    )
        except CorruptError as exc:
            state = "corrupt"
            for r in reports:
                r.errors.append(str(exc))
    for r in reports:
        r.wij_state = state
