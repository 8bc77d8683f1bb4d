"""A local mirror on this machine: `irisrep up`, `down`, `inventory`, `ps`, `stop`,
`start`, `kill`, `session` (DESIGN.md section 4).

Owns the deployment directory (`--dir`, else `$IRISREP_DIR`, else `./irisrep-mirror`):

    deploy.json            the members: name, kind, addresses (mirror, client, agent,
                           HTTP health and metrics), initial role (+ / -)
    mirror.key             the mirror key (mode 0600)
    credentials.json       the client user and password `irisrep up` generated (0600);
                           the member configs hold only its scrypt hash
    <member>/member.toml   that member's config (irisrep serve --config)
    <member>/data/         its instance directory (DB.dat, irisrep.wij, journal/)
    <member>/agent.sock    its agent's control socket (agent.py); agent.pid, *.log

Promises: `up` returns only when the primary has an Active backup (or says why not,
and leaves nothing running); every member runs under its own agent process, in its
own session, so it outlives the `irisrep up` command; `down` stops every agent and
member it started (by control socket, then by pid); all listeners bind 127.0.0.1.
The commands read credentials from the directory; nothing secret is printed.

Several mirrors (`up(mirrors=N, reporting=R)`, `irisrep up --mirrors 2 --reporting 1`):
each mirror MIRROR<k> has its members in `<MIRROR>/<member>/` and its own key in
`<MIRROR>/mirror.key`; in deploy.json (and so in `ps`, `stop`, `kill`, `session`)
its members are named `MIRROR<k>/A`, `MIRROR<k>/B`, ... (the member's own name in its
config stays `A`). The reporting asyncs `R1`... live in `R<j>/`, belong to MIRROR1 and
follow every other mirror (`[[follow]]`); every mirror lists them. Each has a local
database `REPORT` (`[[databases]]`, `mirrored = false`) for reports written from what
it reads of all of them. One arbiter serves
all the mirrors (it keeps a state per mirror). `up` returns once every mirror's
primary has an Active backup. `switchover` and `promote` act within one mirror (the
one named with `mirror=`, or the member's): another mirror's primary is no reason
to refuse, and its members are never candidates.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from . import agent as agent_mod
from .auth import generate_password, hash_password
from .config import (
    Address,
    DatabaseSpec,
    FollowedMirror,
    MemberConfig,
    MirrorMember,
    User,
    load_config,
)
from .constants import REPORT_DATABASE_NAME
from .errors import DeployError

DEPLOY_FILE = "deploy.json"
KEY_FILE = "mirror.key"
CREDENTIALS_FILE = "credentials.json"
USER_NAME = "admin"
BASE_PORT_DEFAULT = 7100
QOS_TIMEOUT_LOCAL_MS = 2000  # a local mirror: members share one machine
UP_TIMEOUT_S = 60.0
DEPLOY_PORTS_LOCK_NAME = "irisrep-up-ports.lock"  # in the system's temp directory


def _entry_fields(m: MirrorMember, initial: str, http_address: Address, mdir: Path) -> dict:
    """What deploy.json says of one member besides its name, mirror and kind."""
    return {
        "initial": initial,  # inventory: + the initial primary, - the initial backup
        "mirror_address": str(m.mirror_address),
        "client_address": str(m.client_address),
        "agent_address": str(m.agent_address),
        "http_address": str(http_address),
        "data_dir": str(mdir / "data"),
        "config": str(mdir / "member.toml"),
    }


def deploy_dir(path: str | os.PathLike | None = None) -> Path:
    if path is None:
        path = os.environ.get("IRISREP_DIR") or "irisrep-mirror"
    return Path(path).expanduser().resolve()


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _port_free(port: int, hosts=("127.0.0.1",)) -> bool:
    """Whether the members could listen on PORT: bound as they bind (SO_REUSEADDR, as
    socket.create_server and the HTTP server do), so a port left in TIME_WAIT by the
    last `irisrep down` is free and one with a listener on it is not."""
    for host in set(hosts):
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((host, port))
            except OSError:
                return False
    return True


def _pick_ports(base: int | None, count: int, hosts=("127.0.0.1",)) -> list[int]:
    if base is not None:
        ports = list(range(base, base + count))
        busy = [p for p in ports if not _port_free(p, hosts)]
        if busy:
            raise DeployError(f"ports {busy} are in use; choose another --base-port")
        return ports
    for start in range(BASE_PORT_DEFAULT, 60000, count):
        ports = list(range(start, start + count))
        if all(_port_free(p, hosts) for p in ports):
            return ports
    raise DeployError("no free range of ports found")


def load(dirpath: Path) -> dict:
    try:
        return json.loads((dirpath / DEPLOY_FILE).read_text())
    except FileNotFoundError:
        raise DeployError(f"no mirror deployed in {dirpath} (run irisrep up)") from None


def credentials(dirpath: Path) -> tuple[str, str]:
    c = json.loads((dirpath / CREDENTIALS_FILE).read_text())
    return c["user"], c["password"]


def _control(dirpath: Path, member: str) -> str:
    return str(dirpath / member / "agent.sock")


def _mirror_of(dep: dict, m: dict) -> str:
    """The mirror a deployment entry belongs to (a single mirror's entries have none)."""
    return m.get("mirror") or dep.get("mirror")


def _config_name(m: dict) -> str:
    """The member's name in its mirror's config: `A` for the entry `MIRROR2/A`."""
    return m["name"].rpartition("/")[2]


def _entry(dep: dict, dirpath: Path, member: str) -> dict:
    m = next((x for x in dep["members"] if x["name"] == member), None)
    if m is None:
        raise DeployError(
            f"no member {member!r} in {dirpath}; members: "
            + ", ".join(x["name"] for x in dep["members"])
        )
    return m


def pick_mirror(dep: dict, mirror: str | None, member: str | None = None) -> str:
    """The mirror a switchover acts in: `mirror` (case ignored), else `member`'s,
    else the only one; DeployError naming them when several could be meant."""
    names = list(dict.fromkeys(_mirror_of(dep, m) for m in dep["members"]))
    if mirror is not None:
        for n in names:
            if n.lower() == mirror.lower():
                return n
        raise DeployError(f"no mirror {mirror!r} here; mirrors: {', '.join(names)}")
    if member is not None:
        return _mirror_of(dep, _entry(dep, Path(dep.get("dir", ".")), member))
    if len(names) > 1:
        raise DeployError(f"this deployment has mirrors {', '.join(names)}: say which (--mirror)")
    return names[0]


# --- up ---------------------------------------------------------------------------------


def up(
    dirpath: Path,
    *,
    asyncs: int = 0,
    base_port: int | None = None,
    qos_timeout_ms: int = QOS_TIMEOUT_LOCAL_MS,
    ack_level: str = "durable",
    timeout_s: float = UP_TIMEOUT_S,
    progress=None,
    addresses: list[str] | None = None,
    arbiter: bool = True,
    arbiter_host: str = "127.0.0.1",
    mirrors: int = 1,
    reporting: int = 0,
) -> dict:
    """Deploy and start a mirror: 2 failover members (A primary, B backup),
    `asyncs` DR asyncs and (unless `arbiter=False`) an arbiter; return the deployment
    once the backup is Active. With `mirrors` > 1 or `reporting` > 0: that many
    mirrors (each with `asyncs` DR asyncs) and `reporting` reporting asyncs that
    follow all of them (see the module docstring)."""
    say = progress or (lambda _msg: None)
    if mirrors != 1 or reporting:
        if addresses:
            raise DeployError("--addresses is for a single mirror without --reporting")
        with _ports_lock():
            return _up_multi(
                dirpath,
                say,
                mirrors=mirrors,
                reporting=reporting,
                asyncs=asyncs,
                base_port=base_port,
                qos_timeout_ms=qos_timeout_ms,
                ack_level=ack_level,
                timeout_s=timeout_s,
                arbiter=arbiter,
                arbiter_host=arbiter_host,
            )
    # Two `irisrep up` at once on one machine could pick the same free ports before
    # either binds them: the pick and the start run under one machine-wide lock,
    # held until the members listen (their backup is Active).
    with _ports_lock():
        return _up(
            dirpath,
            say,
            asyncs=asyncs,
            base_port=base_port,
            qos_timeout_ms=qos_timeout_ms,
            ack_level=ack_level,
            timeout_s=timeout_s,
            addresses=addresses,
            arbiter=arbiter,
            arbiter_host=arbiter_host,
        )


@contextlib.contextmanager
def _ports_lock():
    import fcntl
    import tempfile

    path = os.path.join(tempfile.gettempdir(), DEPLOY_PORTS_LOCK_NAME)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _refuse_if_running(dirpath: Path) -> None:
    if (dirpath / DEPLOY_FILE).exists() and any(a.get("agent_running") for a in agents(dirpath)):
        raise DeployError(f"a mirror is already running in {dirpath} (irisrep down first)")


def _up(
    dirpath: Path,
    say,
    *,
    asyncs: int,
    base_port: int | None,
    qos_timeout_ms: int,
    ack_level: str,
    timeout_s: float,
    addresses: list[str] | None,
    arbiter: bool,
    arbiter_host: str,
) -> dict:
    _refuse_if_running(dirpath)
    if not 0 <= asyncs <= 14:
        raise DeployError(f"--asyncs {asyncs}: a mirror has at most 14 async members")
    dirpath.mkdir(parents=True, exist_ok=True)
    names = ["A", "B"] + [f"C{i + 1}" for i in range(asyncs)]
    # One host address per member (each on its own address, e.g. 127.0.0.2-.6 in a
    # network namespace, so that a partition can cut one member off); else 127.0.0.1.
    hosts = list(addresses) if addresses else ["127.0.0.1"] * len(names)
    if len(hosts) != len(names):
        raise DeployError(
            f"--addresses: {len(hosts)} addresses for {len(names)} members ({', '.join(names)})"
        )
    # Port layout from the base: mirror, client and agent of each member in turn, the
    # arbiter's, then each member's HTTP health and metrics port (added after the
    # others, so the older ports of a given --base-port stay where they were).
    n = len(names)
    ports = _pick_ports(base_port, 4 * n + 1, hosts + [arbiter_host])
    arbiter_address = Address(arbiter_host, ports[3 * n]) if arbiter else None
    http_addresses = [Address(hosts[i], ports[3 * n + 1 + i]) for i in range(n)]
    key_path = dirpath / KEY_FILE
    if not key_path.exists():
        _write_private(key_path, secrets.token_hex(32).encode() + b"\n")
    cred_path = dirpath / CREDENTIALS_FILE
    if cred_path.exists():
        user, password = credentials(dirpath)
    else:
        user, password = USER_NAME, generate_password()
        _write_private(cred_path, json.dumps({"user": user, "password": password}).encode())
    users = (User(name=user, password_hash=hash_password(password)),)
    members = tuple(
        MirrorMember(
            name=n,
            kind="failover" if i < 2 else "async-dr",
            mirror_address=Address(hosts[i], ports[3 * i]),
            client_address=Address(hosts[i], ports[3 * i + 1]),
            agent_address=Address(hosts[i], ports[3 * i + 2]),
        )
        for i, n in enumerate(names)
    )
    deployment = {"dir": str(dirpath), "mirror": "MIRROR", "members": []}
    for i, m in enumerate(members):
        mdir = dirpath / m.name
        mdir.mkdir(exist_ok=True)
        cfg = MemberConfig(
            mirror_name="MIRROR",
            member_name=m.name,
            members=members,
            data_dir=mdir / "data",
            mirror_key=bytes.fromhex(key_path.read_text().strip()),
            mirror_key_file=key_path,
            qos_timeout_ms=qos_timeout_ms,
            ack_level=ack_level,
            pool_blocks=4096,
            users=users,
            arbiter_address=arbiter_address,
            http_address=http_addresses[i],
        )
        (mdir / "member.toml").write_text(cfg.to_toml())
        deployment["members"].append(
            {
                "name": m.name,
                "kind": m.kind,
                **_entry_fields(
                    m, "+" if i == 0 else "-" if i == 1 else "", http_addresses[i], mdir
                ),
            }
        )
    return _start(dirpath, deployment, arbiter_address, say, timeout_s, "the backup")


def _up_multi(
    dirpath: Path,
    say,
    *,
    mirrors: int,
    reporting: int,
    asyncs: int,
    base_port: int | None,
    qos_timeout_ms: int,
    ack_level: str,
    timeout_s: float,
    arbiter: bool,
    arbiter_host: str,
) -> dict:
    from .constants import MIRROR_ASYNC_MEMBERS_MAX, MIRRORS_FOLLOWED_MAX

    _refuse_if_running(dirpath)
    if not 1 <= mirrors <= MIRRORS_FOLLOWED_MAX:
        raise DeployError(
            f"--mirrors {mirrors}: 1..{MIRRORS_FOLLOWED_MAX} (a reporting async follows "
            f"at most {MIRRORS_FOLLOWED_MAX} mirrors)"
        )
    if not 0 <= reporting or asyncs + reporting > MIRROR_ASYNC_MEMBERS_MAX:
        raise DeployError(
            f"--asyncs {asyncs} --reporting {reporting}: a mirror has at most "
            f"{MIRROR_ASYNC_MEMBERS_MAX} async members"
        )
    dirpath.mkdir(parents=True, exist_ok=True)
    mirror_names = [f"MIRROR{k + 1}" for k in range(mirrors)]
    # (deployment name, mirror, member name, kind); a reporting async belongs to
    # MIRROR1 (its config's own mirror) and follows the others.
    plan = []
    for mname in mirror_names:
        plan += [(f"{mname}/A", mname, "A", "failover"), (f"{mname}/B", mname, "B", "failover")]
        plan += [(f"{mname}/C{i + 1}", mname, f"C{i + 1}", "async-dr") for i in range(asyncs)]
    plan += [
        (f"R{j + 1}", mirror_names[0], f"R{j + 1}", "async-reporting") for j in range(reporting)
    ]
    n = len(plan)
    host = "127.0.0.1"
    ports = _pick_ports(base_port, 4 * n + 1, [host, arbiter_host])
    arbiter_address = Address(arbiter_host, ports[3 * n]) if arbiter else None
    entries = {
        p[0]: MirrorMember(
            name=p[2],
            kind=p[3],
            mirror_address=Address(host, ports[3 * i]),
            client_address=Address(host, ports[3 * i + 1]),
            agent_address=Address(host, ports[3 * i + 2]),
        )
        for i, p in enumerate(plan)
    }
    http = {p[0]: Address(host, ports[3 * n + 1 + i]) for i, p in enumerate(plan)}
    keys = {}
    for mname in mirror_names:
        (dirpath / mname).mkdir(exist_ok=True)
        key_path = dirpath / mname / KEY_FILE
        if not key_path.exists():
            _write_private(key_path, secrets.token_hex(32).encode() + b"\n")
        keys[mname] = (key_path, bytes.fromhex(key_path.read_text().strip()))
    cred_path = dirpath / CREDENTIALS_FILE
    if cred_path.exists():
        user, password = credentials(dirpath)
    else:
        user, password = USER_NAME, generate_password()
        _write_private(cred_path, json.dumps({"user": user, "password": password}).encode())
    users = (User(name=user, password_hash=hash_password(password)),)
    reporters = [entries[p[0]] for p in plan if p[3] == "async-reporting"]
    # Every mirror lists the reporting asyncs, so its primary lets them stream.
    members_of = {
        mname: tuple(entries[p[0]] for p in plan if p[1] == mname and p[3] != "async-reporting")
        + tuple(reporters)
        for mname in mirror_names
    }
    follow = tuple(
        FollowedMirror(
            mirror_name=mname,
            failover_members=tuple(
                (m.name, m.mirror_address) for m in members_of[mname] if m.is_failover
            ),
            mirror_key=keys[mname][1],
            mirror_key_file=keys[mname][0],
        )
        for mname in mirror_names[1:]
    )
    deployment = {
        "dir": str(dirpath),
        "mirror": ", ".join(mirror_names),
        "mirrors": mirror_names,
        "members": [],
    }
    for dname, mname, _member, kind in plan:
        m = entries[dname]
        mdir = dirpath / dname
        mdir.mkdir(parents=True, exist_ok=True)
        cfg = MemberConfig(
            mirror_name=mname,
            member_name=m.name,
            members=members_of[mname],
            data_dir=mdir / "data",
            mirror_key=keys[mname][1],
            mirror_key_file=keys[mname][0],
            qos_timeout_ms=qos_timeout_ms,
            ack_level=ack_level,
            pool_blocks=4096,
            users=users,
            arbiter_address=arbiter_address,
            http_address=http[dname],
            follow=follow if kind == "async-reporting" else (),
            # A reporting async's own database for reports over every mirror it
            # follows (docs/databases.md): local, journaled, writable.
            databases=(DatabaseSpec(REPORT_DATABASE_NAME, mirrored=False),)
            if kind == "async-reporting"
            else (),
        )
        (mdir / "member.toml").write_text(cfg.to_toml())
        deployment["members"].append(
            {
                "name": dname,
                "mirror": mname,
                "mirrors": list(cfg.mirrors_followed),
                "kind": kind,
                **_entry_fields(
                    m, "+" if m.name == "A" else "-" if m.name == "B" else "", http[dname], mdir
                ),
            }
        )
    return _start(dirpath, deployment, arbiter_address, say, timeout_s, "every mirror's backup")


def _start(dirpath: Path, deployment: dict, arbiter_address, say, timeout_s: float, what: str):
    """Record the deployment, start the arbiter and every member's agent, and wait
    until every mirror has an Active backup; on any failure stop what started."""
    deployment["arbiter"] = str(arbiter_address) if arbiter_address else None
    (dirpath / DEPLOY_FILE).write_text(json.dumps(deployment, indent=2) + "\n")
    try:
        if arbiter_address is not None:
            _spawn_arbiter(dirpath, arbiter_address)
            say(f"started the arbiter at {arbiter_address}")
        for m in deployment["members"]:
            _spawn_agent(dirpath, m["name"])
            say(f"started {m['name']} ({m['kind']}) at {m['client_address']}")
        say(f"waiting for {what} to become Active ...")
        t0 = time.monotonic()
        wait_active(dirpath, timeout_s)
        # The asyncs (DR and reporting) take clients a moment after the failover
        # pair: `up` returns when every member answers, so the next command works.
        wait_answering(dirpath, max(1.0, timeout_s - (time.monotonic() - t0)))
    except BaseException:
        down(dirpath)
        raise
    return deployment


def _spawn_agent(dirpath: Path, name: str) -> None:
    mdir = dirpath / name
    control = _control(dirpath, name)
    log = open(mdir / "agent.log", "ab")  # noqa: SIM115 - the agent keeps it
    try:
        p = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "irisrep",
                "agent",
                "--config",
                str(mdir / "member.toml"),
                "--control",
                control,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # outlives `irisrep up`, not hit by its Ctrl-C
        )
    finally:
        log.close()
    (mdir / "agent.pid").write_text(f"{p.pid}\n")
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if os.path.exists(control):
            return
        if p.poll() is not None:
            raise DeployError(f"the agent of {name} exited ({p.returncode}): see {mdir}/agent.log")
        time.sleep(0.05)
    raise DeployError(f"the agent of {name} did not open {control}")


def _spawn_arbiter(dirpath: Path, address) -> None:
    adir = dirpath / "arbiter"
    adir.mkdir(exist_ok=True)
    log = open(adir / "arbiter.log", "ab")  # noqa: SIM115 - the arbiter keeps it
    try:
        p = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "irisrep",
                "arbiter",
                "--listen",
                str(address),
                "--state",
                str(adir / "arbiter.json"),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    finally:
        log.close()
    (adir / "arbiter.pid").write_text(f"{p.pid}\n")
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(tuple(address), timeout=0.5):
                return
        except OSError:
            if p.poll() is not None:
                raise DeployError(
                    f"the arbiter exited ({p.returncode}): see {adir}/arbiter.log"
                ) from None
            time.sleep(0.05)
    raise DeployError(f"the arbiter did not listen on {address}")


def arbiter_op(dirpath: Path, op: str) -> str:
    """`irisrep stop/start/kill arbiter`: the arbiter is a plain process (pid file)."""
    import signal

    dep = load(dirpath)
    if not dep.get("arbiter"):
        raise DeployError("this mirror has no arbiter (irisrep up --no-arbiter)")
    pid_file = dirpath / "arbiter" / "arbiter.pid"
    pid = int(pid_file.read_text()) if pid_file.exists() else 0
    alive = bool(pid) and not agent_mod.wait_gone(pid, 0)
    if op in ("stop", "kill"):
        if alive:
            os.kill(pid, signal.SIGKILL if op == "kill" else signal.SIGTERM)
            agent_mod.wait_gone(pid, 10)
        return "stopped"
    if op == "start":
        if not alive:
            from .config import parse_address

            _spawn_arbiter(dirpath, parse_address(dep["arbiter"]))
        return "running"
    raise DeployError(f"unknown arbiter operation {op!r}")


def wait_active(dirpath: Path, timeout_s: float = UP_TIMEOUT_S) -> dict:
    """Wait until some member is primary with an Active backup (in every mirror of
    the deployment); the status of one such primary."""
    deadline = time.monotonic() + timeout_s
    last = "no member answered"
    dep = load(dirpath)
    mirrors = {m.get("mirror") for m in dep["members"] if m["kind"] == "failover"}
    while time.monotonic() < deadline:
        ready = {}
        for m, st in zip(dep["members"], member_statuses(dirpath), strict=True):
            if st.get("role") == "primary":
                if st.get("active_backup"):
                    ready[m.get("mirror")] = st
                else:
                    last = f"{m['name']} is primary, its backup is not Active yet"
        if ready and set(ready) >= mirrors:
            return next(iter(ready.values()))
        time.sleep(0.1)
    raise DeployError(f"no Active backup within {timeout_s:.0f} s: {last}")


def wait_answering(dirpath: Path, timeout_s: float = UP_TIMEOUT_S) -> None:
    """Wait until every member of the deployment answers on its client address."""
    deadline = time.monotonic() + timeout_s
    dep = load(dirpath)
    while True:
        silent = [
            f"{m['name']} ({st['error']})"
            for m, st in zip(dep["members"], member_statuses(dirpath), strict=True)
            if st.get("error")
        ]
        if not silent:
            return
        if time.monotonic() > deadline:
            raise DeployError(f"not answering within {timeout_s:.0f} s: {'; '.join(silent)}")
        time.sleep(0.1)


# --- status -------------------------------------------------------------------------------


def agents(dirpath: Path) -> list[dict]:
    out = []
    for m in load(dirpath)["members"]:
        try:
            st = agent_mod.call(_control(dirpath, m["name"]), "status", timeout_s=5)
            st["agent_running"] = True
            # The deployment's name (MIRROR2/A with several mirrors), not the config's.
            st["member"] = m["name"]
        except (ConnectionError, OSError, ValueError):
            st = {"member": m["name"], "agent_running": False, "running": False, "pid": None}
        out.append(st)
    return out


def _member_status(dirpath: Path, m: dict, user: str, password: str) -> dict:
    from .client import connect_member

    try:
        with connect_member(m["client_address"], user=user, password=password, timeout=5.0) as c:
            return c.status()
    except Exception as e:  # noqa: BLE001 - a member that does not answer is shown so
        return {"member": m["name"], "error": f"{type(e).__name__}: {e}"}


def member_statuses(dirpath: Path) -> list[dict]:
    user, password = credentials(dirpath)
    return [_member_status(dirpath, m, user, password) for m in load(dirpath)["members"]]


def _lag(st: dict, running: bool) -> str:
    """Never blank: bytes and seconds behind, "caught up", or why it is unknown."""
    if not running:
        return "unknown (down)"
    if st.get("error"):
        return "unknown (no answer)"
    if st.get("role") == "primary":
        return "caught up"  # it is the source
    if "lag_bytes" not in st:
        return "unknown (not connected)"
    if st.get("connected_to") is None:
        return f"at least {st['lag_bytes']} bytes (not connected)"
    if st["lag_bytes"] == 0:
        return "caught up"
    return f"{st['lag_bytes']} bytes, {st.get('lag_s', 0.0):.1f} s"


def _health(st: dict, running: bool) -> str:
    """One word first (ok, degraded, unreachable, down), then why when not ok."""
    if not running:
        return "down"
    if st.get("error"):
        return "unreachable"
    status = st.get("status")
    if st.get("role") == "primary":
        if status == "In Trouble":
            return "degraded: In Trouble"
        if not st.get("active_backup"):
            return "degraded: no Active backup"
        return "ok"
    if status in ("Backup", "Connected"):
        return "ok"
    return f"degraded: {status or 'starting'}"


def ps(dirpath: Path) -> list[dict]:
    """One row per member: what `irisrep ps` shows."""
    dep = load(dirpath)
    ag = {a["member"]: a for a in agents(dirpath)}
    user, password = credentials(dirpath)
    rows = []
    for m in dep["members"]:
        a = ag[m["name"]]
        st = _member_status(dirpath, m, user, password) if a.get("running") else {}
        if a.get("running"):
            process = f"running (pid {a['pid']})"
        elif a.get("exit_code") not in (None, 0):
            process = f"crashed (exit {a['exit_code']})"
        elif a.get("agent_running"):
            process = "stopped"
        else:
            process = "down (no agent)"
        peers = {p["member"]: p for p in st.get("peers", [])}
        rows.append(
            {
                "member": m["name"],
                "mirror": m.get("mirror", dep.get("mirror")),
                # An async: one entry per mirror it follows (status, lag, paused).
                "mirrors": st.get("mirrors"),
                "kind": m["kind"],
                "address": m["client_address"],
                "http_address": m.get("http_address"),
                "pid": a.get("pid") if a.get("running") else None,
                "process": process,
                "role": st.get("role", "-"),
                "status": st.get("status", "Down" if not a.get("running") else "?"),
                "journal_transfer": st.get(
                    "journal_transfer", "Active" if st.get("role") == "primary" else "-"
                ),
                "dejournaling": st.get("dejournaling", "-"),
                # An async's own copy: read-only, or read-write and so never eligible
                # to fail over again (member.py).
                "copy": st.get("copy"),
                "health": _health(st, bool(a.get("running"))),
                "lag": _lag(st, bool(a.get("running"))),
                "lag_bytes": st.get("lag_bytes"),
                "epoch": st.get("epoch"),
                "arbiter_link": st.get("arbiter_link", "unknown (down)")
                if a.get("running")
                else "unknown (down)",
                "active_backup": st.get("active_backup"),
                "peers": peers,
                "error": st.get("error"),
            }
        )
    return rows


def caught_up(dirpath: Path, member: str) -> tuple[bool, int | None, str]:
    """(done, lag_bytes, why) for `irisrep start --wait`: a primary is caught up; a
    backup when the primary counts it Active; an async when it is connected with no
    lag."""
    rows = {r["member"]: r for r in ps(dirpath)}
    if member not in rows:
        raise DeployError(f"no member {member!r} in {dirpath}")
    r = rows[member]
    if r["role"] == "primary":
        return True, 0, "it is the primary"
    if r.get("error"):
        return False, None, "not answering yet (starting)"
    lag = r.get("lag_bytes")
    if r["role"] == "backup":
        # The primary names its Active backup by its config name (`B`, not `MIRROR1/B`).
        me = member.rpartition("/")[2]
        if any(
            x.get("active_backup") == me and x.get("mirror") == r.get("mirror")
            for x in rows.values()
        ):
            return True, 0, "Active backup"
        return False, lag, f"{r['status']}, lag {r['lag']}"
    if r["role"] == "async" and r["status"] == "Connected" and not lag:
        return True, 0, "connected, no lag"
    return False, lag, f"{r['status']}, lag {r['lag']}"


def failover_safety(rows: list[dict]) -> tuple[bool, str]:
    """Whether a failover now would lose nothing, and why, from `ps` rows: the
    primary has an Active backup (it holds every acknowledged commit); with several
    mirrors, in each of them."""
    groups: dict = {}
    for r in rows:
        groups.setdefault(r.get("mirror"), []).append(r)
    if len(groups) > 1:
        verdicts = [(m, *_failover_safety(g)) for m, g in groups.items()]
        return all(v[1] for v in verdicts), "; ".join(f"{m}: {why}" for m, _ok, why in verdicts)
    return _failover_safety(rows)


def _failover_safety(rows: list[dict]) -> tuple[bool, str]:
    primaries = [r for r in rows if r.get("role") == "primary"]
    if not primaries:
        return False, "no member is primary"
    if len(primaries) > 1:
        return False, "more than one member says it is primary"
    p = primaries[0]
    if p.get("status") == "In Trouble":
        return False, f"{p['member']} is In Trouble (it lost its backup and the arbiter)"
    backup = p.get("active_backup")
    if not backup:
        return False, f"{p['member']} has no Active backup (it commits alone)"
    return True, f"{backup} is Active behind {p['member']} (epoch {p.get('epoch')})"


# --- stop / start / kill / down ------------------------------------------------------------


def member_op(dirpath: Path, member: str, op: str) -> dict:
    if member == "arbiter":
        state = arbiter_op(dirpath, "stop" if op == "stop-nofailover" else op)
        return {"running": state == "running", "pid": None}
    dep = load(dirpath)
    if member not in {m["name"] for m in dep["members"]}:
        raise DeployError(
            f"no member {member!r} in {dirpath}; members: "
            + ", ".join(m["name"] for m in dep["members"])
        )
    try:
        return agent_mod.call(_control(dirpath, member), op)
    except ConnectionError as e:
        raise DeployError(f"the agent of {member} is not running ({e})") from None


def down(dirpath: Path, *, purge: bool = False) -> list[str]:
    """Stop every agent (and so every member) of the deployment; `purge` removes it."""
    stopped = []
    try:
        dep = load(dirpath)
    except DeployError:
        dep = {"members": []}
    for m in dep["members"]:
        name = m["name"]
        # An agent that does not answer is stopped by its pid file below.
        with contextlib.suppress(ConnectionError, OSError, ValueError):
            agent_mod.call(_control(dirpath, name), "shutdown")
            stopped.append(name)
        pid_file = dirpath / name / "agent.pid"
        if pid_file.exists():
            try:
                pid = int(pid_file.read_text())
            except ValueError:
                pid = 0
            if pid and not agent_mod.wait_gone(pid, 20):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, 9)
                agent_mod.wait_gone(pid, 5)
            pid_file.unlink(missing_ok=True)
    pid_file = dirpath / "arbiter" / "arbiter.pid"
    if pid_file.exists():
        try:
            pid = int(pid_file.read_text())
        except ValueError:
            pid = 0
        if pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 15)
            if not agent_mod.wait_gone(pid, 10):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, 9)
        pid_file.unlink(missing_ok=True)
        stopped.append("arbiter")
    if purge and dirpath.exists():
        shutil.rmtree(dirpath)
    return stopped


# --- history -------------------------------------------------------------------------


def history(dirpath: Path) -> list[dict]:
    """Every member's role changes and undone tails, oldest first (read from their
    data directories: works while members are down)."""
    from .constants import MIRROR_HISTORY_FILE_NAME

    out = []
    for m in load(dirpath)["members"]:
        path = Path(m["data_dir"]) / MIRROR_HISTORY_FILE_NAME
        try:
            lines = path.read_text().splitlines()
        except FileNotFoundError:
            continue
        for line in lines:
            try:
                out.append(json.loads(line))
            except ValueError:
                continue  # a torn last line after a crash
    return sorted(out, key=lambda e: e.get("time", 0))


def epochs(history_rows: list[dict]) -> list[dict]:
    """The history as one row per epoch: who became primary (and who was before),
    why, the journal position then, and the tails undone in that epoch."""
    out: list[dict] = []
    by_epoch: dict = {}
    primary = None
    for e in history_rows:
        if e.get("event") == "role" and e.get("to") == "primary":
            row = {
                "time": e["time"],
                "epoch": e["epoch"],
                "old_primary": primary if primary != e["member"] else None,
                "new_primary": e["member"],
                "reason": e.get("reason", ""),
                "journal_end": e.get("journal_end"),
                "undone": [],
            }
            if primary == e["member"]:
                row["old_primary"] = f"{primary} (restarted)"
            primary = e["member"]
            out.append(row)
            by_epoch[e["epoch"]] = row
        elif e.get("event") == "role" and e.get("from") == "primary" and primary is None:
            primary = e["member"]  # history from before the first recorded promotion
    for e in history_rows:
        if e.get("event") == "tail undone":
            # In the epoch it was undone in (the latest primary change at or before it).
            at = [n for n in by_epoch if n <= (e.get("epoch") or 0)]
            if at:
                by_epoch[max(at)]["undone"].append(e)
    return out


def events(dirpath: Path, *, follow: bool = False, members=None, stop=None):
    """The members' events (`irisrep events`), oldest first; with `follow`, then each
    new one as it happens (an iterator that ends only when `stop()` is true)."""
    from .events import follow_events, read_events

    dirs = [
        Path(m["data_dir"]) for m in load(dirpath)["members"] if not members or m["name"] in members
    ]
    if members:
        unknown = set(members) - {m["name"] for m in load(dirpath)["members"]}
        if unknown:
            raise DeployError(f"no member {sorted(unknown)[0]!r} in {dirpath}")
    if follow:
        return follow_events(dirs, stop=stop)
    return iter(read_events(dirs))


# --- switchover / promote ----------------------------------------------------------------


def eligibility(dirpath: Path, mirror: str | None = None) -> dict:
    """Who could take over now in `mirror` (None: the only one), and why (or why
    not): the switchover report. Members are named as in the deployment."""
    dep = load(dirpath)
    mname = pick_mirror(dep, mirror)
    user, password = credentials(dirpath)
    entries = [m for m in dep["members"] if _mirror_of(dep, m) == mname]
    # The statuses name members by their config name (`B`); the report as deployed.
    names = {_config_name(m): m["name"] for m in entries}
    statuses = {
        m["name"]: {**_member_status(dirpath, m, user, password), "member": m["name"]}
        for m in entries
    }
    primary = next(
        (
            s
            for m, s in zip(entries, statuses.values(), strict=True)
            if s.get("role") == "primary" and m["kind"] != "async-reporting"
        ),
        None,
    )
    if primary is None:
        return {
            "mirror": mname,
            "primary": None,
            "candidates": [],
            "ok": False,
            "why": f"no member of {mname} is primary",
        }
    cands = []
    for p in primary.get("peers", []):
        if p["kind"] != "failover":
            continue
        name = names.get(p["member"], p["member"])
        reasons = []
        if not p["active"]:
            reasons.append("not Active")
            if p["lag_bytes"]:
                reasons.append(f"{p['lag_bytes']} bytes behind")
        cands.append(
            {
                "member": name,
                "active": p["active"],
                # Active: within a few writes of the end; the switchover itself waits
                # until it has acknowledged the whole journal.
                "caught_up": p["active"] or not p["lag_bytes"],
                "epoch": statuses.get(name, {}).get("epoch"),
                "arbiter_link": statuses.get(name, {}).get("arbiter_link", "unknown"),
                "eligible": not reasons,
                "why": ", ".join(reasons) or "Active",
            }
        )
    ok = any(c["eligible"] for c in cands)
    why = "an Active backup is caught up" if ok else "no Active backup"
    return {
        "mirror": mname,
        "primary": primary["member"],
        "epoch": primary.get("epoch"),
        "arbiter_link": primary.get("arbiter_link"),
        "arbiter_controlled": primary.get("arbiter_controlled"),
        "candidates": cands,
        "ok": ok,
        "why": why,
    }


def _connect_to(dirpath: Path, member: str):
    from .client import connect_member

    m = next((x for x in load(dirpath)["members"] if x["name"] == member), None)
    if m is None:
        raise DeployError(f"no member {member!r} in {dirpath}")
    user, password = credentials(dirpath)
    return connect_member(m["client_address"], user=user, password=password)


def switchover(dirpath: Path, to: str | None = None, mirror: str | None = None) -> str:
    """Planned failover from `mirror`'s primary (None: `to`'s mirror, else the only
    one) to its Active backup; the new primary, named as in the deployment."""
    if mirror is None and to is not None:
        mirror = pick_mirror(load(dirpath), None, to)
    rep = eligibility(dirpath, mirror)
    if not rep["ok"]:
        raise DeployError(f"switchover not possible: {rep['why']}")
    if to is not None and not any(c["member"] == to and c["eligible"] for c in rep["candidates"]):
        raise DeployError(f"{to} is not an eligible backup: {rep['candidates']}")
    from .errors import IrisrepError

    with _connect_to(dirpath, rep["primary"]) as conn:
        try:
            new = conn.switchover()
        except IrisrepError as e:
            raise DeployError(f"{rep['primary']}: {e}") from None
    prefix = rep["primary"].rpartition("/")[0]
    return f"{prefix}/{new}" if prefix else new


def promotion_report(dirpath: Path, member: str) -> dict:
    """What promoting `member` would start from: its journal position, the primary's
    last known end, and what may be lost (bytes it never received)."""
    with _connect_to(dirpath, member) as conn:
        st = conn.status()
    end = int(st.get("journal_durable") or 0)
    primary_end = st.get("primary_end")
    return {
        "member": member,
        "role": st.get("role"),
        "kind": st.get("kind"),
        "epoch": st.get("epoch"),
        "journal_end": end,
        "applied": st.get("applied"),
        "primary_end_last_known": primary_end,
        "may_lose_bytes": max(0, int(primary_end or 0) - end),
    }


def dejournal(dirpath: Path, member: str, action: str, mirror: str | None = None) -> dict:
    """`irisrep dejournal pause|resume MEMBER --mirror M`: that mirror's status after."""
    from .errors import IrisrepError

    with _connect_to(dirpath, member) as conn:
        try:
            return conn.dejournal(action, mirror)
        except IrisrepError as e:
            raise DeployError(f"{member}: {e}") from None


def promote(dirpath: Path, member: str) -> int:
    """Manual promotion (a DR async, or a backup whose primary is gone). Refused while
    another member of its mirror answers as primary: two primaries would both take
    writes (another mirror's primary is no concern of this one)."""
    from .errors import IrisrepError

    dep = load(dirpath)
    entry = _entry(dep, dirpath, member)
    if entry["kind"] == "async-reporting":
        raise DeployError(
            f"{member} is a reporting async: it is never promoted (a backup or a DR async is)"
        )
    mname = _mirror_of(dep, entry)
    user, password = credentials(dirpath)
    for m in dep["members"]:
        if m["name"] == member or _mirror_of(dep, m) != mname:
            continue
        if _member_status(dirpath, m, user, password).get("role") == "primary":
            raise DeployError(f"{m['name']} is primary: stop it first, or use irisrep switchover")
    with _connect_to(dirpath, member) as conn:
        st = conn.status()
        if st.get("role") == "primary":
            raise DeployError(f"{member} is already primary")
        try:
            return conn.promote()
        except IrisrepError as e:  # FailoverIneligibleError: a reporting async, a copy
            raise DeployError(f"{member}: {e}") from None


# --- session ---------------------------------------------------------------------------------


def session(
    dirpath: Path,
    member: str,
    commands: str | None = None,
    *,
    stdin=None,
    out=None,
    err=None,
) -> int:
    """ObjectScript on one member (directly: a write on a backup gives <PROTECT>, it
    is not routed to the primary): `commands` (-c) if given, else the interactive
    terminal when stdin is a terminal (history in <dir>/.session_history), else the
    lines of stdin. Exit status as terminal.run_session."""
    from .client import connect_member
    from .constants import TERMINAL_HISTORY_FILE_NAME
    from .errors import IrisrepError
    from .terminal import run_session

    dep = load(dirpath)
    m = next((x for x in dep["members"] if x["name"] == member), None)
    if m is None:
        raise DeployError(f"no member {member!r} in {dirpath}")
    user, password = credentials(dirpath)
    try:
        conn = connect_member(m["client_address"], user=user, password=password)
    except (OSError, IrisrepError) as exc:
        raise DeployError(f"cannot connect to {member} at {m['client_address']}: {exc}") from None
    with conn:
        return run_session(
            conn,
            commands=commands,
            history_file=dirpath / TERMINAL_HISTORY_FILE_NAME,
            stdin=stdin,
            out=out,
            err=err,
        )


def member_config(dirpath: Path, member: str) -> MemberConfig:
    return load_config(dirpath / member / "member.toml")
