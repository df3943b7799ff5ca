"""One rank's whole run: check the plan against the world, build, train, measure, and (rank 0) write the report.

    torchrun --nproc-per-node 4 -m galvatron_run plan.json --steps 20 --report run.json

``run_rank(plan, ..., make_data=..., callback=...)`` is the seam for data sources and checkpointing."""
from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist

from galvatron_contracts.devices import cpu_name
from galvatron_contracts.documents import atomic_write_text, digest, write_document

from . import checkpoint as ckpt
from . import failures, hf_io
from .breakdown import chrome_trace
from .data import DEFAULT_VAL_FRACTION, make_data_source
from .plan import Plan, checked_plan, node_shape_warning
from .report import breakdown_table, build_report
from .train import build_state, log, train, validation_loss


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _device_info(device: torch.device) -> dict:
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return {"type": "cuda", "name": props.name, "memory_bytes": int(props.total_memory)}
    return {"type": "cpu", "name": f"{cpu_name()} ({os.cpu_count()} cores)"}


@dataclass
class LongRun:
    """Data, validation, checkpoint and failure options of a run (all off by default)."""

    data_path: str | None = None
    data_dtype: str | None = None
    data_format: str | None = None
    val_fraction: float = DEFAULT_VAL_FRACTION
    eval_every: int | None = None
    eval_batches: int = 4
    checkpoint_dir: str | None = None
    save_every: int | None = None
    keep: int | None = None
    resume: bool = False
    resume_or_start: bool = False      # with resume: start from step 0 when no checkpoint is usable (else exit 3)
    init_from: str | None = None
    export_path: str | None = None
    init_from_hf: str | None = None    # a Hugging Face checkpoint directory (replaces the seeded initialisation)
    export_hf: str | None = None       # ... written here at the end (an existing one replaced: checked by the CLI)
    trace_path: str | None = None      # the timed step as a Chrome / Perfetto trace (breakdown.chrome_trace)

    def data_source(self, plan: dict):
        tr = plan["training"]
        return make_data_source(self.data_path, vocab_size=plan["model"]["vocab_size"], seq_len=tr["seq_len"],
                                global_batch=plan["global_batch"], seed=tr.get("seed", 1234), dtype=self.data_dtype,
                                data_format=self.data_format, val_fraction=self.val_fraction)


def run_rank(plan: dict, *, plan_path: str | None, steps: int, warmup_steps: int, dtype: str | None,
             report_path: str | None, peak_tflops: float | None, timeout_s: float, seq_len: int | None = None,
             data_path: str | None = None, make_data: Callable | None = None,
             callback: Callable | None = None, build_hook: Callable | None = None,
             long_run: LongRun | None = None, checked: Plan | None = None) -> dict | None:
    """Returns the report on rank 0 (None elsewhere). Raises DocumentError / InfeasibleError before any group.

    ``checked``: the plan as ``checked_plan`` already returned it for this world (the command line's); else the
    plan is checked here."""
    opts = long_run or LongRun(data_path=data_path)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    checked = checked or checked_plan(plan, world, plan_path or "plan", dtype=dtype, seq_len=seq_len)
    run_plan = checked.document
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
        failures.enable_flight_recorder()
        failures.init_process_group(backend, timeout_s)
    rank = dist.get_rank()
    watchdog = failures.Watchdog(timeout_s)
    stop = failures.StopRequest(device=device)
    plan_digest = digest(run_plan)
    lock = None
    try:
        if opts.checkpoint_dir:        # held by rank 0 until the end: another run on the directory exits 2
            lock = ckpt.lock_directory(opts.checkpoint_dir)
        hf_ckpt = None
        if opts.init_from_hf:              # headers and config only; each rank then reads the slices it holds
            hf_ckpt = hf_io.HFCheckpoint.open(opts.init_from_hf)
            hf_ckpt.check(run_plan["model"], plan_path or "the plan")
            if rank == 0:
                for note in hf_ckpt.notes():
                    log(f"{opts.init_from_hf}: {note}")
        with watchdog.phase("building the model, meshes and schedule"):
            state = build_state(run_plan, device, steps=steps, timeout_s=timeout_s,
                                init=hf_ckpt.load_into if hf_ckpt else None)
        if hf_ckpt and rank == 0:
            log(f"initialised from {opts.init_from_hf} (rank 0 read {hf_ckpt.read_bytes / 2**20:.2f} MiB)")
        if build_hook is not None:
            build_hook(state)
        tr = run_plan["training"]
        seq = tr["seq_len"]
        data = make_data(run_plan) if make_data is not None else opts.data_source(run_plan)
        if opts.init_from:
            ckpt.import_model(opts.init_from, state.model_parts)
        if opts.checkpoint_dir and (opts.resume or failures.restart_count() > 0):
            with watchdog.phase("loading the newest complete checkpoint", timeout_s=None):
                info = ckpt.resume(opts.checkpoint_dir, state.model_parts, state.optimizers, state.scheduler, data,
                                   plan_digest=plan_digest,
                                   required=not opts.resume_or_start and failures.restart_count() == 0)
            if info:
                state.step = info["step"]
        shape = node_shape_warning(run_plan, int(os.environ.get("LOCAL_WORLD_SIZE", str(world))))
        if rank == 0 and shape:
            log(f"warning: {shape}")
        if rank == 0:
            log(f"training {steps} steps ({warmup_steps} warm-up) with {world} ranks on {device.type}"
                + (f", from step {state.step}" if state.step else ""))
        validation: list[dict] = []

        def after_step(state, record) -> bool:
            if callback is not None:
                callback(state, record)
            stopping = stop.should_stop()
            if opts.eval_every and (state.step % opts.eval_every == 0 or state.step == steps):
                with watchdog.phase(f"step {state.step}: validation"):
                    validation.append(validation_loss(state, data, opts.eval_batches))
                if rank == 0:
                    log(f"step {state.step}: validation loss {validation[-1]['loss']:.4f}")
            save_every = opts.save_every or steps
            if opts.checkpoint_dir and (state.step % save_every == 0 or stopping or state.step == steps):
                with watchdog.phase(f"step {state.step}: checkpoint save", timeout_s=None):
                    ckpt.save_checkpoint(opts.checkpoint_dir, state.step, state.model_parts, state.optimizers,
                                         state.scheduler, data, keep=opts.keep, plan_digest=plan_digest)
            if stopping and rank == 0:
                log(f"stop requested: leaving after step {state.step}")
            return stopping

        with watchdog.phase("training", timeout_s=None):
            result = train(state, data, steps, warmup_steps=warmup_steps, callback=after_step, phase=watchdog.phase)
        if opts.export_path:
            ckpt.export_full(opts.export_path, state.model_parts)
        if opts.export_hf:
            with watchdog.phase(f"exporting to {opts.export_hf}", timeout_s=None):
                files = hf_io.export_hf(state, opts.export_hf, base_config=hf_ckpt.config if hf_ckpt else None)
            if rank == 0:
                log(f"exported {opts.export_hf}: {', '.join(files)}")
        memory = [None] * dist.get_world_size()
        dist.all_gather_object(memory, result["memory"])
        times = [None] * dist.get_world_size()
        dist.all_gather_object(times, result["breakdown"])
        doc = None
        if rank == 0:
            local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
            settings = {"steps": steps, "warmup_steps": warmup_steps, "dtype": tr["dtype"], "seq_len": seq,
                        "global_batch": run_plan["global_batch"], "micro_batches": run_plan["micro_batches"],
                        "seed": tr.get("seed", 1234),
                        "data": {"kind": getattr(data, "kind", "random"), "path": getattr(data, "path", None)},
                        "checkpoint_dir": opts.checkpoint_dir,
                        "torch_version": torch.__version__}
            if state.step > 0 and result["steps"] and result["steps"][0]["step"] > 0:
                settings["resumed_from_step"] = result["steps"][0]["step"]
            doc = build_report(plan, plan_path=plan_path, steps=result["steps"], memory=memory, world=world,
                               backend=backend, device=_device_info(device), threads=torch.get_num_threads(),
                               nodes=max(1, world // max(1, local_world)), settings=settings,
                               peak_tflops=peak_tflops, breakdown=times)
            if validation:
                doc["validation"] = validation
            write_document(doc, report_path or "-")
            t = doc["throughput"]
            log(f"median step {t['iteration_time_s']:.3f}s, {t['samples_per_s']:.2f} samples/s, "
                f"{t['tokens_per_s']:.0f} tokens/s, {t['achieved_tflops']:.4f} TFLOP/s"
                + (f", MFU {t['mfu']:.3f}" if t["mfu"] is not None else ""))
            table = breakdown_table(doc)
            if table is not None:
                log(table)
            if opts.trace_path:
                atomic_write_text(opts.trace_path, json.dumps(chrome_trace(times)))
                log(f"trace of step {doc.get('breakdown', {}).get('profiled_step', '?')}: {opts.trace_path} "
                    f"(chrome://tracing or ui.perfetto.dev)")
        dist.barrier()
        state.env.close()
        return doc
    finally:
        watchdog.close()
        stop.close()
        if owns_pg and dist.is_initialized():
            dist.destroy_process_group()
        if lock is not None:
            lock.release()
