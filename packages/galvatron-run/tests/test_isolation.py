"""This package imports no sibling package (not even in tests); galvatron-cost and galvatron-search import no torch.

    pytest -q tests/test_isolation.py

The packages share only JSON documents (schemas/). The same file runs in every package; it finds its own package
from its location (packages/galvatron-<x>/tests/). Source: contracts/package_tests/, copied by tools/sync_contracts.py.
"""
import ast
import importlib.util
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parents[1]
PACKAGE = HERE.name.replace("-", "_")  # galvatron-cost -> galvatron_cost
ALL = ("galvatron_probe", "galvatron_cost", "galvatron_search", "galvatron_run")
SIBLINGS = tuple(p for p in ALL if p != PACKAGE)
NO_TORCH = PACKAGE in ("galvatron_cost", "galvatron_search")
FORBIDDEN = SIBLINGS + (("torch",) if NO_TORCH else ())


def imported_modules(source: str) -> list[tuple[int, str]]:
    """(line, module) for every import statement and every importlib.import_module / __import__ of a literal."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name in ("import_module", "__import__"):
                found.append((node.lineno, node.args[0].value))
    return found


def violations(root: Path, forbidden=FORBIDDEN) -> list[str]:
    out = []
    for path in sorted(root.rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        for line, module in imported_modules(path.read_text(encoding="utf-8")):
            if module.split(".")[0] in forbidden:
                out.append(f"{path.relative_to(root).as_posix()}:{line}: imports {module}")
    return out


def test_the_scanner_finds_every_form_of_import(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "bad.py").write_text(
        "import os, galvatron_x.y as z\n"
        "from galvatron_x import thing\n"
        "def f():\n"
        "    import importlib\n"
        "    return importlib.import_module('galvatron_x.sub'), __import__('galvatron_x')\n"
        "from . import galvatron_x\n"  # a relative import of a local module is fine
        "import galvatron_xy\n")
    assert violations(tmp_path, ("galvatron_x",)) == [
        "pkg/bad.py:1: imports galvatron_x.y", "pkg/bad.py:2: imports galvatron_x",
        "pkg/bad.py:5: imports galvatron_x.sub", "pkg/bad.py:5: imports galvatron_x"]


@pytest.mark.parametrize("part", ["src", "tests"])
def test_no_sibling_import(part):
    found = violations(HERE / part, SIBLINGS)
    assert found == [], "packages share only JSON documents:\n" + "\n".join(found)


@pytest.mark.skipif(not NO_TORCH, reason="probe and run are built on torch")
@pytest.mark.parametrize("part", ["src", "tests"])
def test_no_torch_import(part):
    found = violations(HERE / part, ("torch",))
    assert found == [], f"{PACKAGE} must not depend on torch:\n" + "\n".join(found)


def test_importing_every_module_loads_no_sibling_and_no_forbidden_dependency():
    """The dynamic check: import the whole installed package in a fresh interpreter and look at sys.modules."""
    spec = importlib.util.find_spec(PACKAGE)
    assert spec is not None and spec.submodule_search_locations
    script = (
        "import importlib, pkgutil, sys\n"
        f"import {PACKAGE} as p\n"
        "for m in pkgutil.walk_packages(p.__path__, p.__name__ + '.'):\n"
        "    if not m.name.endswith('__main__'):\n"
        "        importlib.import_module(m.name)\n"
        "print(' '.join(sorted({n.split('.')[0] for n in sys.modules})))\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    loaded = set(done.stdout.split())
    assert PACKAGE in loaded
    assert loaded.isdisjoint(FORBIDDEN), sorted(loaded & set(FORBIDDEN))
    assert any(m.name for m in pkgutil.iter_modules(spec.submodule_search_locations))


@pytest.mark.skipif("TOX_ENV_NAME" not in os.environ or os.environ.get("TOX_ENV_NAME") == "integration",
                    reason="only a per-package tox environment installs this package alone")
def test_siblings_are_not_installed_here():
    assert [p for p in SIBLINGS if importlib.util.find_spec(p) is not None] == []
