"""The optimizer step as a model profile 1.2 times it: fixed_s once per step, and per layer strategy the seconds per
tensor and per parameter of the layer's holding: plain tensors (tp 1 ddp) or DTensors (tp > 1, or sharded by FSDP2:
zero1 / zero2 / zero3). A 1.0 / 1.1 profile (per_param_s only) prices every layer as before."""
import copy

import pytest
import synthetic

from galvatron_contracts.documents import validate
from galvatron_contracts.models import PRESETS
from galvatron_cost import calibrate, fit

SPEC = PRESETS["tiny-gpt"]            # gpt2, hidden 64, ffn 256, vocab 256, max_seq 64: every dim 0 divides by 4
TENSORS = {"decoder": 16, "embedding": 2}     # by hand: 2 norms x (w, b), q k v o fc proj x (w, b); tok, pos
HEAD_TENSORS = 2                              # the final norm's w, b (the tied table is the embedding's)
PLAIN = {"fixed_s": 1e-3, "per_tensor_s": 2e-5, "per_param_s": 3e-9}
DTENSOR = {"fixed_s": 4e-4, "per_tensor_s": 2e-4, "per_param_s": 5e-9}


def profile(plain=PLAIN, dtensor=DTENSOR):
    mp = synthetic.model_profile(SPEC, tp_degrees=(1, 2, 4), optimizer=True)
    o = mp["optimizer_step"]
    o.update(plain)
    o["dtensor"] = dict(dtensor)
    for e in mp["layers"]:        # as galvatron-probe reads them off galvatron_models' modules
        e["param_tensors"] = TENSORS.get(e["layer"], HEAD_TENSORS)
    return mp


def strategies(cm, pp=1):
    pipe = next(p for p in cm["pipelines"] if p["pp"] == pp)
    layouts = {lay["id"]: lay for lay in pipe["layouts"]}
    return [(s, layouts[s["layout"]]) for s in pipe["strategies"]]


def expected(layer, tp, dp, sharding, plain, dtensor):
    """The layer's optimizer seconds from hand counts: every tensor of the shard, its parameters (1/dp of them
    under FSDP2: no padding at these sizes), priced at its holding's numbers."""
    params = synthetic.shard_params(SPEC, layer, tp)[0] / (1 if sharding == "ddp" else dp)
    numbers = plain if tp == 1 and sharding == "ddp" else dtensor
    return numbers["per_tensor_s"] * TENSORS[layer] + numbers["per_param_s"] * params


def test_each_strategy_pays_its_holdings_per_tensor_and_per_parameter_cost():
    mp = profile()
    validate(mp, "profile")
    cm = fit(synthetic.hardware_profile(1, 4), mp)
    assert (cm["optimizer_step"]["fixed_s"], cm["optimizer_step"]["per_param_s"]) == (PLAIN["fixed_s"],
                                                                                       PLAIN["per_param_s"])
    seen = set()
    for s, lay in strategies(cm):
        if s["layer"] not in TENSORS:
            continue
        want = expected(s["layer"], lay["tp"], lay["dp"], s["dp_sharding"], PLAIN, DTENSOR)
        assert s["time"]["optimizer_step_s"] == pytest.approx(want, rel=1e-12), s["id"]
        seen.add((lay["tp"], s["dp_sharding"]))
    assert {(1, "ddp"), (1, "zero2"), (1, "zero3"), (2, "ddp"), (4, "ddp")} <= seen
    # pp 2: the last stage's head also holds its copy of the tied table (one more tensor, V/t x h parameters)
    heads = [s for s, lay in strategies(cm, pp=2)
             if s["layer"] == "head" and lay["tp"] == 1 and s["dp_sharding"] == "ddp"]
    params = synthetic.shard_params(SPEC, "head", 1)[0] + SPEC["vocab_size"] * SPEC["hidden"]
    want = PLAIN["per_tensor_s"] * (HEAD_TENSORS + 1) + PLAIN["per_param_s"] * params
    assert heads and all(s["time"]["optimizer_step_s"] == pytest.approx(want, rel=1e-12) for s in heads)


def test_a_profile_without_per_tensor_or_dtensor_numbers_prices_as_before():
    """1.1: the one per_param_s, whatever the holding, and a note saying so."""
    mp = profile()
    for key in ("per_tensor_s", "dtensor"):
        del mp["optimizer_step"][key]
    for e in mp["layers"]:
        del e["param_tensors"]
    mp["schema_version"] = "1.1"
    validate(mp, "profile")
    cm = fit(synthetic.hardware_profile(1, 4), mp)
    for s, lay in strategies(cm):
        if s["layer"] in TENSORS:
            params = synthetic.shard_params(SPEC, s["layer"], lay["tp"])[0] / (1 if s["dp_sharding"] == "ddp"
                                                                               else lay["dp"])
            assert s["time"]["optimizer_step_s"] == pytest.approx(PLAIN["per_param_s"] * params, rel=1e-12)
    assert any("plain tensors only" in n for n in cm["notes"])


def test_calibration_scales_every_strategy_keeping_its_per_tensor_share():
    """Runs that measured twice the variable part of the step (fixed as predicted) double every strategy's
    optimizer_step_s, the per-tensor part included, and leave fixed_s."""
    import test_calibrate as tc

    model = fit(synthetic.hardware_profile(1, 4), profile())
    twice = {k: 2 * v if k != "fixed_s" else v for k, v in PLAIN.items()}
    truth = fit(synthetic.hardware_profile(1, 4),
                profile(twice, {k: 2 * v for k, v in DTENSOR.items()}))
    runs = [tc.report(truth, p, name=name) for name, p in tc.plans().items()]
    out = calibrate(copy.deepcopy(model), runs)
    assert out["optimizer_step"]["fixed_s"] == pytest.approx(PLAIN["fixed_s"], rel=1e-6)
    assert out["optimizer_step"]["per_param_s"] == pytest.approx(2 * PLAIN["per_param_s"], rel=1e-6)
    for (s, _), (t, _) in zip(strategies(out), strategies(truth), strict=True):
        assert s["time"]["optimizer_step_s"] == pytest.approx(t["time"]["optimizer_step_s"], rel=1e-6), s["id"]
    same = calibrate(copy.deepcopy(model), [tc.report(model, p, name=n) for n, p in tc.plans().items()])
    assert [s["time"]["optimizer_step_s"] for s, _ in strategies(same)] == \
        [s["time"]["optimizer_step_s"] for s, _ in strategies(model)]
