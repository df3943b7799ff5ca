"""Memory of one layer on one rank, exact in bytes, as the runtime (FSDP2 + DTensor TP) holds it.

Notation: P elements of the layer's TP shard (one rank's, replicated tensors included), d the layer's dp degree,
e bytes per element of the compute dtype (fp32 4, bf16 2), P_d = sum over the shard's tensors of
ceil(dim0 / d) * (numel / dim0): FSDP2 shards every tensor on dim 0 and pads dim 0 to a multiple of d.
AdamW holds 2 fp32 states per parameter (8 B), SGD with momentum (galvatron-run's) one (4 B). Gradients are
reduced in fp32.

    sharding  param_bytes              grad_bytes   optimizer_bytes   workspace (transient, fixed part: the larger
                                                                      of two backward phases, `backward_phases`)
    ddp       4P (bf16: + 2P autocast  4P           8P                e*P fresh grads (bf16: + 4P fp32 cast of
              copies, the whole step)                                 the grads)
    zero1     4P_d + e*P (unsharded,   4P (whole,   8P_d              the zero2 terms
              kept the whole step)     accumulated)
    zero2     4P_d + e*P (unsharded,   4P_d         8P_d              max(compute: e*P fresh grads + 4P kept
              kept fwd -> bwd)                                        reduce-scatter input of the unit above;
                                                                      reduce: 4P input (+ 4P gloo's copy) + 4P_d)
    zero3     4P_d                     4P_d         8P_d              max(compute: 2 e*P gathered (this layer's,
                                                                      the next one's prefetched) + the zero2
                                                                      compute terms; reduce: e*P prefetched +
                                                                      the zero2 reduce terms)

ddp layers are plain modules whose fp32 weights autocast casts to bf16 in bf16 mode; the runtime runs a step's
micro-batches in one autocast region, so the cast copies stay cached for the whole step (an exact per-layer
term, not a transient). FSDP2 units hold the sharded fp32 master and gather into an unsharded copy in the compute
dtype (zero2 keeps it from forward to backward, zero3 frees it after each and, in backward, gathers the next layer
while this one runs: FSDP2's implicit backward prefetch). Each unit's backward ends in a reduce-scatter whose fp32
input FSDP2 copies the fresh gradients into; gloo's reduce-scatter clones that input once more (NCCL does not).
The two phases of a unit's backward hold different buffers and never overlap (measured here: 2 gloo ranks,
llama-512 zero3 + recompute, every buffer live at the peak named by the op that made it).
zero1 is the same FSDP2 unit driven once per step (galvatron-run's DeferredReduction): gathered at the first
forward and kept unsharded through every micro-batch, its gradients accumulated whole in fp32 (the reduce dtype)
until the last micro-batch's backward reduce-scatters them into the 4P_d shard. The whole gradients are counted, as
ddp's are: they live from the first micro-batch's backward to the last one's, beside the activations of the
micro-batches in flight (with one micro-batch they never coexist, and zero1 holds what zero2 does).
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


def model_states(P: int, P_d: int, sharding: str, dtype: str, optimizer: str) -> dict[str, int]:
    """Persistent bytes (param, grad, optimizer) of one layer on one rank (the table of the module docstring; the
    transient workspace is ``backward_workspace``)."""
    e = DTYPE_BYTES[dtype]
    states = OPTIMIZER_STATES[optimizer] * 4
    if sharding == "ddp":
        return {"param_bytes": 4 * P + (e * P if dtype != "fp32" else 0), "grad_bytes": 4 * P,
                "optimizer_bytes": states * P}
    if sharding == "zero1":
        return {"param_bytes": 4 * P_d + e * P, "grad_bytes": 4 * P, "optimizer_bytes": states * P_d}
    if sharding == "zero2":
        return {"param_bytes": 4 * P_d + e * P, "grad_bytes": 4 * P_d, "optimizer_bytes": states * P_d}
    if sharding == "zero3":
        return {"param_bytes": 4 * P_d, "grad_bytes": 4 * P_d, "optimizer_bytes": states * P_d}
    raise ValueError(sharding)


def backward_phases(P: int, P_d: int, sharding: str, dtype: str, backend: str = "nccl") -> dict[str, int]:
    """Transient bytes of one layer on one rank in each phase of its backward, beside the persistent states.

    FSDP2 (torch 2.13, ``FSDPParamGroup.post_backward`` and ``foreach_reduce``) runs a unit's backward in two
    phases that never overlap, so the workspace is the larger of them, not their sum:

    - compute: the unit's gathered parameters (zero3; zero2/zero1 keep theirs in param_bytes) and the next unit's,
      prefetched while this one runs (zero3); the reduce-scatter input of the unit above, which FSDP2 keeps until
      this unit's post-backward (one buffer in flight, ``reduce_scatter_max_input_buffers``); the fresh unsharded
      gradients in the compute dtype (FSDP2's unsharded parameter is in param_dtype, so is its gradient).
    - reduce: post-backward reshards this unit and drops the kept buffer first, then copies the fresh gradients
      into a new fp32 reduce-scatter input and frees them; the reduce-scatter writes a new fp32 shard (accumulated
      into the sharded gradient from the second micro-batch on), and gloo clones its input for the collective.

    The neighbours' buffers (the prefetched unit, the kept input) are counted at this layer's size: exact between
    alike units, the layers of one kind; the stage's workspace is the largest layer's. The per-sample workspace
    (a recomputed forward) lives in the compute phase; the cost model adds it to the larger phase, an upper bound
    where the reduce phase is the larger. ddp layers (not FSDP) hold their fresh gradients (and, in bf16, their
    fp32 cast) while autograd accumulates them."""
    e = DTYPE_BYTES[dtype]
    if sharding == "ddp":
        return {"compute": e * P + (4 * P if dtype != "fp32" else 0)}
    if sharding not in ("zero1", "zero2", "zero3"):
        raise ValueError(sharding)
    gathered = 2 * e * P if sharding == "zero3" else 0          # this unit's and the prefetched next unit's
    prefetched = e * P if sharding == "zero3" else 0
    reduce_input = 4 * P
    gloo_copy = reduce_input if backend == "gloo" else 0
    return {"compute": gathered + reduce_input + e * P,
            "reduce": prefetched + reduce_input + gloo_copy + 4 * P_d}


def backward_workspace(P: int, P_d: int, sharding: str, dtype: str, backend: str = "nccl") -> int:
    """The fixed workspace of one layer on one rank: its largest backward phase (``backward_phases``)."""
    return max(backward_phases(P, P_d, sharding, dtype, backend).values())


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
