"""Reporting asyncs that follow several mirrors (issue 10, items 3-5).

Config checks run in-process. The rest runs real processes: `deploy.up(mirrors=2,
reporting=1)` starts MIRROR1 and MIRROR2 (A primary, B backup each, one arbiter) and
R1, a reporting async of MIRROR1 that follows MIRROR2 too; one deployment serves
the module's tests in order (apart, paused, failover), so the whole file stays
well under a minute and a half.
"""

from __future__ import annotations

import time

import pytest

import irisrep
from irisrep.client import connect_member
from irisrep.config import FollowedMirror, parse_config
from irisrep.constants import MIRRORS_FOLLOWED_MAX
from irisrep.deploy import credentials, dejournal, down, load, member_op, ps, up
from irisrep.errors import ConfigError

KEY = "00" * 32

BASE = f"""
mirror_name = "M1"
member_name = "R1"
data_dir = "data"
mirror_key = "{KEY}"

[[members]]
name = "A"
kind = "failover"
mirror_address = "127.0.0.1:7001"
client_address = "127.0.0.1:7002"

[[members]]
name = "B"
kind = "failover"
mirror_address = "127.0.0.1:7003"
client_address = "127.0.0.1:7004"

[[members]]
name = "R1"
kind = "{{kind}}"
mirror_address = "127.0.0.1:7005"
client_address = "127.0.0.1:7006"
"""


def _follow(name: str, port: int) -> str:
    return f"""
[[follow]]
mirror_name = "{name}"
mirror_key = "{KEY}"
failover_members = [
  {{ name = "A", mirror_address = "127.0.0.1:{port}" }},
  {{ name = "B", mirror_address = "127.0.0.1:{port + 1}" }},
]
"""


# --- config --------------------------------------------------------------------------


def test_reporting_async_follows_other_mirrors(tmp_path):
    c = parse_config(BASE.format(kind="async-reporting") + _follow("M2", 8001), base_dir=tmp_path)
    assert c.mirrors_followed == ("M1", "M2")
    f = c.follow[0]
    assert isinstance(f, FollowedMirror) and [n for n, _a in f.failover_members] == ["A", "B"]
    assert parse_config(c.to_toml(), base_dir=tmp_path) == c
    # The one-mirror config is unchanged: no [[follow]], one mirror.
    assert parse_config(BASE.format(kind="async-reporting"), base_dir=tmp_path).follow == ()


def test_dr_async_is_refused_a_second_mirror(tmp_path):
    with pytest.raises(ConfigError) as e:
        parse_config(BASE.format(kind="async-dr") + _follow("M2", 8001), base_dir=tmp_path)
    assert e.value.key == "follow"
    assert "DR async follows one mirror only" in str(e.value)
    assert '"async-reporting"' in str(e.value)


def test_follow_limits_and_names(tmp_path):
    text = BASE.format(kind="async-reporting")
    many = "".join(_follow(f"M{i + 2}", 8001 + 2 * i) for i in range(MIRRORS_FOLLOWED_MAX))
    with pytest.raises(ConfigError, match=f"at most {MIRRORS_FOLLOWED_MAX} mirrors") as e:
        parse_config(text + many, base_dir=tmp_path)
    assert e.value.key == "follow"
    with pytest.raises(ConfigError) as e:
        parse_config(text + _follow("m1", 8001), base_dir=tmp_path)
    assert e.value.key == "follow[0].mirror_name"
    bad = _follow("M2", 8001).replace('mirror_key = "', 'mirror_kee = "')
    with pytest.raises(ConfigError) as e:
        parse_config(text + bad, base_dir=tmp_path)
    assert e.value.key == "follow[0].mirror_kee"
    one = _follow("M2", 8001).replace('  { name = "B", mirror_address = "127.0.0.1:8002" },\n', "")
    with pytest.raises(ConfigError) as e:
        parse_config(text + one, base_dir=tmp_path)
    assert e.value.key == "follow[0].failover_members"


# --- two mirrors and a reporting async (real processes) ----------------------------------


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    d = tmp_path_factory.mktemp("rep") / "m"
    up(d, mirrors=2, reporting=1, timeout_s=60)
    try:
        # `up` waits for each mirror's Active backup, not for the reporting async.
        _wait(lambda: _r1_reachable(d), timeout_s=60, what="R1 to take clients")
        yield d
    finally:
        down(d)


def _conn(d, member):
    m = next(x for x in load(d)["members"] if x["name"] == member)
    user, password = credentials(d)
    return connect_member(m["client_address"], user=user, password=password)


def _dump(conn, name):
    return list(conn.globals[name].items())


def _mirror(d, mirror):
    st = _r1_status(d)
    return next(m for m in st["mirrors"] if m["mirror"] == mirror)


def _r1_reachable(d) -> bool:
    try:
        _r1_status(d)
    except ConnectionRefusedError:
        return False
    return True


def _r1_status(d):
    with _conn(d, "R1") as c:
        return c.status()


def _wait(pred, timeout_s=30.0, what=""):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _write(d, member, name, lo, hi):
    with _conn(d, member) as c:
        g = c.globals[name]
        for i in range(lo, hi):
            g[i] = f"{name}-{i}"
            g["sub", i] = i * 3


def _copy_equals(d, primary, mirror, names):
    """R1's copy of `mirror` equals `primary`'s database, key by key."""
    with _conn(d, primary) as p:
        want = {n: _dump(p, n) for n in names}
    with _conn(d, "R1") as r:
        assert r.use_database(mirror) == mirror
        got = {n: _dump(r, n) for n in names}
        others = r.global_names()
    return got == want and set(others) == {n for n in names if want[n]}


def test_two_mirrors_apart_and_equal(deployment):
    d = deployment
    _write(d, "MIRROR1/A", "m1", 0, 200)
    _write(d, "MIRROR2/A", "m2", 0, 150)
    _wait(lambda: _copy_equals(d, "MIRROR1/A", "MIRROR1", ["m1", "m2"]), what="MIRROR1 copy")
    _wait(lambda: _copy_equals(d, "MIRROR2/A", "MIRROR2", ["m1", "m2"]), what="MIRROR2 copy")
    # Apart: each copy holds only its own mirror's global, in its own directory.
    with _conn(d, "R1") as r:
        assert r.global_names() == ["m1"]  # the member's own database: MIRROR1
        r.use_database("MIRROR2")
        assert r.global_names() == ["m2"]
        assert r.globals["m2"][149] == "m2-149"
        with pytest.raises(Exception, match="PROTECT|primary"):
            r.globals["m2"][1] = "no"  # a copy is read-only
    r1 = next(m for m in load(d)["members"] if m["name"] == "R1")
    from pathlib import Path

    assert (Path(r1["data_dir"]) / "mirrors" / "MIRROR2" / "DB.dat").exists()
    rows = {r["member"]: r for r in ps(d)}
    assert [m["mirror"] for m in rows["R1"]["mirrors"]] == ["MIRROR1", "MIRROR2"]
    assert all(m["status"] == "Connected" for m in rows["R1"]["mirrors"])


def test_a_report_from_both_mirrors_in_the_local_database(deployment):
    """Issue 10: R1 reads both mirrors' copies and writes a report into its own local
    database REPORT; the report is what the two primaries hold, and REPORT stays on
    R1 (no primary has it)."""
    d = deployment
    with _conn(d, "MIRROR1/A") as c:
        for i in range(40):
            c.globals["sale"][i] = i
    with _conn(d, "MIRROR2/A") as c:
        for i in range(25):
            c.globals["sale"][i] = 100 + i
    want = {"MIRROR1": sum(range(40)), "MIRROR2": sum(100 + i for i in range(25))}
    every = ["m1", "m2", "sale"]  # the globals this module's tests write
    _wait(lambda: _copy_equals(d, "MIRROR1/A", "MIRROR1", every), what="MIRROR1 copy")
    _wait(lambda: _copy_equals(d, "MIRROR2/A", "MIRROR2", every), what="MIRROR2 copy")
    with _conn(d, "R1") as r:
        totals = {}
        for mirror in ("MIRROR1", "MIRROR2"):
            r.use_database(mirror)
            totals[mirror] = sum(v for _k, v in r.globals["sale"].items())
        assert r.use_database("report") == "REPORT"
        for mirror, total in totals.items():
            r.globals["total"][mirror] = total
        r.globals["total"][()] = sum(totals.values())
        assert dict(r.globals["total"].items()) == {
            (): sum(want.values()),
            ("MIRROR1",): want["MIRROR1"],
            ("MIRROR2",): want["MIRROR2"],
        }
    with _conn(d, "R1") as r:
        r.use_database("MIRROR2")
        with pytest.raises(irisrep.ProtectError) as e:
            r.globals["sale"][1] = "no"
        # Not sent on to MIRROR1's primary (R1's own mirror): another mirror's copy.
        assert not isinstance(e.value, irisrep.NotPrimaryError)
        assert "another mirror" in str(e.value)
    with _conn(d, "R1") as r:  # durable in R1's local instance, read back fresh
        r.use_database("REPORT")
        assert r.globals["total"][()] == sum(want.values())
        r.use_database(None)
        assert r.globals["total"].data() == 0  # not in MIRROR1's copy
    for primary in ("MIRROR1/A", "MIRROR2/A"):
        with _conn(d, primary) as c:
            with pytest.raises(irisrep.DatabaseNotFoundError):
                c.use_database("REPORT")
            c.globals["sale"].kill()  # the module's other tests compare global lists


def test_pause_dejournaling_one_mirror(deployment):
    d = deployment
    before = _mirror(d, "MIRROR2")
    st = dejournal(d, "R1", "pause", "MIRROR2")
    assert st["dejournal_paused"] and st["mirror"] == "MIRROR2"
    _write(d, "MIRROR2/A", "m2", 1000, 1100)
    _write(d, "MIRROR1/A", "m1", 1000, 1100)
    # Received (and durable) grows, applied stays where it was: the lag grows.
    paused = _wait(
        lambda: (m := _mirror(d, "MIRROR2"))["durable"] > before["durable"] and m,
        what="MIRROR2 received while paused",
    )
    time.sleep(0.3)
    paused = _mirror(d, "MIRROR2")
    assert paused["applied"] == before["applied"]
    assert paused["dejournal_lag_bytes"] > 0 and paused["dejournaling"].startswith("Paused")
    with _conn(d, "R1") as r:
        r.use_database("MIRROR2")
        assert r.globals["m2"].get(1000) is None
    # The other mirror is unaffected.
    _wait(lambda: _copy_equals(d, "MIRROR1/A", "MIRROR1", ["m1"]), what="MIRROR1 while paused")
    st = dejournal(d, "R1", "resume", "MIRROR2")
    assert not st["dejournal_paused"]
    _wait(lambda: _copy_equals(d, "MIRROR2/A", "MIRROR2", ["m2"]), what="MIRROR2 after resume")
    after = _mirror(d, "MIRROR2")
    assert after["applied"] == after["durable"] and after["dejournal_lag_bytes"] == 0


def test_failover_in_one_mirror(deployment):
    d = deployment
    member_op(d, "MIRROR1/A", "kill")
    new = _wait(
        lambda: next(
            (
                r["member"]
                for r in ps(d)
                if r["mirror"] == "MIRROR1" and r["role"] == "primary" and r["member"] != "R1"
            ),
            None,
        ),
        timeout_s=40,
        what="MIRROR1's takeover",
    )
    assert new == "MIRROR1/B"
    _write(d, new, "m1", 2000, 2100)
    _write(d, "MIRROR2/A", "m2", 2000, 2100)  # the other mirror's stream goes on
    # Nothing lost, nothing repeated: the copy equals the new primary key by key.
    _wait(lambda: _copy_equals(d, new, "MIRROR1", ["m1"]), timeout_s=40, what="copy of new")
    _wait(lambda: _copy_equals(d, "MIRROR2/A", "MIRROR2", ["m2"]), what="MIRROR2 after")
    m1 = _mirror(d, "MIRROR1")
    assert m1["connected_to"] == "B" and m1["status"] == "Connected"


def test_reporting_async_crash_and_restart_follows_both_again(deployment):
    # Last: it crashes R1. Each followed mirror's copy reloads its epoch and recovers
    # from its own journal, then catches up what its mirror wrote meanwhile.
    d = deployment
    primary1 = next(
        r["member"] for r in ps(d) if r["mirror"] == "MIRROR1" and r["role"] == "primary"
    )
    member_op(d, "R1", "kill")
    _write(d, primary1, "m1", 3000, 3100)
    _write(d, "MIRROR2/A", "m2", 3000, 3100)
    member_op(d, "R1", "start")

    def equal(primary, mirror, names):
        try:
            return _copy_equals(d, primary, mirror, names)
        except ConnectionError:
            return False  # R1 is still starting

    _wait(lambda: equal(primary1, "MIRROR1", ["m1"]), timeout_s=40, what="MIRROR1")
    _wait(lambda: equal("MIRROR2/A", "MIRROR2", ["m2"]), timeout_s=40, what="MIRROR2")
    for name in ("MIRROR1", "MIRROR2"):
        m = _mirror(d, name)
        assert m["status"] == "Connected" and m["lag_bytes"] == 0
