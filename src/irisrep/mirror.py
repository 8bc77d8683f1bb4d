"""Journal shipping between mirror members: the primary's side and the copy's side.

Owns the live data path of a mirror (DESIGN.md section 3): the primary sends every
journal frame, byte for byte as its journal wrote it, to the backup and to every
async; a backup or async writes the frames to its own journal at the same stream
positions, makes them durable, acknowledges, and applies them to its read-only
database (dejournaling).

Promises:
- Frames reach a member in stream order, each exactly once per connection; a member
  that connects behind (new, restarted, dropped) first gets what it lacks from the
  primary's journal files (catch-up), then the live stream, with no gap and no
  overlap (the `Ring` keeps recent writes; older ones come from the files).
- `Replicator.wait(position)` (called by the committer after the local fdatasync,
  commit.py) returns only when the Active backup has acknowledged `position` at the
  mirror's ack level, or when that backup has been declared not Active first
  (connection lost, or no acknowledgement within the QoS timeout; then the primary
  continues alone and says so). It never claims an acknowledgement it did not get.
- A backup becomes Active only when it is streaming live and within
  MIRROR_ACTIVE_LAG_BYTES_MAX of the journal's end; asyncs are never Active and
  never hold a commit back.
- Every JOURNAL frame and ACK carries the epoch; a copy refuses frames from an older
  epoch than its own, and a primary that hears of a newer epoch stops writing.
- A copy applies only frames that are durable in its own journal, so its database
  never runs ahead of its journal (rule 2); its checkpoint is the applied position.
  A slow apply slows the link's reading, so the primary's QoS decides whether it
  waits for such a backup (memory stays bounded: nothing queues unapplied). An
  online backup of a copy never stalls its link: while the backup holds the write
  daemon off, dejournaling stops at a frame boundary (receiving, fdatasync and acks
  go on) and resumes from the copy's own journal after it.

Threads: on the primary, per connected member one sender (ring/files -> socket; the
group leader sends directly when the link is live and idle) and one reader (acks,
heartbeats); on a copy, one link thread (connect, receive, append, fdatasync, ack,
apply): one thread, so no hand-off and no fight for the GIL on the ack's path. Decisions about roles and failover are not made
here (the mirror core, a later issue); this module only moves and acknowledges data.
"""

from __future__ import annotations

import bisect
import collections
import contextlib
import heapq
import itertools
import json
import logging
import select
import socket
import struct
import threading
import time
from dataclasses import dataclass

from . import mirrorcore as mc
from . import wire
from .constants import (
    JOURNAL_FRAME_ALIGN,
    JOURNAL_FRAME_HEADER_BYTES,
    MIRROR_ACTIVE_LAG_BYTES_MAX,
    MIRROR_BATCH_BYTES_MAX,
    MIRROR_HEARTBEAT_MS,
    MIRROR_PEER_SILENCE_MS_MIN,
    MIRROR_RECONNECT_MS,
    MIRROR_RING_BYTES_MAX,
)
from .errors import DurabilityError, IrisrepError, JournalCorruptError, WireError
from .journal import common_prefix, epoch_runs, frame_checksum_at

log = logging.getLogger("irisrep.mirror")

ACK_LEVEL_CODES = {
    "received": wire.ACK_RECEIVED,
    "durable": wire.ACK_DURABLE,
    "applied": wire.ACK_APPLIED,
}
_STORED_LEN = struct.Struct("<I")
_STORED_LEN_OFF = 32  # irisrep_journal.h IR_JRNL_OFF_STORED_LEN


def count_frames(data) -> int:
    """How many journal frames lie back to back in `data` (already verified bytes)."""
    n = off = 0
    end = len(data)
    while off < end:
        (stored,) = _STORED_LEN.unpack_from(data, off + _STORED_LEN_OFF)
        flen = JOURNAL_FRAME_HEADER_BYTES + stored
        off += (flen + JOURNAL_FRAME_ALIGN - 1) // JOURNAL_FRAME_ALIGN * JOURNAL_FRAME_ALIGN
        n += 1
    if off != end:
        raise JournalCorruptError(f"journal bytes end inside a frame ({off} != {end})")
    return n


def silence_ms(qos_timeout_ms: int) -> int:
    """How long a link may stay silent before it is taken for dead."""
    return max(MIRROR_PEER_SILENCE_MS_MIN, 2 * qos_timeout_ms)


# --- the primary's side ----------------------------------------------------------------


class Ring:
    """The journal's recent writes, in memory, for the senders.

    `publish` is the journal's `on_written` hook (called by the group leader with
    contiguous (position, bytes)); senders `take` from any frame boundary inside the
    ring. Bounded by `bytes_max`: the oldest writes drop out, and a sender that falls
    behind them reads the journal files instead."""

    def __init__(self, start_position: int, bytes_max: int | None = None) -> None:
        # Writes as two parallel lists from index `_head` on (older entries are
        # dropped by moving `_head`, and compacted now and then): a sender finds its
        # position by bisection, not by walking every write in the ring.
        self._pos: list[int] = []
        self._data: list[bytes] = []
        self._head = 0
        self._start = self._end = start_position
        self._bytes = 0
        self._bytes_max = MIRROR_RING_BYTES_MAX if bytes_max is None else bytes_max
        self._cv = threading.Condition()
        # (end position, monotonic time) of recent writes: lag in seconds for status.
        self.times: collections.deque[tuple[int, float]] = collections.deque(maxlen=4096)

    @property
    def end(self) -> int:
        return self._end

    @property
    def start(self) -> int:
        return self._start

    def publish(self, position: int, data: bytes, *, notify: bool = True) -> None:
        with self._cv:
            if position != self._end:
                if self._head == len(self._pos) and position > self._end:
                    # Writes made before the hook was attached (a promotion's rollback
                    # records, say) are in the files only: the ring starts here.
                    self._start = self._end = position
                else:
                    # A gap inside the ring would ship a broken stream: a bug.
                    raise AssertionError(f"journal write at {position}, ring ends at {self._end}")
            self._pos.append(position)
            self._data.append(data)
            self._end = position + len(data)
            self._bytes += len(data)
            while self._bytes > self._bytes_max and len(self._pos) - self._head > 1:
                d = self._data[self._head]
                self._data[self._head] = b""
                self._bytes -= len(d)
                self._start = self._pos[self._head] + len(d)
                self._head += 1
            if self._head >= 1024 and self._head * 2 >= len(self._pos):
                del self._pos[: self._head]
                del self._data[: self._head]
                self._head = 0
            self.times.append((self._end, time.monotonic()))
            if notify:
                self._cv.notify_all()

    def take(self, from_position: int, max_bytes: int) -> bytes | None:
        """Bytes from `from_position` (a frame boundary) to the ring's end, at most
        `max_bytes` of whole writes (at least one); b"" if there is nothing new, None
        if `from_position` is older than the ring (read the files)."""
        with self._cv:
            if from_position < self._start:
                return None
            if from_position >= self._end:
                return b""
            pos, data = self._pos, self._data
            # The write holding `from_position`: the last one starting at or before it.
            i = max(bisect.bisect_right(pos, from_position, self._head) - 1, self._head)
            out: list[bytes] = []
            size = 0
            for k in range(i, len(pos)):
                p, d = pos[k], data[k]
                piece = d if p >= from_position else d[from_position - p :]
                if out and size + len(piece) > max_bytes:
                    break
                out.append(piece)
                size += len(piece)
            return out[0] if len(out) == 1 else b"".join(out)

    def wait_past(self, position: int, timeout_s: float) -> bool:
        with self._cv:
            if self._end > position:
                return True
            self._cv.wait(timeout_s)
            return self._end > position

    def wake(self) -> None:
        with self._cv:
            self._cv.notify_all()

    def seconds_behind(self, position: int) -> float:
        """How long ago the journal first went past `position` (0.0: not past it)."""
        with self._cv:
            if position >= self._end:
                return 0.0
            for end, t in self.times:
                if end > position:
                    return max(0.0, time.monotonic() - t)
            return max(0.0, time.monotonic() - self.times[0][1]) if self.times else 0.0


@dataclass
class PeerState:
    """What the primary knows of one connected member (status and bookkeeping)."""

    name: str
    kind: str
    connected_at: float
    requested: int = 0  # the position it asked to start from
    sent: int = 0  # stream position after the last byte sent
    received: int = 0  # acknowledged positions, by level
    durable: int = 0
    applied: int = 0
    applied_seen: int = 0  # its database's applied position, from its heartbeats
    live: bool = False  # streaming from the ring (not catching up from files)
    active: bool = False  # a backup that holds commits back
    last_heard: float = 0.0
    closed: bool = False
    reason: str = ""


class _PeerLink:
    """One connected backup or async, on the primary: a sender and a reader thread."""

    def __init__(self, rep: Replicator, sock: socket.socket, peer: wire.Peer, kind: str):
        self.rep = rep
        self.sock = sock
        self.peer = peer
        self.state = PeerState(peer.member, kind, time.monotonic(), last_heard=time.monotonic())
        self._send_lock = threading.Lock()
        self._started = threading.Event()  # the CATCHUP_REQUEST arrived
        self._claim: tuple[int, int] | None = None  # the member's last frame, if shown
        self._runs: list[tuple[int, int]] | None = None  # its epoch runs, if shown
        self._reader = threading.Thread(
            target=self._read_loop, name=f"irisrep-mirror-read {peer.member}", daemon=True
        )
        self._sender = threading.Thread(
            target=self._send_loop, name=f"irisrep-mirror-send {peer.member}", daemon=True
        )

    def start(self) -> None:
        self._reader.start()
        self._sender.start()

    def close(self, reason: str) -> None:
        st = self.state
        if st.closed:
            return
        st.closed = True
        st.reason = reason
        self.rep._link_closed(self, reason)
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self.sock.close()
        self._started.set()
        self.rep.ring.wake()

    def _send(self, ftype: int, payload: bytes) -> None:
        with self._send_lock:
            wire.send_frame(self.sock, ftype, self.rep.epoch, payload)

    def _read_loop(self) -> None:
        # Buffered: this link owns the socket until it closes.
        reader = wire.FrameReader(self.sock, buffered=True)
        idle_ms = silence_ms(self.rep.qos_timeout_ms)
        try:
            while not self.state.closed:
                f = reader.read_frame(idle_timeout_ms=idle_ms)
                self.state.last_heard = time.monotonic()
                if f.epoch > self.rep.epoch:
                    self.rep._newer_epoch(f.epoch, self.peer.member)
                    raise WireError("payload", f"epoch {f.epoch} is newer than ours")
                if f.type == wire.ACK:
                    if f.epoch != self.rep.epoch:
                        raise WireError(
                            "payload", f"ACK of epoch {f.epoch}, ours is {self.rep.epoch}"
                        )
                    pos, level = wire.decode_ack(f.payload)
                    self.rep._on_ack(self, pos, level)
                elif f.type == wire.HEARTBEAT:
                    # A copy's heartbeat carries the position its database has applied.
                    self.state.applied_seen = wire.decode_u64(f.payload)
                elif f.type == wire.STATUS and self._started.is_set():
                    try:
                        body = json.loads(f.payload)
                        ps = mc.PeerStatus(**body["peer_status"])
                    except (ValueError, KeyError, TypeError):
                        raise WireError("payload", "bad STATUS from a member") from None
                    if self.peer.member == self.rep.partner:
                        self.rep._report(ps)
                elif f.type == wire.STATUS and not self._started.is_set():
                    # Before its CATCHUP_REQUEST a member may show its last frame
                    # (start position, checksum), so that a tail we never had is caught.
                    try:
                        body = json.loads(f.payload)
                        claim = body["last_frame"]
                        if claim is not None:
                            claim = (int(claim[0]), int(claim[1]))
                        runs = body.get("epochs")
                        if runs is not None:
                            runs = [(int(a), int(b)) for a, b in runs]
                    except (ValueError, KeyError, TypeError, IndexError):
                        raise WireError("payload", "bad STATUS before CATCHUP_REQUEST") from None
                    self._claim = claim
                    self._runs = runs
                elif f.type == wire.CATCHUP_REQUEST:
                    if self._started.is_set():
                        raise WireError("payload", "a second CATCHUP_REQUEST")
                    pos = wire.decode_u64(f.payload)
                    problem, cut = self.rep._check_start(pos, self._claim, self._runs)
                    if problem:
                        reply = {"refused": problem}
                        if cut is not None and cut < pos:
                            # Up to `cut` the member's journal is ours (same epochs at
                            # the same positions); beyond it, frames we never wrote.
                            reply["truncate_to"] = cut
                        self._send(wire.STATUS, _status_json(reply))
                        raise WireError("payload", problem)
                    self.state.requested = self.state.sent = pos
                    self.state.received = self.state.durable = self.state.applied = pos
                    self._started.set()
                else:
                    raise WireError("payload", f"unexpected {wire.TYPE_NAMES.get(f.type)} frame")
        except (WireError, OSError) as e:
            self.close(f"{e}")
        except IrisrepError as e:
            self.close(f"{type(e).__name__}: {e}")

    def _send_loop(self) -> None:
        rep = self.rep
        st = self.state
        beat_s = MIRROR_HEARTBEAT_MS / 1000.0
        try:
            self._started.wait()
            last_send = time.monotonic()
            while not st.closed and not rep.closed:
                # Take and send under the send lock: the group leader may send the same
                # bytes directly (Replicator._publish) when it finds the lock free and
                # `sent` at its position; the lock keeps the stream in order.
                with self._send_lock:
                    data = rep.ring.take(st.sent, MIRROR_BATCH_BYTES_MAX)
                    if data is None:
                        # Behind the ring: catch up from the journal files.
                        if st.live:
                            st.live = False
                            rep._set_live(self, False)
                        data = rep.journal.read_raw(st.sent, rep.ring.start, MIRROR_BATCH_BYTES_MAX)
                        if not data:
                            raise JournalCorruptError(
                                f"no journal frames at position {st.sent} to catch up from"
                            )
                    if data:
                        payload = struct.pack("<I", count_frames(data)) + data
                        # Count it sent before the send: the ack may come back before
                        # sendall returns here (a failed send closes the link anyway).
                        st.sent += len(data)
                        wire.send_frame(self.sock, wire.JOURNAL, rep.epoch, payload)
                        last_send = time.monotonic()
                        continue
                if not st.live:
                    st.live = True
                    rep._set_live(self, True)
                rep._maybe_activate(self)
                if not rep.ring.wait_past(st.sent, beat_s):
                    if time.monotonic() - last_send >= beat_s:
                        self._send(wire.HEARTBEAT, wire.encode_u64(rep.ring.end))
                        last_send = time.monotonic()
        except (WireError, OSError) as e:
            self.close(f"send failed: {e}")
        except (IrisrepError, ValueError) as e:
            log.error("mirror: cannot send the journal to %s: %s", self.peer.member, e)
            self.close(f"{type(e).__name__}: {e}")


def _status_json(obj: dict) -> bytes:
    return json.dumps(obj, sort_keys=True).encode()


class Replicator:
    """The primary's side: ships the journal to every connected member and makes
    commits wait for the Active backup (`wait`, called by commit.Committer)."""

    def __init__(
        self,
        journal,
        *,
        epoch: int,
        ack_level: str,
        qos_timeout_ms: int,
        members: dict[str, str],
        on_event=None,
    ) -> None:
        self.journal = journal
        self.epoch = epoch
        self.ack_level = ack_level
        self.ack_code = ACK_LEVEL_CODES[ack_level]
        self.qos_timeout_ms = qos_timeout_ms
        self.members = dict(members)  # name -> kind ("failover", "async-dr", ...)
        self.ring = Ring(journal.written_position)
        # Where this primary's life began (start or promotion): every member's stream
        # up to here is a prefix of ours; a tail beyond it may be one we never wrote.
        self.base_position = journal.written_position
        # The epochs of everything written before this life (scanned once): members
        # are compared with them and with this life's own run.
        self._runs_at_start, _ = epoch_runs(journal.fs, journal.dirpath, codec=journal.codec)
        self.closed = False
        self.fenced_by: int | None = None
        self._cv = threading.Condition()
        # Commits waiting for the Active backup: a heap of (position, seq, lock).
        self._waiters: list[tuple[int, int, threading.Lock]] = []
        self._seq = itertools.count()
        self._links: dict[str, _PeerLink] = {}
        self.active: _PeerLink | None = None
        self.events: collections.deque[tuple[float, str, str]] = collections.deque(maxlen=1000)
        self._on_event = on_event
        self.stats = {"waits": 0, "acked": 0, "alone": 0, "qos_timeouts": 0}
        self.observe_ack_s = None  # callable(seconds) per acknowledged wait (metrics)
        self._live: tuple[_PeerLink, ...] = ()  # links streaming live, for direct sends
        # With a controller (failover.FailoverDriver), the mirror core decides when the
        # backup stops holding commits back (DropBackup) and when nothing may commit
        # (StopCommitting): this object reports events and obeys.
        self.controller = None  # callable(mirrorcore event)
        self.partner: str | None = None  # the other failover member (for core events)
        self._gate = threading.Event()  # set: commits may return
        self._gate.set()
        self._failing_reported = False
        # The highest position of a commit that returned without the backup's ack: a
        # backup becomes Active only once it holds that too (else a takeover on the
        # arbiter's word could lose a commit acknowledged alone).
        self.alone_position = 0
        # The highest position the Active backup (any, so far) acknowledged: a commit up
        # to it is on the mirror even once this replicator closed (a planned demote).
        self.acked_end = 0
        journal.on_written = self._publish

    # --- events and links ---------------------------------------------------------------

    def _event(self, kind: str, text: str, at: float | None = None) -> None:
        self.events.append((time.time() if at is None else at, kind, text))
        log.warning("mirror: %s", text)
        if self._on_event is not None:
            self._on_event(kind, text)

    def _publish(self, position: int, data: bytes) -> None:
        """The journal's hook (group leader, before its write): into the ring, and
        straight onto the socket of every link that is live and idle, so the common
        case costs no hand-off to a sender thread. A busy link's sender takes it from
        the ring. Never raises into the journal: a failed send closes that link."""
        # No wake-up yet: a sender woken now would only contend for the GIL and the
        # send lock with this thread; it is woken below if a link still needs it.
        self.ring.publish(position, data, notify=False)
        payload = None
        served = 0
        for link in self._live:
            st = link.state
            if st.closed or st.sent != position:
                continue
            if not link._send_lock.acquire(blocking=False):
                continue
            failed = None
            try:
                if st.sent == position and not st.closed:
                    if payload is None:
                        payload = struct.pack("<I", count_frames(data)) + data
                    st.sent = position + len(data)
                    wire.send_frame(link.sock, wire.JOURNAL, self.epoch, payload)
                    served += 1
            except (WireError, OSError) as e:
                failed = e
            finally:
                link._send_lock.release()
            if failed is not None:
                link.close(f"send failed: {failed}")
        if served < len(self._links):
            self.ring.wake()

    def _set_live(self, link: _PeerLink, live: bool) -> None:
        with self._cv:
            links = [x for x in self._live if x is not link and not x.state.closed]
            if live and not link.state.closed:
                links.append(link)
            self._live = tuple(links)

    def on_peer(self, sock: socket.socket, peer: wire.Peer) -> None:
        """WireListener's callback: a member proved the key and its name."""
        kind = self.members.get(peer.member)
        if kind is None or self.closed:
            sock.close()
            return
        link = _PeerLink(self, sock, peer, kind)
        with self._cv:
            old = self._links.get(peer.member)
            self._links[peer.member] = link
        if old is not None:
            old.close("replaced by a new connection from the same member")
        self._event("connected", f"{peer.member} ({kind}) connected")
        link.start()
        if peer.member == self.partner:
            self._report(mc.PeerConnected())

    def _report(self, event) -> None:
        ctl = self.controller
        if ctl is not None:
            ctl(event)

    def _link_closed(self, link: _PeerLink, reason: str) -> None:
        self._set_live(link, False)
        # The declaration's time is taken before any waiter can see it: a commit that
        # returns alone afterwards returns after this instant.
        at = time.time()
        controlled = self.controller is not None and not self.closed
        with self._cv:
            if self._links.get(link.peer.member) is link:
                del self._links[link.peer.member]
            was_active = self.active is link
            if was_active and not controlled:
                self.active = None
                link.state.active = False
                self._release_waiters_locked()
        if link.peer.member == self.partner and controlled:
            if self._links.get(link.peer.member) is None:
                self._report(mc.PeerLost())
            if was_active:
                # The core decides: commits keep waiting until it drops the backup
                # (after the QoS timeout, when that is safe) or the backup is back.
                self._failing_reported = True
                self._report(mc.BackupInactive())
                self._event(
                    "backup-failing", f"lost the Active backup {link.peer.member}: {reason}"
                )
                return
        if was_active and not controlled and not self.closed:
            self._event(
                "backup-inactive",
                f"backup {link.peer.member} is no longer Active ({reason}); "
                f"the primary continues alone",
                at,
            )
        elif not self.closed:
            self._event("disconnected", f"{link.peer.member} disconnected: {reason}")

    def drop_backup(self, reason: str) -> None:
        """The core's DropBackup: the backup is no longer Active, waiting commits
        return (durable here only), and its link is closed (it must catch up again)."""
        at = time.time()
        with self._cv:
            link = self.active
            if link is None:
                return
            self.active = None
            link.state.active = False
            self._release_waiters_locked()
        self._event(
            "backup-inactive",
            f"backup {link.state.name} is no longer Active ({reason}); the primary continues alone",
            at,
        )
        link.close(reason)

    def set_gate(self, open_: bool) -> None:
        """StopCommitting / ResumeCommitting: while closed, no commit returns."""
        if open_:
            self._gate.set()
            self._event("resume", "commits may return again")
        else:
            self._gate.clear()
            self._event("stop-committing", "no commit may return (In Trouble or fenced)")

    def announce(self, status: dict) -> None:
        """Send the core's status to the partner now (on every heartbeat, and at once
        after the core's Announce)."""
        with self._cv:
            link = self._links.get(self.partner) if self.partner else None
        if link is None or link.state.closed:
            return
        try:
            with link._send_lock:
                wire.send_frame(
                    link.sock, wire.STATUS, self.epoch, json.dumps({"peer_status": status}).encode()
                )
        except (WireError, OSError) as e:
            link.close(f"send failed: {e}")

    def epoch_runs(self) -> tuple[list[tuple[int, int]], int]:
        """This primary's journal as epoch runs (journal.epoch_runs) and its end."""
        runs = list(self._runs_at_start)
        end = self.ring.end
        if end > self.base_position and (not runs or runs[-1][1] != self.epoch):
            runs.append((self.base_position, self.epoch))
        return runs, end

    def _check_start(
        self,
        position: int,
        claim: tuple[int, int] | None = None,
        runs: list[tuple[int, int]] | None = None,
    ) -> tuple[str, int | None]:
        """Why a member asking to start at `position` cannot (its stream is not a
        prefix of ours) and where its journal and ours part; ("", None) when it can.

        With the member's epoch runs, the check is exact at every position (log
        matching on the epochs frames carry); without them only its last frame is
        compared (an older member)."""
        end = self.ring.end
        if runs is not None:
            mine, mine_end = self.epoch_runs()
            cut = common_prefix(runs, position, mine, mine_end)
            if cut < position:
                return (
                    f"the member's journal parts from this primary's at {cut} (it ends at "
                    f"{position}): its tail after {cut} was never acknowledged here",
                    cut,
                )
            return "", None
        if position > end:
            return (
                f"the member's journal ends at {position}, past this primary's end {end}: "
                f"its tail was never written here (diverged)",
                None,
            )
        if claim is not None and position > 0:
            start, checksum = claim
            found = frame_checksum_at(self.journal.fs, self.journal.dirpath, start)
            if found != (position, checksum):
                return (
                    f"the member's last frame (at {start}, checksum {checksum:#x}) is not "
                    f"this primary's frame there: its tail diverged",
                    None,
                )
        return "", None

    def _newer_epoch(self, epoch: int, member: str) -> None:
        with self._cv:
            if self.fenced_by is None:
                self.fenced_by = epoch
        self._event("fenced", f"{member} reports epoch {epoch}, newer than ours: writes stop")

    def _maybe_activate(self, link: _PeerLink) -> None:
        st = link.state
        if st.kind != "failover" or st.active or st.closed:
            return
        with self._cv:
            old = self.active
            if (old is not None and not old.state.closed) or st.closed:
                return
            if self.ring.end - self._acked(st) > MIRROR_ACTIVE_LAG_BYTES_MAX:
                return
            if self._acked(st) < self.alone_position:
                return
            # A lost Active link the core has not dropped yet is replaced: its waiters
            # now wait for this link's acks (it has everything they need once caught up).
            self.active = link
            st.active = True
        self._event("backup-active", f"backup {st.name} is caught up and Active")
        self._failing_reported = False
        self._report(mc.BackupActive())
        # Tell it: a backup that knows it was Active may take over on the arbiter's word.
        try:
            with link._send_lock:
                wire.send_frame(
                    link.sock, wire.STATUS, self.epoch, json.dumps({"active": True}).encode()
                )
        except (WireError, OSError) as e:
            link.close(f"send failed: {e}")

    def _acked(self, st: PeerState) -> int:
        if self.ack_code == wire.ACK_RECEIVED:
            return max(st.received, st.durable, st.applied)
        if self.ack_code == wire.ACK_DURABLE:
            return max(st.durable, st.applied)
        return st.applied

    def _on_ack(self, link: _PeerLink, position: int, level: int) -> None:
        st = link.state
        if position > st.sent:
            raise WireError("payload", f"ACK of {position}, only {st.sent} was sent")
        with self._cv:
            if level == wire.ACK_RECEIVED:
                st.received = max(st.received, position)
            elif level == wire.ACK_DURABLE:
                st.durable = max(st.durable, position)
            else:
                st.applied = max(st.applied, position)
            if self.active is link:
                # Wake exactly the commits this ack covers (no herd: the others
                # keep sleeping until their own position is acknowledged).
                acked = self._acked(st)
                if acked > self.acked_end:
                    self.acked_end = acked
                heap = self._waiters
                while heap and heap[0][0] <= acked:
                    heapq.heappop(heap)[2].release()
        if self._failing_reported and self.active is link:
            self._failing_reported = False
            self._report(mc.AckReceived(position))
        if (self.active is None or self.active.state.closed) and st.live:
            self._maybe_activate(link)

    def _release_waiters_locked(self) -> None:
        """With _cv held, after `active` changed: every waiting commit returns."""
        for _pos, _seq, w in self._waiters:
            w.release()
        self._waiters.clear()

    # --- the commit's wait ----------------------------------------------------------------

    def wait(self, position: int) -> None:
        """Return when the Active backup acknowledged `position`, or it is no longer
        Active (then the commit is durable on this member only, as IRIS). With a
        controller, the core decides when a silent backup stops being Active, and no
        commit returns ALONE while it has stopped commits (In Trouble, fenced): one
        the backup acknowledged is safe on the mirror and returns."""
        t0 = time.perf_counter()
        if self._wait_ack(position):
            observe = self.observe_ack_s
            if observe is not None:
                observe(time.perf_counter() - t0)
            return
        if position > self.alone_position:
            self.alone_position = position
        if not self._gate.is_set():
            while not self._gate.wait(0.05):
                if self.fenced_by is not None or self.closed:
                    break
        if self.fenced_by is not None or (self.closed and self.controller is not None):
            why = f"fenced by epoch {self.fenced_by}" if self.fenced_by else "it stopped"
            raise DurabilityError(
                f"this member stopped being primary ({why}) before the mirror acknowledged "
                f"the commit: it may not have committed"
            )

    def _wait_ack(self, position: int) -> bool:
        """True when the Active backup acknowledged `position`; False: alone.

        Deciding "alone" and recording `alone_position` happen under one lock with the
        activation check (`_maybe_activate`), so no backup becomes Active between a
        commit's "alone" and its record: an Active backup always holds every commit
        that returned without an ack."""
        if self.fenced_by is not None:
            raise DurabilityError(
                f"this primary was fenced by epoch {self.fenced_by}: the commit may not be "
                f"acknowledged by the mirror"
            )
        link = self.active
        if position <= self.acked_end or (link is not None and self._acked(link.state) >= position):
            self.stats["acked"] += 1
            return True
        qos_s = self.qos_timeout_ms / 1000.0
        while True:
            w = threading.Lock()
            w.acquire()
            with self._cv:
                link = self.active
                if link is None:
                    self.stats["alone"] += 1
                    # Declared not Active (and logged) before we return alone.
                    self.alone_position = max(self.alone_position, position)
                    return False
                if self._acked(link.state) >= position:
                    self.stats["acked"] += 1
                    return True
                self.stats["waits"] += 1
                heapq.heappush(self._waiters, (position, next(self._seq), w))
            while not w.acquire(timeout=qos_s):
                self.stats["qos_timeouts"] += 1
                if self.controller is None:
                    link.close(
                        f"no acknowledgement of position {position} within the QoS timeout "
                        f"({self.qos_timeout_ms} ms)"
                    )
                    continue  # the close releases us (declared not Active first)
                # The core decides (DropBackup once safe); until then the commit waits.
                if not self._failing_reported:
                    self._failing_reported = True
                    self._report(mc.BackupInactive())
                if self.closed or self.fenced_by is not None:
                    return self._acked(link.state) >= position
            # Released by the ack that covers us, or by the backup's declaration as not
            # Active. A link closed after acknowledging keeps its acked positions.
            if self._acked(link.state) >= position:
                self.stats["acked"] += 1
                return True
            # Not acknowledged: loop, deciding again under the lock (alone, or wait for
            # a newly Active backup's ack).

    # --- status ------------------------------------------------------------------------------

    def peers(self) -> list[dict]:
        end = self.ring.end
        out = []
        with self._cv:
            links = list(self._links.values())
        for link in links:
            st = link.state
            # What its database has applied: acknowledged at ack level `applied`,
            # else told by its heartbeats (an ack says only received or durable).
            applied = max(st.applied, st.applied_seen)
            acked = (
                self._acked(st)
                if st.kind == "failover"
                else max(st.durable, st.applied, st.received)
            )
            behind = max(0, end - acked)
            if st.active:
                transfer = "Active"
            elif behind == 0:
                transfer = "Caught up"
            else:
                transfer = f"{behind} bytes behind"
            out.append(
                {
                    "member": st.name,
                    "kind": st.kind,
                    "status": ("Backup" if st.kind == "failover" else "Connected")
                    if st.live
                    else "Synchronizing",
                    "active": st.active,
                    "journal_transfer": transfer,
                    "sent": st.sent,
                    "received": st.received,
                    "durable": st.durable,
                    "applied": applied,
                    "lag_bytes": behind,
                    "lag_s": round(self.ring.seconds_behind(acked), 3),
                    # For the journal purge (purge.member_positions): positions are
                    # known once the member asked where to start; a copy's heartbeat
                    # carries the position its database has applied.
                    "started": link._started.is_set(),
                    "applied_seen": st.applied_seen,
                    "last_heard_ago_s": round(max(0.0, time.monotonic() - st.last_heard), 3),
                    "dejournaling": "Caught up"
                    if applied >= end
                    else f"{max(0, end - applied)} bytes behind",
                }
            )
        return out

    def hand_over(self, link: _PeerLink, end: int) -> None:
        """Planned handover: tell the backup (which has acknowledged `end`, the whole
        journal) to take over. The caller has stopped committing."""
        body = json.dumps({"handover": True, "end": end, "epoch": self.epoch}).encode()
        with link._send_lock:
            wire.send_frame(link.sock, wire.STATUS, self.epoch, body)
        self._event("handover", f"handing over to {link.state.name} at position {end}")

    def close(self) -> None:
        self.closed = True
        self.journal.on_written = None
        self._gate.set()
        with self._cv:
            links = list(self._links.values())
            self._release_waiters_locked()
        for link in links:
            link.close("the primary is stopping")
        self.ring.wake()


# --- the copy's side (backup and async) ---------------------------------------------------


class _Stale(Exception):
    """This connection must end (logged reason); the link tries again later."""


class _Diverged(Exception):
    """The primary says our tail after `position` is not in its stream."""

    def __init__(self, position: int, why: str) -> None:
        super().__init__(f"diverged after {position}: {why}")
        self.position = position


class CopyLink:
    """A backup's or async's link to the primary: receive, journal, ack, apply.

    `candidates` are the (member name, mirror address) pairs that may be primary; the
    link tries them in turn, and keeps trying every MIRROR_RECONNECT_MS. `epoch` is
    this member's epoch; `on_epoch(n)` is called (before anything of epoch n is
    journaled) when the primary's is newer, so that the member persists it."""

    def __init__(
        self,
        db,
        *,
        mirror: str,
        member: str,
        key: bytes,
        candidates: list[tuple[str, tuple[str, int]]],
        epoch: int,
        ack_level: str,
        qos_timeout_ms: int,
        on_epoch=None,
        on_handover=None,
        ssl_context=None,
        source_host: str | None = None,
    ) -> None:
        self.db = db
        self.source_host = source_host
        self._on_handover = on_handover
        self.journal = db.journal
        self.codec = db.journal.codec
        self.mirror = mirror
        self.member = member
        self._key = key
        self.candidates = list(candidates)
        self.epoch = epoch
        self.ack_level = ack_level
        self.ack_code = ACK_LEVEL_CODES[ack_level]
        self.qos_timeout_ms = qos_timeout_ms
        self._on_epoch = on_epoch
        self._ssl = ssl_context
        self.closed = False
        self.primary: str | None = None  # the member we stream from, when connected
        self.primary_end = 0  # its journal end, from its heartbeats
        self.connected_at = 0.0
        self.last_error = ""
        self.caught_up_at: float | None = None
        self.active = False  # the primary declared this link its Active backup
        self.truncated: list[dict] = []  # tails dropped on a primary's word (report)
        self.on_peer_status = None  # (primary name, PeerStatus): the failover driver
        self.on_truncated = None  # (report dict): the member's history
        self.on_event = None  # (kind, text): the member's event log (irisrep events)
        self.paused = False  # no (re)connecting: a takeover is fetching the tail
        # An operator's pause of dejournaling (a reporting async, per mirror): frames
        # are still received, made durable and acknowledged; applying them waits.
        self.dejournal_paused = False
        self._behind_since: float | None = None  # when the lag last became nonzero
        self._applied_told = 0.0  # when the primary last heard our applied position
        self._sock: socket.socket | None = None
        self._send_lock = threading.Lock()
        self.stats = {"connects": 0, "batches": 0, "flushes": 0, "applied_records": 0}
        self._thread = threading.Thread(
            target=self._run, name=f"irisrep-copy {member}", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self.closed = True
        self._drop()
        self._thread.join(timeout=30)

    def announce(self, status: dict) -> None:
        """Send this member's core status to the primary (its partner) now."""
        sock = self._sock
        if sock is None or self.primary is None:
            return
        # A failed send: the link thread sees the broken connection.
        with contextlib.suppress(WireError, OSError):
            self._send(sock, wire.STATUS, json.dumps({"peer_status": status}).encode())

    def pause(self) -> None:
        """Stop following: drop the connection and do not reconnect (a takeover
        fetches the rest of the journal from the old primary's agent)."""
        self.paused = True
        self._drop()
        deadline = time.monotonic() + 10
        while self.primary is not None and time.monotonic() < deadline:
            time.sleep(0.005)

    def pause_dejournaling(self) -> None:
        """Hold applying (the journal is still received, made durable and
        acknowledged): the database stays at a frame boundary, as when a backup
        window holds dejournaling back, and `resume_dejournaling` catches up from
        this member's own journal. Not kept across a restart (recovery rolls the
        whole durable journal forward)."""
        self.dejournal_paused = True

    def resume_dejournaling(self) -> int:
        """Apply again: catch up from the journal now, on the caller's thread (the
        link thread's next batch or heartbeat would too; apply_frames skips what
        either already applied). Returns the data records applied here."""
        self.dejournal_paused = False
        n = self.db.apply_from_journal()
        self.stats["applied_records"] += n
        return n

    def _drop(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    # --- connecting ---------------------------------------------------------------------

    def _run(self) -> None:
        while not self.closed:
            for name, address in self.candidates:
                if self.closed:
                    return
                if self.paused:
                    break
                try:
                    sock, peer = wire.connect(
                        address,
                        mirror=self.mirror,
                        member=self.member,
                        key=self._key,
                        ssl_context=self._ssl,
                        source_host=self.source_host,
                    )
                except (OSError, WireError) as e:
                    self.last_error = f"{name}: {e}"
                    continue
                self._sock = sock
                try:
                    self._session(sock, name, peer)
                except _Diverged as e:
                    self._drop()
                    self._drop_tail(name, e)
                except (_Stale, WireError, OSError) as e:
                    if not self.closed:
                        self.last_error = f"{name}: {e}"
                        if self.primary is not None:
                            log.warning("mirror: link to %s ended: %s", name, e)
                            self._note("link lost", f"link to {name} ended: {e}")
                except (IrisrepError, ValueError) as e:
                    # A frame that does not verify at our position, a failed fdatasync:
                    # this connection ends; a DurabilityError stops the journal for good.
                    self.last_error = f"{name}: {type(e).__name__}: {e}"
                    log.error("mirror: link to %s ended: %s", name, self.last_error)
                    self._note("link lost", f"link to {name} ended: {self.last_error}")
                finally:
                    self.primary = None
                    self.active = False
                    self.caught_up_at = None
                    self._drop()
                if self.journal.failure is not None:
                    return
            if not self.closed:
                time.sleep(MIRROR_RECONNECT_MS / 1000.0)

    def _send(self, sock, ftype: int, payload: bytes) -> None:
        with self._send_lock:
            wire.send_frame(sock, ftype, self.epoch, payload)

    def _session(self, sock, name: str, peer: wire.Peer) -> None:
        if peer.epoch < self.epoch:
            raise _Stale(f"its epoch {peer.epoch} is older than ours ({self.epoch})")
        if peer.epoch > self.epoch:
            self._adopt_epoch(peer.epoch)
        last = self.journal.last_frame
        runs, _end = epoch_runs(self.journal.fs, self.journal.dirpath, codec=self.codec)
        self._send(
            sock,
            wire.STATUS,
            json.dumps(
                {"last_frame": list(last) if last else None, "epochs": [list(r) for r in runs]}
            ).encode(),
        )
        self._send(sock, wire.CATCHUP_REQUEST, wire.encode_u64(self.journal.end_position))
        unflushed: list[tuple[int, bytes]] = []  # appended, not yet fdatasynced
        try:
            self._stream(sock, name, unflushed)
        finally:
            # Frames appended but not yet synced when the connection ended are in the
            # journal (and a reconnect asks for what follows them): make them durable
            # and apply them, or they would be skipped by dejournaling.
            if unflushed and self.journal.failure is None:
                self.journal.flush()
                self._apply(unflushed)

    def _sync_and_ack(self, sock, unflushed: list) -> None:
        """Make the appended batches durable (one fdatasync), acknowledge, apply."""
        if not unflushed:
            return
        end = unflushed[-1][0] + len(unflushed[-1][1])
        self.journal.flush(end)
        self.stats["flushes"] += 1
        if self.ack_code != wire.ACK_APPLIED:
            self._send(sock, wire.ACK, wire.encode_ack(end, wire.ACK_DURABLE))
        chunks = list(unflushed)
        unflushed.clear()
        self._apply(chunks)
        if self.ack_code == wire.ACK_APPLIED:
            # Only what was applied: a backup of this member may hold dejournaling
            # back (then the primary's QoS decides, as for any slow apply).
            applied = min(end, self.db.applied_position)
            self._send(sock, wire.ACK, wire.encode_ack(applied, wire.ACK_APPLIED))
        elif time.monotonic() - self._applied_told >= MIRROR_HEARTBEAT_MS / 1000.0:
            # The applied position, at most every heartbeat interval even while the
            # stream is busy (the primary's heartbeats, which we answer with it, only
            # flow when it is idle): the journal purge holds files for what a copy
            # has applied, and a stale position would hold more than needed.
            self._tell_applied(sock)
        self.primary_end = max(self.primary_end, end)

    def _tell_applied(self, sock) -> None:
        self._applied_told = time.monotonic()
        self._send(sock, wire.HEARTBEAT, wire.encode_u64(self.db.applied_position))

    def _stream(self, sock, name: str, unflushed: list) -> None:
        # Buffered: the stream owns the socket until the session ends.
        reader = wire.FrameReader(sock, buffered=True)
        idle_ms = silence_ms(self.qos_timeout_ms)
        while not self.closed:
            f = reader.read_frame(idle_timeout_ms=idle_ms)
            if f.epoch < self.epoch:
                raise _Stale(
                    f"{wire.TYPE_NAMES.get(f.type)} frame of epoch {f.epoch}, ours is {self.epoch}"
                )
            if f.epoch > self.epoch:
                self._adopt_epoch(f.epoch)
            if f.type == wire.JOURNAL:
                wire.decode_journal_batch(f.payload)  # framing, before anything changes
                data = bytes(memoryview(f.payload)[4:])
                start, end = self.journal.append_frames(data)  # verified, all or nothing
                if self.primary is None:
                    self.primary = name
                    self.connected_at = time.monotonic()
                    self.stats["connects"] += 1
                    log.warning("mirror: streaming from %s at position %d", name, start)
                    self._note("link", f"streaming from {name} at position {start}")
                self.stats["batches"] += 1
                unflushed.append((start, data))
                if self.ack_code == wire.ACK_RECEIVED:
                    self._send(sock, wire.ACK, wire.encode_ack(end, wire.ACK_RECEIVED))
                if sum(len(d) for _s, d in unflushed) < MIRROR_BATCH_BYTES_MAX and (
                    reader.buffered_bytes() or _readable(sock)
                ):
                    # More is waiting: one fdatasync for all of it. Whatever frame comes
                    # next, the batches are synced before it is handled (never left).
                    continue
                self._sync_and_ack(sock, unflushed)
                continue
            self._sync_and_ack(sock, unflushed)
            if f.type == wire.HEARTBEAT:
                if (
                    not self.dejournal_paused
                    and self.db.applied_position < self.journal.durable_position
                ):
                    # An idle stream: apply what a backup of this member held back.
                    self._catch_up(sock)
                self.primary_end = wire.decode_u64(f.payload)
                if self.primary is None:
                    self.primary = name
                    self.connected_at = time.monotonic()
                    self.stats["connects"] += 1
                    log.warning(
                        "mirror: connected to %s (caught up at %d)", name, self.journal.end_position
                    )
                    self._note(
                        "link", f"connected to {name} (caught up at {self.journal.end_position})"
                    )
                self._tell_applied(sock)
            elif f.type == wire.STATUS:
                try:
                    st = json.loads(f.payload)
                except ValueError:
                    st = {}
                if isinstance(st, dict) and set(st) == {"active"}:
                    self.active = bool(st["active"])
                    continue
                if isinstance(st, dict) and isinstance(st.get("peer_status"), dict):
                    cb = self.on_peer_status
                    if cb is not None:
                        try:
                            cb(name, mc.PeerStatus(**st["peer_status"]))
                        except TypeError:
                            raise _Stale("bad peer status from the primary") from None
                    continue
                if isinstance(st, dict) and isinstance(st.get("truncate_to"), int):
                    raise _Diverged(st["truncate_to"], str(st.get("refused", "")))
                if isinstance(st, dict) and st.get("handover") and self._on_handover:
                    # Planned: the primary stopped committing at `end`; ours must be
                    # the whole of it (all durable: synced just above).
                    if self._on_handover(int(st.get("end", -1)), f.epoch):
                        continue
                raise _Stale(f"not streaming: {f.payload[:200].decode('utf-8', 'replace')}")
            else:
                raise _Stale(f"unexpected {wire.TYPE_NAMES.get(f.type)} frame")
            if self.caught_up_at is None and self.journal.durable_position >= self.primary_end:
                self.caught_up_at = time.monotonic()

    def _note(self, kind: str, text: str) -> None:
        if self.on_event is not None:
            self.on_event(kind, text)

    def _drop_tail(self, name: str, e: _Diverged) -> None:
        """Undo and cut our tail after the primary's point; the next connection then
        catches up from there. Reported in the log and in `truncated`."""
        end = self.journal.end_position
        if e.position >= end:
            self.last_error = f"{name}: {e} (nothing of ours to drop: rebuild this member)"
            log.error("mirror: %s", self.last_error)
            return
        undone = self.db.truncate_stream(e.position)
        report = {"time": time.time(), "from": e.position, "to": end, "records": len(undone)}
        self.truncated.append(report)
        if self.on_truncated is not None:
            self.on_truncated(
                {
                    "from": e.position,
                    "to": end,
                    "records": len(undone),
                    "keys": [bytes(r[4]).hex() for r in undone[:100]],
                    "primary": name,
                }
            )
        log.warning(
            "mirror: %s: dropped our journal tail %d..%d (%d records undone), catching up",
            name,
            e.position,
            end,
            len(undone),
        )

    def _adopt_epoch(self, epoch: int) -> None:
        if self._on_epoch is not None:
            self._on_epoch(epoch)
        self.epoch = epoch

    # --- applying (dejournaling) ----------------------------------------------------------

    def _catch_up(self, sock) -> None:
        """Apply the durable frames dejournaling left behind (a backup window held it
        back), from this member's own journal."""
        self.stats["applied_records"] += self.db.apply_from_journal()
        if self.ack_code == wire.ACK_APPLIED:
            self._send(sock, wire.ACK, wire.encode_ack(self.db.applied_position, wire.ACK_APPLIED))

    def _apply(self, chunks) -> None:
        """Apply durable chunks to the database, in order, on the link's own thread,
        right after their ACK went out: the primary is busy with the ack meanwhile,
        and a separate applier thread would only fight this one for the GIL when
        the next frame arrives. At ack level `applied` the ACK follows the apply.

        This thread never waits for a backup of this member: inside a backup window
        the apply stops at a frame boundary once the dirty blocks reach the soft
        limit (`apply_frames(yield_to_backup=True)`). Everything not applied is
        durable in the journal; the next batch, or the next heartbeat of an idle
        stream, first applies it from there (`apply_from_journal`), in order, and
        these chunks only then (they may have been applied from the journal too)."""
        if self.dejournal_paused:
            return  # durable in the journal: resume_dejournaling applies it from there
        db = self.db
        first = chunks[0][0]
        if db.applied_position < first:
            self.stats["applied_records"] += db.apply_from_journal(first)
            if db.applied_position < first:
                return  # still held back: these chunks are in the journal as well
        codec = self.codec
        frames = []
        for start, data in chunks:
            off = 0
            while off < len(data):
                header, raw, nxt = codec.parse_frame(data, off, start + off)
                frames.append((start + off, codec.decode_records(raw, header.count)))
                off = nxt
        end = chunks[-1][0] + len(chunks[-1][1])
        self.stats["applied_records"] += db.apply_frames(frames, end, yield_to_backup=True)

    def wait_applied(self, position: int, timeout_s: float) -> bool:
        """Tests and tools: wait until the database has applied up to `position`."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.db.applied_position >= position:
                return True
            time.sleep(0.01)
        return self.db.applied_position >= position

    def status(self) -> dict:
        durable = self.journal.durable_position
        behind = max(0, self.primary_end - durable)
        now = time.monotonic()
        if behind == 0:
            self._behind_since = None
        elif self._behind_since is None:
            self._behind_since = now
        if self.primary is None:
            transfer = "Disconnected"
        elif behind == 0:
            transfer = "Caught up"
        else:
            transfer = f"{behind} bytes behind"
        applied = self.db.applied_position
        return {
            "connected_to": self.primary,
            "journal_transfer": transfer,
            "received": self.journal.end_position,
            "durable": durable,
            "applied": applied,
            "primary_end": self.primary_end,
            "lag_bytes": behind,
            "lag_s": 0.0 if self._behind_since is None else round(now - self._behind_since, 3),
            "dejournaling": ("Paused, " if self.dejournal_paused else "")
            + ("Caught up" if applied >= durable else f"{durable - applied} bytes behind"),
            "dejournal_paused": self.dejournal_paused,
            "epoch": self.epoch,
            "last_error": self.last_error,
        }


def _readable(sock) -> bool:
    """Whether more bytes are waiting on the socket now (TLS: decrypted or raw)."""
    pending = getattr(sock, "pending", None)
    if pending is not None and pending():
        return True
    r, _w, _x = select.select([sock], [], [], 0)
    return bool(r)
