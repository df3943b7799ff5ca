"""Rank arithmetic of the bandwidth probe and the timing statistics (pure functions)."""
import pytest

from galvatron_probe.groups import (
    crosses_nodes,
    default_group_sizes,
    layout_groups,
    layout_stride,
    layouts_for,
    message_sizes,
    p2p_cases,
    pp_boundary_pairs,
)
from galvatron_probe.stats import timing_stats


@pytest.mark.parametrize("world", [2, 4, 8, 12, 16])
def test_every_layout_covers_each_rank_once(world):
    for n in default_group_sizes(world):
        for layout in layouts_for(world, n):
            groups = layout_groups(world, n, layout)
            assert sorted(r for g in groups for r in g) == list(range(world))
            assert all(len(g) == n for g in groups)
            stride = layout_stride(world, n, layout)
            assert all(b - a == stride for g in groups for a, b in zip(g, g[1:], strict=False))


def test_layouts_match_the_training_convention():
    assert layout_groups(8, 2, "consecutive") == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert layout_groups(8, 4, "strided") == [[0, 2, 4, 6], [1, 3, 5, 7]]
    assert layouts_for(8, 8) == ["consecutive"]  # strided with n == world is the same group
    assert default_group_sizes(12) == [2, 4]
    assert default_group_sizes(6) == [2]
    with pytest.raises(ValueError, match="does not divide"):
        layout_groups(8, 3, "consecutive")


def test_crossing_nodes():
    assert not crosses_nodes([0, 1, 2, 3], 4)
    assert crosses_nodes([3, 4], 4)
    # 2 nodes of 8: strided pairs spaced by 8 all cross, consecutive ones never do
    assert all(crosses_nodes(g, 8) for g in layout_groups(16, 2, "strided"))
    assert not any(crosses_nodes(g, 8) for g in layout_groups(16, 2, "consecutive"))


def test_p2p_boundaries_pair_rank_r_with_r_plus_world_over_pp():
    assert pp_boundary_pairs(8, 2, 0) == [(0, 4), (1, 5), (2, 6), (3, 7)]
    assert pp_boundary_pairs(8, 4, 2) == [(4, 6), (5, 7)]
    # 16 ranks on 2 nodes of 8, pp 4: boundary 0 stays inside node 0, boundary 1 crosses
    cases = p2p_cases(16, 4, 8)
    assert [c for c, _ in cases] == [False, True]
    assert cases[1][1] == [(4, 8), (5, 9), (6, 10), (7, 11)]
    assert [c for c, _ in p2p_cases(4, 2, 4)] == [False]


def test_message_sizes():
    assert message_sizes(4096, 65536, 4) == [4096, 16384, 65536]
    assert message_sizes(4096, 40000, 2) == [4096, 8192, 16384, 32768, 40000]
    with pytest.raises(ValueError):
        message_sizes(10, 5)


def test_timing_stats():
    s = timing_stats([4.0, 1.0, 3.0, 2.0, 5.0])
    assert s == {"median_s": 3.0, "min_s": 1.0, "max_s": 5.0, "p25_s": 2.0, "p75_s": 4.0, "repeats": 5}
    with pytest.raises(ValueError):
        timing_stats([])
    with pytest.raises(ValueError):
        timing_stats([float("nan")])
