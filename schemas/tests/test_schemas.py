"""Every schema file is a well-formed Draft 2020-12 schema that names itself and resolves every $ref.

    pytest -q schemas/tests          # or: tox -e schemas
"""
import json
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator
from referencing import Registry, Resource

from galvatron_contracts.documents import DOCUMENT_KINDS, ID_PREFIX, known_versions, parse_version

SCHEMAS = Path(__file__).resolve().parents[1]
FILES = sorted(SCHEMAS.glob("*/*.schema.json"))


def refs(node):
    if isinstance(node, dict):
        if isinstance(node.get("$ref"), str):
            yield node["$ref"]
        for value in node.values():
            yield from refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from refs(value)


def registry():
    return Registry().with_resources(
        (json.loads(p.read_text())["$id"], Resource.from_contents(json.loads(p.read_text()))) for p in FILES)


def test_every_kind_and_the_model_spec_have_a_1_0_schema():
    assert {p.parent.name for p in FILES} == set(DOCUMENT_KINDS) | {"model-spec"}
    assert all((1, 0) in known_versions()[kind] for kind in DOCUMENT_KINDS + ("model-spec",))


@pytest.mark.parametrize("path", FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_schema_meta_validates_and_names_itself(path):
    schema = json.loads(path.read_text())
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    version = path.name[: -len(".schema.json")]
    parse_version(version)
    assert schema["$id"] == f"{ID_PREFIX}{path.parent.name}:{version}"
    assert schema["type"] == "object" and schema["additionalProperties"] is False


@pytest.mark.parametrize("path", FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_ref_resolves(path):
    schema = json.loads(path.read_text())
    resolver = registry().resolver(base_uri=schema["$id"])
    found = list(refs(schema))
    for ref in found:
        assert resolver.lookup(ref).contents is not None, ref
    if path.parent.name in ("model-profile", "cost-model", "plan"):
        assert "urn:galvatron:schema:model-spec:1.0" in found  # the shared model spec, not a copy


@pytest.mark.parametrize("kind", DOCUMENT_KINDS)
def test_documents_start_with_kind_version_producer(kind):
    for major, minor in known_versions()[kind]:
        schema = json.loads((SCHEMAS / kind / f"{major}.{minor}.schema.json").read_text())
        assert schema["required"][:3] == ["kind", "schema_version", "producer"]
        assert schema["properties"]["kind"] == {"const": kind}
        assert schema["properties"]["schema_version"] == {"const": f"{major}.{minor}"}
        assert list(schema["properties"])[:3] == ["kind", "schema_version", "producer"]
