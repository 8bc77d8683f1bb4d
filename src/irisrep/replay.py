"""Journal records against the B+tree: make them, replay them, undo them.

A record is a 7-tuple (type, flags, db_id, txn, key, value, before): the hot path
builds plain tuples, the decoder returns journalcodec.Record (a NamedTuple); both
index the same way.

Owns the meaning of each record type (docs/journal-format.md) for the engine: how a
change becomes a record with its before-image, how roll-forward re-applies a record,
and how rollback, crash recovery and (later) the undo of a divergent mirror tail
reverse one. One mechanism for all three (DESIGN.md rule 5).

Promises: replay is idempotent (every record states an absolute result: "key holds
V", "range [lo, hi) is empty"), so recovery run twice, or over records already in
the database, gives the same state; undo restores exactly the before-image; these
functions do no I/O beyond the tree and journal nothing themselves (callers decide
what to journal, so the same code serves recovery and live rollback).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator

from .constants import JOURNAL_KILL_BEFORE_BYTES_MAX
from .errors import JournalCorruptError

# Record types and flags (docs/journal-format.md).
SET, KILL, ZKILL, INCREMENT, TSTART, TCOMMIT, TROLLBACK, MARKER = range(1, 9)
HAD_BEFORE = 1
UNDO = 2
DATA_TYPES = (SET, KILL, ZKILL, INCREMENT)

_NODE_ONLY = b"\x00"
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")


def encode_entries(entries: Iterable[tuple[bytes, bytes]]) -> bytes:
    """A KILL's before-image: u32 count, then (u16 key_len, key, u32 value_len, value)."""
    parts = []
    n = 0
    for k, v in entries:
        parts.append(_U16.pack(len(k)) + k + _U32.pack(len(v)) + v)
        n += 1
    return _U32.pack(n) + b"".join(parts)


def decode_entries(data: bytes) -> list[tuple[bytes, bytes]]:
    """Inverse of encode_entries; every length is checked against what remains."""
    if len(data) < 4:
        raise JournalCorruptError("KILL before-image shorter than its count")
    (n,) = _U32.unpack_from(data, 0)
    off = 4
    out = []
    for i in range(n):
        if off + 2 > len(data):
            raise JournalCorruptError(f"KILL before-image entry {i} runs past its end")
        (kl,) = _U16.unpack_from(data, off)
        off += 2
        if off + kl + 4 > len(data):
            raise JournalCorruptError(f"KILL before-image entry {i} runs past its end")
        k = data[off : off + kl]
        off += kl
        (vl,) = _U32.unpack_from(data, off)
        off += 4
        if off + vl > len(data):
            raise JournalCorruptError(f"KILL before-image value {i} runs past its end")
        out.append((k, data[off : off + vl]))
        off += vl
    if off != len(data):
        raise JournalCorruptError("KILL before-image has bytes after its last entry")
    return out


def kill_records(tree, record_cls, db_id: int, txn: int, lo: bytes, hi: bytes) -> Iterator:
    """The KILL records for removing [lo, hi): the range's entries, in chunks.

    A kill's before-image can be any size (a whole global); it is cut into several
    KILL records of at most JOURNAL_KILL_BEFORE_BYTES_MAX each, each naming its own
    sub-range, so that every record fits a frame and replays on its own. Reads the
    tree only; the caller kills after taking the records.
    """
    cursor = tree.seek(lo)
    start = lo
    chunk: list[tuple[bytes, bytes]] = []
    size = 0
    while True:
        batch = cursor.take(256, hi)
        if not batch:
            break
        for k, stored in batch:
            v = tree.load_value(stored)
            if chunk and size + len(k) + len(v) + 6 > JOURNAL_KILL_BEFORE_BYTES_MAX:
                # Close this chunk just below k: its range is [start, k).
                yield record_cls(KILL, 0, db_id, txn, start, k, encode_entries(chunk))
                start, chunk, size = k, [], 0
            chunk.append((k, v))
            size += len(k) + len(v) + 6
    yield record_cls(KILL, 0, db_id, txn, start, hi, encode_entries(chunk))


def apply(tree, rec) -> None:
    """Roll forward one data record (idempotent)."""
    t, _flags, _db, _txn, key, value, _before = rec
    if t == SET or t == INCREMENT:
        tree.set(key, value)
    elif t == KILL:
        tree.kill_range(key, value)
    elif t == ZKILL:
        tree.kill_range(key, key + _NODE_ONLY)
    elif t in (TSTART, TCOMMIT, TROLLBACK, MARKER):
        return
    else:
        raise JournalCorruptError(f"unknown journal record type {t}")


def undo(tree, rec, record_cls) -> list:
    """Reverse one data record from its before-image; returns the UNDO records that
    describe what was done, each with its own before-image (undo runs in reverse
    order, so the state it starts from is the one right after `rec`). $INCREMENT is
    never undone (IRIS)."""
    t, flags, db_id, txn, key, value, before = rec
    out = []
    if t == SET:
        if flags & HAD_BEFORE:
            tree.set(key, before)
            out.append(record_cls(SET, UNDO | HAD_BEFORE, db_id, txn, key, before, value))
        else:
            tree.kill_range(key, key + _NODE_ONLY)
            out.append(record_cls(ZKILL, UNDO | HAD_BEFORE, db_id, txn, key, b"", value))
    elif t == ZKILL:
        if flags & HAD_BEFORE:
            tree.set(key, before)
            out.append(record_cls(SET, UNDO, db_id, txn, key, before, b""))
    elif t == KILL:
        for k, v in decode_entries(before):
            tree.set(k, v)
            out.append(record_cls(SET, UNDO, db_id, txn, k, v, b""))
    return out
