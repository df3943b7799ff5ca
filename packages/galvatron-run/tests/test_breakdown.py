"""The time breakdown of one step (breakdown.py). First the pure attribution against a brute-force walk over every
nanosecond, and the report's comparison; then one 2-rank launch (this file is also the rank program) where causes
of a known size show where they should: a sleep in one layer's forward, the wait it makes a neighbouring stage do,
ZeRO-3's gathers and scatters, tensor-parallel collectives, recompute, layout transitions; and the command line's
report and table.

    torchrun --nproc-per-node 2 tests/test_breakdown.py CASES.json OUT_DIR      # what the fixture runs
"""
from __future__ import annotations

import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
from plans import S, make_plan

from galvatron_contracts.launch import run_as_rank
from galvatron_run.breakdown import (
    COMPONENTS,
    PREDICTED,
    TRANSITION,
    UNPREDICTED,
    Collective,
    Span,
    attribute,
    chrome_trace,
    critical_rank,
    settle,
    trace_events,
)
from galvatron_run.report import breakdown_table, build_report

HERE = Path(__file__).parent

SLEEP_S = 0.05            # the known cause: this long in one layer's forward (and backward), per micro-batch, rank 0
PAIRS = 3                 # steps without and with it, alternating, so slow drifts of the machine cancel
ENV = dict(os.environ, PYTHONPATH=str(HERE.parent / "src"), OMP_NUM_THREADS="1")


# --- the pure attribution -----------------------------------------------------------------------------------------

def _reference(marks, spans, collectives):
    """Walk the window one nanosecond at a time; each goes where the rules in breakdown.py's docstring say."""
    comp = dict.fromkeys(COMPONENTS, 0)
    units: dict[str, dict[str, int]] = {}
    comm = [0] * len(collectives)
    for t in range(marks[0][1], marks[-1][1]):
        phase = [name for name, at in marks if at <= t][-1]
        covering = [s for s in spans if s.begin_ns <= t < s.end_ns]
        nets = [s for s in covering if s.cid is not None]
        ctxs = [s for s in covering if s.cid is None]
        ctx = max(ctxs, key=lambda s: s.order) if ctxs else None
        unit = ctx.unit if ctx is not None and ctx.unit != TRANSITION else None
        if nets:
            net = min(nets, key=lambda s: s.order)
            c = collectives[net.cid]
            comm[net.cid] += 1
            if c.op in ("send", "recv"):
                key = "pipeline_p2p_s"               # settle() moves the waiting for the peer to idle
            elif phase != "micro_batches":
                key = {"grad_sync": "grad_sync_s", "optimizer": "optimizer_step_s", "step_sync": "step_sync_s"}[phase]
            elif ctx is not None and ctx.unit == TRANSITION:
                key = "layout_transitions_s"
            elif (c.group, c.op) == ("dp", "all_reduce"):
                key = "grad_sync_s"
            else:
                key = {"tp": "tp_communication_s", "dp": "zero_communication_s"}.get(c.group, "other_s")
            part = "communication"
        elif ctx is None:
            key = {"grad_sync": "grad_sync_s", "optimizer": "optimizer_step_s",
                   "step_sync": "step_sync_s"}.get(phase, "other_s")
            part = None
        elif ctx.unit == TRANSITION:
            key, part = "layout_transitions_s", None
        else:
            key = {"forward": "forward_compute_s", "backward": "backward_compute_s",
                   "recompute": "recompute_s"}[ctx.kind]
            part = ctx.kind
        comp[key] += 1
        if unit is not None and part is not None:
            units.setdefault(unit, {"forward": 0, "backward": 0, "recompute": 0, "communication": 0})[part] += 1
    return comp, units, comm


def _random_step(rng: random.Random):
    """Nested spans as a step makes them: plan entries' forward and backward, recompute inside backward,
    collectives inside any of them or on their own, in four phases."""
    collectives = [Collective(op, group, 2, 4) for op, group in
                   [("all_reduce", "tp"), ("all_gather", "dp"), ("all_reduce", "dp"), ("send", "pp"),
                    ("recv", "pp"), ("all_reduce", "world"), ("all_gather", "stage")]]
    spans, order = [], [0]

    def nest(lo, hi, depth, kind):
        t = lo
        while t < hi - 4:
            a = rng.randint(t, hi - 2)
            b = rng.randint(a + 1, min(hi, a + rng.randint(2, 120)))
            order[0] += 1
            if depth == 0 or rng.random() < 0.4:
                spans.append(Span(a, b, rng.choice(["issue", "wait"]), cid=rng.randrange(len(collectives)),
                                  order=order[0]))
            else:
                k = kind or rng.choice(["forward", "backward"])
                k = "recompute" if k == "backward" and rng.random() < 0.3 and depth < 2 else k
                unit = rng.choice(["embedding", "layers[0]", "layers[1]", "head", TRANSITION])
                spans.append(Span(a, b, k, unit, order=order[0]))
                nest(a, b, depth - 1, k)
            t = b

    nest(0, 1000, 3, None)
    cuts = sorted(rng.sample(range(1, 1000), 3))
    marks = [("micro_batches", 0), ("grad_sync", cuts[0]), ("optimizer", cuts[1]), ("step_sync", cuts[2]),
             ("end", 1000)]
    return marks, spans, collectives


@pytest.mark.parametrize("seed", range(40))
def test_attribution_matches_a_walk_over_every_nanosecond(seed):
    marks, spans, collectives = _random_step(random.Random(seed))
    got = attribute(marks, spans, collectives)
    assert got == _reference(marks, spans, collectives)
    assert sum(got[0].values()) == marks[-1][1] - marks[0][1]           # a partition of the step


@pytest.mark.parametrize("seed", range(5))
def test_the_trace_holds_every_phase_and_span_at_its_time(seed):
    """Chrome trace events: the phases between the marks, one event per span at its begin and length (us from the
    step's start), entries on the compute thread and collectives on the communication thread."""
    marks, spans, collectives = _random_step(random.Random(seed))
    events = [e for e in trace_events(3, marks, spans, collectives, origin_ns=0) if e["ph"] == "X"]
    phases = [(e["name"], e["ts"], e["dur"]) for e in events if e["tid"] == 0]
    assert phases == [(a, t0 / 1e3, (t1 - t0) / 1e3) for (a, t0), (_, t1) in zip(marks, marks[1:])]
    rest = [e for e in events if e["tid"] != 0]
    assert len(rest) == len(spans) and all(e["pid"] == 3 for e in events)
    for e, sp in zip(rest, spans):
        assert (e["ts"], e["dur"]) == (sp.begin_ns / 1e3, (sp.end_ns - sp.begin_ns) / 1e3)
        if sp.cid is None:
            assert e["tid"] == 1 and e["name"] == f"{sp.unit} {sp.kind}"
        else:
            c = collectives[sp.cid]
            assert e["tid"] == 2 and e["name"] == f"{c.op} {c.group}" and e["args"]["bytes"] == c.bytes
    doc = chrome_trace([{"_trace": trace_events(r, marks, spans, collectives, 0)} for r in (0, 1)])
    assert {e["pid"] for e in doc["traceEvents"]} == {0, 1}


def test_time_outside_the_window_is_not_counted():
    spans = [Span(-50, 30, "forward", "layers[0]", order=1), Span(90, 200, "wait", cid=0, order=2)]
    comp, units, comm = attribute([("micro_batches", 0), ("end", 100)], spans, [Collective("all_reduce", "tp", 2, 4)])
    assert comp["forward_compute_s"] == 30 and comp["tp_communication_s"] == 10 and comp["other_s"] == 60
    assert units == {"layers[0]": {"forward": 30, "backward": 0, "recompute": 0, "communication": 0}}
    assert comm == [10]


def _p2p_rank(rank, host, origin, events, p2p):
    comps = dict.fromkeys(COMPONENTS, 0.0)
    comps["pipeline_p2p_s"] = p2p
    return {"rank": rank, "components": comps, "_clock": {"host": host, "origin_ns": origin},
            "_p2p": [{"op": op, "peer": peer, "nth": nth, "posted_ns": posted, "waits": waits}
                     for op, peer, nth, posted, waits in events]}


def test_a_pipeline_wait_is_idle_until_the_peer_posts_its_side():
    """rank 0 waits on its 2nd send from 100 to 400 ns; rank 1 posts the matching 2nd receive at 250: 150 ns idle,
    150 transfer. rank 1 waits on its receive from 250 to 400, all after the send was posted: no idle. A third
    receive without its send on the other rank stays p2p."""
    a = _p2p_rank(0, "h", 0, [("send", 1, 0, 10, []), ("send", 1, 1, 90, [[100, 400]])], 300e-9)
    b = _p2p_rank(1, "h", 5, [("recv", 0, 0, 20, []), ("recv", 0, 1, 250, [[250, 400]]),
                              ("recv", 0, 2, 500, [[500, 520]])], 170e-9)
    sa, sb = settle([a, b])
    assert sa["components"]["pipeline_idle_s"] == pytest.approx(150e-9)
    assert sa["components"]["pipeline_p2p_s"] == pytest.approx(150e-9)
    assert sb["components"]["pipeline_idle_s"] == 0 and sb["components"]["pipeline_p2p_s"] == 170e-9
    assert not {k for k in sa if k.startswith("_")}
    b["_clock"]["host"] = "other"             # other hosts: clocks aligned at the step's start (origin 5 vs 0)
    sa, _ = settle([a, b])
    assert sa["components"]["pipeline_idle_s"] == pytest.approx(145e-9)


def test_the_last_stage_waiting_in_the_tied_sum_for_the_first_stage_is_idle():
    """The last stage (rank 1) enters the tied table's sum at 100 and waits to 400; the first stage (rank 0) enters
    it at 350, after its last backward: 250 ns of rank 1's grad_sync_s are the pipeline's drain, 50 stay the sum.
    Rank 0 waits from 350 to 400, after rank 1 entered: nothing moves; its p2p is left as it was."""
    a = _p2p_rank(0, "h", 0, [("tied", 1, 0, 350, [[350, 400]])], 40e-9)
    a["components"]["grad_sync_s"] = 50e-9
    b = _p2p_rank(1, "h", 0, [("tied", 0, 0, 100, [[100, 400]])], 0.0)
    b["components"]["grad_sync_s"] = 300e-9
    sa, sb = settle([a, b])
    assert sb["components"]["pipeline_idle_s"] == pytest.approx(250e-9)
    assert sb["components"]["grad_sync_s"] == pytest.approx(50e-9)
    assert sa["components"]["pipeline_idle_s"] == 0 and sa["components"]["grad_sync_s"] == 50e-9
    assert sa["components"]["pipeline_p2p_s"] == 40e-9
    assert sum(sb["components"].values()) == pytest.approx(sum(b["components"].values()))


# --- the report's comparison and table ----------------------------------------------------------------------------

def _rank(rank, step_sync, **components):
    comps = dict.fromkeys(COMPONENTS, 0.0)
    comps.update(components, step_sync_s=step_sync)
    comps["other_s"] = 1.0 - sum(v for k, v in comps.items() if k != "other_s")
    barrier = {"op": "barrier", "group": "world", "group_size": 2, "calls": 1, "bytes": 0, "time_s": step_sync}
    return {"rank": rank, "stage": 0, "step_s": 1.0, "components": comps, "layers": [], "collectives": [barrier],
            "profiled_step": 2}


def _report(plan, breakdown, peak=1000):
    memory = [{"peak_bytes": peak, "baseline_bytes": 1, "method": "m", "profiled_step": 1,
               "accounting": {"param_bytes": 100, "grad_bytes": 100, "optimizer_bytes": 200,
                              "activation_bytes": 300}}] * len(breakdown)
    settings = {"steps": 3, "warmup_steps": 1, "dtype": "fp32", "seq_len": 16, "global_batch": 4, "micro_batches": 2,
                "data": {"kind": "random"}, "torch_version": "x"}
    steps = [{"step": i, "loss": 1.0, "time_s": 1.0, "tokens": 64} for i in range(3)]
    return build_report(plan, plan_path=None, steps=steps, memory=memory, world=len(breakdown), backend="gloo",
                        device={"type": "cpu", "name": "cpu"}, threads=1, nodes=1, settings=settings,
                        peak_tflops=None, breakdown=breakdown)


def _predicted_plan(world=2):
    plan = make_plan("tiny-gpt", world, [S()] * 2, [(0, 2)], b=2, m=2)
    breakdown = {k: 0.05 * (i + 1) for i, k in enumerate(PREDICTED)}
    mem = {"params": 100.0, "grads": 100.0, "optimizer": 200.0, "activations": 250.0, "workspace": 30.0,
           "overhead": 20.0, "total": 700.0}
    plan["predictions"] = {"iteration_time_s": sum(breakdown.values()), "samples_per_s": 1.0, "tokens_per_s": 16.0,
                           "breakdown": breakdown,
                           "stages": [{"index": 0, "memory_bytes_per_rank": mem, "forward_s": 0.1, "backward_s": 0.2}]}
    plan["search"] = {"time_s": 0.0, "candidates_evaluated": 1, "memory_budget_bytes": 2048}
    return plan


def test_the_comparison_is_of_the_rank_the_step_waited_for_key_by_key():
    plan = _predicted_plan()
    waiting, slowest = _rank(0, 0.3, forward_compute_s=0.1), _rank(1, 0.01, backward_compute_s=0.2, recompute_s=0.1,
                                                                     pipeline_idle_s=0.05)
    doc = _report(plan, [waiting, slowest])
    cmp = doc["comparison"]["breakdown"]
    assert cmp["rank"] == 1 and cmp["step"] == {"predicted": plan["predictions"]["iteration_time_s"],
                                                "measured": 1.0, "ratio": 1.0 / plan["predictions"]["iteration_time_s"]}
    pred = plan["predictions"]["breakdown"]
    got = cmp["components"]
    assert list(got) == [*PREDICTED, *UNPREDICTED]
    assert got["backward_compute_s"]["measured"] == pytest.approx(0.3)          # backward + recompute
    assert got["pipeline_bubble_s"] == {"predicted": pred["pipeline_bubble_s"], "measured": 0.05,
                                        "ratio": 0.05 / pred["pipeline_bubble_s"]}
    assert got["other_s"]["predicted"] == 0.0 and got["other_s"]["ratio"] is None
    assert sum(r["measured"] for r in got.values()) == pytest.approx(1.0)       # every measured second, once
    assert doc["breakdown"]["profiled_step"] == 2 and "profiled_step" not in doc["breakdown"]["ranks"][0]


def test_memory_comparison_carries_the_budget_and_the_parts():
    doc = _report(_predicted_plan(), [_rank(0, 0.1)], peak=1000)
    mem = doc["comparison"]["memory"][0]
    assert mem["budget_bytes"] == 2048 and mem["measured"] == 1000
    acc = mem["accounting"]
    assert acc["activations"] == {"predicted": 250.0, "measured": 300, "ratio": 300 / 250}
    assert acc["workspace_and_overhead"]["predicted"] == 50.0
    assert acc["workspace_and_overhead"]["measured"] == 1000 - 100 - 100 - 200 - 300


def test_the_table_fits_in_80_columns_and_ends_with_the_step():
    for plan in (_predicted_plan(), make_plan("tiny-gpt", 2, [S()] * 2, [(0, 2)], b=2, m=2)):
        table = breakdown_table(_report(plan, [_rank(0, 0.1), _rank(1, 0.0)]))
        lines = table.splitlines()
        assert max(map(len, lines)) <= 80 and "rank 1" in lines[0]
        assert lines[-1].split()[0] == "step" and float(lines[-1].split()[2]) == 1.0     # the measured step_s


# --- one 2-rank launch: known causes ------------------------------------------------------------------------------

def _cases():
    m = 2
    z3 = S(sharding="zero3")
    z1 = S(sharding="zero1")
    return [
        {"name": "ddp", "plan": make_plan("mini-gpt", 2, [S()] * 4, [(0, 4)], b=4, m=m, seq=32, schedule="gpipe"),
         "sleep": "layers[1]", "sleep_backward": True},
        {"name": "pp", "plan": make_plan("tiny-gpt", 2, [S()] * 2, [(0, 1), (1, 2)], b=2, m=m), "sleep": "layers[0]"},
        {"name": "zero3", "plan": make_plan("tiny-gpt", 2, [z3] * 2, [(0, 2)], b=4, m=m, emb=z3, head=z3)},
        {"name": "zero1", "plan": make_plan("tiny-gpt", 2, [z1] * 2, [(0, 2)], b=2, m=3, emb=z1, head=z1)},
        {"name": "tp", "plan": make_plan("tiny-llama", 2, [S(tp=2)] * 2, [(0, 2)], b=4, m=m, emb=S(tp=2),
                                         head=S(tp=2, sp=True))},
        {"name": "recompute", "plan": make_plan("tiny-gpt", 2, [S(recompute=True), S()], [(0, 2)], b=4, m=m)},
        {"name": "transitions", "plan": make_plan("tiny-gpt", 2, [S(tp=2), S()], [(0, 2)], b=4, m=m)},
    ]


CASES = _cases()


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    path = tmp_path_factory.mktemp("breakdown")
    (path / "cases.json").write_text(json.dumps(CASES))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", __file__,
           str(path / "cases.json"), str(path)]
    proc = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=500)
    assert proc.returncode == 0, proc.stderr[-5000:]
    return path


def _steps(out, name):
    return json.loads((out / f"{name}.json").read_text())


def _all_ranks(out):
    return [(c["name"], r) for c in CASES for step in _steps(out, c["name"])["steps"] for r in step["ranks"]]


def test_components_sum_to_the_step_and_the_entries_to_their_components(out):
    for name, r in _all_ranks(out):
        comps = r["components"]
        assert set(comps) == set(COMPONENTS) and min(comps.values()) >= 0, name
        assert sum(comps.values()) == pytest.approx(r["step_s"], abs=1e-9), name
        for part, key in (("forward_s", "forward_compute_s"), ("backward_s", "backward_compute_s"),
                          ("recompute_s", "recompute_s")):
            assert sum(u[part] for u in r["layers"]) == pytest.approx(comps[key], abs=1e-9), (name, part)
        assert {c["group"] for c in r["collectives"]} <= {"tp", "dp", "pp", "tied", "world"}, name
        assert "unmatched_wait" not in {c["op"] for c in r["collectives"]}, name


def _deltas(steps, rank: int, pick) -> dict:
    """Median over the pairs of (with the sleep - without) of ``pick(rank's entry)``, a dict of seconds."""
    pairs = [(a, b) for a, b in zip(steps[::2], steps[1::2], strict=True)]
    assert all(not a["sleep"] and b["sleep"] for a, b in pairs)
    keys = [k for k, v in pick(pairs[0][0]["ranks"][rank]).items() if isinstance(v, float)]
    return {k: statistics.median(pick(b["ranks"][rank])[k] - pick(a["ranks"][rank])[k] for a, b in pairs)
            for k in keys}


def _layer(r, unit):
    return next(u for u in r["layers"] if u["unit"] == unit)


def test_a_sleep_in_one_layer_grows_its_forward_and_backward_only(out):
    """rank 0 sleeps SLEEP_S in layers[1]'s forward and again inside its backward (a hook on its MLP's output
    gradient), per micro-batch: I = m * SLEEP_S more in each. The decision is whether those seconds landed in the
    right place, so the margin is I / 2: the right component grows by more (time.sleep never returns early), any
    other would grow by I if a sleep were counted there instead."""
    case = next(c for c in CASES if c["name"] == "ddp")
    injected = SLEEP_S * case["plan"]["micro_batches"]
    steps = _steps(out, "ddp")["steps"]
    comps = _deltas(steps, 0, lambda r: r["components"])
    grown = ("forward_compute_s", "backward_compute_s")
    assert all(comps[k] >= injected / 2 for k in grown), comps
    assert all(abs(v) < injected / 2 for k, v in comps.items() if k not in grown), comps
    for unit in ("layers[0]", "layers[1]", "layers[2]", "head"):
        layer = _deltas(steps, 0, lambda r, u=unit: _layer(r, u))
        for part in ("forward_s", "backward_s"):
            assert (layer[part] >= injected / 2) == (unit == "layers[1]"), (unit, part, layer)
    waiter = _deltas(steps, 1, lambda r: r["components"])     # rank 1 waits for rank 0 in ddp's all_reduce
    assert waiter["grad_sync_s"] >= injected and waiter["forward_compute_s"] < injected / 2, waiter
    assert all(critical_rank(s["ranks"])["rank"] == 0 for s in steps[1::2])


def test_equal_decoder_layers_take_equal_time(out):
    """Four identical mini-gpt blocks do the same work. On this shared machine a span now and then holds a
    preemption (5-17 ms seen, against ~2 ms of work), and noise of that kind only adds: so each block's least
    forward over the unperturbed steps of both ranks. A bound of 1.5x catches a span that takes a neighbour's
    work (the head's, a transition's) or loses half of its own. The schedule is gpipe: under 1f1b the first block
    of a forward that follows a backward is slower for real (module hooks around the blocks alone, without these
    spans, measured it 1.7x the others here). Backward is not compared: ddp's bucket all-reduces run on gloo's
    thread during the blocks' backward and take the CPU from them unevenly."""
    samples = [r for s in _steps(out, "ddp")["steps"][::2] for r in s["ranks"]]
    least = [min(_layer(r, f"layers[{i}]")["forward_s"] for r in samples) for i in range(4)]
    assert max(least) <= 1.5 * min(least), least


def test_a_stage_that_waits_for_its_neighbour_shows_idle_time(out):
    """Stage 0 sleeps in its forward: stage 1, which receives that forward's activation, waits I more in its
    receives (pipeline idle), and computes no more; both stages send and receive."""
    case = next(c for c in CASES if c["name"] == "pp")
    injected = SLEEP_S * case["plan"]["micro_batches"]
    steps = _steps(out, "pp")["steps"]
    for s in steps:
        assert all(r["components"]["pipeline_p2p_s"] > 0 for r in s["ranks"])
        for r in s["ranks"]:
            ops = {(c["op"], c["group"]): c for c in r["collectives"]}
            assert ops[("send", "pp")]["calls"] == ops[("recv", "pp")]["calls"] == case["plan"]["micro_batches"]
    waiter = _deltas(steps, 1, lambda r: r["components"])
    assert waiter["pipeline_idle_s"] >= injected / 2, waiter
    assert abs(waiter["forward_compute_s"]) < injected / 2 and abs(waiter["backward_compute_s"]) < injected / 2
    assert _deltas(steps, 0, lambda r: r["components"])["forward_compute_s"] >= injected / 2


def test_ddp_gradient_sync_all_reduces_every_parameter_once(out):
    """One bucket per ddp entry: the dp all_reduce bytes of a step are this rank's fp32 parameter bytes."""
    data = _steps(out, "ddp")
    for s in data["steps"]:
        for r in s["ranks"]:
            row = next(c for c in r["collectives"] if (c["op"], c["group"]) == ("all_reduce", "dp"))
            assert row["bytes"] == data["param_bytes"][r["rank"]] and row["calls"] == len(r["layers"])


def test_zero3_gathers_twice_and_scatters_once_per_micro_batch_over_dp(out):
    """ZeRO-3 all-gathers each FSDP unit's full parameters in forward and again in backward, and reduce-scatters
    its gradients, every micro-batch: 2m and m times the full parameter bytes, over the dp group of 2."""
    data = _steps(out, "zero3")
    m = next(c for c in CASES if c["name"] == "zero3")["plan"]["micro_batches"]
    for r in data["steps"][0]["ranks"]:
        rows = {(c["op"], c["group"]): c for c in r["collectives"]}
        gather, scatter = rows[("all_gather", "dp")], rows[("reduce_scatter", "dp")]
        assert gather["group_size"] == scatter["group_size"] == 2
        assert gather["bytes"] == 2 * m * data["full_param_bytes"] and scatter["bytes"] == m * data["full_param_bytes"]
        assert r["components"]["zero_communication_s"] > 0


def test_zero1_gathers_and_scatters_once_per_step_over_dp(out):
    """ZeRO-1 all-gathers each FSDP unit's parameters at the step's first forward and reduce-scatters its
    accumulated gradients in the last micro-batch's backward: once each per step, whatever the micro-batch count
    (3 here), the full parameter bytes each, over the dp group of 2."""
    data = _steps(out, "zero1")
    for r in data["steps"][0]["ranks"]:
        rows = {(c["op"], c["group"]): c for c in r["collectives"]}
        gather, scatter = rows[("all_gather", "dp")], rows[("reduce_scatter", "dp")]
        assert gather["group_size"] == scatter["group_size"] == 2
        assert gather["bytes"] == scatter["bytes"] == data["full_param_bytes"]
        assert gather["calls"] == scatter["calls"] == len(r["layers"]) - 1      # the tied embedding and head: one


def test_tensor_parallel_collectives_are_in_tp_and_inside_the_layers(out):
    for r in _steps(out, "tp")["steps"][0]["ranks"]:
        assert r["components"]["tp_communication_s"] > 0
        assert {c["op"] for c in r["collectives"] if c["group"] == "tp"} >= {"all_reduce", "all_gather"}
        assert all(c["group_size"] == 2 for c in r["collectives"] if c["group"] == "tp")
        assert all(_layer(r, f"layers[{i}]")["communication_s"] > 0 for i in range(2))


def test_recompute_is_counted_for_the_recomputed_layer_only(out):
    for r in _steps(out, "recompute")["steps"][0]["ranks"]:
        assert _layer(r, "layers[0]")["recompute_s"] > 0 and _layer(r, "layers[1]")["recompute_s"] == 0
        assert r["components"]["recompute_s"] == pytest.approx(_layer(r, "layers[0]")["recompute_s"], abs=1e-12)


def test_layout_transitions_are_their_own_component(out):
    for r in _steps(out, "transitions")["steps"][0]["ranks"]:
        assert r["components"]["layout_transitions_s"] > 0


# --- the command line: report and table ---------------------------------------------------------------------------

def test_the_run_report_has_the_breakdown_and_stderr_the_table(tmp_path):
    plan = _predicted_plan(world=1)
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(plan))
    trace = tmp_path / "step.json"
    r = subprocess.run([sys.executable, "-m", "galvatron_run", str(path), "--steps", "4", "--warmup-steps", "1",
                        "--trace", str(trace)], env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    doc = json.loads(r.stdout)
    names = {e["name"] for e in json.loads(trace.read_text())["traceEvents"] if e["ph"] == "X"}
    assert {"micro_batches", "optimizer", "layers[0] forward", "layers[1] backward", "head forward"} <= names
    assert doc["schema_version"] == "1.2" and doc["breakdown"]["profiled_step"] == 2
    (rank,) = doc["breakdown"]["ranks"]
    assert [u["unit"] for u in rank["layers"]] == ["embedding", "layers[0]", "layers[1]", "head"]
    assert doc["comparison"]["breakdown"]["rank"] == 0
    assert doc["comparison"]["memory"][0]["budget_bytes"] == 2048
    table = r.stderr[r.stderr.index("time of step 2 on rank 0"):].splitlines()[:14]
    assert table[1].split() == ["component", "predicted", "s", "measured", "s", "ratio"]
    assert table[-1].startswith("step") and max(map(len, table)) <= 100


# --- the rank program -----------------------------------------------------------------------------------------------

def _sleep_in(block, on: list[bool], backward: bool) -> None:
    """While ``on[0]``: SLEEP_S at the start of ``block``'s forward and, with ``backward``, when the gradient of its
    MLP's output arrives (inside the block's backward)."""
    def nap(*_):
        if on[0]:
            time.sleep(SLEEP_S)

    def in_backward(_module, _args, out):
        if on[0] and out.requires_grad:
            out.register_hook(nap)

    block.register_forward_pre_hook(nap)
    if backward:
        block.mlp.register_forward_hook(in_backward)


def _main(cases_path: str, out_dir: str) -> None:
    from datetime import timedelta

    import torch
    import torch.distributed as dist

    from galvatron_run.breakdown import StepTimes, settle
    from galvatron_run.data import make_data_source
    from galvatron_run.measure import tensor_bytes
    from galvatron_run.parallel import local
    from galvatron_run.train import build_state, train_step

    torch.set_num_threads(1)
    dist.init_process_group("gloo", timeout=timedelta(seconds=120))
    rank = dist.get_rank()
    for case in json.loads(Path(cases_path).read_text()):
        plan = case["plan"]
        state = build_state(plan, torch.device("cpu"), steps=100, timeout_s=120)
        data = make_data_source(None, vocab_size=plan["model"]["vocab_size"], seq_len=plan["training"]["seq_len"],
                                global_batch=plan["global_batch"], seed=7)
        sleeping = [False]
        target = next((u for u in state.units if u.name == case.get("sleep")), None)
        if target is not None and rank == 0:
            _sleep_in(target.module, sleeping, case.get("sleep_backward", False))
        for _ in range(2):                      # optimizer states, gloo connections: a steady step follows
            train_step(state, data)
        steps = []
        for sleep in [False, True] * PAIRS if "sleep" in case else [False]:
            sleeping[0] = sleep
            times = StepTimes(state)
            with times.recording():
                train_step(state, data)
            ranks = [None] * dist.get_world_size()
            dist.all_gather_object(ranks, times.result())
            steps.append({"sleep": sleep, "ranks": settle(ranks)})
        params = {id(p): p for p in state.model.parameters()}.values()
        param_bytes = [None] * dist.get_world_size()
        dist.all_gather_object(param_bytes, tensor_bytes(local(p) for p in params))
        if rank == 0:
            full = sum(p.numel() * p.element_size() for p in params)     # a DTensor's numel is the full one
            (Path(out_dir) / f"{case['name']}.json").write_text(json.dumps(
                {"steps": steps, "param_bytes": param_bytes, "full_param_bytes": full}))
        dist.barrier()
        state.env.close()
    dist.destroy_process_group()


if __name__ == "__main__":
    run_as_rank(lambda: _main(sys.argv[1], sys.argv[2]))
