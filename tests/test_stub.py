"""`src/irisrep/_core.pyi` and the compiled `irisrep._core` name the same things.

The stub is parsed with `ast` (never imported) and compared with the live module:

- every public name of `dir(irisrep._core)` (no leading underscore) is declared at the
  top level of the stub, and every public top-level name of the stub exists at runtime;
- EXCEPT names that `_core` merely re-exports because a topic file imports them: an
  error class that *is* the class of `irisrep.errors` with that name, or a limit that
  equals the constant of `irisrep.constants` with that name. They are not `_core`'s
  API (import them from `irisrep.errors` / `irisrep.constants`), so the stub leaves
  them out and this test insists that it does;
- for each class: the public methods and attributes match both ways, and the protocol
  dunders (`__getitem__`, `__enter__`, ...) the class implements are declared;
- for each function and method whose runtime signature can be inspected (Cython
  functions can; slot wrappers such as `__init__` of a cdef class cannot): the
  parameter names, in order, and which of them have defaults, are the same.

If `mypy` happens to be installed, `mypy.stubtest` runs as well (it is not part of the
test extras, so that test usually skips).
"""

from __future__ import annotations

import ast
import inspect
import os
import subprocess
import sys
from pathlib import Path

import pytest

import irisrep
import irisrep._core as core
from irisrep import constants, errors

STUB = Path(irisrep.__file__).with_name("_core.pyi")

# Dunders that make a protocol work (`g[k]`, `with f:` ...): if the class defines one,
# the stub must declare it. `__delitem__` is left out on purpose: Cython exposes it on
# every class with `__setitem__` (one C slot serves both), where it only raises.
PROTOCOL_DUNDERS = {
    "__getitem__",
    "__setitem__",
    "__contains__",
    "__enter__",
    "__exit__",
    "__iter__",
    "__next__",
    "__len__",
    "__call__",
    "__bool__",
}


def _is_reexport(name: str, obj: object) -> bool:
    """True for an error class or a limit that _core only imports from elsewhere."""
    if inspect.isclass(obj) and getattr(errors, name, None) is obj:
        return True
    if isinstance(obj, (int, float, str, bytes, tuple)) and hasattr(constants, name):
        return getattr(constants, name) == obj
    return False


def _public(names) -> set[str]:
    return {n for n in names if not n.startswith("_")}


@pytest.fixture(scope="module")
def stub() -> ast.Module:
    assert STUB.exists(), f"{STUB} is missing (it ships with the package: package-data)"
    return ast.parse(STUB.read_text(encoding="utf-8"), filename=str(STUB))


def _top_level(tree: ast.Module) -> dict[str, ast.AST]:
    out: dict[str, ast.AST] = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out[node.name] = node
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            out[node.target.id] = node
        elif isinstance(node, ast.Assign):
            for t in node.targets:
                if isinstance(t, ast.Name):
                    out[t.id] = node
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            # Only `import x as x` / `from m import x as x` re-export from a stub.
            for alias in node.names:
                if alias.asname is not None and alias.asname == alias.name.split(".")[-1]:
                    out[alias.asname] = node
    return out


def _class_members(cls: ast.ClassDef) -> dict[str, ast.AST]:
    out: dict[str, ast.AST] = {}
    for node in cls.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            out[node.name] = node
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            out[node.target.id] = node
    return out


def _runtime_public() -> set[str]:
    return {n for n in _public(dir(core)) if not _is_reexport(n, getattr(core, n))}


def test_every_public_runtime_name_is_in_the_stub(stub):
    declared = set(_top_level(stub))
    missing = sorted(_runtime_public() - declared)
    assert not missing, f"irisrep._core exports names _core.pyi does not declare: {missing}"


def test_every_public_stub_name_exists_at_runtime(stub):
    declared = _public(_top_level(stub))
    extra = sorted(declared - _runtime_public())
    assert not extra, f"_core.pyi declares names irisrep._core does not export: {extra}"


def test_reexports_are_left_out_of_the_stub(stub):
    reexports = {n for n in _public(dir(core)) if _is_reexport(n, getattr(core, n))}
    # The rule above must stay a narrow one: only errors and limits, never API.
    for n in reexports:
        obj = getattr(core, n)
        assert (inspect.isclass(obj) and issubclass(obj, errors.IrisrepError)) or n.isupper(), n
    leaked = sorted(reexports & set(_top_level(stub)))
    assert not leaked, f"import these from irisrep.errors/irisrep.constants instead: {leaked}"


def _stub_classes(stub) -> list[ast.ClassDef]:
    return [n for n in _top_level(stub).values() if isinstance(n, ast.ClassDef)]


def test_class_members_match(stub):
    problems = []
    for cls_node in _stub_classes(stub):
        runtime = getattr(core, cls_node.name, None)
        if runtime is None:
            continue  # reported by test_every_public_stub_name_exists_at_runtime
        members = _class_members(cls_node)
        want = _public(dir(runtime))
        have = _public(members)
        if want - have:
            problems.append(f"{cls_node.name}: not in the stub: {sorted(want - have)}")
        if have - want:
            problems.append(f"{cls_node.name}: not at runtime: {sorted(have - want)}")
        own = set(vars(runtime))
        dunders_missing = sorted((PROTOCOL_DUNDERS & own) - set(members))
        if dunders_missing:
            problems.append(f"{cls_node.name}: protocol methods not in the stub: {dunders_missing}")
        dunders_extra = sorted(
            n for n in members if n.startswith("__") and n != "__init__" and n not in own
        )
        if dunders_extra:
            problems.append(f"{cls_node.name}: stub dunders not at runtime: {dunders_extra}")
    assert not problems, "\n".join(problems)


POSITIONAL = "<positional-only>"


def _stub_params(fn: ast.FunctionDef) -> list[tuple[str, bool]]:
    """(name, has a default) of every named parameter, in order."""
    a = fn.args
    positional = a.posonlyargs + a.args
    n_plain = len(positional) - len(a.defaults)
    n_posonly = len(a.posonlyargs)
    # A positional-only parameter's name is not part of the interface.
    out = [
        (POSITIONAL if i < n_posonly else arg.arg, i >= n_plain) for i, arg in enumerate(positional)
    ]
    if a.vararg is not None:
        out.append(("*" + a.vararg.arg, False))
    out += [(arg.arg, d is not None) for arg, d in zip(a.kwonlyargs, a.kw_defaults, strict=True)]
    if a.kwarg is not None:
        out.append(("**" + a.kwarg.arg, False))
    return out


def _runtime_params(obj) -> list[tuple[str, bool]] | None:
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return None  # a slot wrapper: no signature to compare
    out = []
    for p in sig.parameters.values():
        if p.kind is p.VAR_POSITIONAL:
            out.append(("*" + p.name, False))
        elif p.kind is p.VAR_KEYWORD:
            out.append(("**" + p.name, False))
        elif p.kind is p.POSITIONAL_ONLY:
            out.append((POSITIONAL, p.default is not p.empty))
        else:
            out.append((p.name, p.default is not p.empty))
    if [n for n, _ in out] == [POSITIONAL, "*args", "**kwargs"]:
        return None  # the generic signature of a cdef class's __init__
    return out


def _functions(stub):
    """(qualified name, stub FunctionDef, runtime object) of every def in the stub."""
    for name, node in _top_level(stub).items():
        if isinstance(node, ast.FunctionDef) and hasattr(core, name):
            yield name, node, getattr(core, name)
        elif isinstance(node, ast.ClassDef) and hasattr(core, name):
            cls = getattr(core, name)
            for mname, m in _class_members(node).items():
                if not isinstance(m, ast.FunctionDef) or not hasattr(cls, mname):
                    continue
                decorators = {ast.unparse(d) for d in m.decorator_list}
                if "property" in decorators:
                    continue
                yield f"{name}.{mname}", m, getattr(cls, mname)


def test_signatures_match(stub):
    problems = []
    checked = 0
    for qualname, node, obj in _functions(stub):
        runtime = _runtime_params(obj)
        if runtime is None:
            continue
        checked += 1
        declared = _stub_params(node)
        if declared != runtime:
            problems.append(f"{qualname}: stub {declared} != runtime {runtime}")
    assert checked >= 20, f"only {checked} signatures could be compared"
    assert not problems, "\n".join(problems)


def test_stub_is_valid_python_and_ships_with_py_typed():
    compile(STUB.read_text(encoding="utf-8"), str(STUB), "exec", flags=ast.PyCF_ONLY_AST)
    assert STUB.with_name("py.typed").exists(), "PEP 561 marker src/irisrep/py.typed missing"


def test_mypy_stubtest(tmp_path):
    pytest.importorskip("mypy.stubtest", reason="mypy is not installed (not a test extra)")
    # Allowed differences: Cython's pickling helpers and module dunders, and the
    # re-exported errors and limits (see the module docstring).
    allow = [r"irisrep\._core\.__\w+__", r"irisrep\._core\.\w+\.__(reduce|setstate)_cython__"]
    # stubtest already ignores classes defined in another module (the errors).
    allow += [
        rf"irisrep\._core\.{n}"
        for n in _public(dir(core))
        if _is_reexport(n, getattr(core, n)) and not inspect.isclass(getattr(core, n))
    ]
    allowlist = tmp_path / "allowlist.txt"
    allowlist.write_text("\n".join(allow) + "\n")
    env = dict(os.environ)
    src = str(Path(irisrep.__file__).parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [src, env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "-m", "mypy.stubtest", "irisrep._core", "--allowlist", str(allowlist)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
