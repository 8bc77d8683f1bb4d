"""The write image journal: crash atomicity of a cycle, recovery, corruption, faults.

Everything runs on a seeded SimFS with real BlockStores on the same disk. A crash is
taken at a named crash point by an armed action that calls `fs.crash(...)` at that
instant; the test then reopens the WIJ and the databases on the disk that survived,
recovers, and checks that every block of the cycle holds its old or its new image,
all of them the same way (never a mix), and all new once the ACTIVE header was
durable.
"""

from __future__ import annotations

import random
import re
import struct
from pathlib import Path

import pytest
import xxhash

from irisrep import _core, crashpoints
from irisrep.blockstore import BlockStore
from irisrep.constants import BLOCK_SIZE, BT_LEAF, IO_ALIGN
from irisrep.errors import CorruptError, DurabilityError
from irisrep.simdisk import SimFS
from irisrep.wij import (
    CYCLE_POINTS,
    RECOVERY_POINTS,
    WIJ_BLOCKS_MAX,
    WIJ_DIR_OFFSET,
    WIJ_ENTRY_SIZE,
    WIJ_FILE_NAME,
    WIJ_MAGIC,
    WIJ_SLOT_SIZE,
    RawStore,
    WIJCorruptError,
    WIJRecoveryPendingError,
    WriteImageJournal,
    _encode_slot,
    _entry_checksum,
    _Header,
    wij_status,
)

INST = "/inst"
WIJ = f"{INST}/{WIJ_FILE_NAME}"
DBS = {11: f"{INST}/A.dat", 22: f"{INST}/B.dat"}
OLD_BLOCKS = 12  # blocks 1..11 hold old images; block 0 is the header
# The cycle: the header block, a run, scattered blocks and blocks past the old end.
CYCLE_BLOCKS = {11: [0, 1, 2, 3, 5, 9, 12, 13], 22: [0, 4, 6, 7, 11, 14]}
ACTIVE_DURABLE = CYCLE_POINTS.index("wij_after_active_fsync")


@pytest.fixture(autouse=True)
def _clean_crashpoints():
    crashpoints.disarm()
    yield
    crashpoints.disarm()
    crashpoints.set_checking(False)
    crashpoints.reset_counts()


# --- building an instance -------------------------------------------------------------


def leaf(db_id: int, block_no: int, tag: str) -> bytes:
    payload = f"{tag}:{db_id}:{block_no}:".encode() * 40
    return _core.seal_image(payload, block_no, db_id, BT_LEAF, count=1, position=block_no)


def new_store(fs, db_id: int, path: str) -> BlockStore:
    s = BlockStore(fs, path, create=True)
    s.db_id = db_id  # deterministic ids for the test
    return s


def header_with(store: BlockStore, generation: int) -> bytes:
    store.generation = generation
    store.block_count = OLD_BLOCKS + 8
    return store.header_image()


def setup_instance(seed: int = 1):
    """A SimFS with two databases holding durable old images, and an open WIJ marked
    running. Returns (fs, wij, stores, old, new, images) where old/new map
    (db_id, block_no) -> image (old None for a block past the old end of file)."""
    fs = SimFS(seed)
    fs.makedirs(INST)
    stores = {}
    old: dict[tuple[int, int], bytes | None] = {}
    new: dict[tuple[int, int], bytes] = {}
    for db_id, path in DBS.items():
        s = new_store(fs, db_id, path)
        s.block_count = OLD_BLOCKS
        imgs = [(0, header_with(s, 1))] + [(b, leaf(db_id, b, "old")) for b in range(1, OLD_BLOCKS)]
        s.write_images(imgs)
        s.sync()
        stores[db_id] = s
        for b, img in imgs:
            old[(db_id, b)] = img
        for b in CYCLE_BLOCKS[db_id]:
            new[(db_id, b)] = header_with(s, 2) if b == 0 else leaf(db_id, b, "new")
            old.setdefault((db_id, b), None)
    wij = WriteImageJournal(fs, WIJ)
    wij.mark_running()
    images = [(d, b, img) for (d, b), img in new.items()]
    random.Random(seed).shuffle(images)  # the WIJ orders them itself
    return fs, wij, stores, old, new, images


def reopen(fs):
    """What an instance does on open after a crash: raw stores (block 0 may be one of
    the blocks to restore), the WIJ, recovery."""
    stores = {db_id: RawStore(fs, path) for db_id, path in DBS.items()}
    for db_id, s in stores.items():
        assert s.db_id == db_id
    return WriteImageJournal(fs, WIJ), stores


def raw_block(fs, path: str, block_no: int) -> bytes:
    f = fs.open(path, direct="disabled")
    try:
        return f.pread(block_no * BLOCK_SIZE, BLOCK_SIZE)
    finally:
        f.close()


def file_bytes(fs, path: str) -> bytes:
    f = fs.open(path, direct="disabled")
    try:
        return f.pread(0, f.size())
    finally:
        f.close()


def classify(fs, old, new) -> dict[tuple[int, int], str]:
    """'old' or 'new' per block of the cycle; fails on anything else (a torn or
    garbage block)."""
    out = {}
    for key, want_new in new.items():
        db_id, b = key
        got = raw_block(fs, DBS[db_id], b)
        if got == want_new:
            out[key] = "new"
        elif old[key] is not None and got == old[key]:
            out[key] = "old"
        elif old[key] is None and got in (b"", bytes(BLOCK_SIZE)):
            out[key] = "old"  # a block past the old end: absent or a hole
        else:
            raise AssertionError(f"db {db_id} block {b} holds neither its old nor its new image")
    return out


def check_untouched(fs, old, new) -> None:
    for (db_id, b), img in old.items():
        if (db_id, b) not in new:
            assert raw_block(fs, DBS[db_id], b) == img, f"db {db_id} block {b} changed"


def check_after_recovery(fs, old, new, must_be_new: bool) -> str:
    states = classify(fs, old, new)
    kinds = set(states.values())
    assert len(kinds) == 1, f"a mix of old and new blocks: {states}"
    (kind,) = kinds
    if must_be_new:
        assert kind == "new"
    check_untouched(fs, old, new)
    # The databases open normally and every block verifies.
    for db_id, path in DBS.items():
        s = BlockStore(fs, path)
        assert s.db_id == db_id
        for b in range(1, OLD_BLOCKS):
            s.read_image(b)
        s.close()
    return kind


def crash_action(holder: dict, mode: str, seed: int, torn: int | None):
    def action(_name: str) -> None:
        holder["fs"] = holder["old_fs"].crash(mode, random.Random(seed), torn)

    return action


def crash_modes(seed: int) -> list[tuple[str, int | None]]:
    # 30 tears a header slot inside its fields (the fields end at byte 72, so a
    # header write torn at 512 or 4095 lands whole: zeros follow the fields).
    rnd = random.Random(seed).randint(1, 2 * BLOCK_SIZE)
    return [("drop", None), ("subset", None), ("reorder", None)] + [
        ("torn", t) for t in (0, 30, 512, 4095, rnd)
    ]


def cycle_cases() -> list[tuple[str, int]]:
    # The database points are passed once per database (two here).
    out = []
    for p in CYCLE_POINTS:
        n = 2 if p in ("wij_after_db_write", "wij_after_db_fsync") else 1
        out += [(p, k) for k in range(1, n + 1)]
    return out


# --- the cycle under a crash at every point ---------------------------------------------


def test_cycle_without_crash_passes_every_point_and_writes_all():
    fs, wij, stores, old, new, images = setup_instance()
    crashpoints.set_checking(True)
    crashpoints.reset_counts()
    wij.cycle(stores, images, checkpoint=777)
    counts = crashpoints.hit_counts()
    assert [p for p in CYCLE_POINTS if counts.get(p, 0) == 0] == []
    st = wij.status()
    assert (st.state, st.cycle, st.entries, st.checkpoint, st.running) == (
        "empty",
        1,
        len(images),
        777,
        True,
    )
    assert set(classify(fs, old, new).values()) == {"new"}
    # Power loss right after a completed cycle loses nothing.
    survivor = fs.crash("drop")
    assert check_after_recovery(survivor, old, new, must_be_new=True) == "new"


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("point,nth", cycle_cases())
def test_crash_at_every_cycle_point(point, nth, seed):
    must_be_new = CYCLE_POINTS.index(point) >= ACTIVE_DURABLE
    for mode, torn in crash_modes(seed):
        fs, wij, stores, old, new, images = setup_instance(seed)
        holder = {"old_fs": fs}
        crashpoints.arm(point, nth, crash_action(holder, mode, seed, torn))
        with pytest.raises(crashpoints.SimulatedCrash):
            wij.cycle(stores, images, checkpoint=99)
        survivor = holder["fs"]
        wij2, stores2 = reopen(survivor)
        rec = wij2.recover(stores2)
        assert rec.unclean
        kind = check_after_recovery(survivor, old, new, must_be_new)
        assert (rec.state_found == "active") == (rec.restored_blocks == len(new))
        if rec.state_found == "active":
            assert kind == "new" and rec.checkpoint == 99 and rec.cycle == 1
        assert wij2.status().state == "empty"
        # The WIJ stays usable: another cycle (sequence continues past a torn slot).
        more = [(11, 1, leaf(11, 1, "third"))]
        wij2.cycle(stores2, more, checkpoint=100)
        assert raw_block(survivor, DBS[11], 1) == more[0][2]
        again = WriteImageJournal(survivor.crash("drop"), WIJ).status()
        assert (again.state, again.checkpoint) == ("empty", 100)


def test_crash_before_active_durable_leaves_all_old_on_drop():
    for point in CYCLE_POINTS[:ACTIVE_DURABLE]:
        fs, wij, stores, old, new, images = setup_instance()
        holder = {"old_fs": fs}
        crashpoints.arm(point, 1, crash_action(holder, "drop", 0, None))
        with pytest.raises(crashpoints.SimulatedCrash):
            wij.cycle(stores, images, checkpoint=5)
        wij2, stores2 = reopen(holder["fs"])
        rec = wij2.recover(stores2)
        assert rec.state_found == "empty" and rec.restored_blocks == 0
        assert check_after_recovery(holder["fs"], old, new, False) == "old"


# --- a crash during recovery, twice, then a clean recovery -------------------------------


def active_instance(seed: int = 3):
    """A survivor disk whose WIJ is ACTIVE (crash right after the ACTIVE fsync)."""
    fs, wij, stores, old, new, images = setup_instance(seed)
    holder = {"old_fs": fs}
    crashpoints.arm("wij_after_active_fsync", 1, crash_action(holder, "drop", seed, None))
    with pytest.raises(crashpoints.SimulatedCrash):
        wij.cycle(stores, images, checkpoint=4242)
    survivor = holder["fs"]
    assert wij_status(WIJ, survivor).state == "active"
    return survivor, old, new


def recovery_cases() -> list[tuple[str, int]]:
    out = []
    for p in RECOVERY_POINTS:
        n = 1 if p == "wij_recovery_after_empty_write" else 2
        out += [(p, k) for k in range(1, n + 1)]
    return out


@pytest.mark.parametrize("point,nth", recovery_cases())
def test_crash_during_recovery_twice_then_clean(point, nth):
    for i, (mode, torn) in enumerate(crash_modes(5)):
        fs, old, new = active_instance(seed=3 + i)
        for attempt in range(2):
            holder = {"old_fs": fs}
            crashpoints.arm(point, nth, crash_action(holder, mode, attempt + i, torn))
            wij, stores = reopen(fs)
            if wij.status().state == "empty":
                # The first crash kept the EMPTY header: nothing left to recover.
                crashpoints.disarm()
                break
            with pytest.raises(crashpoints.SimulatedCrash):
                wij.recover(stores)
            fs = holder["fs"]
            # Blocks may be torn mid-restore; then the WIJ must still say ACTIVE.
            if wij_status(WIJ, fs).state == "empty":
                assert set(classify(fs, old, new).values()) == {"new"}
        wij, stores = reopen(fs)
        rec = wij.recover(stores)
        assert rec.checkpoint == 4242
        assert check_after_recovery(fs, old, new, must_be_new=True) == "new"
        # Recovering once more changes nothing.
        before = {p: file_bytes(fs, p) for p in DBS.values()}
        rec2 = WriteImageJournal(fs, WIJ).recover({d: RawStore(fs, p) for d, p in DBS.items()})
        assert rec2.state_found == "empty" and rec2.restored_blocks == 0
        assert before == {p: file_bytes(fs, p) for p in DBS.values()}


def test_recovery_with_crash_modes_after_empty_write_is_idempotent():
    fs, old, new = active_instance()
    wij, stores = reopen(fs)
    first = wij.recover(stores)
    assert first.state_found == "active" and first.restored_blocks == len(new)
    assert check_after_recovery(fs, old, new, True) == "new"


# --- corruption: reported precisely, nothing written -----------------------------------


def poke(fs, path: str, offset: int, data: bytes) -> None:
    f = fs.open(path, direct="disabled")
    try:
        f.pwrite(offset, data)
        f.fdatasync()
    finally:
        f.close()


def flip(fs, path: str, offset: int) -> None:
    f = fs.open(path, direct="disabled")
    try:
        b = f.pread(offset, 1)
    finally:
        f.close()
    poke(fs, path, offset, bytes([b[0] ^ 0x40]))


def expect_corrupt_and_untouched(fs, match: str) -> WIJCorruptError:
    before = {p: file_bytes(fs, p) for p in DBS.values()}
    wij, stores = reopen(fs)
    with pytest.raises(WIJCorruptError, match=match) as ei:
        wij.recover(stores)
    assert isinstance(ei.value, CorruptError)
    assert ei.value.path == WIJ and WIJ in str(ei.value)
    assert "nothing was written" in str(ei.value)
    assert before == {p: file_bytes(fs, p) for p in DBS.values()}
    assert wij_status(WIJ, fs).state == "active"  # still pending: not cleared
    return ei.value


def entry_layout(fs):
    st = wij_status(WIJ, fs)
    dir_pad = -(-st.entries * WIJ_ENTRY_SIZE // IO_ALIGN) * IO_ALIGN
    f = fs.open(WIJ, direct="disabled")
    try:
        raw = f.pread(WIJ_DIR_OFFSET, st.entries * WIJ_ENTRY_SIZE)
    finally:
        f.close()
    ents = [struct.unpack_from("<IIQ", raw, i * 16) for i in range(st.entries)]
    return st, WIJ_DIR_OFFSET + dir_pad, ents


def test_flipped_byte_in_an_image_is_refused_precisely():
    fs, _old, _new = active_instance()
    st, images_at, ents = entry_layout(fs)
    i = 5
    flip(fs, WIJ, images_at + i * BLOCK_SIZE + 3000)
    err = expect_corrupt_and_untouched(fs, r"entry 5 .*entry checksum mismatch")
    db_id, block_no, want = ents[i]
    assert (err.entry, err.block, err.db_id) == (i, block_no, db_id)
    assert err.offset == images_at + i * BLOCK_SIZE
    assert err.expected == f"{want:#018x}" and err.found != err.expected
    assert f"block {block_no} of database {db_id}" in str(err)


def test_flipped_byte_in_the_directory_is_refused_precisely():
    fs, _old, _new = active_instance()
    flip(fs, WIJ, WIJ_DIR_OFFSET + 17)
    err = expect_corrupt_and_untouched(fs, r"directory of active cycle 1 .*checksum mismatch")
    assert err.offset == WIJ_DIR_OFFSET
    assert err.expected != err.found


def plant_active(fs, entries: list[tuple[int, int, bytes]], *, entry_ck=None) -> None:
    """Write an ACTIVE WIJ by hand (bypassing cycle()'s validation): entries are
    (db_id, block_no, image); the entry checksum is right unless `entry_ck` says."""
    n = len(entries)
    dir_pad = -(-n * WIJ_ENTRY_SIZE // IO_ALIGN) * IO_ALIGN
    d = bytearray(dir_pad)
    for i, (db_id, b, img) in enumerate(entries):
        ck = _entry_checksum(db_id, b, img) if entry_ck is None else entry_ck
        struct.pack_into("<IIQ", d, i * 16, db_id, b, ck)
    dck = xxhash.xxh3_64_intdigest(bytes(d[: n * 16]))
    st = wij_status(WIJ, fs)
    h = _Header(st.sequence + 1, 1, st.cycle + 1, n, 9, dck, 1)
    poke(fs, WIJ, WIJ_DIR_OFFSET, bytes(d) + b"".join(e[2] for e in entries))
    poke(fs, WIJ, (h.sequence % 2) * WIJ_SLOT_SIZE, _encode_slot(h))


def fresh_instance(seed: int = 4):
    fs, wij, stores, old, new, images = setup_instance(seed)
    wij.close()
    for s in stores.values():
        s.close()
    return fs, old, new


def test_entry_for_a_database_that_is_not_open_is_refused():
    fs, _old, _new = fresh_instance()
    plant_active(fs, [(11, 1, leaf(11, 1, "x")), (33, 2, leaf(33, 2, "x"))])
    err = expect_corrupt_and_untouched(fs, r"entry 1 .*no database with id 33")
    assert (err.entry, err.block, err.db_id, err.found) == (1, 2, 33, 33)


def test_image_of_another_database_is_refused():
    fs, _old, _new = fresh_instance()
    # The entry checksum is right, but the image names database 22, not 11.
    plant_active(fs, [(11, 1, leaf(11, 1, "x")), (11, 3, leaf(22, 3, "x"))])
    err = expect_corrupt_and_untouched(fs, r"entry 1 .*another database")
    assert (err.entry, err.block, err.db_id) == (1, 3, 11)
    assert (err.expected, err.found) == (11, 22)
    assert isinstance(err.__cause__, CorruptError)


def test_misdirected_image_is_refused():
    fs, _old, _new = fresh_instance()
    plant_active(fs, [(22, 4, leaf(22, 7, "x"))])
    err = expect_corrupt_and_untouched(fs, r"entry 0 .*another block number")
    assert (err.expected, err.found) == (4, 7)


def test_wrong_entry_checksum_is_refused():
    fs, _old, _new = fresh_instance()
    plant_active(fs, [(22, 4, leaf(22, 4, "x"))], entry_ck=12345)
    err = expect_corrupt_and_untouched(fs, r"entry 0 .*entry checksum mismatch")
    assert err.expected == f"{12345:#018x}"


def test_both_header_slots_corrupt_is_refused_naming_each_slot():
    fs, _old, _new = active_instance()
    before = {p: file_bytes(fs, p) for p in DBS.values()}
    flip(fs, WIJ, 100)
    flip(fs, WIJ, WIJ_SLOT_SIZE + 30)
    for opener in (lambda: WriteImageJournal(fs, WIJ), lambda: wij_status(WIJ, fs)):
        with pytest.raises(WIJCorruptError) as ei:
            opener()
        msg = str(ei.value)
        assert WIJ in msg and "offset 0" in msg and f"offset {WIJ_SLOT_SIZE}" in msg
        assert msg.count("checksum mismatch (expected 0x") == 2
        assert len(ei.value.expected) == 2 and len(ei.value.found) == 2
        assert all(e != f for e, f in zip(ei.value.expected, ei.value.found, strict=True))
    assert before == {p: file_bytes(fs, p) for p in DBS.values()}


def test_bad_magic_in_both_slots_is_refused():
    fs, _old, _new = fresh_instance()
    for slot in (0, 1):
        raw = bytearray(_encode_slot(_Header(slot, 0, 0, 0, 0, 0, 0)))
        raw[8:16] = b"NOTAWIJ!"
        struct.pack_into("<Q", raw, 0, xxhash.xxh3_64_intdigest(bytes(raw[8:])))
        poke(fs, WIJ, slot * WIJ_SLOT_SIZE, bytes(raw))
    with pytest.raises(WIJCorruptError, match="bad magic"):
        WriteImageJournal(fs, WIJ)


@pytest.mark.parametrize("bad_slot", ["newest", "older"])
def test_one_corrupt_slot_uses_the_other(bad_slot):
    fs, old, new = active_instance()
    st = wij_status(WIJ, fs)
    newest = st.sequence % 2
    slot = newest if bad_slot == "newest" else 1 - newest
    flip(fs, WIJ, slot * WIJ_SLOT_SIZE + 40)
    st2 = wij_status(WIJ, fs)
    assert len(st2.slot_errors) == 1 and f"offset {slot * WIJ_SLOT_SIZE}" in st2.slot_errors[0]
    wij, stores = reopen(fs)
    rec = wij.recover(stores)
    if bad_slot == "newest":
        # The ACTIVE header is the damaged one: the previous (EMPTY) state rules,
        # and the databases were never touched: all old.
        assert st2.state == "empty" and st2.sequence == st.sequence - 1
        assert rec.state_found == "empty"
        assert check_after_recovery(fs, old, new, False) == "old"
    else:
        assert (st2.state, st2.sequence) == ("active", st.sequence)
        assert rec.state_found == "active"
        assert check_after_recovery(fs, old, new, True) == "new"
    # Later header writes go to alternate slots and overwrite the damaged one.
    wij.mark_clean()
    wij.mark_running()
    after = wij_status(WIJ, fs)
    assert after.slot_errors == []
    assert after.sequence == (st.sequence + 3 if bad_slot == "older" else st.sequence + 1)


def test_existing_file_without_headers_is_refused_not_reinitialised():
    fs = SimFS(8)
    fs.makedirs(INST)
    f = fs.open(WIJ, create=True, direct="disabled")
    f.close()
    with pytest.raises(WIJCorruptError, match="no valid WIJ header"):
        WriteImageJournal(fs, WIJ)
    assert fs.size(WIJ) == 0


# --- faults ---------------------------------------------------------------------------


def test_fsync_failure_of_the_wij_is_fatal_and_final():
    fs, wij, stores, old, new, images = setup_instance()
    fs.fail_next("fdatasync", path=WIJ)
    with pytest.raises(DurabilityError) as ei:
        wij.cycle(stores, images, checkpoint=1)
    assert isinstance(ei.value.__cause__, OSError)
    assert WIJ in str(ei.value)
    for call in (
        lambda: wij.cycle(stores, images, checkpoint=2),
        lambda: wij.recover(stores),
        wij.mark_running,
        wij.mark_clean,
        wij.status,
    ):
        with pytest.raises(DurabilityError, match="refuses"):
            call()
    wij.close()
    wij.close()
    # Nothing reached the databases; after a power loss all is old.
    assert set(classify(fs, old, new).values()) == {"old"}
    survivor = fs.crash("keep_all")
    wij2, stores2 = reopen(survivor)
    assert wij2.recover(stores2).state_found == "empty"
    assert check_after_recovery(survivor, old, new, False) == "old"


def test_fsync_failure_of_a_database_is_fatal_and_recovery_finishes_it():
    fs, wij, stores, old, new, images = setup_instance()
    fs.fail_next("fdatasync", path=DBS[22])
    with pytest.raises(DurabilityError, match="B.dat") as ei:
        wij.cycle(stores, images, checkpoint=1)
    assert isinstance(ei.value.__cause__, OSError)
    with pytest.raises(DurabilityError):
        wij.cycle(stores, images[:1], checkpoint=2)
    # fsyncgate: the failed pages may never reach the disk; the ACTIVE WIJ is durable.
    survivor = fs.crash("drop")
    wij2, stores2 = reopen(survivor)
    rec = wij2.recover(stores2)
    assert rec.state_found == "active" and rec.restored_blocks == len(new)
    assert check_after_recovery(survivor, old, new, True) == "new"


def test_fsync_failure_during_recovery_is_fatal():
    fs, old, new = active_instance()
    wij, stores = reopen(fs)
    fs.fail_next("fdatasync", path=DBS[11])
    with pytest.raises(DurabilityError):
        wij.recover(stores)
    with pytest.raises(DurabilityError):
        wij.recover(stores)
    survivor = fs.crash("drop")
    wij2, stores2 = reopen(survivor)
    assert wij2.recover(stores2).state_found == "active"
    assert check_after_recovery(survivor, old, new, True) == "new"


def test_too_many_images_is_refused_before_any_write():
    fs, wij, stores, _old, _new, images = setup_instance()
    small = WriteImageJournal(fs, WIJ, blocks_max=3)
    writes = fs.calls["pwrite"]
    with pytest.raises(ValueError, match="exceeds the WIJ limit of 3"):
        small.cycle(stores, images, checkpoint=1)
    assert fs.calls["pwrite"] == writes
    with pytest.raises(ValueError):
        WriteImageJournal(fs, WIJ, blocks_max=WIJ_BLOCKS_MAX + 1)


def test_bad_cycle_input_is_refused_before_any_write():
    fs, wij, stores, _old, _new, images = setup_instance()
    writes = fs.calls["pwrite"]
    bad = [
        images + [images[0]],  # duplicate block
        images + [(99, 1, leaf(99, 1, "x"))],  # no store
        [(11, 1, leaf(11, 2, "x"))],  # image names another block
        [(11, 1, b"short")],
    ]
    for imgs in bad:
        with pytest.raises((ValueError, CorruptError)):
            wij.cycle(stores, imgs, checkpoint=1)
    assert fs.calls["pwrite"] == writes
    assert wij.status().cycle == 0


def test_cycle_refused_while_recovery_pending():
    fs, _old, _new = active_instance()
    wij, stores = reopen(fs)
    with pytest.raises(WIJRecoveryPendingError):
        wij.cycle(stores, [(11, 1, leaf(11, 1, "x"))], checkpoint=1)
    with pytest.raises(WIJRecoveryPendingError):
        wij.mark_clean()
    wij.recover(stores)
    wij.cycle(stores, [(11, 1, leaf(11, 1, "x"))], checkpoint=1)


# --- unclean stop: compare, report, change nothing ---------------------------------------


def test_unclean_stop_reports_a_planted_mismatch_and_changes_nothing():
    fs, wij, stores, old, new, images = setup_instance()
    wij.cycle(stores, images, checkpoint=50)
    # Something (a bug, a stray write) puts the old image back in block 5 of db 11.
    poke(fs, DBS[11], 5 * BLOCK_SIZE, old[(11, 5)])
    survivor = fs.crash("drop")  # power loss: `running` is still set
    before = {p: file_bytes(survivor, p) for p in [*DBS.values(), WIJ]}
    wij2, stores2 = reopen(survivor)
    rec = wij2.recover(stores2)
    assert rec.state_found == "empty" and rec.unclean and rec.restored_blocks == 0
    assert len(rec.mismatches) == 1
    assert re.match(r"db 11 block 5 .*first difference at byte \d+", rec.mismatches[0])
    assert "valid image" in rec.mismatches[0]
    assert before == {p: file_bytes(survivor, p) for p in [*DBS.values(), WIJ]}


def test_unclean_stop_reports_a_corrupt_database_block():
    fs, wij, stores, _old, _new, images = setup_instance()
    wij.cycle(stores, images, checkpoint=50)
    flip(fs, DBS[22], 6 * BLOCK_SIZE + 500)
    wij2, stores2 = reopen(fs.snapshot())
    rec = wij2.recover(stores2)
    assert len(rec.mismatches) == 1 and rec.mismatches[0].startswith("db 22 block 6 ")
    assert "invalid image" in rec.mismatches[0] and "payload" in rec.mismatches[0]


def test_unclean_stop_after_a_half_written_next_cycle_compares_nothing_false():
    fs, wij, stores, _old, _new, images = setup_instance()
    wij.cycle(stores, images, checkpoint=50)
    holder = {"old_fs": fs}
    crashpoints.arm("wij_after_images_fsync", 1, crash_action(holder, "drop", 0, None))
    with pytest.raises(crashpoints.SimulatedCrash):
        wij.cycle(stores, [(11, 1, leaf(11, 1, "next"))], checkpoint=51)
    wij2, stores2 = reopen(holder["fs"])
    rec = wij2.recover(stores2)
    assert rec.mismatches == [] and rec.notes and "nothing to compare" in rec.notes[0]


def test_clean_close_is_not_unclean():
    fs, wij, stores, _old, _new, images = setup_instance()
    wij.cycle(stores, images, checkpoint=50)
    wij.mark_clean()
    wij.close()
    wij2, stores2 = reopen(fs.crash("drop"))
    rec = wij2.recover(stores2)
    assert not rec.unclean and rec.mismatches == [] and rec.notes == []
    assert wij2.status().running is False


# --- file and layout ------------------------------------------------------------------


def test_new_wij_has_two_valid_slots_and_uses_direct_io():
    fs = SimFS(9)
    fs.makedirs(INST)
    wij = WriteImageJournal(fs, WIJ)
    assert wij.file.direct  # SimFS checks every offset and length is 4096-aligned
    st = wij.status()
    assert (st.state, st.sequence, st.cycle, st.slot_errors) == ("empty", 1, 0, [])
    raw = file_bytes(fs, WIJ)
    assert raw[8:16] == WIJ_MAGIC and raw[WIJ_SLOT_SIZE + 8 : WIJ_SLOT_SIZE + 16] == WIJ_MAGIC
    assert not fs.exists(WIJ + ".new")
    # Durable at once: a power loss right after creation keeps it.
    assert wij_status(WIJ, fs.crash("drop")).state == "empty"


def test_crash_while_creating_leaves_no_wij():
    fs = SimFS(10)
    fs.makedirs(INST)
    fs.fail_next("rename")
    with pytest.raises(OSError):
        WriteImageJournal(fs, WIJ)
    survivor = fs.crash("drop")
    assert not survivor.exists(WIJ)
    assert WriteImageJournal(survivor, WIJ).status().state == "empty"


def test_every_wij_write_is_aligned_in_a_cycle():
    fs, wij, stores, _old, _new, images = setup_instance()
    ino = fs._names[WIJ]
    ino.pending.clear()
    wij.cycle(stores, images, checkpoint=1)  # SimFile raises on a misaligned write
    assert wij.file.direct


def test_header_file_agrees_with_python():
    root = Path(__file__).resolve().parents[1]
    text = (root / "include" / "irisrep_wij.h").read_text()
    defs = dict(re.findall(r"#define (IR_WIJ_\w+) (\S+)", text))
    assert defs["IR_WIJ_MAGIC"] == '"IRISWIJ1"' and WIJ_MAGIC == b"IRISWIJ1"
    assert int(defs["IR_WIJ_SLOT_SIZE"]) == WIJ_SLOT_SIZE
    assert int(defs["IR_WIJ_DIR_OFFSET"]) == WIJ_DIR_OFFSET
    assert int(defs["IR_WIJ_ENTRY_SIZE"]) == WIJ_ENTRY_SIZE
    assert int(defs["IR_WIJ_BLOCKS_MAX"]) == WIJ_BLOCKS_MAX
    assert int(defs["IR_WIJ_ALIGN"]) == IO_ALIGN
    offs = {k: int(v) for k, v in defs.items() if k.startswith("IR_WIJ_OFF_")}
    h = _Header(sequence=5, state=1, cycle=6, entries=7, checkpoint=8, dir_checksum=9, running=1)
    raw = _encode_slot(h)

    def u(off, fmt):
        return struct.unpack_from(fmt, raw, off)[0]

    assert u(offs["IR_WIJ_OFF_CHECKSUM"], "<Q") == xxhash.xxh3_64_intdigest(raw[8:])
    assert raw[offs["IR_WIJ_OFF_MAGIC"] : offs["IR_WIJ_OFF_MAGIC"] + 8] == WIJ_MAGIC
    assert u(offs["IR_WIJ_OFF_SEQUENCE"], "<Q") == 5
    assert u(offs["IR_WIJ_OFF_STATE"], "<I") == 1
    assert u(offs["IR_WIJ_OFF_CYCLE"], "<Q") == 6
    assert u(offs["IR_WIJ_OFF_ENTRIES"], "<I") == 7
    assert u(offs["IR_WIJ_OFF_BLOCK_SIZE"], "<I") == BLOCK_SIZE
    assert u(offs["IR_WIJ_OFF_CHECKPOINT"], "<Q") == 8
    assert u(offs["IR_WIJ_OFF_DIR_CHECKSUM"], "<Q") == 9
    assert u(offs["IR_WIJ_OFF_RUNNING"], "<I") == 1


def test_crash_point_names_are_registered():
    for p in CYCLE_POINTS + RECOVERY_POINTS:
        assert p in crashpoints.POINTS


def test_real_files_cycle_and_recover(tmp_path):
    from irisrep.fileio import RealFS

    fs = RealFS()
    path = str(tmp_path / "A.dat")
    s = new_store(fs, 11, path)
    s.write_images([(0, header_with(s, 1))] + [(b, leaf(11, b, "old")) for b in range(1, 6)])
    s.sync()
    wij = WriteImageJournal(fs, str(tmp_path / WIJ_FILE_NAME))
    wij.mark_running()
    imgs = [(11, b, leaf(11, b, "new")) for b in (1, 2, 3, 5, 40)]
    wij.cycle({11: s}, imgs, checkpoint=3)
    for _d, b, img in imgs:
        assert s.file.pread(b * BLOCK_SIZE, BLOCK_SIZE) == img
    wij.mark_clean()
    wij.close()
    st = wij_status(str(tmp_path / WIJ_FILE_NAME))
    assert (st.state, st.cycle, st.entries, st.running) == ("empty", 1, 5, False)


# --- the pipelined WIJ write (writer thread), forced on with tiny chunks ------------------


@pytest.fixture
def tiny_chunks(monkeypatch):
    import irisrep.wij as wij_mod

    monkeypatch.setattr(wij_mod, "WIJ_WRITE_CHUNK_BYTES", 3 * BLOCK_SIZE)
    monkeypatch.setattr(wij_mod, "WIJ_PIPELINE_MIN_BYTES", 2 * BLOCK_SIZE)


@pytest.mark.usefixtures("tiny_chunks")
@pytest.mark.parametrize("point", CYCLE_POINTS[:4])
def test_pipelined_write_under_crashes(point):
    must_be_new = CYCLE_POINTS.index(point) >= ACTIVE_DURABLE
    for mode, torn in crash_modes(6):
        fs, wij, stores, old, new, images = setup_instance(6)
        holder = {"old_fs": fs}
        crashpoints.arm(point, 1, crash_action(holder, mode, 6, torn))
        with pytest.raises(crashpoints.SimulatedCrash):
            wij.cycle(stores, images, checkpoint=8)
        wij2, stores2 = reopen(holder["fs"])
        wij2.recover(stores2)
        check_after_recovery(holder["fs"], old, new, must_be_new)


@pytest.mark.usefixtures("tiny_chunks")
def test_pipelined_write_is_deterministic_and_complete():
    outs = []
    for _ in range(2):
        fs, wij, stores, old, new, images = setup_instance(7)
        before = fs.calls["pwrite"]
        wij.cycle(stores, images, checkpoint=8)
        assert fs.calls["pwrite"] - before >= len(images) // 3 + 2  # chunks, dir, headers
        assert set(classify(fs, old, new).values()) == {"new"}
        outs.append(file_bytes(fs, WIJ))
    assert outs[0] == outs[1]


@pytest.mark.usefixtures("tiny_chunks")
def test_failed_wij_image_write_raises_oserror_and_changes_nothing():
    fs, wij, stores, old, new, images = setup_instance(8)
    fs.fail_next("pwrite", after=1, path=WIJ)
    with pytest.raises(OSError):
        wij.cycle(stores, images, checkpoint=8)
    assert set(classify(fs, old, new).values()) == {"old"}
    assert wij.status().state == "empty" and wij.failure is None
    wij.cycle(stores, images, checkpoint=9)  # the header was never touched: usable
    assert set(classify(fs, old, new).values()) == {"new"}


# --- the staged writes in C (_core.wj_*, real files) ---------------------------------


def _real_file(tmp_path, name: str):
    from irisrep.fileio import RealFS

    return RealFS().open(str(tmp_path / name), create=True)


def test_wj_group_images_splits_per_database_and_refuses_bad_input():
    a, b, c = leaf(1, 3, "a"), leaf(1, 4, "b"), leaf(2, 3, "c")
    assert _core._wj_group_images([(1, 3, a), (1, 4, b), (2, 3, c)]) == {
        1: [(3, a), (4, b)],
        2: [(3, c)],
    }
    assert _core._wj_group_images([]) == {}
    for bad in (
        [(1, 3, a), (1, 3, a)],  # twice
        [(1, 4, b), (1, 3, a)],  # unsorted
        [(1, 4, a)],  # image names another block
        [(2, 3, a)],  # image names another database
        [(1, 3, a[:-1])],  # short
        [(1, 3)],
        [("x", 3, a)],
        [(1, 3, 5)],
    ):
        assert _core._wj_group_images(bad) is None


@pytest.mark.parametrize("per_unit,threads", [(1, 1), (3, 2), (7, 8), (100, 2)])
def test_wj_write_images_writes_images_and_directory_entries(tmp_path, per_unit, threads):
    f = _real_file(tmp_path, "w")
    ordered = [(1, b, leaf(1, b, "x")) for b in range(1, 12)] + [(2, 5, leaf(2, 5, "y"))]
    directory = bytearray(IO_ALIGN)
    base = 3 * IO_ALIGN
    _core._wj_write_images(f, base, ordered, directory, per_unit, threads)
    data = f.pread(base, len(ordered) * BLOCK_SIZE)
    assert data == b"".join(t[2] for t in ordered)
    for i, (db_id, block_no, image) in enumerate(ordered):
        ck = xxhash.xxh3_64_intdigest(struct.pack("<II", db_id, block_no) + image)
        assert directory[16 * i : 16 * i + 16] == struct.pack("<IIQ", db_id, block_no, ck)
    assert not any(directory[16 * len(ordered) :])
    f.close()


def test_wj_write_images_refuses_bad_arguments_before_writing(tmp_path):
    f = _real_file(tmp_path, "w")
    ordered = [(1, 1, leaf(1, 1, "x"))]
    with pytest.raises(ValueError):
        _core._wj_write_images(f, 0, ordered, bytearray(8), 1, 1)  # directory too small
    with pytest.raises(ValueError):
        _core._wj_write_images(f, 0, [(1, 1, b"short")], bytearray(IO_ALIGN), 1, 1)
    if f.direct:
        with pytest.raises(ValueError, match="O_DIRECT"):
            _core._wj_write_images(f, 100, ordered, bytearray(IO_ALIGN), 1, 1)
    assert f.size() == 0
    f.close()
    with pytest.raises(OSError):
        _core._wj_write_images(f, 0, ordered, bytearray(IO_ALIGN), 1, 1)


@pytest.mark.parametrize("run_max,threads", [(1, 1), (2, 3), (1024, 8)])
def test_wj_write_runs_writes_every_block_in_place(tmp_path, run_max, threads):
    f = _real_file(tmp_path, "d")
    blocks = [1, 2, 3, 4, 5, 9, 10, 20, 22, 23]
    images = [(b, leaf(1, b, "r")) for b in blocks]
    _core._wj_write_runs(f, images, run_max, threads)
    for b, image in images:
        assert f.pread(b * BLOCK_SIZE, BLOCK_SIZE) == image
    assert f.pread(6 * BLOCK_SIZE, BLOCK_SIZE) == bytes(BLOCK_SIZE)
    _core._wj_write_runs(f, [], run_max, threads)
    f.close()
    with pytest.raises(OSError):
        _core._wj_write_runs(f, images, run_max, threads)
