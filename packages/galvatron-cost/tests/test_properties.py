"""Property tests: sharding never adds bytes, bigger micro-batches never cost less, every number finite and >= 0."""
import math

import synthetic
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from galvatron_contracts.models import PRESETS
from galvatron_cost import fit
from galvatron_cost.memory import activation_per_sample, model_states, sharded_numel

shapes_st = st.lists(st.tuples(st.integers(1, 5000), st.integers(1, 64)), min_size=1, max_size=8).map(
    lambda rows: [(d0, d0 * rest) for d0, rest in rows])


def persistent(states):
    return states["param_bytes"] + states["grad_bytes"] + states["optimizer_bytes"]


@given(shapes=shapes_st, d=st.integers(2, 64), more=st.integers(0, 64), dtype=st.sampled_from(["fp32", "bf16"]),
       opt=st.sampled_from(["adamw", "sgd"]))
def test_more_sharding_never_increases_per_rank_bytes(shapes, d, more, dtype, opt):
    P = sum(n for _, n in shapes)
    by = {s: persistent(model_states(P, sharded_numel(shapes, d), s, dtype, opt))
          for s in ("ddp", "zero1", "zero2", "zero3")}
    assert by["zero3"] <= by["zero2"] <= by["zero1"]
    # zero2 keeps the unsharded copy beside the padded shard. With AdamW it stays below ddp as long as no tensor
    # has fewer rows than ranks (a 1-row tensor over d ranks is padded to one row per rank, which FSDP2 really
    # allocates); with plain SGD (no states to shard) only when the rows divide evenly.
    if all(d0 >= d for d0, _ in shapes) and (opt == "adamw" or all(d0 % d == 0 for d0, _ in shapes)):
        assert by["zero1"] <= by["ddp"]          # and zero1 below it (its sharded part is at most 2/3 of the whole)
    for s in ("zero1", "zero2", "zero3"):     # a larger dp degree never holds more
        a = persistent(model_states(P, sharded_numel(shapes, d), s, dtype, opt))
        b = persistent(model_states(P, sharded_numel(shapes, d + more), s, dtype, opt))
        assert b <= a


@given(div=st.integers(0, 10**9), rep=st.integers(0, 10**9), tp=st.sampled_from([1, 2, 4, 8]),
       dp=st.integers(1, 64), gathered=st.integers(0, 10**9))
def test_sequence_parallel_and_dp_never_increase_activations(div, rep, tp, dp, gathered):
    split = {"tp_divided": div, "tp_replicated": rep}
    assert activation_per_sample(split, tp, True, dp, gathered) <= activation_per_sample(split, tp, False, dp)
    assert activation_per_sample(split, tp, False, dp * 2) <= activation_per_sample(split, tp, False, dp)


def _walk(value, path="$"):
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _walk(v, f"{path}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _walk(v, f"{path}[{i}]")
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        yield path, value


links_st = st.fixed_dictionaries({
    "bw_intra": st.floats(1e8, 5e11), "b_node": st.floats(1e8, 1e11), "a_intra": st.floats(1e-7, 1e-3),
    "a_inter": st.floats(1e-7, 1e-3), "p2p_intra": st.floats(1e8, 1e11), "p2p_node": st.floats(1e8, 1e11),
    "p2p_alpha": st.floats(1e-7, 1e-3)})


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(links=links_st, shape=st.sampled_from([(1, 2), (1, 4), (2, 2)]), noise=st.floats(0, 0.3),
       seed=st.integers(0, 2**16), name=st.sampled_from(["tiny-gpt", "tiny-llama"]),
       dtype=st.sampled_from(["fp32", "bf16"]), seqs=st.sampled_from([(32,), (16, 32)]))
def test_every_document_number_is_finite_non_negative_and_monotone_in_b(links, shape, noise, seed, name, dtype,
                                                                        seqs):
    hw = synthetic.hardware_profile(*shape, links=links, noise=noise, seed=seed)
    mp = synthetic.model_profile(PRESETS[name], dtype=dtype, noise=noise, seed=seed, seq_lens=seqs)
    doc = fit(hw, mp)
    for path, v in _walk(doc):
        if path.endswith(".r2"):                      # R^2 may be negative for a poor fit; it is a score
            assert math.isfinite(v), path
            continue
        assert math.isfinite(v) and v >= 0, (path, v)
    for pipe in doc["pipelines"]:
        by_key = {}
        for s in pipe["strategies"]:
            # lin coefficients are non-negative (checked above), so time and activations grow with b
            t, m = s["time"], s["memory"]
            for name_ in ("forward", "backward", "forward_comm", "backward_comm"):
                assert t[name_]["fixed_s"] + t[name_]["per_sample_s"] * 4 >= t[name_]["fixed_s"] + t[name_][
                    "per_sample_s"] * 2
            by_key.setdefault((s["layer"], s["layout"], s["recompute"]), {})[s["dp_sharding"]] = persistent(m)
        for states in by_key.values():
            if len(states) == 4:
                assert states["zero3"] <= states["zero2"] <= states["zero1"] <= states["ddp"]
        lay = {x["id"]: x for x in pipe["layouts"]}
        plain_of = {(x["tp"], x["tp_layout"]): x["id"] for x in pipe["layouts"] if not x["sp"]}
        acts = {(s["layer"], s["layout"], s["recompute"], s["dp_sharding"]): s["memory"]["activation"]
                for s in pipe["strategies"]}
        for (layer, lid, rc, sh), act in acts.items():
            if lay[lid]["sp"]:                        # sequence parallelism never adds activation bytes
                plain = acts[(layer, plain_of[(lay[lid]["tp"], lay[lid]["tp_layout"])], rc, sh)]
                assert act["per_sample_bytes"] <= plain["per_sample_bytes"]
