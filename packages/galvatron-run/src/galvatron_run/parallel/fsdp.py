"""Data-parallel sharding with FSDP2 ``fully_shard`` on each layer's own dp mesh: zero3 reshards the parameters
after forward, zero2 keeps them unsharded until backward; ddp is not FSDP (grads.py all-reduces its gradients once
per iteration, where FSDP2 would reduce after every micro-batch)."""
from __future__ import annotations

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard


def apply_fsdp(modules: list[nn.Module], mode: str, dp_mesh: DeviceMesh, dtype: torch.dtype) -> bool:
    """One FSDP2 unit over ``modules`` (a layer; or the embedding and head that share a tied weight, so the weight
    is sharded, gathered and reduced once); returns whether ``mode`` shards at all."""
    if mode == "ddp":
        return False
    mp = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32) if dtype != torch.float32 else None
    kwargs = {"mp_policy": mp} if mp is not None else {}
    fully_shard(modules if len(modules) > 1 else modules[0], mesh=dp_mesh, reshard_after_forward=(mode == "zero3"),
                **kwargs)
    modules[0].set_gradient_divide_factor(1.0)   # gradients are summed: the loss is already a global mean
    modules[0].set_force_sum_reduction_for_comms(True)   # plain SUM (gloo has no PREMUL_SUM)
    return True


def wrap_root(stage: nn.Module, units: list, dp_mesh: DeviceMesh | None) -> None:
    """One FSDP root over the stage so that per-layer units are not roots (a root never reshards after forward);
    ``dp_mesh``: the mesh of a sharded unit, None when no unit is sharded (no root is needed)."""
    if dp_mesh is None:
        return
    ignored = {p for u in units if not u.fsdp for p in u.module.parameters()}
    fully_shard(stage, mesh=dp_mesh, reshard_after_forward=False, ignored_params=ignored)
