"""The HTTP health and metrics listener (`http_address`, irisrep.httpapi) over real
HTTP: the checks' rules on status snapshots, a member that is not running, two
members in one process (each its own metrics), and a mirror of real processes
(`irisrep up`) before and after its primary is killed and restarted."""

from __future__ import annotations

import dataclasses
import json
import socket
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from mirrorkit import cli, free_ports, mirror_configs, wait_for
from prometheus_client.parser import text_string_to_metric_families

import irisrep
from irisrep.config import Address
from irisrep.constants import HTTP_REQUEST_BYTES_MAX
from irisrep.deploy import credentials, load
from irisrep.httpapi import HttpServer, check_backup, check_primary, check_replica, parse_lag
from irisrep.member import Member


def http(address: str, path: str, method: str = "GET") -> tuple[int, str]:
    """(status, body) of one request; raises URLError when nothing listens."""
    req = urllib.request.Request(f"http://{address}{path}", method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        with e:
            return e.code, e.read().decode()


def http_json(address: str, path: str) -> tuple[int, dict]:
    code, body = http(address, path)
    return code, json.loads(body)


def metrics(address: str) -> dict[str, dict[tuple, float]]:
    """/metrics parsed: family name -> {(sample name, sorted labels): value}."""
    code, body = http(address, "/metrics")
    assert code == 200
    out: dict[str, dict[tuple, float]] = {}
    for fam in text_string_to_metric_families(body):
        out[fam.name] = {(s.name, tuple(sorted(s.labels.items()))): s.value for s in fam.samples}
    return out


def sample(m: dict, family: str, name: str | None = None, **labels) -> float:
    return m[family][(name or family, tuple(sorted(labels.items())))]


# Every metric issue 7 names, by family (as the Prometheus text parser names it) and
# type: role, epoch, journal positions written / received / applied, lag in bytes and
# seconds, the commit and ack latency histograms, failovers, WIJ recoveries,
# transactions by outcome.
ISSUE_METRICS = {
    "irisrep_role": "gauge",
    "irisrep_epoch": "gauge",
    "irisrep_journal_written_bytes": "gauge",
    "irisrep_journal_received_bytes": "gauge",
    "irisrep_journal_applied_bytes": "gauge",
    "irisrep_lag_bytes": "gauge",
    "irisrep_lag_seconds": "gauge",
    "irisrep_commit_latency_seconds": "histogram",
    "irisrep_ack_latency_seconds": "histogram",
    "irisrep_failovers": "counter",
    "irisrep_wij_recoveries": "counter",
    "irisrep_transactions": "counter",
}


def assert_issue_metrics(address: str) -> None:
    """/metrics, parsed by prometheus_client's text parser, has every metric of the
    issue with its type and a value (a histogram: its buckets, count and sum)."""
    code, body = http(address, "/metrics")
    assert code == 200
    fams = {f.name: f for f in text_string_to_metric_families(body)}
    for name, kind in ISSUE_METRICS.items():
        assert name in fams, name
        assert fams[name].type == kind, (name, fams[name].type)
        assert fams[name].samples, name
    for name in ("irisrep_commit_latency_seconds", "irisrep_ack_latency_seconds"):
        kinds = {s.name.removeprefix(name) for s in fams[name].samples}
        assert {"_bucket", "_count", "_sum"} <= kinds, (name, kinds)
        assert any(s.labels.get("le") == "+Inf" for s in fams[name].samples), name
    outcomes = {s.labels.get("outcome") for s in fams["irisrep_transactions"].samples}
    assert {"commit", "rollback"} <= outcomes


# --- the rules, on status snapshots --------------------------------------------------------

PRIMARY = {"running": True, "role": "primary", "status": "Primary", "fenced_by": None}
BACKUP = {"running": True, "role": "backup", "status": "Backup", "connected_to": "A"}


@pytest.mark.parametrize(
    "change, ok",
    [
        ({}, True),
        ({"status": "In Trouble"}, False),
        ({"fenced_by": 3}, False),
        ({"handing_over": True}, False),
        ({"role": "backup", "status": "Backup"}, False),
        ({"running": False, "reason": "the member is stopping"}, False),
    ],
)
def test_primary_rule(change, ok):
    assert check_primary({**PRIMARY, **change})[0] is ok


@pytest.mark.parametrize(
    "change, ok",
    [
        ({}, True),
        ({"status": "Synchronizing"}, False),
        ({"status": "Waiting", "connected_to": None}, False),
        ({"role": "async", "status": "Connected"}, False),
        ({"running": False}, False),
    ],
)
def test_backup_rule(change, ok):
    assert check_backup({**BACKUP, **change})[0] is ok


@pytest.mark.parametrize(
    "change, lag_max, ok",
    [
        ({"lag_bytes": 0}, None, True),
        ({"lag_bytes": 0}, 0, True),
        ({"lag_bytes": 4096}, 4096, True),
        ({"lag_bytes": 4097}, 4096, False),
        ({"lag_bytes": 5_000_000, "status": "Synchronizing"}, None, True),
        ({"lag_bytes": 5_000_000, "status": "Synchronizing"}, 1024**2, False),
        ({"lag_bytes": 0, "role": "async", "status": "Connected"}, 0, True),
        # Without a primary its last known lag means nothing: never a replica.
        ({"lag_bytes": 0, "status": "Waiting", "connected_to": None}, None, False),
        ({"lag_bytes": 0, "role": "primary", "status": "Primary"}, None, False),
    ],
)
def test_replica_rule(change, lag_max, ok):
    assert check_replica({**BACKUP, **change}, lag_max)[0] is ok


@pytest.mark.parametrize(
    "text, n",
    [
        ("0", 0),
        ("1048576", 1048576),
        ("100B", 100),
        ("16kB", 16 * 1024),
        ("10MB", 10 * 1024**2),
        ("10mb", 10 * 1024**2),
        ("1.5GiB", 3 * 1024**3 // 2),
        ("2TB", 2 * 1024**4),
        (" 64 MB ", 64 * 1024**2),
    ],
)
def test_parse_lag(text, n):
    assert parse_lag(text) == n


@pytest.mark.parametrize("text", ["", "-1", "abc", "10XB", "1e6", "0x10", "1.", "9" * 40, "½"])
def test_parse_lag_refuses(text):
    with pytest.raises(ValueError, match="not a size in bytes"):
        parse_lag(text)


# --- members in this process ------------------------------------------------------------------


def test_a_member_that_is_not_running_answers_503(tmp_path):
    """No database yet (or stopping): every check 503, /metrics still answers; the
    protocol edges: 404, 405, 400, 431, HEAD."""
    cfg = mirror_configs(tmp_path)[0]
    m = Member(cfg)  # not started: no database
    srv = HttpServer(m, Address("127.0.0.1", 0)).start()
    addr = str(srv.address)
    try:
        code, body = http_json(addr, "/health")
        assert code == 503 and body["running"] is False and body["member"] == "A"
        assert "not started" in body["reason"]
        code, body = http_json(addr, "/primary")
        assert code == 503 and body["ok"] is False
        assert http(addr, "/mirror_status") == (503, "FAILED")
        assert http(addr, "/csp/bin/mirror_status.cxw") == (503, "FAILED")
        assert http(addr, "/backup")[0] == 503
        assert http(addr, "/replica?lag=1MB")[0] == 503
        fams = metrics(addr)
        assert sample(fams, "irisrep_up") == 0
        assert sample(fams, "irisrep_member_info", **_info(m)) == 1
        assert "irisrep_journal_written_bytes" in fams  # the family, without a value

        assert http(addr, "/nope")[0] == 404
        assert http(addr, "/health/")[0] == 404
        for method in ("POST", "PUT", "DELETE", "OPTIONS", "PATCH"):
            code, text = http(addr, "/health", method)
            assert code == 405 and text.startswith(f"method {method}"), (method, code, text)
        assert http(addr, "/replica?lag=abc")[0] == 400
        assert http(addr, "/replica?lag=1&lag=2")[0] == 400
        assert http(addr, "/replica?" + "&".join(f"x{i}=1" for i in range(40)))[0] == 400
        req = urllib.request.Request(f"http://{addr}/mirror_status", method="HEAD")
        with pytest.raises(urllib.error.HTTPError) as exc:
            urllib.request.urlopen(req, timeout=10)
        assert exc.value.code == 503 and exc.value.read() == b""
        exc.value.close()
        # Request line and headers past the budget: 431, the connection closed.
        with socket.create_connection((srv.address.host, srv.address.port), timeout=10) as s:
            s.sendall(b"GET /health HTTP/1.0\r\nX-Big: " + b"a" * HTTP_REQUEST_BYTES_MAX + b"\r\n")
            reply = s.makefile("rb").read()
        assert reply.startswith(b"HTTP/1.0 431"), reply[:100]
    finally:
        srv.close()
    with pytest.raises(urllib.error.URLError):
        http(addr, "/health")


def _info(m) -> dict:
    return {"mirror": m.config.mirror_name, "member": m.name, "kind": m.kind}


def test_two_members_in_one_process_keep_their_own_metrics(tmp_path, monkeypatch, caplog):
    """A primary and its backup in this process, each with its HTTP port: commits
    are counted on the primary only, and the backup's applied position follows. An
    exception while answering is a one-line 500, logged, never a traceback."""
    ports = free_ports(2)
    cfgs = [
        dataclasses.replace(c, http_address=Address("127.0.0.1", p))
        for c, p in zip(mirror_configs(tmp_path), ports, strict=True)
    ]
    a = Member(cfgs[0]).start()
    b = Member(cfgs[1]).start()
    try:
        addr_a, addr_b = (str(c.http_address) for c in cfgs)
        assert a.status()["http_address"] == addr_a
        wait_for(lambda: http(addr_b, "/backup")[0] == 200, 20, "B Active (status Backup)")
        g = a.database.globals["h"]
        for i in range(7):
            g[i] = i
        with a.database.transaction():
            g["t"] = 1
        with pytest.raises(KeyError), a.database.transaction():
            g["r"] = 1
            raise KeyError("roll back")
        end = a.database.journal.end_position
        fa = metrics(addr_a)
        assert (
            sample(fa, "irisrep_transactions", "irisrep_transactions_total", outcome="commit") == 1
        )
        assert (
            sample(fa, "irisrep_transactions", "irisrep_transactions_total", outcome="rollback")
            == 1
        )
        # 7 autocommitted SETs and one TCOMMIT waited for durability (and B's ack).
        assert (
            sample(fa, "irisrep_commit_latency_seconds", "irisrep_commit_latency_seconds_count")
            == 8
        )
        acks = sample(fa, "irisrep_ack_latency_seconds", "irisrep_ack_latency_seconds_count")
        assert 1 <= acks <= 8
        assert sample(fa, "irisrep_journal_written_bytes") == end
        assert sample(fa, "irisrep_peer_active", peer="B") == 1
        wait_for(
            lambda: sample(metrics(addr_b), "irisrep_journal_applied_bytes") == end,
            20,
            "B to apply A's journal",
        )
        fb = metrics(addr_b)
        assert (
            sample(fb, "irisrep_commit_latency_seconds", "irisrep_commit_latency_seconds_count")
            == 0
        )
        assert (
            sample(fb, "irisrep_transactions", "irisrep_transactions_total", outcome="commit") == 0
        )
        assert sample(fb, "irisrep_role", role="backup") == 1
        assert sample(fb, "irisrep_member_info", **_info(b)) == 1
        assert sample(fb, "irisrep_epoch") == sample(fa, "irisrep_epoch") == a.epoch

        def broken_status():
            raise RuntimeError("status broke\nsecond line")

        monkeypatch.setattr(b, "status", broken_status)
        for path in ("/health", "/replica", "/metrics"):
            code, text = http(addr_b, path)
            assert (code, text) == (500, "internal error: RuntimeError: status broke\n"), path
        logged = [r for r in caplog.records if r.name == "irisrep.http" and r.exc_info]
        assert len(logged) == 3 and "status broke" in str(logged[0].exc_info[1])
        assert http(addr_a, "/health")[0] == 200  # A's listener is its own
    finally:
        b.close()
        a.close()
    for addr in (addr_a, addr_b):
        with pytest.raises(urllib.error.URLError):
            http(addr, "/health")


# --- a mirror of processes, through a failover ------------------------------------------------


def test_endpoints_through_a_failover(tmp_path):
    d = str(tmp_path / "m")
    cli("up", "--dir", d, "--asyncs", "1", "--qos-ms", "500")
    try:
        inv = {m["name"]: m for m in json.loads(cli("inventory", "--dir", d, "--json").stdout)}
        web = {n: m["http_address"] for n, m in inv.items()}
        assert sorted(web) == ["A", "B", "C1"]
        taken = {m[k] for m in inv.values() for k in ("mirror_address", "client_address")}
        for n, addr in web.items():
            assert addr.startswith("127.0.0.1:") and addr not in taken, (n, addr)
        assert len(set(web.values())) == 3
        a, b, c1 = web["A"], web["B"], web["C1"]

        # Before: A primary, B its Active backup, C1 a DR async.
        wait_for(lambda: http(b, "/backup")[0] == 200, 30, "B Active")
        code, st = http_json(a, "/health")
        assert code == 200 and st["role"] == "primary" and st["epoch"] == 1
        assert st["http_address"] == a
        for path in ("/primary", "/master"):
            code, body = http_json(a, path)
            assert code == 200 and body["role"] == "primary" and body["epoch"] == 1, body
        assert http(a, "/mirror_status") == (200, "SUCCESS")
        assert http(a, "/csp/bin/mirror_status.cxw") == (200, "SUCCESS")
        assert http(a, "/backup")[0] == 503
        assert http(a, "/replica")[0] == 503
        code, body = http_json(b, "/primary")
        assert code == 503 and body["role"] == "backup" and body["status"] == "Backup", body
        assert http(b, "/mirror_status") == (503, "FAILED")
        for lag in ("0", "1048576", "10MB", "16kB"):
            wait_for(lambda lag=lag: http(b, f"/replica?lag={lag}")[0] == 200, 20, f"lag={lag}")
        code, body = http_json(b, "/replica?lag=10MB")
        assert body["lag_max_bytes"] == 10 * 1024**2 and body["lag_bytes"] <= body["lag_max_bytes"]
        for bad in ("abc", "-5", "10XB", ""):
            assert http(b, f"/replica?lag={bad}")[0] == 400, bad
        assert http(c1, "/backup")[0] == 503  # an async is never a backup
        wait_for(lambda: http(c1, "/replica?lag=1kB")[0] == 200, 20, "C1 a replica")
        assert http(c1, "/primary")[0] == 503
        assert http(a, "/no/such/path")[0] == 404
        assert http(a, "/primary", "POST")[0] == 405

        # Writes on A, then its metrics.
        user, password = credentials(Path(d))
        addrs = [m["client_address"] for m in load(Path(d))["members"]]
        with irisrep.connect(addrs, user=user, password=password) as conn:
            g = conn.globals["web"]
            for i in range(20):
                g[i] = i
            for i in range(5):
                with conn.transaction():
                    g["t", i] = i
            for _ in range(2):
                with pytest.raises(RuntimeError), conn.transaction():
                    g["r"] = 1
                    raise RuntimeError("roll back")
        fa = metrics(a)
        tx = "irisrep_transactions_total"
        assert sample(fa, "irisrep_transactions", tx, outcome="commit") == 5
        assert sample(fa, "irisrep_transactions", tx, outcome="rollback") == 2
        commits = sample(
            fa, "irisrep_commit_latency_seconds", "irisrep_commit_latency_seconds_count"
        )
        assert commits >= 25  # 20 SETs + 5 TCOMMITs (plus the members' own)
        assert sample(fa, "irisrep_ack_latency_seconds", "irisrep_ack_latency_seconds_count") >= 1
        assert sample(fa, "irisrep_role", role="primary") == 1
        assert sample(fa, "irisrep_epoch") == http_json(a, "/health")[1]["epoch"] == 1
        written = sample(fa, "irisrep_journal_written_bytes")
        assert written >= sample(fa, "irisrep_journal_durable_bytes") > 0
        assert sample(fa, "irisrep_failovers", "irisrep_failovers_total", how="failover") == 0
        assert sample(fa, "irisrep_wij_recoveries", "irisrep_wij_recoveries_total") == 0
        wait_for(
            lambda: sample(metrics(b), "irisrep_journal_applied_bytes") >= written,
            20,
            "B to apply A's writes",
        )
        fb = metrics(b)
        assert sample(fb, "irisrep_role", role="backup") == 1
        assert sample(fb, "irisrep_lag_bytes") == 0 and sample(fb, "irisrep_lag_seconds") == 0
        assert sample(fb, "irisrep_journal_received_bytes") >= written
        assert sample(fa, "irisrep_journal_received_bytes") == written  # the source: its end
        for addr in (a, b, c1):
            assert_issue_metrics(addr)

        # A's process dies: B takes over (through A's agent) in epoch 2.
        cli("kill", "--dir", d, "A")
        wait_for(lambda: _code(b, "/primary") == 200, 30, "B to answer 200 on /primary")
        code, body = http_json(b, "/primary")
        assert body["role"] == "primary" and body["epoch"] == 2 and body["status"] == "Primary"
        assert http(b, "/mirror_status") == (200, "SUCCESS")
        assert http(b, "/backup")[0] == 503
        with pytest.raises(urllib.error.URLError):
            http(a, "/health")  # nothing listens where A was
        fb = metrics(b)
        assert sample(fb, "irisrep_failovers", "irisrep_failovers_total", how="failover") == 1
        assert sample(fb, "irisrep_failovers", "irisrep_failovers_total", how="switchover") == 0
        changes = "irisrep_role_changes_total"
        assert (
            sample(fb, "irisrep_role_changes", changes, **{"from": "backup", "to": "primary"}) == 1
        )
        assert sample(fb, "irisrep_epoch") == 2
        assert sample(fb, "irisrep_role", role="primary") == 1
        assert_issue_metrics(b)
        wait_for(lambda: http(c1, "/replica?lag=0")[0] == 200, 30, "C1 following B")

        # A restarts: it rejoins as B's backup, never as primary.
        cli("start", "--dir", d, "A")
        wait_for(lambda: _code(a, "/backup") == 200, 30, "A Active behind B")
        code, body = http_json(a, "/primary")
        assert code == 503 and body["role"] == "backup" and body["epoch"] == 2, body
        assert http(a, "/mirror_status") == (503, "FAILED")
        assert http(b, "/mirror_status") == (200, "SUCCESS")
        fa = metrics(a)
        assert sample(fa, "irisrep_epoch") == 2 and sample(fa, "irisrep_role", role="backup") == 1
        assert_issue_metrics(a)
    finally:
        cli("down", "--dir", d, check=False)


def _code(address: str, path: str) -> int | None:
    """The status code, or None while nothing listens there (a member starting)."""
    try:
        return http(address, path)[0]
    except urllib.error.URLError:
        return None


def test_a_busy_http_port_fails_the_start_and_frees_the_others(tmp_path):
    """The listener binds in Member.start: a port in use is an OSError there, and
    the member's other listeners are closed again (its ports free)."""
    cfg = mirror_configs(tmp_path)[0]
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        m = Member(dataclasses.replace(cfg, http_address=Address("127.0.0.1", port)))
        with pytest.raises(OSError):
            m.start()
    assert m.closed and m.http is None and m.database.closed
    for addr in (cfg.me.mirror_address, cfg.me.client_address):
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(tuple(addr))  # free again
