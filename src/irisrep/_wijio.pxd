# _wijio declarations: staged O_DIRECT writes for the write image journal (_wijio.pxi).
# Every name is prefixed _wj / wj_: all topics share one namespace.
from libc.stdint cimport uint32_t, uint64_t


cdef extern from "irisrep_wij.h":
    uint64_t _wj_entry_checksum "ir_wij_entry_checksum" (
        uint32_t db_id, uint32_t block_no, const unsigned char *image) nogil


cdef struct _WjJob:
    # One staged write: `nunits` units, unit u = pieces [first[u], first[u + 1]) copied
    # back to back into a worker's aligned buffer, then written at offs[u].
    int fd
    const long long *offs
    const Py_ssize_t *first
    Py_ssize_t nunits
    const unsigned char **src
    const size_t *lens
    # NULL, or per piece (db_id, block_no): the worker writes piece p's 16-byte WIJ
    # directory entry (db_id, block_no, entry checksum of the copy) at dir + 16 * p.
    const uint32_t *ids
    unsigned char *dir
    Py_ssize_t next  # next unit to take (atomic)
    int err  # first errno (atomic); workers stop taking units once it is set


cdef struct _WjWorker:
    _WjJob *job
    unsigned char *buf
    size_t cap
