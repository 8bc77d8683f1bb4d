"""DirectFile (O_DIRECT, GIL-free positioned I/O) and the RealFS seam."""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import threading

import pytest

from irisrep import _core, fileio
from irisrep.constants import IO_ALIGN
from irisrep.errors import ConfigError
from irisrep.fileio import FS, File, RealFS

A = IO_ALIGN
SHM = "/dev/shm"


@pytest.fixture
def ext4_dir(tmp_path):
    # tmp_path lives under /tmp, on the same ext4 as /work on the CI machines; the
    # O_DIRECT tests need a file system that really does direct I/O.
    if not _core.probe_direct(str(tmp_path)):
        pytest.skip(f"{tmp_path} does not support O_DIRECT")
    return tmp_path


@pytest.fixture
def shm_dir(tmp_path_factory):
    if not os.path.isdir(SHM) or not os.access(SHM, os.W_OK):
        pytest.skip("no writable /dev/shm")
    d = os.path.join(SHM, f"irisrep-test-{os.getpid()}-{threading.get_ident()}")
    os.makedirs(d, exist_ok=True)
    yield d
    for name in os.listdir(d):
        os.remove(os.path.join(d, name))
    os.rmdir(d)


def _open(path, direct, create=True):
    flags = os.O_RDWR | (os.O_CREAT if create else 0)
    return _core.DirectFile(str(path), flags, 0o644, direct)


# --- DirectFile -------------------------------------------------------------------------


def test_odirect_really_in_effect(ext4_dir):
    with _open(ext4_dir / "f", True) as f:
        assert f.direct is True
        assert fcntl.fcntl(f.fd, fcntl.F_GETFL) & os.O_DIRECT
        assert f.path == str(ext4_dir / "f")
    with _open(ext4_dir / "g", False) as g:
        assert g.direct is False
        assert not fcntl.fcntl(g.fd, fcntl.F_GETFL) & os.O_DIRECT


@pytest.mark.parametrize("direct", [True, False])
def test_round_trip_and_short_read_at_eof(ext4_dir, direct):
    data = os.urandom(3 * A)
    with _open(ext4_dir / "f", direct) as f:
        f.pwrite(A, data)
        assert f.size() == 4 * A
        assert f.pread(A, 3 * A) == data
        assert f.pread(0, A) == bytes(A)  # the hole reads as zeros
        assert f.pread(3 * A, 2 * A) == data[2 * A :]  # short: only what exists
        assert f.pread(8 * A, A) == b""
        assert f.pread(0, 0) == b""
        f.fsync()
        f.fdatasync()
        f.truncate(A + 100)
        assert f.size() == A + 100
        assert f.pread(0, 2 * A) == bytes(A) + data[:100]


def test_buffered_allows_unaligned(tmp_path):
    with _open(tmp_path / "f", False) as f:
        f.pwrite(3, b"hello")
        f.pwrite(5, bytearray(b"LL"))
        f.pwrite(7, memoryview(b"xO"))
        assert f.pread(0, 100) == b"\0\0\0heLLxO"
        assert f.pread(4, 2) == b"eL"


def test_unaligned_direct_raises_value_error(ext4_dir):
    with _open(ext4_dir / "f", True) as f:
        with pytest.raises(ValueError, match=r"offset 1, length 4096"):
            f.pwrite(1, bytes(A))
        with pytest.raises(ValueError, match=r"offset 0, length 100"):
            f.pwrite(0, bytes(100))
        with pytest.raises(ValueError, match=r"offset 512, length 4096"):
            f.pread(512, A)
        with pytest.raises(ValueError, match=r"offset 0, length 4097"):
            f.pwritev_at(0, [bytes(A), b"x"])
        assert f.size() == 0  # nothing was written


def test_negative_and_oversized_arguments(tmp_path):
    with _open(tmp_path / "f", False) as f:
        with pytest.raises(ValueError):
            f.pread(-1, 10)
        with pytest.raises(ValueError):
            f.pread(0, -1)
        with pytest.raises(ValueError):
            f.truncate(-1)
        with pytest.raises(ValueError, match="per-call limit"):
            f.pread(0, _core.IO_CALL_BYTES_MAX + 1)
    assert _core.IO_CALL_BYTES_MAX == fileio.IO_CALL_BYTES_MAX


def test_buffer_grows(ext4_dir):
    with _open(ext4_dir / "f", True) as f:
        for n in (1, 3, 16, 2, 33):
            blob = os.urandom(n * A)
            f.pwrite(0, blob)
            assert f.pread(0, n * A) == blob


def test_pwritev_and_pread_into(ext4_dir):
    with _open(ext4_dir / "f", True) as f:
        parts = [os.urandom(1000), b"", os.urandom(A - 1000), bytearray(os.urandom(A))]
        f.pwritev_at(A, parts)
        out = bytearray(2 * A)
        assert f.pread_into(A, out) == 2 * A
        assert bytes(out) == b"".join(bytes(p) for p in parts)
        tail = bytearray(2 * A)
        assert f.pread_into(2 * A, tail) == A  # short at end of file


def test_errors_are_oserror_with_path(tmp_path):
    missing = str(tmp_path / "no" / "such")
    with pytest.raises(FileNotFoundError) as ei:
        _core.DirectFile(missing, os.O_RDWR, 0o644, False)
    assert ei.value.filename == missing
    f = _open(tmp_path / "f", False)
    f.close()
    f.close()  # idempotent
    assert f.fd == -1
    for call in (
        lambda: f.pread(0, 1),
        lambda: f.pwrite(0, b"x"),
        f.fsync,
        f.fdatasync,
        f.size,
        lambda: f.truncate(0),
    ):
        with pytest.raises(OSError) as ei:
            call()
        assert ei.value.errno == errno.EBADF
        assert ei.value.filename == str(tmp_path / "f")


def test_syscall_error_carries_path(tmp_path):
    p = str(tmp_path / "ro")
    open(p, "wb").close()
    f = _core.DirectFile(p, os.O_RDONLY, 0o644, False)
    with pytest.raises(OSError) as ei:
        f.pwrite(0, b"x")
    assert ei.value.errno == errno.EBADF and ei.value.filename == p
    with pytest.raises(OSError) as ei:
        f.truncate(0)
    assert ei.value.errno in (errno.EBADF, errno.EINVAL) and ei.value.filename == p
    f.close()


def test_threads_share_one_direct_file(ext4_dir):
    # The GIL is released around every syscall and the bounce buffer is locked.
    f = _open(ext4_dir / "f", True)
    blocks = {i: os.urandom(A) for i in range(64)}
    errors = []

    def worker(ids):
        try:
            for _ in range(20):
                for i in ids:
                    f.pwrite(i * A, blocks[i])
                    assert f.pread(i * A, A) == blocks[i]
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(range(k, 64, 4),)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    f.close()
    assert not errors


def test_probe_direct(ext4_dir, tmp_path):
    assert _core.probe_direct(str(ext4_dir)) is True
    assert os.listdir(ext4_dir) == []  # the probe file is gone
    with pytest.raises(FileNotFoundError):
        _core.probe_direct(str(tmp_path / "missing"))


# --- RealFS -------------------------------------------------------------------------------


def test_realfs_is_an_fs_and_files_are_files(ext4_dir):
    fs = RealFS()
    assert isinstance(fs, FS)
    f = fs.open(str(ext4_dir / "db"), create=True)
    assert isinstance(f, File)
    assert f.direct is True
    f.close()


def test_realfs_create_fsyncs_directory(ext4_dir, monkeypatch):
    fs = RealFS()
    synced = []
    real = fs.fsync_dir
    monkeypatch.setattr(fs, "fsync_dir", lambda p: (synced.append(p), real(p)))
    p = str(ext4_dir / "db")
    fs.open(p, create=True).close()
    assert synced == [str(ext4_dir)]
    fs.open(p, create=True).close()  # exists already: no new name, no fsync
    fs.open(p).close()
    assert synced == [str(ext4_dir)]
    os.mkdir(ext4_dir / "sub")
    fs.rename(p, str(ext4_dir / "sub" / "db2"))
    assert synced[1:] == [str(ext4_dir / "sub"), str(ext4_dir)]
    fs.remove(str(ext4_dir / "sub" / "db2"))
    assert synced[-1] == str(ext4_dir / "sub")
    fs.makedirs(str(ext4_dir / "a" / "b"))
    assert synced[-2:] == [str(ext4_dir), str(ext4_dir / "a")]
    fs.makedirs(str(ext4_dir / "a" / "b"))  # exists: no-op
    assert fs.listdir(str(ext4_dir)) == ["a", "sub"]
    assert fs.exists(str(ext4_dir / "a" / "b"))


def test_realfs_open_missing_without_create(tmp_path):
    with pytest.raises(FileNotFoundError):
        RealFS().open(str(tmp_path / "nope"), direct="disabled")


def test_realfs_size_and_data(tmp_path):
    fs = RealFS()
    p = str(tmp_path / "f")
    with fs.open(p, create=True, direct="disabled") as f:
        assert f.direct is False
        f.pwrite(0, b"abc")
        f.fsync()
    assert fs.size(p) == 3


@pytest.mark.parametrize("bad", ["bogus", "", None, True, "REQUIRED"])
def test_bad_direct_mode_is_config_error(tmp_path, bad):
    with pytest.raises(ConfigError, match="direct_io"):
        RealFS().open(str(tmp_path / "f"), create=True, direct=bad)
    assert not os.path.exists(tmp_path / "f")


def _refusing_probe(dirpath):
    return False


def test_optional_falls_back_with_one_warning_per_directory(tmp_path, caplog):
    # Linux >= 6.6 tmpfs accepts O_DIRECT, so the refusal is simulated by the probe
    # (test_shm_* below use the real /dev/shm, whatever it does).
    fs = RealFS(probe=_refusing_probe)
    os.mkdir(tmp_path / "b")
    with caplog.at_level(logging.WARNING, logger="irisrep.fileio"):
        for name in ("x", "y", "b/z"):
            f = fs.open(str(tmp_path / name), create=True)
            assert f.direct is False
            f.pwrite(1, b"unaligned is fine when buffered")
            f.close()
    warnings = [r for r in caplog.records if r.name == "irisrep.fileio"]
    assert len(warnings) == 2
    assert str(tmp_path) in warnings[0].getMessage()
    assert "O_DIRECT" in warnings[0].getMessage()


def test_required_refused_is_config_error(tmp_path):
    fs = RealFS(probe=_refusing_probe)
    with pytest.raises(ConfigError, match="required"):
        fs.open(str(tmp_path / "f"), create=True, direct="required")
    assert not os.path.exists(tmp_path / "f")


def test_open_refused_after_probe_said_yes(tmp_path, monkeypatch, caplog):
    # A probe can pass while the open itself is refused (another mount below).
    real_cls = _core.DirectFile

    def refusing(path, flags, mode, direct):
        if direct:
            raise OSError(errno.EINVAL, "Invalid argument", path)
        return real_cls(path, flags, mode, direct)

    monkeypatch.setattr(_core, "DirectFile", refusing)
    fs = RealFS(probe=lambda d: True)
    with caplog.at_level(logging.WARNING, logger="irisrep.fileio"):
        f = fs.open(str(tmp_path / "f"), create=True)
    assert f.direct is False
    f.close()
    assert any("O_DIRECT" in r.getMessage() for r in caplog.records)
    with pytest.raises(ConfigError):
        fs.open(str(tmp_path / "f"), direct="required")


def test_shm_optional_and_required_follow_the_kernel(shm_dir, caplog):
    supported = _core.probe_direct(shm_dir)
    fs = RealFS()
    with caplog.at_level(logging.WARNING, logger="irisrep.fileio"):
        f = fs.open(os.path.join(shm_dir, "a"), create=True)
        g = fs.open(os.path.join(shm_dir, "b"), create=True)
    assert f.direct is supported and g.direct is supported
    f.close()
    g.close()
    warned = [r for r in caplog.records if r.name == "irisrep.fileio"]
    assert len(warned) == (0 if supported else 1)
    if supported:
        fs.open(os.path.join(shm_dir, "c"), create=True, direct="required").close()
    else:
        with pytest.raises(ConfigError):
            fs.open(os.path.join(shm_dir, "c"), create=True, direct="required")
    with pytest.raises(ConfigError):
        fs.open(os.path.join(shm_dir, "d"), create=True, direct="bogus")


def test_default_fs_is_process_wide():
    assert fileio.default_fs() is fileio.default_fs()
    assert isinstance(fileio.default_fs(), RealFS)
