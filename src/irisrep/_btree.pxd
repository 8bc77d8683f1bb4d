# Declarations for _btree.pxi: block images, B+tree nodes, the tree and its cursor.
from cpython.object cimport PyObject
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t


cdef extern from "irisrep_block.h":
    int IR_BLOCK_SIZE
    int IR_BLOCK_HEADER_SIZE
    int IR_BLOCK_PAYLOAD_MAX
    int IR_BT_HEADER
    int IR_BT_LEAF
    int IR_BT_INTERNAL
    int IR_BT_OVERFLOW
    int IR_BT_FREE
    int IR_OFF_CHECKSUM
    int IR_OFF_BLOCK_NO
    int IR_OFF_DB_ID
    int IR_OFF_TYPE
    int IR_OFF_LEVEL
    int IR_OFF_COUNT
    int IR_OFF_USED
    int IR_OFF_LINK
    int IR_OFF_POSITION
    uint64_t ir_block_checksum(const unsigned char *block) nogil
    void ir_block_seal(unsigned char *block, uint32_t block_no, uint32_t db_id,
                       uint8_t type, uint8_t level, uint16_t count, uint16_t used,
                       uint32_t link, uint64_t position) nogil


cdef extern from "irisrep_endian.h":
    uint16_t ir_get_u16(const unsigned char *p) nogil
    uint32_t ir_get_u32(const unsigned char *p) nogil
    uint64_t ir_get_u64(const unsigned char *p) nogil
    void ir_put_u16(unsigned char *p, uint16_t v) nogil
    void ir_put_u32(unsigned char *p, uint32_t v) nogil
    void ir_put_u64(unsigned char *p, uint64_t v) nogil


cdef class Node:
    cdef public uint32_t block_no   # where this node lives in the database file
    cdef public int level           # 0 for a leaf; a parent is one above its children
    cdef public list keys           # sorted encoded keys; internal: keys[0] == b"" (-inf)
    cdef public list vals           # leaf: stored values (inline or overflow reference)
    cdef public list children       # internal: child block numbers, one per key
    cdef public Py_ssize_t nbytes   # payload bytes this node encodes to
    cdef public bint dirty          # changed since the last flush cycle
    cdef public bint ref            # second-chance bit for the pool's eviction clock
    cdef public uint64_t position   # journal position of the last change (0: none)
    # Search accelerator (see _fp_build): 8-byte big-endian fingerprints of the keys
    # after their common prefix, contiguous so a search touches one array instead of
    # one bytes object per probe. Valid only while fp_n >= 0; any change drops it.
    cdef uint64_t *fp
    cdef uint16_t *fp_len           # key lengths after the prefix: ties without a memcmp
    cdef uint16_t *fp_vlen          # leaf: value lengths (a split sizes halves from these)
    cdef bint fp_vlen_ok            # fp_vlen is filled (a leaf's build leaves it to _split)
    cdef uint32_t *fp_child         # internal: children[1:] as block numbers (else NULL)
    cdef uint32_t fp_child0         # internal: children[0] while the fingerprints are valid
    cdef Py_ssize_t fp_n
    cdef Py_ssize_t fp_base         # 1 for internal nodes (keys[0] is -inf), 0 for leaves
    cdef bytes fp_prefix            # the common prefix of keys[fp_base:]
    cdef Py_ssize_t fp_lcp          # its length
    # A copy of it inside the node when short (most are): a search then reads no
    # other object before the fingerprints (each one a likely cache miss).
    cdef unsigned char fp_pfx[32]  # FP_PREFIX_INLINE in _btree.pxi
    cdef int fp_reads               # searches since the last change
    cdef Py_ssize_t fp_cap          # allocated slots in fp, fp_len and fp_vlen
    cdef void _changed(self)
    cdef void _fp_build(self)
    cdef bint _fp_alloc(self, Py_ssize_t cap)
    cdef void _fp_split(self, Node right, Py_ssize_t left_n, Py_ssize_t right_from)
    cdef void _fp_insert(self, Py_ssize_t i, bytes key, Py_ssize_t vlen, uint32_t child)


cdef class BTree:
    cdef public object store        # BlockStore: allocate/free/read_image/put_image
    cdef public uint32_t db_id
    cdef public uint32_t root       # root block number
    cdef readonly dict pool         # block_no -> Node, bounded by capacity (clean ones)
    cdef public dict dirty          # block_no -> Node changed since the last flush
    cdef public Py_ssize_t capacity  # pool size in blocks
    cdef public uint64_t mod_count  # bumped by every structural or value change
    cdef public bint closed         # set by Database.close(); every API call checks it
    cdef public bint protected      # a mirrored database on a non-primary: writes refused
    # The leaf of the last set() and its key range [lo, hi) (None: unbounded), so that
    # keys arriving in order skip the descent. Trusted only while the leaf is dirty
    # (never evicted, never freed), the root and the tree's shape are unchanged.
    cdef Node _hint
    cdef bytes _hint_lo, _hint_hi
    cdef uint32_t _hint_root
    cdef uint64_t _hint_shape
    # Record the hint at the next descent (see set): keys seemed to arrive in order.
    cdef bint _hint_want
    cdef Node _last_leaf            # the leaf of the last set() (same-leaf detection)
    cdef uint64_t _shape            # bumped by every split, merge, free and range kill
    # The pool again as a table by block number of borrowed Node pointers (the dict
    # holds the references): _frames[b] is pool[b] or NULL. Every change to the pool
    # goes through _frame_set/_frame_clear too (pool is readonly outside for this).
    cdef PyObject **_frames
    cdef Py_ssize_t _nframes
    cpdef object get(self, bytes key)
    cpdef object set(self, bytes key, bytes value, uint64_t position=*, bint want_old=*)
    cpdef object load_value(self, bytes stored)
    cdef Node _get(self, object block_no)
    cdef Node _get_b(self, uint32_t block_no)
    cdef Node _child(self, Node node, Py_ssize_t i)
    cdef int _frame_set(self, uint32_t block_no, Node node) except -1
    cdef void _frame_clear(self, uint32_t block_no)
    cdef bytes _store_value(self, bytes value)
    cdef void _touch_dirty(self, Node node)
    cdef Node _new_node(self, int level)
    cdef void _free_node(self, Node node)
    cdef object _split(self, Node node, bint appending)
    cdef int _split_up(self, Node leaf, bytes key, Py_ssize_t i) except -1
    cdef void _free_value(self, bytes stored)
    cdef void _free_subtree(self, uint32_t block_no)
    cdef bint _kill_range(self, Node node, bytes lo, bytes hi)
    cdef void _merge_children(self, Node parent, Py_ssize_t i, Py_ssize_t last)


cdef class Cursor:
    cdef BTree tree
    cdef list path                  # [(internal Node, child index)] from the root down
    cdef Node leaf
    cdef Py_ssize_t pos
    cdef uint64_t mod_count         # tree.mod_count when positioned; stale -> re-seek
    cdef bytes last_key
    cdef bint reverse
    cdef bint done
    cdef _position(self, bytes key, bint inclusive)
    cdef _settle(self)
    cdef _revalidate(self)
