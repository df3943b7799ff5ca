"""--explain on what the hardware profile did not measure: the plan's strategies and p2p that rest on extrapolated
fits are listed, and the plan is searched again at 0.5x and 2x their bandwidth.

References: the scaled cost model is written out here by hand (not with the package's at_bandwidth), and the
plan found in it is checked against synth.brute_force, the enumeration of every plan in the search's space."""
import copy
import json
import math
import random

from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from synth import brute_force, cost_model

from galvatron_contracts.documents import validate
from galvatron_search import search
from galvatron_search.api import robustness
from galvatron_search.cli import main
from galvatron_search.costs import CostTables
from galvatron_search.evaluate import evaluate_spec, plan_spec
from galvatron_search.explain import at_bandwidth

GIB = 2 ** 30
SCALARS = ("param_gather_forward_s", "param_gather_backward_s", "grad_reduce_per_microbatch_s", "grad_sync_s")


def flagged(cm: dict, seed: int, share: float = 0.5, comm_weight: float = 1.0) -> dict:
    """The cost model with a random `share` of its strategies and pipeline degrees flagged as extrapolated, and
    every communication term x `comm_weight` (synth's are small beside compute: heavier ones change plans)."""
    rng = random.Random(seed)
    cm = copy.deepcopy(cm)
    for pipe in cm["pipelines"]:
        if pipe["pp"] > 1 and rng.random() < share:
            pipe["extrapolated_p2p"] = True
        for lay in pipe["layouts"]:
            lay["p2p"]["per_sample_s"] *= comm_weight
        for s in pipe["strategies"]:
            if rng.random() < share:
                s["extrapolated"] = True
            t = s["time"]
            t["forward_comm"]["per_sample_s"] *= comm_weight
            t["backward_comm"]["per_sample_s"] *= comm_weight
            for key in SCALARS:
                t[key] *= comm_weight
    return validate(cm, "synthetic", "cost-model")


def by_hand(cm: dict, factor: float) -> dict:
    """The reference scaling: bandwidth x factor is time / factor, on the bandwidth part of each term."""
    out = copy.deepcopy(cm)
    for pipe in out["pipelines"]:
        for s in pipe["strategies"]:
            if s.get("extrapolated"):
                t = s["time"]
                t["forward_comm"]["per_sample_s"] /= factor
                t["backward_comm"]["per_sample_s"] /= factor
                for key in SCALARS:
                    t[key] /= factor
        if pipe.get("extrapolated_p2p"):
            for lay in pipe["layouts"]:
                lay["p2p"]["per_sample_s"] /= factor
    return out


def test_at_bandwidth_scales_the_flagged_terms_only_and_leaves_the_document():
    cm = flagged(cost_model(3, 2, 4, 4, False), 3)
    before = copy.deepcopy(cm)
    for factor in (0.5, 2.0):
        assert at_bandwidth(cm, factor) == by_hand(cm, factor)
    assert cm == before
    assert at_bandwidth(cm, 0.5) != cm                      # something was flagged


@st.composite
def instances(draw):
    layers = draw(st.integers(2, 4))
    nodes = draw(st.sampled_from([1, 2]))
    cm = flagged(cost_model(draw(st.integers(0, 10 ** 6)), nodes, 4, layers, draw(st.booleans()), max_dec=3),
                 draw(st.integers(0, 10 ** 6)), draw(st.sampled_from([0.3, 0.7, 1.0])), draw(st.sampled_from([1, 10])))
    return cm, draw(st.floats(4.0, 16.0)), draw(st.sampled_from([4, 8]))


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
@given(instances())
def test_the_plans_at_half_and_twice_the_bandwidth_are_the_optimum_there(inst):
    cm, gib, B = inst
    try:
        plan = search(cm, gib, global_batch=B, with_baselines=False)
    except Exception as e:                                   # no plan at this budget: nothing to explain
        assert type(e).__name__ == "InfeasibleError"
        return
    r = robustness(plan, cm)
    if not r.rests_on_extrapolation:
        assert r.at == []
        return
    assert [a.factor for a in r.at] == [0.5, 2.0]
    kept = 1.0 - plan["search"]["options"]["memory_margin"]      # the search, and its re-search, keep a margin free
    for a in r.at:
        best, _, _ = brute_force(by_hand(cm, a.factor), gib * GIB * kept, B)
        assert math.isclose(a.samples_per_s, B / best, rel_tol=1e-9), (a.factor, a.samples_per_s, B / best)
        # bandwidth only ever helps: less of it, no plan gets faster; more, none slower
        if a.factor < 1:
            assert a.samples_per_s <= r.samples_per_s * (1 + 1e-12)
            assert a.original_samples_per_s <= r.samples_per_s * (1 + 1e-12)
        else:
            assert a.samples_per_s >= r.samples_per_s * (1 - 1e-12)
            assert a.original_samples_per_s >= r.samples_per_s * (1 - 1e-12)
        assert a.samples_per_s >= a.original_samples_per_s * (1 - 1e-12)      # the optimum there


def test_comm_on_the_critical_path_moves_the_plan_strictly():
    """Every strategy and p2p flagged: a plan whose critical stage spends time in tensor-parallel communication
    or p2p runs strictly slower at 0.5x and strictly faster at 2x."""
    checked = 0
    for seed in range(8):
        cm = flagged(cost_model(seed, 2, 4, 4, False), seed, share=1.0)
        plan = search(cm, 8, global_batch=8, with_baselines=False)
        tables = CostTables(cm)
        res = evaluate_spec(tables, plan_spec(plan, tables))
        crit = res["stages"][res["critical_stage"]]
        if crit["comm"] + crit["p2p"] <= 0:
            continue
        r = robustness(plan, cm)
        slow, fast = r.at
        assert slow.original_samples_per_s < r.samples_per_s < fast.original_samples_per_s
        checked += 1
    assert checked >= 4


def test_the_listing_names_the_fits_of_the_plans_groups():
    """2 nodes x 4, one stage of tp 1: the dp group of 8 spans both nodes with 4 ranks on each, so of the
    cost model's extrapolated fits only the one of that shape is listed."""
    cm = cost_model(11, 2, 4, 2, False, max_dec=3)
    pipe = next(p for p in cm["pipelines"] if p["pp"] == 1)
    lay = {"id": "tp1", "tp": 1, "tp_layout": "consecutive", "sp": False, "dp": 8,
           "p2p": {"fixed_s": 0.0, "per_sample_s": 0.0}}
    pipe["layouts"], pipe["transitions"] = [lay], []
    for s in pipe["strategies"]:
        s["layout"], s["extrapolated"] = "tp1", True
    cm["pipelines"] = [pipe]
    entry = {"op": "all_reduce", "group_size": 8, "layout": "consecutive", "crosses_nodes": True, "alpha_s": 3e-5,
             "bandwidth_gbps": 20.0, "extrapolated": True, "method": "hierarchical model (test)", "nodes_spanned": 2,
             "ranks_per_node": 4, "groups_per_node": 1}
    other = dict(entry, group_size=4, ranks_per_node=2, method="another shape")
    measured = dict(entry, extrapolated=False, method="probed")
    cm["fits"]["collectives"] = [other, measured, entry]
    validate(cm, "synthetic", "cost-model")
    plan = search(cm, 64, global_batch=8, with_baselines=False)
    r = robustness(plan, cm)
    assert r.strategies and all(s["fits"] == [2] for s in r.strategies)
    assert r.p2p is None
    text = CliRunner().invoke(main, ["--memory", "64", "-", "--global-batch", "8", "--no-baselines", "--explain"],
                              input=json.dumps(cm)).stderr
    assert "fits.collectives[2]: all_reduce of 8, consecutive, 2 nodes x 4 per node: 20 GB/s" in text
    assert "hierarchical model (test)" in text and "another shape" not in text and "probed" not in text


def _run(args, stdin):
    r = CliRunner().invoke(main, args, input=stdin, catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return r


def test_explain_prints_the_flagged_parts_and_both_searches(tmp_path):
    cm = flagged(cost_model(5, 2, 4, 4, False), 5, share=1.0)
    out = tmp_path / "plan.json"
    r = _run(["--memory", "8", "-", "--global-batch", "8", "--no-baselines", "--explain", "-o", str(out)],
             json.dumps(cm))
    plan = json.loads(out.read_text())
    rob = robustness(plan, cm)
    lines = r.stderr.splitlines()
    assert any(line.startswith("extrapolated: the plan rests on fits the hardware profile did not measure")
               for line in lines)
    for s in rob.strategies:
        assert any(line.startswith(f"  {s['id']}") for line in lines), s["id"]
    assert any(line.startswith("  p2p between stages") for line in lines) == (len(plan["stages"]) > 1)
    for a in rob.at:
        line = next(line for line in lines if line.startswith(f"at {a.factor:g}x the extrapolated bandwidth"))
        assert f"this plan {a.original_samples_per_s:.4g} samples/s" in line
        assert ("the search keeps it" in line) == a.same_plan
        if not a.same_plan:
            assert a.summary in line and f"{a.samples_per_s:.4g} samples/s" in line
    # evaluate --explain: the plan at both bandwidths, no search
    cm_path = tmp_path / "cm.json"
    cm_path.write_text(json.dumps(cm))
    r = _run(["evaluate", str(out), str(cm_path), "--explain"], None)
    at = [line for line in r.stderr.splitlines() if line.startswith("at ")]
    assert len(at) == 2 and not any("the search" in line for line in at)


def test_a_plan_on_measured_fits_only_says_so_in_one_line():
    cm = cost_model(5, 2, 4, 4, False)                        # nothing flagged
    r = _run(["--memory", "8", "-", "--global-batch", "8", "--no-baselines", "--explain"], json.dumps(cm))
    lines = [line for line in r.stderr.splitlines() if line.startswith(("extrapolated", "at ", "  fits", "scaled"))]
    assert lines == ["extrapolated: none of the plan's strategies or p2p rests on an extrapolated fit (the cost "
                     "model flags 0 strategies elsewhere)"]
