"""Memory measurement: the allocator's peak (CUDA) or the CPU profiler's allocation trace, and the tensor-level
accounting beside it (parameters, gradients, optimizer states, bytes saved for backward)."""
from __future__ import annotations

import contextlib
import gc
import threading
import time
import weakref

import torch
from torch.distributed.tensor import DTensor
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


def _storage(t: torch.Tensor):
    if isinstance(t, DTensor):
        t = t.to_local()
    try:
        s = t.untyped_storage()
        return s.data_ptr(), s.nbytes()
    except (RuntimeError, NotImplementedError):
        return None, 0


def tensor_bytes(tensors) -> int:
    """Bytes of the distinct storages behind ``tensors`` (local shards of DTensors)."""
    seen = {}
    for t in tensors:
        if t is None:
            continue
        ptr, n = _storage(t)
        if ptr is not None and ptr:
            seen[ptr] = n
    return sum(seen.values())


def live_tensor_bytes() -> int:
    """Bytes of every tensor storage the garbage collector can see now (a baseline the profiler cannot see)."""
    import warnings
    ts = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")              # isinstance() on deprecated torch objects warns
        for obj in gc.get_objects():
            try:
                if isinstance(obj, torch.Tensor):
                    ts.append(obj)
            except ReferenceError:
                pass
    return tensor_bytes(ts)


def peak_rss_bytes() -> int:
    """This process's peak resident set size (Linux reports KiB)."""
    import resource
    import sys
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)


class SavedTensors:
    """Peak bytes saved for backward at once, via saved-tensor hooks (storages deduplicated, parameters excluded)."""

    def __init__(self):
        self.live: dict[int, list] = {}
        self.current = 0
        self.peak = 0

    def _pack(self, t):
        if isinstance(t, torch.nn.Parameter) or (t.is_leaf and t.requires_grad):
            return t
        ptr, n = _storage(t)
        if ptr:
            entry = self.live.setdefault(ptr, [0, n])
            if entry[0] == 0:
                self.current += n
                self.peak = max(self.peak, self.current)
            entry[0] += 1
        return _Handle(self, t, ptr)

    @staticmethod
    def _unpack(h):
        return h.tensor if isinstance(h, _Handle) else h

    def _release(self, ptr):
        entry = self.live.get(ptr)
        if entry is None:
            return
        entry[0] -= 1
        if entry[0] == 0:
            self.current -= entry[1]
            del self.live[ptr]

    def hooks(self):
        return torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)


class _Handle:
    __slots__ = ("owner", "tensor", "ptr")

    def __init__(self, owner, tensor, ptr):
        self.owner, self.tensor, self.ptr = owner, tensor, ptr

    def __del__(self):
        if self.ptr:
            self.owner._release(self.ptr)


class _CollectiveFrees(TorchDispatchMode):
    """The frees, on other threads, of the storages that collectives touched: the ones the CPU profiler misses.

    gloo runs a collective on its own worker thread, and the work object there holds the collective's tensors until
    that thread lets go of it, a moment after the caller's ``wait()`` returns. When the caller has dropped its own
    reference first, the storage is freed on the worker thread (once it takes the GIL), where the profiler, which
    reports memory on the threads it profiles only, records nothing: the allocation would stay in the trace for
    good. A weak reference to the storage fires on the real free, on any thread, just before the memory goes; its
    time (``time.time_ns``, the clock of the profiler's events) is the missing free. Frees on the entering thread
    are left to the trace."""

    def __init__(self):
        super().__init__()
        self.freed: list[tuple[int, int]] = []        # (time ns, data_ptr) of each storage freed on another thread
        self._watched: dict[int, weakref.ref] = {}     # data_ptr -> weak reference to the storage there
        self.surfaced: dict[int, list[int]] = {}       # data_ptr -> times (ns) a collective's tensor had it
        self._thread = threading.get_ident()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.namespace in ("c10d", "_c10d_functional"):
            for t in tree_leaves((args, kwargs, out)):
                if type(t) is torch.Tensor:
                    self._watch(t.untyped_storage())
        return out

    def _watch(self, storage) -> None:
        ptr = storage.data_ptr()
        self.surfaced.setdefault(ptr, []).append(time.time_ns())
        known = self._watched.get(ptr)
        if ptr and (known is None or known() is not storage):
            self._watched[ptr] = weakref.ref(storage, lambda _, p=ptr: self._freed(p))

    def _freed(self, ptr: int) -> None:
        if threading.get_ident() != self._thread:
            self.freed.append((time.time_ns(), ptr))

    def stop(self) -> None:
        self._watched.clear()                          # a dropped weak reference calls back no more


def trace_peak(allocations: list[tuple[int, int, int]], freed: list[tuple[int, int]]) -> int:
    """Peak of the running total of the trace's ``allocations`` ((time ns, data_ptr, bytes), frees negative), with
    the frees it missed, ``freed`` ((time ns, data_ptr) of each block freed on another thread), put in."""
    events = sorted([(t, ptr, n) for t, ptr, n in allocations] + [(t, ptr, None) for t, ptr in freed],
                    key=lambda e: e[0])
    live: dict[int, int] = {}       # data_ptr -> bytes of each block counted now
    cur = high = 0
    for _, ptr, n in events:
        if n is None:
            cur -= live.pop(ptr, 0)
        elif n > 0:
            cur += n - live.pop(ptr, 0)     # a block still counted at this address was freed unseen
            live[ptr] = n
            high = max(high, cur)
        else:
            live.pop(ptr, None)
            cur += n
    return high


def unseen_clone_frees(allocations: list[tuple[int, int, int]], inside_collective: dict[int, int],
                       surfaced: dict[int, list[int]]) -> list[tuple[int, int]]:
    """(time ns, data_ptr) frees for the blocks a collective allocated internally and the trace never frees.

    gloo clones a reduce-scatter's input inside the op (``c10d::_reduce_scatter_base_``) and its worker thread
    frees the clone once the collective is done; the profiler mostly misses that free, so the clone would stay
    counted until its address is handed out again (with FSDP, about one phantom buffer per micro-batch: the
    "peak" then grew with the micro-batch count while the resident memory did not). ``inside_collective``:
    allocation index -> end (ns) of the c10d op it was made in. Such a block, not freed in the trace before its
    address is allocated again and never a Python tensor meanwhile (``surfaced``: the times _CollectiveFrees saw
    each address in a collective's arguments or results), is freed at the end of that op: the clone serves the
    collective the op launched, which the op's end bounds for a synchronous one; an asynchronous one may hold it a
    little longer (checked against the resident set in test_memory_terms)."""
    by_ptr: dict[int, list[tuple[int, int, int]]] = {}
    for i, (t, ptr, n) in enumerate(allocations):
        by_ptr.setdefault(ptr, []).append((t, i, n))
    frees = []
    for ptr, events in by_ptr.items():
        events.sort()
        for k, (t, i, n) in enumerate(events):
            if n <= 0 or i not in inside_collective:
                continue
            until = events[k + 1][0] if k + 1 < len(events) else float("inf")
            if k + 1 < len(events) and events[k + 1][2] < 0:         # the trace saw it freed
                continue
            if any(t <= seen < until for seen in surfaced.get(ptr, ())):   # a Python tensor: its free is watched
                continue
            end = inside_collective[i]
            if end < until:
                frees.append((end, ptr))
    return frees


class PeakMemory:
    """Context over one training step: the peak bytes allocated, by the CUDA allocator or the CPU profiler."""

    def __init__(self, device: torch.device):
        self.device = device
        self.peak = 0
        self.baseline = 0
        self.method = ""

    @contextlib.contextmanager
    def measure(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.baseline = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            yield
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device)
            self.method = "torch.cuda.max_memory_allocated over one training step"
            return
        from torch._C._profiler import _EventType
        from torch.profiler import ProfilerActivity, profile
        gc.collect()
        self.baseline = live_tensor_bytes()
        frees = _CollectiveFrees()
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            with frees:
                yield
        frees.stop()
        allocations, inside_collective = [], {}
        stack = [(node, None) for node in prof.profiler.kineto_results.experimental_event_tree()]
        while stack:
            node, c10d_end = stack.pop()      # c10d_end: the end of the c10d op this node runs in (None: none)
            if node.typed[0] == _EventType.TorchOp and node.name.startswith("c10d::"):
                c10d_end = node.end_time_ns
            elif node.typed[0] == _EventType.Allocation:
                if c10d_end is not None:
                    inside_collective[len(allocations)] = c10d_end
                allocations.append((node.start_time_ns, node.typed[1].ptr, node.typed[1].alloc_size))
            stack.extend((child, c10d_end) for child in node.children)
        hidden = unseen_clone_frees(allocations, inside_collective, frees.surfaced)
        self.peak = self.baseline + trace_peak(allocations, frees.freed + hidden)
        self.method = ("CPU: live tensor storages before the step (garbage-collector scan) + the peak of the torch "
                       "profiler's allocation/free trace over one training step, with the frees of collective "
                       "buffers that gloo's threads performed (invisible to the profiler) taken from weak "
                       "references, and gloo's internal clones freed at the end of the collective op that made them")
