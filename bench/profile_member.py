"""Where a primary member's time goes under N TCP clients (issue 9).

Starts the deployment `irisrep bench` measures as irisrep-durable (`irisrep.deploy.up`:
A primary, B its synchronous backup, each under its agent, an arbiter; ack `durable`
by default), runs N clients (threads of this process by default, one TCP connection
each) doing one-node SETs with a 64-byte value, autocommitted, and looks at the
primary member process while they run, one short phase after the other:

1. `baseline` (no profiler attached): commits/s and client-side p50; CPU time and
   run-queue wait per commit (/proc/PID/task/*/schedstat) of the primary, by thread
   kind, and of every other process of the deployment, this client process and the
   rest of the machine (/proc/stat); context switches per commit by thread kind;
2. `perf-stat` (if `perf` is installed): system calls per commit by call and thread
   kind (`perf stat --per-thread` on syscall tracepoints: counting only);
3. `py-spy` (if `py-spy` is installed, as it is with `pip install py-spy`): wall-clock
   samples of every thread (`py-spy record --threads`, waiting threads included),
   top functions by own and cumulative samples per thread kind, and the connection
   threads' samples split into the phases of a request (waiting for the client,
   decode, apply, group commit, mirror ack, reply) as microseconds per commit;
4. `py-spy --gil`: samples of the thread holding the GIL only: the share of wall
   time the GIL is held (all Python execution of the process) and by what;
5. `perf-record` (with --perf-record): on-CPU samples of the process with C stacks
   (`perf record -g`; no Python frames: 3.11 has no perf trampoline), top symbols by
   own time (take_gil, _PyEval_EvalFrameDefault, the kernel's socket and futex
   paths, our _core functions).

Thread kinds are the Python thread names without their peer (irisrep-client,
irisrep-mirror-read, irisrep-mirror-send, irisrep-write-daemon, ...; the journal's
group leader is a connection thread, its samples under Journal.flush /
Replicator._publish are shown as "irisrep-client (leading a group)"). Names come
from `py-spy dump --json`; without py-spy the threads are counted by id.

    python bench/profile_member.py [--clients 16] [--seconds 3] [--ack durable]
        [--client-mode threads|processes] [--rate 100] [--native] [--perf-record]
        [--no-perf] [--no-py-spy] [--top 12] [--json FILE] [--dir PARENT] [--keep]

Every phase is short (the development machine has 2 shared cores); commits/s is
printed for each, so the profiler's own cost shows. The scratch directory
(profile_member_tmp*, under --dir, default the current directory: not /tmp, which may
be tmpfs) is removed at the end unless --keep; every process started is stopped by
pid, also on an error or Ctrl-C.
"""

from __future__ import annotations

import argparse
import collections
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
from pathlib import Path

BENCH = Path(__file__).resolve().parent
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

from peers.irisrep import Deployed  # noqa: E402

from irisrep import deploy  # noqa: E402

SC_CLK_TCK = os.sysconf("SC_CLK_TCK")
SYSCALLS = (
    "futex",
    "recvfrom",
    "sendto",
    "poll",
    "ioctl",
    "pwrite64",
    "fdatasync",
    "epoll_wait",
    "clock_nanosleep",
)

# Phases of a request on a connection thread, by the first Python frame (innermost
# first) of a wall-clock sample that names one. Order matters: inner before outer.
REQUEST_PHASES = (
    ("Replicator.wait", "wait for the backup's ack"),
    ("Replicator._publish", "lead: send the group to the backup"),
    ("Journal.flush", "lead: journal write + fdatasync"),
    ("Committer._write_pending_locked_io", "lead: hand records to the journal"),
    ("Committer._sync_local", "wait for the group leader / lock handoff"),
    ("Committer.sync", "group commit (other)"),
    ("decode_value", "decode the request"),
    ("recv_message", "wait for / read the request"),
    ("ClientListener._send", "encode + send the reply"),
    ("ClientListener._dispatch", "apply the SET (Global, tree, journal record)"),
    ("ClientListener._serve_requests", "request loop (other)"),
)


# --- clients ---------------------------------------------------------------------------


class Clients:
    """N clients committing one node each until stopped; `count()` commits so far,
    `latencies_since(mark)` their latencies (threads mode only)."""

    def __init__(self, system: Deployed, n: int, mode: str) -> None:
        self.mode = mode
        self.n = n
        self.stop_event = threading.Event()
        self.lat: list[list[int]] = [[] for _ in range(n)]
        self.threads: list[threading.Thread] = []
        self.procs: list[multiprocessing.Process] = []
        if mode == "threads":
            self.counts = [0] * n
            conns = [system.client(1000 + k) for k in range(n)]
            for k in range(n):
                t = threading.Thread(target=self._thread_body, args=(k, conns[k]), daemon=True)
                self.threads.append(t)
        else:
            ctx = multiprocessing.get_context("fork")
            self.shared = ctx.Array("q", n, lock=False)
            self.stop_flag = ctx.Value("b", 0, lock=False)
            for k in range(n):
                p = ctx.Process(
                    target=_proc_body, args=(system, k, self.shared, self.stop_flag), daemon=True
                )
                self.procs.append(p)

    def _thread_body(self, k: int, client) -> None:
        lat = self.lat[k]
        i = 0
        try:
            while not self.stop_event.is_set():
                t0 = time.perf_counter_ns()
                client.write(i)
                lat.append(time.perf_counter_ns() - t0)
                i += 1
                self.counts[k] = i
        finally:
            client.close()

    def start(self) -> None:
        for t in self.threads:
            t.start()
        for p in self.procs:
            p.start()

    def count(self) -> int:
        return sum(self.counts) if self.mode == "threads" else sum(self.shared)

    def marks(self) -> list[int]:
        return [len(x) for x in self.lat]

    def p50_us(self, marks: list[int]) -> float | None:
        got = sorted(v for x, m in zip(self.lat, marks, strict=True) for v in x[m:])
        return got[len(got) // 2] / 1000.0 if got else None

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs if p.pid]

    def stop(self) -> None:
        self.stop_event.set()
        if self.procs:
            self.stop_flag.value = 1
        for t in self.threads:
            t.join(timeout=30)
        for p in self.procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()


def _proc_body(system, k: int, shared, stop_flag) -> None:
    client = system.client(1000 + k)
    i = 0
    try:
        while not stop_flag.value:
            client.write(i)
            i += 1
            shared[k] = i
    finally:
        client.close()


# --- /proc ----------------------------------------------------------------------------


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def proc_cpu_s(pid: int) -> float:
    """utime + stime of a process (all its threads), seconds."""
    text = _read(f"/proc/{pid}/stat")
    if text is None:
        return 0.0
    fields = text.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / SC_CLK_TCK


def machine_busy_s() -> tuple[float, int]:
    """CPU seconds busy on the whole machine (all CPUs), and the CPU count."""
    lines = (_read("/proc/stat") or "").splitlines()
    v = [int(x) for x in lines[0].split()[1:]]
    idle = v[3] + (v[4] if len(v) > 4 else 0)
    ncpu = sum(1 for ln in lines if re.match(r"cpu\d", ln))
    return (sum(v[:8]) - idle) / SC_CLK_TCK, ncpu


def task_stats(pid: int) -> dict[int, dict]:
    """Per thread: on-CPU ns, run-queue wait ns (schedstat), voluntary and involuntary
    context switches."""
    out: dict[int, dict] = {}
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            sched = _read(f"/proc/{pid}/task/{tid}/schedstat")
            status = _read(f"/proc/{pid}/task/{tid}/status")
            if sched is None or status is None:
                continue
            run_ns, wait_ns = (int(x) for x in sched.split()[:2])
            vol = int(re.search(r"^voluntary_ctxt_switches:\s+(\d+)", status, re.M)[1])
            invol = int(re.search(r"^nonvoluntary_ctxt_switches:\s+(\d+)", status, re.M)[1])
            out[int(tid)] = {"run": run_ns, "wait": wait_ns, "vol": vol, "invol": invol}
    return out


def thread_kind(name: str) -> str:
    """A thread name without its peer or path: 'irisrep-client ('127.0.0.1', 5) -> ..."""
    kind = re.sub(r"[ _(].*$", "", name.strip())
    kind = re.sub(r"-\d+$", "", kind)
    return kind or name


def thread_names(pid: int) -> dict[int, str]:
    """OS thread id -> Python thread name (py-spy dump --json), or {}."""
    if not shutil.which("py-spy"):
        return {}
    p = subprocess.run(
        ["py-spy", "dump", "--pid", str(pid), "--json"], capture_output=True, text=True, timeout=60
    )
    try:
        return {int(t["os_thread_id"]): t["thread_name"] or "?" for t in json.loads(p.stdout)}
    except (ValueError, KeyError, TypeError):
        return {}


# --- phases ---------------------------------------------------------------------------


class Run:
    def __init__(self, args, system: Deployed, clients: Clients, pids: dict[str, int]) -> None:
        self.args = args
        self.system = system
        self.clients = clients
        self.pids = pids  # role -> pid: primary, backup, agents, arbiter
        self.primary = pids["primary"]
        self.names: dict[int, str] = {}
        self.out: dict = {"phases": {}}

    def kind_of(self, tid: int) -> str:
        name = self.names.get(tid)
        return thread_kind(name) if name else f"thread {tid}"

    def phase(self, name: str, body) -> dict:
        """Run body() (which lasts about --seconds) while the clients commit; the
        commits/s and client p50 during it."""
        c0, m0, t0 = self.clients.count(), self.clients.marks(), time.monotonic()
        extra = body() or {}
        dt = time.monotonic() - t0
        res = {"seconds": dt, "commits_s": (self.clients.count() - c0) / dt, **extra}
        if self.clients.mode == "threads":
            res["p50_us"] = self.clients.p50_us(m0)
        self.out["phases"][name] = res
        p50 = f", client p50 {res['p50_us']:.0f} µs" if res.get("p50_us") else ""
        print(f"\n== {name}: {res['commits_s']:,.0f} commits/s{p50}", flush=True)
        return res

    # 1. baseline ----------------------------------------------------------------------

    def baseline(self) -> dict:
        procs = dict(self.pids)
        client_pids = [os.getpid(), *self.clients.pids()]
        cpu0 = {k: proc_cpu_s(v) for k, v in procs.items()}
        cl0 = sum(proc_cpu_s(p) for p in client_pids)
        m0, ncpu = machine_busy_s()
        t0 = task_stats(self.primary)
        time.sleep(self.args.seconds)
        t1 = task_stats(self.primary)
        m1, _ = machine_busy_s()
        cpu1 = {k: proc_cpu_s(v) for k, v in procs.items()}
        cl1 = sum(proc_cpu_s(p) for p in client_pids)
        by_kind: dict[str, dict] = collections.defaultdict(lambda: collections.Counter())
        for tid, b in t1.items():
            a = t0.get(tid, {"run": 0, "wait": 0, "vol": 0, "invol": 0})
            k = by_kind[self.kind_of(tid)]
            k["threads"] += 1
            for f in ("run", "wait", "vol", "invol"):
                k[f] += b[f] - a[f]
        procs_cpu = {k: cpu1[k] - cpu0[k] for k in procs}
        procs_cpu["clients (this process)" + ("" if len(client_pids) == 1 else " + children")] = (
            cl1 - cl0
        )
        busy = m1 - m0
        procs_cpu["rest of the machine"] = max(0.0, busy - sum(procs_cpu.values()))
        return {
            "threads": {k: dict(v) for k, v in by_kind.items()},
            "processes_cpu_s": procs_cpu,
            "machine_busy_s": busy,
            "ncpu": ncpu,
        }

    def report_baseline(self, res: dict) -> None:
        n = res["commits_s"] * res["seconds"] or 1.0
        dt = res["seconds"]
        print(
            f"CPU over {dt:.1f} s ({res['ncpu']} CPUs; machine busy {res['machine_busy_s'] / dt:.2f} CPUs):"
        )
        for k, v in sorted(res["processes_cpu_s"].items(), key=lambda kv: -kv[1]):
            print(f"  {k:<34} {v / dt:5.2f} CPUs  {v / n * 1e6:7.1f} µs/commit")
        print("primary by thread kind (per commit: µs on CPU, µs waiting for a CPU, switches):")
        print(
            f"  {'kind':<34} {'thr':>3} {'cpu µs':>7} {'runq µs':>8} {'vol cs':>7} {'invol cs':>8}"
        )
        rows = sorted(res["threads"].items(), key=lambda kv: -kv[1]["run"])
        for k, v in rows:
            print(
                f"  {k:<34} {v['threads']:>3} {v['run'] / n / 1e3:7.1f} {v['wait'] / n / 1e3:8.1f}"
                f" {v['vol'] / n:7.2f} {v['invol'] / n:8.2f}"
            )
        tot = {
            f: sum(v[f] for v in res["threads"].values()) for f in ("run", "wait", "vol", "invol")
        }
        print(
            f"  {'all':<34} {'':>3} {tot['run'] / n / 1e3:7.1f} {tot['wait'] / n / 1e3:8.1f}"
            f" {tot['vol'] / n:7.2f} {tot['invol'] / n:8.2f}"
        )

    # 2. perf stat ---------------------------------------------------------------------

    def perf_stat(self) -> dict:
        events = ["task-clock", "context-switches", "raw_syscalls:sys_enter"]
        events += [f"syscalls:sys_enter_{s}" for s in SYSCALLS]
        cmd = ["perf", "stat", "--per-thread", "-x", ",", "-e", ",".join(events)]
        cmd += ["-p", str(self.primary), "--", "sleep", str(self.args.seconds)]
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=self.args.seconds + 60)
        table: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        for line in p.stderr.splitlines():
            parts = line.split(",")
            if len(parts) < 4 or not parts[1].strip().replace(".", "").isdigit():
                continue
            m = re.match(r".*-(\d+)$", parts[0].strip())
            if not m:
                continue
            ev = (
                parts[3].replace("syscalls:sys_enter_", "").replace("raw_syscalls:sys_enter", "all")
            )
            table[self.kind_of(int(m[1]))][ev] += float(parts[1])
        return {"by_kind": {k: dict(v) for k, v in table.items()}, "rc": p.returncode}

    def report_perf_stat(self, res: dict) -> None:
        n = res["commits_s"] * res["seconds"] or 1.0
        cols = ["all", *SYSCALLS, "context-switches"]
        short = {"context-switches": "cs", "clock_nanosleep": "sleep", "epoll_wait": "epoll"}
        print("system calls per commit, by thread kind (perf stat, counting):")
        print("  " + f"{'kind':<24}" + "".join(f"{short.get(c, c)[:9]:>10}" for c in cols))
        total: collections.Counter = collections.Counter()
        rows = sorted(res["by_kind"].items(), key=lambda kv: -kv[1].get("all", 0))
        for k, v in rows:
            if v.get("all", 0) / n < 0.01:
                continue
            total.update(v)
            print("  " + f"{k[:24]:<24}" + "".join(f"{v.get(c, 0) / n:10.2f}" for c in cols))
        print("  " + f"{'all':<24}" + "".join(f"{total.get(c, 0) / n:10.2f}" for c in cols))

    # 3. and 4. py-spy -----------------------------------------------------------------

    def py_spy(self, gil: bool) -> dict:
        fd, path = tempfile.mkstemp(suffix=".txt", prefix="pyspy_")
        os.close(fd)
        secs = str(max(1, round(self.args.seconds)))  # py-spy takes whole seconds
        cmd = ["py-spy", "record", "--pid", str(self.primary), "-d", secs]
        cmd += ["-r", str(self.args.rate), "-f", "raw", "--threads", "-o", path]
        if gil:
            cmd.append("--gil")
        else:
            cmd.append("--idle")  # threads blocked in recv or on a lock too
            if self.args.native:
                cmd.append("--native")
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=self.args.seconds + 120)
        stacks = []
        with contextlib.suppress(OSError):
            for line in Path(path).read_text().splitlines():
                stack, _, count = line.rpartition(" ")
                frames = stack.split(";")
                m = re.match(r"thread \((\d+)\)(?:: (.*))?$", frames[0])
                name = (m[2] or "") if m else frames[0]
                fns = [re.sub(r":\d+\)$", ")", f) for f in frames[1:]]
                stacks.append((thread_kind(name) if name else "?", fns, int(count)))
        os.unlink(path)
        errs = re.search(r"Samples: (\d+) Errors: (\d+)", p.stdout + p.stderr)
        return {
            "stacks": stacks,
            "samples_errors": errs.groups() if errs else None,
            "spy_seconds": float(secs),
        }

    @staticmethod
    def _kind(kind: str, fns: list[str]) -> str:
        if kind == "irisrep-client" and any(
            f.startswith(("Journal.flush ", "Replicator._publish ")) for f in fns
        ):
            return "irisrep-client (leading a group)"
        return kind

    def report_py_spy(self, res: dict, *, gil: bool) -> None:
        top = self.args.top
        stacks = res["stacks"]
        total = sum(c for _k, _f, c in stacks)
        expected = self.args.rate * res["spy_seconds"]
        kinds: collections.Counter = collections.Counter()
        own: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        cum: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        for kind, fns, c in stacks:
            kind = self._kind(kind, fns)
            kinds[kind] += c
            if fns:
                own[kind][fns[-1]] += c
            for f in set(fns):
                cum[kind][f] += c
        if gil:
            share = total / expected if expected else 0.0
            print(f"GIL held in {total} of ~{expected:.0f} sample ticks: {share:.0%} of wall time")
            res["gil_share"] = share
        else:
            print(f"{total} thread samples in ~{expected:.0f} ticks (--idle: waiting threads too)")
        for kind, n in kinds.most_common():
            if n < max(2, total * 0.01):
                continue
            unit = "ticks" if gil else "samples"
            what = "threads holding the GIL" if gil else "threads"
            print(f"-- {kind}: {n} {unit} ({n / (expected or 1):.2f} {what} on average)")
            print("   own:")
            for f, c in own[kind].most_common(top):
                print(f"     {c:6d} {c / n:5.0%}  {f}")
            print("   cumulative:")
            skip = ("Thread.", "thread_run", "0x", "clone", "start_thread")
            shown = 0
            for f, c in cum[kind].most_common():
                if f.startswith(skip):
                    continue
                print(f"     {c:6d} {c / n:5.0%}  {f}")
                shown += 1
                if shown >= top:
                    break
        if not gil:
            self._request_phases(res, stacks)

    def _request_phases(self, res: dict, stacks) -> None:
        """Connection threads' wall samples split by request phase, as µs per commit:
        samples x (1 / rate) is thread-seconds; over the commits in the phase."""
        commits = res["commits_s"] * res["spy_seconds"] or 1.0
        phases: collections.Counter = collections.Counter()
        for kind, fns, c in stacks:
            if kind != "irisrep-client":
                continue
            names = [f.split(" (")[0] for f in fns]
            label = "other"
            for fn, what in REQUEST_PHASES:
                if fn in names:
                    label = what
                    break
            phases[label] += c
        tot = sum(phases.values()) or 1
        print("connection threads, wall time per commit by request phase (sum = clients / rate):")
        for label, c in phases.most_common():
            us = c / self.args.rate / commits * 1e6
            print(f"   {us:8.1f} µs  {c / tot:5.0%}  {label}")
        res["request_phases_us"] = {
            k: v / self.args.rate / commits * 1e6 for k, v in phases.most_common()
        }

    # 5. perf record -------------------------------------------------------------------

    def perf_record(self) -> dict:
        d = tempfile.mkdtemp(prefix="perf_")
        data = os.path.join(d, "perf.data")
        rec = ["perf", "record", "-q", "-g", "-F", "499", "-o", data, "-p", str(self.primary)]
        rec += ["--", "sleep", str(self.args.seconds)]
        subprocess.run(rec, capture_output=True, text=True, timeout=self.args.seconds + 60)
        out = {}
        for key, sort in (("symbols", "dso,sym"), ("dsos", "dso")):
            rep = ["perf", "report", "-i", data, "--no-children", "--stdio", "-g", "none"]
            rep += ["--sort", sort, "--percent-limit", "0.7"]
            p = subprocess.run(rep, capture_output=True, text=True, timeout=300)
            out[key] = [ln for ln in p.stdout.splitlines() if ln.strip() and not ln.startswith("#")]
        shutil.rmtree(d, ignore_errors=True)
        return out

    def report_perf_record(self, res: dict) -> None:
        print("on-CPU samples of the primary by DSO (perf record -g, --no-children):")
        for ln in res["dsos"][:8]:
            print("  " + ln.strip())
        print("by symbol:")
        for ln in res["symbols"][: self.args.top + 8]:
            print("  " + ln.strip())


# --- main -----------------------------------------------------------------------------


def deployment_pids(d: Path, primary: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for m in deploy.load(d)["members"]:
        name = m["name"]
        role = "primary" if name == primary else f"member {name}"
        with contextlib.suppress(Exception):
            out[role] = int(deploy.member_op(d, name, "status")["pid"])
        with contextlib.suppress(Exception):
            out[f"agent {name}"] = int((d / name / "agent.pid").read_text())
    with contextlib.suppress(Exception):
        out["arbiter"] = int((d / "arbiter" / "arbiter.pid").read_text())
    return out


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=3.0, help="per phase")
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--ack", choices=("durable", "received"), default="durable")
    ap.add_argument("--client-mode", choices=("threads", "processes"), default="threads")
    ap.add_argument("--rate", type=int, default=100, help="py-spy samples/s")
    ap.add_argument("--native", action="store_true", help="py-spy --native (C frames too)")
    ap.add_argument("--perf-record", action="store_true", help="also perf record -g")
    ap.add_argument("--no-perf", action="store_true", help="skip perf stat")
    ap.add_argument("--no-py-spy", action="store_true")
    ap.add_argument("--top", type=int, default=12)
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--dir", default=".", help="parent of the scratch directory")
    ap.add_argument("--keep", action="store_true")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    have_spy = not args.no_py_spy and shutil.which("py-spy") is not None
    have_perf = shutil.which("perf") is not None
    scratch = Path(tempfile.mkdtemp(prefix="profile_member_tmp", dir=args.dir)).resolve()
    system = Deployed(f"irisrep-{args.ack}", args.ack)
    clients = None

    def _terminate(_signo, _frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _terminate)
    try:
        system.start(scratch)
        from irisrep import connect

        with connect(system.addresses, user=system.user, password=system.password) as c:
            primary = c.status()["member"]
        pids = deployment_pids(system.dir, primary)
        print(f"deployment up in {scratch}: primary {primary} pid {pids.get('primary')}; {pids}")
        clients = Clients(system, args.clients, args.client_mode)
        clients.start()
        time.sleep(args.warmup)
        run = Run(args, system, clients, pids)
        run.names = thread_names(run.primary)
        run.out["args"] = vars(args)
        run.out["threads"] = {str(k): v for k, v in run.names.items()}

        res = run.phase("baseline (no profiler)", run.baseline)
        run.report_baseline(res)
        if have_perf and not args.no_perf:
            res = run.phase("perf-stat (syscall counting)", run.perf_stat)
            run.report_perf_stat(res)
        if have_spy:
            res = run.phase("py-spy wall clock", lambda: run.py_spy(False))
            run.report_py_spy(res, gil=False)
            res = run.phase("py-spy --gil", lambda: run.py_spy(True))
            run.report_py_spy(res, gil=True)
        else:
            print("\n(py-spy not found: pip install py-spy; no Python-level profile)")
        if have_perf and args.perf_record:
            res = run.phase("perf-record -g", run.perf_record)
            run.report_perf_record(res)
        if args.json:
            for ph in run.out["phases"].values():
                ph.pop("stacks", None)
            Path(args.json).write_text(json.dumps(run.out, indent=1, default=str))
        return 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        if clients is not None:
            clients.stop()
        system.stop()
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
