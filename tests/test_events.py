"""The member's event log (events.py): appends, rotation, torn lines, and a follower
that sees each event exactly once, including one appended while it starts."""

from __future__ import annotations

import json
import threading

from irisrep import events as ev
from irisrep.events import EventLog, follow_events, read_events


def test_history_then_new_events_each_once(tmp_path):
    log = EventLog(tmp_path, "A")
    log("started", "started as primary", epoch=1)
    stop = threading.Event()
    it = follow_events([tmp_path], poll_s=0.01, stop=stop.is_set)
    first = next(it)
    assert (first["member"], first["kind"], first["epoch"]) == ("A", "started", 1)
    log("role", "primary -> backup")
    log("stopped", "stopped as backup")
    got = [next(it)["kind"], next(it)["kind"]]
    assert got == ["role", "stopped"]
    stop.set()
    assert list(it) == []


def test_a_line_being_written_when_the_follower_starts_comes_once_whole(tmp_path):
    path = tmp_path / ev.EVENTS_FILE_NAME
    whole = json.dumps({"time": 1.0, "member": "A", "kind": "x", "text": "one"}) + "\n"
    torn = json.dumps({"time": 2.0, "member": "A", "kind": "y", "text": "two"}) + "\n"
    path.write_text(whole + torn[:10])  # the second line half written
    stop = threading.Event()
    it = follow_events([tmp_path], poll_s=0.01, stop=stop.is_set)
    assert next(it)["text"] == "one"
    with open(path, "a") as f:
        f.write(torn[10:])
    assert next(it)["text"] == "two"
    stop.set()
    assert list(it) == []


def test_rotation_keeps_one_older_file_and_readers_see_both(tmp_path, monkeypatch):
    monkeypatch.setattr(ev, "EVENTS_FILE_BYTES_MAX", 400)
    log = EventLog(tmp_path, "B")
    for i in range(12):
        log("link", f"event {i}")
    assert (tmp_path / (ev.EVENTS_FILE_NAME + ".1")).exists()
    assert (tmp_path / ev.EVENTS_FILE_NAME).stat().st_size <= 400
    texts = [e["text"] for e in read_events([tmp_path])]
    assert texts[-1] == "event 11" and texts == sorted(texts, key=lambda t: int(t.split()[1]))


def test_a_torn_last_line_is_skipped(tmp_path):
    log = EventLog(tmp_path, "A")
    log("started", "ok")
    with open(tmp_path / ev.EVENTS_FILE_NAME, "ab") as f:
        f.write(b'{"time": 3, "mem')
    assert [e["text"] for e in read_events([tmp_path])] == ["ok"]


def test_a_failing_append_never_raises(tmp_path):
    log = EventLog(tmp_path / "missing-dir", "A")
    log("started", "dropped")  # logged once as an error, never raised
    log("started", "dropped again")
