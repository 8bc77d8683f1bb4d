"""The cross-member check (IRIS DataCheck): compare two databases while both run.

Owns both halves of `irisrep check` (docs/datacheck.md):

- the member side, `hash_range` and `read_range`, which the client listener serves as
  the RANGE_HASH and RANGE_ITEMS ops (and `LocalSource` calls in process): a hash and
  a node count of a half-open range [lo, hi) of encoded keys across all globals, in
  key order, or the nodes themselves;
- the checker side, `check(a, b)`: hash the key space in ranges on both sides,
  bisect the ranges whose hashes differ down to a leaf size, recheck those after the
  copy has caught up, and report only the differences that persist.

Promises:
- the member side is read only and validates every argument before using it (a
  bound's length before it is compared, a limit's range), raising a typed error;
- one request does bounded work (`DATACHECK_RANGE_NODES_MAX` nodes and
  `DATACHECK_RANGE_BYTES_MAX` bytes: past them it hashes a prefix of the range and
  says where it stopped), and it holds the database lock for at most
  `DATACHECK_LOCK_NODES_MAX` nodes or `DATACHECK_LOCK_BYTES_MAX` bytes at a time, so
  commits and dejournaling go on between holds;
- a difference is reported as unmatched only when it outlived the rechecks; one that
  went away once the copy caught up is reported as matched after recheck. An
  unmatched range is "confirmed" when both sides hashed it as one snapshot at the
  same journal position (a copy's state at position P is the primary's at P, so
  those hashes can only differ if the data does).
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import xxhash

from . import _core
from .constants import (
    CLIENT_FRAME_BYTES_MAX,
    CLIENT_ITEMS_PAGE_MAX,
    DATACHECK_BOUND_BYTES_MAX,
    DATACHECK_CATCHUP_TIMEOUT_S,
    DATACHECK_LEAF_NODES_DEFAULT,
    DATACHECK_LOCK_BYTES_MAX,
    DATACHECK_LOCK_NODES_MAX,
    DATACHECK_RANGE_BYTES_MAX,
    DATACHECK_RANGE_NODES_MAX,
    DATACHECK_RECHECK_TRIES,
    DATACHECK_RECHECKS_DEFAULT,
    DATACHECK_WAIT_MS_MAX,
)
from .errors import IllegalValueError, IrisrepError, SubscriptError

__all__ = [
    "RangeHash",
    "Difference",
    "Mismatch",
    "Report",
    "LocalSource",
    "RemoteSource",
    "hash_range",
    "read_range",
    "stream_position",
    "current_position",
    "check",
    "check_members",
]

# A RANGE_ITEMS page stops before its nodes pass this (the reply's framing fits in
# the rest of a client frame); one node always fits alone.
ITEMS_PAGE_BYTES = CLIENT_FRAME_BYTES_MAX - 64 * 1024
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_WAIT_POLL_S = 0.0005  # a waiting request looks at the position this often
_RECHECK_PAUSE_S = 0.02  # between two tries of a recheck round (times the try number)
_ROUND_PAUSE_S = 0.2  # between two recheck rounds (times the round number)


# --- the member side -----------------------------------------------------------------


@dataclass(frozen=True)
class RangeHash:
    """One side's answer for [lo, hi): `count` nodes hashed into `digest`, over
    [lo, stop) when `stop` is set (the request's work bound came first), else over
    all of [lo, hi). `mid` is the key of node count // 2 (a split point inside the
    hashed part; None under 2 nodes). `position` is the database's journal stream
    position when the hash ended; `exact` says the hash is one snapshot of the
    database exactly at `position`."""

    count: int
    digest: bytes
    stop: bytes | None
    mid: bytes | None
    position: int
    exact: bool

    @classmethod
    def from_wire(cls, reply: Any) -> RangeHash:
        """A RANGE_HASH reply value, checked (a bad one is a bad member, not a crash)."""
        try:
            count, digest, stop, mid, position, exact = reply
            ok = (
                type(count) is int
                and count >= 0
                and type(digest) is bytes
                and len(digest) == 16
                and (stop is None or type(stop) is bytes)
                and (mid is None or type(mid) is bytes)
                and type(position) is int
                and type(exact) is bool
            )
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise IrisrepError(f"range_hash: malformed reply {str(reply)[:80]}")
        return cls(count, digest, stop, mid, position, exact)


def _check_bound(value: object, what: str) -> bytes:
    if type(value) is not bytes:
        raise SubscriptError(
            f"<SUBSCRIPT> {what}: a range bound is bytes, not {type(value).__name__}"
        )
    if len(value) > DATACHECK_BOUND_BYTES_MAX:
        raise SubscriptError(
            f"<SUBSCRIPT> {what}: a range bound is at most {DATACHECK_BOUND_BYTES_MAX} bytes, "
            f"not {len(value)}"
        )
    return value


def _check_range(lo: object, hi: object) -> tuple[bytes, bytes | None]:
    lo = _check_bound(lo, "lo")
    if hi is not None:
        hi = _check_bound(hi, "hi")
        if hi <= lo:
            raise SubscriptError("<SUBSCRIPT> range: hi must be above lo (the range is [lo, hi))")
    return lo, hi


def _check_count(value: object, what: str, most: int) -> int:
    if type(value) is not int or not 1 <= value <= most:
        raise IllegalValueError(f"<ILLEGAL VALUE> {what}: {value!r} must be an int in 1..{most}")
    return value


def _check_wait(value: object) -> int | None:
    if value is not None and (type(value) is not int or value < 0):
        raise IllegalValueError(
            f"<ILLEGAL VALUE> wait_position: {value!r} must be None or an int >= 0"
        )
    return value


def _position_now(db) -> int:
    """The stream position without the lock (only to wait on: an int read is atomic)."""
    return db.applied_position if db.mirror_copy else db.journal.end_position


def stream_position(db) -> tuple[int, bool]:
    """Under the database lock: (journal stream position, exact).

    On a mirror copy, the applied position, which the tree reflects exactly
    (dejournaling moves it under the same lock). On a primary, the journal's end,
    which is exact only while every logged record has been handed to the journal
    (the tree changes before its record is written out, so a commit in flight makes
    the tree run ahead of the end), and never without journaling."""
    if db.mirror_copy:
        return db.applied_position, True
    committer = db.committer
    # `_written` counts records handed to the journal; it catches up with `logged`
    # when the group leader's write returns. No public property says it yet.
    written = getattr(committer, "_written", None)
    return db.journal.end_position, bool(db.journaling) and written == committer.logged


def current_position(db) -> int:
    """The database's stream position, read under its lock (the STREAM_POSITION op)."""
    with db._lock:
        db._check_open()
        return stream_position(db)[0]


def _wait_position(db, target: int | None) -> None:
    """Wait (bounded) until the database's position reaches target: a copy that is
    asked about a state the other side already has first catches up to it."""
    if target is None:
        return
    deadline = time.monotonic() + DATACHECK_WAIT_MS_MAX / 1000.0
    while _position_now(db) < target and time.monotonic() < deadline:
        time.sleep(_WAIT_POLL_S)


def hash_range(
    db,
    lo: bytes,
    hi: bytes | None,
    limit: int = DATACHECK_RANGE_NODES_MAX,
    wait_position: int | None = None,
) -> RangeHash:
    """xxh3-128 and count of the nodes with lo <= key < hi (hi None: to the end), all
    globals, in key order; each node as u16 key length, key, u32 value length, value
    (the encoded value, whole). At most `limit` nodes and DATACHECK_RANGE_BYTES_MAX
    bytes: past them the answer covers [lo, stop). With `wait_position`, first waits
    (at most DATACHECK_WAIT_MS_MAX) until the position reaches it."""
    lo, hi = _check_range(lo, hi)
    limit = _check_count(limit, "limit", DATACHECK_RANGE_NODES_MAX)
    wait_position = _check_wait(wait_position)
    _wait_position(db, wait_position)
    h = xxhash.xxh3_128()
    keys: list[bytes] = []
    nbytes = 0
    stop = None
    tree = db.tree
    cursor = None
    first_mod = None
    done = False
    while not done:
        # One bounded hold of the lock; the cursor re-seeks by itself after a change.
        with db._lock:
            db._check_open()
            if cursor is None:
                cursor = tree.seek(lo)
                first_mod = tree.mod_count
            hold_nodes = hold_bytes = 0
            while hold_nodes < DATACHECK_LOCK_NODES_MAX and hold_bytes < DATACHECK_LOCK_BYTES_MAX:
                item = cursor.take(1, hi)
                if not item:
                    done = True
                    break
                key, stored = item[0]
                if len(keys) >= limit or nbytes >= DATACHECK_RANGE_BYTES_MAX:
                    stop, done = key, True
                    break
                value = tree.load_value(stored)
                h.update(_U16.pack(len(key)))
                h.update(key)
                h.update(_U32.pack(len(value)))
                h.update(value)
                keys.append(key)
                size = len(key) + len(value)
                nbytes += size
                hold_nodes += 1
                hold_bytes += size
            if done:
                position, exact = stream_position(db)
                # No change anywhere in the tree since the first hold: one snapshot.
                exact = exact and tree.mod_count == first_mod
    count = len(keys)
    return RangeHash(
        count, h.digest(), stop, keys[count // 2] if count >= 2 else None, position, exact
    )


def read_range(
    db,
    lo: bytes,
    hi: bytes | None,
    count: int = CLIENT_ITEMS_PAGE_MAX,
    wait_position: int | None = None,
    page_bytes: int = ITEMS_PAGE_BYTES,
) -> tuple[tuple, bool, int]:
    """(nodes, more, position): up to `count` (key, encoded value) pairs of [lo, hi)
    in key order, fewer when they would pass `page_bytes` (one always fits); `more`
    says nodes follow (the next page starts at the last key + b"\\x00")."""
    lo, hi = _check_range(lo, hi)
    count = _check_count(count, "count", CLIENT_ITEMS_PAGE_MAX)
    wait_position = _check_wait(wait_position)
    _wait_position(db, wait_position)
    nodes: list[tuple[bytes, bytes]] = []
    size = 0
    more = False
    tree = db.tree
    cursor = None
    done = False
    while not done:
        with db._lock:
            db._check_open()
            if cursor is None:
                cursor = tree.seek(lo)
            hold_nodes = hold_bytes = 0
            while hold_nodes < DATACHECK_LOCK_NODES_MAX and hold_bytes < DATACHECK_LOCK_BYTES_MAX:
                item = cursor.take(1, hi)
                if not item:
                    done = True
                    break
                key, stored = item[0]
                if len(nodes) >= count:
                    more = done = True
                    break
                value = tree.load_value(stored)
                node_size = len(key) + len(value) + 16
                if nodes and size + node_size > page_bytes:
                    more = done = True
                    break
                nodes.append((key, value))
                size += node_size
                hold_nodes += 1
                hold_bytes += node_size
            if done:
                position = stream_position(db)[0]
    return tuple(nodes), more, position


# --- sources: one side of a check ------------------------------------------------------


class LocalSource:
    """A Database in this process as one side of a check."""

    def __init__(self, db, name: str | None = None) -> None:
        self.db = db
        self.name = name or str(db.path)

    def range_hash(self, lo, hi, limit, wait_position=None) -> RangeHash:
        return hash_range(self.db, lo, hi, limit, wait_position)

    def range_items(self, lo, hi, count, wait_position=None) -> tuple[tuple, bool, int]:
        return read_range(self.db, lo, hi, count, wait_position)

    def position(self) -> int:
        return current_position(self.db)


class RemoteSource:
    """A member, through a client connection (`irisrep.connect_member`), as one side."""

    def __init__(self, conn, name: str | None = None) -> None:
        self.conn = conn
        self.name = name or str(conn.address)

    def range_hash(self, lo, hi, limit, wait_position=None) -> RangeHash:
        return RangeHash.from_wire(self.conn.range_hash(lo, hi, limit, wait_position))

    def range_items(self, lo, hi, count, wait_position=None) -> tuple[tuple, bool, int]:
        reply = self.conn.range_items(lo, hi, count, wait_position)
        try:
            nodes, more, position = reply
            good = (
                type(nodes) is tuple
                and all(
                    type(n) is tuple and len(n) == 2 and all(type(x) is bytes for x in n)
                    for n in nodes
                )
                and type(more) is bool
                and type(position) is int
            )
        except (TypeError, ValueError):
            good = False
        if not good:
            raise IrisrepError(f"range_items: malformed reply {str(reply)[:80]}")
        return nodes, more, position

    def position(self) -> int:
        position = self.conn.stream_position()
        if type(position) is not int:
            raise IrisrepError(f"stream_position: malformed reply {position!r}")
        return position


def _source(x: Any, name: str | None):
    """A source for one side: a Database, a Connection, or a source as it is."""
    if isinstance(x, (LocalSource, RemoteSource)):
        return x
    if hasattr(x, "range_hash") and hasattr(x, "stream_position"):
        return RemoteSource(x, name)  # a Connection
    if hasattr(x, "tree") and hasattr(x, "journal"):
        return LocalSource(x, name)  # a Database
    if all(hasattr(x, m) for m in ("range_hash", "range_items", "position")):
        return x
    raise TypeError(f"cannot check {x!r}: give a Database, a Connection or a source")


# --- the report ----------------------------------------------------------------------


def show_key(key: bytes | None, *, end: str = "end") -> str:
    """An encoded key as ^name(subs); b"" as "start" and None as `end`."""
    if key is None:
        return end
    if key == b"":
        return "start"
    try:
        return _core.format_reference(*_core.decode_key(key))
    except (IrisrepError, ValueError, IndexError):
        return "0x" + key.hex()  # a bound between keys (a key + 0x00), shown raw


def show_value(value: bytes | None, limit: int = 60) -> str:
    if value is None:
        return "-"
    try:
        text = repr(_core.decode_value(value))
    except (IrisrepError, ValueError):
        text = "0x" + value.hex()
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _plural(n: int, what: str) -> str:
    return f"{n} {what}" if n == 1 else f"{n} {what}s"


@dataclass
class Difference:
    """One key that differs: on A only, on B only, or with different values."""

    key: bytes
    kind: str  # "only_a", "only_b", "different"
    value_a: bytes | None
    value_b: bytes | None

    def as_dict(self) -> dict:
        return {
            "key": show_key(self.key),
            "key_hex": self.key.hex(),
            "kind": self.kind,
            "value_a": show_value(self.value_a, 200) if self.value_a is not None else None,
            "value_b": show_value(self.value_b, 200) if self.value_b is not None else None,
        }


@dataclass
class Mismatch:
    """A leaf range [lo, hi) whose hashes differ, and the keys that differ in it."""

    lo: bytes
    hi: bytes | None
    count_a: int
    count_b: int
    position_a: int
    position_b: int
    confirmed: bool  # both hashed it as one snapshot at the same journal position
    differences: list[Difference] = field(default_factory=list)

    def range_text(self) -> str:
        return f"[{show_key(self.lo)} .. {show_key(self.hi)})"

    def as_dict(self) -> dict:
        return {
            "lo": show_key(self.lo),
            "hi": show_key(self.hi),
            "lo_hex": self.lo.hex(),
            "hi_hex": None if self.hi is None else self.hi.hex(),
            "count_a": self.count_a,
            "count_b": self.count_b,
            "position_a": self.position_a,
            "position_b": self.position_b,
            "confirmed": self.confirmed,
            "differences": [d.as_dict() for d in self.differences],
        }


@dataclass
class Report:
    """What `check` found. `ok`: no unmatched range (exit status 0)."""

    member_a: str
    member_b: str
    nodes: int = 0  # nodes of A compared in the first pass
    ranges_checked: int = 0  # hash pairs, rechecks included
    unmatched: list[Mismatch] = field(default_factory=list)
    matched_after_recheck: list[tuple[bytes, bytes | None]] = field(default_factory=list)
    recheck_rounds: int = 0
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.unmatched

    def as_dict(self) -> dict:
        return {
            "ok": self.ok,
            "result": "matched" if self.ok else "unmatched",
            "member_a": self.member_a,
            "member_b": self.member_b,
            "nodes": self.nodes,
            "ranges_checked": self.ranges_checked,
            "recheck_rounds": self.recheck_rounds,
            "unmatched": [m.as_dict() for m in self.unmatched],
            "matched_after_recheck": [
                {"lo": show_key(lo), "hi": show_key(hi)} for lo, hi in self.matched_after_recheck
            ],
            "notes": list(self.notes),
            "seconds": round(self.seconds, 3),
        }

    def lines(self) -> list[str]:
        """The report as text, one line per range and per differing key."""
        a, b = self.member_a, self.member_b
        again = len(self.matched_after_recheck)
        tail = f"; {again} matched after recheck" if again else ""
        what = f"{_plural(self.nodes, 'node')} in {_plural(self.ranges_checked, 'range')} checked{tail}"
        if self.ok:
            out = [f"{a} against {b}: matched ({what}, {self.seconds:.2f} s)"]
        else:
            n = len(self.unmatched)
            out = [
                f"{a} against {b}: UNMATCHED: {_plural(n, 'range')} "
                f"{'differs' if n == 1 else 'differ'} ({what}, {self.seconds:.2f} s)"
            ]
        for m in self.unmatched:
            if not m.confirmed:
                how = (
                    f"still different after {_plural(self.recheck_rounds, 'recheck round')}"
                    if self.recheck_rounds
                    else "not rechecked"
                )
            elif m.position_a == m.position_b:
                how = f"confirmed at journal position {m.position_a} on both"
            else:
                how = "confirmed: neither side changed while it was rechecked"
            out.append(
                f"  unmatched {m.range_text()}: {a} {_plural(m.count_a, 'node')}, "
                f"{b} {_plural(m.count_b, 'node')} ({how})"
            )
            for d in m.differences:
                key = show_key(d.key)
                if d.kind == "only_a":
                    out.append(f"    {key}: only on {a}: {show_value(d.value_a)}")
                elif d.kind == "only_b":
                    out.append(f"    {key}: only on {b}: {show_value(d.value_b)}")
                else:
                    out.append(
                        f"    {key}: different values: {a} {show_value(d.value_a)}, "
                        f"{b} {show_value(d.value_b)}"
                    )
            if not m.differences:
                out.append("    (no differing key when the nodes were read: it kept changing)")
        for lo, hi in self.matched_after_recheck:
            out.append(f"  matched after recheck [{show_key(lo)} .. {show_key(hi)})")
        out.extend(f"  note: {n}" for n in self.notes)
        return out


# --- the checker ---------------------------------------------------------------------


@dataclass
class _Suspect:
    """A leaf range whose hashes differed, with the hashes that differed."""

    lo: bytes
    hi: bytes | None
    ha: RangeHash
    hb: RangeHash
    confirmed: bool


class _Checker:
    def __init__(self, a, b, report: Report, leaf_nodes, range_nodes, same_stream, progress):
        self.a, self.b = a, b
        self.report = report
        self.leaf_nodes = leaf_nodes
        self.range_nodes = range_nodes
        self.same_stream = same_stream
        self.progress = progress
        self.a_leads = True
        # Waiting for the leading side's position is off after one wait timed out
        # (a copy that is not catching up), until a recheck round finds it caught up.
        self.waiting = same_stream
        self.seen: dict[tuple[bytes, bytes | None], tuple[int, int]] = {}

    def lead(self) -> None:
        """Hash the side that is ahead in the stream first; the other then waits for
        that position (the copy catches up to the state just hashed)."""
        self.a_leads = self.a.position() >= self.b.position()

    def _wait_for(self, position: int) -> int | None:
        return position if self.waiting else None

    def hash_pair(self, lo: bytes, hi: bytes | None) -> tuple[RangeHash, RangeHash]:
        first, second = (self.a, self.b) if self.a_leads else (self.b, self.a)
        h1 = first.range_hash(lo, hi, self.range_nodes)
        h2 = second.range_hash(lo, hi, self.range_nodes, self._wait_for(h1.position))
        if self.waiting and h2.position < h1.position:
            self.waiting = False
        self.report.ranges_checked += 1
        return (h1, h2) if self.a_leads else (h2, h1)

    def _confirmed(self, lo: bytes, hi: bytes | None, ha: RangeHash, hb: RangeHash) -> bool:
        """The difference is in the data, not in the timing: both hashes are snapshots
        at one position of the same stream, or (unrelated databases) neither side
        changed since the range was last hashed."""
        if not (ha.exact and hb.exact):
            return False
        if self.same_stream:
            return ha.position == hb.position
        before = self.seen.get((lo, hi))
        self.seen[(lo, hi)] = (ha.position, hb.position)
        return before == (ha.position, hb.position)

    def compare(self, lo: bytes, hi: bytes | None, *, count: bool) -> list[_Suspect]:
        """Every leaf range of [lo, hi) whose hashes differ, in key order."""
        stack: list[tuple[bytes, bytes | None]] = [(lo, hi)]
        out: list[_Suspect] = []
        while stack:
            lo, hi = stack.pop()
            ha, hb = self.hash_pair(lo, hi)
            if ha.stop != hb.stop:
                # The work bound cut the two sides at different keys: narrow to the
                # nearer cut, where both hashes are whole, and go on from there.
                cut = min(s for s in (ha.stop, hb.stop) if s is not None)
                stack.append((cut, hi))
                stack.append((lo, cut))
                continue
            end = ha.stop if ha.stop is not None else hi
            if ha.stop is not None:
                stack.append((ha.stop, hi))
            if (ha.count, ha.digest) == (hb.count, hb.digest):
                if count:
                    self.report.nodes += ha.count
                self._progress()
                continue
            if max(ha.count, hb.count) <= self.leaf_nodes:
                if count:
                    self.report.nodes += ha.count
                out.append(_Suspect(lo, end, ha, hb, self._confirmed(lo, end, ha, hb)))
                self._progress()
                continue
            # Split where the side with more nodes has half of them on each side, so
            # each half holds fewer nodes in all than the range did (this ends).
            mid = ha.mid if ha.count >= hb.count else hb.mid
            stack.append((mid, end))
            stack.append((lo, mid))
        return out

    def _progress(self) -> None:
        if self.progress is not None:
            self.progress(self.report.ranges_checked, self.report.nodes)

    def wait_caught_up(self, target: int, timeout_s: float) -> bool:
        """Both sides at or past `target` (the copy has what the primary had)."""
        deadline = time.monotonic() + timeout_s
        while True:
            pa, pb = self.a.position(), self.b.position()
            if pa >= target and pb >= target:
                self.waiting = True
                return True
            if time.monotonic() >= deadline:
                self.report.notes.append(
                    f"rechecks stopped: {self.report.member_a} at position {pa} and "
                    f"{self.report.member_b} at {pb} did not both reach {target} "
                    f"within {timeout_s:g} s"
                )
                return False
            time.sleep(0.01)

    def recheck_round(self, suspects: list[_Suspect]) -> list[_Suspect]:
        """Hash the suspects again, several tries, until each matched (recorded as
        matched after recheck) or differed in a confirmed way (returned as unmatched).
        Leaves the rest in `suspects` (the caller's list) for the next round."""
        unmatched: list[_Suspect] = []
        for attempt in range(DATACHECK_RECHECK_TRIES):
            if attempt:
                time.sleep(_RECHECK_PAUSE_S * attempt)
            self.lead()
            still: list[_Suspect] = []
            for s in suspects:
                subs = self.compare(s.lo, s.hi, count=False)
                if not subs:
                    self.report.matched_after_recheck.append((s.lo, s.hi))
                elif all(x.confirmed for x in subs):
                    unmatched.extend(subs)
                else:
                    still.extend(subs)
            suspects[:] = still
            if not suspects:
                break
        return unmatched

    def differences(self, lo: bytes, hi: bytes | None) -> list[Difference]:
        """The keys of [lo, hi) that differ, read from the leading side first."""
        first, second = (self.a, self.b) if self.a_leads else (self.b, self.a)
        n1, p1 = _read_all(first, lo, hi, None)
        n2, _p2 = _read_all(second, lo, hi, self._wait_for(p1))
        nodes_a, nodes_b = (n1, n2) if self.a_leads else (n2, n1)
        diffs = []
        for k in sorted(set(nodes_a) | set(nodes_b)):
            va, vb = nodes_a.get(k), nodes_b.get(k)
            if va == vb:
                continue
            kind = "only_b" if va is None else "only_a" if vb is None else "different"
            diffs.append(Difference(k, kind, va, vb))
        return diffs


def _read_all(source, lo: bytes, hi: bytes | None, wait: int | None) -> tuple[dict, int]:
    out: dict[bytes, bytes] = {}
    position = 0
    while True:
        nodes, more, position = source.range_items(lo, hi, CLIENT_ITEMS_PAGE_MAX, wait)
        wait = None
        out.update(nodes)
        if not more or not nodes:
            return out, position
        lo = nodes[-1][0] + b"\x00"  # the smallest key after the last one
        if hi is not None and lo >= hi:
            return out, position


def _same_stream(sa, sb) -> bool:
    """Two local databases that are not mirror copies are unrelated instances: their
    journal positions say nothing about each other. Anything else is taken to be
    members of one mirror (one stream)."""
    local = isinstance(sa, LocalSource) and isinstance(sb, LocalSource)
    return not local or sa.db.mirror_copy or sb.db.mirror_copy


def check(
    a,
    b,
    *,
    leaf_nodes: int = DATACHECK_LEAF_NODES_DEFAULT,
    range_nodes: int = DATACHECK_RANGE_NODES_MAX,
    rechecks: int = DATACHECK_RECHECKS_DEFAULT,
    catchup_timeout_s: float = DATACHECK_CATCHUP_TIMEOUT_S,
    same_stream: bool | None = None,
    lo: bytes = b"",
    hi: bytes | None = None,
    name_a: str | None = None,
    name_b: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Report:
    """Compare the nodes of [lo, hi) (default: everything) on `a` and `b`: each a
    Database (`irisrep.open`), a Connection (`irisrep.connect_member`) or a source.

    The first pass hashes ranges of up to `range_nodes` nodes on both sides and
    bisects those that differ down to `leaf_nodes`. Then up to `rechecks` rounds:
    each waits until both sides have reached the highest journal position seen in
    those hashes and hashes each suspect range again (several tries, the copy
    waiting for the state the primary was hashed at); a range that matches is
    "matched after recheck", one that differs in one snapshot at the same position
    on both is unmatched and confirmed, and one still different after the last round
    is unmatched. With rechecks=0 every first-pass difference is reported.

    `same_stream`: the two are members of one mirror, so journal positions compare
    (default: yes, unless both are local databases that are not mirror copies).
    `progress(ranges_checked, nodes)` is called as ranges complete."""
    leaf_nodes = _check_count(leaf_nodes, "leaf_nodes", DATACHECK_LOCK_NODES_MAX)
    range_nodes = _check_count(range_nodes, "range_nodes", DATACHECK_RANGE_NODES_MAX)
    if type(rechecks) is not int or rechecks < 0:
        raise IllegalValueError(f"<ILLEGAL VALUE> rechecks: {rechecks!r} must be an int >= 0")
    leaf_nodes = min(leaf_nodes, range_nodes)
    lo, hi = _check_range(lo, hi)
    sa, sb = _source(a, name_a), _source(b, name_b)
    if same_stream is None:
        same_stream = _same_stream(sa, sb)
    t0 = time.monotonic()
    report = Report(sa.name, sb.name)
    checker = _Checker(sa, sb, report, leaf_nodes, range_nodes, bool(same_stream), progress)
    checker.lead()
    suspects = checker.compare(lo, hi, count=True)
    unmatched: list[_Suspect] = []
    for round_no in range(1, rechecks + 1):
        if not suspects:
            break
        if same_stream:
            # IRIS DataCheck: recheck only after the copy has caught up past where
            # the primary was when the difference was seen.
            target = max(max(s.ha.position, s.hb.position) for s in suspects)
            if not checker.wait_caught_up(target, catchup_timeout_s):
                break
        report.recheck_rounds = round_no
        unmatched.extend(checker.recheck_round(suspects))
        if suspects and round_no < rechecks:
            time.sleep(_ROUND_PAUSE_S * round_no)
    unmatched.extend(suspects)
    unmatched.sort(key=lambda s: s.lo)
    for s in unmatched:
        m = Mismatch(
            s.lo,
            s.hi,
            s.ha.count,
            s.hb.count,
            s.ha.position,
            s.hb.position,
            s.confirmed,
            checker.differences(s.lo, s.hi),
        )
        last = report.unmatched[-1] if report.unmatched else None
        if last is not None and last.hi == m.lo:
            # Leaf ranges that touch are one difference to the reader: one range.
            last.hi = m.hi
            last.count_a += m.count_a
            last.count_b += m.count_b
            last.position_a = max(last.position_a, m.position_a)
            last.position_b = max(last.position_b, m.position_b)
            last.confirmed = last.confirmed and m.confirmed
            last.differences.extend(m.differences)
        else:
            report.unmatched.append(m)
    report.seconds = time.monotonic() - t0
    return report


# --- members of a local deployment (irisrep check) ---------------------------------------


def check_members(
    dirpath,
    against: str,
    member: str | None = None,
    *,
    database: str | None = None,
    **options,
) -> Report:
    """`irisrep check --against B [--member A] [--database NAME]`: A (default: the
    member that answers as primary) against B, both members of the deployment in
    `dirpath` (deploy.py), through their client listeners, on database NAME (default
    DB) of each. DeployError for an unknown or missing member."""
    from .client import connect_member
    from .deploy import DeployError, credentials, load, member_statuses

    dep = load(dirpath)
    members = {m["name"]: m for m in dep["members"]}
    names = ", ".join(members)
    for who in (against, member):
        if who is not None and who not in members:
            raise DeployError(f"no member {who!r} in {dirpath} (members: {names})")
    if member is None:
        primaries = [s["member"] for s in member_statuses(dirpath) if s.get("role") == "primary"]
        if not primaries:
            raise DeployError(f"no member of {dirpath} answers as primary: give --member")
        member = primaries[0]
    if member == against:
        raise DeployError(f"{member} against itself: give another member to --against")
    user, password = credentials(dirpath)
    conns = []
    try:
        for who in (member, against):
            address = members[who]["client_address"]
            try:
                conns.append(connect_member(address, user=user, password=password))
            except (OSError, IrisrepError) as exc:
                raise DeployError(f"cannot connect to {who} at {address}: {exc}") from None
            if database is not None:
                conns[-1].use_database(database)  # DatabaseNotFoundError: not on that one
        return check(conns[0], conns[1], name_a=member, name_b=against, **options)
    finally:
        for c in conns:
            c.close()
