"""The optimiser: pipeline degree, layer partition, per-layer strategies, micro-batching and schedule.

For a fixed global batch B, every (pp, micro-batch size b, schedule) is one sub-problem; K = m + pp - 1.

1. Per-layer costs (`costs.layer_costs`): c_s = K * t_s + sync_s + opt_s for every strategy s; memory per layer
   states_s + inflight * act_s. Strategies dominated in (cost + worst layout-change penalty, states, activations,
   workspace) are dropped (exact).
2. Stage DP, per stage i (stages only differ in in-flight micro-batches and in holding the embedding or head):
   state = (entry layout e, workspace cap w, layout of the last layer, memory units used) -> least stage cost.
   One step adds one decoder layer: min over the previous layout (+ layout change) then over strategies of the
   new layout (shift by the strategy's memory units). The embedding starts stage 0 and the head ends the last
   stage inside the same DP (its choice is a state, never a re-run). Memory is counted in U units of
   (budget - overhead) / U, each layer rounded up, so the DP costs O(U), not O(budget). The workspace is a max,
   not a sum: every distinct workspace size w (in units) is a slice of the state, holding only strategies whose
   workspace is at most w and leaving U - w units for the layers.
   After n layers it records R_i[n, e, x], the least stage cost with n decoder layers, entry e and exit x. The
   pipelining receive buffers of a stage boundary (m messages, in the layout of the layer before it) are units
   held from the start (the entry's) or reserved at the end (the exit's, for the gradients coming back).
   Each step works one previous layout and one strategy at a time on shifted slices (`_relayout`, `_add_layer`),
   so no (layout x layout) or (strategy x units) temporary is built. The plan is read back by rerunning each
   chosen stage on its one entry layout or tied class (the state's slices never mix) while keeping, per layer,
   only the choices that reached each state's minimum, as int8/int16 records, not the layer's float table.
3. Partition DP: H_i[k, x] = min over n, e of max(H_{i-1}[k - n, e], R_i[n, e, x]) (the iteration time is the
   largest stage cost c_i = K t_i + x_i). The optimizer step's fixed part and the step overhead (F) are the same
   in every stage of every plan, so the DPs leave them out and the sub-problem results are compared as DP value + F.
4. Branch and bound over (pp, b, schedule): a lower bound (sum of the cheapest layer costs over pp) orders and
   prunes the sub-problems, and the incumbent bounds the layers a stage can hold (n * cheapest layer < best).
   The first incumbent is the best uniform plan (the Megatron-style baseline, itself in the space).

Complexity per sub-problem: O(sum_i n_i * E * W * (A^2 + S) * U) with A active layouts, S strategies, W
workspace caps, E entry layouts, n_i <= layers a stage can hold under the bound.
"""
from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass, field

import numpy as np

from galvatron_contracts.pipeline import divisors, even_split, in_flight

from .costs import SHARDINGS, CostTables, layer_memory, lin, receive_buffers, units
from .errors import GalvatronError, InfeasibleError, UsageError
from .evaluate import Spec, evaluate_spec, step_overhead

INF = np.inf
REL = 1e-9
# The share of the budget the command line and the API keep free by default for what the memory model cannot
# know (--memory-margin): the accuracy harness's worst under-prediction on this machine once every byte it could
# attribute was modelled was 3.6 % (integration_tests/bench/results/, 2026-12-02: a pipelined plan's stage),
# rounded up. (zero3 + recompute "growing with the micro-batch count" was the runtime counting gloo's freed
# reduce-scatter clones, fixed in its measurement.) The core (Options) is exact: its default is no margin.
DEFAULT_MEMORY_MARGIN = 0.05


@dataclass
class Options:
    memory_bytes: float
    global_batch: int | None = None
    min_global_batch: int | None = None
    max_global_batch: int | None = None
    max_tp: int | None = None
    max_pp: int | None = None
    pp: tuple[int, ...] | None = None          # restrict to these degrees (baselines)
    tp: tuple[int, ...] | None = None
    tp_layouts: tuple[str, ...] = ("consecutive", "strided")
    recompute: bool = True
    dp_only: bool = False
    shardings: tuple[str, ...] = SHARDINGS
    uniform: bool = False
    schedules: tuple[str, ...] = ("1f1b", "gpipe")
    buckets: int = 256
    memory_margin: float = 0.0                 # share of memory_bytes kept free; plans fit in the rest

    @property
    def usable_bytes(self) -> float:
        """What the plans must fit in: the budget less the margin."""
        return self.memory_bytes * (1.0 - self.memory_margin)

    def as_dict(self) -> dict:
        out = {k: v for k, v in self.__dict__.items() if v is not None}
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}


def allowed(tables: CostTables, pipe, kind: str, opts: Options, b: int) -> np.ndarray:
    k = pipe.kinds[kind]
    tp = pipe.tp[k.layout]
    ok = (b % k.dp == 0)
    if opts.max_tp is not None:
        ok &= tp <= opts.max_tp
    if opts.tp is not None:
        ok &= np.isin(tp, opts.tp)
    if opts.dp_only:
        ok &= tp == 1
    if not opts.recompute:
        ok &= ~k.recompute
    ok &= np.isin(k.sharding, [SHARDINGS.index(s) for s in opts.shardings])
    lay_ok = np.array([(l["tp"] in (1, pipe.stage_ranks)) or l["tp_layout"] in opts.tp_layouts
                       for l in pipe.layouts])
    ok &= lay_ok[k.layout]
    return ok


def global_batches(tables: CostTables, opts: Options) -> list[int]:
    if opts.global_batch is not None:
        return [opts.global_batch]
    lo = opts.min_global_batch or tables.world
    hi = opts.max_global_batch or 8 * tables.world
    if lo > hi:
        raise UsageError(f"--min-global-batch {lo} is above --max-global-batch {hi}")
    out = [2 ** k for k in range(0, 40) if lo <= 2 ** k <= hi]
    return out or [lo]


@dataclass
class Kind:
    """One layer kind's allowed strategies for a sub-problem, as the DP uses them."""

    rows: np.ndarray
    layout: np.ndarray
    c: np.ndarray
    states: np.ndarray
    act: np.ndarray
    ws: np.ndarray
    cls: np.ndarray | None = None    # tied embedding class (layout, sharding) for pp == 1

    def take(self, keep: np.ndarray) -> Kind:
        return Kind(self.rows[keep], self.layout[keep], self.c[keep], self.states[keep], self.act[keep],
                    self.ws[keep], None if self.cls is None else self.cls[keep])


@dataclass
class Sub:
    """A (pp, b) sub-problem's prepared numbers (shared by both schedules)."""

    p: int
    b: int
    m: int
    K: int
    pipe: object
    dec: Kind
    emb: Kind
    head: Kind
    trK: np.ndarray                   # K * layout change (forward + backward), full layout space
    p2pK: np.ndarray                  # K * one p2p send, per layout
    buffers: np.ndarray               # bytes of one direction's pipelining receive buffers, per layout
    active: np.ndarray                # decoder layouts in use
    lb: float
    L: int = 0
    n_cls: int = 1
    counters: dict = field(default_factory=dict)


def _kind(tables, pipe, kind, opts, b, K, cls_map=None) -> Kind:
    k = pipe.kinds[kind]
    lc = tables.at(pipe.pp, b)[0][kind]
    ok = np.nonzero(allowed(tables, pipe, kind, opts, b))[0]
    cls = None
    if cls_map is not None:
        cls = np.array([cls_map[(int(k.layout[r]), int(k.sharding[r]))] for r in ok], dtype=int)
    return Kind(rows=ok, layout=k.layout[ok], c=(K * lc.t + lc.sync + lc.opt)[ok], states=lc.states[ok], act=lc.act[ok],
                ws=lc.ws[ok], cls=cls)


def _prune(k: Kind, into: np.ndarray | None, out: np.ndarray | None) -> Kind:
    """Drop strategies another one beats in cost (counting the worst layout-change penalty), states, activations
    and workspace: replacing them never makes a plan worse or larger, so the optimum is kept.

    into[x, s]: cost of arriving in strategy s's layout from x; out[s, y]: cost of leaving it towards y."""
    n = len(k.rows)
    if n <= 1:
        return k
    pen = np.zeros((n, n))                                  # pen[i, j]: worst extra cost of putting j where i was
    if into is not None:
        pen += (into[:, None, :] - into[:, :, None]).max(axis=0)
    if out is not None:
        pen += (out[None, :, :] - out[:, None, :]).max(axis=2)
    pen[k.layout[:, None] == k.layout[None, :]] = 0.0
    cls_ok = True if k.cls is None else (k.cls[:, None] == k.cls[None, :])
    better = ((k.c[None, :] + pen <= k.c[:, None]) & (k.states[None, :] <= k.states[:, None])
              & (k.act[None, :] <= k.act[:, None]) & (k.ws[None, :] <= k.ws[:, None]) & cls_ok)
    np.fill_diagonal(better, False)
    same = ((k.c[None, :] == k.c[:, None]) & (k.states[None, :] == k.states[:, None])
            & (k.act[None, :] == k.act[:, None]) & (k.ws[None, :] == k.ws[:, None]) & (pen == 0))
    idx = np.arange(n)
    strictly = better & ~(same & (idx[None, :] > idx[:, None]))   # among exact equals keep the first
    return k.take(~strictly.any(axis=1))


def prepare(tables: CostTables, opts: Options, p: int, b: int, B: int, prune: bool = True) -> Sub | None:
    pipe = tables.pipeline(p)
    m = B // b
    K = m + p - 1
    cls_map = None
    if tables.tied and p == 1:
        e = pipe.kinds["embedding"]
        keys = sorted({(int(e.layout[r]), int(e.sharding[r])) for r in range(len(e))})
        cls_map = {key: i for i, key in enumerate(keys)}
    dec = _kind(tables, pipe, "decoder", opts, b, K)
    emb = _kind(tables, pipe, "embedding", opts, b, K, cls_map)
    head = _kind(tables, pipe, "head", opts, b, K)
    if cls_map is not None:
        h = pipe.kinds["head"]
        keep = np.array([(int(h.layout[r]), int(h.sharding[r])) in cls_map for r in head.rows], dtype=bool)
        head = head.take(keep)
        head.cls = np.array([cls_map[(int(h.layout[r]), int(h.sharding[r]))] for r in head.rows], dtype=int)
    if not len(dec.rows) or not len(emb.rows) or not len(head.rows):
        return None
    trK = K * lin(pipe.tr, b)
    p2pK = K * lin(pipe.p2p, b)
    if prune:
        la = dec.layout
        dec = _prune(dec, trK[:, la], np.concatenate([trK[la, :], trK[la, :] + 2 * p2pK[la][:, None]], axis=1))
        emb = _prune(emb, None, trK[emb.layout, :])
        head = _prune(head, trK[:, head.layout], None)
    n_cls = 1
    if cls_map is not None:      # keep the tied classes both ends can take, numbered 0..n-1
        present = np.intersect1d(emb.cls, head.cls)
        if not len(present):
            return None
        emb = emb.take(np.isin(emb.cls, present))
        head = head.take(np.isin(head.cls, present))
        emb.cls, head.cls = np.searchsorted(present, emb.cls), np.searchsorted(present, head.cls)
        n_cls = len(present)
    active = np.unique(dec.layout)
    L = tables.layers
    lb = (emb.c.min() + L * dec.c.min() + head.c.min() + 2 * (p - 1) * p2pK[active].min()) / p
    return Sub(p=p, b=b, m=m, K=K, pipe=pipe, dec=dec, emb=emb, head=head, trK=trK, p2pK=p2pK,
               buffers=receive_buffers(pipe, b, m), active=active, lb=lb, n_cls=n_cls, L=L)


# --- the stage DP --------------------------------------------------------------------------------------------
#
# State arrays are X[layout, u, w, e]: least cost with the last layer in `layout`, at most u memory units used
# by the layers, workspace cap w (strategies above caps[w] excluded; caps[w] units reserved), entry / class e.

@dataclass
class StageRun:
    R: np.ndarray                 # (n_max + 1, E, A) or, for the last stage, (n_max + 1, E)
    trace: dict | None = None


def _index_dtype(n: int):
    """The smallest signed integer type that holds indices 0..n-1 (the backtracking records)."""
    return np.int8 if n <= np.iinfo(np.int8).max else np.int16 if n <= np.iinfo(np.int16).max else np.int32


def _relayout(X: np.ndarray, tr_in: np.ndarray, nA: int, arg: np.ndarray | None = None) -> np.ndarray:
    """Y[j] = min over the previous layer's layout a of X[a] + tr_in[a, j]: the stage state with its last layer
    moved into layout j. One previous layout at a time, into one buffer (no (a, j, ...) temporary); with `arg`,
    the first a reaching the minimum is written there (what the backtracking reads)."""
    Y = np.full((nA,) + X.shape[1:], INF)
    tmp = np.empty_like(Y)
    for a in range(X.shape[0]):
        np.add(X[a][None], tr_in[a][:, None, None, None], out=tmp)
        if arg is None:
            np.minimum(Y, tmp, out=Y)
        else:
            better = tmp < Y
            np.copyto(Y, tmp, where=better)
            arg[better] = a
    return Y


def _add_layer(Y: np.ndarray, du: np.ndarray, w0: np.ndarray, dc: np.ndarray, dpos: np.ndarray,
               arg: np.ndarray | None = None) -> np.ndarray:
    """Z[j, u, w] = min over the strategies s of layout j (u >= du[s], w >= w0[s]) of Y[j, u - du[s], w] + dc[s]:
    one more layer, as a shifted slice per strategy; with `arg`, the first strategy reaching the minimum."""
    Z = np.full(Y.shape, INF)
    U1 = Y.shape[1]
    for s in range(len(dc)):
        d, j, w = int(du[s]), int(dpos[s]), int(w0[s])
        if d >= U1 or w >= Y.shape[2]:
            continue
        cand = Y[j, : U1 - d, w:] + dc[s]
        out = Z[j, d:, w:]
        if arg is None:
            np.minimum(out, cand, out=out)
        else:
            better = cand < out
            np.copyto(out, cand, where=better)
            arg[j, d:, w:][better] = s
    return Z


def _units(kind: Kind, a: int, avail: float, U: int):
    """(layer units, workspace units) per strategy."""
    lu = np.minimum(units(layer_memory(kind.states, kind.act, a), U, avail), U + 1).astype(np.int64)
    wu = np.minimum(units(kind.ws, U, avail), U + 1).astype(np.int64)
    return lu, wu


def stage_dp(sub: Sub, i: int, schedule: str, budget: float, overhead: float, U: int, n_max: int,
             only_n: int | None = None, entry: int | None = None, bound: float = INF,
             cls: int | None = None) -> StageRun | None:
    """Least cost of stage i for every decoder count n <= n_max (see the module docstring).

    `entry` (a later stage) or `cls` (stage 0: a tied embedding class) keeps that one slice of the state: the
    slices never mix, so its numbers are those of the full run (the backtracking reruns a stage this way)."""
    p = sub.p
    last = i == p - 1
    a = in_flight(schedule, i, p, sub.m)
    avail = budget - overhead
    if avail <= 0:
        return None
    A = sub.active
    nA = len(A)
    pos = np.full(len(sub.pipe.layouts), -1)
    pos[A] = np.arange(nA)
    dec = sub.dec
    du, dw = _units(dec, a, avail, U)
    bu = np.minimum(units(sub.buffers, U, avail), U + 1).astype(np.int64)   # receive buffers, per layout
    emb_u = _units(sub.emb, a, avail, U) if i == 0 else None
    head_u = _units(sub.head, a, avail, U) if last else None
    wvals = [dw] + ([emb_u[1]] if i == 0 else []) + ([head_u[1]] if last else [])
    caps = np.unique(np.concatenate(wvals))
    caps = caps[caps <= U]
    if not len(caps):
        return None
    W = len(caps)
    order = np.argsort(pos[dec.layout], kind="stable")
    du, dw, dc, dpos = du[order], dw[order], dec.c[order], pos[dec.layout[order]]
    uu = np.arange(U + 1)
    S = len(dc)
    trA = sub.trK[np.ix_(A, A)]
    if i == 0:
        emb = sub.emb
        classes = np.arange(sub.n_cls) if cls is None else np.array([cls])
        E = len(classes)
        slot = np.full(sub.n_cls, -1)
        slot[classes] = np.arange(E)
        eu, ew = emb_u
        ecls = np.zeros(len(emb.rows), dtype=int) if emb.cls is None else emb.cls
        X = np.full((len(sub.pipe.layouts), U + 1, W, E), INF)
        for h in range(len(emb.rows)):
            e = slot[ecls[h]]
            if eu[h] <= U and e >= 0:
                ws_ok = ew[h] <= caps
                cur = X[emb.layout[h], eu[h], :, e]
                X[emb.layout[h], eu[h], :, e] = np.where(ws_ok, np.minimum(cur, emb.c[h]), cur)
        X = np.minimum.accumulate(X, axis=1)
        tr_in = sub.trK[:, A]
        entries = None
    else:
        classes = None
        ent = np.arange(nA) if entry is None else np.array([pos[entry]])
        E = len(ent)
        X = np.full((nA, U + 1, W, E), INF)
        for idx, e in enumerate(ent):          # the entry's receive buffers are held from the start
            X[e, bu[A[e]]:, :, idx] = sub.p2pK[A[e]]
        tr_in = trA
        entries = A[ent]
    n_cap = n_max if only_n is None else only_n
    ucol = U - caps                                                   # usable layer units per cap
    if last:
        head = sub.head
        hu, hw = head_u
        H = len(head.rows)
        trH = sub.trK[np.ix_(A, head.layout)]                         # (nA, H)
        hcol = ucol[None, :] - hu[:, None]                            # (H, W)
        hok = (hcol >= 0) & (hw[:, None] <= caps[None, :])
        hmask = np.ones((H, E), dtype=bool)
        if head.cls is not None:
            hmask = head.cls[:, None] == (np.arange(E) if classes is None else classes)[None, :]
        hadd = np.where(hok[:, :, None] & hmask[:, None, :], head.c[:, None, None], INF)   # (H, W, E)
        R = np.full((n_cap + 1, E), INF)
    else:
        R = np.full((n_cap + 1, E, nA), INF)
    w0 = np.searchsorted(caps, dw)                                    # the first cap each strategy fits under
    trace = {"from": [None], "pick": [None]} if only_n is not None else None
    cells = 0
    wi = np.arange(W)
    pick_type = _index_dtype(S)
    for n in range(1, n_cap + 1):
        came = None
        if n == 1 and i > 0:     # from the entry layout only: no memory used yet
            first = sub.p2pK[entries][None, :] + sub.trK[np.ix_(entries, A)].T               # (nA, E)
            held = uu[:, None] >= bu[entries][None, :]                                     # (U+1, E)
            Y = np.broadcast_to(np.where(held[None, :, None, :], first[:, None, None, :], INF), (nA, U + 1, W, E))
        else:
            if trace is not None:
                came = np.zeros((nA, U + 1, W, E), dtype=_index_dtype(X.shape[0]))
            Y = _relayout(X, tr_in, nA, came)
        pick = np.zeros((nA, U + 1, W, E), dtype=pick_type) if trace is not None else None
        Z = _add_layer(Y, du, w0, dc, dpos, pick)
        cells += S * (U + 1) * W * E
        if trace is not None:
            trace["from"].append(came)
            trace["pick"].append(pick)
        at_cap = Z[:, ucol, wi, :]                                                    # (nA, W, E)
        if only_n is None or n == only_n:
            if last:
                Zc = Z[:, np.where(hok, hcol, 0), wi[None, :], :]                     # (nA, H, W, E)
                v = (Zc + trH[:, :, None, None]).min(axis=0) + hadd                   # (H, W, E)
                R[n] = v.min(axis=(0, 1))
            else:
                R[n] = _at_exit(Z, ucol, bu[A], wi).min(axis=1).T + (sub.p2pK[A][None, :] if p > 1 else 0.0)
        zmin = at_cap.min()
        X = Z
        tr_in = trA
        if not np.isfinite(zmin) or zmin > bound:
            break
    sub.counters["cells"] = sub.counters.get("cells", 0) + cells
    run = StageRun(R=R, trace=trace)
    if trace is not None:
        trace.update(Z=X, classes=classes, caps=caps, ucol=ucol, du=du, bu=bu, order=order, emb_u=emb_u,
                     trH=trH if last else None, hadd=hadd if last else None, hcol=hcol if last else None)
    return run


def _at_exit(Z: np.ndarray, ucol: np.ndarray, exit_units: np.ndarray, wi: np.ndarray) -> np.ndarray:
    """Z[x, u, w, e] read where a stage leaving in layout x has used every unit its cap leaves but those of x's
    receive buffers (the gradients coming back): (nA, W, E), INF where the buffers alone do not fit."""
    cols = ucol[None, :] - exit_units[:, None]                                      # (nA, W)
    ok = cols >= 0
    out = Z[np.arange(len(exit_units))[:, None], np.where(ok, cols, 0), wi[None, :], :]
    return np.where(ok[:, :, None], out, INF)


def _backtrack(sub: Sub, i: int, run: StageRun, n: int, exit_layout: int | None):
    """Decoder strategy rows (model order), and the embedding or head row, of the chosen stage: the head (last
    stage) or the exit state, then the recorded choices back to the first layer. `run` kept one entry or class."""
    e_idx = 0
    tr = run.trace
    A = sub.active
    caps = tr["caps"]
    W = len(caps)
    Z = tr["Z"]
    head_row = None
    if exit_layout is None:      # last stage: pick the head
        best = (INF, None)
        for w in range(W):
            for h in range(len(sub.head.rows)):
                if not np.isfinite(tr["hadd"][h, w, e_idx]):
                    continue
                u = int(tr["hcol"][h, w])
                vals = Z[:, u, w, e_idx] + tr["trH"][:, h] + tr["hadd"][h, w, e_idx]
                j = int(np.argmin(vals))
                if vals[j] < best[0]:
                    best = (vals[j], (w, h, j, u))
        w, h, j, u = best[1]
        head_row = int(sub.head.rows[h])
    else:
        j = int(np.nonzero(A == exit_layout)[0][0])
        free = tr["ucol"] - tr["bu"][exit_layout]                 # the exit's receive buffers take the rest
        vals = np.where(free >= 0, Z[j, np.maximum(free, 0), np.arange(W), e_idx], INF)
        w = int(np.argmin(vals))
        u = int(free[w])
    rows = []
    du, order = tr["du"], tr["order"]
    for k in range(n, 0, -1):    # the recorded choices: layer k's strategy, then the layout before it
        s = int(tr["pick"][k][j, u, w, e_idx])
        rows.append(int(sub.dec.rows[order[s]]))
        u -= int(du[s])
        came = tr["from"][k]
        if came is not None:     # (none for a later stage's first layer: it comes from the entry)
            j = int(came[j, u, w, e_idx])
    emb_row = None
    if i == 0:    # j is now the embedding's layout in the full layout space
        emb = sub.emb
        eu, ew = tr["emb_u"]
        ecls = np.zeros(len(emb.rows), dtype=int) if emb.cls is None else emb.cls
        best = (INF, None)
        for h in range(len(emb.rows)):
            if (ecls[h] == tr["classes"][e_idx] and emb.layout[h] == j and eu[h] <= u and ew[h] <= caps[w]
                    and emb.c[h] < best[0]):
                best = (emb.c[h], h)
        emb_row = int(emb.rows[best[1]])
    return rows[::-1], emb_row, head_row


def _hull_min(u: np.ndarray, c: np.ndarray, x: float) -> float:
    """Least average cost per layer at average units x: the lower convex hull of (u, c) at x (INF below min u)."""
    below = u <= x
    if not below.any():
        return INF
    best = c[below].min()
    above = ~below
    if above.any():
        u1, c1 = u[below][:, None], c[below][:, None]
        u2, c2 = u[above][None, :], c[above][None, :]
        best = min(best, float((c1 + (c2 - c1) * (x - u1) / (u2 - u1)).min()))
    return best


def memory_bound(sub: Sub, schedule: str, avail: float, U: int) -> float:
    """A lower bound on a sub-problem's iteration time that sees the memory budget.

    Every stage's cost is at least its share of the cheapest layer costs; with memory, the layers of all
    stages share at most pp * (U - least workspace) - least embedding and head units, and the least total
    cost of L layers in that many units is at least L x g(units / L), g the lower convex hull of the
    strategies' (units, cost) at the fewest micro-batches in flight (Jensen: n g(x / n) is convex in n)."""
    p, L = sub.p, sub.L
    if avail <= 0:
        return INF
    a_min = in_flight(schedule, p - 1, p, sub.m)                # the last stage holds the fewest
    du, dw = _units(sub.dec, a_min, avail, U)
    eu, _ = _units(sub.emb, a_min, avail, U)
    hu, _ = _units(sub.head, a_min, avail, U)
    cap = p * (U - int(dw.min())) - int(eu.min()) - int(hu.min())
    if cap < L * int(du.min()):
        return INF
    per_layer = _hull_min(du.astype(float), sub.dec.c, cap / L)
    extra = sub.emb.c.min() + sub.head.c.min() + 2 * (p - 1) * sub.p2pK[sub.active].min()
    return max(sub.lb, (extra + L * per_layer) / p)


def solve_sub(tables: CostTables, sub: Sub, schedule: str, budget: float, U: int, incumbent: float):
    """Best plan of one (pp, b, schedule) sub-problem strictly below `incumbent`, or None."""
    p, L = sub.p, tables.layers
    ov = tables.overhead
    bound = incumbent * (1 + REL)
    cmin = sub.dec.c.min()

    def n_limit(i):
        extra = (sub.emb.c.min() if i == 0 else 0.0) + (sub.head.c.min() if i == p - 1 else 0.0)
        lim = L - (p - 1)
        if math.isfinite(bound) and cmin > 0:
            lim = min(lim, int((bound - extra) / cmin) + 1)
        return lim

    if p == 1:
        run = stage_dp(sub, 0, schedule, budget, ov, U, L, only_n=None, bound=bound)
        if run is None or run.R.shape[0] <= L:
            return None
        T = run.R[L].min()
        if not T < incumbent:
            return None
        return T, [(L, int(np.argmin(run.R[L])), None)]
    keys = {}

    def run_of(i):
        key = (in_flight(schedule, i, p, sub.m), i == 0, i == p - 1)
        if key not in keys:
            nl = n_limit(i)
            keys[key] = None if nl < 1 else stage_dp(sub, i, schedule, budget, ov, U, nl, bound=bound)
        return keys[key]

    nA = len(sub.active)
    # partition DP, stage by stage; a prefix already as slow as the incumbent ends the sub-problem
    run = run_of(0)
    if run is None:
        return None
    R0 = run.R.min(axis=1)                                      # (n+1, nA)
    H = np.full((L + 1, nA), INF)
    H[: R0.shape[0]] = R0
    H[0] = INF
    choices = []
    for i in range(1, p):
        if not H[: L - (p - 1 - i) + 1].min() < incumbent:
            return None
        run = run_of(i)
        if run is None:
            return None
        if i == p - 1:
            break
        Ri = run.R                                              # (n+1, E=nA, nA)
        Hn = np.full((L + 1, nA), INF)
        arg_n = np.zeros((L + 1, nA), dtype=np.int64)
        arg_e = np.zeros((L + 1, nA), dtype=np.int64)
        for n in range(1, Ri.shape[0]):
            cand = np.maximum(H[: L + 1 - n, :, None], Ri[n][None, :, :])   # (k, e, x)
            e = cand.argmin(axis=1)
            v = np.take_along_axis(cand, e[:, None, :], axis=1)[:, 0, :]
            better = v < Hn[n:]
            Hn[n:] = np.where(better, v, Hn[n:])
            arg_n[n:] = np.where(better, n, arg_n[n:])
            arg_e[n:] = np.where(better, e, arg_e[n:])
        choices.append((arg_n, arg_e))
        H = Hn
    Rl = run.R                                                  # (n+1, nA)
    best = (INF, None)
    for n in range(1, Rl.shape[0]):
        if L - n < 1:
            break
        v = np.maximum(H[L - n], Rl[n])
        e = int(np.argmin(v))
        if v[e] < best[0]:
            best = (v[e], (n, e))
    T = best[0]
    if not T < incumbent:
        return None
    n, e = best[1]
    stages = [(n, e, None)]
    k = L - n
    x = e
    for i in range(p - 2, 0, -1):
        arg_n, arg_e = choices[i - 1]
        ni, ei = int(arg_n[k, x]), int(arg_e[k, x])
        stages.append((ni, ei, x))
        k -= ni
        x = ei
    stages.append((k, 0, x))
    return T, stages[::-1]


def _grouped(rows: list[int], layout: np.ndarray) -> list[int]:
    """Inside each run of layers in one layout, order doesn't change time or memory: list equal strategies
    together (first seen first) so the plan reads as blocks."""
    out, start = [], 0
    for k in range(1, len(rows) + 1):
        if k == len(rows) or layout[rows[k]] != layout[rows[start]]:
            run = rows[start:k]
            first = {r: run.index(r) for r in dict.fromkeys(run)}
            out += sorted(run, key=lambda r: first[r])
            start = k
    return out


def reconstruct(tables: CostTables, sub: Sub, schedule: str, budget: float, U: int, stages) -> Spec:
    """Rerun each chosen stage with its trace and read its strategies back."""
    p = sub.p
    A = sub.active
    dec_rows, emb_row, head_row = [], None, None
    bounds = [0]
    for i, (n, e, x) in enumerate(stages):
        entry = None if i == 0 else int(A[e])
        run = stage_dp(sub, i, schedule, budget, tables.overhead, U, n, only_n=n, entry=entry,
                       cls=e if i == 0 else None)
        exit_layout = None if i == p - 1 else int(A[x])
        rows, er, hr = _backtrack(sub, i, run, n, exit_layout)
        dec_rows += _grouped(rows, sub.pipe.kinds["decoder"].layout)
        emb_row = er if er is not None else emb_row
        head_row = hr if hr is not None else head_row
        bounds.append(bounds[-1] + n)
    return Spec(pp=p, b=sub.b, m=sub.m, schedule=schedule, bounds=bounds, dec=dec_rows, emb=emb_row, head=head_row)


# --- uniform plans (baselines, --uniform, the first incumbent) --------------------------------------------------

def uniform_best(tables: CostTables, opts: Options, B: int, budget: float):
    """Best plan with one strategy for every decoder layer, embedding and head in its layout and sharding, and
    an even layer split (Megatron-style), by enumeration vectorised over strategies."""
    U = opts.buckets
    L = tables.layers
    best = (INF, None)
    count = 0
    for p in sorted(tables.pipes):
        if p > L or (opts.max_pp is not None and p > opts.max_pp) or (opts.pp is not None and p not in opts.pp):
            continue
        pipe = tables.pipeline(p)
        bounds = [0, *itertools.accumulate(even_split(L, p))]
        for b in divisors(B):
            m = B // b
            ok = allowed(tables, pipe, "decoder", opts, b)
            ok_e = allowed(tables, pipe, "embedding", opts, b)
            ok_h = allowed(tables, pipe, "head", opts, b)
            dk = pipe.kinds["decoder"]
            rows = np.nonzero(ok)[0]
            if not len(rows):
                continue
            emb_rows, head_rows, keep = [], [], []
            for r in rows:
                er = _match(pipe, "embedding", int(dk.layout[r]), int(dk.sharding[r]), ok_e)
                hr = _match(pipe, "head", int(dk.layout[r]), int(dk.sharding[r]), ok_h)
                if er is not None and hr is not None:
                    emb_rows.append(er)
                    head_rows.append(hr)
                    keep.append(r)
            if not keep:
                continue
            rows, er, hr = np.array(keep), np.array(emb_rows), np.array(head_rows)
            for sched in opts.schedules:
                if sched == "1f1b" and m < p:
                    continue
                count += len(rows)
                T, fits = _uniform_eval(tables, pipe, p, b, m, sched, bounds, rows, er, hr, budget, U)
                T = np.where(fits, T, INF)
                j = int(np.argmin(T))
                if T[j] < best[0]:
                    spec = Spec(pp=p, b=b, m=m, schedule=sched, bounds=bounds, dec=[int(rows[j])] * L,
                                emb=int(er[j]), head=int(hr[j]))
                    best = (float(T[j]), spec)
    return best[0], best[1], count


def _match(pipe, kind, layout, sharding, ok):
    """The row of `kind` in this layout and sharding (without recompute if there is one), or None."""
    cache = pipe.__dict__.setdefault("_match", {})
    if kind not in cache:
        k = pipe.kinds[kind]
        by = {}
        for r in sorted(range(len(k)), key=lambda r: bool(k.recompute[r])):
            by.setdefault((int(k.layout[r]), int(k.sharding[r])), []).append(r)
        cache[kind] = by
    for r in cache[kind].get((layout, sharding), ()):
        if ok[r]:
            return r
    return None


def _uniform_eval(tables, pipe, p, b, m, sched, bounds, rows, er, hr, budget, U):
    K = m + p - 1
    lcs, trf, trb, p2p = tables.at(p, b)
    d, e, h = lcs["decoder"], lcs["embedding"], lcs["head"]
    tr = trf + trb
    dl = pipe.kinds["decoder"].layout[rows]
    el = pipe.kinds["embedding"].layout[er]
    hl = pipe.kinds["head"].layout[hr]
    T = np.zeros(len(rows))
    fits = np.ones(len(rows), dtype=bool)
    for i in range(p):
        n = bounds[i + 1] - bounds[i]
        a = in_flight(sched, i, p, m)
        t = n * d.t[rows]
        x = n * (d.sync[rows] + d.opt[rows])
        ws = d.ws[rows].copy()
        if i == 0:
            t = t + e.t[er] + tr[el, dl]
            x = x + e.sync[er] + e.opt[er]
            ws = np.maximum(ws, e.ws[er])
        if i == p - 1:
            t = t + h.t[hr] + tr[dl, hl]
            x = x + h.sync[hr] + h.opt[hr]
            ws = np.maximum(ws, h.ws[hr])
        if i < p - 1:
            t = t + p2p[dl]
        if i > 0:
            t = t + p2p[dl]
        avail = budget - tables.overhead
        safe = avail if avail > 0 else 1.0
        used = n * units(layer_memory(d.states[rows], d.act[rows], a), U, safe) + units(ws, U, safe)
        if i == 0:
            used = used + units(layer_memory(e.states[er], e.act[er], a), U, safe)
        if i == p - 1:
            used = used + units(layer_memory(h.states[hr], h.act[hr], a), U, safe)
        if p > 1:                      # receive buffers: from the previous stage, and the gradients coming back
            used = used + units(receive_buffers(pipe, b, m)[dl], U, safe) * ((i > 0) + (i < p - 1))
        fits &= (avail > 0) & (used <= U)
        T = np.maximum(T, K * t + x + tables.optim_fixed + step_overhead(tables))
    return T, fits


# --- the whole search ------------------------------------------------------------------------------------------

@dataclass
class Result:
    T: float
    spec: Spec | None
    B: int
    candidates: int


def search_batch(tables: CostTables, opts: Options, B: int, incumbent: float = INF) -> Result:
    budget, U, L = opts.usable_bytes, opts.buckets, tables.layers
    T0, spec0, count = uniform_best(tables, opts, B, budget)
    if opts.uniform:
        return Result(T0, spec0, B, count)
    best_T, best = (T0, ("uniform", spec0)) if T0 < incumbent else (incumbent, None)
    subs = []
    for p in sorted(tables.pipes):
        if p > L or (opts.max_pp is not None and p > opts.max_pp) or (opts.pp is not None and p not in opts.pp):
            continue
        for b in divisors(B):
            sub = prepare(tables, opts, p, b, B)
            if sub is None:
                continue
            for sched in opts.schedules:
                if sched == "1f1b" and sub.m < p:
                    continue
                if sched == "gpipe" and p == 1 and "1f1b" in opts.schedules:
                    continue          # one stage: the same time as 1F1B, with m >= 1 micro-batches in flight
                subs.append((memory_bound(sub, sched, budget - tables.overhead, U), p, b, sched, sub))
    subs.sort(key=lambda t: (t[0], t[1], t[2], t[3]))
    F = tables.optim_fixed + step_overhead(tables)      # in every stage of every plan: the DPs work without it
    for lb, _p, _b, sched, sub in subs:
        if lb + F >= best_T * (1 + REL):
            break
        found = solve_sub(tables, sub, sched, budget, U, best_T - F)
        count += sub.counters.get("cells", 0)
        sub.counters["cells"] = 0
        if found is not None and found[0] + F < best_T * (1 - 1e-12):
            best_T, best = found[0] + F, (sched, sub, found[1])
    if best is None:
        return Result(INF, None, B, count)
    if best[0] == "uniform":
        return Result(best_T, best[1], B, count)
    sched, sub, stages = best
    spec = reconstruct(tables, sub, sched, budget, U, stages)
    return Result(best_T, spec, B, count)


def run_search(tables: CostTables, opts: Options) -> tuple[Result, float]:
    """Best plan over the global batches in range (max samples/s); returns it and the seconds taken."""
    t0 = time.perf_counter()
    best: Result | None = None
    total = 0
    for B in global_batches(tables, opts):
        inc = INF if best is None or best.spec is None else best.T * B / best.B
        r = search_batch(tables, opts, B, inc)
        total += r.candidates
        if r.spec is not None and (best is None or best.spec is None or B / r.T > best.B / best.T):
            best = r
        elif best is None:
            best = r
    best.candidates = total
    if best.spec is not None:
        check = evaluate_spec(tables, best.spec, opts.usable_bytes, opts.buckets)
        if not check["fits"] or abs(check["iteration_time_s"] - best.T) > 1e-6 * best.T:
            raise GalvatronError(f"internal error: the search's plan evaluates to {check['iteration_time_s']} s "
                                 f"(fits: {check['fits']}), the search predicted {best.T} s")
        best.T = check["iteration_time_s"]
    return best, time.perf_counter() - t0


def minimal_budget(tables: CostTables, opts: Options, rel: float = 1e-3) -> float | None:
    """The smallest budget (bytes, to within rel) at which a plan exists, or None if none exists at any size."""
    import dataclasses

    def feasible(mem):
        o = dataclasses.replace(opts, memory_bytes=mem)
        return any(search_batch(tables, o, B).spec is not None for B in global_batches(tables, o))

    lo, hi = opts.memory_bytes, max(opts.memory_bytes, 2 ** 30) * 2
    while not feasible(hi):
        lo, hi = hi, hi * 2
        if hi > 2 ** 60:
            return None
    while hi - lo > rel * hi:
        mid = (lo + hi) / 2
        if feasible(mid):
            hi = mid
        else:
            lo = mid
    return hi


def round_up(x: float, digits: int = 4) -> str:
    """x rounded up to `digits` significant digits (a budget that is enough, printed short)."""
    step = 10.0 ** (math.floor(math.log10(x)) - digits + 1)
    return f"{math.ceil(x / step) * step:.{max(0, digits - 1 - math.floor(math.log10(x)))}f}"


def require(result: Result, tables: CostTables, opts: Options) -> Result:
    if result.spec is None:
        need = minimal_budget(tables, opts)
        gib = opts.memory_bytes / 2 ** 30
        if need is None:
            raise InfeasibleError(f"{tables.source}: no plan in the searched space at {gib:g} GiB per GPU, nor "
                                  f"at any budget (the options exclude every strategy, or the batch cannot be split)")
        raise InfeasibleError(f"{tables.source}: no plan fits {gib:g} GiB per GPU; the smallest budget at which "
                              f"one exists is {round_up(need / 2 ** 30)} GiB")
    return result
