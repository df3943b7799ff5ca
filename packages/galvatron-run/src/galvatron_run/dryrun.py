"""Pre-flight of a plan before a cluster is booked: ``galvatron-run PLAN --dry-run --rank R``.

Rank R of the plan's world, of any size (rank 1023 of a 1,024-GPU plan, on a laptop), is built in this process as
``train.build_state`` builds it up to, not including, materialisation: ``mesh.make_env`` creates every process group
of the plan under torch's "fake" backend (groups that never communicate; nothing here runs a collective), and
``train.build_stage`` builds the stage on the meta device with its tensor parallelism, recompute and FSDP2. Then:

- checks, every fault one line of a DocumentError (exit 3) naming the plan's path:
  groups: for each layout R's stage uses, the tp and dp groups of the device mesh the runtime built, and the
  pipeline group, are the plan's groups holding R, and R sits at the coordinates the rank rule
  (galvatron_contracts.ranks) gives its local index;
  shapes: each parameter's global shape is the unparallelised model's; a DTensor's local shape is what its
  placements give at R's mesh coordinate; its mesh dimensions are its plan entry's tp group and, only where FSDP2
  shards (zero2 / zero3), its dp group; a vocabulary table's rows are the shard the vocabulary-parallel loss
  assumes (``vocab_shard``);
  tie: with tied embeddings over pp > 1 stages, rank j of the first stage and rank j of the last (both are built)
  hold the same shard of the embedding and of its copy when the two ends have one layout (with different layouts
  the runtime sums full gradients instead, and the report says so);
- the model states R will hold, per plan entry and in total, as the run-report's memory.ranks[].accounting
  measures them (bytes of the local storages): a parameter's local shard in fp32, under FSDP2 with dim 0 padded to
  a multiple of dp (FSDP2 allocates the padded shard); its gradient alike (fp32; FSDP2's reduce-scatter output
  holds the padded shards); the optimizer's states counted by stepping ``train.make_optimizer``'s optimizer once
  on meta gradients (AdamW: two fp32 values per element held and a 4-byte step per parameter), nothing allocated;
  beside the plan's prediction for R's stage (predictions.stages[k].memory_bytes_per_rank) with the ratios;
- exit 4 when those states alone exceed the plan's memory budget (search.memory_budget_bytes, else the device's).

    report = dry_run(checked_plan(doc, world), rank=1023)     # DocumentError / InfeasibleError on a fault
    print(format_report(report))
"""
from __future__ import annotations

import contextlib
import math
import sys
import time
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor, Replicate
from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

from galvatron_contracts.documents import DocumentError, InfeasibleError, UsageError
from galvatron_contracts.names import layout_name, strategy_name
from galvatron_models import Decoder

from .parallel import Env, Unit, make_env
from .plan import Layout, Plan, vocab_shard
from .train import DTYPES, build_stage, make_optimizer

VOCAB_TABLES = {"embedding": "tok.weight", "head": "out.weight"}   # galvatron_models' vocabulary-parallel tables
STATES = ("param_bytes", "grad_bytes", "optimizer_bytes")


@dataclass(frozen=True)
class Shard:
    """One parameter as the rank holds it."""

    name: str                      # FQN in the stage (a tied weight of one stage: the embedding's)
    entry: str                     # the plan entry that owns it, e.g. "layers[3]"
    global_shape: tuple[int, ...]
    local_shape: tuple[int, ...]
    placements: str                # e.g. "dp:_S(0, 2) tp:S(0)" (DTensor's short form); "" for a plain tensor
    stored_elements: int           # elements of the storage the runtime allocates (FSDP2: dim 0 padded)
    param_bytes: int
    grad_bytes: int
    optimizer_bytes: int

    @property
    def elements(self) -> int:
        return math.prod(self.local_shape)


@dataclass(frozen=True)
class Place:
    """Where the rank sits in one layout of its stage."""

    layout: str                    # e.g. "tp4 dp16"
    tp_rank: int
    dp_rank: int
    tp_group: list[int]
    dp_group: list[int]


@dataclass
class RankReport:
    """What a dry run of one rank found (``format_report`` prints it)."""

    source: str
    rank: int
    world: int
    stage: int
    pp: int
    local_index: int
    stage_ranks: list[int]
    places: list[Place]
    pipeline_group: list[int]
    shards: list[Shard]
    strategies: dict[str, str]     # plan entry -> strategy name, in forward order
    checked: dict[str, int]        # what was checked: {"groups": n, "parameters": n}
    tie: str
    dtype: str
    optimizer: str
    prediction: dict | None        # predictions.stages[k].memory_bytes_per_rank, when the plan has predictions
    budget: tuple[int, str] | None = None     # (bytes, where the plan says so)
    build_s: float = 0.0

    def total(self, key: str) -> int:
        return sum(getattr(s, key) for s in self.shards)

    def entries(self) -> list[tuple[str, dict]]:
        """[(plan entry, {"elements", "param_bytes", "grad_bytes", "optimizer_bytes"})] in forward order."""
        sums = {name: dict.fromkeys(("elements", *STATES), 0) for name in self.strategies}
        for s in self.shards:
            row = sums[s.entry]
            row["elements"] += s.elements
            for key in STATES:
                row[key] += getattr(s, key)
        return list(sums.items())


# --- building one rank -------------------------------------------------------------------------------------------

@contextlib.contextmanager
def fake_world(rank: int, world: int):
    """torch's fake process group as the default group of this process: rank ``rank`` of ``world`` ranks.

    On leaving, DTensor's sharding-propagation caches are cleared too: they key on a mesh's layout, not on its
    process groups, so the next world (another rank) would get DTensors on this world's meshes, whose groups are
    gone."""
    from torch.distributed.tensor.debug import _clear_sharding_prop_cache
    from torch.testing._internal.distributed.fake_pg import FakeStore  # also registers the "fake" backend

    dist.init_process_group("fake", store=FakeStore(), rank=rank, world_size=world)
    try:
        yield
    finally:
        dist.destroy_process_group()
        _clear_sharding_prop_cache()


def _build(doc: dict) -> tuple[Env, Decoder, list[Unit], dict]:
    """The rank's stage as build_state builds it, before materialisation (inside ``fake_world``)."""
    env = make_env(doc, torch.device("cpu"), timeout_s=60.0)
    model, units, lays, _ = build_stage(doc, env, doc["training"]["seq_len"], DTYPES[doc["training"]["dtype"]])
    return env, model, units, lays


def _tie_weight(model: Decoder) -> torch.Tensor:
    return model.embedding.tok.weight if model.embedding is not None else model.head.out.weight


class ShardKey(NamedTuple):
    """What decides which elements of a parameter a rank holds (a plain tensor: all of them, no mesh)."""

    global_shape: tuple[int, ...]
    local_shape: tuple[int, ...]
    placements: tuple[str, ...]
    mesh_shape: tuple[int, ...]
    coordinate: tuple[int, ...]

    @classmethod
    def of(cls, p: torch.Tensor) -> ShardKey:
        if not isinstance(p, DTensor):
            return cls(tuple(p.shape), tuple(p.shape), (), (), ())
        mesh = p.device_mesh
        return cls(tuple(p.shape), tuple(p.to_local().shape), tuple(map(str, p.placements)), tuple(mesh.shape),
                   tuple(mesh.get_coordinate()))

    def __str__(self) -> str:
        if not self.mesh_shape:
            return f"whole {list(self.global_shape)}"
        return (f"{list(self.local_shape)} of {list(self.global_shape)}, {' '.join(self.placements)} on mesh "
                f"{list(self.mesh_shape)} at {list(self.coordinate)}")


# --- checks ------------------------------------------------------------------------------------------------------

def _group_errors(doc: dict, env: Env, units: list[Unit]) -> tuple[list[str], dict[tuple, Place], list[int], int]:
    """The groups the runtime built for this rank against the plan's; returns (errors, {Layout.key(): place},
    the pipeline group, the number of groups checked)."""
    k, j, rank = env.stage, env.j, env.rank
    used = {u.layout.key() for u in units}
    errors, places, checked = [], {}, 0
    for i, lay_doc in enumerate(doc["stages"][k]["layouts"]):
        lay = Layout(lay_doc["tp"], lay_doc["tp_layout"], False, lay_doc["dp"])
        if lay.key() not in used:           # listed, but no entry of this stage runs in it: the runtime builds none
            continue
        at = f"$.stages[{k}].layouts[{i}]"
        mesh = env.mesh(lay)
        tp_rank, dp_rank = lay.coords(j)
        # tp_groups[d] is the tp group of dp rank d, dp_groups[t] the dp group of tp rank t (ranks.py)
        for dim, listed, index in (("tp", lay_doc["tp_groups"], dp_rank), ("dp", lay_doc["dp_groups"], tp_rank)):
            built = dist.get_process_group_ranks(mesh.get_group(dim))
            want = listed[index] if index < len(listed) else None
            checked += 1
            if built != want:
                errors.append(f"{at}.{dim}_groups: rank {rank}'s {dim} group ({dim}_groups[{index}]) is {want} in "
                              f"the plan, the runtime built {built}")
        coordinate = tuple(mesh.get_coordinate())
        if coordinate != (dp_rank, tp_rank):
            errors.append(f"{at}: rank {rank} (local index {j}) is at tp rank {tp_rank}, dp rank {dp_rank} by the "
                          f"rank rule; the runtime's device mesh puts it at tp rank {coordinate[1]}, dp rank "
                          f"{coordinate[0]}")
        places[lay.key()] = Place(layout_name(lay.tp, lay.tp_layout, False, lay.dp), tp_rank, dp_rank,
                                  dist.get_process_group_ranks(mesh.get_group("tp")),
                                  dist.get_process_group_ranks(mesh.get_group("dp")))
    pipeline = [st["ranks"][j] for st in doc["stages"]]
    group = env.pgs.get(tuple(pipeline))
    built = dist.get_process_group_ranks(group) if group is not None else None
    checked += 1
    if built != pipeline:
        errors.append(f"$.stages[*].ranks[{j}]: rank {rank}'s pipeline group is {pipeline} in the plan, the runtime "
                      f"built {built if built is not None else 'none'}")
    return errors, places, pipeline, checked


def _param_errors(doc: dict, unit: Unit, fqn: str, local_name: str, p: torch.Tensor, reference: tuple[int, ...],
                  places: dict[tuple, Place], rank: int) -> list[str]:
    """One parameter against the model (global shape), its placements (local shape), the plan's groups (its mesh)
    and the vocabulary-parallel loss (a vocabulary table's rows)."""
    at = f"$.{unit.name}"
    errors = []
    if tuple(p.shape) != reference:
        errors.append(f"{at}: {fqn} has global shape {list(p.shape)}, the model's is {list(reference)}")
    if not isinstance(p, DTensor):
        if unit.fsdp:
            errors.append(f"{at}: {fqn} is a plain tensor, but {unit.strategy['dp_sharding']} shards it (FSDP2)")
        return errors
    mesh, local = p.device_mesh, tuple(p.to_local().shape)
    want, _ = compute_local_shape_and_global_offset(p.shape, mesh, p.placements)
    if local != tuple(want):
        errors.append(f"{at}: {fqn} holds a local shard of {list(local)}, its placements {_placements(p)} give "
                      f"{list(want)} at rank {rank}")
    names = mesh.mesh_dim_names or ()
    place = places.get(unit.layout.key())
    for dim, name in enumerate(names):
        built = dist.get_process_group_ranks(mesh.get_group(dim))
        expected = {"tp": place.tp_group, "dp": place.dp_group}.get(name) if place else None
        if built != expected:
            errors.append(f"{at}: {fqn}'s mesh dimension {name!r} is ranks {built}, the plan's {name} group "
                          f"of rank {rank} is {expected}")
    if ("dp" in names) != unit.fsdp:
        errors.append(f"{at}: {fqn} is {'' if 'dp' in names else 'not '}sharded over dp, the strategy's "
                      f"dp_sharding is {unit.strategy['dp_sharding']}")
    if VOCAB_TABLES.get(unit.kind) == local_name and "tp" in names:
        tp_only = [pl if n == "tp" else Replicate() for n, pl in zip(names, p.placements, strict=True)]
        rows, offset = compute_local_shape_and_global_offset(p.shape, mesh, tp_only)
        start, count = vocab_shard(doc["model"]["vocab_size"], unit.layout.tp, place.tp_rank if place else 0)
        if (offset[0], rows[0]) != (start, count):
            errors.append(f"{at}: {fqn} holds vocabulary rows [{offset[0]}, {offset[0] + rows[0]}) over tp, the "
                          f"vocabulary-parallel loss expects [{start}, {start + count})")
    return errors


def _placements(p: torch.Tensor) -> str:
    if not isinstance(p, DTensor):
        return ""
    names = p.device_mesh.mesh_dim_names or tuple(str(i) for i in range(p.device_mesh.ndim))
    return " ".join(f"{n}:{pl}" for n, pl in zip(names, p.placements, strict=True))


# --- accounting --------------------------------------------------------------------------------------------------

def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if isinstance(t, DTensor) else t


def _optimizer_bytes(doc: dict, params: list[torch.nn.Parameter]) -> dict[int, int]:
    """{id(parameter): bytes of its optimizer states}: the run's optimizer stepped once on zero gradients on the
    meta device, so its states exist (shaped as at run time) and nothing is allocated but the scalar steps."""
    for p in params:
        p.grad = torch.zeros_like(p)
    optimizer = make_optimizer(params, {"name": "adamw", **doc["training"]["optimizer"]})
    optimizer.step()
    out = {id(p): sum(_local(v).numel() * _local(v).element_size()
                      for v in optimizer.state[p].values() if torch.is_tensor(v)) for p in params}
    for p in params:
        p.grad = None
    return out


def _param_bytes(unit: Unit, p: torch.Tensor) -> int:
    """Bytes the runtime allocates for the parameter: its local shard, under FSDP2 the padded shard FSDP2 keeps
    (its storage; the meta tensor's records the padded size)."""
    local = _local(p)
    if unit.fsdp:
        return local.untyped_storage().nbytes()
    return local.numel() * local.element_size()


# --- the dry run -------------------------------------------------------------------------------------------------

def dry_run(plan: Plan, rank: int) -> RankReport:
    """Build ``rank`` of ``plan`` (a checked plan) under a fake process group, check it, count its model states.

    DocumentError (exit 3) listing every disagreement between the plan and what the runtime built; InfeasibleError
    (exit 4) when the states exceed the plan's memory budget; UsageError (exit 2) for a rank outside the world or a
    process that already has a process group."""
    doc, world = plan.document, plan.world_size
    if not 0 <= rank < world:
        raise UsageError(f"--rank {rank}: the plan's world has ranks 0..{world - 1}")
    if dist.is_initialized():
        raise UsageError("--dry-run builds ranks under its own fake process group: run it outside torchrun")
    t0 = time.perf_counter()
    partner = _tie_partner(plan, *divmod(rank, plan.stage_size))
    with fake_world(rank, world):
        env, model, units, lays = _build(doc)
        report, errors = _inspect(plan, env, model, units)
        key = ShardKey.of(_tie_weight(model)) if partner is not None else None
        env.close()
    errors += _tie_errors(plan, report, lays, partner, key)
    report.build_s = time.perf_counter() - t0
    if errors:
        raise DocumentError(plan.source, errors)
    _check_budget(report)
    return report


def _inspect(plan: Plan, env: Env, model: Decoder, units: list[Unit]) -> tuple[RankReport, list[str]]:
    doc = plan.document
    errors, places, pipeline, groups_checked = _group_errors(doc, env, units)
    owner = {id(p): (u, name) for u in units for name, p in u.parameters()}
    st = doc["stages"][env.stage]
    with torch.device("meta"):
        reference = Decoder(doc["model"], range(st["layer_start"], st["layer_end"]), env.stage == 0,
                            env.stage == env.pp - 1, tie=doc["model"]["tied_embeddings"])
    ref_shapes = {n: tuple(p.shape) for n, p in reference.named_parameters()}
    params = list(model.parameters())
    states = _optimizer_bytes(doc, params)
    shards = []
    for fqn, p in model.named_parameters():
        unit, local_name = owner[id(p)]
        errors += _param_errors(doc, unit, fqn, local_name, p, ref_shapes.get(fqn, ()), places, env.rank)
        nbytes = _param_bytes(unit, p)
        shards.append(Shard(fqn, unit.name, tuple(p.shape), tuple(_local(p).shape), _placements(p),
                            nbytes // p.element_size(), nbytes, nbytes if p.requires_grad else 0, states[id(p)]))
    prediction = None
    for st_pred in (doc.get("predictions") or {}).get("stages", []):
        if st_pred["index"] == env.stage:
            prediction = st_pred["memory_bytes_per_rank"]
    report = RankReport(
        source=plan.source, rank=env.rank, world=env.world, stage=env.stage, pp=env.pp, local_index=env.j,
        stage_ranks=list(st["ranks"]), places=list(places.values()), pipeline_group=pipeline, shards=shards,
        strategies={u.name: strategy_name(u.strategy) for u in units},
        checked={"groups": groups_checked, "parameters": len(shards)}, tie="untied", dtype=plan.dtype,
        optimizer=doc["training"]["optimizer"]["name"], prediction=prediction, budget=_budget(doc))
    return report, errors


def _tie_partner(plan: Plan, stage: int, j: int) -> int | None:
    """The rank holding the other end of a tied embedding split over stages (rank j of the last stage for rank j
    of the first, and back), for a rank of the first or last stage; else None."""
    if not plan.model["tied_embeddings"] or plan.pp == 1 or stage not in (0, plan.pp - 1):
        return None
    return (plan.pp - 1) * plan.stage_size + j if stage == 0 else j


def _tie_errors(plan: Plan, report: RankReport, lays: dict, partner: int | None, key: ShardKey | None) -> list[str]:
    """With a partner: build it and compare its shard of the tied weight with this rank's ``key`` (sets
    ``report.tie`` to what was found). Ends with different layouts (tp, tp_layout, dp_sharding: build_state's
    rule) hold different shards by design: the runtime sums their full gradients."""
    if not plan.model["tied_embeddings"]:
        return []
    if plan.pp == 1:
        report.tie = "one weight (the head uses embedding.tok.weight)"
        return []
    if partner is None:
        report.tie = "tied, the copies are on the first and last stages"
        return []
    e, h = lays["embedding"], lays["head"]
    doc = plan.document
    same = (e.tp, e.tp_layout, doc["embedding"]["dp_sharding"]) == (h.tp, h.tp_layout, doc["head"]["dp_sharding"])
    if not same:
        report.tie = (f"copy on rank {partner}, another layout: the runtime sums the full gradients over "
                      f"[{min(report.rank, partner)}, {max(report.rank, partner)}]")
        return []
    with fake_world(partner, plan.world_size):
        env, model, _, _ = _build(doc)
        other = ShardKey.of(_tie_weight(model))
        env.close()
    mine, theirs = ("embedding.tok.weight", "head.out.weight") if report.stage == 0 else \
        ("head.out.weight", "embedding.tok.weight")
    if other != key:
        return [f"$.head: rank {report.rank}'s {mine} shard {key} is not rank {partner}'s {theirs} shard "
                f"{other}: their gradients cannot be summed shard by shard"]
    report.tie = f"same shard as {theirs} on rank {partner} ({key})"
    report.checked["tie"] = 1
    return []


def _budget(doc: dict) -> tuple[int, str] | None:
    search = doc.get("search") or {}
    if search.get("memory_budget_bytes"):
        return int(search["memory_budget_bytes"]), "$.search.memory_budget_bytes"
    device = doc["cluster"].get("device") or {}
    if device.get("memory_bytes"):
        return int(device["memory_bytes"]), "$.cluster.device.memory_bytes"
    return None


def _check_budget(report: RankReport) -> None:
    states = sum(report.total(k) for k in STATES)
    if report.budget is not None and states > report.budget[0]:
        raise InfeasibleError(f"{report.source}: {report.budget[1]}: rank {report.rank} (stage {report.stage}) holds "
                              f"{_size(states)} of parameters, gradients and optimizer states, above the budget "
                              f"{_size(report.budget[0])}, before any activation")


# --- the text ----------------------------------------------------------------------------------------------------

def _size(n: float) -> str:
    for unit, scale in (("GiB", 2 ** 30), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{int(n)} B"


def _ratio(held: float, predicted: float) -> str:
    return f"{held / predicted:.3f}" if predicted > 0 else "-"


def _count(n: int) -> str:
    for unit, scale in (("G", 10 ** 9), ("M", 10 ** 6), ("k", 10 ** 3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(n)


def ranks_text(ranks: list[int]) -> str:
    """A rank list, an arithmetic run of more than 4 written as 'first, second, ..., last (n ranks)'."""
    if len(ranks) <= 4 or len({b - a for a, b in zip(ranks, ranks[1:])}) != 1:
        return str(ranks)
    return f"[{ranks[0]}, {ranks[1]}, ..., {ranks[-1]}] ({len(ranks)} ranks)"


def _entry_rows(report: RankReport) -> list[tuple[str, str, str, dict]]:
    """(label, first entry, strategy, sums), runs of consecutive decoder layers alike in strategy and bytes merged
    into one row."""
    rows: list[tuple[list[str], str, dict]] = []
    for name, sums in report.entries():
        strategy = report.strategies[name]
        if rows and name.startswith("layers[") and rows[-1][0][-1].startswith("layers[") \
                and (rows[-1][1], rows[-1][2]) == (strategy, sums):
            rows[-1][0].append(name)
            continue
        rows.append(([name], strategy, sums))
    out = []
    for names, strategy, sums in rows:
        label = names[0] if len(names) == 1 else f"layers[{names[0][7:-1]}..{names[-1][7:-1]}] (each)"
        out.append((label, names[0], strategy, sums))
    return out


def _shard_line(s: Shard) -> str:
    """One parameter: name in its plan entry, global -> local shape, placements, bytes (and FSDP2's padding)."""
    name = s.name.split(".", 2)[2] if s.name.startswith("layers.") else s.name.split(".", 1)[1]
    rest = math.prod(s.local_shape[1:])
    stored_rows = s.stored_elements // rest if rest else 0
    padded = f", dim 0 padded to {stored_rows}" if s.local_shape and stored_rows != s.local_shape[0] else ""
    return (f"      {name:<18} {str(list(s.global_shape)):>14} -> {str(list(s.local_shape)):<14} "
            f"{s.placements or 'whole':<22} {_size(s.param_bytes):>11}{padded}")


def format_report(report: RankReport) -> str:
    """The rank's coordinates, what was checked, and its model states beside the plan's prediction."""
    r = report
    lines = [f"dry run of {r.source}: rank {r.rank} of {r.world}, stage {r.stage} of {r.pp} (ranks "
             f"{r.stage_ranks[0]}..{r.stage_ranks[-1]}), local index {r.local_index}; meta device, fake process "
             f"group, built and checked in {r.build_s:.2f} s"]
    for p in r.places:
        lines.append(f"  {p.layout}: tp rank {p.tp_rank}, dp rank {p.dp_rank}; tp group {ranks_text(p.tp_group)}; "
                     f"dp group {ranks_text(p.dp_group)}")
    lines.append(f"  pipeline group {ranks_text(r.pipeline_group)}")
    lines.append(f"  checked: {r.checked['groups']} groups, {r.checked['parameters']} parameters (global and local "
                 f"shapes, placements, meshes); tie: {r.tie}")
    header = (f"  {'entry':<24} {'strategy':<22} {'elements':>9} {'params':>11} {'grads':>11} "
              f"{f'{r.optimizer} states':>11}")
    lines.append(header)
    for label, first, strategy, sums in _entry_rows(r):
        lines.append(f"  {label:<24} {strategy:<22} {_count(sums['elements']):>9} {_size(sums['param_bytes']):>11} "
                     f"{_size(sums['grad_bytes']):>11} {_size(sums['optimizer_bytes']):>11}")
        lines += [_shard_line(s) for s in r.shards if s.entry == first]
    held = {k: r.total(k) for k in STATES}
    elements = sum(s.elements for s in r.shards)
    lines.append(f"  {'total held':<24} {'':<22} {_count(elements):>9} {_size(held['param_bytes']):>11} "
                 f"{_size(held['grad_bytes']):>11} {_size(held['optimizer_bytes']):>11}   "
                 f"states {_size(sum(held.values()))}")
    if r.prediction is None:
        lines.append("  the plan carries no predictions to compare with")
    else:
        pred = {"param_bytes": r.prediction["params"], "grad_bytes": r.prediction["grads"],
                "optimizer_bytes": r.prediction["optimizer"]}
        lines.append(f"  {f'predicted (stage {r.stage})':<24} {'':<22} {'':>9} {_size(pred['param_bytes']):>11} "
                     f"{_size(pred['grad_bytes']):>11} {_size(pred['optimizer_bytes']):>11}   "
                     f"states {_size(sum(pred.values()))}")
        ratios = [_ratio(held[k], pred[k]) for k in STATES] + [_ratio(sum(held.values()), sum(pred.values()))]
        lines.append(f"  {'held / predicted':<24} {'':<22} {'':>9} {ratios[0]:>11} {ratios[1]:>11} {ratios[2]:>11}   "
                     f"states {ratios[3]}")
        rest = ", ".join(f"{k} {_size(r.prediction[k])}" for k in ("activations", "workspace", "overhead", "total"))
        lines.append(f"  not built by a dry run, predicted: {rest}")
        if r.dtype != "fp32":
            lines.append(f"  note: under {r.dtype} the predicted params also count the {r.dtype} compute copies a "
                         "step makes (autocast's casts of ddp weights, zero2's gathered weights), not held here")
    if r.budget is not None:
        lines.append(f"  budget {_size(r.budget[0])} ({r.budget[1]}): states use "
                     f"{sum(held.values()) / r.budget[0]:.1%}")
    return "\n".join(lines)


def run(plan: Plan, ranks: list[int], out=None) -> None:
    """Dry-run each of ``ranks`` and print its report (stdout by default)."""
    out = out or sys.stdout
    for rank in ranks:
        print(format_report(dry_run(plan, rank)), file=out, flush=True)
