"""Namespaces in the terminal: ZNspace, $Namespace, the prompt and extended global
references (`^|"REPORT"|x`), against a real local instance with three databases
(`Database.database`), and against a connection-style target (`use_database`) over
the same databases.
"""

from __future__ import annotations

import io

import pytest

import irisrep
from irisrep import errors
from irisrep.database import Database
from irisrep.terminal import Session, TerminalError, interact, parse, run_session


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


@pytest.fixture
def inst(tmp_path):
    d = irisrep.open(tmp_path / "inst")
    d.database("REPORT")
    d.database("archive")
    yield d
    d.close()


@pytest.fixture
def sess(inst):
    s = Session(inst, out=io.StringIO(), sleep=lambda _s: None)
    yield s
    s.close()


def out(s: Session, line: str) -> str:
    start = len(s.out.getvalue())
    s.execute(line)
    return s.out.getvalue()[start:]


def err(s: Session, line: str) -> TerminalError:
    with pytest.raises(TerminalError) as info:
        s.execute(line)
    return info.value


def test_znspace_switches_and_names_ignore_case(sess, inst):
    assert sess.namespace == "DB" and out(sess, "W $Namespace") == "DB"
    out(sess, 'ZN "report" S ^x=1')
    assert sess.namespace == "REPORT" and out(sess, "W $NAMESPACE,$znspace") == "REPORTREPORT"
    assert inst.database("REPORT").globals["x"][()] == 1 and inst.globals["x"].data(()) == 0
    out(sess, 'ZNSPACE "Archive" S ^x=2')
    assert sess.namespace == "ARCHIVE" and inst.database("ARCHIVE").globals["x"][()] == 2
    out(sess, 'Set $Namespace="db" S ^x=3')
    assert sess.namespace == "DB" and inst.globals["x"][()] == 3
    out(sess, 'S ns="Report",$ZNSPACE=ns W ^x')
    assert sess.namespace == "REPORT"
    out(sess, 'ZN:0 "DB" ZN "report"')  # a false postconditional; the current one again
    assert sess.namespace == "REPORT"


@pytest.mark.parametrize(
    "line",
    ['ZN "NOPE"', 'ZN ""', 'Set $Namespace="NOPE"', 'S (a,$ZNSPACE)="NOPE"', 'ZN "^^/tmp"'],
)
def test_unknown_namespace_changes_nothing(sess, line):
    out(sess, 'ZN "REPORT"')
    e = err(sess, line + " S ^after=1")
    assert e.word == "NAMESPACE" and str(e).startswith("<NAMESPACE> *")
    assert sess.namespace == "REPORT"
    assert out(sess, "W $D(^after)") == "0"


def test_extended_references_everywhere(sess, inst):
    rep = inst.database("REPORT").globals
    out(sess, 'S ^|"REPORT"|x(1)=10,^|"report"|x(2,"a")="s",^x(1)=1')
    assert rep["x"][1] == 10 and rep["x"][2, "a"] == "s" and inst.globals["x"][1] == 1
    assert sess.namespace == "DB"
    assert out(sess, 'W ^|"REPORT"|x(1)," ",^x(1)') == "10 1"
    assert out(sess, 'W $G(^|"REPORT"|x(3),"none"),$G(^|"REPORT"|x(1))') == "none10"
    assert out(sess, 'W $D(^|"REPORT"|x(2)),$D(^|"REPORT"|x(9))') == "100"
    assert out(sess, 'W $O(^|"REPORT"|x("")),$O(^|"REPORT"|x(""),-1)') == "12"
    assert out(sess, 'W $Q(^|"REPORT"|x(1))') == '^|"REPORT"|x(2,"a")'
    assert out(sess, 'W $Q(^|"report"|x(""),-1)') == '^|"REPORT"|x(2,"a")'
    assert out(sess, "W $Q(^x(1))") == ""  # not extended: no prefix (and DB has no more)
    assert out(sess, 'W $I(^|"REPORT"|n),$I(^|"REPORT"|n,5)') == "16"
    assert out(sess, 'ZW ^|"REPORT"|x') == '^|"REPORT"|x(1)=10\n^|"REPORT"|x(2,"a")="s"\n'
    out(sess, 'ZK ^|"REPORT"|x(1) K ^|"REPORT"|x(2)')
    assert rep["x"].data(()) == 0 and inst.globals["x"][1] == 1
    assert inst.globals["n"].data(()) == 0 and rep["n"][()] == 6


def test_environment_forms(sess, inst):
    rep = inst.database("REPORT").globals
    out(sess, 'S ns="REP" S ^|ns_"ORT"|a=1,^["REPORT"]b=2,^[ns_"ORT"]c(1)=3')
    assert (rep["a"][()], rep["b"][()], rep["c"][1]) == (1, 2, 3)
    # "]" inside parentheses is the follows operator again; "" is the current namespace.
    out(sess, 'S ^[$P("DB,REPORT",",",("b"]"a")+1)]d=4,^|""|e=5')
    assert rep["d"][()] == 4 and inst.globals["e"][()] == 5
    assert out(sess, 'W $Q(^|""|e(""))') == ""
    out(sess, 'ZN "REPORT"')
    assert out(sess, 'W ^a,^|"DB"|e,$D(^|""|e)') == "150"


def test_extended_reference_errors(sess, inst):
    e = err(sess, 'S ^ok=1,^|"NOPE"|x=1,^ok2=1')
    assert (e.word, e.message) == ("NAMESPACE", "*NOPE")
    assert inst.globals["ok"][()] == 1 and inst.globals["ok2"].data(()) == 0
    for line in ['W ^|"NOPE"|x', 'W $D(^["NOPE"]x)', 'K ^|"nope"|x', 'L +^|"NOPE"|x']:
        assert err(sess, line).word == "NAMESPACE", line
    assert sess.namespace == "DB"
    e = err(sess, 'W ^|"report"|x(1,"a")')
    assert (e.word, e.message) == ("UNDEFINED", '*^|"REPORT"|x(1,"a")')


@pytest.mark.parametrize(
    "line",
    [
        'W ^|"REPORT"x',
        'W ^|"REPORT"|',
        'W ^["REPORT"x',
        'W ^["REPORT","SYS"]x',
        'W |"REPORT"|x',
        "S $TLEVEL=1",
        "S $Test=1",
        "ZN",
        'ZN "A","B"',
        'W ^|"A"|(1)',
    ],
)
def test_syntax_errors(line):
    with pytest.raises(TerminalError) as info:
        parse(line)
    assert info.value.word == "SYNTAX", line


def _held(db: Database) -> int:
    """How many lock entries the instance holds in database `db` (count > 0)."""
    return sum(1 for e in db.locks.snapshot() if e[4] and e[1] == db.db_id)


def test_locks_belong_to_their_namespace(sess, inst):
    rep = inst.database("REPORT")
    out(sess, 'L +^|"REPORT"|k(1)')
    assert (_held(inst), _held(rep)) == (0, 1)
    out(sess, 'ZN "REPORT" L +^k(2),+^|"DB"|k(3) ZN "DB"')
    assert (_held(inst), _held(rep)) == (1, 2)
    out(sess, 'L -^|"report"|k(1),-^k(3)')  # each released in its own namespace
    assert (_held(inst), _held(rep)) == (0, 1)
    out(sess, "L -^k(2)")  # ^k(2) of DB: not held, nothing to release
    assert _held(rep) == 1
    out(sess, 'L +^|"REPORT"|k(4):0 W $T')
    assert _held(rep) == 2
    out(sess, "L")  # releases all, each in its own namespace
    assert (_held(inst), _held(rep)) == (0, 0)
    out(sess, 'L +^|"REPORT"|k(5)')
    sess.close()
    assert _held(rep) == 0


def test_prompt_follows_the_namespace(inst):
    keys = _Keys('ZN "report"', "TS", 'ZN "NOPE"', 'S $NAMESPACE="DB"', "TRO", EOFError())
    e = io.StringIO()
    assert interact(inst, out=io.StringIO(), err=e, read=keys) == 0
    assert keys.prompts == ["DB>", "REPORT>", "TL1:REPORT>", "TL1:REPORT>", "TL1:DB>", "DB>"]
    assert e.getvalue() == "<NAMESPACE> *NOPE\n"


def test_run_session_starts_in_the_named_database(inst):
    o = io.StringIO()
    assert run_session(inst, commands='W $NAMESPACE ZN "REPORT" W " ",$ZNSPACE', out=o) == 0
    assert o.getvalue() == "DB REPORT\n"
    o = io.StringIO()
    stdin = io.StringIO('ZN "REPORT"\nW $NAMESPACE\n')
    assert run_session(inst, stdin=stdin, out=o, err=io.StringIO()) == 0
    assert o.getvalue() == "REPORT\n"


def test_a_target_with_one_database_knows_only_its_name(tmp_path):
    db = irisrep.open(tmp_path / "one")
    s = Session(db, out=io.StringIO())
    try:
        assert out(s, 'ZN "db" S ^|"DB"|x=1 W ^x,$NAMESPACE') == "1DB"
        assert err(s, 'ZN "REPORT"').word == "NAMESPACE"
        assert err(s, 'W ^|"REPORT"|x').word == "NAMESPACE"
    finally:
        s.close()
        db.close()


# --- a connection: one current database, switched by use_database -----------------------


class _Conn:
    """The connection's side of the contract over real databases: global operations
    go to the current one, `use_database(name)` switches (the member resolves a name
    ignoring case and returns its spelling; None: the default again), transactions
    stay with the connection. Every switch is recorded."""

    def __init__(self, dbs: dict[str, Database]) -> None:
        self.dbs = dbs
        self.current: str | None = None
        self.switches: list[str | None] = []

    @property
    def globals(self):
        return self.dbs[self.current or "DB"].globals

    def use_database(self, name: str | None) -> str | None:
        found = None
        if name is not None:
            found = next((n for n in self.dbs if n.upper() == name.upper()), None)
            if found is None:
                raise errors.DatabaseNotFoundError(name)
        self.switches.append(name)
        self.current = found
        return found

    def __getattr__(self, name: str):
        return getattr(self.dbs["DB"], name)  # tlevel, tstart, tcommit, trollback


@pytest.fixture
def conn(inst):
    # "Archive": a member may spell a name as configured (a followed mirror's).
    return _Conn(
        {"DB": inst, "REPORT": inst.database("REPORT"), "Archive": inst.database("ARCHIVE")}
    )


def test_connection_switches_for_one_operation_and_back(conn, inst):
    s = Session(conn, out=io.StringIO())
    rep = inst.database("REPORT").globals
    out(s, 'S ^|"report"|x(1)=1,^x(1)=2')
    assert conn.switches == ["report", None] and conn.current is None
    assert rep["x"][1] == 1 and inst.globals["x"][1] == 2
    conn.switches.clear()
    assert out(s, 'ZW ^|"REPORT"|x W $Q(^|"REPORT"|x(""))') == '^|"REPORT"|x(1)=1\n^|"REPORT"|x(1)'
    assert conn.switches == ["REPORT", None] * 2
    # An error inside the operation: switched back all the same.
    conn.switches.clear()
    assert err(s, 'S ^|"REPORT"|x("' + "y" * 600 + '")=1').word == "SUBSCRIPT"
    assert conn.switches == ["REPORT", None] and conn.current is None
    # ZNspace stays; an extended reference from there comes back to it, by its spelling.
    out(s, 'ZN "archive" S ^a=1')
    assert conn.current == "Archive" and s.namespace == "ARCHIVE"
    conn.switches.clear()
    assert out(s, 'W ^|"REPORT"|x(1),^|"db"|x(1),^|"Archive"|a,^a') == "1211"
    assert conn.switches == ["REPORT", "Archive", None, "Archive"]
    out(s, 'L +^|"REPORT"|k')
    conn.switches.clear()
    s.close()  # the lock released in REPORT, the connection back on its default
    assert conn.switches == ["REPORT", "Archive", None] and conn.current is None
    assert _held(inst.database("REPORT")) == 0


def test_connection_unknown_namespace(conn):
    s = Session(conn, out=io.StringIO())
    out(s, 'ZN "REPORT"')
    conn.switches.clear()
    assert err(s, 'ZN "NOPE"').word == "NAMESPACE"
    assert err(s, 'W ^|"NOPE"|x').word == "NAMESPACE"
    assert s.namespace == "REPORT" and conn.current == "REPORT" and conn.switches == []
    s.close()


def test_one_transaction_across_namespaces(sess, inst):
    rep = inst.database("REPORT").globals
    out(sess, 'TS  S ^t=1,^|"REPORT"|t=1 ZN "REPORT" S ^u=1')
    assert out(sess, 'W $TL ZN "DB" W $TL') == "11"
    sess.execute("TRO")  # undoes the writes in both databases
    assert inst.globals["t"].data(()) == 0 and rep["t"].data(()) == 0 and rep["u"].data(()) == 0
    out(sess, 'ZN "REPORT" TS  S ^u=2,^|"DB"|t=2 TC')
    assert rep["u"][()] == 2 and inst.globals["t"][()] == 2 and inst.tlevel == 0
    out(sess, 'TS  S ^v=3,^|"ARCHIVE"|v=3')
    sess.close()  # the end of the session rolls back the open transaction, everywhere
    assert rep["v"].data(()) == 0 and inst.database("ARCHIVE").globals["v"].data(()) == 0
