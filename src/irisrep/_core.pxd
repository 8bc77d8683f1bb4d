# Declarations of irisrep._core, one included file per topic (see _core.pyx).
include "_keycodec.pxd"
include "_blockio.pxd"
include "_btree.pxd"
include "_globals.pxd"
include "_journal.pxd"
include "_wijio.pxd"
include "_wire.pxd"
