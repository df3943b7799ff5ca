"""Closed-form checks of the composition pieces."""
import math

import numpy as np

from galvatron_search._contracts.ranks import rank_groups
from galvatron_search.costs import inflight, overlap, units
from galvatron_search.document import groups
from galvatron_search.planner import even_bounds


def test_overlap_closed_forms():
    assert overlap(3.0, 0.0, 1.2, 1.3) == 3.0                      # nothing to overlap
    assert overlap(3.0, 2.0, 1.0, 1.0) == 3.0                      # ideal overlap: max
    assert overlap(1.0, 2.0, 1.0, 1.0) == 2.0
    # comm 1 s slowed 1.5x ends at 1.5 s; compute did 1.5/1.25 = 1.2 s of 4, 2.8 s left
    assert math.isclose(overlap(4.0, 1.0, 1.25, 1.5), 1.5 + 2.8)
    # compute 1 s slowed 2x ends at 2 s; comm did 2/1.25 = 1.6 s of 5, 3.4 s left
    assert math.isclose(overlap(1.0, 5.0, 2.0, 1.25), 2.0 + 3.4)
    c, k = np.linspace(0, 5, 51), 2.0
    v = overlap(c, k, 1.1, 1.2)
    assert np.all(np.diff(v) >= 0) and np.all(v >= np.maximum(c, k) - 1e-12) and np.all(v <= c + k * 1.2 + 1e-12)


def test_inflight():
    assert [inflight("1f1b", 4, i, 8) for i in range(4)] == [4, 3, 2, 1]
    assert [inflight("1f1b", 4, i, 2) for i in range(4)] == [2, 2, 2, 1]
    assert [inflight("gpipe", 4, i, 8) for i in range(4)] == [8] * 4


def test_units_round_up():
    assert units(100.0, 10, 1000.0) == 1
    assert units(101.0, 10, 1000.0) == 2
    assert units(0.0, 10, 1000.0) == 0


def test_even_bounds():
    assert even_bounds(32, 4) == [0, 8, 16, 24, 32]
    assert even_bounds(10, 4) == [0, 2, 4, 7, 10]


def test_groups_follow_the_convention():
    for tp in (1, 2, 4, 8):
        for layout in ("consecutive", "strided"):
            assert groups(tp, layout, 8, 16) == rank_groups(range(16, 24), tp, layout)
