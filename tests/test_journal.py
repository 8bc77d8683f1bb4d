"""The journal files: open/end-of-stream, every bad tail, corruption in the middle,
crashes in the commit path and in rollover, group commit, O_DIRECT, fsync failure,
relaxed commits, purge and the dump/verify tools.

Almost everything runs on a seeded SimFS; a crash is taken at a named crash point by
an armed action that calls `fs.crash(...)` at that instant, and the journal is then
reopened on the disk that survived.
"""

from __future__ import annotations

import os
import random
import struct
import threading
import time

import pytest
import xxhash
from interruptkit import Interrupted, all_returned, interrupting_main

from irisrep import crashpoints
from irisrep.constants import JOURNAL_HEADER_BYTES
from irisrep.errors import DurabilityError, IrisrepError, JournalCorruptError
from irisrep.fileio import RealFS
from irisrep.journal import (
    COMMIT_POINTS,
    Journal,
    dump_lines,
    encode_file_header,
    list_journal_files,
    next_file_name,
    read_stream,
    verify_dir,
)
from irisrep.journalcodec import (
    FRAME_ERROR_REASONS,
    SET,
    Record,
    encode_frame,
    encode_records,
)
from irisrep.simdisk import SimFS

D = "/j"
SMALL = 64 * 1024
DAY_NS = 86400 * 10**9
T0 = 1_700_000_000 * 10**9


def rec(i: int, value: bytes | None = None) -> Record:
    return Record(SET, 0, 1, 0, b"k%06d" % i, b"v%05d" % i if value is None else value, b"")


def open_j(fs, **kw) -> Journal:
    kw.setdefault("file_bytes", SMALL)
    kw.setdefault("precreate", False)
    return Journal(fs, D, **kw)


def records(fs, d=D) -> list[Record]:
    return [r for _p, _h, rs in read_stream(fs, d) for r in rs]


def file_bytes(fs, path) -> bytes:
    f = fs.open(path, direct="disabled")
    try:
        return f.pread(0, f.size())
    finally:
        f.close()


def patch(fs, path, off, data=None, truncate=None) -> None:
    f = fs.open(path, direct="disabled")
    try:
        if truncate is not None:
            f.truncate(truncate)
        if data is not None:
            f.pwrite(off, data)
        f.fsync()
    finally:
        f.close()


def crash_at(point, fs, mode="drop", nth=1, torn_bytes=None, rng=None):
    """Arm `point` to take fs.crash(...) at that instant; returns the holder list."""
    out = []

    def act(_name):
        out.append(fs.crash(mode, rng=rng, torn_bytes=torn_bytes))

    crashpoints.arm(point, nth, act)
    return out


@pytest.fixture(autouse=True)
def _disarm():
    yield
    crashpoints.disarm()


# --- basics ------------------------------------------------------------------------------


def test_create_commit_reopen_read():
    fs = SimFS(1)
    j = open_j(fs)
    assert j.tail_reason == "zero" and j.end_position == 0 and j.direct
    ends = [j.commit([rec(i)]) for i in range(10)]
    assert ends == sorted(ends) and j.durable_position == ends[-1]
    j.close()
    j = open_j(fs)
    assert j.end_position == ends[-1] and j.tail_reason == "zero"
    assert "clean end" in j.tail_message
    got = list(j.read())
    assert [p for p, _h, _r in got][1:] == ends[:-1]
    assert [r for _p, _h, rs in got for r in rs] == [rec(i) for i in range(10)]
    # from a position in the middle
    assert [rs[0] for _p, _h, rs in j.read(ends[4])] == [rec(i) for i in range(5, 10)]
    with pytest.raises(ValueError):
        list(j.read(ends[4] + 8))
    j.close()


def test_file_header_and_names_and_visibility():
    fs = SimFS(2)
    j = open_j(fs, clock=lambda: T0)
    j.close()
    names = fs.listdir(D)
    assert names == ["20231114.001"]
    raw = file_bytes(fs, D + "/20231114.001")
    assert len(raw) == SMALL
    assert raw[:JOURNAL_HEADER_BYTES] == encode_file_header(1, 0, 0, T0)
    assert raw[JOURNAL_HEADER_BYTES:].count(0) == SMALL - JOURNAL_HEADER_BYTES
    assert next_file_name(names, T0) == "20231114.002"
    assert next_file_name(names, T0 + DAY_NS) == "20231115.001"
    with pytest.raises(IrisrepError, match="999"):
        next_file_name(["20231114.999"], T0)


def test_files_sorted_by_sequence_not_name():
    fs = SimFS(3)
    times = iter([T0, T0 - 5 * DAY_NS, T0 - 9 * DAY_NS] + [T0] * 100)
    j = open_j(fs, clock=lambda: next(times))
    i = 0
    while len(fs.listdir(D)) < 3:
        j.commit([rec(i, b"x" * 2000)])
        i += 1
    j.close()
    infos = list_journal_files(fs, D)
    assert [x.name for x in infos] == ["20231114.001", "20231109.001", "20231105.001"]
    assert [x.sequence for x in infos] == [1, 2, 3]
    assert records(fs) == [rec(k, b"x" * 2000) for k in range(i)]


def test_leftover_new_file_removed_on_open():
    fs = SimFS(4)
    open_j(fs).close()
    f = fs.open(D + "/20990101.001.new", create=True, direct="disabled")
    f.pwrite(0, b"junk")
    f.close()
    open_j(fs).close()
    assert not any(n.endswith(".new") for n in fs.listdir(D))


# --- bad tails ---------------------------------------------------------------------------

N_GOOD = 5


def setup_tail(seed=10):
    """A journal with N_GOOD good frames and then one more (the victim). Returns
    (fs, path, victim file offset, victim bytes, ends)."""
    fs = SimFS(seed)
    j = open_j(fs)
    ends = [j.commit([rec(i)]) for i in range(N_GOOD)]
    start, _ = j.append([Record(SET, 0, 1, 0, b"kk", b"vvvvvv", b"")])  # 32-byte payload
    j.flush()
    path = j.current_file.path
    off = JOURNAL_HEADER_BYTES + start - j.current_file.start_position
    j.close()
    victim = file_bytes(fs, path)[off : off + 80]
    assert len(victim) == 80 and victim[:4] == b"IRJF"
    return fs, path, off, victim, ends


def check_reopen(fs, path, off, ends, reason):
    j = open_j(fs)
    assert j.tail_reason == reason, j.tail_message
    assert reason in j.tail_message or (reason == "zero" and "clean end" in j.tail_message)
    assert path in j.tail_message and f"file offset {off}" in j.tail_message
    assert f"stream position {ends[-1]}" in j.tail_message
    assert j.end_position == ends[-1]
    assert records(fs) == [rec(i) for i in range(N_GOOD)]
    # the file ends in zeros again after the last valid frame
    raw = file_bytes(fs, path)
    assert raw[off : off + 4096].count(0) == len(raw[off : off + 4096])
    # a new commit lands right after the last valid frame and reads back
    end = j.commit([rec(99)])
    assert list(j.read(ends[-1]))[0][0] == ends[-1]
    j.close()
    j = open_j(fs)
    assert j.end_position == end and j.tail_reason == "zero"
    j.close()
    assert records(fs) == [rec(i) for i in range(N_GOOD)] + [rec(99)]


def test_tail_intact_victim_is_present():
    fs, path, off, victim, ends = setup_tail()
    j = open_j(fs)
    assert j.tail_reason == "zero" and len(records(fs)) == N_GOOD + 1
    j.close()


@pytest.mark.parametrize("k", range(0, 80))
def test_tail_truncated_file_at_each_byte(k):
    fs, path, off, victim, ends = setup_tail()
    patch(fs, path, 0, truncate=off + k)
    check_reopen(fs, path, off, ends, "zero" if k == 0 else "truncated")


@pytest.mark.parametrize("k", range(0, 80))
def test_tail_torn_write_at_each_byte(k):
    # A preallocated file: the frame's bytes after k are the zeros that were there.
    fs, path, off, victim, ends = setup_tail()
    patch(fs, path, off + k, bytes(80 - k))
    j = open_j(fs.snapshot())
    if k == 0:
        assert j.tail_reason == "zero"
    else:
        assert j.tail_reason in set(FRAME_ERROR_REASONS) - {"zero", "position", "zstd"}
        assert j.tail_reason in j.tail_message and "torn tail" in j.tail_message
    reason = j.tail_reason
    j.close()
    check_reopen(fs, path, off, ends, reason)


def _with_header(victim: bytes, **fields) -> bytes:
    b = bytearray(victim)
    layout = {"version": (4, "<H"), "flags": (6, "<H"), "count": (24, "<I"),
              "raw_len": (28, "<I"), "stored_len": (32, "<I")}  # fmt: skip
    for name, value in fields.items():
        o, fmt = layout[name]
        struct.pack_into(fmt, b, o, value)
    return bytes(b)


def _reseal(frame: bytes) -> bytes:
    """Recompute the checksum of a frame whose stored_len is right."""
    (stored_len,) = struct.unpack_from("<I", frame, 32)
    ck = xxhash.xxh3_64_intdigest(frame[:40] + frame[48 : 48 + stored_len])
    return frame[:40] + struct.pack("<Q", ck) + frame[48:]


@pytest.mark.parametrize(
    "case,reason",
    [
        ("garbage", "magic"),
        ("garbage_long", "magic"),
        ("version", "version"),
        ("zero_length", "length"),
        ("zero_count", "length"),
        ("short_length", "length"),
        ("huge_length", "length"),
        ("checksum", "checksum"),
        ("checksum_header", "checksum"),
        ("zstd", "zstd"),
        ("stale", "position"),
    ],
)
def test_bad_tail_cases(case, reason):
    fs, path, off, victim, ends = setup_tail()
    rng = random.Random(case)
    if case == "garbage":
        bad = b"\xde\xad" + rng.randbytes(78)
    elif case == "garbage_long":
        bad = b"\x01" + rng.randbytes(9000)  # spills into later blocks: all zeroed on open
    elif case == "version":
        bad = _reseal(_with_header(victim, version=2))
    elif case == "zero_length":
        bad = _with_header(victim, stored_len=0, raw_len=0)
    elif case == "zero_count":
        bad = _reseal(_with_header(victim, count=0))
    elif case == "short_length":
        bad = _with_header(victim, stored_len=24)
    elif case == "huge_length":
        bad = _with_header(victim, stored_len=2**31, raw_len=2**31)
    elif case == "checksum":
        bad = victim[:60] + bytes([victim[60] ^ 1]) + victim[61:]
    elif case == "checksum_header":
        bad = victim[:16] + struct.pack("<Q", ends[-1] + 8) + victim[24:]
    elif case == "zstd":
        stored = rng.randbytes(40)
        hdr = struct.pack("<4sHHQQIIII", b"IRJF", 1, 1, 0, ends[-1], 1, 100, 40, 0)
        bad = hdr + struct.pack("<Q", xxhash.xxh3_64_intdigest(hdr + stored)) + stored
    else:  # stale: a valid frame from an earlier position copied here
        raw = file_bytes(fs, path)
        bad = raw[JOURNAL_HEADER_BYTES + ends[0] : JOURNAL_HEADER_BYTES + ends[1]]
        assert bad[:4] == b"IRJF"
    patch(fs, path, off, bad)
    check_reopen(fs, path, off, ends, reason)


def test_compressed_frames_read_back():
    fs = SimFS(5)
    j = open_j(fs)
    big = [rec(i, b"abc" * 3000) for i in range(3)]
    j.commit(big)
    j.close()
    (pos, h, rs), *_ = list(read_stream(fs, D))
    assert h.flags & 1 and rs == big


# --- corruption in the middle --------------------------------------------------------------


def test_corrupt_middle_same_file_refused_nothing_changed():
    fs = SimFS(6)
    j = open_j(fs)
    ends = [j.commit([rec(i)]) for i in range(8)]
    path = j.current_file.path
    j.close()
    bad_off = JOURNAL_HEADER_BYTES + ends[2]
    raw = bytearray(file_bytes(fs, path))
    raw[bad_off + 50] ^= 0xFF
    patch(fs, path, 0, bytes(raw))
    before = file_bytes(fs, path)
    with pytest.raises(JournalCorruptError) as ei:
        open_j(fs)
    e = ei.value
    assert e.path == path and e.offset == bad_off
    assert f"position {ends[2]}" in str(e.expected) and "checksum" in str(e.found)
    assert path in str(e) and "not a torn tail" in str(e)
    assert file_bytes(fs, path) == before
    rep = verify_dir(D, fs=fs)
    assert not rep["ok"] and path in rep["first_problem"]
    with pytest.raises(JournalCorruptError):
        list(read_stream(fs, D))
    assert file_bytes(fs, path) == before


def _rolled(seed, nfiles):
    fs = SimFS(seed)
    j = open_j(fs)
    i = 0
    while (
        len(list_journal_files(fs, D)) < nfiles or j.end_position == j.current_file.start_position
    ):
        j.commit([rec(i, b"y" * 3000)])
        i += 1
    j.close()
    return fs, list_journal_files(fs, D), i


def test_verify_reports_progress_by_file():
    fs, infos, n = _rolled(3, 3)
    seen = []
    rep = verify_dir(D, fs=fs, progress=lambda done, total: seen.append((done, total)))
    assert rep["ok"] and rep["records"] == n
    assert len(seen) == len(infos) == 3
    assert [d for d, _t in seen] == sorted(d for d, _t in seen)
    assert seen[-1][0] == seen[-1][1] == sum(fs.size(i.path) for i in infos)


@pytest.mark.parametrize("which", [-2, 0])
def test_corrupt_middle_across_files_refused(which):
    fs, infos, n = _rolled(7, 3)
    victim = infos[which]
    nxt = infos[which + 1]
    # damage the LAST frame of a file that has a successor: a "torn tail" that is not last
    length = nxt.start_position - victim.start_position
    raw = bytearray(file_bytes(fs, victim.path))
    last_frame_len = 48 + 24 + 7 + 3000 + 1  # key b"k%06d" is 7 bytes; padded to 8
    bad_off = JOURNAL_HEADER_BYTES + length - last_frame_len
    assert raw[bad_off : bad_off + 4] == b"IRJF"
    raw[bad_off + 100] ^= 1
    patch(fs, victim.path, 0, bytes(raw))
    snap = {i.path: file_bytes(fs, i.path) for i in infos}
    if which == -2:  # the file before the last: open refuses
        with pytest.raises(JournalCorruptError) as ei:
            open_j(fs)
        assert ei.value.path == victim.path and ei.value.offset == bad_off
    rep = verify_dir(D, fs=fs)
    assert not rep["ok"] and victim.path in rep["first_problem"]
    with pytest.raises(JournalCorruptError) as ei:
        list(read_stream(fs, D))
    assert ei.value.path == victim.path and ei.value.offset == bad_off
    assert {i.path: file_bytes(fs, i.path) for i in infos} == snap


def test_zeroed_frame_in_middle_refused():
    fs = SimFS(8)
    j = open_j(fs)
    ends = [j.commit([rec(i)]) for i in range(8)]
    path = j.current_file.path
    j.close()
    patch(fs, path, JOURNAL_HEADER_BYTES + ends[3], bytes(ends[4] - ends[3]))
    with pytest.raises(JournalCorruptError, match="not a torn tail"):
        open_j(fs)


# --- crashes in the commit path ------------------------------------------------------------

CRASH_MODES = [("drop", None), ("subset", None), ("reorder", None), ("torn", None),
               ("torn", 0), ("torn", 100), ("keep_all", None)]  # fmt: skip


@pytest.mark.parametrize("point", COMMIT_POINTS)
@pytest.mark.parametrize("mode,torn", CRASH_MODES)
@pytest.mark.parametrize("seed", range(3))
def test_crash_in_commit_path(point, mode, torn, seed):
    fs = SimFS(seed)
    rng = random.Random(seed)
    j = open_j(fs)
    acked: list[list[Record]] = []
    n = 0
    for _ in range(rng.randint(1, 30)):
        batch = [rec(n + k) for k in range(rng.randint(1, 3))]
        n += len(batch)
        j.commit(batch)
        acked.append(batch)
    holder = crash_at(point, fs, mode, torn_bytes=torn, rng=rng)
    inflight = [rec(n + k, b"z" * rng.randint(1, 5000)) for k in range(3)]
    with pytest.raises(crashpoints.SimulatedCrash):
        j.commit(inflight)
    with pytest.raises(DurabilityError):
        j.commit([rec(1)])
    j.close()
    fs2 = holder[0]
    j2 = open_j(fs2)
    got = records(fs2)
    want = [r for b in acked for r in b]
    assert got[: len(want)] == want
    assert got[len(want) :] in ([], inflight)
    if point == "journal_after_fsync":
        assert got[len(want) :] == inflight
    # recovery is stable and the journal goes on
    end = j2.commit([rec(10**6)])
    j2.close()
    j3 = open_j(fs2)
    assert j3.end_position == end and records(fs2) == got + [rec(10**6)]
    j3.close()


@pytest.mark.parametrize("mode,torn", CRASH_MODES)
def test_crash_at_rollover(mode, torn):
    fs = SimFS(11)
    rng = random.Random(1)
    j = open_j(fs)
    holder = crash_at("journal_rollover_after_create", fs, mode, torn_bytes=torn, rng=rng)
    acked = []
    with pytest.raises(crashpoints.SimulatedCrash):
        for i in range(10_000):
            j.commit([rec(i, b"r" * 500)])
            acked.append(rec(i, b"r" * 500))
    j.close()
    fs2 = holder[0]
    j2 = open_j(fs2)
    infos = list_journal_files(fs2, D)
    assert len(infos) == 2  # the new file survived: it was durable before the point
    assert j2.end_position == infos[1].start_position and j2.tail_reason == "zero"
    assert records(fs2) == acked
    j2.commit([rec(-1 % 10**6)])
    j2.close()
    assert records(fs2) == acked + [rec(-1 % 10**6)]
    assert verify_dir(D, fs=fs2)["ok"]


def test_crash_points_all_reached():
    crashpoints.set_checking(True)
    crashpoints.reset_counts()
    try:
        fs = SimFS(12)
        j = open_j(fs)
        for i in range(300):
            j.commit([rec(i, b"q" * 400)])
        j.close()
        counts = crashpoints.hit_counts()
    finally:
        crashpoints.set_checking(False)
    for p in COMMIT_POINTS + ("journal_rollover_after_create",):
        assert counts.get(p, 0) > 0, p


# --- rollover ------------------------------------------------------------------------------


def test_rollover_positions_continuous_and_ordered():
    fs = SimFS(13)
    j = open_j(fs)
    want = []
    rng = random.Random(3)
    for i in range(400):
        r = rec(i, rng.randbytes(rng.randint(1, 3000)))
        j.commit([r])
        want.append(r)
    j.close()
    infos = list_journal_files(fs, D)
    assert len(infos) >= 4
    frames = list(read_stream(fs, D))
    assert [r for _p, _h, rs in frames for r in rs] == want
    for (p, h, _), (q, _h2, _) in zip(frames, frames[1:], strict=False):
        assert q == p + ((48 + h.stored_len + 7) // 8 * 8)
    rep = verify_dir(D, fs=fs)
    assert rep["ok"] and rep["records"] == 400 and rep["end_reason"] == "zero"
    assert [f["start_position"] for f in rep["files"]] == [i.start_position for i in infos]
    j = open_j(fs)
    assert j.end_position == rep["end_position"]
    j.close()


def test_frame_bigger_than_a_file():
    fs = SimFS(14)
    j = open_j(fs)
    j.commit([rec(0)])
    big = [rec(1, random.Random(0).randbytes(200_000))]
    j.commit(big)
    j.commit([rec(2)])
    j.close()
    assert records(fs) == [rec(0)] + big + [rec(2)]
    assert max(i.size for i in list_journal_files(fs, D)) > SMALL


def test_precreated_spare_used_for_rollover():
    fs = SimFS(15)
    j = open_j(fs, precreate=True)
    for i in range(200):
        j.commit([rec(i, b"s" * 1000)])
        j.wait_spare()
    assert len(list_journal_files(fs, D)) >= 3
    j.close()
    j = open_j(fs)
    j.close()
    assert not any(n.endswith(".new") for n in fs.listdir(D))
    assert records(fs) == [rec(i, b"s" * 1000) for i in range(200)]


# --- group commit -----------------------------------------------------------------------


def test_group_commit_16_threads(monkeypatch):
    from irisrep import simdisk

    orig = simdisk.SimFile.fdatasync

    def slow(self):
        time.sleep(0.001)  # a device that takes time to sync: committers pile up
        orig(self)

    monkeypatch.setattr(simdisk.SimFile, "fdatasync", slow)
    fs = SimFS(16)
    j = open_j(fs, file_bytes=1024 * 1024)
    T, N = 16, 40
    results: dict[int, list[int]] = {}
    errors = []

    def worker(t):
        try:
            results[t] = [
                j.commit([Record(SET, 0, 1, 0, b"t%02d" % t, b"%d" % i, b"")]) for i in range(N)
            ]
        except BaseException as e:  # pragma: no cover
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(T)]
    syncs0 = fs.calls["fdatasync"]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    syncs = fs.calls["fdatasync"] - syncs0
    assert syncs < T * N / 2, syncs
    j.close()
    got = records(fs)
    assert len(got) == T * N
    seen: dict[bytes, list[int]] = {}
    for r in got:
        seen.setdefault(r.key, []).append(int(r.value))
    assert all(v == list(range(N)) for v in seen.values()) and len(seen) == T
    for t in range(T):
        assert results[t] == sorted(results[t])


def test_append_flush_and_relaxed():
    fs = SimFS(17)
    j = open_j(fs, flush_ms=20)
    s1, e1 = j.append([rec(1)])
    assert j.durable_position == s1 and j.end_position == e1
    assert j.flush() == e1 and j.durable_position == e1
    s2, e2 = j.append_relaxed([rec(2)])
    assert s2 == e1
    deadline = time.monotonic() + 2
    while j.durable_position < e2 and time.monotonic() < deadline:
        time.sleep(0.005)
    assert j.durable_position == e2
    fs2 = fs.crash("drop")
    assert records(fs2) == [rec(1), rec(2)]
    j.close()


def test_append_not_durable_until_flush():
    fs = SimFS(18)
    j = open_j(fs)
    j.commit([rec(0)])
    j.append([rec(1)])
    fs2 = fs.crash("keep_all")
    assert records(fs2) == [rec(0)]  # never written: appends wait for a flush
    with pytest.raises(DurabilityError):
        j.close()  # close tries to make the append durable on a disk that is gone


def test_too_big_commit_is_split_and_bad_records_rejected():
    fs = SimFS(19)
    j = open_j(fs)
    with pytest.raises((TypeError, ValueError)):
        j.commit([("bad",)])
    with pytest.raises(ValueError):
        j.commit([])
    assert j.end_position == 0
    j.commit([rec(1)])
    j.close()


# --- failures ---------------------------------------------------------------------------


def test_fsync_failure_is_final():
    fs = SimFS(20)
    j = open_j(fs)
    j.commit([rec(0)])
    fs.fail_next("fdatasync")
    with pytest.raises(DurabilityError) as ei:
        j.commit([rec(1)])
    assert isinstance(ei.value.__cause__, OSError)
    for call in (lambda: j.commit([rec(2)]), lambda: j.append([rec(2)]), j.flush,
                 lambda: list(j.read()), j.verify):  # fmt: skip
        with pytest.raises(DurabilityError):
            call()
    j.close()
    j2 = open_j(fs.crash("keep_all"))
    assert records(j2.fs) == [rec(0)]  # the failed sync's pages were dropped (fsyncgate)
    j2.close()


def test_write_failure_is_final():
    fs = SimFS(21)
    j = open_j(fs)
    fs.fail_next("pwrite")
    with pytest.raises(DurabilityError):
        j.commit([rec(0)])
    with pytest.raises(DurabilityError):
        j.commit([rec(1)])
    j.close()


def test_fsync_failure_reaches_waiting_committers(monkeypatch):
    from irisrep import simdisk

    orig = simdisk.SimFile.fdatasync

    def slow(self):
        time.sleep(0.002)
        orig(self)

    monkeypatch.setattr(simdisk.SimFile, "fdatasync", slow)
    fs = SimFS(22)
    j = open_j(fs, file_bytes=1024 * 1024)
    fs.fail_next("fdatasync", after=5)
    ok: list[Record] = []
    failed = []
    lock = threading.Lock()

    def worker(t):
        for i in range(50):
            r = Record(SET, 0, 1, 0, b"w%02d" % t, b"%d" % i, b"")
            try:
                j.commit([r])
            except DurabilityError:
                with lock:
                    failed.append(r)
                return
            with lock:
                ok.append(r)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=30)
    assert not any(th.is_alive() for th in threads)
    assert len(failed) == 8 and j.failure
    fs2 = fs.crash("drop")
    got = records(fs2)
    assert set(ok) <= set(got)  # every returned commit is durable
    j.close()


# --- purge, tools -----------------------------------------------------------------------


def test_purge():
    fs = SimFS(23)
    clock = [T0]
    j = open_j(fs, clock=lambda: clock[0])
    i = 0
    while len(list_journal_files(fs, D)) < 4:
        j.commit([rec(i, b"p" * 3000)])
        i += 1
        clock[0] += DAY_NS // 10
    infos = list_journal_files(fs, D)
    keep = infos[2].start_position
    # too young: nothing
    assert j.purge(keep, older_than_days=30) == []
    now = infos[-1].created + 100 * DAY_NS
    assert j.purge(keep, older_than_days=1, now=now) == [infos[0].name, infos[1].name]
    assert [x.name for x in list_journal_files(fs, D)] == [x.name for x in infos[2:]]
    # never the current file
    assert j.purge(10**18, older_than_days=0, now=now) == [infos[2].name]
    left = list_journal_files(fs, D)
    assert [x.name for x in left] == [j.current_file.name]
    j.close()
    j = open_j(fs)
    got = [r for _p, _h, rs in j.read() for r in rs]
    assert got and got[-1] == rec(i - 1, b"p" * 3000)
    assert verify_dir(D, fs=fs)["ok"]
    with pytest.raises(ValueError, match="purged"):
        list(j.read(0))
    j.close()


def test_dump_and_verify():
    fs = SimFS(24)
    j = open_j(fs)
    j.commit([rec(0), Record(5, 0, 0, 7, b"", b"", b"")])
    j.commit([rec(1)])
    path = j.current_file.path
    j.close()
    lines = dump_lines(path, fs=fs)
    assert lines[0].startswith("file ") and sum(ln.startswith("frame @") for ln in lines) == 2
    assert any("TSTART" in ln and "txn=7" in ln for ln in lines)
    assert "clean end" in lines[-1]
    two = dump_lines(path, count=1, fs=fs)
    assert sum(ln.startswith("frame @") for ln in two) == 1
    first_end = list(read_stream(fs, D))[1][0]
    tail = dump_lines(path, from_position=first_end, fs=fs)
    assert sum(ln.startswith("frame @") for ln in tail) == 1
    rep = verify_dir(D, fs=fs)
    assert rep["ok"] and rep["frames"] == 2 and rep["records"] == 3
    assert rep["first_problem"] is None and rep["end_reason"] == "zero"


# --- real files and O_DIRECT ----------------------------------------------------------------


def test_real_files_direct_odd_sizes(tmp_path):
    fs = RealFS()
    d = str(tmp_path / "journal")
    j = Journal(fs, d, file_bytes=256 * 1024, precreate=True)
    if not j.direct:
        j.close()
        pytest.skip("O_DIRECT not in effect on tmp_path")
    rng = random.Random(5)
    want = []
    for i in range(300):
        batch = [rec(i * 10 + k, rng.randbytes(rng.choice([1, 7, 13, 4095, 4097, 9001])))
                 for k in range(rng.randint(1, 3))]  # fmt: skip
        if i % 3 == 0:
            j.append(batch)
        else:
            j.commit(batch)
        want += batch
    j.close()
    assert len(os.listdir(d)) >= 2
    j = Journal(fs, d, file_bytes=256 * 1024)
    assert j.direct and j.tail_reason == "zero"
    assert [r for _p, _h, rs in j.read() for r in rs] == want
    j.commit([rec(-5 % 10**6)])
    j.close()
    assert records(fs, d) == want + [rec(-5 % 10**6)]
    assert verify_dir(d, fs=fs)["ok"]


def test_real_files_torn_tail_buffered(tmp_path):
    fs = RealFS()
    d = str(tmp_path / "j")
    j = Journal(fs, d, direct="disabled", file_bytes=128 * 1024)
    ends = [j.commit([rec(i)]) for i in range(4)]
    path = j.current_file.path
    j.close()
    with open(path, "r+b") as f:
        f.seek(JOURNAL_HEADER_BYTES + ends[-1])
        f.write(encode_frame(encode_records([rec(9)]), 1, epoch=0, position=ends[-1])[:30])
    j = Journal(fs, d, direct="disabled", file_bytes=128 * 1024)
    assert j.tail_reason != "zero" and j.end_position == ends[-1]
    j.close()
    assert records(fs, d) == [rec(i) for i in range(4)]


def test_append_frames_copies_another_journal_byte_for_byte():
    """A backup's journal takes the primary's frames as shipped: same positions, same
    bytes; a damaged or misplaced frame is refused and nothing is appended."""
    from irisrep.journalcodec import FrameError

    fs = SimFS(21)
    primary = Journal(fs, "/p/journal", precreate=False)
    backup = Journal(fs, "/b/journal", precreate=False)
    recs = [Record(1, 0, 7, 0, b"k%d" % i, b"\x01v%d" % i, b"") for i in range(50)]
    for i in range(0, 50, 5):
        primary.commit(recs[i : i + 5])
    (name,) = fs.listdir("/p/journal")
    f = fs.open("/p/journal/" + name, direct="disabled")
    stream = f.pread(JOURNAL_HEADER_BYTES, primary.end_position)  # the shipped bytes
    f.close()
    with pytest.raises(FrameError):
        backup.append_frames(stream[8:])  # not a frame at this journal's position 0
    bad = bytearray(stream)
    bad[60] ^= 0xFF  # a payload byte of the first frame
    with pytest.raises(FrameError):
        backup.append_frames(bytes(bad))
    assert backup.end_position == 0  # nothing appended by the refused calls
    start, end = backup.append_frames(stream)
    assert (start, end) == (0, primary.end_position)
    backup.flush()
    assert [r for _, _, rs in backup.read(from_position=0) for r in rs] == recs
    primary.close()
    backup.close()
    reopened = Journal(fs, "/b/journal", precreate=False)
    assert reopened.end_position == end and reopened.tail_reason == "zero"
    reopened.close()


def test_interrupted_waiter_is_never_handed_the_leadership(monkeypatch):
    """The main thread commits behind a leader whose fdatasync is held and is
    interrupted by a signal while it waits; it would be the next leader. The two
    committers behind it return once the fdatasync goes on, and its record (logged
    before the interruption) is written by their group."""
    from irisrep import simdisk

    gate = threading.Event()
    orig = simdisk.SimFile.fdatasync

    def held(self):
        assert gate.wait(10), "the test never let the fdatasync finish"
        orig(self)

    monkeypatch.setattr(simdisk.SimFile, "fdatasync", held)
    fs = SimFS(23)
    gate.set()
    j = open_j(fs, file_bytes=1024 * 1024)
    j.commit([rec(0)])  # the file exists and is synced
    gate.clear()
    done: list[int] = []

    def commit(i: int) -> None:
        j.commit([rec(i)])
        done.append(i)

    leader = threading.Thread(target=commit, args=(1,))
    leader.start()
    deadline = time.monotonic() + 10
    while not (j._leading and not j._queue):  # it leads, its batch taken
        assert time.monotonic() < deadline
        time.sleep(0.001)
    others: list[threading.Thread] = []

    def queue_others_behind_main() -> None:
        while len(j._queue) < 1:  # the main thread queued first
            time.sleep(0.001)
        for i in (3, 4):
            others.append(threading.Thread(target=commit, args=(i,)))
            others[-1].start()
        while len(j._queue) < 3:
            time.sleep(0.001)

    with interrupting_main(queue_others_behind_main), pytest.raises(Interrupted):
        j.commit([rec(2)])
    gate.set()
    assert all_returned([leader, *others]), "a committer waits for the interrupted one to lead"
    assert sorted(done) == [1, 3, 4]
    j.close()
    assert sorted(r.key for r in records(fs)) == [rec(i).key for i in range(5)]
