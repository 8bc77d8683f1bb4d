"""`irisrep demo`: the IRIS mirroring walkthrough (DESIGN.md section 4), for real.

Owns the narrated walkthrough on this machine: it deploys a mirror on 127.0.0.1 (two
failover members under their agents, and an arbiter), then runs, with the real
`irisrep` commands in real processes, each step a newcomer would type, printing the
command and its real output and checking the outcome. A step that differs stops the
demo with its number and exit status 1. Everything it started is torn down at the
end, also on failure and on Ctrl-C.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .deploy import DEPLOY_FILE, agents


class DemoFailed(Exception):
    """A step's outcome differs from the walkthrough's."""


class Walkthrough:
    def __init__(self, console, err_console, dirpath: str | None = None) -> None:
        self.console = console
        self.err = err_console
        self.own = dirpath is None
        # Short, so the agents' UNIX sockets fit (108 bytes).
        self.dir = dirpath or tempfile.mkdtemp(prefix="irisrep-demo-")
        self.step_no = 0
        self.up = False

    # --- narration ------------------------------------------------------------------------

    def step(self, title: str) -> None:
        self.step_no += 1
        self.console.print(f"\n[bold cyan]{self.step_no}. {title}[/]")

    def run(
        self, *args: str, expect_rc: int = 0, quiet: bool = False
    ) -> subprocess.CompletedProcess:
        shown = " ".join(shlex.quote(a) for a in ("irisrep", *args))
        # stderr into stdout: the output shown in the order the command printed it
        # (`up` narrates on stderr, then prints its result on stdout).
        p = subprocess.run(
            [sys.executable, "-m", "irisrep", *args, "--dir", self.dir],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=180,
            env=dict(os.environ, COLUMNS="160"),  # tables whole, not cut to 80 columns
        )
        if not quiet:
            self.console.print(f"   [dim]$[/] {shown}", highlight=False)
            for line in p.stdout.rstrip().splitlines():
                self.console.print(f"     {line}", markup=False, highlight=False)
        if p.returncode != expect_rc:
            raise DemoFailed(
                f"`{shown}` exited with {p.returncode}, expected {expect_rc}: "
                f"{p.stdout.strip()[-500:]}"
            )
        return p

    def check(self, what: str, got, want) -> None:
        if got != want:
            raise DemoFailed(f"{what}: expected {want!r}, got {got!r}")
        self.console.print(f"   [green]ok[/] {what}", highlight=False)

    def read(self, member: str, want: str, timeout_s: float = 20.0) -> str:
        """Write ^myfirstglobal on a member, waiting (a copy may be a moment behind)."""
        deadline = time.monotonic() + timeout_s
        while True:
            p = self.run("session", member, "-c", "Write ^myfirstglobal", quiet=True)
            out = p.stdout.strip()
            if out == want or time.monotonic() > deadline:
                self.run("session", member, "-c", "Write ^myfirstglobal")
                return out
            time.sleep(0.1)

    def roles(self, want: dict, timeout_s: float = 30.0) -> dict:
        """The members' roles, once they are `want` and the primary's backup is
        Active again (or whatever they are after `timeout_s`)."""
        deadline = time.monotonic() + timeout_s
        while True:
            p = self.run("ps", "--json", quiet=True)
            rows = {r["member"]: r for r in json.loads(p.stdout)["members"]}
            roles = {m: r["role"] for m, r in rows.items()}
            primary = next((r for r in rows.values() if r["role"] == "primary"), {})
            if roles == want and primary.get("active_backup"):
                return roles
            if time.monotonic() > deadline:
                return roles
            time.sleep(0.2)

    # --- the walkthrough -------------------------------------------------------------------

    def run_all(self) -> None:
        self.step("Deploy a mirror: two failover members (A, B) and an arbiter, on 127.0.0.1")
        if (Path(self.dir) / DEPLOY_FILE).exists() and any(
            a.get("agent_running") for a in agents(Path(self.dir))
        ):
            # Not ours to tear down: leave it running.
            raise DemoFailed(
                f"a mirror already runs in {self.dir}: give the demo a directory of its own"
            )
        self.up = True
        self.run("up", "--qos-ms", "1000")
        self.run("inventory")
        self.step('On the primary A: Set ^myfirstglobal="congratulations"')
        self.run("session", "A", "-c", 'Set ^myfirstglobal="congratulations"')
        self.step("On the backup B: Write ^myfirstglobal")
        self.check("B holds it", self.read("B", "congratulations"), "congratulations")
        self.step("On the backup B: Set ^myfirstglobal (the backup is read-only)")
        p = self.run("session", "B", "-c", 'Set ^myfirstglobal="from the backup"', expect_rc=1)
        self.check("B refuses with <PROTECT>", "<PROTECT>" in p.stdout, True)
        self.step("Stop and restart the primary A: it hands over to B and comes back as backup")
        self.run("stop", "A", "--restart")
        roles = self.roles({"A": "backup", "B": "primary"})
        self.check("roles", roles, {"A": "backup", "B": "primary"})
        self.run("ps", "--table")
        self.step('On the new primary B: Set ^myfirstglobal="what next?"')
        self.run("session", "B", "-c", 'Set ^myfirstglobal="what next?"')
        self.step("On the former primary A, now backup: Write, then Set")
        self.check("A holds the new value", self.read("A", "what next?"), "what next?")
        p = self.run(
            "session", "A", "-c", 'Set ^myfirstglobal="another irisrep demo!"', expect_rc=1
        )
        self.check("A refuses with <PROTECT>", "<PROTECT>" in p.stdout, True)
        self.run("history")
        self.console.print("\n[bold green]demo passed[/]: the mirror walkthrough, step by step")

    def teardown(self) -> None:
        if self.up:
            self.console.print(f"\n[bold cyan]{self.step_no + 1}. Tear down[/]")
            try:
                self.run(*(("down", "--purge") if self.own else ("down",)))
            except (DemoFailed, subprocess.TimeoutExpired, OSError) as e:
                self.err.print(f"[yellow]teardown: {e}[/]")
        if self.own:
            shutil.rmtree(self.dir, ignore_errors=True)


def run_demo(console, err_console, dirpath: str | None = None) -> int:
    w = Walkthrough(console, err_console, dirpath)
    try:
        w.run_all()
        return 0
    except DemoFailed as e:
        err_console.print(f"[red]demo failed at step {w.step_no}: {e}[/]")
        return 1
    except KeyboardInterrupt:
        err_console.print(f"[yellow]interrupted at step {w.step_no}: tearing down[/]")
        return 130
    finally:
        w.teardown()
