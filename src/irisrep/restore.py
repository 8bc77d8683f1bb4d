"""Restore: a backup chain into a new instance, then the journal step, as IRIS does.

Every database the last backup holds is rebuilt (`NAME.dat`, from its sections in
chain order) and the catalog `databases.json` written with each one's journaling
setting; a database the journal names but no backup holds (created after it) is
created empty from the source's catalog. Recovery then rolls the journal forward
over all of them; only a version 1 backup (DB alone) makes it skip the records of
other databases.

Owns `irisrep restore BACKUP... --target DIR [--journal DIR] [--until TIME |
--until-position N] [--dry-run]`: which backups and which journal frames make the
restored instance, and building it (a dry run verifies every file of the chain and
builds nothing: `verify_chain`). It has no replay of its own: the restored
instance gets a journal holding exactly the source stream's frames from the
backup's journal start to the target position, at the same positions, and is then
opened like any instance, so recovery on open (`Database._recover_journal`) rolls it
forward from the image's checkpoint and rolls back the transactions open at the
target, journaling the rollback (the journal step IRIS requires after every restore,
even with no newer journal: the backup's own frames may hold open transactions).

Promises:
- Bad input changes nothing: the chain (a full backup, then its incrementals in
  order; a missing one is named), the target (absent or empty), the journal (it
  must continue the backup's stream: the frame where they meet must be the same
  frame) and the target position are all checked before anything is written, and
  everything is built in a staging directory beside the target, renamed into place
  only when the instance is recovered and its integrity walk passes. A corrupt
  backup found while applying it removes the staging directory.
- The restored images are proven to be the last backup's: after applying the
  chain, every block of every database is compared with that backup's manifest of
  it.
- `--until TIME` never includes a frame that may have been built after TIME (see
  `_cut_at_time`: time marks in the frames, at most JOURNAL_TIME_MARK_MS apart).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import time
from collections.abc import Callable, Iterator

import numpy as np

from .backup import BackupInfo, BackupReader, Progress, read_header
from .constants import (
    BLOCK_SIZE,
    IO_ALIGN,
    JOURNAL_DIR_NAME,
    JOURNAL_FILE_BYTES,
    JOURNAL_HEADER_BYTES,
    JOURNAL_TIME_MARK_MS,
    RESTORE_JOURNAL_FILE_BYTES,
    WRITE_RUN_BLOCKS_MAX,
)
from .errors import BackupChainError, BackupError, CorruptError, IrisrepError

__all__ = ["RestorePlan", "plan_restore", "restore", "parse_time", "verify_chain"]

_STAGING_SUFFIX = ".restoring"
_READ_CHUNK_BYTES = 4 * 1024 * 1024  # journal bytes read from a directory per call
_APPEND_BYTES = 8 * 1024 * 1024  # frames handed to the restored journal per call


@dataclasses.dataclass
class RestorePlan:
    """What a restore will do (what `--dry-run` prints)."""

    backups: list[BackupInfo]
    target: str
    journal_dir: str | None  # the journal after the backup's own frames, if any
    journal_note: str
    start: int  # first position of the restored journal (the last backup's journal start)
    checkpoint: int  # position the restored image reflects (the last backup's)
    end: int  # roll forward to here
    until: str  # "end", "time ...", "position N"
    available_end: int  # the end of the stream available
    embedded_end: int  # the last backup's own frames end here
    frames: int = 0  # frames [start, end)
    records: int = 0
    data_records: int = 0  # data records at or after the checkpoint (rolled forward)
    open_txns: list = dataclasses.field(default_factory=list)  # rolled back at `end`
    end_time: int | None = None  # the last time mark before `end` (unix ns)
    epoch: int = 0  # epoch of the last frame before `end`
    # The databases restored, from the last backup's sections (DB first): name,
    # db_id, journaling, block_count, and `steps`, the indexes in `backups` of the
    # backups whose sections of it are applied in order (a full copy first).
    databases: list = dataclasses.field(default_factory=list)
    # Databases the journal names that no backup holds (created after the last
    # backup): found by id in the source's catalog, each created empty at `start`
    # and rolled forward like the others (name, db_id, journaling, records).
    created: list = dataclasses.field(default_factory=list)
    # Data records of database ids neither in the backup nor in a catalog found (a
    # version 1 backup: every database but DB), skipped by recovery: id -> records.
    skipped: dict = dataclasses.field(default_factory=dict)

    @property
    def only_these(self) -> bool:
        """Whether recovery skips the journal records of databases it does not have
        (instead of refusing them): a version 1 backup holds DB alone."""
        return bool(self.skipped) or self.backups[-1].version < 2

    def as_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["backups"] = [b.name for b in self.backups]
        d["blocks"] = sum(b.blocks_stored for b in self.backups)
        d["open_txns"] = len(self.open_txns)
        d["skipped"] = {f"{k:08x}": v for k, v in self.skipped.items()}
        return d

    def lines(self) -> list[str]:
        out = [f"restore into {self.target}:"]
        for b in self.backups:
            out.append(
                f"  {b.kind:<11} {b.name}: {b.blocks_stored} of {b.block_count} blocks, "
                f"checkpoint {b.checkpoint}"
            )
        for d in self.databases:
            steps = " + ".join(f"{self.backups[i].kind} {self.backups[i].seq}" for i in d["steps"])
            out.append(
                f"  database {d['name']} (id {d['db_id']:08x}, journaling "
                f"{'on' if d['journaling'] else 'off'}): {d['block_count']} blocks from "
                f"{steps}"
            )
        for d in self.created:
            out.append(
                f"  database {d['name']} (id {d['db_id']:08x}): not in the backup (created "
                f"after it): created empty, {d['records']} journal records roll it forward"
            )
        for db_id, n in sorted(self.skipped.items()):
            out.append(
                f"  database id {db_id:08x}: not in the backup and in no catalog: its "
                f"{n} journal records are skipped"
            )
        out.append(f"  journal: {self.journal_note}")
        when = f" (last time mark {_fmt_ns(self.end_time)})" if self.end_time else ""
        out.append(
            f"  roll forward to {self.until}: position {self.end}{when}; frames "
            f"{self.start}..{self.end}: {self.frames} frames, {self.records} records, "
            f"{self.data_records} data records applied from position {self.checkpoint}"
        )
        out.append(f"  then roll back {len(self.open_txns)} transactions open at {self.end}")
        return out


def _round_up(n: int, a: int) -> int:
    return (n + a - 1) // a * a


def _fmt_ns(ns: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ns / 1e9)) + f".{ns % 10**9:09d}"


def parse_time(text: str) -> int:
    """`--until TIME`: unix seconds (`1714557795.25`) or ISO 8601 (`2024-05-01T10:03:15`,
    local time unless it names a zone); unix ns."""
    import datetime

    text = text.strip()
    with contextlib.suppress(ValueError):  # not unix seconds: an ISO 8601 time?
        return int(round(float(text) * 1e9))
    try:
        dt = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise BackupError(
            f"--until {text!r}: not a time (unix seconds, or ISO 8601 such as 2024-05-01T10:03:15)"
        ) from None
    if dt.tzinfo is None:
        dt = dt.astimezone()  # local time, as a user reads a clock
    return int(round(dt.timestamp() * 1e9))


# --- the chain ---------------------------------------------------------------------------


def check_chain(infos: list[BackupInfo]) -> None:
    """A full backup first, then each next backup's parent is the one before it."""
    if not infos:
        raise BackupChainError("no backup given")
    first = infos[0]
    if first.kind != "full":
        raise BackupChainError(
            f"{first.name} is incremental {first.seq}: a restore starts with the chain's "
            f"full backup (then its incrementals in order)",
            missing=None,
        )
    ids = {b.backup_id: i for i, b in enumerate(infos)}
    for i in range(1, len(infos)):
        prev, b = infos[i - 1], infos[i]
        if b.kind == "full":
            raise BackupChainError(
                f"{b.name} is a full backup: give one chain (one full backup, then its "
                f"incrementals in order)"
            )
        if b.db_id != first.db_id or b.chain_id != first.backup_id:
            raise BackupChainError(
                f"{b.name} belongs to another chain (database {b.db_id:08x}, chain "
                f"{b.chain_id:016x}) than {first.name} ({first.db_id:08x}, "
                f"{first.backup_id:016x})"
            )
        if b.parent_id == prev.backup_id:
            continue
        j = ids.get(b.parent_id)
        if j is not None and j < i:
            raise BackupChainError(
                f"{b.name} follows {infos[j].name}, not {prev.name}: give each backup "
                f"once, in chain order"
            )
        if j is not None and j > i:
            raise BackupChainError(
                f"out of order: {b.name} (incremental {b.seq}) follows {infos[j].name} "
                f"(incremental {infos[j].seq}), which is given after it"
            )
        raise BackupChainError(
            f"missing incremental {b.parent_name} (incremental {b.seq - 1}, id "
            f"{b.parent_id:016x}): {b.name} follows it, but it was not given after "
            f"{prev.name}",
            missing=b.parent_name,
        )


# --- the journal stream: the backup's own frames, then a journal directory --------------


class _Source:
    """Frames of the stream from the last backup's journal start: its embedded frames,
    then (from its end on) a journal directory, each frame verified."""

    def __init__(self, last: BackupInfo, journal_dir: str | None) -> None:
        from .fileio import default_fs
        from .journal import _resolve_codec

        self.last = last
        self.dir = journal_dir
        self.fs = default_fs()
        self.codec = _resolve_codec()

    def frames(self, progress: Progress = None) -> Iterator[tuple[int, bytes, object, bytes]]:
        """(position, frame bytes, FrameHeader, raw payload) in stream order."""
        pos = self.last.journal_start
        for chunk_pos, data in BackupReader(self.last.path).journal():
            yield from self._split(chunk_pos, data, progress)
            pos = chunk_pos + len(data)
        if self.dir is None:
            return
        from .journal import read_raw_stream

        while True:
            try:
                data = read_raw_stream(self.fs, self.dir, pos, None, _READ_CHUNK_BYTES)
            except (ValueError, CorruptError) as exc:
                raise BackupError(f"{self.dir}: reading the journal at {pos}: {exc}") from None
            if not data:
                return
            yield from self._split(pos, data, progress)
            pos += len(data)

    def _split(self, pos: int, data: bytes, progress: Progress):
        off = 0
        while off < len(data):
            header, raw, nxt = self.codec.parse_frame(data, off, pos + off)
            yield pos + off, data[off:nxt], header, raw
            if progress is not None:
                progress(nxt - off)
            off = nxt

    def records(self, header, raw) -> list:
        return self.codec.decode_records(raw, header.count)


def _last_embedded_frame(last: BackupInfo) -> tuple[int, int] | None:
    """(position, checksum) of the last frame the backup holds, or None."""
    found = None
    for pos, _frame, header, _raw in _Source(last, None).frames():
        found = (pos, header.checksum)
    return found


def _check_continues(last: BackupInfo, journal_dir: str) -> str | None:
    """None when `journal_dir` continues the backup's stream at its journal end, else
    why not. The frames meet where the backup's own end: the directory must hold the
    backup's last frame with the same checksum (or start a file right after it, naming
    that checksum), so a journal of another database or another history is refused."""
    from .fileio import default_fs
    from .journal import frame_checksum_at, list_journal_files, stream_end

    fs = default_fs()
    try:
        files = list_journal_files(fs, journal_dir)
    except (OSError, CorruptError) as exc:
        return f"cannot read it: {exc}"
    if not files:
        return "it holds no journal files"
    end = last.journal_end
    lastf = _last_embedded_frame(last)
    if lastf is None:
        # No frame in the backup: the directory must have a frame boundary at `end`.
        if files[0].start_position == end or frame_checksum_at(fs, journal_dir, end):
            return None
        if stream_end(fs, journal_dir) == end:
            return None
        return f"it has no frame boundary at position {end}"
    lpos, lck = lastf
    got = frame_checksum_at(fs, journal_dir, lpos)
    if got is not None:
        if got == (end, lck):
            return None
        return (
            f"its frame at position {lpos} differs from the backup's (checksum "
            f"{got[1]:#018x}, the backup's {lck:#018x}): another database's or another "
            f"history's journal"
        )
    for f in files:
        if f.start_position == end:
            if f.prev_end_checksum == lck:
                return None
            return f"{f.name} starts at {end} but follows another frame than the backup's last"
    if files[0].start_position > end:
        return (
            f"it starts at position {files[0].start_position}, after the backup's end {end} "
            f"(the files in between were purged)"
        )
    return f"it does not hold position {lpos} (the backup's last frame)"


# --- planning ----------------------------------------------------------------------------


def plan_restore(
    backups: list[str | os.PathLike],
    target: str | os.PathLike,
    *,
    journal_dir: str | os.PathLike | None = None,
    until_time: int | None = None,
    until_position: int | None = None,
    progress: Progress = None,
) -> RestorePlan:
    """Check everything and work out what a restore will do; changes nothing."""
    if until_time is not None and until_position is not None:
        raise BackupError("give --until or --until-position, not both")
    infos = [read_header(p) for p in backups]
    check_chain(infos)
    databases = _database_steps(infos)
    last = infos[-1]
    target = os.path.abspath(os.fspath(target))
    if os.path.exists(target) and (not os.path.isdir(target) or os.listdir(target)):
        raise BackupError(f"{target}: the target exists and is not an empty directory")
    note = ""
    jdir = None
    if journal_dir is not None:
        jdir = os.fspath(journal_dir)
        if os.path.isdir(os.path.join(jdir, JOURNAL_DIR_NAME)):
            jdir = os.path.join(jdir, JOURNAL_DIR_NAME)  # an instance directory was given
        why = _check_continues(last, jdir)
        if why is not None:
            raise BackupError(f"--journal {jdir} does not continue {last.name}: {why}")
        note = f"the backup's frames, then {jdir}"
    else:
        default = os.path.join(last.source, JOURNAL_DIR_NAME)
        if os.path.isdir(default) and _check_continues(last, default) is None:
            jdir = default
            note = f"the backup's frames, then {default} (the source's journal)"
        elif os.path.isdir(default):
            note = (
                f"only the backup's own frames ({default} does not continue it: "
                f"{_check_continues(last, default)})"
            )
        else:
            note = f"only the backup's own frames (no journal at {default})"
    plan = RestorePlan(
        backups=infos,
        target=target,
        journal_dir=jdir,
        journal_note=note,
        start=last.journal_start,
        checkpoint=last.checkpoint,
        end=last.journal_end,
        until="end",
        available_end=last.journal_end,
        embedded_end=last.journal_end,
        epoch=last.epoch,
        databases=databases,
    )
    unknown = _scan(plan, until_time, until_position, progress)
    _place_unknown(plan, unknown)
    return plan


def _database_steps(infos: list[BackupInfo]) -> list[dict]:
    """Per database of the last backup: which backups' sections rebuild it, in order.

    Each backup of a chain holds every database of the instance at its time, a
    database's first section in the chain being a full copy (a database created since
    the previous backup gets one); a later full section starts it over. A database
    whose sections do not start with a full copy cannot be rebuilt: refused by name."""
    out = []
    for sec in infos[-1].sections:
        steps: list[int] = []
        for i, info in enumerate(infos):
            s = info.section(sec.db_id)
            if s is None:
                if steps:
                    raise BackupChainError(
                        f"{info.name} holds no copy of database {sec.name}, which "
                        f"{infos[steps[-1]].name} before it holds: not one chain"
                    )
                continue
            if s.full:
                steps = []
            steps.append(i)
        if not infos[steps[0]].section(sec.db_id).full:
            raise BackupChainError(
                f"database {sec.name}: {infos[steps[0]].name} holds only its changed blocks, "
                f"and no backup given before it holds a full copy of it"
            )
        out.append(
            {
                "name": sec.name,
                "db_id": sec.db_id,
                "journaling": sec.journaling,
                "block_count": sec.block_count,
                "steps": steps,
            }
        )
    return out


def _place_unknown(plan: RestorePlan, unknown: dict[int, int]) -> None:
    """Data records of databases the backup does not hold: a database created after
    the backup (its records are all after its creation, so an empty database at the
    journal start rolls forward to exactly its state) is named by the source's
    catalog, or that of the instance whose journal is given; found there, it is
    created; else (a version 1 backup, or no catalog) its records are skipped."""
    import json

    from .constants import DATABASE_CATALOG_NAME
    from .database import check_database_name, database_id

    if not unknown:
        return
    names: dict[int, tuple[str, bool]] = {}
    if plan.backups[-1].version >= 2:
        dirs = [plan.backups[-1].source]
        if plan.journal_dir is not None:
            dirs.append(os.path.dirname(os.path.abspath(plan.journal_dir)))
        for d in dirs:
            try:
                with open(os.path.join(d, DATABASE_CATALOG_NAME), "rb") as f:
                    entries = json.load(f)["databases"]
                for n, e in entries.items():
                    n = check_database_name(n)
                    names.setdefault(database_id(n), (n, bool(e.get("journaling", True))))
            except (OSError, ValueError, KeyError, TypeError, AttributeError, IrisrepError):
                continue  # no catalog there, or not one: nothing to learn
    for db_id, n in sorted(unknown.items()):
        if db_id in names:
            name, journaling = names[db_id]
            plan.created.append(
                {"name": name, "db_id": db_id, "journaling": journaling, "records": n}
            )
        else:
            plan.skipped[db_id] = n


def _scan(plan: RestorePlan, until_time, until_position, progress) -> dict[int, int]:
    """One pass over the frames: where to stop, and what lies before it. Returns the
    data records per database id that no restored database has."""
    from .journal import marker_time
    from .replay import DATA_TYPES, TCOMMIT, TROLLBACK, TSTART

    last = plan.backups[-1]
    src = _Source(last, plan.journal_dir)
    mark_ns = JOURNAL_TIME_MARK_MS * 1_000_000
    cut = None  # where the target stops the stream short of its end
    last_mark = None  # the last time mark seen (scanning from the journal start)
    open_txns: dict[int, int] = {}
    known = {d["db_id"] for d in plan.databases}
    unknown: dict[int, int] = {}
    pos = plan.start  # the end of the frames taken so far
    for fpos, data, header, raw in src.frames(progress):
        if until_position is not None and fpos >= until_position:
            cut = fpos
            break
        records = src.records(header, raw)
        t = marker_time(records[0]) if records else None
        if until_time is not None and not _built_by(t, fpos, until_time, last, last_mark, mark_ns):
            cut = fpos
            break
        if t is not None:
            last_mark = plan.end_time = t
        plan.frames += 1
        plan.records += len(records)
        plan.epoch = header.epoch
        for rec in records:
            kind, txn = rec[0], rec[3]
            if kind == TSTART:
                open_txns[txn] = fpos
            elif kind in (TCOMMIT, TROLLBACK):
                open_txns.pop(txn, None)
            elif kind in DATA_TYPES:
                if rec[2] not in known:
                    unknown[rec[2]] = unknown.get(rec[2], 0) + 1
                elif fpos >= plan.checkpoint:
                    plan.data_records += 1
        pos = fpos + len(data)
    plan.end = pos
    if cut is None:
        plan.available_end = pos  # scanned to the end of what is there
    plan.open_txns = sorted(open_txns)
    if until_position is not None:
        plan.until = f"position {until_position}"
        if until_position < plan.checkpoint:
            raise BackupError(
                f"--until-position {until_position} is before {last.name}'s image (its "
                f"checkpoint is {plan.checkpoint}): restore from an earlier backup (leave "
                f"the later incrementals out)"
            )
        if until_position != pos:
            where = (
                f"the frames around it start at {pos} and {cut}"
                if cut is not None
                else f"the journal available ends at {pos}"
            )
            raise BackupError(
                f"--until-position {until_position} is not a frame boundary ({where}); "
                f"`irisrep journal dump` shows the frames' positions"
            )
    elif until_time is not None:
        plan.until = f"time {_fmt_ns(until_time)}"
        # The image itself must not be later than TIME: the frame that ends at its
        # checkpoint must have been taken above (then every earlier one was built
        # before it), or TIME is after the window opened (everything before the
        # checkpoint was built before that). With no frame before the checkpoint in
        # the backup (nothing open there), only the second can say so.
        image_ok = pos >= plan.checkpoint and (
            plan.start < plan.checkpoint or until_time >= last.time_start
        )
        if not image_ok:
            raise BackupError(
                f"--until {_fmt_ns(until_time)} is before {last.name}'s image (taken "
                f"{_fmt_ns(last.time_start)}, checkpoint {plan.checkpoint}): restore from an "
                f"earlier backup (leave the later incrementals out)"
            )

    return unknown


def _built_by(t, fpos: int, until: int, last: BackupInfo, last_mark, mark_ns: int) -> bool:
    """Whether the frame at `fpos` was provably built at or before `until` (ns).

    A frame that carries a time mark was built at its time `t`. One without was built
    less than JOURNAL_TIME_MARK_MS after the last mark before it (the journal marks a
    frame whenever that much time has passed). A frame before the backup's
    `open_position` was built before its `time_start`, and so was every mark before
    it: past that position a frame with no mark seen since the scan began was built
    before `time_start` + JOURNAL_TIME_MARK_MS. Anything else is not provable, and
    the cut goes before it: a restore to a time never includes a frame that may be
    later than that time."""
    if t is not None:
        return t <= until
    if fpos < last.open_position:
        return last.time_start <= until or (last_mark is not None and last_mark + mark_ns <= until)
    if last_mark is None:
        # No mark since the journal start: the last one lies before the window opened,
        # so it is not later than time_start, and this frame not later than that + I.
        last_mark = last.time_start
    return last_mark + mark_ns <= until


# --- doing it ----------------------------------------------------------------------------


def verify_chain(
    plan: RestorePlan,
    *,
    progress: Progress = None,
    progress_total: Callable[[int], None] | None = None,
) -> list[dict]:
    """Read and check every file of the plan's chain (backup.verify_backup: every
    block entry, journal chunk and frame, manifest), writing nothing: what `irisrep
    restore --dry-run` does before it says what would be applied, so that it never
    promises a restore that the first damaged block would stop. A fault raises
    BackupCorruptError naming the file, the block and its byte offset."""
    from .backup import verify_backup

    if progress_total is not None:
        progress_total(sum(b.file_bytes for b in plan.backups))
    return [verify_backup(b.path, progress=progress) for b in plan.backups]


def restore(
    plan: RestorePlan,
    *,
    progress: Progress = None,
    progress_total: Callable[[int], None] | None = None,
    integrity: bool = True,
) -> dict:
    """Build the instance `plan` describes; returns a report. See the module doc.

    `integrity=False` skips the integrity walk before the rename (it reads every
    block in tree order: on a large database the slowest step; the manifest check
    already proves the image is the backup's, block by block)."""
    import irisrep

    from .fileio import default_fs
    from .integrity import check

    fs = default_fs()
    target = plan.target
    parent = os.path.dirname(target) or "."
    staging = os.path.join(parent, "." + os.path.basename(target) + _STAGING_SUFFIX)
    if progress_total is not None:
        progress_total(sum(b.journal_offset for b in plan.backups) + (plan.end - plan.start))
    t0 = time.perf_counter()
    os.makedirs(parent, exist_ok=True)
    if os.path.exists(staging):
        shutil.rmtree(staging)  # a restore that crashed here: ours by its name
    fs.makedirs(staging)
    try:
        blocks = sum(_restore_blocks(fs, plan, d, staging, progress) for d in plan.databases)
        for d in plan.created:
            _create_empty(fs, staging, d["name"], d["db_id"], plan.start)
        # The catalog last: the files it names are all there and durable.
        _write_catalog(fs, staging, plan.databases + plan.created)
        t_blocks = time.perf_counter()
        frames = _restore_journal(fs, plan, staging, progress)
        # The journal step: recovery on open rolls forward every database from its
        # image's checkpoint to the end of this journal and rolls back what is open
        # there, in every database it touched, journaled. Only a version 1 backup (DB
        # alone), or records of databases nobody can name, make it skip records.
        db = irisrep.open(
            staging,
            create=False,
            write_daemon=False,
            epoch=plan.epoch,
            only_these_databases=plan.only_these,
        )
        try:
            rec = db.journal_recovery
            skipped = db.skipped_records
            names = db.database_names()
        finally:
            db.close()
        t_recovered = time.perf_counter()
        if integrity:
            reports = check(staging)
            bad = [e for r in reports for e in r.errors]
            if bad:
                raise BackupError(f"the restored instance fails its integrity walk: {bad[:5]}")
        if os.path.isdir(target):
            os.rmdir(target)  # empty (checked by the plan): the staging dir takes its place
        fs.rename(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    t1 = time.perf_counter()
    return {
        "target": target,
        "backups": [b.name for b in plan.backups],
        "databases": names,
        "blocks_written": blocks,
        "block_bytes": plan.backups[-1].block_count * BLOCK_SIZE,
        "skipped_records": skipped,
        "journal_frames": frames,
        "journal_range": [plan.start, plan.end],
        "until": plan.until,
        "applied_records": rec.applied,
        "rolled_back": len(rec.rolled_back),
        "integrity": "ok" if integrity else "not checked",
        "seconds": t1 - t0,
        "blocks_seconds": t_blocks - t0,
        "recovered_seconds": t_recovered - t0,  # blocks, journal and the journal step
    }


def _restore_blocks(fs, plan: RestorePlan, d: dict, staging: str, progress: Progress) -> int:
    """One database's sections, in chain order, into NAME.dat (via NAME.dat.new),
    then proven equal to the last backup's manifest of it block by block."""
    from .database import DATABASE_FILE_SUFFIX

    last = plan.backups[-1]
    sec_last = last.section(d["db_id"])
    final = os.path.join(staging, d["name"] + DATABASE_FILE_SUFFIX)
    tmp = final + ".new"
    count = sec_last.block_count
    # The checksum each block ends up with (the last entry written to it wins), from
    # the entries as they are verified: compared with the manifest at the end.
    sums = np.zeros(count, dtype="<u8")
    seen = np.zeros(count, dtype=bool)
    f = fs.open(tmp, create=True, direct="optional")
    written = 0
    try:
        for i in d["steps"]:
            info = plan.backups[i]
            # Consecutive blocks go out in one write (a full backup: runs of up to
            # WRITE_RUN_BLOCKS_MAX); the file is fdatasynced once at the end.
            run_first, run = -1, []
            reader = BackupReader(info.path)
            for block_no, image, checksum in reader.entries(progress, info.section(d["db_id"])):
                if run and (block_no != run_first + len(run) or len(run) >= WRITE_RUN_BLOCKS_MAX):
                    f.pwrite(run_first * BLOCK_SIZE, b"".join(run))
                    run = []
                if not run:
                    run_first = block_no
                run.append(image)
                if block_no < count:
                    sums[block_no] = checksum
                    seen[block_no] = True
                written += 1
            if run:
                f.pwrite(run_first * BLOCK_SIZE, b"".join(run))
        size = count * BLOCK_SIZE
        if f.size() != size:
            f.truncate(size)
        f.fdatasync()
    finally:
        f.close()
    _check_manifest(sums, seen, last, sec_last)
    fs.rename(tmp, final)
    return written


def _check_manifest(sums: np.ndarray, seen: np.ndarray, last: BackupInfo, sec) -> None:
    """Every block of the restored file has the checksum the last backup recorded:
    the chain applied really rebuilds that backup's image (ids aside, by content)."""
    manifest = BackupReader(last.path).manifest(sec)
    bad = np.flatnonzero((sums != manifest) | ~seen)
    if len(bad):
        b = int(bad[0])
        why = "no backup given holds it" if not seen[b] else "its content differs"
        raise BackupError(
            f"restored block {b} of database {sec.name} is not {last.name}'s ({why}): the "
            f"backups given do not rebuild its image"
        )


def _create_empty(fs, staging: str, name: str, db_id: int, checkpoint: int) -> None:
    """An empty database file (as Database creates one) whose image is at
    `checkpoint`: recovery applies every record of it from there."""
    from .database import DATABASE_FILE_SUFFIX, create_database_file

    create_database_file(fs, os.path.join(staging, name + DATABASE_FILE_SUFFIX), db_id, checkpoint)


def _write_catalog(fs, staging: str, databases: list[dict]) -> None:
    """databases.json as Database writes it: every database but DB, and DB too when
    its journaling is off (the setting the backup recorded)."""
    from .constants import DATABASE_CATALOG_NAME
    from .database import DEFAULT_DATABASE, write_catalog_file

    entries = {
        d["name"]: {"journaling": bool(d["journaling"])}
        for d in databases
        if d["name"] != DEFAULT_DATABASE or not d["journaling"]
    }
    if not entries:
        return
    write_catalog_file(fs, os.path.join(staging, DATABASE_CATALOG_NAME), entries)


def _restore_journal(fs, plan: RestorePlan, staging: str, progress: Progress) -> int:
    """The stream's frames [start, end) into the restored journal, byte for byte at the
    same positions, through the Journal's own append path (verified, rolled over,
    fdatasynced)."""
    from .journal import Journal, create_journal_file

    jdir = os.path.join(staging, JOURNAL_DIR_NAME)
    fs.makedirs(jdir)
    _info, jf = create_journal_file(
        fs,
        jdir,
        sequence=1,
        start_position=plan.start,
        prev_end_checksum=0,
        created=time.time_ns(),
        # Room for the frames and for what the instance journals next (its rollback
        # first); a longer stream rolls over into files of RESTORE_JOURNAL_FILE_BYTES.
        size=min(
            RESTORE_JOURNAL_FILE_BYTES,
            JOURNAL_HEADER_BYTES + _round_up(plan.end - plan.start, IO_ALIGN) + JOURNAL_FILE_BYTES,
        ),
    )
    jf.close()
    j = Journal(fs, jdir, file_bytes=RESTORE_JOURNAL_FILE_BYTES, precreate=False)
    frames = 0
    try:
        batch: list[bytes] = []
        size = 0
        for pos, data, _h, _raw in _Source(plan.backups[-1], plan.journal_dir).frames(progress):
            if pos >= plan.end:
                break
            batch.append(data)
            size += len(data)
            frames += 1
            if size >= _APPEND_BYTES:
                j.append_frames(b"".join(batch))
                batch, size = [], 0
        if batch:
            j.append_frames(b"".join(batch))
        j.flush()
        if j.end_position != plan.end:
            raise BackupError(
                f"the journal ended at {j.end_position}, the plan said {plan.end}: the "
                f"journal changed while restoring"
            )
    finally:
        j.close()
    return frames
