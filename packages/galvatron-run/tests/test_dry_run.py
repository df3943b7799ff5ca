"""``--dry-run``: rank R of a plan's world built in this process under a fake process group (dryrun.py).

- Its accounting is what a real run holds: for a tp2, a zero3 and a pp2 plan, every rank's parameter, gradient and
  optimizer bytes equal those the run-report's accounting measured on 2 gloo ranks (one launch for the file).
- On a 1,024-rank plan, ranks 0 and 1023 (first and last stage) equal a single-process reference: the tensor-parallel
  shards of galvatron_models' modules (``Block(spec, tp=t)``), sharded on dim 0 over dp as FSDP2 does (padded to a
  multiple of dp) for zero2/zero3, with AdamW's two fp32 states per element held and a 4-byte step per tensor.
- A plan whose groups disagree with the rank rule exits 3 with one line naming them, whether the reader catches it
  or only the dry run's own comparison with the device meshes the runtime built; so do a vocabulary shard the loss
  does not expect and tied copies on different shards (both made to happen by patching what the dry run compares
  against); states above the plan's budget exit 4; a rank outside the world exits 2.
"""
from __future__ import annotations

import copy
import json
import math
import time

import pytest
import torch
from click.testing import CliRunner
from harness import launch
from plans import S, make_plan

from galvatron_contracts.documents import DocumentError, InfeasibleError
from galvatron_models.decoder import Block, Embedding, Head
from galvatron_run import dryrun
from galvatron_run.cli import main
from galvatron_run.plan import checked_plan

STATES = ("param_bytes", "grad_bytes", "optimizer_bytes")


def _sgd(plan):
    plan["training"]["optimizer"]["name"] = "sgd"
    return plan


# Odd vocabulary and ffn widths, so that vocabulary shards are uneven and FSDP2 pads dim 0.
RUNS = {
    "tp2": make_plan("tiny-gpt", 2, [S(tp=2, sp=True), S(tp=2)], [(0, 2)], b=2, m=2, emb=S(tp=2), head=S(tp=2),
                     vocab_size=251),
    "zero3": make_plan("tiny-llama", 2, [S(sharding="zero3"), S(sharding="zero2", recompute=True)], [(0, 2)], b=2,
                       m=2, emb=S(sharding="zero3"), head=S(), vocab_size=251, ffn_hidden=171),
    "pp2": _sgd(make_plan("tiny-gpt", 2, [S()] * 3, [(0, 1), (1, 3)], b=1, m=2, vocab_size=251)),
}
CASES = [{"name": name, "plan": plan, "steps": 2, "memory": True} for name, plan in RUNS.items()]


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    out = tmp_path_factory.mktemp("dryrun")
    launch(CASES, 2, out)
    return {name: json.loads((out / f"{name}.losses.json").read_text())["memory"] for name in RUNS}


@pytest.mark.parametrize("name", list(RUNS))
def test_accounting_equals_a_real_run(measured, name):
    plan = checked_plan(RUNS[name], 2, name)
    for rank in (0, 1):
        report = dryrun.dry_run(plan, rank)
        got = {key: report.total(key) for key in STATES}
        want = {key: measured[name][rank]["accounting"][key] for key in STATES}
        assert got == want, f"rank {rank}: dry run {got}, measured {want}"


def test_pp2_tied_copies_hold_the_same_shard():
    plan = checked_plan(RUNS["pp2"], 2, "pp2")
    assert dryrun.dry_run(plan, 0).tie.startswith("same shard as head.out.weight on rank 1")
    assert dryrun.dry_run(plan, 1).tie.startswith("same shard as embedding.tok.weight on rank 0")


# --- a 1,024-rank plan against a single-process reference ---------------------------------------------------------

def _big_plan():
    """llama2-70b on 1,024 ranks, 16 stages of 64: three strategies in turn (tp8 zero3, tp4 strided + sp zero2,
    tp8 ddp recompute), the embedding tp8 zero3, the head tp4 ddp."""
    kinds = [S(tp=8, sharding="zero3"), S(tp=4, layout="strided", sp=True, sharding="zero2"),
             S(tp=8, recompute=True)]
    layers = [kinds[i % 3] for i in range(80)]
    return make_plan("llama2-70b", 1024, layers, [(5 * k, 5 * k + 5) for k in range(16)], b=16, m=16,
                     emb=S(tp=8, sharding="zero3"), head=S(tp=4), seq=2048, dtype="bf16")


def _coords(j, size, tp, layout):
    dp = size // tp
    return (j % tp, j // tp) if layout == "consecutive" or tp in (1, size) else (j // dp, j % dp)


def _expected_states(plan, rank):
    """{param, grad, optimizer bytes} of ``rank`` from the TP-shard modules of galvatron_models, sharded by hand."""
    spec, stages = plan["model"], plan["stages"]
    pp = len(stages)
    size = plan["cluster"]["world_size"] // pp
    k, j = divmod(rank, size)
    st = stages[k]
    entries = ([(Embedding, plan["embedding"])] if k == 0 else [])
    entries += [(Block, plan["layers"][i]) for i in range(st["layer_start"], st["layer_end"])]
    entries += [(Head, plan["head"])] if k == pp - 1 else []
    stored = held = tensors = 0
    for module, s in entries:
        dp_rank = _coords(j, size, s["tp"], s["tp_layout"])[1]
        with torch.device("meta"):
            shard = module(spec, tp=s["tp"])
        for p in shard.parameters():
            rows, per_row = p.shape[0], p.numel() // p.shape[0]
            if s["dp_sharding"] == "ddp":
                stored += p.numel()
                held += p.numel()
            else:
                chunk = math.ceil(rows / s["dp"])
                stored += chunk * per_row
                held += max(0, min(chunk, rows - dp_rank * chunk)) * per_row
            tensors += 1
    return {"param_bytes": 4 * stored, "grad_bytes": 4 * stored, "optimizer_bytes": 8 * held + 4 * tensors}


def test_1024_ranks_first_and_last_equal_the_reference(tmp_path):
    doc = _big_plan()
    path = tmp_path / "plan-1024.json"
    path.write_text(json.dumps(doc))
    t0 = time.perf_counter()
    result = CliRunner().invoke(main, [str(path), "--dry-run", "--rank", "0", "--rank", "1023"])
    elapsed = time.perf_counter() - t0
    assert result.exit_code == 0, result.output
    print(result.output)
    print(f"dry run of ranks 0 and 1023 of 1,024: {elapsed:.1f} s")
    assert "rank 0 of 1024, stage 0 of 16" in result.output and "rank 1023 of 1024, stage 15 of 16" in result.output
    plan = checked_plan(doc, 1024, "plan-1024.json")
    for rank in (0, 1023):
        report = dryrun.dry_run(plan, rank)
        assert {key: report.total(key) for key in STATES} == _expected_states(doc, rank)


# --- faults -------------------------------------------------------------------------------------------------------

def _swapped_dp_groups(plan):
    """The plan with stage 0's first layout's dp groups in the wrong order (not the rank rule's)."""
    bad = copy.deepcopy(plan)
    lay = bad["stages"][0]["layouts"][0]
    lay["dp_groups"] = lay["dp_groups"][::-1]
    return bad


def test_a_group_against_the_rank_rule_exits_3_with_one_line(tmp_path):
    plan = make_plan("tiny-gpt", 4, [S(tp=2)] * 2, [(0, 2)], b=2, m=1, emb=S(tp=2), head=S(tp=2))
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(_swapped_dp_groups(plan)))
    result = CliRunner().invoke(main, [str(path), "--dry-run", "--rank", "0"])
    assert result.exit_code == 3
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "$.stages[0].layouts[0].dp_groups" in lines[0] and "bad.json" in lines[0], lines


def test_the_dry_run_compares_the_groups_with_the_built_meshes():
    """A plan the reader would refuse, past it: the dry run's own check against the device meshes catches it."""
    plan = make_plan("tiny-gpt", 4, [S(tp=2)] * 2, [(0, 2)], b=2, m=1, emb=S(tp=2), head=S(tp=2))
    checked = checked_plan(plan, 4, "plan.json")
    checked.document["stages"][0]["layouts"][0]["dp_groups"] = [[1, 3], [0, 2]]
    with pytest.raises(DocumentError) as err:
        dryrun.dry_run(checked, 0)
    assert err.value.exit_code == 3
    want = "$.stages[0].layouts[0].dp_groups: rank 0's dp group (dp_groups[0]) is [1, 3] in the plan, the runtime built"
    assert any(e.startswith(want + " [0, 2]") for e in err.value.errors), err.value.errors


def test_states_above_the_budget_exit_4():
    plan = copy.deepcopy(RUNS["tp2"])
    plan["search"] = {"time_s": 0.0, "candidates_evaluated": 1, "memory_budget_bytes": 4096}
    with pytest.raises(InfeasibleError, match=r"\$\.search\.memory_budget_bytes: rank 0 \(stage 0\) holds"):
        dryrun.dry_run(checked_plan(plan, 2, "tp2"), 0)


def test_a_rank_outside_the_world_exits_2(tmp_path):
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(RUNS["tp2"]))
    result = CliRunner().invoke(main, [str(path), "--dry-run", "--rank", "2"])
    assert result.exit_code == 2 and "the plan's world has ranks 0..1" in result.output


def test_the_prediction_is_printed_beside_the_accounting():
    """Predicted params twice what is held: the ratio printed is held / predicted."""
    plan = copy.deepcopy(RUNS["tp2"])
    held = dryrun.dry_run(checked_plan(plan, 2, "tp2"), 0)
    mem = {"params": 2 * held.total("param_bytes"), "grads": held.total("grad_bytes"),
           "optimizer": held.total("optimizer_bytes"), "activations": 1.0, "workspace": 1.0, "overhead": 0.0,
           "total": 1.0}
    plan["predictions"] = {"iteration_time_s": 1.0, "samples_per_s": 1.0, "tokens_per_s": 1.0, "breakdown": {},
                           "stages": [{"index": 0, "memory_bytes_per_rank": mem, "forward_s": 0.1, "backward_s": 0.2}]}
    text = dryrun.format_report(dryrun.dry_run(checked_plan(plan, 2, "tp2"), 0))
    ratio_line = next(line for line in text.splitlines() if "held / predicted" in line)
    assert ratio_line.split()[3:6] == ["0.500", "1.000", "1.000"], ratio_line


def test_a_vocabulary_shard_the_loss_does_not_expect_is_reported(monkeypatch):
    """Were the loss's vocabulary split another than DTensor's, each rank's table rows would be the wrong ones."""
    monkeypatch.setattr(dryrun, "vocab_shard", lambda vocab, tp, tp_rank: (0, vocab // tp))
    with pytest.raises(DocumentError) as err:
        dryrun.dry_run(checked_plan(RUNS["tp2"], 2, "tp2"), 1)
    assert any(e.startswith("$.embedding: embedding.tok.weight holds vocabulary rows [126, 251) over tp, the "
                            "vocabulary-parallel loss expects [0, 125)") for e in err.value.errors), err.value.errors


def test_tied_copies_on_different_shards_are_reported(monkeypatch):
    """Were the head's copy sharded otherwise than the embedding, their gradients could not be summed shard by shard:
    the partner is built and compared (here its key is made to differ: the rank that built it is part of it)."""
    real = dryrun.ShardKey.of
    monkeypatch.setattr(dryrun.ShardKey, "of", lambda p: real(p)._replace(coordinate=(torch.distributed.get_rank(),)))
    with pytest.raises(DocumentError) as err:
        dryrun.dry_run(checked_plan(RUNS["pp2"], 2, "pp2"), 0)
    assert err.value.errors[0].startswith("$.head: rank 0's embedding.tok.weight shard"), err.value.errors
    assert "is not rank 1's head.out.weight shard" in err.value.errors[0]
