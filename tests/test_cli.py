"""The `irisrep` command, run for real: a subprocess of `python -m irisrep.cli`.

Checks what a user sees: exit status (0 ok, 1 a problem found, 2 bad usage), the
summary line and error lines, the `--json` report, and that bad input gives a clear
message rather than a Python traceback. `integrity` must only read: the file is
byte-for-byte the same afterwards.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

import irisrep
from irisrep.constants import BLOCK_HEADER_SIZE, BLOCK_SIZE, BT_LEAF

SRC = str(Path(irisrep.__file__).resolve().parent.parent)
NODES = 3000  # enough for a tree of height 2 and an overflow chain


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    # The same irisrep this test imported, whatever the working directory.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [SRC, env.get("PYTHONPATH")]))
    env.pop("FORCE_COLOR", None)
    env["NO_COLOR"] = "1"
    return subprocess.run(
        [sys.executable, "-m", "irisrep.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=120,
    )


def flat(text: str) -> str:
    """Output with rich's line wrapping undone (it wraps at 80 columns off a terminal)."""
    return " ".join(text.split())


def no_traceback(proc: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stdout, proc.stdout


@pytest.fixture
def instance(tmp_path: Path) -> Path:
    """A fresh instance directory `inst` with NODES nodes in two globals."""
    with irisrep.open(tmp_path / "inst") as db:
        g = db.globals["acct"]
        for i in range(NODES - 1):
            g["customer", i] = f"value {i} " * 4
        db.globals["blob"]["x"] = "y" * 20_000  # an overflow chain
    return tmp_path / "inst"


def _tree_block(data: bytes, btype: int) -> int:
    """The first block >= 1 of the given type (read from the raw file)."""
    for b in range(1, len(data) // BLOCK_SIZE):
        if data[b * BLOCK_SIZE + 16] == btype:  # IR_OFF_TYPE
            return b
    raise AssertionError(f"no block of type {btype} in the file")


def test_version(tmp_path):
    proc = run("--version", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "irisrep" in proc.stdout and irisrep.__version__ in proc.stdout


def test_help_lists_integrity(tmp_path):
    proc = run("--help", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "integrity" in proc.stdout


def test_console_script_entry_point():
    try:
        eps = metadata.entry_points(group="console_scripts", name="irisrep")
    except metadata.PackageNotFoundError:  # pragma: no cover - not installed
        pytest.skip("irisrep is not installed (no entry points)")
    if not eps:
        pytest.skip("irisrep is not installed (no entry points)")
    assert {ep.value for ep in eps} == {"irisrep.cli:main"}


def test_integrity_ok(instance):
    before = (instance / "DB.dat").read_bytes()
    proc = run("integrity", "inst", cwd=instance.parent)
    no_traceback(proc)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = flat(proc.stdout)
    assert "DB.dat: OK" in out
    assert f"{NODES} nodes" in out
    assert (instance / "DB.dat").read_bytes() == before, "integrity changed the file"


def test_integrity_json(instance):
    proc = run("integrity", "--json", str(instance), cwd=instance.parent)
    no_traceback(proc)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    assert report["ok"] is True
    [db] = report["databases"]
    assert db["ok"] is True and db["errors"] == []
    assert db["path"].endswith("DB.dat")
    assert db["nodes"] == NODES
    assert db["height"] >= 2
    assert db["overflow_blocks"] >= 1
    assert db["blocks"] == (instance / "DB.dat").stat().st_size // BLOCK_SIZE
    assert db["tree_blocks"] + db["overflow_blocks"] + db["free_blocks"] == db["blocks"] - 1


def test_integrity_one_file(instance):
    proc = run("integrity", "inst/DB.dat", cwd=instance.parent)
    no_traceback(proc)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "OK" in proc.stdout


def test_integrity_flags_a_flipped_byte(instance):
    path = instance / "DB.dat"
    data = bytearray(path.read_bytes())
    block = _tree_block(data, BT_LEAF)
    data[block * BLOCK_SIZE + BLOCK_HEADER_SIZE + 10] ^= 0x40  # inside the payload
    path.write_bytes(bytes(data))

    proc = run("integrity", "inst", cwd=instance.parent)
    no_traceback(proc)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    out = flat(proc.stdout)
    assert "ERROR" in out
    assert f"block {block}" in out and "checksum" in out, out
    assert path.read_bytes() == bytes(data), "integrity changed the file"

    proc = run("integrity", "--json", "inst", cwd=instance.parent)
    assert proc.returncode == 1
    report = json.loads(proc.stdout)
    assert report["ok"] is False
    errors = report["databases"][0]["errors"]
    assert any(f"block {block}" in e and "checksum" in e for e in errors), errors


def test_integrity_missing_path(tmp_path):
    proc = run("integrity", "no-such-dir", cwd=tmp_path)
    no_traceback(proc)
    assert proc.returncode != 0
    assert "no-such-dir" in proc.stderr


@pytest.mark.parametrize(
    "make",
    [
        pytest.param("empty_dir", id="directory-without-dat"),
        pytest.param("text_file", id="file-not-dat"),
        pytest.param("dir_named_dat", id="directory-named-dat"),
    ],
)
def test_integrity_no_database_here(tmp_path, make):
    if make == "empty_dir":
        (tmp_path / "target").mkdir()
    elif make == "text_file":
        (tmp_path / "target").write_text("not a database\n")
    else:
        (tmp_path / "target.dat").mkdir()
    target = "target.dat" if make == "dir_named_dat" else "target"
    proc = run("integrity", target, cwd=tmp_path)
    no_traceback(proc)
    assert proc.returncode != 0
    message = flat(proc.stderr + proc.stdout)
    assert target in message


@pytest.mark.parametrize(
    "content, words",
    [
        (os.urandom(3 * BLOCK_SIZE), "not an irisrep database"),
        (b"\0" * 100, "short"),
        (b"", "DB.dat"),
    ],
    ids=["random-bytes", "short", "empty"],
)
def test_integrity_garbage_file(tmp_path, content, words):
    (tmp_path / "inst").mkdir()
    path = tmp_path / "inst" / "DB.dat"
    path.write_bytes(content)
    proc = run("integrity", "inst", cwd=tmp_path)
    no_traceback(proc)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert words in flat(proc.stdout)
    assert path.read_bytes() == content, "integrity changed the file"

    proc = run("integrity", "--json", "inst", cwd=tmp_path)
    no_traceback(proc)
    assert proc.returncode == 1
    assert json.loads(proc.stdout)["ok"] is False


def test_demo_local_runs_and_checks_every_step(tmp_path):
    proc = run("demo", "--local", "--dir", str(tmp_path / "demo"), cwd=tmp_path)
    no_traceback(proc)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = flat(proc.stdout)
    assert "congratulations" in out and "<SUBSCRIPT>" in out and "demo passed" in out
    assert "OK: 5 nodes" in out and "end: zero" in out


def test_wij_status_and_integrity_report_pending_recovery(tmp_path):
    import os as _os

    path = tmp_path / "inst"
    child = (
        "import sys\n"
        "from irisrep.database import Database\n"
        "db = Database(sys.argv[1], write_daemon=False)\n"
        "g = db.globals['w']\n"
        "for i in range(500): g[i] = 'v' * 30\n"
        "db.flush()\n"
    )
    env = dict(_os.environ, IRISREP_CRASH_AT="wij_after_active_fsync")
    proc = subprocess.run([sys.executable, "-c", child, str(path)], env=env, timeout=60)
    assert proc.returncode == -9  # killed with the WIJ active and durable
    st = run("wij", "status", str(path), cwd=tmp_path)
    assert st.returncode == 1 and "recovery PENDING" in flat(st.stdout), st.stdout
    js = run("wij", "status", str(path), "--json", cwd=tmp_path)
    assert json.loads(js.stdout)["state"] == "active"
    ig = run("integrity", str(path), cwd=tmp_path)
    assert ig.returncode == 1 and "WIJ recovery pending" in flat(ig.stdout)
    import irisrep

    irisrep.open(path).close()  # recovery on open
    st = run("wij", "status", str(path), cwd=tmp_path)
    assert st.returncode == 0 and "stopped cleanly" in flat(st.stdout)
    ig = run("integrity", str(path), cwd=tmp_path)
    assert ig.returncode == 0 and "WIJ empty" in flat(ig.stdout)


def test_demo_the_mirror_walkthrough(tmp_path):
    """`irisrep demo` (the README's first command): every step of the walkthrough,
    with real processes, and nothing left running after it."""
    proc = run("demo", cwd=tmp_path)
    no_traceback(proc)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = flat(proc.stdout)
    for text in (
        "congratulations",
        "<PROTECT>",
        "what next?",
        "demo passed",
        "B refuses with <PROTECT>",
        "A refuses with <PROTECT>",
        # `irisrep ps` after the restart: the roles swapped, in a new epoch.
        "failover safe: A is Active behind B (epoch 2)",
        "planned handover",  # the history's second epoch
    ):
        assert text in out, text
    # Each command's output in the order it printed it (up: its steps, then the result).
    assert out.index("started the arbiter") < out.index("mirror MIRROR is up")
    titles = re.findall(r"^(\d+)\. ", proc.stdout, re.M)
    assert titles == [str(i) for i in range(1, 9)], titles  # 7 steps and the teardown
    leftovers = subprocess.run(["pgrep", "-f", "irisrep-demo-"], capture_output=True, text=True)
    assert leftovers.stdout.strip() == "", leftovers.stdout


def _pids_alive(d: Path) -> list[int]:
    """The agents and members of deployment `d` still running (by their pid files
    and by their command lines naming `d`)."""
    found = subprocess.run(["pgrep", "-f", str(d)], capture_output=True, text=True)
    return [int(x) for x in found.stdout.split()]


def test_demo_ctrl_c_tears_everything_down(tmp_path):
    """Ctrl-C in the middle of `irisrep demo` on a terminal: it says at which step,
    exits 130, and nothing it started is left running; its directory is removed."""
    pexpect = pytest.importorskip("pexpect")
    env = dict(os.environ, TERM="xterm", NO_COLOR="1", COLUMNS="200")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [SRC, env.get("PYTHONPATH")]))
    child = pexpect.spawn(
        sys.executable, ["-m", "irisrep", "demo"], env=env, encoding="utf-8", timeout=120
    )
    try:
        child.expect(r"mirror MIRROR is up in (\S+):")
        d = Path(child.match.group(1))
        assert _pids_alive(d)
        child.expect(r"3(?:\x1b\[[0-9;]*m)*\. On the backup B")  # the step's title (bold)
        child.sendintr()
        child.expect(pexpect.EOF)
        out = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", child.before)  # without the styles
        child.close()
    finally:
        if child.isalive():
            child.terminate(force=True)
    assert child.exitstatus == 130, out
    assert "interrupted at step 3: tearing down" in out and "stopped: A, B, arbiter" in out
    assert "Traceback" not in out
    assert _pids_alive(d) == [] and not d.exists()


def test_demo_names_the_step_that_differs_and_leaves_a_running_mirror_alone(tmp_path):
    """A step that does not go as the walkthrough says stops the demo with its number
    and exit status 1. Here step 1 finds a mirror already running in --dir: it is not
    the demo's, so it is neither used nor torn down."""
    d = tmp_path / "m"
    up = run("up", "--dir", str(d), "--qos-ms", "1000", cwd=tmp_path)
    assert up.returncode == 0, up.stderr
    try:
        proc = run("demo", "--dir", str(d), cwd=tmp_path)
        no_traceback(proc)
        assert proc.returncode == 1
        assert "demo failed at step 1: a mirror already runs in" in flat(proc.stderr)
        assert "Tear down" not in proc.stdout
        rows = json.loads(run("ps", "--dir", str(d), "--json", cwd=tmp_path).stdout)
        assert rows["failover_safe"] and {r["member"] for r in rows["members"]} == {"A", "B"}
        assert all(r["process"].startswith("running") for r in rows["members"])
    finally:
        run("down", "--dir", str(d), cwd=tmp_path)
    assert _pids_alive(d) == []
