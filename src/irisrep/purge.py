"""Journal purge: which journal files may go, why each other one stays, and the two
records that decision reads.

Owns the purge policy of an instance's journal (docs/backup.md, "Journal purge"):

- `decide_purge`: a pure function. Files (start and end positions, creation times)
  and what holds them (the instance's own recovery, the last good backup, a backup
  being taken, every mirror member's position and when it was last seen, the oldest
  open transaction, the age rule) in; the files that may go, and for every other
  file all the reasons it stays, out. No I/O, no clock.
- `backups.json` in the instance directory: the good backups taken of this database
  (`record_backup`, called by `backup.create_backup` once the backup file is
  complete), each with the journal position its restore rolls forward from.
- `mirror-members.json` in a primary's data directory: every member's last
  acknowledged position and when it was last connected (`member_positions`,
  `save_member_records`), so that a restarted primary still holds files back for a
  member that was lagging when it stopped.

Promises:
- Only the oldest files of the chain go, never the current file, and a file goes
  only when every rule lets it go; a kept file lists every rule that keeps it.
- A record is written whole or not at all (a temporary name, fsync, rename, the
  directory fsynced). Losing the newest record in a crash only keeps more: an older
  backup starts earlier, an older member position is lower.
- A damaged record is never guessed at: the purge refuses (JournalPurgeError) until
  it is repaired or removed, because guessing could remove a file a member or a
  backup still needs.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import threading
from collections.abc import Iterable, Sequence

from .constants import (
    BACKUP_RECORDS_MAX,
    BACKUPS_FILE_NAME,
    JOURNAL_PURGE_DAYS_MAX,
    JOURNAL_PURGE_MEMBER_LIMIT_DAYS,
    JOURNAL_PURGE_MEMBER_LIMIT_DAYS_MAX,
    MIRROR_MEMBERS_FILE_NAME,
)
from .errors import JournalPurgeError

__all__ = [
    "JournalFileSpan",
    "MemberPosition",
    "BackupRef",
    "KeptFile",
    "PurgeDecision",
    "decide_purge",
    "check_days",
    "record_backup",
    "read_backup_records",
    "last_backup",
    "load_member_records",
    "save_member_records",
    "member_positions",
    "write_json_durable",
    "purge_instance",
]

log = logging.getLogger("irisrep.purge")

DAY_NS = 86_400 * 1_000_000_000
RECORDS_VERSION = 1
_record_lock = threading.Lock()  # read-modify-write of backups.json within one process


# --- the decision (pure) ---------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class JournalFileSpan:
    """One journal file as the decision sees it: frames [start, end)."""

    name: str
    start: int
    end: int | None  # the next file's start; None: the current file (being written)
    created_ns: int  # unix ns, from the file's header


@dataclasses.dataclass(frozen=True)
class MemberPosition:
    """What the primary knows of one other mirror member."""

    name: str
    kind: str  # "failover", "async-dr" or "async-reporting"
    # Every frame before this is in the member: applied (a failover member or a DR
    # async must have dejournaled it) or received (a reporting async). None: never seen.
    position: int | None
    last_seen_ns: int | None  # when it was last connected (now, while it is)
    connected: bool = False


@dataclasses.dataclass(frozen=True)
class BackupRef:
    """The last good backup of the database (from backups.json)."""

    name: str
    journal_start: int  # a restore of it rolls forward from here
    time_end_ns: int


@dataclasses.dataclass
class KeptFile:
    name: str
    start: int
    end: int | None
    reasons: list[str]


@dataclasses.dataclass
class PurgeDecision:
    """What `decide_purge` decided; `removed` is filled in by whoever removes."""

    remove: list[str]  # the oldest files, in chain order, that every rule lets go
    kept: list[KeptFile]  # every other file, with all its reasons
    notes: list[str]  # rules that hold nothing back, and why (a member past the limit ...)
    holds: list[dict]  # each position that holds files: {"position", "why"}
    dry_run: bool = False
    removed: list[str] = dataclasses.field(default_factory=list)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> PurgeDecision:
        """The inverse of as_dict (a decision a member sent back as JSON)."""
        try:
            d = dict(d)
            d["kept"] = [KeptFile(**k) for k in d["kept"]]
            return cls(**d)
        except (KeyError, TypeError) as e:
            raise JournalPurgeError(f"not a purge decision: {e}") from None

    def lines(self) -> list[str]:
        """What `irisrep journal purge` prints."""
        verb = "would remove" if self.dry_run else "removed"
        gone = self.remove if self.dry_run else self.removed
        out = [f"{verb} {len(gone)} journal file(s)" + (f": {', '.join(gone)}" if gone else "")]
        for k in self.kept:
            span = f"{k.start}..{'end' if k.end is None else k.end}"
            out.append(f"kept {k.name} ({span}): " + "; ".join(k.reasons))
        out += [f"note: {n}" for n in self.notes]
        return out


def check_days(what: str, value: object, maximum: float) -> float:
    """A number of days in 0..maximum (JournalPurgeError otherwise)."""
    ok = (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and 0 <= value <= maximum
    )
    if not ok:
        raise JournalPurgeError(f"{what}: {value!r} is not a number of days in 0..{maximum:g}")
    return float(value)


def _ago(ns: int) -> str:
    s = max(0, ns) / 1e9
    if s < 120:
        return f"{s:.1f} s"
    if s < 7200:
        return f"{s / 60:.0f} min"
    if s < 2 * 86400:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} days"


def decide_purge(
    files: Sequence[JournalFileSpan],
    *,
    now_ns: int,
    older_than_days: float,
    recovery_from: int,
    backup: BackupRef | None = None,
    backup_running_start: int | None = None,
    members: Iterable[MemberPosition] = (),
    member_limit_days: float = JOURNAL_PURGE_MEMBER_LIMIT_DAYS,
    oldest_open_txn: int | None = None,
) -> PurgeDecision:
    """Which of `files` (the journal's chain, oldest first) may be removed.

    A file [start, end) may go only when all of these hold:
    - it is not the current file;
    - it was created more than `older_than_days` ago;
    - recovery on open no longer reads it: end <= `recovery_from` (the smaller of the
      checkpoint and the transaction floor);
    - it ends before the last good backup's journal start (a restore of that backup
      rolls forward from there), and before the start of a backup being taken;
    - every mirror member has it: end <= the member's position (applied for the
      backup and DR asyncs, received for reporting asyncs). A member never seen, or
      disconnected (last seen) more than `member_limit_days` ago, holds nothing back;
    - no open transaction began in it or before: end <= `oldest_open_txn`.
    Only a prefix of the chain goes: a file after a kept one is kept too (the chain
    must stay whole for recovery and for members catching up), saying so.
    """
    older_than_days = check_days("older_than_days", older_than_days, JOURNAL_PURGE_DAYS_MAX)
    member_limit_days = check_days(
        "member_limit_days", member_limit_days, JOURNAL_PURGE_MEMBER_LIMIT_DAYS_MAX
    )
    prev = None
    for i, f in enumerate(files):
        last = i == len(files) - 1
        if (f.end is None) != last or (f.end is not None and f.end < f.start):
            raise JournalPurgeError(
                f"journal file {f.name}: start {f.start}, end {f.end}: not a chain "
                f"(only the last file is open-ended)"
            )
        if prev is not None and f.start != prev.end:
            raise JournalPurgeError(
                f"journal file {f.name} starts at {f.start}, the file before it ends at "
                f"{prev.end}: not a chain"
            )
        prev = f

    notes: list[str] = []
    holds: list[tuple[int, str]] = [
        (
            recovery_from,
            f"recovery on open reads from {recovery_from} (the checkpoint or the "
            f"transaction floor)",
        )
    ]
    if oldest_open_txn is not None:
        holds.append((oldest_open_txn, f"a transaction open since position {oldest_open_txn}"))
    if backup is not None:
        holds.append(
            (
                backup.journal_start,
                f"the last good backup {backup.name} rolls forward from {backup.journal_start}",
            )
        )
    else:
        notes.append("no backup recorded in backups.json: no backup holds files back")
    if backup_running_start is not None:
        holds.append(
            (backup_running_start, f"a backup being taken starts at {backup_running_start}")
        )
    limit_ns = int(member_limit_days * DAY_NS)
    for m in members:
        what = "received" if m.kind == "async-reporting" else "applied"
        if m.position is None or m.last_seen_ns is None:
            notes.append(f"member {m.name} ({m.kind}) has never connected: it holds nothing back")
            continue
        away = now_ns - m.last_seen_ns
        if not m.connected and away > limit_ns:
            notes.append(
                f"member {m.name} ({m.kind}) has been disconnected for {_ago(away)}, longer "
                f"than journal_purge_member_limit_days ({member_limit_days:g}): it no longer "
                f"holds files back (it had {what} up to {m.position})"
            )
            continue
        state = "connected" if m.connected else f"disconnected for {_ago(away)}"
        holds.append(
            (m.position, f"member {m.name} ({m.kind}, {state}) has {what} only up to {m.position}")
        )

    age_cut_ns = now_ns - int(older_than_days * DAY_NS)
    remove: list[str] = []
    kept: list[KeptFile] = []
    for f in files:
        reasons = []
        if f.end is None:
            reasons.append("the current file (being written)")
        else:
            reasons += [why for pos, why in holds if f.end > pos]
        if f.created_ns > age_cut_ns:
            reasons.append(
                f"created {_ago(now_ns - f.created_ns)} ago, not more than {older_than_days:g} days"
            )
        if not reasons and kept:
            reasons.append("it follows a kept file: only the oldest files of the chain go")
        if reasons:
            kept.append(KeptFile(f.name, f.start, f.end, reasons))
        else:
            remove.append(f.name)
    return PurgeDecision(
        remove=remove,
        kept=kept,
        notes=notes,
        holds=[{"position": p, "why": w} for p, w in holds],
    )


# --- durable JSON records ------------------------------------------------------------------


def write_json_durable(path: str, obj: object) -> None:
    """Write `obj` as JSON to `path` whole or not at all: a temporary name, fsync,
    rename, the directory fsynced (the rename survives a crash)."""
    tmp = path + ".new"
    data = json.dumps(obj, sort_keys=True, indent=1).encode()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(os.path.dirname(path) or ".", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def _read_json(path: str, key: str) -> list | dict | None:
    """The `key` member of a record file, None if the file does not exist."""
    try:
        with open(path, "rb") as f:
            raw = f.read(16 << 20)
    except FileNotFoundError:
        return None
    try:
        doc = json.loads(raw)
        value = doc[key]
        if doc.get("version") != RECORDS_VERSION:
            raise ValueError(f"version {doc.get('version')!r}")
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise JournalPurgeError(
            f"{path}: damaged ({e}); the journal purge refuses until it is repaired or "
            f"removed (removing it forgets what it records)"
        ) from None
    return value


# --- backups.json --------------------------------------------------------------------------


def read_backup_records(instance_dir: str | os.PathLike) -> list[dict]:
    """The good backups recorded for the instance, oldest first ([] if none)."""
    path = os.path.join(os.fspath(instance_dir), BACKUPS_FILE_NAME)
    records = _read_json(path, "backups")
    if records is None:
        return []
    if not isinstance(records, list) or not all(
        isinstance(r, dict)
        and isinstance(r.get("journal_start"), int)
        and isinstance(r.get("time_end"), int)
        and isinstance(r.get("db_id"), int)
        for r in records
    ):
        raise JournalPurgeError(f"{path}: damaged (bad backup entries); repair or remove it")
    return records


def record_backup(instance_dir: str | os.PathLike, info) -> None:
    """Add a complete backup (a backup.BackupInfo) to the instance's backups.json.

    Called only after the backup file is durable under its final name: a record never
    names a backup that a crash could still take away. A damaged file is replaced
    (logged): the new record is the newest backup, the one that matters."""
    instance_dir = os.fspath(instance_dir)
    path = os.path.join(instance_dir, BACKUPS_FILE_NAME)
    entry = {
        "name": info.name,
        "path": info.path,
        "kind": info.kind,
        "seq": info.seq,
        "backup_id": f"{info.backup_id:016x}",
        "chain_id": f"{info.chain_id:016x}",
        "db_id": info.db_id,
        "checkpoint": info.checkpoint,
        "journal_start": info.journal_start,
        "journal_end": info.journal_end,
        "time_start": info.time_start,
        "time_end": info.time_end,
    }
    with _record_lock:
        try:
            records = read_backup_records(instance_dir)
        except JournalPurgeError as e:
            log.error("%s; replacing it with the new backup's record", e)
            records = []
        records.append(entry)
        write_json_durable(
            path, {"version": RECORDS_VERSION, "backups": records[-BACKUP_RECORDS_MAX:]}
        )


def last_backup(instance_dir: str | os.PathLike, db_id: int) -> BackupRef | None:
    """The newest good backup of database `db_id` recorded in the instance directory."""
    mine = [r for r in read_backup_records(instance_dir) if r["db_id"] == db_id]
    if not mine:
        return None
    r = max(mine, key=lambda r: r["time_end"])
    return BackupRef(str(r.get("name", "?")), r["journal_start"], r["time_end"])


# --- mirror-members.json (on a primary) -----------------------------------------------------


def load_member_records(data_dir: str | os.PathLike) -> dict[str, dict]:
    """name -> {"kind", "position", "last_seen_ns"} as last saved ({} if none)."""
    path = os.path.join(os.fspath(data_dir), MIRROR_MEMBERS_FILE_NAME)
    records = _read_json(path, "members")
    if records is None:
        return {}
    if not isinstance(records, dict) or not all(
        isinstance(r, dict)
        and isinstance(r.get("position"), int)
        and isinstance(r.get("last_seen_ns"), int)
        for r in records.values()
    ):
        raise JournalPurgeError(f"{path}: damaged (bad member entries); repair or remove it")
    return records


def save_member_records(data_dir: str | os.PathLike, records: dict[str, dict]) -> None:
    path = os.path.join(os.fspath(data_dir), MIRROR_MEMBERS_FILE_NAME)
    write_json_durable(path, {"version": RECORDS_VERSION, "members": records})


def peer_position(peer: dict) -> int:
    """What a connected member holds, from a `Replicator.peers()` entry: applied (the
    backup and DR asyncs must have dejournaled a file) or received (reporting)."""
    if peer["kind"] == "async-reporting":
        return max(peer["received"], peer["durable"], peer["applied"])
    # Acks at level "applied" and the applied position a copy's heartbeats carry: both
    # are true lower bounds (a heartbeat's may be a little old: it only keeps more).
    return max(peer["applied"], peer.get("applied_seen", 0))


def member_positions(
    members: Iterable[tuple[str, str]],
    peers: Iterable[dict] | None,
    records: dict[str, dict],
    now_ns: int,
) -> tuple[list[MemberPosition], dict[str, dict]]:
    """Every other member of the config as the decision needs it, and the records to
    save: a member streaming now (a started link in `peers`) by its live position,
    seen now; any other by its saved record (its last position and when it was last
    seen); one with neither has never connected. Members no longer in the config
    drop out of the records."""
    live = {p["member"]: p for p in (peers or ()) if p.get("started", True)}
    out: list[MemberPosition] = []
    new: dict[str, dict] = {}
    for name, kind in members:
        p = live.get(name)
        if p is not None:
            seen = now_ns - int(p.get("last_heard_ago_s", 0.0) * 1e9)
            rec = {"kind": kind, "position": peer_position(p), "last_seen_ns": seen}
            new[name] = rec
            out.append(MemberPosition(name, kind, rec["position"], now_ns, connected=True))
        elif name in records:
            rec = dict(records[name], kind=kind)
            new[name] = rec
            out.append(MemberPosition(name, kind, rec["position"], rec["last_seen_ns"]))
        else:
            out.append(MemberPosition(name, kind, None, None))
    return out, new


# --- a stopped instance (irisrep journal purge PATH) ---------------------------------------


def purge_instance(
    path: str | os.PathLike,
    *,
    dry_run: bool = False,
    older_than_days: float | None = None,
    member_limit_days: float = JOURNAL_PURGE_MEMBER_LIMIT_DAYS,
) -> PurgeDecision:
    """Open the stopped instance at `path`, purge its journal, close it.

    A mirror member's data directory (it has a mirror.json) is opened as a mirror
    copy (nothing journaled, nothing rolled back: its stream stays the primary's),
    and the member positions its primary last saved (mirror-members.json) hold
    files back, each as disconnected since then. Refused while the instance is open
    in a process (as `irisrep backup create PATH`): ask the member (`--member`)."""
    import irisrep

    from .constants import JOURNAL_PURGE_DAYS, MIRROR_STATE_FILE_NAME, WIJ_FILE_NAME
    from .errors import CorruptError
    from .wij import wij_status

    path = os.fspath(path)
    days = JOURNAL_PURGE_DAYS if older_than_days is None else older_than_days
    check_days("older_than_days", days, JOURNAL_PURGE_DAYS_MAX)
    check_days("member_limit_days", member_limit_days, JOURNAL_PURGE_MEMBER_LIMIT_DAYS_MAX)
    wij_path = os.path.join(path, WIJ_FILE_NAME)
    if not os.path.exists(wij_path):
        raise JournalPurgeError(f"{path}: no irisrep instance here")
    try:
        running = wij_status(wij_path).running
    except CorruptError as exc:
        raise JournalPurgeError(f"{path}: {exc}") from None
    if running:
        raise JournalPurgeError(
            f"{path}: the instance is open in a process (or was not closed cleanly): "
            f"purge it there (irisrep journal purge --member M), or open and close it "
            f"once after a crash"
        )
    mirrored = os.path.exists(os.path.join(path, MIRROR_STATE_FILE_NAME))
    records = load_member_records(path)
    db = irisrep.open(path, create=False, mirror_copy=mirrored)
    try:
        now = db.journal.clock()
        members, _new = member_positions(
            [(name, str(r.get("kind", "async-dr"))) for name, r in sorted(records.items())],
            None,
            records,
            now,
        )
        return db.journal_purge(
            older_than_days=days,
            members=members,
            member_limit_days=member_limit_days,
            dry_run=dry_run,
            now_ns=now,
        )
    finally:
        db.close()
