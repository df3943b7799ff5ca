"""What the probe counts (and times at t = 1): galvatron_models' own Block, Embedding and Head, one tensor-parallel
shard each, as plain modules, with the inputs of one micro-batch. The saved bytes (memory.py) and parameter counts
are read off these; a degree t > 1 is timed on the module as the runtime shards it into DTensors (wrapped.py),
which saves the same tensors.

A shard of degree t is built with ``tp=t`` (the local shapes DTensor gives galvatron-run's sharded module) and run
as rank 0 of a tp-t group runs it, vocabulary rows [0, V/t), without the collectives (the bandwidth probe measures
those). Two steps the runtime runs outside the modules are added as it runs them:

- embedding, t > 1: the vocabulary-parallel lookup that RowwiseParallel makes of ``tok``: ids outside the shard's
  rows look up row 0 and their rows are zeroed outside autograd, as DTensor's masked partial does (so what is saved
  matches; their gradient lands on row 0, a value the probe does not use);
- head: the loss the runtime takes of the logits, mean over the tokens: ``ce_loss_sum`` at t = 1,
  ``vocab_parallel_ce_sum`` at t > 1, on a group this rank is not in, so its three all-reduces return at once.

Full recompute is the runtime's own switch, ``Block.recompute``; the embedding and the head have none (the runtime
never recomputes them), so their recompute numbers are their plain ones.

    spec = load_model_spec("tiny-llama")
    block = build_shard(spec, "decoder", t=2)
    x, grad = make_inputs(spec, "decoder", batch=2, seq_len=64)
    block(*x).backward(grad)

``widen`` multiplies every split width (not the hidden size; ``tp=t/widen``): the probe builds the same shard at
widen=2 to tell, tensor by tensor, which saved activations and parameters a TP degree divides (they double) from
those it does not.
"""
from __future__ import annotations

import warnings
from fractions import Fraction

import torch
import torch.distributed as dist
from torch import nn

from galvatron_models import Block, Embedding, Head, ce_loss_sum, vocab_parallel_ce_sum


class LossHead(nn.Module):
    """The head and the loss the runtime computes from its logits (a vocabulary shard when vocab_parallel)."""

    def __init__(self, spec: dict, tp: int | Fraction, vocab_parallel: bool):
        super().__init__()
        self.head, self.vocab_parallel = Head(spec, tp), vocab_parallel

    def forward(self, x, targets):
        logits = self.head(x)
        if not self.vocab_parallel:
            return ce_loss_sum(logits, targets) / targets.numel()
        with warnings.catch_warnings():  # torch warns of every collective on a group the rank is not in
            warnings.filterwarnings("ignore", message="Running all_reduce on global rank")
            loss = vocab_parallel_ce_sum(logits, targets, dist.GroupMember.NON_GROUP_MEMBER, 0)
        return loss / targets.numel()


def vocab_parallel(tok: nn.Embedding, start: int = 0) -> None:
    """Make ``tok``, rows [start, start + rows) of the table, look up ids of the whole vocabulary as one rank of a
    vocabulary-parallel embedding does before the sum over its group (DTensor's RowwiseParallel, locally)."""
    outside = []

    def localise(module, args):
        ids = args[0]
        outside.append((ids < start) | (ids >= start + module.num_embeddings))
        local = ids.clone() - start
        local[outside[-1]] = 0
        return (local,)

    @torch.no_grad()
    def zero_outside(module, args, out):
        out[outside.pop()] = 0.0

    tok.register_forward_pre_hook(localise)
    tok.register_forward_hook(zero_outside)


def build_shard(spec: dict, layer: str, t: int, widen: int = 1, dtype=torch.float32, device="cpu") -> nn.Module:
    """One rank's shard of ``layer`` ('decoder', 'embedding', 'head') at TP degree t (rank 0 of the group), with
    torch's default initialisation."""
    tp = Fraction(t, widen)
    with torch.device(device):
        if layer == "decoder":
            module = Block(spec, tp)
        elif layer == "embedding":
            module = Embedding(spec, tp)
            if t > 1:
                vocab_parallel(module.tok)
        elif layer == "head":
            module = LossHead(spec, tp, vocab_parallel=t > 1)
        else:
            raise ValueError(f"unknown layer kind {layer!r}")
    return module.to(dtype=dtype)


def set_recompute(module: nn.Module, on: bool) -> None:
    """Full recompute as the runtime switches it: ``Block.recompute`` (the embedding and the head have none)."""
    if isinstance(module, Block):
        module.recompute = on


def make_inputs(spec: dict, layer: str, batch: int, seq_len: int, dtype=torch.float32, device="cpu",
                seed: int = 0) -> tuple[tuple, torch.Tensor | None]:
    """(forward arguments, output gradient or None for the head's scalar loss) for one micro-batch."""
    g = torch.Generator().manual_seed(seed)
    h, v = spec["hidden"], spec["vocab_size"]
    if layer == "embedding":
        ids = torch.randint(0, v, (batch, seq_len), generator=g).to(device)
        return (ids,), torch.randn(batch, seq_len, h, generator=g).to(device=device, dtype=dtype)
    x = torch.randn(batch, seq_len, h, generator=g).to(device=device, dtype=dtype).requires_grad_()
    if layer == "head":
        return (x, torch.randint(0, v, (batch, seq_len), generator=g).to(device)), None
    return (x,), torch.randn(batch, seq_len, h, generator=g).to(device=device, dtype=dtype)


def param_split(spec: dict, layer: str, t: int) -> tuple[int, int]:
    """(parameters of one shard, of which replicated across the TP group), read off the modules: a parameter is
    replicated when widening the split dimensions leaves it unchanged. A tied head does not own its LM head weight
    (it is the embedding's), as in contracts.models.layer_param_counts."""
    base = dict(build_shard(spec, layer, t, device="meta").named_parameters())
    wide = dict(build_shard(spec, layer, t, widen=2, device="meta").named_parameters())
    if layer == "head" and spec["tied_embeddings"]:
        base.pop("head.out.weight")
    total = sum(p.numel() for p in base.values())
    replicated = sum(p.numel() for n, p in base.items() if wide[n].numel() == p.numel())
    return total, replicated


def param_tensor_count(spec: dict, layer: str) -> int:
    """Parameter tensors of one shard of ``layer`` (any degree: TP splits tensors, it adds none), counted as
    ``param_split`` counts parameters (a tied head without the table it shares)."""
    names = [n for n, _ in build_shard(spec, layer, 1, device="meta").named_parameters()]
    return len([n for n in names if not (layer == "head" and spec["tied_embeddings"] and n == "head.out.weight")])
