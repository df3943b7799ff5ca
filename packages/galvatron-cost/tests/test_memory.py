"""Memory formulas against hand-computed closed forms."""
import pytest

from galvatron_contracts.models import PRESETS, layer_param_counts
from galvatron_cost.memory import (
    activation_per_sample,
    backward_workspace,
    derive_split,
    model_states,
    numel,
    param_shapes,
    sharded_numel,
)

GPT2 = PRESETS["gpt2-small"]


def test_shapes_match_the_parameter_counts():
    for name in ("gpt2-small", "llama2-7b", "tiny-llama"):
        spec = PRESETS[name]
        counts = layer_param_counts(spec)
        for layer in ("decoder", "embedding", "head"):
            div, rep = param_shapes(spec, layer, 1, lm_head=not spec["tied_embeddings"])
            assert numel(div) + numel(rep) == counts[layer], (name, layer)
    # gpt2-small block: 12 h^2 + 13 h = 7,087,872; at tp=4 the divided part is 12 h^2/4 + 9 h/4... by hand:
    h = 768
    div, rep = param_shapes(GPT2, "decoder", 4)
    assert numel(rep) == 6 * h
    assert numel(div) == (3 * h * h + 3 * h + h * h + 4 * h * h + 4 * h + 4 * h * h) // 4


def test_zero_states_fp32_adamw_by_hand():
    # gpt2-small decoder, d = 4: every dim 0 divides by 4, so P_d = P / 4 exactly
    div, rep = param_shapes(GPT2, "decoder", 1)
    P = numel(div + rep)
    assert P == 7_087_872
    P_d = sharded_numel(div + rep, 4)
    assert P_d * 4 == P
    ddp = model_states(P, P_d, "ddp", "fp32", "adamw")
    assert ddp["param_bytes"] + ddp["grad_bytes"] + ddp["optimizer_bytes"] == 16 * P      # 4 + 4 + 8 B/param
    z2 = model_states(P, P_d, "zero2", "fp32", "adamw")
    assert (z2["param_bytes"], z2["grad_bytes"], z2["optimizer_bytes"]) == (4 * P // 4 + 4 * P, 4 * P // 4, 8 * P // 4)
    z3 = model_states(P, P_d, "zero3", "fp32", "adamw")
    assert z3["param_bytes"] + z3["grad_bytes"] + z3["optimizer_bytes"] == 16 * P // 4
    # the larger backward phase: compute (this layer's and the prefetched next layer's gathered fp32 params, the
    # kept fp32 reduce-scatter input of the layer above, the fresh unsharded grads) over reduce (the prefetched
    # params, a new fp32 reduce-scatter input, on gloo its copy, the fp32 output shard)
    assert backward_workspace(P, P_d, "zero3", "fp32") == 2 * 4 * P + 4 * P + 4 * P
    assert backward_workspace(P, P_d, "zero3", "fp32", backend="gloo") == 2 * 4 * P + 4 * P + 4 * P
    assert backward_workspace(P, P_d, "zero2", "fp32") == 4 * P + 4 * P


def test_zero_states_bf16_mixed_precision_by_hand():
    P, P_d = 1000, 250
    ddp = model_states(P, P_d, "ddp", "bf16", "adamw")
    # fp32 master + the bf16 copy autocast caches for the whole step (one autocast region per step)
    assert (ddp["param_bytes"], ddp["grad_bytes"], ddp["optimizer_bytes"]) == (4000 + 2000, 4000, 8000)
    assert backward_workspace(P, P_d, "ddp", "bf16") == 2 * P + 4 * P           # bf16 grads, their fp32 cast
    z2 = model_states(P, P_d, "zero2", "bf16", "adamw")
    # sharded fp32 master 4P/d + unsharded bf16 copy 2P; fp32 sharded grads and states: 2P + 16P/d in all
    assert z2["param_bytes"] + z2["grad_bytes"] + z2["optimizer_bytes"] == 2 * P + 16 * P_d
    z3 = model_states(P, P_d, "zero3", "bf16", "adamw")
    assert z3["param_bytes"] + z3["grad_bytes"] + z3["optimizer_bytes"] == 16 * P_d
    # compute phase: two gathered bf16 layers (this one, the prefetched next), the kept fp32 reduce input, bf16 grads
    assert backward_workspace(P, P_d, "zero3", "bf16") == 2 * 2 * P + 4 * P + 2 * P
    assert model_states(P, P_d, "zero3", "bf16", "sgd")["optimizer_bytes"] == 4 * P_d     # the momentum buffer


def test_zero1_states_by_hand():
    """zero1 (FSDP2 driven once per step): the sharded fp32 master and optimizer states, the unsharded compute copy
    kept through the step's micro-batches, the gradients accumulated whole in fp32; zero2's transients."""
    P, P_d = 1000, 250
    z1 = model_states(P, P_d, "zero1", "fp32", "adamw")
    assert (z1["param_bytes"], z1["grad_bytes"], z1["optimizer_bytes"]) == (4 * P_d + 4 * P, 4 * P, 8 * P_d)
    assert backward_workspace(P, P_d, "zero1", "fp32") == backward_workspace(P, P_d, "zero2", "fp32") == 8 * P
    bf16 = model_states(P, P_d, "zero1", "bf16", "adamw")
    # bf16 copy 2P whole, fp32 accumulated gradients 4P whole, fp32 master and states 12P/d sharded
    assert (bf16["param_bytes"], bf16["grad_bytes"], bf16["optimizer_bytes"]) == (4 * P_d + 2 * P, 4 * P, 8 * P_d)
    # reduce phase on gloo: the fp32 reduce input, gloo's copy, the fp32 shard (the compute phase: 4P + 2P)
    assert backward_workspace(P, P_d, "zero1", "bf16", backend="gloo") == 4 * P + 4 * P + 4 * P_d
    assert model_states(P, P_d, "zero1", "fp32", "sgd")["optimizer_bytes"] == 4 * P_d
    z2 = model_states(P, P_d, "zero2", "bf16", "adamw")
    assert bf16["grad_bytes"] - z2["grad_bytes"] == 4 * P - 4 * P_d      # all zero1 adds to zero2: whole gradients
    assert {k: bf16[k] for k in ("param_bytes", "optimizer_bytes")} == {k: z2[k] for k in ("param_bytes",
                                                                                          "optimizer_bytes")}


def test_fsdp_padding_of_dim0():
    # tensors (dim0, numel): a 10 x 3 weight and a bias of 10 over d = 4 -> ceil(10/4) = 3 rows each
    shapes = [(10, 30), (10, 10)]
    assert sharded_numel(shapes, 4) == 3 * 3 + 3 * 1
    assert sharded_numel(shapes, 4) * 4 > numel(shapes)           # padding counted
    assert sharded_numel(shapes, 1) == numel(shapes)


def test_activation_split_tp_and_sp():
    split = {"tp_divided": 1200, "tp_replicated": 400}
    assert activation_per_sample(split, tp=2, sp=False, dp=1) == 1600
    assert activation_per_sample(split, tp=2, sp=True, dp=1) == 1400      # replicated part / tp under sp
    assert activation_per_sample(split, tp=2, sp=True, dp=4) == 350       # b/4 samples per rank
    assert derive_split({"tp_divided": 1200, "tp_replicated": 400}, 4) == {"tp_divided": 300, "tp_replicated": 400}
    # 100 of the replicated bytes are a linear's sequence-gathered input: whole under sp
    assert activation_per_sample(split, tp=2, sp=True, dp=1, gathered=100) == 1200 + 300 / 2 + 100
    assert activation_per_sample(split, tp=2, sp=False, dp=1, gathered=100) == 1600
    assert activation_per_sample(split, tp=1, sp=True, dp=1, gathered=100) == 1600


def test_megatron_closed_form_activations_through_the_split():
    # Korthikanti et al. (16-bit, with dropout): sbh(10 + 24/t + 5as/(ht)) per layer; with sp: sbh(34 + 5as/h)/t
    s, h, a, t = 128, 64, 4, 2
    split = {"tp_divided": s * h * (24 + 5 * a * s / h) // t, "tp_replicated": 10 * s * h}
    assert activation_per_sample(split, t, False, 1) == pytest.approx(s * h * (10 + 24 / t + 5 * a * s / (h * t)))
    assert activation_per_sample(split, t, True, 1) == pytest.approx(s * h * (34 + 5 * a * s / h) / t)
