"""Refine a cost model's fitted terms from run-reports of the cluster it prices (``galvatron-cost calibrate``).

    from galvatron_cost import calibrate
    refined = calibrate(cost_model, [report_1, report_2], names=["r1.json", "r2.json"])

A run-report (schema 1.2, galvatron-run) carries the measured breakdown of one profiled step on every rank. Each
measured number is compared with the term of the cost model that predicts it, for the same strategy and size:

    term                          measured (breakdown.ranks[])           predicted
    compute KIND tpT[+sp][ rc]    layers[].forward_s, and backward_s +   m * (fixed_s + per_rank_sample_s * b / dp):
      forward | backward          recompute_s, over m micro-batches      the strategies' forward / backward lin
    a fits.collectives entry      collectives[] over group tp, dp,       calls * alpha_s + wire bytes / bandwidth
                                  world, stage or tied: calls, bytes,    (comm.wire_factor of the bytes)
                                  time_s
    optimizer_step                components.optimizer_step_s            fixed_s + per_param_s * parameters updated
                                                                         (the strategies' optimizer_step_s in
                                                                         parameters at per_param_s)
    step_overhead_s               components.other_s + the report's      step_overhead_s
                                  least step_sync_s

A term's refinement from its points: with points of at least two sizes (samples per rank, bytes per call,
parameters), both its numbers by non-negative least squares on relative residuals (scipy.optimize.nnls, as the
fits are made), provided the size-proportional part still explains at least IDENTIFIED (5%) of the largest
point's time (else a latency- or overhead-bound sweep would claim an unbounded bandwidth or a batch-free compute
time); otherwise both numbers times measured / predicted over the points (the one correction a single size can
tell). The step overhead is one constant: the mean of its points, each rank's framework remainder (other_s) plus
the closing loss all-reduce and barrier as the slowest rank of the report pays them (the least step_sync_s: every
other rank's also holds its wait for the slowest; the gradient norm's all-reduce is in optimizer_step_s, so it
refines the optimizer term). Each term is refined on its own: no global factor. A term whose refinement changes
none of its points' predictions by more than SAME (1e-9) keeps its numbers exactly, so reports that measured what
the model predicts change nothing but the calibration record.

Where a refined term enters: a compute term, every strategy of that (layer kind, tp, sp, recompute) in every
pipeline degree, layout and sharding, at its own dp (fits.compute keeps the profile's fits: a calibrated term is
finer, per sp and recompute); a collective fit, its fits.collectives entry and every strategy communication number
and layout change it enters, repriced by the Builder's own formulas (`_Repricer`: costmodel.Builder.pipeline over
the document's fits) and shifted by the difference the refined fit makes; optimizer_step, its two numbers and
every strategy's optimizer_step_s, scaled by the refined per_param_s over the document's (each strategy's
optimizer_step_s carries its own per-tensor and DTensor costs, so its size is its time in parameters at
per_param_s; where per_param_s was 0, per_param_s x grad_bytes / 4: gradients are fp32, one per parameter the rank
updates); step_overhead_s itself.

A measured collective's fit: the topology of its group on the rank's stage (tp or dp group of the layout of the
rank's layers that issue it, all ranks for world, every stage's ranks for stage, first and last stage's pairs
for tied; comm.groups_topology) priced as CommModel.collective prices it: the probed fit of that topology (the
most points), inside a node the probed fit of the same group size with the nearest sharing, else the extrapolated
entry of that topology. Bytes are the full buffer per rank, as the hardware-profile's message_bytes (the
breakdown's definition). Left out, counted in the notes: a collective whose layers disagree on the fit (dp groups
of two layouts across nodes), p2p, barriers and other groups, layers the cost model has no strategy for.

Refused (DocumentError, exit 3): a report without a breakdown; a report of another cluster (world size, nodes,
backend, device type or name), model (plan.model_name, a decoder beyond the model's layers, a strategy that does
not fill a stage) or training (dtype, seq_len).
"""
from __future__ import annotations

import re
from collections import Counter, OrderedDict
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import nnls

from galvatron_contracts.documents import DocumentError, as_current, digest, producer
from galvatron_contracts.ranks import canonical_layout, stage_ranks

from . import __version__
from .comm import BETA_FLOOR, OPS, TIME_FLOOR_S, AlphaBeta, Topology, groups_topology, wire_factor
from .compute import PHASES, ComputeFit
from .costmodel import Builder, _lin
from .layouts import Layout, local_groups
from .memory import DTYPE_BYTES, param_shapes

SAME = 1e-9             # relative change of every prediction below which a term keeps its numbers
IDENTIFIED = 0.05       # least share of the largest point's time the size-proportional part must explain
GROUPS = ("tp", "dp", "world", "stage", "tied")
COMM_LINS = ("forward_comm", "backward_comm")
COMM_SECONDS = ("param_gather_forward_s", "param_gather_backward_s", "grad_reduce_per_microbatch_s", "grad_sync_s")


# --- one term and its refinement ------------------------------------------------------------------------------

@dataclass
class Term:
    """A term predicting ``a * u + b * v`` for a point (u, v): (fixed_s, per-size) with u the count of times it
    is paid (micro-batches, calls, 1) and v the size summed over them (samples per rank, wire bytes, parameters)."""
    name: str
    before: tuple[float, float]
    u: list[float] = field(default_factory=list)
    v: list[float] = field(default_factory=list)
    y: list[float] = field(default_factory=list)
    constant: bool = False          # one number (the step overhead): its refinement is the mean
    after: tuple[float, float] | None = None
    how: str = ""

    def add(self, u: float, v: float, y: float) -> None:
        if u > 0:
            self.u.append(float(u))
            self.v.append(float(v))
            self.y.append(float(y))

    def refine(self) -> None:
        u, v, y = (np.asarray(x, float) for x in (self.u, self.v, self.y))
        before = np.array(self.before, float)
        if self.constant:
            after, self.how = np.array([float(y.mean()), 0.0]), f"mean of {y.size} measurements"
        else:
            after, self.how = self._least_squares(u, v, y) or self._scaled(u, v, y, before)
        pred_before, pred_after = before[0] * u + before[1] * v, after[0] * u + after[1] * v
        scale = np.maximum(np.abs(pred_before), TIME_FLOOR_S)
        if np.all(np.abs(pred_after - pred_before) <= SAME * scale):
            after, self.how = before, f"{self.how}: unchanged"
        self.after = (float(after[0]), float(after[1]))

    def _least_squares(self, u, v, y):
        size = v / u
        if size.max() <= size.min() * (1 + SAME) + 1e-300:
            return None
        A = np.stack([u, v], axis=1) / np.maximum(y, TIME_FLOOR_S)[:, None]
        coef, _ = nnls(A, np.ones_like(y))
        top = int(np.argmax(size))
        total = coef[0] + coef[1] * size[top]
        if total <= 0 or coef[1] * size[top] < IDENTIFIED * total:
            return None
        return coef, f"least squares over {y.size} measurements of {np.unique(size).size} sizes"

    @staticmethod
    def _scaled(u, v, y, before):
        predicted = float(np.sum(before[0] * u + before[1] * v))
        if predicted > 0:
            k = float(y.sum()) / predicted
            return before * k, f"x{k:.4g} (measured / predicted over {y.size} measurements of one size)"
        if v.sum() > 0:
            return np.array([0.0, float(y.sum() / v.sum())]), f"proportional to size over {y.size} measurements"
        return before, f"{y.size} measurements of nothing the term predicts"

    @property
    def changed(self) -> bool:
        return self.after != self.before


# --- the document's collective fits, as the cost model chose them --------------------------------------------

class CollectiveFits:
    """fits.collectives by topology, chosen as CommModel.collective chooses (see the module docstring)."""

    def __init__(self, entries: list[dict]):
        self.entries = entries
        self.topos = [Topology(e["group_size"], e["nodes_spanned"], e["ranks_per_node"], e["groups_per_node"])
                      if all(k in e for k in ("nodes_spanned", "ranks_per_node", "groups_per_node")) else None
                      for e in entries]

    def find(self, op: str, topo: Topology) -> int | None:
        known = [i for i, e in enumerate(self.entries) if e["op"] == op and self.topos[i] is not None]
        probed = [i for i in known if not self.entries[i]["extrapolated"]]
        exact = [i for i in probed if self.topos[i] == topo]
        if exact:
            return max(exact, key=lambda i: self.entries[i].get("quality", {}).get("points", 0))
        if not topo.crosses:
            same = [i for i in probed if not self.topos[i].crosses and self.topos[i].n == topo.n]
            if same:
                return min(same, key=lambda i: abs(self.topos[i].sharing - topo.sharing))
        return next((i for i in known if self.entries[i]["extrapolated"] and self.topos[i] == topo), None)

    def alpha_beta(self, i: int) -> AlphaBeta:
        return AlphaBeta(float(self.entries[i]["alpha_s"]), float(self.entries[i]["bandwidth_gbps"]))

    def name(self, i: int) -> str:
        e, t = self.entries[i], self.topos[i]
        stride = f" stride {e['stride']}" if e["layout"] == "strided" and "stride" in e else ""
        nodes = f" over {t.nodes} nodes" if t is not None and t.crosses else ""
        return f"{e['op']} group {e['group_size']} {e['layout']}{stride}{nodes}"


# --- repricing with the Builder's own formulas -----------------------------------------------------------------

_ZERO = ComputeFit(0.0, 0.0, 0.0)


class _DocComm:
    """The communication model a _Repricer asks: the document's fits, some replaced by refined ones."""
    profile_gpn = None

    def __init__(self, fits: CollectiveFits, refined: dict[int, AlphaBeta]):
        self.fits, self.refined = fits, refined

    def collective(self, op: str, topo: Topology, what: str = "") -> tuple[AlphaBeta, bool, str]:
        i = self.fits.find(op, topo)
        if i is None:           # no fit of the document prices it, so no measurement refined it: no difference
            return AlphaBeta(0.0, 1.0 / (BETA_FLOOR * 1e9)), False, "unpriced"
        return self.refined.get(i) or self.fits.alpha_beta(i), bool(self.fits.entries[i]["extrapolated"]), "fit"

    def p2p(self, topo: Topology, what: str = "", distance: int | None = None) -> tuple[AlphaBeta, bool, str]:
        return AlphaBeta(0.0, 1.0), False, "unused"          # p2p is not calibrated


class _Repricer(Builder):
    """costmodel.Builder's pipelines over a cost-model document instead of the profiles, for their communication
    numbers only: compute, activation and workspace read as zero, parameter shapes are the reference shapes
    (memory.param_shapes; a profile whose count differed priced its padding on one flat tensor, a difference of
    that padding in the bytes a refined fit moves)."""

    def __init__(self, doc: dict, fits: CollectiveFits, refined: dict[int, AlphaBeta]):   # no profiles: no super
        cl, tr = doc["cluster"], doc["training"]
        self.hw = {"cluster": cl}                # what the formulas read of the hardware profile: the cluster
        self.spec, self.notes = doc["model"], []
        self.nodes, self.gpn, self.world = cl["nodes"], cl["gpus_per_node"], cl["world_size"]
        self.seq, self.dtype, self.optimizer = tr["seq_len"], tr["dtype"], tr["optimizer"]
        self.e = DTYPE_BYTES[self.dtype]
        self.max_tp = max(lay["tp"] for p in doc["pipelines"] for lay in p["layouts"])
        self.optim = {"fixed_s": 0.0, "per_param_s": 0.0}
        self.comm = _DocComm(fits, refined)
        self.used_coll: OrderedDict = OrderedDict()
        self.extrapolated_used = False

    def compute(self, layer: str, tp: int, sp: bool = False) -> dict:
        return dict.fromkeys(PHASES, _ZERO)

    def optimizer_seconds(self, *args, **kwargs) -> float:
        return 0.0                               # optimizer numbers are refined by their own term, not repriced

    def split(self, layer: str, tp: int, recompute: bool) -> dict:
        return {"tp_divided": 0, "tp_replicated": 0}

    def workspace_per_sample(self, layer: str, tp: int) -> int:
        return 0

    def shapes(self, layer: str, tp: int, lm_head: bool = True):
        return param_shapes(self.spec, layer, tp, lm_head)


def _comm_numbers(pipe: dict) -> dict:
    """{(what, id, field): (fixed, per_sample)} of every communication number of one pipeline entry."""
    out = {}
    for s in pipe["strategies"]:
        t = s["time"]
        for k in COMM_LINS:
            out[("s", s["id"], k)] = (t[k]["fixed_s"], t[k]["per_sample_s"])
        for k in COMM_SECONDS:
            out[("s", s["id"], k)] = (t[k], 0.0)
    for tr in pipe["transitions"]:
        for k in ("forward", "backward"):
            out[("t", (tr["from"], tr["to"]), k)] = (tr[k]["fixed_s"], tr[k]["per_sample_s"])
    return out


def reprice(doc: dict, fits: CollectiveFits, refined: dict[int, AlphaBeta]) -> None:
    """Shift every communication number of ``doc`` by what the refined fits change in the Builder's formulas."""
    old, new = _Repricer(doc, fits, {}), _Repricer(doc, fits, refined)
    for pipe in doc["pipelines"]:
        a = _comm_numbers(old.pipeline(pipe["pp"])[0])
        b = _comm_numbers(new.pipeline(pipe["pp"])[0])
        strategies = {s["id"]: s["time"] for s in pipe["strategies"]}
        transitions = {(t["from"], t["to"]): t for t in pipe["transitions"]}
        for (what, key, name), (fa, pa) in a.items():
            fb, pb = b[(what, key, name)]
            if (fa, pa) == (fb, pb):
                continue
            holder = strategies.get(key) if what == "s" else transitions.get(key)
            if holder is None:
                continue
            if name in COMM_SECONDS:
                holder[name] = float(max(holder[name] + fb - fa, 0.0))
            else:
                holder[name] = _lin(holder[name]["fixed_s"] + fb - fa, holder[name]["per_sample_s"] + pb - pa)


# --- reading the reports ---------------------------------------------------------------------------------------

def _same_device(measured: str, priced: str) -> bool:
    """galvatron-run names a CPU '<model name> (<n> cores)', the probe '<model name>': the same device."""
    return measured == priced or measured.startswith(priced + " (")


def check_report(cm: dict, report: dict, name: str, cm_name: str) -> None:
    """DocumentError naming the report and field when it is no measurement of the cluster and model priced."""
    if "breakdown" not in report:
        raise DocumentError(name, "$.breakdown: the report has no measured breakdown (run-report 1.2 from "
                                  "galvatron-run carries one); calibration compares it with the cost model")
    env, cl, tr = report["environment"], cm["cluster"], cm["training"]
    pairs = [("environment.world_size", env["world_size"], cl["world_size"]),
             ("environment.nodes", env.get("nodes", cl["nodes"]), cl["nodes"]),
             ("environment.backend", env["backend"], cl["backend"]),
             ("environment.device.type", env["device"]["type"], cl["device"]["type"]),
             ("settings.dtype", report["settings"]["dtype"], tr["dtype"]),
             ("settings.seq_len", report["settings"]["seq_len"], tr["seq_len"]),
             ("plan.model_name", report["plan"].get("model_name", cm["model"]["name"]), cm["model"]["name"])]
    if not _same_device(env["device"]["name"], cl["device"]["name"]):
        pairs.append(("environment.device.name", env["device"]["name"], cl["device"]["name"]))
    for path, got, want in pairs:
        if got != want:
            raise DocumentError(name, f"$.{path}: {got!r}, but the cost model {cm_name} prices {want!r}: "
                                      f"calibrate with reports of the cluster, model and training it prices")


def stages_of(report: dict) -> int:
    """The plan's pipeline degree: the stages the report's ranks ran."""
    ranks = report["breakdown"]["ranks"] + report["memory"]["ranks"]
    return max(r["stage"] for r in ranks) + 1


def _check_layer(layer: dict, where: str, name: str, S: int, layers: int) -> None:
    m = re.fullmatch(r"layers\[(\d+)\]", layer["unit"])
    if m and int(m.group(1)) >= layers:
        raise DocumentError(name, f"{where}.unit: {layer['unit']} is beyond the model's {layers} decoder layers "
                                  f"(a report of another model)")
    s = layer.get("strategy")
    if s and s["tp"] * s["dp"] != S:
        raise DocumentError(name, f"{where}.strategy: tp {s['tp']} x dp {s['dp']} ranks, but a stage of this "
                                  f"plan on the cost model's cluster has {S} (a report of another cluster)")


# --- the calibration -------------------------------------------------------------------------------------------

class Calibration:
    """The points of every term the reports measure, and their refinement (see the module docstring)."""

    def __init__(self, cm: dict):
        self.cm = cm
        self.world, self.gpn = cm["cluster"]["world_size"], cm["cluster"]["gpus_per_node"]
        self.fits = CollectiveFits(cm["fits"]["collectives"])
        self.terms: dict = {}
        self.skipped: Counter = Counter()
        self._index_strategies()

    def _index_strategies(self) -> None:
        self.compute_before: dict[tuple, tuple[float, float]] = {}
        self.params: dict[tuple, float] = {}
        self.optim_in_seconds = any(s["time"].get("optimizer_step_s", 0.0) > 0
                                    for pipe in self.cm["pipelines"] for s in pipe["strategies"])
        for pipe in self.cm["pipelines"]:
            layouts = {lay["id"]: lay for lay in pipe["layouts"]}
            for s in pipe["strategies"]:
                lay = layouts[s["layout"]]
                key = (s["layer"], lay["tp"], bool(lay["sp"]), bool(s["recompute"]))
                for phase in ("forward", "backward"):
                    lin = s["time"][phase]
                    self.compute_before.setdefault(key + (phase,), (lin["fixed_s"], lin["per_sample_s"] * lay["dp"]))
                where = (pipe["pp"], s["layer"], lay["tp"], canonical_layout(lay["tp"], lay["tp_layout"],
                                                                             pipe["stage_ranks"]),
                         bool(lay["sp"]), lay["dp"], s["dp_sharding"], bool(s["recompute"]))
                self.params[where] = self._optimizer_size(s)

    def _optimizer_size(self, strategy: dict) -> float:
        """The optimizer term's size of one strategy: its optimizer_step_s in seconds where the document prices
        the step per layer (the term is then (fixed_s, a factor on every strategy's optimizer_step_s), which keeps
        each strategy's own per-tensor and DTensor costs), else the parameters it updates (fp32 gradients, one
        per parameter: the term is (fixed_s, per_param_s))."""
        if self.optim_in_seconds:
            return strategy["time"]["optimizer_step_s"]
        return strategy["memory"]["grad_bytes"] / 4

    def _optimizer_before(self) -> tuple[float, float]:
        o = self.cm.get("optimizer_step", {"fixed_s": 0.0, "per_param_s": 0.0})
        return o["fixed_s"], 1.0 if self.optim_in_seconds else o["per_param_s"]

    def term(self, key, name: str, before: tuple[float, float], constant: bool = False) -> Term:
        if key not in self.terms:
            self.terms[key] = Term(name, before, constant=constant)
        return self.terms[key]

    # --- points ---
    def add_report(self, report: dict, name: str) -> None:
        pp = stages_of(report)
        S = self.world // pp
        ranks = report["breakdown"]["ranks"]
        sync = min(rank["components"].get("step_sync_s", 0.0) for rank in ranks)
        for r, rank in enumerate(ranks):
            where = f"$.breakdown.ranks[{r}]"
            layers = rank.get("layers", [])
            for j, layer in enumerate(layers):
                _check_layer(layer, f"{where}.layers[{j}]", name, S, self.cm["model"]["layers"])
                self._compute_points(layer)
            first = stage_ranks(self.world, pp, rank["stage"])[0]
            for c in rank.get("collectives", []):
                self._collective_point(c, layers, pp, S, first)
            self._component_points(rank, layers, pp, S, sync)

    def _compute_points(self, layer: dict) -> None:
        s = layer.get("strategy")
        if not s or "micro_batches" not in layer or "micro_batch_size" not in layer:
            self.skipped["a layer without its strategy or micro-batching"] += 1
            return
        m, x = layer["micro_batches"], layer["micro_batch_size"] / s["dp"]
        measured = {"forward": layer["forward_s"], "backward": layer["backward_s"] + layer.get("recompute_s", 0.0)}
        for phase, y in measured.items():
            key = (layer["kind"], s["tp"], bool(s["sp"] and s["tp"] > 1), bool(s["recompute"]), phase)
            before = self.compute_before.get(key)
            if before is None:
                self.skipped[f"{layer['kind']} tp{s['tp']}: no such strategy in the cost model"] += 1
                continue
            label = f"compute {key[0]} tp{key[1]}{'+sp' if key[2] else ''}{' rc' if key[3] else ''} {phase}"
            self.term(key, label, before).add(m, m * x, y)

    def _group_topologies(self, c: dict, layers: list[dict], pp: int, S: int, first: int) -> set[Topology]:
        op, group, n = c["op"], c["group"], c["group_size"]
        if group == "world":
            return {groups_topology(np.arange(self.world)[None, :], self.gpn)}
        if group == "stage":        # every stage's ranks at once
            return {groups_topology(np.array([stage_ranks(self.world, pp, k) for k in range(pp)]), self.gpn)}
        if group == "tied":
            if pp == 1:
                return set()
            return {groups_topology(np.stack([stage_ranks(self.world, pp, 0),
                                              stage_ranks(self.world, pp, pp - 1)], axis=1), self.gpn)}
        users = [s for s in (layer.get("strategy") for layer in layers) if s and s[group] == n]
        if group == "dp" and op in ("all_reduce", "all_gather", "reduce_scatter"):
            sharded = op != "all_reduce"
            users = [s for s in users if (s["dp_sharding"] != "ddp") == sharded]
        out = set()
        for s in users:
            lay = Layout(s["tp"], canonical_layout(s["tp"], s["tp_layout"], S), False, s["dp"])
            out.add(groups_topology(first + local_groups(S, lay, group), self.gpn))
        return out

    def _collective_point(self, c: dict, layers: list[dict], pp: int, S: int, first: int) -> None:
        op, n = c["op"], c["group_size"]
        if op not in OPS or c["group"] not in GROUPS or n < 2 or c["calls"] < 1 or "bytes" not in c:
            self.skipped[f"{op} over {c['group']} (not a priced collective)"] += 1
            return
        found = {self.fits.find(op, t) for t in self._group_topologies(c, layers, pp, S, first)}
        if len(found) != 1 or None in found:
            why = "no layer issues it" if not found else "no single fit prices its group"
            self.skipped[f"{op} over {c['group']} of {n}: {why}"] += 1
            return
        i = found.pop()
        ab = self.fits.alpha_beta(i)
        self.term(("coll", i), self.fits.name(i), (ab.alpha_s, ab.per_byte_s())).add(
            c["calls"], wire_factor(op, n) * c["bytes"], c["time_s"])

    def _component_points(self, rank: dict, layers: list[dict], pp: int, S: int, sync: float) -> None:
        comps = rank["components"]
        if "other_s" in comps:
            overhead = float(self.cm.get("step_overhead_s", 0.0))
            self.term("step_overhead_s", "step_overhead_s", (overhead, 0.0), constant=True).add(
                1, 0, comps["other_s"] + sync)
        if "optimizer_step_s" not in comps:
            return
        if not layers:
            self.skipped["an optimizer step of a rank without its layers"] += 1
            return
        try:
            n = sum(self.params[(pp, layer["kind"], s["tp"], canonical_layout(s["tp"], s["tp_layout"], S),
                                 bool(s["sp"] and s["tp"] > 1), s["dp"], s["dp_sharding"], bool(s["recompute"]))]
                    for layer in layers for s in [layer["strategy"]])
        except (KeyError, TypeError):
            self.skipped["an optimizer step over layers the cost model has no strategy for"] += 1
            return
        self.term("optimizer_step", "optimizer_step", self._optimizer_before()).add(1, n, comps["optimizer_step_s"])

    # --- applying ---
    def apply(self, doc: dict) -> None:
        self.terms = {key: t for key, t in self.terms.items() if t.y}
        for t in self.terms.values():
            t.refine()
        refined = {key[1]: AlphaBeta(t.after[0], 1.0 / (max(t.after[1], BETA_FLOOR) * 1e9))
                   for key, t in self.terms.items() if isinstance(key, tuple) and key[0] == "coll" and t.changed}
        if refined:
            reprice(doc, self.fits, refined)
            for i, ab in refined.items():
                entry = doc["fits"]["collectives"][i]
                entry.update(alpha_s=ab.alpha_s, bandwidth_gbps=ab.bandwidth_gbps,
                             method=f"{entry.get('method', 'fit')}; calibrated from run-reports "
                                    f"({self.terms[('coll', i)].how}; quality is the profile fit's)")
        self._apply_compute(doc)
        self._apply_optimizer(doc)
        if "step_overhead_s" in self.terms and self.terms["step_overhead_s"].changed:
            doc["step_overhead_s"] = self.terms["step_overhead_s"].after[0]

    def _apply_compute(self, doc: dict) -> None:
        for pipe in doc["pipelines"]:
            layouts = {lay["id"]: lay for lay in pipe["layouts"]}
            for s in pipe["strategies"]:
                lay = layouts[s["layout"]]
                for phase in ("forward", "backward"):
                    t = self.terms.get((s["layer"], lay["tp"], bool(lay["sp"]), bool(s["recompute"]), phase))
                    if t is not None and t.changed:
                        s["time"][phase] = _lin(t.after[0], t.after[1] / lay["dp"])

    def _apply_optimizer(self, doc: dict) -> None:
        t = self.terms.get("optimizer_step")
        if t is None or not t.changed:
            return
        o = doc.setdefault("optimizer_step", {})
        o.update(self._optimizer_numbers(t.after), measured=True)      # by the runs, if not the probe
        for pipe in doc["pipelines"]:
            for s in pipe["strategies"]:    # its size (read before this write) at the refined number
                s["time"]["optimizer_step_s"] = float(t.after[1] * self._optimizer_size(s))

    def _optimizer_numbers(self, values: tuple[float, float]) -> dict:
        """The document's optimizer_step numbers of the term's (fixed_s, factor or per_param_s)."""
        a, b = values
        if self.optim_in_seconds:
            return {"fixed_s": a, "per_param_s": b * float(self.cm["optimizer_step"]["per_param_s"])}
        return {"fixed_s": a, "per_param_s": b}

    def record(self) -> list[dict]:
        """calibration.terms: each term's numbers before and after, as the document names them."""
        out = []
        for key, t in self.terms.items():
            out.append({"term": t.name, "before": self._numbers(key, t.before), "after": self._numbers(key, t.after),
                        "points": len(t.y), "note": t.how})
        return out

    def _numbers(self, key, values: tuple[float, float]) -> dict:
        a, b = values
        if key == "step_overhead_s":
            return {"step_overhead_s": a}
        if key == "optimizer_step":
            return self._optimizer_numbers(values)
        if key[0] == "coll":
            return {"alpha_s": a, "bandwidth_gbps": 1.0 / (max(b, BETA_FLOOR) * 1e9)}
        return {"fixed_s": a, "per_rank_sample_s": b}


def calibrate(cost_model: dict, reports: list[dict], names: list[str] | None = None,
              source: str = "cost model") -> dict:
    """The cost model with every term the run-reports measure refined (a new dict; the input is unchanged).

    ``names``: the reports' file names (errors and calibration.reports[].path); ``source``: the cost model's.
    Raises DocumentError (exit 3) for a report of another cluster, model or training, or without a breakdown."""
    if not reports:
        raise DocumentError(source, "no run-report to calibrate from")
    names = list(names) if names is not None else [f"run-report {i + 1}" for i in range(len(reports))]
    for report, name in zip(reports, names, strict=True):
        check_report(cost_model, report, name, source)
    cal = Calibration(cost_model)
    for report, name in zip(reports, names, strict=True):
        cal.add_report(report, name)
    doc = as_current(cost_model, source)
    cal.apply(doc)
    old = doc.get("calibration", {"reports": [], "terms": []})
    doc["calibration"] = {
        "reports": old["reports"] + [{"sha256": digest(r), "plan_summary": r["plan"]["summary"], "path": n}
                                     for r, n in zip(reports, names, strict=True)],
        "terms": old["terms"] + cal.record()}
    doc["producer"] = producer("galvatron-cost", __version__, "fitted, then calibrated from run-reports")
    doc["notes"] = list(dict.fromkeys(doc.get("notes", []) + _notes(cal, names)))
    return doc


def _notes(cal: Calibration, names: list[str]) -> list[str]:
    changed = sum(t.changed for t in cal.terms.values())
    notes = [f"calibrated from {len(names)} run-report(s) ({', '.join(names)}): {len(cal.terms)} measured terms, "
             f"{changed} changed (calibration.terms); fits.compute keeps the profile's fits, the strategies hold "
             f"the calibrated compute"]
    if cal.skipped:
        notes.append("calibration left out " + "; ".join(f"{n} x {why}" for why, n in cal.skipped.most_common()))
    return notes


__all__ = ["calibrate", "Calibration", "CollectiveFits", "Term", "check_report", "reprice"]
