"""The vocabulary-parallel cross entropy: each tensor-parallel rank holds a slice of the logits' vocabulary.

    loss = vocab_parallel_ce_sum(logits, target, group, v0)   # logits [..., V/tp] of vocabulary [v0, v0 + V/tp)

Three all-reduces over ``group`` (the row maximum, the sum of exponentials, the target's logit) give every rank the
exact sum of token cross entropies; backward needs no communication (softmax minus one-hot, on the local slice).
"""
from __future__ import annotations

import torch
import torch.distributed as dist


class _VocabParallelCE(torch.autograd.Function):
    """Sum of token cross entropies when each tp rank holds logits [N, V/tp] of vocabulary [v0, v0 + V/tp)."""

    @staticmethod
    def forward(ctx, logits, target, group, v0):
        x = logits.float()
        m = x.max(-1).values
        dist.all_reduce(m, op=dist.ReduceOp.MAX, group=group)
        x = x - m[:, None]
        e = x.exp()
        se = e.sum(-1)
        dist.all_reduce(se, group=group)
        local = target - v0
        hit = (local >= 0) & (local < x.shape[-1])
        local = local.clamp(0, x.shape[-1] - 1)
        tl = x.gather(1, local[:, None]).squeeze(1) * hit
        dist.all_reduce(tl, group=group)
        ctx.save_for_backward(e / se[:, None], local, hit)
        ctx.dtype = logits.dtype
        return (se.log() - tl).sum()

    @staticmethod
    def backward(ctx, g):
        p, local, hit = ctx.saved_tensors
        grad = p.clone()
        grad[torch.arange(grad.shape[0], device=grad.device), local] -= hit.to(grad.dtype)
        return (grad * g).to(ctx.dtype), None, None, None


def vocab_parallel_ce_sum(logits: torch.Tensor, target: torch.Tensor, group, v0: int) -> torch.Tensor:
    """Sum over tokens of the cross entropy of ``logits`` [..., V/tp] (vocabulary [v0, v0 + V/tp)) at ``target``."""
    return _VocabParallelCE.apply(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), group, v0)
