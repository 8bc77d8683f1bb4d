"""Backup and restore throughput beside the machine's sequential read and write floor.

One database of `--mb` MiB (keys with values half random, half text, so zstd has
something to do but not everything) is built in a scratch directory; then, for
`--repeat` rounds (medians printed):

- backup: `create_backup` of the open database (a write daemon running, a checkpoint
  just taken, outside the timing), full: the
  file read inside the backup window (O_DIRECT where the file system allows it),
  every block verified, hashed, compressed on worker threads and written, the
  journal frames after the checkpoint appended, fsync, rename. MB/s of database
  bytes. Then an incremental after changing ~1% of the keys (it reads everything
  and writes what changed).
- verify: `verify_backup` of the full backup file.
- restore: `restore(plan, integrity=False)` of the full backup into a new directory:
  blocks written and fdatasynced, checked against the manifest, the restored
  journal, the journal step (recovery on open rolls forward what came after the
  backup: the 1% change, then a checkpoint). MB/s of database bytes for the block
  phase and for the whole restore; the integrity walk (the restore's default last
  step) is timed on its own.
- floors, measured in the same run on the same file system: sequential read of the
  database file (4 MiB reads, O_DIRECT where available, as the backup reads it),
  and sequential write of as many bytes (4 MiB writes, then one fsync, as the
  backup writes its file).

    python bench/bench_backup.py [--mb 256] [--repeat 3] [--json out.json]

The scratch directory is made under the current directory (not /tmp, which may be
tmpfs).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import shutil
import statistics
import sys
import tempfile
import time

from _machine import machine_info

import irisrep
from irisrep.backup import create_backup, verify_backup
from irisrep.constants import BLOCK_SIZE
from irisrep.fileio import RealFS
from irisrep.integrity import check
from irisrep.restore import plan_restore, restore

CHUNK = 4 * 1024 * 1024


def build(path: str, mb: int, seed: int) -> int:
    """A database of about `mb` MiB; returns its key count."""
    rng = random.Random(seed)
    text = ("the quick brown fox jumps over the lazy dog " * 8).encode()
    target = mb * 1024 * 1024
    n = 0
    with irisrep.open(path, commit_mode="relaxed") as db:
        g = db.globals["bench"]
        while True:
            with db.transaction():
                for _ in range(5000):
                    g[n] = rng.randbytes(96).hex() + text[: rng.randint(100, 300)].decode()
                    n += 1
            if db.store.block_count * BLOCK_SIZE >= target:
                break
    return n


def read_floor(path: str) -> tuple[float, bool]:
    """Seconds to read `path` sequentially in 4 MiB reads (O_DIRECT where possible)."""
    f = RealFS().open(path, direct="optional")
    try:
        size = f.size()
        t0 = time.perf_counter()
        off = 0
        while off < size:
            data = f.pread(off, CHUNK)
            if not data:
                break
            off += len(data)
        return time.perf_counter() - t0, bool(f.direct)
    finally:
        f.close()


def write_floor(d: str, nbytes: int) -> float:
    """Seconds to write `nbytes` in 4 MiB writes to a new file, then fsync."""
    block = os.urandom(CHUNK)
    path = os.path.join(d, "floor-write.bin")
    t0 = time.perf_counter()
    with open(path, "wb", buffering=0) as f:
        left = nbytes
        while left > 0:
            f.write(block if left >= CHUNK else block[:left])
            left -= CHUNK
        os.fsync(f.fileno())
    dt = time.perf_counter() - t0
    os.remove(path)
    return dt


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, default=256, help="database size in MiB")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--dir", default=".", help="where the scratch directory goes")
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args(argv)
    logging.getLogger("irisrep").setLevel(logging.ERROR)  # recovery's notes on each restore

    root = tempfile.mkdtemp(prefix="bench-backup-", dir=args.dir)
    info = machine_info(root)
    if info["fstype"] in ("tmpfs", "ramfs"):
        print(f"warning: {root} is on {info['fstype']}: no disk underneath", file=sys.stderr)
    src = os.path.join(root, "src")
    t0 = time.perf_counter()
    keys = build(src, args.mb, args.seed)
    build_s = time.perf_counter() - t0
    rng = random.Random(args.seed + 1)
    rounds: list[dict] = []
    try:
        db = irisrep.open(src)
        try:
            db_bytes = db.store.block_count * BLOCK_SIZE
            for k in range(args.repeat):
                r: dict = {}
                out = os.path.join(root, f"out{k}")
                # Floors first, on the same file and file system, in the same run.
                r["read_floor_s"], r["direct_io"] = read_floor(db.file_path)
                r["write_floor_s"] = write_floor(root, db_bytes)
                db.flush()  # the checkpoint is not the backup's time: taken before
                t = time.perf_counter()
                full = create_backup(db, out)
                r["backup_s"] = time.perf_counter() - t
                r["backup_file_bytes"] = full.file_bytes
                with db.transaction():
                    g = db.globals["bench"]
                    for _ in range(max(1, keys // 100)):
                        g[rng.randrange(keys)] = "changed"
                db.flush()
                t = time.perf_counter()
                inc = create_backup(db, out, incremental=True)
                r["incremental_s"] = time.perf_counter() - t
                r["incremental_blocks"] = inc.blocks_stored
                t = time.perf_counter()
                verify_backup(full.path)
                r["verify_s"] = time.perf_counter() - t
                target = os.path.join(root, f"restored{k}")
                t = time.perf_counter()
                rep = restore(plan_restore([full.path], target), integrity=False)
                r["restore_s"] = time.perf_counter() - t
                r["restore_blocks_s"] = rep["blocks_seconds"]
                r["restore_applied_records"] = rep["applied_records"]
                t = time.perf_counter()
                assert all(x.ok for x in check(target))
                r["integrity_s"] = time.perf_counter() - t
                rounds.append(r)
                shutil.rmtree(out, ignore_errors=True)
                shutil.rmtree(target, ignore_errors=True)
        finally:
            db.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)

    def med(key: str) -> float:
        return statistics.median(r[key] for r in rounds)

    mb = db_bytes / 1e6

    def rate(key: str) -> float:
        return mb / med(key)

    res = {
        "machine": info,
        "database_bytes": db_bytes,
        "keys": keys,
        "build_s": build_s,
        "direct_io": rounds[0]["direct_io"],
        "backup_file_bytes": rounds[0]["backup_file_bytes"],
        "compression_ratio": rounds[0]["backup_file_bytes"] / db_bytes,
        "floor_read_mb_s": rate("read_floor_s"),
        "floor_write_mb_s": rate("write_floor_s"),
        "backup_full_mb_s": rate("backup_s"),
        "backup_incremental_mb_s": rate("incremental_s"),
        "incremental_blocks": rounds[0]["incremental_blocks"],
        "verify_mb_s": rate("verify_s"),
        "restore_blocks_mb_s": rate("restore_blocks_s"),
        "restore_total_mb_s": rate("restore_s"),
        "integrity_walk_mb_s": rate("integrity_s"),
        "rounds": rounds,
    }
    print(
        f"backup/restore of a {mb:.0f} MB database ({keys} keys) on {info['mount']} "
        f"({info['fstype']}), O_DIRECT {'on' if res['direct_io'] else 'off'}; median of "
        f"{args.repeat}; MB = 10^6 bytes of database"
    )
    print(f"  floor: sequential read  {res['floor_read_mb_s']:8.0f} MB/s (the database file)")
    print(f"  floor: sequential write {res['floor_write_mb_s']:8.0f} MB/s (then fsync)")
    print(
        f"  backup full             {res['backup_full_mb_s']:8.0f} MB/s "
        f"(file {res['compression_ratio']:.2f} x the database, zstd)"
    )
    print(
        f"  backup incremental      {res['backup_incremental_mb_s']:8.0f} MB/s "
        f"({res['incremental_blocks']} blocks changed: reads all, writes those)"
    )
    print(f"  verify                  {res['verify_mb_s']:8.0f} MB/s")
    print(f"  restore, blocks         {res['restore_blocks_mb_s']:8.0f} MB/s (write, fdatasync)")
    print(
        f"  restore, total          {res['restore_total_mb_s']:8.0f} MB/s (+ the journal: "
        f"{rounds[0]['restore_applied_records']} records after the backup rolled forward, "
        f"a checkpoint)"
    )
    print(
        f"  integrity walk          {res['integrity_walk_mb_s']:8.0f} MB/s (optional after a "
        f"restore: irisrep.integrity, blocks in tree order)"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
