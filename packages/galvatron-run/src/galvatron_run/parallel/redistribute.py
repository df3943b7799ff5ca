"""Moving an activation between layers whose (tp, dp, sp) layout differs: each rank gathers, over the smallest group
that holds it, the block of the micro-batch the next layer wants (backward: the mirror move of the gradient).

Every rank holds the block ``Layout.block(j, b, s)`` of a micro-batch's [b, s, h] activation; ranks holding the same
block hold equal copies, and the gradient of each copy is the full gradient of that block."""
from __future__ import annotations

import torch
import torch.distributed as dist

from ..plan import Layout
from .mesh import Env


def _redistribute(x: torch.Tensor, src: Layout, dst: Layout, env: Env) -> torch.Tensor:
    b = x.shape[0] * src.dp
    s = x.shape[1] * (src.tp if src.sp else 1)
    r0, nr, s0, ns = src.block(env.j, b, s)
    R0, NR, S0, NS = dst.block(env.j, b, s)
    if all(_contains(src.block(j, b, s), dst.block(j, b, s)) for j in range(env.size)):
        return x[R0 - r0:R0 - r0 + NR, S0 - s0:S0 - s0 + NS].clone()     # every rank already holds what it needs
    # Gather over the smallest group that gives every rank what it needs: the source tp group (the rows of its dp
    # rank, the whole sequence), the source dp group (every row, its sequence chunk), else the whole stage.
    kind = next(k for k in ("tp", "dp", "stage")
                if all(_contains(_union(src, j, b, s, k), dst.block(j, b, s)) for j in range(env.size)))
    members = _members(src, env.j, env.size, kind)
    group = env.group([env.base + m for m in members])
    parts = [torch.empty_like(x) for _ in members]
    dist.all_gather(parts, x.contiguous(), group=group)
    full = x.new_empty((b, s) + tuple(x.shape[2:]))
    for m, part in zip(members, parts):
        a0, na, c0, nc = src.block(m, b, s)
        full[a0:a0 + na, c0:c0 + nc] = part
    return full[R0:R0 + NR, S0:S0 + NS].clone()


def _members(src: Layout, j: int, size: int, kind: str) -> list[int]:
    tp_rank, dp_rank = src.coords(j)
    if kind == "tp":
        return [src.index(t, dp_rank) for t in range(src.tp)]
    if kind == "dp":
        return [src.index(tp_rank, d) for d in range(src.dp)]
    return list(range(size))


def _union(src: Layout, j: int, b: int, s: int, kind: str) -> tuple[int, int, int, int]:
    """The rectangle (row0, rows, seq0, seqs) that the blocks of j's ``kind`` group cover together."""
    r0, nr, s0, ns = src.block(j, b, s)
    if kind == "tp":
        return r0, nr, 0, s
    if kind == "dp":
        return 0, b, s0, ns
    return 0, b, 0, s


def _contains(outer, inner) -> bool:
    r0, nr, s0, ns = outer
    R0, NR, S0, NS = inner
    return r0 <= R0 and R0 + NR <= r0 + nr and s0 <= S0 and S0 + NS <= s0 + ns


class _Move(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, src, dst, env):
        ctx.layouts = (src, dst, env)
        return _redistribute(x, src, dst, env)

    @staticmethod
    def backward(ctx, grad):
        src, dst, env = ctx.layouts
        return _redistribute(grad, dst, src, env), None, None, None


def move(x: torch.Tensor, src: Layout, dst: Layout, env: Env) -> torch.Tensor:
    """The activation ``x`` held in layout ``src`` as layout ``dst`` wants it (backward: the mirror)."""
    if src == dst:
        return x
    return _Move.apply(x, src, dst, env)
