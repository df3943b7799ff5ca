"""Plan arithmetic and checks (pure), the LR schedule, the report builder, and: a plan that does not fit the world
exits 4 on every rank within seconds, before any process group exists."""
from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from plans import S, _groups, make_plan

from galvatron_contracts.documents import DocumentError, InfeasibleError, dumps, validate
from galvatron_contracts.models import load_model_spec
from galvatron_run.plan import Layout, checked_plan, groups, node_shape_warning, summary, uniform_plan
from galvatron_run.report import build_report, known_peak
from galvatron_run.train import lr_at

SRC = Path(__file__).parent.parent / "src"


@pytest.mark.parametrize("size,tp,layout", [(4, 2, "consecutive"), (4, 2, "strided"), (8, 2, "strided"),
                                            (8, 4, "consecutive"), (8, 4, "strided"), (4, 4, "strided"),
                                            (4, 1, "strided")])
def test_groups_follow_the_convention(size, tp, layout):
    for base in (0, size):
        assert groups(size, tp, layout, base) == _groups(size, tp, layout, base)
    lay = Layout.of({"tp": tp, "tp_layout": layout, "sp": False, "dp": size // tp})
    seen = set()
    for j in range(size):
        t, d = lay.coords(j)
        assert lay.index(t, d) == j
        seen.add((t, d))
    assert len(seen) == size


def test_blocks_tile_the_activation():
    b, s = 8, 16
    for lay in [Layout(2, "strided", True, 2), Layout(4, "consecutive", False, 1), Layout(1, "consecutive", False, 4)]:
        covered = {}
        for j in range(4):
            r0, nr, s0, ns = lay.block(j, b, s)
            for r in range(r0, r0 + nr):
                for c in range(s0, s0 + ns):
                    covered[r, c] = covered.get((r, c), 0) + 1
        copies = 4 // (lay.dp * (lay.tp if lay.sp else 1))
        assert len(covered) == b * s and set(covered.values()) == {copies}


def _plan():
    return make_plan("tiny-llama", 4, [S(tp=2), S(tp=2, layout="strided", sp=True, sharding="zero3")],
                     [(0, 1), (1, 2)], b=2, m=2, emb=S(), head=S(tp=2))


def test_valid_plan_passes_and_is_schema_valid():
    plan = _plan()
    validate(plan, "test")
    typed = checked_plan(plan, 4)
    assert typed.document == plan and typed.pp == 2 and typed.layers[1].sp
    assert "pp2" in summary(plan)
    overridden = checked_plan(plan, 4, "p.json", dtype="bf16", seq_len=8).document
    assert overridden["training"]["seq_len"] == 8 and plan["training"]["seq_len"] == 16
    with pytest.raises(DocumentError, match=re.escape("p.json with --seq-len 15: $.layers[1].sp: seq_len 15")):
        checked_plan(plan, 4, "p.json", seq_len=15)


# Every fault here makes the plan wrong in any world: exit 3 (galvatron_contracts.plan). Those the runtime used to
# call infeasible (exit 4) are exit 3 now; only a plan for another world size is exit 4.


@pytest.mark.parametrize("edit,words", [
    (lambda p: p.update(layers=p["layers"][:1]), "$.layers: expected one strategy per decoder layer (2)"),
    (lambda p: p.update(global_batch=5), "$.global_batch: expected micro_batch_size * micro_batches"),
    (lambda p: p["layers"][0].update(tp=1, sp=True, dp=2), "$.layers[0].sp: sequence parallelism needs tp > 1"),
    (lambda p: p["stages"][1].update(layer_start=0), "$.stages[1].layer_start: expected 1 (where the previous"),
    (lambda p: p.update(micro_batches=1, global_batch=2), "$.micro_batches: 1f1b needs at least"),
    (lambda p: p["model"].update(kv_heads=1, heads=4), "$.layers[0].tp: the model's kv_heads 1 is not divisible"),
    (lambda p: p["model"].update(ffn_hidden=175), "$.layers[0].tp: the model's ffn_hidden 175 is not divisible"),
    (lambda p: p.update(micro_batch_size=3, global_batch=6), "$.embedding.dp: micro_batch_size 3 is not divisible"),
    (lambda p: p["training"].update(seq_len=15), "$.layers[1].sp: seq_len 15 is not divisible by tp 2"),
    (lambda p: p["training"].update(seq_len=128), "$.training.seq_len: expected at most the model's max_seq_len"),
    (lambda p: p["model"].update(vocab_size=1), "$.head.tp: vocab_size 1 does not split over tp 2"),
    (lambda p: p["stages"][0]["layouts"][0].update(dp_groups=[[1, 0]]), "$.stages[0].layouts[0].dp_groups: expected "
                                                                         "[[0, 1]], got [[1, 0]]"),
    (lambda p: p["stages"][1].update(ranks=[0, 1]), "$.stages[1].ranks: expected [2, 3] (stage k holds"),
])
def test_bad_plans_are_refused_with_the_field(edit, words):
    plan = copy.deepcopy(_plan())
    edit(plan)
    with pytest.raises(DocumentError, match=re.escape(f"plan: {words}")) as caught:
        checked_plan(plan, 4)
    assert caught.value.exit_code == 3


def test_world_mismatch_and_tied_layouts():
    with pytest.raises(InfeasibleError, match=re.escape("plan: $.cluster.world_size: the plan is for 4 ranks, "
                                                        "this world has 2")):
        checked_plan(_plan(), 2)
    tied = make_plan("tiny-gpt", 2, [S()], [(0, 1)], b=2, m=1, emb=S(tp=2), head=S())
    with pytest.raises(DocumentError, match=re.escape("$.head.tp: tied embeddings with one stage")):
        checked_plan(tied, 2)


def test_a_job_with_another_node_shape_than_the_plan_is_warned():
    plan = uniform_plan(load_model_spec("tiny-gpt"), 8, tp=2, global_batch=8, micro_batches=2)
    plan["cluster"].update(nodes=2, gpus_per_node=4)
    assert node_shape_warning(plan, 4) is None
    warning = node_shape_warning(plan, 8)
    assert "made for 4 GPUs per node (2 nodes)" in warning and "runs 8 ranks per node" in warning
    assert "--gpus-per-node 8" in warning


def test_uniform_plan_is_valid_and_follows_the_convention():
    spec = load_model_spec("tiny-gpt")
    plan = uniform_plan(spec, 8, tp=2, pp=2, dp_mode="zero3", recompute=True, tp_layout="strided", global_batch=8,
                        micro_batches=4, seq_len=32)
    validate(plan, "uniform")
    checked_plan(plan, 8)
    assert [(s["layer_start"], s["layer_end"]) for s in plan["stages"]] == [(0, 2), (2, 4)]
    assert plan["stages"][1]["layouts"][0]["tp_groups"] == [[4, 6], [5, 7]]
    with pytest.raises(InfeasibleError):
        uniform_plan(spec, 6, tp=4, global_batch=8, micro_batches=2)


def test_lr_warms_up_then_decays_to_min():
    opt = {"lr": 1.0, "min_lr": 0.1, "warmup_steps": 4}
    lrs = [lr_at(s, opt, 20) for s in range(25)]
    assert lrs[:4] == [0.2, 0.4, 0.6, 0.8]
    assert lrs[4] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[4:20], lrs[5:21], strict=False))
    assert lrs[12] == pytest.approx(0.55) and lrs[20] == pytest.approx(0.1) and lrs[24] == pytest.approx(0.1)


def test_report_compares_predictions():
    plan = _plan()
    mem = {"params": 1, "grads": 1, "optimizer": 1, "activations": 1, "workspace": 0, "overhead": 0, "total": 1000}
    plan["predictions"] = {"iteration_time_s": 0.5, "samples_per_s": 8.0, "tokens_per_s": 128.0, "breakdown": {},
                           "stages": [{"index": k, "memory_bytes_per_rank": mem, "forward_s": 0.1, "backward_s": 0.2}
                                      for k in range(2)]}
    steps = [{"step": i, "loss": 5.0, "time_s": t, "tokens": 64, "warmup": i == 0} for i, t in enumerate([9, 1, 2, 3])]
    m = {"peak_bytes": 2000, "baseline_bytes": 100, "method": "test",
         "accounting": {"param_bytes": 1, "grad_bytes": 1, "optimizer_bytes": 2, "activation_bytes": 3}}
    settings = {"steps": 4, "warmup_steps": 1, "dtype": "bf16", "seq_len": 16, "global_batch": 4, "micro_batches": 2,
                "data": {"kind": "random"}, "torch_version": "x"}
    doc = build_report(plan, plan_path="p.json", steps=steps, memory=[m, None, dict(m, peak_bytes=500), None], world=4,
                       backend="gloo", device={"type": "cuda", "name": "NVIDIA H100 80GB HBM3"}, threads=1, nodes=1,
                       settings=settings, peak_tflops=None)
    dumps(doc)                                                   # schema-valid
    t = doc["throughput"]
    assert t["measured_steps"] == 3 and t["iteration_time_s"] == 2 and t["samples_per_s"] == 2.0
    assert t["peak_tflops"] == 989.4 and t["mfu"] == pytest.approx(t["achieved_tflops"] / 4 / 989.4)
    assert doc["comparison"]["iteration_time"] == {"predicted": 0.5, "measured": 2.0, "ratio": 4.0}
    assert [c["ratio"] for c in doc["comparison"]["memory"]] == [2.0, 0.5]
    assert known_peak("NVIDIA A100-SXM4-40GB", "fp32") is None


def test_mismatched_plan_exits_4_on_every_rank_within_seconds(tmp_path):
    """Four ranks as torchrun would start them (env://, a port nobody serves): each must exit 4 on its own."""
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps(make_plan("tiny-gpt", 2, [S()], [(0, 1)], b=2, m=1)))
    env = dict(os.environ, PYTHONPATH=str(SRC), WORLD_SIZE="4", MASTER_ADDR="127.0.0.1", MASTER_PORT="9",
               OMP_NUM_THREADS="1")
    t0 = time.monotonic()
    procs = [subprocess.Popen([sys.executable, "-m", "galvatron_run", str(plan)], env=dict(env, RANK=str(r),
                              LOCAL_RANK=str(r)), stderr=subprocess.PIPE, text=True) for r in range(4)]
    outs = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [4] * 4
    assert time.monotonic() - t0 < 60
    assert all("this world has 4" in e and "Traceback" not in e for e in outs)
    # malformed document: exit 3 naming the field; --nproc refuses before launching anything
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**json.loads(plan.read_text()), "schedule": "zigzag"}))
    r = subprocess.run([sys.executable, "-m", "galvatron_run", str(bad), "--nproc", "2"], env=env,
                       capture_output=True, text=True)
    assert r.returncode == 3 and "$.schedule" in r.stderr
    r = subprocess.run([sys.executable, "-m", "galvatron_run", str(plan), "--nproc", "4"],
                       env={k: v for k, v in env.items() if k != "WORLD_SIZE"}, capture_output=True, text=True)
    assert r.returncode == 4 and "this world has 4" in r.stderr
