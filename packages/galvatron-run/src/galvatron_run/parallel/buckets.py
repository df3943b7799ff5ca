"""ddp's once-per-step gradient all-reduce, overlapped with the last micro-batch's backward (what torch DDP does, and
what the cost model charges: one all-reduce per ddp layer, exposed only where it outlasts that backward).

One bucket per ddp unit (a plan entry with dp > 1 that FSDP does not shard). While armed, a post-accumulate-grad
hook on each of the unit's parameters counts the gradients accumulated this step; when every parameter has received
its gradient of the last micro-batch, the unit's gradients are concatenated into one flat fp32 buffer, rebound as
views of it, and the buffer's all_reduce over the unit's dp group is launched asynchronously while backward goes on
with the layers below. ``wait`` (before clipping) launches what backward did not (a parameter without a gradient of
the last micro-batch; an unarmed step) and completes every all-reduce: each gradient then holds its sum over dp,
computed exactly as one synchronous all-reduce of the same flat buffer would.

    buckets = DdpBuckets(units, env)
    with buckets.armed(micro_batches):      # hooks live for this step's backward only
        ... every micro-batch's forward and backward ...
    buckets.wait()

Every rank of a dp group holds the same modules and runs the same backward, so the buckets are launched in the same
order on all of them (hooks in backward order, then the rest in forward order).
"""
from __future__ import annotations

import contextlib

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor

from .mesh import Env


def match_placement(p: nn.Parameter) -> None:
    """Give ``p`` a gradient laid out like ``p``: DTensor may return a replicated gradient for a sharded parameter
    (the vocabulary-parallel embedding's); Replicate -> Shard keeps this rank's slice, without communication."""
    if isinstance(p.grad, DTensor) and tuple(p.grad.placements) != tuple(p.placements):
        p.grad = p.grad.redistribute(p.device_mesh, p.placements)


class _Bucket:
    """One ddp unit's gradients as one flat fp32 buffer, all-reduced (summed) over the unit's dp group."""

    def __init__(self, params: list[nn.Parameter], group):
        self.params, self.group = params, group
        self.left = len(params)      # parameters still waiting for their last micro-batch's gradient
        self.launched = False
        self.work = None
        self.copy_back: list[tuple[torch.Tensor, torch.Tensor]] = []    # (gradient, its slice) if not fp32

    @torch.no_grad()
    def launch(self) -> None:
        """Flatten the gradients that exist and start their all-reduce. fp32 gradients become views of the buffer
        (no second copy of them lives while the all-reduce runs); any other dtype is copied back in ``finish``."""
        self.launched = True
        params = [p for p in self.params if p.grad is not None]
        if not params:
            return
        for p in params:
            match_placement(p)
        grads = [p.grad.to_local() if isinstance(p.grad, DTensor) else p.grad for p in params]
        flat = torch.cat([g.reshape(-1).float() for g in grads])
        i = 0
        for p, g in zip(params, grads):
            part = flat[i:i + g.numel()].view(g.shape)
            i += g.numel()
            if g.dtype == flat.dtype:
                p.grad = _like(p.grad, part)
            else:
                self.copy_back.append((g, part))
        self.work = dist.all_reduce(flat, group=self.group, async_op=True)

    @torch.no_grad()
    def finish(self) -> None:
        if self.work is not None:
            self.work.wait()
        for g, part in self.copy_back:
            g.copy_(part)
        self.work, self.copy_back = None, []


def _like(grad: torch.Tensor, local: torch.Tensor) -> torch.Tensor:
    """``local`` (this rank's values) as a gradient of the same kind and layout as ``grad``."""
    if isinstance(grad, DTensor):
        return DTensor.from_local(local, grad.device_mesh, grad.placements, run_check=False, shape=grad.shape,
                                  stride=grad.stride())
    return local


class DdpBuckets:
    """The ddp buckets of one step's units (in forward order); see the module docstring."""

    def __init__(self, units: list, env: Env):
        self.buckets = [_Bucket([p for _, p in u.parameters() if p.requires_grad], env.dp_group(u.layout))
                        for u in units if not u.fsdp and u.layout.dp > 1]

    @contextlib.contextmanager
    def armed(self, micro_batches: int):
        """Launch each bucket from backward once all its parameters have accumulated ``micro_batches`` gradients.

        The hooks are registered on entry and removed on exit, so a backward outside the step (or a step that
        failed half-way) launches nothing."""
        seen: dict[int, int] = {}
        handles = []

        def on_grad(bucket: _Bucket, p: nn.Parameter) -> None:
            seen[id(p)] = seen.get(id(p), 0) + 1
            if seen[id(p)] == micro_batches:
                bucket.left -= 1
                if bucket.left == 0:
                    bucket.launch()

        try:
            for b in self.buckets:
                for p in b.params:
                    handles.append(p.register_post_accumulate_grad_hook(
                        lambda param, b=b: on_grad(b, param)))
            yield self
        finally:
            for h in handles:
                h.remove()

    def wait(self) -> None:
        """Launch the buckets backward did not, then complete all of them; every ddp gradient is then summed."""
        for b in self.buckets:
            if not b.launched:
                b.launch()
        for b in self.buckets:
            b.finish()
