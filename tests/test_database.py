"""The globals API of DESIGN.md section 4 on real files: values, navigation, errors."""

from __future__ import annotations

import os
import random
import threading

import pytest

import irisrep
from irisrep import integrity
from irisrep.constants import BLOCK_SIZE, REFERENCE_BYTES_MAX, STRING_CHARS_MAX


@pytest.fixture
def db(tmp_path):
    d = irisrep.open(tmp_path / "db", commit_mode="relaxed")
    yield d
    d.close()


def reopen(d):
    path = d.path
    d.close()
    reports = integrity.check(path)
    assert all(r.ok for r in reports), [r.errors for r in reports]
    return irisrep.open(path)


def test_design_walkthrough(tmp_path):
    with irisrep.open(tmp_path / "data" / "db") as db:
        g = db.globals["myfirstglobal"]
        g[()] = "congratulations"
        g["a", 1] = "x"
        assert g["a", 1] == "x"
        assert g.get(("a", 2), None) is None
        assert ("a", 1) in g
        assert g.data(("a",)) == 10
        assert g.data(()) == 11
        assert g.order(("a", "")) == 1
        assert g.query(()) == ("a", 1)
        assert g.increment(("n",), 1) == 1
        assert g.increment(("n",), 2) == 3
        assert [s for s, _ in g.items(prefix=("a",))] == [("a", 1)]
        del g["a"]
        assert g.data(("a",)) == 0
    with irisrep.open(tmp_path / "data" / "db") as db:
        g = db.globals["myfirstglobal"]
        assert g[()] == "congratulations"
        assert g["n"] == 3


def test_value_types_round_trip(db):
    g = db.globals["v"]
    values = ["", "text", "ünïcødé 𝄞", 0, -42, 10**30, 1.5, -0.25, 2.0, b"\x00\xffraw"]
    for i, v in enumerate(values):
        g[i] = v
    db2 = reopen(db)
    g = db2.globals["v"]
    got = [g[i] for i in range(len(values))]
    assert got[:9] == ["", "text", "ünïcødé 𝄞", 0, -42, 10**30, 1.5, -0.25, 2]
    assert isinstance(got[8], int)  # 2.0 is stored in canonical number form
    assert got[9] == b"\x00\xffraw"
    db2.close()


def test_collation_numbers_before_strings(db):
    g = db.globals["c"]
    for s in ["b", "a", 10, 2, -1, 1.5, ".5", "01", "1", "-0", "1e3", "Z"]:
        g[s] = 1
    order = [s[0] for s, _ in g.items()]
    assert order == [-1, 0.5, 1, 1.5, 2, 10, "-0", "01", "1e3", "Z", "a", "b"]
    assert g["1"] == g[1]  # one subscript
    walk, s = [], ""
    while (s := g.order((s,))) is not None:
        walk.append(s)
    assert walk == order
    back, s = [], ""
    while (s := g.order((s,), reverse=True)) is not None:
        back.append(s)
    assert back == order[::-1]


def test_kill_zkill_data(db):
    g = db.globals["k"]
    g["a"] = 1
    g["a", 1] = 2
    g["a", 1, "x"] = 3
    g["a", 2] = 4
    g["b"] = 5
    assert g.data("a") == 11 and g.data(("a", 1)) == 11 and g.data(("a", 2)) == 1
    assert g.data(("a", 3)) == 0
    g.zkill(("a", 1))
    assert g.data(("a", 1)) == 10 and g["a", 1, "x"] == 3
    del g["a"]
    assert g.data("a") == 0 and g["b"] == 5
    del g["nothing", "here"]  # KILL of an undefined node is no error (IRIS)
    g.kill()
    assert g.data(()) == 0 and list(g.items()) == []


def test_order_query_reverse_and_levels(db):
    g = db.globals["o"]
    for i in range(1, 6):
        for j in ("x", "y"):
            g[i, j] = f"{i}{j}"
    assert g.order((3,)) == 4
    assert g.order((3,), reverse=True) == 2
    assert g.order((5,)) is None
    assert g.order((1,), reverse=True) is None
    assert g.order((3, "x")) == "y"
    assert g.order((3, "")) == "x"
    assert g.order((3, ""), reverse=True) == "y"
    assert g.query((2, "y")) == (3, "x")
    assert g.query((3, "x"), reverse=True) == (2, "y")
    assert g.query((5, "y")) is None
    assert [s for s, _ in g.items(start=(2,), stop=(4,))] == [
        (2, "x"),
        (2, "y"),
        (3, "x"),
        (3, "y"),
    ]
    assert [s for s, _ in g.items(prefix=(2,), reverse=True)] == [(2, "y"), (2, "x")]


def test_long_values_use_overflow_and_are_freed(db):
    g = db.globals["long"]
    big = "x" * 100_000
    g[1] = big
    g[2] = b"\x01" * 30_000
    assert g[1] == big
    db2 = reopen(db)
    g = db2.globals["long"]
    assert g[1] == big and len(g[2]) == 30_000
    g[1] = "short"
    del g[2]
    db3 = reopen(db2)
    r = integrity.check(db3.path)[0]
    assert r.overflow_blocks == 0 and r.ok
    # the freed blocks are reused, not appended
    blocks_before = db3.store.block_count
    db3.globals["long"][3] = "y" * 50_000
    assert db3.store.block_count == blocks_before
    db3.close()


def test_value_limits(db):
    g = db.globals["lim"]
    g[1] = "a" * STRING_CHARS_MAX
    assert len(g[1]) == STRING_CHARS_MAX
    with pytest.raises(irisrep.MaxStringError):
        g[2] = "a" * (STRING_CHARS_MAX + 1)
    assert g.data(2) == 0
    for bad in (float("nan"), float("inf"), None, [1], {"a": 1}, True):
        with pytest.raises(irisrep.IllegalValueError):
            g[3] = bad
    assert g.data(3) == 0


def test_subscript_limits_change_nothing(db):
    g = db.globals["s"]
    g["keep"] = 1
    bad = [
        "",
        "a\x00b",
        "\ud800",
        float("nan"),
        float("inf"),
        10**40 + 1,
        b"\xff\xfe",
        None,
        ("x" * 600,),
        tuple(range(300)),
    ]
    for b in bad:
        with pytest.raises(irisrep.SubscriptError):
            g[b if isinstance(b, tuple) else (b,)] = 1
    # exactly at the limit and one over
    name_len = len("s") + 1
    per = REFERENCE_BYTES_MAX - name_len - 2  # string subscript: tag + bytes + terminator
    g["y" * per] = "ok"
    with pytest.raises(irisrep.SubscriptError):
        g["y" * (per + 1)] = "no"
    assert [s for s, _ in g.items()] == [("keep",), ("y" * per,)]
    for name in ("", "1abc", "a b", "a_b", "x" * 32, "abc.", "^^a"):
        with pytest.raises(irisrep.SubscriptError):
            db.globals[name][1] = 1


def test_undefined_and_use_after_close(tmp_path):
    db = irisrep.open(tmp_path / "u")
    g = db.globals["u"]
    with pytest.raises(irisrep.UndefinedError) as ei:
        g["missing", 1]
    assert isinstance(ei.value, KeyError)
    assert '^u("missing",1)' in str(ei.value)
    db.close()
    db.close()  # idempotent
    for call in (
        lambda: g[1],
        lambda: g.__setitem__(1, 1),
        lambda: g.data(()),
        lambda: g.order(("",)),
        lambda: list(g.items()),
        lambda: g.kill(),
    ):
        with pytest.raises(irisrep.ClosedError):
            call()


def test_bad_options(tmp_path):
    with pytest.raises(irisrep.ConfigError):
        irisrep.open(tmp_path / "x", direct="sometimes")
    with pytest.raises(irisrep.ConfigError):
        irisrep.open(tmp_path / "x", pool_blocks=3)
    with pytest.raises(FileNotFoundError):
        irisrep.open(tmp_path / "nope", create=False)


def test_corrupted_block_raises_typed_error_and_changes_nothing(tmp_path):
    path = tmp_path / "c"
    with irisrep.open(path, pool_blocks=64, commit_mode="relaxed") as db:
        g = db.globals["c"]
        for i in range(5000):
            g[i] = f"value {i}"
    dat = os.path.join(path, "DB.dat")
    size = os.path.getsize(dat)
    block = size // BLOCK_SIZE - 2  # some tree block
    with open(dat, "r+b") as f:
        f.seek(block * BLOCK_SIZE + 100)
        byte = f.read(1)
        f.seek(block * BLOCK_SIZE + 100)
        f.write(bytes([byte[0] ^ 0x40]))
    report = integrity.check(str(path))[0]
    assert not report.ok
    assert any(f"block {block}" in e and "checksum" in e for e in report.errors)
    db = irisrep.open(path, pool_blocks=64, commit_mode="relaxed")
    g = db.globals["c"]
    with pytest.raises(irisrep.BlockCorruptError) as ei:
        for i in range(5000):
            g[i]
    assert ei.value.block == block and ei.value.path.endswith("DB.dat")
    assert ei.value.expected != ei.value.found


def test_misdirected_block_is_detected(tmp_path):
    path = tmp_path / "m"
    with irisrep.open(path) as db:
        g = db.globals["m"]
        for i in range(3000):
            g[i] = "v" * 20
    dat = os.path.join(path, "DB.dat")
    with open(dat, "r+b") as f:
        f.seek(2 * BLOCK_SIZE)
        two = f.read(BLOCK_SIZE)
        f.seek(3 * BLOCK_SIZE)
        f.write(two)  # the right bytes at the wrong place
    report = integrity.check(str(path))[0]
    assert any("misdirected" in e or "claimed twice" in e for e in report.errors), report.errors


def test_threads_share_a_database(db):
    g = db.globals["t"]

    def work(n):
        for i in range(500):
            g[n, i] = i
            g.increment(("count",))

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert g["count"] == 2000
    assert sum(1 for _ in g.items()) == 2001


def test_globals_listing(db):
    db.globals["b"][1] = 1
    db.globals["a"][()] = 1
    db.globals["%sys"]["x"] = 1
    db.globals["empty"]  # a Global object alone creates nothing
    assert list(db.globals) == ["%sys", "a", "b"]


def test_items_while_writing(db):
    g = db.globals["w"]
    for i in range(2000):
        g[i] = i
    seen = []
    for subs, v in g.items(batch=64):
        seen.append(subs[0])
        if isinstance(v, int) and v < 1000 and v % 100 == 0:
            g[v + 1000.5] = "ins"  # ahead of the cursor: seen after it re-seeks
    assert seen == sorted(seen)
    assert len(seen) == 2010 and 1000.5 in seen and 1900.5 in seen


def test_free_list_trunks_survive_reopen_and_are_reused(tmp_path):
    path = tmp_path / "f"
    with irisrep.open(path, pool_blocks=256, commit_mode="relaxed") as db:
        g = db.globals["f"]
        for i in range(6000):
            g[i] = "x" * 2000  # ~ one block per 4 nodes, plus overflow-free inline
        g.kill()
        cycles_before = db.wij.status().cycle
        blocks = db.store.block_count
    # Freeing thousands of blocks dirtied a handful of trunks, not thousands of blocks.
    r = integrity.check(str(path))[0]
    assert r.ok, r.errors
    assert r.free_blocks > 2 * (BLOCK_SIZE // 4)  # more than two trunks' worth
    assert r.nodes == 0
    with irisrep.open(path, pool_blocks=256, commit_mode="relaxed") as db:
        g = db.globals["f"]
        for i in range(6000):
            g[i, "again"] = "y" * 2000
        assert db.store.block_count < blocks * 1.01  # the blocks came off the free list
        assert db.wij.status().cycle > cycles_before
    r = integrity.check(str(path))[0]
    assert r.ok and r.nodes == 6000, r.errors


def test_protected_database_refuses_writes_and_changes_nothing(tmp_path):
    with irisrep.open(tmp_path / "p", commit_mode="relaxed") as db:
        g = db.globals["myfirstglobal"]
        g[()] = "congratulations"
        g["a", 1] = 1
        db.set_protect(True)
        assert db.protected
        for call in (
            lambda: g.__setitem__((), "what next?"),
            lambda: g.increment(("n",)),
            lambda: g.kill(("a",)),
            lambda: g.zkill(("a", 1)),
        ):
            with pytest.raises(irisrep.ProtectError) as ei:
                call()
            assert "<PROTECT>" in str(ei.value)
        assert g[()] == "congratulations" and g["a", 1] == 1 and g.get("n") is None
        db.set_protect(False)  # this member became primary
        g[()] = "what next?"
        assert g[()] == "what next?"
    with irisrep.open(tmp_path / "p", protect=True) as db:
        with pytest.raises(irisrep.ProtectError):
            db.globals["myfirstglobal"]["x"] = 1
        with pytest.raises(irisrep.ProtectError):
            db.tstart()  # a TSTART record would fork a backup's journal
        assert db.tlevel == 0
        assert db.globals["myfirstglobal"][()] == "what next?"


def test_a_freed_overflow_block_reused_in_the_same_cycle(tmp_path):
    """Regression: an overflow block freed and handed out again (as a tree node)
    before the next cycle kept its dead overflow image pending beside the node's
    image; the cycle then had two images of one block and the WIJ stopped the
    database (DurabilityError)."""
    db = irisrep.open(tmp_path, write_daemon=False)
    g = db.globals["t"]
    g[1] = "x" * 20_000  # an overflow chain
    g[1] = "small"  # frees it (its images still wait for the cycle)
    for i in range(2000):
        g[i, "k" * 40] = i  # splits take the freed blocks as tree nodes
    db.flush()
    db.close()
    with irisrep.open(tmp_path) as db:
        assert db.globals["t"][1] == "small" and db.globals["t"][1999, "k" * 40] == 1999
    assert all(r.ok for r in irisrep.check_integrity(tmp_path))


@pytest.mark.parametrize("seed", [2, 3])
def test_random_large_values_with_a_small_pool(tmp_path, seed):
    """Sets of values from empty to several overflow blocks, kills and reads, with a
    pool far smaller than the tree (eviction and block reuse in every cycle)."""
    rng = random.Random(seed)
    db = irisrep.open(tmp_path, pool_blocks=256, write_daemon=False)
    g = db.globals["fz"]
    model = {}
    for step in range(12_000):
        if step % 3000 == 2999:
            db.flush()
        r = rng.random()
        k = (rng.randrange(2000), rng.choice(["a", "bb" * rng.randrange(1, 30), "z"]))
        if r < 0.75:
            v = "x" * rng.choice([0, 1, 50, 300, 2000, 9000])
            g[k] = v
            model[k] = v
        elif r < 0.8:
            g.kill((k[0],))
            for kk in [kk for kk in model if kk[0] == k[0]]:
                del model[kk]
        else:
            assert g.get(k) == model.get(k)
    db.close()
    assert all(r.ok for r in irisrep.check_integrity(tmp_path))
    with irisrep.open(tmp_path) as db:
        assert dict(db.globals["fz"].items()) == model
