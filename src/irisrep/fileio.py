"""The file-system seam: every irisrep file access goes through an `FS`.

Owns: the `FS` / `File` interface, `RealFS` (the operating system, through
`_core.DirectFile`), the O_DIRECT policy (`direct="required" | "optional" |
"disabled"`), and `default_fs()`.

Promises, for every `FS` (the real one and `irisrep.simdisk.SimFS` alike):
- names are durable when the call returns: `open(create=True)` of a new file,
  `rename`, `remove` and `makedirs` each end with an fsync of the directory (or
  directories) they changed. File *contents* are durable only after
  `File.fsync()` / `File.fdatasync()`; that stays the caller's job.
- errors from the operating system stay `OSError`; a bad `direct` setting, or
  `direct="required"` where the file system refuses O_DIRECT, is `ConfigError`.
- `File` has the `_core.DirectFile` surface: pread (short at end of file), pwrite,
  fsync, fdatasync, truncate, size, close (idempotent); `path` and `direct`.
  With `direct` true, offsets and lengths must be multiples of IO_ALIGN.

The durability rule lives in the `FS` base class (`open`, `rename`, `remove`,
`makedirs` are template methods over `_open` / `_rename` / `_remove` / `_mkdir`),
so the simulated disk obeys exactly the rule the real one does.
"""

from __future__ import annotations

import abc
import errno
import logging
import os
import threading

from . import _core
from .constants import DIRECT_IO_DEFAULT, DIRECT_IO_MODES, IO_ALIGN, IO_CALL_BYTES_MAX
from .errors import ConfigError

log = logging.getLogger("irisrep.fileio")

__all__ = [
    "FS",
    "File",
    "RealFS",
    "default_fs",
    "check_direct_mode",
    "IO_ALIGN",
    "IO_CALL_BYTES_MAX",
]


def check_direct_mode(direct: object) -> str:
    """Return `direct` if it is one of DIRECT_IO_MODES, else raise ConfigError."""
    if direct not in DIRECT_IO_MODES:
        allowed = ", ".join(repr(m) for m in DIRECT_IO_MODES)
        raise ConfigError(f"direct_io={direct!r} is not allowed; use one of {allowed}")
    return direct  # type: ignore[return-value]


class File(abc.ABC):
    """An open file: positioned I/O and explicit durability. See the module doc."""

    path: str
    direct: bool

    @abc.abstractmethod
    def pread(self, offset: int, length: int) -> bytes: ...

    @abc.abstractmethod
    def pwrite(self, offset: int, data: bytes) -> None: ...

    @abc.abstractmethod
    def fsync(self) -> None: ...

    @abc.abstractmethod
    def fdatasync(self) -> None: ...

    @abc.abstractmethod
    def truncate(self, size: int) -> None: ...

    @abc.abstractmethod
    def size(self) -> int: ...

    @abc.abstractmethod
    def close(self) -> None: ...

    def pwrite_scatter(self, items: list[tuple[int, bytes | list[bytes]]], depth: int = 8) -> None:
        """Write every (offset, data); data may be a list (written back to back).

        Order between items is undefined until the next fdatasync.

        DirectFile overrides this with writes on `depth` threads (O_DIRECT writes
        are synchronous, so a queue is what makes scattered blocks fast); here, in
        order, which is one of the orders the real one may produce.
        """
        for offset, data in items:
            self.pwrite(offset, b"".join(data) if isinstance(data, (list, tuple)) else data)

    def __enter__(self) -> File:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# The compiled file is a File without a Python wrapper on the hot path.
File.register(_core.DirectFile)


class FS(abc.ABC):
    """A file system. Subclasses implement the primitives; the durability rule
    (fsync the directory after every change of names) is applied here."""

    # --- the public surface ---------------------------------------------------------

    def open(self, path: str, *, create: bool = False, direct: str = DIRECT_IO_DEFAULT) -> File:
        """Open `path` read-write; with `create`, create it if missing (then the new
        name is made durable before returning)."""
        check_direct_mode(direct)
        path = os.fspath(path)
        f, created = self._open(path, create, direct)
        if created:
            # A new file's name is only durable once its directory is fsynced. If
            # this fails the file exists but may vanish at a crash: close and raise.
            try:
                self.fsync_dir(_parent(path))
            except BaseException:
                f.close()
                raise
        return f

    def rename(self, src: str, dst: str) -> None:
        """Atomically rename `src` to `dst` (replacing it), durable on return."""
        src, dst = os.fspath(src), os.fspath(dst)
        self._rename(src, dst)
        # The destination directory holds the new name; when the source directory
        # differs, it must forget the old name too (else the file shows up twice).
        self.fsync_dir(_parent(dst))
        if _parent(src) != _parent(dst):
            self.fsync_dir(_parent(src))

    def remove(self, path: str) -> None:
        """Remove a file, durable on return."""
        path = os.fspath(path)
        self._remove(path)
        self.fsync_dir(_parent(path))

    def makedirs(self, path: str) -> None:
        """Create `path` and missing parents (no error if it exists), durable."""
        path = os.fspath(path)
        missing: list[str] = []
        p = path
        while p and not self.exists(p):
            missing.append(p)
            parent = _parent(p)
            if parent == p:
                break
            p = parent
        # Top-down: each new directory is fsynced into its parent before the next
        # level goes in, so a crash never leaves a child whose parent is lost.
        for d in reversed(missing):
            try:
                self._mkdir(d)
            except FileExistsError:
                continue  # created meanwhile by someone else: fine
            self.fsync_dir(_parent(d))

    # --- primitives -----------------------------------------------------------------

    @abc.abstractmethod
    def _open(self, path: str, create: bool, direct: str) -> tuple[File, bool]:
        """Open; return the file and whether this call created it."""

    @abc.abstractmethod
    def _rename(self, src: str, dst: str) -> None: ...

    @abc.abstractmethod
    def _remove(self, path: str) -> None: ...

    @abc.abstractmethod
    def _mkdir(self, path: str) -> None: ...

    @abc.abstractmethod
    def exists(self, path: str) -> bool: ...

    @abc.abstractmethod
    def size(self, path: str) -> int: ...

    @abc.abstractmethod
    def listdir(self, path: str) -> list[str]:
        """Names in the directory, sorted."""

    @abc.abstractmethod
    def fsync_dir(self, path: str) -> None: ...


def _parent(path: str) -> str:
    parent = os.path.dirname(path)
    return parent if parent else "."


class RealFS(FS):
    """The operating system's file system, through `_core.DirectFile`.

    `probe` decides per directory whether O_DIRECT works there (default:
    `_core.probe_direct`); the answer is cached per directory, and the "optional"
    fallback logs one warning per directory.
    """

    def __init__(self, probe=None) -> None:
        self._probe = probe if probe is not None else _core.probe_direct
        self._direct_ok: dict[str, bool] = {}
        self._warned: set[str] = set()
        self._lock = threading.Lock()

    def direct_supported(self, dirpath: str) -> bool:
        """Whether files in `dirpath` accept O_DIRECT (cached; warns once if not)."""
        key = os.path.realpath(dirpath)
        with self._lock:
            ok = self._direct_ok.get(key)
        if ok is not None:
            return ok
        ok = bool(self._probe(key))
        with self._lock:
            if key in self._direct_ok:  # another thread probed first
                return self._direct_ok[key]
            self._direct_ok[key] = ok
        return ok

    def _warn_fallback(self, dirpath: str, why: str) -> None:
        key = os.path.realpath(dirpath)
        with self._lock:
            if key in self._warned:
                return
            self._warned.add(key)
        log.warning(
            "O_DIRECT refused in %s (%s); direct_io='optional' falls back to buffered I/O "
            "(page cache) for files there",
            dirpath,
            why,
        )

    def _open(self, path: str, create: bool, direct: str) -> tuple[File, bool]:
        use_direct = False
        if direct != "disabled":
            d = _parent(path)
            if self.direct_supported(d):
                use_direct = True
            elif direct == "required":
                raise ConfigError(
                    f"direct_io='required' but the file system of {d!r} refuses O_DIRECT "
                    f"(tmpfs and some FUSE mounts do); use direct_io='optional' or move the file"
                )
            else:
                self._warn_fallback(d, "the file system refuses it")
        created = False
        if create:
            # O_EXCL first, so we know whether this call made the name (and must
            # fsync the directory); an existing file is then opened normally.
            try:
                f = self._open_fd(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, use_direct, direct)
                created = True
            except FileExistsError:
                f = self._open_fd(path, os.O_RDWR, use_direct, direct)
        else:
            f = self._open_fd(path, os.O_RDWR, use_direct, direct)
        return f, created

    def _open_fd(self, path: str, flags: int, use_direct: bool, direct: str) -> File:
        if not use_direct:
            return _core.DirectFile(path, flags, 0o644, False)
        try:
            f = _core.DirectFile(path, flags, 0o644, True)
        except OSError as e:
            # The directory probe said yes but this open says no (a different mount
            # below the directory, say). Old tmpfs creates the file before refusing.
            if e.errno != errno.EINVAL:
                raise
            if direct == "required":
                raise ConfigError(
                    f"direct_io='required' but opening {path!r} with O_DIRECT failed: {e}"
                ) from e
            self._warn_fallback(_parent(path), f"open: {e.strerror}")
            return _core.DirectFile(path, flags & ~os.O_EXCL, 0o644, False)
        if not f.direct and direct == "required":
            f.close()
            raise ConfigError(f"direct_io='required' but O_DIRECT is not in effect on {path!r}")
        return f

    def _rename(self, src: str, dst: str) -> None:
        os.rename(src, dst)

    def _remove(self, path: str) -> None:
        os.remove(path)

    def _mkdir(self, path: str) -> None:
        os.mkdir(path)

    def exists(self, path: str) -> bool:
        return os.path.exists(path)

    def size(self, path: str) -> int:
        return os.stat(path).st_size

    def listdir(self, path: str) -> list[str]:
        return sorted(os.listdir(path))

    def fsync_dir(self, path: str) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


_default_fs: RealFS | None = None
_default_lock = threading.Lock()


def default_fs() -> RealFS:
    """The process-wide RealFS (one probe cache, one warning per directory)."""
    global _default_fs
    if _default_fs is None:
        with _default_lock:
            if _default_fs is None:
                _default_fs = RealFS()
    return _default_fs
