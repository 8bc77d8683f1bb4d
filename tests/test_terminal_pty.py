"""`irisrep session MEMBER` as a user types at it: the real command on a pseudo
terminal (pexpect) against a real local mirror (`irisrep up`, torn down with
`irisrep down`).

Covers the prompt (`DB>`, `TL1:DB>`), every command and error word of the subset
as the terminal prints them, readline editing (Ctrl-A, arrows, backspace),
history (up-arrow, and the history file across sessions), Ctrl-C at the prompt
and during a wait, Ctrl-D and Halt (closing the session: rollback, locks
released), `<PROTECT>` on the backup with the session going on, piped stdin, and
a lost connection (one line, status 1). One deployment for the module; each test
starts its own sessions (about half a second each).
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from mirrorkit import cli, deployed

import irisrep
from irisrep.constants import TERMINAL_HISTORY_FILE_NAME

pexpect = pytest.importorskip("pexpect")

PROMPT = re.compile(r"(?:TL(\d+):)?(DB)>")
# Any namespace's prompt (REPORT>, TL1:REPORT>); not the end of an error word (<NAMESPACE>).
ANY_PROMPT = re.compile(r"(?<![<\w])(?:TL(\d+):)?([A-Z][A-Z0-9]*)>")
UP, LEFT, RIGHT = "\x1b[A", "\x1b[D", "\x1b[C"
CTRL_A, CTRL_C, BACKSPACE = "\x01", "\x03", "\x7f"


@pytest.fixture(scope="module")
def mirror(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("pty") / "m")
    with deployed(d, "--qos-ms", "2000"):
        yield d


class Term:
    """One `irisrep session` on a pseudo terminal."""

    def __init__(
        self, d: str, member: str = "A", *, local: bool = False, prompt: re.Pattern = PROMPT
    ) -> None:
        """`local`: `irisrep session --local d`; `prompt` matches the prompts expected
        (group 1 the transaction level, group 2 the namespace)."""
        env = dict(os.environ, TERM="xterm", INPUTRC=os.devnull, NO_COLOR="1")
        self.prompt = prompt
        self.namespace = ""
        where = ["--local", d] if local else ["--dir", d, member]
        self.child = pexpect.spawn(
            sys.executable,
            ["-m", "irisrep", "session", *where],
            env=env,
            encoding="utf-8",
            timeout=20,
            dimensions=(24, 200),
        )
        self.level = self.wait_prompt()

    def wait_prompt(self) -> int:
        """Wait for the next prompt; its transaction level (0: `DB>`). The namespace it
        shows is kept in `namespace`."""
        self.child.expect(self.prompt)
        self.namespace = self.child.match.group(2)
        return int(self.child.match.group(1) or 0)

    def run(self, line: str, level: int = 0) -> str:
        """Type a line and Enter; what it printed (stdout and stderr) up to the next
        prompt, which must show `level`."""
        self.child.sendline(line)
        got = self.wait_prompt()
        text = self.child.before.replace("\r\n", "\n")
        echo, _, output = text.partition("\n")
        assert echo.endswith(line), repr(text)
        assert got == level, f"prompt level {got} after {line!r}: {text!r}"
        return output

    def keys(self, keys: str, level: int = 0) -> list[str]:
        """Send raw keys (ending with Enter); the lines printed before the next prompt."""
        self.child.send(keys)
        assert self.wait_prompt() == level
        return self.child.before.replace("\r\n", "\n").split("\n")

    def end(self, how: str = "eof") -> int:
        if how == "eof":
            self.child.sendeof()
        else:
            self.child.sendline(how)
        self.child.expect(pexpect.EOF)
        self.child.close()
        return self.child.exitstatus

    def kill(self) -> None:
        if self.child.isalive():
            self.child.terminate(force=True)


@pytest.fixture(scope="module")
def one_term(mirror):
    t = Term(mirror)
    yield t
    t.kill()


@pytest.fixture
def term(mirror):
    terms: list[Term] = []

    def open_(member: str = "A") -> Term:
        t = Term(mirror, member)
        terms.append(t)
        return t

    yield open_
    for t in terms:
        t.kill()


def test_set_write_and_expressions(term):
    t = term()
    assert t.level == 0
    assert t.run("Set a=1,b=2 Write a+b") == "3\n"
    assert t.run('Set (c,d)=3 Write c,",",d') == "3,3\n"
    assert t.run('Write "x",!,"y",!,12,",",.5,",",1.50') == "x\ny\n12,.5,1.5\n"
    assert t.run("Write 2+3*4,!,2+(3*4)") == "20\n14\n"  # strictly left to right
    assert t.run('W 7\\2,",",7#3,",",-7#3,",",2**10,",",1/4,",",5-7,",",6*7') == (
        "3,1,2,1024,.25,-2,42\n"
    )
    assert t.run('W "ab"_"cd"_1+1') == "1\n"  # ("abcd1")+1: the string's numeric prefix
    assert t.run('W "ab"_("cd"_(1+1))') == "abcd2\n"
    assert t.run("S ^pty=0,n=$Increment(^pty),n=$I(^pty,10) W n,!,$I(loc),$I(loc)") == ("11\n12\n")
    assert t.run('S ^pty(1)="a",^pty(2)=2,^pty(2,"x")="q""r"  ZWrite ^pty') == (
        '^pty=11\n^pty(1)="a"\n^pty(2)=2\n^pty(2,"x")="q""r"\n'
    )
    assert t.run("ZW ^pty(2)") == '^pty(2)=2\n^pty(2,"x")="q""r"\n'
    assert t.run('K  S l(1)="x",l(2,"y")=2 ZW') == 'l(1)="x"\nl(2,"y")=2\n'
    assert t.run("ZW l(2)") == 'l(2,"y")=2\n'
    assert t.end("Halt") == 0


def test_kill_zkill_get_data_order_query(term):
    t = term()
    t.run('S ^g(1)="a",^g(2)=2,^g(2,"x")=3,^g("z")=4')
    assert t.run('W $G(^g(9)),"|",$G(^g(9),"dflt"),"|",$Get(^g(1))') == "|dflt|a\n"
    assert t.run("W $D(^g),$D(^g(1)),$D(^g(2)),$D(^g(9))") == "101110\n"
    assert t.run('W $O(^g("")),$O(^g(1)),$O(^g(2)),$O(^g("z"))') == "12z\n"
    assert t.run('W $O(^g(""),-1),$Order(^g("z"),-1),$O(^g(1),-1)') == "z2\n"
    assert t.run('S l(5)=1,l("a")=2 W $O(l("")),$O(l(5)),$O(l(""),-1),$O(l("a"),-1)') == ("5aa5\n")
    assert t.run('W $Q(^g),",",$Q(^g(2)),",",$Query(^g(2,"x"))') == '^g(1),^g(2,"x"),^g("z")\n'
    assert t.run('W $Q(^g(""),-1),",",$Q(^g("z"),-1),",",$Q(^g(1),-1)') == ('^g("z"),^g(2,"x"),\n')
    assert t.run('W $Q(l("")),",",$Q(l(""),-1)') == 'l(5),l("a")\n'
    t.run("ZKill ^g(2)")
    assert t.run("W $D(^g(2))") == "10\n"
    t.run("Kill ^g(2)")
    assert t.run("W $D(^g(2)),$D(^g(1))") == "01\n"
    t.run("K ^g,l")
    assert t.run("W $D(^g),$D(l)") == "00\n"
    assert t.end() == 0


def test_transactions_and_the_tl_prompt(term):
    t = term()
    t.run("S ^tx=0")
    assert t.run("TStart", level=1) == ""
    assert t.run("S ^tx=1 TS", level=2) == ""
    assert t.run("W $TLevel", level=2) == "2\n"
    assert t.run("TRollback 1", level=1) == ""
    assert t.run("W ^tx", level=1) == "1\n"
    assert t.run("TCommit") == ""
    assert t.run("TS  S ^tx=2 TS  S ^tx=3", level=2) == ""
    assert t.run("TRO") == ""  # every level
    assert t.run("W ^tx,$TL") == "10\n"
    assert t.run("TC").startswith("<COMMAND> TCOMMIT with no transaction open")
    assert t.run("TRO 1") == ""  # nothing to roll back: no error
    assert t.end("H") == 0


def test_locks_and_test_between_two_sessions(term):
    t1, t2 = term(), term()
    assert t1.run("L +^lk(1) W $T") == "1\n"
    assert t2.run("L +^lk(1):0 W $T") == "0\n"
    assert t2.run("L +^lk:.2 W $T") == "0\n"  # an ancestor conflicts too
    assert t2.run("L +^lk(2):1 W $T") == "1\n"  # a sibling does not
    # Without a timeout the wait lasts until the lock comes, or Ctrl-C.
    t2.child.sendline("L +^lk(1) W $T")
    with pytest.raises(pexpect.TIMEOUT):
        t2.child.expect(PROMPT, timeout=0.5)
    t2.child.send(CTRL_C)
    assert t2.wait_prompt() == 0
    assert "<INTERRUPT>" in t2.child.before
    t1.run("L -^lk(1)")
    assert t2.run("L +^lk(1):2 W $T") == "1\n"
    assert t1.run("L +^lk(1):0 W $T") == "0\n"
    t2.run("L -^lk(1),-^lk(2)")
    assert t1.run("L +^lk(1):0 W $T L  W $T") == "11\n"
    assert t1.end() == 0 and t2.end() == 0


@pytest.mark.parametrize(
    "line, shown",
    [
        ("W ^nope(1)", "<UNDEFINED> *^nope(1)"),
        ("W nope", "<UNDEFINED> *nope"),
        ('S ^x("")=1', "<SUBSCRIPT>"),
        ("W 1+", "<SYNTAX>"),
        ("FOO 1", "<COMMAND> unknown command 'FOO'"),
        ("TC", "<COMMAND>"),
        ("W 1/0", "<DIVIDE>"),
        ("W $ZZ(1)", "<FUNCTION>"),
    ],
)
def test_error_words(one_term, line, shown):
    t = one_term  # one session for every case: an error does not end it
    got = t.run(line)
    assert got.startswith(shown) and got.count("\n") == 1, got
    assert "Traceback" not in got
    assert t.run("W 1") == "1\n"  # the session goes on


def test_maxstring(term):
    t = term()
    doubling = ",".join(["s=s_s"] * 19)  # 10 * 2**19 characters > 3,641,144
    got = t.run(f'S s="0123456789" S {doubling}')
    assert got.startswith("<MAXSTRING>")
    assert t.run("W $L(s)") == "2621440\n"  # what ran before the error stays done
    assert t.end() == 0


def test_protect_on_the_backup_and_the_session_goes_on(term):
    t = term("B")
    got = t.run('Set ^myfirstglobal="nope"')
    assert got.startswith("<PROTECT> ^myfirstglobal") and got.count("\n") == 1
    assert t.run("TS").startswith("<PROTECT>")
    assert t.run("W 1+1") == "2\n"
    assert t.run('W $D(^nothing),$G(^nothing,"-")') == "0-\n"  # reads work
    assert t.end("Halt") == 0


def test_line_editing(term):
    t = term()
    # What ran is what the line became: the first printed line after the echo.
    # Ctrl-A, then two right arrows: "Wrte" becomes "Write".
    assert t.keys("Wrte 42" + CTRL_A + RIGHT + RIGHT + "i\r")[1:] == ["42", ""]
    assert t.keys("Write 5x" + BACKSPACE + "\r")[1:] == ["5", ""]
    assert t.keys("Write 12" + LEFT + "3\r")[1:] == ["132", ""]
    assert t.end() == 0


def test_history_recall_and_file(term, mirror):
    marker = f"h{uuid.uuid4().hex[:8]}"
    t = term()
    assert t.run(f'Write "{marker}"') == f"{marker}\n"
    assert t.keys(UP + "\r")[1:] == [marker, ""]  # the previous line again
    assert t.end() == 0
    path = Path(mirror) / TERMINAL_HISTORY_FILE_NAME
    assert f'Write "{marker}"' in path.read_text().splitlines()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    t = term()  # a new session finds it
    assert t.keys(UP + "\r")[1:] == [marker, ""]
    assert t.end() == 0


def test_ctrl_c_cancels_a_line_and_a_wait(term):
    t = term()
    t.child.send("Write 99")
    t.child.send(CTRL_C)
    assert t.wait_prompt() == 0
    assert t.run("Write 1") == "1\n"
    assert "99\n" not in t.child.before
    t.child.sendline("Hang 30 W 2")
    with pytest.raises(pexpect.TIMEOUT):
        t.child.expect(PROMPT, timeout=0.3)
    t.child.send(CTRL_C)
    assert t.wait_prompt() == 0
    assert "<INTERRUPT>" in t.child.before and "2\n" not in t.child.before
    assert t.run("W 3") == "3\n"
    assert t.end() == 0


def test_ctrl_d_and_halt_close_the_session(term):
    t = term()
    t.run("TS  S ^cd=1 L +^cdl", level=1)
    assert t.end() == 0  # Ctrl-D
    t = term()
    assert t.run("W $D(^cd) L +^cdl:0 W $T") == "01\n"  # rolled back, lock released
    t.run("TS  S ^cd=2", level=1)
    assert t.end("Halt") == 0
    t = term()
    assert t.run("W $D(^cd)") == "0\n"
    assert t.end("H") == 0


def test_piped_stdin(mirror):
    p = subprocess.run(
        [sys.executable, "-m", "irisrep", "session", "--dir", mirror, "A"],
        input='Write 1\nSet ^pipe="p" Write ^pipe\nWrite ^nope\nWrite 2\n',
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 1
    assert p.stdout == "1\np\n" and p.stderr == "<UNDEFINED> *^nope\n"


def test_namespaces_on_a_member(term):
    t = term()
    assert t.run("W $NAMESPACE,!,$ZNSPACE") == "DB\nDB\n"
    assert t.run('ZN "db" S ^|"DB"|pns(1)=1 W $Q(^|"db"|pns(""))') == '^|"DB"|pns(1)\n'
    assert t.run('ZN "nope"') == "<NAMESPACE> *nope\n" and t.namespace == "DB"
    assert t.run('W ^|"NOPE"|x') == "<NAMESPACE> *NOPE\n"


def test_namespaces_locally_and_the_prompt(tmp_path):
    path = tmp_path / "inst"
    with irisrep.open(path) as db:
        db.database("REPORT").global_("r")[1] = "a"
    t = Term(str(path), local=True, prompt=ANY_PROMPT)
    try:
        assert t.namespace == "DB"
        t.run('ZN "report"')
        assert t.namespace == "REPORT"
        assert t.run('W ^r(1)," ",$NAMESPACE') == "a REPORT\n"
        t.run('TS  S ^|"DB"|d=1,^r(2)="b"', level=1)
        assert t.namespace == "REPORT"  # TL1:REPORT>
        assert t.run('ZN "nope"', level=1) == "<NAMESPACE> *nope\n"
        assert t.namespace == "REPORT"
        t.run('S $NAMESPACE="DB"', level=1)
        assert t.namespace == "DB"
        t.run("TRO")  # one transaction across the two databases
        assert t.run('W $D(^d),$D(^|"REPORT"|r(2)),$D(^|"REPORT"|r(1))') == "001\n"
        assert t.end() == 0
    finally:
        t.kill()


def test_lost_connection_prints_one_line_and_exits_1(term, mirror):
    # Last in the file: it crashes the backup.
    t = term("B")
    assert t.run("W $D(^nothing)") == "0\n"
    cli("kill", "--dir", mirror, "B")
    t.child.sendline("W $D(^nothing)")
    t.child.expect(pexpect.EOF)
    t.child.close()
    assert t.child.exitstatus == 1
    lines = [x for x in t.child.before.replace("\r\n", "\n").split("\n") if x.strip()]
    assert lines[-1].startswith("<ERROR> ") and "the session ends" in lines[-1]
    assert "Traceback" not in t.child.before
    # A member that is down: one line, status 1, whatever the form.
    for args in (["-c", "W 1"], []):
        p = cli("session", "--dir", mirror, "B", *args, check=False)
        assert p.returncode == 1 and "cannot connect to B" in p.stderr
        assert "Traceback" not in p.stderr and p.stderr.count("\n") == 1
