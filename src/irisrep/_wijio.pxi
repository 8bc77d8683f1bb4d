# _wijio: staged writes for a WIJ cycle, one pass in C with the GIL released.
#
# Owns: _wj_group_images (the cycle's input check and per-database split in one pass),
# _wj_write_images (the WIJ images and their directory entries) and _wj_write_runs (a
# database's sorted images as runs of consecutive blocks), plus a small pool of
# reused aligned staging buffers.
# Promises:
# - a staged write copies each piece once into a worker's aligned buffer (reused
#   across calls: no page faults of fresh memory) and writes each unit with pwrite on
#   one of `threads` writer threads, so copies, checksums and writes overlap and the
#   device sees up to `threads` writes in flight;
# - WIJ entry checksums are computed from the copy that is written
#   (ir_wij_entry_checksum, include/irisrep_wij.h), in the same pass as the copy;
# - offsets and lengths are checked like DirectFile's (O_DIRECT alignment, the
#   per-call limit per unit) before any write; the file's lock is held throughout,
#   so close() cannot pull the fd from under the writers;
# - order among the units is not defined: every caller ends the phase with an
#   fdatasync. A failed write raises OSError(errno, strerror, path) after every
#   worker stopped; which units were written is unknown, as after a crash.

from libc.stdlib cimport free, malloc
from libc.string cimport memcpy

from irisrep.constants import BLOCK_SIZE as _WJ_BLOCK_SIZE_PY

cdef extern from *:
    """
    static inline Py_ssize_t _wj_take(Py_ssize_t *p) {
        return __atomic_fetch_add(p, 1, __ATOMIC_RELAXED);
    }
    static inline int _wj_err_get(int *p) { return __atomic_load_n(p, __ATOMIC_RELAXED); }
    static inline void _wj_err_set(int *p, int err) {
        int zero = 0;
        __atomic_compare_exchange_n(p, &zero, err, 0, __ATOMIC_RELAXED, __ATOMIC_RELAXED);
    }
    """
    Py_ssize_t _wj_take(Py_ssize_t *p) nogil
    int _wj_err_get(int *p) nogil
    void _wj_err_set(int *p, int err) nogil

cdef extern from "irisrep_endian.h":
    void _wj_put_u32 "ir_put_u32" (unsigned char *p, uint32_t v) nogil
    void _wj_put_u64 "ir_put_u64" (unsigned char *p, uint64_t v) nogil
    uint32_t _wj_get_u32 "ir_get_u32" (const unsigned char *p) nogil

cdef size_t _WJ_BLOCK = _WJ_BLOCK_SIZE_PY
# Retained staging buffers (each as large as the largest unit it served).
cdef enum:
    _WJ_POOL_MAX = 8
cdef unsigned char *_wj_pool_buf[_WJ_POOL_MAX]
cdef size_t _wj_pool_cap[_WJ_POOL_MAX]
cdef int _wj_pool_len = 0
_wj_pool_lock = _threading.Lock()


cdef int _wj_pool_take(_WjWorker *w, size_t need) except -1:
    # A buffer of at least `need` bytes: a pooled one if any is large enough.
    global _wj_pool_len
    cdef int i, best = -1
    cdef void *p
    need = (need + <size_t>_IO_ALIGN - 1) & ~(<size_t>_IO_ALIGN - 1)
    with _wj_pool_lock:
        for i in range(_wj_pool_len):
            if _wj_pool_cap[i] >= need and (best < 0 or _wj_pool_cap[i] < _wj_pool_cap[best]):
                best = i
        if best >= 0:
            w.buf = _wj_pool_buf[best]
            w.cap = _wj_pool_cap[best]
            _wj_pool_len -= 1
            _wj_pool_buf[best] = _wj_pool_buf[_wj_pool_len]
            _wj_pool_cap[best] = _wj_pool_cap[_wj_pool_len]
            return 0
    p = ir_aligned_alloc_uninit(need)
    if p == NULL:
        raise MemoryError(f"cannot allocate an aligned buffer of {need} bytes")
    w.buf = <unsigned char *>p
    w.cap = need
    return 0


cdef void _wj_pool_give(_WjWorker *w) noexcept:
    # Back to the pool; a full pool keeps its largest buffers.
    global _wj_pool_len
    cdef int i, small = -1
    cdef unsigned char *b
    if w.buf == NULL:
        return
    with _wj_pool_lock:
        if _wj_pool_len < _WJ_POOL_MAX:
            _wj_pool_buf[_wj_pool_len] = w.buf
            _wj_pool_cap[_wj_pool_len] = w.cap
            _wj_pool_len += 1
            w.buf = NULL
            return
        for i in range(_wj_pool_len):
            if small < 0 or _wj_pool_cap[i] < _wj_pool_cap[small]:
                small = i
        if _wj_pool_cap[small] < w.cap:
            b = _wj_pool_buf[small]
            _wj_pool_buf[small] = w.buf
            _wj_pool_cap[small] = w.cap
            w.buf = b
    free(w.buf)
    w.buf = NULL


cdef void *_wj_worker(void *arg) noexcept nogil:
    cdef _WjWorker *w = <_WjWorker *>arg
    cdef _WjJob *job = w.job
    cdef Py_ssize_t u, p
    cdef size_t pos, done
    cdef int err = 0
    cdef unsigned char *ent
    while _wj_err_get(&job.err) == 0:
        u = _wj_take(&job.next)
        if u >= job.nunits:
            return NULL
        pos = 0
        for p in range(job.first[u], job.first[u + 1]):
            memcpy(w.buf + pos, job.src[p], job.lens[p])
            if job.dir != NULL:
                ent = job.dir + 16 * p
                _wj_put_u32(ent, job.ids[2 * p])
                _wj_put_u32(ent + 4, job.ids[2 * p + 1])
                _wj_put_u64(ent + 8, _wj_entry_checksum(job.ids[2 * p], job.ids[2 * p + 1],
                                                        w.buf + pos))
            pos += job.lens[p]
        done = 0
        while True:
            _pwrite_some(job.fd, w.buf, pos, job.offs[u], &done, &err)
            if err != EINTR:
                break
        if err:
            _wj_err_set(&job.err, err)
            return NULL
    return NULL


cdef class _WjPlan:
    # The C arrays of one staged write, freed with the plan; `keep` holds the pieces.
    cdef long long *offs
    cdef Py_ssize_t *first
    cdef const unsigned char **src
    cdef size_t *lens
    cdef uint32_t *ids
    cdef Py_ssize_t nunits, npieces
    cdef size_t unit_max
    cdef list keep

    def __cinit__(self, Py_ssize_t npieces, bint with_ids):
        self.nunits = 0
        self.npieces = 0
        self.unit_max = 0
        self.keep = []
        self.offs = <long long *>malloc((npieces + 1) * sizeof(long long))
        self.first = <Py_ssize_t *>malloc((npieces + 2) * sizeof(Py_ssize_t))
        self.src = <const unsigned char **>malloc((npieces + 1) * sizeof(void *))
        self.lens = <size_t *>malloc((npieces + 1) * sizeof(size_t))
        self.ids = <uint32_t *>malloc((2 * npieces + 2) * sizeof(uint32_t)) if with_ids else NULL
        if (self.offs == NULL or self.first == NULL or self.src == NULL or self.lens == NULL
                or (with_ids and self.ids == NULL)):
            raise MemoryError()
        self.first[0] = 0

    def __dealloc__(self):
        free(self.offs)
        free(self.first)
        free(self.src)
        free(self.lens)
        free(self.ids)

    cdef int add_piece(self, object data) except -1:
        # Appends to the open unit (the caller closes it with end_unit).
        # Anything but bytes is copied to bytes first: the pointer must stay valid
        # while the GIL is released (a bytearray could be resized meanwhile).
        cdef Py_ssize_t p = self.npieces
        if type(data) is not bytes:
            data = bytes(memoryview(data).cast("B"))
        self.src[p] = <const unsigned char *>PyBytes_AS_STRING(data)
        self.lens[p] = len(<bytes>data)
        self.keep.append(data)
        self.npieces = p + 1
        return 0

    cdef int end_unit(self, DirectFile f, long long offset) except -1:
        cdef size_t size = 0
        cdef Py_ssize_t p
        for p in range(self.first[self.nunits], self.npieces):
            size += self.lens[p]
        f._check_args(offset, size)
        self.offs[self.nunits] = offset
        self.nunits += 1
        self.first[self.nunits] = self.npieces
        if size > self.unit_max:
            self.unit_max = size
        return 0

    cdef int run(self, DirectFile f, int threads, unsigned char *dir) except -1:
        cdef _WjJob job
        cdef _WjWorker *ws = NULL
        cdef pthread_t *tids = NULL
        cdef int t, n, err = 0
        if self.nunits == 0:
            return 0
        n = threads if threads < self.nunits else <int>self.nunits
        if n < 1:
            n = 1
        job.offs = self.offs
        job.first = self.first
        job.nunits = self.nunits
        job.src = self.src
        job.lens = self.lens
        job.ids = self.ids
        job.dir = dir
        job.next = 0
        job.err = 0
        ws = <_WjWorker *>malloc(n * sizeof(_WjWorker))
        tids = <pthread_t *>malloc(n * sizeof(pthread_t))
        try:
            if ws == NULL or tids == NULL:
                raise MemoryError()
            for t in range(n):
                ws[t].job = &job
                ws[t].buf = NULL
                ws[t].cap = 0
            for t in range(n):
                _wj_pool_take(&ws[t], self.unit_max)
            with f._lock:
                f._check_open()
                job.fd = f.fd
                with nogil:
                    for t in range(1, n):
                        if pthread_create(&tids[t], NULL, _wj_worker, &ws[t]) != 0:
                            tids[t] = 0  # no thread: the others take its units
                    _wj_worker(&ws[0])
                    for t in range(1, n):
                        if tids[t] != 0:
                            pthread_join(tids[t], NULL)
            err = job.err
            if err:
                f._raise_errno(err)
        finally:
            if ws != NULL:
                for t in range(n):
                    _wj_pool_give(&ws[t])
            free(ws)
            free(tids)
        return 0


def _wj_group_images(list ordered):
    """Check a cycle's sorted (db_id, block_no, image) triples in one pass: keys strictly
    increasing, every image BLOCK_SIZE bytes naming (block_no, db_id) at byte 8. Return
    {db_id: [(block_no, image), ...]} in order, or None if any triple fails (the caller
    then finds and words the error)."""
    cdef dict per_db = {}
    cdef list imgs = None
    cdef long long prev_db = -1, prev_block = -1, db_id, block_no
    cdef const unsigned char[::1] view
    cdef const unsigned char *p
    for t in ordered:
        if type(t) is not tuple or len(<tuple>t) != 3:
            return None
        try:
            db_id = (<tuple>t)[0]
            block_no = (<tuple>t)[1]
        except (TypeError, OverflowError):
            return None
        image = (<tuple>t)[2]
        if not (0 <= db_id <= 0xFFFFFFFF and 0 <= block_no <= 0xFFFFFFFF):
            return None
        if db_id < prev_db or (db_id == prev_db and block_no <= prev_block):
            return None
        if type(image) is bytes:
            if <size_t>len(<bytes>image) != _WJ_BLOCK:
                return None
            p = <const unsigned char *>PyBytes_AS_STRING(image)
        else:
            try:
                view = image
            except (TypeError, ValueError, BufferError):
                return None
            if <size_t>view.shape[0] != _WJ_BLOCK:
                return None
            p = &view[0]
        if _wj_get_u32(p + 8) != block_no or _wj_get_u32(p + 12) != db_id:
            return None
        if db_id != prev_db:
            imgs = per_db.get(db_id)
            if imgs is None:
                imgs = per_db[db_id] = []
        imgs.append((block_no, image))
        prev_db = db_id
        prev_block = block_no
    return per_db


def _wj_write_images(DirectFile f, long long base, list ordered, directory,
                     Py_ssize_t per_unit, int threads):
    """Write the images of `ordered` ((db_id, block_no, image) triples, each image
    BLOCK_SIZE bytes) back to back at `base`, in units of `per_unit` images on up to
    `threads` writer threads, and fill `directory` (a writable buffer of at least 16
    bytes per triple) with their directory entries. The directory is not written."""
    cdef unsigned char[::1] dview = directory
    cdef Py_ssize_t n = len(ordered), i, start = 0
    cdef _WjPlan plan
    if dview.shape[0] < 16 * n:
        raise ValueError(f"directory of {dview.shape[0]} bytes cannot hold {n} entries")
    if per_unit < 1:
        raise ValueError(f"per_unit {per_unit} must be at least 1")
    if n == 0:
        return None
    plan = _WjPlan(n, True)
    for i in range(n):
        db_id, block_no, image = ordered[i]
        plan.ids[2 * i] = db_id
        plan.ids[2 * i + 1] = block_no
        plan.add_piece(image)
        if plan.lens[i] != _WJ_BLOCK:
            raise ValueError(f"image {i} is {plan.lens[i]} bytes, not {_WJ_BLOCK}")
        if i + 1 - start == per_unit or i + 1 == n:
            plan.end_unit(f, base + <long long>start * <long long>_WJ_BLOCK)
            start = i + 1
    plan.run(f, threads, &dview[0])
    return None


def _wj_write_runs(DirectFile f, list images, Py_ssize_t run_max, int threads):
    """Write sorted (block_no, image) pairs: consecutive blocks coalesce into units of
    at most `run_max` images, each unit one pwrite at block_no * BLOCK_SIZE, up to
    `threads` of them in flight."""
    cdef Py_ssize_t n = len(images), i, count = 0
    cdef long long block_no, start = 0, prev = -2
    cdef _WjPlan plan
    if run_max < 1:
        raise ValueError(f"run_max {run_max} must be at least 1")
    if n == 0:
        return None
    plan = _WjPlan(n, False)
    for i in range(n):
        block_no, image = images[i]
        if count and (block_no != prev + 1 or count == run_max):
            plan.end_unit(f, start * <long long>_WJ_BLOCK)
            count = 0
        if count == 0:
            start = block_no
        plan.add_piece(image)
        count += 1
        prev = block_no
    plan.end_unit(f, start * <long long>_WJ_BLOCK)
    plan.run(f, threads, NULL)
    return None
