"""Bad input, one class at a time (issue 13): every case a DocumentError (exit 3) naming the file and the JSON path,
a UsageError (exit 2) naming the option or path, or a GalvatronError (exit 1) for a failed write; never a
traceback, a hang or a file left behind.

    pytest -q tests/test_robustness.py
"""
from __future__ import annotations

import copy
import io
import json
import os
import stat
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from galvatron_contracts import documents as D
from galvatron_contracts import limits
from galvatron_contracts.models import PRESETS, spec_differences
from galvatron_contracts.options import Finite
from galvatron_contracts.pipeline import divisors
from galvatron_contracts.plan import Plan

EXAMPLES = Path(__file__).resolve().parents[3] / "schemas"
KINDS = ("hardware-profile", "model-profile", "cost-model", "plan", "run-report")


def example(kind: str, name: str = "tiny") -> dict:
    return json.loads((EXAMPLES / kind / "examples" / "valid" / f"{name}.json").read_text())


def refused(doc, source="doc.json") -> list[str]:
    """The error lines of a document the reader refuses (exit 3, every line naming ``source``)."""
    with pytest.raises(D.DocumentError) as caught:
        D.validate(doc, source)
    assert caught.value.exit_code == 3
    assert all(line.startswith(f"{source}: ") for line in str(caught.value).splitlines())
    return caught.value.errors


def read_text(tmp_path, text, name="doc.json") -> list[str]:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(D.DocumentError) as caught:
        D.read_documents([str(path)])
    assert str(caught.value).startswith(f"{path}: ")
    return caught.value.errors


@pytest.mark.parametrize("kind", KINDS)
def test_every_example_passes_every_check(kind):
    for path in sorted((EXAMPLES / kind / "examples" / "valid").glob("*.json")):
        D.validate(json.loads(path.read_text()), str(path))


# --- 1. nesting -------------------------------------------------------------------------------------------------

def test_nesting_deeper_than_the_parser_is_refused_with_its_line(tmp_path):
    errors = read_text(tmp_path, '{"kind": "plan",\n "x": ' + "[" * 5000 + "]" * 5000 + "}")
    assert errors == [f"line 2 column {7 + limits.MAX_DEPTH - 1}: nested more than {limits.MAX_DEPTH} containers "
                      f"deep (the deepest field of a document, a plan's tp_groups, is 7)"]


def test_nesting_is_bounded_at_max_depth():
    doc = example("plan")
    doc["search"] = {"options": {"deep": []}}  # depth 4 at the list
    inner = doc["search"]["options"]["deep"]
    for _ in range(limits.MAX_DEPTH - 4):
        inner.append([])
        inner = inner[0]
    assert limits.value_errors(doc) == []
    inner.append([])
    assert refused(doc) == [f"$.search.options.deep{'[0]' * (limits.MAX_DEPTH - 3)}: nested more than "
                            f"{limits.MAX_DEPTH} containers deep (the deepest field of a document, a plan's "
                            f"tp_groups, is 7)"]


def test_the_deepest_real_field_is_seven_deep():
    def depth(value):
        if isinstance(value, dict):
            return 1 + max(map(depth, value.values()), default=0)
        if isinstance(value, list):
            return 1 + max(map(depth, value), default=0)
        return 0

    deepest = max(depth(json.loads(p.read_text())) for p in EXAMPLES.glob("*/examples/valid/*.json"))
    assert deepest == 7 < limits.MAX_DEPTH


@pytest.mark.parametrize("text,error", [
    ('{"n_embd": ' + "[" * 3000 + "]" * 3000 + "}", f"line 1 column {12 + limits.MAX_DEPTH - 1}: {limits.TOO_DEEP}"),
    ('{"n_embd": NaN}', "line 1 column 12: malformed JSON (NaN is not a JSON number; documents carry no NaN or "
                        "Infinity)"),
    ('{"layer_norm_epsilon": 1e400}', "$.layer_norm_epsilon: expected a finite number, got inf (documents carry no "
                                      "NaN or Infinity; a literal like 1e400 overflows to infinity)"),
])
def test_a_config_json_is_read_by_the_same_rules(tmp_path, text, error):
    from galvatron_contracts.models import load_model_spec

    path = tmp_path / "config.json"
    path.write_text(text)
    with pytest.raises(D.DocumentError) as caught:
        load_model_spec(str(path))
    assert caught.value.errors == [error] and caught.value.source == str(path)


# --- 2. non-finite and overflowing numbers --------------------------------------------------------------------

@pytest.mark.parametrize("literal,message", [
    ("1e400", "expected a finite number, got inf"),
    ("-1e400", "expected a finite number, got -inf"),
    ("1e308", "expected a number of magnitude at most 1e+30, got 1e+308"),
    ("-1e31", "expected a number of magnitude at most 1e+30, got -1e+31"),
])
def test_overflowing_numbers_are_refused_with_their_path(tmp_path, literal, message):
    text = json.dumps(example("hardware-profile")).replace('"median_s": 9.46133e-05', f'"median_s": {literal}', 1)
    errors = read_text(tmp_path, text)
    assert errors == [f"$.collectives[0].points[0].time.median_s: {message}" + (
        " (documents carry no NaN or Infinity; a literal like 1e400 overflows to infinity)" if "finite" in message
        else "")]


def test_integers_beyond_int64_and_too_long_to_convert(tmp_path):
    doc = example("hardware-profile")
    doc["cluster"]["device"]["memory_bytes"] = 2 ** 70
    assert refused(doc) == ["$.cluster.device.memory_bytes: expected an integer within int64 (|n| < 2**63), "
                            "got 1180591620717411303424"]
    text = json.dumps(example("hardware-profile")).replace('"warmup": 2', '"warmup": ' + "9" * 5000)
    errors = read_text(tmp_path, text)
    assert len(errors) == 1 and errors[0].endswith("malformed JSON (an integer of 5000 digits)")
    assert errors[0].startswith("line 1 column ")


def test_nan_still_refused_as_malformed(tmp_path):
    errors = read_text(tmp_path, '{"kind": "plan", "x": NaN}')
    assert errors == ["line 1 column 23: malformed JSON (NaN is not a JSON number; documents carry no NaN or "
                      "Infinity)"]


def test_the_writer_refuses_what_a_reader_would(tmp_path):
    doc = example("cost-model")
    doc["pipelines"][0]["strategies"][0]["time"]["grad_sync_s"] = 1e300
    with pytest.raises(D.GalvatronError, match=r"internal error: refusing to write an invalid cost-model:\n  "
                                               r"\$.pipelines\[0\].strategies\[0\].time.grad_sync_s: expected a "
                                               r"number of magnitude at most 1e\+30") as caught:
        D.write_document(doc, tmp_path / "out.json")
    assert caught.value.exit_code == 1 and not list(tmp_path.iterdir())


# --- 3. counts: integers, and bounded -------------------------------------------------------------------------

@pytest.mark.parametrize("value,message", [(2.0, "2.0 is not of type 'integer'"),
                                           (1e20, "1e+20 is not of type 'integer'"),
                                           (1e308, "expected a number of magnitude at most 1e+30, got 1e+308")])
def test_an_integer_field_holds_an_integer(value, message):
    doc = example("plan")
    doc["model"]["ffn_hidden"] = value
    assert refused(doc) == [f"$.model.ffn_hidden: {message}"]


def _count_paths(value, path=()):
    """(path, key) of every integer (or list of integers) under a COUNT_LIMITS key."""
    if isinstance(value, dict):
        for key, v in value.items():
            if key in limits.COUNT_LIMITS and (isinstance(v, int) and not isinstance(v, bool)
                                               or isinstance(v, list) and v and isinstance(v[0], int)):
                yield path + (key,), key
            yield from _count_paths(v, path + (key,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _count_paths(v, path + (i,))


def _set(doc, path, value):
    for key in path[:-1]:
        doc = doc[key]
    if isinstance(doc[path[-1]], list):
        doc[path[-1]][0] = value
    else:
        doc[path[-1]] = value


@pytest.mark.parametrize("kind", KINDS)
def test_every_count_has_a_bound(kind):
    """Each count of each example, set one above its bound: refused at that path, before any consistency check
    could loop over it."""
    doc = example(kind)
    seen = set()
    for path, key in _count_paths(doc):
        if key in seen:
            continue
        seen.add(key)
        bound = limits.COUNT_LIMITS[key][0]
        bad = copy.deepcopy(doc)
        _set(bad, path, bound + 1)
        where = "$" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path)
        errors = refused(bad)
        assert any(e.startswith(where) and f"expected at most {bound}" in e for e in errors), (where, errors)
    assert seen, kind


def test_a_plan_for_a_world_of_2_to_the_40_is_refused_at_once():
    doc = example("plan")
    doc["cluster"].update(nodes=2 ** 20, gpus_per_node=2 ** 20, world_size=2 ** 40)
    with pytest.raises(D.DocumentError) as caught:
        Plan.parse(doc, "plan.json")
    assert caught.value.errors[0] == (f"$.cluster.nodes: expected at most {limits.MAX_RANKS} (ranks; far above any "
                                      f"real run), got {2 ** 20}")


def test_divisors():
    assert all(divisors(n) == [d for d in range(1, n + 1) if n % d == 0] for n in range(1, 400))
    assert len(divisors(limits.MAX_BATCH)) == 25


# --- 4. float options ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("value,ok", [("nan", False), ("inf", False), ("-inf", False), ("1e308", False),
                                      ("0", False), ("-1", False), ("x", False), ("0.5", True), ("64", True)])
def test_finite_option(value, ok):
    @click.command()
    @click.option("--memory", type=Finite(0, limits.MAX_MEMORY_GIB, min_open=True), required=True)
    def cmd(memory):
        click.echo(repr(memory))

    result = CliRunner().invoke(cmd, ["--memory", value])
    assert result.exit_code == (0 if ok else 2), result.output
    assert "Traceback" not in result.output
    if not ok:
        assert "Invalid value for '--memory'" in result.output


# --- 5. consistency of each kind ------------------------------------------------------------------------------

def _hw_world():
    doc = example("hardware-profile")
    doc["cluster"]["world_size"] = 4
    return doc, ["$.cluster.world_size: expected nodes * gpus_per_node = 2, got 4"]


def _hw_stride():
    doc = example("hardware-profile")
    doc["collectives"][0]["stride"] = 3
    return doc, ["$.collectives[0]: a group of 2 ranks 3 apart spans 6 ranks, which do not tile world_size 2"]


def _mp_seq():
    doc = example("model-profile")
    doc["layers"][0]["timings"][0]["seq_len"] = 4096
    return doc, ["$.layers[0].timings[0].seq_len: expected at most the model's max_seq_len 64, got 4096"]


def _mp_duplicate():
    doc = example("model-profile")
    doc["layers"].append(copy.deepcopy(doc["layers"][0]))
    n = len(doc["layers"]) - 1
    return doc, [f"$.layers[{n}]: a second {doc['layers'][0]['layer']} entry at tp {doc['layers'][0]['tp']} "
                 f"(the first is $.layers[0])"]


def _mp_tp():
    doc = example("model-profile")
    entry = next(e for e in doc["layers"] if e["layer"] == "decoder")
    entry["tp"] = 3
    i = doc["layers"].index(entry)
    return doc, [f"$.layers[{i}].tp: the model's heads 4 is not divisible by tp 3",
                 f"$.layers[{i}].tp: the model's kv_heads 4 is not divisible by tp 3",
                 f"$.layers[{i}].tp: the model's ffn_hidden 256 is not divisible by tp 3"]


def _cm_stage_ranks():
    doc = example("cost-model")
    doc["pipelines"][0]["stage_ranks"] = 3
    return doc, ["$.pipelines[0].stage_ranks: expected world_size / pp = 2, got 3"]


def _cm_pp():
    doc = example("cost-model")
    doc["pipelines"].append(copy.deepcopy(doc["pipelines"][0]))
    return doc, ["$.pipelines[2].pp: a second entry for pipeline degree 1 (the first is $.pipelines[0])"]


def _cm_strategy_id():
    doc = example("cost-model")
    strategies = doc["pipelines"][0]["strategies"]
    strategies[1]["id"] = strategies[0]["id"]
    return doc, [f"$.pipelines[0].strategies[1].id: a second strategy {strategies[0]['id']!r}"]


def _cm_layout():
    doc = example("cost-model")
    doc["pipelines"][0]["layouts"][0]["dp"] = 5
    return doc, ["$.pipelines[0].layouts[0]: expected tp * dp = stage_ranks 2, got 1 * 5"]


def _cm_unknown_layout():
    doc = example("cost-model")
    doc["pipelines"][0]["strategies"][0]["layout"] = "tp9 dp9"
    return doc, ["$.pipelines[0].strategies[0].layout: unknown layout id 'tp9 dp9'"]


def _cm_seq():
    doc = example("cost-model")
    doc["training"]["seq_len"] = 4096
    return doc, ["$.training.seq_len: expected at most the model's max_seq_len 64, got 4096"]


def _cm_no_head():
    doc = example("cost-model")
    doc["pipelines"][0]["strategies"] = [s for s in doc["pipelines"][0]["strategies"] if s["layer"] != "head"]
    return doc, ["$.pipelines[0].strategies: no head strategy"]


def _plan_seq():
    doc = example("plan")
    doc["training"]["seq_len"] = 4096
    return doc, ["$.training.seq_len: expected at most the model's max_seq_len 64, got 4096"]


@pytest.mark.parametrize("case", [_hw_world, _hw_stride, _mp_seq, _mp_duplicate, _mp_tp, _cm_stage_ranks, _cm_pp,
                                  _cm_strategy_id, _cm_layout, _cm_unknown_layout, _cm_seq, _cm_no_head, _plan_seq],
                         ids=lambda f: f.__name__[1:])
def test_inconsistent_documents_are_refused_at_the_fault(case):
    doc, expected = case()
    assert refused(doc) == expected


# --- 6. messages name their file ------------------------------------------------------------------------------

def test_read_named_gives_each_document_its_name(tmp_path):
    hw, mp = example("hardware-profile"), example("model-profile")
    path = tmp_path / "both.json"
    path.write_text(json.dumps(hw) + "\n" + json.dumps(mp))
    single = tmp_path / "hw.json"
    single.write_text(json.dumps(hw))
    named = D.read_named([str(path), str(single)])
    assert [name for name, _ in named] == [f"{path}[document 1]", f"{path}[document 2]", str(single)]
    assert [doc for _, doc in named] == [hw, mp, hw]
    assert D.read_named(["-"], stdin=io.StringIO(json.dumps(mp)))[0][0] == "<stdin>"


def test_an_input_too_large_is_refused_without_reading_it_all(tmp_path, monkeypatch):
    monkeypatch.setattr(D, "MAX_DOCUMENT_BYTES", 1000)
    path = tmp_path / "big.json"
    path.write_text(json.dumps(example("plan")))
    with pytest.raises(D.DocumentError, match=f"^{path}: more than 0 MiB"):
        D.read_documents([str(path)])


# --- 7. newer minors written back; another model ---------------------------------------------------------------

def test_as_current_writes_a_newer_minor_back_at_the_current_version(capsys, tmp_path):
    doc = example("plan")
    doc["schema_version"] = "1.9"
    doc["added_in_1_9"] = {"x": 1}
    doc["cluster"]["added_too"] = True
    read = D.validate(doc, "plan.json")
    current_version = D.CURRENT_VERSION["plan"]           # the newest plan schema shipped is the one written
    assert f"is newer than the newest known {current_version}" in capsys.readouterr().err
    current = D.as_current(read, "plan.json")
    assert (f"writing plan {current_version}, without the fields it does not have: $.added_in_1_9, "
            "$.cluster.added_too") in capsys.readouterr().err
    assert current == example("plan") and read["added_in_1_9"] == {"x": 1}
    D.write_document(current, tmp_path / "out.json")


def test_spec_differences_compare_the_whole_spec():
    tiny = PRESETS["tiny-gpt"]
    assert spec_differences(tiny, dict(tiny, source="a/config.json")) == []
    assert spec_differences(dict(tiny, norm_eps=1e-5), {k: v for k, v in tiny.items() if k != "norm_eps"}) == []
    assert spec_differences(tiny, dict(tiny, ffn_hidden=255, name="x"), "the cost model's") == [
        "ffn_hidden 256 (the cost model's 255)", "name 'tiny-gpt' (the cost model's 'x')"]


# --- 8. outputs: regular files only; failed writes are one error -----------------------------------------------

def test_a_device_is_never_replaced(tmp_path):
    """/dev/null is only looked at (a regression must not replace the machine's own); a device made here is the one
    written to."""
    with pytest.raises(D.UsageError, match=r"^/dev/null: not a regular file \(a character device\); give a file "
                                           r"path, or '-' for stdout$") as caught:
        D.output_path("/dev/null")
    assert caught.value.exit_code == 2
    if os.geteuid() != 0:
        pytest.skip("making a device node needs root")
    device = tmp_path / "null"
    os.mknod(device, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    with pytest.raises(D.UsageError, match="not a regular file \\(a character device\\)"):
        D.write_document(example("plan"), device)
    assert stat.S_ISCHR(os.stat(device).st_mode) and sorted(p.name for p in tmp_path.iterdir()) == ["null"]


@pytest.mark.parametrize("make,what", [(lambda p: p.mkdir(), "a directory"), (lambda p: os.mkfifo(p), "a pipe")])
def test_other_special_targets_are_refused(tmp_path, make, what):
    target = tmp_path / "out"
    make(target)
    with pytest.raises(D.UsageError, match=f"not a regular file \\({what}\\)"):
        D.write_document(example("plan"), target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_path_through_a_file_is_a_usage_error(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(D.UsageError, match="not a file path"):
        D.write_document(example("plan"), tmp_path / "file" / "out.json")


def test_a_symlink_is_followed_and_kept(tmp_path):
    target = tmp_path / "target.json"
    target.write_text("{}")
    link = tmp_path / "link.json"
    link.symlink_to(target)
    D.write_document(example("plan"), link)
    assert link.is_symlink() and json.loads(target.read_text()) == example("plan")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.json", "target.json"]


class _Failing(io.StringIO):
    def __init__(self, error):
        super().__init__()
        self.error = error

    def flush(self):
        raise self.error


@pytest.mark.parametrize("error,message", [(OSError(28, "No space left on device"), "No space left on device"),
                                           (BrokenPipeError(32, "Broken pipe"), "Broken pipe")])
def test_a_failed_write_to_stdout_is_one_error(error, message):
    with pytest.raises(D.GalvatronError, match=f"^cannot write to stdout: {message}$") as caught:
        D.write_document(example("plan"), "-", stream=_Failing(error))
    assert caught.value.exit_code == 1


def test_a_full_disk_leaves_nothing_behind(tmp_path, monkeypatch):
    def full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(D.GalvatronError, match="No space left on device") as caught:
        D.write_document(example("plan"), tmp_path / "out.json")
    assert caught.value.exit_code == 1 and not list(tmp_path.iterdir())
