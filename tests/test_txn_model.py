"""Stateful test: SET/KILL/ZKILL/$INCREMENT in nested transactions, with commits,
rollbacks, checkpoints and power losses at random points, against a model.

The database runs on a SimFS with a 64-block pool (so checkpoints and evictions
happen inside transactions) in sync commit mode. The model keeps:

- `base`: the state every returned commit guarantees (durable);
- `visible`: what the database must show now (base + the open transaction);
- `levels`: the open transaction's levels, each a list of (key, before-image) of its
  SET/KILL/ZKILL changes, so TROLLBACK n undoes exactly the innermost n levels
  ($INCREMENT is never undone: IRIS);
- `jlog`: what the journal holds since `base`, as groups (one group per journal
  log call, so a crash never cuts inside one), and `floor`, the groups known durable.

What a crash may leave (sync mode, so no acknowledged commit may be lost):
recovery rolls forward the durable prefix of the journal, then rolls back the
transaction that never committed from its before-images, skipping $INCREMENT. An
$INCREMENT of an uncommitted transaction therefore survives exactly when its record
reached the durable journal (a checkpoint, close() or a later sync made it durable)
and is lost otherwise: it was never acknowledged, since $INCREMENT inside a
transaction does not sync. So the state after a crash must be `rb(k)` (the first k
groups replayed, then the open transaction undone) for some k between `floor` and
the end: exactly `base` when nothing is open or pending. A crash inside an
operation adds that operation as present or absent as a whole (a TCOMMIT: the whole
transaction), narrowed by where the crash point sits (after the fdatasync: present;
before the write, or "drop" after it: absent).

Every crash reopens twice (the second time after another power loss right after
the first recovery, sometimes also crashing in the middle of recovery): both must
show the same state, the second must find nothing left to roll back, and the
integrity walk must be clean.
"""

from __future__ import annotations

import random
import threading

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from irisrep import crashpoints, integrity
from irisrep.database import Database
from irisrep.simdisk import SimFS

INSTANCE = "/inst"
GLOBAL = "t"
TLEVEL_MODEL_MAX = 4
CRASH_MODES = ("drop", "subset", "reorder", "torn")
OP_POINTS = (
    "commit_before_write",
    "commit_after_write_before_sync",
    "commit_after_sync_before_return",
    "wij_after_active_fsync",
    "wij_after_db_write",
    "journal_after_write",
)
RECOVERY_POINTS = OP_POINTS + ("wij_recovery_after_db_write",)
# Where the crash point sits says whether the operation in flight reached the
# durable journal: after the fdatasync (the WIJ cycle comes after its journal sync)...
PRESENT_POINTS = ("commit_after_sync_before_return", "wij_after_active_fsync", "wij_after_db_write")
# ...or not: nothing written yet, or written but lost with everything unsynced.
ABSENT_POINTS = ("commit_before_write",)
ABSENT_IF_DROPPED = ("commit_after_write_before_sync", "journal_after_write")


def open_db(fs) -> Database:
    return Database(INSTANCE, fs=fs, write_daemon=False, pool_blocks=64)


def content(db) -> dict:
    return dict(db.globals[GLOBAL].items())


def assert_integrity(fs) -> None:
    reports = integrity.check(INSTANCE, fs=fs)
    assert all(r.ok for r in reports), [r.errors for r in reports]


def coll(s):
    """IRIS collation of the subscripts used here: integers first, then strings."""
    return (0, s, "") if isinstance(s, int) else (1, 0, s)


# --- the model ---------------------------------------------------------------------------


class Model:
    def __init__(self, base: dict) -> None:
        self.base = dict(base)
        self.visible = dict(base)
        self.levels: list[list] = []
        self.jlog: list[tuple[list, bool]] = []  # (entries, closes the transaction)
        self.floor = 0
        self.last_increment = None

    def copy(self) -> Model:
        m = Model({})
        m.base = dict(self.base)
        m.visible = dict(self.visible)
        m.levels = [list(lv) for lv in self.levels]
        m.jlog = list(self.jlog)
        m.floor = self.floor
        return m

    @property
    def level(self) -> int:
        return len(self.levels)

    @property
    def n(self) -> int:
        return len(self.jlog)

    def _resolve(self) -> None:
        """Everything so far is durable (a sync): the visible state is the base."""
        assert not self.levels
        self.base = dict(self.visible)
        self.jlog = []
        self.floor = 0

    def _put(self, state: dict, key, value) -> None:
        if value is None:
            state.pop(key, None)
        else:
            state[key] = value

    def _change(self, changes: list, inc: bool = False) -> None:
        """One journal log call: [(key, new value or None)]."""
        if not changes:
            return  # nothing journaled, nothing synced
        entries = []
        for key, new in changes:
            before = self.visible.get(key)
            self._put(self.visible, key, new)
            entries.append((key, before, new, inc))
            if self.levels and not inc:
                self.levels[-1].append((key, before))
        if self.levels:
            self.jlog.append((entries, False))
        else:
            self._resolve()  # an autocommit returns when durable

    def apply(self, op: tuple) -> None:
        kind = op[0]
        v = self.visible
        if kind == "set":
            self._change([(op[1], op[2])])
        elif kind == "kill":
            n = op[1]
            self._change([(k, None) for k in v if k[: len(n)] == n])
        elif kind == "zkill":
            self._change([(op[1], None)] if op[1] in v else [])
        elif kind == "inc":
            new = v.get(op[1], 0) + op[2]
            self.last_increment = new
            self._change([(op[1], new)], inc=True)
        elif kind == "bulk":
            for key, value in bulk_items(*op[1:]):
                self._change([(key, value)])
        elif kind == "tstart":
            self.levels.append([])
        elif kind == "tcommit":
            inner = self.levels.pop()
            if self.levels:
                self.levels[-1].extend(inner)
            else:
                self._resolve()
        elif kind == "trollback":
            count = op[1] if op[1] is not None else self.level
            entries = []
            for lv in reversed(self.levels[-count:]):
                for key, before in reversed(lv):
                    entries.append((key, v.get(key), before, False))
                    self._put(v, key, before)
            del self.levels[-count:]
            closes = not self.levels
            if entries or closes:
                self.jlog.append((entries, closes))
            if closes:
                # The model's two views of rollback agree: undoing the levels ==
                # replaying the journal and undoing every record of it.
                assert self.rb(self.n - 1) == self.visible
        elif kind == "flush":
            if self.levels:
                self.floor = self.n  # every record so far reached the durable journal
            else:
                self._resolve()
        else:
            raise AssertionError(op)

    def rb(self, k: int) -> dict:
        """What recovery leaves when the journal holds the first k groups: replay them,
        then undo the transaction still open, newest first, except $INCREMENT."""
        s = dict(self.base)
        open_entries: list = []
        for entries, closes in self.jlog[:k]:
            for e in entries:
                self._put(s, e[0], e[2])
            open_entries.extend(entries)
            if closes:
                open_entries = []
        for key, before, _after, inc in reversed(open_entries):
            if not inc:
                self._put(s, key, before)
        return s

    def states(self, lo: int, hi: int) -> list[dict]:
        return [self.rb(k) for k in range(lo, hi + 1)]


def bulk_items(count: int, size: int, tag: int):
    """Many large values (overflow blocks): dirty blocks pass the pool's limit."""
    return [(("bulk", i), f"{tag}-{i}-" + "x" * size) for i in range(count)]


# --- strategies --------------------------------------------------------------------------

SUBS = (1, 2, "a", "x")
PARENTS = ((), (1,), ("a",), ("bulk",))
NODES = ((),) + tuple((a,) for a in SUBS + ("bulk",)) + tuple((a, b) for a in SUBS for b in SUBS)
sub = st.sampled_from(SUBS)
subs = st.one_of(
    st.lists(sub, max_size=2).map(tuple),
    st.sampled_from([("bulk",), ("bulk", 0), ("bulk", 3)]),
)
value = st.one_of(st.integers(-3, 9), st.sampled_from(["v", "w", "y" * 3000]))
seeds = st.integers(0, 2**32 - 1)
modes = st.sampled_from(CRASH_MODES)
data_op = st.one_of(
    st.tuples(st.just("set"), subs, value),
    st.tuples(st.just("kill"), subs),
    st.tuples(st.just("zkill"), subs),
    st.tuples(st.just("inc"), subs, st.integers(-2, 5)),
    st.tuples(st.just("flush")),
)
txn_op = st.one_of(
    data_op,
    st.tuples(st.just("tcommit")),
    st.tuples(st.just("trollback"), st.one_of(st.none(), st.integers(1, TLEVEL_MODEL_MAX))),
    st.tuples(
        st.just("bulk"),
        st.integers(8, 40),
        st.sampled_from([2000, 7000, 17000]),
        st.integers(0, 99),
    ),
)


class TxnMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.db = None

    @initialize(seed=seeds)
    def start(self, seed):
        self.fs = SimFS(seed)
        self.db = open_db(self.fs)
        self.model = Model({})

    def teardown(self):
        crashpoints.disarm()
        if self.db is None:
            return
        # A clean stop with the transaction still open: close() checkpoints, so every
        # record is durable, and the next open rolls the transaction back.
        expect = self.model.rb(self.model.n)
        self.db.close()
        assert_integrity(self.fs)
        db = open_db(self.fs)
        try:
            assert content(db) == expect
        finally:
            db.close()
        assert_integrity(self.fs)

    # --- driving the database and the model together --------------------------------

    def g(self):
        return self.db.globals[GLOBAL]

    def normalize(self, op: tuple) -> tuple:
        """Make an op valid for the current state (or None to skip it)."""
        kind = op[0]
        if kind == "inc":
            old = self.model.visible.get(op[1], 0)
            if not isinstance(old, int):
                return None  # string arithmetic is the codec tests' business
        if kind == "tcommit" and self.model.level == 0:
            return None
        if kind == "trollback":
            if self.model.level == 0:
                return None
            if op[1] is not None:
                return ("trollback", (op[1] - 1) % self.model.level + 1)
        if kind == "bulk" and self.model.level == 0:
            return None  # many autocommits: one in flight is too loose to model
        return op

    def execute(self, op: tuple) -> None:
        kind = op[0]
        g = self.g()
        if kind == "set":
            g[op[1]] = op[2]
        elif kind == "kill":
            g.kill(op[1])
        elif kind == "zkill":
            g.zkill(op[1])
        elif kind == "inc":
            self.increment_result = g.increment(op[1], op[2])
        elif kind == "bulk":
            for key, v in bulk_items(*op[1:]):
                g[key] = v
        elif kind == "tstart":
            self.db.tstart()
        elif kind == "tcommit":
            self.db.tcommit()
        elif kind == "trollback":
            self.db.trollback(op[1])
        elif kind == "flush":
            self.db.flush()
        else:
            raise AssertionError(op)

    def run(self, op: tuple) -> None:
        post = self.model.copy()
        post.apply(op)
        self.execute(op)
        if op[0] == "inc":
            assert self.increment_result == post.last_increment
        self.model = post
        assert self.db.tlevel == self.model.level

    # --- rules -----------------------------------------------------------------------

    @rule(op=data_op)
    def data_change(self, op):
        op = self.normalize(op)
        if op is not None:
            self.run(op)

    @rule(
        count=st.integers(8, 40), size=st.sampled_from([2000, 7000, 17000]), tag=st.integers(0, 99)
    )
    def bulk(self, count, size, tag):
        self.run(("bulk", count, size, tag))

    @precondition(lambda self: self.model.level < TLEVEL_MODEL_MAX)
    @rule()
    def tstart(self):
        self.run(("tstart",))

    @precondition(lambda self: self.model.level > 0)
    @rule()
    def tcommit(self):
        self.run(("tcommit",))

    @precondition(lambda self: self.model.level > 0)
    @rule(levels=st.one_of(st.none(), st.integers(1, TLEVEL_MODEL_MAX)))
    def trollback(self, levels):
        self.run(self.normalize(("trollback", levels)))

    @precondition(lambda self: self.model.level < TLEVEL_MODEL_MAX)
    @rule(ops=st.lists(data_op, min_size=1, max_size=5))
    def txn_burst(self, ops):
        """TSTART and a few changes, left open (so crashes find transactions open)."""
        self.run(("tstart",))
        for op in ops:
            op = self.normalize(op)
            if op is not None:
                self.run(op)

    @rule(mode=modes, seed=seeds, rec_point=st.one_of(st.none(), st.sampled_from(RECOVERY_POINTS)))
    def crash(self, mode, seed, rec_point):
        """Power loss between operations."""
        m = self.model
        survivor = self.fs.crash(mode, random.Random(seed))
        self.recover(survivor, m.states(m.floor, m.n), seed, rec_point)

    @rule()
    def restart(self):
        """A clean stop (close) and open, the transaction still open."""
        expect = self.model.rb(self.model.n)
        self.db.close()
        assert_integrity(self.fs)
        self.db = open_db(self.fs)
        assert content(self.db) == expect
        self.model = Model(expect)

    @rule(
        op=txn_op,
        point=st.sampled_from(OP_POINTS),
        mode=modes,
        seed=seeds,
        rec_point=st.one_of(st.none(), st.sampled_from(RECOVERY_POINTS)),
    )
    def crash_inside(self, op, point, mode, seed, rec_point):
        """Arm a crash point, run one operation: if the point fires, the disk is cut
        at that instant and the operation raises SimulatedCrash."""
        op = self.normalize(op)
        if op is None:
            return
        pre = self.model
        post = pre.copy()
        post.apply(op)
        holder = []
        fs = self.fs
        crashpoints.arm(
            point, action=lambda _name: holder.append(fs.crash(mode, random.Random(seed)))
        )
        try:
            self.execute(op)
        except BaseException:
            # SimulatedCrash, or whatever cleanup code raised on the dead disk after
            # it (a real crash runs no cleanup: what it does there cannot matter).
            if not holder:
                raise
        finally:
            crashpoints.disarm()
        event(f"crash_inside {op[0]} at {point}: {'fired' if holder else 'not reached'}")
        if not holder:  # the operation never reached the point: it simply ran
            if op[0] == "inc":
                assert self.increment_result == post.last_increment
            self.model = post
            return
        present = point in PRESENT_POINTS
        absent = point in ABSENT_POINTS or (mode == "drop" and point in ABSENT_IF_DROPPED)
        kind = op[0]
        if kind == "flush":
            post = pre  # a checkpoint adds nothing to the journal
        if (pre.level == 0 and kind in ("set", "kill", "zkill", "inc")) or (
            kind == "tcommit" and pre.level == 1
        ):
            # A commit in flight: its transaction (or autocommit) whole, or not at all.
            gone = pre.states(pre.floor, pre.n)
            done = [post.visible]
            cands = done if present else gone if absent else gone + done
        else:
            # The open transaction grew by this operation's groups; some prefix of
            # them is durable, and the transaction is rolled back on recovery.
            if present:
                lo, hi = min(pre.n + 1, post.n), post.n
            elif absent:
                lo, hi = pre.floor, pre.n
            else:
                lo, hi = pre.floor, post.n
            cands = post.states(lo, hi)
        self.recover(holder[0], cands, seed, rec_point)

    # --- recovery ----------------------------------------------------------------------

    def recover(self, survivor, candidates: list[dict], seed: int, rec_point) -> None:
        """Open on the surviving disk (recovery), check the state is one the model
        allows; power-cut again right after recovery and open again: the same state,
        nothing left to roll back; clean integrity walks."""
        self.db = None  # the old process is gone with its disk
        rng = random.Random(seed ^ 0x5EED)
        fs = survivor
        db = None
        if rec_point is not None:
            holder = []
            crashpoints.arm(
                rec_point,
                action=lambda _name: holder.append(fs.crash(rng.choice(CRASH_MODES), rng)),
            )
            try:
                db = open_db(fs)
            except BaseException:  # SimulatedCrash, or cleanup failing on the dead disk
                if not holder:
                    raise
                fs = holder[0]  # recovery itself was cut: run it again on what survived
                event(f"recovery cut at {rec_point}")
            finally:
                crashpoints.disarm()
        if db is None:
            db = open_db(fs)
        first = content(db)
        assert first in candidates, (first, candidates)
        distinct = [c for i, c in enumerate(candidates) if c not in candidates[:i]]
        event(f"recovery: {len(distinct)} allowed states")
        if db.journal_recovery.rolled_back:
            event("recovery rolled back a transaction")
            if first != candidates[0]:
                event("recovery kept more than the oldest allowed state")
        assert_integrity(fs)
        # Power loss right after recovery (the recovered db is never closed).
        fs2 = fs.crash(rng.choice(CRASH_MODES), rng)
        db2 = open_db(fs2)
        assert content(db2) == first
        assert db2.journal_recovery.rolled_back == []
        db2.close()
        assert_integrity(fs2)
        self.fs = fs2
        self.db = open_db(fs2)
        assert content(self.db) == first
        self.model = Model(first)

    # --- the whole state, every step -------------------------------------------------

    @invariant()
    def matches_model(self):
        """The whole content, then $DATA, $GET and $ORDER, against the visible state."""
        if self.db is None:
            return
        v = self.model.visible
        assert content(self.db) == v
        assert self.db.tlevel == self.model.level
        g = self.g()
        for node in NODES:
            has_desc = any(len(k) > len(node) and k[: len(node)] == node for k in v)
            assert g.data(node) == (1 if node in v else 0) + (10 if has_desc else 0), node
            assert g.get(node, "<none>") == v.get(node, "<none>"), node
        for parent in PARENTS:
            level = len(parent)
            children = sorted(
                {k[level] for k in v if len(k) > level and k[:level] == parent}, key=coll
            )
            for reverse in (False, True):
                got = g.order(parent + ("",), reverse=reverse)
                assert got == ((children[-1] if reverse else children[0]) if children else None)
                for last in SUBS:
                    here = coll(last)
                    after = [c for c in children if (coll(c) < here if reverse else coll(c) > here)]
                    expect = (after[-1] if reverse else after[0]) if after else None
                    assert g.order(parent + (last,), reverse=reverse) == expect, (parent, last)


TxnMachine.TestCase.settings = settings(
    max_examples=40,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
TestTxnModel = TxnMachine.TestCase


@pytest.mark.soak
class TestTxnModelSoak(TxnMachine.TestCase):
    settings = settings(
        max_examples=600,
        stateful_step_count=60,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


def test_uncommitted_increment_survives_a_crash_only_when_durable():
    """The rule the model encodes, spelled out: recovery rolls back an uncommitted
    transaction but not its $INCREMENT, which therefore survives exactly when its
    record reached the durable journal (here: a checkpoint), and is lost otherwise."""
    for checkpoint in (False, True):
        fs = SimFS(2)
        db = open_db(fs)
        g = db.globals[GLOBAL]
        g["n"] = 10
        db.tstart()
        g["s"] = "tx"
        assert g.increment("n", 5) == 15
        if checkpoint:
            db.flush()
        survivor = fs.crash("drop")
        db = open_db(survivor)
        assert content(db) == {("n",): 15 if checkpoint else 10}, checkpoint
        db.close()


# --- regressions: engine bugs found while building the machine, minimal ------------------


def test_rollback_of_outer_level_after_inner_rollback_restores_nothing_of_inner():
    """TSTART, TSTART, SET, TROLLBACK 1, TROLLBACK: the SET must stay undone.

    Regression: trollback(n) with levels left used to keep the inner levels' UNDO
    records in the live record list (dropping the records they undid), so the outer
    TROLLBACK "undid the undo" and brought the inner SET back, and the TROLLBACK
    record then made that durable."""
    fs = SimFS(1)
    db = open_db(fs)
    g = db.globals[GLOBAL]
    g["keep"] = 1
    db.tstart()
    g["outer"] = 1
    db.tstart()
    g["y"] = 5
    g["keep"] = 2
    db.trollback(1)
    assert content(db) == {("keep",): 1, ("outer",): 1}
    db.trollback()
    assert content(db) == {("keep",): 1}
    db.close()
    db = open_db(fs)
    assert content(db) == {("keep",): 1}
    db.close()


def _interrupt(_name):
    raise KeyboardInterrupt


@pytest.mark.parametrize(
    "point", ["commit_after_write_before_sync", "journal_after_write", "wij_after_db_write"]
)
def test_interrupted_checkpoint_does_not_hang_close(point):
    """A KeyboardInterrupt (any BaseException) inside a WIJ cycle must not leave the
    database waiting forever for a cycle that no longer runs.

    Regression: Database._run_cycle handled only Exception, so after a BaseException
    `_inflight` stayed True and close() (or flush()) waited in _flush_locked for
    `_cycle_done` forever. close() must return or raise, promptly."""
    fs = SimFS(1)
    db = open_db(fs)
    g = db.globals[GLOBAL]
    g["a"] = 1
    db.tstart()
    g["b"] = 2  # a record the checkpoint must sync: the commit path runs in it
    crashpoints.arm(point, action=_interrupt)
    try:
        with pytest.raises(KeyboardInterrupt):
            db.flush()
    finally:
        crashpoints.disarm()
    outcome = []

    def close():
        try:
            db.close()
            outcome.append("closed")
        except BaseException as exc:  # DurabilityError is a fine answer too
            outcome.append(exc)

    t = threading.Thread(target=close, daemon=True)
    t.start()
    t.join(5)
    assert outcome, "close() after an interrupted checkpoint hangs"
