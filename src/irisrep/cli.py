"""The `irisrep` command line (click + rich).

Owns argument parsing and presentation only: every command calls the library and
prints what it returns, as a rich table on a terminal or JSON with `--json`. Exit
status: 0 success, 1 the check or command found a problem, 2 bad usage (click).
"""

from __future__ import annotations

import json
import sys

import click
from rich.console import Console

from . import __version__

# soft_wrap: piped output keeps one line per record (grep-able), whatever the width.
console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="irisrep")
def main() -> None:
    """irisrep: IRIS-style globals, journaling and mirroring for Python."""


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


if __name__ == "__main__":
    main()
