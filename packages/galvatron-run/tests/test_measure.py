"""The CPU peak reconstruction in measure.py: the profiler's trace misses frees done on gloo's threads; the storages'
own frees on those threads fill them in."""
from __future__ import annotations

import socket
import time

import torch
import torch.distributed as dist
from torch._C._profiler import _EventType
from torch.profiler import ProfilerActivity, profile

from galvatron_run.measure import _CollectiveFrees, trace_peak, unseen_clone_frees


def test_a_block_the_trace_never_frees_is_closed_at_its_storage_free():
    allocations = [(0, 0xA, 100), (10, 0xB, 50)]
    assert trace_peak(allocations, []) == 150                  # the trace alone: the block stays counted
    assert trace_peak(allocations, [(5, 0xA)]) == 100


def test_reuse_of_an_address_closes_the_block_that_was_there():
    allocations = [(0, 0xA, 100), (10, 0xA, 80), (20, 0xB, 30)]    # 0xA freed unseen, then handed out again
    assert trace_peak(allocations, []) == 110


def test_frees_the_trace_records_count_as_they_are():
    allocations = [(0, 0xA, 100), (5, 0xA, -100), (10, 0xB, 50), (20, 0xC, 100)]
    assert trace_peak(allocations, []) == 150


def test_a_collectives_internal_clone_the_trace_never_frees_is_freed_at_the_ops_end():
    """0xA: made inside a c10d op ending at 30, never freed in the trace, its address handed out again at 100:
    freed at 30 (before 0xE comes at 50). 0xB: the same, but the trace saw its free: nothing added. 0xC: a
    collective's result (a Python tensor, watched at 12): its free is the watcher's. 0xD: made outside any
    collective. 0xA's later watch (at 150) belongs to its next life."""
    allocations = [(10, 0xA, 100), (100, 0xA, 50), (10, 0xB, 7), (40, 0xB, -7), (11, 0xC, 6), (12, 0xD, 1),
                   (50, 0xE, 100)]
    inside = {0: 30, 2: 30, 4: 30}
    hidden = unseen_clone_frees(allocations, inside, {0xC: [12], 0xA: [150]})
    assert hidden == [(30, 0xA)]
    assert trace_peak(allocations, hidden) == 157            # 0xC, 0xD, 0xE, then 0xA again: never two 100s
    assert trace_peak(allocations, []) == 207                # the clone counted until its address is reused


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_each_collective_buffer_free_is_seen_once():
    """One gloo process: every all-reduced buffer's free is in the trace (freed on this thread) or among the
    recorded frees (freed on gloo's worker thread, which the trace misses), never in both, never in neither."""
    n, size = 20, 200_000
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{_port()}", rank=0, world_size=1)
    try:
        frees = _CollectiveFrees()
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof, frees:
            for _ in range(n):
                flat = torch.ones(size // 4)
                dist.all_reduce(flat)
                del flat
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and any(ref() is not None for ref in frees._watched.values()):
                time.sleep(0.01)            # lets gloo's threads take the GIL and drop what they still hold
        frees.stop()
        in_trace = _trace_frees(prof, size)
        assert in_trace + len(frees.freed) == n, (in_trace, len(frees.freed))
    finally:
        dist.destroy_process_group()


def _trace_frees(prof, size: int) -> int:
    stack, count = list(prof.profiler.kineto_results.experimental_event_tree()), 0
    while stack:
        node = stack.pop()
        if node.typed[0] == _EventType.Allocation and node.typed[1].alloc_size == -size:
            count += 1
        stack.extend(node.children)
    return count
