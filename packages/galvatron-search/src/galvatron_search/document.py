"""Plan documents: the spec written out with ranks and groups (galvatron_contracts.ranks), predictions, the
search record. Plans read in one line as galvatron_contracts.names.plan_summary."""
from __future__ import annotations

import dataclasses

from galvatron_contracts.documents import CURRENT_VERSION, digest, producer
from galvatron_contracts.names import plan_summary
from galvatron_contracts.ranks import rank_groups, stage_ranks

from . import __version__
from .costs import CostTables
from .evaluate import Spec, evaluate_spec, predictions, strategy_dict
from .planner import INF, Options, global_batches, uniform_best

summary = plan_summary          # the name integration_tests/bench/search_bench.py imports from here


def plan_body(tables: CostTables, spec: Spec) -> dict:
    cm = tables.doc
    pipe = tables.pipeline(spec.pp)
    layers = [strategy_dict(pipe, "decoder", r) for r in spec.dec]
    emb = strategy_dict(pipe, "embedding", spec.emb)
    head = strategy_dict(pipe, "head", spec.head)
    stages = []
    for k in range(spec.pp):
        ranks = stage_ranks(tables.world, spec.pp, k)
        used = layers[spec.bounds[k]:spec.bounds[k + 1]] + ([emb] if k == 0 else [])
        used += [head] if k == spec.pp - 1 else []
        seen, lays = set(), []
        for s in used:
            key = (s["tp"], s["tp_layout"])
            if key in seen:
                continue
            seen.add(key)
            tg, dg = rank_groups(ranks, s["tp"], s["tp_layout"])
            lays.append({"tp": s["tp"], "tp_layout": s["tp_layout"], "dp": len(ranks) // s["tp"], "tp_groups": tg,
                         "dp_groups": dg})
        stages.append({"index": k, "ranks": ranks, "layer_start": spec.bounds[k],
                       "layer_end": spec.bounds[k + 1], "layouts": lays})
    cluster = {key: cm["cluster"][key] for key in ("nodes", "gpus_per_node", "world_size", "device", "backend")}
    return {
        "kind": "plan", "schema_version": CURRENT_VERSION["plan"],
        "producer": producer("galvatron-search", __version__),
        "model": cm["model"], "cluster": cluster,
        "training": {"seq_len": cm["training"]["seq_len"], "dtype": cm["training"]["dtype"],
                     "optimizer": {"name": cm["training"]["optimizer"]}},
        "global_batch": spec.b * spec.m, "micro_batch_size": spec.b, "micro_batches": spec.m,
        "schedule": spec.schedule, "stages": stages, "layers": layers, "embedding": emb, "head": head,
    }


BASELINES = [
    ("ddp", "pure data parallel: one stage, tp 1, ddp", dict(pp=(1,), tp=(1,), shardings=("ddp",))),
    ("zero3", "pure ZeRO-3 (FSDP): one stage, tp 1, zero3", dict(pp=(1,), tp=(1,), shardings=("zero3",))),
    ("tp-node", "tensor parallel within a node (consecutive), data parallel (ddp) across nodes", None),
    ("uniform-3d", "best uniform tp x pp x dp (Megatron-style hand-tuned): one strategy for every layer, "
                   "even layer split", dict()),
]


def baselines(tables: CostTables, opts: Options) -> list[dict]:
    out = []
    base = Options(memory_bytes=opts.memory_bytes, global_batch=opts.global_batch,
                   min_global_batch=opts.min_global_batch, max_global_batch=opts.max_global_batch,
                   buckets=opts.buckets, memory_margin=opts.memory_margin)
    for name, desc, restrict in BASELINES:
        if restrict is None:
            restrict = dict(pp=(1,), tp=(min(tables.gpus_per_node, tables.world),), tp_layouts=("consecutive",),
                            shardings=("ddp",))
        o = dataclasses.replace(base, uniform=True, **restrict)
        best = (0.0, None, None)
        for B in global_batches(tables, o):
            T, spec, _ = uniform_best(tables, o, B, o.usable_bytes)
            if spec is not None and T < INF and B / T > best[0]:
                best = (B / T, spec, T)
        rec = {"name": name, "description": desc, "feasible": best[1] is not None}
        if best[1] is not None:
            spec = best[1]
            res = evaluate_spec(tables, spec)
            rec.update(iteration_time_s=res["iteration_time_s"],
                       samples_per_s=spec.b * spec.m / res["iteration_time_s"],
                       global_batch=spec.b * spec.m,
                       memory_bytes_per_rank=max(s["total"] for s in res["stages"]),
                       summary=plan_summary(plan_body(tables, spec)))
            rec["_spec"] = spec
        else:
            rec.update(iteration_time_s=None, samples_per_s=None, global_batch=None, memory_bytes_per_rank=None)
        out.append(rec)
    return out


def plan_document(tables: CostTables, spec: Spec, opts: Options, seconds: float, candidates: int,
                  base: list[dict] | None) -> dict:
    doc = plan_body(tables, spec)
    doc["predictions"] = predictions(tables, spec, evaluate_spec(tables, spec))
    record = {"time_s": seconds, "candidates_evaluated": int(candidates),
              "memory_budget_bytes": int(opts.memory_bytes), "cost_model_sha256": digest(tables.doc),
              "options": opts.as_dict()}
    if base is not None:
        record["baselines"] = [{k: v for k, v in b.items() if not k.startswith("_")} for b in base]
    doc["search"] = record
    return doc
