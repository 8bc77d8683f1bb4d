"""Commit latency and throughput through the whole engine, beside the fdatasync floor.

One autocommitted `g[k] = v` (a 64-byte value) per commit: the change is applied,
journaled with its before-image, and the call returns after the group fdatasync.
Prints p50/p99 for one committer beside the floor measured in the same run
(overwrite one 4 KiB block of a preallocated file + fdatasync), and commits/s for
1, 4, 16 and 64 threads. `bench/bench_journal.py` measures the journal alone.

    python bench/bench_engine_commit.py [--commits 2000] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import threading
import time

from _machine import pct

import irisrep


def floor_us(path: str, n: int) -> list[float]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.pwrite(fd, b"\0" * (1 << 20), 0)
        os.fsync(fd)
        block = b"x" * 4096
        out = []
        for i in range(n):
            t0 = time.perf_counter()
            os.pwrite(fd, block, (i % 256) * 4096)
            os.fdatasync(fd)
            out.append((time.perf_counter() - t0) * 1e6)
        return out
    finally:
        os.close(fd)


def one_committer(db, n: int) -> list[float]:
    g = db.globals["bench"]
    value = "v" * 64
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        g[i] = value
        out.append((time.perf_counter() - t0) * 1e6)
    return out


def threaded(db, threads: int, seconds: float) -> float:
    g = db.globals["bench"]
    value = "v" * 64
    counts = [0] * threads
    stop = time.perf_counter() + seconds

    def run(t: int) -> None:
        i = 0
        while time.perf_counter() < stop:
            g[t, i] = value
            i += 1
        counts[t] = i

    ts = [threading.Thread(target=run, args=(t,)) for t in range(threads)]
    t0 = time.perf_counter()
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return sum(counts) / (time.perf_counter() - t0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--commits", type=int, default=2000)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--json", dest="json_path")
    args = ap.parse_args()
    root = tempfile.mkdtemp(prefix="bench-engine-", dir=".")
    fl = floor_us(os.path.join(root, "floor"), args.commits)
    with irisrep.open(os.path.join(root, "inst")) as db:
        lat = one_committer(db, args.commits)
        rates = {t: threaded(db, t, args.seconds) for t in (1, 4, 16, 64)}
    res = {
        "floor_p50_us": pct(fl, 50),
        "floor_p99_us": pct(fl, 99),
        "commit_p50_us": pct(lat, 50),
        "commit_p99_us": pct(lat, 99),
        "commit_mean_us": statistics.mean(lat),
        "commits_per_s": rates,
    }
    res["p50_ratio"] = res["commit_p50_us"] / res["floor_p50_us"]
    res["scale_16_over_1"] = rates[16] / rates[1]
    print(f"fdatasync floor: p50 {res['floor_p50_us']:.0f} us, p99 {res['floor_p99_us']:.0f} us")
    print(
        f"engine commit:   p50 {res['commit_p50_us']:.0f} us, p99 {res['commit_p99_us']:.0f} us"
        f"  (p50 {res['p50_ratio']:.2f}x the floor)"
    )
    for t, r in rates.items():
        print(f"  {t:>2} threads: {r:>9,.0f} commits/s  ({r / rates[1]:.1f}x one thread)")
    if args.json_path:
        with open(args.json_path, "w") as f:
            json.dump(res, f, indent=2)
    import shutil

    shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
