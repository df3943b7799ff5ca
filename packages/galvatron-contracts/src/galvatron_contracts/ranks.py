"""Rank arithmetic of a plan: the convention every tool follows (schemas/README.md, "Ranks").

Pipeline stage k of pp holds global ranks [k*S, (k+1)*S), S = world_size / pp. Inside a stage, local index j:
tp_layout "consecutive": tp_rank = j % tp, dp_rank = j // tp; "strided": tp_rank = j // dp, dp_rank = j % dp.
A plan writes the groups out: ``tp_groups[d]`` is the tp group of dp_rank d and ``dp_groups[t]`` the dp group of
tp_rank t, each listed in rank order of the other coordinate (tp_rank, resp. dp_rank).

    stage_ranks(16, 2, 1)                   # [8, 9, ..., 15]
    rank_groups(range(8), 2, "strided")     # ([[0, 4], [1, 5], [2, 6], [3, 7]], [[0, 1, 2, 3], [4, 5, 6, 7]])
    plan_errors(plan)                       # [] when the plan follows the convention
"""
from __future__ import annotations

from collections.abc import Sequence

LAYOUTS = ("consecutive", "strided")


def stage_ranks(world_size: int, pp: int, k: int) -> list[int]:
    """Global ranks of pipeline stage k (pp spans nodes first: stages are consecutive rank blocks)."""
    size = world_size // pp
    return list(range(k * size, (k + 1) * size))


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


def _strategy_errors(path: str, s: dict, size: int, layouts: set) -> list[str]:
    errors = []
    if s["tp"] * s["dp"] != size:
        errors.append(f"{path}: expected tp * dp = {size} (the stage's ranks), got {s['tp']} * {s['dp']}")
    elif s["tp_layout"] != "consecutive" and s["tp"] in (1, size):
        errors.append(f"{path}.tp_layout: expected 'consecutive' when tp is 1 or the stage size, "
                      f"got {s['tp_layout']!r}")
    elif (s["tp"], s["tp_layout"]) not in layouts:
        errors.append(f"{path}: layout (tp {s['tp']}, {s['tp_layout']}) is not in its stage's layouts")
    if s["sp"] and s["tp"] == 1:
        errors.append(f"{path}.sp: sequence parallelism needs tp > 1")
    return errors


def plan_errors(plan: dict) -> list[str]:
    """What a schema-valid plan gets wrong about the convention: stage ranks, layer ranges, groups, degrees.

    Not checked here (the runtime's exit 4, not an invalid document): micro-batch divisible by every dp, the
    world size of the launch."""
    errors: list[str] = []
    cluster, stages, n_layers = plan["cluster"], plan["stages"], plan["model"]["layers"]
    world, pp = cluster["world_size"], len(stages)
    if cluster["nodes"] * cluster["gpus_per_node"] != world:
        errors.append(f"$.cluster.world_size: expected nodes * gpus_per_node = "
                      f"{cluster['nodes'] * cluster['gpus_per_node']}, got {world}")
    if plan["micro_batch_size"] * plan["micro_batches"] != plan["global_batch"]:
        errors.append(f"$.global_batch: expected micro_batch_size * micro_batches = "
                      f"{plan['micro_batch_size'] * plan['micro_batches']}, got {plan['global_batch']}")
    if len(plan["layers"]) != n_layers:
        errors.append(f"$.layers: expected one strategy per decoder layer ({n_layers}), got {len(plan['layers'])}")
    if world % pp:
        errors.append(f"$.stages: expected a pipeline degree dividing world_size {world}, got {pp} stages")
        return errors
    size = world // pp
    expected_start = 0
    for k, stage in enumerate(stages):
        at = f"$.stages[{k}]"
        if stage["index"] != k:
            errors.append(f"{at}.index: expected {k}, got {stage['index']}")
        want = stage_ranks(world, pp, k)
        if stage["ranks"] != want:
            errors.append(f"{at}.ranks: expected {want} (stage k holds [k*S, (k+1)*S)), got {stage['ranks']}")
        if stage["layer_start"] != expected_start:
            errors.append(f"{at}.layer_start: expected {expected_start} (where the previous stage ends), "
                          f"got {stage['layer_start']}")
        if stage["layer_end"] < stage["layer_start"]:
            errors.append(f"{at}.layer_end: expected >= layer_start {stage['layer_start']}, got {stage['layer_end']}")
        expected_start = max(stage["layer_end"], stage["layer_start"])
        seen = set()
        for i, lay in enumerate(stage["layouts"]):
            lat = f"{at}.layouts[{i}]"
            key = (lay["tp"], lay["tp_layout"])
            if key in seen:
                errors.append(f"{lat}: duplicate layout (tp {lay['tp']}, {lay['tp_layout']})")
            seen.add(key)
            if lay["tp"] * lay["dp"] != size:
                errors.append(f"{lat}: expected tp * dp = {size} (the stage's ranks), got {lay['tp']} * {lay['dp']}")
                continue
            if lay["tp_layout"] != "consecutive" and lay["tp"] in (1, size):
                errors.append(f"{lat}.tp_layout: expected 'consecutive' when tp is 1 or the stage size, "
                              f"got {lay['tp_layout']!r}")
            tp_groups, dp_groups = rank_groups(want, lay["tp"], lay["tp_layout"])
            if lay["tp_groups"] != tp_groups:
                errors.append(f"{lat}.tp_groups: expected {tp_groups}, got {lay['tp_groups']}")
            if lay["dp_groups"] != dp_groups:
                errors.append(f"{lat}.dp_groups: expected {dp_groups}, got {lay['dp_groups']}")
        for i in range(stage["layer_start"], min(stage["layer_end"], len(plan["layers"]))):
            errors += _strategy_errors(f"$.layers[{i}]", plan["layers"][i], size, seen)
        if k == 0:
            errors += _strategy_errors("$.embedding", plan["embedding"], size, seen)
        if k == pp - 1:
            errors += _strategy_errors("$.head", plan["head"], size, seen)
    if expected_start != n_layers:
        errors.append(f"$.stages[{pp - 1}].layer_end: expected the last stage to end at layer {n_layers}, "
                      f"got {expected_start}")
    if pp == 1 and plan["model"]["tied_embeddings"]:
        emb, head = plan["embedding"], plan["head"]
        for field in ("tp", "tp_layout", "dp_sharding"):
            if head[field] != emb[field]:
                errors.append(f"$.head.{field}: tied embeddings with one stage share the weight, so expected the "
                              f"embedding's {emb[field]!r}, got {head[field]!r}")
    return errors
