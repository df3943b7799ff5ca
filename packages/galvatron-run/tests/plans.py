"""Hand-built plan documents for the tests, written out per schemas/README.md (rank arithmetic done here, on its own).

    make_plan("tiny-gpt", world=4, layers=[S(tp=2), S(), S(), S()], stages=[(0, 4)], b=4, m=2)
"""
from __future__ import annotations

import copy

from galvatron_contracts.documents import CURRENT_VERSION
from galvatron_contracts.models import load_model_spec


def S(tp=1, layout="consecutive", sp=False, sharding="ddp", recompute=False):
    """A strategy stub; dp is filled in from the stage size."""
    return {"tp": tp, "tp_layout": layout, "sp": sp, "dp_sharding": sharding, "recompute": recompute}


def _groups(size, tp, layout, base):
    dp = size // tp
    if tp in (1, size):
        layout = "consecutive"
    rank = {}
    for j in range(size):
        t, d = (j % tp, j // tp) if layout == "consecutive" else (j // dp, j % dp)
        rank[t, d] = base + j
    return ([[rank[t, d] for t in range(tp)] for d in range(dp)], [[rank[t, d] for d in range(dp)] for t in range(tp)])


def make_plan(model, world, layers, stages, b, m, emb=None, head=None, seq=16, schedule="1f1b", dtype="fp32",
              lr=1e-3, grad_clip=1.0, warmup=1, **model_overrides):
    spec = load_model_spec(model)
    spec.update(model_overrides)
    spec["layers"] = len(layers)
    pp = len(stages)
    size = world // pp

    def full(s):
        out = dict(s)
        out["dp"] = size // s["tp"]
        if s["tp"] in (1, size):
            out["tp_layout"] = "consecutive"
        return out

    layers = [full(s) for s in layers]
    emb, head = full(emb or S()), full(head or S())
    st_docs = []
    for k, (a, e) in enumerate(stages):
        used = layers[a:e] + ([emb] if k == 0 else []) + ([head] if k == pp - 1 else [])
        keys = sorted({(s["tp"], s["tp_layout"]) for s in used})
        lays = []
        for tp, layout in keys:
            tpg, dpg = _groups(size, tp, layout, k * size)
            lays.append({"tp": tp, "tp_layout": layout, "dp": size // tp, "tp_groups": tpg, "dp_groups": dpg})
        st_docs.append({"index": k, "ranks": list(range(k * size, (k + 1) * size)), "layer_start": a,
                        "layer_end": e, "layouts": lays})
    return {"kind": "plan", "schema_version": CURRENT_VERSION["plan"], "producer": {"name": "tests", "version": "0"},
            "model": spec, "cluster": {"nodes": 1, "gpus_per_node": world, "world_size": world},
            "training": {"seq_len": seq, "dtype": dtype,
                         "optimizer": {"name": "adamw", "lr": lr, "min_lr": lr / 10, "weight_decay": 0.1,
                                       "grad_clip": grad_clip, "warmup_steps": warmup},
                         "seed": 1234},
            "global_batch": b * m, "micro_batch_size": b, "micro_batches": m, "schedule": schedule,
            "stages": st_docs, "layers": layers, "embedding": emb, "head": head}


def with_(plan, **changes):
    out = copy.deepcopy(plan)
    out.update(changes)
    return out
