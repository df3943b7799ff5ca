"""Python API: the same documents the command line writes, as dicts.

    from galvatron_probe import probe_bandwidth, probe_compute
    hw = probe_bandwidth(nproc=4, quick=True)            # 4 local ranks; under torchrun leave nproc out
    mp = probe_compute("tiny-llama", tp_degrees=[1, 2], micro_batch_sizes=[1, 2])

Under torchrun every rank calls the function; rank 0 gets the document, the other ranks None. Requests the world
cannot serve raise UsageError (exit code 2) before any rank starts work.
"""
from __future__ import annotations

from galvatron_contracts.documents import UsageError

from .bandwidth import BandwidthOptions, bandwidth_worker
from .bandwidth import resolve as resolve_bandwidth
from .compute import ComputeOptions, compute_worker
from .compute import resolve as resolve_compute
from .launch import default_backend, env_world, run_ranks, under_torchrun


def _world(nproc: int | None) -> tuple[int, int, bool]:
    """(world, ranks per node, launch here?)"""
    if nproc is not None and under_torchrun():
        raise UsageError("--nproc launches local ranks itself; under torchrun leave it out "
                         "(the launched world is used)")
    if nproc is not None:
        if nproc < 1:
            raise UsageError(f"--nproc: expected a positive number of ranks, got {nproc}")
        return nproc, nproc, nproc > 1
    world, local = env_world()
    return world, local, False


def probe_bandwidth(nproc: int | None = None, **options) -> dict | None:
    """hardware-profile of the world (torchrun's, or ``nproc`` local ranks). Options: see BandwidthOptions."""
    opts = BandwidthOptions(**options)
    world, local, launch = _world(nproc)
    if nproc == 1:
        launch = False
    resolve_bandwidth(opts, world, opts.ranks_per_node or local, cuda=opts.backend == "nccl")  # before torch loads
    backend = opts.backend or default_backend()
    resolve_bandwidth(opts, world, opts.ranks_per_node or local, cuda=backend == "nccl")
    opts.backend = backend
    return run_ranks(bandwidth_worker, world, (opts,)) if launch else bandwidth_worker(opts)


def probe_compute(model: str | dict, nproc: int | None = None, **options) -> dict | None:
    """model-profile of ``model`` (preset name, config.json path or spec dict). Options: see ComputeOptions."""
    opts = ComputeOptions(model=model, **options)
    world, _, launch = _world(nproc)
    resolve_compute(opts, cuda=False)  # fail before any work, before torch loads (cuda only changes defaults)
    return run_ranks(compute_worker, world, (opts,)) if launch else compute_worker(opts)
