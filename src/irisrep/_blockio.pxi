# _blockio: one file opened with optional O_DIRECT, positioned I/O with the GIL released.
#
# Owns: DirectFile (pread / pwrite / pwritev_at / pread_into / fsync / fdatasync /
# truncate / size / close) and probe_direct(dirpath).
# Promises:
# - every syscall runs in `with nogil:` and is retried on EINTR (after giving Python
#   signal handlers a chance to run) and on short reads/writes;
# - a failure raises OSError(errno, strerror, path): OSError stays OSError, callers
#   decide what a failed fsync means (DurabilityError lives above this layer);
# - with O_DIRECT, offset and length must be multiples of IO_ALIGN (ValueError
#   otherwise, before any syscall); data goes through one IO_ALIGN-aligned buffer;
# - pread at or past end of file returns the bytes that exist (possibly b"");
# - no call moves more than IO_CALL_BYTES_MAX bytes (ValueError), so one bad length
#   cannot make us allocate gigabytes.
# Python code reaches files through irisrep.fileio (RealFS wraps this), never directly.

import errno as _errno
import os as _os
import threading as _threading

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from cpython.exc cimport PyErr_CheckSignals
from libc.errno cimport EINTR, EIO, errno
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy
from posix.stat cimport fstat, struct_stat
from posix.unistd cimport close as c_close
from posix.unistd cimport fdatasync as c_fdatasync
from posix.unistd cimport fsync as c_fsync
from posix.unistd cimport ftruncate as c_ftruncate
from posix.unistd cimport pread as c_pread
from posix.unistd cimport pwrite as c_pwrite


cdef extern from "irisrep_align.h":
    const size_t IRISREP_IO_ALIGN
    void *ir_aligned_alloc(size_t nbytes) nogil
    void *ir_aligned_alloc_uninit(size_t nbytes) nogil


# Largest single transfer (constants.IO_CALL_BYTES_MAX).
from irisrep.constants import IO_CALL_BYTES_MAX
cdef size_t _IO_CALL_MAX = 64 * 1024 * 1024
cdef long long _IO_ALIGN = IRISREP_IO_ALIGN
# 0 where the platform has no O_DIRECT (macOS): direct=True then fails with EINVAL.
cdef int _O_DIRECT = getattr(_os, "O_DIRECT", 0)


cdef extern from "<fcntl.h>" nogil:
    int _c_fcntl "fcntl"(int, int, ...)
    const int _C_F_GETFL "F_GETFL"


cdef int _fcntl_getfl(int fd) except? -1:
    cdef int rc = _c_fcntl(fd, _C_F_GETFL)
    if rc < 0:
        raise OSError(errno, _os.strerror(errno))
    return rc


cdef int _pread_some(int fd, unsigned char *dst, size_t length, long long offset,
                     size_t *done, int *err) noexcept nogil:
    # Read until `length` bytes, end of file (0) or an error; EINTR returns to the
    # caller (err = EINTR) so it can run signal handlers with the GIL and resume.
    cdef ssize_t n
    err[0] = 0
    while done[0] < length:
        n = c_pread(fd, dst + done[0], length - done[0], offset + <long long>done[0])
        if n < 0:
            err[0] = errno
            return -1
        if n == 0:
            return 0
        done[0] += <size_t>n
    return 0


cdef int _pwrite_some(int fd, const unsigned char *src, size_t length, long long offset,
                      size_t *done, int *err) noexcept nogil:
    cdef ssize_t n
    err[0] = 0
    while done[0] < length:
        n = c_pwrite(fd, src + done[0], length - done[0], offset + <long long>done[0])
        if n < 0:
            err[0] = errno
            return -1
        if n == 0:
            # POSIX allows it only for length 0; looping would spin forever.
            err[0] = EIO
            return -1
        done[0] += <size_t>n
    return 0


cdef extern from "<pthread.h>" nogil:
    ctypedef unsigned long pthread_t
    int pthread_create(pthread_t *thread, const void *attr,
                       void *(*start)(void *) noexcept nogil, void *arg)
    int pthread_join(pthread_t thread, void **retval)


cdef struct _ScatterJob:
    # One writer thread's share of a scatter write: items start, start+stride, ...
    int fd
    const long long *offsets
    unsigned char * const *ptrs
    const size_t *lens
    Py_ssize_t n
    Py_ssize_t start
    Py_ssize_t stride
    int err


cdef void *_scatter_worker(void *arg) noexcept nogil:
    cdef _ScatterJob *job = <_ScatterJob *>arg
    cdef Py_ssize_t i = job.start
    cdef size_t done
    cdef int err = 0
    while i < job.n:
        done = 0
        while True:
            _pwrite_some(job.fd, job.ptrs[i], job.lens[i], job.offsets[i], &done, &err)
            if err != EINTR:
                break
        if err:
            job.err = err
            return NULL
        i += job.stride
    return NULL


cdef class DirectFile:
    """A file opened with `os.open` flags, plus O_DIRECT when `direct` is true.

    `DirectFile(path, flags=os.O_RDWR, mode=0o644, direct=False)`. When O_DIRECT is
    asked for and the file system refuses it, the open fails with OSError(EINVAL);
    the fallback policy lives in irisrep.fileio, not here. The fd is close-on-exec.
    """

    def __cinit__(self):
        self.fd = -1
        self.direct = False
        self._buf = NULL
        self._cap = 0

    def __init__(self, path, int flags=_os.O_RDWR, int mode=0o644, bint direct=False):
        self.path = _os.fspath(path)
        self._lock = _threading.Lock()
        if direct and _O_DIRECT == 0:
            raise OSError(_errno.EINVAL, "O_DIRECT is not available on this platform",
                          self.path)
        if direct:
            flags |= _O_DIRECT
        # os.open releases the GIL, retries EINTR, sets O_CLOEXEC and raises OSError
        # with the filename: nothing to gain from calling open(2) ourselves.
        self.fd = _os.open(self.path, flags, mode)
        # Trust the kernel, not the request: report O_DIRECT only if F_GETFL shows it.
        self.direct = _O_DIRECT != 0 and (_fcntl_getfl(self.fd) & _O_DIRECT) != 0

    def __dealloc__(self):
        # No fsync here: durability is the caller's job, and __dealloc__ cannot raise.
        if self.fd >= 0:
            c_close(self.fd)
            self.fd = -1
        if self._buf != NULL:
            free(self._buf)
            self._buf = NULL

    def __repr__(self):
        return (f"<DirectFile {self.path!r} fd={self.fd} direct={bool(self.direct)}"
                f"{' closed' if self.fd < 0 else ''}>")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    # --- checks --------------------------------------------------------------

    cdef int _check_open(self) except -1:
        if self.fd < 0:
            raise OSError(_errno.EBADF, "file is closed", self.path)
        return 0

    cdef int _check_args(self, long long offset, long long length) except -1:
        if offset < 0 or length < 0:
            raise ValueError(f"{self.path}: offset {offset} and length {length} "
                             f"must not be negative")
        if <unsigned long long>length > _IO_CALL_MAX:
            raise ValueError(f"{self.path}: length {length} is over the per-call limit "
                             f"of {_IO_CALL_MAX} bytes")
        if self.direct and (offset % _IO_ALIGN or length % _IO_ALIGN):
            raise ValueError(f"{self.path}: O_DIRECT needs offset and length aligned to "
                             f"{_IO_ALIGN} bytes; got offset {offset}, length {length}")
        return 0

    cdef int _raise_errno(self, int err) except -1:
        raise OSError(err, _os.strerror(err), self.path)

    cdef int _grow(self, size_t nbytes) except -1:
        # Called with _lock held. Doubling keeps the number of reallocations
        # logarithmic; the fresh buffer is zeroed by ir_aligned_alloc.
        cdef size_t cap
        cdef void *p
        if nbytes <= self._cap and self._buf != NULL:
            return 0
        cap = self._cap * 2 if self._cap else <size_t>_IO_ALIGN
        if cap < nbytes:
            cap = nbytes
        if cap > _IO_CALL_MAX:
            cap = _IO_CALL_MAX
        cap = (cap + <size_t>_IO_ALIGN - 1) & ~(<size_t>_IO_ALIGN - 1)
        p = ir_aligned_alloc(cap)
        if p == NULL:
            raise MemoryError(f"cannot allocate an aligned buffer of {cap} bytes")
        if self._buf != NULL:
            free(self._buf)
        self._buf = <unsigned char *>p
        self._cap = cap
        return 0

    # --- raw loops (GIL released around each syscall burst) ------------------

    cdef Py_ssize_t _read_into(self, unsigned char *dst, size_t length,
                               long long offset) except -1:
        cdef size_t done = 0
        cdef int err = 0
        cdef int fd = self.fd
        while True:
            with nogil:
                _pread_some(fd, dst, length, offset, &done, &err)
            if err == EINTR:
                PyErr_CheckSignals()
                continue
            if err:
                self._raise_errno(err)
            return <Py_ssize_t>done

    cdef int _write_from(self, const unsigned char *src, size_t length,
                         long long offset) except -1:
        cdef size_t done = 0
        cdef int err = 0
        cdef int fd = self.fd
        while True:
            with nogil:
                _pwrite_some(fd, src, length, offset, &done, &err)
            if err == EINTR:
                PyErr_CheckSignals()
                continue
            if err:
                # Some bytes may already be on their way (done > 0): the caller must
                # treat the whole range as unknown, exactly as after a crash.
                self._raise_errno(err)
            return 0

    # --- public API ----------------------------------------------------------

    def pread(self, long long offset, long long length):
        """Read `length` bytes at `offset`; fewer (maybe none) at end of file."""
        cdef bytes out
        cdef Py_ssize_t n
        self._check_open()
        self._check_args(offset, length)
        if length == 0:
            return b""
        if not self.direct:
            # Buffered: read straight into a fresh bytes object (not yet shared).
            out = PyBytes_FromStringAndSize(NULL, length)
            n = self._read_into(<unsigned char *>PyBytes_AS_STRING(out), length, offset)
            return out if n == length else out[:n]
        with self._lock:
            self._check_open()  # close() may have won the race for the lock
            self._grow(length)
            n = self._read_into(self._buf, length, offset)
            return PyBytes_FromStringAndSize(<char *>self._buf, n)

    def pread_into(self, long long offset, out):
        """Read into the writable buffer `out` (its whole length); return the count."""
        cdef unsigned char[::1] view = out
        cdef long long length = view.shape[0]
        cdef Py_ssize_t n
        self._check_open()
        self._check_args(offset, length)
        if length == 0:
            return 0
        if not self.direct:
            return self._read_into(&view[0], length, offset)
        with self._lock:
            self._check_open()
            self._grow(length)
            n = self._read_into(self._buf, length, offset)
            memcpy(&view[0], self._buf, n)
            return n

    def pwrite(self, long long offset, data):
        """Write all of `data` (any contiguous bytes-like) at `offset`."""
        cdef const unsigned char[::1] view = data
        cdef long long length = view.shape[0]
        self._check_open()
        self._check_args(offset, length)
        if length == 0:
            return None
        if not self.direct:
            # The memoryview pins `data` (a bytearray cannot resize) while unlocked.
            self._write_from(&view[0], length, offset)
            return None
        with self._lock:
            self._check_open()
            self._grow(length)
            memcpy(self._buf, &view[0], length)
            self._write_from(self._buf, length, offset)
        return None

    def pwrite_scatter(self, items, int depth=8):
        """Write every (offset, data) of `items`, up to `depth` writes in flight.

        O_DIRECT writes go straight to the device, one at a time per thread, so a set
        of scattered blocks written serially pays one device latency each. Here the
        writes run on `depth` threads (no GIL) so the device sees a queue. All data is
        copied into one aligned buffer first; the items must not overlap. Order
        between items is not defined: callers use it only inside a phase that ends
        with fdatasync (a flush cycle's database writes).
        """
        cdef Py_ssize_t n = len(items), i, t, threads
        cdef long long total = 0, off
        cdef size_t pos = 0
        cdef const unsigned char[::1] view
        cdef long long *offsets = NULL
        cdef unsigned char **ptrs = NULL
        cdef size_t *lens = NULL
        cdef unsigned char *buf = NULL
        cdef _ScatterJob *jobs = NULL
        cdef pthread_t *tids = NULL
        cdef int err = 0
        self._check_open()
        if n == 0:
            return None
        if depth < 1:
            raise ValueError(f"depth {depth} must be at least 1")
        # Each item's data is one bytes-like or a list of them (a run of block images
        # written as one: copied once, into the aligned buffer, never joined first).
        parts = []
        sizes = []
        for i in range(n):
            off, data = items[i]
            pieces = ([memoryview(d).cast("B") for d in data]
                      if isinstance(data, (list, tuple)) else [memoryview(data).cast("B")])
            size = sum(len(p) for p in pieces)
            self._check_args(off, size)
            parts.append(pieces)
            sizes.append(size)
            total += size
        if <unsigned long long>total > _IO_CALL_MAX:
            raise ValueError(f"{self.path}: scatter write of {total} bytes is over the "
                             f"per-call limit of {_IO_CALL_MAX} bytes")
        threads = depth if depth < n else n
        try:
            buf = <unsigned char *>ir_aligned_alloc_uninit(total)
            offsets = <long long *>malloc(n * sizeof(long long))
            ptrs = <unsigned char **>malloc(n * sizeof(unsigned char *))
            lens = <size_t *>malloc(n * sizeof(size_t))
            jobs = <_ScatterJob *>malloc(threads * sizeof(_ScatterJob))
            tids = <pthread_t *>malloc(threads * sizeof(pthread_t))
            if (buf == NULL or offsets == NULL or ptrs == NULL or lens == NULL
                    or jobs == NULL or tids == NULL):
                raise MemoryError()
            for i in range(n):
                offsets[i] = items[i][0]
                ptrs[i] = buf + pos
                lens[i] = sizes[i]
                for piece in parts[i]:
                    view = piece
                    if view.shape[0]:
                        memcpy(buf + pos, &view[0], view.shape[0])
                    pos += view.shape[0]
            for t in range(threads):
                jobs[t].fd = self.fd
                jobs[t].offsets = offsets
                jobs[t].ptrs = ptrs
                jobs[t].lens = lens
                jobs[t].n = n
                jobs[t].start = t
                jobs[t].stride = threads
                jobs[t].err = 0
            with nogil:
                for t in range(1, threads):
                    if pthread_create(&tids[t], NULL, _scatter_worker, &jobs[t]) != 0:
                        # No thread: do its share on this one after our own.
                        tids[t] = 0
                _scatter_worker(&jobs[0])
                for t in range(1, threads):
                    if tids[t] != 0:
                        pthread_join(tids[t], NULL)
                    else:
                        _scatter_worker(&jobs[t])
            for t in range(threads):
                if jobs[t].err and not err:
                    err = jobs[t].err
            if err:
                # Some items may be written, others not: the caller treats the whole
                # set as unknown, exactly as after a crash.
                self._raise_errno(err)
        finally:
            free(buf)
            free(offsets)
            free(ptrs)
            free(lens)
            free(jobs)
            free(tids)
        return None

    def pwritev_at(self, long long offset, buffers):
        """Write the concatenation of `buffers` at `offset` with one pwrite."""
        cdef const unsigned char[::1] view
        cdef long long total = 0
        cdef size_t pos = 0
        bufs = [memoryview(b).cast("B") for b in buffers]
        for b in bufs:
            total += len(b)
        self._check_open()
        self._check_args(offset, total)
        if total == 0:
            return None
        with self._lock:
            self._check_open()
            self._grow(total)
            for b in bufs:
                if len(b) == 0:
                    continue
                view = b
                memcpy(self._buf + pos, &view[0], view.shape[0])
                pos += view.shape[0]
            self._write_from(self._buf, total, offset)
        return None

    def fsync(self):
        """fsync(2): data and metadata durable, or OSError (never retried by us)."""
        cdef int rc, err, fd
        self._check_open()
        fd = self.fd
        while True:
            with nogil:
                rc = c_fsync(fd)
                err = errno if rc < 0 else 0
            if err == EINTR:
                PyErr_CheckSignals()
                continue
            if err:
                self._raise_errno(err)
            return None

    def fdatasync(self):
        """fdatasync(2): data (and the size) durable, or OSError."""
        cdef int rc, err, fd
        self._check_open()
        fd = self.fd
        while True:
            with nogil:
                rc = c_fdatasync(fd)
                err = errno if rc < 0 else 0
            if err == EINTR:
                PyErr_CheckSignals()
                continue
            if err:
                self._raise_errno(err)
            return None

    def truncate(self, long long size):
        """ftruncate(2) to `size` bytes (not durable until fsync)."""
        cdef int rc, err, fd
        self._check_open()
        if size < 0:
            raise ValueError(f"{self.path}: truncate size {size} must not be negative")
        fd = self.fd
        while True:
            with nogil:
                rc = c_ftruncate(fd, size)
                err = errno if rc < 0 else 0
            if err == EINTR:
                PyErr_CheckSignals()
                continue
            if err:
                self._raise_errno(err)
            return None

    def size(self):
        """Current size in bytes (fstat)."""
        cdef struct_stat st
        cdef int rc, err, fd
        self._check_open()
        fd = self.fd
        with nogil:
            rc = fstat(fd, &st)
            err = errno if rc < 0 else 0
        if err:
            self._raise_errno(err)
        return st.st_size

    def close(self):
        """Close the fd (idempotent). Does not fsync."""
        cdef int fd, rc
        cdef int err = 0
        if self.fd < 0:
            return None
        # Take the lock so that no direct-mode transfer is using the fd or buffer.
        with self._lock:
            fd = self.fd
            if fd < 0:
                return None
            self.fd = -1
            if self._buf != NULL:
                free(self._buf)
                self._buf = NULL
                self._cap = 0
            with nogil:
                rc = c_close(fd)
                err = errno if rc < 0 else 0
        # close(2) must not be retried (the fd is gone even on EINTR); EINTR is noise.
        if err and err != EINTR:
            self._raise_errno(err)
        return None


def probe_direct(dirpath):
    """True if files in `dirpath` accept O_DIRECT I/O (create, write, read, remove).

    Old tmpfs (before Linux 6.6) and some FUSE file systems refuse O_DIRECT with
    EINVAL, either at open or at the first transfer; both count as "no". Any other
    error (no such directory, permission) is raised: the caller could not use the
    directory anyway.
    """
    cdef DirectFile f
    if _O_DIRECT == 0:
        return False
    dirpath = _os.fspath(dirpath)
    refused = (_errno.EINVAL, getattr(_errno, "EOPNOTSUPP", _errno.EINVAL))
    for _ in range(16):
        name = _os.path.join(dirpath, f".irisrep-odirect-probe-{_os.getpid()}-"
                                      f"{_os.urandom(6).hex()}")
        try:
            f = DirectFile(name, _os.O_RDWR | _os.O_CREAT | _os.O_EXCL, 0o600, True)
        except FileExistsError:
            continue
        except OSError as e:
            # Old tmpfs creates the file and only then refuses the open.
            _unlink_quiet(name)
            if e.errno in refused:
                return False
            raise
        try:
            f.pwrite(0, bytes(_IO_ALIGN))
            f.pread(0, _IO_ALIGN)
            return bool(f.direct)
        except OSError as e:
            if e.errno in refused:
                return False
            raise
        finally:
            f.close()
            _unlink_quiet(name)
    raise FileExistsError(_errno.EEXIST, "cannot create an O_DIRECT probe file", dirpath)


def _unlink_quiet(name):
    try:
        _os.unlink(name)
    except OSError:
        pass
