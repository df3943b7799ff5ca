"""The picture of a plan (and of what a run of it measured), as data: `scene(plan, report)` is a Scene of
panels of boxes, rules and notes in data coordinates, which show_page.py places and writes as SVG/HTML and
show_mpl.py paints with matplotlib.

The picture, top to bottom, every panel with one row per pipeline stage:
- layout: decoder layers (with the embedding before and the head after) against stages, each cell coloured by its
  strategy (galvatron_contracts.names), hatched under recompute; the staircase shows the layer split;
- memory: per stage, the predicted bytes per rank stacked by part (params, grads, optimizer, activations,
  workspace, overhead) against the budget the plan was searched under; with a run report, the worst measured rank
  of the stage beside it (the allocator's peak, split by the run's own accounting);
- timeline: the predicted step, each stage's forward and backward boxes of every micro-batch in the plan's
  schedule, then its exposed gradient sync and the once-per-step parts (optimizer step, step overhead); with a
  run report, the measured step time;
- breakdown: where the predicted step goes (the critical stage), beside the measured breakdown of the slowest rank.

Everything here is pure (dicts in, a Scene out); the renderers only place and paint it, so a PNG and an HTML page
of the same plan show the same thing.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from galvatron_contracts.names import plan_summary, strategy_name

from .show_timeline import Slot, simulate

GIB, MIB, KIB = 2 ** 30, 2 ** 20, 2 ** 10

# --- the picture as data ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Box:
    """A filled rectangle in data coordinates (rows: y = stage, growing downwards)."""

    x: float
    y: float
    w: float
    h: float
    fill: str
    hatch: bool = False       # diagonal white lines: recompute, or the unaccounted part of a measured peak
    tip: str = ""             # the hover text of the HTML page
    gid: str = ""             # a stable id in the SVG output (layout cells, memory bars)
    label: str = ""           # drawn inside when it fits
    label_color: str = "#000000"


@dataclass(frozen=True)
class Rule:
    """A straight line in data coordinates, with an optional label at its top end."""

    x0: float
    y0: float
    x1: float
    y1: float
    color: str
    dashed: bool = True
    gid: str = ""
    label: str = ""
    side: str = "middle"      # the label centred on the line, or to its "left" or "right" (kept inside the plot)


@dataclass(frozen=True)
class Note:
    """Text at (x, y) in data coordinates, vertically centred, starting at x."""

    x: float
    y: float
    text: str
    color: str = "#333333"


@dataclass(frozen=True)
class Swatch:
    """One legend entry: a filled square, or a line."""

    label: str
    fill: str
    hatch: bool = False
    line: bool = False
    dashed: bool = False


@dataclass
class Panel:
    """One plot: x from x_range in data units (ticks given), `rows` rows of `row_px` pixels each."""

    key: str
    title: str
    xlabel: str
    x_range: tuple[float, float]
    rows: int
    row_labels: list[str]
    xticks: list[tuple[float, str]]
    width: str = "full"       # "full", or "left"/"right" of a pair drawn side by side
    row_px: int = 26
    boxes: list[Box] = field(default_factory=list)
    rules: list[Rule] = field(default_factory=list)
    notes: list[Note] = field(default_factory=list)
    legend: list[Swatch] = field(default_factory=list)


@dataclass
class Scene:
    title: str
    lines: list[str]
    panels: list[Panel]
    captions: list[str]


# --- units and ticks -------------------------------------------------------------------------------------------

def byte_unit(top: float) -> tuple[float, str]:
    """GiB from 1 GiB up, else MiB (KiB below 1 MiB): the unit in which `top` reads with few digits."""
    return next(((u, n) for u, n in ((GIB, "GiB"), (MIB, "MiB")) if top >= u), (KIB, "KiB"))


def time_unit(top: float) -> tuple[float, str]:
    """Seconds from 1 s up, else milliseconds."""
    return (1.0, "s") if top >= 1.0 else (1e-3, "ms")


def fmt(value: float, unit: tuple[float, str]) -> str:
    """3 significant digits in the unit: '15.3 GiB', '812 ms'."""
    v = value / unit[0]
    return f"{v:.3g} {unit[1]}" if abs(v) >= 1 or v == 0 else f"{v:.2g} {unit[1]}"


def nice_ticks(top: float, unit: tuple[float, str], most: int = 7) -> list[tuple[float, str]]:
    """Ticks 0, s, 2s, ... <= top with s = 1, 2, 2.5 or 5 x 10^k in the unit, at most `most` of them."""
    scale = unit[0]
    span = top / scale
    if span <= 0:
        return [(0.0, "0")]
    base = 10 ** math.floor(math.log10(span / most))
    step = next(base * f for f in (1, 2, 2.5, 5, 10) if span / (base * f) <= most)
    return [(i * step * scale, f"{round(i * step, 9):g}") for i in range(int(span / step + 1e-9) + 1)]


def text_px(text: str, size_px: float) -> float:
    """A width estimate of `text` in a sans-serif font of `size_px` (for layout decisions only)."""
    return 0.58 * size_px * len(text)


# --- colours ---------------------------------------------------------------------------------------------------

# strategies: hues apart from the memory parts' and the timeline's blues and oranges, so no colour means two things
STRATEGY_COLORS = ["#5254A3", "#8CA252", "#BD9E39", "#AD494A", "#A55194", "#17BECF", "#637939", "#E7BA52",
                   "#D6616B", "#CE6DBD", "#393B79", "#8C6D31", "#843C39", "#7B4173", "#9C9EDE", "#B5CF6B"]
MEMORY_PARTS = [("params", "parameters", "#4C72B0"), ("grads", "gradients", "#8FB1DE"),
                ("optimizer", "optimizer states", "#8172B3"), ("activations", "activations in flight", "#DD8452"),
                ("workspace", "workspace", "#55A868"), ("overhead", "runtime overhead", "#B0B0B0")]
MEASURED_PARTS = [("param_bytes", "params"), ("grad_bytes", "grads"), ("optimizer_bytes", "optimizer"),
                  ("activation_bytes", "activations")]
UNACCOUNTED = "#C8C8C8"
FORWARD, BACKWARD, SYNC, STEP = "#6FA8DC", "#E69138", "#C0392B", "#6E6E6E"
PREDICTED_LINE, MEASURED_LINE, BUDGET_LINE = "#222222", "#1B7F3B", "#D62728"
# breakdown components: the predicted and measured keys of one cause share a name and a colour
COMPONENTS = [("forward_compute", "forward compute", FORWARD), ("backward_compute", "backward compute", BACKWARD),
              ("recompute", "recompute", "#F6C28B"), ("tp_communication", "TP/SP communication", "#8E7CC3"),
              ("zero_communication", "ZeRO communication", "#C27BA0"),
              ("layout_transitions", "layout changes", "#76A5AF"), ("pipeline_p2p", "pipeline p2p", "#93C47D"),
              ("pipeline_bubble", "pipeline bubble / idle", "#D9D9D9"), ("grad_sync", "gradient sync", SYNC),
              ("optimizer_step", "optimizer step", STEP), ("step_overhead", "step sync / overhead", "#C9B458"),
              ("other", "other (framework, Python)", "#A9A9A9")]
ALIASES = {"pipeline_idle": "pipeline_bubble", "step_sync": "step_overhead"}   # measured name -> predicted cause
EXTRA_COLORS = ["#B6D7A8", "#FFE599", "#EA9999", "#A2C4C9"]


def component(key: str) -> str:
    """The cause a breakdown key names: 'grad_sync_exposed_s' and 'grad_sync_s' are both 'grad_sync'."""
    name = key.removesuffix("_s").removesuffix("_exposed")
    return ALIASES.get(name, name)



# --- the scene -------------------------------------------------------------------------------------------------

def scene(plan: dict, report: dict | None = None, warnings: list[str] | None = None) -> Scene:
    """The picture of a plan (and of a run of it): the header, the panels that the documents have data for, and
    captions that say what is drawn from where, and what is missing and why."""
    pred = plan.get("predictions")
    captions = list(warnings or [])
    panels = [layout_panel(plan)]
    if pred is not None or report is not None:
        memory = memory_panel(plan, report, captions)
        panels[0].width, panels[0].row_px = "left", memory.row_px      # side by side, row for row
        panels.append(memory)
    if pred is not None:
        panels += [timeline_panel(plan, report, captions), breakdown_panel(plan, report, captions)]
    else:
        captions.insert(0, "This plan carries no predictions, so only its layout (and what the report measured) is "
                           "drawn: `galvatron-search evaluate PLAN COST_MODEL` adds them.")
    return Scene(title=_title(plan), lines=_header_lines(plan, report), panels=panels, captions=captions)


def _title(plan: dict) -> str:
    cl = plan["cluster"]
    device = cl.get("device", {})
    noun = "GPUs" if device.get("type") == "cuda" else "ranks"
    name = f" {device['name']}" if device.get("name") else ""
    nodes = f"{cl['nodes']} node{'s' if cl['nodes'] > 1 else ''} x {cl['gpus_per_node']}{name}"
    return f"Plan: {plan['model']['name']} on {cl['world_size']:,} {noun} ({nodes})"


def _header_lines(plan: dict, report: dict | None) -> list[str]:
    tr = plan["training"]
    lines = [plan_summary(plan)]
    batch = (f"global batch {plan['global_batch']} = {plan['micro_batch_size']} x {plan['micro_batches']} "
             f"micro-batches, {tr['optimizer']['name']}")
    pred = plan.get("predictions")
    if pred:
        t = pred["iteration_time_s"]
        lines.append(f"predicted {fmt(t, time_unit(t))} per iteration, {pred['samples_per_s']:.4g} samples/s, "
                     f"{pred['tokens_per_s']:,.0f} tokens/s; {batch}")
    else:
        lines.append(f"no predictions; {batch}")
    search = plan.get("search")
    if search:
        budget = search["memory_budget_bytes"]
        text = (f"searched under {fmt(budget, byte_unit(budget))} per GPU: {search['candidates_evaluated']:,} "
                f"candidates in {search['time_s']:.3g} s")
        feasible = [b for b in search.get("baselines", []) if b["feasible"]]
        if pred and feasible:
            best = max(feasible, key=lambda b: b["samples_per_s"])
            text += f"; {pred['samples_per_s'] / best['samples_per_s']:.2f}x the best baseline ({best['name']})"
        lines.append(text)
    if report:
        th = report["throughput"]
        t = th["iteration_time_s"]
        text = f"measured (run report): {fmt(t, time_unit(t))} per iteration"
        if pred:
            text += f" ({t / pred['iteration_time_s']:.2f}x predicted)"
        text += f", {th['samples_per_s']:.4g} samples/s over {th['measured_steps']} steps"
        if th.get("mfu") is not None:
            text += f", MFU {100 * th['mfu']:.1f}%"
        peak = max(report["memory"]["ranks"], key=lambda r: r["peak_bytes"])
        text += f"; peak memory {fmt(peak['peak_bytes'], byte_unit(peak['peak_bytes']))} (rank {peak['rank']})"
        lines.append(text)
    return lines


def stage_labels(plan: dict) -> list[str]:
    out = []
    for st in plan["stages"]:
        r = st["ranks"]
        ranks = f"rank {r[0]}" if len(r) == 1 else f"ranks {r[0]}-{r[-1]}"
        out.append(f"stage {st['index']} · {ranks}")
    return out


def _row_px(stages: int) -> int:
    """Rows shrink from 30 px (few stages) to 20 px (16 stages and more), so 1,024 GPUs stay on one page."""
    return max(20, min(30, 30 - (stages - 4) * 10 // 12))


def _layer_step(layers: int) -> int:
    return next(s for s in (1, 2, 5, 10, 20, 50, 100, 200, 500) if layers / s <= 12)


def layout_panel(plan: dict) -> Panel:
    """Layers x stages: column 0 the embedding, 1..L the decoder layers, L + 1 the head; one cell per layer in the
    row of its stage, coloured by its strategy, hatched under recompute."""
    L, pp = len(plan["layers"]), len(plan["stages"])
    units = [("embedding", "emb", plan["embedding"], 0)]
    for st in plan["stages"]:
        units += [(f"layer{j}", f"layer {j}", plan["layers"][j], st["index"])
                  for j in range(st["layer_start"], st["layer_end"])]
    units.append(("head", "head", plan["head"], pp - 1))
    names = [strategy_name(s) for _, _, s, _ in units]
    colors = {}
    for name in names:
        colors.setdefault(name, STRATEGY_COLORS[len(colors) % len(STRATEGY_COLORS)])
    step = _layer_step(L)
    # layer 0 sits next to "emb": labelled only when every layer is
    ticks = [(0.5, "emb")] + [(j + 1.5, str(j)) for j in range(0 if step == 1 else step, L, step)]
    ticks.append((L + 1.5, "head"))
    panel = Panel("layout", "Layers x stages: each layer's strategy", "decoder layer (emb: embedding, head: LM "
                  "head + loss)", (0.0, L + 2.0), pp, stage_labels(plan), ticks, row_px=_row_px(pp))
    for col, ((gid, what, strategy, stage), name) in enumerate(zip(units, names, strict=True)):
        panel.boxes.append(Box(col + 0.06, stage + 0.14, 0.88, 0.72, colors[name], hatch=strategy["recompute"],
                               gid=f"cell-{gid}-stage{stage}", tip=f"{what} on stage {stage}: {name}"))
    for st in plan["stages"][1:]:
        x = st["layer_start"] + 1.0
        panel.rules.append(Rule(x, 0, x, pp, "#BBBBBB", dashed=True))
    for name, color in colors.items():
        layers = sum(1 for (gid, *_), n in zip(units, names, strict=True) if n == name and gid.startswith("layer"))
        where = [w for (gid, w, *_), n in zip(units, names, strict=True) if n == name and gid in ("embedding", "head")]
        count = [f"{layers} layer{'s' if layers != 1 else ''}"] if layers else []
        panel.legend.append(Swatch(f"{name} ({', '.join(count + where)})", color, hatch=name.endswith(" rc")))
    return panel


def _measured_by_stage(report: dict, pp: int) -> dict[int, dict]:
    """Per stage, its measured rank with the highest peak (the one that would run out of memory first)."""
    worst: dict[int, dict] = {}
    for r in report["memory"]["ranks"]:
        if r["stage"] < pp and (r["stage"] not in worst or r["peak_bytes"] > worst[r["stage"]]["peak_bytes"]):
            worst[r["stage"]] = r
    return worst


def _budget(plan: dict) -> tuple[float | None, str]:
    search = plan.get("search")
    if search:
        return float(search["memory_budget_bytes"]), "budget"
    memory = plan["cluster"].get("device", {}).get("memory_bytes")
    return (float(memory), "device memory") if memory else (None, "")


def memory_panel(plan: dict, report: dict | None, captions: list[str]) -> Panel:
    """Per stage, the predicted bytes per rank by part (upper bar) and the worst measured rank (lower bar)."""
    pp = len(plan["stages"])
    pred = plan.get("predictions")
    measured = _measured_by_stage(report, pp) if report else {}
    budget, budget_name = _budget(plan)
    totals = [s["memory_bytes_per_rank"]["total"] for s in pred["stages"]] if pred else []
    peaks = [max(r["peak_bytes"], sum(r["accounting"][k] for k, _ in MEASURED_PARTS)) for r in measured.values()]
    top = max(totals + peaks + ([budget] if budget else []) + [1.0])
    unit = byte_unit(top)
    both = bool(pred and measured)
    span = top * (1.55 if measured else 1.3)
    panel = Panel("memory", "Memory per GPU, by stage", f"bytes per GPU ({unit[1]})", (0.0, span), pp, [],
                  nice_ticks(top * 1.05, unit), width="right", row_px=_row_px(pp) + (16 if both else 0))
    bars = [("pred", 0.1, 0.38), ("meas", 0.52, 0.38)] if both else [("pred" if pred else "meas", 0.15, 0.7)]
    geometry = {name: (y, h) for name, y, h in bars}
    for k in range(pp):
        if pred:
            _predicted_bar(panel, k, pred["stages"][k]["memory_bytes_per_rank"], geometry["pred"], unit,
                           budget, both)
        if k in measured:
            _measured_bar(panel, k, measured[k], geometry["meas"], unit, budget)
    if budget:
        panel.rules.append(Rule(budget, 0, budget, pp, BUDGET_LINE, gid="budget",
                                label=f"{budget_name} {fmt(budget, unit)}"))
        if budget_name == "device memory":
            captions.append("Memory: the plan records no search budget; the red line is the device memory.")
    else:
        captions.append("Memory: the plan records no budget (no search record) and no device memory: no line.")
    used = {b.gid.rsplit("-", 1)[1] for b in panel.boxes}
    panel.legend = [Swatch(label, color) for key, label, color in MEMORY_PARTS if key in used]
    if "rest" in used:
        panel.legend.append(Swatch("measured, not accounted (workspace, overhead, fragmentation)", UNACCOUNTED,
                                   hatch=True))
    if budget:
        panel.legend.append(Swatch(budget_name, BUDGET_LINE, line=True, dashed=True))
    if measured:
        panel.legend.append(Swatch("measured peak (allocator)", "#000000", line=True))
    if both:
        captions.append("Memory: per stage the upper bar is predicted (the plan's predictions), the lower one "
                        "measured on the stage's rank with the highest peak: the allocator's peak, split by the "
                        "run's accounting of parameters, gradients, optimizer states and saved activations.")
    return panel


def _note_x(end: float, budget: float | None, span: float) -> float:
    """Right of the bar, and right of the budget line where the bar ends short of it (no text under the line)."""
    return max(end, budget or 0.0) + 0.012 * span


def _predicted_bar(panel: Panel, k: int, mem: dict, at: tuple[float, float], unit, budget, both: bool) -> None:
    x = 0.0
    for key, label, color in MEMORY_PARTS:
        if mem[key] > 0:
            panel.boxes.append(Box(x, k + at[0], mem[key], at[1], color, gid=f"mem-pred-s{k}-{key}",
                                   tip=f"stage {k} predicted {label}: {fmt(mem[key], unit)}"))
            x += mem[key]
    panel.notes.append(Note(_note_x(x, budget, panel.x_range[1]), k + at[0] + at[1] / 2,
                            fmt(mem["total"], unit) + (" predicted" if both else "")))


def _measured_bar(panel: Panel, k: int, r: dict, at: tuple[float, float], unit, budget) -> None:
    x = 0.0
    for key, part in MEASURED_PARTS:
        value = r["accounting"][key]
        if value > 0:
            panel.boxes.append(Box(x, k + at[0], value, at[1], dict((p, c) for p, _, c in MEMORY_PARTS)[part],
                                   gid=f"mem-meas-s{k}-{part}",
                                   tip=f"stage {k} rank {r['rank']} measured {part}: {fmt(value, unit)}"))
            x += value
    peak = r["peak_bytes"]
    if peak > x:
        panel.boxes.append(Box(x, k + at[0], peak - x, at[1], UNACCOUNTED, hatch=True, gid=f"mem-meas-s{k}-rest",
                               tip=f"stage {k} rank {r['rank']}: the rest of the peak (workspace, overhead, "
                                   f"fragmentation): {fmt(peak - x, unit)}"))
    panel.rules.append(Rule(peak, k + at[0] - 0.04, peak, k + at[0] + at[1] + 0.04, "#000000", dashed=False,
                            gid=f"mem-peak-s{k}"))
    panel.notes.append(Note(_note_x(max(x, peak), budget, panel.x_range[1]), k + at[0] + at[1] / 2,
                            f"{fmt(peak, unit)} measured, rank {r['rank']}"))


# The predicted breakdown's parts that the forward/backward boxes and each stage's sync already show; the others
# happen once per step after the last backward (the optimizer step, the step overhead, any later addition).
IN_THE_BOXES = {"forward_compute", "backward_compute", "recompute", "tp_communication", "zero_communication",
                "layout_transitions", "pipeline_p2p", "pipeline_bubble", "grad_sync"}


def step_tail(pred: dict) -> list[tuple[str, float]]:
    """The once-per-step parts of the predicted breakdown (that of the critical stage, the only one a plan
    records), in drawing order."""
    return [(key, v) for key, v in _grouped(pred["breakdown"]).items() if key not in IN_THE_BOXES and v > 0]


def timeline_panel(plan: dict, report: dict | None, captions: list[str]) -> Panel:
    """The predicted step: every micro-batch's forward and backward per stage in the plan's schedule, then each
    stage's exposed gradient sync and the once-per-step parts; the predicted and measured iteration times as lines."""
    pred, pp, m = plan["predictions"], len(plan["stages"]), plan["micro_batches"]
    fwd = [s["forward_s"] for s in pred["stages"]]
    bwd = [s["backward_s"] for s in pred["stages"]]
    slots = simulate(plan["schedule"], fwd, bwd, m)
    ends = [max(s.end for s in slots if s.stage == k) for k in range(pp)]
    syncs = [s.get("grad_sync_exposed_s", 0.0) for s in pred["stages"]]
    tail = step_tail(pred)
    T = pred["iteration_time_s"]
    th = report["throughput"] if report else None
    spread = th.get("iteration_time_spread_s", {}) if th else {}
    top = max([T, th["iteration_time_s"] if th else 0.0, spread.get("p75_s", 0.0)]
              + [e + x + sum(v for _, v in tail) for e, x in zip(ends, syncs, strict=True)])
    unit = time_unit(top)
    title = (f"Predicted pipeline timeline of one step ({plan['schedule']}, {m} micro-batch{'es' if m > 1 else ''} "
             f"per stage)")
    room = 1.12 if th else 1.02            # a measured line's label may go right of the predicted one
    panel = Panel("timeline", title, f"time in the step ({unit[1]})", (0.0, top * room), pp, stage_labels(plan),
                  nice_ticks(top, unit), row_px=_row_px(pp))
    if "p25_s" in spread and "p75_s" in spread:
        panel.boxes.append(Box(spread["p25_s"], 0, spread["p75_s"] - spread["p25_s"], pp, "#CFE8D5",
                               tip=f"measured step time p25-p75: {fmt(spread['p25_s'], unit)} - "
                                   f"{fmt(spread['p75_s'], unit)}"))
    _micro_batch_boxes(panel, slots, unit)
    _step_end_boxes(panel, ends, syncs, tail, unit)
    _iteration_rules(panel, T, th["iteration_time_s"] if th else None, unit)
    panel.legend = [Swatch("forward (micro-batch number)", FORWARD), Swatch("backward", BACKWARD)]
    panel.legend += [Swatch("exposed gradient sync", SYNC)] if any(syncs) else []
    panel.legend += [Swatch(*_component_style(key)) for key, _ in tail]
    panel.legend.append(Swatch("predicted iteration time", PREDICTED_LINE, line=True, dashed=True))
    if th:
        panel.legend.append(Swatch("measured iteration time (median; shaded: p25-p75)", MEASURED_LINE, line=True))
    crit = max(range(pp), key=lambda k: (m + pp - 1) * (fwd[k] + bwd[k]) + syncs[k])
    once = _listed([_component_style(key)[0] for key, _ in tail])
    then = f" and what happens once per step ({once}: the critical stage's times, drawn on every stage)" if tail else ""
    captions.append(
        f"Timeline: the boxes place each stage's predicted forward and backward of one micro-batch "
        f"(predictions.stages[].forward_s, backward_s; p2p and layout changes included) in the {plan['schedule']} "
        f"order, each as soon as its input has arrived, then the stage's exposed gradient sync{then}. The dashed "
        f"line is the plan's predicted iteration time, (m + pp - 1) x the slowest stage's forward + backward (here "
        f"stage {crit}) plus {_listed(['its sync'] + [_component_style(key)[0] for key, _ in tail])}; the boxes "
        f"end there when the stages are balanced, and apart from it where they are not.")
    if report:
        captions.append("Measured: a run report holds the step time, per-rank memory and (optionally) a breakdown "
                        "per rank, not a per-micro-batch timeline, so the measured step is drawn as a line over the "
                        "predicted boxes and its breakdown beside the predicted one.")
    return panel


def _listed(items: list[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    return " and ".join(filter(None, [", ".join(items[:-1]), items[-1]])) if items else ""


def _micro_batch_boxes(panel: Panel, slots: list[Slot], unit) -> None:
    for s in slots:
        what = "forward" if s.kind == "F" else "backward"
        panel.boxes.append(Box(s.start, s.stage + 0.14, s.end - s.start, 0.72, FORWARD if s.kind == "F" else BACKWARD,
                               label=str(s.micro_batch), label_color="#000000" if s.kind == "F" else "#FFFFFF",
                               tip=f"stage {s.stage} {what} of micro-batch {s.micro_batch}: {fmt(s.start, unit)} - "
                                   f"{fmt(s.end, unit)}"))


def _step_end_boxes(panel: Panel, ends: list[float], syncs: list[float], tail: list[tuple[str, float]],
                    unit) -> None:
    for k, (end, sync) in enumerate(zip(ends, syncs, strict=True)):
        if sync > 0:
            panel.boxes.append(Box(end, k + 0.14, sync, 0.72, SYNC,
                                   tip=f"stage {k} exposed gradient sync: {fmt(sync, unit)}"))
        x = end + sync
        for key, seconds in tail:
            label, color = _component_style(key)
            panel.boxes.append(Box(x, k + 0.14, seconds, 0.72, color,
                                   tip=f"{label}: {fmt(seconds, unit)} (the critical stage's)"))
            x += seconds


def _iteration_rules(panel: Panel, predicted: float, measured: float | None, unit) -> None:
    """The predicted (dashed) and measured (solid) iteration times, their labels pointing away from each other."""
    first = "left" if measured is None or predicted <= measured else "right"
    panel.rules.append(Rule(predicted, 0, predicted, panel.rows, PREDICTED_LINE, gid="predicted-step",
                            label=f"predicted {fmt(predicted, unit)}", side=first))
    if measured is not None:
        panel.rules.append(Rule(measured, 0, measured, panel.rows, MEASURED_LINE, dashed=False, gid="measured-step",
                                label=f"measured {fmt(measured, unit)}", side="left" if first == "right" else "right"))


def _component_boxes(panel: Panel, row: int, parts: dict[str, float], unit, who: str) -> float:
    x = 0.0
    for key, value in parts.items():
        label, color = _component_style(key)
        if value > 0:
            panel.boxes.append(Box(x, row + 0.18, value, 0.64, color, tip=f"{who} {label}: {fmt(value, unit)}"))
            x += value
    return x


def _component_style(key: str) -> tuple[str, str]:
    for name, label, color in COMPONENTS:
        if name == key:
            return label, color
    return key.replace("_", " "), EXTRA_COLORS[sum(map(ord, key)) % len(EXTRA_COLORS)]


def _grouped(components: dict[str, float]) -> dict[str, float]:
    """Seconds per cause (component()), in the order of COMPONENTS, unknown keys after."""
    out: dict[str, float] = {}
    for key, value in components.items():
        out[component(key)] = out.get(component(key), 0.0) + value
    order = [name for name, _, _ in COMPONENTS]
    return dict(sorted(out.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order)))


def breakdown_panel(plan: dict, report: dict | None, captions: list[str]) -> Panel:
    """Where the step goes: the predicted breakdown (critical stage) and the measured one (the slowest rank)."""
    pred = plan["predictions"]
    predicted = _grouped(pred["breakdown"])
    rows, labels = [("predicted", predicted)], ["predicted (critical stage)"]
    measured_total = None
    if report:
        br = report.get("breakdown")
        if br:
            chosen = report.get("comparison", {}).get("breakdown", {}).get("rank")
            ranks = {r["rank"]: r for r in br["ranks"]}
            r = ranks.get(chosen) or max(br["ranks"], key=lambda x: x["step_s"])
            rows.append((f"measured rank {r['rank']}", _grouped(r["components"])))
            labels.append(f"measured · rank {r['rank']} (slowest)")
            captions.append(f"Breakdown: the predicted components of the critical stage beside the measured ones of "
                            f"rank {r['rank']} in profiled step {br['profiled_step']} ({br['method']}); their sum is "
                            f"that step's time, not the median.")
        else:
            measured_total = report["throughput"]["iteration_time_s"]
            labels.append("measured (median step)")
            captions.append("Breakdown: the run report carries no breakdown (an optional part of run-report 1.2), so "
                            "only the measured step time is drawn beside the predicted components.")
    sums = [sum(parts.values()) for _, parts in rows] + ([measured_total] if measured_total else [])
    top = max(sums + [pred["iteration_time_s"], 1e-9])
    unit = time_unit(top)
    panel = Panel("breakdown", "Where the step goes", f"time on the critical path ({unit[1]})", (0.0, top * 1.22),
                  len(labels), labels, nice_ticks(top * 1.05, unit), row_px=30)
    used: dict[str, None] = {}
    for row, (who, parts) in enumerate(rows):
        end = _component_boxes(panel, row, parts, unit, who)
        used.update(dict.fromkeys(k for k, v in parts.items() if v > 0))
        panel.notes.append(Note(end + 0.01 * top, row + 0.5, fmt(end, unit)))
    if measured_total:
        row = len(rows)
        panel.boxes.append(Box(0, row + 0.18, measured_total, 0.64, "#BFBFBF", tip="measured median step",
                               label="measured step, not broken down"))
        panel.notes.append(Note(measured_total + 0.01 * top, row + 0.5, fmt(measured_total, unit)))
    panel.legend = [Swatch(*_component_style(key)) for key in used]
    return panel
