"""Named crash points: places in the storage engine where a test may crash it.

Owns: the one list of names (`POINTS`), `hit(name)`, and arming.
Promises:
- In production `hit` costs one global flag test and returns: nothing is armed
  unless a test arms it or `IRISREP_CRASH_AT` is set.
- `IRISREP_CRASH_AT="name"` or `"name:N"` (read once, at import) makes the N-th
  `hit(name)` (default the first) kill this process with SIGKILL: a real crash, for
  tests that run the engine in a child process.
- `arm(name, nth=1, action="raise")` makes the nth hit raise `SimulatedCrash`, a
  BaseException, so `except Exception` in the engine never swallows it. `action`
  may also be "kill", or a callable run first (for example one that takes
  `SimFS.crash()` at exactly that instant, before any cleanup code writes more).
  An armed point fires once, then disarms itself (recovery code may pass it again).
- Once anything is armed (or `set_checking(True)`, or IRISREP_CRASHPOINTS_CHECK=1),
  every `hit` checks its name against POINTS (ValueError if unknown) and is counted
  in `hit_counts()`, so a test can assert that a workload reaches every point.

Adding a point: add its name to POINTS under its component, then call
`crashpoints.hit("that_name")` at the place. Names say where: component, after
what, before what.
"""

from __future__ import annotations

import collections
import contextlib
import os
import signal
import threading
from collections.abc import Callable, Iterator

__all__ = [
    "POINTS",
    "SimulatedCrash",
    "hit",
    "arm",
    "disarm",
    "armed",
    "set_checking",
    "hit_counts",
    "reset_counts",
]

POINTS: tuple[str, ...] = (
    # --- block store flush (buffer pool -> database file) ---
    "create_before_rename",  # a new database file is durable under its temporary name
    "database_before_catalog",  # database(NAME): its file is durable, the catalog not yet
    "close_after_flush",  # close() ran its last cycle, WIJ not yet marked clean
    # --- write image journal (WIJ): add here ---
    "wij_after_images_write",  # directory + images written to the WIJ, not yet fsynced
    "wij_after_images_fsync",  # images durable, header still EMPTY
    "wij_after_active_write",  # ACTIVE header written (maybe not yet durable)
    "wij_after_active_fsync",  # ACTIVE durable: recovery now makes every block new
    "wij_after_db_write",  # one database's blocks written, not yet fsynced
    "wij_after_db_fsync",  # one database fsynced
    "wij_after_empty_write",  # EMPTY header written (maybe not yet durable)
    "wij_recovery_after_db_write",  # recovery: one database's blocks restored, not fsynced
    "wij_recovery_after_db_fsync",  # recovery: one database fsynced
    "wij_recovery_after_empty_write",  # recovery: EMPTY header written, not yet fsynced
    # --- commit path (commit.py): the records of a commit and its fdatasync ---
    "commit_before_write",  # records logged and applied, nothing written to the journal
    "commit_after_write_before_sync",  # the journal has the frame(s), not yet durable
    "commit_after_sync_before_return",  # durable, the committer has not returned yet
    "commit_after_ack_before_return",  # durable and acknowledged by the backup, not returned
    # --- journal recovery on open (database.py) ---
    "recovery_after_rollforward",  # records applied to the tree, rollback not yet done
    "recovery_before_checkpoint",  # rollback journaled and durable, checkpoint not taken
    # --- journal: add here ---
    "journal_before_write",  # frames encoded and positioned, nothing written
    "journal_after_write",  # frames written to the journal file, not yet fdatasynced
    "journal_after_fsync",  # frames durable, committers not yet woken
    "journal_rollover_after_create",  # next journal file durable and visible, no frame in it
    # --- mirror shipping (journal.py on_written, mirror.py) ---
    "mirror_after_ship_before_write",  # frames sent to the members, not written locally
)

_POINT_SET = frozenset(POINTS)
assert len(_POINT_SET) == len(POINTS), "duplicate crash point name"

ENV_CRASH_AT = "IRISREP_CRASH_AT"
ENV_CHECK = "IRISREP_CRASHPOINTS_CHECK"


class SimulatedCrash(BaseException):
    """Raised by an armed crash point. A BaseException: ordinary error handling in
    the engine must not catch it and carry on as if the process had survived."""

    def __init__(self, name: str, nth: int) -> None:
        super().__init__(f"simulated crash at {name!r} (hit {nth})")
        self.name = name
        self.nth = nth


# _active is the only thing `hit` reads in production. It is True while anything is
# armed or checking is on; everything else is behind it.
_active = False
_checking = False
_armed: dict[str, list] = {}  # name -> [hits left before firing, nth, action]
_counts: collections.Counter[str] = collections.Counter()
_lock = threading.Lock()


def hit(name: str) -> None:
    """Pass crash point `name`: nothing unless armed (see the module doc)."""
    if not _active:
        return
    _hit_slow(name)


def _hit_slow(name: str) -> None:
    with _lock:
        if name not in _POINT_SET:
            raise ValueError(_unknown(name))
        _counts[name] += 1
        entry = _armed.get(name)
        if entry is None:
            return
        entry[0] -= 1
        if entry[0] > 0:
            return
        del _armed[name]
        _refresh()
        nth, action = entry[1], entry[2]
    # Outside the lock: the action may run arbitrary test code.
    if action == "kill":
        _kill_self()
    if callable(action):
        action(name)
    raise SimulatedCrash(name, nth)


def _kill_self() -> None:
    # SIGKILL cannot be caught: no finally blocks, no atexit, no buffered flushes.
    os.kill(os.getpid(), signal.SIGKILL)
    signal.pause()  # not reached; SIGKILL delivery is asynchronous in principle


def _unknown(name: object) -> str:
    return f"unknown crash point {name!r}; valid names: {', '.join(POINTS)}"


def _refresh() -> None:
    global _active
    _active = bool(_armed) or _checking


def arm(name: str, nth: int = 1, action: str | Callable[[str], object] = "raise") -> None:
    """Crash at the nth next hit of `name` (replacing any arming of that name)."""
    if name not in _POINT_SET:
        raise ValueError(_unknown(name))
    if not isinstance(nth, int) or nth < 1:
        raise ValueError(f"nth must be an int >= 1, got {nth!r}")
    if not (action in ("raise", "kill") or callable(action)):
        raise ValueError(f"action must be 'raise', 'kill' or a callable, got {action!r}")
    with _lock:
        _armed[name] = [nth, nth, action]
        _refresh()


def disarm(name: str | None = None) -> None:
    """Disarm `name`, or every point."""
    with _lock:
        if name is None:
            _armed.clear()
        else:
            _armed.pop(name, None)
        _refresh()


@contextlib.contextmanager
def armed(
    name: str, nth: int = 1, action: str | Callable[[str], object] = "raise"
) -> Iterator[None]:
    """`with armed("x"):` arms `x` for the block and disarms it after."""
    arm(name, nth, action)
    try:
        yield
    finally:
        disarm(name)


def set_checking(on: bool) -> None:
    """Validate and count every hit even when nothing is armed (test suites)."""
    global _checking
    with _lock:
        _checking = bool(on)
        _refresh()


def hit_counts() -> dict[str, int]:
    """Hits per name while checking was active (anything armed or checking on)."""
    with _lock:
        return dict(_counts)


def reset_counts() -> None:
    with _lock:
        _counts.clear()


def _parse_env(spec: str) -> tuple[str, int]:
    name, sep, n = spec.strip().partition(":")
    nth = 1
    if sep:
        try:
            nth = int(n)
        except ValueError:
            raise ValueError(f"{ENV_CRASH_AT}={spec!r}: N in 'name:N' must be an integer") from None
        if nth < 1:
            raise ValueError(f"{ENV_CRASH_AT}={spec!r}: N must be >= 1")
    if name not in _POINT_SET:
        raise ValueError(f"{ENV_CRASH_AT}={spec!r}: " + _unknown(name))
    return name, nth


def _init_from_env() -> None:
    spec = os.environ.get(ENV_CRASH_AT)
    if spec:
        name, nth = _parse_env(spec)
        arm(name, nth, "kill")
    if os.environ.get(ENV_CHECK, "") not in ("", "0"):
        set_checking(True)


_init_from_env()
