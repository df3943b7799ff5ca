"""Eight ranks, opt-in (GALVATRON_RUN_8RANKS=1; ~1.5 min here): the shape of the mixed plan for LLaMA-2-7B on
8 GPUs (schemas/plan/examples/valid/mixed.json: pp 2 of 16 + 16 layers; zero3 + recompute,
tp 2 + sp zero2, strided tp 2 ddp, tp 4 + sp ddp; embedding dp 4 zero3, head tp 4 ddp) on a 32-layer tiny
LLaMA, against the single-process reference."""
from __future__ import annotations

import os

import pytest
from harness import assert_matches_reference, launch, result
from plans import S, make_plan
from reference import reference_run

pytestmark = pytest.mark.skipif(os.environ.get("GALVATRON_RUN_8RANKS") != "1",
                                reason="8-rank run is opt-in: set GALVATRON_RUN_8RANKS=1")

LAYERS = ([S(sharding="zero3", recompute=True)] * 6 + [S(tp=2, sp=True, sharding="zero2")] * 10
          + [S(tp=2, layout="strided")] * 4 + [S(tp=2, sp=True, sharding="zero2")] * 8 + [S(tp=4, sp=True)] * 4)
PLAN = make_plan("tiny-llama", 8, LAYERS, [(0, 16), (16, 32)], b=4, m=4, emb=S(sharding="zero3"),
                 head=S(tp=4), kv_heads=4, ffn_hidden=128)


def test_search_shaped_plan_matches_single_process(tmp_path):
    launch([{"name": "realistic", "plan": PLAN, "steps": 3}], 8, tmp_path, timeout=900)
    got, params = result(tmp_path, "realistic")
    assert_matches_reference(got, params, reference_run(PLAN, 3))
