"""Plan arithmetic: rank layout, groups, checks against the world, the uniform "global" plan. Pure, no torch.

Convention (CONVENTIONS.md): stage k holds global ranks [k*S, (k+1)*S), S = world / pp. Inside a stage, local
index j: consecutive -> tp_rank = j % tp, dp_rank = j // tp; strided -> tp_rank = j // dp, dp_rank = j % dp.

    >>> Layout(tp=2, tp_layout="strided", sp=False, dp=2).coords(3)
    (1, 1)
    >>> groups(4, 2, "consecutive", base=4)
    ([[4, 5], [6, 7]], [[4, 6], [5, 7]])
    >>> vocab_shard(50257, 2, 1)
    (25129, 25128)
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

from galvatron_contracts.documents import DocumentError, InfeasibleError, producer

PRODUCER = "galvatron-run"


@dataclass(frozen=True)
class Layout:
    """Where a layer's activation lives: tp ranks replicate (or, with sp, split the sequence of) dp's rows."""

    tp: int
    tp_layout: str
    sp: bool
    dp: int

    @classmethod
    def of(cls, strategy: dict) -> Layout:
        layout = "consecutive" if strategy["tp"] == 1 or strategy["dp"] == 1 else strategy["tp_layout"]
        return cls(strategy["tp"], layout, bool(strategy["sp"]) and strategy["tp"] > 1, strategy["dp"])

    def coords(self, j: int) -> tuple[int, int]:
        """(tp_rank, dp_rank) of local index j."""
        if self.tp_layout == "consecutive":
            return j % self.tp, j // self.tp
        return j // self.dp, j % self.dp

    def index(self, tp_rank: int, dp_rank: int) -> int:
        return dp_rank * self.tp + tp_rank if self.tp_layout == "consecutive" else tp_rank * self.dp + dp_rank

    def block(self, j: int, b: int, s: int) -> tuple[int, int, int, int]:
        """(row0, rows, seq0, seqs): the part of a [b, s, h] micro-batch activation local index j holds."""
        tp_rank, dp_rank = self.coords(j)
        rows = b // self.dp
        seqs = s // self.tp if self.sp else s
        return dp_rank * rows, rows, (tp_rank * seqs if self.sp else 0), seqs

    def mesh(self, base: int) -> list[list[int]]:
        """Global ranks as a [dp][tp] grid (the 2-D DeviceMesh of this layout in a stage starting at base)."""
        return [[base + self.index(t, d) for t in range(self.tp)] for d in range(self.dp)]

    def key(self) -> tuple:
        return (self.tp, self.tp_layout, self.dp)


def vocab_shard(vocab: int, tp: int, tp_rank: int) -> tuple[int, int]:
    """(first id, count) of a vocabulary-parallel shard: torch.chunk's split, as DTensor's Shard(0) cuts it."""
    step = -(-vocab // tp)
    start = min(tp_rank * step, vocab)
    return start, min(step, vocab - start)


def groups(size: int, tp: int, tp_layout: str, base: int = 0) -> tuple[list[list[int]], list[list[int]]]:
    """(tp_groups, dp_groups) of a stage of ``size`` ranks starting at global rank ``base``."""
    lay = Layout(tp, "consecutive" if tp in (1, size) else tp_layout, False, size // tp)
    grid = lay.mesh(base)
    return [list(row) for row in grid], [[grid[d][t] for d in range(lay.dp)] for t in range(tp)]


def strategies(plan: dict) -> list[tuple[str, dict]]:
    """[(name, strategy)] for embedding, every decoder layer and the head, with names as in the plan's paths."""
    return ([("embedding", plan["embedding"])] + [(f"layers[{i}]", s) for i, s in enumerate(plan["layers"])]
            + [("head", plan["head"])])


def check_plan(plan: dict, world_size: int, source: str = "plan") -> None:
    """Raise DocumentError (exit 3) for a self-inconsistent plan, InfeasibleError (exit 4) when it cannot run here.

    Everything a rank would otherwise discover half-way through building process groups is checked here, on every
    rank, before any group exists."""
    spec, tr = plan["model"], plan["training"]
    bad: list[str] = []
    pp = len(plan["stages"])
    if len(plan["layers"]) != spec["layers"]:
        bad.append(f"$.layers: expected {spec['layers']} entries (the model's layers), got {len(plan['layers'])}")
    if plan["global_batch"] != plan["micro_batch_size"] * plan["micro_batches"]:
        bad.append(f"$.global_batch: expected micro_batch_size * micro_batches = "
                   f"{plan['micro_batch_size'] * plan['micro_batches']}, got {plan['global_batch']}")
    expect = 0
    for k, st in enumerate(plan["stages"]):
        if st["index"] != k:
            bad.append(f"$.stages[{k}].index: expected {k}, got {st['index']}")
        if st["layer_start"] != expect or st["layer_end"] < st["layer_start"]:
            bad.append(f"$.stages[{k}].layer_start: expected {expect} (stages cover the layers in order), "
                       f"got [{st['layer_start']}, {st['layer_end']})")
        expect = st["layer_end"]
    if expect != len(plan["layers"]):
        bad.append(f"$.stages[{pp - 1}].layer_end: expected {len(plan['layers'])} (the last layer), got {expect}")
    for name, s in strategies(plan):
        if s["tp"] * s["dp"] != plan["cluster"]["world_size"] // max(pp, 1):
            bad.append(f"$.{name}: tp * dp = {s['tp'] * s['dp']}, expected the stage's rank count "
                       f"{plan['cluster']['world_size'] // pp}")
        if s["sp"] and s["tp"] == 1:
            bad.append(f"$.{name}.sp: sequence parallelism needs tp > 1")
    if bad:
        raise DocumentError(source, bad)

    infeasible: list[str] = []
    if plan["cluster"]["world_size"] != world_size:
        infeasible.append(f"$.cluster.world_size: the plan is for {plan['cluster']['world_size']} ranks, "
                          f"this world has {world_size}")
    if world_size % pp:
        infeasible.append(f"$.stages: {pp} stages do not divide the world size {world_size}")
    if infeasible:
        raise InfeasibleError(f"{source}: " + "; ".join(infeasible))
    size = world_size // pp
    seq = tr["seq_len"]
    if seq > spec["max_seq_len"]:
        infeasible.append(f"$.training.seq_len: {seq} exceeds the model's max_seq_len {spec['max_seq_len']}")
    b = plan["micro_batch_size"]
    for name, s in strategies(plan):
        tp, dp = s["tp"], s["dp"]
        if size % tp:
            infeasible.append(f"$.{name}.tp: {tp} does not divide the stage's {size} ranks")
        if b % dp:
            infeasible.append(f"$.{name}.dp: micro_batch_size {b} is not divisible by dp {dp}")
        if s["sp"] and seq % tp:
            infeasible.append(f"$.{name}.sp: seq_len {seq} is not divisible by tp {tp}")
        if name in ("embedding", "head"):
            if spec["vocab_size"] < tp:
                infeasible.append(f"$.{name}.tp: vocab_size {spec['vocab_size']} is smaller than tp {tp}")
        else:
            for field in ("heads", "kv_heads", "ffn_hidden"):
                if spec[field] % tp:
                    infeasible.append(f"$.{name}.tp: the model's {field} {spec[field]} is not divisible by tp {tp}")
    if plan["schedule"] == "1f1b" and pp > 1 and plan["micro_batches"] < pp:
        infeasible.append(f"$.micro_batches: 1f1b needs at least as many micro-batches as stages "
                          f"({plan['micro_batches']} < {pp})")
    if spec["tied_embeddings"] and pp == 1:
        e, h = plan["embedding"], plan["head"]
        if (e["tp"], Layout.of(e).tp_layout, e["dp_sharding"]) != (h["tp"], Layout.of(h).tp_layout, h["dp_sharding"]):
            infeasible.append("$.head: tied embeddings in one stage need the head to have the embedding's tp, "
                              "tp_layout and dp_sharding")
    for k, st in enumerate(plan["stages"]):
        want = list(range(k * size, (k + 1) * size))
        if st["ranks"] != want:
            infeasible.append(f"$.stages[{k}].ranks: expected {want} (stage k holds ranks [k*S, (k+1)*S)), "
                              f"got {st['ranks']}")
            continue
        have = {(lay["tp"], "consecutive" if lay["tp"] in (1, size) else lay["tp_layout"]): lay
                for lay in st["layouts"]}
        for i, lay in enumerate(st["layouts"]):
            tpg, dpg = groups(size, lay["tp"], lay["tp_layout"], base=k * size) if size % lay["tp"] == 0 else ([], [])
            if lay["tp"] * lay["dp"] != size or lay["tp_groups"] != tpg or lay["dp_groups"] != dpg:
                infeasible.append(f"$.stages[{k}].layouts[{i}]: groups do not follow the rank convention "
                                  f"(expected tp_groups {tpg}, dp_groups {dpg})")
        used = [plan["layers"][i] for i in range(st["layer_start"], st["layer_end"])]
        used += [plan["embedding"]] if k == 0 else []
        used += [plan["head"]] if k == pp - 1 else []
        for s in used:
            if (s["tp"], Layout.of(s).tp_layout) not in have and size % s["tp"] == 0:
                infeasible.append(f"$.stages[{k}].layouts: no entry for tp {s['tp']} {s['tp_layout']} "
                                  f"used by the stage's layers")
                break
    if infeasible:
        raise InfeasibleError(f"{source}: the plan cannot run on this world:\n  " + "\n  ".join(infeasible))


def summary(plan: dict) -> str:
    """One line: pp, per-stage layers, per-layer strategies (run-length), micro-batching, schedule."""
    def fmt(s):
        out = f"tp{s['tp']}{'s' if s['tp_layout'] == 'strided' and s['tp'] > 1 and s['dp'] > 1 else ''}"
        out += f"{'+sp' if s['sp'] else ''}/dp{s['dp']}-{s['dp_sharding']}{'/rc' if s['recompute'] else ''}"
        return out

    runs: list[list] = []
    for s in plan["layers"]:
        f = fmt(s)
        if runs and runs[-1][0] == f:
            runs[-1][1] += 1
        else:
            runs.append([f, 1])
    layers = " ".join(f"{n}x{f}" for f, n in runs)
    stages = "+".join(str(st["layer_end"] - st["layer_start"]) for st in plan["stages"])
    return (f"{plan['model']['name']}: pp{len(plan['stages'])} [{stages}] layers {layers}; "
            f"emb {fmt(plan['embedding'])}, head {fmt(plan['head'])}; b={plan['micro_batch_size']} "
            f"x m={plan['micro_batches']} ({plan['schedule']}), seq {plan['training']['seq_len']}, "
            f"{plan['training']['dtype']}")


def uniform_plan(spec: dict, world_size: int, *, tp: int = 1, pp: int = 1, dp_mode: str = "ddp",
                 recompute: bool = False, sp: bool = False, tp_layout: str = "consecutive", global_batch: int,
                 micro_batches: int, seq_len: int | None = None, dtype: str = "fp32", schedule: str = "1f1b",
                 version: str = "0") -> dict:
    """The "global" configuration as a plan: one strategy for every layer, layers split as evenly as possible."""
    if world_size % pp or (world_size // pp) % tp:
        raise InfeasibleError(f"--tp {tp} --pp {pp} do not divide the world size {world_size}")
    if global_batch % micro_batches:
        raise InfeasibleError(f"--global-batch {global_batch} is not divisible by --micro-batches {micro_batches}")
    size = world_size // pp
    dp = size // tp
    layout = "consecutive" if tp in (1, size) else tp_layout
    strategy = {"tp": tp, "tp_layout": layout, "sp": sp and tp > 1, "dp": dp, "dp_sharding": dp_mode,
                "recompute": recompute}
    n = spec["layers"]
    counts = [n // pp + (1 if k < n % pp else 0) for k in range(pp)]
    stages, start = [], 0
    for k, c in enumerate(counts):
        tpg, dpg = groups(size, tp, layout, base=k * size)
        stages.append({"index": k, "ranks": list(range(k * size, (k + 1) * size)), "layer_start": start,
                       "layer_end": start + c,
                       "layouts": [{"tp": tp, "tp_layout": layout, "dp": dp, "tp_groups": tpg, "dp_groups": dpg}]})
        start += c
    ends = {**strategy, "recompute": False}
    return {"kind": "plan", "schema_version": "1.0",
            "producer": producer(PRODUCER, version, "uniform plan built by galvatron-run's global mode"),
            "model": spec,
            "cluster": {"nodes": 1, "gpus_per_node": world_size, "world_size": world_size},
            "training": {"seq_len": seq_len or spec["max_seq_len"], "dtype": dtype, "optimizer": {"name": "adamw"}},
            "global_batch": global_batch, "micro_batch_size": global_batch // micro_batches,
            "micro_batches": micro_batches, "schedule": schedule, "stages": stages,
            "layers": [dict(strategy) for _ in range(n)], "embedding": dict(ends), "head": dict(ends)}


def prepared_plan(plan: dict, *, dtype: str | None, seq_len: int | None) -> dict:
    """The plan with the command line's overrides applied (the report cites the plan as given)."""
    out = copy.deepcopy(plan)
    if dtype:
        out["training"]["dtype"] = dtype
    if seq_len:
        out["training"]["seq_len"] = seq_len
    return out
