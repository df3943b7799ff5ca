"""Exact bytes a layer saves for backward, counted with saved-tensor hooks.

Every tensor autograd packs during the forward is seen; tensors sharing a storage count once (the storage's
bytes); parameters and buffers (model state, not activations) are left out. Under full recompute (``Block.recompute``,
the runtime's switch: torch.utils.checkpoint, use_reentrant=False) what stays saved is what checkpoint keeps.

Each saved storage is classified by building the same shard with every split width doubled (``widen=2``): a storage
that doubles is one the TP degree divides (``tp_divided``); one that stays the same size is held whole by every TP
rank (``tp_replicated``, what Megatron sequence parallelism divides by t). Per-sample bytes are the difference
between a 2-sample and a 1-sample micro-batch, so constants that do not grow with the batch (position ids) drop out.

    saved_bytes_per_sample(load_model_spec("tiny-gpt"), "decoder", t=2, seq_len=64)
    # {'tp_divided': ..., 'tp_replicated': ...}
"""
from __future__ import annotations

import torch

from galvatron_contracts.documents import GalvatronError

from .layers import build_shard, make_inputs, set_recompute


def saved_storages(module: torch.nn.Module, args: tuple, recompute: bool = False) -> list[int]:
    """Bytes of each distinct storage saved for backward by one forward, in the order first saved."""
    state = {t.untyped_storage().data_ptr() for t in list(module.parameters()) + list(module.buffers())}
    seen: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if storage.nbytes() and ptr not in state and ptr not in seen:
            seen[ptr] = storage.nbytes()
        return t

    set_recompute(module, recompute)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = module(*args)
    set_recompute(module, False)
    del out
    return list(seen.values())


def saved_bytes_per_sample(spec: dict, layer: str, t: int, seq_len: int, recompute: bool = False,
                           dtype=torch.float32, device="cpu") -> dict:
    """{'tp_divided', 'tp_replicated'}: bytes one TP rank's shard saves for backward per sample."""

    def run(widen, batch):
        torch.manual_seed(0)
        module = build_shard(spec, layer, t, widen=widen, dtype=dtype, device=device)
        args, _ = make_inputs(spec, layer, batch, seq_len, dtype=dtype, device=device)
        return saved_storages(module, args, recompute)

    one, wide, two = run(1, 1), run(2, 1), run(1, 2)
    if not (len(one) == len(wide) == len(two)):
        raise GalvatronError(f"internal error: {layer} (tp {t}) saved {len(one)}, {len(wide)} and {len(two)} tensors "
                             f"in runs that should save the same ones")
    split = {"tp_divided": 0, "tp_replicated": 0}
    for i, (a, w, b) in enumerate(zip(one, wide, two, strict=True)):
        if w == 2 * a:
            part = "tp_divided"
        elif w == a:
            part = "tp_replicated"
        else:
            raise GalvatronError(f"internal error: saved tensor {i} of {layer} (tp {t}) has {a} bytes, {w} when the "
                                 f"split widths double: neither divided nor replicated")
        split[part] += b - a
    return split


def workspace_bytes_per_sample(spec: dict, layer: str, t: int, seq_len: int, dtype=torch.float32,
                               device="cpu") -> int | None:
    """Peak temporary bytes per sample beyond what the layer holds, on CUDA (the caching allocator's counters);
    None elsewhere. Forward: peak above what stays allocated after it (saved tensors, output); backward: peak
    above the allocation when it starts. The larger of the two, as bytes(2 samples) - bytes(1 sample)."""
    device = torch.device(device)
    if device.type != "cuda":
        return None

    def peak(batch):
        torch.manual_seed(0)
        module = build_shard(spec, layer, t, dtype=dtype, device=device)
        args, grad = make_inputs(spec, layer, batch, seq_len, dtype=dtype, device=device)
        module(*args).backward(grad)  # gradients exist from here on, as in training
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        out = module(*args)
        torch.cuda.synchronize(device)
        held = torch.cuda.memory_allocated(device)
        forward = torch.cuda.max_memory_allocated(device) - held
        torch.cuda.reset_peak_memory_stats(device)
        out.backward(grad)
        torch.cuda.synchronize(device)
        backward = torch.cuda.max_memory_allocated(device) - held
        del out, module, args, grad
        return max(forward, backward, 0)

    return max(0, peak(2) - peak(1))
