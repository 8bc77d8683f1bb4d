"""The ObjectScript-subset terminal (irisrep.terminal) against a real local database."""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, given, settings

import irisrep
from irisrep.terminal import (
    ConnectionLostError,
    Session,
    TerminalError,
    interact,
    parse,
    prompt,
    run_commands,
    run_session,
    run_stream,
)


@pytest.fixture
def db(tmp_path):
    d = irisrep.open(tmp_path / "db")
    yield d
    d.close()


@pytest.fixture
def sess(db):
    s = Session(db, out=io.StringIO(), sleep=lambda _s: None)
    yield s
    s.close()


def out(s: Session, line: str) -> str:
    """Run one line and return what it wrote."""
    buf = s.out
    start = len(buf.getvalue())
    s.execute(line)
    return buf.getvalue()[start:]


def err(s: Session, line: str) -> TerminalError:
    with pytest.raises(TerminalError) as info:
        s.execute(line)
    return info.value


# --- Set, Write, expressions -------------------------------------------------------------


def test_set_globals_and_write(sess, db):
    assert out(sess, 'Set ^x=1,^y(1,"a")=^x+1 Write ^x,!,^y(1,"a")') == "1\n2"
    assert db.globals["x"][()] == 1
    assert db.globals["y"][1, "a"] == 2


def test_set_locals_and_multiple_targets(sess, db):
    assert out(sess, "s a=1,b(2)=a+1 w a,b(2)") == "12"
    assert out(sess, "S (c,^m(1))=7 W c,^m(1)") == "77"
    assert db.globals["m"][1] == 7


@pytest.mark.parametrize(
    "expr, shown",
    [
        ("2+3*4", "20"),  # strictly left to right
        ("2+(3*4)", "14"),
        ('1+"2abc"', "3"),
        ('"1.50"+0', "1.5"),
        ("1/3", ".3333333333333333333"),
        ("2/3", ".6666666666666666667"),
        ("1/2", ".5"),
        ("-1/2", "-.5"),
        ("1.0", "1"),
        ("0.50", ".5"),
        ("1E3", "1000"),
        ("7\\2", "3"),
        ("-7\\2", "-3"),
        ("-7#3", "2"),
        ("7#-3", "-2"),
        ("2**10", "1024"),
        ("--1", "1"),
        ('+"3x"', "3"),
        ("-0", "0"),
        ('"a""b"', 'a"b'),
        ('"ab"_"cd"_1', "abcd1"),
        ("1_2+1", "13"),
        ("1=1.0", "1"),
        ('"1"=1', "1"),
        ('"01"=1', "0"),
        ("2'=2", "0"),
        ("1<2", "1"),
        ("2>3", "0"),
        ("'0", "1"),
        ("1&0", "0"),
        ("1!0", "1"),
        ('"abc"["b"', "1"),
        ('$L("abc")', "3"),
        ('$E("abc",2)', "b"),
        ('$P("a,b,c",",",3)', "c"),
        ("$C(72,105)", "Hi"),
        ('$A("A")', "65"),
    ],
)
def test_expressions(sess, expr, shown):
    assert out(sess, "Write " + expr) == shown


def test_write_formats_and_several_commands(sess):
    assert out(sess, 'W "a",!,"b"  W !!,"c" W ?3,"d"') == "a\nb\n\nc  d"  # ?3: to column 3 (from 0)


def test_case_insensitive_and_abbreviations(sess, db):
    out(sess, "SET ^c=1  set ^c(1)=2 S ^c(2)=3 s ^c(3)=4")
    assert out(sess, "wRiTe ^c,^c(1) W ^c(2) w ^c(3)") == "1234"


def test_postconditional(sess):
    assert out(sess, 'S a=0 W:a "no" W:\'a "yes"') == "yes"


# --- Kill, ZKill, ZWrite ------------------------------------------------------------------


def test_kill_and_zkill(sess, db):
    g = db.globals["k"]
    out(sess, "S ^k=0,^k(1)=1,^k(1,2)=12,^k(2)=2")
    out(sess, "ZK ^k(1)")
    assert g.data((1,)) == 10
    out(sess, "K ^k(1)")
    assert g.data((1,)) == 0 and g[2] == 2
    out(sess, "Kill ^k")
    assert g.data(()) == 0
    out(sess, "S a=1,b(1)=2 K a")
    assert out(sess, "W $D(a),$D(b)") == "010"
    out(sess, "K")
    assert out(sess, "W $D(b)") == "0"


def test_zwrite_format(sess):
    out(sess, 'S ^z=0,^z(1)="a"_$C(10)_"b",^z(1,"x")="q""r",^z(2)="",^z(3)=1.5')
    out(sess, 'S ^z("s")="1.50",^z("n")="12",^z(-1)=-.25')
    assert out(sess, "ZWrite ^z") == (
        "^z=0\n"
        "^z(-1)=-.25\n"
        '^z(1)="a"_$c(10)_"b"\n'
        '^z(1,"x")="q""r"\n'
        '^z(2)=""\n'
        "^z(3)=1.5\n"
        '^z("n")=12\n'
        '^z("s")="1.50"\n'
    )
    assert out(sess, "ZW ^z(1)") == '^z(1)="a"_$c(10)_"b"\n^z(1,"x")="q""r"\n'
    assert out(sess, "ZW ^empty") == ""


def test_zwrite_locals(sess):
    out(sess, 'S b(1,"x")=2,a=1,c="q"')
    assert out(sess, "ZW") == 'a=1\nb(1,"x")=2\nc="q"\n'
    assert out(sess, "ZW b") == 'b(1,"x")=2\n'


# --- functions and special variables -----------------------------------------------------


def test_get_data_increment(sess, db):
    out(sess, "S ^d(1)=1,^d(2,1)=3")
    assert out(sess, 'W $G(^d(1)),$G(^none),$G(^none,"dflt"),$G(x,5)') == "1dflt5"
    assert out(sess, "W $D(^d),$D(^d(1)),$D(^d(2)),$D(^d(3))") == "101100"
    assert out(sess, "W $I(^n),$I(^n,5),$Increment(^n,-1),$I(v),$I(v,2)") == "16513"
    assert db.globals["n"][()] == 5


def test_order_both_directions(sess):
    out(sess, 'S ^o(1)=1,^o(2)=2,^o("b")=3,^o(2,"x")=4')
    assert out(sess, 'W $O(^o(""))') == "1"
    assert out(sess, "W $O(^o(1))") == "2"
    assert out(sess, "W $O(^o(2))") == "b"
    assert out(sess, 'W $O(^o("b"))') == ""
    assert out(sess, 'W $O(^o(""),-1)') == "b"
    assert out(sess, 'W $Order(^o("b"),-1)') == "2"
    assert out(sess, "W $O(^o(1),-1)") == ""
    assert out(sess, 'W $O(^o(2,""))') == "x"
    out(sess, 'S l(1)=1,l(5)=5,l("a")=0')
    assert out(sess, 'W $O(l("")),$O(l(1)),$O(l(5)),$O(l(""),-1),$O(l(5),-1)') == "15aa1"
    assert err(sess, 'W $O(^o(""),2)').word == "FUNCTION"


def test_query(sess):
    out(sess, 'S ^q(1)=1,^q(1,"a")=2,^q(2)=3')
    assert out(sess, "W $Q(^q)") == "^q(1)"
    assert out(sess, "W $Q(^q(1))") == '^q(1,"a")'
    assert out(sess, 'W $Query(^q(1,"a"))') == "^q(2)"
    assert out(sess, "W $Q(^q(2))") == ""
    out(sess, "S v(1)=1,v(2,3)=2")
    assert out(sess, "W $Q(v(1))") == "v(2,3)"


def test_special_variables(sess, db):
    assert out(sess, "W $TLevel TS  W $TL TS  W $TL TC  TC  W $TL") == "0120"


# --- transactions --------------------------------------------------------------------------


def test_trollback_undoes(sess, db):
    out(sess, "S ^t=0")
    out(sess, "TStart  S ^t=1,^t(1)=1 TRollback  W $TL")
    assert db.globals["t"][()] == 0 and db.globals["t"].data((1,)) == 0
    out(sess, "TS  S ^t=1 TS  S ^t=2 TRO 1 W $TL,^t TC")
    assert db.globals["t"][()] == 1 and db.tlevel == 0
    out(sess, "TS S ^t=3 TC")  # one space is enough after TS and TC
    assert db.globals["t"][()] == 3


def test_trollback_at_level_0_is_a_no_op(sess):
    out(sess, "TRO  TRO 1")
    assert err(sess, "TRO 0").word == "COMMAND"


def test_close_rolls_back_an_open_transaction(db):
    rc = run_commands(db, "TS  S ^open=1", out=io.StringIO(), err=io.StringIO())
    assert rc == 0 and db.globals["open"].data(()) == 0 and db.tlevel == 0


# --- locks ---------------------------------------------------------------------------------


def test_lock_sets_test(sess, db):
    assert out(sess, "L +^l(1):0 W $T") == "1"
    assert db.locks.snapshot()  # held by this thread
    out(sess, "L -^l(1)")
    assert out(sess, "L ^l:1 W $T L  W $T") == "11"
    assert not [e for e in db.locks.snapshot() if e]


def test_lock_timeout_sets_test_0(sess, db):
    import threading

    got, release = threading.Event(), threading.Event()

    def holder():
        with db.globals["busy"].lock((1,), timeout=1):
            got.set()
            release.wait(5)

    t = threading.Thread(target=holder)
    t.start()
    try:
        assert got.wait(5)
        assert out(sess, "L +^busy(1):0 W $T L +^busy(2):0 W $T") == "01"
        assert out(sess, 'L +^busy:.1 W $T L +^busy(3)#"S":0 W $T') == "01"
    finally:
        release.set()
        t.join()
    assert out(sess, "L +^busy(1):1 W $T") == "1"


# --- Halt and Hang ---------------------------------------------------------------------------


def test_halt_stops_the_session(db):
    o, e = io.StringIO(), io.StringIO()
    assert run_commands(db, 'W "a" H  W "b"\nW "c"', out=o, err=e) == 0
    assert o.getvalue() == "a\n" and e.getvalue() == ""


def test_hang(db):
    slept = []
    s = Session(db, out=io.StringIO(), sleep=slept.append)
    s.execute("H 1.5 W 1")
    assert slept == [1.5] and not s.halted


# --- errors ----------------------------------------------------------------------------------


def test_protect_changes_nothing(sess, db):
    out(sess, "S ^p=1")
    db.set_protect(True)
    e = err(sess, "S ^p=2")
    assert e.word == "PROTECT" and str(e).startswith("<PROTECT>")
    for line in ("K ^p", "ZK ^p", "W $I(^p)", "TS"):
        assert err(sess, line).word == "PROTECT"
    assert out(sess, "W ^p") == "1"  # reads still work
    db.set_protect(False)
    assert db.globals["p"][()] == 1


def test_run_commands_reports_protect(db):
    db.set_protect(True)
    o, e = io.StringIO(), io.StringIO()
    assert run_commands(db, "W 1 S ^x=1 W 2", out=o, err=e) == 1
    assert o.getvalue() == "1\n" and e.getvalue().startswith("<PROTECT> ")
    assert "Traceback" not in e.getvalue()


@pytest.mark.parametrize(
    "line, word, detail",
    [
        ("W ^nope(1)", "UNDEFINED", "*^nope(1)"),
        ("W nope", "UNDEFINED", "*nope"),
        ('S ^x(1,"")=1', "SUBSCRIPT", ""),
        ("W 1/0", "DIVIDE", ""),
        ("W 1\\0", "DIVIDE", ""),
        ("W 1#0", "DIVIDE", ""),
        ("W 1E999", "MAXNUMBER", ""),
        ("FOO 1", "COMMAND", "FOO"),
        ("TC", "COMMAND", ""),
        ("W $ZZ(1)", "FUNCTION", ""),
        ("W 1+", "SYNTAX", ""),
        ('W "abc', "SYNTAX", "unterminated"),
        ("S x", "SYNTAX", ""),
        ("S", "SYNTAX", ""),
        ("W (1", "SYNTAX", ""),
        ("W 1 2", "SYNTAX", "expected a command"),
        ("W 1,", "SYNTAX", ""),
        ("W @x", "SYNTAX", ""),
        ("W $$f()", "SYNTAX", ""),
        ("S ^=1", "SYNTAX", ""),
        ("HALT 1", "SYNTAX", ""),
        ("W" + "(" * 200 + "1" + ")" * 200, "SYNTAX", ""),
        ("{", "SYNTAX", ""),
    ],
)
def test_error_words(sess, line, word, detail):
    e = err(sess, line)
    assert e.word == word, str(e)
    assert detail in e.message
    assert str(e).startswith(f"<{word}>")


def test_maxstring(sess):
    out(sess, 'S a="' + "x" * 1000 + '"')
    with pytest.raises(TerminalError) as info:
        for _ in range(13):  # 1000 * 2**12 > 3,641,144
            sess.execute("S a=a_a")
    assert info.value.word == "MAXSTRING"


def test_syntax_error_runs_nothing(sess, db):
    assert err(sess, "S ^s=1 W 1+").word == "SYNTAX"
    assert db.globals["s"].data(()) == 0


def test_error_stops_the_rest_of_the_line(sess, db):
    assert err(sess, "S ^r=1 W ^nope S ^r=2").word == "UNDEFINED"
    assert db.globals["r"][()] == 1


def test_comments_and_spacing(sess):
    assert out(sess, " W 1 ; a comment") == "1"
    assert out(sess, "W 2 // another") == "2"
    assert out(sess, "; only a comment") == ""
    assert out(sess, "") == ""
    assert parse("TS  TC")[1].name == "TCOMMIT"


def test_other_irisrep_errors_get_their_word(sess, db):
    db.close()
    e = err(sess, "W ^x")
    assert e.word == "ERROR"


# --- garbage in: only TerminalError out --------------------------------------------------------

_FRAGMENTS = [
    "S ", "W ", "K ", "ZK ", "ZW ", "TS ", "TC ", "TRO ", "L ", "H ", "$G(", "$D(", "$O(",
    "$Q(", "$I(", "$L(", "$E(", "$P(", "$C(", "$A(", "$T", "$TL", "^x", "^y(", "a", "b(",
    "(", ")", ",", '"', '""', "1", "0", "-1", ".5", "1E5", "1E200", "+", "-", "*", "/",
    "\\", "#", "**", "_", "=", "'=", "<", ">", "'", "!", "?", "[", "]", "@", ":", " ",
    "  ", ";", "//", '"a"', "^x(1)", "x", "E", "\t", "\x00", "^%", "^a.b", '#"S"', ":0",
]  # fmt: skip
_GARBAGE = st.one_of(
    st.text(max_size=40), st.lists(st.sampled_from(_FRAGMENTS), max_size=25).map("".join)
)
_FUZZ_DB = None


def _fuzz_db():
    global _FUZZ_DB
    if _FUZZ_DB is None:
        _FUZZ_DB = irisrep.open(Path(tempfile.mkdtemp(prefix="irisrep-terminal-")) / "db")
    return _FUZZ_DB


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(_GARBAGE, min_size=1, max_size=3))
def test_garbage_only_raises_terminal_error(lines):
    s = Session(_fuzz_db(), out=io.StringIO(), sleep=lambda _s: None)
    try:
        for line in lines:
            try:
                s.execute(line)
            except TerminalError as e:
                assert e.word and str(e).startswith("<")
    finally:
        s.close()
    assert _fuzz_db().tlevel == 0


# --- more of the subset: $Query with "" and -1, W *n, subscripts in ZWrite ---------------


def test_query_reverse_and_empty_last_subscript(sess):
    out(sess, 'S ^qr=0,^qr(1)=1,^qr(1,"a")=2,^qr(2)=3,^qr(2,5)=4')
    assert out(sess, 'W $Q(^qr(""))') == "^qr(1)"  # "" as in $ORDER: from the start
    assert out(sess, 'W $Q(^qr(""),-1)') == "^qr(2,5)"  # from past the end
    assert out(sess, 'W $Q(^qr(1,""),-1)') == '^qr(1,"a")'  # past ^qr(1)'s last descendant
    assert out(sess, "W $Q(^qr(2,5),-1)") == "^qr(2)"
    assert out(sess, "W $Q(^qr(2),-1)") == '^qr(1,"a")'
    assert out(sess, 'W $Q(^qr(1,"a"),-1)') == "^qr(1)"
    assert out(sess, "W $Q(^qr(1),-1)") == ""  # never the unsubscripted ^qr
    assert out(sess, "W $Q(^qr,-1)") == ""
    assert out(sess, "W $Q(^qr(2,5))") == ""
    out(sess, 'S v=0,v(1)=1,v(1,"a")=2,v(2)=3')
    assert out(sess, 'W $Q(v("")),",",$Q(v(""),-1),",",$Q(v(1,""),-1)') == 'v(1),v(2),v(1,"a")'
    assert out(sess, "W $Q(v(2),-1),$Q(v(1),-1),$Q(v,-1)") == 'v(1,"a")'
    assert out(sess, "W $Q(v),$Q(v(2))") == "v(1)"
    assert err(sess, 'W $Q(^qr("",1))').word == "SUBSCRIPT"  # only the last may be ""


def test_query_walks_the_whole_array_both_ways(sess):
    out(sess, 'S ^w(1)=1,^w(1,2)=2,^w(1,2,3)=3,^w("b")=4,^w("b","c")=5')
    nodes = ["^w(1)", "^w(1,2)", "^w(1,2,3)", '^w("b")', '^w("b","c")']

    def walk(start: str, direction: int) -> list[str]:
        found, ref = [], start
        while True:
            ref = out(sess, f"W $Q({ref},{direction})")
            if not ref:
                return found
            found.append(ref)

    assert walk("^w", 1) == nodes
    assert walk('^w("")', -1) == nodes[::-1]


def test_write_star_and_zwrite_string_subscripts(sess):
    assert out(sess, 'W *72,*105,!,*-1,"x"') == "Hi\nx"
    out(sess, 'S ^zs("a"_$C(9)_"b")=1,^zs("q""")=2')
    assert out(sess, "ZW ^zs") == '^zs("a"_$c(9)_"b")=1\n^zs("q""")=2\n'
    assert out(sess, 'W $Q(^zs(""))') == '^zs("a"_$c(9)_"b")'


def test_several_sets_and_operators_in_one_line(sess):
    line = 'S a=1,b=2,(c,d)=3 W a+b*c,",",10\\3,",",10#3,",",2**3,",",10/4,",",a-b,",","x"_a'
    assert out(sess, line) == "9,3,1,8,2.5,-1,x1"
    assert out(sess, "W $I(a),$Increment(a,10),a") == "21212"


def test_lock_plus_minus_and_test(sess, db):
    assert out(sess, "L +^lt(1) L +^lt(1) L -^lt(1) W $T") == "1"
    assert db.locks.snapshot()  # still held once
    out(sess, "L -^lt(1)")
    assert not [e for e in db.locks.snapshot() if e]
    assert out(sess, "L +^lt(2):0 W $T L -^lt(2)") == "1"


# --- interrupts, lost connections -------------------------------------------------------------


def test_hang_is_interruptible(db):
    s = Session(db, out=io.StringIO(), interruptible=True)
    calls = []

    def sleep(seconds):
        calls.append(seconds)
        if len(calls) == 3:
            s.interrupt()  # Ctrl-C during the third slice

    s._sleep = sleep
    assert err(s, "H 100 W 1").word == "INTERRUPT"
    assert len(calls) == 3 and max(calls) <= 0.2
    assert out(s, "H .5 W 2") == "2"  # the next line runs: the flag is per line
    s.close()


def test_lock_wait_is_interruptible(db):
    import threading

    got, release = threading.Event(), threading.Event()

    def holder():
        with db.globals["held"].lock((), timeout=1):
            got.set()
            release.wait(10)

    t = threading.Thread(target=holder)
    t.start()
    s = Session(db, out=io.StringIO(), interruptible=True)
    try:
        assert got.wait(5)
        timer = threading.Timer(0.3, s.interrupt)
        timer.start()
        assert err(s, "L +^held").word == "INTERRUPT"  # no timeout: waits until Ctrl-C
        timer.join()
        assert out(s, "L +^held:.3 W $T") == "0"
    finally:
        release.set()
        t.join()
    assert out(s, "L +^held:2 W $T") == "1"
    s.close()


def test_interrupt_stops_the_line_between_commands(sess, db):
    sess._sleep = lambda _s: sess.interrupt()  # a Ctrl-C while `H 1` runs
    assert err(sess, "S ^ib=1 H 1 S ^ib=2").word == "INTERRUPT"
    assert db.globals["ib"][()] == 1


class _Broken:
    """A target whose connection broke: every global call raises ConnectionError."""

    tlevel = 1
    closed_with = None

    class _G:
        def get(self, *a, **k):
            raise ConnectionResetError("the connection to 127.0.0.1:1 broke")

        __setitem__ = get

    def __init__(self):
        self.globals = {"x": self._G()}

    def trollback(self, *a):
        self.closed_with = "trollback"


def test_lost_connection_ends_the_session_without_closing():
    t = _Broken()
    s = Session(t, out=io.StringIO())
    e = err(s, "W ^x")
    assert isinstance(e, ConnectionLostError) and e.word == "ERROR" and "broke" in e.message
    o, e2 = io.StringIO(), io.StringIO()
    assert run_commands(t, "W 1\nS ^x=1\nW 2", out=o, err=e2) == 1
    assert o.getvalue() == "1\n" and e2.getvalue().startswith("<ERROR> ")
    assert t.closed_with is None  # the member already rolled back; no reconnect to do it


# --- the runners: piped lines, the interactive loop -------------------------------------------


def test_run_stream_reads_line_by_line_and_stops_at_an_error(db):
    o, e = io.StringIO(), io.StringIO()
    assert run_stream(db, io.StringIO("W 1\r\nS ^rs=1 W ^rs\n"), out=o, err=e) == 0
    assert o.getvalue() == "1\n1\n" and e.getvalue() == ""
    o, e = io.StringIO(), io.StringIO()
    assert run_stream(db, io.StringIO("W 1\nW ^nope\nS ^rs=2\n"), out=o, err=e) == 1
    assert e.getvalue() == "<UNDEFINED> *^nope\n" and db.globals["rs"][()] == 1
    o = io.StringIO()
    assert run_stream(db, io.StringIO("TS  S ^rs=3 W $TL\n"), out=o, err=io.StringIO()) == 0
    assert o.getvalue() == "1\n" and db.globals["rs"][()] == 1 and db.tlevel == 0


class _Keys:
    """A scripted user for interact(): each item is a line, or an exception to raise."""

    def __init__(self, *items):
        self.items = list(items)
        self.prompts: list[str] = []

    def __call__(self, prompt: str) -> str:
        self.prompts.append(prompt)
        item = self.items.pop(0)
        if isinstance(item, BaseException):
            raise item
        return item


def test_interact_prompts_errors_and_ctrl_d(db):
    keys = _Keys(
        "W 1+1",
        "W ^nope(1)",
        "TS  S ^ia=1",
        "TS",
        "W $TL",
        "S x=1 W x",
        KeyboardInterrupt(),  # Ctrl-C at the prompt: the typed line is dropped
        "FOO",
        "TC  W 7\nW 8",  # a pasted block: two lines
        "L +^ial",
        EOFError(),  # Ctrl-D
    )
    o, e = io.StringIO(), io.StringIO()
    assert interact(db, out=o, err=e, read=keys) == 0
    assert keys.prompts == [
        "DB>", "DB>", "DB>", "TL1:DB>", "TL2:DB>", "TL2:DB>", "TL2:DB>", "TL2:DB>",
        "TL2:DB>", "TL1:DB>", "TL1:DB>",
    ]  # fmt: skip
    assert o.getvalue() == "2\n2\n1\n\n7\n8\n\n"
    assert e.getvalue() == ("<UNDEFINED> *^nope(1)\n<COMMAND> unknown command 'FOO' (column 1)\n")
    # Ctrl-D closed the session: the transaction rolled back, the lock released.
    assert db.tlevel == 0 and db.globals["ia"].data(()) == 0
    assert not [x for x in db.locks.snapshot() if x]


def test_interact_halt_and_lost_connection(db):
    keys = _Keys('W "a"', "H", "W 2")
    o = io.StringIO()
    assert interact(db, out=o, err=io.StringIO(), read=keys) == 0
    assert o.getvalue() == "a\n" and keys.items == ["W 2"]
    t = _Broken()
    e = io.StringIO()
    assert interact(t, out=io.StringIO(), err=e, read=_Keys("W ^x", "W 1")) == 1
    assert e.getvalue().count("\n") == 1 and e.getvalue().startswith("<ERROR> ")
    assert "the session ends" in e.getvalue() and t.closed_with is None


def test_prompt_and_run_session_dispatch(db):
    assert prompt(db) == "DB>" and prompt(db, "USER") == "USER>"
    db.tstart()
    assert prompt(db) == "TL1:DB>"
    db.trollback()
    o = io.StringIO()
    assert run_session(db, commands="W 5", out=o, err=io.StringIO()) == 0 and o.getvalue() == "5\n"
    o = io.StringIO()
    assert run_session(db, stdin=io.StringIO("W 6\n"), out=o, err=io.StringIO()) == 0
    assert o.getvalue() == "6\n"


def test_history_file_appends_and_is_cut(tmp_path, monkeypatch):
    import stat

    import irisrep.terminal as terminal

    readline = pytest.importorskip("readline")
    monkeypatch.setattr(terminal, "TERMINAL_HISTORY_LINES_MAX", 5)
    path = tmp_path / ".session_history"
    path.write_text("W 1\nW 2\nW 3\nW 4\n")
    readline.clear_history()
    try:
        h = terminal._History(readline, path, io.StringIO())
        assert readline.get_current_history_length() == 4
        for line in ("W 5", "W 6", "W 7"):
            readline.add_history(line)
        h.save()
        assert path.read_text().splitlines() == ["W 3", "W 4", "W 5", "W 6", "W 7"]
        readline.clear_history()
        missing = tmp_path / "new" / ".session_history"  # its directory is gone: a warning
        err_out = io.StringIO()
        h = terminal._History(readline, missing, err_out)
        readline.add_history("W 8")
        h.save()
        assert err_out.getvalue().startswith("history not saved: ")
        fresh = tmp_path / "fresh_history"
        h = terminal._History(readline, fresh, io.StringIO())
        readline.add_history("W 9")
        h.save()
        assert fresh.read_text().splitlines() == ["W 9"]
        assert stat.S_IMODE(fresh.stat().st_mode) == 0o600
    finally:
        readline.clear_history()


def test_cli_session_local(tmp_path):
    from click.testing import CliRunner

    from irisrep.cli import main

    path = str(tmp_path / "inst")
    r = CliRunner().invoke(main, ["session", "--local", path, "-c", "S ^c=41 W ^c+1"])
    assert r.exit_code == 0 and r.output == "42\n"
    r = CliRunner().invoke(main, ["session", "--local", path], input="W ^c\nW ^nope\n")
    assert r.exit_code == 1 and "41\n" in r.output and "<UNDEFINED> *^nope" in r.output
    r = CliRunner().invoke(main, ["session"])
    assert r.exit_code == 2 and "MEMBER or --local" in r.output
    member_dir = tmp_path / "member"
    member_dir.mkdir()
    (member_dir / "mirror.json").write_text("{}")
    r = CliRunner().invoke(main, ["session", "--local", str(member_dir), "-c", "W 1"])
    assert r.exit_code == 1 and "mirror member's instance directory" in r.output
    assert not (member_dir / "DB.dat").exists()


def test_interact_ctrl_c_during_a_line_and_a_paste_stopping_at_an_error(db):
    import os
    import signal
    import threading

    # A real SIGINT while `H 100` waits: <INTERRUPT>, and the next line runs.
    timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT))
    keys = _Keys("H 100 W 1", "W 2\nW ^nope\nW 3", EOFError())
    o, e = io.StringIO(), io.StringIO()
    timer.start()
    try:
        assert interact(db, out=o, err=e, read=keys) == 0
    finally:
        timer.join()
    assert o.getvalue() == "2\n\n"  # the paste stopped at its error: no 3
    assert e.getvalue() == "<INTERRUPT>\n<UNDEFINED> *^nope\n"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
