"""The main job on this machine: probe, profile, fit, search under a tight budget, train with the plan, compare.

    tox -e quickstart                                   # what the README's first command runs
    python integration_tests/quickstart.py --out DIR    # the same with the four packages installed

Every step is one of the four tools' command lines, exactly as a user would type it; the documents land in
``--out`` (default ``quickstart-out/``). The memory budget is chosen below what pure data parallelism needs, so
the search has to find something better than the obvious plan.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from galvatron_contracts.names import runs, strategy_name

GIB = 2**30


def tool(args: list[str], *, capture_stderr: bool = False, check: bool = True) -> subprocess.CompletedProcess:
    """Run ``python -m galvatron_<tool> ...`` (stderr passes through unless captured: progress and tables)."""
    cmd = [sys.executable, "-m", *args]
    shown = " ".join(["galvatron-" + args[0].split("_", 1)[1], *args[1:]])
    print(f"\n$ {shown}", file=sys.stderr, flush=True)
    done = subprocess.run(cmd, stderr=subprocess.PIPE if capture_stderr else None, text=True)
    if check and done.returncode != 0:
        sys.exit(f"quickstart: `{shown}` failed with exit code {done.returncode}")
    return done


def corpus_path() -> str | None:
    """The English text shipped with galvatron-run (found by path, without importing the package)."""
    import importlib.util

    spec = importlib.util.find_spec("galvatron_run")
    if spec is None or spec.origin is None:
        return None
    text = Path(spec.origin).parent / "corpus" / "english.txt"
    return str(text) if text.is_file() else None


def choose_budget(cost_model: Path, global_batch: int) -> float:
    """A budget (GiB) under the least that pure data parallelism needs at any micro-batch count, so the search
    has to find something better than plain DP. The search says that least budget when asked for too little."""
    dp_only = tool(["galvatron_search", str(cost_model), "--memory", "1e-9", "--global-batch", str(global_batch),
                    "--dp-only", "--sharding", "ddp", "--max-pp", "1", "--no-recompute", "--no-baselines"],
                   capture_stderr=True, check=False)
    found = re.search(r"smallest budget at which one exists is ([0-9.eE+-]+) GiB", dp_only.stderr)
    if dp_only.returncode != 4 or not found:
        sys.exit(f"quickstart: could not learn pure data parallelism's memory need:\n{dp_only.stderr}")
    return float(f"{0.8 * float(found.group(1)):.4g}")


def stage_table(plan: dict, report: dict) -> str:
    measured = {m["stage"]: m for m in report.get("comparison", {}).get("memory", [])}
    rows = [("stage", "ranks", "layers", "strategies", "predicted MiB", "measured MiB", "ratio")]
    for stage in plan["stages"]:
        parts = [runs([strategy_name(s) for s in plan["layers"][stage["layer_start"]:stage["layer_end"]]])]
        if stage["index"] == 0:
            parts.insert(0, "emb " + strategy_name(plan["embedding"]))
        if stage["index"] == len(plan["stages"]) - 1:
            parts.append("head " + strategy_name(plan["head"]))
        m = measured.get(stage["index"], {})
        rows.append((str(stage["index"]), f"{stage['ranks'][0]}-{stage['ranks'][-1]}",
                     f"{stage['layer_start']}-{stage['layer_end'] - 1}", "; ".join(parts),
                     f"{m['predicted'] / 2**20:.1f}" if m else "-", f"{m['measured'] / 2**20:.1f}" if m else "-",
                     f"{m['ratio']:.3f}" if m.get("ratio") else "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="quickstart-out", help="where the documents are written")
    parser.add_argument("--nproc", type=int, default=max(2, min(os.cpu_count() or 2, 8)),
                        help="local CPU ranks (gloo; default: one per core, at least 2, at most 8, so each rank "
                             "behaves like a device)")
    parser.add_argument("--model", default="mini-gpt")
    parser.add_argument("--global-batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    docs = {k: out / f"{k}.json" for k in ("hardware-profile", "model-profile", "cost-model", "plan", "run-report")}
    t0 = time.perf_counter()
    n = str(args.nproc)

    tool(["galvatron_probe", "bandwidth", "--nproc", n, "--quick", "-o", str(docs["hardware-profile"])])
    tool(["galvatron_probe", "compute", "--model", args.model, "--nproc", n, "--quick",
          "--micro-batch-sizes", "1,2,4", "-o", str(docs["model-profile"])])
    tool(["galvatron_cost", "fit", str(docs["hardware-profile"]), str(docs["model-profile"]),
          "-o", str(docs["cost-model"])])
    budget = choose_budget(docs["cost-model"], args.global_batch)
    tool(["galvatron_search", str(docs["cost-model"]), "--memory", str(budget), "--global-batch",
          str(args.global_batch), "--explain", "-o", str(docs["plan"])])
    run = ["galvatron_run", str(docs["plan"]), "--nproc", n, "--steps", str(args.steps),
           "--report", str(docs["run-report"])]
    text = corpus_path()
    if text:
        run += ["--data", text]
    tool(run)

    plan = json.loads(docs["plan"].read_text())
    report = json.loads(docs["run-report"].read_text())
    pred, meas = plan["predictions"], report["throughput"]
    steps = report["steps"]
    print(f"\n== quickstart: {plan['model']['name']} on {args.nproc} CPU ranks, budget {budget:.4f} GiB per rank "
          f"({budget * 1024:.1f} MiB; pure data parallelism needs more) ==\n")
    print(stage_table(plan, report))
    print(f"\nschedule {plan['schedule']}, global batch {plan['global_batch']} = {plan['micro_batches']} micro-batches"
          f" of {plan['micro_batch_size']}")
    ratio = meas["iteration_time_s"] / pred["iteration_time_s"]
    print(f"iteration time: predicted {pred['iteration_time_s']:.4f} s, measured {meas['iteration_time_s']:.4f} s "
          f"(median of {meas['measured_steps']} steps; measured/predicted {ratio:.3f})")
    print(f"loss: {steps[0]['loss']:.4f} at step {steps[0]['step']} -> {steps[-1]['loss']:.4f} at step "
          f"{steps[-1]['step']} ({report['settings']['data']['kind']} data)")
    print("\npredicted speedup of the plan over the baselines the search considered:")
    for b in plan["search"]["baselines"]:
        if b["feasible"] and b.get("samples_per_s"):
            print(f"  {b['name']:<12} {b['samples_per_s']:10.2f} samples/s  -> plan is "
                  f"{pred['samples_per_s'] / b['samples_per_s']:.2f}x")
        else:
            print(f"  {b['name']:<12} does not fit {budget:.4f} GiB")
    print(f"  search took {plan['search']['time_s']:.3f} s over {plan['search']['candidates_evaluated']} candidates")
    print("\ndocuments:")
    for kind, path in docs.items():
        print(f"  {kind:<17} {path}")
    print(f"\nquickstart finished in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
