"""galvatron-run follows the monorepo's import rules (galvatron_contracts.isolation): no other tool, in
its source, its tests and what importing it loads; `tox -e run` installs no other tool beside it."""
from pathlib import Path

from galvatron_contracts.isolation import package_checks


def test_import_rules():
    assert package_checks("galvatron_run", Path(__file__).resolve().parents[1], alone_in_env="run") == []
