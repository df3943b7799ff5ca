"""Random, schema-valid cost-model documents for the tests (the package never reads another tool's code)."""
from __future__ import annotations

import itertools
import random

import numpy as np

from galvatron_contracts.documents import CURRENT_VERSION
from galvatron_contracts.ranks import canonical_layout
from galvatron_search.costs import SHARDINGS, CostTables
from galvatron_search.evaluate import Spec, evaluate_spec


def _lin_t(rng, lo, hi, fixed=1e-4):
    return {"fixed_s": rng.uniform(0, fixed), "per_sample_s": rng.uniform(lo, hi)}


def _lin_b(rng, lo, hi):
    return {"fixed_bytes": float(rng.randint(0, 2 ** 20)), "per_sample_bytes": float(rng.randint(lo, hi))}


def cost_model(seed: int, nodes: int = 1, gpus_per_node: int = 4, layers: int = 3, tied: bool = False,
               max_dec: int = 3, max_ends: int = 2) -> dict:
    """A random cost model: every pipeline degree that divides the world, a few random layouts and strategies
    (at most `max_dec` decoder and `max_ends` embedding/head strategies per pipeline degree)."""
    rng = random.Random(seed)
    orng = random.Random(f"optimizer {seed}")      # its own stream: the other numbers stay those of `seed`
    brng = random.Random(f"buffers {seed}")         # the pipelining receive buffers' bytes, also apart
    optimizer = orng.random() < 0.75                # else a document from before the optimizer step was modelled
    world = nodes * gpus_per_node
    pipelines = []
    for pp in [d for d in (1, 2, 4, 8) if world % d == 0 and d <= layers]:
        S = world // pp
        layouts = []
        for tp in [t for t in (1, 2, 4, 8) if S % t == 0]:
            for tl in (["consecutive"] if tp in (1, S) else ["consecutive", "strided"]):
                for sp in ([False] if tp == 1 else [False, True]):
                    layouts.append({"id": f"tp{tp}{tl[0]}{'sp' if sp else ''}", "tp": tp, "tp_layout": tl, "sp": sp,
                                    "dp": S // tp, "p2p": _lin_t(rng, 1e-5, 4e-4)})
        layouts = rng.sample(layouts, min(len(layouts), rng.randint(1, 3)))
        for lay in layouts:
            lay["p2p_bytes_per_sample"] = float(brng.randint(2 ** 20, 2 ** 26))
        transitions = []
        for a, b in itertools.permutations(layouts, 2):
            if rng.random() < 0.8:
                transitions.append({"from": a["id"], "to": b["id"], "forward": _lin_t(rng, 0, 3e-4),
                                    "backward": _lin_t(rng, 0, 3e-4)})
        strategies = []
        for kind, most in (("decoder", max_dec), ("embedding", max_ends), ("head", max_ends)):
            pool = [(lay, sh, rc) for lay in layouts for sh in SHARDINGS for rc in (False, True)]
            if kind == "head" and tied and pp == 1:
                emb_keys = {(s["layout"], s["dp_sharding"]) for s in strategies if s["layer"] == "embedding"}
                pool = [c for c in pool if (c[0]["id"], c[1]) in emb_keys]
            for lay, sh, rc in rng.sample(pool, min(len(pool), rng.randint(1, most))):
                scale = 1.0 if kind == "decoder" else 0.5
                fwd = _lin_t(rng, 1e-3 * scale / lay["tp"], 3e-3 * scale / lay["tp"])
                bwd = {"fixed_s": fwd["fixed_s"] * 2, "per_sample_s": fwd["per_sample_s"] * rng.uniform(1.5, 3)}
                if rc:
                    bwd["per_sample_s"] += fwd["per_sample_s"]
                zero3 = sh == "zero3" and lay["dp"] > 1
                opt = {"optimizer_step_s": orng.uniform(0, 1e-2) / (lay["dp"] if sh != "ddp" else 1)} \
                    if optimizer else {}
                strategies.append({
                    "id": f"{kind[0]}-{lay['id']}-{sh}-{int(rc)}", "layer": kind, "layout": lay["id"],
                    "dp_sharding": sh, "recompute": rc,
                    "time": {"forward": fwd, "backward": bwd,
                             "forward_comm": _lin_t(rng, 0, 2e-4 if lay["tp"] > 1 else 0.0),
                             "backward_comm": _lin_t(rng, 0, 2e-4 if lay["tp"] > 1 else 0.0),
                             "param_gather_forward_s": rng.uniform(0, 5e-3) if zero3 else 0.0,
                             "param_gather_backward_s": rng.uniform(0, 5e-3) if zero3 else 0.0,
                             "grad_reduce_per_microbatch_s":
                                 rng.uniform(0, 5e-3) if sh in ("zero2", "zero3") and lay["dp"] > 1 else 0.0,
                             # ddp's all-reduce; zero1's reduce-scatter and all-gather, once per iteration
                             "grad_sync_s":
                                 rng.uniform(0, 3e-2) if sh in ("ddp", "zero1") and lay["dp"] > 1 else 0.0,
                             **opt},
                    "memory": {"param_bytes": rng.randint(2 ** 26, 2 ** 29),
                               "grad_bytes": rng.randint(2 ** 26, 2 ** 29),
                               "optimizer_bytes": rng.randint(2 ** 26, 2 ** 30),
                               "activation": _lin_b(rng, 2 ** 22, 2 ** 28 if not rc else 2 ** 24),
                               "workspace": _lin_b(rng, 0, 2 ** 26)},
                })
        pipelines.append({"pp": pp, "stage_ranks": S, "layouts": layouts, "transitions": transitions,
                          "strategies": strategies})
    doc = {
        "kind": "cost-model", "schema_version": CURRENT_VERSION["cost-model"],
        "producer": {"name": "galvatron-search-tests", "version": "0", "note": f"synthetic, seed {seed}"},
        "inputs": [],
        "model": {"name": "synth", "family": "llama", "layers": layers, "hidden": 64, "heads": 8, "kv_heads": 8,
                  "ffn_hidden": 176, "vocab_size": 256, "max_seq_len": 64, "tied_embeddings": tied},
        "cluster": {"nodes": nodes, "gpus_per_node": gpus_per_node, "world_size": world,
                    "device": {"type": "cuda", "name": "synthetic"}, "backend": "nccl"},
        "training": {"seq_len": 64, "dtype": "bf16", "optimizer": "adamw",
                     "runtime_overhead_bytes": rng.randint(0, 2 ** 28)},
        "overlap": {"compute_slowdown": rng.uniform(1.0, 1.3), "comm_slowdown": rng.uniform(1.0, 1.3),
                    "measured": True},
        "fits": {"collectives": [], "p2p": [], "compute": []},
        "pipelines": pipelines,
    }
    if optimizer:
        doc["optimizer_step"] = {"fixed_s": orng.uniform(0, 2e-2), "per_param_s": 1e-9, "measured": True}
    return doc


def compositions(total: int, parts: int):
    """Every way to split `total` layers into `parts` stages of at least one layer."""
    for cuts in itertools.combinations(range(1, total), parts - 1):
        yield [0, *cuts, total]


def brute_force(cm: dict, budget: float, B: int, buckets: int = 256, schedules=("1f1b", "gpipe")):
    """Every plan in the search's space, evaluated by the shared objective; (best time, best spec, count)."""
    tables = CostTables(cm)
    L = tables.layers
    best = (np.inf, None)
    count = 0
    for p, pipe in sorted(tables.pipes.items()):
        if p > L:
            continue
        S = pipe.stage_ranks
        dk, ek, hk = pipe.kinds["decoder"], pipe.kinds["embedding"], pipe.kinds["head"]
        for b in [d for d in range(1, B + 1) if B % d == 0]:
            m = B // b
            dec = [r for r in range(len(dk)) if b % dk.dp[r] == 0]
            emb = [r for r in range(len(ek)) if b % ek.dp[r] == 0]
            head = [r for r in range(len(hk)) if b % hk.dp[r] == 0]
            for sched in schedules:
                if sched == "1f1b" and m < p:
                    continue
                for bounds in compositions(L, p):
                    for e in emb:
                        for h in head:
                            if tables.tied and p == 1 and not _same_class(pipe, e, h, S):
                                continue
                            for rows in itertools.product(dec, repeat=L):
                                spec = Spec(pp=p, b=b, m=m, schedule=sched, bounds=bounds, dec=list(rows),
                                            emb=e, head=h)
                                res = evaluate_spec(tables, spec, budget, buckets)
                                count += 1
                                if res["fits"] and res["iteration_time_s"] < best[0]:
                                    best = (res["iteration_time_s"], spec)
    return best[0], best[1], count


def _same_class(pipe, e, h, S):
    el, hl = pipe.layouts[pipe.kinds["embedding"].layout[e]], pipe.layouts[pipe.kinds["head"].layout[h]]
    key = lambda lay: (lay["tp"], canonical_layout(lay["tp"], lay["tp_layout"], S), lay["sp"])  # noqa: E731
    return key(el) == key(hl) and pipe.kinds["embedding"].sharding[e] == pipe.kinds["head"].sharding[h]
