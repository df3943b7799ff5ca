"""Communication time: alpha-beta fits of the probed collectives and a hierarchical model for the rest.

Every collective of ``n`` ranks moving a buffer of ``M`` bytes (the full, unsharded buffer per rank, as the
hardware-profile records it) takes

    time = alpha_s + wire_bytes / (bandwidth_gbps * 1e9),  wire_bytes = M * 2(n-1)/n  (all_reduce)
                                                          wire_bytes = M * (n-1)/n   (all_gather, reduce_scatter,
                                                                                      all_to_all)

(ring volumes; ``bandwidth_gbps`` is the bus bandwidth). Each probed (op, group size, layout) is fitted with
``scipy.optimize.least_squares`` on relative residuals ``pred/measured - 1`` with a soft-L1 loss (robust to the odd
slow repeat), alpha >= 0 and bandwidth > 0.

A group is described by its *topology* on the cluster: ``n`` ranks over ``nodes`` nodes, at most ``per_node`` of
them on one node, and ``sharing`` groups of the same layout communicating through one node at once (training runs
every group of a layout together). A target group whose topology equals a probed one reuses that fit (inside a
node the group size alone decides: no shared inter-node link). Any other group is extrapolated by the hierarchical
model, two links derived from the probed fits:

- intra-node link, per op: the bus bandwidth of the probed intra-node fit of the nearest group size, and a
  per-step latency ``a_intra = alpha / steps(n)`` (steps: 2(n-1) for all_reduce, n-1 otherwise, as in a ring);
- inter-node link, per op: ``B_node``, the bytes/s one node moves to other nodes, and a per-step latency ``a_inter``.

A group within one node runs at the intra-node bandwidth. A group over ``m`` nodes with ``k`` ranks per node runs as
an intra-node phase over ``k`` ranks followed by an inter-node phase over ``m`` nodes, whose traffic leaves each node
through its link shared by the ``g`` groups of the layout that cross nodes there:

    time/M  = w_intra / bw_intra + g * w_inter / B_node
    all_reduce: w_intra = 2(k-1)/k, w_inter = 2(m-1)/m;  all_gather, reduce_scatter: (k-1)/k, (m-1)/m;
    all_to_all: w_intra = (k-1)/n, w_inter = k(m-1)/m
    alpha   = steps(k) * a_intra + steps(m) * a_inter

so a group that spans nodes is bounded by the inter-node link. ``B_node`` and ``a_inter`` are solved from every
probed cross-node fit with the same equations and their medians taken (an op without cross-node probes borrows the
median of the others). The result is written back in the alpha-beta form above (``bandwidth = w(n) / (time/M)``)
and flagged ``extrapolated``. p2p follows the same idea: a pipeline boundary inside a node runs at the probed
intra-node p2p link, one that crosses nodes shares ``B_node_p2p`` (median of bandwidth x pairs crossing per node)
between the pairs leaving a node, at most at the intra-node p2p link's bandwidth (a bound of the model, not a
measurement: where it binds, the p2p fit's ``method`` and the notes say so).

Consistency of the profile (``cross_node_finding``). A probed cross-node fit with k > 1 ranks per node contains an
intra-node phase over k ranks, so by the model it takes at least as long as that phase alone at the intra-node
link. Per byte of the buffer, ``r = (w_intra / bw_intra) / (time/M of the fit)`` says how much of the fit's time
the intra-node phase alone would take:

- r <= 1 - INTER_FLOOR (0.9): the inter-node phase takes at least 10% of the time; B_node follows as above.
- 0.9 < r <= the error limit: a warning, on stderr and in the cost model's notes, naming both entries (JSON path,
  op, group size, layout, nodes x ranks per node, bandwidth). The model then floors this entry's inter-node phase
  at INTER_FLOOR x its time (the floor also keeps B_node finite where the phase is not measurable), which makes
  its B_node estimate ``g w_inter / (0.1 time/M)``, an upper bound of what the entry can tell; the median over
  the entries of the op is taken as before. The warning says whether ``r - 1`` lies within the entries'
  measurement noise: each entry's noise is the larger of its fit's median relative residual and its points'
  median half inter-quartile range relative to the median (half the min-max range where the quartiles are
  absent); the two entries' noises add.
- r > max(GROSS_RATIO, 1 + noise), GROSS_RATIO = 2: DocumentError (exit 3) naming the file and both JSON paths.
  Why 2: the traffic of a group that spans nodes crosses the intra-node links too, so the ring the model assumes
  is bounded by them, and the most any collective algorithm saves on a ring is what in-network reduction (NVLS,
  SHARP) saves by sending each byte once instead of twice: a factor of 2. A fit beyond that is a measurement
  error (a mislabelled layout or stride, a probe that timed only some ranks) that no plan should rest on. Noise
  above 2 means the profile cannot tell, and it stays a warning.

Groups with one rank per node (k = 1) have no intra-node phase and are not compared: on a cluster with a slow
intra-node fabric (PCIe) and a network card per GPU they can legitimately be faster than a group inside a node.
A cross-node fit's latency below its intra-node phase's is floored at 0 per inter-node step (latencies are the
noisiest part of a fit; the alpha of a large-message term hardly matters).
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import least_squares

from galvatron_contracts.documents import DocumentError
from galvatron_contracts.ranks import rank_groups, stage_ranks

OPS = ("all_reduce", "all_gather", "reduce_scatter", "all_to_all")
BETA_FLOOR = 1e-18      # s/byte: keeps a fitted bandwidth finite (1e9 GB/s)
TIME_FLOOR_S = 1e-9     # a measured time of 0 (below the timer's resolution) counts as 1 ns in relative residuals
INTER_FLOOR = 0.1       # least share of a cross-node fit's time given to its inter-node phase (see the docstring)
GROSS_RATIO = 2.0       # a cross-node fit this many times faster than its intra-node phase allows is an error


def wire_factor(op: str, n: int) -> float:
    """Bytes on the wire per byte of the full buffer (ring algorithms)."""
    return 2.0 * (n - 1) / n if op == "all_reduce" else (n - 1) / n


def latency_steps(op: str, n: int) -> int:
    return 2 * (n - 1) if op == "all_reduce" else n - 1


# --- alpha-beta fitting ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class AlphaBeta:
    alpha_s: float
    bandwidth_gbps: float

    def time(self, wire_bytes: float) -> float:
        return self.alpha_s + wire_bytes / (self.bandwidth_gbps * 1e9)

    def per_byte_s(self) -> float:
        return 1.0 / (self.bandwidth_gbps * 1e9)


def quality(pred: np.ndarray, measured: np.ndarray) -> dict:
    """R^2 on the times, relative residuals |pred/measured - 1|, and the number of points."""
    pred, measured = np.asarray(pred, float), np.asarray(measured, float)
    ss_res = float(np.sum((pred - measured) ** 2))
    ss_tot = float(np.sum((measured - measured.mean()) ** 2))
    if ss_tot > 0:
        r2 = 1.0 - ss_res / ss_tot
    else:
        r2 = 1.0 if ss_res <= 1e-24 else 0.0
    rel = np.abs(pred / np.maximum(measured, TIME_FLOOR_S) - 1.0)
    return {"r2": float(min(r2, 1.0)), "max_rel_residual": float(rel.max()) if rel.size else 0.0,
            "median_rel_residual": float(np.median(rel)) if rel.size else 0.0, "points": int(measured.size)}


def fit_alpha_beta(x_bytes, times) -> tuple[AlphaBeta, dict]:
    """Fit time = alpha + beta * x (x: wire bytes) with alpha >= 0, beta > 0, robust loss on relative residuals.

    >>> ab, q = fit_alpha_beta([1e3, 1e6, 1e8], [1e-4 + 1e-6, 1e-4 + 1e-3, 1e-4 + 1e-1])
    >>> round(ab.alpha_s * 1e4, 2), round(ab.bandwidth_gbps, 2)
    (1.0, 1.0)
    """
    x, t = np.asarray(x_bytes, float), np.asarray(times, float)
    if x.size == 0:
        raise ValueError("no points to fit")
    t = np.maximum(t, 1e-12)
    if np.unique(x).size < 2:                     # one message size: no latency term can be told apart
        beta = max(float(np.median(t / x)), BETA_FLOOR)
        ab = AlphaBeta(0.0, 1.0 / (beta * 1e9))
        return ab, quality(beta * x, t)
    ts, xs = float(np.median(t)), float(np.median(x))
    # scaled unknowns p = (alpha / ts, beta * xs / ts) keep the problem well conditioned
    A = np.stack([np.full_like(x, ts), x * ts / xs], axis=1) / t[:, None]
    p0, *_ = np.linalg.lstsq(A, np.ones_like(t), rcond=None)
    p0 = np.clip(p0, 1e-9, None)

    def residual(p):
        return A @ p - 1.0

    sol = least_squares(residual, p0, bounds=([0.0, 0.0], [np.inf, np.inf]), loss="soft_l1", f_scale=0.05,
                        method="trf")
    alpha = float(sol.x[0] * ts)
    beta = max(float(sol.x[1] * ts / xs), BETA_FLOOR)
    ab = AlphaBeta(alpha, 1.0 / (beta * 1e9))
    return ab, quality(alpha + beta * x, t)


# --- topology of rank groups -----------------------------------------------------------------------------------

@dataclass(frozen=True, order=True)
class Topology:
    """n ranks over `nodes` nodes, at most `per_node` on one node, `sharing` groups using one node at once."""
    n: int
    nodes: int
    per_node: int
    sharing: int

    @property
    def crosses(self) -> bool:
        return self.nodes > 1

    def describe(self) -> str:
        if not self.crosses:
            return f"{self.n} ranks in one node ({self.sharing} group(s) per node at once)"
        return (f"{self.n} ranks over {self.nodes} nodes, <= {self.per_node} per node, "
                f"{self.sharing} group(s) crossing each node at once")


def groups_topology(groups: np.ndarray, gpus_per_node: int) -> Topology:
    """The worst topology of a set of concurrent groups (rows of global ranks)."""
    groups = np.atleast_2d(np.asarray(groups, dtype=np.int64))
    ng, n = groups.shape
    nodes = groups // gpus_per_node
    radix = int(nodes.max()) + 1
    # the (group, node) pairs present and their rank counts: O(ranks), never a groups x nodes table
    pairs, counts = np.unique(np.arange(ng)[:, None] * radix + nodes, return_counts=True)
    group, node = np.divmod(pairs, radix)
    spans = np.bincount(group, minlength=ng)
    crossing = spans[group] > 1
    if crossing.any():
        sharing = int(np.bincount(node[crossing]).max())
        return Topology(n, int(spans.max()), int(counts[crossing].max()), max(sharing, 1))
    return Topology(n, 1, n, max(int(np.bincount(node).max()), 1))


def strided_groups(world: int, n: int, stride: int, count: int | None = None) -> np.ndarray:
    """Groups of n ranks spaced by `stride` partitioning [0, world) (the probe's layouts): rows of ranks.

    By the rank convention these are the tp groups of tp = n, strided, over blocks of n * stride ranks taken as
    stages (stride 1: consecutive blocks of n)."""
    block = n * stride
    if world % block:
        raise ValueError(f"group of {n} with stride {stride} does not tile {world} ranks")
    blocks = world // block
    ranks = np.array([g for k in range(blocks) for g in rank_groups(stage_ranks(world, blocks, k), n, "strided")[0]])
    return ranks if count is None else ranks[:count]


def p2p_topology(senders: np.ndarray, distance: int, gpus_per_node: int) -> Topology:
    """Pairs (r, r + distance), all at once: crossing pairs per node (sender side)."""
    senders = np.asarray(senders, dtype=np.int64)
    src, dst = senders // gpus_per_node, (senders + distance) // gpus_per_node
    cross = src != dst
    if not cross.any():
        return Topology(2, 1, 2, 1)
    sharing = int(np.bincount(src[cross] - src.min()).max())
    return Topology(2, 2, 1, sharing)


# --- the model -------------------------------------------------------------------------------------------------

@dataclass
class ProbedFit:
    op: str
    topo: Topology
    layout: str
    stride: int
    ab: AlphaBeta
    quality: dict
    points: int
    x: np.ndarray | None = None
    t: np.ndarray | None = None
    method: str = "robust least squares (soft_l1 on relative residuals)"
    index: int = -1             # position in the hardware-profile's collectives
    spread: float = 0.0         # the points' median relative spread (points_spread)

    @property
    def path(self) -> str:
        return f"$.collectives[{self.index}]"

    @property
    def noise(self) -> float:
        """Relative measurement noise: the larger of the fit's median residual and the points' spread."""
        return max(self.quality["median_rel_residual"], self.spread)

    def describe(self, path: bool = True) -> str:
        """'$.collectives[i] (op of n, layout, nodes x per node: bandwidth)': the entry as messages name it."""
        t = self.topo
        nodes = f"{t.nodes} node{'s' if t.nodes > 1 else ''}"
        return (f"{self.path + ' ' if path else ''}({self.op} of {t.n}, {self.layout}, {nodes} x {t.per_node} per "
                f"node: {self.ab.bandwidth_gbps:.4g} GB/s)")

    @property
    def identified(self) -> bool:
        """The bandwidth term explains at least 5% of the largest message's time (the sweep saw bandwidth)."""
        xm = float(self.x.max())
        return self.ab.per_byte_s() * xm >= 0.05 * self.ab.time(xm)


def refit_alpha(x: np.ndarray, t: np.ndarray, bandwidth_gbps: float) -> tuple[AlphaBeta, dict]:
    """Keep a bandwidth, fit the latency: median of what the transfer leaves (>= 0)."""
    beta = 1.0 / (bandwidth_gbps * 1e9)
    alpha = max(float(np.median(t - beta * x)), 0.0)
    return AlphaBeta(alpha, bandwidth_gbps), quality(alpha + beta * x, t)


def points_spread(points: list[dict]) -> float:
    """Median over the points of half the inter-quartile range relative to the median time (half the min-max
    range where a point has no quartiles): one measurement's relative noise."""
    rel = []
    for p in points:
        t = p["time"]
        lo, hi = (t["p25_s"], t["p75_s"]) if "p25_s" in t and "p75_s" in t else (t["min_s"], t["max_s"])
        rel.append((hi - lo) / 2 / max(t["median_s"], TIME_FLOOR_S))
    return float(np.median(rel)) if rel else 0.0


@dataclass(frozen=True)
class Finding:
    """A cross-node fit that leaves its inter-node phase under INTER_FLOOR of its time (see the docstring)."""
    cross: ProbedFit
    intra: ProbedFit
    ratio: float        # the intra-node phase alone at the intra-node link / the fit's time, per byte
    noise: float        # the two entries' relative noises added

    @property
    def gross(self) -> bool:
        return self.ratio > max(GROSS_RATIO, 1.0 + self.noise)

    def message(self, b_node_gbps: float | None = None) -> str:
        """One line naming both entries; for a warning, what the model does with the entry (its B_node)."""
        f = self.cross
        how = (f"its intra-node phase over {f.topo.per_node} ranks alone, at the intra-node link of "
               f"{self.intra.describe()}, would take {self.ratio:.3f}x its measured time"
               + (" (cross-node faster than intra-node)" if self.ratio > 1.0 else ""))
        noise = f"the two entries' measurement noise (+-{self.noise:.1%})"
        if self.gross:
            return (f"{f.path}: in the cross-node fit {f.describe(path=False)} {how}; expected at most "
                    f"{GROSS_RATIO:g}x (no algorithm beats a ring by more than in-network reduction's factor 2) or "
                    f"within {noise}: re-probe the cluster, or correct the entry's layout and stride")
        within = (f"within {noise}" if self.ratio <= 1.0 + self.noise
                  else f"beyond {noise}, under the {GROSS_RATIO:g}x error limit")
        after = f" ({b_node_gbps:.4g} GB/s per node from this entry)" if b_node_gbps else ""
        return (f"in the cross-node fit {f.describe()} {how}, {within}; its inter-node phase is taken as "
                f"{INTER_FLOOR:.0%} of its time{after} and the op's inter-node link is the median over its "
                f"cross-node entries")


def intra_share(fit: ProbedFit, intra: ProbedFit | None) -> float:
    """r of the docstring: the time per byte of the cross-node fit's intra-node phase alone at the intra-node link
    `intra`, over the fit's own; 0 for a group of one rank per node (no intra-node phase)."""
    if intra is None or fit.topo.per_node < 2:
        return 0.0
    w_in, _ = _w_hier(fit.op, fit.topo)
    return float(w_in * intra.ab.per_byte_s() / (wire_factor(fit.op, fit.topo.n) * fit.ab.per_byte_s()))


def cross_node_finding(fit: ProbedFit, intra: ProbedFit | None) -> Finding | None:
    """The finding of a cross-node fit against the intra-node fit its intra-node phase runs at, or None when its
    inter-node phase takes at least INTER_FLOOR of its time (groups of one rank per node are never compared)."""
    ratio = intra_share(fit, intra)
    return Finding(fit, intra, ratio, fit.noise + intra.noise) if ratio > 1.0 - INTER_FLOOR else None


def fill_unidentified(fits: list[ProbedFit]) -> None:
    """A fit whose sweep never left the latency-bound regime would claim an unbounded bandwidth. It takes the
    median bandwidth of the identified fits of the same kind of link (intra-node or cross-node) and refits its
    latency; with none, time proportional to bytes (alpha 0), an upper bound at the probed sizes."""
    for f in fits:
        if f.identified:
            continue
        same = [g.ab.bandwidth_gbps for g in fits if g.identified and g.topo.crosses == f.topo.crosses]
        if same:
            f.ab, f.quality = refit_alpha(f.x, f.t, float(np.median(same)))
            f.method = ("bandwidth not identifiable from the sweep (latency-bound): median bandwidth of the "
                        "identified fits of the same link, latency refitted")
        else:
            beta = float(np.mean(f.t / f.x))
            f.ab, f.quality = AlphaBeta(0.0, 1.0 / (beta * 1e9)), quality(beta * f.x, f.t)
            f.method = "bandwidth not identifiable from the sweep (latency-bound): time proportional to bytes"


@dataclass
class _Links:
    intra: list = field(default_factory=list)     # [ProbedFit] intra-node fits
    b_node: float | None = None                   # bytes/s one node moves off-node
    a_inter: float | None = None                  # s per inter-node step


def _w_hier(op: str, topo: Topology) -> tuple[float, float]:
    k, m, n = topo.per_node, topo.nodes, topo.n
    if op == "all_to_all":
        return (k - 1) / n, k * (m - 1) / m
    f = 2.0 if op == "all_reduce" else 1.0
    return f * (k - 1) / k, f * (m - 1) / m


class CommModel:
    """Alpha-beta of any collective/p2p topology on the target cluster, from one hardware-profile.

    ``notes``: the list the model's warnings and bounds are appended to (a cost model's notes); each warning is
    printed on stderr too. A gross inconsistency raises DocumentError naming ``source`` (see the docstring)."""

    def __init__(self, hardware_profile: dict, source: str = "hardware-profile", notes: list[str] | None = None):
        self.source = source
        self.notes = [] if notes is None else notes
        cl = hardware_profile["cluster"]
        self.profile_nodes, self.profile_gpn = cl["nodes"], cl["gpus_per_node"]
        world = cl["world_size"]
        self.probed: list[ProbedFit] = []
        self.exact: dict[tuple[str, Topology], ProbedFit] = {}
        for i, entry in enumerate(hardware_profile["collectives"]):
            op, n = entry["op"], entry["group_size"]
            x = np.array([p["message_bytes"] for p in entry["points"]], float) * wire_factor(op, n)
            t = np.array([p["time"]["median_s"] for p in entry["points"]], float)
            ab, q = fit_alpha_beta(x, t)
            try:
                groups = strided_groups(world, n, entry["stride"], entry["concurrent_groups"])
                topo = groups_topology(groups, self.profile_gpn)
            except ValueError:
                raise DocumentError(source, f"$.collectives[{i}]: a group of {n} with stride {entry['stride']} "
                                            f"does not tile the {world} ranks of the profiled cluster") from None
            self.probed.append(ProbedFit(op, topo, entry["layout"], entry["stride"], ab, q, len(t), x, t, index=i,
                                         spread=points_spread(entry["points"])))
        fill_unidentified(self.probed)
        for fit in self.probed:
            key = (fit.op, fit.topo)
            if key not in self.exact or fit.points > self.exact[key].points:
                self.exact[key] = fit
        self.links = {op: _Links() for op in OPS}
        for f in self.probed:
            if not f.topo.crosses:
                self.links[f.op].intra.append(f)
        self._inter_links()
        self._p2p_fits(hardware_profile, world)

    def _inter_links(self) -> None:
        """B_node and a_inter of every op from its cross-node fits (medians), checking each against the intra-node
        link first: warnings for the fits whose inter-node phase is floored, one error for all gross ones."""
        gross, warned = [], []
        for op in OPS:
            est_b, est_a = [], []
            for f in self.probed:
                if f.op != op or not f.topo.crosses:
                    continue
                intra = self._nearest_intra(op, f.topo.per_node) if f.topo.per_node > 1 else None
                _, w_out = _w_hier(op, f.topo)
                per_byte = wire_factor(op, f.topo.n) * f.ab.per_byte_s()
                inter_part = max(1.0 - intra_share(f, intra), INTER_FLOOR) * per_byte
                est_b.append(f.topo.sharing * w_out / inter_part)
                finding = cross_node_finding(f, intra)
                if finding is not None:
                    (gross if finding.gross else warned).append((finding, est_b[-1] / 1e9))
                a_in = latency_steps(op, f.topo.per_node) * self._a_intra(op, f.topo.per_node) if intra else 0.0
                est_a.append(max(f.ab.alpha_s - a_in, 0.0) / latency_steps(op, f.topo.nodes))
            if est_b:
                self.links[op].b_node, self.links[op].a_inter = float(np.median(est_b)), float(np.median(est_a))
        if gross:
            raise DocumentError(self.source, [finding.message() for finding, _ in gross])
        for finding, b_node_gbps in warned:
            self._warn(finding.message(b_node_gbps))
        have_b = [lk.b_node for lk in self.links.values() if lk.b_node is not None]
        have_a = [lk.a_inter for lk in self.links.values() if lk.a_inter is not None]
        for lk in self.links.values():
            if lk.b_node is None and have_b:
                lk.b_node, lk.a_inter = float(np.median(have_b)), float(np.median(have_a))

    def _warn(self, message: str) -> None:
        """A warning naming the profile, on stderr and in the notes."""
        note = f"{self.source}: {message}"
        print(f"warning: {note}", file=sys.stderr)
        self.notes.append(note)

    # intra-node link of an op, from the probed fit of the nearest group size (borrowing other ops if none)
    def _nearest_intra(self, op: str, n: int) -> ProbedFit | None:
        cands = self.links[op].intra or [c for o in OPS for c in self.links[o].intra]
        if not cands:
            return None
        return min(cands, key=lambda c: (abs(math.log2(c.topo.n) - math.log2(max(n, 1))), -c.topo.n))

    def _intra(self, op: str, n: int) -> AlphaBeta | None:
        c = self._nearest_intra(op, n)
        return None if c is None else c.ab

    def _a_intra(self, op: str, n: int) -> float:
        """Per-step latency of the intra-node link (alpha / ring steps of the nearest probed fit)."""
        c = self._nearest_intra(op, n)
        return c.ab.alpha_s / latency_steps(c.op, c.topo.n)

    def collective(self, op: str, topo: Topology, what: str = "") -> tuple[AlphaBeta, bool, str]:
        """(alpha-beta, extrapolated, method) of `op` over a group with this topology."""
        hit = self.exact.get((op, topo))
        if hit is not None:
            return hit.ab, False, "probed fit of the same topology"
        if not topo.crosses:        # inside a node only the group size matters (no shared inter-node link)
            same = [f for f in self.probed if f.op == op and not f.topo.crosses and f.topo.n == topo.n]
            if same:
                f = min(same, key=lambda f: abs(f.topo.sharing - topo.sharing))
                return f.ab, False, "probed fit of the same group size within a node"
        intra = self._intra(op, topo.per_node if topo.crosses else topo.n)
        if intra is None and (not topo.crosses or topo.per_node > 1):
            raise DocumentError(self.source, f"$.collectives: cannot derive {op} over {topo.describe()}"
                                             f"{what}: the profile has no intra-node group to derive the intra-node "
                                             f"link from (probe a cluster with more than one rank per node)")
        if not topo.crosses:
            a = latency_steps(op, topo.n) * self._a_intra(op, topo.n)
            return AlphaBeta(a, intra.bandwidth_gbps), True, "hierarchical model: intra-node link"
        links = self.links[op]
        if links.b_node is None:
            raise DocumentError(self.source, f"$.collectives: cannot derive {op} over {topo.describe()}{what}: "
                                             f"the profile has no group that crosses nodes (profiled "
                                             f"{self.profile_nodes} node(s)); probe at least 2 nodes")
        w_in, w_out = _w_hier(op, topo)
        per_byte = (w_in * intra.per_byte_s() if topo.per_node > 1 else 0.0) + topo.sharing * w_out / links.b_node
        bw = wire_factor(op, topo.n) / per_byte / 1e9
        a = (latency_steps(op, topo.per_node) * self._a_intra(op, topo.per_node) if topo.per_node > 1 else 0.0) \
            + latency_steps(op, topo.nodes) * links.a_inter
        return AlphaBeta(a, bw), True, "hierarchical model: intra-node phase + inter-node link shared per node"

    # --- p2p ---
    def _p2p_fits(self, hardware_profile: dict, world: int) -> None:
        self.p2p_probed: list[tuple[int, Topology, AlphaBeta, dict]] = []
        self.p2p_exact: dict[Topology, AlphaBeta] = {}
        self.p2p_by_distance: dict[tuple[Topology, int], tuple[AlphaBeta, dict]] = {}
        for entry in hardware_profile["p2p"]:
            pp = entry["pp_degree"]
            dist = world // pp
            x = np.array([p["message_bytes"] for p in entry["points"]], float)
            t = np.array([p["time"]["median_s"] for p in entry["points"]], float)
            ab, q = fit_alpha_beta(x, t)
            if ab.per_byte_s() * x.max() < 0.05 * ab.time(x.max()):       # latency-bound sweep: see above
                beta = float(np.mean(t / x))
                ab, q = AlphaBeta(0.0, 1.0 / (beta * 1e9)), quality(beta * x, t)
            # the probed boundary: the first whose node crossing matches the profile's flag
            pairs = min(entry["concurrent_pairs"], dist)
            topos = [p2p_topology(np.array(stage_ranks(world, pp, k)[:pairs]), dist, self.profile_gpn)
                     for k in range(pp - 1)]
            topo = next((t for t in topos if t.crosses == entry["crosses_nodes"]), topos[0])
            self.p2p_probed.append((pp, topo, ab, q))
            self.p2p_exact.setdefault(topo, ab)
            self.p2p_by_distance[(topo, dist)] = (ab, q)
        intra = [ab for _, topo, ab, _ in self.p2p_probed if not topo.crosses]
        cross = [(topo, ab) for _, topo, ab, _ in self.p2p_probed if topo.crosses]
        self.p2p_intra = AlphaBeta(float(np.median([a.alpha_s for a in intra])),
                                   float(np.median([a.bandwidth_gbps for a in intra]))) if intra else None
        if cross:
            self.p2p_b_node = float(np.median([ab.bandwidth_gbps * 1e9 * t.sharing for t, ab in cross]))
            self.p2p_a_inter = float(np.median([ab.alpha_s for _, ab in cross]))
        else:
            self.p2p_b_node = self.p2p_a_inter = None

    def p2p(self, topo: Topology, what: str = "", distance: int | None = None) -> tuple[AlphaBeta, bool, str]:
        """(alpha-beta, extrapolated, method) of pipeline sends with this topology (pairs `distance` apart)."""
        if (topo, distance) in self.p2p_by_distance:
            return self.p2p_by_distance[(topo, distance)][0], False, "probed fit of the same boundary"
        hit = self.p2p_exact.get(topo)
        if hit is not None:
            return hit, False, "probed fit of the same topology"
        intra = self.p2p_intra
        intra_method = "intra-node p2p link"
        if intra is None:       # a 2-rank intra-node all_gather is one send of M/2 each way: the same link
            ag = self._intra("all_gather", 2)
            if ag is not None:
                intra, intra_method = AlphaBeta(self._a_intra("all_gather", 2), ag.bandwidth_gbps), \
                    "intra-node link of the 2-rank all_gather"
        if not topo.crosses:
            if intra is None:
                raise DocumentError(self.source, f"$.p2p: cannot derive p2p inside a node{what}: the profile has "
                                                 f"no intra-node p2p or collective to derive it from")
            return intra, True, f"hierarchical model: {intra_method}"
        b_node, a_inter, how = self.p2p_b_node, self.p2p_a_inter, "inter-node p2p link shared per node"
        if b_node is None:
            links = self.links["all_gather"]
            if links.b_node is None:
                raise DocumentError(self.source, f"$.p2p: cannot derive p2p across nodes{what}: the profile has "
                                                 f"no measurement that crosses nodes (profiled "
                                                 f"{self.profile_nodes} node(s))")
            b_node, a_inter, how = links.b_node, links.a_inter, "inter-node link of the collectives shared per node"
        bw = b_node / topo.sharing / 1e9
        if intra is not None and bw > intra.bandwidth_gbps:
            note = (f"p2p across nodes{what}: the inter-node link's share ({bw:.4g} GB/s) exceeds the intra-node "
                    f"p2p link; capped at its {intra.bandwidth_gbps:.4g} GB/s (a bound of the model)")
            if note not in self.notes:
                self.notes.append(note)
            return AlphaBeta(a_inter, intra.bandwidth_gbps), True, f"hierarchical model: {how}, capped at the " \
                                                                   f"{intra_method}"
        return AlphaBeta(a_inter, bw), True, f"hierarchical model: {how}"
