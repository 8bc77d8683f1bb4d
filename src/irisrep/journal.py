"""The journal files: a durable, position-addressed stream of frames, and group commit.

Owns the journal directory (`YYYYMMDD.NNN` files, layout in docs/journal-format.md):
creating and preallocating files, finding the end of the stream on open, writing
frames (one frame is the unit that is written, fdatasynced and later shipped), group
commit, rollover, reading, purging and verifying. It does not know what records mean
(the engine does) nor how frames are encoded (`irisrep.journalcodec` / `_core`).

Promises (DESIGN.md section 2, rules 1, 2, 4 and 6):
- A file name is visible only once the file is preallocated (zeros written, not
  fallocated), its header written and the whole file fsynced: it is created as
  `NAME.new` and renamed (the rename fsyncs the directory). A leftover `*.new` is
  removed on open.
- `commit()` returns only when its frame is durable. Concurrent committers share one
  write and one fdatasync (group commit).
- At any instant at most ONE write of frames is not yet durable: frames handed to
  `append()` / `append_relaxed()` wait in memory (with their positions assigned) and
  are written, together with everything else pending, by the next flush, in one
  write followed by one fdatasync. So a power loss can tear only the last write,
  never leave a hole followed by a valid frame; which is what lets open tell a torn
  tail (accepted) from corruption in the middle (refused). Rollover fdatasyncs the
  old file before the next one is created, so only the last file can be torn.
- On open the end of the stream is found by parsing frames from the last file's
  start. The scan stops for one reason of `journalcodec.FRAME_ERROR_REASONS`; "zero"
  is a clean end, any other is a torn tail, accepted (and logged with its own
  message naming file, offset and position) only if no valid frame follows it. The
  torn bytes are zeroed and fdatasynced before any new frame is accepted.
  Corruption in the middle raises JournalCorruptError and nothing is changed.
- A failed write or fdatasync raises DurabilityError (chained); every waiting
  committer gets it too and the Journal refuses every later call but close(): it
  never retries and pretends (a failed fdatasync may have dropped the pages).
- With O_DIRECT every write is 4 KiB-aligned in offset and length: the partial last
  block is kept in memory and rewritten with the new bytes (its old bytes rewritten
  unchanged, so a torn rewrite cannot damage a durable frame).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import struct
import threading
import time
from collections.abc import Iterator

import xxhash

from . import crashpoints
from .constants import (
    IO_ALIGN,
    IO_CALL_BYTES_MAX,
    JOURNAL_FILE_BYTES,
    JOURNAL_FILE_MAGIC,
    JOURNAL_FILES_PER_DAY_MAX,
    JOURNAL_FLUSH_MS,
    JOURNAL_FRAME_BYTES_MAX,
    JOURNAL_FRAME_HEADER_BYTES,
    JOURNAL_FRAME_MAGIC,
    JOURNAL_GROUP_COMMIT_RECORDS_MAX,
    JOURNAL_HEADER_BYTES,
    JOURNAL_RECORD_HEADER_BYTES,
    JOURNAL_VERSION,
)
from .errors import DurabilityError, IrisrepError, JournalCorruptError, JournalPurgeError

log = logging.getLogger("irisrep.journal")

__all__ = [
    "Journal",
    "JournalFileInfo",
    "COMMIT_POINTS",
    "ROLLOVER_POINTS",
    "list_journal_files",
    "read_file_header",
    "encode_file_header",
    "create_journal_file",
    "next_file_name",
    "dump_lines",
    "verify_dir",
    "read_stream",
    "read_raw_stream",
    "stream_end",
    "epoch_runs",
    "common_prefix",
    "time_marker",
    "marker_time",
]

# The commit path's crash points in the order a group commit passes them.
COMMIT_POINTS = ("journal_before_write", "journal_after_write", "journal_after_fsync")
ROLLOVER_POINTS = ("journal_rollover_after_create",)

# magic, version, reserved, sequence, start_position, prev_end_checksum, created (ns)
_FILE_HDR = struct.Struct("<8sIIQQQQ")
_FILE_CK_OFF = JOURNAL_HEADER_BYTES - 8
_NAME_RE = re.compile(r"^(\d{8})\.(\d{3})$")
_ZERO_CHUNK_BYTES = 4 * 1024 * 1024  # preallocation writes zeros in chunks of this
_SPARE_NAME = "spare.new"
# append()/append_relaxed() keep frames in memory up to this many bytes; past it the
# appender flushes (write + fdatasync) so that memory stays bounded and the "one
# unsynced write at a time" rule still holds.
_PENDING_BYTES_MAX = 16 * 1024 * 1024
_FRAME_COUNT_OFF = 24  # u32 record count in a frame header
_FRAME_CK_OFF = 40  # u64 checksum in a frame header
_xxh3 = xxhash.xxh3_64_intdigest


def _round_up(n: int, a: int) -> int:
    return (n + a - 1) // a * a


def _resolve_codec(codec=None):
    """The frame codec: `codec` if given, else `_core` when it has the journal codec,
    else the pure-Python `journalcodec`. Its FrameError is what parse_frame raises."""
    if codec is not None:
        return codec
    from . import _core

    if hasattr(_core, "encode_frame") and hasattr(_core, "parse_frame"):
        return _core
    from . import journalcodec

    return journalcodec


def _frame_error_class(codec):
    err = getattr(codec, "FrameError", None)
    if err is None:
        from .journalcodec import FrameError as err
    return err


# --- file headers and names -------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class JournalFileInfo:
    """One journal file's header (and where it is)."""

    path: str
    name: str
    sequence: int
    start_position: int
    prev_end_checksum: int
    created: int  # unix ns
    size: int

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def encode_file_header(sequence: int, start_position: int, prev_end_checksum: int, created: int):
    """The 4096-byte header of a journal file (docs/journal-format.md, "File")."""
    buf = bytearray(JOURNAL_HEADER_BYTES)
    _FILE_HDR.pack_into(
        buf,
        0,
        JOURNAL_FILE_MAGIC,
        JOURNAL_VERSION,
        0,
        sequence,
        start_position,
        prev_end_checksum,
        created,
    )
    struct.pack_into("<Q", buf, _FILE_CK_OFF, _xxh3(memoryview(buf)[:_FILE_CK_OFF]))
    return bytes(buf)


def read_file_header(fs, path: str, raw: bytes | None = None) -> JournalFileInfo:
    """Parse and verify a journal file's header; JournalCorruptError names what fails."""
    size = fs.size(path)
    if raw is None:
        f = fs.open(path, create=False, direct="disabled")
        try:
            raw = f.pread(0, JOURNAL_HEADER_BYTES)
        finally:
            f.close()
    raw = bytes(raw[:JOURNAL_HEADER_BYTES])
    if len(raw) < JOURNAL_HEADER_BYTES:
        raise JournalCorruptError(
            f"{path}: journal file header is short (expected {JOURNAL_HEADER_BYTES} bytes, "
            f"found {len(raw)})",
            path=path,
            offset=0,
            expected=JOURNAL_HEADER_BYTES,
            found=len(raw),
        )
    (stored,) = struct.unpack_from("<Q", raw, _FILE_CK_OFF)
    actual = _xxh3(raw[:_FILE_CK_OFF])
    if stored != actual:
        raise JournalCorruptError(
            f"{path}: journal file header checksum mismatch at offset {_FILE_CK_OFF} "
            f"(expected {stored:#018x}, found {actual:#018x})",
            path=path,
            offset=_FILE_CK_OFF,
            expected=f"{stored:#018x}",
            found=f"{actual:#018x}",
        )
    magic, version, _r, seq, start, prev, created = _FILE_HDR.unpack_from(raw, 0)
    if magic != JOURNAL_FILE_MAGIC or version != JOURNAL_VERSION:
        raise JournalCorruptError(
            f"{path}: not a journal file of version {JOURNAL_VERSION} (expected magic "
            f"{JOURNAL_FILE_MAGIC!r} version {JOURNAL_VERSION}, found {magic!r} version {version})",
            path=path,
            offset=0,
            expected=(JOURNAL_FILE_MAGIC, JOURNAL_VERSION),
            found=(magic, version),
        )
    return JournalFileInfo(path, os.path.basename(path), seq, start, prev, created, size)


def list_journal_files(fs, dirpath: str) -> list[JournalFileInfo]:
    """Every `YYYYMMDD.NNN` file in `dirpath`, headers verified, in file-sequence order
    (not name order: a clock that went back must not reorder the stream). The chain is
    checked: sequences consecutive, start positions never decreasing."""
    infos = [
        read_file_header(fs, os.path.join(dirpath, n))
        for n in fs.listdir(dirpath)
        if _NAME_RE.match(n)
    ]
    infos.sort(key=lambda i: i.sequence)
    for a, b in zip(infos, infos[1:], strict=False):
        if b.sequence != a.sequence + 1 or b.start_position < a.start_position:
            raise JournalCorruptError(
                f"{b.path}: journal file chain broken after {a.name}: expected sequence "
                f"{a.sequence + 1} starting at or after position {a.start_position}, found "
                f"sequence {b.sequence} starting at {b.start_position}",
                path=b.path,
                offset=0,
                expected=a.sequence + 1,
                found=b.sequence,
            )
    return infos


def next_file_name(names, now_ns: int) -> str:
    """`YYYYMMDD.NNN` for the day of `now_ns` (UTC), NNN one more than the highest used
    that day. More than JOURNAL_FILES_PER_DAY_MAX files in a day is an error."""
    day = time.strftime("%Y%m%d", time.gmtime(now_ns / 1e9))
    used = [int(m.group(2)) for n in names if (m := _NAME_RE.match(n)) and m.group(1) == day]
    nnn = max(used, default=0) + 1
    if nnn > JOURNAL_FILES_PER_DAY_MAX:
        raise IrisrepError(
            f"journal: {day} already has {JOURNAL_FILES_PER_DAY_MAX} files "
            f"({day}.{JOURNAL_FILES_PER_DAY_MAX:03d} is the last); no name for another file "
            f"today (raise file_bytes)"
        )
    return f"{day}.{nnn:03d}"


def _preallocate(fs, path: str, size: int, direct: str):
    """Create `path` and write `size` zero bytes (real blocks, so a later commit's
    fdatasync is an overwrite that need not update metadata), then fdatasync. Returns
    the open File."""
    f = fs.open(path, create=True, direct=direct)
    try:
        f.truncate(0)
        zeros = bytes(min(_ZERO_CHUNK_BYTES, size))
        off = 0
        while off < size:
            n = min(len(zeros), size - off)
            f.pwrite(off, zeros if n == len(zeros) else zeros[:n])
            off += n
        f.fdatasync()
    except BaseException:
        f.close()
        raise
    return f


def create_journal_file(
    fs,
    dirpath: str,
    *,
    sequence: int,
    start_position: int,
    prev_end_checksum: int,
    created: int,
    size: int,
    direct: str = "optional",
    spare: str | None = None,
) -> tuple[JournalFileInfo, object]:
    """Create the next journal file and return (info, open File).

    Order (each step durable before the next): zeros written over `size` bytes and
    fdatasynced (or a `spare` file already so prepared), header written, fsync, rename
    `NAME.new` (or the spare) to NAME, which fsyncs the directory. A crash before the
    rename leaves only a `.new` file, which open removes."""
    names = fs.listdir(dirpath)
    name = next_file_name(names, created)
    final = os.path.join(dirpath, name)
    if spare is not None:
        tmp = spare
        f = fs.open(tmp, create=False, direct=direct)
    else:
        tmp = final + ".new"
        f = _preallocate(fs, tmp, size, direct)
    try:
        f.pwrite(0, encode_file_header(sequence, start_position, prev_end_checksum, created))
        f.fsync()
        fs.rename(tmp, final)
    except BaseException:
        f.close()
        raise
    info = JournalFileInfo(
        final, name, sequence, start_position, prev_end_checksum, created, f.size()
    )
    return info, f


def _read_all(f) -> bytes:
    """The whole file (reads are aligned, so this works with O_DIRECT too)."""
    size = f.size()
    out = bytearray()
    off = 0
    step = IO_CALL_BYTES_MAX // IO_ALIGN * IO_ALIGN
    while off < size:
        n = min(step, _round_up(size - off, IO_ALIGN))
        chunk = f.pread(off, n)
        if not chunk:
            break
        out += chunk
        off += len(chunk)
    return bytes(out[:size])


def _read_path(fs, path: str) -> bytes:
    f = fs.open(path, create=False, direct="disabled")
    try:
        return _read_all(f)
    finally:
        f.close()


# --- scanning frames ----------------------------------------------------------------------


@dataclasses.dataclass
class _Stop:
    """Why a scan of one file stopped."""

    reason: str  # "zero" (clean end, or the physical end of the file) or a torn-tail reason
    offset: int  # file offset of the frame that did not parse
    position: int  # stream position expected there
    detail: str
    torn_end: int  # file offset just past the last nonzero byte at or after `offset`


def _last_nonzero_end(buf: bytes, start: int) -> int:
    """Offset just past the last nonzero byte of buf[start:] (start if all zero)."""
    end = len(buf.rstrip(b"\0"))
    return max(end, start)


class _FileScan:
    """Iterate the frames of one file's buffer: (offset, position, header, raw, next).

    After iteration `stop` says why it ended, `end_offset`/`end_position` where the
    stream ends in this file and `last_checksum` the checksum of its last frame."""

    def __init__(self, codec, buf: bytes, info: JournalFileInfo, start_offset: int | None = None):
        self.codec = codec
        self.frame_error = _frame_error_class(codec)
        self.buf = buf
        self.info = info
        self.start_offset = JOURNAL_HEADER_BYTES if start_offset is None else start_offset
        self.stop: _Stop | None = None
        self.end_offset = self.start_offset
        self.end_position = self.pos_of(self.start_offset)
        self.last_checksum: int | None = None
        self.last_start: int | None = None  # stream position of the last frame
        self.frames = 0

    def pos_of(self, off: int) -> int:
        return self.info.start_position + off - JOURNAL_HEADER_BYTES

    def __iter__(self):
        buf = self.buf
        off = self.start_offset
        parse = self.codec.parse_frame
        while True:
            pos = self.pos_of(off)
            rest = buf[off : off + JOURNAL_FRAME_HEADER_BYTES]
            if rest.count(0) == len(rest):
                # All-zero header bytes (or the physical end of the file): a clean end.
                self.stop = _Stop("zero", off, pos, "zeros", _last_nonzero_end(buf, off))
                break
            try:
                header, raw, nxt = parse(buf, off, pos)
            except self.frame_error as e:
                self.stop = _Stop(
                    e.reason, off, pos, getattr(e, "detail", str(e)), _last_nonzero_end(buf, off)
                )
                break
            self.last_checksum = struct.unpack_from("<Q", buf, off + _FRAME_CK_OFF)[0]
            self.last_start = pos
            self.frames += 1
            self.end_offset = nxt
            self.end_position = self.pos_of(nxt)
            yield off, pos, header, raw, nxt
            off = nxt
        self.end_offset = off
        self.end_position = self.pos_of(off)

    def run(self) -> _FileScan:
        for _ in self:
            pass
        return self

    def later_valid_frame(self) -> tuple[int, int] | None:
        """(offset, position) of a valid frame after the stop, at any 8-byte step, whose
        position is the one its offset implies (a stale copy does not count)."""
        buf = self.buf
        off = self.stop.offset + 8
        while True:
            i = buf.find(JOURNAL_FRAME_MAGIC, off)
            if i < 0:
                return None
            if (i - JOURNAL_HEADER_BYTES) % 8 == 0:
                try:
                    self.codec.parse_frame(buf, i, self.pos_of(i))
                    return i, self.pos_of(i)
                except self.frame_error:
                    pass
            off = i + 1


_REASON_TEXT = {
    "zero": "clean end (zeros)",
    "truncated": "torn tail: the last frame is truncated (its bytes end before its length)",
    "magic": "torn tail: garbage where a frame header should start (bad frame magic)",
    "version": "torn tail: frame header with an unknown version, flags or reserved field",
    "length": "torn tail: frame header with an impossible length (zero, short or huge)",
    "checksum": "torn tail: frame checksum mismatch (a partly written frame)",
    "position": "torn tail: stale frame (a valid frame from another position left there)",
    "zstd": "torn tail: frame payload is not a valid zstd frame of its raw length",
}


def _stop_message(info: JournalFileInfo, stop: _Stop) -> str:
    what = _REASON_TEXT.get(stop.reason, f"torn tail: {stop.reason}")
    msg = (
        f"{info.path}: journal ends at file offset {stop.offset}, stream position "
        f"{stop.position}: {what}"
    )
    if stop.reason != "zero":
        msg += f" [{stop.reason}: {stop.detail}]"
        if stop.torn_end > stop.offset:
            msg += f"; nonzero bytes up to file offset {stop.torn_end}"
    return msg


def _corrupt_after(
    info: JournalFileInfo, stop: _Stop, later: tuple[int, int]
) -> JournalCorruptError:
    return JournalCorruptError(
        f"{info.path}: journal corrupt in the middle at file offset {stop.offset} (stream "
        f"position {stop.position}): expected a valid frame at position {stop.position}, "
        f"found {stop.reason} ({stop.detail}); a valid frame follows at file offset "
        f"{later[0]} (position {later[1]}), so this is not a torn tail: nothing is "
        f"truncated (restore the file or repair it from a mirror member)",
        path=info.path,
        offset=stop.offset,
        expected=f"a valid frame at position {stop.position}",
        found=f"{stop.reason}: {stop.detail}",
    )


def _check_closed_file(info: JournalFileInfo, scan: _FileScan, nxt: JournalFileInfo) -> None:
    """A file that is not the last must end cleanly exactly where the next one starts
    and the next one must name its last frame's checksum."""
    stop = scan.stop
    if stop.reason != "zero":
        raise JournalCorruptError(
            f"{info.path}: journal corrupt at file offset {stop.offset} (stream position "
            f"{stop.position}): expected a valid frame or the clean end of the file, found "
            f"{stop.reason} ({stop.detail}); a later file {nxt.name} exists, so this is not "
            f"a torn tail: nothing is truncated",
            path=info.path,
            offset=stop.offset,
            expected=f"a valid frame at position {stop.position}",
            found=f"{stop.reason}: {stop.detail}",
        )
    if scan.end_position != nxt.start_position:
        raise JournalCorruptError(
            f"{info.path}: journal file ends at stream position {scan.end_position} (file "
            f"offset {scan.end_offset}) but the next file {nxt.name} starts at "
            f"{nxt.start_position}",
            path=info.path,
            offset=scan.end_offset,
            expected=nxt.start_position,
            found=scan.end_position,
        )
    want = scan.last_checksum or 0
    if scan.frames and nxt.prev_end_checksum != want:
        raise JournalCorruptError(
            f"{nxt.path}: header names the previous file's last frame checksum "
            f"{nxt.prev_end_checksum:#018x}, but {info.name} ends with {want:#018x}",
            path=nxt.path,
            offset=0,
            expected=f"{want:#018x}",
            found=f"{nxt.prev_end_checksum:#018x}",
        )


def _count_of(buf: bytes, off: int) -> int:
    return struct.unpack_from("<I", buf, off + _FRAME_COUNT_OFF)[0]


def read_stream(
    fs,
    dirpath: str,
    from_position: int | None = None,
    *,
    to_position: int | None = None,
    codec=None,
    decode: bool = True,
) -> Iterator[tuple]:
    """(position, FrameHeader, records) for every frame from `from_position` (default:
    the first frame of the first file) to `to_position` (default: the end of the
    stream, found as on open). With decode=False the raw payload replaces records.
    Corruption in the middle raises JournalCorruptError."""
    codec = _resolve_codec(codec)
    files = list_journal_files(fs, dirpath)
    if not files:
        return
    if from_position is None:
        from_position = files[0].start_position
    if from_position < files[0].start_position:
        raise ValueError(
            f"position {from_position} is before the first journal file ({files[0].name} "
            f"starts at {files[0].start_position}; older files were purged)"
        )
    idx = max(i for i, inf in enumerate(files) if inf.start_position <= from_position)
    pos = from_position
    for k in range(idx, len(files)):
        info = files[k]
        buf = _read_path(fs, info.path)
        start_off = JOURNAL_HEADER_BYTES + pos - info.start_position
        scan = _FileScan(codec, buf, info, start_off)
        first = True
        for off, fpos, header, raw, _nxt in scan:
            first = False
            if to_position is not None and fpos >= to_position:
                return
            payload = codec.decode_records(raw, _count_of(buf, off)) if decode else raw
            yield fpos, header, payload
        stop = scan.stop
        if first and stop.reason not in ("zero",) and pos == from_position and k == idx:
            if from_position != info.start_position:
                raise ValueError(
                    f"position {from_position} is not the start of a frame in {info.name} "
                    f"({stop.reason}: {stop.detail})"
                )
        if k + 1 < len(files):
            _check_closed_file(info, scan, files[k + 1])
            pos = files[k + 1].start_position
        elif stop.reason != "zero" or stop.torn_end > stop.offset:
            later = scan.later_valid_frame()
            if later is not None:
                raise _corrupt_after(info, stop, later)


def frame_checksum_at(fs, dirpath: str, position: int, *, codec=None) -> tuple[int, int] | None:
    """Read-only: (end position, checksum) of the frame starting at `position`, or None
    when no valid frame starts there (not a boundary, purged, or past the end)."""
    try:
        data = read_raw_stream(fs, dirpath, position, position + 1, 1, codec=codec)
    except (ValueError, JournalCorruptError):
        return None
    if not data:
        return None
    return position + len(data), struct.unpack_from("<Q", data, _FRAME_CK_OFF)[0]


def epoch_runs(fs, dirpath: str, *, codec=None) -> tuple[list[tuple[int, int]], int]:
    """Read-only: the stream as runs of one epoch, [(start position, epoch), ...] in
    order, and its end position. Each frame carries the epoch of the primary that wrote
    it, and only that primary writes frames of its epoch, so two journals with a frame
    of the same epoch at the same position hold the same bytes up to there (log
    matching): comparing runs finds where two members' journals part."""
    codec = _resolve_codec(codec)
    runs: list[tuple[int, int]] = []
    end = 0
    files = list_journal_files(fs, dirpath)
    for info in files:
        scan = _FileScan(codec, _read_path(fs, info.path), info)
        for _off, pos, header, _raw, _nxt in scan:
            if not runs or runs[-1][1] != header.epoch:
                runs.append((pos, header.epoch))
        end = scan.end_position
    return runs, end


def common_prefix(
    a_runs: list[tuple[int, int]], a_end: int, b_runs: list[tuple[int, int]], b_end: int
) -> int:
    """The end of the longest stream prefix two journals share, from their epoch runs
    (`epoch_runs`): they agree while their runs start at the same positions with the
    same epochs; they part where a run's epoch or extent first differs.

    A purged journal's runs start at its first file, not at 0: before the later of
    the two first positions nothing can be compared, and a missing prefix is not a
    difference (taking it for one would cut a member's whole journal). Both are
    compared from there, each run covering it clipped to start there: the same epoch
    at the same position means the same stream up to it (log matching). When they
    hold no position in common, nothing says they differ: the shorter end."""
    if a_runs and b_runs:
        base = max(a_runs[0][0], b_runs[0][0])
        if base >= min(a_end, b_end):
            return min(a_end, b_end)
        a_runs, b_runs = _runs_from(a_runs, base), _runs_from(b_runs, base)
    n = min(len(a_runs), len(b_runs))
    for i in range(n):
        (a_start, a_epoch), (b_start, b_epoch) = a_runs[i], b_runs[i]
        if a_start != b_start:
            return min(a_start, b_start)
        if a_epoch != b_epoch:
            return a_start
        a_stop = a_runs[i + 1][0] if i + 1 < len(a_runs) else a_end
        b_stop = b_runs[i + 1][0] if i + 1 < len(b_runs) else b_end
        if a_stop != b_stop:
            return min(a_stop, b_stop)
    if len(a_runs) != len(b_runs):
        # One has more runs: the shorter one ended where the other's next run starts.
        return min(a_end, b_end)
    return min(a_end, b_end)


def _runs_from(runs: list[tuple[int, int]], base: int) -> list[tuple[int, int]]:
    """The runs at and after `base`, the one covering it starting at `base`."""
    out = []
    for i, (start, epoch) in enumerate(runs):
        if i + 1 < len(runs) and runs[i + 1][0] <= base:
            continue  # wholly before base
        out.append((max(start, base), epoch))
    return out


def stream_end(fs, dirpath: str, *, codec=None) -> int:
    """Read-only: the stream position after the last valid frame (0 with no files)."""
    codec = _resolve_codec(codec)
    files = list_journal_files(fs, dirpath)
    if not files:
        return 0
    info = files[-1]
    return _FileScan(codec, _read_path(fs, info.path), info).run().end_position


def read_raw_stream(
    fs,
    dirpath: str,
    from_position: int,
    to_position: int | None,
    max_bytes: int,
    *,
    codec=None,
) -> bytes:
    """Read-only: the journal's bytes from `from_position` (a frame start), whole
    verified frames, up to `to_position` (None: the end of the stream) and at most
    `max_bytes` (but at least one frame), exactly as written. b"" at the end. Used to
    ship frames to a member that is catching up, and by a host agent serving the
    journal tail of a member that is down (it never opens the journal for writing)."""
    codec = _resolve_codec(codec)
    files = list_journal_files(fs, dirpath)
    if not files or from_position < files[0].start_position:
        first = files[0].start_position if files else 0
        raise ValueError(
            f"position {from_position} is no longer in the journal (the first file "
            f"starts at {first}; older files were purged)"
        )
    idx = max(i for i, inf in enumerate(files) if inf.start_position <= from_position)
    out: list[bytes] = []
    size = 0
    pos = from_position
    for k in range(idx, len(files)):
        info = files[k]
        if k > idx:
            pos = info.start_position
        buf = _read_path(fs, info.path)
        scan = _FileScan(codec, buf, info, JOURNAL_HEADER_BYTES + pos - info.start_position)
        for off, fpos, _header, _raw, nxt in scan:
            if (to_position is not None and fpos >= to_position) or (
                out and size + nxt - off > max_bytes
            ):
                return b"".join(out)
            out.append(buf[off:nxt])
            size += nxt - off
        if k + 1 < len(files) and scan.end_position != files[k + 1].start_position:
            raise JournalCorruptError(
                f"{info.name} ends at position {scan.end_position} but "
                f"{files[k + 1].name} starts at {files[k + 1].start_position}"
            )
    return b"".join(out)


# --- time marks ------------------------------------------------------------------------

TIME_MARK_PREFIX = b"time="


def time_marker(ns: int) -> tuple:
    """The MARKER record that says "this frame was built at unix time `ns`"."""
    from .journalcodec import MARKER, Record

    return Record(MARKER, 0, 0, 0, b"", TIME_MARK_PREFIX + str(int(ns)).encode("ascii"), b"")


def marker_time(rec) -> int | None:
    """The unix ns of a time MARKER record, else None."""
    if rec[0] != 8 or not rec[5].startswith(TIME_MARK_PREFIX):
        return None
    digits = rec[5][len(TIME_MARK_PREFIX) :]
    return int(digits) if digits.isdigit() else None


# --- the journal ----------------------------------------------------------------------


@dataclasses.dataclass
class _Part:
    payload: bytes
    count: int


class _Req:
    """One waiter: a commit (parts) or a flush (no parts, `end` given). `wake` is held
    from creation and released once by whoever finishes it (done, error) or hands it
    the leadership, so that each group wakes exactly the threads it concerns."""

    __slots__ = ("parts", "records", "nbytes", "end", "done", "error", "wake", "lead", "gone")

    def __init__(self, parts: list[_Part], end: int | None = None) -> None:
        self.parts = parts
        self.records = sum(p.count for p in parts)
        self.nbytes = sum(len(p.payload) for p in parts)
        self.end = end  # stream position after its last frame, once assigned
        self.done = False
        self.error: BaseException | None = None
        self.wake = threading.Lock()
        self.wake.acquire()
        self.lead = False  # handed the leadership (under _cv, before `wake` is released)
        self.gone = False  # its waiter was interrupted: never hand it the leadership


class _Frame:
    __slots__ = ("position", "data", "checksum")

    def __init__(self, position: int, data: bytes) -> None:
        self.position = position
        self.data = data
        self.checksum = struct.unpack_from("<Q", data, _FRAME_CK_OFF)[0]


class Journal:
    """An instance's journal directory, open for writing. See the module doc.

    Thread-safe: commit/append/append_relaxed/flush may be called from any thread.
    Exactly one thread at a time (the group-commit leader) writes and syncs."""

    def __init__(
        self,
        fs,
        dirpath: str,
        *,
        direct: str = "optional",
        file_bytes: int = JOURNAL_FILE_BYTES,
        epoch: int = 0,
        clock=time.time_ns,
        codec=None,
        precreate: bool = True,
        flush_ms: float = JOURNAL_FLUSH_MS,
    ) -> None:
        if (
            not isinstance(file_bytes, int)
            or file_bytes % IO_ALIGN
            or file_bytes < JOURNAL_HEADER_BYTES + IO_ALIGN
        ):
            raise ValueError(
                f"file_bytes must be a multiple of {IO_ALIGN} and at least "
                f"{JOURNAL_HEADER_BYTES + IO_ALIGN}, got {file_bytes!r}"
            )
        self.fs = fs
        self.dirpath = os.fspath(dirpath)
        self.direct_mode = direct
        self.file_bytes = file_bytes
        self.epoch = epoch
        self.clock = clock
        self.codec = _resolve_codec(codec)
        self.precreate = precreate
        self.flush_ms = flush_ms
        self.failure: str | None = None
        self._closed = False

        self._mu = threading.Lock()
        self._cv = threading.Condition(self._mu)
        self._queue: list[_Req] = []
        self._leading = False
        self._pending: list[_Frame] = []
        self._pending_bytes = 0
        self.fsyncs = 0  # fdatasyncs of frames (for tests and benchmarks)
        # Called by the group leader with (position, bytes) of every write of frames,
        # just BEFORE the write and its fdatasync, so that a mirror ships the frames
        # while the local disk writes and syncs them (the commit waits for both).
        # It must not raise: a mirror's failure is the mirror's, not the journal's.
        self.on_written = None

        self._spare_lock = threading.Lock()
        self._spare_thread: threading.Thread | None = None
        self._spare_path: str | None = None
        self._spare_size = 0

        self._flush_event = threading.Event()
        self._stop_event = threading.Event()
        self._flusher: threading.Thread | None = None

        # Time marks (see _time_mark): 0 = off, as for a bare Journal; a Database turns
        # them on (JOURNAL_TIME_MARK_MS). Frames appended byte for byte carry their own.
        self.time_mark_ns = 0
        self._last_mark = 0

        self._file = None
        self._open_stream()

    # --- open: find the end of the stream ----------------------------------------------

    def _open_stream(self) -> None:
        fs = self.fs
        fs.makedirs(self.dirpath)
        for n in fs.listdir(self.dirpath):
            if n.endswith(".new"):
                # Never visible: a crash before its rename, or an unused spare.
                log.info("%s: removing leftover %s", self.dirpath, n)
                fs.remove(os.path.join(self.dirpath, n))
        files = list_journal_files(fs, self.dirpath)
        if not files:
            info, f = create_journal_file(
                fs,
                self.dirpath,
                sequence=1,
                start_position=0,
                prev_end_checksum=0,
                created=self.clock(),
                size=self.file_bytes,
                direct=self.direct_mode,
            )
            files = [info]
        else:
            f = fs.open(files[-1].path, create=False, direct=self.direct_mode)
        info = files[-1]
        try:
            pscan = None
            if len(files) > 1:
                # Only the last file may end torn (rollover seals the old file before the
                # next exists); the one before it must end cleanly where the last starts.
                prev = files[-2]
                pscan = _FileScan(self.codec, _read_path(fs, prev.path), prev).run()
                _check_closed_file(prev, pscan, info)
            buf = _read_all(f)
            scan = _FileScan(self.codec, buf, info).run()
            stop = scan.stop
            if stop.reason != "zero" or stop.torn_end > stop.offset:
                later = scan.later_valid_frame()
                if later is not None:
                    raise _corrupt_after(info, stop, later)
        except BaseException:
            f.close()
            raise
        self._file = f
        self._info = info
        self.tail_reason = stop.reason
        self.tail_message = _stop_message(info, stop)
        self.tail_offset = stop.offset
        self._last_checksum = scan.last_checksum
        if scan.last_checksum is None:
            self._last_checksum = info.prev_end_checksum
        # (start position, checksum) of the last frame of the stream, or None: what a
        # mirror copy shows its primary so that a diverged tail is caught.
        self.last_frame = None
        if scan.last_start is not None:
            self.last_frame = (scan.last_start, scan.last_checksum)
        elif pscan is not None and pscan.last_start is not None:
            self.last_frame = (pscan.last_start, pscan.last_checksum)
        end_off = scan.end_offset
        self._end = self._written = scan.end_position
        blk = end_off // IO_ALIGN * IO_ALIGN
        self._tail = buf[blk:end_off]
        if stop.reason != "zero":
            log.warning("%s", self.tail_message)
        else:
            log.info("%s", self.tail_message)
        try:
            if stop.torn_end > end_off:
                # The torn bytes go before any new frame is accepted, so that the file
                # again ends in zeros and a later scan cannot mistake them for frames.
                z_end = _round_up(max(stop.torn_end, end_off + IO_ALIGN), IO_ALIGN)
                self._write_at(end_off, b"", zero_to=z_end)
            # Whatever a killed process left in the page cache is made durable now, so
            # durable_position == end_position from the start.
            self._file.fdatasync()
            self._cur_size = max(len(buf), f.size())
        except OSError as e:
            self._fail(f"fdatasync on open failed: {e}")
            self._file.close()
            raise DurabilityError(
                f"{info.path}: could not make the journal tail durable on open: {e}"
            ) from e
        self._durable = self._end
        self.open_files = files

    # --- properties ---------------------------------------------------------------------

    @property
    def end_position(self) -> int:
        """The stream position after the last frame handed to the journal (durable or not)."""
        return self._end

    @property
    def durable_position(self) -> int:
        """Every frame before this position is durable."""
        return self._durable

    @property
    def direct(self) -> bool:
        return bool(self._file.direct)

    @property
    def current_file(self) -> JournalFileInfo:
        return self._info

    def files(self) -> list[JournalFileInfo]:
        self._check()
        return list_journal_files(self.fs, self.dirpath)

    # --- failure ------------------------------------------------------------------------

    def _check(self) -> None:
        if self.failure is not None:
            raise DurabilityError(
                f"{self.dirpath}: the journal refuses further use: {self.failure}"
            )
        if self._closed:
            raise ValueError(f"{self.dirpath}: the journal is closed")

    def _fail(self, why: str) -> None:
        if self.failure is None:
            self.failure = why
            log.error("%s: journal stopped: %s", self.dirpath, why)

    # --- encoding ---------------------------------------------------------------------

    def _parts(self, records) -> list[_Part]:
        """Encode records (in the caller's thread) into payloads that each fit a frame."""
        records = list(records)
        if not records:
            raise ValueError("no records to journal")
        try:
            sizes = [
                JOURNAL_RECORD_HEADER_BYTES + len(r[4]) + len(r[5]) + len(r[6]) for r in records
            ]
        except (TypeError, IndexError):
            self.codec.encode_records(records)  # raises the codec's precise error
            raise
        total = sum(sizes)
        if total <= JOURNAL_FRAME_BYTES_MAX and len(records) <= JOURNAL_GROUP_COMMIT_RECORDS_MAX:
            return [_Part(self.codec.encode_records(records), len(records))]
        # Too big for one frame: split at record boundaries. The frames go out in one
        # group; atomicity across them is the engine's (TSTART/TCOMMIT).
        parts: list[_Part] = []
        start, acc = 0, 0
        for i, n in enumerate(sizes):
            if n > JOURNAL_FRAME_BYTES_MAX:
                raise ValueError(
                    f"record {i} is {n} bytes encoded, more than a frame holds "
                    f"(JOURNAL_FRAME_BYTES_MAX = {JOURNAL_FRAME_BYTES_MAX})"
                )
            if i > start and (
                acc + n > JOURNAL_FRAME_BYTES_MAX or i - start >= JOURNAL_GROUP_COMMIT_RECORDS_MAX
            ):
                parts.append(_Part(self.codec.encode_records(records[start:i]), i - start))
                start, acc = i, 0
            acc += n
        parts.append(_Part(self.codec.encode_records(records[start:]), len(records) - start))
        return parts

    def _frames_for(self, reqs: list[_Req]) -> None:
        """With _mu held: pack the requests' parts into frames at the end of the stream,
        add them to the pending list and set each request's end position."""
        cur: list[_Part] = []
        cur_n = cur_b = 0
        owners: list[_Req] = []

        def close_frame() -> None:
            nonlocal cur, cur_n, cur_b, owners
            payload = cur[0].payload if len(cur) == 1 else b"".join(p.payload for p in cur)
            mark = self._time_mark(cur_n, cur_b)
            if mark:
                payload = mark + payload
                cur_n += 1
            data = self.codec.encode_frame(payload, cur_n, epoch=self.epoch, position=self._end)
            self._pending.append(_Frame(self._end, data))
            self._pending_bytes += len(data)
            self._end += len(data)
            for r in owners:
                r.end = self._end
            cur, cur_n, cur_b, owners = [], 0, 0, []

        for req in reqs:
            for p in req.parts:
                if cur and (
                    cur_n + p.count > JOURNAL_GROUP_COMMIT_RECORDS_MAX
                    or cur_b + len(p.payload) > JOURNAL_FRAME_BYTES_MAX
                ):
                    close_frame()
                cur.append(p)
                cur_n += p.count
                cur_b += len(p.payload)
            owners.append(req)
        if cur:
            close_frame()

    def _time_mark(self, count: int, nbytes: int) -> bytes:
        """With _mu held, as a frame is built: the encoded time MARKER record to put at
        its start, or b"" (marks off, the last one too recent, or no room).

        The promise `irisrep restore --until TIME` relies on: a frame that starts with
        a mark was built at the mark's time; a frame without one was built less than
        `time_mark_ns` after the last mark before it (else it would carry one). Marks
        never decrease (a clock stepped back repeats the last time)."""
        if not self.time_mark_ns:
            return b""
        now = max(self.clock(), self._last_mark)
        if now - self._last_mark < self.time_mark_ns and self._last_mark:
            return b""
        rec = time_marker(now)
        size = JOURNAL_RECORD_HEADER_BYTES + len(rec[5])
        if count >= JOURNAL_GROUP_COMMIT_RECORDS_MAX or nbytes + size > JOURNAL_FRAME_BYTES_MAX:
            return b""  # a full frame: the next one carries the mark
        self._last_mark = now
        return self.codec.encode_records([rec])

    # --- the public write calls ---------------------------------------------------------

    def append(self, records) -> tuple[int, int]:
        """Hand ONE frame of `records` to the journal: (start, end) stream positions.

        Not durable until a flush()/commit() (the frame waits in memory and goes out
        with the next group's single write; see the module doc)."""
        return self._append_req(_Req(self._parts(records)))

    def _append_req(self, req) -> tuple[int, int]:
        with self._cv:
            self._check()
            start = self._end
            self._frames_for([req])
            big = self._pending_bytes >= _PENDING_BYTES_MAX
        if big:
            self.flush(req.end)
        return start, req.end

    def append_encoded(self, parts) -> tuple[int, int]:
        """append() of records encoded already: `parts` is a list of (payload, count),
        each payload `encode_records()` bytes of `count` records that fit one frame
        (at most JOURNAL_GROUP_COMMIT_RECORDS_MAX records, JOURNAL_FRAME_BYTES_MAX
        bytes). The commit path encodes its records as they are logged."""
        for payload, count in parts:
            if not (
                0 < count <= JOURNAL_GROUP_COMMIT_RECORDS_MAX
                and 0 < len(payload) <= JOURNAL_FRAME_BYTES_MAX
            ):
                raise ValueError(f"an encoded part of {count} records, {len(payload)} bytes")
        return self._append_req(_Req([_Part(payload, count) for payload, count in parts]))

    def append_frames(self, data) -> tuple[int, int]:
        """Append frames exactly as another member's journal wrote them: (start, end).

        The mirror ships journal frames byte for byte; a backup keeps them at the
        same stream positions, so its journal is a copy of the primary's stream.
        Every frame in `data` must parse (checksum, lengths, zstd) at the next
        position of this journal, or the call raises the codec's FrameError and
        appends nothing. Nothing is re-encoded. Not durable until flush()."""
        data = bytes(data)
        if not data:
            raise ValueError("no frames to append")
        with self._cv:
            self._check()
            start = self._end
            frames = []
            off = 0
            while off < len(data):
                _header, _raw, nxt = self.codec.parse_frame(data, off, start + off)
                frames.append(_Frame(start + off, data[off:nxt]))
                off = nxt
            for f in frames:  # all verified: only now does anything change
                self._pending.append(f)
                self._pending_bytes += len(f.data)
            self._end = start + len(data)
            big = self._pending_bytes >= _PENDING_BYTES_MAX
        if big:
            self.flush(start + len(data))
        return start, start + len(data)

    def append_relaxed(self, records) -> tuple[int, int]:
        """Like append(), and a flusher thread makes it durable within flush_ms."""
        start, end = self.append(records)
        if self._flusher is None:
            with self._cv:
                if self._flusher is None and not self._closed:
                    self._flusher = threading.Thread(
                        target=self._flusher_loop, name="irisrep-journal-flusher", daemon=True
                    )
                    self._flusher.start()
        self._flush_event.set()
        return start, end

    def commit(self, records) -> int:
        """Journal `records` and return the end position once they are durable.

        Group commit: concurrent callers share one write and one fdatasync."""
        req = _Req(self._parts(records))
        self._wait(req)
        return req.end

    def flush(self, position: int | None = None) -> int:
        """Wait until the journal is durable up to `position` (default: everything
        handed to it so far); returns durable_position."""
        with self._cv:
            self._check()
            target = self._end if position is None else position
            if target > self._end:
                raise ValueError(
                    f"position {position} is past the end of the journal ({self._end})"
                )
            if self._durable >= target:
                return self._durable
        self._wait(_Req([], end=target))
        return self._durable

    def _wait(self, req: _Req) -> None:
        """Queue `req` and wait until it is durable. Whoever finds no leader leads; a
        leader whose own request is done hands the leadership to the first waiter
        (waking only it), so no thread ever polls and no group wakes everybody."""
        with self._cv:
            self._check()
            self._queue.append(req)
            lead = not self._leading
            self._leading = True
        while True:
            if not lead:
                try:
                    req.wake.acquire()
                except BaseException:
                    self._leave(req)
                    raise
                if req.error is not None:
                    raise DurabilityError(
                        f"{self.dirpath}: the journal could not make this commit "
                        f"durable: {self.failure}"
                    ) from req.error
                if req.done:
                    return
                # else the previous leader handed the leadership to us
            self._lead(req)
            if req.done:
                return
            lead = True

    def _next_leader_locked(self, me: _Req) -> _Req | None:
        """With _cv held, a leader done with its own request: the first waiter still
        waiting leads next (marked; its wake is released by the caller), or nobody
        leads (`_leading` False) when none is. A waiter interrupted in its wait
        (`gone`) is passed over: its records stay queued for the next group."""
        for r in self._queue:
            if r is not me and not r.gone:
                r.lead = True
                return r
        self._leading = False
        return None

    def _leave(self, req: _Req) -> None:
        """The waiter of `req` was interrupted (a signal in the main thread): it must
        not hold up anyone. If the leadership was handed to it, it passes it on."""
        with self._cv:
            req.gone = True
            nxt = None
            if req.lead and not req.done and req.error is None:
                req.lead = False
                nxt = self._next_leader_locked(req)
        if nxt is not None:
            nxt.wake.release()

    def _lead(self, me: _Req) -> None:
        """One group: take the waiting requests (bounded), frame them, one write of
        everything pending, one fdatasync, wake them."""
        batch: list[_Req] = []
        try:
            with self._cv:
                if self.failure is not None:
                    raise DurabilityError(f"journal stopped: {self.failure}")
                n_rec = n_bytes = 0
                q = self._queue
                k = 0
                while k < len(q):
                    r = q[k]
                    if batch and (
                        n_rec + r.records > JOURNAL_GROUP_COMMIT_RECORDS_MAX
                        or n_bytes + r.nbytes > JOURNAL_FRAME_BYTES_MAX
                    ):
                        break
                    batch.append(r)
                    n_rec += r.records
                    n_bytes += r.nbytes
                    k += 1
                del q[:k]
                self._frames_for([r for r in batch if r.parts])
                frames, self._pending, self._pending_bytes = self._pending, [], 0
            if frames or self._written > self._durable:
                self._write_and_sync(frames)
            wake = []
            with self._cv:
                for r in batch:
                    r.done = True
                    wake.append(r)
                # Flush requests still queued that this sync covered need no group.
                keep = []
                for r in self._queue:
                    if not r.parts and r.end is not None and r.end <= self._durable:
                        r.done = True
                        wake.append(r)
                    else:
                        keep.append(r)
                self._queue = keep
                if me.done:
                    nxt = self._next_leader_locked(me)
                    if nxt is not None:
                        wake.append(nxt)  # the next leader (leading stays True)
            for r in wake:
                if r is not me:
                    r.wake.release()
        except BaseException as e:
            with self._cv:
                if isinstance(e, OSError):
                    self._fail(f"{type(e).__name__}: {e}")
                else:
                    self._fail(f"the group commit was interrupted: {e!r}")
                victims = batch + self._queue
                for r in victims:
                    r.error = e
                self._queue = []
                self._leading = False
            for r in victims:
                if r is not me:
                    r.wake.release()
            if isinstance(e, OSError):
                raise DurabilityError(
                    f"{self._info.path}: journal write or fdatasync failed ({e}); the journal "
                    f"stops: nothing is retried"
                ) from e
            raise
        self._maybe_precreate()

    # --- I/O (leader only) --------------------------------------------------------------

    def _write_and_sync(self, frames: list[_Frame]) -> None:
        crashpoints.hit("journal_before_write")
        i, n = 0, len(frames)
        while i < n:
            off = JOURNAL_HEADER_BYTES + self._written - self._info.start_position
            j, nbytes = i, 0
            while j < n and off + nbytes + len(frames[j].data) <= self._cur_size:
                nbytes += len(frames[j].data)
                j += 1
            if j == i:
                self._rollover(frames[i])
                continue
            data = frames[i].data if j == i + 1 else b"".join(f.data for f in frames[i:j])
            hook = self.on_written
            if hook is not None:
                # Shipped before the local write: the mirror's round trip overlaps this
                # member's write and fdatasync (the commit waits for both). A copy may
                # so hold a frame this member then fails to write: that frame's commit
                # never returned, and the copy's extra tail is refused on reconnect.
                hook(frames[i].position, data)
                crashpoints.hit("mirror_after_ship_before_write")
            self._write_at(off, data)
            self._written += nbytes
            self._last_checksum = frames[j - 1].checksum
            self.last_frame = (frames[j - 1].position, frames[j - 1].checksum)
            i = j
        crashpoints.hit("journal_after_write")
        # The one fdatasync of the group: after it every frame before _written is
        # durable (frames in an earlier file were made durable by the rollover).
        self._file.fdatasync()
        self.fsyncs += 1
        written = self._written
        crashpoints.hit("journal_after_fsync")
        with self._cv:
            self._durable = written

    def _write_at(self, off: int, data: bytes, zero_to: int = 0) -> None:
        """Write `data` at file offset `off` (then zeros up to `zero_to`). With O_DIRECT
        the partial block before `off` (kept in memory) is rewritten with it, and the
        write is padded to whole blocks with zeros (the preallocated bytes there are
        zeros already)."""
        f = self._file
        end = off + len(data)
        if f.direct:
            blk = off // IO_ALIGN * IO_ALIGN
            assert len(self._tail) == off - blk, (len(self._tail), off, blk)
            buf = self._tail + data
            stop = max(_round_up(end, IO_ALIGN), zero_to)
            buf += bytes(stop - blk - len(buf))
            start = blk
        else:
            start = off
            buf = data + bytes(max(0, zero_to - end))
        step = IO_CALL_BYTES_MAX // IO_ALIGN * IO_ALIGN
        for k in range(0, len(buf), step):
            f.pwrite(start + k, buf[k : k + step])
        if f.direct:
            nb = end // IO_ALIGN * IO_ALIGN
            self._tail = buf[nb - start : end - start]
        else:
            self._tail = b""

    def _rollover(self, first: _Frame) -> None:
        """The next frame does not fit: seal this file (fdatasync, so only the last file
        can ever hold a torn tail), create the next one durable, switch to it."""
        self._file.fdatasync()
        need = JOURNAL_HEADER_BYTES + _round_up(len(first.data), IO_ALIGN)
        size = max(self.file_bytes, need)
        spare = self._take_spare(size)
        info, f = create_journal_file(
            self.fs,
            self.dirpath,
            sequence=self._info.sequence + 1,
            start_position=first.position,
            prev_end_checksum=self._last_checksum or 0,
            created=self.clock(),
            size=size,
            direct=self.direct_mode,
            spare=spare,
        )
        old = self._file
        self._file, self._info = f, info
        self._cur_size = f.size()
        self._tail = b""
        old.close()
        log.info(
            "%s: journal rolled over to %s at position %d", self.dirpath, info.name, first.position
        )
        crashpoints.hit("journal_rollover_after_create")

    # --- spare file (pre-created so that rollover does not stall commits) ---------------

    def _maybe_precreate(self) -> None:
        if not self.precreate or self.failure is not None or self._closed:
            return
        used = self._written - self._info.start_position
        if used * 2 < self._cur_size - JOURNAL_HEADER_BYTES:
            return
        with self._spare_lock:
            if self._spare_path is not None or self._spare_thread is not None:
                return
            t = threading.Thread(target=self._make_spare, name="irisrep-journal-spare", daemon=True)
            self._spare_thread = t
            t.start()

    def _make_spare(self) -> None:
        path = os.path.join(self.dirpath, _SPARE_NAME)
        try:
            f = _preallocate(self.fs, path, self.file_bytes, self.direct_mode)
            f.close()
        except Exception as e:  # a spare is an optimisation: rollover creates inline
            log.warning("%s: could not pre-create the next journal file: %s", self.dirpath, e)
            return
        with self._spare_lock:
            self._spare_path, self._spare_size = path, self.file_bytes

    def _take_spare(self, size: int) -> str | None:
        t = self._spare_thread
        if t is not None:
            t.join()
        with self._spare_lock:
            self._spare_thread = None
            path, self._spare_path = self._spare_path, None
            if path is not None and self._spare_size >= size:
                return path
        if path is not None:
            self.fs.remove(path)
        return None

    def wait_spare(self) -> None:
        """Wait for a background spare creation (tests)."""
        t = self._spare_thread
        if t is not None:
            t.join()

    # --- relaxed flusher ----------------------------------------------------------------

    def _flusher_loop(self) -> None:
        while not self._stop_event.is_set():
            self._flush_event.wait()
            if self._stop_event.is_set():
                return
            # Gather for half the window, then one flush makes everything durable.
            self._stop_event.wait(self.flush_ms / 2000.0)
            self._flush_event.clear()
            try:
                self.flush()
            except (DurabilityError, ValueError):
                return

    # --- reading, purging, verifying ----------------------------------------------------

    def read(self, from_position: int | None = None) -> Iterator[tuple]:
        """(position, FrameHeader, records) of every durable frame from `from_position`
        (default: the first frame kept), across files, in order."""
        self._check()
        return read_stream(
            self.fs,
            self.dirpath,
            from_position,
            to_position=self._durable,
            codec=self.codec,
        )

    @property
    def written_position(self) -> int:
        """Every frame before this position is written to the file (maybe not synced)."""
        return self._written

    def read_raw(self, from_position: int, to_position: int, max_bytes: int) -> bytes:
        """The stream's bytes from `from_position` (a frame start) to at most
        `to_position`, whole frames only, at most `max_bytes` (but at least one frame),
        exactly as written: what a mirror primary sends a member that is catching up.
        Every frame is verified on the way. b"" when there is nothing yet."""
        self._check()
        return read_raw_stream(
            self.fs, self.dirpath, from_position, to_position, max_bytes, codec=self.codec
        )

    def purge(self, keep_from_position: int, older_than_days: float, now: int | None = None):
        """Remove whole files that end at or before `keep_from_position` and were
        created more than `older_than_days` ago (`now` in the clock's ns). Only a
        prefix of the chain goes, never the current file. Returns removed names."""
        self._check()
        now = self.clock() if now is None else now
        limit = now - int(older_than_days * 86400 * 1e9)
        files = list_journal_files(self.fs, self.dirpath)
        removed = []
        for a, b in zip(files, files[1:], strict=False):
            if a.path == self._info.path or b.start_position > keep_from_position:
                break
            if a.created > limit:
                break
            self.fs.remove(a.path)
            removed.append(a.name)
            log.info(
                "%s: purged journal file %s (ends at %d)", self.dirpath, a.name, b.start_position
            )
        return removed

    def remove_files(self, names) -> list[str]:
        """Remove the named files (a purge decided on them: purge.decide_purge). They
        must be the oldest files of the chain, in order, and not the current one;
        otherwise JournalPurgeError and nothing is removed (the chain changed since
        the decision, or the decision was wrong).

        Oldest first, each removal durable (the directory fsynced) before the next:
        a crash leaves the chain whole, only a shorter prefix of it gone, so the next
        open finds consecutive files."""
        self._check()
        names = list(names)
        files = list_journal_files(self.fs, self.dirpath)
        head = files[: len(names)]
        if (
            [f.name for f in head] != names
            or len(head) >= len(files)
            or any(f.path == self._info.path for f in head)
        ):
            raise JournalPurgeError(
                f"{self.dirpath}: {', '.join(names)} are not the oldest files of the chain "
                f"({', '.join(f.name for f in files[: len(names) + 1])}...): nothing removed"
            )
        for f in head:
            self.fs.remove(f.path)
            log.info(
                "%s: purged journal file %s (started at %d)", self.dirpath, f.name, f.start_position
            )
        return names

    def verify(self) -> dict:
        """verify_dir() of this journal (frames durable so far)."""
        self._check()
        return verify_dir(self.dirpath, fs=self.fs, codec=self.codec)

    def truncate(self, position: int) -> int:
        """Cut the stream back to `position` (a frame boundary at or before the durable
        end): a mirror copy dropping a tail the primary never had (never on a primary:
        its stream is what it acknowledged). Later files are removed (newest first, the
        directory fsynced), the containing file is zeroed from `position` and
        fdatasynced, then the stream is found again as on open. Returns the new end.

        Crash-safe in every step: a crash leaves a shorter stream ending in zeros, or
        the old one; the caller has already made its database reflect `position`."""
        with self._cv:
            self._check()
            if self._leading or self._queue or self._pending:
                raise ValueError("truncate: the journal is busy")
            if not 0 <= position <= self._durable:
                raise ValueError(f"truncate to {position}: only 0..{self._durable} is durable here")
            if position == self._end:
                return position
            files = list_journal_files(self.fs, self.dirpath)
            keep = [f for f in files if f.start_position <= position]
            if not keep:
                raise ValueError(f"truncate to {position}: before the first journal file")
            info = keep[-1]
            buf = _read_path(self.fs, info.path)
            # `position` must be where a frame starts (or the end of the stream).
            scan = _FileScan(self.codec, buf, info)
            starts = {fpos for _o, fpos, _h, _r, _n in scan} | {scan.end_position}
            if position not in starts:
                raise ValueError(f"truncate to {position}: not a frame boundary in {info.name}")
            t = self._spare_thread
            if t is not None:
                t.join()  # the spare (a .new file) is removed by the re-open below
            with self._spare_lock:
                self._spare_thread = self._spare_path = None
            self._file.close()
            self._file = None
            for f in reversed(files):
                if f.start_position > position:
                    self.fs.remove(f.path)
            self.fs.fsync_dir(self.dirpath)
            off = JOURNAL_HEADER_BYTES + position - info.start_position
            end = len(buf.rstrip(b"\0"))
            if end > off:
                blk = off // IO_ALIGN * IO_ALIGN
                stop = _round_up(end, IO_ALIGN)
                data = buf[blk:off] + bytes(stop - off)
                f = self.fs.open(info.path, create=False, direct=self.direct_mode)
                try:
                    f.pwrite(blk, data)
                    f.fdatasync()
                finally:
                    f.close()
            log.warning("%s: journal truncated to position %d", self.dirpath, position)
            self._open_stream()
            return self._end

    def close(self) -> None:
        """Make pending frames durable (unless failed), stop the threads, close."""
        if self._closed:
            return
        try:
            if self.failure is None and self._end > self._durable:
                self.flush()
        finally:
            self._closed = True
            self._stop_event.set()
            self._flush_event.set()
            if self._flusher is not None and self._flusher is not threading.current_thread():
                self._flusher.join()
            t = self._spare_thread
            if t is not None:
                t.join()
            if self._file is not None:
                self._file.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"<Journal {self.dirpath!r} end={self._end} durable={self._durable} "
            f"file={self._info.name}{' FAILED' if self.failure else ''}>"
        )


# --- tools (irisrep journal dump / verify) ---------------------------------------------

_TYPE_NAMES = {
    1: "SET",
    2: "KILL",
    3: "ZKILL",
    4: "INCREMENT",
    5: "TSTART",
    6: "TCOMMIT",
    7: "TROLLBACK",
    8: "MARKER",
}


def _short(b: bytes, n: int = 48) -> str:
    h = b[:n].hex()
    return h + ("…" if len(b) > n else "")


def dump_lines(
    path: str,
    from_position: int | None = None,
    count: int | None = None,
    *,
    fs=None,
    codec=None,
) -> list[str]:
    """Printable lines for `irisrep journal dump FILE [--from POS --count N]`."""
    from .fileio import default_fs

    fs = fs if fs is not None else default_fs()
    codec = _resolve_codec(codec)
    path = os.fspath(path)
    buf = _read_path(fs, path)
    info = read_file_header(fs, path, buf[:JOURNAL_HEADER_BYTES])
    created = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(info.created / 1e9))
    lines = [
        f"file {info.name}: sequence {info.sequence}, start position {info.start_position}, "
        f"prev end checksum {info.prev_end_checksum:#018x}, created {created} UTC, "
        f"{info.size} bytes"
    ]
    start_off = None
    if from_position is not None:
        start_off = JOURNAL_HEADER_BYTES + from_position - info.start_position
        if start_off < JOURNAL_HEADER_BYTES or start_off > len(buf):
            raise ValueError(f"position {from_position} is not in {info.name}")
    scan = _FileScan(codec, buf, info, start_off)
    shown = 0
    for off, pos, h, raw, nxt in scan:
        if count is not None and shown >= count:
            break
        shown += 1
        n = _count_of(buf, off)
        zstd = " zstd" if h.flags & 1 else ""
        lines.append(
            f"frame @{pos} (offset {off}, {nxt - off} bytes): {n} records, epoch {h.epoch}, "
            f"raw {h.raw_len} stored {h.stored_len}{zstd}, checksum {h.checksum:#018x}"
        )
        try:
            recs = codec.decode_records(raw, n)
        except JournalCorruptError as e:
            lines.append(f"  undecodable payload: {e}")
            continue
        for r in recs:
            t = _TYPE_NAMES.get(r.type, str(r.type))
            lines.append(
                f"  {t:<9} flags={r.flags} db={r.db_id} txn={r.txn} key={_short(r.key)} "
                f"value={len(r.value)}B {_short(r.value, 24)} before={len(r.before)}B"
            )
    if count is None or shown < count:
        lines.append(_stop_message(info, scan.stop))
    return lines


def verify_dir(dirpath: str, *, fs=None, codec=None, progress=None) -> dict:
    """Read every frame of every file and report (`irisrep journal verify DIR`):
    {"ok", "files": [...], "frames", "records", "end_position", "end_reason",
     "end_message", "first_problem"}. Never writes. `progress(done_bytes,
    total_bytes)` is called after each file (for a progress bar)."""
    from .fileio import default_fs

    fs = fs if fs is not None else default_fs()
    codec = _resolve_codec(codec)
    dirpath = os.fspath(dirpath)
    report: dict = {
        "dir": dirpath,
        "ok": True,
        "files": [],
        "frames": 0,
        "records": 0,
        "start_position": None,
        "end_position": None,
        "end_reason": None,
        "end_message": None,
        "first_problem": None,
    }
    try:
        files = list_journal_files(fs, dirpath)
        if files:
            report["start_position"] = files[0].start_position
        total_bytes = sum(fs.size(f.path) for f in files) if progress else 0
        done_bytes = 0
        for k, info in enumerate(files):
            buf = _read_path(fs, info.path)
            done_bytes += len(buf)
            scan = _FileScan(codec, buf, info)
            entry = {
                "name": info.name,
                "sequence": info.sequence,
                "start_position": info.start_position,
                "frames": 0,
                "records": 0,
            }
            report["files"].append(entry)
            for off, _pos, _h, raw, _nxt in scan:
                n = _count_of(buf, off)
                codec.decode_records(raw, n)
                entry["frames"] += 1
                entry["records"] += n
            entry["end_position"] = scan.end_position
            report["frames"] += entry["frames"]
            report["records"] += entry["records"]
            if progress is not None:
                progress(done_bytes, max(total_bytes, done_bytes))
            if k + 1 < len(files):
                _check_closed_file(info, scan, files[k + 1])
            else:
                stop = scan.stop
                if stop.reason != "zero" or stop.torn_end > stop.offset:
                    later = scan.later_valid_frame()
                    if later is not None:
                        raise _corrupt_after(info, stop, later)
                report["end_position"] = scan.end_position
                report["end_reason"] = stop.reason
                report["end_message"] = _stop_message(info, stop)
    except JournalCorruptError as e:
        report["ok"] = False
        report["first_problem"] = str(e)
    return report
