"""The HTTP health and metrics listener of one member (config key `http_address`).

Owns the member's HTTP port: health checks for load balancers and orchestrators
(`/health`, `/primary` (alias `/master`), `/backup`, `/replica?lag=` as Patroni
names them, and IRIS's `/csp/bin/mirror_status.cxw`, so IRIS load-balancer checks
carry over), and Prometheus metrics (`/metrics`) from a registry of the member's
own (`MemberMetrics`): several members in one process never mix their figures. On
an async, each mirror it follows (a reporting async may follow several) has its
own replica check (`/replica?mirror=M&lag=N`, also `/replica/M`) and its own
`irisrep_mirror_*{mirror=...}` series.

Promises:
- a check answers 200 only when its condition holds at that instant, else 503 with
  a body saying why (role, epoch, status, reason); a bad query is 400, an unknown
  path 404, a method other than GET or HEAD 405;
- an exception while answering never reaches the client as a traceback: 500 with a
  one-line message, the traceback in the log;
- read only: no request changes the member. Positions, lag, role and epoch are read
  at scrape time; only the latency histograms are fed by the commit path (one
  `observe` per commit or commit group, no lock of ours);
- bounded: at most HTTP_CONNECTIONS_MAX requests at once (more are closed
  unanswered), HTTP_REQUEST_BYTES_MAX bytes of request line and headers and
  HTTP_REQUEST_TIMEOUT_MS per request, one request per connection.
"""

from __future__ import annotations

import json
import logging
import re
import socket
import socketserver
import sys
import threading
from decimal import Decimal, InvalidOperation
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
)

from .config import Address
from .constants import (
    HTTP_CONNECTIONS_MAX,
    HTTP_LAG_CHARS_MAX,
    HTTP_POLL_INTERVAL_MS,
    HTTP_QUERY_FIELDS_MAX,
    HTTP_REQUEST_BYTES_MAX,
    HTTP_REQUEST_TIMEOUT_MS,
    METRICS_LATENCY_BUCKETS_S,
    MIRROR_ROLES,
)

log = logging.getLogger("irisrep.http")

JSON = "application/json"
TEXT = "text/plain; charset=utf-8"

# --- what the checks decide on -----------------------------------------------------------


def member_view(member) -> dict:
    """The member's status (`Member.status()`) with `running`, `fenced_by` and
    `handing_over`; while it starts, stops, or after a failed write stopped its
    database, who it is and why it is not running."""
    base = {"member": member.name, "role": member.role, "epoch": member.epoch}
    db = member.database
    if member.closed or db is None or db.closed:
        why = "the member is stopping" if member.closed else "the member is not started"
        return {**base, "running": False, "status": "Down", "reason": why}
    stopped = db.failure or db.journal.failure
    if stopped is not None:
        return {
            **base,
            "running": False,
            "status": "Down",
            "reason": f"the database stopped after a failed write: {stopped}",
        }
    try:
        view = member.status()
    except Exception:
        if member.closed:  # it began to stop while we read it
            return {**base, "running": False, "status": "Down", "reason": "the member is stopping"}
        raise
    rep = member.replicator
    view["running"] = True
    view["fenced_by"] = rep.fenced_by if rep is not None else None
    # A switchover has begun: new writes get <PROTECT> while the backup catches up.
    view["handing_over"] = view.get("role") == "primary" and db.protected
    return view


def check_primary(v: dict) -> tuple[bool, str]:
    """The primary of the current epoch, committing: not In Trouble, not fenced by a
    newer epoch, not handing over."""
    if not v.get("running"):
        return False, v.get("reason", "not running")
    if v.get("role") != "primary":
        return False, f"this member is {v.get('role')}"
    if v.get("fenced_by") is not None:
        return False, f"fenced by epoch {v['fenced_by']}"
    if v.get("status") != "Primary":
        return False, f"status is {v.get('status')}"
    if v.get("handing_over"):
        return False, "handing over (switchover in progress)"
    return True, "primary"


def check_backup(v: dict) -> tuple[bool, str]:
    """A failover backup streaming live and caught up (status Backup)."""
    if not v.get("running"):
        return False, v.get("reason", "not running")
    if v.get("role") != "backup":
        return False, f"this member is {v.get('role')}"
    if v.get("status") != "Backup":
        return False, f"status is {v.get('status')}"
    return True, "backup"


def check_replica(v: dict, lag_max_bytes: int | None) -> tuple[bool, str]:
    """A copy (backup or async) connected to its primary and at most `lag_max_bytes`
    behind it. A copy without a primary is never a replica, whatever its last known
    lag: it may be any distance behind by now."""
    if not v.get("running"):
        return False, v.get("reason", "not running")
    if v.get("role") not in ("backup", "async"):
        return False, f"this member is {v.get('role')}"
    if v.get("connected_to") is None:
        return False, f"not connected to a primary (status {v.get('status')})"
    lag = int(v.get("lag_bytes", 0))
    if lag_max_bytes is not None and lag > lag_max_bytes:
        return False, f"{lag} bytes behind, more than {lag_max_bytes}"
    return True, f"{lag} bytes behind"


def find_mirror(v: dict, mirror: str) -> dict | None:
    """The entry of `v["mirrors"]` for `mirror` (case ignored, as the client's
    use_database); None if this member does not follow it."""
    for entry in v.get("mirrors") or ():
        if entry["mirror"].lower() == mirror.lower():
            return entry
    return None


def check_mirror_replica(v: dict, entry: dict, lag_max_bytes: int | None) -> tuple[bool, str]:
    """One followed mirror's copy on an async: the member runs, that copy's link is
    connected to the mirror's primary, and its journal is at most `lag_max_bytes`
    behind (as check_replica, per mirror). A paused dejournaling does not fail it:
    the body says so (`dejournal_paused`, `dejournal_lag_bytes`)."""
    if not v.get("running"):
        return False, v.get("reason", "not running")
    if v.get("role") != "async":
        return False, f"this member is {v.get('role')}"
    if entry.get("connected_to") is None:
        return (
            False,
            f"{entry['mirror']}: not connected to its primary (status {entry.get('status')})",
        )
    lag = int(entry.get("lag_bytes", 0))
    if lag_max_bytes is not None and lag > lag_max_bytes:
        return False, f"{entry['mirror']}: {lag} bytes behind, more than {lag_max_bytes}"
    return True, f"{entry['mirror']}: {lag} bytes behind"


_LAG = re.compile(r"(\d+(?:\.\d+)?)\s*([A-Za-z]*)")
# Binary multiples, as PostgreSQL and Patroni read `16kB`, `64MB`, `1GB`.
_UNITS = {
    "": 1,
    "b": 1,
    **{u: 1024 for u in ("k", "kb", "kib")},
    **{u: 1024**2 for u in ("m", "mb", "mib")},
    **{u: 1024**3 for u in ("g", "gb", "gib")},
    **{u: 1024**4 for u in ("t", "tb", "tib")},
}


def parse_lag(text: str) -> int:
    """`/replica?lag=`: bytes as `1048576`, or with a unit: `16kB`, `10MB`, `1.5GiB`
    (binary multiples, case ignored). ValueError saying what is allowed."""
    what = f"lag={text[:HTTP_LAG_CHARS_MAX]!r}: not a size in bytes such as 1048576, 16kB, 10MB"
    t = text.strip()
    m = _LAG.fullmatch(t) if len(t) <= HTTP_LAG_CHARS_MAX else None
    if m is None or m[2].lower() not in _UNITS:
        raise ValueError(what)
    try:
        return int(Decimal(m[1]) * _UNITS[m[2].lower()])
    except InvalidOperation:
        raise ValueError(what) from None


# --- metrics -----------------------------------------------------------------------------


class MemberMetrics:
    """A member's Prometheus metrics, in a registry of its own (`registry`).

    The latency histograms are fed by the commit path (`commit_latency.observe`
    by `Committer.sync`, `ack_latency.observe` by `Replicator.wait`); everything
    else is read from the member when scraped (`_MemberCollector`)."""

    def __init__(self, member) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.commit_latency = Histogram(
            "irisrep_commit_latency_seconds",
            "Time from a commit's sync to its return: durable locally and, on a "
            "primary with an Active backup, acknowledged by it",
            buckets=METRICS_LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.ack_latency = Histogram(
            "irisrep_ack_latency_seconds",
            "Time a commit group waited, after its local fdatasync, for the Active "
            "backup's acknowledgement (waits that ended alone are not counted)",
            buckets=METRICS_LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.registry.register(_MemberCollector(member))

    def render(self) -> bytes:
        """The Prometheus text exposition of this member's registry."""
        return generate_latest(self.registry)


class _MemberCollector:
    """Reads the member at scrape time: nothing on the commit path updates these."""

    def __init__(self, member) -> None:
        self.member = member

    def collect(self):
        m = self.member
        yield InfoMetricFamily(
            "irisrep_member",
            "This member: its mirror, name and kind",
            value={"mirror": m.config.mirror_name, "member": m.name, "kind": m.kind},
        )
        role = GaugeMetricFamily("irisrep_role", "1 for the member's current role", labels=["role"])
        for r in MIRROR_ROLES:
            role.add_metric([r], 1.0 if m.role == r else 0.0)
        yield role
        yield GaugeMetricFamily("irisrep_epoch", "The member's mirror epoch", value=m.epoch)
        v = member_view(m)
        yield GaugeMetricFamily(
            "irisrep_up", "1 while the member runs with its database open", value=int(v["running"])
        )
        status = GaugeMetricFamily(
            "irisrep_status", "1 for the member's mirror status (as irisrep ps)", labels=["status"]
        )
        status.add_metric([str(v.get("status", "Unknown"))], 1.0)
        yield status
        written = GaugeMetricFamily(
            "irisrep_journal_written_bytes",
            "Journal stream position written here (a primary's end; a copy's received)",
        )
        received = GaugeMetricFamily(
            "irisrep_journal_received_bytes",
            "Journal stream position received from the primary (a copy; a primary: its end)",
        )
        durable = GaugeMetricFamily(
            "irisrep_journal_durable_bytes", "Journal stream position fdatasynced here"
        )
        applied = GaugeMetricFamily(
            "irisrep_journal_applied_bytes",
            "Journal stream position applied to the database (a primary: its end)",
        )
        lag_bytes = GaugeMetricFamily(
            "irisrep_lag_bytes", "How far a copy's durable journal is behind its primary (0 on one)"
        )
        lag_s = GaugeMetricFamily(
            "irisrep_lag_seconds", "How long a copy has been behind its primary (0 when caught up)"
        )
        peer_lag = GaugeMetricFamily(
            "irisrep_peer_lag_bytes",
            "On a primary: how far each connected member's acknowledgements are behind",
            labels=["peer", "kind"],
        )
        peer_active = GaugeMetricFamily(
            "irisrep_peer_active", "On a primary: 1 for its Active backup", labels=["peer"]
        )
        if v["running"]:
            written.add_metric([], v.get("journal_end", 0))
            received.add_metric([], v.get("received", v.get("journal_end", 0)))
            durable.add_metric([], v.get("journal_durable", 0))
            applied.add_metric([], v.get("applied", 0))
            lag_bytes.add_metric([], v.get("lag_bytes", 0))
            lag_s.add_metric([], v.get("lag_s", 0.0))
            for p in v.get("peers", ()):
                peer_lag.add_metric([p["member"], p["kind"]], p["lag_bytes"])
                peer_active.add_metric([p["member"]], 1.0 if p["active"] else 0.0)
        yield from (written, received, durable, applied, lag_bytes, lag_s, peer_lag, peer_active)
        db = m.database
        txns = CounterMetricFamily(
            "irisrep_transactions",
            "Transactions ended at $TLEVEL 0, by outcome (commit: TCOMMIT; rollback: "
            "TROLLBACK); autocommitted changes are counted by irisrep_commit_latency_seconds",
            labels=["outcome"],
        )
        txns.add_metric(["commit"], db.txn_commit_count if db is not None else 0)
        txns.add_metric(["rollback"], db.txn_rollback_count if db is not None else 0)
        yield txns
        rec = db.wij_recovery if db is not None else None
        finished = rec is not None and rec.state_found == "active"
        yield CounterMetricFamily(
            "irisrep_wij_recoveries",
            "Interrupted WIJ cycles finished by recovery when this process opened the database",
            value=1 if finished else 0,
        )
        yield CounterMetricFamily(
            "irisrep_wij_recovered_blocks",
            "Blocks restored from the WIJ by that recovery",
            value=rec.restored_blocks if finished else 0,
        )
        failovers = CounterMetricFamily(
            "irisrep_failovers",
            "Times this member became primary while running, by how: failover (the mirror "
            "core's takeover), switchover (planned handover), manual (irisrep promote)",
            labels=["how"],
        )
        for how, n in dict(m.promotion_counts).items():
            failovers.add_metric([how], n)
        yield failovers
        changes = CounterMetricFamily(
            "irisrep_role_changes",
            "Changes of this member's role while running",
            labels=["from", "to"],
        )
        for (old, new), n in dict(m.role_change_counts).items():
            changes.add_metric([old, new], n)
        yield changes
        yield from _mirror_families(v)


def _mirror_families(v: dict):
    """On an async: one series per mirror it follows, labelled `mirror` (a reporting
    async may follow several; the unlabelled series above are its own mirror's)."""
    specs = (
        ("received_bytes", "received", "Journal stream position received from that mirror"),
        ("durable_bytes", "durable", "Journal stream position fdatasynced from that mirror"),
        ("applied_bytes", "applied", "Journal stream position applied to that mirror's copy"),
        ("lag_bytes", "lag_bytes", "How far that copy's durable journal is behind its primary"),
        ("lag_seconds", "lag_s", "How long that copy has been behind its primary"),
        (
            "dejournal_lag_bytes",
            "dejournal_lag_bytes",
            "Journal received from that mirror and not yet applied to its copy",
        ),
    )
    flags = (
        ("connected", lambda e: e.get("connected_to") is not None, "1 while connected"),
        ("dejournal_paused", lambda e: e.get("dejournal_paused"), "1 while dejournaling is paused"),
        ("read_write", lambda e: e.get("read_write"), "1 when the copy is read-write"),
        (
            "failover_eligible",
            lambda e: e.get("failover_eligible", True),
            "0 once the copy was read-write: never eligible to fail over again",
        ),
    )
    entries = (v.get("mirrors") or ()) if v.get("running") else ()
    for suffix, key, doc in specs:
        fam = GaugeMetricFamily(
            f"irisrep_mirror_{suffix}", doc + " (per mirror)", labels=["mirror"]
        )
        for e in entries:
            if e.get(key) is not None:
                fam.add_metric([e["mirror"]], e[key])
        yield fam
    for suffix, fn, doc in flags:
        fam = GaugeMetricFamily(
            f"irisrep_mirror_{suffix}", doc + " (per mirror)", labels=["mirror"]
        )
        for e in entries:
            fam.add_metric([e["mirror"]], 1.0 if fn(e) else 0.0)
        yield fam


# --- the HTTP side ---------------------------------------------------------------------


def _json(code: int, body: dict) -> tuple[int, str, bytes]:
    return code, JSON, json.dumps(body, sort_keys=True, default=str).encode() + b"\n"


def _text(code: int, text: str) -> tuple[int, str, bytes]:
    return code, TEXT, text.encode()


class _Api:
    """Paths to answers: (status code, content type, body). No I/O of its own."""

    def __init__(self, member) -> None:
        self.member = member
        self.routes = {
            "/health": self.health,
            "/primary": self.primary,
            "/master": self.primary,  # Patroni's older name
            "/backup": self.backup,
            "/replica": self.replica,
            "/mirror_status": self.mirror_status,
            "/csp/bin/mirror_status.cxw": self.mirror_status,  # IRIS's path
            "/metrics": self.metrics,
        }

    def answer(self, raw_path: str) -> tuple[int, str, bytes]:
        try:
            parts = urlsplit(raw_path)
            query = parse_qs(
                parts.query, keep_blank_values=True, max_num_fields=HTTP_QUERY_FIELDS_MAX
            )
        except ValueError as e:
            return _text(400, f"bad request: {e}\n")
        route = self.routes.get(parts.path)
        if route is None and parts.path.startswith("/replica/"):
            # /replica/M: the same as /replica?mirror=M.
            mirror = parts.path[len("/replica/") :]
            if "mirror" in query or not mirror:
                return _text(400, "give the mirror once: /replica/M or /replica?mirror=M\n")
            query["mirror"] = [mirror]
            route = self.replica
        if route is None:
            return _text(404, f"no such path; try one of: {', '.join(self.routes)}\n")
        return route(query)

    def _check(self, ok_why: tuple[bool, str], v: dict, **extra) -> tuple[int, str, bytes]:
        ok, why = ok_why
        body = {k: v.get(k) for k in ("member", "role", "epoch", "status")}
        return _json(200 if ok else 503, {**body, "ok": ok, "reason": why, **extra})

    def health(self, _query) -> tuple[int, str, bytes]:
        v = member_view(self.member)
        return _json(200 if v["running"] else 503, v)

    def primary(self, _query) -> tuple[int, str, bytes]:
        v = member_view(self.member)
        return self._check(check_primary(v), v)

    def backup(self, _query) -> tuple[int, str, bytes]:
        v = member_view(self.member)
        return self._check(check_backup(v), v)

    def replica(self, query) -> tuple[int, str, bytes]:
        values = query.get("lag", [])
        mirrors = query.get("mirror", [])
        if len(values) > 1 or len(mirrors) > 1:
            return _text(400, f"{'lag' if len(values) > 1 else 'mirror'}= given more than once\n")
        try:
            lag_max = parse_lag(values[0]) if values else None
        except ValueError as e:
            return _text(400, f"{e}\n")
        v = member_view(self.member)
        if mirrors:
            return self._mirror_replica(v, mirrors[0], lag_max)
        return self._check(
            check_replica(v, lag_max),
            v,
            lag_bytes=v.get("lag_bytes"),
            lag_s=v.get("lag_s"),
            lag_max_bytes=lag_max,
        )

    def _mirror_replica(self, v: dict, mirror: str, lag_max: int | None):
        """`/replica?mirror=M`: that mirror's copy on this async."""
        own = self.member.config.mirror_name
        if not v.get("running"):
            return self._check((False, v.get("reason", "not running")), v, mirror=mirror[:64])
        entry = find_mirror(v, mirror)
        if entry is None and v.get("role") != "async" and mirror.lower() == own.lower():
            # A failover member (or a promoted DR async): its own mirror, as /replica.
            return self._check(check_replica(v, lag_max), v, mirror=own)
        if entry is None:
            followed = [e["mirror"] for e in v.get("mirrors") or ()] or [own]
            return _json(
                404,
                {
                    "member": v.get("member"),
                    "ok": False,
                    "reason": f"this member follows no mirror {mirror[:64]!r}; it follows "
                    + ", ".join(followed),
                },
            )
        body = {k: entry.get(k) for k in ("mirror", "status", "epoch", "connected_to")}
        ok, why = check_mirror_replica(v, entry, lag_max)
        extra = {
            k: entry.get(k)
            for k in (
                "lag_bytes",
                "lag_s",
                "applied",
                "dejournal_paused",
                "dejournal_lag_bytes",
                "copy",
                "read_write",
                "failover_eligible",
            )
        }
        return _json(
            200 if ok else 503,
            {
                "member": v.get("member"),
                "role": v.get("role"),
                **body,
                "ok": ok,
                "reason": why,
                "lag_max_bytes": lag_max,
                **extra,
            },
        )

    def mirror_status(self, _query) -> tuple[int, str, bytes]:
        v = member_view(self.member)
        ok, _why = check_primary(v)
        if ok:
            return _text(200, "SUCCESS")
        # IRIS answers FAILED alone; a copy that was read-write says so on the next
        # lines (a check that expects the status code or SUCCESS is unaffected).
        lines = [
            f"{e['mirror']}: {e['copy']}"
            for e in v.get("mirrors") or ()
            if not e.get("failover_eligible", True)
        ]
        return _text(503, "\n".join(["FAILED", *lines]))

    def metrics(self, _query) -> tuple[int, str, bytes]:
        return 200, CONTENT_TYPE_LATEST, self.member.metrics.render()


class _RequestTooLarge(Exception):
    """The request line and headers passed HTTP_REQUEST_BYTES_MAX: answered 431."""


class _BoundedReader:
    """The request's input with a byte budget: a request line and headers past
    HTTP_REQUEST_BYTES_MAX end the request (431) instead of being buffered up to
    http.server's own limits (64 KiB a line, 100 lines)."""

    def __init__(self, raw, budget: int) -> None:
        self._raw = raw
        self._left = budget

    def readline(self, size: int = -1) -> bytes:
        want = self._left + 1 if size is None or size < 0 else min(size, self._left + 1)
        line = self._raw.readline(want)
        self._left -= len(line)
        if self._left < 0:
            raise _RequestTooLarge
        return line

    def close(self) -> None:
        self._raw.close()


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "irisrep"
    sys_version = ""
    protocol_version = "HTTP/1.0"  # one request per connection: a thread never idles
    timeout = HTTP_REQUEST_TIMEOUT_MS / 1000.0
    error_message_format = "%(code)d %(message)s\n"  # http.server's own errors: no HTML
    error_content_type = TEXT

    def setup(self) -> None:
        super().setup()
        self.rfile = _BoundedReader(self.rfile, HTTP_REQUEST_BYTES_MAX)
        # What a reply sent before parse_request (431 on the request line) needs.
        self.requestline = ""
        self.request_version = "HTTP/1.0"
        self.command = ""

    def handle(self) -> None:
        try:
            super().handle()
        except _RequestTooLarge:
            self.close_connection = True
            self._reply(431, TEXT, f"request over {HTTP_REQUEST_BYTES_MAX} bytes\n")

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self._serve(body=True)

    def do_HEAD(self) -> None:  # noqa: N802
        self._serve(body=False)

    def __getattr__(self, name: str):
        # http.server looks up do_<METHOD>: every method but GET and HEAD is 405 (not
        # 501), so a checker that probes with POST or OPTIONS gets a clear answer.
        if name.startswith("do_"):
            return self._not_allowed
        raise AttributeError(name)

    def _not_allowed(self) -> None:
        self._reply(
            405, TEXT, f"method {self.command[:20]} not allowed\n", headers={"Allow": "GET, HEAD"}
        )

    def _serve(self, *, body: bool) -> None:
        try:
            code, ctype, payload = self.server.api.answer(self.path)
        except Exception as e:
            log.exception("HTTP %s %s failed", self.command, self.path[:200])
            first = (str(e).splitlines() or [""])[0][:200]
            code, ctype, payload = _text(500, f"internal error: {type(e).__name__}: {first}\n")
        self._reply(code, ctype, payload, body=body)

    def _reply(
        self,
        code: int,
        ctype: str,
        payload: bytes | str,
        *,
        body: bool = True,
        headers: dict | None = None,
    ) -> None:
        data = payload.encode() if isinstance(payload, str) else payload
        try:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Cache-Control", "no-store")
            for k, val in (headers or {}).items():
                self.send_header(k, val)
            self.end_headers()
            if body:
                self.wfile.write(data)
        except OSError as e:
            log.debug("HTTP client %s went away: %s", self.client_address, e)

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - http.server's name
        # Health checks come every few seconds: requests are debug, not warnings.
        log.debug("HTTP %s %s", self.client_address[0], format % args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # close() never waits for a slow client
    request_queue_size = HTTP_CONNECTIONS_MAX

    def __init__(self, address: tuple[str, int], api: _Api) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.api = api
        self._slots = threading.BoundedSemaphore(HTTP_CONNECTIONS_MAX)
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host's FQDN (a DNS query that may take
        # seconds at start); nothing here uses server_name.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def process_request(self, request, client_address) -> None:
        # One thread per request, at most HTTP_CONNECTIONS_MAX at once: a flood of
        # idle connections is closed, threads and memory stay bounded.
        if not self._slots.acquire(blocking=False):
            log.info(
                "HTTP: %d requests in progress; closing %s", HTTP_CONNECTIONS_MAX, client_address
            )
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request, client_address) -> None:
        # A connection that broke mid-request (reset, timeout): one line, no traceback
        # on stderr. Errors while answering are caught (and logged) in _Handler.
        log.info("HTTP connection from %s ended: %r", client_address, sys.exc_info()[1])


class HttpServer:
    """The member's HTTP listener: `HttpServer(member, address).start()`; `close()`.

    Binds in the constructor (a busy port fails `Member.start`); serves on a daemon
    thread. `address` is where it listens (the port filled in when 0 was asked)."""

    def __init__(self, member, address) -> None:
        host, port = tuple(address)
        self._server = _Server((host, port), _Api(member))
        self.address = Address(host, self._server.server_address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": HTTP_POLL_INTERVAL_MS / 1000.0},
            name=f"irisrep-http {member.name}",
            daemon=True,
        )
        self._started = False
        self._closed = False

    def start(self) -> HttpServer:
        self._thread.start()
        self._started = True
        return self

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._started:
            # shutdown() waits for serve_forever's loop; never call it if it never ran.
            self._server.shutdown()
            self._thread.join(timeout=5)
        self._server.server_close()
