"""The linters run as ordinary tests (the same commands as `make lint`).

`ruff check`, `ruff format --check` and `cython-lint` over the checkout; each test
asserts exit status 0 and shows the linter's output when it fails. They need the
source tree: when the tests run against an installed package elsewhere (no
pyproject.toml next to tests/), they skip.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(
    not (ROOT / "pyproject.toml").exists(),
    reason=f"{ROOT} is not the irisrep source tree (no pyproject.toml)",
)

PY_TARGETS = ["src", "tests", "bench"]


def _tool(name: str) -> list[str]:
    """The linter as a command: next to this interpreter, on PATH, or as a module."""
    here = Path(sys.executable).parent / name
    if here.exists():
        return [str(here)]
    found = shutil.which(name)
    if found:
        return [found]
    module = name.replace("-", "_")
    if name == "ruff":
        try:
            from ruff.__main__ import find_ruff_bin
        except ImportError:
            pytest.fail("ruff is not installed (it is a test extra: pip install -e .[test])")
        return [find_ruff_bin()]
    try:
        __import__(module)
    except ImportError:
        pytest.fail(f"{name} is not installed (it is a test extra: pip install -e .[test])")
    return [sys.executable, "-m", module]


def _run(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    output = (proc.stdout + proc.stderr).strip()
    assert proc.returncode == 0, f"$ {' '.join(cmd)}  (exit {proc.returncode})\n{output}"


def _targets(names: list[str]) -> list[str]:
    return [n for n in names if (ROOT / n).exists()]


def test_ruff_check():
    _run([*_tool("ruff"), "check", "--no-cache", *_targets(PY_TARGETS)])


def test_ruff_format():
    _run([*_tool("ruff"), "format", "--check", "--no-cache", *_targets(PY_TARGETS)])


def test_cython_lint():
    # The same file set as `make lint` (src/irisrep/*.pyx *.pxi *.pxd), globbed here
    # because there is no shell.
    pkg = ROOT / "src" / "irisrep"
    files = sorted(
        str(p.relative_to(ROOT))
        for pattern in ("*.pyx", "*.pxi", "*.pxd")
        for p in pkg.glob(pattern)
    )
    assert files, f"no Cython sources under {pkg}"
    _run([*_tool("cython-lint"), *files])
