"""Read, validate, route and write galvatron documents (the only contract between the four tools).

Every tool imports this one module (galvatron-contracts); the schemas are its package data, built from the
repository's top-level ``schemas/``.

    docs = read_documents(["profile.json", "-"])           # paths, '-' for stdin, several docs per stream
    by_kind = route(docs, {"hardware-profile", "model-profile"})
    write_document(plan, "plan.json")                       # validates first, then writes atomically

Reader policy (schemas/README.md): same major and known minor -> strict validation; newer minor -> validated
against the newest known minor with unknown fields allowed, and a warning on stderr; older major -> migrated step by
step (MIGRATIONS); newer major -> DocumentError (exit 3) naming the supported range. Beyond the schema, a document's
``model`` must be arithmetically sound (heads divide hidden, kv_heads divide heads) and a plan must follow the
rank-layout convention and be trainable in some world (``plan.plan_errors``).
"""
from __future__ import annotations

import copy
import functools
import hashlib
import json
import math
import os
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match
from referencing import Registry, Resource

from .plan import plan_errors

# A package's copy ships its schemas beside it; the single source (contracts/ at the root) reads schemas/.
SCHEMA_DIR = Path(__file__).parent / "schemas"
if not SCHEMA_DIR.is_dir():
    SCHEMA_DIR = Path(__file__).resolve().parent.parent / "schemas"
DOCUMENT_KINDS = ("hardware-profile", "model-profile", "cost-model", "plan", "run-report")
# The version the tools write of each kind: the release whose fields they fill. A writer moves to a new minor
# here, once, when it starts to fill the new field (schemas/README.md, "Versioning policy").
CURRENT_VERSION = {"hardware-profile": "1.1", "model-profile": "1.1", "cost-model": "1.1", "plan": "1.0",
                   "run-report": "1.1"}
ID_PREFIX = "urn:galvatron:schema:"
MAX_MESSAGE = 240  # characters of one schema message (jsonschema quotes whole sub-documents)


class GalvatronError(Exception):
    """A failure the user can act on: printed as one message, no traceback, with its exit code."""

    exit_code = 1


class UsageError(GalvatronError):
    exit_code = 2


class DocumentError(GalvatronError):
    """An invalid or unsupported input document (exit 3). ``errors`` holds one line per problem."""

    exit_code = 3

    def __init__(self, source: str, errors: Iterable[str] | str):
        self.source = source
        self.errors = [errors] if isinstance(errors, str) else list(errors)
        super().__init__("\n".join(f"{source}: {e}" for e in self.errors))


class InfeasibleError(GalvatronError):
    """No plan fits the memory, or a plan does not fit the world (exit 4)."""

    exit_code = 4


# --- schemas ---------------------------------------------------------------------------------------------------

def parse_version(version: str) -> tuple[int, int]:
    """'1.2' -> (1, 2); ValueError for anything else (numbers, '1', '1.2.3', ' 1.0')."""
    if not isinstance(version, str):
        raise ValueError(f"expected a string 'MAJOR.MINOR', got {version!r}")
    major, dot, minor = version.partition(".")
    if not (dot and major.isdigit() and minor.isdigit() and major.isascii() and minor.isascii()):
        raise ValueError(f"expected 'MAJOR.MINOR', got {version!r}")
    return int(major), int(minor)


@functools.cache
def known_versions() -> dict[str, list[tuple[int, int]]]:
    """{kind: sorted [(major, minor)]} of the schema files shipped here."""
    found: dict[str, list[tuple[int, int]]] = {}
    for path in SCHEMA_DIR.glob("*/*.schema.json"):
        found.setdefault(path.parent.name, []).append(parse_version(path.name[: -len(".schema.json")]))
    return {kind: sorted(v) for kind, v in found.items()}


@functools.cache
def load_schema(kind: str, version: str) -> dict:
    return json.loads((SCHEMA_DIR / kind / f"{version}.schema.json").read_text(encoding="utf-8"))


def _relaxed(schema: Any) -> Any:
    """The schema with every ``additionalProperties: false`` lifted: a newer minor may add fields."""
    if isinstance(schema, dict):
        return {k: _relaxed(v) for k, v in schema.items() if not (k == "additionalProperties" and v is False)}
    if isinstance(schema, list):
        return [_relaxed(v) for v in schema]
    return schema


@functools.cache
def _registry(relaxed: bool) -> Registry:
    resources = []
    for kind, versions in known_versions().items():
        for major, minor in versions:
            schema = load_schema(kind, f"{major}.{minor}")
            resources.append((schema["$id"], Resource.from_contents(_relaxed(schema) if relaxed else schema)))
    return Registry().with_resources(resources)


@functools.cache
def _validator(kind: str, version: str, relaxed: bool) -> Draft202012Validator:
    schema = load_schema(kind, version)
    if relaxed:
        schema = _relaxed(schema)
        schema["properties"]["schema_version"] = {"type": "string", "pattern": r"^\d+\.\d+$"}
    return Draft202012Validator(schema, registry=_registry(relaxed))


def _child(path: str, key: str) -> str:
    return f"{path}.{key}" if key.isidentifier() else f"{path}[{json.dumps(key)}]"


def _short(message: str) -> str:
    return message if len(message) <= MAX_MESSAGE else message[: MAX_MESSAGE - 5] + " ..."


def _lines(error) -> list[tuple[list, str]]:
    """(sort key, '$.path: message') lines for one jsonschema error, pointing at the offending field itself."""
    if error.validator in ("oneOf", "anyOf") and error.context:
        branches: dict[Any, list] = {}
        for sub in error.context:
            branches.setdefault(sub.relative_schema_path[0], []).append(sub)
        fitting = [subs for subs in branches.values()
                   if not any(e.validator == "type" and not e.relative_path for e in subs)]
        if len(fitting) == 1:  # the one branch of the instance's type: its own errors say what is wrong
            return [line for sub in fitting[0] for line in _lines(sub)]
        error = best_match(error.context)
    key = [(0, p) if isinstance(p, int) else (1, str(p)) for p in error.absolute_path]
    path = error.json_path
    if error.validator == "required" and isinstance(error.instance, dict):
        missing = [p for p in error.validator_value if p not in error.instance and error.message.startswith(repr(p))]
        if missing:
            return [(key + [(1, missing[0])], f"{_child(path, missing[0])}: required property missing")]
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        known = error.schema.get("properties", {})
        extra = [k for k in error.instance if k not in known]
        if extra:
            return [(key + [(1, k)], f"{_child(path, k)}: unexpected property (the schema has no such field)")
                    for k in extra]
    if error.validator in ("minItems", "maxItems") and isinstance(error.instance, list):
        bound = "at least" if error.validator == "minItems" else "at most"
        count = error.validator_value
        return [(key, f"{path}: expected {bound} {count} item{'s' if count != 1 else ''}, "
                      f"got {len(error.instance)}")]
    return [(key, f"{path}: {_short(error.message)}")]


def schema_errors(doc: Any, kind: str, version: str, relaxed: bool = False) -> list[str]:
    """Every schema violation of ``doc`` as '$.json.path: message', in document order.

    A missing required field or an unexpected one is reported at its own path ('$.cluster: required property
    missing'); a oneOf/anyOf failure is reported through its most relevant branch."""
    lines = [line for e in _validator(kind, version, relaxed).iter_errors(doc) for line in _lines(e)]
    return [text for _, text in sorted(lines, key=lambda kv: kv[0])]


def model_spec_errors(spec: dict, path: str = "$") -> list[str]:
    """The arithmetic the model-spec schema cannot say (for a schema-valid spec)."""
    errors = []
    if spec["hidden"] % spec["heads"]:
        errors.append(f"{path}.hidden: expected a multiple of heads ({spec['heads']}), got {spec['hidden']}")
    elif spec["family"] == "llama" and (spec["hidden"] // spec["heads"]) % 2:
        errors.append(f"{path}.hidden: rotary embeddings need an even head dimension (hidden / heads), "
                      f"got {spec['hidden']} / {spec['heads']}")
    if spec["heads"] % spec["kv_heads"]:
        errors.append(f"{path}.kv_heads: expected a divisor of heads ({spec['heads']}), got {spec['kv_heads']}")
    return errors


def semantic_errors(doc: dict) -> list[str]:
    """Checks beyond the schema, for a schema-valid document: its model spec's arithmetic; a plan's rank layout."""
    errors = model_spec_errors(doc["model"], "$.model") if isinstance(doc.get("model"), dict) else []
    if doc.get("kind") == "plan" and not errors:
        errors += plan_errors(doc)
    return errors


# Older majors are migrated one major at a time: MIGRATIONS[(kind, major)] turns a document of that major into
# one of a later major (normally the next). None exist while 1 is the only major; tests register one to prove
# the path.
MIGRATIONS: dict[tuple[str, int], Callable[[dict], dict]] = {}


def _supported_range(kind: str) -> str:
    versions = known_versions()[kind]
    lo, hi = versions[0], versions[-1]
    return f"{lo[0]}.{lo[1]}" if lo == hi else f"{lo[0]}.{lo[1]} to {hi[0]}.{hi[1]}"


def validate(doc: Any, source: str = "<document>", kind: str | Iterable[str] | None = None) -> dict:
    """Check ``doc`` by the reader policy and return it (migrated if it was an older major).

    ``kind``: the kind (or kinds) the caller accepts, checked before anything else. Raises DocumentError naming
    ``source`` and the JSON path of every problem."""
    if not isinstance(doc, dict):
        raise DocumentError(source, f"$: expected a JSON object (a galvatron document), got {type(doc).__name__}")
    doc_kind = doc.get("kind")
    if not isinstance(doc_kind, str) or doc_kind not in DOCUMENT_KINDS or doc_kind not in known_versions():
        expected = ", ".join(DOCUMENT_KINDS)
        raise DocumentError(source, f"$.kind: expected one of {expected}, got {doc_kind!r}")
    wanted = (kind,) if isinstance(kind, str) else tuple(kind or ())
    if wanted and doc_kind not in wanted:
        raise DocumentError(source, f"$.kind: expected one of {', '.join(wanted)}, got {doc_kind!r}")
    raw_version = doc.get("schema_version")
    try:
        major, minor = parse_version(raw_version)
    except ValueError:
        raise DocumentError(source, f"$.schema_version: expected a string 'MAJOR.MINOR', got {raw_version!r}") from None
    versions = known_versions()[doc_kind]
    newest_major = versions[-1][0]
    if major > newest_major:
        raise DocumentError(source, f"$.schema_version: {doc_kind} {raw_version} is newer than this reader "
                                    f"supports ({_supported_range(doc_kind)}); upgrade the tool")
    if major < newest_major:
        step = MIGRATIONS.get((doc_kind, major))
        if step is None:
            raise DocumentError(source, f"$.schema_version: {doc_kind} {raw_version} is older than this reader "
                                        f"supports ({_supported_range(doc_kind)}) and no migration exists")
        if (major, minor) in versions:  # a release we still ship: check it before migrating it
            errors = schema_errors(doc, doc_kind, f"{major}.{minor}")
            if errors:
                raise DocumentError(source, errors)
        migrated = step(copy.deepcopy(doc))
        try:
            later = parse_version(migrated.get("schema_version")) > (major, minor)
        except (AttributeError, ValueError):
            later = False
        if not later:
            raise GalvatronError(f"internal error: the migration of {doc_kind} {raw_version} did not produce a "
                                 f"later schema_version")
        return validate(migrated, source, kind)
    minors = [v[1] for v in versions if v[0] == major]
    if minor in minors:
        errors = schema_errors(doc, doc_kind, f"{major}.{minor}")
    elif minor > minors[-1]:
        newest = minors[-1]
        print(f"warning: {source}: {doc_kind} {raw_version} is newer than the newest known {major}.{newest}; "
              f"reading it as {major}.{newest} and ignoring unknown fields", file=sys.stderr)
        errors = schema_errors(doc, doc_kind, f"{major}.{newest}", relaxed=True)
    else:
        raise DocumentError(source, f"$.schema_version: {doc_kind} {raw_version} is not a released version "
                                    f"(known: {', '.join(f'{a}.{b}' for a, b in versions)})")
    errors = errors or semantic_errors(doc)
    if errors:
        raise DocumentError(source, errors)
    return doc


# --- reading ---------------------------------------------------------------------------------------------------

def _line_col(text: str, pos: int) -> tuple[int, int]:
    line = text.count("\n", 0, pos) + 1
    return line, pos - (text.rfind("\n", 0, pos) + 1) + 1


def iter_json(text: str, source: str) -> Iterator[Any]:
    """The JSON values in ``text``: one, several concatenated, or one per line. NaN and Infinity are refused."""

    def refuse(name):
        raise ValueError(name)

    decoder = json.JSONDecoder(parse_constant=refuse)
    pos, end = 0, len(text)
    while True:
        while pos < end and text[pos].isspace():
            pos += 1
        if pos >= end:
            return
        try:
            value, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            raise DocumentError(source, f"line {e.lineno} column {e.colno}: malformed JSON ({e.msg})") from None
        except ValueError as e:
            line, col = _line_col(text, max(text.find(str(e), pos), pos))
            raise DocumentError(source, f"line {line} column {col}: malformed JSON ({e} is not a JSON number; "
                                        f"documents carry no NaN or Infinity)") from None
        yield value


def _source_list(sources: Iterable[str | os.PathLike] | str | os.PathLike) -> list[str]:
    if isinstance(sources, (str, os.PathLike)):
        return [os.fspath(sources)]
    return [os.fspath(s) for s in sources]


def read_documents(sources: Iterable[str] | str, stdin=None, kinds: Iterable[str] | None = None) -> list[dict]:
    """Every document in the given paths (``-`` is stdin), validated, in order.

    ``kinds``: the kinds the caller accepts; another kind is refused before its schema is checked."""
    kinds = tuple(kinds) if kinds is not None else None
    docs = []
    for src in _source_list(sources):
        name = "<stdin>" if src == "-" else src
        if src == "-":
            text = (stdin or sys.stdin).read()
        else:
            try:
                text = Path(src).read_text(encoding="utf-8-sig")
            except FileNotFoundError:
                raise DocumentError(name, "no such file") from None
            except (OSError, UnicodeDecodeError) as e:
                raise DocumentError(name, f"cannot read ({e})") from None
        found = list(iter_json(text, name))
        if not found:
            raise DocumentError(name, "no document (empty input)")
        for i, value in enumerate(found):
            docs.append(validate(value, name if len(found) == 1 else f"{name}[document {i + 1}]", kinds))
    return docs


def route(docs: Iterable[dict], wanted: Iterable[str], source: str = "input") -> dict[str, list[dict]]:
    """Group documents by kind; a kind outside ``wanted`` is an error (exit 3).

    (``read_documents(..., kinds=wanted)`` refuses such a document earlier, naming its file.)"""
    wanted = tuple(wanted)
    out: dict[str, list[dict]] = {k: [] for k in wanted}
    for doc in docs:
        if doc["kind"] not in out:
            raise DocumentError(source, f"$.kind: expected one of {', '.join(wanted)}, got {doc['kind']!r}")
        out[doc["kind"]].append(doc)
    return out


def read_one(sources: Iterable[str] | str, kind: str, stdin=None) -> dict:
    """Exactly one document of ``kind`` from the sources."""
    names = _source_list(sources)
    name = ", ".join("<stdin>" if n == "-" else n for n in names)
    docs = read_documents(names, stdin, [kind])
    if len(docs) != 1:
        raise DocumentError(name, f"expected exactly one {kind} document, got {len(docs)}")
    return docs[0]


# --- writing ---------------------------------------------------------------------------------------------------

def canonical_json(doc: Any) -> str:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), allow_nan=False)


def digest(doc: Any) -> str:
    """sha256 of the canonical JSON (sorted keys, no whitespace): how documents cite each other."""
    return hashlib.sha256(canonical_json(doc).encode()).hexdigest()


def producer(name: str, version: str, note: str | None = None) -> dict:
    out = {"name": name, "version": version}
    if note:
        out["note"] = note
    return out


def _assert_finite(value: Any, path: str = "$") -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise GalvatronError(f"internal error: {path} is {value} (documents carry no NaN or Infinity)")
    if isinstance(value, dict):
        for k, v in value.items():
            _assert_finite(v, _child(path, str(k)))
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _assert_finite(v, f"{path}[{i}]")


def dumps(doc: dict) -> str:
    """Validate a document this tool produced and render it (an invalid one is a bug: GalvatronError, exit 1).

    The document must be of a known kind and exactly a version this tool ships; the semantic checks apply too."""
    if not isinstance(doc, dict):
        raise GalvatronError(f"internal error: refusing to write {type(doc).__name__}, not a document")
    kind, version = doc.get("kind"), doc.get("schema_version")
    shipped = kind in DOCUMENT_KINDS and isinstance(version, str)
    shipped = shipped and (SCHEMA_DIR / kind / f"{version}.schema.json").is_file()
    if not shipped:
        raise GalvatronError(f"internal error: refusing to write a document of kind {kind!r} version {version!r} "
                             f"(this tool writes {', '.join(DOCUMENT_KINDS)} at a version it ships)")
    _assert_finite(doc)
    errors = schema_errors(doc, kind, version) or semantic_errors(doc)
    if errors:
        raise GalvatronError(f"internal error: refusing to write an invalid {kind}:\n  " + "\n  ".join(errors))
    return json.dumps(doc, indent=1, allow_nan=False) + "\n"


def _new_file_mode(path: Path) -> int:
    try:
        return path.stat().st_mode & 0o7777
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see the old file or the whole new one, never a part."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise GalvatronError(f"cannot write {path}: {e}") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _new_file_mode(path))  # mkstemp creates 0600; give the file the mode a plain open would
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(e, OSError):
            raise GalvatronError(f"cannot write {path}: {e}") from None
        raise


def write_document(doc: dict, path: str | os.PathLike | None = "-", stream=None) -> None:
    """Validate, then write to ``path`` atomically, or to stdout (``-`` or None)."""
    text = dumps(doc)
    if path is None or path == "-":
        out = stream or sys.stdout
        out.write(text)
        out.flush()
    else:
        atomic_write_text(path, text)


# --- command-line edge -----------------------------------------------------------------------------------------

def exits_cleanly(fn: Callable) -> Callable:
    """Decorate a click command: GalvatronError -> its message on stderr and its exit code, no traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except GalvatronError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(e.exit_code)

    return wrapper
