"""Layouts follow the shared rank convention; redistribution volumes by hand."""
import pytest

from galvatron_contracts.ranks import local_coords, rank_groups
from galvatron_cost.layouts import Layout, coords, enumerate_layouts, gather_need, local_groups


def test_enumerate_layouts():
    ids = [lay.id for lay in enumerate_layouts(8, 8)]
    assert ids == ["tp1 dp8", "tp2 dp4", "tp2+sp dp4", "tp2s dp4", "tp2s+sp dp4", "tp4 dp2", "tp4+sp dp2", "tp4s dp2",
                   "tp4s+sp dp2", "tp8 dp1", "tp8+sp dp1"]
    assert [lay.id for lay in enumerate_layouts(8, 2)] == ids[:5]
    assert [lay.id for lay in enumerate_layouts(4, 8, lambda t: t <= 2)] == ["tp1 dp4", "tp2 dp2", "tp2+sp dp2",
                                                                             "tp2s dp2", "tp2s+sp dp2"]
    assert all(lay.tp * lay.dp == 8 for lay in enumerate_layouts(8, 8))


@pytest.mark.parametrize("S,tp,tl", [(8, 2, "consecutive"), (8, 2, "strided"), (8, 4, "strided"),
                                     (4, 4, "consecutive")])
def test_coords_and_groups_follow_the_contract(S, tp, tl):
    lay = Layout(tp, tl, False, S // tp)
    tpr, dpr = coords(S, lay)
    assert [(int(a), int(b)) for a, b in zip(tpr, dpr, strict=True)] == [local_coords(j, S, tp, tl) for j in range(S)]
    tp_groups, dp_groups = rank_groups(range(S), tp, tl)
    assert local_groups(S, lay, "tp").tolist() == tp_groups
    assert local_groups(S, lay, "dp").tolist() == dp_groups


def test_batch_all_gather_and_its_mirror():
    # 4 ranks: tp1 (dp4, a quarter of the samples each) -> tp2 consecutive (dp2, half each, replicated in the pair)
    a, b = Layout(1, "consecutive", False, 4), Layout(2, "consecutive", False, 2)
    recv, sources, nodes, cross = gather_need(4, a, b, 0, 4)
    assert recv.tolist() == [0.25] * 4 and sources.tolist() == [1] * 4 and not cross.any()
    recv, *_ = gather_need(4, b, a, 0, 4)                 # backward: each rank slices its own quarter
    assert recv.tolist() == [0.0] * 4


def test_sequence_gather_and_split():
    # tp2 with sp (each rank half the sequence of its half of the samples) -> tp2 without sp: gather the other half
    a, b = Layout(2, "consecutive", True, 2), Layout(2, "consecutive", False, 2)
    recv, sources, _, _ = gather_need(4, a, b, 0, 4)
    assert recv.tolist() == [0.25] * 4 and sources.tolist() == [1] * 4
    recv, *_ = gather_need(4, b, a, 0, 4)
    assert recv.tolist() == [0.0] * 4


def test_layout_permutation_moves_data_both_ways():
    # tp2 consecutive -> tp2 strided on 4 ranks: rank 1 holds samples [0, 1/2) but needs [1/2, 1)
    a, b = Layout(2, "consecutive", False, 2), Layout(2, "strided", False, 2)
    recv, sources, _, _ = gather_need(4, a, b, 0, 4)
    assert recv.tolist() == [0.0, 0.5, 0.5, 0.0]
    assert sources.tolist() == [0, 1, 1, 0]
    recv, *_ = gather_need(4, b, a, 0, 4)
    assert recv.tolist() == [0.0, 0.5, 0.5, 0.0]


def test_sources_on_another_node_are_flagged():
    # 2 nodes x 2: tp1 dp4 -> tp2 strided (dp_rank = j % 2): ranks 0, 2 need samples [0, 1/2), ranks 1, 3 [1/2, 1)
    a, b = Layout(1, "consecutive", False, 4), Layout(2, "strided", False, 2)
    recv, sources, nodes, cross = gather_need(4, a, b, 0, 2)
    # rank 0 holds [0, 1/4): fetches [1/4, 1/2) from rank 1 (same node); rank 1 holds [1/4, 1/2): fetches
    # [1/2, 1) from ranks 2 and 3 (node 1); rank 2 the mirror of rank 1; rank 3 the mirror of rank 0
    assert recv.tolist() == [0.25, 0.5, 0.5, 0.25]
    assert sources.tolist() == [1, 2, 2, 1]
    assert cross.tolist() == [False, True, True, False]
    assert nodes.tolist() == [1, 2, 2, 1]
