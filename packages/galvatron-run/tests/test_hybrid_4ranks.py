"""Four ranks (one torchrun launch for the whole file): mixed plans against the single-process reference."""
from __future__ import annotations

import pytest
from harness import assert_matches_reference, launch, result
from plans import S, make_plan
from reference import reference_run

STEPS = 3

PLANS = {
    # different tp / layout / sp / dp sharding / recompute per layer inside one stage
    "mixed_stage": make_plan("tiny-llama", 4, [S(tp=2), S(tp=2, layout="strided", sp=True, sharding="zero3"),
                                               S(sharding="zero2"),
                                               S(tp=2, layout="strided", sharding="zero3", recompute=True)],
                             [(0, 4)], b=4, m=2, emb=S(tp=2, layout="strided", sharding="zero2"),
                             head=S(tp=2, sp=True)),
    # tp 4 next to tp 1 and strided tp 2; tied vocabulary-parallel embedding and head
    "tp4_mixed": make_plan("tiny-gpt", 4, [S(tp=4, sp=True, sharding="zero3"), S(), S(tp=4),
                                           S(tp=2, layout="strided", sharding="zero2")],
                           [(0, 4)], b=4, m=2, emb=S(tp=4, sharding="zero3"), head=S(tp=4, sp=True, sharding="zero3")),
    # pp x tp x zero3 with uneven stages and tied embeddings across stages
    "pp_tp_zero3": make_plan("tiny-gpt", 4, [S(tp=2, sharding="zero3")] * 3, [(0, 1), (1, 3)], b=4, m=2,
                             emb=S(tp=2, sharding="zero3"), head=S(tp=2, sharding="zero3")),
    # zero1 on DTensor (tp 2 x dp 2) parameters: consecutive and strided + sp with recompute, an uneven vocabulary
    # (padded dp shards), beside zero3 and ddp; and zero1 stages of dp 2 under 1f1b, tied across the stages
    "tp_zero1": make_plan("tiny-llama", 4, [S(tp=2, sharding="zero1"),
                                            S(tp=2, layout="strided", sp=True, sharding="zero1", recompute=True),
                                            S(sharding="zero3"), S(tp=2)], [(0, 4)], b=4, m=3,
                          emb=S(tp=2, sharding="zero1"), head=S(tp=2, sp=True, sharding="zero1"), vocab_size=251),
    "pp_zero1": make_plan("tiny-gpt", 4, [S(sharding="zero1")] * 3, [(0, 2), (2, 3)], b=2, m=3,
                          emb=S(sharding="zero1"), head=S(sharding="zero1")),
    # layers with and without recompute, ddp / zero2 / zero3 mixed
    "recompute_mix": make_plan("tiny-gpt", 4, [S(recompute=True), S(), S(recompute=True, sharding="zero3"),
                                               S(sharding="zero2")], [(0, 4)], b=4, m=2),
    # 4 stages, 1f1b, uneven (a stage without decoder layers next to one with two)
    "pp4_1f1b": make_plan("tiny-llama", 4, [S()] * 5, [(0, 2), (2, 3), (3, 3), (3, 5)], b=2, m=4),
    # gpipe, stage layouts differ at the boundary (sp tp 2 -> tp 1 zero2 -> strided tp 2)
    "pp_gpipe_mixed": make_plan("tiny-gpt", 4, [S(tp=2, sp=True), S(sharding="zero2"), S(tp=2, layout="strided")],
                                [(0, 1), (1, 3)], b=4, m=3, schedule="gpipe"),
    # vocabularies that tp does not divide (DTensor's uneven Shard(0)): tied across two stages, and tied in one
    "uneven_vocab_pp": make_plan("tiny-gpt", 4, [S(tp=2, sp=True), S()], [(0, 1), (1, 2)], b=4, m=2,
                                 emb=S(tp=2, sharding="zero3"), head=S(tp=2, sharding="zero3"), vocab_size=251),
    # tied across stages with different layouts at the two ends (full gradients summed, each end keeps its shard)
    "tied_mixed_ends": make_plan("tiny-gpt", 4, [S(), S(tp=2)], [(0, 1), (1, 2)], b=4, m=2,
                                 emb=S(tp=2, layout="strided", sharding="zero3"), head=S(sharding="zero2")),
    "uneven_vocab_tp4": make_plan("tiny-gpt", 4, [S(tp=2), S(tp=4, sp=True)], [(0, 2)], b=4, m=2, emb=S(tp=4),
                                  head=S(tp=4, sp=True), vocab_size=251),
}
CASES = [{"name": n, "plan": p, "steps": STEPS} for n, p in PLANS.items()]


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    path = tmp_path_factory.mktemp("hybrid4")
    launch(CASES, 4, path)
    return path


@pytest.mark.parametrize("case", CASES, ids=lambda c: c["name"])
def test_matches_single_process(out, case):
    got, params = result(out, case["name"])
    assert_matches_reference(got, params, reference_run(case["plan"], case["steps"]))
