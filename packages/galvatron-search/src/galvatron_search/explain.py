"""`--explain`: the baselines beside the plan, the plan per stage, and what the plan rests on that the hardware
profile did not measure, as plain text.

What was not measured (``robustness``, ``robustness_text``): the cost model flags each strategy whose
communication rests on an extrapolated collective fit (``pipelines[].strategies[].extrapolated``) and each pipeline
degree whose p2p does (``pipelines[].extrapolated_p2p``). ``at_bandwidth`` is the one place that scales them: a
copy of the cost model in which those terms run at ``factor`` x their bandwidth, searched again like the original
(same options), at 0.5x and 2x:

- the lin terms (forward_comm, backward_comm, each layout's p2p) scale their per-sample part by 1 / factor and
  keep their fixed part: galvatron-cost writes a communication lin as alpha (fixed) + bytes per sample / bandwidth
  (per sample; the tensor-parallel messages grow with the micro-batch), so the latency stays as it is;
- the scalar terms (param_gather_forward_s, param_gather_backward_s, grad_reduce_per_microbatch_s, grad_sync_s)
  scale whole: they are alpha + parameter bytes / bandwidth, summed into one number, so the latency scales with
  them; on parameter-sized messages it is a small share (the error is at most alpha / term).

The flag is per strategy, so a strategy with one extrapolated term (say its data-parallel group crosses nodes)
has all its communication scaled, its measured tensor-parallel terms too: the sensitivity shown is an upper
bound. Layout changes (transitions) carry no flag in the cost model and are left as they are.
"""
from __future__ import annotations

import dataclasses
from collections import Counter

from galvatron_contracts.names import plan_summary, runs, strategy_name
from galvatron_contracts.ranks import rank_groups, stage_ranks

from .costs import CostTables
from .document import plan_body
from .evaluate import Spec, evaluate_spec
from .planner import Options, require, run_search

GIB = 2 ** 30
FACTORS = (0.5, 2.0)
LIN_COMM = ("forward_comm", "backward_comm")
SCALAR_COMM = ("param_gather_forward_s", "param_gather_backward_s", "grad_reduce_per_microbatch_s", "grad_sync_s")


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



# --- what the plan rests on that the profile did not measure --------------------------------------------------

def _bandwidth_part(lin: dict, factor: float) -> dict:
    return {**lin, "per_sample_s": lin["per_sample_s"] / factor}


def _scaled_strategy(strategy: dict, factor: float) -> dict:
    time = dict(strategy["time"])
    for key in LIN_COMM:
        time[key] = _bandwidth_part(time[key], factor)
    for key in SCALAR_COMM:
        time[key] = time[key] / factor
    return {**strategy, "time": time}


def at_bandwidth(cost_model: dict, factor: float) -> dict:
    """The cost model with every extrapolated communication term at `factor` x its bandwidth (the module
    docstring says which part of each term scales); the document itself is not changed."""
    pipelines = []
    for pipe in cost_model["pipelines"]:
        strategies = [_scaled_strategy(s, factor) if s.get("extrapolated") else s for s in pipe["strategies"]]
        layouts = pipe["layouts"]
        if pipe.get("extrapolated_p2p"):
            layouts = [{**lay, "p2p": _bandwidth_part(lay["p2p"], factor)} for lay in layouts]
        pipelines.append({**pipe, "strategies": strategies, "layouts": layouts})
    return {**cost_model, "pipelines": pipelines}


def _used_rows(spec: Spec) -> list[tuple[str, int, list[int]]]:
    """(kind, strategy row, decoder layers) of every strategy the plan uses, in model order."""
    layers: dict[int, list[int]] = {}
    for j, row in enumerate(spec.dec):
        layers.setdefault(row, []).append(j)
    return [("embedding", spec.emb, [])] + [("decoder", r, js) for r, js in layers.items()] + [("head", spec.head, [])]


def _group_shape(groups: list[list[int]], gpus_per_node: int) -> tuple[int, int, int]:
    """(group size, nodes spanned, most ranks on one node of a group that crosses nodes) of concurrent groups,
    as fits.collectives records them (group_size, nodes_spanned, ranks_per_node)."""
    nodes = [Counter(r // gpus_per_node for r in g) for g in groups]
    crossing = [c for c in nodes if len(c) > 1]
    per_node = max(max(c.values()) for c in crossing) if crossing else len(groups[0])
    return len(groups[0]), max(len(c) for c in nodes), per_node


def _fits_of(cost_model: dict, pp: int, layout: dict) -> list[int]:
    """Indices of the extrapolated fits.collectives entries shaped like the layout's tp or dp groups in any stage
    of the pp entry (where a strategy's communication runs; entries without the shape fields match by size)."""
    cl = cost_model["cluster"]
    shapes = set()
    for k in range(pp):
        for groups in rank_groups(stage_ranks(cl["world_size"], pp, k), layout["tp"], layout["tp_layout"]):
            if len(groups[0]) > 1:
                shapes.add(_group_shape(groups, cl["gpus_per_node"]))
    return [i for i, c in enumerate(cost_model["fits"]["collectives"]) if c["extrapolated"] and any(
        c["group_size"] == n and c.get("nodes_spanned", m) == m and c.get("ranks_per_node", k) == k
        for n, m, k in shapes)]


@dataclasses.dataclass
class AtBandwidth:
    """At `factor` x the extrapolated bandwidth: the original plan, and what the search chooses there (None
    where no search was asked: a plan evaluated, not searched)."""
    factor: float
    original_samples_per_s: float   # the original plan under the scaled cost model
    summary: str | None = None      # the plan chosen there (galvatron_contracts.names.plan_summary)
    samples_per_s: float | None = None
    same_plan: bool | None = None


@dataclasses.dataclass
class Robustness:
    strategies: list[dict]          # {"id", "kind", "layers", "fits": [indices into fits.collectives]}
    p2p: dict | None                # the plan's fits.p2p entry, when extrapolated
    fits: list[dict]                # cost_model["fits"]["collectives"], for the indices
    samples_per_s: float            # the original plan at the measured (1x) bandwidth
    at: list[AtBandwidth]
    elsewhere: int                  # strategies of the cost model flagged, the plan's or not

    @property
    def rests_on_extrapolation(self) -> bool:
        return bool(self.strategies or self.p2p)


def robustness(tables: CostTables, spec: Spec, opts: Options | None, factors=FACTORS) -> Robustness:
    """Which of the plan's strategies and p2p rest on extrapolated fits and, when some do, the plan at each
    factor x their bandwidth and, given the search's options, the search there (memory does not change, so the
    same plans are feasible)."""
    cm, pipe = tables.doc, tables.pipeline(spec.pp)
    entry = next(p for p in cm["pipelines"] if p["pp"] == spec.pp)
    flagged = []
    for kind, row, layers in _used_rows(spec):
        s = pipe.kinds[kind].entries[row]
        if s.get("extrapolated"):
            layout = pipe.layouts[int(pipe.kinds[kind].layout[row])]
            flagged.append({"id": s["id"], "kind": kind, "layers": layers, "fits": _fits_of(cm, spec.pp, layout)})
    p2p = None
    if spec.pp > 1 and entry.get("extrapolated_p2p"):
        p2p = next((f for f in cm["fits"]["p2p"] if f["pp_degree"] == spec.pp), {"pp_degree": spec.pp})
    base = spec.b * spec.m / evaluate_spec(tables, spec)["iteration_time_s"]
    elsewhere = sum(bool(s.get("extrapolated")) for p in cm["pipelines"] for s in p["strategies"])
    result = Robustness(flagged, p2p, cm["fits"]["collectives"], base, [], elsewhere)
    if not result.rests_on_extrapolation:
        return result
    for factor in factors:
        scaled = CostTables(at_bandwidth(cm, factor), tables.source)
        at = AtBandwidth(factor, spec.b * spec.m / evaluate_spec(scaled, spec)["iteration_time_s"])
        if opts is not None:
            found, _ = run_search(scaled, opts)
            require(found, scaled, opts)
            at.summary, at.samples_per_s = plan_summary(plan_body(scaled, found.spec)), found.B / found.T
            at.same_plan = found.spec == spec
        result.at.append(at)
    return result


def _ranges(layers: list[int]) -> str:
    """[0, 1, 2, 5, 7, 8] -> '0-2, 5, 7-8'."""
    out, start = [], layers[0]
    for prev, j in zip(layers, layers[1:] + [None], strict=True):
        if j is None or j != prev + 1:
            out.append(f"{start}-{prev}" if prev > start else str(start))
            start = j
    return ", ".join(out)


def _fit_line(i: int, c: dict) -> str:
    nodes = c.get("nodes_spanned", 2 if c["crosses_nodes"] else 1)
    where = f"{nodes} node{'s' if nodes > 1 else ''}" + (f" x {c['ranks_per_node']} per node"
                                                          if "ranks_per_node" in c else "")
    return (f"  fits.collectives[{i}]: {c['op']} of {c['group_size']}, {c['layout']}, {where}: "
            f"{c['bandwidth_gbps']:.4g} GB/s, alpha {c['alpha_s'] * 1e6:.1f} us ({c.get('method', 'no method')})")


def robustness_text(r: Robustness) -> str:
    if not r.rests_on_extrapolation:
        return (f"extrapolated: none of the plan's strategies or p2p rests on an extrapolated fit (the cost model "
                f"flags {r.elsewhere} strategies elsewhere)")
    parts = [f"{len(r.strategies)} of its strategies"] + (["its p2p"] if r.p2p else [])
    out = [f"extrapolated: the plan rests on fits the hardware profile did not measure: {' and '.join(parts)}"]
    for s in r.strategies:
        where = f" (layers {_ranges(s['layers'])})" if s["layers"] else ""
        fits = ", ".join(f"fits.collectives[{i}]" for i in s["fits"]) or "an extrapolated fit of its groups"
        out.append(f"  {s['id']}{where}: {fits}")
    if r.p2p:
        p = r.p2p
        out.append(f"  p2p between stages (pp {p['pp_degree']}): "
                   + (f"{p['bandwidth_gbps']:.4g} GB/s, alpha {p['alpha_s'] * 1e6:.1f} us ({p['method']})"
                      if "method" in p else "extrapolated"))
    for i in sorted({i for s in r.strategies for i in s["fits"]}):
        out.append(_fit_line(i, r.fits[i]))
    for a in r.at:
        line = (f"at {a.factor:g}x the extrapolated bandwidth: this plan {a.original_samples_per_s:.4g} samples/s "
                f"({a.original_samples_per_s / r.samples_per_s:.2f}x of {r.samples_per_s:.4g})")
        if a.summary is not None:
            line += ("; the search keeps it" if a.same_plan
                     else f"; the search chooses {a.summary}: {a.samples_per_s:.4g} samples/s")
        out.append(line)
    out.append("scaled: the per-sample part of forward_comm, backward_comm and p2p (their fixed part is latency), "
               "param_gather_*, grad_reduce_per_microbatch_s and grad_sync_s whole, of the flagged strategies")
    return "\n".join(out)
