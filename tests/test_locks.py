"""The instance lock table (irisrep.locks): IRIS LOCK semantics.

Conflict rule, modes, incremental counts, non-incremental replacement, timeouts,
wake-ups, holds during a transaction, fairness, a many-thread stress with an
independent mutual-exclusion check, and a hypothesis state machine against a model.
Waits are only ever checked as "did not succeed"; elapsed times are never asserted.
Every test has a pytest-timeout so a deadlock fails fast.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
)

from irisrep import keycodec
from irisrep.errors import (
    ConfigError,
    IrisrepError,
    LockTimeoutError,
    SubscriptError,
    TransactionError,
)
from irisrep.locks import (
    LOCKS_MAX,
    MODE_EXCLUSIVE,
    MODE_SHARED,
    LockTable,
    LockTableFullError,
    _Db,
)

pytestmark = pytest.mark.timeout(60)

JOIN_S = 10.0  # bounded joins and event waits: a hang fails instead of blocking


def ref(name: str, *subs) -> tuple[int, bytes]:
    return (1, keycodec.encode_reference(name, subs))


A = ref("a")
A1 = ref("a", 1)
A12 = ref("a", 1, 2)
A2 = ref("a", 2)
A10 = ref("a", 10)
AB = ref("ab")
B = ref("b")


def wait_for(predicate, what: str) -> None:
    """Poll a test-side condition (never the table's own waiting) with a deadline."""
    deadline = time.monotonic() + JOIN_S
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.001)


class Locker(threading.Thread):
    """Takes one lock in a thread; `done` is set on success, `error` keeps a failure."""

    def __init__(self, table: LockTable, owner, name, **kw) -> None:
        super().__init__(daemon=True)
        self.table, self.owner, self.lock_name, self.kw = table, owner, name, kw
        self.done = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.table.lock(self.owner, self.lock_name, **self.kw)
            self.done.set()
        except BaseException as e:  # handed to the test thread
            self.error = e

    def finish(self) -> None:
        self.join(JOIN_S)
        assert not self.is_alive(), "locker thread did not finish"


def granted(table: LockTable, owner, name, **kw) -> bool:
    try:
        return table.lock(owner, name, timeout=0, **kw)
    except LockTimeoutError:
        return False


# --- the conflict rule ------------------------------------------------------------


def test_encoding_assumptions():
    assert A1[1].startswith(A[1]) and A12[1].startswith(A1[1])
    assert not A10[1].startswith(A1[1]) and not AB[1].startswith(A[1])


@pytest.mark.parametrize("held", [A, A1, A12])
@pytest.mark.parametrize("want", [A, A1, A12])
def test_exclusive_conflicts_on_line_of_descent(held, want):
    t = LockTable()
    assert t.lock("x", held, timeout=0)
    assert not granted(t, "y", want)
    assert not granted(t, "y", want, shared=True)
    t.check()


@pytest.mark.parametrize("want", [A2, A10, AB, B, (2, A1[1])])
def test_siblings_other_globals_other_databases_do_not_conflict(want):
    t = LockTable()
    assert t.lock("x", A1, timeout=0)
    assert t.lock("y", want, timeout=0)
    t.check()


def test_shared_coexists_and_blocks_exclusive():
    t = LockTable()
    assert t.lock("x", A, shared=True, timeout=0)
    assert t.lock("y", A1, shared=True, timeout=0)
    assert t.lock("z", A, shared=True, timeout=0)
    assert not granted(t, "w", A12)  # exclusive below a shared
    assert not granted(t, "w", A)
    assert not granted(t, "w", A2)  # a sibling of ^a(1), but under the shared ^a
    assert t.lock("w", B, timeout=0)
    t.check()


def test_exclusive_under_a_shared_ancestor_is_blocked():
    t = LockTable()
    assert t.lock("x", A, shared=True, timeout=0)
    assert not granted(t, "y", A2)
    assert t.lock("y", A2, shared=True, timeout=0)


def test_own_locks_never_conflict():
    t = LockTable()
    assert t.lock("x", A, shared=True, timeout=0)
    assert t.lock("x", A1, timeout=0)
    assert t.lock("x", A1, shared=True, timeout=0)
    assert t.lock("x", A, timeout=0)
    assert {(o, k, m, c) for o, _, k, m, c in t.snapshot()} == {
        ("x", A[1], MODE_SHARED, 1),
        ("x", A[1], MODE_EXCLUSIVE, 1),
        ("x", A1[1], MODE_SHARED, 1),
        ("x", A1[1], MODE_EXCLUSIVE, 1),
    }
    t.check()


def test_upgrade_waits_for_other_shared_holder():
    t = LockTable()
    t.lock("x", A, shared=True, timeout=0)
    t.lock("y", A, shared=True, timeout=0)
    assert not granted(t, "x", A)
    t.unlock("y", A, shared=True)
    assert t.lock("x", A, timeout=0)


def test_timeout_error_names_lock_and_holder():
    t = LockTable()
    t.lock("holder-1", A1, timeout=0)
    with pytest.raises(LockTimeoutError) as e:
        t.lock("y", A, timeout=0)
    assert "^a" in str(e.value) and "holder-1" in str(e.value)
    assert e.value.name == A and e.value.holder == "holder-1"
    assert isinstance(e.value, IrisrepError)


# --- ancestor/descendant search against brute force ---------------------------------

_subs = st.lists(st.sampled_from([1, 2, 10, -1, 0.5, "x", "xy", "y", "x y"]), max_size=3)
_refs = st.tuples(st.sampled_from(["a", "ab", "b"]), _subs.map(tuple)).map(
    lambda r: keycodec.encode_reference(r[0], r[1])
)


@settings(max_examples=300, deadline=None)
@given(held=st.sets(_refs, max_size=30), probe=_refs)
def test_overlapping_matches_brute_force(held, probe):
    db = _Db()
    for key in held:
        db.nodes[key] = {("o", True): 1}
    db.keys = sorted(held)
    found = [k for k, _ in db.overlapping(probe)]
    assert len(found) == len(set(found))
    assert set(found) == {k for k in held if k.startswith(probe) or probe.startswith(k)}


# --- incremental, non-incremental, unlock ------------------------------------------


def test_incremental_counts():
    t = LockTable()
    for _ in range(3):
        assert t.lock("x", A1, timeout=0)
    assert t.count("x", A1) == 3
    assert t.unlock("x", A1) and t.unlock("x", A1)
    assert not granted(t, "y", A)
    assert t.unlock("x", A1)
    assert t.count("x", A1) == 0 and len(t) == 0
    assert t.unlock("x", A1) is False  # nothing held: ignored, like IRIS
    assert t.unlock("x", A1, shared=True) is False
    assert granted(t, "y", A)


def test_modes_count_separately():
    t = LockTable()
    t.lock("x", A, timeout=0)
    t.lock("x", A, shared=True, timeout=0)
    t.unlock("x", A)
    assert t.count("x", A) == 0 and t.count("x", A, shared=True) == 1
    assert granted(t, "y", A, shared=True)
    assert not granted(t, "y", A)


def test_non_incremental_replaces_all_locks():
    t = LockTable()
    t.lock("x", A1, timeout=0)
    t.lock("x", A1, timeout=0)
    t.lock("x", B, shared=True, timeout=0)
    t.lock("x", A1, shared=True, timeout=0)
    assert t.lock("x", A1, timeout=0, incremental=False)
    assert t.snapshot() == [("x", 1, A1[1], MODE_EXCLUSIVE, 1)]
    assert t.lock("x", AB, timeout=0, incremental=False)
    assert t.snapshot() == [("x", 1, AB[1], MODE_EXCLUSIVE, 1)]
    t.check()


def test_non_incremental_timeout_changes_nothing():
    t = LockTable()
    t.lock("x", A1, timeout=0)
    t.lock("x", B, shared=True, timeout=0)
    t.lock("x", B, shared=True, timeout=0)
    t.lock("y", A2, timeout=0)
    before = t.snapshot()
    with pytest.raises(LockTimeoutError):
        t.lock("x", A, timeout=0, incremental=False)
    with pytest.raises(LockTimeoutError):
        t.lock("x", A, timeout=0.02, incremental=False)
    assert t.snapshot() == before
    assert not granted(t, "z", A1)  # still really held
    t.check()


def test_non_incremental_own_conflicts_do_not_count():
    t = LockTable()
    t.lock("x", A1, timeout=0)
    assert t.lock("x", A, timeout=0, incremental=False)
    assert t.snapshot() == [("x", 1, A[1], MODE_EXCLUSIVE, 1)]


def test_unlock_all_and_release_all():
    t = LockTable()
    t.lock("x", A1, timeout=0)
    t.lock("x", B, timeout=0)
    t.lock("y", A2, timeout=0)
    t.unlock_all("x")
    assert [s[0] for s in t.snapshot()] == ["y"]
    t.release_all("y")
    t.release_all("nobody")
    assert len(t) == 0 and t.snapshot() == []
    t.check()


# --- timeouts and wake-ups ----------------------------------------------------------


def test_timeout_small_value_does_not_succeed():
    t = LockTable()
    t.lock("x", A, timeout=0)
    with pytest.raises(LockTimeoutError):
        t.lock("y", A1, timeout=0.05)
    assert t.waiting() == 0
    assert t.snapshot() == [("x", 1, A[1], MODE_EXCLUSIVE, 1)]


def test_release_wakes_a_waiter():
    t = LockTable()
    t.lock("x", A1, timeout=0)
    w = Locker(t, "y", A, timeout=JOIN_S)
    w.start()
    wait_for(lambda: t.waiting() == 1, "the waiter to queue")
    assert not w.done.is_set()
    t.unlock("x", A1)
    assert w.done.wait(JOIN_S), w.error
    w.finish()
    assert w.error is None and t.count("y", A) == 1 and t.waiting() == 0


def test_timeout_none_waits_until_woken():
    t = LockTable()
    t.lock("x", A, timeout=0)
    w = Locker(t, "y", A, timeout=None)
    w.start()
    wait_for(lambda: t.waiting() == 1, "the waiter to queue")
    t.release_all("x")
    assert w.done.wait(JOIN_S), w.error
    w.finish()


def test_unrelated_release_does_not_grant():
    t = LockTable()
    t.lock("x", A, timeout=0)
    t.lock("x", B, timeout=0)
    w = Locker(t, "y", A1, timeout=JOIN_S)
    w.start()
    wait_for(lambda: t.waiting() == 1, "the waiter to queue")
    t.unlock("x", B)
    assert not w.done.wait(0.05)
    t.unlock("x", A)
    assert w.done.wait(JOIN_S), w.error
    w.finish()


def test_waiter_timeout_leaves_queue_and_unblocks_those_behind():
    t = LockTable()
    t.lock("x", A, shared=True, timeout=0)
    first = Locker(t, "y", A, timeout=0.2)  # exclusive, queued first, will time out
    first.start()
    wait_for(lambda: t.waiting() == 1, "the exclusive waiter to queue")
    second = Locker(t, "z", A1, shared=True, timeout=JOIN_S)  # shared, behind it
    second.start()
    assert second.done.wait(JOIN_S), second.error
    first.finish()
    second.finish()
    assert isinstance(first.error, LockTimeoutError) and "queued" not in str(first.error)
    assert t.waiting() == 0
    t.check()


# --- holds during a transaction ------------------------------------------------------


def test_hold_keeps_unlocked_locks_until_end():
    t = LockTable()
    t.begin_hold("x")
    t.lock("x", A1, timeout=0)
    t.lock("x", A1, timeout=0)
    assert t.unlock("x", A1)
    assert t.count("x", A1) == 1
    assert t.unlock("x", A1)
    assert t.count("x", A1) == 0
    assert t.snapshot() == [("x", 1, A1[1], MODE_EXCLUSIVE, 0)]
    assert not granted(t, "y", A)  # still held
    assert t.unlock("x", A1) is False  # already at zero
    t.check()
    t.end_hold("x")
    assert t.snapshot() == [] and granted(t, "y", A)
    t.check()


def test_hold_nests_and_relock_revives():
    t = LockTable()
    t.begin_hold("x")
    t.begin_hold("x")
    t.lock("x", A1, timeout=0)
    t.unlock("x", A1)
    t.lock("x", A1, timeout=0)  # kept at 0, now 1 again
    t.lock("x", B, timeout=0)
    t.unlock("x", B)
    t.end_hold("x")
    assert t.holding("x") == 1 and len(t) == 2
    t.end_hold("x")
    assert t.holding("x") == 0
    assert t.snapshot() == [("x", 1, A1[1], MODE_EXCLUSIVE, 1)]  # counted ones survive
    t.check()


def test_end_hold_without_hold_is_an_error():
    t = LockTable()
    with pytest.raises(TransactionError):
        t.end_hold("x")
    assert t.holding("x") == 0


def test_non_incremental_inside_hold_keeps_the_others():
    t = LockTable()
    t.begin_hold("x")
    t.lock("x", A1, timeout=0)
    t.lock("x", B, timeout=0, incremental=False)
    assert set(t.snapshot()) == {
        ("x", 1, A1[1], MODE_EXCLUSIVE, 0),
        ("x", 1, B[1], MODE_EXCLUSIVE, 1),
    }
    t.end_hold("x")
    assert t.snapshot() == [("x", 1, B[1], MODE_EXCLUSIVE, 1)]


def test_end_hold_wakes_a_waiter():
    t = LockTable()
    t.begin_hold("x")
    t.lock("x", A, timeout=0)
    t.unlock("x", A)
    w = Locker(t, "y", A12, timeout=JOIN_S)
    w.start()
    wait_for(lambda: t.waiting() == 1, "the waiter to queue")
    assert not w.done.wait(0.02)
    t.end_hold("x")
    assert w.done.wait(JOIN_S), w.error
    w.finish()


def test_release_all_drops_kept_locks_and_the_hold():
    t = LockTable()
    t.begin_hold("x")
    t.lock("x", A, timeout=0)
    t.unlock("x", A)
    t.release_all("x")
    assert len(t) == 0 and t.holding("x") == 0


# --- fairness -----------------------------------------------------------------------


def test_exclusive_waiter_not_starved_by_shared_stream():
    t = LockTable()
    t.lock("s0", A, shared=True, timeout=0)
    w = Locker(t, "writer", A, timeout=JOIN_S)
    w.start()
    wait_for(lambda: t.waiting() == 1, "the writer to queue")
    # New shared lockers queue behind the writer instead of overtaking it.
    assert not granted(t, "s1", A, shared=True)
    assert not granted(t, "s2", A1, shared=True)
    readers = [Locker(t, f"r{i}", A, shared=True, timeout=JOIN_S) for i in range(3)]
    for r in readers:
        r.start()
    wait_for(lambda: t.waiting() == 4, "the readers to queue")
    assert granted(t, "other", B)  # unrelated names are unaffected
    t.unlock("s0", A, shared=True)
    assert w.done.wait(JOIN_S), w.error
    assert not any(r.done.is_set() for r in readers)
    t.unlock("writer", A)
    for r in readers:
        assert r.done.wait(JOIN_S), r.error
        r.finish()
    w.finish()
    assert t.waiting() == 0
    t.check()


def test_queued_waiter_does_not_deadlock_the_owner_it_waits_for():
    t = LockTable()
    t.lock("s", A, shared=True, timeout=0)
    w = Locker(t, "writer", A, timeout=JOIN_S)
    w.start()
    wait_for(lambda: t.waiting() == 1, "the writer to queue")
    # "s" blocks the writer already, so its further locks need not queue behind it.
    assert t.lock("s", A1, shared=True, timeout=0)
    assert t.lock("s", A, shared=True, timeout=0)
    t.release_all("s")
    assert w.done.wait(JOIN_S), w.error
    w.finish()


# --- bounds and validation ----------------------------------------------------------


def test_locks_max_constant():
    assert LOCKS_MAX == 100_000
    assert LockTable().locks_max == LOCKS_MAX


def test_table_full_changes_nothing():
    t = LockTable(locks_max=3)
    t.lock("x", A1, timeout=0)
    t.lock("x", A2, timeout=0)
    t.lock("y", B, timeout=0)
    before = t.snapshot()
    with pytest.raises(LockTableFullError) as e:
        t.lock("z", AB, timeout=JOIN_S)  # refused at once, not after waiting
    assert isinstance(e.value, IrisrepError) and e.value.iris_word == "<LOCKTABLEFULL>"
    assert t.lock("x", A1, timeout=0)  # an existing entry needs no room
    assert t.snapshot()[0][4] == 2
    t.unlock("x", A1)
    assert t.snapshot() == before
    # A non-incremental lock that frees the owner's other entries fits.
    assert t.lock("x", AB, timeout=0, incremental=False)
    assert len(t) == 2
    t.begin_hold("y")
    t.lock("y", B, timeout=0, incremental=False)
    t.lock("x", A2, timeout=0)
    with pytest.raises(LockTableFullError):  # kept entries still take room
        t.lock("y", A10, timeout=0, incremental=False)
    t.check()


@pytest.mark.parametrize(
    "name",
    [b"a\x00", (1,), (1, "a"), (1, b""), ("1", b"a\x00"), (True, b"a\x00"), (1, b"x" * 512)],
)
def test_bad_names_raise_and_change_nothing(name):
    t = LockTable()
    with pytest.raises(SubscriptError):
        t.lock("x", name, timeout=0)
    with pytest.raises(SubscriptError):
        t.unlock("x", name)
    assert len(t) == 0


@pytest.mark.parametrize("timeout", [-1, float("nan"), "1", True])
def test_bad_timeouts(timeout):
    t = LockTable()
    with pytest.raises(ConfigError):
        t.lock("x", A, timeout=timeout)
    assert len(t) == 0


def test_bad_owner_and_bad_size():
    t = LockTable()
    with pytest.raises(TypeError):
        t.lock(["unhashable"], A, timeout=0)
    with pytest.raises(ConfigError):
        LockTable(locks_max=0)
    assert len(t) == 0


def test_snapshot_order_and_repr():
    t = LockTable()
    t.lock("x", (2, A[1]), timeout=0)
    t.lock("y", B, shared=True, timeout=0)
    t.lock("z", A12, shared=True, timeout=0)
    t.lock("y", A12, shared=True, timeout=0)
    snap = t.snapshot()
    assert [(s[1], s[2]) for s in snap] == [(1, A12[1]), (1, A12[1]), (1, B[1]), (2, A[1])]
    assert "4 locks" in repr(t)


# --- many threads -------------------------------------------------------------------

STRESS_NAMES = [A, A1, A2, A12, ref("a", 1, 3), AB, B, ref("b", "x"), (2, A[1])]


def _conflict(n1, e1, n2, e2) -> bool:
    return n1[0] == n2[0] and (e1 or e2) and (n1[1].startswith(n2[1]) or n2[1].startswith(n1[1]))


@pytest.mark.timeout(120)
def test_many_threads_stress():
    threads_n, ops_n = 8, 2000
    t = LockTable()
    guard = threading.Lock()  # protects `registry`, the test's own record
    registry: dict[str, Counter] = {}  # owner -> (name, exclusive) -> count; a subset of the table
    failures: list[str] = []
    stats = Counter()

    def register(owner, name, exclusive):
        with guard:
            for other, held in registry.items():
                for (n2, e2), c in held.items():
                    if other != owner and c > 0 and _conflict(name, exclusive, n2, e2):
                        failures.append(f"{owner} got {name} while {other} holds {n2}")
            registry.setdefault(owner, Counter())[(name, exclusive)] += 1

    def forget(owner, name, exclusive, all_=False):
        with guard:
            held = registry.setdefault(owner, Counter())
            if all_:
                held.clear()
            else:
                held[(name, exclusive)] -= 1
                if held[(name, exclusive)] == 0:
                    del held[(name, exclusive)]

    def worker(i: int) -> None:
        owner = f"o{i}"
        rng = random.Random(i)
        mine: Counter = Counter()  # what this owner holds with a count above zero
        holding = False
        try:
            for op in range(ops_n):
                r = rng.random()
                if r < 0.45 or not mine:
                    name = rng.choice(STRESS_NAMES)
                    exclusive = rng.random() < 0.5
                    timeout = rng.choice([0, 0, 0.001, 0.005])
                    incremental = rng.random() < 0.9
                    if not incremental:
                        old = Counter(mine)
                        forget(owner, None, None, all_=True)  # keep registry a subset
                    try:
                        t.lock(
                            owner,
                            name,
                            shared=not exclusive,
                            timeout=timeout,
                            incremental=incremental,
                        )
                    except LockTimeoutError:
                        stats["timeout"] += 1
                        if not incremental:
                            for (n, e), c in old.items():
                                for _ in range(c):
                                    register(owner, n, e)
                        continue
                    stats["granted"] += 1
                    if not incremental:
                        mine.clear()
                    mine[(name, exclusive)] += 1
                    register(owner, name, exclusive)
                elif r < 0.9:
                    name, exclusive = rng.choice(sorted(mine, key=repr))
                    forget(owner, name, exclusive)
                    mine[(name, exclusive)] -= 1
                    if mine[(name, exclusive)] == 0:
                        del mine[(name, exclusive)]
                    assert t.unlock(owner, name, shared=not exclusive)
                elif r < 0.95:
                    if holding:
                        t.end_hold(owner)
                    else:
                        t.begin_hold(owner)
                    holding = not holding
                else:
                    forget(owner, None, None, all_=True)
                    mine.clear()
                    t.unlock_all(owner)
                if op % 250 == 0:
                    t.check()
        except BaseException as e:  # reported by the main thread
            failures.append(f"{owner}: {e!r}")
        finally:
            forget(owner, None, None, all_=True)
            t.release_all(owner)

    workers = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(threads_n)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(100)
        assert not w.is_alive(), "a stress worker hung"
    assert failures == []
    assert stats["granted"] > 1000 and stats["timeout"] > 0
    assert len(t) == 0 and t.waiting() == 0
    t.check()


@pytest.mark.timeout(60)
def test_exclusive_counter_is_mutually_exclusive():
    """Blocking exclusive locks on overlapping names protect a plain counter."""
    t = LockTable()
    box = {"n": 0}
    names = [A, A1, A12]

    def worker(i):
        rng = random.Random(100 + i)
        for _ in range(300):
            name = rng.choice(names)
            t.lock(i, name, timeout=JOIN_S)
            n = box["n"]
            time.sleep(0)  # invite a switch inside the critical section
            box["n"] = n + 1
            t.unlock(i, name)

    workers = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(6)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(50)
        assert not w.is_alive()
    assert box["n"] == 6 * 300 and len(t) == 0


# --- single-threaded semantics against a model --------------------------------------

MODEL_NAMES = [A, A1, A12, A2, A10, AB, B, ref("b", "x"), ref("b", "xy"), (2, A1[1])]
OWNERS = ["p", "q", "r"]
MODEL_MAX = 7


class LockModel(RuleBasedStateMachine):
    """timeout=0 everywhere; the model is a dict (owner, name, exclusive) -> count."""

    @initialize()
    def setup(self):
        self.t = LockTable(locks_max=MODEL_MAX)
        self.entries: dict[tuple, int] = {}
        self.holds: Counter = Counter()

    def _release(self, owner, name, exclusive):
        if self.holds[owner]:
            self.entries[(owner, name, exclusive)] = 0
        else:
            del self.entries[(owner, name, exclusive)]

    @rule(
        owner=st.sampled_from(OWNERS),
        name=st.sampled_from(MODEL_NAMES),
        shared=st.booleans(),
        incremental=st.booleans(),
    )
    def lock(self, owner, name, shared, incremental):
        exclusive = not shared
        conflict = any(
            o != owner and _conflict(name, exclusive, n, e) for (o, n, e) in self.entries
        )
        key = (owner, name, exclusive)
        need = 0 if key in self.entries else 1
        freed = 0
        if not incremental and not self.holds[owner]:
            freed = sum(1 for k in self.entries if k[0] == owner and k != key)
        if conflict:
            with pytest.raises(LockTimeoutError):
                self.t.lock(owner, name, shared=shared, timeout=0, incremental=incremental)
        elif len(self.entries) - freed + need > MODEL_MAX:
            with pytest.raises(LockTableFullError):
                self.t.lock(owner, name, shared=shared, timeout=0, incremental=incremental)
        else:
            assert self.t.lock(owner, name, shared=shared, timeout=0, incremental=incremental)
            if incremental:
                self.entries[key] = self.entries.get(key, 0) + 1
            else:
                for k in [k for k in self.entries if k[0] == owner and k != key]:
                    self._release(*k)
                self.entries[key] = 1

    @rule(owner=st.sampled_from(OWNERS), name=st.sampled_from(MODEL_NAMES), shared=st.booleans())
    def unlock(self, owner, name, shared):
        key = (owner, name, not shared)
        count = self.entries.get(key, 0)
        assert self.t.unlock(owner, name, shared=shared) is (count > 0)
        if count > 1:
            self.entries[key] = count - 1
        elif count == 1:
            self._release(*key)

    @rule(owner=st.sampled_from(OWNERS))
    def unlock_all(self, owner):
        self.t.unlock_all(owner)
        for k in [k for k in self.entries if k[0] == owner]:
            self._release(*k)

    @rule(owner=st.sampled_from(OWNERS))
    def release_all(self, owner):
        self.t.release_all(owner)
        self.holds[owner] = 0
        for k in [k for k in self.entries if k[0] == owner]:
            del self.entries[k]

    @rule(owner=st.sampled_from(OWNERS))
    def begin_hold(self, owner):
        self.t.begin_hold(owner)
        self.holds[owner] += 1

    @rule(owner=st.sampled_from(OWNERS))
    def end_hold(self, owner):
        if not self.holds[owner]:
            with pytest.raises(TransactionError):
                self.t.end_hold(owner)
            return
        self.t.end_hold(owner)
        self.holds[owner] -= 1
        if not self.holds[owner]:
            for k in [k for k, c in self.entries.items() if k[0] == owner and c == 0]:
                del self.entries[k]

    @invariant()
    def agrees(self):
        got = {(o, (d, k), m == MODE_EXCLUSIVE): c for o, d, k, m, c in self.t.snapshot()}
        assert got == self.entries
        assert len(self.t) == len(self.entries)
        for owner in OWNERS:
            assert self.t.holding(owner) == self.holds[owner]
        self.t.check()


LockModel.TestCase.settings = settings(
    max_examples=200,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_lock_model = LockModel.TestCase
