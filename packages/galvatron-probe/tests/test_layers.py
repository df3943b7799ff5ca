"""Exact memory of the reference shards: the probe's measured saved bytes and parameter counts must equal counts
computed here by hand from each layer's tensor shapes (per sample, fp32 unless a test says otherwise)."""
import pytest
import torch

from galvatron_contracts.models import layer_param_counts, load_model_spec
from galvatron_probe.layers import build_shard, make_inputs, param_split
from galvatron_probe.memory import saved_bytes_per_sample

GPT = load_model_spec("tiny-gpt")      # h 64, 4 heads, ffn 256, vocab 256, 64 positions
LLAMA = load_model_spec("tiny-llama")  # h 64, 4 heads, 2 kv heads, ffn 176, vocab 256
SEQ = 64
ESIZE = {torch.float32: 4, torch.bfloat16: 2}


def gpt_decoder_by_hand(t, s=SEQ, e=4):
    """What a GPT-2 block shard saves for backward, tensor by tensor (one sample of s tokens)."""
    h, a, f = GPT["hidden"], GPT["heads"], GPT["ffn_hidden"]
    replicated = (
        s * h * e            # block input x (ln_1's input)
        + 2 * s * e          # ln_1 mean and rstd (compute dtype on CPU)
        + s * h * e          # ln_1 output (qkv's input)
        + s * h * e          # x after the attention residual (ln_2's input)
        + 2 * s * e          # ln_2 mean and rstd
        + s * h * e          # ln_2 output (fc's input)
    )
    divided = (
        s * 3 * h // t * e   # qkv output: q, k, v are views of it, saved by attention (one storage)
        + a // t * s * 4     # attention logsumexp, fp32 (the CPU flash kernel)
        + s * h // t * e     # attention output: saved by attention and, as the same storage, by proj
        + s * f // t * e     # fc output (gelu's input)
        + s * f // t * e     # gelu output (proj's input)
    )
    return {"tp_divided": divided, "tp_replicated": replicated}


def llama_decoder_by_hand(t, s=SEQ, e=4):
    h, a, kv, f = LLAMA["hidden"], LLAMA["heads"], LLAMA["kv_heads"], LLAMA["ffn_hidden"]
    d = h // a
    rms = s * h * 4 + s * 4 + s * h * 4 + s * h * e  # input in fp32, rstd fp32, x*rstd fp32, output
    replicated = 2 * rms                              # attention norm, MLP norm
    divided = (
        s * a // t * d * e          # q after RoPE
        + 2 * s * kv // t * d * e   # k after RoPE, v (grouped-query: kv heads, not repeated)
        + a // t * s * 4            # logsumexp, fp32
        + s * a // t * d * e        # attention output (= o's input)
        + 4 * s * f // t * e        # gate output, silu(gate), up output, silu(gate) * up
    )
    return {"tp_divided": divided, "tp_replicated": replicated}


def embedding_by_hand(t, s=SEQ):
    # the looked-up ids (int64); vocabulary-parallel shards also keep the outside-shard mask (bool)
    return {"tp_divided": 0, "tp_replicated": s * 8 + (s if t > 1 else 0)}


def head_by_hand(spec, t, s=SEQ, e=4):
    h, v = spec["hidden"], spec["vocab_size"]
    if spec["family"] == "gpt2":
        norm = s * h * e + 2 * s * e + s * h * e          # LayerNorm: input, mean and rstd, output
    else:
        norm = s * h * 4 + s * 4 + s * h * 4 + s * h * e  # RMSNorm: fp32 input, rstd, x * rstd; output
    return {"tp_divided": s * v // t * 4,                     # fp32 softmax of the vocabulary shard
            "tp_replicated": norm + s + s * 8}                # norm; outside-shard mask; local target ids


def recompute_by_hand(spec, layer, s=SEQ, e=4):
    """Under full recompute only checkpoint's inputs stay: hidden states, token ids, targets."""
    h = spec["hidden"]
    return {"tp_divided": 0, "tp_replicated": {"decoder": s * h * e, "embedding": s * 8,
                                               "head": s * h * e + s * 8}[layer]}


@pytest.mark.parametrize("t", [1, 2, 4])
def test_gpt_block_saved_bytes_equal_hand_count(t):
    assert saved_bytes_per_sample(GPT, "decoder", t, SEQ) == gpt_decoder_by_hand(t)
    assert saved_bytes_per_sample(GPT, "decoder", t, SEQ, recompute=True) == recompute_by_hand(GPT, "decoder")


@pytest.mark.parametrize("t", [1, 2])
def test_llama_block_saved_bytes_equal_hand_count(t):
    assert saved_bytes_per_sample(LLAMA, "decoder", t, SEQ) == llama_decoder_by_hand(t)
    assert saved_bytes_per_sample(LLAMA, "decoder", t, SEQ, recompute=True) == recompute_by_hand(LLAMA, "decoder")


@pytest.mark.parametrize("spec,hand", [(GPT, gpt_decoder_by_hand), (LLAMA, llama_decoder_by_hand)])
def test_bf16_block_saved_bytes_equal_hand_count(spec, hand):
    got = saved_bytes_per_sample(spec, "decoder", 2, 32, dtype=torch.bfloat16)
    assert got == hand(2, s=32, e=2)


@pytest.mark.parametrize("spec", [GPT, LLAMA], ids=["gpt", "llama"])
@pytest.mark.parametrize("t", [1, 2])
def test_embedding_and_head_saved_bytes_equal_hand_count(spec, t):
    assert saved_bytes_per_sample(spec, "embedding", t, SEQ) == embedding_by_hand(t)
    assert saved_bytes_per_sample(spec, "head", t, SEQ) == head_by_hand(spec, t)
    for layer in ("embedding", "head"):
        assert saved_bytes_per_sample(spec, layer, t, SEQ, recompute=True) == recompute_by_hand(spec, layer)


@pytest.mark.parametrize("spec,layer,degrees", [(GPT, "decoder", [1, 2, 4]), (LLAMA, "decoder", [1, 2]),
                                                (GPT, "head", [1, 2, 4]), (LLAMA, "head", [1, 2, 4])])
def test_tp_divided_part_halves_when_t_doubles(spec, layer, degrees):
    got = [saved_bytes_per_sample(spec, layer, t, 32) for t in degrees]
    for small, big in zip(got, got[1:], strict=False):
        assert small["tp_divided"] > 0
        assert big["tp_divided"] * 2 == small["tp_divided"]
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
        split = (h * 3 * h // t + 3 * h // t) + h // t * h + (h * f // t + f // t) + f // t * h
        return split + 6 * h, 6 * h          # 2 LayerNorms (4h), proj and mlp.proj biases (2h) whole
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


def test_tp_shards_compute_the_unsharded_loss_gradients():
    """A vocabulary-parallel cross-entropy shard at t=1 is the ordinary cross-entropy (value and gradient)."""
    head = build_shard(LLAMA, "head", 1)
    (x, targets), _ = make_inputs(LLAMA, "head", 2, 8)
    loss = head(x, targets)
    loss.backward()
    x_ref = x.detach().clone().requires_grad_()
    ref = torch.nn.functional.cross_entropy(head.lm_head(head.norm(x_ref)).view(-1, LLAMA["vocab_size"]),
                                            targets.view(-1))
    ref.backward()
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(x.grad, x_ref.grad)
