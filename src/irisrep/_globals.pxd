# Declarations for _globals.pxi: the hot half of the Global API.

cdef class GlobalCore:
    cdef readonly BTree tree        # the database's tree (shared by every Global)
    cdef readonly bytes prefix      # encoded global name (name + 0x00)
    cdef readonly str name          # the name without "^"
    cdef object db                  # the Database: flush policy and error context
    cdef object _acquire            # db lock's bound acquire / release
    cdef object _release
    cdef object _store              # the block store (pending images count as dirty)
    cdef Py_ssize_t dirty_limit     # flush when dirty + pending blocks pass this
    cdef object _clog               # db.committer: log1() a record, sync() a ticket
    cdef object _txn                # db._txn: the calling thread's transaction state
    cdef readonly unsigned int db_id  # the database id written into every record
    cdef bint _sync_mode            # commit_mode == "sync": an autocommit waits
    cdef bint _journaling           # off: changes outside a transaction are not journaled
    cdef _after_write(self)
    cdef _closed(self)
