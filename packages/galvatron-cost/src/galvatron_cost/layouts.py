"""Activation layouts inside a pipeline stage and the data each rank must receive to change layout.

A layout (tp, tp_layout, sp) on a stage of S ranks puts local rank j at (tp_rank, dp_rank) by the shared rank
convention (galvatron_contracts.ranks: consecutive tp_rank = j % tp, dp_rank = j // tp; strided the transpose).
dp_rank r holds samples [r/dp, (r+1)/dp) of the micro-batch (as fractions); with sp, tp_rank q holds sequence
positions [q/tp, (q+1)/tp), otherwise the whole sequence (replicated over the tp group).

Redistribution model (forward from layout A to B): rank j needs its B box; what it holds of it (the overlap with
its A box) stays, every other A cell that intersects the B box is fetched from one of its holders, one on the
same node when there is one. The bytes received are (|B box| - |A box ∩ B box|) x the micro-batch's activation
bytes, and the transfer is costed as an all-gather over the rank and its sources. Backward is the mirror: the
gradient of the A box is assembled from the B holders (|A box| - overlap). A batch all-gather (B holds more
samples) thus costs its all-gather forward and nothing backward (each rank slices its own part of the
gradient), a split costs nothing forward and an all-gather of gradients backward.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from galvatron_contracts.names import layout_name
from galvatron_contracts.ranks import local_coords, rank_groups

from .comm import Topology


@dataclass(frozen=True)
class Layout:
    tp: int
    tp_layout: str
    sp: bool
    dp: int

    @property
    def id(self) -> str:
        """The shared layout name, e.g. 'tp1 dp8', 'tp2s+sp dp4' (galvatron_contracts.names)."""
        return layout_name(self.tp, self.tp_layout, self.sp, self.dp)


def enumerate_layouts(stage_ranks: int, max_tp: int, tp_allowed=lambda t: True) -> list[Layout]:
    """tp powers of two dividing S up to max_tp; consecutive/strided where distinct; sp on/off for tp > 1."""
    out = []
    t = 1
    while t <= min(stage_ranks, max_tp):
        if stage_ranks % t == 0 and tp_allowed(t):
            d = stage_ranks // t
            if t == 1:
                out.append(Layout(1, "consecutive", False, d))
            else:
                for tl in (("consecutive",) if d == 1 else ("consecutive", "strided")):
                    for sp in (False, True):
                        out.append(Layout(t, tl, sp, d))
        t *= 2
    return out


@functools.cache
def coords(S: int, lay: Layout) -> tuple[np.ndarray, np.ndarray]:
    """(tp_rank, dp_rank) of every local rank j."""
    tp_rank, dp_rank = zip(*(local_coords(j, S, lay.tp, lay.tp_layout) for j in range(S)), strict=True)
    return _frozen(tp_rank), _frozen(dp_rank)


@functools.cache
def local_groups(S: int, lay: Layout, which: str) -> np.ndarray:
    """Rows of local ranks: the tp groups ([dp_rank, tp_rank] -> j) or the dp groups ([tp_rank, dp_rank] -> j)."""
    tp_groups, dp_groups = rank_groups(range(S), lay.tp, lay.tp_layout)
    return _frozen(tp_groups if which == "tp" else dp_groups)


def _frozen(values) -> np.ndarray:
    out = np.array(values)
    out.setflags(write=False)            # cached: shared by every caller
    return out


def group_stride(lay: Layout, which: str) -> int:
    g = local_groups(max(lay.tp * lay.dp, 1), lay, which)
    return int(g[0, 1] - g[0, 0]) if g.shape[1] > 1 else 1


def _interval(idx, parts):
    return idx / parts, (idx + 1) / parts


def _overlap(a0, a1, b0, b1):
    return np.clip(np.minimum(a1, b1) - np.maximum(a0, b0), 0.0, None)


def gather_need(S: int, src: Layout, dst: Layout, offset: int, gpus_per_node: int):
    """What each local rank must receive to hold its `dst` box, given `src` boxes.

    Returns (recv_fraction[j] of the micro-batch's activation, sources[j], nodes[j] spanned with its sources,
    crossing[j]). offset: the stage's first global rank (node = (offset + j) // gpus_per_node)."""
    j = np.arange(S)
    node = (offset + j) // gpus_per_node
    st, sd = coords(S, src)
    dt, dd = coords(S, dst)
    s_seq = src.tp if src.sp else 1
    d_seq = dst.tp if dst.sp else 1
    s_q = st if src.sp else np.zeros(S, int)
    d_q = dt if dst.sp else np.zeros(S, int)
    ov = _overlap(*_interval(sd, src.dp), *_interval(dd, dst.dp)) * _overlap(*_interval(s_q, s_seq),
                                                                                *_interval(d_q, d_seq))
    recv = 1.0 / (dst.dp * d_seq) - ov
    recv = np.where(recv < 1e-12, 0.0, recv)
    # src cells (sample part r, sequence part q) intersecting each rank's dst box
    if dst.dp <= src.dp:
        n_r, r0 = src.dp // dst.dp, dd * (src.dp // dst.dp)
    else:
        n_r, r0 = 1, dd // (dst.dp // src.dp)
    if s_seq == 1:
        n_q, q0 = 1, np.zeros(S, int)
    elif d_seq == 1:
        n_q, q0 = s_seq, np.zeros(S, int)
    elif s_seq >= d_seq:
        n_q, q0 = s_seq // d_seq, d_q * (s_seq // d_seq)
    else:
        n_q, q0 = 1, d_q // (d_seq // s_seq)
    grid = local_groups(S, src, "tp")                          # [dp_rank, tp_rank] -> local rank
    chosen = []
    for a in range(n_r):
        r = r0 + a
        for b in range(n_q):
            q = q0 + b
            own = (r == sd) & ((q == s_q) if src.sp else True)
            holders = [grid[r, q]] if src.sp else [grid[r, t] for t in range(src.tp)]
            hn = np.stack([(offset + h) // gpus_per_node for h in holders])   # [replica, j]
            same = (hn == node[None, :]).any(axis=0)
            pick = np.where(same, node, hn[0])
            chosen.append(np.where(own, -1, pick))
    chosen = np.stack(chosen)                                   # [cell, j], -1 for the own cell
    sources = (chosen >= 0).sum(axis=0)
    off_node = np.where((chosen >= 0) & (chosen != node[None, :]), chosen, -1)
    srt = np.sort(off_node, axis=0)
    distinct = ((srt >= 0) & np.vstack([np.ones((1, S), bool), np.diff(srt, axis=0) != 0])).sum(axis=0)
    return recv, sources, distinct + 1, distinct > 0


def transition_topology(recv, sources, nodes, crossing, offset: int, gpus_per_node: int) -> Topology:
    """The worst all-gather topology of one redistribution (all ranks of the stage at once)."""
    n = int(sources.max()) + 1
    if not crossing.any():
        return Topology(n, 1, n, 1)
    m = int(nodes.max())
    k = max(1, -(-n // m))
    node = (offset + np.arange(recv.size)) // gpus_per_node
    per_node = np.bincount(node[crossing] - node.min()).max()
    return Topology(n, m, k, max(1, -(-int(per_node) // k)))
