"""Rank arithmetic of the bandwidth probe (pure functions, no torch).

Layouts follow the training convention (galvatron_contracts.ranks): a *consecutive* group of size n holds adjacent
ranks ``[k*n, (k+1)*n)``; a *strided* group holds ranks spaced by ``world/n``: ``{j, j + world/n, ...}`` (the tp
groups of a one-stage world with tp = n). Nodes hold ``ranks_per_node`` consecutive ranks. Pipeline stage k of pp
holds ranks ``[k*S, (k+1)*S)``, S = world/pp, and rank j of stage k sends to rank j of stage k+1.

    >>> layout_groups(8, 2, "strided")
    [[0, 4], [1, 5], [2, 6], [3, 7]]
"""
from __future__ import annotations

from galvatron_contracts.ranks import rank_groups


def is_power_of_two(n: int) -> bool:
    return n >= 1 and n & (n - 1) == 0


def default_group_sizes(world: int) -> list[int]:
    """Every power of two from 2 up to ``world`` that divides it."""
    return [n for n in (2 ** k for k in range(1, world.bit_length())) if n <= world and world % n == 0]


def layouts_for(world: int, n: int) -> list[str]:
    """The distinct layouts of group size n: strided equals consecutive when n == world, so only one is kept."""
    return ["consecutive"] if n == world else ["consecutive", "strided"]


def layout_stride(world: int, n: int, layout: str) -> int:
    return 1 if layout == "consecutive" else world // n


def layout_groups(world: int, n: int, layout: str) -> list[list[int]]:
    """Every group of size n in ``layout``, each rank in one: the tp groups of tp = n over the whole world."""
    return rank_groups(range(world), n, layout)[0]


def node_of(rank: int, ranks_per_node: int) -> int:
    return rank // ranks_per_node


def crosses_nodes(ranks: list[int], ranks_per_node: int) -> bool:
    return len({node_of(r, ranks_per_node) for r in ranks}) > 1


def pp_degrees(world: int) -> list[int]:
    """Pipeline degrees probed: the powers of two from 2 up to ``world`` that divide it."""
    return default_group_sizes(world)


def pp_boundary_pairs(world: int, pp: int, boundary: int) -> list[tuple[int, int]]:
    """(sender, receiver) of every pair across boundary k (stage k -> k+1): rank r sends to r + world/pp."""
    stage = world // pp
    return [(boundary * stage + j, (boundary + 1) * stage + j) for j in range(stage)]


def p2p_cases(world: int, pp: int, ranks_per_node: int) -> list[tuple[bool, list[tuple[int, int]]]]:
    """One representative boundary per kind: [(crosses_nodes, pairs)], intra-node first.

    All boundaries of one kind move the same data over the same links, so the first of each kind is measured."""
    seen: dict[bool, list[tuple[int, int]]] = {}
    for k in range(pp - 1):
        pairs = pp_boundary_pairs(world, pp, k)
        crossing = any(crosses_nodes([a, b], ranks_per_node) for a, b in pairs)
        seen.setdefault(crossing, pairs)
    return [(c, seen[c]) for c in (False, True) if c in seen]


def message_sizes(min_bytes: int, max_bytes: int, factor: int = 2) -> list[int]:
    """Geometric sweep min, min*factor, ... up to max (max itself always included)."""
    if min_bytes < 1 or max_bytes < min_bytes:
        raise ValueError(f"expected 1 <= min_bytes <= max_bytes, got {min_bytes}, {max_bytes}")
    sizes, m = [], min_bytes
    while m < max_bytes:
        sizes.append(m)
        m *= factor
    sizes.append(max_bytes)
    return sizes
