"""Test kit: configs for a mirror on 127.0.0.1 with free ports, and waiting helpers."""

from __future__ import annotations

import contextlib
import socket
import time
from pathlib import Path

from irisrep.config import Address, MemberConfig, MirrorMember

KEY = bytes(range(32))


def free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def mirror_configs(
    base: Path,
    *,
    asyncs: int = 0,
    ack_level: str = "durable",
    qos_timeout_ms: int = 500,
    mirror: str = "MIRROR1",
    agents: bool = False,
    **extra,
) -> list[MemberConfig]:
    """Configs for members A (initial primary), B (backup) and asyncs C1..Cn."""
    names = ["A", "B"] + [f"C{i + 1}" for i in range(asyncs)]
    ports = free_ports(3 * len(names))
    members = tuple(
        MirrorMember(
            name=n,
            kind="failover" if i < 2 else "async-dr",
            mirror_address=Address("127.0.0.1", ports[3 * i]),
            client_address=Address("127.0.0.1", ports[3 * i + 1]),
            agent_address=Address("127.0.0.1", ports[3 * i + 2]) if agents else None,
        )
        for i, n in enumerate(names)
    )
    return [
        MemberConfig(
            mirror_name=mirror,
            member_name=n,
            members=members,
            data_dir=(base / n).resolve(),
            mirror_key=KEY,
            ack_level=ack_level,
            qos_timeout_ms=qos_timeout_ms,
            direct_io="optional",
            pool_blocks=1024,
            **extra,
        )
        for n in names
    ]


def wait_for(pred, timeout_s: float = 20.0, what: str = "condition"):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def dump(db) -> list[tuple[bytes, bytes]]:
    """Every node of a database as (encoded key, value bytes), in order."""
    out = []
    with db._lock:
        tree = db.tree
        cur = tree.seek(b"")
        while True:
            batch = cur.take(1024, b"\xff" * 8)
            if not batch:
                return out
            out.extend((k, tree.load_value(v)) for k, v in batch)


def wait_applied(members, position: int, timeout_s: float = 30.0) -> None:
    """Wait until every copy member's database has applied up to `position`."""
    wait_for(
        lambda: all(m.database.applied_position >= position for m in members),
        timeout_s,
        f"members to apply up to {position}: "
        + ", ".join(f"{m.name}={m.database.applied_position}" for m in members),
    )


def spawn_member(cfg, log_path: Path | None = None, env: dict | None = None):
    """Start `irisrep serve --config` for cfg as a real process; returns the Popen."""
    import subprocess
    import sys

    cfg.data_dir.mkdir(parents=True, exist_ok=True)
    conf = cfg.data_dir.parent / f"{cfg.member_name}.toml"
    conf.write_text(cfg.to_toml())
    out = open(log_path or (cfg.data_dir.parent / f"{cfg.member_name}.log"), "ab")  # noqa: SIM115
    return subprocess.Popen(
        [sys.executable, "-m", "irisrep", "serve", "--config", str(conf)],
        stdout=out,
        stderr=subprocess.STDOUT,
        env=env,
    )


def stop_proc(p, timeout_s: float = 20.0) -> None:
    import signal
    import subprocess

    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout_s)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def journal_keys(data_dir: Path, name: str) -> set[bytes]:
    """The encoded keys of every SET of global `name` in a member's journal files."""
    from irisrep.fileio import RealFS
    from irisrep.journal import read_stream
    from irisrep.keycodec import encode_name

    prefix = encode_name(name)
    keys = set()
    for _pos, _h, records in read_stream(RealFS(), str(data_dir / "journal")):
        for r in records:
            if r[0] == 1 and r[4].startswith(prefix):
                keys.add(bytes(r[4]))
    return keys


def open_copy(data_dir: Path):
    """Open a stopped copy member's database as it would recover (no rollback)."""
    import irisrep

    return irisrep.open(str(data_dir), mirror_copy=True)


def spawn_agent(cfg, env: dict | None = None):
    """Start `irisrep agent` for cfg (it starts the member); returns the Popen."""
    import subprocess
    import sys

    cfg.data_dir.mkdir(parents=True, exist_ok=True)
    conf = cfg.data_dir.parent / f"{cfg.member_name}.toml"
    conf.write_text(cfg.to_toml())
    out = open(cfg.data_dir.parent / f"{cfg.member_name}-agent.log", "ab")  # noqa: SIM115
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "irisrep",
            "agent",
            "--config",
            str(conf),
            "--control",
            str(cfg.data_dir.parent / f"{cfg.member_name}.sock"),
        ],
        stdout=out,
        stderr=subprocess.STDOUT,
        env=env,
    )


# --- the `irisrep` command, as a user runs it (optionally inside a network namespace) --


def cli(*args, check: bool = True, timeout: float = 120, prefix: tuple = ()):
    """Run `irisrep ARGS` in a new process (after `prefix`, e.g. ip netns exec NS)."""
    import subprocess
    import sys

    p = subprocess.run(
        [*prefix, sys.executable, "-m", "irisrep", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and p.returncode != 0:
        raise AssertionError(f"irisrep {' '.join(args)} -> {p.returncode}\n{p.stdout}\n{p.stderr}")
    return p


def ps_rows(d: str, prefix: tuple = ()) -> dict:
    """`irisrep ps --json` for deployment `d`, by member name."""
    import json

    return {
        r["member"]: r
        for r in json.loads(cli("ps", "--dir", d, "--json", prefix=prefix).stdout)["members"]
    }


def wait_ps(d: str, pred, what: str, timeout_s: float = 30, prefix: tuple = ()) -> dict:
    """Poll `irisrep ps` until pred(rows) holds; the rows then."""
    import json

    deadline = time.monotonic() + timeout_s
    rows = None
    while time.monotonic() < deadline:
        rows = ps_rows(d, prefix)
        if pred(rows):
            return rows
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}: {json.dumps(rows, indent=1)}")


@contextlib.contextmanager
def deployed(d: str, *up_args: str):
    """`irisrep up --dir D UP_ARGS` for the block; `irisrep down` when it ends."""
    cli("up", "--dir", d, *up_args)
    try:
        yield d
    finally:
        cli("down", "--dir", d, check=False)


class TxnModel:
    """A writer's model of what it committed: `committed` (every returned commit) and,
    inside a transaction, `work` (what the open one would leave). `txn` is what
    brackets the transactions: a database or a client connection (tstart/tcommit/
    trollback)."""

    committed: dict
    work: dict | None
    txn: object

    def view(self) -> dict:
        return self.work if self.work is not None else self.committed

    def begin(self) -> None:
        self.txn.tstart()
        self.work = dict(self.committed)

    def end(self, commit: bool) -> None:
        if commit:
            self.txn.tcommit()
            self.committed = self.work
        else:
            self.txn.trollback()
        self.work = None
