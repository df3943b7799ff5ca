"""The optimizer step's time against the parameters one rank holds, held as galvatron-run holds them: AdamW
(foreach=False) plus gradient clipping, over plain tensors (a tp-1 ddp layer) and over DTensors (a tp > 1 layer;
a zero1 / zero2 / zero3 layer, whose shard FSDP2 holds as a DTensor), whose every op of the step pays DTensor's
dispatch.

    doc = probe_compute("mini-gpt", nproc=4)
    # doc["optimizer_step"] = {"fixed_s", "per_tensor_s", "per_param_s", "dtensor": {...}, "points": [...]}

The time of a step is ``fixed_s + per_tensor_s * tensors + per_param_s * parameters``: the optimizer runs one
sequence of ops per tensor, so a layer of many small tensors costs per tensor as much as per element (on a CPU,
DTensor's dispatch is tens of microseconds an op). To tell the two apart, each holding is timed at six points:
k copies (k = 1, 2, 4) of one tp-1 decoder's parameter tensors (shrunk in proportion when one decoder exceeds
``MAX_POINT_PARAMS`` / 4), and as many tensors of ``SMALL`` elements each. A timed repeat is what a training step
does after backward: the global L2 norm of the gradients (fp64 sum of squares of the local shards, one
all-reduce), their scaling to max_norm 1, and ``AdamW.step()``; all ranks run it at once, counted from a common
start to the slowest rank's finish. Plain points run in the rank's own process (the all-reduce over the real
ranks is in their ``fixed_s``); DTensor points in its child (wrapped.py), on a fake mesh whose all-reduce returns
at once, so the DTensor fit's fixed part is not the step's: the cost model takes the plain ``fixed_s`` once per
step, and per layer the per-tensor and per-parameter numbers of the layer's holding. Each fit is non-negative
least squares on the medians of at least 5 repeats.
"""
from __future__ import annotations

import math

import numpy as np

from .layers import build_shard
from .stats import timing_stats

COPIES = (1, 2, 4)
SMALL = 16          # elements of each tensor of a point that times the per-tensor cost
MAX_POINT_PARAMS = 1 << 24  # largest point: 16 Mi parameters = 256 MiB of fp32 parameter, gradient, 2 states


def tensor_sizes(spec: dict, max_params: int = MAX_POINT_PARAMS // COPIES[-1]) -> list[int]:
    """Element counts of one tp-1 decoder's parameters, scaled down together to at most ``max_params``."""
    import torch

    with torch.device("meta"):
        sizes = [p.numel() for p in build_shard(spec, "decoder", 1, device="meta").parameters()]
    scale = min(1.0, max_params / sum(sizes))
    return [max(1, int(n * scale)) for n in sizes]


class OptimizerPoint:
    """Parameters of ``sizes`` elements (plain tensors, or with ``mesh`` DTensors sharded Shard(0) over it) with
    random gradients, their AdamW, and ``step``: the clipping and the optimizer step of a training step."""

    def __init__(self, sizes: list[int], device, seed: int, all_reduce=None, mesh=None):
        import torch

        g = torch.Generator().manual_seed(seed)

        def held(n):
            x = torch.randn(n, generator=g).to(device)
            if mesh is None:
                return x
            from torch.distributed.tensor import DTensor, Shard

            return DTensor.from_local(x, mesh, [Shard(0)], run_check=False)

        self.params = [torch.nn.Parameter(held(n)) for n in sizes]
        for p in self.params:
            p.grad = held(p.numel() if mesh is None else p.to_local().numel())
        self.grads = [p.grad.to_local() if mesh is not None else p.grad for p in self.params]
        self.optimizer = torch.optim.AdamW(self.params, lr=1e-4, weight_decay=0.1, foreach=False)
        self.all_reduce, self.device = all_reduce, device

    def step(self) -> None:
        import torch

        with torch.no_grad():
            sq = torch.zeros((), dtype=torch.float64, device=self.device)
            for g in self.grads:                  # galvatron-run clips the local shards (grads.clip_grads)
                sq += g.double().pow(2).sum()
            if self.all_reduce is not None:
                self.all_reduce(sq)
            coef = 1.0 / (math.sqrt(sq.item()) + 1e-6)
            if coef < 1.0:
                for g in self.grads:
                    g.mul_(coef)
        self.optimizer.step()


def point_sizes(spec: dict) -> list[list[int]]:
    """The tensor sizes of each point of one holding: k decoders' tensors, then as many tensors of SMALL elements
    (k in COPIES)."""
    decoder = tensor_sizes(spec)
    return [decoder * k for k in COPIES] + [[SMALL] * len(decoder) * k for k in COPIES]


def fit_nonneg(rows: list[list[float]], ys: list[float]) -> list[float]:
    """Least-squares coefficients of ``ys`` on ``rows`` with every coefficient >= 0: the best of the unconstrained
    fits over every subset of the columns whose coefficients are all non-negative (a few columns: exact).

    >>> [round(v, 9) for v in fit_nonneg([[1, 1, 0], [1, 0, 1], [1, 2, 2]], [3, 4, 9])]
    [1.0, 2.0, 3.0]
    """
    from itertools import combinations

    a, y = np.asarray(rows, dtype=np.float64), np.asarray(ys, dtype=np.float64)
    best, best_sse = np.zeros(a.shape[1]), float(y @ y)
    for size in range(1, a.shape[1] + 1):
        for cols in combinations(range(a.shape[1]), size):
            coef, *_ = np.linalg.lstsq(a[:, cols], y, rcond=None)
            if np.any(coef < 0):
                continue
            sse = float(np.sum((a[:, cols] @ coef - y) ** 2))
            if sse < best_sse - 1e-30:
                best, best_sse = np.zeros(a.shape[1]), sse
                best[list(cols)] = coef
    return [float(v) for v in best]


def fit_step(points: list[dict]) -> dict:
    """{fixed_s, per_tensor_s, per_param_s} of the points' medians."""
    rows = [[1.0, p["tensors"], p["param_count"]] for p in points]
    fixed, per_tensor, per_param = fit_nonneg(rows, [p["time"]["median_s"] for p in points])
    return {"fixed_s": fixed, "per_tensor_s": per_tensor, "per_param_s": per_param}


def time_optimizer_step(spec: dict, timer, device, warmup: int, repeats: int, child=None) -> dict:
    """The schema's ``optimizer_step`` object, measured by every rank at once (see the module docstring);
    ``child``: the rank's wrapped.WrappedChild, which times the DTensor points (None: plain points only)."""
    repeats = max(repeats, 5)  # a cheap measurement; the fit wants steady medians
    all_reduce = timer.dist.all_reduce if timer.distributed else None
    points = []
    for holding in ("plain", "dtensor") if child is not None else ("plain",):
        for i, sizes in enumerate(point_sizes(spec)):
            if holding == "plain":
                point = OptimizerPoint(sizes, device, seed=i, all_reduce=all_reduce)
                stamp = lambda point=point: timer.stamp(point.step)   # noqa: E731
            else:
                child.optimizer_point(sizes, i)
                point, stamp = None, child.optimizer_stamp
            stamps = []
            for r in range(warmup + repeats):
                timer.barrier()
                s = stamp()
                if r >= warmup:
                    stamps.append(s)
            points.append({"holding": holding, "param_count": sum(sizes), "tensors": len(sizes),
                           "time": timing_stats(timer.spans(stamps))})
            del point, stamp
    plain = fit_step([p for p in points if p["holding"] == "plain"])
    out = {"optimizer": "adamw", "clip_grad_norm": True, **plain, "points": points}
    if child is not None:
        out["dtensor"] = fit_step([p for p in points if p["holding"] == "dtensor"])
    return out
