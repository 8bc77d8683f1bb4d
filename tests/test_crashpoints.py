"""Named crash points: in-process SimulatedCrash and a real SIGKILL in a child."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from irisrep import crashpoints as cp
from irisrep.simdisk import SimFS

P = cp.POINTS[0]
Q = cp.POINTS[1]


@pytest.fixture(autouse=True)
def _clean():
    cp.disarm()
    cp.set_checking(False)
    cp.reset_counts()
    yield
    cp.disarm()
    cp.set_checking(False)
    cp.reset_counts()


def test_points_are_unique_identifiers():
    assert len(set(cp.POINTS)) == len(cp.POINTS)
    assert all(p.isidentifier() for p in cp.POINTS)
    for name in ("create_before_rename", "close_after_flush", "wij_after_active_fsync"):
        assert name in cp.POINTS


def test_every_point_is_placed_in_the_engine():
    """The list stays true: each name is used (passed to `hit`) by some other module."""
    import pathlib

    here = pathlib.Path(cp.__file__)
    src = "".join(p.read_text() for p in here.parent.glob("*.py") if p != here)
    for name in cp.POINTS:
        assert f'"{name}"' in src, f"crash point {name} is listed but never hit"


def test_unarmed_hit_is_a_no_op_even_for_unknown_names():
    assert cp._active is False
    cp.hit(P)
    cp.hit("no_such_point")  # production never pays for validation
    assert cp.hit_counts() == {}


def test_arm_raises_simulated_crash_at_nth_hit():
    cp.arm(P, nth=3)
    cp.hit(P)
    cp.hit(Q)
    cp.hit(P)
    with pytest.raises(cp.SimulatedCrash) as ei:
        cp.hit(P)
    assert ei.value.name == P and ei.value.nth == 3
    cp.hit(P)  # fired once, then disarmed
    assert cp._active is False


def test_simulated_crash_escapes_except_exception():
    assert not issubclass(cp.SimulatedCrash, Exception)

    def engine():
        try:
            cp.hit(P)
        except Exception:  # what careless engine code does
            return "swallowed"
        return "passed"

    with cp.armed(P), pytest.raises(cp.SimulatedCrash):
        engine()


def test_armed_context_manager_disarms():
    with cp.armed(P, nth=2):
        cp.hit(P)
    cp.hit(P)
    cp.hit(P)


def test_unknown_names_are_value_errors_listing_valid_names():
    with pytest.raises(ValueError, match=P):
        cp.arm("nope")
    cp.arm(P)
    with pytest.raises(ValueError, match="valid names") as ei:
        cp.hit("nope")  # checked because something is armed
    assert not isinstance(ei.value, KeyError)
    with pytest.raises(ValueError):
        cp.arm(P, nth=0)
    with pytest.raises(ValueError):
        cp.arm(P, action="explode")


def test_checking_validates_and_counts_without_arming():
    cp.set_checking(True)
    cp.hit(P)
    cp.hit(P)
    cp.hit(Q)
    assert cp.hit_counts() == {P: 2, Q: 1}
    with pytest.raises(ValueError):
        cp.hit("nope")


def test_callable_action_runs_before_the_raise():
    fs = SimFS(1)
    f = fs.open("/f", create=True, direct="disabled")
    survivors = []

    def power_loss(name):
        survivors.append(fs.crash("keep_all"))

    def engine():
        f.pwrite(0, b"before")
        try:
            cp.hit(P)
        finally:
            f.pwrite(0, b"cleanup!")  # after the power loss: must not reach the disk

    cp.arm(P, action=power_loss)
    # The cleanup's I/O on the dead disk raises EBADF, which replaces the crash
    # exception (the crash stays attached as __context__). Tests of the engine must
    # therefore judge by the survivor disk, not by the exception type.
    with pytest.raises(OSError) as ei:
        engine()
    assert isinstance(ei.value.__context__, cp.SimulatedCrash)
    (disk,) = survivors
    assert disk.open("/f", direct="disabled").pread(0, 100) == b"before"


def test_parse_env():
    assert cp._parse_env(P) == (P, 1)
    assert cp._parse_env(f"{P}:4") == (P, 4)
    for bad in ("nope", f"{P}:x", f"{P}:0"):
        with pytest.raises(ValueError):
            cp._parse_env(bad)


CHILD = textwrap.dedent(
    """
    import sys
    from irisrep import crashpoints
    for i in range(1, 6):
        print("hit", i, flush=True)
        crashpoints.hit(sys.argv[1])
    print("survived", flush=True)
    """
)


def _child(env_value, name=P):
    env = dict(os.environ)
    env.pop("IRISREP_CRASH_AT", None)
    if env_value is not None:
        env["IRISREP_CRASH_AT"] = env_value
    return subprocess.run(
        [sys.executable, "-c", CHILD, name],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_env_var_kills_child_with_sigkill():
    r = _child(P)
    assert r.returncode == -signal.SIGKILL == -9
    assert r.stdout.split("\n")[:-1] == ["hit 1"]


def test_env_var_nth_hit():
    r = _child(f"{P}:3")
    assert r.returncode == -9
    assert r.stdout.splitlines() == ["hit 1", "hit 2", "hit 3"]


def test_env_var_other_point_does_not_fire():
    r = _child(Q)
    assert r.returncode == 0
    assert r.stdout.splitlines()[-1] == "survived"


def test_env_var_unknown_name_fails_at_import():
    r = _child("no_such_point")
    assert r.returncode == 1
    assert "ValueError" in r.stderr and "valid names" in r.stderr


def test_no_env_var_survives():
    r = _child(None)
    assert r.returncode == 0 and "survived" in r.stdout
