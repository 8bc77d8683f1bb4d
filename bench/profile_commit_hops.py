"""Where one mirrored commit's time goes, hop by hop, across the primary and its backup.

The primary is an in-process `irisrep.member.Member` (as bench/bench_commit.py) and
the backup B an `irisrep serve` process, ack `durable`; one client thread commits
one-node SETs of a 64-byte value, one after the other. Both processes stamp the same
points of every commit with `time.perf_counter_ns()`, which is CLOCK_MONOTONIC on
Linux, one clock for every process of the machine, so a hop between the two
processes is timed directly:

    primary: commit starts -> group leader ships the frame (Replicator._publish) ->
             shipped -> own journal write + fdatasync done
    B:       first byte of the JOURNAL frame readable -> frame read -> frames
             appended -> flush (write + fdatasync) -> ACK sent
    primary: ACK read by the link's reader (Replicator._on_ack) -> commit returns

The stamps come from wrappers put around those functions for this run only (in B
through a `sitecustomize` module on its PYTHONPATH, written to the scratch
directory); the wrappers cost a few microseconds per commit, so the total is a
little above bench_commit.py's p50. B's stamps are matched to the primary's by the
journal position of the frame. Printed: p50 and p90 per step, and the floors of the
same run (fdatasync of one 8 KiB block, the loopback round trip, the minimal mirrored
commit), as bench_commit.py measures them.

    python bench/profile_commit_hops.py [--commits 3000] [--json FILE] [--dir PARENT]

Linux only (perf_counter_ns must be one clock across processes). The scratch
directory (profile_commit_hops_tmp*, under --dir, default the current directory) is
removed at the end; every process started is stopped, also on an error or Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import bench_commit as bc
import numpy as np

from irisrep import journal as journal_mod
from irisrep import mirror as mirror_mod

# Loaded in B (and only there: it checks for `serve` and the environment variable).
SITECUSTOMIZE = r"""
import atexit, json, os, sys, time
if "serve" in sys.argv and os.environ.get("IRISREP_HOPS_OUT"):
    from irisrep import journal as J, mirror as M, wire as W
    pc = time.perf_counter_ns
    rows, cur = [], {}
    want = W.FrameReader._want
    def _want(self, n, deadline, *, at_boundary):
        empty = self._hi == self._lo
        out = want(self, n, deadline, at_boundary=at_boundary)
        if at_boundary and empty:
            cur["first"] = pc()  # the frame's first bytes were readable and read
        return out
    W.FrameReader._want = _want
    read = W.FrameReader.read_frame
    def read_frame(self, **kw):
        f = read(self, **kw)
        if f.type == W.JOURNAL:
            first = cur.get("first")
            cur.clear()
            cur.update(first=first, read=pc())
        return f
    W.FrameReader.read_frame = read_frame
    append = J.Journal.append_frames
    def append_frames(self, data):
        start, end = append(self, data)
        cur.setdefault("position", start)
        cur["appended"] = pc()
        return start, end
    J.Journal.append_frames = append_frames
    flush = J.Journal.flush
    def _flush(self, position=None):
        cur["flush0"] = pc()
        out = flush(self, position)
        cur["flush1"] = pc()
        return out
    J.Journal.flush = _flush
    send = M.CopyLink._send
    def _send(self, sock, ftype, payload):
        send(self, sock, ftype, payload)
        if ftype == W.ACK and "read" in cur and "acked" not in cur:
            cur["acked"] = pc()
            rows.append(dict(cur))
    M.CopyLink._send = _send
    atexit.register(lambda: json.dump(rows, open(os.environ["IRISREP_HOPS_OUT"], "w")))
"""

STEPS = (
    # (label, start stamp, end stamp); "b." stamps are B's.
    ("primary: apply, log, lead the group (Python)", "start", "ship0"),
    ("primary: ship the frame (sendto)", "ship0", "ship1"),
    ("primary: own journal write + fdatasync", "ship1", "synced"),
    ("to B's receive thread, awake", "ship1", "b.first"),
    ("B: read the frame", "b.first", "b.read"),
    ("B: check and append the frames", "b.read", "b.appended"),
    ("B: until the flush starts", "b.appended", "b.flush0"),
    ("B: journal write + fdatasync", "b.flush0", "b.flush1"),
    ("B: send the ack", "b.flush1", "b.acked"),
    ("to A's ack reader, awake", "b.acked", "ack"),
    ("A: ack (or own sync, if later) to return", "ack_or_synced", "end"),
    ("total", "start", "end"),
)


def instrument(stamps: dict) -> None:
    """Wrap the primary's hop points; each commit's stamps land in `stamps`."""
    pc = time.perf_counter_ns
    publish = mirror_mod.Replicator._publish

    def _publish(self, position, data):
        stamps.setdefault("position", position)
        stamps["ship0"] = pc()
        publish(self, position, data)
        stamps["ship1"] = pc()

    on_ack = mirror_mod.Replicator._on_ack

    def _on_ack(self, link, position, level):
        stamps.setdefault("ack", pc())
        on_ack(self, link, position, level)

    write_and_sync = journal_mod.Journal._write_and_sync

    def _write_and_sync(self, frames):
        write_and_sync(self, frames)
        stamps["synced"] = pc()

    mirror_mod.Replicator._publish = _publish
    mirror_mod.Replicator._on_ack = _on_ack
    journal_mod.Journal._write_and_sync = _write_and_sync


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--commits", type=int, default=3000)
    ap.add_argument("--floor-n", type=int, default=1000, help="samples per floor")
    ap.add_argument("--json", help="write the figures here")
    ap.add_argument("--dir", default=".", help="parent of the scratch directory")
    args = ap.parse_args(argv)
    if args.commits < 10:
        ap.error("--commits must be at least 10")

    scratch = Path(tempfile.mkdtemp(prefix="profile_commit_hops_tmp", dir=args.dir))
    site = scratch / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    b_out = scratch / "b_hops.json"
    old_env = {k: os.environ.get(k) for k in ("PYTHONPATH", "IRISREP_HOPS_OUT")}
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(site), *filter(None, [os.environ.get("PYTHONPATH")])]
    )
    os.environ["IRISREP_HOPS_OUT"] = str(b_out)
    children = bc.Children()
    stamps: dict = {}
    rows: list[dict] = []
    mirror = bc.Mirror(scratch / "m", children, (True, "durable", 0), 8000, "serve")
    try:
        fd_ns, direct = bc.fdatasync_floor(str(scratch), args.floor_n)
        rtt_ns = bc.rtt_floor(children, args.floor_n)
        minimal_ns = bc.mirrored_commit_floor(children, str(scratch), args.floor_n)
        # Before the start: the journal keeps the replicator's hook as a bound method.
        instrument(stamps)
        mirror.start()
        for k, v in old_env.items():  # only B needed them
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        g = mirror.primary.database.globals["hops"]
        for i in range(200):  # warm-up
            g[-1 - i] = bc.VALUE
        pc = time.perf_counter_ns
        for i in range(args.commits):
            stamps.clear()
            stamps["start"] = pc()
            g[i] = bc.VALUE
            stamps["end"] = pc()
            rows.append(dict(stamps))
    finally:
        mirror.stop()  # B writes its stamps as it exits
        children.stop_all()
    try:
        b_rows = {r["position"]: r for r in json.loads(b_out.read_text())}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    matched = []
    for r in rows:
        b = b_rows.get(r.get("position"))
        need = ("ship0", "ship1", "synced", "ack")
        if b is None or not all(k in r for k in need) or b.get("first") is None:
            continue
        r = dict(r, ack_or_synced=max(r["ack"], r["synced"]))
        r.update({f"b.{k}": v for k, v in b.items()})
        matched.append(r)
    if not matched:
        print("no commit could be matched between the primary and B", file=sys.stderr)
        return 1
    fd, rtt = np.median(fd_ns) / 1000, np.median(rtt_ns) / 1000
    print(
        f"one mirrored commit (ack durable), hop by hop: {len(matched)} of {len(rows)} "
        f"commits matched; {os.cpu_count()} cpus, load average {os.getloadavg()[0]:.2f}"
    )
    print(
        f"floors: fdatasync 8 KiB (O_DIRECT={direct}) p50 {fd:.0f} us, loopback rtt p50 "
        f"{rtt:.0f} us, sum {fd + rtt:.0f} us"
    )
    minimal = np.median(minimal_ns) / 1000
    print(
        f"        the minimal mirrored commit (one thread a side, its system calls only, "
        f"bench_commit.mirrored_commit_floor) p50 {minimal:.0f} us"
    )
    out = {
        "floors": {"fdatasync_p50_us": fd, "rtt_p50_us": rtt, "mirrored_commit_p50_us": minimal},
        "steps": {},
    }
    print(f"  {'step':48s} {'p50 us':>8s} {'p90 us':>8s}")
    for label, a, b in STEPS:
        xs = np.array([r[b] - r[a] for r in matched if a in r and b in r]) / 1000
        p50, p90 = float(np.percentile(xs, 50)), float(np.percentile(xs, 90))
        out["steps"][label] = {"p50_us": p50, "p90_us": p90}
        print(f"  {label:48s} {p50:8.1f} {p90:8.1f}")
    total = out["steps"]["total"]["p50_us"]
    print(
        f"total p50 / (rtt + fdatasync) p50 = {total / (fd + rtt):.2f}x; "
        f"/ the minimal mirrored commit = {total / minimal:.2f}x"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
