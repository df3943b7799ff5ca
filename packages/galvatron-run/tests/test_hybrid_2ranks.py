"""Two ranks (one torchrun launch for the whole file): every single strategy against the single-process reference
(ZeRO-1 alone, beside ZeRO-3 and across stages too), bf16 training on a learnable task, and ZeRO-1's measured memory
against its ddp twin's."""
from __future__ import annotations

import pytest
import torch
from dist_worker import Pattern
from harness import assert_matches_reference, launch, result
from plans import S, make_plan
from reference import reference_run

STEPS = 3
MEMORY_LAYERS = 8       # decoder layers dominate the model states: the largest unit is one of eight


def _cases():
    z3 = S(sharding="zero3")
    z1 = S(sharding="zero1")
    c = {
        "ddp": make_plan("tiny-gpt", 2, [S()] * 2, [(0, 2)], b=4, m=2),
        "zero2": make_plan("tiny-llama", 2, [S(sharding="zero2")] * 2, [(0, 2)], b=4, m=2,
                           emb=S(sharding="zero2"), head=S(sharding="zero2")),
        "zero3": make_plan("tiny-gpt", 2, [z3] * 2, [(0, 2)], b=4, m=2, emb=z3, head=z3),
        # zero1: the tied embedding and head one FSDP unit whose reduction waits for the last micro-batch
        "zero1": make_plan("tiny-gpt", 2, [z1] * 2, [(0, 2)], b=2, m=3, emb=z1, head=z1),
        "zero1_zero3_gpipe": make_plan("tiny-llama", 2, [z1, z3, z1], [(0, 3)], b=2, m=2, schedule="gpipe",
                                       emb=z3, head=z1),
        "zero1_pp2": make_plan("tiny-llama", 2, [z1, S()], [(0, 1), (1, 2)], b=2, m=3, emb=z3, head=z1),
        "tp": make_plan("tiny-llama", 2, [S(tp=2)] * 2, [(0, 2)], b=4, m=2, emb=S(tp=2), head=S(tp=2)),
        "tp_sp": make_plan("tiny-gpt", 2, [S(tp=2, sp=True)] * 2, [(0, 2)], b=4, m=2, emb=S(tp=2, sp=True),
                           head=S(tp=2, sp=True)),
        "recompute": make_plan("tiny-llama", 2, [S(recompute=True)] * 2, [(0, 2)], b=4, m=2),
        "pp_gpipe_uneven": make_plan("tiny-gpt", 2, [S()] * 3, [(0, 1), (1, 3)], b=2, m=3, schedule="gpipe"),
        "pp_1f1b_uneven": make_plan("tiny-llama", 2, [S()] * 3, [(0, 2), (2, 3)], b=2, m=3, schedule="1f1b"),
    }
    cases = [{"name": n, "plan": p, "steps": STEPS} for n, p in c.items()]
    for sharding in ("ddp", "zero1"):        # the same shape twice, memory measured (the step after the first)
        s = S(sharding=sharding)
        cases.append({"name": f"{sharding}_memory", "steps": STEPS, "memory": True,
                      "plan": make_plan("tiny-gpt", 2, [s] * MEMORY_LAYERS, [(0, MEMORY_LAYERS)], b=2, m=3, emb=s,
                                        head=s)})
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


def _elements(params: dict[str, torch.Tensor], tied: bool) -> tuple[int, int, int, int]:
    """(P, P_d over dp 2, tensors, P of the largest unit) of the model's parameters: FSDP2 shards each tensor
    on dim 0, padded to a multiple of dp (galvatron-cost's memory.py notation)."""
    shapes = {n: t.shape for n, t in params.items() if not (tied and n == "head.out.weight")}
    P = sum(s.numel() for s in shapes.values())
    P_d = sum(-(-s[0] // 2) * (s.numel() // s[0]) for s in shapes.values())
    units: dict[str, int] = {}
    for n, s in shapes.items():
        unit = ".".join(n.split(".")[:2]) if n.startswith("layers.") else "ends"   # the tied ends: one unit
        units[unit] = units.get(unit, 0) + s.numel()
    return P, P_d, len(shapes), max(units.values())


def test_zero1_holds_what_the_memory_model_says(out):
    """ZeRO-1 on 2 ranks (fp32, AdamW, 3 micro-batches) against its ddp twin, in galvatron-cost's memory.py terms
    (P elements per rank, P_d their dp shard, P_L the largest unit's):

    - after the step every rank holds exactly its shard: 4 P_d of parameters (the unsharded copy is freed when the
      last backward reshards), 4 P_d of reduced gradients, 8 P_d of AdamW states (+ AdamW's 4-byte step counter
      per tensor): the states are (states x P) / dp on the worst rank too, not a whole-parameter assignment;
    - the peak: at every instant the two runs hold the same batch and activations and differ by the model states
      (ddp: 4P + 4P + 8P; zero1: 4P_d + 4P (the unsharded copy) + 4P (gradients accumulated whole) + 8P_d) and by
      the transient of the one unit whose gradients are being reduced (ddp's flat all-reduce buffer, zero1's
      reduce-scatter input, each its unit's 4 P_L and gloo's copy of it), so the peaks differ by the states'
      difference within 8 P_L. (A ZeRO-2-like runtime, reducing every micro-batch, would differ by 4P more.) The
      profiler's baseline also counts what the process held besides the model (the batch, the previous case's
      saved parameters): that is taken out of each peak first."""
    got = {}
    for name in ("ddp_memory", "zero1_memory"):
        losses, params = result(out, name)
        got[name] = losses["memory"]
    plan = next(c for c in CASES if c["name"] == "zero1_memory")["plan"]
    P, P_d, tensors, P_L = _elements(params, plan["model"]["tied_embeddings"])
    for rank in got["zero1_memory"]:
        acc = rank["accounting"]
        assert (acc["param_bytes"], acc["grad_bytes"]) == (4 * P_d, 4 * P_d)
        assert acc["optimizer_bytes"] == 8 * P_d + 4 * tensors

    def model_peak(rank: dict) -> int:     # the peak less what the step began with besides the model's states
        acc = rank["accounting"]
        return rank["peak_bytes"] - (rank["baseline_bytes"] - acc["param_bytes"] - acc["optimizer_bytes"])

    ddp_states, zero1_states = 16 * P, 4 * P_d + 4 * P + 4 * P + 8 * P_d
    for ddp, zero1 in zip(got["ddp_memory"], got["zero1_memory"], strict=True):
        saved = model_peak(ddp) - model_peak(zero1)
        assert abs(saved - (ddp_states - zero1_states)) <= 8 * P_L, (saved, ddp_states - zero1_states, 8 * P_L)
