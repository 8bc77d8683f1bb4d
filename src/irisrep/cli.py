"""The `irisrep` command line (click + rich).

Owns argument parsing and presentation only: every command calls the library and
prints what it returns, as a rich table on a terminal or JSON with `--json`. Exit
status: 0 success, 1 the check or command found a problem, 2 bad usage (click).
"""

from __future__ import annotations

import contextlib
import json
import sys

import click
from rich.console import Console

from . import __version__

# soft_wrap: piped output keeps one line per record (grep-able), whatever the width.
console = Console(soft_wrap=True)
if not console.is_terminal:
    # Piped or captured: wide tables stay whole instead of wrapping at 80 columns.
    console = Console(soft_wrap=True, width=200)
err_console = Console(stderr=True, soft_wrap=True)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="irisrep")
def main() -> None:
    """irisrep: IRIS-style globals, journaling and mirroring for Python."""


@contextlib.contextmanager
def _progress(what: str, unit: str):
    """A transient rich progress bar on stderr: (bar, task); the caller updates it."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

    amount = DownloadColumn() if unit == "bytes" else TextColumn("{task.completed} " + unit)
    with Progress(
        TextColumn(f"[bold]{what}[/]"),
        BarColumn(),
        amount,
        TimeRemainingColumn(),
        TextColumn("{task.fields[state]}"),
        console=err_console,
        transient=True,
    ) as bar:
        yield bar, bar.add_task(what, total=None, state="")


@main.command()
@click.argument("path", type=click.Path(exists=True, dir_okay=True, file_okay=True))
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def integrity(path: str, as_json: bool) -> None:
    """Check the database file(s) at PATH offline: checksums, order, pointers, free list.

    PATH is an instance directory (every *.dat in it) or one database file.
    """
    from rich.progress import BarColumn, Progress, TextColumn

    from .integrity import check

    try:
        if as_json or not err_console.is_terminal:
            reports = check(path)
        else:
            with Progress(
                TextColumn("[bold]integrity[/]"),
                BarColumn(),
                TextColumn("{task.completed} blocks"),
                console=err_console,
                transient=True,
            ) as bar:
                task = bar.add_task("walk", total=None)
                reports = check(path, progress=lambda n: bar.advance(task, n))
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError) as exc:
        what = f"{exc.strerror}: {exc.filename}" if exc.filename else str(exc)
        raise click.BadParameter(what, param_hint="'PATH'") from None
    except OSError as exc:
        raise click.ClickException(f"{path}: {exc}") from None
    ok = all(r.ok for r in reports)
    if as_json:
        click.echo(json.dumps({"ok": ok, "databases": [r.as_dict() for r in reports]}, indent=2))
    else:
        for r in reports:
            console.print(r.summary(), markup=False, highlight=False)
            for e in r.errors:
                console.print(f"  - {e}", markup=False, highlight=False)
    sys.exit(0 if ok else 1)


@main.command()
@click.option(
    "--dir",
    "path",
    type=click.Path(file_okay=False),
    default=None,
    help="Directory to use (default: a new temporary one, removed after).",
)
@click.option(
    "--local", is_flag=True, help="The single-database walkthrough instead of the mirror's."
)
def demo(path: str | None, local: bool) -> None:
    """The IRIS mirroring walkthrough on this machine, narrated and checked step by step:
    deploy a mirror, Set on the primary, Write and <PROTECT> on the backup, stop and
    restart the primary, the backup takes over, the former primary rejoins as backup.

    With --local: the storage engine underneath (globals, $ORDER, $DATA, KILL,
    transactions, restart, integrity) on one local database.
    """
    if not local:
        from .demo import run_demo

        sys.exit(run_demo(console, err_console, path))
    import os
    import shutil
    import tempfile

    import irisrep

    from .integrity import check

    own = path is None
    path = path or tempfile.mkdtemp(prefix="irisrep-demo-")
    step_no = 0

    def step(title: str) -> None:
        nonlocal step_no
        step_no += 1
        console.print(f"\n[bold cyan]{step_no}. {title}[/]")

    def expect(what: str, got: object, want: object) -> None:
        if got != want:
            err_console.print(
                f"[red]demo failed at step {step_no}: {what}: expected {want!r}, got {got!r}[/]"
            )
            sys.exit(1)
        console.print(f"   {what} -> {got!r}", markup=False, highlight=False)

    try:
        step(f"open (create) an instance at {path}")
        with irisrep.open(path) as db:
            g = db.globals["myfirstglobal"]
            step('Set ^myfirstglobal="congratulations"')
            g[()] = "congratulations"
            expect("Write ^myfirstglobal", g[()], "congratulations")
            step('Set ^myfirstglobal("fruit",1..3) and walk them with $ORDER')
            for i, fruit in enumerate(["apple", "banana", "cherry"], 1):
                g["fruit", i] = fruit
            walk, s = [], ""
            while (s := g.order(("fruit", s))) is not None:
                walk.append(s)
            expect('$ORDER over ^myfirstglobal("fruit",*)', walk, [1, 2, 3])
            expect('$DATA(^myfirstglobal("fruit"))', g.data(("fruit",)), 10)
            expect('$INCREMENT(^myfirstglobal("n"))', g.increment(("n",)), 1)
            step('Kill ^myfirstglobal("fruit",2)')
            del g["fruit", 2]
            expect("$QUERY after fruit 1", g.query(("fruit", 1)), ("fruit", 3))
            step("TSTART, Set, TROLLBACK: the before-image comes back")
            db.tstart()
            g[()] = "not for long"
            db.trollback()
            expect("Write ^myfirstglobal after TROLLBACK", g[()], "congratulations")
            with db.transaction():
                g["fruit", 4] = "date"
            expect('$GET(^myfirstglobal("fruit",4)) after TCOMMIT', g.get(("fruit", 4)), "date")
            step("Bad input is refused and changes nothing")
            try:
                g[""] = 1
            except irisrep.SubscriptError as exc:
                console.print(f'   Set ^myfirstglobal("")=1 -> {exc}', markup=False)
            else:
                expect("empty subscript refused", False, True)
        step("Close, reopen: the data is on disk")
        with irisrep.open(path) as db:
            g = db.globals["myfirstglobal"]
            expect("Write ^myfirstglobal", g[()], "congratulations")
            expect(
                "all nodes",
                [s for s, _ in g.items()],
                [(), ("fruit", 1), ("fruit", 3), ("fruit", 4), ("n",)],
            )
        step(f"irisrep integrity {path}")
        for r in check(path):
            console.print(f"   {r.summary()}", markup=False, highlight=False)
            expect("integrity", r.ok, True)
        step(f"irisrep journal verify {path}")
        from .journal import verify_dir

        report = verify_dir(os.path.join(path, "journal"))
        console.print(
            f"   {report['frames']} frames, {report['records']} records, "
            f"end: {report['end_reason']}",
            markup=False,
        )
        expect("journal", report["ok"], True)
        console.print("\n[bold green]demo passed[/]")
    finally:
        if own:
            shutil.rmtree(path, ignore_errors=True)


@main.group()
def wij() -> None:
    """The write image journal of an instance."""


@wij.command("status")
@click.argument("path", type=click.Path(exists=True))
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
def wij_status_cmd(path: str, as_json: bool) -> None:
    """Show the WIJ's state and whether recovery is pending (exit 1 if it is).

    PATH is an instance directory or the WIJ file itself.
    """
    import os

    from .constants import WIJ_FILE_NAME
    from .errors import CorruptError
    from .wij import wij_status

    target = os.path.join(path, WIJ_FILE_NAME) if os.path.isdir(path) else path
    try:
        st = wij_status(target)
    except FileNotFoundError:
        raise click.ClickException(f"no write image journal at {target}") from None
    except CorruptError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps(st.as_dict(), indent=2))
    else:
        pending = (
            "recovery PENDING (open the instance to recover)"
            if st.recovery_pending
            else "no recovery pending"
        )
        stop = "running or not stopped cleanly" if st.running else "stopped cleanly"
        console.print(
            f"{target}: {st.state}, cycle {st.cycle}, {st.entries} blocks in the last cycle, "
            f"checkpoint {st.checkpoint}; {stop}; {pending}",
            markup=False,
            highlight=False,
        )
        for e in st.slot_errors:
            console.print(f"  - header slot: {e}", markup=False, highlight=False)
    sys.exit(1 if st.recovery_pending else 0)


@main.group()
def journal() -> None:
    """The journal of an instance: dump frames and records, verify the chain."""


@journal.command("dump")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--from", "from_position", type=int, default=None, help="First stream position.")
@click.option("--count", type=int, default=None, help="How many frames to show.")
def journal_dump(file: str, from_position: int | None, count: int | None) -> None:
    """Print the frames and records of one journal file (YYYYMMDD.NNN)."""
    from .errors import CorruptError
    from .journal import dump_lines

    try:
        lines = dump_lines(file, from_position=from_position, count=count)
    except (CorruptError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    for line in lines:
        console.print(line, markup=False, highlight=False)


@journal.command("verify")
@click.argument("directory", type=click.Path(exists=True, file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def journal_verify(directory: str, as_json: bool) -> None:
    """Check every frame of every journal file in DIRECTORY (an instance's journal/).

    Exit 1 on any problem other than the clean end of the stream.
    """
    import os

    from .constants import JOURNAL_DIR_NAME
    from .errors import CorruptError
    from .journal import verify_dir

    if os.path.isdir(os.path.join(directory, JOURNAL_DIR_NAME)):
        directory = os.path.join(directory, JOURNAL_DIR_NAME)
    try:
        if as_json or not err_console.is_terminal:
            report = verify_dir(directory)
        else:
            with _progress("journal verify", "bytes") as (bar, task):
                report = verify_dir(
                    directory,
                    progress=lambda done, total: bar.update(task, completed=done, total=total),
                )
    except CorruptError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps(report, indent=2, default=str))
    else:
        state = "OK" if report["ok"] else "PROBLEM"
        console.print(
            f"{directory}: {state}: {len(report['files'])} files, {report['frames']} frames, "
            f"{report['records']} records, positions {report['start_position']}.."
            f"{report['end_position']}, end: {report['end_reason']}",
            markup=False,
            highlight=False,
        )
        if report.get("first_problem"):
            console.print(f"  - {report['first_problem']}", markup=False, highlight=False)
    sys.exit(0 if report["ok"] else 1)


@journal.command("purge")
@click.argument("path", required=False, type=click.Path(exists=True, file_okay=False))
@click.option("--member", default=None, help="A running deployment member instead of PATH.")
@click.option(
    "--dir",
    "dir_",
    type=click.Path(file_okay=False),
    default=None,
    help="Deployment directory for --member (default: $IRISREP_DIR, else ./irisrep-mirror).",
)
@click.option("--dry-run", is_flag=True, help="Only say what would be removed, and why not more.")
@click.option(
    "--days",
    type=click.FloatRange(min=0),
    default=None,
    help="Keep files created less than this many days ago (default 2, JOURNAL_PURGE_DAYS).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the decision as JSON.")
def journal_purge(path, member, dir_, dry_run, days, as_json) -> None:
    """Remove the journal files nothing needs any more, printing why each other file
    is kept: recovery, an open transaction, the last backup, a mirror member that
    has not received (or applied) it yet, or its age (docs/backup.md).

    --member M asks the running member (on a primary every other member's position
    counts); PATH opens a stopped instance here (a mirror member's data directory
    as a copy, with the member positions its primary last saved)."""
    from .purge import PurgeDecision

    if (path is None) == (member is None):
        raise click.UsageError("give PATH or --member M (one of them)")
    with _backup_errors():
        if member is not None:
            from .deploy import DeployError, credentials, deploy_dir, load

            d = deploy_dir(dir_)
            try:
                m = {x["name"]: x for x in load(d)["members"]}.get(member)
            except DeployError as exc:
                raise click.ClickException(str(exc)) from None
            if m is None:
                raise click.ClickException(f"no member {member!r} in {d}")
            from .client import connect_member

            user, password = credentials(d)
            with connect_member(m["client_address"], user=user, password=password) as conn:
                raw = conn.journal_purge(dry_run=dry_run, older_than_days=days)
            decision = PurgeDecision.from_dict(raw)
        else:
            from .purge import purge_instance

            decision = purge_instance(path, dry_run=dry_run, older_than_days=days)
    if as_json:
        click.echo(json.dumps(decision.as_dict(), indent=2))
        return
    for line in decision.lines():
        console.print(line, markup=False, highlight=False)


# --- backup and restore (backup.py, restore.py; docs/backup.md) ------------------------


def _bar(label: str, as_json: bool):
    """A rich progress bar on stderr when it is a terminal (and not --json), else None.

    Returns (context manager, set_total, advance): callbacks the library calls."""
    import contextlib

    if as_json or not err_console.is_terminal:
        return contextlib.nullcontext(), None, None
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    bar = Progress(
        TextColumn(f"[bold]{label}[/]"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=True,
    )
    task = bar.add_task(label, total=None)
    return (
        bar,
        lambda total: bar.update(task, total=total),
        lambda n: bar.advance(task, n),
    )


def _backup_errors():
    """BackupError, CorruptError and OSError as a click error (exit 1), nothing else."""
    import contextlib

    from .errors import CorruptError, IrisrepError

    @contextlib.contextmanager
    def cm():
        try:
            yield
        except (IrisrepError, CorruptError) as exc:
            raise click.ClickException(str(exc)) from None
        except OSError as exc:
            raise click.ClickException(f"{exc.filename or ''}: {exc.strerror or exc}") from None

    return cm()


def _ns_text(ns: int) -> str:
    import time

    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ns / 1e9))


@main.group()
def backup() -> None:
    """Online backups: create (full or incremental), list, verify."""


@backup.command("create")
@click.argument("path", required=False, type=click.Path(file_okay=False))
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False),
    help="Directory of the backup files (created if missing).",
)
@click.option(
    "--incremental",
    is_flag=True,
    help="Only the blocks changed since the newest backup of this database in --out.",
)
@click.option(
    "--member",
    default=None,
    help="A deployment member's database instead of PATH: backed up in the member's "
    "own process while it runs (its data directory if it is stopped).",
)
@click.option(
    "--dir",
    "dir_",
    type=click.Path(file_okay=False),
    default=None,
    help="Deployment directory (default: $IRISREP_DIR, else ./irisrep-mirror); given "
    "without PATH or --member: back up its Active backup member, else its primary.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the new backup's header as JSON.")
def backup_create(path, out_dir, incremental, member, dir_, as_json) -> None:
    """Back up the instance at PATH (a directory as irisrep.open takes), or a mirror
    member (--member M, or --dir D alone: the Active backup, as IRIS prefers), into
    --out.

    The copy is the image of one checkpoint, taken while the instance runs; the
    file also holds the journal that image needs. A running member is backed up in
    its own process; a local PATH must not be open in another process."""
    from .backup import backup_instance, backup_member, choose_member

    if path is not None and (member is not None or dir_ is not None):
        raise click.UsageError("give PATH, or --member M / --dir D (not both)")
    if path is None and member is None and dir_ is None:
        # As every deployment command: $IRISREP_DIR, else ./irisrep-mirror, if there.
        from .deploy import DEPLOY_FILE, deploy_dir

        if not (deploy_dir(None) / DEPLOY_FILE).exists():
            raise click.UsageError(
                f"give PATH, --member M or --dir D (no deployment in {deploy_dir(None)})"
            )
        dir_ = str(deploy_dir(None))
    cm, total, advance = _bar("backup", as_json)
    with _backup_errors():
        if path is None:
            if member is None:
                member, why = choose_member(dir_)
                err_console.print(f"backing up {member}: {why}", markup=False, highlight=False)
            with cm:
                info = backup_member(
                    dir_,
                    member,
                    out_dir,
                    incremental=incremental,
                    progress=advance,
                    progress_total=total,
                )
        else:
            with cm:
                info = backup_instance(
                    path,
                    out_dir,
                    incremental=incremental,
                    progress=advance,
                    progress_total=total,
                )
    if as_json:
        click.echo(json.dumps(info.as_dict(), indent=2))
        return
    secs = max((info.time_end - info.time_start) / 1e9, 1e-9)
    console.print(
        f"{info.path}: {info.kind} backup {info.seq}, {info.blocks_stored} of "
        f"{info.block_count} blocks, checkpoint {info.checkpoint}, journal "
        f"{info.journal_start}..{info.journal_end}, {info.file_bytes} bytes, "
        f"{info.block_count * 8192 / secs / 1e6:.0f} MB/s; databases "
        f"{_sections_text(info)}",
        markup=False,
        highlight=False,
    )


def _sections_text(info) -> str:
    """`DB 3/120, SALES 120/120 (full), REPORT 0/4 (journaling off)`: each database's
    blocks stored of its blocks, as `backup create` and `backup list` show them."""
    parts = []
    for s in info.sections:
        notes = ["full"] if s.full and info.kind != "full" else []
        if not s.journaling:
            notes.append("journaling off")
        extra = f" ({', '.join(notes)})" if notes else ""
        parts.append(f"{s.name} {s.blocks_stored}/{s.block_count}{extra}")
    return ", ".join(parts)


@backup.command("list")
@click.argument("directory", type=click.Path(exists=True, file_okay=False))
@click.option("--json", "as_json", is_flag=True)
def backup_list(directory, as_json) -> None:
    """The backups in DIRECTORY, oldest first, with their chains."""
    from rich.table import Table

    from .backup import list_backups

    with _backup_errors():
        good, other = list_backups(directory)
    if as_json:
        click.echo(json.dumps({"backups": [b.as_dict() for b in good], "other": other}, indent=2))
        return
    t = Table(title=f"backups in {directory}")
    for col in (
        "file",
        "kind",
        "seq",
        "db",
        "taken",
        "checkpoint",
        "journal",
        "blocks",
        "bytes",
        "databases",
    ):
        t.add_column(col)
    for b in good:
        t.add_row(
            b.name,
            b.kind,
            str(b.seq),
            f"{b.db_id:08x}",
            _ns_text(b.time_start),
            str(b.checkpoint),
            f"{b.journal_start}..{b.journal_end}",
            f"{b.blocks_stored}/{b.block_count}",
            str(b.file_bytes),
            _sections_text(b) + ("" if b.version >= 2 else " (format 1: DB only)"),
        )
    console.print(t)
    for o in other:
        console.print(f"  - {o['name']}: {o['problem']}", markup=False, highlight=False)


@backup.command("verify")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--json", "as_json", is_flag=True)
def backup_verify(file, as_json) -> None:
    """Check every block, journal chunk and the manifest of a backup FILE (exit 1 on
    the first fault, naming the block and its byte offset)."""
    import os

    from .backup import verify_backup

    cm, total, advance = _bar("verify", as_json)
    with _backup_errors(), cm:
        if total is not None:
            total(os.path.getsize(file))
        report = verify_backup(file, progress=advance)
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    console.print(
        f"{file}: OK: {report['kind']} backup, {report['blocks']} blocks, "
        f"{report['journal_frames']} journal frames ({report['journal_records']} records, "
        f"positions {report['journal_range'][0]}..{report['journal_range'][1]})",
        markup=False,
        highlight=False,
    )
    for d in report["databases"]:
        console.print(
            f"  database {d['name']} (id {d['db_id']}, journaling "
            f"{'on' if d['journaling'] else 'off'}): {d['blocks']} of {d['block_count']} "
            f"blocks{' (full copy)' if d['full'] else ''}, checkpoint {d['checkpoint']}",
            markup=False,
            highlight=False,
        )


@main.command()
@click.argument("backups", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--target", required=True, type=click.Path(), help="The new instance directory.")
@click.option(
    "--journal",
    "journal_dir",
    type=click.Path(exists=True, file_okay=False),
    default=None,
    help="Journal to roll forward with after the backup's own frames (default: the "
    "source instance's journal, if it is here and continues the backup).",
)
@click.option(
    "--until",
    "until_time",
    default=None,
    help="Roll forward to this time (unix seconds or ISO 8601, local time).",
)
@click.option(
    "--until-position",
    type=click.IntRange(min=0),
    default=None,
    help="Roll forward to this journal position (a frame boundary).",
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Only verify the backup files and say what would be applied (nothing written).",
)
@click.option(
    "--skip-integrity",
    is_flag=True,
    help="No integrity walk of the result (the blocks are still checked against the "
    "backup's manifest).",
)
@click.option("--json", "as_json", is_flag=True)
def restore(
    backups, target, journal_dir, until_time, until_position, dry_run, skip_integrity, as_json
) -> None:
    """Restore BACKUPS (a full backup, then its incrementals in order) into --target,
    roll the journal forward (to the end, --until TIME or --until-position N) and
    roll back the transactions open there."""
    from .restore import parse_time, plan_restore, verify_chain
    from .restore import restore as do_restore

    if until_time is not None and until_position is not None:
        raise click.UsageError("give --until or --until-position, not both")
    with _backup_errors():
        t = parse_time(until_time) if until_time is not None else None
        plan = plan_restore(
            list(backups),
            target,
            journal_dir=journal_dir,
            until_time=t,
            until_position=until_position,
        )
        if dry_run:
            # Only what would really be applied: a damaged file is refused here too.
            cm, total, advance = _bar("verify", as_json)
            with cm:
                verified = verify_chain(plan, progress=advance, progress_total=total)
            if as_json:
                doc = plan.as_dict()
                doc["verified"] = verified
                click.echo(json.dumps(doc, indent=2, default=str))
            else:
                n = len(verified)
                for line in [
                    "dry run: nothing is written",
                    *plan.lines(),
                    f"  verified: {n} backup file{'s' if n != 1 else ''}, every block, "
                    f"journal chunk and manifest checksum matches",
                ]:
                    console.print(line, markup=False, highlight=False)
            return
        cm, total, advance = _bar("restore", as_json)
        with cm:
            report = do_restore(
                plan, progress=advance, progress_total=total, integrity=not skip_integrity
            )
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    for line in plan.lines():
        console.print(line, markup=False, highlight=False)
    console.print(
        f"restored {report['target']} (databases {', '.join(report['databases'])}): "
        f"{report['blocks_written']} blocks, "
        f"{report['journal_frames']} journal frames, {report['applied_records']} records "
        f"rolled forward, {report['rolled_back']} transactions rolled back, integrity "
        f"{report['integrity']}, {report['seconds']:.2f} s",
        markup=False,
        highlight=False,
    )


@main.command()
@click.option(
    "--config",
    "config_path",
    required=True,
    type=click.Path(exists=True, dir_okay=False),
    help="The member's TOML config (docs/member-config.md).",
)
def serve(config_path: str) -> None:
    """Run one mirror member (its databases, mirror and client listeners) until stopped."""
    import logging

    from .errors import ConfigError, FailoverIneligibleError
    from .member import serve as serve_member

    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    try:
        sys.exit(serve_member(config_path))
    except (ConfigError, FailoverIneligibleError) as exc:
        raise click.ClickException(str(exc)) from None


# --- a local mirror (deploy.py) ---------------------------------------------------------

_dir_option = click.option(
    "--dir",
    "dir_",
    type=click.Path(file_okay=False),
    default=None,
    help="Deployment directory (default: $IRISREP_DIR, else ./irisrep-mirror).",
)


def _deploy_call(fn, *args, **kw):
    from .deploy import DeployError

    try:
        return fn(*args, **kw)
    except DeployError as exc:
        raise click.ClickException(str(exc)) from None


@main.command()
@click.option("--config", "config_path", required=True, type=click.Path(exists=True))
@click.option("--control", "control_path", required=True, type=click.Path())
def agent(config_path: str, control_path: str) -> None:
    """Supervise one member: start it, and stop/start/kill it on request."""
    import logging

    from .agent import Agent

    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    try:
        a = Agent(config_path, control_path)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    sys.exit(a.serve())


@main.command()
@_dir_option
@click.option("--asyncs", type=click.IntRange(0, 14), default=0, help="DR async members.")
@click.option("--base-port", type=click.IntRange(1, 65000), default=None, help="First port.")
@click.option("--qos-ms", type=click.IntRange(100, 60000), default=2000, help="QoS timeout.")
@click.option(
    "--ack", "ack_level", type=click.Choice(["received", "durable", "applied"]), default="durable"
)
@click.option(
    "--addresses",
    default=None,
    help="One host address per member, comma-separated (e.g. 127.0.0.2,127.0.0.3).",
)
@click.option("--no-arbiter", is_flag=True, help="No arbiter: no failover on host loss.")
@click.option("--arbiter-address", default="127.0.0.1", help="The arbiter's host address.")
@click.option(
    "--mirrors",
    type=click.IntRange(1, 10),
    default=1,
    help="Mirrors MIRROR1.. (members named MIRROR<k>/A ...); default one mirror, MIRROR.",
)
@click.option(
    "--reporting",
    type=click.IntRange(0, 14),
    default=0,
    help="Reporting asyncs R1.. that follow every mirror.",
)
def up(
    dir_,
    asyncs,
    base_port,
    qos_ms,
    ack_level,
    addresses,
    no_arbiter,
    arbiter_address,
    mirrors,
    reporting,
) -> None:
    """Start a local mirror (A primary, B backup, asyncs) and wait for an Active backup
    and for every member to answer.
    With --mirrors N and/or --reporting R: N mirrors and R reporting asyncs following
    all of them (docs/mirroring.md, "Reporting asyncs")."""
    from .deploy import deploy_dir
    from .deploy import up as deploy_up

    d = deploy_dir(dir_)
    dep = _deploy_call(
        deploy_up,
        d,
        asyncs=asyncs,
        base_port=base_port,
        qos_timeout_ms=qos_ms,
        ack_level=ack_level,
        progress=lambda msg: err_console.print(msg),
        addresses=[a.strip() for a in addresses.split(",")] if addresses else None,
        arbiter=not no_arbiter,
        arbiter_host=arbiter_address,
        mirrors=mirrors,
        reporting=reporting,
    )
    console.print(
        f"mirror {dep['mirror']} is up in {d}: "
        + ", ".join(f"{m['name']} {m['client_address']}" for m in dep["members"])
    )


@main.command()
@_dir_option
@click.option("--purge", is_flag=True, help="Also remove the deployment directory.")
def down(dir_, purge) -> None:
    """Stop every member and agent started by `irisrep up`."""
    from .deploy import deploy_dir
    from .deploy import down as deploy_down

    d = deploy_dir(dir_)
    stopped = _deploy_call(deploy_down, d, purge=purge)
    console.print(f"stopped: {', '.join(stopped) if stopped else 'nothing was running'}")


@main.command()
@_dir_option
@click.option("--json", "as_json", is_flag=True)
def inventory(dir_, as_json) -> None:
    """The members: addresses, kind, data directory; + initial primary, - initial backup."""
    from rich.table import Table

    from .deploy import deploy_dir, load

    dep = _deploy_call(load, deploy_dir(dir_))
    if as_json:
        click.echo(json.dumps(dep["members"], indent=2))
        return
    t = Table(title=f"mirror {dep['mirror']}")
    cols = ("", "member", "kind", "client address", "mirror address", "http address", "data dir")
    for col in cols:
        t.add_column(col)
    for m in dep["members"]:
        t.add_row(
            m["initial"],
            m["name"],
            m["kind"],
            m["client_address"],
            m["mirror_address"],
            m.get("http_address") or "-",  # deployments made before it had none
            m["data_dir"],
        )
    console.print(t)


@main.command()
@_dir_option
@click.option("--json", "as_json", is_flag=True)
@click.option("--table", is_flag=True, help="A table even when the output is not a terminal.")
@click.option("--watch", is_flag=True, help="Refresh every second until Ctrl-C.")
def ps(dir_, as_json, table, watch) -> None:
    """Live status of every member of the local mirror, under a line that says
    whether a failover would be safe now, and why."""
    from .deploy import deploy_dir
    from .deploy import ps as deploy_ps

    d = deploy_dir(dir_)
    if as_json or not (console.is_terminal or table or watch):
        click.echo(json.dumps(_ps_json(_deploy_call(deploy_ps, d)), indent=2, default=str))
        return
    if not watch:
        console.print(_ps_view(_deploy_call(deploy_ps, d)))
        return
    import time

    from rich.live import Live

    try:
        with Live(_ps_view(_deploy_call(deploy_ps, d)), console=console) as live:
            while True:
                time.sleep(1.0)
                live.update(_ps_view(_deploy_call(deploy_ps, d)))
    except KeyboardInterrupt:
        pass


def _ps_json(rows: list[dict]) -> dict:
    """`ps --json`: the header's verdict (failover_safe, why), then the rows."""
    from .deploy import failover_safety

    safe, why = failover_safety(rows)
    return {"failover_safe": safe, "why": why, "members": rows}


def _ps_view(rows: list[dict]):
    from rich.console import Group
    from rich.table import Table

    from .deploy import failover_safety

    safe, why = failover_safety(rows)
    head = f"[bold {'green' if safe else 'red'}]failover {'safe' if safe else 'NOT safe'}[/]: {why}"
    t = Table()
    cols = (
        "member",
        "address",
        "process",
        "health",
        "role",
        "status",
        "journal_transfer",
        "dejournaling",
        "lag",
        "epoch",
        "arbiter_link",
    )
    if any(r.get("kind") == "async-reporting" for r in rows):
        # Its copies: read-only, or read-write and not eligible to fail over.
        cols = (*cols, "copy")
    for col in cols:
        t.add_column({"role": "mirror role"}.get(col, col.replace("_", " ")))
    for r in rows:
        t.add_row(*("-" if r[c] is None else str(r[c]) for c in cols))  # never a blank cell
        # An async that follows several mirrors: one sub-row per mirror.
        followed = r.get("mirrors") or []
        if len(followed) > 1:
            for m in followed:
                t.add_row(*_mirror_cells(m, cols))
    return Group(head, t)


def _mirror_cells(m: dict, cols: tuple) -> list[str]:
    lag = m.get("lag_bytes")
    cells = {
        "member": f"  └ {m['mirror']}",
        "status": m.get("status", ""),
        "journal_transfer": m.get("journal_transfer", ""),
        "dejournaling": m.get("dejournaling", ""),
        "lag": "-"
        if lag is None
        else "caught up"
        if lag == 0
        else f"{lag} bytes, {m.get('lag_s', 0.0):.1f} s",
        "epoch": "" if m.get("epoch") is None else str(m["epoch"]),
        "role": f"from {m.get('connected_to') or '-'}",
        "copy": m.get("copy", ""),
    }
    return [cells.get(c, "") for c in cols]


@main.command()
@_dir_option
@click.argument("action", type=click.Choice(["pause", "resume"]))
@click.argument("member")
@click.option("--mirror", default=None, help="The mirror followed (default: the member's own).")
def dejournal(dir_, action, member, mirror) -> None:
    """Pause or resume dejournaling one mirror on an async MEMBER: the journal is
    still received and acknowledged; applying it waits, and catches up on resume."""
    from .deploy import dejournal as deploy_dejournal
    from .deploy import deploy_dir

    st = _deploy_call(deploy_dejournal, deploy_dir(dir_), member, action, mirror)
    console.print(
        f"{member} {st['mirror']}: dejournaling {st.get('dejournaling', '-')}, "
        f"received {st.get('received')}, applied {st.get('applied')}",
        markup=False,
        highlight=False,
    )


@main.command()
@_dir_option
@click.argument("member", required=False)
@click.option(
    "-c",
    "commands",
    default=None,
    help='ObjectScript, e.g. -c "Set ^x=1 Write ^x". Without it: a terminal, or stdin\'s lines.',
)
@click.option(
    "--local",
    "local_path",
    type=click.Path(file_okay=False),
    default=None,
    help="Use the instance directory PATH (irisrep.open) instead of a member.",
)
def session(dir_, member, commands, local_path) -> None:
    """ObjectScript on MEMBER (or --local PATH): -c "CMDS", else an interactive
    terminal (prompt DB>, readline editing and history, Halt or Ctrl-D to end), else
    the lines of stdin. Exit 1 on an error such as <PROTECT> (-c, stdin) or a lost
    connection."""
    if (member is None) == (local_path is None):
        raise click.UsageError("give MEMBER or --local PATH")
    if local_path is None:
        from .deploy import deploy_dir
        from .deploy import session as deploy_session

        sys.exit(_deploy_call(deploy_session, deploy_dir(dir_), member, commands))
    from pathlib import Path

    import irisrep

    from .constants import MIRROR_STATE_FILE_NAME, TERMINAL_HISTORY_FILE_NAME
    from .errors import IrisrepError
    from .terminal import run_session

    if (Path(local_path) / MIRROR_STATE_FILE_NAME).exists():
        # Opened alone, a member's database would recover and journal outside its
        # mirror (and beside the member's own process if it runs): never by accident.
        raise click.ClickException(
            f"{local_path} is a mirror member's instance directory: use irisrep session MEMBER"
        )
    try:
        db = irisrep.open(local_path)
    except (IrisrepError, OSError) as exc:
        raise click.ClickException(f"{local_path}: {exc}") from None
    try:
        status = run_session(
            db,
            commands=commands,
            name=db.name,
            history_file=Path(local_path) / TERMINAL_HISTORY_FILE_NAME,
        )
    finally:
        db.close()
    sys.exit(status)


def _member_command(op: str, doc: str):
    @main.command(name=op, help=doc)
    @_dir_option
    @click.argument("member")
    def _cmd(dir_, member, **kw) -> None:
        from .deploy import deploy_dir, member_op

        d = deploy_dir(dir_)
        st = _deploy_call(member_op, d, member, "stop-nofailover" if kw.get("nofailover") else op)
        if kw.get("restart"):
            st = _deploy_call(member_op, d, member, "start")
        state = f"running (pid {st['pid']})" if st.get("running") else "stopped"
        if op == "kill" and not st.get("running"):
            state = "killed (SIGKILL)"
        console.print(f"{member}: {state}")
        if kw.get("wait") and st.get("running") and member != "arbiter":
            _wait_caught_up(d, member)

    return _cmd


def _wait_caught_up(d, member: str) -> None:
    """Poll MEMBER's catch-up until it is caught up (a backup: Active, or primary) and
    show it as a bar of bytes received; fail after UP_TIMEOUT_S without progress."""
    import time

    from .deploy import UP_TIMEOUT_S, caught_up

    deadline = time.monotonic() + UP_TIMEOUT_S
    first_lag = None
    bar_cm = _progress(f"{member} catch-up", "bytes") if err_console.is_terminal else None
    bar = task = None
    if bar_cm is not None:
        bar, task = bar_cm.__enter__()
    try:
        while True:
            done, lag, why = _deploy_call(caught_up, d, member)
            if done:
                break
            if bar is not None:
                bar.update(task, state=why)  # e.g. "Waiting, lag unknown (not connected)"
            if lag:
                # Bytes caught up out of the most it was behind (unknown until connected).
                first_lag = lag if first_lag is None else max(first_lag, lag)
                if bar is not None:
                    bar.update(task, completed=first_lag - lag, total=first_lag)
            if time.monotonic() > deadline:
                raise click.ClickException(f"{member} has not caught up: {why}")
            time.sleep(0.2)
    finally:
        if bar_cm is not None:
            bar_cm.__exit__(None, None, None)
    console.print(f"{member}: caught up ({why})")


_member_command("start", "Start MEMBER (its agent runs `irisrep serve`).")
_member_command("kill", "Crash MEMBER: SIGKILL, no clean stop.")
stop = _member_command("stop", "Stop MEMBER cleanly (SIGTERM); --restart starts it again.")
_wait_option = click.option(
    "--wait",
    is_flag=True,
    help="Then wait until it has caught up (a backup: Active), with a progress bar.",
)
start = _wait_option(main.commands["start"])
stop = _wait_option(stop)
stop = click.option("--restart", is_flag=True, help="Start it again after the stop.")(stop)
stop = click.option(
    "--nofailover", is_flag=True, help="A primary stops without handing over to its backup."
)(stop)


@main.command()
@click.option("--listen", required=True, help="HOST:PORT to listen on, e.g. 127.0.0.1:7000.")
@click.option(
    "--state", "state_path", default=None, help="File where grants are kept (survive restarts)."
)
def arbiter(listen: str, state_path: str | None) -> None:
    """Run the arbiter: tells each failover member whether it still sees the other."""
    import logging
    import signal
    import threading

    from .arbiter import Arbiter
    from .config import parse_address

    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    try:
        addr = parse_address(listen)
    except ValueError as exc:  # ConfigError is a ValueError too
        raise click.BadParameter(f"{listen!r} {exc}", param_hint="'--listen'") from None
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with Arbiter(tuple(addr), state_path=state_path) as arb:
        console.print(f"irisrep arbiter listening on {arb.address[0]}:{arb.address[1]}")
        while not stop.wait(0.5):
            pass


@main.command()
@_dir_option
@click.option("--to", "to", default=None, help="The backup to hand over to (the Active one).")
@click.option(
    "--mirror",
    default=None,
    help="With several mirrors: the one to switch over (default: --to's, else the only one).",
)
@click.option("--dry-run", is_flag=True, help="Only print the eligibility report.")
@click.option("--json", "as_json", is_flag=True)
def switchover(dir_, to, mirror, dry_run, as_json) -> None:
    """Planned failover: the primary stops committing, its Active backup takes over
    (within one mirror: the other mirrors of the deployment go on as they are)."""
    from .deploy import deploy_dir, eligibility, load, pick_mirror
    from .deploy import switchover as deploy_switchover

    d = deploy_dir(dir_)
    if mirror is None and to is not None:
        mirror = _deploy_call(lambda: pick_mirror(load(d), None, to))
    rep = _deploy_call(eligibility, d, mirror)
    if as_json:
        click.echo(json.dumps(rep, indent=2))
    else:
        console.print(
            f"{rep['mirror']}: primary {rep['primary']} (epoch {rep.get('epoch')}, arbiter link "
            f"{rep.get('arbiter_link')}): "
            f"switchover {'possible' if rep['ok'] else 'NOT possible'}: {rep['why']}"
        )
        for c in rep["candidates"]:
            mark = "eligible" if c["eligible"] else "not eligible"
            console.print(
                f"  {c['member']}: {mark} ({c['why']}; epoch {c['epoch']}; "
                f"arbiter link {c['arbiter_link']})"
            )
    if dry_run:
        sys.exit(0 if rep["ok"] else 1)
    new = _deploy_call(deploy_switchover, d, to, rep["mirror"])
    console.print(f"switched over: {new} is primary")


@main.command()
@_dir_option
@click.argument("member")
@click.option("--dry-run", is_flag=True, help="Only print the position and what may be lost.")
def promote(dir_, member, dry_run) -> None:
    """Make MEMBER (a DR async, or a backup whose primary is gone) the primary, by hand.

    Prints first where its journal ends and what it may lack (bytes of the primary's
    journal it never received): anything committed there and not here is lost."""
    from .deploy import deploy_dir, promotion_report
    from .deploy import promote as deploy_promote

    d = deploy_dir(dir_)
    rep = _deploy_call(promotion_report, d, member)
    console.print(
        f"{member} ({rep['kind']}, {rep['role']}, epoch {rep['epoch']}): journal ends at "
        f"{rep['journal_end']}; the primary's last known end {rep['primary_end_last_known']}; "
        f"may lose {rep['may_lose_bytes']} bytes"
    )
    if dry_run:
        return
    epoch = _deploy_call(deploy_promote, d, member)
    console.print(f"{member} is primary in epoch {epoch}")


@main.command()
@_dir_option
@click.option("--json", "as_json", is_flag=True)
def history(dir_, as_json) -> None:
    """Each epoch: when, the old and the new primary, why, the journal position at the
    change, and the journal tails undone when a former primary rejoined."""
    from rich.table import Table

    from .deploy import deploy_dir, epochs
    from .deploy import history as deploy_history

    rows = _deploy_call(deploy_history, deploy_dir(dir_))
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    t = Table()
    for col in ("time", "epoch", "old primary", "new primary", "reason", "journal", "undone tail"):
        t.add_column(col)
    for e in epochs(rows):
        t.add_row(
            _when(e["time"]),
            str(e["epoch"]),
            e["old_primary"] or "-",
            e["new_primary"],
            e["reason"],
            str(e["journal_end"]),
            "; ".join(
                f"{u['member']} {u['from']}..{u['to']} ({u['records']} records)"
                for u in e["undone"]
            )
            or "-",
        )
    console.print(t)


def _when(t: float) -> str:
    import datetime

    return datetime.datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S")


@main.command()
@_dir_option
@click.option("--follow", "-f", is_flag=True, help="Then print each new event until Ctrl-C.")
@click.option("--member", "members", multiple=True, help="Only this member (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def events(dir_, follow, members, as_json) -> None:
    """What happened to each member, oldest first: starts and stops, role and epoch
    changes, the mirror core's decisions, backups becoming Active or dropped, links
    made and lost. With --follow, as it happens."""
    from .deploy import deploy_dir
    from .deploy import events as deploy_events

    it = _deploy_call(deploy_events, deploy_dir(dir_), follow=follow, members=members)
    try:
        for e in it:
            if as_json:
                click.echo(json.dumps(e, sort_keys=True))
            else:
                click.echo(f"{_when(e['time'])}  {e['member']:<8} {e['kind']:<12} {e['text']}")
            sys.stdout.flush()
    except KeyboardInterrupt:
        pass


# --- the cross-member check (datacheck.py; docs/datacheck.md) ----------------------------


def _datacheck_default(name: str):
    """A default from irisrep.constants, read when the command runs (imports stay lazy)."""

    def get():
        from . import constants

        return getattr(constants, name)

    return get


@main.command("check")
@_dir_option
@click.option("--against", required=True, help="The member to compare with (B).")
@click.option("--member", default=None, help="The member compared (A; default: the primary).")
@click.option(
    "--leaf-size",
    type=click.IntRange(min=1),
    default=_datacheck_default("DATACHECK_LEAF_NODES_DEFAULT"),
    help="Narrow a differing range down to at most this many nodes before listing them.",
)
@click.option(
    "--rechecks",
    type=click.IntRange(0, 20),
    default=_datacheck_default("DATACHECK_RECHECKS_DEFAULT"),
    help="Recheck rounds for differences (each after the copy caught up).",
)
@click.option(
    "--database",
    default=None,
    help="The database compared on both (default DB; e.g. SALES, or MIRROR2 on reporting asyncs).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def check_cmd(dir_, against, member, leaf_size, rechecks, database, as_json) -> None:
    """Compare two members' databases while both run and take writes (IRIS DataCheck):
    the primary (or --member) against --against, by hashing key ranges on both and
    narrowing differing ones down; differences are rechecked once the copy has caught
    up, and only those that persist are reported as unmatched. Exit 0 when everything
    matches, 1 with the report of what does not."""
    import contextlib

    from .constants import DATACHECK_LOCK_NODES_MAX
    from .datacheck import check_members
    from .deploy import DeployError, deploy_dir, load
    from .errors import IrisrepError

    if leaf_size > DATACHECK_LOCK_NODES_MAX:
        raise click.BadParameter(
            f"{leaf_size} is above {DATACHECK_LOCK_NODES_MAX}", param_hint="'--leaf-size'"
        )
    d = deploy_dir(dir_)
    names = [m["name"] for m in _deploy_call(load, d)["members"]]
    for opt, who in (("--against", against), ("--member", member)):
        if who is not None and who not in names:
            raise click.BadParameter(
                f"no member {who!r} in {d} (members: {', '.join(names)})", param_hint=f"'{opt}'"
            )
    if member == against:
        raise click.BadParameter(
            f"{member} cannot be checked against itself", param_hint="'--against'"
        )
    bar = progress = None
    if not as_json and err_console.is_terminal:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        bar = Progress(
            TextColumn("[bold]check[/]"),
            BarColumn(),
            TextColumn("{task.completed} ranges checked, {task.fields[nodes]} nodes"),
            TimeElapsedColumn(),
            console=err_console,
            transient=True,
        )
        task = bar.add_task("check", total=None, nodes=0)

        def progress(ranges: int, nodes: int) -> None:
            bar.update(task, completed=ranges, nodes=nodes)

    try:
        with bar if bar is not None else contextlib.nullcontext():
            report = check_members(
                d,
                against,
                member,
                database=database,
                leaf_nodes=leaf_size,
                rechecks=rechecks,
                progress=progress,
            )
    except DeployError as exc:
        raise click.ClickException(str(exc)) from None
    except (IrisrepError, OSError) as exc:
        raise click.ClickException(f"check stopped: {exc}") from None
    if as_json:
        click.echo(json.dumps(report.as_dict(), indent=2))
    else:
        for line in report.lines():
            console.print(line, markup=False, highlight=False)
    sys.exit(0 if report.ok else 1)


@main.command()
@click.option("--clients", default=None, help="Client counts, e.g. 1,4,16,64 (the default).")
@click.option("--seconds", type=float, default=None, help="Seconds per point (2).")
@click.option("--repeat", type=int, default=None, help="Repeats; medians reported (3).")
@click.option(
    "--systems",
    default=None,
    help="Subset of irisrep-durable,irisrep-received,postgres-on,postgres-remote_write,redis.",
)
@click.option("--workloads", default=None, help="one,tx10 (the default) or one of them.")
@click.option("--embedded/--no-embedded", default=True, help="Also the in-process primary.")
@click.option("--failover-runs", type=int, default=None, help="Failover runs each (5; 0: none).")
@click.option("--catchup-bytes", default=None, help="Journal/WAL a copy misses (1G; 0: none).")
@click.option("--client-mode", type=click.Choice(["threads", "processes"]), default=None)
@click.option("--install-peers", is_flag=True, help="apt-get install postgresql redis-server.")
@click.option("--json", "json_path", default="irisrep-bench.json", show_default=True)
@click.option("--plot", "plot_path", default="irisrep-bench.png", show_default=True)
@click.option("--smoke", is_flag=True, help="Seconds long: irisrep only, no peers.")
@click.option("--dir", "dir_", default=None, help="Parent of the scratch directory (.).")
@click.option("--keep", is_flag=True, help="Keep the scratch directory.")
def bench(**opts) -> None:
    """Commit latency, throughput, failover and catch-up beside PostgreSQL and Redis.

    Starts each system on 127.0.0.1 itself (a primary and one synchronous copy),
    prints the table, writes the JSON and the plot (docs/bench.md).
    """
    from .benchcmd import BenchNotFound, argv_of, run

    try:
        sys.exit(run(argv_of(**opts)))
    except BenchNotFound as exc:
        raise click.ClickException(str(exc)) from None


if __name__ == "__main__":
    main()
