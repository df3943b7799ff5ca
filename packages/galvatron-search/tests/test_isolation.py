"""galvatron-search imports no other tool (the tools share only documents), in source and tests, and no torch."""
import importlib.util
import os
from pathlib import Path

import pytest

from galvatron_contracts.isolation import TOOLS, forbidden_imports, loaded_modules, violations

PACKAGE = "galvatron_search"
HERE = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("part", ["src", "tests"])
def test_no_forbidden_import(part):
    found = violations(HERE / part, forbidden_imports(PACKAGE))
    assert found == [], "\n".join(found)


def test_importing_every_module_loads_nothing_forbidden():
    loaded, forbidden = loaded_modules(PACKAGE), set(forbidden_imports(PACKAGE))
    assert PACKAGE in loaded and not loaded & forbidden, sorted(loaded & forbidden)


@pytest.mark.skipif(os.environ.get("TOX_ENV_NAME") != "search", reason="only tox -e search installs this package alone")
def test_no_other_tool_is_installed_here():
    assert [t for t in TOOLS if t != PACKAGE and importlib.util.find_spec(t) is not None] == []
