"""The monorepo's import rules, checked the same way in every package's tests.

    violations(Path("packages/galvatron-cost/src"), forbidden_imports("galvatron_cost"))   # [] when clean
    loaded_modules("galvatron_cost")         # top-level modules a fresh interpreter holds after importing it all

The four tools share only documents: none imports another. galvatron-contracts imports no tool, no torch and
no galvatron-models; galvatron-models imports no tool; galvatron-cost and galvatron-search import no torch (nor
galvatron-models, which is torch).
"""
from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

TOOLS = ("galvatron_probe", "galvatron_cost", "galvatron_search", "galvatron_run")
TORCH_FREE = ("galvatron_cost", "galvatron_search", "galvatron_contracts")


def forbidden_imports(package: str) -> tuple[str, ...]:
    """Top-level modules ``package`` (an import name) must never import."""
    others = tuple(t for t in TOOLS if t != package)
    if package in TORCH_FREE:
        others += ("torch", "galvatron_models")
    return others


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


def violations(root: Path, forbidden: tuple[str, ...]) -> list[str]:
    """'file:line: imports x' for every import under ``root`` of a module in ``forbidden``."""
    out = []
    for path in sorted(Path(root).rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        for line, module in imported_modules(path.read_text(encoding="utf-8")):
            if module.split(".")[0] in forbidden:
                out.append(f"{path.relative_to(root).as_posix()}:{line}: imports {module}")
    return out


def loaded_modules(package: str, timeout_s: float = 120) -> set[str]:
    """Top-level modules in ``sys.modules`` of a fresh interpreter after importing every module of ``package``."""
    script = (
        "import importlib, pkgutil, sys\n"
        f"import {package} as p\n"
        "for m in pkgutil.walk_packages(p.__path__, p.__name__ + '.'):\n"
        "    if not m.name.endswith('__main__'):\n"
        "        importlib.import_module(m.name)\n"
        "print(' '.join(sorted({n.split('.')[0] for n in sys.modules})))\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=timeout_s, env=env)
    if done.returncode:
        raise RuntimeError(f"importing {package} failed:\n{done.stderr}")
    return set(done.stdout.split())


def package_checks(package: str, root: Path, alone_in_env: str) -> list[str]:
    """Every rule broken by the installed ``package`` whose checkout is ``root`` (its src/ and tests/): forbidden
    imports in the files, forbidden modules loaded by importing it, and, inside the tox environment named
    ``alone_in_env`` (which installs it without the other tools), another tool installed beside it."""
    import importlib.util

    forbidden = forbidden_imports(package)
    broken = [f"{part}/{v}" for part in ("src", "tests") for v in violations(Path(root) / part, forbidden)]
    loaded = loaded_modules(package)
    if package not in loaded:
        broken.append(f"importing {package} did not load it")
    broken += [f"importing {package} loads {m}" for m in sorted(loaded & set(forbidden))]
    if os.environ.get("TOX_ENV_NAME") == alone_in_env:
        broken += [f"{t} is installed beside {package}" for t in TOOLS
                   if t != package and importlib.util.find_spec(t) is not None]
    return broken
