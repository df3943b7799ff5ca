"""The package copies of contracts/ and schemas/ are identical to the source, and drift is detected.

    python tools/sync_contracts.py --check
"""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("probe", "cost", "search", "run")


def check(root):
    return subprocess.run([sys.executable, str(root / "tools" / "sync_contracts.py"), "--check"],
                          capture_output=True, text=True)


def test_the_repository_has_no_drift():
    done = check(ROOT)
    assert done.returncode == 0, done.stderr


@pytest.fixture
def tree(tmp_path):
    """A copy of the parts of the repository sync_contracts.py reads and writes."""
    for part in ("tools", "contracts", "schemas"):
        shutil.copytree(ROOT / part, tmp_path / part, ignore=shutil.ignore_patterns("__pycache__", "tests"))
    for pkg in PACKAGES:
        src = ROOT / "packages" / f"galvatron-{pkg}" / "src" / f"galvatron_{pkg}" / "_contracts"
        shutil.copytree(src, tmp_path / src.relative_to(ROOT), ignore=shutil.ignore_patterns("__pycache__"))
        for name in ("test_contracts.py", "test_isolation.py"):
            test = ROOT / "packages" / f"galvatron-{pkg}" / "tests" / name
            (tmp_path / test.relative_to(ROOT)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(test, tmp_path / test.relative_to(ROOT))
    assert check(tmp_path).returncode == 0
    return tmp_path


def copy_of(tree, pkg):
    return tree / "packages" / f"galvatron-{pkg}" / "src" / f"galvatron_{pkg}" / "_contracts"


@pytest.mark.parametrize("pkg", PACKAGES)
def test_an_edited_package_schema_is_detected(tree, pkg):
    target = copy_of(tree, pkg) / "schemas" / "plan" / "1.0.schema.json"
    target.write_text(target.read_text().replace('"minimum": 1', '"minimum": 2', 1))
    done = check(tree)
    assert done.returncode == 1
    assert f"galvatron_{pkg}/_contracts/schemas/plan/1.0.schema.json: differs from its source" in done.stderr


def test_an_edited_library_a_missing_and_an_extra_file_are_detected(tree):
    (copy_of(tree, "cost") / "documents.py").write_text("# edited\n")
    (copy_of(tree, "search") / "models.py").unlink()
    (copy_of(tree, "run") / "schemas" / "plan" / "1.1.schema.json").write_text("{}")
    lines = check(tree).stderr
    assert "galvatron_cost/_contracts/documents.py: differs from its source" in lines
    assert "galvatron_search/_contracts/models.py: missing" in lines
    assert "galvatron_run/_contracts/schemas/plan/1.1.schema.json: not in the source" in lines


def test_a_changed_source_schema_without_a_sync_is_detected_and_sync_repairs_it(tree):
    source = tree / "schemas" / "model-spec" / "1.0.schema.json"
    source.write_text(source.read_text().replace("Preset name", "The preset name"))
    done = check(tree)
    assert done.returncode == 1 and done.stderr.count("differs from its source") == len(PACKAGES)
    subprocess.run([sys.executable, str(tree / "tools" / "sync_contracts.py")], check=True)
    assert check(tree).returncode == 0


def test_an_edited_package_copy_of_the_shared_tests_is_detected(tree):
    (tree / "packages" / "galvatron-search" / "tests" / "test_isolation.py").write_text("# edited\n")
    (tree / "packages" / "galvatron-probe" / "tests" / "test_contracts.py").unlink()
    lines = check(tree).stderr
    assert "galvatron-search/tests/test_isolation.py: differs from its source" in lines
    assert "galvatron-probe/tests/test_contracts.py: missing" in lines
