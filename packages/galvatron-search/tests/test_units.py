"""Closed-form checks of the composition pieces."""
import math

import numpy as np
from synth import cost_model

from galvatron_contracts.documents import validate
from galvatron_contracts.pipeline import even_split
from galvatron_contracts.ranks import rank_groups, stage_ranks
from galvatron_search.costs import CostTables, overlap, units
from galvatron_search.document import plan_body
from galvatron_search.evaluate import Spec


def test_overlap_closed_forms():
    assert overlap(3.0, 0.0, 1.2, 1.3) == 3.0                      # nothing to overlap
    assert overlap(3.0, 2.0, 1.0, 1.0) == 3.0                      # ideal overlap: max
    assert overlap(1.0, 2.0, 1.0, 1.0) == 2.0
    # comm 1 s slowed 1.5x ends at 1.5 s; compute did 1.5/1.25 = 1.2 s of 4, 2.8 s left
    assert math.isclose(overlap(4.0, 1.0, 1.25, 1.5), 1.5 + 2.8)
    # compute 1 s slowed 2x ends at 2 s; comm did 2/1.25 = 1.6 s of 5, 3.4 s left
    assert math.isclose(overlap(1.0, 5.0, 2.0, 1.25), 2.0 + 3.4)
    c, k = np.linspace(0, 5, 51), 2.0
    v = overlap(c, k, 1.1, 1.2)
    assert np.all(np.diff(v) >= 0) and np.all(v >= np.maximum(c, k) - 1e-12) and np.all(v <= c + k * 1.2 + 1e-12)


def test_units_round_up():
    assert units(100.0, 10, 1000.0) == 1
    assert units(101.0, 10, 1000.0) == 2
    assert units(0.0, 10, 1000.0) == 0


def test_plan_stages_and_groups_follow_the_rank_convention():
    """Every decoder strategy of every pipeline degree, written out as a plan: ranks and groups as the contracts'
    convention says (strided layouts included)."""
    checked = 0
    for seed in range(8):
        tables = CostTables(cost_model(seed, 2, 4, 4, False, max_dec=3))
        for pp, pipe in tables.pipes.items():
            bounds = [0, *np.cumsum(even_split(tables.layers, pp)).tolist()]
            for row in range(len(pipe.kinds["decoder"])):
                spec = Spec(pp=pp, b=8, m=8, schedule="gpipe", bounds=bounds, dec=[row] * tables.layers, emb=0,
                            head=0)
                plan = validate(plan_body(tables, spec), "plan", "plan")    # the contracts' plan checks too
                for k, st in enumerate(plan["stages"]):
                    assert st["ranks"] == stage_ranks(8, pp, k)
                    for lay in st["layouts"]:
                        assert (lay["tp_groups"], lay["dp_groups"]) == rank_groups(st["ranks"], lay["tp"],
                                                                                   lay["tp_layout"])
                checked += any(lay["tp_layout"] == "strided" for st in plan["stages"] for lay in st["layouts"])
    assert checked > 0


def _without_optimizer(cm):
    import copy

    cm = copy.deepcopy(cm)
    cm.pop("optimizer_step", None)
    for pipe in cm["pipelines"]:
        for s in pipe["strategies"]:
            s["time"].pop("optimizer_step_s", None)
    return cm


def test_optimizer_step_once_per_iteration_on_each_stage():
    """c_i = K t_i + x_i + fixed_s + the stage's layers' optimizer_step_s; documents without them count 0."""
    from synth import cost_model

    from galvatron_search.costs import CostTables
    from galvatron_search.evaluate import Spec, evaluate_spec, predictions

    cm = next(c for c in (cost_model(seed, 1, 4, 4) for seed in range(50))
              if "optimizer_step" in c and any(p["pp"] == 2 for p in c["pipelines"]))
    with_opt, without = CostTables(cm), CostTables(_without_optimizer(cm))
    pipe = with_opt.pipeline(2)
    spec = Spec(pp=2, b=4, m=4, schedule="1f1b", bounds=[0, 1, 4], dec=[0] * 4, emb=0, head=0)
    a, z = evaluate_spec(with_opt, spec), evaluate_spec(without, spec)
    fixed = cm["optimizer_step"]["fixed_s"]
    row = {kind: pipe.kinds[kind].entries[0]["time"]["optimizer_step_s"] for kind in ("decoder", "embedding", "head")}
    assert row["decoder"] > 0 and fixed > 0
    expected = [fixed + row["embedding"] + row["decoder"], fixed + 3 * row["decoder"] + row["head"]]
    for i in (0, 1):
        assert math.isclose(a["stages"][i]["c"] - z["stages"][i]["c"], expected[i], rel_tol=1e-12)
        assert math.isclose(a["stages"][i]["opt"], expected[i], rel_tol=1e-12)
        assert z["stages"][i]["opt"] == 0.0
    pa, pz = predictions(with_opt, spec, a), predictions(without, spec, z)
    assert math.isclose(pa["breakdown"]["optimizer_step_s"], expected[a["critical_stage"]], rel_tol=1e-12)
    assert pz["breakdown"]["optimizer_step_s"] == 0.0
    for p in (pa, pz):
        assert math.isclose(sum(p["breakdown"].values()), p["iteration_time_s"], rel_tol=1e-12)
