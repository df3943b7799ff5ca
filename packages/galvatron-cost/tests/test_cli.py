"""The command line: inputs by path, by one stream, exit codes, --explain."""
import json

import pytest
import synthetic
from click.testing import CliRunner

from galvatron_contracts.documents import schema_errors
from galvatron_contracts.models import PRESETS
from galvatron_cost.cli import main


@pytest.fixture(scope="module")
def profiles(tmp_path_factory):
    d = tmp_path_factory.mktemp("profiles")
    hw, mp = synthetic.hardware_profile(1, 2), synthetic.model_profile(PRESETS["tiny-gpt"])
    (d / "hw.json").write_text(json.dumps(hw))
    (d / "mp.json").write_text(json.dumps(mp))
    (d / "both.jsonl").write_text(json.dumps(mp) + "\n" + json.dumps(hw) + "\n")
    return d


def run(args, stdin=None):
    return CliRunner().invoke(main, args, input=stdin)


def test_fit_from_paths_to_file(profiles, tmp_path):
    out = tmp_path / "cost.json"
    r = run(["fit", str(profiles / "hw.json"), str(profiles / "mp.json"), "-o", str(out)])
    assert r.exit_code == 0, r.output
    doc = json.loads(out.read_text())
    assert doc["kind"] == "cost-model" and schema_errors(doc, "cost-model", doc["schema_version"]) == []
    assert r.stdout == ""                                   # the document went to the file, the log to stderr
    assert r.stderr.startswith("galvatron-cost: fitted 35 strategies over 2 pipeline degrees") and str(out) in r.stderr


def test_help_shows_examples_and_the_output_flag():
    for args in (["--help"], ["fit", "--help"]):
        r = run(args)
        assert r.exit_code == 0 and "Examples:" in r.output
        assert "galvatron-cost fit hw.json model.json -o cost.json" in r.output      # a \b paragraph: kept whole
    assert "-o, --output FILE" in run(["fit", "--help"]).output


def test_fit_from_one_stream_on_stdin_with_explain(profiles):
    stream = (profiles / "both.jsonl").read_text()
    r = run(["fit", "-", "--explain", "--nodes", "1", "--gpus-per-node", "2"], stdin=stream)
    assert r.exit_code == 0, r.output
    text = r.stdout
    doc = json.loads(text)
    assert doc["cluster"]["world_size"] == 2
    err = r.stderr
    assert "collectives: time = alpha + wire bytes / bandwidth" in err
    assert "decoder tp2 dp1 ddp" in err and "R2" in err and "fitted" in err


def test_model_check_exit_3(profiles):
    r = run(["fit", str(profiles / "both.jsonl"), "--model", "tiny-llama"])
    assert r.exit_code == 3
    assert "not the asked 'tiny-llama'" in r.stderr and "Traceback" not in r.output
    assert run(["fit", str(profiles / "both.jsonl"), "--model", "tiny-gpt"]).exit_code == 0


def test_missing_profile_exit_3(profiles):
    r = run(["fit", str(profiles / "hw.json")])
    assert r.exit_code == 3 and "expected exactly one model-profile document, got 0" in r.stderr


def test_cluster_that_cannot_be_derived_exit_3(profiles):
    r = run(["fit", str(profiles / "both.jsonl"), "--nodes", "4"])
    assert r.exit_code == 3 and "crosses nodes" in r.stderr


def test_invalid_document_exit_3(profiles, tmp_path):
    bad = json.loads((profiles / "hw.json").read_text())
    del bad["cluster"]
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    r = run(["fit", str(tmp_path / "bad.json"), str(profiles / "mp.json")])
    assert r.exit_code == 3 and "bad.json" in r.stderr and "cluster" in r.stderr
    (tmp_path / "broken.json").write_text("{not json")
    assert run(["fit", str(tmp_path / "broken.json")]).exit_code == 3


def test_usage_errors_exit_2(profiles, tmp_path):
    assert run(["fit", str(profiles / "both.jsonl"), "--max-tp", "3"]).exit_code == 2
    assert run(["fit", str(profiles / "both.jsonl"), "--dtype", "fp16"]).exit_code == 2
    r = run(["fit", str(profiles / "both.jsonl"), "--model", "no-such-model"])
    assert r.exit_code == 2
    assert not list(tmp_path.iterdir())


def test_nothing_written_on_failure(profiles, tmp_path):
    out = tmp_path / "cost.json"
    r = run(["fit", str(profiles / "both.jsonl"), "--seq-len", "48", "-o", str(out)])
    assert r.exit_code == 3 and not out.exists()
