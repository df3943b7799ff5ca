"""Write the example documents under schemas/<kind>/examples/ (deterministic: same output on every run).

    python tools/make_examples.py           # (re)write every generated example
    python tools/make_examples.py --check   # exit 1 if a committed example differs from what this writes

For each kind: valid/tiny.json (the smallest sensible document) and valid/realistic.json (llama2-7b on H100s:
a 2 nodes x 8 GPUs hardware profile, a model profile for tp 1..8, a cost model and a plan for one 8-GPU node, a
run report of that plan); invalid/<reason>.json, each one valid document with exactly one thing broken, and beside
it <reason>.reason stating the JSON path and a fragment of the message the reader must give. model-spec has
valid/<preset>.json for every preset and invalid ones checked with check_model_spec. The realistic numbers follow
the formulas in FIELD-NOTES (alpha-beta collectives, 6N FLOPs, Korthikanti activation bytes); they are plausible,
not measured. Files whose name contains 'reference' are not written or removed here (real measurements, kept by
their owners).
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "packages" / "galvatron-contracts" / "src"))

from galvatron_contracts.documents import digest  # noqa: E402
from galvatron_contracts.models import PRESETS, layer_param_counts  # noqa: E402
from galvatron_contracts.ranks import rank_groups, stage_ranks  # noqa: E402

SCHEMAS = ROOT / "schemas"
H100 = {"type": "cuda", "name": "NVIDIA H100 80GB HBM3", "memory_bytes": 85520809984, "peak_tflops": 989.4}
CPU = {"type": "cpu", "name": "x86_64 (2 cores)", "memory_bytes": 25769803776, "peak_tflops": None}
CREATED = "2026-11-27T00:00:00Z"


def r6(x: float) -> float:
    """Six significant digits: readable, and identical on every run."""
    return float(f"{x:.6g}")


def prod(tool: str) -> dict:
    return {"name": f"galvatron-{tool}", "version": "0.1.0", "note": "example written by tools/make_examples.py"}


def timing(median: float, rng: random.Random, repeats: int) -> dict:
    spread = 0.01 + 0.03 * rng.random()
    return {"median_s": r6(median), "min_s": r6(median * (1 - spread)), "max_s": r6(median * (1 + 2 * spread)),
            "p25_s": r6(median * (1 - spread / 3)), "p75_s": r6(median * (1 + spread / 2)), "repeats": repeats}


# --- hardware-profile ------------------------------------------------------------------------------------------

WIRE = {"all_reduce": lambda n: 2 * (n - 1) / n, "all_gather": lambda n: (n - 1) / n,
        "reduce_scatter": lambda n: (n - 1) / n, "all_to_all": lambda n: (n - 1) / n}


def collective_time(op, n, nbytes, alpha, gbps):
    return alpha + nbytes * WIRE[op](n) / (gbps * 1e9)


def hardware_tiny() -> dict:
    rng = random.Random(1)
    points = [{"message_bytes": m, "time": timing(collective_time("all_reduce", 2, m, 40e-6, 1.2), rng, 5)}
              for m in (1 << 16, 1 << 20, 1 << 24)]
    return {
        "kind": "hardware-profile", "schema_version": "1.0", "producer": prod("probe"), "created": CREATED,
        "cluster": {"nodes": 1, "gpus_per_node": 2, "world_size": 2, "device": CPU, "backend": "gloo"},
        "settings": {"dtype": "fp32", "warmup": 2, "repeats": 5, "quick": True, "threads_per_rank": 1},
        "collectives": [{"op": "all_reduce", "group_size": 2, "layout": "consecutive", "stride": 1,
                         "crosses_nodes": False, "concurrent_groups": 1, "points": points}],
        "p2p": [{"pp_degree": 2, "crosses_nodes": False, "concurrent_pairs": 1,
                 "points": [{"message_bytes": m, "time": timing(30e-6 + m / 2e9, rng, 5)}
                            for m in (1 << 16, 1 << 20, 1 << 24)]}],
        "overlap": None,
    }


def hardware_realistic() -> dict:
    """2 nodes x 8 H100 (NVLink inside a node, 400 Gb/s per GPU across): every op, group size and layout."""
    rng = random.Random(2)
    nodes, per_node = 2, 8
    world = nodes * per_node
    sizes = [1 << 20, 1 << 22, 1 << 24, 1 << 26, 1 << 28]
    collectives = []
    for op in WIRE:
        for n in (2, 4, 8, 16):
            for layout in ("consecutive", "strided"):
                stride = 1 if layout == "consecutive" else world // n
                if layout == "strided" and stride == 1:
                    continue  # the same groups as consecutive
                crosses = (n - 1) * stride >= per_node
                gbps = (150.0 if n > 2 else 130.0) if not crosses else (45.0 if layout == "consecutive" else 18.0)
                if op == "all_to_all":
                    gbps *= 0.8
                alpha = 12e-6 if not crosses else 30e-6
                points = [{"message_bytes": m, "time": timing(collective_time(op, n, m, alpha, gbps), rng, 20)}
                          for m in sizes]
                collectives.append({"op": op, "group_size": n, "layout": layout, "stride": stride,
                                    "crosses_nodes": crosses, "concurrent_groups": world // n, "points": points})
    p2p = []
    for pp, crosses, gbps in ((2, True, 8.0), (4, True, 8.0)):
        p2p.append({"pp_degree": pp, "crosses_nodes": crosses, "concurrent_pairs": world // pp,
                    "points": [{"message_bytes": m, "time": timing(25e-6 + m / (gbps * 1e9), rng, 20)}
                               for m in sizes]})
    return {
        "kind": "hardware-profile", "schema_version": "1.0", "producer": prod("probe"), "created": CREATED,
        "cluster": {"nodes": nodes, "gpus_per_node": per_node, "world_size": world, "device": H100,
                    "backend": "nccl"},
        "settings": {"dtype": "bf16", "warmup": 5, "repeats": 20, "quick": False, "threads_per_rank": 4,
                     "elapsed_s": 412.5},
        "collectives": collectives,
        "p2p": p2p,
        "overlap": {"compute_slowdown": 1.13, "comm_slowdown": 1.21,
                    "method": "4096^3 bf16 matmuls beside a 256 MiB all_reduce on every rank",
                    "compute_alone_s": 0.1742, "comm_alone_s": 0.00423, "compute_overlapped_s": 0.19685,
                    "comm_overlapped_s": 0.005118},
    }


# --- model-profile ---------------------------------------------------------------------------------------------

def shard_params(spec: dict, layer: str, tp: int) -> tuple[int, int]:
    """(params one tp shard holds, of which replicated on every shard)."""
    h = spec["hidden"]
    total = layer_param_counts(spec)[layer]
    gpt2 = spec["family"] == "gpt2"
    if layer == "decoder":
        replicated = 6 * h if gpt2 else 2 * h          # norms (+ the two row-parallel biases for gpt2)
    elif layer == "embedding":
        replicated = spec["max_seq_len"] * h if gpt2 else 0  # learned positions
    else:
        replicated = 2 * h if gpt2 else h              # final norm; the LM head is vocab-parallel
    return (total - replicated) // tp + replicated, replicated


def flops_fwd_per_token(spec: dict, layer: str, seq: int) -> float:
    h = spec["hidden"]
    if layer == "decoder":
        return 2.0 * layer_param_counts(spec)["decoder"] + 4.0 * seq * h
    if layer == "head":
        return 2.0 * spec["vocab_size"] * h
    return 0.0


def saved_bytes(spec: dict, layer: str, seq: int, tp: int, bytes_per: int, recompute: bool) -> dict:
    """Activation bytes saved per sample (flash attention: Korthikanti's sbh(10 + 24/t) at 16 bit)."""
    h, scale = spec["hidden"], bytes_per / 2
    if layer == "decoder":
        if recompute:
            return {"tp_divided": 0, "tp_replicated": int(2 * seq * h * scale)}
        return {"tp_divided": int(24 * seq * h * scale / tp), "tp_replicated": int(10 * seq * h * scale)}
    if layer == "head":  # the final norm's input and the logits in fp32 for the loss
        return {"tp_divided": int(4 * seq * spec["vocab_size"] / tp), "tp_replicated": int(2 * seq * h * scale)}
    return {"tp_divided": 0, "tp_replicated": int(8 * seq)}  # the token ids


def model_profile(spec, device, dtype, seqs, mbss, tps, tflops, fixed_s, seed, warmup, repeats, concurrent) -> dict:
    rng = random.Random(seed)
    bytes_per = 4 if dtype == "fp32" else 2
    layers = []
    for layer in ("embedding", "decoder", "head"):
        for tp in tps:
            count, replicated = shard_params(spec, layer, tp)
            memory = [{"seq_len": s,
                       "saved_bytes_per_sample": saved_bytes(spec, layer, s, tp, bytes_per, False),
                       "recompute_saved_bytes_per_sample": saved_bytes(spec, layer, s, tp, bytes_per,
                                                                       layer == "decoder"),
                       "workspace_bytes_per_sample": int(4 * s * spec["hidden"] * bytes_per / tp)} for s in seqs]
            timings = []
            for s in seqs:
                for b in mbss:
                    flops = flops_fwd_per_token(spec, layer, s) * s * b / tp
                    fwd = fixed_s + flops / (tflops * 1e12) * (1 + 0.04 * math.log2(tp))
                    if layer == "embedding":
                        fwd = fixed_s + s * b * spec["hidden"] * bytes_per / 1.5e12
                    timings.append({"seq_len": s, "micro_batch_size": b,
                                    "forward": timing(fwd, rng, repeats), "backward": timing(2.05 * fwd, rng, repeats),
                                    "backward_recompute": timing(3.1 * fwd, rng, repeats)})
            layers.append({"layer": layer, "tp": tp, "param_count": count, "param_count_tp_replicated": replicated,
                           "memory": memory, "timings": timings})
    return {
        "kind": "model-profile", "schema_version": "1.0", "producer": prod("probe"), "created": CREATED,
        "model": spec,
        "settings": {"dtype": dtype, "seq_lens": seqs, "micro_batch_sizes": mbss, "tp_degrees": tps,
                     "concurrent_ranks": concurrent, "threads_per_rank": 1 if device["type"] == "cpu" else 4,
                     "device": device, "warmup": warmup, "repeats": repeats, "quick": device["type"] == "cpu"},
        "layers": layers,
    }


def model_profile_tiny() -> dict:
    return model_profile(PRESETS["tiny-gpt"], CPU, "fp32", [64], [1, 2], [1], 0.05, 2e-4, 3, 1, 3, 1)


def model_profile_realistic() -> dict:
    return model_profile(PRESETS["llama2-7b"], H100, "bf16", [4096], [1, 2, 4], [1, 2, 4, 8], 420.0, 1.5e-4, 4,
                         3, 10, 8)


# --- cost-model ------------------------------------------------------------------------------------------------

def lin_s(fixed, per_sample):
    return {"fixed_s": r6(fixed), "per_sample_s": r6(per_sample)}


def lin_b(fixed, per_sample):
    return {"fixed_bytes": r6(fixed), "per_sample_bytes": r6(per_sample)}


def layout_id(tp, tp_layout, sp):
    return f"tp{tp}-{tp_layout[0]}{'-sp' if sp else ''}"


def cost_model(spec, profile, hardware, nodes, per_node, device, backend, seq, dtype, tflops, intra_gbps,
               max_tp, pps, overhead) -> dict:
    world = nodes * per_node
    bpe = 4 if dtype == "fp32" else 2
    h = spec["hidden"]
    alpha = 12e-6

    def coll(op, n, nbytes):
        return 0.0 if n == 1 else collective_time(op, n, nbytes, alpha, intra_gbps)

    def compute_fwd(layer, tp, samples):
        if layer == "embedding":
            return 1.5e-4 + samples * seq * h * bpe / 1.5e12
        return 1.5e-4 + flops_fwd_per_token(spec, layer, seq) * seq * samples / tp / (tflops * 1e12) * (
            1 + 0.04 * math.log2(tp))

    pipelines = []
    for pp in pps:
        size = world // pp
        layouts = []
        for tp in (t for t in (1, 2, 4, 8, 16) if t <= min(size, max_tp) and size % t == 0):
            for tp_layout in ("consecutive", "strided") if 1 < tp < size else ("consecutive",):
                for sp in (False, True) if tp > 1 else (False,):
                    dp = size // tp
                    act = seq * h * bpe / (dp * (tp if sp else 1))  # bytes per sample one rank sends on
                    layouts.append({"id": layout_id(tp, tp_layout, sp), "tp": tp, "tp_layout": tp_layout, "sp": sp,
                                    "dp": dp, "p2p": lin_s(25e-6 if pp > 1 else 0.0, act / 8e9 if pp > 1 else 0.0)})
        transitions = []
        for a in layouts:
            for b in layouts:
                if a["id"] != b["id"]:
                    per = seq * h * bpe / min(a["dp"], b["dp"]) / (intra_gbps * 1e9)
                    transitions.append({"from": a["id"], "to": b["id"], "forward": lin_s(alpha, per),
                                        "backward": lin_s(alpha, per)})
        strategies = []
        for layer in ("embedding", "decoder", "head"):
            for lay in layouts:
                tp, dp = lay["tp"], lay["dp"]
                params, _ = shard_params(spec, layer, tp)
                if layer == "head" and spec["tied_embeddings"] and pp > 1:
                    params += spec["vocab_size"] * h // tp  # the last stage's own copy of the tied weight
                fwd = compute_fwd(layer, tp, 1.0 / dp) - 1.5e-4
                comm = 0.0 if tp == 1 or layer == "embedding" else 2 * coll("all_reduce", tp, seq * h * bpe / dp)
                saved = saved_bytes(spec, layer, seq, tp, bpe, False)
                for sharding in ("ddp", "zero2", "zero3") if dp > 1 else ("ddp",):
                    for recompute in (False, True) if layer == "decoder" else (False,):
                        if recompute:
                            saved_now = saved_bytes(spec, layer, seq, tp, bpe, True)
                        else:
                            saved_now = saved
                        act = (saved_now["tp_divided"] + saved_now["tp_replicated"] / (tp if lay["sp"] else 1)) / dp
                        shard = dp if sharding != "ddp" else 1
                        gather = coll("all_gather", dp, params * bpe) if sharding == "zero3" else 0.0
                        reduce = coll("reduce_scatter", dp, params * 4) if sharding != "ddp" else 0.0
                        sync = coll("all_reduce", dp, params * 4) if sharding == "ddp" else 0.0
                        lowp = params * bpe if dtype != "fp32" else 0
                        time = {"forward": lin_s(1.5e-4, fwd),
                                "backward": lin_s(3e-4, fwd * (3.1 if recompute else 2.05)),
                                "forward_comm": lin_s(2 * alpha if comm else 0.0, comm),
                                "backward_comm": lin_s(2 * alpha if comm else 0.0, comm * (2 if recompute else 1)),
                                "param_gather_forward_s": r6(gather), "param_gather_backward_s": r6(gather),
                                "grad_reduce_per_microbatch_s": r6(reduce), "grad_sync_s": r6(sync)}
                        memory = {"param_bytes": 4 * params // shard + (lowp if sharding == "zero2" else 0),
                                  "grad_bytes": 4 * params // shard, "optimizer_bytes": 8 * params // shard,
                                  "activation": lin_b(0, act),
                                  "workspace": lin_b(lowp + (4 * params if sharding != "ddp" else 0),
                                                     4 * seq * h * bpe / tp / dp)}
                        strategies.append({"id": f"{layer}/{lay['id']}/{sharding}{'/rc' if recompute else ''}",
                                           "layer": layer, "layout": lay["id"], "dp_sharding": sharding,
                                           "recompute": recompute, "time": time, "memory": memory})
        pipelines.append({"pp": pp, "stage_ranks": size, "layouts": layouts, "transitions": transitions,
                          "strategies": strategies})

    quality = {"r2": 0.9987, "max_rel_residual": 0.041, "median_rel_residual": 0.012, "points": 5}
    fits_coll = [{"op": op, "group_size": n, "layout": layout, "crosses_nodes": False, "alpha_s": alpha,
                  "bandwidth_gbps": intra_gbps * (0.8 if op == "all_to_all" else 1.0),
                  "extrapolated": False, "method": "weighted least squares, alpha-beta", "quality": quality}
                 for op in WIRE for n in (2, 4, 8) if n <= world
                 for layout in (("consecutive", "strided") if n < world else ("consecutive",))]
    fits_compute = [{"layer": layer, "tp": tp, "phase": phase, "fixed_s": 1.5e-4,
                     "per_token_s": r6((compute_fwd(layer, tp, 1) - 1.5e-4) / seq * mult), "per_token_seq_s": 0.0,
                     "extrapolated": False, "quality": quality}
                    for layer in ("embedding", "decoder", "head") for tp in (1, 2, 4, 8) if tp <= max_tp
                    for phase, mult in (("forward", 1.0), ("backward", 2.05), ("backward_recompute", 3.1))]
    return {
        "kind": "cost-model", "schema_version": "1.0", "producer": prod("cost"), "created": CREATED,
        "inputs": [{"kind": d["kind"], "sha256": digest(d), "producer": d["producer"]} for d in (hardware, profile)],
        "model": spec,
        "cluster": {"nodes": nodes, "gpus_per_node": per_node, "world_size": world, "device": device,
                    "backend": backend},
        "training": {"seq_len": seq, "dtype": dtype, "optimizer": "adamw", "runtime_overhead_bytes": overhead},
        "overlap": {"compute_slowdown": 1.13, "comm_slowdown": 1.21, "measured": True},
        "fits": {"collectives": fits_coll,
                 "p2p": [{"pp_degree": 2, "crosses_nodes": False, "alpha_s": 25e-6, "bandwidth_gbps": 8.0,
                          "extrapolated": False, "method": "least squares", "quality": quality}],
                 "compute": fits_compute},
        "pipelines": pipelines,
    }


def cost_model_tiny() -> dict:
    spec = PRESETS["tiny-gpt"]
    doc = cost_model(spec, model_profile_tiny(), hardware_tiny(), 1, 2, CPU, "gloo", 64, "fp32", 0.05, 1.2, 2,
                     [1, 2], 300 << 20)
    doc["overlap"] = {"compute_slowdown": 1.0, "comm_slowdown": 1.0, "measured": False}
    return doc


def cost_model_realistic() -> dict:
    return cost_model(PRESETS["llama2-7b"], model_profile_realistic(), hardware_realistic(), 1, 8, H100, "nccl",
                      4096, "bf16", 420.0, 150.0, 8, [1, 2, 4], 3 << 30)


# --- plan ------------------------------------------------------------------------------------------------------

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
    world, pp = cluster["world_size"], len(bounds)
    stages = []
    for k, (start, end) in enumerate(bounds):
        ranks = stage_ranks(world, pp, k)
        used = [(s["tp"], s["tp_layout"]) for s in layers[start:end]]
        used += [(embedding["tp"], embedding["tp_layout"])] if k == 0 else []
        used += [(head["tp"], head["tp_layout"])] if k == pp - 1 else []
        stages.append({"index": k, "ranks": ranks, "layer_start": start, "layer_end": end,
                       "layouts": stage_layouts(ranks, used)})
    return {"kind": "plan", "schema_version": "1.0", "producer": prod("search"), "created": CREATED,
            "model": spec, "cluster": cluster, "training": training, "global_batch": b * m,
            "micro_batch_size": b, "micro_batches": m, "schedule": schedule, "stages": stages,
            "layers": layers, "embedding": embedding, "head": head}


def plan_tiny() -> dict:
    spec = PRESETS["tiny-gpt"]
    ddp = strategy(1, "consecutive", False, 2, "ddp", False)
    return make_plan(spec, {"nodes": 1, "gpus_per_node": 2, "world_size": 2, "device": CPU, "backend": "gloo"},
                     {"seq_len": 64, "dtype": "fp32", "optimizer": {"name": "adamw"}}, 2, 2, "1f1b",
                     [(0, 4)], [dict(ddp) for _ in range(4)], dict(ddp), dict(ddp))


def predict(plan: dict, cost: dict) -> dict:
    """The plan's predictions from the cost model's numbers (1F1B/GPipe, overlap ignored: an example)."""
    pp, b, m = len(plan["stages"]), plan["micro_batch_size"], plan["micro_batches"]
    pipe = next(p for p in cost["pipelines"] if p["pp"] == pp)
    by_id = {s["id"]: s for s in pipe["strategies"]}

    def lookup(kind, s):
        lid = layout_id(s["tp"], s["tp_layout"], s["sp"])
        return by_id[f"{kind}/{lid}/{s['dp_sharding']}{'/rc' if s['recompute'] else ''}"]

    def ev(lin):
        return lin["fixed_s"] + lin["per_sample_s"] * b

    stages, fwd, bwd, sync = [], [], [], []
    for k, st in enumerate(plan["stages"]):
        parts = [lookup("decoder", plan["layers"][i]) for i in range(st["layer_start"], st["layer_end"])]
        parts = ([lookup("embedding", plan["embedding"])] if k == 0 else []) + parts
        parts += [lookup("head", plan["head"])] if k == pp - 1 else []
        f = sum(ev(p["time"]["forward"]) + ev(p["time"]["forward_comm"]) + p["time"]["param_gather_forward_s"]
                for p in parts)
        g = sum(ev(p["time"]["backward"]) + ev(p["time"]["backward_comm"]) + p["time"]["param_gather_backward_s"]
                + p["time"]["grad_reduce_per_microbatch_s"] for p in parts)
        sync.append(sum(p["time"]["grad_sync_s"] for p in parts))
        in_flight = min(pp - k, m) if plan["schedule"] == "1f1b" else m
        mem = {"params": sum(p["memory"]["param_bytes"] for p in parts),
               "grads": sum(p["memory"]["grad_bytes"] for p in parts),
               "optimizer": sum(p["memory"]["optimizer_bytes"] for p in parts),
               "activations": in_flight * sum(p["memory"]["activation"]["fixed_bytes"]
                                              + p["memory"]["activation"]["per_sample_bytes"] * b for p in parts),
               "workspace": max(p["memory"]["workspace"]["fixed_bytes"]
                                + p["memory"]["workspace"]["per_sample_bytes"] * b for p in parts),
               "overhead": cost["training"]["runtime_overhead_bytes"]}
        mem = {k2: r6(v) for k2, v in mem.items()}
        mem["total"] = r6(sum(mem.values()))
        stages.append({"index": k, "memory_bytes_per_rank": mem, "forward_s": r6(f), "backward_s": r6(g),
                       "grad_sync_exposed_s": r6(sync[-1])})
        fwd.append(f)
        bwd.append(g)
    slowest = max(f + g for f, g in zip(fwd, bwd, strict=True))
    compute = r6(m * slowest)
    bubble = r6((pp - 1) * slowest)
    exposed = r6(max(sync))
    total = compute + bubble + exposed
    gb = plan["global_batch"]
    return {"iteration_time_s": total, "samples_per_s": r6(gb / total),
            "tokens_per_s": r6(gb * plan["training"]["seq_len"] / total), "stages": stages,
            "breakdown": {"stage_compute_s": compute, "pipeline_bubble_s": bubble, "grad_sync_exposed_s": exposed}}


def plan_realistic() -> dict:
    """llama2-7b on one node of 8 H100s: 2 stages of 4 ranks, per-layer strategies mixed inside each stage."""
    spec = PRESETS["llama2-7b"]
    cost = cost_model_realistic()
    tp2c_sp = strategy(2, "consecutive", True, 2, "zero2", False)
    tp2s = strategy(2, "strided", False, 2, "ddp", False)
    tp1_z3 = strategy(1, "consecutive", False, 4, "zero3", True)
    tp4 = strategy(4, "consecutive", True, 1, "ddp", False)
    layers = ([dict(tp1_z3) for _ in range(6)] + [dict(tp2c_sp) for _ in range(10)]      # stage 0: 0..15
              + [dict(tp2s) for _ in range(4)] + [dict(tp2c_sp) for _ in range(8)]       # stage 1: 16..31
              + [dict(tp4) for _ in range(4)])
    plan = make_plan(spec, {"nodes": 1, "gpus_per_node": 8, "world_size": 8, "device": H100, "backend": "nccl"},
                     {"seq_len": 4096, "dtype": "bf16", "seed": 1234,
                      "optimizer": {"name": "adamw", "lr": 3e-4, "min_lr": 3e-5, "weight_decay": 0.1,
                                    "betas": [0.9, 0.95], "eps": 1e-8, "grad_clip": 1.0, "warmup_steps": 100,
                                    "decay_steps": None}},
                     4, 16, "1f1b", [(0, 16), (16, 32)], layers,
                     strategy(1, "consecutive", False, 4, "zero3", False), strategy(4, "consecutive", False, 1,
                                                                                   "ddp", False))
    plan["predictions"] = predict(plan, cost)
    plan["search"] = {
        "time_s": 41.7, "candidates_evaluated": 183204, "memory_budget_bytes": 64 << 30,
        "cost_model_sha256": digest(cost),
        "options": {"max_tp": 8, "pipeline_degrees": [1, 2, 4], "schedules": ["1f1b"], "memory_gib": 64},
        "baselines": [
            {"name": "dp-zero3", "description": "pure data parallel, ZeRO-3, no recompute", "feasible": False,
             "iteration_time_s": None, "samples_per_s": None, "global_batch": None, "memory_bytes_per_rank": None,
             "summary": "pp1 tp1 dp8 zero3: activations exceed 64 GiB at b=8"},
            {"name": "megatron-tp8", "description": "tensor parallel over the node, sequence parallel",
             "feasible": True, "iteration_time_s": 9.81, "samples_per_s": 6.524, "global_batch": 64,
             "memory_bytes_per_rank": 31.2e9, "summary": "pp1 tp8-sp dp1 ddp, 16 x 4 micro-batches"},
            {"name": "pp2-tp4", "description": "uniform pipeline and tensor parallelism", "feasible": True,
             "iteration_time_s": 8.92, "samples_per_s": 7.175, "global_batch": 64, "memory_bytes_per_rank": 27.9e9,
             "summary": "pp2 (16/16) tp4-sp dp1 ddp, 1f1b, 16 x 4 micro-batches"},
        ],
    }
    return plan


# --- run-report ------------------------------------------------------------------------------------------------

def run_report(plan, steps, warmup, loss0, step_s, devices, torch_version, method, peaks, summary) -> dict:
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
    from galvatron_contracts.models import training_flops_per_token
    flops = training_flops_per_token(plan["model"], plan["training"]["seq_len"]) * tokens
    achieved = flops / median / 1e12
    peak = device.get("peak_tflops")
    ranks = []
    for rank in range(world):
        stage = next(s["index"] for s in plan["stages"] if rank in s["ranks"])
        pk = peaks[stage]
        ranks.append({"rank": rank, "stage": stage, "peak_bytes": int(pk), "baseline_bytes": int(pk * 0.55),
                      "accounting": {"param_bytes": int(pk * 0.12), "grad_bytes": int(pk * 0.12),
                                     "optimizer_bytes": int(pk * 0.24), "activation_bytes": int(pk * 0.41)}})
    report = {
        "kind": "run-report", "schema_version": "1.0", "producer": prod("run"), "created": CREATED,
        "plan": {"sha256": digest(plan), "path": "plan.json", "summary": summary, "model_name": plan["model"]["name"]},
        "environment": {"torch_version": torch_version, "python_version": "3.11.7",
                        "backend": plan["cluster"]["backend"], "world_size": world, "nodes": plan["cluster"]["nodes"],
                        "threads_per_rank": 1, "device": device, "hostname": devices},
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
    }
    if "predictions" in plan:
        pred = plan["predictions"]
        report["comparison"] = {
            "iteration_time": {"predicted": pred["iteration_time_s"], "measured": median,
                               "ratio": r6(median / pred["iteration_time_s"])},
            "samples_per_s": {"predicted": pred["samples_per_s"], "measured": r6(plan["global_batch"] / median),
                              "ratio": r6(plan["global_batch"] / median / pred["samples_per_s"])},
            "memory": [{"stage": s["index"], "predicted": s["memory_bytes_per_rank"]["total"],
                        "measured": float(peaks[s["index"]]),
                        "ratio": r6(peaks[s["index"]] / s["memory_bytes_per_rank"]["total"])}
                       for s in pred["stages"]],
        }
    return report


def run_report_tiny() -> dict:
    plan = plan_tiny()
    return run_report(plan, 3, 1, 5.6, 0.021, "ci-runner", "2.13.0+cpu",
                      "torch.profiler allocation events (CPU)", [4_612_096], "pp1 | 4 layers tp1 dp2 ddp | 2 x 2, 1f1b")


def run_report_realistic() -> dict:
    plan = plan_realistic()
    peaks = [int(s["memory_bytes_per_rank"]["total"] * f) for s, f in zip(plan["predictions"]["stages"],
                                                                            (1.06, 0.97), strict=True)]
    step = plan["predictions"]["iteration_time_s"] * 1.08
    return run_report(plan, 30, 5, 10.4, step, "node-a17", "2.13.0+cu126", "torch.cuda.max_memory_allocated",
                      peaks, "pp2 (16/16) | mixed tp1-zero3-rc / tp2-sp-zero2 / tp2s-ddp / tp4-sp | 16 x 4, 1f1b")


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
    plr = plan_realistic()
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
             "newer than this reader supports (1.0)", "a newer major is refused (exit 3), naming the range"),
            ("unknown-field", mutate(hw, [(("bandwidth_gbps",), 12.5)]), "$.bandwidth_gbps",
             "unexpected property", "1.0 documents carry no fields outside the schema"),
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
            ("zero1-sharding", mutate(cm, [(("pipelines", 0, "strategies", 0, "dp_sharding"), "zero1")]),
             "$.pipelines[0].strategies[0].dp_sharding", "is not one of", "sharding is ddp, zero2 or zero3"),
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
             "older than this reader supports (1.0) and no migration exists", "no migration from 0.x is registered"),
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
    return out


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
    valid = {"hardware-profile": (hardware_tiny, hardware_realistic),
             "model-profile": (model_profile_tiny, model_profile_realistic),
             "cost-model": (cost_model_tiny, cost_model_realistic), "plan": (plan_tiny, plan_realistic),
             "run-report": (run_report_tiny, run_report_realistic)}
    for kind, (tiny, realistic) in valid.items():
        files[SCHEMAS / kind / "examples" / "valid" / "tiny.json"] = render(tiny())
        files[SCHEMAS / kind / "examples" / "valid" / "realistic.json"] = render(realistic())
    entries = {k: v for k, v in invalid_examples().items()}
    entries["model-spec"] = model_spec_invalid()
    for name, spec in PRESETS.items():
        files[SCHEMAS / "model-spec" / "examples" / "valid" / f"{name}.json"] = render(spec)
    for kind, cases in entries.items():
        for name, doc, path, fragment, why in cases:
            base = SCHEMAS / kind / "examples" / "invalid" / name
            files[base.with_suffix(".json")] = render(doc)
            files[base.with_suffix(".reason")] = f"path: {path}\nmessage: {fragment}\nwhy: {why}\n"
    return files


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report examples that differ")
    args = parser.parse_args()
    want = wanted_files()
    have = {p for p in SCHEMAS.glob("*/examples/*/*") if p.is_file() and "reference" not in p.name}
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
