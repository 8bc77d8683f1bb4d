"""A mirror member hosted in this process: its database, listeners and role.

Owns one member of a mirror as `irisrep serve --config FILE` runs it, and as a
service that hosts a member in-process uses it (`irisrep.Member`): it opens the
instance's default database (`DB`), runs the mirror listener (journal shipping and
acks, `mirror.py`), the client listener (`server.py`) and, with `http_address`, the
HTTP health and metrics listener (`httpapi.py`), and knows its role:

- primary: the database is writable; every commit waits for the Active backup
  (`mirror.Replicator`, DESIGN.md rule 1);
- backup / async: the database is a read-only mirror copy (`ProtectError` on every
  write through the API) that follows the primary's journal (`mirror.CopyLink`).

The role and the epoch are kept in `DATA_DIR/mirror.json` (written to a temporary
name, fsynced, renamed, directory fsynced), so a restarted member comes back in the
role it had. Which member starts as primary: the first failover member of the
config's list (`+` in `irisrep inventory`). Deciding failover is the mirror core's
job (a later issue); `role` is an attribute that changes when the role changes, and
`on_role` callbacks hear about it.

Housekeeping (one thread): on a primary, every MIRROR_MEMBERS_SAVE_MS, each other
member's position and last-seen time go to `DATA_DIR/mirror-members.json`
(purge.py) when they changed, so a restarted primary still holds journal files back
for a member that was lagging; every JOURNAL_PURGE_INTERVAL_S the journal is purged
(`journal_purge`: recovery, open transactions, backups, members, age). Online
backups of this member's database run in this process (`backup_create`, the client
protocol's `backup_create`).

A reporting async may follow other mirrors too (`[[follow]]` in its config, up to
MIRRORS_FOLLOWED_MAX in all): each followed mirror has its own mirrored database in
`DATA_DIR/mirrors/<MIRROR>/` (its own journal, WIJ and `mirror.json` epoch) and its
own CopyLink, so the mirrors' data never mix and each is named by its mirror
(`mirror_database(name)`; its own mirror's copy stays `database` in DATA_DIR, as for
any async). Dejournaling can be paused and resumed per mirror
(`pause_dejournaling(mirror)`): the journal is still received and acknowledged, the
apply waits and catches up from the member's journal on resume. `status()["mirrors"]`
has one entry per mirror followed.

Databases besides `DB` (`[[databases]]`): a mirrored one is another database of the
mirrored instance in DATA_DIR (same journal, so it is shipped, applied and failed
over with DB; every member declares it); a local one lives in the member's local
instance, `DATA_DIR/local/` (its own journal and WIJ, never shipped, writable in
every role: a reporting async's report databases). `database_named(name)` finds any
of them, or a followed mirror's copy, by name.

A reporting async's copy may be read-write (`copy = "read-write"`, per `[[follow]]`
and at the top level for its own mirror): clients change it locally while
dejournaling goes on, and the mirror's updates may overwrite those changes. Its local
changes are not journaled (the copy's journal is the mirror's stream, byte for
byte): they reach the database file with the write daemon's next cycle, and a crash
before it loses them. Opening a copy read-write marks it, before any write can land,
as no longer eligible to fail over (COPY_INELIGIBLE_FILE_NAME in its directory,
fsynced; IRIS clears the database's FailoverDB flag): the mark is never removed, so
it outlives a restart and a config set back to read-only, and a promotion or a
start as a failover member or DR async on that directory raises
FailoverIneligibleError.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import sys
import threading
import time

from . import wire
from .config import MemberConfig
from .constants import (
    COPY_INELIGIBLE_FILE_NAME,
    JOURNAL_DIR_NAME,
    JOURNAL_PURGE_DAYS,
    JOURNAL_PURGE_INTERVAL_S,
    LOCAL_INSTANCE_DIR_NAME,
    LOCAL_INSTANCE_ROOT_NAME,
    MEMBER_SWITCH_INTERVAL_S,
    MIRROR_EPOCH_FIRST,
    MIRROR_HISTORY_FILE_NAME,
    MIRROR_MEMBERS_REFRESH_S,
    MIRROR_MEMBERS_SAVE_MS,
    MIRROR_PROMOTION_KINDS,
    MIRROR_ROLES,
    MIRROR_STATE_FILE_NAME,
    MIRRORS_DIR_NAME,
    TAIL_SERVED_FILE_NAME,
)
from .database import DEFAULT_DATABASE, Database
from .errors import (
    BackupError,
    ConfigError,
    DatabaseNotFoundError,
    FailoverIneligibleError,
    IrisrepError,
    TransactionError,
)
from .events import EventLog
from .httpapi import HttpServer, MemberMetrics
from .mirror import CopyLink, Replicator

log = logging.getLogger("irisrep.member")

ROLES = MIRROR_ROLES


def _source_host(host: str) -> str | None:
    """The address a member connects from: its own listener host when that is a
    literal address (so peers and firewalls see which member is talking)."""
    import ipaddress

    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    return None if ip.is_unspecified else host


def _read_state(path: str) -> dict | None:
    try:
        with open(path, "rb") as f:
            raw = f.read(65536)
    except FileNotFoundError:
        return None
    try:
        st = json.loads(raw)
        epoch = st["epoch"]
        role = st["role"]
    except (ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"{path}: not a member state file ({e})") from None
    if not isinstance(epoch, int) or epoch < 0 or role not in ROLES:
        raise ConfigError(f"{path}: bad epoch or role: {st!r}")
    return st


def _write_state(path: str, state: dict) -> None:
    tmp = path + ".new"
    data = json.dumps(state, sort_keys=True).encode()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, path)
    dfd = os.open(os.path.dirname(path) or ".", os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def _read_ineligible(directory: str | os.PathLike) -> dict | None:
    """The mark of a copy that was read-write (None: it never was). A damaged mark
    still marks: what counts is that the file exists."""
    path = os.path.join(directory, COPY_INELIGIBLE_FILE_NAME)
    try:
        with open(path, "rb") as f:
            raw = f.read(65536)
    except FileNotFoundError:
        return None
    try:
        info = json.loads(raw)
    except ValueError:
        info = None
    if not isinstance(info, dict):
        info = {"reason": f"{path} is damaged; the copy stays ineligible"}
    return info


def _copy_text(mode: str, mark: dict | None) -> str:
    """How `irisrep ps` and /health say whether a copy may still fail over."""
    if mode == "read-write":
        return "read-write: not eligible to fail over"
    if mark is not None:
        return "read-only: not eligible to fail over (was read-write)"
    return "read-only"


def _history_text(entry: dict) -> str:
    """One line for the event log from a history entry."""
    if entry.get("event") == "role":
        return (
            f"{entry.get('from')} -> {entry.get('to')} in epoch {entry.get('epoch')} "
            f"({entry.get('reason')}, journal at {entry.get('journal_end')})"
        )
    if entry.get("event") == "tail undone":
        return (
            f"journal tail {entry.get('from')}..{entry.get('to')} undone "
            f"({entry.get('records')} records), the primary never had it"
        )
    return json.dumps(entry, sort_keys=True, default=str)


class _Followed:
    """One other mirror a reporting async follows: its copy and the link to it."""

    def __init__(self, mirror: str, path: str, database: Database, state_path: str) -> None:
        self.mirror = mirror
        self.path = path
        self.database = database
        self.state_path = state_path
        self.copy: CopyLink | None = None

    def adopt_epoch(self, epoch: int) -> None:
        # Durable before anything of that epoch is journaled here (as _adopt_epoch).
        _write_state(self.state_path, {"epoch": epoch, "role": "async"})


class Member:
    """One mirror member in this process. `Member(config).start()`; `close()`.

    `role` is "primary", "backup" or "async"; `database` is the default database
    (read-only unless primary); `status()` is what `irisrep ps` shows."""

    def __init__(
        self,
        config: MemberConfig,
        *,
        client_listener: bool = True,
        switch_interval_s: float | None = MEMBER_SWITCH_INTERVAL_S,
    ) -> None:
        self.config = config
        self.name = config.member_name
        self.kind = config.kind
        self._lock = threading.Lock()
        self._role_callbacks: list = []
        self._role_lock = threading.RLock()
        self.history: list[dict] = []  # role changes, newest last (irisrep history)
        self.started_at = time.time()
        # The online backup running in this process, or the last one (status()["backup"]):
        # what `irisrep backup create --member M` draws its progress bar from.
        self.backup_progress: dict | None = None
        os.makedirs(config.data_dir, exist_ok=True)
        self.event = EventLog(config.data_dir, self.name)  # irisrep events
        # Copies that were read-write (mirror -> their mark): never eligible to fail over.
        self.ineligible: dict[str, dict] = {}
        mark = _read_ineligible(config.data_dir)
        if mark is not None:
            if self.kind != "async-reporting":
                raise FailoverIneligibleError(
                    f"{config.data_dir} holds a copy of mirror {config.mirror_name} that was "
                    f"read-write on a reporting async ({mark.get('reason', 'marked')}): it "
                    f"can never be a {self.kind} member's database; make a new copy from a "
                    "backup of the primary"
                )
            self.ineligible[config.mirror_name] = mark
        self.state_path = os.path.join(config.data_dir, MIRROR_STATE_FILE_NAME)
        st = _read_state(self.state_path)
        if st is None:
            # The first primary starts one below the first epoch: its mirror core
            # bumps the epoch at every start of a primary (a new life, a new epoch).
            st = {"epoch": 0, "role": self._initial_role()}
            if st["role"] == "primary":
                st["epoch"] = MIRROR_EPOCH_FIRST - 1
            _write_state(self.state_path, st)
        self.epoch = st["epoch"]
        self.role = st["role"]
        self.arbiter_controlled = bool(st.get("arbiter_controlled", False))
        self.trouble = False
        self._served_path = os.path.join(config.data_dir, TAIL_SERVED_FILE_NAME)
        self.tail_served = os.path.exists(self._served_path)
        self.core = None  # the mirror core (failover members), decided at start
        self.replicator: Replicator | None = None
        self.copy: CopyLink | None = None
        self.driver = None  # failover.FailoverDriver on a failover member
        self.database: Database | None = None
        self.local_instance: Database | None = None  # DATA_DIR/local: local databases
        self.mirror_listener: wire.WireListener | None = None
        self.client_listener = None
        self._want_client_listener = client_listener
        self._switch_interval_s = switch_interval_s
        self.closed = False
        # What /metrics counts: promotions by how, role changes by (from, to). Plain
        # dicts written under _role_lock, copied whole by a scrape (no lock there).
        self.promotion_counts = dict.fromkeys(MIRROR_PROMOTION_KINDS, 0)
        self.role_change_counts: dict[tuple[str, str], int] = {}
        self.metrics = MemberMetrics(self)
        self.http: HttpServer | None = None  # on config.http_address, from start()
        # Housekeeping: the members' positions (a primary) and the periodic purge.
        self._members_lock = threading.Lock()
        self._member_records: dict[str, dict] | None = None  # as last saved (None: not read)
        self._members_saved_ns = 0
        self._housekeeping_stop = threading.Event()
        self._housekeeper: threading.Thread | None = None
        # A reporting async: the other mirrors it follows (name -> _Followed), and
        # the mirrors whose dejournaling an operator paused (kept across a new link).
        self.followed: dict[str, _Followed] = {}
        self._dejournal_paused: set[str] = set()

    def _initial_role(self) -> str:
        if self.kind != "failover":
            return "async"
        first = self.config.failover_members[0].name
        return "primary" if first == self.name else "backup"

    # --- lifecycle ----------------------------------------------------------------------

    def start(self) -> Member:
        c = self.config
        if (
            self._switch_interval_s is not None
            and sys.getswitchinterval() > self._switch_interval_s
        ):
            # The ack reader and the copy's receiver must not wait 5 ms for the GIL
            # behind committing or applying threads (process-wide: a service that
            # hosts a member can pass switch_interval_s=None to keep its own).
            sys.setswitchinterval(self._switch_interval_s)
        if self.kind == "failover":
            self._decide_start_role()
        primary = self.role == "primary"
        self.database = Database(
            str(c.data_dir),
            direct=c.direct_io,
            pool_blocks=c.pool_blocks,
            commit_mode=c.commit_mode,
            mirror_copy=not primary,
            epoch=self.epoch,
            journal_dir=None if c.journal_dir is None else str(c.journal_dir),
            journal_file_bytes=c.journal_file_bytes,
            name=DEFAULT_DATABASE,
            # A read-write copy's local changes are never journaled (module docstring).
            journaling=c.copy != "read-write",
        )
        self.database.committer.observe_commit_s = self.metrics.commit_latency.observe
        try:
            self._open_databases()
            if primary:
                self._start_replicator()
            self.mirror_listener = wire.WireListener(
                tuple(c.me.mirror_address),
                mirror=c.mirror_name,
                member=self.name,
                key=c.mirror_key,
                known_members=[m.name for m in c.members if m.name != self.name],
                on_peer=self._on_peer,
                ssl_context=self._ssl_context(server=True),
                epoch=lambda: self.epoch,
            )
            if not primary:
                self._open_copy_mode(c.mirror_name, c.data_dir, self.database)
                self._start_copy()
            for f in c.follow:
                self._start_followed(f)
            if self._want_client_listener:
                from .server import ClientListener

                users = {u.name: u.password_hash for u in getattr(c, "users", ())}
                self.client_listener = ClientListener(
                    self, tuple(c.me.client_address), users=users or None
                )
            if self.kind == "failover" and self.core is not None:
                from .failover import FailoverDriver

                self.driver = FailoverDriver(self, self.core).start()
            self._housekeeper = threading.Thread(
                target=self._housekeep, name=f"irisrep-housekeeping {self.name}", daemon=True
            )
            self._housekeeper.start()
            if c.http_address is not None:
                # Last: a health check that answers 200 finds everything running.
                self.http = HttpServer(self, c.http_address).start()
        except BaseException:
            self.close()
            raise
        log.warning(
            "member %s of mirror %s started as %s (epoch %d)",
            self.name,
            c.mirror_name,
            self.role,
            self.epoch,
        )
        self.event("started", f"started as {self.role} in epoch {self.epoch}", epoch=self.epoch)
        return self

    def _decide_start_role(self) -> None:
        """Ask the mirror core what this member may be after a (re)start: a primary
        that nobody can have replaced (not arbiter-controlled, its tail not served by
        its agent) is primary again in a new epoch; any other former primary waits
        for its partner, following it as a backup (never primary on its own word)."""
        from . import mirrorcore as mc
        from .journal import stream_end

        c = self.config
        peer = next(m for m in c.failover_members if m.name != self.name)
        jdir = c.journal_dir if c.journal_dir is not None else c.data_dir / JOURNAL_DIR_NAME
        end = stream_end(self._fs(), str(jdir)) if os.path.isdir(jdir) else 0
        core = mc.MirrorCore(self.name, peer.name, qos_ms=c.qos_timeout_ms)
        actions = core.handle(
            mc.Started(
                role=self.role,
                epoch=self.epoch,
                journal_end=end,
                arbiter_controlled=self.arbiter_controlled,
                tail_served=self.tail_served,
                incarnation=secrets.randbits(62) + 1,
            )
        )
        for a in actions:
            if isinstance(a, mc.Log):
                log.warning("mirror core %s: %s", self.name, a.text)
                self.event("core", a.text)
        promoted = [a for a in actions if isinstance(a, mc.BecomePrimary)]
        if promoted:
            old_epoch = self.epoch
            self.epoch = promoted[-1].epoch
            self.role = "primary"
            # Every start of a primary is a new epoch: in the history, as any other.
            self._record_history(
                {
                    "event": "role",
                    "epoch": self.epoch,
                    "from": "primary" if old_epoch else "new",
                    "to": "primary",
                    "reason": "restarted as primary" if old_epoch else "first primary",
                    "journal_end": end,
                }
            )
        elif self.role == "primary":
            log.warning(
                "member %s: it was primary but may not decide alone (its tail was served, "
                "or it was arbiter-controlled): it follows its partner as backup",
                self.name,
            )
            self.role = "backup"
        self.arbiter_controlled = False
        self._persist()
        if self.tail_served:
            os.remove(self._served_path)
            self.tail_served = False
        self.core = core

    def _fs(self):
        from .fileio import default_fs

        return default_fs()

    def _persist(self, epoch: int | None = None) -> None:
        _write_state(
            self.state_path,
            {
                "epoch": self.epoch if epoch is None else epoch,
                "role": self.role,
                "arbiter_controlled": self.arbiter_controlled,
            },
        )

    def _record_history(self, entry: dict) -> None:
        """Append one entry to DATA_DIR/history.jsonl (fsynced): `irisrep history`
        reads it, even while the member is down."""
        entry = {"time": time.time(), "member": self.name, **entry}
        self.history.append(entry)
        self.event(entry["event"], _history_text(entry), epoch=entry.get("epoch"))
        path = os.path.join(self.config.data_dir, MIRROR_HISTORY_FILE_NAME)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, json.dumps(entry, sort_keys=True).encode() + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)

    def _on_truncated(self, report: dict) -> None:
        """A tail the primary never had was undone: what, for the history."""
        self._record_history({"event": "tail undone", "epoch": self.epoch, **report})

    def record_mode(self, arbiter_controlled: bool) -> None:
        """The core's RecordMode: durable before the core announces the mode."""
        with self._lock:
            self.arbiter_controlled = bool(arbiter_controlled)
            self._persist()

    def _start_replicator(self) -> None:
        c = self.config
        others = {m.name: m.kind for m in c.members if m.name != self.name}
        self.replicator = Replicator(
            self.database.journal,
            epoch=self.epoch,
            ack_level=c.ack_level,
            qos_timeout_ms=c.qos_timeout_ms,
            members=others,
            on_event=lambda kind, text: self.event(kind, text),
        )
        self.replicator.observe_ack_s = self.metrics.ack_latency.observe
        self.database.committer.replicator = self.replicator

    def _start_copy(self) -> None:
        c = self.config
        candidates = [
            (m.name, tuple(m.mirror_address)) for m in c.failover_members if m.name != self.name
        ]
        self.copy = CopyLink(
            self.database,
            mirror=c.mirror_name,
            member=self.name,
            key=c.mirror_key,
            candidates=candidates,
            epoch=self.epoch,
            ack_level=c.ack_level,
            qos_timeout_ms=c.qos_timeout_ms,
            on_epoch=self._adopt_epoch,
            on_handover=self._on_handover if self.kind == "failover" else None,
            ssl_context=self._ssl_context(server=False),
            source_host=_source_host(c.me.mirror_address.host),
        )
        self.copy.on_truncated = self._on_truncated
        self.copy.on_event = self.event
        self.copy.dejournal_paused = c.mirror_name in self._dejournal_paused
        self.copy.start()

    def _start_followed(self, f) -> None:
        """Open another mirror's copy in DATA_DIR/mirrors/<MIRROR>/ and follow it."""
        c = self.config
        path = os.path.join(c.data_dir, MIRRORS_DIR_NAME, f.mirror_name)
        os.makedirs(path, exist_ok=True)
        state_path = os.path.join(path, MIRROR_STATE_FILE_NAME)
        st = _read_state(state_path)
        if st is None:
            st = {"epoch": 0, "role": "async"}
            _write_state(state_path, st)
        db = Database(
            path,
            direct=c.direct_io,
            pool_blocks=c.pool_blocks,
            commit_mode=c.commit_mode,
            mirror_copy=True,
            epoch=st["epoch"],
            journal_file_bytes=c.journal_file_bytes,
            name=DEFAULT_DATABASE,
            journaling=not f.read_write,  # local changes are never journaled
        )
        for name in f.databases:  # that mirror's other mirrored databases
            db.database(name)
        fm = _Followed(f.mirror_name, path, db, state_path)
        self.followed[f.mirror_name] = fm
        mirror = f.mirror_name
        self._open_copy_mode(mirror, path, db)
        fm.copy = CopyLink(
            db,
            mirror=mirror,
            member=self.name,
            key=f.mirror_key,
            candidates=[(name, tuple(addr)) for name, addr in f.failover_members],
            epoch=st["epoch"],
            ack_level=c.ack_level,
            qos_timeout_ms=c.qos_timeout_ms,
            on_epoch=fm.adopt_epoch,
            ssl_context=self._ssl_context(server=False),
            source_host=_source_host(c.me.mirror_address.host),
        )
        fm.copy.on_event = lambda kind, text: self.event(kind, f"{mirror}: {text}")
        fm.copy.on_truncated = lambda report: self._record_history(
            {"event": "tail undone", "mirror": mirror, "epoch": fm.copy.epoch, **report}
        )
        fm.copy.dejournal_paused = mirror in self._dejournal_paused
        fm.copy.start()

    # --- several mirrors (a reporting async) --------------------------------------------

    def _open_copy_mode(self, mirror: str, directory, db: Database) -> None:
        """A read-write copy: marked ineligible to fail over (durably, before any write
        can land: IRIS clears the FailoverDB flag), then opened for local writes. Any
        copy: its mark, if it was ever read-write, goes into `ineligible`."""
        mark = _read_ineligible(directory)
        if self.config.copy_mode(mirror) == "read-write":
            if mark is None:
                mark = {
                    "mirror": mirror,
                    "member": self.name,
                    "since": time.time(),
                    "reason": 'configured copy = "read-write"',
                }
                _write_state(os.path.join(directory, COPY_INELIGIBLE_FILE_NAME), mark)
                log.warning(
                    "member %s: the copy of mirror %s is read-write: it is no longer "
                    "eligible to fail over, for good (%s)",
                    self.name,
                    mirror,
                    directory,
                )
                self.event(
                    "read-write",
                    f"{mirror}: the copy is read-write: no longer eligible to fail over, for good",
                    mirror=mirror,
                )
            db.set_protect(False)
        if mark is not None:
            self.ineligible[mirror] = mark

    def _mirror_name(self, mirror: str | None) -> str:
        """The configured spelling of `mirror` (None: this member's own mirror);
        IrisrepError naming the mirrors followed if it is none of them."""
        if mirror is None:
            return self.config.mirror_name
        for name in self.config.mirrors_followed:
            if name.lower() == str(mirror).lower():
                return name
        raise IrisrepError(
            f"member {self.name} follows no mirror {str(mirror)[:64]!r}; it follows "
            + ", ".join(self.config.mirrors_followed)
        )

    def _open_databases(self) -> None:
        """The config's `[[databases]]`: mirrored ones in the mirrored instance
        (created empty where missing, on a copy too: their records arrive in the
        stream), local ones in DATA_DIR/local with the journaling asked for."""
        c = self.config
        for d in c.databases:
            if d.mirrored:
                self.database.database(d.name)
        local = [d for d in c.databases if not d.mirrored]
        if not local:
            return
        self.local_instance = Database(
            os.path.join(c.data_dir, LOCAL_INSTANCE_DIR_NAME),
            direct=c.direct_io,
            pool_blocks=c.pool_blocks,
            commit_mode=c.commit_mode,
            name=LOCAL_INSTANCE_ROOT_NAME,
        )
        for d in local:
            db = self.local_instance.database(d.name)
            if db.journaling != d.journaling:
                db.set_journaling(d.journaling)

    def database_named(self, name: str) -> tuple[str, Database]:
        """(canonical name, database) for `name`: DB or a mirrored database, a local
        database, or (reporting async) a followed mirror's copy by mirror name.
        DatabaseNotFoundError (IRIS <NAMESPACE>) naming what there is otherwise."""
        from .database import check_database_name

        if self.database is None:
            raise IrisrepError(f"member {self.name} has no open database")
        if self.config.follow:  # a reporting async: mirror names name the copies
            # "MIRROR2" is that mirror's DB copy, "MIRROR2/SALES" its SALES copy.
            mirror_part, _, db_part = str(name).partition("/")
            for mirror in self.config.mirrors_followed:
                if mirror.lower() == mirror_part.lower():
                    copy = self.mirror_database(mirror)
                    if not db_part:
                        return mirror, copy
                    db_name = check_database_name(db_part)
                    return f"{mirror}/{db_name}", copy.database(db_name, create=False)
        canonical = check_database_name(name)
        instances = [self.database]
        if self.local_instance is not None:
            instances.append(self.local_instance)
        for inst in instances:
            with contextlib.suppress(DatabaseNotFoundError):
                return canonical, inst.database(canonical, create=False)
        there = [n for inst in instances for n in inst.database_names()]
        if self.local_instance is not None:
            there.remove(LOCAL_INSTANCE_ROOT_NAME)
        raise DatabaseNotFoundError(
            f"<NAMESPACE> member {self.name} has no database {canonical} (it has "
            f"{', '.join([*there, *self.config.mirrors_followed[1:]])})"
        )

    def databases_status(self) -> list[dict]:
        """One entry per database this member holds (the followed mirrors' aside)."""
        out = []
        for inst, mirrored in ((self.database, True), (self.local_instance, False)):
            if inst is None:
                continue
            for n in inst.database_names():
                if not mirrored and n == LOCAL_INSTANCE_ROOT_NAME:
                    continue
                db = inst.database(n, create=False)
                out.append(
                    {
                        "name": n,
                        "mirrored": mirrored,
                        "journaling": db.journaling,
                        "read_only": db.protected,
                    }
                )
        return out

    def mirror_database(self, mirror: str | None = None) -> Database:
        """The copy of `mirror`'s database (None or this member's own mirror:
        `database`). Read-only, as every copy."""
        name = self._mirror_name(mirror)
        db = self.database if name == self.config.mirror_name else self.followed[name].database
        if db is None:
            raise IrisrepError(f"member {self.name} has no open database")
        return db

    def _copy_link(self, mirror: str | None) -> tuple[str, CopyLink | None]:
        name = self._mirror_name(mirror)
        if name == self.config.mirror_name:
            return name, self.copy
        return name, self.followed[name].copy

    def pause_dejournaling(self, mirror: str | None = None) -> dict:
        """Hold applying `mirror`'s journal (None: this member's own mirror). The
        journal is still received, made durable and acknowledged, so the primary and
        its purge see no difference; the copy stays at a frame boundary. Async
        members only: a backup's apply lag would lengthen a takeover. Returns that
        mirror's status entry."""
        if self.kind == "failover":
            raise IrisrepError(
                f"member {self.name} is a failover member: dejournaling pauses on asyncs only"
            )
        name, link = self._copy_link(mirror)
        self._dejournal_paused.add(name)
        if link is not None:
            link.pause_dejournaling()
        self.event("dejournaling", f"{name}: dejournaling paused")
        return self._mirror_status(name)

    def resume_dejournaling(self, mirror: str | None = None) -> dict:
        """Apply `mirror`'s journal again, catching up from this member's own journal
        first. Returns that mirror's status entry."""
        name, link = self._copy_link(mirror)
        self._dejournal_paused.discard(name)
        n = link.resume_dejournaling() if link is not None else 0
        self.event("dejournaling", f"{name}: dejournaling resumed ({n} records caught up)")
        return self._mirror_status(name)

    def _mirror_status(self, name: str) -> dict:
        """One followed mirror as `irisrep ps` shows it on an async."""
        _name, link = self._copy_link(name)
        db = self.mirror_database(name)
        mode = self.config.copy_mode(name)
        out = {
            "mirror": name,
            "dejournal_paused": name in self._dejournal_paused,
            "copy": _copy_text(mode, self.ineligible.get(name)),
            "read_write": mode == "read-write",
            # The copy (the database) may never serve a failover: IRIS's FailoverDB flag.
            "failover_eligible": name not in self.ineligible,
        }
        if link is None:
            out.update(status="Waiting", connected_to=None)
            return out
        cs = link.status()
        durable = cs["durable"]
        out.update(
            status="Waiting" if cs["connected_to"] is None else "Connected",
            connected_to=cs["connected_to"],
            journal_transfer=cs["journal_transfer"],
            received=cs["received"],
            durable=durable,
            applied=db.applied_position,
            primary_end=cs["primary_end"],
            lag_bytes=cs["lag_bytes"],
            lag_s=cs["lag_s"],
            dejournal_lag_bytes=max(0, durable - db.applied_position),
            dejournaling=cs["dejournaling"],
            epoch=cs["epoch"],
            last_error=cs["last_error"],
        )
        return out

    def _on_peer(self, sock, peer) -> None:
        """The mirror listener's callback: the primary streams to the member; any
        other role answers with its status and closes (the caller tries the next)."""
        rep = self.replicator
        if self.role == "primary" and rep is not None and not rep.closed:
            rep.on_peer(sock, peer)
        else:
            self._refuse_peer(sock, peer)

    # --- role changes -----------------------------------------------------------------------

    def _set_role(self, role: str, epoch: int, why: str) -> None:
        """Persist the role and epoch (before anything is written in the new epoch),
        then publish them."""
        old, self.role, self.epoch = self.role, role, epoch
        self.role_change_counts[old, role] = self.role_change_counts.get((old, role), 0) + 1
        if role != "primary":
            self.arbiter_controlled = False
        self._persist()
        self._record_history(
            {
                "event": "role",
                "epoch": epoch,
                "from": old,
                "to": role,
                "reason": why,
                "journal_end": self.database.journal.end_position if self.database else None,
            }
        )
        log.warning("member %s: %s -> %s in epoch %d (%s)", self.name, old, role, epoch, why)
        for cb in list(self._role_callbacks):
            cb(self, old, role)

    def promote(
        self,
        *,
        reason: str = "promoted",
        epoch: int | None = None,
        keep_core: bool = False,
        how: str = "manual",
    ) -> int:
        """Make this backup (or DR async, manually) the primary; returns the new epoch.
        `how` ("failover", "switchover" or "manual") is what /metrics counts it as.

        Its link to the old primary is closed first, so nothing more arrives; every
        durable frame is applied; the epoch is bumped and persisted; the transactions
        the old primary left open are rolled back and journaled in the new epoch;
        then commits are accepted and shipped to whoever connects."""
        if how not in self.promotion_counts:
            raise ValueError(f"how={how!r}: one of {', '.join(MIRROR_PROMOTION_KINDS)}")
        if self.kind == "async-reporting":
            raise FailoverIneligibleError(
                f"member {self.name} is a reporting async: it is never promoted (a backup "
                "or a DR async is)"
                + (
                    f"; its copy of {self.config.mirror_name} was read-write"
                    if self.config.mirror_name in self.ineligible
                    else ""
                )
            )
        with self._role_lock:
            if self.role == "primary":
                raise TransactionError(f"member {self.name} is already primary")
            copy, self.copy = self.copy, None
            seen = self.epoch
            if copy is not None:
                copy.close()
                seen = max(seen, copy.epoch)
            db = self.database
            db.apply_rest_of_journal()
            epoch = max(seen + 1, epoch or 0)
            self._set_role("primary", epoch, reason)
            self.promotion_counts[how] += 1
            # The replicator's hook is on the journal before the first commit can land.
            rolled_back = db.become_primary(epoch, before_writable=self._start_replicator)
            if rolled_back:
                self.history[-1]["rolled_back"] = rolled_back
            self._reset_core(keep_core)
            return epoch

    def wait_writable(self, timeout_s: float) -> bool:
        """While this member is becoming primary (its role says primary, its database
        is not open for writes yet): wait until it is. False if it stops being primary
        or the time runs out."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            db = self.database
            if self.role != "primary" or db is None or self.closed:
                return False
            if not db.protected:
                return True
            time.sleep(0.005)
        return False

    def _on_handover(self, end_position: int, epoch: int) -> bool:
        """The primary hands over (planned): it has stopped committing and this
        backup holds its whole journal (`end_position`). Called on the copy's link
        thread; the promotion runs on its own thread (it closes that link)."""
        if self.database.journal.durable_position != end_position:
            log.warning(
                "member %s: handover refused: our journal ends at %d, the primary's at %d",
                self.name,
                self.database.journal.durable_position,
                end_position,
            )
            return False
        threading.Thread(
            target=self.promote,
            kwargs={"reason": "planned handover", "how": "switchover"},
            daemon=True,
        ).start()
        return True

    def demote(self, *, reason: str = "handed over") -> None:
        """Stop being primary (planned): no new commit is accepted, in-flight ones
        finish, the database becomes a read-only copy that follows the new primary."""
        with self._role_lock:
            if self.role != "primary":
                raise TransactionError(f"member {self.name} is not primary")
            db = self.database
            db.set_protect(True)
            rep, self.replicator = self.replicator, None
            # The closed replicator stays the committer's: a commit logged while this
            # member was primary and synced only now (a deferred one) returns only if
            # the backup acknowledged it, else raises; never "durable here" alone.
            if rep is not None:
                rep.close()
            db.become_copy()
            self._set_role("backup" if self.kind == "failover" else "async", self.epoch, reason)
            self._start_copy()
            self._reset_core(False)

    def demote_fenced(self, *, epoch: int) -> None:
        """The core's Demote: a newer primary exists. Nothing commits here any more
        (commits in flight fail: they may not have been acknowledged by the mirror);
        the database becomes a copy that follows the new primary, whose catch-up
        cuts any tail of ours it never had."""
        with self._role_lock:
            if self.role != "primary":
                return
            db = self.database
            db.set_protect(True)
            rep, self.replicator = self.replicator, None
            # The fenced replicator stays the committer's: a commit logged while this
            # member was primary and synced only now (a deferred one, on a syncer) raises
            # instead of returning durable here alone. Its records are the tail the new
            # primary's catch-up cuts; acknowledging one would lose it.
            if rep is not None:
                rep.fenced_by = max(epoch, self.epoch + 1)
                rep.close()
            db.become_copy(force=True)
            self._set_role("backup", max(epoch, self.epoch), f"fenced by epoch {epoch}")
            self._start_copy()

    def _reset_core(self, keep_core: bool) -> None:
        """After a role change: the failover driver follows the new links, with the
        same core (it decided the change) or one resumed in the new role."""
        if self.driver is None:
            return
        if keep_core:
            return  # the driver re-attaches on its own thread
        from .failover import resumed_core

        peer = next(m for m in self.config.failover_members if m.name != self.name)
        self.driver.reset(
            resumed_core(self.name, peer.name, self.config.qos_timeout_ms, self.role, self.epoch)
        )

    def switchover(self, *, timeout_s: float = 30.0) -> str:
        """Planned failover to the Active backup without losing a commit: stop
        committing, wait until the backup has acknowledged the whole journal, tell
        it to take over, follow it. Returns the new primary's name."""
        with self._role_lock:
            rep = self.replicator
            if self.role != "primary" or rep is None:
                raise TransactionError(f"member {self.name} is not primary")
            link = rep.active
            if link is None:
                raise TransactionError("no Active backup to hand over to")
            db = self.database
            db.set_protect(True)  # new writes: <PROTECT>; commits in flight finish
            try:
                db.quiesce(timeout_s)
                end = db.journal.end_position
                deadline = time.monotonic() + timeout_s
                while max(link.state.durable, link.state.applied) < end:
                    if link.state.closed or time.monotonic() > deadline:
                        raise TransactionError(
                            f"backup {link.state.name} did not acknowledge position {end}"
                        )
                    time.sleep(0.001)
                rep.hand_over(link, end)
            except BaseException:
                db.set_protect(False)
                raise
            target = link.state.name
        self.demote(reason=f"switchover to {target}")
        return target

    def _ssl_context(self, *, server: bool):
        tls = self.config.tls
        if tls is None:
            return None
        import ssl

        purpose = ssl.Purpose.CLIENT_AUTH if server else ssl.Purpose.SERVER_AUTH
        ctx = ssl.create_default_context(purpose, cafile=str(tls.ca_file))
        ctx.load_cert_chain(str(tls.cert_file), str(tls.key_file))
        if server:
            ctx.verify_mode = ssl.CERT_REQUIRED
        else:
            ctx.check_hostname = False
        return ctx

    def _refuse_peer(self, sock, peer) -> None:
        """A member that is not primary answers a mirror connection with its status
        (who it is, whom it follows) and closes it: the caller tries the next."""
        try:
            body = json.dumps(
                {
                    "member": self.name,
                    "role": self.role,
                    "primary": self.copy.primary if self.copy else None,
                }
            ).encode()
            wire.send_frame(sock, wire.STATUS, self.epoch, body, timeout_ms=1000)
        except (OSError, wire.WireError):
            pass
        finally:
            sock.close()

    def _adopt_epoch(self, epoch: int) -> None:
        with self._lock:
            if epoch <= self.epoch:
                return
            log.warning("member %s: epoch %d -> %d", self.name, self.epoch, epoch)
            self.event("epoch", f"epoch {self.epoch} -> {epoch} (from the primary)", epoch=epoch)
            # Durable before anyone can see it: status() and the acks carry self.epoch.
            self._persist(epoch)
            self.epoch = epoch

    def on_role(self, callback) -> None:
        """Call `callback(member, old_role, new_role)` when the role changes."""
        self._role_callbacks.append(callback)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.event("stopped", f"stopped as {self.role} in epoch {self.epoch}", epoch=self.epoch)
        if self.client_listener is not None:
            self.client_listener.close()
        if self.mirror_listener is not None:
            self.mirror_listener.close()
        if self.driver is not None:
            self.driver.close()
        self._housekeeping_stop.set()
        if self._housekeeper is not None:
            self._housekeeper.join(timeout=30)
        if self.copy is not None:
            self.copy.close()
        for fm in self.followed.values():
            if fm.copy is not None:
                fm.copy.close()
            fm.database.close()
        if self.replicator is not None:
            # The members' last positions, while the links still say them.
            self._save_members_quietly(force=True)
            self.replicator.close()
        if self.database is not None:
            self.database.close()
        if self.local_instance is not None:
            self.local_instance.close()
        if self.http is not None:
            # Last: until here /health answered 503 (stopping), not "connection refused".
            self.http.close()

    def __enter__(self) -> Member:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- housekeeping: members' positions, journal purge; online backups ---------------

    def member_positions(self, *, save: bool = True, force: bool = False) -> list:
        """On a primary: every other member of the config as the journal purge sees it
        (purge.member_positions: streaming now, else its last saved position and
        time, else never connected), saved to mirror-members.json when a position
        changed (or `force`, or MIRROR_MEMBERS_REFRESH_S passed while one streams).
        On a backup or async: [] (it does not know the others' positions).
        JournalPurgeError if the saved file is damaged (never overwritten then)."""
        from . import purge

        rep = self.replicator
        if self.role != "primary" or rep is None:
            return []
        c = self.config
        others = [(m.name, m.kind) for m in c.members if m.name != self.name]
        with self._members_lock:
            if self._member_records is None:
                self._member_records = purge.load_member_records(c.data_dir)
            old = self._member_records
            now = time.time_ns()
            positions, new = purge.member_positions(others, rep.peers(), old, now)
            if save:
                moved = {k: (r["kind"], r["position"]) for k, r in new.items()} != {
                    k: (r.get("kind"), r["position"]) for k, r in old.items()
                }
                stale = (
                    any(p.connected for p in positions)
                    and now - self._members_saved_ns > MIRROR_MEMBERS_REFRESH_S * 1e9
                )
                if moved or stale or force:
                    purge.save_member_records(c.data_dir, new)
                    self._members_saved_ns = now
                    self._member_records = new
        return positions

    def _save_members_quietly(self, *, force: bool = False) -> bool:
        try:
            self.member_positions(force=force)
            return True
        except (IrisrepError, OSError) as e:
            log.error("member %s: cannot save the members' positions: %s", self.name, e)
            return False

    def journal_purge(self, *, dry_run: bool = False, older_than_days: float = JOURNAL_PURGE_DAYS):
        """Purge this member's journal (Database.journal_purge) with every other
        member's position on a primary; returns the purge.PurgeDecision."""
        db = self.database
        if db is None:
            raise IrisrepError(f"member {self.name} has no open database")
        members = self.member_positions()
        decision = db.journal_purge(
            older_than_days=older_than_days,
            members=members,
            member_limit_days=self.config.journal_purge_member_limit_days,
            dry_run=dry_run,
        )
        if self.role != "primary":
            decision.notes.append(
                f"{self.name} is {self.role}: the other members' positions are known on "
                f"the primary only, so none holds files back here"
            )
        if decision.removed:
            self.event(
                "journal purge",
                f"removed {len(decision.removed)} journal files: {', '.join(decision.removed)}",
            )
        return decision

    def _housekeep(self) -> None:
        """The members' positions every MIRROR_MEMBERS_SAVE_MS (a primary), a purge
        every JOURNAL_PURGE_INTERVAL_S; a failure is logged once and retried."""
        next_purge = time.monotonic() + JOURNAL_PURGE_INTERVAL_S
        warned = False
        while not self._housekeeping_stop.wait(MIRROR_MEMBERS_SAVE_MS / 1000):
            try:
                self.member_positions()
                warned = False
            except (IrisrepError, OSError) as e:
                # A damaged file is never overwritten (purges refuse and say why);
                # a full disk may pass: retried every round, logged once.
                if not warned:
                    log.error("member %s: cannot save the members' positions: %s", self.name, e)
                    warned = True
            if time.monotonic() < next_purge:
                continue
            next_purge = time.monotonic() + JOURNAL_PURGE_INTERVAL_S
            try:
                self.journal_purge()
            except (IrisrepError, OSError) as e:
                if not self._housekeeping_stop.is_set():
                    log.error("member %s: journal purge failed: %s", self.name, e)

    def backup_create(self, out_dir: str, incremental: bool = False):
        """An online backup of this member's database into `out_dir` (on this host),
        taken in this process while everything runs (backup.create_backup); returns
        the BackupInfo. On a backup or async the image is a mirror copy's: nothing
        is journaled, and dejournaling yields to the backup instead of stalling the
        link (Database.apply_frames). While it runs, status()["backup"] says how many
        bytes of the database files it has copied of how many (the bar of `irisrep
        backup create --member M`); one backup at a time."""
        from .backup import create_backup
        from .constants import BLOCK_SIZE

        db = self.database
        if db is None:
            raise IrisrepError(f"member {self.name} has no open database")
        state = {
            "out_dir": out_dir,
            "incremental": incremental,
            "running": True,
            "done_bytes": 0,
            # the files' size now: the copies are of the last checkpoint, at most this
            "total_bytes": sum(d.store.block_count for d in db._databases()) * BLOCK_SIZE,
            "error": None,
        }
        with self._lock:  # one at a time (the database's window says so too)
            if self.backup_progress is not None and self.backup_progress["running"]:
                raise BackupError(
                    f"member {self.name}: another backup is being taken (into "
                    f"{self.backup_progress['out_dir']})"
                )
            self.backup_progress = state

        def progress(n: int) -> None:
            state["done_bytes"] += n

        try:
            info = create_backup(db, out_dir, incremental=incremental, progress=progress)
        except BaseException as exc:
            state["error"] = str(exc)
            raise
        finally:
            state["running"] = False
        state["total_bytes"] = info.block_count * BLOCK_SIZE  # what the copies held
        state["name"] = info.name
        self.event(
            "backup",
            f"{info.kind} backup {info.name} as {self.role}: journal "
            f"{info.journal_start}..{info.journal_end}",
        )
        return info

    # --- what the client listener and `irisrep ps` use ----------------------------------

    @property
    def primary_client_address(self) -> str | None:
        if self.role == "primary":
            return str(self.config.me.client_address)
        name = self.copy.primary if self.copy else None
        if name is None:
            return None
        return str(self.config.member(name).client_address)

    def status(self) -> dict:
        db = self.database
        out = {
            "mirror": self.config.mirror_name,
            "member": self.name,
            "kind": self.kind,
            "role": self.role,
            "epoch": self.epoch,
            "pid": os.getpid(),
            "mirror_address": str(self.config.me.mirror_address),
            "client_address": str(self.config.me.client_address),
            "http_address": None if self.http is None else str(self.http.address),
            "ack_level": self.config.ack_level,
            "qos_timeout_ms": self.config.qos_timeout_ms,
        }
        drv = self.driver
        if self.kind != "failover":
            out["arbiter_link"] = "not used (async)"  # only failover members ask it
        elif drv is not None and drv.arbiter is not None:
            out["arbiter_link"] = "connected" if drv.arbiter.connected else "lost"
        elif self.config.arbiter_address is not None:
            out["arbiter_link"] = "lost"
        else:
            out["arbiter_link"] = "none configured"
        out["arbiter_controlled"] = self.arbiter_controlled
        if db is not None:
            out["journal_end"] = db.journal.end_position
            out["journal_durable"] = db.journal.durable_position
            out["applied"] = db.applied_position if db.mirror_copy else db.journal.end_position
        if self.role == "primary" and self.replicator is not None:
            rep = self.replicator
            out["status"] = "In Trouble" if self.trouble else "Primary"
            out["peers"] = rep.peers()
            active = rep.active
            out["active_backup"] = active.state.name if active is not None else None
            out["events"] = [list(e) for e in list(rep.events)[-20:]]
        elif self.copy is not None:
            cs = self.copy.status()
            out.update(cs)
            if cs["connected_to"] is None:
                out["status"] = "Waiting"
            elif cs["lag_bytes"] > 0:
                out["status"] = "Synchronizing"
            else:
                out["status"] = "Backup" if self.role == "backup" else "Connected"
        if self.kind != "failover" and self.role != "primary":
            out["mirrors"] = [self._mirror_status(m) for m in self.config.mirrors_followed]
            own = out["mirrors"][0]
            out["copy"] = own["copy"]
            out["read_write"] = own["read_write"]
            out["failover_eligible"] = own["failover_eligible"]
            out["ineligible_copies"] = sorted(self.ineligible)
        if db is not None and not db.closed:
            out["databases"] = self.databases_status()
        if self.backup_progress is not None:
            out["backup"] = dict(self.backup_progress)
        return out


def serve(config_path: str) -> int:
    """`irisrep serve --config FILE`: run one member until a signal stops it.

    SIGTERM is a planned stop: a primary with an Active backup hands over to it
    first (IRIS: a primary stopped normally fails over to its backup), then stops
    as a backup. SIGUSR1 stops without handing over (`irisrep stop --nofailover`);
    SIGINT too."""
    import signal

    from .config import load_config

    config = load_config(config_path)
    stop = threading.Event()
    handover = [False]

    def _stop(signo, _frame) -> None:
        handover[0] = signo == signal.SIGTERM
        stop.set()

    # Before the member starts: a stop that arrives while it starts (it may already
    # be streaming) must be a clean stop, never the default death by signal.
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGUSR1, _stop)
    member = Member(config).start()
    print(
        f"irisrep: member {member.name} of mirror {config.mirror_name} serving as "
        f"{member.role}: mirror {config.me.mirror_address}, clients {config.me.client_address}"
        + (f", http {member.http.address}" if member.http is not None else ""),
        flush=True,
    )
    try:
        while not stop.wait(0.5):
            pass
        if handover[0] and member.role == "primary":
            try:
                new = member.switchover(timeout_s=10.0)
                print(f"irisrep: handed over to {new} before stopping", flush=True)
            except IrisrepError as e:
                print(f"irisrep: stopping without a handover: {e}", flush=True)
    finally:
        member.close()
    return 0
