"""Data-parallel sharding with FSDP2 ``fully_shard`` on each layer's own dp mesh: zero3 reshards the parameters
after forward, zero2 keeps them unsharded until backward; ddp is not FSDP (grads.py all-reduces its gradients once
per iteration, where FSDP2 would reduce after every micro-batch).

zero1 is FSDP2 too, driven once per iteration (``DeferredReduction``): the parameters are gathered at the step's
first forward and kept unsharded through every micro-batch, the gradients are accumulated unsharded (in fp32, the
reduce dtype) and reduce-scattered once, in the last micro-batch's backward, which then reshards. Between steps a
rank holds its dp shard of the fp32 master parameters, of the reduced gradients and of the optimizer states: the
optimizer steps FSDP2's Shard(0) parameters, so every rank holds exactly its ceil(dim0 / dp) rows of each tensor,
and clipping, tensor parallelism (2-D meshes) and distributed checkpoints work as for zero2 and zero3.
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn
from torch.autograd.graph import register_multi_grad_hook
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.utils._pytree import tree_leaves


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


class DeferredReduction:
    """The zero1 units' once-per-iteration gradient reduction (see the module docstring).

    While armed for m micro-batches, FSDP2 neither reduces nor reshards the zero1 units after a backward
    (``set_requires_gradient_sync(False)``, ``set_reshard_after_backward(False)``: gradient accumulation without
    communication). A hook on each unit's forward output sees its backward begin; at the unit's m-th, in the last
    micro-batch's backward (every schedule runs a unit's backwards in micro-batch order), both are switched back on,
    so that FSDP2's own post-backward reduce-scatters the accumulated gradients and reshards, overlapped with the
    backward of the layers below.

        defer = DeferredReduction(units)
        with defer.armed(micro_batches):
            ... every micro-batch's forward and backward ...
    """

    def __init__(self, units: list):
        self.modules = [u.module for u in units if u.fsdp and u.strategy["dp_sharding"] == "zero1"]

    @staticmethod
    def _sync(module: nn.Module, on: bool) -> None:
        module.set_requires_gradient_sync(on, recurse=False)
        module.set_reshard_after_backward(on, recurse=False)

    @contextlib.contextmanager
    def armed(self, micro_batches: int):
        started: dict[int, int] = {}

        def on_backward(module: nn.Module) -> None:
            started[id(module)] = started.get(id(module), 0) + 1
            if started[id(module)] == micro_batches:
                self._sync(module, True)

        def after_forward(module: nn.Module, _args, output) -> None:
            outputs = [t for t in tree_leaves(output) if isinstance(t, torch.Tensor) and t.requires_grad]
            if torch.is_grad_enabled() and outputs:
                register_multi_grad_hook(outputs, lambda _grads: on_backward(module), mode="any")

        handles = [m.register_forward_hook(after_forward) for m in self.modules]
        for m in self.modules:
            self._sync(m, False)
        try:
            yield self
        finally:
            for h in handles:
                h.remove()
            for m in self.modules:        # outside a step (or after one that failed) FSDP2's defaults hold
                self._sync(m, True)
