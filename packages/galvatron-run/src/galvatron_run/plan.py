"""The runtime's side of a plan: where a layer's activation lives, the checked plan of a launch, the uniform
"global" plan, the one-line summary. Pure, no torch.

The rank rule and every check of a plan are galvatron_contracts' (ranks.py, plan.py): ``checked_plan`` is the
runtime's one call of them, on every rank before any process group exists. Re-exported from there:
``vocab_shard``; thin wrappers of it: ``Layout`` (a contracts Layout plus sequence parallelism and the activation
block), ``groups`` (ranks.rank_groups of a stage given by size and first rank).

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

from galvatron_contracts import plan as contracts_plan
from galvatron_contracts.documents import CURRENT_VERSION, InfeasibleError, UsageError, producer
from galvatron_contracts.names import plan_summary
from galvatron_contracts.pipeline import even_split
from galvatron_contracts.plan import Plan, check_world, vocab_shard
from galvatron_contracts.ranks import canonical_layout, rank_groups, stage_ranks

__all__ = ["Layout", "Plan", "checked_plan", "groups", "prepared_plan", "strategies", "summary", "uniform_plan",
           "vocab_shard"]

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
        layout = canonical_layout(strategy["tp"], strategy["tp_layout"], strategy["tp"] * strategy["dp"])
        return cls(strategy["tp"], layout, bool(strategy["sp"]) and strategy["tp"] > 1, strategy["dp"])

    @property
    def rank_layout(self) -> contracts_plan.Layout:
        """The rank layout (coordinates and groups by galvatron_contracts.ranks)."""
        return contracts_plan.Layout(self.tp, self.tp_layout, self.dp)

    def coords(self, j: int) -> tuple[int, int]:
        """(tp_rank, dp_rank) of local index j."""
        return self.rank_layout.coords(j)

    def index(self, tp_rank: int, dp_rank: int) -> int:
        return self.rank_layout.index(tp_rank, dp_rank)

    def block(self, j: int, b: int, s: int) -> tuple[int, int, int, int]:
        """(row0, rows, seq0, seqs): the part of a [b, s, h] micro-batch activation local index j holds."""
        tp_rank, dp_rank = self.coords(j)
        rows = b // self.dp
        seqs = s // self.tp if self.sp else s
        return dp_rank * rows, rows, (tp_rank * seqs if self.sp else 0), seqs

    def mesh(self, base: int) -> list[list[int]]:
        """Global ranks as a [dp][tp] grid (the 2-D DeviceMesh of this layout in a stage starting at base)."""
        return self.rank_layout.mesh(base)

    def key(self) -> tuple:
        return (self.tp, self.tp_layout, self.dp)


def groups(size: int, tp: int, tp_layout: str, base: int = 0) -> tuple[list[list[int]], list[list[int]]]:
    """(tp_groups, dp_groups) of a stage of ``size`` ranks starting at global rank ``base``."""
    return rank_groups(range(base, base + size), tp, tp_layout)


def strategies(plan: dict) -> list[tuple[str, dict]]:
    """[(name, strategy)] for embedding, every decoder layer and the head, with names as in the plan's paths."""
    return ([("embedding", plan["embedding"])] + [(f"layers[{i}]", s) for i, s in enumerate(plan["layers"])]
            + [("head", plan["head"])])


def checked_plan(plan: dict, world_size: int, source: str = "plan", *, dtype: str | None = None,
                 seq_len: int | None = None) -> Plan:
    """The plan a launch runs: the command line's overrides applied (``prepared_plan``), parsed and checked once.

    DocumentError (exit 3) for a plan wrong in any world, InfeasibleError (exit 4) when it is for another world
    size than ``world_size``: galvatron_contracts.plan decides which is which."""
    flags = " ".join(f for f in (dtype and f"--dtype {dtype}", seq_len and f"--seq-len {seq_len}") if f)
    typed = Plan.parse(prepared_plan(plan, dtype=dtype, seq_len=seq_len), f"{source} with {flags}" if flags else source)
    check_world(typed, world_size, source)
    return typed


def node_shape_warning(plan: dict, local_world: int) -> str | None:
    """A warning when this job's ranks per node (torchrun's LOCAL_WORLD_SIZE) are not the plan's ``gpus_per_node``:
    groups the plan keeps inside a node (its tp groups, usually) may then cross nodes, and its predicted times,
    priced for the plan's node shape, do not apply. None when they agree."""
    per_node = plan["cluster"]["gpus_per_node"]
    if local_world == per_node:
        return None
    return (f"the plan was made for {per_node} GPUs per node ({plan['cluster']['nodes']} nodes) but this job runs "
            f"{local_world} ranks per node: groups the plan keeps inside a node may cross nodes here, and its "
            f"predicted times do not apply (fit the cost model with galvatron-cost fit --gpus-per-node "
            f"{local_world} and search again)")


def summary(plan: dict) -> str:
    """One line: pp, per-stage layers, per-layer strategies (run-length), micro-batching, schedule."""
    return plan_summary(plan)


def uniform_plan(spec: dict, world_size: int, *, tp: int = 1, pp: int = 1, dp_mode: str = "ddp",
                 recompute: bool = False, sp: bool = False, tp_layout: str = "consecutive", global_batch: int,
                 micro_batches: int, seq_len: int | None = None, dtype: str = "fp32", schedule: str = "1f1b",
                 version: str = "0") -> dict:
    """The "global" configuration as a plan: one strategy for every layer, layers split as evenly as possible."""
    if world_size % pp or (world_size // pp) % tp:
        raise InfeasibleError(f"--tp {tp} --pp {pp} do not divide the world size {world_size}")
    if global_batch % micro_batches:
        raise UsageError(f"--global-batch {global_batch} is not divisible by --micro-batches {micro_batches}")
    size = world_size // pp
    dp = size // tp
    layout = "consecutive" if tp in (1, size) else tp_layout
    strategy = {"tp": tp, "tp_layout": layout, "sp": sp, "dp": dp, "dp_sharding": dp_mode,
                "recompute": recompute}
    n = spec["layers"]
    counts = even_split(n, pp)
    stages, start = [], 0
    for k, c in enumerate(counts):
        ranks = stage_ranks(world_size, pp, k)
        tpg, dpg = rank_groups(ranks, tp, layout)
        stages.append({"index": k, "ranks": ranks, "layer_start": start, "layer_end": start + c,
                       "layouts": [{"tp": tp, "tp_layout": layout, "dp": dp, "tp_groups": tpg, "dp_groups": dpg}]})
        start += c
    ends = {**strategy, "recompute": False}
    return {"kind": "plan", "schema_version": CURRENT_VERSION["plan"],
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
