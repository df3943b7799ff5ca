"""The typed plan and its checks: every fault class gives its one exit code and names the source and the JSON path;
the typed layouts' coordinates and groups are ranks.py's."""
from __future__ import annotations

import copy
import dataclasses
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from galvatron_contracts.documents import DocumentError, InfeasibleError, validate
from galvatron_contracts.models import PRESETS
from galvatron_contracts.plan import Layout, Plan, check_world, plan_errors, vocab_shard
from galvatron_contracts.ranks import local_coords, rank_groups, stage_ranks


def strategy(tp=1, tp_layout="consecutive", sp=False, dp_sharding="ddp", recompute=False):
    return {"tp": tp, "tp_layout": tp_layout, "sp": sp, "dp_sharding": dp_sharding, "recompute": recompute}


def plan_doc(world, bounds, layers, embedding=None, head=None, model="tiny-llama", b=4, m=2, seq=32,
             schedule="1f1b"):
    """A plan over ``world`` ranks whose stage k holds layers [bounds[k], bounds[k+1]); dp and layouts filled in."""
    pp = len(bounds) - 1
    size = world // pp

    def full(s):
        return {**s, "dp": size // s["tp"]}

    layers = [full(s) for s in layers]
    embedding, head = full(embedding or strategy()), full(head or strategy())
    stages = []
    for k in range(pp):
        ranks = stage_ranks(world, pp, k)
        used = layers[bounds[k]:bounds[k + 1]] + [embedding] * (k == 0) + [head] * (k == pp - 1)
        layouts = []
        for tp, tp_layout in sorted({(s["tp"], s["tp_layout"]) for s in used}):
            tp_groups, dp_groups = rank_groups(ranks, tp, tp_layout)
            layouts.append({"tp": tp, "tp_layout": tp_layout, "dp": size // tp, "tp_groups": tp_groups,
                            "dp_groups": dp_groups})
        stages.append({"index": k, "ranks": ranks, "layer_start": bounds[k], "layer_end": bounds[k + 1],
                       "layouts": layouts})
    return {"kind": "plan", "schema_version": "1.0", "producer": {"name": "tests", "version": "0"},
            "model": dict(PRESETS[model], layers=len(layers)),
            "cluster": {"nodes": 1, "gpus_per_node": world, "world_size": world},
            "training": {"seq_len": seq, "dtype": "fp32", "optimizer": {"name": "adamw"}},
            "global_batch": b * m, "micro_batch_size": b, "micro_batches": m, "schedule": schedule,
            "stages": stages, "layers": layers, "embedding": embedding, "head": head}


def two_stages():
    """8 ranks, 2 stages of 4: tp2+sp consecutive, then tp2 strided; embedding tp1 dp4, head tp4 (tiny-llama)."""
    return plan_doc(8, [0, 2, 4], [strategy(2, sp=True)] * 2 + [strategy(2, "strided")] * 2, head=strategy(4))


def refused(doc, source="plan.json"):
    with pytest.raises(DocumentError) as caught:
        Plan.parse(doc, source)
    return caught.value


def test_a_sound_plan_parses_into_typed_immutable_parts():
    doc = two_stages()
    assert validate(copy.deepcopy(doc), "two stages") and plan_errors(doc) == []
    plan = Plan.parse(doc, "two.json")
    assert (plan.pp, plan.stage_size, plan.world_size, plan.micro_batch_size, plan.schedule) == (2, 4, 8, 4, "1f1b")
    assert plan.stages[1].ranks == (4, 5, 6, 7) and plan.stages[1].layers == range(2, 4)
    assert plan.layers[2].layout == Layout(2, "strided", 2) and plan.layers[0].sp and not plan.layers[2].sp
    assert plan.head.layout == Layout(4, "consecutive", 1) and plan.embedding.dp == 4
    assert [path for path, _ in plan.strategies()] == ["embedding", "layers[0]", "layers[1]", "layers[2]",
                                                       "layers[3]", "head"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.stages[0].index = 1
    doc["layers"][0]["tp"] = 8                          # the plan holds its own copy of the document
    assert plan.document["layers"][0]["tp"] == 2 and plan.layers[0].tp == 2
    check_world(plan, 8, "two.json")


# (edit, the path of the fault, a fragment of its message): one of each fault class, every one exit 3
FAULTS = [
    (lambda p: p["cluster"].update(gpus_per_node=4), "$.cluster.world_size", "expected nodes * gpus_per_node = 4"),
    (lambda p: p.update(global_batch=6), "$.global_batch", "expected micro_batch_size * micro_batches = 8"),
    (lambda p: p.update(layers=p["layers"][:3]), "$.layers", "expected one strategy per decoder layer (4)"),
    (lambda p: p["training"].update(seq_len=128), "$.training.seq_len", "at most the model's max_seq_len 64"),
    (lambda p: p.update(micro_batches=1, global_batch=4), "$.micro_batches", "1f1b needs at least as many"),
    (lambda p: p["stages"].append(copy.deepcopy(p["stages"][1])), "$.stages", "a pipeline degree dividing"),
    (lambda p: p["stages"][1].update(index=0), "$.stages[1].index", "expected 1, got 0"),
    (lambda p: p["stages"][1].update(ranks=[4, 6, 5, 7]), "$.stages[1].ranks", "expected [4, 5, 6, 7]"),
    (lambda p: p["stages"][1].update(layer_start=1), "$.stages[1].layer_start", "where the previous stage ends"),
    (lambda p: p["stages"][1].update(layer_end=3), "$.stages[1].layer_end", "the last stage to end at layer 4"),
    (lambda p: p["stages"][0]["layouts"].append(copy.deepcopy(p["stages"][0]["layouts"][0])),
     "$.stages[0].layouts[2]", "duplicate layout (tp 1, consecutive)"),
    (lambda p: p["stages"][0]["layouts"][0].update(dp=2), "$.stages[0].layouts[0]", "expected tp * dp = 4"),
    (lambda p: p["stages"][1]["layouts"][0].update(tp_groups=[[4, 5], [6, 7]]), "$.stages[1].layouts[0].tp_groups",
     "expected [[4, 6], [5, 7]]"),
    (lambda p: p["stages"][1]["layouts"][0].update(dp_groups=[[4, 6], [5, 7]]), "$.stages[1].layouts[0].dp_groups",
     "expected [[4, 5], [6, 7]]"),
    (lambda p: p["stages"][1]["layouts"][1].update(tp_layout="strided"), "$.stages[1].layouts[1].tp_layout",
     "expected 'consecutive' when tp is 1 or the stage size"),
    (lambda p: p["layers"][3].update(dp=1), "$.layers[3]", "expected tp * dp = 4 (the stage's ranks), got 2 * 1"),
    (lambda p: p["head"].update(tp_layout="strided"), "$.head.tp_layout", "expected 'consecutive' when tp is 1"),
    (lambda p: p["layers"][0].update(tp_layout="strided"), "$.layers[0]", "(tp 2, strided) is not in its stage's"),
    (lambda p: p["embedding"].update(sp=True), "$.embedding.sp", "sequence parallelism needs tp > 1"),
    (lambda p: p.update(micro_batch_size=2, micro_batches=4), "$.embedding.dp", "micro_batch_size 2 is not divisible "
                                                                                 "by dp 4"),
    (lambda p: p["training"].update(seq_len=31), "$.layers[0].sp", "seq_len 31 is not divisible by tp 2"),
    (lambda p: p["model"].update(heads=2, kv_heads=1, hidden=64), "$.layers[0].tp", "kv_heads 1 is not divisible"),
    (lambda p: p["model"].update(heads=1, kv_heads=1, hidden=64), "$.layers[0].tp", "heads 1 is not divisible"),
    (lambda p: p["model"].update(ffn_hidden=177), "$.layers[0].tp", "ffn_hidden 177 is not divisible by tp 2"),
    (lambda p: p["model"].update(vocab_size=9), "$.head.tp", "vocab_size 9 does not split over tp 4 (shards of 3"),
    (lambda p: p["model"].update(hidden=66), "$.model.hidden", "expected a multiple of heads (4)"),
]


@pytest.mark.parametrize("edit,path,fragment", FAULTS, ids=[f[1] + ":" + f[2][:24] for f in FAULTS])
def test_every_fault_is_exit_3_naming_the_source_and_the_path(edit, path, fragment):
    doc = two_stages()
    edit(doc)
    e = refused(doc)
    assert e.exit_code == 3
    assert any(line.startswith(f"{path}: ") and fragment in line for line in e.errors), e.errors
    assert re.search(rf"^plan\.json: {re.escape(path)}: .*{re.escape(fragment)}", str(e), re.M)
    with pytest.raises(DocumentError) as read:            # a reader refuses it the same way (semantic_errors)
        validate(doc, "plan.json")
    assert read.value.errors == e.errors


def test_tied_embeddings_in_one_stage_share_the_strategy():
    tied = plan_doc(2, [0, 2], [strategy()] * 2, embedding=strategy(2), head=strategy(), model="tiny-gpt", b=2)
    e = refused(tied)
    assert e.errors == ["$.head.tp: tied embeddings with one stage share the weight, so expected the embedding's 2, "
                        "got 1"]
    Plan.parse(plan_doc(4, [0, 1, 2], [strategy()] * 2, embedding=strategy(2), head=strategy(), model="tiny-gpt",
                        b=2), "two stages may differ")


def test_every_fault_of_a_plan_is_listed_at_once():
    doc = two_stages()
    doc["stages"][1]["index"] = 5
    doc["layers"][0]["sp"] = False
    doc["layers"][1].update(tp=1, sp=True, dp=4)
    doc["training"]["seq_len"] = 65
    e = refused(doc, "many.json")
    assert [line.split(":")[0] for line in e.errors] == ["$.training.seq_len", "$.layers[1].sp", "$.stages[1].index"]
    assert str(e).count("many.json: ") == 3


def test_another_world_size_is_exit_4():
    plan = Plan.parse(two_stages(), "two.json")
    with pytest.raises(InfeasibleError) as caught:
        check_world(plan, 4, "two.json")
    assert caught.value.exit_code == 4
    assert str(caught.value) == "two.json: $.cluster.world_size: the plan is for 8 ranks, this world has 4"
    with pytest.raises(InfeasibleError, match="the cost model's cluster has 16"):
        check_world(plan, 16, "two.json", world="the cost model's cluster")


def test_vocab_shards_cover_the_vocabulary():
    for vocab, tp in [(50257, 2), (256, 4), (10, 4), (9, 4), (1, 2)]:
        shards = [vocab_shard(vocab, tp, r) for r in range(tp)]
        assert sum(n for _, n in shards) == vocab
        assert all(start == prev + n for (prev, n), (start, _) in zip(shards, shards[1:]))
    assert vocab_shard(50257, 2, 1) == (25129, 25128) and vocab_shard(9, 4, 3) == (9, 0)


@settings(max_examples=60, deadline=None)
@given(st.sampled_from([1, 2, 4, 8, 16]), st.data())
def test_typed_layouts_are_the_rank_rule(world, data):
    """Any plan built by the convention parses, and each layout's coordinates and groups are ranks.py's."""
    pp = data.draw(st.sampled_from([p for p in (1, 2, 4) if world % p == 0]))
    size = world // pp
    spec = {"heads": 16, "kv_heads": 16, "ffn_hidden": 256, "hidden": 256}

    def pick():
        tp = data.draw(st.sampled_from([t for t in (1, 2, 4, 8, 16) if size % t == 0]))
        layout = data.draw(st.sampled_from(["consecutive", "strided"])) if 1 < tp < size else "consecutive"
        return strategy(tp, layout, sp=tp > 1 and data.draw(st.booleans()))

    doc = plan_doc(world, [k * 2 for k in range(pp + 1)], [pick() for _ in range(2 * pp)], pick(), pick(),
                   b=16, m=pp, seq=64)
    doc["model"].update(spec, name="wide", tied_embeddings=False)
    plan = Plan.parse(doc, "drawn")
    for stage, written in zip(plan.stages, doc["stages"]):
        for lay, entry in zip(stage.layouts, written["layouts"]):
            assert lay.groups(stage.ranks) == rank_groups(stage.ranks, lay.tp, lay.tp_layout)
            assert lay.groups(stage.ranks) == (entry["tp_groups"], entry["dp_groups"])
            assert lay.mesh(stage.ranks[0]) == entry["tp_groups"]
            for j in range(size):
                assert lay.coords(j) == local_coords(j, size, lay.tp, lay.tp_layout)
                assert lay.index(*lay.coords(j)) == j
