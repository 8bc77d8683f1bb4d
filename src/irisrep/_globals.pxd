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
    cdef object _log_set            # db._log_set: journal a SET, returns a ticket
    cdef object _commit             # db._commit: wait until a ticket is durable
    cdef _after_write(self)
    cdef _closed(self)
