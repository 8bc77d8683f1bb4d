"""Member configuration: a valid file loads, round-trips through to_toml, and every bad
value, unknown key or missing key raises ConfigError naming the exact key path."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from irisrep import config as cfgmod
from irisrep.config import (
    Address,
    MemberConfig,
    MirrorMember,
    User,
    load_config,
    parse_address,
    parse_config,
)
from irisrep.constants import (
    BUFFER_POOL_BLOCKS_DEFAULT,
    CLIENT_USERS_MAX,
    DIRECT_IO_DEFAULT,
    JOURNAL_DIR_NAME,
    WIRE_KEY_BYTES_MIN,
)
from irisrep.errors import ConfigError, IrisrepError

KEY_HEX = "00112233445566778899aabbccddeeff"  # 16 bytes

EXAMPLE = f"""\
mirror_name = "MIRRORA"
member_name = "A"
data_dir = "data/A"
ack_level = "durable"
qos_timeout_ms = 2000
arbiter_address = "127.0.0.1:7100"
mirror_key = "{KEY_HEX}"

[[members]]
name = "A"
kind = "failover"
mirror_address = "127.0.0.1:7001"
client_address = "127.0.0.1:7002"
agent_address = "127.0.0.1:7003"

[[members]]
name = "B"
kind = "failover"
mirror_address = "127.0.0.1:7011"
client_address = "127.0.0.1:7012"

[[members]]
name = "C"
kind = "async-dr"
mirror_address = "[::1]:7021"
client_address = "db-c.example.com:7022"
"""


def _member(name: str, kind: str, port: int) -> str:
    return f"""
[[members]]
name = "{name}"
kind = "{kind}"
mirror_address = "127.0.0.1:{port}"
client_address = "127.0.0.1:{port + 1}"
"""


def _set_line(text: str, key: str, value: str | None) -> str:
    """Replace (or, with None, remove) the first top-level line `key = ...`."""
    pat = re.compile(rf"^{re.escape(key)} = .*$\n?", re.M)
    assert pat.search(text), key
    new = "" if value is None else f"{key} = {value}\n"
    return pat.sub(lambda _m: new, text, count=1)


def _set_member(text: str, index: int, key: str, value: str | None) -> str:
    """Replace, add or remove `key` in the index-th [[members]] table."""
    parts = text.split("[[members]]\n")
    body = parts[index + 1]
    pat = re.compile(rf"^{re.escape(key)} = .*$\n?", re.M)
    if pat.search(body):
        new = "" if value is None else f"{key} = {value}\n"
        body = pat.sub(lambda _m: new, body, count=1)
    else:
        assert value is not None
        body = f"{key} = {value}\n" + body
    parts[index + 1] = body
    return "[[members]]\n".join(parts)


def _load(tmp_path: Path, text: str) -> MemberConfig:
    return parse_config(text, base_dir=tmp_path)


def _fails(tmp_path: Path, text: str, key: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, text)
    err = info.value
    assert str(err).startswith(f"{key}: "), str(err)
    assert err.key == key
    return err


@pytest.fixture
def tls_files(tmp_path: Path) -> Path:
    for name in ("cert.pem", "key.pem", "ca.pem"):
        (tmp_path / name).write_text("-----BEGIN-----\n")
    return tmp_path


# --- valid configs ---------------------------------------------------------------------
def test_example_loads(tmp_path):
    c = _load(tmp_path, EXAMPLE)
    assert c.mirror_name == "MIRRORA" and c.member_name == "A"
    assert c.kind == "failover" and c.me.name == "A"
    assert c.data_dir == tmp_path / "data" / "A"
    assert c.journal_dir == tmp_path / "data" / "A" / JOURNAL_DIR_NAME
    assert c.ack_level == "durable" and c.qos_timeout_ms == 2000
    assert c.direct_io == DIRECT_IO_DEFAULT and c.pool_blocks == BUFFER_POOL_BLOCKS_DEFAULT
    assert c.commit_mode == "sync"
    assert c.mirror_key == bytes.fromhex(KEY_HEX) and c.mirror_key_file is None
    assert c.arbiter_address == Address("127.0.0.1", 7100)
    assert c.http_address is None and c.tls is None
    assert [m.name for m in c.failover_members] == ["A", "B"]
    assert [m.name for m in c.async_members] == ["C"]
    assert c.member("C").mirror_address == Address("::1", 7021)
    assert str(c.member("C").mirror_address) == "[::1]:7021"
    assert c.member("C").client_address == ("db-c.example.com", 7022)
    assert c.member("A").agent_address == Address("127.0.0.1", 7003)
    assert c.member("B").agent_address is None
    with pytest.raises(KeyError):
        c.member("Z")
    assert KEY_HEX not in repr(c)  # the key stays out of logs
    assert not (tmp_path / "data").exists()  # loading creates nothing


def test_defaults(tmp_path):
    text = _set_line(_set_line(EXAMPLE, "ack_level", None), "qos_timeout_ms", None)
    c = _load(tmp_path, _set_line(text, "arbiter_address", None))
    assert c.ack_level == "durable" and c.qos_timeout_ms == 8000
    assert c.arbiter_address is None


def test_async_member_kind(tmp_path):
    c = _load(tmp_path, _set_line(EXAMPLE, "member_name", '"C"'))
    assert c.kind == "async-dr" and c.me.mirror_address.port == 7021


def test_round_trip(tmp_path, tls_files):
    text = EXAMPLE + '\n[tls]\ncert_file = "cert.pem"\nkey_file = "key.pem"\nca_file = "ca.pem"\n'
    text = _set_line(text, "qos_timeout_ms", '300\nhttp_address = "0.0.0.0:8080"')
    text = _set_line(text, "ack_level", '"applied"\ndirect_io = "disabled"\npool_blocks = 1000')
    c = _load(tmp_path, text)
    assert c.http_address == Address("0.0.0.0", 8080)
    out = c.to_toml()
    elsewhere = tmp_path / "elsewhere"
    assert parse_config(out, base_dir=elsewhere) == c  # absolute paths: base_dir is moot
    assert load_config(_write(tmp_path / "gen.toml", out)) == c
    assert c.tls is not None and c.tls.cert_file == tls_files / "cert.pem"


def test_round_trip_key_file(tmp_path):
    (tmp_path / "mirror.key").write_text(KEY_HEX + "\n")
    text = _set_line(EXAMPLE, "mirror_key", '"mirror.key"').replace(
        "mirror_key =", "mirror_key_file ="
    )
    c = _load(tmp_path, text)
    assert c.mirror_key == bytes.fromhex(KEY_HEX)
    assert c.mirror_key_file == tmp_path / "mirror.key"
    out = c.to_toml()
    assert KEY_HEX not in out  # the key stays in its file
    assert parse_config(out, base_dir="/") == c


def test_round_trip_odd_strings(tmp_path):
    text = _set_line(EXAMPLE, "data_dir", r'"d\"a\\ta é\t"')
    c = _load(tmp_path, text)
    assert c.data_dir.name == 'd"a\\ta é\t'
    assert parse_config(c.to_toml(), base_dir="/") == c


def test_constructed_config_round_trips(tmp_path):
    members = (
        MirrorMember("A", "failover", "127.0.0.1:7001", "127.0.0.1:7002"),
        MirrorMember("B", "failover", Address("127.0.0.1", 7011), "127.0.0.1:7012"),
        MirrorMember("R", "async-reporting", "127.0.0.1:7021", "127.0.0.1:7022"),
    )
    c = MemberConfig(
        mirror_name="M",
        member_name="R",
        members=members,
        data_dir=tmp_path / "r",
        mirror_key=b"k" * WIRE_KEY_BYTES_MIN,
    )
    assert c.journal_dir == tmp_path / "r" / JOURNAL_DIR_NAME
    assert c.members[0].mirror_address == Address("127.0.0.1", 7001)
    assert parse_config(c.to_toml(), base_dir="/") == c
    with pytest.raises(ConfigError, match="^data_dir: "):
        MemberConfig("M", "R", members, Path("rel"), b"k" * WIRE_KEY_BYTES_MIN)
    with pytest.raises(ConfigError, match="^member.kind: "):
        MirrorMember("A", "primary", "127.0.0.1:1", "127.0.0.1:2")


def test_key_encodings(tmp_path):
    import base64

    raw = bytes(range(20))
    for text in (raw.hex(), raw.hex().upper(), base64.b64encode(raw).decode()):
        c = _load(tmp_path, _set_line(EXAMPLE, "mirror_key", f'"{text}"'))
        assert c.mirror_key == raw
    urlsafe = base64.urlsafe_b64encode(b"\xff" * 18).decode()
    assert "_" in urlsafe or "-" in urlsafe
    c = _load(tmp_path, _set_line(EXAMPLE, "mirror_key", f'"{urlsafe}"'))
    assert c.mirror_key == b"\xff" * 18


def test_relative_paths(tmp_path, tls_files):
    sub = tmp_path / "conf"
    sub.mkdir()
    (sub / "k").write_text(KEY_HEX)
    text = _set_line(EXAMPLE, "data_dir", '"../data"\njournal_dir = "j"')
    text = _set_line(text, "mirror_key", None) + '\nmirror_key_file = "k"\n'
    # a top-level key after [[members]] would belong to the member: put it first
    text = 'mirror_key_file = "k"\n' + text.replace('\nmirror_key_file = "k"\n', "")
    text += '\n[tls]\ncert_file = "../cert.pem"\nkey_file = "../key.pem"\nca_file = "/dev/null"\n'
    with pytest.raises(ConfigError, match=r'^tls\.ca_file: "/dev/null" is not a regular file'):
        _load(sub, text)
    text = text.replace('"/dev/null"', f'"{tls_files / "ca.pem"}"')
    c = load_config(_write(sub / "member.toml", text))
    assert c.data_dir == tmp_path / "data"
    assert c.journal_dir == sub / "j"
    assert c.mirror_key_file == sub / "k"
    assert c.tls.cert_file == tmp_path / "cert.pem"
    assert c.tls.ca_file == tmp_path / "ca.pem"
    # load_config resolves against the file's directory, not the working directory
    old = os.getcwd()
    try:
        os.chdir("/")
        assert load_config(sub / "member.toml") == c
    finally:
        os.chdir(old)


def _write(p: Path, text: str) -> Path:
    p.write_text(text)
    return p


# --- every key, a bad value ------------------------------------------------------------
TOP_BAD = [
    ("mirror_name", '""'),
    ("mirror_name", '"has space"'),
    ("mirror_name", '"' + "x" * 65 + '"'),
    ("mirror_name", "7"),
    ("member_name", '"-A"'),
    ("member_name", "true"),
    ("data_dir", '""'),
    ("data_dir", "1"),
    ("data_dir", '"a\\u0000b"'),
    ("ack_level", '"fsync"'),
    ("ack_level", '"Durable"'),
    ("qos_timeout_ms", "99"),
    ("qos_timeout_ms", "60001"),
    ("qos_timeout_ms", '"8000"'),
    ("qos_timeout_ms", "8000.0"),
    ("qos_timeout_ms", "true"),
    ("arbiter_address", '"127.0.0.1"'),
    ("arbiter_address", '"127.0.0.1:0"'),
    ("arbiter_address", '"0.0.0.0:7100"'),
    ("arbiter_address", '"999.1.1.1:7100"'),
    ("arbiter_address", '"::1:7100"'),
    ("arbiter_address", '"[nothost]:7100"'),
    ("arbiter_address", '"host_name:7100"'),
    ("arbiter_address", '"127.0.0.1:+80"'),
    ("arbiter_address", '"127.0.0.1:7001"'),  # members[0].mirror_address
    ("arbiter_address", "7100"),
    ("mirror_key", '"abc"'),
    ("mirror_key", '"' + "00" * (WIRE_KEY_BYTES_MIN - 1) + '"'),
    ("mirror_key", '"not base64 at all!"'),
    ("mirror_key", '"abcde"'),
    ("mirror_key", "[1, 2]"),
]
# keys not in EXAMPLE: added at the top
EXTRA_BAD = [
    ("journal_dir", '""'),
    ("journal_dir", "[]"),
    ("direct_io", '"always"'),
    ("direct_io", "false"),
    ("pool_blocks", "63"),
    ("pool_blocks", "-1"),
    ("pool_blocks", str(2**40)),
    ("commit_mode", '"async"'),
    ("http_address", '"localhost:65536"'),
    ("http_address", '"localhost:99999"'),
    ("http_address", '"127.0.0.1:7012"'),  # members[1].client_address
    ("mirror_key_file", '"missing.key"'),
    ("mirror_key_file", '"."'),
    ("tls", '"yes"'),
]
MEMBER_BAD = [
    ("name", '"a b"'),
    ("name", "1"),
    ("kind", '"primary"'),
    ("kind", '"async"'),
    ("kind", "0"),
    ("mirror_address", '"127.0.0.1:99999"'),
    ("mirror_address", '"127.0.0.1"'),
    ("mirror_address", '"[::]:7001"'),
    ("client_address", '"nohost"'),
    ("client_address", '":7002"'),
    ("agent_address", '"127.0.0.1:x"'),
    ("agent_address", '"127.0.0.1:7011"'),  # members[1].mirror_address
]


@pytest.mark.parametrize(("key", "value"), TOP_BAD, ids=[f"{k}={v}" for k, v in TOP_BAD])
def test_bad_top_value(tmp_path, key, value):
    _fails(tmp_path, _set_line(EXAMPLE, key, value), key)


@pytest.mark.parametrize(("key", "value"), EXTRA_BAD, ids=[f"{k}={v}" for k, v in EXTRA_BAD])
def test_bad_optional_value(tmp_path, key, value):
    text = EXAMPLE
    if key == "mirror_key_file":
        text = _set_line(text, "mirror_key", None)
    _fails(tmp_path, f"{key} = {value}\n" + text, key)


@pytest.mark.parametrize(
    ("key", "value"), MEMBER_BAD, ids=[f"members[0].{k}={v}" for k, v in MEMBER_BAD]
)
def test_bad_member_value(tmp_path, key, value):
    _fails(tmp_path, _set_member(EXAMPLE, 0, key, value), f"members[0].{key}")


@pytest.mark.parametrize("key", ["cert_file", "key_file", "ca_file"])
def test_bad_tls_file(tmp_path, tls_files, key):
    tls = {"cert_file": '"cert.pem"', "key_file": '"key.pem"', "ca_file": '"ca.pem"'}
    ok = EXAMPLE + "\n[tls]\n" + "".join(f"{k} = {v}\n" for k, v in tls.items())
    _load(tmp_path, ok)
    for bad in ('"nope.pem"', '"."', '""', "3"):
        _fails(tmp_path, ok.replace(f"{key} = {tls[key]}", f"{key} = {bad}"), f"tls.{key}")
    _fails(tmp_path, ok.replace(f"{key} = {tls[key]}\n", ""), f"tls.{key}")


def test_bad_key_file_contents(tmp_path):
    text = 'mirror_key_file = "k"\n' + _set_line(EXAMPLE, "mirror_key", None)
    for content in (b"short", b"\xff\xfe" * 20, b"0" * 5000, b"zz" * 5):
        (tmp_path / "k").write_bytes(content)
        err = _fails(tmp_path, text, "mirror_key_file")
        assert "zz" not in str(err)


def test_key_never_echoed(tmp_path):
    secret = "s3cr3t!" * 5
    err = _fails(tmp_path, _set_line(EXAMPLE, "mirror_key", f'"{secret}"'), "mirror_key")
    assert secret not in str(err) and "not shown" in str(err)


def test_message_says_what_is_allowed(tmp_path):
    err = _fails(
        tmp_path,
        _set_member(EXAMPLE, 1, "mirror_address", '"127.0.0.1:99999"'),
        "members[1].mirror_address",
    )
    assert str(err) == (
        'members[1].mirror_address: "127.0.0.1:99999" is not host:port with a port in 1..65535'
    )
    err = _fails(tmp_path, _set_line(EXAMPLE, "ack_level", '"fsync"'), "ack_level")
    assert '"received", "durable", "applied"' in str(err)
    err = _fails(tmp_path, _set_line(EXAMPLE, "qos_timeout_ms", "5"), "qos_timeout_ms")
    assert "100..60000" in str(err)


def test_data_dir_is_a_file(tmp_path):
    (tmp_path / "f").write_text("")
    _fails(tmp_path, _set_line(EXAMPLE, "data_dir", '"f"'), "data_dir")
    _fails(tmp_path, 'journal_dir = "f"\n' + EXAMPLE, "journal_dir")


# --- structure -------------------------------------------------------------------------
def test_unknown_top_key(tmp_path):
    err = _fails(tmp_path, 'ack_levle = "durable"\n' + EXAMPLE, "ack_levle")
    assert "did you mean 'ack_level'" in str(err)


def test_unknown_member_key(tmp_path):
    _fails(tmp_path, _set_member(EXAMPLE, 2, "adress", '"x"'), "members[2].adress")


def test_unknown_tls_key(tmp_path, tls_files):
    text = EXAMPLE + '\n[tls]\ncert_file = "cert.pem"\nkey_file = "key.pem"\nca_file = "ca.pem"\n'
    _fails(tmp_path, text + "verify = false\n", "tls.verify")


def test_unknown_table(tmp_path):
    _fails(tmp_path, EXAMPLE + '\n[arbiter]\naddress = "x:1"\n', "arbiter")


@pytest.mark.parametrize("key", ["mirror_name", "member_name", "data_dir"])
def test_missing_required_top(tmp_path, key):
    err = _fails(tmp_path, _set_line(EXAMPLE, key, None), key)
    assert "missing" in str(err)


@pytest.mark.parametrize("key", ["name", "kind", "mirror_address", "client_address"])
def test_missing_required_member(tmp_path, key):
    _fails(tmp_path, _set_member(EXAMPLE, 1, key, None), f"members[1].{key}")


def test_missing_members(tmp_path):
    _fails(tmp_path, EXAMPLE.split("[[members]]")[0], "members")
    _fails(tmp_path, "members = []\n" + EXAMPLE.split("[[members]]")[0], "members")
    _fails(tmp_path, 'members = ["A"]\n' + EXAMPLE.split("[[members]]")[0], "members[0]")


def test_missing_key(tmp_path):
    err = _fails(tmp_path, _set_line(EXAMPLE, "mirror_key", None), "mirror_key")
    assert "mirror_key_file" in str(err)


def test_key_and_key_file(tmp_path):
    (tmp_path / "k").write_text(KEY_HEX)
    _fails(tmp_path, 'mirror_key_file = "k"\n' + EXAMPLE, "mirror_key_file")


def test_duplicate_member_names(tmp_path):
    err = _fails(tmp_path, _set_member(EXAMPLE, 2, "name", '"B"'), "members[2].name")
    assert "members[1].name" in str(err)
    _fails(tmp_path, _set_member(EXAMPLE, 2, "name", '"b"'), "members[2].name")


def test_three_failover_members(tmp_path):
    err = _fails(tmp_path, _set_member(EXAMPLE, 2, "kind", '"failover"'), "members")
    assert "3 failover members (A, B, C)" in str(err) and "exactly 2" in str(err)


def test_one_failover_member(tmp_path):
    err = _fails(tmp_path, _set_member(EXAMPLE, 1, "kind", '"async-dr"'), "members")
    assert "1 failover members" in str(err)


def test_async_limit(tmp_path):
    base = EXAMPLE.split('[[members]]\nname = "C"')[0]
    ok = base + "".join(_member(f"R{i}", "async-reporting", 8000 + 10 * i) for i in range(14))
    c = _load(tmp_path, ok)
    assert len(c.members) == 16 and len(c.async_members) == 14
    err = _fails(tmp_path, ok + _member("R14", "async-dr", 9000), "members")
    assert "15 async members" in str(err)


def test_member_not_listed(tmp_path):
    err = _fails(tmp_path, _set_line(EXAMPLE, "member_name", '"Z"'), "member_name")
    assert "(A, B, C)" in str(err)


def test_duplicate_listener_address(tmp_path):
    err = _fails(
        tmp_path,
        _set_member(EXAMPLE, 0, "mirror_address", '"127.0.0.1:7002"'),
        "members[0].client_address",
    )
    assert "is also members[0].mirror_address" in str(err)
    err = _fails(
        tmp_path,
        _set_member(EXAMPLE, 1, "client_address", '"DB-C.example.com:7022"'),
        "members[2].client_address",
    )
    assert "is also members[1].client_address" in str(err)
    # names are compared, not resolved: localhost is not 127.0.0.1 here
    _load(tmp_path, _set_member(EXAMPLE, 2, "client_address", '"localhost:7001"'))


def test_agent_address_may_be_shared(tmp_path):
    text = _set_member(EXAMPLE, 1, "agent_address", '"127.0.0.1:7003"')
    assert _load(tmp_path, text).member("B").agent_address == Address("127.0.0.1", 7003)


# --- syntax and files ------------------------------------------------------------------
def test_bad_toml(tmp_path):
    with pytest.raises(ConfigError, match=r"TOML syntax error at line 2, column \d+"):
        _load(tmp_path, 'mirror_name = "M"\nmember_name = \n')
    with pytest.raises(ConfigError, match="TOML syntax error"):
        _load(tmp_path, EXAMPLE + '\nmirror_name = "again"\n[[members]\n')
    with pytest.raises(ConfigError, match="TOML syntax error"):
        _load(tmp_path, 'mirror_name = "M"\nmirror_name = "N"\n')  # duplicate key


def test_load_config_errors_name_the_file(tmp_path):
    p = _write(tmp_path / "m.toml", _set_line(EXAMPLE, "ack_level", '"x"'))
    with pytest.raises(ConfigError) as info:
        load_config(p)
    assert str(info.value).startswith(f"{p}: ack_level: ") and info.value.key == "ack_level"
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "absent.toml")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(_write(tmp_path / "b.toml", "") and _bytes(tmp_path / "b.toml", b"\xff"))
    with pytest.raises(ConfigError, match="larger than"):
        load_config(_bytes(tmp_path / "big.toml", b"#" * (cfgmod.CONFIG_FILE_BYTES_MAX + 1)))


def _bytes(p: Path, data: bytes) -> Path:
    p.write_bytes(data)
    return p


def test_config_error_is_value_error(tmp_path):
    with pytest.raises(ValueError):
        _load(tmp_path, "")
    assert issubclass(ConfigError, ValueError) and issubclass(ConfigError, IrisrepError)


# --- addresses -------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:1", Address("127.0.0.1", 1)),
        ("localhost:65535", Address("localhost", 65535)),
        ("[fe80::1]:7001", Address("fe80::1", 7001)),
        ("a-b.c9.example:80", Address("a-b.c9.example", 80)),
    ],
)
def test_parse_address(text, expected):
    assert parse_address(text) == expected
    assert parse_address(str(expected)) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        ":1",
        "h:",
        "h:0",
        "h:65536",
        "h:1x",
        "h: 1",
        "-h:1",
        "h-:1",
        "1.2.3:1",
        "[::1]1",
        "a..b:1",
    ],
)
def test_parse_address_bad(text):
    with pytest.raises(ValueError):
        parse_address(text)


def test_commit_modes_match_database():
    from irisrep import database

    assert cfgmod.COMMIT_MODES == database.COMMIT_MODES


def test_docs_example_loads(tmp_path):
    doc = Path(__file__).resolve().parent.parent / "docs" / "member-config.md"
    if not doc.exists():
        pytest.skip("not the source tree")
    blocks = re.findall(r"```toml\n(.*?)```", doc.read_text(), re.S)
    assert blocks
    (tmp_path / "tls").mkdir()
    for name in ("A.crt", "A.key", "ca.crt"):
        (tmp_path / "tls" / name).write_text("pem\n")
    (tmp_path / "mirror.key").write_text(KEY_HEX + "\n")
    c = load_config(_write(tmp_path / "member.toml", blocks[0]))
    assert c.kind == "failover" and len(c.members) == 3 and c.arbiter_address is not None
    for name in ("B", "C"):
        other = _set_line(blocks[0], "member_name", f'"{name}"')
        assert load_config(_write(tmp_path / f"{name}.toml", other)).member_name == name
    # every key in the tables of the doc is a key the loader knows, and vice versa
    documented = set(re.findall(r"^\| `([a-z_]+)` \|", doc.read_text(), re.M))
    assert documented == set(cfgmod._TOP_KEYS) | set(cfgmod._MEMBER_KEYS) | set(
        cfgmod._USER_KEYS
    ) | set(cfgmod._FOLLOW_KEYS) | set(cfgmod._DATABASE_KEYS) | {
        "cert_file",
        "key_file",
        "ca_file",
    }


# --- client users ([[users]]) -----------------------------------------------------------
# A fixed hash (of "pw") so that these tests need no scrypt run per case.
HASH = (
    "scrypt$16384$8$1$aa1535bd292b09910df369239ddd85f9$"
    "ba27d745a8c8618591a52ae73242762580ea12d97a562dd441b3cbbede08f448"
)


def _users(*pairs: tuple[str, str]) -> str:
    return "".join(f'\n[[users]]\nname = "{n}"\npassword_hash = "{h}"\n' for n, h in pairs)


def test_users_default_empty(tmp_path):
    assert _load(tmp_path, EXAMPLE).users == ()
    assert "[[users]]" not in _load(tmp_path, EXAMPLE).to_toml()


def test_users_load_and_round_trip(tmp_path):
    c = _load(tmp_path, EXAMPLE + _users(("app", HASH), ("ops.1", HASH)))
    assert c.users == (User("app", HASH), User("ops.1", HASH))
    assert HASH not in repr(c)  # hashes stay out of logs too
    assert parse_config(c.to_toml(), base_dir="/") == c


def test_users_real_hash_verifies(tmp_path):
    from irisrep.auth import hash_password, verify_password

    h = hash_password("s3cret")
    c = _load(tmp_path, EXAMPLE + _users(("app", h)))
    assert verify_password(c.users[0].password_hash, "s3cret")
    assert not verify_password(c.users[0].password_hash, "s3cret!")


BAD_HASHES = [
    "plain-password",
    "",
    "scrypt$16384$8$1$zz$00",
    "bcrypt$16384$8$1$aa1535bd292b09910df369239ddd85f9$" + "00" * 32,
    "scrypt$16383$8$1$aa1535bd292b09910df369239ddd85f9$" + "00" * 32,  # not a power of 2
    "scrypt$1048576$8$1$aa1535bd292b09910df369239ddd85f9$" + "00" * 32,  # too costly
    "scrypt$16384$8$1$aa15$" + "00" * 32,  # salt too short
    "scrypt$16384$8$1$aa1535bd292b09910df369239ddd85f9$00",  # hash too short
    "scrypt$16384$8$1$AA1535BD292B09910DF369239DDD85F9$" + "00" * 32,  # uppercase
    HASH + "$",
]


@pytest.mark.parametrize("bad", BAD_HASHES)
def test_users_bad_hash(tmp_path, bad):
    err = _fails(tmp_path, EXAMPLE + _users(("app", HASH), ("b", bad)), "users[1].password_hash")
    assert "scrypt$N$r$p$salt_hex$hash_hex" in str(err)


def test_users_bad_structure(tmp_path):
    _fails(tmp_path, EXAMPLE + _users(("a b", HASH)), "users[0].name")
    _fails(tmp_path, EXAMPLE + '\n[[users]]\nname = "a"\n', "users[0].password_hash")
    _fails(tmp_path, EXAMPLE + f'\n[[users]]\npassword_hash = "{HASH}"\n', "users[0].name")
    text = EXAMPLE + _users(("a", HASH)) + "password = 1\n"
    _fails(tmp_path, text, "users[0].password")
    text = EXAMPLE + _users(("a", HASH)).replace(f'"{HASH}"', "3")
    _fails(tmp_path, text, "users[0].password_hash")
    _fails(tmp_path, 'users = ["a"]\n' + EXAMPLE, "users[0]")
    _fails(tmp_path, 'users = "a"\n' + EXAMPLE, "users")


def test_users_unique_names(tmp_path):
    err = _fails(tmp_path, EXAMPLE + _users(("app", HASH), ("App", HASH)), "users[1].name")
    assert "unique" in str(err)


def test_users_limit(tmp_path):
    many = _users(*[(f"u{i}", HASH) for i in range(CLIENT_USERS_MAX)])
    assert len(_load(tmp_path, EXAMPLE + many).users) == CLIENT_USERS_MAX
    _fails(tmp_path, EXAMPLE + many + _users(("one_more", HASH)), "users")


def test_users_constructed(tmp_path):
    c = _load(tmp_path, EXAMPLE)
    kw = {f: getattr(c, f) for f in c.__dataclass_fields__}
    kw["users"] = [User("app", HASH)]
    c2 = MemberConfig(**kw)
    assert c2.users == (User("app", HASH),)
    with pytest.raises(ConfigError, match=r"^user\.password_hash: "):
        User("app", "nope")
    with pytest.raises(ConfigError, match=r"^users: "):
        MemberConfig(**{**kw, "users": ("app",)})
