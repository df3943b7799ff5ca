"""The short text of a layout, a layer strategy and a plan: one format for every tool's ids, tables and summaries.

    layout_name(2, "strided", True, 2)                          # 'tp2s+sp dp2'
    strategy_name({"tp": 2, "tp_layout": "consecutive", "sp": False, "dp": 2,
                   "dp_sharding": "zero3", "recompute": True})  # 'tp2 dp2 zero3 rc'
    plan_summary(plan)      # 'gpt2-small: pp2 [6+6] layers 12x tp2 dp2 zero3 rc; emb tp2 dp2 zero3, head ...'

A layout reads tp{tp}, then 's' when the tp ranks are strided (only where that differs from consecutive: 1 < tp
and dp > 1), '+sp' under sequence parallelism, then dp{dp}. A strategy adds its data-parallel sharding and 'rc'
under recompute. Within one pipeline degree the name tells strategies apart, so the cost model uses it as the id.
"""
from __future__ import annotations

from collections.abc import Mapping

# A layer's data-parallel sharding, least to most sharded (schemas/README.md, "Data-parallel sharding"): ddp
# replicates everything; zero1 shards the optimizer states (and fp32 master parameters); zero2 the gradients too;
# zero3 the parameters as well.
DP_SHARDINGS = ("ddp", "zero1", "zero2", "zero3")


def layout_name(tp: int, tp_layout: str, sp: bool, dp: int) -> str:
    """tp{tp}[s][+sp] dp{dp}, e.g. 'tp1 dp8', 'tp2s+sp dp4'."""
    strided = "s" if tp_layout == "strided" and tp > 1 and dp > 1 else ""
    return f"tp{tp}{strided}{'+sp' if sp and tp > 1 else ''} dp{dp}"


def strategy_name(strategy: Mapping) -> str:
    """A plan's layer strategy (tp, tp_layout, sp, dp, dp_sharding, recompute), e.g. 'tp2 dp2 zero3 rc'."""
    s = strategy
    out = f"{layout_name(s['tp'], s['tp_layout'], bool(s['sp']), s['dp'])} {s['dp_sharding']}"
    return out + (" rc" if s["recompute"] else "")


def runs(names: list[str]) -> str:
    """Run-length text of consecutive equal names: '3x tp2 dp2 ddp, 1x tp1 dp4 zero3'."""
    out: list[list] = []
    for name in names:
        if out and out[-1][0] == name:
            out[-1][1] += 1
        else:
            out.append([name, 1])
    return ", ".join(f"{n}x {name}" for name, n in out)


def plan_summary(plan: Mapping) -> str:
    """One line: model, pipeline degree and layers per stage, per-layer strategies (run-length), embedding and
    head, micro-batching and schedule, sequence length and dtype."""
    stages = "+".join(str(st["layer_end"] - st["layer_start"]) for st in plan["stages"])
    layers = runs([strategy_name(s) for s in plan["layers"]])
    tr = plan["training"]
    return (f"{plan['model']['name']}: pp{len(plan['stages'])} [{stages}] layers {layers}; "
            f"emb {strategy_name(plan['embedding'])}, head {strategy_name(plan['head'])}; "
            f"b={plan['micro_batch_size']} x m={plan['micro_batches']} ({plan['schedule']}), "
            f"seq {tr['seq_len']}, {tr['dtype']}")
