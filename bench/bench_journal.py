"""Journal commits on real files: latency beside the fdatasync floor, and group commit.

Issue 4's bench, parts (b) and (c) (part (a), records/s of the codec, belongs to the
codec's bench; engine-level commits through Database come later: see `ENGINE_HOOKS`).

(b) latency: one committer, `Journal.commit([one 64-byte SET])` in a loop; p50/p99
    beside the floor measured in the same run: overwrite one 4 KiB block of a
    preallocated file and fdatasync it (same O_DIRECT setting as the journal).
    Goal: p50 <= 1.3 x floor p50.
(c) throughput: commits/s with 1, 4, 16 and 64 threads each committing one record at
    a time for `--seconds`; beside it sqlite3 in WAL mode with synchronous=FULL doing
    the same one-row commits, one connection per thread. Goal: 16 threads >= 5 x one.

    python bench/bench_journal.py [--quick] [--seconds 3] [--json out.json]

The scratch directory is made under the current directory (not /tmp, which may be
tmpfs, where O_DIRECT is refused and fdatasync costs nothing).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sqlite3
import statistics
import sys
import tempfile
import threading
import time

from _machine import mount_of, overwrite_fdatasync_ns, pct

from irisrep.constants import IO_ALIGN
from irisrep.fileio import RealFS
from irisrep.journal import Journal
from irisrep.journalcodec import SET, Record

THREADS = (1, 4, 16, 64)
VALUE = b"x" * (64 - 24 - 8)  # a 64-byte SET record: 24 header + 8 key + 32 value

# Engine-level measurements (commits through Database, transactions) plug in here.
ENGINE_HOOKS: dict[str, object] = {}


def floor_latency(fs, d: str, n: int) -> tuple[list[float], bool]:
    """Overwrite one 4 KiB block of a preallocated file, fdatasync; seconds each."""
    ns, direct = overwrite_fdatasync_ns(fs, d, n, IO_ALIGN, size=16 << 20)
    return [t / 1e9 for t in ns], direct


def commit_latency(j: Journal, n: int) -> list[float]:
    out = []
    for i in range(n):
        r = Record(SET, 0, 1, 0, b"L%07d" % i, VALUE, b"")
        t = time.perf_counter()
        j.commit([r])
        out.append(time.perf_counter() - t)
    return out


def run_threads(nthreads: int, seconds: float, make_worker) -> float:
    """commits/s of `nthreads` workers each looping commit() until the deadline."""
    counts = [0] * nthreads
    start = threading.Barrier(nthreads + 1)
    stop = threading.Event()

    def body(t: int) -> None:
        commit = make_worker(t)
        start.wait()
        n = 0
        while not stop.is_set():
            commit(n)
            n += 1
        counts[t] = n

    threads = [threading.Thread(target=body, args=(t,)) for t in range(nthreads)]
    for th in threads:
        th.start()
    start.wait()
    t0 = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    for th in threads:
        th.join()
    return sum(counts) / (time.perf_counter() - t0)


def journal_worker(j: Journal):
    def make(t: int):
        def commit(i: int) -> None:
            j.commit([Record(SET, 0, 1, 0, b"%02d%06d" % (t % 100, i % 10**6), VALUE, b"")])

        return commit

    return make


def sqlite_worker(path: str):
    def make(t: int):
        con = sqlite3.connect(path, timeout=60, isolation_level=None, check_same_thread=False)
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA synchronous=FULL")

        def commit(i: int) -> None:
            con.execute("INSERT INTO t VALUES (?, ?)", (b"%02d%06d" % (t % 100, i), VALUE))

        return commit

    return make


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="short run (smoke test)")
    ap.add_argument("--seconds", type=float, default=None, help="per thread count (c)")
    ap.add_argument("--latency-n", type=int, default=None, help="commits measured in (b)")
    ap.add_argument("--threads", default=",".join(map(str, THREADS)))
    ap.add_argument("--direct", default="optional", choices=("optional", "disabled"))
    ap.add_argument("--no-sqlite", action="store_true")
    ap.add_argument("--json", default=None, help="write the figures here")
    args = ap.parse_args(argv)
    seconds = args.seconds if args.seconds is not None else (0.5 if args.quick else 3.0)
    lat_n = args.latency_n if args.latency_n is not None else (200 if args.quick else 2000)
    thread_counts = [int(x) for x in args.threads.split(",")]

    scratch = tempfile.mkdtemp(prefix="bench_journal_", dir=os.getcwd())
    mnt, fstype = mount_of(scratch)
    fs = RealFS()
    res: dict = {
        "machine": {
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "dir": scratch,
            "mount": mnt,
            "fstype": fstype,
        },
        "goals": {"latency_p50_ratio_max": 1.3, "threads16_speedup_min": 5.0},
    }
    try:
        jdir = os.path.join(scratch, "journal")
        j = Journal(fs, jdir, direct=args.direct)
        res["machine"]["journal_direct"] = j.direct
        res["machine"]["codec"] = getattr(j.codec, "__name__", str(j.codec))

        # (b) latency, floor first and again after, interleaved halves to share drift
        commit_latency(j, 20)  # warm-up
        fl_a, floor_direct = floor_latency(fs, scratch, lat_n // 2)
        cl_a = commit_latency(j, lat_n // 2)
        fl_b, _ = floor_latency(fs, scratch, lat_n // 2)
        cl_b = commit_latency(j, lat_n // 2)
        fl, cl = fl_a + fl_b, cl_a + cl_b
        res["latency"] = {
            "n": len(cl),
            "floor_direct": floor_direct,
            "floor_p50_us": pct(fl, 50) * 1e6,
            "floor_p99_us": pct(fl, 99) * 1e6,
            "commit_p50_us": pct(cl, 50) * 1e6,
            "commit_p99_us": pct(cl, 99) * 1e6,
            "commit_mean_us": statistics.fmean(cl) * 1e6,
        }
        lat = res["latency"]
        lat["p50_ratio"] = lat["commit_p50_us"] / lat["floor_p50_us"]
        lat["p99_ratio"] = lat["commit_p99_us"] / lat["floor_p99_us"]

        # (c) throughput
        rows = []
        syncs0 = j.fsyncs
        for n in thread_counts:
            s0 = j.fsyncs
            jr = run_threads(n, seconds, journal_worker(j))
            syncs = j.fsyncs - s0
            row = {"threads": n, "journal_commits_s": jr, "journal_fdatasyncs_s": syncs / seconds}
            if not args.no_sqlite:
                db = os.path.join(scratch, f"sqlite_{n}.db")
                con = sqlite3.connect(db, isolation_level=None)
                con.execute("PRAGMA journal_mode=WAL")
                con.execute("CREATE TABLE t (k BLOB, v BLOB)")
                con.close()
                row["sqlite_commits_s"] = run_threads(n, seconds, sqlite_worker(db))
            rows.append(row)
        res["throughput"] = rows
        one = rows[0]["journal_commits_s"] if rows and rows[0]["threads"] == 1 else None
        for row in rows:
            row["journal_speedup"] = row["journal_commits_s"] / one if one else None
        res["journal_total_fdatasyncs"] = j.fsyncs - syncs0
        j.close()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    m = res["machine"]
    print(
        f"journal bench: {m['fstype']} at {m['mount']}, O_DIRECT journal={m['journal_direct']} "
        f"floor={res['latency']['floor_direct']}, codec {m['codec']}, {m['cpus']} cpus"
    )
    lat = res["latency"]
    print(f"(b) one committer, {lat['n']} commits of one 64-byte SET")
    print(f"    {'':<22}{'p50 us':>10}{'p99 us':>10}")
    print(f"    {'fdatasync floor':<22}{lat['floor_p50_us']:>10.0f}{lat['floor_p99_us']:>10.0f}")
    print(f"    {'journal commit':<22}{lat['commit_p50_us']:>10.0f}{lat['commit_p99_us']:>10.0f}")
    ok = "ok" if lat["p50_ratio"] <= 1.3 else "MISSED"
    print(f"    ratio p50 {lat['p50_ratio']:.2f} (goal <= 1.3: {ok}), p99 {lat['p99_ratio']:.2f}")
    print(f"(c) commits/s, {seconds:g} s per thread count")
    print(f"    {'threads':>7}{'journal':>12}{'x one':>8}{'syncs/s':>10}{'sqlite WAL':>12}")
    for row in res["throughput"]:
        sq = row.get("sqlite_commits_s")
        print(
            f"    {row['threads']:>7}{row['journal_commits_s']:>12.0f}"
            f"{(row['journal_speedup'] or 0):>8.1f}{row['journal_fdatasyncs_s']:>10.0f}"
            f"{(f'{sq:.0f}' if sq is not None else '-'):>12}"
        )
    r16 = next((r for r in res["throughput"] if r["threads"] == 16), None)
    if r16 and r16["journal_speedup"]:
        ok = "ok" if r16["journal_speedup"] >= 5 else "MISSED"
        print(f"    16 threads: {r16['journal_speedup']:.1f}x one thread (goal >= 5x: {ok})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
