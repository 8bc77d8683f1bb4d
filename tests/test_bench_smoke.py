"""Every benchmark script runs, tiny, so the benchmarks cannot rot.

Figures are not checked here (speed is measured in bench/, never asserted in
tests): only that each script runs to the end and writes its JSON.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"

CASES = {
    "bench_globals.py": ["--n", "2000"],
    "bench_keycodec.py": ["--n", "2000", "--repeat", "1"],
    "bench_journal_codec.py": ["--frames", "4", "--repeat", "1"],
    "bench_journal.py": ["--quick", "--seconds", "0.2", "--latency-n", "20", "--threads", "1,4"],
    "bench_engine_commit.py": ["--commits", "20", "--seconds", "0.2"],
    "bench_wij.py": ["--sizes", "64", "--repeat", "1"],
    "bench_commit.py": ["--seconds=0.2", "--clients=1,2", "--floor-n=20", "--qos-ms=2000"]
    + ["--configs=alone,durable+async"],
    "bench_failover.py": ["--runs=1", "--floor-n=20", "--warmup-s=0.1", "--after-s=0.05"],
    "bench_backup.py": ["--mb", "2", "--repeat", "1"],
    "profile_commit_hops.py": ["--commits", "20", "--floor-n", "20"],
}


@pytest.mark.skipif(not BENCH.is_dir(), reason="bench/ is not beside the tests")
@pytest.mark.parametrize("script", sorted(CASES))
def test_bench_script_runs(tmp_path, script):
    out = tmp_path / "out.json"
    proc = subprocess.run(
        [sys.executable, str(BENCH / script), *CASES[script], "--json", str(out)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ),
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert json.loads(out.read_text())


@pytest.mark.skipif(not (BENCH / "bench_peers.py").is_file(), reason="no bench/bench_peers.py")
def test_irisrep_bench_smoke(tmp_path):
    """`irisrep bench --smoke`: irisrep only (no peers), every part of the comparison
    run tiny: the table's points, failover, catch-up, the JSON (and the plot when
    matplotlib is there)."""
    out, png = tmp_path / "bench.json", tmp_path / "bench.png"
    env = dict(os.environ, IRISREP_BENCH_DIR=str(BENCH))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "irisrep",
            "bench",
            "--smoke",
            "--json",
            str(out),
            "--plot",
            str(png),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads(out.read_text())
    for name in ("irisrep-durable", "embedded-durable"):
        rows = res["systems"][name]["median"]
        assert {(r["workload"], r["clients"]) for r in rows} == {
            (w, n) for w in ("one", "tx10") for n in (1, 2)
        }
        assert all(r["commits_s"] > 0 and r["p50_us"] > 0 for r in rows)
    assert res["failover"]["irisrep"]["crash_takeover_s"]["n"] == 1
    assert res["catchup"]["irisrep"]["active_s"] > 0
    assert "postgres-on" not in res["systems"] and "redis" not in res["systems"]
    assert "irisrep-durable" in proc.stdout
