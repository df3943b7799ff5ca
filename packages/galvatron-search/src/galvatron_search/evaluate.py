"""The objective: iteration time and memory of one plan, composed from the cost model's per-layer numbers.

Every plan the search considers, every baseline and any hand-written plan go through `evaluate_spec`, so what
the search optimises and what `galvatron-search evaluate PLAN COST_MODEL` reports are the same function.

Composition, for pp stages, micro-batch size b, m micro-batches (K = m + pp - 1):

    t_i   = sum over the stage's layers of forward + backward per micro-batch (compute, tp/sp communication,
            zero3 gathers and gradient reduce-scatter overlapped with compute, layout changes into each layer)
            + p2p: the activation sent to stage i+1 and the gradient sent back to stage i-1
    x_i   = the stage's once-per-iteration gradient synchronisation (ddp's all-reduce; zero1's reduce-scatter and
            parameter all-gather) not hidden by its last backward
    o_i   = the optimizer step after it: the cost model's optimizer_step.fixed_s + the stage's layers'
            optimizer_step_s (per parameter held; 0 in documents without them)
    s     = the cost model's step_overhead_s: the runtime's per-step synchronisation (and, calibrated, the rest
            of a step's measured remainder), the same on every stage, once per iteration (0 before cost-model 1.2;
            `step_overhead`, which the planner adds to its DP values as it adds optimizer_step.fixed_s)
    c_i   = K * t_i + x_i + o_i + s (m micro-batches and pp - 1 slots of fill and drain, the exposed sync, the step,
                                     the overhead)
    T     = max_i c_i               >= (m + pp - 1) * slowest stage: the bubble is (pp - 1) x the slowest stage
    mem_i = states + inflight_i * activations + receive buffers + max workspace + runtime overhead
            (inflight: 1F1B min(pp - i, m), GPipe m; receive buffers, counted with the activations: m messages
            of b samples in the previous stage's exit layout (i > 0) and m in this stage's exit layout (the
            gradients coming back, i < pp - 1), which torch.distributed.pipelining allocates once and keeps)

The quantisation rule the search works under (conservative: never below the exact bytes): with
avail = budget - overhead and a unit of avail / U bytes (U = buckets, default 256), a stage fits when
sum over its layers of ceil(layer_bytes / unit) + ceil(max workspace / unit) + ceil(each direction's receive
buffers / unit) <= U.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from galvatron_contracts.models import spec_differences
from galvatron_contracts.pipeline import in_flight
from galvatron_contracts.plan import Plan, Strategy, check_world
from galvatron_contracts.ranks import canonical_layout

from .costs import SHARDINGS, CostTables, layer_memory, receive_buffers, units
from .errors import InfeasibleError


@dataclass
class Spec:
    """A plan in cost-model coordinates: strategy rows of the pp entry's kind tables."""

    pp: int
    b: int
    m: int
    schedule: str
    bounds: list[int]          # pp + 1 decoder-layer boundaries
    dec: list[int]             # one decoder strategy row per layer
    emb: int
    head: int


def _chain(spec: Spec, L: int):
    """(kind, row, stage) of every layer in model order: embedding, decoders, head."""
    out = [("embedding", spec.emb, 0)]
    for i in range(spec.pp):
        out += [("decoder", spec.dec[j], i) for j in range(spec.bounds[i], spec.bounds[i + 1])]
    out.append(("head", spec.head, spec.pp - 1))
    return out


def step_overhead(tables: CostTables) -> float:
    """Seconds every iteration adds on every stage beside the layers and the optimizer step (0 where absent)."""
    return float(tables.doc.get("step_overhead_s", 0.0))


def evaluate_spec(tables: CostTables, spec: Spec, budget: float | None = None, buckets: int = 256) -> dict:
    """Iteration time, per-stage times and memory of a plan; with a budget, whether it fits under the rule."""
    pipe = tables.pipeline(spec.pp)
    p, b, m = spec.pp, spec.b, spec.m
    K = m + p - 1
    lcs, trf, trb, p2p = tables.at(p, b)
    chain = _chain(spec, tables.layers)
    stages = []
    for i in range(p):
        stages.append(dict(index=i, compute_fwd=0.0, compute_bwd=0.0, comm=0.0, exposed=0.0, transitions=0.0,
                           p2p=0.0, f=0.0, g=0.0, sync=0.0, opt=tables.optim_fixed, params=0.0, grads=0.0,
                           optim=0.0, act=0.0, ws=0.0, units=0.0, layouts=[],
                           inflight=in_flight(spec.schedule, i, p, m), last_layout=None))
    prev_layout = None
    for kind, row, i in chain:
        st = stages[i]
        k, lc = pipe.kinds[kind], lcs[kind]
        lay = int(k.layout[row])
        if prev_layout is not None:
            st["transitions"] += trf[prev_layout, lay] + trb[prev_layout, lay]
            st["f"] += trf[prev_layout, lay]
            st["g"] += trb[prev_layout, lay]
        if st["last_layout"] is None and i > 0:
            # gradient sent back to stage i-1, in that stage's last layout
            st["p2p"] += p2p[stages[i - 1]["last_layout"]]
            st["g"] += p2p[stages[i - 1]["last_layout"]]
        st["compute_fwd"] += lc.fwd[row]
        st["compute_bwd"] += lc.bwd[row]
        st["comm"] += lc.comm[row]
        st["exposed"] += lc.exposed[row]
        st["f"] += lc.f[row]
        st["g"] += lc.g[row]
        st["sync"] += lc.sync[row]
        st["opt"] += lc.opt[row]
        st["params"] += k.params[row]
        st["grads"] += k.grads[row]
        st["optim"] += k.optim[row]
        st["act"] += lc.act[row]
        st["ws"] = max(st["ws"], lc.ws[row])
        st["layouts"].append(lay)
        st["last_layout"] = lay
        st.setdefault("mems", []).append(layer_memory(lc.states[row], lc.act[row], st["inflight"]))
        prev_layout = lay
    bufs = receive_buffers(pipe, b, m)
    for i, st in enumerate(stages):
        st["buffers"] = []
        if i > 0:
            st["buffers"].append(bufs[stages[i - 1]["last_layout"]])
        if i < p - 1:
            st["p2p"] += p2p[st["last_layout"]]
            st["f"] += p2p[st["last_layout"]]
            st["buffers"].append(bufs[st["last_layout"]])
        st["t"] = st["compute_fwd"] + st["compute_bwd"] + st["comm"] + st["exposed"] + st["transitions"] + st["p2p"]
        st["c"] = K * st["t"] + st["sync"] + st["opt"] + step_overhead(tables)
        st["activations"] = st["inflight"] * st["act"] + sum(st["buffers"])
        st["total"] = st["params"] + st["grads"] + st["optim"] + st["activations"] + st["ws"] + tables.overhead
        if budget is not None:
            avail = budget - tables.overhead
            st["fits"] = bool(avail > 0 and units(np.array(st["mems"]), buckets, avail).sum()
                              + units(st["ws"], buckets, avail) + units(np.array(st["buffers"]), buckets, avail).sum()
                              <= buckets)
    crit = max(range(p), key=lambda i: stages[i]["c"])
    T = stages[crit]["c"]
    result = dict(iteration_time_s=T, critical_stage=crit, stages=stages, K=K)
    if budget is not None:
        result["fits"] = all(st["fits"] for st in stages)
    return result


def predictions(tables: CostTables, spec: Spec, result: dict) -> dict:
    """The plan document's `predictions` section."""
    T = result["iteration_time_s"]
    B = spec.b * spec.m
    seq = int(tables.doc["training"]["seq_len"])
    st = result["stages"][result["critical_stage"]]
    m = spec.m
    breakdown = {
        "forward_compute_s": m * st["compute_fwd"],
        "backward_compute_s": m * st["compute_bwd"],
        "tp_communication_s": m * st["comm"],
        "zero_communication_exposed_s": m * st["exposed"],
        "layout_transitions_s": m * st["transitions"],
        "pipeline_p2p_s": m * st["p2p"],
        "pipeline_bubble_s": (spec.pp - 1) * st["t"],
        "grad_sync_exposed_s": st["sync"],
        "optimizer_step_s": st["opt"],
        "step_overhead_s": step_overhead(tables),
    }
    return {
        "iteration_time_s": T,
        "samples_per_s": B / T if T > 0 else 0.0,
        "tokens_per_s": B * seq / T if T > 0 else 0.0,
        "stages": [{
            "index": s["index"],
            "memory_bytes_per_rank": {"params": s["params"], "grads": s["grads"], "optimizer": s["optim"],
                                      "activations": s["activations"], "workspace": s["ws"],
                                      "overhead": tables.overhead, "total": s["total"]},
            "forward_s": s["f"], "backward_s": s["g"], "grad_sync_exposed_s": s["sync"],
        } for s in result["stages"]],
        "breakdown": breakdown,
    }


# --- a plan document -> Spec -----------------------------------------------------------------------------------

def _strategy_row(pipe, kind: str, s: Strategy, where: str, cost_model: str) -> int:
    key = (s.tp, canonical_layout(s.tp, s.tp_layout, pipe.stage_ranks), s.sp, s.dp)
    lay = pipe.layout_index.get(key)
    if lay is None:
        raise InfeasibleError(f"{where}: the cost model {cost_model} has no layout tp={s.tp} {key[1]} sp={s.sp} "
                              f"dp={s.dp} for pp={pipe.pp}")
    row = pipe.strategy_index.get((kind, lay, s.dp_sharding, s.recompute))
    if row is None:
        raise InfeasibleError(f"{where}: the cost model {cost_model} has no {kind} strategy with layout "
                              f"{pipe.layouts[lay]['id']}, {s.dp_sharding}, recompute={s.recompute}")
    return row


def plan_spec(plan: dict, tables: CostTables, source: str = "plan") -> Spec:
    """Map a plan onto the cost model's strategy rows.

    The plan's own faults are galvatron_contracts.plan's (DocumentError, exit 3: the checks every tool makes of a
    plan); a plan for another cluster, model (any field of the spec) or sequence length than the cost model's, or
    one using what the cost model does not price, is InfeasibleError (exit 4)."""
    typed = Plan.parse(plan, source)
    cm, cm_name = tables.doc, tables.source
    check_world(typed, cm["cluster"]["world_size"], source, world=f"the cluster of the cost model {cm_name}")
    for key in ("nodes", "gpus_per_node"):
        if getattr(typed, key) != cm["cluster"][key]:
            raise InfeasibleError(f"{source}: $.cluster.{key} is {getattr(typed, key)}, the cluster of the cost "
                                  f"model {cm_name} has {cm['cluster'][key]}")
    differences = spec_differences(typed.model, cm["model"], "the cost model's")
    if differences:
        raise InfeasibleError(f"{source}: $.model: another model than that of the cost model {cm_name}: "
                              + ", ".join(differences))
    if typed.seq_len != cm["training"]["seq_len"]:
        raise InfeasibleError(f"{source}: $.training.seq_len {typed.seq_len} differs from the cost "
                              f"model {cm_name}'s {cm['training']['seq_len']}")
    if typed.pp not in tables.pipes:
        raise InfeasibleError(f"{source}: pipeline degree {typed.pp} is not in the cost model {cm_name} "
                              f"(it has {sorted(tables.pipes)})")
    pipe = tables.pipeline(typed.pp)
    for st in typed.stages[1:-1]:
        if not st.layers:
            raise InfeasibleError(f"{source}: $.stages[{st.index}]: a middle stage without decoder layers")
    dec = [_strategy_row(pipe, "decoder", s, f"{source}: $.layers[{j}]", cm_name) for j, s in enumerate(typed.layers)]
    emb = _strategy_row(pipe, "embedding", typed.embedding, f"{source}: $.embedding", cm_name)
    head = _strategy_row(pipe, "head", typed.head, f"{source}: $.head", cm_name)
    return Spec(pp=typed.pp, b=typed.micro_batch_size, m=typed.micro_batches, schedule=typed.schedule,
                bounds=[0] + [st.layer_end for st in typed.stages], dec=dec, emb=emb, head=head)


def evaluate(plan: dict, cost_model: dict | CostTables, source: str = "plan") -> dict:
    """Predictions for any plan (the search's or a hand-written one) under a cost model."""
    tables = cost_model if isinstance(cost_model, CostTables) else CostTables(cost_model)
    spec = plan_spec(plan, tables, source)
    return predictions(tables, spec, evaluate_spec(tables, spec))


def strategy_dict(pipe, kind: str, row: int) -> dict:
    k = pipe.kinds[kind]
    lay = pipe.layouts[int(k.layout[row])]
    return {"tp": int(lay["tp"]), "tp_layout": canonical_layout(lay["tp"], lay["tp_layout"], pipe.stage_ranks),
            "sp": bool(lay["sp"]), "dp": int(lay["dp"]), "dp_sharding": SHARDINGS[int(k.sharding[row])],
            "recompute": bool(k.recompute[row])}
