"""The cost model as numpy arrays, and the per-layer composition every other module shares.

A cost-model document (schemas/cost-model) gives, per pipeline degree, the layouts, the layout-change costs and
every candidate strategy of every layer kind as `lin` numbers (fixed + per_sample * b). This module turns one
pipeline entry into arrays (one row per strategy) and evaluates them for a micro-batch size b:

    tables = CostTables(cost_model)
    pipe = tables.pipeline(4)                    # the pp=4 entry
    lc = layer_costs(pipe.kinds["decoder"], b=8, tables.overlap)
    lc.t                                          # forward + backward seconds per micro-batch, per strategy

Overlap of compute and communication (`overlap(c, k)`): both start together, compute runs `compute_slowdown`
times slower and communication `comm_slowdown` times slower while the other is running; whichever finishes first
lets the other continue at full speed. With factors of 1 this is max(c, k); with k = 0 it is c.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from galvatron_contracts.names import DP_SHARDINGS
from galvatron_contracts.ranks import canonical_layout

SHARDINGS = DP_SHARDINGS
KINDS = ("embedding", "decoder", "head")


def overlap(c, k, cs: float, ks: float):
    """Wall time of compute c overlapped with communication k (elementwise; factors clamped to >= 1)."""
    c = np.asarray(c, dtype=float)
    k = np.asarray(k, dtype=float)
    comm_first = k * ks <= c * cs
    return np.where(comm_first, c + k * ks * (1.0 - 1.0 / cs), k + c * cs * (1.0 - 1.0 / ks))


def _lin(objs, a: str, b: str) -> np.ndarray:
    return np.array([[o[a] for o in objs], [o[b] for o in objs]], dtype=float)


@dataclass
class KindTable:
    """Strategies of one layer kind in one pipeline entry; arrays are indexed by strategy row."""

    ids: list[str]
    entries: list[dict]
    layout: np.ndarray          # int, index into PipelineTable.layouts
    dp: np.ndarray
    sharding: np.ndarray        # int, index into SHARDINGS
    recompute: np.ndarray       # bool
    fwd: np.ndarray             # (2, n): fixed_s, per_sample_s
    bwd: np.ndarray
    fwd_comm: np.ndarray
    bwd_comm: np.ndarray
    gather_fwd: np.ndarray      # (n,) seconds per micro-batch
    gather_bwd: np.ndarray
    reduce_mb: np.ndarray
    sync: np.ndarray            # per iteration (ddp's all-reduce; zero1's reduce-scatter + all-gather)
    opt: np.ndarray             # per iteration: optimizer step on the parameters the layer's rank holds
    params: np.ndarray          # bytes
    grads: np.ndarray
    optim: np.ndarray
    act: np.ndarray             # (2, n): fixed_bytes, per_sample_bytes
    ws: np.ndarray

    @property
    def states(self) -> np.ndarray:
        return self.params + self.grads + self.optim

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class PipelineTable:
    pp: int
    stage_ranks: int
    layouts: list[dict]
    tp: np.ndarray
    ldp: np.ndarray
    p2p: np.ndarray             # (2, L)
    trf: np.ndarray             # (2, L, L): fixed, per-sample of the forward redistribution from -> to
    trb: np.ndarray             # the same, backward
    p2p_bytes: np.ndarray       # (L,) bytes per sample of one p2p message (one pipelining receive buffer)

    @property
    def tr(self) -> np.ndarray:
        return self.trf + self.trb
    kinds: dict[str, KindTable] = field(default_factory=dict)
    layout_index: dict[tuple, int] = field(default_factory=dict)   # (tp, tp_layout, sp, dp) -> index
    strategy_index: dict[tuple, int] = field(default_factory=dict)  # (kind, layout, sharding, recompute) -> row


class CostTables:
    """Every pipeline entry of a cost model as arrays, built once.

    The cost model is one a reader validated (galvatron_contracts.documents: its layouts, transitions and
    strategies consistent); ``source`` names it in messages."""

    def __init__(self, cost_model: dict, source: str = "cost model"):
        self.doc = cost_model
        self.source = source
        o = cost_model["overlap"]
        self.cs = max(1.0, float(o["compute_slowdown"]))
        self.ks = max(1.0, float(o["comm_slowdown"]))
        self.overhead = float(cost_model["training"].get("runtime_overhead_bytes", 0))
        # the optimizer step's fixed part, once per stage and iteration (older documents: none)
        self.optim_fixed = float(cost_model.get("optimizer_step", {}).get("fixed_s", 0.0))
        self.layers = int(cost_model["model"]["layers"])
        self.tied = bool(cost_model["model"]["tied_embeddings"])
        self.world = int(cost_model["cluster"]["world_size"])
        self.gpus_per_node = int(cost_model["cluster"]["gpus_per_node"])
        self.pipes: dict[int, PipelineTable] = {}
        self._cache: dict = {}
        for entry in cost_model["pipelines"]:
            self.pipes[int(entry["pp"])] = self._build(entry)

    def pipeline(self, pp: int) -> PipelineTable:
        return self.pipes[pp]

    def at(self, pp: int, b: int) -> tuple[dict, np.ndarray, np.ndarray, np.ndarray]:
        """(layer costs per kind, forward and backward layout-change seconds, p2p seconds) at micro-batch b."""
        key = (pp, b)
        if key not in self._cache:
            pipe = self.pipes[pp]
            lcs = {kind: layer_costs(pipe.kinds[kind], b, self.cs, self.ks) for kind in pipe.kinds}
            self._cache[key] = (lcs, lin(pipe.trf, b), lin(pipe.trb, b), lin(pipe.p2p, b))
        return self._cache[key]

    def _build(self, entry: dict) -> PipelineTable:
        S = int(entry["stage_ranks"])
        layouts = entry["layouts"]
        lid = {lay["id"]: i for i, lay in enumerate(layouts)}
        n = len(layouts)
        trf, trb = np.zeros((2, n, n)), np.zeros((2, n, n))
        for t in entry["transitions"]:
            i, j = lid[t["from"]], lid[t["to"]]
            if i != j:
                trf[:, i, j] = t["forward"]["fixed_s"], t["forward"]["per_sample_s"]
                trb[:, i, j] = t["backward"]["fixed_s"], t["backward"]["per_sample_s"]
        pipe = PipelineTable(
            pp=int(entry["pp"]), stage_ranks=S, layouts=layouts,
            tp=np.array([lay["tp"] for lay in layouts]), ldp=np.array([lay["dp"] for lay in layouts]),
            p2p=_lin([lay["p2p"] for lay in layouts], "fixed_s", "per_sample_s"), trf=trf, trb=trb,
            p2p_bytes=np.array([float(lay.get("p2p_bytes_per_sample", 0.0)) for lay in layouts]))
        for i, lay in enumerate(layouts):
            key = (lay["tp"], canonical_layout(lay["tp"], lay["tp_layout"], S), bool(lay["sp"]), lay["dp"])
            pipe.layout_index.setdefault(key, i)
        for kind in KINDS:
            rows = [s for s in entry["strategies"] if s["layer"] == kind]
            tm = [s["time"] for s in rows]
            mem = [s["memory"] for s in rows]
            table = KindTable(
                ids=[s["id"] for s in rows], entries=rows,
                layout=np.array([lid[s["layout"]] for s in rows]),
                dp=np.array([layouts[lid[s["layout"]]]["dp"] for s in rows]),
                sharding=np.array([SHARDINGS.index(s["dp_sharding"]) for s in rows]),
                recompute=np.array([bool(s["recompute"]) for s in rows]),
                fwd=_lin([t["forward"] for t in tm], "fixed_s", "per_sample_s"),
                bwd=_lin([t["backward"] for t in tm], "fixed_s", "per_sample_s"),
                fwd_comm=_lin([t["forward_comm"] for t in tm], "fixed_s", "per_sample_s"),
                bwd_comm=_lin([t["backward_comm"] for t in tm], "fixed_s", "per_sample_s"),
                gather_fwd=np.array([t["param_gather_forward_s"] for t in tm], dtype=float),
                gather_bwd=np.array([t["param_gather_backward_s"] for t in tm], dtype=float),
                reduce_mb=np.array([t["grad_reduce_per_microbatch_s"] for t in tm], dtype=float),
                sync=np.array([t["grad_sync_s"] for t in tm], dtype=float),
                opt=np.array([t.get("optimizer_step_s", 0.0) for t in tm], dtype=float),
                params=np.array([m["param_bytes"] for m in mem], dtype=float),
                grads=np.array([m["grad_bytes"] for m in mem], dtype=float),
                optim=np.array([m["optimizer_bytes"] for m in mem], dtype=float),
                act=_lin([m["activation"] for m in mem], "fixed_bytes", "per_sample_bytes"),
                ws=_lin([m["workspace"] for m in mem], "fixed_bytes", "per_sample_bytes"),
            )
            pipe.kinds[kind] = table
            for r, s in enumerate(rows):
                pipe.strategy_index.setdefault((kind, lid[s["layout"]], s["dp_sharding"], bool(s["recompute"])), r)
        return pipe


def lin(x: np.ndarray, b: float) -> np.ndarray:
    return x[0] + x[1] * b


@dataclass
class LayerCosts:
    """Per strategy, for one micro-batch size: seconds per micro-batch and bytes."""

    fwd: np.ndarray        # compute
    bwd: np.ndarray
    comm: np.ndarray       # tp/sp communication on the critical path, forward + backward
    exposed: np.ndarray    # zero3 gathers and per-micro-batch gradient reduction not hidden by compute
    t: np.ndarray          # forward + backward per micro-batch (the sum of the four above)
    f: np.ndarray          # forward part of t
    g: np.ndarray          # backward part of t
    sync: np.ndarray       # exposed once-per-iteration gradient synchronisation (last micro-batch)
    opt: np.ndarray        # once-per-iteration optimizer step, the per-parameter part (after the sync)
    states: np.ndarray     # params + grads + optimizer bytes
    act: np.ndarray        # activation bytes per micro-batch in flight
    ws: np.ndarray         # workspace bytes


def layer_costs(k: KindTable, b: float, cs: float, ks: float) -> LayerCosts:
    """Compose one layer's numbers: zero3 gathers overlap its compute, gradient reduce-scatter overlaps its
    backward, and the once-per-iteration synchronisation (ddp's all-reduce; zero1's reduce-scatter and the gather
    of the updated parameters) overlaps its backward of the last micro-batch."""
    F, B = lin(k.fwd, b), lin(k.bwd, b)
    fc, bc = lin(k.fwd_comm, b), lin(k.bwd_comm, b)
    f_ov = overlap(F, k.gather_fwd, cs, ks)
    b_ov = overlap(B, k.gather_bwd + k.reduce_mb, cs, ks)
    f = f_ov + fc
    g = b_ov + bc
    sync = overlap(g, k.sync, cs, ks) - g
    return LayerCosts(fwd=F, bwd=B, comm=fc + bc, exposed=(f_ov - F) + (b_ov - B), t=f + g, f=f, g=g,
                      sync=sync, opt=k.opt, states=k.states, act=lin(k.act, b), ws=lin(k.ws, b))


def receive_buffers(pipe: PipelineTable, b: int, m: int) -> np.ndarray:
    """Bytes per layout of the receive buffers torch.distributed.pipelining keeps for one direction of a stage
    boundary: one message of b samples per micro-batch, allocated once and kept between steps."""
    return m * b * pipe.p2p_bytes


def layer_memory(states, act, inflight: int):
    """Bytes one layer adds to a stage (model states + activations of the micro-batches in flight)."""
    return states + inflight * act


def units(mem, budget_units: int, avail: float):
    """Conservative quantisation: a layer's bytes in units of avail / budget_units, rounded up."""
    return np.ceil(np.asarray(mem, dtype=float) * budget_units / avail)
