"""Read, validate, route and write galvatron documents (the only contract between the four tools).

Every tool imports this one module (galvatron-contracts); the schemas are its package data, built from the
repository's top-level ``schemas/``.

    docs = read_documents(["profile.json", "-"])           # paths, '-' for stdin, several docs per stream
    by_kind = route(docs, {"hardware-profile", "model-profile"})
    write_document(plan, "plan.json")                       # validates first, then writes atomically

Reader policy (schemas/README.md): same major and known minor -> strict validation; newer minor -> validated
against the newest known minor with unknown fields allowed, and a warning on stderr; older major -> migrated step by
step (MIGRATIONS); newer major -> DocumentError (exit 3) naming the supported range. Before the schema, every value is
held to limits.py's bounds (nesting depth, finite numbers of sane magnitude, int64 integers); an integer field
holds an integer, never a float like 1e308. Beyond the schema (``semantic_errors``): every count within its bound
(limits.COUNT_LIMITS), a document's ``model`` arithmetically sound (heads divide hidden, kv_heads divide heads),
a profile's or cost model's numbers consistent (consistency.py), and a plan following the rank-layout convention
and trainable in some world (``plan.plan_errors``).

Writing: ``write_document`` refuses a target that is not a regular file (exit 2) and reports a failed write, to a
file or to stdout (disk full, a closed pipe), as one message (exit 1).
"""
from __future__ import annotations

import copy
import functools
import hashlib
import json
import os
import re
import stat
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator, validators
from jsonschema.exceptions import best_match
from referencing import Registry
from referencing.jsonschema import DRAFT202012

from .consistency import cost_model_errors, hardware_profile_errors, model_profile_errors
from .limits import MAX_DEPTH, TOO_DEEP, child_path, count_errors, value_errors
from .plan import plan_errors

# A package's copy ships its schemas beside it; the single source (contracts/ at the root) reads schemas/.
SCHEMA_DIR = Path(__file__).parent / "schemas"
if not SCHEMA_DIR.is_dir():
    SCHEMA_DIR = Path(__file__).resolve().parent.parent / "schemas"
DOCUMENT_KINDS = ("hardware-profile", "model-profile", "cost-model", "plan", "run-report")
# The version the tools write of each kind: the release whose fields they fill. A writer moves to a new minor
# here, once, when it starts to fill the new field (schemas/README.md, "Versioning policy").
CURRENT_VERSION = {"hardware-profile": "1.2", "model-profile": "1.2", "cost-model": "1.3", "plan": "1.1",
                   "run-report": "1.2"}
ID_PREFIX = "urn:galvatron:schema:"
MAX_MESSAGE = 240  # characters of one schema message (jsonschema quotes whole sub-documents)
# one input file or stream: far above what a tool writes (a cost model of 2**17 ranks is 2 MB)
MAX_DOCUMENT_BYTES = 256 * 2 ** 20


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


# An integer field holds a JSON integer: JSON Schema would also take a float with no fraction (1e308, 2.0). The
# schemas are used without their "$schema" (all are draft 2020-12), so a $ref'd schema is checked by this class
# too: jsonschema picks the class of a referenced schema by its "$schema".
_Validator = validators.extend(Draft202012Validator, type_checker=Draft202012Validator.TYPE_CHECKER.redefine(
    "integer", lambda _, value: isinstance(value, int) and not isinstance(value, bool)))


def _checked_form(schema: dict, relaxed: bool) -> dict:
    schema = _relaxed(schema) if relaxed else dict(schema)
    schema.pop("$schema", None)
    return schema


@functools.cache
def _registry(relaxed: bool) -> Registry:
    resources = []
    for kind, versions in known_versions().items():
        for major, minor in versions:
            schema = load_schema(kind, f"{major}.{minor}")
            resources.append((schema["$id"], DRAFT202012.create_resource(_checked_form(schema, relaxed))))
    return Registry().with_resources(resources)


@functools.cache
def _validator(kind: str, version: str, relaxed: bool) -> Draft202012Validator:
    schema = _checked_form(load_schema(kind, version), relaxed)
    if relaxed:
        schema["properties"]["schema_version"] = {"type": "string", "pattern": r"^\d+\.\d+$"}
    return _Validator(schema, registry=_registry(relaxed))


_child = child_path


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


KIND_CHECKS: dict[str, Callable[[dict], list[str]]] = {
    "hardware-profile": hardware_profile_errors, "model-profile": model_profile_errors,
    "cost-model": cost_model_errors, "plan": plan_errors}


def semantic_errors(doc: dict) -> list[str]:
    """Checks beyond the schema, for a schema-valid document, each stage only once the one before it holds: every
    count within its bound; the model spec's arithmetic; the kind's own consistency (KIND_CHECKS)."""
    errors = count_errors(doc)
    if not errors and isinstance(doc.get("model"), dict):
        errors = model_spec_errors(doc["model"], "$.model")
    check = KIND_CHECKS.get(doc.get("kind"))
    return errors or (check(doc) if check else [])


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
    errors = value_errors(doc)
    if errors:
        raise DocumentError(source, errors)
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
        if errors:      # e.g. a value a later minor added to an enum: say why this reader cannot take it
            errors = [*errors, f"$.schema_version: {doc_kind} {raw_version} is newer than this reader's "
                               f"{major}.{newest}; upgrade the tool to read it"]
    else:
        raise DocumentError(source, f"$.schema_version: {doc_kind} {raw_version} is not a released version "
                                    f"(known: {', '.join(f'{a}.{b}' for a, b in versions)})")
    errors = errors or semantic_errors(doc)
    if errors:
        raise DocumentError(source, errors)
    return doc


def as_current(doc: dict, source: str = "<document>") -> dict:
    """A copy of a read document at the version this tool writes of its kind (CURRENT_VERSION), to write it back.

    A newer minor's added fields, which that version does not know, are dropped, with a warning naming them (a
    minor only adds optional fields, so what is left is a document of the current version); an older minor of
    the same major is already one, less optional fields."""
    kind = doc["kind"]
    out = copy.deepcopy(doc)
    out["schema_version"] = CURRENT_VERSION[kind]
    pending = list(_validator(kind, out["schema_version"], False).iter_errors(out))
    dropped = []
    while pending:
        error = pending.pop()
        pending += error.context or []
        if error.validator == "additionalProperties" and isinstance(error.instance, dict):
            for key in [k for k in error.instance if k not in error.schema.get("properties", {})]:
                del error.instance[key]
                dropped.append(_child(error.json_path, key))
    if dropped:
        print(f"warning: {source}: writing {kind} {out['schema_version']}, without the fields it does not have: "
              f"{', '.join(sorted(dropped))}", file=sys.stderr)
    return out


# --- reading ---------------------------------------------------------------------------------------------------

def _line_col(text: str, pos: int) -> tuple[int, int]:
    line = text.count("\n", 0, pos) + 1
    return line, pos - (text.rfind("\n", 0, pos) + 1) + 1


class _Refused(ValueError):
    """A literal the reader refuses while parsing: NaN, Infinity, an integer too long to convert."""

    def __init__(self, literal: str, why: str):
        super().__init__(why)
        self.literal = literal


def _constant(name: str):
    raise _Refused(name, f"{name} is not a JSON number; documents carry no NaN or Infinity")


def _integer(digits: str) -> int:
    if len(digits) > 1000:  # Python refuses to convert 4300 digits and more; no count has more than 19
        raise _Refused(digits, f"an integer of {len(digits)} digits")
    return int(digits)


_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]')


def _too_deep_at(text: str, pos: int) -> int:
    """Where the value starting at ``pos`` first nests more than MAX_DEPTH containers deep (strings skipped)."""
    depth = 0
    for token in _TOKEN.finditer(text, pos):
        if token.group() in ("[", "{"):
            depth += 1
            if depth > MAX_DEPTH:
                return token.start()
        elif token.group() in ("]", "}"):
            depth -= 1
    return pos


def iter_json(text: str, source: str) -> Iterator[Any]:
    """The JSON values in ``text``: one, several concatenated, or one per line. NaN and Infinity are refused, and
    so is a value nested too deep for the parser (limits.py holds what is read to MAX_DEPTH)."""
    decoder = json.JSONDecoder(parse_constant=_constant, parse_int=_integer)
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
        except _Refused as e:
            line, col = _line_col(text, max(text.find(e.literal, pos), pos))
            raise DocumentError(source, f"line {line} column {col}: malformed JSON ({e})") from None
        except RecursionError:
            line, col = _line_col(text, _too_deep_at(text, pos))
            raise DocumentError(source, f"line {line} column {col}: {TOO_DEEP}") from None
        yield value


def _source_list(sources: Iterable[str | os.PathLike] | str | os.PathLike) -> list[str]:
    if isinstance(sources, (str, os.PathLike)):
        return [os.fspath(sources)]
    return [os.fspath(s) for s in sources]


def read_named(sources: Iterable[str] | str, stdin=None, kinds: Iterable[str] | None = None) -> list[tuple[str, dict]]:
    """(name, document) of every document in the given paths (``-`` is stdin), validated, in order; the name is
    the one its errors carry: the path, ``<stdin>``, or ``hw.json[document 2]`` inside a stream.

    ``kinds``: the kinds the caller accepts; another kind is refused before its schema is checked."""
    kinds = tuple(kinds) if kinds is not None else None
    named = []
    for src in _source_list(sources):
        name = "<stdin>" if src == "-" else src
        found = list(iter_json(_read_text(src, name, stdin), name))
        if not found:
            raise DocumentError(name, "no document (empty input)")
        for i, value in enumerate(found):
            where = name if len(found) == 1 else f"{name}[document {i + 1}]"
            named.append((where, validate(value, where, kinds)))
    return named


def read_documents(sources: Iterable[str] | str, stdin=None, kinds: Iterable[str] | None = None) -> list[dict]:
    """Every document in the given paths (``-`` is stdin), validated, in order (``read_named`` without the names)."""
    return [doc for _, doc in read_named(sources, stdin, kinds)]


def _read_text(src: str, name: str, stdin=None) -> str:
    """The text of a path or of stdin ('-'), at most MAX_DOCUMENT_BYTES (so /dev/zero cannot fill the memory)."""
    try:
        if src == "-":
            stream = stdin or sys.stdin
            stream = getattr(stream, "buffer", stream)
            data = stream.read(MAX_DOCUMENT_BYTES + 1)
        else:
            with open(src, "rb") as f:
                data = f.read(MAX_DOCUMENT_BYTES + 1)
    except FileNotFoundError:
        raise DocumentError(name, "no such file") from None
    except OSError as e:
        raise DocumentError(name, f"cannot read ({e})") from None
    if len(data) > MAX_DOCUMENT_BYTES:
        raise DocumentError(name, f"more than {MAX_DOCUMENT_BYTES // 2 ** 20} MiB: not a document this reader takes")
    if isinstance(data, str):
        return data.removeprefix("\ufeff")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DocumentError(name, f"cannot read ({e})") from None


def read_json(path: str | os.PathLike) -> Any:
    """The one JSON value of a file that is no galvatron document (a Hugging Face config.json), read by the same
    rules: its size, its nesting, no NaN or Infinity, limits.py's bounds on every number (DocumentError naming it)."""
    name = os.fspath(path)
    values = list(iter_json(_read_text(name, name), name))
    if len(values) != 1:
        raise DocumentError(name, f"expected one JSON value, got {len(values)}")
    errors = value_errors(values[0])
    if errors:
        raise DocumentError(name, errors)
    return values[0]


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


def dumps(doc: dict) -> str:
    """Validate a document this tool produced and render it (an invalid one is a bug: GalvatronError, exit 1).

    The document must be of a known kind and exactly a version this tool ships, and pass every check a reader makes
    of it (limits.py's bounds, the schema, the semantic checks): what a tool writes, the next one reads."""
    if not isinstance(doc, dict):
        raise GalvatronError(f"internal error: refusing to write {type(doc).__name__}, not a document")
    kind, version = doc.get("kind"), doc.get("schema_version")
    shipped = kind in DOCUMENT_KINDS and isinstance(version, str)
    shipped = shipped and (SCHEMA_DIR / kind / f"{version}.schema.json").is_file()
    if not shipped:
        raise GalvatronError(f"internal error: refusing to write a document of kind {kind!r} version {version!r} "
                             f"(this tool writes {', '.join(DOCUMENT_KINDS)} at a version it ships)")
    errors = value_errors(doc) or schema_errors(doc, kind, version) or semantic_errors(doc)
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


_NOT_REGULAR = ((stat.S_ISDIR, "a directory"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                (stat.S_ISFIFO, "a pipe"), (stat.S_ISSOCK, "a socket"))


def output_path(path: str | os.PathLike) -> Path:
    """The file an output path names: a regular file or none yet (a symbolic link: the file it points to).

    Anything else (a directory, a device such as /dev/full, a pipe) is refused, UsageError (exit 2): an atomic
    write would replace it with a file. A command checks its -o with this before it works, and the writer again."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return path
    except NotADirectoryError:
        raise UsageError(f"{path}: not a file path (a part of it is a file, not a directory)") from None
    except OSError as e:
        raise GalvatronError(f"cannot write {path}: {e.strerror or e}") from None
    what = next((name for test, name in _NOT_REGULAR if test(mode)), None)
    if what or not stat.S_ISREG(mode):
        raise UsageError(f"{path}: not a regular file ({what or 'a special file'}); give a file path, or '-' for "
                         f"stdout")
    return Path(os.path.realpath(path))


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` as ``atomic_write_bytes`` does."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one, never a part.

    The target must be a regular file or not exist yet (``output_path``, exit 2); a failed write is GalvatronError
    (exit 1) and leaves nothing behind."""
    path = output_path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise GalvatronError(f"cannot write {path}: {e}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
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


def write_text(text: str, path: str | os.PathLike | None = "-", stream=None) -> None:
    """``text`` to ``path`` atomically, or to stdout (``-`` or None); a failed write is one GalvatronError (exit 1).

    When stdout itself fails (disk full, the reader of a pipe gone), stdout is pointed at the null device so that
    the interpreter's own flush at exit does not fail a second time with a traceback."""
    if path is not None and path != "-":
        atomic_write_text(path, text)
        return
    out = stream or sys.stdout
    try:
        out.write(text)
        out.flush()
    except OSError as e:
        if out is sys.stdout:
            try:
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            except (OSError, ValueError):  # not a real file descriptor (a test's captured stdout)
                pass
        raise GalvatronError(f"cannot write to stdout: {e.strerror or e}") from None


def write_document(doc: dict, path: str | os.PathLike | None = "-", stream=None) -> None:
    """Validate, then write to ``path`` atomically, or to stdout (``-`` or None)."""
    write_text(dumps(doc), path, stream)


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
