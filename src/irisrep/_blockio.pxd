# _blockio declarations: the O_DIRECT-capable file (see _blockio.pxi).

cdef class DirectFile:
    # The path as given (str), for error messages; O_DIRECT really in effect; the fd
    # (-1 once closed).
    cdef readonly object path
    cdef readonly bint direct
    cdef readonly int fd
    # One aligned bounce buffer, grown on demand, guarded by _lock (a threading.Lock)
    # because every syscall runs without the GIL.
    cdef unsigned char *_buf
    cdef size_t _cap
    cdef object _lock

    cdef int _check_open(self) except -1
    cdef int _check_args(self, long long offset, long long length) except -1
    cdef int _grow(self, size_t nbytes) except -1
    cdef int _raise_errno(self, int err) except -1
    cdef Py_ssize_t _read_into(self, unsigned char *dst, size_t length,
                               long long offset) except -1
    cdef int _write_from(self, const unsigned char *src, size_t length,
                         long long offset) except -1
