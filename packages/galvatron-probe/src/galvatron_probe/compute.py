"""``galvatron-probe compute``: per-layer forward/backward time and exact memory of a model's TP shards.

    galvatron-probe compute --model tiny-gpt --quick
    galvatron-probe compute --model path/to/config.json --tp 1,2,4 --micro-batch-sizes 1,2,4 --nproc 4

For each layer kind (decoder, embedding, head) and TP degree t, galvatron_models' own module, as galvatron-run runs
it, is timed for every (sequence length, micro-batch size): at t = 1 the plain module; at t > 1 the module sharded
by the runtime's own ``parallelize_module`` plan into DTensors (wrapped.py: rank 0 of a fake tp group, in a child
process, so DTensor's per-op overhead is in the numbers and the collectives, which the bandwidth probe measures,
are not), without sequence parallelism (``timings``) and, where t divides the sequence, with it
(``sequence_parallel_timings``: the activation between layers split along the sequence). Each is timed forward,
backward, and backward under full recompute (``Block.recompute``, the recomputed forward included; the embedding
and the head are never recomputed, so theirs is a second plain backward). Every launched rank measures at once;
each repeat starts at a barrier and counts to the slowest rank's finish from that common start (ranks sharing
cores run in turns, as in a training step). The optimizer step (optimizer.py: AdamW + gradient clipping, all
ranks at once) is fitted against tensors and parameters per rank, held as plain tensors and as DTensors. Memory
(memory.py) is exact and per sample, counted on the plain degree-t shard (layers.py; the runtime's DTensor module
saves the same tensors, tests/test_wrapped.py); parameters and their tensors are read off the modules.
"""
from __future__ import annotations

import datetime
import os
import time
from dataclasses import dataclass

from galvatron_contracts.documents import CURRENT_VERSION, UsageError, producer
from galvatron_contracts.models import load_model_spec

from . import __version__
from .progress import Progress
from .shapes import LAYER_KINDS, tp_problems
from .stats import timing_stats

DTYPES = ("fp32", "bf16")


@dataclass
class ComputeOptions:
    model: str | dict = "tiny-gpt"
    seq_lens: list[int] | None = None
    micro_batch_sizes: list[int] | None = None
    tp_degrees: list[int] | None = None
    layers: list[str] | None = None
    dtype: str = "fp32"
    quick: bool = False
    warmup: int | None = None
    repeats: int | None = None
    timeout_s: float = 60.0
    progress: bool = True


@dataclass
class ComputePlan:
    spec: dict
    seq_lens: list[int]
    micro_batch_sizes: list[int]
    tp_degrees: list[int]
    layers: list[str]
    dtype: str
    warmup: int
    repeats: int


def resolve(opts: ComputeOptions, cuda: bool) -> ComputePlan:
    """Defaults and checks before any work. An impossible request is a UsageError (exit 2); a bad config.json a
    DocumentError (exit 3).

    Defaults: seq_lens [max_seq_len]; micro-batch sizes 1,2,4 (--quick: 1,2); tp: the powers of two up to 8 that
    every probed layer allows; warm-up 2 and 5 repeats on CPU, 3 and 10 on GPU (--quick: 1 and 3)."""
    spec = opts.model if isinstance(opts.model, dict) else load_model_spec(opts.model)
    layers = list(opts.layers or LAYER_KINDS)
    for layer in layers:
        if layer not in LAYER_KINDS:
            raise UsageError(f"--layers: expected some of {', '.join(LAYER_KINDS)}, got {layer!r}")
    if opts.dtype not in DTYPES:
        raise UsageError(f"--dtype: expected one of {', '.join(DTYPES)}, got {opts.dtype!r}")
    if opts.tp_degrees:
        tps = sorted(set(opts.tp_degrees))
        problems = [p for t in tps for layer in layers for p in tp_problems(spec, layer, t)]
        if problems:
            raise UsageError("--tp: " + "; ".join(dict.fromkeys(problems)))
    else:
        tps = [t for t in (1, 2, 4, 8) if not any(tp_problems(spec, layer, t) for layer in layers)]
    seq_lens = sorted(set(opts.seq_lens or [spec["max_seq_len"]]))
    for s in seq_lens:
        if s < 1:
            raise UsageError(f"--seq-len: expected positive lengths, got {s}")
        if s > spec["max_seq_len"]:
            raise UsageError(f"--seq-len: {s} exceeds the max_seq_len {spec['max_seq_len']} of {spec['name']}")
    mbs = sorted(set(opts.micro_batch_sizes or ([1, 2] if opts.quick else [1, 2, 4])))
    if mbs[0] < 1:
        raise UsageError(f"--micro-batch-sizes: expected positive sizes, got {mbs[0]}")
    warmup = opts.warmup if opts.warmup is not None else (1 if opts.quick else 3 if cuda else 2)
    repeats = opts.repeats if opts.repeats is not None else (3 if opts.quick else 10 if cuda else 5)
    if warmup < 0 or repeats < 1:
        raise UsageError(f"--warmup/--repeats: expected >= 0 and >= 1, got {warmup} and {repeats}")
    return ComputePlan(spec, seq_lens, mbs, tps, layers, opts.dtype, warmup, repeats)


def time_layer(module, args, grad, timer, warmup: int, repeats: int) -> dict:
    """Forward, backward and recompute-backward times of one module (in this process) on one micro-batch."""
    from .wrapped import LayerRunner

    return time_runner(LayerRunner(module, args, grad, timer), timer, warmup, repeats)


def time_runner(runner, timer, warmup: int, repeats: int) -> dict:
    """Forward, backward and recompute-backward times of ``runner`` (a wrapped.LayerRunner, or the child's handle
    on one): per repeat, from the barrier all ranks leave together to the slowest rank's finish (``Timer.spans``
    of the runner's stamps)."""
    fwd, bwd, rec = [], [], []
    for i in range(warmup + repeats):
        timer.barrier()
        tf = runner.stamp("forward")
        timer.barrier()
        tb = runner.stamp("backward")
        runner.forward(True)
        timer.barrier()
        tr = runner.stamp("backward")
        if i >= warmup:
            fwd.append(tf), bwd.append(tb), rec.append(tr)
    n = len(fwd)
    slow = timer.spans(fwd + bwd + rec)
    return {"forward": timing_stats(slow[:n]), "backward": timing_stats(slow[n:2 * n]),
            "backward_recompute": timing_stats(slow[2 * n:])}


def time_points(plan: ComputePlan, layer: str, t: int, s: int, sp: bool, timer, child, device, dtype):
    """(micro-batch size, times) of ``layer`` at degree t and sequence length s, for every micro-batch size: at
    t = 1 galvatron_models' plain module in this process (the runtime wraps a tp-1 layer in no DTensor), at t > 1
    the module as the runtime shards it (wrapped.py), in ``child``, with sequence parallelism when ``sp``."""
    import torch

    from .layers import build_shard, make_inputs

    if t == 1:
        torch.manual_seed(0)
        module = build_shard(plan.spec, layer, t, dtype=dtype, device=device)
        for b in plan.micro_batch_sizes:
            args, grad = make_inputs(plan.spec, layer, b, s, dtype=dtype, device=device)
            with timer.named(f"timing {layer} (tp 1, seq {s}, micro-batch {b})"):
                times = time_layer(module, args, grad, timer, plan.warmup, plan.repeats)
            yield b, times
        return
    child.build(plan.spec, layer, t, sp, plan.dtype)
    for b in plan.micro_batch_sizes:
        what = f"{layer} (tp {t}{', sp' if sp else ''}, seq {s}, micro-batch {b})"
        child.inputs(b, s)
        with timer.named(f"timing {what}"):
            times = time_runner(child, timer, plan.warmup, plan.repeats)
        child.check(what)
        yield b, times


def compute_worker(opts: ComputeOptions) -> dict | None:
    """One rank's whole probe; rank 0 (or the only process) returns the model-profile document."""
    import torch

    from .bandwidth import Timer, device_info
    from .launch import close_distributed, init_distributed, set_threads
    from .layers import param_split, param_tensor_count
    from .memory import saved_bytes_per_sample, workspace_bytes_per_sample
    from .optimizer import time_optimizer_step
    from .wrapped import WrappedChild

    t_start = time.perf_counter()
    d = init_distributed(None, opts.timeout_s)
    child = None
    try:
        threads = set_threads(int(os.environ.get("LOCAL_WORLD_SIZE", d.world)))
        plan = resolve(opts, d.device.type == "cuda")
        dtype = torch.float32 if plan.dtype == "fp32" else torch.bfloat16
        timer = Timer(d.device, opts.timeout_s, distributed=d.world > 1, shared_clock=d.ranks_per_node == d.world)
        child = WrappedChild(d.device, threads, timer.shared_clock, opts.timeout_s)
        steps = sum(1 + len(plan.micro_batch_sizes) * (1 + (t > 1 and s % t == 0))
                    for _ in plan.layers for t in plan.tp_degrees for s in plan.seq_lens) + 1
        progress = Progress(steps, "compute", enabled=opts.progress and d.is_main)
        entries = []
        for layer in plan.layers:
            for t in plan.tp_degrees:
                total, replicated = param_split(plan.spec, layer, t)
                memory, timings, sp_timings = [], [], []
                for s in plan.seq_lens:
                    saved = [saved_bytes_per_sample(plan.spec, layer, t, s, rc, dtype, d.device) for rc in (0, 1)]
                    memory.append({"seq_len": s, "saved_bytes_per_sample": saved[0],
                                   "recompute_saved_bytes_per_sample": saved[1]})
                    workspace = workspace_bytes_per_sample(plan.spec, layer, t, s, dtype, d.device)
                    if workspace is not None:  # CUDA only: the CPU allocator keeps no peak
                        memory[-1]["workspace_bytes_per_sample"] = workspace
                    progress.step(f"{layer} tp={t} seq={s} memory")
                    for sp in (False, True) if t > 1 and s % t == 0 else (False,):
                        out = sp_timings if sp else timings
                        for b, times in time_points(plan, layer, t, s, sp, timer, child, d.device, dtype):
                            out.append({"seq_len": s, "micro_batch_size": b, **times})
                            progress.step(f"{layer} tp={t}{' sp' if sp else ''} seq={s} b={b}")
                entry = {"layer": layer, "tp": t, "param_count": total,
                         "param_tensors": param_tensor_count(plan.spec, layer),
                         "param_count_tp_replicated": replicated, "memory": memory, "timings": timings}
                if sp_timings:
                    entry["sequence_parallel_timings"] = sp_timings
                entries.append(entry)
        with timer.named("timing the optimizer step"):
            optimizer_step = time_optimizer_step(plan.spec, timer, d.device, plan.warmup, plan.repeats, child)
        progress.step("optimizer step")
        timer.barrier()
    finally:
        if child is not None:
            child.close()
        close_distributed()
    if not d.is_main:
        return None
    return {
        "kind": "model-profile", "schema_version": CURRENT_VERSION["model-profile"],
        "producer": producer("galvatron-probe", __version__),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "model": plan.spec,
        "settings": {"dtype": plan.dtype, "seq_lens": plan.seq_lens, "micro_batch_sizes": plan.micro_batch_sizes,
                     "tp_degrees": plan.tp_degrees, "concurrent_ranks": d.world, "threads_per_rank": threads,
                     "device": device_info(d.device), "warmup": plan.warmup, "repeats": plan.repeats,
                     "quick": opts.quick, "elapsed_s": time.perf_counter() - t_start},
        "layers": entries,
        "optimizer_step": optimizer_step,
    }

