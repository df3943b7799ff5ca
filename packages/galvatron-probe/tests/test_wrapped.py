"""Layers and optimizer parameters as galvatron-run holds them (wrapped.py), in this process under a fake mesh and
through the child process the probe's ranks use."""
import pytest
import torch
from test_layers import GPT, LLAMA
from torch.distributed._functional_collectives import AsyncCollectiveTensor

from galvatron_contracts.documents import GalvatronError
from galvatron_probe.bandwidth import Timer
from galvatron_probe.compute import time_runner
from galvatron_probe.layers import build_shard, make_inputs, set_recompute
from galvatron_probe.memory import saved_bytes_per_sample, saved_storages
from galvatron_probe.optimizer import OptimizerPoint, fit_nonneg
from galvatron_probe.wrapped import (
    LayerRunner,
    WrappedChild,
    abnormal,
    build_wrapped,
    fake_tp_mesh,
    local,
    wrapped_inputs,
)

CPU = torch.device("cpu")


def test_fake_collectives_write_their_outputs_from_the_local_input():
    """What the timing relies on (wrapped.py's docstring): no fake collective leaves an output uninitialised."""
    import torch.distributed._functional_collectives as fc

    with fake_tp_mesh(2, "cpu") as mesh:
        for n in (3, 4096):
            x = torch.randn(n)
            y = torch.randn(2 * n)
            assert torch.equal(fc.wait_tensor(fc.all_gather_single(x, 0, mesh)), torch.cat([x, x]))
            assert torch.equal(fc.wait_tensor(fc.reduce_scatter_single(y, "sum", 0, mesh)), y[:n])
            assert torch.equal(fc.wait_tensor(fc.all_reduce(x, "sum", mesh)), x)


def _saved(module, args, recompute):
    """memory.saved_storages, each saved DTensor counted by its local storage (sorted bytes)."""
    params = {local(p).untyped_storage().data_ptr() for p in module.parameters()}
    seen = {}

    def pack(t):
        x = local(t)
        storage = (x.elem if isinstance(x, AsyncCollectiveTensor) else x).untyped_storage()
        if storage.nbytes() and storage.data_ptr() not in params:
            seen.setdefault(storage.data_ptr(), storage.nbytes())
        return t

    set_recompute(module, recompute)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        module(*args)
    set_recompute(module, False)
    return sorted(seen.values())


@pytest.mark.parametrize("spec", [GPT, LLAMA], ids=["gpt", "llama"])
@pytest.mark.parametrize("layer", ["decoder", "embedding", "head"])
def test_dtensor_wrapping_saves_what_the_plain_shard_saves(spec, layer):
    """memory.py counts the plain degree-t shard: the runtime's DTensor module saves the same storages (without
    sequence parallelism; with it the cost model derives the split from the same counts)."""
    for recompute in (False, True):
        with fake_tp_mesh(2, "cpu") as mesh:
            wrapped = build_wrapped(spec, layer, mesh, sp=False)
            args, _ = wrapped_inputs(spec, layer, 2, 16, 2, sp=False)
            got = _saved(wrapped, args, recompute)
        plain = build_shard(spec, layer, 2)
        args, _ = make_inputs(spec, layer, 2, 16)
        assert got == sorted(saved_storages(plain, args, recompute))


@pytest.mark.parametrize("spec", [GPT, LLAMA], ids=["gpt", "llama"])
def test_under_sp_the_decoder_saves_the_plain_split_with_its_replicated_part_split(spec):
    """What the cost model derives from the plain shard's counts under sequence parallelism: the tp-replicated
    part divided by t, except the two sequence-gathered inputs of the column-parallel linears (attention's and
    the MLP's), saved whole; under full recompute only the layer's input, 1/t of the sequence."""
    t, s, e = 2, 16, 4
    for recompute in (False, True):
        per_batch = []
        for b in (1, 2):
            with fake_tp_mesh(t, "cpu") as mesh:
                wrapped = build_wrapped(spec, "decoder", mesh, sp=True)
                args, _ = wrapped_inputs(spec, "decoder", b, s, t, sp=True)
                per_batch.append(sum(_saved(wrapped, args, recompute)))
        split = saved_bytes_per_sample(spec, "decoder", t, s, recompute)
        gathered = 0 if recompute else 2 * s * spec["hidden"] * e
        want = split["tp_divided"] + (split["tp_replicated"] - gathered) / t + gathered
        assert per_batch[1] - per_batch[0] == want


@pytest.mark.parametrize("layer", ["decoder", "embedding", "head"])
@pytest.mark.parametrize("sp", [False, True])
def test_the_wrapped_layer_holds_the_plain_shards_parameters_and_shapes(layer, sp):
    """Rank 0's local parameters are the degree-t shard's, and the local activations are 1/t of the sequence
    under sequence parallelism."""
    t, s = 2, 16
    with fake_tp_mesh(t, "cpu") as mesh:
        wrapped = build_wrapped(GPT, layer, mesh, sp)
        args, grad = wrapped_inputs(GPT, layer, 2, s, t, sp)
        out = wrapped(*args)
        shapes = {n.removeprefix("head.") if layer == "head" else n: tuple(local(p).shape)
                  for n, p in wrapped.named_parameters()}
    plain = {n: tuple(p.shape) for n, p in build_shard(GPT, layer, t).named_parameters()}
    assert shapes == {n.removeprefix("head.") if layer == "head" else n: v for n, v in plain.items()}
    part = s // t if sp else s
    if layer == "head":
        assert out.shape == () and args[0].shape[1] == part
    else:
        assert out.shape == grad.shape == (2, part, GPT["hidden"])


def test_check_refuses_nonfinite_and_subnormal_values():
    assert abnormal(torch.tensor([1.0, 0.0, -2.0])) == 0
    assert abnormal(torch.tensor([float("nan"), float("inf"), 1e-40, 1.0])) == 3
    timer = Timer(CPU, 30, distributed=False)
    with fake_tp_mesh(2, "cpu") as mesh:
        module = build_wrapped(GPT, "decoder", mesh, sp=False)
        (x,), grad = wrapped_inputs(GPT, "decoder", 1, 8, 2, sp=False)
        LayerRunner(module, (x,), grad, timer).check("decoder")
        x = x.detach().clone()
        x[0, 0, 0] = float("nan")
        with pytest.raises(GalvatronError, match="non-finite or subnormal"):
            LayerRunner(module, (x.requires_grad_(),), grad, timer).check("decoder")


def test_the_child_times_the_wrapped_layer_and_dtensor_optimizer_points():
    timer = Timer(CPU, 30, distributed=False)
    with WrappedChild(CPU, threads=1, shared_clock=True, timeout_s=30) as child:
        for sp in (False, True):
            child.build(LLAMA, "decoder", 2, sp, "fp32")
            child.inputs(2, 16)
            times = time_runner(child, timer, warmup=0, repeats=2)
            child.check("decoder")
            for phase in ("forward", "backward", "backward_recompute"):
                assert times[phase]["repeats"] == 2 and times[phase]["min_s"] > 0
        child.optimizer_point([16, 32], 0)
        start, end = child.optimizer_stamp()
        assert end > start
        with pytest.raises(GalvatronError, match="failed in 'build'"):
            child.build(LLAMA, "nonsense", 2, False, "fp32")


def test_the_optimizer_point_updates_dtensor_parameters_as_plain_ones():
    """Same values, same step: a DTensor point changes its local shards exactly as a plain point its tensors."""
    plain = OptimizerPoint([5, 7], CPU, seed=3)
    with fake_tp_mesh(2, "cpu") as mesh:
        wrapped = OptimizerPoint([5, 7], CPU, seed=3, mesh=mesh)
        before = [p.detach().clone() for p in plain.params]
        plain.step(), wrapped.step()
        for a, b, old in zip(plain.params, wrapped.params, before, strict=True):
            assert torch.equal(a.detach(), local(b).detach()) and not torch.equal(a.detach(), old)


def _sse(rows, ys, coef):
    return sum((sum(c * x for c, x in zip(coef, r)) - y) ** 2 for r, y in zip(rows, ys))


@pytest.mark.parametrize("seed", range(5))
def test_fit_nonneg_is_no_worse_than_any_nonnegative_candidate(seed):
    """Against brute force: a grid of non-negative coefficient vectors around the fit never fits better."""
    g = torch.Generator().manual_seed(seed)
    rows = [[1.0, float(t), float(p)] for t, p in torch.randint(1, 50, (6, 2), generator=g).tolist()]
    truth = (torch.rand(3, generator=g) - 0.3).tolist()        # a negative true coefficient now and then
    ys = [sum(c * x for c, x in zip(truth, r)) + 0.05 * float(torch.randn((), generator=g)) for r in rows]
    coef = fit_nonneg(rows, ys)
    assert min(coef) >= 0
    best = _sse(rows, ys, coef)
    steps = [i / 20 for i in range(-20, 21)]
    for da in steps:
        for db in steps:
            for dc in steps:
                cand = [max(0.0, coef[0] + da), max(0.0, coef[1] + db / 10), max(0.0, coef[2] + dc / 10)]
                assert _sse(rows, ys, cand) >= best - 1e-9


def test_fit_nonneg_recovers_exact_nonnegative_coefficients():
    rows = [[1.0, t, p] for t in (16, 32, 64) for p in (100, 1000)]
    ys = [0.5 + 0.01 * t + 0.002 * p for _, t, p in rows]
    assert fit_nonneg(rows, ys) == pytest.approx([0.5, 0.01, 0.002])
