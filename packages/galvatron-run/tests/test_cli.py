"""The command line end to end: global mode on 2 local ranks (one launch, through --nproc), and a plan with
predictions in one process; the run-report is schema-valid and says what was measured. Then its shape: the help's
examples, -o and its alias, and the exit codes of flags that make a bad plan (2) and of a plan for another world (4)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from plans import S, make_plan

from galvatron_contracts.documents import digest, read_one
from galvatron_run.cli import main

SRC = Path(__file__).parent.parent / "src"
ENV = dict(os.environ, PYTHONPATH=str(SRC), OMP_NUM_THREADS="1")


def test_global_mode_on_two_ranks_writes_a_report(tmp_path):
    report = tmp_path / "run.json"
    r = subprocess.run([sys.executable, "-m", "galvatron_run", "--model", "tiny-llama", "--tp", "2", "--dp-mode",
                        "zero2", "--recompute", "--global-batch", "4", "--micro-batches", "2", "--seq-len", "16",
                        "--steps", "4", "--warmup-steps", "1", "-o", str(report), "--timeout", "120",
                        "--nproc", "2"], env=ENV, capture_output=True, text=True, timeout=400)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout == ""                                     # the report went to the file, logs to stderr
    assert "[rank 0] step 3:" in r.stderr
    doc = read_one(str(report), "run-report")
    assert doc["environment"]["world_size"] == 2 and doc["environment"]["backend"] == "gloo"
    assert "tp2 dp1 zero2 rc" in doc["plan"]["summary"]
    assert [s["step"] for s in doc["steps"]] == [0, 1, 2, 3]
    assert doc["steps"][0]["warmup"] and doc["steps"][1]["warmup"]     # warm-up, then the profiled step
    assert doc["throughput"]["measured_steps"] == 2 and doc["throughput"]["mfu"] is None
    assert all(s["tokens"] == 4 * 16 and s["loss"] > 0 for s in doc["steps"])
    ranks = doc["memory"]["ranks"]
    assert [m["rank"] for m in ranks] == [0, 1] and "profiler" in doc["memory"]["method"]
    for m in ranks:
        acc = m["accounting"]
        assert m["peak_bytes"] > m["baseline_bytes"] > 0
        assert acc["param_bytes"] > 0 and acc["grad_bytes"] == acc["param_bytes"]
        # AdamW: exp_avg and exp_avg_sq like the parameters, plus a 4-byte step counter per parameter tensor
        assert 0 <= acc["optimizer_bytes"] - 2 * acc["param_bytes"] <= 4 * 64 and acc["activation_bytes"] > 0
        assert m["peak_bytes"] >= acc["param_bytes"] + acc["optimizer_bytes"]
        assert m["profiled_step"] == 1 and m["process_peak_rss_bytes"] > 100 * 2**20 > m["peak_bytes"]


def test_plan_with_predictions_in_one_process(tmp_path):
    plan = make_plan("tiny-gpt", 1, [S(), S(recompute=True)], [(0, 2)], b=2, m=2)
    mem = {"params": 1.0, "grads": 1.0, "optimizer": 1.0, "activations": 1.0, "workspace": 0, "overhead": 0,
           "total": 4.0e6}
    plan["predictions"] = {"iteration_time_s": 0.05, "samples_per_s": 80.0, "tokens_per_s": 1280.0, "breakdown": {},
                           "stages": [{"index": 0, "memory_bytes_per_rank": mem, "forward_s": 0.01,
                                       "backward_s": 0.02}]}
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(plan))
    r = subprocess.run([sys.executable, "-m", "galvatron_run", str(path), "--steps", "3", "--warmup-steps", "1",
                        "--dtype", "bf16", "--peak-tflops", "1.5"], env=ENV, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    doc = json.loads(r.stdout)
    assert doc["kind"] == "run-report" and doc["plan"]["sha256"] == digest(plan)
    assert doc["settings"]["dtype"] == "bf16" and doc["throughput"]["peak_tflops"] == 1.5
    t = doc["throughput"]
    assert t["mfu"] == t["achieved_tflops_per_device"] / 1.5
    comp = doc["comparison"]
    assert comp["iteration_time"]["ratio"] == t["iteration_time_s"] / 0.05
    assert comp["memory"][0]["ratio"] == doc["memory"]["ranks"][0]["peak_bytes"] / 4.0e6


def invoke(args):
    return CliRunner().invoke(main, args, catch_exceptions=False)


def test_help_shows_the_examples_unwrapped():
    r = invoke(["--help"])
    assert r.exit_code == 0
    assert "\n      galvatron-run plan.json --nproc 4 --steps 20 -o run.json\n" in r.output
    assert "\n      torchrun --nproc-per-node 4 -m galvatron_run plan.json --steps 20 -o run.json\n" in r.output
    assert "-o, --output, --report FILE" in r.output


@pytest.mark.parametrize("flag", ["-o", "--output", "--report"])
def test_the_report_file_has_one_option_with_an_alias(flag):
    assert main.make_context("galvatron-run", ["plan.json", flag, "r.json"]).params["report_path"] == "r.json"


def test_flags_that_make_a_bad_plan_are_usage_errors(tmp_path, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    r = invoke(["--model", "tiny-gpt", "--sp", "--global-batch", "2"])
    assert r.exit_code == 2 and "--sp needs --tp > 1" in r.stderr
    r = invoke(["--model", "tiny-llama", "--tp", "4", "--world", "4", "--global-batch", "4"])
    assert r.exit_code == 2
    assert "the global-mode plan of --model tiny-llama: $.layers[0].tp: the model's kv_heads 2" in r.stderr
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(make_plan("tiny-gpt", 2, [S(tp=2, sp=True)], [(0, 1)], b=2, m=1)))
    r = invoke([str(path), "--seq-len", "15"])
    assert r.exit_code == 2 and f"{path} with --seq-len 15: $.layers[0].sp: seq_len 15 is not divisible" in r.stderr
    r = invoke([str(path)])                                     # sound, but for 2 ranks: this process is 1
    assert r.exit_code == 4 and "the plan is for 2 ranks, this world has 1" in r.stderr
    assert "Traceback" not in r.stderr
