"""Runtime overhead: galvatron-run's pure data-parallel plan against a plain DDP training loop of the same model.

    python integration_tests/bench/overhead.py                       # in `tox -e bench` (all four packages)
    python integration_tests/bench/overhead.py --nproc 4 --model mini-gpt --steps 20 --rounds 3

Side by side in one run, alternating launches (A B B A A B ...) so that drift of the shared machine cancels:
- A: ``galvatron-run --model MODEL --global-batch B --nproc N`` (global mode: pp 1, tp 1, ddp, one micro-batch);
- B: this file's own loop under ``torch.distributed.run``: a GPT written here in a few lines with
  ``nn.TransformerEncoderLayer`` (pre-norm, GELU-tanh, no dropout, causal SDPA), learned positions, a final
  LayerNorm and an LM head tied to the token embedding, wrapped in ``DistributedDataParallel``; AdamW, gradient
  clipping at 1.0, random tokens. It does not import galvatron_run.
Same size: the parameter count is checked equal to the model spec's (galvatron's contracts library), and the
FLOPs are the same matmuls (q, k, v packed in one in_proj, output projection, MLP h->ffn->h, tied head).
Both time a step the same way: barrier, zero_grad, forward/backward, gradient sync, clip, AdamW, all-reduce of the
loss, barrier, the slowest rank's time. Prints one table (medians per launch and pooled); target: runtime
within 5 % of the plain loop (pooled median ratio <= 1.05). Exits 1 when missed.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from galvatron_contracts.launch import run_as_rank

TARGET = 1.05


# --- the plain loop (one rank under torch.distributed.run) -------------------------------------------------------

def plain_gpt(spec: dict):
    import torch
    import torch.nn.functional as F
    from torch import nn

    class GPT(nn.Module):
        def __init__(self):
            super().__init__()
            h = spec["hidden"]
            self.tok, self.pos = nn.Embedding(spec["vocab_size"], h), nn.Embedding(spec["max_seq_len"], h)
            self.blocks = nn.ModuleList(
                nn.TransformerEncoderLayer(h, spec["heads"], spec["ffn_hidden"], dropout=0.0, batch_first=True,
                                           norm_first=True, activation=lambda x: F.gelu(x, approximate="tanh"),
                                           layer_norm_eps=spec.get("norm_eps", 1e-5))
                for _ in range(spec["layers"]))
            self.norm = nn.LayerNorm(h, eps=spec.get("norm_eps", 1e-5))
            self.head = nn.Linear(h, spec["vocab_size"], bias=False)
            self.head.weight = self.tok.weight                       # tied
            for p in self.parameters():
                if p.ndim >= 2:
                    nn.init.normal_(p, std=0.02)

        def forward(self, idx):
            T = idx.shape[1]
            x = self.tok(idx) + self.pos(torch.arange(T, device=idx.device))
            mask = nn.Transformer.generate_square_subsequent_mask(T, device=idx.device)
            for blk in self.blocks:
                x = blk(x, src_mask=mask, is_causal=True)
            return self.head(self.norm(x))

    return GPT()


def worker(args) -> None:
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F
    from torch.nn.parallel import DistributedDataParallel as DDP

    from galvatron_contracts.models import load_model_spec, param_count

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    spec = load_model_spec(args.model)
    torch.manual_seed(1234)
    model = plain_gpt(spec)
    n = sum(p.numel() for p in model.parameters())
    if n != param_count(spec):
        raise SystemExit(f"plain GPT has {n} parameters, the spec {param_count(spec)}")
    model = DDP(model)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1)
    B, T = args.global_batch, args.seq_len or spec["max_seq_len"]
    g = torch.Generator().manual_seed(1234)
    times = []
    for _ in range(args.steps):
        tokens = torch.randint(0, spec["vocab_size"], (B, T + 1), generator=g)
        mine = tokens[rank * B // world:(rank + 1) * B // world]
        x, y = mine[:, :-1], mine[:, 1:]
        dist.barrier()
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x).reshape(-1, spec["vocab_size"]), y.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        loss = loss.detach()
        dist.all_reduce(loss)
        dist.barrier()
        t = torch.tensor([time.perf_counter() - t0], dtype=torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        times.append(float(t))
    if rank == 0:
        Path(args.times).write_text(json.dumps({"params": n, "times": times}))
    dist.destroy_process_group()


# --- the side-by-side benchmark -------------------------------------------------------------------------------------

def env() -> dict:
    e = dict(os.environ)
    e["OMP_NUM_THREADS"] = "1"
    return e


def run_galvatron(args, work: Path, i: int) -> list[float]:
    report = work / f"galvatron-{i}.json"
    cmd = [sys.executable, "-m", "galvatron_run", "--model", args.model, "--global-batch", str(args.global_batch),
           "--nproc", str(args.nproc), "--steps", str(args.steps), "--warmup-steps", str(args.warmup_steps),
           "--report", str(report)]
    with open(work / f"galvatron-{i}.log", "w") as log:
        subprocess.run(cmd, check=True, stderr=log, env=env())
    doc = json.loads(report.read_text())
    summary = doc["plan"]["summary"]
    if i == 0:
        print(f"galvatron-run plan: {summary}", file=sys.stderr)
    return [s["time_s"] for s in doc["steps"] if not s.get("warmup")]


def run_plain(args, work: Path, i: int) -> list[float]:
    out = work / f"plain-{i}.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={args.nproc}",
           str(Path(__file__).resolve()), "--worker", "--model", args.model, "--global-batch", str(args.global_batch),
           "--steps", str(args.steps), "--times", str(out)]
    with open(work / f"plain-{i}.log", "w") as log:
        subprocess.run(cmd, check=True, stderr=log, env=env())
    return json.loads(out.read_text())["times"][args.warmup_steps:]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nproc", type=int, default=4)
    ap.add_argument("--model", default="mini-gpt")
    ap.add_argument("--global-batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup-steps", type=int, default=3, help="Excluded from the medians (galvatron-run also "
                                                                "excludes the step it profiles memory in).")
    ap.add_argument("--rounds", type=int, default=2, help="Launches of each side, alternating A B B A ...")
    ap.add_argument("--out", help="Keep the reports and logs here.")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--times", help=argparse.SUPPRESS)
    ap.add_argument("--seq-len", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    work = Path(args.out or tempfile.mkdtemp(prefix="overhead-"))
    work.mkdir(parents=True, exist_ok=True)
    la = os.getloadavg()
    print(f"overhead: {args.model}, {args.nproc} ranks, global batch {args.global_batch}, {args.steps} steps "
          f"({args.warmup_steps} warm-up), {args.rounds} rounds -- "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load average {la[0]:.2f} {la[1]:.2f} {la[2]:.2f}, "
          f"{os.cpu_count()} cores; logs in {work}")
    t0 = time.perf_counter()
    sides = {"galvatron-run": (run_galvatron, []), "plain DDP": (run_plain, [])}
    order = []
    for r in range(args.rounds):
        order += ["galvatron-run", "plain DDP"] if r % 2 == 0 else ["plain DDP", "galvatron-run"]
    for i, name in enumerate(order):
        fn, acc = sides[name]
        times = fn(args, work, i)
        acc.append(times)
        print(f"  launch {i}: {name} median {statistics.median(times):.4f} s over {len(times)} steps",
              file=sys.stderr, flush=True)
    g = [t for ts in sides["galvatron-run"][1] for t in ts]
    p = [t for ts in sides["plain DDP"][1] for t in ts]
    print("\n| side | median step s per launch | pooled median s | p25-p75 s | samples/s |\n|---|---|---|---|---|")
    for name, (_, acc) in sides.items():
        pooled = [t for ts in acc for t in ts]
        q = statistics.quantiles(pooled, n=4)
        print(f"| {name} | {', '.join(f'{statistics.median(ts):.4f}' for ts in acc)} | "
              f"{statistics.median(pooled):.4f} | {q[0]:.4f}-{q[2]:.4f} | "
              f"{args.global_batch / statistics.median(pooled):.2f} |")
    ratio = statistics.median(g) / statistics.median(p)
    per_round = [statistics.median(a) / statistics.median(b)
                 for a, b in zip(sides["galvatron-run"][1], sides["plain DDP"][1], strict=True)]
    ok = ratio <= TARGET
    print(f"\ngalvatron-run / plain DDP step time: {ratio:.3f} pooled (per round: "
          f"{', '.join(f'{x:.3f}' for x in per_round)}); target <= {TARGET:.2f}: {'PASS' if ok else 'MISS'}")
    la = os.getloadavg()
    print(f"done in {time.perf_counter() - t0:.0f} s, load average {la[0]:.2f} {la[1]:.2f} {la[2]:.2f}")
    if not ok:
        print(f"MISSED: runtime overhead {ratio - 1:+.1%} (target <= {TARGET - 1:.0%})")
        return 1
    return 0


if __name__ == "__main__":
    run_as_rank(main)
