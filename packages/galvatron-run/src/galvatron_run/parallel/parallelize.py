"""``parallelize_stage``: every parallelism of one pipeline stage, applied in one place and in order (tensor parallel,
recompute, FSDP2, the FSDP root), one plan entry (embedding, decoder layer, head) at a time."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from galvatron_models import Decoder, sp_partial_params

from ..plan import Layout
from .fsdp import apply_fsdp, wrap_root
from .mesh import Env
from .tensor_parallel import apply_tp


@dataclass
class Unit:
    """One plan entry (embedding, a decoder layer, the head) as built on this rank."""

    name: str                 # plan path, e.g. "layers[3]"
    kind: str                 # "embedding" | "decoder" | "head" (galvatron_models.sharding's layer kinds)
    module: nn.Module
    strategy: dict
    layout: Layout
    fsdp: bool = False
    owned: list = field(default_factory=list)         # names of its parameters (a tied weight: the embedding's)
    tp_sharded: set = field(default_factory=set)      # parameter names (in module) sharded by TP
    sp_partial: list = field(default_factory=list)    # names of parameters whose gradient is partial over tp (sp)

    def parameters(self) -> list[tuple[str, nn.Parameter]]:
        """(name, parameter) of each parameter the unit owns, looked up now (FSDP replaces them)."""
        return [(n, self.module.get_parameter(n)) for n in self.owned]


def stage_units(stage: Decoder, plan: dict, layouts: dict) -> list[Unit]:
    """The plan entries ``stage`` holds, in forward order; ``layouts``: {"embedding" | "head" | layer index: Layout}."""
    units = []
    if stage.embedding is not None:
        units.append(Unit("embedding", "embedding", stage.embedding, plan["embedding"], layouts["embedding"]))
    for i, block in stage.layers.items():
        i = int(i)
        units.append(Unit(f"layers[{i}]", "decoder", block, plan["layers"][i], layouts[i]))
    if stage.head is not None:
        units.append(Unit("head", "head", stage.head, plan["head"], layouts["head"]))
    return units


def parallelize_stage(stage: Decoder, plan: dict, layouts: dict, env: Env, seq_len: int,
                      dtype: torch.dtype) -> list[Unit]:
    """Apply the plan to ``stage`` (built on the meta device) and return its units.

    A stage holding both ends of a tied model (pp == 1) has one tied weight, the embedding's, which the head uses;
    the plan gives the two the same tp, tp_layout and dp_sharding, and FSDP shards them as one unit."""
    family = plan["model"]["family"]
    units = stage_units(stage, plan, layouts)
    tied = stage.embedding is not None and stage.head is not None and plan["model"]["tied_embeddings"]
    for u in units:                                                    # 1. tensor (and sequence) parallel
        u.tp_sharded = apply_tp(u.module, u.kind, family, u.layout, env, seq_len)
        u.sp_partial = sp_partial_params(u.kind, family) if u.layout.sp else []
    if tied:
        stage.head.out.weight = stage.embedding.tok.weight           # TP gave each module its own parameter
    seen: set[int] = set()
    for u in units:
        u.owned = [n for n, p in u.module.named_parameters() if id(p) not in seen]
        seen.update(id(p) for p in u.module.parameters())
    for u in units:                                                    # 2. recompute
        if u.kind == "decoder":
            u.module.recompute = bool(u.strategy["recompute"])
    groups = [[u] for u in units]                                      # 3. FSDP2 (zero2 / zero3)
    if tied:
        groups = [[units[0], units[-1]]] + [[u] for u in units[1:-1]]
    for group in groups:
        lead = group[0]
        sharded = apply_fsdp([u.module for u in group], lead.strategy["dp_sharding"], env.mesh(lead.layout)["dp"],
                             dtype)
        for u in group:
            u.fsdp = sharded
    root = next((env.mesh(u.layout)["dp"] for u in units if u.fsdp), None)   # 4. the root
    wrap_root(stage, units, root)
    return units
