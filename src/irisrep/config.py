"""A mirror member's configuration: the TOML file `irisrep serve --config FILE` reads.

Loading is validation only: nothing is created, nothing is written, and the only
files opened are the mirror key file and the TLS files named in the config (to check
that they exist and are readable, and to read the key). Every problem raises
`ConfigError` (also a `ValueError`) whose message starts with the exact key path
(`members[1].mirror_address: ...`) and says what is allowed; the key path is also
on the exception as `.key`. Unknown keys are errors, so a typo is never ignored.

The same mirror description (mirror name, member list, key) can be copied to every
member; only `member_name` (and the local directories) differ between them. This
member's kind is the kind of its own entry in `members`.

A reporting async (`async-reporting`) may follow other mirrors besides its own
(`[[follow]]`: each one's name, failover members' mirror addresses and key), up to
MIRRORS_FOLLOWED_MAX mirrors in all; any other kind is refused a `[[follow]]` (a DR
async stays with the one mirror it may be promoted into). Its copies are read-only
unless `copy = "read-write"` (in a `[[follow]]`, or at the top level for its own
mirror's copy): only a reporting async may have one, since such a copy is no longer
eligible to fail over (member.py keeps that mark).

`[[databases]]` declares the member's databases besides `DB`: mirrored ones (every
failover member and async declares the same, as IRIS requires a mirrored database
on each member) and local ones (never mirrored; journaling may be off only there).

See docs/member-config.md for every key.
"""

from __future__ import annotations

import base64
import binascii
import difflib
import ipaddress
import math
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from .auth import parse_hash
from .constants import (
    ACK_LEVEL_DEFAULT,
    ACK_LEVELS,
    BUFFER_POOL_BLOCKS_DEFAULT,
    BUFFER_POOL_BLOCKS_MIN,
    CLIENT_USERS_MAX,
    COMMIT_MODE_DEFAULT,
    COMMIT_MODES,
    CONFIG_FILE_BYTES_MAX,
    COPY_MODE_DEFAULT,
    COPY_MODES,
    DATABASES_MAX,
    DIRECT_IO_DEFAULT,
    DIRECT_IO_MODES,
    HOSTNAME_CHARS_MAX,
    HOSTNAME_LABEL_CHARS_MAX,
    IO_ALIGN,
    JOURNAL_DIR_NAME,
    JOURNAL_FILE_BYTES,
    JOURNAL_FILE_BYTES_MAX,
    JOURNAL_FILE_BYTES_MIN,
    JOURNAL_PURGE_MEMBER_LIMIT_DAYS,
    JOURNAL_PURGE_MEMBER_LIMIT_DAYS_MAX,
    MEMBER_KINDS,
    MIRROR_ASYNC_MEMBERS_MAX,
    MIRROR_FAILOVER_MEMBERS_COUNT,
    MIRROR_KEY_FILE_BYTES_MAX,
    MIRROR_MEMBERS_MAX,
    MIRRORS_FOLLOWED_MAX,
    POOL_BLOCKS_MAX,
    PORT_MAX,
    PORT_MIN,
    QOS_TIMEOUT_DEFAULT_MS,
    QOS_TIMEOUT_MAX_MS,
    QOS_TIMEOUT_MIN_MS,
    WIRE_KEY_BYTES_MIN,
    WIRE_NAME_BYTES_MAX,
)
from .errors import ConfigError
from .wire import check_name

_HEX = re.compile(r"[0-9A-Fa-f]+")
_B64 = re.compile(r"[A-Za-z0-9+/_-]+={0,2}")
_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?")


# --- values --------------------------------------------------------------------------
class Address(NamedTuple):
    """A host and a port; usable directly as a socket address. `str()` gives the
    config form (`host:port`, `[v6]:port`)."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_address(text: str) -> Address:
    """`host:port` (host: an IPv4 address, a DNS name, or `[IPv6]`; port 1..65535).
    ValueError saying what is wrong otherwise."""
    what = f"is not host:port with a port in {PORT_MIN}..{PORT_MAX}"
    if not isinstance(text, str):
        raise ValueError(what)
    if text.startswith("["):
        host, sep, port_text = text[1:].partition("]:")
        if not sep:
            raise ValueError(what)
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{what} (inside [ ] must be an IPv6 address)") from None
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            raise ValueError(what)
        if ":" in host:
            raise ValueError(f"{what} (write an IPv6 host in brackets: [::1]:7001)")
        _check_host(host, what)
    if not port_text.isascii() or not port_text.isdigit() or len(port_text) > 5:
        raise ValueError(what)
    port = int(port_text)
    if not PORT_MIN <= port <= PORT_MAX:
        raise ValueError(what)
    return Address(host, port)


def _check_host(host: str, what: str) -> None:
    if not host:
        raise ValueError(f"{what} (the host is empty)")
    labels = host.split(".")
    if labels[-1].isascii() and labels[-1].isdigit():  # looks numeric: must be IPv4
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise ValueError(f"{what} ({host} is not an IPv4 address)") from None
        return
    if (
        len(host) > HOSTNAME_CHARS_MAX
        or not host.isascii()
        or not all(len(x) <= HOSTNAME_LABEL_CHARS_MAX and _LABEL.fullmatch(x) for x in labels)
    ):
        raise ValueError(f"{what} ({host!r} is not a valid host name)")


def _check_address(key: str, value: object, *, routable: bool) -> Address:
    if isinstance(value, str):
        try:
            value = parse_address(value)
        except ValueError as e:
            raise _err(key, f"{_show(value)} {e}") from None
    if (
        not isinstance(value, Address)
        or not isinstance(value.host, str)
        or not isinstance(value.port, int)
        or isinstance(value.port, bool)
    ):
        raise _err(key, f"{_show(value)} is not an Address or a host:port string")
    try:
        parse_address(str(value))
    except ValueError as e:
        raise _err(key, f"{_show(str(value))} {e}") from None
    if routable:
        try:
            unspecified = ipaddress.ip_address(value.host).is_unspecified
        except ValueError:
            unspecified = False
        if unspecified:
            raise _err(
                key,
                f"{_show(str(value))}: the other members connect to this address, so it "
                "must be a real one (not 0.0.0.0 or ::)",
            )
    return value


# --- the config ----------------------------------------------------------------------
@dataclass(frozen=True)
class MirrorMember:
    """One entry of the mirror's member list (`[[members]]`)."""

    name: str
    kind: str  # one of MEMBER_KINDS
    mirror_address: Address  # the mirror listener: journal stream, acks, handshake
    client_address: Address  # the client listener (irisrep.connect)
    agent_address: Address | None = None  # the host's agent, if it runs one

    def __post_init__(self) -> None:
        _validate_member(self, "member")

    @property
    def is_failover(self) -> bool:
        return self.kind == "failover"


@dataclass(frozen=True)
class User:
    """One client user (`[[users]]`): a name and its scrypt password hash, as
    `irisrep.auth.hash_password` makes it (the password itself is never stored)."""

    name: str
    password_hash: str = field(repr=False)

    def __post_init__(self) -> None:
        _validate_user(self, "user")


@dataclass(frozen=True)
class TLSFiles:
    """Certificate, private key and CA bundle for TLS on the mirror connections."""

    cert_file: Path
    key_file: Path
    ca_file: Path

    def __post_init__(self) -> None:
        for name in ("cert_file", "key_file", "ca_file"):
            _set(self, name, _check_abs_path(f"tls.{name}", getattr(self, name)))


@dataclass(frozen=True)
class FollowedMirror:
    """Another mirror a reporting async follows (`[[follow]]`): its name, its
    failover members as (name, mirror address) pairs (either may be primary; the
    copy tries them in turn) and its key. This member's name is the same in every
    mirror it follows: each one lists it as an `async-reporting` member."""

    mirror_name: str
    failover_members: tuple[tuple[str, Address], ...]
    mirror_key: bytes = field(repr=False)
    mirror_key_file: Path | None = None
    # "read-write": clients may change this copy locally (no longer eligible to fail over).
    copy: str = COPY_MODE_DEFAULT
    # That mirror's mirrored databases besides DB (its members' [[databases]]).
    databases: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _validate_follow(self, "follow")

    @property
    def read_write(self) -> bool:
        return self.copy == "read-write"


@dataclass(frozen=True)
class DatabaseSpec:
    """A database of the member besides `DB` (`[[databases]]`): mirrored (kept on
    every member of the mirror, in the mirror's journal) or local (this member's
    own, in its local instance, never shipped); journaling may be off only when
    local (IRIS: a mirrored database is always journaled)."""

    name: str
    mirrored: bool = True
    journaling: bool = True

    def __post_init__(self) -> None:
        _validate_database(self, "databases")


@dataclass(frozen=True)
class MemberConfig:
    """A validated member configuration. Constructing one checks it as loading does
    (paths must then be absolute); it never touches the file system."""

    mirror_name: str
    member_name: str
    members: tuple[MirrorMember, ...]
    data_dir: Path
    mirror_key: bytes = field(repr=False)  # the key itself, from mirror_key or the file
    mirror_key_file: Path | None = None  # where the key was read from, if from a file
    journal_dir: Path | None = None  # None: data_dir / JOURNAL_DIR_NAME
    ack_level: str = ACK_LEVEL_DEFAULT
    qos_timeout_ms: int = QOS_TIMEOUT_DEFAULT_MS
    direct_io: str = DIRECT_IO_DEFAULT
    pool_blocks: int = BUFFER_POOL_BLOCKS_DEFAULT
    commit_mode: str = COMMIT_MODE_DEFAULT
    arbiter_address: Address | None = None
    http_address: Address | None = None
    tls: TLSFiles | None = None
    users: tuple[User, ...] = ()  # client users; none: the client listener takes no logins
    journal_file_bytes: int = JOURNAL_FILE_BYTES  # size of each preallocated journal file
    # On a primary: a member disconnected longer than this stops holding journal files.
    journal_purge_member_limit_days: float = JOURNAL_PURGE_MEMBER_LIMIT_DAYS
    # A reporting async: the other mirrors it follows (its own is mirror_name).
    follow: tuple[FollowedMirror, ...] = ()
    databases: tuple[DatabaseSpec, ...] = ()  # besides DB: mirrored and local ones
    # A reporting async: its own mirror's copy, "read-only" or "read-write".
    copy: str = COPY_MODE_DEFAULT

    def __post_init__(self) -> None:
        _validate_config(self)

    def copy_mode(self, mirror: str) -> str:
        """How this member holds `mirror`'s copy: "read-only" or "read-write"."""
        if mirror == self.mirror_name:
            return self.copy
        return next(f.copy for f in self.follow if f.mirror_name == mirror)

    @property
    def mirrors_followed(self) -> tuple[str, ...]:
        """Every mirror this member follows or belongs to: its own first."""
        return (self.mirror_name, *(f.mirror_name for f in self.follow))

    @property
    def me(self) -> MirrorMember:
        """This member's entry in `members`."""
        return next(m for m in self.members if m.name == self.member_name)

    @property
    def kind(self) -> str:
        """This member's kind: "failover", "async-dr" or "async-reporting"."""
        return self.me.kind

    @property
    def failover_members(self) -> tuple[MirrorMember, ...]:
        return tuple(m for m in self.members if m.kind == "failover")

    @property
    def async_members(self) -> tuple[MirrorMember, ...]:
        return tuple(m for m in self.members if m.kind != "failover")

    def member(self, name: str) -> MirrorMember:
        """The entry named `name`; KeyError if there is none."""
        for m in self.members:
            if m.name == name:
                return m
        raise KeyError(name)

    def to_toml(self) -> str:
        """This config as TOML text that `parse_config` reads back to an equal config.

        Paths are written absolute. The key is written as `mirror_key_file` when it
        came from a file, else inline as hex: a file holding an inline key must be
        kept private (mode 0600)."""
        out = [
            f"mirror_name = {_toml_str(self.mirror_name)}",
            f"member_name = {_toml_str(self.member_name)}",
            f"data_dir = {_toml_path('data_dir', self.data_dir)}",
            f"journal_dir = {_toml_path('journal_dir', self.journal_dir)}",
            f"ack_level = {_toml_str(self.ack_level)}",
            f"qos_timeout_ms = {self.qos_timeout_ms}",
            f"direct_io = {_toml_str(self.direct_io)}",
            f"pool_blocks = {self.pool_blocks}",
            f"commit_mode = {_toml_str(self.commit_mode)}",
            f"journal_file_bytes = {self.journal_file_bytes}",
            f"journal_purge_member_limit_days = {self.journal_purge_member_limit_days!r}",
        ]
        if self.copy != COPY_MODE_DEFAULT:
            out.append(f"copy = {_toml_str(self.copy)}")
        if self.arbiter_address is not None:
            out.append(f"arbiter_address = {_toml_str(str(self.arbiter_address))}")
        if self.http_address is not None:
            out.append(f"http_address = {_toml_str(str(self.http_address))}")
        if self.mirror_key_file is not None:
            out.append(f"mirror_key_file = {_toml_path('mirror_key_file', self.mirror_key_file)}")
        else:
            out.append(f"mirror_key = {_toml_str(self.mirror_key.hex())}")
        if self.tls is not None:
            out.append("\n[tls]")
            for name in ("cert_file", "key_file", "ca_file"):
                out.append(f"{name} = {_toml_path('tls.' + name, getattr(self.tls, name))}")
        for m in self.members:
            out += [
                "\n[[members]]",
                f"name = {_toml_str(m.name)}",
                f"kind = {_toml_str(m.kind)}",
                f"mirror_address = {_toml_str(str(m.mirror_address))}",
                f"client_address = {_toml_str(str(m.client_address))}",
            ]
            if m.agent_address is not None:
                out.append(f"agent_address = {_toml_str(str(m.agent_address))}")
        for d in self.databases:
            out += [
                "\n[[databases]]",
                f"name = {_toml_str(d.name)}",
                f"mirrored = {'true' if d.mirrored else 'false'}",
                f"journaling = {'true' if d.journaling else 'false'}",
            ]
        for f in self.follow:
            out += ["\n[[follow]]", f"mirror_name = {_toml_str(f.mirror_name)}"]
            if f.copy != COPY_MODE_DEFAULT:
                out.append(f"copy = {_toml_str(f.copy)}")
            if f.databases:
                out.append(f"databases = [{', '.join(_toml_str(n) for n in f.databases)}]")
            if f.mirror_key_file is not None:
                out.append(
                    f"mirror_key_file = {_toml_path('follow.mirror_key_file', f.mirror_key_file)}"
                )
            else:
                out.append(f"mirror_key = {_toml_str(f.mirror_key.hex())}")
            out.append("failover_members = [")
            for name, addr in f.failover_members:
                out.append(
                    f"  {{ name = {_toml_str(name)}, mirror_address = {_toml_str(str(addr))} }},"
                )
            out.append("]")
        for u in self.users:
            out += [
                "\n[[users]]",
                f"name = {_toml_str(u.name)}",
                f"password_hash = {_toml_str(u.password_hash)}",
            ]
        return "\n".join(out) + "\n"


# --- loading -------------------------------------------------------------------------
def load_config(path: str | os.PathLike[str]) -> MemberConfig:
    """Read and validate the member config at `path`; relative paths in it resolve
    against the file's directory. ConfigError (message prefixed with the file name)
    for any problem, including a missing or unreadable file."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            raw = f.read(CONFIG_FILE_BYTES_MAX + 1)
    except OSError as e:
        raise _err("", f"{path}: cannot read the config file: {e.strerror or e}") from None
    if len(raw) > CONFIG_FILE_BYTES_MAX:
        raise _err("", f"{path}: larger than {CONFIG_FILE_BYTES_MAX} bytes; not a config file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _err("", f"{path}: not UTF-8 text (byte {e.start}); TOML must be UTF-8") from None
    try:
        return parse_config(text, base_dir=path.absolute().parent)
    except ConfigError as e:
        err = ConfigError(f"{path}: {e}")
        err.key = getattr(e, "key", "")
        raise err from None


def parse_config(text: str, *, base_dir: str | os.PathLike[str]) -> MemberConfig:
    """Validate TOML `text`; relative paths in it resolve against `base_dir`."""
    base = Path(base_dir).expanduser().absolute()
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        msg = str(e)
        m = re.search(r"\s*\((at line \d+, column \d+|at end of document)\)$", msg)
        where = m.group(1) if m else "somewhere"
        reason = msg[: m.start()] if m else msg
        raise _err("", f"TOML syntax error {where}: {reason}") from None

    top = _Table(doc, "")
    top.check_keys(_TOP_KEYS)
    mirror_name = top.get("mirror_name", str, required=True)
    member_name = top.get("member_name", str, required=True)
    data_dir = _resolve(base, top.key("data_dir"), top.get("data_dir", str, required=True))
    journal_dir = top.get("journal_dir", str)
    journal_dir = (
        data_dir / JOURNAL_DIR_NAME
        if journal_dir is None
        else _resolve(base, top.key("journal_dir"), journal_dir)
    )
    for key, p in (("data_dir", data_dir), ("journal_dir", journal_dir)):
        if p.exists() and not p.is_dir():
            raise _err(key, f"{_show(str(p))} exists and is not a directory")

    key_text = top.get("mirror_key", str)
    key_path = top.get("mirror_key_file", str)
    if key_text is not None and key_path is not None:
        raise _err("mirror_key_file", "set mirror_key or mirror_key_file, not both")
    if key_text is None and key_path is None:
        raise _err(
            "mirror_key",
            f"missing: set mirror_key (at least {WIRE_KEY_BYTES_MIN} bytes as hex or "
            "base64) or mirror_key_file (a file holding one)",
        )
    mirror_key_file = None
    if key_path is not None:
        mirror_key_file = _resolve(base, "mirror_key_file", key_path)
        key_text = _read_key_file("mirror_key_file", mirror_key_file)
        mirror_key = _decode_key("mirror_key_file", key_text, in_file=True)
    else:
        mirror_key = _decode_key("mirror_key", key_text, in_file=False)

    tls = None
    tls_doc = top.get("tls", dict)
    if tls_doc is not None:
        t = _Table(tls_doc, "tls")
        t.check_keys(("cert_file", "key_file", "ca_file"))
        files = {}
        for name in ("cert_file", "key_file", "ca_file"):
            p = _resolve(base, t.key(name), t.get(name, str, required=True))
            _check_readable(t.key(name), p)
            files[name] = p
        tls = TLSFiles(**files)

    members_doc = top.get("members", list, required=True)
    members = []
    for i, item in enumerate(members_doc):
        key = f"members[{i}]"
        if not isinstance(item, dict):
            raise _err(key, f"{_show(item)} is not a table; write each member as [[members]]")
        t = _Table(item, key)
        t.check_keys(_MEMBER_KEYS)
        kw: dict[str, Any] = {
            "name": t.get("name", str, required=True),
            "kind": t.get("kind", str, required=True),
        }
        for name in ("mirror_address", "client_address", "agent_address"):
            value = t.get(name, str, required=name != "agent_address")
            if value is not None:
                kw[name] = _check_address(t.key(name), value, routable=True)
        members.append(_build(MirrorMember, key, kw))

    users = []
    for i, item in enumerate(top.get("users", list) or ()):
        key = f"users[{i}]"
        if not isinstance(item, dict):
            raise _err(key, f"{_show(item)} is not a table; write each user as [[users]]")
        t = _Table(item, key)
        t.check_keys(_USER_KEYS)
        kw = {
            "name": t.get("name", str, required=True),
            "password_hash": t.get("password_hash", str, required=True),
        }
        users.append(_build(User, key, kw, local="user"))

    follow = []
    for i, item in enumerate(top.get("follow", list) or ()):
        follow.append(_parse_follow(base, f"follow[{i}]", item))

    databases = []
    for i, item in enumerate(top.get("databases", list) or ()):
        key = f"databases[{i}]"
        if not isinstance(item, dict):
            raise _err(key, f"{_show(item)} is not a table; write each one as [[databases]]")
        t = _Table(item, key)
        t.check_keys(_DATABASE_KEYS)
        kw = {"name": t.get("name", str, required=True)}
        for name in ("mirrored", "journaling"):
            value = t.get(name, bool)
            if value is not None:
                kw[name] = value
        databases.append(_build(DatabaseSpec, key, kw, local="databases"))

    kw = {
        "databases": tuple(databases),
        "follow": tuple(follow),
        "mirror_name": mirror_name,
        "member_name": member_name,
        "members": tuple(members),
        "data_dir": data_dir,
        "journal_dir": journal_dir,
        "mirror_key": mirror_key,
        "mirror_key_file": mirror_key_file,
        "tls": tls,
        "users": tuple(users),
    }
    for name, typ in (
        ("ack_level", str),
        ("qos_timeout_ms", int),
        ("direct_io", str),
        ("pool_blocks", int),
        ("commit_mode", str),
        ("journal_file_bytes", int),
        ("copy", str),
    ):
        value = top.get(name, typ)
        if value is not None:
            kw[name] = value
    limit = top.get_number("journal_purge_member_limit_days")
    if limit is not None:
        kw["journal_purge_member_limit_days"] = limit
    for name, routable in (("arbiter_address", True), ("http_address", False)):
        value = top.get(name, str)
        if value is not None:
            kw[name] = _check_address(name, value, routable=routable)
    return _build(MemberConfig, "", kw)


def _parse_follow(base: Path, key: str, item: object) -> FollowedMirror:
    if not isinstance(item, dict):
        raise _err(key, f"{_show(item)} is not a table; write each mirror as [[follow]]")
    t = _Table(item, key)
    t.check_keys(_FOLLOW_KEYS)
    name = t.get("mirror_name", str, required=True)
    key_text = t.get("mirror_key", str)
    key_path = t.get("mirror_key_file", str)
    if (key_text is None) == (key_path is None):
        raise _err(
            t.key("mirror_key"),
            "set exactly one of mirror_key and mirror_key_file (that mirror's key)",
        )
    key_file = None
    if key_path is not None:
        key_file = _resolve(base, t.key("mirror_key_file"), key_path)
        mirror_key = _decode_key(
            t.key("mirror_key_file"),
            _read_key_file(t.key("mirror_key_file"), key_file),
            in_file=True,
        )
    else:
        mirror_key = _decode_key(t.key("mirror_key"), key_text, in_file=False)
    members = []
    for j, m in enumerate(t.get("failover_members", list, required=True)):
        mkey = f"{key}.failover_members[{j}]"
        if not isinstance(m, dict):
            raise _err(mkey, f"{_show(m)} is not a table {{ name = ..., mirror_address = ... }}")
        mt = _Table(m, mkey)
        mt.check_keys(("name", "mirror_address"))
        mname = mt.get("name", str, required=True)
        _check_name(mt.key("name"), mname)
        addr = _check_address(
            mt.key("mirror_address"), mt.get("mirror_address", str, required=True), routable=True
        )
        members.append((mname, addr))
    kw = {
        "mirror_name": name,
        "failover_members": tuple(members),
        "mirror_key": mirror_key,
        "mirror_key_file": key_file,
    }
    copy = t.get("copy", str)
    if copy is not None:
        kw["copy"] = copy
    databases = t.get("databases", list)
    if databases is not None:
        kw["databases"] = tuple(databases)
    return _build(FollowedMirror, key, kw, local="follow")


_DATABASE_KEYS = ("name", "mirrored", "journaling")
_FOLLOW_KEYS = (
    "mirror_name",
    "failover_members",
    "mirror_key",
    "mirror_key_file",
    "copy",
    "databases",
)

_TOP_KEYS = (
    "mirror_name",
    "member_name",
    "data_dir",
    "journal_dir",
    "ack_level",
    "qos_timeout_ms",
    "direct_io",
    "pool_blocks",
    "commit_mode",
    "journal_file_bytes",
    "journal_purge_member_limit_days",
    "arbiter_address",
    "http_address",
    "mirror_key",
    "mirror_key_file",
    "tls",
    "members",
    "users",
    "follow",
    "databases",
    "copy",
)
_MEMBER_KEYS = ("name", "kind", "mirror_address", "client_address", "agent_address")
_USER_KEYS = ("name", "password_hash")

_HINTS = {
    "ack_level": "one of " + ", ".join(f'"{x}"' for x in ACK_LEVELS),
    "qos_timeout_ms": f"an integer in {QOS_TIMEOUT_MIN_MS}..{QOS_TIMEOUT_MAX_MS} (milliseconds)",
    "direct_io": "one of " + ", ".join(f'"{x}"' for x in DIRECT_IO_MODES),
    "pool_blocks": f"an integer in {BUFFER_POOL_BLOCKS_MIN}..{POOL_BLOCKS_MAX} (8 KiB blocks)",
    "commit_mode": "one of " + ", ".join(f'"{x}"' for x in COMMIT_MODES),
    "journal_file_bytes": f"an integer in {JOURNAL_FILE_BYTES_MIN}..{JOURNAL_FILE_BYTES_MAX}, "
    f"a multiple of {IO_ALIGN} (bytes)",
    "journal_purge_member_limit_days": "a number of days in "
    f"0..{JOURNAL_PURGE_MEMBER_LIMIT_DAYS_MAX:g} (integer or float)",
    "kind": "one of " + ", ".join(f'"{x}"' for x in MEMBER_KINDS),
    "copy": "one of " + ", ".join(f'"{x}"' for x in COPY_MODES),
}
_TYPE_WORDS = {
    str: "a string",
    int: "an integer",
    list: "an array",
    dict: "a table",
    bool: "true or false",
}


class _Table:
    """One TOML table being read: key paths for messages, unknown keys refused."""

    def __init__(self, data: dict, path: str) -> None:
        self.data = data
        self.path = path

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def check_keys(self, allowed: tuple[str, ...]) -> None:
        for name in self.data:
            if name not in allowed:
                close = difflib.get_close_matches(name, allowed, n=1)
                hint = f"did you mean {close[0]!r}? " if close else ""
                raise _err(self.key(name), f"unknown key; {hint}allowed here: {', '.join(allowed)}")

    def get(self, name: str, typ: type, *, required: bool = False) -> Any:
        if name not in self.data:
            if required:
                raise _err(self.key(name), f"missing; it is required ({_TYPE_WORDS[typ]})")
            return None
        value = self.data[name]
        if not isinstance(value, typ) or (isinstance(value, bool) and typ is not bool):
            expected = _HINTS.get(name.rpartition(".")[2], _TYPE_WORDS[typ])
            raise _err(self.key(name), f"{_show(value)} is {_kind(value)}; expected {expected}")
        return value

    def get_number(self, name: str) -> float | None:
        """An optional integer or float (TOML writes 14 and 14.0 alike)."""
        if name not in self.data:
            return None
        value = self.data[name]
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            expected = _HINTS.get(name, "a number")
            raise _err(self.key(name), f"{_show(value)} is {_kind(value)}; expected {expected}")
        return value


def _build(cls, key: str, kw: dict, local: str = "member"):
    """Construct a validated dataclass; its own key paths (`local.x`) are relative
    to `key`."""
    try:
        return cls(**kw)
    except ConfigError as e:
        if not key:
            raise
        sub = getattr(e, "key", "")
        # _validate_member names keys "member.x": rewrite to "members[i].x" (users alike).
        full = key + sub[len(local) :] if sub.startswith(local) else key
        msg = str(e)
        if sub and msg.startswith(sub):
            msg = msg[len(sub) :].lstrip(": ")
        raise _err(full, msg) from None


def _resolve(base: Path, key: str, text: str) -> Path:
    if not text:
        raise _err(key, '"" is empty; expected a path')
    if "\0" in text:
        raise _err(key, f"{_show(text)} contains a NUL character")
    return Path(os.path.normpath(base / Path(text).expanduser()))


def _check_readable(key: str, p: Path) -> None:
    if not p.exists():
        raise _err(key, f"{_show(str(p))} does not exist")
    if not p.is_file():
        raise _err(key, f"{_show(str(p))} is not a regular file")
    try:
        with open(p, "rb"):
            pass
    except OSError as e:
        raise _err(key, f"{_show(str(p))} is not readable: {e.strerror or e}") from None


def _read_key_file(key: str, p: Path) -> str:
    _check_readable(key, p)
    try:
        with open(p, "rb") as f:
            raw = f.read(MIRROR_KEY_FILE_BYTES_MAX + 1)
    except OSError as e:
        raise _err(key, f"{_show(str(p))} is not readable: {e.strerror or e}") from None
    if len(raw) > MIRROR_KEY_FILE_BYTES_MAX:
        raise _err(
            key,
            f"{_show(str(p))} is larger than {MIRROR_KEY_FILE_BYTES_MAX} bytes; "
            "a key file holds one line of hex or base64",
        )
    try:
        return raw.decode("ascii")
    except UnicodeDecodeError:
        raise _err(key, f"{_show(str(p))} does not hold hex or base64 text") from None


def _decode_key(key: str, text: str, *, in_file: bool) -> bytes:
    """Hex if the text is all hex digits (even length), else base64 (standard or
    URL-safe alphabet). The key is never echoed in a message."""
    where = "the file" if in_file else f"the value ({len(text)} characters, not shown)"
    text = text.strip()
    allowed = f"expected at least {WIRE_KEY_BYTES_MIN} bytes as hex or base64"
    if _HEX.fullmatch(text) and len(text) % 2 == 0:
        raw = bytes.fromhex(text)
    elif _B64.fullmatch(text):
        try:
            raw = base64.b64decode(text.replace("-", "+").replace("_", "/"), validate=True)
        except (binascii.Error, ValueError):
            raise _err(key, f"{where} is not valid hex or base64; {allowed}") from None
    else:
        raise _err(key, f"{where} is not hex or base64; {allowed}")
    if len(raw) < WIRE_KEY_BYTES_MIN:
        raise _err(key, f"{where} decodes to {len(raw)} bytes; {allowed}")
    return raw


# --- validation (shared by loading and direct construction) --------------------------
def _validate_member(m: MirrorMember, key: str) -> None:
    _check_name(f"{key}.name", m.name)
    _check_choice(f"{key}.kind", m.kind, MEMBER_KINDS)
    _set(
        m,
        "mirror_address",
        _check_address(f"{key}.mirror_address", m.mirror_address, routable=True),
    )
    _set(
        m,
        "client_address",
        _check_address(f"{key}.client_address", m.client_address, routable=True),
    )
    if m.agent_address is not None:
        _set(
            m,
            "agent_address",
            _check_address(f"{key}.agent_address", m.agent_address, routable=True),
        )


def _validate_database(d: DatabaseSpec, key: str) -> None:
    from .database import DEFAULT_DATABASE, check_database_name

    try:
        name = check_database_name(d.name)
    except ConfigError as exc:
        raise _err(f"{key}.name", str(exc)) from None
    if name == DEFAULT_DATABASE:
        raise _err(f"{key}.name", f"{DEFAULT_DATABASE} is always there; declare the others")
    _set(d, "name", name)
    for flag in ("mirrored", "journaling"):
        if not isinstance(getattr(d, flag), bool):
            raise _err(f"{key}.{flag}", f"{_show(getattr(d, flag))} is not true or false")
    if d.mirrored and not d.journaling:
        raise _err(
            f"{key}.journaling",
            "a mirrored database is always journaled (only a local one may turn it off)",
        )


def _validate_follow(f: FollowedMirror, key: str) -> None:
    from .database import DEFAULT_DATABASE, check_database_name

    _check_name(f"{key}.mirror_name", f.mirror_name)
    names = f.databases
    if isinstance(names, list):
        names = tuple(names)
    if not isinstance(names, tuple) or len(names) >= DATABASES_MAX:
        raise _err(f"{key}.databases", f"expected at most {DATABASES_MAX - 1} database names")
    canonical: list[str] = []
    for j, n in enumerate(names):
        try:
            c = check_database_name(n)
        except ConfigError as exc:
            raise _err(f"{key}.databases[{j}]", str(exc)) from None
        if c == DEFAULT_DATABASE or c in canonical:
            raise _err(f"{key}.databases[{j}]", f"{c} is always there or listed twice")
        canonical.append(c)
    _set(f, "databases", tuple(canonical))
    members = f.failover_members
    if isinstance(members, list):
        members = tuple(members)
    if not isinstance(members, tuple) or not all(
        isinstance(m, tuple) and len(m) == 2 for m in members
    ):
        raise _err(f"{key}.failover_members", "expected a sequence of (name, address) pairs")
    if len(members) != MIRROR_FAILOVER_MEMBERS_COUNT:
        raise _err(
            f"{key}.failover_members",
            f"{len(members)} entries; list the mirror's {MIRROR_FAILOVER_MEMBERS_COUNT} "
            "failover members (either may be its primary)",
        )
    out = []
    for j, (name, addr) in enumerate(members):
        _check_name(f"{key}.failover_members[{j}].name", name)
        out.append(
            (
                name,
                _check_address(f"{key}.failover_members[{j}].mirror_address", addr, routable=True),
            )
        )
    if out[0][0].lower() == out[1][0].lower():
        raise _err(f"{key}.failover_members[1].name", f"{_show(out[1][0])} is listed twice")
    if (out[0][1].host.lower(), out[0][1].port) == (out[1][1].host.lower(), out[1][1].port):
        raise _err(
            f"{key}.failover_members[1].mirror_address",
            f"{_show(str(out[1][1]))} is also failover_members[0].mirror_address",
        )
    _set(f, "failover_members", tuple(out))
    _check_choice(f"{key}.copy", f.copy, COPY_MODES)
    if not isinstance(f.mirror_key, bytes) or len(f.mirror_key) < WIRE_KEY_BYTES_MIN:
        raise _err(f"{key}.mirror_key", f"expected at least {WIRE_KEY_BYTES_MIN} bytes (bytes)")
    if f.mirror_key_file is not None:
        _set(f, "mirror_key_file", _check_abs_path(f"{key}.mirror_key_file", f.mirror_key_file))


def _validate_followed(c: MemberConfig) -> None:
    """Only a reporting async follows other mirrors: a DR async may be promoted into
    its mirror, so it must hold that one mirror's data and nothing else (IRIS). Only
    a reporting async has a read-write copy: a failover member or DR async must stay
    eligible to fail over."""
    _check_choice("copy", c.copy, COPY_MODES)
    if c.copy == "read-write" and c.kind != "async-reporting":
        raise _err(
            "copy",
            f'"read-write": member {_show(c.member_name)} is {_show(c.kind)}, which must stay '
            'eligible to become primary; only an "async-reporting" member may have a '
            "read-write copy",
        )
    follow = c.follow
    if isinstance(follow, list):
        follow = tuple(follow)
        _set(c, "follow", follow)
    if not isinstance(follow, tuple) or not all(isinstance(f, FollowedMirror) for f in follow):
        raise _err("follow", "expected a sequence of FollowedMirror")
    if not follow:
        return
    if c.kind != "async-reporting":
        why = (
            "a DR async follows one mirror only (its own, into which it may be promoted)"
            if c.kind == "async-dr"
            else "a failover member belongs to its own mirror only"
        )
        raise _err(
            "follow",
            f"member {_show(c.member_name)} is {_show(c.kind)}: {why}; only an "
            '"async-reporting" member may follow other mirrors',
        )
    if 1 + len(follow) > MIRRORS_FOLLOWED_MAX:
        raise _err(
            "follow",
            f"{len(follow)} mirrors besides its own {_show(c.mirror_name)}; a reporting "
            f"async follows at most {MIRRORS_FOLLOWED_MAX} mirrors in all",
        )
    seen = {c.mirror_name.lower(): "mirror_name"}
    for i, f in enumerate(follow):
        k = f.mirror_name.lower()
        if k in seen:
            raise _err(
                f"follow[{i}].mirror_name",
                f"{_show(f.mirror_name)} is also {seen[k]}; each mirror is followed once "
                "(names compared ignoring case: each has its own directory)",
            )
        seen[k] = f"follow[{i}].mirror_name"


def _validate_user(u: User, key: str) -> None:
    _check_name(f"{key}.name", u.name)
    try:
        parse_hash(u.password_hash)
    except ConfigError as e:
        raise _err(f"{key}.password_hash", str(e)) from None


def _validate_users(c: MemberConfig) -> None:
    users = c.users
    if isinstance(users, list):
        users = tuple(users)
        _set(c, "users", users)
    if not isinstance(users, tuple) or not all(isinstance(u, User) for u in users):
        raise _err("users", "expected a sequence of User")
    if len(users) > CLIENT_USERS_MAX:
        raise _err("users", f"{len(users)} users; at most {CLIENT_USERS_MAX}")
    seen: dict[str, int] = {}
    for i, u in enumerate(users):
        prev = seen.setdefault(u.name.lower(), i)
        if prev != i:
            raise _err(
                f"users[{i}].name",
                f"{_show(u.name)} is also users[{prev}].name ({_show(users[prev].name)}); "
                "user names must be unique (ignoring case)",
            )


def _validate_config(c: MemberConfig) -> None:
    _check_name("mirror_name", c.mirror_name)
    _check_name("member_name", c.member_name)
    _check_choice("ack_level", c.ack_level, ACK_LEVELS)
    _check_int("qos_timeout_ms", c.qos_timeout_ms, QOS_TIMEOUT_MIN_MS, QOS_TIMEOUT_MAX_MS)
    _check_choice("direct_io", c.direct_io, DIRECT_IO_MODES)
    _check_int("pool_blocks", c.pool_blocks, BUFFER_POOL_BLOCKS_MIN, POOL_BLOCKS_MAX)
    _check_choice("commit_mode", c.commit_mode, COMMIT_MODES)
    _check_int(
        "journal_file_bytes", c.journal_file_bytes, JOURNAL_FILE_BYTES_MIN, JOURNAL_FILE_BYTES_MAX
    )
    if c.journal_file_bytes % IO_ALIGN:
        raise _err(
            "journal_file_bytes",
            f"{c.journal_file_bytes} is not a multiple of {IO_ALIGN} (the I/O alignment)",
        )
    limit = c.journal_purge_member_limit_days
    if (
        not isinstance(limit, (int, float))
        or isinstance(limit, bool)
        or not math.isfinite(limit)
        or not 0 <= limit <= JOURNAL_PURGE_MEMBER_LIMIT_DAYS_MAX
    ):
        raise _err(
            "journal_purge_member_limit_days",
            f"{_show(limit)} is not a number of days in 0..{JOURNAL_PURGE_MEMBER_LIMIT_DAYS_MAX:g}",
        )
    _set(c, "journal_purge_member_limit_days", float(limit))
    _set(c, "data_dir", _check_abs_path("data_dir", c.data_dir))
    journal_dir = c.data_dir / JOURNAL_DIR_NAME if c.journal_dir is None else c.journal_dir
    _set(c, "journal_dir", _check_abs_path("journal_dir", journal_dir))
    if not isinstance(c.mirror_key, bytes) or len(c.mirror_key) < WIRE_KEY_BYTES_MIN:
        raise _err("mirror_key", f"expected at least {WIRE_KEY_BYTES_MIN} bytes (bytes)")
    if c.mirror_key_file is not None:
        _set(c, "mirror_key_file", _check_abs_path("mirror_key_file", c.mirror_key_file))
    if c.tls is not None and not isinstance(c.tls, TLSFiles):
        raise _err("tls", f"{_show(c.tls)} is not a TLSFiles")
    _validate_users(c)
    databases = c.databases
    if isinstance(databases, list):
        databases = tuple(databases)
        _set(c, "databases", databases)
    if not isinstance(databases, tuple) or not all(isinstance(d, DatabaseSpec) for d in databases):
        raise _err("databases", "expected a sequence of DatabaseSpec")
    if len(databases) >= DATABASES_MAX:
        raise _err(
            "databases", f"{len(databases)} databases; at most {DATABASES_MAX - 1} besides DB"
        )
    names: dict[str, int] = {}
    for i, d in enumerate(databases):
        prev = names.setdefault(d.name, i)
        if prev != i:
            raise _err(f"databases[{i}].name", f"{d.name} is also databases[{prev}].name")
    for name, routable in (("arbiter_address", True), ("http_address", False)):
        value = getattr(c, name)
        if value is not None:
            _set(c, name, _check_address(name, value, routable=routable))

    members = c.members
    if isinstance(members, list):
        members = tuple(members)
        _set(c, "members", members)
    if not isinstance(members, tuple) or not all(isinstance(m, MirrorMember) for m in members):
        raise _err("members", "expected a sequence of MirrorMember")
    allowed = (
        f"a mirror has exactly {MIRROR_FAILOVER_MEMBERS_COUNT} failover members and up to "
        f"{MIRROR_ASYNC_MEMBERS_MAX} async members ({MIRROR_MEMBERS_MAX} in all)"
    )
    seen: dict[str, int] = {}
    for i, m in enumerate(members):
        prev = seen.setdefault(m.name.lower(), i)
        if prev != i:
            raise _err(
                f"members[{i}].name",
                f"{_show(m.name)} is also members[{prev}].name ({_show(members[prev].name)}); "
                "member names must be unique (ignoring case)",
            )
    failover = [m.name for m in members if m.kind == "failover"]
    asyncs = [m.name for m in members if m.kind != "failover"]
    if len(failover) != MIRROR_FAILOVER_MEMBERS_COUNT:
        listed = f" ({', '.join(failover)})" if failover else ""
        raise _err("members", f"{len(failover)} failover members{listed}; {allowed}")
    if len(asyncs) > MIRROR_ASYNC_MEMBERS_MAX:
        raise _err("members", f"{len(asyncs)} async members; {allowed}")
    if len(members) > MIRROR_MEMBERS_MAX:  # implied by the two above; kept as the IRIS rule
        raise _err("members", f"{len(members)} members; {allowed}")
    if c.member_name not in {m.name for m in members}:
        raise _err(
            "member_name",
            f"{_show(c.member_name)} is not the name of any entry in members "
            f"({', '.join(m.name for m in members)})",
        )

    # Every listener address is used once. An agent address may be shared: one agent
    # serves every member on its host.
    owners: dict[tuple[str, int], str] = {}

    def claim(key: str, a: Address | None) -> None:
        if a is None:
            return
        k = (a.host.lower(), a.port)
        if k in owners:
            raise _err(key, f"{_show(str(a))} is also {owners[k]}; each listener needs its own")
        owners[k] = key

    for i, m in enumerate(members):
        claim(f"members[{i}].mirror_address", m.mirror_address)
        claim(f"members[{i}].client_address", m.client_address)
    claim("arbiter_address", c.arbiter_address)
    claim("http_address", c.http_address)
    for i, m in enumerate(members):
        if m.agent_address is not None:
            k = (m.agent_address.host.lower(), m.agent_address.port)
            if k in owners:
                raise _err(
                    f"members[{i}].agent_address",
                    f"{_show(str(m.agent_address))} is also {owners[k]}",
                )
    _validate_followed(c)


def _check_name(key: str, value: object) -> None:
    if not isinstance(value, str):
        raise _err(key, f"{_show(value)} is {_kind(value)}; expected a string")
    try:
        check_name(value)
    except ValueError:
        raise _err(
            key,
            f"{_show(value)} is not a name: 1..{WIRE_NAME_BYTES_MAX} characters of "
            "A-Z a-z 0-9 _ . - starting with a letter or digit",
        ) from None


def _check_choice(key: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed or not isinstance(value, str):
        raise _err(key, f"{_show(value)} is not one of {', '.join(map(_show, allowed))}")


def _check_int(key: str, value: object, lo: int, hi: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise _err(key, f"{_show(value)} is not an integer in {lo}..{hi}")


def _check_abs_path(key: str, value: object) -> Path:
    if isinstance(value, str):
        value = Path(value)
    if not isinstance(value, Path) or not value.is_absolute() or "\0" in str(value):
        raise _err(key, f"{_show(value)} is not an absolute path (resolve it first)")
    return value


def _set(obj: object, name: str, value: object) -> None:
    object.__setattr__(obj, name, value)  # normalising a frozen dataclass's own field


# --- messages and TOML text ----------------------------------------------------------
def _err(key: str, message: str) -> ConfigError:
    err = ConfigError(f"{key}: {message}" if key else message)
    err.key = key
    return err


def _kind(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    for typ, word in _TYPE_WORDS.items():
        if isinstance(value, typ):
            return word
    if isinstance(value, float):
        return "a float"
    return f"a {type(value).__name__}"


def _show(value: object, limit: int = 80) -> str:
    if isinstance(value, str):
        text = _toml_str(value)
        return text if len(text) <= limit else text[: limit - 4] + '..."'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, Path):
        return _toml_str(str(value))
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


_ESCAPES = {
    '"': '\\"',
    "\\": "\\\\",
    "\b": "\\b",
    "\t": "\\t",
    "\n": "\\n",
    "\f": "\\f",
    "\r": "\\r",
}


def _toml_str(s: str) -> str:
    """A TOML basic string. Control characters are escaped; a lone surrogate (a file
    name that is not UTF-8) cannot be written and raises ValueError."""
    out = []
    for ch in s:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04X}")
        elif 0xD800 <= ord(ch) <= 0xDFFF:
            raise ValueError(f"{s!r} cannot be written as TOML (not UTF-8)")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _toml_path(key: str, p: Path | None) -> str:
    try:
        return _toml_str(str(p))
    except ValueError:
        raise _err(key, f"{p!r} is not UTF-8 and cannot be written as TOML") from None


__all__ = [
    "Address",
    "FollowedMirror",
    "MemberConfig",
    "MirrorMember",
    "TLSFiles",
    "User",
    "load_config",
    "parse_address",
    "parse_config",
]
