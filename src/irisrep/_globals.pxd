# Declarations for _globals.pxi: the hot half of the Global API.
from libc.stdint cimport uint32_t, uint64_t

cdef class CommitLog:
    # The per-change half of commit.Committer (its base, implemented in _journal.pxi):
    # records logged under the database lock, in apply order, ENCODED at once into
    # journal payload chunks (each one frame's worth) that wait to be written.
    cdef unsigned char *_buf        # the open chunk: encoded records back to back
    cdef Py_ssize_t _used, _cap     # its bytes and capacity
    cdef Py_ssize_t _nrec           # its records
    cdef list _payloads             # sealed chunks (bytes), oldest first
    cdef list _counts               # records in each sealed chunk
    cdef Py_ssize_t _group_max      # records per chunk (JOURNAL_GROUP_COMMIT_RECORDS_MAX)
    cdef public long long _logged   # tickets: count of records logged so far
    cdef public object _failure     # the failed journal write or sync, or None
    cdef int _put(self, const void *rec) except -1
    cdef int _seal(self) except -1
    cdef long long log_set(self, int flags, uint32_t db_id, uint64_t txn, bytes key,
                           bytes value, bytes before) except -1


cdef class RecordList:
    # A transaction's records (for TROLLBACK), encoded: one memcpy per record instead
    # of a tuple per record. Sequence enough for database.py: len, [a:b], del [a:],
    # extend, append, iteration (decoded journalcodec.Record tuples).
    cdef unsigned char *_buf
    cdef Py_ssize_t _used, _cap
    cdef Py_ssize_t *_off           # start of each record in _buf
    cdef Py_ssize_t _n, _ocap
    cdef int _put(self, const void *rec) except -1
    cdef int put_set(self, int flags, uint32_t db_id, uint64_t txn, bytes key,
                     bytes value, bytes before) except -1
    cdef _bounds(self, object idx, Py_ssize_t *a, Py_ssize_t *b)


cdef class GlobalCore:
    cdef readonly BTree tree        # the database's tree (shared by every Global)
    cdef readonly bytes prefix      # encoded global name (name + 0x00)
    cdef readonly str name          # the name without "^"
    cdef object db                  # the Database: flush policy and error context
    cdef object _acquire            # db lock's bound acquire / release
    cdef object _release
    cdef object _store              # the block store (pending images count as dirty)
    cdef Py_ssize_t dirty_limit     # flush when dirty + pending blocks pass this
    cdef CommitLog _clog            # db.committer: log1c() a record, sync() a ticket
    cdef object _txn                # db._txn: the calling thread's transaction state
    cdef readonly unsigned int db_id  # the database id written into every record
    cdef object _db_id_obj          # db_id as an int object (one per record otherwise)
    cdef bint _sync_mode            # commit_mode == "sync": an autocommit waits
    cdef bint _journaling           # off: changes outside a transaction are not journaled
    cdef _after_write(self)
    cdef _closed(self)
