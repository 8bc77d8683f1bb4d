"""The I/O edge of the mirror core: events in from the links, the agents and the
arbiter; the core's actions carried out (mirrorcore.py decides, this module acts).

Owns, for one failover member, the one thread that talks to its `MirrorCore`: it
turns what the mirror links (`mirror.Replicator` on a primary, `mirror.CopyLink` on
a backup), the partner host's agent and the arbiter (`arbiter.ArbiterClient`)
report into events, feeds time as Tick events, and runs the actions in the order the
core gives them (DESIGN.md section 3):

- AskAgent / FetchJournalTail: the partner host's agent says whether the member is
  down (forcing a hung one down) and serves its journal tail, which is appended
  byte for byte before the promotion;
- AskArbiter: the arbiter grants a takeover once per epoch (arbiter.py);
- BumpEpoch + BecomePrimary: `Member.promote` persists the epoch before anything is
  journaled in it; Demote: `Member.demote_fenced` stops the primary for good and
  follows the new one (its diverged tail is cut on reconnect);
- StopCommitting / ResumeCommitting / DropBackup: the primary's commit gate and the
  Active backup (`Replicator.set_gate`, `drop_backup`);
- RecordMode: persisted in `mirror.json` (read back at start: `Started`);
- Announce: the core's status to the partner (and the arbiter, every heartbeat).

Promises: the core is only ever touched by this thread (events from other threads
are queued); the core sees time only as Tick events; an action that fails is logged
and reported back to the core as the event that says so (TailUnavailable, ...).
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import secrets
import threading
import time

from . import agent as agent_mod
from . import mirrorcore as mc
from .constants import MIRROR_HEARTBEAT_MS
from .errors import IrisrepError, WireError
from .journal import common_prefix, epoch_runs

log = logging.getLogger("irisrep.failover")

FAILOVER_TICK_MS = 50


def resumed_core(name: str, peer: str, qos_ms: int, role: str, epoch: int) -> mc.MirrorCore:
    """A core for a member whose role changed outside the core (a switchover, an
    operator's promotion): it starts from that role and epoch without a new epoch."""
    core = mc.MirrorCore(name, peer, qos_ms=qos_ms)
    core.handle(mc.Started(role="backup", epoch=epoch, incarnation=secrets.randbits(62) + 1))
    if role == "primary":
        core.role = "primary"
        core.epoch = core.known_epoch = epoch
        core.was_primary = True
        core.gate = "alone"
    return core


class FailoverDriver:
    """Runs the MirrorCore of one failover member (primary or backup)."""

    def __init__(self, member, core: mc.MirrorCore) -> None:
        self.member = member
        cfg = member.config
        self.peer = next(m for m in cfg.failover_members if m.name != member.name)
        self.core = core
        self._q: queue.SimpleQueue = queue.SimpleQueue()
        self._stop = threading.Event()
        self._link_up = False  # the backup's view of its link to the primary
        self._last_announce = 0.0
        self.status_dict: dict | None = dataclasses.asdict(core.status())
        self.arbiter = None
        self.actions: list[str] = []  # what the core asked for (status, tests)
        self._thread = threading.Thread(
            target=self._run, name=f"irisrep-failover {member.name}", daemon=True
        )

    # --- lifecycle ------------------------------------------------------------------------

    def start(self) -> FailoverDriver:
        self.attach()
        c = self.member.config
        if c.arbiter_address is not None:
            from .arbiter import ArbiterClient
            from .member import _source_host

            self.arbiter = ArbiterClient(
                tuple(c.arbiter_address),
                mirror=c.mirror_name,
                member=self.member.name,
                partner=self.peer.name,
                status_fn=lambda: self.status_dict,
                on_change=self._arbiter_change,
                on_report=lambda r: self.feed(
                    mc.ArbiterReport(
                        sees_peer=bool(r.get("sees_peer")),
                        epoch=int(r.get("epoch") or 0),
                        mode=str(r.get("mode") or mc.AGENT),
                        mode_seq=int(r.get("mode_seq") or 0),
                    )
                ),
                on_answer=lambda a: self.feed(
                    mc.ArbiterAnswer(epoch=int(a["epoch"]), granted=bool(a["granted"]))
                ),
                source_host=_source_host(c.me.mirror_address.host),
            ).start()
        self._thread.start()
        return self

    def attach(self) -> None:
        """Hook the member's current links (again after a role change)."""
        m = self.member
        if m.replicator is not None:
            m.replicator.partner = self.peer.name
            m.replicator.controller = self.feed
        if m.copy is not None:
            m.copy.on_peer_status = lambda _name, ps: self.feed(ps)
            self._link_up = False

    def reset(self, core: mc.MirrorCore) -> None:
        """A role change outside the core: continue with a core in the new role."""
        self.feed(("reset", core))

    def close(self) -> None:
        self._stop.set()
        if self.arbiter is not None:
            self.arbiter.close()
        if threading.current_thread() is not self._thread and self._thread.is_alive():
            self._thread.join(timeout=10)

    def feed(self, event) -> None:
        """Any thread: queue an event for the core."""
        self._q.put(event)

    def _arbiter_change(self, connected: bool, _sees) -> None:
        self.feed(mc.ArbiterConnected() if connected else mc.ArbiterLost())

    # --- the loop -------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                try:
                    ev = self._q.get(timeout=FAILOVER_TICK_MS / 1000.0)
                except queue.Empty:
                    ev = None
                if self.member.closed:
                    return
                self._poll_copy()
                if ev is not None:
                    self._handle(ev)
                    while True:  # drain what queued meanwhile before the next tick
                        try:
                            self._handle(self._q.get_nowait())
                        except queue.Empty:
                            break
                self._handle(mc.Tick(int(time.monotonic() * 1000)))
                self._maybe_announce()
            except Exception:  # a bug here must not go unseen, nor take the member down
                log.exception("failover driver of %s failed", self.member.name)
                return

    def _handle(self, ev) -> None:
        if isinstance(ev, tuple) and ev[0] == "reset":
            self.core = ev[1]
            self.attach()
            self.status_dict = dataclasses.asdict(self.core.status())
            return
        self.core.now = max(self.core.now, int(time.monotonic() * 1000))
        self._do(self.core.handle(ev))
        self.status_dict = dataclasses.asdict(self.core.status())

    def _poll_copy(self) -> None:
        copy = self.member.copy
        if copy is None:
            return
        up = copy.primary is not None
        if up != self._link_up:
            self._link_up = up
            self._handle(mc.PeerConnected() if up else mc.PeerLost())

    def _maybe_announce(self, now_forced: bool = False) -> None:
        now = time.monotonic()
        if not now_forced and now - self._last_announce < MIRROR_HEARTBEAT_MS / 1000.0:
            return
        self._last_announce = now
        st = self.status_dict
        m = self.member
        if m.replicator is not None:
            m.replicator.announce(st)
        elif m.copy is not None:
            m.copy.announce(st)

    # --- actions --------------------------------------------------------------------------

    def _do(self, actions) -> None:
        m = self.member
        why = "the mirror core's decision"
        for a in actions:
            self.actions.append(mc.kebab(type(a).__name__))
            if isinstance(a, mc.Log):
                log.warning("mirror core %s: %s", m.name, a.text)
                m.event("core", a.text)
                # The core logs why just before it promotes: that is the history's reason.
                if " becomes primary in epoch " in a.text and ": " in a.text:
                    why = a.text.split(": ", 1)[1]
            elif isinstance(a, mc.AskAgent):
                self._ask_agent(a.member)
            elif isinstance(a, mc.AskArbiter):
                if self.arbiter is None:
                    self._handle(mc.ArbiterAnswer(epoch=a.epoch, granted=False))
                else:
                    self.arbiter.ask(a.epoch)
            elif isinstance(a, mc.FetchJournalTail):
                self._fetch_tail(a)
            elif isinstance(a, mc.BumpEpoch):
                pass  # persisted by the promotion, before anything is journaled in it
            elif isinstance(a, mc.AdoptEpoch):
                m._adopt_epoch(a.epoch)
            elif isinstance(a, mc.BecomePrimary):
                if m.role != "primary":
                    m.promote(
                        reason=why,
                        epoch=a.epoch,
                        keep_core=True,
                        how="failover",
                    )
                    self.attach()
            elif isinstance(a, mc.Demote):
                if m.role == "primary":
                    m.demote_fenced(epoch=a.epoch)
                    self.attach()
            elif isinstance(a, mc.RecordMode):
                m.record_mode(a.arbiter_controlled)
            elif isinstance(a, mc.Announce):
                self.status_dict = dataclasses.asdict(self.core.status())
                self._maybe_announce(now_forced=True)
            elif isinstance(a, mc.EnterTrouble):
                m.trouble = True
            elif isinstance(a, mc.LeaveTrouble):
                m.trouble = False
            elif isinstance(a, mc.StopCommitting):
                if m.replicator is not None:
                    m.replicator.set_gate(False)
            elif isinstance(a, mc.ResumeCommitting):
                if m.replicator is not None:
                    m.replicator.set_gate(True)
            elif isinstance(a, mc.DropBackup):
                if m.replicator is not None:
                    m.replicator.drop_backup(a.reason)
            else:
                log.info("mirror core %s: %s (not acted on here)", m.name, a)

    def _agent_args(self) -> dict:
        from .member import _source_host

        c = self.member.config
        return {
            "mirror": c.mirror_name,
            "member": self.member.name,
            "key": c.mirror_key,
            "source_host": _source_host(c.me.mirror_address.host),
        }

    def _ask_agent(self, member: str) -> None:
        """Ask on a thread of its own, answer fed back as an event: an agent whose
        host is gone answers nothing for seconds, and the arbiter's question (the
        next action) must not wait for that."""
        if getattr(self, "_asking", False):
            return  # one question at a time; the core asks again on its own schedule
        addr = self.member.config.member(member).agent_address
        if addr is None:
            self._handle(mc.AgentUnreachable(member))
            return
        self._asking = True
        args = self._agent_args()

        def ask() -> None:
            try:
                ans = agent_mod.ask(addr, op="member-status", **args)
            except (OSError, WireError, ValueError) as e:
                log.warning("agent of %s unreachable: %s", member, e)
                self.feed(mc.AgentUnreachable(member))
            else:
                self.feed(
                    mc.AgentReport(
                        member=member,
                        down=bool(ans.get("down")),
                        journal_end=ans.get("journal_end"),
                        nofailover=bool(ans.get("nofailover")),
                        epoch=int(ans.get("epoch") or 0),
                    )
                )
            finally:
                self._asking = False

        threading.Thread(target=ask, name=f"irisrep-ask-agent {member}", daemon=True).start()

    def _fetch_tail(self, a) -> None:
        m = self.member
        journal = m.database.journal
        addr = m.config.member(a.from_member).agent_address
        try:
            if addr is None or not a.from_agent:
                raise WireError("payload", "no agent to fetch the tail from")
            if m.copy is not None:
                m.copy.pause()  # nothing may append while the tail comes in
            # Our journal must be a prefix of theirs before we append theirs: a tail of
            # ours they never had (an old epoch's, never acknowledged) is undone first.
            info = agent_mod.ask(addr, op="journal-epochs", **self._agent_args())
            theirs = [(int(a), int(b)) for a, b in info["runs"]]
            ours, our_end = epoch_runs(journal.fs, journal.dirpath, codec=journal.codec)
            cut = common_prefix(ours, our_end, theirs, int(info["end"]))
            if cut < our_end:
                undone = m.database.truncate_stream(cut)
                m._on_truncated(
                    {"from": cut, "to": our_end, "records": len(undone), "primary": a.from_member}
                )
            data = agent_mod.fetch_tail(
                addr, from_position=journal.durable_position, **self._agent_args()
            )
            if data:
                journal.append_frames(data)
                journal.flush()
            ans = agent_mod.ask(addr, op="member-status", **self._agent_args())
        except (OSError, WireError, ValueError, IrisrepError) as e:
            log.warning("could not fetch %s's journal tail: %s", a.from_member, e)
            if m.copy is not None:
                m.copy.paused = False
            self._handle(mc.TailUnavailable(a.from_member))
            return
        log.warning(
            "fetched %d bytes of %s's journal tail; ours ends at %d",
            len(data),
            a.from_member,
            journal.durable_position,
        )
        self._handle(
            mc.TailFetched(position=journal.durable_position, epoch=int(ans.get("epoch") or 0))
        )
