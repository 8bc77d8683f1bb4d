"""Redis as a peer: a primary and one replica, `appendonly yes`, `appendfsync always`.

Both servers run `redis-server` from PATH on 127.0.0.1 in the scratch directory
(AOF, no RDB snapshots). A write is `SET key value` then `WAIT 1 0` sent together (one
round trip): Redis fsyncs its AOF before it replies and WAIT returns once the replica
has acknowledged the write (received and applied; Redis 7.0 has no WAITAOF, so not
necessarily fsynced there). A transaction is MULTI, ten SETs, EXEC, then WAIT 1 0,
each command its own round trip (as the other systems' interactive transactions).
Every process is stopped by pid (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from . import TX_NODES, VALUE, Procs, System, Unavailable, free_ports, log_tail, wait_until


def available() -> str | None:
    """None when Redis can run here; else why not."""
    if shutil.which("redis-server") is None:
        return "redis-server is not installed (apt-get install -y redis-server, or --install-peers)"
    try:
        import redis  # noqa: F401
    except ImportError:
        return "the redis Python package is missing (pip install redis, or the bench extra)"
    return None


class Redis(System):
    family = "redis"

    def __init__(self, name: str = "redis") -> None:
        self.name = name
        self.procs = Procs()
        self.port = self.replica_port = 0

    def versions(self) -> dict:
        import redis

        out = subprocess.run(["redis-server", "--version"], capture_output=True, text=True)
        return {"redis-server": out.stdout.strip(), "redis-py": redis.__version__}

    def _server(self, d: Path, port: int, extra: list[str]) -> None:
        d.mkdir(parents=True)
        cmd = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(d)]
        cmd += ["--appendonly", "yes", "--appendfsync", "always", "--save", ""]
        cmd += ["--daemonize", "no", "--protected-mode", "no", "--maxclients", "1000"]
        self.procs.start(f"redis:{port}", cmd + extra, d / "redis.log")

    def start(self, scratch: Path) -> None:
        import redis

        why = available()
        if why:
            raise Unavailable(why)
        base = scratch / self.name
        self.port, self.replica_port = free_ports(2)
        self._server(base / "primary", self.port, [])
        self._server(
            base / "replica", self.replica_port, ["--replicaof", "127.0.0.1", str(self.port)]
        )
        p = redis.Redis(host="127.0.0.1", port=self.port)
        r = redis.Redis(host="127.0.0.1", port=self.replica_port)
        try:
            wait_until("redis primary answers", p.ping, 20)
            wait_until(
                "redis replica linked",
                lambda: r.info("replication").get("master_link_status") == "up",
                30,
            )
            wait_until("WAIT 1 0 answers 1", lambda: p.execute_command("WAIT", 1, 1000) >= 1, 30)
        except TimeoutError as e:
            raise RuntimeError(f"{e}; log: {log_tail(base / 'replica' / 'redis.log')}") from None
        finally:
            p.close()
            r.close()

    def client(self, cid: int):
        return _Client(self.port, cid)

    def stop(self) -> None:
        self.procs.stop_all()


class _Client:
    def __init__(self, port: int, cid: int) -> None:
        import redis

        self.r = redis.Redis(host="127.0.0.1", port=port)
        self.r.ping()
        self.cid = cid

    def write(self, i: int) -> None:
        pipe = self.r.pipeline(transaction=False)
        pipe.set(f"b:{self.cid}:{i}", VALUE)
        pipe.execute_command("WAIT", 1, 0)
        _ok, acked = pipe.execute()
        if acked < 1:
            raise RuntimeError(f"WAIT 1 0 answered {acked}")

    def tx(self, i: int) -> None:
        r = self.r
        r.execute_command("MULTI")
        for j in range(TX_NODES):
            r.execute_command("SET", f"t:{self.cid}:{i}:{j}", VALUE)
        r.execute_command("EXEC")
        acked = r.execute_command("WAIT", 1, 0)
        if acked < 1:
            raise RuntimeError(f"WAIT 1 0 answered {acked}")

    def close(self) -> None:
        self.r.close()
