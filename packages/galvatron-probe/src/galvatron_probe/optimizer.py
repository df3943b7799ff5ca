"""The optimizer step's time against the parameters one rank holds: AdamW (foreach=False) plus gradient clipping.

    doc = probe_compute("mini-gpt", nproc=4)   # doc["optimizer_step"] = {"fixed_s", "per_param_s", "points", ...}

Each point holds k copies (k = 1, 2, 4) of one tp-1 decoder's parameter tensors (shrunk in proportion when one
decoder exceeds ``MAX_POINT_PARAMS`` / 4), with random gradients. A timed repeat is what a training step does after
backward: the global L2 norm of the gradients (fp64 sum of squares, one all-reduce), their scaling to max_norm 1,
and ``AdamW.step()``; all ranks run it at once, counted from a common start to the slowest rank's finish. The fit
``fixed_s + per_param_s * params`` (least squares on the medians of at least 5 repeats, both clamped at 0) is what
the cost model uses.
"""
from __future__ import annotations

import math

import numpy as np

from .layers import build_shard
from .stats import timing_stats

COPIES = (1, 2, 4)
MAX_POINT_PARAMS = 1 << 24  # largest point: 16 Mi parameters = 256 MiB of fp32 parameter, gradient, 2 states


def tensor_sizes(spec: dict, max_params: int = MAX_POINT_PARAMS // COPIES[-1]) -> list[int]:
    """Element counts of one tp-1 decoder's parameters, scaled down together to at most ``max_params``."""
    import torch

    with torch.device("meta"):
        sizes = [p.numel() for p in build_shard(spec, "decoder", 1, device="meta").parameters()]
    scale = min(1.0, max_params / sum(sizes))
    return [max(1, int(n * scale)) for n in sizes]


def fit_line(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """(intercept, slope) of the least-squares line, both clamped at 0 (refitted through 0 if the intercept is not).

    >>> [round(v, 9) for v in fit_line([1, 2, 4], [3, 5, 9])]
    [1.0, 2.0]
    """
    x, y = np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.float64)
    slope, intercept = np.polyfit(x, y, 1)
    if intercept < 0:
        intercept, slope = 0.0, float(x @ y / (x @ x))
    if slope < 0:
        intercept, slope = float(y.mean()), 0.0
    return float(intercept), float(slope)


def time_optimizer_step(spec: dict, timer, device, warmup: int, repeats: int) -> dict:
    """The schema's ``optimizer_step`` object, measured by every rank at once (see the module docstring)."""
    import torch

    sizes = tensor_sizes(spec)
    repeats = max(repeats, 5)  # a cheap measurement; the fit wants steady medians
    g = torch.Generator().manual_seed(0)
    points = []
    for k in COPIES:
        params = [torch.nn.Parameter(torch.randn(n, generator=g).to(device)) for _ in range(k) for n in sizes]
        for p in params:
            p.grad = torch.randn(p.shape, generator=g).to(device)
        opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.1, foreach=False)

        def step(params=params, opt=opt):
            with torch.no_grad():
                sq = torch.zeros((), dtype=torch.float64, device=device)
                for p in params:
                    sq += p.grad.double().pow(2).sum()
                if timer.distributed:
                    timer.dist.all_reduce(sq)
                coef = 1.0 / (math.sqrt(sq.item()) + 1e-6)
                if coef < 1.0:
                    for p in params:
                        p.grad.mul_(coef)
            opt.step()

        stamps = []
        for i in range(warmup + repeats):
            timer.barrier()
            stamp = timer.stamp(step)
            if i >= warmup:
                stamps.append(stamp)
        points.append({"param_count": sum(p.numel() for p in params), "tensors": len(params),
                       "time": timing_stats(timer.spans(stamps))})
        del params, opt
    fixed, per_param = fit_line([p["param_count"] for p in points], [p["time"]["median_s"] for p in points])
    return {"optimizer": "adamw", "clip_grad_norm": True, "fixed_s": fixed, "per_param_s": per_param,
            "points": points}
