"""Alpha-beta fits, rank-group topology and the hierarchical extrapolation, against closed forms."""
import numpy as np
import pytest
import synthetic

from galvatron_contracts.documents import DocumentError
from galvatron_cost.comm import (
    CommModel,
    Topology,
    fit_alpha_beta,
    groups_topology,
    latency_steps,
    p2p_topology,
    strided_groups,
    wire_factor,
)


def test_ring_volumes():
    # all_reduce of M over n ranks: reduce-scatter + all-gather, each (n-1)/n of M on the wire per rank
    assert wire_factor("all_reduce", 4) * 1000 == pytest.approx(1500.0)
    assert wire_factor("all_gather", 4) * 1000 == pytest.approx(750.0)
    assert wire_factor("reduce_scatter", 8) == pytest.approx(7 / 8)
    assert wire_factor("all_reduce", 2) == pytest.approx(1.0)
    assert latency_steps("all_reduce", 8) == 14 and latency_steps("all_gather", 8) == 7


def test_fit_recovers_alpha_beta_from_noisy_points():
    rng = np.random.default_rng(1)
    alpha, bw = 30e-6, 12e9
    x = np.repeat(2.0 ** np.arange(10, 28, 2), 3)
    t = (alpha + x / bw) * np.exp(rng.normal(0, 0.05, x.size))
    ab, q = fit_alpha_beta(x, t)
    assert ab.alpha_s == pytest.approx(alpha, rel=0.1)
    assert ab.bandwidth_gbps == pytest.approx(bw / 1e9, rel=0.05)
    assert q["points"] == x.size and q["r2"] > 0.99 and 0 < q["median_rel_residual"] < 0.1


def test_fit_is_robust_to_one_slow_repeat():
    x = 2.0 ** np.arange(10, 28, 2)
    t = 10e-6 + x / 5e9
    t[3] *= 4                                     # one straggler
    ab, q = fit_alpha_beta(x, t)
    assert ab.bandwidth_gbps == pytest.approx(5.0, rel=0.02)
    assert ab.alpha_s == pytest.approx(10e-6, rel=0.1)
    assert q["max_rel_residual"] > 0.5           # the straggler shows in the residuals


def test_fit_keeps_alpha_non_negative_and_bandwidth_finite():
    x = np.array([1e3, 1e4, 1e5])
    ab, _ = fit_alpha_beta(x, x / 1e9 - 1e-7 * np.array([0, 1, 1]))   # would want a negative intercept
    assert ab.alpha_s >= 0 and np.isfinite(ab.bandwidth_gbps) and ab.bandwidth_gbps > 0
    ab, _ = fit_alpha_beta([4096], [1e-3])                                # one size: bandwidth only
    assert ab.alpha_s == 0 and ab.bandwidth_gbps == pytest.approx(4096 / 1e-3 / 1e9)


def test_group_topology_by_hand():
    # 2 nodes x 8: strided pairs (stride 8) -> every pair crosses, 8 pairs leave each node at once
    assert groups_topology(strided_groups(16, 2, 8), 8) == Topology(2, 2, 1, 8)
    # the 16 ranks: 2 nodes with 8 each, one group
    assert groups_topology(strided_groups(16, 16, 1), 8) == Topology(16, 2, 8, 1)
    # groups of 4 with stride 4 on 16 ranks: {0,4,8,12}: 2 per node on 2 nodes, 4 such groups share a node
    assert strided_groups(16, 4, 4)[1].tolist() == [1, 5, 9, 13]
    assert groups_topology(strided_groups(16, 4, 4), 8) == Topology(4, 2, 2, 4)
    # consecutive groups of 4 within 8-rank nodes: intra-node, two groups per node
    assert groups_topology(strided_groups(16, 4, 1), 8) == Topology(4, 1, 4, 2)
    # p2p pipeline neighbours 8 apart on 2x8: all 8 senders of node 0 cross
    assert p2p_topology(np.arange(8), 8, 8) == Topology(2, 2, 1, 8)
    assert not p2p_topology(np.arange(4), 4, 8).crosses


def test_probed_topology_is_reused_unchanged():
    hw = synthetic.hardware_profile(2, 8)
    model = CommModel(hw)
    ab, extrap, _ = model.collective("all_reduce", Topology(16, 2, 8, 1))
    truth = synthetic.true_collective_time("all_reduce", 16, 2, 8, 1, 1 << 26)
    assert not extrap
    assert ab.time(wire_factor("all_reduce", 16) * (1 << 26)) == pytest.approx(truth, rel=1e-6)


def test_hierarchical_extrapolation_to_128_nodes_closed_form():
    links = synthetic.LINKS
    model = CommModel(synthetic.hardware_profile(2, 8))
    # dp group of a consecutive tp=8 layout on 128 x 8: one rank per node, 128 nodes, 8 groups leave each node
    ab, extrap, _ = model.collective("all_reduce", Topology(128, 128, 1, 8))
    assert extrap
    # time/M = 8 * 2(127/128) / B_node; bus bandwidth = 2(127/128) / (time/M) = B_node / 8
    assert ab.bandwidth_gbps == pytest.approx(links["b_node"] / 8 / 1e9, rel=1e-4)
    assert ab.alpha_s == pytest.approx(2 * 127 * links["a_inter"], rel=1e-4)
    # a whole-cluster group: 1024 ranks, 8 per node: intra phase then inter phase of 1/8 of the data per rank
    ab, _, _ = model.collective("all_gather", Topology(1024, 128, 8, 1))
    per_byte = (7 / 8) / links["bw_intra"] + (127 / 128) / links["b_node"]
    assert ab.bandwidth_gbps == pytest.approx((1023 / 1024) / per_byte / 1e9, rel=1e-4)
    assert ab.alpha_s == pytest.approx(7 * links["a_intra"] + 127 * links["a_inter"], rel=1e-4)


def test_unprobed_intra_group_size_uses_nearest_link():
    model = CommModel(synthetic.hardware_profile(1, 4))
    ab, extrap, _ = model.collective("all_reduce", Topology(8, 1, 8, 1))
    assert extrap
    assert ab.bandwidth_gbps == pytest.approx(synthetic.LINKS["bw_intra"] / 1e9, rel=1e-4)
    assert ab.alpha_s == pytest.approx(14 * synthetic.LINKS["a_intra"], rel=1e-4)


def test_cross_node_from_a_single_node_profile_is_refused():
    model = CommModel(synthetic.hardware_profile(1, 4))
    with pytest.raises(DocumentError, match="no group that crosses nodes"):
        model.collective("all_reduce", Topology(8, 2, 4, 1))
    with pytest.raises(DocumentError, match="across nodes"):
        model.p2p(Topology(2, 2, 1, 4))


def test_p2p_extrapolation_shares_the_node_link():
    links = synthetic.LINKS
    model = CommModel(synthetic.hardware_profile(2, 8))
    ab, extrap, _ = model.p2p(Topology(2, 2, 1, 8))            # the probed pp=2 boundary: reused
    assert not extrap and ab.bandwidth_gbps == pytest.approx(links["p2p_node"] / 8 / 1e9, rel=1e-4)
    ab, extrap, _ = model.p2p(Topology(2, 2, 1, 1))            # one pair crossing: the whole node link, capped
    assert extrap
    assert ab.bandwidth_gbps == pytest.approx(min(links["p2p_node"], links["p2p_intra"]) / 1e9, rel=1e-4)


def test_latency_bound_sweep_borrows_the_link_bandwidth():
    # reduce_scatter of 2 measured flat (noise swamped the transfer): no unbounded bandwidth, the link's instead
    hw = synthetic.hardware_profile(1, 4)
    flat = next(c for c in hw["collectives"] if c["op"] == "reduce_scatter" and c["group_size"] == 2)
    for p in flat["points"]:
        p["time"]["median_s"] = 1e-3
    model = CommModel(hw)
    fit = next(f for f in model.probed if f.op == "reduce_scatter" and f.topo.n == 2 and f.layout == "consecutive")
    assert "not identifiable" in fit.method
    assert fit.ab.bandwidth_gbps == pytest.approx(synthetic.LINKS["bw_intra"] / 1e9, rel=1e-3)
    assert fit.ab.alpha_s < 1e-3
