"""The run-report document: steps, throughput, memory per rank, and the plan's predictions beside the measurements.
Pure (no torch.distributed): ``build_report(plan, ...)`` from what the ranks measured."""
from __future__ import annotations

import platform
import socket
import statistics

from galvatron_contracts.devices import peak_tflops as known_peak
from galvatron_contracts.documents import CURRENT_VERSION, digest, producer
from galvatron_contracts.models import training_flops_per_token

from . import __version__
from .plan import summary


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
                 peak_tflops: float | None) -> dict:
    """``memory``: one entry per global rank (None where a rank measured nothing)."""
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
    pred = plan.get("predictions")
    if pred:
        comp = {"iteration_time": _ratio(pred["iteration_time_s"], it),
                "samples_per_s": _ratio(pred["samples_per_s"], throughput["samples_per_s"]), "memory": []}
        for st in pred["stages"]:
            peaks = [r["peak_bytes"] for r in ranks if r["stage"] == st["index"]]
            if peaks:
                comp["memory"].append({"stage": st["index"], **_ratio(st["memory_bytes_per_rank"]["total"],
                                                                      max(peaks))})
        doc["comparison"] = comp
    return doc
