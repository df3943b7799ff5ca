"""A model profile 1.2's sequence_parallel_timings price the sp strategies of their TP degree (the runtime's DTensor
layer redistributes a sequence-split activation, at a per-op cost the plain layer does not pay); the strategies
without sp, and sp at a degree the profile did not time that way, keep the plain timings."""
import copy

import pytest
import synthetic

from galvatron_contracts.documents import validate
from galvatron_contracts.models import PRESETS
from galvatron_cost import fit

SPEC = PRESETS["tiny-gpt"]
SLOWER = 3.0      # the sp timings: this many times the plain ones


def profile(sp_degrees=(2,)):
    mp = synthetic.model_profile(SPEC, tp_degrees=(1, 2, 4))
    for e in mp["layers"]:
        if e["tp"] in sp_degrees:
            timings = copy.deepcopy(e["timings"])
            for row in timings:
                for phase in ("forward", "backward", "backward_recompute"):
                    row[phase] = {k: v * SLOWER if k.endswith("_s") else v for k, v in row[phase].items()}
            e["sequence_parallel_timings"] = timings
    mp["schema_version"] = "1.2"
    validate(mp, "profile")
    return mp


def compute_times(cm):
    """{(layer, tp, sp, recompute, sharding): (forward, backward) lin} of pp 1, dp = world / tp."""
    pipe = next(p for p in cm["pipelines"] if p["pp"] == 1)
    layouts = {lay["id"]: lay for lay in pipe["layouts"]}
    out = {}
    for s in pipe["strategies"]:
        lay = layouts[s["layout"]]
        key = (s["layer"], lay["tp"], lay["sp"], s["recompute"], s["dp_sharding"], lay["tp_layout"])
        out[key] = (s["time"]["forward"], s["time"]["backward"])
    return out


def test_sp_strategies_take_the_sequence_parallel_timings_of_their_degree():
    hw = synthetic.hardware_profile(1, 4)
    plain, timed = compute_times(fit(hw, profile(sp_degrees=()))), compute_times(fit(hw, profile()))
    assert plain.keys() == timed.keys()
    checked = {"sp tp2": 0, "other": 0}
    for key, (fwd, bwd) in timed.items():
        layer, tp, sp, *_ = key
        factor = SLOWER if (sp and tp == 2) else 1.0
        for got, base in ((fwd, plain[key][0]), (bwd, plain[key][1])):
            assert got["fixed_s"] == pytest.approx(base["fixed_s"] * factor, rel=1e-6), key
            assert got["per_sample_s"] == pytest.approx(base["per_sample_s"] * factor, rel=1e-6), key
        checked["sp tp2" if factor != 1.0 else "other"] += 1
    assert checked["sp tp2"] > 0 and checked["other"] > 0
    assert any(sp and tp == 4 for _, tp, sp, *_ in timed)     # sp at tp 4 (not timed with sp) stayed plain
