"""The probe's own reference layers, one tensor-parallel shard each, built from torch.nn (no collectives).

A shard of degree t is what one rank of a Megatron-style TP group holds: heads/t query heads, kv_heads/t key/value
heads, ffn_hidden/t MLP columns, vocab_size/t vocabulary rows. Column-parallel weights (qkv, fc, gate/up, LM head,
token table) and row-parallel weights (attention output, MLP down) are split; norms, row-parallel biases and
position embeddings are replicated. The all-reduces a real TP layer would run are left out (marked in comments):
the probe times the local compute and counts the local memory; communication is the bandwidth probe's job.

    block = build_shard(load_model_spec("tiny-llama"), "decoder", t=2)
    x, grad = make_inputs(spec, "decoder", batch=2, seq_len=64)
    block(*x).backward(grad)

``widen`` multiplies every split width (not the hidden size): the probe builds the same shard at widen=2 to tell,
tensor by tensor, which saved activations and parameters a TP degree divides (they double) from those it does not.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .shapes import LAYER_KINDS, tp_problems  # noqa: F401  (re-exported)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


class GPTBlock(nn.Module):
    """GPT-2 block shard: LayerNorm, fused qkv with bias, causal attention, output projection, GELU MLP."""

    def __init__(self, hidden: int, heads: int, head_dim: int, ffn: int, eps: float):
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        self.ln_1 = nn.LayerNorm(hidden, eps=eps)
        self.attn = nn.ModuleDict({"qkv": nn.Linear(hidden, 3 * heads * head_dim),      # column-parallel
                                   "proj": nn.Linear(heads * head_dim, hidden)})       # row-parallel, bias whole
        self.ln_2 = nn.LayerNorm(hidden, eps=eps)
        self.mlp = nn.ModuleDict({"fc": nn.Linear(hidden, ffn),                         # column-parallel
                                  "proj": nn.Linear(ffn, hidden)})                      # row-parallel, bias whole

    def forward(self, x):
        b, s, _ = x.shape
        qkv = self.attn["qkv"](self.ln_1(x)).view(b, s, 3, self.heads, self.head_dim)
        q, k, v = (t.transpose(1, 2) for t in qkv.unbind(2))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        y = y.transpose(1, 2).reshape(b, s, self.heads * self.head_dim)
        x = x + self.attn["proj"](y)                       # TP: all-reduce of the projection before the add
        h = F.gelu(self.mlp["fc"](self.ln_2(x)), approximate="tanh")
        return x + self.mlp["proj"](h)                     # TP: all-reduce before the add


def rope_tables(seq_len: int, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of the rotary angles, (seq_len, head_dim), in the rotate-half convention."""
    inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    ang = torch.outer(torch.arange(seq_len, dtype=torch.float64), inv)
    ang = torch.cat([ang, ang], dim=-1)
    return ang.cos().float(), ang.sin().float()


def apply_rope(x, cos, sin):
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


class LlamaBlock(nn.Module):
    """LLaMA block shard: RMSNorm, q/k/v/o without bias, RoPE, grouped-query attention, SwiGLU MLP."""

    def __init__(self, hidden: int, heads: int, kv_heads: int, head_dim: int, ffn: int, eps: float,
                 max_seq_len: int, rope_theta: float):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, head_dim
        self.attn_norm = RMSNorm(hidden, eps)
        self.attn = nn.ModuleDict({"q": nn.Linear(hidden, heads * head_dim, bias=False),      # column-parallel
                                   "k": nn.Linear(hidden, kv_heads * head_dim, bias=False),
                                   "v": nn.Linear(hidden, kv_heads * head_dim, bias=False),
                                   "o": nn.Linear(heads * head_dim, hidden, bias=False)})     # row-parallel
        self.mlp_norm = RMSNorm(hidden, eps)
        self.mlp = nn.ModuleDict({"gate": nn.Linear(hidden, ffn, bias=False),                 # column-parallel
                                  "up": nn.Linear(hidden, ffn, bias=False),
                                  "down": nn.Linear(ffn, hidden, bias=False)})                # row-parallel
        cos, sin = rope_tables(max_seq_len, head_dim, rope_theta)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def forward(self, x):
        b, s, _ = x.shape
        h = self.attn_norm(x)
        q = self.attn["q"](h).view(b, s, self.heads, self.head_dim).transpose(1, 2)
        k = self.attn["k"](h).view(b, s, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.attn["v"](h).view(b, s, self.kv_heads, self.head_dim).transpose(1, 2)
        cos, sin = self.cos[:s], self.sin[:s]
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=self.heads != self.kv_heads)
        x = x + self.attn["o"](y.transpose(1, 2).reshape(b, s, self.heads * self.head_dim))  # TP: all-reduce
        h = self.mlp_norm(x)
        return x + self.mlp["down"](F.silu(self.mlp["gate"](h)) * self.mlp["up"](h))          # TP: all-reduce


class Embedding(nn.Module):
    """Token embedding shard (rows [start, start + vocab) of the table), plus learned positions (gpt2).

    Vocabulary-parallel (t > 1) as in Megatron: ids outside the shard's rows look up row 0 and are zeroed; the sum
    over the TP group (an all-reduce) is left out."""

    def __init__(self, vocab: int, start: int, hidden: int, positions: int, vocab_parallel: bool):
        super().__init__()
        self.vocab, self.start, self.vocab_parallel = vocab, start, vocab_parallel
        self.tokens = nn.Embedding(vocab, hidden)
        self.positions = nn.Embedding(positions, hidden) if positions else None

    def forward(self, ids):
        if self.vocab_parallel:
            outside = (ids < self.start) | (ids >= self.start + self.vocab)
            x = self.tokens((ids - self.start).masked_fill(outside, 0)).masked_fill(outside.unsqueeze(-1), 0.0)
        else:
            x = self.tokens(ids)
        if self.positions is not None:
            x = x + self.positions(torch.arange(ids.shape[1], device=ids.device))
        return x


class _VocabParallelCrossEntropy(torch.autograd.Function):
    """Cross-entropy over a vocabulary shard (Megatron's formulation, one shard: the MAX and SUM all-reduces over
    the TP group are left out). Saves the fp32 softmax of the shard, the outside-shard mask and the local target."""

    @staticmethod
    def forward(ctx, logits, target, start):
        ctx.in_dtype = logits.dtype
        logits = logits.float()
        shifted = logits - logits.max(dim=-1, keepdim=True).values          # TP: all-reduce MAX of the max
        outside = (target < start) | (target >= start + logits.shape[-1])
        local = (target - start).masked_fill(outside, 0)
        picked = shifted.gather(1, local.unsqueeze(1)).squeeze(1).masked_fill(outside, 0.0)  # TP: all-reduce SUM
        exp = shifted.exp_()
        total = exp.sum(dim=-1)                                              # TP: all-reduce SUM
        loss = total.log() - picked
        softmax = exp.div_(total.unsqueeze(1))
        ctx.save_for_backward(softmax, outside, local)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        softmax, outside, local = ctx.saved_tensors
        grad = softmax.clone()
        rows = torch.arange(grad.shape[0], device=grad.device)
        grad[rows, local] -= (~outside).to(grad.dtype)
        grad.mul_(grad_loss.unsqueeze(1))
        return grad.to(ctx.in_dtype), None, None


class Head(nn.Module):
    """Final norm, LM head shard (vocab/t rows) and the vocabulary-parallel cross-entropy, mean over tokens."""

    def __init__(self, family: str, hidden: int, vocab: int, start: int, eps: float):
        super().__init__()
        self.start = start
        self.norm = nn.LayerNorm(hidden, eps=eps) if family == "gpt2" else RMSNorm(hidden, eps)
        self.lm_head = nn.Linear(hidden, vocab, bias=False)                               # column-parallel

    def forward(self, x, targets):
        logits = self.lm_head(self.norm(x))
        loss = _VocabParallelCrossEntropy.apply(logits.view(-1, logits.shape[-1]), targets.reshape(-1), self.start)
        return loss.mean()


def shard_widths(spec: dict, t: int, widen: int = 1) -> dict:
    """The local sizes of a degree-t shard (times ``widen``)."""
    return {"hidden": spec["hidden"], "head_dim": spec["hidden"] // spec["heads"],
            "heads": spec["heads"] // t * widen, "kv_heads": spec["kv_heads"] // t * widen,
            "ffn": spec["ffn_hidden"] // t * widen, "vocab": spec["vocab_size"] // t * widen}


def build_shard(spec: dict, layer: str, t: int, widen: int = 1, dtype=torch.float32, device="cpu") -> nn.Module:
    """One rank's shard of ``layer`` ('decoder', 'embedding', 'head') at TP degree t (rank 0 of the group)."""
    w = shard_widths(spec, t, widen)
    eps = float(spec.get("norm_eps", 1e-5))
    gpt2 = spec["family"] == "gpt2"
    if layer == "decoder":
        if gpt2:
            module = GPTBlock(w["hidden"], w["heads"], w["head_dim"], w["ffn"], eps)
        else:
            module = LlamaBlock(w["hidden"], w["heads"], w["kv_heads"], w["head_dim"], w["ffn"], eps,
                                spec["max_seq_len"], float(spec.get("rope_theta", 10000.0)))
    elif layer == "embedding":
        module = Embedding(w["vocab"], 0, w["hidden"], spec["max_seq_len"] if gpt2 else 0, vocab_parallel=t > 1)
    elif layer == "head":
        module = Head(spec["family"], w["hidden"], w["vocab"], 0, eps)
    else:
        raise ValueError(f"unknown layer kind {layer!r}")
    _init(module)
    return module.to(device=device, dtype=dtype)


def _init(module: nn.Module) -> None:
    """Small GPT-2-style initialisation so that timings see ordinary values (no overflow, no denormals)."""
    for name, p in module.named_parameters():
        if p.dim() >= 2:
            nn.init.normal_(p, std=0.02)
        elif name.endswith("bias"):
            nn.init.zeros_(p)


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
    with torch.device("meta"):
        base = dict(build_shard(spec, layer, t, device="meta").named_parameters())
        wide = dict(build_shard(spec, layer, t, widen=2, device="meta").named_parameters())
    if layer == "head" and spec["tied_embeddings"]:
        base.pop("lm_head.weight")
    total = sum(p.numel() for p in base.values())
    replicated = sum(p.numel() for n, p in base.items() if wide[n].numel() == p.numel())
    return total, replicated
