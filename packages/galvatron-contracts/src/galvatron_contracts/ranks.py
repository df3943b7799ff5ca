"""Rank arithmetic of a plan: the convention every tool follows (schemas/README.md, "Ranks").

Pipeline stage k of pp holds global ranks [k*S, (k+1)*S), S = world_size / pp. Inside a stage, local index j:
tp_layout "consecutive": tp_rank = j % tp, dp_rank = j // tp; "strided": tp_rank = j // dp, dp_rank = j % dp.
A plan writes the groups out: ``tp_groups[d]`` is the tp group of dp_rank d and ``dp_groups[t]`` the dp group of
tp_rank t, each listed in rank order of the other coordinate (tp_rank, resp. dp_rank).

    stage_ranks(16, 2, 1)                   # [8, 9, ..., 15]
    rank_groups(range(8), 2, "strided")     # ([[0, 4], [1, 5], [2, 6], [3, 7]], [[0, 1, 2, 3], [4, 5, 6, 7]])

A plan's checks against this convention (and every other check of a plan) are plan.py's ``plan_errors``.
"""
from __future__ import annotations

from collections.abc import Sequence

LAYOUTS = ("consecutive", "strided")


def stage_ranks(world_size: int, pp: int, k: int) -> list[int]:
    """Global ranks of pipeline stage k (pp spans nodes first: stages are consecutive rank blocks)."""
    size = world_size // pp
    return list(range(k * size, (k + 1) * size))


def canonical_layout(tp: int, tp_layout: str, stage_size: int) -> str:
    """The layout as a plan writes it: tp 1 and tp = stage size have one rank order, written 'consecutive'."""
    return "consecutive" if tp in (1, stage_size) else tp_layout


def local_coords(j: int, stage_size: int, tp: int, tp_layout: str) -> tuple[int, int]:
    """(tp_rank, dp_rank) of local index j in a stage of ``stage_size`` ranks."""
    dp = stage_size // tp
    if tp_layout == "consecutive":
        return j % tp, j // tp
    if tp_layout == "strided":
        return j // dp, j % dp
    raise ValueError(f"tp_layout: expected one of {', '.join(LAYOUTS)}, got {tp_layout!r}")


def rank_groups(ranks: Sequence[int], tp: int, tp_layout: str) -> tuple[list[list[int]], list[list[int]]]:
    """(tp_groups, dp_groups) of a stage's global ``ranks``: tp_groups[d] by tp_rank, dp_groups[t] by dp_rank."""
    ranks = list(ranks)
    if tp < 1 or len(ranks) % tp:
        raise ValueError(f"tp {tp} does not divide the stage's {len(ranks)} ranks")
    dp = len(ranks) // tp
    tp_groups = [[-1] * tp for _ in range(dp)]
    dp_groups = [[-1] * dp for _ in range(tp)]
    for j, rank in enumerate(ranks):
        t, d = local_coords(j, len(ranks), tp, tp_layout)
        tp_groups[d][t] = rank
        dp_groups[t][d] = rank
    return tp_groups, dp_groups


def sample_range(dp_rank: int, dp: int, micro_batch_size: int) -> tuple[int, int]:
    """Samples [start, stop) of a micro-batch that dp_rank runs (micro_batch_size divisible by dp)."""
    share = micro_batch_size // dp
    return dp_rank * share, (dp_rank + 1) * share
