"""`irisrep bench`: irisrep beside PostgreSQL and Redis, from a source checkout.

Owns finding and running the comparison driver, bench/bench_peers.py (with its
systems in bench/peers/): it lives beside the package in a checkout, not in the
installed package, so this looks for it in $IRISREP_BENCH_DIR, then beside the
imported irisrep's source tree (an editable install), then under the current
directory, and says where to get it when none has it. The driver runs in this
process (its own argument parser gets the options as given) and owns everything
else: starting and stopping the systems, the table, the JSON and the plot.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

DRIVER = "bench_peers.py"


class BenchNotFound(Exception):
    """No bench/bench_peers.py to run (irisrep was installed without its checkout)."""


def bench_dir() -> Path:
    """The bench/ directory holding the driver."""
    here = Path(__file__).resolve()
    candidates = []
    if os.environ.get("IRISREP_BENCH_DIR"):
        candidates.append(Path(os.environ["IRISREP_BENCH_DIR"]))
    candidates += [here.parents[2] / "bench", Path.cwd() / "bench"]
    for c in candidates:
        if (c / DRIVER).is_file() and (c / "peers" / "__init__.py").is_file():
            return c.resolve()
    raise BenchNotFound(
        "irisrep bench needs the source checkout's bench/ directory (bench_peers.py and "
        "peers/): run it from the checkout, or set IRISREP_BENCH_DIR; looked in "
        + ", ".join(str(c) for c in candidates)
    )


def run(argv: list[str]) -> int:
    """Run bench/bench_peers.py's main with `argv`; its exit status."""
    d = bench_dir()
    if str(d) not in sys.path:
        sys.path.insert(0, str(d))
    spec = importlib.util.spec_from_file_location("bench_peers", d / DRIVER)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_peers"] = mod
    spec.loader.exec_module(mod)
    return int(mod.main(argv) or 0)


def argv_of(
    *,
    clients: str | None,
    seconds: float | None,
    repeat: int | None,
    systems: str | None,
    workloads: str | None,
    embedded: bool,
    failover_runs: int | None,
    catchup_bytes: str | None,
    client_mode: str | None,
    install_peers: bool,
    json_path: str | None,
    plot_path: str | None,
    smoke: bool,
    dir_: str | None,
    keep: bool,
) -> list[str]:
    """The driver's arguments for the click options given (None: its default)."""
    out: list[str] = []
    for flag, v in (
        ("--clients", clients),
        ("--seconds", seconds),
        ("--repeat", repeat),
        ("--systems", systems),
        ("--workloads", workloads),
        ("--failover-runs", failover_runs),
        ("--catchup-bytes", catchup_bytes),
        ("--client-mode", client_mode),
        ("--json", json_path),
        ("--plot", plot_path),
        ("--dir", dir_),
    ):
        if v is not None:
            out += [flag, str(v)]
    for flag, on in (
        ("--no-embedded", not embedded),
        ("--install-peers", install_peers),
        ("--smoke", smoke),
        ("--keep", keep),
    ):
        if on:
            out.append(flag)
    return out
