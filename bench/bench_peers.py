"""irisrep beside PostgreSQL and Redis: commit latency, throughput, failover, catch-up.

One workload against every system, each a primary with one synchronous copy started
here on 127.0.0.1 (bench/peers/: irisrep-durable, irisrep-received, postgres-on,
postgres-remote_write, redis); each client is its own TCP connection in its own
worker (a forked process by default, or a thread: --client-mode), the same for every
system:

- `one`: one node written with a 64-byte value per commit;
- `tx10`: a transaction of 10 such nodes, each statement its own round trip.

For each system, workload and client count (--clients) the clients commit for
--seconds; every commit's latency goes into an HDR histogram (the `hdrhistogram`
package; numpy percentiles over all samples when it is missing, said so) giving p50,
p99 and p99.9, and commits/s is the sum of each client's rate. The whole set is
repeated --repeat times (systems interleaved, each started afresh every repeat);
the medians over repeats are reported. "embedded" (the primary in this process,
`irisrep.Member`, clients as threads, ack durable) is measured and reported apart.

Also: failover (irisrep: bench/bench_failover.py's crash runs, SIGKILL of the primary
to the first write on the new one; PostgreSQL: `pg_ctl stop -m immediate` of the
primary then `pg_ctl promote` of the standby at once, to the first write on it) and
catch-up (a copy stopped while --catchup-bytes of journal / WAL are written, then
started: time until it is the Active backup / has flushed and replayed it all).

Floors measured in the same run (half before, half after, via bench/_machine.py and
bench_commit.py): fdatasync of one 8 KiB overwrite in the scratch directory and a
64-byte round trip over loopback TCP to another process. Recorded: the machine, the
scratch directory's file system, every system's version.

Output: a table (rich), --json FILE, --plot FILE.png (latency and throughput against
clients per workload, floors as horizontal lines). Goals (issue 9): irisrep-durable's
1-client p50 at most half of each synchronous peer's (postgres-on, redis) and its
16-client commits/s at least twice theirs, in the same run.

    python bench/bench_peers.py [--clients 1,4,16,64] [--seconds 2] [--repeat 3]
        [--systems irisrep-durable,irisrep-received,postgres-on,postgres-remote_write,redis]
        [--workloads one,tx10] [--no-embedded] [--failover-runs 5] [--catchup-bytes 1G]
        [--client-mode processes|threads] [--install-peers] [--json F] [--plot F.png]
        [--smoke] [--dir PARENT] [--keep]

`irisrep bench` runs this. A peer that is not installed is skipped with the reason
(`--install-peers` runs `apt-get install -y postgresql redis-server` first, as root).
The scratch directory bench_peers_tmp* is made under --dir (default: the current
directory, not /tmp, which may be tmpfs) and removed at the end unless --keep. Every
process started is stopped by pid at the end, also on an error, SIGTERM or Ctrl-C.
Exit status 1 if a measurement failed (a skipped peer is not a failure).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from array import array
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

from _machine import machine_info  # noqa: E402
from bench_commit import Children, fdatasync_floor, rtt_floor  # noqa: E402
from peers import Unavailable  # noqa: E402
from peers import irisrep as p_iris  # noqa: E402
from peers import postgres as p_pg  # noqa: E402
from peers import redis as p_redis  # noqa: E402

SYSTEMS = ("irisrep-durable", "irisrep-received", "postgres-on", "postgres-remote_write", "redis")
WORKLOADS = ("one", "tx10")
CLIENTS = (1, 4, 16, 64)
GOAL_P50_RATIO = 0.5  # irisrep 1-client p50 / a peer's
GOAL_TPUT_RATIO = 2.0  # irisrep 16-client commits/s / a peer's
GOAL_PEERS = ("postgres-on", "redis")  # the peers with a synchronous, durable copy
WARMUP = 20
BARRIER_TIMEOUT_S = 300.0

try:
    from hdrh.histogram import HdrHistogram
except ImportError:  # numpy percentiles over every sample instead (said in the output)
    HdrHistogram = None


def make_system(name: str):
    if name == "irisrep-durable":
        return p_iris.Deployed(name, "durable")
    if name == "irisrep-received":
        return p_iris.Deployed(name, "received")
    if name.startswith("postgres-"):
        return p_pg.Postgres(name, name.split("-", 1)[1])
    if name == "redis":
        return p_redis.Redis(name)
    raise ValueError(name)


def why_missing(name: str) -> str | None:
    if name.startswith("postgres-"):
        return p_pg.available()
    if name == "redis":
        return p_redis.available()
    return None


def install_peers(log) -> list[str]:
    """apt-get install what is missing of postgresql and redis-server; messages."""
    want = []
    if p_pg.bindir() is None:
        want.append("postgresql")
    if shutil.which("redis-server") is None:
        want.append("redis-server")
    if not want:
        return ["--install-peers: postgresql and redis-server are installed already"]
    if os.geteuid() != 0:
        return [f"--install-peers: not root, cannot apt-get install {' '.join(want)}"]
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    cmd = ["apt-get", "install", "-y", *want]
    log(f"running: {' '.join(cmd)}")
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode != 0:  # an old package list: update once, then again
        subprocess.run(["apt-get", "update"], capture_output=True, env=env)
        p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    msg = f"--install-peers: apt-get install {' '.join(want)} exited {p.returncode}"
    return [msg + ("" if p.returncode == 0 else f": {p.stderr.strip()[-400:]}")]


# --- the clients ------------------------------------------------------------------------


def client_body(system, workload: str, cid: int, seconds: float, barrier, send) -> None:
    """One client: connect, warm up, wait for the others, commit for `seconds`;
    send ("ok", latencies ns as bytes, elapsed ns) or ("error", text)."""
    try:
        c = system.client(cid)
        op = c.write if workload == "one" else c.tx
        for k in range(WARMUP):
            op(-1 - k)
        barrier.wait(BARRIER_TIMEOUT_S)
        lat = array("q")
        t_start = time.perf_counter_ns()
        t_end = t_start + int(seconds * 1e9)
        i = 0
        t1 = t_start
        while t1 < t_end:
            t0 = time.perf_counter_ns()
            op(i)
            t1 = time.perf_counter_ns()
            lat.append(t1 - t0)
            i += 1
        c.close()
        send(("ok", lat.tobytes(), t1 - t_start))
    except BaseException as e:  # noqa: BLE001 - the parent reports it
        with _suppress():
            barrier.abort()
        send(("error", f"client {cid}: {type(e).__name__}: {e}"))


class _suppress:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return True


def _proc_main(system, workload, cid, seconds, barrier, conn) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us
    client_body(system, workload, cid, seconds, barrier, conn.send)
    conn.close()


def run_point(system, workload: str, clients: int, seconds: float, mode: str, first_cid: int):
    """`clients` clients of `system` for `seconds`: latencies (ns array), commits/s."""
    results: list = []
    if mode == "threads" or getattr(system, "threads_only", False):
        barrier = threading.Barrier(clients + 1)
        lock = threading.Lock()

        def send(msg):
            with lock:
                results.append(msg)

        ths = [
            threading.Thread(
                target=client_body,
                args=(system, workload, first_cid + k, seconds, barrier, send),
                daemon=True,
            )
            for k in range(clients)
        ]
        for t in ths:
            t.start()
        # A client that failed to start breaks the barrier; its error is in its
        # result, reported below, so the others are just let go.
        with contextlib.suppress(threading.BrokenBarrierError):
            barrier.wait(BARRIER_TIMEOUT_S)
        for t in ths:
            t.join(BARRIER_TIMEOUT_S + seconds + 60)
    else:
        ctx = multiprocessing.get_context("fork")
        barrier = ctx.Barrier(clients + 1)
        procs, pipes = [], []
        try:
            for k in range(clients):
                r, w = ctx.Pipe(duplex=False)
                p = ctx.Process(
                    target=_proc_main,
                    args=(system, workload, first_cid + k, seconds, barrier, w),
                    daemon=True,
                )
                p.start()
                w.close()
                procs.append(p)
                pipes.append(r)
            with contextlib.suppress(threading.BrokenBarrierError):  # as above
                barrier.wait(BARRIER_TIMEOUT_S)
            deadline = time.monotonic() + BARRIER_TIMEOUT_S + seconds + 60
            for r in pipes:
                if r.poll(max(0.1, deadline - time.monotonic())):
                    try:
                        results.append(r.recv())
                    except EOFError:
                        results.append(("error", "a client process ended without a result"))
                else:
                    results.append(("error", "a client process did not answer in time"))
        finally:
            for p in procs:
                p.join(5)
                if p.is_alive():
                    p.kill()
                    p.join(5)
            for r in pipes:
                r.close()
    errs = [m[1] for m in results if m[0] == "error"]
    if errs or len(results) < clients:
        raise RuntimeError("; ".join(errs[:3]) or f"{clients - len(results)} clients gave nothing")
    lat = np.concatenate([np.frombuffer(m[1], dtype=np.int64) for m in results])
    rate = sum(len(m[1]) // 8 / (m[2] / 1e9) for m in results)
    return lat, rate


def percentiles(lat_ns: np.ndarray) -> dict:
    """p50, p99, p99.9 in µs: from an HDR histogram (3 significant digits) when the
    hdrhistogram package is there, else numpy over every sample."""
    if HdrHistogram is not None:
        h = HdrHistogram(1, 120_000_000_000, 3)
        for v in lat_ns.tolist():
            h.record_value(max(1, v))
        got = {q: h.get_value_at_percentile(q) / 1e3 for q in (50, 99, 99.9)}
    else:
        got = dict(
            zip((50, 99, 99.9), (np.percentile(lat_ns, [50, 99, 99.9]) / 1e3).tolist(), strict=True)
        )
    return {
        "n": int(lat_ns.size),
        "p50_us": float(got[50]),
        "p99_us": float(got[99]),
        "p99.9_us": float(got[99.9]),
        "mean_us": float(lat_ns.mean() / 1e3),
    }


# --- the run --------------------------------------------------------------------------------


def run_system(system, scratch: Path, args, log) -> dict:
    """Start `system`, measure every workload and client count, stop it."""
    out: dict = {"points": []}
    t0 = time.monotonic()
    try:
        system.start(scratch)
        out["start_s"] = time.monotonic() - t0
        cid = 1
        for wl in args.workloads:
            for n in args.clients:
                lat, rate = run_point(system, wl, n, args.seconds, args.client_mode, cid)
                cid += n
                pt = {"workload": wl, "clients": n, "commits_s": rate, **percentiles(lat)}
                out["points"].append(pt)
                log(
                    f"  {system.name:<22} {wl:<5} {n:>3} clients: p50 {pt['p50_us']:8.0f} µs"
                    f"  p99 {pt['p99_us']:8.0f} µs  {rate:9.0f} commits/s"
                )
    except Unavailable as e:
        out["skipped"] = str(e)
    except Exception as e:  # noqa: BLE001 - reported, the others go on
        out["error"] = f"{type(e).__name__}: {e}"
        out["traceback"] = traceback.format_exc()
        log(f"  {system.name}: FAILED: {out['error']}")
    finally:
        try:
            system.stop()
        except Exception as e:  # noqa: BLE001
            out.setdefault("error", f"stopping: {type(e).__name__}: {e}")
    return out


def medians(runs: list[dict]) -> list[dict]:
    """Per (workload, clients): the median over repeats of each figure."""
    by: dict = {}
    for r in runs:
        for pt in r.get("points", []):
            by.setdefault((pt["workload"], pt["clients"]), []).append(pt)
    out = []
    for (wl, n), pts in sorted(by.items(), key=lambda kv: (WORKLOADS.index(kv[0][0]), kv[0][1])):
        row = {"workload": wl, "clients": n, "repeats": len(pts)}
        for k in ("p50_us", "p99_us", "p99.9_us", "commits_s"):
            row[k] = float(np.median([p[k] for p in pts]))
        out.append(row)
    return out


def point(res: dict, system: str, wl: str, n: int) -> dict | None:
    for row in res["systems"].get(system, {}).get("median", []):
        if row["workload"] == wl and row["clients"] == n:
            return row
    return None


def goals(res: dict) -> list[dict]:
    """irisrep-durable against each synchronous peer (and irisrep-received against
    postgres-remote_write, for information), the `one` workload."""
    out = []
    pairs = [("irisrep-durable", p) for p in GOAL_PEERS]
    pairs.append(("irisrep-received", "postgres-remote_write"))
    for ours, peer in pairs:
        a1, b1 = point(res, ours, "one", 1), point(res, peer, "one", 1)
        a16, b16 = point(res, ours, "one", 16), point(res, peer, "one", 16)
        g: dict = {"irisrep": ours, "peer": peer, "counts": peer in GOAL_PEERS}
        if a1 and b1:
            g["p50_ratio"] = a1["p50_us"] / b1["p50_us"]
            g["p50_ok"] = g["p50_ratio"] <= GOAL_P50_RATIO
        if a16 and b16:
            g["tput16_ratio"] = a16["commits_s"] / b16["commits_s"]
            g["tput16_ok"] = g["tput16_ratio"] >= GOAL_TPUT_RATIO
        if len(g) > 3:
            out.append(g)
    return out


def measure_floors(scratch: Path, children, n: int) -> tuple[list[int], list[int], bool]:
    fs, direct = fdatasync_floor(str(scratch), n)
    return fs, rtt_floor(children, n), direct


def floor_summary(ns: list[int]) -> dict:
    a = np.asarray(ns, dtype=np.float64) / 1e3
    return {
        "n": len(ns),
        "p50_us": float(np.percentile(a, 50)),
        "p99_us": float(np.percentile(a, 99)),
    }


def parse_bytes(s: str) -> int:
    m = re.fullmatch(r"\s*([0-9.]+)\s*([kKmMgG]?)i?[bB]?\s*", s)
    if not m:
        raise ValueError(f"not a size: {s!r} (e.g. 1G, 64M, 1048576)")
    mult = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[m.group(2).lower()]
    return int(float(m.group(1)) * mult)


def git_commit() -> str | None:
    try:
        p = subprocess.run(
            ["git", "-C", str(BENCH.parent), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        return p.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


# --- output ---------------------------------------------------------------------------------


def report(res: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    con = Console()
    m, fl, a = res["machine"], res.get("floors", {}), res["args"]
    con.print(
        f"[bold]irisrep bench[/]: {m['cpus']} cpus, {m['fstype']} at {m['mount']}, "
        f"python {m['python']}, load {m['loadavg_before'][0]:.2f} before, "
        f"{m.get('loadavg_after', [0])[0]:.2f} after; {a['repeat']} repeat(s) of "
        f"{a['seconds']:g} s per point, medians; clients as {a['client_mode']}; "
        f"percentiles from {res['percentiles_from']}",
        highlight=False,
    )
    con.print(
        "versions: " + ", ".join(f"{k} {v}" for k, v in res["versions"].items()), highlight=False
    )
    if fl:
        con.print(
            f"floors: fdatasync 8 KiB p50 {fl['fdatasync']['p50_us']:.0f} µs "
            f"(p99 {fl['fdatasync']['p99_us']:.0f}), loopback round trip p50 "
            f"{fl['rtt']['p50_us']:.0f} µs (p99 {fl['rtt']['p99_us']:.0f}); sum "
            f"{fl['fdatasync']['p50_us'] + fl['rtt']['p50_us']:.0f} µs",
            highlight=False,
        )
    for msg in res.get("messages", []):
        con.print(f"note: {msg}", highlight=False, markup=False)
    t = Table(title="commit latency (µs) and commits/s, median of repeats")
    for col in ("system", "workload", "clients", "p50", "p99", "p99.9", "commits/s"):
        t.add_column(col, justify="left" if col in ("system", "workload") else "right")
    names = [s for s in res["systems"]]
    for name in names:
        s = res["systems"][name]
        if s.get("skipped"):
            t.add_row(name, "-", "-", "skipped", "", "", s["skipped"][:60])
            continue
        for row in s.get("median", []):
            t.add_row(
                name,
                row["workload"],
                str(row["clients"]),
                f"{row['p50_us']:,.0f}",
                f"{row['p99_us']:,.0f}",
                f"{row['p99.9_us']:,.0f}",
                f"{row['commits_s']:,.0f}",
            )
        for e in s.get("errors", []):
            t.add_row(name, "-", "-", "FAILED", "", "", e[:80])
        t.add_section()
    con.print(t)
    for g in res.get("goals", []):
        parts = []
        if "p50_ratio" in g:
            parts.append(
                f"1-client p50 {g['p50_ratio']:.2f}x theirs (goal <= {GOAL_P50_RATIO}x: "
                f"{'met' if g['p50_ok'] else 'NOT met'})"
            )
        if "tput16_ratio" in g:
            parts.append(
                f"16-client commits/s {g['tput16_ratio']:.2f}x theirs (goal >= "
                f"{GOAL_TPUT_RATIO:g}x: {'met' if g['tput16_ok'] else 'NOT met'})"
            )
        tag = "" if g["counts"] else " (for information)"
        con.print(f"goal {g['irisrep']} vs {g['peer']}{tag}: " + "; ".join(parts), highlight=False)
    fo = res.get("failover", {})
    if fo:
        ir = fo.get("irisrep", {})
        s = ir.get("crash_takeover_s", {})
        if s.get("n"):
            con.print(
                f"failover irisrep (SIGKILL primary -> first write on new, QoS {ir.get('qos_ms')} ms): "
                f"p50 {s['p50'] * 1e3:.0f} ms, max {s['max'] * 1e3:.0f} ms over {s['n']} runs",
                highlight=False,
            )
        elif ir:
            con.print(f"failover irisrep: {ir.get('error', 'no run')}", highlight=False)
        pg = fo.get("postgres", {})
        if pg.get("n"):
            con.print(
                f"failover postgres (pg_ctl stop -m immediate + pg_ctl promote -> first write): "
                f"p50 {pg['p50_s'] * 1e3:.0f} ms, max {pg['max_s'] * 1e3:.0f} ms over {pg['n']} runs "
                f"(stop {pg['stop_p50_s'] * 1e3:.0f} ms, promote {pg['promote_p50_s'] * 1e3:.0f} ms p50)",
                highlight=False,
            )
        elif pg.get("skipped") or pg.get("errors"):
            con.print(
                f"failover postgres: {pg.get('skipped') or pg.get('errors')}", highlight=False
            )
    cu = res.get("catchup", {})
    if cu:
        ir, pg = cu.get("irisrep", {}), cu.get("postgres", {})
        if "active_s" in ir:
            con.print(
                f"catch-up irisrep: {ir['journal_bytes'] / 1e6:.0f} MB of journal, B started -> "
                f"Active in {ir['active_s']:.2f} s ({ir['active_mb_s']:.0f} MB/s)",
                highlight=False,
            )
        elif ir:
            con.print(f"catch-up irisrep: {ir.get('error')}", highlight=False)
        if "replayed_s" in pg:
            con.print(
                f"catch-up postgres: {pg['wal_bytes'] / 1e6:.0f} MB of WAL, standby started -> "
                f"flushed {pg['received_s']:.2f} s ({pg['received_mb_s']:.0f} MB/s), replayed "
                f"{pg['replayed_s']:.2f} s ({pg['replayed_mb_s']:.0f} MB/s)",
                highlight=False,
            )
        elif pg:
            con.print(f"catch-up postgres: {pg.get('skipped') or pg.get('error')}", highlight=False)
    if res.get("json"):
        con.print(f"json: {res['json']}", highlight=False)
    if res.get("plot"):
        con.print(f"plot: {res['plot']}", highlight=False)


def plot(res: dict, path: str) -> None:
    """Latency (p50, p99 dashed) and commits/s against clients, one column per
    workload; the floors as horizontal lines on the latency panels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    wls = [w for w in WORKLOADS if w in res["args"]["workloads"]]
    fig, axes = plt.subplots(2, len(wls), figsize=(6.5 * len(wls), 8.5), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    fl = res.get("floors", {})
    for j, wl in enumerate(wls):
        al, at = axes[0][j], axes[1][j]
        for k, (name, s) in enumerate(res["systems"].items()):
            rows = [r for r in s.get("median", []) if r["workload"] == wl]
            if not rows:
                continue
            x = [r["clients"] for r in rows]
            c = colors[k % len(colors)]
            al.plot(x, [r["p50_us"] for r in rows], "o-", color=c, label=f"{name} p50")
            al.plot(x, [r["p99_us"] for r in rows], "x--", color=c, alpha=0.5, label=f"{name} p99")
            at.plot(x, [r["commits_s"] for r in rows], "o-", color=c, label=name)
        if fl:
            f, r = fl["fdatasync"]["p50_us"], fl["rtt"]["p50_us"]
            for y, lbl, ls in (
                (f, f"fdatasync 8 KiB p50 {f:.0f} µs", ":"),
                (r, f"loopback round trip p50 {r:.0f} µs", "-."),
                (f + r, f"sum {f + r:.0f} µs", "--"),
            ):
                al.axhline(y, color="grey", linestyle=ls, linewidth=1)
                al.annotate(lbl, (0.01, y), xycoords=("axes fraction", "data"), fontsize=7,
                            color="grey", va="bottom")  # fmt: skip
        what = "one 64-byte node per commit" if wl == "one" else "10-node transactions"
        al.set_title(f"latency: {what}")
        at.set_title(f"throughput: {what}")
        for ax in (al, at):
            ax.set_xscale("log", base=2)
            ax.set_xlabel("clients (one TCP connection each; embedded: threads)")
            ax.grid(True, which="both", alpha=0.3)
        al.set_yscale("log")
        al.set_ylabel("µs per commit")
        at.set_ylabel("commits/s" if wl == "one" else "transactions/s")
        al.legend(fontsize=6, ncol=2)
        at.legend(fontsize=7)
    m = res["machine"]
    fig.suptitle(
        f"irisrep bench: {m['cpus']} cpus (shared), {m['fstype']}, 127.0.0.1, "
        f"median of {res['args']['repeat']} x {res['args']['seconds']:g} s",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- main -----------------------------------------------------------------------------------


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clients", default=",".join(map(str, CLIENTS)), help="e.g. 1,4,16,64")
    ap.add_argument("--seconds", type=float, default=2.0, help="per point")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--systems", default=",".join(SYSTEMS), help=f"subset of {','.join(SYSTEMS)}")
    ap.add_argument("--workloads", default=",".join(WORKLOADS), help="one,tx10 or one of them")
    ap.add_argument("--no-embedded", dest="embedded", action="store_false")
    ap.add_argument("--failover-runs", type=int, default=5, help="0: no failover comparison")
    ap.add_argument("--catchup-bytes", default="1G", help="0: no catch-up comparison")
    ap.add_argument("--client-mode", choices=("threads", "processes"), default="threads")
    ap.add_argument("--install-peers", action="store_true")
    ap.add_argument("--floor-n", type=int, default=1000, help="samples per floor")
    ap.add_argument("--json", default=None)
    ap.add_argument("--plot", default=None)
    ap.add_argument("--smoke", action="store_true", help="seconds: irisrep only, tiny")
    ap.add_argument("--dir", default=".", help="parent of the scratch directory")
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args(argv)
    if args.smoke:
        args.clients, args.seconds, args.repeat = "1,2", min(args.seconds, 0.3), 1
        args.systems, args.failover_runs, args.catchup_bytes = "irisrep-durable", 1, "4M"
        args.floor_n = min(args.floor_n, 40)
    try:
        args.clients = [int(x) for x in args.clients.split(",") if x]
        args.catchup_bytes = parse_bytes(args.catchup_bytes)
    except ValueError as e:
        ap.error(str(e))
    if not args.clients or min(args.clients) < 1:
        ap.error("--clients: at least one count, each >= 1")
    args.systems = [s for s in args.systems.split(",") if s]
    args.workloads = [w for w in args.workloads.split(",") if w]
    bad = [s for s in args.systems if s not in SYSTEMS] + [
        w for w in args.workloads if w not in WORKLOADS
    ]
    if bad:
        ap.error(f"unknown: {bad}; systems {','.join(SYSTEMS)}; workloads {','.join(WORKLOADS)}")
    if args.seconds <= 0 or args.repeat < 1 or args.floor_n < 2:
        ap.error("--seconds > 0, --repeat >= 1, --floor-n >= 2")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    def _terminate(_signo, _frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _terminate)
    os.makedirs(args.dir, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="bench_peers_tmp", dir=args.dir)).resolve()
    os.chmod(scratch, 0o755)  # the PostgreSQL servers run as `postgres`
    children = Children()
    res: dict = {
        "machine": machine_info(str(scratch)),
        "commit": git_commit(),
        "args": {k: v for k, v in vars(args).items() if k not in ("json", "plot", "dir", "keep")},
        "percentiles_from": "HDR histogram (hdrhistogram, 3 significant digits)"
        if HdrHistogram is not None
        else "numpy percentiles over all samples (hdrhistogram not installed)",
        "versions": {"python": sys.version.split()[0]},
        "messages": [],
        "systems": {},
        "runs": [],
    }
    if args.install_peers:
        for msg in install_peers(log):
            log(msg)
            res["messages"].append(msg)
    names = list(args.systems)
    for n in list(names):
        why = why_missing(n)
        if why:
            msg = f"{n} skipped: {why}"
            log(msg)
            res["messages"].append(msg)
            res["systems"][n] = {"skipped": why}
            names.remove(n)
    for n in names:
        try:
            res["versions"].update(make_system(n).versions())
        except Exception as e:  # noqa: BLE001
            res["messages"].append(f"{n}: version unknown ({e})")
    if args.embedded:
        names.append("embedded-durable")
    failed = False
    fs_all: list[int] = []
    rtt_all: list[int] = []
    try:
        half = args.floor_n // 2
        fs, rtt, direct = measure_floors(scratch, children, half)
        fs_all += fs
        rtt_all += rtt
        for rep in range(args.repeat):
            log(f"repeat {rep + 1}/{args.repeat}")
            for name in names:
                system = p_iris.Embedded() if name == "embedded-durable" else make_system(name)
                where = scratch / f"r{rep}"  # each start gets fresh directories
                where.mkdir(exist_ok=True)
                where.chmod(0o755)
                r = run_system(system, where, args, log)
                shutil.rmtree(where / name, ignore_errors=True)
                r.update({"system": name, "repeat": rep})
                res["runs"].append(r)
                failed |= "error" in r
        if args.failover_runs > 0:
            log("failover: irisrep")
            fo = res["failover"] = {"irisrep": p_iris.failover_runs(scratch, args.failover_runs)}
            failed |= "error" in fo["irisrep"]
            if any(s.startswith("postgres") for s in names):
                log("failover: postgres")
                runs = p_pg.failover_runs(scratch, args.failover_runs)
                ok = [r for r in runs if "takeover_s" in r]
                fo["postgres"] = {"runs": runs, "n": len(ok)}
                fo["postgres"]["errors"] = [r["error"] for r in runs if "error" in r]
                failed |= bool(fo["postgres"]["errors"])
                if ok:
                    fo["postgres"].update(
                        p50_s=float(np.median([r["takeover_s"] for r in ok])),
                        max_s=max(r["takeover_s"] for r in ok),
                        stop_p50_s=float(np.median([r["stop_immediate_s"] for r in ok])),
                        promote_p50_s=float(np.median([r["promote_s"] for r in ok])),
                    )
        if args.catchup_bytes > 0:
            log(f"catch-up: irisrep, {args.catchup_bytes} bytes")
            cu = res["catchup"] = {"irisrep": p_iris.catchup_run(scratch, args.catchup_bytes)}
            failed |= "error" in cu["irisrep"]
            if any(s.startswith("postgres") for s in names):
                log(f"catch-up: postgres, {args.catchup_bytes} bytes")
                cu["postgres"] = p_pg.catchup_run(scratch, args.catchup_bytes)
                failed |= "error" in cu["postgres"]
        fs, rtt, _ = measure_floors(scratch, children, args.floor_n - half)
        fs_all += fs
        rtt_all += rtt
        res["floors"] = {
            "fdatasync": floor_summary(fs_all),
            "fdatasync_direct": direct,
            "rtt": floor_summary(rtt_all),
        }
    except KeyboardInterrupt:
        log("interrupted: stopping everything")
        if os.environ.get("BENCH_PEERS_DEBUG"):
            traceback.print_exc()
        res["interrupted"] = True
        failed = True
    finally:
        children.stop_all()
        res["machine"]["loadavg_after"] = os.getloadavg()
        if args.keep:
            log(f"scratch directory kept: {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    for name in names:
        runs = [r for r in res["runs"] if r["system"] == name]
        s = res["systems"].setdefault(name, {})
        s["median"] = medians(runs)
        s["errors"] = [r["error"] for r in runs if "error" in r]
        skipped = [r["skipped"] for r in runs if "skipped" in r]
        if skipped and not s["median"]:
            s["skipped"] = skipped[0]
        s["start_s"] = [round(r["start_s"], 3) for r in runs if "start_s" in r]
    res["goals"] = goals(res)
    if args.plot:
        try:
            plot(res, args.plot)
            res["plot"] = os.path.abspath(args.plot)
        except ImportError as e:
            res["messages"].append(f"no plot: {e} (pip install matplotlib, or the bench extra)")
    if args.json:
        res["json"] = os.path.abspath(args.json)
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2, default=str)
    report(res)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
