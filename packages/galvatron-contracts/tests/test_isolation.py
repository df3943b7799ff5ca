"""The import rules themselves (galvatron_contracts.isolation), and galvatron-contracts following them."""
import importlib.util
from pathlib import Path

from galvatron_contracts.isolation import forbidden_imports, loaded_modules, package_checks, violations

SRC = Path(__file__).resolve().parents[1] / "src"


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


def test_the_rules():
    assert set(forbidden_imports("galvatron_probe")) == {"galvatron_cost", "galvatron_search", "galvatron_run"}
    assert {"torch", "galvatron_models", "galvatron_probe"} <= set(forbidden_imports("galvatron_search"))
    assert "galvatron_search" not in forbidden_imports("galvatron_search")


def test_contracts_import_no_tool_and_no_torch():
    assert violations(SRC, forbidden_imports("galvatron_contracts")) == []
    loaded = loaded_modules("galvatron_contracts")
    assert "galvatron_contracts" in loaded and loaded.isdisjoint(forbidden_imports("galvatron_contracts"))


def test_schemas_ship_with_the_package():
    from galvatron_contracts.documents import known_versions

    kinds = {"hardware-profile", "model-profile", "cost-model", "plan", "run-report", "model-spec"}
    assert kinds <= set(known_versions())
    assert importlib.util.find_spec("galvatron_contracts") is not None


def test_package_checks_name_each_broken_rule(tmp_path, monkeypatch):
    for part in ("src", "tests"):
        (tmp_path / part).mkdir()
    (tmp_path / "tests" / "test_x.py").write_text("import galvatron_run\n")
    monkeypatch.setenv("TOX_ENV_NAME", "contracts")
    broken = package_checks("galvatron_contracts", tmp_path, alone_in_env="contracts")
    installed = [t for t in ("galvatron_probe", "galvatron_cost", "galvatron_search", "galvatron_run")
                 if importlib.util.find_spec(t) is not None]
    assert broken == ["tests/test_x.py:1: imports galvatron_run"] + [
        f"{t} is installed beside galvatron_contracts" for t in installed]
