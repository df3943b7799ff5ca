"""The run-report document: steps, throughput, memory per rank, the time breakdown of one step, and the plan's
predictions beside the measurements. Pure functions (no collectives): ``build_report(plan, ...)`` from what the
ranks measured; ``breakdown_table(doc)``, the predicted and measured breakdown as a few lines of text."""
from __future__ import annotations

import platform
import socket
import statistics

from galvatron_contracts.devices import peak_tflops as known_peak
from galvatron_contracts.documents import CURRENT_VERSION, digest, producer
from galvatron_contracts.models import training_flops_per_token

from . import __version__
from .breakdown import COMPONENTS, CUDA_METHOD, METHOD, compare, critical_rank, settle
from .plan import summary

# The memory parts of a stage's predictions.stages[].memory_bytes_per_rank beside the rank's measured accounting;
# workspace and overhead are one measured part: the peak less the model states and the saved activations.
MEMORY_PARTS = {"params": ("params",), "grads": ("grads",), "optimizer": ("optimizer",),
                "activations": ("activations",), "workspace_and_overhead": ("workspace", "overhead")}


def _ratio(pred: float, meas: float) -> dict:
    return {"predicted": float(pred), "measured": float(meas), "ratio": (float(meas) / pred) if pred > 0 else None}


def _quantile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    pos = q * (len(xs) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def build_report(plan: dict, *, plan_path: str | None, steps: list[dict], memory: list[dict | None], world: int,
                 backend: str, device: dict, threads: int, nodes: int, settings: dict,
                 peak_tflops: float | None, breakdown: list[dict | None] | None = None) -> dict:
    """``memory``, ``breakdown``: one entry per global rank (None where a rank measured nothing); a breakdown entry
    is breakdown.StepTimes.result() with the step it timed (``profiled_step``); ``settle`` splits their pipeline
    waits by the peers' clocks."""
    seq = settings["seq_len"]
    measured = [r for r in steps if not r.get("warmup")]
    used = measured or steps
    times = [r["time_s"] for r in used]
    it = statistics.median(times)
    tokens = plan["global_batch"] * seq
    flops = training_flops_per_token(plan["model"], seq) * tokens
    achieved = flops / it / 1e12 if it > 0 else 0.0
    peak = peak_tflops if peak_tflops is not None else (device.get("peak_tflops") or known_peak(device["name"],
                                                                                               settings["dtype"]))
    throughput = {
        "measured_steps": len(measured),
        "iteration_time_s": it,
        "iteration_time_spread_s": {"min_s": min(times), "max_s": max(times), "p25_s": _quantile(times, 0.25),
                                    "p75_s": _quantile(times, 0.75)},
        "samples_per_s": plan["global_batch"] / it if it > 0 else 0.0,
        "tokens_per_s": tokens / it if it > 0 else 0.0,
        "model_flops_per_step": flops,
        "achieved_tflops": achieved,
        "achieved_tflops_per_device": achieved / world,
        "peak_tflops": peak,
        "mfu": (achieved / world / peak) if peak else None,
    }
    size = world // len(plan["stages"])
    ranks = [{"rank": r, "stage": r // size, "peak_bytes": m["peak_bytes"], "baseline_bytes": m["baseline_bytes"],
              **{k: m[k] for k in ("process_peak_rss_bytes", "profiled_step") if k in m},
              "accounting": m["accounting"]} for r, m in enumerate(memory) if m is not None]
    method = next((m["method"] for m in memory if m is not None), "not measured")
    doc = {
        "kind": "run-report", "schema_version": CURRENT_VERSION["run-report"],
        "producer": producer("galvatron-run", __version__),
        "plan": {"sha256": digest(plan), "path": plan_path, "summary": summary(plan),
                 "model_name": plan["model"]["name"]},
        "environment": {"torch_version": settings.pop("torch_version"), "python_version": platform.python_version(),
                        "backend": backend, "world_size": world, "nodes": nodes, "threads_per_rank": threads,
                        "device": {k: v for k, v in {**device, "peak_tflops": peak}.items() if v is not None or
                                   k == "peak_tflops"},
                        "hostname": socket.gethostname()},
        "settings": settings,
        "steps": steps,
        "throughput": throughput,
        "memory": {"method": method, "ranks": ranks or [{"rank": 0, "stage": 0, "peak_bytes": 0,
                                                         "accounting": {"param_bytes": 0, "grad_bytes": 0,
                                                                        "optimizer_bytes": 0,
                                                                        "activation_bytes": 0}}]},
    }
    timed = [b for b in breakdown or [] if b is not None]
    if timed:
        doc["breakdown"] = {"method": CUDA_METHOD if device["type"] == "cuda" else METHOD,
                            "profiled_step": timed[0]["profiled_step"],
                            "ranks": [{k: v for k, v in b.items() if k != "profiled_step"} for b in settle(timed)]}
    pred = plan.get("predictions")
    if pred:
        comp = {"iteration_time": _ratio(pred["iteration_time_s"], it),
                "samples_per_s": _ratio(pred["samples_per_s"], throughput["samples_per_s"]), "memory": []}
        budget = (plan.get("search") or {}).get("memory_budget_bytes")
        for st in pred["stages"]:
            stage_ranks = [r for r in ranks if r["stage"] == st["index"]]
            if stage_ranks:
                worst = max(stage_ranks, key=lambda r: r["peak_bytes"])
                entry = {"stage": st["index"], **_ratio(st["memory_bytes_per_rank"]["total"], worst["peak_bytes"])}
                if budget is not None:
                    entry["budget_bytes"] = int(budget)
                entry["accounting"] = memory_accounting(st["memory_bytes_per_rank"], worst)
                comp["memory"].append(entry)
        if pred.get("breakdown") and timed:
            crit = critical_rank(doc["breakdown"]["ranks"])
            comp["breakdown"] = {"rank": crit["rank"], "stage": crit["stage"],
                                 "step": _ratio(pred["iteration_time_s"], crit["step_s"]),
                                 "components": {k: _ratio(p, m) for k, (p, m) in
                                                compare(pred["breakdown"], crit["components"]).items()}}
        doc["comparison"] = comp
    return doc


def memory_accounting(predicted: dict, rank: dict) -> dict:
    """{part: predicted, measured, ratio} of one rank: the plan's per-rank bytes by part beside the tensors the
    rank held (parameters, gradients, optimizer states, the most bytes saved for backward at once) and the rest of
    its peak (workspace and overhead)."""
    acc = rank["accounting"]
    measured = {"params": acc["param_bytes"], "grads": acc["grad_bytes"], "optimizer": acc["optimizer_bytes"],
                "activations": acc["activation_bytes"]}
    measured["workspace_and_overhead"] = max(0, rank["peak_bytes"] - sum(measured.values()))
    return {part: _ratio(sum(predicted.get(k, 0) for k in keys), measured[part])
            for part, keys in MEMORY_PARTS.items()}


# The rows of the table: the comparison's keys (breakdown.compare), and the measured components without predictions.
LABELS = {"forward_compute_s": "forward compute", "backward_compute_s": "backward compute (+ recompute)",
          "tp_communication_s": "tp communication", "zero_communication_exposed_s": "zero communication",
          "layout_transitions_s": "layout transitions", "pipeline_p2p_s": "pipeline p2p",
          "pipeline_bubble_s": "pipeline bubble (idle)", "grad_sync_exposed_s": "gradient sync",
          "optimizer_step_s": "optimizer step (+ clipping)", "step_overhead_s": "step sync (loss, barrier)",
          "other_s": "other (framework, Python)"}
MEASURED_LABELS = {"forward_compute_s": "forward compute", "backward_compute_s": "backward compute",
                   "recompute_s": "recompute", "tp_communication_s": "tp communication",
                   "zero_communication_s": "zero communication", "layout_transitions_s": "layout transitions",
                   "pipeline_p2p_s": "pipeline p2p", "pipeline_idle_s": "pipeline bubble (idle)",
                   "grad_sync_s": "gradient sync", "optimizer_step_s": "optimizer step (+ clipping)",
                   "step_sync_s": "step sync (loss, barrier)", "other_s": "other (framework, Python)"}


def breakdown_table(doc: dict) -> str | None:
    """The slowest rank's breakdown of the timed step, predicted beside measured (seconds); None without one."""
    timed = doc.get("breakdown")
    if not timed:
        return None
    cmp = (doc.get("comparison") or {}).get("breakdown")
    if cmp:
        rank = next(r for r in timed["ranks"] if r["rank"] == cmp["rank"])
        rows = [(LABELS[k], r["predicted"], r["measured"], r["ratio"]) for k, r in cmp["components"].items()]
        total = (cmp["step"]["predicted"], cmp["step"]["measured"], cmp["step"]["ratio"])
    else:
        rank = critical_rank(timed["ranks"])
        rows = [(MEASURED_LABELS[k], None, rank["components"][k], None) for k in COMPONENTS]
        total = (None, rank["step_s"], None)
    lines = [f"time of step {timed['profiled_step']} on rank {rank['rank']} (stage {rank['stage']}), the slowest of "
             f"{len(timed['ranks'])}:",
             f"{'component':<32}{'predicted s':>12}{'measured s':>12}{'ratio':>8}"]
    rows = [row for row in rows if row[1] or row[2]]                 # what neither predicts nor measures: no row
    for label, pred, meas, ratio in [*rows, ("step", *total)]:
        lines.append(f"{label:<32}{_num(pred, 12, '.4f')}{_num(meas, 12, '.4f')}{_num(ratio, 8, '.2f')}")
    return "\n".join(lines)


def _num(x, width: int, fmt: str) -> str:
    return f"{'-':>{width}}" if x is None else f"{x:>{width}{fmt}}"
