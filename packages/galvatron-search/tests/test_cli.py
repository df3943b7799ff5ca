"""The command line: both spellings of the default command, stdin, -o, --explain, and the exit codes."""
import json

from click.testing import CliRunner
from synth import cost_model

from galvatron_contracts.documents import CURRENT_VERSION, validate
from galvatron_contracts.names import plan_summary
from galvatron_search.cli import main


def run(args, input=None):
    return CliRunner().invoke(main, args, input=input, catch_exceptions=False)


def write(tmp_path, name, doc):
    path = tmp_path / name
    path.write_text(json.dumps(doc))
    return str(path)


def test_search_both_spellings_stdin_output_and_explain(tmp_path):
    cm = cost_model(5, 1, 8, 4, False)
    path = write(tmp_path, "cm.json", cm)
    out = tmp_path / "plan.json"
    r = run(["--memory", "16", path, "--global-batch", "8", "-o", str(out), "--explain"])
    assert r.exit_code == 0, r.output
    plan = validate(json.loads(out.read_text()), "plan", "plan")
    assert r.stdout == "" and r.stderr.rstrip().endswith(f"-> {out}")         # the closing line, after --explain
    assert "galvatron-search: searched" in r.stderr and plan_summary(plan) in r.stderr
    assert "stage" in r.stderr and "uniform-3d" in r.stderr and "breakdown" in r.stderr
    r2 = run(["search", "--memory", "16", "-", "--global-batch", "8", "--no-baselines"], input=json.dumps(cm))
    assert r2.exit_code == 0
    plan2 = json.loads(r2.stdout)
    assert plan2["layers"] == plan["layers"] and plan2["predictions"] == plan["predictions"]
    assert plan["search"]["memory_budget_bytes"] == 16 * 2 ** 30
    assert len(plan["search"]["cost_model_sha256"]) == 64


def test_evaluate_own_and_hand_written_plans(tmp_path):
    cm = cost_model(5, 1, 8, 4, False)
    cm_path = write(tmp_path, "cm.json", cm)
    r = run(["--memory", "16", cm_path, "--global-batch", "8"])
    plan = json.loads(r.stdout)
    r = run(["evaluate", write(tmp_path, "plan.json", plan), cm_path])
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["predictions"] == plan["predictions"]
    assert r.stderr.startswith(f"galvatron-search: evaluated: {plan_summary(plan)}; predicted ")
    # a hand-written plan: one stage, every layer in the first decoder strategy's layout, no predictions
    pipe = next(p for p in cm["pipelines"] if p["pp"] == 1)
    lay = {x["id"]: x for x in pipe["layouts"]}
    def strat(kind):
        s = next(s for s in pipe["strategies"] if s["layer"] == kind)
        x = lay[s["layout"]]
        return {"tp": x["tp"], "tp_layout": x["tp_layout"], "sp": x["sp"], "dp": x["dp"],
                "dp_sharding": s["dp_sharding"], "recompute": s["recompute"]}
    d = strat("decoder")
    from galvatron_contracts.ranks import rank_groups
    used = {(s["tp"], s["tp_layout"]) for s in (d, strat("embedding"), strat("head"))}
    layouts = []
    for tp, tl in sorted(used):
        tg, dg = rank_groups(range(8), tp, tl)
        layouts.append({"tp": tp, "tp_layout": tl, "dp": 8 // tp, "tp_groups": tg, "dp_groups": dg})
    hand = {"kind": "plan", "schema_version": CURRENT_VERSION["plan"], "producer": {"name": "by hand", "version": "0"},
            "model": cm["model"], "cluster": {"nodes": 1, "gpus_per_node": 8, "world_size": 8},
            "training": {"seq_len": 64, "dtype": "bf16", "optimizer": {"name": "adamw"}},
            "global_batch": 16, "micro_batch_size": 8, "micro_batches": 2, "schedule": "1f1b",
            "stages": [{"index": 0, "ranks": list(range(8)), "layer_start": 0, "layer_end": 4, "layouts": layouts}],
            "layers": [d] * 4, "embedding": strat("embedding"), "head": strat("head")}
    r = run(["evaluate", write(tmp_path, "hand.json", hand), cm_path, "--explain"])
    assert r.exit_code == 0, r.stderr
    pred = json.loads(r.stdout)["predictions"]
    assert pred["iteration_time_s"] > 0 and len(pred["stages"]) == 1
    # the same plan on a cluster of another size: exit 4 with the reason
    other = dict(hand, cluster={"nodes": 2, "gpus_per_node": 4, "world_size": 8})
    r = run(["evaluate", write(tmp_path, "other.json", other), cm_path])
    assert r.exit_code == 4 and "cluster" in r.stderr
    # a micro-batch the dp degree does not divide: wrong in any world, an invalid plan (galvatron_contracts.plan)
    odd = dict(hand, micro_batch_size=3, global_batch=6)
    if d["dp"] > 1 and 3 % d["dp"]:
        r = run(["evaluate", write(tmp_path, "odd.json", odd), cm_path])
        assert r.exit_code == 3 and "divisible" in r.stderr and "odd.json" in r.stderr


def test_exit_codes(tmp_path):
    cm = cost_model(5, 1, 8, 4, False)
    cm_path = write(tmp_path, "cm.json", cm)
    assert run([cm_path]).exit_code == 2                                    # --memory missing
    assert run(["--memory", "-1", cm_path]).exit_code == 2
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    r = run(["--memory", "16", str(bad)])
    assert r.exit_code == 3 and "bad.json" in r.stderr
    wrong = dict(cm, kind="plan")
    r = run(["--memory", "16", write(tmp_path, "wrong.json", wrong)])
    assert r.exit_code == 3
    broken = json.loads(json.dumps(cm))
    broken["pipelines"][0]["strategies"][0]["layout"] = "nope"
    r = run(["--memory", "16", write(tmp_path, "broken.json", broken)])
    assert r.exit_code == 3 and "nope" in r.stderr
    r = run(["--memory", "0.001", cm_path, "--global-batch", "8"])
    assert r.exit_code == 4 and "smallest budget" in r.stderr
    assert "Traceback" not in r.stderr
    r = run(["evaluate", str(bad), cm_path])
    assert r.exit_code == 3
    r = run(["evaluate", cm_path, cm_path])
    assert r.exit_code == 3                                                 # a cost model is not a plan


def test_restricting_flags_reach_the_search(tmp_path):
    found = 0
    for seed in range(20, 40):
        cm = cost_model(seed, 1, 8, 4, False, max_dec=3)
        cm_path = write(tmp_path, f"cm{seed}.json", cm)
        r = run(["--memory", "64", cm_path, "--global-batch", "16", "--max-pp", "1", "--no-recompute", "--schedule",
                 "gpipe", "--sharding", "zero3", "--sharding", "zero1", "--no-baselines"])
        if r.exit_code == 4:
            assert "no plan" in r.stderr
            continue
        assert r.exit_code == 0, r.stderr
        found += 1
        plan = json.loads(r.stdout)
        assert len(plan["stages"]) == 1 and plan["schedule"] == "gpipe"
        assert all(not s["recompute"] for s in plan["layers"] + [plan["embedding"], plan["head"]])
        assert all(s["dp_sharding"] in ("zero1", "zero3") for s in plan["layers"])
        assert plan["search"]["options"]["shardings"] == ["zero3", "zero1"]
        r = run(["--memory", "64", cm_path, "--global-batch", "16", "--dp-only", "--uniform", "--no-baselines"])
        assert r.exit_code in (0, 4)
        if r.exit_code == 0:
            plan = json.loads(r.stdout)
            assert all(s["tp"] == 1 for s in plan["layers"]) and len({json.dumps(s) for s in plan["layers"]}) == 1
    assert found >= 2


def test_help_shows_examples_and_the_output_flag():
    for args, example in ((["--help"], "galvatron-search --memory 32 cost.json -o plan.json"),
                          (["search", "--help"], "galvatron-search --memory 32 cost.json -o plan.json"),
                          (["evaluate", "--help"], "galvatron-search evaluate plan.json other-cost.json")):
        r = run(args)
        assert r.exit_code == 0 and "Examples:" in r.stdout and example in r.stdout, args
    for command in ("search", "evaluate"):
        assert "-o, --output FILE" in run([command, "--help"]).stdout


def test_zero1_plans_are_searched_evaluated_and_explained(tmp_path):
    """--sharding zero1 confines the search to ZeRO-1; --explain and evaluate name it; a plan 1.0 cannot carry it
    (its dp_sharding enum lacks the value: exit 3 naming the field)."""
    cm_path = write(tmp_path, "cm.json", cost_model(6, 1, 8, 4, False, max_dec=3))
    r = run(["--memory", "64", cm_path, "--global-batch", "8", "--sharding", "zero1", "--explain", "--no-baselines"])
    assert r.exit_code == 0, r.stderr
    plan = validate(json.loads(r.stdout), "plan", "plan")
    used = [s for s in plan["layers"] + [plan["embedding"], plan["head"]] if s["dp"] > 1]
    assert used and all(s["dp_sharding"] == "zero1" for s in used)
    assert plan["schema_version"] == "1.1" and "zero1" in plan_summary(plan)
    table = r.stderr.split("stage  ranks")[1]                   # the per-stage table of --explain
    assert "zero1" in table.splitlines()[2]
    r = run(["evaluate", write(tmp_path, "plan.json", plan), cm_path, "--explain"])
    assert r.exit_code == 0 and f"evaluated: {plan_summary(plan)}" in r.stderr
    assert json.loads(r.stdout)["predictions"] == plan["predictions"]
    r = run(["evaluate", write(tmp_path, "old.json", dict(plan, schema_version="1.0")), cm_path])
    assert r.exit_code == 3 and "dp_sharding" in r.stderr and "zero1" in r.stderr
