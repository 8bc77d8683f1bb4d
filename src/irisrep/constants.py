"""Every size and limit in irisrep, in one place.

On-disk layout sizes are also defined in `include/irisrep_block.h` (the C side
needs them at compile time); `tests/test_constants.py` checks the two agree.
Units come last in names: `_bytes`, `_ms`, `_count`.
"""

# --- block store (include/irisrep_block.h) -------------------------------------------
BLOCK_SIZE = 8192
BLOCK_HEADER_SIZE = 40
BLOCK_PAYLOAD_MAX = BLOCK_SIZE - BLOCK_HEADER_SIZE
DB_FORMAT_VERSION = 1
DB_MAGIC = b"IRISRPDB"
BLOCK_NO_MAX = 2**32 - 2  # u32 block numbers; 0xFFFFFFFF is "none"
BLOCK_NONE = 2**32 - 1

# Block types (IR_BT_* in the header).
BT_HEADER = 1
BT_LEAF = 2
BT_INTERNAL = 3
BT_OVERFLOW = 4
BT_FREE = 5

# --- I/O ----------------------------------------------------------------------------
IO_ALIGN = 4096  # O_DIRECT alignment of buffer, offset and length
DIRECT_IO_MODES = ("required", "optional", "disabled")
DIRECT_IO_DEFAULT = "optional"
IO_CALL_BYTES_MAX = 64 * 1024 * 1024  # largest single pread/pwrite; one bad length fails alone
WRITE_RUN_BLOCKS_MAX = 1024  # consecutive blocks coalesced into one write (8 MiB)
WRITE_QUEUE_DEPTH = 8  # scattered O_DIRECT writes in flight at once (pwrite_scatter)
WRITE_RUN_SEQUENTIAL_BLOCKS_MIN = 64  # runs this long are written one by one (512 KiB+)

# --- key codec (IRIS limits) --------------------------------------------------------
REFERENCE_BYTES_MAX = 511  # encoded global reference (name + subscripts)
GLOBAL_NAME_CHARS_MAX = 31
SUBSCRIPT_LEVELS_MAX = 255
STRING_CHARS_MAX = 3_641_144  # IRIS long-string limit, for values
NUMBER_DIGITS_MAX = 18  # significant digits of a canonical number
NUMBER_EXPONENT_MIN = -128  # decimal exponent range of a canonical number
NUMBER_EXPONENT_MAX = 127

# --- B+tree and buffer pool ---------------------------------------------------------
# A value whose encoded form is longer than this goes to an overflow chain, so that
# every leaf holds at least three entries (511-byte key + inline value + framing).
INLINE_VALUE_BYTES_MAX = 1536
LEAF_ENTRY_OVERHEAD_BYTES = 6  # u16 key length + u32 value length
INTERNAL_ENTRY_OVERHEAD_BYTES = 6  # u16 key length + u32 child
# Two neighbours are merged when together they fit in this share of a block.
MERGE_FILL_BYTES_MAX = BLOCK_PAYLOAD_MAX * 3 // 4
# Free-list trunk: u32 count + u32 block numbers in one block's payload.
FREE_TRUNK_ENTRIES_MAX = (BLOCK_PAYLOAD_MAX - 4) // 4
BUFFER_POOL_BLOCKS_DEFAULT = 16_384  # 128 MiB of 8 KiB blocks
BUFFER_POOL_BLOCKS_MIN = 64
# The write daemon is woken when dirty blocks pass this share of the pool, and
# writers wait for it past the hard share (which also stays below WIJ_BLOCKS_MAX).
DIRTY_SHARE_FLUSH = 0.5
DIRTY_SHARE_HARD = 0.75
WRITE_DAEMON_INTERVAL_MS = 1000  # a cycle at least this often while anything is dirty

# --- write image journal (include/irisrep_wij.h) ------------------------------------
WIJ_FILE_NAME = "irisrep.wij"
WIJ_MAGIC = b"IRISWIJ1"
WIJ_VERSION = 1
WIJ_BLOCKS_MAX = 65_536  # images per cycle (512 MiB of WIJ); dirty sets stay below it
# Room a cycle keeps beyond the writers' hard limit on dirty blocks: the one write
# that passes the limit (a maximal value's overflow chain and its splits: under
# 2,000 blocks) and every database's header block (DATABASES_MAX).
WIJ_CYCLE_SPARE_BLOCKS = 4096
WIJ_SLOT_SIZE = 4096  # two header slots: a torn header write damages only one
WIJ_DIR_OFFSET = 2 * WIJ_SLOT_SIZE
WIJ_ENTRY_SIZE = 16
# Largest single WIJ write: big enough for sequential throughput, small enough that
# copying into the aligned buffer does not stall the device (8 MiB measured best).
WIJ_WRITE_CHUNK_BYTES = 8 * 1024 * 1024
WIJ_PIPELINE_MIN_BYTES = 1024 * 1024  # below this, no writer thread in a cycle

# --- journal (docs/journal-format.md, include/irisrep_journal.h) -------------------
JOURNAL_DIR_NAME = "journal"
JOURNAL_FILE_MAGIC = b"IRISJRNL"
JOURNAL_FRAME_MAGIC = b"IRJF"
JOURNAL_VERSION = 1
JOURNAL_HEADER_BYTES = 4096  # file header; frames start here
JOURNAL_FRAME_HEADER_BYTES = 48
JOURNAL_FRAME_ALIGN = 8  # frames start at multiples of 8 in the stream
JOURNAL_RECORD_HEADER_BYTES = 24
JOURNAL_RECORD_BYTES_MAX = 32 * 1024 * 1024  # one record's value or before-image
JOURNAL_FRAME_BYTES_MAX = 48 * 1024 * 1024  # raw or stored payload of one frame
JOURNAL_FILE_BYTES = 4 * 1024 * 1024  # preallocated journal file; open scans the last one whole
JOURNAL_FILES_PER_DAY_MAX = 999  # YYYYMMDD.001 .. .999
JOURNAL_COMPRESS_MIN_BYTES = 4096  # smaller payloads are stored raw
JOURNAL_FLUSH_MS = 50  # relaxed commits are durable within this
JOURNAL_GROUP_COMMIT_RECORDS_MAX = 65_536  # records in one group (one write, one fdatasync)
JOURNAL_KILL_BEFORE_BYTES_MAX = 8 * 1024 * 1024  # a larger KILL splits into several records
TLEVEL_MAX = 255
JOURNAL_PURGE_DAYS = 2.0  # purge keeps files younger than this even when not needed
# --- journal purge (purge.py; docs/backup.md "Journal purge") ----------------------------
JOURNAL_PURGE_DAYS_MAX = 36_500.0  # an older_than_days argument above this is refused
# A mirror member disconnected longer than this stops holding the primary's journal
# files back (IRIS's default; config key journal_purge_member_limit_days).
JOURNAL_PURGE_MEMBER_LIMIT_DAYS = 14.0
JOURNAL_PURGE_MEMBER_LIMIT_DAYS_MAX = 3_650.0
JOURNAL_PURGE_INTERVAL_S = 3_600.0  # a running member purges its journal this often
JOURNAL_FILE_BYTES_MIN = 64 * 1024  # config journal_file_bytes (tests use small files)
JOURNAL_FILE_BYTES_MAX = 1024 * 1024 * 1024  # opening scans the last file whole
BACKUPS_FILE_NAME = "backups.json"  # in the instance directory: the good backups taken of it
BACKUP_RECORDS_MAX = 64  # entries kept in backups.json (the newest)
BACKUP_OUT_DIR_CHARS_MAX = 4_096  # backup_create's out_dir (client protocol), as PATH_MAX
BACKUP_PROGRESS_POLL_S = 0.2  # `backup create --member M` asks M how far its backup is
MIRROR_MEMBERS_FILE_NAME = "mirror-members.json"  # a primary's last word on each member
MIRROR_MEMBERS_SAVE_MS = 1_000  # the primary looks at its members' positions this often
MIRROR_MEMBERS_REFRESH_S = 60.0  # and rewrites the file at least this often while any is seen
# A copy's catch-up from its own journal (after a backup held dejournaling back) applies
# this many records per hold of the database lock.
DEJOURNAL_SLICE_RECORDS = 4_096
# A database's journal starts a frame with a MARKER "time=<unix ns>" record when this
# long has passed since the last one: what `irisrep restore --until TIME` reads.
JOURNAL_TIME_MARK_MS = 10

# --- backup and restore (backup.py, restore.py; docs/backup.md, include/irisrep_backup.h)
BACKUP_MAGIC = b"IRISBKUP"
BACKUP_VERSION = 2  # written; one file holds every database of the instance
BACKUP_VERSIONS_READ = (1, 2)  # 1: DB alone (before several databases); still restored
BACKUP_HEADER_BYTES = 4096  # the header; block entries start here
BACKUP_BLOCK_ENTRY_BYTES = 16  # block_no, stored_len, checksum; then the stored bytes
BACKUP_JOURNAL_ENTRY_BYTES = 24  # position, raw_len, stored_len, checksum; then the bytes
BACKUP_NAME_BYTES = 128  # the parent backup's file name in the header (UTF-8, NUL-padded)
BACKUP_SOURCE_BYTES = 1024  # the source instance directory in the header
BACKUP_SECTION_BYTES = 128  # one database's entry in a v2 file's section table
BACKUP_SECTION_NAME_BYTES = 32  # its database name (DATABASE_NAME_MAX, NUL-padded)
BACKUP_KIND_FULL = 1
BACKUP_KIND_INCREMENTAL = 2
BACKUP_FILE_SUFFIX = ".irbk"
BACKUP_PARTIAL_SUFFIX = ".part"  # a backup being written; renamed when complete
BACKUP_READ_BYTES = 4 * 1024 * 1024  # database bytes read per call while copying
BACKUP_BATCH_BLOCKS = 512  # blocks compressed (on worker threads) and written per batch
BACKUP_JOURNAL_CHUNK_BYTES = 4 * 1024 * 1024  # journal bytes per embedded chunk (raw)
BACKUP_ZSTD_LEVEL = 1  # blocks and journal chunks; level 1 keeps up with a disk
BACKUP_CHAIN_MAX = 9_999  # incrementals after one full backup
RESTORE_JOURNAL_FILE_BYTES = 64 * 1024 * 1024  # files of a restored journal (fewer of them)

# --- locks and transactions --------------------------------------------------------
LOCKS_MAX = 100_000  # held locks in one instance's lock table
LOCK_TIMEOUT_DEFAULT_S = 30.0  # g.lock() without a timeout; timeout=None waits forever

# --- mirror transport (docs/wire-format.md, include/irisrep_wire.h) -----------------
WIRE_MAGIC = b"IRWF"
WIRE_VERSION = 1
WIRE_FRAME_HEADER_BYTES = 32
WIRE_FRAME_BYTES_MAX = 64 * 1024 * 1024  # payload of one frame, on the wire and raw
WIRE_ZSTD_PREFIX_BYTES = 4  # u32 raw size before a compressed payload
WIRE_COMPRESS_MIN_BYTES = 4096  # smaller payloads are sent raw (compress=None)
WIRE_NONCE_BYTES = 32
WIRE_MAC_BYTES = 32  # HMAC-SHA256
WIRE_NAME_BYTES_MAX = 64  # mirror and member names, ASCII [A-Za-z0-9_.-]
WIRE_KEY_BYTES_MIN = 16  # the mirror key
WIRE_REJECT_BYTES_MAX = 256
WIRE_STATUS_BYTES_MAX = 64 * 1024
WIRE_JOURNAL_PAYLOAD_BYTES_MIN = 4 + JOURNAL_FRAME_HEADER_BYTES  # count + one frame header
# A mirror link's read-ahead (wire.FrameReader(buffered=True)): one recv takes a burst
# of frames; it grows past this only to hold one frame whose header was checked.
WIRE_READ_BUFFER_BYTES = 64 * 1024
WIRE_FRAME_TIMEOUT_MS = 10_000  # one frame, first byte to last, however it trickles
WIRE_HANDSHAKE_TIMEOUT_MS = 5_000  # accept to WELCOME
WIRE_SEND_TIMEOUT_MS = 10_000  # one send_frame
WIRE_CONNECTIONS_PENDING_MAX = 64  # accepted, not yet welcomed; more are refused at once
WIRE_HANDSHAKE_THREADS_MAX = 4  # handshakes run at once by a WireListener
WIRE_LISTEN_BACKLOG_COUNT = 128

# --- mirror members and their configuration (config.py) ----------------------------
MEMBER_KINDS = ("failover", "async-dr", "async-reporting")
MIRROR_FAILOVER_MEMBERS_COUNT = 2  # exactly two failover members
MIRROR_ASYNC_MEMBERS_MAX = 14
MIRROR_MEMBERS_MAX = 16  # failover + async, as IRIS
# A reporting async follows its own mirror and up to 9 more ([[follow]]), as IRIS.
MIRRORS_FOLLOWED_MAX = 10
MIRRORS_DIR_NAME = "mirrors"  # DATA_DIR/mirrors/<MIRROR>/: each followed mirror's copy
# A reporting async's copy of a mirrored database (`copy` in [[follow]], and at the
# top level for its own mirror): read-only, or read-write for local changes (IRIS),
# which makes it ineligible to fail over for good (the marker file in its directory).
COPY_MODES = ("read-only", "read-write")
COPY_MODE_DEFAULT = "read-only"
COPY_INELIGIBLE_FILE_NAME = "failover-ineligible.json"  # written once, never removed
ACK_LEVELS = ("received", "durable", "applied")
ACK_LEVEL_DEFAULT = "durable"
QOS_TIMEOUT_DEFAULT_MS = 8000  # IRIS's default
QOS_TIMEOUT_MIN_MS = 100
QOS_TIMEOUT_MAX_MS = 60_000
COMMIT_MODES = ("sync", "relaxed")
COMMIT_MODE_DEFAULT = "sync"
POOL_BLOCKS_MAX = BLOCK_NO_MAX  # a sanity bound: a typo of a few digits is caught
CONFIG_FILE_BYTES_MAX = 1024 * 1024  # a config file larger than this is refused unread
MIRROR_KEY_FILE_BYTES_MAX = 4096  # the key file holds one line of hex or base64
PORT_MIN = 1
PORT_MAX = 65_535
HOSTNAME_CHARS_MAX = 253
HOSTNAME_LABEL_CHARS_MAX = 63

# --- mirror members at run time (mirror.py, member.py) ------------------------------
MIRROR_RING_BYTES_MAX = 64 * 1024 * 1024  # recent journal bytes kept in memory for senders
MIRROR_BATCH_BYTES_MAX = 4 * 1024 * 1024  # journal bytes in one JOURNAL wire frame
MIRROR_ACTIVE_LAG_BYTES_MAX = 1024 * 1024  # a backup this close to the end can become Active
MIRROR_HEARTBEAT_MS = 100  # idle links send a HEARTBEAT this often
MIRROR_RECONNECT_MS = 100  # a backup/async retries its primary this often
MIRROR_PEER_SILENCE_MS_MIN = 2000  # a link silent this long (and > 2 QoS) is dead
MIRROR_STATE_FILE_NAME = "mirror.json"  # this member's epoch and last role
MIRROR_HISTORY_FILE_NAME = "history.jsonl"  # role changes and undone tails (irisrep history)
EVENTS_FILE_NAME = "events.jsonl"  # what happened to a member (irisrep events)
EVENTS_FILE_BYTES_MAX = 4 << 20  # then renamed to events.jsonl.1 and a new one starts
TAIL_SERVED_FILE_NAME = "tail-served"  # its agent served its journal tail while it was down
MIRROR_EPOCH_FIRST = 1
MIRROR_ROLES = ("primary", "backup", "async")
# How a member became primary while running (irisrep_failovers_total{how}).
MIRROR_PROMOTION_KINDS = ("failover", "switchover", "manual")
# A member process's GIL switch interval (CPython's default is 5 ms): the threads that
# receive acks and frames wait on the GIL behind busy ones for up to this long.
MEMBER_SWITCH_INTERVAL_S = 0.0005

# --- HTTP health and metrics listener (httpapi.py, config key http_address) ---------
HTTP_REQUEST_BYTES_MAX = 16 * 1024  # request line + headers; a GET has no body
HTTP_CONNECTIONS_MAX = 32  # requests served at once; more are closed unanswered
HTTP_REQUEST_TIMEOUT_MS = 5_000  # one request, accept to last header byte
HTTP_POLL_INTERVAL_MS = 100  # how soon the server's loop sees a stop (Member.close)
HTTP_LAG_CHARS_MAX = 32  # /replica?lag=: "1048576", "10MB", "1.5GiB"
HTTP_QUERY_FIELDS_MAX = 16  # name=value pairs in one query string
# Buckets of the commit and ack latency histograms: an fdatasync (~0.1-10 ms) up to
# a commit held back for a QoS timeout (seconds).
METRICS_LATENCY_BUCKETS_S = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)

# --- the arbiter (arbiter.py) -----------------------------------------------------
ARBITER_HEARTBEAT_MS = 100  # a failover member beats this often
ARBITER_SILENCE_MS = 1000  # a member not heard this long is no longer "seen"
ARBITER_CONNECTIONS_MAX = 256  # open member connections; more are refused
ARBITER_HELLO_TIMEOUT_MS = 2000  # accept to hello

# --- client protocol (clientproto.py, server.py, client.py) ------------------------
CLIENT_FRAME_BYTES_MAX = 16 * 1024 * 1024  # one request or response (a max string in UTF-8 fits)
CLIENT_CONNECTIONS_MAX = 256  # open client connections per member; more are refused
CLIENT_LOGIN_TIMEOUT_MS = 5_000  # accept to a successful LOGIN
CLIENT_CONNECT_TIMEOUT_MS = 5_000  # irisrep.connect: one TCP connect
CLIENT_FAILOVER_WAIT_S = 10.0  # irisrep.connect waits this long for a new primary
SERVER_PROMOTION_WAIT_S = 5.0  # a write that meets a member mid-promotion waits this long
CLIENT_ITEMS_PAGE_MAX = 1_000  # nodes in one ITEMS reply; the client pages on
CLIENT_VALUE_DEPTH_MAX = 64  # nesting of a tagged value (subscript tuples are depth 2)
CLIENT_USERS_MAX = 1_000
SCRYPT_N = 2**14  # password hashes (hashlib.scrypt); ~16 MiB and ~50 ms per check
SCRYPT_R = 8
SCRYPT_P = 1
SCRYPT_SALT_BYTES = 16
SCRYPT_HASH_BYTES = 32
CLIENT_INT_BYTES_MAX = 2048  # magnitude of an int on the wire (~4900 digits; values may be big)
CLIENT_VALUE_ITEMS_MAX = 1 << 20  # values (containers included) decoded from one frame
CLIENT_FRAME_TIMEOUT_MS = 10_000  # one frame, first byte to last, however it trickles
CLIENT_SEND_TIMEOUT_MS = 10_000  # one response sent whole (a client that stops reading)
CLIENT_READ_CHUNK_BYTES = 64 * 1024  # one recv of a connection's buffered reader
CLIENT_REQUEST_TIMEOUT_S = 60.0  # irisrep.connect: default wait for one reply (plus a lock's)
CLIENT_LOCK_WAIT_SLICE_MS = 1_000  # a long lock wait rechecks that its client is still there
CLIENT_REFUSED_PENDING_MAX = 64  # refused connections kept open briefly so the refusal is read
CLIENT_COMMIT_THREADS = 3  # a listener's threads making deferred commits durable (groups in flight)
CLIENT_WORKER_IDLE_S = 30.0  # an idle worker thread of a client listener ends after this
CLIENT_WORKER_LINGER_MS = 50  # a connection whose transaction ended stays on its worker this long
CLIENT_BATCH_REQUESTS_MAX = 10_000  # requests in one BATCH (each also bounded by the frame)
SCRYPT_MAXMEM_BYTES = 64 * 1024 * 1024  # bound on a stored hash's 128*N*r*p (config input)

# --- the terminal (terminal.py, irisrep session) -------------------------------------
TERMINAL_HISTORY_FILE_NAME = ".session_history"  # in the deployment (or instance) directory
TERMINAL_HISTORY_LINES_MAX = 1_000  # lines kept in the history file
TERMINAL_WAIT_SLICE_S = 0.2  # an interactive Hang or Lock wait checks for Ctrl-C this often

# --- the cross-member check (datacheck.py, irisrep check) -----------------------------
DATACHECK_RANGE_NODES_MAX = 8_192  # nodes one RANGE_HASH request hashes; past it, a split point
DATACHECK_RANGE_BYTES_MAX = 32 * 1024 * 1024  # key + value bytes one RANGE_HASH request reads
DATACHECK_LOCK_NODES_MAX = 512  # nodes read in one hold of the database lock
DATACHECK_LOCK_BYTES_MAX = 1024 * 1024  # bytes read in one hold (at least one node)
DATACHECK_BOUND_BYTES_MAX = REFERENCE_BYTES_MAX + 1  # a range bound: a key, or a key + 0x00
DATACHECK_WAIT_MS_MAX = 2_000  # a request waits this long at most for its position
DATACHECK_LEAF_NODES_DEFAULT = 32  # a mismatch is narrowed down to ranges this small
DATACHECK_RECHECKS_DEFAULT = 3  # rounds of rechecks (each after the copy caught up)
DATACHECK_RECHECK_TRIES = 8  # hash pairs per range in one round before the next round
DATACHECK_CATCHUP_TIMEOUT_S = 30.0  # a recheck round waits this long for the copy

# --- databases of an instance (database.py) ------------------------------------------
DATABASES_MAX = 64  # databases in one instance directory, DB included
DATABASE_NAME_MAX = 31  # characters in a database name (IRIS: letters, digits, _ - .)
DATABASE_CATALOG_NAME = "databases.json"  # the instance's databases other than DB
DATABASE_CATALOG_BYTES_MAX = 1 << 20  # a larger catalog file is refused as damaged
LOCAL_INSTANCE_DIR_NAME = "local"  # a mirror member's local (never mirrored) databases
LOCAL_INSTANCE_ROOT_NAME = "LOCALSYS"  # the local instance's own first database file
REPORT_DATABASE_NAME = "REPORT"  # `irisrep up --reporting`: each reporting async's local one
