"""Two ranks (one torchrun launch for the whole file): every single strategy against the single-process reference,
and bf16 training on a learnable task."""
from __future__ import annotations

import pytest
from dist_worker import Pattern
from harness import assert_matches_reference, launch, result
from plans import S, make_plan
from reference import reference_run

STEPS = 3


def _cases():
    z3 = S(sharding="zero3")
    c = {
        "ddp": make_plan("tiny-gpt", 2, [S()] * 2, [(0, 2)], b=4, m=2),
        "zero2": make_plan("tiny-llama", 2, [S(sharding="zero2")] * 2, [(0, 2)], b=4, m=2,
                           emb=S(sharding="zero2"), head=S(sharding="zero2")),
        "zero3": make_plan("tiny-gpt", 2, [z3] * 2, [(0, 2)], b=4, m=2, emb=z3, head=z3),
        "tp": make_plan("tiny-llama", 2, [S(tp=2)] * 2, [(0, 2)], b=4, m=2, emb=S(tp=2), head=S(tp=2)),
        "tp_sp": make_plan("tiny-gpt", 2, [S(tp=2, sp=True)] * 2, [(0, 2)], b=4, m=2, emb=S(tp=2, sp=True),
                           head=S(tp=2, sp=True)),
        "recompute": make_plan("tiny-llama", 2, [S(recompute=True)] * 2, [(0, 2)], b=4, m=2),
        "pp_gpipe_uneven": make_plan("tiny-gpt", 2, [S()] * 3, [(0, 1), (1, 3)], b=2, m=3, schedule="gpipe"),
        "pp_1f1b_uneven": make_plan("tiny-llama", 2, [S()] * 3, [(0, 2), (2, 3)], b=2, m=3, schedule="1f1b"),
    }
    cases = [{"name": n, "plan": p, "steps": STEPS} for n, p in c.items()]
    learn = make_plan("tiny-llama", 2, [S(tp=2, sharding="zero3"), S(sharding="zero2")], [(0, 2)], b=4, m=2,
                      emb=S(tp=2), head=S(tp=2, sp=True), lr=3e-3, warmup=2)
    cases.append({"name": "bf16_learn", "plan": learn, "steps": 20, "dtype": "bf16", "data": "pattern"})
    return cases


CASES = _cases()


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    path = tmp_path_factory.mktemp("hybrid2")
    launch(CASES, 2, path)
    return path


@pytest.mark.parametrize("case", [c for c in CASES if c["name"] != "bf16_learn"], ids=lambda c: c["name"])
def test_matches_single_process(out, case):
    got, params = result(out, case["name"])
    assert_matches_reference(got, params, reference_run(case["plan"], case["steps"]))


def test_bf16_trains_and_tracks_fp32(out):
    case = next(c for c in CASES if c["name"] == "bf16_learn")
    plan = case["plan"]
    got, _ = result(out, "bf16_learn")
    losses = got["losses"]
    data = Pattern(256, plan["training"]["seq_len"], plan["global_batch"], 7)
    ref, _, _ = reference_run(plan, case["steps"], data=data)
    assert losses[-1] < 0.75 * losses[0], losses                        # it learns the repeating pattern
    worst = max(abs(a - b) / b for a, b in zip(losses, ref, strict=True))
    assert worst <= 2e-2, f"bf16 drifts {worst:.3f} from the fp32 reference"
