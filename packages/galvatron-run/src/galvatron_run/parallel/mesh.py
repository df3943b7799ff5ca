"""Process groups and device meshes from the plan: every rank tuple the runtime communicates over, created once in
one order on every rank, and each layout's 2-D (dp, tp) DeviceMesh inside this rank's stage."""
from __future__ import annotations

import atexit
from dataclasses import dataclass, field
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh

from ..plan import Layout, groups


@dataclass
class Env:
    """This rank's place in the plan, and every process group it may use."""

    rank: int
    world: int
    pp: int
    device: torch.device
    timeout_s: float = 60.0
    pgs: dict = field(default_factory=dict)       # tuple(global ranks) -> ProcessGroup (members only)
    meshes: dict = field(default_factory=dict)    # Layout.key() -> 2-D (dp, tp) DeviceMesh of this stage

    @property
    def size(self) -> int:
        return self.world // self.pp

    @property
    def stage(self) -> int:
        return self.rank // self.size

    @property
    def j(self) -> int:
        return self.rank % self.size

    @property
    def base(self) -> int:
        return self.stage * self.size

    def group(self, ranks) -> dist.ProcessGroup:
        return self.pgs[tuple(ranks)]

    def stage_group(self):
        return self.group(range(self.base, self.base + self.size))

    def dp_group(self, lay: Layout):
        return self.group(_my(groups(self.size, lay.tp, lay.tp_layout, self.base)[1], self.rank))

    def tp_group(self, lay: Layout):
        return self.group(_my(groups(self.size, lay.tp, lay.tp_layout, self.base)[0], self.rank))

    def mesh(self, lay: Layout) -> DeviceMesh:
        key = lay.key()
        if key not in self.meshes:
            self.meshes[key] = DeviceMesh.from_group([self.dp_group(lay), self.tp_group(lay)], self.device.type,
                                                     mesh=lay.mesh(self.base), mesh_dim_names=("dp", "tp"))
        return self.meshes[key]

    def close(self) -> None:
        """Forget the meshes; the groups stay cached for the next plan in this world (DTensor caches by ranks)."""
        self.meshes.clear()


def _my(gs, rank):
    return next(g for g in gs if rank in g)


def needed_groups(plan: dict, world: int) -> list[tuple[int, ...]]:
    """Every rank tuple the runtime may communicate over, in one order that every rank computes alike."""
    pp = len(plan["stages"])
    size = world // pp
    layouts = {(s["tp"], Layout.of(s).tp_layout) for s in [plan["embedding"], plan["head"], *plan["layers"]]}
    out: set[tuple[int, ...]] = set()
    for k in range(pp):
        out.add(tuple(range(k * size, (k + 1) * size)))
        for tp, lay in layouts:
            tpg, dpg = groups(size, tp, lay, base=k * size)
            out.update(tuple(g) for g in tpg + dpg)
    for j in range(size):
        out.add(tuple(k * size + j for k in range(pp)))
        out.add(tuple(sorted({j, (pp - 1) * size + j})))
    return sorted(out, key=lambda g: (len(g), g))


_GROUPS: dict[tuple[int, ...], object] = {}     # every group this process created, reused by later plans
_GROUPS_WORLD: list = [None]                      # ... of this default group (a new world starts afresh)
# Drop them before the interpreter tears down: a gloo group still alive then (destroy_process_group leaves the
# cached objects) made a rank abort at exit ("terminate called without an active exception") about once in 8 runs.
atexit.register(_GROUPS.clear)


def make_env(plan: dict, device: torch.device, timeout_s: float) -> Env:
    """Create (collectively, in the same order on every rank) the groups the plan needs."""
    env = Env(dist.get_rank(), dist.get_world_size(), len(plan["stages"]), device, timeout_s)
    if _GROUPS_WORLD[0] is not dist.group.WORLD:
        _GROUPS.clear()
        _GROUPS_WORLD[0] = dist.group.WORLD
    for ranks in needed_groups(plan, env.world):
        if ranks not in _GROUPS:
            if len(ranks) == env.world:
                _GROUPS[ranks] = dist.group.WORLD
            else:
                _GROUPS[ranks] = dist.new_group(list(ranks), timeout=timedelta(seconds=timeout_s))
        if env.rank in ranks:
            env.pgs[ranks] = _GROUPS[ranks]
    return env
