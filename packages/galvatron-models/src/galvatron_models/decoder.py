"""GPT-2-style and LLaMA-style decoders from a model spec, with plan-independent parameter names.

Names: ``embedding.tok.weight`` (+ ``embedding.pos.weight`` for gpt2), ``layers.<global index>.{norm1,attn.{q,k,v,o},
norm2,mlp.{fc,proj | gate,up,down}}.*``, ``head.{norm,out}.*``.

Tied embeddings: at pp = 1 the head uses the embedding's weight (``Decoder(..., tie=True)`` holding the first and
the last layer: one parameter). At pp > 1 the last stage's ``head.out.weight`` is a copy of the first stage's
``embedding.tok.weight``, initialised equal (``initial_value`` gives both names the same value); the runtime sums
the two gradients each iteration, so the copies stay equal.

Tensor-parallel shards: ``tp=t`` on Attention, MLP, Block, Embedding and Head builds the local shard one rank of a
tp-t group holds, the local shapes DTensor's column/row-parallel sharding gives the full module: heads/t query
heads and kv_heads/t key/value heads of the same head_dim, ffn_hidden/t MLP columns, vocab_size/t vocabulary rows;
norms, row-parallel biases and position embeddings whole. It computes that rank's part without the collectives
(galvatron-probe times these). ``tp`` may be a Fraction: t/2 holds twice the split widths of a degree-t shard.

Initialisation is a pure function of (seed, parameter name), so every plan starts from the same model:

    model = Decoder(load_model_spec("tiny-gpt"), range(4), first=True, last=True)
    init_parameters(model, seed=1234)
    shard = Block(load_model_spec("tiny-llama"), tp=2)   # 2 of 4 query heads, 1 of 2 kv heads, 88 of 176 columns
"""
from __future__ import annotations

import math
import zlib
from fractions import Fraction

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        y = x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + self.eps)
        return y.type_as(x) * self.weight


def split(width: int, tp: int | Fraction, name: str) -> int:
    """One rank's share ``width / tp`` of a width split over a tensor-parallel degree ``tp``."""
    share = Fraction(width) / tp
    if share.denominator != 1 or share < 1:
        raise ValueError(f"tp {tp} does not divide {name} ({width})")
    return int(share)


def norm(spec: dict) -> nn.Module:
    eps = spec.get("norm_eps", 1e-5)
    return nn.LayerNorm(spec["hidden"], eps=eps) if spec["family"] == "gpt2" else RMSNorm(spec["hidden"], eps)


_ROPE: dict = {}


def rope(seq: int, dim: int, theta: float, device, dtype):
    key = (seq, dim, theta, str(device), dtype)
    if key not in _ROPE:
        inv = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
        ang = torch.outer(torch.arange(seq, dtype=torch.float32), inv)
        _ROPE[key] = (ang.cos().to(device=device, dtype=dtype), ang.sin().to(device=device, dtype=dtype))
    return _ROPE[key]


def apply_rope(x, cos, sin):
    """x [B, heads, T, hd], rotating interleaved-free halves (the Hugging Face LLaMA convention)."""
    x1, x2 = x.chunk(2, dim=-1)
    c, s = torch.cat([cos, cos], -1), torch.cat([sin, sin], -1)
    return x * c + torch.cat([-x2, x1], -1) * s


class Attention(nn.Module):
    """Causal self-attention with separate q/k/v projections (so column-parallel shards split whole heads)."""

    def __init__(self, spec: dict, tp: int | Fraction = 1):
        super().__init__()
        h, self.hd = spec["hidden"], spec["hidden"] // spec["heads"]
        heads, kv_heads = split(spec["heads"], tp, "heads"), split(spec["kv_heads"], tp, "kv_heads")
        bias = spec["family"] == "gpt2"
        self.q = nn.Linear(h, heads * self.hd, bias=bias)
        self.k = nn.Linear(h, kv_heads * self.hd, bias=bias)
        self.v = nn.Linear(h, kv_heads * self.hd, bias=bias)
        self.o = nn.Linear(heads * self.hd, h, bias=bias)
        self.theta = spec.get("rope_theta", 10000.0) if spec["family"] == "llama" else None

    def forward(self, x):
        q, k, v = self.q(x), self.k(x), self.v(x)          # local shards under tensor parallelism
        B, T = q.shape[0], q.shape[1]
        q = q.view(B, T, -1, self.hd).transpose(1, 2)
        k = k.view(B, T, -1, self.hd).transpose(1, 2)
        v = v.view(B, T, -1, self.hd).transpose(1, 2)
        if self.theta is not None:
            cos, sin = rope(T, self.hd, self.theta, q.device, q.dtype)
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if k.shape[1] != q.shape[1]:
            rep = q.shape[1] // k.shape[1]
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o(y.transpose(1, 2).reshape(B, T, -1))


class MLP(nn.Module):
    def __init__(self, spec: dict, tp: int | Fraction = 1):
        super().__init__()
        h, f = spec["hidden"], split(spec["ffn_hidden"], tp, "ffn_hidden")
        self.gpt2 = spec["family"] == "gpt2"
        if self.gpt2:
            self.fc, self.proj = nn.Linear(h, f), nn.Linear(f, h)
        else:
            self.gate, self.up = nn.Linear(h, f, bias=False), nn.Linear(h, f, bias=False)
            self.down = nn.Linear(f, h, bias=False)

    def forward(self, x):
        if self.gpt2:
            return self.proj(F.gelu(self.fc(x), approximate="tanh"))
        return self.down(F.silu(self.gate(x)) * self.up(x))


class Block(nn.Module):
    """Pre-norm decoder block; ``recompute`` re-runs its forward in backward (torch.utils.checkpoint)."""

    def __init__(self, spec: dict, tp: int | Fraction = 1):
        super().__init__()
        self.norm1, self.attn, self.norm2, self.mlp = norm(spec), Attention(spec, tp), norm(spec), MLP(spec, tp)
        self.recompute = False

    def _forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))

    def forward(self, x):
        if self.recompute and torch.is_grad_enabled():
            return checkpoint(self._forward, x, use_reentrant=False)
        return self._forward(x)


class Embedding(nn.Module):
    """Token (+ learned position) embedding. ``seq_offset``: the first position this rank holds (sequence parallel)."""

    def __init__(self, spec: dict, tp: int | Fraction = 1):
        super().__init__()
        self.tok = nn.Embedding(split(spec["vocab_size"], tp, "vocab_size"), spec["hidden"])
        self.pos = nn.Embedding(spec["max_seq_len"], spec["hidden"]) if spec["family"] == "gpt2" else None
        self.seq_offset = 0

    def forward(self, tokens):
        x = self.tok(tokens)
        if self.pos is not None:
            x = x + self.pos(torch.arange(self.seq_offset, self.seq_offset + x.shape[1], device=x.device))
        return x


class Head(nn.Module):
    """Final norm and LM head; returns logits (a vocabulary shard under tensor parallelism)."""

    def __init__(self, spec: dict, tp: int | Fraction = 1):
        super().__init__()
        self.norm = norm(spec)
        self.out = nn.Linear(spec["hidden"], split(spec["vocab_size"], tp, "vocab_size"), bias=False)

    def forward(self, x):
        return self.out(self.norm(x))


class Decoder(nn.Module):
    """The part of the model a pipeline stage holds (the whole model: all layers, first and last)."""

    def __init__(self, spec: dict, layer_ids, first: bool, last: bool, tie: bool = False):
        super().__init__()
        self.spec = spec
        self.embedding = Embedding(spec) if first else None
        self.layers = nn.ModuleDict({str(i): Block(spec) for i in layer_ids})
        self.head = Head(spec) if last else None
        if tie and first and last:
            self.head.out.weight = self.embedding.tok.weight

    def forward(self, tokens):
        x = self.embedding(tokens)
        for block in self.layers.values():
            x = block(x)
        return self.head(x)


def _seed_of(seed: int, name: str) -> int:
    return (seed * 1_000_003 + zlib.crc32(name.encode())) % (2 ** 63)


def initial_value(spec: dict, name: str, shape, seed: int) -> torch.Tensor:
    """The initial fp32 value of parameter ``name`` (independent of the plan and of the other parameters)."""
    if name == "head.out.weight" and spec["tied_embeddings"]:
        name = "embedding.tok.weight"
    leaf = name.rsplit(".", 1)[-1]
    owner = name.rsplit(".", 2)[-2] if name.count(".") >= 1 else ""
    if "norm" in owner:
        return torch.ones(shape) if leaf == "weight" else torch.zeros(shape)
    if leaf == "bias":
        return torch.zeros(shape)
    std = 0.02
    if owner in ("o", "proj", "down"):
        std = 0.02 / math.sqrt(2 * spec["layers"])
    g = torch.Generator().manual_seed(_seed_of(seed, name))
    return torch.randn(tuple(shape), generator=g) * std


@torch.no_grad()
def init_parameters(model: nn.Module, seed: int) -> None:
    for name, p in model.named_parameters():
        p.copy_(initial_value(model.spec, name, p.shape, seed))


def ce_loss_sum(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="sum")
