"""Tensor parallelism of one layer: galvatron_models' sharding plan of its kind, applied over its layout's tp mesh."""
from __future__ import annotations

from torch import nn
from torch.distributed.tensor import DTensor
from torch.distributed.tensor.parallel import parallelize_module

from galvatron_models import tp_plan

from ..plan import Layout
from .mesh import Env


def apply_tp(module: nn.Module, kind: str, family: str, layout: Layout, env: Env, seq_len: int) -> set[str]:
    """Shard ``module`` (a layer of ``kind``) over its tp mesh; returns the names of the parameters TP shards."""
    if layout.tp == 1:
        return set()
    parallelize_module(module, env.mesh(layout)["tp"], tp_plan(kind, family, layout.sp))
    if kind == "embedding" and layout.sp:
        module.seq_offset = layout.coords(env.j)[0] * (seq_len // layout.tp)     # the first position this rank holds
    return {name for name, p in module.named_parameters()
            if isinstance(p, DTensor) and any(pl.is_shard() for pl in p.placements)}
