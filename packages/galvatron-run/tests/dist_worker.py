"""Rank program for the distributed tests: one torchrun launch runs many plans in one world.

    torchrun --nproc-per-node 4 tests/dist_worker.py CASES.json OUT_DIR

CASES.json: [{"name", "plan", "steps", "dtype", "data": "random" | "pattern"}]. For each case, rank 0 writes
OUT_DIR/<name>.losses.json, and local rank 0 of every stage OUT_DIR/<name>.stage<k>.pt ({FQN: full tensor}).
"""
from __future__ import annotations

import json
import os
import sys
import traceback
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).parent))

from galvatron_contracts.launch import run_as_rank  # noqa: E402
from galvatron_run.data import make_data_source  # noqa: E402
from galvatron_run.plan import checked_plan  # noqa: E402
from galvatron_run.train import build_state, full_parameters, train  # noqa: E402


class Pattern:
    """A learnable task: each row repeats a short random pattern (seeded by step), so the next token is predictable."""

    def __init__(self, vocab, seq, batch, seed, period=5):
        self.vocab, self.seq, self.rows, self.seed, self.period = vocab, seq, batch, seed, period

    def batch(self, step):
        g = torch.Generator().manual_seed(self.seed + step)
        pat = torch.randint(0, min(self.vocab, 16), (self.rows, self.period), generator=g)
        reps = (self.seq + 1 + self.period - 1) // self.period
        tokens = pat.repeat(1, reps)[:, : self.seq + 1]
        return tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()


def data_for(case, plan):
    spec, seq = plan["model"], plan["training"]["seq_len"]
    if case.get("data") == "pattern":
        return Pattern(spec["vocab_size"], seq, plan["global_batch"], 7)
    return make_data_source(None, vocab_size=spec["vocab_size"], seq_len=seq, global_batch=plan["global_batch"],
                            seed=plan["training"]["seed"])


def main(cases_path, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", timeout=timedelta(seconds=60))
    rank = dist.get_rank()
    out = Path(out_dir)
    for case in json.loads(Path(cases_path).read_text()):
        plan = case["plan"]
        try:
            checked_plan(plan, dist.get_world_size(), case["name"])
            state = build_state(plan, torch.device("cpu"), dtype=case.get("dtype"), steps=case["steps"],
                                timeout_s=60)
            result = train(state, data_for(case, plan), case["steps"], measure_memory=case.get("memory", False))
            params = full_parameters(state)
        except Exception:
            traceback.print_exc()
            (out / f"{case['name']}.error.rank{rank}").write_text(traceback.format_exc())
            raise
        if state.env.j == 0:
            torch.save(params, out / f"{case['name']}.stage{state.env.stage}.pt")
        mem = [None] * dist.get_world_size()
        dist.all_gather_object(mem, result["memory"])
        if rank == 0:
            (out / f"{case['name']}.losses.json").write_text(json.dumps(
                {"losses": [r["loss"] for r in result["steps"]], "norms": [r["grad_norm"] for r in result["steps"]],
                 "memory": mem}))
        dist.barrier()
        state.env.close()
        del state
    dist.destroy_process_group()


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    run_as_rank(lambda: main(sys.argv[1], sys.argv[2]))
