"""galvatron-cost calibrate: run-reports of the cluster refine the terms they measure, and only those.

Reports are synthesised here from a cost model taken as the truth: each layer's compute is what that model's
strategy predicts at the report's micro-batch size, each collective is timed by the synthetic two-level machine
(synthetic.true_collective_time) for the group the test derives by hand from the rank convention, the optimizer
step and the remainder are what the truth predicts. The properties: calibrating on reports of the model itself
changes no number (idempotence); calibrating on reports of a machine whose compute is 1.3x slower and whose
all_reduce is 2x slower recovers the model fitted on that machine's profiles within 1% and leaves every term the
reports did not measure as it was (recovery).
"""
import copy
import json

import numpy as np
import pytest
import synthetic
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from galvatron_contracts.documents import CURRENT_VERSION, DocumentError, digest, schema_errors, validate
from galvatron_contracts.models import PRESETS
from galvatron_cost import calibrate, fit
from galvatron_cost.calibrate import CollectiveFits, Term, _comm_numbers, _Repricer
from galvatron_cost.cli import main

SPEC = PRESETS["tiny-gpt"]          # 4 layers, hidden 64, 4 heads, tied embeddings
SEQ, NODES, GPN = 32, 1, 4
WORLD = NODES * GPN
SLOW_COMPUTE, SLOW_ALL_REDUCE = 1.3, 2.0
SYNC_SHARE = 0.6          # of the step overhead: the closing loss all-reduce and barrier


def _profiles(compute=1.0, all_reduce=1.0):
    hw = synthetic.hardware_profile(NODES, GPN)
    for c in hw["collectives"]:
        if c["op"] == "all_reduce":
            for p in c["points"]:
                p["time"] = {k: v * all_reduce if k.endswith("_s") else v for k, v in p["time"].items()}
    mp = synthetic.model_profile(SPEC, tp_degrees=(1, 2, 4), optimizer=True)
    for layer in mp["layers"]:
        for row in layer["timings"]:
            for phase in ("forward", "backward", "backward_recompute"):
                row[phase] = {k: v * compute if k.endswith("_s") else v for k, v in row[phase].items()}
    return hw, mp


@pytest.fixture(scope="module")
def model():
    return fit(*_profiles())


@pytest.fixture(scope="module")
def slow():
    return fit(*_profiles(SLOW_COMPUTE, SLOW_ALL_REDUCE))


# --- synthetic run-reports -------------------------------------------------------------------------------------

def S(tp=1, dp=None, layout="consecutive", sp=False, sharding="ddp", rc=False, stage=WORLD):
    return {"tp": tp, "tp_layout": layout, "sp": sp, "dp": dp or stage // tp, "dp_sharding": sharding,
            "recompute": rc}


def plan(pp, b, m, decoders, emb, head):
    """(pp, b, m, units by stage): units are (unit, kind, strategy)."""
    per = SPEC["layers"] // pp
    stages = []
    for k in range(pp):
        units = [("embedding", "embedding", emb)] if k == 0 else []
        units += [(f"layers[{i}]", "decoder", decoders[i]) for i in range(k * per, (k + 1) * per)]
        units += [("head", "head", head)] if k == pp - 1 else []
        stages.append(units)
    return {"pp": pp, "b": b, "m": m, "stages": stages}


def _strategy(cm, pp, kind, s):
    pipe = next(p for p in cm["pipelines"] if p["pp"] == pp)
    layout = next(lay["id"] for lay in pipe["layouts"]
                  if (lay["tp"], lay["sp"], lay["dp"]) == (s["tp"], s["sp"], s["dp"])
                  and (lay["tp_layout"] == s["tp_layout"] or s["tp"] in (1, WORLD // pp)))
    return next(x for x in pipe["strategies"] if (x["layer"], x["layout"], x["dp_sharding"], x["recompute"])
                == (kind, layout, s["dp_sharding"], s["recompute"]))


def _lin(lin, b):
    return lin["fixed_s"] + lin["per_sample_s"] * b


def _groups(j, S_, s, which):
    """The local ranks of j's tp or dp group, by the rank convention written out (consecutive: tp_rank = j % tp)."""
    tp, dp = s["tp"], s["dp"]
    if s["tp_layout"] == "consecutive" or tp in (1, S_):
        tp_rank, dp_rank = j % tp, j // tp
        return [dp_rank * tp + t for t in range(tp)] if which == "tp" else [d * tp + tp_rank for d in range(dp)]
    tp_rank, dp_rank = j // dp, j % dp
    return [t * dp + dp_rank for t in range(tp)] if which == "tp" else [tp_rank * dp + d for d in range(dp)]


def _time(op, n, message_bytes, all_reduce):
    """The synthetic machine, one node: alpha + M * wire / bandwidth (all_reduce slowed by `all_reduce`)."""
    t = synthetic.true_collective_time(op, n, 1, n, 1, message_bytes)
    return t * (all_reduce if op == "all_reduce" else 1.0)


def _collectives(units, b, m, S_, all_reduce):
    """What a rank issues: Megatron-style tp collectives per micro-batch, dp gradient all-reduce (ddp) or
    reduce-scatter + all-gather per micro-batch (zero2), and the loss and gradient-norm all-reduces (world)."""
    e, h = 4, SPEC["hidden"]
    calls = {}

    def issue(op, group, n, count, nbytes):
        c = calls.setdefault((op, group, n), [0, 0, 0.0])
        c[0] += count
        c[1] += count * nbytes
        c[2] += count * _time(op, n, nbytes, all_reduce)

    for _, kind, s, params in units:
        msg = int(b / s["dp"] * SEQ * h * e)
        if s["tp"] > 1:
            per_mb = 4 if kind == "decoder" else 2
            for op in (("all_gather", "reduce_scatter") if s["sp"] else ("all_reduce",)):
                issue(op, "tp", s["tp"], per_mb * m, msg)
        if s["dp"] > 1 and params:
            if s["dp_sharding"] == "ddp":
                issue("all_reduce", "dp", s["dp"], 1, int(4 * params))
            else:
                issue("reduce_scatter", "dp", s["dp"], m, int(4 * params * s["dp"]))
                issue("all_gather", "dp", s["dp"], m, int(4 * params * s["dp"]))
    issue("all_reduce", "world", WORLD, 1, 4)
    issue("all_reduce", "world", WORLD, 1, 8)
    issue("send", "pp", 2, m, 1024)
    return [{"op": op, "group": g, "group_size": n, "calls": c, "bytes": nb, "time_s": t}
            for (op, g, n), (c, nb, t) in calls.items()]


def report(truth, p, all_reduce=1.0, name="synthetic"):
    """A run-report 1.2 of plan `p` measured on the machine `truth` prices (see the module docstring)."""
    pp, b, m = p["pp"], p["b"], p["m"]
    S_ = WORLD // pp
    ranks, memory = [], []
    opt_fixed = truth["optimizer_step"]["fixed_s"]
    for k, units in enumerate(p["stages"]):
        priced = [(u, kind, s, _strategy(truth, pp, kind, s)) for u, kind, s in units]
        layers = []
        for u, kind, s, x in priced:
            back = m * _lin(x["time"]["backward"], b)
            share = 0.3 if s["recompute"] else 0.0          # the runtime splits the recomputed forward out
            layers.append({"unit": u, "kind": kind, "strategy": s, "micro_batches": m, "micro_batch_size": b,
                           "forward_s": m * _lin(x["time"]["forward"], b), "backward_s": back * (1 - share),
                           "recompute_s": back * share, "communication_s": 0.0})
        params = [(u, kind, s, x["time"]["optimizer_step_s"] / truth["optimizer_step"]["per_param_s"])
                  for u, kind, s, x in priced]
        optimizer = opt_fixed + sum(x["time"]["optimizer_step_s"] for *_, x in priced)
        collectives = _collectives(params, b, m, S_, all_reduce)

        def spent(*keys, collectives=collectives):
            return sum(c["time_s"] for c in collectives if (c["op"], c["group"]) in keys)

        for j in range(S_):
            rank = k * S_ + j
            wait = 1e-3 * (rank % 3)        # the ranks that wait for the slowest: their step_sync_s holds it
            comps = {"forward_compute_s": sum(la["forward_s"] for la in layers),
                     "backward_compute_s": sum(la["backward_s"] for la in layers),
                     "recompute_s": sum(la["recompute_s"] for la in layers),
                     "tp_communication_s": spent(("all_reduce", "tp"), ("all_gather", "tp"), ("reduce_scatter", "tp")),
                     "zero_communication_s": spent(("all_gather", "dp"), ("reduce_scatter", "dp")),
                     "layout_transitions_s": 0.0, "pipeline_p2p_s": spent(("send", "pp")), "pipeline_idle_s": 0.0,
                     "grad_sync_s": spent(("all_reduce", "dp")), "optimizer_step_s": optimizer,
                     "step_sync_s": SYNC_SHARE * truth["step_overhead_s"] + wait,
                     "other_s": (1 - SYNC_SHARE) * truth["step_overhead_s"]}
            ranks.append({"rank": rank, "stage": k, "step_s": sum(comps.values()), "components": comps,
                          "layers": layers, "collectives": collectives})
            memory.append({"rank": rank, "stage": k, "peak_bytes": 1 << 20,
                           "accounting": {"param_bytes": 1, "grad_bytes": 1, "optimizer_bytes": 1,
                                          "activation_bytes": 1}})
    step = max(r["step_s"] for r in ranks)
    cl = truth["cluster"]
    return {
        "kind": "run-report", "schema_version": "1.2", "producer": {"name": "tests", "version": "0"},
        "plan": {"sha256": digest([name, p["pp"], p["b"], p["m"]]), "summary": name, "model_name": SPEC["name"]},
        "environment": {"torch_version": "0", "python_version": "3", "backend": cl["backend"], "world_size": WORLD,
                        "nodes": NODES, "device": {"type": "cpu", "name": f"{cl['device']['name']} (2 cores)"}},
        "settings": {"steps": 3, "warmup_steps": 1, "dtype": "fp32", "seq_len": SEQ, "global_batch": b * m,
                     "micro_batches": m, "data": {"kind": "random"}},
        "steps": [{"step": i, "loss": 5.0, "time_s": step, "tokens": b * m * SEQ} for i in range(3)],
        "throughput": {"measured_steps": 2, "iteration_time_s": step, "samples_per_s": b * m / step,
                       "tokens_per_s": b * m * SEQ / step, "achieved_tflops": 0.0, "mfu": None},
        "memory": {"method": "synthetic", "ranks": memory},
        "breakdown": {"method": "synthetic", "profiled_step": 1, "ranks": ranks},
    }


def plans():
    """Plans covering tp 1/2/4, sp, strided tp, recompute, zero2 and pp 2, at several micro-batch sizes."""
    dp4, dp2 = S(), S(stage=2)
    return {
        "ddp b4": plan(1, 4, 2, [dp4] * 4, dp4, dp4),
        "ddp b8": plan(1, 8, 1, [dp4] * 4, dp4, dp4),
        "tp2 b2": plan(1, 2, 2, [S(2)] * 4, S(2), S(2)),
        "tp2 strided b4": plan(1, 4, 2, [S(2, layout="strided")] * 4, S(2), S(2)),
        "tp4 sp b1": plan(1, 1, 4, [S(4, sp=True)] * 4, S(4), S(4)),
        "pp2 rc zero2 b2": plan(2, 2, 4, [S(stage=2, rc=True, sharding="zero2")] * 4, dp2, dp2),
    }


def reports(truth, all_reduce=1.0):
    return [report(truth, p, all_reduce, name) for name, p in plans().items()]


# --- the uncalibrated step overhead ----------------------------------------------------------------------------

@pytest.mark.parametrize("gpn", [1, 2, 4])
def test_step_overhead_is_four_world_all_reduce_latencies(gpn):
    """Two barriers and the loss and gradient-norm all-reduces over all ranks: 4 ring latencies of the world
    group (2(n-1) steps of a_intra each) and 12 bytes on the wire; nothing on one rank."""
    doc = fit(synthetic.hardware_profile(1, gpn) if gpn > 1 else synthetic.hardware_profile(1, 2),
              synthetic.model_profile(SPEC), gpus_per_node=gpn)
    L = synthetic.LINKS
    want = 0.0 if gpn == 1 else 4 * 2 * (gpn - 1) * L["a_intra"] + 2 * (gpn - 1) / gpn * 12 / L["bw_intra"]
    assert doc["step_overhead_s"] == pytest.approx(want, rel=1e-6, abs=1e-15)


# --- the properties --------------------------------------------------------------------------------------------

TIME_KEYS = ("forward", "backward", "forward_comm", "backward_comm", "param_gather_forward_s",
             "param_gather_backward_s", "grad_reduce_per_microbatch_s", "grad_sync_s", "optimizer_step_s")


def _numbers(cm):
    """Every time of the document that calibration may touch, by name."""
    out = {"step_overhead_s": cm["step_overhead_s"], "optimizer_step": (cm["optimizer_step"]["fixed_s"],
                                                                          cm["optimizer_step"]["per_param_s"])}
    for i, c in enumerate(cm["fits"]["collectives"]):
        out[("fit", i)] = (c["alpha_s"], c["bandwidth_gbps"])
    for pipe in cm["pipelines"]:
        for s in pipe["strategies"]:
            for k in TIME_KEYS:
                v = s["time"][k]
                out[(pipe["pp"], s["id"], k)] = (v["fixed_s"], v["per_sample_s"]) if isinstance(v, dict) else v
        for t in pipe["transitions"]:
            for k in ("forward", "backward"):
                out[(pipe["pp"], t["from"], t["to"], k)] = (t[k]["fixed_s"], t[k]["per_sample_s"])
    return out


def test_reports_that_measured_the_prediction_change_nothing(model):
    out = calibrate(model, reports(model), names=list(plans()))
    assert _numbers(out) == _numbers(model)
    assert out["pipelines"] == model["pipelines"] and out["fits"] == model["fits"]
    terms = out["calibration"]["terms"]
    assert terms and all(t["before"] == t["after"] for t in terms)
    assert [r["path"] for r in out["calibration"]["reports"]] == list(plans())
    assert schema_errors(out, "cost-model", CURRENT_VERSION["cost-model"]) == []
    validate(out, "calibrated", "cost-model")


def _compute_key(cm, pp, s):
    lay = next(lay for lay in next(p for p in cm["pipelines"] if p["pp"] == pp)["layouts"] if lay["id"] == s["layout"])
    return s["layer"], lay["tp"], lay["sp"], s["recompute"]


def _measured_compute(cal):
    keys = set()
    for t in cal["calibration"]["terms"]:
        if t["term"].startswith("compute "):
            _, kind, layout, *rest = t["term"].split()
            tp, sp = int(layout.removeprefix("tp").removesuffix("+sp")), layout.endswith("+sp")
            keys.add((kind, tp, sp, "rc" in rest))
    return keys


def test_recovers_slower_compute_and_all_reduce_and_leaves_the_rest(model, slow):
    out = calibrate(model, reports(slow, SLOW_ALL_REDUCE))
    measured = _measured_compute(out)
    assert ("decoder", 1, False, False) in measured and ("decoder", 4, True, False) in measured
    assert ("decoder", 2, True, False) not in measured          # no plan ran it
    fitted, truth, got = _numbers(model), _numbers(slow), _numbers(out)
    refined_fits = {i for i, c in enumerate(out["fits"]["collectives"]) if "calibrated" in c.get("method", "")}
    assert {model["fits"]["collectives"][i]["op"] for i in refined_fits} == {"all_reduce"}
    checked = 0
    for key, value in fitted.items():
        if key[0] == "fit":
            expect = truth[key] if key[1] in refined_fits else value
        elif len(key) == 3 and key[2] in ("forward", "backward"):
            s = next(x for p in model["pipelines"] if p["pp"] == key[0] for x in p["strategies"] if x["id"] == key[1])
            expect = truth[key] if _compute_key(model, key[0], s) in measured else value
        else:       # communication, transitions, optimizer step, step overhead: what the slow machine predicts
            expect = truth[key]
        assert got[key] == pytest.approx(expect, rel=0.01, abs=1e-15), key
        if expect == value:
            assert got[key] == value, key                    # unmeasured or unchanged: untouched, exactly
        checked += expect != value
    assert checked > 100                                     # the test saw the slow machine's numbers


def test_calibrating_twice_on_the_same_reports_changes_nothing_more(model, slow):
    runs = reports(slow, SLOW_ALL_REDUCE)
    once = calibrate(model, runs)
    twice = calibrate(once, runs)
    for key, value in _numbers(once).items():
        assert _numbers(twice)[key] == pytest.approx(value, rel=1e-6, abs=1e-15), key
    assert len(twice["calibration"]["reports"]) == 2 * len(runs)


def test_repricing_with_the_documents_own_fits_reproduces_it(model):
    """The Builder's formulas run over the document's fits give back every communication number it holds: the
    repricing is faithful to the cost model (and breaks loudly if the Builder changes under it)."""
    fits = CollectiveFits(model["fits"]["collectives"])
    repricer = _Repricer(model, fits, {})
    for pipe in model["pipelines"]:
        again = _comm_numbers(repricer.pipeline(pipe["pp"])[0])
        have = _comm_numbers(pipe)
        assert set(again) == set(have)
        for key, value in have.items():
            assert again[key] == pytest.approx(value, rel=1e-9, abs=1e-18), key


# --- refinement of one term ------------------------------------------------------------------------------------

@settings(max_examples=40, deadline=None, derandomize=True)
@given(st.floats(1e-6, 1e-2), st.floats(1e-9, 1e-4), st.floats(0.2, 5.0), st.floats(0.2, 5.0),
       st.lists(st.integers(1, 64), min_size=1, max_size=6))
def test_term_recovers_both_numbers_from_two_sizes_and_a_ratio_from_one(a, b, ka, kb, sizes):
    term = Term("t", (a, b))
    for s in sizes:
        term.add(2, 2 * s, 2 * (ka * a + kb * b * s))
    term.refine()
    if len(set(sizes)) > 1 and kb * b * max(sizes) >= 0.05 * (ka * a + kb * b * max(sizes)):
        assert term.after == pytest.approx((ka * a, kb * b), rel=1e-6)
    else:      # one size (or a size term too small to tell): measured / predicted on both numbers
        k = sum(ka * a + kb * b * s for s in sizes) / sum(a + b * s for s in sizes)
        assert term.after == pytest.approx((k * a, k * b), rel=1e-6)


def test_constant_term_is_the_mean_and_exact_points_keep_the_numbers():
    t = Term("step_overhead_s", (0.0, 0.0), constant=True)
    for y in (1e-3, 2e-3, 3e-3):
        t.add(1, 0, y)
    t.refine()
    assert t.after == pytest.approx((2e-3, 0.0))
    same = Term("t", (1e-4, 1e-6))
    for s in (1, 4):
        same.add(1, s, 1e-4 + 1e-6 * s)
    same.refine()
    assert same.after == same.before and not same.changed


# --- the command line ------------------------------------------------------------------------------------------

def _write(tmp_path, name, doc):
    path = tmp_path / name
    path.write_text(json.dumps(doc))
    return str(path)


def test_cli_writes_the_calibrated_model(tmp_path, model, slow):
    cm = _write(tmp_path, "cm.json", model)
    runs = [_write(tmp_path, f"r{i}.json", r) for i, r in enumerate(reports(slow, SLOW_ALL_REDUCE)[:3])]
    out = tmp_path / "cm2.json"
    r = CliRunner().invoke(main, ["calibrate", cm, *runs, "-o", str(out)])
    assert r.exit_code == 0, r.output
    doc = json.loads(out.read_text())
    assert schema_errors(doc, "cost-model", doc["schema_version"]) == []
    assert [x["path"] for x in doc["calibration"]["reports"]] == runs
    assert "compute decoder tp1 forward" in r.stderr and "calibrated from 3 run-report(s)" in r.stderr
    assert any(n.startswith("calibration left out") and "send over pp" in n for n in doc["notes"])


@pytest.mark.parametrize("path, value, field", [
    (("environment", "world_size"), 8, "$.environment.world_size"),
    (("environment", "device", "name"), "another cpu", "$.environment.device.name"),
    (("environment", "backend"), "nccl", "$.environment.backend"),
    (("plan", "model_name"), "tiny-llama", "$.plan.model_name"),
    (("settings", "seq_len"), 64, "$.settings.seq_len"),
    (("breakdown",), None, "$.breakdown"),
])
def test_cli_refuses_reports_of_another_cluster_or_model_naming_the_field(tmp_path, model, path, value, field):
    bad = copy.deepcopy(reports(model)[0])
    node = bad
    for key in path[:-1]:
        node = node[key]
    if value is None:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    good = _write(tmp_path, "good.json", reports(model)[1])
    cm, rr = _write(tmp_path, "cm.json", model), _write(tmp_path, "bad.json", bad)
    out = tmp_path / "never.json"
    r = CliRunner().invoke(main, ["calibrate", cm, good, rr, "-o", str(out)])
    assert r.exit_code == 3, r.output
    assert "bad.json" in r.stderr and field in r.stderr and "Traceback" not in r.output
    assert not out.exists()


def test_a_decoder_beyond_the_model_is_refused(model):
    bad = reports(model)[0]
    bad["breakdown"]["ranks"][0]["layers"][1]["unit"] = "layers[7]"
    with pytest.raises(DocumentError, match=r"r\.json: \$\.breakdown\.ranks\[0\]\.layers\[1\]\.unit: layers\[7\] "
                                            r"is beyond the model's 4 decoder layers"):
        calibrate(model, [bad], names=["r.json"])


def test_a_collective_no_layer_issues_is_left_out_and_noted(model):
    r = reports(model)[0]
    r["breakdown"]["ranks"][0]["collectives"].append({"op": "all_reduce", "group": "tp", "group_size": 2,
                                                      "calls": 3, "bytes": 300, "time_s": 1.0})
    out = calibrate(model, [r])
    assert _numbers(out) == _numbers(model)
    assert any("all_reduce over tp of 2: no layer issues it" in n for n in out["notes"])


def test_an_older_cost_model_is_written_back_current(model):
    older = copy.deepcopy(model)
    older["schema_version"] = "1.1"
    del older["step_overhead_s"]
    out = calibrate(older, reports(model)[:1])
    assert out["schema_version"] == CURRENT_VERSION["cost-model"]
    ranks = reports(model)[0]["breakdown"]["ranks"]
    sync = min(r["components"]["step_sync_s"] for r in ranks)
    assert out["step_overhead_s"] == pytest.approx(np.mean([r["components"]["other_s"] + sync for r in ranks]))
    assert out["step_overhead_s"] == pytest.approx(model["step_overhead_s"])
