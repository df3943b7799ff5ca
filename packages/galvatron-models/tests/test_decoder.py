"""Tensor-parallel shards (``tp=t``): rank r's shard holds exactly the slices of the full module that column- and
row-parallel sharding gives rank r, and computes rank r's part of the full module's forward.

The slices are cut by hand as DTensor cuts an evenly divisible dimension (``Shard(d)``: the r-th of t equal
chunks), following galvatron-run's plan: column-parallel (q, k, v, fc, gate, up, the LM head's ``out``, the token
table ``tok``) splits the weight's rows (and the bias), row-parallel (o, proj, down) splits the weight's columns
and keeps the bias whole; norms and the position table are whole.
"""
from fractions import Fraction

import pytest
import torch

from galvatron_contracts.models import load_model_spec
from galvatron_models import MLP, Attention, Block, Decoder, Embedding, Head, initial_value

GPT = load_model_spec("tiny-gpt")      # h 64, 4 heads, ffn 256, vocab 256
LLAMA = load_model_spec("tiny-llama")  # h 64, 4 heads, 2 kv heads, ffn 176, vocab 256
COLUMN_PARALLEL = {"q", "k", "v", "fc", "gate", "up", "out", "tok"}
ROW_PARALLEL = {"o", "proj", "down"}
CASES = [(GPT, 2), (GPT, 4), (LLAMA, 2)]    # every degree that divides heads, kv_heads and ffn_hidden (t > 1)


def random_module(cls, spec, seed=0):
    torch.manual_seed(seed)
    module = cls(spec)
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, 0.2)        # biases and norm weights too, so that every slice is checked
    return module


def split_dim(name: str) -> int | None:
    """The dimension tensor parallelism splits parameter ``name`` along (None: every shard holds it whole)."""
    owner, leaf = name.split(".")[-2:]
    if owner in COLUMN_PARALLEL:
        return 0
    return 1 if owner in ROW_PARALLEL and leaf == "weight" else None


def shards_of(full_module, cls, spec, t):
    """The t shards of ``full_module``: each built with tp=t, holding the shapes of its slices, loaded with them."""
    full = full_module.state_dict()
    shards = []
    for r in range(t):
        want = {n: w if split_dim(n) is None else w.chunk(t, split_dim(n))[r] for n, w in full.items()}
        shard = cls(spec, tp=t)
        assert {n: w.shape for n, w in shard.state_dict().items()} == {n: w.shape for n, w in want.items()}
        shard.load_state_dict(want)
        shards.append(shard)
    return shards


def row_bias(module) -> torch.Tensor | float:
    """The row-parallel output's bias (gpt2), which every shard adds whole."""
    out = module.o if isinstance(module, Attention) else module.proj if module.gpt2 else module.down
    return out.bias if out.bias is not None else 0.0


@pytest.mark.parametrize("cls", [Attention, MLP, Block, Embedding, Head])
@pytest.mark.parametrize("spec,t", CASES, ids=lambda c: c["name"] if isinstance(c, dict) else str(c))
def test_a_shard_holds_its_slice_of_every_parameter(cls, spec, t):
    """A shard's parameters are its slices and nothing else: put back together they are the full module's."""
    full = random_module(cls, spec)
    shards = shards_of(full, cls, spec, t)
    assert [n for n, _ in shards[0].named_parameters()] == [n for n, _ in full.named_parameters()]
    for name, p in full.named_parameters():
        pieces = [s.get_parameter(name) for s in shards]
        if split_dim(name) is None:
            assert all(torch.equal(piece, p) for piece in pieces), name
        else:
            assert torch.equal(torch.cat(pieces, split_dim(name)), p), name


@pytest.mark.parametrize("cls", [Attention, MLP])
@pytest.mark.parametrize("spec,t", CASES, ids=lambda c: c["name"] if isinstance(c, dict) else str(c))
def test_attention_and_mlp_shards_sum_to_the_full_output(cls, spec, t):
    """Summed over the group (the all-reduce after the row-parallel projection) the shards' outputs are the full
    module's; each shard adds the whole bias once."""
    full = random_module(cls, spec)
    shards = shards_of(full, cls, spec, t)
    x = torch.randn(2, 16, spec["hidden"])
    total = sum(s(x) for s in shards) - (t - 1) * row_bias(full)
    torch.testing.assert_close(total, full(x))


@pytest.mark.parametrize("spec,t", CASES, ids=lambda c: c["name"] if isinstance(c, dict) else str(c))
def test_block_shards_compute_the_full_block(spec, t):
    """A tp group of Block shards, its two all-reduces as sums, computes the full block."""
    full = random_module(Block, spec)
    shards = shards_of(full, Block, spec, t)
    x = torch.randn(2, 16, spec["hidden"])
    h = x + sum(s.attn(s.norm1(x)) for s in shards) - (t - 1) * row_bias(full.attn)
    y = h + sum(s.mlp(s.norm2(h)) for s in shards) - (t - 1) * row_bias(full.mlp)
    torch.testing.assert_close(y, full(x))


@pytest.mark.parametrize("spec,t", CASES, ids=lambda c: c["name"] if isinstance(c, dict) else str(c))
def test_embedding_and_head_shards_are_their_vocabulary_slices(spec, t):
    v = spec["vocab_size"] // t
    emb, head = random_module(Embedding, spec), random_module(Head, spec)
    x = torch.randn(2, 16, spec["hidden"])
    ids = torch.randint(0, spec["vocab_size"], (2, 16))
    for r, (e, h) in enumerate(zip(shards_of(emb, Embedding, spec, t), shards_of(head, Head, spec, t), strict=True)):
        torch.testing.assert_close(h(x), head(x)[..., r * v:(r + 1) * v])
        mine = ids[(ids >= r * v) & (ids < (r + 1) * v)].view(1, -1)       # the ids of this shard's rows
        torch.testing.assert_close(e(mine - r * v), emb(mine))


def test_a_degree_that_does_not_divide_a_width_is_refused():
    with pytest.raises(ValueError, match=r"tp 4 does not divide kv_heads \(2\)"):
        Block(LLAMA, tp=4)
    with pytest.raises(ValueError, match=r"tp 3 does not divide vocab_size \(256\)"):
        Head(GPT, tp=3)


def test_a_fractional_degree_widens_every_split_width():
    """tp = t/2 holds twice a degree-t shard's split widths (the probe's way of telling split from whole)."""
    wide, narrow = Block(LLAMA, tp=Fraction(1, 2)), Block(LLAMA)
    for (name, w), (_, n) in zip(wide.named_parameters(), narrow.named_parameters(), strict=True):
        assert w.numel() == (n.numel() if "norm" in name else 2 * n.numel()), name


def test_tied_embeddings():
    """pp = 1: one parameter; pp > 1: the last stage's copy starts equal to the first stage's table."""
    whole = Decoder(GPT, range(2), first=True, last=True, tie=True)
    assert whole.head.out.weight is whole.embedding.tok.weight
    assert "head.out.weight" not in dict(whole.named_parameters())
    shape = whole.embedding.tok.weight.shape
    assert torch.equal(initial_value(GPT, "head.out.weight", shape, seed=7),
                       initial_value(GPT, "embedding.tok.weight", shape, seed=7))
