"""SimFS: the simulated disk every crash test stands on. Exactness matters here."""

from __future__ import annotations

import errno
import logging
import random

import pytest

from irisrep.constants import IO_ALIGN
from irisrep.errors import ConfigError
from irisrep.fileio import FS, File
from irisrep.simdisk import CRASH_MODES, SimFS

A = IO_ALIGN


def read_all(fs: SimFS, path: str) -> bytes:
    with fs.open(path, direct="disabled") as f:
        return f.pread(0, f.size())


def setup_file(seed: int = 0) -> tuple[SimFS, File]:
    """/d/f durable with 4 blocks of 'a'; then three unsynced block writes b, c, d."""
    fs = SimFS(seed)
    fs.makedirs("/d")
    f = fs.open("/d/f", create=True, direct="disabled")
    f.pwrite(0, b"a" * 4 * A)
    f.fsync()
    f.pwrite(0, b"b" * A)
    f.pwrite(A, b"c" * A)
    f.pwrite(2 * A, b"d" * A)
    return fs, f


def blocks(data: bytes) -> str:
    return "".join(chr(data[i]) for i in range(0, len(data), A))


def test_is_an_fs():
    fs = SimFS()
    assert isinstance(fs, FS)
    assert isinstance(fs.open("/x", create=True), File)


def test_reads_see_volatile_state():
    fs, f = setup_file()
    assert blocks(f.pread(0, 4 * A)) == "bcda"
    assert f.pread(4 * A, A) == b""  # short read at end of file
    assert f.pread(3 * A + 10, A) == b"a" * (A - 10)
    assert f.size() == 4 * A
    assert fs.size("/d/f") == 4 * A


def test_crash_drop():
    fs, f = setup_file()
    new = fs.crash("drop")
    assert blocks(read_all(new, "/d/f")) == "aaaa"


def test_crash_keep_all():
    fs, f = setup_file()
    assert blocks(read_all(fs.crash("keep_all"), "/d/f")) == "bcda"


def test_fsync_makes_durable():
    fs, f = setup_file()
    f.fdatasync()
    f.pwrite(3 * A, b"e" * A)
    assert blocks(read_all(fs.crash("drop"), "/d/f")) == "bcda"


def test_crash_subset_fixed_seed_is_deterministic_and_in_order():
    seen = set()
    for seed in range(40):
        outs = []
        for _ in range(2):
            fs, f = setup_file(seed)
            outs.append(blocks(read_all(fs.crash("subset"), "/d/f")))
        assert outs[0] == outs[1]  # same seed, same disk
        out = outs[0]
        # each block is its old or its new image, independently
        assert out[0] in "ab" and out[1] in "ac" and out[2] in "ad" and out[3] == "a"
        seen.add(out)
    assert len(seen) == 8  # all 2^3 subsets occur over 40 seeds


def test_crash_subset_keeps_order_for_overlapping_writes():
    # Two writes to one block: in "subset" a kept later write always wins.
    for seed in range(30):
        fs = SimFS(seed)
        f = fs.open("/f", create=True, direct="disabled")
        f.pwrite(0, b"1" * A)
        f.pwrite(0, b"2" * A)
        out = read_all(fs.crash("subset"), "/f")
        assert out in (b"", b"1" * A, b"2" * A)


def test_crash_reorder_can_apply_older_write_last():
    results = set()
    for seed in range(60):
        fs = SimFS(seed)
        f = fs.open("/f", create=True, direct="disabled")
        f.fsync()
        f.pwrite(0, b"1" * A)
        f.pwrite(0, b"2" * A)
        results.add(read_all(fs.crash("reorder"), "/f"))
    assert results == {b"", b"1" * A, b"2" * A}
    # and "1" wins in some runs where both were kept: seen via a marker on another block
    wins = set()
    for seed in range(200):
        fs = SimFS(seed)
        f = fs.open("/f", create=True, direct="disabled")
        f.fsync()
        f.pwrite(0, b"1" * A + b"x" * A)
        f.pwrite(0, b"2" * A)
        out = read_all(fs.crash("reorder"), "/f")
        if len(out) == 2 * A:  # the first write was kept
            wins.add(out[:1])
    assert wins == {b"1", b"2"}


def test_crash_with_explicit_rng_is_reproducible():
    outs = set()
    for _ in range(3):
        fs, f = setup_file(1)
        outs.add(read_all(fs.crash("reorder", rng=random.Random(99)), "/d/f"))
    assert len(outs) == 1


@pytest.mark.parametrize("n", [0, 512, 4095, 4096, 10_000])
def test_crash_torn_exact_bytes(n):
    fs, f = setup_file()
    new = fs.crash("torn", torn_bytes=n)
    out = read_all(new, "/d/f")
    # the earlier writes land, the last one (d at block 2) only for n bytes
    assert out[:A] == b"b" * A and out[A : 2 * A] == b"c" * A
    k = min(n, A)
    assert out[2 * A : 2 * A + k] == b"d" * k
    assert out[2 * A + k :] == b"a" * (2 * A - k)


def test_crash_torn_random_bytes():
    lengths = set()
    for seed in range(30):
        fs, f = setup_file(seed)
        out = read_all(fs.crash("torn"), "/d/f")
        k = out[2 * A : 3 * A].count(b"d")
        assert out[2 * A : 2 * A + k] == b"d" * k
        lengths.add(k)
    assert len(lengths) > 20 and all(0 <= k <= A for k in lengths)


def test_torn_extending_write_and_last_write_across_files():
    fs = SimFS(3)
    f = fs.open("/f", create=True, direct="disabled")
    g = fs.open("/g", create=True, direct="disabled")
    f.pwrite(0, b"F" * A)
    g.pwrite(0, b"G" * 100)
    f.pwrite(A, b"T" * A)  # the last write, across both files
    new = fs.crash("torn", torn_bytes=512)
    assert read_all(new, "/f") == b"F" * A + b"T" * 512
    assert read_all(new, "/g") == b"G" * 100


def test_torn_at_zero_on_new_file_means_lost():
    fs = SimFS()
    f = fs.open("/f", create=True, direct="disabled")
    f.pwrite(0, b"x" * 100)
    assert read_all(fs.crash("torn", torn_bytes=0), "/f") == b""


def test_truncate_is_pending_until_fsync():
    fs, f = setup_file()
    f.fsync()
    f.truncate(A)
    assert f.size() == A
    assert blocks(read_all(fs.snapshot().crash("drop"), "/d/f")) == "bcda"
    assert blocks(read_all(fs.snapshot().crash("keep_all"), "/d/f")) == "b"
    f.truncate(2 * A)  # extends with zeros
    assert f.pread(A, A) == bytes(A)


def test_created_file_whose_directory_was_never_fsynced_disappears():
    fs = SimFS()
    fs.makedirs("/d")
    # The fsync of /d that open(create=True, direct="disabled") does fails: the name stays volatile.
    fs.fail_next("fsync_dir")
    with pytest.raises(OSError):
        fs.open("/d/new", create=True, direct="disabled")
    assert fs.exists("/d/new")
    f = fs.open("/d/new", direct="disabled")
    f.pwrite(0, b"data")
    f.fsync()  # the contents are durable, but the name is not
    snap = fs.snapshot()
    assert not fs.crash("drop").exists("/d/new")
    assert read_all(snap.crash("keep_all"), "/d/new") == b"data"


def test_primitive_create_then_fsync_dir():
    fs = SimFS()
    f, created = fs._open("/x", True, "disabled")
    assert created
    f.pwrite(0, b"1")
    f.fsync()
    assert not fs.snapshot().crash("drop").exists("/x")
    fs.fsync_dir("/")
    assert read_all(fs.crash("drop"), "/x") == b"1"


def test_rename_is_atomic_and_durable_only_after_dir_fsync():
    fs = SimFS()
    f = fs.open("/old", create=True, direct="disabled")
    f.pwrite(0, b"v1")
    f.fsync()
    fs._rename("/old", "/new")  # primitive: no fsync_dir
    assert fs.listdir("/") == ["new"]
    drop = fs.snapshot().crash("drop")
    assert drop.listdir("/") == ["old"]
    for seed in range(20):
        out = fs.snapshot().crash("subset", rng=random.Random(seed)).listdir("/")
        assert out in (["old"], ["new"])  # never both, never neither
    fs.fsync_dir("/")
    assert fs.crash("drop").listdir("/") == ["new"]


def test_rename_replaces_and_fs_rename_is_durable():
    fs = SimFS()
    for name, body in (("/a", b"A"), ("/b", b"B")):
        with fs.open(name, create=True, direct="disabled") as f:
            f.pwrite(0, body)
            f.fsync()
    fs.rename("/a", "/b")
    new = fs.crash("drop")
    assert new.listdir("/") == ["b"]
    assert read_all(new, "/b") == b"A"


def test_cross_directory_rename():
    fs = SimFS()
    fs.makedirs("/x")
    fs.makedirs("/y")
    with fs.open("/x/f", create=True, direct="disabled") as f:
        f.pwrite(0, b"z")
        f.fsync()
    fs.rename("/x/f", "/y/g")
    new = fs.crash("drop")
    assert new.listdir("/x") == [] and new.listdir("/y") == ["g"]


def test_remove_volatile_until_dir_fsync():
    fs = SimFS()
    with fs.open("/f", create=True, direct="disabled") as f:
        f.pwrite(0, b"keep")
        f.fsync()
    fs._remove("/f")
    assert not fs.exists("/f")
    assert read_all(fs.snapshot().crash("drop"), "/f") == b"keep"
    fs.fsync_dir("/")
    assert not fs.crash("drop").exists("/f")


def test_unlinked_open_file_stays_readable():
    fs = SimFS()
    f = fs.open("/f", create=True, direct="disabled")
    f.pwrite(0, b"x")
    fs.remove("/f")
    assert f.pread(0, 1) == b"x"


def test_makedirs_and_lost_parent_hides_children():
    fs = SimFS()
    fs.makedirs("/a/b/c")
    fs.makedirs("/a/b/c")  # idempotent
    assert fs.listdir("/a") == ["b"]
    assert fs.crash("drop").exists("/a/b/c")
    fs2 = SimFS()
    fs2._mkdir("/p")  # never fsynced into /
    fs2._mkdir("/p/q")
    fs2.fsync_dir("/p")
    new = fs2.crash("drop")
    assert not new.exists("/p") and not new.exists("/p/q")


def test_namespace_errors():
    fs = SimFS()
    with pytest.raises(FileNotFoundError):
        fs.open("/missing")
    with pytest.raises(FileNotFoundError):
        fs.open("/nodir/f", create=True, direct="disabled")
    fs.makedirs("/d")
    with pytest.raises(IsADirectoryError):
        fs.open("/d")
    with pytest.raises(FileNotFoundError):
        fs.rename("/missing", "/x")
    with pytest.raises(FileNotFoundError):
        fs.remove("/missing")
    with pytest.raises(FileNotFoundError):
        fs.size("/missing")
    assert fs.listdir("/") == ["d"]
    assert fs.open("d/rel", create=True, direct="disabled").path == "d/rel"  # relative = from "/"
    assert fs.listdir("/d") == ["rel"]


def test_use_after_crash_raises_ebadf():
    fs, f = setup_file()
    fs.crash("keep_all")
    for call in (
        lambda: f.pread(0, 1),
        lambda: f.pwrite(0, b"x" * A),
        f.fsync,
        f.fdatasync,
        f.size,
        lambda: f.truncate(0),
        lambda: fs.open("/d/f"),
        lambda: fs.exists("/d/f"),
        lambda: fs.crash(),
        fs.snapshot,
    ):
        with pytest.raises(OSError) as ei:
            call()
        assert ei.value.errno == errno.EBADF
    f.close()  # closing stays allowed


def test_closed_file_raises_ebadf():
    fs = SimFS()
    f = fs.open("/f", create=True, direct="disabled")
    f.close()
    f.close()
    with pytest.raises(OSError) as ei:
        f.pread(0, 1)
    assert ei.value.errno == errno.EBADF


def test_snapshot_keeps_everything_pending_and_is_independent():
    fs, f = setup_file()
    snap = fs.snapshot()
    assert blocks(read_all(snap, "/d/f")) == "bcda"
    f.pwrite(3 * A, b"z" * A)  # after the snapshot: not in it
    assert blocks(read_all(snap, "/d/f")) == "bcda"
    # pending stays pending in the copy: a later power loss still drops it
    assert blocks(read_all(snap.crash("drop"), "/d/f")) == "aaaa"
    assert blocks(f.pread(0, 4 * A)) == "bcdz"  # the original is untouched


def test_direct_alignment_enforced():
    fs = SimFS()
    f = fs.open("/f", create=True)
    assert f.direct is True
    with pytest.raises(ValueError, match="offset 1, length 4096"):
        f.pwrite(1, bytes(A))
    with pytest.raises(ValueError, match="offset 0, length 10"):
        f.pread(0, 10)
    g = fs.open("/g", create=True, direct="disabled")
    assert g.direct is False
    g.pwrite(1, b"ok")


def test_direct_modes(caplog):
    fs = SimFS(direct_supported=False)
    with pytest.raises(ConfigError):
        fs.open("/f", create=True, direct="required")
    with pytest.raises(ConfigError):
        fs.open("/f", create=True, direct="bogus")
    with caplog.at_level(logging.WARNING, logger="irisrep.fileio"):
        assert fs.open("/f", create=True).direct is False
        assert fs.open("/g", create=True).direct is False
    assert len(caplog.records) == 1


def test_pwrite_rejects_non_bytes():
    f = SimFS().open("/f", create=True, direct="disabled")
    with pytest.raises(TypeError):
        f.pwrite(0, 5)
    with pytest.raises(TypeError):
        f.pwrite(0, "text")
    f.pwrite(0, bytearray(b"ab"))
    f.pwrite(2, memoryview(b"cd"))
    assert f.pread(0, 4) == b"abcd"


# --- fault injection -------------------------------------------------------------------


@pytest.mark.parametrize("op", ["pwrite", "pread", "truncate"])
def test_fail_next_data_ops_change_nothing(op):
    fs, f = setup_file()
    before = f.pread(0, 4 * A)
    fs.fail_next(op, errno.EIO)
    call = {
        "pwrite": lambda: f.pwrite(0, b"q" * A),
        "pread": lambda: f.pread(0, A),
        "truncate": lambda: f.truncate(0),
    }[op]
    with pytest.raises(OSError) as ei:
        call()
    assert ei.value.errno == errno.EIO and ei.value.filename == "/d/f"
    assert f.pread(0, 4 * A) == before
    call()  # one-shot


def test_fail_next_after_counts_calls():
    fs = SimFS()
    f = fs.open("/f", create=True, direct="disabled")
    fs.fail_next("pwrite", errno.ENOSPC, after=2)
    f.pwrite(0, b"1")
    f.pwrite(1, b"2")
    with pytest.raises(OSError) as ei:
        f.pwrite(2, b"3")
    assert ei.value.errno == errno.ENOSPC
    f.pwrite(2, b"4")
    assert f.pread(0, 10) == b"124"


def test_fail_next_for_one_path_only():
    fs = SimFS()
    f = fs.open("/f", create=True, direct="disabled")
    g = fs.open("/g", create=True, direct="disabled")
    fs.fail_next("fsync", path="/g")
    f.fsync()
    with pytest.raises(OSError):
        g.fsync()


def test_failed_fsync_loses_pending_writes_forever():
    fs, f = setup_file()
    fs.fail_next("fsync")
    with pytest.raises(OSError):
        f.fsync()
    assert blocks(f.pread(0, 4 * A)) == "bcda"  # still in the "page cache"
    f.fsync()  # "succeeds" but the lost writes are not written (fsyncgate)
    assert blocks(read_all(fs.crash("keep_all"), "/d/f")) == "aaaa"


@pytest.mark.parametrize("op", ["open", "rename", "fdatasync", "fsync_dir", "remove", "mkdir"])
def test_fail_next_other_ops(op):
    fs = SimFS()
    fs.makedirs("/d")
    f = fs.open("/d/f", create=True, direct="disabled")
    fs.fail_next(op, errno.EROFS)
    call = {
        "open": lambda: fs.open("/d/f"),
        "rename": lambda: fs.rename("/d/f", "/d/g"),
        "fdatasync": f.fdatasync,
        "fsync_dir": lambda: fs.fsync_dir("/d"),
        "remove": lambda: fs.remove("/d/f"),
        "mkdir": lambda: fs.makedirs("/e"),
    }[op]
    with pytest.raises(OSError) as ei:
        call()
    assert ei.value.errno == errno.EROFS
    if op in ("rename", "remove"):
        assert fs.exists("/d/f")


def test_fail_next_unknown_op():
    with pytest.raises(ValueError, match="pwrite"):
        SimFS().fail_next("write")


def test_disk_full_after_bytes():
    fs = SimFS()
    f = fs.open("/f", create=True, direct="disabled")
    f.pwrite(0, bytes(2 * A))
    fs.disk_full_after_bytes(A)
    f.pwrite(0, b"x" * 2 * A)  # overwrite: no growth
    f.pwrite(2 * A, b"y" * A)  # exactly the allowance
    with pytest.raises(OSError) as ei:
        f.pwrite(3 * A, b"z" * A)
    assert ei.value.errno == errno.ENOSPC
    assert f.size() == 3 * A  # nothing written
    g = fs.open("/g", create=True, direct="disabled")
    with pytest.raises(OSError):
        g.pwrite(0, b"1")
    fs.disk_full_after_bytes(None)  # space returns
    g.pwrite(0, b"1")


def test_calls_counter():
    fs = SimFS()
    f = fs.open("/f", create=True, direct="disabled")
    f.pwrite(0, bytes(A))
    f.pwrite(A, bytes(A))
    f.fsync()
    f.pread(0, A)
    f.close()
    assert fs.calls["open"] == 1
    assert fs.calls["fsync_dir"] == 1  # the create
    assert fs.calls["pwrite"] == 2
    assert fs.calls["fsync"] == 1
    assert fs.calls["pread"] == 1
    assert fs.calls["close"] == 1


def test_crash_argument_checks():
    fs = SimFS()
    with pytest.raises(ValueError, match="drop"):
        fs.crash("explode")
    with pytest.raises(ValueError):
        fs.crash("drop", torn_bytes=5)
    with pytest.raises(ValueError):
        fs.crash("torn", torn_bytes=-1)


def _workload(seed):
    """Random block writes to three files with some fsyncs. Returns the fs, the
    synced image of each block and every value written to it since."""
    fs = SimFS(seed)
    fs.makedirs("/db")
    files = [fs.open(f"/db/{i}", create=True) for i in range(3)]
    rng = random.Random(seed)
    synced = {f.path: {} for f in files}  # path -> block -> byte value
    since = {f.path: {} for f in files}  # path -> block -> {values written since}
    for step in range(60):
        f = rng.choice(files)
        b, v = rng.randrange(8), 65 + step % 26
        f.pwrite(b * A, bytes([v]) * A)
        since[f.path].setdefault(b, set()).add(v)
        if rng.random() < 0.2:
            f.fsync()
            # after an fsync the current image is the synced one
            synced[f.path] = {k: f.pread(k * A, A)[0] for k in range(f.size() // A)}
            since[f.path] = {}
    return fs, synced, since


@pytest.mark.parametrize("mode", CRASH_MODES)
def test_every_mode_keeps_synced_data_and_is_deterministic(mode):
    def run(seed):
        fs, synced, since = _workload(seed)
        volatile = {p: read_all(fs, p) for p in synced}
        new = fs.crash(mode)
        return synced, since, volatile, {p: read_all(new, p) for p in synced}

    synced, since, volatile, out = run(11)
    assert run(11)[3] == out  # same seed, same disk
    torn_seen = 0
    for p, data in out.items():
        if mode == "drop":
            assert data == b"".join(bytes([synced[p][k]]) * A for k in sorted(synced[p]))
        if mode == "keep_all":
            assert data == volatile[p]
        for k in range(len(data) // A):
            blk = data[k * A : (k + 1) * A]
            allowed = set(since[p].get(k, set())) | {synced[p].get(k, 0)}
            if blk[0] in allowed and blk == bytes([blk[0]]) * A:
                continue
            # only "torn" may leave a mixed block: a prefix of the last write
            assert mode == "torn"
            torn_seen += 1
            n = len(blk) - len(blk.lstrip(blk[:1]))
            assert blk[:1][0] in allowed and bytes([blk[n]]) * (A - n) == blk[n:]
    assert torn_seen <= 1
