"""The I/O edge of the mirror core on a backup: events in from the link and the
agents, the core's actions carried out (mirrorcore.py decides, this module acts).

Owns the backup's automatic takeover when the primary's PROCESS dies on a live host
(DESIGN.md section 3): the link to the primary is lost, the core asks the primary's
host agent, the agent confirms the member down (and records that it serves the
tail), the tail is fetched and appended byte for byte, then the member is promoted
in a new epoch, with nothing lost even when the backup was not Active.

Promises: the core sees time only as Tick events from this thread; every action
runs here, in the order the core gave; BumpEpoch is made durable by the promotion
itself (mirror.json is written before anything is journaled in the new epoch).
Not wired yet (issue 6, next): the arbiter's grants, PeerStatus from the partner
in both directions (today the backup synthesizes the primary's status from its
link), the primary's side (trouble, drop-backup by the core instead of mirror.py).
"""

from __future__ import annotations

import logging
import threading
import time

from . import agent as agent_mod
from . import mirrorcore as mc
from .errors import IrisrepError, WireError

log = logging.getLogger("irisrep.failover")

FAILOVER_TICK_MS = 50


class BackupDriver:
    """Runs a MirrorCore for a backup member; stops when the member is promoted."""

    def __init__(self, member) -> None:
        self.member = member
        cfg = member.config
        self.peer = next(m for m in cfg.failover_members if m.name != member.name)
        self.core = mc.MirrorCore(member.name, self.peer.name, qos_ms=cfg.qos_timeout_ms)
        self._stop = threading.Event()
        self._last: tuple | None = None  # (connected, epoch, end, active) last fed
        self.actions: list[str] = []  # what the core asked for, for status and tests
        self._thread = threading.Thread(
            target=self._run, name=f"irisrep-failover {member.name}", daemon=True
        )

    def start(self) -> BackupDriver:
        m = self.member
        self._do(
            self.core.handle(
                mc.Started(
                    role="backup",
                    epoch=m.epoch,
                    journal_end=m.database.journal.durable_position,
                )
            )
        )
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=10)

    # --- events -------------------------------------------------------------------------

    def _now_ms(self) -> int:
        return int(time.monotonic() * 1000)

    def _poll_link(self) -> None:
        copy = self.member.copy
        if copy is None:
            return
        connected = copy.primary is not None
        state = (connected, copy.epoch, copy.primary_end, copy.active)
        if state == self._last:
            return
        was = self._last[0] if self._last else False
        self._last = state
        if connected and not was:
            self._do(self.core.handle(mc.PeerConnected()))
        if connected:
            self._do(
                self.core.handle(
                    mc.PeerStatus(
                        role="primary",
                        epoch=copy.epoch,
                        journal_end=copy.primary_end,
                        active=copy.active,
                        name=copy.primary or self.peer.name,
                    )
                )
            )
        elif was:
            self._do(self.core.handle(mc.PeerLost()))

    def _run(self) -> None:
        while not self._stop.wait(FAILOVER_TICK_MS / 1000.0):
            if self.member.role != "backup" or self.member.closed:
                return
            try:
                self._poll_link()
                self._do(self.core.handle(mc.Tick(self._now_ms())))
            except Exception:  # a bug here must not go unseen, nor kill the member
                log.exception("failover driver of %s failed", self.member.name)
                return

    # --- actions ------------------------------------------------------------------------

    def _do(self, actions) -> None:
        for a in actions:
            self.actions.append(mc.kebab(type(a).__name__))
            if isinstance(a, mc.Log):
                log.warning("mirror core %s: %s", self.member.name, a.text)
            elif isinstance(a, mc.AskAgent):
                self._ask_agent(a.member)
            elif isinstance(a, mc.FetchJournalTail):
                self._fetch_tail(a)
            elif isinstance(a, mc.BumpEpoch):
                pass  # persisted by the promotion, before anything is journaled
            elif isinstance(a, mc.AdoptEpoch):
                self.member._adopt_epoch(a.epoch)
            elif isinstance(a, mc.BecomePrimary):
                self._stop.set()
                self.member.promote(reason="the primary's process is down", epoch=a.epoch)
                return
            elif isinstance(a, mc.AskArbiter):
                # No arbiter link is wired yet: never granted (no takeover on host loss).
                self._do(self.core.handle(mc.ArbiterAnswer(epoch=a.epoch, granted=False)))
            else:
                log.info("mirror core %s: %s (not acted on here)", self.member.name, a)

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
        addr = self.member.config.member(member).agent_address
        if addr is None:
            self._do(self.core.handle(mc.AgentUnreachable(member)))
            return
        try:
            ans = agent_mod.ask(addr, op="member-status", **self._agent_args())
        except (OSError, WireError, ValueError) as e:
            log.warning("agent of %s unreachable: %s", member, e)
            self._do(self.core.handle(mc.AgentUnreachable(member)))
            return
        self._do(
            self.core.handle(
                mc.AgentReport(
                    member=member,
                    down=bool(ans.get("down")),
                    journal_end=ans.get("journal_end"),
                    nofailover=bool(ans.get("nofailover")),
                    epoch=int(ans.get("epoch") or 0),
                )
            )
        )

    def _fetch_tail(self, a) -> None:
        m = self.member
        journal = m.database.journal
        addr = m.config.member(a.from_member).agent_address
        try:
            if addr is None or not a.from_agent:
                raise WireError("payload", "no agent to fetch the tail from")
            copy = m.copy
            if copy is not None:
                copy.pause()  # nothing may append while the tail comes in
            data = agent_mod.fetch_tail(
                addr, from_position=journal.durable_position, **self._agent_args()
            )
            if data:
                journal.append_frames(data)
                journal.flush()
            ans = agent_mod.ask(addr, op="member-status", **self._agent_args())
        except (OSError, WireError, ValueError, IrisrepError) as e:
            log.warning("could not fetch %s's journal tail: %s", a.from_member, e)
            self._do(self.core.handle(mc.TailUnavailable(a.from_member)))
            return
        log.warning(
            "fetched %d bytes of %s's journal tail; ours ends at %d",
            len(data),
            a.from_member,
            journal.durable_position,
        )
        self._do(
            self.core.handle(
                mc.TailFetched(position=journal.durable_position, epoch=int(ans.get("epoch") or 0))
            )
        )
