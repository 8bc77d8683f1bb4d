"""Stateful test: the globals API against a sorted-dict model with IRIS collation.

The model keeps {subscripts: value} in a plain dict and answers $DATA, $ORDER,
$QUERY and items() by sorting with an independent collation key (numbers as
Fractions before strings by code point), so a bug in the key codec's ordering or in
the tree's navigation shows as a mismatch. Close-and-reopen runs the integrity walk.
The database uses a tiny buffer pool so that eviction and re-reads are exercised.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from fractions import Fraction

import hypothesis.strategies as st
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import irisrep
from irisrep import integrity

_CANON = re.compile(r"-?(0|[1-9][0-9]*)$|-?([1-9][0-9]*)?\.[0-9]*[1-9]$")


def norm(s):
    """The model's own subscript normalisation: canonical numbers become Fractions."""
    if isinstance(s, bool):
        raise TypeError
    if isinstance(s, int):
        return Fraction(s)
    if isinstance(s, float):
        return Fraction(repr(s)) if "e" not in repr(s) else Fraction(s)
    if _CANON.match(s) and s != "-0":
        return Fraction(s)
    return s


def coll(subs):
    """Collation key of a normalised tuple: numbers first (numeric), then strings."""
    return tuple((0, s, "") if isinstance(s, Fraction) else (1, 0, s) for s in subs)


def back(x):
    """A normalised subscript as the API returns it."""
    if isinstance(x, Fraction):
        return int(x) if x.denominator == 1 else float(x)
    return x


subscript = st.one_of(
    st.integers(-3, 12),
    st.sampled_from(["a", "b", "ab", "z", "1", "01", "1.5", ".5", "-0", "1e3", "é", "𝄞"]),
    st.sampled_from([0.5, 1.5, -2.25, 3.0]),
)
subs_tuple = st.lists(subscript, min_size=0, max_size=3).map(tuple)
value = st.one_of(
    st.text(max_size=8),
    st.integers(-1000, 1000),
    st.binary(max_size=8),
    st.sampled_from(["x" * 3000, "long" * 700]),
)


class GlobalsMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="irisrep-model-")
        self.db = irisrep.open(self.dir, pool_blocks=64, commit_mode="relaxed")
        self.g = self.db.globals["m"]
        self.model: dict[tuple, object] = {}

    def teardown(self):
        self.db.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    # --- helpers ---------------------------------------------------------------------

    def sorted_keys(self):
        return sorted(self.model, key=coll)

    def m_data(self, n):
        has_value = n in self.model
        has_desc = any(len(k) > len(n) and k[: len(n)] == n for k in self.model)
        return (1 if has_value else 0) + (10 if has_desc else 0)

    # --- rules -----------------------------------------------------------------------

    @rule(subs=subs_tuple, v=value)
    def set(self, subs, v):
        self.g[subs] = v
        self.model[tuple(map(norm, subs))] = v

    @rule(subs=subs_tuple)
    def kill(self, subs):
        del self.g[subs]
        n = tuple(map(norm, subs))
        for k in [k for k in self.model if k[: len(n)] == n]:
            del self.model[k]

    @rule(subs=subs_tuple)
    def zkill(self, subs):
        self.g.zkill(subs)
        self.model.pop(tuple(map(norm, subs)), None)

    @rule(subs=subs_tuple, by=st.integers(-5, 5))
    def increment(self, subs, by):
        n = tuple(map(norm, subs))
        old = self.model.get(n, 0)
        if not isinstance(old, int):
            return  # numeric interpretation of strings is the codec test's business
        got = self.g.increment(subs, by)
        assert got == old + by
        self.model[n] = old + by

    @rule(subs=subs_tuple)
    def data(self, subs):
        assert self.g.data(subs) == self.m_data(tuple(map(norm, subs)))

    @rule(subs=subs_tuple)
    def get(self, subs):
        n = tuple(map(norm, subs))
        assert self.g.get(subs, "<none>") == self.model.get(n, "<none>")

    @rule(subs=subs_tuple, last=st.one_of(subscript, st.just("")), reverse=st.booleans())
    def order(self, subs, last, reverse):
        parent = tuple(map(norm, subs))
        got = self.g.order(subs + (last,), reverse=reverse)
        level = len(parent)
        children = sorted(
            {k[level] for k in self.model if len(k) > level and k[:level] == parent},
            key=lambda s: coll((s,)),
        )
        if last == "":
            expect = (children[-1] if reverse else children[0]) if children else None
        else:
            here = coll((norm(last),))
            after = [c for c in children if (coll((c,)) < here if reverse else coll((c,)) > here)]
            expect = (after[-1] if reverse else after[0]) if after else None
        assert got == (None if expect is None else back(expect))

    @rule(subs=subs_tuple, reverse=st.booleans())
    def query(self, subs, reverse):
        n = coll(tuple(map(norm, subs)))
        keys = [k for k in self.sorted_keys() if (coll(k) < n if reverse else coll(k) > n)]
        expect = (keys[-1] if reverse else keys[0]) if keys else None
        got = self.g.query(subs, reverse=reverse)
        assert got == (None if expect is None else tuple(map(back, expect)))

    @rule(prefix=st.lists(subscript, max_size=2).map(tuple), reverse=st.booleans())
    def items(self, prefix, reverse):
        p = tuple(map(norm, prefix))
        expect = [
            (tuple(map(back, k)), self.model[k]) for k in self.sorted_keys() if k[: len(p)] == p
        ]
        if reverse:
            expect.reverse()
        assert list(self.g.items(prefix=prefix, reverse=reverse, batch=7)) == expect

    @precondition(lambda self: True)
    @rule()
    def reopen(self):
        self.db.close()
        reports = integrity.check(self.dir)
        assert all(r.ok for r in reports), [r.errors for r in reports]
        self.db = irisrep.open(self.dir, pool_blocks=64, commit_mode="relaxed")
        self.g = self.db.globals["m"]

    @invariant()
    def count_matches(self):
        if len(self.model) < 40:
            assert sum(1 for _ in self.g.items()) == len(self.model)


GlobalsMachine.TestCase.settings = settings(
    max_examples=60,
    stateful_step_count=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestGlobalsModel = GlobalsMachine.TestCase
