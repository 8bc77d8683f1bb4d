"""What every benchmark prints beside its figures: where it ran, and percentiles.

Shared by the scripts in bench/ (each runs as `python bench/NAME.py`, so this
directory is on sys.path).
"""

from __future__ import annotations

import os


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
