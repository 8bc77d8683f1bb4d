# _globals.pxi: the hot half of the Global API (get, set, contains) in Cython.
#
# Owns nothing new: it is `Global.__getitem__/__setitem__/get/__contains__` without
# the Python frames, so that a point read or write crosses into C once. Promises the
# same as the Python API: the key and the value are encoded (and so validated)
# before the lock is taken and before anything changes; the database lock is held
# for the tree call and the flush decision; a closed database raises ClosedError.
from irisrep.errors import ProtectError as _ProtectError, UndefinedError as _UndefinedError


cdef inline object _tl_attr(dict d, object st, str name):
    """st.name for a threading.local st whose own dict is d (a plain attribute)."""
    cdef object v = d.get(name)
    return getattr(st, name) if v is None else v


cdef class GlobalCore:
    """Base of irisrep.database.Global; see there for the whole API."""

    def __init__(self, db, name):
        self.db = db
        self.tree = db.tree
        self.prefix = encode_name(name)
        self.name = name[1:] if name.startswith("^") else name
        self._acquire = db._lock.acquire
        self._release = db._lock.release
        self._store = db.store
        self.dirty_limit = db.dirty_limit
        self._clog = db.committer
        self._txn = db._txn
        self.db_id = db.db_id
        self._db_id_obj = db.db_id
        self._sync_mode = db.commit_mode == "sync"
        self._journaling = db.journaling

    cdef _closed(self):
        raise self.db._closed_error()

    cdef _after_write(self):
        # Past the pool's dirty share, wake the write daemon (and, past the hard
        # limit, wait for it): dirty nodes are never evicted, so this bounds the pool.
        if len(self.tree.dirty) + len(self._store.pending) > self.dirty_limit:
            self.db._dirty_over_limit()

    def __getitem__(self, subs):
        if type(subs) is not tuple:
            subs = (subs,)
        cdef bytes key = kc_encode_key(self.prefix, <tuple>subs)
        cdef object stored
        self._acquire()
        try:
            if self.tree.closed:
                self._closed()
            stored = self.tree.get(key)
            if stored is None:
                raise _UndefinedError(f"<UNDEFINED> {format_reference(self.name, subs)}")
            stored = self.tree.load_value(<bytes>stored)
        finally:
            self._release()
        return kc_decode_value(<const unsigned char *>PyBytes_AS_STRING(stored),
                               PyBytes_GET_SIZE(stored))

    def get(self, subs, default=None):
        """`$GET`: the value, or default when the node has none."""
        if type(subs) is not tuple:
            subs = (subs,)
        cdef bytes key = kc_encode_key(self.prefix, <tuple>subs)
        cdef object stored
        self._acquire()
        try:
            if self.tree.closed:
                self._closed()
            stored = self.tree.get(key)
            if stored is None:
                return default
            stored = self.tree.load_value(<bytes>stored)
        finally:
            self._release()
        return kc_decode_value(<const unsigned char *>PyBytes_AS_STRING(stored),
                               PyBytes_GET_SIZE(stored))

    def __setitem__(self, subs, value):
        if type(subs) is not tuple:
            subs = (subs,)
        # Both encodings first: a bad subscript or value raises before any change.
        cdef bytes key = kc_encode_key(self.prefix, <tuple>subs)
        cdef bytes encoded = kc_encode_value(value)
        cdef object old, st, recs
        cdef dict d
        cdef bytes before
        cdef long long ticket = 0
        cdef uint64_t txn
        cdef int level, flags
        cdef bint journal
        self._acquire()
        try:
            if self.tree.closed:
                self._closed()
            if self.tree.protected:
                raise _ProtectError(f"<PROTECT> {format_reference(self.name, subs)}: this "
                                    f"database is read-only here (not the primary)")
            st = self._txn
            # One thread-local lookup instead of three: its own dict, then the
            # attributes from it (the class's default when not set in this thread).
            d = st.__dict__
            level = _tl_attr(d, st, "level")
            journal = level or self._journaling
            # The before-image (rule 5) comes back from the same descent that sets.
            old = self.tree.set(key, encoded, 0, journal)
            # Journaled in apply order while the lock is held (a plain 7-tuple record,
            # docs/journal-format.md); synced after it is released, so concurrent
            # committers share one fdatasync. In a transaction, TCOMMIT syncs.
            if journal:
                # Encoded straight into the committer's pending payload (and, in a
                # transaction, into its record list for TROLLBACK): no record object.
                before = b"" if old is None else <bytes>old
                flags = 0 if old is None else 1
                txn = _tl_attr(d, st, "txn") if level else 0
                ticket = self._clog.log_set(flags, self.db_id, txn, key, encoded, before)
                if level:
                    recs = _tl_attr(d, st, "records")
                    if type(recs) is RecordList:
                        (<RecordList>recs).put_set(flags, self.db_id, txn, key, encoded,
                                                   before)
                    else:
                        recs.append((1, flags, self._db_id_obj, txn, key, encoded, before))
                    ticket = 0
                elif not self._sync_mode:
                    ticket = 0
            self._after_write()
        finally:
            self._release()
        if ticket:
            (<object>self._clog).sync(ticket)

    def __delitem__(self, subs):
        """KILL: the node and all its descendants (no error when there is none)."""
        # Here rather than in Global: a Python __delitem__ beside this class's
        # __setitem__ would make every `g[k] = v` dispatch through the generic slot
        # (a method lookup and an argument tuple per call).
        self.kill(subs)

    def __contains__(self, subs):
        """True when the node has a value ($DATA 1 or 11)."""
        if type(subs) is not tuple:
            subs = (subs,)
        cdef bytes key = kc_encode_key(self.prefix, <tuple>subs)
        self._acquire()
        try:
            if self.tree.closed:
                self._closed()
            return self.tree.get(key) is not None
        finally:
            self._release()

    def _set_journaling(self, bint on):
        """Database.set_journaling: this global's writes follow the new setting
        (called under the database lock, at a clean point)."""
        self._journaling = on
