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


IGNORED = {"$id", "title", "description"}  # what a minor may reword; the schema_version const differs by design


def additions(old, new, at="$", field=()):
    """The optional fields ``new`` adds to ``old``, each as the document path to it ('*': every item of a list;
    the schema path where it is not under properties/items); AssertionError, naming the schema path, where ``new``
    changes anything else than adding fields or appending values to an enum."""
    if not (isinstance(old, dict) and isinstance(new, dict)):
        assert old == new, f"{at}: {old!r} became {new!r}"
        return []
    keys = set(old) - IGNORED
    assert keys == set(new) - IGNORED, f"{at}: keywords differ: {sorted((set(old) ^ set(new)) - IGNORED)}"
    added = []
    for key in sorted(keys - {"properties"}):
        if key == "enum":      # widened: every old value kept (a document valid before keeps its meaning)
            assert all(v in new[key] for v in old[key]), f"{at}.enum: {old[key]!r} became {new[key]!r}"
            continue
        if key == "$defs":     # a new definition is no field: only what refers to it is (a new optional field)
            for name in old[key]:
                assert name in new[key], f"{at}.$defs: {name} removed"
                added += additions(old[key][name], new[key][name], f"{at}.$defs.{name}", None)
            continue
        inner = field + ("*",) if key == "items" and field is not None else None
        added += additions(old[key], new[key], f"{at}.{key}", inner)
    old_props, new_props = old.get("properties", {}), new.get("properties", {})
    for name in new_props:
        inner = field + (name,) if field is not None else None
        if name not in old_props:
            assert name not in new.get("required", []), f"{at}.properties.{name}: a new field must be optional"
            added.append(inner or f"{at}.properties.{name}")
        elif not (at == "$" and name == "schema_version"):
            added += additions(old_props[name], new_props[name], f"{at}.properties.{name}", inner)
    assert set(old_props) <= set(new_props), f"{at}: properties removed: {sorted(set(old_props) - set(new_props))}"
    return added


def minors():
    """(kind, older version, its next minor) for every minor release after the first of its major."""
    for kind, versions in sorted(known_versions().items()):
        for (major, minor), (later_major, later) in zip(versions, versions[1:]):
            if later_major == major:
                yield kind, f"{major}.{minor}", f"{major}.{later}"


def load(kind, version):
    return json.loads((SCHEMAS / kind / f"{version}.schema.json").read_text())


@pytest.mark.parametrize("kind, older, minor", list(minors()), ids=lambda v: str(v))
def test_each_minor_is_the_one_before_plus_optional_fields(kind, older, minor):
    assert load(kind, minor)["properties"]["schema_version"] == {"const": minor}
    additions(load(kind, older), load(kind, minor))  # raises, naming the path, where the minor changed more


def test_the_examples_generator_knows_what_each_minor_added():
    """tools/make_examples.py drops ADDED[(kind, minor)] to write an older release's example: the schemas' list."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_examples", SCHEMAS.parent / "tools" / "make_examples.py")
    make_examples = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_examples)
    schemas = {(kind, minor): additions(load(kind, older), load(kind, minor)) for kind, older, minor in minors()}
    assert {key: paths for key, paths in schemas.items() if paths} == make_examples.ADDED
