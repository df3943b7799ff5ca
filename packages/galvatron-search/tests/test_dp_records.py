"""The stage DP's inner steps and its backtracking records against direct references.

The DP keeps, per layer, only the choice that reached each state's minimum (the previous layout, the strategy),
not the layer's full table, and reruns a chosen stage on its one entry or tied class. These tests hold each piece
to the formula it replaces: the broadcast minimum and first argmin over all candidates at once, and the slice of
the full run."""
from __future__ import annotations

import numpy as np
import pytest
from synth import cost_model

from galvatron_search.costs import CostTables
from galvatron_search.planner import INF, Options, _add_layer, _relayout, prepare, stage_dp


def _table(rng, shape, inf_share=0.3):
    """Small integers as floats (so ties happen) with some INF."""
    x = rng.integers(0, 6, size=shape).astype(float)
    x[rng.random(shape) < inf_share] = INF
    return x


@pytest.mark.parametrize("seed", range(8))
def test_relayout_is_the_broadcast_minimum_and_first_argmin(seed):
    rng = np.random.default_rng(seed)
    n_prev, nA = int(rng.integers(1, 5)), int(rng.integers(1, 4))
    X = _table(rng, (n_prev, 7, 3, 2))
    tr = rng.integers(0, 3, size=(n_prev, nA)).astype(float)
    cand = X[:, None] + tr[:, :, None, None, None]                     # (a, j, u, w, e)
    arg = np.zeros((nA, 7, 3, 2), dtype=np.int8)
    Y = _relayout(X, tr, nA, arg)
    assert np.array_equal(Y, cand.min(axis=0))
    assert np.array_equal(_relayout(X, tr, nA), Y)
    finite = np.isfinite(Y)
    assert np.array_equal(arg[finite], cand.argmin(axis=0)[finite])


@pytest.mark.parametrize("seed", range(8))
def test_add_layer_is_the_least_strategy_over_shifted_usage(seed):
    rng = np.random.default_rng(100 + seed)
    nA, U1, W, E, S = int(rng.integers(1, 4)), 9, 3, 2, int(rng.integers(1, 7))
    Y = _table(rng, (nA, U1, W, E))
    dpos = np.sort(rng.integers(0, nA, size=S))                        # strategies grouped by layout, as the DP
    du = rng.integers(0, U1 + 1, size=S)
    w0 = rng.integers(0, W + 1, size=S)
    dc = rng.integers(0, 4, size=S).astype(float)
    arg = np.zeros((nA, U1, W, E), dtype=np.int8)
    Z = _add_layer(Y, du, w0, dc, dpos, arg)
    assert np.array_equal(_add_layer(Y, du, w0, dc, dpos), Z)
    for j, u, w, e in np.ndindex(Z.shape):
        options = [(Y[j, u - du[s], w, e] + dc[s], s) for s in range(S)
                   if dpos[s] == j and du[s] <= u and w0[s] <= w]
        best = min((v for v, _ in options), default=INF)
        assert Z[j, u, w, e] == best
        if np.isfinite(best):
            assert arg[j, u, w, e] == next(s for v, s in options if v == best)


def _sub(seed, p, tied):
    cm = cost_model(seed, gpus_per_node=4, layers=4, tied=tied, max_dec=4, max_ends=6)
    tables = CostTables(cm)
    opts = Options(memory_bytes=2 ** 33, global_batch=8)
    return tables, opts, prepare(tables, opts, p, 2, 8)


def test_one_class_of_stage_zero_is_that_slice_of_the_full_run():
    checked = 0
    for seed in range(30):                                 # the first instances whose tied ends share classes
        tables, opts, sub = _sub(seed, 1, tied=True)
        if sub is None or sub.n_cls < 2:
            continue
        full = stage_dp(sub, 0, "1f1b", opts.memory_bytes, tables.overhead, 32, 4)
        for c in range(sub.n_cls):
            one = stage_dp(sub, 0, "1f1b", opts.memory_bytes, tables.overhead, 32, 4, only_n=4, cls=c)
            assert np.array_equal(one.R[4], full.R[4][[c]])
        checked += 1
        if checked == 4:
            break
    assert checked == 4


@pytest.mark.parametrize("seed", range(6))
def test_one_entry_of_a_later_stage_is_that_slice_of_the_full_run(seed):
    tables, opts, sub = _sub(seed, 2, tied=False)
    if sub is None:
        pytest.skip("no strategies at this micro-batch size")
    full = stage_dp(sub, 1, "1f1b", opts.memory_bytes, tables.overhead, 32, 3)
    if full is None:
        pytest.skip("nothing fits")
    for k, layout in enumerate(sub.active):
        for n in range(1, full.R.shape[0]):
            one = stage_dp(sub, 1, "1f1b", opts.memory_bytes, tables.overhead, 32, n, only_n=n, entry=int(layout))
            assert np.array_equal(one.R[n], full.R[n][[k]])
