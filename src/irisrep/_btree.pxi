# _btree.pxi: block images, B+tree nodes, the tree over a block store, and cursors.
#
# Owns: the leaf/internal/overflow block formats of include/irisrep_block.h, node
# split and merge, range kill, ordered seeks and a bounded pool of decoded nodes.
# Promises: every image read is verified (checksum, own block number, database id,
# type, structure) before a byte of it is used, and a failure raises
# BlockCorruptError naming file, block, expected and found; all leaves are at
# level 0 and every non-root node holds at least one entry; keys are compared as
# bytes, so the key codec's encoding decides the order.
#
# In memory a node keeps its entries in Python lists, beside C arrays of search
# fingerprints (with value lengths and, for internal nodes, child block numbers),
# and the pool's dict is mirrored by a frame table of borrowed pointers by block
# number: a random descent then reads no int object, dict or separator key.
#
# The tree never writes a file itself: it marks nodes dirty and hands images to the
# block store, and a flush cycle (Database) writes a consistent set of them. That is
# the seam the write image journal hooks into.
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.list cimport PyList_Append, PyList_GET_SIZE, PyList_New
from cpython.object cimport PyObject
cimport cython
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memcmp, memcpy, memmove, memset

from irisrep.constants import (
    INLINE_VALUE_BYTES_MAX as _INLINE_VALUE_BYTES_MAX,
    MERGE_FILL_BYTES_MAX as _MERGE_FILL_BYTES_MAX,
)
from irisrep.errors import BlockCorruptError as _BlockCorruptError

DEF ENTRY_OVERHEAD = 6          # u16 key length + u32 value length or child number
DEF OVERFLOW_TAG = 5            # stored-value tag: a reference to an overflow chain
DEF OVERFLOW_REF_BYTES = 9      # tag + u32 first block + u32 total length
DEF SPLIT_APPEND_PERCENT = 90   # left share of an in-order split (see _split)
DEF FP_MIN_KEYS = 8             # smaller nodes search their keys directly
DEF FP_READS_BEFORE_BUILD = 2   # a node written on every call never pays for a build
DEF FP_PREFIX_INLINE = 32       # bytes of Node.fp_pfx (_btree.pxd)

cdef Py_ssize_t INLINE_MAX = _INLINE_VALUE_BYTES_MAX
cdef Py_ssize_t MERGE_MAX = _MERGE_FILL_BYTES_MAX
cdef bytes MINUS_INF = b""


cdef extern from "Python.h":
    void PyObject_GC_UnTrack(void *op)
    bint _PyObject_GC_IS_TRACKED "PyObject_GC_IsTracked"(object op)
    ctypedef struct PyListObject:
        PyObject **ob_item
    void Py_SET_SIZE(object o, Py_ssize_t size)


cdef list _list_cut(list lst, Py_ssize_t i):
    """lst[i:] as a new list, removed from lst: the references move, untouched.

    A slice and a del would incref and decref every moved object, each one a likely
    cache miss on a large pool; here only the pointers are copied.
    """
    cdef Py_ssize_t n = PyList_GET_SIZE(lst)
    cdef list out = PyList_New(n - i)
    memcpy((<PyListObject *>out).ob_item, (<PyListObject *>lst).ob_item + i,
           (n - i) * sizeof(PyObject *))
    Py_SET_SIZE(lst, i)                      # lst no longer owns them: out does
    return out


cdef inline int _list_insert(list lst, Py_ssize_t i, object item) except -1:
    """lst.insert(i, item) with one memmove of the tail.

    CPython's own insert moves the tail one pointer at a time; on a random load the
    two leaf lists' tails (~100 pointers each) were a tenth of a SET.
    """
    cdef Py_ssize_t n
    cdef PyObject **items
    PyList_Append(lst, item)                 # grows the list (amortised), owns a ref
    n = PyList_GET_SIZE(lst)
    if i < n - 1:
        items = (<PyListObject *>lst).ob_item
        memmove(items + i + 1, items + i, (n - 1 - i) * sizeof(PyObject *))
        items[i] = <PyObject *>item          # the reference taken by the append
    return 0


cdef inline void _untrack(Node node):
    """Take a node's lists out of the cyclic garbage collector's sight.

    They hold only bytes or ints, so they can never be part of a cycle, and with a
    million keys in the pool the collector's full passes over them cost ~10 % of a
    write-heavy run. Called as nodes enter the pool or change; a list made later
    (a slice in a split) is simply tracked until its node's next touch.
    """
    if node.keys is not None and _PyObject_GC_IS_TRACKED(node.keys):
        PyObject_GC_UnTrack(<void *>node.keys)
    if node.vals is not None and _PyObject_GC_IS_TRACKED(node.vals):
        PyObject_GC_UnTrack(<void *>node.vals)
    if node.children is not None and _PyObject_GC_IS_TRACKED(node.children):
        PyObject_GC_UnTrack(<void *>node.children)


cdef inline int _cmp(bytes a, bytes b):
    """Bytewise comparison; a shorter key that is a prefix of the other sorts first."""
    cdef Py_ssize_t la = PyBytes_GET_SIZE(a)
    cdef Py_ssize_t lb = PyBytes_GET_SIZE(b)
    cdef int c = memcmp(PyBytes_AS_STRING(a), PyBytes_AS_STRING(b), la if la < lb else lb)
    if c != 0:
        return c
    return (la > lb) - (la < lb)


cdef inline Py_ssize_t _bisect_left(list keys, bytes key):
    cdef Py_ssize_t lo = 0, hi = len(keys), mid
    while lo < hi:
        mid = (lo + hi) >> 1
        if _cmp(<bytes>keys[mid], key) < 0:
            lo = mid + 1
        else:
            hi = mid
    return lo


cdef inline Py_ssize_t _bisect_right(list keys, bytes key):
    cdef Py_ssize_t lo = 0, hi = len(keys), mid
    while lo < hi:
        mid = (lo + hi) >> 1
        if _cmp(key, <bytes>keys[mid]) < 0:
            hi = mid
        else:
            lo = mid + 1
    return lo


cdef inline uint64_t _fingerprint(const unsigned char *p, Py_ssize_t n):
    """The first 8 bytes at p (zero-padded) as a big-endian integer: order-preserving.

    a < b implies fingerprint(a) <= fingerprint(b); equal fingerprints need a full
    comparison (a shorter key padded with zeros ties with one that has zeros there).
    """
    cdef uint64_t v = 0
    cdef Py_ssize_t i
    cdef Py_ssize_t m = n if n < 8 else 8
    for i in range(m):
        v |= (<uint64_t>p[i]) << (56 - 8 * i)
    return v


cdef Py_ssize_t _node_search(Node node, bytes key, bint right, int *exact=NULL):
    """bisect_left (right=False) or bisect_right (right=True) of key in node.keys.

    With `exact`, a left search also says whether keys[result] == key when the
    fingerprints alone decide it (1 equal, 0 not), else -1: the caller compares.
    """
    cdef Py_ssize_t n, lo, hi, mid, lcp, kl, base
    cdef uint64_t kf
    cdef int c
    cdef const unsigned char *kp
    cdef const unsigned char *pp
    if node.fp_n < 0:
        n = len(node.keys)
        node.fp_reads += 1
        if n >= FP_MIN_KEYS and node.fp_reads >= FP_READS_BEFORE_BUILD:
            node._fp_build()
    if exact != NULL:
        exact[0] = -1
    if node.fp_n < 0:
        return _bisect_right(node.keys, key) if right else _bisect_left(node.keys, key)
    base = node.fp_base
    # Valid fingerprints cover keys[base:] exactly: no need to touch the list here.
    n = node.fp_n + base
    if base == 1 and PyBytes_GET_SIZE(key) == 0:
        return 1 if right else 0             # the -inf key itself (never searched for)
    lcp = node.fp_lcp
    kl = PyBytes_GET_SIZE(key)
    kp = <const unsigned char *>PyBytes_AS_STRING(key)
    # Not a conditional expression: some Cython versions assign the array itself to
    # the temporary, which C refuses ("assignment to expression with array type").
    if lcp <= FP_PREFIX_INLINE:
        pp = &node.fp_pfx[0]
    else:
        pp = <const unsigned char *>PyBytes_AS_STRING(node.fp_prefix)
    c = memcmp(kp, pp, kl if kl < lcp else lcp)
    if c < 0 or (c == 0 and kl < lcp):
        if exact != NULL:
            exact[0] = 0
        return base                          # below every key after -inf
    if c > 0:
        if exact != NULL:
            exact[0] = 0
        return n                             # above every key
    kf = _fingerprint(kp + lcp, kl - lcp)
    # lo: first fingerprint >= kf; hi: first fingerprint > kf; only [lo, hi) can tie.
    lo, hi = 0, node.fp_n
    while lo < hi:
        mid = (lo + hi) >> 1
        if node.fp[mid] < kf:
            lo = mid + 1
        else:
            hi = mid
    hi = lo
    while hi < node.fp_n and node.fp[hi] == kf:
        hi += 1
    # Suffixes of at most 8 bytes are wholly inside the fingerprint: equal
    # fingerprints then order by length alone, without touching the key objects.
    if kl - lcp <= 8:
        while lo < hi:
            mid = (lo + hi) >> 1
            if node.fp_len[mid] <= 8:
                c = (node.fp_len[mid] > kl - lcp) - (node.fp_len[mid] < kl - lcp)
            else:
                c = 1                        # longer suffix with the same first 8 bytes
            if c < 0 or (right and c == 0):
                lo = mid + 1
            else:
                hi = mid
        if exact != NULL:
            exact[0] = (lo < node.fp_n and node.fp[lo] == kf
                        and node.fp_len[lo] == kl - lcp)
        return lo + base
    lo += base
    hi += base
    while lo < hi:
        mid = (lo + hi) >> 1
        c = _cmp(<bytes>node.keys[mid], key)
        if c < 0 or (right and c == 0):
            lo = mid + 1
        else:
            hi = mid
    return lo


cdef inline Py_ssize_t _child_index(Node node, bytes key):
    """Index of the child whose range holds key: the last i with keys[i] <= key."""
    cdef Py_ssize_t i = _node_search(node, key, True) - 1
    return i if i > 0 else 0


def _corrupt(path, block_no, what, expected, found):
    return _BlockCorruptError(
        f"{path}: block {block_no}: {what}: expected {expected!r}, found {found!r}",
        path=path, block=block_no, expected=expected, found=found)


def verify_image(bytes image, uint32_t block_no, uint32_t db_id, path):
    """Check an 8 KiB image's checksum and that it names itself block_no of db_id.

    Raises BlockCorruptError naming the file, block, expected and found values.
    Returns the block type.
    """
    if PyBytes_GET_SIZE(image) != IR_BLOCK_SIZE:
        raise _corrupt(path, block_no, "short block", IR_BLOCK_SIZE, PyBytes_GET_SIZE(image))
    cdef const unsigned char *p = <const unsigned char *>PyBytes_AS_STRING(image)
    cdef uint64_t stored = ir_get_u64(p + IR_OFF_CHECKSUM)
    cdef uint64_t actual = ir_block_checksum(p)
    if stored != actual:
        raise _corrupt(path, block_no, "checksum mismatch",
                       f"{stored:#018x}", f"{actual:#018x}")
    if ir_get_u32(p + IR_OFF_BLOCK_NO) != block_no:
        raise _corrupt(path, block_no, "block names another block number (misdirected write)",
                       block_no, ir_get_u32(p + IR_OFF_BLOCK_NO))
    if ir_get_u32(p + IR_OFF_DB_ID) != db_id:
        raise _corrupt(path, block_no, "block belongs to another database",
                       db_id, ir_get_u32(p + IR_OFF_DB_ID))
    return p[IR_OFF_TYPE]


def seal_image(bytes payload, uint32_t block_no, uint32_t db_id, int btype, int level=0,
               int count=0, uint32_t link=0xFFFFFFFF, uint64_t position=0):
    """Build a sealed 8 KiB image from a payload (header, overflow and free blocks)."""
    cdef Py_ssize_t n = PyBytes_GET_SIZE(payload)
    if n > IR_BLOCK_PAYLOAD_MAX:
        raise ValueError(f"payload of {n} bytes exceeds {IR_BLOCK_PAYLOAD_MAX}")
    cdef bytes image = PyBytes_FromStringAndSize(NULL, IR_BLOCK_SIZE)
    cdef unsigned char *p = <unsigned char *>PyBytes_AS_STRING(image)
    memset(p, 0, IR_BLOCK_SIZE)
    memcpy(p + IR_BLOCK_HEADER_SIZE, PyBytes_AS_STRING(payload), n)
    ir_block_seal(p, block_no, db_id, <uint8_t>btype, <uint8_t>level, <uint16_t>count,
                  <uint16_t>n, link, position)
    return image


def image_fields(bytes image):
    """(type, level, count, used, link, position) of a verified image."""
    cdef const unsigned char *p = <const unsigned char *>PyBytes_AS_STRING(image)
    return (p[IR_OFF_TYPE], p[IR_OFF_LEVEL], ir_get_u16(p + IR_OFF_COUNT),
            ir_get_u16(p + IR_OFF_USED), ir_get_u32(p + IR_OFF_LINK),
            ir_get_u64(p + IR_OFF_POSITION))


def image_payload(bytes image):
    """The `used` payload bytes of a verified image."""
    cdef const unsigned char *p = <const unsigned char *>PyBytes_AS_STRING(image)
    cdef uint16_t used = ir_get_u16(p + IR_OFF_USED)
    if used > IR_BLOCK_PAYLOAD_MAX:
        used = IR_BLOCK_PAYLOAD_MAX
    return image[IR_BLOCK_HEADER_SIZE:IR_BLOCK_HEADER_SIZE + used]


@cython.no_gc
cdef class Node:
    """A decoded leaf or internal block held in the buffer pool.

    Not tracked by the cyclic GC (no_gc): it refers only to lists of bytes or ints
    and a bytes prefix, none of which can lead back to it.
    """

    def __init__(self, uint32_t block_no, int level):
        self.block_no = block_no
        self.level = level
        self.keys = []
        self.vals = [] if level == 0 else None
        self.children = [] if level > 0 else None
        self.nbytes = 0
        self.dirty = False
        self.ref = True
        self.position = 0
        self.fp = NULL
        self.fp_len = NULL
        self.fp_vlen = NULL
        self.fp_child = NULL
        self.fp_n = -1

    def __dealloc__(self):
        free(self.fp)
        free(self.fp_len)
        free(self.fp_vlen)
        free(self.fp_child)

    cdef void _changed(self):
        """Keys changed: the fingerprints are stale."""
        self.fp_n = -1
        self.fp_reads = 0

    cdef void _fp_insert(self, Py_ssize_t i, bytes key, Py_ssize_t vlen, uint32_t child):
        """keys[i] (a leaf: with a value of vlen bytes; internal: with child) was just
        inserted: keep the fingerprints valid if that is cheap.

        A key that starts with the common prefix slots its fingerprint in with a
        memmove (the prefix stays common to all, which is all a search needs); one
        that does not (only possible at either end) drops the fingerprints.
        """
        cdef Py_ssize_t j = i - self.fp_base
        cdef Py_ssize_t lcp = PyBytes_GET_SIZE(self.fp_prefix) if self.fp_n >= 0 else 0
        cdef uint64_t *nfp
        cdef uint16_t *nlen
        cdef uint16_t *nvlen
        cdef uint32_t *nchild
        if self.fp_n < 0:
            return
        if (j < 0 or j > self.fp_n or PyBytes_GET_SIZE(key) < lcp
                or memcmp(PyBytes_AS_STRING(key), PyBytes_AS_STRING(self.fp_prefix), lcp) != 0):
            # Outside the common prefix (possible only at either end): the prefix
            # would shrink, so drop the fingerprints.
            self._changed()
            return
        if self.fp_n + 1 > self.fp_cap:
            nfp = <uint64_t *>realloc(self.fp, (self.fp_cap * 2) * sizeof(uint64_t))
            if nfp == NULL:
                self._changed()
                return
            self.fp = nfp
            nlen = <uint16_t *>realloc(self.fp_len, (self.fp_cap * 2) * sizeof(uint16_t))
            if nlen == NULL:
                self._changed()
                return
            self.fp_len = nlen
            nvlen = <uint16_t *>realloc(self.fp_vlen, (self.fp_cap * 2) * sizeof(uint16_t))
            if nvlen == NULL:
                self._changed()
                return
            self.fp_vlen = nvlen
            if self.fp_child != NULL:
                nchild = <uint32_t *>realloc(self.fp_child,
                                             (self.fp_cap * 2) * sizeof(uint32_t))
                if nchild == NULL:
                    self._changed()
                    return
                self.fp_child = nchild
            self.fp_cap *= 2
        memmove(self.fp + j + 1, self.fp + j, (self.fp_n - j) * sizeof(uint64_t))
        memmove(self.fp_len + j + 1, self.fp_len + j, (self.fp_n - j) * sizeof(uint16_t))
        memmove(self.fp_vlen + j + 1, self.fp_vlen + j, (self.fp_n - j) * sizeof(uint16_t))
        self.fp_vlen[j] = <uint16_t>vlen
        if self.fp_child != NULL:
            memmove(self.fp_child + j + 1, self.fp_child + j,
                    (self.fp_n - j) * sizeof(uint32_t))
            self.fp_child[j] = child
        self.fp[j] = _fingerprint(<const unsigned char *>PyBytes_AS_STRING(key) + lcp,
                                  PyBytes_GET_SIZE(key) - lcp)
        self.fp_len[j] = <uint16_t>(PyBytes_GET_SIZE(key) - lcp)
        self.fp_n += 1

    cdef void _fp_build(self):
        cdef Py_ssize_t base = 0 if self.level == 0 else 1
        cdef Py_ssize_t n = len(self.keys) - base, i, lcp, la, lb
        cdef bytes first, last, k
        cdef const unsigned char *a
        cdef const unsigned char *b
        if n <= 0:
            return
        first = <bytes>self.keys[base]
        last = <bytes>self.keys[base + n - 1]
        # Keys are sorted, so the common prefix of all is that of the first and last.
        la = PyBytes_GET_SIZE(first)
        lb = PyBytes_GET_SIZE(last)
        a = <const unsigned char *>PyBytes_AS_STRING(first)
        b = <const unsigned char *>PyBytes_AS_STRING(last)
        lcp = 0
        while lcp < la and lcp < lb and a[lcp] == b[lcp]:
            lcp += 1
        if not self._fp_alloc(n + 32):
            return
        for i in range(n):
            k = <bytes>self.keys[base + i]
            self.fp[i] = _fingerprint(<const unsigned char *>PyBytes_AS_STRING(k) + lcp,
                                      PyBytes_GET_SIZE(k) - lcp)
            self.fp_len[i] = <uint16_t>(PyBytes_GET_SIZE(k) - lcp)
            if self.level > 0:
                self.fp_vlen[i] = 0
                self.fp_child[i] = <uint32_t>self.children[base + i]
        if self.level > 0:
            self.fp_child0 = <uint32_t>self.children[0]
        # A leaf's value lengths are filled by its first split (_split), not here: a
        # build serves searches, and reading every value object would cost a node
        # that is only read (a GET load) a cache miss per entry for nothing.
        self.fp_vlen_ok = self.level > 0
        self.fp_prefix = first[:lcp]
        self.fp_lcp = lcp
        if lcp <= FP_PREFIX_INLINE:
            memcpy(self.fp_pfx, a, lcp)
        self.fp_base = base
        self.fp_n = n

    cdef bint _fp_alloc(self, Py_ssize_t cap):
        """Fresh (invalid) fingerprint arrays of cap slots; False (none) without memory."""
        free(self.fp)
        free(self.fp_len)
        free(self.fp_vlen)
        free(self.fp_child)
        self.fp_n = -1
        self.fp_cap = cap
        self.fp = <uint64_t *>malloc(cap * sizeof(uint64_t))
        self.fp_len = <uint16_t *>malloc(cap * sizeof(uint16_t))
        self.fp_vlen = <uint16_t *>malloc(cap * sizeof(uint16_t))
        # Internal nodes only: the descent reads child numbers from here.
        self.fp_child = <uint32_t *>malloc(cap * sizeof(uint32_t)) if self.level > 0 else NULL
        if (self.fp == NULL or self.fp_len == NULL or self.fp_vlen == NULL
                or (self.level > 0 and self.fp_child == NULL)):
            free(self.fp)
            free(self.fp_len)
            free(self.fp_vlen)
            free(self.fp_child)
            self.fp = NULL
            self.fp_len = NULL
            self.fp_vlen = NULL
            self.fp_child = NULL
            self.fp_cap = 0
            return False
        return True

    cdef void _fp_split(self, Node right, Py_ssize_t left_n, Py_ssize_t right_from):
        """Hand fingerprints [right_from:] to right (a new sibling) and keep [:left_n].

        A split keeps both halves' fingerprints valid instead of rebuilding them: a
        rebuild reads every key object (a cache miss each) and a split comes every
        few dozen inserts of a random load. The common prefix of the whole node is
        still common to each half (maybe not the longest, which a search does not
        need). An internal split drops the separator's slot between the two.
        """
        cdef Py_ssize_t m = self.fp_n - right_from
        if self.fp_n < 0 or m < 0 or not right._fp_alloc(m + 32):
            self._changed()
            right._changed()
            return
        memcpy(right.fp, self.fp + right_from, m * sizeof(uint64_t))
        memcpy(right.fp_len, self.fp_len + right_from, m * sizeof(uint16_t))
        memcpy(right.fp_vlen, self.fp_vlen + right_from, m * sizeof(uint16_t))
        if self.fp_child != NULL:
            memcpy(right.fp_child, self.fp_child + right_from, m * sizeof(uint32_t))
            # The separator's child (slot right_from - 1) heads the right node.
            right.fp_child0 = self.fp_child[right_from - 1]
        right.fp_prefix = self.fp_prefix
        right.fp_lcp = self.fp_lcp
        memcpy(right.fp_pfx, self.fp_pfx, FP_PREFIX_INLINE)
        right.fp_base = self.fp_base
        right.fp_vlen_ok = self.fp_vlen_ok
        right.fp_reads = 0
        right.fp_n = m
        self.fp_n = left_n

    def encode(self, uint32_t db_id):
        """The sealed 8 KiB image of this node."""
        cdef bytes image = PyBytes_FromStringAndSize(NULL, IR_BLOCK_SIZE)
        cdef unsigned char *p = <unsigned char *>PyBytes_AS_STRING(image)
        cdef unsigned char *w = p + IR_BLOCK_HEADER_SIZE
        cdef Py_ssize_t i, n = len(self.keys), kl, vl
        cdef bytes k, v
        assert self.nbytes <= IR_BLOCK_PAYLOAD_MAX, "node overflows its block"
        memset(p, 0, IR_BLOCK_SIZE)
        for i in range(n):
            k = <bytes>self.keys[i]
            kl = PyBytes_GET_SIZE(k)
            ir_put_u16(w, <uint16_t>kl)
            memcpy(w + 2, PyBytes_AS_STRING(k), kl)
            w += 2 + kl
            if self.level == 0:
                v = <bytes>self.vals[i]
                vl = PyBytes_GET_SIZE(v)
                ir_put_u32(w, <uint32_t>vl)
                memcpy(w + 4, PyBytes_AS_STRING(v), vl)
                w += 4 + vl
            else:
                ir_put_u32(w, <uint32_t>self.children[i])
                w += 4
        assert w - (p + IR_BLOCK_HEADER_SIZE) == self.nbytes, "node byte count drifted"
        ir_block_seal(p, self.block_no, db_id,
                      IR_BT_LEAF if self.level == 0 else IR_BT_INTERNAL,
                      <uint8_t>self.level, <uint16_t>n, <uint16_t>self.nbytes,
                      0xFFFFFFFF, self.position)
        return image

    def __repr__(self):
        return (f"Node(block={self.block_no}, level={self.level}, entries={len(self.keys)}, "
                f"bytes={self.nbytes}, dirty={self.dirty})")


def decode_node(bytes image, uint32_t block_no, uint32_t db_id, path):
    """Verify an image and decode it into a Node; structure errors are corruption."""
    cdef int btype = verify_image(image, block_no, db_id, path)
    if btype != IR_BT_LEAF and btype != IR_BT_INTERNAL:
        raise _corrupt(path, block_no, "not a tree block", "leaf or internal", btype)
    cdef const unsigned char *p = <const unsigned char *>PyBytes_AS_STRING(image)
    cdef int level = p[IR_OFF_LEVEL]
    cdef uint16_t count = ir_get_u16(p + IR_OFF_COUNT)
    cdef uint16_t used = ir_get_u16(p + IR_OFF_USED)
    if (btype == IR_BT_LEAF) != (level == 0):
        raise _corrupt(path, block_no, "level does not match block type",
                       "0 for leaves only", level)
    if used > IR_BLOCK_PAYLOAD_MAX:
        raise _corrupt(path, block_no, "payload length", f"<= {IR_BLOCK_PAYLOAD_MAX}", used)
    cdef Node node = Node(block_no, level)
    node.position = ir_get_u64(p + IR_OFF_POSITION)
    cdef Py_ssize_t off = IR_BLOCK_HEADER_SIZE, end = IR_BLOCK_HEADER_SIZE + used
    cdef Py_ssize_t i, kl, vl
    cdef list keys = node.keys
    for i in range(count):
        if off + 2 > end:
            raise _corrupt(path, block_no, f"entry {i} runs past the payload", end, off + 2)
        kl = ir_get_u16(p + off)
        if off + 2 + kl + 4 > end:
            raise _corrupt(path, block_no, f"entry {i} runs past the payload", end,
                           off + 2 + kl + 4)
        keys.append(PyBytes_FromStringAndSize(<char *>p + off + 2, kl))
        off += 2 + kl
        if level == 0:
            vl = ir_get_u32(p + off)
            if off + 4 + vl > end:
                raise _corrupt(path, block_no, f"value {i} runs past the payload", end,
                               off + 4 + vl)
            node.vals.append(PyBytes_FromStringAndSize(<char *>p + off + 4, vl))
            off += 4 + vl
        else:
            node.children.append(ir_get_u32(p + off))
            off += 4
    if off != end:
        raise _corrupt(path, block_no, "payload length does not match its entries", used,
                       off - IR_BLOCK_HEADER_SIZE)
    node.nbytes = used
    node.dirty = False
    return node


cdef class BTree:
    """A B+tree of encoded keys -> stored values over a block store.

    Not thread-safe by itself: the Database holds its lock around every call.
    """

    def __init__(self, store, uint32_t db_id, uint32_t root, Py_ssize_t capacity):
        self.store = store
        self.db_id = db_id
        self.root = root
        self.pool = {}
        self.dirty = {}
        self.capacity = capacity
        self.mod_count = 0
        self.closed = False
        self.protected = False

    def __dealloc__(self):
        free(self._frames)                   # borrowed pointers: nothing to release

    def init_empty(self):
        """Make the root an empty leaf (a new database); it is written at the next flush."""
        cdef Node node = Node(self.root, 0)
        self._shape += 1
        self._touch_dirty(node)

    # --- the buffer pool -------------------------------------------------------------

    cdef int _frame_set(self, uint32_t block_no, Node node) except -1:
        """Mirror pool[block_no] = node in the frame table (grown as needed)."""
        cdef Py_ssize_t n
        cdef PyObject **nf
        if block_no >= self._nframes:
            n = self._nframes * 2 if self._nframes else 4096
            while n <= block_no:
                n *= 2
            nf = <PyObject **>realloc(self._frames, n * sizeof(PyObject *))
            if nf == NULL:
                raise MemoryError()
            memset(nf + self._nframes, 0, (n - self._nframes) * sizeof(PyObject *))
            self._frames = nf
            self._nframes = n
        self._frames[block_no] = <PyObject *>node
        return 0

    cdef inline void _frame_clear(self, uint32_t block_no):
        if block_no < self._nframes:
            self._frames[block_no] = NULL

    cdef Node _get(self, object block_no):
        return self._get_b(<uint32_t>block_no)

    cdef Node _get_b(self, uint32_t block_no):
        # The frame table answers for every pooled node without an int object or a
        # dict probe (each one a likely cache miss on a large pool).
        cdef Node node
        if block_no < self._nframes and self._frames[block_no] != NULL:
            node = <Node>self._frames[block_no]
            node.ref = True
            return node
        node = decode_node(self.store.read_image(block_no), block_no, self.db_id,
                           self.store.path)
        if len(self.pool) >= self.capacity:
            self.evict()
        _untrack(node)
        self.pool[block_no] = node
        self._frame_set(block_no, node)
        return node

    cdef inline Node _child(self, Node node, Py_ssize_t i):
        """Child i of an internal node: from its fingerprints' child numbers when
        valid (no list item or int object to read), else from its children list."""
        if node.fp_n >= 0:
            return self._get_b(node.fp_child0 if i == 0 else node.fp_child[i - 1])
        return self._get(node.children[i])

    def node(self, uint32_t block_no):
        """The decoded node of a block (through the pool)."""
        return self._get(block_no)

    def evict(self):
        """Second-chance eviction of clean nodes down to 7/8 of capacity.

        Dirty nodes are never evicted: they leave the pool's dirty set only through a
        flush cycle, which is what keeps every block write inside the WIJ protocol.
        A node evicted while a caller still holds it is harmless: a change to it goes
        through _touch_dirty, which puts it back.
        """
        cdef Py_ssize_t target = self.capacity - self.capacity // 8
        cdef Node node
        cdef list second = []
        for block_no, node in list(self.pool.items()):
            if len(self.pool) <= target:
                break
            if node.dirty or block_no == self.root:
                continue
            if node.ref:
                node.ref = False
                second.append(block_no)
                continue
            del self.pool[block_no]
            self._frame_clear(node.block_no)
        for block_no in second:
            if len(self.pool) <= target:
                break
            node = <Node>self.pool.get(block_no)
            if node is not None and not node.dirty and not node.ref:
                del self.pool[block_no]
                self._frame_clear(node.block_no)

    cdef void _touch_dirty(self, Node node):
        # Not a place to drop search fingerprints: a value replacement keeps the keys.
        # Every site that changes a node's keys calls node._changed() (or, for an
        # insert strictly inside the node, node._fp_insert) itself.
        # A dirty node is always in both dicts (never evicted; freed ones are made
        # clean), so a second touch has nothing to do.
        if node.dirty:
            return
        _untrack(node)
        node.dirty = True
        node.ref = True
        self.dirty[node.block_no] = node
        self.pool[node.block_no] = node
        self._frame_set(node.block_no, node)

    cdef Node _new_node(self, int level):
        cdef Node node = Node(self.store.allocate(), level)
        if level > 0:
            node.children = []
        self._touch_dirty(node)
        return node

    cdef void _free_node(self, Node node):
        self._shape += 1
        self.pool.pop(node.block_no, None)
        self._frame_clear(node.block_no)
        self.dirty.pop(node.block_no, None)
        node.dirty = False
        self.store.free(node.block_no)

    def dirty_count(self):
        return len(self.dirty)

    def take_dirty(self):
        """Images of every dirty node, in block order; the nodes become clean.

        The caller (a flush cycle) must write all of them as one consistent set.
        """
        cdef Node node
        cdef list out = []
        for block_no in sorted(self.dirty):
            node = <Node>self.dirty[block_no]
            out.append((block_no, node.encode(self.db_id)))
            node.dirty = False
        self.dirty.clear()
        if len(self.pool) > self.capacity:
            self.evict()
        return out

    def drop_cache(self):
        """Forget every clean node (tests use this to force reads from disk)."""
        cdef Node node
        for block_no, node in list(self.pool.items()):
            if not node.dirty:
                del self.pool[block_no]
                self._frame_clear(node.block_no)

    # --- values ----------------------------------------------------------------------

    cdef void _free_value(self, bytes stored):
        """Return an overflow chain's blocks to the free list."""
        cdef const unsigned char *p
        cdef uint32_t blk
        if PyBytes_GET_SIZE(stored) != OVERFLOW_REF_BYTES or stored[0] != OVERFLOW_TAG:
            return
        p = <const unsigned char *>PyBytes_AS_STRING(stored)
        blk = ir_get_u32(p + 1)
        while blk != 0xFFFFFFFF:
            image = self.store.read_image(blk)
            fields = image_fields(image)
            if fields[0] != IR_BT_OVERFLOW:
                raise _corrupt(self.store.path, blk, "overflow chain block type",
                               IR_BT_OVERFLOW, fields[0])
            self.store.free(blk)
            blk = fields[4]

    cdef bytes _store_value(self, bytes value):
        """Inline a short encoded value; write a long one to an overflow chain."""
        cdef Py_ssize_t n = PyBytes_GET_SIZE(value)
        cdef Py_ssize_t chunk = IR_BLOCK_PAYLOAD_MAX, start, count
        cdef list blocks
        cdef bytearray ref
        if n == 0 or value[0] == OVERFLOW_TAG:
            raise ValueError("a stored value must be an encoded value (tag 1..4)")
        if n <= INLINE_MAX:
            return value
        count = (n + chunk - 1) // chunk
        blocks = [self.store.allocate() for _ in range(count)]
        for i in range(count):
            start = i * chunk
            self.store.put_image(blocks[i], seal_image(
                value[start:start + chunk], blocks[i], self.db_id, IR_BT_OVERFLOW,
                link=blocks[i + 1] if i + 1 < count else 0xFFFFFFFF))
        ref = bytearray(OVERFLOW_REF_BYTES)
        ref[0] = OVERFLOW_TAG
        ir_put_u32(<unsigned char *>(<char *>ref) + 1, blocks[0])
        ir_put_u32(<unsigned char *>(<char *>ref) + 5, <uint32_t>n)
        return bytes(ref)

    cpdef object load_value(self, bytes stored):
        """The full encoded value behind a stored value (reads an overflow chain)."""
        if PyBytes_GET_SIZE(stored) != OVERFLOW_REF_BYTES or stored[0] != OVERFLOW_TAG:
            return stored
        cdef const unsigned char *p = <const unsigned char *>PyBytes_AS_STRING(stored)
        cdef uint32_t blk = ir_get_u32(p + 1)
        cdef uint32_t total = ir_get_u32(p + 5)
        cdef list parts = []
        cdef Py_ssize_t got = 0
        while blk != 0xFFFFFFFF and got < total:
            image = self.store.read_image(blk)
            fields = image_fields(image)
            if fields[0] != IR_BT_OVERFLOW:
                raise _corrupt(self.store.path, blk, "overflow chain block type",
                               IR_BT_OVERFLOW, fields[0])
            part = image_payload(image)
            parts.append(part)
            got += len(part)
            blk = fields[4]
        if got != total:
            raise _corrupt(self.store.path, blk, "overflow chain length", total, got)
        return b"".join(parts)

    # --- point operations ------------------------------------------------------------

    cpdef object get(self, bytes key):
        """The stored value of key, or None (an overflow reference is not resolved)."""
        cdef Node node = self._get(self.root)
        cdef Py_ssize_t i
        while node.level > 0:
            node = self._child(node, _child_index(node, key))
        cdef int exact
        i = _node_search(node, key, False, &exact)
        if exact == 1:
            return node.vals[i]
        if exact == -1 and i < len(node.keys) and _cmp(<bytes>node.keys[i], key) == 0:
            return node.vals[i]
        return None

    cpdef object set(self, bytes key, bytes value, uint64_t position=0, bint want_old=False):
        """Insert or replace key; value is an encoded value (long ones go to overflow).

        Returns the previous stored value (or None); with want_old, the previous
        full encoded value (read before its overflow chain is freed), which is the
        before-image the journal needs, found by the same descent.
        """
        cdef Node node = self._hint
        cdef Py_ssize_t i
        cdef int exact
        cdef bytes stored = self._store_value(value), old = None, old_stored
        cdef bytes lo = None, hi = None
        cdef bint hit = (node is not None and node.dirty and self._hint_shape == self._shape
                         and self._hint_root == self.root
                         and (self._hint_lo is None or _cmp(self._hint_lo, key) <= 0)
                         and (self._hint_hi is None or _cmp(key, self._hint_hi) < 0))
        # No path is kept on the way down (a list and a tuple per level, for the one
        # insert in a hundred that splits): _split_up walks down again when needed.
        if not hit:
            node = self._get(self.root)
            while node.level > 0:
                i = _child_index(node, key)
                # Child i holds [keys[i], keys[i+1]); keys[0] stands for the parent's low.
                # The bounds are taken only while keys arrive in order: on a random
                # load they are two cache misses per level (the separators' objects)
                # for a hint that the next key almost never falls into.
                if self._hint_want:
                    if i > 0:
                        lo = <bytes>node.keys[i]
                    if i + 1 < len(node.keys):
                        hi = <bytes>node.keys[i + 1]
                node = self._child(node, i)
            if self._hint_want:
                self._hint = node
                self._hint_lo = lo
                self._hint_hi = hi
                self._hint_root = self.root
                self._hint_shape = self._shape
            else:
                self._hint = None
        # The fingerprints usually decide equality without touching the key objects
        # (on a random load the probe of keys[i] was the costliest cache miss here).
        i = _node_search(node, key, False, &exact)
        if exact == -1:
            exact = i < len(node.keys) and _cmp(<bytes>node.keys[i], key) == 0
        if exact:
            old_stored = <bytes>node.vals[i]
            node.vals[i] = stored
            if node.fp_n >= 0:
                node.fp_vlen[i] = <uint16_t>PyBytes_GET_SIZE(stored)   # a leaf: base 0
            node.nbytes += PyBytes_GET_SIZE(stored) - PyBytes_GET_SIZE(old_stored)
            # Read the old value in full before its overflow chain goes back.
            old = self.load_value(old_stored) if want_old else old_stored
            self._free_value(old_stored)
        else:
            _list_insert(node.keys, i, key)
            _list_insert(node.vals, i, stored)
            node.nbytes += ENTRY_OVERHEAD + PyBytes_GET_SIZE(key) + PyBytes_GET_SIZE(stored)
            node._fp_insert(i, key, PyBytes_GET_SIZE(stored), 0)
        # Keys arriving in order show as a hint hit, a second key in the same leaf or
        # an entry at either end of it: then the next descent records the hint.
        self._hint_want = (hit or node is self._last_leaf or i == 0
                           or i >= len(node.keys) - 1)
        self._last_leaf = node
        node.position = position
        self._touch_dirty(node)
        self.mod_count += 1
        if node.nbytes > IR_BLOCK_PAYLOAD_MAX:
            self._split_up(node, key, i)
        return old

    cdef int _split_up(self, Node leaf, bytes key, Py_ssize_t i) except -1:
        """Split upwards from leaf (key just went in at index i) while a node no
        longer fits its block.

        The path is found by a second descent: only the leaf changed since the first
        one, so the same key leads to the same children (a dirty node is never
        evicted, so it is the same leaf object).
        """
        cdef list path = []
        cdef Node node = self._get(self.root)
        cdef Py_ssize_t j
        while node.level > 0:
            j = _child_index(node, key)
            path.append((node, j))
            node = self._get(node.children[j])
        if node is not leaf:
            raise RuntimeError("B+tree descent changed during an insert")
        while node.nbytes > IR_BLOCK_PAYLOAD_MAX:
            sep, right = self._split(node, i == len(node.keys) - 1)
            if path:
                parent, i = path.pop()
                i += 1
                _list_insert((<Node>parent).keys, i, sep)
                _list_insert((<Node>parent).children, i, (<Node>right).block_no)
                (<Node>parent).nbytes += ENTRY_OVERHEAD + PyBytes_GET_SIZE(sep)
                (<Node>parent)._fp_insert(i, sep, 0, (<Node>right).block_no)
                self._touch_dirty(<Node>parent)
                node = <Node>parent
            else:
                # The root split: a new root one level up holds both halves.
                new_root = self._new_node(node.level + 1)
                (<Node>new_root).keys = [MINUS_INF, sep]
                (<Node>new_root).children = [node.block_no, (<Node>right).block_no]
                (<Node>new_root).nbytes = 2 * ENTRY_OVERHEAD + PyBytes_GET_SIZE(sep)
                _untrack(<Node>new_root)
                self.root = (<Node>new_root).block_no
                break
        return 0

    cdef object _split(self, Node node, bint appending):
        """Move the upper half (by bytes) of node into a new right sibling.

        When the entry that overflowed the node is its last one (keys arriving in
        order), the left node keeps SPLIT_APPEND_SHARE of the bytes instead of half,
        so that an ordered load leaves full blocks behind, not half-empty ones.

        With valid fingerprints no key or value object is touched: the entry sizes
        come from the fingerprint arrays, the list tails move as raw references and
        the fingerprints are split, not rebuilt (on a random load a split comes every
        few dozen inserts, and each object touched is a likely cache miss).
        """
        cdef Py_ssize_t n = len(node.keys), i, j, acc = 0, sz
        cdef Py_ssize_t half = (node.nbytes * SPLIT_APPEND_PERCENT // 100 if appending
                                else node.nbytes // 2)
        cdef Py_ssize_t base = node.fp_base
        cdef bint fast = node.fp_n >= 0 and node.fp_n + base == n
        cdef Node right = self._new_node(node.level)
        cdef bytes sep
        self._shape += 1
        if fast and not node.fp_vlen_ok:
            # Once per leaf (and its halves after it): the value lengths a build
            # left out. Internal nodes have none (fp_vlen_ok from their build).
            for j in range(node.fp_n):
                node.fp_vlen[j] = <uint16_t>PyBytes_GET_SIZE(<bytes>node.vals[j])
            node.fp_vlen_ok = True
        for i in range(n):
            if fast:
                j = i - base
                if j < 0:
                    sz = ENTRY_OVERHEAD              # an internal node's -inf key
                else:
                    sz = ENTRY_OVERHEAD + node.fp_lcp + node.fp_len[j] + node.fp_vlen[j]
            else:
                sz = ENTRY_OVERHEAD + PyBytes_GET_SIZE(<bytes>node.keys[i])
                if node.level == 0:
                    sz += PyBytes_GET_SIZE(<bytes>node.vals[i])
            if acc + sz > half and i > 0:
                break
            acc += sz
        if i >= n - 1:
            i = n - 1
        if i < 1:
            i = 1
        sep = <bytes>node.keys[i]
        right.keys = _list_cut(node.keys, i)
        if node.level == 0:
            right.vals = _list_cut(node.vals, i)
            right.nbytes = node.nbytes - acc
            if fast:
                node._fp_split(right, i, i)
        else:
            right.children = _list_cut(node.children, i)
            # The right node's first key becomes -inf; the separator moves up.
            right.keys[0] = MINUS_INF
            right.nbytes = node.nbytes - acc - PyBytes_GET_SIZE(sep)
            if fast:
                # Left keeps keys[1:i], right keys[i+1:]: the separator's slot goes.
                node._fp_split(right, i - 1, i)
        node.nbytes = acc
        right.position = node.position
        # The new lists are tracked by the collector; a dirty node's next touch does
        # not untrack them, and a random load would leave thousands of them for every
        # collection to walk (a cache miss per key).
        _untrack(right)
        if not fast:
            node._changed()
            right._changed()
        self._touch_dirty(node)
        return sep, right

    # --- range kill ------------------------------------------------------------------

    def kill_range(self, bytes lo, bytes hi):
        """Remove every key k with lo <= k < hi; freed blocks go to the free list."""
        cdef Node root = self._get(self.root)
        cdef bint changed
        self._shape += 1
        changed = self._kill_range(root, lo, hi)
        cdef Node child
        if changed:
            self.mod_count += 1
        # Collapse a root left with a single child (or none) so height shrinks.
        while root.level > 0 and len(root.children) <= 1:
            if len(root.children) == 0:
                root.level = 0
                root.keys = []
                root.vals = []
                root.children = None
                root.nbytes = 0
                root._changed()
                _untrack(root)
                self._touch_dirty(root)
                break
            child = self._get(root.children[0])
            self._free_node(root)
            root = child
            self.root = root.block_no
        return changed

    cdef bint _kill_range(self, Node node, bytes lo, bytes hi):
        cdef Py_ssize_t i, j, first, last, n
        cdef bint changed = False
        cdef Node child
        cdef list drop
        if node.level == 0:
            i = _bisect_left(node.keys, lo)
            j = _bisect_left(node.keys, hi)
            if i >= j:
                return False
            for k in range(i, j):
                node.nbytes -= (ENTRY_OVERHEAD + PyBytes_GET_SIZE(<bytes>node.keys[k])
                                + PyBytes_GET_SIZE(<bytes>node.vals[k]))
                self._free_value(<bytes>node.vals[k])
            del node.keys[i:j]
            del node.vals[i:j]
            node._changed()
            self._touch_dirty(node)
            return True
        n = len(node.children)
        first = _child_index(node, lo)
        last = _bisect_left(node.keys, hi) - 1      # last child whose low key < hi
        if last < first:
            return False
        drop = []
        for i in range(first, last + 1):
            # Child i covers [keys[i], keys[i+1]); wholly inside [lo, hi) -> free it.
            if (i > 0 and _cmp(lo, <bytes>node.keys[i]) <= 0 and i + 1 < n
                    and _cmp(<bytes>node.keys[i + 1], hi) <= 0):
                self._free_subtree(<uint32_t>node.children[i])
                drop.append(i)
                changed = True
            else:
                child = self._get(node.children[i])
                if self._kill_range(child, lo, hi):
                    changed = True
                    if len(child.keys) == 0:
                        self._free_node(child)
                        drop.append(i)
        if not changed:
            return False
        for i in reversed(drop):
            node.nbytes -= ENTRY_OVERHEAD + PyBytes_GET_SIZE(<bytes>node.keys[i])
            del node.keys[i]
            del node.children[i]
        if node.keys and PyBytes_GET_SIZE(<bytes>node.keys[0]) != 0:
            # The first child was removed: the new first key stands for -inf again.
            node.nbytes -= PyBytes_GET_SIZE(<bytes>node.keys[0])
            node.keys[0] = MINUS_INF
        node._changed()
        self._touch_dirty(node)
        if len(node.children) > 1:
            # Only the children next to the killed range can have become small; their
            # neighbours on each side are the merge candidates.
            i = first - 1 if first > 0 else 0
            j = first + (last - first + 1 - len(drop)) + 1
            self._merge_children(node, i, j)
        return True

    cdef void _merge_children(self, Node parent, Py_ssize_t i, Py_ssize_t last):
        """Merge neighbouring children i..last that together fit in MERGE_FILL_BYTES_MAX."""
        cdef Node left, right
        cdef bytes sep
        cdef Py_ssize_t combined
        while i + 1 < len(parent.children) and i < last:
            left = self._get(parent.children[i])
            right = self._get(parent.children[i + 1])
            sep = <bytes>parent.keys[i + 1]
            combined = left.nbytes + right.nbytes
            if left.level > 0:
                combined += PyBytes_GET_SIZE(sep)   # right's -inf key takes the separator
            if combined > MERGE_MAX:
                i += 1
                continue
            if left.level == 0:
                left.keys.extend(right.keys)
                left.vals.extend(right.vals)
            else:
                left.keys.append(sep)
                left.keys.extend(right.keys[1:])
                left.children.extend(right.children)
            left.nbytes = combined
            if right.position > left.position:
                left.position = right.position
            left._changed()
            self._shape += 1
            self._touch_dirty(left)
            self._free_node(right)
            parent.nbytes -= ENTRY_OVERHEAD + PyBytes_GET_SIZE(sep)
            del parent.keys[i + 1]
            del parent.children[i + 1]
            last -= 1
            parent._changed()
            self._touch_dirty(parent)

    cdef void _free_subtree(self, uint32_t block_no):
        cdef Node node = self._get(block_no)
        if node.level > 0:
            for child in node.children:
                self._free_subtree(<uint32_t>child)
        else:
            for v in node.vals:
                self._free_value(<bytes>v)
        self._free_node(node)

    # --- ordered seeks ---------------------------------------------------------------

    def seek(self, bytes key, bint reverse=False, bint inclusive=True):
        """A cursor at the first key >= key (or > key), or, reverse, the last <= (<) key."""
        cdef Cursor c = Cursor.__new__(Cursor)
        c.tree = self
        c.reverse = reverse
        c._position(key, inclusive)
        return c

    def next_item(self, bytes key, bint reverse=False, bint inclusive=False):
        """(key, stored value) of the first entry after key (before it, reverse), or None."""
        cdef Cursor c = self.seek(key, reverse, inclusive)
        return c.peek()

    def first_item(self):
        """(key, stored value) of the smallest key, or None."""
        return self.next_item(b"", False, True)

    def walk_blocks(self):
        """Yield (block_no, Node, parent_block_no, low, high) depth-first (integrity walk)."""
        stack = [(self.root, None, None, None)]
        while stack:
            block_no, parent, low, high = stack.pop()
            node = self._get(block_no)
            yield block_no, node, parent, low, high
            if node.level > 0:
                n = len(node.children)
                for i in range(n - 1, -1, -1):
                    child_low = node.keys[i] if i > 0 else low
                    child_high = node.keys[i + 1] if i + 1 < n else high
                    stack.append((node.children[i], block_no, child_low, child_high))

    def height(self):
        return self._get(self.root).level + 1


cdef class Cursor:
    """An ordered position in a BTree, forward or reverse.

    It keeps the root-to-leaf path, so stepping is O(1) amortised. Any change to the
    tree (mod_count) makes it re-seek from the last key it returned, so it is safe to
    interleave with writes (the Database lock serialises the calls themselves).
    """

    cdef _position(self, bytes key, bint inclusive):
        cdef Node node = self.tree._get(self.tree.root)
        cdef Py_ssize_t i
        self.path = []
        while node.level > 0:
            i = _child_index(node, key)
            self.path.append((node, i))
            node = self.tree._get(node.children[i])
        self.leaf = node
        if self.reverse:
            self.pos = _node_search(node, key, inclusive) - 1
        else:
            self.pos = _node_search(node, key, not inclusive)
        self.mod_count = self.tree.mod_count
        self.done = False
        self._settle()

    cdef _settle(self):
        """Move to the neighbouring leaf while pos is outside the current one."""
        cdef Node node
        cdef Py_ssize_t i
        while True:
            if 0 <= self.pos < len(self.leaf.keys):
                return
            # Climb until a parent has a next (or previous) child, then descend.
            while self.path:
                node, i = self.path[len(self.path) - 1]
                i = i - 1 if self.reverse else i + 1
                if 0 <= i < len(node.children):
                    self.path[len(self.path) - 1] = (node, i)
                    break
                self.path.pop()
            else:
                self.done = True
                return
            node = self.tree._get(node.children[i])
            while node.level > 0:
                i = len(node.children) - 1 if self.reverse else 0
                self.path.append((node, i))
                node = self.tree._get(node.children[i])
            self.leaf = node
            self.pos = len(node.keys) - 1 if self.reverse else 0

    cdef _revalidate(self):
        if self.mod_count != self.tree.mod_count:
            if self.last_key is None:
                raise RuntimeError("cursor revalidated before its first step")
            self._position(self.last_key, False)

    def peek(self):
        """The (key, stored value) at the cursor, or None at the end."""
        if self.last_key is not None:
            self._revalidate()
        if self.done:
            return None
        return self.leaf.keys[self.pos], self.leaf.vals[self.pos]

    def take(self, Py_ssize_t n, bytes stop=None):
        """Up to n (key, stored value) pairs from the cursor on, advancing past them.

        Stops before `stop` (forward: at keys >= stop; reverse: at keys < stop).
        """
        cdef list out = []
        cdef bytes k
        if self.last_key is not None:
            self._revalidate()
        while len(out) < n and not self.done:
            k = <bytes>self.leaf.keys[self.pos]
            if stop is not None:
                if self.reverse:
                    if _cmp(k, stop) < 0:
                        self.done = True
                        break
                elif _cmp(k, stop) >= 0:
                    self.done = True
                    break
            out.append((k, self.leaf.vals[self.pos]))
            self.last_key = k
            self.pos += -1 if self.reverse else 1
            self._settle()
        return out
