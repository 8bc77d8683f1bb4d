"""Read-write copies on a reporting async, per-mirror HTTP checks and metrics, and a
switchover in one mirror of several (issue 10).

The config checks and the read-write copy of the async's own mirror run in-process
(one small mirror: A, B and a reporting async R). The rest runs real processes:
one `deploy.up(mirrors=2, reporting=1)` serves the module's later tests in order
(HTTP, read-write followed copy, switchover in MIRROR1 through the CLI).
"""

from __future__ import annotations

import dataclasses
import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from mirrorkit import cli, free_ports, mirror_configs, wait_for
from prometheus_client.parser import text_string_to_metric_families
from test_reporting import (
    BASE,
    _conn,
    _copy_equals,
    _follow,
    _mirror,
    _r1_reachable,
    _r1_status,
    _wait,
    _write,
)

from irisrep.config import Address, load_config, parse_config
from irisrep.constants import COPY_INELIGIBLE_FILE_NAME
from irisrep.deploy import dejournal, down, load, member_op, ps, up
from irisrep.errors import ConfigError, FailoverIneligibleError, ProtectError, TransactionError
from irisrep.events import read_events
from irisrep.member import Member

# --- config --------------------------------------------------------------------------


def _rw(text: str, value: str = "read-write") -> str:
    return text.replace('mirror_name = "M2"', f'mirror_name = "M2"\ncopy = "{value}"')


def test_copy_key_per_follow(tmp_path):
    c = parse_config(
        BASE.format(kind="async-reporting") + _rw(_follow("M2", 8001)), base_dir=tmp_path
    )
    assert c.follow[0].copy == "read-write" and c.follow[0].read_write
    assert c.copy_mode("M2") == "read-write" and c.copy_mode("M1") == "read-only"
    assert parse_config(c.to_toml(), base_dir=tmp_path) == c
    plain = parse_config(
        BASE.format(kind="async-reporting") + _follow("M2", 8001), base_dir=tmp_path
    )
    assert plain.follow[0].copy == "read-only" and "copy = " not in plain.to_toml()


@pytest.mark.parametrize("value", ['"rw"', '"READ-WRITE"', "true", "1"])
def test_copy_key_bad_values(tmp_path, value):
    text = _follow("M2", 8001).replace('mirror_name = "M2"', f'mirror_name = "M2"\ncopy = {value}')
    with pytest.raises(ConfigError) as e:
        parse_config(BASE.format(kind="async-reporting") + text, base_dir=tmp_path)
    assert e.value.key == "follow[0].copy"
    assert '"read-only", "read-write"' in str(e.value)


def test_copy_key_top_level(tmp_path):
    top = 'copy = "read-write"\nmirror_key ='
    c = parse_config(
        BASE.format(kind="async-reporting").replace("mirror_key =", top), base_dir=tmp_path
    )
    assert c.copy == "read-write" and c.copy_mode("M1") == "read-write"
    assert parse_config(c.to_toml(), base_dir=tmp_path) == c
    for me in ("R1", "A"):  # a DR async, a failover member
        text = BASE.format(kind="async-dr").replace("mirror_key =", top)
        text = text.replace('member_name = "R1"', f'member_name = "{me}"')
        with pytest.raises(ConfigError) as e:
            parse_config(text, base_dir=tmp_path)
        assert e.value.key == "copy" and "eligible to become primary" in str(e.value)
    with pytest.raises(ConfigError) as e:
        parse_config(
            BASE.format(kind="async-reporting").replace(
                "mirror_key =", 'copy = "rw"\nmirror_key ='
            ),
            base_dir=tmp_path,
        )
    assert e.value.key == "copy"


# --- a read-write copy of the async's own mirror (in-process) -------------------------------


def _reporting(cfg, **changes):
    """cfg of the async C1 as a reporting async, with `changes`."""
    members = tuple(
        dataclasses.replace(m, kind="async-reporting") if m.name == "C1" else m for m in cfg.members
    )
    return dataclasses.replace(cfg, members=members, **changes)


def test_read_write_own_copy_in_process(tmp_path):
    a_cfg, b_cfg, c_cfg = mirror_configs(tmp_path, asyncs=1, qos_timeout_ms=2000)
    r_cfg = _reporting(
        c_cfg, copy="read-write", http_address=Address("127.0.0.1", free_ports(1)[0])
    )
    a = Member(a_cfg, client_listener=False).start()
    b = Member(b_cfg, client_listener=False).start()
    r = Member(r_cfg, client_listener=False).start()
    try:
        wait_for(lambda: a.replicator.active is not None, what="B Active")
        a.database.globals["x"][1] = "from A"
        wait_for(lambda: r.database.globals["x"].get(1) == "from A", what="R applied")
        # Marked before any write, for good; said in status and in the events.
        mark = Path(r_cfg.data_dir) / COPY_INELIGIBLE_FILE_NAME
        assert mark.exists()
        st = r.status()
        assert st["copy"] == "read-write: not eligible to fail over"
        assert st["read_write"] and not st["failover_eligible"]
        assert st["mirrors"][0]["copy"] == st["copy"]
        # Local writes: set, kill; dejournaling goes on (and may overwrite them).
        g = r.database.globals["local"]
        g[1] = "mine"
        g[2] = "gone"
        del g[2]
        assert g[1] == "mine" and g.get(2) is None
        r.database.globals["x"][1] = "local over mirrored"
        a.database.globals["x"][1] = "A again"
        a.database.globals["x"][2] = "more"
        wait_for(lambda: r.database.globals["x"].get(2) == "more", what="R applied more")
        assert r.database.globals["x"][1] == "A again"  # the mirror's update won
        # Nothing local went into the mirror's journal: positions equal A's.
        wait_for(
            lambda: r.database.journal.durable_position == a.database.journal.end_position,
            what="R's journal = A's",
        )
        with pytest.raises(TransactionError, match="read-write mirror copy"):
            r.database.tstart()
        with pytest.raises(FailoverIneligibleError, match="reporting async"):
            r.promote()
        events = [e for e in read_events([Path(r_cfg.data_dir)]) if e["kind"] == "read-write"]
        assert len(events) == 1 and "no longer eligible" in events[0]["text"]
        # HTTP: the mirror's replica check and series; IRIS's check says why it fails.
        url = f"http://{r.http.address}"
        code, body = _get(f"{url}/replica?mirror=mirror1&lag=1MB")
        assert code == 200, body
        body = json.loads(body)
        assert body["mirror"] == "MIRROR1" and body["read_write"] and not body["failover_eligible"]
        code, body = _get(f"{url}/mirror_status")
        assert code == 503 and body.decode().splitlines() == [
            "FAILED",
            "MIRROR1: read-write: not eligible to fail over",
        ]
        series = _metrics(url)
        assert series["irisrep_mirror_read_write", "MIRROR1"] == 1
        assert series["irisrep_mirror_failover_eligible", "MIRROR1"] == 0
        # Its primary and backup gone: that mirror's copy is no replica any more.
        b.close()
        a.close()
        wait_for(
            lambda: _get(f"{url}/replica?mirror=MIRROR1")[0] == 503, what="503 without primary"
        )
        code, body = _get(f"{url}/replica/MIRROR1")
        assert code == 503 and "not connected" in json.loads(body)["reason"]
    finally:
        r.close()
        b.close()
        a.close()
    # Back to read-only: still marked (for good), and writes are <PROTECT> again.
    r = Member(_reporting(c_cfg), client_listener=False).start()
    try:
        st = r.status()
        assert st["copy"] == "read-only: not eligible to fail over (was read-write)"
        assert not st["read_write"] and not st["failover_eligible"]
        assert r.database.globals["local"][1] == "mine"  # made durable by close's cycle
        with pytest.raises(ProtectError):
            r.database.globals["local"][1] = "no"
    finally:
        r.close()
    # The same directory as a DR async's: refused before anything opens.
    with pytest.raises(FailoverIneligibleError, match="can never be a async-dr"):
        Member(c_cfg, client_listener=False)
    assert len([e for e in read_events([Path(r_cfg.data_dir)]) if e["kind"] == "read-write"]) == 1


# The per-mirror lag series /metrics must export for each mirror followed.
MIRROR_LAG_SERIES = ("irisrep_mirror_lag_bytes", "irisrep_mirror_lag_seconds")


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _metrics(url: str) -> dict:
    """`/metrics` parsed: {(name, mirror label or None): value}."""
    code, body = _get(f"{url}/metrics")
    assert code == 200
    out = {}
    for fam in text_string_to_metric_families(body.decode()):
        for sample in fam.samples:
            out[sample.name, sample.labels.get("mirror")] = sample.value
    return out


# --- two mirrors and a reporting async (real processes) ----------------------------------


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    d = tmp_path_factory.mktemp("reprw") / "m"
    up(d, mirrors=2, reporting=1, timeout_s=90)
    try:
        # `up` returns when every member answers, the reporting async too.
        assert _r1_reachable(d), "irisrep up returned before R1 took clients"
        yield d
    finally:
        down(d)


def _entry(d, member):
    return next(x for x in load(d)["members"] if x["name"] == member)


def _url(d, member):
    return f"http://{_entry(d, member)['http_address']}"


def test_per_mirror_replica_and_metrics(deployment):
    d = deployment
    _write(d, "MIRROR1/A", "m1", 0, 20)
    _write(d, "MIRROR2/A", "m2", 0, 20)
    _wait(lambda: _copy_equals(d, "MIRROR2/A", "MIRROR2", ["m2"]), what="MIRROR2 copy")
    _wait(lambda: _copy_equals(d, "MIRROR1/A", "MIRROR1", ["m1"]), what="MIRROR1 copy")
    url = _url(d, "R1")
    for path, mirror in (
        ("/replica?mirror=MIRROR2&lag=1MB", "MIRROR2"),
        ("/replica/mirror2?lag=1MB", "MIRROR2"),
        ("/replica?mirror=MIRROR1", "MIRROR1"),
    ):
        code, body = _get(url + path)
        assert code == 200, (path, body)
        body = json.loads(body)
        assert body["mirror"] == mirror and body["ok"] and body["connected_to"] in ("A", "B")
        assert body["copy"] == "read-only" and body["failover_eligible"]
    code, body = _get(url + "/replica?mirror=NOPE")
    assert code == 404 and "MIRROR1, MIRROR2" in json.loads(body)["reason"]
    assert _get(url + "/replica?mirror=MIRROR1&mirror=MIRROR2")[0] == 400
    assert _get(url + "/replica?lag=1MB")[0] == 200  # the single-mirror check, unchanged
    # A failover member answers for its own mirror only.
    assert _get(_url(d, "MIRROR2/B") + "/replica?mirror=MIRROR2")[0] == 200
    assert _get(_url(d, "MIRROR2/B") + "/replica?mirror=MIRROR1")[0] == 404
    series = _metrics(url)
    for mirror in ("MIRROR1", "MIRROR2"):
        assert series["irisrep_mirror_connected", mirror] == 1
        assert series["irisrep_mirror_applied_bytes", mirror] > 0
        assert series["irisrep_mirror_read_write", mirror] == 0
        assert series["irisrep_mirror_failover_eligible", mirror] == 1
        labelled = {name for name, label in series if label == mirror}
        assert set(MIRROR_LAG_SERIES) <= labelled  # exported, whatever their values
    assert ("irisrep_lag_bytes", None) in series  # the unlabelled names stay
    dejournal(d, "R1", "pause", "MIRROR2")
    try:
        series = _metrics(url)
        assert series["irisrep_mirror_dejournal_paused", "MIRROR2"] == 1
        assert series["irisrep_mirror_dejournal_paused", "MIRROR1"] == 0
    finally:
        dejournal(d, "R1", "resume", "MIRROR2")


def test_read_write_followed_copy(deployment):
    d = deployment
    r1 = _entry(d, "R1")
    cfg_path = Path(r1["config"])
    original = cfg_path.read_text()
    cfg = load_config(cfg_path)
    rw = dataclasses.replace(
        cfg, follow=tuple(dataclasses.replace(f, copy="read-write") for f in cfg.follow)
    )
    member_op(d, "R1", "stop")
    cfg_path.write_text(rw.to_toml())
    member_op(d, "R1", "start")
    _wait(lambda: _connected(d), timeout_s=40, what="R1 back")
    mark = Path(r1["data_dir"]) / "mirrors" / "MIRROR2" / COPY_INELIGIBLE_FILE_NAME
    assert mark.exists()
    assert not (Path(r1["data_dir"]) / COPY_INELIGIBLE_FILE_NAME).exists()
    with _conn(d, "R1") as r:
        r.use_database("MIRROR2")
        g = r.globals["local"]
        g[1] = "mine"
        g[2] = "gone"
        del g[2]
        assert g[1] == "mine" and g.get(2) is None
        r.use_database(None)
        with pytest.raises(ProtectError):
            r.globals["m1"][1] = "no"  # its own mirror's copy stays read-only
    # Dejournaling goes on beside the local changes.
    _write(d, "MIRROR2/A", "m2", 100, 120)
    with _conn(d, "MIRROR2/A") as p:
        want = list(p.globals["m2"].items())
    with _conn(d, "R1") as r:
        r.use_database("MIRROR2")
        _wait(lambda: list(r.globals["m2"].items()) == want, what="MIRROR2 applied")
        assert r.globals["local"][1] == "mine"
    m2 = _mirror(d, "MIRROR2")
    assert m2["copy"] == "read-write: not eligible to fail over"
    assert m2["read_write"] and not m2["failover_eligible"]
    assert _mirror(d, "MIRROR1")["failover_eligible"]
    rows = {r["member"]: r for r in ps(d)}
    assert {m["mirror"]: m["copy"] for m in rows["R1"]["mirrors"]} == {
        "MIRROR1": "read-only",
        "MIRROR2": "read-write: not eligible to fail over",
    }
    url = _url(d, "R1")
    code, body = _get(url + "/replica/MIRROR2")
    assert code == 200 and json.loads(body)["read_write"]
    assert _metrics(url)["irisrep_mirror_read_write", "MIRROR2"] == 1
    code, body = _get(url + "/mirror_status")
    assert code == 503 and "MIRROR2: read-write: not eligible to fail over" in body.decode()
    events = read_events([Path(r1["data_dir"])])
    assert [e["mirror"] for e in events if e["kind"] == "read-write"] == ["MIRROR2"]
    # Back to read-only: the mark stays, writes are <PROTECT>, the local change kept.
    member_op(d, "R1", "stop")
    cfg_path.write_text(original)
    member_op(d, "R1", "start")
    _wait(lambda: _connected(d), timeout_s=40, what="R1 back read-only")
    m2 = _mirror(d, "MIRROR2")
    assert m2["copy"] == "read-only: not eligible to fail over (was read-write)"
    assert not m2["read_write"] and not m2["failover_eligible"]
    with _conn(d, "R1") as r:
        r.use_database("MIRROR2")
        assert r.globals["local"][1] == "mine"
        with pytest.raises(ProtectError):
            r.globals["local"][1] = "no"
    assert _metrics(url)["irisrep_mirror_failover_eligible", "MIRROR2"] == 0
    # A reporting async is never promoted; the CLI says why.
    p = cli("promote", "--dir", str(d), "R1", check=False)
    assert p.returncode == 1 and "reporting async" in p.stderr


def _global_equals(d, primary, mirror, name):
    """R1's copy of `mirror` holds global `name` as `primary` does (the copy may
    hold local globals too: it was read-write)."""
    with _conn(d, primary) as p:
        want = list(p.globals[name].items())
    with _conn(d, "R1") as r:
        r.use_database(mirror)
        return list(r.globals[name].items()) == want


def _connected(d):
    try:
        st = _r1_status(d)
    except (ConnectionError, OSError):
        return False
    return all(m["status"] == "Connected" for m in st["mirrors"])


def test_switchover_in_one_mirror_via_cli(deployment):
    d = str(deployment)
    # Several mirrors: which one must be said (or implied by --to).
    p = cli("switchover", "--dir", d, "--dry-run", check=False)
    assert p.returncode == 1 and "--mirror" in p.stderr and "MIRROR2" in p.stderr
    rep = json.loads(
        cli("switchover", "--dir", d, "--to", "MIRROR1/B", "--dry-run", "--json").stdout
    )
    assert rep["mirror"] == "MIRROR1" and rep["primary"] == "MIRROR1/A"
    assert [c["member"] for c in rep["candidates"] if c["eligible"]] == ["MIRROR1/B"]
    p = cli("switchover", "--dir", d, "--mirror", "mirror1")
    assert "MIRROR1/B is primary" in p.stdout
    rows = {r["member"]: r for r in ps(deployment)}
    assert rows["MIRROR1/B"]["role"] == "primary"
    assert rows["MIRROR2/A"]["role"] == "primary" and rows["MIRROR2/B"]["role"] == "backup"
    # Another mirror's primary does not block a promotion here; its own does.
    p = cli("promote", "--dir", d, "MIRROR1/A", check=False)
    assert p.returncode == 1 and "MIRROR1/B is primary" in p.stderr
    # R1 follows MIRROR1's new primary; MIRROR2 goes on.
    _write(deployment, "MIRROR1/B", "m1", 500, 520)
    _write(deployment, "MIRROR2/A", "m2", 500, 520)
    _wait(lambda: _copy_equals(deployment, "MIRROR1/B", "MIRROR1", ["m1"]), what="MIRROR1 on B")
    _wait(lambda: _global_equals(deployment, "MIRROR2/A", "MIRROR2", "m2"), what="MIRROR2")
    assert _mirror(deployment, "MIRROR1")["connected_to"] == "B"
    assert _mirror(deployment, "MIRROR2")["connected_to"] == "A"
    # stop/start by the deployment's names, within MIRROR1 only.
    p = cli("stop", "--dir", d, "MIRROR1/A", "--restart", "--wait")
    assert "MIRROR1/A: caught up (Active backup)" in p.stdout
    rows = {r["member"]: r for r in ps(deployment)}
    assert rows["MIRROR1/A"]["role"] == "backup" and rows["MIRROR1/B"]["role"] == "primary"
    assert rows["MIRROR2/A"]["role"] == "primary"
    # And back, named by --to alone.
    p = cli("switchover", "--dir", d, "--to", "MIRROR1/A")
    assert "MIRROR1/A is primary" in p.stdout
    _write(deployment, "MIRROR1/A", "m1", 600, 620)
    _wait(lambda: _copy_equals(deployment, "MIRROR1/A", "MIRROR1", ["m1"]), what="MIRROR1 on A")
