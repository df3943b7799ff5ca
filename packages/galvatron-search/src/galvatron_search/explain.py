"""`--explain`: the baselines beside the plan, and the plan per stage, as plain-text tables."""
from __future__ import annotations

from galvatron_contracts.names import plan_summary, runs, strategy_name

GIB = 2 ** 30


def _unit(doc: dict) -> tuple[float, str]:
    """GiB, or MiB for plans whose stages hold under 1 GiB."""
    pred = doc.get("predictions")
    small = pred and max(s["memory_bytes_per_rank"]["total"] for s in pred["stages"]) < GIB
    return (2 ** 20, "MiB") if small else (GIB, "GiB")


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def explain(doc: dict) -> str:
    pred = doc.get("predictions")
    unit, uname = _unit(doc)
    out = []
    if pred:
        out.append(f"plan: {plan_summary(doc)}")
        out.append(f"predicted: {pred['iteration_time_s']:.4f} s/iteration, {pred['samples_per_s']:.2f} samples/s, "
                   f"{pred['tokens_per_s']:.0f} tokens/s")
    search = doc.get("search")
    if search:
        out.append(f"search: {search['time_s']:.3f} s, {search['candidates_evaluated']} candidates, budget "
                   f"{search['memory_budget_bytes'] / GIB:.2f} GiB")
        if search.get("baselines") and pred:
            rows = [["plan", "feasible", "batch", "samples/s", "plan / it", f"{uname}/rank", "summary"]]
            for b in search["baselines"]:
                if b["feasible"]:
                    rows.append([b["name"], "yes", str(b["global_batch"]), f"{b['samples_per_s']:.2f}",
                                 f"{pred['samples_per_s'] / b['samples_per_s']:.2f}x",
                                 f"{b['memory_bytes_per_rank'] / unit:.1f}", b.get("summary", "")])
                else:
                    rows.append([b["name"], "no", "-", "-", "-", "-", b.get("description", "")])
            rows.append(["search", "yes", str(doc["global_batch"]), f"{pred['samples_per_s']:.2f}", "1.00x",
                         f"{max(s['memory_bytes_per_rank']['total'] for s in pred['stages']) / unit:.1f}", ""])
            out.append(_table(rows))
    rows = [["stage", "ranks", "layers", "strategies", "fwd ms", "bwd ms", f"{uname}/rank", "states", "acts",
             "workspace"]]
    for k, st in enumerate(doc["stages"]):
        strat = runs([strategy_name(s) for s in doc["layers"][st["layer_start"]:st["layer_end"]]])
        if k == 0:
            strat = f"emb {strategy_name(doc['embedding'])}; " + strat
        if k == len(doc["stages"]) - 1:
            strat += f"; head {strategy_name(doc['head'])}"
        row = [str(k), f"{st['ranks'][0]}-{st['ranks'][-1]}", f"{st['layer_start']}-{st['layer_end'] - 1}", strat]
        if pred:
            ps = pred["stages"][k]
            mem = ps["memory_bytes_per_rank"]
            row += [f"{ps['forward_s'] * 1e3:.1f}", f"{ps['backward_s'] * 1e3:.1f}", f"{mem['total'] / unit:.2f}",
                    f"{(mem['params'] + mem['grads'] + mem['optimizer']) / unit:.2f}",
                    f"{mem['activations'] / unit:.2f}", f"{mem['workspace'] / unit:.2f}"]
        else:
            row += ["-"] * 6
        rows.append(row)
    out.append(_table(rows))
    if pred:
        out.append("breakdown: " + ", ".join(f"{k.removesuffix('_s')} {v:.4f}s" for k, v in pred["breakdown"].items()))
    return "\n".join(out)
