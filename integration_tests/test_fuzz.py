"""Fuzz every tool's documents and command line (issue 13): each case must end in a documented exit code with one
message naming the file (or the option, or the path) at fault, no traceback, and no file left behind.

    tox -e integration -- integration_tests/test_fuzz.py      # the last test prints the table of cases per tool

Cases start from the tiny valid example of each input (schemas/<kind>/examples/valid/tiny.json) and change one
thing, in one of these classes:
  schema     a leaf set to a value its schema allows (a strategy drawn from the schema node at that path: enum,
             type, minimum, maximum; integers up to their limits.COUNT_LIMITS bound or 2**40, other numbers up to
             1e12; larger ones are the 'huge' class)
  nesting    a value nested 2,000 deep                      nonfinite  1e400, -1e400, NaN, Infinity
  huge       1e308, -1e31, 2**70                             count      a count over its bound, or a float
  syntax     truncated, not UTF-8, empty, missing, not an object
  consistent a document whose numbers disagree (stage_ranks 3 in a world of 2, a duplicate strategy, ...)
  model      a plan of another model, a profile of another model than --model
  version    a newer minor (accepted with a warning), a newer major, an unreleased or malformed version
  option     a bad option value (nan, inf, 1e308, 0, -1, 2**70, a word)
  output     -o naming a directory, a pipe, a device, a path through a file, or an unwritable place
The tools run in-process through click's CliRunner (galvatron-run with WORLD_SIZE=3, so a plan that passes
every check stops at the world-size check, exit 4, before any training); a few end-to-end cases run the console
scripts: stdin, stdout on a full disk, stdout into a closed pipe. Hypothesis draws the cases derandomized, so CI
runs the same ones each time (GALVATRON_FUZZ_RANDOM=1 draws new ones; GALVATRON_FUZZ_EXAMPLES=N sets the count).
"""
from __future__ import annotations

import copy
import json
import os
import shutil
import stat
import subprocess
import tempfile
import traceback
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from galvatron_contracts.limits import COUNT_LIMITS
from galvatron_contracts.models import PRESETS

ROOT = Path(__file__).resolve().parent.parent
SCHEMAS = ROOT / "schemas"
OUTCOMES: Counter = Counter()           # (tool, class, exit code) -> cases
EXAMPLES = int(os.environ.get("GALVATRON_FUZZ_EXAMPLES", "40"))   # per tool and class; 4x for the schema class
RANDOM = os.environ.get("GALVATRON_FUZZ_RANDOM") == "1"        # new cases each run (hunting), not CI's fixed ones


def seed(kind: str) -> dict:
    return json.loads((SCHEMAS / kind / "examples" / "valid" / "tiny.json").read_text())


# --- the schema at a path, and values it allows ---------------------------------------------------------------

def _schemas() -> dict[str, dict]:
    return {s["$id"]: s for s in (json.loads(p.read_text()) for p in SCHEMAS.glob("*/*.schema.json"))}


SCHEMA_BY_ID = _schemas()


def _resolve(node: dict, root: dict) -> tuple[dict, dict]:
    while "$ref" in node:
        ref = node["$ref"]
        if ref.startswith("#/$defs/"):
            node = root["$defs"][ref.split("/")[-1]]
        else:
            root = SCHEMA_BY_ID[ref]
            node = root
    return node, root


def schema_at(kind: str, version: str, path: tuple, value_at) -> dict:
    """The schema node of the field at ``path`` (a oneOf/anyOf resolved by the JSON type of what is there)."""
    root = SCHEMA_BY_ID[f"urn:galvatron:schema:{kind}:{version}"]
    node = root
    for depth, key in enumerate(path):
        node, root = _resolve(node, root)
        node = _branch(node, root, value_at(path[:depth]))
        if isinstance(key, int):
            node = node.get("items", {})
        else:
            extra = node.get("additionalProperties")
            node = node.get("properties", {}).get(key, extra if isinstance(extra, dict) else {})
    node, root = _resolve(node, root)
    return _branch(node, root, value_at(path))


def _branch(node: dict, root: dict, value) -> dict:
    for key in ("oneOf", "anyOf"):
        if key in node:
            for option in node[key]:
                option, _ = _resolve(option, root)
                if _json_type(value) in _types(option):
                    return option
    return node


def _types(node: dict) -> set[str]:
    t = node.get("type", [])
    types = set(t if isinstance(t, list) else [t])
    return types | ({"number"} if "integer" in types else set())


def _json_type(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    return {float: "number", str: "string", list: "array", dict: "object"}[type(value)]


def allowed_values(node: dict, key) -> st.SearchStrategy:
    """Values the schema node allows (for a leaf): its enum or const, else by type within its bounds."""
    if "enum" in node:
        return st.sampled_from(node["enum"])
    if "const" in node:
        return st.just(node["const"])
    options = []
    types = node.get("type", [])
    for t in types if isinstance(types, list) else [types]:
        if t == "integer":
            lo = node.get("minimum", node.get("exclusiveMinimum", -1) + 1)
            hi = node.get("maximum", COUNT_LIMITS.get(key, (2 ** 40,))[0])
            options.append(st.integers(lo, max(lo, hi)))
        elif t == "number":
            lo = node.get("minimum", node.get("exclusiveMinimum", -1e12))
            options.append(st.floats(lo, node.get("maximum", 1e12), allow_nan=False, allow_infinity=False,
                                     exclude_min="exclusiveMinimum" in node))
        elif t == "boolean":
            options.append(st.booleans())
        elif t == "null":
            options.append(st.none())
        elif t == "string" and "pattern" not in node:
            options.append(st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12))
    return st.one_of(options) if options else st.nothing()


def leaves(value, path=()):
    """The path of every scalar in a document."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield from leaves(v, path + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from leaves(v, path + (i,))
    else:
        yield path


def get(doc, path):
    for key in path:
        doc = doc[key]
    return doc


def put(doc, path, value):
    get(doc, path[:-1])[path[-1]] = value


LITERAL = "__fuzz_literal__"


def render(doc, literal: str | None = None) -> str:
    """The document's JSON text, the one leaf set to LITERAL written as ``literal`` (1e400, NaN, a 2000-deep list)."""
    text = json.dumps(doc)
    return text.replace(json.dumps(LITERAL), literal, 1) if literal is not None else text


# --- mutations of one input document ----------------------------------------------------------------------------

DEEP = "[" * 2000 + "]" * 2000


def _hw_inconsistent():
    return [("world_size", lambda d: d["cluster"].update(world_size=4)),
            ("stride", lambda d: d["collectives"][0].update(stride=3)),
            ("p2p pp_degree", lambda d: d["p2p"][0].update(pp_degree=3) if d["p2p"] else d["cluster"].update(nodes=3))]


def _mp_inconsistent():
    return [("seq_len", lambda d: d["layers"][0]["timings"][0].update(seq_len=4096)),
            ("duplicate entry", lambda d: d["layers"].append(copy.deepcopy(d["layers"][0]))),
            ("decoder tp", lambda d: next(e for e in d["layers"] if e["layer"] == "decoder").update(tp=3))]


def _cm_inconsistent():
    def dup_strategy(d):
        strategies = d["pipelines"][0]["strategies"]
        strategies[1]["id"] = strategies[0]["id"]

    return [("stage_ranks", lambda d: d["pipelines"][0].update(stage_ranks=3)),
            ("duplicate pipeline", lambda d: d["pipelines"].append(copy.deepcopy(d["pipelines"][0]))),
            ("duplicate strategy", dup_strategy),
            ("layout tp1 dp5", lambda d: d["pipelines"][0]["layouts"][0].update(dp=5)),
            ("unknown layout", lambda d: d["pipelines"][0]["strategies"][0].update(layout="tp9 dp9")),
            ("seq_len", lambda d: d["training"].update(seq_len=4096)),
            ("world_size", lambda d: d["cluster"].update(world_size=3))]


def _plan_inconsistent():
    return [("seq_len", lambda d: d["training"].update(seq_len=4096)),
            ("global_batch", lambda d: d.update(global_batch=d["global_batch"] + 1)),
            ("ranks", lambda d: d["stages"][0].update(ranks=list(reversed(d["stages"][0]["ranks"])))),
            ("layers", lambda d: d["layers"].pop()),
            ("tp with one head", lambda d: d["model"].update(heads=1, kv_heads=1) or d["layers"][0].update(tp=2)),
            ("world_size", lambda d: d["cluster"].update(world_size=3))]


INCONSISTENT = {"hardware-profile": _hw_inconsistent(), "model-profile": _mp_inconsistent(),
                "cost-model": _cm_inconsistent(), "plan": _plan_inconsistent()}
VERSIONS = [("1.9", (0,)), ("2.0", (3,)), ("0.9", (3,)), ("1.x", (3,)), (1.0, (3,))]


@st.composite
def mutated(draw, kind: str, classes: tuple[str, ...]):
    """(class, text or None for a missing file, exit codes a tool may give): one input changed one way."""
    doc = seed(kind)
    klass = draw(st.sampled_from(classes))
    paths = list(leaves(doc))
    if klass == "schema":
        path = draw(st.sampled_from(paths))
        version = doc["schema_version"]
        put(doc, path, draw(allowed_values(schema_at(kind, version, path, lambda p: get(doc, p)), path[-1])))
        return klass, render(doc), (0, 3, 4)
    if klass in ("nesting", "nonfinite", "huge"):
        path = draw(st.sampled_from(paths if klass == "nesting" else
                                    [p for p in paths if _json_type(get(doc, p)) in ("integer", "number")]))
        put(doc, path, LITERAL)
        literal = DEEP if klass == "nesting" else draw(st.sampled_from(
            ["1e400", "-1e400", "NaN", "Infinity"] if klass == "nonfinite" else ["1e308", "-1e31", str(2 ** 70)]))
        return klass, render(doc, literal), (3,)
    if klass == "count":
        counts = [p for p in paths if isinstance(p[-1], str) and p[-1] in COUNT_LIMITS
                  and _json_type(get(doc, p)) == "integer"]
        path = draw(st.sampled_from(counts))
        put(doc, path, draw(st.sampled_from([COUNT_LIMITS[path[-1]][0] + 1, 2 ** 40, float(get(doc, path)), 1e20])))
        return klass, render(doc), (3,)
    if klass == "syntax":
        text = render(doc)
        how = draw(st.sampled_from(["truncated", "not utf-8", "empty", "missing", "array", "string"]))
        cut = draw(st.integers(1, len(text) - 1))
        return klass, {"truncated": text[:cut], "not utf-8": "\udcff" + text, "empty": "", "missing": None,
                       "array": "[" + text + "]", "string": json.dumps(text)}[how], (3,)
    if klass == "consistent":
        _, change = draw(st.sampled_from(INCONSISTENT[kind]))
        change(doc)
        return klass, render(doc), (3,)
    if klass == "version":
        version, codes = draw(st.sampled_from(VERSIONS))
        doc["schema_version"] = version
        doc["added_in_a_later_minor"] = {"x": 1}
        return klass, render(doc), codes
    raise AssertionError(klass)


DOCUMENT_CLASSES = ("schema", "nesting", "nonfinite", "huge", "count", "syntax", "consistent", "version")


# --- running a tool, judging the outcome ------------------------------------------------------------------------

def write_input(work: Path, name: str, text: str | None) -> str:
    path = work / name
    if text is not None:
        path.write_bytes(text.encode("utf-8", "surrogateescape"))
    return str(path)


def invoke(command, args, env=None):
    result = CliRunner().invoke(command, args, env=env)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        pytest.fail("uncaught exception:\n" + "".join(traceback.format_exception(*result.exc_info)))
    return result.exit_code, result.output


def judge(tool: str, klass: str, code: int, output: str, codes, names, work: Path, made: set[str],
          output_file: str | None = None):
    """The contract: an allowed, documented exit code; no traceback; an error names its file, option or path;
    nothing left in the case's directory but its inputs (and the output, on success)."""
    OUTCOMES[(tool, klass, code)] += 1
    assert "Traceback" not in output and "Exception ignored" not in output, output
    assert code in codes, f"{tool} {klass}: exit {code}, expected one of {codes}:\n{output}"
    if code:
        error = next(line for line in output.splitlines() if line.startswith(("error: ", "Error: ")))
        assert any(name in error for name in names), f"{tool} {klass}: the message names none of {names}: {error}"
    left = {p.name for p in work.iterdir()}
    expected = made | ({Path(output_file).name} if code == 0 and output_file else set())
    assert left == expected, f"{tool} {klass}: left {sorted(left - expected)}, missing {sorted(expected - left)}"


OPTION_VALUES = ["nan", "inf", "-inf", "1e308", "0", "-1", str(2 ** 70), "ten"]


def cases(klass: str):
    """Run the decorated ``case(data)`` on EXAMPLES drawn cases of the class (4x for 'schema')."""
    n = EXAMPLES * (4 if klass == "schema" else 1)
    return lambda case: settings(max_examples=n, deadline=None, derandomize=not RANDOM, database=None,
                                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])(
        given(data=st.data())(case))


# --- galvatron-cost ---------------------------------------------------------------------------------------------

COST_OPTIONS = [("--nodes", OPTION_VALUES), ("--gpus-per-node", OPTION_VALUES), ("--seq-len", OPTION_VALUES),
                ("--max-tp", OPTION_VALUES), ("--max-pp", OPTION_VALUES),
                ("--runtime-overhead-mib", ["nan", "inf", "-1", "1e308", "ten"]), ("--dtype", ["fp8"])]


@st.composite
def output_targets(draw):
    """(how to make it, exit code): -o naming what is not a regular file, or an unwritable place."""
    return draw(st.sampled_from([("directory", 2), ("pipe", 2), ("device", 2), ("through a file", 2),
                                 ("unwritable", 1)]))


def make_target(work: Path, how: str, a_file: str) -> tuple[str, set[str]]:
    if how == "directory":
        (work / "out").mkdir()
    elif how == "pipe":
        os.mkfifo(work / "out")
    elif how == "device":
        if os.geteuid() == 0:
            os.mknod(work / "out", stat.S_IFCHR | 0o666, os.makedev(1, 3))
        else:
            os.mkfifo(work / "out")
    elif how == "through a file":
        return f"{a_file}/out.json", set()
    elif how == "unwritable":
        return "/proc/galvatron-fuzz/out.json", set()
    return str(work / "out"), {"out"}


@pytest.mark.parametrize("klass", DOCUMENT_CLASSES + ("model", "option", "output"))
def test_cost(klass):
    cases(klass)(_cost_case)(klass=klass)


def _cost_case(data, klass):
    from galvatron_cost.cli import main

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        texts = {"hw.json": render(seed("hardware-profile")), "mp.json": render(seed("model-profile"))}
        options, codes, names, out = [], None, None, str(work / "cost.json")
        if klass in DOCUMENT_CLASSES:
            name, kind = data.draw(st.sampled_from([("hw.json", "hardware-profile"), ("mp.json", "model-profile")]))
            _, texts[name], codes = data.draw(mutated(kind, (klass,)))
            names = [name]
        elif klass == "model":
            options = ["--model", data.draw(st.sampled_from(["tiny-llama", "mini-gpt"]))]
            codes, names = (3,), ["mp.json"]
        elif klass == "option":
            option, values = data.draw(st.sampled_from(COST_OPTIONS))
            options, codes, names = [option, data.draw(st.sampled_from(values))], (2,), [option]
        paths = {name: write_input(work, name, text) for name, text in texts.items()}
        made = {name for name, text in texts.items() if text is not None}
        if klass == "output":
            how, code = data.draw(output_targets())
            out, extra = make_target(work, how, paths["hw.json"])
            made |= extra
            codes, names = (code,), [out]
        code, output = invoke(main, ["fit", paths["hw.json"], paths["mp.json"], "-o", out, *options])
        judge("galvatron-cost", klass, code, output, codes, [str(work / n) for n in names or []] + list(names or []),
              work, made, out)


# --- galvatron-search: search and evaluate ------------------------------------------------------------------------

SEARCH_OPTIONS = [("--memory", OPTION_VALUES), ("--global-batch", OPTION_VALUES), ("--min-global-batch", ["0", "x"]),
                  ("--max-global-batch", [str(2 ** 70)]), ("--max-tp", OPTION_VALUES), ("--max-pp", ["0"]),
                  ("--buckets", ["7", str(2 ** 70), "nan"]), ("--schedule", ["zb-v"]), ("--sharding", ["zero4"])]


@pytest.mark.parametrize("command,klass", [("search", k) for k in DOCUMENT_CLASSES + ("option", "output")]
                         + [("evaluate", k) for k in DOCUMENT_CLASSES + ("model", "output")])
def test_search(command, klass):
    cases(klass)(_search_case)(command=command, klass=klass)


def _search_case(data, command, klass):
    from galvatron_search.cli import main

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        texts = {"cm.json": render(seed("cost-model"))}
        if command == "evaluate":
            texts["plan.json"] = render(seed("plan"))
        options, codes, names, out = ["--memory", "8"] if command == "search" else [], None, None, str(work / "p.json")
        if klass in DOCUMENT_CLASSES:
            name = data.draw(st.sampled_from(sorted(texts)))
            _, texts[name], codes = data.draw(mutated("cost-model" if name == "cm.json" else "plan", (klass,)))
            names = [name]
        elif klass == "model":
            plan = seed("plan")
            other = data.draw(st.sampled_from(["norm_eps", "tiny-llama", "name"]))
            if other == "tiny-llama":
                plan["model"] = dict(PRESETS["tiny-llama"])
            else:
                plan["model"][other] = 1e-6 if other == "norm_eps" else "my-gpt"
            texts["plan.json"], codes, names = render(plan), (3, 4), ["plan.json"]
        elif klass == "option":
            option, values = data.draw(st.sampled_from(SEARCH_OPTIONS))
            options = [option, data.draw(st.sampled_from(values))] + (["--memory", "8"] if option != "--memory" else [])
            codes, names = (2,), [option]
        paths = {name: write_input(work, name, text) for name, text in texts.items()}
        made = {name for name, text in texts.items() if text is not None}
        if klass == "output":
            how, code = data.draw(output_targets())
            out, extra = make_target(work, how, paths["cm.json"])
            made |= extra
            codes, names = (code,), [out]
        inputs = [paths["cm.json"]] if command == "search" else [paths["plan.json"], paths["cm.json"]]
        code, output = invoke(main, [command, *options, *inputs, "-o", out])
        judge("galvatron-search", f"{command} {klass}", code, output, codes,
              [str(work / n) for n in names or []] + list(names or []), work, made, out)


# --- galvatron-run: the plan checks before any rank -------------------------------------------------------------

RUN_OPTIONS = [("--timeout", ["nan", "inf", "0", "1e308", "x"]), ("--peak-tflops", ["nan", "inf", "0", "-1", "1e308"]),
               ("--val-fraction", ["nan", "inf", "1", "-0.5"]), ("--nproc", ["0", str(2 ** 70)]),
               ("--world", ["0", str(2 ** 70)]), ("--steps", ["0", "x"]), ("--dtype", ["fp8"])]


@pytest.mark.parametrize("klass", DOCUMENT_CLASSES + ("option",))
def test_run(klass):
    cases(klass)(_run_case)(klass=klass)


def _run_case(data, klass):
    from galvatron_run.cli import main

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        text, options, names = render(seed("plan")), [], ["plan.json"]
        if klass in DOCUMENT_CLASSES:
            _, text, codes = data.draw(mutated("plan", (klass,)))
            codes = tuple(4 if c == 0 else c for c in codes)     # WORLD_SIZE=3: a sound plan stops at exit 4
        else:
            option, values = data.draw(st.sampled_from(RUN_OPTIONS))
            options, codes, names = [option, data.draw(st.sampled_from(values))], (2,), [option]
        path = write_input(work, "plan.json", text)
        code, output = invoke(main, [path, "--steps", "1", "-o", str(work / "run.json"), *options],
                              env={"WORLD_SIZE": "3", "RANK": None, "LOCAL_RANK": None})
        judge("galvatron-run", klass, code, output, codes, [str(work / n) for n in names] + names, work,
              {"plan.json"} if text is not None else set(), str(work / "run.json"))


# --- galvatron-probe: summary of profiles, and bad options that must fail before any work --------------------------

PROBE_OPTIONS = [(["bandwidth", "--timeout"], ["nan", "inf", "0.5", "1e308"]),
                 (["bandwidth", "--nproc"], ["0", str(2 ** 70)]), (["bandwidth", "--repeats"], ["0", str(2 ** 70)]),
                 (["bandwidth", "--group-sizes"], ["0", str(2 ** 70)]),
                 (["bandwidth", "--max-bytes"], ["lots", "-1"]),
                 (["compute", "--model", "tiny-gpt", "--seq-len"], ["0", str(2 ** 70), "x"]),
                 (["compute", "--model", "tiny-gpt", "--micro-batch-sizes"], ["0", str(2 ** 70)]),
                 (["compute", "--model", "tiny-gpt", "--tp"], ["0", str(2 ** 70)])]


@pytest.mark.parametrize("klass", DOCUMENT_CLASSES + ("option",))
def test_probe(klass):
    cases(klass)(_probe_case)(klass=klass)


def _probe_case(data, klass):
    from galvatron_probe.cli import main

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        texts = {"hw.json": render(seed("hardware-profile")), "mp.json": render(seed("model-profile"))}
        if klass in DOCUMENT_CLASSES:
            name, kind = data.draw(st.sampled_from([("hw.json", "hardware-profile"), ("mp.json", "model-profile")]))
            _, texts[name], codes = data.draw(mutated(kind, (klass,)))
            codes = tuple(c for c in codes if c != 4)               # the summary plans nothing
            names = [name]
        paths = {name: write_input(work, name, text) for name, text in texts.items()}
        made = {name for name, text in texts.items() if text is not None}
        if klass == "option":
            command, values = data.draw(st.sampled_from(PROBE_OPTIONS))
            args, codes, names = [*command, data.draw(st.sampled_from(values))], (2,), [command[-1]]
        else:
            args = ["summary", paths["hw.json"], paths["mp.json"]]
        code, output = invoke(main, args)
        judge("galvatron-probe", klass, code, output, codes, [str(work / n) for n in names] + names, work, made)


# --- end to end: the console scripts --------------------------------------------------------------------------

SCRIPTS = ("galvatron-probe", "galvatron-cost", "galvatron-search", "galvatron-run")


@pytest.mark.skipif(any(shutil.which(t) is None for t in SCRIPTS), reason="needs the four console scripts")
@pytest.mark.parametrize("tool,script", [
    ("galvatron-probe", "galvatron-probe summary - < deep.json"),
    ("galvatron-cost", "galvatron-cost fit - < deep.json"),
    ("galvatron-search", "galvatron-search --memory 8 - < deep.json"),
    ("galvatron-search", "galvatron-search evaluate - cm.json < deep.json"),
    ("galvatron-run", "WORLD_SIZE=3 galvatron-run - < deep.json"),
    ("galvatron-cost", "galvatron-cost fit hw.json mp.json > /dev/full"),
    ("galvatron-search", "galvatron-search evaluate plan.json cm.json > /dev/full"),
    ("galvatron-search", "galvatron-search evaluate plan.json cm.json | (exec 0<&-; sleep 2)"),
    ("galvatron-cost", "galvatron-cost fit hw.json mp.json --nodes 100000 --gpus-per-node 8"),
])
def test_end_to_end(tmp_path, tool, script):
    (tmp_path / "deep.json").write_text('{"kind": ' + DEEP + "}")
    for name, kind in (("hw.json", "hardware-profile"), ("mp.json", "model-profile"), ("cm.json", "cost-model"),
                       ("plan.json", "plan")):
        (tmp_path / name).write_text(render(seed(kind)))
    before = sorted(p.name for p in tmp_path.iterdir())
    done = subprocess.run(["bash", "-o", "pipefail", "-c", script], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120, env=dict(os.environ, OMP_NUM_THREADS="1"))
    code = 2 if "--nodes" in script else 3 if "deep" in script else 1
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    OUTCOMES[(tool, "end to end", done.returncode)] += 1
    assert done.returncode == code, done.stderr
    assert len(errors) == 1 and "Traceback" not in done.stderr and "Exception ignored" not in done.stderr, done.stderr
    assert errors[0].startswith(("error: <stdin>: ", "error: cannot write to stdout: ", "error: the target cluster"))
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_zz_table(capsys):
    """The cases per tool and their exit codes (printed with -s and at the end of the run)."""
    tools = sorted({tool for tool, _, _ in OUTCOMES})
    codes = sorted({code for _, _, code in OUTCOMES})
    lines = ["", "fuzz cases per tool, by exit code (tracebacks: 0, asserted per case)",
             f"{'tool':<18}{'cases':>7}" + "".join(f"{'exit ' + str(c):>9}" for c in codes)]
    for tool in tools:
        by_code = Counter()
        for (t, _, c), n in OUTCOMES.items():
            if t == tool:
                by_code[c] += n
        lines.append(f"{tool:<18}{sum(by_code.values()):>7}" + "".join(f"{by_code[c]:>9}" for c in codes))
    classes = Counter()
    for (_, klass, _), n in OUTCOMES.items():
        classes[klass.split()[-1]] += n
    lines.append("by class: " + ", ".join(f"{k} {v}" for k, v in sorted(classes.items())))
    with capsys.disabled():
        print("\n".join(lines))
    if EXAMPLES >= 40 and len(tools) == 4:
        assert all(sum(n for (t, _, _), n in OUTCOMES.items() if t == tool) >= 200 for tool in tools)
