"""Synthetic hardware- and model-profiles with known ground truth, shaped like galvatron-probe's output.

Collective times follow a two-level machine written out here independently of the package: a group of n ranks over
m nodes with k per node, g such groups leaving each node at once, moves a buffer of M bytes in
    alpha + M * (w_intra(k) / BW_INTRA + g * w_inter(m) / B_NODE),  alpha = steps(k) A_INTRA + steps(m) A_INTER
with ring factors (all_reduce 2(x-1)/x, others (x-1)/x). Compute times are fixed + c * tokens / tp.
"""
from __future__ import annotations

import math

import numpy as np

from galvatron_contracts.documents import CURRENT_VERSION

OPS = ("all_reduce", "all_gather", "reduce_scatter", "all_to_all")
LINKS = {"bw_intra": 100e9, "b_node": 25e9, "a_intra": 5e-6, "a_inter": 20e-6, "p2p_intra": 50e9,
         "p2p_node": 20e9, "p2p_alpha": 15e-6}


def _steps(op, x):
    return 2 * (x - 1) if op == "all_reduce" else x - 1


def _w(op, x):
    return (2.0 if op == "all_reduce" else 1.0) * (x - 1) / x


def true_collective_time(op, n, nodes, per_node, sharing, message_bytes, links=LINKS):
    k, m = per_node, nodes
    if op == "all_to_all":
        w_in, w_out = (k - 1) / n, k * (m - 1) / m
    else:
        w_in, w_out = _w(op, k), _w(op, m)
    alpha = _steps(op, k) * links["a_intra"] + (_steps(op, m) * links["a_inter"] if m > 1 else 0.0)
    return alpha + message_bytes * (w_in / links["bw_intra"] + (sharing * w_out / links["b_node"] if m > 1 else 0))


def _timing(t, repeats=5):
    return {"median_s": t, "min_s": t * 0.97, "max_s": t * 1.05, "p25_s": t * 0.99, "p75_s": t * 1.01,
            "repeats": repeats}


def _group_shape(world, gpn, n, stride):
    """(nodes spanned, max ranks per node, groups crossing/sharing one node) for all groups at once, by sets."""
    block = n * stride
    groups = []
    for b in range(0, world, block):
        for s in range(stride):
            groups.append([b + s + i * stride for i in range(n)])
    nodes_of = [{r // gpn for r in g} for g in groups]
    m = max(len(x) for x in nodes_of)
    k = max(max(sum(1 for r in g if r // gpn == nd) for nd in ns) for g, ns in zip(groups, nodes_of, strict=True))
    crossing = [ns for ns in nodes_of if len(ns) > 1]
    pool = crossing or nodes_of
    share = max(sum(1 for ns in pool if nd in ns) for nd in range(world // gpn))
    return m, k, max(share, 1), len(groups)


def hardware_profile(nodes=1, gpn=4, links=LINKS, noise=0.0, seed=0, sizes=None, device="cpu", overlap=True):
    rng = np.random.default_rng(seed)
    world = nodes * gpn
    sizes = sizes or [2 ** p for p in range(12, 27, 2)]
    colls = []
    n = 2
    while n <= world:
        strides = [1] if n == world else [1, world // n]
        for op in OPS:
            for stride in strides:
                m, k, g, count = _group_shape(world, gpn, n, stride)
                pts = []
                for size in sizes:
                    t = true_collective_time(op, n, m, k, g, size, links) * float(np.exp(rng.normal(0, noise)))
                    pts.append({"message_bytes": size, "time": _timing(t)})
                colls.append({"op": op, "group_size": n, "layout": "consecutive" if stride == 1 else "strided",
                              "stride": stride, "crosses_nodes": m > 1, "concurrent_groups": count, "points": pts})
        n *= 2
    p2p = []
    pp = 2
    while pp <= world:
        dist = world // pp
        senders = list(range(dist))
        crossing = [r for r in senders if r // gpn != (r + dist) // gpn]
        if crossing:
            share = max(sum(1 for r in crossing if r // gpn == nd) for nd in range(nodes))
            bw, alpha = min(links["p2p_node"] / share, links["p2p_intra"]), links["p2p_alpha"] * 2
        else:
            bw, alpha = links["p2p_intra"], links["p2p_alpha"]
        pts = [{"message_bytes": s, "time": _timing((alpha + s / bw) * float(np.exp(rng.normal(0, noise))))}
               for s in sizes]
        p2p.append({"pp_degree": pp, "crosses_nodes": bool(crossing), "concurrent_pairs": dist, "points": pts})
        pp *= 2
    dev = {"type": device, "name": "synthetic-cpu" if device == "cpu" else "synthetic-gpu"}
    return {"kind": "hardware-profile", "schema_version": CURRENT_VERSION["hardware-profile"],
            "producer": {"name": "tests", "version": "0"},
            "cluster": {"nodes": nodes, "gpus_per_node": gpn, "world_size": world, "device": dev,
                        "backend": "gloo" if device == "cpu" else "nccl"},
            "settings": {"dtype": "fp32", "warmup": 1, "repeats": 5, "quick": True},
            "collectives": colls, "p2p": p2p,
            "overlap": ({"compute_slowdown": 1.1, "comm_slowdown": 1.25, "method": "synthetic"} if overlap else None)}


# --- model profile -----------------------------------------------------------------------------------------------

def shard_params(spec, layer, t):
    """(param_count, tp_replicated) of one shard, written out by hand per architecture."""
    h, f, v = spec["hidden"], spec["ffn_hidden"], spec["vocab_size"]
    kv = spec["kv_heads"] * (h // spec["heads"])
    gpt2 = spec["family"] == "gpt2"
    if layer == "decoder":
        if gpt2:
            rep = 6 * h
            return (3 * h * h + 3 * h + h * h + 2 * h * f + f) // t + rep, rep
        rep = 2 * h
        return (2 * h * h + 2 * h * kv + 3 * h * f) // t + rep, rep
    if layer == "embedding":
        rep = spec["max_seq_len"] * h if gpt2 else 0
        return math.ceil(v / t) * h + rep, rep
    rep = 2 * h if gpt2 else h
    lm = 0 if spec["tied_embeddings"] else math.ceil(v / t) * h
    return lm + rep, rep


COMPUTE = {"decoder": (2e-4, 4e-7), "embedding": (5e-5, 1e-8), "head": (1e-4, 2e-7)}   # fixed_s, per_token_s at tp1
BACKWARD = 2.1
RECOMPUTE = 3.05
OPTIMIZER = (0.015, 9.6e-9)       # fixed_s, per_param_s of AdamW + clipping (bench README, finding 2)


def model_profile(spec, tp_degrees=(1, 2), seq_lens=(32,), mbs=(1, 2, 4), dtype="fp32", noise=0.0, seed=0,
                  seq_coef=0.0, device="cpu", optimizer=False):
    rng = np.random.default_rng(seed)
    e = 4 if dtype == "fp32" else 2
    h, a = spec["hidden"], spec["heads"]
    layers = []
    for kind in ("embedding", "decoder", "head"):
        for t in tp_degrees:
            pc, rep = shard_params(spec, kind, t)
            memory, timings = [], []
            for s in seq_lens:
                if kind == "decoder":       # Korthikanti et al.: s h (10 + 24/t + 5 a s /(h t)) per sample, 16-bit
                    div, repb = (24 * s * h + 5 * a * s * s) * e // 2 // t, 10 * s * h * e // 2
                    rc = {"tp_divided": 0, "tp_replicated": s * h * e}
                elif kind == "embedding":
                    div, repb = 0, s * 8
                    rc = {"tp_divided": 0, "tp_replicated": s * 8}
                else:
                    div, repb = s * math.ceil(spec["vocab_size"] / t) * 4, s * h * e
                    rc = {"tp_divided": div, "tp_replicated": repb}
                memory.append({"seq_len": s, "saved_bytes_per_sample": {"tp_divided": div, "tp_replicated": repb},
                               "recompute_saved_bytes_per_sample": rc})
                fixed, per_tok = COMPUTE[kind]
                for b in mbs:
                    tokens = b * s
                    base = fixed + (per_tok * tokens + seq_coef * tokens * s) / t
                    jitter = [float(np.exp(rng.normal(0, noise))) for _ in range(3)]
                    timings.append({"seq_len": s, "micro_batch_size": b, "forward": _timing(base * jitter[0]),
                                    "backward": _timing(base * BACKWARD * jitter[1]),
                                    "backward_recompute": _timing(base * RECOMPUTE * jitter[2])})
            layers.append({"layer": kind, "tp": t, "param_count": pc, "param_count_tp_replicated": rep,
                           "memory": memory, "timings": timings})
    dev = {"type": device, "name": "synthetic-cpu" if device == "cpu" else "synthetic-gpu"}
    doc = {"kind": "model-profile", "schema_version": CURRENT_VERSION["model-profile"],
           "producer": {"name": "tests", "version": "0"},
           "model": dict(spec),
           "settings": {"dtype": dtype, "seq_lens": list(seq_lens), "micro_batch_sizes": list(mbs),
                        "tp_degrees": list(tp_degrees), "concurrent_ranks": 1, "threads_per_rank": 1,
                        "device": dev, "warmup": 1, "repeats": 5, "quick": True},
           "layers": layers}
    if optimizer:
        fixed, per_param = OPTIMIZER
        doc["optimizer_step"] = {"optimizer": "adamw", "clip_grad_norm": True, "fixed_s": fixed,
                                 "per_param_s": per_param,
                                 "points": [{"param_count": n, "time": _timing(fixed + per_param * n)}
                                            for n in (1 << 20, 1 << 21, 1 << 22)]}
    return doc
