"""The local deployment as a user drives it: `irisrep up`, `session`, `ps`,
`inventory`, `kill`, `start`, `stop --restart`, `down`, all as real commands with
real agent and member processes on 127.0.0.1, plus `irisrep.connect` against it."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time

import pytest
from mirrorkit import cli, ps_rows, wait_ps

import irisrep
from irisrep.deploy import credentials, load


def run(*args, check=True, timeout=120):
    return cli(*args, check=check, timeout=timeout)


def ps(d):
    return ps_rows(d)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


@pytest.fixture
def mirror(tmp_path):
    d = str(tmp_path / "m")
    run("up", "--dir", d, "--asyncs", "1", "--qos-ms", "300")
    agent_pids = [int((tmp_path / "m" / n / "agent.pid").read_text()) for n in ("A", "B", "C1")]
    yield d
    run("down", "--dir", d, check=False)
    for pid in agent_pids:
        deadline = time.monotonic() + 20
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(pid), f"agent {pid} still running after down"


def test_walkthrough_commands(mirror):
    d = mirror
    inv = {m["name"]: m for m in json.loads(run("inventory", "--dir", d, "--json").stdout)}
    assert inv["A"]["initial"] == "+" and inv["B"]["initial"] == "-"
    assert inv["C1"]["kind"] == "async-dr"
    for m in inv.values():
        assert m["client_address"].startswith("127.0.0.1:")

    p = run(
        "session",
        "--dir",
        d,
        "A",
        "-c",
        'Set ^myfirstglobal="congratulations" Write ^myfirstglobal',
    )
    assert p.stdout.strip() == "congratulations"
    for member in ("B", "C1"):
        # Reads on a copy are allowed (possibly behind: wait for it).
        deadline = time.monotonic() + 20
        while True:
            out = run("session", "--dir", d, member, "-c", 'Write $Get(^myfirstglobal,"none")')
            if out.stdout.strip() == "congratulations" or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert out.stdout.strip() == "congratulations"
        bad = run("session", "--dir", d, member, "-c", 'Set ^myfirstglobal="x"', check=False)
        assert bad.returncode == 1
        assert "<PROTECT>" in bad.stderr
    assert run("session", "--dir", d, "A", "-c", "Write ^myfirstglobal").stdout.strip() == (
        "congratulations"
    )

    assert "failover safe: B is Active behind A" in run("ps", "--dir", d, "--table").stdout
    rows = ps(d)
    assert rows["A"]["role"] == "primary" and rows["A"]["status"] == "Primary"
    assert rows["A"]["active_backup"] == "B"
    assert rows["B"]["role"] == "backup" and rows["B"]["status"] in ("Backup", "Synchronizing")
    assert rows["C1"]["role"] == "async"
    for r in rows.values():
        assert r["lag"] and r["epoch"] == 1 and r["pid"]
    assert rows["A"]["health"] == "ok" and rows["A"]["arbiter_link"] == "connected"
    assert rows["B"]["arbiter_link"] == "connected"
    assert rows["C1"]["health"] == "ok" and rows["C1"]["lag"] == "caught up"
    table = run("ps", "--dir", d, "--table").stdout
    for col in ("health", "mirror role", "arbiter link"):
        assert col in table

    # A crashed backup: the primary goes on alone, the backup comes back Active.
    run("kill", "--dir", d, "B")
    rows = wait_ps(d, lambda r: r["A"]["active_backup"] is None, "B not Active")
    assert rows["B"]["process"].startswith("crashed") and rows["B"]["status"] == "Down"
    assert rows["B"]["health"] == "down" and rows["B"]["lag"] == "unknown (down)"
    assert rows["A"]["health"] == "degraded: no Active backup"
    assert "failover NOT safe: A has no Active backup" in run("ps", "--dir", d, "--table").stdout
    run("session", "--dir", d, "A", "-c", "Set ^n=1")
    # --wait returns once B has caught up and is Active again.
    assert "B: caught up (Active backup)" in run("start", "--dir", d, "B", "--wait").stdout
    assert ps(d)["A"]["active_backup"] == "B"

    # The walkthrough: the primary stopped cleanly hands over to its Active backup and,
    # restarted, rejoins as backup; the new primary takes writes, the old refuses them.
    follower = subprocess.Popen(
        [sys.executable, "-m", "irisrep.cli", "events", "--dir", d, "--follow", "--json"],
        stdout=subprocess.PIPE,
        text=True,
    )
    run("stop", "--dir", d, "--restart", "A")
    rows = wait_ps(
        d,
        lambda r: r["B"]["active_backup"] == "A" and r["A"]["role"] == "backup",
        "A Active behind B",
    )
    assert rows["B"]["role"] == "primary"
    assert rows["B"]["epoch"] == 2 and rows["A"]["epoch"] == 2
    # `events --follow` printed the takeover as it happened.
    followed = []
    deadline = time.monotonic() + 20
    lines: queue.Queue = queue.Queue()
    threading.Thread(
        target=lambda: [lines.put(x) for x in follower.stdout], daemon=True
    ).start()  # never block past the deadline on a line that does not come
    while time.monotonic() < deadline:
        try:
            e = json.loads(lines.get(timeout=max(0.01, deadline - time.monotonic())))
        except queue.Empty:
            break
        followed.append((e["member"], e["kind"], e["text"]))
        if any(m == "B" and k == "role" and "-> primary" in t for m, k, t in followed) and any(
            m == "A" and k == "started" and "as backup" in t for m, k, t in followed
        ):
            break
    follower.terminate()
    follower.wait(10)
    assert any(m == "B" and k == "role" and "backup -> primary" in t for m, k, t in followed)
    assert any(m == "A" and k == "started" and "as backup" in t for m, k, t in followed)
    assert run("session", "--dir", d, "B", "-c", "Write $Get(^n)").stdout.strip() == "1"
    run("session", "--dir", d, "B", "-c", 'Set ^myfirstglobal="what next?"')
    bad = run(
        "session", "--dir", d, "A", "-c", 'Set ^myfirstglobal="another irisrep demo!"', check=False
    )
    assert bad.returncode == 1 and "<PROTECT>" in bad.stderr
    deadline = time.monotonic() + 20
    while True:
        out = run("session", "--dir", d, "A", "-c", "Write ^myfirstglobal").stdout.strip()
        if out == "what next?" or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert out == "what next?"

    # A planned switchover back: the report first, then the roles swap, nothing lost.
    rep = json.loads(run("switchover", "--dir", d, "--dry-run", "--json").stdout)
    assert rep["ok"] and rep["primary"] == "B"
    assert [c["member"] for c in rep["candidates"] if c["eligible"]] == ["A"]
    assert (
        rep["arbiter_link"] == "connected" and rep["candidates"][0]["arbiter_link"] == "connected"
    )
    run("switchover", "--dir", d)
    rows = wait_ps(
        d,
        lambda r: r["A"]["active_backup"] == "B" and r["B"]["role"] == "backup",
        "B Active behind A",
    )
    assert rows["A"]["role"] == "primary"
    assert rows["A"]["epoch"] == 3
    assert run("session", "--dir", d, "A", "-c", "Write ^myfirstglobal").stdout.strip() == (
        "what next?"
    )
    # The history: each change of role, with its epoch and reason.
    hist = json.loads(run("history", "--dir", d, "--json").stdout)
    changes = [(e["member"], e["from"], e["to"], e["epoch"]) for e in hist if e["event"] == "role"]
    assert ("B", "backup", "primary", 2) in changes and ("A", "primary", "backup", 1) in changes
    assert ("A", "backup", "primary", 3) in changes
    table = run("history", "--dir", d).stdout
    for col in ("old primary", "new primary", "reason", "undone tail"):
        assert col in table
    ev = [json.loads(x) for x in run("events", "--dir", d, "--json").stdout.splitlines()]
    kinds = {(e["member"], e["kind"]) for e in ev}
    assert {("A", "started"), ("B", "started"), ("A", "role"), ("B", "link")} <= kinds
    assert [e["time"] for e in ev] == sorted(e["time"] for e in ev)

    # --nofailover: the primary just stops; nobody takes over.
    run("stop", "--dir", d, "--nofailover", "A")
    rows = wait_ps(d, lambda r: r["A"]["status"] == "Down", "A down")
    assert rows["B"]["role"] == "backup"
    run("start", "--dir", d, "A")
    wait_ps(d, lambda r: r["A"]["active_backup"] == "B", "B Active behind A again")


def test_connect_routes_writes_to_the_primary(mirror):
    from pathlib import Path

    d = Path(mirror)
    dep = load(d)
    addrs = [m["client_address"] for m in dep["members"]]
    user, password = credentials(d)
    with irisrep.connect(list(reversed(addrs)), user=user, password=password) as conn:
        assert conn.status()["role"] == "primary"
        g = conn.globals["conn"]
        g["a", 1] = "x"
        with conn.transaction():
            g["a", 2] = "y"
        assert g["a", 1] == "x" and g.data(("a",)) == 10
    from irisrep.client import connect_member

    b = next(m for m in dep["members"] if m["name"] == "B")
    with connect_member(b["client_address"], user=user, password=password) as conn:
        with pytest.raises(irisrep.ProtectError):
            conn.globals["conn"]["a", 3] = "z"
    with pytest.raises(irisrep.IrisrepError):
        irisrep.connect(addrs, user=user, password="wrong")


def test_up_refuses_a_second_mirror_in_the_same_dir(mirror):
    p = run("up", "--dir", mirror, check=False)
    assert p.returncode == 1 and "already running" in p.stderr


def test_promote_a_dr_async_by_hand(mirror):
    d = mirror
    run("session", "--dir", d, "A", "-c", "Set ^dr=1")
    p = run("promote", "--dir", d, "C1", "--dry-run")
    assert "journal ends at" in p.stdout and "may lose" in p.stdout
    refused = run("promote", "--dir", d, "C1", check=False)
    assert refused.returncode == 1 and "A is primary" in refused.stderr
    run("stop", "--dir", d, "--nofailover", "B")
    run("stop", "--dir", d, "--nofailover", "A")
    p = run("promote", "--dir", d, "C1")
    assert "C1 is primary in epoch" in p.stdout
    run("session", "--dir", d, "C1", "-c", "Set ^dr=2")
    assert run("session", "--dir", d, "C1", "-c", "Write ^dr").stdout.strip() == "2"


def test_two_ups_at_once_get_their_own_ports(tmp_path):
    # Each `up` picks free ports and then starts members that bind them: two at once
    # must not pick the same ones (a machine-wide lock covers pick and start).
    from irisrep.deploy import down, up

    done: dict = {}

    def go(name):
        try:
            done[name] = up(tmp_path / name, qos_timeout_ms=2000)
        except Exception as e:  # noqa: BLE001 - reported below
            done[name] = e

    threads = [threading.Thread(target=go, args=(n,)) for n in ("x", "y")]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(180)
        assert all(isinstance(d, dict) for d in done.values()), done
        ports = [
            {m[k] for m in done[n]["members"] for k in ("mirror_address", "client_address")}
            for n in ("x", "y")
        ]
        assert not ports[0] & ports[1]
    finally:
        for n in ("x", "y"):
            down(tmp_path / n)


def _time_wait_on(port: int) -> None:
    """Leave 127.0.0.1:PORT in TIME_WAIT, as a member's port is for a minute after
    `irisrep down`: the listening side closes its connection first."""
    import socket

    with socket.socket() as lst:
        lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        lst.bind(("127.0.0.1", port))
        lst.listen()
        client = socket.create_connection(("127.0.0.1", port))
        conn, _ = lst.accept()
        conn.close()  # the server side's active close: TIME_WAIT is on PORT
        client.recv(1)  # its FIN
        client.close()
    found = subprocess.run(["ss", "-tan", "state", "time-wait"], capture_output=True, text=True)
    assert f"127.0.0.1:{port} " in found.stdout, found.stdout


def _free_port_range(n: int) -> int:
    """A base port with `n` free ports from it, below the ephemeral range: a port the
    kernel picks for a connection (the TIME_WAIT's own client, another test's) never
    lands among them, as it could next to a port bound to 0."""
    import random
    import socket

    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        ephemeral_lo = int(f.read().split()[0])
    lo = 10_000 if ephemeral_lo > 10_000 + 2 * n else 1_024
    rng = random.Random()
    for _ in range(100):
        base = rng.randrange(lo, ephemeral_lo - n)
        try:
            for port in range(base, base + n):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    pytest.skip(f"no {n} free ports in a row below {ephemeral_lo}")


def test_up_again_at_the_same_base_port_right_after_down(tmp_path):
    """`irisrep down` then `irisrep up --base-port P` at once: ports in TIME_WAIT are
    free to the members (their listeners set SO_REUSEADDR), so `up` takes them; a
    port with a listener on it is still refused."""
    import socket

    base = _free_port_range(30)
    _time_wait_on(base)
    d = str(tmp_path / "m")
    try:
        p = run("up", "--dir", d, "--base-port", str(base), "--qos-ms", "1000", check=False)
        assert p.returncode == 0, p.stderr
        assert ps(d)["A"]["address"] == f"127.0.0.1:{base + 1}"
    finally:
        run("down", "--dir", d, check=False)
    with socket.create_server(("127.0.0.1", base + 20)) as busy:
        assert busy
        p = run("up", "--dir", d, "--base-port", str(base + 20), check=False)
        assert p.returncode == 1 and "are in use" in p.stderr, p.stderr
        assert str(base + 20) in p.stderr.partition("]")[0], p.stderr


def test_history_rows_per_epoch_with_the_undone_tail():
    """`irisrep history`'s rows (deploy.epochs) from the members' history entries:
    one per epoch with the old and new primary, the reason and the position, and a
    tail a former primary undid on rejoining listed in the epoch it was undone in."""
    from irisrep.deploy import epochs

    rows = [
        {"time": 1.0, "event": "role", "member": "A", "from": "backup", "to": "primary",
         "epoch": 1, "reason": "first primary", "journal_end": 0},
        {"time": 2.0, "event": "role", "member": "A", "from": "primary", "to": "backup",
         "epoch": 1},
        {"time": 3.0, "event": "role", "member": "B", "from": "backup", "to": "primary",
         "epoch": 2, "reason": "the arbiter granted the takeover", "journal_end": 300},
        {"time": 4.0, "event": "tail undone", "member": "A", "epoch": 2, "from": 300,
         "to": 420, "records": 3},
        {"time": 5.0, "event": "role", "member": "B", "from": "primary", "to": "primary",
         "epoch": 3, "reason": "restarted", "journal_end": 500},
    ]  # fmt: skip
    got = epochs(rows)
    assert [(e["epoch"], e["old_primary"], e["new_primary"], e["journal_end"]) for e in got] == [
        (1, None, "A", 0),
        (2, "A", "B", 300),
        (3, "B (restarted)", "B", 500),
    ]
    assert got[1]["reason"] == "the arbiter granted the takeover"
    assert [(u["member"], u["from"], u["to"], u["records"]) for u in got[1]["undone"]] == [
        ("A", 300, 420, 3)
    ]
    assert got[0]["undone"] == [] and got[2]["undone"] == []
