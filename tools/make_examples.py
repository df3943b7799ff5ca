"""Write the example documents under schemas/<kind>/examples/ (deterministic: the same output on every run).

    python tools/make_examples.py           # (re)write every example
    python tools/make_examples.py --check   # exit 1 if an example differs from what this writes

Needs galvatron-contracts, galvatron-cost and galvatron-search installed (tox -e schemas); none of them needs torch.

Valid examples, per kind:
- realistic.json: one pipeline through the tools' own code. The profiles are the reference A100 inputs (2 nodes x 8
  A100, LLaMA-2-7B, bf16, seq 2048) that integration_tests/bench/reference/generate.py synthesises from Galvatron's
  published figures; the cost model is what galvatron_cost.fit makes of them for one node of 8; the plan is what
  galvatron_search.search finds in that cost model under 16 GiB per GPU; the run report of that plan is
  synthesised here (running it needs the GPUs), with the plan's predictions beside it.
- tiny.json: the smallest sensible document (tiny-gpt on 2 CPU ranks) at the version the tools write
  (documents.CURRENT_VERSION), its cost model from galvatron_cost.fit; tiny-<version>.json: the same document as
  each older release of the kind carries it (without the fields later minors added, ADDED).
- plan/mixed.json: LLaMA-2-7B on 8 GPUs in 2 stages with per-layer strategies mixed inside each stage (every tp
  degree, layout and sharding), written by hand; its predictions are galvatron_search.evaluate's.
- model-spec/<preset>.json for every preset.
Invalid examples: invalid/<reason>.json, one valid example with exactly one thing broken, and beside it
<reason>.reason stating the JSON path and a fragment of the message the reader must give.

Deterministic: fitted and searched numbers are rounded to 6 significant digits (the last bits of a least-squares
fit depend on the BLAS), `created` is a fixed date, a search's time_s is 0 and no host name is the machine's.
"""
from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import math
import random
import sys
from pathlib import Path

import galvatron_cost
import galvatron_search
from galvatron_contracts.documents import CURRENT_VERSION, digest, known_versions, parse_version
from galvatron_contracts.models import PRESETS, layer_param_counts, training_flops_per_token
from galvatron_contracts.ranks import rank_groups, stage_ranks

ROOT = Path(__file__).resolve().parent.parent
SCHEMAS = ROOT / "schemas"
CPU = {"type": "cpu", "name": "x86_64 (2 cores)", "memory_bytes": 25769803776, "peak_tflops": None}
CREATED = "2026-11-27T00:00:00Z"
NOTE = "example written by tools/make_examples.py"

# The fields each minor added (schemas/<kind>/<minor>.schema.json against the release before it): what a document
# of the older release lacks. '*' stands for every item of a list.
ADDED = {
    ("model-profile", "1.1"): [("optimizer_step",)],
    ("cost-model", "1.1"): [("optimizer_step",), ("pipelines", "*", "strategies", "*", "time", "optimizer_step_s")],
    ("run-report", "1.1"): [("memory", "ranks", "*", "process_peak_rss_bytes"),
                            ("memory", "ranks", "*", "profiled_step")],
    ("hardware-profile", "1.2"): [("runtime_memory",)],
    ("cost-model", "1.2"): [("pipelines", "*", "layouts", "*", "p2p_bytes_per_sample"),
                            ("pipelines", "*", "strategies", "*", "extrapolated"),
                            ("pipelines", "*", "extrapolated_p2p"), ("step_overhead_s",), ("calibration",)],
    ("run-report", "1.2"): [("comparison", "memory", "*", "budget_bytes"), ("comparison", "memory", "*", "accounting"),
                            ("comparison", "breakdown"), ("breakdown",)],
    ("model-profile", "1.2"): [("layers", "*", "param_tensors"), ("layers", "*", "sequence_parallel_timings"),
                               ("optimizer_step", "per_tensor_s"), ("optimizer_step", "dtensor"),
                               ("optimizer_step", "points", "*", "holding")],
}


def reference_profiles() -> tuple[dict, dict]:
    """The reference A100 hardware profile and LLaMA-2-7B model profile, as generate.py writes them."""
    spec = importlib.util.spec_from_file_location("reference_generate",
                                                  ROOT / "integration_tests" / "bench" / "reference" / "generate.py")
    generate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generate)
    docs = generate.documents()
    return docs["a100-2x8-reference.hardware-profile.json"], docs["llama2-7b-reference.model-profile.json"]


def r6(x: float) -> float:
    """Six significant digits: readable, and identical on every run."""
    return float(f"{x:.6g}")


def rounded(doc):
    """Every float of a document to six significant digits (integers and the rest unchanged)."""
    if isinstance(doc, dict):
        return {k: rounded(v) for k, v in doc.items()}
    if isinstance(doc, list):
        return [rounded(v) for v in doc]
    return r6(doc) if isinstance(doc, float) else doc


def prod(tool: str) -> dict:
    """The producer of a document synthesised here in the shape that tool writes."""
    return {"name": f"galvatron-{tool}", "version": "0.1.0", "note": NOTE}


def noted(doc: dict, note: str) -> dict:
    """A tool's own document, its producer noting how the example was made."""
    doc["producer"] = {**doc["producer"], "note": note}
    return doc


# The enum values each minor added, as (list path, field, value): an older release's document has no list item
# whose field holds the value (a cost model before 1.3 lists no zero1 strategy).
ADDED_VALUES = {
    ("cost-model", "1.3"): [(("pipelines", "*", "strategies"), "dp_sharding", "zero1")],
}


def as_release(doc: dict, version: str) -> dict:
    """The document as the older release ``version`` of its kind carries it: without the fields later minors
    added, nor the list items that use an enum value they added."""
    out = copy.deepcopy(doc)
    for (kind, minor), paths in ADDED.items():
        if kind == doc["kind"] and parse_version(minor) > parse_version(version):
            for path in paths:
                drop(out, path)
    for (kind, minor), items in ADDED_VALUES.items():
        if kind == doc["kind"] and parse_version(minor) > parse_version(version):
            for path, field, value in items:
                drop_items(out, path, field, value)
    out["schema_version"] = version
    return out


def drop_items(node, path, field, value):
    """Remove from the list at ``path`` ('*': every item of a list on the way) the items whose ``field`` is
    ``value``."""
    if not path:
        node[:] = [item for item in node if item.get(field) != value]
    elif isinstance(node, list) and path[0] == "*":
        for item in node:
            drop_items(item, path[1:], field, value)
    elif isinstance(node, dict) and path[0] in node:
        drop_items(node[path[0]], path[1:], field, value)


def drop(node, path):
    if isinstance(node, list) and path[0] == "*":
        for item in node:
            drop(item, path[1:])
    elif isinstance(node, dict) and path[0] in node:
        if len(path) == 1:
            del node[path[0]]
        else:
            drop(node[path[0]], path[1:])


def timing(median: float, rng: random.Random, repeats: int) -> dict:
    spread = 0.01 + 0.03 * rng.random()
    return {"median_s": r6(median), "min_s": r6(median * (1 - spread)), "max_s": r6(median * (1 + 2 * spread)),
            "p25_s": r6(median * (1 - spread / 3)), "p75_s": r6(median * (1 + spread / 2)), "repeats": repeats}


# --- profiles --------------------------------------------------------------------------------------------------

def hardware_tiny() -> dict:
    """One all_reduce curve and one p2p curve on 2 CPU ranks (alpha-beta: 40 us + 2(n-1)/n bytes / 1.2 GB/s)."""
    rng = random.Random(1)
    sizes = (1 << 16, 1 << 20, 1 << 24)
    return {
        "kind": "hardware-profile", "schema_version": CURRENT_VERSION["hardware-profile"], "producer": prod("probe"),
        "created": CREATED,
        "cluster": {"nodes": 1, "gpus_per_node": 2, "world_size": 2, "device": CPU, "backend": "gloo"},
        "settings": {"dtype": "fp32", "warmup": 2, "repeats": 5, "quick": True, "threads_per_rank": 1},
        "collectives": [{"op": "all_reduce", "group_size": 2, "layout": "consecutive", "stride": 1,
                         "crosses_nodes": False, "concurrent_groups": 1,
                         "points": [{"message_bytes": m, "time": timing(40e-6 + m / 1.2e9, rng, 5)} for m in sizes]}],
        "p2p": [{"pp_degree": 2, "crosses_nodes": False, "concurrent_pairs": 1,
                 "points": [{"message_bytes": m, "time": timing(30e-6 + m / 2e9, rng, 5)} for m in sizes]}],
        "overlap": None,
        "runtime_memory": {"overhead_bytes": 0, "method": "CPU: none (example)"},
    }


def model_profile_tiny() -> dict:
    """tiny-gpt in fp32 at seq 64, tp 1, micro-batches 1 and 2, on 0.05 TFLOP/s: time = 0.2 ms + 2 x params x
    tokens / FLOP/s (the decoder adds attention's 4 s h per token); backward 2.05x, recompute 3.1x the forward;
    saved bytes after Korthikanti et al.'s sbh(10 + 24/t) with flash attention, at 32 bit."""
    spec = PRESETS["tiny-gpt"]
    rng = random.Random(3)
    seq, h, flops = 64, spec["hidden"], 0.05e12
    params = layer_param_counts(spec)
    replicated = {"decoder": 6 * h, "embedding": spec["max_seq_len"] * h, "head": 2 * h}
    saved = {"decoder": ({"tp_divided": 48 * seq * h, "tp_replicated": 20 * seq * h},
                         {"tp_divided": 0, "tp_replicated": 4 * seq * h}),
             "embedding": ({"tp_divided": 0, "tp_replicated": 8 * seq},) * 2,
             "head": ({"tp_divided": 4 * seq * spec["vocab_size"], "tp_replicated": 4 * seq * h},) * 2}
    per_token = {"decoder": 2.0 * params["decoder"] + 4.0 * seq * h, "embedding": 0.0,
                 "head": 2.0 * spec["vocab_size"] * h}
    layers = []
    for layer in ("embedding", "decoder", "head"):
        timings = []
        for b in (1, 2):
            fwd = 2e-4 + per_token[layer] * seq * b / flops
            timings.append({"seq_len": seq, "micro_batch_size": b, "forward": timing(fwd, rng, 3),
                            "backward": timing(2.05 * fwd, rng, 3), "backward_recompute": timing(3.1 * fwd, rng, 3)})
        layers.append({"layer": layer, "tp": 1, "param_count": params[layer],
                       "param_count_tp_replicated": replicated[layer],
                       "memory": [{"seq_len": seq, "saved_bytes_per_sample": saved[layer][0],
                                   "recompute_saved_bytes_per_sample": saved[layer][1],
                                   "workspace_bytes_per_sample": 16 * seq * h}],
                       "timings": timings})
    total = sum(params.values())
    steps = [(total // 2, 16), (total, 32)]  # AdamW (foreach=False) + clipping: 1 ms + 5 ns per parameter
    return {
        "kind": "model-profile", "schema_version": CURRENT_VERSION["model-profile"], "producer": prod("probe"),
        "created": CREATED, "model": spec,
        "settings": {"dtype": "fp32", "seq_lens": [seq], "micro_batch_sizes": [1, 2], "tp_degrees": [1],
                     "concurrent_ranks": 1, "threads_per_rank": 1, "device": CPU, "warmup": 1, "repeats": 3,
                     "quick": True},
        "layers": layers,
        "optimizer_step": {"optimizer": "adamw", "clip_grad_norm": True, "fixed_s": 1e-3, "per_param_s": 5e-9,
                           "points": [{"param_count": n, "tensors": k, "time": timing(1e-3 + 5e-9 * n, rng, 3)}
                                      for n, k in steps]},
    }


# --- cost models: galvatron-cost's fit -------------------------------------------------------------------------

def fitted(hardware: dict, model: dict, **settings) -> dict:
    return rounded(noted(galvatron_cost.fit(hardware, model, **settings),
                         "galvatron_cost.fit run by tools/make_examples.py; numbers to 6 significant digits"))


def cost_model_tiny() -> dict:
    return fitted(hardware_tiny(), model_profile_tiny())


def cost_model_realistic() -> dict:
    return fitted(*reference_profiles(), nodes=1, gpus_per_node=8)


# --- plans -----------------------------------------------------------------------------------------------------

def strategy(tp, tp_layout, sp, dp, sharding, recompute):
    return {"tp": tp, "tp_layout": tp_layout, "sp": sp, "dp": dp, "dp_sharding": sharding, "recompute": recompute}


def stage_layouts(ranks, used):
    out = []
    for tp, tp_layout in sorted(set(used)):
        tp_groups, dp_groups = rank_groups(ranks, tp, tp_layout)
        out.append({"tp": tp, "tp_layout": tp_layout, "dp": len(ranks) // tp, "tp_groups": tp_groups,
                    "dp_groups": dp_groups})
    return out


def make_plan(spec, cluster, training, b, m, schedule, bounds, layers, embedding, head) -> dict:
    """A plan by hand: stages, their ranks and groups written out by the convention (galvatron_contracts.ranks)."""
    world, pp = cluster["world_size"], len(bounds)
    stages = []
    for k, (start, end) in enumerate(bounds):
        ranks = stage_ranks(world, pp, k)
        used = [(s["tp"], s["tp_layout"]) for s in layers[start:end]]
        used += [(embedding["tp"], embedding["tp_layout"])] if k == 0 else []
        used += [(head["tp"], head["tp_layout"])] if k == pp - 1 else []
        stages.append({"index": k, "ranks": ranks, "layer_start": start, "layer_end": end,
                       "layouts": stage_layouts(ranks, used)})
    return {"kind": "plan", "schema_version": CURRENT_VERSION["plan"],
            "producer": {"name": "by hand", "version": "0", "note": f"a plan by hand, {NOTE}"}, "created": CREATED,
            "model": spec, "cluster": cluster, "training": training, "global_batch": b * m,
            "micro_batch_size": b, "micro_batches": m, "schedule": schedule, "stages": stages,
            "layers": layers, "embedding": embedding, "head": head}


def plan_tiny() -> dict:
    spec = PRESETS["tiny-gpt"]
    ddp = strategy(1, "consecutive", False, 2, "ddp", False)
    return make_plan(spec, {"nodes": 1, "gpus_per_node": 2, "world_size": 2, "device": CPU, "backend": "gloo"},
                     {"seq_len": 64, "dtype": "fp32", "optimizer": {"name": "adamw"}}, 2, 2, "1f1b",
                     [(0, 4)], [dict(ddp) for _ in range(4)], dict(ddp), dict(ddp))


def plan_realistic() -> dict:
    """What galvatron-search finds in the realistic cost model under 16 GiB per GPU for a global batch of 64."""
    cost = cost_model_realistic()
    plan = galvatron_search.search(cost, 16, global_batch=64)
    plan["search"]["time_s"] = 0.0
    return rounded(noted(plan, "galvatron_search.search run by tools/make_examples.py; search.time_s set to 0 "
                               "and numbers to 6 significant digits"))


def plan_mixed() -> dict:
    """llama2-7b on one node of 8: 2 stages of 4 ranks, per-layer strategies mixed inside each stage, by hand;
    galvatron_search.evaluate's predictions under the realistic cost model."""
    spec = PRESETS["llama2-7b"]
    cost = cost_model_realistic()
    tp2c_sp = strategy(2, "consecutive", True, 2, "zero2", False)
    tp2s = strategy(2, "strided", False, 2, "ddp", False)
    tp1_z3 = strategy(1, "consecutive", False, 4, "zero3", True)
    tp4 = strategy(4, "consecutive", True, 1, "ddp", False)
    layers = ([dict(tp1_z3) for _ in range(6)] + [dict(tp2c_sp) for _ in range(10)]      # stage 0: 0..15
              + [dict(tp2s) for _ in range(4)] + [dict(tp2c_sp) for _ in range(8)]       # stage 1: 16..31
              + [dict(tp4) for _ in range(4)])
    plan = make_plan(spec, cost["cluster"],
                     {"seq_len": cost["training"]["seq_len"], "dtype": cost["training"]["dtype"], "seed": 1234,
                      "optimizer": {"name": "adamw", "lr": 3e-4, "min_lr": 3e-5, "weight_decay": 0.1,
                                    "betas": [0.9, 0.95], "eps": 1e-8, "grad_clip": 1.0, "warmup_steps": 100,
                                    "decay_steps": None}},
                     4, 16, "1f1b", [(0, 16), (16, 32)], layers,
                     strategy(1, "consecutive", False, 4, "zero3", False),
                     strategy(4, "consecutive", False, 1, "ddp", False))
    plan["predictions"] = rounded(galvatron_search.evaluate(plan, cost))
    return plan


# --- run-report: synthesised (running a plan needs its GPUs) ---------------------------------------------------

def run_report(plan, steps, warmup, loss0, step_s, torch_version, method, peaks) -> dict:
    rng = random.Random(7)
    tokens = plan["global_batch"] * plan["training"]["seq_len"]
    rows = []
    for i in range(steps):
        rows.append({"step": i, "loss": r6(loss0 * math.exp(-0.02 * i) + 0.01 * rng.random()),
                     "time_s": r6(step_s * ((2.5 if i == 0 else 1.0) + 0.02 * rng.random())), "tokens": tokens,
                     "lr": r6(3e-4 * min(1.0, (i + 1) / 100)), "grad_norm": r6(2.0 * math.exp(-0.01 * i) + 0.1),
                     "warmup": i < warmup})
    measured = sorted(r["time_s"] for r in rows[warmup:])
    median = measured[len(measured) // 2] if len(measured) % 2 else (
        measured[len(measured) // 2 - 1] + measured[len(measured) // 2]) / 2
    median = r6(median)
    world = plan["cluster"]["world_size"]
    device = plan["cluster"]["device"]
    flops = training_flops_per_token(plan["model"], plan["training"]["seq_len"]) * tokens
    achieved = flops / median / 1e12
    peak = device.get("peak_tflops")
    ranks = []
    for rank in range(world):
        stage = next(s["index"] for s in plan["stages"] if rank in s["ranks"])
        pk = peaks[stage]
        ranks.append({"rank": rank, "stage": stage, "peak_bytes": int(pk), "baseline_bytes": int(pk * 0.55),
                      "process_peak_rss_bytes": int(pk * 1.3) + (700 << 20), "profiled_step": warmup,
                      "accounting": {"param_bytes": int(pk * 0.12), "grad_bytes": int(pk * 0.12),
                                     "optimizer_bytes": int(pk * 0.24), "activation_bytes": int(pk * 0.41)}})
    sizes = "/".join(str(s["layer_end"] - s["layer_start"]) for s in plan["stages"])
    summary = (f"pp{len(plan['stages'])} ({sizes} layers) | {plan['micro_batch_size']} x {plan['micro_batches']}, "
               f"{plan['schedule']}")
    report = {
        "kind": "run-report", "schema_version": CURRENT_VERSION["run-report"], "producer": prod("run"),
        "created": CREATED,
        "plan": {"sha256": digest(plan), "path": "plan.json", "summary": summary, "model_name": plan["model"]["name"]},
        "environment": {"torch_version": torch_version, "python_version": "3.11.7",
                        "backend": plan["cluster"]["backend"], "world_size": world, "nodes": plan["cluster"]["nodes"],
                        "threads_per_rank": 1, "device": device, "hostname": "example-host"},
        "settings": {"steps": steps, "warmup_steps": warmup, "dtype": plan["training"]["dtype"],
                     "seq_len": plan["training"]["seq_len"], "global_batch": plan["global_batch"],
                     "micro_batches": plan["micro_batches"], "seed": 1234,
                     "data": {"kind": "random", "path": None, "tokens": None, "validation_fraction": None},
                     "resumed_from_step": None, "checkpoint_dir": None},
        "steps": rows,
        "throughput": {"measured_steps": steps - warmup, "iteration_time_s": median,
                       "iteration_time_spread_s": {"min_s": measured[0], "max_s": measured[-1],
                                                   "p25_s": measured[len(measured) // 4],
                                                   "p75_s": measured[(3 * len(measured)) // 4]},
                       "samples_per_s": r6(plan["global_batch"] / median), "tokens_per_s": r6(tokens / median),
                       "model_flops_per_step": r6(flops), "achieved_tflops": r6(achieved),
                       "achieved_tflops_per_device": r6(achieved / world), "peak_tflops": peak,
                       "mfu": r6(achieved / (peak * world)) if peak else None},
        "memory": {"method": method, "ranks": ranks},
        "breakdown": breakdown(plan, median, max(warmup + 1, steps // 2)),
    }
    if "predictions" in plan:
        pred = plan["predictions"]
        report["comparison"] = {
            "iteration_time": {"predicted": pred["iteration_time_s"], "measured": median,
                               "ratio": r6(median / pred["iteration_time_s"])},
            "samples_per_s": {"predicted": pred["samples_per_s"], "measured": r6(plan["global_batch"] / median),
                              "ratio": r6(plan["global_batch"] / median / pred["samples_per_s"])},
            "memory": [memory_comparison(plan, s, ranks) for s in pred["stages"]],
            "breakdown": breakdown_comparison(pred, report["breakdown"]),
        }
    return report


# measured = these shares of the step; forward, backward and optimizer are what galvatron-run measures of them
SHARES = {"forward_compute_s": 0.26, "backward_compute_s": 0.44, "recompute_s": 0.0, "tp_communication_s": 0.04,
          "zero_communication_s": 0.03, "layout_transitions_s": 0.01, "pipeline_p2p_s": 0.01,
          "pipeline_idle_s": 0.06, "grad_sync_s": 0.05, "optimizer_step_s": 0.04, "step_sync_s": 0.01}


def breakdown(plan: dict, step_s: float, step: int) -> dict:
    """A measured breakdown of the timed ``step`` (the run's middle one, after the memory-profiled one): fixed
    shares of ``step_s`` (other_s the rest, so the components sum to step_s), the layers' forward and backward split
    evenly, one grad-sync all_reduce per layer."""
    layers = plan["layers"]
    ranks = []
    for st in plan["stages"]:
        n = max(1, st["layer_end"] - st["layer_start"])
        components = {k: r6(step_s * v) for k, v in SHARES.items()}
        components["other_s"] = r6(step_s - sum(components.values()))
        units = [{"unit": f"layers[{i}]", "kind": "decoder",
                  "strategy": {k: layers[i][k] for k in ("tp", "tp_layout", "sp", "dp", "dp_sharding", "recompute")},
                  "micro_batches": plan["micro_batches"], "micro_batch_size": plan["micro_batch_size"],
                  "forward_s": r6(components["forward_compute_s"] / n),
                  "backward_s": r6(components["backward_compute_s"] / n), "recompute_s": 0.0,
                  "communication_s": r6((components["tp_communication_s"] + components["zero_communication_s"]) / n)}
                 for i in range(st["layer_start"], st["layer_end"])]
        size = len(st["ranks"])
        param_bytes = 4 * 3 * plan["model"]["hidden"] ** 2
        for rank in st["ranks"]:
            ranks.append({"rank": rank, "stage": st["index"], "step_s": r6(step_s), "components": components,
                          "layers": units,
                          "collectives": [{"op": "all_reduce", "group": "dp", "group_size": size, "calls": n,
                                           "bytes": n * param_bytes, "time_s": components["grad_sync_s"]}]})
    return {"method": "example: fixed shares of the step", "profiled_step": step, "ranks": ranks}


def breakdown_comparison(pred: dict, measured: dict) -> dict:
    """The predicted breakdown beside the critical rank's (here: the last rank of the slowest stage)."""
    crit = measured["ranks"][-1]
    c = crit["components"]
    pairs = {"forward_compute_s": c["forward_compute_s"],
             "backward_compute_s": c["backward_compute_s"] + c["recompute_s"],
             "tp_communication_s": c["tp_communication_s"], "zero_communication_exposed_s": c["zero_communication_s"],
             "layout_transitions_s": c["layout_transitions_s"], "pipeline_p2p_s": c["pipeline_p2p_s"],
             "pipeline_bubble_s": c["pipeline_idle_s"], "grad_sync_exposed_s": c["grad_sync_s"],
             "optimizer_step_s": c["optimizer_step_s"], "step_overhead_s": c["step_sync_s"]}
    components = {k: ratio_entry(pred["breakdown"].get(k, 0.0), v) for k, v in pairs.items()}
    components["other_s"] = ratio_entry(0.0, c["other_s"])
    return {"rank": crit["rank"], "stage": crit["stage"], "step": ratio_entry(pred["iteration_time_s"], crit["step_s"]),
            "components": components}


def memory_comparison(plan: dict, stage: dict, ranks: list[dict]) -> dict:
    """One stage's predicted peak beside its worst rank's, with the budget and the accounting by part."""
    worst = max((r for r in ranks if r["stage"] == stage["index"]), key=lambda r: r["peak_bytes"])
    pred, acc = stage["memory_bytes_per_rank"], worst["accounting"]
    measured = {"params": acc["param_bytes"], "grads": acc["grad_bytes"], "optimizer": acc["optimizer_bytes"],
                "activations": acc["activation_bytes"]}
    measured["workspace_and_overhead"] = max(0, worst["peak_bytes"] - sum(measured.values()))
    predicted = {k: pred[k] for k in ("params", "grads", "optimizer", "activations")}
    predicted["workspace_and_overhead"] = pred["workspace"] + pred["overhead"]
    out = {"stage": stage["index"], **ratio_entry(pred["total"], worst["peak_bytes"])}
    if "search" in plan:
        out["budget_bytes"] = int(plan["search"]["memory_budget_bytes"])
    out["accounting"] = {k: ratio_entry(predicted[k], measured[k]) for k in measured}
    return out


def ratio_entry(predicted: float, measured: float) -> dict:
    return {"predicted": r6(float(predicted)), "measured": r6(float(measured)),
            "ratio": r6(measured / predicted) if predicted > 0 else None}


def run_report_tiny() -> dict:
    return run_report(plan_tiny(), 3, 1, 5.6, 0.021, "2.13.0+cpu", "torch.profiler allocation events (CPU)",
                      [4_612_096])


def run_report_realistic() -> dict:
    """The realistic plan's run as it might have gone: 8% slower than predicted, memory within a few percent."""
    plan = plan_realistic()
    pred = plan["predictions"]
    peaks = [int(s["memory_bytes_per_rank"]["total"] * (1.06, 0.97)[s["index"] % 2]) for s in pred["stages"]]
    return run_report(plan, 30, 5, 10.4, pred["iteration_time_s"] * 1.08, "2.13.0+cu126",
                      "torch.cuda.max_memory_allocated", peaks)


# --- invalid examples: one valid document, one thing broken -----------------------------------------------------

def mutate(doc, edits):
    """Apply edits: (path tuple, value) sets; (path tuple, DELETE) removes."""
    doc = copy.deepcopy(doc)
    for path, value in edits:
        target = doc
        for key in path[:-1]:
            target = target[key]
        if value is DELETE:
            del target[path[-1]]
        else:
            target[path[-1]] = value
    return doc


DELETE = object()


def invalid_examples() -> dict[str, list[tuple[str, dict, str, str, str]]]:
    """{kind: [(name, document, json path, message fragment, why)]}."""
    hw, mp, cm, pl, rr = hardware_tiny(), model_profile_tiny(), cost_model_tiny(), plan_tiny(), run_report_tiny()
    plr = plan_mixed()
    bad_overlap = {"compute_slowdown": 1.1, "comm_slowdown": 1.2}
    swapped = [list(g) for g in plr["stages"][0]["layouts"][1]["tp_groups"]]
    swapped[0], swapped[1] = [swapped[0][0], swapped[1][0]], [swapped[0][1], swapped[1][1]]
    out = {
        "hardware-profile": [
            ("missing-cluster", mutate(hw, [(("cluster",), DELETE)]), "$.cluster", "required property missing",
             "cluster is required"),
            ("world-size-string", mutate(hw, [(("cluster", "world_size"), "2")]), "$.cluster.world_size",
             "is not of type 'integer'", "a count is an integer, not a string"),
            ("unknown-collective", mutate(hw, [(("collectives", 0, "op"), "broadcast")]), "$.collectives[0].op",
             "is not one of", "only all_reduce, all_gather, reduce_scatter and all_to_all are profiled"),
            ("negative-time", mutate(hw, [(("collectives", 0, "points", 1, "time", "median_s"), -0.001)]),
             "$.collectives[0].points[1].time.median_s", "less than the minimum", "a time is never negative"),
            ("group-of-one", mutate(hw, [(("collectives", 0, "group_size"), 1)]), "$.collectives[0].group_size",
             "less than the minimum of 2", "a collective needs at least two ranks"),
            ("overlap-without-method", mutate(hw, [(("overlap",), bad_overlap)]), "$.overlap.method",
             "required property missing", "a measured overlap says how it was measured"),
            ("newer-major", mutate(hw, [(("schema_version",), "2.0")]), "$.schema_version",
             f"newer than this reader supports ({supported('hardware-profile')})",
             "a newer major is refused (exit 3), naming the range"),
            ("unknown-field", mutate(hw, [(("bandwidth_gbps",), 12.5)]), "$.bandwidth_gbps",
             "unexpected property", "a known minor's documents carry no fields outside its schema"),
        ],
        "model-profile": [
            ("kv-heads-not-dividing-heads", mutate(mp, [(("model", "kv_heads"), 3)]), "$.model.kv_heads",
             "expected a divisor of heads", "grouped-query attention needs kv_heads | heads"),
            ("unknown-layer-kind", mutate(mp, [(("layers", 1, "layer"), "attention")]), "$.layers[1].layer",
             "is not one of", "layer kinds are decoder, embedding, head"),
            ("missing-timings", mutate(mp, [(("layers", 0, "timings"), DELETE)]), "$.layers[0].timings",
             "required property missing", "every profiled layer has timings"),
            ("no-micro-batch-sizes", mutate(mp, [(("settings", "micro_batch_sizes"), [])]),
             "$.settings.micro_batch_sizes", "expected at least 1 item, got 0",
             "at least one micro-batch size was measured"),
            ("wrong-kind", mutate(mp, [(("kind",), "model_profile")]), "$.kind", "expected one of",
             "kind names one of the five document kinds"),
        ],
        "cost-model": [
            ("bad-input-digest", mutate(cm, [(("inputs", 0, "sha256"), "abc123")]), "$.inputs[0].sha256",
             "does not match", "a digest is 64 lowercase hex digits"),
            ("zero4-sharding", mutate(cm, [(("pipelines", 0, "strategies", 0, "dp_sharding"), "zero4")]),
             "$.pipelines[0].strategies[0].dp_sharding", "is not one of", "sharding is ddp, zero1, zero2 or zero3"),
            ("negative-per-sample", mutate(cm, [(("pipelines", 0, "strategies", 0, "time", "forward",
                                                  "per_sample_s"), -1e-3)]),
             "$.pipelines[0].strategies[0].time.forward.per_sample_s", "less than the minimum",
             "a lin coefficient is never negative"),
            ("missing-pipelines", mutate(cm, [(("pipelines",), DELETE)]), "$.pipelines",
             "required property missing", "the search needs the per-pipeline strategies"),
        ],
        "plan": [
            ("world-size-mismatch", mutate(pl, [(("cluster", "nodes"), 2)]), "$.cluster.world_size",
             "expected nodes * gpus_per_node = 4, got 2", "the world is nodes x ranks per node"),
            ("global-batch-mismatch", mutate(pl, [(("global_batch",), 6)]), "$.global_batch",
             "expected micro_batch_size * micro_batches = 4", "global_batch = micro_batch_size * micro_batches"),
            ("too-few-layers", mutate(pl, [(("layers",), pl["layers"][:3])]), "$.layers",
             "expected one strategy per decoder layer (4)", "one strategy per decoder layer"),
            ("sp-without-tp", mutate(pl, [(("layers", 2, "sp"), True)]), "$.layers[2].sp",
             "sequence parallelism needs tp > 1", "Megatron-style sequence parallelism splits over the tp group"),
            ("tied-head-sharding", mutate(pl, [(("head", "dp_sharding"), "zero3")]), "$.head.dp_sharding",
             "tied embeddings with one stage share the weight", "pp 1 with tied embeddings: one shared weight"),
            ("unknown-schedule", mutate(pl, [(("schedule",), "interleaved")]), "$.schedule", "is not one of",
             "schedules are 1f1b and gpipe"),
            ("version-without-minor", mutate(pl, [(("schema_version",), "1")]), "$.schema_version",
             "expected a string 'MAJOR.MINOR'", "schema_version is MAJOR.MINOR"),
            ("older-major", mutate(pl, [(("schema_version",), "0.9")]), "$.schema_version",
             f"older than this reader supports ({supported('plan')}) and no migration exists",
             "no migration from 0.x is registered"),
            ("stage-ranks-not-blocks", mutate(plr, [(("stages", 1, "ranks"), [4, 6, 5, 7])]), "$.stages[1].ranks",
             "expected [4, 5, 6, 7]", "stage k holds the consecutive block [k*S, (k+1)*S)"),
            ("tp-groups-strided-in-consecutive",
             mutate(plr, [(("stages", 0, "layouts", 1, "tp_groups"), swapped)]), "$.stages[0].layouts[1].tp_groups",
             "expected [[0, 1], [2, 3]]", "a consecutive tp=2 layout pairs adjacent ranks"),
            ("layer-gap-between-stages", mutate(plr, [(("stages", 0, "layer_end"), 15)]),
             "$.stages[1].layer_start", "expected 15 (where the previous stage ends)",
             "stages cover the decoder layers without gap or overlap"),
            ("tp-times-dp", mutate(plr, [(("layers", 20, "dp"), 4)]), "$.layers[20]",
             "expected tp * dp = 4", "tp * dp is the stage's rank count"),
            ("layout-not-listed", mutate(plr, [(("layers", 6, "tp_layout"), "strided")]),
             "$.layers[6]", "is not in its stage's layouts", "every layout a layer uses has its groups written out"),
            ("strided-full-stage", mutate(plr, [(("head", "tp_layout"), "strided")]), "$.head.tp_layout",
             "expected 'consecutive' when tp is 1 or the stage size", "tp == S has one layout: consecutive"),
        ],
        "run-report": [
            ("short-plan-digest", mutate(rr, [(("plan", "sha256"), "deadbeef")]), "$.plan.sha256",
             "does not match", "the plan is cited by its full sha256"),
            ("no-steps", mutate(rr, [(("steps",), [])]), "$.steps", "expected at least 1 item, got 0",
             "a run report has at least one step"),
            ("loss-as-string", mutate(rr, [(("steps", 1, "loss"), "5.1")]), "$.steps[1].loss",
             "is not of type 'number'", "loss is a number"),
            ("missing-peak-bytes", mutate(rr, [(("memory", "ranks", 0, "peak_bytes"), DELETE)]),
             "$.memory.ranks[0].peak_bytes", "required property missing", "every rank reports its peak"),
            ("backend-mpi", mutate(rr, [(("environment", "backend"), "mpi")]), "$.environment.backend",
             "is not one of", "backends are gloo and nccl"),
        ],
    }
    tiny = {"hardware-profile": hw, "model-profile": mp, "cost-model": cm, "run-report": rr}
    for (kind, minor), paths in ADDED.items():
        for path in paths:
            if first_path(tiny[kind], path) is not None:      # an optional field the tiny document holds
                out[kind].append(field_in_older_release(tiny[kind], minor, path))
    return out


def supported(kind: str) -> str:
    """The range of versions a reader of this repository supports, as its messages name it."""
    versions = [f"{a}.{b}" for a, b in known_versions()[kind]]
    return versions[0] if len(versions) == 1 else f"{versions[0]} to {versions[-1]}"


def first_path(node, path: tuple) -> tuple | None:
    """``path`` with each '*' replaced by the index of the first item that holds the rest of it (an optional
    field need not be in every item), or None where no item does."""
    if not path:
        return ()
    key, rest = path[0], path[1:]
    if key == "*":
        for i, item in enumerate(node if isinstance(node, list) else []):
            sub = first_path(item, rest)
            if sub is not None:
                return (i, *sub)
        return None
    if isinstance(node, dict) and key in node:
        sub = first_path(node[key], rest)
        return None if sub is None else (key, *sub)
    return None


def field_in_older_release(doc: dict, minor: str, path: tuple) -> tuple[str, dict, str, str, str]:
    """An invalid example: the document of the release before ``minor`` carrying one field ``minor`` added."""
    major, number = parse_version(minor)
    older = f"{major}.{number - 1}"
    at = first_path(doc, path)
    value = doc
    for key in at:
        value = value[key]
    json_path = "$" + "".join(f"[{key}]" if isinstance(key, int) else f".{key}" for key in at)
    name = f"{path[-1].replace('_', '-')}-in-{older}"
    return (name, mutate(as_release(doc, older), [(at, value)]), json_path, "unexpected property",
            f"{path[-1]} was added in {minor}: a {older} document cannot carry it")


def model_spec_invalid() -> list[tuple[str, dict, str, str, str]]:
    llama, gpt = PRESETS["llama2-7b"], PRESETS["gpt2-small"]
    return [
        ("kv-heads-not-dividing-heads", mutate(llama, [(("kv_heads",), 5)]), "$.kv_heads",
         "expected a divisor of heads (32)", "grouped-query attention needs kv_heads | heads"),
        ("hidden-not-multiple-of-heads", mutate(gpt, [(("hidden",), 770)]), "$.hidden",
         "expected a multiple of heads (12)", "heads split hidden evenly"),
        ("odd-rotary-head-dim", mutate(PRESETS["tiny-llama"], [(("hidden",), 60)]), "$.hidden",
         "even head dimension", "rotary embeddings rotate pairs of dimensions"),
        ("unknown-family", mutate(gpt, [(("family",), "bert")]), "$.family", "is not one of",
         "families are gpt2 and llama"),
        ("zero-layers", mutate(gpt, [(("layers",), 0)]), "$.layers", "less than the minimum of 1",
         "a model has at least one layer"),
        ("missing-vocab-size", mutate(gpt, [(("vocab_size",), DELETE)]), "$.vocab_size",
         "required property missing", "vocab_size is required"),
        ("tied-as-string", mutate(gpt, [(("tied_embeddings",), "yes")]), "$.tied_embeddings",
         "is not of type 'boolean'", "tied_embeddings is a boolean"),
    ]


# --- writing ---------------------------------------------------------------------------------------------------

def render(doc) -> str:
    return json.dumps(doc, indent=1, allow_nan=False) + "\n"


def wanted_files() -> dict[Path, str]:
    files: dict[Path, str] = {}
    hardware, model = reference_profiles()
    valid = {"hardware-profile": (hardware_tiny(), hardware), "model-profile": (model_profile_tiny(), model),
             "cost-model": (cost_model_tiny(), cost_model_realistic()), "plan": (plan_tiny(), plan_realistic()),
             "run-report": (run_report_tiny(), run_report_realistic())}
    for kind, (tiny, realistic) in valid.items():
        examples = SCHEMAS / kind / "examples" / "valid"
        files[examples / "tiny.json"] = render(tiny)
        for major, minor in known_versions()[kind]:
            if (major, minor) < parse_version(tiny["schema_version"]):
                files[examples / f"tiny-{major}.{minor}.json"] = render(as_release(tiny, f"{major}.{minor}"))
        files[examples / "realistic.json"] = render(realistic)
    files[SCHEMAS / "plan" / "examples" / "valid" / "mixed.json"] = render(plan_mixed())
    for name, spec in PRESETS.items():
        files[SCHEMAS / "model-spec" / "examples" / "valid" / f"{name}.json"] = render(spec)
    entries = {**invalid_examples(), "model-spec": model_spec_invalid()}
    for kind, cases in entries.items():
        for name, doc, path, fragment, why in cases:
            invalid = SCHEMAS / kind / "examples" / "invalid"
            files[invalid / f"{name}.json"] = render(doc)
            files[invalid / f"{name}.reason"] = f"path: {path}\nmessage: {fragment}\nwhy: {why}\n"
    return files


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report examples that differ")
    args = parser.parse_args()
    want = wanted_files()
    have = {p for p in SCHEMAS.glob("*/examples/*/*") if p.is_file()}
    stale = sorted(have - set(want))
    differ = sorted(p for p, text in want.items() if not p.is_file() or p.read_text(encoding="utf-8") != text)
    if args.check:
        for p in differ:
            print(f"{p.relative_to(ROOT)}: differs from what tools/make_examples.py writes", file=sys.stderr)
        for p in stale:
            print(f"{p.relative_to(ROOT)}: not written by tools/make_examples.py", file=sys.stderr)
        return 1 if differ or stale else 0
    for p in stale:
        p.unlink()
    for p in differ:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(want[p], encoding="utf-8")
    print(f"{len(differ)} written, {len(stale)} removed, {len(want) - len(differ)} unchanged", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
