"""Gradients after the last micro-batch: ddp's all-reduce over each layer's dp group (launched during the last
backward by buckets.py, completed here), the sequence-parallel partial sums over tp, the tied embedding's two copies
summed across the first and last stage, and clipping by the global norm with every element counted once over all
meshes."""
from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor, distribute_tensor

from .buckets import DdpBuckets, match_placement
from .mesh import Env


def local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if isinstance(t, DTensor) else t


def _all_reduce_flat(tensors: list[torch.Tensor], group) -> None:
    tensors = [t for t in tensors if t is not None]
    if not tensors:
        return
    flat = torch.cat([t.reshape(-1).float() for t in tensors])
    dist.all_reduce(flat, group=group)
    i = 0
    for t in tensors:
        n = t.numel()
        t.copy_(flat[i:i + n].view_as(t))
        i += n


@torch.no_grad()
def sync_grads(units: list, env: Env, tie: tuple[nn.Parameter | None, nn.Parameter | None] | None,
               tie_same_layout: bool = True, ddp: DdpBuckets | None = None) -> None:
    """ddp all-reduce over dp, sp partial sums over tp; ``tie``: this rank's (embedding weight, head copy) of a
    tied embedding split over stages (None: untied, or one stage where the head uses the embedding's weight).

    ``ddp``: the step's buckets, armed during backward (their all-reduces are already under way); None: all of
    them are launched here."""
    for u in units:
        for _, p in u.parameters():
            match_placement(p)
    (ddp if ddp is not None else DdpBuckets(units, env)).wait()
    for u in units:
        if u.sp_partial:
            params = [u.module.get_parameter(n) for n in u.sp_partial]     # looked up now: FSDP replaces them
            _all_reduce_flat([local(p.grad) for p in params if p.grad is not None], env.tp_group(u.layout))
    if tie is None or (tie[0] is None and tie[1] is None):     # middle stages hold neither copy: nothing to exchange
        return
    emb, head = tie
    pair = env.group(sorted({env.j, (env.pp - 1) * env.size + env.j}))
    g = (emb if emb is not None else head).grad
    if tie_same_layout:               # rank j's shard is the same slice at both ends
        dist.all_reduce(local(g), group=pair)
    else:                             # different layouts: sum the full gradients, keep each end's shard
        full = g.full_tensor() if isinstance(g, DTensor) else g.clone()
        dist.all_reduce(full, group=pair)
        if isinstance(g, DTensor):
            local(g).copy_(distribute_tensor(full, g.device_mesh, g.placements, src_data_rank=None).to_local())
        else:
            g.copy_(full)


@torch.no_grad()
def clip_grads(units: list, max_norm: float | None, skip: set[int], device: torch.device) -> float:
    """Global L2 norm of every gradient, each element counted once over all ranks; scale them to ``max_norm``.

    ``skip``: ids of parameters that duplicate another (the last stage's copy of a tied embedding)."""
    sq = torch.zeros((), dtype=torch.float64, device=device)
    grads = []
    for u in units:
        tp, dp = u.layout.tp, u.layout.dp
        for name, p in u.parameters():
            if p.grad is None:
                continue
            g = local(p.grad)
            grads.append(g)
            if id(p) in skip:
                continue
            copies = (1 if name in u.tp_sharded else tp) * (1 if u.fsdp else dp)
            sq += g.double().pow(2).sum() / copies
    dist.all_reduce(sq)
    norm = math.sqrt(sq.item())
    if max_norm is not None:
        coef = max_norm / (norm + 1e-6)
        if coef < 1.0:
            for g in grads:
                g.mul_(coef)
    return norm
