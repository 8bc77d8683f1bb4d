"""What every benchmark prints beside its figures: where it ran, and percentiles.

Shared by the scripts in bench/ (each runs as `python bench/NAME.py`, so this
directory is on sys.path).
"""

from __future__ import annotations

import os
import platform
import sys
import time


def mount_of(path: str) -> tuple[str, str]:
    """(mount point, file system type) holding `path`, from /proc/mounts."""
    real = os.path.realpath(path)
    best = ("/", "unknown")
    try:
        with open("/proc/mounts") as f:
            for line in f:
                parts = line.split()
                mnt, fstype = parts[1], parts[2]
                inside = real == mnt or real.startswith(mnt.rstrip("/") + "/")
                if inside and len(mnt) >= len(best[0]):
                    best = (mnt, fstype)
    except OSError:  # no /proc: say "unknown" rather than fail the benchmark
        return best
    return best


def pct(xs: list[float], p: float) -> float:
    """The p-th percentile (nearest rank) of xs."""
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p / 100 * len(xs)))]


def overwrite_fdatasync_ns(
    fs,
    d: str,
    n: int,
    block_bytes: int,
    *,
    name: str = "floor.dat",
    size: int = 4 << 20,
    until=None,
) -> tuple[list[int], bool]:
    """The machine's durability floor: overwrite one block of a preallocated file and
    fdatasync it, n times (or, with `until` an Event, until it is set); nanoseconds
    each, and whether O_DIRECT was in use. Through the irisrep file seam `fs` with
    direct="optional", as the journals write."""
    f = fs.open(os.path.join(d, name), create=True, direct="optional")
    try:
        f.pwrite(0, bytes(size))
        f.fdatasync()
        block = b"f" * block_bytes
        out = []
        i = 0
        while (i < n) if until is None else not until.is_set():
            t0 = time.perf_counter_ns()
            f.pwrite((i * block_bytes) % size, block)
            f.fdatasync()
            out.append(time.perf_counter_ns() - t0)
            i += 1
        return out, bool(f.direct)
    finally:
        f.close()


def machine_info(scratch: str) -> dict:
    """Where a benchmark ran: Python, platform, CPUs, the scratch directory's file
    system, the irisrep it imported, the load before it started."""
    mnt, fstype = mount_of(scratch)
    irisrep = sys.modules.get("irisrep")
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "dir": scratch,
        "mount": mnt,
        "fstype": fstype,
        "irisrep": os.path.dirname(irisrep.__file__) if irisrep else None,
        "loadavg_before": os.getloadavg(),
    }
