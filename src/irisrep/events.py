"""The member's event log: what happened to it, for `irisrep events [--follow]`.

Owns DATA_DIR/events.jsonl: one JSON object per line (`time`, `member`, `kind`,
`text`, and any fields the caller adds), appended by the member as things happen:
start and stop, role and epoch changes, the mirror core's decisions, a backup
becoming Active or dropped, a link to the primary made or lost, a tail undone, a
copy made read-write (no longer eligible to fail over).

Promises:
- appending never blocks a commit for long and never fails the caller: the log is
  for operators, not for recovery (the fsynced history.jsonl is the record that
  matters), so an OSError while writing is logged once and the event is dropped;
- the file stays bounded: past EVENTS_FILE_BYTES_MAX it is renamed to
  events.jsonl.1 (replacing the older one) and a new file starts;
- readers tolerate a torn last line (a crash mid-append) and skip it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from .constants import EVENTS_FILE_BYTES_MAX, EVENTS_FILE_NAME

log = logging.getLogger(__name__)

__all__ = ["EventLog", "read_events", "follow_events"]


class EventLog:
    """Appends events of one member to `data_dir/events.jsonl`."""

    def __init__(self, data_dir: str | os.PathLike, member: str) -> None:
        self.path = os.path.join(data_dir, EVENTS_FILE_NAME)
        self.member = member
        self._lock = threading.Lock()
        self._failed = False

    def __call__(self, kind: str, text: str, **fields) -> None:
        entry = {"time": time.time(), "member": self.member, "kind": kind, "text": text}
        entry.update(fields)
        line = json.dumps(entry, sort_keys=True, default=str).encode() + b"\n"
        with self._lock:
            try:
                with contextlib.suppress(FileNotFoundError):  # the first event
                    if os.path.getsize(self.path) + len(line) > EVENTS_FILE_BYTES_MAX:
                        os.replace(self.path, self.path + ".1")
                # O_APPEND: one write() per event, so a reader never sees two events
                # interleaved; no fsync (see the module's promise).
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
                try:
                    os.write(fd, line)
                finally:
                    os.close(fd)
                self._failed = False
            except OSError as e:
                if not self._failed:
                    log.error("event log %s: %s (events dropped until it works)", self.path, e)
                self._failed = True


def _parse(lines: list[bytes]) -> list[dict]:
    out = []
    for line in lines:
        try:
            e = json.loads(line)
        except ValueError:
            continue  # a torn line after a crash
        if isinstance(e, dict) and "time" in e:
            out.append(e)
    return out


def read_events(data_dirs: list[Path]) -> list[dict]:
    """Every event of these members (rotated file first), oldest first."""
    out: list[dict] = []
    for d in data_dirs:
        for name in (EVENTS_FILE_NAME + ".1", EVENTS_FILE_NAME):
            try:
                out.extend(_parse((Path(d) / name).read_bytes().splitlines()))
            except FileNotFoundError:
                continue
    out.sort(key=lambda e: e["time"])
    return out


def follow_events(
    data_dirs: list[Path], *, poll_s: float = 0.2, stop=None, history: bool = True
) -> Iterator[dict]:
    """Yield the events already there (if `history`), then each new one as it is
    appended, until `stop()` returns true. Follows a rotation (the file shrinks or is
    replaced: start again from its beginning).

    The end of each file is taken before the history is read, and the history is read
    up to exactly there: an event appended in between is yielded once, as new."""
    offsets: dict[Path, tuple[int, int]] = {}  # path -> (inode, offset)
    for d in data_dirs:
        p = Path(d) / EVENTS_FILE_NAME
        try:
            st = p.stat()
            offsets[p] = (st.st_ino, st.st_size)
        except FileNotFoundError:
            offsets[p] = (0, 0)
    if history:
        old: list[dict] = []
        for p, (_ino, size) in offsets.items():
            with contextlib.suppress(FileNotFoundError):  # never rotated
                old.extend(_parse(p.with_name(EVENTS_FILE_NAME + ".1").read_bytes().splitlines()))
            try:
                with open(p, "rb") as f:
                    data = f.read(size)
            except FileNotFoundError:
                continue
            # Whole lines only: one still being appended is read as new, whole.
            cut = data.rfind(b"\n") + 1
            old.extend(_parse(data[:cut].splitlines()))
            offsets[p] = (offsets[p][0], cut)
        old.sort(key=lambda e: e["time"])
        yield from old
    while stop is None or not stop():
        fresh: list[dict] = []
        for p, (ino, off) in list(offsets.items()):
            try:
                st = p.stat()
            except FileNotFoundError:
                continue
            if st.st_ino != ino or st.st_size < off:
                ino, off = st.st_ino, 0  # rotated: the new file from its start
            if st.st_size == off:
                offsets[p] = (ino, off)
                continue
            with open(p, "rb") as f:
                f.seek(off)
                data = f.read()
            # Only whole lines: a line being appended now is read next time.
            cut = data.rfind(b"\n") + 1
            fresh.extend(_parse(data[:cut].splitlines()))
            offsets[p] = (ino, off + cut)
        fresh.sort(key=lambda e: e["time"])
        yield from fresh
        time.sleep(poll_s)
