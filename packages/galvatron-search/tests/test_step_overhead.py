"""The cost model's step_overhead_s: once per iteration on top of every plan's time, the same in the search as in
evaluate, and in the predicted breakdown."""
import copy
import math

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from synth import brute_force, cost_model

from galvatron_contracts.documents import InfeasibleError, validate
from galvatron_search import evaluate, search
from galvatron_search.costs import CostTables
from galvatron_search.evaluate import evaluate_spec, plan_spec
from galvatron_search.planner import Options, run_search

GIB = 2 ** 30
SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)


def with_overhead(cm: dict, seconds: float) -> dict:
    out = copy.deepcopy(cm)
    out["step_overhead_s"] = seconds
    return out


@settings(max_examples=12, **SETTINGS)
@given(st.integers(0, 10 ** 6), st.sampled_from([4, 8]), st.integers(2, 4), st.booleans(), st.floats(0.0, 0.5))
def test_search_with_overhead_equals_brute_force(seed, gpn, layers, tied, overhead):
    cm = with_overhead(cost_model(seed, 1, gpn, layers, tied, max_dec=2, max_ends=2), overhead)
    validate(cm, "synthetic", "cost-model")
    best, spec, _ = brute_force(cm, 4 * GIB, 8, 64)
    result, _ = run_search(CostTables(cm), Options(memory_bytes=4 * GIB, global_batch=8, buckets=64))
    if not math.isfinite(best):
        assert result.spec is None
        return
    assert result.spec is not None and math.isclose(result.T, best, rel_tol=1e-9), (result.T, best, spec)


@settings(max_examples=10, **SETTINGS)
@given(st.integers(0, 10 ** 6), st.booleans(), st.floats(1e-4, 1.0))
def test_overhead_adds_once_per_iteration_to_every_plan(seed, tied, overhead):
    cm = cost_model(seed, 1, 4, 4, tied)
    try:
        plan = search(cm, memory_gib=16, global_batch=8, with_baselines=False)
    except InfeasibleError:
        return
    base = evaluate(plan, cm)
    pred = evaluate(plan, with_overhead(cm, overhead))
    assert math.isclose(pred["iteration_time_s"], base["iteration_time_s"] + overhead, rel_tol=1e-12)
    assert pred["breakdown"]["step_overhead_s"] == overhead and base["breakdown"]["step_overhead_s"] == 0.0
    assert math.isclose(sum(pred["breakdown"].values()), pred["iteration_time_s"], rel_tol=1e-9)
    # every stage pays it: the per-stage costs shift together, so the critical stage stays the same
    spec = plan_spec(plan, CostTables(cm))
    with_s = evaluate_spec(CostTables(with_overhead(cm, overhead)), spec)
    without = evaluate_spec(CostTables(cm), spec)
    for a, b in zip(with_s["stages"], without["stages"], strict=True):
        assert math.isclose(a["c"], b["c"] + overhead, rel_tol=1e-12)
    assert with_s["critical_stage"] == without["critical_stage"]


def test_a_document_without_it_reads_as_zero():
    cm = cost_model(3, 1, 4, 3, False)
    cm.pop("step_overhead_s", None)
    plan = search(cm, memory_gib=16, global_batch=8, with_baselines=False)
    assert plan["predictions"]["breakdown"]["step_overhead_s"] == 0.0
    assert evaluate(plan, with_overhead(cm, 0.0)) == plan["predictions"]


def test_a_large_overhead_favours_the_larger_global_batch():
    """samples/s = B / (T(B) + s): an overhead paid per iteration amortises over larger batches. On this instance
    the search without it takes a smaller global batch than it could fit (memory makes the largest slower per
    sample); with a large one it takes the largest that fits."""
    cm = cost_model(6, 1, 4, 3, False)
    opts = dict(memory_bytes=3 * GIB, min_global_batch=4, max_global_batch=32)
    feasible = [B for B in (4, 8, 16, 32)
                if run_search(CostTables(cm), Options(memory_bytes=3 * GIB, global_batch=B))[0].spec is not None]
    plain, _ = run_search(CostTables(cm), Options(**opts))
    slow, _ = run_search(CostTables(with_overhead(cm, 1e3)), Options(**opts))
    assert plain.B < max(feasible)
    assert slow.B == max(feasible)
