"""Where the ranks come from: torchrun's environment, or ``--nproc N`` local ranks started through torch's launcher.

    run_ranks(worker, nproc=4, args=(...))   # N local ranks via torch.distributed.launcher; rank 0's return value

Each worker calls :func:`init_distributed` (process group with a short timeout) and returns its result; a failure
inside a worker comes back as a message and exit code, so the parent reports it without a traceback.
"""
from __future__ import annotations

import datetime
import logging
import os
import sys
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from galvatron_contracts.documents import GalvatronError, UsageError


@dataclass(frozen=True)
class Dist:
    """This rank's place in the world. ``world == 1`` means no process group."""

    rank: int
    world: int
    local_rank: int
    ranks_per_node: int
    backend: str | None
    device: Any  # torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def under_torchrun() -> bool:
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def env_world() -> tuple[int, int]:
    """(world size, ranks per node) from torchrun's environment; (1, 1) outside it."""
    if not under_torchrun():
        return 1, 1
    world = int(os.environ["WORLD_SIZE"])
    return world, int(os.environ.get("LOCAL_WORLD_SIZE", world))


def default_backend() -> str:
    import torch

    return "nccl" if torch.cuda.is_available() else "gloo"


def init_distributed(backend: str | None, timeout_s: float, ranks_per_node: int | None = None) -> Dist:
    """Join torchrun's world (or stay single) and pick this rank's device: cuda:LOCAL_RANK for nccl, else cpu."""
    import torch
    import torch.distributed as dist

    world, local_world = env_world()
    rank = int(os.environ.get("RANK", 0))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    backend = backend or default_backend()
    if backend == "nccl":
        if not torch.cuda.is_available():
            raise UsageError("--backend nccl needs CUDA devices; use --backend gloo on CPU")
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        kwargs = {"device_id": device} if backend == "nccl" else {}
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s), **kwargs)
    return Dist(rank=rank, world=world, local_rank=local_rank, ranks_per_node=ranks_per_node or local_world,
                backend=backend if world > 1 else None, device=device)


def close_distributed() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def set_threads(nproc: int) -> int:
    """Intra-op threads per rank: OMP_NUM_THREADS when set, else the cores shared evenly by the local ranks."""
    import torch

    env = os.environ.get("OMP_NUM_THREADS")
    threads = int(env) if env and env.isdigit() and int(env) > 0 else max(1, (os.cpu_count() or 1) // max(1, nproc))
    torch.set_num_threads(threads)
    return threads


def _entry(fn: Callable, args: tuple) -> dict:
    """What each launched rank runs: ``fn(*args)``, with any failure turned into a message for the parent."""
    try:
        return {"ok": True, "value": fn(*args)}
    except GalvatronError as e:
        msg, code = str(e), e.exit_code
    except Exception as e:  # a runtime failure: keep the message, the traceback goes to stderr
        traceback.print_exc(file=sys.stderr)
        msg, code = f"{type(e).__name__}: {e}", 1
    rank = os.environ.get("RANK", "?")
    print(f"error: rank {rank}: {msg}", file=sys.stderr, flush=True)
    close_distributed()  # peers blocked in a collective with this rank fail fast instead of waiting out the timeout
    return {"ok": False, "message": msg, "exit_code": code, "at": time.time(), "rank": rank}


def run_ranks(fn: Callable, nproc: int, args: tuple = ()) -> Any:
    """Start ``nproc`` local ranks (torch.distributed.launcher, c10d rendezvous on a free port: the standalone
    rendezvous torchrun uses) running
    ``fn(*args)`` and return rank 0's value. The first failure (in time) is raised as a GalvatronError."""
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    if nproc < 1:
        raise UsageError(f"--nproc: expected a positive number of ranks, got {nproc}")
    logging.getLogger("torch.distributed.elastic").setLevel(logging.ERROR)
    import torch

    # fork when no GPU is present: the ranks start in a fraction of a second instead of re-importing torch each
    # (seconds per rank on a small CPU machine); with CUDA, spawn (a forked CUDA runtime is unusable).
    start = "spawn" if torch.cuda.is_available() or sys.platform != "linux" else "fork"
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=uuid.uuid4().hex,
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0,
                          monitor_interval=0.05, start_method=start)
    try:
        results = elastic_launch(config, _entry)(fn, args)
    except Exception as e:  # a rank died without reporting (killed, out of memory)
        raise GalvatronError(f"a launched rank failed: {e}") from None
    failures = sorted((r for r in results.values() if not r["ok"]), key=lambda r: r["at"])
    if failures:
        first = failures[0]
        err = GalvatronError(first["message"] if len(failures) == 1
                             else f"{first['message']} (rank {first['rank']}, the first of {len(failures)} to fail)")
        err.exit_code = first["exit_code"]
        raise err
    return results[0]["value"]
