"""The status commands and progress bars as an operator sees them on a terminal:
the real `irisrep` commands on a pseudo terminal (pexpect) or a pipe, against a
real local mirror (`irisrep up`) or a real instance directory.

`irisrep ps` draws a table under its failover-safety line on a terminal and prints
JSON (the same verdict, then the rows) when piped; `--watch` redraws as the mirror
changes and ends on Ctrl-C; every column is there and no lag cell is blank. The
rich progress bars of catch-up (`start --wait`), the integrity walk and journal
verify, backup and restore are drawn on a terminal, and never when the output is
piped.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
from mirrorkit import cli, deployed, wait_ps

import irisrep

pexpect = pytest.importorskip("pexpect")

PS_COLUMNS = (
    "member",
    "address",
    "process",
    "health",
    "mirror role",
    "status",
    "journal transfer",
    "dejournaling",
    "lag",
    "epoch",
    "arbiter link",
)
BAR = "━"  # rich's bar glyph


def spawn(*args: str, timeout: float = 60) -> pexpect.spawn:
    """`irisrep ARGS` on a wide pseudo terminal (tables whole, bars drawn)."""
    env = dict(os.environ, TERM="xterm", COLUMNS="250", LINES="50")
    env.pop("NO_COLOR", None)
    return pexpect.spawn(
        sys.executable,
        ["-m", "irisrep", *args],
        env=env,
        encoding="utf-8",
        timeout=timeout,
        dimensions=(50, 250),
    )


def finish(child: pexpect.spawn) -> tuple[int, str]:
    """Wait for the end: (exit status, everything printed)."""
    child.expect(pexpect.EOF)
    out = child.before
    child.close()
    return child.exitstatus, out


def styled(text: str) -> re.Pattern:
    """`text` as rich draws it on a terminal: escape sequences may sit between words."""
    esc = r"(?:\x1b\[[0-9;?]*[A-Za-z])*"
    return re.compile(esc.join(re.escape(ch) for ch in text))


def plain(text: str) -> str:
    """The text without terminal escape sequences."""
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)


@pytest.fixture(scope="module")
def mirror(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("tty") / "m")
    with deployed(d, "--qos-ms", "1000"):
        yield d


def test_ps_on_a_terminal_is_a_table_with_every_column(mirror):
    status, out = finish(spawn("ps", "--dir", mirror))
    assert status == 0, out
    text = plain(out)
    assert "failover safe: B is Active behind A (epoch 1)" in text
    header = next(line for line in text.splitlines() if "member" in line and "arbiter" in line)
    for col in PS_COLUMNS:
        assert col in header, (col, header)
    rows = [line for line in text.splitlines() if line.startswith("│")]
    assert len(rows) == 2
    for row in rows:
        cells = [c.strip() for c in row.strip("│").split("│")]
        assert len(cells) == len(PS_COLUMNS) and all(cells), row  # no blank cell
        assert cells[PS_COLUMNS.index("lag")] == "caught up"
    assert "Traceback" not in out


def test_ps_piped_is_json_with_the_verdict_and_every_field(mirror):
    p = subprocess.run(
        [sys.executable, "-m", "irisrep", "ps", "--dir", mirror],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)  # no table, no escape sequence: JSON
    assert doc["failover_safe"] is True and doc["why"] == "B is Active behind A (epoch 1)"
    rows = {r["member"]: r for r in doc["members"]}
    assert sorted(rows) == ["A", "B"]
    fields = [c.replace(" ", "_").replace("mirror_role", "role") for c in PS_COLUMNS]
    for r in rows.values():
        for f in fields:
            assert r[f] not in (None, ""), (r["member"], f, r[f])
    assert rows["A"]["role"] == "primary" and rows["B"]["role"] == "backup"
    # --table on a pipe: the same verdict, as the header line.
    t = cli("ps", "--dir", mirror, "--table").stdout
    assert t.splitlines()[0] == "failover safe: B is Active behind A (epoch 1)"


def test_ps_watch_follows_a_change_then_ctrl_c_and_the_catch_up_bar(mirror):
    watch = spawn("ps", "--dir", mirror, "--watch")
    try:
        watch.expect(styled("failover safe: B is Active behind A"))
        cli("kill", "--dir", mirror, "B")
        # The same running `ps --watch` redraws with the backup gone and the verdict turned.
        watch.expect(styled("failover NOT safe: A has no Active backup"))
        watch.expect(styled("unknown (down)"))  # B's lag: never blank
        watch.sendintr()
        status, out = finish(watch)
        assert status == 0 and "Traceback" not in out
    finally:
        if watch.isalive():
            watch.terminate(force=True)
    cli("session", "--dir", mirror, "A", "-c", "Set ^missed=1")
    # `start --wait` on a terminal: a catch-up bar until B is Active again.
    status, out = finish(spawn("start", "--dir", mirror, "B", "--wait"))
    assert status == 0, out
    assert "B catch-up" in out and BAR in out, out
    assert "B: caught up (Active backup)" in plain(out)
    wait_ps(mirror, lambda r: r["A"]["active_backup"] == "B", "B Active again")
    # Piped: no bar, only the lines.
    cli("kill", "--dir", mirror, "B")
    wait_ps(mirror, lambda r: r["A"]["active_backup"] is None, "B dropped")
    p = cli("start", "--dir", mirror, "B", "--wait")
    assert "B: caught up (Active backup)" in p.stdout
    assert BAR not in p.stderr and "\x1b[" not in p.stderr


@pytest.fixture(scope="module")
def instance(tmp_path_factory):
    path = tmp_path_factory.mktemp("bars") / "inst"
    with irisrep.open(path) as db:
        g = db.globals["bars"]
        for i in range(3000):
            g[i] = "v" * 100
    return str(path)


@pytest.mark.parametrize(
    "args, label, summary",
    [
        (("integrity",), "integrity", "OK"),
        (("journal", "verify"), "journal verify", "OK"),
    ],
)
def test_progress_bars_on_a_terminal_and_not_when_piped(instance, args, label, summary):
    status, out = finish(spawn(*args, instance))
    assert status == 0, out
    assert label in out and BAR in out, out  # the bar was drawn (then cleared)
    assert summary in plain(out)
    p = subprocess.run(
        [sys.executable, "-m", "irisrep", *args, instance],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 0 and summary in p.stdout
    assert p.stderr == ""  # piped: no bar


def test_backup_and_restore_bars_on_a_terminal(instance, tmp_path):
    out_dir = tmp_path / "backups"
    status, out = finish(spawn("backup", "create", instance, "--out", str(out_dir)))
    assert status == 0, out
    assert "backup" in out and BAR in out, out
    (full,) = sorted(out_dir.glob("*.irbk"))
    status, out = finish(spawn("restore", str(full), "--target", str(tmp_path / "r")))
    assert status == 0, out
    assert "restore" in out and BAR in out, out
    assert "Traceback" not in out
    p = subprocess.run(
        [sys.executable, "-m", "irisrep", "integrity", str(tmp_path / "r")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 0, p.stdout + p.stderr
