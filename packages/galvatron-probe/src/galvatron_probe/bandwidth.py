"""``galvatron-probe bandwidth``: collectives, p2p and compute/communication overlap of the launched world.

    torchrun --nproc-per-node 8 -m galvatron_probe bandwidth -o hw.json      # the launched world
    galvatron-probe bandwidth --nproc 4 --quick                              # 4 local ranks, reduced sweep

For every op in OPS, every group size n (powers of two dividing the world) and every layout (consecutive,
strided), all groups of the layout run the op at once; each point is timed on every rank between barriers
(CUDA events on GPU) and the slowest rank's time of each repeat is kept. ``message_bytes`` is the full buffer per
rank: the all_reduce input, the all_gather output, the reduce_scatter input, the all_to_all input, the p2p payload.
"""
from __future__ import annotations

import contextlib
import datetime
import functools
import os
import threading
import time
from dataclasses import dataclass, field

from galvatron_contracts.devices import cpu_name, peak_tflops
from galvatron_contracts.documents import CURRENT_VERSION, GalvatronError, UsageError, producer

from . import __version__
from .groups import (
    crosses_nodes,
    default_group_sizes,
    layout_groups,
    layout_stride,
    layouts_for,
    message_sizes,
    p2p_cases,
    pp_degrees,
)
from .progress import Progress
from .stats import timing_stats

OPS = ("all_reduce", "all_gather", "reduce_scatter", "all_to_all")
ELEMENT_BYTES = {"fp32": 4, "bf16": 2}
KIB, MIB = 1024, 1024 * 1024


@dataclass
class BandwidthOptions:
    """What the user asked for; None means the default for the device (see :func:`resolve`)."""

    backend: str | None = None
    quick: bool = False
    overlap: bool = True
    min_bytes: int | None = None
    max_bytes: int | None = None
    warmup: int | None = None
    repeats: int | None = None
    group_sizes: list[int] | None = None
    ranks_per_node: int | None = None
    dtype: str = "fp32"
    timeout_s: float = 60.0
    progress: bool = True


@dataclass
class Sweep:
    """The concrete sweep for one world: every number the measurement loop needs."""

    world: int
    ranks_per_node: int
    group_sizes: list[int]
    sizes: list[int]
    warmup: int
    repeats: int
    dtype: str
    pp: list[int] = field(default_factory=list)


def resolve(opts: BandwidthOptions, world: int, ranks_per_node: int, cuda: bool) -> Sweep:
    """Defaults and checks, before any rank does work: a request the world cannot serve is a UsageError (exit 2).

    CPU: 4 KiB..32 MiB (x2 steps), 3 warm-up + 10 repeats; GPU: 4 KiB..256 MiB, 5 + 20; --quick: 4 KiB..1 MiB
    (x4 steps), 1 + 3."""
    if world < 2:
        raise UsageError("bandwidth needs at least 2 ranks: use --nproc N, or launch under torchrun")
    if opts.dtype not in ELEMENT_BYTES:
        raise UsageError(f"--dtype: expected one of {', '.join(ELEMENT_BYTES)}, got {opts.dtype!r}")
    if ranks_per_node < 1 or world % ranks_per_node:
        raise UsageError(f"--gpus-per-node: {ranks_per_node} does not divide the world size {world}")
    sizes_n = opts.group_sizes or default_group_sizes(world)
    for n in sizes_n:
        if n < 2 or world % n:
            raise UsageError(f"--group-sizes: {n} is not a group size of a world of {world} ranks "
                             f"(expected a divisor of {world} of at least 2)")
    lo = opts.min_bytes or 4 * KIB
    hi = opts.max_bytes or (1 * MIB if opts.quick else 256 * MIB if cuda else 32 * MIB)
    if lo < 1 or hi < lo:
        raise UsageError(f"--min-bytes/--max-bytes: expected 1 <= min <= max, got {lo} and {hi}")
    sizes = message_sizes(lo, hi, factor=4 if opts.quick else 2)
    unit = ELEMENT_BYTES[opts.dtype] * max(sizes_n)
    bad = [m for m in sizes if m % unit]
    if bad:
        raise UsageError(f"message sizes must be multiples of {unit} bytes (element size x largest group), "
                         f"got {bad[0]}")
    warmup = opts.warmup if opts.warmup is not None else (1 if opts.quick else 5 if cuda else 3)
    repeats = opts.repeats if opts.repeats is not None else (3 if opts.quick else 20 if cuda else 10)
    if warmup < 0 or repeats < 1:
        raise UsageError(f"--warmup/--repeats: expected >= 0 and >= 1, got {warmup} and {repeats}")
    return Sweep(world=world, ranks_per_node=ranks_per_node, group_sizes=sorted(set(sizes_n)), sizes=sizes,
                 warmup=warmup, repeats=repeats, dtype=opts.dtype, pp=pp_degrees(world))


# --- measurement (every rank) -----------------------------------------------------------------------------------

class Timer:
    """Barrier-synchronised timing of one rank's call; CUDA events on GPU, a monotonic wall clock on CPU."""

    def __init__(self, device, timeout_s: float, distributed: bool = True, shared_clock: bool = True):
        import torch
        import torch.distributed as dist

        self.torch, self.dist, self.device, self.timeout_s = torch, dist, device, timeout_s
        self.cuda, self.distributed = device.type == "cuda", distributed
        self.shared_clock = shared_clock and not self.cuda  # CPU ranks of one host: one monotonic clock

    def barrier(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()
        if not self.distributed:
            return
        if self.cuda:
            self.dist.barrier(device_ids=[self.device.index])
        else:
            self.dist.barrier()

    def time(self, fn) -> float:
        if self.cuda:
            start, end = (self.torch.cuda.Event(enable_timing=True) for _ in range(2))
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    def stamp(self, fn) -> tuple[float, float]:
        """(start, end) of one call, to be passed to ``spans``. CPU ranks of one host read one monotonic clock, so
        the span from the earliest start to the latest end is the slowest rank's finish counted from the common
        start: ranks that share cores run in turns, and each rank's own timer would see an uncontended core.
        Elsewhere (GPU: CUDA events; CPU over several hosts: own time up to a barrier after the work) (0, time)."""
        if self.shared_clock:
            t0 = time.perf_counter()
            fn()
            return t0, time.perf_counter()
        if self.cuda or not self.distributed:
            return 0.0, self.time(fn)
        return 0.0, self.time(lambda: (fn(), self.barrier()))

    def spans(self, stamps: list[tuple[float, float]]) -> list[float]:
        """Per repeat, the latest end minus the earliest start over all ranks (one MAX all-reduce)."""
        ends = self.slowest([e for _, e in stamps] + [-s for s, _ in stamps])
        n = len(stamps)
        return [e + s for e, s in zip(ends[:n], ends[n:])]

    def slowest(self, times: list[float]) -> list[float]:
        """Per repeat, the maximum over all ranks."""
        if not self.distributed:
            return list(times)
        t = self.torch.tensor(times, dtype=self.torch.float64, device=self.device)
        self.dist.all_reduce(t, op=self.dist.ReduceOp.MAX)
        return t.tolist()

    def point(self, fn, warmup: int, repeats: int, active: bool = True) -> dict:
        """Warm up, then time ``repeats`` calls between barriers; the slowest rank's statistics.
        An inactive rank (outside every measured pair) only joins the barriers and the MAX (its time is 0)."""
        for _ in range(warmup):
            self.barrier()
            if active:
                fn()
        times = []
        for _ in range(repeats):
            self.barrier()
            times.append(self.time(fn) if active else 0.0)
        return timing_stats(self.slowest(times))

    @contextlib.contextmanager
    def named(self, what: str):
        """Turn a failed or timed-out collective into an error that names it (group, size)."""
        try:
            yield
        except GalvatronError:
            raise
        except Exception as e:
            raise GalvatronError(f"{what} failed or timed out (process-group timeout {self.timeout_s:g} s): "
                                 f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
                                 ) from None


def _op_call(op: str, n: int, m_elems: int, inp, out, group):
    import torch.distributed as dist

    if op == "all_reduce":
        buf = inp[:m_elems]
        return lambda: dist.all_reduce(buf, group=group)
    if op == "all_gather":
        src, dst = inp[: m_elems // n], out[:m_elems]
        return lambda: dist.all_gather_single(dst, src, group=group)
    if op == "reduce_scatter":
        src, dst = inp[:m_elems], out[: m_elems // n]
        return lambda: dist.reduce_scatter_single(dst, src, group=group)
    if op == "all_to_all":
        src, dst = inp[:m_elems], out[:m_elems]
        return lambda: dist.all_to_all_single(dst, src, group=group)
    raise ValueError(op)


def _p2p_call(pairs, rank: int, buf):
    import torch.distributed as dist

    for src, dst in pairs:
        if rank == src:
            return lambda: dist.isend(buf, dst).wait()
        if rank == dst:
            return lambda: dist.irecv(buf, src).wait()
    return None


def _fmt_bytes(m: int) -> str:
    return f"{m // MIB} MiB" if m >= MIB and m % MIB == 0 else f"{m // KIB} KiB" if m % KIB == 0 else f"{m} B"


def measure_collectives(d, sweep: Sweep, timer: Timer, progress: Progress) -> list[dict]:
    import torch
    import torch.distributed as dist

    dtype = torch.float32 if sweep.dtype == "fp32" else torch.bfloat16
    elem = ELEMENT_BYTES[sweep.dtype]
    top = max(sweep.sizes) // elem
    inp = torch.ones(top, dtype=dtype, device=d.device)
    out = torch.empty(top, dtype=dtype, device=d.device)
    entries = []
    for n in sweep.group_sizes:
        for layout in layouts_for(sweep.world, n):
            groups = layout_groups(sweep.world, n, layout)
            mine = None
            for ranks in groups:  # every rank creates every group, in the same order
                g = dist.new_group(ranks) if n < sweep.world else dist.group.WORLD
                if d.rank in ranks:
                    mine, my_ranks = g, ranks
            for op in OPS:
                points = []
                for m in sweep.sizes:
                    what = f"{op} over ranks {my_ranks} ({layout}, group size {n}) with {m} bytes"
                    with timer.named(what):
                        fn = _op_call(op, n, m // elem, inp, out, mine)
                        points.append({"message_bytes": m, "time": timer.point(fn, sweep.warmup, sweep.repeats)})
                    progress.step(f"{op} n={n} {layout} {_fmt_bytes(m)}")
                entries.append({"op": op, "group_size": n, "layout": layout,
                                "stride": layout_stride(sweep.world, n, layout),
                                "crosses_nodes": any(crosses_nodes(r, sweep.ranks_per_node) for r in groups),
                                "concurrent_groups": len(groups), "points": points})
    return entries


def measure_p2p(d, sweep: Sweep, timer: Timer, progress: Progress) -> list[dict]:
    import torch

    dtype = torch.float32 if sweep.dtype == "fp32" else torch.bfloat16
    elem = ELEMENT_BYTES[sweep.dtype]
    buf = torch.ones(max(sweep.sizes) // elem, dtype=dtype, device=d.device)
    entries = []
    for pp in sweep.pp:
        for crossing, pairs in p2p_cases(sweep.world, pp, sweep.ranks_per_node):
            points = []
            for m in sweep.sizes:
                fn = _p2p_call(pairs, d.rank, buf[: m // elem])
                with timer.named(f"send/recv between pipeline neighbours {pairs} (pp {pp}) with {m} bytes"):
                    stats = timer.point(fn, sweep.warmup, sweep.repeats, active=fn is not None)
                points.append({"message_bytes": m, "time": stats})
                progress.step(f"p2p pp={pp} {_fmt_bytes(m)}")
            entries.append({"pp_degree": pp, "crosses_nodes": crossing, "concurrent_pairs": len(pairs),
                            "points": points})
    return entries


def measure_overlap(d, sweep: Sweep, timer: Timer, quick: bool) -> dict:
    """Compute and an all_reduce over the world, alone and at the same time; slowdown = together / alone.

    CPU: a matmul loop in one thread, the all_reduce loop in another. GPU: a matmul loop on the default stream,
    the all_reduce on a side stream. The compute loop is sized to last about as long as the communication."""
    import torch
    import torch.distributed as dist

    cuda = d.device.type == "cuda"
    comm_bytes = (64 * MIB if cuda else 1 * MIB if quick else 4 * MIB)
    comm_iters = 4 if quick else 8
    trials = 2 if quick else 3
    dim = 4096 if cuda else 256
    mm_dtype = torch.bfloat16 if cuda else torch.float32
    a = torch.randn(dim, dim, dtype=mm_dtype, device=d.device)
    bmat = torch.randn(dim, dim, dtype=mm_dtype, device=d.device)
    buf = torch.ones(comm_bytes // 4, dtype=torch.float32, device=d.device)
    side = torch.cuda.Stream() if cuda else None
    threads = torch.get_num_threads()

    def comm():
        if cuda:
            with torch.cuda.stream(side):
                for _ in range(comm_iters):
                    dist.all_reduce(buf)
        else:
            for _ in range(comm_iters):
                dist.all_reduce(buf)

    def compute(iters):
        for _ in range(iters):
            torch.mm(a, bmat)

    def elapsed_cpu(fn):
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    def run_compute(loop, into):
        torch.set_num_threads(threads)  # OpenMP's thread count is per thread: keep the rank's
        into.append(elapsed_cpu(loop))

    def elapsed_cuda(fn, stream):
        start, end = (torch.cuda.Event(enable_timing=True) for _ in range(2))
        start.record(stream)
        fn()
        end.record(stream)
        return start, end

    with timer.named(f"overlap probe: all_reduce over the world ({d.world} ranks) with {comm_bytes} bytes"):
        timer.barrier()
        comm()  # warm-up
        compute(2)

        def comm_alone_s():
            timer.barrier()
            if cuda:  # the communication runs on the side stream: time it there
                cs, ce = elapsed_cuda(comm, side)
                ce.synchronize()
                return cs.elapsed_time(ce) / 1e3
            return timer.time(comm)

        # size the compute loop to last as long as the communication (slowest rank), the same on every rank
        c_max = timer.slowest([comm_alone_s()])[0]
        iters = 4
        for _ in range(3):
            timer.barrier()
            k_max = timer.slowest([timer.time(functools.partial(compute, iters))])[0]
            iters = int(timer.slowest([float(max(1, round(iters * c_max / max(k_max, 1e-9))))])[0])
        loop = functools.partial(compute, iters)
        comm_alone, comp_alone, comm_both, comp_both = [], [], [], []
        for _ in range(trials):
            comm_alone.append(comm_alone_s())
            timer.barrier()
            comp_alone.append(timer.time(loop))
            timer.barrier()
            if cuda:
                cs, ce = elapsed_cuda(comm, side)
                ks, ke = elapsed_cuda(loop, torch.cuda.current_stream())
                torch.cuda.synchronize()
                comm_both.append(cs.elapsed_time(ce) / 1e3)
                comp_both.append(ks.elapsed_time(ke) / 1e3)
            else:
                worker = threading.Thread(target=run_compute, args=(loop, comp_both))
                worker.start()
                comm_both.append(elapsed_cpu(comm))
                worker.join()
        ca, ka, cb, kb = (timing_stats(timer.slowest(x))["median_s"]
                          for x in (comm_alone, comp_alone, comm_both, comp_both))
    where = "a side CUDA stream" if cuda else "a second thread"
    return {"compute_slowdown": kb / ka, "comm_slowdown": cb / ca,
            "method": (f"{'bf16' if cuda else 'fp32'} {dim}x{dim} matmul loop ({iters} iterations) while "
                       f"{comm_iters} all_reduces of {comm_bytes} bytes over all {d.world} ranks run on {where}; "
                       f"slowest rank, median of {trials} trials, together / alone"),
            "compute_alone_s": ka, "comm_alone_s": ca, "compute_overlapped_s": kb, "comm_overlapped_s": cb}


def device_info(device) -> dict:
    """The schema's device object; the peak is the device's dense 16-bit one (galvatron_contracts.devices)."""
    import torch

    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return {"type": "cuda", "name": props.name, "memory_bytes": int(props.total_memory),
                "peak_tflops": peak_tflops(props.name, "bf16")}
    return {"type": "cpu", "name": cpu_name(), "peak_tflops": None}


def runtime_memory(device) -> dict:
    """Memory this process holds on its device regardless of the plan, the largest over the world (collective).

    CUDA: device memory in use (total - free) beyond the caching allocator's reservation, after the probe's
    collectives have created every communicator: the CUDA context, NCCL's buffers, library workspaces. One process
    per device is assumed (another process on the device would count too). CPU: a run-report's peak counts tensor
    storages only, and gloo keeps its buffers outside tensors, so the runtime adds no bytes the plan's model lacks
    (its receive buffers, reduce-scatter copies and autocast cache are in the cost model's memory terms)."""
    import torch
    import torch.distributed as dist

    if device.type == "cuda":
        torch.cuda.synchronize(device)
        free, total = torch.cuda.mem_get_info(device)
        own = max(0, (total - free) - torch.cuda.memory_reserved(device))
        method = ("CUDA: device memory in use (torch.cuda.mem_get_info) beyond torch.cuda.memory_reserved after "
                  "the probe's collectives, the largest rank's")
    else:
        own = 0
        method = ("CPU: none; a run-report's CPU peak counts tensor storages, and the runtime holds none beside "
                  "the plan's")
    largest = torch.tensor([own], dtype=torch.int64, device=device)
    dist.all_reduce(largest, op=dist.ReduceOp.MAX)
    return {"overhead_bytes": int(largest.item()), "method": method}


def bandwidth_worker(opts: BandwidthOptions) -> dict | None:
    """One rank's whole probe; rank 0 returns the hardware-profile document, the others None."""
    from .launch import close_distributed, init_distributed, set_threads

    t_start = time.perf_counter()
    d = init_distributed(opts.backend, opts.timeout_s, opts.ranks_per_node)
    try:
        threads = set_threads(int(os.environ.get("LOCAL_WORLD_SIZE", d.world)))
        sweep = resolve(opts, d.world, d.ranks_per_node, d.device.type == "cuda")
        timer = Timer(d.device, opts.timeout_s)
        n_points = len(sweep.sizes) * (sum(len(layouts_for(d.world, n)) for n in sweep.group_sizes) * len(OPS)
                                       + sum(len(p2p_cases(d.world, pp, sweep.ranks_per_node)) for pp in sweep.pp))
        progress = Progress(n_points, "bandwidth", enabled=opts.progress and d.is_main)
        collectives = measure_collectives(d, sweep, timer, progress)
        p2p = measure_p2p(d, sweep, timer, progress)
        overlap = measure_overlap(d, sweep, timer, opts.quick) if opts.overlap else None
        memory = runtime_memory(d.device)
        timer.barrier()
    finally:
        close_distributed()
    if not d.is_main:
        return None
    return {
        "kind": "hardware-profile", "schema_version": CURRENT_VERSION["hardware-profile"],
        "producer": producer("galvatron-probe", __version__),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cluster": {"nodes": d.world // sweep.ranks_per_node, "gpus_per_node": sweep.ranks_per_node,
                    "world_size": d.world, "device": device_info(d.device), "backend": d.backend},
        "settings": {"dtype": sweep.dtype, "warmup": sweep.warmup, "repeats": sweep.repeats, "quick": opts.quick,
                     "threads_per_rank": threads, "elapsed_s": time.perf_counter() - t_start},
        "collectives": collectives, "p2p": p2p, "overlap": overlap, "runtime_memory": memory,
    }
