"""The mirror simulator with data: no acknowledged write is lost, survivors converge.

`DataSim` extends `SimMirror` (test_mirrorcore.py: two cores, the arbiter, an agent
per host, network faults) with journals: each member's journal is a list of entries
`(epoch, write_id)`, and the data path acts on the core's decisions the way
mirror.py and failover.py do:

- a client sends writes to the member it believes is primary (it moves on only when
  that member says it is not); the primary appends one only while the core says
  `committing` (StopCommitting closes the gate), and ships it to every connected
  copy on an ordered stream per connection (a lost frame or a cut link breaks the
  stream; both ends learn it after a delay, like a TCP reset or a timeout);
- a copy (the backup, and an async `C` that follows whichever member is primary)
  connects with a catch-up request `(position, last entry)`; the primary checks it
  as `Replicator._check_start` does: past its end, or beyond its `base_position`
  (its journal length when its life as primary began) with a last entry it never
  wrote: refused with `truncate_to=base` (when the position is past base); the copy
  cuts its journal to base (`CopyLink._drop_tail`) and connects again. At or below
  base the position is trusted (mirror.py: "the same bytes");
- the copy appends frames in order, acks its length; the primary's write returns to
  the client when the backup's ack covers it, or when the gate is `alone` (no Active
  backup: never one, or DropBackup released it). A crashed, paused, fenced or
  demoted primary acks nothing. The backup becomes Active (BackupActive) once its
  ack is within `active_lag` entries of the end (mirror.py: MIRROR_ACTIVE_LAG_BYTES_MAX);
  a broken stream or a write waiting past the QoS timeout is BackupInactive;
- FetchJournalTail through the agent appends the down member's journal beyond our
  own end (failover._fetch_tail: `from_position=journal.durable_position`), and a
  hand-over promotes when the backup's journal reaches the primary's end
  (member._on_handover).

Invariants, after every step (besides SimMirror's): every write acknowledged to the
client is in the journal of the current primary (the running/paused member with
the highest epoch that is primary), and after the faults stop and the network heals
(`HEAL_MS`, writes continue for a while, then stop), there is one primary, every
live member's journal is equal, and every acknowledged write is in each of them.

A failing seed prints the seed, `DataSim(seed).run()` to replay it, and the tail of
the trace.
"""

from __future__ import annotations

import heapq
import os
import time

import pytest
from test_mirrorcore import HEARTBEAT_MS, HOSTS, SILENCE_MS, TICK_MS, InvariantError, SimMirror

from irisrep import mirrorcore as mc

ASYNC = "C"
HEAL_MS = 5_000  # after the faults: network healed, everybody started
HEAL_WRITES_MS = 2_000  # writes go on this long into the healing, then stop
CONNECT_TIMEOUT_MS = 200
STREAM_BREAK_MS = (20, SILENCE_MS)  # how long until both ends see a broken stream


class DataSim(SimMirror):
    """SimMirror with journals, a client, the data path, and an async member."""

    # The rules of the data path (a test breaks one to prove the checks bite).
    ack_rule = "core"  # "core": ack covers or gate alone; "local": ack at once
    truncate_rule = "base"  # "base": cut to truncate_to (mirror.py); "none": ignore it
    # The agent's tail: "whole" takes the down member's journal (ours only when theirs
    # is a prefix of it); "append" is failover.py's `_fetch_tail` (theirs beyond our
    # end, as if ours were a prefix of theirs); "skip" fetches nothing (broken).
    fetch_rule = "whole"
    # How a primary checks a copy's catch-up position: "lcp" cuts it to the prefix it
    # shares with the primary's journal; "base" is mirror.py's `_check_start` (trusts
    # every position up to base_position, checks the last entry beyond it).
    check_rule = "lcp"

    def __init__(self, seed: int, *, active_lag: int = 0, with_async: bool = True, **kw):
        super().__init__(seed, **kw)
        self.active_lag = active_lag
        self.copies = (*HOSTS, ASYNC) if with_async else HOSTS
        self.jl: dict[str, list[tuple[int, int]]] = {m: [] for m in self.copies}
        self.journal = {m: 0 for m in HOSTS}  # lengths, for SimMirror's own uses
        self.base: dict[str, int] = {m: 0 for m in HOSTS}
        self.fenced: dict[str, bool] = {m: False for m in HOSTS}
        self.pending: dict[str, list[tuple[int, tuple[int, int], int]]] = {m: [] for m in HOSTS}
        self.partner_ack: dict[str, int] = {m: 0 for m in HOSTS}
        self.ship: dict[tuple[str, str], dict] = {}  # (primary, copy) -> session
        self.sess: dict[str, dict | None] = {m: None for m in self.copies}  # copy side
        self.stream_last: dict[int, int] = {}  # sid -> last delivery time (FIFO)
        self.dead: set[int] = set()
        self.sid = 0
        self.c_epoch = 0
        self.c_try = 0
        self.write_id = 0
        self.client_target = "A"
        # entry -> (member, time, position) of each write acknowledged to the client
        self.acked: dict[tuple[int, int], tuple[str, int, int]] = {}
        self.cuts = 0  # journals replaced or cut (a removal: the check runs again)
        self._checked: tuple | None = None
        self._checked_acks = 0
        self.ack_log: list[tuple[tuple[int, int], str, int]] = []
        self.healing = False
        self.stats = {"writes": 0, "acked": 0, "truncations": 0, "fetches": 0}

    # --- journals ----------------------------------------------------------------------

    def _set_journal(self, m: str, entries: list) -> None:
        self.jl[m] = entries
        if m in HOSTS:
            self.journal[m] = len(entries)
        self.cuts += 1

    def _append(self, m: str, entry: tuple[int, int]) -> None:
        self.jl[m].append(entry)
        if m in HOSTS:
            self.journal[m] = len(self.jl[m])

    # --- streams (ordered per connection) --------------------------------------------------

    def _stream(self, src: str, dst: str, sid: int, msg: tuple) -> None:
        if sid in self.dead:
            return
        if not self.reachable(src, dst) or self.rng.random() < self.loss:
            self._break(sid, f"stream {sid} {src}->{dst} broken")
            return
        t = max(self.now + self.rng.randint(1, self.delay_max), self.stream_last.get(sid, 0))
        self.stream_last[sid] = t
        self.at(t, "deliver", src, dst, msg)

    def _break(self, sid: int, why: str) -> None:
        if sid in self.dead:
            return
        self.dead.add(sid)
        self.log(why)
        self.at(self.now + self.rng.randint(*STREAM_BREAK_MS), "broken", sid)

    def _on_broken(self, sid: int) -> None:
        for m, s in self.sess.items():
            if s is not None and s["sid"] == sid:
                self.sess[m] = None
        for key, rec in list(self.ship.items()):
            if rec["sid"] == sid:
                del self.ship[key]
                p, c = key
                core = self.core[p]
                if c == self.other(p) and core is not None and core.backup_active:
                    self.feed(p, mc.BackupInactive())

    def _close_ships(self, p: str) -> None:
        for key, rec in list(self.ship.items()):
            if key[0] == p:
                self._break(rec["sid"], f"{p} closes its stream to {key[1]}")

    def _close_copy(self, m: str) -> None:
        s = self.sess.get(m)
        if s is not None:
            self._break(s["sid"], f"{m} closes its copy stream from {s['src']}")
            self.sess[m] = None

    # --- the copy's side -----------------------------------------------------------------

    def _copy_epoch(self, m: str) -> int | None:
        if m == ASYNC:
            return self.c_epoch
        core = self.core[m]
        if core is None or self.proc[m] != "running" or core.role != "backup":
            return None
        return core.epoch

    def _connect(self, m: str) -> None:
        epoch = self._copy_epoch(m)
        s = self.sess[m]
        if epoch is None:
            if s is not None:
                self._close_copy(m)
            return
        if s is not None:
            if s["state"] == "connecting" and self.now - s["t"] > CONNECT_TIMEOUT_MS:
                self._close_copy(m)
            return
        if m == ASYNC:
            self.c_try += 1
            src = HOSTS[self.c_try % 2]
        else:
            src = self.other(m)
        self.sid += 1
        self.sess[m] = {"sid": self.sid, "src": src, "state": "connecting", "t": self.now}
        j = self.jl[m]
        claim = ("catchup", self.sid, epoch, len(j), j[-1] if j else None, tuple(j))
        self._stream(m, src, self.sid, claim)

    def copy_receive(self, m: str, src: str, msg: tuple) -> None:
        kind, sid = msg[0], msg[1]
        s = self.sess[m]
        if s is None or s["sid"] != sid or s["src"] != src:
            return
        epoch = self._copy_epoch(m)
        if epoch is None:
            self._close_copy(m)
            return
        if kind == "truncate":
            to = msg[2]
            self._close_copy(m)
            if self.truncate_rule == "base" and to < len(self.jl[m]):
                self.log(f"{m} drops its journal tail {to}..{len(self.jl[m])} on {src}'s word")
                self.stats["truncations"] += 1
                self._set_journal(m, self.jl[m][:to])
            return
        if kind == "refused":
            self._close_copy(m)
            return
        if kind == "accepted":
            if msg[2] < epoch:
                self._close_copy(m)
                return
            if m == ASYNC:
                self.c_epoch = max(self.c_epoch, msg[2])
            s["state"] = "streaming"
            s["epoch"] = msg[2]
            self._stream(m, src, sid, ("ack", sid, msg[2], len(self.jl[m])))
            return
        if kind == "frame":
            _, _, fepoch, pos, entry = msg
            if fepoch < epoch:
                self._close_copy(m)
                return
            j = self.jl[m]
            if pos == len(j):
                self._append(m, entry)
            elif pos > len(j) or j[pos] != entry:
                self._close_copy(m)  # a gap or a frame we hold otherwise: start again
                return
            self._stream(m, src, sid, ("ack", sid, fepoch, len(j)))

    # --- the primary's side --------------------------------------------------------------

    def _serving(self, p: str) -> mc.MirrorCore | None:
        core = self.core[p]
        if core is None or self.proc[p] != "running" or core.role != "primary":
            return None
        return core

    def primary_receive(self, p: str, src: str, msg: tuple) -> None:
        kind, sid = msg[0], msg[1]
        core = self._serving(p)
        if kind == "catchup":
            _, _, epoch, pos, last, theirs = msg
            if core is None:
                self._stream(p, src, sid, ("refused", sid))
                return
            if epoch > core.epoch:
                # mirror.py: a frame of a newer epoch fences the replicator
                if not self.fenced[p]:
                    self.log(f"{p}'s replicator fenced by {src}'s epoch {epoch}")
                self.fenced[p] = True
                self._stream(p, src, sid, ("refused", sid))
                return
            j = self.jl[p]
            base = self.base[p]
            if self.check_rule == "lcp":
                # The ideal: cut the copy back to the longest prefix it shares with us
                # (entries are unique: a shared one was shipped from the same write).
                n = next(
                    (i for i, (x, y) in enumerate(zip(theirs, j, strict=False)) if x != y), None
                )
                n = min(len(theirs), len(j)) if n is None else n
                problem = n < pos
                to = n
            else:
                # mirror.py `_check_start`: positions up to base are trusted.
                problem = pos > len(j) or (0 < pos and pos > base and j[pos - 1] != last)
                to = base
            if problem:
                reply = ("truncate", sid, to) if pos > to else ("refused", sid)
                self.log(f"{p} refuses {src} at {pos} (end {len(j)}, base {base}): {reply[0]}")
                self._stream(p, src, sid, reply)
                return
            old = self.ship.pop((p, src), None)
            if old is not None:
                self._break(old["sid"], f"{p}: {src} reconnects")
            self.ship[(p, src)] = {"sid": sid, "acked": pos, "epoch": core.epoch}
            self._stream(p, src, sid, ("accepted", sid, core.epoch))
            for i in range(pos, len(j)):
                self._stream(p, src, sid, ("frame", sid, core.epoch, i, j[i]))
        elif kind == "ack":
            _, _, epoch, n = msg
            rec = self.ship.get((p, src))
            if core is None or rec is None or rec["sid"] != sid or epoch != core.epoch:
                return
            rec["acked"] = max(rec["acked"], n)
            if src != self.other(p):
                return  # an async never holds a commit back
            self.partner_ack[p] = max(self.partner_ack[p], n)
            if not core.backup_active:
                if len(self.jl[p]) - n <= self.active_lag:
                    self.feed(p, mc.BackupActive())
            elif core.backup_failing_at is not None:
                self.feed(p, mc.AckReceived(n))
            self.settle(p)

    def settle(self, p: str) -> None:
        """Return to the client the writes the rules let return."""
        core = self._serving(p)
        if core is None or self.fenced[p] or not self.pending[p]:
            return
        still = []
        for pos, entry, t in self.pending[p]:
            if self.ack_rule == "local" or core.gate == "alone" or self.partner_ack[p] > pos:
                self.acked[entry] = (p, self.now, pos)
                self.ack_log.append((entry, p, pos))
                self.stats["acked"] += 1
                self.log(f"{p} acks write {entry} at {pos} (gate {core.gate})")
            else:
                still.append((pos, entry, t))
        if len(still) < len(self.pending[p]):
            self.pending[p] = still
            self.check()

    def client_write(self) -> None:
        if self.healing and self.now > self.duration_ms + HEAL_WRITES_MS:
            return
        self.at(self.now + self.rng.randint(5, 40), "write")
        p = self.client_target
        core = self.core[p]
        if self.proc[p] == "paused":
            return  # no answer: the client times out (and tries again)
        if core is None or core.role != "primary":
            self.client_target = self.other(p)  # NotPrimaryError (or no answer)
            return
        if not core.committing or self.fenced[p] or self.proc[p] != "running":
            return
        self.write_id += 1
        self.stats["writes"] += 1
        entry = (core.epoch, self.write_id)
        pos = len(self.jl[p])
        self._append(p, entry)
        self.pending[p].append((pos, entry, self.now))
        for (q, c), rec in list(self.ship.items()):
            if q == p:
                self._stream(p, c, rec["sid"], ("frame", rec["sid"], core.epoch, pos, entry))
        self.settle(p)

    # --- SimMirror's hooks ------------------------------------------------------------------

    def feed(self, m: str, event: mc.Event) -> None:
        super().feed(m, event)  # checks the invariants
        if m in HOSTS:
            self.settle(m)

    def crash(self, m: str) -> None:
        if self.proc[m] != "down":
            self._lose_life(m)
        super().crash(m)

    def _lose_life(self, m: str) -> None:
        if self.pending[m]:
            self.log(f"{m}: {len(self.pending[m])} writes never acknowledged")
        self.pending[m] = []
        self._close_ships(m)
        self._close_copy(m)

    def execute(self, m: str, a: mc.Action) -> None:
        if isinstance(a, mc.FetchJournalTail) and not a.from_agent:
            # member._on_handover: promote when our journal is the primary's whole one
            self.at(self.now + 1, "local-tail", m, a.to_position)
            return
        super().execute(m, a)
        if isinstance(a, mc.BecomePrimary):
            self._close_copy(m)
            self.base[m] = len(self.jl[m])
            self.fenced[m] = False
            self.partner_ack[m] = 0
            self.pending[m] = []
            self.log(f"{m} primary in epoch {a.epoch} from position {self.base[m]}")
        elif isinstance(a, mc.Demote):
            self._lose_life(m)
        elif isinstance(a, mc.Shutdown):
            self._lose_life(m)

    def heartbeat(self, m: str, again: bool = True) -> None:
        super().heartbeat(m, again)
        if again:
            self._connect(m)

    def deliver(self, src: str, dst: str, msg: tuple) -> None:
        if dst == ASYNC:
            if self.reachable(src, dst):
                self.copy_receive(dst, src, msg)
            return
        super().deliver(src, dst, msg)

    def member_receive(self, m: str, src: str, msg: tuple) -> None:
        kind = msg[0]
        if kind in ("catchup", "ack"):
            self.primary_receive(m, src, msg)
        elif kind in ("accepted", "frame", "truncate", "refused"):
            self.copy_receive(m, src, msg)
        elif kind == "status":
            self.heard_from(m, src)
            self.feed(m, msg[1])
        elif kind == "tail":
            self.agent_pending[m] = self.agent_pending.get(m, 0) + 1  # cancels the timeout
            theirs, epoch = msg[1], msg[2]
            ours = self.jl[m]
            if self.fetch_rule == "append":
                self._set_journal(m, ours + list(theirs[len(ours) :]))
            elif self.fetch_rule == "whole" and tuple(ours[: len(theirs)]) != theirs:
                self._set_journal(m, list(theirs))
            self.stats["fetches"] += 1
            self.log(f"{m} fetched {src}'s journal (theirs {len(theirs)}, ours {len(ours)})")
            pos = len(theirs) if self.fetch_rule == "skip" else len(self.jl[m])
            self.feed(m, mc.TailFetched(position=pos, epoch=epoch))
        else:
            super().member_receive(m, src, msg)

    def agent_receive(self, host: str, src: str, msg: tuple) -> None:
        if msg[0] == "agent-fetch" and self.host_up[host] and self.proc[host] == "down":
            self.disk[host].tail_served = True  # recorded before the tail is served
            self.send(host, src, ("tail", tuple(self.jl[host]), self.disk[host].epoch))
            return
        super().agent_receive(host, src, msg)

    def fault(self) -> None:
        if self.healing:
            return
        if self.rng.random() < 0.1 and ASYNC in self.copies:
            pair = frozenset((ASYNC, self.rng.choice(HOSTS)))
            self.log(f"fault: cut {'-'.join(sorted(pair))}")
            self.cut.add(pair)
            self.at(self.now + self.rng.randint(50, 3000), "heal", pair)
        super().fault()

    def step(self, kind: str, args: tuple) -> None:
        if kind == "tick":
            m = args[0]
            self.at(self.now + TICK_MS, "tick", m)
            self.feed(m, mc.Tick(self.now))
            core = self._serving(m)
            if core is not None and core.backup_active and core.backup_failing_at is None:
                waiting = [t for pos, _, t in self.pending[m] if self.partner_ack[m] <= pos]
                if waiting and self.now - min(waiting) >= self.qos_ms:
                    self.feed(m, mc.BackupInactive())  # no ack within the QoS timeout
        elif kind == "write":
            self.client_write()
        elif kind == "broken":
            self._on_broken(args[0])
        elif kind == "async-beat":
            self.at(self.now + HEARTBEAT_MS, "async-beat")
            self._connect(ASYNC)
        elif kind == "local-tail":
            m, to = args
            core = self.core[m]
            if core is not None and self.proc[m] == "running":
                if len(self.jl[m]) == to:
                    self.feed(m, mc.TailFetched(position=to, epoch=self.disk[m].epoch))
                else:
                    self.feed(m, mc.TailUnavailable(self.other(m)))
        else:
            super().step(kind, args)

    # --- invariants ---------------------------------------------------------------------

    def current_primary(self) -> str | None:
        best = None
        for m in HOSTS:
            core = self.core[m]
            if core is not None and core.role == "primary" and self.proc[m] != "down":
                if best is None or core.epoch > self.core[best].epoch:
                    best = m
        return best

    def check(self) -> None:
        super().check()
        cp = self.current_primary()
        if cp is None:
            return
        j = self.jl[cp]
        key = (cp, self.core[cp].epoch, self.cuts)
        if key == self._checked:
            # Only new acknowledgements to check; the journals only grew since.
            new = self.ack_log[self._checked_acks :]
            self._checked_acks = len(self.ack_log)
            if all(who == cp and pos < len(j) and j[pos] == e for e, who, pos in new):
                return
        self._checked = key
        self._checked_acks = len(self.ack_log)
        have = set(j)
        for entry, (who, t, _) in self.acked.items():
            if entry not in have:
                raise InvariantError(
                    f"acknowledged write {entry} (by {who} at {t}) is not in the journal "
                    f"of the primary {cp} (epoch {self.core[cp].epoch}, "
                    f"{len(self.jl[cp])} entries)"
                )

    def final_check(self) -> None:
        primaries = [
            m for m in HOSTS if self.core[m] is not None and self.core[m].role == "primary"
        ]
        if len(primaries) != 1:
            roles = {m: self.core[m] and self.core[m].role for m in HOSTS}
            raise InvariantError(f"after healing: primaries {primaries}, roles {roles}")
        live = [m for m in self.copies if m == ASYNC or self.core[m] is not None]
        first = self.jl[primaries[0]]
        for m in live:
            j = self.jl[m]
            if j != first:
                n = next(
                    (i for i, (x, y) in enumerate(zip(j, first, strict=False)) if x != y),
                    min(len(j), len(first)),
                )
                raise InvariantError(
                    f"after healing: {m}'s journal ({len(j)}) differs from the primary "
                    f"{primaries[0]}'s ({len(first)}) from position {n}: "
                    f"{j[n : n + 3]} vs {first[n : n + 3]}"
                )
            have = set(j)
            lost = [e for e in self.acked if e not in have]
            if lost:
                raise InvariantError(f"after healing: {m} lacks acknowledged writes {lost[:5]}")

    # --- the run ------------------------------------------------------------------------

    def begin_healing(self) -> None:
        self.healing = True
        self.log("healing: faults stop, the network heals, everybody starts")
        self.loss = 0.0
        self.cut.clear()
        self.arb_up = True
        for m in HOSTS:
            self.host_up[m] = True
            if self.proc[m] == "paused":
                self.step("resume", (m,))
            self.start(m)

    def run(self) -> DataSim:
        for m in HOSTS:
            self.start(m)
            self.at(self.rng.randint(0, HEARTBEAT_MS), "heartbeat", m)
            self.at(self.rng.randint(0, HEARTBEAT_MS), "silence", m)
            self.at(10, "tick", m)
        if ASYNC in self.copies:
            self.at(self.rng.randint(0, HEARTBEAT_MS), "async-beat")
        self.at(self.rng.randint(300, 1500), "fault")
        self.at(self.rng.randint(50, 200), "write")
        end = self.duration_ms + HEAL_MS
        try:
            while self.queue:
                t, _, kind, args = self.queue[0]
                if t > self.duration_ms and not self.healing:
                    self.now = self.duration_ms
                    self.begin_healing()
                    continue
                if t > end:
                    break
                heapq.heappop(self.queue)
                self.now = t
                self.step(kind, args)
            self.now = end
            self.final_check()
        except InvariantError as e:
            raise InvariantError(self.report(str(e))) from None
        return self

    def report(self, why: str) -> str:
        tail = "\n".join(self.trace_lines())
        again = f"{type(self).__name__}({self.seed}, active_lag={self.active_lag}).run()"
        if type(self) is DataSim:
            again += (
                f" or IRISREP_DATA_SEED={self.seed} IRISREP_DATA_LAG={self.active_lag} "
                f"pytest tests/test_mirrorsim_data.py -k test_replay -s"
            )
        return (
            f"seed {self.seed}: {why}\nreplay: {again} (tests/test_mirrorsim_data.py)\n"
            f"last {len(self.trace)} trace lines:\n{tail}"
        )


# --- the tests ---------------------------------------------------------------------------

DATA_SEEDS = int(os.environ.get("IRISREP_DATA_SEEDS", "300"))  # ~13 s
DATA_SOAK_SEEDS = int(os.environ.get("IRISREP_DATA_SOAK_SEEDS", "5000"))


def _run(seeds, cls=DataSim, **kw) -> dict:
    stats = {"runs": 0, "promotions": 0, "writes": 0, "acked": 0, "truncations": 0, "fetches": 0}
    for seed in seeds:
        sim = cls(seed, **kw).run()
        stats["runs"] += 1
        stats["promotions"] += sim.promotions
        for k, v in sim.stats.items():
            stats[k] += v
    return stats


def _failures(cls, seeds, **kw) -> list[str]:
    out = []
    for seed in seeds:
        try:
            cls(seed, **kw).run()
        except InvariantError as e:
            out.append(str(e))
    return out


def test_data_seeds():
    t0 = time.perf_counter()
    stats = _run(range(DATA_SEEDS))
    print(f"{stats} in {time.perf_counter() - t0:.1f} s")
    # Not vacuous: failovers happen, writes are acknowledged, tails are fetched and
    # diverged copies are cut back.
    assert stats["promotions"] > stats["runs"]
    assert stats["acked"] > stats["runs"] * 100
    assert stats["fetches"] > 0 and stats["truncations"] > 0


def test_data_replays_exactly():
    a = DataSim(4).run()
    b = DataSim(4).run()
    assert a.trace_lines() == b.trace_lines()
    assert a.jl == b.jl and a.acked == b.acked


@pytest.mark.skipif("IRISREP_DATA_SEED" not in os.environ, reason="IRISREP_DATA_SEED=n replays")
def test_replay():
    """IRISREP_DATA_SEED=n [IRISREP_DATA_LAG=k] pytest tests/test_mirrorsim_data.py -k replay"""
    seed = int(os.environ["IRISREP_DATA_SEED"])
    sim = DataSim(seed, active_lag=int(os.environ.get("IRISREP_DATA_LAG", "0"))).run()
    print("\n".join(sim.trace_lines()))


# The checks bite: each breaks one rule of the data path and must be caught.


class AcksAtOnce(DataSim):
    ack_rule = "local"  # a commit returns before the backup's ack and before DropBackup


class NoTruncation(DataSim):
    truncate_rule = "none"  # a copy ignores truncate_to


class NoTailFetch(DataSim):
    fetch_rule = "skip"  # a takeover through the agent without the tail


@pytest.mark.parametrize(
    ("cls", "seeds", "what"),
    [
        (AcksAtOnce, range(30), "is not in the journal of the primary"),
        (NoTruncation, range(30), "after healing"),
        (NoTailFetch, range(10), "is not in the journal of the primary"),
    ],
    ids=["acks-at-once", "no-truncation", "no-tail-fetch"],
)
def test_simulator_catches_a_broken_rule(cls, seeds, what):
    failures = _failures(cls, seeds)
    assert failures, f"{cls.__name__}: no seed in {seeds} caught"
    assert any(what in f for f in failures), failures[0][:2000]
    assert "replay: " in failures[0] and "trace lines" in failures[0]


# Findings: the rules of mirror.py / failover.py, modelled as they are, lose
# acknowledged writes (or diverge) on these seeds; the default run models the fixes
# (check_rule "lcp", fetch_rule "whole", active_lag 0). See the module docstring.


class RealCheckStart(DataSim):
    check_rule = "base"


class RealFetchTail(DataSim):
    fetch_rule = "append"


@pytest.mark.parametrize(
    ("cls", "seed", "lag", "what"),
    [
        # mirror.py _check_start trusts a copy's journal up to the primary's
        # base_position: a fenced former primary that never rejoined keeps its
        # unacknowledged epoch-2 tail below a later base, and the writes of epoch 3
        # at those positions are missing from it; it later takes over.
        (RealCheckStart, 56, 0, "is not in the journal of the primary"),
        # failover._fetch_tail appends the down primary's journal from our own end:
        # our diverged tail stays, its acknowledged entries at those positions are lost.
        (RealFetchTail, 74, 0, "is not in the journal of the primary"),
        # Active within MIRROR_ACTIVE_LAG_BYTES_MAX: the backup is Active (and the
        # primary arbiter-controlled) before it has the writes acknowledged alone; the
        # arbiter grants it the takeover without them.
        (DataSim, 688, 5, "is not in the journal of the primary"),
    ],
    ids=["check-start-trusts-base", "fetch-tail-appends", "active-with-lag"],
)
def test_finding(cls, seed, lag, what):
    with pytest.raises(InvariantError, match=what):
        cls(seed, active_lag=lag).run()


@pytest.mark.soak
def test_data_soak():
    _run(range(DATA_SEEDS, DATA_SEEDS + DATA_SOAK_SEEDS))
