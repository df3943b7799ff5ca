"""The four tools' Python APIs in one script: profile this machine once, fit a cost model, search it under a sweep of
memory budgets and global batches, print the throughput-memory frontier, edit a plan by hand and evaluate it, and
train the fastest plan for a few steps.

    python examples/frontier.py --out frontier-out --train-steps 3

Each tool hands the next a document (a dict). The cost model and the plans are written to --out as well, so the
command-line tools can take over: galvatron-search evaluate frontier-out/edited-plan.json frontier-out/cost-model.json.
galvatron-run has no Python API that launches ranks (each rank is a process), so the script trains through its
command line. tiny-gpt on 2 CPU ranks needs 2 to 10 MiB per rank; on GPUs, sweep GiB and profile a real model.
"""
import argparse
import copy
import json
import subprocess
import sys
from pathlib import Path

import galvatron_cost
import galvatron_search
from galvatron_contracts.documents import InfeasibleError, write_document
from galvatron_contracts.names import plan_summary
from galvatron_probe import probe_bandwidth, probe_compute

MIB = 2 ** 20
BUDGETS_MIB = [2, 2.5, 3, 4, 6, 8, 12]  # memory per rank
GLOBAL_BATCHES = [4, 8, 16, 32]


def peak_mib(plan: dict) -> float:
    """The plan's predicted memory per rank on its fullest stage."""
    return max(s["memory_bytes_per_rank"]["total"] for s in plan["predictions"]["stages"]) / MIB


def fastest(cost_model: dict, budget_mib: float) -> dict | None:
    """The plan with the most samples/s over GLOBAL_BATCHES under the budget; None where nothing fits."""
    plans = []
    for batch in GLOBAL_BATCHES:
        try:
            plans.append(galvatron_search.search(cost_model, budget_mib * MIB / 2 ** 30, global_batch=batch))
        except InfeasibleError:  # its message names the smallest budget that fits
            pass
    return max(plans, key=lambda p: p["predictions"]["samples_per_s"], default=None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("frontier-out"), help="where the documents go")
    parser.add_argument("--train-steps", type=int, default=3, help="train the fastest plan this long (0: skip)")
    args = parser.parse_args()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)

    # 1. profile once (2 local ranks, reduced sweeps) and fit: the cost model answers every question below
    hardware = probe_bandwidth(nproc=2, quick=True)
    model = probe_compute("tiny-gpt", nproc=2, quick=True)
    cost_model = galvatron_cost.fit(hardware, model)
    write_document(cost_model, out / "cost-model.json")

    # 2. the frontier: the fastest plan at each budget, whatever its global batch
    frontier = [(budget, fastest(cost_model, budget)) for budget in BUDGETS_MIB]
    print(f"\n{'budget MiB':>10}  {'batch':>5}  {'samples/s':>9}  {'MiB/rank':>8}  plan")
    for budget, plan in frontier:
        cells = (plan["global_batch"], f"{plan['predictions']['samples_per_s']:.2f}", f"{peak_mib(plan):.2f}",
                 plan_summary(plan)) if plan else ("-", "-", "-", "no plan fits")
        print(f"{budget:>10}  {cells[0]:>5}  {cells[1]:>9}  {cells[2]:>8}  {cells[3]}")

    # 3. edit the plan of the smallest budget by hand: flip its first layer's recompute, and ask what that does
    budget, plan = next((b, p) for b, p in frontier if p)
    edited = copy.deepcopy(plan)
    edited["layers"][0]["recompute"] = not edited["layers"][0]["recompute"]
    edited["predictions"] = galvatron_search.evaluate(edited, cost_model, source="edited plan")
    for name, doc in [("plan", plan), ("edited-plan", edited)]:
        write_document(doc, out / f"{name}.json")
        fits = "fits" if peak_mib(doc) <= budget else "over"
        print(f"\n{name}: {plan_summary(doc)}\n  {doc['predictions']['samples_per_s']:.2f} samples/s, "
              f"{peak_mib(doc):.2f} MiB/rank ({fits} the {budget} MiB budget)")

    # 4. train the fastest plan of the sweep with galvatron-run's command line (it launches its own 2 ranks)
    if args.train_steps > 0:
        best = max((p for _, p in frontier if p), key=lambda p: p["predictions"]["samples_per_s"])
        write_document(best, out / "best-plan.json")
        run = subprocess.run([sys.executable, "-m", "galvatron_run", out / "best-plan.json", "--nproc", "2",
                              "--steps", str(args.train_steps), "--warmup-steps", "1", "-o", out / "run-report.json"])
        if run.returncode:
            sys.exit(run.returncode)  # galvatron-run said why on stderr
        report = json.loads((out / "run-report.json").read_text())
        loss, it = [s["loss"] for s in report["steps"]], report["comparison"]["iteration_time"]
        print(f"\ntrained best-plan: loss {loss[0]:.4f} -> {loss[-1]:.4f}; "
              f"iteration {it['measured']:.4f} s measured, {it['predicted']:.4f} s predicted")


if __name__ == "__main__":
    main()
