"""Released schema files never change: each is held to the sha256 recorded in schemas/RELEASED.json.

    pytest -q schemas/tests/test_released.py

Releasing a version (schemas/README.md, 'Adding a version'): add its file, then its digest to RELEASED.json.
"""
import hashlib
import json
from pathlib import Path

import pytest

SCHEMAS = Path(__file__).resolve().parents[1]
RELEASED = json.loads((SCHEMAS / "RELEASED.json").read_text())["released"]
FILES = sorted(str(p.relative_to(SCHEMAS)) for p in SCHEMAS.glob("*/*.schema.json"))
POLICY = "released schema files never change: add a new minor/major instead"


def sha256(name: str) -> str:
    return hashlib.sha256((SCHEMAS / name).read_bytes()).hexdigest()


@pytest.mark.parametrize("name", FILES)
def test_schema_file_is_released_and_unchanged(name):
    assert name in RELEASED, (f"schemas/{name} is not listed in schemas/RELEASED.json: record its sha256 when it "
                              f"is released ({POLICY})")
    assert sha256(name) == RELEASED[name], f"schemas/{name} differs from its release: {POLICY}"


def test_every_release_is_still_shipped():
    assert sorted(RELEASED) == FILES, f"a released schema file is gone: {POLICY}"

