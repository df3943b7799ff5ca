"""The tensor-parallel (and Megatron-style sequence-parallel) sharding plan of each layer kind, for
``torch.distributed.tensor.parallel.parallelize_module``:

    from torch.distributed.tensor.parallel import parallelize_module
    parallelize_module(block, tp_mesh, tp_plan("decoder", "llama", sequence_parallel=True))
    partial = sp_partial_params("decoder", "llama")     # gradients to all-reduce over tp after backward

Layer kinds and their modules (galvatron_models.decoder): ``embedding`` (Embedding: vocabulary-parallel token
table, rows split), ``decoder`` (Block: q/k/v and fc or gate/up column-parallel, o and proj or down row-parallel,
so each rank holds whole heads), ``head`` (Head: vocabulary-parallel output projection, logits split over the
vocabulary; the loss is galvatron_models.loss.vocab_parallel_ce_sum).

The activation between layers is replicated over tp, or with sequence parallelism split over tp along the
sequence (``Shard(1)``); each block gathers it before attention and before the MLP, and its row-parallel outputs
reduce back to that layout. Under sequence parallelism the norms (and gpt2's position table) see only their
rank's part of the sequence, so their gradients are partial sums over tp: ``sp_partial_params`` names them.

Every style leaves ``src_data_rank`` unset: the modules are sharded on the meta device and each rank then
initialises its own shard (``initial_value``), so no rank scatters a full value.
"""
from __future__ import annotations

from torch.distributed.tensor import Replicate, Shard
from torch.distributed.tensor.parallel import ColwiseParallel, PrepareModuleInput, RowwiseParallel
from torch.distributed.tensor.parallel.style import ParallelStyle

KINDS = ("embedding", "decoder", "head")


def _no_scatter(style: ParallelStyle) -> ParallelStyle:
    style.src_data_rank = None
    return style


def _colwise(**kwargs) -> ParallelStyle:
    return _no_scatter(ColwiseParallel(**kwargs))


def _rowwise(**kwargs) -> ParallelStyle:
    return _no_scatter(RowwiseParallel(**kwargs))


def tp_plan(kind: str, family: str, sequence_parallel: bool) -> dict[str, ParallelStyle]:
    """{submodule FQN: ParallelStyle} of one layer of ``kind`` ("embedding", "decoder", "head") of a ``family``
    ("gpt2", "llama") model; ``sequence_parallel``: the activation around it is split over tp along the sequence."""
    between = Shard(1) if sequence_parallel else Replicate()
    if kind == "embedding":
        return {"tok": _rowwise(input_layouts=Replicate(), output_layouts=between)}
    if kind == "head":
        return {"out": _colwise(input_layouts=between, output_layouts=Shard(-1), use_local_output=True)}
    if kind != "decoder":
        raise ValueError(f"unknown layer kind {kind!r}: expected one of {KINDS}")

    def gather():
        return PrepareModuleInput(input_layouts=(between,), desired_input_layouts=(Replicate(),),
                                  use_local_output=False)

    plan = {"attn": gather(), "attn.q": _colwise(), "attn.k": _colwise(), "attn.v": _colwise(),
            "attn.o": _rowwise(output_layouts=between), "mlp": gather()}
    if family == "gpt2":
        plan.update({"mlp.fc": _colwise(), "mlp.proj": _rowwise(output_layouts=between)})
    else:
        plan.update({"mlp.gate": _colwise(), "mlp.up": _colwise(), "mlp.down": _rowwise(output_layouts=between)})
    return plan


def sp_partial_params(kind: str, family: str) -> list[str]:
    """Names (in the layer's module) of the parameters whose gradient is a partial sum over tp under sequence
    parallelism: the norms' (LayerNorm weight and bias for gpt2, RMSNorm weight for llama) and gpt2's positions."""
    norm = ["weight", "bias"] if family == "gpt2" else ["weight"]
    if kind == "embedding":
        return ["pos.weight"] if family == "gpt2" else []
    if kind == "head":
        return [f"norm.{n}" for n in norm]
    if kind == "decoder":
        return [f"{m}.{n}" for m in ("norm1", "norm2") for n in norm]
    raise ValueError(f"unknown layer kind {kind!r}: expected one of {KINDS}")
