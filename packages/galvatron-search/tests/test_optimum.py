"""The search's optimum against brute-force enumeration of every plan in its space (same objective, same
quantisation rule), on random small cost models; monotonicity in the budget; baselines; evaluate round trip."""
import math

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from synth import brute_force, cost_model

from galvatron_contracts.documents import InfeasibleError, validate
from galvatron_contracts.pipeline import even_split
from galvatron_search import evaluate, search
from galvatron_search.costs import CostTables
from galvatron_search.evaluate import evaluate_spec
from galvatron_search.planner import DEFAULT_MEMORY_MARGIN, Options, run_search

GIB = 2 ** 30
SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)


@st.composite
def instances(draw):
    layers = draw(st.integers(2, 6))
    gpn = draw(st.sampled_from([4, 8]))
    nodes = 1 if gpn == 8 else draw(st.sampled_from([1, 2]))
    cm = cost_model(draw(st.integers(0, 10 ** 6)), nodes, gpn, layers, draw(st.booleans()),
                    max_dec=3 if layers <= 4 else 2, max_ends=2)
    return cm, draw(st.floats(1.0, 8.0)), draw(st.sampled_from([4, 8, 16])), draw(st.sampled_from([16, 64, 256]))


@settings(max_examples=40, **SETTINGS)
@given(instances())
def test_search_equals_brute_force(inst):
    cm, gib, B, buckets = inst
    validate(cm, "synthetic", "cost-model")
    best, spec, count = brute_force(cm, gib * GIB, B, buckets)
    assert count > 0
    tables = CostTables(cm)
    result, _ = run_search(tables, Options(memory_bytes=gib * GIB, global_batch=B, buckets=buckets))
    if not math.isfinite(best):
        assert result.spec is None
        return
    assert result.spec is not None, f"brute force found {best} s, the search nothing"
    assert math.isclose(result.T, best, rel_tol=1e-9), (result.T, best, spec)
    check = evaluate_spec(tables, result.spec, gib * GIB, buckets)
    assert check["fits"] and math.isclose(check["iteration_time_s"], best, rel_tol=1e-9)


def test_brute_force_finds_better_plans_than_uniform_ones():
    """The space is not trivial: on some instances the optimum mixes strategies or splits layers unevenly."""
    mixed = 0
    for seed in range(12):
        cm = cost_model(seed, 1, 8, 4, False, max_dec=3)
        best, spec, _ = brute_force(cm, 3 * GIB, 8)
        if spec is not None:
            sizes = {spec.bounds[i + 1] - spec.bounds[i] for i in range(spec.pp)}
            mixed += len(set(spec.dec)) > 1 or len(sizes) > 1
    assert mixed > 0


@settings(max_examples=12, **SETTINGS)
@given(st.integers(0, 10 ** 6), st.sampled_from([4, 8]), st.integers(2, 6), st.booleans())
def test_throughput_never_decreases_with_budget(seed, gpn, layers, tied):
    cm = cost_model(seed, 1, gpn, layers, tied)
    tables = CostTables(cm)
    last = 0.0
    for gib in (0.5, 1, 1.5, 2, 3, 4, 6, 8, 12, 16):
        r, _ = run_search(tables, Options(memory_bytes=gib * GIB, global_batch=8))
        thr = 0.0 if r.spec is None else 8 / r.T
        assert thr >= last * (1 - 1e-12), (gib, thr, last)
        last = thr
    assert last > 0


@settings(max_examples=10, **SETTINGS)
@given(st.integers(0, 10 ** 6), st.sampled_from([4, 8]), st.integers(2, 6), st.booleans())
def test_plan_predictions_baselines_and_evaluate(seed, gpn, layers, tied):
    cm = cost_model(seed, 1, gpn, layers, tied)
    try:
        plan = search(cm, memory_gib=16)
    except InfeasibleError:
        return
    validate(plan, "plan", "plan")
    pred = plan["predictions"]
    # the breakdown sums to the iteration time; stage memory sums to its total
    assert math.isclose(sum(pred["breakdown"].values()), pred["iteration_time_s"], rel_tol=1e-9)
    for s in pred["stages"]:
        mem = s["memory_bytes_per_rank"]
        assert math.isclose(sum(v for k, v in mem.items() if k != "total"), mem["total"], rel_tol=1e-12)
        assert mem["total"] <= 16 * GIB
    assert math.isclose(pred["samples_per_s"], plan["global_batch"] / pred["iteration_time_s"], rel_tol=1e-12)
    # evaluate reproduces the prediction
    again = evaluate(plan, cm)
    assert again == pred
    # baselines: feasible ones fit and are no faster than the plan
    names = [b["name"] for b in plan["search"]["baselines"]]
    assert names == ["ddp", "zero3", "tp-node", "uniform-3d"]
    for b in plan["search"]["baselines"]:
        if b["feasible"]:
            assert b["memory_bytes_per_rank"] <= 16 * GIB
            assert b["samples_per_s"] <= pred["samples_per_s"] * (1 + 1e-9), b
        else:
            assert b["samples_per_s"] is None


def test_baseline_plans_are_feasible_and_in_the_space():
    from galvatron_search.document import baselines
    for seed in range(6):
        cm = cost_model(seed, 1, 8, 4, seed % 2 == 0)
        tables = CostTables(cm)
        opts = Options(memory_bytes=6 * GIB, global_batch=8)
        result, _ = run_search(tables, opts)
        for b in baselines(tables, opts):
            if not b["feasible"]:
                continue
            res = evaluate_spec(tables, b["_spec"], opts.memory_bytes, opts.buckets)
            assert res["fits"]
            assert result.spec is not None and result.T <= res["iteration_time_s"] * (1 + 1e-9)


def test_global_batch_range_maximises_samples_per_s():
    cm = cost_model(7, 1, 8, 4, False)
    tables = CostTables(cm)
    best = 0.0
    for B in (8, 16, 32):
        r, _ = run_search(tables, Options(memory_bytes=8 * GIB, global_batch=B))
        if r.spec is not None:
            best = max(best, B / r.T)
    r, _ = run_search(tables, Options(memory_bytes=8 * GIB, min_global_batch=8, max_global_batch=32))
    assert r.spec is not None and math.isclose(r.B / r.T, best, rel_tol=1e-9)


def test_restrictions_are_respected():
    cm = cost_model(11, 1, 8, 4, False, max_dec=3)
    try:
        plan = search(cm, memory_gib=16, global_batch=8, max_pp=1, max_tp=1, recompute=False, with_baselines=False)
    except InfeasibleError:
        return
    assert len(plan["stages"]) == 1
    assert all(s["tp"] == 1 and not s["recompute"] for s in plan["layers"])


def test_uniform_plans_use_one_strategy():
    for seed in range(5):
        cm = cost_model(seed, 1, 8, 4, False, max_dec=3)
        try:
            plan = search(cm, memory_gib=16, global_batch=8, uniform=True, with_baselines=False)
        except InfeasibleError:
            continue
        assert len({tuple(sorted(s.items())) for s in plan["layers"]}) == 1
        sizes = [s["layer_end"] - s["layer_start"] for s in plan["stages"]]
        assert sizes == even_split(4, len(sizes))


def test_infeasible_names_the_smallest_budget():
    cm = cost_model(3, 1, 4, 4, False)
    tables = CostTables(cm)
    try:
        search(cm, memory_gib=0.01, global_batch=8, with_baselines=False)
    except InfeasibleError as e:
        msg = str(e)
    else:
        raise AssertionError("expected InfeasibleError")
    assert "smallest budget" in msg
    need = float(msg.rsplit(" ", 2)[-2])
    margin = DEFAULT_MEMORY_MARGIN           # the API's default, which the named budget includes
    r, _ = run_search(tables, Options(memory_bytes=need * GIB, global_batch=8, memory_margin=margin))
    assert r.spec is not None
    r, _ = run_search(tables, Options(memory_bytes=need * GIB * 0.97, global_batch=8, memory_margin=margin))
    assert r.spec is None
    assert np.isfinite(need)


@settings(max_examples=10, **SETTINGS)
@given(instances(), st.sampled_from([0.05, 0.2]))
def test_memory_margin_keeps_its_share_of_the_budget_free(inst, margin):
    """A plan searched with a margin predicts at most (1 - margin) x the budget on every stage, and it is the
    plan the search finds without a margin under that smaller budget."""
    cm, gib, B, buckets = inst
    tables = CostTables(cm)
    kept, _ = run_search(tables, Options(memory_bytes=gib * GIB, global_batch=B, buckets=buckets,
                                         memory_margin=margin))
    exact, _ = run_search(tables, Options(memory_bytes=gib * GIB * (1 - margin), global_batch=B, buckets=buckets))
    assert (kept.spec is None) == (exact.spec is None)
    if kept.spec is not None:
        assert math.isclose(kept.T, exact.T, rel_tol=1e-12)
        stages = evaluate_spec(tables, kept.spec)["stages"]
        assert max(s["total"] for s in stages) <= gib * GIB * (1 - margin)


def test_zero1_is_in_the_space_and_chosen_where_it_is_best():
    """ZeRO-1 strategies are enumerated like the others: on some instances the brute-force optimum holds one, and
    the search finds that optimum (the instance is one of those test_search_equals_brute_force draws from)."""
    chosen = 0
    for seed in range(12):
        cm = cost_model(seed, 1, 8, 4, False, max_dec=3)
        best, spec, _ = brute_force(cm, 3 * GIB, 8)
        if spec is None:
            continue
        tables = CostTables(cm)
        kinds = tables.pipeline(spec.pp).kinds
        rows = [("decoder", r) for r in spec.dec] + [("embedding", spec.emb), ("head", spec.head)]
        if any(kinds[kind].entries[r]["dp_sharding"] == "zero1" for kind, r in rows):
            chosen += 1
            result, _ = run_search(tables, Options(memory_bytes=3 * GIB, global_batch=8))
            assert math.isclose(result.T, best, rel_tol=1e-9), (result.T, best, spec)
    assert chosen > 0
