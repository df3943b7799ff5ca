"""Layers and optimizer parameters as galvatron-run holds them: DTensors on a tensor-parallel device mesh.

A degree-t layer is galvatron_models' whole module (``tp=1``) on the meta device, sharded by
``parallelize_module(module, mesh, galvatron_models.tp_plan(kind, family, sp))`` exactly as galvatron-run's
``apply_tp`` shards it, then materialised with each rank's shard of ``galvatron_models.initial_value`` (finite,
deterministic values). The mesh is rank 0 of t ranks under torch's fake process group: its collectives return at
once (the bandwidth probe measures them, the cost model adds them), so what is timed is the layer's compute with
DTensor's per-op dispatch, its module hooks and its redistribution bookkeeping, as every training step pays them.

The fake collectives of torch 2.13 write their outputs from this rank's input (all-gather: t copies of it;
reduce-scatter: this rank's chunk; all-reduce: the input unchanged), never leaving an output buffer uninitialised,
so the layer computes on the deterministic values it is fed; ``LayerRunner.check`` verifies after timing that the
output and every gradient are finite and free of subnormal numbers (which run far slower on CPUs), and the probe
fails if not (tests/test_wrapped.py pins the fake collectives' behaviour).

A process has one default process group, and the probe's ranks already run under a real one (their timing
barriers and the slowest-rank reduction need it). So every rank starts one child process (``WrappedChild``, a
fresh interpreter: nothing of the parent's process group is inherited) whose default group is the fake one,
re-created for each degree. The parent keeps its barriers and drives the child over the child's stdin and stdout;
the child stamps each call on its own clock (on one host the monotonic clock is shared between processes, so its
stamps are the parent's), so the pipe's round trip is outside every timed span. A separate timing path in the
same process would need a second, hand-registered process group next to the real default one (torch's
internals); the child needs only public APIs, and DTensor's caches of fake meshes never reach the parent.

    with WrappedChild(torch.device("cpu"), threads=1, shared_clock=True) as child:
        child.build(spec, "decoder", t=2, sp=True, dtype="fp32")
        child.inputs(batch=2, seq_len=64)
        stamp = child.stamp("forward")
"""
from __future__ import annotations

import contextlib
import os
import pickle
import select
import subprocess
import sys
import traceback

import torch
import torch.distributed as dist
from torch import nn

from galvatron_contracts.documents import GalvatronError
from galvatron_models import Block, Embedding, Head, initial_value, tp_plan, vocab_parallel_ce_sum

from .layers import make_inputs, set_recompute

TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
RUNNER_STEPS = ("forward", "backward", "stamp", "check")   # commands for the child's LayerRunner


@contextlib.contextmanager
def fake_tp_mesh(t: int, device_type: str):
    """A 1-D device mesh named "tp" of t ranks, this process its rank 0, over torch's fake process group (the
    process's default group while inside). DTensor's sharding-propagation caches are cleared on leaving: they key
    on a mesh's layout, not on its groups, which are then gone."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor.debug import _clear_sharding_prop_cache
    from torch.testing._internal.distributed.fake_pg import FakeStore  # also registers the "fake" backend

    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=t)
    try:
        yield init_device_mesh(device_type, (t,), mesh_dim_names=("tp",))
    finally:
        dist.destroy_process_group()
        _clear_sharding_prop_cache()


def local(t: torch.Tensor) -> torch.Tensor:
    from torch.distributed.tensor import DTensor

    return t.to_local() if isinstance(t, DTensor) else t


class VocabParallelLoss(nn.Module):
    """The head and the loss galvatron-run takes of its vocabulary shard: ``vocab_parallel_ce_sum`` over the tp
    group (rank 0 holds vocabulary rows [0, V/t)), mean over the tokens."""

    def __init__(self, spec: dict, group):
        super().__init__()
        self.head, self.group = Head(spec), group

    def forward(self, x, targets):
        return vocab_parallel_ce_sum(self.head(x), targets, self.group, 0) / targets.numel()


def build_wrapped(spec: dict, layer: str, mesh, sp: bool, dtype=torch.float32, device="cpu") -> nn.Module:
    """Rank 0's degree-``mesh.size()`` ``layer`` as galvatron-run builds it: whole on meta, sharded with the
    runtime's plan, materialised on ``device`` with its shard of the model's initial values (in ``dtype``, as
    layers.build_shard casts the plain shard)."""
    with torch.device("meta"):
        if layer == "decoder":
            module, target = Block(spec), None
        elif layer == "embedding":
            module, target = Embedding(spec), None
        elif layer == "head":
            module = VocabParallelLoss(spec, mesh.get_group("tp"))
            target = module.head
        else:
            raise ValueError(f"unknown layer kind {layer!r}")
    from torch.distributed.tensor.parallel import parallelize_module

    parallelize_module(target if target is not None else module, mesh, tp_plan(layer, spec["family"], sp))
    module.to_empty(device=device)
    with torch.no_grad():
        for name, p in module.named_parameters():
            shard = local(p)
            shard.copy_(initial_value(spec, name, shard.shape, seed=0))
    return module.to(dtype=dtype)


def wrapped_inputs(spec: dict, layer: str, batch: int, seq_len: int, t: int, sp: bool, dtype=torch.float32,
                   device="cpu") -> tuple[tuple, torch.Tensor | None]:
    """The local tensors galvatron-run feeds a degree-t layer: under sequence parallelism the activation between
    layers is this rank's 1/t of the sequence (the decoder's input and output, the embedding's output, the
    head's input); token ids and targets are whole."""
    part = seq_len // t if sp else seq_len
    if layer == "embedding":
        (ids,), grad = make_inputs(spec, layer, batch, seq_len, dtype, device)
        return (ids,), grad[:, :part].contiguous()
    if layer == "head":
        (x, targets), _ = make_inputs(spec, layer, batch, seq_len, dtype, device)
        return (x[:, :part].detach().contiguous().requires_grad_(), targets), None
    return make_inputs(spec, layer, batch, part, dtype, device)


class LayerRunner:
    """One module on one micro-batch, run in the steps ``compute.time_runner`` times: ``forward(recompute)``,
    then ``backward()`` of that forward; ``stamp(step)`` times one step with ``timer.stamp``."""

    def __init__(self, module: nn.Module, args: tuple, grad: torch.Tensor | None, timer):
        self.module, self.args, self.grad, self.timer = module, args, grad, timer
        self.out = None

    def forward(self, recompute: bool = False) -> None:
        set_recompute(self.module, recompute)
        self.out = self.module(*self.args)

    def backward(self) -> None:
        out, self.out = self.out, None
        out.backward(self.grad)
        set_recompute(self.module, False)

    def stamp(self, step: str, *args) -> tuple[float, float]:
        return self.timer.stamp(lambda: getattr(self, step)(*args))

    def check(self, what: str) -> None:
        """Fail unless one more forward and backward give a finite output and finite gradients without subnormal
        numbers (the values the timed passes computed on)."""
        for p in self.module.parameters():
            p.grad = None
        self.forward()
        tensors = {"output": self.out.detach()}
        self.backward()
        tensors.update({f"gradient of {n}": local(p.grad) for n, p in self.module.named_parameters()
                        if p.grad is not None})
        tensors.update({f"gradient of input {i}": a.grad for i, a in enumerate(self.args)
                        if torch.is_tensor(a) and a.grad is not None})
        for name, x in tensors.items():
            bad = abnormal(x)
            if bad:
                raise GalvatronError(f"{what}: the {name} holds {bad} non-finite or subnormal values; its timing "
                                     f"would not be the layer's")


def abnormal(x: torch.Tensor) -> int:
    """How many values of ``x`` are NaN, infinite or subnormal."""
    if not x.is_floating_point():
        return 0
    x = x.detach().float()
    tiny = torch.finfo(x.dtype).tiny
    return int((~torch.isfinite(x)).sum() + ((x != 0) & (x.abs() < tiny)).sum())


# --- the child process ---------------------------------------------------------------------------------------

class _ChildState:
    """What the child holds between commands: its fake world, the module and the runner over it."""

    def __init__(self, device: torch.device, timer):
        self.device, self.timer = device, timer
        self.world = contextlib.ExitStack()
        self.mesh, self.t, self.spec, self.layer, self.sp, self.dtype = None, None, None, None, False, None
        self.module, self.runner, self.optimizer = None, None, None

    def world_of(self, t: int) -> None:
        """Enter the fake world of t ranks (leaving the previous one and what was built in it)."""
        if t == self.t:
            return
        self.module = self.runner = self.optimizer = None
        self.world.close()
        self.mesh, self.t = self.world.enter_context(fake_tp_mesh(t, self.device.type)), t

    def build(self, spec: dict, layer: str, t: int, sp: bool, dtype: str) -> None:
        self.world_of(t)
        self.spec, self.layer, self.sp, self.dtype = spec, layer, sp, TORCH_DTYPES[dtype]
        self.runner = None
        self.module = build_wrapped(spec, layer, self.mesh, sp, self.dtype, self.device)

    def inputs(self, batch: int, seq_len: int) -> None:
        args, grad = wrapped_inputs(self.spec, self.layer, batch, seq_len, self.t, self.sp, self.dtype, self.device)
        self.runner = LayerRunner(self.module, args, grad, self.timer)

    def optimizer_point(self, sizes: list[int], seed: int) -> None:
        """Parameters of ``sizes`` held as DTensors (Shard(0) over a fake mesh of 2, as FSDP2 and TP hold them)."""
        from .optimizer import OptimizerPoint

        self.world_of(self.t or 2)
        self.module = self.runner = None
        self.optimizer = OptimizerPoint(sizes, self.device, seed, all_reduce=dist.all_reduce, mesh=self.mesh)

    def optimizer_stamp(self) -> tuple[float, float]:
        return self.timer.stamp(self.optimizer.step)

    def close(self) -> None:
        self.world.close()


def _child_main(device: str, threads: int, shared_clock: bool, timeout_s: float) -> None:
    """The child's loop: pickled (method, args) on stdin, ("ok", result) or ("error", message) on the original
    stdout (anything printed goes to stderr), until None arrives."""
    from .bandwidth import Timer

    answers = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    commands = sys.stdin.buffer
    torch.set_num_threads(threads)
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    state = _ChildState(dev, Timer(dev, timeout_s, distributed=False, shared_clock=shared_clock))
    pickle.dump(("ok", "ready"), answers)     # imports done: from here on the child is idle between calls
    answers.flush()
    try:
        while (msg := pickle.load(commands)) is not None:
            name, args = msg
            try:
                target = state.runner if name in RUNNER_STEPS else state
                answer = ("ok", getattr(target, name)(*args))
            except GalvatronError as e:
                answer = ("error", str(e))
            except Exception:
                answer = ("error", traceback.format_exc())
            pickle.dump(answer, answers)
            answers.flush()
    finally:
        state.close()


class WrappedChild:
    """The parent's handle on its child process (``python -m galvatron_probe.wrapped``: a fresh interpreter, no
    process group inherited); each method call runs there and returns its result."""

    def __init__(self, device: torch.device, threads: int, shared_clock: bool, timeout_s: float = 60.0):
        args = [str(device), str(threads), str(int(shared_clock)), str(timeout_s)]
        self.process = subprocess.Popen([sys.executable, "-m", "galvatron_probe.wrapped", *args],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.answer_s = 10 * timeout_s      # a whole timing point, or building a layer, runs in one call
        # wait for the child's imports (a few CPU seconds): run beside the first timings, they slowed those 2x
        self._answer("starting up")

    def call(self, name: str, *args):
        pickle.dump((name, args), self.process.stdin)
        self.process.stdin.flush()
        return self._answer(name)

    def _answer(self, name: str):
        ready, _, _ = select.select([self.process.stdout], [], [], self.answer_s)
        if not ready:
            raise GalvatronError(f"the probe's DTensor child process did not answer {name!r} in "
                                 f"{self.answer_s:.0f} s")
        try:
            status, result = pickle.load(self.process.stdout)
        except EOFError:
            raise GalvatronError(f"the probe's DTensor child process exited (code {self.process.wait()}) in "
                                 f"{name!r}; its error is above") from None
        if status != "ok":
            raise GalvatronError(f"the probe's DTensor child process failed in {name!r}: {result}")
        return result

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        return lambda *args: self.call(name, *args)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            pickle.dump(None, self.process.stdin)
            self.process.stdin.close()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> WrappedChild:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


if __name__ == "__main__":
    _child_main(sys.argv[1], int(sys.argv[2]), bool(int(sys.argv[3])), float(sys.argv[4]))
