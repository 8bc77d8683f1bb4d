"""Partitions with real processes inside a network namespace: each failover member
(with its agent) on its own 127.0.0.x address and the arbiter on another, links cut
and healed with iptables, and the IRIS outcomes checked: no split brain, nothing
acknowledged lost.

- primary-backup cut (the arbiter sees both): no failover; the primary goes on alone
  after the QoS timeout (the arbiter confirms agent-controlled mode); healed, the
  backup catches up;
- primary isolated (from the backup and the arbiter): it is In Trouble and commits
  nothing; the arbiter grants the backup the takeover; healed, the old primary is
  fenced by the newer epoch, drops the tail nobody acknowledged, and follows;
- arbiter down first, then the primary cut off: agent-controlled, so no failover;
  the primary goes on alone.

Skipped with the reason where the machine cannot (not root, no `ip`, no iptables)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import pytest
from mirrorkit import cli, ps_rows
from mirrorkit import wait_ps as _wait_ps

NS = f"irisrep-part-{os.getpid()}"
HOST_A, HOST_B, HOST_ARB = "127.0.0.2", "127.0.0.3", "127.0.0.4"


def _can_partition() -> str:
    if os.geteuid() != 0:
        return "needs root for ip netns and iptables"
    for tool in ("ip", "iptables"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    p = subprocess.run(["ip", "netns", "add", NS + "-probe"], capture_output=True, text=True)
    if p.returncode != 0:
        return f"ip netns does not work here: {p.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", NS + "-probe"], capture_output=True)
    return ""


_why = _can_partition()
pytestmark = pytest.mark.skipif(bool(_why), reason=_why or "ok")


def ns(*cmd, check=True, timeout=120):
    p = subprocess.run(
        ["ip", "netns", "exec", NS, *cmd], capture_output=True, text=True, timeout=timeout
    )
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} -> {p.returncode}\n{p.stdout}\n{p.stderr}")
    return p


def irisrep(*args, check=True):
    return cli(*args, check=check, prefix=("ip", "netns", "exec", NS))


def ps(d):
    return ps_rows(d, ("ip", "netns", "exec", NS))


def wait_ps(d, pred, what, timeout_s=40):
    return _wait_ps(d, pred, what, timeout_s, ("ip", "netns", "exec", NS))


def cut(action: str, pairs=((HOST_A, HOST_B),)) -> None:
    for a, b in pairs:
        for src, dst in ((a, b), (b, a)):
            ns("iptables", action, "INPUT", "-s", src, "-d", dst, "-j", "DROP")


def up(d):
    irisrep(
        "up",
        "--dir",
        d,
        "--addresses",
        f"{HOST_A},{HOST_B}",
        "--arbiter-address",
        HOST_ARB,
        "--qos-ms",
        "500",
    )
    # Arbiter-controlled once both members and the arbiter see each other.
    time.sleep(1.0)


def read_on(d, member, expect, timeout_s=20):
    deadline = time.monotonic() + timeout_s
    while True:
        out = irisrep("session", "--dir", d, member, "-c", "Write $Get(^p)").stdout.strip()
        if out == expect or time.monotonic() > deadline:
            return out
        time.sleep(0.1)


@pytest.fixture
def netns():
    subprocess.run(["ip", "netns", "add", NS], check=True)
    try:
        subprocess.run(["ip", "netns", "exec", NS, "ip", "link", "set", "lo", "up"], check=True)
        yield NS
    finally:
        subprocess.run(["ip", "netns", "del", NS], capture_output=True)


def test_primary_backup_cut_primary_alone_backup_waits_then_heals(tmp_path, netns):
    d = str(tmp_path / "m")
    up(d)
    try:
        rows = ps(d)
        assert rows["A"]["address"].startswith(HOST_A) and rows["B"]["address"].startswith(HOST_B)
        irisrep("session", "--dir", d, "A", "-c", "Set ^p=1")
        cut("-I")
        t0 = time.monotonic()
        # The primary pauses at most about one QoS, then goes on alone.
        irisrep("session", "--dir", d, "A", "-c", "Set ^p=2")
        assert time.monotonic() - t0 < 15
        rows = wait_ps(d, lambda r: r["A"]["active_backup"] is None, "B declared not Active")
        # The backup can reach neither A nor A's agent: it must not take over.
        time.sleep(3)
        rows = ps(d)
        assert rows["A"]["role"] == "primary" and rows["B"]["role"] == "backup"
        assert rows["B"]["epoch"] == 1
        irisrep("session", "--dir", d, "A", "-c", "Set ^p=3")
        cut("-D")
        wait_ps(d, lambda r: r["A"]["active_backup"] == "B", "B Active again after healing")
        deadline = time.monotonic() + 20
        while True:
            out = irisrep("session", "--dir", d, "B", "-c", "Write $Get(^p)").stdout.strip()
            if out == "3" or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert out == "3"
    finally:
        irisrep("down", "--dir", d, check=False)


def test_primary_isolated_backup_takes_over_on_the_arbiters_word(tmp_path, netns):
    d = str(tmp_path / "m")
    up(d)
    try:
        irisrep("session", "--dir", d, "A", "-c", "Set ^p=1")
        cut("-I", ((HOST_A, HOST_B), (HOST_A, HOST_ARB)))
        # In Trouble: this commit never returns while A is cut off.
        with pytest.raises(subprocess.TimeoutExpired):
            ns(
                sys.executable,
                "-m",
                "irisrep",
                "session",
                "--dir",
                d,
                "A",
                "-c",
                "Set ^p=2",
                timeout=4,
            )
        rows = wait_ps(d, lambda r: r["B"]["role"] == "primary", "B to take over")
        assert rows["B"]["epoch"] == 2
        irisrep("session", "--dir", d, "B", "-c", "Set ^p=3")
        cut("-D", ((HOST_A, HOST_B), (HOST_A, HOST_ARB)))
        rows = wait_ps(
            d,
            lambda r: r["A"]["role"] == "backup" and r["B"]["active_backup"] == "A",
            "A fenced, following B",
        )
        assert read_on(d, "A", "3") == "3"  # A's unacknowledged ^p=2 was dropped
        assert read_on(d, "B", "3") == "3"
        hist = json.loads(irisrep("history", "--dir", d, "--json").stdout)
        undone = [e for e in hist if e["event"] == "tail undone" and e["member"] == "A"]
        assert undone and undone[0]["records"] >= 1  # the report of what A undid
    finally:
        irisrep("down", "--dir", d, check=False)


def test_arbiter_down_first_then_primary_cut_no_failover(tmp_path, netns):
    d = str(tmp_path / "m")
    up(d)
    try:
        irisrep("stop", "--dir", d, "arbiter")
        time.sleep(2.0)  # both members see the arbiter gone: agent-controlled, confirmed
        cut("-I")
        t0 = time.monotonic()
        irisrep("session", "--dir", d, "A", "-c", "Set ^p=5")  # alone after the QoS
        assert time.monotonic() - t0 < 15
        time.sleep(3.0)
        rows = ps(d)
        assert rows["A"]["role"] == "primary" and rows["B"]["role"] == "backup"
        assert rows["B"]["epoch"] == 1
        cut("-D")
        wait_ps(d, lambda r: r["A"]["active_backup"] == "B", "B Active again")
        assert read_on(d, "B", "5") == "5"
    finally:
        irisrep("down", "--dir", d, check=False)
