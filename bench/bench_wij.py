"""Write image journal: the time of one cycle beside the machine's floor for its bytes.

For N dirty blocks (1,000 and 10,000) spread over a database file, one run measures:
- cycle: `WriteImageJournal.cycle()` on real files (RealFS, O_DIRECT where the file
  system allows it), exactly as the write daemon runs it: input check, directory +
  images to the WIJ (copy, entry checksums and writes in one pass, _core._wj_write_images),
  fdatasync, ACTIVE header, fdatasync, blocks into the database
  (BlockStore.write_images -> _core._wj_write_runs), fdatasync, EMPTY header,
  fdatasync. All of its Python and C work is included.
- floor: the same bytes with nothing else: one sequential write of the N blocks to
  a scratch "wij" file, the N blocks written to a scratch "db" file at the same
  offsets (one pwrite per run of consecutive blocks, no run limit), and four
  fdatasyncs in the cycle's order (wij, wij, db, wij).
Both files of each pair are pre-allocated (the database files are filled first, and
one unmeasured warm-up cycle / floor sizes the WIJ files), so both measure
overwrites. Median of `--repeat` runs (default 5) of each, interleaved; the goal
is cycle <= 1.3 x floor for every size and layout (the exit status stays 0).

Layouts: "spread" (random runs of 1-64 blocks with gaps, over 4N blocks: what a
write daemon sees after scattered updates) and "contiguous" (blocks 1..N).

    python bench/bench_wij.py [--sizes 1000,10000] [--repeat 5] [--json out.json]

The scratch directory is made under the current directory (not /tmp, which may be
tmpfs, where O_DIRECT is refused and fdatasync costs nothing).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time

from _machine import mount_of

from irisrep import _core
from irisrep.blockstore import BlockStore
from irisrep.constants import BLOCK_SIZE, BT_LEAF, IO_CALL_BYTES_MAX, WRITE_RUN_BLOCKS_MAX
from irisrep.fileio import RealFS
from irisrep.wij import WIJ_FILE_NAME, WIJ_WRITE_CHUNK_BYTES, WriteImageJournal

DB_ID = 4242
CHUNK = min(WIJ_WRITE_CHUNK_BYTES, IO_CALL_BYTES_MAX)
GOAL_RATIO = 1.3


def dirty_blocks(n: int, layout: str, rng: random.Random) -> list[int]:
    if layout == "contiguous":
        return list(range(1, n + 1))
    out: list[int] = []
    b = 1
    while len(out) < n:
        b += rng.randint(0, 96)  # gap
        run = min(rng.randint(1, 64), n - len(out))
        out.extend(range(b, b + run))
        b += run
    return out


def runs(blocks: list[int], limit: int | None = None) -> list[tuple[int, int]]:
    """(first block, count) per run of consecutive blocks (at most `limit` each)."""
    out: list[tuple[int, int]] = []
    for b in blocks:
        if out and out[-1][0] + out[-1][1] == b and (limit is None or out[-1][1] < limit):
            out[-1] = (out[-1][0], out[-1][1] + 1)
        else:
            out.append((b, 1))
    return out


def sealed(block_no: int, rng: random.Random) -> bytes:
    return _core.seal_image(rng.randbytes(4000), block_no, DB_ID, BT_LEAF, count=1)


def prefill(f, nblocks: int) -> None:
    chunk = 1024
    zero = bytes(chunk * BLOCK_SIZE)
    for first in range(0, nblocks, chunk):
        count = min(chunk, nblocks - first)
        f.pwrite(first * BLOCK_SIZE, zero[: count * BLOCK_SIZE])
    f.fdatasync()


def write_all(f, offset: int, data: memoryview) -> None:
    # 8 MiB per call: the fastest size measured here (see WIJ_WRITE_CHUNK_BYTES).
    for pos in range(0, len(data), CHUNK):
        f.pwrite(offset + pos, data[pos : pos + CHUNK])


def floor_once(wf, df, blob: bytes, layout_runs, pos_of) -> float:
    view = memoryview(blob)
    t0 = time.perf_counter()
    write_all(wf, 0, view)
    wf.fdatasync()
    wf.fdatasync()
    for first, count in layout_runs:
        i = pos_of[first]
        write_all(df, first * BLOCK_SIZE, view[i * BLOCK_SIZE : (i + count) * BLOCK_SIZE])
    df.fdatasync()
    wf.fdatasync()
    return time.perf_counter() - t0


def bench_one(root: str, n: int, layout: str, repeat: int, seed: int) -> dict:
    rng = random.Random(seed)
    fs = RealFS()
    d = tempfile.mkdtemp(prefix=f"wij-{layout}-{n}-", dir=root)
    blocks = dirty_blocks(n, layout, rng)
    total = blocks[-1] + 1
    images = [(DB_ID, b, sealed(b, rng)) for b in blocks]

    store = BlockStore(fs, os.path.join(d, "DB.dat"), create=True)
    store.db_id = DB_ID
    prefill(store.file, total)
    wij = WriteImageJournal(fs, os.path.join(d, WIJ_FILE_NAME))
    wij.mark_running()
    stores = {DB_ID: store}

    wf = fs.open(os.path.join(d, "floor.wij"), create=True)
    df = fs.open(os.path.join(d, "floor.db"), create=True)
    prefill(df, total)
    blob = b"".join(img for _, _, img in images)
    pos_of = {b: i for i, b in enumerate(blocks)}
    layout_runs = runs(blocks)

    # Warm-up (not measured): sizes both WIJ files, so every measured write overwrites.
    wij.cycle(stores, images, checkpoint=0)
    floor_once(wf, df, blob, layout_runs, pos_of)

    times: dict[str, list[float]] = {"cycle": [], "floor": []}
    for k in range(repeat):
        # Alternate which goes first so that neither always meets a busier disk.
        for what in ("cycle", "floor") if k % 2 == 0 else ("floor", "cycle"):
            if what == "floor":
                times["floor"].append(floor_once(wf, df, blob, layout_runs, pos_of))
                continue
            t0 = time.perf_counter()
            wij.cycle(stores, images, checkpoint=k + 1)
            times["cycle"].append(time.perf_counter() - t0)
    direct = bool(wij.file.direct)
    wij.mark_clean()
    wij.close()
    store.close()
    wf.close()
    df.close()
    shutil.rmtree(d, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "blocks": n,
        "layout": layout,
        "bytes": n * BLOCK_SIZE,
        "db_runs": len(layout_runs),
        "db_pwrites_cycle": len(runs(blocks, WRITE_RUN_BLOCKS_MAX)),
        "direct_io": direct,
        "cycle_median_s": med["cycle"],
        "floor_median_s": med["floor"],
        "ratio": med["cycle"] / med["floor"],
        "cycle_s": times["cycle"],
        "floor_s": times["floor"],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1000,10000")
    ap.add_argument("--layouts", default="spread,contiguous")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--dir", default=".", help="where the scratch directory goes")
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args(argv)

    root = tempfile.mkdtemp(prefix="bench-wij-", dir=args.dir)
    mnt, fstype = mount_of(root)
    if fstype in ("tmpfs", "ramfs"):
        print(f"warning: {root} is on {fstype}: fdatasync is free there", file=sys.stderr)
    results = []
    try:
        for layout in args.layouts.split(","):
            for n in (int(s) for s in args.sizes.split(",")):
                results.append(bench_one(root, n, layout, args.repeat, args.seed))
    finally:
        shutil.rmtree(root, ignore_errors=True)

    print(f"WIJ cycle vs floor on {mnt} ({fstype}); median of {args.repeat}")
    print("  floor: the same bytes: one sequential WIJ write, the runs into the db, 4 fdatasyncs")
    print("  cycle: WriteImageJournal.cycle() with a BlockStore, as the write daemon runs it")
    print(
        f"{'layout':<11}{'blocks':>7}{'MiB':>7}{'runs':>6}{'direct':>7}{'floor ms':>10}"
        f"{'cycle ms':>10}{'ratio':>7}"
    )
    for r in results:
        print(
            f"{r['layout']:<11}{r['blocks']:>7}{r['bytes'] / 2**20:>7.1f}{r['db_runs']:>6}"
            f"{'yes' if r['direct_io'] else 'no':>7}{r['floor_median_s'] * 1e3:>10.2f}"
            f"{r['cycle_median_s'] * 1e3:>10.2f}{r['ratio']:>7.2f}"
        )
    worst = max(r["ratio"] for r in results)
    met = worst <= GOAL_RATIO
    print(f"worst ratio: {worst:.2f} (goal <= {GOAL_RATIO:.2f}): {'met' if met else 'NOT met'}")
    if args.json:
        out = {
            "benchmark": "wij_cycle",
            "mount": mnt,
            "fstype": fstype,
            "python": sys.version.split()[0],
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
            "repeat": args.repeat,
            "goal_ratio": GOAL_RATIO,
            "worst_ratio": worst,
            "goal_met": met,
            "results": results,
        }
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
