"""The planner checked against reality: predicted vs measured iteration time and peak memory of many plans.

    python integration_tests/bench/accuracy.py                          # in `tox -e bench` (all four packages)
    python integration_tests/bench/accuracy.py --nproc 4 --model mini-gpt --steps 12 --out /tmp/acc
    python integration_tests/bench/accuracy.py --profiles /tmp/acc --plans ddp,zero3   # reuse a profile, 2 plans

Every step is one of the four tools' command lines, as a user types it:
1. profile this machine once, the way the plans will run (``--nproc`` ranks at once, OMP_NUM_THREADS=1 each, so
   contention of ranks sharing cores is in the numbers): ``galvatron-probe bandwidth`` (messages up to the model's
   gradient buffer) and ``galvatron-probe compute`` (tp 1..nproc, micro-batch sizes 1, 2, 4, 8);
2. fit one cost model (``galvatron-cost fit``, defaults: no constant is tuned to these plans);
3. write the plans: hand-written plan documents (pure dp, zero2/zero3, tp with and without sp, recompute, pp with
   1f1b and gpipe and uneven stages, mixed per-layer strategies, several micro-batch counts) whose predictions come
   from ``galvatron-search evaluate``, and the plans ``galvatron-search`` finds under a budget where pure data
   parallelism does not fit, with the best baselines re-created by its restricting flags;
4. run each with ``galvatron-run PLAN --nproc N --steps S`` and read the run-report, ``--rounds`` times (default 2),
   the rounds interleaved so that a slow drift of the machine falls on every plan alike; the measured time is the
   median of the rounds' (the table shows how far apart they were), the measured memory the highest peak.

Prints one row per plan (predicted and measured iteration time and peak memory per rank, their ratios), the
aggregate errors against the targets of issue 8, the memory accounting of the worst plans, and the measured
throughput of the searched plan against the best baseline that fits. Exits 1 when a target is missed or a plan
fails to run. Targets: median |time error| <= 10 %, 90th percentile <= 20 %, Spearman rank correlation of
predicted vs measured throughput >= 0.8, peak memory within 10 % and never under-predicted by more than 5 %.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from galvatron_contracts.documents import CURRENT_VERSION, digest
from galvatron_contracts.names import plan_summary

GIB = 2 ** 30
MIB = 2 ** 20
QUALITY_BUDGETS = (0.9, 0.75, 0.6)  # x the least memory pure ddp needs: just too little for it, and tighter
TARGETS = {"median_time_error": 0.10, "p90_time_error": 0.20, "spearman": 0.9, "memory_error": 0.10,
           "memory_under": 0.03, "quality": 0.97}


# --- the tools, as command lines ----------------------------------------------------------------------------------

def child_env() -> dict:
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"
    return env


def tool(module: str, *args, log: Path | None = None, check: bool = True, timeout: float | None = None):
    """``python -m galvatron_<x> ARGS``; stderr goes to ``log`` (or passes through). Returns the CompletedProcess."""
    cmd = [sys.executable, "-m", module, *map(str, args)]
    shown = "galvatron-" + module.split("_", 1)[1] + " " + " ".join(map(str, args))
    print(f"$ {shown}", file=sys.stderr, flush=True)
    with open(log, "w") if log else open(os.devnull, "w") as err:
        done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=err if log else None, text=True, env=child_env(),
                              timeout=timeout)
    if check and done.returncode != 0:
        tail = log.read_text()[-3000:] if log else ""
        raise RuntimeError(f"`{shown}` failed with exit code {done.returncode}\n{tail}")
    return done


def load(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def header(title: str) -> str:
    la = os.getloadavg()
    return (f"{title} -- {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}, load average "
            f"{la[0]:.2f} {la[1]:.2f} {la[2]:.2f} (1/5/15 min), {os.cpu_count()} cores")


# --- profile and fit ---------------------------------------------------------------------------------------------

def profile(out: Path, model: str, nproc: int) -> tuple[Path, Path]:
    """hardware-profile and model-profile of this machine, taken with ``nproc`` ranks at once."""
    from galvatron_contracts.models import load_model_spec, param_count

    hw, mp = out / "hw.json", out / "mp.json"
    grad_bytes = 4 * param_count(load_model_spec(model))
    max_bytes = 1 << max(20, (grad_bytes - 1).bit_length())          # the gradient buffer, rounded up
    t0 = time.perf_counter()
    tool("galvatron_probe", "bandwidth", "--nproc", nproc, "--max-bytes", max_bytes, "--no-progress", "-o", hw,
         log=out / "logs" / "bandwidth.log", timeout=600)
    t1 = time.perf_counter()
    tps = ",".join(str(t) for t in (1, 2, 4, 8, 16) if t <= nproc)
    tool("galvatron_probe", "compute", "--model", model, "--nproc", nproc, "--tp", tps, "--micro-batch-sizes",
         "1,2,4,8", "--no-progress", "-o", mp, log=out / "logs" / "compute.log", timeout=600)
    print(f"profiled: bandwidth {t1 - t0:.0f} s, compute {time.perf_counter() - t1:.0f} s", file=sys.stderr)
    return hw, mp


# --- plans ---------------------------------------------------------------------------------------------------------

def S(tp: int = 1, sharding: str = "ddp", *, sp: bool = False, layout: str = "consecutive", rc: bool = False) -> dict:
    """One layer's strategy; dp is filled in from the stage size."""
    return {"tp": tp, "tp_layout": layout, "sp": sp, "dp_sharding": sharding, "recompute": rc}


def build_plan(template: dict, *, bounds: list[int], layers: list[dict], emb: dict, head: dict, micro_batches: int,
               schedule: str = "1f1b") -> dict:
    """A plan document by hand (the rank convention of schemas/README.md), on the template's model and cluster."""
    from galvatron_contracts.ranks import rank_groups, stage_ranks

    world = template["cluster"]["world_size"]
    pp = len(bounds) - 1
    size = world // pp
    fill = [{**s, "dp": size // s["tp"]} for s in layers]
    emb, head = {**emb, "dp": size // emb["tp"]}, {**head, "dp": size // head["tp"]}
    stages = []
    for k in range(pp):
        ranks = stage_ranks(world, pp, k)
        used = fill[bounds[k]:bounds[k + 1]] + ([emb] if k == 0 else []) + ([head] if k == pp - 1 else [])
        layouts = []
        for tp, lay in sorted({(s["tp"], s["tp_layout"]) for s in used}):
            tg, dg = rank_groups(ranks, tp, lay)
            layouts.append({"tp": tp, "tp_layout": lay, "dp": size // tp, "tp_groups": tg, "dp_groups": dg})
        stages.append({"index": k, "ranks": ranks, "layer_start": bounds[k], "layer_end": bounds[k + 1],
                       "layouts": layouts})
    B = template["global_batch"]
    return {"kind": "plan", "schema_version": CURRENT_VERSION["plan"],
            "producer": {"name": "accuracy-bench", "version": "1.0"},
            "model": template["model"], "cluster": template["cluster"], "training": template["training"],
            "global_batch": B, "micro_batch_size": B // micro_batches, "micro_batches": micro_batches,
            "schedule": schedule, "stages": stages, "layers": fill, "embedding": emb, "head": head}


def hand_plans(template: dict, nproc: int) -> dict[str, dict]:
    """The hand-written plans: every strategy dimension at least once (for a world of 4 and 6 layers; smaller
    worlds or models get the subset that fits)."""
    L = template["model"]["layers"]
    B = template["global_batch"]
    even = [0, L]
    P: dict[str, dict] = {}

    def add(name, **kw):
        kw.setdefault("bounds", even)
        kw.setdefault("micro_batches", 1)
        pp = len(kw["bounds"]) - 1
        size = nproc // pp if nproc % pp == 0 else 0
        if not size or B % kw["micro_batches"]:
            return
        b = B // kw["micro_batches"]
        strategies = kw["layers"] + [kw["emb"], kw["head"]]
        if any(size % s["tp"] or b % (size // s["tp"]) for s in strategies):
            return
        if kw.get("schedule", "1f1b") == "1f1b" and kw["micro_batches"] < pp:
            return
        P[name] = build_plan(template, **kw)

    t1, tmax = S(1), S(nproc)
    half = L // 2
    strided = "strided" if nproc > 2 else "consecutive"     # strided tp2 needs a stage of more than 2 ranks
    add("ddp", layers=[S(1)] * L, emb=t1, head=t1)
    add("ddp m4", layers=[S(1)] * L, emb=t1, head=t1, micro_batches=4)
    add("ddp recompute", layers=[S(1, rc=True)] * L, emb=t1, head=t1)
    add("zero2 m2", layers=[S(1, "zero2")] * L, emb=S(1, "zero2"), head=S(1, "zero2"), micro_batches=2)
    add("zero3", layers=[S(1, "zero3")] * L, emb=S(1, "zero3"), head=S(1, "zero3"))
    add("zero1 m4", layers=[S(1, "zero1")] * L, emb=S(1, "zero1"), head=S(1, "zero1"), micro_batches=4)
    add("tp2 dp2", layers=[S(2)] * L, emb=S(2), head=S(2))
    add(f"tp2 sp {strided}", layers=[S(2, sp=True, layout=strided)] * L, emb=t1, head=t1)
    add(f"tp{nproc} sp", layers=[S(nproc, sp=True)] * L, emb=tmax, head=tmax)
    add(f"tp{nproc} sp recompute m2", layers=[S(nproc, sp=True, rc=True)] * L, emb=tmax, head=tmax, micro_batches=2)
    add("pp2 1f1b m4", bounds=[0, half, L], layers=[S(1)] * L, emb=t1, head=t1, micro_batches=4)
    add("pp2 gpipe m4 uneven", bounds=[0, max(1, half - 1), L], layers=[S(1)] * L, emb=t1, head=t1,
        micro_batches=4, schedule="gpipe")
    add("pp2 1f1b m8 recompute", bounds=[0, half, L], layers=[S(1, rc=True)] * L, emb=t1, head=t1, micro_batches=8)
    add("zero3 recompute m4", layers=[S(1, "zero3", rc=True)] * L, emb=S(1, "zero3"), head=S(1, "zero3"),
        micro_batches=4)
    add(f"tp{nproc} m4", layers=[S(nproc)] * L, emb=tmax, head=tmax, micro_batches=4)
    if L >= 4:
        add("pp4 1f1b m8 uneven", bounds=[0, 1, half, L - 1, L], layers=[S(1)] * L, emb=t1, head=t1,
            micro_batches=8)
    add("mixed tp2sp|zero3 m2", layers=[S(2, sp=True, layout=strided)] * half + [S(1, "zero3")] * (L - half),
        emb=t1, head=t1, micro_batches=2)
    add(f"mixed tp{nproc}rc|ddp", layers=[S(nproc, sp=True, rc=(i % 2 == 0)) if i < half else S(1)
                                          for i in range(L)], emb=t1, head=t1)
    add("pp2 mixed 1f1b m4", bounds=[0, half, L],
        layers=[S(2, sp=True)] * half + [S(1, "zero3", rc=True)] + [S(1)] * (L - half - 1),
        emb=S(2), head=S(2), micro_batches=4)   # tied copies: the runtime wants the same layout at both ends
    return P


def evaluate(plan: dict, cm: Path, path: Path) -> dict:
    """Write the plan and attach the predictions of ``galvatron-search evaluate``."""
    path.write_text(json.dumps(plan, indent=1))
    tool("galvatron_search", "evaluate", path, cm, "-o", path, log=path.with_suffix(".log"))
    return load(path)


def search(cm: Path, out: Path, memory_gib: float, global_batch: int, *flags) -> dict:
    tool("galvatron_search", cm, "--memory", f"{memory_gib:.6g}", "--global-batch", global_batch, *flags, "-o", out,
         log=out.with_suffix(".log"))
    return load(out)


def smallest_budget(cm: Path, out: Path, global_batch: int, *flags) -> float:
    """The least budget (GiB) at which the restricted search finds a plan (what its exit-4 message names)."""
    done = tool("galvatron_search", cm, "--memory", "1e-9", "--global-batch", global_batch, *flags,
                "--no-baselines", "-o", out / "infeasible.json", log=out / "logs" / "infeasible.log", check=False)
    text = (out / "logs" / "infeasible.log").read_text()
    found = re.search(r"smallest budget at which one exists is ([0-9.eE+-]+) GiB", text)
    if done.returncode != 4 or not found:
        raise RuntimeError(f"could not learn the least budget of {' '.join(flags)}:\n{text[-2000:]}")
    return float(found.group(1))


# baselines the search reports, re-created with its restricting flags (tp-node has no flag for an exact tp)
BASELINE_FLAGS = {
    "ddp": ["--uniform", "--dp-only", "--max-pp", "1", "--sharding", "ddp"],
    "zero3": ["--uniform", "--dp-only", "--max-pp", "1", "--sharding", "zero3"],
    "uniform-3d": ["--uniform"],
}


def summary_of(plan: dict) -> str:
    """Strategy summary (pp, per-stage layers and strategies, b, m, schedule) comparable across producers."""
    return plan_summary(plan)


# --- what the cost model leaves out, measured apart (diagnosis, never fed back into the predictions) ---------------

def optimizer_worker(sizes: list[int], tensors: int, out: Path) -> None:
    """One rank's share of the per-step work outside forward/backward: AdamW (foreach=False, as galvatron-run) and
    clip_grad_norm_ over ``n`` fp32 parameters split into ``tensors`` tensors; median seconds per size."""
    import torch

    torch.set_num_threads(1)
    res = {}
    for n in sizes:
        params = [torch.nn.Parameter(torch.zeros(max(1, n // tensors))) for _ in range(tensors)]
        for q in params:
            q.grad = torch.randn_like(q)
        opt = torch.optim.AdamW(params, lr=1e-4, foreach=False)
        opt.step()
        times = []
        for _ in range(15):
            t0 = time.perf_counter()
            opt.step()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            times.append(time.perf_counter() - t0)
        res[n] = float(np.median(times))
    out.write_text(json.dumps(res))


def optimizer_probe(out: Path, nproc: int, params: int) -> tuple[float, float]:
    """(fixed s, s per parameter) of AdamW + clipping per step, with ``nproc`` processes at once (the contention
    of the runs). A least-squares line through three sizes."""
    sizes = [params // 4, params // 2, params]
    procs = []
    for i in range(nproc):
        f = out / "logs" / f"optimizer-{i}.json"
        procs.append((f, subprocess.Popen([sys.executable, __file__, "--optimizer-worker", ",".join(map(str, sizes)),
                                           "--out", str(f)], env=child_env())))
    res = []
    for f, pr in procs:
        if pr.wait() != 0:
            raise RuntimeError("optimizer probe failed")
        res.append(json.loads(f.read_text()))
    t = np.array([max(r[str(n)] for r in res) for n in sizes])
    slope, fixed = np.polyfit(np.array(sizes, float), t, 1)
    return float(fixed), float(slope)


def step_sync_s(hw: dict) -> float:
    """Latency-bound collectives every galvatron-run step has beside the plan's own: two barriers, the loss
    all-reduce and the gradient-norm all-reduce, each ~ the smallest all_reduce over the world in the profile."""
    world = hw["cluster"]["world_size"]
    best = None
    for c in hw["collectives"]:
        if c["op"] == "all_reduce" and c["group_size"] == world:
            pt = min(c["points"], key=lambda p: p["message_bytes"])
            best = pt["time"]["median_s"] if best is None else min(best, pt["time"]["median_s"])
    return 4 * (best or 0.0)


# --- running and measuring ------------------------------------------------------------------------------------------

def report_path(plan_path: Path, round_: int) -> Path:
    """Round 0's run-report beside the plan (PLAN.report.json), later rounds' as PLAN.r<k>.report.json."""
    return plan_path.with_suffix(".report.json" if round_ == 0 else f".r{round_}.report.json")


def run(plan_path: Path, nproc: int, steps: int, warmup: int, round_: int = 0) -> dict:
    report = report_path(plan_path, round_)
    tool("galvatron_run", plan_path, "--nproc", nproc, "--steps", steps, "--warmup-steps", warmup, "--report", report,
         "--timeout", 120, log=report.with_suffix("").with_suffix(".run.log"), timeout=900)
    return load(report)


def row(name: str, plan: dict, reports: list[dict]) -> dict:
    """One plan's predictions beside its measurements over the rounds it ran: the median of the rounds' median
    iteration times and throughputs, the highest peak of any round and rank per stage, round 0's breakdown."""
    pred = plan["predictions"]
    report = reports[0]
    comp = report["comparison"]
    mem = []
    for st in pred["stages"]:
        ranks = [r for rep in reports for r in rep["memory"]["ranks"] if r["stage"] == st["index"]]
        worst = max(ranks, key=lambda r: r["peak_bytes"])
        mem.append({"stage": st["index"], "pred": st["memory_bytes_per_rank"]["total"], "meas": worst["peak_bytes"],
                    "pred_parts": st["memory_bytes_per_rank"], "meas_parts": {**worst["accounting"],
                                                                              "baseline": worst["baseline_bytes"]}})
    worst_stage = max(mem, key=lambda m: abs(m["pred"] / m["meas"] - 1))
    opt_params = max(st["memory_bytes_per_rank"]["optimizer"] for st in pred["stages"]) / 8   # AdamW: 2 fp32
    spread = report["throughput"]["iteration_time_spread_s"]
    times = [rep["comparison"]["iteration_time"]["measured"] for rep in reports]
    return {"name": name, "summary": summary_of(plan), "t_pred": pred["iteration_time_s"],
            "t_meas": float(np.median(times)), "t_p25": spread["p25_s"], "t_p75": spread["p75_s"],
            "rounds": len(reports), "round_spread": max(times) / min(times) - 1,
            "thr_pred": pred["samples_per_s"],
            "thr_meas": float(np.median([rep["throughput"]["samples_per_s"] for rep in reports])),
            "mem": mem, "mem_pred": worst_stage["pred"], "mem_meas": worst_stage["meas"],
            "mem_stage": worst_stage["stage"], "breakdown": pred.get("breakdown", {}),
            "mem_under": max(0.0, max(m["meas"] / m["pred"] - 1 for m in mem)), "opt_params": opt_params,
            "measured_breakdown": comp.get("breakdown")}


def ranks_of(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n, ties averaged."""
    order = np.argsort(x, kind="mergesort")
    r = np.empty(len(x))
    r[order] = np.arange(1, len(x) + 1)
    for v in np.unique(x):
        tie = x == v
        r[tie] = r[tie].mean()
    return r


def spearman(a, b) -> float:
    ra, rb = ranks_of(np.asarray(a, float)), ranks_of(np.asarray(b, float))
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = np.sqrt((ra ** 2).sum() * (rb ** 2).sum())
    return float((ra * rb).sum() / den) if den > 0 else float("nan")


def table(rows: list[dict]) -> str:
    """One row per plan; 'rounds' is how far apart the slowest and fastest round's median times were."""
    out = ["| plan | pred s | meas s (p25-p75 of round 0) | rounds | meas/pred | pred MiB | meas MiB | meas/pred | "
           "stage | strategy |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['name']} | {r['t_pred']:.3f} | {r['t_meas']:.3f} ({r['t_p25']:.3f}-{r['t_p75']:.3f}) | "
                   f"{r['rounds']} ±{r['round_spread'] * 100:.0f}% | "
                   f"{r['t_meas'] / r['t_pred']:.2f} | {r['mem_pred'] / MIB:.1f} | {r['mem_meas'] / MIB:.1f} | "
                   f"{r['mem_meas'] / r['mem_pred']:.2f} | {r['mem_stage']} | {r['summary']} |")
    return "\n".join(out)


def memory_table(rows: list[dict]) -> str:
    """Predicted vs measured components (MiB) of the worst stage of each plan: where the memory model misses."""
    out = ["| plan | stage | params p/m | grads p/m | optimizer p/m | activations+workspace p / saved m | "
           "pred total | peak | peak - (states + saved) |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        m = next(x for x in r["mem"] if x["stage"] == r["mem_stage"])
        p, q = m["pred_parts"], m["meas_parts"]
        states = q["param_bytes"] + q["grad_bytes"] + q["optimizer_bytes"]
        out.append(f"| {r['name']} | {m['stage']} | {p['params'] / MIB:.2f}/{q['param_bytes'] / MIB:.2f} | "
                   f"{p['grads'] / MIB:.2f}/{q['grad_bytes'] / MIB:.2f} | "
                   f"{p['optimizer'] / MIB:.2f}/{q['optimizer_bytes'] / MIB:.2f} | "
                   f"{(p['activations'] + p['workspace']) / MIB:.2f} / {q['activation_bytes'] / MIB:.2f} | "
                   f"{p['total'] / MIB:.2f} | {m['meas'] / MIB:.2f} | "
                   f"{(m['meas'] - states - q['activation_bytes']) / MIB:.2f} |")
    return "\n".join(out)


def time_table(rows: list[dict], unmodelled) -> str:
    """The predicted breakdown beside the measured time, and estimates of the per-step work the cost model leaves
    out (measured apart: AdamW + clipping on each rank's parameters, the step's latency-bound collectives)."""
    keys = ["forward_compute_s", "backward_compute_s", "tp_communication_s", "zero_communication_exposed_s",
            "layout_transitions_s", "pipeline_p2p_s", "pipeline_bubble_s", "grad_sync_exposed_s", "optimizer_step_s"]
    short = ["fwd", "bwd", "tp comm", "zero comm", "transitions", "p2p", "bubble", "grad sync", "optimizer"]
    out = ["| plan | meas s | pred s | meas - pred s | " + " | ".join(short) + " | optimizer+clip measured apart | "
           "step sync est | meas - (pred + est) s |", "|---|---|---|---|" + "---|" * (len(keys) + 3)]
    for r in rows:
        b = r["breakdown"]
        opt, sync = unmodelled(r)
        out.append(f"| {r['name']} | {r['t_meas']:.3f} | {r['t_pred']:.3f} | {r['t_meas'] - r['t_pred']:+.3f} | "
                   + " | ".join(f"{b.get(k, 0.0):.3f}" for k in keys)
                   + f" | {opt:.3f} | {sync:.3f} | {r['t_meas'] - r['t_pred'] - opt - sync:+.3f} |")
    return "\n".join(out)


def verdicts(rows: list[dict]) -> tuple[list[tuple[str, float, str, bool]], list[str]]:
    t_err = np.array([abs(r["t_pred"] / r["t_meas"] - 1) for r in rows])
    m_err = np.array([r["mem_pred"] / r["mem_meas"] - 1 for r in rows])
    under = max(r["mem_under"] for r in rows)
    rho = spearman([r["thr_pred"] for r in rows], [r["thr_meas"] for r in rows])
    med, p90 = float(np.median(t_err)), float(np.percentile(t_err, 90))
    out = [("median |time error|", med, f"<= {TARGETS['median_time_error']:.0%}", med <= TARGETS["median_time_error"]),
           ("p90 |time error|", p90, f"<= {TARGETS['p90_time_error']:.0%}", p90 <= TARGETS["p90_time_error"]),
           ("Spearman(pred, meas throughput)", rho, f">= {TARGETS['spearman']}", rho >= TARGETS["spearman"]),
           ("max |memory error|", float(np.abs(m_err).max()), f"<= {TARGETS['memory_error']:.0%}",
            float(np.abs(m_err).max()) <= TARGETS["memory_error"]),
           ("worst memory under-prediction (meas/pred - 1)", under, f"<= {TARGETS['memory_under']:.0%}",
            under <= TARGETS["memory_under"])]
    missed = [name for name, _, _, ok in out if not ok]
    return out, missed


# --- main ------------------------------------------------------------------------------------------------------------

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nproc", type=int, default=2, help="Ranks (default 2: as many as this machine's cores, one "
                                                        "thread each, so a rank behaves like a device).")
    ap.add_argument("--model", default="mini-gpt")
    ap.add_argument("--global-batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=10, help="Optimizer steps per plan (default 10).")
    ap.add_argument("--warmup-steps", type=int, default=3, help="Steps excluded from the median (default 3).")
    ap.add_argument("--rounds", type=int, default=2, help="Runs of each plan, interleaved (default 2): the "
                                                         "median of their times is the measurement.")
    ap.add_argument("--out", default=None, help="Directory for every document and log (default: a temp dir).")
    ap.add_argument("--profiles", help="Reuse hw.json and mp.json from this directory instead of profiling.")
    ap.add_argument("--plans", help="Comma-separated plan names to run (default all; 'search': the searched plan "
                                    "and the baselines).")
    ap.add_argument("--no-quality", action="store_true", help="Skip the plan-quality part (searched vs baseline).")
    ap.add_argument("--no-calibration", action="store_true",
                    help="Score the uncalibrated cost model only (default: calibrate on half the plans, score the "
                         "other half).")
    ap.add_argument("--reuse-runs", action="store_true",
                    help="Keep the run-report of a plan document that already ran under --out (same digest).")
    ap.add_argument("--report-only", action="store_true",
                    help="Print the tables, judge no target (for runs with more ranks than cores).")
    ap.add_argument("--optimizer-worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.optimizer_worker:
        optimizer_worker([int(x) for x in args.optimizer_worker.split(",")], 100, Path(args.out))
        return 0
    import tempfile

    out = Path(args.out or tempfile.mkdtemp(prefix="accuracy-"))
    (out / "logs").mkdir(parents=True, exist_ok=True)
    (out / "plans").mkdir(exist_ok=True)
    print(header(f"accuracy: {args.model}, {args.nproc} ranks, global batch {args.global_batch}, "
                 f"{args.steps} steps ({args.warmup_steps} warm-up)"))
    print(f"documents and logs: {out}")
    t_start = time.perf_counter()
    if args.profiles:
        hw, mp = Path(args.profiles) / "hw.json", Path(args.profiles) / "mp.json"
    else:
        try:
            hw, mp = profile(out, args.model, args.nproc)
        except (RuntimeError, subprocess.TimeoutExpired) as e:
            print(f"profiling failed: {e}")
            print("MISSED: profiling failed (see the log above)")
            return 1
    cm = out / "cm.json"
    tool("galvatron_cost", "fit", hw, mp, "-o", cm, log=out / "logs" / "fit.log")
    from galvatron_contracts.models import load_model_spec, param_count

    opt_fixed, opt_slope = optimizer_probe(out, args.nproc, param_count(load_model_spec(args.model)))
    sync = step_sync_s(load(hw))
    print(f"per-step work outside the cost model, measured apart with {args.nproc} processes at once: AdamW + "
          f"clip_grad_norm_ {opt_fixed * 1e3:.2f} ms + {opt_slope * 1e9:.2f} ns/parameter per rank; four "
          f"latency-bound all_reduces {sync * 1e3:.2f} ms", flush=True)

    def unmodelled(r):
        """(optimizer, step sync) seconds the prediction lacks; each 0 once the cost model has its own term (the
        optimizer step, cost-model 1.1; the per-step overhead, 1.2), so neither is counted twice."""
        has_opt = r["breakdown"].get("optimizer_step_s", 0.0) > 0
        has_sync = "step_overhead_s" in r["breakdown"]
        return (0.0 if has_opt else opt_fixed + opt_slope * r["opt_params"]), (0.0 if has_sync else sync)

    t_profiled = time.perf_counter()
    B = args.global_batch
    # the template and the loosest pure-dp plan (also the starting point of the budget choice)
    template = search(cm, out / "plans" / "template.json", 64.0, B, *BASELINE_FLAGS["ddp"], "--no-baselines")
    plans = {name: evaluate(p, cm, plan_path(out, name)) for name, p in hand_plans(template, args.nproc).items()}
    if args.plans:
        keep = set(args.plans.split(","))
        plans = {k: v for k, v in plans.items() if k in keep}
    rows, failed = run_all(plans, out, args)
    # calibration: refine the cost model on half of the hand-written plans, score the other half with it
    held_out, calibrated_cm = rows, None
    if not args.no_calibration and len(rows) >= 4:
        fit_on = rows[0::2]
        held_out = rows[1::2]
        calibrated_cm = calibrate(cm, out, fit_on)
    scored = {"uncalibrated, all plans": rows}
    if calibrated_cm is not None:
        scored["uncalibrated, held-out plans"] = held_out
        scored["calibrated, held-out plans"] = [rescore(r, calibrated_cm, out) for r in held_out]
    # plan quality: searched (under the calibrated model when there is one) vs the baselines, at three budgets
    quality = []
    if not args.no_quality:
        quality, qplans = quality_plans(calibrated_cm or cm, out, B)
        qrows, qfailed = run_all(qplans, out, args)
        rows += qrows
        failed += qfailed
    print(f"\nprofile + fit {t_profiled - t_start:.0f} s; {len(rows)} plans run in "
          f"{time.perf_counter() - t_profiled:.0f} s\n")
    print(table(rows))
    print("\nPredicted time breakdown (s) beside the measured iteration time:\n")
    print(time_table(rows, unmodelled))
    measured = measured_breakdown_table(rows)
    if measured:
        print("\nMeasured breakdown of the profiled step on the slowest rank (s), predicted / measured:\n")
        print(measured)
    print("\nMemory per rank (MiB) of each plan's worst stage, predicted (p) vs the runtime's accounting (m):\n")
    print(memory_table(rows))
    missed = [f"plan failed to run: {n}" for n in failed]
    if args.report_only:
        print("\n(report only: with more ranks than cores a waiting rank lends its core to another, which no model "
              "of independent devices predicts; no target is judged)")
    for what, group in scored.items():
        if len(group) < 3:
            continue
        results, miss = verdicts(group)
        judged = what.startswith("calibrated") or calibrated_cm is None
        print(f"\n{what} ({len(group)} plans){'' if judged else ', for comparison'}:")
        print("| target | value | goal | |\n|---|---|---|---|")
        for name, v, goal, ok in results:
            print(f"| {name} | {v:.3f} | {goal} | {'PASS' if ok else 'MISS'} |")
        if judged and not args.report_only:
            missed += [m for m in miss if "memory" not in m]
    if not args.report_only and rows:       # memory is judged on every plan, calibration does not change it
        _, miss = verdicts(rows)
        missed += [m for m in miss if "memory" in m]
    missed += [] if args.report_only else print_quality(quality, {r["name"]: r for r in rows})
    (out / "accuracy.json").write_text(json.dumps({"rows": rows, "failed": failed, "quality": quality,
                                                   "scored": scored}, indent=1, default=str))
    print("\n" + header(f"done in {time.perf_counter() - t_start:.0f} s"))
    if missed:
        print(f"MISSED: {'; '.join(missed)}")
        return 1
    return 0


def plan_path(out: Path, name: str) -> Path:
    return out / "plans" / f"{re.sub(r'[^A-Za-z0-9]+', '-', name)}.json"


def run_all(plans: dict[str, dict], out: Path, args) -> tuple[list[dict], list[str]]:
    """Run every plan ``args.rounds`` times, the rounds interleaved (every plan once, then again), so a slow drift
    of the machine falls on every plan alike; one row per plan that ran every round, the names of those that
    failed."""
    reports: dict[str, list[dict]] = {name: [] for name in plans}
    failed: list[str] = []
    for name, plan in plans.items():
        plan_path(out, name).write_text(json.dumps(plan, indent=1))
    for k in range(args.rounds):
        for name, plan in plans.items():
            if name in failed:
                continue
            path, t0 = plan_path(out, name), time.perf_counter()
            kept = report_path(path, k)
            try:
                if args.reuse_runs and kept.is_file() and load(kept)["plan"]["sha256"] == digest(plan):
                    report = load(kept)            # the same plan document ran before: its measurement stands
                else:
                    report = run(path, args.nproc, args.steps, args.warmup_steps, k)
            except (RuntimeError, subprocess.TimeoutExpired) as e:
                print(f"FAILED {name}: {e}", file=sys.stderr)
                failed.append(name)
                continue
            reports[name].append(report)
            pred = plan["predictions"]
            print(f"  round {k + 1}/{args.rounds} {name}: pred {pred['iteration_time_s']:.3f} s, meas "
                  f"{report['comparison']['iteration_time']['measured']:.3f} s ({time.perf_counter() - t0:.0f} s)",
                  file=sys.stderr, flush=True)
    rows = []
    for name, plan in plans.items():
        if name in failed:
            continue
        rows.append(row(name, plan, reports[name]))
        path = plan_path(out, name)
        rows[-1]["report"] = str(report_path(path, 0))
        rows[-1]["reports"] = [str(report_path(path, k)) for k in range(args.rounds)]
    return rows, failed


def calibrate(cm: Path, out: Path, fit_on: list[dict]) -> Path | None:
    """``galvatron-cost calibrate`` on the run-reports of ``fit_on``; None (and a line saying why) if it fails."""
    cal = out / "cm-calibrated.json"
    try:
        tool("galvatron_cost", "calibrate", cm, *[p for r in fit_on for p in r["reports"]], "-o", cal,
             log=out / "logs" / "calibrate.log")
    except RuntimeError as e:
        print(f"calibration failed, scoring uncalibrated only: {str(e).splitlines()[0]}")
        return None
    print(f"calibrated on {len(fit_on)} plans: {', '.join(r['name'] for r in fit_on)}")
    return cal


def rescore(r: dict, cm: Path, out: Path) -> dict:
    """The row of a plan already run, with the predictions of another cost model (the measurements unchanged)."""
    plan = load(r["report"].replace(".report.json", ".json"))
    plan.pop("predictions", None)
    again = evaluate(plan, cm, out / "plans" / f"rescored-{Path(r['report']).name.replace('.report', '')}")
    return row(r["name"], again, [load(p) for p in r["reports"]])


def quality_plans(cm: Path, out: Path, B: int) -> tuple[list[dict], dict[str, dict]]:
    """The searched plan and the feasible baselines (re-created with their flags) at each budget of
    QUALITY_BUDGETS x the least memory pure ddp needs (so pure data parallelism does not fit)."""
    ddp_least = smallest_budget(cm, out, B, *BASELINE_FLAGS["ddp"])
    quality, plans = [], {}
    for factor in QUALITY_BUDGETS:
        budget = factor * ddp_least
        tag = f"{factor:g}x"
        q = {"factor": factor, "budget_gib": budget, "ddp_least_gib": ddp_least, "baselines": [],
             "searched": f"searched {tag}"}
        try:
            searched = search(cm, out / "plans" / f"searched-{tag}.json", budget, B)
        except RuntimeError as e:                  # exit 4: nothing fits this budget
            print(f"no plan at {factor:g}x: {str(e).splitlines()[-1]}", file=sys.stderr)
            q["searched"] = None
            quality.append(q)
            continue
        plans[q["searched"]] = searched
        for bl in searched["search"]["baselines"]:
            if not bl["feasible"] or bl["name"] not in BASELINE_FLAGS:
                q["baselines"].append({**bl, "plan_name": None})
                continue
            p = search(cm, out / "plans" / f"baseline-{bl['name']}-{tag}.json", budget, B,
                       *BASELINE_FLAGS[bl["name"]], "--no-baselines")
            name = f"baseline {bl['name']} {tag}"
            same = next((n for n, other in plans.items() if summary_of(other) == summary_of(p)), None)
            if same is None:
                plans[name] = p
            q["baselines"].append({**bl, "plan_name": same or name})
        quality.append(q)
    return quality, plans


def print_quality(quality: list[dict], by: dict[str, dict]) -> list[str]:
    """The plan-quality tables; returns the missed targets: a searched plan measured above its budget, or slower
    than TARGETS['quality'] x a feasible baseline's measured throughput."""
    missed = []
    for q in quality:
        budget = q["budget_gib"] * 2 ** 30
        print(f"\nPlan quality at {budget / MIB:.1f} MiB per rank ({q['factor']:g} x the least memory pure "
              f"ddp needs, {q['ddp_least_gib'] * 1024:.1f} MiB, so pure data parallelism does not fit)")
        print("| plan | feasible | pred samples/s | meas samples/s | meas peak MiB / budget | searched / this, "
              "measured (predicted) |\n|---|---|---|---|---|---|")
        s = by.get(q["searched"] or "")
        if q["searched"] is None:
            print("| searched | no plan fits this budget | - | - | - | - |")
        if s:
            print(f"| searched: {s['summary']} | yes | {s['thr_pred']:.2f} | {s['thr_meas']:.2f} | "
                  f"{max(m['meas'] for m in s['mem']) / budget:.3f} | 1.00 |")
        for bl in q["baselines"]:
            r = by.get(bl["plan_name"] or "")
            if r is None:
                feas = "no" if not bl["feasible"] else "yes (no flag re-creates it)"
                pred = f"{bl['samples_per_s']:.2f}" if bl["feasible"] else "-"
                print(f"| baseline {bl['name']} | {feas} | {pred} | - | - | - |")
                continue
            ratio = s["thr_meas"] / r["thr_meas"] if s else float("nan")
            print(f"| baseline {bl['name']} ({bl['plan_name']}): {r['summary']} | yes | {r['thr_pred']:.2f} | "
                  f"{r['thr_meas']:.2f} | {max(m['meas'] for m in r['mem']) / budget:.3f} | {ratio:.2f} "
                  f"({s['thr_pred'] / r['thr_pred'] if s else float('nan'):.2f}) |")
            if s and ratio < TARGETS["quality"]:
                missed.append(f"searched {q['factor']:g}x measured {ratio:.2f}x of baseline {bl['name']}")
        if s and max(m["meas"] for m in s["mem"]) > budget:
            missed.append(f"searched {q['factor']:g}x measured {max(m['meas'] for m in s['mem']) / MIB:.1f} MiB "
                          f"above its budget {budget / MIB:.1f} MiB")
    return missed


MEASURED_KEYS = [("forward_compute_s", "fwd"), ("backward_compute_s", "bwd"), ("tp_communication_s", "tp comm"),
                 ("zero_communication_exposed_s", "zero comm"), ("grad_sync_exposed_s", "grad sync"),
                 ("pipeline_p2p_s", "p2p"), ("pipeline_bubble_s", "bubble/idle"), ("optimizer_step_s", "optimizer"),
                 ("step_overhead_s", "step overhead")]


def measured_breakdown_table(rows: list[dict]) -> str | None:
    """predicted / measured seconds by component (the run-report's comparison.breakdown), when the reports
    carry one: every miss names its component."""
    have = [r for r in rows if r.get("measured_breakdown")]
    if not have:
        return None
    out = ["| plan | " + " | ".join(short for _, short in MEASURED_KEYS) + " | other (measured) |",
           "|---|" + "---|" * (len(MEASURED_KEYS) + 1)]
    for r in have:
        comp = r["measured_breakdown"]["components"]
        cells = []
        for key, _ in MEASURED_KEYS:
            c = comp.get(key)
            cells.append("-" if c is None else f"{c['predicted']:.3f} / {c['measured']:.3f}")
        other = comp.get("other_s", {}).get("measured")
        out.append(f"| {r['name']} | " + " | ".join(cells) + f" | {'-' if other is None else f'{other:.3f}'} |")
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
