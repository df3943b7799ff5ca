"""One rank's whole run: check the plan against the world, build, train, measure, and (rank 0) write the report.

    torchrun --nproc-per-node 4 -m galvatron_run plan.json --steps 20 --report run.json

``run_rank(plan, ..., make_data=..., callback=...)`` is the seam for data sources and checkpointing."""
from __future__ import annotations

import os
import platform
import socket
from collections.abc import Callable
from datetime import timedelta

import torch
import torch.distributed as dist

from ._contracts.documents import write_document
from .data import make_data_source
from .plan import check_plan, prepared_plan
from .report import build_report
from .train import build_state, log, train


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _device_info(device: torch.device) -> dict:
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return {"type": "cuda", "name": props.name, "memory_bytes": int(props.total_memory)}
    name = platform.processor() or platform.machine() or "cpu"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), name)
    except OSError:
        pass
    return {"type": "cpu", "name": f"{name} ({os.cpu_count()} cores)"}


def run_rank(plan: dict, *, plan_path: str | None, steps: int, warmup_steps: int, dtype: str | None,
             report_path: str | None, peak_tflops: float | None, timeout_s: float, seq_len: int | None = None,
             data_path: str | None = None, make_data: Callable | None = None,
             callback: Callable | None = None, build_hook: Callable | None = None) -> dict | None:
    """Returns the report on rank 0 (None elsewhere). Raises DocumentError / InfeasibleError before any group."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    run_plan = prepared_plan(plan, dtype=dtype, seq_len=seq_len)
    check_plan(run_plan, world, plan_path or "plan")
    if "RANK" not in os.environ:                       # a single process without torchrun
        os.environ.update({"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                           "MASTER_PORT": str(_free_port())})
    cluster_backend = run_plan["cluster"].get("backend")
    if torch.cuda.is_available() and cluster_backend != "gloo":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    owns_pg = not dist.is_initialized()
    if owns_pg:
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
    rank = dist.get_rank()
    try:
        state = build_state(run_plan, device, steps=steps, timeout_s=timeout_s)
        if build_hook is not None:
            build_hook(state)
        spec, tr = run_plan["model"], run_plan["training"]
        seq = tr["seq_len"]
        if make_data is not None:
            data = make_data(run_plan)
        else:
            data = make_data_source(data_path, vocab_size=spec["vocab_size"], seq_len=seq,
                                    global_batch=run_plan["global_batch"], seed=tr.get("seed", 1234))
        if rank == 0:
            log(f"training {steps} steps ({warmup_steps} warm-up) with {world} ranks on {device.type}")
        result = train(state, data, steps, warmup_steps=warmup_steps, callback=callback)
        memory = [None] * dist.get_world_size()
        dist.all_gather_object(memory, result["memory"])
        doc = None
        if rank == 0:
            local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
            settings = {"steps": steps, "warmup_steps": warmup_steps, "dtype": tr["dtype"], "seq_len": seq,
                        "global_batch": run_plan["global_batch"], "micro_batches": run_plan["micro_batches"],
                        "seed": tr.get("seed", 1234),
                        "data": {"kind": getattr(data, "kind", "random"), "path": getattr(data, "path", None)},
                        "torch_version": torch.__version__}
            if state.step > 0 and result["steps"] and result["steps"][0]["step"] > 0:
                settings["resumed_from_step"] = result["steps"][0]["step"]
            doc = build_report(plan, plan_path=plan_path, steps=result["steps"], memory=memory, world=world,
                               backend=backend, device=_device_info(device), threads=torch.get_num_threads(),
                               nodes=max(1, world // max(1, local_world)), settings=settings,
                               peak_tflops=peak_tflops)
            write_document(doc, report_path or "-")
            t = doc["throughput"]
            log(f"median step {t['iteration_time_s']:.3f}s, {t['samples_per_s']:.2f} samples/s, "
                f"{t['tokens_per_s']:.0f} tokens/s, {t['achieved_tflops']:.4f} TFLOP/s"
                + (f", MFU {t['mfu']:.3f}" if t["mfu"] is not None else ""))
        dist.barrier()
        state.env.close()
        return doc
    finally:
        if owns_pg and dist.is_initialized():
            dist.destroy_process_group()
