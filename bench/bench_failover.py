"""Failover time of a local mirror: a crashed primary process, and a planned switchover.

One local deployment (`irisrep.deploy.up`: A and B as failover members, each under its
own agent process) is reused for every run. One client thread writes continuously
through `irisrep.connect(addresses, user, password)` (`^bfo(tag, i) = i`,
autocommitted); when a call fails it opens a fresh connection (after --retry-ms) and
goes on. Each successful write is recorded with its monotonic completion time and the
member that accepted it.

- crash (--runs times): SIGKILL of whichever member is primary (os.kill of the pid its
  agent reports; the kill instant is time.monotonic() taken right before os.kill).
  Measured: kill -> the first write accepted by the new primary. Then every write
  acknowledged before the kill is looked for on the new primary (lost = a broken
  promise), the killed member is started again (`member_op(.., "start")`) and the
  run waits until the mirror has an Active backup again (`deploy.wait_active`).
- switchover (--runs times): `irisrep.deploy.switchover(dir)` while the client
  writes. Measured: the write pause (the longest gap between two successful writes
  from the last one before the call to the first one on the new primary) and the
  call -> the first write accepted by the new primary.

Floors measured in the same run (half before, half after the runs, as
bench_commit.py): fdatasync of one 8 KiB block overwrite in the scratch directory and
the round trip of 64 bytes over loopback TCP to another process; the QoS timeout of
the deployment is printed beside them. Goals: crash p50 <= 1 s, switchover pause
<= 300 ms.

    python bench/bench_failover.py [--runs 20] [--qos-ms 2000] [--dir PARENT]
        [--keep] [--json out.json]

The deployment lives in a scratch directory bench_failover_tmp* under --dir (default:
the current directory, not /tmp, which may be tmpfs); if that path is too long for the
agents' UNIX control sockets, in a bench_failover_tmp* directory of the system's
temporary directory (said so). It is always taken down
(`deploy.down(.., purge=True)`), also on an error or Ctrl-C; --keep keeps the files
(members stopped) to read their member.log. Exit status 1 if a run failed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

import numpy as np
from _machine import machine_info, mount_of, pct
from bench_commit import Children, fdatasync_floor, rtt_floor

import irisrep
from irisrep import deploy
from irisrep.agent import UNIX_PATH_BYTES_MAX
from irisrep.client import connect_member

GOAL_CRASH_P50_S = 1.0
GOAL_SWITCHOVER_PAUSE_S = 0.300
CONNECT_TIMEOUT_S = 2.0
REQUEST_TIMEOUT_S = 15.0
LOG_LINES_MAX = 40


class DeployedMirror:
    """The deployment under test: names, client ports, pids; who is primary."""

    def __init__(self, d: Path) -> None:
        self.dir = d
        dep = deploy.load(d)
        self.port_of = {m["name"]: _port(m["client_address"]) for m in dep["members"]}
        self.member_of = {p: n for n, p in self.port_of.items()}
        self.addresses = [m["client_address"] for m in dep["members"]]
        self.user, self.password = deploy.credentials(d)

    def wait_ready(self, timeout_s: float) -> str:
        """Wait for a primary with an Active backup; the primary's name."""
        return deploy.wait_active(self.dir, timeout_s)["member"]

    def pid(self, member: str) -> int:
        st = deploy.member_op(self.dir, member, "status")
        if not st.get("running") or not st.get("pid"):
            raise RuntimeError(f"member {member} is not running: {st}")
        return int(st["pid"])

    def logs(self, since: float | None = None) -> dict[str, list[str]]:
        out = {}
        for name in self.port_of:
            path = self.dir / name / "member.log"
            try:
                lines = path.read_text(errors="replace").splitlines()
            except OSError:
                continue
            if since is not None:
                lines = [ln for ln in lines if (_line_time(ln) or since) >= since]
            out[name] = lines
        return out


def _port(address: str) -> int:
    return int(str(address).rsplit(":", 1)[1])


def _line_time(line: str) -> float | None:
    """The wall time of a logging line ("2025-01-02 03:04:05,678 ...")."""
    try:
        head, ms = line[:23].split(",")
        return time.mktime(time.strptime(head, "%Y-%m-%d %H:%M:%S")) + int(ms) / 1000
    except ValueError:
        return None


class Writer(threading.Thread):
    """Writes ^bfo(tag, i) = i continuously through irisrep.connect; a call that
    fails is not retried (it may have committed): a fresh connection takes the next."""

    def __init__(self, mirror: DeployedMirror, tag: str, retry_s: float) -> None:
        super().__init__(name=f"bench-writer-{tag}", daemon=True)
        self.mirror, self.tag, self.retry_s = mirror, tag, retry_s
        self.stop = threading.Event()
        self.ok: list[tuple[float, int, int]] = []  # (monotonic done, member port, i)
        self.failures: list[tuple[float, str]] = []  # (monotonic, error)
        self.unknown: list[int] = []  # writes sent whose outcome is unknown (the call failed)
        self.crashed: BaseException | None = None

    def run(self) -> None:
        m = self.mirror
        conn = None
        i = 0
        try:
            while not self.stop.is_set():
                sent = False
                try:
                    if conn is None:
                        conn = irisrep.connect(
                            m.addresses,
                            user=m.user,
                            password=m.password,
                            timeout=CONNECT_TIMEOUT_S,
                            request_timeout=REQUEST_TIMEOUT_S,
                        )
                    sent = True
                    conn.globals["bfo"][self.tag, i] = i
                    t = time.monotonic()
                    self.ok.append((t, _port(conn.address), i))
                except (OSError, irisrep.IrisrepError) as e:
                    self.failures.append((time.monotonic(), f"{type(e).__name__}: {e}"))
                    if sent:
                        self.unknown.append(i)
                    if conn is not None:
                        conn.close()
                    conn = None
                    self.stop.wait(self.retry_s)
                i += 1
        except BaseException as e:  # noqa: BLE001 - reported by the run
            self.crashed = e
        finally:
            if conn is not None:
                conn.close()

    def first_ok_on(self, port: int, after: float) -> tuple[float, int] | None:
        for t, p, i in list(self.ok):
            if p == port and t >= after:
                return t, i
        return None

    def wait_first_ok_on(self, port: int, after: float, timeout_s: float) -> float | None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            got = self.first_ok_on(port, after)
            if got is not None:
                return got[0]
            if self.crashed is not None or not self.is_alive():
                return None
            time.sleep(0.005)
        return None

    def wait_count(self, n: int, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while len(self.ok) < n:
            if time.monotonic() > deadline or not self.is_alive():
                return False
            time.sleep(0.01)
        return True

    def finish(self) -> None:
        self.stop.set()
        self.join(REQUEST_TIMEOUT_S + CONNECT_TIMEOUT_S * 3 + 5)


def error_samples(failures: list[tuple[float, str]], t0: float, n: int = 6) -> list[str]:
    """The first distinct client errors from t0 on, with their time after t0."""
    out, seen = [], set()
    for t, e in failures:
        if t >= t0 and e not in seen:
            seen.add(e)
            out.append(f"+{(t - t0) * 1e3:.1f} ms {e}")
            if len(out) >= n:
                break
    return out


def normal_interval_s(ok: list[tuple[float, int, int]], before: float) -> float | None:
    """The median gap between successful writes before `before` (the resolution)."""
    ts = [t for t, _p, _i in ok if t < before]
    if len(ts) < 3:
        return None
    return float(np.median(np.diff(ts)))


def present_on(mirror: DeployedMirror, port: int, tag: str) -> set[int]:
    """The i of every ^bfo(tag, i) the member at `port` holds."""
    addr = next(a for a in mirror.addresses if _port(a) == port)
    with connect_member(
        addr, user=mirror.user, password=mirror.password, timeout=CONNECT_TIMEOUT_S
    ) as c:
        return {subs[1] for subs, _v in c.globals["bfo"].items((tag,), batch=1000)}


def check_writes(out: dict, w: Writer, mirror: DeployedMirror, port: int) -> None:
    """Acknowledged writes missing on the new primary (lost), and how many of the
    writes whose call failed (outcome unknown) are there anyway."""
    acked = {i for _t, _p, i in w.ok}
    have = present_on(mirror, port, w.tag)
    out["acked"] = len(acked)
    out["lost_acked"] = len(acked - have)
    out["unknown_outcome"] = len(w.unknown)
    out["unknown_outcome_committed"] = len(set(w.unknown) & have)


def crash_run(mirror: DeployedMirror, k: int, args) -> dict:
    out: dict = {"run": k}
    old = mirror.wait_ready(args.wait_s)
    new = next(n for n in ("A", "B") if n != old)
    out["killed"], out["new_primary"] = old, new
    pid = mirror.pid(old)
    w = Writer(mirror, f"crash{k}", args.retry_ms / 1000)
    w.start()
    try:
        if not w.wait_count(20, args.wait_s):
            raise RuntimeError(f"the client could not write to {old} before the kill")
        time.sleep(args.warmup_s)
        t_kill0 = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        t_kill1 = time.monotonic()
        out["kill_call_us"] = (t_kill1 - t_kill0) * 1e6
        t_new = w.wait_first_ok_on(mirror.port_of[new], t_kill0, args.takeover_timeout_s)
        if t_new is None:
            raise RuntimeError(
                f"no write accepted by {new} within {args.takeover_timeout_s:g} s of the "
                f"kill of {old}; last client errors: {[e for _t, e in w.failures[-3:]]}"
            )
        out["takeover_s"] = t_new - t_kill0
        first_fail = next((t for t, _e in w.failures if t >= t_kill0), None)
        out["client_saw_failure_after_s"] = None if first_fail is None else first_fail - t_kill0
        out["client_errors"] = sum(1 for t, _e in w.failures if t >= t_kill0)
        out["client_error_kinds"] = sorted({e.split(":")[0] for t, e in w.failures if t >= t_kill0})
        out["client_error_samples"] = error_samples(w.failures, t_kill0)
        out["write_interval_us"] = (normal_interval_s(w.ok, t_kill0) or 0) * 1e6
        time.sleep(args.after_s)
    finally:
        w.finish()
    if w.crashed is not None:
        raise RuntimeError(f"the client thread failed: {w.crashed!r}")
    out["acked_on_old"] = sum(1 for _t, p, _i in w.ok if p == mirror.port_of[old])
    check_writes(out, w, mirror, mirror.port_of[new])
    # The killed member comes back (as backup) and the mirror is whole again.
    t0 = time.monotonic()
    deploy.member_op(mirror.dir, old, "start")
    now = mirror.wait_ready(args.wait_s)
    out["rejoin_s"] = time.monotonic() - t0
    if now != new:
        raise RuntimeError(f"after the restart of {old} the primary is {now}, not {new}")
    return out


def switchover_run(mirror: DeployedMirror, k: int, args) -> dict:
    out: dict = {"run": k}
    old = mirror.wait_ready(args.wait_s)
    w = Writer(mirror, f"switch{k}", args.retry_ms / 1000)
    w.start()
    try:
        if not w.wait_count(20, args.wait_s):
            raise RuntimeError(f"the client could not write to {old} before the switchover")
        time.sleep(args.warmup_s)
        # deploy.switchover refuses ("no Active backup") while the backup's ack of
        # the last frame is in flight (eligibility wants lag_bytes == 0): retry, and
        # count the refusals; the timings start at the call that was accepted.
        t_first_call = time.monotonic()
        refusals: list[str] = []
        while True:
            t_call = time.monotonic()
            try:
                new = deploy.switchover(mirror.dir)
                break
            except deploy.DeployError as e:
                refusals.append(str(e))
                if len(refusals) > args.switchover_retries:
                    raise RuntimeError(
                        f"deploy.switchover refused {len(refusals)} times: {refusals[-1]}"
                    ) from e
                time.sleep(args.retry_ms / 1000)
        t_ret = time.monotonic()
        out["refused_calls"] = len(refusals)
        out["refusals"] = sorted(set(refusals))
        out["first_call_to_accepted_s"] = t_call - t_first_call
        out["from"], out["to"] = old, new
        out["switchover_call_s"] = t_ret - t_call
        if new not in mirror.port_of or new == old:
            raise RuntimeError(f"switchover from {old} returned {new!r}")
        t_new = w.wait_first_ok_on(mirror.port_of[new], t_call, args.takeover_timeout_s)
        if t_new is None:
            raise RuntimeError(
                f"no write accepted by {new} within {args.takeover_timeout_s:g} s of the "
                f"switchover; last client errors: {[e for _t, e in w.failures[-3:]]}"
            )
        out["first_write_s"] = t_new - t_call
        time.sleep(args.after_s)
    finally:
        w.finish()
    if w.crashed is not None:
        raise RuntimeError(f"the client thread failed: {w.crashed!r}")
    ts = [t for t, _p, _i in w.ok]
    before = [t for t in ts if t <= t_call]
    start = before[-1] if before else t_call
    window = [start] + [t for t in ts if start < t <= t_new]
    out["pause_s"] = float(max(np.diff(window))) if len(window) > 1 else t_new - start
    out["writes_on_old_after_call"] = sum(
        1 for t, p, _i in w.ok if t > t_call and p == mirror.port_of[old]
    )
    out["client_errors"] = sum(1 for t, _e in w.failures if t >= t_call)
    out["client_error_kinds"] = sorted({e.split(":")[0] for t, e in w.failures if t >= t_call})
    out["client_error_samples"] = error_samples(w.failures, t_call)
    out["write_interval_us"] = (normal_interval_s(w.ok, t_call) or 0) * 1e6
    check_writes(out, w, mirror, mirror.port_of[new])
    t0 = time.monotonic()
    now = mirror.wait_ready(args.wait_s)
    out["backup_active_again_s"] = time.monotonic() - t0
    if now != new:
        raise RuntimeError(f"after the switchover to {new} the primary is {now}")
    return out


def connect_floor(mirror: DeployedMirror, n: int) -> list[int]:
    """irisrep.connect(addresses) + close, as the writer reconnects (LOGIN included;
    the member checks the password's scrypt hash); ns each."""
    mirror.wait_ready(30)
    out = []
    for _ in range(n):
        t0 = time.perf_counter_ns()
        c = irisrep.connect(mirror.addresses, user=mirror.user, password=mirror.password)
        out.append(time.perf_counter_ns() - t0)
        c.close()
    return out


def summary(xs: list[float]) -> dict:
    if not xs:
        return {"n": 0}
    a = np.asarray(xs, dtype=np.float64)
    return {
        "n": len(xs),
        "p50": float(np.percentile(a, 50)),
        "p99": float(pct(xs, 99)),
        "max": float(a.max()),
        "min": float(a.min()),
        "mean": float(a.mean()),
    }


def percentiles_us(ns: list[int]) -> dict:
    a = np.asarray(ns, dtype=np.float64) / 1e3
    p50, p99 = np.percentile(a, [50, 99])
    return {"n": len(ns), "p50_us": float(p50), "p99_us": float(p99), "max_us": float(a.max())}


SUSPICIOUS = ("ERROR", "CRITICAL", "Traceback", "diverged", "refused", "failed")


def report(res: dict) -> None:
    m, fl, a = res["machine"], res.get("floors"), res["args"]
    print(
        f"failover bench: {a['runs']} runs each, {len(res.get('deployments', []))} deployment(s)"
        f" reused across runs ({m['deploy_fstype']} at {m['deploy_mount']}), {m['cpus']} cpus, python {m['python']}, load average "
        f"{m['loadavg_before'][0]:.2f} before, {m.get('loadavg_after', [0])[0]:.2f} after"
    )
    if m.get("note"):
        print(f"note: {m['note']}")
    if fl:
        print(
            f"floors: QoS timeout {a['qos_ms']} ms;  loopback rtt 64 B p50 "
            f"{fl['rtt']['p50_us']:.0f} us, p99 {fl['rtt']['p99_us']:.0f} us;  fdatasync 8 KiB "
            f"(O_DIRECT={fl['fdatasync_direct']}, {m['fstype']}) p50 {fl['fdatasync']['p50_us']:.0f} us, "
            f"p99 {fl['fdatasync']['p99_us']:.0f} us"
        )
    conn = (
        f"; irisrep.connect (with LOGIN) p50 {fl['connect']['p50_us'] / 1e3:.1f} ms" if fl else ""
    )
    print(
        f"client: one thread, fresh irisrep.connect after a failed call (+{a['retry_ms']:g} ms)"
        + conn
    )
    print(f"  {'measure':<46}{'n':>4}{'p50 ms':>10}{'p99 ms':>10}{'max ms':>10}  goal")
    rows = [
        ("crash: SIGKILL -> first write on new primary", "crash_takeover_s", GOAL_CRASH_P50_S),
        ("crash: killed member restarted -> Active", "crash_rejoin_s", None),
        ("switchover: write pause (longest gap)", "switchover_pause_s", GOAL_SWITCHOVER_PAUSE_S),
        ("switchover: call -> first write on new", "switchover_first_write_s", None),
        ("switchover: deploy.switchover() call", "switchover_call_s", None),
    ]
    for label, key, goal in rows:
        s = res["summary"].get(key, {"n": 0})
        if not s["n"]:
            print(f"  {label:<46}{0:>4}{'-':>10}{'-':>10}{'-':>10}")
            continue
        g = ""
        if goal is not None:
            g = f"<= {goal * 1000:.0f} ms: p50 {'ok' if s['p50'] <= goal else 'MISSED'}"
            g += f", max {'ok' if s['max'] <= goal else 'over'}"
        print(
            f"  {label:<46}{s['n']:>4}{s['p50'] * 1e3:>10.1f}{s['p99'] * 1e3:>10.1f}"
            f"{s['max'] * 1e3:>10.1f}  {g}"
        )
    for kind in ("crash", "switchover"):
        runs = res[kind]
        lost = sum(r.get("lost_acked", 0) for r in runs)
        failed = [r for r in runs if "error" in r]
        ivals = [r["write_interval_us"] for r in runs if r.get("write_interval_us")]
        kinds = sorted({k for r in runs for k in r.get("client_error_kinds", [])})
        unk = sum(r.get("unknown_outcome", 0) for r in runs)
        unk_in = sum(r.get("unknown_outcome_committed", 0) for r in runs)
        print(
            f"{kind}: {len(runs) - len(failed)}/{len(runs)} runs ok; acknowledged writes lost: "
            f"{lost}; failed calls (outcome unknown) {unk}, of which committed {unk_in}; normal write interval p50 {np.median(ivals) if ivals else 0:.0f} us; "
            f"client errors seen: {', '.join(kinds) or 'none'}"
        )
        if kind == "switchover" and runs:
            refused = [r.get("refused_calls", 0) for r in runs]
            why = sorted({w for r in runs for w in r.get("refusals", [])})
            print(
                f"  deploy.switchover refused before the accepted call: {sum(refused)} times "
                f"in {sum(1 for x in refused if x)}/{len(runs)} runs"
                + (f" ({'; '.join(why)})" if why else "")
            )
        odd = [
            (r["run"], e)
            for r in runs
            for e in r.get("client_error_samples", [])
            if "ConnectionError" not in e and "NotPrimaryError" not in e
        ]
        for run, e in odd[:10]:
            print(f"  run {run} client error: {e[:300]}")
        for r in failed:
            print(f"  run {r['run']} FAILED: {r['error']}")
    for msg in res.get("gave_up", []):
        print(f"gave up: {msg}")
    bad = res.get("log_suspicious", [])
    for line in bad[:LOG_LINES_MAX]:
        print(f"log {line if len(line) <= 400 else line[:150] + ' ... ' + line[-240:]}")
    if len(bad) > LOG_LINES_MAX:
        print(f"log ... {len(bad) - LOG_LINES_MAX} more such lines (see --json)")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=20, help="runs of each kind")
    ap.add_argument("--kinds", default="crash,switchover", help="crash,switchover or one")
    ap.add_argument("--qos-ms", type=int, default=deploy.QOS_TIMEOUT_LOCAL_MS)
    ap.add_argument("--warmup-s", type=float, default=0.3, help="writing before each event")
    ap.add_argument("--after-s", type=float, default=0.2, help="writing after the takeover")
    ap.add_argument("--retry-ms", type=float, default=5.0, help="client pause after a failure")
    ap.add_argument("--takeover-timeout-s", type=float, default=30.0)
    ap.add_argument(
        "--switchover-retries", type=int, default=100, help="refused deploy.switchover calls"
    )
    ap.add_argument("--wait-s", type=float, default=60.0, help="bound of every other wait")
    ap.add_argument(
        "--recover-s", type=float, default=20.0, help="after a failed run: else redeploy"
    )
    ap.add_argument(
        "--max-failures", type=int, default=3, help="failed runs in a row that end a kind"
    )
    ap.add_argument("--floor-n", type=int, default=400, help="samples per floor")
    ap.add_argument("--dir", default=".", help="parent of the scratch directory")
    ap.add_argument("--keep", action="store_true", help="keep the deployment's files")
    ap.add_argument("--json", default=None, help="write the figures here")
    args = ap.parse_args(argv)
    kinds = [k for k in args.kinds.split(",") if k]
    if not kinds or any(k not in ("crash", "switchover") for k in kinds):
        ap.error("--kinds: crash, switchover or both")
    if args.runs < 1 or args.floor_n < 2:
        ap.error("--runs must be >= 1 and --floor-n >= 2")

    def _terminate(_signo, _frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _terminate)

    os.makedirs(args.dir, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="bench_failover_tmp", dir=args.dir)).resolve()
    ddir = scratch / "m"
    short_parent = None
    note = None
    if len(str(ddir) + "99/C1/agent.sock") > UNIX_PATH_BYTES_MAX:
        # The agents' control sockets would not fit a UNIX socket path: deploy in a
        # short directory of the system's temporary directory instead.
        short_parent = Path(tempfile.mkdtemp(prefix="bench_failover_tmp")).resolve()
        ddir = short_parent / "m"
        note = f"{scratch} is too long a path for the agents' UNIX sockets: deployed in {ddir}"
        print(f"note: {note}", file=sys.stderr)
    dmnt, dfstype = mount_of(str(ddir.parent))
    children = Children()
    res: dict = {
        "machine": {
            **machine_info(str(scratch)),
            "deploy_dir": str(ddir),
            "deploy_mount": dmnt,
            "deploy_fstype": dfstype,
            "note": note,
        },
        "args": {
            "runs": args.runs,
            "kinds": kinds,
            "qos_ms": args.qos_ms,
            "retry_ms": args.retry_ms,
            "warmup_s": args.warmup_s,
            "after_s": args.after_s,
            "floor_n": args.floor_n,
            "deployment": "one reused for every run; a fresh one after a run that broke it",
        },
        "goals": {
            "crash_takeover_p50_s_max": GOAL_CRASH_P50_S,
            "switchover_pause_s_max": GOAL_SWITCHOVER_PAUSE_S,
        },
        "crash": [],
        "switchover": [],
    }
    failed = False
    t_wall0 = time.time()
    mirror: DeployedMirror | None = None
    deployments: list[DeployedMirror] = []
    res["member_logs"], res["log_suspicious"] = {}, []
    floors: dict = {"fdatasync": [], "rtt": [], "connect": []}

    def deploy_new() -> DeployedMirror:
        d = ddir.parent / f"{ddir.name}{len(deployments)}"
        t0 = time.monotonic()
        deploy.up(d, qos_timeout_ms=args.qos_ms, timeout_s=args.wait_s)
        res.setdefault("up_s", []).append(time.monotonic() - t0)
        m = DeployedMirror(d)
        deployments.append(m)
        return m

    def take_down(m: DeployedMirror) -> None:
        logs = m.logs(since=t_wall0)
        for n, lines in logs.items():
            res["member_logs"][f"{m.dir.name}/{n}"] = lines[-400:]
            res["log_suspicious"] += [
                f"[{m.dir.name}/{n}] {ln}" for ln in join_continued(lines) if _suspicious(ln)
            ]
        try:
            deploy.down(m.dir, purge=not args.keep)
        except Exception as e:  # noqa: BLE001
            print(f"deploy.down({m.dir}) failed: {e}", file=sys.stderr)
        if args.keep:
            print(f"deployment kept (stopped): {m.dir}", file=sys.stderr)

    def measure_floors(n: int) -> None:
        fs, floors["direct"] = fdatasync_floor(str(scratch), n)
        floors["fdatasync"] += fs
        floors["rtt"] += rtt_floor(children, n)

    try:
        half = args.floor_n // 2
        measure_floors(half)
        mirror = deploy_new()
        for kind in kinds:
            fn = crash_run if kind == "crash" else switchover_run
            in_a_row = 0
            for k in range(args.runs):
                if in_a_row >= args.max_failures:
                    msg = f"{kind}: {in_a_row} runs failed in a row, the other runs skipped"
                    print(msg, file=sys.stderr)
                    res.setdefault("gave_up", []).append(msg)
                    break
                try:
                    r = fn(mirror, k, args)
                except Exception as e:  # noqa: BLE001 - reported, the next run goes on
                    r = {"run": k, "error": f"{type(e).__name__}: {e}"}
                    r["traceback"] = traceback.format_exc()
                    r["deployment"] = mirror.dir.name
                    print(f"{kind} run {k} FAILED: {r['error']}", file=sys.stderr)
                    failed = True
                    in_a_row += 1
                    try:  # make the mirror whole again for the next run
                        for name in mirror.port_of:
                            if not deploy.member_op(mirror.dir, name, "status").get("running"):
                                deploy.member_op(mirror.dir, name, "start")
                        mirror.wait_ready(args.recover_s)
                    except Exception as e2:  # noqa: BLE001
                        r["recovery_error"] = f"{type(e2).__name__}: {e2}"
                        print(
                            f"the mirror did not recover ({r['recovery_error']}): "
                            "a fresh deployment for the next run",
                            file=sys.stderr,
                        )
                        take_down(mirror)
                        mirror = None
                        mirror = deploy_new()
                else:
                    in_a_row = 0
                res[kind].append(r)
                brief = {
                    k2: round(v, 4) if isinstance(v, float) else v
                    for k2, v in r.items()
                    if k2 != "traceback"
                }
                print(f"{kind} {k}: {brief}", file=sys.stderr, flush=True)
        floors["connect"] = connect_floor(mirror, max(2, min(20, args.floor_n // 10)))
        measure_floors(args.floor_n - half)
    except KeyboardInterrupt:
        print("interrupted: taking the deployment down", file=sys.stderr)
        res["interrupted"] = True
        failed = True
    except Exception as e:  # noqa: BLE001 - reported, then everything is stopped
        res["error"] = f"{type(e).__name__}: {e}"
        res["traceback"] = traceback.format_exc()
        print(f"FAILED: {res['error']}", file=sys.stderr)
        failed = True
    finally:
        children.stop_all()
        if mirror is not None:
            take_down(mirror)
        elif deployments and deployments[-1].dir.exists():
            take_down(deployments[-1])  # the fresh deployment failed half way
        res["deployments"] = [m.dir.name for m in deployments]
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)
            if short_parent is not None:
                shutil.rmtree(short_parent, ignore_errors=True)
        if floors["fdatasync"] and floors["rtt"]:
            res["floors"] = {
                "qos_ms": args.qos_ms,
                "rtt": percentiles_us(floors["rtt"]),
                "fdatasync": percentiles_us(floors["fdatasync"]),
                "fdatasync_direct": floors.get("direct"),
                "connect": percentiles_us(floors["connect"]) if floors["connect"] else None,
            }
        res["machine"]["loadavg_after"] = os.getloadavg()
        res["summary"] = {
            "crash_takeover_s": summary(
                [r["takeover_s"] for r in res["crash"] if "takeover_s" in r]
            ),
            "crash_rejoin_s": summary([r["rejoin_s"] for r in res["crash"] if "rejoin_s" in r]),
            "switchover_pause_s": summary(
                [r["pause_s"] for r in res["switchover"] if "pause_s" in r]
            ),
            "switchover_first_write_s": summary(
                [r["first_write_s"] for r in res["switchover"] if "first_write_s" in r]
            ),
            "switchover_call_s": summary(
                [r["switchover_call_s"] for r in res["switchover"] if "switchover_call_s" in r]
            ),
        }
        if args.json:
            with open(args.json, "w") as f:
                json.dump(res, f, indent=2, default=str)
    report(res)
    lost = sum(r.get("lost_acked", 0) for kind in ("crash", "switchover") for r in res[kind])
    return 1 if failed or lost else 0


def join_continued(lines: list[str]) -> list[str]:
    """Log lines with their continuation lines (a traceback) joined by " | "."""
    out: list[str] = []
    for ln in lines:
        if out and _line_time(ln) is None and not ln.startswith("irisrep:"):
            out[-1] += " | " + ln.strip()
        else:
            out.append(ln)
    return out


def _suspicious(line: str) -> bool:
    return any(w in line for w in SUSPICIOUS)


if __name__ == "__main__":
    sys.exit(main())
