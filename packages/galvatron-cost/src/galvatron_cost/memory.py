"""Memory of one layer on one rank, exact in bytes, as the runtime (FSDP2 + DTensor TP) holds it.

Notation: P elements of the layer's TP shard (one rank's, replicated tensors included), d the layer's dp degree,
e bytes per element of the compute dtype (fp32 4, bf16 2), P_d = sum over the shard's tensors of
ceil(dim0 / d) * (numel / dim0): FSDP2 shards every tensor on dim 0 and pads dim 0 to a multiple of d.
AdamW holds 2 fp32 states per parameter (8 B), SGD with momentum (galvatron-run's) one (4 B). Gradients are
reduced in fp32.

    sharding  param_bytes              grad_bytes   optimizer_bytes   workspace (transient, fixed part)
    ddp       4P (bf16: + 2P autocast  4P           8P                e*P fresh grads (bf16: + 4P fp32 cast of
              copies, the whole step)                                 the grads)
    zero2     4P_d + e*P (unsharded,   4P_d         8P_d              e*P fresh grads + 4P reduce-scatter input
              kept fwd -> bwd)                                        (+ 4P its copy on gloo)
    zero3     4P_d                     4P_d         8P_d              2 e*P gathered params (this layer's and the
                                                                      next one's, prefetched) + the zero2 terms

ddp layers are plain modules whose fp32 weights autocast casts to bf16 in bf16 mode; the runtime runs a step's
micro-batches in one autocast region, so the cast copies stay cached for the whole step (an exact per-layer
term, not a transient). FSDP2 units hold the sharded fp32 master and gather into an unsharded copy in the compute
dtype (zero2 keeps it from forward to backward, zero3 frees it after each and, in backward, gathers the next layer
while this one runs: FSDP2's implicit backward prefetch). Each unit's backward ends in a reduce-scatter whose fp32
input FSDP2 copies the fresh gradients into; gloo's reduce-scatter clones that input once more (NCCL does not).
With d == 1 the sharded variants equal ddp and are not emitted.

Activations (per sample per rank, from the model-profile's measured split at that TP degree):
``tp_divided + tp_replicated / (tp if sp else 1)``, of the full layer or, under recompute, of what the profile says
stays saved; divided by d (each rank runs b/d samples). Under sp the runtime (torch SequenceParallel with
PrepareModuleInput) gathers the sequence before the column-parallel linears, which save the gathered input: those
bytes stay whole (a decoder's attention and MLP inputs, 2 s h e per sample; the head's input, s h e). A TP
degree the profile lacks is derived from tp=1: ``tp_divided/t + tp_replicated``. Recompute adds one layer's full
activations to the workspace (the recomputed forward lives until that layer's backward ends).
"""
from __future__ import annotations

import math

DTYPE_BYTES = {"fp32": 4, "bf16": 2}
OPTIMIZER_STATES = {"adamw": 2, "sgd": 1}      # fp32 states per parameter: AdamW's two moments, SGD's momentum


Shapes = list[tuple[int, int]]


def param_shapes(spec: dict, layer: str, tp: int, lm_head: bool = True) -> tuple[Shapes, Shapes]:
    """(tp-divided tensors, tp-replicated tensors) of one TP shard as (dim0, numel) pairs, reference architecture.

    Column-parallel weights are split on dim 0, row-parallel ones on dim 1; vocabulary-parallel tables hold
    ceil(V/t) rows (the largest shard). lm_head=False leaves the head's output weight out (tied, pp == 1)."""
    h, f, v, t = spec["hidden"], spec["ffn_hidden"], spec["vocab_size"], tp
    kv = spec["kv_heads"] * (h // spec["heads"])
    gpt2 = spec["family"] == "gpt2"
    vt = -(-v // t)
    if layer == "decoder":
        if gpt2:
            div = [(3 * h // t, 3 * h // t * h), (3 * h // t, 3 * h // t), (h, h * (h // t)),
                   (f // t, f // t * h), (f // t, f // t), (h, h * (f // t))]
            rep = [(h, h)] * 4 + [(h, h), (h, h)]          # 2 LayerNorms (w, b), proj bias, fc2 bias
        else:
            div = [(h // t, h // t * h), (kv // t, kv // t * h), (kv // t, kv // t * h), (h, h * (h // t)),
                   (f // t, f // t * h), (f // t, f // t * h), (h, h * (f // t))]
            rep = [(h, h), (h, h)]
        return div, rep
    if layer == "embedding":
        rep = [(spec["max_seq_len"], spec["max_seq_len"] * h)] if gpt2 else []
        return [(vt, vt * h)], rep
    if layer == "head":
        rep = [(h, h), (h, h)] if gpt2 else [(h, h)]
        return ([(vt, vt * h)] if lm_head else []), rep
    raise ValueError(layer)


def numel(shapes) -> int:
    return sum(n for _, n in shapes)


def sharded_numel(shapes, d: int) -> int:
    """Elements one rank holds when every tensor is sharded on dim 0 over d ranks, dim 0 padded to a multiple of d."""
    return sum(-(-d0 // d) * (n // d0) for d0, n in shapes if d0 > 0)


def model_states(P: int, P_d: int, sharding: str, dtype: str, optimizer: str,
                 backend: str = "nccl") -> dict[str, int]:
    """Persistent bytes (param, grad, optimizer) and the fixed transient workspace of one layer on one rank
    (the table of the module docstring; ``backend``: the process group's, gloo copies reduce-scatter inputs)."""
    e = DTYPE_BYTES[dtype]
    states = OPTIMIZER_STATES[optimizer] * 4
    bf16 = dtype != "fp32"
    fresh_grads = e * P + (4 * P if bf16 else 0)          # unsharded grad in compute dtype (+ its fp32 cast)
    if sharding == "ddp":
        return {"param_bytes": 4 * P + (e * P if bf16 else 0), "grad_bytes": 4 * P, "optimizer_bytes": states * P,
                "workspace_bytes": fresh_grads}
    reduce_input = 4 * P * (2 if backend == "gloo" else 1)     # the fp32 reduce-scatter input (and gloo's copy)
    if sharding == "zero2":
        return {"param_bytes": 4 * P_d + e * P, "grad_bytes": 4 * P_d, "optimizer_bytes": states * P_d,
                "workspace_bytes": fresh_grads + reduce_input}
    if sharding == "zero3":
        return {"param_bytes": 4 * P_d, "grad_bytes": 4 * P_d, "optimizer_bytes": states * P_d,
                "workspace_bytes": 2 * e * P + fresh_grads + reduce_input}
    raise ValueError(sharding)


def activation_per_sample(split: dict, tp: int, sp: bool, dp: int, gathered: float = 0.0) -> float:
    """Bytes per sample of the micro-batch (all replicas) on one rank: (divided + replicated / (tp if sp)) / dp.

    `gathered`: bytes of the replicated part that stay whole under sp because the column-parallel linears save
    the sequence-gathered input (torch's PrepareModuleInput / ColwiseParallel; Megatron re-gathers instead)."""
    if not sp or tp == 1:
        return (split["tp_divided"] + split["tp_replicated"]) / dp
    whole = min(gathered, split["tp_replicated"])
    return (split["tp_divided"] + (split["tp_replicated"] - whole) / tp + whole) / dp


def derive_split(split_tp1: dict, tp: int) -> dict:
    """A TP degree's split from tp=1: the divided part shrinks by tp, the replicated part stays whole."""
    return {"tp_divided": math.ceil(split_tp1["tp_divided"] / tp), "tp_replicated": split_tp1["tp_replicated"]}
