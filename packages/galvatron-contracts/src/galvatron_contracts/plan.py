"""The typed plan and every check of a plan document, each fault with one exit code.

    plan = Plan.parse(doc, "plan.json")         # DocumentError (exit 3) listing every fault, else the typed plan
    check_world(plan, world_size, "plan.json")   # InfeasibleError (exit 4) when the plan is for another world
    stage = plan.stages[1]
    stage.layouts[0].groups(stage.ranks)         # (tp_groups, dp_groups), by ranks.rank_groups

Exit 3 (``plan_errors``, ``Plan.parse``): the plan is wrong in any world.
  - its own sums: world_size = nodes * gpus_per_node, global_batch = micro_batch_size * micro_batches, one
    strategy per decoder layer, a pipeline degree dividing world_size;
  - the rank convention (ranks.py): stage indices and ranks, layer ranges covering the layers in order, each
    listed layout's tp * dp, tp_layout and written-out groups, no layout listed twice;
  - every strategy (decoder layers, embedding, head): tp * dp = the stage's ranks, tp_layout 'consecutive' when
    tp is 1 or the stage size, its layout listed by its stage, sp only with tp > 1, micro_batch_size divisible by
    dp, seq_len divisible by tp under sp;
  - what the model allows: a decoder's tp divides heads, kv_heads and ffn_hidden; an embedding's or head's tp
    leaves every tp rank a part of the vocabulary (``vocab_shard``); seq_len <= max_seq_len;
  - the schedule: 1f1b over pp stages needs micro_batches >= pp;
  - tied embeddings in one stage: the head has the embedding's tp, tp_layout and dp_sharding (one weight).
Exit 4 (``check_world``): a sound plan for another world: its world_size is not that of the launch.

Every plan a tool reads or writes passes ``plan_errors`` (documents.semantic_errors), so a plan from ``read_one``
has passed them already; ``Plan.parse`` checks a plan dict a tool built or changed (documents.semantic_errors: the
count bounds of limits.py first, then the model spec and ``plan_errors``), and types it.
"""
from __future__ import annotations

import copy
import functools
from dataclasses import dataclass, field

from .ranks import canonical_layout, local_coords, rank_groups, stage_ranks

# documents.py imports plan_errors from here (its semantic checks), so the errors are imported where raised.


@dataclass(frozen=True)
class Layout:
    """One arrangement of a stage's tp * dp ranks into tp groups and dp groups (ranks.py's convention)."""

    tp: int
    tp_layout: str
    dp: int

    @property
    def size(self) -> int:
        return self.tp * self.dp

    def coords(self, j: int) -> tuple[int, int]:
        """(tp_rank, dp_rank) of the stage's local index j."""
        return local_coords(j, self.size, self.tp, self.tp_layout)

    def index(self, tp_rank: int, dp_rank: int) -> int:
        """The local index at (tp_rank, dp_rank)."""
        return _local_grid(self.tp, self.tp_layout, self.dp)[dp_rank][tp_rank]

    def groups(self, ranks) -> tuple[list[list[int]], list[list[int]]]:
        """(tp_groups, dp_groups) of a stage holding these global ranks."""
        return rank_groups(ranks, self.tp, self.tp_layout)

    def mesh(self, base: int) -> list[list[int]]:
        """The global ranks of a stage starting at ``base`` as a [dp][tp] grid (its tp_groups)."""
        return self.groups(range(base, base + self.size))[0]


@functools.cache
def _local_grid(tp: int, tp_layout: str, dp: int) -> tuple[tuple[int, ...], ...]:
    return tuple(map(tuple, rank_groups(range(tp * dp), tp, tp_layout)[0]))


@dataclass(frozen=True)
class Strategy:
    """How one layer (a decoder layer, the embedding or the head) runs."""

    tp: int
    tp_layout: str
    sp: bool
    dp: int
    dp_sharding: str
    recompute: bool

    @property
    def layout(self) -> Layout:
        return Layout(self.tp, self.tp_layout, self.dp)


@dataclass(frozen=True)
class Stage:
    """Pipeline stage ``index``: its global ranks, its decoder layers [layer_start, layer_end), its layouts."""

    index: int
    ranks: tuple[int, ...]
    layer_start: int
    layer_end: int
    layouts: tuple[Layout, ...]

    @property
    def layers(self) -> range:
        return range(self.layer_start, self.layer_end)


@dataclass(frozen=True)
class Plan:
    """A checked plan. ``model`` is the model spec and ``document`` the plan document itself (a private copy)."""

    source: str
    model: dict
    nodes: int
    gpus_per_node: int
    world_size: int
    seq_len: int
    dtype: str
    global_batch: int
    micro_batch_size: int
    micro_batches: int
    schedule: str
    stages: tuple[Stage, ...]
    layers: tuple[Strategy, ...]
    embedding: Strategy
    head: Strategy
    document: dict = field(repr=False, compare=False)

    @property
    def pp(self) -> int:
        return len(self.stages)

    @property
    def stage_size(self) -> int:
        return self.world_size // self.pp

    def strategies(self) -> list[tuple[str, Strategy]]:
        """(path, strategy) of the embedding, every decoder layer and the head, paths as in the document."""
        return ([("embedding", self.embedding)] + [(f"layers[{i}]", s) for i, s in enumerate(self.layers)]
                + [("head", self.head)])

    @classmethod
    def parse(cls, doc: dict, source: str = "plan") -> Plan:
        """The typed plan of a schema-valid plan document; DocumentError (exit 3) naming every fault."""
        from .documents import DocumentError, semantic_errors

        errors = semantic_errors(doc)
        if errors:
            raise DocumentError(source, errors)
        doc = copy.deepcopy(doc)
        cluster, training = doc["cluster"], doc["training"]
        stages = tuple(Stage(st["index"], tuple(st["ranks"]), st["layer_start"], st["layer_end"],
                             tuple(Layout(lay["tp"], lay["tp_layout"], lay["dp"]) for lay in st["layouts"]))
                       for st in doc["stages"])
        return cls(source=source, model=doc["model"], nodes=cluster["nodes"], gpus_per_node=cluster["gpus_per_node"],
                   world_size=cluster["world_size"], seq_len=training["seq_len"], dtype=training["dtype"],
                   global_batch=doc["global_batch"], micro_batch_size=doc["micro_batch_size"],
                   micro_batches=doc["micro_batches"], schedule=doc["schedule"], stages=stages,
                   layers=tuple(_strategy(s) for s in doc["layers"]), embedding=_strategy(doc["embedding"]),
                   head=_strategy(doc["head"]), document=doc)


def _strategy(s: dict) -> Strategy:
    return Strategy(s["tp"], s["tp_layout"], bool(s["sp"]), s["dp"], s["dp_sharding"], bool(s["recompute"]))


def check_world(plan: Plan, world_size: int, source: str = "plan", world: str = "this world") -> None:
    """InfeasibleError (exit 4) unless the plan is for ``world_size`` ranks (``world`` names where they are)."""
    from .documents import InfeasibleError

    if plan.world_size != world_size:
        raise InfeasibleError(f"{source}: $.cluster.world_size: the plan is for {plan.world_size} ranks, "
                              f"{world} has {world_size}")


def vocab_shard(vocab: int, tp: int, tp_rank: int) -> tuple[int, int]:
    """(first id, count) of a vocabulary-parallel shard: torch.chunk's split, as DTensor's Shard(0) cuts it."""
    step = -(-vocab // tp)
    start = min(tp_rank * step, vocab)
    return start, min(step, vocab - start)


# --- the checks ------------------------------------------------------------------------------------------------

def plan_errors(plan: dict) -> list[str]:
    """Every fault of a schema-valid plan document (with a sound model spec) as '$.path: message', in stage order.

    The faults are those of the module docstring's exit 3; the world size of a launch is ``check_world``'s."""
    errors: list[str] = []
    spec, cluster, stages, n_layers = plan["model"], plan["cluster"], plan["stages"], plan["model"]["layers"]
    world, pp = cluster["world_size"], len(stages)
    if cluster["nodes"] * cluster["gpus_per_node"] != world:
        errors.append(f"$.cluster.world_size: expected nodes * gpus_per_node = "
                      f"{cluster['nodes'] * cluster['gpus_per_node']}, got {world}")
    if plan["micro_batch_size"] * plan["micro_batches"] != plan["global_batch"]:
        errors.append(f"$.global_batch: expected micro_batch_size * micro_batches = "
                      f"{plan['micro_batch_size'] * plan['micro_batches']}, got {plan['global_batch']}")
    if len(plan["layers"]) != n_layers:
        errors.append(f"$.layers: expected one strategy per decoder layer ({n_layers}), got {len(plan['layers'])}")
    if plan["training"]["seq_len"] > spec["max_seq_len"]:
        errors.append(f"$.training.seq_len: expected at most the model's max_seq_len {spec['max_seq_len']}, "
                      f"got {plan['training']['seq_len']}")
    if plan["schedule"] == "1f1b" and plan["micro_batches"] < pp:
        errors.append(f"$.micro_batches: 1f1b needs at least as many micro-batches as stages "
                      f"({plan['micro_batches']} < {pp})")
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
        listed: set[tuple[int, str]] = set()
        for i, lay in enumerate(stage["layouts"]):
            errors += _layout_errors(f"{at}.layouts[{i}]", lay, want, listed)
            listed.add((lay["tp"], lay["tp_layout"]))
        used = [("$.embedding", "embedding", plan["embedding"])] if k == 0 else []
        used += [(f"$.layers[{i}]", "decoder", plan["layers"][i])
                 for i in range(stage["layer_start"], min(stage["layer_end"], len(plan["layers"])))]
        used += [("$.head", "head", plan["head"])] if k == pp - 1 else []
        for path, kind, s in used:
            errors += _strategy_errors(path, kind, s, size, listed, plan)
    if expected_start != n_layers:
        errors.append(f"$.stages[{pp - 1}].layer_end: expected the last stage to end at layer {n_layers}, "
                      f"got {expected_start}")
    if pp == 1 and spec["tied_embeddings"]:
        emb, head = plan["embedding"], plan["head"]
        for key in ("tp", "tp_layout", "dp_sharding"):
            if head[key] != emb[key]:
                errors.append(f"$.head.{key}: tied embeddings with one stage share the weight, so expected the "
                              f"embedding's {emb[key]!r}, got {head[key]!r}")
    return errors


def _layout_errors(path: str, lay: dict, ranks: list[int], listed: set) -> list[str]:
    """A stage's listed layout: not listed before, tp * dp its ranks, its tp_layout, its groups by the convention."""
    size = len(ranks)
    if (lay["tp"], lay["tp_layout"]) in listed:
        return [f"{path}: duplicate layout (tp {lay['tp']}, {lay['tp_layout']})"]
    if lay["tp"] * lay["dp"] != size:
        return [f"{path}: expected tp * dp = {size} (the stage's ranks), got {lay['tp']} * {lay['dp']}"]
    errors = []
    if lay["tp_layout"] != canonical_layout(lay["tp"], lay["tp_layout"], size):
        errors.append(f"{path}.tp_layout: expected 'consecutive' when tp is 1 or the stage size, "
                      f"got {lay['tp_layout']!r}")
    tp_groups, dp_groups = Layout(lay["tp"], lay["tp_layout"], lay["dp"]).groups(ranks)
    if lay["tp_groups"] != tp_groups:
        errors.append(f"{path}.tp_groups: expected {tp_groups}, got {lay['tp_groups']}")
    if lay["dp_groups"] != dp_groups:
        errors.append(f"{path}.dp_groups: expected {dp_groups}, got {lay['dp_groups']}")
    return errors


def _strategy_errors(path: str, kind: str, s: dict, size: int, listed: set, plan: dict) -> list[str]:
    """One strategy against its stage (degrees, listed layout), the batch, the sequence and the model."""
    tp, dp, errors = s["tp"], s["dp"], []
    if tp * dp != size:
        errors.append(f"{path}: expected tp * dp = {size} (the stage's ranks), got {tp} * {dp}")
    elif s["tp_layout"] != canonical_layout(tp, s["tp_layout"], size):
        errors.append(f"{path}.tp_layout: expected 'consecutive' when tp is 1 or the stage size, "
                      f"got {s['tp_layout']!r}")
    elif (tp, s["tp_layout"]) not in listed:
        errors.append(f"{path}: layout (tp {tp}, {s['tp_layout']}) is not in its stage's layouts")
    if s["sp"] and tp == 1:
        errors.append(f"{path}.sp: sequence parallelism needs tp > 1")
    if tp * dp != size:  # degrees that are not the stage's: what they would divide is beside the point
        return errors
    b, seq, spec = plan["micro_batch_size"], plan["training"]["seq_len"], plan["model"]
    if b % dp:
        errors.append(f"{path}.dp: micro_batch_size {b} is not divisible by dp {dp}")
    if s["sp"] and tp > 1 and seq % tp:
        errors.append(f"{path}.sp: seq_len {seq} is not divisible by tp {tp}")
    return errors + tp_errors(f"{path}.tp", kind, tp, spec)


def tp_errors(path: str, layer: str, tp: int, spec: dict) -> list[str]:
    """A layer's tp degree against the model (``path`` names it): a decoder's divides heads, kv_heads and
    ffn_hidden; an embedding's or a head's leaves every tp rank a part of the vocabulary (``vocab_shard``)."""
    if layer == "decoder":
        return [f"{path}: the model's {key} {spec[key]} is not divisible by tp {tp}"
                for key in ("heads", "kv_heads", "ffn_hidden") if spec[key] % tp]
    if vocab_shard(spec["vocab_size"], tp, tp - 1)[1] == 0:
        return [f"{path}: vocab_size {spec['vocab_size']} does not split over tp {tp} (shards of "
                f"{-(-spec['vocab_size'] // tp)} leave the last tp rank none)"]
    return []
