"""Exact memory of the shards the probe times (galvatron_models' modules): the probe's measured saved bytes and
parameter counts must equal counts derived here by hand from each module's tensors (per sample, fp32 unless a test
says otherwise)."""
import pytest
import torch

from galvatron_contracts.models import layer_param_counts, load_model_spec
from galvatron_models import Embedding
from galvatron_probe.layers import build_shard, make_inputs, param_split, vocab_parallel
from galvatron_probe.memory import saved_bytes_per_sample

GPT = load_model_spec("tiny-gpt")      # h 64, 4 heads, ffn 256, vocab 256, 64 positions
LLAMA = load_model_spec("tiny-llama")  # h 64, 4 heads, 2 kv heads, ffn 176, vocab 256
SEQ = 64


def layer_norm_by_hand(s, h, e):
    """nn.LayerNorm: its input, mean and rstd (compute dtype on CPU), its output (the next projection's input)."""
    return s * h * e + 2 * s * e + s * h * e


def rms_norm_by_hand(s, h, e):
    """galvatron_models.RMSNorm, ``y = x.float() * rsqrt(x.float().pow(2).mean(-1) + eps); y.type_as(x) * w``:
    x.float() for pow and for the product (x itself in fp32: one storage; two fp32 copies otherwise), the fp32
    rstd, y as the weight's product takes it (y.type_as(x)), the output (the next projection's input)."""
    fp32_inputs = 1 if e == 4 else 2
    return fp32_inputs * s * h * 4 + s * 4 + s * h * e + s * h * e


def gpt_decoder_by_hand(t, s=SEQ, e=4):
    """What a GPT-2 block shard saves for backward, tensor by tensor (one sample of s tokens)."""
    h, a, f = GPT["hidden"], GPT["heads"], GPT["ffn_hidden"]
    replicated = (
        layer_norm_by_hand(s, h, e)      # norm1 of the block input x; its output is q, k and v's input
        + layer_norm_by_hand(s, h, e)    # norm2 of x after the attention residual; its output is fc's input
    )
    divided = (
        3 * s * h // t * e   # q, k, v outputs (separate projections), saved by attention
        + a // t * s * 4     # attention logsumexp, fp32 (the CPU flash kernel)
        + s * h // t * e     # attention output: saved by attention and, as the same storage, by o
        + s * f // t * e     # fc output (gelu's input)
        + s * f // t * e     # gelu output (proj's input)
    )
    return {"tp_divided": divided, "tp_replicated": replicated}


def llama_decoder_by_hand(t, s=SEQ, e=4):
    h, a, f = LLAMA["hidden"], LLAMA["heads"], LLAMA["ffn_hidden"]
    d = h // a
    replicated = 2 * rms_norm_by_hand(s, h, e)   # norm1 of x, norm2 of x after the attention residual
    divided = (
        s * a // t * d * e          # q after RoPE
        + 2 * s * a // t * d * e    # k after RoPE and v, repeat_interleave'd from kv_heads/t to heads/t heads
        + a // t * s * 4            # logsumexp, fp32
        + s * a // t * d * e        # attention output (= o's input)
        + 4 * s * f // t * e        # gate output, silu(gate), up output, silu(gate) * up
    )
    return {"tp_divided": divided, "tp_replicated": replicated}


def embedding_by_hand(t, s=SEQ):
    # the looked-up ids (int64); a vocabulary shard looks up its own copy, the ids made local to its rows
    return {"tp_divided": 0, "tp_replicated": s * 8}


def head_by_hand(spec, t, s=SEQ, e=4):
    h, v = spec["hidden"], spec["vocab_size"]
    norm = layer_norm_by_hand(s, h, e) if spec["family"] == "gpt2" else rms_norm_by_hand(s, h, e)
    if t == 1:  # ce_loss_sum: cross_entropy's fp32 log-softmax and the target ids
        return {"tp_divided": s * v * 4, "tp_replicated": norm + s * 8}
    # vocab_parallel_ce_sum: the fp32 softmax of the shard, the local target ids (int64), the inside-shard mask
    return {"tp_divided": s * v // t * 4, "tp_replicated": norm + s * 8 + s}


def recompute_by_hand(spec, layer, t, s=SEQ, e=4):
    """Block.recompute keeps only what checkpoint keeps: the block input. The embedding and the head are never
    recomputed: they save what they always save."""
    if layer == "embedding":
        return embedding_by_hand(t, s)
    if layer == "head":
        return head_by_hand(spec, t, s, e)
    return {"tp_divided": 0, "tp_replicated": s * spec["hidden"] * e}


@pytest.mark.parametrize("t", [1, 2, 4])
def test_gpt_block_saved_bytes_equal_hand_count(t):
    assert saved_bytes_per_sample(GPT, "decoder", t, SEQ) == gpt_decoder_by_hand(t)
    assert saved_bytes_per_sample(GPT, "decoder", t, SEQ, recompute=True) == recompute_by_hand(GPT, "decoder", t)


@pytest.mark.parametrize("t", [1, 2])
def test_llama_block_saved_bytes_equal_hand_count(t):
    assert saved_bytes_per_sample(LLAMA, "decoder", t, SEQ) == llama_decoder_by_hand(t)
    recompute = saved_bytes_per_sample(LLAMA, "decoder", t, SEQ, recompute=True)
    assert recompute == recompute_by_hand(LLAMA, "decoder", t)


@pytest.mark.parametrize("spec,hand", [(GPT, gpt_decoder_by_hand), (LLAMA, llama_decoder_by_hand)])
def test_bf16_block_saved_bytes_equal_hand_count(spec, hand):
    got = saved_bytes_per_sample(spec, "decoder", 2, 32, dtype=torch.bfloat16)
    assert got == hand(2, s=32, e=2)


@pytest.mark.parametrize("spec", [GPT, LLAMA], ids=["gpt", "llama"])
@pytest.mark.parametrize("t", [1, 2])
def test_bf16_head_saved_bytes_equal_hand_count(spec, t):
    assert saved_bytes_per_sample(spec, "head", t, 32, dtype=torch.bfloat16) == head_by_hand(spec, t, s=32, e=2)


@pytest.mark.parametrize("spec", [GPT, LLAMA], ids=["gpt", "llama"])
@pytest.mark.parametrize("t", [1, 2])
def test_embedding_and_head_saved_bytes_equal_hand_count(spec, t):
    assert saved_bytes_per_sample(spec, "embedding", t, SEQ) == embedding_by_hand(t)
    assert saved_bytes_per_sample(spec, "head", t, SEQ) == head_by_hand(spec, t)
    for layer in ("embedding", "head"):
        assert saved_bytes_per_sample(spec, layer, t, SEQ, recompute=True) == recompute_by_hand(spec, layer, t)


@pytest.mark.parametrize("spec,layer,degrees", [(GPT, "decoder", [1, 2, 4]), (LLAMA, "decoder", [1, 2]),
                                                (GPT, "head", [1, 2, 4]), (LLAMA, "head", [1, 2, 4])])
def test_tp_divided_part_halves_when_t_doubles(spec, layer, degrees):
    got = {t: saved_bytes_per_sample(spec, layer, t, 32) for t in degrees}
    for t in degrees[:-1]:
        small, big = got[t], got[2 * t]
        assert small["tp_divided"] > 0
        assert big["tp_divided"] * 2 == small["tp_divided"]
        if layer == "decoder" or t > 1:  # from tp 2 on the head's loss is the vocabulary-parallel one (+ a mask)
            assert big["tp_replicated"] == small["tp_replicated"]


def test_saved_bytes_are_linear_in_the_micro_batch():
    """Per-sample bytes times b equal what a b-sample micro-batch saves (no hidden constant in a block)."""
    from galvatron_probe.memory import saved_storages

    per_sample = sum(saved_bytes_per_sample(GPT, "decoder", 2, 16).values())
    module = build_shard(GPT, "decoder", 2)
    args, _ = make_inputs(GPT, "decoder", 3, 16)
    assert sum(saved_storages(module, args)) == 3 * per_sample


def gpt_params_by_hand(layer, t):
    h, f, v, p = GPT["hidden"], GPT["ffn_hidden"], GPT["vocab_size"], GPT["max_seq_len"]
    if layer == "decoder":
        split = 3 * (h * h // t + h // t) + h // t * h + (h * f // t + f // t) + f // t * h  # q, k, v, o, fc, proj
        return split + 6 * h, 6 * h          # 2 LayerNorms (4h), o and proj biases (2h) whole
    if layer == "embedding":
        return v // t * h + p * h, p * h     # position table whole
    return 2 * h, 2 * h                      # tied: the final LayerNorm only (LM head is the embedding's)


def llama_params_by_hand(layer, t):
    h, a, kv, f, v = (LLAMA[k] for k in ("hidden", "heads", "kv_heads", "ffn_hidden", "vocab_size"))
    d = h // a
    if layer == "decoder":
        return 2 * h * (a // t) * d + 2 * h * (kv // t) * d + 3 * h * f // t + 2 * h, 2 * h
    if layer == "embedding":
        return v // t * h, 0
    return h + v // t * h, h


@pytest.mark.parametrize("layer", ["decoder", "embedding", "head"])
@pytest.mark.parametrize("t", [1, 2])
def test_param_counts_equal_hand_count(layer, t):
    assert param_split(GPT, layer, t) == gpt_params_by_hand(layer, t)
    assert param_split(LLAMA, layer, t) == llama_params_by_hand(layer, t)
    module = build_shard(LLAMA, layer, t)
    assert sum(p.numel() for p in module.parameters()) == llama_params_by_hand(layer, t)[0]


@pytest.mark.parametrize("spec", [GPT, LLAMA, load_model_spec("gpt2-small"), load_model_spec("llama3-8b")],
                         ids=lambda s: s["name"])
def test_unsharded_param_counts_match_the_contracts(spec):
    expected = layer_param_counts(spec)
    for layer in ("decoder", "embedding", "head"):
        assert param_split(spec, layer, 1)[0] == expected[layer]


def test_the_head_at_tp_1_is_the_ordinary_mean_cross_entropy():
    head = build_shard(LLAMA, "head", 1)
    (x, targets), _ = make_inputs(LLAMA, "head", 2, 8)
    loss = head(x, targets)
    loss.backward()
    x_ref = x.detach().clone().requires_grad_()
    ref = torch.nn.functional.cross_entropy(head.head(x_ref).view(-1, LLAMA["vocab_size"]), targets.view(-1))
    ref.backward()
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(x.grad, x_ref.grad)


def test_a_vocabulary_shard_of_the_head_runs_its_loss_alone():
    """tp 2: the logits are the first half of the whole head's; the loss runs with no process group at all (its
    all-reduces are skipped) and gives the input a gradient."""
    head, whole = build_shard(GPT, "head", 2), build_shard(GPT, "head", 1)
    with torch.no_grad():
        whole.head.out.weight[:GPT["vocab_size"] // 2] = head.head.out.weight
    (x, targets), _ = make_inputs(GPT, "head", 2, 8)
    torch.testing.assert_close(head.head(x), whole.head(x)[..., :GPT["vocab_size"] // 2])
    head(x, targets).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


@pytest.mark.parametrize("t", [2, 4])
def test_vocabulary_shards_of_the_embedding_sum_to_the_whole_lookup(t):
    """Each shard looks up only its rows (other ids give zeros); summed over the group (what the runtime's
    all-reduce does) they are the whole table's lookup."""
    v = GPT["vocab_size"]
    whole = Embedding(GPT)
    (ids,), _ = make_inputs(GPT, "embedding", 2, 16)
    total = 0
    for r in range(t):
        shard = Embedding(GPT, tp=t)
        vocab_parallel(shard.tok, start=r * v // t)
        with torch.no_grad():
            shard.tok.weight.copy_(whole.tok.weight[r * v // t:(r + 1) * v // t])
        out = shard.tok(ids)
        outside = (ids < r * v // t) | (ids >= (r + 1) * v // t)
        assert outside.any() and (out[outside] == 0).all()
        total = total + out
    torch.testing.assert_close(total, whole.tok(ids))
