"""The GPU check: ~1B-parameter GPT and LLaMA in bf16 on one CUDA GPU, predicted vs measured, in one command.

    python integration_tests/gpu/gpu_check.py --out integration_tests/gpu/results/$(date +%F)   # < 8 min on an H100
    python integration_tests/gpu/gpu_check.py          # without a CUDA GPU: prints 'skipped: no CUDA GPU', exit 0
    python integration_tests/gpu/gpu_check.py --cpu-dry-run     # the same steps on CPU with tiny models (debugging)

For each model (models/gpt-1b/config.json: GPT-2 style, 18 x 2048, 1.01 B parameters; models/llama-1b/config.json:
LLaMA style, 16 x 2048, GQA 32/8, SwiGLU 8192, 1.10 B parameters), with the four tools' command lines:
1. ``galvatron-probe compute --model CONFIG --nproc 1 --dtype bf16 --tp 1 --seq-len 1024`` (the model profile);
2. ``galvatron-cost fit`` with a hardware profile of this host (``galvatron-probe bandwidth --backend gloo
   --nproc 2 --quick``: bandwidth needs two ranks and NCCL cannot put two ranks on one GPU; a one-GPU plan has no
   collectives, so only the profile's shape is used; the plans' cluster is then set to this GPU and NCCL);
3. ``galvatron-search --memory <90 % of the GPU> --global-batch B --no-recompute`` (no recompute), and the same plan
   with full recompute on every decoder layer, predictions from ``galvatron-search evaluate``;
4. ``galvatron-run PLAN --nproc 1 --steps S`` for both.
Prints a table: predicted vs measured step time, MFU (bf16 dense peak of the device), CUDA allocator peak
(max_memory_allocated) vs the predicted peak, per model and recompute setting; writes summary.json and every
document to --out. Exits 0 when every run completed (the numbers are reported, not judged: targets live in the CPU
benchmark), 1 when a step failed, 0 with 'skipped: no CUDA GPU' without one.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
GIB = 2 ** 30
MODELS = [HERE / "models" / "gpt-1b", HERE / "models" / "llama-1b"]
DRY_MODELS = ["tiny-gpt", "tiny-llama"]


def tool(module: str, *args, log: Path, timeout: float) -> None:
    cmd = [sys.executable, "-m", module, *map(str, args)]
    shown = "galvatron-" + module.split("_", 1)[1] + " " + " ".join(map(str, args))
    print(f"$ {shown}", file=sys.stderr, flush=True)
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "4")
    with open(log, "w") as err:
        done = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=err, env=env, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"`{shown}` failed with exit code {done.returncode}; its log ({log}):\n"
                           + log.read_text()[-4000:])


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def on_this_gpu(plan: dict, device_name: str) -> dict:
    """The plan's cluster as this GPU with NCCL (the hardware profile came from gloo ranks, see the docstring)."""
    plan["cluster"]["backend"] = "nccl"
    plan["cluster"]["device"] = {"type": "cuda", "name": device_name, "peak_tflops": None}
    return plan


def check_model(model: str, name: str, out: Path, hw: Path, args, device_name: str | None) -> list[dict]:
    d = out / name
    d.mkdir(parents=True, exist_ok=True)
    mp, cm = d / "mp.json", d / "cm.json"
    dtype = "fp32" if args.cpu_dry_run else "bf16"
    seq = [] if args.cpu_dry_run else ["--seq-len", args.seq_len]
    tool("galvatron_probe", "compute", "--model", model, "--nproc", 1, "--dtype", dtype, "--tp", 1,
         "--micro-batch-sizes", args.micro_batch_sizes, *seq, "--no-progress", "-o", mp, log=d / "compute.log",
         timeout=180)
    tool("galvatron_cost", "fit", hw, mp, "--nodes", 1, "--gpus-per-node", 1, "-o", cm, log=d / "fit.log", timeout=60)
    budget = args.memory_gib
    plain = d / "plan.json"
    tool("galvatron_search", cm, "--memory", budget, "--global-batch", args.global_batch, "--no-recompute", "-o", plain,
         log=d / "search.log", timeout=60)
    rc = load(plain)
    rc.pop("predictions", None)
    rc.pop("search", None)
    rc["producer"] = {"name": "gpu-check", "version": "1.0"}
    for lay in rc["layers"]:
        lay["recompute"] = True
    rc_path = d / "plan-recompute.json"
    rc_path.write_text(json.dumps(rc, indent=1))
    tool("galvatron_search", "evaluate", rc_path, cm, "-o", rc_path, log=d / "evaluate.log", timeout=60)
    plans = {False: plain, True: rc_path}
    rows = []
    for recompute, path in plans.items():
        plan = load(path)
        if device_name is not None:
            path.write_text(json.dumps(on_this_gpu(plan, device_name), indent=1))
        report = path.with_suffix(".report.json")
        tool("galvatron_run", path, "--nproc", 1, "--steps", args.steps, "--warmup-steps", args.warmup_steps,
             "--report", report, log=path.with_suffix(".run.log"), timeout=150)
        rep = load(report)
        pred = plan["predictions"]
        peak = max(r["peak_bytes"] for r in rep["memory"]["ranks"])
        th = rep["throughput"]
        rows.append({"model": name, "recompute": recompute, "plan": rep["plan"]["summary"],
                     "t_pred": pred["iteration_time_s"], "t_meas": th["iteration_time_s"],
                     "mfu": th["mfu"], "tflops": th["achieved_tflops"], "mem_pred": pred["stages"][0][
                         "memory_bytes_per_rank"]["total"], "mem_meas": peak,
                     "memory_method": rep["memory"]["method"], "tokens_per_s": th["tokens_per_s"]})
        r = rows[-1]
        print(f"  {name} recompute={recompute}: step {r['t_meas']:.3f} s (pred {r['t_pred']:.3f}), peak "
              f"{r['mem_meas'] / GIB:.2f} GiB (pred {r['mem_pred'] / GIB:.2f})", file=sys.stderr, flush=True)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", help="Directory for the documents, logs and summary.json (default: a temp dir).")
    ap.add_argument("--global-batch", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=1024)
    ap.add_argument("--micro-batch-sizes", default="1,2,4")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--warmup-steps", type=int, default=3)
    ap.add_argument("--memory-gib", type=float, help="Budget for the search (default: 90 %% of the GPU's memory).")
    ap.add_argument("--cpu-dry-run", action="store_true", help="Run the steps on CPU with tiny models (fp32).")
    args = ap.parse_args(argv)
    try:
        import torch
    except ImportError:
        print("skipped: no CUDA GPU (torch is not installed)")
        return 0
    if not args.cpu_dry_run and not torch.cuda.is_available():
        print("skipped: no CUDA GPU (torch.cuda.is_available() is False)")
        return 0
    import tempfile

    out = Path(args.out or tempfile.mkdtemp(prefix="gpu-check-"))
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if args.cpu_dry_run:
        device_name, models = None, [(m, m) for m in DRY_MODELS]
        args.memory_gib = args.memory_gib or 4.0
        print("gpu_check --cpu-dry-run: the GPU steps on CPU with tiny fp32 models (numbers mean nothing)")
    else:
        props = torch.cuda.get_device_properties(0)
        device_name = props.name
        args.memory_gib = args.memory_gib or round(0.9 * props.total_memory / GIB, 1)
        models = [(str(m), m.name) for m in MODELS]
        print(f"gpu_check on {device_name} ({props.total_memory / GIB:.0f} GiB), torch {torch.__version__}, "
              f"CUDA {torch.version.cuda}; budget {args.memory_gib} GiB, global batch {args.global_batch}, seq "
              f"{args.seq_len}, {args.steps} steps ({args.warmup_steps} warm-up)")
    hw = out / "hw.json"
    tool("galvatron_probe", "bandwidth", "--backend", "gloo", "--nproc", 2, "--quick", "--no-overlap",
         "--no-progress", "-o", hw, log=out / "bandwidth.log", timeout=120)
    rows, failed = [], []
    for model, name in models:
        try:
            rows += check_model(model, name, out, hw, args, device_name)
        except (RuntimeError, subprocess.TimeoutExpired) as e:
            print(f"FAILED {name}: {e}", file=sys.stderr)
            failed.append(name)
    print("\n| model | recompute | plan | pred step s | meas step s | meas/pred | TFLOP/s | MFU | pred peak GiB | "
          "allocator peak GiB | meas/pred |\n|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "-"
        print(f"| {r['model']} | {'full' if r['recompute'] else 'none'} | {r['plan']} | {r['t_pred']:.3f} | "
              f"{r['t_meas']:.3f} | {r['t_meas'] / r['t_pred']:.2f} | {r['tflops']:.1f} | {mfu} | "
              f"{r['mem_pred'] / GIB:.2f} | {r['mem_meas'] / GIB:.2f} | {r['mem_meas'] / r['mem_pred']:.2f} |")
    (out / "summary.json").write_text(json.dumps({"rows": rows, "failed": failed, "device": device_name,
                                                  "torch": torch.__version__, "seconds": time.perf_counter() - t0},
                                                 indent=1))
    print(f"\n{len(rows)} runs in {time.perf_counter() - t0:.0f} s; documents in {out}")
    if failed:
        print(f"FAILED: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
