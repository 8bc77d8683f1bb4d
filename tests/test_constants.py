"""The C layout headers (`include/irisrep_*.h`) and `irisrep.constants` agree.

`constants.py` is the one place for sizes and limits on the Python side; the C side
needs the on-disk layout at compile time, so it is written twice and checked here:

- every `#define IR_X` / `IRISREP_X` whose `X` also exists in `irisrep.constants`
  (or, while the WIJ layout still lives there, in `irisrep.wij`) has the same value;
  the core block layout names are required to exist on both sides;
- the field tables in the header comments are contiguous, name an offset `#define`
  for each field, and the block header ends at IR_BLOCK_HEADER_SIZE;
- blockstore.py's struct for the header block's payload has exactly the offsets and
  sizes of the "Header block" comment, and the IR_HDR_* offsets;
- the limits make sense together (a leaf holds three maximal entries, ...).

Headers are discovered by glob, so a new `include/irisrep_*.h` is checked too.
"""

from __future__ import annotations

import ast
import operator
import re
import struct
from pathlib import Path

import pytest

from irisrep import blockstore, constants

ROOT = Path(__file__).resolve().parent.parent
INCLUDE = ROOT / "include"

pytestmark = pytest.mark.skipif(
    not (INCLUDE / "irisrep_block.h").exists(),
    reason=f"no C headers at {INCLUDE} (running against an installed package?)",
)

_DEFINE = re.compile(r"^\s*#\s*define\s+([A-Za-z_]\w*)(\([^)]*\))?[ \t]*(.*?)\s*$")
_INT_SUFFIX = re.compile(r"\b(0[xX][0-9a-fA-F]+|\d+)[uUlL]+\b")
_BINOPS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.FloorDiv: operator.floordiv,
    ast.Div: operator.floordiv,  # C integer division
    ast.Mod: operator.mod,
    ast.LShift: operator.lshift,
    ast.RShift: operator.rshift,
    ast.BitAnd: operator.and_,
    ast.BitOr: operator.or_,
    ast.BitXor: operator.xor,
}


def _eval(expr: str, known: dict[str, object]):
    """Value of a C constant expression: integers, arithmetic, earlier defines, "strings".

    None when the body is not such an expression (a function call, a keyword ...).
    """
    expr = _INT_SUFFIX.sub(r"\1", expr.split("/*")[0].split("//")[0].strip())
    if not expr:
        return None
    if expr.startswith('"') and expr.endswith('"'):
        return expr[1:-1].encode("ascii")
    try:
        tree = ast.parse(expr.replace("/", "//"), mode="eval")
    except SyntaxError:
        return None

    def ev(node):
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, ast.Name) and isinstance(known.get(node.id), int):
            return known[node.id]
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
            return _BINOPS[type(node.op)](ev(node.left), ev(node.right))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.Invert)):
            v = ev(node.operand)
            return -v if isinstance(node.op, ast.USub) else ~v
        raise ValueError(ast.dump(node))

    try:
        return ev(tree.body)
    except (ValueError, ZeroDivisionError):
        return None


def _headers() -> list[Path]:
    return sorted(INCLUDE.glob("irisrep_*.h"))


def _defines(path: Path, known: dict[str, object]) -> dict[str, object]:
    """Object-like #defines of one header with a constant value (guards etc. skipped)."""
    out: dict[str, object] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        m = _DEFINE.match(line)
        if not m or m.group(2):  # no match, or a function-like macro
            continue
        value = _eval(m.group(3), {**known, **out})
        if value is not None:
            out[m.group(1)] = value
    return out


@pytest.fixture(scope="module")
def defines() -> dict[str, dict[str, object]]:
    """header file name -> its defines (each header sees the ones it includes)."""
    everything: dict[str, object] = {}
    per_file: dict[str, dict[str, object]] = {}
    # irisrep_block.h first: the others include it and use its sizes.
    for path in sorted(_headers(), key=lambda p: p.name != "irisrep_block.h"):
        d = _defines(path, everything)
        per_file[path.name] = d
        everything.update(d)
    return per_file


@pytest.fixture(scope="module")
def all_defines(defines) -> dict[str, object]:
    out: dict[str, object] = {}
    for name, d in defines.items():
        for k, v in d.items():
            assert out.get(k, v) == v, f"{k} is defined twice with different values ({name})"
            out[k] = v
    return out


def _python_name(c_name: str) -> str | None:
    for prefix in ("IRISREP_", "IR_"):
        if c_name.startswith(prefix):
            return c_name[len(prefix) :]
    return None


def _python_modules():
    return [constants]


def test_headers_parse(defines, all_defines):
    assert "irisrep_block.h" in defines
    for name, d in defines.items():
        # Every header has a guard and at least one constant, or it was not parsed.
        assert d or name in ("irisrep_endian.h",), f"no constants parsed from {name}"
    assert all_defines["IR_BLOCK_PAYLOAD_MAX"] == (
        all_defines["IR_BLOCK_SIZE"] - all_defines["IR_BLOCK_HEADER_SIZE"]
    )


def test_core_block_layout_matches(all_defines):
    required = {
        "IR_BLOCK_SIZE": constants.BLOCK_SIZE,
        "IR_BLOCK_HEADER_SIZE": constants.BLOCK_HEADER_SIZE,
        "IR_BLOCK_PAYLOAD_MAX": constants.BLOCK_PAYLOAD_MAX,
        "IR_DB_FORMAT_VERSION": constants.DB_FORMAT_VERSION,
        "IRISREP_IO_ALIGN": constants.IO_ALIGN,
    }
    for name in dir(constants):
        if name.startswith("BT_"):
            required["IR_" + name] = getattr(constants, name)
    for name in all_defines:
        if name.startswith("IR_BT_"):
            assert hasattr(constants, name[3:]), f"{name} has no constants.{name[3:]}"
    wrong = {
        k: (all_defines.get(k, "missing"), v)
        for k, v in required.items()
        if all_defines.get(k) != v
    }
    assert not wrong, f"C define -> (C value, Python value): {wrong}"


def test_every_shared_name_agrees(all_defines):
    """Any IR_X that also exists as X in constants (or wij) has the same value."""
    wrong = []
    compared = 0
    for c_name, c_value in sorted(all_defines.items()):
        py_name = _python_name(c_name)
        if py_name is None:
            continue
        for mod in _python_modules():
            if not hasattr(mod, py_name):
                continue
            compared += 1
            py_value = getattr(mod, py_name)
            if py_value != c_value:
                wrong.append(f"{c_name} = {c_value!r} but {mod.__name__}.{py_name} = {py_value!r}")
    assert compared >= 9
    assert not wrong, "\n".join(wrong)


def test_magic_matches():
    text = (INCLUDE / "irisrep_block.h").read_text(encoding="utf-8")
    m = re.search(r'magic\s+"([^"]+)"', text)
    assert m, "the header block comment names the magic"
    assert m.group(1).encode("ascii") == constants.DB_MAGIC


# --- the field tables in the header comments -----------------------------------------

# "offset size name" triples; several may share a line (the header block's payload).
_ROW = re.compile(r"(?<![\w\[,+])(\d+)\s+(\d+)\s+([a-z][a-z_-]*(?: [a-z][a-z_-]*)*)")


def _comment_tables(path: Path) -> list[list[tuple[int, int, str]]]:
    """Tables of (offset, size, field) from the comments; a table starts at offset 0."""
    tables: list[list[tuple[int, int, str]]] = []
    text = path.read_text(encoding="utf-8")
    for comment in re.findall(r"/\*.*?\*/", text, flags=re.S):
        for line in comment.splitlines():
            for m in _ROW.finditer(line):
                off, size, name = int(m.group(1)), int(m.group(2)), m.group(3)
                if off == 0 or not tables:
                    tables.append([])
                tables[-1].append((off, size, name))
    return [t for t in tables if len(t) > 1]


def _is_reserved(field: str) -> bool:
    return field in ("reserved", "pad", "padding")


@pytest.mark.parametrize("header", [p.name for p in _headers()])
def test_comment_tables_are_contiguous(header, defines):
    path = INCLUDE / header
    problems = []
    for table in _comment_tables(path):
        for (off, size, name), (nxt, _, nxt_name) in zip(table, table[1:], strict=False):
            if off + size != nxt:
                problems.append(f"{name} at {off} (+{size}) is followed by {nxt_name} at {nxt}")
        for off, _size, name in table:
            if " " in name or _is_reserved(name):
                continue
            suffix = "_" + name.upper()
            named = {k: v for k, v in defines[header].items() if k.endswith(suffix)}
            if off not in named.values():
                problems.append(f"field {name} at offset {off}: no #define *{suffix} == {off}")
    assert not problems, f"{header}:\n" + "\n".join(problems)


def test_block_header_table(defines):
    d = defines["irisrep_block.h"]
    tables = _comment_tables(INCLUDE / "irisrep_block.h")
    block_header = next(t for t in tables if t[0][2] == "checksum")
    for off, _size, name in block_header:
        if not _is_reserved(name):
            assert d.get("IR_OFF_" + name.upper()) == off, name
    off, size, _ = block_header[-1]
    assert off + size == d["IR_BLOCK_HEADER_SIZE"] == constants.BLOCK_HEADER_SIZE


def _struct_fields(fmt: str) -> list[tuple[int, int]]:
    """(offset, size) of each field of a struct format (no repeat counts but 's')."""
    order = fmt[0] if fmt[0] in "<>!=@" else ""
    out = []
    pos = 0
    for count, code in re.findall(r"(\d*)([a-zA-Z?])", fmt.replace(" ", "")):
        if code in "sp":
            size = int(count or 1)
            out.append((pos, size))
            pos += size
            continue
        for _ in range(int(count or 1)):
            size = struct.calcsize(order + code)
            out.append((pos, size))
            pos += size
    assert pos == struct.calcsize(fmt)
    return out


def test_header_block_struct_matches_comment(defines):
    d = defines["irisrep_block.h"]
    tables = _comment_tables(INCLUDE / "irisrep_block.h")
    payload = next(t for t in tables if t[0][2] == "magic")
    layout = blockstore._HEADER
    fields = _struct_fields(layout.format)
    assert [(off, size) for off, size, _ in payload] == fields, (
        f"comment {payload} vs struct {layout.format!r} {fields}"
    )
    hdr = sorted(v for k, v in d.items() if k.startswith("IR_HDR_"))
    assert hdr == [off for off, _size, name in payload if not _is_reserved(name)]
    # The header payload fits one block, and the magic field holds DB_MAGIC.
    assert layout.size <= constants.BLOCK_PAYLOAD_MAX
    assert fields[0] == (d["IR_HDR_MAGIC"], len(constants.DB_MAGIC))


def test_wij_tables_end_where_the_defines_say(defines):
    if "irisrep_wij.h" not in defines:
        pytest.skip("no include/irisrep_wij.h yet")
    d = defines["irisrep_wij.h"]
    tables = _comment_tables(INCLUDE / "irisrep_wij.h")
    slot = next(t for t in tables if any(name == "sequence" for _, _, name in t))
    entry = next(t for t in tables if t[0][2] == "db_id")
    assert slot[-1][0] + slot[-1][1] == d["IR_WIJ_HDR_END"] <= d["IR_WIJ_SLOT_SIZE"]
    assert entry[-1][0] + entry[-1][1] == d["IR_WIJ_ENTRY_SIZE"]
    assert d["IR_WIJ_MAGIC_SIZE"] == len(d["IR_WIJ_MAGIC"])
    assert d["IR_WIJ_DIR_OFFSET"] == d["IR_WIJ_SLOT_COUNT"] * d["IR_WIJ_SLOT_SIZE"]
    assert d["IR_WIJ_ALIGN"] % constants.IO_ALIGN == 0


# --- limits that must hold together ---------------------------------------------------


def test_limits_are_consistent():
    c = constants
    assert c.BLOCK_PAYLOAD_MAX == c.BLOCK_SIZE - c.BLOCK_HEADER_SIZE > 0
    assert c.BLOCK_SIZE % c.IO_ALIGN == 0, "O_DIRECT transfers whole blocks"
    assert c.IO_CALL_BYTES_MAX % c.BLOCK_SIZE == 0
    # A leaf holds at least three maximal entries, so a split always leaves two
    # non-empty halves and a new entry fits one of them.
    leaf_entry_max = c.LEAF_ENTRY_OVERHEAD_BYTES + c.REFERENCE_BYTES_MAX + c.INLINE_VALUE_BYTES_MAX
    assert 3 * (leaf_entry_max + 1) <= c.BLOCK_PAYLOAD_MAX
    # An internal block holds at least three maximal separators.
    assert 3 * (c.INTERNAL_ENTRY_OVERHEAD_BYTES + c.REFERENCE_BYTES_MAX) <= c.BLOCK_PAYLOAD_MAX
    # u16 key length and u16 `used` in the block header.
    assert c.REFERENCE_BYTES_MAX < 2**16 and c.BLOCK_PAYLOAD_MAX < 2**16
    # An overflow reference (tag + u32 block + u32 length) is shorter than any value
    # that goes to overflow, and the longest value's length fits a u32.
    assert 9 < c.INLINE_VALUE_BYTES_MAX
    assert 4 * c.STRING_CHARS_MAX + 1 < 2**32
    # Merging must leave room: two merged nodes fit one block with slack.
    assert c.BLOCK_PAYLOAD_MAX // 2 <= c.MERGE_FILL_BYTES_MAX < c.BLOCK_PAYLOAD_MAX
    assert 0 < c.DIRTY_SHARE_FLUSH < 1
    assert c.BUFFER_POOL_BLOCKS_MIN <= c.BUFFER_POOL_BLOCKS_DEFAULT
    assert c.BLOCK_NONE == 2**32 - 1 and c.BLOCK_NO_MAX < c.BLOCK_NONE
    assert c.NUMBER_EXPONENT_MIN < 0 < c.NUMBER_EXPONENT_MAX
    assert c.DIRECT_IO_DEFAULT in c.DIRECT_IO_MODES
    assert 1 <= c.GLOBAL_NAME_CHARS_MAX < c.REFERENCE_BYTES_MAX
    # A key: name + NUL + at least one byte per subscript level.
    assert c.GLOBAL_NAME_CHARS_MAX + 1 + c.SUBSCRIPT_LEVELS_MAX <= c.REFERENCE_BYTES_MAX + 1


def test_compiled_core_agrees_with_constants():
    """The compiled module copies some limits at build time; a stale build shows here."""
    from irisrep import _core

    image = _core.seal_image(b"x", 1, 7, constants.BT_LEAF)
    assert len(image) == constants.BLOCK_SIZE
    fields = _core.image_fields(image)
    assert fields[:4] == (constants.BT_LEAF, 0, 0, 1)
    assert _core.image_payload(image) == b"x"
    with pytest.raises(ValueError):
        _core.seal_image(b"\0" * (constants.BLOCK_PAYLOAD_MAX + 1), 1, 7, constants.BT_LEAF)
    _core.seal_image(b"\0" * constants.BLOCK_PAYLOAD_MAX, 1, 7, constants.BT_LEAF)


def test_a_cycle_has_room_past_the_dirty_hard_limit():
    """The spare room of a WIJ cycle holds the one write that passes the writers'
    hard limit (a longest value as UTF-8, 4 bytes a character, in an overflow chain,
    plus its leaf's splits up a tall tree) and every database's header."""
    from irisrep import constants as c

    longest_value_blocks = -(-(4 * c.STRING_CHARS_MAX + 8) // c.BLOCK_PAYLOAD_MAX)
    assert longest_value_blocks + 2 * 32 + c.DATABASES_MAX < c.WIJ_CYCLE_SPARE_BLOCKS
    assert c.WIJ_CYCLE_SPARE_BLOCKS < c.WIJ_BLOCKS_MAX // 8
