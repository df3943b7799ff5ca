"""Per-layer parallelism: process groups and meshes from the plan, TP / FSDP2 / recompute per layer, activation
redistribution between layouts, the vocabulary-parallel loss, gradient synchronisation and clipping across meshes.

The torch-native parts: DeviceMesh (from the plan's groups), DTensor ColwiseParallel / RowwiseParallel /
PrepareModuleInput, FSDP2 ``fully_shard`` on each layer's own dp mesh (zero3: reshard after forward; zero2: keep
the parameters until backward), ``torch.utils.checkpoint``. The project's own parts: the groups, ``move`` (the
redistribution), ddp (one gradient all-reduce per iteration over the layer's dp group; FSDP2 would all-reduce per
micro-batch or shard), Megatron-style reduction of sequence-parallel gradients over tp, tied-embedding gradients,
the global gradient norm.

Activation semantics: every rank holds the block ``Layout.block(j, b, s)`` of a micro-batch's [b, s, h] activation;
ranks holding the same block hold equal copies, and the gradient of each copy is the full gradient of that block.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor, Replicate, Shard, distribute_tensor
from torch.distributed.tensor.parallel import ColwiseParallel, PrepareModuleInput, RowwiseParallel, parallelize_module

from .plan import Layout, groups

# --- groups -----------------------------------------------------------------------------------------------------

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


def make_env(plan: dict, device: torch.device, timeout_s: float) -> Env:
    """Create (collectively, in the same order on every rank) the groups the plan needs."""
    from datetime import timedelta
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


# --- activation redistribution ----------------------------------------------------------------------------------

def _redistribute(x: torch.Tensor, src: Layout, dst: Layout, env: Env) -> torch.Tensor:
    b = x.shape[0] * src.dp
    s = x.shape[1] * (src.tp if src.sp else 1)
    r0, nr, s0, ns = src.block(env.j, b, s)
    R0, NR, S0, NS = dst.block(env.j, b, s)
    if all(_contains(src.block(j, b, s), dst.block(j, b, s)) for j in range(env.size)):
        return x[R0 - r0:R0 - r0 + NR, S0 - s0:S0 - s0 + NS].clone()     # every rank already holds what it needs
    # Gather over the smallest group that gives every rank what it needs: the source tp group (the rows of its dp
    # rank, the whole sequence), the source dp group (every row, its sequence chunk), else the whole stage.
    kind = next(k for k in ("tp", "dp", "stage")
                if all(_contains(_union(src, j, b, s, k), dst.block(j, b, s)) for j in range(env.size)))
    members = _members(src, env.j, env.size, kind)
    group = env.group([env.base + m for m in members])
    parts = [torch.empty_like(x) for _ in members]
    dist.all_gather(parts, x.contiguous(), group=group)
    full = x.new_empty((b, s) + tuple(x.shape[2:]))
    for m, part in zip(members, parts):
        a0, na, c0, nc = src.block(m, b, s)
        full[a0:a0 + na, c0:c0 + nc] = part
    return full[R0:R0 + NR, S0:S0 + NS].clone()


def _members(src: Layout, j: int, size: int, kind: str) -> list[int]:
    tp_rank, dp_rank = src.coords(j)
    if kind == "tp":
        return [src.index(t, dp_rank) for t in range(src.tp)]
    if kind == "dp":
        return [src.index(tp_rank, d) for d in range(src.dp)]
    return list(range(size))


def _union(src: Layout, j: int, b: int, s: int, kind: str) -> tuple[int, int, int, int]:
    """The rectangle (row0, rows, seq0, seqs) that the blocks of j's ``kind`` group cover together."""
    r0, nr, s0, ns = src.block(j, b, s)
    if kind == "tp":
        return r0, nr, 0, s
    if kind == "dp":
        return 0, b, s0, ns
    return 0, b, 0, s


def _contains(outer, inner) -> bool:
    r0, nr, s0, ns = outer
    R0, NR, S0, NS = inner
    return r0 <= R0 and R0 + NR <= r0 + nr and s0 <= S0 and S0 + NS <= s0 + ns


class _Move(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, src, dst, env):
        ctx.layouts = (src, dst, env)
        return _redistribute(x, src, dst, env)

    @staticmethod
    def backward(ctx, grad):
        src, dst, env = ctx.layouts
        return _redistribute(grad, dst, src, env), None, None, None


def move(x: torch.Tensor, src: Layout, dst: Layout, env: Env) -> torch.Tensor:
    """The activation ``x`` held in layout ``src`` as layout ``dst`` wants it (backward: the mirror)."""
    if src == dst:
        return x
    return _Move.apply(x, src, dst, env)


# --- vocabulary-parallel cross entropy --------------------------------------------------------------------------

class _VocabParallelCE(torch.autograd.Function):
    """Sum of token cross entropies when each tp rank holds logits [N, V/tp] of vocabulary [v0, v0 + V/tp)."""

    @staticmethod
    def forward(ctx, logits, target, group, v0):
        x = logits.float()
        m = x.max(-1).values
        dist.all_reduce(m, op=dist.ReduceOp.MAX, group=group)
        x = x - m[:, None]
        e = x.exp()
        se = e.sum(-1)
        dist.all_reduce(se, group=group)
        local = target - v0
        hit = (local >= 0) & (local < x.shape[-1])
        local = local.clamp(0, x.shape[-1] - 1)
        tl = x.gather(1, local[:, None]).squeeze(1) * hit
        dist.all_reduce(tl, group=group)
        ctx.save_for_backward(e / se[:, None], local, hit)
        ctx.dtype = logits.dtype
        return (se.log() - tl).sum()

    @staticmethod
    def backward(ctx, g):
        p, local, hit = ctx.saved_tensors
        grad = p.clone()
        grad[torch.arange(grad.shape[0], device=grad.device), local] -= hit.to(grad.dtype)
        return (grad * g).to(ctx.dtype), None, None, None


def vocab_parallel_ce_sum(logits, target, group, v0):
    return _VocabParallelCE.apply(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), group, v0)


# --- per-layer parallelism --------------------------------------------------------------------------------------

@dataclass
class Unit:
    """One plan entry (embedding, a decoder layer, the head) as built on this rank."""

    name: str                 # plan path, e.g. "layers[3]"
    prefix: str               # module FQN prefix, e.g. "layers.3."
    module: nn.Module
    strategy: dict
    layout: Layout
    fsdp: bool = False
    tp_sharded: set = field(default_factory=set)      # parameter names (in module) sharded by TP
    sp_partial: list = field(default_factory=list)    # names of parameters whose gradient is partial over tp (sp)


def _quiet(style):
    style.src_data_rank = None      # every rank already holds the same full value: no scatter at init
    return style


def apply_tp(unit: Unit, env: Env, family: str, seq_len: int) -> None:
    lay = unit.layout
    if lay.tp == 1:
        return
    tp_mesh = env.mesh(lay)["tp"]
    seq = Shard(1) if lay.sp else Replicate()
    mod = unit.module
    if unit.prefix == "embedding.":
        style = RowwiseParallel(input_layouts=Replicate(), output_layouts=seq)
        parallelize_module(mod, tp_mesh, {"tok": _quiet(style)})
        if lay.sp:
            mod.seq_offset = lay.coords(env.j)[0] * (seq_len // lay.tp)
            if mod.pos is not None:
                unit.sp_partial.append("pos.weight")
    elif unit.prefix == "head.":
        parallelize_module(mod, tp_mesh, {"out": _quiet(ColwiseParallel(input_layouts=seq, output_layouts=Shard(-1),
                                                                        use_local_output=True))})
        if lay.sp:
            unit.sp_partial.extend(f"norm.{n}" for n, _ in mod.norm.named_parameters())
    else:
        gather = PrepareModuleInput(input_layouts=(seq,), desired_input_layouts=(Replicate(),), use_local_output=False)
        plan = {"attn": gather, "attn.q": _quiet(ColwiseParallel()), "attn.k": _quiet(ColwiseParallel()),
                "attn.v": _quiet(ColwiseParallel()), "attn.o": _quiet(RowwiseParallel(output_layouts=seq)),
                "mlp": PrepareModuleInput(input_layouts=(seq,), desired_input_layouts=(Replicate(),),
                                          use_local_output=False)}
        if family == "gpt2":
            plan.update({"mlp.fc": _quiet(ColwiseParallel()), "mlp.proj": _quiet(RowwiseParallel(output_layouts=seq))})
        else:
            plan.update({"mlp.gate": _quiet(ColwiseParallel()), "mlp.up": _quiet(ColwiseParallel()),
                         "mlp.down": _quiet(RowwiseParallel(output_layouts=seq))})
        parallelize_module(mod, tp_mesh, plan)
        if lay.sp:
            unit.sp_partial.extend([f"norm1.{n}" for n, _ in mod.norm1.named_parameters()]
                                   + [f"norm2.{n}" for n, _ in mod.norm2.named_parameters()])
    for name, p in mod.named_parameters():
        if isinstance(p, DTensor) and any(pl.is_shard() for pl in p.placements):
            unit.tp_sharded.add(name)


def apply_fsdp(unit: Unit, env: Env, dtype: torch.dtype) -> None:
    mode = unit.strategy["dp_sharding"]
    if mode == "ddp":
        return
    mp = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32) if dtype != torch.float32 else None
    kwargs = {"mp_policy": mp} if mp is not None else {}
    fully_shard(unit.module, mesh=env.mesh(unit.layout)["dp"], reshard_after_forward=(mode == "zero3"), **kwargs)
    unit.module.set_gradient_divide_factor(1.0)   # gradients are summed: the loss is already a global mean
    unit.module.set_force_sum_reduction_for_comms(True)   # plain SUM (gloo has no PREMUL_SUM)
    unit.fsdp = True


def wrap_root(stage: nn.Module, units: list[Unit], env: Env) -> None:
    """One FSDP root over the stage so that per-layer units are not roots (a root never reshards after forward)."""
    sharded = [u for u in units if u.fsdp]
    if not sharded:
        return
    ignored = {p for u in units if not u.fsdp for p in u.module.parameters()}
    fully_shard(stage, mesh=env.mesh(sharded[0].layout)["dp"], reshard_after_forward=False, ignored_params=ignored)


# --- gradients --------------------------------------------------------------------------------------------------

def local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if isinstance(t, DTensor) else t


def _all_reduce_flat(tensors: list[torch.Tensor], group) -> None:
    tensors = [t for t in tensors if t is not None]
    if not tensors:
        return
    flat = torch.cat([t.reshape(-1).float() for t in tensors])
    dist.all_reduce(flat, group=group)
    i = 0
    for t in tensors:
        n = t.numel()
        t.copy_(flat[i:i + n].view_as(t))
        i += n


@torch.no_grad()
def sync_grads(units: list[Unit], env: Env, tie: tuple[nn.Parameter, nn.Parameter] | None, pp: int,
               tie_same_layout: bool = True) -> None:
    """After the last micro-batch: ddp all-reduce over dp, sp partial sums over tp, tied-embedding sums."""
    for u in units:
        # DTensor may return a replicated gradient for a sharded parameter (the vocabulary-parallel embedding's);
        # keep this rank's shard (Replicate -> Shard is a local slice), so every gradient matches its parameter.
        for p in u.module.parameters():
            if isinstance(p.grad, DTensor) and tuple(p.grad.placements) != tuple(p.placements):
                p.grad = p.grad.redistribute(p.device_mesh, p.placements)
    for u in units:
        if not u.fsdp and u.layout.dp > 1:
            _all_reduce_flat([local(p.grad) for p in u.module.parameters() if p.grad is not None],
                             env.dp_group(u.layout))
    for u in units:
        if u.sp_partial:
            params = [u.module.get_parameter(n) for n in u.sp_partial]     # looked up now: FSDP replaces them
            _all_reduce_flat([local(p.grad) for p in params if p.grad is not None], env.tp_group(u.layout))
    if tie is not None:
        emb, head = tie
        if pp == 1:
            total = local(emb.grad) + local(head.grad)
            local(emb.grad).copy_(total)
            local(head.grad).copy_(total)
        elif emb is not None or head is not None:     # middle stages hold neither copy: nothing to exchange
            pair = env.group(sorted({env.j, (pp - 1) * env.size + env.j}))
            g = (emb if emb is not None else head).grad
            if tie_same_layout:               # rank j's shard is the same slice at both ends
                dist.all_reduce(local(g), group=pair)
            else:                             # different layouts: sum the full gradients, keep each end's shard
                full = g.full_tensor() if isinstance(g, DTensor) else g.clone()
                dist.all_reduce(full, group=pair)
                if isinstance(g, DTensor):
                    local(g).copy_(distribute_tensor(full, g.device_mesh, g.placements, src_data_rank=None).to_local())
                else:
                    g.copy_(full)


@torch.no_grad()
def clip_grads(units: list[Unit], max_norm: float | None, skip: set[int], device: torch.device) -> float:
    """Global L2 norm of every gradient, each element counted once over all ranks; scale them to ``max_norm``.

    ``skip``: ids of parameters that duplicate another (the head's copy of a tied embedding)."""
    sq = torch.zeros((), dtype=torch.float64, device=device)
    grads = []
    for u in units:
        tp, dp = u.layout.tp, u.layout.dp
        for name, p in u.module.named_parameters():
            if p.grad is None:
                continue
            g = local(p.grad)
            grads.append(g)
            if id(p) in skip:
                continue
            copies = (1 if name in u.tp_sharded else tp) * (1 if u.fsdp else dp)
            sq += g.double().pow(2).sum() / copies
    dist.all_reduce(sq)
    norm = math.sqrt(sq.item())
    if max_norm is not None:
        coef = max_norm / (norm + 1e-6)
        if coef < 1.0:
            for g in grads:
                g.mul_(coef)
    return norm
