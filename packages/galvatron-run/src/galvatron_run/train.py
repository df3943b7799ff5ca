"""Build a rank's part of the model from a plan and train it.

    state = build_state(plan, device, dtype="fp32", steps=10)      # after init_process_group
    result = train(state, data, steps=10, callback=None)           # {"steps": [records], "memory": {...}}

``TrainState`` keeps everything a checkpoint needs (``model_parts``, ``optimizers``, ``scheduler``, ``step``), so
``torch.distributed.checkpoint.state_dict.get_state_dict(state.model, state.optimizer)`` saves it by plan-independent
FQNs; ``train`` takes the data source and calls ``callback(state, record)`` after every step.
"""
from __future__ import annotations

import contextlib
import math
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn

from galvatron_models import Decoder, ce_loss_sum, initial_value, vocab_parallel_ce_sum

from .breakdown import TRANSITION, StepTimes, mark, timed
from .measure import PeakMemory, SavedTensors, peak_rss_bytes, tensor_bytes
from .parallel import Env, Unit, clip_grads, local, make_env, make_schedule, move, parallelize_stage, sync_grads
from .parallel.buckets import DdpBuckets
from .parallel.fsdp import DeferredReduction
from .plan import Layout, vocab_shard

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}

# The stage returns logits that are a view of the head's DTensor output; nothing here modifies them in place.
warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")


def log(msg: str) -> None:
    rank = dist.get_rank() if dist.is_initialized() else 0
    print(f"[rank {rank}] {msg}", file=sys.stderr, flush=True)


class Stage(Decoder):
    """A pipeline stage's modules; forward moves the activation between the layouts of consecutive layers."""

    def configure(self, env: Env, lays: dict, in_layout: Layout | None, b: int, s: int, act_dtype: torch.dtype):
        self._env, self._lays, self._in, self._b, self._s, self._act = env, lays, in_layout, b, s, act_dtype
        cur = lays["embedding"] if self.embedding is not None else in_layout
        for i in self.layers:
            cur = lays[int(i)]
        self.out_layout = lays["head"] if self.head is not None else cur

    def forward(self, x):
        """Each plan entry and each layout change runs through ``timed`` under its name (a timed step records
        them: breakdown.py)."""
        env, lays = self._env, self._lays
        if self.embedding is not None:
            r0, nr, _, _ = lays["embedding"].block(env.j, self._b, self._s)
            x = timed("embedding", self.embedding, x[r0:r0 + nr])
            cur = lays["embedding"]
        else:
            cur = self._in
        for i, block in self.layers.items():
            lay = lays[int(i)]
            x = self._move(x, cur, lay)
            cur = lay
            x = timed(f"layers[{i}]", block, x)
        if self.head is not None:
            return timed("head", self.head, self._move(x, cur, lays["head"]))
        return x.to(self._act)

    def _move(self, x, src: Layout | None, dst: Layout):
        return x if src == dst else timed(TRANSITION, move, x, src, dst, self._env)


def lr_at(step: int, opt: dict, steps: int) -> float:
    """Linear warm-up to lr over warmup_steps, then cosine decay to min_lr over decay_steps (default: the run)."""
    lr, min_lr = opt.get("lr", 3e-4), opt.get("min_lr", 3e-5)
    warm = opt.get("warmup_steps", 10)
    decay = opt.get("decay_steps") or steps
    if step < warm:
        return lr * (step + 1) / (warm + 1)
    if step >= decay:
        return min_lr
    ratio = (step - warm) / max(1, decay - warm)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (lr - min_lr)


def make_optimizer(params: list[nn.Parameter], opt: dict):
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": opt.get("weight_decay", 0.1)},
              {"params": no_decay, "weight_decay": 0.0}]
    lr = opt.get("lr", 3e-4)
    if opt["name"] == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=0.9, foreach=False)
    betas = tuple(opt.get("betas", (0.9, 0.95)))
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=opt.get("eps", 1e-8), foreach=False)


@dataclass
class TrainState:
    plan: dict
    env: Env
    model: Stage
    units: list[Unit]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    dtype: str
    seq_len: int
    steps: int
    loss_fn: Callable | None = None    # (logits, targets of the micro-batch) -> this rank's share of the mean loss
    step: int = 0                      # the next step to run (a resumed run sets it)
    schedule: object = None            # torch.distributed.pipelining schedule (pp > 1)
    tie: tuple | None = None           # pp > 1, tied: (embedding weight | None, head copy | None) on this rank
    tie_same_layout: bool = True       # ... and whether both ends shard it alike
    skip_norm: set = field(default_factory=set)     # ids of the head copies, left out of the gradient norm

    @property
    def model_parts(self) -> list[nn.Module]:
        return [self.model]

    @property
    def optimizers(self) -> list[torch.optim.Optimizer]:
        return [self.optimizer]

    @property
    def first(self) -> bool:
        return self.env.stage == 0

    @property
    def last(self) -> bool:
        return self.env.stage == self.env.pp - 1


def build_state(plan: dict, device: torch.device, *, dtype: str | None = None, steps: int = 1,
                seq_len: int | None = None, timeout_s: float = 60.0,
                init: Callable[[nn.Module], None] | None = None) -> TrainState:
    """Groups, meshes, modules (initialised identically for every plan), their parallelism, optimizer, schedule.
    ``init(model)`` fills the materialised parameters instead of the seeded initialisation (hf_io's loader).

    Tied embeddings: with one stage the head uses the embedding's weight (one parameter); with pp > 1 the last
    stage holds a copy, initialised equal, whose gradient ``sync_grads`` sums with the first stage's."""
    spec = plan["model"]
    dtype = dtype or plan["training"]["dtype"]
    seq = seq_len or plan["training"]["seq_len"]
    env = make_env(plan, device, timeout_s)
    pp, k = env.pp, env.stage
    first, last = k == 0, k == pp - 1
    act = DTYPES[dtype]
    model, units, lays, in_layout = build_stage(plan, env, seq, act)
    model.to_empty(device=device)
    if first and last and spec["tied_embeddings"]:
        model.head.out.weight = model.embedding.tok.weight     # to_empty gives a plain tensor one copy per name
    if init is not None:
        init(model)
    else:
        init_local_shards(model, spec, plan["training"].get("seed", 1234))

    opt = {"name": "adamw", **plan["training"]["optimizer"]}
    optimizer = make_optimizer(list(model.parameters()), opt)
    base = opt.get("lr", 3e-4)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_at(s, opt, steps) / base if base > 0 else 0.0)
    state = TrainState(plan, env, model, units, optimizer, scheduler, dtype, seq, steps)
    state.loss_fn = _loss_fn(state)
    if spec["tied_embeddings"] and pp > 1:
        emb = model.embedding.tok.weight if first else None
        head = model.head.out.weight if last else None
        state.tie = (emb, head)
        e, h = plan["embedding"], plan["head"]
        state.tie_same_layout = ((e["tp"], lays["embedding"].tp_layout, e["dp_sharding"])
                                 == (h["tp"], lays["head"].tp_layout, h["dp_sharding"]))
        if last:
            state.skip_norm = {id(head)}     # the embedding's copy is counted (once) in the norm
    if pp > 1:
        state.schedule = make_schedule(model, env, plan, seq, act, in_layout, model.out_layout, state.loss_fn)
    return state


def build_stage(plan: dict, env: Env, seq: int, act: torch.dtype) -> tuple[Stage, list[Unit], dict, Layout | None]:
    """This rank's pipeline stage on the meta device with the plan's parallelism applied (tensor parallel,
    recompute, FSDP2): the shapes, placements and meshes of every parameter, nothing allocated. ``build_state``
    materialises it; ``dryrun`` inspects it under a fake process group.

    Returns (stage, its units, {"embedding" | "head" | layer index: Layout}, the layout of the stage's input:
    None on the first stage)."""
    spec = plan["model"]
    k = env.stage
    st = plan["stages"][k]
    first, last = k == 0, k == env.pp - 1
    ids = list(range(st["layer_start"], st["layer_end"]))
    with torch.device("meta"):                # nothing is allocated until the parameters are sharded
        model = Stage(spec, ids, first, last, tie=spec["tied_embeddings"])     # ties only a stage holding both
    lays = {"embedding": Layout.of(plan["embedding"]), "head": Layout.of(plan["head"])}
    lays.update({i: Layout.of(plan["layers"][i]) for i in range(len(plan["layers"]))})
    in_layout = None
    if not first:
        prev = plan["stages"][k - 1]
        in_layout = lays[prev["layer_end"] - 1] if prev["layer_end"] > prev["layer_start"] else None
        if in_layout is None:          # walk back over stages without decoder layers
            for kk in range(k - 1, -1, -1):
                p_st = plan["stages"][kk]
                if p_st["layer_end"] > p_st["layer_start"]:
                    in_layout = lays[p_st["layer_end"] - 1]
                    break
            else:
                in_layout = lays["embedding"]
    model.configure(env, lays, in_layout, plan["micro_batch_size"], seq, act)
    units = parallelize_stage(model, plan, lays, env, seq, act)
    return model, units, lays, in_layout


@torch.no_grad()
def init_local_shards(model: nn.Module, spec: dict, seed: int) -> None:
    """Each parameter's seeded full value (one parameter at a time), cut to this rank's shard without communication,
    so every plan starts from the same model."""
    from torch.distributed.tensor import DTensor, distribute_tensor
    for name, p in model.named_parameters():
        full = initial_value(spec, name, p.shape, seed).to(p.device)
        if isinstance(p, DTensor):
            shard = distribute_tensor(full, p.device_mesh, p.placements, src_data_rank=None).to_local()
            p.to_local().copy_(shard)
        else:
            p.copy_(full)


def _loss_fn(state: TrainState):
    """Per micro-batch: this rank's share of the global mean token loss (summing over ranks gives the mean)."""
    plan, env = state.plan, state.env
    lay = Layout.of(plan["head"])
    b, s = plan["micro_batch_size"], state.seq_len
    denom = float(plan["global_batch"] * s)
    r0, nr, _, _ = lay.block(env.j, b, s)
    v0, _ = vocab_shard(plan["model"]["vocab_size"], lay.tp, lay.coords(env.j)[0])

    def loss_fn(logits, targets):
        tgt = targets[r0:r0 + nr]
        if lay.tp == 1:
            return ce_loss_sum(logits, tgt) / denom
        return vocab_parallel_ce_sum(logits, tgt, env.tp_group(lay), v0) / denom

    return loss_fn


def _micro_batches(state: TrainState, x: torch.Tensor, y: torch.Tensor):
    b = state.plan["micro_batch_size"]
    return [(x[i * b:(i + 1) * b], y[i * b:(i + 1) * b]) for i in range(state.plan["micro_batches"])]


def local_step(state: TrainState, x: torch.Tensor, y: torch.Tensor, backward: bool = True) -> list[torch.Tensor]:
    """All micro-batches of a one-stage plan; returns their losses. gpipe runs every forward before the backwards,
    1f1b the backward of each micro-batch right after its forward; ``backward=False``: forwards only."""
    if not backward:
        return [state.loss_fn(state.model(xi), yi) for xi, yi in _micro_batches(state, x, y)]
    if state.plan["schedule"] == "gpipe":
        losses = [state.loss_fn(state.model(xi), yi) for xi, yi in _micro_batches(state, x, y)]
        for loss in losses:
            loss.backward()
        return [loss.detach() for loss in losses]
    losses = []
    for xi, yi in _micro_batches(state, x, y):
        loss = state.loss_fn(state.model(xi), yi)
        loss.backward()
        losses.append(loss.detach())
    return losses


def pipelined_step(state: TrainState, x: torch.Tensor, y: torch.Tensor, backward: bool = True) -> list[torch.Tensor]:
    """All micro-batches through the pipeline schedule; returns the losses (on the last stage; elsewhere none).

    The schedule is told not to return the last stage's outputs: it would keep every micro-batch's logits until
    the next step (m x b x s x V/tp values), memory no plan accounts for and nothing here reads."""
    losses: list[torch.Tensor] = []
    if backward:
        def run(*args, **kw):
            return state.schedule.step(*args, return_outputs=False, **kw)
    else:
        run = state.schedule.eval
    if state.first:
        run(x)
    elif state.last:
        run(target=y, losses=losses)
    else:
        run()
    return losses


def _step_loss(state: TrainState, x: torch.Tensor, y: torch.Tensor, backward: bool = True) -> torch.Tensor:
    """One step's micro-batches (``backward=False``: forwards only, for validation); returns this rank's
    contribution to the global mean loss."""
    dev = state.env.device
    step = pipelined_step if state.schedule is not None else local_step
    with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=state.dtype == "bf16"), \
            (contextlib.nullcontext() if backward else torch.no_grad()):
        losses = step(state, x.to(dev), y.to(dev), backward)
    total = torch.zeros((), dtype=torch.float64, device=dev)
    if state.last and Layout.of(state.plan["head"]).coords(state.env.j)[0] == 0:
        total += sum(float(v.detach().float()) for v in losses)
    return total


def train_step(state: TrainState, data, memory: PeakMemory | None = None, saved: SavedTensors | None = None) -> dict:
    """One optimizer step on data.batch(state.step); returns the step's record (loss, time, lr, grad_norm, ...)."""
    plan = state.plan
    x, y = data.batch(state.step)
    lr = state.optimizer.param_groups[0]["lr"]
    acc = {}
    # Free the previous step's gradients before the measured region: the CPU profiler cannot see frees of storages
    # allocated before it started, so zeroing inside it would count the old gradients in the baseline and again new.
    state.optimizer.zero_grad(set_to_none=True)
    dist.barrier()
    t0 = time.perf_counter()
    mark("micro_batches")          # the phases of a timed step (breakdown.py); no-ops otherwise
    with (memory.measure() if memory else contextlib.nullcontext()):
        ddp = DdpBuckets(state.units, state.env)      # all-reduced during the last micro-batch's backward
        zero1 = DeferredReduction(state.units)         # reduce-scattered during the last micro-batch's backward
        with (saved.hooks() if saved else contextlib.nullcontext()), ddp.armed(plan["micro_batches"]), \
                zero1.armed(plan["micro_batches"]):
            loss = _step_loss(state, x, y)
        mark("grad_sync")
        sync_grads(state.units, state.env, state.tie, state.tie_same_layout, ddp)
        if memory is not None:
            acc["grad_bytes"] = tensor_bytes(local(p.grad) for p in state.model.parameters() if p.grad is not None)
        mark("optimizer")
        max_norm = plan["training"]["optimizer"].get("grad_clip", 1.0)
        norm = clip_grads(state.units, max_norm, state.skip_norm, state.env.device)
        state.optimizer.step()
        state.scheduler.step()
    mark("step_sync")
    dist.all_reduce(loss)
    dist.barrier()
    elapsed = time.perf_counter() - t0
    mark("end")
    t = torch.tensor([elapsed], dtype=torch.float64, device=state.env.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    record = {"step": state.step, "loss": float(loss), "time_s": float(t),
              "tokens": plan["global_batch"] * state.seq_len, "lr": float(lr), "grad_norm": float(norm)}
    state.step += 1
    return record, acc


def train(state: TrainState, data, steps: int, *, warmup_steps: int = 0,
          callback: Callable[[TrainState, dict], bool | None] | None = None, measure_memory: bool = True,
          phase: Callable[[str], contextlib.AbstractContextManager] | None = None,
          measure_time: bool | None = None) -> dict:
    """Run until ``state.step == steps``; returns {"steps": records, "memory": this rank's measurement or None,
    "breakdown": this rank's time breakdown of one step (breakdown.py) or None}.

    With ``measure_memory`` one step (the second) is profiled for memory; with ``measure_time`` (default: as
    ``measure_memory``) one later step is timed by component: the middle one of the run, at least the one after the
    memory profile (the steps just after it are still warming up here: 1.1-1.4x the median). Timing the
    memory-profiled step itself would time the profiler: its per-op events slow these small models' steps 1.4-2.4x.

    ``callback(state, record)`` runs after every step on every rank (checkpointing plugs in here); a true result
    stops the loop at that step boundary (a stop request). ``phase(name)`` wraps each step (the watchdog's phases,
    so a stalled collective is reported with the step it stalled in)."""
    records, mem_out, times_out = [], None, None
    profile_at = None
    if measure_memory and state.step < steps:
        # The second step when there is one: optimizer states exist, so the peak is the steady-state one.
        profile_at = state.step + 1 if steps - state.step >= 2 else state.step
    time_at = None
    if measure_memory if measure_time is None else measure_time:
        after = profile_at + 1 if profile_at is not None else state.step + 1
        time_at = max(after, (state.step + steps) // 2) if after < steps else None
    while state.step < steps:
        profiled = state.step == profile_at
        memory = PeakMemory(state.env.device) if profiled else None
        saved = SavedTensors() if profiled else None
        times = StepTimes(state) if state.step == time_at else None
        with phase(f"step {state.step}") if phase else contextlib.nullcontext():
            with times.recording() if times else contextlib.nullcontext():
                record, acc = train_step(state, data, memory, saved)
        record["warmup"] = record["step"] < warmup_steps or profiled
        if times is not None:
            times_out = times.result()
            if times_out is not None:
                times_out["profiled_step"] = record["step"]
        if profiled:
            mem_out = {"peak_bytes": int(memory.peak), "baseline_bytes": int(memory.baseline), "method": memory.method,
                       "profiled_step": record["step"], "process_peak_rss_bytes": peak_rss_bytes(),
                       "accounting": {
                           "param_bytes": tensor_bytes(local(p) for p in state.model.parameters()),
                           "grad_bytes": int(acc.get("grad_bytes", 0)),
                           "optimizer_bytes": tensor_bytes(local(v) for st in state.optimizer.state.values()
                                                           for v in st.values() if torch.is_tensor(v)),
                           "activation_bytes": int(saved.peak)}}
        records.append(record)
        if dist.get_rank() == 0:
            log(f"step {record['step']}: loss {record['loss']:.4f} lr {record['lr']:.2e} "
                f"grad_norm {record['grad_norm']:.3f} time {record['time_s']:.3f}s"
                f"{' (excluded)' if record['warmup'] else ''}")
        if callback is not None and callback(state, record):
            break
    return {"steps": records, "memory": mem_out, "breakdown": times_out}


def validation_loss(state: TrainState, data, batches: int) -> dict:
    """Mean loss of forward passes over the first ``batches`` validation batches (the same tokens for every plan)."""
    batches = max(1, min(batches, data.num_validation_batches))
    total = 0.0
    for i in range(batches):
        x, y = data.validation_batch(i)
        loss = _step_loss(state, x, y, backward=False)
        dist.all_reduce(loss)
        total += float(loss)
    return {"step": state.step, "loss": total / batches, "tokens": batches * state.plan["global_batch"] * state.seq_len}


@torch.no_grad()
def full_parameters(state: TrainState) -> dict[str, torch.Tensor]:
    """{FQN: full fp32 tensor} of this stage's parameters (collective over the stage's meshes)."""
    from torch.distributed.tensor import DTensor
    out = {}
    for name, p in state.model.named_parameters(remove_duplicate=False):     # a tied weight under both names
        out[name] = (p.full_tensor() if isinstance(p, DTensor) else p).detach().float().cpu().clone()
    return out
