"""The terminal: the ObjectScript subset behind `irisrep session`.

Owns the tokenizer, the recursive-descent parser and the interpreter of one line
of ObjectScript commands (`docs/terminal.md` lists what is supported), the local
variables of a session, the locks it holds, the mapping of errors to IRIS error
words, and the three ways a session reads its lines: `-c` text (`run_commands`),
lines piped on stdin (`run_stream`) and the interactive terminal (`interact`:
prompt, readline editing and history, Ctrl-C, Ctrl-D). It runs against a *target*:
anything with `globals[name]` (objects with `g[subs]`, `g[subs] = v`, `get`, `del`,
`zkill`, `data`, `order`, `query`, `increment`, `items`, `lock`) and `tstart`,
`tcommit`, `trollback`, `tlevel`: a local `Database` or a mirror client connection.
Namespaces (ZNspace, $Namespace, `^|"NAME"|x`) are the target's databases: a local
one's `database(name, create=False)` and `database_names()`, a connection's
`use_database(name)` (see `_Namespaces`); a target without them has one namespace.
Nothing else of the target is used.

Promises:
- a line is parsed whole before it runs: a syntax error runs nothing (`<SYNTAX>`);
- an error stops the rest of the line (what ran before it stays done, as in IRIS)
  and is raised as `TerminalError(word, message)`: the IRIS word (`PROTECT`,
  `UNDEFINED`, `SUBSCRIPT`, `MAXSTRING`, `SYNTAX`, `COMMAND`, `DIVIDE`, ...) and
  never a Python traceback; bugs are not caught;
- values follow IRIS: every value is a string, canonical numbers print as numbers
  (`.5`, `-1.5`, `10`), arithmetic is decimal with 19 significant digits and
  operators bind strictly left to right;
- `Session.close()` releases the session's locks and rolls back a transaction it
  left open (as the end of an IRIS process does); every runner closes it, except
  after a lost connection (`ConnectionLostError`: the member already did);
- interactively, an error is printed and the session goes on; Ctrl-C during a
  command stops it between two requests (`<INTERRUPT>`), never inside one, so a
  client connection never loses track of its replies.
"""

from __future__ import annotations

import contextlib
import decimal
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, TextIO

from . import errors
from .constants import (
    STRING_CHARS_MAX,
    TERMINAL_HISTORY_LINES_MAX,
    TERMINAL_WAIT_SLICE_S,
)
from .database import DEFAULT_DATABASE

__all__ = [
    "ERROR_WORDS",
    "ConnectionLostError",
    "Session",
    "TerminalError",
    "interact",
    "prompt",
    "run_commands",
    "run_session",
    "run_stream",
]


# --- errors -------------------------------------------------------------------------


class TerminalError(Exception):
    """An ObjectScript error: `word` is the IRIS word without brackets ("PROTECT")."""

    def __init__(self, word: str, message: str = "") -> None:
        super().__init__(f"<{word}> {message}".rstrip())
        self.word = word
        self.message = message


class ConnectionLostError(TerminalError):
    """The connection to the member broke (word "ERROR"): the session cannot go on.

    The member released the session's locks and rolled back its transaction when the
    connection dropped, and the client does not retry (a write may have landed), so
    an interactive session ends here with status 1 rather than reconnect silently
    without them.
    """


# irisrep error class -> IRIS word; the first class in an error's MRO found here wins.
# Classes not listed use their own `iris_word` when it is not the generic "<ERROR>".
ERROR_WORDS: dict[type, str] = {
    errors.ProtectError: "PROTECT",
    errors.NotPrimaryError: "PROTECT",
    errors.UndefinedError: "UNDEFINED",
    errors.SubscriptError: "SUBSCRIPT",
    errors.MaxStringError: "MAXSTRING",
    errors.IllegalValueError: "ILLEGAL VALUE",
    errors.LockTableFullError: "LOCKTABLEFULL",
    errors.TransactionError: "COMMAND",
    errors.DatabaseNotFoundError: "NAMESPACE",
}

_WORD_PREFIX = re.compile(r"<[A-Z][A-Z ]*>\s*")


def _map_error(exc: BaseException) -> TerminalError:
    word = None
    for cls in type(exc).__mro__:
        if cls in ERROR_WORDS:
            word = ERROR_WORDS[cls]
            break
    if word is None:
        own = getattr(exc, "iris_word", "<ERROR>")
        word = own.strip("<>") if own != "<ERROR>" else "ERROR"
    message = _WORD_PREFIX.sub("", str(exc), count=1) if str(exc).startswith("<") else str(exc)
    return TerminalError(word, message)


def _syntax(message: str, pos: int | None = None) -> TerminalError:
    where = f" (column {pos + 1})" if pos is not None else ""
    return TerminalError("SYNTAX", message + where)


# --- numbers and strings --------------------------------------------------------------

# IRIS numbers are decimal with about 19 significant digits; past 1E145 is <MAXNUMBER>.
_CTX = decimal.Context(
    prec=19,
    rounding=decimal.ROUND_HALF_EVEN,
    Emax=145,
    Emin=-145,
    traps=[decimal.Overflow, decimal.DivisionByZero, decimal.InvalidOperation],
)
_ZERO = Decimal(0)
_ONE = Decimal(1)
_CANONICAL = re.compile(r"0|-?[1-9][0-9]*|-?(?:[1-9][0-9]*)?\.[0-9]*[1-9]")
_NUMERIC_PREFIX = re.compile(r"([+-]*)([0-9]*)(?:\.([0-9]*))?")
_EXPONENT = re.compile(r"[Ee]([+-]?)([0-9]+)")

Value = str | Decimal  # an ObjectScript value inside the interpreter


def _fmt(d: Decimal) -> str:
    """IRIS canonical form of a number: 10, -1.5, .5, -.05, 0."""
    if d.is_zero():
        return "0"
    s = format(d, "f")
    if "." in s:
        s = s.rstrip("0").rstrip(".")
    if s.startswith("0."):
        s = s[1:]
    elif s.startswith("-0."):
        s = "-" + s[2:]
    return s


def _str(v: Value) -> str:
    return v if isinstance(v, str) else _fmt(v)


def _num(v: Value) -> Decimal:
    """IRIS numeric interpretation: "12abc" -> 12, "abc" -> 0, "1.5E2x" -> 150."""
    if isinstance(v, Decimal):
        return v
    m = _NUMERIC_PREFIX.match(v)
    signs, whole, frac = m.group(1), m.group(2), m.group(3) or ""
    if not whole and not frac:
        return _ZERO
    text = ("-" if signs.count("-") % 2 else "") + (whole or "0") + "." + (frac or "0")
    e = _EXPONENT.match(v, m.end())
    if e:
        digits = e.group(2).lstrip("0") or "0"
        if len(digits) > 6:  # far past the range either way
            if e.group(1) == "-" or not (whole + frac).strip("0"):
                return _ZERO
            raise TerminalError("MAXNUMBER", f"{v[:40]!r} is too large")
        text += "E" + e.group(1) + digits
    return _CTX.create_decimal(text)


def _truth(v: Value) -> bool:
    return not _num(v).is_zero()


def _bool(b: bool) -> Decimal:
    return _ONE if b else _ZERO


def _int(v: Value) -> int:
    """An integer argument (truncated), kept to a sane range."""
    d = _num(v)
    if d.is_zero():
        return 0
    if d.adjusted() > 15:
        return (1 if d > 0 else -1) * 10**16
    return int(d)


def _check_len(s: str) -> str:
    if len(s) > STRING_CHARS_MAX:
        raise TerminalError("MAXSTRING", f"a string of {len(s)} characters")
    return s


def _from_db(v: Any) -> Value:
    """A value as the target returns it (str, int, float, bytes) -> interpreter value."""
    if isinstance(v, str):
        return v
    if isinstance(v, bool):
        return _bool(v)
    if isinstance(v, int):
        return Decimal(v)
    if isinstance(v, float):
        return Decimal(repr(v))
    if isinstance(v, (bytes, bytearray, memoryview)):
        return bytes(v).decode("latin-1")
    return str(v)


def _to_db(v: Value) -> str | int | float:
    """An interpreter value -> what the target stores: numbers as int or float when exact."""
    if isinstance(v, str):
        return v
    if v == v.to_integral_value():
        return int(v)
    f = float(v)
    if Decimal(repr(f)) == v:
        return f
    return _fmt(v)


def _quote(s: str) -> str:
    """A string as ZWrite shows it: "a""b", control characters as $c(n)."""
    if _CANONICAL.fullmatch(s):
        return s
    if not s:
        return '""'
    parts: list[str] = []
    run: list[str] = []
    ctl: list[str] = []
    for ch in s:
        if ord(ch) < 32 or ord(ch) == 127:
            if run:
                parts.append('"' + "".join(run).replace('"', '""') + '"')
                run = []
            ctl.append(str(ord(ch)))
        else:
            if ctl:
                parts.append("$c(" + ",".join(ctl) + ")")
                ctl = []
            run.append(ch)
    if run:
        parts.append('"' + "".join(run).replace('"', '""') + '"')
    if ctl:
        parts.append("$c(" + ",".join(ctl) + ")")
    return "_".join(parts)


def _show(v: Value) -> str:
    return _fmt(v) if isinstance(v, Decimal) else _quote(v)


# A subscript inside the interpreter: (0, Decimal) for a number, (1, str) for a string;
# tuples of these sort in IRIS collation (numbers first, a parent before its children).
Sub = tuple[int, Any]


def _sub(v: Value, *, empty_ok: bool = False) -> Sub:
    if isinstance(v, Decimal):
        return (0, v + 0 if v.is_zero() else v)
    if _CANONICAL.fullmatch(v):
        return (0, _CTX.create_decimal(v))
    if not v and not empty_ok:
        raise TerminalError("SUBSCRIPT", 'a subscript is "" (empty)')
    return (1, v)


def _sub_to_db(s: Sub) -> int | str:
    if s[0] == 1:
        return s[1]
    d = s[1]
    return int(d) if d == d.to_integral_value() else _fmt(d)


def _sub_from_db(v: Any) -> Sub:
    return _sub(_from_db(v), empty_ok=True)


def _sub_value(s: Sub) -> Value:
    return s[1]


def _show_sub(s: Sub) -> str:
    # A string subscript is never canonical (those are numbers), so _quote quotes it.
    return _fmt(s[1]) if s[0] == 0 else _quote(s[1])


def _ref_text(
    is_global: bool, name: str, subs: tuple[Sub, ...], namespace: str | None = None
) -> str:
    """`^x(1,"a")`; `^|"REPORT"|x(1)` for an extended reference (namespace given)."""
    text = ("^" if is_global else "") + name
    if namespace is not None:
        text = '^|"' + namespace.replace('"', '""') + '"|' + name
    if subs:
        text += "(" + ",".join(_show_sub(s) for s in subs) + ")"
    return text


# --- tokenizer ------------------------------------------------------------------------

_TOKEN = re.compile(
    r"""
     (?P<SP>[ \t]+)
    |(?P<STR>"(?:[^"]|"")*")
    |(?P<NUM>(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[Ee][+-]?[0-9]+)?)
    |(?P<SVAR>\$\$?[%A-Za-z][A-Za-z0-9]*)
    |(?P<NAME>[%A-Za-z][A-Za-z0-9]*(?:\.[A-Za-z0-9]+)*)
    |(?P<OP>\*\*|'=|'<|'>|'\[|'\]|<=|>=|\]\]|[-+*/\\\#_=<>&!'\[\]^(),:?@|.{}])
    """,
    re.X,
)


@dataclass(slots=True)
class Token:
    kind: str  # SP STR NUM SVAR NAME OP COMMENT END
    text: str
    pos: int


def tokenize(line: str) -> list[Token]:
    """The tokens of one line; spaces are tokens (they separate commands)."""
    toks: list[Token] = []
    pos = 0
    n = len(line)
    while pos < n:
        ch = line[pos]
        if (ch == ";" or line.startswith("//", pos)) and (not toks or toks[-1].kind == "SP"):
            toks.append(Token("COMMENT", line[pos:], pos))
            break
        m = _TOKEN.match(line, pos)
        if m is None:
            if ch == '"':
                raise _syntax("unterminated string", pos)
            raise _syntax(f"unexpected character {ch!r}", pos)
        kind = m.lastgroup or "OP"
        toks.append(Token(kind, m.group(), pos))
        pos = m.end()
    toks.append(Token("END", "", n))
    return toks


# --- syntax tree ----------------------------------------------------------------------


@dataclass(slots=True)
class Num:
    value: Decimal


@dataclass(slots=True)
class Str:
    value: str


@dataclass(slots=True)
class Ref:
    is_global: bool
    name: str
    subs: list[Any]
    pos: int
    env: Any = None  # ^|env|name: the namespace expression of an extended reference


@dataclass(slots=True)
class Unary:
    op: str
    operand: Any


@dataclass(slots=True)
class Binary:
    op: str
    left: Any
    right: Any


@dataclass(slots=True)
class Func:
    name: str  # canonical: GET DATA ORDER ...
    args: list[Any]
    pos: int


@dataclass(slots=True)
class SpecialVar:
    name: str  # TEST TLEVEL NAMESPACE


@dataclass(slots=True)
class Command:
    name: str  # canonical: SET WRITE ...
    post: Any  # postconditional expression or None
    args: list[Any] | None
    pos: int


@dataclass(slots=True)
class LockArg:
    mode: str  # "+", "-" or ""
    ref: Ref
    kind: Any  # lock type expression ("S" shared) or None
    timeout: Any  # expression or None


@dataclass(slots=True)
class WriteArg:
    formats: list[Any] = field(default_factory=list)  # "!", "#" or ("?", expr)
    expr: Any = None


_COMMANDS = {
    "S": "SET",
    "SET": "SET",
    "W": "WRITE",
    "WRITE": "WRITE",
    "K": "KILL",
    "KILL": "KILL",
    "ZK": "ZKILL",
    "ZKILL": "ZKILL",
    "ZW": "ZWRITE",
    "ZWRITE": "ZWRITE",
    "TS": "TSTART",
    "TSTART": "TSTART",
    "TC": "TCOMMIT",
    "TCOMMIT": "TCOMMIT",
    "TRO": "TROLLBACK",
    "TROLLBACK": "TROLLBACK",
    "L": "LOCK",
    "LOCK": "LOCK",
    "H": "H",  # HALT without an argument, HANG with one
    "HALT": "HALT",
    "HANG": "HANG",
    "ZN": "ZNSPACE",
    "ZNSPACE": "ZNSPACE",
}
# Commands that take no argument here: one space is enough to end them.
_NO_ARGS = {"TSTART", "TCOMMIT", "HALT"}
_ARGS_REQUIRED = {"SET", "ZKILL", "HANG", "ZNSPACE"}

# $function name -> (canonical, min args, max args, first argument is a reference)
_FUNCTIONS = {
    "G": ("GET", 1, 2, True),
    "GET": ("GET", 1, 2, True),
    "D": ("DATA", 1, 1, True),
    "DATA": ("DATA", 1, 1, True),
    "O": ("ORDER", 1, 2, True),
    "ORDER": ("ORDER", 1, 2, True),
    "Q": ("QUERY", 1, 2, True),
    "QUERY": ("QUERY", 1, 2, True),
    "I": ("INCREMENT", 1, 2, True),
    "INCREMENT": ("INCREMENT", 1, 2, True),
    "L": ("LENGTH", 1, 2, False),
    "LENGTH": ("LENGTH", 1, 2, False),
    "E": ("EXTRACT", 1, 3, False),
    "EXTRACT": ("EXTRACT", 1, 3, False),
    "P": ("PIECE", 2, 4, False),
    "PIECE": ("PIECE", 2, 4, False),
    "C": ("CHAR", 1, 255, False),
    "CHAR": ("CHAR", 1, 255, False),
    "A": ("ASCII", 1, 2, False),
    "ASCII": ("ASCII", 1, 2, False),
}
_SPECIAL = {
    "T": "TEST",
    "TEST": "TEST",
    "TL": "TLEVEL",
    "TLEVEL": "TLEVEL",
    # Both name the current namespace and Set switches it (ZNspace); no abbreviations.
    "NAMESPACE": "NAMESPACE",
    "ZNSPACE": "NAMESPACE",
}
_SETTABLE_SPECIAL = {"NAMESPACE"}
_BINARY = {
    "_", "+", "-", "*", "/", "\\", "#", "**", "=", "'=", "<", ">", "'<", "'>",
    "<=", ">=", "&", "!", "[", "]", "'[", "']", "]]",
}  # fmt: skip
_WAIT_MAX_S = 86_400.0  # Hang and Lock timeouts are capped at a day
_DEPTH_MAX = 64  # nesting of parentheses, unary operators and function calls


class Parser:
    """Recursive descent over the tokens of one line -> a list of Command."""

    def __init__(self, line: str) -> None:
        self.toks = tokenize(line)
        self.i = 0
        self.depth = 0
        # Inside ^[env]: "]" ends the environment instead of being the follows operator.
        self.in_brackets = False

    # helpers
    def peek(self, k: int = 0) -> Token:
        return self.toks[min(self.i + k, len(self.toks) - 1)]

    def take(self) -> Token:
        t = self.toks[self.i]
        if t.kind != "END":
            self.i += 1
        return t

    def at(self, text: str) -> bool:
        t = self.peek()
        return t.kind == "OP" and t.text == text

    def expect(self, text: str) -> Token:
        t = self.peek()
        if not (t.kind == "OP" and t.text == text):
            raise _syntax(f"expected {text!r}, found {t.text or 'end of line'!r}", t.pos)
        return self.take()

    def error(self, what: str) -> TerminalError:
        t = self.peek()
        return _syntax(f"{what}, found {t.text or 'end of line'!r}", t.pos)

    # line and commands
    def parse_line(self) -> list[Command]:
        cmds: list[Command] = []
        if self.peek().kind == "SP":
            self.take()
        while self.peek().kind not in ("END", "COMMENT"):
            cmds.append(self.command())
            t = self.peek()
            if t.kind in ("END", "COMMENT"):
                break
            if t.kind != "SP":
                raise self.error("expected a space after the command's arguments")
            self.take()
        return cmds

    def command(self) -> Command:
        t = self.take()
        if t.kind != "NAME":
            raise _syntax(f"expected a command, found {t.text or 'end of line'!r}", t.pos)
        name = _COMMANDS.get(t.text.upper())
        if name is None:
            raise TerminalError("COMMAND", f"unknown command {t.text!r} (column {t.pos + 1})")
        post = None
        if self.at(":"):
            self.take()
            post = self.expr()
        nxt = self.peek()
        args = None
        if nxt.kind == "SP":
            after = self.peek(1)
            takes_args = name not in _NO_ARGS
            if takes_args and nxt.text == " " and after.kind not in ("END", "COMMENT"):
                self.take()
                args = self.arguments(name)
        elif nxt.kind not in ("END", "COMMENT"):
            raise self.error(f"expected a space after {t.text}")
        if name == "H":
            name = "HANG" if args else "HALT"
        if args is None and name in _ARGS_REQUIRED:
            raise _syntax(f"{t.text} needs an argument", nxt.pos)
        return Command(name, post, args, t.pos)

    def arguments(self, name: str) -> list[Any]:
        one = {
            "SET": self.set_arg,
            "WRITE": self.write_arg,
            "KILL": self.ref,
            "ZKILL": self.ref,
            "ZWRITE": self.ref,
            "TROLLBACK": self.expr,
            "LOCK": self.lock_arg,
            "HANG": self.expr,
            "H": self.expr,
            "ZNSPACE": self.expr,
        }[name]
        args = [one()]
        while self.at(","):
            self.take()
            args.append(one())
        if name in ("TROLLBACK", "ZNSPACE") and len(args) > 1:
            raise _syntax(f"{name} takes one argument", self.peek().pos)
        return args

    def set_arg(self) -> tuple[list[Ref | SpecialVar], Any]:
        if self.at("("):
            self.take()
            targets = [self.set_target()]
            while self.at(","):
                self.take()
                targets.append(self.set_target())
            self.expect(")")
        else:
            targets = [self.set_target()]
        self.expect("=")
        return targets, self.expr()

    def set_target(self) -> Ref | SpecialVar:
        t = self.peek()
        if t.kind == "SVAR":
            special = _SPECIAL.get(t.text[1:].upper())
            if special not in _SETTABLE_SPECIAL:
                raise _syntax(f"{t.text} cannot be Set", t.pos)
            self.take()
            return SpecialVar(special)
        return self.ref()

    def write_arg(self) -> WriteArg:
        arg = WriteArg()
        if self.at("*"):  # W *65: the character with that code, an argument of its own
            self.take()
            arg.formats.append(("*", self.primary_unary()))
            return arg
        while True:
            t = self.peek()
            if t.kind == "OP" and t.text in ("!", "#"):
                self.take()
                arg.formats.append(t.text)
            elif t.kind == "OP" and t.text == "?":
                self.take()
                arg.formats.append(("?", self.primary_unary()))
            else:
                break
        t = self.peek()
        if not arg.formats or not (t.kind in ("SP", "END", "COMMENT") or self.at(",")):
            arg.expr = self.expr()
        return arg

    def lock_arg(self) -> LockArg:
        mode = ""
        if self.at("+") or self.at("-"):
            mode = self.take().text
        if self.at("("):
            raise self.error("a list of lock names in parentheses is not supported")
        ref = self.ref()
        if not ref.is_global:
            raise _syntax("Lock takes global references here (^name)", ref.pos)
        kind = timeout = None
        if self.at("#"):
            self.take()
            kind = self.primary_unary()
        if self.at(":"):
            self.take()
            timeout = self.expr()
        return LockArg(mode, ref, kind, timeout)

    def ref(self) -> Ref:
        t = self.peek()
        is_global = False
        env = None
        if self.at("^"):
            self.take()
            is_global = True
            if self.at("("):
                raise self.error("naked references are not supported")
            if self.at("|") or self.at("["):
                env = self.environment()
        n = self.take()
        if n.kind != "NAME":
            raise _syntax(f"expected a variable name, found {n.text or 'end of line'!r}", n.pos)
        if not is_global and "." in n.text:
            raise _syntax(f"bad local variable name {n.text!r}", n.pos)
        subs: list[Any] = []
        if self.at("("):
            self.take()
            subs.append(self.inner_expr())
            while self.at(","):
                self.take()
                subs.append(self.inner_expr())
            self.expect(")")
        return Ref(is_global, n.text, subs, t.pos, env)

    def environment(self) -> Any:
        """The namespace of an extended reference: ^|expr|name or ^[expr]name."""
        if self.take().text == "|":
            env = self.expr()  # "|" is no operator: the expression ends before it
            self.expect("|")
            return env
        outer, self.in_brackets = self.in_brackets, True
        env = self.expr()
        self.in_brackets = outer
        if self.at(","):
            raise self.error("a system name in ^[namespace,system] is not supported")
        self.expect("]")
        return env

    # expressions: operands joined by binary operators, strictly left to right
    def enter(self) -> None:
        self.depth += 1
        if self.depth > _DEPTH_MAX:
            raise self.error("expression nested too deeply")

    def expr(self) -> Any:
        self.enter()
        node = self.primary_unary()
        while True:
            t = self.peek()
            if t.kind != "OP" or t.text not in _BINARY or (self.in_brackets and t.text == "]"):
                break
            # "'" followed by an operator is the negated operator ('& '! too)
            self.take()
            op = t.text
            node = Binary(op, node, self.primary_unary())
        self.depth -= 1
        return node

    def inner_expr(self) -> Any:
        """An expression inside parentheses, where "]" is the follows operator again."""
        outer, self.in_brackets = self.in_brackets, False
        node = self.expr()
        self.in_brackets = outer
        return node

    def primary_unary(self) -> Any:
        self.enter()
        t = self.peek()
        if t.kind == "OP" and t.text in ("-", "+", "'"):
            self.take()
            node: Any = Unary(t.text, self.primary_unary())
        else:
            node = self.primary()
        self.depth -= 1
        return node

    def primary(self) -> Any:
        t = self.peek()
        if t.kind == "NUM":
            self.take()
            return Num(_CTX.create_decimal(t.text))
        if t.kind == "STR":
            self.take()
            return Str(_check_len(t.text[1:-1].replace('""', '"')))
        if t.kind == "OP" and t.text == "(":
            self.take()
            node = self.inner_expr()
            self.expect(")")
            return node
        if t.kind == "NAME" or (t.kind == "OP" and t.text == "^"):
            return self.ref()
        if t.kind == "SVAR":
            return self.dollar()
        if t.kind == "OP" and t.text == "@":
            raise self.error("indirection (@) is not supported")
        raise self.error("expected an expression")

    def dollar(self) -> Any:
        t = self.take()
        if t.text.startswith("$$"):
            raise _syntax("extrinsic functions ($$) are not supported", t.pos)
        word = t.text[1:].upper()
        if self.at("("):
            spec = _FUNCTIONS.get(word)
            if spec is None:
                raise TerminalError("FUNCTION", f"unknown function {t.text} (column {t.pos + 1})")
            name, lo, hi, by_ref = spec
            self.take()
            outer, self.in_brackets = self.in_brackets, False
            args = [self.ref() if by_ref else self.expr()]
            while self.at(","):
                self.take()
                args.append(self.expr())
            self.in_brackets = outer
            self.expect(")")
            if not lo <= len(args) <= hi:
                raise _syntax(f"{t.text} takes {lo} to {hi} arguments", t.pos)
            return Func(name, args, t.pos)
        special = _SPECIAL.get(word)
        if special is None:
            raise _syntax(f"unknown special variable {t.text}", t.pos)
        return SpecialVar(special)


def parse(line: str) -> list[Command]:
    """The commands of one line; TerminalError (<SYNTAX>, <COMMAND>...) if it is malformed."""
    return Parser(line).parse_line()


# --- interpreter ----------------------------------------------------------------------

_MISSING = object()


class _Halt(Exception):
    """Raised by the Halt command: ends the session (not an error)."""


def _no_namespace(name: str) -> TerminalError:
    return TerminalError("NAMESPACE", "*" + name)


class _Namespaces:
    """A session's namespaces: the current one's name and the globals of each.

    A namespace is a database of the target's instance (irisrep maps each name to
    one database). Names are case-insensitive and shown upper-case, as IRIS shows
    explicit namespaces. Two kinds of target:
    - local (`Database`): `database(name, create=False)` gives another Database of
      the same instance (its transactions and $TLEVEL are the instance's, so the
      session's TStart and $TLEVEL stay on the target it was given);
    - remote (a client connection, `use_database`): a connection reads one database
      at a time, so an extended reference to another one switches for the one
      operation and back (in a finally: an error leaves the current one in place).
    A target with neither knows only its own name: any other is <NAMESPACE>.
    """

    def __init__(self, target: Any, name: str) -> None:
        self.target = target
        self.default = name.upper()
        self.current = self.default
        self.remote = callable(getattr(target, "use_database", None))
        # remote: the name the server gave for the current database (None: the default)
        self._current_arg: str | None = None
        # remote: upper name -> the server's spelling (it may not ignore case)
        self._spelling: dict[str, str] = {}
        self._local: dict[str, Any] = {self.default: target}  # upper name -> Database

    def _local_db(self, name: str) -> Any:
        key = name.upper()
        db = self._local.get(key)
        if db is not None:
            return db
        if not callable(getattr(self.target, "database", None)):
            raise _no_namespace(name)
        # The instance may spell a name in any case: find it as IRIS would, ignoring case.
        listing = getattr(self.target, "database_names", None)
        if callable(listing):
            spelled = {str(n).upper(): str(n) for n in listing()}
            if key not in spelled:
                raise _no_namespace(name)
            name = spelled[key]
        try:
            db = self.target.database(name, create=False)
        except (errors.DatabaseNotFoundError, errors.ConfigError):  # ConfigError: not a name
            raise _no_namespace(name) from None
        self._local[key] = db
        return db

    def _use(self, name: str | None) -> str | None:
        """Remote: make `name` (None: the default) the connection's database; the
        server's spelling of it."""
        if name is not None:
            name = self._spelling.get(name.upper(), name)
        try:
            got = self.target.use_database(name)
        except (errors.DatabaseNotFoundError, errors.ConfigError):  # ConfigError: not a name
            raise _no_namespace(name or self.default) from None
        if isinstance(got, str):
            self._spelling[got.upper()] = got
        return got

    def switch(self, name: str) -> None:
        """ZNspace name: <NAMESPACE> (nothing changed) for a name that does not exist."""
        key = name.upper()
        if not name:
            raise _no_namespace(name)
        if key == self.current:
            return  # IRIS: switching to the current namespace does nothing
        if not self.remote:
            db = self._local_db(name)
            self.current = str(getattr(db, "name", name)).upper()
            return
        arg = None if key == self.default else name
        got = self._use(arg)
        self._current_arg = None if arg is None else (got or name)
        self.current = self.default if arg is None else str(got or name).upper()

    @contextlib.contextmanager
    def globals(self, env: str | None):
        """(shown name, globals view) of namespace `env` (None or "": the current
        one) for one operation; the shown name is None when `env` is None."""
        if env is None or not env or env.upper() == self.current:
            target = self.target if self.remote else self._local_db(self.current)
            yield (None if env is None else self.current), target.globals
            return
        if not self.remote:
            db = self._local_db(env)
            yield str(getattr(db, "name", env)).upper(), db.globals
            return
        arg = None if env.upper() == self.default else env
        got = self._use(arg)
        try:
            yield (self.default if arg is None else str(got or env).upper()), self.target.globals
        finally:
            self._use(self._current_arg)

    def close(self) -> None:
        """Remote: the connection back on its default database (it may be used again)."""
        if self.remote and self._current_arg is not None:
            self._current_arg = None
            self.current = self.default
            self.target.use_database(None)


class Session:
    """One terminal session on a target: its locals, $TEST, locks and output column."""

    def __init__(
        self,
        target: Any,
        *,
        out: TextIO = sys.stdout,
        sleep=time.sleep,
        interruptible: bool = False,
        name: str = DEFAULT_DATABASE,
    ) -> None:
        self.target = target
        self.ns = _Namespaces(target, name)
        self.out = out
        self.halted = False
        self.test = 1
        self.column = 0
        self.locals: dict[str, dict[tuple[Sub, ...], Value]] = {}
        # (namespace, global name, db subscripts, shared) -> entered lock context managers
        self._locks: dict[tuple[str, str, tuple, bool], list[Any]] = {}
        self._sleep = sleep
        # Interactive sessions wait (Hang, Lock) in slices so that Ctrl-C can stop a
        # wait without interrupting a request half-way (see interrupt()).
        self.interruptible = interruptible
        self._interrupted = False

    # public
    def execute(self, line: str) -> None:
        """Run one line; raises TerminalError at the first error (the rest is not run)."""
        if self.halted:
            return
        self._interrupted = False
        try:
            with decimal.localcontext(_CTX):
                for cmd in parse(line):
                    self._command(cmd)
        except _Halt:
            self.halted = True
            self.close()
        except TerminalError:
            raise
        except errors.IrisrepError as exc:
            raise _map_error(exc) from None
        except ConnectionError as exc:
            # The client's word for a broken connection (it never retries one).
            raise ConnectionLostError("ERROR", str(exc) or type(exc).__name__) from None
        except decimal.DivisionByZero:
            raise TerminalError("DIVIDE", "division by zero") from None
        except decimal.Overflow:
            raise TerminalError("MAXNUMBER", "number too large") from None
        except decimal.InvalidOperation as exc:
            raise TerminalError("ILLEGAL VALUE", f"invalid arithmetic ({exc})") from None
        except OSError as exc:
            raise TerminalError("ERROR", str(exc) or type(exc).__name__) from None

    @property
    def namespace(self) -> str:
        """The current namespace (database) name, upper-case: what the prompt shows."""
        return self.ns.current

    @property
    def interrupted(self) -> bool:
        """A Ctrl-C came since the last line started (execute() clears it)."""
        return self._interrupted

    def interrupt(self) -> None:
        """Ask the running line to stop with <INTERRUPT> (Ctrl-C; safe in a signal
        handler): before its next command, or within TERMINAL_WAIT_SLICE_S of an
        interruptible Hang or Lock wait. A request already sent runs to its reply."""
        self._interrupted = True

    def close(self) -> None:
        """Release the session's locks and roll back a transaction it left open."""
        self._release_all()
        with contextlib.suppress(errors.IrisrepError, OSError):
            if self.target.tlevel:
                self.target.trollback()
        with contextlib.suppress(errors.IrisrepError, OSError):
            self.ns.close()

    # output
    def _write(self, s: str) -> None:
        if not s:
            return
        self.out.write(s)
        nl = s.rfind("\n")
        self.column = len(s) - nl - 1 if nl >= 0 else self.column + len(s)

    # commands
    def _command(self, cmd: Command) -> None:
        self._check_interrupt()
        if cmd.post is not None and not _truth(self._eval(cmd.post)):
            return
        getattr(self, "_cmd_" + cmd.name.lower())(cmd.args)

    def _check_interrupt(self) -> None:
        if self._interrupted:
            raise TerminalError("INTERRUPT")

    def _cmd_set(self, args: list) -> None:
        for targets, expr in args:
            value = self._eval(expr)
            for ref in targets:
                if isinstance(ref, SpecialVar):  # Set $Namespace=name: as ZNspace
                    self.ns.switch(_str(value))
                else:
                    self._store(ref, value)

    def _cmd_znspace(self, args: list) -> None:
        self.ns.switch(_str(self._eval(args[0])))

    def _cmd_write(self, args: list | None) -> None:
        if args is None:
            self._zwrite_locals(None)
            return
        for arg in args:
            for f in arg.formats:
                if f == "!":
                    self._write("\n")
                elif f == "#":
                    self._write("\f")
                elif f[0] == "*":
                    n = _int(self._eval(f[1]))  # negative codes control devices: none here
                    if 0 <= n <= 0x10FFFF and not 0xD800 <= n <= 0xDFFF:
                        self._write(chr(n))
                else:
                    col = _int(self._eval(f[1]))
                    if col > self.column:
                        self._write(" " * min(col - self.column, 10_000))
            if arg.expr is not None:
                self._write(_str(self._eval(arg.expr)))

    def _cmd_kill(self, args: list | None) -> None:
        if args is None:
            self.locals.clear()
            return
        for ref in args:
            is_global, name, subs, env = self._resolve(ref)
            if is_global:
                with self.ns.globals(env) as (_ns, globals_):
                    del globals_[name][tuple(_sub_to_db(s) for s in subs)]
            else:
                self._local_kill(name, subs, tree=True)

    def _cmd_zkill(self, args: list) -> None:
        for ref in args:
            is_global, name, subs, env = self._resolve(ref)
            if is_global:
                with self.ns.globals(env) as (_ns, globals_):
                    globals_[name].zkill(tuple(_sub_to_db(s) for s in subs))
            else:
                self._local_kill(name, subs, tree=False)

    def _cmd_zwrite(self, args: list | None) -> None:
        if args is None:
            self._zwrite_locals(None)
            return
        for ref in args:
            is_global, name, subs, env = self._resolve(ref)
            if not is_global:
                self._zwrite_locals(name, subs)
                continue
            # The whole walk in the one namespace: a remote one is switched back after it.
            with self.ns.globals(env) as (ns, globals_):
                g = globals_[name]
                for dbsubs, value in g.items(prefix=tuple(_sub_to_db(s) for s in subs)):
                    self._check_interrupt()  # between two pages' requests, never inside one
                    ref_text = _ref_text(True, name, tuple(_sub_from_db(s) for s in dbsubs), ns)
                    self._write(f"{ref_text}={_show(_from_db(value))}\n")

    def _zwrite_locals(self, only: str | None, prefix: tuple[Sub, ...] = ()) -> None:
        names = [only] if only is not None else sorted(self.locals)
        for name in names:
            nodes = self.locals.get(name, {})
            for subs in sorted(nodes):
                if subs[: len(prefix)] == prefix:
                    self._write(f"{_ref_text(False, name, subs)}={_show(nodes[subs])}\n")

    def _cmd_tstart(self, args: None) -> None:
        self.target.tstart()

    def _cmd_tcommit(self, args: None) -> None:
        if not self.target.tlevel:
            raise TerminalError("COMMAND", "TCOMMIT with no transaction open ($TLEVEL is 0)")
        self.target.tcommit()

    def _cmd_trollback(self, args: list | None) -> None:
        level = self.target.tlevel
        if args is None:
            if level:
                self.target.trollback()
            return
        n = self._eval(args[0])
        count = _int(n)
        if count < 1 or _num(n) != count:
            raise TerminalError("COMMAND", f"TROLLBACK {_str(n)}: the level count must be >= 1")
        if not level:
            return
        if count > level:
            raise TerminalError("COMMAND", f"TROLLBACK {count}: $TLEVEL is {level}")
        self.target.trollback(count)

    def _cmd_lock(self, args: list | None) -> None:
        if args is None:
            self._release_all()
            return
        for arg in args:
            _g, name, subs, env = self._resolve(arg.ref)
            dbsubs = tuple(_sub_to_db(s) for s in subs)
            shared = False
            if arg.kind is not None:
                kind = _str(self._eval(arg.kind)).upper()
                if kind.strip("SEI"):
                    raise TerminalError("SYNTAX", f'lock type "{kind}" (S, E, I allowed)')
                shared = "S" in kind
            timeout = None
            if arg.timeout is not None:
                timeout = min(max(0.0, float(_num(self._eval(arg.timeout)))), _WAIT_MAX_S)
            # A lock belongs to its namespace (^x in DB and in REPORT are two locks).
            ns = self.ns.current if env is None else self._lock_namespace(env)
            key = (ns, name, dbsubs, shared)
            if arg.mode == "-":
                held = self._locks.get(key)
                if held:
                    self._unlock(key[0], held.pop())
                    if not held:
                        del self._locks[key]
                continue
            try:
                cm = self._take_lock(key[0], name, dbsubs, timeout, shared)
            except errors.LockTimeoutError:
                if timeout is not None:
                    self.test = 0
                    continue
                raise
            if arg.mode == "":
                self._release_all()
            self._locks.setdefault(key, []).append(cm)
            if timeout is not None:
                self.test = 1

    def _lock_namespace(self, env: str) -> str:
        """The upper-case name of namespace `env` (<NAMESPACE> if there is none)."""
        with self.ns.globals(env) as (ns, _globals):
            return ns

    def _unlock(self, ns: str, cm: Any) -> None:
        # A remote lock is released on the database it was taken on.
        with self.ns.globals(ns):
            cm.__exit__(None, None, None)

    def _take_lock(
        self, ns: str, name: str, dbsubs: tuple, timeout: float | None, shared: bool
    ) -> Any:
        """The entered lock context manager; LockTimeoutError when not granted in time."""
        with self.ns.globals(ns) as (_ns, globals_):
            return self._take_lock_in(globals_[name], dbsubs, timeout, shared)

    def _take_lock_in(self, g: Any, dbsubs: tuple, timeout: float | None, shared: bool) -> Any:
        if not self.interruptible:
            cm = g.lock(dbsubs, timeout=timeout, shared=shared)
            cm.__enter__()
            return cm
        # Timed attempts of at most one slice each, so a Ctrl-C is seen between two
        # requests (a remote lock wait cannot be cut short half-way).
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            self._check_interrupt()
            left = TERMINAL_WAIT_SLICE_S
            if deadline is not None:
                left = min(left, max(0.0, deadline - time.monotonic()))
            cm = g.lock(dbsubs, timeout=left, shared=shared)
            try:
                cm.__enter__()
                return cm
            except errors.LockTimeoutError:
                if deadline is not None and time.monotonic() >= deadline:
                    raise

    def _release_all(self) -> None:
        locks, self._locks = self._locks, {}
        for key, held in locks.items():
            for cm in reversed(held):
                with contextlib.suppress(errors.IrisrepError, OSError, TerminalError):
                    self._unlock(key[0], cm)

    def _cmd_halt(self, args: None) -> None:
        raise _Halt

    def _cmd_hang(self, args: list) -> None:
        for expr in args:
            seconds = min(float(_num(self._eval(expr))), _WAIT_MAX_S)
            if seconds <= 0:
                continue
            if not self.interruptible:
                self._sleep(seconds)
                continue
            while seconds > 0:  # counted, not timed: tests pass a sleep that returns at once
                self._check_interrupt()
                step = min(seconds, TERMINAL_WAIT_SLICE_S)
                self._sleep(step)
                seconds -= step
            self._check_interrupt()

    # references
    def _resolve(
        self, ref: Ref, *, empty_last: bool = False
    ) -> tuple[bool, str, tuple, str | None]:
        """(is global, name, subscripts, namespace of an extended reference or None);
        the namespace is evaluated first, then the subscripts left to right."""
        env = None if ref.env is None else _str(self._eval(ref.env))
        values = [self._eval(e) for e in ref.subs]
        subs = tuple(
            _sub(v, empty_ok=empty_last and i == len(values) - 1) for i, v in enumerate(values)
        )
        return ref.is_global, ref.name, subs, env

    def _fetch(self, ref: Ref, default: Any = _MISSING) -> Any:
        is_global, name, subs, env = self._resolve(ref)
        ns = None
        if is_global:
            with self.ns.globals(env) as (ns, globals_):
                v = globals_[name].get(tuple(_sub_to_db(s) for s in subs), _MISSING)
            v = _MISSING if v is _MISSING else _from_db(v)
        else:
            v = self.locals.get(name, {}).get(subs, _MISSING)
        if v is _MISSING:
            if default is not _MISSING:
                return default
            raise TerminalError("UNDEFINED", "*" + _ref_text(is_global, name, subs, ns))
        return v

    def _store(self, ref: Ref, value: Value) -> None:
        is_global, name, subs, env = self._resolve(ref)
        if is_global:
            with self.ns.globals(env) as (_ns, globals_):
                globals_[name][tuple(_sub_to_db(s) for s in subs)] = _to_db(value)
        else:
            self.locals.setdefault(name, {})[subs] = value

    def _local_kill(self, name: str, subs: tuple, *, tree: bool) -> None:
        nodes = self.locals.get(name)
        if not nodes:
            return
        if tree:
            for k in [k for k in nodes if k[: len(subs)] == subs]:
                del nodes[k]
        else:
            nodes.pop(subs, None)
        if not nodes:
            del self.locals[name]

    # expressions
    def _eval(self, node: Any) -> Value:
        if isinstance(node, Num):
            return node.value
        if isinstance(node, Str):
            return node.value
        if isinstance(node, Ref):
            return self._fetch(node)
        if isinstance(node, Binary):
            return self._binary(node.op, self._eval(node.left), self._eval(node.right))
        if isinstance(node, Unary):
            v = self._eval(node.operand)
            if node.op == "-":
                return -_num(v) + 0
            if node.op == "+":
                return +_num(v)
            return _bool(not _truth(v))
        if isinstance(node, Func):
            return getattr(self, "_fn_" + node.name.lower())(node)
        if isinstance(node, SpecialVar):
            if node.name == "TEST":
                return Decimal(self.test)
            if node.name == "NAMESPACE":
                return self.ns.current
            return Decimal(self.target.tlevel)
        raise AssertionError(f"unknown node {node!r}")

    def _binary(self, op: str, a: Value, b: Value) -> Value:
        if op == "_":
            return _check_len(_str(a) + _str(b))
        if op in ("=", "'="):
            return _bool((_str(a) == _str(b)) == (op == "="))
        if op in ("[", "'["):
            return _bool((_str(b) in _str(a)) == (op == "["))
        if op in ("]", "']"):
            return _bool((_str(a) > _str(b)) == (op == "]"))
        if op == "]]":
            return _bool(_sub(a, empty_ok=True) > _sub(b, empty_ok=True))
        if op == "&":
            return _bool(_truth(a) and _truth(b))
        if op == "!":
            return _bool(_truth(a) or _truth(b))
        x, y = _num(a), _num(b)
        if op == "+":
            return x + y
        if op == "-":
            return x - y
        if op == "*":
            return x * y
        if op == "**":
            if x.is_zero() and y < 0:
                raise TerminalError("DIVIDE", "0 to a negative power")
            return x**y
        if op in ("<", "'>"):
            return _bool(x < y if op == "<" else not x > y)
        if op in (">", "'<"):
            return _bool(x > y if op == ">" else not x < y)
        if op == "<=":
            return _bool(x <= y)
        if op == ">=":
            return _bool(x >= y)
        if y.is_zero():
            raise TerminalError("DIVIDE", f"{_fmt(x)}{op}0")
        if op == "/":
            return x / y
        if op == "\\":
            return (x // y) + 0
        # "#": modulo, the result takes the sign of the divisor (IRIS)
        r = x % y
        if not r.is_zero() and (r < 0) != (y < 0):
            r += y
        return r + 0

    # functions
    def _fn_get(self, f: Func) -> Value:
        default = self._eval(f.args[1]) if len(f.args) > 1 else ""
        return self._fetch(f.args[0], default)

    def _fn_data(self, f: Func) -> Value:
        is_global, name, subs, env = self._resolve(f.args[0])
        if is_global:
            with self.ns.globals(env) as (_ns, globals_):
                return Decimal(globals_[name].data(tuple(_sub_to_db(s) for s in subs)))
        nodes = self.locals.get(name, {})
        n = len(subs)
        has_value = subs in nodes
        has_desc = any(len(k) > n and k[:n] == subs for k in nodes)
        return Decimal((1 if has_value else 0) + (10 if has_desc else 0))

    def _direction(self, f: Func) -> bool:
        """True for reverse ($ORDER/$QUERY direction -1)."""
        if len(f.args) < 2:
            return False
        d = _num(self._eval(f.args[1]))
        if d not in (1, -1):
            raise TerminalError("FUNCTION", f"direction {_fmt(d)} (1 or -1 allowed)")
        return d == -1

    def _fn_order(self, f: Func) -> Value:
        ref = f.args[0]
        if not ref.subs:
            raise TerminalError("FUNCTION", "$ORDER needs a subscripted reference")
        is_global, name, subs, env = self._resolve(ref, empty_last=True)
        reverse = self._direction(f)
        if is_global:
            dbsubs = tuple(_sub_to_db(s) for s in subs)
            with self.ns.globals(env) as (_ns, globals_):
                nxt = globals_[name].order(dbsubs, reverse=reverse)
            return "" if nxt is None else _sub_value(_sub_from_db(nxt))
        parent, last = subs[:-1], subs[-1]
        n = len(parent)
        candidates = {k[n] for k in self.locals.get(name, {}) if len(k) > n and k[:n] == parent}
        if last != (1, ""):
            candidates = {c for c in candidates if (c < last if reverse else c > last)}
        if not candidates:
            return ""
        return _sub_value(max(candidates) if reverse else min(candidates))

    def _fn_query(self, f: Func) -> Value:
        """$QUERY: the next (previous) subscripted node with a value, as a reference.

        A last subscript of "" starts, as in $ORDER, before the parent's first
        descendant (forward: the same as the parent) or after its last one (reverse).
        The unsubscripted node is never returned (M standard): a reverse scan ends
        with "" there, as a forward one ends after the last node.
        """
        is_global, name, subs, env = self._resolve(f.args[0], empty_last=True)
        reverse = self._direction(f)
        to_end = bool(subs) and subs[-1] == (1, "")
        if to_end:
            subs = subs[:-1]
        if is_global:
            dbsubs = tuple(_sub_to_db(s) for s in subs)
            with self.ns.globals(env) as (ns, globals_):
                g = globals_[name]
                found = None
                if reverse and to_end:
                    items = g.items(prefix=dbsubs, reverse=True, batch=1)
                    found = next((k for k, _v in items), None)
                if found is None:
                    found = g.query(dbsubs, reverse=reverse)
            if not found:  # None, or () the unsubscripted node
                return ""
            # An extended reference gives an extended one, so that it names the node.
            return _ref_text(True, name, tuple(_sub_from_db(s) for s in found), ns)
        n = len(subs)
        keys = sorted(self.locals.get(name, {}))
        if reverse:
            hits = [k for k in keys if k < subs or (to_end and k[:n] == subs)]
        else:
            hits = [k for k in keys if k > subs]
        hits = [k for k in hits if k]
        if not hits:
            return ""
        return _ref_text(False, name, hits[-1] if reverse else hits[0])

    def _fn_increment(self, f: Func) -> Value:
        by = _num(self._eval(f.args[1])) if len(f.args) > 1 else _ONE
        is_global, name, subs, env = self._resolve(f.args[0])
        if is_global:
            step = _to_db(by)
            with self.ns.globals(env) as (_ns, globals_):
                new = globals_[name].increment(tuple(_sub_to_db(s) for s in subs), step)
            return _from_db(new)
        nodes = self.locals.setdefault(name, {})
        new = _num(nodes.get(subs, _ZERO)) + by
        nodes[subs] = new
        return new

    def _fn_length(self, f: Func) -> Value:
        s = _str(self._eval(f.args[0]))
        if len(f.args) == 1:
            return Decimal(len(s))
        d = _str(self._eval(f.args[1]))
        return Decimal(s.count(d) + 1 if d else 0)

    def _fn_extract(self, f: Func) -> Value:
        s = _str(self._eval(f.args[0]))
        start = _int(self._eval(f.args[1])) if len(f.args) > 1 else 1
        end = _int(self._eval(f.args[2])) if len(f.args) > 2 else start
        start = max(start, 1)
        if end < start:
            return ""
        return s[start - 1 : end]

    def _fn_piece(self, f: Func) -> Value:
        s = _str(self._eval(f.args[0]))
        d = _str(self._eval(f.args[1]))
        start = _int(self._eval(f.args[2])) if len(f.args) > 2 else 1
        end = _int(self._eval(f.args[3])) if len(f.args) > 3 else start
        if not d:
            return ""
        start = max(start, 1)
        if end < start:
            return ""
        return d.join(s.split(d)[start - 1 : end])

    def _fn_char(self, f: Func) -> Value:
        out = []
        for a in f.args:
            n = _int(self._eval(a))
            if 0 <= n <= 0x10FFFF and not 0xD800 <= n <= 0xDFFF:
                out.append(chr(n))
        return "".join(out)

    def _fn_ascii(self, f: Func) -> Value:
        s = _str(self._eval(f.args[0]))
        i = _int(self._eval(f.args[1])) if len(f.args) > 1 else 1
        return Decimal(ord(s[i - 1]) if 1 <= i <= len(s) else -1)


# --- running a session: -c text, piped lines, the interactive terminal -----------------


def _finish_line(session: Session, out: TextIO) -> None:
    """End a partial output line (before a prompt, an error or the exit), as IRIS does."""
    if session.column:
        out.write("\n")
        session.column = 0


def _run_lines(
    session: Session, lines: Iterable[str], out: TextIO, err: TextIO, *, end_lines: bool
) -> int:
    """Run lines until the first error (printed to err: 1), the end or Halt (0).
    end_lines: end a partial output line after each input line (as before a prompt)."""
    for line in lines:
        try:
            session.execute(line)
        except TerminalError as exc:
            _finish_line(session, out)
            out.flush()  # the output before the error comes first on a shared terminal
            err.write(f"{exc}\n")
            err.flush()
            if isinstance(exc, ConnectionLostError):
                raise
            return 1
        if end_lines:
            _finish_line(session, out)
        out.flush()
        if session.halted:
            break
    return 0


def _run_closing(
    target: Any,
    lines: Iterable[str],
    out: TextIO,
    err: TextIO,
    *,
    end_lines: bool = False,
    name: str = DEFAULT_DATABASE,
) -> int:
    session = Session(target, out=out, name=name)
    lost = False
    try:
        return _run_lines(session, lines, out, err, end_lines=end_lines)
    except ConnectionLostError:
        lost = True
        return 1
    finally:
        _finish_line(session, out)
        if not lost:
            session.close()


def run_commands(
    target: Any,
    text: str,
    *,
    out: TextIO = sys.stdout,
    err: TextIO = sys.stderr,
    name: str = DEFAULT_DATABASE,
) -> int:
    """Run each line of `text`; on an error print "<WORD> detail" to err and return 1.

    Returns 0 when every line ran (or a Halt ended the session). The session is
    closed either way (its locks released, an open transaction rolled back), except
    after a lost connection, where the member did that already. `name` is the
    target's own database: the session's first namespace ($Namespace).
    """
    return _run_closing(target, text.splitlines(), out, err, name=name)


def run_stream(
    target: Any,
    stdin: TextIO,
    *,
    out: TextIO = sys.stdout,
    err: TextIO = sys.stderr,
    name: str = DEFAULT_DATABASE,
) -> int:
    """`run_commands` on lines read from stdin one at a time, as they come.

    For `echo 'Write 1' | irisrep session A` and scripts: no prompt; each line's
    output ends with a newline and is flushed (a program feeding lines reads each
    answer as a line, as it would see it before a prompt), the first error
    printed to err ends the session with status 1, so the rest of a script does
    not run after a failed step.
    """
    lines = (line.rstrip("\r\n") for line in iter(stdin.readline, ""))
    return _run_closing(target, lines, out, err, end_lines=True, name=name)


def prompt(target: Any, name: str = DEFAULT_DATABASE) -> str:
    """The IRIS-style prompt: the current namespace (`DB>`, `REPORT>`), with the
    transaction level inside one (`TL1:REPORT>`)."""
    level = target.tlevel
    return f"TL{level}:{name}>" if level else f"{name}>"


class _History:
    """The readline history file: read at start; at exit this session's new lines are
    appended (two sessions at once both keep theirs) and the file is cut to its
    newest TERMINAL_HISTORY_LINES_MAX lines. Created 0600: lines may hold values."""

    def __init__(self, readline: Any, path: Path, err: TextIO) -> None:
        self.readline = readline
        self.path = path
        self.err = err
        try:
            with contextlib.suppress(FileNotFoundError):  # no history yet: the first session
                readline.read_history_file(str(path))
        except OSError as exc:
            err.write(f"history not read: {path}: {exc.strerror or exc}\n")
        self.start = readline.get_current_history_length()

    def save(self) -> None:
        new = self.readline.get_current_history_length() - self.start
        if new <= 0:
            return
        try:
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600))
            self.readline.append_history_file(new, str(self.path))
            lines = self.path.read_bytes().splitlines(keepends=True)
            if len(lines) > TERMINAL_HISTORY_LINES_MAX:
                tmp = self.path.with_name(self.path.name + ".new")
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "wb") as f:
                    f.writelines(lines[-TERMINAL_HISTORY_LINES_MAX:])
                os.replace(tmp, self.path)
        except OSError as exc:
            self.err.write(f"history not saved: {self.path}: {exc.strerror or exc}\n")


def _use_readline(history_file: Path | None, err: TextIO) -> _History | None:
    """Line editing for input() (importing readline is what turns it on)."""
    try:
        import readline
    except ImportError:  # a Python built without it: plain input() still works
        return None
    # Tab inserts a tab (a space to ObjectScript) rather than completing file names.
    if "libedit" in (readline.__doc__ or ""):
        readline.parse_and_bind("bind ^I ed-insert")
    else:
        readline.parse_and_bind("tab: tab-insert")
    return _History(readline, history_file, err) if history_file is not None else None


def interact(
    target: Any,
    *,
    name: str = DEFAULT_DATABASE,
    history_file: str | os.PathLike | None = None,
    out: TextIO = sys.stdout,
    err: TextIO = sys.stderr,
    read: Callable[[str], str] | None = None,
) -> int:
    """The interactive terminal: prompt (`DB>`, `TL1:DB>`, `REPORT>` after ZNspace
    "REPORT"), one line at a time; `name` is the target's own database.

    `read(prompt)` returns a line (None: the builtin input() with readline editing,
    and `history_file` loaded now and saved at the end). An error is printed to err
    as `<WORD> detail` and the session goes on. Ctrl-C at the prompt drops the line;
    during a command it stops the line with <INTERRUPT>. Ctrl-D (EOF) or Halt end
    the session (closed: locks released, a transaction rolled back) with status 0;
    a lost connection prints one line and returns 1.
    """
    history = None
    if read is None:
        history = _use_readline(None if history_file is None else Path(history_file), err)
        read = input
    session = Session(target, out=out, interruptible=True, name=name)
    lost = False
    try:
        while not session.halted:
            try:
                text = read(prompt(target, session.namespace))
            except KeyboardInterrupt:
                out.write("\n")  # the typed line is dropped; a fresh prompt
                continue
            except EOFError:
                out.write("\n")
                break
            # A pasted block (bracketed paste) arrives as one text: its lines run in
            # turn, until an error ends it as Ctrl-C does.
            with _ctrl_c_interrupts(session):
                for i, line in enumerate(text.splitlines() or [""]):
                    if i and session.interrupted:  # Ctrl-C between two pasted lines
                        break
                    ok = _interactive_line(session, line, out, err)
                    if ok is None:
                        lost = True
                        return 1
                    if not ok or session.halted or session.interrupted:
                        break
        return 0
    finally:
        out.flush()
        if history is not None:
            history.save()
        if not lost:
            session.close()


@contextlib.contextmanager
def _ctrl_c_interrupts(session: Session):
    """While lines run, Ctrl-C asks the session to stop (Session.interrupt) instead of
    raising KeyboardInterrupt wherever the program happens to be: half-way through
    a request, a client connection would read the wrong reply next."""
    previous = signal.getsignal(signal.SIGINT)
    if threading.current_thread() is not threading.main_thread() or previous is None:
        yield  # only the main thread sets handlers; None: one not set from Python
        return
    signal.signal(signal.SIGINT, lambda _sig, _frame: session.interrupt())
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _interactive_line(session: Session, line: str, out: TextIO, err: TextIO) -> bool | None:
    """Run one typed line and print its error: True, False after an error, None when
    the connection is lost (printed as one line)."""
    try:
        session.execute(line)
    except TerminalError as exc:
        _finish_line(session, out)
        out.flush()
        if isinstance(exc, ConnectionLostError):
            err.write(f"{exc}; the session ends\n")
            err.flush()
            return None
        err.write(f"{exc}\n")
        err.flush()
        return False
    _finish_line(session, out)
    return True


def run_session(
    target: Any,
    *,
    commands: str | None = None,
    name: str = DEFAULT_DATABASE,
    history_file: str | os.PathLike | None = None,
    stdin: TextIO | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """`irisrep session`: `commands` (-c) if given, else the interactive terminal when
    stdin is a terminal, else the lines of stdin. The exit status."""
    stdin = stdin if stdin is not None else sys.stdin
    out = out if out is not None else sys.stdout
    err = err if err is not None else sys.stderr
    if commands is not None:
        return run_commands(target, commands, out=out, err=err, name=name)
    if stdin.isatty():
        return interact(target, name=name, history_file=history_file, out=out, err=err)
    return run_stream(target, stdin, out=out, err=err, name=name)
