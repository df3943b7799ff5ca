"""ddp's gradient all-reduce overlapped with the last micro-batch's backward (parallel/buckets.py).

- Equivalence: ddp plans with dp 2 (micro-batches 1, 2, 4; tied and untied; recompute; beside FSDP units) on two
  ranks, and on four a pp2 plan of ddp stages with dp 2 and a tp2 x dp2 plan (DTensor gradients, an uneven
  vocabulary), against the single-process reference.
- Overlap: on a two-rank ddp run, the all-reduce launches and the embedding's backward are recorded in order. Every
  bucket but the embedding's must be launched (asynchronously) during the last micro-batch's backward, before the
  embedding's backward runs; the embedding's (its gradient is the last ready) after it; none from an earlier
  micro-batch, none synchronously after backward, none from a backward outside a training step.

Run as a rank program (``torchrun --nproc-per-node 2 test_grad_overlap.py OUT``) this file runs the two-rank cases
and the recording in one world; the four-rank cases go through dist_worker.py.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from dist_worker import data_for
from harness import assert_matches_reference, launch, launch_file, rank_jobs, result
from plans import S, make_plan
from reference import reference_run

from galvatron_contracts.launch import run_as_rank
from galvatron_run.parallel import local
from galvatron_run.train import build_state, full_parameters, train, train_step

STEPS = 3
CASES2 = {
    "ddp_m1": make_plan("tiny-gpt", 2, [S()] * 2, [(0, 2)], b=4, m=1),
    "ddp_m2_gpipe": make_plan("tiny-gpt", 2, [S()] * 2, [(0, 2)], b=2, m=2, schedule="gpipe"),
    "ddp_m4_recompute": make_plan("tiny-llama", 2, [S(recompute=True), S()], [(0, 2)], b=2, m=4),
    "ddp_beside_fsdp": make_plan("tiny-llama", 2, [S(sharding="zero3"), S()], [(0, 2)], b=2, m=2,
                                 head=S(sharding="zero2")),
}
CASES4 = {
    "pp2_ddp": make_plan("tiny-gpt", 4, [S()] * 3, [(0, 1), (1, 3)], b=2, m=4),
    "tp2_dp2": make_plan("tiny-gpt", 4, [S(tp=2), S(tp=2, sp=True, recompute=True)], [(0, 2)], b=4, m=2,
                         emb=S(tp=2), head=S(tp=2, sp=True), vocab_size=251),
}
PROBE = make_plan("tiny-gpt", 2, [S()] * 2, [(0, 2)], b=2, m=2)     # tied: the embedding's weight is the head's
PROBE_STEPS = 2


@pytest.fixture(scope="module")
def out2(tmp_path_factory):
    path = tmp_path_factory.mktemp("overlap2")
    launch_file(__file__, path)
    return path


@pytest.fixture(scope="module")
def out4(tmp_path_factory):
    path = tmp_path_factory.mktemp("overlap4")
    launch([{"name": n, "plan": p, "steps": STEPS} for n, p in CASES4.items()], 4, path)
    return path


@pytest.mark.parametrize("name", CASES2)
def test_two_ranks_match_single_process(out2, name):
    got, params = result(out2, name)
    assert_matches_reference(got, params, reference_run(CASES2[name], STEPS))


@pytest.mark.parametrize("name", CASES4)
def test_four_ranks_match_single_process(out4, name):
    got, params = result(out4, name)
    assert_matches_reference(got, params, reference_run(CASES4[name], STEPS))


def _steps(events: list[dict]) -> tuple[list[list[dict]], list[dict]]:
    """The events of each training step, and those after the last one (a backward outside any step)."""
    steps, cur = [], None
    for e in events:
        if e["event"] in ("step", "outside"):
            cur = []
            steps.append(cur)
        else:
            cur.append(e)
    return steps[:-1], steps[-1]


@pytest.mark.parametrize("rank", [0, 1])
def test_buckets_launch_during_the_last_backward(out2, rank):
    rec = json.loads((out2 / f"probe.rank{rank}.json").read_text())
    sizes, m = rec["sizes"], PROBE["micro_batches"]
    in_backward_order = [sizes[n] for n in ("head", "layers[1]", "layers[0]", "embedding")]
    assert sizes["head"] not in in_backward_order[1:] and sizes["embedding"] not in in_backward_order[:3], sizes
    steps, outside = _steps(rec["events"])
    assert len(steps) == PROBE_STEPS
    for k, events in enumerate(steps):
        emb_backward = [i for i, e in enumerate(events) if e["event"] == "embedding_backward"]
        launches = [i for i, e in enumerate(events) if e["event"] == "all_reduce" and e["async"]]
        assert len(emb_backward) == m, (k, events)
        assert [events[i]["numel"] for i in launches] == in_backward_order, (k, events)
        head, *layers, emb = launches
        last_backward_starts = emb_backward[m - 2]          # the previous micro-batch's backward has ended
        assert last_backward_starts < head, (k, events)      # not launched before its last gradient
        assert all(i < emb_backward[m - 1] for i in (head, *layers)), (k, events)    # overlapped with backward
        assert emb > emb_backward[m - 1], (k, events)
        blocking = [e["numel"] for e in events if e["event"] == "all_reduce" and not e["async"]]
        assert all(n == 1 for n in blocking), (k, blocking)  # only scalars (norm, loss, time) after backward
    assert not [e for e in outside if e["event"] == "all_reduce"], outside


# ---- rank program -------------------------------------------------------------------------------------------------

def _run_case(name: str, plan: dict, out: Path) -> None:
    """One equivalence case, written as dist_worker.py writes it (harness.result reads it)."""
    state = build_state(plan, torch.device("cpu"), steps=STEPS, timeout_s=60)
    res = train(state, data_for({}, plan), STEPS, measure_memory=False)
    params = full_parameters(state)
    if state.env.j == 0:
        torch.save(params, out / f"{name}.stage{state.env.stage}.pt")
    if dist.get_rank() == 0:
        (out / f"{name}.losses.json").write_text(json.dumps(
            {"losses": [r["loss"] for r in res["steps"]], "norms": [r["grad_norm"] for r in res["steps"]]}))
    dist.barrier()
    state.env.close()


def _probe(out: Path) -> None:
    """Record, in order, every all_reduce launch (its size, whether async) and the start of each embedding
    backward, over PROBE_STEPS training steps and then one forward and backward outside a step."""
    state = build_state(PROBE, torch.device("cpu"), steps=PROBE_STEPS, timeout_s=60)
    data = data_for({}, PROBE)
    sizes = {u.name: sum(local(p).numel() for _, p in u.parameters()) for u in state.units}
    events: list[dict] = []

    def on_embedding_output(module, inputs, output):
        output.register_hook(lambda grad: events.append({"event": "embedding_backward"}))

    state.model.embedding.register_forward_hook(on_embedding_output)
    real = dist.all_reduce

    def recording(tensor, *args, **kwargs):
        events.append({"event": "all_reduce", "numel": tensor.numel(), "async": bool(kwargs.get("async_op"))})
        return real(tensor, *args, **kwargs)

    dist.all_reduce = recording
    try:
        for _ in range(PROBE_STEPS):
            events.append({"event": "step"})
            train_step(state, data)
        events.append({"event": "outside"})
        x, y = data.batch(PROBE_STEPS)
        b = PROBE["micro_batch_size"]
        state.loss_fn(state.model(x[:b]), y[:b]).backward()
    finally:
        dist.all_reduce = real
    (out / f"probe.rank{dist.get_rank()}.json").write_text(json.dumps({"sizes": sizes, "events": events}))
    dist.barrier()
    state.env.close()


def _jobs(out: Path) -> dict:
    jobs = {n: (lambda n=n: _run_case(n, CASES2[n], out)) for n in CASES2}
    jobs["probe"] = lambda: _probe(out)
    return jobs


if __name__ == "__main__":
    run_as_rank(lambda: rank_jobs(sys.argv[1], _jobs))
