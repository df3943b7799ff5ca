"""The example documents: every valid one is accepted, every invalid one is refused for exactly its stated reason.

    pytest -q schemas/tests/test_examples.py

An invalid example ``<name>.json`` has a sidecar ``<name>.reason``: 'path: <JSON path>' and 'message: <fragment>'.
The reader must refuse it with exactly one error, at that path, containing that fragment (one reason per file).
"""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from galvatron_contracts.documents import CURRENT_VERSION, DOCUMENT_KINDS, DocumentError, known_versions, read_documents
from galvatron_contracts.models import PRESETS, check_model_spec

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = ROOT / "schemas"
KINDS = DOCUMENT_KINDS + ("model-spec",)
VALID = sorted(SCHEMAS.glob("*/examples/valid/*.json"))
INVALID = sorted(SCHEMAS.glob("*/examples/invalid/*.json"))


def name(path):
    return f"{path.parts[-4]}/{path.parts[-2]}/{path.name}"


def read(path):
    """Read an example the way a tool would; model specs (not documents) through check_model_spec."""
    if path.parts[-4] == "model-spec":
        return check_model_spec(json.loads(path.read_text()), str(path))
    (doc,) = read_documents(str(path))
    return doc


def reason(path):
    fields = dict(line.split(": ", 1) for line in path.with_suffix(".reason").read_text().splitlines() if line)
    assert fields.get("path", "").startswith("$") and fields.get("message"), f"{path}: malformed .reason"
    return fields["path"], fields["message"]


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_has_tiny_realistic_and_invalid_examples(kind):
    valid = {p.name for p in VALID if p.parts[-4] == kind}
    invalid = [p for p in INVALID if p.parts[-4] == kind]
    if kind == "model-spec":
        assert {f"{preset}.json" for preset in PRESETS} <= valid
    else:
        assert {"tiny.json", "realistic.json"} <= valid
        versions = {json.loads(p.read_text())["schema_version"] for p in VALID if p.parts[-4] == kind}
        assert versions == {f"{a}.{b}" for a, b in known_versions()[kind]}  # every release has a valid example
        assert valid_doc(kind, "tiny.json")["schema_version"] == CURRENT_VERSION[kind]  # what the tools write
    assert len(invalid) >= 4
    for p in invalid:
        assert p.with_suffix(".reason").is_file(), f"{p} has no .reason"


@pytest.mark.parametrize("path", VALID, ids=name)
def test_valid_example_is_accepted(path):
    doc = read(path)
    if path.parts[-4] != "model-spec":
        assert doc["kind"] == path.parts[-4]


@pytest.mark.parametrize("path", INVALID, ids=name)
def test_invalid_example_is_refused_for_its_stated_reason(path):
    where, fragment = reason(path)
    with pytest.raises(DocumentError) as caught:
        read(path)
    errors = caught.value.errors
    assert len(errors) == 1, f"expected one reason, got {errors}"
    assert errors[0].startswith(f"{where}: "), errors[0]
    assert fragment in errors[0], errors[0]
    assert caught.value.exit_code == 3


def test_invalid_examples_differ_from_a_valid_one_only_slightly():
    """Each invalid example is a valid example with one edit (so it tests one thing), not an unrelated blob."""
    for path in INVALID:
        if path.parts[-4] == "model-spec":
            continue
        bad = json.loads(path.read_text())
        bases = [json.loads(p.read_text()) for p in VALID if p.parts[-4] == path.parts[-4]]
        diffs = min(len(diff(base, bad)) for base in bases)
        assert 1 <= diffs <= 2, f"{path.name}: {diffs} differences from the nearest valid example"


def diff(a, b, at="$"):
    if isinstance(a, dict) and isinstance(b, dict):
        out = [f"{at}.{k}" for k in set(a) ^ set(b)]
        return out + [d for k in set(a) & set(b) for d in diff(a[k], b[k], f"{at}.{k}")]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b, strict=True)) for d in diff(x, y, f"{at}[{i}]")]
    return [] if a == b else [at]


def test_examples_are_what_the_generator_writes():
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "make_examples.py"), "--check"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


# --- the realistic examples are the ones the contract promises -------------------------------------------------

def valid_doc(kind, file="realistic.json"):
    return json.loads((SCHEMAS / kind / "examples" / "valid" / file).read_text())


def test_realistic_hardware_profile_covers_two_nodes_of_eight():
    hw = valid_doc("hardware-profile")
    assert (hw["cluster"]["nodes"], hw["cluster"]["gpus_per_node"], hw["cluster"]["world_size"]) == (2, 8, 16)
    ops = {c["op"] for c in hw["collectives"]}
    assert ops == {"all_reduce", "all_gather", "reduce_scatter"}  # what the strategies use (no all_to_all)
    assert {c["layout"] for c in hw["collectives"]} == {"consecutive", "strided"}
    assert {c["crosses_nodes"] for c in hw["collectives"]} == {True, False}
    assert all(len({p["message_bytes"] for p in c["points"]}) >= 4 for c in hw["collectives"])
    for c in hw["collectives"]:  # layout, stride and crossing agree: the group is ranks 0, stride, 2 * stride, ...
        group = [i * c["stride"] for i in range(c["group_size"])]
        assert (c["stride"] == 1) == (c["layout"] == "consecutive") and group[-1] < 16
        assert c["crosses_nodes"] == (group[-1] // 8 != group[0] // 8)


def test_realistic_documents_are_one_pipeline_through_the_tools():
    from galvatron_contracts.documents import digest

    cost, plan = valid_doc("cost-model"), valid_doc("plan")
    assert [d["producer"]["name"] for d in (cost, plan)] == ["galvatron-cost", "galvatron-search"]
    assert plan["search"]["cost_model_sha256"] == digest(cost) and plan["search"]["time_s"] == 0
    assert plan["model"] == cost["model"] == valid_doc("model-profile")["model"]
    assert valid_doc("run-report")["plan"]["sha256"] == digest(plan)


def test_mixed_plan_is_llama2_7b_on_8_gpus_with_2_stages_and_mixed_strategies():
    plan = valid_doc("plan", "mixed.json")
    assert plan["model"] == PRESETS["llama2-7b"]
    assert plan["cluster"]["world_size"] == 8 and len(plan["stages"]) == 2
    for stage in plan["stages"]:
        mine = plan["layers"][stage["layer_start"]:stage["layer_end"]]
        assert len({json.dumps(s, sort_keys=True) for s in mine}) >= 2  # mixed inside each stage
    assert {s["tp"] for s in plan["layers"]} >= {1, 2, 4}
    assert {s["dp_sharding"] for s in plan["layers"]} == {"ddp", "zero2", "zero3"}
    assert {s["tp_layout"] for s in plan["layers"]} == {"consecutive", "strided"}


# --- plan examples follow the rank layout convention (checked here from its definition, independently) ---------

def convention_groups(ranks, tp, layout):
    """schemas/README.md ('Ranks'), literally: local index j -> (tp_rank, dp_rank); group by the other coordinate."""
    size, dp = len(ranks), len(ranks) // tp
    coords = {j: ((j % tp, j // tp) if layout == "consecutive" else (j // dp, j % dp)) for j in range(size)}
    tp_groups = [[ranks[j] for j in sorted(coords, key=lambda j: coords[j][0]) if coords[j][1] == d]
                 for d in range(dp)]
    dp_groups = [[ranks[j] for j in sorted(coords, key=lambda j: coords[j][1]) if coords[j][0] == t]
                 for t in range(tp)]
    return tp_groups, dp_groups


@pytest.mark.parametrize("path", [p for p in VALID if p.parts[-4] == "plan"], ids=name)
def test_plan_example_follows_the_rank_layout_convention(path):
    plan = json.loads(path.read_text())
    world, pp = plan["cluster"]["world_size"], len(plan["stages"])
    size = world // pp
    assert size * pp == world
    covered = []
    for k, stage in enumerate(plan["stages"]):
        assert stage["ranks"] == list(range(k * size, (k + 1) * size))
        covered += range(stage["layer_start"], stage["layer_end"])
        used = {(s["tp"], s["tp_layout"]) for s in plan["layers"][stage["layer_start"]:stage["layer_end"]]}
        used |= {(plan["embedding"]["tp"], plan["embedding"]["tp_layout"])} if k == 0 else set()
        used |= {(plan["head"]["tp"], plan["head"]["tp_layout"])} if k == pp - 1 else set()
        listed = {(lay["tp"], lay["tp_layout"]): lay for lay in stage["layouts"]}
        assert used <= set(listed)
        for (tp, layout), lay in listed.items():
            assert lay["tp"] * lay["dp"] == size
            assert (lay["tp_groups"], lay["dp_groups"]) == convention_groups(stage["ranks"], tp, layout)
            every = sorted(r for g in lay["tp_groups"] for r in g)
            assert every == stage["ranks"] == sorted(r for g in lay["dp_groups"] for r in g)
    assert covered == list(range(plan["model"]["layers"])) == list(range(len(plan["layers"])))
    assert plan["global_batch"] == plan["micro_batch_size"] * plan["micro_batches"]
    for s in plan["layers"] + [plan["embedding"], plan["head"]]:
        assert plan["micro_batch_size"] % s["dp"] == 0  # what the runtime needs (exit 4 otherwise)


def test_cost_model_examples_cite_their_inputs_and_cover_every_layer_kind():
    from galvatron_contracts.documents import digest

    cost = valid_doc("cost-model")
    hw, mp = valid_doc("hardware-profile"), valid_doc("model-profile")
    assert [i["sha256"] for i in cost["inputs"]] == [digest(hw), digest(mp)]
    for pipe in cost["pipelines"]:
        ids = {lay["id"] for lay in pipe["layouts"]}
        assert {s["layer"] for s in pipe["strategies"]} == {"decoder", "embedding", "head"}
        assert {s["layout"] for s in pipe["strategies"]} <= ids
        assert all(t["from"] in ids and t["to"] in ids for t in pipe["transitions"])
        assert all(lay["tp"] * lay["dp"] == pipe["stage_ranks"] for lay in pipe["layouts"])
    plans = [valid_doc("plan"), valid_doc("plan", "mixed.json")]
    assert [plan["cluster"] for plan in plans] == [cost["cluster"]] * 2
    assert valid_doc("plan")["search"]["cost_model_sha256"] == digest(cost)


# --- reader policy over every valid example ---------------------------------------------------------------------

DOCUMENTS = [p for p in VALID if p.parts[-4] != "model-spec"]


@pytest.mark.parametrize("path", DOCUMENTS, ids=name)
def test_every_example_as_a_newer_minor_with_new_fields_is_read_with_a_warning(path, capsys):
    from galvatron_contracts.documents import validate

    versions = [f"{a}.{b}" for a, b in known_versions()[path.parts[-4]]]
    supported = versions[0] if len(versions) == 1 else f"{versions[0]} to {versions[-1]}"
    doc = json.loads(path.read_text())
    doc["schema_version"] = "1.9"
    doc["added_in_1_9"] = {"x": 1}
    doc["producer"]["build"] = "abc"
    if "model" in doc:
        doc["model"]["attention_bias"] = False  # inside the $ref'd model spec too
    assert validate(doc, path.name) is doc
    assert f"warning: {path.name}: {doc['kind']} 1.9 is newer than the newest known {versions[-1]}" in \
        capsys.readouterr().err
    doc["schema_version"] = "2.0"
    with pytest.raises(DocumentError, match=f"is newer than this reader supports \\({supported}\\)"):
        validate(doc, path.name)
