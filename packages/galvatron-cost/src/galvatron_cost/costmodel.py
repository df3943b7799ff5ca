"""Assemble a cost-model document from a hardware-profile and a model-profile (the package's core).

    from galvatron_cost import fit
    doc = fit(hardware_profile, model_profile, nodes=128, gpus_per_node=8, seq_len=2048)

Every number is per micro-batch of b samples (all dp replicas of a stage together) in ``lin`` form,
fixed + per_sample * b, as the cost-model schema and schemas/README.md ('Linear costs') define. See comm.py
(communication), compute.py (compute fits), memory.py (bytes) and layouts.py (redistribution) for the models; this
module applies them to every pipeline degree, layout and layer strategy of the target cluster.

Tied embeddings (the model's ``tied_embeddings``): with one stage the head uses the embedding's table, so the head
strategy holds no copy (no bytes, no optimizer step) and nothing is summed; the table's gradient is synchronised
once, by the embedding's data-parallel sync. With pp > 1 the last stage holds a copy, initialised equal, in the
head's strategy (its bytes, optimizer step and data-parallel sync), and each iteration one all-reduce sums the
two gradients between local rank j of the first stage and local rank j of the last: it is counted in the
grad_sync_s of both the embedding and the head strategies, since both stages wait for the same collective, with
each end's own shard of the table (the same slice when the two ends share tp, layout and sharding).

Strategy and layout ids are the shared names (galvatron_contracts.names): a layout 'tp2s+sp dp2', a strategy
'decoder tp2s+sp dp2 zero3 rc'.
"""
from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np

from galvatron_contracts.documents import CURRENT_VERSION, DocumentError, UsageError, digest, producer
from galvatron_contracts.limits import MAX_RANKS
from galvatron_contracts.names import DP_SHARDINGS, strategy_name
from galvatron_contracts.pipeline import divisors
from galvatron_contracts.plan import tp_errors
from galvatron_contracts.ranks import stage_ranks

from . import __version__
from .comm import OPS, CommModel, Topology, groups_topology, p2p_topology, wire_factor
from .compute import PHASES, derive_tp, fill_unidentified, fit_layer_phases
from .layouts import Layout, enumerate_layouts, gather_need, group_stride, local_groups, transition_topology
from .memory import (
    DTYPE_BYTES,
    activation_per_sample,
    backward_workspace,
    derive_split,
    model_states,
    numel,
    param_shapes,
    sharded_numel,
)

LAYERS = ("decoder", "embedding", "head")
SHARDINGS = DP_SHARDINGS
ARCH_KEYS = ("family", "layers", "hidden", "heads", "kv_heads", "ffn_hidden", "vocab_size", "max_seq_len",
             "tied_embeddings")
HW, MP = "hardware-profile", "model-profile"
GATHERED_INPUTS = {"decoder": 2, "embedding": 0, "head": 1}   # sequence-gathered inputs saved whole under sp
# galvatron-run's per-step synchronisation over the world (train.py, train_step), bytes each moves: two barriers
# (priced as all-reduces of nothing), the loss (one fp32) and the gradient norm (one fp64)
STEP_SYNC_BYTES = (0, 0, 4, 8)


def _lin(fixed: float, per_sample: float) -> dict:
    return {"fixed_s": float(max(fixed, 0.0)), "per_sample_s": float(max(per_sample, 0.0))}


def _add(*lins: tuple[float, float]) -> tuple[float, float]:
    return sum(x[0] for x in lins), sum(x[1] for x in lins)


def check_model(spec: dict, asked: dict | None, source: str = MP) -> None:
    if asked is None:
        return
    diffs = [f"{k} {spec.get(k)!r} (asked {asked.get(k)!r})" for k in ARCH_KEYS if spec.get(k) != asked.get(k)]
    if diffs:
        raise DocumentError(source, f"$.model: profiled for model {spec['name']!r}, not the asked {asked['name']!r}: "
                                + ", ".join(diffs))


class Builder:
    """Holds the fitted models and the target settings; `document()` evaluates every strategy.

    ``sources``: the names of the two profiles (their files) for the errors, by kind."""

    def __init__(self, hw: dict, mp: dict, *, nodes=None, gpus_per_node=None, seq_len=None, dtype=None,
                 optimizer="adamw", max_tp=None, max_pp=None, runtime_overhead_bytes=None, model=None, sources=None):
        self.hw, self.mp = hw, mp
        names = {HW: HW, MP: MP, **(sources or {})}
        self.hw_source, self.mp_source = names[HW], names[MP]
        self.spec = mp["model"]
        check_model(self.spec, model, self.mp_source)
        self.notes: list[str] = []
        hcl = hw["cluster"]
        self.nodes = int(nodes or hcl["nodes"])
        self.gpn = int(gpus_per_node or hcl["gpus_per_node"])
        if self.nodes < 1 or self.gpn < 1:
            raise UsageError("--nodes and --gpus-per-node must be at least 1")
        self.world = self.nodes * self.gpn
        if self.world > MAX_RANKS:
            raise UsageError(f"the target cluster of {self.nodes} nodes x {self.gpn} ranks = {self.world} ranks: "
                             f"expected at most {MAX_RANKS} ranks (--nodes, --gpus-per-node)")
        self.max_tp = int(max_tp or self.gpn)
        if self.max_tp < 1 or self.max_tp & (self.max_tp - 1):
            raise UsageError(f"--max-tp must be a power of two, got {self.max_tp}")
        self.max_pp = int(max_pp or self.spec["layers"])
        self.optimizer = optimizer
        self.overhead = self._overhead(runtime_overhead_bytes)
        self._check_devices()
        settings = mp["settings"]
        self.dtype = dtype or settings["dtype"]
        if self.dtype != settings["dtype"]:
            raise DocumentError(self.mp_source,
                                f"$.settings.dtype: the model was profiled in {settings['dtype']}, but "
                                f"{self.dtype} training was asked; profile it with --dtype {self.dtype}")
        self.e = DTYPE_BYTES[self.dtype]
        self._index_profile()
        self.seq = int(seq_len or max(settings["seq_lens"]))
        if self.seq > self.spec["max_seq_len"]:
            raise UsageError(f"--seq-len {self.seq} exceeds the model's max_seq_len {self.spec['max_seq_len']}")
        self._check_seq()
        self.comm = CommModel(hw, self.hw_source, self.notes)
        self._compute_fits()
        self._optimizer_fit()
        self.used_coll: OrderedDict[tuple[str, Topology], dict] = OrderedDict()
        self.extrapolated_used = False     # coll() since strategy() reset it: a term rests on an extrapolated fit

    # --- input checks -----------------------------------------------------------------------------------------
    def _overhead(self, asked: int | None) -> int:
        """The runtime overhead per rank: as asked, else the hardware profile's measured one (else 0, noted)."""
        if asked is not None:
            return int(asked)
        measured = self.hw.get("runtime_memory")
        if measured is None:
            self.notes.append("the hardware profile has no runtime_memory (an older galvatron-probe): the runtime "
                              "overhead is counted as 0 bytes")
            return 0
        return int(measured["overhead_bytes"])

    def _check_devices(self):
        a, b = self.hw["cluster"]["device"], self.mp["settings"]["device"]
        if a["type"] != b["type"]:
            raise DocumentError(self.mp_source,
                                f"$.settings.device.type: the model was profiled on {b['type']} but the "
                                f"hardware profile {self.hw_source} is of a {a['type']} cluster")
        if a.get("name") != b.get("name"):
            self.notes.append(f"device names differ: hardware-profile {a.get('name')!r}, "
                              f"model-profile {b.get('name')!r}")

    def _index_profile(self):
        self.entries: dict[str, dict[int, dict]] = {k: {} for k in LAYERS}
        for e in self.mp["layers"]:
            self.entries[e["layer"]][e["tp"]] = e
        for k in LAYERS:
            if 1 not in self.entries[k]:
                raise DocumentError(self.mp_source,
                                    f"$.layers: no {k!r} entry with tp=1; every other TP degree is derived "
                                    f"from it, so the profile must include tp=1")

    def _check_seq(self):
        s = self.seq
        for k in LAYERS:
            for tp, e in self.entries[k].items():
                lens = sorted({r["seq_len"] for r in e["timings"]})
                if s not in lens and len(lens) < 2:
                    raise DocumentError(self.mp_source,
                                        f"$.layers[{k} tp={tp}].timings: seq_len {s} was not profiled "
                                        f"(only {lens}) and one length cannot be extrapolated; profile it "
                                        f"with --seq-len {s} (or several lengths)")
                mlens = sorted({m["seq_len"] for m in e["memory"]})
                if s not in mlens and len(mlens) < 2:
                    raise DocumentError(self.mp_source,
                                        f"$.layers[{k} tp={tp}].memory: seq_len {s} was not profiled "
                                        f"(only {mlens}) and one length cannot be extrapolated")
                if s not in lens or s not in mlens:
                    self.notes.append(f"{k} tp={tp}: seq_len {s} extrapolated from profiled lengths {lens}")

    # --- compute ----------------------------------------------------------------------------------------------
    def _compute_fits(self):
        """Per layer kind and profiled TP degree, the phase fits of the profile's timings; and, where the profile
        (model-profile 1.2) timed the degree with sequence parallelism too, those (``cfits_sp``): the runtime's
        DTensor layer then redistributes a sequence-split activation, which costs per op what the plain one
        does not."""
        self.cfits: dict[str, dict[int, dict]] = {}
        self.cfits_sp: dict[str, dict[int, dict]] = {}
        for k in LAYERS:
            self.cfits[k] = {tp: fit_layer_phases(e) for tp, e in sorted(self.entries[k].items())}
            self.notes += fill_unidentified(self.entries[k], self.cfits[k], k)
            sp = {tp: {**e, "timings": e["sequence_parallel_timings"]} for tp, e in self.entries[k].items()
                  if tp > 1 and self._covers_seq(e.get("sequence_parallel_timings", []))}
            self.cfits_sp[k] = {tp: fit_layer_phases(e) for tp, e in sorted(sp.items())}
            self.notes += fill_unidentified(sp, self.cfits_sp[k], f"{k} (sequence parallel)")

    def _covers_seq(self, timings: list) -> bool:
        """Timings that give this sequence length: profiled at it, or at two lengths or more (extrapolated)."""
        lens = {r["seq_len"] for r in timings}
        return self.seq in lens or len(lens) >= 2

    def compute(self, layer: str, tp: int, sp: bool = False) -> dict:
        """The phase fits of ``layer`` at TP degree ``tp``; with ``sp``, the sequence-parallel timings' where the
        profile has them at this degree (else the plain ones, as profiles before 1.2 give them)."""
        if sp and tp in self.cfits_sp[layer]:
            return self.cfits_sp[layer][tp]
        fits = self.cfits[layer]
        if tp not in fits:
            fits[tp] = derive_tp({t: f for t, f in fits.items() if not next(iter(f.values())).extrapolated}, tp)
        return fits[tp]

    def _optimizer_fit(self):
        """The optimizer step: the document's optimizer_step (the profile's plain fit, fixed_s paid once per step)
        and per holding (``optimizer_seconds``) the seconds per tensor and per parameter a layer's optimizer
        update costs. Holdings: "plain" (tp 1 ddp: plain tensors) and "dtensor" (tp > 1, or zero1 / zero2 /
        zero3: FSDP2's shard), whose every op pays DTensor's dispatch. A 1.0 / 1.1 profile timed plain tensors only and
        folded the per-tensor cost into per_param_s: that one number prices both holdings."""
        o = self.mp.get("optimizer_step")
        if o is None:
            self.optim = {"fixed_s": 0.0, "per_param_s": 0.0, "measured": False}
            self.optim_terms = dict.fromkeys(("plain", "dtensor"), (0.0, 0.0))
            self.notes.append("the model profile has no optimizer_step (an older galvatron-probe); the optimizer "
                              "step is counted as 0 s")
            return
        self.optim = {"fixed_s": float(o["fixed_s"]), "per_param_s": float(o["per_param_s"]), "measured": True,
                      "optimizer": o["optimizer"]}
        plain = (float(o.get("per_tensor_s", 0.0)), float(o["per_param_s"]))
        dt = o.get("dtensor")
        self.optim_terms = {"plain": plain,
                            "dtensor": (float(dt["per_tensor_s"]), float(dt["per_param_s"])) if dt else plain}
        if dt is None:
            self.notes.append("the model profile timed the optimizer over plain tensors only; layers held as "
                              "DTensors (tp > 1, or sharded by FSDP2) are priced as plain ones")
        if o["optimizer"] != self.optimizer:
            self.notes.append(f"optimizer step timed for {o['optimizer']} but {self.optimizer} training was asked; "
                              f"the {o['optimizer']} time is used")

    def optimizer_seconds(self, layer: str, pp: int, shapes: list, params: int, dtensor: bool) -> float:
        """A layer's part of the optimizer step: per_tensor_s * tensors + per_param_s * params of its holding.
        Tensors: the profile's param_tensors of the layer (galvatron_models' modules; with a tied table split over
        stages the head also holds its copy), else one per reference shape in ``shapes``."""
        per_tensor, per_param = self.optim_terms["dtensor" if dtensor else "plain"]
        counts = [e["param_tensors"] for e in self.entries[layer].values() if "param_tensors" in e]
        if counts:
            tensors = counts[0] + (layer == "head" and self.spec["tied_embeddings"] and pp > 1)
        else:
            tensors = len(shapes)
        return per_tensor * tensors + per_param * params

    # --- memory inputs ----------------------------------------------------------------------------------------
    def split(self, layer: str, tp: int, recompute: bool) -> dict:
        key = "recompute_saved_bytes_per_sample" if recompute else "saved_bytes_per_sample"
        e = self.entries[layer].get(tp)
        if e is None:
            return derive_split(self.split(layer, 1, recompute), tp)
        rows = {m["seq_len"]: m for m in e["memory"]}
        if self.seq in rows:
            return dict(rows[self.seq][key])
        s = np.array(sorted(rows), float)                 # bytes(s) = c1 s + c2 s^2, least squares, rounded up
        out = {}
        for part in ("tp_divided", "tp_replicated"):
            y = np.array([rows[int(x)][key][part] for x in s], float)
            c, *_ = np.linalg.lstsq(np.stack([s, s * s], 1), y, rcond=None)
            out[part] = int(math.ceil(max(c[0] * self.seq + c[1] * self.seq ** 2, 0.0)))
        return out

    def workspace_per_sample(self, layer: str, tp: int) -> int:
        e = self.entries[layer].get(tp)
        if e is None:
            return math.ceil(self.workspace_per_sample(layer, 1) / tp)
        rows = {m["seq_len"]: m.get("workspace_bytes_per_sample", 0) for m in e["memory"]}
        if self.seq in rows:
            return int(rows[self.seq])
        s0 = min(rows, key=lambda x: abs(x - self.seq))
        return int(math.ceil(rows[s0] * (self.seq / s0) ** 2))   # conservative: attention scores grow as s^2

    def shapes(self, layer: str, tp: int, lm_head: bool = True):
        """(divided, replicated) tensor shapes of the shard, checked against the profile's parameter count."""
        div, rep = param_shapes(self.spec, layer, tp, lm_head)
        e = self.entries[layer].get(tp)
        if e is not None:
            full_div, _ = param_shapes(self.spec, layer, tp, True)
            counts = {numel(div) + numel(rep), numel(full_div) + numel(rep)}
            if layer == "head" and self.spec["tied_embeddings"]:
                counts.add(numel(rep))                    # a probe may leave the shared table out of the head
            if e["param_count"] not in counts:
                note = (f"{layer} tp={tp}: profiled {e['param_count']} parameters but the reference shapes hold "
                        f"{numel(div) + numel(rep)}; padding counted on one flat tensor of the profiled count")
                if note not in self.notes:
                    self.notes.append(note)
                rep_n = e["param_count_tp_replicated"]
                div_n = e["param_count"] - rep_n if lm_head or layer != "head" else 0
                return ([(div_n, div_n)] if div_n else []), ([(rep_n, rep_n)] if rep_n else [])
        return div, rep

    # --- communication ----------------------------------------------------------------------------------------
    def coll(self, op: str, topos, layout: str, stride: int | None, what: str) -> tuple[float, float]:
        """(alpha_s, seconds per wire byte) of `op`, the worst over the given topologies; recorded for `fits`."""
        alpha, per_byte = 0.0, 0.0
        for topo in set(topos):
            if topo.n < 2:
                continue
            used = self.used_coll.get((op, topo))
            if used is None:
                ab, extrap, method = self.comm.collective(op, topo, what)
                used = self.used_coll[(op, topo)] = {"ab": ab, "extrapolated": extrap, "method": method,
                                                     "layout": layout, "stride": stride}
            ab = used["ab"]
            self.extrapolated_used |= used["extrapolated"]
            alpha, per_byte = max(alpha, ab.alpha_s), max(per_byte, ab.per_byte_s())
        return alpha, per_byte

    def op_lin(self, op: str, topos, n: int, msg_per_sample: float, msg_fixed: float, layout, stride, what,
               count: int = 1) -> tuple[float, float]:
        """count x `op` over a group of n moving msg_fixed + msg_per_sample * b bytes: (fixed_s, per_sample_s)."""
        if n < 2 or count == 0:
            return 0.0, 0.0
        alpha, per_byte = self.coll(op, topos, layout, stride, what)
        w = wire_factor(op, n)
        return count * (alpha + w * msg_fixed * per_byte), count * w * msg_per_sample * per_byte

    # --- pipelines --------------------------------------------------------------------------------------------
    def tp_allowed(self, t: int) -> bool:
        """A tp every layer kind can split (a plan's rule: galvatron_contracts.plan.tp_errors)."""
        return not any(tp_errors("tp", layer, t, self.spec) for layer in ("decoder", "embedding"))

    def pipeline(self, pp: int) -> dict:
        S = self.world // pp
        G = self.gpn
        firsts = [stage_ranks(self.world, pp, k)[0] for k in range(pp)]     # each stage's first global rank
        offsets = sorted({r % G for r in firsts})                          # the topologies depend on r mod G
        layouts = [lay for lay in enumerate_layouts(S, self.max_tp, self.tp_allowed)
                   if not lay.sp or self.seq % lay.tp == 0]           # sp splits the sequence over tp
        where = f" (pp={pp}, {S} ranks per stage on {self.nodes}x{G})"
        topo_cache: dict = {}

        def topos(lay: Layout, which: str):
            key = (lay.tp, lay.tp_layout, which)
            if key not in topo_cache:
                g = local_groups(S, lay, which)
                topo_cache[key] = [groups_topology(off + g, G) for off in offsets]
            return topo_cache[key]

        act = self.seq * self.spec["hidden"] * self.e            # activation bytes per sample
        # p2p between stages
        p2p_ab = None
        if pp > 1:
            bounds = sorted({r % G for r in firsts[:-1]})
            worst = None
            for off in bounds:
                topo = p2p_topology(off + np.arange(S), S, G)
                ab, extrap, method = self.comm.p2p(topo, where, S if self.gpn == self.comm.profile_gpn else None)
                if worst is None or (ab.per_byte_s(), ab.alpha_s) > (worst[0].per_byte_s(), worst[0].alpha_s):
                    worst = (ab, extrap, method, topo)
            p2p_ab = worst
        layout_docs = []
        for lay in layouts:
            if p2p_ab is None:
                p2p = _lin(0.0, 0.0)
            else:
                ab = p2p_ab[0]
                p2p = _lin(ab.alpha_s, act / (lay.dp * (lay.tp if lay.sp else 1)) * ab.per_byte_s())
            layout_docs.append({"id": lay.id, "tp": lay.tp, "tp_layout": lay.tp_layout, "sp": lay.sp,
                                "dp": lay.dp, "p2p": p2p,
                                "p2p_bytes_per_sample": act / (lay.dp * (lay.tp if lay.sp else 1))})
        transitions, need_cache = [], {}
        for a in layouts:
            for b in layouts:
                if a == b:
                    continue
                fw, bw = (0.0, 0.0), (0.0, 0.0)
                for off in offsets:
                    for direction, (src, dst) in (("f", (a, b)), ("b", (b, a))):
                        if (src, dst, off) not in need_cache:
                            recv, srcs, nn, cross = gather_need(S, src, dst, off, G)
                            vol = float(recv.max())
                            topo = transition_topology(recv, srcs, nn, cross, off, G) if vol > 0 else None
                            need_cache[(src, dst, off)] = (vol, topo)
                        vol, topo = need_cache[(src, dst, off)]
                        if topo is None:
                            continue
                        alpha, per_byte = self.coll("all_gather", [topo], "strided" if topo.crosses else
                                                    "consecutive", None, where)
                        cost = (alpha, vol * act * per_byte)
                        if direction == "f":
                            fw = (max(fw[0], cost[0]), max(fw[1], cost[1]))
                        else:
                            bw = (max(bw[0], cost[0]), max(bw[1], cost[1]))
                transitions.append({"from": a.id, "to": b.id, "forward": _lin(*fw), "backward": _lin(*bw)})
        strategies = []
        for lay in layouts:
            for layer in LAYERS:
                for sharding in (SHARDINGS if lay.dp > 1 else ("ddp",)):
                    for rc in ((False,) if layer == "embedding" else (False, True)):
                        strategies.append(self.strategy(pp, S, lay, layer, sharding, rc, topos, where))
        return {"pp": pp, "stage_ranks": S, "layouts": layout_docs, "transitions": transitions,
                "strategies": strategies}, p2p_ab

    def strategy(self, pp, S, lay: Layout, layer, sharding, rc, topos, where) -> dict:
        """One strategy's time and memory. Only decoder layers are recomputed (Block.recompute, in the probe and the
        runtime alike): the head's rc strategy is priced as its plain one, kept so that plans that say it stay
        valid, and equal numbers let the search drop it as a duplicate of the plain one."""
        self.extrapolated_used = False
        rc_asked, rc = rc, rc and layer == "decoder"
        t, d, sp, s, h, e = lay.tp, lay.dp, lay.sp, self.seq, self.spec["hidden"], self.e
        fits = self.compute(layer, t, sp)
        fwd = fits["forward"].lin(s, d)
        bwd = fits["backward_recompute" if rc else "backward"].lin(s, d)
        # tensor/sequence-parallel communication over the tp group
        tp_t, tp_stride = topos(lay, "tp"), group_stride(lay, "tp")
        tpl = "consecutive" if tp_stride == 1 else "strided"
        msg = s * h * e / d                                  # activation bytes per sample on one rank
        zero = (0.0, 0.0)

        def tpop(op, m=msg, count=1):
            return self.op_lin(op, tp_t, t, m, 0.0, tpl, tp_stride, where, count)

        if t == 1:
            fcomm = bcomm = zero
        elif layer == "decoder":
            # Megatron: 2 all-reduces (after attention, after the MLP); with sp each becomes a reduce-scatter and
            # the next block's all-gather: 2 + 2 of the same buffer, the same wire bytes, twice the latencies
            fcomm = (_add(tpop("all_gather", count=2), tpop("reduce_scatter", count=2)) if sp
                     else tpop("all_reduce", count=2))
            bcomm = fcomm
        elif layer == "embedding":
            fcomm = tpop("reduce_scatter") if sp else tpop("all_reduce")
            bcomm = tpop("all_gather") if sp else zero
        else:   # head: vocab-parallel LM head and loss (3 fp32 reductions per token: max, target logit, sum-exp)
            loss = tpop("all_reduce", m=s * 4 / d, count=3)
            fcomm = _add(tpop("all_gather"), loss) if sp else loss
            bcomm = tpop("reduce_scatter") if sp else tpop("all_reduce")
        if rc:
            bcomm = _add(bcomm, fcomm)
        # data-parallel communication over the dp group
        tied = self.spec["tied_embeddings"]
        lm_head = not (layer == "head" and tied and pp == 1)
        div, rep = self.shapes(layer, t, lm_head)
        if layer == "head" and tied and pp > 1 and not div:
            div = self.shapes("embedding", t)[0]             # the last stage's copy of the shared table
        tensors = div + rep
        P, P_d = numel(tensors), sharded_numel(tensors, d)
        dp_t, dp_stride = topos(lay, "dp"), group_stride(lay, "dp")
        dpl = "consecutive" if dp_stride == 1 else "strided"

        def dpop(op, nbytes):
            return self.op_lin(op, dp_t, d, 0.0, nbytes, dpl, dp_stride, where)[0]

        gather_f = gather_b = reduce_mb = sync = 0.0
        if d > 1:
            if sharding == "ddp":
                sync = dpop("all_reduce", 4 * P)
            elif sharding == "zero1":      # once per iteration: the accumulated gradients, the updated parameters
                sync = dpop("reduce_scatter", 4 * P_d * d) + dpop("all_gather", e * P_d * d)
            else:
                reduce_mb = dpop("reduce_scatter", 4 * P_d * d)
                gather_f = dpop("all_gather", e * P_d * d)
                if sharding == "zero3":
                    gather_b = gather_f
        if tied and pp > 1 and layer != "decoder":     # the tied table's one all-reduce; both ends wait for it
            sync += self.tied_sum(pp, numel(div) if sharding == "ddp" else sharded_numel(div, d), where)
        states = model_states(P, P_d, sharding, self.dtype, self.optimizer)
        optim_s = self.optimizer_seconds(layer, pp, tensors, P if sharding == "ddp" else P_d,   # what it updates
                                         dtensor=t > 1 or sharding != "ddp")
        full = self.split(layer, t, False)
        gathered = GATHERED_INPUTS[layer] * s * h * e       # saved whole under sp (see memory.py)
        act = activation_per_sample(self.split(layer, t, True), t, sp, d) if rc else \
            activation_per_sample(full, t, sp, d, gathered)
        ws = self.workspace_per_sample(layer, t) / d
        if rc:
            ws += max(activation_per_sample(full, t, sp, d, gathered) - act, 0.0)
        name = strategy_name({"tp": t, "tp_layout": lay.tp_layout, "sp": sp, "dp": d, "dp_sharding": sharding,
                              "recompute": rc_asked})
        return {
            "id": f"{layer} {name}", "layer": layer, "layout": lay.id, "dp_sharding": sharding,
            "recompute": rc_asked,
            **({"extrapolated": True} if self.extrapolated_used else {}),
            "time": {"forward": _lin(*fwd), "backward": _lin(*bwd), "forward_comm": _lin(*fcomm),
                     "backward_comm": _lin(*bcomm), "param_gather_forward_s": float(gather_f),
                     "param_gather_backward_s": float(gather_b), "grad_reduce_per_microbatch_s": float(reduce_mb),
                     "grad_sync_s": float(sync), "optimizer_step_s": float(optim_s)},
            "memory": {"param_bytes": int(states["param_bytes"]), "grad_bytes": int(states["grad_bytes"]),
                       "optimizer_bytes": int(states["optimizer_bytes"]),
                       "activation": {"fixed_bytes": 0, "per_sample_bytes": float(act)},
                       "workspace": {"fixed_bytes": int(backward_workspace(P, P_d, sharding, self.dtype,
                                                                       self.hw["cluster"]["backend"])),
                                     "per_sample_bytes": float(ws)}},
        }

    def tied_sum(self, pp: int, n: int, where: str) -> float:
        """Seconds of the all-reduce that sums a tied table's fp32 gradient (n elements per rank) between local rank
        j of the first stage and local rank j of the last, every pair at once (see the module docstring)."""
        pairs = np.stack([stage_ranks(self.world, pp, 0), stage_ranks(self.world, pp, pp - 1)], axis=1)
        alpha, per_byte = self.coll("all_reduce", [groups_topology(pairs, self.gpn)], "strided",
                                    int(pairs[0, 1] - pairs[0, 0]), where)
        return alpha + wire_factor("all_reduce", 2) * 4 * n * per_byte

    # --- the document -----------------------------------------------------------------------------------------
    def step_overhead(self) -> float:
        """Seconds of the runtime's per-step synchronisation over the world (STEP_SYNC_BYTES): each a latency-bound
        all_reduce over all ranks at once, alpha plus its few bytes on the wire; 0 on one rank."""
        if self.world < 2:
            return 0.0
        world = groups_topology(np.arange(self.world)[None, :], self.gpn)
        alpha, per_byte = self.coll("all_reduce", [world], "consecutive", 1, " (the per-step sync over the world)")
        return sum(alpha + wire_factor("all_reduce", self.world) * n * per_byte for n in STEP_SYNC_BYTES)

    def document(self) -> dict:
        pps = [p for p in divisors(self.world) if p <= self.max_pp]
        pipelines, p2p_fits = [], []
        for pp in pps:
            doc, p2p = self.pipeline(pp)
            if p2p is not None and p2p[1]:
                doc["extrapolated_p2p"] = True
            pipelines.append(doc)
            if p2p is not None:
                ab, extrap, method, topo = p2p
                entry = {"pp_degree": pp, "crosses_nodes": topo.crosses, "alpha_s": ab.alpha_s,
                         "bandwidth_gbps": ab.bandwidth_gbps, "extrapolated": extrap, "method": method}
                if not extrap:
                    q = self.comm.p2p_by_distance.get((topo, self.world // pp), (None, None))[1] or next(
                        (q for _, t, a, q in self.comm.p2p_probed if t == topo), None)
                    if q:
                        entry["quality"] = q
                p2p_fits.append(entry)
        step_overhead = self.step_overhead()       # before the fits are listed: it may use an extrapolated one
        hcl = self.hw["cluster"]
        probed_on = f"{hcl['nodes']}x{hcl['gpus_per_node']}"
        colls = []
        for f in self.comm.probed:
            colls.append({"op": f.op, "group_size": f.topo.n, "layout": f.layout, "crosses_nodes": f.topo.crosses,
                          "alpha_s": f.ab.alpha_s, "bandwidth_gbps": f.ab.bandwidth_gbps, "extrapolated": False,
                          "method": f"{f.method}; probed on {probed_on}",
                          "quality": f.quality, "stride": f.stride, "nodes_spanned": f.topo.nodes,
                          "ranks_per_node": f.topo.per_node, "groups_per_node": f.topo.sharing})
        for (op, topo), u in self.used_coll.items():
            if not u["extrapolated"]:
                continue
            entry = {"op": op, "group_size": topo.n, "layout": u["layout"], "crosses_nodes": topo.crosses,
                     "alpha_s": u["ab"].alpha_s, "bandwidth_gbps": u["ab"].bandwidth_gbps, "extrapolated": True,
                     "method": u["method"], "nodes_spanned": topo.nodes, "ranks_per_node": topo.per_node,
                     "groups_per_node": topo.sharing}
            if u["stride"] is not None:
                entry["stride"] = int(u["stride"])
            colls.append(entry)
        compute = []
        for layer in LAYERS:
            for tp, fits in sorted(self.cfits[layer].items()):
                for ph in PHASES:
                    f = fits[ph]
                    c = {"layer": layer, "tp": tp, "phase": ph, "fixed_s": f.fixed_s, "per_token_s": f.per_token_s,
                         "per_token_seq_s": f.per_token_seq_s, "extrapolated": f.extrapolated}
                    if f.quality:
                        c["quality"] = f.quality
                    compute.append(c)
        for layer in LAYERS:
            for tp in sorted(self.cfits[layer]):
                if tp not in self.entries[layer]:
                    note = next(iter(self.cfits[layer][tp].values())).note
                    self.notes.append(f"{layer} tp={tp}: compute {note}; memory from the tp=1 split "
                                      f"(tp_divided/{tp}, tp_replicated whole)")
        ov = self.hw.get("overlap")
        overlap = ({"compute_slowdown": ov["compute_slowdown"], "comm_slowdown": ov["comm_slowdown"],
                    "measured": True} if ov else {"compute_slowdown": 1.0, "comm_slowdown": 1.0, "measured": False})
        cluster = {"nodes": self.nodes, "gpus_per_node": self.gpn, "world_size": self.world,
                   "device": dict(hcl["device"]), "backend": hcl["backend"]}
        if (self.nodes, self.gpn) != (hcl["nodes"], hcl["gpus_per_node"]):
            self.notes.append(f"target cluster {self.nodes}x{self.gpn} extrapolated from the profiled {probed_on}")
        if self.max_pp < self.world and self.max_pp == self.spec["layers"]:
            self.notes.append(f"pipeline degrees capped at {self.max_pp} (one decoder layer per stage at least)")
        doc = {
            "kind": "cost-model", "schema_version": CURRENT_VERSION["cost-model"],
            "producer": producer("galvatron-cost", __version__),
            "inputs": [{"kind": d["kind"], "sha256": digest(d), "producer": d["producer"]} for d in (self.hw, self.mp)],
            "model": self.spec,
            "cluster": cluster,
            "training": {"seq_len": self.seq, "dtype": self.dtype, "optimizer": self.optimizer,
                         "runtime_overhead_bytes": self.overhead},
            "optimizer_step": dict(self.optim),
            "overlap": overlap,
            "fits": {"collectives": colls, "p2p": p2p_fits, "compute": compute},
            "pipelines": pipelines,
            "step_overhead_s": float(step_overhead),
        }
        if self.notes:
            doc["notes"] = list(dict.fromkeys(self.notes))
        return doc


def fit(hardware_profile: dict, model_profile: dict, **settings) -> dict:
    """The cost-model document (a dict) of the two profiles for the target cluster and training settings.

    settings: nodes, gpus_per_node (default: the profiled cluster), seq_len (default: the longest profiled),
    dtype (default: the profile's), optimizer ('adamw'), max_tp (default: gpus_per_node), max_pp (default: the
    model's layers), runtime_overhead_bytes (default: the hardware profile's runtime_memory, else 0), model (a
    model spec to check the profile against), sources (the profiles' file names by kind, for the errors)."""
    return Builder(hardware_profile, model_profile, **settings).document()


__all__ = ["fit", "Builder", "OPS"]
