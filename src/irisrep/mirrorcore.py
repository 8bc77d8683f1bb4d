"""The mirror core: the IRIS failover rules as a pure, deterministic state machine.

Owns the decisions of one failover member (DESIGN.md section 3, docs/mirror-core.md):
its role, its epoch, the failover mode (agent-controlled or arbiter-controlled), the
In Trouble state, whether the primary's commits may return (and whether they wait
for the Active backup), and when and how a backup takes over. `ArbiterState` is the
arbiter's half of the same rules (what it records and what it grants).

Promises:
- No I/O, no clock reads, no threads, no randomness: `MirrorCore.handle(event)`
  returns a list of actions, and the same events give the same actions. Time arrives
  only as `Tick(now_ms)`; every timeout is counted from those.
- At most one member becomes primary in an epoch: every promotion bumps the epoch
  (`BumpEpoch` then `BecomePrimary`), and a backup promotes only with a token that
  cannot be given twice for one epoch: its primary's agent confirming the primary
  down (it forces it down), the arbiter's grant (the arbiter records it), the
  primary's own hand-over, or the partner's promise (`PeerStatus.promise`).
- A primary commits alone (without its Active backup's ack) only when the backup
  cannot take over on the arbiter's word: the arbiter or the backup itself has
  confirmed the agent-controlled mode the primary asked for. Cut off from both, an
  arbiter-controlled primary is In Trouble and commits nothing.
- A primary that hears of a newer epoch stops committing and demotes at once.
- The actions of one event are to be executed in order; `BumpEpoch`,
  `RecordMode` and `Demote` are durable (written and fsynced) before the next
  action runs.

The I/O layer (member.py, mirror.py, the agent and the arbiter) feeds events and
executes actions; it sends `MirrorCore.status()` to the partner and to the arbiter
on every heartbeat and at once after an `Announce` action.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from .constants import QOS_TIMEOUT_DEFAULT_MS

# Constants of the mirror core (to be moved to constants.py).
MIRRORCORE_RETRY_DIVISOR = 2  # a backup asks its primary's agent / the arbiter again every qos/2
MIRRORCORE_HANDOVER_ROLES = ("primary", "backup", "waiting", "down", "stopped")

AGENT = "agent"
ARBITER = "arbiter"

# --- events ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Event:
    pass


@dataclass(frozen=True)
class Tick(Event):
    now_ms: int


@dataclass(frozen=True)
class Started(Event):
    """The member process started: what its state file (and its agent) say.

    `role` is the last persisted role; `arbiter_controlled` whether the member last
    recorded itself arbiter-controlled (a backup could then have taken over on the
    arbiter's word); `tail_served` whether its agent served its journal tail to the
    partner since it went down (the partner could then have taken over)."""

    role: str
    epoch: int
    journal_end: int = 0
    arbiter_controlled: bool = False
    tail_served: bool = False
    # Different at every start of the member (the process draws it): a promise the
    # partner gave names the incarnation it was given to (`PeerStatus.promise_to`).
    incarnation: int = 0


@dataclass(frozen=True)
class PeerConnected(Event):
    pass


@dataclass(frozen=True)
class PeerLost(Event):
    pass


@dataclass(frozen=True)
class PeerStatus(Event):
    """The partner's status (a heartbeat on the mirror link). From a primary,
    `active` says whether the receiver is its Active backup and `mode`/`mode_seq`
    the failover mode it set; from a backup they echo what it last applied.
    `promise`: the sender will not become primary at any epoch <= promise, a promise
    given to the receiver's incarnation `promise_to` (one given before the receiver
    restarted, and so possibly before the sender took over through the receiver's
    agent, counts for nothing); `incarnation`: the sender's, drawn at its start."""

    role: str
    epoch: int
    journal_end: int = 0
    active: bool = False
    mode: str = AGENT
    mode_seq: int = 0
    was_primary: bool = False
    promise: int = 0
    name: str = ""
    incarnation: int = 0
    promise_to: int = 0


@dataclass(frozen=True)
class ArbiterConnected(Event):
    pass


@dataclass(frozen=True)
class ArbiterLost(Event):
    pass


@dataclass(frozen=True)
class ArbiterReport(Event):
    """The arbiter's answer to a heartbeat: whether it sees the partner, and what it
    recorded last from the mirror's primary (its epoch and failover mode)."""

    sees_peer: bool
    epoch: int = 0
    mode: str = AGENT
    mode_seq: int = 0


@dataclass(frozen=True)
class ArbiterAnswer(Event):
    """The arbiter's answer to `AskArbiter(epoch)`: the takeover at `epoch` is granted
    (and recorded there) or refused."""

    epoch: int
    granted: bool


@dataclass(frozen=True)
class AgentReport(Event):
    """The partner host's agent: is `member` down (it forces a hung member down), and
    if so where its journal ends and its persisted epoch; `nofailover` when it was
    stopped with --nofailover."""

    member: str
    down: bool
    journal_end: int | None = None
    nofailover: bool = False
    epoch: int = 0  # the member's persisted epoch (a takeover must go past it)


@dataclass(frozen=True)
class AgentUnreachable(Event):
    """No answer from the agent of `member`'s host (the host is lost or cut off)."""

    member: str


@dataclass(frozen=True)
class TailFetched(Event):
    """This member's journal now ends at `position` (after FetchJournalTail); `epoch`
    is the epoch the source member had persisted (a takeover must go past it)."""

    position: int
    epoch: int = 0


@dataclass(frozen=True)
class TailUnavailable(Event):
    """FetchJournalTail failed: the member is running again, or nobody answers."""

    member: str


@dataclass(frozen=True)
class HandOverOffered(Event):
    """On the backup: the primary stops and hands over; take over once the journal
    reaches `position`."""

    epoch: int
    position: int


@dataclass(frozen=True)
class BackupActive(Event):
    """On the primary: the backup is caught up and acknowledging (Active)."""


@dataclass(frozen=True)
class BackupInactive(Event):
    """On the primary: the I/O layer found the Active backup failing (its link broke,
    or no ack within the QoS timeout). The core decides when to drop it."""


@dataclass(frozen=True)
class AckReceived(Event):
    position: int


@dataclass(frozen=True)
class StopRequested(Event):
    nofailover: bool = False


# --- actions -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Action:
    pass


@dataclass(frozen=True)
class Log(Action):
    text: str


@dataclass(frozen=True)
class BumpEpoch(Action):
    """Persist the new epoch (durably) before anything else."""

    epoch: int


@dataclass(frozen=True)
class AdoptEpoch(Action):
    """A newer epoch was learnt (not a promotion): persist it."""

    epoch: int


@dataclass(frozen=True)
class BecomePrimary(Action):
    """Open the database for writes in `epoch`; commits return without waiting for
    a backup until one becomes Active."""

    epoch: int


@dataclass(frozen=True)
class Demote(Action):
    """Persist the role `to` and stop being primary (the database goes read-only)."""

    to: str
    epoch: int


@dataclass(frozen=True)
class RecordMode(Action):
    """Persist whether this primary is arbiter-controlled (before announcing it)."""

    arbiter_controlled: bool


@dataclass(frozen=True)
class Announce(Action):
    """Send `status()` to the partner and the arbiter now."""


@dataclass(frozen=True)
class EnterTrouble(Action):
    pass


@dataclass(frozen=True)
class LeaveTrouble(Action):
    pass


@dataclass(frozen=True)
class StopCommitting(Action):
    """No commit may return (they wait or fail) until ResumeCommitting."""


@dataclass(frozen=True)
class ResumeCommitting(Action):
    pass


@dataclass(frozen=True)
class DropBackup(Action):
    """Declare the backup not Active: commits return without its ack from now on."""

    reason: str


@dataclass(frozen=True)
class AskAgent(Action):
    member: str


@dataclass(frozen=True)
class AskArbiter(Action):
    """Ask the arbiter to grant (and record) a takeover at `epoch`."""

    epoch: int


@dataclass(frozen=True)
class FetchJournalTail(Action):
    """Fetch `from_member`'s journal up to (at least) `to_position`: from its agent
    (`from_agent`, which serves it only while the member is down, and records that it
    did before serving) or from the member itself (a hand-over)."""

    from_member: str
    to_position: int
    from_agent: bool


@dataclass(frozen=True)
class HandOver(Action):
    """Tell `to_member` to take over (with this member's journal end)."""

    to_member: str


@dataclass(frozen=True)
class Shutdown(Action):
    """The member process may exit now."""


# --- names for transcripts and logs ------------------------------------------------------


def kebab(name: str) -> str:
    out = []
    for i, ch in enumerate(name):
        if ch.isupper() and i:
            out.append("-")
        out.append(ch.lower())
    return "".join(out)


EVENTS: dict[str, type[Event]] = {
    kebab(c.__name__): c
    for c in (
        Tick,
        Started,
        PeerConnected,
        PeerLost,
        PeerStatus,
        ArbiterConnected,
        ArbiterLost,
        ArbiterReport,
        ArbiterAnswer,
        AgentReport,
        AgentUnreachable,
        TailFetched,
        TailUnavailable,
        HandOverOffered,
        BackupActive,
        BackupInactive,
        AckReceived,
        StopRequested,
    )
}
ACTIONS: dict[str, type[Action]] = {
    kebab(c.__name__): c
    for c in (
        Log,
        BumpEpoch,
        AdoptEpoch,
        BecomePrimary,
        Demote,
        RecordMode,
        Announce,
        EnterTrouble,
        LeaveTrouble,
        StopCommitting,
        ResumeCommitting,
        DropBackup,
        AskAgent,
        AskArbiter,
        FetchJournalTail,
        HandOver,
        Shutdown,
    )
}


_HANDLERS: dict[type, str] = {c: "_on_" + n.replace("-", "_") for n, c in EVENTS.items()}


def render(item: Event | Action) -> str:
    """`become-primary epoch=2`; a Log is `log: text`."""
    name = kebab(type(item).__name__)
    if isinstance(item, Log):
        return f"log: {item.text}"
    parts = [name]
    for f in fields(item):
        v = getattr(item, f.name)
        if isinstance(v, bool):
            v = "true" if v else "false"
        elif v is None:
            v = "none"
        parts.append(f"{f.name}={v}")
    return " ".join(parts)


# --- the member's core -------------------------------------------------------------------


class MirrorCore:
    """One failover member's decisions. `handle(event) -> list[Action]`.

    Roles: "down" (before Started), "waiting" (restarted, may not decide alone),
    "backup", "primary", "stopped". `committing` and `gate` ("closed", "backup":
    commits wait for the Active backup's ack, "alone") say what the primary's
    commits may do."""

    def __init__(
        self,
        name: str,
        peer: str,
        *,
        qos_ms: int = QOS_TIMEOUT_DEFAULT_MS,
        retry_ms: int | None = None,
    ) -> None:
        if qos_ms <= 0:
            raise ValueError(f"qos_ms must be positive, not {qos_ms}")
        self.name = name
        self.peer = peer
        self.qos_ms = qos_ms
        self.retry_ms = (
            retry_ms if retry_ms is not None else max(1, qos_ms // MIRRORCORE_RETRY_DIVISOR)
        )
        self.now = 0
        self.role = "down"
        self.epoch = 0  # this member's epoch (persisted)
        self.known_epoch = 0  # the highest epoch it has heard of
        self.promise = 0  # it will not become primary at an epoch <= promise
        self.promise_to = 0  # ... a promise given to this incarnation of the partner
        self.incarnation = 0  # this start's (Started), named by the partner's promises
        self.journal_end = 0
        self.was_primary = False
        # links
        self.peer_up = False
        self.arbiter_up = False
        self.peer_status: PeerStatus | None = None
        # primary
        self.gate = "closed"
        self.backup_active = False
        self.backup_failing_at: int | None = None
        self.mode = AGENT
        self.mode_seq = 0
        self.recorded_arbiter = False  # persisted: a backup may take over on the arbiter's word
        self.trouble = False
        # backup
        self.my_mode = AGENT  # the mode the primary last set (as a backup sees it)
        self.my_mode_epoch = 0
        self.my_mode_seq = 0
        self.i_am_active = False
        self.primary_lost_at: int | None = None
        self.next_ask_at = 0
        self.takeover: str | None = None  # "agent" | "handover": waiting for the tail
        self.takeover_position = 0
        self.tail_served = False

    # --- the public surface --------------------------------------------------------------

    @property
    def committing(self) -> bool:
        return self.role == "primary" and self.gate != "closed"

    def status(self) -> PeerStatus:
        """What this member tells its partner and the arbiter."""
        if self.role == "primary":
            active, mode, seq = self.backup_active, self.mode, self.mode_seq
        else:
            active, mode, seq = self.i_am_active, self.my_mode, self.my_mode_seq
        return PeerStatus(
            role=self.role,
            epoch=self.epoch,
            journal_end=self.journal_end,
            active=active,
            mode=mode,
            mode_seq=seq,
            was_primary=self.was_primary,
            promise=self.promise,
            name=self.name,
            incarnation=self.incarnation,
            promise_to=self.promise_to,
        )

    def handle(self, event: Event) -> list[Action]:
        out: list[Action] = []
        if self.role == "stopped":
            return out
        if self.role == "down" and not isinstance(event, Started | Tick):
            return out
        name = _HANDLERS.get(type(event))
        if name is None:
            raise TypeError(f"not a mirror core event: {event!r}")
        getattr(self, name)(event, out)
        if self.role == "primary":
            self._evaluate_primary(out)
        elif self.role in ("backup", "waiting"):
            self._evaluate_backup(out)
        return out

    # --- helpers -------------------------------------------------------------------------

    def _learn_epoch(self, epoch: int) -> None:
        self.known_epoch = max(self.known_epoch, epoch)

    def _next_epoch(self) -> int:
        return max(self.epoch, self.known_epoch, self.promise) + 1

    def _promote(self, why: str, out: list[Action]) -> None:
        new = self._next_epoch()
        out.append(Log(f"{self.name} becomes primary in epoch {new}: {why}"))
        out.append(BumpEpoch(new))
        out.append(BecomePrimary(new))
        self.epoch = self.known_epoch = new
        self.role = "primary"
        self.was_primary = True
        self.gate = "alone"
        self.backup_active = False
        self.backup_failing_at = None
        self.mode, self.mode_seq = AGENT, 0
        self.recorded_arbiter = False
        self.trouble = False
        self.takeover = None
        self.primary_lost_at = None
        self.i_am_active = False
        self.tail_served = False
        out.append(Announce())

    def _fence(self, epoch: int, source: str, out: list[Action]) -> None:
        """A primary learnt of a newer epoch: stop at once and demote."""
        self._learn_epoch(epoch)
        out.append(Log(f"{source} reports epoch {epoch}, newer than {self.epoch}: fenced"))
        if self.gate != "closed":
            out.append(StopCommitting())
        if self.trouble:
            out.append(LeaveTrouble())
        self.gate = "closed"
        self.trouble = False
        self.epoch = epoch
        out.append(Demote(to="backup", epoch=epoch))
        self._become_backup()

    def _become_backup(self) -> None:
        self.role = "backup"
        self.was_primary = False
        self.backup_active = False
        self.backup_failing_at = None
        self.recorded_arbiter = False
        self.my_mode, self.my_mode_epoch, self.my_mode_seq = AGENT, 0, 0
        self.i_am_active = False
        self.primary_lost_at = None if self.peer_up else self.now
        self.next_ask_at = self.now
        self.takeover = None

    # --- event handlers ------------------------------------------------------------------

    def _on_tick(self, ev: Tick, out: list[Action]) -> None:
        self.now = max(self.now, ev.now_ms)

    def _on_started(self, ev: Started, out: list[Action]) -> None:
        if self.role != "down":
            out.append(Log("started twice: ignored"))
            return
        self.epoch = self.known_epoch = ev.epoch
        self.journal_end = ev.journal_end
        self.tail_served = ev.tail_served
        self.incarnation = ev.incarnation
        self.primary_lost_at = self.now
        self.next_ask_at = self.now
        if ev.role != "primary":
            self.role = "backup"
            out.append(Log(f"{self.name} starts as backup in epoch {ev.epoch}"))
            return
        if not ev.arbiter_controlled and not ev.tail_served:
            # Nobody could have taken over: a backup takes over only through this
            # member's agent (tail_served) or on the arbiter's word (which needs this
            # member to have recorded itself arbiter-controlled).
            self._promote("it was the last primary (not arbiter-controlled, tail not served)", out)
            return
        self.role = "waiting"
        self.was_primary = True
        why = "arbiter-controlled" if ev.arbiter_controlled else "its tail was served"
        out.append(
            Log(f"{self.name} was primary in epoch {ev.epoch} but {why}: waits for its partner")
        )

    def _on_peer_connected(self, ev: PeerConnected, out: list[Action]) -> None:
        if self.peer_up:
            return
        self.peer_up = True
        if self.role == "primary":
            # The backup is back on its link: it is no longer failing for that reason
            # (an ack timeout is reported again as BackupInactive).
            self.backup_failing_at = None
            out.append(Announce())

    def _on_peer_lost(self, ev: PeerLost, out: list[Action]) -> None:
        if not self.peer_up:
            return
        self.peer_up = False
        self.peer_status = None
        if self.role == "primary":
            if self.backup_active and self.backup_failing_at is None:
                self.backup_failing_at = self.now
            out.append(Log(f"lost the backup {self.peer}"))
        elif self.primary_lost_at is None:
            self.primary_lost_at = self.now
            self.next_ask_at = self.now
            out.append(Log(f"lost the primary {self.peer}"))

    def _on_peer_status(self, ev: PeerStatus, out: list[Action]) -> None:
        if not self.peer_up:
            return  # a message from a link already declared lost
        self._learn_epoch(ev.epoch)
        self.peer_status = ev
        if self.role == "primary":
            if ev.epoch > self.epoch:
                self._fence(ev.epoch, self.peer, out)
                self._backup_hears_primary(ev, out)
            elif ev.role == "primary":
                out.append(Log(f"{self.peer} also claims primary in epoch {ev.epoch}"))
            return
        if ev.role == "primary":
            self._backup_hears_primary(ev, out)

    def _backup_hears_primary(self, ev: PeerStatus, out: list[Action]) -> None:
        if ev.role != "primary" or ev.epoch < self.epoch:
            return
        if self.takeover is not None:
            if ev.epoch == self.epoch:
                return  # sent before it went down (its agent said it is down)
            out.append(Log(f"{self.peer} is primary in a newer epoch: takeover abandoned"))
            self.takeover = None
        if ev.epoch > self.epoch:
            self.epoch = ev.epoch
            out.append(AdoptEpoch(ev.epoch))
        if self.role == "waiting":
            out.append(Log(f"{self.peer} is primary in epoch {ev.epoch}: rejoin as backup"))
            out.append(Demote(to="backup", epoch=self.epoch))
            self.role = "backup"
            self.was_primary = False
        if (ev.epoch, ev.mode_seq) > (self.my_mode_epoch, self.my_mode_seq):
            # The mode the primary set, newest first (a sequence per epoch).
            self.my_mode, self.my_mode_epoch, self.my_mode_seq = ev.mode, ev.epoch, ev.mode_seq
        self.i_am_active = ev.active
        if self.primary_lost_at is not None:
            out.append(Log(f"following primary {self.peer} in epoch {ev.epoch}"))
        self.primary_lost_at = None

    def _on_arbiter_connected(self, ev: ArbiterConnected, out: list[Action]) -> None:
        self.arbiter_up = True
        if self.role == "primary":
            out.append(Announce())

    def _on_arbiter_lost(self, ev: ArbiterLost, out: list[Action]) -> None:
        if self.arbiter_up:
            out.append(Log("lost the arbiter"))
        self.arbiter_up = False

    def _on_arbiter_report(self, ev: ArbiterReport, out: list[Action]) -> None:
        if not self.arbiter_up:
            return
        self._learn_epoch(ev.epoch)
        if self.role == "primary":
            if ev.epoch > self.epoch:
                self._fence(ev.epoch, "the arbiter", out)
            elif (
                ev.epoch == self.epoch
                and ev.mode == AGENT
                and ev.mode_seq == self.mode_seq
                and self.mode == AGENT
                and self.recorded_arbiter
            ):
                self.recorded_arbiter = False
                out.append(Log("the arbiter confirms agent-controlled mode"))
                out.append(RecordMode(arbiter_controlled=False))

    def _on_arbiter_answer(self, ev: ArbiterAnswer, out: list[Action]) -> None:
        if not ev.granted:
            if self.role == "backup":
                out.append(Log(f"the arbiter refuses a takeover in epoch {ev.epoch}"))
            return
        if (
            self.role == "backup"
            and self.takeover is None
            and self.my_mode == ARBITER
            and ev.epoch == self._next_epoch()
        ):
            # The arbiter recorded this takeover (given once per epoch). Still
            # arbiter-controlled: the primary cannot have gone on alone (that needs the
            # arbiter's or our confirmation of agent-controlled mode).
            self._promote("the arbiter granted the takeover (it lost the primary too)", out)
            return
        self._learn_epoch(ev.epoch)
        if self.role == "primary" and ev.epoch > self.epoch:
            self._fence(ev.epoch, "the arbiter", out)
        else:
            out.append(Log(f"a grant for epoch {ev.epoch} is stale: ignored"))

    def _on_agent_report(self, ev: AgentReport, out: list[Action]) -> None:
        if ev.member != self.peer or self.role != "backup" or self.primary_lost_at is None:
            return
        if self.takeover is not None:
            return
        if not ev.down:
            out.append(Log(f"{ev.member}'s agent says it is running: wait"))
            return
        if ev.nofailover:
            out.append(Log(f"{ev.member} was stopped with --nofailover: no takeover"))
            return
        end = ev.journal_end or 0
        self._learn_epoch(ev.epoch)
        self.takeover = "agent"
        self.takeover_position = end
        out.append(Log(f"{ev.member}'s agent confirms it down; fetch its journal to {end}"))
        out.append(FetchJournalTail(from_member=ev.member, to_position=end, from_agent=True))

    def _on_agent_unreachable(self, ev: AgentUnreachable, out: list[Action]) -> None:
        if ev.member == self.peer and self.role == "backup" and self.primary_lost_at is not None:
            out.append(Log(f"no answer from {ev.member}'s agent (host lost?)"))

    def _on_tail_fetched(self, ev: TailFetched, out: list[Action]) -> None:
        self.journal_end = max(self.journal_end, ev.position)
        self._learn_epoch(ev.epoch)
        if (
            self.takeover is not None
            and self.role == "backup"
            and ev.position >= self.takeover_position
        ):
            how = self.takeover
            self.takeover = None
            self._promote(
                "its agent confirmed the primary down and the tail is here"
                if how == "agent"
                else "the primary handed over",
                out,
            )

    def _on_tail_unavailable(self, ev: TailUnavailable, out: list[Action]) -> None:
        if self.takeover is not None and ev.member == self.peer:
            out.append(Log(f"the journal tail of {ev.member} is not available: takeover abandoned"))
            self.takeover = None
            self.next_ask_at = self.now + self.retry_ms

    def _on_hand_over_offered(self, ev: HandOverOffered, out: list[Action]) -> None:
        if self.role != "backup" or ev.epoch != self.epoch or self.takeover is not None:
            out.append(Log(f"hand-over in epoch {ev.epoch} refused"))
            return
        self.takeover = "handover"
        self.takeover_position = ev.position
        out.append(
            FetchJournalTail(from_member=self.peer, to_position=ev.position, from_agent=False)
        )

    def _on_backup_active(self, ev: BackupActive, out: list[Action]) -> None:
        if self.role == "primary" and not self.backup_active:
            self.backup_active = True
            self.backup_failing_at = None
            out.append(Log(f"backup {self.peer} is Active"))
            out.append(Announce())

    def _on_backup_inactive(self, ev: BackupInactive, out: list[Action]) -> None:
        if self.role == "primary" and self.backup_active and self.backup_failing_at is None:
            self.backup_failing_at = self.now

    def _on_ack_received(self, ev: AckReceived, out: list[Action]) -> None:
        if self.role == "primary" and self.peer_up and self.backup_active:
            self.backup_failing_at = None

    def _on_stop_requested(self, ev: StopRequested, out: list[Action]) -> None:
        if self.role == "primary":
            if self.gate != "closed":
                out.append(StopCommitting())
            if self.trouble:
                out.append(LeaveTrouble())
            self.gate = "closed"
            self.trouble = False
            can_hand_over = self.backup_active and self.peer_up and self.backup_failing_at is None
            if can_hand_over and not ev.nofailover:
                # Give up the claim first (durably): a restart must not find "primary".
                out.append(Demote(to="backup", epoch=self.epoch))
                out.append(HandOver(to_member=self.peer))
            elif ev.nofailover:
                out.append(Log("stopped with --nofailover: no hand-over"))
            else:
                out.append(Log("no Active backup to hand over to"))
        out.append(Shutdown())
        self.role = "stopped"

    # --- level-triggered evaluation ------------------------------------------------------

    def _evaluate_primary(self, out: list[Action]) -> None:
        if self.role != "primary":
            return
        # A backup confirming the agent-controlled mode we set (seq echoed).
        ps = self.peer_status
        if (
            self.recorded_arbiter
            and self.mode == AGENT
            and ps is not None
            and ps.role == "backup"
            and ps.epoch == self.epoch
            and ps.mode == AGENT
            and ps.mode_seq == self.mode_seq
        ):
            self.recorded_arbiter = False
            out.append(Log(f"backup {self.peer} confirms agent-controlled mode"))
            out.append(RecordMode(arbiter_controlled=False))
        backup_ok = self.backup_active and self.peer_up and self.backup_failing_at is None
        if self.mode == AGENT and backup_ok and self.arbiter_up:
            self.mode = ARBITER
            self.mode_seq += 1
            self.recorded_arbiter = True
            out.append(
                Log("arbiter-controlled (both members and the arbiter connected, backup Active)")
            )
            out.append(RecordMode(arbiter_controlled=True))
            out.append(Announce())
        elif self.mode == ARBITER and not (backup_ok and self.arbiter_up):
            self.mode = AGENT
            self.mode_seq += 1
            out.append(Log("agent-controlled (asks the arbiter and the backup to confirm)"))
            out.append(Announce())
        safe_alone = not self.recorded_arbiter
        failing = self.backup_active and self.backup_failing_at is not None
        if failing and safe_alone and self.now - self.backup_failing_at >= self.qos_ms:
            self.backup_active = False
            self.backup_failing_at = None
            out.append(DropBackup(reason=f"no contact with {self.peer} for the QoS timeout"))
            out.append(Announce())
        # In Trouble: the backup and the arbiter lost while arbiter-controlled, so the
        # backup may have been granted the takeover. The arbiter coming back does not
        # end it: only its report (the same epoch, agent-controlled confirmed: then
        # safe alone; a newer epoch: fenced) or the backup's return does. Leaving on
        # the reconnect alone would let commits return alone in the instant before
        # that report says the backup took over (acknowledged, then undone).
        want_trouble = (
            failing
            and not self.peer_up
            and not safe_alone
            and (self.trouble or not self.arbiter_up)
        )
        if want_trouble and not self.trouble:
            self.trouble = True
            out.append(Log("lost the backup and the arbiter while arbiter-controlled"))
            out.append(EnterTrouble())
        elif self.trouble and not want_trouble:
            self.trouble = False
            out.append(LeaveTrouble())
        gate = "closed" if self.trouble else ("backup" if self.backup_active else "alone")
        if gate != self.gate:
            if gate == "closed":
                out.append(StopCommitting())
            elif self.gate == "closed":
                out.append(ResumeCommitting())
            self.gate = gate

    def _evaluate_backup(self, out: list[Action]) -> None:
        ps = self.peer_status
        if ps is not None and self.peer_up and ps.role in ("backup", "waiting"):
            self._mutual_word(ps, out)
            if self.role == "primary":
                return
        if self.role != "backup" or self.primary_lost_at is None or self.takeover is not None:
            return
        if self.now < self.next_ask_at:
            return
        self.next_ask_at = self.now + self.retry_ms
        out.append(AskAgent(member=self.peer))
        if self.arbiter_up and self.my_mode == ARBITER and self.i_am_active:
            out.append(AskArbiter(epoch=max(self.epoch, self.promise) + 1))

    def _rank(self, epoch: int, was_primary: bool, journal_end: int, name: str) -> tuple:
        return (epoch, was_primary, journal_end, name)

    def _mutual_word(self, ps: PeerStatus, out: list[Action]) -> None:
        """Neither member is primary and they talk: the higher rank takes over once the
        other has promised not to take the epoch (a token given once)."""
        mine = self._rank(self.epoch, self.was_primary, self.journal_end, self.name)
        theirs = self._rank(ps.epoch, ps.was_primary, ps.journal_end, ps.name or self.peer)
        if mine > theirs:
            target = self._next_epoch()
            # Only a promise given to this incarnation: one given before our restart
            # (still in flight, or repeated by a partner that has since taken over
            # through our agent at a higher epoch) would make two primaries at once.
            fresh = ps.promise_to == self.incarnation
            if ps.promise >= target and fresh and self.takeover is None:
                self._promote(f"{self.peer} promised not to take epoch {target}", out)
            return
        # The partner's next epoch, as it computes it (from what it tells us).
        target = max(ps.epoch, ps.promise, self.epoch, self.known_epoch) + 1
        if theirs > mine and (self.promise < target or self.promise_to != ps.incarnation):
            self.promise = max(self.promise, target)
            self.promise_to = ps.incarnation
            out.append(Log(f"{self.peer} ranks higher: promise not to take epoch {self.promise}"))
            if self.takeover is not None:
                # It may take over on our promise: a takeover begun before must not
                # finish after it (only its agent's word can start a new one).
                out.append(Log("takeover abandoned"))
                self.takeover = None
            out.append(Announce())


# --- the arbiter's half ------------------------------------------------------------------


class ArbiterState:
    """What the arbiter records for one mirror and what it answers (pure).

    It records the newest (epoch, primary, mode, mode_seq) it heard from a primary and
    grants a takeover at epoch e+1 to the backup only if it recorded the other member
    as primary in epoch e in arbiter-controlled mode and has lost it too (no status
    within `silence_ms`). A grant is recorded before it is answered, so it is given
    once, and a later status from the old primary learns of the newer epoch.

    The arbiter must persist `(epoch, primary)` after a grant and before answering it,
    and a restarted arbiter starts from them (`ArbiterState(silence_ms, epoch,
    primary)`): an arbiter that forgot a grant could confirm agent mode to the old
    primary, which would then commit alone beside the new one. The mode need not
    persist: a restarted arbiter records agent mode, which grants nothing."""

    def __init__(self, silence_ms: int, epoch: int = 0, primary: str | None = None) -> None:
        self.silence_ms = silence_ms
        self.epoch = epoch
        self.primary = primary
        self.mode = AGENT
        self.mode_seq = 0
        self.last_heard: dict[str, int] = {}

    def sees(self, member: str, now: int) -> bool:
        t = self.last_heard.get(member)
        return t is not None and now - t < self.silence_ms

    def forget(self, member: str) -> None:
        self.last_heard.pop(member, None)

    def on_status(self, member: str, st: PeerStatus, partner: str, now: int) -> ArbiterReport:
        self.last_heard[member] = now
        if st.role == "primary":
            if st.epoch > self.epoch or (st.epoch == self.epoch and member == self.primary):
                if st.epoch > self.epoch or st.mode_seq >= self.mode_seq:
                    self.epoch, self.primary = st.epoch, member
                    self.mode, self.mode_seq = st.mode, st.mode_seq
        return self.report(partner, now)

    def report(self, partner: str, now: int) -> ArbiterReport:
        return ArbiterReport(
            sees_peer=self.sees(partner, now),
            epoch=self.epoch,
            mode=self.mode,
            mode_seq=self.mode_seq,
        )

    def on_ask(self, member: str, epoch: int, partner: str, now: int) -> ArbiterAnswer:
        ok = (
            self.primary == partner
            and self.mode == ARBITER
            and epoch == self.epoch + 1
            and not self.sees(partner, now)
        )
        if ok:
            self.epoch, self.primary = epoch, member
            self.mode, self.mode_seq = AGENT, 0
        return ArbiterAnswer(epoch=epoch, granted=ok)
