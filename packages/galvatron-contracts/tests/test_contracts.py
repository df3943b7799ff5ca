"""The contracts library as it ships: reader policy, errors, streams, writes, model specs.

    pytest -q tests/test_contracts.py
"""
import copy
import inspect
import io
import json
import os
import subprocess
import sys
import textwrap

import click
import pytest
from click.testing import CliRunner

from galvatron_contracts import documents, models

D = documents
M = models


def hardware_profile(**changes):
    """The smallest valid hardware-profile: one all_reduce curve on 2 CPU ranks."""
    timing = {"median_s": 1e-4, "min_s": 9e-5, "max_s": 2e-4, "repeats": 3}
    doc = {
        "kind": "hardware-profile", "schema_version": "1.0", "producer": {"name": "test", "version": "0"},
        "cluster": {"nodes": 1, "gpus_per_node": 2, "world_size": 2, "backend": "gloo",
                    "device": {"type": "cpu", "name": "cpu"}},
        "settings": {"dtype": "fp32", "warmup": 1, "repeats": 3, "quick": True},
        "collectives": [{"op": "all_reduce", "group_size": 2, "layout": "consecutive", "stride": 1,
                         "crosses_nodes": False, "concurrent_groups": 1,
                         "points": [{"message_bytes": 1024, "time": timing}]}],
        "p2p": [], "overlap": None,
    }
    doc.update(changes)
    return doc


def model_profile():
    """The smallest valid model-profile: tiny-gpt's decoder at tp 1."""
    timing = {"median_s": 1e-3, "min_s": 9e-4, "max_s": 2e-3, "repeats": 2}
    split = {"tp_divided": 1024, "tp_replicated": 512}
    return {
        "kind": "model-profile", "schema_version": "1.0", "producer": {"name": "test", "version": "0"},
        "model": M.load_model_spec("tiny-gpt"),
        "settings": {"dtype": "fp32", "seq_lens": [64], "micro_batch_sizes": [1], "tp_degrees": [1],
                     "concurrent_ranks": 1, "threads_per_rank": 1, "device": {"type": "cpu", "name": "cpu"},
                     "warmup": 1, "repeats": 2},
        "layers": [{"layer": "decoder", "tp": 1, "param_count": 50048, "param_count_tp_replicated": 384,
                    "memory": [{"seq_len": 64, "saved_bytes_per_sample": split,
                                "recompute_saved_bytes_per_sample": split}],
                    "timings": [{"seq_len": 64, "micro_batch_size": 1, "forward": timing, "backward": timing,
                                 "backward_recompute": timing}]}],
    }


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def refused(call, *args, **kwargs):
    with pytest.raises(D.DocumentError) as caught:
        call(*args, **kwargs)
    assert caught.value.exit_code == 3
    return caught.value


# --- reader policy ---------------------------------------------------------------------------------------------

def test_known_version_reads_strictly():
    assert D.validate(hardware_profile()) == hardware_profile()
    e = refused(D.validate, hardware_profile(extra_field=1))
    assert e.errors == ["$.extra_field: unexpected property (the schema has no such field)"]


def test_newer_minor_is_accepted_with_a_warning(capsys):
    doc = hardware_profile(schema_version="1.7", added_in_1_7={"anything": True})
    doc["cluster"]["interconnect"] = "nvlink"
    assert D.validate(doc, "new.json") is doc
    err = capsys.readouterr().err
    assert "warning: new.json: hardware-profile 1.7 is newer than the newest known 1.2" in err


def test_newer_minor_still_checks_the_fields_it_knows(capsys):
    doc = hardware_profile(schema_version="1.3")
    doc["cluster"]["world_size"] = "two"
    e = refused(D.validate, doc, "new.json")
    assert e.errors == ["$.cluster.world_size: 'two' is not of type 'integer'",
                        "$.schema_version: hardware-profile 1.3 is newer than this reader's 1.2; upgrade the tool to "
                        "read it"]
    assert "warning" in capsys.readouterr().err


def test_a_value_a_newer_minor_appended_to_an_enum_is_refused_with_the_reason(capsys):
    doc = hardware_profile(schema_version="1.9")
    doc["cluster"]["backend"] = "rccl"
    e = refused(D.validate, doc, "new.json")
    assert e.errors[0].startswith("$.cluster.backend: 'rccl' is not one of")
    assert e.errors[-1] == ("$.schema_version: hardware-profile 1.9 is newer than this reader's 1.2; upgrade the "
                            "tool to read it")


def test_newer_major_is_refused_naming_the_supported_range():
    e = refused(D.validate, hardware_profile(schema_version="2.0"), "future.json")
    assert str(e) == ("future.json: $.schema_version: hardware-profile 2.0 is newer than this reader supports "
                      "(1.0 to 1.2); upgrade the tool")


def test_older_major_is_migrated_by_the_registered_migration(monkeypatch):
    def from_0(doc):  # 0.x kept the cluster shape under 'machine'
        doc["cluster"] = doc.pop("machine")
        doc["schema_version"] = "1.0"
        return doc

    old = hardware_profile(schema_version="0.4")
    old["machine"] = old.pop("cluster")
    e = refused(D.validate, copy.deepcopy(old))
    assert "older than this reader supports (1.0 to 1.2) and no migration exists" in str(e)
    monkeypatch.setitem(D.MIGRATIONS, ("hardware-profile", 0), from_0)
    assert D.validate(copy.deepcopy(old)) == hardware_profile()
    assert old["machine"]["world_size"] == 2  # the caller's document is not modified


def test_a_migration_is_validated_and_must_move_forward(monkeypatch):
    monkeypatch.setitem(D.MIGRATIONS, ("hardware-profile", 0), lambda d: {**d, "schema_version": "1.0"})
    e = refused(D.validate, hardware_profile(schema_version="0.1", machine={}), "old.json")
    assert "old.json: $.machine: unexpected property" in str(e)
    monkeypatch.setitem(D.MIGRATIONS, ("hardware-profile", 0), lambda d: d)
    with pytest.raises(D.GalvatronError, match="did not produce a later schema_version"):
        D.validate(hardware_profile(schema_version="0.1"))


OPTIMIZER_STEP = {"optimizer": "adamw", "clip_grad_norm": True, "fixed_s": 1e-3, "per_param_s": 5e-9,
                  "points": [{"param_count": 50048, "time": {"median_s": 1.3e-3, "min_s": 1.2e-3, "max_s": 1.5e-3,
                                                             "repeats": 3}}]}


def test_each_known_minor_reads_strictly_with_its_own_fields():
    """model-profile 1.1 added the optional optimizer_step: 1.0 without it and 1.1 with it both read; a 1.0
    document carrying it is refused as 1.0 (a 1.0 reader would not know the field)."""
    old = model_profile()
    assert old["schema_version"] == "1.0" and D.validate(old) == model_profile()
    new = {**model_profile(), "schema_version": "1.1", "optimizer_step": OPTIMIZER_STEP}
    assert D.validate(new)["optimizer_step"] == OPTIMIZER_STEP
    e = refused(D.validate, {**new, "schema_version": "1.0"})
    assert e.errors == ["$.optimizer_step: unexpected property (the schema has no such field)"]
    bad = {**new, "optimizer_step": {**OPTIMIZER_STEP, "per_param_s": -1.0}}
    assert refused(D.validate, bad).errors == ["$.optimizer_step.per_param_s: -1.0 is less than the minimum of 0"]


def test_writers_write_a_shipped_version_of_every_kind():
    assert set(D.CURRENT_VERSION) == set(D.DOCUMENT_KINDS)
    for kind, version in D.CURRENT_VERSION.items():
        assert D.parse_version(version) in D.known_versions()[kind], (kind, version)
        assert D.load_schema(kind, version)["properties"]["schema_version"] == {"const": version}


@pytest.mark.parametrize("version, expected", [
    ("1", "$.schema_version: expected a string 'MAJOR.MINOR', got '1'"),
    (1.0, "$.schema_version: expected a string 'MAJOR.MINOR', got 1.0"),
    ("1.0.1", "$.schema_version: expected a string 'MAJOR.MINOR', got '1.0.1'"),
    (None, "$.schema_version: expected a string 'MAJOR.MINOR', got None"),
])
def test_malformed_versions(version, expected):
    assert refused(D.validate, hardware_profile(schema_version=version)).errors == [expected]


# --- errors name the file and the JSON path --------------------------------------------------------------------

def test_malformed_json_names_file_line_and_column(tmp_path):
    path = write(tmp_path, "broken.json", '{"kind": "plan",\n "schema_version": }')
    e = refused(D.read_documents, path)
    assert str(e).startswith(f"{path}: line 2 column 20: malformed JSON")


def test_nan_and_infinity_are_not_json(tmp_path):
    text = json.dumps(hardware_profile()).replace('"median_s": 0.0001', '"median_s": NaN')
    e = refused(D.read_documents, write(tmp_path, "nan.json", text))
    assert "NaN is not a JSON number" in str(e)


def test_wrong_kind(tmp_path):
    path = write(tmp_path, "hw.json", json.dumps(hardware_profile()))
    e = refused(D.read_one, path, "plan")
    assert e.errors == ["$.kind: expected one of plan, got 'hardware-profile'"]
    e = refused(D.read_documents, [path], kinds=["plan", "cost-model"])  # refused before its schema is checked
    assert str(e) == f"{path}: $.kind: expected one of plan, cost-model, got 'hardware-profile'"
    assert D.read_documents([path], kinds=["hardware-profile"]) == [hardware_profile()]
    e = refused(D.validate, hardware_profile(kind="hardware_profile"), "x.json")
    assert str(e).startswith("x.json: $.kind: expected one of hardware-profile, model-profile, cost-model, plan")
    e = refused(D.validate, {"kind": ["plan"]})
    assert e.errors[0].startswith("$.kind: expected one of")
    e = refused(D.validate, [hardware_profile()])
    assert e.errors == ["$: expected a JSON object (a galvatron document), got list"]


def test_missing_field_is_named_at_its_path(tmp_path):
    doc = hardware_profile()
    del doc["cluster"]["world_size"]
    del doc["settings"]
    path = write(tmp_path, "hw.json", json.dumps(doc))
    e = refused(D.read_documents, path)
    assert e.errors == ["$.cluster.world_size: required property missing", "$.settings: required property missing"]
    assert str(e).splitlines()[0] == f"{path}: $.cluster.world_size: required property missing"


def test_wrong_type_is_named_at_its_path():
    doc = hardware_profile()
    doc["collectives"][0]["points"][0]["message_bytes"] = "1 KiB"
    doc["overlap"] = {"compute_slowdown": "fast", "comm_slowdown": 1.0, "method": "x"}
    assert refused(D.validate, doc).errors == [
        "$.collectives[0].points[0].message_bytes: '1 KiB' is not of type 'integer'",
        "$.overlap.compute_slowdown: 'fast' is not of type 'number'"]


def test_errors_are_in_document_order_with_numeric_indices():
    doc = hardware_profile()
    point = doc["collectives"][0]["points"][0]
    doc["collectives"][0]["points"] = [copy.deepcopy(point) for _ in range(12)]
    doc["collectives"][0]["points"][10]["message_bytes"] = 0
    doc["collectives"][0]["points"][2]["message_bytes"] = 0
    assert [e.split(":")[0] for e in refused(D.validate, doc).errors] == [
        "$.collectives[0].points[2].message_bytes", "$.collectives[0].points[10].message_bytes"]


def test_model_arithmetic_is_checked_inside_documents():
    doc = model_profile()
    doc["model"]["kv_heads"] = 3
    assert refused(D.validate, doc).errors == ["$.model.kv_heads: expected a divisor of heads (4), got 3"]


def test_missing_unreadable_and_empty_inputs(tmp_path):
    assert refused(D.read_documents, str(tmp_path / "nope.json")).errors == ["no such file"]
    assert "cannot read" in str(refused(D.read_documents, str(tmp_path)))
    assert refused(D.read_documents, write(tmp_path, "empty.json", " \n")).errors == ["no document (empty input)"]


# --- streams and routing ---------------------------------------------------------------------------------------

def test_concatenated_and_line_delimited_streams_are_read_and_routed(tmp_path):
    hw, mp = hardware_profile(), model_profile()
    concatenated = write(tmp_path, "cat.json", json.dumps(hw, indent=2) + json.dumps(mp))
    lines = write(tmp_path, "lines.jsonl", json.dumps(mp) + "\n" + json.dumps(hw) + "\n")
    docs = D.read_documents([concatenated, lines])
    assert [d["kind"] for d in docs] == ["hardware-profile", "model-profile", "model-profile", "hardware-profile"]
    routed = D.route(docs, ["hardware-profile", "model-profile", "plan"])
    assert routed == {"hardware-profile": [hw, hw], "model-profile": [mp, mp], "plan": []}
    e = refused(D.route, docs, ["hardware-profile"], "stdin")
    assert e.errors == ["$.kind: expected one of hardware-profile, got 'model-profile'"]


def test_stdin_dash(monkeypatch):
    hw, mp = hardware_profile(), model_profile()
    stream = io.StringIO(json.dumps(hw) + "\n" + json.dumps(mp))
    assert D.read_documents("-", stdin=stream) == [hw, mp]
    monkeypatch.setattr(sys, "stdin", io.StringIO(json.dumps(mp)))
    assert D.read_one("-", "model-profile") == mp


def test_an_invalid_document_in_a_stream_is_named_by_position():
    stream = io.StringIO(json.dumps(hardware_profile()) + json.dumps(hardware_profile(p2p="none")))
    e = refused(D.read_documents, "-", stdin=stream)
    assert str(e) == "<stdin>[document 2]: $.p2p: 'none' is not of type 'array'"


def test_read_one_wants_exactly_one(tmp_path):
    path = write(tmp_path, "two.json", json.dumps(hardware_profile()) * 2)
    e = refused(D.read_one, path, "hardware-profile")
    assert e.errors == ["expected exactly one hardware-profile document, got 2"]
    one = write(tmp_path, "one.json", json.dumps(hardware_profile()))
    assert D.read_one(one, "hardware-profile") == hardware_profile()


def test_paths_may_be_path_objects(tmp_path):
    path = tmp_path / "hw.json"
    path.write_text(json.dumps(hardware_profile()))
    assert D.read_documents(path) == [hardware_profile()]
    assert D.read_one([path], "hardware-profile") == hardware_profile()


# --- writing ---------------------------------------------------------------------------------------------------

def test_write_document_validates_then_writes_atomically(tmp_path):
    path = tmp_path / "out" / "hw.json"
    D.write_document(hardware_profile(), path)
    assert json.loads(path.read_text()) == hardware_profile()
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # a normal file, not mkstemp's 0600
    before = path.read_text()
    bad = hardware_profile()
    bad["cluster"]["nodes"] = 0
    with pytest.raises(D.GalvatronError) as caught:
        D.write_document(bad, path)
    assert caught.value.exit_code == 1 and "$.cluster.nodes" in str(caught.value)
    assert path.read_text() == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["hw.json"]  # no temporary file left


def test_bytes_are_written_atomically_with_a_plain_files_mode(tmp_path, monkeypatch):
    """atomic_write_bytes (galvatron-search show's PNGs): the bytes as given, a normal file's mode, and on a failed
    write the old file intact and no temporary left."""
    path = tmp_path / "plan.png"
    data = bytes(range(256)) * 3
    D.atomic_write_bytes(path, data)
    assert path.read_bytes() == data
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
    monkeypatch.setattr(D.os, "replace", lambda *a: (_ for _ in ()).throw(OSError(28, "No space left on device")))
    with pytest.raises(D.GalvatronError, match="cannot write .*No space left"):
        D.atomic_write_bytes(path, b"new")
    assert path.read_bytes() == data and [p.name for p in tmp_path.iterdir()] == ["plan.png"]


def test_no_partial_file_when_writing_fails(tmp_path, monkeypatch):
    path = tmp_path / "hw.json"
    path.write_text("old contents")

    def fail(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(D.os, "replace", fail)
    with pytest.raises(D.GalvatronError, match="cannot write .*No space left on device"):
        D.write_document(hardware_profile(), path)
    assert path.read_text() == "old contents"
    assert [p.name for p in tmp_path.iterdir()] == ["hw.json"]


def test_write_document_refuses_nan_and_unknown_versions(tmp_path):
    doc = hardware_profile()
    doc["collectives"][0]["points"][0]["time"]["median_s"] = float("nan")
    with pytest.raises(D.GalvatronError,
                       match=r"\$.collectives\[0\].points\[0\].time.median_s: expected a finite number, got nan"):
        D.write_document(doc, tmp_path / "x.json")
    with pytest.raises(D.GalvatronError, match="refusing to write a document of kind 'hardware-profile' version '1.9'"):
        D.write_document(hardware_profile(schema_version="1.9"), tmp_path / "x.json")
    assert not (tmp_path / "x.json").exists()


def test_write_document_to_stdout_round_trips():
    out = io.StringIO()
    D.write_document(model_profile(), "-", stream=out)
    assert D.read_documents("-", stdin=io.StringIO(out.getvalue())) == [model_profile()]


def test_digest_ignores_key_order_and_whitespace():
    doc = hardware_profile()
    shuffled = json.loads(json.dumps(dict(reversed(list(doc.items())))))
    assert D.digest(doc) == D.digest(shuffled)
    assert len(D.digest(doc)) == 64 and D.digest(doc) != D.digest(hardware_profile(p2p=[]) | {"overlap": 1})
    assert D.producer("galvatron-x", "0.1.0", "n") == {"name": "galvatron-x", "version": "0.1.0", "note": "n"}


# --- model specs -----------------------------------------------------------------------------------------------

PUBLISHED = {"gpt2-small": 124_439_808, "gpt2-medium": 354_823_168, "gpt2-large": 774_030_080,
             "gpt2-xl": 1_557_611_200, "llama2-7b": 6_738_415_616, "llama2-13b": 13_015_864_320,
             "llama2-70b": 68_976_648_192, "llama3-8b": 8_030_261_248}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_preset_parameter_counts_equal_published_sizes(name):
    assert M.param_count(M.load_model_spec(name)) == PUBLISHED[name]


def test_every_preset_is_a_valid_spec_and_a_copy():
    for name in M.PRESETS:
        spec = M.load_model_spec(name)
        assert M.check_model_spec(spec) is spec and spec["name"] == name
        spec["layers"] = 0
        assert M.PRESETS[name]["layers"] > 0


def test_layer_counts_add_up():
    spec = M.load_model_spec("gpt2-small")
    counts = M.layer_param_counts(spec)
    assert counts == {"decoder": 7_087_872, "embedding": 50257 * 768 + 1024 * 768, "head": 2 * 768}
    assert M.training_flops_per_token(spec, 1024) == pytest.approx(
        6 * (12 * (4 * 768**2 + 2 * 768 * 3072) + 768 * 50257) + 12 * 12 * 768 * 1024)


GPT2_CONFIG = {"model_type": "gpt2", "n_layer": 12, "n_embd": 768, "n_head": 12, "n_inner": None,
               "vocab_size": 50257, "n_positions": 1024, "n_ctx": 1024, "layer_norm_epsilon": 1e-5,
               "activation_function": "gelu_new", "tie_word_embeddings": True}
LLAMA3_CONFIG = {"model_type": "llama", "num_hidden_layers": 32, "hidden_size": 4096, "num_attention_heads": 32,
                 "num_key_value_heads": 8, "intermediate_size": 14336, "vocab_size": 128256,
                 "max_position_embeddings": 8192, "rms_norm_eps": 1e-5, "rope_theta": 500000,
                 "tie_word_embeddings": False, "hidden_act": "silu"}
LLAMA2_CONFIG = {"architectures": ["LlamaForCausalLM"], "num_hidden_layers": 32, "hidden_size": 4096,
                 "num_attention_heads": 32, "intermediate_size": 11008, "vocab_size": 32000,
                 "max_position_embeddings": 4096, "rms_norm_eps": 1e-5}


def config(tmp_path, cfg, name="config.json", folder="model"):
    (tmp_path / folder).mkdir(exist_ok=True)
    path = tmp_path / folder / name
    path.write_text(json.dumps(cfg))
    return str(path)


@pytest.mark.parametrize("cfg, preset", [(GPT2_CONFIG, "gpt2-small"), (LLAMA3_CONFIG, "llama3-8b"),
                                         (LLAMA2_CONFIG, "llama2-7b")])
def test_hugging_face_config_import(tmp_path, cfg, preset):
    path = config(tmp_path, cfg, folder=preset)
    spec = M.load_model_spec(path)
    assert spec["name"] == preset and spec["source"] == path
    drop = {"name", "source"}
    assert {k: v for k, v in spec.items() if k not in drop} == \
           {k: v for k, v in M.PRESETS[preset].items() if k not in drop}
    assert M.param_count(spec) == PUBLISHED[preset]
    assert M.load_model_spec(str(tmp_path / preset)) == spec  # the directory holding config.json


def test_rope_theta_inside_rope_parameters_is_read(tmp_path):
    """transformers 5 writes rope_theta inside rope_parameters; the spec is the same as from the top-level key."""
    top = M.load_model_spec(config(tmp_path, LLAMA3_CONFIG, folder="top"))
    nested = {k: v for k, v in LLAMA3_CONFIG.items() if k != "rope_theta"}
    nested["rope_parameters"] = {"rope_type": "default", "rope_theta": LLAMA3_CONFIG["rope_theta"]}
    spec = M.load_model_spec(config(tmp_path, nested, folder="top2"))
    assert spec["rope_theta"] == top["rope_theta"] == float(LLAMA3_CONFIG["rope_theta"]) != 10000.0


@pytest.mark.parametrize("change, expected", [
    ({"n_layer": None}, "$.n_layer (layers): None is not of type 'integer'"),
    ({"n_embd": "768"}, "$.n_embd (hidden): '768' is not of type 'integer'"),
    ({"n_head": 7}, "$.n_embd (hidden): expected a multiple of heads (7), got 768"),
    ({"model_type": "bert"}, "$.model_type: expected a GPT-2 or LLaMA config (model_type 'gpt2' or 'llama'), "
                             "got 'bert'"),
])
def test_bad_gpt2_configs(tmp_path, change, expected):
    path = config(tmp_path, {**GPT2_CONFIG, **change})
    assert refused(M.load_model_spec, path).errors == [expected]


def test_bad_llama_configs(tmp_path):
    bad = {k: v for k, v in LLAMA3_CONFIG.items() if k != "intermediate_size"}
    assert refused(M.load_model_spec, config(tmp_path, bad)).errors == [
        "$.intermediate_size: required for a llama config.json"]
    bad = {**LLAMA3_CONFIG, "num_key_value_heads": 5}
    assert refused(M.load_model_spec, config(tmp_path, bad)).errors == [
        "$.num_key_value_heads (kv_heads): expected a divisor of heads (32), got 5"]
    bad = {**LLAMA3_CONFIG, "rope_theta": "big"}
    assert refused(M.load_model_spec, config(tmp_path, bad)).errors == [
        "$.rope_theta (rope_theta): 'big' is not of type 'number'"]


def test_unreadable_configs_and_unknown_names(tmp_path):
    assert refused(M.load_model_spec, write(tmp_path, "c.json", "{oops")).errors == [
        "line 1 column 2: malformed JSON (Expecting property name enclosed in double quotes)"]
    assert refused(M.load_model_spec, write(tmp_path, "l.json", "[1, 2]")).errors == ["$: expected a JSON object"]
    assert refused(M.load_model_spec, str(tmp_path / "missing.json")).errors == ["no such file"]
    with pytest.raises(D.UsageError) as caught:
        M.load_model_spec("gpt5-huge")
    assert caught.value.exit_code == 2 and "expected a preset (tiny-gpt" in str(caught.value)


# --- the command-line edge -------------------------------------------------------------------------------------

@click.command()
@click.argument("what")
@D.exits_cleanly
def tool(what):
    """A tiny command raising each error class."""
    errors = {"usage": D.UsageError("--memory must be positive"),
              "document": D.DocumentError("plan.json", ["$.stages: required property missing"]),
              "infeasible": D.InfeasibleError("no plan fits 8 GiB"), "runtime": D.GalvatronError("rank 3 died")}
    if what in errors:
        raise errors[what]
    click.echo("ok")


def runner():
    params = inspect.signature(CliRunner).parameters
    return CliRunner(**({"mix_stderr": False} if "mix_stderr" in params else {}))


@pytest.mark.parametrize("what, code, message", [
    ("usage", 2, "error: --memory must be positive\n"),
    ("document", 3, "error: plan.json: $.stages: required property missing\n"),
    ("infeasible", 4, "error: no plan fits 8 GiB\n"),
    ("runtime", 1, "error: rank 3 died\n"),
    ("fine", 0, ""),
])
def test_exits_cleanly_maps_errors_to_exit_codes(what, code, message):
    result = runner().invoke(tool, [what])
    assert result.exit_code == code
    assert result.stderr == message
    assert isinstance(result.exception, SystemExit) or (code == 0 and result.exception is None)


def _missing_world(doc):
    del doc["cluster"]["world_size"]
    return json.dumps(doc)


def _wrong_type(doc):
    doc["settings"]["repeats"] = "3"
    return json.dumps(doc)


CASES = {
    "malformed": (lambda doc: json.dumps(doc)[:-1], "line 1 column {n}: malformed JSON (Expecting ',' delimiter)"),
    "wrong-kind": (lambda doc: json.dumps({**doc, "kind": "plan"}),
                   "$.kind: expected one of hardware-profile, got 'plan'"),
    "missing-field": (_missing_world, "$.cluster.world_size: required property missing"),
    "wrong-type": (_wrong_type, "$.settings.repeats: '3' is not of type 'integer'"),
    "newer-major": (lambda doc: json.dumps({**doc, "schema_version": "3.1"}),
                    "$.schema_version: hardware-profile 3.1 is newer than this reader supports (1.0 to 1.2); "
                    "upgrade the tool"),
}


@click.command()
@click.argument("path")
@D.exits_cleanly
def read_hw(path):
    """A tiny reader command."""
    D.read_one(path, "hardware-profile")


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_command_exits_3_with_the_path(tmp_path, case):
    text, expected = CASES[case]
    hw = tmp_path / "hw.json"
    hw.write_text(text(hardware_profile()))
    result = runner().invoke(read_hw, [str(hw)])
    assert (result.exit_code, result.stdout) == (3, "")
    assert isinstance(result.exception, SystemExit)  # not an uncaught exception (which would print a traceback)
    assert result.stderr == f"error: {hw}: {expected.format(n=len(hw.read_text()) + 1)}\n"


def test_no_traceback_in_a_real_process(tmp_path):
    hw = tmp_path / "hw.json"
    hw.write_text(_wrong_type(hardware_profile()))
    script = textwrap.dedent("""
        import click
        from galvatron_contracts.documents import exits_cleanly, read_one

        @click.command()
        @click.argument("path")
        @exits_cleanly
        def main(path):
            read_one(path, "hardware-profile")

        main()
    """)
    done = subprocess.run([sys.executable, "-c", script, str(hw)], capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stdout) == (3, "")
    assert done.stderr == f"error: {hw}: $.settings.repeats: '3' is not of type 'integer'\n"
