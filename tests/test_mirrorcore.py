"""The mirror core (mirrorcore.py): transcripts, unit checks and a seeded simulator.

Transcripts (`tests/testdata/mirrorcore-*.txt`, docs/mirror-core.md): config lines,
then `> event` lines each followed by the `< action` lines the core must answer;
`IRISREP_REWRITE=1` rewrites the expected actions in place.

`SimMirror` runs two cores, an arbiter (`ArbiterState`) and a host agent per member on
a simulated clock and network (partitions, loss, delay, duplication, reordering,
pauses, crashes, lost hosts, planned stops), checking the invariants after every
step. A failing seed is printed with the end of its trace and replays exactly:
`SimMirror(seed).run()`.
"""

from __future__ import annotations

import dataclasses
import heapq
import os
import random
import time
from collections import deque
from pathlib import Path

import pytest

from irisrep import mirrorcore as mc

DATA = Path(__file__).resolve().parent / "testdata"
TRANSCRIPTS = sorted(DATA.glob("mirrorcore-*.txt"))
REWRITE = os.environ.get("IRISREP_REWRITE") == "1"

# --- transcripts -----------------------------------------------------------------------


def _value(text: str):
    if text == "true":
        return True
    if text == "false":
        return False
    if text == "none":
        return None
    try:
        return int(text)
    except ValueError:
        return text


def parse_event(line: str) -> mc.Event:
    """`tick 9000`, `peer-status role=primary epoch=1 active=true`."""
    name, *args = line.split()
    cls = mc.EVENTS.get(name)
    if cls is None:
        raise ValueError(f"unknown event {name!r} (known: {', '.join(sorted(mc.EVENTS))})")
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for i, arg in enumerate(args):
        if "=" in arg:
            k, v = arg.split("=", 1)
        else:
            k, v = names[i], arg
        if k not in names:
            raise ValueError(f"{name}: no field {k!r} (fields: {', '.join(names)})")
        kwargs[k] = _value(v)
    return cls(**kwargs)


CONFIG_KEYS = ("name", "peer", "qos", "retry", "role", "epoch", "journal-end")


def run_transcript(path: Path) -> tuple[str, str]:
    """Return (the file as written, the file with the actions the core produced)."""
    lines = path.read_text().splitlines()
    config = {"name": "A", "peer": "B", "qos": 300}
    core = None
    produced: list[str] = []

    def make_core():
        c = mc.MirrorCore(
            str(config["name"]),
            str(config["peer"]),
            qos_ms=int(config["qos"]),
            retry_ms=config.get("retry"),
        )
        if "role" in config:
            c.handle(
                mc.Started(
                    role=str(config["role"]),
                    epoch=int(config.get("epoch", 1)),
                    journal_end=int(config.get("journal-end", 0)),
                )
            )
        return c

    for lineno, line in enumerate(lines, 1):
        stripped = line.strip()
        if stripped.startswith("<"):
            continue  # expected actions: regenerated below
        produced.append(line)
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.startswith(">"):
            if core is None:
                core = make_core()
            try:
                event = parse_event(stripped[1:].strip())
            except (ValueError, TypeError) as e:
                raise AssertionError(f"{path.name}:{lineno}: {e}") from None
            produced.extend("< " + mc.render(a) for a in core.handle(event))
            continue
        if core is not None:
            raise AssertionError(f"{path.name}:{lineno}: config line after the first event")
        key, _, value = stripped.partition(" ")
        if key not in CONFIG_KEYS:
            raise AssertionError(f"{path.name}:{lineno}: unknown config line {stripped!r}")
        config[key] = _value(value.strip())
    written = "\n".join(lines) + "\n"
    return written, "\n".join(produced) + "\n"


@pytest.mark.parametrize("path", TRANSCRIPTS, ids=[p.stem for p in TRANSCRIPTS])
def test_transcript(path):
    written, produced = run_transcript(path)
    if REWRITE:
        if produced != written:
            path.write_text(produced)
        return
    if produced != written:
        import difflib

        diff = "".join(
            difflib.unified_diff(
                written.splitlines(True),
                produced.splitlines(True),
                "expected",
                "produced",
            )
        )
        pytest.fail(f"{path.name} differs (IRISREP_REWRITE=1 rewrites it):\n{diff}")


def test_transcripts_exist():
    names = {p.stem for p in TRANSCRIPTS}
    assert len(names) >= 15, sorted(names)


def test_parse_and_render_round_trip():
    for cls in mc.EVENTS.values():
        kwargs = {}
        for f in dataclasses.fields(cls):
            t = str(f.type)
            kwargs[f.name] = (
                True if "bool" in t else "x" if t == "str" else 7 if "int" in t else "primary"
            )
        ev = cls(**kwargs)
        assert parse_event(mc.render(ev)) == ev


# --- unit checks the transcripts do not spell out --------------------------------------


def _primary(qos=300):
    core = mc.MirrorCore("A", "B", qos_ms=qos)
    core.handle(mc.Started(role="primary", epoch=1))
    return core


def test_pure_and_deterministic():
    evs = [
        mc.PeerConnected(),
        mc.ArbiterConnected(),
        mc.PeerStatus(role="backup", epoch=2),
        mc.BackupActive(),
        mc.Tick(100),
        mc.PeerLost(),
        mc.ArbiterLost(),
        mc.Tick(900),
    ]
    runs = []
    for _ in range(2):
        core = _primary()
        runs.append([mc.render(a) for e in evs for a in core.handle(e)])
    assert runs[0] == runs[1]
    assert "enter-trouble" in runs[0]


def test_qos_must_be_positive():
    with pytest.raises(ValueError):
        mc.MirrorCore("A", "B", qos_ms=0)


def test_events_before_started_are_ignored():
    core = mc.MirrorCore("A", "B", qos_ms=300)
    assert core.handle(mc.PeerLost()) == []
    assert core.role == "down" and not core.committing


def test_arbiter_grants_once_per_epoch():
    arb = mc.ArbiterState(silence_ms=100)
    st = mc.PeerStatus(role="primary", epoch=3, mode=mc.ARBITER, mode_seq=1)
    arb.on_status("A", st, "B", now=0)
    assert not arb.on_ask("B", 4, "A", now=50).granted  # still sees A
    assert arb.on_ask("B", 4, "A", now=200).granted
    assert not arb.on_ask("B", 4, "A", now=201).granted  # given once
    # the old primary comes back: it hears of epoch 4
    rep = arb.on_status("A", st, "B", now=300)
    assert rep.epoch == 4


def test_arbiter_refuses_in_agent_mode():
    arb = mc.ArbiterState(silence_ms=100)
    st = mc.PeerStatus(role="primary", epoch=3, mode=mc.AGENT, mode_seq=2)
    arb.on_status("A", st, "B", now=0)
    assert not arb.on_ask("B", 4, "A", now=500).granted


# --- the simulator -----------------------------------------------------------------------

HOSTS = ("A", "B")
ARB = "R"
HEARTBEAT_MS = 40
SILENCE_MS = 150
AGENT_TIMEOUT_MS = 120
TICK_MS = 20


@dataclasses.dataclass
class Disk:
    role: str
    epoch: int
    arbiter_controlled: bool = False
    tail_served: bool = False
    nofailover: bool = False


class InvariantError(AssertionError):
    pass


class SimMirror:
    """Two failover members, an arbiter and two host agents on a seeded network."""

    def __init__(self, seed: int, *, qos_ms: int = 300, duration_ms: int = 12_000):
        self.seed = seed
        self.rng = random.Random(seed)
        self.qos_ms = qos_ms
        self.duration_ms = duration_ms
        self.now = 0
        self.queue: list = []
        self.seq = 0
        self.trace: deque[tuple] = deque(maxlen=200)  # rendered only for a report
        self.disk = {"A": Disk("primary", 1), "B": Disk("backup", 1)}
        self.core: dict[str, mc.MirrorCore | None] = {"A": None, "B": None}
        self.proc = {"A": "down", "B": "down"}  # running | paused | down
        self.host_up = {"A": True, "B": True}
        self.arb_up = True
        self.arbiter = mc.ArbiterState(silence_ms=SILENCE_MS)
        self.arbiter_disk: tuple[int, str | None] = (0, None)  # persisted at each grant
        self.cut: set[frozenset] = set()
        self.heard: dict[tuple[str, str], int] = {}
        self.link_up: dict[tuple[str, str], bool] = {}
        self.inbox: dict[str, list] = {"A": [], "B": []}
        self.agent_pending: dict[str, int] = {}
        self.starts = 0  # each start of a member draws a new incarnation (here: a count)
        self.journal = {"A": 0, "B": 0}
        # invariants
        self.epoch_owner: dict[int, str] = {}
        self.last_epoch = {"A": 0, "B": 0}
        self.promotions = 0
        self.loss = self.rng.choice([0.0, 0.01, 0.05, 0.2])
        self.dup = self.rng.choice([0.0, 0.02, 0.1])
        self.delay_max = self.rng.choice([2, 10, 40, 120])

    # --- scheduling ----------------------------------------------------------------------

    def at(self, t: int, kind: str, *args) -> None:
        self.seq += 1
        heapq.heappush(self.queue, (t, self.seq, kind, args))

    def log(self, text: str, item=None) -> None:
        self.trace.append((self.now, text, item))

    def trace_lines(self) -> list[str]:
        return [
            f"{t:6d} {text}" + ("" if item is None else mc.render(item))
            for t, text, item in self.trace
        ]

    def reachable(self, a: str, b: str) -> bool:
        if frozenset((a, b)) in self.cut:
            return False
        for x in (a, b):
            if x in HOSTS and not self.host_up[x]:
                return False
            if x == ARB and not self.arb_up:
                return False
        return True

    def send(self, src: str, dst: str, msg: tuple) -> None:
        if not self.reachable(src, dst) or self.rng.random() < self.loss:
            return
        copies = 2 if self.rng.random() < self.dup else 1
        for _ in range(copies):
            self.at(self.now + self.rng.randint(1, self.delay_max), "deliver", src, dst, msg)

    # --- members ---------------------------------------------------------------------------

    def start(self, m: str) -> None:
        if self.proc[m] != "down" or not self.host_up[m]:
            return
        d = self.disk[m]
        d.nofailover = False
        self.core[m] = mc.MirrorCore(m, self.other(m), qos_ms=self.qos_ms)
        self.proc[m] = "running"
        for key in list(self.heard):
            if key[0] == m:
                del self.heard[key]
        self.link_up[(m, self.other(m))] = False
        self.link_up[(m, ARB)] = False
        self.feed(m, mc.Tick(self.now))
        self.feed(
            m,
            mc.Started(
                role=d.role,
                epoch=d.epoch,
                journal_end=self.journal[m],
                arbiter_controlled=d.arbiter_controlled,
                tail_served=d.tail_served,
                incarnation=self._next_incarnation(),
            ),
        )

    def _next_incarnation(self) -> int:
        self.starts += 1
        return self.starts

    def crash(self, m: str) -> None:
        if self.proc[m] == "down":
            return
        self.log(f"{m} crashes")
        self.proc[m] = "down"
        self.core[m] = None
        self.inbox[m].clear()

    @staticmethod
    def other(m: str) -> str:
        return "B" if m == "A" else "A"

    def feed(self, m: str, event: mc.Event) -> None:
        core = self.core[m]
        if core is None or self.proc[m] != "running":
            return
        actions = core.handle(event)
        if not isinstance(event, mc.Tick) or actions:
            self.log(f"{m} > ", event)
        for a in actions:
            self.log(f"{m} < ", a)
            self.execute(m, a)
            if self.core[m] is None:
                break
        self.check()

    def execute(self, m: str, a: mc.Action) -> None:
        d = self.disk[m]
        o = self.other(m)
        if isinstance(a, mc.BumpEpoch | mc.AdoptEpoch):
            d.epoch = a.epoch
            d.tail_served = False
        elif isinstance(a, mc.BecomePrimary):
            d.role = "primary"
            d.arbiter_controlled = False
            prev = self.epoch_owner.get(a.epoch)
            if prev is not None:
                raise InvariantError(f"{m} becomes primary in epoch {a.epoch}, owned by {prev}")
            self.epoch_owner[a.epoch] = m
            self.promotions += 1
        elif isinstance(a, mc.Demote):
            d.role, d.epoch = a.to, a.epoch
            d.arbiter_controlled = False
            d.tail_served = False
        elif isinstance(a, mc.RecordMode):
            d.arbiter_controlled = a.arbiter_controlled
        elif isinstance(a, mc.Announce):
            self.heartbeat(m, again=False)
        elif isinstance(a, mc.AskAgent):
            self.agent_pending[m] = self.agent_pending.get(m, 0) + 1
            self.send(m, a.member, ("agent-ask",))
            self.at(self.now + AGENT_TIMEOUT_MS, "agent-timeout", m, self.agent_pending[m])
        elif isinstance(a, mc.AskArbiter):
            self.send(m, ARB, ("ask", a.epoch))
        elif isinstance(a, mc.FetchJournalTail):
            kind = "agent-fetch" if a.from_agent else "fetch"
            self.send(m, a.from_member, (kind, a.to_position))
            self.agent_pending[m] = self.agent_pending.get(m, 0) + 1
            self.at(self.now + AGENT_TIMEOUT_MS, "fetch-timeout", m, self.agent_pending[m])
        elif isinstance(a, mc.HandOver):
            self.send(m, o, ("handover", self.core[m].epoch, self.journal[m]))
        elif isinstance(a, mc.Shutdown):
            self.log(f"{m} stops")
            self.proc[m] = "down"
            self.core[m] = None

    def heartbeat(self, m: str, again: bool = True) -> None:
        if again:
            self.at(self.now + HEARTBEAT_MS, "heartbeat", m)
        core = self.core[m]
        if core is None or self.proc[m] != "running":
            return
        st = core.status()
        st = dataclasses.replace(st, journal_end=self.journal[m])
        self.send(m, self.other(m), ("status", st))
        self.send(m, ARB, ("status", st))

    def silence_check(self, m: str) -> None:
        self.at(self.now + HEARTBEAT_MS // 2, "silence", m)
        if self.proc[m] != "running":
            return
        for who, lost in ((self.other(m), mc.PeerLost()), (ARB, mc.ArbiterLost())):
            key = (m, who)
            if self.link_up.get(key) and self.now - self.heard.get(key, -(10**9)) > SILENCE_MS:
                self.link_up[key] = False
                self.feed(m, lost)

    def heard_from(self, m: str, who: str) -> None:
        key = (m, who)
        self.heard[key] = self.now
        if not self.link_up.get(key):
            self.link_up[key] = True
            self.feed(m, mc.PeerConnected() if who != ARB else mc.ArbiterConnected())

    # --- delivery ----------------------------------------------------------------------------

    def deliver(self, src: str, dst: str, msg: tuple) -> None:
        if not self.reachable(src, dst):
            return
        if dst == ARB:
            self.arbiter_receive(src, msg)
            return
        kind = msg[0]
        if kind in ("agent-ask", "agent-fetch"):
            self.agent_receive(dst, src, msg)
            return
        if self.proc[dst] == "paused":
            self.inbox[dst].append((src, msg))
            return
        if self.proc[dst] != "running":
            return
        self.member_receive(dst, src, msg)

    def member_receive(self, m: str, src: str, msg: tuple) -> None:
        kind = msg[0]
        if kind in ("status", "handover", "fetch"):
            self.heard_from(m, src)
        if kind == "status":
            st = msg[1]
            core = self.core[m]
            self.feed(m, st)
            core = self.core[m]
            if core is not None and core.role == "primary" and st.role == "backup":
                if st.epoch == core.epoch and st.journal_end >= self.journal[m] - 50:
                    if not core.backup_active and self.rng.random() < 0.5:
                        self.feed(m, mc.BackupActive())
                    else:
                        self.feed(m, mc.AckReceived(st.journal_end))
            if core is not None and core.role == "backup" and st.role == "primary":
                if st.epoch >= core.epoch:
                    self.journal[m] = max(self.journal[m], st.journal_end)
        elif kind == "report":
            self.heard_from(m, ARB)
            self.feed(m, msg[1])
        elif kind == "answer":
            self.feed(m, msg[1])
        elif kind == "agent-answer":
            self.agent_pending[m] = self.agent_pending.get(m, 0) + 1  # cancels the timeout
            self.feed(m, msg[1])
        elif kind == "handover":
            self.feed(m, mc.HandOverOffered(epoch=msg[1], position=msg[2]))
        elif kind == "fetch":
            self.send(m, src, ("tail", self.journal[m], self.disk[m].epoch))
        elif kind == "tail":
            self.agent_pending[m] = self.agent_pending.get(m, 0) + 1  # cancels the timeout
            self.journal[m] = max(self.journal[m], msg[1])
            self.feed(m, mc.TailFetched(position=msg[1], epoch=msg[2]))
        elif kind == "no-tail":
            self.agent_pending[m] = self.agent_pending.get(m, 0) + 1
            self.feed(m, mc.TailUnavailable(src))

    def agent_receive(self, host: str, src: str, msg: tuple) -> None:
        """The agent of `host`'s member: says whether it is down (forcing a paused one
        down) and serves its journal tail once it is down."""
        if not self.host_up[host]:
            return
        if msg[0] == "agent-ask":
            if self.proc[host] == "paused":
                self.log(f"agent {host} forces its hung member down")
                self.crash(host)
            down = self.proc[host] == "down"
            rep = mc.AgentReport(
                member=host,
                down=down,
                journal_end=self.journal[host] if down else None,
                nofailover=self.disk[host].nofailover,
                epoch=self.disk[host].epoch,
            )
            self.send(host, src, ("agent-answer", rep))
        elif msg[0] == "agent-fetch":
            if self.proc[host] != "down":
                self.send(host, src, ("no-tail",))
                return
            self.disk[host].tail_served = True  # recorded before the tail is served
            self.send(host, src, ("tail", self.journal[host], self.disk[host].epoch))

    def arbiter_receive(self, src: str, msg: tuple) -> None:
        partner = self.other(src)
        if msg[0] == "status":
            rep = self.arbiter.on_status(src, msg[1], partner, self.now)
            self.send(ARB, src, ("report", rep))
        elif msg[0] == "ask":
            ans = self.arbiter.on_ask(src, msg[1], partner, self.now)
            if ans.granted:
                self.arbiter_disk = (self.arbiter.epoch, self.arbiter.primary)
            self.log(f"arbiter answers {src}: ", ans)
            self.send(ARB, src, ("answer", ans))

    # --- faults -------------------------------------------------------------------------------

    def fault(self) -> None:
        self.at(self.now + self.rng.randint(100, 1500), "fault")
        r = self.rng.random()
        m = self.rng.choice(HOSTS)
        heal = self.now + self.rng.randint(50, 3000)
        if r < 0.20:
            pair = frozenset(self.rng.sample([*HOSTS, ARB], 2))
            self.log(f"fault: cut {'-'.join(sorted(pair))}")
            self.cut.add(pair)
            self.at(heal, "heal", pair)
        elif r < 0.30:
            # a member (or the arbiter) isolated: both of its links cut
            x = self.rng.choice([*HOSTS, ARB])
            self.log(f"fault: isolate {x}")
            for y in (*HOSTS, ARB):
                if y != x:
                    pair = frozenset((x, y))
                    self.cut.add(pair)
                    self.at(heal, "heal", pair)
        elif r < 0.40:
            self.crash(m)
            self.at(heal, "start", m)
        elif r < 0.50:
            if self.proc[m] == "running":
                self.log(f"fault: pause {m}")
                self.proc[m] = "paused"
                self.at(heal, "resume", m)
        elif r < 0.60:
            self.log(f"fault: host {m} lost")
            self.host_up[m] = False
            self.crash(m)
            self.at(heal, "host-up", m)
        elif r < 0.70:
            self.log("fault: arbiter down")
            self.arb_up = False
            self.at(heal, "arbiter-up")
        elif r < 0.80:
            if self.proc[m] == "running":
                nofailover = self.rng.random() < 0.3
                self.disk[m].nofailover = nofailover
                self.log(f"fault: stop {m} nofailover={nofailover}")
                self.feed(m, mc.StopRequested(nofailover=nofailover))
                self.at(heal, "start", m)
        elif r < 0.85:
            # the arbiter restarts: it keeps only what it persisted at its last grant
            self.log("fault: arbiter restarts")
            self.arbiter = mc.ArbiterState(SILENCE_MS, *self.arbiter_disk)
        # else: a quiet period

    # --- the run --------------------------------------------------------------------------

    def run(self) -> SimMirror:
        for m in HOSTS:
            self.start(m)
            self.at(self.rng.randint(0, HEARTBEAT_MS), "heartbeat", m)
            self.at(self.rng.randint(0, HEARTBEAT_MS), "silence", m)
            self.at(10, "tick", m)
        self.at(self.rng.randint(300, 1500), "fault")
        while self.queue:
            t, _, kind, args = heapq.heappop(self.queue)
            if t > self.duration_ms:
                break
            self.now = t
            try:
                self.step(kind, args)
            except InvariantError as e:
                raise InvariantError(self.report(str(e))) from None
        return self

    def step(self, kind: str, args: tuple) -> None:
        if kind == "deliver":
            self.deliver(*args)
        elif kind == "heartbeat":
            self.heartbeat(*args)
        elif kind == "silence":
            self.silence_check(*args)
        elif kind == "tick":
            m = args[0]
            self.at(self.now + TICK_MS, "tick", m)
            core = self.core[m]
            if core is not None and core.committing and self.proc[m] == "running":
                self.journal[m] += 1
            self.feed(m, mc.Tick(self.now))
        elif kind == "agent-timeout":
            m, n = args
            if self.agent_pending.get(m) == n:
                self.feed(m, mc.AgentUnreachable(self.other(m)))
        elif kind == "fetch-timeout":
            m, n = args
            if self.agent_pending.get(m) == n:
                self.feed(m, mc.TailUnavailable(self.other(m)))
        elif kind == "fault":
            self.fault()
        elif kind == "heal":
            self.cut.discard(args[0])
        elif kind == "start":
            self.start(args[0])
        elif kind == "resume":
            m = args[0]
            if self.proc[m] == "paused":
                self.log(f"{m} resumes")
                self.proc[m] = "running"
                self.feed(m, mc.Tick(self.now))
                pending, self.inbox[m] = self.inbox[m], []
                for src, msg in pending:
                    if self.proc[m] == "running":
                        self.member_receive(m, src, msg)
        elif kind == "host-up":
            m = args[0]
            self.host_up[m] = True
            self.start(m)
        elif kind == "arbiter-up":
            self.arb_up = True

    def check(self) -> None:
        alone = []
        for m in HOSTS:
            core = self.core[m]
            if core is None or core.role == "down":
                continue
            if core.epoch < self.last_epoch[m]:
                raise InvariantError(f"{m}: epoch went back {self.last_epoch[m]} -> {core.epoch}")
            self.last_epoch[m] = max(self.last_epoch[m], core.epoch)
            if core.committing:
                if core.epoch != core.known_epoch:
                    raise InvariantError(
                        f"{m} commits in epoch {core.epoch} but knows of {core.known_epoch}"
                    )
                if self.epoch_owner.get(core.epoch, m) != m:
                    raise InvariantError(f"{m} commits in epoch {core.epoch} owned by another")
                if core.gate == "alone" and self.proc[m] == "running":
                    alone.append(m)
        if len(alone) > 1:
            raise InvariantError(f"split brain: {alone} both commit alone")

    def report(self, why: str) -> str:
        tail = "\n".join(self.trace_lines())
        return (
            f"seed {self.seed}: {why}\nreplay: SimMirror({self.seed}).run()\n"
            f"last {len(self.trace)} trace lines:\n{tail}"
        )


SIM_SEEDS = int(os.environ.get("IRISREP_SIM_SEEDS", "1000"))
SOAK_SEEDS = int(os.environ.get("IRISREP_SOAK_SEEDS", "20000"))


def _run_seeds(seeds) -> dict:
    stats = {"promotions": 0, "runs": 0}
    for seed in seeds:
        sim = SimMirror(seed).run()
        stats["promotions"] += sim.promotions
        stats["runs"] += 1
    return stats


def test_simulator_seeds():
    t0 = time.perf_counter()
    stats = _run_seeds(range(SIM_SEEDS))
    elapsed = time.perf_counter() - t0
    print(f"{stats['runs']} seeds, {stats['promotions']} promotions, {elapsed:.1f} s")
    # The faults must really cause failovers, or the invariants prove nothing.
    assert stats["promotions"] > stats["runs"]


def test_simulator_replays_exactly():
    a = SimMirror(12345).run()
    b = SimMirror(12345).run()
    assert a.trace_lines() == b.trace_lines()
    assert a.epoch_owner == b.epoch_owner


def test_simulator_catches_split_brain():
    """The checker works: a core that goes alone without confirmation is caught."""

    class Careless(mc.MirrorCore):
        def _evaluate_primary(self, out):
            self.recorded_arbiter = False
            super()._evaluate_primary(out)

    orig = mc.MirrorCore
    mc.MirrorCore = Careless
    try:
        failures = 0
        for seed in range(200):
            try:
                SimMirror(seed).run()
            except InvariantError:
                failures += 1
        assert failures > 0
    finally:
        mc.MirrorCore = orig


@pytest.mark.soak
def test_simulator_soak():
    _run_seeds(range(SIM_SEEDS, SIM_SEEDS + SOAK_SEEDS))
