"""SimFS: a seeded, in-memory simulated disk for crash and fault tests.

Owns: `SimFS` (an `irisrep.fileio.FS`) and its files. Every crash test of the
storage engine runs the engine on a SimFS, then calls `crash()` and reopens the
engine on the disk that survived.

The model (exact, so that tests can assert on it):
- Per file: the *durable* image, plus the list of writes and truncates since that
  file's last successful fsync/fdatasync (the *pending* list). Reads see the latest
  (volatile) state. fsync/fdatasync apply the pending list to the durable image.
- Names: creates, renames, removes and mkdirs are volatile until `fsync_dir` of the
  directory that holds the new name (for a rename: the destination directory). A
  rename is one atomic operation: a crash leaves the old name or the new one, never
  neither. (`FS.open/rename/remove/makedirs` already fsync the directory, so names
  only go missing when that fsync fails or a test calls the `_` primitives.)
- A failed fsync/fdatasync behaves like Linux ("fsyncgate"): the pending writes stay
  visible to reads but are dropped from the pending list, so no later fsync can
  make them durable. Retrying an fsync is therefore never a fix.
- `crash(mode)` is power loss: it returns a new SimFS holding what survived and
  makes this one and all its open files unusable (OSError EBADF).
  `snapshot()` is a process kill: a deep copy, nothing lost, pending still pending.
- Determinism: all randomness comes from `random.Random(seed)` or the `rng` passed
  to `crash`; the same calls with the same seed give the same disk.
- Fault injection: `fail_next(op, ...)` and `disk_full_after_bytes(n)`; faults and
  the `calls` counter belong to one SimFS and are not carried into crash/snapshot.
"""

from __future__ import annotations

import collections
import copy
import errno as errno_mod
import os
import posixpath
import random
import threading

from .constants import IO_ALIGN
from .errors import ConfigError
from .fileio import FS, IO_CALL_BYTES_MAX, File, log

__all__ = ["SimFS", "SimFile", "CRASH_MODES", "FAULT_OPS"]

CRASH_MODES = ("drop", "keep_all", "subset", "reorder", "torn")
FAULT_OPS = (
    "open",
    "pread",
    "pwrite",
    "fsync",
    "fdatasync",
    "truncate",
    "rename",
    "remove",
    "mkdir",
    "fsync_dir",
)


class _Inode:
    """One file's contents: `data` is what reads see, `durable` what survives a
    power loss before `pending` (list of (seq, "w", offset, bytes) or
    (seq, "t", size, None)) is applied."""

    __slots__ = ("data", "durable", "pending")

    def __init__(self, data: bytes = b"") -> None:
        self.data = bytearray(data)
        self.durable = bytearray(data)
        self.pending: list[tuple] = []


def _apply(buf: bytearray, kind: str, arg: int, payload: bytes | None) -> None:
    if kind == "w":
        end = arg + len(payload)
        if end > len(buf):
            buf.extend(bytes(end - len(buf)))  # a write past the end leaves a hole of zeros
        buf[arg:end] = payload
    else:  # "t"
        if arg < len(buf):
            del buf[arg:]
        else:
            buf.extend(bytes(arg - len(buf)))


def _norm(path) -> str:
    # One spelling per name: absolute, no "..", no trailing slash; relative paths
    # are taken from "/".
    return posixpath.normpath(posixpath.join("/", os.fspath(path)))


def _parent_n(npath: str) -> str:
    return posixpath.dirname(npath) or "/"


def _ebadf(what: str) -> OSError:
    return OSError(errno_mod.EBADF, os.strerror(errno_mod.EBADF), what)


class SimFile(File):
    """An open file on a SimFS. Same contract as `_core.DirectFile`."""

    def __init__(self, fs: SimFS, inode: _Inode, path: str, direct: bool) -> None:
        self._fs = fs
        self._inode = inode
        self.path = path
        self.direct = direct
        self._closed = False

    def __repr__(self) -> str:
        return f"<SimFile {self.path!r} direct={self.direct}{' closed' if self._closed else ''}>"

    def _enter(self, op: str) -> None:
        # Count first, so tests see every attempt, failed or not.
        self._fs.calls[op] += 1
        if self._closed or self._fs._crashed:
            raise _ebadf(self.path)

    def _check_args(self, offset: int, length: int) -> None:
        if offset < 0 or length < 0:
            raise ValueError(
                f"{self.path}: offset {offset} and length {length} must not be negative"
            )
        if length > IO_CALL_BYTES_MAX:
            raise ValueError(
                f"{self.path}: length {length} is over the per-call limit of "
                f"{IO_CALL_BYTES_MAX} bytes"
            )
        if self.direct and (offset % IO_ALIGN or length % IO_ALIGN):
            raise ValueError(
                f"{self.path}: O_DIRECT needs offset and length aligned to {IO_ALIGN} bytes; "
                f"got offset {offset}, length {length}"
            )

    def pread(self, offset: int, length: int) -> bytes:
        with self._fs._lock:
            self._enter("pread")
            self._check_args(offset, length)
            self._fs._fault("pread", self.path)
            return bytes(self._inode.data[offset : offset + length])

    def pwrite(self, offset: int, data) -> None:
        payload = memoryview(data).cast("B").tobytes()  # rejects int and str
        with self._fs._lock:
            self._enter("pwrite")
            self._check_args(offset, len(payload))
            self._fs._fault("pwrite", self.path)
            if not payload:
                return
            ino = self._inode
            growth = offset + len(payload) - len(ino.data)
            self._fs._take_space(growth, self.path)
            _apply(ino.data, "w", offset, payload)
            ino.pending.append((self._fs._next_seq(), "w", offset, payload))

    def _sync(self, op: str) -> None:
        with self._fs._lock:
            self._enter(op)
            ino = self._inode
            try:
                self._fs._fault(op, self.path)
            except OSError:
                # fsyncgate: the kernel marks the pages clean after a failed
                # writeback; they will never be written, whatever we do next.
                ino.pending.clear()
                raise
            for _seq, kind, arg, payload in ino.pending:
                _apply(ino.durable, kind, arg, payload)
            ino.pending.clear()

    def fsync(self) -> None:
        self._sync("fsync")

    def fdatasync(self) -> None:
        # The size is part of what fdatasync makes durable, so the model is the same.
        self._sync("fdatasync")

    def truncate(self, size: int) -> None:
        with self._fs._lock:
            self._enter("truncate")
            if size < 0:
                raise ValueError(f"{self.path}: truncate size {size} must not be negative")
            self._fs._fault("truncate", self.path)
            _apply(self._inode.data, "t", size, None)
            self._inode.pending.append((self._fs._next_seq(), "t", size, None))

    def size(self) -> int:
        with self._fs._lock:
            self._enter("fsize")
            return len(self._inode.data)

    def close(self) -> None:
        # Idempotent, and allowed after a crash (cleanup code must not fail twice).
        self._fs.calls["close"] += 1
        self._closed = True


class SimFS(FS):
    """A simulated disk in memory; see the module doc for the model.

    `SimFS(seed=0, direct_supported=True)`: with `direct_supported=False` it plays a
    file system that refuses O_DIRECT (tmpfs), for testing the fallback policy.
    `calls` counts every operation by name (the FAULT_OPS names plus "close",
    "fsize" for File.size, "size", "exists", "listdir").
    """

    def __init__(self, seed: int = 0, *, direct_supported: bool = True) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.direct_supported = direct_supported
        self.calls: collections.Counter[str] = collections.Counter()
        self._lock = threading.RLock()
        self._crashed = False
        self._seq = 0
        # Volatile namespace (what lookups see) and durable namespace (what a power
        # loss leaves before pending directory operations are applied).
        self._names: dict[str, _Inode] = {}
        self._dirs: set[str] = {"/"}
        self._dnames: dict[str, _Inode] = {}
        self._ddirs: set[str] = {"/"}
        # (seq, home directory, kind, args): kind "create" (path, inode),
        # "remove" (path, inode), "rename" (src, dst, inode), "mkdir" (path,).
        self._dir_pending: list[tuple] = []
        self._faults: list[list] = []  # [op, after, errno, normalized path or None]
        self._space_left: int | None = None
        self._warned: set[str] = set()

    # --- bookkeeping ------------------------------------------------------------------

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _enter(self, op: str, path: str = "") -> None:
        self.calls[op] += 1
        if self._crashed:
            raise _ebadf(path or "SimFS (crashed)")

    def _fault(self, op: str, path: str) -> None:
        npath = _norm(path) if path else None
        fire = None
        for f in self._faults:
            if f[0] != op or (f[3] is not None and f[3] != npath):
                continue
            if f[1] == 0 and fire is None:
                fire = f
            elif f[1] > 0:
                f[1] -= 1
        if fire is not None:
            self._faults.remove(fire)
            raise OSError(fire[2], os.strerror(fire[2]), path)

    def _take_space(self, growth: int, path: str) -> None:
        if growth <= 0 or self._space_left is None:
            return
        if growth > self._space_left:
            raise OSError(errno_mod.ENOSPC, os.strerror(errno_mod.ENOSPC), path)
        self._space_left -= growth

    # --- fault injection ----------------------------------------------------------------

    def fail_next(
        self, op: str, errno: int = errno_mod.EIO, after: int = 0, path: str | None = None
    ) -> None:
        """Make the (after+1)-th next call of `op` (on `path`, if given) raise
        OSError(errno). One-shot; several may be armed at once. A failed call changes
        nothing, except a failed fsync/fdatasync, which loses the pending writes'
        chance of ever becoming durable (see the module doc)."""
        if op not in FAULT_OPS:
            raise ValueError(f"unknown op {op!r}; fault ops are {', '.join(FAULT_OPS)}")
        if after < 0:
            raise ValueError(f"after must be >= 0, got {after}")
        with self._lock:
            self._faults.append([op, after, errno, None if path is None else _norm(path)])

    def clear_faults(self) -> None:
        """Disarm every fail_next and the disk-full limit."""
        with self._lock:
            self._faults.clear()
            self._space_left = None

    def disk_full_after_bytes(self, n: int | None) -> None:
        """From now on, a pwrite that would grow the files by more than what is left
        of `n` bytes raises OSError(ENOSPC) and writes nothing. Overwrites inside a
        file never fail; truncate does not count. `None`: space returns."""
        if n is not None and n < 0:
            raise ValueError(f"n must be >= 0 or None, got {n}")
        with self._lock:
            self._space_left = n

    # --- FS primitives ----------------------------------------------------------------------

    def _open(self, path: str, create: bool, direct: str) -> tuple[File, bool]:
        with self._lock:
            self._enter("open", path)
            np = _norm(path)
            use_direct = direct != "disabled" and self.direct_supported
            if direct == "required" and not self.direct_supported:
                raise ConfigError(
                    f"direct_io='required' but the file system of {_parent_n(np)!r} "
                    f"refuses O_DIRECT (simulated)"
                )
            if direct == "optional" and not self.direct_supported:
                d = _parent_n(np)
                if d not in self._warned:
                    self._warned.add(d)
                    log.warning(
                        "O_DIRECT refused in %s (simulated); direct_io='optional' falls "
                        "back to buffered I/O",
                        d,
                    )
            self._fault("open", path)
            if np in self._dirs:
                raise IsADirectoryError(errno_mod.EISDIR, os.strerror(errno_mod.EISDIR), path)
            ino = self._names.get(np)
            created = False
            if ino is None:
                if not create:
                    raise FileNotFoundError(errno_mod.ENOENT, os.strerror(errno_mod.ENOENT), path)
                self._need_dir(_parent_n(np), path)
                ino = _Inode()
                self._names[np] = ino
                self._dir_pending.append((self._next_seq(), _parent_n(np), "create", (np, ino)))
                created = True
            return SimFile(self, ino, os.fspath(path), use_direct), created

    def _need_dir(self, nd: str, path: str) -> None:
        if nd not in self._dirs:
            code = errno_mod.ENOTDIR if nd in self._names else errno_mod.ENOENT
            raise OSError(code, os.strerror(code), path)

    def _rename(self, src: str, dst: str) -> None:
        with self._lock:
            self._enter("rename", src)
            ns, nd = _norm(src), _norm(dst)
            self._fault("rename", src)
            ino = self._names.get(ns)
            if ino is None:
                if ns in self._dirs:
                    raise IsADirectoryError(errno_mod.EISDIR, "SimFS renames files only", src)
                raise FileNotFoundError(errno_mod.ENOENT, os.strerror(errno_mod.ENOENT), src)
            if nd in self._dirs:
                raise IsADirectoryError(errno_mod.EISDIR, os.strerror(errno_mod.EISDIR), dst)
            self._need_dir(_parent_n(nd), dst)
            if ns == nd:
                return
            self._names[nd] = ino
            del self._names[ns]
            self._dir_pending.append((self._next_seq(), _parent_n(nd), "rename", (ns, nd, ino)))

    def _remove(self, path: str) -> None:
        with self._lock:
            self._enter("remove", path)
            np = _norm(path)
            self._fault("remove", path)
            if np in self._dirs:
                raise IsADirectoryError(errno_mod.EISDIR, os.strerror(errno_mod.EISDIR), path)
            ino = self._names.pop(np, None)
            if ino is None:
                raise FileNotFoundError(errno_mod.ENOENT, os.strerror(errno_mod.ENOENT), path)
            self._dir_pending.append((self._next_seq(), _parent_n(np), "remove", (np, ino)))

    def _mkdir(self, path: str) -> None:
        with self._lock:
            self._enter("mkdir", path)
            np = _norm(path)
            self._fault("mkdir", path)
            if np in self._dirs or np in self._names:
                raise FileExistsError(errno_mod.EEXIST, os.strerror(errno_mod.EEXIST), path)
            self._need_dir(_parent_n(np), path)
            self._dirs.add(np)
            self._dir_pending.append((self._next_seq(), _parent_n(np), "mkdir", (np,)))

    def exists(self, path: str) -> bool:
        with self._lock:
            self._enter("exists", path)
            np = _norm(path)
            return np in self._names or np in self._dirs

    def size(self, path: str) -> int:
        with self._lock:
            self._enter("size", path)
            np = _norm(path)
            ino = self._names.get(np)
            if ino is not None:
                return len(ino.data)
            if np in self._dirs:
                return 0
            raise FileNotFoundError(errno_mod.ENOENT, os.strerror(errno_mod.ENOENT), path)

    def listdir(self, path: str) -> list[str]:
        with self._lock:
            self._enter("listdir", path)
            np = _norm(path)
            self._need_dir(np, path)
            out = [posixpath.basename(p) for p in self._names if _parent_n(p) == np]
            out += [posixpath.basename(d) for d in self._dirs if d != "/" and _parent_n(d) == np]
            return sorted(out)

    def fsync_dir(self, path: str) -> None:
        with self._lock:
            self._enter("fsync_dir", path)
            np = _norm(path)
            self._need_dir(np, path)
            self._fault("fsync_dir", path)
            keep = []
            for op in self._dir_pending:
                if op[1] == np:
                    _apply_dir(self._dnames, self._ddirs, op[2], op[3])
                else:
                    keep.append(op)
            self._dir_pending = keep

    # --- inspection -------------------------------------------------------------------------

    def pending_count(self) -> int:
        """Unsynced operations (file writes/truncates and directory operations)."""
        with self._lock:
            return len(self._dir_pending) + sum(len(i.pending) for i in self._all_inodes())

    def _all_inodes(self) -> list[_Inode]:
        seen: dict[int, _Inode] = {}
        for ino in list(self._names.values()) + list(self._dnames.values()):
            seen[id(ino)] = ino
        for op in self._dir_pending:
            for a in op[3]:
                if isinstance(a, _Inode):
                    seen[id(a)] = a
        return list(seen.values())

    # --- process kill and power loss -------------------------------------------------------

    def snapshot(self) -> SimFS:
        """A deep copy of the whole disk, volatile state and pending lists included:
        what a new process sees after this one is killed (nothing lost). This SimFS
        and its files stay usable. Faults, disk-full and `calls` start fresh."""
        with self._lock:
            if self._crashed:
                raise _ebadf("SimFS (crashed)")
            new = SimFS(self.rng.getrandbits(64), direct_supported=self.direct_supported)
            # One deepcopy over everything keeps shared inodes shared.
            state = (self._names, self._dirs, self._dnames, self._ddirs, self._dir_pending)
            (new._names, new._dirs, new._dnames, new._ddirs, new._dir_pending) = copy.deepcopy(
                state
            )
            new._seq = self._seq
            return new

    def crash(
        self,
        mode: str = "drop",
        rng: random.Random | None = None,
        torn_bytes: int | None = None,
    ) -> SimFS:
        """Power loss. Returns a new SimFS with only what survived; this SimFS and every
        File opened on it raise OSError(EBADF) from now on.

        Unsynced operations (file writes and truncates, and directory operations) are:
        - "drop":     all lost;
        - "keep_all": all kept, in order;
        - "subset":   each kept or lost at random (p = 1/2), kept ones in order;
        - "reorder":  a random subset, applied in a random order;
        - "torn":     all kept except the last pwrite (across all files), of which
          only the first `torn_bytes` bytes land (random 0..len if None; 0 = lost).
        A file whose name did not survive is gone, as is one whose directory did not.
        """
        if mode not in CRASH_MODES:
            raise ValueError(f"unknown crash mode {mode!r}; modes are {', '.join(CRASH_MODES)}")
        if torn_bytes is not None and (mode != "torn" or torn_bytes < 0):
            raise ValueError(f"torn_bytes={torn_bytes} needs mode 'torn' and a value >= 0")
        with self._lock:
            if self._crashed:
                raise _ebadf("SimFS (crashed)")
            rng = rng if rng is not None else self.rng
            inodes = self._all_inodes()
            # Every unsynced operation, in the order it was issued.
            ops: list[tuple] = [(op[0], "dir", None, op) for op in self._dir_pending]
            for ino in inodes:
                ops += [(p[0], "data", ino, p) for p in ino.pending]
            ops.sort(key=lambda o: o[0])

            if mode == "drop":
                kept = []
            elif mode == "keep_all":
                kept = ops
            elif mode in ("subset", "reorder"):
                kept = [o for o in ops if rng.random() < 0.5]
                if mode == "reorder":
                    rng.shuffle(kept)
            else:  # torn
                kept = list(ops)
                writes = [i for i, o in enumerate(kept) if o[1] == "data" and o[3][1] == "w"]
                if writes:
                    i = writes[-1]
                    seq, _, ino, (_s, _k, off, payload) = kept[i]
                    n = rng.randint(0, len(payload)) if torn_bytes is None else torn_bytes
                    n = min(n, len(payload))
                    if n == 0:
                        del kept[i]
                    else:
                        kept[i] = (seq, "data", ino, (seq, "w", off, payload[:n]))

            # Build the survivor: durable images and names, then the kept operations.
            fresh = {id(ino): _Inode(bytes(ino.durable)) for ino in inodes}
            names = {p: fresh[id(ino)] for p, ino in self._dnames.items()}
            dirs = set(self._ddirs)
            for _seq, kind, ino, op in kept:
                if kind == "data":
                    _apply(fresh[id(ino)].data, op[1], op[2], op[3])
                else:
                    args = tuple(fresh[id(a)] if isinstance(a, _Inode) else a for a in op[3])
                    _apply_dir(names, dirs, op[2], args)

            # A name survives only if its directory chain does.
            def reachable(p: str) -> bool:
                while p != "/":
                    p = _parent_n(p)
                    if p not in dirs:
                        return False
                return True

            new = SimFS(rng.getrandbits(64), direct_supported=self.direct_supported)
            new._dirs = {d for d in dirs if reachable(d)}
            new._names = {p: i for p, i in names.items() if reachable(p)}
            for ino in new._names.values():
                ino.durable = bytearray(ino.data)
            new._dnames = dict(new._names)
            new._ddirs = set(new._dirs)
            new._seq = self._seq
            self._crashed = True
            return new


def _apply_dir(names: dict, dirs: set, kind: str, args: tuple) -> None:
    if kind == "create":
        path, ino = args
        names[path] = ino
    elif kind == "remove":
        # Only the file that was removed: a reordered crash must not delete a
        # different file that later took the same name.
        path, ino = args
        if names.get(path) is ino:
            del names[path]
    elif kind == "rename":
        src, dst, ino = args
        names[dst] = ino
        if names.get(src) is ino:
            del names[src]
    else:  # mkdir
        dirs.add(args[0])
