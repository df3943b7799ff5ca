"""Copy the single source of the contracts into every package, or check that the copies match.

    python tools/sync_contracts.py          # write packages/galvatron-*/src/galvatron_*/_contracts/
    python tools/sync_contracts.py --check  # exit 1, listing every differing file, if a copy drifted

Source of truth: schemas/<kind>/<MAJOR.MINOR>.schema.json and contracts/*.py. Each package ships its own copy
(package data) so that it installs and runs alone. The tests every package runs against its copy
(contracts/package_tests/test_*.py) are copied into packages/galvatron-*/tests/ the same way.
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("probe", "cost", "search", "run")


def expected_files() -> dict[str, bytes]:
    """{relative path inside _contracts/: content} of what every copy must hold."""
    files = {p.name: p.read_bytes() for p in sorted((ROOT / "contracts").glob("*.py"))}
    for schema in sorted((ROOT / "schemas").glob("*/*.schema.json")):
        files[f"schemas/{schema.parent.name}/{schema.name}"] = schema.read_bytes()
    return files


def expected_tests() -> dict[str, bytes]:
    """{file name: content} of the tests every package's tests/ must hold."""
    return {p.name: p.read_bytes() for p in sorted((ROOT / "contracts" / "package_tests").glob("test_*.py"))}


def copy_dir(package: str) -> Path:
    return ROOT / "packages" / f"galvatron-{package}" / "src" / f"galvatron_{package}" / "_contracts"


def tests_dir(package: str) -> Path:
    return ROOT / "packages" / f"galvatron-{package}" / "tests"


def drift() -> list[str]:
    want = expected_files()
    problems = []
    for package in PACKAGES:
        target = copy_dir(package)
        have = {p.relative_to(target).as_posix(): p.read_bytes()
                for p in target.rglob("*") if p.is_file() and "__pycache__" not in p.parts}
        for rel in sorted(set(want) | set(have)):
            if rel not in have:
                problems.append(f"{target / rel}: missing")
            elif rel not in want:
                problems.append(f"{target / rel}: not in the source (contracts/ or schemas/)")
            elif have[rel] != want[rel]:
                problems.append(f"{target / rel}: differs from its source")
        for name, content in expected_tests().items():
            copy = tests_dir(package) / name
            if not copy.is_file():
                problems.append(f"{copy}: missing")
            elif copy.read_bytes() != content:
                problems.append(f"{copy}: differs from its source (contracts/package_tests/{name})")
    return problems


def sync() -> None:
    want = expected_files()
    for package in PACKAGES:
        target = copy_dir(package)
        if target.exists():
            shutil.rmtree(target)
        for rel, content in want.items():
            (target / rel).parent.mkdir(parents=True, exist_ok=True)
            (target / rel).write_bytes(content)
        for name, content in expected_tests().items():
            tests_dir(package).mkdir(parents=True, exist_ok=True)
            (tests_dir(package) / name).write_bytes(content)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report drift")
    args = parser.parse_args()
    if args.check:
        problems = drift()
        for p in problems:
            print(p, file=sys.stderr)
        if problems:
            print("contracts drifted: run python tools/sync_contracts.py", file=sys.stderr)
        return 1 if problems else 0
    sync()
    return 0


if __name__ == "__main__":
    sys.exit(main())
