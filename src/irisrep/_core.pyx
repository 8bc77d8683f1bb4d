# cython: language_level=3
"""irisrep._core: the compiled hot path, one module assembled from topic files.

Each topic file owns one layer and is declared in a matching `.pxd` (included by
`_core.pxd`); `_core.pyi` types the Python-visible surface. Python code never
imports a topic directly: everything is `irisrep._core.<name>`.

- `_keycodec.pxi`: order-preserving encoding of global references, value encoding.
- `_blockio.pxi`:  aligned buffers and O_DIRECT pread/pwrite/fdatasync, GIL released.
- `_btree.pxi`:    block images (seal/verify), B+tree nodes, the tree and its pool.
- `_globals.pxi`:  the hot half of the Global API (point get/set) without Python frames.
"""

include "_keycodec.pxi"
include "_blockio.pxi"
include "_btree.pxi"
include "_globals.pxi"
include "_journal.pxi"
include "_wijio.pxi"
include "_wire.pxi"
