"""Memory measurement: the allocator's peak (CUDA) or the CPU profiler's allocation trace, and the tensor-level
accounting beside it (parameters, gradients, optimizer states, bytes saved for backward)."""
from __future__ import annotations

import contextlib
import gc

import torch
from torch.distributed.tensor import DTensor


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
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            yield
        allocs = []
        stack = list(prof.profiler.kineto_results.experimental_event_tree())
        while stack:
            node = stack.pop()
            if node.typed[0] == _EventType.Allocation:
                allocs.append((node.start_time_ns, node.typed[1].alloc_size))
            stack.extend(node.children)
        allocs.sort()
        cur = high = 0
        for _, n in allocs:
            cur += n
            high = max(high, cur)
        self.peak = self.baseline + high
        self.method = ("CPU: live tensor storages before the step (garbage-collector scan) + the peak of the torch "
                       "profiler's allocation/free trace over one training step")
