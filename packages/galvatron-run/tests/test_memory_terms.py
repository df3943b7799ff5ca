"""What a zero3 + recompute layer really holds in its backward, measured on two gloo ranks.

FSDP2 runs each unit's backward in two phases that never overlap (galvatron-cost's memory.backward_phases):
compute (this unit's gathered parameters, the next unit's prefetched ones, the reduce-scatter input FSDP2 keeps from
the unit above, the fresh unsharded gradients: 4 buffers of 4P bytes in fp32) and reduce (a new reduce-scatter
input, gloo's clone of it, the fp32 output shard). A planner that adds the two phases counts one more buffer of 4P
than is ever live.

Measurement: the ranks run with glibc's mmap threshold fixed at 64 KiB (MALLOC_MMAP_THRESHOLD_), so every storage
above it is its own mapping, unmapped when freed on any thread (gloo frees its clones on its worker threads, where
the torch profiler sees nothing). The peak resident set over a training step (VmHWM after resetting it through
/proc/self/clear_refs) minus the resident set before the step is then the peak of what the step allocated.

Margin, from the mechanism: at the peak, the sharded gradients of every unit and the compute phase of a middle
decoder layer (16 P bytes) are live, each a mapping at least its size, so the step adds at least that; beside them
only the activations of one micro-batch of 1 sample x 16 tokens (under 1 MiB, the recomputed layer's included),
allocator rounding and interpreter heap are live: far less than the 4 P bytes (11 MiB) one more FSDP2 buffer
would add. So the measured bytes lie in [low, low + 4P): a fifth buffer of a layer's size, the sum of the phases,
fails the test, and so does a missing one.

Run as a rank program (``torchrun --nproc-per-node 2 test_memory_terms.py OUT``) this file measures one step.
"""
from __future__ import annotations

import gc
import json
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from dist_worker import data_for
from harness import launch_file, rank_jobs
from plans import S, make_plan

from galvatron_contracts.launch import run_as_rank
from galvatron_run.measure import PeakMemory
from galvatron_run.train import build_state, train_step

MODEL = {"hidden": 512, "ffn_hidden": 1408, "heads": 8, "kv_heads": 4}     # a decoder layer of 2.95 M parameters
PLAN = make_plan("tiny-llama", 2, [S(sharding="zero3", recompute=True)] * 4, [(0, 4)], b=2, m=8,
                 emb=S(sharding="zero3"), head=S(sharding="zero3"), seq=16, **MODEL)

pytestmark = pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    out = tmp_path_factory.mktemp("memory_terms")
    launch_file(__file__, out, timeout=300, MALLOC_MMAP_THRESHOLD_=str(64 * 1024))
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


@pytest.mark.parametrize("rank", [0, 1])
def test_zero3_recompute_backward_holds_one_phase_at_a_time(measured, rank):
    m = measured[rank]
    P = m["decoder_params"]
    low = m["sharded_grad_bytes"] + 4 * (4 * P)      # gathered, prefetched, kept reduce-scatter input, fresh grads
    assert low <= m["step_added_bytes"] < low + 4 * P, (
        f"rank {rank}: the step added {m['step_added_bytes'] / 2**20:.2f} MiB; FSDP2's compute phase and the "
        f"sharded gradients are {low / 2**20:.2f} MiB, one more layer buffer {4 * P / 2**20:.2f} MiB")


@pytest.mark.parametrize("rank", [0, 1])
def test_the_runtimes_trace_measures_what_the_resident_set_does(measured, rank):
    """galvatron-run's CPU peak (the profiler's trace, measure.PeakMemory) of the same step lies in the same
    bounds: a gloo reduce-scatter clone whose free the trace missed would stay counted, one more 4P buffer."""
    m = measured[rank]
    P = m["decoder_params"]
    low = m["sharded_grad_bytes"] + 4 * (4 * P)
    assert low <= m["trace_added_bytes"] < low + 4 * P, (
        f"rank {rank}: the trace says the step added {m['trace_added_bytes'] / 2**20:.2f} MiB (the resident set "
        f"{m['step_added_bytes'] / 2**20:.2f}); bounds {low / 2**20:.2f} + {4 * P / 2**20:.2f} MiB")


# ---- rank program -------------------------------------------------------------------------------------------------

def _status_bytes(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def _padded_shard(p: torch.Tensor, d: int) -> int:
    """Elements of one rank's FSDP2 shard of ``p``: dim 0 padded to a multiple of d."""
    return -(-p.shape[0] // d) * (p.numel() // p.shape[0])


def _measure(out: Path) -> None:
    state = build_state(PLAN, torch.device("cpu"), steps=2, timeout_s=60)
    data = data_for({}, PLAN)
    train_step(state, data)                        # the optimizer states exist from here on
    state.optimizer.zero_grad(set_to_none=True)    # the step would free them inside the measured region
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak resident set
    before = _status_bytes("VmRSS")
    train_step(state, data)
    added = _status_bytes("VmHWM") - before
    state.optimizer.zero_grad(set_to_none=True)
    peak = PeakMemory(torch.device("cpu"))         # the runtime's own measurement of the same step, on the trace
    with peak.measure():
        train_step(state, data)
    d = state.env.size
    decoder = next(u for u in state.units if u.kind == "decoder")
    record = {"step_added_bytes": added, "trace_added_bytes": peak.peak - peak.baseline,
              "decoder_params": sum(p.numel() for _, p in decoder.parameters()),
              "sharded_grad_bytes": sum(4 * _padded_shard(p, d) for u in state.units for _, p in u.parameters())}
    (out / f"rank{dist.get_rank()}.json").write_text(json.dumps(record))
    dist.barrier()
    state.env.close()


if __name__ == "__main__":
    run_as_rank(lambda: rank_jobs(sys.argv[1], lambda out: {"measure": lambda: _measure(out)}))
